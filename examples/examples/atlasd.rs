//! `atlasd`: Atlas's local runtime as a long-running service — one proxy
//! listener for every service of the host (routed by `Host`), a supervisor
//! for their replicas, and an admin API that deploy programs and the
//! `atlas` command talk to.
//!
//! Run:
//! `cargo run --release --example atlasd -- --state-dir /var/lib/atlas \
//!     --listen 0.0.0.0:80 [--admin-tcp 127.0.0.1:9200 --admin-token-file /etc/atlas/token] \
//!     [--tls-cert site.crt --tls-key site.key [--hsts-max-age 365d] [--redirect-http 0.0.0.0:80]] \
//!     [--log-format json] [--takeover]`
//!
//! - `--takeover` starts a successor of the atlasd running on the same
//!   state directory (a restart or a binary upgrade): it takes the
//!   listening socket and the replicas over, and the old process drains
//!   and exits. No connection is refused meanwhile.
//! - Under systemd, `deploy/systemd/atlasd.socket` passes the listening
//!   socket (socket activation) and the service is `Type=notify`.
//! - SIGTERM or Ctrl-C: stop accepting, drain, exit; the replicas keep
//!   running and the next start adopts them. `--stop-replicas` on the
//!   command line makes that stop end the replicas too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use atlas_examples::main_support::{self, StatusResult};
use atlas_local::daemon::handover::systemd_listener;
use atlas_local::daemon::server::AdminConfig;
use atlas_local::daemon::{Daemon, DaemonConfig, Ending};
use atlas_local::process::RestartPolicy;
use atlas_local::proxy::{Hsts, TlsConfig};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

/// Atlas's local runtime as a service: proxy, supervisor and admin API.
#[derive(Debug, Parser)]
#[command(name = "atlasd", version, args_override_self = true)]
struct Args {
    /// Where state, sockets and replica logs live.
    #[arg(
        long,
        value_name = "DIR",
        env = "ATLASD_STATE_DIR",
        default_value = "/var/lib/atlas"
    )]
    state_dir: PathBuf,
    /// The proxy's address (ignored under socket activation and --takeover).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The admin socket (default: STATE_DIR/atlasd.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The admin socket's mode, octal: 600 (the daemon's user) or 660 (and its group).
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Also serve the admin API on TCP (requires --admin-token-file).
    #[arg(long, value_name = "ADDR", requires = "admin_token_file")]
    admin_tcp: Option<SocketAddr>,
    /// The file holding the TCP listener's bearer token (mode 0600).
    #[arg(long, value_name = "PATH", requires = "admin_tcp")]
    admin_token_file: Option<PathBuf>,
    /// How long endpoints and replicas drain.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// Replicas that exit are not restarted.
    #[arg(long)]
    no_restart: bool,
    /// Data-path threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads: usize,
    /// Take over from the atlasd running on the same state directory.
    #[arg(long)]
    takeover: bool,
    /// Stop the replicas too when stopped by a signal.
    #[arg(long)]
    stop_replicas: bool,
    /// Serve TLS with this PEM certificate chain (repeat with --tls-key for
    /// several certificates, chosen by SNI; reloaded when the files change).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Vec<PathBuf>,
    /// The PEM private key of the --tls-cert at the same position.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Vec<PathBuf>,
    /// With TLS: send Strict-Transport-Security with this max-age.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    hsts_max_age: Option<Duration>,
    /// With TLS: also answer plain HTTP here with a redirect to HTTPS.
    #[arg(long, value_name = "ADDR")]
    redirect_http: Option<SocketAddr>,
    /// Log format (json: one object per line on stdout, for Loki).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("not an octal mode: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.log_format {
        LogFormat::Text => main_support::init_tracing("info"),
        LogFormat::Json => {
            if let Err(e) = atlas_metrics::logging::init_json_logs("info") {
                eprintln!("atlasd: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    main_support::run_with_status("atlasd", run(args))
}

/// The TLS settings the arguments ask for, if any.
fn tls(args: &Args) -> Result<Option<TlsConfig>, String> {
    if args.tls_cert.len() != args.tls_key.len() {
        return Err(format!(
            "{} --tls-cert but {} --tls-key: give one key per certificate",
            args.tls_cert.len(),
            args.tls_key.len()
        ));
    }
    if args.tls_cert.is_empty() {
        if args.hsts_max_age.is_some() || args.redirect_http.is_some() {
            return Err("--hsts-max-age and --redirect-http need --tls-cert".into());
        }
        return Ok(None);
    }
    let mut tls = TlsConfig::new().watch_files(Duration::from_secs(10));
    for (cert, key) in args.tls_cert.iter().zip(&args.tls_key) {
        tls = tls.certificate(cert, key);
    }
    if let Some(max_age) = args.hsts_max_age {
        tls = tls.hsts(Hsts::new(max_age));
    }
    if let Some(addr) = args.redirect_http {
        tls = tls.redirect_http(addr);
    }
    Ok(Some(tls))
}

async fn run(args: Args) -> StatusResult {
    let mut config = DaemonConfig::new(&args.state_dir);
    config.tls = tls(&args)?;
    config.listen = args.listen;
    config.listener = systemd_listener()?;
    config.admin = AdminConfig {
        socket: args
            .socket
            .unwrap_or_else(|| args.state_dir.join("atlasd.sock")),
        socket_mode: args.socket_mode,
        tcp: args.admin_tcp.zip(args.admin_token_file),
    };
    config.grace_period = args.grace_period;
    config.restart = if args.no_restart {
        RestartPolicy::Never
    } else {
        RestartPolicy::on_failure()
    };
    config.worker_threads = args.threads;
    config.takeover = args.takeover;
    let daemon = Daemon::start(config).await?;
    eprintln!(
        "atlasd {} serving on http://{} (admin socket {})",
        env!("CARGO_PKG_VERSION"),
        daemon.proxy_addr(),
        daemon.admin_socket().display()
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if args.stop_replicas {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        daemon.shutdown_all().await;
        return Ok(ExitCode::SUCCESS);
    }
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    match daemon.run(stop).await? {
        Ending::Stopped => eprintln!("atlasd stopped; replicas keep running"),
        Ending::HandedOver => eprintln!("atlasd handed over to its successor"),
    }
    Ok(ExitCode::SUCCESS)
}
