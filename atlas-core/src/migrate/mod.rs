//! Database schema migrations with zero-downtime checks.
//!
//! Migrations are SQL files `V<version>__<name>.sql`, each with an optional
//! `V<version>__<name>.down.sql`, loaded into a [`MigrationSet`]. A
//! [`Migrator`] compares them with the history a [`MigrationDriver`] keeps
//! in the database (version, name, SHA-256 checksum, phase, applied at,
//! duration, success), refuses to run on any drift (a changed file, a
//! missing file, a new version below the highest applied, a failed
//! migration left behind), lints every plan with squawk's zero-downtime
//! rules ([`lint`]), and applies or reverts migrations one by one.
//!
//! Per-file directives (comment lines):
//! - `-- atlas:no-transaction` runs the file statement by statement outside
//!   a transaction (for `CREATE INDEX CONCURRENTLY`);
//! - `-- atlas:phase expand|contract` (default `expand`): contract
//!   migrations may drop and rename; expand ones may not;
//! - `-- atlas:verify <SQL>` must return `true` after the file ran (inside
//!   its transaction when it has one);
//! - `-- atlas:allow-data-change <table>` exempts `table` from the table
//!   invariants ([`MigratorConfig::invariant_tables`]).
//!
//! [`MigrationHook`] ties the phases to rollouts: expand migrations before
//! the new release starts, contract migrations once the old one is gone.
//!
//! `atlas-core` does no database I/O: the PostgreSQL driver lives in
//! `atlas-storage` (feature `postgres`). With the `testing` feature,
//! `testing::MemoryDriver` is an in-memory driver for tests.
//!
//! ```
//! use atlas_core::migrate::MigrationSet;
//! let set = MigrationSet::from_sources([
//!     ("V1__users.sql", "CREATE TABLE users (id bigint PRIMARY KEY);"),
//!     ("V1__users.down.sql", "DROP TABLE users;"),
//! ])?;
//! assert_eq!(set.migrations().len(), 1);
//! # Ok::<(), atlas_core::Error>(())
//! ```

mod engine;
mod hook;
pub mod lint;
mod source;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::Result;

pub use engine::{
    BackupPolicy, Direction, MigrationState, MigrationStatus, Migrator, MigratorConfig, Plan,
    PlannedStep, RepairReport, RunReport,
};
pub use hook::MigrationHook;
pub use lint::{LintConfig, LintFinding, LintReport, LintSeverity};
pub use source::{Directives, Migration, MigrationPhase, MigrationSet, Script, Version, checksum};

/// One row of the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The version.
    pub version: Version,
    /// The name at the time it was applied.
    pub name: String,
    /// SHA-256 of the up file when it was applied.
    pub checksum: String,
    /// Its phase.
    pub phase: MigrationPhase,
    /// When it finished.
    pub applied_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// False for a migration that failed part-way outside a transaction and
    /// could not be reverted; such a row blocks every run until
    /// [`Migrator::repair`].
    pub success: bool,
    /// True for the marker row written by [`Migrator::baseline`].
    pub baseline: bool,
}

/// Which way a script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// The up script: on success the driver inserts the history row.
    Up,
    /// The down script: on success the driver deletes the history row.
    Down,
}

/// One script for the driver to run, with everything it needs.
#[derive(Debug, Clone)]
pub struct MigrationStep<'a> {
    /// The migration.
    pub migration: &'a Migration,
    /// The script to run (the up or the down file).
    pub script: &'a Script,
    /// Up or down.
    pub kind: StepKind,
    /// `lock_timeout` to set for this script; `None` leaves the server's.
    pub lock_timeout: Option<Duration>,
    /// `statement_timeout` to set for this script; `None` leaves the server's.
    pub statement_timeout: Option<Duration>,
    /// Tables whose row count and content (over the columns they had
    /// before) must be the same after the script: the migrator's
    /// invariant tables minus those the script allows to change. Empty for
    /// down scripts.
    pub invariants: Vec<String>,
}

impl MigrationStep<'_> {
    /// Whether the script runs in one transaction with its history change.
    pub fn transactional(&self) -> bool {
        !self.script.directives.no_transaction
    }
}

/// What state a failed step left the database in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureState {
    /// Everything was rolled back: schema, data and history as before.
    RolledBack,
    /// Some statements committed (a no-transaction script, or a verify
    /// query failing after them): the schema may be half-changed.
    PartiallyApplied,
}

/// A failed [`MigrationDriver::apply`].
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct StepError {
    /// What went wrong.
    #[source]
    pub error: crate::Error,
    /// What it left behind.
    pub state: FailureState,
}

impl StepError {
    /// A failure after which nothing changed.
    pub fn rolled_back(error: crate::Error) -> Self {
        StepError {
            error,
            state: FailureState::RolledBack,
        }
    }

    /// A failure after which some statements had committed.
    pub fn partial(error: crate::Error) -> Self {
        StepError {
            error,
            state: FailureState::PartiallyApplied,
        }
    }
}

/// Where a pre-migration backup went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// The object key in the backup target.
    pub key: crate::backup::ObjectKey,
    /// Its size in bytes.
    pub size: u64,
    /// The command that restores it, with `<FILE>` standing for the object
    /// once downloaded from the target.
    pub restore_command: String,
}

/// A database the [`Migrator`] can migrate.
///
/// The driver owns the connection, the run lock and the history table;
/// the migrator decides what to run. Implementations: the PostgreSQL driver
/// in `atlas-storage` (feature `postgres`) and, with the `testing` feature,
/// `testing::MemoryDriver`.
#[async_trait]
pub trait MigrationDriver: fmt::Debug + Send + Sync {
    /// Takes the run lock, so that one runner at a time migrates this
    /// database. Waits or fails fast as the driver is configured.
    ///
    /// # Errors
    /// [`crate::Error::Conflict`] when another runner holds it and the driver
    /// fails fast (or gave up waiting).
    async fn lock(&self) -> Result<()>;

    /// Releases the run lock.
    ///
    /// # Errors
    /// Backend errors.
    async fn unlock(&self) -> Result<()>;

    /// Creates the history table if it does not exist.
    ///
    /// # Errors
    /// Backend errors.
    async fn ensure_history(&self) -> Result<()>;

    /// The history, by ascending version.
    ///
    /// # Errors
    /// Backend errors.
    async fn history(&self) -> Result<Vec<AppliedMigration>>;

    /// Runs one script; then its verify queries; then inserts (up) or
    /// deletes (down) the history row — all in one transaction when
    /// [`MigrationStep::transactional`], in that order otherwise. Returns
    /// how long the script took.
    ///
    /// # Errors
    /// A [`StepError`] saying whether anything stayed applied.
    async fn apply(&self, step: &MigrationStep<'_>) -> Result<Duration, StepError>;

    /// Inserts or replaces one history row (baseline, failed runs, repair).
    ///
    /// # Errors
    /// Backend errors.
    async fn put_history(&self, row: &AppliedMigration) -> Result<()>;

    /// Deletes one history row, if present.
    ///
    /// # Errors
    /// Backend errors.
    async fn delete_history(&self, version: Version) -> Result<()>;

    /// Takes a full backup of the database into `target` under `key`.
    /// The default refuses: a driver without backups must be run with
    /// backups disabled.
    ///
    /// # Errors
    /// [`crate::Error::Precondition`] by default; backend and target errors.
    async fn backup(
        &self,
        target: &dyn crate::backup::BackupTarget,
        key: &crate::backup::ObjectKey,
    ) -> Result<BackupRecord> {
        let _ = (target, key);
        Err(crate::Error::precondition(
            "this migration driver cannot take backups; disable the pre-migration backup",
        ))
    }
}

macro_rules! forward_driver {
    ($ptr:ty) => {
        #[async_trait]
        impl<T: MigrationDriver + ?Sized> MigrationDriver for $ptr {
            async fn lock(&self) -> Result<()> {
                (**self).lock().await
            }
            async fn unlock(&self) -> Result<()> {
                (**self).unlock().await
            }
            async fn ensure_history(&self) -> Result<()> {
                (**self).ensure_history().await
            }
            async fn history(&self) -> Result<Vec<AppliedMigration>> {
                (**self).history().await
            }
            async fn apply(&self, step: &MigrationStep<'_>) -> Result<Duration, StepError> {
                (**self).apply(step).await
            }
            async fn put_history(&self, row: &AppliedMigration) -> Result<()> {
                (**self).put_history(row).await
            }
            async fn delete_history(&self, version: Version) -> Result<()> {
                (**self).delete_history(version).await
            }
            async fn backup(
                &self,
                target: &dyn crate::backup::BackupTarget,
                key: &crate::backup::ObjectKey,
            ) -> Result<BackupRecord> {
                (**self).backup(target, key).await
            }
        }
    };
}

forward_driver!(std::sync::Arc<T>);
forward_driver!(Box<T>);
