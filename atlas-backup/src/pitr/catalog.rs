//! What the repository holds for point-in-time recovery: the base backups
//! and the archived WAL files, read from the snapshot manifests, and which
//! WAL a set of kept base backups still needs.

use std::collections::BTreeSet;
use std::time::SystemTime;

use tracing::{info, warn};

use super::archive::{TAG_SYSTEM, TAG_WAL_FILE, TAG_WAL_SEGSIZE, WAL_SOURCE, unpoint};
use super::base::{BASE_SOURCE, BaseBackupInfo};
use super::restore_point::{RESTORE_POINT_SOURCE, RestorePoint, RestorePointInfo};
use super::wal::{DEFAULT_SEGMENT_SIZE, WalFileKind, WalFileName};
use crate::repo::{Repository, Snapshot, SnapshotId};
use atlas_core::Result;

/// A base backup in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseBackup {
    /// Its snapshot.
    pub snapshot: SnapshotId,
    /// When it started.
    pub time: SystemTime,
    /// Where it lies in the WAL.
    pub info: BaseBackupInfo,
}

/// An archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchivedWal {
    /// Its snapshot.
    pub snapshot: SnapshotId,
    /// Its name.
    pub name: WalFileName,
    /// When it was archived: every commit it records happened before.
    pub archived_at: SystemTime,
    /// The system identifier its header names (segments only).
    pub system_identifier: Option<u64>,
    /// The segment size its header names (segments only).
    pub segment_size: Option<u64>,
}

/// The base backups (oldest first) and archived WAL files (by name) of a
/// repository.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PitrCatalog {
    /// Base backups, oldest first.
    pub base_backups: Vec<BaseBackup>,
    /// Archived WAL files sorted by name, one per name (the newest
    /// snapshot when a file was archived twice).
    pub wal: Vec<ArchivedWal>,
    /// Recorded restore points, by LSN.
    pub restore_points: Vec<RestorePoint>,
}

impl PitrCatalog {
    /// Reads the catalog from the repository's snapshots.
    ///
    /// # Errors
    /// Listing errors of the repository.
    pub async fn load(repo: &Repository) -> Result<Self> {
        let catalog = Self::from_snapshots(&repo.snapshots().await?);
        info!(
            base_backups = catalog.base_backups.len(),
            wal_files = catalog.wal.len(),
            "read the recovery catalog"
        );
        Ok(catalog)
    }

    /// The catalog of `snapshots`; manifests whose labels do not parse are
    /// left out with a warning.
    pub fn from_snapshots(snapshots: &[Snapshot]) -> Self {
        let mut base_backups = Vec::new();
        let mut wal: Vec<ArchivedWal> = Vec::new();
        let mut restore_points = Vec::new();
        for s in snapshots {
            if s.source == BASE_SOURCE {
                match BaseBackupInfo::from_snapshot(s) {
                    Ok(info) => base_backups.push(BaseBackup {
                        snapshot: s.id,
                        time: s.time,
                        info,
                    }),
                    Err(e) => {
                        warn!(snapshot = %s.id.short(), error = %e, "not a usable base backup")
                    }
                }
            } else if s.source == RESTORE_POINT_SOURCE {
                match RestorePointInfo::from_snapshot(s) {
                    Ok(info) => restore_points.push(RestorePoint {
                        snapshot: s.id,
                        info,
                    }),
                    Err(e) => {
                        warn!(snapshot = %s.id.short(), error = %e, "not a usable restore point")
                    }
                }
            } else if s.source == WAL_SOURCE {
                let tag = |p: &str| s.tags.iter().find_map(|t| t.strip_prefix(p));
                let Some(name) = tag(TAG_WAL_FILE).and_then(|n| WalFileName::new(n).ok()) else {
                    warn!(snapshot = %s.id.short(), "archived WAL without a valid file name tag");
                    continue;
                };
                wal.push(ArchivedWal {
                    snapshot: s.id,
                    name,
                    archived_at: s.time,
                    system_identifier: tag(TAG_SYSTEM).and_then(|v| v.parse().ok()),
                    segment_size: tag(TAG_WAL_SEGSIZE).and_then(|v| v.parse().ok()),
                });
            }
        }
        base_backups.sort_by_key(|b| (b.info.stop_lsn, b.time));
        wal.sort_by(|a, b| a.name.cmp(&b.name).then(b.archived_at.cmp(&a.archived_at)));
        wal.dedup_by(|later, first| later.name == first.name);
        restore_points.sort_by_key(|p: &RestorePoint| (p.info.lsn, p.info.time));
        PitrCatalog {
            base_backups,
            wal,
            restore_points,
        }
    }

    /// The segment size of the archive (that of its segments; the default
    /// when none is archived yet).
    pub fn segment_size(&self) -> u64 {
        self.wal
            .iter()
            .find_map(|w| w.segment_size)
            .unwrap_or(DEFAULT_SEGMENT_SIZE)
    }

    /// The archived WAL files that no base backup of `kept` needs: segments
    /// (and backup history files) before the oldest kept backup's start
    /// segment. Timeline history files are always kept (they are tiny and
    /// recovery reads every one to follow timelines). With no kept base
    /// backup nothing is released: a base backup may be running, whose
    /// WAL is already arriving.
    pub fn wal_released_by(&self, kept: &[SnapshotId]) -> Vec<&ArchivedWal> {
        let size = self.segment_size();
        let oldest_needed = self
            .base_backups
            .iter()
            .filter(|b| kept.contains(&b.snapshot))
            .map(|b| b.info.start_lsn.0 / size)
            .min();
        let Some(oldest_needed) = oldest_needed else {
            return Vec::new();
        };
        self.wal
            .iter()
            .filter(|w| w.name.kind() != WalFileKind::History)
            .filter(|w| {
                w.name
                    .segment_number(size)
                    .is_some_and(|n| n < oldest_needed)
            })
            .collect()
    }

    /// The restore points no base backup of `kept` can reach: those before
    /// the oldest kept backup's consistent point. With no kept base backup
    /// nothing is released.
    pub fn restore_points_released_by(&self, kept: &[SnapshotId]) -> Vec<&RestorePoint> {
        let oldest = self
            .base_backups
            .iter()
            .filter(|b| kept.contains(&b.snapshot))
            .map(|b| b.info.stop_lsn)
            .min();
        let Some(oldest) = oldest else {
            return Vec::new();
        };
        self.restore_points
            .iter()
            .filter(|p| p.info.lsn < oldest)
            .collect()
    }

    /// Forgets (removes the manifests of) the archived WAL that no base
    /// backup still in `repo` needs, and the restore points no base backup
    /// can reach any more, after retention has forgotten base
    /// backups; `prune` then frees the space. Returns the files forgotten
    /// (or, with `dry_run`, those that would be).
    ///
    /// # Errors
    /// Listing and deletion errors of the repository.
    pub async fn forget_released_wal(repo: &Repository, dry_run: bool) -> Result<Vec<WalFileName>> {
        let catalog = Self::load(repo).await?;
        let kept: Vec<SnapshotId> = catalog.base_backups.iter().map(|b| b.snapshot).collect();
        let released = catalog.wal_released_by(&kept);
        let names: Vec<WalFileName> = released.iter().map(|w| w.name.clone()).collect();
        let points = catalog.restore_points_released_by(&kept);
        if !dry_run && !points.is_empty() {
            let ids: Vec<String> = points.iter().map(|p| p.snapshot.to_hex()).collect();
            repo.forget(&ids).await?;
            info!(
                restore_points = points.len(),
                "forgot restore points before the oldest base backup"
            );
        }
        if !dry_run && !released.is_empty() {
            let ids: Vec<String> = released.iter().map(|w| w.snapshot.to_hex()).collect();
            repo.forget(&ids).await?;
            // Lookups ignore pointers to forgotten snapshots; removing them
            // keeps the pointer folders from growing with every segment.
            for w in &released {
                unpoint(repo, &w.name, &w.snapshot).await?;
            }
        }
        info!(released = names.len(), dry_run, "WAL no base backup needs");
        Ok(names)
    }

    /// The archived segment numbers of timelines `timeline` and later.
    pub(super) fn segment_numbers_from(&self, timeline: u32) -> BTreeSet<u64> {
        let size = self.segment_size();
        self.wal
            .iter()
            .filter(|w| w.name.kind() == WalFileKind::Segment && w.name.timeline() >= timeline)
            .filter_map(|w| w.name.segment_number(size))
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::pitr::wal::Lsn;
    use std::time::Duration;

    pub(in crate::pitr) fn snapshot(source: &str, secs: u64, tags: Vec<String>) -> Snapshot {
        let time = jiff::Timestamp::from_second(secs as i64)
            .unwrap()
            .to_string();
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&secs.to_be_bytes());
        id[8] = source.len() as u8;
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::from_value(serde_json::json!({
            "id": hex, "time": time, "source": source, "paths": ["x"],
            "kind": "point-in-time", "host": "h", "tags": tags, "parent": null, "tree": "00".repeat(32),
            "totals": {"files": 1, "dirs": 1, "bytes": 1, "new_bytes": 1, "chunks": 1, "new_chunks": 1}
        }))
        .unwrap()
    }

    pub(in crate::pitr) fn base(secs: u64, start: u64, stop: u64, stop_secs: u64) -> Snapshot {
        let info = BaseBackupInfo::new(
            42,
            1,
            Lsn(start),
            Lsn(stop),
            SystemTime::UNIX_EPOCH + Duration::from_secs(stop_secs),
        )
        .unwrap();
        snapshot(BASE_SOURCE, secs, info.tags())
    }

    pub(in crate::pitr) fn wal(name: &str, secs: u64) -> Snapshot {
        snapshot(
            WAL_SOURCE,
            secs,
            vec![
                format!("{TAG_WAL_FILE}{name}"),
                format!("{TAG_SYSTEM}42"),
                format!("{TAG_WAL_SEGSIZE}{DEFAULT_SEGMENT_SIZE}"),
            ],
        )
    }

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn forgetting_a_base_backup_releases_only_the_wal_no_kept_backup_needs() {
        let snaps = vec![
            base(100, 2 * SEG + 0x28, 2 * SEG + 0x100, 110),
            wal("000000010000000000000001", 50),
            wal("000000010000000000000002", 120),
            wal("000000010000000000000002.00000028.backup", 121),
            wal("000000010000000000000003", 200),
            base(300, 4 * SEG + 0x28, 4 * SEG + 0x100, 310),
            wal("000000010000000000000004", 320),
            wal("00000002.history", 400),
            wal("000000020000000000000005", 410),
        ];
        let c = PitrCatalog::from_snapshots(&snaps);
        assert_eq!(c.base_backups.len(), 2);
        assert_eq!(c.wal.len(), 7);
        let (old, new) = (c.base_backups[0].snapshot, c.base_backups[1].snapshot);
        let names = |kept: &[SnapshotId]| -> Vec<String> {
            c.wal_released_by(kept)
                .iter()
                .map(|w| w.name.to_string())
                .collect()
        };
        // Both kept: only what precedes the older one goes.
        assert_eq!(names(&[old, new]), ["000000010000000000000001"]);
        // The older forgotten: its segments and backup history go, the
        // history file and everything the newer one needs stay.
        assert_eq!(
            names(&[new]),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003"
            ]
        );
        // Nothing kept: nothing released.
        assert!(names(&[]).is_empty());
    }

    #[test]
    fn restore_points_before_the_oldest_kept_backup_are_released() {
        let point = |name: &str, lsn: u64, secs: u64| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let p = RestorePointInfo::new(name, Lsn(lsn), 1, 42, at).unwrap();
            snapshot(RESTORE_POINT_SOURCE, secs, p.tags_for_test())
        };
        let c = PitrCatalog::from_snapshots(&[
            base(100, 2 * SEG + 0x28, 2 * SEG + 0x100, 110),
            point("b", 3 * SEG, 250),
            point("a", 2 * SEG + 0x50, 105),
            base(300, 4 * SEG + 0x28, 4 * SEG + 0x100, 310),
            point("c", 4 * SEG + 0x200, 330),
        ]);
        let names: Vec<&str> = c
            .restore_points
            .iter()
            .map(|p| p.info.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"], "sorted by LSN");
        let (old, new) = (c.base_backups[0].snapshot, c.base_backups[1].snapshot);
        let released = |kept: &[SnapshotId]| -> Vec<String> {
            c.restore_points_released_by(kept)
                .iter()
                .map(|p| p.info.name.clone())
                .collect()
        };
        // "a" precedes even the oldest backup's consistent point.
        assert_eq!(released(&[old, new]), ["a"]);
        assert_eq!(released(&[new]), ["a", "b"]);
        assert!(released(&[]).is_empty());
    }

    #[test]
    fn a_file_archived_twice_is_listed_once_and_bad_labels_are_skipped() {
        let mut broken = base(500, 0x28, 0x100, 510);
        broken.tags.retain(|t| !t.starts_with("pg-start-lsn:"));
        let c = PitrCatalog::from_snapshots(&[
            wal("000000010000000000000001", 50),
            wal("000000010000000000000001", 60),
            broken,
            snapshot(WAL_SOURCE, 70, vec!["pg-wal-file:../x".into()]),
        ]);
        assert!(c.base_backups.is_empty());
        assert_eq!(c.wal.len(), 1);
        assert_eq!(
            c.wal[0].archived_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(60)
        );
    }
}
