//! Adopting a database that Flyway migrated: its `flyway_schema_history`
//! rows, verified against the folder's files, become Atlas history rows.

use std::time::Duration;

use tracing::info;

use crate::engine::Migrator;
use atlas_core::migration::{
    AppliedMigration, AppliedRepeatable, FlywayHistoryRow, MigrationDriver, MigrationPhase, Version,
};
use atlas_core::{Error, Result};

/// Flyway's history table name unless configured otherwise.
pub const FLYWAY_HISTORY_TABLE: &str = "flyway_schema_history";

/// What [`Migrator::import_flyway`] recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Versions recorded as applied, in order.
    pub imported: Vec<Version>,
    /// The version of Flyway's baseline marker, recorded as Atlas's
    /// baseline.
    pub baseline: Option<Version>,
    /// Repeatable migrations recorded as run (their latest Flyway row
    /// matches the file); the others run again on the next migrate.
    pub repeatables: Vec<String>,
}

fn row_version(row: &FlywayHistoryRow, table: &str) -> Result<Version> {
    let text = row.version.as_deref().unwrap_or("");
    text.parse().map_err(|_| {
        Error::invalid(
            format!("{table}.installed_rank {}", row.installed_rank),
            format!("version `{text}` of {} is not a version", row.script),
        )
    })
}

impl<D: MigrationDriver> Migrator<D> {
    /// Adopts a database Flyway migrated: under the run lock, reads the
    /// Flyway history table `table` (Flyway's default is
    /// [`FLYWAY_HISTORY_TABLE`]), checks every applied row against this
    /// folder's files by Flyway's own checksum, and records them in Atlas's
    /// (empty) history, so that `migrate` applies only what Flyway did not.
    /// A Flyway baseline row becomes Atlas's baseline; the `SCHEMA` marker
    /// row is skipped. Nothing is written unless every row checks out.
    ///
    /// # Errors
    /// - [`Error::Precondition`] when Atlas's history is not empty, a row
    ///   failed (`success = false`), or a row is of a kind Atlas cannot run
    ///   (Java, undo);
    /// - [`Error::NotFound`] for the table, or an applied version without
    ///   its file;
    /// - [`Error::Conflict`] for a file whose Flyway checksum differs from
    ///   the recorded one, naming both.
    #[tracing::instrument(skip(self))]
    pub async fn import_flyway(&self, table: &str) -> Result<ImportReport> {
        self.locked(|| async {
            let history = self.driver.history().await?;
            if !history.is_empty() {
                return Err(Error::precondition(format!(
                    "import needs an empty Atlas history; {} rows exist",
                    history.len()
                )));
            }
            let rows = self.driver.flyway_history(table).await?;
            let mut report = ImportReport::default();
            let mut records = Vec::new();
            let mut repeatables: Vec<AppliedRepeatable> = Vec::new();
            for row in &rows {
                let at = format!("{table} row {} ({})", row.installed_rank, row.script);
                if !row.success {
                    return Err(Error::precondition(format!(
                        "{at} failed under Flyway; fix the database and run Flyway's repair before importing"
                    )));
                }
                match row.kind.as_str() {
                    "SCHEMA" => continue,
                    "BASELINE" => {
                        let version = row_version(row, table)?;
                        report.baseline = Some(version);
                        records.push(AppliedMigration {
                            version,
                            name: row.description.clone(),
                            checksum: String::new(),
                            phase: MigrationPhase::Expand,
                            applied_at: row.installed_on,
                            duration: Duration::ZERO,
                            success: true,
                            baseline: true,
                        });
                        continue;
                    }
                    "SQL" if row.version.is_some() => {}
                    "SQL" => {
                        // A repeatable migration: Flyway adds a row each time
                        // it runs, so the latest row per file counts. One
                        // that matches the file is recorded; any other runs
                        // again, which is what a repeatable migration is for.
                        let base = row.script.rsplit('/').next().unwrap_or(&row.script);
                        let name = base
                            .strip_prefix("R__")
                            .and_then(|n| n.strip_suffix(".sql"))
                            .unwrap_or(base);
                        let current = self.set.repeatable(name);
                        repeatables.retain(|r: &AppliedRepeatable| r.name != name);
                        match current {
                            Some(r) if row.checksum == Some(r.script.flyway_checksum) => {
                                repeatables.push(AppliedRepeatable {
                                    name: r.name.clone(),
                                    checksum: r.checksum.clone(),
                                    applied_at: row.installed_on,
                                    duration: Duration::from_millis(
                                        u64::try_from(row.execution_time_ms).unwrap_or(0),
                                    ),
                                    success: true,
                                });
                            }
                            _ => info!(%name, "repeatable migration changed since Flyway ran it (or is gone): it runs again"),
                        }
                        continue;
                    }
                    other => {
                        return Err(Error::precondition(format!(
                            "{at} is a {other} migration; Atlas imports SQL migrations only"
                        )));
                    }
                }
                let version = row_version(row, table)?;
                let m = self.set.get(version).ok_or_else(|| {
                    Error::not_found(format!(
                        "file for {at}: no migration file has version {version}"
                    ))
                })?;
                if row.checksum != Some(m.up.flyway_checksum) {
                    return Err(Error::conflict(format!(
                        "checksum mismatch: {at} was applied with Flyway checksum {}, but {} has {}; restore the file as applied",
                        row.checksum.map(|c| c.to_string()).unwrap_or_else(|| "none".to_owned()),
                        m.up.file,
                        m.up.flyway_checksum
                    )));
                }
                report.imported.push(version);
                records.push(AppliedMigration {
                    version,
                    name: m.name.clone(),
                    checksum: m.checksum().to_owned(),
                    phase: m.phase(),
                    applied_at: row.installed_on,
                    duration: Duration::from_millis(
                        u64::try_from(row.execution_time_ms).unwrap_or(0),
                    ),
                    success: true,
                    baseline: false,
                });
            }
            for record in &records {
                self.driver.put_history(record).await?;
            }
            for record in &repeatables {
                self.driver.put_repeatable(record).await?;
                report.repeatables.push(record.name.clone());
            }
            info!(imported = report.imported.len(), baseline = ?report.baseline, %table, "Flyway history imported");
            Ok(report)
        })
        .await
    }
}
