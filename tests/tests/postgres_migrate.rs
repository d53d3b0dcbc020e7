//! The migration engine with the PostgreSQL driver, against a real server.
//!
//! Each test creates a database with a random name and drops it after.
//! Run: `cargo xtask test`, or with a server of your own:
//! `ATLAS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5433/postgres
//!  cargo test -p atlas-tests --features postgres --test postgres_migrate -- --ignored`.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use atlas_core::ErrorKind;
use atlas_core::backup::{BackupTargetExt, ObjectPrefix};
use atlas_migrate::{BackupPolicy, MigrationSet, Migrator, MigratorConfig, Version};
use atlas_storage::MemoryTarget;
use atlas_storage::postgres::{LockWait, PostgresDriver};
use tokio_postgres::{Client, NoTls};

fn admin_url() -> String {
    std::env::var("ATLAS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".to_owned())
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(conn);
    client
}

/// A fresh database, dropped when the value is dropped (even on panic).
struct TestDb {
    name: String,
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("atlas_mig_{:016x}", rand::random::<u64>());
        connect(&admin_url())
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        TestDb { name }
    }

    fn url(&self) -> String {
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        format!("{base}/{}", self.name)
    }

    async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    async fn driver(&self) -> PostgresDriver {
        PostgresDriver::builder(self.url())
            .connect()
            .await
            .expect("driver")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let client = connect(&admin_url()).await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

fn set(files: &[(&str, &str)]) -> MigrationSet {
    MigrationSet::from_sources(files.iter().copied()).expect("valid migrations")
}

fn config() -> MigratorConfig {
    MigratorConfig {
        backup: BackupPolicy::Disabled,
        ..MigratorConfig::default()
    }
}

const V1: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);\n\
INSERT INTO accounts SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 100) g;";
const V1_DOWN: &str = "-- atlas:phase contract\nDROP TABLE accounts;";
const V2: &str = "-- atlas:verify SELECT count(*) = 100 FROM accounts\n\
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;";
const V2_DOWN: &str = "ALTER TABLE accounts DROP COLUMN plan;";
const V3: &str = "-- atlas:no-transaction\n\
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email);";
const V3_DOWN: &str = "-- atlas:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS accounts_email;";

fn three() -> MigrationSet {
    set(&[
        ("V1__accounts.sql", V1),
        ("V1__accounts.down.sql", V1_DOWN),
        ("V2__plan.sql", V2),
        ("V2__plan.down.sql", V2_DOWN),
        ("V3__email_index.sql", V3),
        ("V3__email_index.down.sql", V3_DOWN),
    ])
}

/// The columns of every user table and a hash of the accounts data: equal
/// snapshots mean schema and data are exactly as they were.
async fn snapshot(client: &Client) -> (Vec<String>, Vec<String>, Option<String>) {
    let columns = client
        .query(
            "SELECT table_name || '.' || column_name || ':' || data_type FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'atlas_schema_history' ORDER BY 1",
            &[],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let indexes = client
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists: bool = client
        .query_one("SELECT to_regclass('public.accounts') IS NOT NULL", &[])
        .await
        .expect("exists")
        .get(0);
    let data = if exists {
        client
            .query_one(
                "SELECT md5(string_agg(a::text, ',' ORDER BY id)) FROM accounts a",
                &[],
            )
            .await
            .expect("data hash")
            .get(0)
    } else {
        None
    };
    (columns, indexes, data)
}

async fn history_versions(client: &Client) -> Vec<i64> {
    client
        .query(
            "SELECT version FROM atlas_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn apply_then_reapply_is_a_no_op_then_down() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let m = Migrator::new(db.driver().await, three()).with_config(config());
    m.migrate(Some(Version(1))).await.expect("V1");
    let at_v1 = snapshot(&client).await;
    let report = m.migrate(None).await.expect("migrate");
    assert_eq!(report.versions, vec![Version(2), Version(3)]);
    assert_eq!(history_versions(&client).await, vec![1, 2, 3]);
    let after = snapshot(&client).await;
    assert!(
        after.0.contains(&"accounts.plan:text".to_owned()),
        "{after:?}"
    );
    assert!(after.1.contains(&"accounts_email".to_owned()));
    let row = client
        .query_one(
            "SELECT name, checksum, phase, success, duration_ms >= 0 FROM atlas_schema_history WHERE version = 2",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "plan");
    assert_eq!(
        row.get::<_, String>(1),
        atlas_migrate::checksum(V2.as_bytes())
    );
    assert_eq!(row.get::<_, String>(2), "expand");
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));

    let again = m.migrate(None).await.expect("re-apply");
    assert!(again.versions.is_empty());
    assert_eq!(snapshot(&client).await, after, "re-apply changed nothing");

    let down = m.down(Version(1)).await.expect("down");
    assert_eq!(down.versions, vec![Version(3), Version(2)]);
    assert_eq!(history_versions(&client).await, vec![1]);
    let reverted = snapshot(&client).await;
    assert!(!reverted.0.contains(&"accounts.plan:text".to_owned()));
    assert!(!reverted.1.contains(&"accounts_email".to_owned()));
    assert_eq!(reverted, at_v1, "down restored the V1 schema and data");
    let up_again = m.migrate(None).await.expect("up again");
    assert_eq!(up_again.versions, vec![Version(2), Version(3)]);
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn a_failing_migration_leaves_schema_and_data_exactly_as_before() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let m =
        Migrator::new(db.driver().await, set(&[("V1__accounts.sql", V1)])).with_config(config());
    m.migrate(None).await.expect("V1");
    let before = snapshot(&client).await;
    for (file, sql) in [
        (
            "V2__broken.sql",
            "ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;\n\
             UPDATE accounts SET email = 'changed';\n\
             INSERT INTO accounts VALUES (1, 'duplicate key');",
        ),
        (
            "V2__verify_fails.sql",
            "-- atlas:verify SELECT count(*) = 0 FROM accounts\n\
             ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;\nDELETE FROM accounts WHERE id > 50;",
        ),
    ] {
        let m = Migrator::new(
            db.driver().await,
            set(&[("V1__accounts.sql", V1), (file, sql)]),
        )
        .with_config(config());
        let err = m.migrate(None).await.expect_err(file);
        assert!(err.to_string().contains("rolled back"), "{err}");
        assert_eq!(snapshot(&client).await, before, "{file} left changes");
        assert_eq!(history_versions(&client).await, vec![1]);
    }
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn two_runners_at_once_one_waits_and_history_has_no_duplicate() {
    let db = TestDb::new().await;
    let slow = set(&[
        ("V1__accounts.sql", V1),
        (
            "V2__slow.sql",
            "SELECT pg_sleep(1);\nALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;",
        ),
    ]);
    let a = Migrator::new(db.driver().await, slow.clone()).with_config(config());
    let b = Migrator::new(db.driver().await, slow.clone()).with_config(config());
    let (ra, rb) = tokio::join!(a.migrate(None), b.migrate(None));
    let (ra, rb) = (
        ra.expect("a"),
        rb.expect("b waited, then found nothing to do"),
    );
    let mut applied: Vec<Version> = ra.versions.iter().chain(&rb.versions).copied().collect();
    applied.sort();
    assert_eq!(
        applied,
        vec![Version(1), Version(2)],
        "each version applied once"
    );
    let client = db.client().await;
    assert_eq!(history_versions(&client).await, vec![1, 2]);

    // Fail fast: while one runner holds the lock, another is refused.
    let key_holder = Migrator::new(db.driver().await, slow.clone()).with_config(config());
    use atlas_migrate::MigrationDriver;
    key_holder.driver().lock().await.expect("hold");
    let impatient = Migrator::new(
        PostgresDriver::builder(db.url())
            .with_lock_wait(LockWait::FailFast)
            .connect()
            .await
            .expect("driver"),
        slow.clone(),
    )
    .with_config(config());
    let err = impatient.migrate(None).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let waiting = Migrator::new(
        PostgresDriver::builder(db.url())
            .with_lock_wait(LockWait::Wait(Duration::from_millis(500)))
            .connect()
            .await
            .expect("driver"),
        slow,
    )
    .with_config(config());
    let err = waiting.migrate(None).await.expect_err("gave up waiting");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    key_holder.driver().unlock().await.expect("release");
    waiting.migrate(None).await.expect("lock free again");
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn checksum_drift_is_refused() {
    let db = TestDb::new().await;
    let client = db.client().await;
    Migrator::new(db.driver().await, three())
        .with_config(config())
        .migrate(Some(Version(2)))
        .await
        .expect("migrate");
    let before = snapshot(&client).await;
    let edited = set(&[
        ("V1__accounts.sql", V1),
        (
            "V2__plan.sql",
            "ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan varchar(20);",
        ),
        ("V3__email_index.sql", V3),
    ]);
    let err = Migrator::new(db.driver().await, edited)
        .with_config(config())
        .migrate(None)
        .await
        .expect_err("drift");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("V2__plan.sql"), "{err}");
    assert_eq!(snapshot(&client).await, before, "V3 did not run");
    assert_eq!(history_versions(&client).await, vec![1, 2]);
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn create_index_concurrently_runs_outside_a_transaction() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let m = Migrator::new(db.driver().await, three()).with_config(config());
    m.migrate(None)
        .await
        .expect("PostgreSQL refuses CONCURRENTLY inside a transaction");
    let valid: bool = client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email'::regclass",
            &[],
        )
        .await
        .expect("index")
        .get(0);
    assert!(valid);
    // The same file without the directive fails in its transaction, and
    // the lint says why before anything runs.
    let db2 = TestDb::new().await;
    let in_tx = set(&[
        ("V1__accounts.sql", V1),
        (
            "V2__idx.sql",
            "CREATE INDEX CONCURRENTLY accounts_email ON accounts (email);",
        ),
    ]);
    let m2 = Migrator::new(db2.driver().await, in_tx.clone()).with_config(config());
    let err = m2.migrate(None).await.expect_err("lint");
    assert!(
        err.to_string()
            .contains("ban-concurrent-index-creation-in-transaction"),
        "{err}"
    );
    let forced = Migrator::new(db2.driver().await, in_tx).with_config(MigratorConfig {
        allow_lint_errors: true,
        ..config()
    });
    let err = forced.migrate(None).await.expect_err("postgres refuses");
    assert!(err.to_string().contains("rolled back"), "{err}");
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn a_failed_verify_after_a_non_transactional_step_runs_the_down_file() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let files = [
        ("V1__accounts.sql", V1),
        (
            "V2__idx.sql",
            "-- atlas:no-transaction\n-- atlas:verify SELECT count(*) = 0 FROM accounts\n\
             CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email);",
        ),
        ("V2__idx.down.sql", V3_DOWN),
    ];
    let m = Migrator::new(db.driver().await, set(&files[..1])).with_config(config());
    m.migrate(None).await.expect("V1");
    let before = snapshot(&client).await;
    let m = Migrator::new(db.driver().await, set(&files)).with_config(config());
    let err = m.migrate(None).await.expect_err("verify fails");
    assert!(
        err.to_string().contains("reverted by V2__idx.down.sql"),
        "{err}"
    );
    assert_eq!(
        snapshot(&client).await,
        before,
        "index dropped again, data intact"
    );
    assert_eq!(history_versions(&client).await, vec![1]);

    // Without a down file: the run stops, records the failure and prints
    // the restore command.
    let target = Arc::new(MemoryTarget::new());
    let m = Migrator::new(db.driver().await, set(&files[..2])).with_config(MigratorConfig {
        backup: BackupPolicy::To {
            target: target.clone(),
            prefix: ObjectPrefix::new("pg/").expect("prefix"),
        },
        ..MigratorConfig::default()
    });
    let err = m.migrate(None).await.expect_err("no down file");
    let text = err.to_string();
    assert!(text.contains("pg_restore --clean --if-exists"), "{text}");
    assert!(text.contains(&format!("dbname={}", db.name)), "{text}");
    assert!(!text.contains("password"), "{text}");
    let failed: bool = client
        .query_one(
            "SELECT success FROM atlas_schema_history WHERE version = 2",
            &[],
        )
        .await
        .expect("failed row")
        .get(0);
    assert!(!failed);
    let blocked = m.migrate(None).await.expect_err("blocked until repair");
    assert_eq!(blocked.kind(), ErrorKind::Precondition);
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn the_pre_migration_backup_restores_into_a_fresh_database_with_identical_data() {
    let db = TestDb::new().await;
    let client = db.client().await;
    Migrator::new(db.driver().await, three())
        .with_config(config())
        .migrate(Some(Version(1)))
        .await
        .expect("V1");
    let before = snapshot(&client).await;
    let target = Arc::new(MemoryTarget::new());
    let m = Migrator::new(db.driver().await, three()).with_config(MigratorConfig {
        backup: BackupPolicy::To {
            target: target.clone(),
            prefix: ObjectPrefix::new("pg/").expect("prefix"),
        },
        ..MigratorConfig::default()
    });
    let report = m.migrate(None).await.expect("migrate with backup");
    let backup = report.backup.expect("backup recorded with the run");
    assert!(backup.size > 0);
    let dump = target.get_bytes(&backup.key).await.expect("backup stored");
    assert_eq!(dump.len() as u64, backup.size);
    assert_eq!(&dump[..5], b"PGDMP", "pg_dump custom format");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.dump");
    std::fs::write(&file, &dump).expect("write dump");
    let fresh = TestDb::new().await;
    let status = std::process::Command::new("pg_restore")
        .arg("--no-owner")
        .arg("--dbname")
        .arg(fresh.url())
        .arg(&file)
        .status()
        .expect("run pg_restore");
    assert!(status.success());
    let restored = snapshot(&fresh.client().await).await;
    assert_eq!(restored, before, "schema and data as before the migration");
    assert!(before.2.is_some());
    let history = history_versions(&fresh.client().await).await;
    assert_eq!(history, vec![1], "history restored too");
}

#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn table_invariants_refuse_undeclared_data_changes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let with_invariants = || MigratorConfig {
        invariant_tables: vec!["accounts".to_owned()],
        ..config()
    };
    Migrator::new(db.driver().await, set(&[("V1__accounts.sql", V1)]))
        .with_config(config())
        .migrate(None)
        .await
        .expect("V1");
    let before = snapshot(&client).await;
    let sneaky = set(&[
        ("V1__accounts.sql", V1),
        (
            "V2__sneaky.sql",
            "ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;\nDELETE FROM accounts WHERE id = 7;",
        ),
    ]);
    let err = Migrator::new(db.driver().await, sneaky)
        .with_config(with_invariants())
        .migrate(None)
        .await
        .expect_err("undeclared delete");
    assert!(err.to_string().contains("rolled back"), "{err}");
    let source = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        source.contains("table invariant broken") && source.contains("100 rows"),
        "{source}"
    );
    assert_eq!(snapshot(&client).await, before);

    // Adding a column keeps the invariant; a declared change is allowed.
    let fine = set(&[
        ("V1__accounts.sql", V1),
        ("V2__plan.sql", V2),
        (
            "V3__backfill.sql",
            "-- atlas:allow-data-change accounts\nUPDATE accounts SET plan = 'free' WHERE plan IS NULL;",
        ),
    ]);
    let report = Migrator::new(db.driver().await, fine)
        .with_config(with_invariants())
        .migrate(None)
        .await
        .expect("allowed");
    assert_eq!(report.versions, vec![Version(2), Version(3)]);
    let free: i64 = client
        .query_one("SELECT count(*) FROM accounts WHERE plan = 'free'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(free, 100);
}

fn tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// The test server (as `cargo xtask test` starts it) has no TLS: with a
/// TLS connector, `sslmode=require` must be refused rather than silently
/// falling back to plain text, and `sslmode=prefer` falls back.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn tls_follows_sslmode() {
    let db = TestDb::new().await;
    let err = PostgresDriver::builder(format!("{}?sslmode=require", db.url()))
        .with_tls(tls_config())
        .connect()
        .await
        .expect_err("server without TLS refused under sslmode=require");
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    let driver = PostgresDriver::builder(format!("{}?sslmode=prefer", db.url()))
        .with_tls(tls_config())
        .connect()
        .await
        .expect("prefer falls back to plain text");
    Migrator::new(driver, set(&[("V1__accounts.sql", V1)]))
        .with_config(config())
        .migrate(None)
        .await
        .expect("migrate over the fallback connection");
}

/// The runner's `lock_timeout` and `statement_timeout` are in force while
/// each script runs, in a transaction and outside one.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn timeouts_are_set_for_every_migration() {
    let db = TestDb::new().await;
    let files = [
        (
            "V1__in_tx.sql",
            "-- atlas:verify SELECT current_setting('lock_timeout') = '1500ms' AND current_setting('statement_timeout') = '1min'\n\
             CREATE TABLE t (id bigint PRIMARY KEY);",
        ),
        (
            "V2__no_tx.sql",
            "-- atlas:no-transaction\n\
             -- atlas:verify SELECT current_setting('lock_timeout') = '1500ms' AND current_setting('statement_timeout') = '1min'\n\
             CREATE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);",
        ),
    ];
    let m = Migrator::new(db.driver().await, set(&files)).with_config(MigratorConfig {
        lock_timeout: Some(Duration::from_millis(1500)),
        statement_timeout: Some(Duration::from_secs(60)),
        ..config()
    });
    m.migrate(None).await.expect("timeouts in force");
    // A lock_timeout actually stops a migration stuck behind a lock.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;")
        .await
        .expect("hold lock");
    let stuck = Migrator::new(
        db.driver().await,
        set(&[
            files[0],
            files[1],
            (
                "V3__blocked.sql",
                "ALTER TABLE t ADD COLUMN IF NOT EXISTS x text;",
            ),
        ]),
    )
    .with_config(MigratorConfig {
        lock_timeout: Some(Duration::from_millis(300)),
        ..config()
    });
    let started = std::time::Instant::now();
    let err = stuck.migrate(None).await.expect_err("lock timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    let source = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        source.contains("lock timeout") || source.contains("55P03"),
        "{source}"
    );
    blocker.batch_execute("ROLLBACK").await.expect("release");
}
