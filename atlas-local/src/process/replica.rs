//! One replica: the OS process, its log file, and the task that watches it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use atlas_core::{Error, Release, Result, ServiceName, Slot};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::config::{BACKEND, Config};
use super::context::Context;
use super::events::{ReplicaEvent, ReplicaEventKind};
use super::readiness;
use super::record::{ReplicaRecord, ReplicaStatus, process_start_time};
use super::restart::RestartPolicy;

/// After SIGKILL a process can still take a moment to go (it may sit in an
/// uninterruptible wait); past this, the watcher gives up and says so.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a replica runs, kept to restart it on the same port and to
/// describe it in records.
pub(super) struct Launch {
    pub(super) service: ServiceName,
    pub(super) slot: Slot,
    pub(super) index: u32,
    pub(super) release: Release,
    pub(super) port: u16,
}

/// How a replica's process ended, as far as Atlas could tell.
#[derive(Debug, Clone)]
enum Exit {
    Status(ExitStatus),
    /// The exit status could not be collected (an adopted replica is not
    /// our child; or the host program reaps children itself; or a restart
    /// failed).
    Unknown(String),
}

impl Exit {
    fn describe(&self) -> String {
        match self {
            Exit::Status(status) => describe_status(*status),
            Exit::Unknown(why) => format!("is gone, exit status unknown ({why})"),
        }
    }

    fn is_success(&self) -> bool {
        matches!(self, Exit::Status(s) if s.success())
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(signal) => format!("was killed by signal {}", signal.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        }
    } else {
        format!("exited ({status})")
    }
}

/// A replica as [`status`](atlas_core::Workloads::status) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Observed {
    /// Running, not (yet) ready.
    Starting,
    /// Running and ready for traffic.
    Ready,
    /// Exited on its own (and maybe waiting to be restarted); the reason,
    /// with the replica's name.
    Failed(String),
}

/// The replica's current process.
enum Process {
    /// Our child, reaped through tokio.
    Child(Child),
    /// Taken over from an earlier owner: not our child, so it cannot be
    /// waited for; it runs as long as its pid has the recorded start time.
    Adopted,
    /// None: it was killed on drop, or a restart failed (`exit` says so).
    Gone,
}

/// The process and what is known about it. A child is reaped only while
/// this is locked, so while `exit` is `None` under the lock the pid still
/// belongs to our child (alive or a zombie) and signalling it is safe. For
/// an adopted process the start time is checked under the lock right
/// before each signal (a pid reused in between is the one window left).
struct Life {
    process: Process,
    pid: u32,
    start_time: Option<u64>,
    started: Instant,
    exit: Option<Exit>,
    ready: bool,
    stopping: bool,
    restarts: u32,
}

struct Shared {
    name: String,
    launch: Launch,
    addr: SocketAddr,
    life: Mutex<Life>,
    stop: Notify,
}

impl Shared {
    fn life(&self) -> MutexGuard<'_, Life> {
        // A panic elsewhere while holding the lock leaves plain data behind;
        // carrying on is safer than leaving processes unsupervised.
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Collects the exit status if the process ended.
    fn poll_exit(&self) -> Option<Exit> {
        let mut life = self.life();
        poll_exit_locked(&mut life, &self.name)
    }

    fn record(&self, index: u32, replicas: u32, log_path: PathBuf) -> ReplicaRecord {
        let life = self.life();
        let launch = &self.launch;
        ReplicaRecord {
            service: launch.service.clone(),
            slot: launch.slot,
            index,
            release: launch.release.clone(),
            replicas,
            pid: life.pid,
            start_time: life.start_time,
            port: launch.port,
            log_path,
            restarts: life.restarts,
            stopping: life.stopping,
        }
    }

    fn event(&self, pid: u32, kind: ReplicaEventKind) -> ReplicaEvent {
        ReplicaEvent {
            service: self.launch.service.clone(),
            slot: self.launch.slot,
            index: self.launch.index,
            pid,
            kind,
        }
    }
}

fn poll_exit_locked(life: &mut Life, name: &str) -> Option<Exit> {
    if let Some(exit) = &life.exit {
        return Some(exit.clone());
    }
    let exit = match &mut life.process {
        Process::Child(child) => match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => Exit::Status(status),
            Err(e) => {
                tracing::error!(replica = %name, error = %e, "cannot collect the replica's exit status");
                Exit::Unknown(e.to_string())
            }
        },
        Process::Adopted => {
            if life.start_time.is_some() && process_start_time(life.pid) == life.start_time {
                return None;
            }
            Exit::Unknown("adopted, so not our child".into())
        }
        Process::Gone => Exit::Unknown("no process".into()),
    };
    life.exit = Some(exit.clone());
    life.ready = false;
    Some(exit)
}

/// Sends `signal` to the replica's process group (so a wrapper script's
/// children get it too), falling back to the process alone.
fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = Pid::from_raw(i32::try_from(pid).map_err(|_| Errno::ESRCH)?);
    match killpg(pid, signal) {
        Err(Errno::ESRCH) => kill(pid, signal),
        other => other,
    }
}

/// One running (or exited) replica and the task watching it.
pub(super) struct Replica {
    index: u32,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Replica {
    /// Opens the log file, starts the process (on the spawning thread) and
    /// its watcher. `restarts` carries the count over from an earlier
    /// owner.
    pub(super) fn spawn(launch: Launch, ctx: &Arc<Context>, restarts: u32) -> Result<Replica> {
        let name = replica_name(&launch.service, launch.slot, launch.index);
        let (child, pid, start_time) = start_process(&launch, &name, ctx)?;
        let replica = Replica::watch(
            name,
            launch,
            ctx,
            Life {
                process: Process::Child(child),
                pid,
                start_time,
                started: Instant::now(),
                exit: None,
                ready: false,
                stopping: false,
                restarts,
            },
        );
        ctx.emit(replica.shared.event(pid, ReplicaEventKind::Started));
        Ok(replica)
    }

    /// Takes over `pid`, a replica an earlier owner started, which the
    /// caller found running with `start_time`.
    pub(super) fn adopt(
        launch: Launch,
        pid: u32,
        start_time: u64,
        restarts: u32,
        ctx: &Arc<Context>,
    ) -> Replica {
        let name = replica_name(&launch.service, launch.slot, launch.index);
        tracing::info!(
            replica = %name,
            pid,
            port = launch.port,
            version = %launch.release.version,
            "replica adopted"
        );
        let replica = Replica::watch(
            name,
            launch,
            ctx,
            Life {
                process: Process::Adopted,
                pid,
                start_time: Some(start_time),
                started: Instant::now(),
                exit: None,
                ready: false,
                stopping: false,
                restarts,
            },
        );
        ctx.emit(replica.shared.event(pid, ReplicaEventKind::Adopted));
        replica
    }

    fn watch(name: String, launch: Launch, ctx: &Arc<Context>, life: Life) -> Replica {
        let index = launch.index;
        let span = tracing::info_span!("replica", replica = %name);
        let shared = Arc::new(Shared {
            name,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, launch.port)),
            launch,
            life: Mutex::new(life),
            stop: Notify::new(),
        });
        let task = tokio::spawn(supervise(shared.clone(), ctx.clone()).instrument(span));
        Replica {
            index,
            shared,
            task,
        }
    }

    /// Its index in the slot.
    pub(super) fn index(&self) -> u32 {
        self.index
    }

    /// `{service}-{slot}-{index}`.
    pub(super) fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where it listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The (last) process id.
    pub(super) fn pid(&self) -> u32 {
        self.shared.life().pid
    }

    /// Running, ready, or exited on its own.
    pub(super) fn observe(&self) -> Observed {
        let mut life = self.shared.life();
        match poll_exit_locked(&mut life, &self.shared.name) {
            Some(exit) => Observed::Failed(format!("{} {}", self.shared.name, exit.describe())),
            None if life.ready => Observed::Ready,
            None => Observed::Starting,
        }
    }

    /// What a later owner needs to adopt it; `replicas` is its slot's
    /// count.
    pub(super) fn record(&self, replicas: u32, log_path: PathBuf) -> ReplicaRecord {
        self.shared.record(self.index, replicas, log_path)
    }

    /// What it is doing now.
    pub(super) fn status(&self) -> ReplicaStatus {
        let observed = self.observe();
        let life = self.shared.life();
        let launch = &self.shared.launch;
        ReplicaStatus {
            service: launch.service.clone(),
            slot: launch.slot,
            index: launch.index,
            name: self.shared.name.clone(),
            version: launch.release.version.clone(),
            pid: life.pid,
            addr: self.shared.addr,
            running: life.exit.is_none(),
            ready: observed == Observed::Ready,
            restarts: life.restarts,
            exit: life.exit.as_ref().map(Exit::describe),
            adopted: matches!(life.process, Process::Adopted),
        }
    }

    /// Asks the watcher to stop the process gracefully (SIGTERM, then SIGKILL
    /// after the grace period). Returns at once.
    pub(super) fn request_stop(&self) {
        self.shared.life().stopping = true;
        self.shared.stop.notify_one();
    }

    /// Whether the watcher has finished (the process is gone).
    pub(super) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the watcher to finish.
    pub(super) async fn join(self) {
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            tracing::error!(replica = %self.shared.name, "replica watcher panicked");
        }
    }

    /// Stops watching and leaves the process running (detached mode only:
    /// an attached child is killed when its handle goes). Returns its
    /// record once the watcher is gone, so no restart slips in after it;
    /// a replica being stopped is recorded as such.
    pub(super) async fn release(
        self,
        ctx: &Context,
        replicas: u32,
        log_path: PathBuf,
    ) -> ReplicaRecord {
        self.task.abort();
        let shared = self.shared.clone();
        let index = self.index;
        self.join().await;
        let record = shared.record(index, replicas, log_path);
        tracing::info!(replica = %shared.name, pid = record.pid, "replica released, left running");
        ctx.emit(shared.event(record.pid, ReplicaEventKind::Released));
        record
    }

    /// Stops watching, without signalling the process. For `Drop` in
    /// detached mode.
    pub(super) fn abandon(&self) {
        self.task.abort();
    }

    /// Kills the process group now, without grace, and stops watching. For
    /// `Drop`, where nothing can be awaited.
    pub(super) fn kill_now(&self) {
        self.task.abort();
        let mut life = self.shared.life();
        let pid = life.pid;
        if poll_exit_locked(&mut life, &self.shared.name).is_none() {
            match signal_group(pid, Signal::SIGKILL) {
                Ok(()) => {
                    tracing::info!(replica = %self.shared.name, pid, "replica killed (SIGKILL) on drop")
                }
                Err(e) => {
                    tracing::warn!(replica = %self.shared.name, pid, error = %e, "could not kill replica on drop")
                }
            }
        }
        // Dropping the child hands a killed, unreaped process to tokio's
        // orphan reaper, so no zombie stays behind.
        life.process = Process::Gone;
        life.exit
            .get_or_insert_with(|| Exit::Unknown("killed on drop".into()));
    }
}

/// `{service}-{slot}-{index}`.
pub(super) fn replica_name(service: &ServiceName, slot: Slot, index: u32) -> String {
    format!("{service}-{slot}-{index}")
}

fn open_log(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            Error::backend_with(
                BACKEND,
                format!("cannot open log file {}", path.display()),
                e,
            )
        })
}

fn spawn_error(program: &str, replica: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::invalid(
            "release.artifact",
            format!("program {program:?} was not found (starting {replica})"),
        ),
        io::ErrorKind::PermissionDenied => Error::invalid(
            "release.artifact",
            format!("program {program:?} is not executable (starting {replica})"),
        ),
        _ => Error::backend_with(
            BACKEND,
            format!("cannot start {replica} from {program:?}"),
            e,
        ),
    }
}

/// Opens the log (appending, with a header line) and starts the process
/// of `launch`; returns it with its pid and start time.
fn start_process(launch: &Launch, name: &str, ctx: &Context) -> Result<(Child, u32, Option<u64>)> {
    let Launch {
        service,
        slot,
        index,
        release,
        port,
    } = launch;
    let log_path = ctx.config.log_path(name);
    let mut log = open_log(&log_path)?;
    let header = format!(
        "==== {} atlas: starting {name} (service {service}, slot {slot}, version {}) on 127.0.0.1:{port}: {:?} {:?}\n",
        humantime::format_rfc3339_millis(SystemTime::now()),
        release.version,
        release.artifact,
        release.args,
    );
    let log_err = |e: io::Error| {
        Error::backend_with(
            BACKEND,
            format!("cannot write log file {}", log_path.display()),
            e,
        )
    };
    log.write_all(header.as_bytes()).map_err(log_err)?;
    let stderr = log.try_clone().map_err(log_err)?;

    let detached = ctx.config.detached;
    let mut command = Command::new(&release.artifact);
    command
        .args(&release.args)
        .envs(&release.env)
        .env("PORT", port.to_string())
        .env("ATLAS_SLOT", slot.as_str())
        .env("ATLAS_REPLICA", index.to_string())
        .env("ATLAS_SERVICE", service.as_str())
        .env("ATLAS_VERSION", &release.version)
        // No pipe to the owner anywhere: a replica writing to a pipe whose
        // reader (a dead owner) is gone would get SIGPIPE. The log file
        // descriptors are the child's own, opened for appending, and keep
        // working after the owner is gone.
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().map_err(log_err)?))
        .stderr(Stdio::from(stderr))
        // Detached replicas outlive their handle; attached ones never do.
        .kill_on_drop(!detached);
    if !detached {
        // Own process group: a Ctrl-C in the terminal hits Atlas only,
        // which then stops the replicas gracefully (a group-wide signal
        // would also reach replicas mid-rollout, before Atlas has moved
        // traffic off them). A detached replica's session gives it a group
        // of its own (and a group leader could not start a session).
        command.process_group(0);
    }
    let child = match ctx.spawner.spawn(command) {
        Ok(child) => child,
        Err(e) => {
            let _ = writeln!(log, "==== atlas: could not start {name}: {e}");
            return Err(spawn_error(&release.artifact, name, e));
        }
    };
    let Some(pid) = child.id() else {
        return Err(Error::backend(
            BACKEND,
            format!("{name} exited before its pid could be read"),
        ));
    };
    let start_time = process_start_time(pid);
    tracing::info!(
        replica = %name,
        pid,
        port,
        detached,
        version = %release.version,
        program = %release.artifact,
        log = %log_path.display(),
        "replica started"
    );
    Ok((child, pid, start_time))
}

/// Watches one replica: probes readiness until ready, notices an exit,
/// restarts it as the restart policy says, and stops the process
/// gracefully when asked.
async fn supervise(shared: Arc<Shared>, ctx: Arc<Context>) {
    let config = &ctx.config;
    // Exits in a row, for the backoff.
    let mut crash_loop = 0u32;
    loop {
        let mut tick = tokio::time::interval(config.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shared.stop.notified() => {
                    let pid = stop_gracefully(&shared, config).await;
                    ctx.emit(shared.event(pid, ReplicaEventKind::Stopped));
                    return;
                }
                done = watch_once(&shared, &ctx, &mut tick) => if done {
                    break;
                }
            }
        }
        let (status, pid, ran_for) = {
            let life = shared.life();
            let status = life.exit.as_ref().map(Exit::describe).unwrap_or_default();
            (status, life.pid, life.started.elapsed())
        };
        ctx.emit(shared.event(pid, ReplicaEventKind::Exited { status }));
        let RestartPolicy::OnFailure { reset_after, .. } = config.restart else {
            return;
        };
        if ran_for >= reset_after {
            crash_loop = 0;
        }
        loop {
            crash_loop = crash_loop.saturating_add(1);
            let Some(after) = config.restart.backoff(crash_loop) else {
                return;
            };
            tracing::warn!(
                attempt = crash_loop,
                after = %humantime::format_duration(after),
                "replica will be restarted"
            );
            ctx.emit(shared.event(
                pid,
                ReplicaEventKind::RestartScheduled {
                    attempt: crash_loop,
                    after,
                },
            ));
            tokio::select! {
                biased;
                () = shared.stop.notified() => {
                    // Down already: nothing to signal.
                    stop_gracefully(&shared, config).await;
                    ctx.emit(shared.event(pid, ReplicaEventKind::Stopped));
                    return;
                }
                () = tokio::time::sleep(after) => {}
            }
            if shared.life().stopping {
                // Asked to stop while the backoff ended: the stop
                // notification is pending, and the watch loop takes it.
                break;
            }
            match start_process(&shared.launch, &shared.name, &ctx) {
                Ok((child, new_pid, start_time)) => {
                    {
                        let mut life = shared.life();
                        life.process = Process::Child(child);
                        life.pid = new_pid;
                        life.start_time = start_time;
                        life.started = Instant::now();
                        life.exit = None;
                        life.ready = false;
                        life.restarts = life.restarts.saturating_add(1);
                        tracing::info!(
                            pid = new_pid,
                            restarts = life.restarts,
                            "replica restarted"
                        );
                    }
                    ctx.emit(shared.event(new_pid, ReplicaEventKind::Started));
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "replica could not be restarted");
                    let mut life = shared.life();
                    life.process = Process::Gone;
                    life.exit = Some(Exit::Unknown(format!("could not be restarted: {e}")));
                }
            }
        }
    }
}

/// One round of watching; `true` once the process has exited.
async fn watch_once(shared: &Shared, ctx: &Context, tick: &mut tokio::time::Interval) -> bool {
    tick.tick().await;
    if let Some(exit) = shared.poll_exit() {
        if exit.is_success() {
            tracing::warn!(exit = %exit.describe(), "replica exited on its own");
        } else {
            tracing::error!(exit = %exit.describe(), "replica exited on its own");
        }
        return true;
    }
    if shared.life().ready {
        return false;
    }
    let config = &ctx.config;
    if readiness::probe(&config.readiness, shared.addr, config.probe_timeout).await {
        let pid = {
            let mut life = shared.life();
            if life.exit.is_some() || life.stopping {
                return false;
            }
            life.ready = true;
            tracing::info!(addr = %shared.addr, pid = life.pid, "replica is ready");
            life.pid
        };
        ctx.emit(shared.event(pid, ReplicaEventKind::Ready));
    }
    false
}

/// Stops the process: SIGTERM, SIGKILL after the grace period. Returns its
/// pid.
async fn stop_gracefully(shared: &Shared, config: &Config) -> u32 {
    let started = Instant::now();
    let pid = {
        let mut life = shared.life();
        life.stopping = true;
        life.ready = false;
        let pid = life.pid;
        if let Some(exit) = poll_exit_locked(&mut life, &shared.name) {
            tracing::info!(exit = %exit.describe(), "replica had already exited");
            return pid;
        }
        if let Err(e) = signal_group(pid, Signal::SIGTERM) {
            tracing::warn!(error = %e, "could not send SIGTERM");
        }
        pid
    };
    tracing::info!(
        pid,
        grace_period = %humantime::format_duration(config.grace_period),
        "sent SIGTERM to replica"
    );
    let deadline = started + config.grace_period;
    loop {
        if let Some(exit) = shared.poll_exit() {
            tracing::info!(
                exit = %exit.describe(),
                after = ?started.elapsed(),
                "replica stopped after SIGTERM"
            );
            return pid;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(config.poll_interval.min(deadline - now)).await;
    }
    {
        let mut life = shared.life();
        if poll_exit_locked(&mut life, &shared.name).is_none()
            && let Err(e) = signal_group(pid, Signal::SIGKILL)
        {
            tracing::warn!(error = %e, "could not send SIGKILL");
        }
    }
    tracing::warn!(
        grace_period = %humantime::format_duration(config.grace_period),
        "replica did not exit within its grace period; sent SIGKILL"
    );
    let killed = Instant::now();
    loop {
        if let Some(exit) = shared.poll_exit() {
            tracing::info!(exit = %exit.describe(), "replica stopped after SIGKILL");
            return pid;
        }
        if killed.elapsed() >= KILL_WAIT {
            tracing::error!(
                "replica still not gone {} after SIGKILL; it stays owned by Atlas and is killed again on drop",
                humantime::format_duration(KILL_WAIT)
            );
            return pid;
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}
