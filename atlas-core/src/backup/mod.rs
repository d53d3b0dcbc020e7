//! Backup targets: the object-store contract backups are written through.
//!
//! [`BackupTarget`] is the minimal trait a backend implements — streaming
//! [`put_opts`](BackupTarget::put_opts), ranged
//! [`get_opts`](BackupTarget::get_opts), [`head`](BackupTarget::head),
//! paginated [`list_opts`](BackupTarget::list_opts) and
//! [`delete`](BackupTarget::delete); [`BackupTargetExt`] adds the
//! conveniences (`put`, `put_if_absent`, `put_bytes`, `get`, `get_range`,
//! `get_bytes`, `exists`, `list`, …) to every target, `Arc`s and `Box`es
//! included. Keys are [`ObjectKey`]s, validated once at construction.
//!
//! The targets live in `atlas-storage` (filesystem, memory, S3, GCS, Azure
//! Blob); they share the retry policy of [`retry`](crate::retry).
//!
//! The backup repository engine built on them (deduplicated, compressed,
//! encrypted snapshots, retention and schedules) is the `atlas-backup` crate.
//! With the `testing` feature, `atlas_core::testing::conformance::backup_target` is the suite
//! every target passes and `atlas_core::testing::backup_faults` injects
//! failures.
//!
//! ```
//! # async fn demo(target: &dyn atlas_core::backup::BackupTarget) -> atlas_core::Result<()> {
//! use atlas_core::backup::{BackupTargetExt, ObjectKey};
//! use atlas_core::ErrorKind;
//!
//! let lock = ObjectKey::new("locks/prune")?;
//! match target.put_bytes_if_absent(&lock, "holder-a".into()).await {
//!     Ok(_) => { /* we hold the lock */ }
//!     Err(e) if e.kind() == ErrorKind::Conflict => { /* someone else does */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

mod key;
mod object;
mod target;

pub use crate::retry::{BackoffConfig, RetryConfig};
pub use key::{MAX_KEY_LEN, ObjectKey, ObjectPrefix};
pub use object::{
    ByteRange, ByteStream, Checksum, Crc32cHasher, GetOptions, GetResult, ListOptions, ObjectMeta,
    PutMode, PutOptions, PutResult, UnfinishedPut, byte_stream,
};
pub use target::{BackupTarget, BackupTargetExt};
