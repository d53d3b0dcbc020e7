//! # atlas-migrate
//!
//! Database schema migrations with zero-downtime checks.
//!
//! Migrations are SQL files `V<version>__<name>.sql` (version: numbers
//! separated by `.` or `_`, ordered part by part, as Flyway names them),
//! each with an optional `V<version>__<name>.down.sql`, and repeatable
//! `R__<name>.sql` files, loaded from a folder and its subfolders into a
//! [`MigrationSet`] with `${name}` placeholders replaced
//! ([`SourceOptions`]). A [`Migrator`] compares them with the history a
//! [`MigrationDriver`] keeps in the database (version, name, checksum,
//! phase, applied at, duration, success), refuses to run on any drift (a
//! changed file, a missing file, a new version below the highest applied,
//! a failed migration left behind), lints every plan with squawk's
//! zero-downtime rules ([`lint`]), and applies or reverts migrations one by
//! one; repeatable migrations run after them whenever their text changes.
//! [`Migrator::import_flyway`] adopts a database Flyway migrated.
//!
//! Each file is cut into statements by a lexer that only finds boundaries
//! (quotes, dollar quotes, comments, `BEGIN ATOMIC` bodies, the inline data
//! of `COPY … FROM STDIN`), so every statement the database receives is the
//! file's own text. Checksums ignore line-ending style and a leading
//! byte-order mark ([`checksum`], and Flyway's own [`flyway_checksum`]).
//!
//! Per-file directives (comment lines):
//! - `-- atlas:no-transaction` runs the file statement by statement outside
//!   a transaction; a file holding a statement PostgreSQL refuses inside a
//!   transaction block (`CREATE INDEX CONCURRENTLY`, `VACUUM`, …) runs that
//!   way without it. A transactional file may not hold `BEGIN`, `COMMIT`
//!   or other transaction control: it is refused before anything runs;
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

mod checksum;
mod engine;
mod hook;
mod import;
pub mod lint;
mod placeholders;
mod repeatable;
mod source;
mod statements;

pub use atlas_core::migration::{
    AppliedMigration, AppliedRepeatable, BackupRecord, FailureState, FlywayHistoryRow,
    MigrationDriver, MigrationPhase, MigrationStep, Statement, StepError, StepKind, Version,
};
pub use atlas_core::{Error, Result};
pub use checksum::{checksum, flyway_checksum};
pub use engine::{
    BackupPolicy, Direction, MigrationState, MigrationStatus, Migrator, MigratorConfig, Plan,
    PlannedRepeatable, PlannedStep, RepairReport, RunReport,
};
pub use hook::MigrationHook;
pub use import::{FLYWAY_HISTORY_TABLE, ImportReport};
pub use lint::{LintConfig, LintFinding, LintReport, LintSeverity, PlanLinter};
pub use placeholders::{CONNECTION_PLACEHOLDERS, SourceOptions};
pub use repeatable::{RepeatableState, RepeatableStatus};
pub use source::{Directives, Migration, MigrationSet, Repeatable, Script};
