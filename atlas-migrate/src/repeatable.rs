//! Repeatable migrations (`R__<name>.sql`): where each stands, which a
//! run adds after its versioned steps, and how one runs and fails.

use std::time::{Duration, SystemTime};

use tracing::warn;

use crate::engine::{Migrator, Plan, PlannedRepeatable, RunReport, restore_hint};
use crate::lint::lint_script;
use crate::source::Repeatable;
use atlas_core::migration::{
    AppliedRepeatable, FailureState, MigrationDriver, MigrationPhase, MigrationStep, StepError,
    StepKind, Version,
};
use atlas_core::{Error, Result};

/// Where one repeatable migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatableState {
    /// Never run.
    Pending,
    /// Ran, and its text changed since: runs again on the next migrate.
    Outdated,
    /// Ran with its current text.
    Applied,
    /// Failed part-way and not reverted; needs [`Migrator::repair`].
    Failed,
    /// Ran, but its file is gone (it stays as it was).
    MissingFile,
}

/// One repeatable migration in [`Migrator::repeatable_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatableStatus {
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub state: RepeatableState,
    /// Its history row, if any.
    pub applied: Option<AppliedRepeatable>,
}

impl<D: MigrationDriver> Migrator<D> {
    /// Where every repeatable migration stands, without changing anything.
    ///
    /// # Errors
    /// Driver errors.
    #[tracing::instrument(skip(self))]
    pub async fn repeatable_status(&self) -> Result<Vec<RepeatableStatus>> {
        let rows = self.driver.repeatable_history().await?;
        Ok(self.repeatable_status_of(&rows))
    }

    fn repeatable_status_of(&self, rows: &[AppliedRepeatable]) -> Vec<RepeatableStatus> {
        let mut out: Vec<RepeatableStatus> = self
            .set
            .repeatables()
            .iter()
            .map(|r| {
                let row = rows.iter().find(|row| row.name == r.name);
                let state = match row {
                    None => RepeatableState::Pending,
                    Some(row) if !row.success => RepeatableState::Failed,
                    Some(row) if row.checksum != r.checksum => RepeatableState::Outdated,
                    Some(_) => RepeatableState::Applied,
                };
                RepeatableStatus {
                    name: r.name.clone(),
                    state,
                    applied: row.cloned(),
                }
            })
            .collect();
        for row in rows {
            if self.set.repeatable(&row.name).is_none() {
                out.push(RepeatableStatus {
                    name: row.name.clone(),
                    state: if row.success {
                        RepeatableState::MissingFile
                    } else {
                        RepeatableState::Failed
                    },
                    applied: Some(row.clone()),
                });
            }
        }
        out
    }

    /// Adds the repeatable migrations to run after an up plan that reaches
    /// the newest version: those never run and those whose text changed,
    /// in name order, as Flyway runs them.
    ///
    /// # Errors
    /// [`Error::Precondition`] for a failed repeatable migration left in
    /// the history; as [`Script::check_transaction_control`](crate::Script::check_transaction_control).
    pub(crate) async fn add_repeatables(
        &self,
        plan: &mut Plan,
        target: Option<Version>,
    ) -> Result<()> {
        if target.is_some_and(|t| self.set.latest().is_some_and(|latest| t < latest)) {
            return Ok(());
        }
        let rows = self.driver.repeatable_history().await?;
        let config = self.lint_config();
        for status in self.repeatable_status_of(&rows) {
            let changed = match status.state {
                RepeatableState::Pending => false,
                RepeatableState::Outdated => true,
                RepeatableState::Failed => {
                    return Err(Error::precondition(format!(
                        "repeatable migration {} failed part-way and was not reverted; fix the database, then run repair",
                        status.name
                    )));
                }
                RepeatableState::Applied | RepeatableState::MissingFile => continue,
            };
            let Some(r) = self.set.repeatable(&status.name) else {
                continue;
            };
            r.script.check_transaction_control()?;
            plan.lint
                .findings
                .extend(lint_script(&r.script, MigrationPhase::Expand, &config));
            plan.repeatables.push(PlannedRepeatable {
                name: r.name.clone(),
                file: r.script.file.clone(),
                transactional: r.script.transactional(),
                changed,
            });
        }
        Ok(())
    }

    pub(crate) fn repeatable_step(&self, r: &Repeatable) -> MigrationStep {
        self.script_step(
            (
                Version::new(0),
                &r.name,
                &r.checksum,
                MigrationPhase::Expand,
            ),
            &r.script,
            StepKind::Repeatable,
        )
    }

    pub(crate) async fn repeatable_failure(
        &self,
        r: &Repeatable,
        failure: StepError,
        report: &RunReport,
    ) -> Error {
        let file = &r.script.file;
        let cause = failure.error;
        if failure.state == FailureState::RolledBack {
            warn!(name = %r.name, %file, error = %cause, "repeatable migration failed and was rolled back");
            return Error::backend_with(
                "migrate",
                format!(
                    "{file} failed and was rolled back, its changes undone (the versioned migrations of this run stay applied)"
                ),
                cause,
            );
        }
        let row = AppliedRepeatable {
            name: r.name.clone(),
            checksum: r.checksum.clone(),
            applied_at: SystemTime::now(),
            duration: Duration::ZERO,
            success: false,
        };
        if let Err(e) = self.driver.put_repeatable(&row).await {
            warn!(error = %e, "recording the failed repeatable migration failed");
        }
        let restore = restore_hint(report);
        warn!(name = %r.name, %file, error = %cause, "repeatable migration failed part-way");
        Error::backend_with(
            "migrate",
            format!(
                "{file} failed part-way; the database may be half-migrated; {restore}; then run repair"
            ),
            cause,
        )
    }
}
