//! The PostgreSQL verbs of `atlas_backup` (feature `postgres`): the wiring
//! of `atlas_backup::pitr` (repository side) to
//! `atlas_storage::postgres::pitr` (PostgreSQL side).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use atlas_backup::pitr::{
    BASE_FILE, BaseBackupInfo, BaseBackupSource, Lsn, PitrCatalog, RecoveryTarget, RestorePlan,
    RestorePointInfo, record_restore_point,
};
use atlas_backup::repo::{BackupKind, BackupOptions, MirrorSet, Repository};
use atlas_backup::schedule::{PointInTimeJob, WalSwitched, job_fn, switcher_fn};
use atlas_examples::main_support::ProgramResult;
use atlas_storage::postgres::pitr::{self as pg, PgConnection, PgServer, PgTools, RecoveryReport};
use clap::Args;
use futures::FutureExt;

use super::{Cli, Failure, mirror_policy, open_all};

/// `pg-backup`.
#[derive(Debug, Args)]
pub(crate) struct PgBackupArgs {
    /// The server (URL or key=value string); default: libpq's environment
    /// (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
    #[arg(long, value_name = "DSN")]
    dsn: Option<String>,
}

/// `pg-switch-wal`.
#[derive(Debug, Args)]
pub(crate) struct PgSwitchWalArgs {
    /// The server (URL or key=value string); default: libpq's environment.
    #[arg(long, value_name = "DSN")]
    dsn: Option<String>,
    /// How long to wait for the archiver (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn connection(dsn: Option<&str>) -> Result<PgConnection, Failure> {
    Ok(match dsn {
        Some(d) => PgConnection::from_dsn(d)?,
        None => PgConnection::from_env(),
    })
}

pub(crate) async fn pg_switch_wal(args: &PgSwitchWalArgs) -> ProgramResult {
    let client = connection(args.dsn.as_deref())?.connect().await?;
    let client = std::sync::Arc::new(client);
    let timeout = args.timeout;
    // The same job the backup scheduler runs every 15 minutes, run once.
    let shared = std::sync::Arc::clone(&client);
    let job = PointInTimeJob::new(
        switcher_fn(move || {
            let client = std::sync::Arc::clone(&shared);
            async move {
                let switch = pg::switch_wal(&client, timeout).await?;
                let status = pg::archiver_status(&client).await?;
                Ok(WalSwitched::new(switch.segment, status.last_archived_age))
            }
        }),
        job_fn(|_run| async { Ok(()) }),
    );
    let report = job.switch_now().await?;
    let status = pg::archiver_status(&client).await?;
    println!(
        "segment {} archived after {:.3} s; newest archived WAL {} ({:.1} s old), {} archive failures",
        report.switched.segment,
        report.duration.as_secs_f64(),
        status.last_archived_wal.as_deref().unwrap_or("none"),
        report
            .switched
            .newest_archived_age
            .unwrap_or_default()
            .as_secs_f64(),
        status.failed_count
    );
    Ok(true)
}

/// `pg-restore-point`.
#[derive(Debug, Args)]
pub(crate) struct PgRestorePointArgs {
    /// The name (at most 63 bytes); restore to it with
    /// `pg-restore --target-name NAME`.
    name: String,
    /// The server (URL or key=value string); default: libpq's environment.
    #[arg(long, value_name = "DSN")]
    dsn: Option<String>,
    /// Do not switch the WAL segment afterwards (the point is then
    /// restorable only once the segment holding it has been archived).
    #[arg(long)]
    no_switch_wal: bool,
    /// How long to wait for the archiver after the switch.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub(crate) async fn pg_restore_point(cli: &Cli, args: &PgRestorePointArgs) -> ProgramResult {
    atlas_backup::pitr::check_restore_point_name(&args.name)?;
    let set = MirrorSet::new(open_all(cli).await?, mirror_policy(cli))?;
    let client = connection(args.dsn.as_deref())?.connect().await?;
    let made = pg::create_restore_point(&client, &args.name).await?;
    let info = RestorePointInfo::new(
        made.name,
        Lsn(made.lsn),
        made.timeline,
        made.system_identifier,
        made.time,
    )?;
    let id = record_restore_point(&set, &info).await?;
    print!(
        "restore point {:?} at {} (timeline {}) recorded as {}",
        info.name,
        info.lsn,
        info.timeline,
        id.short()
    );
    if args.no_switch_wal {
        println!("; restorable once its WAL segment is archived");
    } else {
        let switch = pg::switch_wal(&client, args.timeout).await?;
        println!(
            "; segment {} archived after {:.3} s",
            switch.segment,
            switch.waited.as_secs_f64()
        );
    }
    Ok(true)
}

/// Where recovery stops (one of them; default the end of the archive).
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// Recover up to this moment (RFC 3339, e.g. 2026-12-05T05:30:00Z).
    #[arg(long, value_name = "TIME", group = "target")]
    target_time: Option<String>,
    /// Recover up to this WAL position (X/Y).
    #[arg(long, value_name = "LSN", group = "target")]
    target_lsn: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target")]
    target_name: Option<String>,
    /// Recover to the end of the archive (the default).
    #[arg(value_parser = ["latest"], group = "target")]
    latest: Option<String>,
}

/// `pg-restore`.
#[derive(Debug, Args)]
pub(crate) struct PgRestoreArgs {
    /// The data directory to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pgdata: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    /// The port the restored server listens on (127.0.0.1).
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// Leave the promoted server running (default: stop it cleanly).
    #[arg(long)]
    keep_running: bool,
    /// Keep the restored cluster's archive_command (default: archiving off,
    /// so the new timeline is not pushed into this archive).
    #[arg(long)]
    keep_archiving: bool,
}

/// `pg-verify`.
#[derive(Debug, Args)]
pub(crate) struct PgVerifyArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// A check: SQL whose first column of its first row must be true;
    /// repeat for several.
    #[arg(long = "sql", value_name = "QUERY")]
    checks: Vec<String>,
}

fn parse_time(text: &str) -> Result<SystemTime, Failure> {
    let ts: jiff::Timestamp = text
        .parse()
        .map_err(|e| format!("--target-time {text:?} is not an RFC 3339 time: {e}"))?;
    let nanos = u64::try_from(ts.as_nanosecond())
        .map_err(|_| format!("--target-time {text:?} lies before 1970"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

impl TargetArgs {
    fn target(&self) -> Result<RecoveryTarget, Failure> {
        Ok(
            match (&self.target_time, &self.target_lsn, &self.target_name) {
                (Some(t), _, _) => RecoveryTarget::Time(parse_time(t)?),
                (_, Some(l), _) => RecoveryTarget::Lsn(l.parse::<Lsn>()?),
                (_, _, Some(n)) => RecoveryTarget::Name(n.clone()),
                _ => RecoveryTarget::Latest,
            },
        )
    }
}

pub(crate) async fn pg_backup(cli: &Cli, args: &PgBackupArgs) -> ProgramResult {
    let conn = connection(args.dsn.as_deref())?;
    let tools = PgTools::discover()?;
    let set = MirrorSet::new(open_all(cli).await?, mirror_policy(cli))?;
    let run = pg::start_base_backup(&tools, &conn).await?;
    let finished = run
        .finished
        .map(|r| {
            let r = r?;
            BaseBackupInfo::new(
                r.system_identifier,
                r.timeline,
                Lsn(r.start_lsn),
                Lsn(r.stop_lsn),
                r.stop_time,
            )
        })
        .boxed();
    let options = BackupOptions::default().with_kind(BackupKind::PointInTime);
    let report = set
        .backup(BaseBackupSource::new(run.body, finished), options)
        .await?;
    let info = BaseBackupInfo::from_snapshot(&report.snapshot)?;
    println!(
        "base backup {} ({} bytes, {} new): system {}, timeline {}, WAL {} to {}",
        report.snapshot.id.short(),
        report.snapshot.totals.bytes,
        report.snapshot.totals.new_bytes,
        info.system_identifier,
        info.timeline,
        info.start_lsn,
        info.stop_lsn
    );
    Ok(true)
}

/// Single-quoted for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The restore_command that runs this program's `wal-fetch` against the
/// same repositories (the passphrase reaches it through the server's
/// environment or the same --password-file, never the configuration).
fn restore_command(cli: &Cli) -> Result<String, Failure> {
    let exe = std::env::current_exe()?;
    let mut words = vec![sh_quote(&exe.display().to_string())];
    for url in &cli.repos {
        words.push("--repo".into());
        words.push(sh_quote(&url.to_string()));
    }
    if let Some(f) = &cli.password_file {
        words.push("--password-file".into());
        words.push(sh_quote(&f.display().to_string()));
    }
    words.extend(["--quiet", "wal-fetch", "%f", "%p"].map(String::from));
    Ok(words.join(" "))
}

/// Plans, unpacks, verifies and recovers into `pgdata`; the server is left
/// running for the caller.
async fn restore_into(
    cli: &Cli,
    target: RecoveryTarget,
    pgdata: &Path,
    port: u16,
    keep_archiving: bool,
) -> Result<(PgServer, RestorePlan, RecoveryReport), Failure> {
    let repos = open_all(cli).await?;
    let catalog = PitrCatalog::load(&repos[0]).await?;
    // Every check on the target happens here, before anything is written.
    let plan = RestorePlan::new(&catalog, target)?;
    let settings = plan.recovery_settings(&restore_command(cli)?, keep_archiving)?;
    let tools = PgTools::discover()?;
    let t0 = Instant::now();
    let (_, body) = repos[0]
        .restore_file_stream(&plan.base.snapshot.to_hex(), BASE_FILE)
        .await?;
    let bytes = pg::unpack_base_backup(&tools, body, pgdata).await?;
    let unpacked = t0.elapsed();
    pg::verify_base_backup(&tools, pgdata).await?;
    let verified = t0.elapsed() - unpacked;
    pg::prepare_recovery(pgdata, &settings).await?;
    let server = PgServer::start(&tools, pgdata, port, "").await?;
    let report = server
        .wait_recovery_end(Duration::from_secs(24 * 3600))
        .await?;
    println!(
        "phases: base backup read and unpacked {:.1} s ({:.0} MiB), pg_verifybackup {:.1} s, WAL replay to promotion {:.1} s",
        unpacked.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0),
        verified.as_secs_f64(),
        (t0.elapsed() - unpacked - verified).as_secs_f64()
    );
    Ok((server, plan, report))
}

fn describe(plan: &RestorePlan, report: &RecoveryReport) {
    println!(
        "restored base backup {} (consistent at {}), target {}",
        plan.base.snapshot.short(),
        plan.base.info.stop_lsn,
        plan.target
    );
    match &report.stopped_at_target {
        Some(line) => println!("recovery reached the target: {line}"),
        None => println!(
            "recovery ended at the end of the archive (the next WAL file is not archived; the archive's unbroken run ends at {})",
            plan.archive_end
        ),
    }
    if let Some(t) = &report.last_transaction {
        println!("last transaction replayed at {t}");
    }
    println!(
        "promoted on timeline {} at WAL {} in {:.1} s",
        report.timeline,
        report.lsn,
        report.took.as_secs_f64()
    );
}

pub(crate) async fn pg_restore(cli: &Cli, args: &PgRestoreArgs) -> ProgramResult {
    let target = args.target.target()?;
    let (server, plan, report) =
        restore_into(cli, target, &args.pgdata, args.port, args.keep_archiving).await?;
    describe(&plan, &report);
    if args.keep_running {
        println!("server running on 127.0.0.1:{}", server.port());
        server.detach();
    } else {
        server.stop().await?;
    }
    Ok(true)
}

/// A temporary directory the data-directory user can reach (mode 0711).
fn reachable_tempdir(prefix: &str) -> Result<tempfile::TempDir, Failure> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

/// `check --pg-verifybackup`: every base backup of `repo`, unpacked into a
/// temporary directory, against its manifest. False when one fails.
pub(crate) async fn verify_base_backups(repo: &Repository) -> Result<bool, Failure> {
    let tools = PgTools::discover()?;
    let catalog = PitrCatalog::load(repo).await?;
    let mut ok = true;
    for base in &catalog.base_backups {
        let dir = reachable_tempdir("atlas-pg-check-")?;
        let pgdata = dir.path().join("data");
        let checked = async {
            let (_, body) = repo
                .restore_file_stream(&base.snapshot.to_hex(), BASE_FILE)
                .await?;
            pg::unpack_base_backup(&tools, body, &pgdata).await?;
            pg::verify_base_backup(&tools, &pgdata).await
        }
        .await;
        match checked {
            Ok(()) => println!(
                "base backup {}: pg_verifybackup found it intact",
                base.snapshot.short()
            ),
            Err(e) => {
                println!("  PROBLEM: base backup {}: {e}", base.snapshot.short());
                ok = false;
            }
        }
    }
    Ok(ok)
}

pub(crate) async fn pg_verify(cli: &Cli, args: &PgVerifyArgs) -> ProgramResult {
    let target = args.target.target()?;
    // The server's user must reach the data directory inside.
    let dir = reachable_tempdir("atlas-pg-verify-")?;
    let pgdata = dir.path().join("data");
    let port = pg::free_port()?;
    let (server, plan, report) = restore_into(cli, target, &pgdata, port, false).await?;
    describe(&plan, &report);
    let client = server.connection().connect().await?;
    let mut ok = true;
    for sql in &args.checks {
        let passed = match client.query_opt(sql.as_str(), &[]).await {
            Ok(Some(row)) => row.try_get::<_, bool>(0).unwrap_or(false),
            Ok(None) => false,
            Err(e) => {
                println!("check failed: {sql}: {e}");
                false
            }
        };
        println!("{} {sql}", if passed { "ok    " } else { "FAILED" });
        ok &= passed;
    }
    drop(client);
    server.stop().await?;
    drop(dir);
    println!(
        "test restore {}",
        if ok { "completed" } else { "failed its checks" }
    );
    Ok(ok)
}
