//! The [`Scaler`] trait and what it reports.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{ServiceName, Slot};
use crate::error::Result;
use crate::router::TrafficRouter;

/// How many replicas a slot is asked to run and how many are ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaCount {
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas running and ready for traffic.
    pub ready: u32,
}

/// Changes the replica count of a slot that may be serving traffic, so
/// that no request fails because of it: local processes behind Atlas's
/// proxy, a Kubernetes Deployment's scale subresource.
///
/// Autoscalers drive it; [`scale_service`](super::scale_service) applies a
/// [`DesiredReplicas`](super::DesiredReplicas) count through it.
#[async_trait]
pub trait Scaler: Send + Sync {
    /// Scales `slot` of `service` to `replicas`, without failing a request:
    /// new replicas receive requests only once ready, and replicas removed
    /// stop receiving new requests and finish those in flight before they
    /// stop. `router` sends the slot its traffic; adapters whose router
    /// finds ready replicas itself may leave it alone.
    ///
    /// Returns once the new count is in force: for adapters that register
    /// endpoints, once the router lists exactly the ready replicas; for
    /// platforms that converge on their own (a Kubernetes Deployment), once
    /// the platform accepted the count. A slot that runs
    /// no release is [`NotFound`](crate::Error::NotFound) unless `replicas`
    /// is zero. When new replicas fail or do not become ready in time, the
    /// slot goes back to its previous count and the error says why.
    async fn scale_live(
        &self,
        service: &ServiceName,
        slot: Slot,
        replicas: u32,
        router: &dyn TrafficRouter,
    ) -> Result<()>;

    /// How many replicas `slot` of `service` is asked to run and how many
    /// are ready; zero and zero for a slot that runs nothing.
    async fn replica_count(&self, service: &ServiceName, slot: Slot) -> Result<ReplicaCount>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn Scaler>` and
/// `Box<dyn Scaler>` are Scalers too.
macro_rules! forward_scaler {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: Scaler + ?Sized> Scaler for $ptr<T> {
            async fn scale_live(
                &self,
                service: &ServiceName,
                slot: Slot,
                replicas: u32,
                router: &dyn TrafficRouter,
            ) -> Result<()> {
                (**self).scale_live(service, slot, replicas, router).await
            }
            async fn replica_count(&self, service: &ServiceName, slot: Slot) -> Result<ReplicaCount> {
                (**self).replica_count(service, slot).await
            }
        }
    )*};
}

forward_scaler!(Arc, Box);
