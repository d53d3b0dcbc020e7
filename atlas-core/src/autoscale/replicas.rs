//! The replica count one metric asks for, by the Kubernetes HPA's rules.
//!
//! For every metric, `desired = ceil(usage / target × pods)`, with no change
//! while `|1 − usage/target| ≤ tolerance`. For per-pod metrics, pods that
//! are not ready are left out and pods without a value are "missing"; when
//! either exists, the ratio is computed again with the missing pods at 100 %
//! of the target (if the first ratio scales down) or at 0 (if it scales up),
//! and the not-ready pods at 0 when it scales up. The replica count does
//! not change when that second ratio is within the tolerance or points the
//! other way than the first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::policy::{MetricSource, MetricSpec, MetricTarget};

/// One pod of the scaled workload, as the autoscaler needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodState {
    /// The pod's (or local replica's) name; per-pod values are keyed by it.
    pub name: String,
    /// Whether the pod is ready. Not-ready pods never count towards scaling
    /// down, and count as idle when scaling up.
    pub ready: bool,
    /// Resource requests by resource name (`cpu` in cores, `memory` in
    /// bytes, …): the base of Resource utilization.
    pub requests: BTreeMap<String, f64>,
}

impl PodState {
    /// A ready pod with no requests.
    pub fn ready(name: impl Into<String>) -> Self {
        PodState {
            name: name.into(),
            ready: true,
            requests: BTreeMap::new(),
        }
    }

    /// A pod that is not ready yet.
    pub fn not_ready(name: impl Into<String>) -> Self {
        PodState {
            ready: false,
            ..PodState::ready(name)
        }
    }

    /// The same pod with a request for `resource`.
    pub fn with_request(mut self, resource: impl Into<String>, amount: f64) -> Self {
        self.requests.insert(resource.into(), amount);
        self
    }
}

/// What was measured for one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MetricObservation {
    /// Values of a per-pod metric (Resource, Pods) by pod name. A pod of the
    /// input without an entry has a missing metric.
    PerPod(BTreeMap<String, f64>),
    /// The one value of an Object or External metric (the total, for an
    /// average-value target).
    Value(f64),
    /// The metric could not be read; the reason says why.
    Unavailable(String),
}

impl MetricObservation {
    /// Per-pod values from `(pod, value)` pairs.
    pub fn per_pod<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = (S, f64)>,
        S: Into<String>,
    {
        MetricObservation::PerPod(values.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

/// What one metric asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricProposal {
    /// The metric's name.
    pub metric: String,
    /// The replica count it asks for, or why it cannot say.
    pub outcome: MetricOutcome,
}

/// A metric's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MetricOutcome {
    /// The metric asks for `replicas`.
    Replicas {
        /// The replica count.
        replicas: u32,
        /// usage / target as measured (before missing or not-ready pods
        /// were filled in).
        usage_ratio: f64,
    },
    /// The metric gave nothing usable.
    Invalid {
        /// Why, e.g. `no ready pod has a value`.
        reason: String,
    },
}

impl MetricProposal {
    /// The replica count, when the metric gave one.
    pub fn replicas(&self) -> Option<u32> {
        match self.outcome {
            MetricOutcome::Replicas { replicas, .. } => Some(replicas),
            MetricOutcome::Invalid { .. } => None,
        }
    }

    fn invalid(metric: &MetricSpec, reason: impl Into<String>) -> Self {
        MetricProposal {
            metric: metric.name.clone(),
            outcome: MetricOutcome::Invalid {
                reason: reason.into(),
            },
        }
    }

    fn replicas_of(metric: &MetricSpec, replicas: u32, usage_ratio: f64) -> Self {
        MetricProposal {
            metric: metric.name.clone(),
            outcome: MetricOutcome::Replicas {
                replicas,
                usage_ratio,
            },
        }
    }
}

/// The replica count `metric` asks for, given what was measured, the pods,
/// the current replica count and the tolerance.
///
/// Readiness applies to every per-pod metric. (Kubernetes applies it to CPU
/// only, where a starting pod's usage is misleading; a caller that wants
/// that marks pods ready for the other metrics.)
pub fn metric_replicas(
    metric: &MetricSpec,
    observation: &MetricObservation,
    pods: &[PodState],
    current_replicas: u32,
    tolerance: f64,
) -> MetricProposal {
    match (observation, &metric.source) {
        (MetricObservation::Unavailable(reason), _) => {
            MetricProposal::invalid(metric, reason.clone())
        }
        (MetricObservation::PerPod(values), source) if source.is_per_pod() => {
            per_pod_replicas(metric, values, pods, current_replicas, tolerance)
        }
        (MetricObservation::Value(v), MetricSource::Object | MetricSource::External) => {
            if !v.is_finite() || *v < 0.0 {
                return MetricProposal::invalid(metric, format!("value {v} is not a usage"));
            }
            let target = metric.target.amount();
            match metric.target {
                MetricTarget::AverageValue(_) => {
                    // The value is a total, spread over the replicas.
                    let ratio = v / (target * f64::from(current_replicas.max(1)));
                    if (1.0 - ratio).abs() <= tolerance {
                        MetricProposal::replicas_of(metric, current_replicas, ratio)
                    } else {
                        MetricProposal::replicas_of(metric, ceil_count(v / target), ratio)
                    }
                }
                _ => {
                    let ratio = v / target;
                    if (1.0 - ratio).abs() <= tolerance {
                        return MetricProposal::replicas_of(metric, current_replicas, ratio);
                    }
                    let ready = pods.iter().filter(|p| p.ready).count();
                    MetricProposal::replicas_of(metric, ceil_count(ratio * ready as f64), ratio)
                }
            }
        }
        (MetricObservation::PerPod(_), _) => MetricProposal::invalid(
            metric,
            "an object or external metric needs one value, got per-pod values",
        ),
        (MetricObservation::Value(_), _) => MetricProposal::invalid(
            metric,
            "a per-pod metric needs per-pod values, got one value",
        ),
    }
}

/// One pod's part in a per-pod ratio: its usage, and what the target
/// allows it (the target, or its request × the target utilization).
#[derive(Clone, Copy)]
struct Share {
    usage: f64,
    allowed: f64,
}

fn ratio_of(shares: &[Share]) -> f64 {
    let usage: f64 = shares.iter().map(|s| s.usage).sum();
    let allowed: f64 = shares.iter().map(|s| s.allowed).sum();
    usage / allowed
}

fn per_pod_replicas(
    metric: &MetricSpec,
    values: &BTreeMap<String, f64>,
    pods: &[PodState],
    current_replicas: u32,
    tolerance: f64,
) -> MetricProposal {
    let target = metric.target.amount();
    let allowed_of = |pod: &PodState| -> Result<f64, String> {
        match (&metric.source, metric.target) {
            (MetricSource::Resource { resource }, MetricTarget::Utilization(percent)) => {
                match pod.requests.get(resource) {
                    Some(r) if r.is_finite() && *r > 0.0 => Ok(r * percent / 100.0),
                    _ => Err(format!("pod {} has no {resource} request", pod.name)),
                }
            }
            _ => Ok(target),
        }
    };
    let mut ready = Vec::new();
    let mut missing = Vec::new();
    let mut unready = Vec::new();
    for pod in pods {
        let allowed = match allowed_of(pod) {
            Ok(a) => a,
            Err(reason) => return MetricProposal::invalid(metric, reason),
        };
        if !pod.ready {
            unready.push(allowed);
            continue;
        }
        match values.get(&pod.name) {
            None => missing.push(allowed),
            Some(v) if !v.is_finite() || *v < 0.0 => {
                return MetricProposal::invalid(
                    metric,
                    format!("pod {} has value {v}, which is not a usage", pod.name),
                );
            }
            Some(v) => ready.push(Share { usage: *v, allowed }),
        }
    }
    if ready.is_empty() {
        return MetricProposal::invalid(metric, "no ready pod has a value");
    }
    let ratio = ratio_of(&ready);
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            return MetricProposal::replicas_of(metric, current_replicas, ratio);
        }
        return MetricProposal::replicas_of(metric, ceil_count(ratio * ready.len() as f64), ratio);
    }
    let mut filled = ready;
    if ratio < 1.0 {
        // Scaling down: a pod without a value may be busy; assume it uses
        // all it is allowed, so it never makes the scale-down larger.
        filled.extend(missing.iter().map(|&allowed| Share {
            usage: allowed,
            allowed,
        }));
    } else if ratio > 1.0 {
        // Scaling up: assume it is idle, so it never makes the scale-up larger.
        filled.extend(missing.iter().map(|&allowed| Share {
            usage: 0.0,
            allowed,
        }));
    }
    if scale_up_with_unready {
        filled.extend(unready.iter().map(|&allowed| Share {
            usage: 0.0,
            allowed,
        }));
    }
    let new_ratio = ratio_of(&filled);
    let reversed = (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0);
    if (1.0 - new_ratio).abs() <= tolerance || reversed {
        return MetricProposal::replicas_of(metric, current_replicas, ratio);
    }
    let proposed = ceil_count(new_ratio * filled.len() as f64);
    if (new_ratio < 1.0 && proposed > current_replicas)
        || (new_ratio > 1.0 && proposed < current_replicas)
    {
        return MetricProposal::replicas_of(metric, current_replicas, ratio);
    }
    MetricProposal::replicas_of(metric, proposed, ratio)
}

/// `ceil(x)` as a replica count, saturating (a usage ratio can be huge).
fn ceil_count(x: f64) -> u32 {
    let c = x.ceil();
    if c.is_nan() || c <= 0.0 {
        0
    } else if c >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        c as u32
    }
}
