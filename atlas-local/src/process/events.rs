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
    /// What happened; in JSON, its `kind` tag and fields sit beside the
    /// others (`{"service": …, "kind": "exited", "status": …}`).
    #[serde(flatten)]
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
        /// The backoff before the restart (`after_ms`, whole
        /// milliseconds, in JSON).
        #[serde(rename = "after_ms", with = "millis")]
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

/// A [`Duration`] as whole milliseconds, for JSON readers.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_flat_in_json() {
        let event = ReplicaEvent {
            service: ServiceName::new("checkout").unwrap(),
            slot: Slot::Green,
            index: 1,
            pid: 42,
            kind: ReplicaEventKind::RestartScheduled {
                attempt: 3,
                after: Duration::from_millis(4000),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "service": "checkout", "slot": "green", "index": 1, "pid": 42,
                "kind": "restart_scheduled", "attempt": 3, "after_ms": 4000
            })
        );
        assert_eq!(serde_json::from_value::<ReplicaEvent>(json).unwrap(), event);
        assert_eq!(event.replica(), "checkout-green-1");
    }
}
