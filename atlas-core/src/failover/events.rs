//! [`FailoverEvent`]: every decision and action of a failover controller,
//! typed, with the timings that measure the recovery time.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::database::{Fence, Promotion};
use crate::domain::ServiceName;
use crate::region::{RegionName, RegionWeights};

/// Something a failover controller decided or did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// The service.
    pub service: ServiceName,
    /// When (wall clock).
    pub at: SystemTime,
    /// What.
    pub kind: FailoverEventKind,
}

/// What happened. Durations named `after` count from the moment the
/// controller decided the change (for a change resumed from the store: from
/// the moment the resuming controller took it over), so
/// `detected_after` + `TrafficMoved.after` is the traffic's recovery time
/// and `detected_after` + `DatabasePromoted.after` the database's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailoverEventKind {
    /// The controller took the lease and began watching.
    Started {
        /// A state was found in the store (a restart or a takeover).
        resumed: bool,
        /// The weights in force.
        weights: RegionWeights,
        /// An unfinished change was found and is being finished.
        unfinished: bool,
    },
    /// A trigger fired.
    TriggerFired {
        /// The region, or `None` for the database trigger.
        region: Option<RegionName>,
        /// Which trigger, in words.
        trigger: String,
        /// From the first failing check of the streak to the firing.
        detected_after: Duration,
    },
    /// A rollout of the service was unfinished when a change began; its
    /// engine aborts it at its next check.
    RolloutInterrupted {
        /// The rollout's id.
        rollout: String,
    },
    /// A standby region takes traffic now.
    StandbyActivated {
        /// The region.
        region: RegionName,
    },
    /// The healthy regions cannot take all traffic even with every standby.
    CapacityShort {
        /// By how much, in percent of traffic.
        short_by: u8,
    },
    /// The region router applied new weights.
    TrafficMoved {
        /// The weights in force.
        weights: RegionWeights,
        /// Since the change was decided.
        after: Duration,
    },
    /// The old primary database was fenced.
    DatabaseFenced {
        /// The fence.
        fence: Fence,
        /// Since the change was decided.
        after: Duration,
        /// How far the standby trailed just before the fence, as
        /// [`DatabaseFailover::replication`](crate::database::DatabaseFailover::replication)
        /// estimated it: the recovery point (the writes a promotion may
        /// lose). `None` when unknown.
        replication_lag: Option<Duration>,
        /// Replication was synchronous: no acknowledged write is lost.
        synchronous: bool,
    },
    /// The standby database was promoted and takes writes.
    DatabasePromoted {
        /// The promotion.
        promotion: Promotion,
        /// Since the change was decided.
        after: Duration,
    },
    /// A failover finished: traffic moved and, if it was part of it, the
    /// database switched.
    FailoverDone {
        /// Since the change was decided.
        after: Duration,
    },
    /// A trigger fired but no failover is possible (no region left to take
    /// traffic). Sent once per distinct reason.
    FailoverBlocked {
        /// Why.
        reason: String,
    },
    /// A failed region passed enough checks in a row to count as
    /// recovered (sent again if it fails a check and recovers again).
    RegionRecovered {
        /// The region.
        region: RegionName,
    },
    /// Traffic goes back to recovered regions.
    FailbackStarted {
        /// The regions.
        regions: Vec<RegionName>,
        /// Automatic after a healthy period, or manual.
        reason: String,
    },
    /// A failback finished.
    FailbackDone {
        /// The weights in force.
        weights: RegionWeights,
        /// Since the failback was decided.
        after: Duration,
    },
    /// An action failed; the controller tries it again at its next check.
    ActionFailed {
        /// Which action: `set region weights`, `fence primary`, …
        action: String,
        /// The error.
        error: String,
    },
}

/// The `tracing` event of one failover event, in the caller's span.
pub(super) fn trace(service: &ServiceName, kind: &FailoverEventKind) {
    use FailoverEventKind as K;
    match kind {
        K::Started {
            resumed,
            weights,
            unfinished,
        } => {
            tracing::info!(%service, resumed, unfinished, %weights, "failover controller started")
        }
        K::TriggerFired {
            region,
            trigger,
            detected_after,
        } => {
            let region = region.as_ref().map_or("database", RegionName::as_str);
            tracing::warn!(%service, region, trigger, detected_after = ?detected_after, "failover trigger fired")
        }
        K::RolloutInterrupted { rollout } => {
            tracing::warn!(%service, rollout, "rollout interrupted by a failover")
        }
        K::StandbyActivated { region } => {
            tracing::warn!(%service, %region, "standby region activated")
        }
        K::CapacityShort { short_by } => {
            tracing::error!(%service, short_by, "healthy regions are short of capacity")
        }
        K::TrafficMoved { weights, after } => {
            tracing::warn!(%service, %weights, after = ?after, "region traffic moved")
        }
        K::DatabaseFenced {
            fence,
            after,
            replication_lag,
            synchronous,
        } => {
            tracing::warn!(%service, node = %fence.node, method = %fence.method, after = ?after, replication_lag = ?replication_lag, synchronous, "old primary fenced")
        }
        K::DatabasePromoted { promotion, after } => {
            tracing::warn!(%service, node = %promotion.node, timeline = promotion.timeline, writable = promotion.writable, after = ?after, "standby promoted")
        }
        K::FailoverDone { after } => tracing::warn!(%service, after = ?after, "failover done"),
        K::FailoverBlocked { reason } => {
            tracing::error!(%service, reason, "failover impossible")
        }
        K::RegionRecovered { region } => tracing::info!(%service, %region, "region recovered"),
        K::FailbackStarted { regions, reason } => {
            tracing::info!(%service, ?regions, reason, "failback started")
        }
        K::FailbackDone { weights, after } => {
            tracing::info!(%service, %weights, after = ?after, "failback done")
        }
        K::ActionFailed { action, error } => {
            tracing::warn!(%service, action, error, "failover action failed; retrying at the next check")
        }
    }
}
