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

/// Lint errors allowed: for files whose point is what PostgreSQL does.
fn lenient() -> MigratorConfig {
    MigratorConfig {
        allow_lint_errors: true,
        ..config()
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
            "SELECT version::bigint FROM atlas_schema_history WHERE version IS NOT NULL ORDER BY 1",
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
    m.migrate(Some(Version::new(1))).await.expect("V1");
    let at_v1 = snapshot(&client).await;
    let report = m.migrate(None).await.expect("migrate");
    assert_eq!(report.versions, vec![Version::new(2), Version::new(3)]);
    assert_eq!(history_versions(&client).await, vec![1, 2, 3]);
    let after = snapshot(&client).await;
    assert!(
        after.0.contains(&"accounts.plan:text".to_owned()),
        "{after:?}"
    );
    assert!(after.1.contains(&"accounts_email".to_owned()));
    let row = client
        .query_one(
            "SELECT name, checksum, phase, success, duration_ms >= 0 FROM atlas_schema_history WHERE version = '2'",
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

    let down = m.down(Version::new(1)).await.expect("down");
    assert_eq!(down.versions, vec![Version::new(3), Version::new(2)]);
    assert_eq!(history_versions(&client).await, vec![1]);
    let reverted = snapshot(&client).await;
    assert!(!reverted.0.contains(&"accounts.plan:text".to_owned()));
    assert!(!reverted.1.contains(&"accounts_email".to_owned()));
    assert_eq!(reverted, at_v1, "down restored the V1 schema and data");
    let up_again = m.migrate(None).await.expect("up again");
    assert_eq!(up_again.versions, vec![Version::new(2), Version::new(3)]);
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
        vec![Version::new(1), Version::new(2)],
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
        .migrate(Some(Version::new(2)))
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
    // The same file without the directive runs without a transaction on
    // its own, as Flyway does: PostgreSQL would refuse it inside one.
    let db2 = TestDb::new().await;
    let in_tx = set(&[
        ("V1__accounts.sql", V1),
        (
            "V2__idx.sql",
            "CREATE INDEX CONCURRENTLY accounts_email ON accounts (email);
VACUUM accounts;",
        ),
    ]);
    let m2 = Migrator::new(db2.driver().await, in_tx).with_config(config());
    let plan = m2.plan(None).await.expect("plan");
    assert!(!plan.steps[1].transactional, "{plan:?}");
    m2.migrate(None).await.expect("runs without a transaction");
    let valid: bool = db2
        .client()
        .await
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email'::regclass",
            &[],
        )
        .await
        .expect("index")
        .get(0);
    assert!(valid);
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
            "SELECT success FROM atlas_schema_history WHERE version = '2'",
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
        .migrate(Some(Version::new(1)))
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
    assert_eq!(report.versions, vec![Version::new(2), Version::new(3)]);
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

async fn table_exists(client: &Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn history_rows(client: &Client) -> Vec<(String, bool)> {
    let mut rows: Vec<(String, bool)> = client
        .query(
            "SELECT version, success FROM atlas_schema_history WHERE version IS NOT NULL",
            &[],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    rows.sort_by_key(|(v, _)| v.parse::<Version>().expect("version"));
    rows
}

/// Every statement PostgreSQL receives is the file's own text: a statement
/// it cannot read fails the migration, which is recorded as failed with
/// the statements that committed before it named.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn a_statement_postgres_cannot_read_fails_a_no_transaction_migration() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let files = [(
        "V1__w.sql",
        "-- atlas:no-transaction\nCREATE TABLE w_a (id int);\nCREATE INDX w_a_id ON w_a (id);\nALTERR TABLE w_a ADD COLUMN note text;\n",
    )];
    let m = Migrator::new(db.driver().await, set(&files)).with_config(lenient());
    let err = m
        .migrate(None)
        .await
        .expect_err("PostgreSQL refuses CREATE INDX");
    let text = format!(
        "{err} / {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("failed part-way"), "{text}");
    assert!(
        text.contains(
            "1 of 3 statements of V1__w.sql committed before the statement at line 3 failed"
        ),
        "{text}"
    );
    assert!(
        table_exists(&client, "w_a").await,
        "the first statement committed"
    );
    let note: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'w_a' AND column_name = 'note'",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert_eq!(note, 0, "nothing after the bad statement ran");
    assert_eq!(history_rows(&client).await, vec![("1".to_owned(), false)]);
}

/// Read-only verbs create nothing; creating the history table happens
/// under the run lock, so concurrent runs on a fresh database never race.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn concurrent_status_plan_and_migrate_on_a_fresh_database_all_succeed() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let files = three();
    let status = Migrator::new(db.driver().await, files.clone())
        .with_config(config())
        .status()
        .await
        .expect("status");
    assert!(status.iter().all(|s| s.applied.is_none()));
    Migrator::new(db.driver().await, files.clone())
        .with_config(config())
        .plan(None)
        .await
        .expect("plan");
    assert!(
        !table_exists(&client, "atlas_schema_history").await,
        "status and plan created no table"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let url = db.url();
        let files = files.clone();
        tasks.spawn(async move {
            let driver = PostgresDriver::builder(url)
                .connect()
                .await
                .expect("driver");
            let m = Migrator::new(driver, files).with_config(config());
            match i % 4 {
                0 => m.migrate(None).await.map(|_| ()),
                1 => m.plan(None).await.map(|_| ()),
                2 => m.plan_down_to(Version::new(0)).await.map(|_| ()),
                _ => m.status().await.map(|_| ()),
            }
            .map_err(|e| format!("task {i}: {e}"))
        });
    }
    let mut failures = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.expect("task") {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(history_versions(&client).await, vec![1, 2, 3]);
}

/// Transaction control in a transactional file is refused before
/// anything runs, whatever the lint flags say; in a dollar-quoted body it
/// is not a statement and is fine.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn transaction_control_in_a_transactional_file_is_refused_before_anything_runs() {
    let db = TestDb::new().await;
    let client = db.client().await;
    for (file, sql, line) in [
        (
            "V1__e.sql",
            "CREATE TABLE e_a (id int);\nCOMMIT;\nCREATE TABLE e_b (id int);\nSELECT 1/0;",
            2,
        ),
        (
            "V1__wrapped.sql",
            "-- wrapped as a psql user would\nBEGIN;\nCREATE TABLE e_a (id int);\nCOMMIT;",
            2,
        ),
    ] {
        let m = Migrator::new(db.driver().await, set(&[(file, sql)])).with_config(lenient());
        let err = m.migrate(None).await.expect_err(file);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(&format!("{file}:{line}")), "{err}");
        let plan_err = m.plan(None).await.expect_err("plan refuses too");
        assert_eq!(plan_err.kind(), ErrorKind::InvalidInput);
        assert!(!table_exists(&client, "e_a").await, "{file}: nothing ran");
        assert!(history_rows(&client).await.is_empty());
    }
    let fine = set(&[(
        "V1__body.sql",
        "CREATE TABLE e_a (id int);\n\
         CREATE FUNCTION e_f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;\n\
         CREATE FUNCTION e_g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 2; END;\n\
         DO $do$ BEGIN PERFORM e_f(); END $do$;",
    )]);
    let m = Migrator::new(db.driver().await, fine).with_config(lenient());
    m.migrate(None).await.expect("bodies are not statements");
    let two: i32 = client
        .query_one("SELECT e_g()", &[])
        .await
        .expect("e_g")
        .get(0);
    assert_eq!(two, 2);
    assert_eq!(history_rows(&client).await, vec![("1".to_owned(), true)]);
}

/// `COPY … FROM stdin` with its data in the file, as pg_dump writes it,
/// goes through the copy-in protocol, in a transaction and outside one.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn copy_from_stdin_with_inline_data_loads_in_and_outside_a_transaction() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let files = [
        (
            "V1__copy.sql",
            "CREATE TABLE c (a int PRIMARY KEY, b text);\n\
             COPY public.c (a, b) FROM stdin;\n1\tsemi;colon\n2\t\\N\n3\tit's\n\\.\n\
             UPDATE c SET b = 'none' WHERE b IS NULL;\n",
        ),
        (
            "V2__copy_no_tx.sql",
            "-- atlas:no-transaction\r\nCOPY c FROM STDIN;\r\n4\tfour\r\n\\.\r\nCREATE INDEX CONCURRENTLY c_b ON c (b);\r\n",
        ),
    ];
    let m = Migrator::new(db.driver().await, set(&files)).with_config(lenient());
    m.migrate(None).await.expect("copy");
    let rows: Vec<(i32, String)> = client
        .query("SELECT a, b FROM c ORDER BY a", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "semi;colon".to_owned()),
            (2, "none".to_owned()),
            (3, "it's".to_owned()),
            (4, "four".to_owned()),
        ]
    );
    assert_eq!(history_versions(&client).await, vec![1, 2]);
    // Bad data fails its transaction as a whole: no row, no history.
    let bad = [
        files[0],
        files[1],
        (
            "V3__bad.sql",
            "COPY c FROM stdin;\n5\tfive\nnot-a-number\tx\n\\.\n",
        ),
    ];
    let m = Migrator::new(db.driver().await, set(&bad)).with_config(lenient());
    let err = m.migrate(None).await.expect_err("bad copy data");
    assert!(err.to_string().contains("rolled back"), "{err}");
    let count: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 4);
    assert_eq!(history_versions(&client).await, vec![1, 2]);
}

/// A Flyway folder runs as published: dotted and underscored versions in
/// numeric order, subfolders, placeholders, CRLF and BOM files, ignored
/// look-alikes named in warnings.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn a_flyway_folder_runs_as_published() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("release/2")).expect("dirs");
    let write = |path: &str, text: &[u8]| std::fs::write(root.join(path), text).expect("write");
    write(
        "release/R__item_view.sql",
        b"DROP VIEW IF EXISTS item_names;\nCREATE VIEW item_names AS SELECT v AS ${label} FROM app_items;\n",
    );
    write(
        "V1__init.sql",
        b"CREATE TABLE ${schema_prefix}items (id int PRIMARY KEY, v text);\n",
    );
    write(
        "release/V1.9__nine.sql",
        b"\xef\xbb\xbfINSERT INTO app_items VALUES (9, '${flyway:filename}');\r\n",
    );
    write(
        "release/2/V1.10__ten.sql",
        b"INSERT INTO app_items VALUES (10, 'ten');\r\n",
    );
    write(
        "V1_2__two.sql",
        b"INSERT INTO app_items VALUES (2, 'two');\n",
    );
    write("U1.10__undo.sql", b"DELETE FROM app_items;\n");
    write("v3__lower.sql", b"DROP TABLE app_items;\n");
    write("V3__upper.SQL", b"DROP TABLE app_items;\n");
    write("V3_no_separator.sql", b"DROP TABLE app_items;\n");
    let options = atlas_migrate::SourceOptions::default()
        .with_placeholder("schema_prefix", "app_")
        .with_placeholder("label", "name");
    let folder = MigrationSet::load_with(root, &options).expect("load");
    let warned = folder.warnings().join("\n");
    for name in [
        "U1.10__undo.sql",
        "v3__lower.sql",
        "V3__upper.SQL",
        "V3_no_separator.sql",
    ] {
        assert!(warned.contains(name), "{name} not in {warned}");
    }
    let m = Migrator::new(db.driver().await, folder.clone()).with_config(lenient());
    let report = m.migrate(None).await.expect("migrate");
    let applied: Vec<String> = report.versions.iter().map(|v| v.dotted()).collect();
    assert_eq!(applied, vec!["1", "1.2", "1.9", "1.10"]);
    assert_eq!(
        report.repeatables,
        vec!["item_view"],
        "after the versioned ones"
    );
    let view: i64 = client
        .query_one("SELECT count(name) FROM item_names", &[])
        .await
        .expect("view")
        .get(0);
    assert_eq!(view, 3);
    let repeatable_rows: Vec<(Option<String>, String, bool)> = client
        .query(
            "SELECT version, name, success FROM atlas_schema_history WHERE version IS NULL",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(repeatable_rows, vec![(None, "item_view".to_owned(), true)]);
    let nine: String = client
        .query_one("SELECT v FROM app_items WHERE id = 9", &[])
        .await
        .expect("row 9")
        .get(0);
    assert_eq!(nine, "V1.9__nine.sql");
    // Line endings and a BOM are not changes.
    write(
        "release/V1.9__nine.sql",
        b"INSERT INTO app_items VALUES (9, '${flyway:filename}');\n",
    );
    let again = MigrationSet::load_with(root, &options).expect("reload");
    let m = Migrator::new(db.driver().await, again).with_config(lenient());
    let report = m.migrate(None).await.expect("no drift");
    assert!(
        report.versions.is_empty() && report.repeatables.is_empty(),
        "{report:?}"
    );
    // A new placeholder value changes the repeatable: it runs again.
    let relabel = atlas_migrate::SourceOptions {
        placeholders: [("schema_prefix", "app_"), ("label", "title")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ..Default::default()
    };
    let m = Migrator::new(
        db.driver().await,
        MigrationSet::load_with(root, &relabel).expect("relabel"),
    )
    .with_config(lenient());
    let report = m.migrate(None).await.expect("rerun");
    assert_eq!(report.repeatables, vec!["item_view"]);
    client
        .query_one("SELECT count(title) FROM item_names", &[])
        .await
        .expect("renamed column");
    // An unknown placeholder is refused naming it and the file.
    write("V4__unknown.sql", b"SELECT '${nobody}';\n");
    let err = MigrationSet::load_with(root, &options).expect_err("unknown placeholder");
    assert!(
        err.to_string().contains("V4__unknown.sql:1") && err.to_string().contains("${nobody}"),
        "{err}"
    );
    std::fs::remove_file(root.join("V4__unknown.sql")).expect("rm");
    // Equal versions spelled two ways are one version.
    write("V1.2__again.sql", b"SELECT 1;\n");
    let err = MigrationSet::load_with(root, &options).expect_err("duplicate");
    assert!(
        err.to_string().contains("V1_2__two.sql") && err.to_string().contains("V1.2__again.sql"),
        "{err}"
    );
}

/// A database Flyway migrated is adopted: its history rows are checked
/// by Flyway's checksum and recorded, and `migrate` then applies only the
/// new file.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn importing_a_flyway_history_then_migrate_applies_only_new_files() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let v1 = "CREATE TABLE people (id int PRIMARY KEY, name text);\n";
    let v1_1 = "ALTER TABLE people ADD COLUMN email text;\r\n";
    let v2 = "ALTER TABLE people ADD COLUMN IF NOT EXISTS nick text;\n";
    // The schema as Flyway left it, applied with psql.
    let schema = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(schema.path(), format!("{v1}{v1_1}")).expect("write schema");
    let status = std::process::Command::new("psql")
        .arg("--no-psqlrc")
        .arg("--set=ON_ERROR_STOP=1")
        .arg("--quiet")
        .arg("--dbname")
        .arg(db.url())
        .arg("--file")
        .arg(schema.path())
        .status()
        .expect("psql");
    assert!(status.success());
    // Flyway's own history table and the rows Flyway writes.
    client
        .batch_execute(
            "CREATE TABLE flyway_schema_history (installed_rank int NOT NULL PRIMARY KEY, version varchar(50), \
             description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, \
             checksum int, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), \
             execution_time int NOT NULL, success boolean NOT NULL)",
        )
        .await
        .expect("flyway table");
    let insert = "INSERT INTO flyway_schema_history VALUES ($1, $2, $3, 'SQL', $4, $5, 'postgres', now(), 12, true)";
    let crc1 = atlas_migrate::flyway_checksum(v1.as_bytes());
    let crc1_1 = atlas_migrate::flyway_checksum(v1_1.as_bytes());
    client
        .execute(insert, &[&1i32, &"1", &"people", &"V1__people.sql", &crc1])
        .await
        .expect("row 1");
    client
        .execute(
            insert,
            &[&2i32, &"1.1", &"email", &"V1_1__email.sql", &crc1_1],
        )
        .await
        .expect("row 2");
    let folder = [
        ("V1__people.sql", v1),
        ("V1_1__email.sql", v1_1),
        ("V2__index.sql", v2),
    ];
    // A changed file is refused, nothing recorded.
    let changed = [
        (
            "V1__people.sql",
            "CREATE TABLE people (id bigint PRIMARY KEY, name text);\n",
        ),
        folder[1],
        folder[2],
    ];
    let err = Migrator::new(db.driver().await, set(&changed))
        .with_config(config())
        .import_flyway(atlas_migrate::FLYWAY_HISTORY_TABLE)
        .await
        .expect_err("checksum mismatch");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("V1__people.sql"), "{err}");
    assert!(history_rows(&client).await.is_empty());

    let m = Migrator::new(db.driver().await, set(&folder)).with_config(config());
    let report = m
        .import_flyway(atlas_migrate::FLYWAY_HISTORY_TABLE)
        .await
        .expect("import");
    assert_eq!(
        report.imported,
        vec![Version::new(1), "1.1".parse().expect("v")]
    );
    let applied = m.migrate(None).await.expect("migrate");
    assert_eq!(
        applied.versions,
        vec![Version::new(2)],
        "only the new file ran"
    );
    let nick: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'people' AND column_name = 'nick'",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert_eq!(nick, 1);
    assert_eq!(
        history_rows(&client).await,
        vec![
            ("1".to_owned(), true),
            ("1.1".to_owned(), true),
            ("2".to_owned(), true)
        ]
    );
    // A failed Flyway row blocks an import.
    let db2 = TestDb::new().await;
    let c2 = db2.client().await;
    c2.batch_execute(
        "CREATE TABLE flyway_schema_history (installed_rank int PRIMARY KEY, version varchar(50), description varchar(200), \
         type varchar(20), script varchar(1000), checksum int, installed_by varchar(100), installed_on timestamp, \
         execution_time int, success boolean); \
         INSERT INTO flyway_schema_history VALUES (1, '1', 'people', 'SQL', 'V1__people.sql', 0, 'x', now(), 1, false);",
    )
    .await
    .expect("failed row");
    let err = Migrator::new(db2.driver().await, set(&folder))
        .with_config(config())
        .import_flyway("flyway_schema_history")
        .await
        .expect_err("failed row");
    assert_eq!(err.kind(), ErrorKind::Precondition, "{err}");
}

/// A history table written by an earlier Atlas release (bigint version
/// primary key) is read as it is, and upgraded under the run lock.
#[tokio::test]
#[ignore = "needs postgres; run: cargo xtask test"]
async fn an_old_history_table_is_upgraded_under_the_lock() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "{V1}\nCREATE TABLE atlas_schema_history (version bigint PRIMARY KEY, name text NOT NULL, \
             checksum text NOT NULL, phase text NOT NULL, applied_at timestamptz NOT NULL, \
             duration_ms bigint NOT NULL, success boolean NOT NULL, baseline boolean NOT NULL DEFAULT false);\n\
             INSERT INTO atlas_schema_history VALUES (1, 'accounts', '{}', 'expand', now(), 5, true, false);",
            atlas_migrate::checksum(V1.as_bytes())
        ))
        .await
        .expect("old table");
    let m = Migrator::new(db.driver().await, three()).with_config(config());
    let status = m.status().await.expect("status reads the old table");
    assert_eq!(status[0].state, atlas_migrate::MigrationState::Applied);
    let report = m.migrate(None).await.expect("migrate");
    assert_eq!(report.versions, vec![Version::new(2), Version::new(3)]);
    let kind: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'atlas_schema_history'::regclass AND attname = 'version'",
            &[],
        )
        .await
        .expect("type")
        .get(0);
    assert_eq!(kind, "text");
    assert_eq!(history_versions(&client).await, vec![1, 2, 3]);
}
