//! What a schedule is: the kinds of backup, one cron expression for each,
//! and the runs they produce.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use atlas_core::{Error, Result};

use super::cron::CronExpr;

/// The kind of a scheduled backup. Ordered by size: `PointInTime <
/// Incremental < Full`; the biggest kind due at a minute is the one that
/// runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// A point-in-time backup (e.g. shipping the database's write-ahead
    /// log): small and frequent.
    PointInTime,
    /// An incremental backup: what changed since the last one.
    Incremental,
    /// A full backup.
    Full,
}

impl ScheduleKind {
    /// All kinds, smallest first.
    pub const ALL: [ScheduleKind; 3] = [
        ScheduleKind::PointInTime,
        ScheduleKind::Incremental,
        ScheduleKind::Full,
    ];

    /// `full`, `incremental` or `point_in_time`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::PointInTime => "point_in_time",
            ScheduleKind::Incremental => "incremental",
            ScheduleKind::Full => "full",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run the schedule asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ScheduledRun {
    /// When it is due (a whole UTC minute).
    pub at: Timestamp,
    /// The kind that runs: the biggest kind due at `at`.
    pub kind: ScheduleKind,
    /// Smaller kinds also due at `at`, which this run supersedes (biggest
    /// first).
    pub superseded: Vec<ScheduleKind>,
}

/// The default full-backup schedule: daily at 02:00 UTC.
pub const DEFAULT_FULL: &str = "0 2 * * *";
/// The default incremental schedule: every 6 hours, on the hour.
pub const DEFAULT_INCREMENTAL: &str = "0 */6 * * *";
/// The default point-in-time schedule: every 15 minutes.
pub const DEFAULT_POINT_IN_TIME: &str = "*/15 * * * *";

/// A cron expression per backup kind, in UTC. `None` turns a kind off.
///
/// Deserializes from `{ full, incremental, point_in_time }`: a missing
/// field takes its default ([`DEFAULT_FULL`], [`DEFAULT_INCREMENTAL`],
/// [`DEFAULT_POINT_IN_TIME`]), `null` turns the kind off, unknown fields
/// are refused; at least one kind must stay on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ScheduleSpec")]
pub struct BackupSchedule {
    full: Option<CronExpr>,
    incremental: Option<CronExpr>,
    point_in_time: Option<CronExpr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    #[serde(default = "default_full")]
    full: Option<CronExpr>,
    #[serde(default = "default_incremental")]
    incremental: Option<CronExpr>,
    #[serde(default = "default_point_in_time")]
    point_in_time: Option<CronExpr>,
}

fn default_cron(text: &str) -> Option<CronExpr> {
    // The defaults are constants checked by the tests; never fails.
    CronExpr::parse(text).ok()
}

fn default_full() -> Option<CronExpr> {
    default_cron(DEFAULT_FULL)
}

fn default_incremental() -> Option<CronExpr> {
    default_cron(DEFAULT_INCREMENTAL)
}

fn default_point_in_time() -> Option<CronExpr> {
    default_cron(DEFAULT_POINT_IN_TIME)
}

impl TryFrom<ScheduleSpec> for BackupSchedule {
    type Error = Error;
    fn try_from(s: ScheduleSpec) -> Result<Self> {
        BackupSchedule::new(s.full, s.incremental, s.point_in_time)
    }
}

impl Default for BackupSchedule {
    /// Full daily at 02:00, incremental every 6 h, point-in-time every
    /// 15 min, all UTC.
    fn default() -> Self {
        BackupSchedule {
            full: default_full(),
            incremental: default_incremental(),
            point_in_time: default_point_in_time(),
        }
    }
}

impl BackupSchedule {
    /// A schedule from one optional expression per kind.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `schedule`) if every kind is off.
    pub fn new(
        full: Option<CronExpr>,
        incremental: Option<CronExpr>,
        point_in_time: Option<CronExpr>,
    ) -> Result<Self> {
        if full.is_none() && incremental.is_none() && point_in_time.is_none() {
            return Err(Error::invalid(
                "schedule",
                "every kind is off: set at least one of full, incremental, point_in_time",
            ));
        }
        Ok(BackupSchedule {
            full,
            incremental,
            point_in_time,
        })
    }

    /// Parses one expression per kind (`None` = off).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the kind and cron field
    /// (`schedule.full: …`), or as [`new`](Self::new).
    pub fn parse(
        full: Option<&str>,
        incremental: Option<&str>,
        point_in_time: Option<&str>,
    ) -> Result<Self> {
        let parse = |kind: ScheduleKind, text: Option<&str>| {
            text.map(|t| {
                CronExpr::parse(t).map_err(|e| match e {
                    Error::InvalidInput { field, rule } => {
                        Error::invalid(format!("schedule.{kind}.{field}"), rule)
                    }
                    other => other,
                })
            })
            .transpose()
        };
        Self::new(
            parse(ScheduleKind::Full, full)?,
            parse(ScheduleKind::Incremental, incremental)?,
            parse(ScheduleKind::PointInTime, point_in_time)?,
        )
    }

    /// The expression for `kind`, if that kind is on.
    pub fn cron(&self, kind: ScheduleKind) -> Option<&CronExpr> {
        match kind {
            ScheduleKind::Full => self.full.as_ref(),
            ScheduleKind::Incremental => self.incremental.as_ref(),
            ScheduleKind::PointInTime => self.point_in_time.as_ref(),
        }
    }

    /// The kinds due in the minute of `at`, biggest first.
    pub fn due_at(&self, at: Timestamp) -> Vec<ScheduleKind> {
        ScheduleKind::ALL
            .into_iter()
            .rev()
            .filter(|k| self.cron(*k).is_some_and(|c| c.matches(at)))
            .collect()
    }

    /// The first run strictly after `after`: the earliest minute any kind
    /// is due, run as the biggest kind due then. `None` only past year 9999.
    pub fn next_run(&self, after: Timestamp) -> Option<ScheduledRun> {
        let at = ScheduleKind::ALL
            .into_iter()
            .filter_map(|k| self.cron(k).and_then(|c| c.next_after(after)))
            .min()?;
        let due = self.due_at(at);
        let (&kind, superseded) = due.split_first()?;
        Some(ScheduledRun {
            at,
            kind,
            superseded: superseded.to_vec(),
        })
    }

    /// The runs after `after`, in order, without end (until year 9999).
    pub fn upcoming(&self, after: Timestamp) -> impl Iterator<Item = ScheduledRun> + '_ {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let run = self.next_run(cursor)?;
            cursor = run.at;
            Some(run)
        })
    }
}
