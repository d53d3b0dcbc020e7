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
//!     [--admin 127.0.0.1:9100] [--threads 2] [--shared-runtime]`
//!
//! By default each of the `--threads` threads runs its own single-threaded
//! runtime and its own router (pools included), all listening on the same
//! address with `SO_REUSEPORT`, as nginx's worker processes do: a request
//! never crosses threads, which costs less CPU than one multi-threaded
//! runtime. `--shared-runtime` runs one router on one multi-threaded
//! runtime instead; so does `--admin`, so that `/metrics` counts every
//! request.

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
    shared_runtime: bool,
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
        shared_runtime: false,
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
            "--shared-runtime" => args.shared_runtime = true,
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
                "usage: atlas_proxy --listen ADDR --blue ADDR[,ADDR…] [--green ADDR[,ADDR…] --canary-weight 0-100] [--admin ADDR] [--threads N] [--shared-runtime]"
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
    let result = if args.shared_runtime || args.admin.is_some() {
        shared_runtime(&args)
    } else {
        workers(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atlas_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One router on one multi-threaded runtime.
fn shared_runtime(args: &Args) -> BoxResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let router = start(args, args.listen, false).await?;
        println!("atlas_proxy listening on http://{}", router.local_addr());
        tokio::signal::ctrl_c().await?;
        router.shutdown().await;
        Ok(())
    })
}

/// One router per thread, each on its own single-threaded runtime, all on
/// the same address.
fn workers(args: &Args) -> BoxResult<()> {
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut listen = args.listen;
    let mut threads = Vec::new();
    for i in 0..args.threads.max(1) {
        let rt = current()?;
        // The first worker resolves port 0; the others join its address.
        let router = rt.block_on(start(args, listen, true))?;
        listen = router.local_addr();
        let mut stopped = stopped.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("atlas-proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                        router.shutdown().await;
                    })
                })?,
        );
    }
    println!("atlas_proxy listening on http://{listen}");
    current()?.block_on(tokio::signal::ctrl_c())?;
    let _ = stop.send(true);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

async fn start(args: &Args, listen: SocketAddr, reuse_port: bool) -> BoxResult<ProxyRouter> {
    let svc = ServiceName::new("proxy")?;
    let mut builder = ProxyRouter::builder(svc.clone())
        .listen(listen)
        .reuse_port(reuse_port);
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
    Ok(router)
}
