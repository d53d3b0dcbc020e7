//! The zero-downtime lint: squawk's rules run over every migration a plan
//! would apply.

use std::collections::BTreeMap;
use std::fmt;

use squawk_linter::{Linter, Rule};

use crate::source::Script;
use atlas_core::migration::MigrationPhase;
use atlas_core::{Error, Result};

/// How much a lint finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LintSeverity {
    /// The rule is not run.
    Off,
    /// Reported; never blocks.
    Warning,
    /// Blocks `migrate` unless [`MigratorConfig::allow_lint_errors`](super::MigratorConfig::allow_lint_errors).
    Error,
}

impl fmt::Display for LintSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LintSeverity::Off => "off",
            LintSeverity::Warning => "warning",
            LintSeverity::Error => "error",
        })
    }
}

/// One finding of the lint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintFinding {
    /// The rule, kebab-case as squawk names it (e.g.
    /// `require-concurrent-index-creation`), or an Atlas rule
    /// (`expand-phase-destructive`, `syntax-error`).
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

/// Which rules run and how much each matters.
///
/// Defaults: every rule squawk enables by default at [`LintSeverity::Error`],
/// except its style rules (`prefer-*`, `ban-char-field`) at
/// [`LintSeverity::Warning`], and `require-statement-timeout` at warning
/// (a long backfill may rightly need more than any default); plus Atlas's `expand-phase-destructive`
/// (renaming or dropping a column or table in an expand migration) at
/// error. `require-lock-timeout` and `require-statement-timeout` are turned
/// off by the migrator when it sets those timeouts itself for every
/// migration (its default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    overrides: BTreeMap<String, LintSeverity>,
}

/// Atlas's own rule: destructive changes in an expand migration.
pub const EXPAND_PHASE_DESTRUCTIVE: &str = "expand-phase-destructive";
/// Atlas's own rule: a file the SQL parser could not read.
pub const SYNTAX_ERROR: &str = "syntax-error";

impl LintConfig {
    /// Sets the severity of `rule` (kebab-case, e.g.
    /// `require-concurrent-index-creation`, or `expand-phase-destructive`).
    /// Opt-in squawk rules are enabled by giving them a severity above off.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `lint.<rule>` if no such rule exists.
    pub fn set(&mut self, rule: &str, severity: LintSeverity) -> Result<&mut Self> {
        if rule != EXPAND_PHASE_DESTRUCTIVE && rule != SYNTAX_ERROR && Rule::try_from(rule).is_err()
        {
            return Err(Error::invalid(format!("lint.{rule}"), "unknown lint rule"));
        }
        self.overrides.insert(rule.to_owned(), severity);
        Ok(self)
    }

    /// Builder form of [`set`](Self::set).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn with(mut self, rule: &str, severity: LintSeverity) -> Result<Self> {
        self.set(rule, severity)?;
        Ok(self)
    }

    /// Whether `rule` has an explicit severity.
    pub fn has_override(&self, rule: &str) -> bool {
        self.overrides.contains_key(rule)
    }

    pub(crate) fn set_default_off(&mut self, rule: &str) {
        self.overrides.insert(rule.to_owned(), LintSeverity::Off);
    }

    /// The severity of `rule` under this configuration.
    pub fn severity(&self, rule: &str) -> LintSeverity {
        if let Some(s) = self.overrides.get(rule) {
            return *s;
        }
        if rule == EXPAND_PHASE_DESTRUCTIVE || rule == SYNTAX_ERROR {
            return LintSeverity::Error;
        }
        match Rule::try_from(rule) {
            Ok(r) if r.is_opt_in() => LintSeverity::Off,
            // A long backfill may need more than any sensible default, so a
            // missing statement_timeout is worth a warning, not a block.
            Ok(Rule::UnusedIgnore | Rule::RequireStatementTimeout) => LintSeverity::Warning,
            Ok(_) if rule.starts_with("prefer-") || rule == "ban-char-field" => {
                LintSeverity::Warning
            }
            Ok(_) => LintSeverity::Error,
            Err(_) => LintSeverity::Off,
        }
    }

    fn enabled_rules(&self) -> Vec<Rule> {
        enum_rules()
            .into_iter()
            .filter(|r| r.expands_to().is_empty())
            .filter(|r| self.severity(&r.to_string()) != LintSeverity::Off)
            .collect()
    }
}

fn enum_rules() -> Vec<Rule> {
    // Every rule name squawk 2.68 knows; unknown names are skipped so a
    // rule list drift cannot panic.
    const NAMES: &[&str] = &[
        "require-concurrent-index-creation",
        "require-concurrent-index-deletion",
        "constraint-missing-not-valid",
        "adding-field-with-default",
        "adding-foreign-key-constraint",
        "changing-column-type",
        "adding-not-nullable-field",
        "adding-serial-primary-key-field",
        "renaming-column",
        "renaming-table",
        "disallowed-unique-constraint",
        "ban-drop-database",
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-identity",
        "prefer-repack",
        "prefer-robust-stmts",
        "prefer-text-field",
        "prefer-timestamptz",
        "ban-char-field",
        "ban-drop-column",
        "ban-drop-table",
        "ban-drop-not-null",
        "transaction-nesting",
        "adding-required-field",
        "ban-concurrent-index-creation-in-transaction",
        "ban-create-domain-with-constraint",
        "ban-alter-domain-with-add-constraint",
        "ban-truncate-cascade",
        "ban-uncommitted-transaction",
        "require-enum-value-ordering",
        "require-table-schema",
        "identifier-too-long",
        "require-concurrent-partition-detach",
        "require-concurrent-reindex",
        "require-lock-timeout",
        "require-statement-timeout",
        "ban-duplicate-column-assignments",
        "ban-drop-view",
        "ban-drop-function",
        "ban-drop-type",
        "ban-drop-default",
        "ban-drop-trigger",
        "ban-drop-schema",
        "ban-drop-sequence",
        "ban-drop-domain",
        "ban-drop-constraint",
        "ban-drop-generated-expression",
        "renaming-object",
        "ban-set-schema",
        "ban-alter-identity",
        "ban-drop-extension",
        "ban-alter-generated-expression",
        "ban-drop-index",
        "ban-set-default",
        "ban-disable-trigger",
        "ban-replica-identity",
        "ban-drop-policy",
        "ban-revoke",
        "ban-replace-view-function",
        "ban-alter-policy-condition",
        "ban-alter-policy-roles",
        "ban-create-policy",
        "ban-alter-function-options",
        "ban-alter-view-options",
        "ban-alter-role-options",
        "ban-alter-database-options",
        "ban-alter-row-level-security",
        "ban-new-write-restriction",
        "ban-add-enum-value",
        "ban-add-composite-attribute",
        "ban-add-column",
        "ban-detach-inheritance",
        "ban-alter-sequence-values",
        "ban-alter-system-options",
        "ban-alter-extension",
    ];
    NAMES
        .iter()
        .filter_map(|n| Rule::try_from(*n).ok())
        .collect()
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

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Lints one script that will run in `phase` (inside a transaction unless
/// its `no-transaction` directive says otherwise).
pub fn lint_script(
    script: &Script,
    phase: MigrationPhase,
    config: &LintConfig,
) -> Vec<LintFinding> {
    let sql = &script.sql;
    let parse = squawk_syntax::SourceFile::parse(sql);
    let mut findings = Vec::new();
    for error in parse.errors() {
        let severity = config.severity(SYNTAX_ERROR);
        if severity == LintSeverity::Off {
            break;
        }
        findings.push(LintFinding {
            rule: SYNTAX_ERROR.to_owned(),
            file: script.file.clone(),
            line: line_of(sql, u32::from(error.range().start()) as usize),
            message: error.message().to_owned(),
            help: None,
            fix: None,
            severity,
        });
    }
    let mut linter = Linter::from(config.enabled_rules());
    linter.settings.assume_in_transaction = !script.directives.no_transaction;
    for violation in linter.lint(&parse, sql) {
        let rule = violation.code.to_string();
        let destructive = DESTRUCTIVE.contains(&rule.as_str());
        let (rule, severity) = if destructive {
            if phase == MigrationPhase::Contract {
                continue;
            }
            (
                EXPAND_PHASE_DESTRUCTIVE.to_owned(),
                config
                    .severity(EXPAND_PHASE_DESTRUCTIVE)
                    .max(config.severity(&rule)),
            )
        } else {
            let severity = config.severity(&rule);
            (rule, severity)
        };
        if severity == LintSeverity::Off {
            continue;
        }
        let message = if destructive {
            format!(
                "{} ({}; breaks the running version in an expand migration: move it to a `-- atlas:phase contract` migration)",
                violation.message, violation.code
            )
        } else {
            violation.message
        };
        findings.push(LintFinding {
            rule,
            file: script.file.clone(),
            line: line_of(sql, u32::from(violation.text_range.start()) as usize),
            message,
            help: violation.help,
            fix: violation.fix.map(|f| f.title),
            severity,
        });
    }
    if !script.directives.no_transaction {
        concurrent_in_transaction(script, &parse, config, &mut findings);
    }
    findings.sort_by_key(|f| f.line);
    findings.dedup_by(|a, b| a.rule == b.rule && a.line == b.line);
    findings
}

/// squawk assumes a one-statement file runs outside a transaction; Atlas
/// wraps every file in one unless it says `-- atlas:no-transaction`, where
/// `CREATE INDEX CONCURRENTLY` fails at once.
fn concurrent_in_transaction(
    script: &Script,
    parse: &squawk_syntax::Parse<squawk_syntax::SourceFile>,
    config: &LintConfig,
    findings: &mut Vec<LintFinding>,
) {
    use squawk_syntax::ast;
    const RULE: &str = "ban-concurrent-index-creation-in-transaction";
    let severity = config.severity(RULE);
    if severity == LintSeverity::Off {
        return;
    }
    for stmt in parse.tree().stmts() {
        let ast::Stmt::CreateIndex(create) = stmt else {
            continue;
        };
        let Some(token) = create.concurrently_token() else {
            continue;
        };
        findings.push(LintFinding {
            rule: RULE.to_owned(),
            file: script.file.clone(),
            line: line_of(&script.sql, u32::from(token.text_range().start()) as usize),
            message: "CREATE INDEX CONCURRENTLY cannot run inside the transaction Atlas wraps this file in".to_owned(),
            help: Some("add `-- atlas:no-transaction` to the file".to_owned()),
            fix: None,
            severity,
        });
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
