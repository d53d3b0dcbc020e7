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
//! (`RemoteWorkloads`, `RemoteRouter`, `RemoteStateStore` of
//! `atlas_local::daemon::client`) and holds
//! a lease on the service. `promote`, `pause`, `resume` and `abort` post a
//! steering command the daemon hands to that program. If that program is
//! gone (killed, its terminal closed), its lease ends after `--lease-ttl`
//! and traffic stays as it was: `atlas deploy` with the same spec again
//! resumes the rollout where it stopped (waiting up to `--lease-wait` for
//! the dead program's lease to end), and `atlas abort` or `atlas
//! promote` take it over in their own process and carry it to its end.
//!
//! Health probes (`GET --probe-path` on each replica's loopback port) are
//! sent by this program, so `deploy` runs on the daemon's host. Analysis
//! queries go to Prometheus with `--prometheus URL` (or
//! `ATLAS_PROMETHEUS_URL`), else to the daemon proxy's own per-slot
//! metrics (`error_rate`, `success_rate`, `latency_p95`, `request_rate`,
//! …, as `atlas_local::proxy::ProxyMetrics` documents).
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
//! The code: this file holds the command line and the verbs that only
//! call the daemon (`services`, `status`, `scale`, `logs`); `atlas/drive.rs`
//! the verbs that drive a rollout with the engine; `atlas/render.rs` the
//! table and event lines; `atlas/ctx.rs` what they all share.
//!
//! Run: `cargo run --release -p atlas-examples --example atlas -- --help`

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use atlas_core::{Endpoint, Error, ErrorKind, ServiceName, Slot, TrafficRouter, Workloads};
use atlas_examples::cli::{OutputFormat, print_json};
use atlas_examples::main_support;
use atlas_local::daemon::api::SteerCommand;
use atlas_local::daemon::client::{AtlasdClient, RemoteRouter, RemoteWorkloads};
use atlas_local::proxy::ServiceRoute;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::ctx::{Ctx, EXIT_ERROR, EXIT_OK, Failure, explain, parse_service};

#[path = "atlas/ctx.rs"]
mod ctx;
#[path = "atlas/drive.rs"]
mod drive;
#[path = "atlas/render.rs"]
mod render;

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
    Deploy(drive::DeployArgs),
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
    Retry(drive::RerunArgs),
    /// Roll out the release promoted before the current one, with the last
    /// rollout's strategy.
    Undo(drive::RerunArgs),
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
    engine: drive::EngineArgs,
}

#[derive(Debug, Args)]
struct AbortArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    service: ServiceName,
    #[command(flatten)]
    engine: drive::EngineArgs,
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

/// Connects to the daemon and runs the verb; the exit status on success.
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
        Command::Deploy(args) => drive::deploy(&ctx, args).await,
        Command::Promote(args) => {
            let command = if args.full {
                SteerCommand::PromoteFull
            } else {
                SteerCommand::Promote
            };
            drive::steer(&ctx, &args.service, command, Some(&args.engine)).await
        }
        Command::Pause(args) => drive::steer(&ctx, &args.service, SteerCommand::Pause, None).await,
        Command::Resume(args) => {
            drive::steer(&ctx, &args.service, SteerCommand::Resume, None).await
        }
        Command::Abort(args) => {
            drive::steer(&ctx, &args.service, SteerCommand::Abort, Some(&args.engine)).await
        }
        Command::Retry(args) => drive::retry(&ctx, &args).await,
        Command::Undo(args) => drive::undo(&ctx, &args).await,
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

/// `atlas services [list | add | remove]`.
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

/// `atlas status [SERVICE] [--watch]`.
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

/// `atlas scale SERVICE N`: the serving slot to N replicas; scaling down
/// drains the replicas that go before stopping them, scaling up routes the
/// new ones once they are ready.
async fn scale(ctx: &Ctx, args: &ScaleArgs) -> Result<u8, Failure> {
    let service = &args.service;
    if args.replicas == 0 {
        return Err(Error::invalid(
            "replicas",
            format!("must be at least 1: the slot serves {service}'s traffic (atlas services remove {service} stops it)"),
        )
        .into());
    }
    if let Some(running) = drive::unfinished(ctx, service).await? {
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

/// `atlas logs SERVICE`: a replica's last lines, then (`--follow`) each
/// new one.
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

/// Log lines on stdout, as they are or as JSON objects.
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
    use std::path::Path;

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
}
