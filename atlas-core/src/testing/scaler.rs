//! [`Scaler`] for [`MockWorkloads`]: the same drain-first, ready-first
//! procedure local processes use.

use async_trait::async_trait;

use super::MockWorkloads;
use crate::domain::{ServiceName, Slot};
use crate::error::Result;
use crate::router::TrafficRouter;
use crate::scaler::{LiveScale, ReplicaCount, Scaler, scale_behind_router};
use crate::workloads::Workloads;

#[async_trait]
impl Scaler for MockWorkloads {
    async fn scale_live(
        &self,
        service: &ServiceName,
        slot: Slot,
        replicas: u32,
        router: &dyn TrafficRouter,
    ) -> Result<()> {
        scale_behind_router(self, router, service, slot, replicas, LiveScale::default()).await
    }

    async fn replica_count(&self, service: &ServiceName, slot: Slot) -> Result<ReplicaCount> {
        let s = self.status(service, slot).await?;
        Ok(ReplicaCount {
            desired: s.desired,
            ready: s.ready,
        })
    }
}
