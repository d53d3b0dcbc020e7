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
use super::readiness;
use super::spawner::Spawner;

/// After SIGKILL a process can still take a moment to go (it may sit in an
/// uninterruptible wait); past this, the watcher gives up and says so.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What to start.
pub(super) struct Spec<'a> {
    pub(super) service: &'a ServiceName,
    pub(super) slot: Slot,
    pub(super) index: u32,
    pub(super) release: &'a Release,
    pub(super) port: u16,
}

/// How a replica's process ended, as far as Atlas could tell.
#[derive(Debug, Clone)]
enum Exit {
    Status(ExitStatus),
    /// The exit status could not be collected (e.g. the host program reaps
    /// children itself).
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
    /// Exited on its own; the reason, with the replica's name.
    Failed(String),
}

/// The process and what is known about it. The child is reaped only while
/// this is locked, so while `exit` is `None` under the lock the pid still
/// belongs to our child (alive or a zombie) and signalling it is safe.
struct Life {
    child: Option<Child>,
    exit: Option<Exit>,
    ready: bool,
    stopping: bool,
}

struct Shared {
    name: String,
    pid: u32,
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
}

fn poll_exit_locked(life: &mut Life, name: &str) -> Option<Exit> {
    if let Some(exit) = &life.exit {
        return Some(exit.clone());
    }
    let child = life.child.as_mut()?;
    let exit = match child.try_wait() {
        Ok(None) => return None,
        Ok(Some(status)) => Exit::Status(status),
        Err(e) => {
            tracing::error!(replica = %name, error = %e, "cannot collect the replica's exit status");
            Exit::Unknown(e.to_string())
        }
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
    /// Opens the log file, starts the process (on `spawner`'s thread) and
    /// its watcher.
    pub(super) fn spawn(
        spec: Spec<'_>,
        config: &Arc<Config>,
        spawner: &Spawner,
    ) -> Result<Replica> {
        let Spec {
            service,
            slot,
            index,
            release,
            port,
        } = spec;
        let name = replica_name(service, slot, index);
        let log_path = config.log_path(&name);
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

        let mut command = Command::new(&release.artifact);
        command
            .args(&release.args)
            .envs(&release.env)
            .env("PORT", port.to_string())
            .env("ATLAS_SLOT", slot.as_str())
            .env("ATLAS_REPLICA", index.to_string())
            .env("ATLAS_SERVICE", service.as_str())
            .env("ATLAS_VERSION", &release.version)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(log_err)?))
            .stderr(Stdio::from(stderr))
            // Own process group: a Ctrl-C in the terminal hits Atlas only,
            // which then stops the replicas gracefully (a group-wide signal
            // would also reach replicas mid-rollout, before Atlas has moved
            // traffic off them).
            .process_group(0)
            .kill_on_drop(true);
        let child = match spawner.spawn(command) {
            Ok(child) => child,
            Err(e) => {
                let _ = writeln!(log, "==== atlas: could not start {name}: {e}");
                return Err(spawn_error(&release.artifact, &name, e));
            }
        };
        let Some(pid) = child.id() else {
            return Err(Error::backend(
                BACKEND,
                format!("{name} exited before its pid could be read"),
            ));
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        tracing::info!(
            replica = %name,
            pid,
            %addr,
            version = %release.version,
            program = %release.artifact,
            log = %log_path.display(),
            "replica started"
        );
        let shared = Arc::new(Shared {
            name: name.clone(),
            pid,
            addr,
            life: Mutex::new(Life {
                child: Some(child),
                exit: None,
                ready: false,
                stopping: false,
            }),
            stop: Notify::new(),
        });
        let span = tracing::info_span!("replica", replica = %name, pid);
        let task = tokio::spawn(supervise(shared.clone(), config.clone()).instrument(span));
        Ok(Replica {
            index,
            shared,
            task,
        })
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

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.shared.pid
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

    /// Kills the process group now, without grace, and stops watching. For
    /// `Drop`, where nothing can be awaited.
    pub(super) fn kill_now(&self) {
        self.task.abort();
        let mut life = self.shared.life();
        if poll_exit_locked(&mut life, &self.shared.name).is_none() {
            match signal_group(self.shared.pid, Signal::SIGKILL) {
                Ok(()) => {
                    tracing::info!(replica = %self.shared.name, pid = self.shared.pid, "replica killed (SIGKILL) on drop")
                }
                Err(e) => {
                    tracing::warn!(replica = %self.shared.name, pid = self.shared.pid, error = %e, "could not kill replica on drop")
                }
            }
        }
        // Dropping the child hands a killed, unreaped process to tokio's
        // orphan reaper, so no zombie stays behind.
        life.child = None;
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

/// Watches one replica: probes readiness until ready, notices an exit, and
/// stops the process gracefully when asked.
async fn supervise(shared: Arc<Shared>, config: Arc<Config>) {
    let mut tick = tokio::time::interval(config.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shared.stop.notified() => {
                stop_gracefully(&shared, &config).await;
                return;
            }
            done = watch_once(&shared, &config, &mut tick) => if done {
                return;
            }
        }
    }
}

/// One round of watching; `true` once the process has exited.
async fn watch_once(shared: &Shared, config: &Config, tick: &mut tokio::time::Interval) -> bool {
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
    if readiness::probe(&config.readiness, shared.addr, config.probe_timeout).await {
        let mut life = shared.life();
        if life.exit.is_none() && !life.stopping {
            life.ready = true;
            tracing::info!(addr = %shared.addr, "replica is ready");
        }
    }
    false
}

async fn stop_gracefully(shared: &Shared, config: &Config) {
    let started = Instant::now();
    {
        let mut life = shared.life();
        life.stopping = true;
        life.ready = false;
        if let Some(exit) = poll_exit_locked(&mut life, &shared.name) {
            tracing::info!(exit = %exit.describe(), "replica had already exited");
            return;
        }
        if let Err(e) = signal_group(shared.pid, Signal::SIGTERM) {
            tracing::warn!(error = %e, "could not send SIGTERM");
        }
    }
    tracing::info!(
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
            return;
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
            && let Err(e) = signal_group(shared.pid, Signal::SIGKILL)
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
            return;
        }
        if killed.elapsed() >= KILL_WAIT {
            tracing::error!(
                "replica still not gone {} after SIGKILL; it stays owned by Atlas and is killed again on drop",
                humantime::format_duration(KILL_WAIT)
            );
            return;
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}
