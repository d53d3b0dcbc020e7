//! The file format: plain serde types, separate from the domain types so the
//! format stays stable while the domain evolves.
//!
//! Durations and conditions are kept as the text the user wrote; they are
//! parsed by [`RolloutSpec::into_rollout`](super::RolloutSpec::into_rollout),
//! which can then name the exact field in its error.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A whole rollout as written in a spec file: the root of the format.
///
/// Only `service`, `release` and `strategy` are required; everything else
/// defaults to the domain's defaults (see [`crate::Rollout::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The service name: a DNS-1123 label such as `checkout`
    /// (see [`ServiceName`](crate::ServiceName)).
    pub service: String,
    /// What to roll out.
    pub release: ReleaseSpec,
    /// How: exactly one of `blue_green` or `canary`.
    pub strategy: StrategySpec,
    /// How replicas are probed before they get traffic. Default:
    /// [`ProbePolicy::default`](crate::ProbePolicy::default).
    #[serde(default)]
    pub probe: ProbeSpec,
    /// Analysis templates by name, referenced by the strategy. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub analysis: BTreeMap<String, AnalysisTemplateSpec>,
    /// Longest time one step may take, e.g. `10m`. Default
    /// [`DEFAULT_PROGRESS_DEADLINE`](crate::rollout::DEFAULT_PROGRESS_DEADLINE)
    /// (10 minutes). Must be greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// What an inconclusive analysis does. Default `pause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_inconclusive: Option<InconclusiveSpec>,
    /// Extra arguments substituted into analysis queries as `{{name}}`.
    /// Names set by the engine (`service`, `canary`, `stable`,
    /// `canary_version`, `stable_version`, `window`) cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// A horizontal autoscaling policy for the service. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<super::autoscaling::AutoscalingSpec>,
}

/// The release to roll out (`release:`).
///
/// `Debug` shows the names of `env` variables but not their values, which
/// often hold credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// Version label, e.g. `v2` or a git sha. Must not be empty.
    pub version: String,
    /// The image or program to run. Must not be empty.
    pub artifact: String,
    /// Arguments passed to the artifact. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for every replica. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for ReleaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseSpec")
            .field("version", &self.version)
            .field("artifact", &self.artifact)
            .field("args", &self.args)
            .field("env", &EnvNames(&self.env))
            .finish()
    }
}

/// Shows `{KEY: <redacted>, …}`.
struct EnvNames<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for EnvNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, format_args!("<redacted>"))))
            .finish()
    }
}

/// `strategy:` — exactly one of the two fields must be set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// A blue-green rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,
    /// A canary rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

/// `strategy.blue_green:` — see [`BlueGreen`](crate::BlueGreen); defaults
/// are those of [`BlueGreen::new`](crate::BlueGreen::new).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenSpec {
    /// Replicas once promoted. Required, 1 to [`MAX_REPLICAS`](crate::strategy::MAX_REPLICAS).
    pub replicas: u32,
    /// Replicas while previewing, before any traffic, 1 to
    /// [`MAX_REPLICAS`](crate::strategy::MAX_REPLICAS). Default: `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_replicas: Option<u32>,
    /// When false, the rollout pauses before the first traffic until
    /// promoted. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion: Option<bool>,
    /// Canary weights in percent, non-decreasing, ending at 100.
    /// Default `[5, 25, 50, 75, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_steps: Option<Vec<u32>>,
    /// Analysis template run after every traffic step below 100 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_analysis: Option<String>,
    /// Analysis template run on the preview, before any traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<String>,
    /// Analysis template run at 100 %, before the old slot is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<String>,
    /// How long the old slot keeps running after promotion. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<String>,
    /// Requests matching this go to the new slot from the first traffic step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_match: Option<RequestMatchSpec>,
}

/// `strategy.canary:` — see [`Canary`](crate::Canary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// Replicas once promoted. Required, 1 to [`MAX_REPLICAS`](crate::strategy::MAX_REPLICAS).
    pub replicas: u32,
    /// The steps, in order. Default none (straight to 100 %).
    #[serde(default)]
    pub steps: Vec<CanaryStepSpec>,
    /// How long the old slot keeps running after promotion. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<String>,
    /// Requests matching this go to the canary from the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_match: Option<RequestMatchSpec>,
}

/// One canary step, written as a map with exactly one key:
/// `set_weight: 20`, `pause: {}`, `pause: { duration: 1m }`,
/// `analysis: { template: health }` or `set_canary_scale: { replicas: 2 }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStepSpec {
    /// Send this share of traffic (0–100, never lower than an earlier step)
    /// to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<u32>,
    /// Wait, for a duration or until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSpec>,
    /// Run an analysis template; failure rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStepSpec>,
    /// Change the canary's replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<CanaryScaleSpec>,
}

impl CanaryStepSpec {
    /// `set_weight: percent`.
    pub fn set_weight(percent: u32) -> Self {
        CanaryStepSpec {
            set_weight: Some(percent),
            ..Default::default()
        }
    }

    /// `pause: { duration }`, or `pause: {}` for `None`.
    pub fn pause(duration: Option<String>) -> Self {
        CanaryStepSpec {
            pause: Some(PauseSpec { duration }),
            ..Default::default()
        }
    }

    /// `analysis: { template }`.
    pub fn analysis(template: impl Into<String>) -> Self {
        CanaryStepSpec {
            analysis: Some(AnalysisStepSpec {
                template: template.into(),
            }),
            ..Default::default()
        }
    }

    /// `set_canary_scale: scale`.
    pub fn set_canary_scale(scale: CanaryScaleSpec) -> Self {
        CanaryStepSpec {
            set_canary_scale: Some(scale),
            ..Default::default()
        }
    }
}

/// `pause:` — wait `duration`, or until promoted when it is omitted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseSpec {
    /// How long, e.g. `1m`; greater than 0. Omit to wait for promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// `analysis:` as a canary step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisStepSpec {
    /// Name of a template under the top-level `analysis:`.
    pub template: String,
}

/// `set_canary_scale:` — exactly one of the three fields must be set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryScaleSpec {
    /// An exact replica count, at least 1 and at most the strategy's
    /// `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// A percentage (0–100) of the rollout's replicas, rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `true`: as many replicas as the current traffic weight implies (the
    /// engine's default scale, restored by this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

/// `canary_match:` — exactly one of `header` or `cookie`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatchSpec {
    /// Match a request header (name case-insensitive, value exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NameValueSpec>,
    /// Match a cookie (exact name and value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NameValueSpec>,
}

/// A name and the exact value it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValueSpec {
    /// The header or cookie name. Must not be empty.
    pub name: String,
    /// The exact value.
    pub value: String,
}

/// `probe:` — see [`ProbePolicy`](crate::ProbePolicy); every field defaults
/// to [`ProbePolicy::default`](crate::ProbePolicy::default) (Kubernetes'
/// defaults: `0s`, `10s`, `1s`, 1, 3).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Wait before the first attempt, e.g. `5s`; may be `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// Time between attempts; greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Time one attempt may take; greater than 0 and at most `period`
    /// (the default, `1s`, counts too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive successes needed; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Consecutive failures that fail the endpoint; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// One entry under `analysis:`; its key is the template's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisTemplateSpec {
    /// The metrics, at least one, with unique names.
    pub metrics: Vec<MetricSpec>,
}

/// One metric of a template — see
/// [`AnalysisMetric`](crate::AnalysisMetric); defaults are those of
/// [`AnalysisMetric::new`](crate::AnalysisMetric::new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Name, unique within the template. Must not be empty.
    pub name: String,
    /// The provider query. `{{name}}` placeholders must name an engine
    /// argument or a key of the top-level `args`.
    pub query: String,
    /// How far back each measurement looks, greater than 0. Default: the
    /// interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Time between measurements. Default `1m`; greater than 0 when
    /// `count` is more than 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Number of measurements, at least 1. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Wait before the first measurement. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// A measurement matching this is successful, e.g. `< 0.01`, `<= 200ms`,
    /// `>= 99%` (see [`Condition`](crate::Condition)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// A measurement matching this is failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// Inconclusive measurements tolerated. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<u32>,
    /// Consecutive provider errors tolerated. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<u32>,
}

/// `on_inconclusive:` — see [`InconclusivePolicy`](crate::InconclusivePolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusiveSpec {
    /// `pause`: wait for a human to promote or abort (the default).
    Pause,
    /// `abort`: roll back, as for a failed analysis.
    Abort,
}
