//! [`ProcessWorkloads`]: each replica of a release as a local OS process.
//!
//! A release's [`artifact`](atlas_core::Release::artifact) is the program to
//! run (a path, or a name looked up in `PATH`), its `args` the arguments and
//! its `env` extra environment on top of Atlas's own. Every replica also
//! gets:
//!
//! | variable | value |
//! |---|---|
//! | `PORT` | a free loopback port Atlas chose (in 20000–32767, below the ephemeral range that client connections take theirs from); the replica must listen on `127.0.0.1:$PORT` |
//! | `ATLAS_SLOT` | `blue` or `green` |
//! | `ATLAS_REPLICA` | the replica's index in the slot, from 0 |
//! | `ATLAS_SERVICE` | the service name |
//! | `ATLAS_VERSION` | the release version |
//!
//! Replica `i` of slot `green` of service `checkout` is named
//! `checkout-green-i`; its endpoint is `127.0.0.1:$PORT`. Its stdout and
//! stderr go straight to `{log_dir}/checkout-green-i.log` (appended; Atlas
//! writes one header line per start, with the program and its arguments but
//! never the environment, which may hold secrets).
//!
//! ## Lifecycle
//!
//! - **Readiness.** A watcher task per replica probes it every poll interval
//!   ([`Readiness`]: a TCP connect by default, or an HTTP `GET` answering
//!   2xx) until it is ready; [`status`](Workloads::status) counts it ready
//!   from then on, until it exits or is stopped.
//! - **Deploy.** A new release in a slot starts all new replicas first, then
//!   stops all old ones (they drain in the background: SIGTERM, then SIGKILL
//!   after the grace period). If a new replica cannot be started, the ones
//!   already started are stopped and the slot keeps its old release and
//!   replicas. Deploying the release a slot already runs keeps the running
//!   replicas, replaces the ones that exited, and scales to the new count.
//!   Either way, deploy clears the slot's recorded failures.
//! - **Scale.** Starts missing replicas at the lowest free indices; scaling
//!   down stops the highest indices first, which are the endpoints listed
//!   last. Scale does not restart replicas that exited.
//! - **Live scale.** As a [`Scaler`](atlas_core::Scaler), it scales a slot
//!   that serves traffic without failing a request: new replicas are
//!   listed with the router only once ready, and replicas that go are
//!   drained from the router before they are stopped.
//! - **Exit.** A replica that exits on its own stays in the slot, is not
//!   counted as updated or ready, and is reported in
//!   [`SlotStatus::failures`] (`checkout-green-1 exited with status 3`)
//!   until the next deploy, or until it is restarted (see *Restart*). By
//!   default it is not restarted; deploying the same release again
//!   replaces it.
//! - **Restart.** With [`RestartPolicy::OnFailure`]
//!   ([`ProcessWorkloadsBuilder::restart`]) a replica that exits on its own
//!   (any status, or a signal Atlas did not send) is started again, with
//!   the same name, index and port (so the endpoints a router holds stay
//!   valid), after a backoff that doubles with each exit in a row up to a
//!   cap and starts over once a run lasted `reset_after`.
//!   [`RestartPolicy::on_failure`] waits 1 s doubling to 60 s, reset after
//!   10 min of running; Kubernetes' CrashLoopBackOff waits 10 s doubling to
//!   5 min (same reset): a local process starts in milliseconds and its
//!   port stays listed, so Atlas retries sooner and caps lower. While it
//!   waits, the replica is reported in `failures`. Restarts are counted per
//!   replica ([`ProcessWorkloads::replicas`]). Replicas Atlas stops (scale
//!   down, deploy, shutdown) are never restarted.
//! - **Events.** [`ProcessWorkloads::events`] reports each start, readiness,
//!   exit, scheduled restart, adoption, stop and release as a
//!   [`ReplicaEvent`]; each is also a tracing event.
//! - **Stop.** Signals go to the replica's process group (each replica runs
//!   in a group of its own, so a Ctrl-C in the terminal reaches Atlas, not
//!   the replicas): SIGTERM, then SIGKILL once the grace period (default
//!   30 s, as Kubernetes' `terminationGracePeriodSeconds`) has passed.
//!   [`ProcessWorkloads::shutdown`] stops every replica that way and waits;
//!   dropping the [`ProcessWorkloads`] SIGKILLs whatever still runs (unless
//!   detached).
//! - **Owner death.** By default (embedded mode), on Linux a replica never
//!   outlives the program that owns it, however that program ends
//!   (SIGKILL and crashes included):
//!   each replica asks the kernel for SIGKILL when its parent goes
//!   (`PR_SET_PDEATHSIG`), and refuses to start if its owner died while it
//!   was being forked. The kernel ties this to the *thread* that forked the
//!   replica, so every replica is forked by one thread that the
//!   [`ProcessWorkloads`] owns and that ends only once it is dropped:
//!   deploying from a short-lived thread or from tokio's blocking pool is
//!   safe. Processes a replica starts itself are not covered (the kernel
//!   does not pass the setting on). Other Unix systems have no such
//!   setting: there replicas end with their owner only on an orderly exit
//!   ([`shutdown`](ProcessWorkloads::shutdown), `Drop`, or a signal handler
//!   that leads to either), so a program embedding this should handle
//!   SIGINT and SIGTERM.
//! - **Detached mode.** For a supervisor that is itself restarted or
//!   upgraded ([`ProcessWorkloadsBuilder::detached`]): each replica starts
//!   a session of its own (`setsid`: a process group of its own, no
//!   controlling terminal, so no SIGHUP or Ctrl-C from one), nothing asks
//!   the kernel to kill it with its owner, and it has no pipe to the owner
//!   (stdin is `/dev/null`; stdout and stderr are the child's own
//!   descriptors of its log file, opened for appending), so it runs on
//!   however the owner ends, SIGKILL included. Dropping the
//!   [`ProcessWorkloads`] leaves replicas running;
//!   [`shutdown`](ProcessWorkloads::shutdown) still stops them all, and
//!   [`release_all`](ProcessWorkloads::release_all) lets go of them for a
//!   planned exit, returning their records.
//! - **Adoption.** [`ProcessWorkloads::records`] describes every replica
//!   ([`ReplicaRecord`]: slot, index, release, pid, the process's start
//!   time from `/proc/<pid>/stat`, port, log file, restarts); the owner
//!   keeps them (in a file only it can read: the release's environment may
//!   hold secrets). A new owner passes them to
//!   [`ProcessWorkloads::adopt`]: a process that still runs with the
//!   recorded start time is taken over (a pid the kernel has since given
//!   to another process has another start time); otherwise a fresh
//!   replica starts on the recorded port, or a new one if that is taken
//!   ([`AdoptReport`]). An adopted process is not our child: its exit is
//!   noticed by reading its start time in `/proc` at every poll interval
//!   (rather than a pidfd, which would need `unsafe` here and cannot give
//!   a non-child's exit status either), so its exit status is unknown;
//!   the start time is checked again right before each stop signal (a
//!   pidfd would also close the short window between that check and the
//!   signal).
//!   Adopted replicas are probed, stopped, scaled and restarted like any
//!   other. Replicas that were being stopped are recorded as such, and a
//!   new owner stops those it finds running. Adoption needs `/proc`
//!   (Linux); elsewhere every record gets a fresh replica.
//!
//! ```no_run
//! use std::time::Duration;
//! use atlas_core::{Release, ServiceName, Slot, Workloads};
//! use atlas_local::process::{ProcessWorkloads, Readiness};
//!
//! # async fn run() -> atlas_core::Result<()> {
//! let workloads = ProcessWorkloads::builder()
//!     .log_dir("/var/tmp/atlas-logs")
//!     .grace_period(Duration::from_secs(10))
//!     .readiness(Readiness::http_get("/ready"))
//!     .build()?;
//! let service = ServiceName::new("checkout")?;
//! let release = Release::new("v2", "/usr/local/bin/checkout").with_arg("--quiet");
//! workloads.deploy(&service, Slot::Green, &release, 2).await?;
//! let status = workloads.status(&service, Slot::Green).await?;
//! println!("{} of {} ready", status.ready, status.desired);
//! workloads.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod adopt;
mod config;
mod context;
mod events;
mod readiness;
mod record;
mod replica;
mod restart;
mod scale;
mod spawner;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::{Endpoint, Error, Release, Result, ServiceName, Slot, SlotStatus, Workloads};
use tracing::Instrument;

use config::{BACKEND, Config};
use context::{Context, EVENT_CAPACITY};
pub use events::{ReplicaEvent, ReplicaEventKind};
pub use readiness::Readiness;
pub use record::{AdoptReport, ReplicaRecord, ReplicaStatus};
use replica::{Launch, Observed, Replica};
pub use restart::{
    DEFAULT_BACKOFF_RESET, DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, RestartPolicy,
};
use spawner::Spawner;
use tokio::sync::broadcast;

/// Default time between SIGTERM and SIGKILL: Kubernetes' default
/// `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Default time between two readiness probes or exit checks of a replica.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Default time one readiness probe may take: Kubernetes' default
/// `timeoutSeconds`.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Default longest wait, when scaling a live slot up, for the new replicas
/// to become ready before the scale is undone.
pub const DEFAULT_SCALE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most replicas one slot may run: each holds a loopback port and a
/// process on this one host.
pub const MAX_REPLICAS: u32 = 1024;

/// Upper bound for the durations in the configuration, so deadlines
/// computed from them cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Environment variables Atlas sets for every replica; a release may not set
/// them itself.
const RESERVED_ENV: [&str; 5] = [
    "PORT",
    "ATLAS_SLOT",
    "ATLAS_REPLICA",
    "ATLAS_SERVICE",
    "ATLAS_VERSION",
];

/// Builds a [`ProcessWorkloads`]; every setting has a default.
#[derive(Debug, Clone)]
pub struct ProcessWorkloadsBuilder {
    log_dir: Option<PathBuf>,
    grace_period: Duration,
    readiness: Readiness,
    poll_interval: Duration,
    probe_timeout: Duration,
    scale_ready_timeout: Duration,
    detached: bool,
    restart: RestartPolicy,
}

impl Default for ProcessWorkloadsBuilder {
    fn default() -> Self {
        ProcessWorkloadsBuilder {
            log_dir: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            readiness: Readiness::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            scale_ready_timeout: DEFAULT_SCALE_READY_TIMEOUT,
            detached: false,
            restart: RestartPolicy::Never,
        }
    }
}

impl ProcessWorkloadsBuilder {
    /// Where replica logs go, one `{service}-{slot}-{index}.log` file per
    /// replica. Created by [`build`](Self::build) if missing. Default:
    /// `atlas-logs` in the system's temporary directory.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Time a replica gets between SIGTERM and SIGKILL. Default 30 s; at
    /// most one hour; zero sends SIGKILL right after SIGTERM.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// When a replica counts as ready. Default: its port accepts a TCP
    /// connection.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Time between two readiness probes (and exit checks) of a replica.
    /// Default 100 ms; between 1 ms and one hour.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Time one readiness probe may take. Default 1 s; greater than zero,
    /// at most one hour.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Longest wait, when [`Scaler::scale_live`](atlas_core::Scaler::scale_live)
    /// adds replicas, for them to become ready; past it they are stopped
    /// and the slot keeps its previous count. Default 60 s; greater than
    /// zero, at most one hour.
    pub fn scale_ready_timeout(mut self, timeout: Duration) -> Self {
        self.scale_ready_timeout = timeout;
        self
    }

    /// Whether replicas outlive their owner. Default `false`: they die
    /// with it (see *Owner death* in the [module documentation](self)).
    /// Detached, each replica runs in a session of its own, no kernel
    /// request ties it to its owner, and dropping the [`ProcessWorkloads`]
    /// leaves it running; [`shutdown`](ProcessWorkloads::shutdown) still
    /// stops every replica, and [`release_all`](ProcessWorkloads::release_all)
    /// hands them on. For a supervisor that adopts them when it starts
    /// again ([`adopt`](ProcessWorkloads::adopt)).
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// What happens to a replica that exits on its own. Default
    /// [`RestartPolicy::Never`].
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Checks the settings and creates the log directory.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the setting that breaks its rule;
    /// [`Error::Backend`] if the log directory cannot be created.
    pub fn build(self) -> Result<ProcessWorkloads> {
        if self.grace_period > MAX_DURATION {
            return Err(Error::invalid("grace_period", "must be at most 1h"));
        }
        if self.poll_interval < Duration::from_millis(1) || self.poll_interval > MAX_DURATION {
            return Err(Error::invalid(
                "poll_interval",
                "must be between 1ms and 1h",
            ));
        }
        if self.probe_timeout.is_zero() || self.probe_timeout > MAX_DURATION {
            return Err(Error::invalid(
                "probe_timeout",
                "must be greater than 0 and at most 1h",
            ));
        }
        if self.scale_ready_timeout.is_zero() || self.scale_ready_timeout > MAX_DURATION {
            return Err(Error::invalid(
                "scale_ready_timeout",
                "must be greater than 0 and at most 1h",
            ));
        }
        self.readiness.validate()?;
        self.restart.validate(MAX_DURATION)?;
        let log_dir = self
            .log_dir
            .unwrap_or_else(|| std::env::temp_dir().join("atlas-logs"));
        if log_dir.as_os_str().is_empty() {
            return Err(Error::invalid("log_dir", "must not be empty"));
        }
        std::fs::create_dir_all(&log_dir).map_err(|e| {
            Error::backend_with(
                BACKEND,
                format!("cannot create log directory {}", log_dir.display()),
                e,
            )
        })?;
        let config = Config {
            log_dir,
            grace_period: self.grace_period,
            readiness: self.readiness,
            poll_interval: self.poll_interval,
            probe_timeout: self.probe_timeout,
            scale_ready_timeout: self.scale_ready_timeout,
            detached: self.detached,
            restart: self.restart,
        };
        let spawner = Spawner::start(self.detached)?;
        tracing::debug!(?config, "process workloads ready");
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(ProcessWorkloads {
            ctx: Arc::new(Context {
                config,
                spawner,
                events,
            }),
            state: tokio::sync::Mutex::new(State::default()),
        })
    }
}

/// [`Workloads`] as local OS processes, one per replica, on loopback ports.
/// See the [module documentation](self) for the environment, logs and
/// lifecycle.
///
/// Needs a tokio runtime with I/O and time enabled. By default nothing
/// outlives it: [`shutdown`](Self::shutdown) stops every replica
/// gracefully, `Drop` SIGKILLs whatever still runs, and on Linux the kernel
/// kills the replicas if the program dies without either (see *Owner
/// death* in the [module documentation](self)). Built
/// [`detached`](ProcessWorkloadsBuilder::detached), replicas outlive it
/// instead, and a new owner [`adopt`](Self::adopt)s them. It owns one
/// thread, which forks every replica and ends once it and its replica
/// watchers are dropped.
pub struct ProcessWorkloads {
    ctx: Arc<Context>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: BTreeMap<(ServiceName, Slot), SlotRecord>,
    /// Replicas being stopped, kept until their process is gone so shutdown
    /// and drop reach them too.
    draining: Vec<Replica>,
    closed: bool,
}

#[derive(Default)]
struct SlotRecord {
    release: Option<Release>,
    desired: u32,
    replicas: BTreeMap<u32, Replica>,
    /// Failures of replicas no longer in `replicas` (scaled away after they
    /// exited), kept until the next deploy.
    failures: Vec<String>,
}

impl State {
    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::precondition("process workloads were shut down"));
        }
        Ok(())
    }

    fn prune_draining(&mut self) {
        self.draining.retain(|r| !r.is_finished());
    }

    fn ports_in_use(&self) -> HashSet<u16> {
        self.slots
            .values()
            .flat_map(|s| s.replicas.values())
            .chain(&self.draining)
            .map(|r| r.addr().port())
            .collect()
    }
}

impl ProcessWorkloads {
    /// A builder with the defaults.
    pub fn builder() -> ProcessWorkloadsBuilder {
        ProcessWorkloadsBuilder::default()
    }

    /// The directory replica logs go to.
    pub fn log_dir(&self) -> &Path {
        &self.ctx.config.log_dir
    }

    /// The log file of replica `index` of `slot` of `service`.
    pub fn log_path(&self, service: &ServiceName, slot: Slot, index: u32) -> PathBuf {
        self.ctx
            .config
            .log_path(&replica::replica_name(service, slot, index))
    }

    /// Whether replicas outlive this owner
    /// ([`detached`](ProcessWorkloadsBuilder::detached)).
    pub fn is_detached(&self) -> bool {
        self.ctx.config.detached
    }

    /// A receiver of every [`ReplicaEvent`] from now on. A receiver that
    /// falls more than 1024 events behind misses the oldest
    /// ([`broadcast::error::RecvError::Lagged`]).
    pub fn events(&self) -> broadcast::Receiver<ReplicaEvent> {
        self.ctx.events.subscribe()
    }

    /// Every replica of every slot now, by service, slot and index,
    /// including ones that exited (and may be waiting to restart) but not
    /// ones being stopped.
    pub async fn replicas(&self) -> Vec<ReplicaStatus> {
        let state = self.state.lock().await;
        state
            .slots
            .values()
            .flat_map(|s| s.replicas.values())
            .map(Replica::status)
            .collect()
    }

    /// Process ids of the replicas `slot` runs now, by index, including ones
    /// that exited but not ones being stopped. For diagnostics and tests.
    pub async fn pids(&self, service: &ServiceName, slot: Slot) -> Vec<(u32, u32)> {
        let state = self.state.lock().await;
        state
            .slots
            .get(&(service.clone(), slot))
            .map(|r| r.replicas.values().map(|r| (r.index(), r.pid())).collect())
            .unwrap_or_default()
    }

    /// Stops every replica gracefully (SIGTERM, SIGKILL after the grace
    /// period), waits until all are gone, and refuses further deploys and
    /// scales with [`Error::Precondition`]. Calling it again is harmless.
    ///
    /// Returns how many replica processes were still running (including
    /// ones already being stopped) and are now gone; replicas that had
    /// exited on their own are not counted.
    pub async fn shutdown(&self) -> usize {
        let replicas: Vec<Replica> = {
            let mut state = self.state.lock().await;
            state.closed = true;
            let mut all: Vec<Replica> = std::mem::take(&mut state.draining);
            for record in state.slots.values_mut() {
                record.desired = 0;
                all.extend(std::mem::take(&mut record.replicas).into_values().rev());
            }
            all
        };
        let running = replicas
            .iter()
            .filter(|r| !matches!(r.observe(), Observed::Failed(_)))
            .count();
        tracing::info!(
            replicas = replicas.len(),
            running,
            "shutting down process workloads"
        );
        for r in &replicas {
            r.request_stop();
        }
        futures::future::join_all(replicas.into_iter().map(Replica::join)).await;
        tracing::info!(stopped = running, "process workloads shut down");
        running
    }

    /// Starts or stops replicas so that `record` runs indices `0..replicas`
    /// (failed replicas below `replicas` stay as they are). Starts first, so
    /// a start failure leaves the record unchanged.
    fn scale_record(
        &self,
        service: &ServiceName,
        slot: Slot,
        record: &mut SlotRecord,
        draining: &mut Vec<Replica>,
        mut ports: HashSet<u16>,
        replicas: u32,
    ) -> Result<()> {
        let Some(release) = record.release.clone() else {
            return Err(Error::not_found(format!(
                "slot {slot} of {service} runs no release"
            )));
        };
        let mut started = Vec::new();
        for index in (0..replicas).filter(|i| !record.replicas.contains_key(i)) {
            match self.start(service, slot, index, &release, &mut ports) {
                Ok(r) => started.push(r),
                Err(e) => {
                    stop_all(started, draining);
                    return Err(e);
                }
            }
        }
        for r in started {
            record.replicas.insert(r.index(), r);
        }
        let extra: Vec<u32> = record.replicas.range(replicas..).map(|(i, _)| *i).collect();
        for index in extra.into_iter().rev() {
            if let Some(r) = record.replicas.remove(&index) {
                if let Observed::Failed(reason) = r.observe() {
                    record.failures.push(reason);
                }
                tracing::info!(replica = %r.name(), "stopping replica (scale down)");
                r.request_stop();
                draining.push(r);
            }
        }
        record.desired = replicas;
        Ok(())
    }

    fn start(
        &self,
        service: &ServiceName,
        slot: Slot,
        index: u32,
        release: &Release,
        ports: &mut HashSet<u16>,
    ) -> Result<Replica> {
        let port = free_port(ports)?;
        ports.insert(port);
        Replica::spawn(
            Launch {
                service: service.clone(),
                slot,
                index,
                release: release.clone(),
                port,
            },
            &self.ctx,
            0,
        )
    }
}

fn stop_all(replicas: Vec<Replica>, draining: &mut Vec<Replica>) {
    for r in replicas.into_iter().rev() {
        r.request_stop();
        draining.push(r);
    }
}

/// Replica ports come from below Linux's default ephemeral range
/// (32768–60999), which the kernel hands out as the local port of outgoing
/// connections: a port picked there can be taken by any client connection
/// between our check and the replica's bind, which a busy host (a load
/// test, a proxy) makes likely. Below it, only explicit binds compete.
const PORT_RANGE: std::ops::Range<u16> = 20000..32768;

/// A loopback port that is free now and none of our replicas holds: a
/// random one from [`PORT_RANGE`], checked by binding it, else one the OS
/// picks. Another program may still take it before the replica binds it;
/// the replica then fails to start and is reported as failed.
fn free_port(taken: &HashSet<u16>) -> Result<u16> {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..64 {
        let port = rng.random_range(PORT_RANGE);
        if !taken.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    for _ in 0..32 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::transient_with(BACKEND, "cannot bind a free loopback port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::transient_with(BACKEND, "cannot read a bound port", e))?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(Error::transient(
        BACKEND,
        "the OS kept handing out loopback ports our replicas already hold",
    ))
}

fn validate_release(release: &Release) -> Result<()> {
    release.validate()?;
    if release.artifact.contains('\0') {
        return Err(Error::invalid(
            "release.artifact",
            "must not contain a NUL byte",
        ));
    }
    for (i, arg) in release.args.iter().enumerate() {
        if arg.contains('\0') {
            return Err(Error::invalid(
                format!("release.args[{i}]"),
                "must not contain a NUL byte",
            ));
        }
    }
    for (key, value) in &release.env {
        let field = || format!("release.env.{key}");
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Error::invalid(
                format!("release.env key {key:?}"),
                "must be non-empty, without '=' or NUL",
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid(field(), "must not contain a NUL byte"));
        }
        if RESERVED_ENV.contains(&key.as_str()) {
            return Err(Error::invalid(
                field(),
                "is set by Atlas for each replica and may not be set by the release",
            ));
        }
    }
    Ok(())
}

fn validate_replicas(replicas: u32) -> Result<()> {
    if replicas > MAX_REPLICAS {
        return Err(Error::invalid(
            "replicas",
            format!("must be at most {MAX_REPLICAS} for local processes, got {replicas}"),
        ));
    }
    Ok(())
}

#[async_trait]
impl Workloads for ProcessWorkloads {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()> {
        validate_release(release)?;
        validate_replicas(replicas)?;
        let span = tracing::info_span!(
            "process.deploy",
            service = %service,
            slot = %slot,
            version = %release.version,
            replicas
        );
        async {
            let mut guard = self.state.lock().await;
            guard.check_open()?;
            guard.prune_draining();
            let ports = guard.ports_in_use();
            let State {
                slots, draining, ..
            } = &mut *guard;
            let record = slots.entry((service.clone(), slot)).or_default();
            if record.release.as_ref() == Some(release) {
                // Same release: keep what runs, replace what exited.
                let exited: Vec<(u32, String)> = record
                    .replicas
                    .values()
                    .filter_map(|r| match r.observe() {
                        Observed::Failed(reason) => Some((r.index(), reason)),
                        _ => None,
                    })
                    .collect();
                // Their watchers may be waiting to restart them: stop
                // those, so only the replacements run.
                let replaced: Vec<Replica> = exited
                    .iter()
                    .filter_map(|(index, _)| record.replicas.remove(index))
                    .collect();
                stop_all(replaced, draining);
                if let Err(e) = self.scale_record(service, slot, record, draining, ports, replicas)
                {
                    // Keep the failures visible: nothing replaced them.
                    record.failures.extend(exited.into_iter().map(|(_, reason)| reason));
                    return Err(e);
                }
                record.failures.clear();
                tracing::info!(replaced = exited.len(), "slot already runs this release; scaled");
                return Ok(());
            }
            let mut ports = ports;
            let mut new = BTreeMap::new();
            for index in 0..replicas {
                match self.start(service, slot, index, release, &mut ports) {
                    Ok(r) => {
                        new.insert(index, r);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "deploy failed; the slot keeps its previous release");
                        stop_all(new.into_values().collect(), draining);
                        return Err(e);
                    }
                }
            }
            let old = std::mem::replace(&mut record.replicas, new);
            let previous = record.release.replace(release.clone());
            record.desired = replicas;
            record.failures.clear();
            tracing::info!(
                previous = previous.as_ref().map(|r| r.version.as_str()),
                stopping = old.len(),
                "deployed; stopping the previous replicas"
            );
            stop_all(old.into_values().collect(), draining);
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
        validate_replicas(replicas)?;
        let span = tracing::info_span!("process.scale", service = %service, slot = %slot, replicas);
        async {
            let mut guard = self.state.lock().await;
            guard.check_open()?;
            guard.prune_draining();
            let ports = guard.ports_in_use();
            let State {
                slots, draining, ..
            } = &mut *guard;
            match slots.get_mut(&(service.clone(), slot)) {
                Some(record) if record.release.is_some() => {
                    let from = record.desired;
                    self.scale_record(service, slot, record, draining, ports, replicas)?;
                    tracing::info!(from, to = replicas, "scaled");
                    Ok(())
                }
                _ if replicas == 0 => Ok(()),
                _ => Err(Error::not_found(format!(
                    "slot {slot} of {service} runs no release to scale"
                ))),
            }
        }
        .instrument(span)
        .await
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        let mut guard = self.state.lock().await;
        guard.prune_draining();
        let Some(record) = guard.slots.get(&(service.clone(), slot)) else {
            return Ok(SlotStatus::empty(slot));
        };
        let Some(release) = &record.release else {
            return Ok(SlotStatus::empty(slot));
        };
        let mut status = SlotStatus::empty(slot);
        status.version = Some(release.version.clone());
        status.desired = record.desired;
        status.failures = record.failures.clone();
        for r in record.replicas.values() {
            match r.observe() {
                Observed::Ready => {
                    status.updated += 1;
                    status.ready += 1;
                    status.endpoints.push(Endpoint::new(r.name(), r.addr()));
                }
                Observed::Starting => status.updated += 1,
                Observed::Failed(reason) => status.failures.push(reason),
            }
        }
        tracing::trace!(service = %service, ?status, "process workloads status");
        Ok(status)
    }
}

impl fmt::Debug for ProcessWorkloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessWorkloads")
            .field("log_dir", &self.ctx.config.log_dir)
            .field("grace_period", &self.ctx.config.grace_period)
            .field("readiness", &self.ctx.config.readiness)
            .field("poll_interval", &self.ctx.config.poll_interval)
            .field("probe_timeout", &self.ctx.config.probe_timeout)
            .field("detached", &self.ctx.config.detached)
            .field("restart", &self.ctx.config.restart)
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessWorkloads {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if self.ctx.config.detached {
            // Detached replicas outlive their owner: stop watching, leave
            // them running (a new owner adopts them by their records).
            let mut left = 0usize;
            for r in state
                .slots
                .values()
                .flat_map(|s| s.replicas.values())
                .chain(&state.draining)
            {
                r.abandon();
                left += 1;
            }
            if left > 0 {
                tracing::info!(
                    replicas = left,
                    "process workloads dropped; detached replicas left running"
                );
            }
            return;
        }
        let mut killed = 0usize;
        for r in state
            .slots
            .values()
            .flat_map(|s| s.replicas.values())
            .chain(&state.draining)
        {
            r.kill_now();
            killed += 1;
        }
        if killed > 0 {
            tracing::info!(
                replicas = killed,
                "process workloads dropped; replicas killed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_refuses_bad_settings() {
        let err = ProcessWorkloads::builder()
            .poll_interval(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("poll_interval"), "{err}");
        let err = ProcessWorkloads::builder()
            .probe_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("probe_timeout"), "{err}");
        let err = ProcessWorkloads::builder()
            .grace_period(Duration::from_secs(7200))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("grace_period"), "{err}");
        let err = ProcessWorkloads::builder()
            .scale_ready_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("scale_ready_timeout"), "{err}");
        let err = ProcessWorkloads::builder()
            .restart(RestartPolicy::OnFailure {
                initial_backoff: Duration::ZERO,
                max_backoff: Duration::from_secs(1),
                reset_after: Duration::from_secs(1),
            })
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("restart.initial_backoff"), "{err}");
        let err = ProcessWorkloads::builder()
            .readiness(Readiness::http_get("ready"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("readiness.path"), "{err}");
        let err = ProcessWorkloads::builder()
            .readiness(Readiness::http_get("/re ady"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("readiness.path"), "{err}");
    }

    #[test]
    fn releases_may_not_set_atlas_variables() {
        let release = Release::new("v1", "/bin/true").with_env("PORT", "80");
        let err = validate_release(&release).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid release.env.PORT: is set by Atlas for each replica and may not be set by the release"
        );
        let release = Release::new("v1", "/bin/true").with_env("A=B", "1");
        assert!(validate_release(&release).is_err());
        let release = Release::new("v1", "/bin/true").with_arg("a\0b");
        let err = validate_release(&release).unwrap_err();
        assert!(err.to_string().contains("release.args[0]"), "{err}");
        assert!(validate_release(&Release::new("", "/bin/true")).is_err());
        assert!(validate_replicas(MAX_REPLICAS + 1).is_err());
    }
}
