//! The `autoscaling:` section of a spec file: a horizontal autoscaling
//! policy, checked field by field, and the way back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::durations::{duration, format_duration};
use crate::autoscale::{
    Behavior, DEFAULT_TOLERANCE, HorizontalPolicy, MAX_POLICY_PERIOD, MAX_STABILIZATION_WINDOW,
    MetricSource, MetricSpec, MetricTarget, RatePolicy, RatePolicyKind, ScalingRules, SelectPolicy,
};
use crate::error::{Error, Result};

/// `autoscaling:` — see [`HorizontalPolicy`]. Omitted fields take
/// Kubernetes' defaults.
///
/// ```yaml
/// autoscaling:
///   min_replicas: 3
///   max_replicas: 100
///   metrics:
///     - { type: resource, name: cpu, utilization: 60 }
///     - { type: pods, name: requests_per_second, average_value: 500 }
///     - { type: object, name: p95_latency_seconds, value: 0.2 }
///   behavior:
///     scale_up:
///       policies: [{ type: percent, value: 100, period: 15s }]
///     scale_down:
///       stabilization_window: 5m
///       policies: [{ type: percent, value: 10, period: 1m }]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingSpec {
    /// The fewest replicas, at least 1. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// The most replicas, at least `min_replicas`. Required.
    pub max_replicas: u32,
    /// No scaling while usage is within this fraction of the target.
    /// Default 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// The metrics; at least one.
    pub metrics: Vec<ScalingMetricSpec>,
    /// Stabilization windows and rate policies. Default: Kubernetes'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehaviorSpec>,
}

/// The kind of an autoscaling metric (`type:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingMetricKind {
    /// A pod resource; `name` is the resource (`cpu`, `memory`).
    Resource,
    /// A per-pod metric.
    Pods,
    /// A metric of an object of the service.
    Object,
    /// A metric from outside the service.
    External,
}

/// One entry of `autoscaling.metrics`: exactly one of `utilization`,
/// `average_value` or `value`, each greater than 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingMetricSpec {
    /// Resource, pods, object or external.
    #[serde(rename = "type")]
    pub kind: ScalingMetricKind,
    /// The metric's name; for a resource metric, the resource's.
    pub name: String,
    /// The provider's query; `{{pod}}` is the pod for per-pod metrics.
    /// Default: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Target percent of the request (resource metrics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Target value per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<f64>,
    /// Target value (object and external metrics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `autoscaling.behavior:` — each direction defaults to Kubernetes'.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingBehaviorSpec {
    /// Rules for adding replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRulesSpec>,
    /// Rules for removing replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRulesSpec>,
}

/// Rules for one direction; omitted fields take that direction's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingRulesSpec {
    /// E.g. `5m`; at most 1 hour. Default 0 up, 5 minutes down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<String>,
    /// `max`, `min` or `disabled`. Default `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    /// Rate policies. Default: up 4 pods or 100 % per 15 s, down 100 %
    /// per 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<RatePolicySpec>>,
}

/// One rate policy: `{ type: percent, value: 100, period: 15s }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePolicySpec {
    /// `pods` or `percent`.
    #[serde(rename = "type")]
    pub kind: RatePolicyKind,
    /// Replicas or percent per period; at least 1.
    pub value: u32,
    /// E.g. `15s`; more than 0, at most 30 minutes.
    pub period: String,
}

impl AutoscalingSpec {
    /// Checks every rule and builds the policy; errors name the field under
    /// `at` (`autoscaling` in a rollout spec).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for the first rule broken, e.g. field
    /// `autoscaling.behavior.scale_down.policies[0].period`, rule
    /// `must be at most 1800s, got 3600s`.
    pub fn to_policy(&self, at: &str) -> Result<HorizontalPolicy> {
        let mut metrics = Vec::with_capacity(self.metrics.len());
        for (i, m) in self.metrics.iter().enumerate() {
            metrics.push(m.to_metric(&format!("{at}.metrics[{i}]"))?);
        }
        let defaults = Behavior::default();
        let behavior = self.behavior.clone().unwrap_or_default();
        let policy = HorizontalPolicy {
            min_replicas: self.min_replicas.unwrap_or(1),
            max_replicas: self.max_replicas,
            tolerance: self.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            metrics,
            behavior: Behavior {
                scale_up: rules(
                    &format!("{at}.behavior.scale_up"),
                    behavior.scale_up.as_ref(),
                    defaults.scale_up,
                )?,
                scale_down: rules(
                    &format!("{at}.behavior.scale_down"),
                    behavior.scale_down.as_ref(),
                    defaults.scale_down,
                )?,
            },
        };
        // The remaining rules are the domain's; its fields are spelled as
        // the file's.
        policy.validate().map_err(|e| match e {
            Error::InvalidInput { field, rule } => Error::InvalidInput {
                field: format!("{at}.{field}"),
                rule,
            },
            other => other,
        })?;
        Ok(policy)
    }
}

impl ScalingMetricSpec {
    fn to_metric(&self, at: &str) -> Result<MetricSpec> {
        let set: Vec<(&str, f64)> = [
            ("utilization", self.utilization),
            ("average_value", self.average_value),
            ("value", self.value),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let [(key, amount)] = set[..] else {
            return Err(Error::invalid(
                at,
                "must set exactly one of utilization, average_value or value",
            ));
        };
        if !amount.is_finite() || amount <= 0.0 {
            return Err(Error::invalid(
                format!("{at}.{key}"),
                format!("must be greater than 0, got {amount}"),
            ));
        }
        let target = match key {
            "utilization" => MetricTarget::Utilization(amount),
            "average_value" => MetricTarget::AverageValue(amount),
            _ => MetricTarget::Value(amount),
        };
        let source = match self.kind {
            ScalingMetricKind::Resource => MetricSource::Resource {
                resource: self.name.clone(),
            },
            ScalingMetricKind::Pods => MetricSource::Pods,
            ScalingMetricKind::Object => MetricSource::Object,
            ScalingMetricKind::External => MetricSource::External,
        };
        let metric = MetricSpec {
            name: self.name.clone(),
            source,
            target,
            query: self.query.clone().unwrap_or_default(),
        };
        metric.validate(at).map_err(|e| match e {
            // The domain calls the target `target`; the file spells its key.
            Error::InvalidInput { field, rule } if field.ends_with(".target") => {
                Error::InvalidInput {
                    field: format!("{at}.{key}"),
                    rule,
                }
            }
            other => other,
        })?;
        Ok(metric)
    }
}

fn rules(at: &str, spec: Option<&ScalingRulesSpec>, default: ScalingRules) -> Result<ScalingRules> {
    let Some(spec) = spec else {
        return Ok(default);
    };
    let stabilization_window = match &spec.stabilization_window {
        Some(text) => {
            let field = format!("{at}.stabilization_window");
            let d = duration(&field, text)?;
            at_most(&field, d, MAX_STABILIZATION_WINDOW)?
        }
        None => default.stabilization_window,
    };
    let policies = match &spec.policies {
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, p) in list.iter().enumerate() {
                let field = format!("{at}.policies[{i}].period");
                let period = duration(&field, &p.period)?;
                if period.is_zero() {
                    return Err(Error::invalid(field, "must be greater than 0"));
                }
                let period = at_most(&field, period, MAX_POLICY_PERIOD)?;
                out.push(RatePolicy {
                    kind: p.kind,
                    value: p.value,
                    period,
                });
            }
            out
        }
        None => default.policies,
    };
    Ok(ScalingRules {
        stabilization_window,
        select: spec.select_policy.unwrap_or(default.select),
        policies,
    })
}

fn at_most(field: &str, d: Duration, max: Duration) -> Result<Duration> {
    if d > max {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {}s, got {}s",
                max.as_secs(),
                d.as_secs_f64()
            ),
        ));
    }
    Ok(d)
}

impl From<&HorizontalPolicy> for AutoscalingSpec {
    fn from(p: &HorizontalPolicy) -> Self {
        AutoscalingSpec {
            min_replicas: Some(p.min_replicas),
            max_replicas: p.max_replicas,
            tolerance: Some(p.tolerance),
            metrics: p.metrics.iter().map(ScalingMetricSpec::from).collect(),
            behavior: Some(ScalingBehaviorSpec {
                scale_up: Some(ScalingRulesSpec::from(&p.behavior.scale_up)),
                scale_down: Some(ScalingRulesSpec::from(&p.behavior.scale_down)),
            }),
        }
    }
}

impl From<&MetricSpec> for ScalingMetricSpec {
    fn from(m: &MetricSpec) -> Self {
        let (kind, name) = match &m.source {
            MetricSource::Resource { resource } => (ScalingMetricKind::Resource, resource.clone()),
            MetricSource::Pods => (ScalingMetricKind::Pods, m.name.clone()),
            MetricSource::Object => (ScalingMetricKind::Object, m.name.clone()),
            MetricSource::External => (ScalingMetricKind::External, m.name.clone()),
        };
        let mut spec = ScalingMetricSpec {
            kind,
            name,
            query: (!m.query.is_empty()).then(|| m.query.clone()),
            utilization: None,
            average_value: None,
            value: None,
        };
        match m.target {
            MetricTarget::Utilization(v) => spec.utilization = Some(v),
            MetricTarget::AverageValue(v) => spec.average_value = Some(v),
            MetricTarget::Value(v) => spec.value = Some(v),
        }
        spec
    }
}

impl From<&ScalingRules> for ScalingRulesSpec {
    fn from(r: &ScalingRules) -> Self {
        ScalingRulesSpec {
            stabilization_window: Some(format_duration(r.stabilization_window)),
            select_policy: Some(r.select),
            policies: Some(
                r.policies
                    .iter()
                    .map(|p| RatePolicySpec {
                        kind: p.kind,
                        value: p.value,
                        period: format_duration(p.period),
                    })
                    .collect(),
            ),
        }
    }
}
