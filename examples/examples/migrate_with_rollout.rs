//! Expand / contract around a blue-green rollout: the standard
//! zero-downtime pattern for schema changes, on a real PostgreSQL and
//! Atlas's local runtime (processes behind its own proxy).
//!
//! 1. v1 of the app runs with migration V1 applied.
//! 2. Before v2 starts, the **expand** migrations run (`V2`: a new nullable
//!    column v2 will use; v1 ignores it).
//! 3. v2 rolls out blue → green; the engine scales the old slot down.
//! 4. Only once no replica of v1 runs, the **contract** migrations run
//!    (`V3`: drop the column only v1 used).
//!
//! Every plan is linted; the run takes a `pg_dump` backup before each
//! change into a local directory. It creates a database of its own and
//! drops it at the end.
//!
//! Run (needs a PostgreSQL server; `cargo xtask test` starts one):
//! `cargo run -p atlas-examples --features postgres --example migrate_with_rollout`
//! (`ATLAS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5433/postgres`, names the server).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use atlas_core::backup::ObjectPrefix;
use atlas_core::migrate::{
    BackupPolicy, MigrationPhase, MigrationSet, Migrator, MigratorConfig, RunReport, Version,
};
use atlas_core::{
    BlueGreen, Engine, Outcome, ProbePolicy, Release, Rollout, ServiceName, Slot, Strategy,
    TrafficRouter, Workloads,
};
use atlas_local::file_store::FileStateStore;
use atlas_local::process::{ProcessWorkloads, Readiness};
use atlas_local::proxy::ProxyRouter;
use atlas_metrics::probe::HttpProbe;
use atlas_storage::FsTarget;
use atlas_storage::postgres::PostgresDriver;

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__accounts.sql",
        "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, legacy_flag boolean);\n\
         INSERT INTO accounts SELECT g, 'user' || g || '@example.com', true FROM generate_series(1, 1000) g;",
    ),
    (
        "V2__add_plan.sql",
        "-- atlas:phase expand\n\
         -- atlas:verify SELECT count(*) = 1000 FROM accounts\n\
         ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;",
    ),
    (
        "V3__drop_legacy_flag.sql",
        "-- atlas:phase contract\n\
         -- atlas:verify SELECT count(*) = 1000 FROM accounts\n\
         ALTER TABLE accounts DROP COLUMN IF EXISTS legacy_flag;",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("demo-app") {
        return atlas_examples::demo_app::main_from_args(args.into_iter().skip(1));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migrate_with_rollout failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn admin(url: &str) -> Result<tokio_postgres::Client, Box<dyn std::error::Error>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let admin_url = std::env::var("ATLAS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".to_owned());
    let db = format!("atlas_demo_{}", std::process::id());
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| admin_url.clone());
    let url = format!("{base}/{db}");
    admin(&admin_url)
        .await?
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let work = std::env::temp_dir().join(format!("atlas-migrate-rollout-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = demo(&url, &work).await;
    let _ = admin(&admin_url)
        .await?
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn demo(url: &str, work: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let set = MigrationSet::from_sources(MIGRATIONS.iter().copied())?;
    let migrator = Migrator::new(PostgresDriver::builder(url).connect().await?, set).with_config(
        MigratorConfig {
            backup: BackupPolicy::To {
                target: Arc::new(FsTarget::new(work.join("backups"))?),
                prefix: ObjectPrefix::new("demo/")?,
            },
            ..MigratorConfig::default()
        },
    );

    let svc = ServiceName::new("accounts")?;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let router = Arc::new(
        ProxyRouter::builder(svc.clone())
            .listen("127.0.0.1:0".parse()?)
            .grace_period(Duration::from_secs(5))
            .build()
            .await?,
    );
    let workloads = Arc::new(
        ProcessWorkloads::builder()
            .log_dir(work.join("logs"))
            .grace_period(Duration::from_secs(5))
            .readiness(Readiness::http_get("/ready"))
            .poll_interval(Duration::from_millis(100))
            .build()?,
    );
    let engine = Engine::builder()
        .workloads(workloads.clone())
        .router(router.clone())
        .probe(Arc::new(HttpProbe::get("/health")?))
        .metrics(Arc::new(router.metrics()))
        .store(Arc::new(FileStateStore::new(work.join("state"))?))
        .poll_interval(Duration::from_millis(100))
        .build()?;

    println!("== 1/4 schema V1, then v1 of the app");
    show("migrate to V1", &migrator.migrate(Some(Version(1))).await?);
    expect_promoted(&engine.start(rollout(&svc, &me, "v1")).await?.wait().await?)?;

    println!("== 2/4 expand: migrations v2 needs, applied while v1 still serves");
    show(
        "expand",
        &migrator.migrate_phase(MigrationPhase::Expand).await?,
    );

    println!("== 3/4 roll out v2 (blue-green; the old slot is scaled down at the end)");
    expect_promoted(&engine.start(rollout(&svc, &me, "v2")).await?.wait().await?)?;
    let split = router.split(&svc).await?;
    let mut old_running = 0;
    for slot in [Slot::Blue, Slot::Green] {
        let status = workloads.status(&svc, slot).await?;
        println!(
            "  {slot}: version {:?}, {} ready",
            status.version.as_deref().unwrap_or("-"),
            status.ready
        );
        if status.version.as_deref() == Some("v1") {
            old_running += status.ready;
        }
    }
    println!(
        "  traffic: {}",
        split.map(|s| s.to_string()).unwrap_or_default()
    );
    if old_running > 0 {
        return Err(format!("{old_running} replica(s) of v1 still run: no contract").into());
    }

    println!("== 4/4 contract: no v1 replica left, drop what only v1 used");
    show(
        "contract",
        &migrator.migrate_phase(MigrationPhase::Contract).await?,
    );
    for s in migrator.status().await? {
        println!("  {} {:<20} {:?}", s.version, s.name, s.state);
    }
    workloads.shutdown().await;
    router.shutdown().await;
    println!("OK: expand before v2 started, contract after v1 was gone");
    Ok(())
}

fn show(what: &str, report: &RunReport) {
    let versions: Vec<String> = report.versions.iter().map(|v| v.to_string()).collect();
    println!(
        "  {what}: applied [{}], lint {} finding(s){}",
        versions.join(", "),
        report.lint.findings.len(),
        report
            .backup
            .as_ref()
            .map(|b| format!(", backup {} ({} bytes)", b.key, b.size))
            .unwrap_or_default()
    );
}

fn expect_promoted(outcome: &Outcome) -> Result<(), Box<dyn std::error::Error>> {
    println!("  rollout: {outcome}");
    match outcome {
        Outcome::Promoted { .. } => Ok(()),
        other => Err(format!("unexpected outcome: {other}").into()),
    }
}

fn rollout(svc: &ServiceName, me: &str, version: &str) -> Rollout {
    let release = Release::new(version, me).with_arg("demo-app");
    let strategy = BlueGreen::new(2).with_scale_down_delay(Duration::from_secs(1));
    Rollout::new(svc.clone(), release, Strategy::BlueGreen(strategy))
        .with_probe(ProbePolicy {
            period: Duration::from_millis(300),
            ..ProbePolicy::default()
        })
        .with_progress_deadline(Duration::from_secs(60))
}
