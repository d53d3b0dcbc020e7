//! An in-memory [`MigrationDriver`] for tests of the migration engine and of
//! tools built on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::backup::{BackupTarget, BackupTargetExt, ObjectKey, byte_stream};
use crate::migration::{
    AppliedMigration, AppliedRepeatable, BackupRecord, FailureState, MigrationDriver,
    MigrationStep, StepError, StepKind, Version,
};
use crate::{Error, Result};

#[derive(Debug, Default)]
struct State {
    history: BTreeMap<Version, AppliedMigration>,
    repeatables: BTreeMap<String, AppliedRepeatable>,
    /// Scripts whose effects are in the "database", in order.
    effects: Vec<String>,
    /// Every script run, committed or not, with its timeouts.
    runs: Vec<RecordedRun>,
    failures: HashMap<String, FailureState>,
    verify: HashMap<String, bool>,
    locked: bool,
    history_table: bool,
}

/// One script the driver was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRun {
    /// The file.
    pub file: String,
    /// Up or down.
    pub kind: StepKind,
    /// Whether it ran in a transaction.
    pub transactional: bool,
    /// The `lock_timeout` it was given.
    pub lock_timeout: Option<Duration>,
    /// The invariant tables it was given.
    pub invariants: Vec<String>,
}

/// An in-memory database: the history table, the list of scripts whose
/// effects are applied, a run lock that fails fast, scripted failures and
/// verify results. Clones share state, like two connections to one
/// database.
#[derive(Debug, Clone, Default)]
pub struct MemoryDriver {
    state: Arc<Mutex<State>>,
}

impl MemoryDriver {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not hide this test's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the script `file` fail, leaving `state` behind (a
    /// `PartiallyApplied` failure keeps the script's effects).
    pub fn fail(&self, file: &str, state: FailureState) {
        self.state().failures.insert(file.to_owned(), state);
    }

    /// Sets what the verify query `sql` returns (default: true).
    pub fn set_verify(&self, sql: &str, result: bool) {
        self.state().verify.insert(sql.to_owned(), result);
    }

    /// The files whose effects are applied, in order.
    pub fn effects(&self) -> Vec<String> {
        self.state().effects.clone()
    }

    /// Every script run, in order.
    pub fn runs(&self) -> Vec<RecordedRun> {
        self.state().runs.clone()
    }

    /// Takes the lock as another runner would.
    pub fn hold_lock(&self) {
        self.state().locked = true;
    }

    /// The history rows.
    pub fn rows(&self) -> Vec<AppliedMigration> {
        self.state().history.values().cloned().collect()
    }

    /// The repeatable migrations' rows, by name.
    pub fn repeatable_rows(&self) -> Vec<AppliedRepeatable> {
        self.state().repeatables.values().cloned().collect()
    }
}

#[async_trait]
impl MigrationDriver for MemoryDriver {
    async fn lock(&self) -> Result<()> {
        let mut s = self.state();
        if s.locked {
            return Err(Error::conflict("migration lock held by another runner"));
        }
        s.locked = true;
        Ok(())
    }

    async fn unlock(&self) -> Result<()> {
        self.state().locked = false;
        Ok(())
    }

    async fn ensure_history(&self) -> Result<()> {
        self.state().history_table = true;
        Ok(())
    }

    async fn history(&self) -> Result<Vec<AppliedMigration>> {
        Ok(self.rows())
    }

    async fn apply(&self, step: &MigrationStep) -> Result<Duration, StepError> {
        let mut s = self.state();
        let file = step.file.clone();
        s.runs.push(RecordedRun {
            file: file.clone(),
            kind: step.kind,
            transactional: step.transactional(),
            lock_timeout: step.lock_timeout,
            invariants: step.invariants.clone(),
        });
        if let Some(state) = s.failures.get(&file).copied() {
            if state == FailureState::PartiallyApplied {
                s.effects.push(file.clone());
            }
            return Err(StepError {
                error: Error::backend("memory", format!("scripted failure of {file}")),
                state,
            });
        }
        s.effects.push(file.clone());
        for query in &step.verify {
            if !s.verify.get(query).copied().unwrap_or(true) {
                let error = Error::backend("memory", format!("verify failed: {query}"));
                if step.transactional() {
                    s.effects.pop();
                    return Err(StepError::rolled_back(error));
                }
                return Err(StepError::partial(error));
            }
        }
        match step.kind {
            StepKind::Up => {
                s.history
                    .insert(step.version, step.history_row(Duration::ZERO));
            }
            StepKind::Down => {
                s.history.remove(&step.version);
            }
            StepKind::Repeatable => {
                s.repeatables
                    .insert(step.name.clone(), step.repeatable_row(Duration::ZERO));
            }
        }
        Ok(Duration::ZERO)
    }

    async fn put_history(&self, row: &AppliedMigration) -> Result<()> {
        self.state().history.insert(row.version, row.clone());
        Ok(())
    }

    async fn delete_history(&self, version: Version) -> Result<()> {
        self.state().history.remove(&version);
        Ok(())
    }

    async fn repeatable_history(&self) -> Result<Vec<AppliedRepeatable>> {
        Ok(self.repeatable_rows())
    }

    async fn put_repeatable(&self, row: &AppliedRepeatable) -> Result<()> {
        self.state()
            .repeatables
            .insert(row.name.clone(), row.clone());
        Ok(())
    }

    async fn delete_repeatable(&self, name: &str) -> Result<()> {
        self.state().repeatables.remove(name);
        Ok(())
    }

    async fn backup(&self, target: &dyn BackupTarget, key: &ObjectKey) -> Result<BackupRecord> {
        let dump = self.effects().join("\n");
        let put = target.put(key, byte_stream(dump.into_bytes())).await?;
        Ok(BackupRecord {
            key: key.clone(),
            size: put.size,
            restore_command: "memory driver: restore by replaying the listed files".to_owned(),
        })
    }
}
