//! [`Scaler`] for [`ProcessWorkloads`]: replicas join the proxy once ready
//! and leave it, drained, before they are stopped.

use async_trait::async_trait;
use atlas_core::scaler::{LiveScale, ReplicaCount, Scaler, scale_behind_router};
use atlas_core::{Result, ServiceName, Slot, TrafficRouter, Workloads};

use super::{ProcessWorkloads, validate_replicas};

/// Scaling a live slot behind Atlas's proxy (or any router that lists
/// endpoints one by one): new replicas are started and probed until ready
/// with the workloads' readiness check, and only then listed with the
/// router; replicas that go are first taken out of the router, which
/// returns once their requests in flight finished, and then stopped
/// (SIGTERM, SIGKILL after the grace period). New replicas that fail or
/// are not ready within the scale-ready timeout
/// ([`ProcessWorkloadsBuilder::scale_ready_timeout`](super::ProcessWorkloadsBuilder::scale_ready_timeout))
/// are stopped again and the slot keeps its previous count.
#[async_trait]
impl Scaler for ProcessWorkloads {
    async fn scale_live(
        &self,
        service: &ServiceName,
        slot: Slot,
        replicas: u32,
        router: &dyn TrafficRouter,
    ) -> Result<()> {
        validate_replicas(replicas)?;
        let limits = LiveScale {
            ready_timeout: self.ctx.config.scale_ready_timeout,
            poll_interval: self.ctx.config.poll_interval,
        };
        scale_behind_router(self, router, service, slot, replicas, limits).await
    }

    async fn replica_count(&self, service: &ServiceName, slot: Slot) -> Result<ReplicaCount> {
        let s = self.status(service, slot).await?;
        Ok(ReplicaCount {
            desired: s.desired,
            ready: s.ready,
        })
    }
}
