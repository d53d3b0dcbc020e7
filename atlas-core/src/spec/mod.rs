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
mod document;
mod durations;
mod failover;
mod types;

use std::path::Path;

pub use crate::strategy::MAX_REPLICAS;
pub use autoscaling::{
    AutoscalingSpec, RatePolicySpec, ScalingBehaviorSpec, ScalingMetricKind, ScalingMetricSpec,
    ScalingRulesSpec,
};
pub use convert::ENGINE_ARGS;
use document::{DOCUMENT, in_file, parse_as, parse_toml, parse_yaml, read_as};
pub use document::{MAX_SPEC_FILE_BYTES, SpecFormat};
pub use durations::MAX_DURATION;
pub use failover::{
    CapacitySpec, DatabaseSpec, FailbackSpec, FailoverConfig, FailoverSpec, HealthSpec, Manual,
    MetricTriggerSpec, Off, RegionSpec, Toggle,
};
pub use types::{
    AnalysisStepSpec, AnalysisTemplateSpec, BlueGreenSpec, CanaryScaleSpec, CanarySpec,
    CanaryStepSpec, InconclusiveSpec, MetricSpec, NameValueSpec, PauseSpec, ProbeSpec, ReleaseSpec,
    RequestMatchSpec, RolloutSpec, StrategySpec,
};

use crate::error::{Error, Result};
use crate::rollout::Rollout;

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
        parse_yaml(text)
    }

    /// Parses a TOML spec. Only parses: call
    /// [`into_rollout`](Self::into_rollout) to check the rules.
    ///
    /// # Errors
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn from_toml(text: &str) -> Result<Self> {
        parse_toml(text)
    }

    /// Parses `text` in `format`.
    ///
    /// # Errors
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn parse(text: &str, format: SpecFormat) -> Result<Self> {
        parse_as(text, format)
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
        let spec: Self = read_as(path)?;
        tracing::debug!(service = %spec.service, "spec file parsed");
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
