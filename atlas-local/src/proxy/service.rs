//! One service added to a router that serves several on one listener, as
//! a [`TrafficRouter`] of its own: its split, its blue and green
//! endpoints, its metrics; and the adding and removing of such services.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use async_trait::async_trait;
use atlas_core::{Endpoint, Error, Result, ServiceName, Slot, TrafficRouter, TrafficSplit};
use tracing::Instrument as _;

use super::metrics::ProxyMetrics;
use super::replica_stats::ReplicaSnapshot;
use super::route::ServiceRoute;
use super::shared::Shared;

/// One service added to a proxy router
/// ([`ProxyRouter::add_service`](super::ProxyRouter::add_service)), as a
/// [`TrafficRouter`] for that service alone: the same split (weights,
/// header and cookie match rule, sticky cookie), balancing and draining
/// as a router's own service, on the requests its
/// [`ServiceRoute`] matches.
///
/// Cheap to clone. Calls naming another service, or made after the
/// service was removed, fail with [`Error::NotFound`].
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    route: ServiceRoute,
    span: tracing::Span,
}

impl std::fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyService")
            .field("service", &self.shared.service)
            .field("route", &self.route)
            .field("split", &self.shared.current_split())
            .finish_non_exhaustive()
    }
}

impl ProxyService {
    /// The view of the added service whose state is `shared`.
    pub(crate) fn view(shared: Arc<Shared>, route: ServiceRoute, parent: &tracing::Span) -> Self {
        let span = tracing::info_span!(parent: parent, "service", service = %shared.service);
        ProxyService {
            shared,
            route,
            span,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.shared.service
    }

    /// The requests routed to the service.
    pub fn route(&self) -> &ServiceRoute {
        &self.route
    }

    /// The service's metrics: a [`MetricProvider`](atlas_core::MetricProvider)
    /// over its requests alone, and their Prometheus exposition.
    pub fn metrics(&self) -> ProxyMetrics {
        ProxyMetrics::new(self.shared.clone())
    }

    /// The endpoints of `slot` that receive new requests.
    pub fn endpoints(&self, slot: Slot) -> Vec<Endpoint> {
        self.shared.endpoints(slot)
    }

    /// Requests in flight to the listed endpoints of `slot`.
    pub fn in_flight(&self, slot: Slot) -> usize {
        self.shared.in_flight(slot)
    }

    /// Per-replica counters of the endpoints `slot` lists now, as
    /// [`ProxyRouter::replica_snapshots`](super::ProxyRouter::replica_snapshots).
    pub fn replica_snapshots(&self, slot: Slot) -> Vec<ReplicaSnapshot> {
        self.shared.replica_snapshots(slot)
    }

    fn check_service(&self, service: &ServiceName) -> Result<()> {
        if self.shared.retired.load(Ordering::Acquire) {
            return Err(Error::not_found(format!(
                "service {} on this proxy router (it was removed)",
                self.shared.service
            )));
        }
        if *service == self.shared.service {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "service {service} on the proxy view of service {}",
                self.shared.service
            )))
        }
    }
}

#[async_trait]
impl TrafficRouter for ProxyService {
    /// Applies `split` to the service's requests, atomically.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for another service or a removed one;
    /// [`Error::InvalidInput`] for a match rule with an invalid header or
    /// cookie name or value.
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        self.check_service(service)?;
        self.shared.apply_split(split, &self.span)
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        self.check_service(service)?;
        Ok(self.shared.current_split())
    }

    /// Replaces the service's endpoints of `slot`, draining removed ones,
    /// as [`ProxyRouter`](super::ProxyRouter)'s `set_endpoints` does.
    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        self.check_service(service)?;
        let span = tracing::info_span!(parent: &self.span, "set_endpoints", %slot);
        self.shared
            .set_endpoints(slot, endpoints)
            .instrument(span)
            .await
    }
}

/// Adds `service` on `route` to the router whose state is `root`, in one
/// swap of its route table.
///
/// # Errors
///
/// [`Error::InvalidInput`] naming the field of an invalid route;
/// [`Error::Conflict`] when the service is the router's own or already
/// added, or another service claims one of the hosts with the same path
/// prefix. Nothing changes then.
pub(crate) fn add(
    root: &Arc<Shared>,
    service: ServiceName,
    route: ServiceRoute,
    parent: &tracing::Span,
) -> Result<ProxyService> {
    let _span = parent.enter();
    let _writer = root
        .services
        .writer
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if root.own && service == root.service {
        let err = Error::conflict(format!(
            "service {service} is the proxy router's own service"
        ));
        tracing::warn!(error = %err, "service refused");
        return Err(err);
    }
    let state = Arc::new(root.for_service(service.clone()));
    let table = root
        .services
        .table
        .load()
        .with(&service, &route, state.clone())
        .inspect_err(|e| tracing::warn!(%service, error = %e, "service refused"))?;
    root.services.table.store(Arc::new(table));
    root.services.active.store(true, Ordering::Relaxed);
    tracing::info!(
        %service,
        hosts = ?route.hosts,
        path_prefix = ?route.path_prefix,
        "service added"
    );
    Ok(ProxyService::view(state, route, parent))
}

/// Removes `service` from the router whose state is `root`: no new request
/// goes to it from now on, and this returns once its requests in flight
/// finished, or when the grace period ran out, as endpoints removed by
/// `set_endpoints` drain.
///
/// # Errors
///
/// [`Error::NotFound`] when the router has no such added service.
pub(crate) async fn remove(
    root: &Arc<Shared>,
    service: &ServiceName,
    parent: &tracing::Span,
) -> Result<()> {
    let span = tracing::info_span!(parent: parent, "remove_service", %service);
    let removed = {
        let _span = span.enter();
        let _writer = root
            .services
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((table, removed)) = root.services.table.load().without(service) else {
            return Err(Error::not_found(format!(
                "service {service} on this proxy router"
            )));
        };
        root.services
            .active
            .store(!table.is_empty(), Ordering::Relaxed);
        root.services.table.store(Arc::new(table));
        removed.retired.store(true, Ordering::Release);
        tracing::info!("service removed from routing; draining its requests");
        removed
    };
    // Requests that chose the service before the swap either hold an
    // endpoint already (drained below) or pick one from the lists emptied
    // here (then 503, a window of one table read).
    let (blue, green) = futures::future::join(
        removed.set_endpoints(Slot::Blue, &[]),
        removed.set_endpoints(Slot::Green, &[]),
    )
    .instrument(span)
    .await;
    blue.and(green)
}
