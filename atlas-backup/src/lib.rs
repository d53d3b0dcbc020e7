//! # atlas-backup
//!
//! Atlas's backup engine, over the object-store contract of
//! [`atlas_core::backup`] ([`BackupTarget`]):
//!
//! - [`repo`]: the backup repository in the manner of restic —
//!   content-defined chunks, keyed BLAKE3 ids, zstd, XChaCha20-Poly1305 with
//!   Argon2id-wrapped keys, packs, snapshots committed last, mirrors over
//!   several targets, `check`, `restore`, `prune` (format:
//!   `atlas-backup/docs/backup-format.md`);
//! - [`retention`]: which snapshots to keep (restic's `forget` rules, in UTC);
//! - [`schedule`]: when full, incremental and point-in-time backups run
//!   (cron, UTC), and a [`schedule::Scheduler`] that runs them.
//!
//! The targets themselves (filesystem, memory, S3, GCS, Azure Blob) live in
//! `atlas-storage`; this crate depends on `atlas-core` only, so it works with
//! any target a user writes.
//!
//! The contract's types are re-exported here, so one import line serves:
//! `use atlas_backup::{BackupTarget, ObjectPrefix};`.

pub mod pitr;
pub mod repo;
pub mod retention;
pub mod schedule;

pub use atlas_core::backup::*;
pub use atlas_core::{Error, ErrorKind, Result};
