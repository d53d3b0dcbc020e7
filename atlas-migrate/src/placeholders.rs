//! `${name}` placeholders in migration files, replaced as Flyway does.

use std::collections::BTreeMap;
use std::time::SystemTime;

use atlas_core::{Error, Result};

/// Flyway's built-in placeholders that the caller must give a value for,
/// because only the connection knows it (the `atlas_migrate` tool fills
/// them from its `--url` and `--table`).
pub const CONNECTION_PLACEHOLDERS: &[&str] = &[
    "flyway:defaultSchema",
    "flyway:user",
    "flyway:database",
    "flyway:table",
];

/// How the files of a migration folder are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    /// Values of `${name}` placeholders (names are matched without regard
    /// to case). Default: none.
    pub placeholders: BTreeMap<String, String>,
    /// Whether `${name}` placeholders are replaced at all. Default: true,
    /// as in Flyway; turn it off for files that hold `${…}` text of their
    /// own.
    pub placeholder_replacement: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            placeholders: BTreeMap::new(),
            placeholder_replacement: true,
        }
    }
}

impl SourceOptions {
    /// Adds one placeholder value.
    pub fn with_placeholder(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.placeholders.insert(name.into(), value.into());
        self
    }

    fn lookup(&self, name: &str) -> Option<&str> {
        self.placeholders
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The values that are the same for every file of one load.
#[derive(Debug, Clone)]
pub(crate) struct LoadContext {
    /// `yyyy-MM-dd HH:mm:ss` in UTC, as Flyway's `${flyway:timestamp}`.
    timestamp: String,
    working_directory: String,
}

impl LoadContext {
    pub(crate) fn now() -> Self {
        LoadContext {
            timestamp: utc_timestamp(SystemTime::now()),
            working_directory: std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        }
    }
}

/// `yyyy-MM-dd HH:mm:ss` in UTC.
fn utc_timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn placeholder_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// Replaces every `${name}` of `text`; `file` is the file's path in the
/// folder (its last part is `${flyway:filename}`).
///
/// # Errors
/// [`Error::InvalidInput`] naming the file and line for a placeholder
/// without a value; a placeholder is never left in the SQL.
pub(crate) fn replace(
    text: &str,
    file: &str,
    options: &SourceOptions,
    context: &LoadContext,
) -> Result<String> {
    if !options.placeholder_replacement || !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name_len = after
            .find(|c: char| !placeholder_char(c))
            .unwrap_or(after.len());
        if name_len == 0 || !after[name_len..].starts_with('}') {
            // Not a placeholder (`${ x }`, `${}`): text of its own.
            out.push_str("${");
            rest = after;
            continue;
        }
        let name = &after[..name_len];
        let value = match options.lookup(name) {
            Some(v) => v.to_owned(),
            None => builtin(name, file, context).ok_or_else(|| {
                let line = text[..text.len() - rest.len() + at].matches('\n').count() + 1;
                let hint = if CONNECTION_PLACEHOLDERS
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(name))
                {
                    " (this built-in comes from the connection: give it a value)"
                } else if name.to_ascii_lowercase().starts_with("flyway:") {
                    " (not a Flyway built-in Atlas supports: flyway:defaultSchema, flyway:user, flyway:database, flyway:table, flyway:timestamp, flyway:filename, flyway:workingDirectory)"
                } else {
                    ""
                };
                Error::invalid(
                    format!("{file}:{line}"),
                    format!("placeholder `${{{name}}}` has no value{hint}; set it with --placeholder {name}=VALUE"),
                )
            })?,
        };
        out.push_str(&value);
        rest = &after[name_len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn builtin(name: &str, file: &str, context: &LoadContext) -> Option<String> {
    match name.to_ascii_lowercase().as_str() {
        "flyway:filename" => Some(file.rsplit('/').next().unwrap_or(file).to_owned()),
        "flyway:timestamp" => Some(context.timestamp.clone()),
        "flyway:workingdirectory" => Some(context.working_directory.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_unknown_ones_refused() {
        let options = SourceOptions::default()
            .with_placeholder("schema", "app")
            .with_placeholder("flyway:user", "deployer");
        let ctx = LoadContext::now();
        let out = replace(
            "CREATE TABLE ${Schema}.t (by text DEFAULT '${flyway:user}');\n-- ${flyway:filename} ${ not } ${}",
            "sub/V1__t.sql",
            &options,
            &ctx,
        )
        .expect("replaced");
        assert_eq!(
            out,
            "CREATE TABLE app.t (by text DEFAULT 'deployer');\n-- V1__t.sql ${ not } ${}"
        );
        let err = replace(
            "SELECT 1;\nSELECT '${missing}';",
            "V2__x.sql",
            &options,
            &ctx,
        )
        .expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("V2__x.sql:2") && text.contains("${missing}"),
            "{text}"
        );
        let err = replace("${flyway:database}", "V3__x.sql", &options, &ctx).expect_err("db");
        assert!(err.to_string().contains("from the connection"), "{err}");
        let off = SourceOptions {
            placeholder_replacement: false,
            ..SourceOptions::default()
        };
        assert_eq!(replace("${x}", "f", &off, &ctx).expect("kept"), "${x}");
    }

    #[test]
    fn the_timestamp_is_utc_civil_time() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(utc_timestamp(at), "2024-02-29 12:34:56");
    }
}
