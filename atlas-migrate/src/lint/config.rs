//! Which rules run, how much each matters, per project and per file.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use squawk_linter::Rule;

use atlas_core::{Error, Result};

use super::rules::{
    ATLAS_RULES, ENUM_VALUE_USED_IN_TRANSACTION, EXPAND_PHASE_DESTRUCTIVE, NON_TRANSACTIONAL_MIXED,
    SYNTAX_ERROR, WHOLE_TABLE_DELETE, WHOLE_TABLE_UPDATE, is_atlas_rule, squawk_rules,
};

/// How much a lint finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LintSeverity {
    /// The rule is not run.
    Off,
    /// Reported; never blocks.
    Warning,
    /// Blocks `migrate` unless [`MigratorConfig::allow_lint_errors`](crate::MigratorConfig::allow_lint_errors).
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

impl FromStr for LintSeverity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(LintSeverity::Off),
            "warning" => Ok(LintSeverity::Warning),
            "error" => Ok(LintSeverity::Error),
            other => Err(Error::invalid(
                "lint severity",
                format!("`{other}` is not one of off, warning, error"),
            )),
        }
    }
}

/// Severities that apply to the files whose name matches `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileOverride {
    pattern: String,
    rules: BTreeMap<String, LintSeverity>,
}

/// Which rules run and how much each matters, for the whole project and
/// for single files.
///
/// Defaults: every rule squawk enables by default at [`LintSeverity::Error`],
/// except its style rules (`prefer-*`, `ban-char-field`) and
/// `require-statement-timeout` at [`LintSeverity::Warning`] (a long backfill
/// may rightly need more than any default), and
/// `require-enum-value-ordering` off (appending an enum value is the usual
/// case and takes no long lock). Atlas's own rules have the defaults listed
/// in the [module documentation](super). `require-lock-timeout` and
/// `require-statement-timeout` are turned off by the migrator when it sets
/// those timeouts itself for every migration (its default).
///
/// A file override wins over the project setting, which wins over the
/// default. A file override's pattern is a file name (`V12__backfill.sql`)
/// or a glob where `*` matches any run of characters and `?` one character
/// (`V1_*__*.sql`, `legacy/*`); it is matched against the file's name as
/// the migration set reports it and against its last path component. When
/// several patterns set one rule for one file, an exact name wins, then the
/// longest pattern.
///
/// From TOML ([`from_toml`](Self::from_toml)), in a `[lint]` section:
///
/// ```
/// use atlas_migrate::{LintConfig, LintSeverity};
/// let config = LintConfig::from_toml(r#"
///     [lint.rules]
///     changing-column-type = "warning"
///     whole-table-update = "error"
///
///     [lint.files."V12__backfill.sql"]
///     whole-table-update = "off"
/// "#)?;
/// assert_eq!(config.severity("changing-column-type"), LintSeverity::Warning);
/// assert_eq!(config.severity_for("V12__backfill.sql", "whole-table-update"), LintSeverity::Off);
/// assert_eq!(config.severity_for("V13__more.sql", "whole-table-update"), LintSeverity::Error);
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    overrides: BTreeMap<String, LintSeverity>,
    files: Vec<FileOverride>,
}

/// The `[lint]` section as written in a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LintSection {
    #[serde(default)]
    rules: BTreeMap<String, LintSeverity>,
    #[serde(default)]
    files: BTreeMap<String, BTreeMap<String, LintSeverity>>,
}

impl TryFrom<LintSection> for LintConfig {
    type Error = Error;

    fn try_from(section: LintSection) -> Result<Self> {
        let mut config = LintConfig::default();
        for (rule, severity) in section.rules {
            let rule = check_rule(&rule, &format!("lint.rules.{rule}"))?;
            config.overrides.insert(rule, severity);
        }
        for (pattern, rules) in section.files {
            for (rule, severity) in rules {
                config.set_for_file(&pattern, &rule, severity)?;
            }
        }
        Ok(config)
    }
}

impl<'de> Deserialize<'de> for LintConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let section = LintSection::deserialize(deserializer)?;
        LintConfig::try_from(section).map_err(serde::de::Error::custom)
    }
}

/// The rule's canonical id (squawk accepts `prefer-timestamptz` for its
/// `prefer-timestamp-tz`), or an error naming `field`.
fn check_rule(rule: &str, field: &str) -> Result<String> {
    if is_atlas_rule(rule) {
        Ok(rule.to_owned())
    } else if let Ok(known) = Rule::try_from(rule) {
        Ok(known.to_string())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "unknown lint rule `{rule}` (Atlas's rules: {}; or any squawk rule)",
                ATLAS_RULES.join(", ")
            ),
        ))
    }
}

impl LintConfig {
    /// Reads the `[lint]` section of a TOML document (other sections are
    /// ignored; without a `[lint]` section the defaults apply). The section
    /// has `rules` (rule id to `"off"`, `"warning"` or `"error"`) and `files`
    /// (file name or glob to such a table).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `lint` for malformed TOML or an unknown
    /// key, or `lint.rules.<rule>` / `lint.files.<pattern>.<rule>` for an
    /// unknown rule.
    pub fn from_toml(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Document {
            #[serde(default)]
            lint: Option<toml::Value>,
        }
        let document: Document =
            toml::from_str(text).map_err(|e| Error::invalid("lint", e.message().to_owned()))?;
        let Some(value) = document.lint else {
            return Ok(LintConfig::default());
        };
        let section: LintSection = value
            .try_into()
            .map_err(|e: toml::de::Error| Error::invalid("lint", e.message().to_owned()))?;
        LintConfig::try_from(section)
    }

    /// Sets the project-wide severity of `rule` (kebab-case, e.g.
    /// `require-concurrent-index-creation`, or one of Atlas's rules).
    /// Opt-in squawk rules are enabled by giving them a severity above off.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `lint.<rule>` if no such rule exists.
    pub fn set(&mut self, rule: &str, severity: LintSeverity) -> Result<&mut Self> {
        let rule = check_rule(rule, &format!("lint.{rule}"))?;
        self.overrides.insert(rule, severity);
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

    /// Sets the severity of `rule` for the files matching `pattern` (a file
    /// name or a glob with `*` and `?`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `lint.files.<pattern>.<rule>` for an
    /// unknown rule, or `lint.files` for an empty pattern.
    pub fn set_for_file(
        &mut self,
        pattern: &str,
        rule: &str,
        severity: LintSeverity,
    ) -> Result<&mut Self> {
        if pattern.is_empty() {
            return Err(Error::invalid(
                "lint.files",
                "a file pattern may not be empty",
            ));
        }
        let rule = check_rule(rule, &format!("lint.files.{pattern}.{rule}"))?;
        match self.files.iter_mut().find(|f| f.pattern == pattern) {
            Some(file) => {
                file.rules.insert(rule, severity);
            }
            None => self.files.push(FileOverride {
                pattern: pattern.to_owned(),
                rules: BTreeMap::from([(rule, severity)]),
            }),
        }
        Ok(self)
    }

    /// Builder form of [`set_for_file`](Self::set_for_file).
    ///
    /// # Errors
    /// As [`set_for_file`](Self::set_for_file).
    pub fn with_for_file(
        mut self,
        pattern: &str,
        rule: &str,
        severity: LintSeverity,
    ) -> Result<Self> {
        self.set_for_file(pattern, rule, severity)?;
        Ok(self)
    }

    /// Whether `rule` has an explicit project-wide severity.
    pub fn has_override(&self, rule: &str) -> bool {
        self.overrides.contains_key(&canonical(rule))
    }

    pub(crate) fn set_default_off(&mut self, rule: &str) {
        self.overrides.insert(canonical(rule), LintSeverity::Off);
    }

    /// The project-wide severity of `rule` under this configuration.
    pub fn severity(&self, rule: &str) -> LintSeverity {
        let rule = canonical(rule);
        let rule = rule.as_str();
        if let Some(s) = self.overrides.get(rule) {
            return *s;
        }
        if let Some(default) = atlas_rule_default(rule) {
            return default;
        }
        match Rule::try_from(rule) {
            Ok(r) if r.is_opt_in() => LintSeverity::Off,
            // Appending an enum value takes no long lock and rewrites
            // nothing; where it lands in the sort order is a style choice.
            Ok(Rule::RequireEnumValueOrdering) => LintSeverity::Off,
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

    /// The severity of `rule` in the file named `file`: its file override
    /// if one matches, else [`severity`](Self::severity).
    pub fn severity_for(&self, file: &str, rule: &str) -> LintSeverity {
        let rule = canonical(rule);
        let rule = rule.as_str();
        let base = file.rsplit(['/', '\\']).next().unwrap_or(file);
        let mut best: Option<(bool, usize, LintSeverity)> = None;
        for entry in &self.files {
            let Some(severity) = entry.rules.get(rule) else {
                continue;
            };
            let exact = entry.pattern == file || entry.pattern == base;
            if !exact && !glob_match(&entry.pattern, file) && !glob_match(&entry.pattern, base) {
                continue;
            }
            let rank = (exact, entry.pattern.len());
            if best.is_none_or(|(e, l, _)| rank > (e, l)) {
                best = Some((exact, entry.pattern.len(), *severity));
            }
        }
        match best {
            Some((_, _, severity)) => severity,
            None => self.severity(rule),
        }
    }

    /// The squawk rules that run on `file` (severity above off).
    pub(crate) fn enabled_rules(&self, file: &str) -> Vec<Rule> {
        squawk_rules()
            .into_iter()
            .filter(|r| r.expands_to().is_empty())
            .filter(|r| self.severity_for(file, &r.to_string()) != LintSeverity::Off)
            .collect()
    }
}

/// The canonical id of a rule name, or the name itself when unknown.
fn canonical(rule: &str) -> String {
    check_rule(rule, "").unwrap_or_else(|_| rule.to_owned())
}

/// `*` matches any run of characters (also none), `?` exactly one; every
/// other character matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last star swallow one more character and retry.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The default severity of one of Atlas's own rules.
pub(super) fn atlas_rule_default(rule: &str) -> Option<LintSeverity> {
    match rule {
        EXPAND_PHASE_DESTRUCTIVE | SYNTAX_ERROR => Some(LintSeverity::Error),
        WHOLE_TABLE_UPDATE
        | WHOLE_TABLE_DELETE
        | NON_TRANSACTIONAL_MIXED
        | ENUM_VALUE_USED_IN_TRANSACTION => Some(LintSeverity::Warning),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob_match("V1_*__*.sql", "V1_12__add.sql"));
        assert!(glob_match("*", ""));
        assert!(glob_match("V?__a.sql", "V3__a.sql"));
        assert!(!glob_match("V?__a.sql", "V13__a.sql"));
        assert!(!glob_match("V1__*.sql", "V2__a.sql"));
        assert!(glob_match("*a*b", "xaxxab"));
        assert!(!glob_match("*a*b", "xaxxa"));
    }

    #[test]
    fn file_overrides_win_exact_then_longest() {
        let config = LintConfig::default()
            .with("whole-table-update", LintSeverity::Error)
            .unwrap()
            .with_for_file("V*", "whole-table-update", LintSeverity::Warning)
            .unwrap()
            .with_for_file("V12__*.sql", "whole-table-update", LintSeverity::Off)
            .unwrap()
            .with_for_file("V12__b.sql", "whole-table-update", LintSeverity::Error)
            .unwrap();
        assert_eq!(
            config.severity_for("V12__a.sql", "whole-table-update"),
            LintSeverity::Off
        );
        assert_eq!(
            config.severity_for("V12__b.sql", "whole-table-update"),
            LintSeverity::Error
        );
        assert_eq!(
            config.severity_for("V13__a.sql", "whole-table-update"),
            LintSeverity::Warning
        );
        assert_eq!(
            config.severity_for("R__a.sql", "whole-table-update"),
            LintSeverity::Error
        );
        assert_eq!(
            config.severity_for("sub/V12__a.sql", "whole-table-update"),
            LintSeverity::Off,
            "a pattern matches the last path component too"
        );
        // Other rules keep their defaults.
        assert_eq!(
            config.severity_for("V12__a.sql", "changing-column-type"),
            LintSeverity::Error
        );
    }

    #[test]
    fn toml_section_loads_and_rejects_unknown_rules() {
        let config = LintConfig::from_toml(
            r#"
            [other]
            x = 1
            [lint.rules]
            changing-column-type = "off"
            [lint.files."V1_*"]
            require-concurrent-index-creation = "warning"
            "#,
        )
        .unwrap();
        assert_eq!(config.severity("changing-column-type"), LintSeverity::Off);
        assert_eq!(
            config.severity_for("V1_2__x.sql", "require-concurrent-index-creation"),
            LintSeverity::Warning
        );
        assert_eq!(LintConfig::from_toml("").unwrap(), LintConfig::default());

        let err = LintConfig::from_toml("[lint.rules]\nno-such-rule = \"off\"").unwrap_err();
        assert!(err.to_string().contains("lint.rules.no-such-rule"), "{err}");
        let err = LintConfig::from_toml("[lint.files.\"V1*\"]\nnope = \"off\"").unwrap_err();
        assert!(err.to_string().contains("lint.files.V1*.nope"), "{err}");
        let err = LintConfig::from_toml("[lint]\nrulez = {}").unwrap_err();
        assert!(err.to_string().contains("lint"), "{err}");
        let err = LintConfig::from_toml("[lint.rules]\nban-drop-table = \"loud\"").unwrap_err();
        assert!(err.to_string().contains("lint"), "{err}");
    }

    #[test]
    fn rule_aliases_are_one_rule() {
        let config = LintConfig::default()
            .with("prefer-timestamptz", LintSeverity::Error)
            .unwrap();
        assert_eq!(config.severity("prefer-timestamp-tz"), LintSeverity::Error);
        assert!(config.has_override("prefer-timestamp-tz"));
    }

    #[test]
    fn severity_parses() {
        assert_eq!(
            "warning".parse::<LintSeverity>().unwrap(),
            LintSeverity::Warning
        );
        assert!("loud".parse::<LintSeverity>().is_err());
        assert!(
            LintConfig::default()
                .set_for_file("", "ban-drop-table", LintSeverity::Off)
                .is_err()
        );
    }
}
