//! [`RecordingRegionRouter`]: an in-memory [`RegionRouter`] that records
//! every change; [`Faulty`] wrappers for the multi-region traits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::fault::{Faulty, Method};
use super::guard::lock;
use crate::database::{DatabaseFailover, Fence, PrimaryHealth, Promotion, ReplicationStatus};
use crate::domain::ServiceName;
use crate::error::{Error, Result};
use crate::failover::{FailoverState, FailoverStore};
use crate::region::{RegionName, RegionRouter, RegionWeights};
use crate::state::Versioned;

#[derive(Debug, Default)]
struct State {
    known: Option<BTreeSet<RegionName>>,
    weights: BTreeMap<ServiceName, RegionWeights>,
    calls: Vec<(ServiceName, RegionWeights)>,
}

/// An in-memory [`RegionRouter`] that keeps the weights in force per
/// service and records every [`set_region_weights`](RegionRouter::set_region_weights)
/// call in order.
///
/// By default it accepts any region; [`with_regions`](Self::with_regions)
/// makes it know only the listed ones and refuse weights naming another,
/// like a real router whose regions are configured.
///
/// ```
/// # use atlas_core::ServiceName;
/// # use atlas_core::region::{RegionName, RegionRouter, RegionWeights};
/// # use atlas_core::testing::RecordingRegionRouter;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let router = RecordingRegionRouter::new();
/// let svc = ServiceName::new("checkout")?;
/// let (us, eu) = (RegionName::new("us")?, RegionName::new("eu")?);
/// router.set_region_weights(&svc, &RegionWeights::new([(us.clone(), 60), (eu.clone(), 40)])?).await?;
/// router.set_region_weights(&svc, &RegionWeights::all_to(eu.clone())).await?;
/// assert_eq!(router.history(&svc).len(), 2);
/// assert_eq!(router.region_weights(&svc).await?.unwrap().get(&eu), 100);
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
///
/// Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct RecordingRegionRouter {
    state: Arc<Mutex<State>>,
}

impl RecordingRegionRouter {
    /// A router that accepts any region.
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that knows only `regions`.
    pub fn with_regions(regions: impl IntoIterator<Item = RegionName>) -> Self {
        let r = Self::default();
        lock(&r.state).known = Some(regions.into_iter().collect());
        r
    }

    /// Every weight set for `service`, in order.
    pub fn history(&self, service: &ServiceName) -> Vec<RegionWeights> {
        lock(&self.state)
            .calls
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, w)| w.clone())
            .collect()
    }

    /// The weights in force for `service`.
    pub fn current(&self, service: &ServiceName) -> Option<RegionWeights> {
        lock(&self.state).weights.get(service).cloned()
    }
}

#[async_trait]
impl RegionRouter for RecordingRegionRouter {
    async fn set_region_weights(
        &self,
        service: &ServiceName,
        weights: &RegionWeights,
    ) -> Result<()> {
        let mut s = lock(&self.state);
        if let Some(known) = &s.known
            && let Some((unknown, _)) = weights.iter().find(|(n, _)| !known.contains(*n))
        {
            return Err(Error::invalid(
                format!("region weights of {service}: region {unknown}"),
                "is not known to this router",
            ));
        }
        s.weights.insert(service.clone(), weights.clone());
        s.calls.push((service.clone(), weights.clone()));
        tracing::debug!(%service, %weights, "recording region router: weights set");
        Ok(())
    }

    async fn region_weights(&self, service: &ServiceName) -> Result<Option<RegionWeights>> {
        Ok(self.current(service))
    }
}

/// [`RegionRouter::set_region_weights`], as fault rules name it.
pub const SET_REGION_WEIGHTS: Method = Method::new("set_region_weights");
/// [`RegionRouter::region_weights`].
pub const REGION_WEIGHTS: Method = Method::new("region_weights");
/// [`FailoverStore::load_failover`].
pub const LOAD_FAILOVER: Method = Method::new("load_failover");
/// [`FailoverStore::compare_and_swap_failover`].
pub const COMPARE_AND_SWAP_FAILOVER: Method = Method::new("compare_and_swap_failover");
/// [`DatabaseFailover::check_primary`].
pub const CHECK_PRIMARY: Method = Method::new("check_primary");
/// [`DatabaseFailover::replication`].
pub const REPLICATION: Method = Method::new("replication");
/// [`DatabaseFailover::fence_primary`].
pub const FENCE_PRIMARY: Method = Method::new("fence_primary");
/// [`DatabaseFailover::promote_standby`].
pub const PROMOTE_STANDBY: Method = Method::new("promote_standby");

#[async_trait]
impl<T: RegionRouter> RegionRouter for Faulty<T> {
    async fn set_region_weights(
        &self,
        service: &ServiceName,
        weights: &RegionWeights,
    ) -> Result<()> {
        let call = self.inner().set_region_weights(service, weights);
        self.plan().call(SET_REGION_WEIGHTS, call).await
    }

    async fn region_weights(&self, service: &ServiceName) -> Result<Option<RegionWeights>> {
        let call = self.inner().region_weights(service);
        self.plan().call(REGION_WEIGHTS, call).await
    }
}

#[async_trait]
impl<T: FailoverStore> FailoverStore for Faulty<T> {
    async fn load_failover(
        &self,
        service: &ServiceName,
    ) -> Result<Option<Versioned<FailoverState>>> {
        let call = self.inner().load_failover(service);
        self.plan().call(LOAD_FAILOVER, call).await
    }

    async fn compare_and_swap_failover(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &FailoverState,
    ) -> Result<u64> {
        let call = self
            .inner()
            .compare_and_swap_failover(service, expected, state);
        self.plan().call(COMPARE_AND_SWAP_FAILOVER, call).await
    }
}

#[async_trait]
impl<T: DatabaseFailover> DatabaseFailover for Faulty<T> {
    async fn check_primary(&self) -> Result<PrimaryHealth> {
        let call = self.inner().check_primary();
        self.plan().call(CHECK_PRIMARY, call).await
    }

    async fn replication(&self) -> Result<ReplicationStatus> {
        let call = self.inner().replication();
        self.plan().call(REPLICATION, call).await
    }

    async fn fence_primary(&self, reason: &str) -> Result<Fence> {
        let call = self.inner().fence_primary(reason);
        self.plan().call(FENCE_PRIMARY, call).await
    }

    async fn promote_standby(&self) -> Result<Promotion> {
        let call = self.inner().promote_standby();
        self.plan().call(PROMOTE_STANDBY, call).await
    }
}
