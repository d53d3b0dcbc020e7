//! The backup repository engine: deduplicated, compressed, encrypted
//! snapshots of directory trees and byte streams, stored in any
//! [`BackupTarget`](atlas_core::backup::BackupTarget).
//!
//! A [`Repository`] lives under a prefix of a target. Content is cut into
//! chunks by FastCDC (about 1 MiB on average), each chunk is identified by a
//! keyed BLAKE3 hash, compressed with zstd and encrypted with
//! XChaCha20-Poly1305, and chunks are grouped into pack files of about
//! 16 MiB. Directory listings are stored as tree blobs; a snapshot manifest
//! names the root tree and carries what listing and retention need. The byte
//! format is specified in `atlas-backup/docs/backup-format.md`.
//!
//! A snapshot becomes visible only when its manifest is written, last, with
//! a conditional create: an interrupted backup leaves only packs and indexes
//! nobody references, which [`Repository::prune`] removes.
//!
//! ```no_run
//! # async fn demo(target: std::sync::Arc<dyn atlas_core::backup::BackupTarget>) -> atlas_core::Result<()> {
//! use atlas_core::backup::ObjectPrefix;
//! use atlas_backup::repo::{
//!     BackupOptions, DirectorySource, InitOptions, KeySource, Repository, RestoreOptions,
//! };
//! let repo = Repository::init(
//!     target,
//!     ObjectPrefix::new("backups/db1/")?,
//!     &KeySource::passphrase("correct horse"),
//!     InitOptions::default(),
//! )
//! .await?;
//! let report = repo
//!     .backup(DirectorySource::new("/var/lib/app"), BackupOptions::default().with_tag("nightly"))
//!     .await?;
//! println!("snapshot {} ({} new bytes)", report.snapshot.id, report.snapshot.totals.new_bytes);
//! repo.restore(&report.snapshot.id.to_hex(), "/tmp/restore", RestoreOptions::default()).await?;
//! # Ok(()) }
//! ```

mod backup;
mod blobs;
mod cache;
mod check;
mod chunker;
mod crypto;
mod damage;
mod error;
mod format;
mod host;
mod index;
mod index_map;
mod layout;
mod lock;
mod mirror;
mod platform;
mod policy;
mod pool;
mod progress;
mod prune;
mod repair;
mod repository;
mod restore;
mod version;

/// An in-memory target that streams puts, for the tests of other modules.
#[cfg(test)]
pub(crate) use backup::tests::Streaming;
pub use backup::{
    BackupOptions, BackupReport, BackupSource, DirectorySource, SourceCompletion, SourceInput,
    StreamSource,
};
pub use check::{CheckOptions, CheckProblem, CheckReport, ReadDataSubset};
pub use crypto::{KdfParams, KeySource};
pub use damage::{DamagedFile, DocumentDamage, SnapshotListing};
pub use error::{IntegrityError, integrity_error};
pub use format::{
    BackupKind, BlobId, BlobKind, ChunkerParams, MAX_RECORDED_UNREADABLE, Node, NodeKind, PackId,
    RepoConfig, RootMetadata, SkippedEntry, Snapshot, SnapshotId, SnapshotTotals, Tree,
};
pub use lock::{LockGuard, LockInfo};
pub use mirror::{KeyChangeReport, MirrorKeyInfo, MirrorReport, MirrorSet, SyncReport, sync};
pub use policy::{MirrorPolicy, TargetOutcome};
pub use progress::{Progress, ProgressFn, progress_channel};
pub use prune::{PruneOptions, PruneReport};
pub use repair::{RepairIndexReport, RepairSnapshotsReport};
pub use repository::{InitOptions, KeyInfo, Repository};
pub use restore::{EntryKind, RestoreConflict, RestoreOptions, RestoreReport, restore_conflict};
