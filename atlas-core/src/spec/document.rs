//! Reading spec documents: the two formats, parse errors that name the
//! field, the size cap. Shared by every spec type (rollouts, failover).

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The largest spec file [`RolloutSpec::from_path`](super::RolloutSpec::from_path) reads: 1 MiB. Real specs
/// are a few kilobytes; the cap keeps a wrong path (a log, a device) from
/// being read into memory.
pub const MAX_SPEC_FILE_BYTES: u64 = 1024 * 1024;

/// The field named by errors about the document as a whole (a syntax error,
/// a missing top-level field).
pub(super) const DOCUMENT: &str = "document";

/// The deepest nesting of YAML flow collections (`[`, `{`) accepted.
///
/// libyaml's time grows with the square of that depth (100 000 nested `[`
/// take most of a minute), and serde_yaml_ng refuses anything nested deeper
/// than 128 once parsed anyway, so deeper input is refused before parsing.
const MAX_YAML_FLOW_DEPTH: usize = 256;

/// The two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecFormat {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
}

impl SpecFormat {
    /// The format a file's extension names: `.yaml`/`.yml` or `.toml`, in
    /// any case.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the path for any other extension.
    pub fn of_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("yaml" | "yml") => Ok(SpecFormat::Yaml),
            Some("toml") => Ok(SpecFormat::Toml),
            _ => Err(Error::invalid(
                path.display().to_string(),
                "spec files must end in .yaml, .yml or .toml",
            )),
        }
    }
}

impl fmt::Display for SpecFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecFormat::Yaml => "yaml",
            SpecFormat::Toml => "toml",
        })
    }
}

fn field_of(path: &serde_path_to_error::Path) -> String {
    let field = path.to_string();
    if field.chars().all(|c| c == '.' || c == '?') {
        DOCUMENT.to_string()
    } else {
        field
    }
}

/// Whether `[`/`{` nest deeper than `limit`. Quotes are ignored, so brackets
/// inside strings count too: an over-estimate, and real specs stay far below
/// the limit (queries hold balanced brackets).
fn flow_depth_exceeds(text: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// serde_yaml_ng starts its messages with its own copy of the path: `field`
/// itself, or for an unknown key the map holding it (`release` for
/// `release.bogus`). The path is already in `field`, so drop it here.
fn without_path_prefix<'m>(field: &str, message: &'m str) -> &'m str {
    let mut path = field;
    loop {
        if let Some(rest) = message
            .strip_prefix(path)
            .and_then(|m| m.strip_prefix(": "))
        {
            return rest;
        }
        match path.rfind(['.', '[']) {
            Some(cut) if cut > 0 => path = &path[..cut],
            _ => return message,
        }
    }
}

fn parse_failed(format: SpecFormat, field: String, rule: String) -> Error {
    tracing::debug!(%format, %field, "spec does not parse");
    Error::InvalidInput { field, rule }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(super) fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidInput { field, rule } => Error::InvalidInput {
            field: if field == DOCUMENT {
                path.display().to_string()
            } else {
                format!("{}: {field}", path.display())
            },
            rule,
        },
        other => other,
    }
}

pub(super) fn read_bounded(path: &Path) -> Result<String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::not_found(format!("spec file {shown}")),
        _ => Error::backend_with("filesystem", format!("cannot open {shown}"), e),
    })?;
    let mut bytes = Vec::new();
    // Read one byte past the cap to tell "exactly at the cap" from "over it"
    // without trusting the metadata, which is 0 for pipes and devices.
    file.take(MAX_SPEC_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::backend_with("filesystem", format!("cannot read {shown}"), e))?;
    if bytes.len() as u64 > MAX_SPEC_FILE_BYTES {
        return Err(Error::invalid(
            shown.to_string(),
            format!("spec files must be at most {MAX_SPEC_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| Error::invalid(shown.to_string(), format!("is not UTF-8 text: {e}")))
}

/// Parses YAML into `T`; errors name the field (see
/// [`RolloutSpec::from_yaml`](super::RolloutSpec::from_yaml)).
pub(super) fn parse_yaml<T: DeserializeOwned>(text: &str) -> Result<T> {
    if flow_depth_exceeds(text, MAX_YAML_FLOW_DEPTH) {
        return Err(parse_failed(
            SpecFormat::Yaml,
            DOCUMENT.to_string(),
            format!("must not nest '[' or '{{' more than {MAX_YAML_FLOW_DEPTH} deep"),
        ));
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_of(e.path());
        let rule = without_path_prefix(&field, &e.inner().to_string()).to_string();
        parse_failed(SpecFormat::Yaml, field, rule)
    })
}

/// Parses TOML into `T`; errors name the field and the line and column.
pub(super) fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T> {
    let located = |e: &toml::de::Error| match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{} at line {line} column {column}", e.message().trim_end())
        }
        None => e.message().trim_end().to_string(),
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| parse_failed(SpecFormat::Toml, DOCUMENT.to_string(), located(&e)))?;
    serde_path_to_error::deserialize(de)
        .map_err(|e| parse_failed(SpecFormat::Toml, field_of(e.path()), located(e.inner())))
}

/// Parses `text` in `format` into `T`.
pub(super) fn parse_as<T: DeserializeOwned>(text: &str, format: SpecFormat) -> Result<T> {
    match format {
        SpecFormat::Yaml => parse_yaml(text),
        SpecFormat::Toml => parse_toml(text),
    }
}

/// Reads the file at `path` (at most [`MAX_SPEC_FILE_BYTES`]) and parses
/// it in the format its extension names; errors name `PATH: FIELD`.
pub(super) fn read_as<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let format = SpecFormat::of_path(path)?;
    let text = read_bounded(path)?;
    parse_as(&text, format).map_err(|e| in_file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters_from_one() {
        let text = "a = 1\nbé = [\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes but one column; offsets inside it round down.
        assert_eq!(line_column(text, 9), (2, 3));
        assert_eq!(line_column(text, 8), (2, 2));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn the_path_yaml_repeats_is_dropped_once() {
        assert_eq!(
            without_path_prefix("release.bogus", "release: unknown field"),
            "unknown field"
        );
        assert_eq!(
            without_path_prefix(
                "strategy.canary.steps[1].x",
                "strategy.canary.steps[1]: unknown"
            ),
            "unknown"
        );
        assert_eq!(
            without_path_prefix("service", "service: bad at line 1"),
            "bad at line 1"
        );
        assert_eq!(
            without_path_prefix("document", "invalid type: sequence"),
            "invalid type: sequence"
        );
    }

    #[test]
    fn flow_depth_counts_unclosed_brackets_only() {
        assert!(!flow_depth_exceeds(&"[]".repeat(10_000), 2));
        assert!(!flow_depth_exceeds("[[{}]]", 3));
        assert!(flow_depth_exceeds("[[{", 2));
        assert!(!flow_depth_exceeds("]]]]][[", 2));
    }
}
