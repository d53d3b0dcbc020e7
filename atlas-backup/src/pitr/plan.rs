//! Restoring to a point: which base backup to start from, whether the
//! archive can reach the target at all (checked before anything starts),
//! and the recovery settings PostgreSQL needs.

use std::fmt;
use std::time::SystemTime;

use tracing::{info, warn};

use super::catalog::{ArchivedWal, BaseBackup, PitrCatalog};
use super::restore_point::RestorePoint;
use super::wal::{Lsn, WalFileKind, segment_name};
use atlas_core::{Error, Result};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryTarget {
    /// The end of the archive, following timelines to the newest.
    Latest,
    /// Just before the first transaction that committed after this moment.
    Time(SystemTime),
    /// Just after the WAL record at this LSN.
    Lsn(Lsn),
    /// A restore point made with `pg_create_restore_point(name)`. When the
    /// point was recorded in the repository ([`record_restore_point`]:
    /// `atlas_backup pg-restore-point`), the newest base backup before it
    /// is restored and the archive is checked to reach it; a point made
    /// by other means must lie after the newest base backup, which is then
    /// the one restored (PostgreSQL refuses to start when it never meets
    /// the name).
    ///
    /// [`record_restore_point`]: super::record_restore_point
    Name(String),
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// `t` as PostgreSQL reads a `timestamptz` (UTC, microseconds).
fn pg_time(t: SystemTime) -> Result<String> {
    let ts = jiff::Timestamp::try_from(t)
        .map_err(|e| Error::invalid("target-time", format!("out of range: {e}")))?;
    Ok(ts.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest"),
            RecoveryTarget::Time(t) => write!(f, "time {}", rfc3339(*t)),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// A restore, validated against the archive: the base backup to restore
/// and the target to recover to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestorePlan {
    /// The base backup to restore.
    pub base: BaseBackup,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// The last segment of the unbroken run of archived WAL after the base
    /// backup (`None` when the backup's own WAL is all there is).
    pub last_segment: Option<ArchivedWal>,
    /// The first LSN the archive does not reach.
    pub archive_end: Lsn,
}

/// The base backup to restore for the restore point `name`, and the
/// recorded point itself (the newest recorded under that name).
/// PostgreSQL stops at the first record of that name it replays, so the
/// base backup must start after any earlier point of the same name.
fn base_for_name<'a>(
    catalog: &'a PitrCatalog,
    name: &str,
    newest: &'a BaseBackup,
) -> Result<(Option<&'a RestorePoint>, &'a BaseBackup)> {
    let mut same: Vec<&RestorePoint> = catalog
        .restore_points
        .iter()
        .filter(|p| p.info.name == name)
        .collect();
    let Some(point) = same.pop() else {
        warn!(
            name,
            "restore point not recorded in the repository; restoring the newest base backup, which must lie before it"
        );
        return Ok((None, newest));
    };
    let earlier = same.last().map(|p| p.info.lsn);
    let base = catalog.base_backups.iter().rev().find(|b| {
        b.info.stop_lsn <= point.info.lsn && earlier.is_none_or(|e| b.info.start_lsn > e)
    });
    match base {
        Some(b) => Ok((Some(point), b)),
        None => {
            let why = match earlier {
                Some(e) => format!(
                    "was created twice ({e} and {}); no base backup lies between them, and recovery stops at the first",
                    point.info.lsn
                ),
                None => format!(
                    "({}) is before the oldest base backup's consistent point ({})",
                    point.info.lsn, catalog.base_backups[0].info.stop_lsn
                ),
            };
            Err(Error::invalid(
                "target-name",
                format!("restore point {name:?} {why}"),
            ))
        }
    }
}

/// Single-quoted for postgresql.conf (quotes doubled).
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl RestorePlan {
    /// Picks the newest base backup that ends before `target` and checks
    /// that the archive reaches it.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the repository has no base backup;
    /// [`Error::InvalidInput`] naming the target when it lies before the
    /// oldest base backup's consistent point, or after the newest archived
    /// WAL (the end of the unbroken run of segments after the base backup).
    pub fn new(catalog: &PitrCatalog, target: RecoveryTarget) -> Result<Self> {
        let newest = catalog
            .base_backups
            .last()
            .ok_or_else(|| Error::not_found("base backup in the repository"))?;
        let mut point = None;
        let base = match &target {
            RecoveryTarget::Latest => newest,
            RecoveryTarget::Name(n) => {
                let (p, b) = base_for_name(catalog, n, newest)?;
                point = p;
                b
            }
            RecoveryTarget::Time(t) => catalog.base_backups.iter().rev().find(|b| b.info.stop_time <= *t).ok_or_else(|| {
                let oldest = &catalog.base_backups[0];
                Error::invalid(
                    "target-time",
                    format!(
                        "{} is before the oldest base backup's consistent point ({}, snapshot {})",
                        rfc3339(*t),
                        rfc3339(oldest.info.stop_time),
                        oldest.snapshot.short()
                    ),
                )
            })?,
            RecoveryTarget::Lsn(l) => catalog.base_backups.iter().rev().find(|b| b.info.stop_lsn <= *l).ok_or_else(|| {
                let oldest = &catalog.base_backups[0];
                Error::invalid(
                    "target-lsn",
                    format!("{l} is before the oldest base backup's consistent point ({}, snapshot {})", oldest.info.stop_lsn, oldest.snapshot.short()),
                )
            })?,
        };
        let size = catalog.segment_size();
        // The unbroken run of segments from the one holding the stop LSN.
        let present = catalog.segment_numbers_from(base.info.timeline);
        let mut segno = base.info.stop_lsn.0 / size;
        let mut last = None;
        while present.contains(&segno) {
            last = Some(segno);
            segno += 1;
        }
        let archive_end = Lsn(last.map_or(base.info.stop_lsn.0, |n| (n + 1) * size));
        let last_segment = last.and_then(|n| {
            catalog
                .wal
                .iter()
                .filter(|w| {
                    w.name.kind() == WalFileKind::Segment && w.name.segment_number(size) == Some(n)
                })
                .max_by_key(|w| w.name.timeline())
                .cloned()
        });
        let newest_time = last_segment
            .as_ref()
            .map_or(base.info.stop_time, |w| w.archived_at);
        match &target {
            RecoveryTarget::Time(t) if *t > newest_time => {
                return Err(Error::invalid(
                    "target-time",
                    format!(
                        "{} is after the newest archived WAL ({}, archived {}); the archive cannot reach it",
                        rfc3339(*t),
                        last_segment.as_ref().map_or_else(
                            || format!(
                                "the base backup's own, segment {}",
                                segment_name(base.info.timeline, base.info.stop_lsn, size)
                            ),
                            |w| w.name.to_string()
                        ),
                        rfc3339(newest_time)
                    ),
                ));
            }
            RecoveryTarget::Name(n) if point.is_some_and(|p| p.info.lsn > archive_end) => {
                let lsn = point.map(|p| p.info.lsn).unwrap_or_default();
                return Err(Error::invalid(
                    "target-name",
                    format!(
                        "restore point {n:?} ({lsn}) is after the newest archived WAL, which ends at {archive_end}; switch the WAL segment (pg-switch-wal) and let it be archived"
                    ),
                ));
            }
            RecoveryTarget::Lsn(l) if *l >= archive_end => {
                return Err(Error::invalid(
                    "target-lsn",
                    format!(
                        "{l} is after the newest archived WAL, which ends at {archive_end}; the archive cannot reach it"
                    ),
                ));
            }
            _ => {}
        }
        info!(base = %base.snapshot.short(), %target, %archive_end, "restore planned");
        Ok(RestorePlan {
            base: base.clone(),
            target,
            last_segment,
            archive_end,
        })
    }

    /// The settings to append to the restored cluster's
    /// `postgresql.auto.conf` (with `recovery.signal` beside it): fetch WAL
    /// with `restore_command`, stop at the target and promote, on the
    /// newest timeline. Archiving is switched off unless `keep_archiving`,
    /// so that a trial restore does not push a new timeline into the
    /// archive it reads.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty `restore_command`, or a target
    /// time outside PostgreSQL's range.
    pub fn recovery_settings(&self, restore_command: &str, keep_archiving: bool) -> Result<String> {
        if restore_command.trim().is_empty() {
            return Err(Error::invalid("restore_command", "must not be empty"));
        }
        let mut lines = vec![
            "# Written by Atlas for a point-in-time restore.".to_owned(),
            format!("restore_command = {}", conf_quote(restore_command)),
            "recovery_target_timeline = 'latest'".to_owned(),
        ];
        match &self.target {
            RecoveryTarget::Latest => {}
            RecoveryTarget::Time(t) => lines.push(format!(
                "recovery_target_time = {}",
                conf_quote(&pg_time(*t)?)
            )),
            RecoveryTarget::Lsn(l) => lines.push(format!(
                "recovery_target_lsn = {}",
                conf_quote(&l.to_string())
            )),
            RecoveryTarget::Name(n) => {
                lines.push(format!("recovery_target_name = {}", conf_quote(n)))
            }
        }
        if self.target != RecoveryTarget::Latest {
            lines.push("recovery_target_action = 'promote'".to_owned());
        }
        if !keep_archiving {
            lines.push("archive_mode = 'off'".to_owned());
        }
        Ok(lines.join("\n") + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::catalog::tests::{base, wal};
    use crate::pitr::restore_point::{RESTORE_POINT_SOURCE, RestorePointInfo};
    use crate::pitr::wal::DEFAULT_SEGMENT_SIZE as SEG;
    use crate::repo::Snapshot;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn catalog() -> PitrCatalog {
        PitrCatalog::from_snapshots(&catalog_snapshots())
    }

    fn catalog_snapshots() -> Vec<Snapshot> {
        vec![
            base(100, 2 * SEG + 0x28, 2 * SEG + 0x100, 110),
            wal("000000010000000000000002", 120),
            wal("000000010000000000000003", 200),
            base(300, 4 * SEG + 0x28, 4 * SEG + 0x100, 310),
            wal("000000010000000000000004", 320),
            wal("000000010000000000000005", 400),
            // A gap: segment 6 is missing, so 7 is unreachable.
            wal("000000010000000000000007", 500),
        ]
    }

    #[test]
    fn the_newest_base_backup_ending_before_the_target_is_chosen() {
        let c = catalog();
        let p = RestorePlan::new(&c, RecoveryTarget::Time(at(250))).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[0].snapshot);
        let p = RestorePlan::new(&c, RecoveryTarget::Time(at(350))).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[1].snapshot);
        assert_eq!(p.archive_end, Lsn(6 * SEG));
        assert_eq!(
            p.last_segment.unwrap().name.as_str(),
            "000000010000000000000005"
        );
        let p = RestorePlan::new(&c, RecoveryTarget::Lsn(Lsn(3 * SEG))).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[0].snapshot);
        let p = RestorePlan::new(&c, RecoveryTarget::Latest).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[1].snapshot);
    }

    #[test]
    fn unreachable_targets_are_refused_before_anything_starts() {
        let c = catalog();
        let e = RestorePlan::new(&c, RecoveryTarget::Time(at(105))).unwrap_err();
        assert!(
            e.to_string().contains("target-time")
                && e.to_string().contains("before the oldest base backup"),
            "{e}"
        );
        // Past segment 5 (the gap ends the archive), even though 7 exists.
        let e = RestorePlan::new(&c, RecoveryTarget::Time(at(450))).unwrap_err();
        assert!(
            e.to_string().contains("after the newest archived WAL")
                && e.to_string().contains("000000010000000000000005"),
            "{e}"
        );
        let e = RestorePlan::new(&c, RecoveryTarget::Lsn(Lsn(6 * SEG))).unwrap_err();
        assert!(e.to_string().contains("target-lsn"), "{e}");
        let e = RestorePlan::new(&c, RecoveryTarget::Lsn(Lsn(2 * SEG))).unwrap_err();
        assert!(
            e.to_string().contains("before the oldest base backup"),
            "{e}"
        );
        let e = RestorePlan::new(&PitrCatalog::default(), RecoveryTarget::Latest).unwrap_err();
        assert_eq!(e.kind(), atlas_core::ErrorKind::NotFound);
    }

    fn point(name: &str, lsn: u64, secs: u64) -> Snapshot {
        let p = RestorePointInfo::new(name, Lsn(lsn), 1, 42, at(secs)).unwrap();
        crate::pitr::catalog::tests::snapshot(RESTORE_POINT_SOURCE, secs, p.tags_for_test())
    }

    #[test]
    fn a_recorded_restore_point_restores_the_base_backup_before_it() {
        let mut snaps = catalog_snapshots();
        // Between the two base backups: the newest backup would never meet it.
        snaps.push(point("before-upgrade", 3 * SEG + 0x500, 250));
        snaps.push(point("late", 5 * SEG + 0x10, 390));
        let c = PitrCatalog::from_snapshots(&snaps);
        let p = RestorePlan::new(&c, RecoveryTarget::Name("before-upgrade".into())).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[0].snapshot);
        let p = RestorePlan::new(&c, RecoveryTarget::Name("late".into())).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[1].snapshot);
        // Not recorded: the newest base backup, as before.
        let p = RestorePlan::new(&c, RecoveryTarget::Name("made-by-hand".into())).unwrap();
        assert_eq!(p.base.snapshot, c.base_backups[1].snapshot);
    }

    #[test]
    fn unreachable_or_ambiguous_restore_points_are_refused() {
        let mut snaps = catalog_snapshots();
        // Past the gap after segment 5.
        snaps.push(point("too-late", 7 * SEG + 0x10, 510));
        // Before the oldest base backup's consistent point.
        snaps.push(point("too-early", 2 * SEG + 0x50, 105));
        // Twice, with no base backup starting between the two.
        snaps.push(point("twice", 4 * SEG + 0x200, 330));
        snaps.push(point("twice", 5 * SEG + 0x200, 380));
        let c = PitrCatalog::from_snapshots(&snaps);
        let e = RestorePlan::new(&c, RecoveryTarget::Name("too-late".into())).unwrap_err();
        assert!(
            e.to_string().contains("after the newest archived WAL"),
            "{e}"
        );
        let e = RestorePlan::new(&c, RecoveryTarget::Name("too-early".into())).unwrap_err();
        assert!(
            e.to_string().contains("before the oldest base backup"),
            "{e}"
        );
        let e = RestorePlan::new(&c, RecoveryTarget::Name("twice".into())).unwrap_err();
        assert!(e.to_string().contains("created twice"), "{e}");
        assert_eq!(e.kind(), atlas_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn recovery_settings_name_the_target_and_quote_the_command() {
        let c = catalog();
        let p = RestorePlan::new(
            &c,
            RecoveryTarget::Time(at(350) + Duration::from_micros(250)),
        )
        .unwrap();
        let s = p
            .recovery_settings("atlas_backup --repo 'file:///r' wal-fetch %f %p", false)
            .unwrap();
        assert!(
            s.contains("restore_command = 'atlas_backup --repo ''file:///r'' wal-fetch %f %p'"),
            "{s}"
        );
        assert!(
            s.contains("recovery_target_time = '1970-01-01 00:05:50.000250+00'"),
            "{s}"
        );
        assert!(s.contains("recovery_target_action = 'promote'"), "{s}");
        assert!(s.contains("archive_mode = 'off'"), "{s}");
        let latest = RestorePlan::new(&c, RecoveryTarget::Latest)
            .unwrap()
            .recovery_settings("x %f %p", true)
            .unwrap();
        assert!(
            !latest.contains("recovery_target_action") && !latest.contains("archive_mode"),
            "{latest}"
        );
        assert!(p.recovery_settings(" ", false).is_err());
    }
}
