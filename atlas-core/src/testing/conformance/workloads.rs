//! Conformance checks for [`Workloads`] adapters.
//!
//! The adapter runs real replicas, so the caller says what to run: a
//! [`WorkloadsFixture`] holds two releases of a service that becomes ready
//! on the caller's platform, and how long readiness may take. Every check
//! scales the slots it used back to 0 when it passes.
//!
//! ```
//! # use atlas_core::Release;
//! # use atlas_core::testing::{conformance, MockWorkloads};
//! # use atlas_core::testing::conformance::workloads::WorkloadsFixture;
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let fixture = WorkloadsFixture::new(Release::new("v1", "app:v1"), Release::new("v2", "app:v2"));
//! conformance::workloads::all(&MockWorkloads::new(), &fixture, "workloads-doc").await;
//! # });
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use super::unique_service;
use crate::domain::{Release, ServiceName, Slot, SlotStatus};
use crate::error::ErrorKind;
use crate::workloads::Workloads;

/// What the workloads checks run, and how long they wait.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadsFixture {
    /// A release that becomes ready on the platform.
    pub first: Release,
    /// Another release of it, with a different version.
    pub second: Release,
    /// Longest wait for replicas to become ready or stop. Default 60 s.
    pub ready_timeout: Duration,
    /// Time between status polls while waiting. Default 100 ms.
    pub poll_interval: Duration,
}

impl WorkloadsFixture {
    /// A fixture with the default timeout and poll interval.
    pub fn new(first: Release, second: Release) -> Self {
        WorkloadsFixture {
            first,
            second,
            ready_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
        }
    }

    /// Sets the readiness timeout.
    pub fn with_ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Sets the poll interval.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// Runs every workloads check, each on a fresh service named from `prefix`.
///
/// # Panics
///
/// If the fixture's two releases share a version, or any check fails.
pub async fn all(workloads: &dyn Workloads, fixture: &WorkloadsFixture, prefix: &str) {
    assert_ne!(
        fixture.first.version, fixture.second.version,
        "the fixture's two releases need different versions"
    );
    let w = workloads;
    untouched_slot_is_empty(w, &unique_service(prefix)).await;
    scaling_an_empty_slot_is_not_found(w, &unique_service(prefix)).await;
    deploy_becomes_ready(w, fixture, &unique_service(prefix)).await;
    deploy_is_idempotent(w, fixture, &unique_service(prefix)).await;
    scale_up_and_down(w, fixture, &unique_service(prefix)).await;
    scale_down_stops_last_replicas_first(w, fixture, &unique_service(prefix)).await;
    scale_to_zero_keeps_the_release(w, fixture, &unique_service(prefix)).await;
    slots_are_independent(w, fixture, &unique_service(prefix)).await;
    redeploy_changes_the_version(w, fixture, &unique_service(prefix)).await;
}

/// Both slots of a service never deployed report [`SlotStatus::empty`].
pub async fn untouched_slot_is_empty(workloads: &dyn Workloads, service: &ServiceName) {
    for slot in [Slot::Blue, Slot::Green] {
        assert_eq!(
            status(workloads, service, slot).await,
            SlotStatus::empty(slot),
            "status of the untouched {slot} slot of {service} must be SlotStatus::empty"
        );
    }
}

/// Scaling a slot that runs nothing is `NotFound`, unless to 0 replicas,
/// which succeeds and leaves the slot empty.
pub async fn scaling_an_empty_slot_is_not_found(workloads: &dyn Workloads, service: &ServiceName) {
    match workloads.scale(service, Slot::Blue, 2).await {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::NotFound,
            "scaling the empty blue slot of {service} to 2 must be NotFound, got {e}"
        ),
        Ok(()) => panic!("scaling the empty blue slot of {service} to 2 must be NotFound, got Ok"),
    }
    if let Err(e) = workloads.scale(service, Slot::Blue, 0).await {
        panic!("scaling the empty blue slot of {service} to 0 must succeed, got {e}");
    }
    assert_eq!(
        status(workloads, service, Slot::Blue).await,
        SlotStatus::empty(Slot::Blue),
        "scaling an empty slot to 0 must leave it empty"
    );
}

/// After a deploy, status shows the version at once, and eventually all
/// replicas desired, updated and ready, with one distinct endpoint each.
pub async fn deploy_becomes_ready(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Green, &fixture.first, 2).await;
    let s = status(workloads, service, Slot::Green).await;
    assert_eq!(
        s.version.as_deref(),
        Some(fixture.first.version.as_str()),
        "status must report the deployed version as soon as deploy returns"
    );
    assert_eq!(
        s.desired, 2,
        "status must report 2 desired replicas right after deploy"
    );
    let s = await_ready(workloads, fixture, service, Slot::Green, 2).await;
    assert_eq!(s.slot, Slot::Green, "status must name the slot asked about");
    assert!(
        s.failures.is_empty(),
        "no replica should fail: {:?}",
        s.failures
    );
    let distinct: BTreeSet<_> = s.endpoints.iter().map(|e| e.addr).collect();
    assert_eq!(
        distinct.len(),
        2,
        "each replica needs its own address: {:?}",
        s.endpoints
    );
    let names: BTreeSet<_> = s.endpoints.iter().map(|e| &e.replica).collect();
    assert_eq!(
        names.len(),
        2,
        "each replica needs its own name: {:?}",
        s.endpoints
    );
    cleanup(workloads, service).await;
}

/// Deploying the same release twice is the same as once: the replicas keep
/// running (same endpoints) and the counts do not change.
pub async fn deploy_is_idempotent(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Blue, &fixture.first, 2).await;
    let before = await_ready(workloads, fixture, service, Slot::Blue, 2).await;
    deploy(workloads, service, Slot::Blue, &fixture.first, 2).await;
    let after = await_ready(workloads, fixture, service, Slot::Blue, 2).await;
    assert_eq!(
        after.endpoints, before.endpoints,
        "deploying the same release again must keep the running replicas"
    );
    assert_eq!(after, before, "a repeated deploy must change nothing");
    cleanup(workloads, service).await;
}

/// Scaling up adds replicas and keeps the running ones; scaling down
/// reaches the new count.
pub async fn scale_up_and_down(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Blue, &fixture.first, 1).await;
    let one = await_ready(workloads, fixture, service, Slot::Blue, 1).await;
    scale(workloads, service, Slot::Blue, 3).await;
    let three = await_ready(workloads, fixture, service, Slot::Blue, 3).await;
    assert_eq!(
        three.version.as_deref(),
        Some(fixture.first.version.as_str()),
        "scaling must keep the release"
    );
    assert!(
        three.endpoints.contains(&one.endpoints[0]),
        "scaling up must keep the running replica {} (now {:?})",
        one.endpoints[0],
        three.endpoints
    );
    scale(workloads, service, Slot::Blue, 2).await;
    let two = await_ready(workloads, fixture, service, Slot::Blue, 2).await;
    assert!(
        two.endpoints.iter().all(|e| three.endpoints.contains(e)),
        "scaling down must only stop replicas, not start new ones: {:?} -> {:?}",
        three.endpoints,
        two.endpoints
    );
    cleanup(workloads, service).await;
}

/// Scaling down stops the replicas listed last first: the endpoints left
/// are a prefix of those before. For adapters that can choose which
/// replicas stop (the contract of [`Workloads::scale`]).
pub async fn scale_down_stops_last_replicas_first(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Green, &fixture.first, 4).await;
    let four = await_ready(workloads, fixture, service, Slot::Green, 4).await;
    scale(workloads, service, Slot::Green, 2).await;
    let two = await_ready(workloads, fixture, service, Slot::Green, 2).await;
    assert_eq!(
        two.endpoints,
        four.endpoints[..2],
        "scaling 4 -> 2 must stop the last two endpoints listed"
    );
    cleanup(workloads, service).await;
}

/// Scaling to 0 stops every replica and keeps the release recorded, and
/// the slot can be scaled up again from there.
pub async fn scale_to_zero_keeps_the_release(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Blue, &fixture.first, 2).await;
    await_ready(workloads, fixture, service, Slot::Blue, 2).await;
    scale(workloads, service, Slot::Blue, 0).await;
    let zero = await_ready(workloads, fixture, service, Slot::Blue, 0).await;
    assert_eq!(
        zero.version.as_deref(),
        Some(fixture.first.version.as_str()),
        "scaling to 0 must keep the release recorded"
    );
    assert_eq!(
        (zero.updated, zero.ready),
        (0, 0),
        "no replica may run at 0"
    );
    scale(workloads, service, Slot::Blue, 1).await;
    let one = await_ready(workloads, fixture, service, Slot::Blue, 1).await;
    assert_eq!(
        one.version.as_deref(),
        Some(fixture.first.version.as_str()),
        "scaling up from 0 must run the recorded release"
    );
    cleanup(workloads, service).await;
}

/// The two slots are independent: different releases and counts, and
/// scaling one leaves the other alone.
pub async fn slots_are_independent(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Blue, &fixture.first, 1).await;
    deploy(workloads, service, Slot::Green, &fixture.second, 2).await;
    let blue = await_ready(workloads, fixture, service, Slot::Blue, 1).await;
    let green = await_ready(workloads, fixture, service, Slot::Green, 2).await;
    assert_eq!(
        blue.version.as_deref(),
        Some(fixture.first.version.as_str())
    );
    assert_eq!(
        green.version.as_deref(),
        Some(fixture.second.version.as_str()),
        "deploying green must not change what blue runs, nor the other way"
    );
    assert!(
        blue.endpoints.iter().all(|e| !green.endpoints.contains(e)),
        "the slots must not share endpoints: {:?} / {:?}",
        blue.endpoints,
        green.endpoints
    );
    scale(workloads, service, Slot::Green, 0).await;
    await_ready(workloads, fixture, service, Slot::Green, 0).await;
    assert_eq!(
        status(workloads, service, Slot::Blue).await,
        blue,
        "scaling green to 0 must leave blue as it was"
    );
    cleanup(workloads, service).await;
}

/// Deploying another release to a slot replaces the old one: status
/// reports the new version at once and becomes ready with it.
pub async fn redeploy_changes_the_version(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    deploy(workloads, service, Slot::Green, &fixture.first, 2).await;
    await_ready(workloads, fixture, service, Slot::Green, 2).await;
    deploy(workloads, service, Slot::Green, &fixture.second, 2).await;
    assert_eq!(
        status(workloads, service, Slot::Green)
            .await
            .version
            .as_deref(),
        Some(fixture.second.version.as_str()),
        "status must report the new version as soon as the redeploy returns"
    );
    let s = await_ready(workloads, fixture, service, Slot::Green, 2).await;
    assert_eq!(s.version.as_deref(), Some(fixture.second.version.as_str()));
    cleanup(workloads, service).await;
}

async fn deploy(
    workloads: &dyn Workloads,
    service: &ServiceName,
    slot: Slot,
    release: &Release,
    replicas: u32,
) {
    if let Err(e) = workloads.deploy(service, slot, release, replicas).await {
        panic!(
            "deploy({service}, {slot}, {}, {replicas}) failed: {e}",
            release.version
        );
    }
}

async fn scale(workloads: &dyn Workloads, service: &ServiceName, slot: Slot, replicas: u32) {
    if let Err(e) = workloads.scale(service, slot, replicas).await {
        panic!("scale({service}, {slot}, {replicas}) failed: {e}");
    }
}

async fn status(workloads: &dyn Workloads, service: &ServiceName, slot: Slot) -> SlotStatus {
    workloads
        .status(service, slot)
        .await
        .unwrap_or_else(|e| panic!("status({service}, {slot}) failed: {e}"))
}

/// Polls until `slot` has exactly `replicas` desired, updated and ready,
/// with as many endpoints, within the fixture's timeout.
async fn await_ready(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
) -> SlotStatus {
    let deadline = tokio::time::Instant::now() + fixture.ready_timeout;
    loop {
        let s = status(workloads, service, slot).await;
        assert!(
            s.failures.is_empty(),
            "{service} {slot}: replicas failed while waiting for {replicas} ready: {:?}",
            s.failures
        );
        if s.desired == replicas && s.is_ready() && s.endpoints.len() == replicas as usize {
            return s;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{service} {slot}: not {replicas} ready within {}: desired {}, updated {}, ready {}, {} endpoints",
                humantime::format_duration(fixture.ready_timeout),
                s.desired,
                s.updated,
                s.ready,
                s.endpoints.len()
            );
        }
        tokio::time::sleep(fixture.poll_interval).await;
    }
}

/// Stops what a passing check started. Errors are ignored: the check has
/// already passed, and the service name is never used again.
async fn cleanup(workloads: &dyn Workloads, service: &ServiceName) {
    for slot in [Slot::Blue, Slot::Green] {
        if let Err(e) = workloads.scale(service, slot, 0).await {
            tracing::debug!(%service, %slot, error = %e, "conformance cleanup: scale to 0 failed");
        }
    }
}
