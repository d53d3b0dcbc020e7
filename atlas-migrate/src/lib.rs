//! # atlas-migrate
//!
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
//! The driver contract ([`MigrationDriver`], [`MigrationStep`], the history
//! row) is `atlas_core::migration`, re-exported here: a step reaches the
//! driver with its statements already split, so drivers need no SQL parser.
//! The PostgreSQL driver lives in `atlas-storage` (feature `postgres`); with
//! `atlas-core`'s `testing` feature, `atlas_core::testing::MemoryDriver` is
//! an in-memory driver for tests.
//!
//! ```
//! use atlas_migrate::MigrationSet;
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

pub use atlas_core::migration::{
    AppliedMigration, BackupRecord, FailureState, MigrationDriver, MigrationPhase, MigrationStep,
    StepError, StepKind, Version,
};
pub use atlas_core::{Error, Result};
pub use engine::{
    BackupPolicy, Direction, MigrationState, MigrationStatus, Migrator, MigratorConfig, Plan,
    PlannedStep, RepairReport, RunReport,
};
pub use hook::MigrationHook;
pub use lint::{LintConfig, LintFinding, LintReport, LintSeverity, PlanLinter};
pub use source::{Directives, Migration, MigrationSet, Script, checksum};
