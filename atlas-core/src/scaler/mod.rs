//! [`Scaler`]: changing how many replicas a live slot runs, without failing
//! a request; and how an autoscaler and the rollout engine share a
//! service's replicas.
//!
//! - [`Scaler::scale_live`] scales a slot that serves traffic. New
//!   replicas get requests only once they are ready; replicas that go are
//!   taken out of the router and finish their requests in flight before
//!   they are stopped. [`scale_behind_router`] does this for any
//!   [`Workloads`] whose replicas the router lists one by one (local
//!   processes); platforms whose router finds ready replicas itself
//!   (a Kubernetes Service) scale their own way.
//! - [`apportion`] splits a service-wide replica count between the two
//!   slots by traffic weight, with a floor per slot.
//! - [`DesiredReplicas`] is the handle an autoscaler and the rollout engine
//!   share: the autoscaler publishes the service's desired count, the
//!   engine publishes the floors its strategy needs (the canary's scale),
//!   and both scale slots to the same [`apportion`]ed shares, one at a time
//!   ([`DesiredReplicas::hold`]), so neither undoes the other's work.
//!   [`scale_service`] is the autoscaler's side: it defers while a rollout
//!   step is scaling.

mod desired;
mod live;
mod share;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{ServiceName, Slot};
use crate::error::Result;
use crate::router::TrafficRouter;

pub use desired::{Applied, DesiredReplicas, ScalingGuard, scale_service};
pub use live::{LiveScale, scale_behind_router};
pub use share::{SlotReplicas, apportion};

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
/// Autoscalers drive it; [`scale_service`] applies a [`DesiredReplicas`]
/// count through it.
#[async_trait]
pub trait Scaler: Send + Sync {
    /// Scales `slot` of `service` to `replicas`, without failing a request:
    /// new replicas receive requests only once ready, and replicas removed
    /// stop receiving new requests and finish those in flight before they
    /// stop. `router` sends the slot its traffic; adapters whose router
    /// finds ready replicas itself may leave it alone.
    ///
    /// Returns once the platform runs the new count (for adapters that
    /// register endpoints, once the router lists them). A slot that runs
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
