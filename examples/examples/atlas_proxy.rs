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
//!     [--admin 127.0.0.1:9100] [--threads 2] [--shared-runtime] [--gzip] \
//!     [--tls-cert a.crt --tls-key a.key [--tls-cert b.crt --tls-key b.key]…] \
//!     [--hsts-max-age 63072000 --hsts-include-subdomains --hsts-preload] \
//!     [--redirect-http 127.0.0.1:8081] [--tls-watch 10]`
//! (`--help` lists the options and their defaults).
//!
//! It runs one `ProxyRouter` exactly as a program embedding it does: the
//! router's data path on `--threads` worker threads, each with a
//! single-threaded runtime of its own, as nginx's worker processes do (a
//! request never crosses threads), one split, one set of endpoints and one
//! set of metrics for all of them. `--shared-runtime` runs the data path on
//! one multi-threaded runtime instead, which costs more CPU per request.

use std::net::SocketAddr;
use std::process::ExitCode;

use atlas_core::{Endpoint, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::{GzipPolicy, Hsts, ProxyRouter, TlsConfig};
use clap::Parser;

/// Atlas's traffic router as a standalone HTTP/1.1 reverse proxy: one
/// service, a blue and an optional green set of upstreams, and the canary
/// weight. Runs until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "atlas_proxy", version, args_override_self = true)]
struct Args {
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve the proxy's Prometheus metrics (GET /metrics) on this address.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The stable (blue) upstreams, comma-separated.
    #[arg(
        long,
        value_name = "ADDR[,ADDR…]",
        required = true,
        value_delimiter = ',',
        value_parser = parse_addr
    )]
    blue: Vec<SocketAddr>,
    /// The canary (green) upstreams, comma-separated.
    #[arg(
        long,
        value_name = "ADDR[,ADDR…]",
        value_delimiter = ',',
        value_parser = parse_addr
    )]
    green: Vec<SocketAddr>,
    /// The percentage of requests sent to green.
    #[arg(
        long,
        value_name = "0-100",
        default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=100)
    )]
    canary_weight: u8,
    /// Threads that relay the traffic; the default is this machine's number
    /// of cores.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,
    /// Run the data path on one multi-threaded runtime of --threads
    /// threads instead of on worker threads with a runtime each.
    #[arg(long)]
    shared_runtime: bool,
    /// Compress text responses with gzip for clients that accept it (the
    /// default policy: level 1, at least 1 KiB, the common text types).
    #[arg(long)]
    gzip: bool,
    /// Terminate TLS with this PEM certificate chain; repeat for several
    /// certificates, chosen by SNI (the first one is the default). Each
    /// needs its --tls-key, in the same order.
    #[arg(long, value_name = "PATH")]
    tls_cert: Vec<std::path::PathBuf>,
    /// The PEM private key of the --tls-cert at the same position.
    #[arg(long, value_name = "PATH")]
    tls_key: Vec<std::path::PathBuf>,
    /// Reload the certificates when their files change, checked every
    /// this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "tls_cert")]
    tls_watch: Option<u64>,
    /// Send Strict-Transport-Security with this max-age on TLS responses.
    #[arg(long, value_name = "SECONDS", requires = "tls_cert")]
    hsts_max_age: Option<u64>,
    /// Add includeSubDomains to the HSTS header.
    #[arg(long, requires = "hsts_max_age")]
    hsts_include_subdomains: bool,
    /// Add preload to the HSTS header (needs includeSubDomains and a
    /// max-age of a year or more).
    #[arg(long, requires = "hsts_max_age")]
    hsts_preload: bool,
    /// Also listen for plain HTTP here and redirect every request to HTTPS.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    redirect_http: Option<SocketAddr>,
}

impl Args {
    /// The TLS configuration the options ask for, if any.
    fn tls(&self) -> BoxResult<Option<TlsConfig>> {
        if self.tls_cert.is_empty() && self.tls_key.is_empty() {
            return Ok(None);
        }
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(format!(
                "{} --tls-cert but {} --tls-key: give one key per certificate",
                self.tls_cert.len(),
                self.tls_key.len()
            )
            .into());
        }
        let mut tls = TlsConfig::new();
        for (cert, key) in self.tls_cert.iter().zip(&self.tls_key) {
            tls = tls.certificate(cert, key);
        }
        if let Some(max_age) = self.hsts_max_age {
            let mut hsts = Hsts::new(std::time::Duration::from_secs(max_age));
            if self.hsts_include_subdomains {
                hsts = hsts.include_subdomains();
            }
            if self.hsts_preload {
                hsts = hsts.preload();
            }
            tls = tls.hsts(hsts);
        }
        if let Some(addr) = self.redirect_http {
            tls = tls.redirect_http(addr);
        }
        if let Some(every) = self.tls_watch {
            tls = tls.watch_files(std::time::Duration::from_secs(every));
        }
        Ok(Some(tls))
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|e| format!("{:?}: {e}", text.trim()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = serve(&args);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atlas_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs the router until Ctrl-C: its data path on worker threads of its
/// own, the rest (admin endpoint, signal) on a small runtime here; or, with
/// --shared-runtime, all of it on one multi-threaded runtime.
fn serve(args: &Args) -> BoxResult<()> {
    let rt = if args.shared_runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.max(1))
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        let router = start(args).await?;
        let scheme = if args.tls_cert.is_empty() {
            "http"
        } else {
            "https"
        };
        println!(
            "atlas_proxy listening on {scheme}://{}",
            router.local_addr()
        );
        tokio::signal::ctrl_c().await?;
        router.shutdown().await;
        Ok(())
    })
}

async fn start(args: &Args) -> BoxResult<ProxyRouter> {
    let svc = ServiceName::new("proxy")?;
    let workers = if args.shared_runtime {
        0
    } else {
        args.threads.max(1)
    };
    let mut builder = ProxyRouter::builder(svc.clone())
        .listen(args.listen)
        .worker_threads(workers);
    if let Some(admin) = args.admin {
        builder = builder.admin(admin);
    }
    if args.gzip {
        builder = builder.gzip(GzipPolicy::default());
    }
    if let Some(tls) = args.tls()? {
        builder = builder.tls(tls);
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("atlas_proxy").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_benchmark_invocation_parses_as_before() {
        // scripts/bench-proxy.sh.
        let a = parse(&[
            "--listen",
            "127.0.0.1:18091",
            "--blue",
            "127.0.0.1:18090",
            "--threads",
            "2",
        ])
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:18091".parse().unwrap());
        assert_eq!(a.blue, ["127.0.0.1:18090".parse().unwrap()]);
        assert_eq!((a.threads, a.canary_weight), (2, 0));
        assert!(a.green.is_empty() && a.admin.is_none() && !a.shared_runtime);
        assert!(a.tls().unwrap().is_none());
    }

    #[test]
    fn tls_options_pair_certificates_with_keys() {
        let a = parse(&[
            "--blue",
            "127.0.0.1:1",
            "--tls-cert",
            "a.crt",
            "--tls-key",
            "a.key",
            "--tls-cert",
            "b.crt",
        ])
        .unwrap();
        let error = a.tls().unwrap_err().to_string();
        assert!(error.contains("2 --tls-cert but 1 --tls-key"), "{error}");
        assert!(parse(&["--blue", "127.0.0.1:1", "--hsts-max-age", "60"]).is_err());
        let a = parse(&[
            "--blue",
            "127.0.0.1:1",
            "--tls-cert",
            "a.crt",
            "--tls-key",
            "a.key",
            "--hsts-max-age",
            "60",
        ])
        .unwrap();
        assert!(a.tls().unwrap().is_some());
    }

    #[test]
    fn the_header_invocation_parses() {
        let a = parse(&[
            "--blue",
            "127.0.0.1:9001, 127.0.0.1:9002",
            "--green",
            "127.0.0.1:9003",
            "--canary-weight",
            "10",
            "--admin",
            "127.0.0.1:9100",
            "--shared-runtime",
        ])
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(a.blue.len(), 2);
        assert_eq!(a.green, ["127.0.0.1:9003".parse().unwrap()]);
        assert_eq!(a.canary_weight, 10);
        assert_eq!(a.admin, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(a.shared_runtime);
        assert_eq!(a.threads, default_threads());
    }

    #[test]
    fn bad_usage_is_refused_by_the_parser() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).map(|_| ()).unwrap_err().kind();
        assert_eq!(kind(&[]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["--blue", "127.0.0.1:1", "--canary-weight", "101"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["--blue", "localhost"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["--blue", "127.0.0.1:1", "--bogus"]),
            ErrorKind::UnknownArgument
        );
    }
}
