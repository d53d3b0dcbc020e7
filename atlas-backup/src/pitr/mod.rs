//! PostgreSQL point-in-time recovery through the backup repository.
//!
//! - **Base backups**: a `pg_basebackup` tar stream becomes a snapshot
//!   (source [`BASE_SOURCE`], one file [`BASE_FILE`]) through
//!   [`BaseBackupSource`], chunked as it arrives, and labelled (tags) with
//!   the cluster's system identifier, timeline and start/stop LSN once the
//!   producer has ended ([`BaseBackupInfo`]).
//! - **WAL archive**: [`WalArchive::push`] behind `archive_command` and
//!   [`WalArchive::fetch`] behind `restore_command`; each file is a
//!   snapshot of its own (source [`WAL_SOURCE`]) on every mirror. A push
//!   of a file already archived with the same bytes succeeds; different
//!   bytes under the same name are refused. A fetch tells a file that is
//!   not archived ([`Error::NotFound`](atlas_core::Error::NotFound)) from
//!   every other failure, which recovery must treat as fatal.
//! - **Restore**: [`RestorePlan::new`] picks the newest base backup that
//!   ends before the [`RecoveryTarget`] and refuses a target the archive
//!   cannot reach before anything is started;
//!   [`RestorePlan::recovery_settings`] writes what PostgreSQL reads.
//! - **Restore points**: [`record_restore_point`] stores the LSN
//!   `pg_create_restore_point` returned, so a restore to the name starts
//!   from the base backup before it and is checked against the archive.
//! - **Retention**: [`PitrCatalog::wal_released_by`] names the WAL no kept
//!   base backup needs.
//!
//! Running the PostgreSQL programs is not this crate's business (it
//! depends on `atlas-core` only): `atlas-storage`'s `postgres` feature runs
//! `pg_basebackup`, the server and its tools, and a program wires the two.
//! One repository (or prefix) holds one cluster's archive: the system
//! identifier is recorded on every base backup and segment, and a second
//! cluster pushing a segment of the same name is refused.

mod archive;
mod base;
mod catalog;
mod labels;
mod plan;
mod restore_point;
mod wal;

pub use archive::{
    PushOutcome, TAG_SYSTEM, TAG_WAL_FILE, TAG_WAL_SEGSIZE, TAG_WAL_START, WAL_SOURCE, WalArchive,
};
pub use base::{
    BASE_FILE, BASE_SOURCE, BaseBackupInfo, BaseBackupSource, TAG_START_LSN, TAG_STOP_LSN,
    TAG_STOP_TIME, TAG_TIMELINE,
};
pub use catalog::{ArchivedWal, BaseBackup, PitrCatalog};
pub use plan::{RecoveryTarget, RestorePlan};
pub use restore_point::{
    MAX_RESTORE_POINT_NAME, RESTORE_POINT_SOURCE, RestorePoint, RestorePointInfo,
    TAG_RESTORE_POINT, TAG_RESTORE_POINT_LSN, check_name as check_restore_point_name,
    record_restore_point,
};
pub use wal::{DEFAULT_SEGMENT_SIZE, Lsn, SegmentHeader, WalFileKind, WalFileName, segment_name};
