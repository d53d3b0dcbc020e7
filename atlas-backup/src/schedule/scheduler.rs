//! The async loop that runs a [`BackupSchedule`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tracing::Instrument;

use super::plan::{BackupSchedule, ScheduleKind, ScheduledRun};
use atlas_core::{Error, Result};

/// How long the scheduler sleeps at most before it reads the wall clock
/// again, so a suspended host or a stepped clock delays a run by at most
/// this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A slot is on time while the scheduler reaches it within its minute;
/// after that it counts as missed.
const ON_TIME: SignedDuration = SignedDuration::from_secs(60);

/// At most this many missed slots are counted one by one after a long
/// stall (a year of 15-minute slots is 35 040); beyond it they are not
/// counted.
const MAX_MISSED_SCAN: usize = 100_000;

/// Where the scheduler reads the current UTC time.
pub trait WallClock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system's clock (`Timestamp::now()`), the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A wall clock driven by tokio's clock: `start` plus the tokio time
/// elapsed since it was made. Under a paused tokio clock
/// (`#[tokio::test(start_paused = true)]`) it advances with virtual time,
/// which the system clock does not: use it for tests and simulations.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Timestamp,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `start` now.
    pub fn starting_at(start: Timestamp) -> Self {
        TokioClock {
            start,
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl WallClock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed =
            SignedDuration::try_from(self.anchor.elapsed()).unwrap_or(SignedDuration::MAX);
        self.start.saturating_add(elapsed).unwrap_or(Timestamp::MAX)
    }
}

/// What the scheduler runs: one backup of the given kind.
///
/// An `Err` is logged and recorded in [`KindStatus`]; the scheduler does
/// not retry — the next slot is the retry. A panic is caught and recorded
/// as a failure too.
#[async_trait]
pub trait BackupJob: Send + Sync {
    /// Runs the backup `run` asks for.
    async fn run(&self, run: &ScheduledRun) -> Result<()>;
}

#[async_trait]
impl<T: BackupJob + ?Sized> BackupJob for Arc<T> {
    async fn run(&self, run: &ScheduledRun) -> Result<()> {
        (**self).run(run).await
    }
}

#[async_trait]
impl<T: BackupJob + ?Sized> BackupJob for Box<T> {
    async fn run(&self, run: &ScheduledRun) -> Result<()> {
        (**self).run(run).await
    }
}

/// A [`BackupJob`] made from a closure; see [`job_fn`].
#[derive(Clone)]
pub struct JobFn<F>(F);

impl<F> std::fmt::Debug for JobFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobFn")
    }
}

/// A [`BackupJob`] from `f(run) -> impl Future<Output = Result<()>>`.
pub fn job_fn<F, Fut>(f: F) -> JobFn<F>
where
    F: Fn(ScheduledRun) -> Fut + Send + Sync,
    Fut: Future<Output = Result<()>> + Send,
{
    JobFn(f)
}

#[async_trait]
impl<F, Fut> BackupJob for JobFn<F>
where
    F: Fn(ScheduledRun) -> Fut + Send + Sync,
    Fut: Future<Output = Result<()>> + Send,
{
    async fn run(&self, run: &ScheduledRun) -> Result<()> {
        (self.0)(run.clone()).await
    }
}

/// What the scheduler does with slots that fell due while it could not
/// run them (a run overran, or the host was suspended). Either way it
/// never runs two jobs at once and never replays missed slots one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedRunPolicy {
    /// Coalesce the missed slots into **one** run, started right away, of
    /// the biggest kind among them (as the Kubernetes CronJob controller
    /// runs the latest missed schedule once). The other missed slots are
    /// skipped. The default: skipping a missed full backup outright would
    /// leave the chain without one until the next day.
    #[default]
    CatchUpOnce,
    /// Skip every missed slot and wait for the next one.
    Skip,
}

/// Counters and RPO inputs for one [`ScheduleKind`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindStatus {
    /// When the last successful run of this kind **started** (the recovery
    /// point it made).
    pub last_success: Option<Timestamp>,
    /// When the last failed run of this kind started.
    pub last_failure: Option<Timestamp>,
    /// The last failure's error message.
    pub last_error: Option<String>,
    /// How long the last run of this kind took (wall clock), whether it
    /// succeeded or not.
    pub last_duration: Option<Duration>,
    /// Runs started.
    pub runs: u64,
    /// Runs that returned `Ok`.
    pub successes: u64,
    /// Runs that returned `Err` or panicked.
    pub failures: u64,
    /// Slots of this kind that were missed and not run (see
    /// [`MissedRunPolicy`]).
    pub skipped: u64,
    /// Slots of this kind that a bigger kind due in the same minute (or a
    /// catch-up run) covered.
    pub superseded: u64,
}

/// A snapshot of the scheduler's state, from [`SchedulerHandle::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStatus {
    /// The run being executed, if any.
    pub running: Option<ScheduledRun>,
    /// The next slot it waits for, if waiting.
    pub next: Option<ScheduledRun>,
    kinds: [KindStatus; 3],
}

impl SchedulerStatus {
    /// The counters of `kind`.
    pub fn kind(&self, kind: ScheduleKind) -> &KindStatus {
        &self.kinds[kind_index(kind)]
    }

    fn kind_mut(&mut self, kind: ScheduleKind) -> &mut KindStatus {
        &mut self.kinds[kind_index(kind)]
    }

    /// Time from the start of the last successful run of `kind` to `now`:
    /// that kind's current recovery point age. `None` if it never succeeded.
    pub fn since_last_success(&self, kind: ScheduleKind, now: Timestamp) -> Option<Duration> {
        self.kind(kind)
            .last_success
            .map(|t| now.duration_since(t).try_into().unwrap_or(Duration::ZERO))
    }

    /// Time since the newest recovery point of any kind: the data that
    /// would be lost if the source failed at `now`. `None` if no run
    /// succeeded yet.
    pub fn recovery_point_age(&self, now: Timestamp) -> Option<Duration> {
        ScheduleKind::ALL
            .into_iter()
            .filter_map(|k| self.since_last_success(k, now))
            .min()
    }

    /// The newest recovery point of any kind (for the RPO) against
    /// `objective` at `now`.
    pub fn rpo(&self, now: Timestamp, objective: Duration) -> RpoStatus {
        let newest = ScheduleKind::ALL
            .into_iter()
            .filter_map(|k| self.kind(k).last_success.map(|t| (t, k)))
            .max();
        let age = newest.map(|(t, _)| now.duration_since(t).try_into().unwrap_or(Duration::ZERO));
        RpoStatus {
            objective,
            newest_recovery_point: newest.map(|(t, _)| t),
            newest_kind: newest.map(|(_, k)| k),
            age,
            met: age.is_some_and(|a| a <= objective),
        }
    }
}

/// The recovery point objective against what the scheduler achieved, from
/// [`SchedulerStatus::rpo`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpoStatus {
    /// The objective: the most data (in time) a restore may lose.
    pub objective: Duration,
    /// The newest moment a restore can reach: the start of the newest
    /// successful run of any kind (a point-in-time run that succeeded has
    /// archived everything committed before it started).
    pub newest_recovery_point: Option<Timestamp>,
    /// The kind of run that made it.
    pub newest_kind: Option<ScheduleKind>,
    /// From the newest recovery point to now: the data a restore would
    /// lose if the source failed now.
    pub age: Option<Duration>,
    /// Whether `age` is within `objective` (false when nothing succeeded
    /// yet).
    pub met: bool,
}

fn kind_index(kind: ScheduleKind) -> usize {
    match kind {
        ScheduleKind::PointInTime => 0,
        ScheduleKind::Incremental => 1,
        ScheduleKind::Full => 2,
    }
}

struct Shared {
    status: Mutex<SchedulerStatus>,
    cancel: watch::Sender<bool>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, SchedulerStatus> {
        // A panic while holding the lock leaves plain counters: still usable.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Controls a running [`Scheduler`] from elsewhere: cancel it, read its
/// status. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl SchedulerHandle {
    /// Stops the scheduler: it stops waiting at once; a run in progress
    /// finishes first (backups are not cut off half-written), then
    /// [`Scheduler::run`] returns. To abort a run, drop the `run` future.
    pub fn cancel(&self) {
        self.shared.cancel.send_replace(true);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        *self.shared.cancel.borrow()
    }

    /// The current status.
    pub fn status(&self) -> SchedulerStatus {
        self.shared.status().clone()
    }
}

/// Runs a [`BackupSchedule`]: sleeps (tokio time) until the next slot,
/// runs the [`BackupJob`] for it, and so on until cancelled.
///
/// - One job at a time: the next slot is only considered after the
///   running job returned.
/// - Same-minute slots run once, as the biggest kind
///   ([`ScheduledRun::superseded`]).
/// - A slot the scheduler reaches within its minute runs; slots that fell
///   due while a job ran (or while the host was suspended) are *missed*
///   and handled by the [`MissedRunPolicy`] (default: one catch-up run of
///   the biggest missed kind, the rest skipped), with a `warn` event.
/// - Slots before the scheduler started are not run.
/// - Every run is a `backup.run` span with `info` events at start and end
///   and an `error` event on failure; [`SchedulerHandle::status`] has the
///   counters and the last success per kind (RPO).
///
/// ```
/// use atlas_backup::schedule::{BackupSchedule, Scheduler, job_fn};
///
/// # async fn demo() {
/// let scheduler = Scheduler::new(
///     BackupSchedule::default(),
///     job_fn(|run| async move {
///         println!("{} backup due at {}", run.kind, run.at);
///         Ok(())
///     }),
/// );
/// let handle = scheduler.handle();
/// let task = tokio::spawn(scheduler.run());
/// // … later, on shutdown:
/// handle.cancel();
/// let status = task.await.unwrap();
/// # let _ = status;
/// # }
/// ```
pub struct Scheduler {
    schedule: BackupSchedule,
    job: Arc<dyn BackupJob>,
    clock: Arc<dyn WallClock>,
    missed: MissedRunPolicy,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("schedule", &self.schedule)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for `schedule` running `job`, on the system clock, with
    /// [`MissedRunPolicy::CatchUpOnce`].
    pub fn new(schedule: BackupSchedule, job: impl BackupJob + 'static) -> Self {
        Scheduler {
            schedule,
            job: Arc::new(job),
            clock: Arc::new(SystemClock),
            missed: MissedRunPolicy::default(),
            shared: Arc::new(Shared {
                status: Mutex::new(SchedulerStatus::default()),
                cancel: watch::Sender::new(false),
            }),
        }
    }

    /// Reads wall time from `clock` (e.g. a [`TokioClock`] in tests).
    pub fn with_clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// What to do with missed slots.
    pub fn with_missed_run_policy(mut self, policy: MissedRunPolicy) -> Self {
        self.missed = policy;
        self
    }

    /// A handle to cancel the scheduler and read its status.
    pub fn handle(&self) -> SchedulerHandle {
        SchedulerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs until cancelled (or, theoretically, the calendar ends in year
    /// 9999) and returns the final status.
    pub async fn run(self) -> SchedulerStatus {
        let span = tracing::info_span!("backup.scheduler", missed_policy = ?self.missed);
        self.run_loop().instrument(span).await
    }

    async fn run_loop(self) -> SchedulerStatus {
        let mut cancel = self.shared.cancel.subscribe();
        // Slots at or before `horizon` are accounted for (run, skipped, or
        // before the scheduler started).
        let mut horizon = self.clock.now();
        tracing::info!(start = %horizon, "backup scheduler started");
        loop {
            if *cancel.borrow() {
                break;
            }
            let now = self.clock.now();
            let due = self.slots_between(horizon, now);
            let chosen = self.choose(due, now);
            horizon = now;
            let Some(run) = chosen else {
                let Some(next) = self.schedule.next_run(horizon) else {
                    tracing::warn!("no further backup slot before the end of the calendar");
                    break;
                };
                tracing::debug!(at = %next.at, kind = %next.kind, "next backup run");
                self.shared.status().next = Some(next.clone());
                if self.sleep_until(next.at, &mut cancel).await {
                    break;
                }
                continue;
            };
            self.execute(run).await;
        }
        let mut status = self.shared.status();
        status.next = None;
        tracing::info!("backup scheduler stopped");
        status.clone()
    }

    /// The slots in `(after, until]`, oldest first, at most
    /// `MAX_MISSED_SCAN`.
    fn slots_between(&self, after: Timestamp, until: Timestamp) -> Vec<ScheduledRun> {
        self.schedule
            .upcoming(after)
            .take_while(|r| r.at <= until)
            .take(MAX_MISSED_SCAN)
            .collect()
    }

    /// Picks the run for the slots that are due, recording skipped and
    /// superseded ones. `None` when nothing is due.
    fn choose(&self, due: Vec<ScheduledRun>, now: Timestamp) -> Option<ScheduledRun> {
        let (missed, on_time): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|r| now.duration_since(r.at) >= ON_TIME);
        let on_time = on_time.into_iter().last();
        let mut status = self.shared.status();
        for run in missed.iter().chain(on_time.iter()) {
            for kind in &run.superseded {
                status.kind_mut(*kind).superseded += 1;
            }
        }
        if missed.is_empty() {
            return on_time;
        }
        let chosen = match self.missed {
            MissedRunPolicy::Skip => on_time.clone(),
            MissedRunPolicy::CatchUpOnce => {
                // The newest slot of the biggest kind, missed or on time.
                let best = missed
                    .iter()
                    .chain(on_time.iter())
                    .max_by_key(|r| (r.kind, r.at))
                    .cloned();
                best.map(|r| ScheduledRun {
                    superseded: Vec::new(),
                    ..r
                })
            }
        };
        let mut skipped = [0u64; 3];
        for run in missed.iter().chain(on_time.iter()) {
            let is_chosen = chosen
                .as_ref()
                .is_some_and(|c| c.at == run.at && c.kind == run.kind);
            if !is_chosen {
                skipped[kind_index(run.kind)] += 1;
                status.kind_mut(run.kind).skipped += 1;
            }
        }
        let [pit, inc, full] = skipped;
        tracing::warn!(
            missed = missed.len(),
            first = %missed.first().map(|r| r.at).unwrap_or(now),
            last = %missed.last().map(|r| r.at).unwrap_or(now),
            skipped_full = full,
            skipped_incremental = inc,
            skipped_point_in_time = pit,
            catch_up = ?chosen.as_ref().map(|r| r.kind),
            policy = ?self.missed,
            "backup slots were missed (a run overran or the host was suspended); coalescing"
        );
        chosen
    }

    /// Sleeps until `at` on the wall clock; `true` if cancelled meanwhile.
    async fn sleep_until(&self, at: Timestamp, cancel: &mut watch::Receiver<bool>) -> bool {
        loop {
            let left = at.duration_since(self.clock.now());
            if left <= SignedDuration::ZERO {
                return false;
            }
            let nap = Duration::try_from(left).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = cancel.wait_for(|c| *c) => return true,
            }
        }
    }

    async fn execute(&self, run: ScheduledRun) {
        let started = self.clock.now();
        {
            let mut status = self.shared.status();
            status.next = None;
            status.running = Some(run.clone());
            status.kind_mut(run.kind).runs += 1;
        }
        let span = tracing::info_span!(
            "backup.run",
            kind = %run.kind,
            scheduled_at = %run.at,
            superseded = ?run.superseded
        );
        let outcome = async {
            tracing::info!(started = %started, "backup run started");
            let outcome = AssertUnwindSafe(self.job.run(&run))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    Err(Error::backend("backup-job", format!("panicked: {what}")))
                });
            let elapsed = self.clock.now().duration_since(started);
            match &outcome {
                Ok(()) => tracing::info!(elapsed = %format_args!("{elapsed:#}"), "backup run succeeded"),
                Err(e) => tracing::error!(elapsed = %format_args!("{elapsed:#}"), error = %e, "backup run failed"),
            }
            outcome
        }
        .instrument(span)
        .await;
        let mut status = self.shared.status();
        status.running = None;
        let kind = status.kind_mut(run.kind);
        kind.last_duration = Some(
            self.clock
                .now()
                .duration_since(started)
                .try_into()
                .unwrap_or(Duration::ZERO),
        );
        match outcome {
            Ok(()) => {
                kind.successes += 1;
                kind.last_success = Some(started);
            }
            Err(e) => {
                kind.failures += 1;
                kind.last_failure = Some(started);
                kind.last_error = Some(e.to_string());
            }
        }
    }
}
