//! When backups run: a cron expression per kind (full, incremental,
//! point-in-time), all in UTC, and a [`Scheduler`] that runs them.
//!
//! [`BackupSchedule`] holds one [`CronExpr`] per [`ScheduleKind`] (each may
//! be turned off). The defaults are a full backup daily at 02:00
//! (`0 2 * * *`), an incremental every 6 hours (`0 */6 * * *`) and a
//! point-in-time (WAL/log) backup every 15 minutes (`*/15 * * * *`).
//!
//! When several kinds fall due in the same minute only the biggest runs —
//! a full supersedes an incremental, which supersedes a point-in-time — so
//! one run happens, not three: with the defaults, 02:00 is a full, 06:00 an
//! incremental, 06:15 a point-in-time.
//!
//! ```
//! use atlas_backup::schedule::{BackupSchedule, ScheduleKind};
//! use jiff::Timestamp;
//!
//! let schedule = BackupSchedule::default();
//! let after: Timestamp = "2026-03-01T01:50:00Z".parse()?;
//! let next = schedule.next_run(after).expect("the default schedule always has a next run");
//! assert_eq!(next.at.to_string(), "2026-03-01T02:00:00Z");
//! assert_eq!(next.kind, ScheduleKind::Full);
//! assert_eq!(next.superseded, [ScheduleKind::PointInTime]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cron;
mod plan;
mod point_in_time;
mod scheduler;

pub use cron::CronExpr;
pub use plan::{
    BackupSchedule, DEFAULT_FULL, DEFAULT_INCREMENTAL, DEFAULT_POINT_IN_TIME, ScheduleKind,
    ScheduledRun,
};
pub use point_in_time::{
    PointInTimeJob, PointInTimeReport, SwitcherFn, WalSwitched, WalSwitcher, switcher_fn,
};
pub use scheduler::{
    BackupJob, JobFn, KindStatus, MissedRunPolicy, RpoStatus, Scheduler, SchedulerHandle,
    SchedulerStatus, SystemClock, TokioClock, WallClock, job_fn,
};
