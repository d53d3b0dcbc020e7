//! The migration-driver contract: what a database must do for Atlas's
//! migration engine (the `atlas-migrate` crate) to migrate it.
//!
//! A [`MigrationDriver`] owns the connection, the run lock and the history
//! table; the engine decides what to run and hands the driver one
//! [`MigrationStep`] at a time, with the SQL already split into statements,
//! its verify queries and its timeouts, so a driver needs no SQL parser.
//! Implementations: the PostgreSQL driver in `atlas-storage` (feature
//! `postgres`) and, with the `testing` feature,
//! `atlas_core::testing::MemoryDriver`.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Error, Result};

/// The most dot-separated parts a [`Version`] may have.
pub const MAX_VERSION_PARTS: usize = 6;

/// The version of a migration: the part after `V` in `V<version>__<name>.sql`.
///
/// One or more numbers separated by `.` or `_` (`7`, `1.2.3`, `1_1`, as
/// Flyway names them), compared numerically part by part (`1.10` comes
/// after `1.9`). Leading zeros are ignored (`V001` is version 1) and so are
/// trailing zero parts (`1.0` is `1`), so two spellings of one version are
/// equal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    // Unused trailing parts are zero, which makes the derived order the
    // numeric part-by-part order.
    parts: [u64; MAX_VERSION_PARTS],
}

impl Version {
    /// The single-number version `n` (`V7` is `Version::new(7)`).
    pub const fn new(n: u64) -> Self {
        let mut parts = [0; MAX_VERSION_PARTS];
        parts[0] = n;
        Version { parts }
    }

    /// A version from its parts, most significant first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no part or more than
    /// [`MAX_VERSION_PARTS`] significant parts.
    pub fn from_parts(parts: &[u64]) -> Result<Self> {
        let significant = parts.iter().rposition(|p| *p != 0).map_or(0, |i| i + 1);
        if parts.is_empty() || significant > MAX_VERSION_PARTS {
            return Err(Error::invalid(
                "version",
                format!("must have 1 to {MAX_VERSION_PARTS} numeric parts"),
            ));
        }
        let mut out = [0; MAX_VERSION_PARTS];
        out[..significant].copy_from_slice(&parts[..significant]);
        Ok(Version { parts: out })
    }

    /// The significant parts (at least one): `1.2.0` gives `[1, 2]`.
    pub fn parts(&self) -> &[u64] {
        let significant = self
            .parts
            .iter()
            .rposition(|p| *p != 0)
            .map_or(1, |i| i + 1);
        &self.parts[..significant]
    }

    /// The first part: the whole version when it has one part.
    pub fn major(&self) -> u64 {
        self.parts[0]
    }

    /// The version as Flyway writes it in its history: parts joined by `.`
    /// without the `V`, e.g. `1.2.3`.
    pub fn dotted(&self) -> String {
        self.parts()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl From<u64> for Version {
    fn from(n: u64) -> Self {
        Version::new(n)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V{}", self.dotted())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.dotted())
    }
}

impl std::str::FromStr for Version {
    type Err = Error;

    /// Parses `7`, `V7`, `1.2.3`, `V1_1`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on anything else.
    fn from_str(s: &str) -> Result<Self> {
        let body = s.strip_prefix(['V', 'v']).unwrap_or(s);
        let bad = || {
            Error::invalid(
                "version",
                format!("`{s}` is not a version like 7, V7, 1.2.3 or V1_1"),
            )
        };
        let mut parts = Vec::new();
        for part in body.split(['.', '_']) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            parts.push(part.parse::<u64>().map_err(|_| bad())?);
        }
        Version::from_parts(&parts).map_err(|e| Error::invalid("version", format!("`{s}`: {e}")))
    }
}

/// The phase of a migration in the expand/contract pattern, from the
/// `-- atlas:phase expand|contract` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MigrationPhase {
    /// Backwards-compatible changes, applied before the new version starts
    /// (the default when a file declares no phase).
    #[default]
    Expand,
    /// Changes that break the old version, applied only after it is gone.
    Contract,
}

impl MigrationPhase {
    /// `expand` or `contract`, as stored in the history table.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationPhase::Expand => "expand",
            MigrationPhase::Contract => "contract",
        }
    }

    /// Parses `expand` or `contract`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `field` on anything else.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        match s {
            "expand" => Ok(MigrationPhase::Expand),
            "contract" => Ok(MigrationPhase::Contract),
            other => Err(Error::invalid(
                field,
                format!("phase `{other}` must be `expand` or `contract`"),
            )),
        }
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// `Migrator::repair`.
    pub success: bool,
    /// True for the marker row written by `Migrator::baseline`.
    pub baseline: bool,
}

/// The history row of a repeatable migration (`R__<name>.sql`): keyed by
/// its name, with no version, replaced each time it runs again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRepeatable {
    /// The name: the file name's part after `R__`, without `.sql`.
    pub name: String,
    /// Checksum of the text that ran.
    pub checksum: String,
    /// When it finished.
    pub applied_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// False for a run that failed part-way outside a transaction; such a
    /// row blocks every run until `Migrator::repair`.
    pub success: bool,
}

/// Which way a script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// The up script: on success the driver inserts the history row.
    Up,
    /// The down script: on success the driver deletes the history row.
    Down,
    /// A repeatable script (`R__<name>.sql`, [`MigrationStep::version`]
    /// unused and zero): on success the driver inserts or replaces the
    /// repeatable's row ([`MigrationStep::repeatable_row`]).
    Repeatable,
}

/// One statement of a script, as the engine's lexer cut it out of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text exactly as in the file (with the comments
    /// before it and its terminating `;`), without any inline COPY data.
    pub sql: String,
    /// 1-based line of the file where the statement starts.
    pub line: usize,
    /// For `COPY … FROM STDIN` followed by its data in the file (as
    /// `pg_dump` writes it): the data lines, without the terminating `\.`
    /// line. The driver streams them with the copy-in protocol.
    pub copy_data: Option<String>,
}

/// One script for the driver to run, with everything it needs.
///
/// The migration engine builds it from a checksummed file: `sql` is the
/// file's text (after placeholder replacement), and `statements` the same
/// text cut at statement boundaries by the engine's lexer (each statement's
/// text exactly as in the file, so nothing is dropped or rewritten), so a
/// driver runs the statements one by one, in a transaction or outside one,
/// without parsing SQL itself. A transactional step never contains a
/// transaction-control statement: the engine refuses such a file first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStep {
    /// The migration's version.
    pub version: Version,
    /// The migration's name (the file name's part after `__`).
    pub name: String,
    /// The file this script came from, for messages, e.g. `V2__add_email.sql`.
    pub file: String,
    /// SHA-256 of the migration's up file, lowercase hex: what an up step
    /// records in the history row.
    pub checksum: String,
    /// The migration's phase, recorded in the history row.
    pub phase: MigrationPhase,
    /// Up or down.
    pub kind: StepKind,
    /// The script's full text, for messages and drivers that keep it.
    pub sql: String,
    /// The script's statements, in order: joined, they are `sql` minus
    /// trailing blank text. Drivers run them one at a time, inside one
    /// transaction when [`transactional`](Self::transactional).
    pub statements: Vec<Statement>,
    /// Whether the script runs in one transaction with its history change
    /// (false for `-- atlas:no-transaction` files).
    pub transactional: bool,
    /// Queries that must each return one row whose first column is `true`
    /// after the script ran (inside its transaction when it has one).
    pub verify: Vec<String>,
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

impl MigrationStep {
    /// Whether the script runs in one transaction with its history change.
    pub fn transactional(&self) -> bool {
        self.transactional
    }

    /// The row a [`StepKind::Repeatable`] step writes when it succeeds
    /// after `took`.
    pub fn repeatable_row(&self, took: Duration) -> AppliedRepeatable {
        AppliedRepeatable {
            name: self.name.clone(),
            checksum: self.checksum.clone(),
            applied_at: SystemTime::now(),
            duration: took,
            success: true,
        }
    }

    /// The history row an up step writes when it succeeds after `took`.
    pub fn history_row(&self, took: Duration) -> AppliedMigration {
        AppliedMigration {
            version: self.version,
            name: self.name.clone(),
            checksum: self.checksum.clone(),
            phase: self.phase,
            applied_at: SystemTime::now(),
            duration: took,
            success: true,
            baseline: false,
        }
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
    pub error: Error,
    /// What it left behind.
    pub state: FailureState,
}

impl StepError {
    /// A failure after which nothing changed.
    pub fn rolled_back(error: Error) -> Self {
        StepError {
            error,
            state: FailureState::RolledBack,
        }
    }

    /// A failure after which some statements had committed.
    pub fn partial(error: Error) -> Self {
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

/// One row of a Flyway schema history table (`flyway_schema_history`),
/// read so that a database Flyway migrated can be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlywayHistoryRow {
    /// `installed_rank`: the order Flyway applied it in.
    pub installed_rank: i32,
    /// `version` as Flyway wrote it (`1.2.3`); `None` for a repeatable
    /// migration.
    pub version: Option<String>,
    /// `description`.
    pub description: String,
    /// `type`: `SQL`, `BASELINE`, `SCHEMA`, `JDBC`, …
    pub kind: String,
    /// `script`: the file's path inside its location.
    pub script: String,
    /// `checksum`: Flyway's CRC-32 of the file (`None` for markers).
    pub checksum: Option<i32>,
    /// `installed_by`.
    pub installed_by: String,
    /// `installed_on`.
    pub installed_on: SystemTime,
    /// `execution_time`, in milliseconds.
    pub execution_time_ms: i64,
    /// `success`.
    pub success: bool,
}

/// A database the migration engine (`atlas_migrate::Migrator`) can migrate.
///
/// The driver owns the connection, the run lock and the history table;
/// the engine decides what to run. Implementations: the PostgreSQL driver
/// in `atlas-storage` (feature `postgres`) and, with the `testing` feature,
/// `testing::MemoryDriver`.
#[async_trait]
pub trait MigrationDriver: fmt::Debug + Send + Sync {
    /// Takes the run lock, so that one runner at a time migrates this
    /// database. Waits or fails fast as the driver is configured.
    ///
    /// # Errors
    /// [`Error::Conflict`] when another runner holds it and the driver
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
    async fn apply(&self, step: &MigrationStep) -> Result<Duration, StepError>;

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

    /// The rows of repeatable migrations. The default has none: a driver
    /// that cannot store them refuses to record one
    /// ([`put_repeatable`](Self::put_repeatable)).
    ///
    /// # Errors
    /// Backend errors.
    async fn repeatable_history(&self) -> Result<Vec<AppliedRepeatable>> {
        Ok(Vec::new())
    }

    /// Inserts or replaces a repeatable migration's row (failed runs,
    /// import). The default refuses.
    ///
    /// # Errors
    /// [`Error::Precondition`] by default; backend errors.
    async fn put_repeatable(&self, row: &AppliedRepeatable) -> Result<()> {
        Err(Error::precondition(format!(
            "this migration driver cannot record the repeatable migration {}",
            row.name
        )))
    }

    /// Deletes a repeatable migration's row, if present. The default
    /// refuses.
    ///
    /// # Errors
    /// [`Error::Precondition`] by default; backend errors.
    async fn delete_repeatable(&self, name: &str) -> Result<()> {
        Err(Error::precondition(format!(
            "this migration driver cannot record the repeatable migration {name}"
        )))
    }

    /// The rows of a Flyway schema history table named `table`, by
    /// installed rank. The default refuses: a driver that cannot read one
    /// cannot adopt a Flyway-migrated database.
    ///
    /// # Errors
    /// [`Error::Precondition`] by default; [`Error::NotFound`] when the
    /// table does not exist; backend errors.
    async fn flyway_history(&self, table: &str) -> Result<Vec<FlywayHistoryRow>> {
        Err(Error::precondition(format!(
            "this migration driver cannot read the Flyway history table {table}"
        )))
    }

    /// Takes a full backup of the database into `target` under `key`.
    /// The default refuses: a driver without backups must be run with
    /// backups disabled.
    ///
    /// # Errors
    /// [`Error::Precondition`] by default; backend and target errors.
    async fn backup(
        &self,
        target: &dyn crate::backup::BackupTarget,
        key: &crate::backup::ObjectKey,
    ) -> Result<BackupRecord> {
        let _ = (target, key);
        Err(Error::precondition(
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
            async fn apply(&self, step: &MigrationStep) -> Result<Duration, StepError> {
                (**self).apply(step).await
            }
            async fn put_history(&self, row: &AppliedMigration) -> Result<()> {
                (**self).put_history(row).await
            }
            async fn delete_history(&self, version: Version) -> Result<()> {
                (**self).delete_history(version).await
            }
            async fn flyway_history(&self, table: &str) -> Result<Vec<FlywayHistoryRow>> {
                (**self).flyway_history(table).await
            }
            async fn repeatable_history(&self) -> Result<Vec<AppliedRepeatable>> {
                (**self).repeatable_history().await
            }
            async fn put_repeatable(&self, row: &AppliedRepeatable) -> Result<()> {
                (**self).put_repeatable(row).await
            }
            async fn delete_repeatable(&self, name: &str) -> Result<()> {
                (**self).delete_repeatable(name).await
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
