//! The migration engine over the in-memory driver, and the zero-downtime lint.

use std::sync::Arc;
use std::time::Duration;

use atlas_core::ErrorKind;
use atlas_core::backup::{BackupTargetExt, ObjectPrefix};
use atlas_core::testing::MemoryDriver;
use atlas_migrate::lint::lint_script;
use atlas_migrate::{
    BackupPolicy, Direction, FailureState, LintConfig, LintSeverity, MigrationPhase, MigrationSet,
    MigrationState, Migrator, MigratorConfig, Script, Version,
};

/// A minimal in-memory backup target (atlas-core has none of its own).
#[derive(Debug, Default)]
struct Store {
    objects: std::sync::Mutex<std::collections::BTreeMap<String, bytes::Bytes>>,
}

impl Store {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, bytes::Bytes>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl atlas_core::backup::BackupTarget for Store {
    async fn put_opts(
        &self,
        key: &atlas_core::backup::ObjectKey,
        body: atlas_core::backup::ByteStream,
        _options: atlas_core::backup::PutOptions,
    ) -> atlas_core::Result<atlas_core::backup::PutResult> {
        use futures::TryStreamExt;
        let chunks: Vec<bytes::Bytes> = body.try_collect().await?;
        let data = bytes::Bytes::from(chunks.concat());
        let result = atlas_core::backup::PutResult::new(
            data.len() as u64,
            atlas_core::backup::Checksum::crc32c_of(&data),
        );
        self.map().insert(key.as_str().to_owned(), data);
        Ok(result)
    }

    async fn get_opts(
        &self,
        key: &atlas_core::backup::ObjectKey,
        _options: atlas_core::backup::GetOptions,
    ) -> atlas_core::Result<atlas_core::backup::GetResult> {
        let data = self
            .map()
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| atlas_core::Error::not_found(key.as_str()))?;
        let meta = atlas_core::backup::ObjectMeta::new(
            key.clone(),
            data.len() as u64,
            std::time::SystemTime::now(),
        );
        let len = data.len() as u64;
        Ok(atlas_core::backup::GetResult::new(
            meta,
            0..len,
            atlas_core::backup::byte_stream(data),
        ))
    }

    async fn head(
        &self,
        key: &atlas_core::backup::ObjectKey,
    ) -> atlas_core::Result<atlas_core::backup::ObjectMeta> {
        Ok(self.get_opts(key, Default::default()).await?.meta)
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        _options: atlas_core::backup::ListOptions,
    ) -> futures::stream::BoxStream<'static, atlas_core::Result<atlas_core::backup::ObjectMeta>>
    {
        let items: Vec<_> = self
            .map()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_str()))
            .map(|(k, v)| {
                atlas_core::backup::ObjectKey::new(k.clone()).map(|key| {
                    atlas_core::backup::ObjectMeta::new(
                        key,
                        v.len() as u64,
                        std::time::SystemTime::now(),
                    )
                })
            })
            .collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn delete(&self, key: &atlas_core::backup::ObjectKey) -> atlas_core::Result<()> {
        self.map().remove(key.as_str());
        Ok(())
    }
}

fn no_backup() -> MigratorConfig {
    MigratorConfig {
        backup: BackupPolicy::Disabled,
        ..MigratorConfig::default()
    }
}

const V1: &str = "CREATE TABLE users (id bigint PRIMARY KEY);";
const V2: &str = "ALTER TABLE users ADD COLUMN email text;";
const V3: &str = "-- atlas:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);";

fn set(files: &[(&str, &str)]) -> MigrationSet {
    MigrationSet::from_sources(files.iter().copied()).expect("valid set")
}

fn three() -> MigrationSet {
    set(&[
        ("V1__users.sql", V1),
        ("V1__users.down.sql", "DROP TABLE users;"),
        ("V2__email.sql", V2),
        ("V2__email.down.sql", "ALTER TABLE users DROP COLUMN email;"),
        ("V3__email_index.sql", V3),
        (
            "V3__email_index.down.sql",
            "-- atlas:no-transaction\nDROP INDEX CONCURRENTLY users_email;",
        ),
    ])
}

fn migrator(driver: &MemoryDriver, set: MigrationSet) -> Migrator<MemoryDriver> {
    Migrator::new(driver.clone(), set).with_config(no_backup())
}

#[test]
fn file_names_versions_and_directives_are_parsed() {
    let s = set(&[
        (
            "V010__later.sql",
            "-- atlas:phase contract\n-- atlas:verify SELECT true\nSELECT 1;",
        ),
        ("V2__first.sql", "SELECT 1;"),
        ("README.md", "ignored"),
    ]);
    let versions: Vec<u64> = s.migrations().iter().map(|m| m.version.major()).collect();
    assert_eq!(versions, vec![2, 10]);
    let later = s.get(Version::new(10)).expect("V10");
    assert_eq!(later.name, "later");
    assert_eq!(later.phase(), MigrationPhase::Contract);
    assert_eq!(later.up.directives.verify, vec!["SELECT true".to_owned()]);
    assert_eq!(later.checksum().len(), 64);
    assert_eq!(
        atlas_migrate::checksum(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn bad_files_are_refused_with_their_name() {
    // A name without `__` is not a migration (Flyway ignores it too): it
    // is named in a warning rather than refused.
    let warned = MigrationSet::from_sources([("V1_x.sql", "")]).expect("ignored");
    assert!(warned.migrations().is_empty());
    assert!(
        warned.warnings().iter().any(|w| w.contains("V1_x.sql")),
        "{:?}",
        warned.warnings()
    );
    for (files, needle) in [
        (vec![("Vx__a.sql", "")], "Vx__a.sql"),
        (vec![("V1__a.sql", ""), ("V01__b.sql", "")], "also used by"),
        (vec![("V1__a.down.sql", "")], "no matching"),
        (vec![("V1__a.sql", "-- atlas:phase sideways")], "sideways"),
        (vec![("V1__a.sql", "-- atlas:bogus")], "unknown directive"),
        (vec![("V1__a.sql", "-- atlas:verify")], "atlas:verify needs"),
    ] {
        let err = MigrationSet::from_sources(files).expect_err(needle);
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
    }
}

#[test]
fn load_reads_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("V1__a.sql"), V1).expect("write");
    std::fs::write(dir.path().join("V1__a.down.sql"), "DROP TABLE users;").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
    let s = MigrationSet::load(dir.path()).expect("load");
    assert_eq!(s.migrations().len(), 1);
    assert!(s.migrations()[0].down.is_some());
    let missing = MigrationSet::load(dir.path().join("nope")).expect_err("missing dir");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[test]
fn no_transaction_scripts_split_into_statements() {
    let script = Script::new(
        "V1__x.sql",
        "-- atlas:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX CONCURRENTLY b ON t (y);\n",
    )
    .expect("script");
    let statements = script.statements();
    assert_eq!(statements.len(), 2, "{statements:?}");
    assert!(statements[1].sql.contains("CONCURRENTLY b"));
}

#[tokio::test]
async fn migrate_applies_in_order_then_is_a_no_op() {
    let driver = MemoryDriver::new();
    let m = migrator(&driver, three());
    let report = m.migrate(None).await.expect("migrate");
    assert_eq!(
        report.versions,
        vec![Version::new(1), Version::new(2), Version::new(3)]
    );
    assert_eq!(
        driver.effects(),
        vec!["V1__users.sql", "V2__email.sql", "V3__email_index.sql"]
    );
    let runs = driver.runs();
    assert!(runs[0].transactional && !runs[2].transactional);
    assert_eq!(runs[0].lock_timeout, Some(Duration::from_secs(5)));
    let again = m.migrate(None).await.expect("re-run");
    assert!(again.versions.is_empty());
    assert_eq!(driver.runs().len(), 3, "re-run ran nothing");
    let status = m.status().await.expect("status");
    assert!(status.iter().all(|s| s.state == MigrationState::Applied));
}

#[tokio::test]
async fn migrate_to_a_target_then_down_to_a_target() {
    let driver = MemoryDriver::new();
    let m = migrator(&driver, three());
    let plan = m.plan(Some(Version::new(2))).await.expect("plan");
    assert_eq!(plan.steps.len(), 2);
    assert!(driver.runs().is_empty(), "plan is a dry run");
    m.migrate(Some(Version::new(2))).await.expect("to V2");
    assert_eq!(driver.rows().len(), 2);
    m.migrate(None).await.expect("rest");
    let down = m.down(Version::new(1)).await.expect("down");
    assert_eq!(down.direction, Direction::Down);
    assert_eq!(down.versions, vec![Version::new(3), Version::new(2)]);
    let rows: Vec<Version> = driver.rows().iter().map(|r| r.version).collect();
    assert_eq!(rows, vec![Version::new(1)]);
    let files: Vec<String> = driver.runs().iter().map(|r| r.file.clone()).collect();
    assert_eq!(
        &files[3..],
        ["V3__email_index.down.sql", "V2__email.down.sql"]
    );
    let err = m
        .migrate(Some(Version::new(0)))
        .await
        .expect_err("below applied");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn down_without_a_down_file_names_it() {
    let driver = MemoryDriver::new();
    let m = migrator(&driver, set(&[("V1__a.sql", V1), ("V2__b.sql", V2)]));
    m.migrate(None).await.expect("migrate");
    let err = m.down(Version::new(0)).await.expect_err("no down file");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("V2__b.down.sql"), "{err}");
    assert_eq!(driver.rows().len(), 2, "nothing reverted");
}

#[tokio::test]
async fn checksum_drift_is_refused_naming_version_and_file_until_repair() {
    let driver = MemoryDriver::new();
    migrator(&driver, three())
        .migrate(None)
        .await
        .expect("migrate");
    let mut changed = vec![
        ("V1__users.sql", V1),
        (
            "V2__email.sql",
            "ALTER TABLE users ADD COLUMN email varchar(10);",
        ),
        ("V3__email_index.sql", V3),
    ];
    let m = migrator(&driver, set(&changed));
    let err = m.migrate(None).await.expect_err("drift");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let text = err.to_string();
    assert!(
        text.contains("V2") && text.contains("V2__email.sql"),
        "{text}"
    );
    let status = m.status().await.expect("status");
    assert_eq!(status[1].state, MigrationState::ChecksumDrift);
    let repaired = m.repair().await.expect("repair");
    assert_eq!(repaired.realigned, vec![Version::new(2)]);
    m.migrate(None).await.expect("accepted after repair");
    changed.pop();
    let missing = migrator(&driver, set(&changed));
    let err = missing.migrate(None).await.expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("V3__email_index.sql"), "{err}");
}

#[tokio::test]
async fn a_new_version_below_the_highest_applied_is_out_of_order() {
    let driver = MemoryDriver::new();
    migrator(&driver, set(&[("V1__a.sql", V1), ("V3__c.sql", V2)]))
        .migrate(None)
        .await
        .expect("migrate");
    let m = migrator(
        &driver,
        set(&[
            ("V1__a.sql", V1),
            ("V2__b.sql", "SELECT 1;"),
            ("V3__c.sql", V2),
        ]),
    );
    let err = m.migrate(None).await.expect_err("out of order");
    assert_eq!(err.kind(), ErrorKind::Precondition);
    assert!(err.to_string().contains("out of order") && err.to_string().contains("V2"));
    assert_eq!(driver.runs().len(), 2);
}

#[tokio::test]
async fn baseline_skips_older_migrations() {
    let driver = MemoryDriver::new();
    let m = migrator(&driver, three());
    m.baseline(Version::new(2)).await.expect("baseline");
    let report = m.migrate(None).await.expect("migrate");
    assert_eq!(report.versions, vec![Version::new(3)]);
    let status = m.status().await.expect("status");
    assert_eq!(status[0].state, MigrationState::BelowBaseline);
    assert_eq!(status[1].state, MigrationState::Baseline);
    let again = m
        .baseline(Version::new(3))
        .await
        .expect_err("history not empty");
    assert_eq!(again.kind(), ErrorKind::Precondition);
    let below = m.down(Version::new(1)).await.expect_err("below baseline");
    assert_eq!(below.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_rolled_back_failure_leaves_earlier_migrations_and_records_nothing() {
    let driver = MemoryDriver::new();
    driver.fail("V2__email.sql", FailureState::RolledBack);
    let m = migrator(&driver, three());
    let err = m.migrate(None).await.expect_err("fails");
    assert!(err.to_string().contains("rolled back"), "{err}");
    let rows: Vec<Version> = driver.rows().iter().map(|r| r.version).collect();
    assert_eq!(rows, vec![Version::new(1)]);
    assert_eq!(driver.effects(), vec!["V1__users.sql"]);
    assert!(
        m.migrate(None).await.is_err(),
        "still failing, still not locked"
    );
}

#[tokio::test]
async fn a_partial_failure_runs_the_down_file() {
    let driver = MemoryDriver::new();
    driver.fail("V3__email_index.sql", FailureState::PartiallyApplied);
    let m = migrator(&driver, three());
    let err = m.migrate(None).await.expect_err("fails");
    assert!(
        err.to_string()
            .contains("reverted by V3__email_index.down.sql"),
        "{err}"
    );
    let files: Vec<String> = driver.runs().iter().map(|r| r.file.clone()).collect();
    assert_eq!(
        files.last().map(String::as_str),
        Some("V3__email_index.down.sql")
    );
    assert_eq!(driver.rows().len(), 2, "V3 not recorded");
}

#[tokio::test]
async fn a_failed_verify_after_commit_runs_the_down_file() {
    let driver = MemoryDriver::new();
    let files = [
        ("V1__users.sql", V1),
        (
            "V2__idx.sql",
            "-- atlas:no-transaction\n-- atlas:verify SELECT false\nCREATE INDEX CONCURRENTLY i ON users (id);",
        ),
        (
            "V2__idx.down.sql",
            "-- atlas:no-transaction\nDROP INDEX CONCURRENTLY i;",
        ),
    ];
    driver.set_verify("SELECT false", false);
    let err = migrator(&driver, set(&files))
        .migrate(None)
        .await
        .expect_err("verify");
    assert!(
        err.to_string().contains("reverted by V2__idx.down.sql"),
        "{err}"
    );
    assert_eq!(
        driver.effects(),
        vec!["V1__users.sql", "V2__idx.sql", "V2__idx.down.sql"]
    );
}

#[tokio::test]
async fn a_partial_failure_without_down_file_stops_with_the_restore_command() {
    let driver = MemoryDriver::new();
    driver.fail("V2__b.sql", FailureState::PartiallyApplied);
    let target = Arc::new(Store::default());
    let m = Migrator::new(driver.clone(), set(&[("V1__a.sql", V1), ("V2__b.sql", V2)]))
        .with_config(MigratorConfig {
            backup: BackupPolicy::To {
                target: target.clone(),
                prefix: ObjectPrefix::new("db/").expect("prefix"),
            },
            ..MigratorConfig::default()
        });
    let err = m.migrate(None).await.expect_err("fails");
    let text = err.to_string();
    assert!(
        text.contains("could not be reverted") && text.contains("db/pre-migrate-"),
        "{text}"
    );
    assert!(
        text.contains("replaying"),
        "restore command printed: {text}"
    );
    let failed = driver
        .rows()
        .into_iter()
        .find(|r| r.version == Version::new(2))
        .expect("row");
    assert!(!failed.success);
    let blocked = m.migrate(None).await.expect_err("failed row blocks");
    assert_eq!(blocked.kind(), ErrorKind::Precondition);
    let repaired = m.repair().await.expect("repair");
    assert_eq!(repaired.removed_failed, vec![Version::new(2)]);
    let backups = target
        .list_all(&ObjectPrefix::new("db/").expect("prefix"))
        .await
        .expect("list");
    assert_eq!(backups.len(), 1, "one backup per run");
}

#[tokio::test]
async fn a_run_without_backup_policy_is_refused_and_lock_conflicts_fail() {
    let driver = MemoryDriver::new();
    let m = Migrator::new(driver.clone(), three());
    let err = m.migrate(None).await.expect_err("no backup policy");
    assert_eq!(err.kind(), ErrorKind::Precondition);
    assert!(driver.runs().is_empty());
    driver.hold_lock();
    let err = migrator(&driver, three())
        .migrate(None)
        .await
        .expect_err("locked");
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[tokio::test]
async fn lint_errors_block_migrate_unless_allowed() {
    let driver = MemoryDriver::new();
    let files = [
        ("V1__a.sql", V1),
        ("V2__idx.sql", "CREATE INDEX i ON users (id);"),
    ];
    let err = migrator(&driver, set(&files))
        .migrate(None)
        .await
        .expect_err("lint");
    assert_eq!(err.kind(), ErrorKind::Precondition);
    assert!(
        err.to_string()
            .contains("require-concurrent-index-creation"),
        "{err}"
    );
    assert!(driver.runs().is_empty(), "nothing ran");
    let plan = migrator(&driver, set(&files))
        .plan(None)
        .await
        .expect("plan");
    let finding = plan.lint.errors().next().expect("finding");
    assert_eq!((finding.file.as_str(), finding.line), ("V2__idx.sql", 1));
    let allowed = Migrator::new(driver.clone(), set(&files)).with_config(MigratorConfig {
        allow_lint_errors: true,
        ..no_backup()
    });
    allowed.migrate(None).await.expect("allowed");
    let warn_only = LintConfig::default()
        .with("require-concurrent-index-creation", LintSeverity::Warning)
        .and_then(|c| c.with("require-lock-timeout", LintSeverity::Off))
        .expect("rule");
    assert!(
        LintConfig::default()
            .with("no-such-rule", LintSeverity::Error)
            .is_err()
    );
    let script = Script::new("V2__idx.sql", files[1].1).expect("script");
    let findings = lint_script(&script, MigrationPhase::Expand, &warn_only);
    assert!(findings.iter().all(|f| f.severity == LintSeverity::Warning));
    assert!(!findings.is_empty());
}

fn errors_of(file: &str, sql: &str, phase: MigrationPhase, config: &LintConfig) -> Vec<String> {
    let script = Script::new(file, sql).expect("script");
    lint_script(&script, phase, config)
        .into_iter()
        .filter(|f| f.severity == LintSeverity::Error)
        .map(|f| f.rule)
        .collect()
}

/// Each unsafe pattern of the issue is flagged, and its safe rewrite passes.
#[test]
fn lint_flags_each_unsafe_pattern_and_passes_the_safe_rewrite() {
    let with_timeouts = LintConfig::default()
        .with("require-lock-timeout", LintSeverity::Off)
        .and_then(|c| c.with("require-statement-timeout", LintSeverity::Off))
        .expect("rules");
    let expand = MigrationPhase::Expand;
    let cases: &[(&str, &str, &str)] = &[
        (
            "require-concurrent-index-creation",
            "CREATE INDEX users_email ON users (email);",
            "-- atlas:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);",
        ),
        (
            "adding-required-field",
            "ALTER TABLE users ADD COLUMN plan text NOT NULL;",
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS plan text NOT NULL DEFAULT 'free';",
        ),
        (
            "changing-column-type",
            "ALTER TABLE users ALTER COLUMN email TYPE varchar(100);",
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS email_v2 text;",
        ),
        (
            "constraint-missing-not-valid",
            "ALTER TABLE users ADD CONSTRAINT email_set CHECK (email IS NOT NULL);",
            "ALTER TABLE users ADD CONSTRAINT email_set CHECK (email IS NOT NULL) NOT VALID;",
        ),
        (
            "expand-phase-destructive",
            "ALTER TABLE users RENAME COLUMN email TO mail;",
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS mail text;",
        ),
        (
            "expand-phase-destructive",
            "ALTER TABLE users DROP COLUMN email;",
            "-- atlas:phase contract\nALTER TABLE users DROP COLUMN IF EXISTS email;",
        ),
        (
            "expand-phase-destructive",
            "DROP TABLE old_users;",
            "-- atlas:phase contract\nDROP TABLE IF EXISTS old_users;",
        ),
        (
            "expand-phase-destructive",
            "ALTER TABLE users RENAME TO accounts;",
            "CREATE TABLE IF NOT EXISTS accounts (id bigint PRIMARY KEY);",
        ),
    ];
    for (rule, unsafe_sql, safe_sql) in cases {
        let found = errors_of("V1__unsafe.sql", unsafe_sql, expand, &with_timeouts);
        assert!(
            found.iter().any(|r| r == rule),
            "{unsafe_sql}: {found:?} lacks {rule}"
        );
        let safe = Script::new("V1__safe.sql", *safe_sql).expect("script");
        let phase = safe.directives.phase;
        let found = errors_of("V1__safe.sql", safe_sql, phase, &with_timeouts);
        assert!(found.is_empty(), "{safe_sql}: {found:?}");
    }
    // A concurrent index cannot run in a transaction: the file runs
    // without one on its own, says why, and so the lint has nothing to
    // refuse.
    let sql = "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);";
    let script = Script::new("V1__tx.sql", sql).expect("script");
    assert!(!script.transactional());
    assert_eq!(
        script.no_transaction_reason.as_deref(),
        Some("CREATE INDEX CONCURRENTLY at line 1")
    );
    let found = errors_of("V1__tx.sql", sql, expand, &with_timeouts);
    assert!(
        !found
            .iter()
            .any(|r| r == "ban-concurrent-index-creation-in-transaction"),
        "{found:?}"
    );
    // Missing lock_timeout, when the runner does not set it.
    let defaults = LintConfig::default();
    let sql = "ALTER TABLE users ADD COLUMN IF NOT EXISTS plan text;";
    let found = errors_of("V1__t.sql", sql, expand, &defaults);
    assert!(
        found.iter().any(|r| r == "require-lock-timeout"),
        "{found:?}"
    );
    let safe = format!("SET lock_timeout = '1s';\nSET statement_timeout = '5s';\n{sql}");
    let found = errors_of("V1__t.sql", &safe, expand, &defaults);
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test]
async fn the_runner_set_lock_timeout_silences_the_timeout_rules_only_when_set() {
    let files = [(
        "V1__a.sql",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS plan text;",
    )];
    let driver = MemoryDriver::new();
    let plan = migrator(&driver, set(&files))
        .plan(None)
        .await
        .expect("plan");
    assert!(!plan.lint.has_errors(), "{:?}", plan.lint);
    let m = Migrator::new(driver.clone(), set(&files)).with_config(MigratorConfig {
        lock_timeout: None,
        ..no_backup()
    });
    let plan = m.plan(None).await.expect("plan");
    assert!(plan.lint.errors().any(|f| f.rule == "require-lock-timeout"));
}

#[tokio::test]
async fn the_backup_is_taken_before_any_change_and_recorded() {
    let driver = MemoryDriver::new();
    let target = Arc::new(Store::default());
    let m = Migrator::new(driver.clone(), three()).with_config(MigratorConfig {
        backup: BackupPolicy::To {
            target: target.clone(),
            prefix: ObjectPrefix::new("pre/").expect("prefix"),
        },
        ..MigratorConfig::default()
    });
    m.migrate(Some(Version::new(1))).await.expect("first");
    let report = m.migrate(None).await.expect("rest");
    let backup = report.backup.expect("recorded with the run");
    assert!(backup.key.as_str().starts_with("pre/pre-migrate-"));
    assert!(backup.key.as_str().ends_with("-V2-V3.dump"));
    let body = target.get_bytes(&backup.key).await.expect("stored");
    assert_eq!(&body[..], b"V1__users.sql", "taken before V2 ran");
    let none = m.migrate(None).await.expect("no-op");
    assert!(none.backup.is_none(), "no backup when nothing runs");
}

#[tokio::test]
async fn invariant_tables_reach_the_driver_minus_declared_ones_and_never_on_down() {
    let driver = MemoryDriver::new();
    let files = [
        ("V1__a.sql", V1),
        ("V1__a.down.sql", "DROP TABLE users;"),
        (
            "V2__backfill.sql",
            "-- atlas:allow-data-change users\nUPDATE users SET id = id;",
        ),
        ("V2__backfill.down.sql", "SELECT 1;"),
    ];
    let m = Migrator::new(driver.clone(), set(&files)).with_config(MigratorConfig {
        invariant_tables: vec!["users".to_owned(), "orders".to_owned()],
        ..no_backup()
    });
    m.migrate(None).await.expect("migrate");
    m.down(Version::new(0)).await.expect("down");
    let got: Vec<(String, Vec<String>)> = driver
        .runs()
        .into_iter()
        .map(|r| (r.file, r.invariants))
        .collect();
    let both = vec!["users".to_owned(), "orders".to_owned()];
    assert_eq!(
        got,
        vec![
            ("V1__a.sql".to_owned(), both),
            ("V2__backfill.sql".to_owned(), vec!["orders".to_owned()]),
            ("V2__backfill.down.sql".to_owned(), vec![]),
            ("V1__a.down.sql".to_owned(), vec![]),
        ]
    );
    let bad = MigrationSet::from_sources([("V1__a.sql", "-- atlas:allow-data-change\nSELECT 1;")]);
    assert_eq!(bad.expect_err("no table").kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn expand_runs_up_to_the_first_contract_migration_and_contract_runs_the_rest() {
    let driver = MemoryDriver::new();
    let files = [
        ("V1__a.sql", V1),
        ("V2__email.sql", V2),
        (
            "V3__drop_old.sql",
            "-- atlas:phase contract\nALTER TABLE users DROP COLUMN IF EXISTS legacy;",
        ),
        (
            "V4__next.sql",
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS plan text;",
        ),
    ];
    let m = migrator(&driver, set(&files));
    let expand = m
        .migrate_phase(MigrationPhase::Expand)
        .await
        .expect("expand");
    assert_eq!(expand.versions, vec![Version::new(1), Version::new(2)]);
    let again = m
        .migrate_phase(MigrationPhase::Expand)
        .await
        .expect("expand again");
    assert!(
        again.versions.is_empty(),
        "blocked by the pending contract V3"
    );
    let contract = m
        .migrate_phase(MigrationPhase::Contract)
        .await
        .expect("contract");
    assert_eq!(contract.versions, vec![Version::new(3), Version::new(4)]);
}

#[tokio::test]
async fn shared_and_boxed_drivers_are_drivers() {
    let driver = MemoryDriver::new();
    let shared = Migrator::new(Arc::new(driver.clone()), three()).with_config(no_backup());
    shared.migrate(Some(Version::new(1))).await.expect("arc");
    let boxed: Box<dyn atlas_migrate::MigrationDriver> = Box::new(driver.clone());
    let boxed = Migrator::new(boxed, three()).with_config(no_backup());
    let report = boxed.migrate(None).await.expect("box");
    assert_eq!(report.versions, vec![Version::new(2), Version::new(3)]);
}

#[tokio::test]
async fn transaction_control_in_a_transactional_file_is_refused_naming_file_and_line() {
    let driver = MemoryDriver::new();
    let lenient = MigratorConfig {
        allow_lint_errors: true,
        ..no_backup()
    };
    for (file, sql, line) in [
        (
            "V1__c.sql",
            "CREATE TABLE a (id int);\nCOMMIT;\nSELECT 1/0;",
            2,
        ),
        (
            "V1__w.sql",
            "-- wrapped\nBEGIN;\nCREATE TABLE a (id int);\nCOMMIT;",
            2,
        ),
        (
            "V1__r.sql",
            "CREATE TABLE a (id int);\n\nrollback prepared 'x';",
            3,
        ),
    ] {
        let m = Migrator::new(driver.clone(), set(&[(file, sql)])).with_config(lenient.clone());
        let err = m.migrate(None).await.expect_err(file);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(&format!("{file}:{line}")), "{err}");
        assert!(driver.runs().is_empty(), "nothing ran for {file}");
    }
    // Savepoints, bodies and no-transaction files are fine.
    let fine = set(&[
        (
            "V1__s.sql",
            "SAVEPOINT s;\nCREATE TABLE a (id int);\nROLLBACK TO SAVEPOINT s;\nRELEASE s;\n\
             DO $$ BEGIN COMMIT; END $$;",
        ),
        (
            "V2__n.sql",
            "-- atlas:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;",
        ),
    ]);
    let m = Migrator::new(driver.clone(), fine).with_config(lenient);
    let report = m.migrate(None).await.expect("allowed");
    assert_eq!(report.versions, vec![Version::new(1), Version::new(2)]);
}

#[test]
fn flyway_versions_order_numerically_and_equal_spellings_collide() {
    let s = set(&[
        ("V1.10__ten.sql", "SELECT 10;"),
        ("V1.9__nine.sql", "SELECT 9;"),
        ("V1_2__two.sql", "SELECT 2;"),
        ("V1.2.3__three.sql", "SELECT 3;"),
        ("V2__x.sql", "SELECT 20;"),
    ]);
    let order: Vec<String> = s.migrations().iter().map(|m| m.version.dotted()).collect();
    assert_eq!(order, vec!["1.2", "1.2.3", "1.9", "1.10", "2"]);
    assert_eq!(s.migrations()[0].up.file, "V1_2__two.sql");
    let err = MigrationSet::from_sources([("V1.1__a.sql", ""), ("V1_1__b.sql", "")])
        .expect_err("one version twice");
    let text = err.to_string();
    assert!(
        text.contains("V1.1__a.sql") && text.contains("V1_1__b.sql"),
        "{text}"
    );
    assert_eq!("V1.0".parse::<Version>().expect("v"), Version::new(1));
    assert!("1..2".parse::<Version>().is_err());
    assert!("1.x".parse::<Version>().is_err());
}

#[tokio::test]
async fn repeatables_run_after_versioned_ones_in_name_order_whenever_they_change() {
    let driver = MemoryDriver::new();
    let options =
        |value: &str| atlas_migrate::SourceOptions::default().with_placeholder("who", value);
    let files = |view: &str| {
        vec![
            (
                "V1__t.sql".to_owned(),
                "CREATE TABLE t (id bigint);".to_owned(),
            ),
            ("R__b_view.sql".to_owned(), view.to_owned()),
            (
                "sub/R__a_func.sql".to_owned(),
                "SELECT '${who}';".to_owned(),
            ),
        ]
    };
    let load = |view: &str, who: &str| {
        MigrationSet::from_sources_with(files(view), &options(who)).expect("set")
    };
    let m = migrator(&driver, load("SELECT 1;", "ann"));
    let plan = m.plan(None).await.expect("plan");
    let names: Vec<&str> = plan.repeatables.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["a_func", "b_view"]);
    let report = m.migrate(None).await.expect("first");
    assert_eq!(report.versions, vec![Version::new(1)]);
    assert_eq!(report.repeatables, vec!["a_func", "b_view"]);
    let order: Vec<String> = driver.runs().iter().map(|r| r.file.clone()).collect();
    assert_eq!(
        order,
        vec!["V1__t.sql", "sub/R__a_func.sql", "R__b_view.sql"]
    );
    assert_eq!(driver.rows().len(), 1, "repeatables have no versioned row");
    assert_eq!(driver.repeatable_rows().len(), 2);
    // Unchanged: nothing runs.
    let again = migrator(&driver, load("SELECT 1;", "ann"))
        .migrate(None)
        .await
        .expect("again");
    assert!(again.versions.is_empty() && again.repeatables.is_empty());
    // A changed file, or a new placeholder value, runs it again.
    let changed = migrator(&driver, load("SELECT 2;", "bob"));
    let status = changed.repeatable_status().await.expect("status");
    assert!(
        status
            .iter()
            .all(|s| s.state == atlas_migrate::RepeatableState::Outdated),
        "{status:?}"
    );
    let report = changed.migrate(None).await.expect("changed");
    assert_eq!(report.repeatables, vec!["a_func", "b_view"]);
    // A target below the newest version runs no repeatable.
    let mut newer = files("SELECT 3;");
    newer.push(("V2__u.sql".to_owned(), "SELECT 1;".to_owned()));
    let m = migrator(
        &driver,
        MigrationSet::from_sources_with(newer, &options("bob")).expect("set"),
    );
    let plan = m.plan(Some(Version::new(1))).await.expect("plan to V1");
    assert!(plan.repeatables.is_empty(), "{plan:?}");
    assert_eq!(m.plan(None).await.expect("plan").repeatables.len(), 1);
}
