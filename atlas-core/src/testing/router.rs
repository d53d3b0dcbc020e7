//! [`RecordingRouter`]: an in-memory router that records every change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::guard::lock;
use crate::domain::{Endpoint, ServiceName, Slot, TrafficSplit};
use crate::error::Result;
use crate::router::TrafficRouter;

/// One change a [`RecordingRouter`] received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterCall {
    /// [`TrafficRouter::set_split`].
    SetSplit {
        /// The service.
        service: ServiceName,
        /// The split applied.
        split: TrafficSplit,
    },
    /// [`TrafficRouter::set_endpoints`].
    SetEndpoints {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// The endpoints given.
        endpoints: Vec<Endpoint>,
    },
}

#[derive(Debug, Default)]
struct State {
    splits: BTreeMap<ServiceName, TrafficSplit>,
    endpoints: BTreeMap<(ServiceName, Slot), Vec<Endpoint>>,
    calls: Vec<RouterCall>,
}

/// An in-memory [`TrafficRouter`] that keeps the split in force per service
/// and records every [`set_split`](TrafficRouter::set_split) and
/// [`set_endpoints`](TrafficRouter::set_endpoints) call in order, so tests
/// can assert what traffic saw, e.g. that a rollback returned all traffic
/// in one call:
///
/// ```
/// # use atlas_core::{ServiceName, Slot, TrafficRouter, TrafficSplit};
/// # use atlas_core::testing::RecordingRouter;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let router = RecordingRouter::new();
/// let svc = ServiceName::new("checkout")?;
/// router.set_split(&svc, &TrafficSplit::new(Slot::Blue, 25)?).await?;
/// router.set_split(&svc, &TrafficSplit::all_to(Slot::Blue)).await?;
/// assert_eq!(router.splits(&svc).last(), Some(&TrafficSplit::all_to(Slot::Blue)));
/// assert_eq!(router.splits(&svc).len(), 2);
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
///
/// Each call takes one lock, so concurrent splits apply atomically. Cheap
/// to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct RecordingRouter {
    state: Arc<Mutex<State>>,
}

impl RecordingRouter {
    /// A router with no splits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every split set for `service`, in order.
    pub fn splits(&self, service: &ServiceName) -> Vec<TrafficSplit> {
        lock(&self.state)
            .calls
            .iter()
            .filter_map(|c| match c {
                RouterCall::SetSplit { service: s, split } if s == service => Some(split.clone()),
                _ => None,
            })
            .collect()
    }

    /// The split in force for `service`.
    pub fn current(&self, service: &ServiceName) -> Option<TrafficSplit> {
        lock(&self.state).splits.get(service).cloned()
    }

    /// The endpoints last given for `slot` of `service` (empty if none).
    pub fn endpoints(&self, service: &ServiceName, slot: Slot) -> Vec<Endpoint> {
        lock(&self.state)
            .endpoints
            .get(&(service.clone(), slot))
            .cloned()
            .unwrap_or_default()
    }

    /// Every change received, in order, for all services.
    pub fn calls(&self) -> Vec<RouterCall> {
        lock(&self.state).calls.clone()
    }
}

#[async_trait]
impl TrafficRouter for RecordingRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let mut s = lock(&self.state);
        s.splits.insert(service.clone(), split.clone());
        s.calls.push(RouterCall::SetSplit {
            service: service.clone(),
            split: split.clone(),
        });
        tracing::debug!(%service, %split, "recording router: split set");
        Ok(())
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        Ok(self.current(service))
    }

    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        let mut s = lock(&self.state);
        s.endpoints
            .insert((service.clone(), slot), endpoints.to_vec());
        s.calls.push(RouterCall::SetEndpoints {
            service: service.clone(),
            slot,
            endpoints: endpoints.to_vec(),
        });
        tracing::debug!(%service, %slot, count = endpoints.len(), "recording router: endpoints set");
        Ok(())
    }
}
