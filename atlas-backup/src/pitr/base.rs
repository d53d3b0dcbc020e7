//! Base backups: a `pg_basebackup` tar stream stored as one file of a
//! snapshot, labelled with where in the WAL it starts and stops.

use std::fmt;
use std::time::SystemTime;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::archive::TAG_SYSTEM;
use super::labels::{malformed, parsed_tag, tag};
use super::wal::Lsn;
use crate::repo::{BackupSource, Snapshot, SourceCompletion, SourceInput};
use atlas_core::backup::ByteStream;
use atlas_core::{Error, Result};

/// The source name of every base backup's snapshot.
pub const BASE_SOURCE: &str = "pg-base";
/// The file holding the tar stream in a base backup's snapshot.
pub const BASE_FILE: &str = "base.tar";
/// Tag prefix of the timeline a base backup started on.
pub const TAG_TIMELINE: &str = "pg-timeline:";
/// Tag prefix of a base backup's start LSN.
pub const TAG_START_LSN: &str = "pg-start-lsn:";
/// Tag prefix of a base backup's stop LSN (its consistent point).
pub const TAG_STOP_LSN: &str = "pg-stop-lsn:";
/// Tag prefix of the moment the base backup was complete.
pub const TAG_STOP_TIME: &str = "pg-stop-time:";

/// Where a base backup lies in the cluster's history: recovery from it
/// must replay WAL from `start_lsn` and is consistent from `stop_lsn` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseBackupInfo {
    /// The cluster's database system identifier.
    pub system_identifier: u64,
    /// The timeline the backup was taken on.
    pub timeline: u32,
    /// Where WAL replay starts (the backup's checkpoint redo point).
    pub start_lsn: Lsn,
    /// The consistent point: a restore cannot stop before it.
    pub stop_lsn: Lsn,
    /// When the backup was complete (taken once `pg_basebackup` ended, so
    /// never earlier than the server's own stop time).
    pub stop_time: SystemTime,
}

impl BaseBackupInfo {
    /// A label from its parts.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `stop_lsn` lies before `start_lsn`.
    pub fn new(
        system_identifier: u64,
        timeline: u32,
        start_lsn: Lsn,
        stop_lsn: Lsn,
        stop_time: SystemTime,
    ) -> Result<Self> {
        if stop_lsn < start_lsn {
            return Err(Error::invalid(
                "stop_lsn",
                format!("{stop_lsn} lies before the start LSN {start_lsn}"),
            ));
        }
        Ok(BaseBackupInfo {
            system_identifier,
            timeline,
            start_lsn,
            stop_lsn,
            stop_time,
        })
    }

    /// The manifest tags that record it.
    pub fn tags(&self) -> Vec<String> {
        let stop = humantime::format_rfc3339_nanos(self.stop_time);
        vec![
            BASE_SOURCE.to_owned(),
            format!("{TAG_SYSTEM}{}", self.system_identifier),
            format!("{TAG_TIMELINE}{}", self.timeline),
            format!("{TAG_START_LSN}{}", self.start_lsn),
            format!("{TAG_STOP_LSN}{}", self.stop_lsn),
            format!("{TAG_STOP_TIME}{stop}"),
        ]
    }

    /// Reads the label back from a base backup's snapshot.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the snapshot and the tag that is
    /// missing or malformed.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Self> {
        let system_identifier = parsed_tag(snapshot, TAG_SYSTEM)?;
        let timeline = parsed_tag(snapshot, TAG_TIMELINE)?;
        let stop_time = tag(snapshot, TAG_STOP_TIME)?;
        let stop_time = humantime::parse_rfc3339(stop_time)
            .map_err(|_| malformed(snapshot, TAG_STOP_TIME, stop_time))?;
        BaseBackupInfo::new(
            system_identifier,
            timeline,
            tag(snapshot, TAG_START_LSN)?.parse()?,
            tag(snapshot, TAG_STOP_LSN)?.parse()?,
            stop_time,
        )
    }
}

/// A base backup as a [`BackupSource`]: the tar stream is cut into chunks
/// as it arrives (nothing is staged on local disk), and `finished` — which
/// waits for the producer to end and reports where the backup lies — is
/// awaited before the manifest is written, so a producer that fails after
/// its last byte leaves no snapshot, and the label lands in the manifest's
/// tags.
pub struct BaseBackupSource {
    body: Option<ByteStream>,
    finished: Option<BoxFuture<'static, Result<BaseBackupInfo>>>,
}

impl fmt::Debug for BaseBackupSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaseBackupSource").finish_non_exhaustive()
    }
}

impl BaseBackupSource {
    /// The tar stream `body`, labelled by what `finished` yields.
    pub fn new(body: ByteStream, finished: BoxFuture<'static, Result<BaseBackupInfo>>) -> Self {
        BaseBackupSource {
            body: Some(body),
            finished: Some(finished),
        }
    }
}

impl BackupSource for BaseBackupSource {
    fn source_name(&self) -> String {
        BASE_SOURCE.to_owned()
    }
    fn paths(&self) -> Vec<String> {
        vec![BASE_FILE.to_owned()]
    }
    fn completion(&mut self) -> Option<SourceCompletion> {
        let finished = self.finished.take()?;
        Some(finished.map(|r| r.map(|info| info.tags())).boxed())
    }
    fn into_input(mut self: Box<Self>) -> SourceInput {
        let body = self
            .body
            .take()
            .unwrap_or_else(|| futures::stream::empty().boxed());
        SourceInput::Stream {
            file_name: BASE_FILE.to_owned(),
            mode: 0o600,
            size_hint: None,
            body,
        }
    }
}

use futures::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn labels_round_trip_through_tags() {
        let info = BaseBackupInfo::new(
            7_312_345_678_901_234_567,
            2,
            Lsn(0x2000028),
            Lsn(0x2000100),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_900_000_123),
        )
        .unwrap();
        let tags = info.tags();
        assert!(
            tags.contains(&"pg-stop-lsn:0/2000100".to_owned()),
            "{tags:?}"
        );
        let mut snap: Snapshot = serde_json::from_value(serde_json::json!({
            "id": "00".repeat(32), "time": "2026-01-01T00:00:00Z", "source": BASE_SOURCE, "paths": [BASE_FILE],
            "kind": "point-in-time", "host": "h", "tags": tags, "parent": null, "tree": "00".repeat(32),
            "totals": {"files": 1, "dirs": 1, "bytes": 1, "new_bytes": 1, "chunks": 1, "new_chunks": 1}
        }))
        .unwrap();
        assert_eq!(BaseBackupInfo::from_snapshot(&snap).unwrap(), info);
        snap.tags.retain(|t| !t.starts_with(TAG_STOP_LSN));
        let e = BaseBackupInfo::from_snapshot(&snap).unwrap_err();
        assert!(e.to_string().contains(TAG_STOP_LSN), "{e}");
        assert!(BaseBackupInfo::new(1, 1, Lsn(5), Lsn(4), SystemTime::UNIX_EPOCH).is_err());
    }
}
