//! Typed rollout events, sent to subscribers and logged as `tracing` events.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisPhase, MeasurementRecord};
use crate::domain::{Endpoint, ServiceName, TrafficSplit};
use crate::strategy::Step;

/// Something that happened during a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// The service.
    pub service: ServiceName,
    /// The rollout's id.
    pub rollout: String,
    /// When.
    pub at: SystemTime,
    /// What.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A rollout began (or a resumed engine took it over).
    Started {
        /// The version being replaced, if any.
        from_version: Option<String>,
        /// The version being rolled out.
        to_version: String,
        /// Number of steps.
        steps: usize,
        /// True when a new engine resumed a rollout it found in the store.
        resumed: bool,
    },
    /// A step began.
    StepStarted {
        /// Step index.
        index: usize,
        /// Number of steps.
        total: usize,
        /// The step.
        step: Step,
    },
    /// A step finished.
    StepFinished {
        /// Step index.
        index: usize,
        /// The step.
        step: Step,
    },
    /// The router was given a new split.
    WeightChanged {
        /// The split now in force.
        split: TrafficSplit,
    },
    /// An endpoint passed or failed its probes.
    Probed {
        /// The endpoint.
        endpoint: Endpoint,
        /// Whether it became healthy.
        healthy: bool,
        /// Attempts made, or the failure.
        detail: String,
    },
    /// One analysis measurement.
    AnalysisMeasured {
        /// The template.
        template: String,
        /// The measurement.
        record: MeasurementRecord,
    },
    /// An analysis run finished.
    AnalysisFinished {
        /// The template.
        template: String,
        /// Its result.
        phase: AnalysisPhase,
        /// Which metric decided and why.
        message: String,
    },
    /// The rollout paused.
    Paused {
        /// Why: `manual`, `inconclusive analysis …`, `pause step`.
        reason: String,
    },
    /// The rollout resumed after a pause.
    Resumed,
    /// The rollout is being aborted; a rollback follows.
    Aborted {
        /// Why.
        reason: String,
    },
    /// Finished: the new release is stable.
    Promoted {
        /// The new stable version.
        version: String,
    },
    /// Finished: traffic is back on the old stable slot, the new slot is scaled down.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// A [`RolloutHook`](crate::hooks::RolloutHook) ran.
    HookRan {
        /// The hook's name.
        hook: String,
        /// Where in the rollout.
        point: crate::hooks::HookPoint,
        /// Its error, if it failed.
        error: Option<String>,
    },
}
