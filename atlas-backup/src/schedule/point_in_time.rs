//! The point-in-time job: close the database's current WAL segment and
//! wait until the archive holds it, so everything committed before the
//! job started is recoverable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use super::plan::{ScheduleKind, ScheduledRun};
use super::scheduler::BackupJob;
use atlas_core::Result;

/// What a point-in-time job asks of the database: close the current WAL
/// segment (PostgreSQL's `pg_switch_wal()`) and return once the archiver
/// reports that segment archived. Implemented by a program over its
/// database driver (this crate does not talk to databases).
#[async_trait]
pub trait WalSwitcher: Send + Sync {
    /// Switches to a new WAL segment and waits until the closed one is
    /// archived.
    ///
    /// # Errors
    /// Any failure of the database or of the archiver, including not
    /// reaching the archive within the switcher's own time limit.
    async fn switch_and_wait(&self) -> Result<WalSwitched>;
}

/// A [`WalSwitcher`] made from a closure; see [`switcher_fn`].
#[derive(Clone)]
pub struct SwitcherFn<F>(F);

impl<F> std::fmt::Debug for SwitcherFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwitcherFn")
    }
}

/// A [`WalSwitcher`] from `f() -> impl Future<Output = Result<WalSwitched>>`.
pub fn switcher_fn<F, Fut>(f: F) -> SwitcherFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<WalSwitched>> + Send,
{
    SwitcherFn(f)
}

#[async_trait]
impl<F, Fut> WalSwitcher for SwitcherFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<WalSwitched>> + Send,
{
    async fn switch_and_wait(&self) -> Result<WalSwitched> {
        (self.0)().await
    }
}

/// What a [`WalSwitcher`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalSwitched {
    /// The segment the switch closed, now archived.
    pub segment: String,
    /// The age of the newest archived WAL file measured after the wait
    /// (`pg_stat_archiver.last_archived_time` against now), `None` if the
    /// server does not report one.
    pub newest_archived_age: Option<Duration>,
}

impl WalSwitched {
    /// The closed `segment` and the archive's newest WAL age.
    pub fn new(segment: impl Into<String>, newest_archived_age: Option<Duration>) -> Self {
        WalSwitched {
            segment: segment.into(),
            newest_archived_age,
        }
    }
}

/// One finished point-in-time job, handed to the observer of a
/// [`PointInTimeJob`] (to export it as metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PointInTimeReport {
    /// The slot the job ran for.
    pub run: ScheduledRun,
    /// From the switch until the archiver reported the segment archived,
    /// on tokio's clock.
    pub duration: Duration,
    /// What the switcher reported.
    pub switched: WalSwitched,
}

type Observer = Arc<dyn Fn(&PointInTimeReport) + Send + Sync>;

/// A [`BackupJob`] that runs [`ScheduleKind::PointInTime`] slots through a
/// [`WalSwitcher`] and hands every other slot (full, incremental) to the
/// job it wraps. Each successful switch goes to the observer set with
/// [`on_report`](Self::on_report); a failed one is the job's error, which
/// the scheduler records as a failed point-in-time run.
///
/// ```
/// use atlas_backup::schedule::{
///     BackupSchedule, PointInTimeJob, Scheduler, WalSwitched, WalSwitcher, job_fn,
/// };
///
/// struct Db;
/// #[async_trait::async_trait]
/// impl WalSwitcher for Db {
///     async fn switch_and_wait(&self) -> atlas_core::Result<WalSwitched> {
///         // SELECT pg_walfile_name(pg_switch_wal()), then poll pg_stat_archiver.
///         Ok(WalSwitched::new("000000010000000000000003", None))
///     }
/// }
/// let job = PointInTimeJob::new(Db, job_fn(|_run| async { Ok(()) }))
///     .on_report(|report| println!("{} archived in {:?}", report.switched.segment, report.duration));
/// let scheduler = Scheduler::new(BackupSchedule::default(), job);
/// # let _ = scheduler;
/// ```
pub struct PointInTimeJob<J> {
    switcher: Arc<dyn WalSwitcher>,
    other: J,
    observer: Option<Observer>,
}

impl<J> std::fmt::Debug for PointInTimeJob<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointInTimeJob")
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl<J: BackupJob> PointInTimeJob<J> {
    /// Point-in-time slots through `switcher`, the others through `other`.
    pub fn new(switcher: impl WalSwitcher + 'static, other: J) -> Self {
        PointInTimeJob {
            switcher: Arc::new(switcher),
            other,
            observer: None,
        }
    }

    /// Calls `observer` after every successful switch (e.g. to record
    /// `Telemetry::point_in_time_job`).
    pub fn on_report(
        mut self,
        observer: impl Fn(&PointInTimeReport) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Runs one point-in-time job now, outside any schedule (its slot is
    /// the current system time), and returns its report.
    ///
    /// # Errors
    /// The switcher's error.
    pub async fn switch_now(&self) -> Result<PointInTimeReport> {
        let run = ScheduledRun {
            at: jiff::Timestamp::now(),
            kind: ScheduleKind::PointInTime,
            superseded: Vec::new(),
        };
        self.switch(&run).await
    }

    async fn switch(&self, run: &ScheduledRun) -> Result<PointInTimeReport> {
        let span = tracing::info_span!("backup.point_in_time", scheduled_at = %run.at);
        async {
            let started = tokio::time::Instant::now();
            let switched = self.switcher.switch_and_wait().await?;
            let report = PointInTimeReport {
                run: run.clone(),
                duration: started.elapsed(),
                switched,
            };
            tracing::info!(
                segment = %report.switched.segment,
                duration_ms = report.duration.as_millis() as u64,
                newest_archived_age_ms = report.switched.newest_archived_age.map(|a| a.as_millis() as u64),
                "WAL switched and archived"
            );
            if let Some(observe) = &self.observer {
                observe(&report);
            }
            Ok(report)
        }
        .instrument(span)
        .await
    }
}

#[async_trait]
impl<J: BackupJob> BackupJob for PointInTimeJob<J> {
    async fn run(&self, run: &ScheduledRun) -> Result<()> {
        match run.kind {
            ScheduleKind::PointInTime => self.switch(run).await.map(drop),
            ScheduleKind::Incremental | ScheduleKind::Full => self.other.run(run).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use jiff::Timestamp;

    use super::*;
    use crate::schedule::{BackupSchedule, Scheduler, TokioClock, WallClock, job_fn};
    use atlas_core::Error;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// A switcher whose every call takes `took` of (virtual) time and
    /// fails on the calls numbered in `failing` (from 1).
    struct Scripted {
        took: Duration,
        failing: Vec<usize>,
        calls: Mutex<usize>,
    }

    #[async_trait]
    impl WalSwitcher for Scripted {
        async fn switch_and_wait(&self) -> Result<WalSwitched> {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            tokio::time::sleep(self.took).await;
            if self.failing.contains(&n) {
                return Err(Error::backend(
                    "archiver",
                    format!("segment {n} not archived"),
                ));
            }
            Ok(WalSwitched::new(
                format!("0000000100000000000000{n:02X}"),
                Some(Duration::from_secs(1)),
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn point_in_time_slots_switch_wal_and_the_rpo_follows_them() {
        let clock = TokioClock::starting_at(ts("2026-03-01T00:00:00Z"));
        let others: Arc<Mutex<Vec<ScheduledRun>>> = Arc::default();
        let reports: Arc<Mutex<Vec<PointInTimeReport>>> = Arc::default();
        let seen = Arc::clone(&others);
        let observed = Arc::clone(&reports);
        let switcher = Scripted {
            took: Duration::from_secs(20),
            failing: vec![3],
            calls: Mutex::new(0),
        };
        let job = PointInTimeJob::new(
            switcher,
            job_fn(move |run| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(run);
                    Ok(())
                }
            }),
        )
        .on_report(move |r| observed.lock().unwrap().push(r.clone()));
        let scheduler = Scheduler::new(BackupSchedule::default(), job).with_clock(clock);
        let handle = scheduler.handle();
        let task = tokio::spawn(scheduler.run());

        // Before any run there is no recovery point: the RPO is not met.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let rpo = handle.status().rpo(clock.now(), Duration::from_secs(300));
        assert_eq!((rpo.newest_recovery_point, rpo.met), (None, false));

        // 00:15 … 01:45 and 02:15 are point-in-time slots, 02:00 is full.
        tokio::time::sleep(Duration::from_secs(2 * 3600 + 19 * 60)).await;
        handle.cancel();
        let status = task.await.unwrap();

        let others = others.lock().unwrap().clone();
        assert_eq!(others.len(), 1, "{others:?}");
        assert_eq!(
            (others[0].kind, others[0].at),
            (ScheduleKind::Full, ts("2026-03-01T02:00:00Z"))
        );
        let reports = reports.lock().unwrap().clone();
        assert_eq!(reports.len(), 7, "8 switches, the third failed");
        assert!(
            reports
                .iter()
                .all(|r| r.duration == Duration::from_secs(20))
        );
        assert_eq!(reports[2].switched.segment, "000000010000000000000004");
        assert_eq!(reports[2].run.at, ts("2026-03-01T01:00:00Z"));

        let pit = status.kind(ScheduleKind::PointInTime);
        assert_eq!((pit.runs, pit.successes, pit.failures), (8, 7, 1));
        assert_eq!(pit.last_failure, Some(ts("2026-03-01T00:45:00Z")));
        assert!(
            pit.last_error
                .as_deref()
                .unwrap()
                .contains("segment 3 not archived"),
            "{:?}",
            pit.last_error
        );
        assert_eq!(pit.last_duration, Some(Duration::from_secs(20)));
        assert_eq!(pit.last_success, Some(ts("2026-03-01T02:15:00Z")));

        // The newest recovery point is the 02:15 switch, newer than the
        // 02:00 full backup; 5 minutes later the 5-minute RPO still holds,
        // one minute more and it does not.
        let rpo = status.rpo(ts("2026-03-01T02:20:00Z"), Duration::from_secs(300));
        assert_eq!(rpo.newest_recovery_point, Some(ts("2026-03-01T02:15:00Z")));
        assert_eq!(rpo.newest_kind, Some(ScheduleKind::PointInTime));
        assert_eq!(rpo.age, Some(Duration::from_secs(300)));
        assert!(rpo.met);
        let late = status.rpo(ts("2026-03-01T02:21:00Z"), Duration::from_secs(300));
        assert!(!late.met);
        assert_eq!(late.age, Some(Duration::from_secs(360)));
    }
}
