//! The zero-downtime lint: squawk's rules, and Atlas's own, run over every
//! migration a plan would apply.
//!
//! Beyond squawk's statement-by-statement rules the lint knows:
//! - **the schema the earlier migrations built** ([`PlanLinter`]): a column
//!   type change PostgreSQL makes in the catalog only (a `varchar(n)`
//!   widened to `varchar(m)` with `m ≥ n`, made unbounded or `text`, or a
//!   `varchar` made `text`, without `USING` or `COLLATE`) is not reported
//!   as `changing-column-type`;
//! - **tables created in the same file** (also by `CREATE TABLE … AS` and
//!   `CREATE MATERIALIZED VIEW`): they have no readers yet, so no rule about locks, rewrites, backfills or breaking readers
//!   applies to them (the rules marked *new tables exempt* below), whether
//!   the name is schema-qualified or not (an unqualified name matches that
//!   table in any schema, the search path being unknown to the lint);
//! - **constraints dropped and added back** under the same name in one
//!   statement, or later in the same transaction, remove no guarantee any
//!   reader sees, so squawk's `ban-drop-constraint` is not reported for
//!   them (the new constraint's own rules still apply);
//! - **`DO` blocks**: the statements of a PL/pgSQL `DO` block, and the
//!   strings it `EXECUTE`s when they are literals, run with the migration,
//!   so they are linted like the file's own statements and reported at
//!   their line in the file. Function and procedure bodies run only when
//!   called, so `CREATE FUNCTION` bodies are not linted (nor is a call of
//!   such a function later in the file followed into the body);
//! - **transactions**: a file runs inside one transaction unless it says
//!   `-- atlas:no-transaction` or holds a statement PostgreSQL refuses to
//!   run in a transaction block (`CREATE INDEX CONCURRENTLY`, `DROP INDEX
//!   CONCURRENTLY`, `REINDEX … CONCURRENTLY`, `DETACH PARTITION …
//!   CONCURRENTLY`, `VACUUM`, `CREATE`/`DROP DATABASE`,
//!   `CREATE`/`DROP TABLESPACE`, `ALTER SYSTEM`), which the migrator then
//!   runs statement by statement without one.
//!
//! Rule ids, Atlas's own (squawk's rules keep squawk's ids and defaults,
//! see [`LintConfig`]):
//!
//! | rule id | default | new tables exempt | reports |
//! |---|---|---|---|
//! | `expand-phase-destructive` | error | yes | squawk's `renaming-column`, `renaming-table`, `ban-drop-column` or `ban-drop-table` in an expand migration (in a contract migration they are expected and not reported) |
//! | `syntax-error` | error | no | text the SQL parser could not read |
//! | `whole-table-update` | warning | yes | an `UPDATE` without `WHERE` (or `WHERE true`) in an expand migration: it locks every row until the file commits; batch it, or run it in a contract migration |
//! | `whole-table-delete` | warning | yes | a `DELETE` without `WHERE` (or `WHERE true`) in an expand migration, for the same reason |
//! | `non-transactional-mixed` | warning | no | a file that runs outside a transaction because of one statement and holds other statements too: a failure part-way leaves it half-applied |
//! | `enum-value-used-in-transaction` | warning | no | a string equal to an enum value the same transaction added (`ALTER TYPE … ADD VALUE`), used later in that transaction, where PostgreSQL refuses it ("unsafe use of new value") |
//!
//! Squawk rules exempt for new tables: `adding-field-with-default`,
//! `adding-foreign-key-constraint`, `adding-not-nullable-field`,
//! `adding-required-field`, `adding-serial-primary-key-field`,
//! `ban-drop-column`, `ban-drop-not-null`, `ban-drop-table`,
//! `changing-column-type`, `constraint-missing-not-valid`,
//! `disallowed-unique-constraint`, `renaming-column`, `renaming-table`,
//! `require-concurrent-index-creation`, `require-concurrent-index-deletion`
//! (for an index built on a new table in the same file).
//!
//! `ALTER TYPE … ADD VALUE`, with or without `BEFORE`/`AFTER`, rewrites
//! nothing and takes a short lock on the type only; it is not reported
//! (squawk's `require-enum-value-ordering` is off by default, its
//! `ban-add-enum-value` opt-in). Using the new value in the same
//! transaction is what fails, hence `enum-value-used-in-transaction`.

mod config;
mod embedded;
mod rules;
mod schema;

use std::fmt;

use squawk_linter::{Linter, Rule};
use squawk_syntax::SourceFile;
use squawk_syntax::ast::{self, AstNode};
use tracing::debug;

use crate::source::Script;
use atlas_core::migration::MigrationPhase;

pub use config::{LintConfig, LintSeverity};
use embedded::Fragment;
pub use rules::{
    ENUM_VALUE_USED_IN_TRANSACTION, EXPAND_PHASE_DESTRUCTIVE, NON_TRANSACTIONAL_MIXED,
    SYNTAX_ERROR, WHOLE_TABLE_DELETE, WHOLE_TABLE_UPDATE,
};
use schema::{ColumnType, SchemaModel, TableName};

/// One finding of the lint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintFinding {
    /// The rule, kebab-case as squawk names it (e.g.
    /// `require-concurrent-index-creation`), or one of Atlas's rules (the
    /// table in the [module documentation](self)).
    pub rule: String,
    /// The file.
    pub file: String,
    /// 1-based line of the offending statement.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// How to do it safely, where the rule knows.
    pub help: Option<String>,
    /// The title of squawk's automatic fix, where it has one.
    pub fix: Option<String>,
    /// Its severity under the configuration in force.
    pub severity: LintSeverity,
}

impl fmt::Display for LintFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}:{}: [{}] {}",
            self.severity, self.file, self.line, self.rule, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

/// Rules squawk reports that break the running version in an expand phase
/// (renames and drops of columns and tables). In a contract migration the
/// old version is gone, so they are expected there and not reported.
const DESTRUCTIVE: &[&str] = &[
    "renaming-column",
    "renaming-table",
    "ban-drop-column",
    "ban-drop-table",
];

/// Rules about locks, rewrites, scans and readers of an existing table:
/// none applies to a table created earlier in the same file.
const EXISTING_TABLE_RULES: &[&str] = &[
    "adding-field-with-default",
    "adding-foreign-key-constraint",
    "adding-not-nullable-field",
    "adding-required-field",
    "adding-serial-primary-key-field",
    "ban-drop-column",
    "ban-drop-not-null",
    "ban-drop-table",
    "changing-column-type",
    "constraint-missing-not-valid",
    "disallowed-unique-constraint",
    "renaming-column",
    "renaming-table",
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
    WHOLE_TABLE_UPDATE,
    WHOLE_TABLE_DELETE,
];

/// Rules about the file as a whole (its transaction, its session
/// settings), not checked again on the statements of a `DO` block.
const FILE_LEVEL_RULES: &[&str] = &[
    "require-lock-timeout",
    "require-statement-timeout",
    "transaction-nesting",
    "ban-uncommitted-transaction",
    "prefer-robust-stmts",
];

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Whether PostgreSQL refuses to run `stmt` inside a transaction block.
pub(crate) fn is_non_transactional(stmt: &ast::Stmt) -> bool {
    let concurrently = || {
        stmt.syntax()
            .descendants_with_tokens()
            .any(|t| t.kind() == squawk_syntax::SyntaxKind::CONCURRENTLY_KW)
    };
    match stmt {
        ast::Stmt::CreateIndex(create) => create.concurrently_token().is_some(),
        ast::Stmt::DropIndex(drop) => drop.concurrently_token().is_some(),
        ast::Stmt::Reindex(_) | ast::Stmt::AlterTable(_) => concurrently(),
        ast::Stmt::Vacuum(_)
        | ast::Stmt::CreateDatabase(_)
        | ast::Stmt::DropDatabase(_)
        | ast::Stmt::CreateTablespace(_)
        | ast::Stmt::DropTablespace(_)
        | ast::Stmt::AlterSystem(_) => true,
        _ => false,
    }
}

/// Statements that change nothing a failure could leave half-done.
fn is_session_only(stmt: &ast::Stmt) -> bool {
    matches!(
        stmt,
        ast::Stmt::Set(_)
            | ast::Stmt::Reset(_)
            | ast::Stmt::Show(_)
            | ast::Stmt::Select(_)
            | ast::Stmt::EmptyStmt(_)
            | ast::Stmt::Begin(_)
            | ast::Stmt::Commit(_)
            | ast::Stmt::Rollback(_)
    )
}

/// What a statement works on, for the new-table exemption.
enum Target {
    Tables(Vec<TableName>),
    Indexes(Vec<TableName>),
}

fn name_of(node: Option<impl AstNode>) -> Option<TableName> {
    TableName::from_node(node?.syntax())
}

fn target_of(stmt: &ast::Stmt) -> Option<Target> {
    let one = |n: Option<TableName>| n.map(|n| Target::Tables(vec![n]));
    match stmt {
        ast::Stmt::AlterTable(s) => one(name_of(s.table_relation_name())),
        ast::Stmt::CreateIndex(s) => one(name_of(s.table_relation_name())),
        ast::Stmt::Update(s) => one(name_of(s.relation_name())),
        ast::Stmt::Delete(s) => one(name_of(s.relation_name())),
        ast::Stmt::DropTable(s) => {
            let names: Option<Vec<_>> = s.table_name_refs().map(|n| name_of(Some(n))).collect();
            names.filter(|n| !n.is_empty()).map(Target::Tables)
        }
        ast::Stmt::DropIndex(s) => {
            let names: Option<Vec<_>> = s.index_refs().map(|n| name_of(Some(n))).collect();
            names.filter(|n| !n.is_empty()).map(Target::Indexes)
        }
        _ => None,
    }
}

/// Whether a `WHERE` clause is absent or always true.
fn touches_every_row(clause: Option<ast::WhereClauseOrCurrentOf>) -> bool {
    let Some(clause) = clause else {
        return true;
    };
    let ast::WhereClauseOrCurrentOf::WhereClause(clause) = clause else {
        return false;
    };
    let Some(expr) = clause.expr() else {
        return false;
    };
    let text: String = expr
        .syntax()
        .text()
        .to_string()
        .split_whitespace()
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(text.as_str(), "true" | "(true)" | "1=1" | "(1=1)")
}

/// One statement of the file, top-level or run by a `DO` block.
struct Unit {
    /// File offsets.
    start: u32,
    end: u32,
    /// Its target was created earlier in this file.
    new_table: bool,
}

/// Lints the scripts of a plan in order, remembering the schema each one
/// leaves behind so later files are judged against it (which column types
/// exist, which tables are already there).
///
/// [`lint_script`] is the one-file form with nothing known beforehand.
/// To lint the pending migrations of a database, [`learn`](Self::learn)
/// the applied ones first.
///
/// ```
/// use atlas_migrate::lint::PlanLinter;
/// use atlas_migrate::{LintConfig, MigrationPhase, Script};
/// let config = LintConfig::default();
/// let mut linter = PlanLinter::new(&config);
/// linter.learn(&Script::new("V1__users.sql", "CREATE TABLE users (email varchar(100));")?);
/// let rules = |sql: &str| -> Vec<String> {
///     let script = Script::new("V2__email.sql", sql).unwrap();
///     linter.clone().lint(&script, MigrationPhase::Expand).into_iter().map(|f| f.rule).collect()
/// };
/// // Widening a varchar is a catalog change: no rewrite, no finding.
/// assert!(!rules("ALTER TABLE users ALTER COLUMN email TYPE varchar(200);")
///     .contains(&"changing-column-type".to_owned()));
/// // Narrowing it rewrites the table under an exclusive lock.
/// assert!(rules("ALTER TABLE users ALTER COLUMN email TYPE varchar(50);")
///     .contains(&"changing-column-type".to_owned()));
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PlanLinter<'a> {
    config: &'a LintConfig,
    schema: SchemaModel,
}

impl<'a> PlanLinter<'a> {
    /// A linter that knows no schema yet.
    pub fn new(config: &'a LintConfig) -> Self {
        PlanLinter {
            config,
            schema: SchemaModel::default(),
        }
    }

    /// Records the schema changes of a script that already ran (or runs
    /// before the linted ones) without linting it.
    pub fn learn(&mut self, script: &Script) {
        let tree = SourceFile::parse(&script.sql).tree();
        let fragments: Vec<(Fragment, SourceFile)> = embedded::fragments(&tree)
            .into_iter()
            .map(|f| {
                let t = SourceFile::parse(&f.sql).tree();
                (f, t)
            })
            .collect();
        for (stmt, _, _) in units(&tree, &fragments) {
            self.schema.apply(&stmt);
        }
    }

    /// Lints one script that will run in `phase`, then records its schema
    /// changes for the scripts after it.
    pub fn lint(&mut self, script: &Script, phase: MigrationPhase) -> Vec<LintFinding> {
        let span = tracing::debug_span!("lint_script", file = %script.file, ?phase);
        let _entered = span.enter();
        let mut run = FileLint::new(self.config, script, phase);
        run.syntax_errors();
        run.walk(&mut self.schema);
        run.squawk();
        run.non_transactional_mixed();
        let mut findings = run.findings;
        findings.sort_by(|a, b| (a.line, &a.rule).cmp(&(b.line, &b.rule)));
        findings.dedup_by(|a, b| a.rule == b.rule && a.line == b.line);
        debug!(findings = findings.len(), "linted");
        findings
    }
}

/// Lints one script that will run in `phase`, knowing nothing of the
/// migrations before it (see [`PlanLinter`] to lint a plan in order).
pub fn lint_script(
    script: &Script,
    phase: MigrationPhase,
    config: &LintConfig,
) -> Vec<LintFinding> {
    PlanLinter::new(config).lint(script, phase)
}

/// Every statement of the file with its file range, in file order: the
/// top-level ones and the ones their `DO` blocks run.
fn units(
    file: &ast::SourceFile,
    fragments: &[(Fragment, SourceFile)],
) -> Vec<(ast::Stmt, u32, u32)> {
    let mut out: Vec<(ast::Stmt, u32, u32)> = file
        .stmts()
        .map(|s| {
            let r = s.syntax().text_range();
            (s, u32::from(r.start()), u32::from(r.end()))
        })
        .collect();
    for (fragment, tree) in fragments {
        for s in tree.stmts() {
            let r = s.syntax().text_range();
            let start = fragment.to_file(u32::from(r.start()));
            let end = fragment.to_file(u32::from(r.end()));
            out.push((s, start, end.max(start)));
        }
    }
    out.sort_by_key(|(_, start, _)| *start);
    out
}

/// The lint of one file, step by step.
struct FileLint<'a> {
    config: &'a LintConfig,
    script: &'a Script,
    phase: MigrationPhase,
    parse: squawk_syntax::Parse<SourceFile>,
    fragments: Vec<(Fragment, squawk_syntax::Parse<SourceFile>)>,
    /// Whether the file runs inside one transaction.
    in_transaction: bool,
    units: Vec<Unit>,
    /// File offsets of `SET DATA TYPE` clauses PostgreSQL applies without
    /// a rewrite.
    catalog_only_type_changes: Vec<u32>,
    /// File offsets of `DROP CONSTRAINT`s whose constraint is added again
    /// under the same name before anyone can see it missing.
    replaced_constraints: Vec<u32>,
    findings: Vec<LintFinding>,
}

impl<'a> FileLint<'a> {
    fn new(config: &'a LintConfig, script: &'a Script, phase: MigrationPhase) -> Self {
        let parse = SourceFile::parse(&script.sql);
        let fragments = embedded::fragments(&parse.tree())
            .into_iter()
            .map(|f| {
                let p = SourceFile::parse(&f.sql);
                (f, p)
            })
            .collect();
        let in_transaction = !script.directives.no_transaction
            && !parse.tree().stmts().any(|s| is_non_transactional(&s));
        FileLint {
            config,
            script,
            phase,
            parse,
            fragments,
            in_transaction,
            units: Vec::new(),
            catalog_only_type_changes: Vec::new(),
            replaced_constraints: Vec::new(),
            findings: Vec::new(),
        }
    }

    fn severity(&self, rule: &str) -> LintSeverity {
        self.config.severity_for(&self.script.file, rule)
    }

    fn report(&mut self, rule: &str, offset: u32, message: String, help: Option<String>) {
        let severity = self.severity(rule);
        if severity == LintSeverity::Off {
            return;
        }
        self.findings.push(LintFinding {
            rule: rule.to_owned(),
            file: self.script.file.clone(),
            line: line_of(&self.script.sql, offset as usize),
            message,
            help,
            fix: None,
            severity,
        });
    }

    fn syntax_errors(&mut self) {
        for error in self.parse.errors() {
            let offset = u32::from(error.range().start());
            self.report(SYNTAX_ERROR, offset, error.message().to_owned(), None);
        }
    }

    /// Walks the statements in order: Atlas's statement rules, the
    /// new-table exemptions, and the schema model.
    fn walk(&mut self, schema: &mut SchemaModel) {
        let fragments: Vec<(Fragment, SourceFile)> = self
            .fragments
            .iter()
            .map(|(f, p)| (f.clone(), p.tree()))
            .collect();
        let mut created: Vec<TableName> = Vec::new();
        let mut created_indexes: Vec<TableName> = Vec::new();
        let mut enum_values: Vec<String> = Vec::new();
        let mut dropped_constraints: Vec<(TableName, String, u32)> = Vec::new();
        for (stmt, start, end) in units(&self.parse.tree(), &fragments) {
            let new_table = match target_of(&stmt) {
                Some(Target::Tables(names)) => {
                    names.iter().all(|n| created.iter().any(|c| c.matches(n)))
                }
                Some(Target::Indexes(names)) => names
                    .iter()
                    .all(|n| created_indexes.iter().any(|c| c.matches(n))),
                None => false,
            };
            self.catalog_only(&stmt, schema, start);
            self.constraint_replacements(&stmt, start, &mut dropped_constraints);
            if !new_table && self.phase == MigrationPhase::Expand {
                self.whole_table(&stmt, start);
            }
            if self.in_transaction {
                self.enum_value_use(&stmt, &enum_values, start);
                if let ast::Stmt::AlterType(alter) = &stmt
                    && let Some(ast::AlterTypeAction::AddValue(add)) = alter.action()
                    && let Some(value) = add.literal().and_then(|l| l.decoded_value())
                {
                    enum_values.push(value.text().to_owned());
                }
            }
            if let Some((name, if_not_exists)) = schema::created_relation(&stmt)
                && !(if_not_exists && schema.knows(&name))
            {
                created.push(name);
            }
            match &stmt {
                ast::Stmt::CreateIndex(create) if new_table => {
                    let index = create
                        .syntax()
                        .children()
                        .find_map(ast::Index::cast)
                        .and_then(|i| TableName::from_node(i.syntax()));
                    created_indexes.extend(index);
                }
                _ => {}
            }
            schema.apply(&stmt);
            self.units.push(Unit {
                start,
                end,
                new_table,
            });
        }
    }

    /// Remembers the `SET DATA TYPE` clauses of `stmt` that widen a text
    /// column the schema model knows.
    fn catalog_only(&mut self, stmt: &ast::Stmt, schema: &SchemaModel, start: u32) {
        let ast::Stmt::AlterTable(alter) = stmt else {
            return;
        };
        let Some(table) = name_of(alter.table_relation_name()) else {
            return;
        };
        let stmt_start = u32::from(stmt.syntax().text_range().start());
        for action in alter.actions() {
            let ast::AlterTableAction::AlterColumn(column) = action else {
                continue;
            };
            let (Some(name), Some(ast::AlterColumnOption::SetType(set))) = (
                column
                    .column_name_ref()
                    .and_then(|c| schema::column_name(c.syntax())),
                column.option(),
            ) else {
                continue;
            };
            if set.using_expr().is_some() || set.collate().is_some() {
                continue;
            }
            let Some(to) = set.ty().map(|t| ColumnType::from_node(t.syntax())) else {
                continue;
            };
            if schema
                .column_type(&table, &name)
                .is_some_and(|from| from.widens_to(to))
            {
                let offset = u32::from(set.syntax().text_range().start()) - stmt_start;
                self.catalog_only_type_changes.push(start + offset);
            }
        }
    }

    /// Remembers a `DROP CONSTRAINT` whose constraint comes back under the
    /// same name in the same statement, or later in the same transaction:
    /// no reader sees the guarantee missing.
    fn constraint_replacements(
        &mut self,
        stmt: &ast::Stmt,
        start: u32,
        dropped: &mut Vec<(TableName, String, u32)>,
    ) {
        let ast::Stmt::AlterTable(alter) = stmt else {
            return;
        };
        let Some(table) = name_of(alter.table_relation_name()) else {
            return;
        };
        let stmt_start = u32::from(stmt.syntax().text_range().start());
        for action in alter.actions() {
            match action {
                ast::AlterTableAction::DropConstraint(drop) => {
                    let Some(name) = drop
                        .constraint_name_ref()
                        .and_then(|n| schema::column_name(n.syntax()))
                    else {
                        continue;
                    };
                    let offset = u32::from(drop.syntax().text_range().start()) - stmt_start;
                    dropped.push((table.clone(), name, start + offset));
                }
                ast::AlterTableAction::AddConstraint(add) => {
                    let Some(name) = add
                        .syntax()
                        .descendants()
                        .find_map(ast::ConstraintName::cast)
                        .and_then(|n| schema::column_name(n.syntax()))
                    else {
                        continue;
                    };
                    if let Some(i) = dropped
                        .iter()
                        .position(|(t, n, _)| *n == name && t.matches(&table))
                    {
                        let (_, _, at) = dropped.remove(i);
                        self.replaced_constraints.push(at);
                    }
                }
                _ => {}
            }
        }
        if !self.in_transaction {
            // Between two statements run without a transaction, readers
            // do see the constraint missing.
            dropped.clear();
        }
    }

    fn whole_table(&mut self, stmt: &ast::Stmt, start: u32) {
        let (rule, table, what) = match stmt {
            ast::Stmt::Update(u) if touches_every_row(u.where_clause_or_current_of()) => {
                (WHOLE_TABLE_UPDATE, u.relation_name(), "UPDATE")
            }
            ast::Stmt::Delete(d) if touches_every_row(d.where_clause_or_current_of()) => {
                (WHOLE_TABLE_DELETE, d.relation_name(), "DELETE")
            }
            _ => return,
        };
        let table = table
            .map(|t| t.syntax().text().to_string())
            .unwrap_or_default();
        self.report(
            rule,
            start,
            format!(
                "{what} of every row of `{}` holds a lock on each row until the migration commits, blocking the running version's writes to them",
                table.trim()
            ),
            Some(
                "backfill in batches (a bounded WHERE per run), or run it in a `-- atlas:phase contract` migration"
                    .to_owned(),
            ),
        );
    }

    fn enum_value_use(&mut self, stmt: &ast::Stmt, added: &[String], start: u32) {
        if added.is_empty() || matches!(stmt, ast::Stmt::AlterType(_)) {
            return;
        }
        let used = stmt
            .syntax()
            .descendants()
            .filter_map(ast::Literal::cast)
            .filter_map(|l| l.decoded_value())
            .find(|v| added.iter().any(|a| a == v.text()));
        if let Some(value) = used {
            self.report(
                ENUM_VALUE_USED_IN_TRANSACTION,
                start,
                format!(
                    "'{}' was added to an enum earlier in this transaction; PostgreSQL refuses to use a new enum value before the transaction that added it commits",
                    value.text()
                ),
                Some("add the value in an earlier migration, or use it in a later one".to_owned()),
            );
        }
    }

    /// squawk's rules over the file and over every `DO` fragment, minus
    /// the exemptions.
    fn squawk(&mut self) {
        let file = self.script.file.as_str();
        let rules = self.config.enabled_rules(file);
        let mut linter = Linter::from(rules.clone());
        linter.settings.assume_in_transaction = self.in_transaction;
        let mut violations: Vec<(squawk_linter::Violation, u32)> = linter
            .lint(&self.parse, &self.script.sql)
            .into_iter()
            .map(|v| {
                let at = u32::from(v.text_range.start());
                (v, at)
            })
            .collect();
        let fragment_rules: Vec<Rule> = rules
            .into_iter()
            .filter(|r| !FILE_LEVEL_RULES.contains(&r.to_string().as_str()))
            .collect();
        for (fragment, parse) in &self.fragments {
            let mut linter = Linter::from(fragment_rules.clone());
            // A DO block is one statement: what it runs shares a transaction.
            linter.settings.assume_in_transaction = true;
            for v in linter.lint(parse, &fragment.sql) {
                let at = fragment.to_file(u32::from(v.text_range.start()));
                violations.push((v, at));
            }
        }
        for (violation, at) in violations {
            self.violation(violation, at);
        }
    }

    fn violation(&mut self, violation: squawk_linter::Violation, at: u32) {
        let code = violation.code.to_string();
        let unit = self
            .units
            .iter()
            .filter(|u| u.start <= at && at <= u.end)
            .min_by_key(|u| u.end - u.start);
        if unit.is_some_and(|u| u.new_table) && EXISTING_TABLE_RULES.contains(&code.as_str()) {
            return;
        }
        if code == "changing-column-type" && self.catalog_only_type_changes.contains(&at) {
            return;
        }
        if code == "ban-drop-constraint" && self.replaced_constraints.contains(&at) {
            return;
        }
        let destructive = DESTRUCTIVE.contains(&code.as_str());
        let (rule, severity) = if destructive {
            if self.phase == MigrationPhase::Contract {
                return;
            }
            (
                EXPAND_PHASE_DESTRUCTIVE.to_owned(),
                self.severity(EXPAND_PHASE_DESTRUCTIVE)
                    .max(self.severity(&code)),
            )
        } else {
            let severity = self.severity(&code);
            (code.clone(), severity)
        };
        if severity == LintSeverity::Off {
            return;
        }
        let message = if destructive {
            format!(
                "{} ({code}; breaks the running version in an expand migration: move it to a `-- atlas:phase contract` migration)",
                violation.message
            )
        } else {
            violation.message
        };
        self.findings.push(LintFinding {
            rule,
            file: self.script.file.clone(),
            line: line_of(&self.script.sql, at as usize),
            message,
            help: violation.help,
            fix: violation.fix.map(|f| f.title),
            severity,
        });
    }

    /// A file that runs outside a transaction because of one statement
    /// and also holds others can fail half-way and stay half-applied.
    fn non_transactional_mixed(&mut self) {
        let top: Vec<ast::Stmt> = self.parse.tree().stmts().collect();
        let non_tx: Vec<&ast::Stmt> = top.iter().filter(|s| is_non_transactional(s)).collect();
        let Some(first) = non_tx.first() else {
            return;
        };
        let others = top
            .iter()
            .filter(|s| !is_non_transactional(s) && !is_session_only(s))
            .count();
        if others == 0 && non_tx.len() == 1 {
            return;
        }
        let start = u32::from(first.syntax().text_range().start());
        let what = first
            .syntax()
            .text()
            .to_string()
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        self.report(
            NON_TRANSACTIONAL_MIXED,
            start,
            format!(
                "`{what} …` cannot run in a transaction, so this whole file runs without one; with {} other statement(s) beside it, a failure part-way leaves the file half-applied",
                others + non_tx.len() - 1
            ),
            Some(
                "give each statement that cannot run in a transaction a migration file of its own (with IF NOT EXISTS / IF EXISTS so a re-run succeeds)"
                    .to_owned(),
            ),
        );
    }
}

/// The findings over a whole plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintReport {
    /// Every finding, by file then line.
    pub findings: Vec<LintFinding>,
}

impl LintReport {
    /// The findings at [`LintSeverity::Error`].
    pub fn errors(&self) -> impl Iterator<Item = &LintFinding> {
        self.findings
            .iter()
            .filter(|f| f.severity == LintSeverity::Error)
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

#[cfg(test)]
mod tests;
