//! Atlas's traffic router as a standalone reverse proxy: one service, a
//! blue and an optional green set of upstreams, and the canary weight.
//!
//! The proxy benchmark (`scripts/bench-proxy.sh`) runs this beside nginx
//! against the same upstream; it is also a quick way to put a weighted
//! split in front of two local servers by hand.
//!
//! Run:
//! `cargo run --release --example atlas_proxy -- --listen 127.0.0.1:8080 \
//!     --blue 127.0.0.1:9001,127.0.0.1:9002 [--green 127.0.0.1:9003 --canary-weight 10] \
//!     [--admin 127.0.0.1:9100] [--threads 2]`

use std::net::SocketAddr;
use std::process::ExitCode;

use atlas_core::{Endpoint, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::ProxyRouter;

struct Args {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    blue: Vec<SocketAddr>,
    green: Vec<SocketAddr>,
    canary_weight: u8,
    threads: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:8080".parse().expect("literal address"),
        admin: None,
        blue: Vec::new(),
        green: Vec::new(),
        canary_weight: 0,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let addrs = |v: String| -> Result<Vec<SocketAddr>, String> {
            v.split(',')
                .map(|a| a.trim().parse().map_err(|e| format!("{flag}: {a:?}: {e}")))
                .collect()
        };
        match flag.as_str() {
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--admin" => args.admin = Some(value()?.parse().map_err(|e| format!("--admin: {e}"))?),
            "--blue" => args.blue = addrs(value()?)?,
            "--green" => args.green = addrs(value()?)?,
            "--canary-weight" => {
                args.canary_weight = value()?
                    .parse()
                    .map_err(|e| format!("--canary-weight: {e}"))?
            }
            "--threads" => {
                args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.blue.is_empty() {
        return Err("--blue needs at least one upstream".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("atlas_proxy: {e}");
            }
            eprintln!(
                "usage: atlas_proxy --listen ADDR --blue ADDR[,ADDR…] [--green ADDR[,ADDR…] --canary-weight 0-100] [--admin ADDR] [--threads N]"
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("atlas_proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atlas_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let svc = ServiceName::new("proxy")?;
    let mut builder = ProxyRouter::builder(svc.clone()).listen(args.listen);
    if let Some(admin) = args.admin {
        builder = builder.admin(admin);
    }
    let router = builder.build().await?;
    let endpoints = |slot: Slot, addrs: &[SocketAddr]| -> Vec<Endpoint> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Endpoint::new(format!("proxy-{slot}-{i}"), *a))
            .collect()
    };
    router
        .set_endpoints(&svc, Slot::Blue, &endpoints(Slot::Blue, &args.blue))
        .await?;
    router
        .set_endpoints(&svc, Slot::Green, &endpoints(Slot::Green, &args.green))
        .await?;
    router
        .set_split(&svc, &TrafficSplit::new(Slot::Blue, args.canary_weight)?)
        .await?;
    println!("atlas_proxy listening on http://{}", router.local_addr());
    tokio::signal::ctrl_c().await?;
    router.shutdown().await;
    Ok(())
}
