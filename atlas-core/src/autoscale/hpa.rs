//! [`HorizontalAutoscaler`]: the Kubernetes HPA's decision, step by step,
//! with the memory it needs between decisions.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::policy::{HorizontalPolicy, RatePolicyKind, ScalingRules, SelectPolicy};
use super::replicas::{MetricObservation, MetricProposal, PodState, metric_replicas};
use crate::error::{Error, Result};

/// What the autoscaler is told at one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleInput {
    /// Replicas the workload has now (the scale's `spec.replicas`).
    pub current_replicas: u32,
    /// Its pods, with readiness and requests.
    pub pods: Vec<PodState>,
    /// One observation per metric of the policy, in the policy's order.
    pub observations: Vec<MetricObservation>,
}

impl ScaleInput {
    /// An input with `current_replicas` ready pods named `pod-0`, `pod-1`, …
    /// and no observations yet.
    pub fn with_ready_pods(current_replicas: u32) -> Self {
        ScaleInput {
            current_replicas,
            pods: (0..current_replicas)
                .map(|i| PodState::ready(format!("pod-{i}")))
                .collect(),
            observations: Vec::new(),
        }
    }

    /// The same input with one more observation.
    pub fn observe(mut self, observation: MetricObservation) -> Self {
        self.observations.push(observation);
        self
    }
}

/// Why the decision is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScaleReason {
    /// The metrics' recommendation, within every limit.
    DesiredWithinRange,
    /// A higher recommendation in the scale-down window held the count up.
    ScaleDownStabilized,
    /// A lower recommendation in the scale-up window held the count down.
    ScaleUpStabilized,
    /// The scale-up rate policies capped the increase.
    ScaleUpLimit,
    /// The scale-down rate policies capped the decrease.
    ScaleDownLimit,
    /// Capped at `max_replicas`.
    TooManyReplicas,
    /// Raised to `min_replicas`.
    TooFewReplicas,
    /// No metric gave a replica count, or one failed while the others asked
    /// for fewer replicas: the count is kept.
    MetricsUnavailable,
    /// The workload was scaled to zero by hand: autoscaling is off until it
    /// runs again.
    ScaledToZero,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleDecision {
    /// The replica count before.
    pub current_replicas: u32,
    /// The replica count to set.
    pub desired_replicas: u32,
    /// What the metrics asked for before stabilization, rate limits and
    /// bounds (the largest proposal), if any metric gave one.
    pub recommended_replicas: Option<u32>,
    /// Why.
    pub reason: ScaleReason,
    /// Each metric's proposal, in the policy's order.
    pub proposals: Vec<MetricProposal>,
}

impl ScaleDecision {
    /// Whether the replica count changes.
    pub fn changes(&self) -> bool {
        self.desired_replicas != self.current_replicas
    }
}

#[derive(Debug, Clone, Copy)]
struct Stamped {
    at: Instant,
    replicas: u32,
}

/// The Kubernetes HPA's algorithm for one workload, with the history it
/// keeps between decisions: past recommendations (for the stabilization
/// windows) and past scale changes (for the rate policies).
///
/// Call [`recommend`](Self::recommend) at every sync (Kubernetes: every
/// 15 s), apply the decision, and report what was applied with
/// [`record_scale`](Self::record_scale).
///
/// ```
/// use std::time::{Duration, Instant};
/// use atlas_core::autoscale::{
///     HorizontalAutoscaler, HorizontalPolicy, MetricObservation, ScaleInput,
/// };
///
/// let policy = HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]);
/// let mut hpa = HorizontalAutoscaler::new(policy)?;
/// let now = Instant::now();
/// // 3 replicas serving 900 requests/s each, held at 500: ceil(1.8 × 3) = 6.
/// let input = ScaleInput::with_ready_pods(3).observe(MetricObservation::per_pod([
///     ("pod-0", 900.0),
///     ("pod-1", 900.0),
///     ("pod-2", 900.0),
/// ]));
/// let decision = hpa.recommend(now, &input)?;
/// assert_eq!(decision.desired_replicas, 6);
/// hpa.record_scale(now, 3, 6);
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HorizontalAutoscaler {
    policy: HorizontalPolicy,
    recommendations: Vec<Stamped>,
    scale_ups: Vec<Stamped>,
    scale_downs: Vec<Stamped>,
}

impl HorizontalAutoscaler {
    /// An autoscaler with no history.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field when the policy breaks a
    /// rule (see [`HorizontalPolicy::validate`]).
    pub fn new(policy: HorizontalPolicy) -> Result<Self> {
        policy.validate()?;
        Ok(HorizontalAutoscaler {
            policy,
            recommendations: Vec::new(),
            scale_ups: Vec::new(),
            scale_downs: Vec::new(),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &HorizontalPolicy {
        &self.policy
    }

    /// Decides the replica count at `now`, and remembers the metrics'
    /// recommendation for the stabilization windows.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `observations`) when the input does not
    /// hold one observation per metric of the policy. A metric that could
    /// not be read is not an error: its proposal says why, and the decision
    /// keeps the count where the Kubernetes HPA would.
    pub fn recommend(&mut self, now: Instant, input: &ScaleInput) -> Result<ScaleDecision> {
        self.recommend_with_floor(now, input, None)
    }

    /// As [`recommend`](Self::recommend), with one more proposal taken with
    /// the metrics' (the largest wins): a predicted replica count, say. It
    /// goes through the same stabilization, rate limits and bounds, so it
    /// can raise the decision but never lower it below the metrics'.
    ///
    /// # Errors
    ///
    /// As [`recommend`](Self::recommend).
    pub fn recommend_with_floor(
        &mut self,
        now: Instant,
        input: &ScaleInput,
        extra: Option<u32>,
    ) -> Result<ScaleDecision> {
        let span = tracing::debug_span!(
            "atlas.autoscale.recommend",
            current = input.current_replicas,
            extra = extra
        );
        let _entered = span.enter();
        if input.observations.len() != self.policy.metrics.len() {
            return Err(Error::invalid(
                "observations",
                format!(
                    "must hold one observation per metric ({}), got {}",
                    self.policy.metrics.len(),
                    input.observations.len()
                ),
            ));
        }
        let current = input.current_replicas;
        let proposals: Vec<MetricProposal> = self
            .policy
            .metrics
            .iter()
            .zip(&input.observations)
            .map(|(m, o)| metric_replicas(m, o, &input.pods, current, self.policy.tolerance))
            .collect();
        let decision = |desired, recommended, reason, proposals| ScaleDecision {
            current_replicas: current,
            desired_replicas: desired,
            recommended_replicas: recommended,
            reason,
            proposals,
        };
        let (min, max) = (self.policy.min_replicas, self.policy.max_replicas);
        // Out of bounds (or scaled to zero by hand), the count goes straight
        // to the bound, without recommendation or rate limit.
        if current == 0 {
            return Ok(decision(0, None, ScaleReason::ScaledToZero, proposals));
        }
        if current > max {
            return Ok(decision(max, None, ScaleReason::TooManyReplicas, proposals));
        }
        if current < min {
            return Ok(decision(min, None, ScaleReason::TooFewReplicas, proposals));
        }
        let valid = proposals.iter().filter_map(MetricProposal::replicas);
        let metric_max = valid.clone().max();
        let invalid = proposals.len() - valid.count();
        let recommended = match (metric_max, extra) {
            (Some(m), Some(e)) => Some(m.max(e)),
            (m, e) => m.or(e),
        };
        let Some(recommended) = recommended else {
            tracing::warn!("no metric gave a replica count; keeping the count");
            return Ok(decision(
                current,
                None,
                ScaleReason::MetricsUnavailable,
                proposals,
            ));
        };
        if invalid > 0 && recommended < current {
            // A metric that cannot be read might be the one asking for more.
            tracing::warn!(invalid, "a metric failed; not scaling down");
            return Ok(decision(
                current,
                Some(recommended),
                ScaleReason::MetricsUnavailable,
                proposals,
            ));
        }
        let (stabilized, stabilize_reason) = self.stabilize(now, current, recommended);
        let (desired, limit_reason) = self.limit_rate(now, current, stabilized);
        let reason = limit_reason
            .or(stabilize_reason)
            .unwrap_or(ScaleReason::DesiredWithinRange);
        tracing::debug!(
            recommended,
            stabilized,
            desired,
            ?reason,
            "autoscaler decided"
        );
        Ok(decision(desired, Some(recommended), reason, proposals))
    }

    /// Remembers that the count went from `from` to `to` at `now`, for the
    /// rate policies. Call it after applying a decision that changes the
    /// count.
    pub fn record_scale(&mut self, now: Instant, from: u32, to: u32) {
        let keep_for = self
            .policy
            .behavior
            .scale_up
            .longest_period()
            .max(self.policy.behavior.scale_down.longest_period());
        for events in [&mut self.scale_ups, &mut self.scale_downs] {
            events.retain(|e| after(e.at, now, keep_for));
        }
        if to > from {
            self.scale_ups.push(Stamped {
                at: now,
                replicas: to - from,
            });
        } else if to < from {
            self.scale_downs.push(Stamped {
                at: now,
                replicas: from - to,
            });
        }
        tracing::debug!(from, to, "scale change recorded");
    }

    /// The stabilization windows: the result lies between the lowest
    /// recommendation of the scale-up window and the highest of the
    /// scale-down window, as close to the current count as that allows.
    fn stabilize(
        &mut self,
        now: Instant,
        current: u32,
        recommended: u32,
    ) -> (u32, Option<ScaleReason>) {
        let up_window = self.policy.behavior.scale_up.stabilization_window;
        let down_window = self.policy.behavior.scale_down.stabilization_window;
        let mut up = recommended;
        let mut down = recommended;
        for r in &self.recommendations {
            if after(r.at, now, up_window) {
                up = up.min(r.replicas);
            }
            if after(r.at, now, down_window) {
                down = down.max(r.replicas);
            }
        }
        let keep_for = up_window.max(down_window);
        self.recommendations.retain(|r| after(r.at, now, keep_for));
        self.recommendations.push(Stamped {
            at: now,
            replicas: recommended,
        });
        let stabilized = current.max(up).min(down);
        let reason = if stabilized > recommended {
            Some(ScaleReason::ScaleDownStabilized)
        } else if stabilized < recommended {
            Some(ScaleReason::ScaleUpStabilized)
        } else {
            None
        };
        (stabilized, reason)
    }

    /// The rate policies and the bounds.
    fn limit_rate(&self, now: Instant, current: u32, desired: u32) -> (u32, Option<ScaleReason>) {
        let (min, max) = (self.policy.min_replicas, self.policy.max_replicas);
        if desired > current {
            let limit = self
                .period_limit(now, current, &self.policy.behavior.scale_up, true)
                .max(current);
            let (allowed, reason) = if max > limit {
                (limit, ScaleReason::ScaleUpLimit)
            } else {
                (max, ScaleReason::TooManyReplicas)
            };
            if desired > allowed {
                return (allowed, Some(reason));
            }
        } else if desired < current {
            let limit = self
                .period_limit(now, current, &self.policy.behavior.scale_down, false)
                .min(current);
            let (allowed, reason) = if min < limit {
                (limit, ScaleReason::ScaleDownLimit)
            } else {
                (min, ScaleReason::TooFewReplicas)
            };
            if desired < allowed {
                return (allowed, Some(reason));
            }
        }
        (desired, None)
    }

    /// The furthest the count may go in one direction now: each policy
    /// counts from the replicas at the start of its period
    /// (`current − added + removed` within it), and `select` picks among
    /// them.
    fn period_limit(&self, now: Instant, current: u32, rules: &ScalingRules, up: bool) -> u32 {
        if rules.select == SelectPolicy::Disabled {
            return current;
        }
        let proposals = rules.policies.iter().map(|policy| {
            let added = changed_within(&self.scale_ups, now, policy.period);
            let removed = changed_within(&self.scale_downs, now, policy.period);
            let start = (i64::from(current) - added + removed).max(0) as f64;
            let value = f64::from(policy.value);
            let proposed = match (policy.kind, up) {
                (RatePolicyKind::Pods, true) => start + value,
                (RatePolicyKind::Percent, true) => (start * (1.0 + value / 100.0)).ceil(),
                (RatePolicyKind::Pods, false) => start - value,
                (RatePolicyKind::Percent, false) => (start * (1.0 - value / 100.0)).floor(),
            };
            proposed.clamp(0.0, f64::from(u32::MAX)) as u32
        });
        // Max means the largest change: the highest count going up, the
        // lowest going down.
        let largest_change = (rules.select == SelectPolicy::Max) == up;
        let chosen = if largest_change {
            proposals.max()
        } else {
            proposals.min()
        };
        chosen.unwrap_or(current)
    }
}

/// Whether `at` lies strictly inside the `window` before `now`.
fn after(at: Instant, now: Instant, window: Duration) -> bool {
    match now.checked_sub(window) {
        Some(cutoff) => at > cutoff,
        None => true,
    }
}

fn changed_within(events: &[Stamped], now: Instant, period: Duration) -> i64 {
    events
        .iter()
        .filter(|e| after(e.at, now, period))
        .map(|e| i64::from(e.replicas))
        .sum()
}
