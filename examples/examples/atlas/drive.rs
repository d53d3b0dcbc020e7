//! Rollouts driven from `atlas`: `deploy`, the steering verbs (`promote`,
//! `pause`, `resume`, `abort`), `retry` and `undo`. The engine runs in this
//! process against the daemon ([`RemoteWorkloads`], [`RemoteRouter`],
//! [`RemoteStateStore`]) and takes steering commands from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_core::{
    Engine, Error, ErrorKind, Outcome, Phase, RolloutEvent, RolloutHandle, RolloutState,
    ServiceName, StateStore, Versioned,
};
use atlas_examples::cli::print_json;
use atlas_local::daemon::api::{SequencedCommand, SteerCommand};
use atlas_local::daemon::client::{
    AtlasdClient, RemoteMetrics, RemoteRouter, RemoteStateStore, RemoteWorkloads,
};
use atlas_metrics::PrometheusProvider;
use atlas_metrics::probe::HttpProbe;
use clap::Args;
use tokio::sync::{broadcast, mpsc};

use crate::ctx::{Ctx, EXIT_INTERRUPTED, EXIT_OK, EXIT_OTHER_WAY, Failure, parse_service};
use crate::render;

/// How long one long poll for a steering command waits at the daemon.
const COMMAND_WAIT: Duration = Duration::from_secs(10);

/// The lease `promote`/`pause`/`resume`/`abort` try, to learn whether a
/// deploy program drives the rollout (granted: nobody does).
const PROBE_LEASE_TTL: Duration = Duration::from_secs(2);

/// How this process drives a rollout, when it does.
#[derive(Debug, Clone, Args)]
pub(crate) struct EngineArgs {
    /// This program's lease on the rollout: if it dies (even by SIGKILL), a
    /// rerun can resume the rollout after at most this long.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) lease_ttl: Duration,
    /// The path each replica's health probe GETs (2xx: healthy).
    #[arg(long, value_name = "PATH", default_value = "/health")]
    pub(crate) probe_path: String,
    /// How long to wait for another holder's lease on the rollout to end
    /// (a deploy program killed a moment ago holds it up to its lease ttl).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) lease_wait: Duration,
    /// Prometheus for the rollout's analysis queries (default: the
    /// daemon proxy's own per-slot metrics).
    #[arg(long, value_name = "URL", env = "ATLAS_PROMETHEUS_URL")]
    pub(crate) prometheus: Option<String>,
}

/// `atlas deploy`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The service (the spec must name the same).
    #[arg(value_parser = parse_service)]
    pub(crate) service: ServiceName,
    /// The rollout spec (YAML or TOML; see examples/specs/).
    #[arg(short = 'f', long = "file", value_name = "ROLLOUT")]
    pub(crate) file: PathBuf,
    /// Replaces release.version.
    #[arg(long, value_name = "V")]
    pub(crate) version: Option<String>,
    /// Replaces release.artifact (a relative path is made absolute here).
    #[arg(long, value_name = "PATH")]
    pub(crate) artifact: Option<String>,
    /// Replaces release.args (repeat for each argument).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
    /// Sets an environment variable of every replica (repeat; never printed).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// The arguments of `atlas retry` and `atlas undo`.
#[derive(Debug, Args)]
pub(crate) struct RerunArgs {
    /// The service.
    #[arg(value_parser = parse_service)]
    pub(crate) service: ServiceName,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// `KEY=VALUE` from `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

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

/// `atlas deploy`: starts the rollout of the spec, or resumes the one in
/// progress with the same release, and drives it to its end.
pub(crate) async fn deploy(ctx: &Ctx, args: DeployArgs) -> Result<u8, Failure> {
    let rollout = rollout_from(&args)?;
    let service = rollout.service.clone();
    let after = current_command(ctx, &service).await?;
    let engine = build_engine(&ctx.client, &args.engine)?;
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

/// The engine, driving rollouts on the daemon from this process. Analysis
/// queries go to Prometheus with `--prometheus`, else to the daemon
/// proxy's own per-slot metrics (`error_rate`, `latency_p95`, …).
fn build_engine(client: &AtlasdClient, args: &EngineArgs) -> Result<Engine, Failure> {
    let mut builder = Engine::builder()
        .workloads(Arc::new(RemoteWorkloads::new(client.clone())))
        .router(Arc::new(RemoteRouter::new(client.clone())))
        .store(Arc::new(RemoteStateStore::new(client.clone())))
        .probe(Arc::new(HttpProbe::get(&args.probe_path)?))
        .lease_ttl(args.lease_ttl)
        .poll_interval(Duration::from_millis(500));
    builder = match &args.prometheus {
        Some(url) => builder.metrics(Arc::new(PrometheusProvider::new(url.clone())?)),
        None => builder.metrics(Arc::new(RemoteMetrics::new(client.clone()))),
    };
    Ok(builder.build()?)
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
pub(crate) async fn unfinished(
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
    /// Promoted or rolled back.
    Ended(Outcome),
    /// Ctrl-C: the rollout stays where it was.
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

/// Prints one event: a line for people, or its JSON.
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

/// Hands a steering command to the rollout this process drives.
fn apply(handle: &RolloutHandle, command: SteerCommand) -> atlas_core::Result<()> {
    match command {
        SteerCommand::Promote => handle.promote(),
        SteerCommand::PromoteFull => handle.promote_full(),
        SteerCommand::Pause => handle.pause(),
        SteerCommand::Resume => handle.resume(),
        SteerCommand::Abort => handle.abort(),
    }
}

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

/// `atlas promote | pause | resume | abort`: posts the command to the
/// program driving the rollout, or, when none does, carries out a promote
/// or an abort here.
pub(crate) async fn steer(
    ctx: &Ctx,
    service: &ServiceName,
    command: SteerCommand,
    engine: Option<&EngineArgs>,
) -> Result<u8, Failure> {
    let store = ctx.store();
    match store.load(service).await? {
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
        Some(_) => {}
    }
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
    let after = current_command(ctx, service).await?;
    let engine = build_engine(&ctx.client, engine_args)?;
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

/// `atlas retry`: starts the last rollout again after it was rolled back.
pub(crate) async fn retry(ctx: &Ctx, args: &RerunArgs) -> Result<u8, Failure> {
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

/// `atlas undo`: rolls out the release promoted before the current one,
/// with the last rollout's strategy.
pub(crate) async fn undo(ctx: &Ctx, args: &RerunArgs) -> Result<u8, Failure> {
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

/// Starts `rollout` (waiting out a dead program's lease) and drives it.
async fn start_and_drive(
    ctx: &Ctx,
    rollout: atlas_core::Rollout,
    args: &EngineArgs,
) -> Result<u8, Failure> {
    let service = rollout.service.clone();
    let after = current_command(ctx, &service).await?;
    let engine = build_engine(&ctx.client, args)?;
    let events = engine.subscribe();
    let handle = with_lease(ctx, &service, args.lease_wait, || {
        engine.start(rollout.clone())
    })
    .await?;
    Ok(drive(ctx, &service, handle, events, after, None)
        .await?
        .exit_code(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `atlas deploy`'s arguments as the command line gives them.
    fn deploy_args(args: &[&str]) -> DeployArgs {
        #[derive(Parser)]
        struct Deploy {
            #[command(flatten)]
            args: DeployArgs,
        }
        Deploy::try_parse_from(std::iter::once("deploy").chain(args.iter().copied()))
            .unwrap()
            .args
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
        let d = deploy_args(&[
            "web",
            "-f",
            file_arg,
            "--version",
            "v2",
            "--arg",
            "--b",
            "--env",
            "B=2",
        ]);
        let rollout = rollout_from(&d).unwrap();
        assert_eq!(rollout.release.version, "v2");
        assert_eq!(rollout.release.artifact, "/usr/bin/web");
        assert_eq!(rollout.release.args, ["--b"]);
        assert_eq!(rollout.release.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(rollout.release.env.get("B").map(String::as_str), Some("2"));

        let d = deploy_args(&["api", "-f", file_arg]);
        let err = rollout_from(&d).unwrap_err().to_string();
        assert!(
            err.contains("names service web, but the command line deploys api"),
            "{err}"
        );

        let d = deploy_args(&["web", "-f", "/no/such/file.yaml"]);
        assert!(
            rollout_from(&d)
                .unwrap_err()
                .to_string()
                .contains("/no/such/file.yaml")
        );
    }
}
