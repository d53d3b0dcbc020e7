//! Autoscaling: the Kubernetes HPA's algorithm, exactly, as pure logic.
//!
//! - [`HorizontalPolicy`] holds the settings: bounds, tolerance, metrics
//!   (Resource utilization, Pods average value, Object and External value
//!   or average value) and the [`Behavior`] (stabilization windows and rate
//!   policies); [`HorizontalPolicy::web_service`] is Atlas's policy for a
//!   web service.
//! - [`HorizontalAutoscaler`] decides the replica count from a
//!   [`ScaleInput`] (current replicas, pods with readiness and requests,
//!   one [`MetricObservation`] per metric) and keeps the history the
//!   stabilization windows and rate policies need.
//! - [`PredictiveAutoscaler`] adds replicas ahead of a forecast load (any
//!   [`Forecaster`]), with the reactive decision as its floor.
//! - [`VerticalRecommender`] recommends CPU and memory requests from usage,
//!   as the Kubernetes VPA's recommender does.
//! - [`observe`] reads a policy's metrics through any
//!   [`MetricProvider`](crate::MetricProvider).
//!
//! Nothing here does I/O or keeps a clock: every call takes the time, so a
//! simulator can replay a week in a second.

mod hpa;
pub mod observe;
mod policy;
mod predictive;
mod replicas;
mod vpa;

pub use hpa::{HorizontalAutoscaler, ScaleDecision, ScaleInput, ScaleReason};
pub use policy::{
    Behavior, DEFAULT_SCALE_DOWN_WINDOW, DEFAULT_TOLERANCE, HorizontalPolicy, MAX_POLICY_PERIOD,
    MAX_STABILIZATION_WINDOW, MetricSource, MetricSpec, MetricTarget, RatePolicy, RatePolicyKind,
    ScalingRules, SelectPolicy,
};
pub use predictive::{
    Forecaster, PredictiveAutoscaler, PredictiveDecision, PredictivePolicy, SeasonalNaive,
};
pub use replicas::{MetricObservation, MetricOutcome, MetricProposal, PodState, metric_replicas};
pub use vpa::{
    DecayingHistogram, ResourceRecommendation, ResourceRequirements, VerticalPolicy,
    VerticalRecommendation, VerticalRecommender,
};
