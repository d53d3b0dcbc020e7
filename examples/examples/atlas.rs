//! `atlas`: the operator's command line for a running `atlasd` — register
//! services, deploy releases with rollouts the daemon carries out, watch
//! them, and steer them with the vocabulary of Argo Rollouts' kubectl
//! plugin (promote, pause, resume, abort, retry, undo).
//!
//! ```text
//! atlas [--socket PATH | --tcp ADDR --token-file PATH] [--output text|json] COMMAND
//!
//!   services                                  list services and their routes
//!   services add NAME --host H [--host H2]... [--path-prefix /p]
//!   services remove NAME                      routes go, endpoints drain, replicas stop
//!   status [SERVICE] [--watch]                slots, traffic, latency, errors, rollout
//!   deploy SERVICE -f ROLLOUT.yaml [--version V] [--artifact PATH] [--arg A]... [--env K=V]...
//!          [--lease-ttl 15s] [--lease-wait 30s] [--probe-path /health] [--prometheus URL]
//!   promote SERVICE [--full]                  end the pause (--full: all traffic now)
//!   pause SERVICE | resume SERVICE
//!   abort SERVICE                             all traffic back to the stable release
//!   retry SERVICE                             start the rolled-back rollout again
//!   undo SERVICE                              roll out the previous promoted release
//!   scale SERVICE N [--timeout 5m]            the stable slot's replicas, without dropping a request
//!   logs SERVICE [--slot blue|green] [--replica I] [-n LINES] [--follow]
//! ```
//!
//! The daemon is reached on its admin socket (`--socket`, else
//! `ATLASD_SOCKET`, else `/var/lib/atlas/atlasd.sock`) or on its TCP
//! listener with a bearer token (`--tcp ADDR --token-file PATH`).
//!
//! **Who drives a rollout.** The daemon runs the replicas and the proxy;
//! the rollout's steps are driven by the `atlas deploy` that started it,
//! which runs the unchanged engine against the daemon
//! ([`RemoteWorkloads`], [`RemoteRouter`], [`RemoteStateStore`]) and holds
//! a lease on the service. `promote`, `pause`, `resume` and `abort` post a
//! steering command the daemon hands to that program. If that program is
//! gone (killed, its terminal closed), its lease ends after `--lease-ttl`
//! and traffic stays as it was: `atlas deploy` with the same spec again
//! resumes the rollout where it stopped (waiting up to `--lease-wait` for
//! the dead program's lease to end), and `atlas abort` or `atlas
//! promote` take it over in their own process and carry it to its end.
//!
//! Health probes (`GET --probe-path` on each replica's loopback port) are
//! sent by this program, so `deploy` runs on the daemon's host. A rollout
//! whose strategy uses analysis needs `--prometheus URL` (or
//! `ATLAS_PROMETHEUS_URL`).
//!
//! Exit status:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done; for `deploy`, `retry`, `undo` and a `promote` run here: promoted; for an `abort` run here: rolled back |
//! | 1 | the rollout ended the other way: rolled back (`deploy`, `retry`, `undo`, `promote`), or promoted before the abort came (`abort`) |
//! | 2 | an error, named on stderr (bad usage, daemon unreachable, refused call, nothing to steer, …) |
//! | 130 | interrupted (Ctrl-C) while driving a rollout: it keeps its traffic, a rerun resumes it |
//!
//! With `--output json` every verb prints one JSON document on stdout
//! (`status --watch`, `deploy` and `logs --follow` print one object per
//! line as things happen); messages and errors go to stderr.
//!
//! Run: `cargo run --release -p atlas-examples --example atlas -- --help`

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atlas_core::{
    Endpoint, Engine, Error, ErrorKind, Measurement, MetricProvider, MetricQuery, Outcome, Phase,
    RolloutEvent, RolloutHandle, RolloutState, ServiceName, Slot, StateStore, TrafficRouter,
    Versioned, Workloads,
};
use atlas_examples::cli::{OutputFormat, print_json};
use atlas_examples::main_support;
use atlas_local::daemon::api::{SequencedCommand, SteerCommand};
use atlas_local::daemon::client::{AtlasdClient, RemoteRouter, RemoteStateStore, RemoteWorkloads};
use atlas_local::proxy::ServiceRoute;
use atlas_metrics::PrometheusProvider;
use atlas_metrics::probe::HttpProbe;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

#[path = "atlas/render.rs"]
mod render;

type Failure = Box<dyn std::error::Error>;

/// Promoted; or, for `abort`, rolled back; or any other verb done.
const EXIT_OK: u8 = 0;
/// The rollout ended the other way than asked.
const EXIT_OTHER_WAY: u8 = 1;
/// An error.
const EXIT_ERROR: u8 = 2;
/// Ctrl-C while driving a rollout.
const EXIT_INTERRUPTED: u8 = 130;

/// How long one long poll for a steering command waits at the daemon.
const COMMAND_WAIT: Duration = Duration::from_secs(10);
/// The lease `promote`/`pause`/`resume`/`abort` try, to learn whether a
/// deploy program drives the rollout (granted: nobody does).
const PROBE_LEASE_TTL: Duration = Duration::from_secs(2);

/// The operator's command line for atlasd: services, deploys, status, and
/// steering rollouts (promote, pause, resume, abort, retry, undo).
///
/// A rollout is driven by the `atlas deploy` that started it; the steering
/// verbs post commands to it through the daemon, or take the rollout over
/// when its deploy program is gone.
#[derive(Debug, Parser)]
#[command(
    name = "atlas",
    version,
    args_override_self = true,
    after_help = "Exit status: 0 done (deploy, retry, undo: promoted; abort: rolled back), \
1 the rollout ended the other way, 2 error (named on stderr), 130 interrupted while driving \
a rollout (it keeps its traffic; run deploy again to resume it)."
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,

    /// text for people, json for scripts (one document; one object per
    /// line for --watch, deploy and --follow).
    #[arg(
        long,
        value_enum,
        default_value_t = OutputFormat::Text,
        global = true,
        help_heading = "Global options"
    )]
    output: OutputFormat,

    #[command(subcommand)]
    command: Command,
}

/// Where the daemon's admin API is.
#[derive(Debug, Args)]
struct Connection {
    /// The daemon's admin socket.
    #[arg(
        long,
        value_name = "PATH",
        env = "ATLASD_SOCKET",
        default_value = "/var/lib/atlas/atlasd.sock",
        global = true,
        help_heading = "Global options"
    )]
    socket: PathBuf,

    /// The daemon's admin TCP listener instead of the socket (with --token-file).
    #[arg(
        long,
        value_name = "ADDR",
        requires = "token_file",
        global = true,
        help_heading = "Global options"
    )]
    tcp: Option<SocketAddr>,

    /// The file holding the TCP listener's bearer token (its first line).
    #[arg(
        long,
        value_name = "PATH",
        requires = "tcp",
        global = true,
        help_heading = "Global options"
    )]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List services, or add or remove one.
    Services(ServicesArgs),
    /// Each service's slots, traffic, latency, errors and rollout.
    Status(StatusArgs),
    /// Roll a release out (or resume the rollout in progress) and drive it
    /// to its end, applying promote/pause/resume/abort as they are posted.
    Deploy(DeployArgs),
    /// End the rollout's pause, or skip the next one (--full: skip every
    /// remaining step, all traffic to the new release now).
    Promote(PromoteArgs),
    /// Pause the rollout at its current step; traffic stays as it is.
    Pause(ServiceArg),
    /// Resume a paused rollout.
    Resume(ServiceArg),
    /// Roll back: all traffic to the stable release in one router change.
    Abort(AbortArgs),
    /// Start the last rollout again after it was rolled back or aborted.
    Retry(RerunArgs),
    /// Roll out the release promoted before the current one, with the last
    /// rollout's strategy.
    Undo(RerunArgs),
    /// Set the replica count of the slot that serves the traffic.
    Scale(ScaleArgs),
    /// A replica's log.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
struct ServicesArgs {
    #[command(subcommand)]
    action: Option<ServicesAction>,
}

#[derive(Debug, Subcommand)]
enum ServicesAction {
    /// List the services and their routes (the default).
    List,
    /// Register a service and the requests that reach it.
    Add {
        /// The service: a DNS label such as `checkout`.
        #[arg(value_parser = parse_service)]
        name: ServiceName,
        /// A host name whose requests go to the service (repeat for more).
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
        /// Only requests whose path starts with this go to the service.
        #[arg(long, value_name = "PREFIX")]
        path_prefix: Option<String>,
    },
    /// Remove a service: its routes go at once, its endpoints drain, its
    /// replicas stop; its rollout state and history are kept.
    Remove {
        /// The service.
        #[arg(value_parser = parse_service)]
        name: ServiceName,
    },
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// One service (default: all).
    #[arg(value_parser = parse_service)]
    service: Option<ServiceName>,
    /// Redraw every second until Ctrl-C.
    #[arg(short, long)]
    watch: bool,
}

/// How this process drives a rollout, when it does.
#[derive(Debug, Clone, Args)]
struct EngineArgs {
    /// This program's lease on the rollout: if it dies (even by SIGKILL), a
    /// rerun can resume the rollout after at most this long.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// The path each replica's health probe GETs (2xx: healthy).
    #[arg(long, value_name = "PATH", default_value = "/health")]
    probe_path: String,
    /// How long to wait for another holder's lease on the rollout to end
    /// (a deploy program killed a moment ago holds it up to its lease ttl).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    lease_wait: Duration,
    /// Prometheus for the rollout's analysis queries.
    #[arg(long, value_name = "URL", env = "ATLAS_PROMETHEUS_URL")]
    prometheus: Option<String>,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The service (the spec must name the same).
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    /// The rollout spec (YAML or TOML; see examples/specs/).
    #[arg(short = 'f', long = "file", value_name = "ROLLOUT")]
    file: PathBuf,
    /// Replaces release.version.
    #[arg(long, value_name = "V")]
    version: Option<String>,
    /// Replaces release.artifact (a relative path is made absolute here).
    #[arg(long, value_name = "PATH")]
    artifact: Option<String>,
    /// Replaces release.args (repeat for each argument).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Sets an environment variable of every replica (repeat; never printed).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct ServiceArg {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
}

#[derive(Debug, Args)]
struct PromoteArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    /// Skip every remaining pause, analysis and traffic step.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct AbortArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct RerunArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    /// Replicas (at least 1).
    replicas: u32,
    /// How long new replicas may take to become ready.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    /// The slot (default: the one serving the traffic).
    #[arg(long, value_enum)]
    slot: Option<SlotArg>,
    /// The replica's index in the slot.
    #[arg(long, value_name = "I", default_value_t = 0)]
    replica: u32,
    /// How many lines from the end.
    #[arg(short = 'n', long, value_name = "LINES", default_value_t = 50)]
    lines: u32,
    /// Keep printing new lines until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SlotArg {
    Blue,
    Green,
}

impl From<SlotArg> for Slot {
    fn from(slot: SlotArg) -> Slot {
        match slot {
            SlotArg::Blue => Slot::Blue,
            SlotArg::Green => Slot::Green,
        }
    }
}

fn parse_service(s: &str) -> Result<ServiceName, String> {
    ServiceName::new(s).map_err(|e| e.to_string())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Rollout events are printed as lines of their own; RUST_LOG shows more.
    main_support::init_tracing("error");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("atlas: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("atlas: {}", explain(e.as_ref()));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The error's message, with a hint when the daemon did not answer.
fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<Error>() {
        Some(err)
            if err.kind() == ErrorKind::Transient && err.to_string().contains("not answering") =>
        {
            format!(
                "{err} (is atlasd running? the socket is --socket or ATLASD_SOCKET; --tcp for its TCP listener)"
            )
        }
        _ => e.to_string(),
    }
}

/// What every verb needs.
struct Ctx {
    client: AtlasdClient,
    output: OutputFormat,
}

impl Ctx {
    fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// A message for people: stdout in text mode, stderr under `--output
    /// json` (stdout then holds only JSON).
    fn say(&self, text: impl AsRef<str>) {
        if self.json() {
            eprintln!("{}", text.as_ref());
        } else {
            println!("{}", text.as_ref());
        }
    }

    fn store(&self) -> RemoteStateStore {
        RemoteStateStore::new(self.client.clone())
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let client = match (cli.connection.tcp, &cli.connection.token_file) {
        (Some(addr), Some(token)) => AtlasdClient::tcp(addr, token)?,
        _ => AtlasdClient::unix(&cli.connection.socket),
    };
    let ctx = Ctx {
        client,
        output: cli.output,
    };
    match cli.command {
        Command::Services(args) => {
            services(&ctx, args.action.unwrap_or(ServicesAction::List)).await
        }
        Command::Status(args) => status(&ctx, args).await,
        Command::Deploy(args) => deploy(&ctx, args).await,
        Command::Promote(args) => {
            let command = if args.full {
                SteerCommand::PromoteFull
            } else {
                SteerCommand::Promote
            };
            steer(&ctx, &args.service, command, Some(&args.engine)).await
        }
        Command::Pause(args) => steer(&ctx, &args.service, SteerCommand::Pause, None).await,
        Command::Resume(args) => steer(&ctx, &args.service, SteerCommand::Resume, None).await,
        Command::Abort(args) => {
            steer(&ctx, &args.service, SteerCommand::Abort, Some(&args.engine)).await
        }
        Command::Retry(args) => retry(&ctx, &args).await,
        Command::Undo(args) => undo(&ctx, &args).await,
        Command::Scale(args) => scale(&ctx, &args).await,
        Command::Logs(args) => logs(&ctx, &args).await,
    }
}

// ---------------------------------------------------------------- services

#[derive(Serialize)]
struct ServiceRow<'a> {
    service: &'a ServiceName,
    #[serde(flatten)]
    route: &'a ServiceRoute,
}

async fn services(ctx: &Ctx, action: ServicesAction) -> Result<u8, Failure> {
    match action {
        ServicesAction::List => {
            let services = ctx.client.services().await?;
            if ctx.json() {
                let rows: Vec<ServiceRow<'_>> = services
                    .iter()
                    .map(|(service, route)| ServiceRow { service, route })
                    .collect();
                print_json(&rows)?;
            } else {
                print!("{}", render::services_table(&services));
            }
        }
        ServicesAction::Add {
            name,
            hosts,
            path_prefix,
        } => {
            let route = ServiceRoute { hosts, path_prefix };
            ctx.client.register_service(&name, route.clone()).await?;
            if ctx.json() {
                print_json(&ServiceRow {
                    service: &name,
                    route: &route,
                })?;
            } else {
                println!("registered {name}: {}", render::route(&route));
            }
        }
        ServicesAction::Remove { name } => {
            ctx.client.remove_service(&name).await?;
            if ctx.json() {
                print_json(&serde_json::json!({ "service": name, "removed": true }))?;
            } else {
                println!(
                    "removed {name}: routes gone, endpoints drained, replicas stopped (rollout history kept)"
                );
            }
        }
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------- status

async fn status(ctx: &Ctx, args: StatusArgs) -> Result<u8, Failure> {
    if !args.watch {
        let statuses = ctx.client.status(args.service.as_ref()).await?;
        if ctx.json() {
            print_json(&statuses)?;
        } else {
            print!("{}", render::status_table(&statuses));
        }
        return Ok(EXIT_OK);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(EXIT_OK),
            _ = tick.tick() => {}
        }
        let statuses = ctx.client.status(args.service.as_ref()).await;
        let mut out = std::io::stdout().lock();
        match (statuses, ctx.json()) {
            (Ok(statuses), true) => writeln!(out, "{}", serde_json::to_string(&statuses)?)?,
            (Ok(statuses), false) => write!(
                out,
                "{}{}\n(every 1 s; Ctrl-C stops)\n",
                render::CLEAR_SCREEN,
                render::status_table(&statuses)
            )?,
            // A daemon restarting (atlasd --takeover) is back in a moment.
            (Err(e), _) if e.kind() == ErrorKind::Transient => {
                eprintln!("atlas: {}", explain(&e));
            }
            (Err(e), _) => return Err(e.into()),
        }
        out.flush()?;
    }
}

// ---------------------------------------------------------------- deploy

/// The rollout of `file` with the command line's release changes.
fn rollout_from(args: &DeployArgs) -> Result<atlas_core::Rollout, Failure> {
    let mut rollout = atlas_core::spec::load(&args.file)?;
    if rollout.service != args.service {
        return Err(Error::invalid(
            format!("{}: service", args.file.display()),
            format!(
                "names service {}, but the command line deploys {}",
                rollout.service, args.service
            ),
        )
        .into());
    }
    let release = &mut rollout.release;
    if let Some(version) = &args.version {
        release.version.clone_from(version);
    }
    if let Some(artifact) = &args.artifact {
        release.artifact.clone_from(artifact);
    }
    release.artifact = absolute_artifact(&release.artifact, &std::env::current_dir()?);
    if !args.args.is_empty() {
        release.args.clone_from(&args.args);
    }
    for (key, value) in &args.env {
        release.env.insert(key.clone(), value.clone());
    }
    release.validate()?;
    Ok(rollout)
}

/// The daemon starts replicas from its own working directory: a relative
/// path that exists in `here` (this program's directory) is made
/// absolute; a bare name stays one (looked up in the daemon's `PATH`).
fn absolute_artifact(artifact: &str, here: &Path) -> String {
    let path = Path::new(artifact);
    if path.is_relative()
        && artifact.contains('/')
        && let Ok(absolute) = here.join(path).canonicalize()
    {
        return absolute.display().to_string();
    }
    artifact.to_owned()
}

async fn deploy(ctx: &Ctx, args: DeployArgs) -> Result<u8, Failure> {
    let rollout = rollout_from(&args)?;
    let service = rollout.service.clone();
    needs_metrics(&rollout, &args.engine)?;
    let after = current_command(ctx, &service).await?;
    let engine = build_engine(&ctx.client, &args.engine, false)?;
    let events = engine.subscribe();
    let handle = match unfinished(ctx, &service).await? {
        Some(stored) => {
            let running = &stored.value.rollout.release;
            if running.version != rollout.release.version
                || running.artifact != rollout.release.artifact
            {
                return Err(Error::precondition(format!(
                    "a rollout of {service} to {} ({}) is in progress; `atlas deploy` of the same release resumes it, `atlas abort {service}` ends it before deploying {}",
                    running.version, running.artifact, rollout.release.version
                ))
                .into());
            }
            ctx.say(format!(
                "resuming rollout {} of {service}: {} → {}, step {}, canary {} %",
                stored.value.id,
                stored.value.stable_version.as_deref().unwrap_or("nothing"),
                running.version,
                stored.value.step,
                stored.value.weight.percent()
            ));
            with_lease(ctx, &service, args.engine.lease_wait, || {
                engine.resume(&service)
            })
            .await?
            .ok_or_else(|| format!("the rollout of {service} finished meanwhile"))?
        }
        None => {
            ctx.say(format!(
                "deploying {} of {service} ({})",
                rollout.release.version, rollout.release.artifact
            ));
            with_lease(ctx, &service, args.engine.lease_wait, || {
                engine.start(rollout.clone())
            })
            .await?
        }
    };
    let ended = drive(ctx, &service, handle, events, after, None).await?;
    Ok(ended.exit_code(false))
}

/// Runs `take` (an engine's start or resume, which take the service's
/// lease first) and, while another holder's lease refuses it, tries again
/// for up to `wait`: a deploy program killed a moment ago holds its lease
/// until its ttl runs out, and a rerun waits that out.
async fn with_lease<T, F, Fut>(
    ctx: &Ctx,
    service: &ServiceName,
    wait: Duration,
    mut take: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = atlas_core::Result<T>>,
{
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match take().await {
            Err(e) if is_lease_conflict(&e) && Instant::now() < deadline => {
                if !told {
                    ctx.say(format!(
                        "waiting up to {} for the lease on {service} ({e})",
                        humantime::format_duration(wait)
                    ));
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(driven_elsewhere(service, e).into()),
            Ok(taken) => return Ok(taken),
        }
    }
}

/// Whether `e` is the daemon refusing a lease held by someone else (not
/// another conflict, such as a rollout left unfinished).
fn is_lease_conflict(e: &Error) -> bool {
    e.kind() == ErrorKind::Conflict && e.to_string().contains("lease")
}

/// A conflict on the lease means another program drives the rollout.
fn driven_elsewhere(service: &ServiceName, e: Error) -> Error {
    if is_lease_conflict(&e) {
        Error::Conflict {
            what: format!(
                "another program drives the rollout of {service} ({e}); steer it with atlas promote|pause|resume|abort {service}"
            ),
        }
    } else {
        e
    }
}

/// A rollout that uses analysis needs a metric source.
fn needs_metrics(rollout: &atlas_core::Rollout, engine: &EngineArgs) -> Result<(), Failure> {
    let refs = rollout.strategy.analysis_refs();
    if engine.prometheus.is_none() && !refs.is_empty() {
        let names: Vec<&str> = refs.iter().map(|(name, _)| name.as_str()).collect();
        return Err(Error::invalid(
            "--prometheus",
            format!(
                "the rollout of {} runs analysis ({}): pass --prometheus URL or set ATLAS_PROMETHEUS_URL",
                rollout.service,
                names.join(", ")
            ),
        )
        .into());
    }
    Ok(())
}

/// The engine, driving rollouts on the daemon from this process.
/// `abort_only`: an engine that will only roll back, which runs no
/// analysis and so needs no metric source.
fn build_engine(
    client: &AtlasdClient,
    args: &EngineArgs,
    abort_only: bool,
) -> Result<Engine, Failure> {
    let mut builder = Engine::builder()
        .workloads(Arc::new(RemoteWorkloads::new(client.clone())))
        .router(Arc::new(RemoteRouter::new(client.clone())))
        .store(Arc::new(RemoteStateStore::new(client.clone())))
        .probe(Arc::new(HttpProbe::get(&args.probe_path)?))
        .lease_ttl(args.lease_ttl)
        .poll_interval(Duration::from_millis(500));
    if let Some(url) = &args.prometheus {
        builder = builder.metrics(Arc::new(PrometheusProvider::new(url.clone())?));
    } else if abort_only {
        builder = builder.metrics(Arc::new(NoMeasurements));
    }
    Ok(builder.build()?)
}

/// The metric source of an engine that only aborts: a rollback measures
/// nothing, and a measurement asked for anyway fails rather than passes.
struct NoMeasurements;

#[async_trait]
impl MetricProvider for NoMeasurements {
    async fn measure(&self, query: &MetricQuery) -> atlas_core::Result<Measurement> {
        Err(Error::precondition(format!(
            "atlas abort measures nothing (asked for {}; pass --prometheus to measure)",
            query.metric
        )))
    }
}

/// The sequence number of the last steering command posted for
/// `service`: commands up to it are stale and not applied.
async fn current_command(ctx: &Ctx, service: &ServiceName) -> Result<u64, Failure> {
    Ok(ctx
        .client
        .next_command(service, 0, Duration::ZERO)
        .await?
        .map_or(0, |c| c.seq))
}

/// The stored rollout of `service` if it has not finished.
async fn unfinished(
    ctx: &Ctx,
    service: &ServiceName,
) -> Result<Option<Versioned<RolloutState>>, Failure> {
    Ok(ctx
        .store()
        .load(service)
        .await?
        .filter(|v| !v.value.phase.is_terminal()))
}

/// How driving a rollout ended.
enum Driven {
    Ended(Outcome),
    Interrupted,
}

impl Driven {
    /// The exit status: 0 when the rollout ended as asked (`aborting`:
    /// rolled back; otherwise promoted).
    fn exit_code(&self, aborting: bool) -> u8 {
        match (self, aborting) {
            (Driven::Ended(Outcome::Promoted { .. }), false)
            | (Driven::Ended(Outcome::RolledBack { .. }), true) => EXIT_OK,
            (Driven::Ended(_), _) => EXIT_OTHER_WAY,
            (Driven::Interrupted, _) => EXIT_INTERRUPTED,
        }
    }
}

/// Drives the rollout `handle` to its end: prints its events, applies
/// `first`, then each steering command posted after `after`, until it is
/// promoted or rolled back (or Ctrl-C, which leaves it where it is).
async fn drive(
    ctx: &Ctx,
    service: &ServiceName,
    handle: RolloutHandle,
    mut events: broadcast::Receiver<RolloutEvent>,
    after: u64,
    first: Option<SteerCommand>,
) -> Result<Driven, Failure> {
    let t0 = Instant::now();
    if let Some(command) = first {
        apply(&handle, command)?;
    }
    let (commands_tx, mut commands) = mpsc::channel(8);
    let poller = tokio::spawn(poll_commands(
        ctx.client.clone(),
        service.clone(),
        after,
        commands_tx,
    ));
    let mut state = handle.watch();
    let finished = state.wait_for(|s| s.phase.is_terminal());
    tokio::pin!(finished);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let interrupted = loop {
        tokio::select! {
            _ = &mut finished => break false,
            _ = &mut interrupt => break true,
            Some(command) = commands.recv() => {
                ctx.say(format!("[{:>6.1}s] received {} (#{})", t0.elapsed().as_secs_f64(), command.command, command.seq));
                if let Err(e) = apply(&handle, command.command) {
                    eprintln!("atlas: cannot apply {}: {e}", command.command);
                }
            }
            event = events.recv() => match event {
                Ok(event) => show_event(ctx, &event, t0)?,
                Err(broadcast::error::RecvError::Lagged(n)) => eprintln!("atlas: {n} rollout events not shown"),
                Err(broadcast::error::RecvError::Closed) => {}
            },
        }
    };
    poller.abort();
    if interrupted {
        let now = handle.state();
        eprintln!(
            "atlas: interrupted; the rollout of {service} stays at step {} with canary {} % — `atlas deploy` with the same spec resumes it (after its lease of this program ends), `atlas abort {service}` rolls it back",
            now.step,
            now.weight.percent()
        );
        return Ok(Driven::Interrupted);
    }
    let outcome = handle.wait().await?;
    // The last events (promoted, rolled back) were sent before the state
    // that ended the wait.
    while let Ok(event) = events.try_recv() {
        show_event(ctx, &event, t0)?;
    }
    if ctx.json() {
        let json = match &outcome {
            Outcome::Promoted { version } => {
                serde_json::json!({ "service": service, "outcome": "promoted", "version": version })
            }
            Outcome::RolledBack { reason } => {
                serde_json::json!({ "service": service, "outcome": "rolled_back", "reason": reason })
            }
        };
        println!("{json}");
    } else {
        println!("{service}: {outcome}");
    }
    Ok(Driven::Ended(outcome))
}

fn show_event(ctx: &Ctx, event: &RolloutEvent, t0: Instant) -> Result<(), Failure> {
    if ctx.json() {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "event": event }))?
        );
    } else if let Some(line) = render::event_line(event, t0.elapsed()) {
        println!("{line}");
    }
    Ok(())
}

/// Long-polls the daemon for steering commands after `after` and passes
/// them on, until the receiver goes; a daemon that does not answer (being
/// restarted) is asked again a second later.
async fn poll_commands(
    client: AtlasdClient,
    service: ServiceName,
    mut after: u64,
    to: mpsc::Sender<SequencedCommand>,
) {
    let mut warned = false;
    loop {
        match client.next_command(&service, after, COMMAND_WAIT).await {
            Ok(Some(command)) => {
                after = command.seq;
                warned = false;
                if to.send(command).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                if !warned {
                    eprintln!("atlas: cannot read steering commands ({e}); retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if to.is_closed() {
            return;
        }
    }
}

fn apply(handle: &RolloutHandle, command: SteerCommand) -> atlas_core::Result<()> {
    match command {
        SteerCommand::Promote => handle.promote(),
        SteerCommand::PromoteFull => handle.promote_full(),
        SteerCommand::Pause => handle.pause(),
        SteerCommand::Resume => handle.resume(),
        SteerCommand::Abort => handle.abort(),
    }
}

// ---------------------------------------------------------------- steering

/// One line about a finished rollout, for errors.
fn finished_line(state: &RolloutState) -> String {
    match &state.phase {
        Phase::Promoted => format!("{} promoted {}", state.id, state.rollout.release.version),
        Phase::RolledBack { reason } => format!(
            "{} of {} rolled back: {reason}",
            state.id, state.rollout.release.version
        ),
        other => format!("{} {other:?}", state.id),
    }
}

async fn steer(
    ctx: &Ctx,
    service: &ServiceName,
    command: SteerCommand,
    engine: Option<&EngineArgs>,
) -> Result<u8, Failure> {
    let store = ctx.store();
    let stored = match store.load(service).await? {
        None => {
            return Err(Error::precondition(format!(
                "no rollout of {service} was ever started (atlas deploy {service} -f ROLLOUT.yaml)"
            ))
            .into());
        }
        Some(v) if v.value.phase.is_terminal() => {
            return Err(Error::precondition(format!(
                "no rollout of {service} is in progress to {command}: the last one, {}",
                finished_line(&v.value)
            ))
            .into());
        }
        Some(v) => v.value,
    };
    let holder = format!("atlas-cli-{}", std::process::id());
    match store.acquire_lease(service, &holder, PROBE_LEASE_TTL).await {
        Ok(lease) => store.release_lease(&lease).await?,
        Err(e) if e.kind() == ErrorKind::Conflict => {
            ctx.client.steer(service, command).await?;
            if ctx.json() {
                print_json(
                    &serde_json::json!({ "service": service, "command": command, "applied_by": "deploy program" }),
                )?;
            } else {
                println!(
                    "{command} posted for {service}; the program driving its rollout applies it"
                );
            }
            return Ok(EXIT_OK);
        }
        Err(e) => return Err(e.into()),
    }
    // Nobody drives the rollout: its deploy program is gone.
    let Some(engine_args) = engine.filter(|_| {
        matches!(
            command,
            SteerCommand::Promote | SteerCommand::PromoteFull | SteerCommand::Abort
        )
    }) else {
        return Err(Error::precondition(format!(
            "nobody drives the rollout of {service} (its deploy program is gone), so nothing would {command} it: \
             `atlas deploy {service} -f ROLLOUT.yaml` resumes it, `atlas promote {service}` or `atlas abort {service}` finish it from here"
        ))
        .into());
    };
    let aborting = command == SteerCommand::Abort;
    if !aborting {
        // Promoting goes on through the remaining steps, analyses included.
        needs_metrics(&stored.rollout, engine_args)?;
    }
    let after = current_command(ctx, service).await?;
    let engine = build_engine(&ctx.client, engine_args, aborting)?;
    let events = engine.subscribe();
    ctx.say(format!(
        "nobody drives the rollout of {service}; taking it over here to {command}"
    ));
    let handle = engine
        .resume(service)
        .await
        .map_err(|e| driven_elsewhere(service, e))?
        .ok_or_else(|| format!("the rollout of {service} finished meanwhile"))?;
    let ended = drive(ctx, service, handle, events, after, Some(command)).await?;
    Ok(ended.exit_code(aborting))
}

// ---------------------------------------------------------------- retry, undo

/// The last rollout of `service`, which must have finished.
async fn last_finished(
    ctx: &Ctx,
    service: &ServiceName,
    verb: &str,
) -> Result<RolloutState, Failure> {
    match ctx.store().load(service).await? {
        None => Err(Error::precondition(format!(
            "{service} has no rollout to {verb} (atlas deploy {service} -f ROLLOUT.yaml)"
        ))
        .into()),
        Some(v) if !v.value.phase.is_terminal() => Err(Error::precondition(format!(
            "rollout {} of {service} is still in progress; atlas promote|abort {service} first",
            v.value.id
        ))
        .into()),
        Some(v) => Ok(v.value),
    }
}

async fn retry(ctx: &Ctx, args: &RerunArgs) -> Result<u8, Failure> {
    let service = &args.service;
    let last = last_finished(ctx, service, "retry").await?;
    if last.phase == Phase::Promoted {
        return Err(Error::precondition(format!(
            "the last rollout of {service}, {}, so there is nothing to retry (atlas undo {service} goes back)",
            finished_line(&last)
        ))
        .into());
    }
    ctx.say(format!(
        "retrying {} of {service} (last time: {})",
        last.rollout.release.version,
        finished_line(&last)
    ));
    start_and_drive(ctx, last.rollout, &args.engine).await
}

async fn undo(ctx: &Ctx, args: &RerunArgs) -> Result<u8, Failure> {
    let service = &args.service;
    let history = ctx.client.history(service).await?;
    let [.., previous, current] = history.as_slice() else {
        return Err(Error::precondition(format!(
            "{service} has {} promoted release(s); undo needs one before the current",
            history.len()
        ))
        .into());
    };
    let mut rollout = last_finished(ctx, service, "undo").await?.rollout;
    ctx.say(format!(
        "undo: rolling {service} back from {} to {}",
        current.version, previous.version
    ));
    rollout.release = previous.clone();
    start_and_drive(ctx, rollout, &args.engine).await
}

async fn start_and_drive(
    ctx: &Ctx,
    rollout: atlas_core::Rollout,
    args: &EngineArgs,
) -> Result<u8, Failure> {
    needs_metrics(&rollout, args)?;
    let service = rollout.service.clone();
    let after = current_command(ctx, &service).await?;
    let engine = build_engine(&ctx.client, args, false)?;
    let events = engine.subscribe();
    let handle = with_lease(ctx, &service, args.lease_wait, || {
        engine.start(rollout.clone())
    })
    .await?;
    Ok(drive(ctx, &service, handle, events, after, None)
        .await?
        .exit_code(false))
}

// ---------------------------------------------------------------- scale

/// The slot with all of `service`'s traffic.
async fn serving_slot(ctx: &Ctx, service: &ServiceName) -> Result<Slot, Failure> {
    let split = RemoteRouter::new(ctx.client.clone())
        .split(service)
        .await?
        .ok_or_else(|| {
            Error::precondition(format!(
                "{service} has no traffic yet (atlas deploy {service} -f ROLLOUT.yaml)"
            ))
        })?;
    if split.is_all_to(split.canary()) {
        Ok(split.canary())
    } else if split.is_all_to(split.stable()) {
        Ok(split.stable())
    } else {
        Err(Error::precondition(format!(
            "{service}'s traffic is split ({split}): a rollout is in progress"
        ))
        .into())
    }
}

async fn scale(ctx: &Ctx, args: &ScaleArgs) -> Result<u8, Failure> {
    let service = &args.service;
    if args.replicas == 0 {
        return Err(Error::invalid(
            "replicas",
            format!("must be at least 1: the slot serves {service}'s traffic (atlas services remove {service} stops it)"),
        )
        .into());
    }
    if let Some(running) = unfinished(ctx, service).await? {
        return Err(Error::precondition(format!(
            "rollout {} of {service} is in progress and sets the replica counts itself; scale after it ends",
            running.value.id
        ))
        .into());
    }
    let slot = serving_slot(ctx, service).await?;
    let workloads = RemoteWorkloads::new(ctx.client.clone());
    let router = RemoteRouter::new(ctx.client.clone());
    let before = workloads.status(service, slot).await?;
    let n = args.replicas;
    if n < before.desired {
        // Drain the replicas that go first, so no request is cut.
        let keep: Vec<Endpoint> = before.endpoints.iter().take(n as usize).cloned().collect();
        router.set_endpoints(service, slot, &keep).await?;
        workloads.scale(service, slot, n).await?;
    } else if n > before.desired {
        workloads.scale(service, slot, n).await?;
        let deadline = Instant::now() + args.timeout;
        let ready = loop {
            let now = workloads.status(service, slot).await?;
            if now.ready >= n {
                break now;
            }
            if Instant::now() >= deadline {
                return Err(Error::Deadline {
                    what: format!(
                        "scaling {service} {slot} to {n} replicas ({} ready, the routed ones keep serving{})",
                        now.ready,
                        if now.failures.is_empty() {
                            String::new()
                        } else {
                            format!("; failures: {}", now.failures.join("; "))
                        }
                    ),
                    after: args.timeout,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        router
            .set_endpoints(service, slot, &ready.endpoints)
            .await?;
    }
    let after = workloads.status(service, slot).await?;
    if ctx.json() {
        print_json(
            &serde_json::json!({ "service": service, "slot": slot, "from": before.desired, "status": after }),
        )?;
    } else {
        println!(
            "{service} {slot}: {} → {} replicas ({} ready, {} routed)",
            before.desired,
            after.desired,
            after.ready,
            after.endpoints.len().min(n as usize)
        );
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------- logs

async fn logs(ctx: &Ctx, args: &LogsArgs) -> Result<u8, Failure> {
    let service = &args.service;
    let slot = match args.slot {
        Some(slot) => slot.into(),
        None => serving_slot(ctx, service).await.unwrap_or(Slot::Blue),
    };
    let (path, lines) = ctx
        .client
        .logs(service, slot, args.replica, args.lines)
        .await?;
    if ctx.json() && !args.follow {
        print_json(
            &serde_json::json!({ "service": service, "slot": slot, "replica": args.replica, "path": path, "lines": lines }),
        )?;
        return Ok(EXIT_OK);
    }
    if !ctx.json() {
        eprintln!("==> {path} <==");
    }
    print_lines(ctx, &lines)?;
    if !args.follow {
        return Ok(EXIT_OK);
    }
    // The daemon answers the last lines of the file; what is new is what
    // follows the previous answer's tail. A window of 1000 lines a second
    // keeps up with any replica a person reads the log of.
    let mut seen = ctx.client.logs(service, slot, args.replica, 1000).await?.1;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(EXIT_OK),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let latest = match ctx.client.logs(service, slot, args.replica, 1000).await {
            Ok((_, latest)) => latest,
            Err(e) if e.kind() == ErrorKind::Transient => continue,
            Err(e) => return Err(e.into()),
        };
        print_lines(ctx, render::new_lines(&seen, &latest))?;
        seen = latest;
    }
}

fn print_lines(ctx: &Ctx, lines: &[String]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if ctx.json() {
            writeln!(out, "{}", serde_json::json!({ "line": line }))?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("atlas").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn services_lists_by_default_and_add_needs_a_host() {
        let cli = parse(&["services"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Services(ServicesArgs { action: None })
        ));
        let cli = parse(&[
            "services",
            "add",
            "web",
            "--host",
            "a.example",
            "--host",
            "b.example",
            "--path-prefix",
            "/api",
        ])
        .unwrap();
        let Command::Services(ServicesArgs {
            action:
                Some(ServicesAction::Add {
                    name,
                    hosts,
                    path_prefix,
                }),
        }) = cli.command
        else {
            panic!("not services add: {:?}", cli.command)
        };
        assert_eq!(name.as_str(), "web");
        assert_eq!(hosts, ["a.example", "b.example"]);
        assert_eq!(path_prefix.as_deref(), Some("/api"));
        let err = parse(&["services", "add", "web"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // A name that is not a DNS label is refused by the parser, naming why.
        let err = parse(&["services", "add", "Web_1", "--host", "a"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(parse(&["services", "remove", "web"]).is_ok());
    }

    #[test]
    fn the_connection_is_the_socket_unless_tcp_with_a_token() {
        let cli = parse(&["--socket", "/run/a.sock", "status"]).unwrap();
        assert_eq!(cli.connection.socket, Path::new("/run/a.sock"));
        assert_eq!(cli.connection.tcp, None);
        // Global options may follow the verb.
        let cli = parse(&[
            "status",
            "web",
            "--tcp",
            "127.0.0.1:9200",
            "--token-file",
            "/etc/atlas/token",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.connection.tcp, Some("127.0.0.1:9200".parse().unwrap()));
        assert_eq!(
            cli.connection.token_file.as_deref(),
            Some(Path::new("/etc/atlas/token"))
        );
        assert_eq!(cli.output, OutputFormat::Json);
        let err = parse(&["--tcp", "127.0.0.1:9200", "status"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse(&["--token-file", "/t", "status"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(parse(&["--tcp", "not-an-address", "--token-file", "/t", "status"]).is_err());
    }

    #[test]
    fn deploy_takes_release_overrides_and_engine_settings() {
        let cli = parse(&[
            "deploy",
            "web",
            "-f",
            "web.yaml",
            "--version",
            "v3",
            "--artifact",
            "./bin/web",
            "--arg",
            "--port-from-env",
            "--arg",
            "-v",
            "--env",
            "MODE=prod",
            "--env",
            "EMPTY=",
            "--lease-ttl",
            "5s",
            "--prometheus",
            "http://127.0.0.1:9090",
        ])
        .unwrap();
        let Command::Deploy(d) = cli.command else {
            panic!("not a deploy: {:?}", cli.command)
        };
        assert_eq!(d.service.as_str(), "web");
        assert_eq!(d.file, Path::new("web.yaml"));
        assert_eq!(d.version.as_deref(), Some("v3"));
        assert_eq!(d.artifact.as_deref(), Some("./bin/web"));
        assert_eq!(d.args, ["--port-from-env", "-v"]);
        assert_eq!(
            d.env,
            [
                ("MODE".to_owned(), "prod".to_owned()),
                ("EMPTY".to_owned(), String::new())
            ]
        );
        assert_eq!(d.engine.lease_ttl, Duration::from_secs(5));
        assert_eq!(d.engine.probe_path, "/health");
        assert_eq!(
            d.engine.prometheus.as_deref(),
            Some("http://127.0.0.1:9090")
        );

        let cli = parse(&["deploy", "web", "-f", "web.yaml"]).unwrap();
        let Command::Deploy(d) = cli.command else {
            panic!()
        };
        assert_eq!(
            d.engine.lease_ttl,
            Duration::from_secs(15),
            "Argo-like default lease"
        );
        assert!(d.args.is_empty() && d.env.is_empty() && d.version.is_none());

        assert_eq!(
            parse(&["deploy", "web"]).unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["deploy", "web", "-f", "w.yaml", "--env", "NOEQUALS"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&["deploy", "web", "-f", "w.yaml", "--lease-ttl", "soon"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn steering_verbs_parse() {
        let Command::Promote(p) = parse(&["promote", "web", "--full"]).unwrap().command else {
            panic!()
        };
        assert!(p.full);
        let Command::Promote(p) = parse(&["promote", "web"]).unwrap().command else {
            panic!()
        };
        assert!(!p.full);
        assert!(matches!(
            parse(&["pause", "web"]).unwrap().command,
            Command::Pause(_)
        ));
        assert!(matches!(
            parse(&["resume", "web"]).unwrap().command,
            Command::Resume(_)
        ));
        assert!(matches!(
            parse(&["abort", "web"]).unwrap().command,
            Command::Abort(_)
        ));
        assert!(matches!(
            parse(&["retry", "web"]).unwrap().command,
            Command::Retry(_)
        ));
        assert!(matches!(
            parse(&["undo", "web"]).unwrap().command,
            Command::Undo(_)
        ));
        // pause and resume never drive a rollout: no engine flags.
        assert!(parse(&["pause", "web", "--lease-ttl", "5s"]).is_err());
        assert!(parse(&["promote"]).is_err());
    }

    #[test]
    fn scale_status_and_logs_parse() {
        let Command::Scale(s) = parse(&["scale", "web", "4"]).unwrap().command else {
            panic!()
        };
        assert_eq!((s.replicas, s.timeout), (4, Duration::from_secs(300)));
        assert!(parse(&["scale", "web", "-1"]).is_err());
        let Command::Status(s) = parse(&["status", "--watch"]).unwrap().command else {
            panic!()
        };
        assert!(s.watch && s.service.is_none());
        let Command::Logs(l) = parse(&[
            "logs",
            "web",
            "--slot",
            "green",
            "--replica",
            "2",
            "-n",
            "10",
            "--follow",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(
            (l.slot, l.replica, l.lines, l.follow),
            (Some(SlotArg::Green), 2, 10, true)
        );
        let Command::Logs(l) = parse(&["logs", "web"]).unwrap().command else {
            panic!()
        };
        assert_eq!((l.slot, l.replica, l.lines, l.follow), (None, 0, 50, false));
        assert!(parse(&["logs", "web", "--slot", "red"]).is_err());
    }

    #[test]
    fn exit_codes_say_whether_the_rollout_ended_as_asked() {
        let promoted = Driven::Ended(Outcome::Promoted {
            version: "v2".into(),
        });
        let rolled_back = Driven::Ended(Outcome::RolledBack {
            reason: "aborted".into(),
        });
        assert_eq!(promoted.exit_code(false), 0);
        assert_eq!(rolled_back.exit_code(false), 1);
        assert_eq!(rolled_back.exit_code(true), 0);
        assert_eq!(promoted.exit_code(true), 1);
        assert_eq!(Driven::Interrupted.exit_code(false), 130);
    }

    #[test]
    fn a_relative_artifact_that_exists_here_is_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("app");
        std::fs::write(&bin, "").unwrap();
        let here = dir.path();
        assert_eq!(
            absolute_artifact("sleep", here),
            "sleep",
            "a bare name is looked up in PATH"
        );
        assert_eq!(absolute_artifact("/usr/bin/env", here), "/usr/bin/env");
        assert_eq!(
            absolute_artifact("./no/such/thing", here),
            "./no/such/thing"
        );
        let made = absolute_artifact("./app", here);
        assert_eq!(Path::new(&made), bin.canonicalize().unwrap());
    }

    #[test]
    fn the_spec_is_loaded_with_the_command_lines_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(
            &file,
            "service: web\nrelease: { version: v1, artifact: /usr/bin/web, args: [--a], env: { A: '1' } }\nstrategy: { blue_green: { replicas: 2 } }\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        let Command::Deploy(d) = parse(&[
            "deploy",
            "web",
            "-f",
            file_arg,
            "--version",
            "v2",
            "--arg",
            "--b",
            "--env",
            "B=2",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let rollout = rollout_from(&d).unwrap();
        assert_eq!(rollout.release.version, "v2");
        assert_eq!(rollout.release.artifact, "/usr/bin/web");
        assert_eq!(rollout.release.args, ["--b"]);
        assert_eq!(rollout.release.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(rollout.release.env.get("B").map(String::as_str), Some("2"));

        let Command::Deploy(d) = parse(&["deploy", "api", "-f", file_arg]).unwrap().command else {
            panic!()
        };
        let err = rollout_from(&d).unwrap_err().to_string();
        assert!(
            err.contains("names service web, but the command line deploys api"),
            "{err}"
        );

        let Command::Deploy(d) = parse(&["deploy", "web", "-f", "/no/such/file.yaml"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(
            rollout_from(&d)
                .unwrap_err()
                .to_string()
                .contains("/no/such/file.yaml")
        );
    }
}
