//! Named restore points: `pg_create_restore_point(name)` returns the LSN of
//! the record it wrote; recording that LSN in the repository (a tiny
//! snapshot of source [`RESTORE_POINT_SOURCE`]) lets a restore to the name
//! pick the base backup that lies *before* the point, and check before
//! anything starts that the archive reaches it. PostgreSQL itself only
//! finds a restore point by replaying WAL until it meets the name.

use std::io::Cursor;
use std::time::SystemTime;

use tracing::{Instrument, info, info_span};

use super::archive::TAG_SYSTEM;
use super::base::TAG_TIMELINE;
use super::labels::{parsed_tag, tag};
use super::wal::Lsn;
use crate::repo::{BackupKind, BackupOptions, MirrorSet, Snapshot, SnapshotId, StreamSource};
use atlas_core::{Error, Result};

/// The source name of every restore point's snapshot.
pub const RESTORE_POINT_SOURCE: &str = "pg-restore-point";
/// Tag prefix naming the restore point (`pg-restore-point:<name>`).
pub const TAG_RESTORE_POINT: &str = "pg-restore-point:";
/// Tag prefix of the restore point record's LSN (`pg-restore-point-lsn:<X/Y>`).
pub const TAG_RESTORE_POINT_LSN: &str = "pg-restore-point-lsn:";

/// PostgreSQL's limit on a restore point name (`MAXFNAMELEN` − 1 bytes).
pub const MAX_RESTORE_POINT_NAME: usize = 63;

/// A restore point as the server reported it when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestorePointInfo {
    /// The name given to `pg_create_restore_point`.
    pub name: String,
    /// The LSN `pg_create_restore_point` returned.
    pub lsn: Lsn,
    /// The timeline it was created on.
    pub timeline: u32,
    /// The database system identifier of the cluster.
    pub system_identifier: u64,
    /// When it was created.
    pub time: SystemTime,
}

impl RestorePointInfo {
    /// A restore point, with its name checked the way PostgreSQL checks it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty name or one longer than 63 bytes.
    pub fn new(
        name: impl Into<String>,
        lsn: Lsn,
        timeline: u32,
        system_identifier: u64,
        time: SystemTime,
    ) -> Result<Self> {
        let name = name.into();
        check_name(&name)?;
        Ok(RestorePointInfo {
            name,
            lsn,
            timeline,
            system_identifier,
            time,
        })
    }

    /// Reads a restore point back from its snapshot's tags.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the snapshot and the tag that is
    /// missing or malformed.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Self> {
        let timeline = parsed_tag(snapshot, TAG_TIMELINE)?;
        let system_identifier = parsed_tag(snapshot, TAG_SYSTEM)?;
        RestorePointInfo::new(
            tag(snapshot, TAG_RESTORE_POINT)?,
            tag(snapshot, TAG_RESTORE_POINT_LSN)?.parse()?,
            timeline,
            system_identifier,
            snapshot.time,
        )
    }

    #[cfg(test)]
    pub(super) fn tags_for_test(&self) -> Vec<String> {
        self.tags()
    }

    fn tags(&self) -> Vec<String> {
        vec![
            format!("{TAG_RESTORE_POINT}{}", self.name),
            format!("{TAG_RESTORE_POINT_LSN}{}", self.lsn),
            format!("{TAG_TIMELINE}{}", self.timeline),
            format!("{TAG_SYSTEM}{}", self.system_identifier),
        ]
    }
}

/// Checks `name` as `pg_create_restore_point` would, before the server is
/// asked.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty name or one longer than 63 bytes.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("restore point name", "is empty"));
    }
    if name.len() > MAX_RESTORE_POINT_NAME {
        return Err(Error::invalid(
            format!("restore point name {name:?}"),
            format!(
                "is {} bytes; PostgreSQL allows at most {MAX_RESTORE_POINT_NAME}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// A restore point recorded in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestorePoint {
    /// Its snapshot.
    pub snapshot: SnapshotId,
    /// What the server reported.
    pub info: RestorePointInfo,
}

/// Records `point` in every repository of `set` (under the set's mirror
/// policy), as a snapshot holding the point as JSON and labelled with its
/// name, LSN, timeline and system identifier. Returns the snapshot.
///
/// # Errors
/// Repository errors; nothing is recorded unless the snapshot commits.
pub async fn record_restore_point(set: &MirrorSet, point: &RestorePointInfo) -> Result<SnapshotId> {
    let span = info_span!("record_restore_point", name = %point.name, lsn = %point.lsn);
    async move {
        let time = jiff::Timestamp::try_from(point.time)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let body = serde_json::json!({
            "name": point.name,
            "lsn": point.lsn.to_string(),
            "timeline": point.timeline,
            "system_identifier": point.system_identifier.to_string(),
            "time": time,
        })
        .to_string()
        .into_bytes();
        let size = body.len() as u64;
        let source = StreamSource::from_async_read("restore-point.json", Cursor::new(body))
            .with_name(RESTORE_POINT_SOURCE)
            .with_size_hint(size);
        let mut options = BackupOptions::default().with_kind(BackupKind::PointInTime);
        options.tags = point.tags();
        let report = set.backup(source, options).await?;
        info!(snapshot = %report.snapshot.id.short(), "restore point recorded");
        Ok(report.snapshot.id)
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::catalog::tests::snapshot;

    #[test]
    fn names_are_checked_like_postgresql_does() {
        assert!(check_name("before-upgrade").is_ok());
        assert!(check_name("").unwrap_err().to_string().contains("is empty"));
        let long = "x".repeat(64);
        let e = check_name(&long).unwrap_err().to_string();
        assert!(e.contains("64 bytes") && e.contains("63"), "{e}");
        assert!(check_name(&"ü".repeat(31)).is_ok(), "62 bytes");
    }

    #[test]
    fn a_point_round_trips_through_its_tags() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let p = RestorePointInfo::new("a:b, c ✓", Lsn(0x0300_0028), 2, 42, t).unwrap();
        let snap = snapshot(RESTORE_POINT_SOURCE, 1_000, p.tags());
        assert_eq!(RestorePointInfo::from_snapshot(&snap).unwrap(), p);
        let mut broken = snap.clone();
        broken
            .tags
            .retain(|t| !t.starts_with(TAG_RESTORE_POINT_LSN));
        let e = RestorePointInfo::from_snapshot(&broken)
            .unwrap_err()
            .to_string();
        assert!(e.contains(TAG_RESTORE_POINT_LSN), "{e}");
    }
}
