//! What happens to replicas, as events for a supervisor to follow.

use std::time::Duration;

use atlas_core::{ServiceName, Slot};
use serde::{Deserialize, Serialize};

/// One thing that happened to one replica. Sent to every
/// [`ProcessWorkloads::events`](super::ProcessWorkloads::events) receiver
/// and logged as a tracing event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEvent {
    /// The replica's service.
    pub service: ServiceName,
    /// The replica's slot.
    pub slot: Slot,
    /// The replica's index in the slot.
    pub index: u32,
    /// The process the event is about (for
    /// [`RestartScheduled`](ReplicaEventKind::RestartScheduled), the one
    /// that exited).
    pub pid: u32,
    /// What happened.
    pub kind: ReplicaEventKind,
}

impl ReplicaEvent {
    /// `{service}-{slot}-{index}`, the replica's name.
    pub fn replica(&self) -> String {
        format!("{}-{}-{}", self.service, self.slot, self.index)
    }
}

/// What happened to a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ReplicaEventKind {
    /// Its process started (first start, restart, or a fresh start during
    /// adoption).
    Started,
    /// It passed its readiness check.
    Ready,
    /// It exited on its own; `status` says how (`exited with status 3`,
    /// `was killed by signal SIGSEGV`, or that the status is unknown, as for
    /// an adopted replica, which is not our child).
    Exited {
        /// How it ended.
        status: String,
    },
    /// It will be restarted after `after`; `attempt` counts the exits in a
    /// row (1 for the first of a crash loop).
    RestartScheduled {
        /// Exits in a row, from 1.
        attempt: u32,
        /// The backoff before the restart.
        after: Duration,
    },
    /// A running process from an earlier owner was taken over.
    Adopted,
    /// Atlas stopped it (scale down, deploy, shutdown) and it is gone.
    Stopped,
    /// Its owner let go of it, leaving it running
    /// ([`release_all`](super::ProcessWorkloads::release_all)).
    Released,
}
