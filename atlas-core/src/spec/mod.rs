//! Rollout spec files: a whole [`Rollout`] written as YAML or TOML.
//!
//! The file format is its own set of serde types ([`RolloutSpec`] and the
//! `…Spec` types below), kept apart from the domain types so that files
//! written today keep loading while the domain evolves. Every struct refuses
//! unknown fields, so a typo is an error rather than a silently ignored
//! setting. Durations are human strings (`30s`, `10m`, `1h30m`), conditions
//! are strings such as `< 0.01`, `<= 200ms` or `>= 99%`, weights are integer
//! percentages. Omitted fields take the domain's defaults. Replica counts
//! are at most [`MAX_REPLICAS`], a canary scale at most the strategy's
//! `replicas`, and `probe.timeout` at most `probe.period` (the default
//! timeout, 1 s, counts: a period under it needs a timeout set too).
//!
//! Loading has two stages, and both report
//! [`Error::InvalidInput`] with `field` set to
//! the place in the file:
//!
//! 1. parsing ([`RolloutSpec::from_yaml`], [`RolloutSpec::from_toml`]):
//!    syntax, types and unknown fields; `field` is the dotted path where the
//!    parser stopped (including the unknown key itself, e.g.
//!    `probe.periodd`), or `document` for the top level and for TOML syntax
//!    errors; `rule` is the parser's message with its line and column;
//! 2. conversion ([`RolloutSpec::into_rollout`]): every rule of the domain,
//!    checked in the file's terms, e.g. field
//!    `strategy.canary.steps[2].set_weight`, rule
//!    `must not decrease (was 50, now 10)`.
//!
//! [`load`] does both for a file, and prefixes `field` with the file's path.
//!
//! Canary steps are a list of maps with one key each. In YAML:
//! `- set_weight: 20`, `- pause: {}` (until promoted), `- pause: { duration: 1m }`,
//! `- analysis: { template: health }`, `- set_canary_scale: { replicas: 2 }`
//! (or `{ weight: 50 }`, or `{ match_traffic_weight: true }`). In TOML:
//!
//! ```
//! # use atlas_core::spec::RolloutSpec;
//! let rollout = RolloutSpec::from_toml(r#"
//! service = "payments"
//! release = { version = "1.8.0", artifact = "registry.example.com/payments:1.8.0" }
//!
//! [strategy.canary]
//! replicas = 10
//! steps = [
//!   { set_weight = 10 },
//!   { pause = { duration = "2m" } },
//!   { set_canary_scale = { replicas = 2 } },
//!   { set_weight = 50 },
//!   { pause = {} },
//! ]
//! "#)?.into_rollout()?;
//! assert_eq!(rollout.strategy.replicas(), 10);
//! # Ok::<(), atlas_core::Error>(())
//! ```
//!
//! Complete, commented examples of both formats are in the repository's
//! `examples/specs/` directory.
//!
//! ```
//! use atlas_core::spec::RolloutSpec;
//! use atlas_core::{Step, Strategy};
//!
//! let spec = RolloutSpec::from_yaml(r#"
//! service: checkout
//! release: { version: v2, artifact: ./target/debug/checkout }
//! strategy:
//!   canary:
//!     replicas: 4
//!     steps:
//!       - set_weight: 25
//!       - pause: { duration: 1m }
//!       - analysis: { template: health }
//! analysis:
//!   health:
//!     metrics:
//!       - name: error-rate
//!         query: error_rate{service="{{service}}"}
//!         interval: 10s
//!         count: 3
//!         success_condition: "< 0.01"
//! progress_deadline: 15m
//! "#)?;
//! let rollout = spec.into_rollout()?;
//! assert_eq!(rollout.progress_deadline.as_secs(), 900);
//! assert!(matches!(rollout.strategy, Strategy::Canary(_)));
//! assert_eq!(rollout.strategy.compile(false)[2], Step::SetWeight(atlas_core::Weight::new(25)?));
//!
//! // A mistake names its field:
//! let err = RolloutSpec::from_yaml(r#"
//! service: checkout
//! release: { version: v2, artifact: ./checkout }
//! strategy: { blue_green: { replicas: 2, traffic_steps: [10, 50] } }
//! "#)?.into_rollout().unwrap_err();
//! assert_eq!(err.to_string(), "invalid strategy.blue_green.traffic_steps: must end at 100 (ends at 50)");
//! # Ok::<(), atlas_core::Error>(())
//! ```

mod autoscaling;
mod convert;
mod durations;
mod types;

use std::fmt;
use std::io::Read;
use std::path::Path;

pub use crate::strategy::MAX_REPLICAS;
pub use autoscaling::{
    AutoscalingSpec, RatePolicySpec, ScalingBehaviorSpec, ScalingMetricKind, ScalingMetricSpec,
    ScalingRulesSpec,
};
pub use convert::ENGINE_ARGS;
pub use durations::MAX_DURATION;
pub use types::{
    AnalysisStepSpec, AnalysisTemplateSpec, BlueGreenSpec, CanaryScaleSpec, CanarySpec,
    CanaryStepSpec, InconclusiveSpec, MetricSpec, NameValueSpec, PauseSpec, ProbeSpec, ReleaseSpec,
    RequestMatchSpec, RolloutSpec, StrategySpec,
};

use crate::error::{Error, Result};
use crate::rollout::Rollout;

/// The largest spec file [`RolloutSpec::from_path`] reads: 1 MiB. Real specs
/// are a few kilobytes; the cap keeps a wrong path (a log, a device) from
/// being read into memory.
pub const MAX_SPEC_FILE_BYTES: u64 = 1024 * 1024;

/// The field named by errors about the document as a whole (a syntax error,
/// a missing top-level field).
const DOCUMENT: &str = "document";

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

impl RolloutSpec {
    /// Parses a YAML spec. Only parses: call
    /// [`into_rollout`](Self::into_rollout) to check the rules.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for bad YAML, a wrong type, a missing or an
    /// unknown field; `field` is the dotted path (`document` for the top
    /// level), `rule` the parser's message with line and column.
    pub fn from_yaml(text: &str) -> Result<Self> {
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

    /// Parses a TOML spec. Only parses: call
    /// [`into_rollout`](Self::into_rollout) to check the rules.
    ///
    /// # Errors
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn from_toml(text: &str) -> Result<Self> {
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

    /// Parses `text` in `format`.
    ///
    /// # Errors
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn parse(text: &str, format: SpecFormat) -> Result<Self> {
        match format {
            SpecFormat::Yaml => Self::from_yaml(text),
            SpecFormat::Toml => Self::from_toml(text),
        }
    }

    /// Reads and parses a spec file, in the format its extension names
    /// (see [`SpecFormat::of_path`]). Reads synchronously: call it before
    /// starting a runtime, or from `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidInput`] for an unknown extension (field: the path),
    ///   a file over [`MAX_SPEC_FILE_BYTES`] or not UTF-8, or a parse error
    ///   (field: `PATH: FIELD`, e.g. `deploy/checkout.yaml: strategy.canary`);
    /// - [`Error::NotFound`] when the file does not exist;
    /// - [`Error::Backend`] (backend `filesystem`) when it cannot be read.
    pub fn from_path(path: &Path) -> Result<Self> {
        let span = tracing::info_span!("atlas.spec.read", path = %path.display());
        let _entered = span.enter();
        let format = SpecFormat::of_path(path)?;
        let text = read_bounded(path)?;
        let spec = Self::parse(&text, format).map_err(|e| in_file(path, e))?;
        tracing::debug!(service = %spec.service, %format, "spec file parsed");
        Ok(spec)
    }

    /// Writes the spec as YAML; [`from_yaml`](Self::from_yaml) reads it back
    /// unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `document`) if the serializer refuses
    /// a value; the spec types hold none it refuses.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml_ng::to_string(self)
            .map_err(|e| Error::invalid(DOCUMENT, format!("cannot be written as YAML: {e}")))
    }

    /// Writes the spec as TOML; [`from_toml`](Self::from_toml) reads it back
    /// unchanged.
    ///
    /// # Errors
    ///
    /// As [`to_yaml`](Self::to_yaml).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| Error::invalid(DOCUMENT, format!("cannot be written as TOML: {e}")))
    }
}

impl From<Rollout> for RolloutSpec {
    fn from(rollout: Rollout) -> Self {
        RolloutSpec::from(&rollout)
    }
}

/// Reads the spec file at `path` (see [`RolloutSpec::from_path`]) and
/// checks and converts it (see [`RolloutSpec::into_rollout`]).
///
/// # Errors
///
/// As [`RolloutSpec::from_path`]; rule violations are
/// [`Error::InvalidInput`] with field `PATH: FIELD`, e.g.
/// `deploy/checkout.yaml: probe.failure_threshold`.
pub fn load(path: impl AsRef<Path>) -> Result<Rollout> {
    let path = path.as_ref();
    let span = tracing::info_span!("atlas.spec.load", path = %path.display());
    let _entered = span.enter();
    let rollout = RolloutSpec::from_path(path)?
        .into_rollout()
        .map_err(|e| in_file(path, e))?;
    tracing::info!(
        service = %rollout.service,
        version = %rollout.release.version,
        "rollout spec loaded"
    );
    Ok(rollout)
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

fn in_file(path: &Path, e: Error) -> Error {
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

fn read_bounded(path: &Path) -> Result<String> {
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
