//! Reading a slot's state from its Deployment and EndpointSlices.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use atlas_core::{Endpoint, Error, Slot, SlotStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::manifest::ANNOTATION_VERSION;

/// The reason the Deployment controller puts on the `Progressing`
/// condition when a rollout made no progress within
/// `progressDeadlineSeconds`.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// The Deployment controller's default `progressDeadlineSeconds`.
const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// Whether the Deployment controller has seen the latest spec; until it
/// has, the status counts describe an older spec.
pub(crate) fn observed(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    let observed = d
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    observed >= generation
}

fn count(n: Option<i32>) -> u32 {
    u32::try_from(n.unwrap_or(0)).unwrap_or(0)
}

/// The desired replica count of a Deployment (Kubernetes defaults it to 1).
pub(crate) fn desired(d: &Deployment) -> u32 {
    count(Some(d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)))
}

/// The `ProgressDeadlineExceeded` failure of the latest spec, if the
/// controller reported one: its message and the deadline it had.
pub(crate) fn progress_deadline_exceeded(d: &Deployment) -> Option<(String, Duration)> {
    if !observed(d) {
        return None;
    }
    let cond = d
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")?;
    (cond.status == "False" && cond.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)).then(
        || {
            let deadline = d
                .spec
                .as_ref()
                .and_then(|s| s.progress_deadline_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(DEFAULT_PROGRESS_DEADLINE, Duration::from_secs);
            (cond.message.clone().unwrap_or_default(), deadline)
        },
    )
}

/// The typed error a `ProgressDeadlineExceeded` becomes: a
/// [`Error::Deadline`] naming the Deployment, the reason and the
/// controller's message, with the Deployment's own progress deadline.
pub(crate) fn progress_error(namespace: &str, name: &str, message: &str, after: Duration) -> Error {
    Error::deadline(
        format!("Deployment {namespace}/{name} progress ({PROGRESS_DEADLINE_EXCEEDED}: {message})"),
        after,
    )
}

/// Whether every desired replica of the latest spec is updated, ready and
/// available, and no replica of an older spec is left.
pub(crate) fn rolled_out(d: &Deployment) -> bool {
    let Some(s) = d.status.as_ref() else {
        return desired(d) == 0 && observed(d);
    };
    let want = desired(d);
    observed(d)
        && count(s.updated_replicas) == want
        && count(s.ready_replicas) == want
        && count(s.available_replicas) == want
        && count(s.replicas) == want
}

/// A slot's status from its Deployment and the EndpointSlices of its
/// Service. `port_name` picks the port of multi-port slices.
pub(crate) fn slot_status(
    slot: Slot,
    namespace: &str,
    d: &Deployment,
    slices: &[EndpointSlice],
    port_name: &str,
) -> SlotStatus {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let version = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_VERSION))
        .cloned();
    let mut failures = Vec::new();
    let (updated, ready) = match (&d.status, observed(d)) {
        // Counts about an older spec say nothing about this one.
        (Some(s), true) => (count(s.updated_replicas), count(s.ready_replicas)),
        _ => (0, 0),
    };
    if let Some((message, after)) = progress_deadline_exceeded(d) {
        failures.push(progress_error(namespace, name, &message, after).to_string());
    }
    if observed(d) {
        for c in d.status.iter().flat_map(|s| s.conditions.iter().flatten()) {
            if c.type_ == "ReplicaFailure" && c.status == "True" {
                failures.push(format!(
                    "Deployment {namespace}/{name}: ReplicaFailure ({}: {})",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    SlotStatus {
        slot,
        version,
        desired: desired(d),
        updated,
        ready,
        endpoints: ready_endpoints(slices, port_name),
        failures,
    }
}

/// The ready, not terminating endpoints of `slices`, one per replica,
/// ordered by replica (pod) name so the order is stable across calls.
pub(crate) fn ready_endpoints(slices: &[EndpointSlice], port_name: &str) -> Vec<Endpoint> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for slice in slices {
        let ports = slice.ports.iter().flatten();
        let port = ports
            .clone()
            .find(|p| p.name.as_deref() == Some(port_name))
            .or_else(|| ports.clone().find(|p| p.port.is_some()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else {
            tracing::debug!(slice = ?slice.metadata.name, "EndpointSlice without a port: skipped");
            continue;
        };
        for e in &slice.endpoints {
            let cond = e.conditions.as_ref();
            // A missing `ready` means ready; terminating endpoints are
            // on their way out even when still ready.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let replica = e
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| e.hostname.clone())
                .unwrap_or_else(|| ip.to_string());
            if seen.insert(replica.clone()) {
                out.push(Endpoint::new(replica, SocketAddr::new(ip, port)));
            }
        }
    }
    out.sort();
    out
}

/// The pod names behind endpoints, for the deletion-cost annotation.
pub(crate) fn pod_names(slices: &[EndpointSlice]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
        .filter_map(|r| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "shop-green", "generation": generation,
                         "annotations": {"atlas.dev/version": "v2"}},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn counts_of_an_older_spec_are_not_reported() {
        let d = deployment(
            3,
            json!({"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 2}),
        );
        let s = slot_status(Slot::Green, "ns", &d, &[], "http");
        assert_eq!((s.desired, s.updated, s.ready), (2, 0, 0));
        assert_eq!(s.version.as_deref(), Some("v2"));
        let d = deployment(
            3,
            json!({"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 1}),
        );
        let s = slot_status(Slot::Green, "ns", &d, &[], "http");
        assert_eq!((s.updated, s.ready), (2, 1));
    }

    #[test]
    fn progress_deadline_exceeded_is_a_failure_naming_the_deployment() {
        let d = deployment(
            1,
            json!({"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False",
                   "reason": "ProgressDeadlineExceeded", "message": "timed out"}]}),
        );
        let s = slot_status(Slot::Green, "ns", &d, &[], "http");
        assert_eq!(s.failures.len(), 1, "{:?}", s.failures);
        assert!(
            s.failures[0].contains("Deployment ns/shop-green"),
            "{:?}",
            s.failures
        );
        assert!(
            s.failures[0].contains("ProgressDeadlineExceeded: timed out"),
            "{:?}",
            s.failures
        );
        assert!(!rolled_out(&d));
    }

    #[test]
    fn only_ready_serving_endpoints_count_once_each() {
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {}, "addressType": "IPv4",
             "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}],
             "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "b"}},
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "c"}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true, "terminating": true}, "targetRef": {"kind": "Pod", "name": "d"}},
             ]},
            {"metadata": {}, "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
             "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "b"}}]},
        ]))
        .unwrap();
        let got: Vec<String> = ready_endpoints(&slices, "http")
            .iter()
            .map(|e| format!("{} {}", e.replica, e.addr))
            .collect();
        assert_eq!(got, ["a 10.0.0.1:8080", "b 10.0.0.2:8080"]);
    }
}
