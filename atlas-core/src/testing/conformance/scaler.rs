//! Conformance checks for [`Scaler`] adapters whose router lists endpoints
//! one by one (local processes behind Atlas's proxy, the mock).
//!
//! The checks give the scaler a router that, at every
//! [`set_endpoints`](TrafficRouter::set_endpoints) call, reads the slot's
//! status from the adapter's [`Workloads`]: so they see whether each
//! endpoint was ready when the router started sending it requests, and
//! still running when the router stopped. The caller passes the adapter
//! twice (as `Scaler` and as `Workloads`) and a [`WorkloadsFixture`].
//!
//! ```
//! # use atlas_core::Release;
//! # use atlas_core::testing::{conformance, MockWorkloads};
//! # use atlas_core::testing::conformance::workloads::WorkloadsFixture;
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let mock = MockWorkloads::new();
//! let fixture = WorkloadsFixture::new(Release::new("v1", "app:v1"), Release::new("v2", "app:v2"));
//! conformance::scaler::all(&mock, &mock, &fixture, "scaler-doc").await;
//! # });
//! ```

use std::sync::Mutex;

use async_trait::async_trait;

use super::unique_service;
use super::workloads::WorkloadsFixture;
use crate::domain::{Endpoint, ServiceName, Slot, SlotStatus, TrafficSplit};
use crate::error::{ErrorKind, Result};
use crate::router::TrafficRouter;
use crate::scaler::Scaler;
use crate::workloads::Workloads;

/// Runs every scaler check, each on a fresh service named from `prefix`.
///
/// # Panics
///
/// If any check fails.
pub async fn all(
    scaler: &dyn Scaler,
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    prefix: &str,
) {
    scaling_an_empty_slot_is_not_found(scaler, &unique_service(prefix)).await;
    scale_up_lists_only_ready_replicas(scaler, workloads, fixture, &unique_service(prefix)).await;
    scale_down_drains_before_stopping(scaler, workloads, fixture, &unique_service(prefix)).await;
    same_count_changes_nothing(scaler, workloads, fixture, &unique_service(prefix)).await;
}

/// One `set_endpoints` call as the watching router saw it.
#[derive(Debug, Clone)]
struct Listing {
    endpoints: Vec<Endpoint>,
    /// The slot's status read when the call arrived.
    status: SlotStatus,
}

/// A router that records each endpoint listing with the slot's status at
/// that moment.
struct WatchingRouter<'a> {
    workloads: &'a dyn Workloads,
    listings: Mutex<Vec<Listing>>,
}

impl<'a> WatchingRouter<'a> {
    fn new(workloads: &'a dyn Workloads) -> Self {
        WatchingRouter {
            workloads,
            listings: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<Listing> {
        std::mem::take(&mut *self.listings.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl TrafficRouter for WatchingRouter<'_> {
    async fn set_split(&self, _: &ServiceName, _: &TrafficSplit) -> Result<()> {
        Ok(())
    }
    async fn split(&self, _: &ServiceName) -> Result<Option<TrafficSplit>> {
        Ok(None)
    }
    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        let status = self.workloads.status(service, slot).await?;
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Listing {
                endpoints: endpoints.to_vec(),
                status,
            });
        Ok(())
    }
}

/// Scaling a slot that runs nothing is `NotFound`, unless to zero.
pub async fn scaling_an_empty_slot_is_not_found(scaler: &dyn Scaler, service: &ServiceName) {
    let router = crate::testing::RecordingRouter::new();
    match scaler.scale_live(service, Slot::Blue, 2, &router).await {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::NotFound,
            "live-scaling the empty blue slot of {service} must be NotFound, got {e}"
        ),
        Ok(()) => panic!("live-scaling the empty blue slot of {service} must fail"),
    }
    if let Err(e) = scaler.scale_live(service, Slot::Blue, 0, &router).await {
        panic!("live-scaling the empty blue slot of {service} to 0 must succeed, got {e}");
    }
    let count = scaler
        .replica_count(service, Slot::Blue)
        .await
        .unwrap_or_else(|e| panic!("replica_count({service}, blue) failed: {e}"));
    assert_eq!(
        (count.desired, count.ready),
        (0, 0),
        "an empty slot has no replicas"
    );
}

/// Scaling up returns with every replica ready and listed, and the router
/// was never told of a replica before it was ready.
pub async fn scale_up_lists_only_ready_replicas(
    scaler: &dyn Scaler,
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    let first = serving(workloads, fixture, service, Slot::Green, 1).await;
    let router = WatchingRouter::new(workloads);
    scale(scaler, service, Slot::Green, 3, &router).await;
    let listings = router.take();
    let last = listings.last().unwrap_or_else(|| {
        panic!("scaling {service} green up must list the new replicas with the router")
    });
    assert_eq!(
        last.endpoints.len(),
        3,
        "all 3 replicas must be listed: {:?}",
        last.endpoints
    );
    assert!(
        last.endpoints.contains(&first[0]),
        "the replica that served before must stay listed: {:?}",
        last.endpoints
    );
    for l in &listings {
        for e in &l.endpoints {
            assert!(
                l.status.endpoints.contains(e),
                "{e} was listed with the router before it was ready (ready then: {:?})",
                l.status.endpoints
            );
        }
    }
    let count = scaler
        .replica_count(service, Slot::Green)
        .await
        .unwrap_or_else(|e| panic!("replica_count failed: {e}"));
    assert_eq!(
        (count.desired, count.ready),
        (3, 3),
        "scale_live must return once the new count is ready"
    );
    cleanup(workloads, service).await;
}

/// Scaling down takes the replicas that go out of the router while they
/// still run, keeps the first ones listed, and returns with the new count.
pub async fn scale_down_drains_before_stopping(
    scaler: &dyn Scaler,
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    let four = serving(workloads, fixture, service, Slot::Blue, 4).await;
    let router = WatchingRouter::new(workloads);
    scale(scaler, service, Slot::Blue, 2, &router).await;
    let listings = router.take();
    let drain = listings.first().unwrap_or_else(|| {
        panic!("scaling {service} blue down must take replicas out of the router first")
    });
    assert_eq!(
        drain.endpoints,
        four[..2],
        "the router must keep the first two replicas listed"
    );
    for gone in &four[2..] {
        assert!(
            drain.status.endpoints.contains(gone),
            "{gone} was stopped before the router stopped sending it requests"
        );
    }
    let after = workloads
        .status(service, Slot::Blue)
        .await
        .unwrap_or_else(|e| panic!("status failed: {e}"));
    assert_eq!(after.desired, 2, "scale_live must set the new count");
    cleanup(workloads, service).await;
}

/// Asking for the count the slot already has neither touches the router
/// nor changes a replica.
pub async fn same_count_changes_nothing(
    scaler: &dyn Scaler,
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
) {
    let before = serving(workloads, fixture, service, Slot::Green, 2).await;
    let router = WatchingRouter::new(workloads);
    scale(scaler, service, Slot::Green, 2, &router).await;
    assert!(
        router.take().is_empty(),
        "nothing to list when the count does not change"
    );
    let after = workloads
        .status(service, Slot::Green)
        .await
        .unwrap_or_else(|e| panic!("status failed: {e}"));
    assert_eq!(
        after.endpoints, before,
        "the same count must keep the same replicas"
    );
    cleanup(workloads, service).await;
}

async fn scale(
    scaler: &dyn Scaler,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
    router: &dyn TrafficRouter,
) {
    if let Err(e) = scaler.scale_live(service, slot, replicas, router).await {
        panic!("scale_live({service}, {slot}, {replicas}) failed: {e}");
    }
}

/// Deploys the fixture's first release with `replicas` and waits until all
/// are ready; their endpoints.
async fn serving(
    workloads: &dyn Workloads,
    fixture: &WorkloadsFixture,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
) -> Vec<Endpoint> {
    if let Err(e) = workloads
        .deploy(service, slot, &fixture.first, replicas)
        .await
    {
        panic!("deploy({service}, {slot}) failed: {e}");
    }
    let deadline = tokio::time::Instant::now() + fixture.ready_timeout;
    loop {
        let s = workloads
            .status(service, slot)
            .await
            .unwrap_or_else(|e| panic!("status({service}, {slot}) failed: {e}"));
        if s.desired == replicas && s.is_ready() && s.endpoints.len() == replicas as usize {
            return s.endpoints;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} {slot}: not {replicas} ready in time"
        );
        tokio::time::sleep(fixture.poll_interval).await;
    }
}

async fn cleanup(workloads: &dyn Workloads, service: &ServiceName) {
    for slot in [Slot::Blue, Slot::Green] {
        if let Err(e) = workloads.scale(service, slot, 0).await {
            tracing::debug!(%service, %slot, error = %e, "conformance cleanup: scale to 0 failed");
        }
    }
}
