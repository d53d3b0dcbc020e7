//! [`TrafficRouter`]: what decides which slot a request goes to.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Endpoint, ServiceName, Slot, TrafficSplit};
use crate::error::Result;

/// Splits a service's traffic between its two slots: Atlas's own proxy, a
/// Kubernetes Service selector, Gateway API routes, an NGINX or Istio config.
///
/// A split is applied atomically: a request sees the old split or the new
/// one, never a mix. Requests already in flight finish where they started.
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// Applies `split`. Returns once new requests follow it.
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()>;

    /// The split in force, or `None` if none was ever set for `service`.
    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>>;

    /// Tells the router which endpoints serve `slot`. Routers that find
    /// endpoints themselves (a Kubernetes Service) keep the default, which
    /// does nothing. Routers that hold connections stop sending new requests
    /// to endpoints no longer listed and return once their in-flight
    /// requests finished (bounded by the router's grace period), so the
    /// caller may then stop those replicas without failing a request.
    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        let _ = (service, slot, endpoints);
        Ok(())
    }
}

/// Forwards the trait through a smart pointer, so `Arc<dyn TrafficRouter>` and
/// `Box<dyn TrafficRouter>` are TrafficRouters too.
macro_rules! forward_trafficrouter {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: TrafficRouter + ?Sized> TrafficRouter for $ptr<T> {
            async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
                (**self).set_split(service, split).await
            }
            async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
                (**self).split(service).await
            }
            async fn set_endpoints(
                &self,
                service: &ServiceName,
                slot: Slot,
                endpoints: &[Endpoint],
            ) -> Result<()> {
                (**self).set_endpoints(service, slot, endpoints).await
            }
        }
    )*};
}

forward_trafficrouter!(Arc, Box);
