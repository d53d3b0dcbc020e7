//! Where Atlas's data lives: the backup targets behind
//! [`atlas_core::backup::BackupTarget`], and the database drivers behind
//! [`atlas_core::migration::MigrationDriver`].
//!
//! | target | feature | backend |
//! |---|---|---|
//! | [`FsTarget`] | `fs` (default) | a local directory: atomic temp + fsync + rename, the embedded default |
//! | [`MemoryTarget`] | `memory` (default) | process memory, for tests and examples |
//! | `S3Target` | `s3` | Amazon S3 and S3-compatible servers (`aws-sdk-s3`) |
//! | `AzureBlobTarget` | `azure` | Azure Blob Storage and Azurite (`azure_storage_blobs`) |
//! | `GcsTarget` | `gcs` | Google Cloud Storage and fake-gcs-server (JSON API, `google-cloud-auth`) |
//!
//! | driver | feature | backend |
//! |---|---|---|
//! | `postgres::PostgresDriver` | `postgres` | PostgreSQL (`tokio-postgres`, TLS with rustls): advisory lock, history table, per-migration timeouts, `pg_dump` backups |
//!
//! `postgres::PostgresStateStore` (feature `postgres`) implements
//! [`atlas_core::StateStore`] in PostgreSQL: rollout state with
//! compare-and-swap on a version, and the single-driver lease as a row
//! with a fencing token, so engines on several hosts share one database.
//!
//! [`url::TargetUrl`] opens any of them from a URL (`file:///…`,
//! `s3://bucket/prefix`, `gs://…`, `az://…`), as command-line tools take
//! them, with settings from the process environment or from any
//! [`env::Env`] (a map, a configuration file, a secret store).
//!
//! Every target passes the conformance suite
//! `atlas_core::testing::conformance::backup_target`; the filesystem and
//! memory targets on plain `cargo test`.
//!
//! Each cloud target is a folder (`s3`, `gcs`, `azure`) split by
//! concern: its builder, its `BackupTarget` calls, its uploads and the
//! mapping of its SDK's errors. What they have in common is written once in
//! a private `cloud` module: one table from HTTP status to error category
//! (408, 429, 500, 502, 503 and 504 are transient on every backend), one set
//! of checksum encodings, one abort-on-drop guard for multipart, resumable
//! and block uploads, part cutting, paginated listings and the builders'
//! common checks.
//!
//! Retries: the cloud targets run each request through
//! [`atlas_core::backup::RetryConfig`] (exponential backoff with jitter on
//! transient errors, per-request and overall timeouts, documented defaults),
//! settable on each builder.
//!
//! ## TLS in binaries
//!
//! The cloud features pull in `rustls`. When a binary ends up with more
//! than one rustls crypto provider, install one at the start of `main`:
//! `rustls::crypto::aws_lc_rs::default_provider().install_default()`.

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
mod cloud;
pub mod env;
#[cfg(feature = "fs")]
pub mod fs;
#[cfg(feature = "gcs")]
pub mod gcs;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "s3")]
pub mod s3;
pub mod url;

#[cfg(feature = "azure")]
pub use azure::{AzureBlobTarget, AzureBlobTargetBuilder};
#[cfg(feature = "fs")]
pub use fs::{FsTarget, FsTargetBuilder};
#[cfg(feature = "gcs")]
pub use gcs::{GcsTarget, GcsTargetBuilder};
#[cfg(feature = "memory")]
pub use memory::MemoryTarget;
#[cfg(feature = "s3")]
pub use s3::{S3Target, S3TargetBuilder};
