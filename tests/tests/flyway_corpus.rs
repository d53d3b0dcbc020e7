//! Real Flyway migration folders of public PostgreSQL projects
//! (`tests/corpus/flyway/<project>/`, each with a README naming its source
//! and licence), run through the zero-downtime lint and, against a real
//! server, through the migration engine.
//!
//! - `lint_findings_match_the_pinned_list` (plain `cargo test`): the lint
//!   over each folder, in Flyway order, must report exactly the findings in
//!   the folder's `lint-findings.txt` (file, line, rule), so a lint change
//!   that adds or drops a finding shows up here and in review.
//! - `engine_and_psql_build_the_same_schema` (needs PostgreSQL and feature
//!   `postgres`): each folder applied by the engine into one fresh database
//!   (then re-run: nothing left to apply) and by `psql -v ON_ERROR_STOP=1
//!   -f` file by file into another must give the same `pg_dump
//!   --schema-only`, the history tables aside.
//!
//! Run: `cargo test -p atlas-tests --test flyway_corpus`, and with a
//! server: `ATLAS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5433/postgres
//! cargo test -p atlas-tests --features postgres --test flyway_corpus -- --ignored`.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use atlas_migrate::{LintConfig, LintSeverity, MigrationPhase, PlanLinter, Script};

/// The projects under `tests/corpus/flyway/`.
const PROJECTS: &[&str] = &["kestra", "marquez"];

fn corpus(project: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/flyway")
        .join(project)
}

/// A versioned file's version: its dotted or underscored numbers.
fn version_of(file: &str) -> Option<Vec<u64>> {
    let rest = file.strip_prefix('V')?;
    let (version, _) = rest.split_once("__")?;
    version
        .split(['.', '_'])
        .map(|part| part.parse().ok())
        .collect()
}

/// Flyway's order: versioned files by version, numbers compared part by
/// part (`2` < `2.1` < `10`), then repeatable `R__` files by description.
fn flyway_order(dir: &Path) -> Vec<String> {
    let mut versioned: Vec<(Vec<u64>, String)> = Vec::new();
    let mut repeatable: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).expect("corpus folder") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("UTF-8 name");
        if !name.ends_with(".sql") {
            continue;
        }
        if name.starts_with("R__") {
            repeatable.push(name);
        } else {
            let version = version_of(&name).unwrap_or_else(|| panic!("{name}: no version"));
            versioned.push((version, name));
        }
    }
    versioned.sort_by(|(a, _), (b, _)| compare_versions(a, b));
    repeatable.sort();
    versioned
        .into_iter()
        .map(|(_, name)| name)
        .chain(repeatable)
        .collect()
}

/// Missing trailing parts count as zero, as in Flyway (`1` = `1.0`).
fn compare_versions(a: &[u64], b: &[u64]) -> Ordering {
    let len = a.len().max(b.len());
    let part = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| part(a, i).cmp(&part(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The lint as the migrator runs it by default (it sets `lock_timeout`
/// itself, so the timeout rules are off), without squawk's style rules
/// (`prefer-*`, `ban-char-field`), which say nothing about downtime.
fn corpus_lint_config() -> LintConfig {
    let mut config = LintConfig::default();
    for rule in [
        "require-lock-timeout",
        "require-statement-timeout",
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-identity",
        "prefer-robust-stmts",
        "prefer-text-field",
        "prefer-timestamptz",
        "ban-char-field",
    ] {
        config.set(rule, LintSeverity::Off).expect("known rule");
    }
    config
}

/// `file:line rule` for every finding over the folder, in Flyway order.
fn lint_folder(project: &str) -> Vec<String> {
    let dir = corpus(project);
    let config = corpus_lint_config();
    let mut linter = PlanLinter::new(&config);
    let mut out = Vec::new();
    for file in flyway_order(&dir) {
        let script = Script::new(file.clone(), read(&dir, &file)).expect("script");
        // Flyway files carry no phase directive: every one is an expand
        // migration, run while the previous release serves traffic.
        for finding in linter.lint(&script, MigrationPhase::Expand) {
            out.push(format!(
                "{}:{} {}",
                finding.file, finding.line, finding.rule
            ));
        }
    }
    out
}

#[test]
fn the_corpus_is_in_flyway_order() {
    let kestra = flyway_order(&corpus("kestra"));
    assert!(kestra.len() >= 20, "{}", kestra.len());
    assert_eq!(kestra[0], "V1_1__initial.sql");
    assert_eq!(kestra[1], "V1_2__worker_heartbeat.sql");
    assert!(
        kestra
            .iter()
            .position(|f| f == "V1_9__execution_queued.sql")
            < kestra
                .iter()
                .position(|f| f == "V1_10__multitenant_indices.sql")
    );

    let marquez = flyway_order(&corpus("marquez"));
    assert!(marquez.len() >= 20, "{}", marquez.len());
    let at = |f: &str| marquez.iter().position(|x| x == f).expect(f);
    assert!(
        at("V2__add_job_contexts.sql") < at("V2.1__alter_job_versions_to_add_job_context_uuid.sql")
    );
    assert!(
        at("V2.1__alter_job_versions_to_add_job_context_uuid.sql")
            < at("V3__drop_not_null_constraint_on_job_location.sql")
    );
    assert!(
        at("V9__alter_sources_to_drop_composite_unique_constraint.sql")
            < at("V10__drop_unique_constraint_on_job_name.sql")
    );
    assert!(
        marquez[marquez.len() - 3..]
            .iter()
            .all(|f| f.starts_with("R__"))
    );
    assert_eq!(compare_versions(&[1], &[1, 0]), Ordering::Equal);
}

#[test]
fn lint_findings_match_the_pinned_list() {
    let mut failures = Vec::new();
    for project in PROJECTS {
        let found = lint_folder(project);
        let pinned_path = corpus(project).join("lint-findings.txt");
        let pinned: Vec<String> = read(&corpus(project), "lint-findings.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let added: Vec<&String> = found.iter().filter(|f| !pinned.contains(f)).collect();
        let dropped: Vec<&String> = pinned.iter().filter(|p| !found.contains(p)).collect();
        if !added.is_empty() || !dropped.is_empty() || found.len() != pinned.len() {
            failures.push(format!(
                "{project}: {} found, {} pinned in {}\n  new: {added:#?}\n  gone: {dropped:#?}",
                found.len(),
                pinned.len(),
                pinned_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every rule the corpus trips is one the README reviews; a finding of a
/// rule nobody reviewed fails here even when someone re-pins the list.
#[test]
fn every_pinned_rule_is_reviewed_in_the_readme() {
    for project in PROJECTS {
        let readme = read(&corpus(project), "README.md");
        for finding in lint_folder(project) {
            let (place, rule) = finding.split_once(' ').expect("file:line rule");
            let file = place.split(':').next().expect("file");
            assert!(
                readme.contains(&format!("`{rule}`")) && readme.contains(file),
                "{project}: {finding} is not reviewed in README.md"
            );
        }
    }
}

/// Cut-off files (a dollar quote or a DO block left open, half a
/// statement) are bad input the lint must report, never panic on.
#[test]
fn truncated_files_never_panic_the_lint() {
    let config = corpus_lint_config();
    for project in PROJECTS {
        let dir = corpus(project);
        for file in flyway_order(&dir) {
            let sql = read(&dir, &file);
            for cut in (1..8).map(|i| sql.len() * i / 8) {
                let Some(prefix) = (cut..sql.len()).find_map(|c| sql.get(..c)) else {
                    continue;
                };
                // A loader may refuse the file outright with a typed error;
                // what it accepts, the lint must take.
                let Ok(script) = Script::new(file.clone(), prefix) else {
                    continue;
                };
                let last_line = prefix.matches('\n').count() + 1;
                let findings = PlanLinter::new(&config).lint(&script, MigrationPhase::Expand);
                assert!(
                    findings.iter().all(|f| (1..=last_line).contains(&f.line)),
                    "{file} cut at {cut}: {findings:?}"
                );
            }
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    //! The engine against `psql` on a real server.

    use std::process::Command;

    use atlas_migrate::{BackupPolicy, MigrationSet, Migrator, MigratorConfig};
    use atlas_storage::postgres::PostgresDriver;
    use tokio_postgres::{Client, NoTls};

    use super::{PROJECTS, corpus, flyway_order, read};

    fn admin_url() -> String {
        std::env::var("ATLAS_TEST_POSTGRES_URL")
            .expect("ATLAS_TEST_POSTGRES_URL must name the test server (cargo xtask test sets it)")
    }

    async fn connect(url: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("connect to the test postgres");
        tokio::spawn(conn);
        client
    }

    /// A fresh database, dropped when the value is dropped (even on panic).
    struct ScratchDb {
        name: String,
    }

    impl ScratchDb {
        async fn new(tag: &str) -> Self {
            let name = format!("atlas_flyway_{tag}_{:012x}", rand::random::<u64>() >> 16);
            connect(&admin_url())
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
            ScratchDb { name }
        }

        fn url(&self) -> String {
            let admin = admin_url();
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            format!("{base}/{}", self.name)
        }
    }

    impl Drop for ScratchDb {
        fn drop(&mut self) {
            let name = self.name.clone();
            let _ = Command::new("psql")
                .args(["-X", "-q", &admin_url(), "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .status();
        }
    }

    /// `pg_dump --schema-only` without what differs by construction: the
    /// history tables of the engine and of Flyway, comments, the random
    /// `\restrict` key of newer pg_dump releases, and blank lines.
    fn schema_dump(url: &str) -> String {
        let out = Command::new("pg_dump")
            .args([
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "--no-comments",
            ])
            .arg(format!("--dbname={url}"))
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("UTF-8 dump");
        normalise(&text)
    }

    const HISTORY_TABLES: &[&str] = &["atlas_schema_history", "flyway_schema_history"];

    fn normalise(dump: &str) -> String {
        // pg_dump separates objects by blank lines; each block that names a
        // history table (its CREATE, its keys, its indexes) goes.
        dump.split("\n\n")
            .filter(|block| !HISTORY_TABLES.iter().any(|t| block.contains(t)))
            .flat_map(str::lines)
            .map(str::trim_end)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text Flyway would run: placeholders substituted. These corpora
    /// use none, so the check is that none is present; a folder that uses
    /// them needs the same substitution here as in the engine.
    fn substituted(file: &str, sql: &str) -> String {
        assert!(!sql.contains("${"), "{file}: uses Flyway placeholders");
        sql.to_owned()
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL; run: cargo xtask test"]
    async fn engine_and_psql_build_the_same_schema() {
        for project in PROJECTS {
            let dir = corpus(project);

            let engine_db = ScratchDb::new("engine").await;
            let set = MigrationSet::load(&dir).expect("the engine reads the Flyway folder");
            let files = flyway_order(&dir);
            assert_eq!(
                set.migrations().len() + set.repeatables().len(),
                files.len(),
                "{project}: the engine sees every file"
            );
            let driver = PostgresDriver::builder(engine_db.url())
                .connect()
                .await
                .expect("driver");
            let config = MigratorConfig {
                backup: BackupPolicy::Disabled,
                // The corpus trips the lint (that is its other test); this
                // one is about applying it.
                allow_lint_errors: true,
                ..MigratorConfig::default()
            };
            let migrator = Migrator::new(driver, set).with_config(config);
            let first = migrator
                .migrate(None)
                .await
                .expect("engine applies the corpus");
            assert_eq!(
                first.versions.len() + first.repeatables.len(),
                files.len(),
                "{project}: every versioned and repeatable file applied"
            );
            let again = migrator.migrate(None).await.expect("re-run");
            assert!(
                again.versions.is_empty() && again.repeatables.is_empty(),
                "{project}: re-run applied {:?} {:?}",
                again.versions,
                again.repeatables
            );

            let psql_db = ScratchDb::new("psql").await;
            for file in &files {
                let sql = substituted(file, &read(&dir, file));
                let path = std::env::temp_dir().join(format!("{}-{file}", psql_db.name));
                std::fs::write(&path, sql).expect("write substituted file");
                let out = Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                    .arg(&path)
                    .arg(psql_db.url())
                    .output()
                    .expect("run psql");
                let _ = std::fs::remove_file(&path);
                assert!(
                    out.status.success(),
                    "{project}/{file} through psql: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }

            let by_engine = schema_dump(&engine_db.url());
            let by_psql = schema_dump(&psql_db.url());
            assert!(by_psql.contains("CREATE TABLE"), "{project}: empty dump");
            if by_engine != by_psql {
                let engine_lines: Vec<&str> = by_engine.lines().collect();
                let psql_lines: Vec<&str> = by_psql.lines().collect();
                let only_engine: Vec<&&str> = engine_lines
                    .iter()
                    .filter(|l| !psql_lines.contains(l))
                    .collect();
                let only_psql: Vec<&&str> = psql_lines
                    .iter()
                    .filter(|l| !engine_lines.contains(l))
                    .collect();
                panic!(
                    "{project}: schemas differ\n  only via the engine: {only_engine:#?}\n  only via psql: {only_psql:#?}"
                );
            }
        }
    }

    #[test]
    fn normalising_drops_history_tables_and_noise() {
        let dump = "--\n-- Name: t\n--\n\nCREATE TABLE public.t (\n    id integer\n);\n\n\
                    CREATE TABLE public.atlas_schema_history (\n    version bigint\n);\n\n\
                    \\restrict abc\n\nALTER TABLE ONLY public.flyway_schema_history\n    ADD CONSTRAINT k PRIMARY KEY (installed_rank);\n";
        assert_eq!(
            normalise(dump),
            "CREATE TABLE public.t (\n    id integer\n);"
        );
    }
}
