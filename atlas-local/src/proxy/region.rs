//! One region of a router with regions, as a [`TrafficRouter`] of its own:
//! its blue and green endpoints and, optionally, a split of its own, so a
//! rollout can be driven region by region.

use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::region::RegionName;
use atlas_core::{Endpoint, Error, Result, ServiceName, Slot, TrafficRouter, TrafficSplit};
use tracing::Instrument as _;

use arc_swap::ArcSwapOption;

use super::balance::SplitState;
use super::shared::Shared;

/// One region of a proxy router with regions, from
/// [`ProxyRouter::region`](super::ProxyRouter::region): a
/// [`TrafficRouter`] for that region's upstream group alone.
///
/// - [`set_endpoints`](TrafficRouter::set_endpoints) replaces the
///   region's blue or green endpoints (draining removed ones as the
///   router does).
/// - [`set_split`](TrafficRouter::set_split) gives the region a split of
///   its own, which then applies to the requests the region gets instead
///   of the router's; [`follow_router_split`](Self::follow_router_split)
///   goes back to the router's. A rollout engine given this view shifts
///   traffic in its region only.
/// - [`split`](TrafficRouter::split) reads the split in force in the
///   region: its own, else the router's.
///
/// Cheap to clone; calls naming another service than the router's fail
/// with [`Error::NotFound`].
#[derive(Clone)]
pub struct ProxyRegion {
    shared: Arc<Shared>,
    index: usize,
    name: RegionName,
    span: tracing::Span,
}

impl std::fmt::Debug for ProxyRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRegion")
            .field("service", &self.shared.service)
            .field("region", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProxyRegion {
    /// The view of region `name` of `shared`'s router.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the region when the router does not
    /// declare it.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        name: &RegionName,
        parent: &tracing::Span,
    ) -> Result<Self> {
        let index = shared
            .regions
            .as_ref()
            .and_then(|r| r.index(name))
            .ok_or_else(|| unknown_region(shared, name))?;
        Ok(ProxyRegion {
            shared: shared.clone(),
            index,
            name: name.clone(),
            span: tracing::info_span!(parent: parent, "region", region = %name),
        })
    }

    /// The region's own split (a view exists only for a declared region,
    /// so this is always found).
    fn own_split(&self) -> Result<&ArcSwapOption<SplitState>> {
        self.shared
            .regions
            .as_ref()
            .and_then(|r| r.splits.get(self.index))
            .ok_or_else(|| unknown_region(&self.shared, &self.name))
    }

    /// The region's name.
    pub fn name(&self) -> &RegionName {
        &self.name
    }

    /// Goes back to the router's split for this region's requests,
    /// dropping the region's own.
    pub fn follow_router_split(&self) {
        let Ok(own) = self.own_split() else { return };
        let previous = own.swap(None);
        self.span.in_scope(|| {
            tracing::info!(
                previous = ?previous.as_ref().map(|p| p.split.to_string()),
                "region follows the router's split"
            );
        });
    }

    /// The endpoints of `slot` in this region that receive new requests.
    pub fn endpoints(&self, slot: Slot) -> Vec<Endpoint> {
        let group = self.shared.group(self.index);
        let state = match slot {
            Slot::Blue => &group[0],
            Slot::Green => &group[1],
        };
        state
            .endpoints
            .load()
            .iter()
            .map(|u| u.endpoint.clone())
            .collect()
    }

    /// Requests in flight to the listed endpoints of `slot` in this region.
    pub fn in_flight(&self, slot: Slot) -> usize {
        let group = self.shared.group(self.index);
        let state = match slot {
            Slot::Blue => &group[0],
            Slot::Green => &group[1],
        };
        state.endpoints.load().iter().map(|u| u.in_flight()).sum()
    }

    fn check_service(&self, service: &ServiceName) -> Result<()> {
        if *service == self.shared.service {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "service {service} on the proxy router of service {}",
                self.shared.service
            )))
        }
    }
}

/// The error for a region the router does not declare.
pub(crate) fn unknown_region(shared: &Shared, name: &RegionName) -> Error {
    let known: Vec<&str> = shared
        .regions
        .as_ref()
        .map(|r| r.names.iter().map(RegionName::as_str).collect())
        .unwrap_or_default();
    Error::invalid(
        format!("region {name}"),
        if known.is_empty() {
            "is not a region of this proxy (it declares none)".to_owned()
        } else {
            format!(
                "is not a region of this proxy (it has: {})",
                known.join(", ")
            )
        },
    )
}

#[async_trait]
impl TrafficRouter for ProxyRegion {
    /// Gives the region `split`, atomically, in place of the router's.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for another service; [`Error::InvalidInput`]
    /// for a match rule with an invalid header or cookie name or value.
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        self.check_service(service)?;
        let state = SplitState::new(split)?;
        let previous = self.own_split()?.swap(Some(Arc::new(state)));
        self.span.in_scope(|| {
            tracing::info!(
                split = %split,
                previous = ?previous.as_ref().map(|p| p.split.to_string()),
                "region traffic split applied"
            );
        });
        Ok(())
    }

    /// The split in force in the region: its own, else the router's.
    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        self.check_service(service)?;
        match self.own_split()?.load().as_ref() {
            Some(own) => Ok(Some(own.split.clone())),
            None => Ok(self.shared.current_split()),
        }
    }

    /// Replaces the region's endpoints of `slot`, as
    /// [`ProxyRouter`](super::ProxyRouter)'s `set_endpoints` does for its
    /// first region.
    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        self.check_service(service)?;
        let span = tracing::info_span!(parent: &self.span, "set_endpoints", %slot);
        self.shared
            .set_region_endpoints(self.index, slot, endpoints)
            .instrument(span)
            .await
    }
}
