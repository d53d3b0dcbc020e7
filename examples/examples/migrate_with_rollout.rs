//! Expand / contract around a blue-green rollout: the standard
//! zero-downtime pattern for schema changes, on a real PostgreSQL and
//! Atlas's local runtime (processes behind its own proxy).
//!
//! Each release carries its migrations as a
//! [`MigrationHook`](atlas_migrate::MigrationHook) on the engine that
//! rolls it out:
//! 1. v1 of the app is rolled out with migration V1.
//! 2. v2 is rolled out blue → green with V2 and V3: the engine applies the
//!    **expand** migration (`V2`: a new nullable column v2 will use; v1
//!    ignores it) before v2's slot starts, shifts traffic, scales v1's slot
//!    down, and only then applies the **contract** migration (`V3`: drop
//!    the column only v1 used).
//!
//! Every plan is linted; the run takes a `pg_dump` backup before each
//! change into a local directory. It creates a database of its own and
//! drops it at the end.
//!
//! Ctrl-C (SIGINT) or SIGTERM aborts the rollout in progress (traffic
//! back on the stable slot, the new slot scaled down), stops the replicas
//! and the proxy, drops the database, removes the work directory, says so
//! in one line starting with `interrupted`, and exits with 130 (SIGINT) or
//! 143 (SIGTERM); a second signal exits at once. The migrations already
//! applied are not undone: the database is dropped with them.
//!
//! Run (needs a PostgreSQL server; `cargo xtask test` starts one):
//! `cargo run -p atlas-examples --features postgres --example migrate_with_rollout`
//! (`ATLAS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5433/postgres`, names the server).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use atlas_core::backup::ObjectPrefix;
use atlas_core::{
    BlueGreen, Engine, EventKind, Outcome, ProbePolicy, Release, Rollout, ServiceName, Slot,
    Strategy, Workloads,
};
use atlas_examples::interrupt::{self, Ended, Interrupts};
use atlas_examples::main_support::StatusResult;
use atlas_local::file_store::FileStateStore;
use atlas_local::process::{ProcessWorkloads, Readiness};
use atlas_local::proxy::ProxyRouter;
use atlas_metrics::probe::HttpProbe;
use atlas_migrate::{BackupPolicy, MigrationHook, MigrationSet, Migrator, MigratorConfig};
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
    atlas_examples::main_support::init_tracing("error");
    atlas_examples::main_support::run_with_status("migrate_with_rollout", run())
}

async fn admin(url: &str) -> Result<tokio_postgres::Client, Box<dyn std::error::Error>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn run() -> StatusResult {
    // First, so that a signal at any point is handled, not fatal.
    let interrupts = Interrupts::listen("migrate_with_rollout")?;
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
    let work = interrupt::work_dir("atlas-migrate-rollout")?;
    interrupts.remove_on_forced_exit(&work);
    let ended = demo(&url, &work, &interrupts).await;
    let dropped = match admin(&admin_url).await {
        Ok(client) => client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .map_err(Into::into),
        Err(e) => Err(e),
    };
    let removed = std::fs::remove_dir_all(&work);
    let ended = ended?;
    if matches!(ended, Ended::Interrupted { .. }) {
        match &dropped {
            Ok(()) => println!("dropped database {db}"),
            Err(e) => println!("could not drop database {db}: {e}"),
        }
    }
    Ok(ended.exit_code(&work, &removed, |()| ExitCode::SUCCESS))
}

async fn demo(
    url: &str,
    work: &std::path::Path,
    interrupts: &Interrupts,
) -> Result<Ended<()>, Box<dyn std::error::Error>> {
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
    let store = Arc::new(FileStateStore::new(work.join("state"))?);
    let stack = Stack {
        svc,
        me,
        router,
        workloads,
        store,
    };
    let result = releases(url, work, &stack, interrupts).await;
    // Whatever happened: stop the replicas (gracefully) and the proxy.
    let replicas = stack.workloads.shutdown().await;
    stack.router.shutdown().await;
    Ended::sort(result, replicas)
}

/// The local stack the releases run on.
struct Stack {
    svc: ServiceName,
    me: String,
    router: Arc<ProxyRouter>,
    workloads: Arc<ProcessWorkloads>,
    store: Arc<FileStateStore>,
}

/// The two releases and their checks. A stop signal ends them with
/// `Interrupted`, after aborting the rollout in progress.
async fn releases(
    url: &str,
    work: &std::path::Path,
    stack: &Stack,
    interrupts: &Interrupts,
) -> Result<(), Box<dyn std::error::Error>> {
    let Stack {
        svc,
        me,
        router,
        workloads,
        store,
    } = stack;
    // Each release ships the migrations it needs; the engine that rolls it
    // out carries them as a hook: expand before the new slot starts,
    // contract once the old slot is scaled down.
    let release_engine = |hook: Arc<MigrationHook<PostgresDriver>>| {
        Engine::builder()
            .workloads(workloads.clone())
            .router(router.clone())
            .probe(Arc::new(HttpProbe::get("/health")?))
            .metrics(Arc::new(router.metrics()))
            .store(store.clone())
            .hook(hook)
            .poll_interval(Duration::from_millis(100))
            .build()
    };

    println!("== 1/2 release v1 with its migration V1 (first rollout: all at once)");
    let v1 = migration_hook(url, work, &MIGRATIONS[..1]).await?;
    let handle = release_engine(v1.clone())?
        .start(rollout(svc, me, "v1"))
        .await?;
    let outcome = interrupts.finish(handle).await?;
    expect_promoted(&outcome)?;
    show(&v1);

    println!("== 2/2 release v2 with V2 (expand) and V3 (contract), blue-green");
    let v2 = migration_hook(url, work, MIGRATIONS).await?;
    let engine = release_engine(v2.clone())?;
    // Watch the rollout: record what ran when each hook fired.
    let mut events = engine.subscribe();
    let handle = engine.start(rollout(svc, me, "v2")).await?;
    let outcome = interrupts.finish(handle).await?;
    expect_promoted(&outcome)?;
    let mut order = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e.kind {
            EventKind::HookRan { point, error, .. } => order.push(format!(
                "hook {point} {}",
                if error.is_none() { "ok" } else { "FAILED" }
            )),
            EventKind::StepFinished { step, .. } => order.push(format!("step {step}")),
            _ => {}
        }
    }
    for line in &order {
        println!("  {line}");
    }
    show(&v2);
    // The contract ran only after the old slot (v1) was gone.
    let contract_at = order
        .iter()
        .position(|l| l.starts_with("hook after_scale_down"));
    let deploy_at = order.iter().position(|l| l.starts_with("step deploy"));
    let expand_at = order
        .iter()
        .position(|l| l.starts_with("hook before_deploy"));
    match (expand_at, deploy_at, contract_at) {
        (Some(e), Some(d), Some(c)) if e < d && d < c => {}
        _ => return Err(format!("hooks ran out of order: {order:?}").into()),
    }
    let mut old_running = 0;
    for slot in [Slot::Blue, Slot::Green] {
        let status = workloads.status(svc, slot).await?;
        println!(
            "  {slot}: version {:?}, {} ready",
            status.version.as_deref().unwrap_or("-"),
            status.ready
        );
        if status.version.as_deref() == Some("v1") {
            old_running += status.ready;
        }
    }
    if old_running > 0 {
        return Err(format!("{old_running} replica(s) of v1 still run after contract").into());
    }
    for s in v2.migrator().status().await? {
        println!("  {} {:<20} {:?}", s.version, s.name, s.state);
    }
    println!("OK: expand before v2 started, contract after v1 was gone");
    Ok(())
}

/// A migration hook over `files`, with a `pg_dump` backup before each change.
async fn migration_hook(
    url: &str,
    work: &std::path::Path,
    files: &[(&str, &str)],
) -> Result<Arc<MigrationHook<PostgresDriver>>, Box<dyn std::error::Error>> {
    let set = MigrationSet::from_sources(files.iter().copied())?;
    let migrator = Migrator::new(PostgresDriver::builder(url).connect().await?, set).with_config(
        MigratorConfig {
            backup: BackupPolicy::To {
                target: Arc::new(FsTarget::new(work.join("backups"))?),
                prefix: ObjectPrefix::new("demo/")?,
            },
            ..MigratorConfig::default()
        },
    );
    Ok(Arc::new(MigrationHook::new(Arc::new(migrator))))
}

fn show(hook: &MigrationHook<PostgresDriver>) {
    for (point, report) in hook.reports() {
        let versions: Vec<String> = report.versions.iter().map(|v| v.to_string()).collect();
        println!(
            "  migrations at {point}: applied [{}], lint {} finding(s){}",
            versions.join(", "),
            report.lint.findings.len(),
            report
                .backup
                .as_ref()
                .map(|b| format!(", backup {} ({} bytes)", b.key, b.size))
                .unwrap_or_default()
        );
    }
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
