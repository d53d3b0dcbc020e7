//! `atlas_migrate`: Atlas's reference migration tool for PostgreSQL.
//!
//! Shows the migration engine end to end: the files of a directory
//! (`V<version>__<name>.sql`, optional `.down.sql`), the history table, the
//! zero-downtime lint on every plan, the advisory lock, and the
//! pre-migration backup (`pg_dump` into a local directory through the
//! filesystem backup target).
//!
//! Run (needs the `postgres` feature and a PostgreSQL server):
//!
//! ```text
//! cargo run -p atlas-examples --features postgres --example atlas_migrate -- \
//!     --url postgres://postgres@127.0.0.1:5433/postgres --dir migrations \
//!     --backup-dir /var/tmp/atlas-backups  migrate [--to 3]
//! ```
//!
//! Commands: `status`, `plan [--to V]`, `lint`, `migrate [--to V]`,
//! `down --to V`, `repair`, `baseline --to V`, `import [--flyway-table T]`
//! (adopt a database Flyway migrated); `--help` explains each
//! (`atlas_migrate migrate --help`). `status`, `plan` and `lint` take
//! `--output json` for scripts.
//! Flyway folders run as published: versions such as `V1_1__x.sql` or
//! `V1.2.3__x.sql`, subfolders, `${name}` placeholders (`--placeholder
//! name=value`, repeated; `${flyway:user}`, `${flyway:database}`,
//! `${flyway:defaultSchema}` and `${flyway:table}` come from the
//! connection unless given), and files that cannot run in a transaction.
//! Options (before or after the command): `--url URL` (or `DATABASE_URL`),
//! `--dir DIR` (default `migrations`), `--backup-dir DIR` or `--no-backup`,
//! `--fail-fast` (do not wait for another runner's lock),
//! `--allow-lint-errors`, `--table NAME` (history table, default
//! `atlas_schema_history`), `--quiet`.
//! `migrate` and `down` show a spinner on stderr naming the step that runs
//! (the pre-migration backup, then each migration), when stderr is a
//! terminal and `--quiet` is not given.
//! Exit code: 0 on success, 1 on failure (or lint errors for `lint`), 2 on
//! bad usage.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atlas_core::backup::ObjectPrefix;
use atlas_examples::cli::{self, OutputFormat};
use atlas_migrate::{
    BackupPolicy, LintReport, LintSeverity, MigrationDriver, MigrationSet, Migrator,
    MigratorConfig, Plan, Version,
};
use atlas_storage::FsTarget;
use atlas_storage::postgres::{LockWait, PostgresDriver};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;

/// Versioned, checksummed, linted SQL migrations for PostgreSQL, with a
/// pre-migration backup (Atlas's migration engine, `atlas_migrate`).
///
/// Migrations are files `V<version>__<name>.sql` in --dir and its
/// subfolders (version: numbers separated by `.` or `_`, as Flyway names
/// them), each with an optional `V<version>__<name>.down.sql`; their
/// history is a table in the database. Files that look like migrations but
/// are not run are named in warnings on stderr.
#[derive(Debug, Parser)]
#[command(
    name = "atlas_migrate",
    version,
    args_override_self = true,
    after_help = "Exit status: 0 success, 1 failure (or lint errors for `lint`), 2 bad usage."
)]
struct Cli {
    /// The database, e.g. postgres://user@host:5432/db (a password is best
    /// left to PGPASSWORD or ~/.pgpass rather than the command line).
    #[arg(
        long,
        value_name = "URL",
        global = true,
        help_heading = "Global options",
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    url: Option<String>,

    /// The directory holding the migration files.
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        help_heading = "Global options",
        default_value = "migrations"
    )]
    dir: PathBuf,

    /// Take the pre-migration backup (pg_dump) into this directory before
    /// `migrate` or `down` changes anything (they need this or
    /// --no-backup: skipping the backup is always an explicit choice).
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        help_heading = "Global options",
        conflicts_with = "no_backup"
    )]
    backup_dir: Option<PathBuf>,

    /// Run `migrate` and `down` without a pre-migration backup.
    #[arg(long, global = true, help_heading = "Global options")]
    no_backup: bool,

    /// Fail at once when another runner holds the migration lock, instead
    /// of waiting for it.
    #[arg(long, global = true, help_heading = "Global options")]
    fail_fast: bool,

    /// Run even when the zero-downtime lint reports errors.
    #[arg(long, global = true, help_heading = "Global options")]
    allow_lint_errors: bool,

    /// The history table [default: atlas_schema_history].
    #[arg(
        long,
        value_name = "NAME",
        global = true,
        help_heading = "Global options"
    )]
    table: Option<String>,

    /// A value for the `${NAME}` placeholder in the migration files, as
    /// NAME=VALUE; repeat for more. A placeholder without a value is an
    /// error naming it and its file.
    #[arg(
        long = "placeholder",
        value_name = "NAME=VALUE",
        global = true,
        help_heading = "Global options",
        value_parser = parse_placeholder
    )]
    placeholders: Vec<(String, String)>,

    /// Leave `${…}` text in the files as it is (Flyway's
    /// placeholderReplacement=false).
    #[arg(long, global = true, help_heading = "Global options")]
    no_placeholder_replacement: bool,

    /// Draw no progress on stderr (progress is also off when stderr is not
    /// a terminal).
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every migration and where it stands (applied, pending, drift…).
    Status {
        #[command(flatten)]
        output: Output,
    },
    /// Show what `migrate` would run, and the lint over it; changes nothing.
    Plan {
        /// Plan up to this version (default: the newest).
        #[arg(long, value_name = "V")]
        to: Option<Version>,
        #[command(flatten)]
        output: Output,
    },
    /// Lint every migration file for zero-downtime rules; needs no
    /// database.
    Lint {
        #[command(flatten)]
        output: Output,
    },
    /// Apply the pending migrations, after the pre-migration backup.
    Migrate {
        /// Apply up to this version (default: the newest).
        #[arg(long, value_name = "V")]
        to: Option<Version>,
    },
    /// Revert the migrations above a version with their down files, after
    /// the pre-migration backup.
    Down {
        /// Revert down to this version (it stays applied).
        #[arg(long, value_name = "V")]
        to: Version,
    },
    /// Remove failed history rows, realign checksums with edited files and
    /// drop rows whose file is gone.
    Repair,
    /// Record that the database already has everything up to a version,
    /// so those migrations never run here (only on an empty history).
    Baseline {
        /// The version the database is at.
        #[arg(long, value_name = "V")]
        to: Version,
    },
    /// Adopt a database Flyway migrated: check every row of its history
    /// table against the files by Flyway's checksum and record them as
    /// applied (only on an empty history; nothing is recorded on any
    /// mismatch or failed row), so `migrate` runs only what is new.
    Import {
        /// Flyway's history table.
        #[arg(long, value_name = "TABLE", default_value = atlas_migrate::FLYWAY_HISTORY_TABLE)]
        flyway_table: String,
    },
}

fn parse_placeholder(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{arg}` must be NAME=VALUE")),
    }
}

/// The placeholder options: the command line's values, plus Flyway's
/// connection built-ins from the URL and history table unless given.
fn source_options(cli: &Cli) -> atlas_migrate::SourceOptions {
    let mut options = atlas_migrate::SourceOptions {
        placeholder_replacement: !cli.no_placeholder_replacement,
        ..Default::default()
    };
    if let Some(config) = cli
        .url
        .as_deref()
        .and_then(|u| u.parse::<tokio_postgres::Config>().ok())
    {
        if let Some(user) = config.get_user() {
            options
                .placeholders
                .insert("flyway:user".to_owned(), user.to_owned());
        }
        if let Some(db) = config.get_dbname() {
            options
                .placeholders
                .insert("flyway:database".to_owned(), db.to_owned());
        }
    }
    options
        .placeholders
        .insert("flyway:defaultSchema".to_owned(), "public".to_owned());
    options.placeholders.insert(
        "flyway:table".to_owned(),
        cli.table
            .clone()
            .unwrap_or_else(|| "atlas_schema_history".to_owned()),
    );
    for (name, value) in &cli.placeholders {
        options.placeholders.insert(name.clone(), value.clone());
    }
    options
}

/// `--output`, for the verbs whose result scripts read.
#[derive(Debug, Args)]
struct Output {
    /// Print the result as text, or as one JSON document on stdout.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

fn print_plan(plan: &Plan) {
    if plan.steps.is_empty() {
        println!("nothing to do");
    }
    for step in &plan.steps {
        println!(
            "{:?} {} {} ({}, {})",
            plan.direction,
            step.version,
            step.file,
            step.phase,
            if step.transactional {
                "in a transaction"
            } else {
                "no transaction"
            }
        );
    }
    for r in &plan.repeatables {
        println!(
            "Repeatable {} {} ({}, {})",
            r.name,
            r.file,
            if r.changed { "changed" } else { "new" },
            if r.transactional {
                "in a transaction"
            } else {
                "no transaction"
            }
        );
    }
    print_lint(&plan.lint);
}

fn print_lint(report: &LintReport) {
    for finding in &report.findings {
        println!("{finding}");
    }
    let errors = report.errors().count();
    let warnings = report
        .findings
        .iter()
        .filter(|f| f.severity == LintSeverity::Warning)
        .count();
    println!("lint: {errors} error(s), {warnings} warning(s)");
}

/// The lint as `--output json` prints it.
#[derive(Debug, Serialize)]
struct LintJson {
    errors: usize,
    warnings: usize,
    findings: Vec<FindingJson>,
}

#[derive(Debug, Serialize)]
struct FindingJson {
    severity: String,
    rule: String,
    file: String,
    line: usize,
    message: String,
    help: Option<String>,
    fix: Option<String>,
}

impl LintJson {
    fn of(report: &LintReport) -> Self {
        LintJson {
            errors: report.errors().count(),
            warnings: report
                .findings
                .iter()
                .filter(|f| f.severity == LintSeverity::Warning)
                .count(),
            findings: report
                .findings
                .iter()
                .map(|f| FindingJson {
                    severity: f.severity.to_string(),
                    rule: f.rule.clone(),
                    file: f.file.clone(),
                    line: f.line,
                    message: f.message.clone(),
                    help: f.help.clone(),
                    fix: f.fix.clone(),
                })
                .collect(),
        }
    }
}

/// `plan --output json`.
#[derive(Debug, Serialize)]
struct PlanJson {
    direction: String,
    steps: Vec<StepJson>,
    /// Repeatable migrations that run after the steps, by name.
    repeatables: Vec<String>,
    lint: LintJson,
}

#[derive(Debug, Serialize)]
struct StepJson {
    version: String,
    name: String,
    file: String,
    phase: String,
    transactional: bool,
}

/// One line of `status --output json` (version `R` for a repeatable
/// migration).
#[derive(Debug, Serialize)]
struct StatusJson {
    version: String,
    name: String,
    state: String,
    applied_at: Option<String>,
}

async fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let set = MigrationSet::load_with(&cli.dir, &source_options(&cli))?;
    for warning in set.warnings() {
        eprintln!("atlas_migrate: warning: {warning}");
    }
    let backup = match (&cli.backup_dir, cli.no_backup) {
        (Some(_), true) => return Err("--backup-dir and --no-backup exclude each other".into()),
        (Some(dir), false) => BackupPolicy::To {
            target: Arc::new(FsTarget::new(dir)?),
            prefix: ObjectPrefix::new("atlas-migrate/")?,
        },
        (None, true) => BackupPolicy::Disabled,
        (None, false) => BackupPolicy::Unset,
    };
    let config = MigratorConfig {
        allow_lint_errors: cli.allow_lint_errors,
        backup,
        ..MigratorConfig::default()
    };
    if let Command::Lint { output } = &cli.command {
        // The lint needs no database.
        let migrator = Migrator::new(Offline, set).with_config(config);
        let report = migrator.lint();
        match output.output {
            OutputFormat::Text => print_lint(&report),
            OutputFormat::Json => cli::print_json(&LintJson::of(&report))?,
        }
        return Ok(!report.has_errors());
    }
    let url = cli.url.clone().ok_or("--url or DATABASE_URL is required")?;
    let mut builder = PostgresDriver::builder(url);
    if let Some(table) = &cli.table {
        builder = builder.with_table(table);
    }
    if cli.fail_fast {
        builder = builder.with_lock_wait(LockWait::FailFast);
    }
    // Only the verbs that change the database take long enough to show
    // what they are doing.
    let bar = match &cli.command {
        Command::Migrate { .. } => cli::spinner(cli.quiet, "migrate", "connecting"),
        Command::Down { .. } => cli::spinner(cli.quiet, "down", "connecting"),
        _ => ProgressBar::hidden(),
    };
    let driver = match builder.connect().await {
        Ok(driver) => Shown::new(driver, bar.clone()),
        Err(e) => {
            // Clear the spinner so that the error starts its own line.
            bar.finish_and_clear();
            return Err(e.into());
        }
    };
    let migrator = Migrator::new(driver, set).with_config(config);
    match &cli.command {
        Command::Status { output } => {
            let rfc3339 =
                |at: std::time::SystemTime| humantime::format_rfc3339_seconds(at).to_string();
            // Versioned migrations, then the repeatable ones (version `R`).
            let mut lines: Vec<StatusJson> = migrator
                .status()
                .await?
                .iter()
                .map(|s| StatusJson {
                    version: s.version.to_string(),
                    name: s.name.clone(),
                    state: format!("{:?}", s.state),
                    applied_at: s.applied.as_ref().map(|a| rfc3339(a.applied_at)),
                })
                .collect();
            lines.extend(
                migrator
                    .repeatable_status()
                    .await?
                    .iter()
                    .map(|r| StatusJson {
                        version: "R".to_owned(),
                        name: r.name.clone(),
                        state: format!("{:?}", r.state),
                        applied_at: r.applied.as_ref().map(|a| rfc3339(a.applied_at)),
                    }),
            );
            if output.output == OutputFormat::Json {
                cli::print_json(&lines)?;
                return Ok(true);
            }
            for line in lines {
                println!(
                    "{:<8} {:<30} {} {}",
                    line.version,
                    line.name,
                    line.state,
                    line.applied_at.unwrap_or_default()
                );
            }
        }
        Command::Plan { to, output } => {
            let plan = migrator.plan(*to).await?;
            match output.output {
                OutputFormat::Text => print_plan(&plan),
                OutputFormat::Json => cli::print_json(&PlanJson {
                    direction: format!("{:?}", plan.direction),
                    steps: plan
                        .steps
                        .iter()
                        .map(|s| StepJson {
                            version: s.version.to_string(),
                            name: s.name.clone(),
                            file: s.file.clone(),
                            phase: s.phase.to_string(),
                            transactional: s.transactional,
                        })
                        .collect(),
                    repeatables: plan.repeatables.iter().map(|r| r.name.clone()).collect(),
                    lint: LintJson::of(&plan.lint),
                })?,
            }
        }
        Command::Migrate { to } => {
            let result = migrator.migrate(*to).await;
            bar.finish_and_clear();
            let report = result?;
            print_lint(&report.lint);
            if let Some(b) = &report.backup {
                println!("pre-migration backup: {} ({} bytes)", b.key, b.size);
            }
            println!("applied: {}", list(&report.versions));
            if !report.repeatables.is_empty() {
                println!("repeatable: {}", report.repeatables.join(", "));
            }
        }
        Command::Down { to } => {
            let result = migrator.down(*to).await;
            bar.finish_and_clear();
            let report = result?;
            if let Some(b) = &report.backup {
                println!("pre-migration backup: {} ({} bytes)", b.key, b.size);
            }
            println!("reverted: {}", list(&report.versions));
        }
        Command::Repair => println!("{:?}", migrator.repair().await?),
        Command::Baseline { to } => {
            migrator.baseline(*to).await?;
            println!("baseline recorded at {to}");
        }
        Command::Import { flyway_table } => {
            let report = migrator.import_flyway(flyway_table).await?;
            if let Some(b) = report.baseline {
                println!("baseline: {b}");
            }
            println!("imported from {flyway_table}: {}", list(&report.imported));
            if !report.repeatables.is_empty() {
                println!("repeatable: {}", report.repeatables.join(", "));
            }
        }
        Command::Lint { .. } => unreachable!("handled above, without a database"),
    }
    Ok(true)
}

/// A driver that says on a spinner what the migrator is doing: waiting for
/// the lock, the pre-migration backup, then each migration as it runs.
/// The engine has no progress callback of its own; every call it makes
/// goes through its driver, so wrapping the driver is enough.
struct Shown<D> {
    inner: D,
    bar: ProgressBar,
    steps: AtomicU64,
}

impl<D> Shown<D> {
    fn new(inner: D, bar: ProgressBar) -> Self {
        Shown {
            inner,
            bar,
            steps: AtomicU64::new(0),
        }
    }
}

impl<D: fmt::Debug> fmt::Debug for Shown<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shown")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<D: MigrationDriver> MigrationDriver for Shown<D> {
    async fn lock(&self) -> atlas_core::Result<()> {
        self.bar.set_message("waiting for the migration lock");
        let result = self.inner.lock().await;
        self.bar.set_message("reading the history");
        result
    }
    async fn unlock(&self) -> atlas_core::Result<()> {
        self.inner.unlock().await
    }
    async fn ensure_history(&self) -> atlas_core::Result<()> {
        self.inner.ensure_history().await
    }
    async fn history(&self) -> atlas_core::Result<Vec<atlas_migrate::AppliedMigration>> {
        self.inner.history().await
    }
    async fn apply(
        &self,
        step: &atlas_migrate::MigrationStep,
    ) -> Result<Duration, atlas_migrate::StepError> {
        let n = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar
            .set_message(format!("step {n}: {} ({})", step.file, step.phase));
        self.inner.apply(step).await
    }
    async fn put_history(&self, row: &atlas_migrate::AppliedMigration) -> atlas_core::Result<()> {
        self.inner.put_history(row).await
    }
    async fn delete_history(&self, version: Version) -> atlas_core::Result<()> {
        self.inner.delete_history(version).await
    }
    async fn flyway_history(
        &self,
        table: &str,
    ) -> atlas_core::Result<Vec<atlas_migrate::FlywayHistoryRow>> {
        self.inner.flyway_history(table).await
    }
    async fn repeatable_history(
        &self,
    ) -> atlas_core::Result<Vec<atlas_migrate::AppliedRepeatable>> {
        self.inner.repeatable_history().await
    }
    async fn put_repeatable(
        &self,
        row: &atlas_migrate::AppliedRepeatable,
    ) -> atlas_core::Result<()> {
        self.inner.put_repeatable(row).await
    }
    async fn delete_repeatable(&self, name: &str) -> atlas_core::Result<()> {
        self.inner.delete_repeatable(name).await
    }
    async fn backup(
        &self,
        target: &dyn atlas_core::backup::BackupTarget,
        key: &atlas_core::backup::ObjectKey,
    ) -> atlas_core::Result<atlas_core::migration::BackupRecord> {
        self.bar
            .set_message(format!("pre-migration backup (pg_dump) to {key}"));
        self.inner.backup(target, key).await
    }
}

fn list(versions: &[Version]) -> String {
    if versions.is_empty() {
        return "none".to_owned();
    }
    versions
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A driver for commands that never touch the database (`lint`).
#[derive(Debug)]
struct Offline;

#[async_trait::async_trait]
impl atlas_migrate::MigrationDriver for Offline {
    async fn lock(&self) -> atlas_core::Result<()> {
        Err(offline())
    }
    async fn unlock(&self) -> atlas_core::Result<()> {
        Ok(())
    }
    async fn ensure_history(&self) -> atlas_core::Result<()> {
        Err(offline())
    }
    async fn history(&self) -> atlas_core::Result<Vec<atlas_migrate::AppliedMigration>> {
        Err(offline())
    }
    async fn apply(
        &self,
        _step: &atlas_migrate::MigrationStep,
    ) -> Result<std::time::Duration, atlas_migrate::StepError> {
        Err(atlas_migrate::StepError::rolled_back(offline()))
    }
    async fn put_history(&self, _row: &atlas_migrate::AppliedMigration) -> atlas_core::Result<()> {
        Err(offline())
    }
    async fn delete_history(&self, _version: Version) -> atlas_core::Result<()> {
        Err(offline())
    }
}

fn offline() -> atlas_core::Error {
    atlas_core::Error::precondition("this command runs without a database")
}

fn main() -> ExitCode {
    atlas_examples::main_support::init_tracing("warn");
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("atlas_migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("atlas_migrate: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("atlas_migrate").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_documented_invocation_parses_as_before() {
        let cli = parse(&[
            "--url",
            "postgres://postgres@127.0.0.1:5433/postgres",
            "--dir",
            "migrations",
            "--backup-dir",
            "/var/tmp/atlas-backups",
            "migrate",
            "--to",
            "3",
        ])
        .unwrap();
        assert_eq!(
            cli.url.as_deref(),
            Some("postgres://postgres@127.0.0.1:5433/postgres")
        );
        assert_eq!(cli.dir, PathBuf::from("migrations"));
        assert_eq!(
            cli.backup_dir.as_deref(),
            Some(std::path::Path::new("/var/tmp/atlas-backups"))
        );
        let Command::Migrate { to } = cli.command else {
            panic!("not migrate")
        };
        assert_eq!(to, Some("3".parse().unwrap()));
    }

    #[test]
    fn every_verb_parses_with_its_options() {
        let cli = parse(&[
            "--no-backup",
            "--fail-fast",
            "--table",
            "h",
            "down",
            "--to",
            "2",
        ])
        .unwrap();
        assert!(cli.no_backup && cli.fail_fast);
        assert_eq!(cli.table.as_deref(), Some("h"));
        assert!(matches!(cli.command, Command::Down { .. }));
        assert!(matches!(
            parse(&["baseline", "--to", "5"]).unwrap().command,
            Command::Baseline { .. }
        ));
        let Command::Plan { to, output } = parse(&["plan", "--output", "json"]).unwrap().command
        else {
            panic!("not plan")
        };
        assert_eq!((to, output.output), (None, OutputFormat::Json));
        // Global options may follow the verb; the directory defaults.
        let cli = parse(&["lint", "--allow-lint-errors", "-q"]).unwrap();
        assert!(cli.allow_lint_errors && cli.quiet);
        assert_eq!(cli.dir, PathBuf::from("migrations"));
        assert!(matches!(
            parse(&["status"]).unwrap().command,
            Command::Status { .. }
        ));
        assert!(matches!(
            parse(&["repair"]).unwrap().command,
            Command::Repair
        ));
        let cli = parse(&[
            "--placeholder",
            "schema=app",
            "--placeholder",
            "x=a=b",
            "import",
        ])
        .unwrap();
        assert_eq!(
            cli.placeholders,
            vec![
                ("schema".to_owned(), "app".to_owned()),
                ("x".to_owned(), "a=b".to_owned())
            ]
        );
        let Command::Import { flyway_table } = cli.command else {
            panic!("not import")
        };
        assert_eq!(flyway_table, "flyway_schema_history");
        let options = source_options(&parse(&["--url", "postgres://me@h/db1", "status"]).unwrap());
        assert_eq!(options.placeholders["flyway:user"], "me");
        assert_eq!(options.placeholders["flyway:database"], "db1");
    }

    #[test]
    fn bad_usage_is_refused_by_the_parser() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).map(|_| ()).unwrap_err().kind();
        assert_eq!(kind(&["down"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["baseline"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["migrate", "--to", "x"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["--backup-dir", "d", "--no-backup", "migrate"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["status", "--to", "3"]), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["frobnicate"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            kind(&["--placeholder", "novalue", "status"]),
            ErrorKind::ValueValidation
        );
    }
}
