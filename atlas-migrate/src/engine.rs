//! The migrator: validation, planning, lint, runs, repair and baseline.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::lint::{LintConfig, LintReport, PlanLinter, lint_script};
use super::{
    AppliedMigration, BackupRecord, FailureState, Migration, MigrationDriver, MigrationPhase,
    MigrationSet, MigrationStep, StepKind, Version,
};
use atlas_core::backup::{BackupTarget, ObjectPrefix};
use atlas_core::{Error, Result};

/// Where the pre-migration backup goes.
#[derive(Clone, Default)]
pub enum BackupPolicy {
    /// No policy chosen: a run that would change the database is refused,
    /// so that skipping the backup is always an explicit choice. The default.
    #[default]
    Unset,
    /// No backup.
    Disabled,
    /// A full backup into `target` under `prefix` before any change.
    To {
        /// The target.
        target: Arc<dyn BackupTarget>,
        /// The prefix of the backup's key.
        prefix: ObjectPrefix,
    },
}

impl fmt::Debug for BackupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupPolicy::Unset => f.write_str("Unset"),
            BackupPolicy::Disabled => f.write_str("Disabled"),
            BackupPolicy::To { target, prefix } => f
                .debug_struct("To")
                .field("target", target)
                .field("prefix", prefix)
                .finish(),
        }
    }
}

/// How the [`Migrator`] runs.
#[derive(Debug, Clone)]
pub struct MigratorConfig {
    /// Lint rules and severities. Default: [`LintConfig::default`].
    pub lint: LintConfig,
    /// Run even when the lint reports errors. Default: false.
    pub allow_lint_errors: bool,
    /// `lock_timeout` set for every script, so a migration waiting on a busy
    /// table fails instead of queueing all traffic behind it. Default: 5 s.
    /// When set, the lint's `require-lock-timeout` rule is off.
    pub lock_timeout: Option<Duration>,
    /// `statement_timeout` set for every script. Default: none (the
    /// server's). When set, the lint's `require-statement-timeout` is off.
    pub statement_timeout: Option<Duration>,
    /// The pre-migration backup. Default: [`BackupPolicy::Unset`].
    pub backup: BackupPolicy,
    /// Tables whose row count and content must not change in an up
    /// migration unless it says `-- atlas:allow-data-change <table>`; the
    /// driver checks them around each script and fails the step (rolling
    /// it back where it has a transaction) on any difference. Default: none.
    pub invariant_tables: Vec<String>,
}

impl Default for MigratorConfig {
    fn default() -> Self {
        MigratorConfig {
            lint: LintConfig::default(),
            allow_lint_errors: false,
            lock_timeout: Some(Duration::from_secs(5)),
            statement_timeout: None,
            backup: BackupPolicy::Unset,
            invariant_tables: Vec::new(),
        }
    }
}

/// Which way a plan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Applying up scripts.
    Up,
    /// Running down scripts.
    Down,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// The version.
    pub version: Version,
    /// The migration's name.
    pub name: String,
    /// The file that will run.
    pub file: String,
    /// The migration's phase.
    pub phase: MigrationPhase,
    /// Whether it runs in a transaction.
    pub transactional: bool,
}

/// What a run would do, and the lint over it. Nothing is changed by
/// computing a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Up or down.
    pub direction: Direction,
    /// The steps, in the order they would run.
    pub steps: Vec<PlannedStep>,
    /// The repeatable migrations that would run after the steps, in order
    /// (new ones and those whose text changed).
    pub repeatables: Vec<PlannedRepeatable>,
    /// The lint findings over the scripts that would run.
    pub lint: LintReport,
}

/// A repeatable migration a [`Plan`] would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRepeatable {
    /// Its name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// Whether it runs in a transaction.
    pub transactional: bool,
    /// True when it ran before and its text changed since.
    pub changed: bool,
}

/// Where one migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied and unchanged.
    Applied,
    /// Not applied yet.
    Pending,
    /// Covered by the baseline: never run by Atlas.
    BelowBaseline,
    /// The baseline marker.
    Baseline,
    /// Applied, but the file has changed since.
    ChecksumDrift,
    /// Applied, but the file is gone.
    MissingFile,
    /// Failed part-way and not reverted; needs [`Migrator::repair`].
    Failed,
    /// Not applied, but a higher version is.
    OutOfOrder,
}

/// One line of [`Migrator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The version.
    pub version: Version,
    /// The name (from the file, or the history when the file is gone).
    pub name: String,
    /// Where it stands.
    pub state: MigrationState,
    /// The history row, if any.
    pub applied: Option<AppliedMigration>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Up or down.
    pub direction: Direction,
    /// The versions applied (up) or reverted (down), in order.
    pub versions: Vec<Version>,
    /// The repeatable migrations run, by name, in order.
    pub repeatables: Vec<String>,
    /// The pre-migration backup, when one was taken.
    pub backup: Option<BackupRecord>,
    /// The lint over the plan.
    pub lint: LintReport,
}

/// What [`Migrator::repair`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Failed rows removed.
    pub removed_failed: Vec<Version>,
    /// Rows whose checksum and name were realigned with the files.
    pub realigned: Vec<Version>,
    /// Rows removed because their file is gone.
    pub removed_missing: Vec<Version>,
    /// Failed rows of repeatable migrations removed, by name.
    pub removed_failed_repeatables: Vec<String>,
}

/// Runs a [`MigrationSet`] against a [`MigrationDriver`].
#[derive(Debug)]
pub struct Migrator<D> {
    pub(crate) driver: D,
    pub(crate) set: MigrationSet,
    config: MigratorConfig,
}

impl<D: MigrationDriver> Migrator<D> {
    /// A migrator with [`MigratorConfig::default`].
    pub fn new(driver: D, set: MigrationSet) -> Self {
        Migrator {
            driver,
            set,
            config: MigratorConfig::default(),
        }
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: MigratorConfig) -> Self {
        self.config = config;
        self
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The migrations.
    pub fn migrations(&self) -> &MigrationSet {
        &self.set
    }

    pub(crate) fn lint_config(&self) -> LintConfig {
        let mut lint = self.config.lint.clone();
        // The runner sets these per migration; asking every file to set
        // them again would only be noise. An explicit override still wins.
        for (rule, set_by_runner) in [
            ("require-lock-timeout", self.config.lock_timeout.is_some()),
            (
                "require-statement-timeout",
                self.config.statement_timeout.is_some(),
            ),
        ] {
            if set_by_runner && !lint.has_override(rule) {
                lint.set_default_off(rule);
            }
        }
        lint
    }

    /// Lints every up and down script (down scripts as contract phase: they
    /// undo, so drops are their purpose).
    pub fn lint(&self) -> LintReport {
        let config = self.lint_config();
        let mut findings = Vec::new();
        // In order, so each file is judged against the schema the ones
        // before it built.
        let mut linter = PlanLinter::new(&config);
        for m in self.set.migrations() {
            findings.extend(linter.lint(&m.up, m.phase()));
            if let Some(down) = &m.down {
                findings.extend(lint_script(down, MigrationPhase::Contract, &config));
            }
        }
        LintReport { findings }
    }

    /// Where every migration stands, without validating or changing
    /// anything: a database without a history table reads as one where
    /// nothing is applied, and none is created.
    ///
    /// # Errors
    /// Driver errors.
    #[tracing::instrument(skip(self))]
    pub async fn status(&self) -> Result<Vec<MigrationStatus>> {
        let history = self.driver.history().await?;
        Ok(self.status_of(&history))
    }

    fn status_of(&self, history: &[AppliedMigration]) -> Vec<MigrationStatus> {
        let rows: BTreeMap<Version, &AppliedMigration> =
            history.iter().map(|r| (r.version, r)).collect();
        let baseline = history
            .iter()
            .filter(|r| r.baseline)
            .map(|r| r.version)
            .max();
        let highest = history.iter().map(|r| r.version).max();
        let mut out = Vec::new();
        for m in self.set.migrations() {
            let row = rows.get(&m.version).copied();
            let state = match row {
                Some(r) if r.baseline => MigrationState::Baseline,
                Some(r) if !r.success => MigrationState::Failed,
                Some(r) if !m.matches_checksum(&r.checksum) => MigrationState::ChecksumDrift,
                Some(_) => MigrationState::Applied,
                None if baseline.is_some_and(|b| m.version <= b) => MigrationState::BelowBaseline,
                None if highest.is_some_and(|h| m.version < h) => MigrationState::OutOfOrder,
                None => MigrationState::Pending,
            };
            out.push(MigrationStatus {
                version: m.version,
                name: m.name.clone(),
                state,
                applied: row.cloned(),
            });
        }
        for r in history {
            if self.set.get(r.version).is_none() {
                out.push(MigrationStatus {
                    version: r.version,
                    name: r.name.clone(),
                    state: if r.baseline {
                        MigrationState::Baseline
                    } else if !r.success {
                        MigrationState::Failed
                    } else {
                        MigrationState::MissingFile
                    },
                    applied: Some(r.clone()),
                });
            }
        }
        out.sort_by_key(|s| s.version);
        out
    }

    /// Checks the files against the history.
    ///
    /// # Errors
    /// - [`Error::Precondition`] for a failed migration left in the history
    ///   (run [`repair`](Self::repair) after fixing the database);
    /// - [`Error::Conflict`] for checksum drift, naming the version and file;
    /// - [`Error::NotFound`] for an applied migration without its file;
    /// - [`Error::Precondition`] for a pending version below the highest
    ///   applied one (out of order).
    pub fn validate(&self, history: &[AppliedMigration]) -> Result<()> {
        for s in self.status_of(history) {
            match s.state {
                MigrationState::Failed => {
                    return Err(Error::precondition(format!(
                        "migration {} ({}) failed part-way and was not reverted; fix the database, then run repair",
                        s.version, s.name
                    )));
                }
                MigrationState::ChecksumDrift => {
                    let m = self.set.get(s.version);
                    let file = m.map(|m| m.up.file.as_str()).unwrap_or("?");
                    let recorded = s
                        .applied
                        .as_ref()
                        .map(|r| r.checksum.as_str())
                        .unwrap_or("");
                    return Err(Error::conflict(format!(
                        "checksum drift: migration {} file {file} changed after it was applied (applied sha256 {recorded}, file sha256 {}); restore the file, or run repair to accept it",
                        s.version,
                        m.map(|m| m.checksum()).unwrap_or("")
                    )));
                }
                MigrationState::MissingFile => {
                    return Err(Error::not_found(format!(
                        "file for applied migration {} ({}): expected {}__{}.sql; restore it, or run repair to forget it",
                        s.version, s.name, s.version, s.name
                    )));
                }
                MigrationState::OutOfOrder => {
                    let highest = history.iter().map(|r| r.version).max();
                    return Err(Error::precondition(format!(
                        "out of order: migration {} ({}) is new but {} is already applied; give it a version above {}",
                        s.version,
                        s.name,
                        highest.map(|v| v.to_string()).unwrap_or_default(),
                        highest.map(|v| v.to_string()).unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn plan_up(&self, history: &[AppliedMigration], target: Option<Version>) -> Result<Plan> {
        self.plan_up_until(history, target, false)
    }

    fn plan_up_until(
        &self,
        history: &[AppliedMigration],
        target: Option<Version>,
        stop_before_contract: bool,
    ) -> Result<Plan> {
        let highest = history.iter().map(|r| r.version).max();
        if let (Some(t), Some(h)) = (target, highest)
            && t < h
        {
            return Err(Error::invalid(
                "target",
                format!("{t} is below the applied {h}; use down to revert"),
            ));
        }
        if let Some(t) = target
            && self.set.get(t).is_none()
            && highest != Some(t)
        {
            return Err(Error::invalid(
                "target",
                format!("no migration file has version {t}"),
            ));
        }
        let config = self.lint_config();
        let mut steps = Vec::new();
        let mut findings = Vec::new();
        let statuses = self.status_of(history);
        // The lint judges each pending file against the schema the
        // applied ones built.
        let mut linter = PlanLinter::new(&config);
        for s in statuses
            .iter()
            .filter(|s| s.state != MigrationState::Pending)
        {
            if let Some(m) = self.set.get(s.version) {
                linter.learn(&m.up);
            }
        }
        for s in statuses {
            if s.state != MigrationState::Pending || target.is_some_and(|t| s.version > t) {
                continue;
            }
            let Some(m) = self.set.get(s.version) else {
                continue;
            };
            if stop_before_contract && m.phase() == MigrationPhase::Contract {
                // Order matters: nothing after a pending contract migration
                // may run before it.
                break;
            }
            findings.extend(linter.lint(&m.up, m.phase()));
            steps.push(planned(m, &m.up, Direction::Up)?);
        }
        Ok(Plan {
            direction: Direction::Up,
            steps,
            repeatables: Vec::new(),
            lint: LintReport { findings },
        })
    }

    fn plan_down(&self, history: &[AppliedMigration], to: Version) -> Result<Plan> {
        let baseline = history
            .iter()
            .filter(|r| r.baseline)
            .map(|r| r.version)
            .max();
        if let Some(b) = baseline
            && to < b
        {
            return Err(Error::invalid(
                "to",
                format!("{to} is below the baseline {b}, which cannot be reverted"),
            ));
        }
        let config = self.lint_config();
        let mut steps = Vec::new();
        let mut findings = Vec::new();
        let mut rows: Vec<&AppliedMigration> = history
            .iter()
            .filter(|r| r.version > to && !r.baseline)
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.version));
        for r in rows {
            let m = self.set.get(r.version).ok_or_else(|| {
                Error::not_found(format!(
                    "file for applied migration {} ({})",
                    r.version, r.name
                ))
            })?;
            let down = m.down.as_ref().ok_or_else(|| {
                Error::not_found(format!(
                    "down file {}__{}.down.sql needed to revert {}",
                    m.version, m.name, m.version
                ))
            })?;
            findings.extend(lint_script(down, MigrationPhase::Contract, &config));
            steps.push(planned(m, down, Direction::Down)?);
        }
        Ok(Plan {
            direction: Direction::Down,
            steps,
            repeatables: Vec::new(),
            lint: LintReport { findings },
        })
    }

    /// What `migrate(target)` would do (a dry run): validates, then lists
    /// the pending migrations up to `target` (default: all) with the lint.
    ///
    /// # Errors
    /// As [`validate`](Self::validate); [`Error::InvalidInput`] for a
    /// target below the applied version or without a file.
    #[tracing::instrument(skip(self))]
    pub async fn plan(&self, target: Option<Version>) -> Result<Plan> {
        let history = self.driver.history().await?;
        self.validate(&history)?;
        let mut plan = self.plan_up(&history, target)?;
        self.add_repeatables(&mut plan, target).await?;
        Ok(plan)
    }

    /// What `down(to)` would do (a dry run).
    ///
    /// # Errors
    /// As [`validate`](Self::validate); [`Error::NotFound`] naming a missing
    /// `.down.sql`; [`Error::InvalidInput`] for a target below the baseline.
    #[tracing::instrument(skip(self))]
    pub async fn plan_down_to(&self, to: Version) -> Result<Plan> {
        let history = self.driver.history().await?;
        self.validate(&history)?;
        self.plan_down(&history, to)
    }

    /// Applies pending migrations up to `target` (default: all), under the
    /// run lock, after validation, the lint and the pre-migration backup.
    ///
    /// # Errors
    /// As [`plan`](Self::plan); [`Error::Conflict`] when another runner
    /// holds the lock; [`Error::Precondition`] when the lint has errors and
    /// they are not allowed, or no backup policy is set; a failed migration
    /// as [`Error::Backend`] saying what state it left (rolled back,
    /// reverted by its down file, or needing a restore, with the command).
    #[tracing::instrument(skip(self))]
    pub async fn migrate(&self, target: Option<Version>) -> Result<RunReport> {
        self.locked(|| async {
            let history = self.driver.history().await?;
            self.validate(&history)?;
            let mut plan = self.plan_up(&history, target)?;
            self.add_repeatables(&mut plan, target).await?;
            self.run(plan).await
        })
        .await
    }

    /// The expand/contract split around a rollout: with
    /// [`MigrationPhase::Expand`], applies the pending migrations up to (not
    /// including) the first pending contract migration — run it before the
    /// new version starts; with [`MigrationPhase::Contract`], applies
    /// everything pending — run it once the old version is scaled down.
    ///
    /// # Errors
    /// As [`migrate`](Self::migrate).
    #[tracing::instrument(skip(self))]
    pub async fn migrate_phase(&self, phase: MigrationPhase) -> Result<RunReport> {
        self.locked(|| async {
            let history = self.driver.history().await?;
            self.validate(&history)?;
            let expand = phase == MigrationPhase::Expand;
            let mut plan = self.plan_up_until(&history, None, expand)?;
            if !expand {
                self.add_repeatables(&mut plan, None).await?;
            }
            self.run(plan).await
        })
        .await
    }

    /// Reverts applied migrations above `to`, newest first, with their
    /// `.down.sql` files.
    ///
    /// # Errors
    /// As [`plan_down_to`](Self::plan_down_to) and [`migrate`](Self::migrate).
    #[tracing::instrument(skip(self))]
    pub async fn down(&self, to: Version) -> Result<RunReport> {
        self.locked(|| async {
            let history = self.driver.history().await?;
            self.validate(&history)?;
            let plan = self.plan_down(&history, to)?;
            self.run(plan).await
        })
        .await
    }

    /// Makes the history agree with the files: removes failed rows,
    /// realigns the checksums and names of changed files, removes rows whose
    /// file is gone. Use after fixing the database by hand.
    ///
    /// # Errors
    /// Driver errors; [`Error::Conflict`] when another runner holds the lock.
    #[tracing::instrument(skip(self))]
    pub async fn repair(&self) -> Result<RepairReport> {
        self.locked(|| async {
            let history = self.driver.history().await?;
            let mut report = RepairReport::default();
            for row in history.iter().filter(|r| !r.baseline) {
                match self.set.get(row.version) {
                    _ if !row.success => {
                        self.driver.delete_history(row.version).await?;
                        report.removed_failed.push(row.version);
                    }
                    None => {
                        self.driver.delete_history(row.version).await?;
                        report.removed_missing.push(row.version);
                    }
                    Some(m) if m.checksum() != row.checksum || m.name != row.name => {
                        let mut fixed = row.clone();
                        fixed.checksum = m.checksum().to_owned();
                        fixed.name = m.name.clone();
                        self.driver.put_history(&fixed).await?;
                        report.realigned.push(row.version);
                    }
                    Some(_) => {}
                }
            }
            for row in self.driver.repeatable_history().await? {
                if !row.success {
                    self.driver.delete_repeatable(&row.name).await?;
                    report.removed_failed_repeatables.push(row.name);
                }
            }
            info!(?report, "migration history repaired");
            Ok(report)
        })
        .await
    }

    /// Marks an existing database as being at `version`: migrations up to
    /// it are considered applied and never run.
    ///
    /// # Errors
    /// [`Error::Precondition`] when the history is not empty.
    #[tracing::instrument(skip(self))]
    pub async fn baseline(&self, version: Version) -> Result<()> {
        self.locked(|| async {
            let history = self.driver.history().await?;
            if !history.is_empty() {
                return Err(Error::precondition(format!(
                    "baseline needs an empty history; {} rows exist",
                    history.len()
                )));
            }
            let name = self
                .set
                .get(version)
                .map(|m| m.name.clone())
                .unwrap_or_else(|| "baseline".to_owned());
            self.driver
                .put_history(&AppliedMigration {
                    version,
                    name,
                    checksum: String::new(),
                    phase: MigrationPhase::Expand,
                    applied_at: SystemTime::now(),
                    duration: Duration::ZERO,
                    success: true,
                    baseline: true,
                })
                .await?;
            info!(%version, "baseline recorded");
            Ok(())
        })
        .await
    }

    /// Runs `f` under the run lock, with the history table in place.
    pub(crate) async fn locked<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.driver.lock().await?;
        let result = async {
            self.driver.ensure_history().await?;
            f().await
        }
        .await;
        if let Err(e) = self.driver.unlock().await {
            warn!(error = %e, "releasing the migration lock failed");
            if result.is_ok() {
                return Err(e);
            }
        }
        result
    }

    async fn run(&self, plan: Plan) -> Result<RunReport> {
        for f in &plan.lint.findings {
            warn!(finding = %f, "migration lint");
        }
        if plan.lint.has_errors() && !self.config.allow_lint_errors {
            let list: Vec<String> = plan.lint.errors().map(|f| f.to_string()).collect();
            return Err(Error::precondition(format!(
                "the zero-downtime lint found {} error(s); fix them or allow lint errors explicitly:\n{}",
                list.len(),
                list.join("\n")
            )));
        }
        let mut report = RunReport {
            direction: plan.direction,
            versions: Vec::new(),
            repeatables: Vec::new(),
            backup: None,
            lint: plan.lint.clone(),
        };
        if plan.steps.is_empty() && plan.repeatables.is_empty() {
            info!("nothing to migrate");
            return Ok(report);
        }
        report.backup = match &self.config.backup {
            BackupPolicy::Unset => {
                return Err(Error::precondition(
                    "no pre-migration backup configured: set a backup target, or disable the backup explicitly",
                ));
            }
            BackupPolicy::Disabled => None,
            BackupPolicy::To { target, prefix } => {
                let stamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let first = plan.steps.first().map(|s| s.version.dotted());
                let last = plan.steps.last().map(|s| s.version.dotted());
                let key = prefix.key(&format!(
                    "pre-migrate-{stamp}-V{}-V{}.dump",
                    first.unwrap_or_default(),
                    last.unwrap_or_default()
                ))?;
                let record = self.driver.backup(target.as_ref(), &key).await?;
                info!(key = %record.key, size = record.size, "pre-migration backup taken");
                Some(record)
            }
        };
        for planned in &plan.steps {
            let Some(m) = self.set.get(planned.version) else {
                return Err(Error::not_found(format!("migration {}", planned.version)));
            };
            let (script, kind) = match plan.direction {
                Direction::Up => (&m.up, StepKind::Up),
                Direction::Down => match &m.down {
                    Some(d) => (d, StepKind::Down),
                    None => {
                        return Err(Error::not_found(format!(
                            "down file {}__{}.down.sql",
                            m.version, m.name
                        )));
                    }
                },
            };
            let step = self.step(m, script, kind);
            match &script.no_transaction_reason {
                Some(reason) => {
                    info!(version = %m.version, file = %script.file, %reason, "running migration without a transaction: PostgreSQL refuses this statement inside a transaction block");
                }
                None => info!(version = %m.version, file = %script.file, "running migration"),
            }
            match self.driver.apply(&step).await {
                Ok(took) => {
                    info!(version = %m.version, file = %script.file, took_ms = took.as_millis() as u64, "migration done");
                    report.versions.push(m.version);
                }
                Err(failure) => {
                    return Err(self.handle_failure(m, &step, failure, &report).await);
                }
            }
        }
        for planned in &plan.repeatables {
            let Some(r) = self.set.repeatable(&planned.name) else {
                return Err(Error::not_found(format!(
                    "repeatable migration {}",
                    planned.name
                )));
            };
            let step = self.repeatable_step(r);
            info!(name = %r.name, file = %r.script.file, changed = planned.changed, "running repeatable migration");
            match self.driver.apply(&step).await {
                Ok(took) => {
                    info!(name = %r.name, took_ms = took.as_millis() as u64, "repeatable migration done");
                    report.repeatables.push(r.name.clone());
                }
                Err(failure) => {
                    return Err(self.repeatable_failure(r, failure, &report).await);
                }
            }
        }
        Ok(report)
    }

    /// The invariant tables a script's run is checked against: the
    /// configured ones minus those it declares it changes.
    pub(crate) fn invariants_of(&self, script: &super::Script) -> Vec<String> {
        self.config
            .invariant_tables
            .iter()
            .filter(|t| !script.directives.allow_data_change.contains(t))
            .cloned()
            .collect()
    }

    fn step(&self, m: &Migration, script: &super::Script, kind: StepKind) -> MigrationStep {
        self.script_step((m.version, &m.name, m.checksum(), m.phase()), script, kind)
    }

    /// The step for one script of the migration `(version, name,
    /// checksum, phase)`; down scripts are not checked against the
    /// invariant tables (undoing may rightly change data).
    pub(crate) fn script_step(
        &self,
        (version, name, checksum, phase): (Version, &str, &str, MigrationPhase),
        script: &super::Script,
        kind: StepKind,
    ) -> MigrationStep {
        MigrationStep {
            version,
            name: name.to_owned(),
            file: script.file.clone(),
            checksum: checksum.to_owned(),
            phase,
            kind,
            sql: script.sql.clone(),
            statements: script.statements().to_vec(),
            transactional: script.transactional(),
            verify: script.directives.verify.clone(),
            lock_timeout: self.config.lock_timeout,
            statement_timeout: self.config.statement_timeout,
            invariants: match kind {
                StepKind::Up | StepKind::Repeatable => self.invariants_of(script),
                StepKind::Down => Vec::new(),
            },
        }
    }

    async fn handle_failure(
        &self,
        m: &Migration,
        step: &MigrationStep,
        failure: super::StepError,
        report: &RunReport,
    ) -> Error {
        let done = if report.versions.is_empty() {
            "no earlier migration of this run was applied".to_owned()
        } else {
            format!(
                "earlier migrations of this run stay applied: {}",
                report
                    .versions
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let file = &step.file;
        let cause = failure.error;
        if failure.state == FailureState::RolledBack {
            warn!(version = %m.version, %file, error = %cause, "migration failed and was rolled back");
            return Error::backend_with(
                "migrate",
                format!("{file} failed and was rolled back, its changes undone ({done})"),
                cause,
            );
        }
        // Part of it committed: undo with the down file when going up.
        if step.kind == StepKind::Up
            && let Some(down) = &m.down
            && down.check_transaction_control().is_ok()
        {
            {
                let undo = self.step(m, down, StepKind::Down);
                match self.driver.apply(&undo).await {
                    Ok(_) => {
                        warn!(version = %m.version, %file, error = %cause, "migration failed part-way; reverted by its down file");
                        return Error::backend_with(
                            "migrate",
                            format!(
                                "{file} failed part-way and was reverted by {} ({done})",
                                down.file
                            ),
                            cause,
                        );
                    }
                    Err(e) => {
                        warn!(version = %m.version, error = %e.error, "down file failed too");
                    }
                }
            }
        }
        let row = AppliedMigration {
            version: m.version,
            name: m.name.clone(),
            checksum: m.checksum().to_owned(),
            phase: m.phase(),
            applied_at: SystemTime::now(),
            duration: Duration::ZERO,
            success: false,
            baseline: false,
        };
        if step.kind == StepKind::Up
            && let Err(e) = self.driver.put_history(&row).await
        {
            warn!(error = %e, "recording the failed migration failed");
        }
        let restore = restore_hint(report);
        warn!(version = %m.version, %file, error = %cause, %restore, "migration failed part-way and could not be reverted");
        Error::backend_with(
            "migrate",
            format!(
                "{file} failed part-way and could not be reverted; the database may be half-migrated ({done}); {restore}; then run repair"
            ),
            cause,
        )
    }
}

/// What to do about a database a failed migration left half-migrated.
pub(crate) fn restore_hint(report: &RunReport) -> String {
    match &report.backup {
        Some(b) => format!(
            "restore the pre-migration backup {} (download it from the backup target to <FILE>): {}",
            b.key, b.restore_command
        ),
        None => "no pre-migration backup was taken; restore from your own backups".to_owned(),
    }
}

/// A step of a plan; refuses a script that would end or nest the
/// transaction Atlas runs it in, before anything runs.
fn planned(m: &Migration, script: &super::Script, _direction: Direction) -> Result<PlannedStep> {
    script.check_transaction_control()?;
    Ok(PlannedStep {
        version: m.version,
        name: m.name.clone(),
        file: script.file.clone(),
        phase: m.phase(),
        transactional: script.transactional(),
    })
}
