//! [`Workloads`]: the platform that runs a release's replicas in a slot.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Release, ServiceName, Slot, SlotStatus};
use crate::error::Result;

/// Runs releases in slots: Kubernetes Deployments, local processes, VMs.
///
/// Every method is idempotent: asking twice for the same thing is the same as
/// asking once, so the engine can repeat a step after a crash. Methods return
/// once the platform accepted the request, not once replicas are ready; the
/// engine polls [`Workloads::status`] for readiness.
#[async_trait]
pub trait Workloads: Send + Sync {
    /// Makes `slot` of `service` run `release` with `replicas` replicas,
    /// replacing whatever release the slot ran before.
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()>;

    /// Sets the replica count of the release `slot` already runs. Scaling to
    /// zero keeps the release recorded; scaling a slot that runs nothing is a
    /// [`NotFound`](crate::Error::NotFound) error unless `replicas` is zero.
    /// When scaling down, adapters that can choose stop the replicas listed
    /// last in [`SlotStatus::endpoints`] first.
    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()>;

    /// What the slot runs now. A slot that never ran anything reports
    /// [`SlotStatus::empty`].
    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn Workloads>` and
/// `Box<dyn Workloads>` are Workloadss too.
macro_rules! forward_workloads {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: Workloads + ?Sized> Workloads for $ptr<T> {
            async fn deploy(
                &self,
                service: &ServiceName,
                slot: Slot,
                release: &Release,
                replicas: u32,
            ) -> Result<()> {
                (**self).deploy(service, slot, release, replicas).await
            }
            async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
                (**self).scale(service, slot, replicas).await
            }
            async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
                (**self).status(service, slot).await
            }
        }
    )*};
}

forward_workloads!(Arc, Box);
