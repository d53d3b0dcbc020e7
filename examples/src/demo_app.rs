//! A small HTTP/1.1 service to roll out in the examples: it says which
//! version, slot and replica answered, and can be told to misbehave.
//!
//! It listens on `127.0.0.1:$PORT` (or `--port`) and answers:
//!
//! | path | answer |
//! |---|---|
//! | `/health` | 200 `ok`, or 500 with `--fail-health` |
//! | `/ready` | 200 `ready` once listening; 503 `draining` after SIGTERM |
//! | `/bytes/N` | 200 with a `text/plain` body of N bytes (at most 16 MiB; 400 above or for a bad N), for benchmarks |
//! | `/text/N` | 200 with a `text/plain` body of the first N bytes of the `--text-file` (at most its size; 400 above), else of generated English-like prose, for compression benchmarks |
//! | `/drain` | reads the whole request body, then 200 `read N` (every other path answers without reading it) |
//! | `/ledger/N` | with `--ledger-target` (feature `postgres`): commits row N to PostgreSQL, then 200 `committed N`; 503 when the write failed (see [`crate::ledger`]) |
//! | anything else | 200 `{version} {slot} {replica}`, or 500 for the `--error-rate` share |
//!
//! Every answer carries the header `x-app-version: {version}`.
//!
//! On SIGTERM (or SIGINT) it reports not-ready, keeps accepting for
//! `--drain-delay-ms` so a router can notice, then stops accepting, lets
//! requests in flight finish, and exits with status 0. With `--exit-after`
//! it simulates a crash instead: it exits with status 3 at once, dropping
//! whatever is in flight.
//!
//! The `demo_app` example runs it (`cargo run --example demo_app -- --port
//! 8080 --version v2`); other examples start it as a replica by running their
//! own binary with `demo-app` as the first argument and handing the rest to
//! [`main_from_args`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The exit status of a simulated crash (`--exit-after`).
pub const CRASH_EXIT_STATUS: u8 = 3;

/// The header naming the version that answered.
pub const VERSION_HEADER: &str = "x-app-version";

/// Command-line help.
pub const USAGE: &str = "\
usage: demo-app [OPTIONS]

  --port N             listen on 127.0.0.1:N (default: $PORT; 0 picks a free port)
  --version V          version to report (default: $ATLAS_VERSION, else \"dev\")
  --slot S             slot to report (default: $ATLAS_SLOT, else \"-\")
  --replica R          replica to report (default: $ATLAS_REPLICA, else \"-\")
  --error-rate F       share of requests to / answered with 500, 0 to 1 (default 0),
                       spread evenly: with 0.1, every 10th request fails
  --latency-ms N       delay every answer to / by N milliseconds (default 0)
  --fail-health        answer /health with 500
  --exit-after SECS    crash (exit status 3) after SECS seconds
  --drain-delay-ms N   after SIGTERM, keep accepting for N ms while /ready says 503 (default 0)
  --text-file FILE     /text/N answers the first N bytes of FILE (default: generated prose)
  --ledger-target FILE /ledger/N commits row N to the PostgreSQL database FILE names
                       (a connection string; password from PGPASSWORD; feature postgres)
  -h, --help           print this help";

/// How the demo app runs; see [`USAGE`] for the flags that set each field.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Port on 127.0.0.1; 0 lets the OS pick.
    pub port: u16,
    /// Version reported in bodies and the [`VERSION_HEADER`].
    pub version: String,
    /// Slot reported in bodies.
    pub slot: String,
    /// Replica reported in bodies.
    pub replica: String,
    /// Share of requests to `/` (and other app paths) answered with 500,
    /// between 0 and 1.
    pub error_rate: f64,
    /// Delay added to every app-path answer.
    pub latency: Duration,
    /// `/health` answers 500.
    pub fail_health: bool,
    /// Simulate a crash after this long.
    pub exit_after: Option<Duration>,
    /// After a shutdown signal, keep accepting (with `/ready` at 503) this long.
    pub drain_delay: Duration,
    /// The file naming the ledger's database (`/ledger/N`), if any.
    pub ledger_target: Option<std::path::PathBuf>,
    /// The file `/text/N` answers from; generated prose when `None`.
    pub text_file: Option<std::path::PathBuf>,
}

impl DemoConfig {
    /// A config for `port` and `version` with no faults.
    pub fn new(port: u16, version: impl Into<String>) -> Self {
        DemoConfig {
            port,
            version: version.into(),
            slot: "-".into(),
            replica: "-".into(),
            error_rate: 0.0,
            latency: Duration::ZERO,
            fail_health: false,
            exit_after: None,
            drain_delay: Duration::ZERO,
            ledger_target: None,
            text_file: None,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Serve with this config.
    Serve(DemoConfig),
    /// Print [`USAGE`].
    Help,
}

/// A command line the demo app cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsError {
    /// The flag (or variable) at fault.
    pub flag: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.problem)
    }
}

impl std::error::Error for ArgsError {}

fn args_error(flag: &str, problem: impl Into<String>) -> ArgsError {
    ArgsError {
        flag: flag.to_string(),
        problem: problem.into(),
    }
}

/// Parses the flags in [`USAGE`] (without the program name), taking
/// defaults from `env` (`PORT`, `ATLAS_VERSION`, `ATLAS_SLOT`,
/// `ATLAS_REPLICA`). Flags take their value as the next argument or after
/// `=`.
///
/// # Errors
///
/// An [`ArgsError`] naming the flag: unknown, missing or malformed value, or
/// a value out of range.
pub fn parse_args<I, S>(
    args: I,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, ArgsError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut port: Option<u16> = None;
    let mut version = None;
    let mut slot = None;
    let mut replica = None;
    let mut config = DemoConfig::new(0, "");
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = |flag: &str| -> Result<String, ArgsError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().ok_or_else(|| args_error(flag, "needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--port" => port = Some(parse_port("--port", &value("--port")?)?),
            "--version" => version = Some(non_empty("--version", value("--version")?)?),
            "--slot" => slot = Some(non_empty("--slot", value("--slot")?)?),
            "--replica" => replica = Some(non_empty("--replica", value("--replica")?)?),
            "--error-rate" => {
                let v = value("--error-rate")?;
                let rate: f64 = v
                    .parse()
                    .map_err(|_| args_error("--error-rate", format!("not a number: {v:?}")))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(args_error(
                        "--error-rate",
                        format!("must be between 0 and 1, got {v}"),
                    ));
                }
                config.error_rate = rate;
            }
            "--latency-ms" => {
                config.latency =
                    Duration::from_millis(parse_u64("--latency-ms", &value("--latency-ms")?)?)
            }
            "--drain-delay-ms" => {
                config.drain_delay = Duration::from_millis(parse_u64(
                    "--drain-delay-ms",
                    &value("--drain-delay-ms")?,
                )?)
            }
            "--exit-after" => {
                let v = value("--exit-after")?;
                let secs: f64 = v
                    .parse()
                    .map_err(|_| args_error("--exit-after", format!("not a number: {v:?}")))?;
                let after = Duration::try_from_secs_f64(secs).map_err(|_| {
                    args_error(
                        "--exit-after",
                        format!("must be a number of seconds ≥ 0, got {v}"),
                    )
                })?;
                config.exit_after = Some(after);
            }
            "--ledger-target" => {
                let v = non_empty("--ledger-target", value("--ledger-target")?)?;
                if !cfg!(feature = "postgres") {
                    return Err(args_error(
                        "--ledger-target",
                        "this build has no PostgreSQL client (build with --features postgres)",
                    ));
                }
                config.ledger_target = Some(v.into());
            }
            "--text-file" => {
                config.text_file = Some(non_empty("--text-file", value("--text-file")?)?.into());
            }
            "--fail-health" => {
                if inline.is_some() {
                    return Err(args_error("--fail-health", "takes no value"));
                }
                config.fail_health = true;
            }
            other => return Err(args_error(other, "unknown flag (see --help)")),
        }
    }
    config.port = match port {
        Some(p) => p,
        None => match env("PORT") {
            Some(p) => parse_port("PORT", &p)?,
            None => return Err(args_error("--port", "missing: pass --port N or set PORT")),
        },
    };
    config.version = version
        .or_else(|| env("ATLAS_VERSION").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "dev".into());
    config.slot = slot
        .or_else(|| env("ATLAS_SLOT").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "-".into());
    config.replica = replica
        .or_else(|| env("ATLAS_REPLICA").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "-".into());
    Ok(Invocation::Serve(config))
}

fn parse_port(flag: &str, v: &str) -> Result<u16, ArgsError> {
    v.parse()
        .map_err(|_| args_error(flag, format!("must be a port number 0-65535, got {v:?}")))
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, ArgsError> {
    v.parse()
        .map_err(|_| args_error(flag, format!("must be a whole number ≥ 0, got {v:?}")))
}

fn non_empty(flag: &str, v: String) -> Result<String, ArgsError> {
    if v.is_empty() {
        Err(args_error(flag, "must not be empty"))
    } else {
        Ok(v)
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shut down on request after finishing requests in flight.
    Graceful,
    /// Simulated a crash (`--exit-after`).
    Crashed,
}

struct App {
    config: DemoConfig,
    version: HeaderValue,
    draining: AtomicBool,
    requests: AtomicU64,
    /// The `--text-file`'s bytes, read at start so that a bad path fails
    /// the start; `/text/N` answers from generated prose without one.
    text_file: Option<Bytes>,
    #[cfg(feature = "postgres")]
    ledger: Option<crate::ledger::Ledger>,
}

impl App {
    /// Whether the `n`th app request (from 1) fails: spreads failures
    /// evenly, exactly `floor(n * rate)` of the first `n`.
    fn fails(&self, n: u64) -> bool {
        let rate = self.config.error_rate;
        (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor()
    }
}

/// Serves on `listener` until `shutdown` completes (then drains and returns
/// [`Ended::Graceful`]) or the config's `exit_after` passes (then returns
/// [`Ended::Crashed`] at once, dropping connections).
///
/// # Errors
///
/// Only if the version cannot be sent as a header value.
pub async fn serve(
    listener: TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<Ended> {
    let version = HeaderValue::from_str(&config.version).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("version {:?} is not a valid header value", config.version),
        )
    })?;
    let text_file = match &config.text_file {
        Some(path) => Some(Bytes::from(std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read --text-file {}: {e}", path.display()),
            )
        })?)),
        None => None,
    };
    let exit_after = config.exit_after;
    let drain_delay = config.drain_delay;
    let app = Arc::new(App {
        text_file,
        #[cfg(feature = "postgres")]
        ledger: config
            .ledger_target
            .as_ref()
            .map(crate::ledger::Ledger::new),
        config,
        version,
        draining: AtomicBool::new(false),
        requests: AtomicU64::new(0),
    });
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let crash = async {
        match exit_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown, crash);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, version = %app.config.version, "demo app listening");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                accept(accepted, &app, &closing, &mut connections).await;
            }
            () = &mut shutdown => break,
            () = &mut crash => {
                tracing::error!("simulated crash (--exit-after)");
                return Ok(Ended::Crashed);
            }
            Some(_) = connections.join_next() => {}
        }
    }

    app.draining.store(true, Ordering::SeqCst);
    tracing::info!(drain_delay = ?drain_delay, "shutting down: /ready now answers 503");
    let drain = tokio::time::sleep(drain_delay);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                accept(accepted, &app, &closing, &mut connections).await;
            }
            () = &mut drain => break,
            () = &mut crash => return Ok(Ended::Crashed),
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; finishing requests in flight"
    );
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            () = &mut crash => return Ok(Ended::Crashed),
        }
    }
    tracing::info!("all requests finished; exiting");
    Ok(Ended::Graceful)
}

async fn accept(
    accepted: io::Result<(TcpStream, SocketAddr)>,
    app: &Arc<App>,
    closing: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
) {
    match accepted {
        Ok((stream, _)) => {
            connections.spawn(serve_connection(stream, app.clone(), closing.clone()));
        }
        Err(e) => {
            // Out of file descriptors and the like: back off a little
            // rather than spin.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn serve_connection(stream: TcpStream, app: Arc<App>, mut closing: watch::Receiver<bool>) {
    let service = service_fn(move |req| handle(req, app.clone()));
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async {
            // The borrow guard must not live across the awaits below.
            let _ = closing.wait_for(|closing| *closing).await;
        } => {
            // Finishes the request in flight, if any, then closes.
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The largest `/bytes/N` body.
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// A body of `n` bytes for `/bytes/N`, sliced from one shared buffer so
/// that serving it costs no copy.
fn bytes_body(n: &str) -> Option<Bytes> {
    static FILL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let n: usize = n.parse().ok().filter(|n| *n <= MAX_BYTES)?;
    Some(
        FILL.get_or_init(|| Bytes::from(vec![b'a'; MAX_BYTES]))
            .slice(..n),
    )
}

/// A `text/plain` answer with `status` and `body`.
fn plain_text(app: &App, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(VERSION_HEADER, app.version.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// `n` bytes of English-like prose: words of a fixed vocabulary drawn by a
/// seeded generator, in sentences and lines, so that compressors meet
/// text with the repetition of real prose rather than one repeated byte
/// (which every compressor turns into a few hundred bytes at once).
fn generated_prose(n: usize) -> Bytes {
    const WORDS: &str = "\
        the of and to a in is that for it as was with be by on not he this are or his from \
        at which but have an had they you were their one all we can her has there been if \
        more when will would who so no service request replica traffic version rollout \
        canary health probe backup restore snapshot region failover metric latency error \
        budget cluster deployment migration database schema table index query window weight \
        upstream connection response header body timeout retry policy schedule retention \
        bucket object archive segment checkpoint promote abort drain analysis threshold \
        success failure configuration environment operator engineer morning evening between \
        through against without because however therefore quickly slowly carefully always \
        never often sometimes";
    let words: Vec<&str> = WORDS.split_ascii_whitespace().collect();
    let mut out = Vec::with_capacity(n + 16);
    // xorshift64*: deterministic, so every run serves the same bytes.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut line = 0usize;
    let mut sentence = 0usize;
    while out.len() < n {
        let r = next();
        let word = words[(r % words.len() as u64) as usize];
        if sentence == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase().to_string().bytes());
                out.extend_from_slice(chars.as_str().as_bytes());
            }
        } else {
            out.extend_from_slice(word.as_bytes());
        }
        sentence += 1;
        line += word.len() + 1;
        let end = sentence > 5 && (r >> 32).is_multiple_of(9);
        if end {
            out.push(if (r >> 40).is_multiple_of(7) {
                b'?'
            } else {
                b'.'
            });
            sentence = 0;
        } else if (r >> 48).is_multiple_of(13) {
            out.push(b',');
        }
        if line > 72 {
            out.push(b'\n');
            line = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(n);
    Bytes::from(out)
}

async fn handle(
    req: Request<Incoming>,
    app: Arc<App>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/drain" {
        let mut body = req.into_body();
        let mut read = 0usize;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            match frame {
                Ok(frame) => read += frame.data_ref().map_or(0, Bytes::len),
                Err(_) => break,
            }
        }
        let mut response = Response::new(Full::new(Bytes::from(format!("read {read}\n"))));
        response
            .headers_mut()
            .insert(VERSION_HEADER, app.version.clone());
        return Ok(response);
    }
    if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
        return Ok(match bytes_body(n) {
            Some(body) => plain_text(&app, StatusCode::OK, body),
            None => plain_text(
                &app,
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"N must be 0 to 16777216\n"),
            ),
        });
    }
    if let Some(n) = req.uri().path().strip_prefix("/text/") {
        static PROSE: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        let text = match &app.text_file {
            Some(text) => text,
            None => PROSE.get_or_init(|| generated_prose(MAX_BYTES)),
        };
        return Ok(match n.parse::<usize>() {
            Ok(n) if n <= text.len() => plain_text(&app, StatusCode::OK, text.slice(..n)),
            _ => plain_text(
                &app,
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("N must be 0 to {}\n", text.len())),
            ),
        });
    }
    #[cfg(feature = "postgres")]
    if let Some(id) = req.uri().path().strip_prefix("/ledger/") {
        let (status, body) = match (&app.ledger, id.parse::<i64>()) {
            (None, _) => (
                StatusCode::NOT_FOUND,
                "no ledger (--ledger-target)\n".to_string(),
            ),
            (Some(_), Err(_)) => (
                StatusCode::BAD_REQUEST,
                "N must be a 64-bit integer\n".to_string(),
            ),
            (Some(ledger), Ok(id)) => match ledger.write(id).await {
                Ok(()) => (StatusCode::OK, format!("committed {id}\n")),
                Err(e) => {
                    tracing::warn!(id, error = %e, "ledger write failed");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not committed: {e}\n"),
                    )
                }
            },
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(VERSION_HEADER, app.version.clone());
        return Ok(response);
    }
    let (status, body) = match req.uri().path() {
        "/health" if app.config.fail_health => {
            (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy\n".to_string())
        }
        "/health" => (StatusCode::OK, "ok\n".to_string()),
        "/ready" if app.draining.load(Ordering::SeqCst) => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string())
        }
        "/ready" => (StatusCode::OK, "ready\n".to_string()),
        _ => {
            if !app.config.latency.is_zero() {
                tokio::time::sleep(app.config.latency).await;
            }
            let n = app.requests.fetch_add(1, Ordering::Relaxed) + 1;
            if app.fails(n) {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "injected error\n".to_string(),
                )
            } else {
                let c = &app.config;
                (
                    StatusCode::OK,
                    format!("{} {} {}\n", c.version, c.slot, c.replica),
                )
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(VERSION_HEADER, app.version.clone());
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// Binds `127.0.0.1:{config.port}` and serves until SIGTERM or SIGINT
/// (graceful) or the simulated crash.
///
/// # Errors
///
/// If the port cannot be bound or the signal handlers cannot be installed.
pub async fn run(config: DemoConfig) -> io::Result<Ended> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port)).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    serve(listener, config, shutdown).await
}

/// The whole program: parses `args` (without the program name, defaults
/// from the environment), serves, and returns the exit status: 0 after a
/// graceful shutdown or `--help`, 2 for bad arguments, 3 for a simulated
/// crash, 1 for any other failure.
pub fn main_from_args<I, S>(args: I) -> ExitCode
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        // Replicas log to files: colour codes only on a terminal.
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
    let config = match parse_args(args, |k| std::env::var(k).ok()) {
        Ok(Invocation::Serve(config)) => config,
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo-app: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-app: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(Ended::Graceful) => ExitCode::SUCCESS,
        Ok(Ended::Crashed) => ExitCode::from(CRASH_EXIT_STATUS),
        Err(e) => {
            eprintln!("demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;

    type TestClient = Client<HttpConnector, Empty<Bytes>>;

    struct Running {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<Ended>>,
        client: TestClient,
    }

    impl Running {
        async fn start(config: DemoConfig) -> Running {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, config, async {
                let _ = stopped.await;
            }));
            let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            Running {
                addr,
                stop: Some(stop),
                task,
                client,
            }
        }

        async fn get(&self, path: &str) -> (StatusCode, Option<String>, String) {
            get_with(&self.client, self.addr, path).await
        }

        fn shutdown(&mut self) {
            let _ = self.stop.take().unwrap().send(());
        }
    }

    async fn get_with(
        client: &TestClient,
        addr: SocketAddr,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
        let response = client.get(uri).await.unwrap();
        let status = response.status();
        let version = response
            .headers()
            .get(VERSION_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, version, String::from_utf8(body.to_vec()).unwrap())
    }

    fn config() -> DemoConfig {
        let mut c = DemoConfig::new(0, "v7");
        c.slot = "green".into();
        c.replica = "2".into();
        c
    }

    #[tokio::test]
    async fn answers_health_ready_and_version() {
        let mut app = Running::start(config()).await;
        assert_eq!(
            app.get("/health").await,
            (StatusCode::OK, Some("v7".into()), "ok\n".into())
        );
        assert_eq!(
            app.get("/ready").await,
            (StatusCode::OK, Some("v7".into()), "ready\n".into())
        );
        for path in ["/", "/checkout/cart?id=3"] {
            assert_eq!(
                app.get(path).await,
                (StatusCode::OK, Some("v7".into()), "v7 green 2\n".into()),
                "{path}"
            );
        }
        app.shutdown();
        assert_eq!(app.task.await.unwrap().unwrap(), Ended::Graceful);
    }

    #[tokio::test]
    async fn text_route_answers_prose_or_the_text_file() {
        let mut app = Running::start(config()).await;
        let (status, _, body) = app.get("/text/100000").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 100_000));
        // Prose: printable ASCII in lines of words, many distinct ones,
        // and the same bytes on every request.
        assert!(
            body.bytes()
                .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
        );
        assert!(body.lines().all(|l| l.len() < 100));
        let words: std::collections::HashSet<&str> = body
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .map(|w| w.trim())
            .collect();
        assert!(words.len() > 100, "{} distinct words", words.len());
        assert_eq!(app.get("/text/100").await.2, body[..100]);
        assert_eq!(app.get("/text/16777217").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(app.get("/text/x").await.0, StatusCode::BAD_REQUEST);
        app.shutdown();
        app.task.await.unwrap().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("page.html");
        std::fs::write(&file, "<html><body>hello</body></html>\n").unwrap();
        let mut with_file = config();
        with_file.text_file = Some(file);
        let mut app = Running::start(with_file).await;
        assert_eq!(app.get("/text/12").await.2, "<html><body>");
        assert_eq!(app.get("/text/33").await.0, StatusCode::BAD_REQUEST);
        app.shutdown();
        app.task.await.unwrap().unwrap();

        let mut missing = config();
        missing.text_file = Some(dir.path().join("absent"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = serve(listener, missing, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--text-file"), "{err}");
    }

    #[tokio::test]
    async fn drain_route_reads_the_whole_body() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut app = Running::start(config()).await;
        assert_eq!(app.get("/drain").await.2, "read 0\n");
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let body = vec![b'x'; 300_000];
        let head = format!(
            "POST /drain HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nread 300000\n"), "{reply}");
        app.shutdown();
        assert_eq!(app.task.await.unwrap().unwrap(), Ended::Graceful);
    }

    #[tokio::test]
    async fn bytes_route_answers_n_bytes() {
        let mut app = Running::start(config()).await;
        let (status, _, body) = app.get("/bytes/70000").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 70000));
        assert!(body.bytes().all(|b| b == b'a'));
        assert_eq!(app.get("/bytes/0").await.2, "");
        assert_eq!(app.get("/bytes/16777217").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(app.get("/bytes/x").await.0, StatusCode::BAD_REQUEST);
        app.shutdown();
        assert_eq!(app.task.await.unwrap().unwrap(), Ended::Graceful);
    }

    #[tokio::test]
    async fn error_rate_is_spread_evenly() {
        let mut c = config();
        c.error_rate = 0.25;
        let mut app = Running::start(c).await;
        let mut errors_per_hundred = vec![0; 10];
        for i in 0..1000 {
            let (status, version, _) = app.get("/").await;
            assert_eq!(version.as_deref(), Some("v7"));
            match status {
                StatusCode::OK => {}
                StatusCode::INTERNAL_SERVER_ERROR => errors_per_hundred[i / 100] += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        // Exactly a quarter, and a quarter of every stretch of 100.
        assert_eq!(errors_per_hundred, vec![25; 10]);
        // Health and readiness are never failed on purpose.
        for _ in 0..20 {
            assert_eq!(app.get("/health").await.0, StatusCode::OK);
            assert_eq!(app.get("/ready").await.0, StatusCode::OK);
        }
        app.shutdown();
        app.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn odd_error_rates_round_down_over_the_run() {
        let mut c = config();
        c.error_rate = 0.037;
        let mut app = Running::start(c).await;
        let mut errors = 0;
        for _ in 0..1000 {
            if app.get("/").await.0 == StatusCode::INTERNAL_SERVER_ERROR {
                errors += 1;
            }
        }
        assert_eq!(errors, 37);
        app.shutdown();
        app.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn failing_health_and_latency() {
        let mut c = config();
        c.fail_health = true;
        c.latency = Duration::from_millis(150);
        let mut app = Running::start(c).await;
        assert_eq!(
            app.get("/health").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let started = Instant::now();
        assert_eq!(app.get("/").await.0, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(150));
        app.shutdown();
        app.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_finishes_requests_in_flight_then_refuses_connections() {
        let mut c = config();
        c.latency = Duration::from_millis(400);
        let mut app = Running::start(c).await;
        let (client, addr) = (app.client.clone(), app.addr);
        let in_flight = tokio::spawn(async move { get_with(&client, addr, "/").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.shutdown();
        let (status, _, body) = in_flight.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v7 green 2\n"));
        assert_eq!(app.task.await.unwrap().unwrap(), Ended::Graceful);
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[tokio::test]
    async fn ready_answers_503_while_draining() {
        let mut c = config();
        c.drain_delay = Duration::from_millis(500);
        let mut app = Running::start(c).await;
        assert_eq!(app.get("/ready").await.0, StatusCode::OK);
        app.shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _, body) = app.get("/ready").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        );
        // The app itself still answers while draining.
        assert_eq!(app.get("/").await.0, StatusCode::OK);
        assert_eq!(app.task.await.unwrap().unwrap(), Ended::Graceful);
    }

    #[tokio::test]
    async fn exit_after_simulates_a_crash() {
        let mut c = config();
        c.exit_after = Some(Duration::from_millis(100));
        let app = Running::start(c).await;
        assert_eq!(app.get("/health").await.0, StatusCode::OK);
        let ended = tokio::time::timeout(Duration::from_secs(5), app.task)
            .await
            .expect("did not crash")
            .unwrap()
            .unwrap();
        assert_eq!(ended, Ended::Crashed);
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn flags_and_environment() {
        let parsed = parse_args(
            [
                "--port",
                "8080",
                "--version=v2",
                "--error-rate",
                "0.1",
                "--latency-ms",
                "20",
                "--fail-health",
                "--exit-after",
                "1.5",
                "--drain-delay-ms=300",
            ],
            env(&[
                ("PORT", "9999"),
                ("ATLAS_VERSION", "v1"),
                ("ATLAS_SLOT", "blue"),
                ("ATLAS_REPLICA", "1"),
            ]),
        )
        .unwrap();
        let Invocation::Serve(c) = parsed else {
            panic!("expected a config, got {parsed:?}")
        };
        assert_eq!(c.port, 8080);
        assert_eq!(c.version, "v2");
        assert_eq!((c.slot.as_str(), c.replica.as_str()), ("blue", "1"));
        assert_eq!(c.error_rate, 0.1);
        assert_eq!(c.latency, Duration::from_millis(20));
        assert!(c.fail_health);
        assert_eq!(c.exit_after, Some(Duration::from_millis(1500)));
        assert_eq!(c.drain_delay, Duration::from_millis(300));

        let Invocation::Serve(c) = parse_args(
            Vec::<String>::new(),
            env(&[("PORT", "9999"), ("ATLAS_VERSION", "v1")]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c, {
            let mut d = DemoConfig::new(9999, "v1");
            d.slot = "-".into();
            d
        });
        assert_eq!(parse_args(["--help"], env(&[])).unwrap(), Invocation::Help);
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--error-rate", "1.5"],
                "--error-rate: must be between 0 and 1, got 1.5",
            ),
            (&["--error-rate", "x"], "--error-rate: not a number: \"x\""),
            (&["--latency-ms"], "--latency-ms: needs a value"),
            (
                &["--latency-ms", "-3"],
                "--latency-ms: must be a whole number ≥ 0, got \"-3\"",
            ),
            (
                &["--port", "70000"],
                "--port: must be a port number 0-65535, got \"70000\"",
            ),
            (
                &["--exit-after", "-1"],
                "--exit-after: must be a number of seconds ≥ 0, got -1",
            ),
            (&["--fail-health=yes"], "--fail-health: takes no value"),
            (&["--colour"], "--colour: unknown flag (see --help)"),
            (&["--version", ""], "--version: must not be empty"),
        ];
        for (args, expected) in cases {
            let mut full = vec!["--port", "1"];
            full.extend_from_slice(args);
            if args.first() == Some(&"--port") {
                full = args.to_vec();
            }
            let err = parse_args(full, env(&[])).unwrap_err();
            assert_eq!(err.to_string(), *expected, "{args:?}");
        }
        let err = parse_args(Vec::<String>::new(), env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--port: missing: pass --port N or set PORT"
        );
        let err = parse_args(Vec::<String>::new(), env(&[("PORT", "x")])).unwrap_err();
        assert_eq!(err.flag, "PORT");
    }

    /// The ledger against real PostgreSQL: writes are acknowledged only
    /// once committed, a target that cannot be reached answers 503 (not
    /// acknowledged) without taking the app down, and rewriting the target
    /// file moves the next write to the database it names.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    #[ignore = "needs PostgreSQL; run: cargo xtask test"]
    async fn ledger_writes_follow_the_target_file() {
        let url = std::env::var("ATLAS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into());
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db-target");
        std::fs::write(&target, &url).unwrap();
        let mut c = config();
        c.ledger_target = Some(target.clone());
        let mut app = Running::start(c).await;
        // Ids no earlier run used: the clock in microseconds, times 8.
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let base = i64::try_from(micros).unwrap() * 8;
        for id in base..base + 3 {
            let (status, _, body) = app.get(&format!("/ledger/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body, format!("committed {id}\n"));
        }
        // A target nobody listens on: not acknowledged.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        std::fs::write(
            &target,
            format!("host=127.0.0.1 port={} dbname=postgres", closed.port()),
        )
        .unwrap();
        let (status, _, body) = app.get(&format!("/ledger/{}", base + 3)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("not committed"), "{body}");
        assert_eq!(
            app.get("/health").await.0,
            StatusCode::OK,
            "the app stays up"
        );
        // Back to the real database, named the way a failover writes it.
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        let host = match &cfg.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("ATLAS_TEST_POSTGRES_URL names a socket: {other:?}"),
        };
        let json = serde_json::json!({
            "format": 1, "node": "db-a", "host": host, "port": cfg.get_ports()[0],
            "dbname": cfg.get_dbname().unwrap_or("postgres"),
            "user": cfg.get_user().unwrap_or("postgres"),
        });
        std::fs::write(&target, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        let (status, _, _) = app.get(&format!("/ledger/{}", base + 4)).await;
        assert_eq!(status, StatusCode::OK);
        let client = crate::ledger::connect(&url).await.unwrap();
        let ids = crate::ledger::ledger_ids(&client).await.unwrap();
        let mine: Vec<i64> = ids.range(base..base + 5).copied().collect();
        assert_eq!(
            mine,
            [base, base + 1, base + 2, base + 4],
            "exactly the acknowledged writes"
        );
        assert_eq!(app.get("/ledger/x").await.0, StatusCode::BAD_REQUEST);
        app.shutdown();
    }
}
