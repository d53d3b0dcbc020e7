//! Rules and non-alarms, one small SQL snippet each.

use super::config::atlas_rule_default;
use super::rules::{ATLAS_RULES, squawk_rules};
use super::*;

/// The runner sets both timeouts by default, so the lint's timeout rules
/// are off here as they are under the migrator; squawk's style rules
/// (`prefer-*`) are off so each case shows only the rule it is about.
fn config() -> LintConfig {
    let mut config = LintConfig::default();
    let style = squawk_rules()
        .into_iter()
        .map(|r| r.to_string())
        .filter(|r| r.starts_with("prefer-"));
    let timeouts = ["require-lock-timeout", "require-statement-timeout"].map(String::from);
    for rule in style.chain(timeouts) {
        config.set(&rule, LintSeverity::Off).expect("rule");
    }
    config
}

fn lint_with(
    config: &LintConfig,
    before: &[&str],
    sql: &str,
    phase: MigrationPhase,
) -> Vec<(String, usize)> {
    let mut linter = PlanLinter::new(config);
    for (i, sql) in before.iter().enumerate() {
        linter.learn(&Script::new(format!("V{i}__before.sql"), *sql).expect("script"));
    }
    let script = Script::new("V9__linted.sql", sql).expect("script");
    linter
        .lint(&script, phase)
        .into_iter()
        .map(|f| (f.rule, f.line))
        .collect()
}

fn lint(before: &[&str], sql: &str) -> Vec<(String, usize)> {
    lint_with(&config(), before, sql, MigrationPhase::Expand)
}

fn rules(found: &[(String, usize)]) -> Vec<&str> {
    found.iter().map(|(r, _)| r.as_str()).collect()
}

const USERS: &str =
    "CREATE TABLE users (id bigint, email varchar(100), nick varchar, bio text, age int);";

#[test]
fn varchar_widening_is_not_a_type_change_alarm() {
    for sql in [
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(200);",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(100);",
        "ALTER TABLE public.users ALTER COLUMN email TYPE character varying(255);",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar;",
        "ALTER TABLE users ALTER COLUMN email TYPE text;",
        "ALTER TABLE users ALTER COLUMN email SET DATA TYPE TEXT;",
        "ALTER TABLE users ALTER COLUMN nick TYPE text;",
        "ALTER TABLE users ALTER COLUMN bio TYPE text;",
    ] {
        assert_eq!(lint(&[USERS], sql), [], "{sql}");
    }
}

#[test]
fn rewriting_type_changes_are_still_reported() {
    for sql in [
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(50);",
        "ALTER TABLE users ALTER COLUMN bio TYPE varchar(50);",
        "ALTER TABLE users ALTER COLUMN age TYPE bigint;",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(200) USING lower(email);",
        "ALTER TABLE users ALTER COLUMN email TYPE text COLLATE \"C\";",
        // Unknown table or column: nothing proves the change is safe.
        "ALTER TABLE other ALTER COLUMN email TYPE varchar(200);",
        "ALTER TABLE users ALTER COLUMN missing TYPE text;",
    ] {
        assert_eq!(
            rules(&lint(&[USERS], sql)),
            ["changing-column-type"],
            "{sql}"
        );
    }
    // The model follows earlier type changes: varchar(100) → text → varchar(20).
    let found = lint(
        &[USERS, "ALTER TABLE users ALTER COLUMN email TYPE text;"],
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(20);",
    );
    assert_eq!(rules(&found), ["changing-column-type"]);
    // And a change earlier in the same file.
    let found = lint(
        &[USERS],
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(300);\nALTER TABLE users ALTER COLUMN email TYPE varchar(200);",
    );
    assert_eq!(found, [("changing-column-type".to_owned(), 2)]);
}

#[test]
fn adding_an_enum_value_is_not_an_alarm() {
    for sql in [
        "ALTER TYPE mood ADD VALUE 'meh';",
        "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh' BEFORE 'sad';",
        "ALTER TYPE mood ADD VALUE 'meh' AFTER 'happy';",
    ] {
        assert_eq!(lint(&[], sql), [], "{sql}");
    }
}

#[test]
fn a_new_enum_value_used_in_the_same_transaction_is_reported() {
    let sql = "ALTER TYPE mood ADD VALUE 'meh';\nUPDATE people SET mood = 'meh' WHERE id = 1;";
    assert_eq!(
        lint(&[], sql),
        [(ENUM_VALUE_USED_IN_TRANSACTION.to_owned(), 2)]
    );
    // Outside a transaction the value is committed before its use.
    let sql = format!("-- atlas:no-transaction\n{sql}");
    assert_eq!(lint(&[], &sql), []);
    // Another value is fine.
    let sql = "ALTER TYPE mood ADD VALUE 'meh';\nUPDATE people SET mood = 'sad' WHERE id = 1;";
    assert_eq!(lint(&[], sql), []);
}

#[test]
fn tables_created_in_the_file_are_exempt_from_lock_rules() {
    let sql = "CREATE TABLE app.accounts (id bigint PRIMARY KEY, name varchar(10), owner bigint);
ALTER TABLE accounts ADD COLUMN plan text NOT NULL;
ALTER TABLE app.accounts ADD COLUMN tier int NOT NULL DEFAULT random();
ALTER TABLE accounts ALTER COLUMN owner TYPE int;
ALTER TABLE app.accounts ADD CONSTRAINT name_set CHECK (name IS NOT NULL);
ALTER TABLE accounts ADD CONSTRAINT owner_fk FOREIGN KEY (owner) REFERENCES users (id);
ALTER TABLE accounts ADD CONSTRAINT name_uq UNIQUE (name);
CREATE INDEX accounts_name ON app.accounts (name);
DROP INDEX accounts_name;
ALTER TABLE accounts RENAME COLUMN name TO title;
ALTER TABLE accounts DROP COLUMN tier;
UPDATE accounts SET plan = 'free';
DELETE FROM app.accounts;
DROP TABLE accounts;";
    assert_eq!(lint(&[USERS], sql), []);
}

#[test]
fn tables_from_queries_and_materialized_views_are_new_too() {
    let sql = "CREATE TABLE copy AS SELECT * FROM users;
CREATE INDEX copy_id ON copy (id);
CREATE MATERIALIZED VIEW IF NOT EXISTS stats AS SELECT count(*) AS n FROM users;
CREATE INDEX stats_n ON stats (n);";
    assert_eq!(lint(&[USERS], sql), []);
    // A materialized view an earlier migration made is not new.
    let sql = "CREATE MATERIALIZED VIEW IF NOT EXISTS stats AS SELECT 1 AS n;\nCREATE INDEX stats_n ON stats (n);";
    let before = "CREATE MATERIALIZED VIEW stats AS SELECT 1 AS n;";
    assert_eq!(
        lint(&[before], sql),
        [("require-concurrent-index-creation".to_owned(), 2)]
    );
}

#[test]
fn the_exemption_is_for_new_tables_only() {
    // Another schema's table of the same name is not the new one.
    let sql = "CREATE TABLE app.accounts (id bigint);\nUPDATE billing.accounts SET id = 1;";
    assert_eq!(lint(&[], sql), [(WHOLE_TABLE_UPDATE.to_owned(), 2)]);
    // A statement before the CREATE TABLE is on an older table.
    let sql = "CREATE INDEX i ON accounts (id);\nCREATE TABLE accounts2 (id bigint);";
    assert_eq!(
        rules(&lint(&[], sql)),
        ["require-concurrent-index-creation"]
    );
    // CREATE TABLE IF NOT EXISTS of a table an earlier migration made
    // creates nothing.
    let sql = "CREATE TABLE IF NOT EXISTS users (id bigint);\nDELETE FROM users;";
    assert_eq!(lint(&[USERS], sql), [(WHOLE_TABLE_DELETE.to_owned(), 2)]);
    assert_eq!(lint(&[], sql), []);
    // Dropping an index the file did not build on a new table.
    let sql = "CREATE TABLE t (id bigint);\nDROP INDEX users_email;";
    assert_eq!(
        lint(&[], sql),
        [("require-concurrent-index-deletion".to_owned(), 2)]
    );
}

#[test]
fn do_block_statements_are_linted_at_their_lines() {
    let sql = "DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN
    CREATE TYPE mood AS ENUM ('happy');
  END IF;
  ALTER TABLE users ALTER COLUMN age TYPE bigint;
  ALTER TYPE mood RENAME VALUE 'happy' TO 'glad';
  EXECUTE 'CREATE INDEX users_age ON users (age)';
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;";
    assert_eq!(
        lint(&[USERS], sql),
        [
            ("changing-column-type".to_owned(), 6),
            ("renaming-object".to_owned(), 7),
            ("require-concurrent-index-creation".to_owned(), 8),
        ]
    );
}

#[test]
fn single_quoted_do_bodies_and_do_on_new_tables() {
    let sql = "DO 'BEGIN\n  UPDATE users SET bio = ''x'';\nEND';";
    assert_eq!(lint(&[USERS], sql), [(WHOLE_TABLE_UPDATE.to_owned(), 2)]);
    let sql =
        "CREATE TABLE t (a int);\nDO $$ BEGIN ALTER TABLE t ALTER COLUMN a TYPE bigint; END $$;";
    assert_eq!(lint(&[], sql), []);
}

#[test]
fn function_bodies_are_not_migration_statements() {
    let sql = "CREATE OR REPLACE FUNCTION purge() RETURNS void AS $$
BEGIN
  DELETE FROM users;
  ALTER TABLE users ALTER COLUMN age TYPE bigint;
END
$$ LANGUAGE plpgsql;";
    assert_eq!(lint(&[USERS], sql), []);
}

#[test]
fn whole_table_backfills_are_reported_in_expand_migrations() {
    for (sql, rule) in [
        ("UPDATE users SET bio = '';", WHOLE_TABLE_UPDATE),
        ("UPDATE users SET bio = '' WHERE true;", WHOLE_TABLE_UPDATE),
        (
            "UPDATE ONLY users SET bio = '' WHERE 1 = 1;",
            WHOLE_TABLE_UPDATE,
        ),
        ("DELETE FROM users;", WHOLE_TABLE_DELETE),
        ("DELETE FROM users WHERE TRUE;", WHOLE_TABLE_DELETE),
    ] {
        assert_eq!(rules(&lint(&[USERS], sql)), [rule], "{sql}");
        let contract = lint_with(&config(), &[USERS], sql, MigrationPhase::Contract);
        assert_eq!(contract, [], "{sql} in a contract migration");
    }
    for sql in [
        "UPDATE users SET bio = '' WHERE id < 1000;",
        "DELETE FROM users WHERE email IS NULL;",
        "UPDATE users SET bio = n.bio FROM new_bios n WHERE n.id = users.id;",
    ] {
        assert_eq!(lint(&[USERS], sql), [], "{sql}");
    }
}

#[test]
fn a_concurrent_index_alone_runs_without_a_transaction_and_is_fine() {
    for sql in [
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);",
        "SET lock_timeout = '1s';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);",
        "DROP INDEX CONCURRENTLY IF EXISTS users_email;",
        "-- atlas:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);",
    ] {
        assert_eq!(lint(&[USERS], sql), [], "{sql}");
    }
}

#[test]
fn a_concurrent_index_mixed_with_other_statements_is_reported() {
    let sql = "ALTER TABLE users ADD COLUMN IF NOT EXISTS plan text;\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_plan ON users (plan);";
    assert_eq!(
        lint(&[USERS], sql),
        [(NON_TRANSACTIONAL_MIXED.to_owned(), 2)]
    );
    let sql = "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON users (email);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS b ON users (bio);";
    assert_eq!(
        lint(&[USERS], sql),
        [(NON_TRANSACTIONAL_MIXED.to_owned(), 1)]
    );
    // Also with the directive: the risk is the same.
    let sql = "-- atlas:no-transaction\nVACUUM users;\nALTER TABLE users ADD COLUMN IF NOT EXISTS plan text;";
    assert_eq!(
        lint(&[USERS], sql),
        [(NON_TRANSACTIONAL_MIXED.to_owned(), 2)]
    );
    // Without the concurrent statement the file is transactional; no finding.
    let sql = "-- atlas:no-transaction\nALTER TABLE users ADD COLUMN IF NOT EXISTS plan text;\nALTER TABLE users ADD COLUMN IF NOT EXISTS tier text;";
    assert_eq!(lint(&[USERS], sql), []);
}

#[test]
fn expand_phase_destructive_and_syntax_errors() {
    let found = lint(&[USERS], "ALTER TABLE users DROP COLUMN bio;");
    assert_eq!(rules(&found), [EXPAND_PHASE_DESTRUCTIVE]);
    let found = lint_with(
        &config(),
        &[USERS],
        "ALTER TABLE users DROP COLUMN bio;",
        MigrationPhase::Contract,
    );
    assert_eq!(found, []);
    let found = lint(&[], "SELECT 1;\nCREATE TABLE (;");
    assert!(
        found.iter().any(|(r, l)| r == SYNTAX_ERROR && *l == 2),
        "{found:?}"
    );
}

#[test]
fn severities_follow_the_file_overrides() {
    let config = config()
        .with_for_file("V9__*.sql", WHOLE_TABLE_UPDATE, LintSeverity::Off)
        .unwrap()
        .with_for_file(
            "V9__linted.sql",
            "changing-column-type",
            LintSeverity::Warning,
        )
        .unwrap();
    let mut linter = PlanLinter::new(&config);
    linter.learn(&Script::new("V1__users.sql", USERS).unwrap());
    let sql = "UPDATE users SET bio = '';\nALTER TABLE users ALTER COLUMN age TYPE bigint;";
    let found = linter.lint(
        &Script::new("V9__linted.sql", sql).unwrap(),
        MigrationPhase::Expand,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, "changing-column-type");
    assert_eq!(found[0].severity, LintSeverity::Warning);
    // Another file keeps the project severities.
    let found = linter.lint(
        &Script::new("V10__other.sql", sql).unwrap(),
        MigrationPhase::Expand,
    );
    let got: Vec<(&str, LintSeverity)> = found
        .iter()
        .map(|f| (f.rule.as_str(), f.severity))
        .collect();
    assert_eq!(
        got,
        [
            (WHOLE_TABLE_UPDATE, LintSeverity::Warning),
            ("changing-column-type", LintSeverity::Error)
        ]
    );
}

#[test]
fn every_atlas_rule_has_a_default_and_is_accepted_by_the_config() {
    for rule in ATLAS_RULES {
        assert!(atlas_rule_default(rule).is_some(), "{rule}");
        assert!(
            LintConfig::default().with(rule, LintSeverity::Off).is_ok(),
            "{rule}"
        );
    }
    assert!(
        LintConfig::default()
            .with("no-such-rule", LintSeverity::Off)
            .is_err()
    );
}

#[test]
fn a_constraint_dropped_and_added_back_is_not_a_drop() {
    let config = config()
        .with("ban-drop-constraint", LintSeverity::Error)
        .unwrap();
    let lint = |sql: &str| -> Vec<(String, usize)> {
        lint_with(&config, &[USERS], sql, MigrationPhase::Expand)
            .into_iter()
            .filter(|(r, _)| r == "ban-drop-constraint")
            .collect()
    };
    let same_statement = "ALTER TABLE users\nDROP CONSTRAINT users_fk,\nADD CONSTRAINT users_fk FOREIGN KEY (id) REFERENCES accounts (id) ON DELETE CASCADE NOT VALID;";
    assert_eq!(lint(same_statement), []);
    let later = "ALTER TABLE users DROP CONSTRAINT users_uq;\nALTER TABLE public.users ADD CONSTRAINT users_uq UNIQUE USING INDEX users_uq_idx;";
    assert_eq!(lint(later), []);
    // Another name, or another table, is a real drop.
    let other = "ALTER TABLE users DROP CONSTRAINT users_uq;\nALTER TABLE users ADD CONSTRAINT users_uq2 UNIQUE USING INDEX i;";
    assert_eq!(lint(other), [("ban-drop-constraint".to_owned(), 1)]);
    let other = "ALTER TABLE users DROP CONSTRAINT users_uq;\nALTER TABLE accounts ADD CONSTRAINT users_uq UNIQUE USING INDEX i;";
    assert_eq!(lint(other), [("ban-drop-constraint".to_owned(), 1)]);
    // Without a transaction the gap between the statements is visible.
    let no_tx = format!("-- atlas:no-transaction\n{later}");
    assert_eq!(lint(&no_tx), [("ban-drop-constraint".to_owned(), 2)]);
}

/// The migrator lints in plan order: a widening after the table's
/// creation is known to be safe, in `lint()` and in a plan whose earlier
/// files are already applied.
#[tokio::test]
async fn the_migrator_lints_against_the_schema_earlier_files_built() {
    use crate::{BackupPolicy, MigrationSet, Migrator, MigratorConfig, Version};
    let set = MigrationSet::from_sources([
        ("V1__users.sql", USERS),
        (
            "V2__wider.sql",
            "ALTER TABLE users ALTER COLUMN email TYPE varchar(200);",
        ),
        (
            "V3__narrower.sql",
            "ALTER TABLE users ALTER COLUMN email TYPE varchar(20);",
        ),
    ])
    .unwrap();
    let migrator =
        Migrator::new(atlas_core::testing::MemoryDriver::new(), set).with_config(MigratorConfig {
            backup: BackupPolicy::Disabled,
            allow_lint_errors: true,
            ..MigratorConfig::default()
        });
    let type_changes = |findings: &[LintFinding]| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.rule == "changing-column-type")
            .map(|f| f.file.clone())
            .collect()
    };
    assert_eq!(
        type_changes(&migrator.lint().findings),
        ["V3__narrower.sql"]
    );
    migrator.migrate(Some(Version::from(1))).await.unwrap();
    let plan = migrator.plan(None).await.unwrap();
    assert_eq!(type_changes(&plan.lint.findings), ["V3__narrower.sql"]);
}
