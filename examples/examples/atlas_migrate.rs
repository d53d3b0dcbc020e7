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
//! `down --to V`, `repair`, `baseline --to V`.
//! Options: `--url URL` (or `DATABASE_URL`), `--dir DIR` (default
//! `migrations`), `--backup-dir DIR` or `--no-backup`, `--fail-fast` (do
//! not wait for another runner's lock), `--allow-lint-errors`,
//! `--table NAME` (history table, default `atlas_schema_history`).
//! Exit code: 0 on success, 1 on failure, 2 on bad usage.

use std::process::ExitCode;
use std::sync::Arc;

use atlas_core::backup::ObjectPrefix;
use atlas_migrate::{
    BackupPolicy, LintSeverity, MigrationSet, Migrator, MigratorConfig, Plan, Version,
};
use atlas_storage::FsTarget;
use atlas_storage::postgres::{LockWait, PostgresDriver};

const USAGE: &str = "usage: atlas_migrate [--url URL] [--dir DIR] [--backup-dir DIR | --no-backup] \
[--fail-fast] [--allow-lint-errors] [--table NAME] \
<status | plan [--to V] | lint | migrate [--to V] | down --to V | repair | baseline --to V>";

#[derive(Debug, Default)]
struct Args {
    url: Option<String>,
    dir: String,
    backup_dir: Option<String>,
    no_backup: bool,
    fail_fast: bool,
    allow_lint_errors: bool,
    table: Option<String>,
    command: Option<String>,
    to: Option<Version>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: "migrations".to_owned(),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => args.url = Some(value("--url")?),
            "--dir" => args.dir = value("--dir")?,
            "--backup-dir" => args.backup_dir = Some(value("--backup-dir")?),
            "--table" => args.table = Some(value("--table")?),
            "--to" => {
                let v = value("--to")?;
                args.to = Some(v.parse().map_err(|e| format!("--to: {e}"))?);
            }
            "--no-backup" => args.no_backup = true,
            "--fail-fast" => args.fail_fast = true,
            "--allow-lint-errors" => args.allow_lint_errors = true,
            "-h" | "--help" => return Err(String::new()),
            cmd if !cmd.starts_with('-') && args.command.is_none() => {
                args.command = Some(cmd.to_owned());
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if args.url.is_none() {
        args.url = std::env::var("DATABASE_URL").ok();
    }
    Ok(args)
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
    print_lint(&plan.lint);
}

fn print_lint(report: &atlas_migrate::LintReport) {
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

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let command = args.command.clone().ok_or("no command given")?;
    let set = MigrationSet::load(&args.dir)?;
    let backup = match (&args.backup_dir, args.no_backup) {
        (Some(_), true) => return Err("--backup-dir and --no-backup exclude each other".into()),
        (Some(dir), false) => BackupPolicy::To {
            target: Arc::new(FsTarget::new(dir)?),
            prefix: ObjectPrefix::new("atlas-migrate/")?,
        },
        (None, true) => BackupPolicy::Disabled,
        (None, false) => BackupPolicy::Unset,
    };
    let config = MigratorConfig {
        allow_lint_errors: args.allow_lint_errors,
        backup,
        ..MigratorConfig::default()
    };
    if command == "lint" {
        // The lint needs no database.
        let migrator = Migrator::new(Offline, set).with_config(config);
        let report = migrator.lint();
        print_lint(&report);
        return Ok(!report.has_errors());
    }
    let url = args
        .url
        .clone()
        .ok_or("--url or DATABASE_URL is required")?;
    let mut builder = PostgresDriver::builder(url);
    if let Some(table) = &args.table {
        builder = builder.with_table(table);
    }
    if args.fail_fast {
        builder = builder.with_lock_wait(LockWait::FailFast);
    }
    let migrator = Migrator::new(builder.connect().await?, set).with_config(config);
    match command.as_str() {
        "status" => {
            for s in migrator.status().await? {
                let when = s
                    .applied
                    .as_ref()
                    .map(|a| humantime::format_rfc3339_seconds(a.applied_at).to_string())
                    .unwrap_or_default();
                println!(
                    "{:<8} {:<30} {:?} {when}",
                    s.version.to_string(),
                    s.name,
                    s.state
                );
            }
        }
        "plan" => print_plan(&migrator.plan(args.to).await?),
        "migrate" => {
            let report = migrator.migrate(args.to).await?;
            print_lint(&report.lint);
            if let Some(b) = &report.backup {
                println!("pre-migration backup: {} ({} bytes)", b.key, b.size);
            }
            println!("applied: {}", list(&report.versions));
        }
        "down" => {
            let to = args.to.ok_or("down needs --to V")?;
            let report = migrator.down(to).await?;
            if let Some(b) = &report.backup {
                println!("pre-migration backup: {} ({} bytes)", b.key, b.size);
            }
            println!("reverted: {}", list(&report.versions));
        }
        "repair" => println!("{:?}", migrator.repair().await?),
        "baseline" => {
            let to = args.to.ok_or("baseline needs --to V")?;
            migrator.baseline(to).await?;
            println!("baseline recorded at {to}");
        }
        other => return Err(format!("unknown command `{other}`").into()),
    }
    Ok(true)
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("atlas_migrate: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
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
    match rt.block_on(run(args)) {
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
