//! The state one router shares between its handle, the request path, the
//! admin endpoint and its metrics: the split in force, the endpoints of
//! each slot (of each region, when the router has regions), the region
//! weights, the counters, and the settings the request path reads.
//!
//! It lives apart from the router's public surface so that the relay can
//! use it without importing the module that starts the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use atlas_core::region::{RegionName, RegionSet};
use atlas_core::{Endpoint, Error, Result, ServiceName, Slot, TrafficSplit};
use http::HeaderValue;
use httparse::Header;

use super::access_log::AccessLog;
use super::balance::{RegionPlan, Route, SplitState, is_cookie_name, least_outstanding};
use super::gzip::GzipPolicy;
use super::metrics::{MetricsCore, Outcome, ProxyFailure, RegionCounters, RegionLine, RouterState};
use super::replica_stats::ReplicaSnapshot;
use super::route::RouteTable;
use super::tls::Expiry;
use super::upstream::{InFlight, PoolConfig, Upstream};

/// The sticky-session cookie, with its two `Set-Cookie` values prepared.
#[derive(Debug, Clone)]
pub(crate) struct StickyCookie {
    name: String,
    blue: HeaderValue,
    green: HeaderValue,
}

impl StickyCookie {
    pub(crate) fn new(name: String) -> Result<Self> {
        if !is_cookie_name(&name) {
            return Err(Error::invalid(
                "sticky_cookie",
                format!("{name:?} is not a valid cookie name (an RFC 6265 token)"),
            ));
        }
        let value = |slot: Slot| {
            HeaderValue::from_str(&format!("{name}={slot}; Path=/; HttpOnly; SameSite=Lax"))
                .map_err(|_| Error::invalid("sticky_cookie", "must be visible ASCII"))
        };
        Ok(StickyCookie {
            blue: value(Slot::Blue)?,
            green: value(Slot::Green)?,
            name,
        })
    }

    pub(crate) fn header(&self, slot: Slot) -> HeaderValue {
        match slot {
            Slot::Blue => self.blue.clone(),
            Slot::Green => self.green.clone(),
        }
    }
}

/// The endpoints of one slot.
pub(crate) struct SlotState {
    pub(crate) endpoints: ArcSwap<Vec<Arc<Upstream>>>,
    /// Round-robin start for breaking ties.
    rr: AtomicUsize,
    /// Serialises endpoint changes of this slot (never the request path).
    writer: Mutex<()>,
}

impl SlotState {
    pub(crate) fn new() -> Self {
        SlotState {
            endpoints: ArcSwap::from_pointee(Vec::new()),
            rr: AtomicUsize::new(0),
            writer: Mutex::new(()),
        }
    }
}

/// The most regions a router declares: the region label's values stay
/// few, and a region index fits the compiled weight table.
pub(crate) const MAX_REGIONS: usize = 32;

/// A router's regions: an upstream group (blue and green endpoints) per
/// region, an optional split of each region's own, the weights between
/// them, and per-region counters. Region 0's group is the router's
/// [`Shared::slots`], so a router without regions is region 0 alone.
pub(crate) struct Regions {
    /// The declared regions, by index.
    pub(crate) names: Box<[RegionName]>,
    /// The groups of regions 1 and up.
    others: Box<[[SlotState; 2]]>,
    /// A split of the region's own, overriding the router's.
    pub(crate) splits: Box<[ArcSwapOption<SplitState>]>,
    pub(crate) plan: ArcSwap<RegionPlan>,
    pub(crate) counters: Box<[RegionCounters]>,
}

impl Regions {
    /// The regions of `set`, its normal weights (actives their share,
    /// standbys 0) in force.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] on `regions` for more than [`MAX_REGIONS`].
    pub(crate) fn new(set: &RegionSet) -> Result<Self> {
        let names: Box<[RegionName]> = set.regions().iter().map(|r| r.name.clone()).collect();
        if names.len() > MAX_REGIONS {
            return Err(Error::invalid(
                "regions",
                format!(
                    "declares {} regions; a proxy router takes at most {MAX_REGIONS}",
                    names.len()
                ),
            ));
        }
        let plan = RegionPlan::new(&names, &set.normal_weights(), false)?;
        Ok(Regions {
            others: (1..names.len())
                .map(|_| [SlotState::new(), SlotState::new()])
                .collect(),
            splits: names.iter().map(|_| ArcSwapOption::empty()).collect(),
            counters: names.iter().map(|_| RegionCounters::new()).collect(),
            plan: ArcSwap::from_pointee(plan),
            names,
        })
    }

    /// The index of region `name`.
    pub(crate) fn index(&self, name: &RegionName) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Where the request path sends a request, in a router with regions.
pub(crate) enum RegionChoice {
    /// To `region`, slot `route.slot`, endpoint `attempt`.
    Routed {
        region: usize,
        route: Route,
        attempt: InFlight,
    },
    /// No region serving has a split (503, unrouted).
    Unrouted,
    /// No region serving has an endpoint in the slot its split chose: 503,
    /// counted against the region chosen first.
    NoEndpoint { region: usize, slot: Slot },
}

/// The services added to a router, routed by host and path.
pub(crate) struct Services {
    /// The routes in force; each request reads them once.
    pub(crate) table: ArcSwap<RouteTable<Arc<Shared>>>,
    /// Whether `table` routes anything, so that a router without added
    /// services reads one flag per request and nothing more.
    pub(crate) active: AtomicBool,
    /// Serialises changes of `table` (never the request path).
    pub(crate) writer: Mutex<()>,
    /// Requests no route matched, on a router without a service of its own.
    pub(crate) unmatched: AtomicU64,
}

impl Services {
    fn new() -> Self {
        Services {
            table: ArcSwap::from_pointee(RouteTable::default()),
            active: AtomicBool::new(false),
            writer: Mutex::new(()),
            unmatched: AtomicU64::new(0),
        }
    }
}

/// State shared by the router handle, the request path, the admin
/// endpoint and [`ProxyMetrics`](super::ProxyMetrics): of the router's
/// own service, or of a service added to it.
pub(crate) struct Shared {
    pub(crate) service: ServiceName,
    /// Whether the router serves `service` for the requests no added route
    /// matches (a router from `builder`); a shared router answers them 404.
    pub(crate) own: bool,
    /// The services added to the router (empty in an added service's state).
    pub(crate) services: Services,
    /// Set once an added service was removed: its view refuses changes.
    pub(crate) retired: AtomicBool,
    pub(crate) split: ArcSwapOption<SplitState>,
    /// The endpoints of each slot: the router's, or its first region's.
    pub(crate) slots: [SlotState; 2],
    /// The router's regions, if it declared any.
    pub(crate) regions: Option<Regions>,
    pub(crate) metrics: MetricsCore,
    pub(crate) pool: PoolConfig,
    pub(crate) grace_period: Duration,
    pub(crate) client_header_timeout: Option<Duration>,
    pub(crate) client_body_timeout: Option<Duration>,
    pub(crate) sticky: Option<StickyCookie>,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) upgrade_drain: Duration,
    pub(crate) gzip: Option<GzipPolicy>,
    pub(crate) response_idle_timeout: Option<Duration>,
    /// The expiries of the TLS certificates served, when the router
    /// terminates TLS.
    pub(crate) tls_expiries: Option<Arc<ArcSwap<Vec<Expiry>>>>,
}

impl Shared {
    /// The state of a router's own service (or, with `own` false, of a
    /// router that serves only the services added to it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        service: ServiceName,
        own: bool,
        split: Option<SplitState>,
        regions: Option<Regions>,
        metrics_window: Duration,
        pool: PoolConfig,
        settings: Settings,
        tls_expiries: Option<Arc<ArcSwap<Vec<Expiry>>>>,
    ) -> Self {
        Shared {
            service,
            own,
            services: Services::new(),
            retired: AtomicBool::new(false),
            split: ArcSwapOption::new(split.map(Arc::new)),
            slots: [SlotState::new(), SlotState::new()],
            regions,
            metrics: MetricsCore::new(metrics_window),
            pool,
            grace_period: settings.grace_period,
            client_header_timeout: settings.client_header_timeout,
            client_body_timeout: settings.client_body_timeout,
            sticky: settings.sticky,
            max_request_body: settings.max_request_body,
            request_timeout: settings.request_timeout,
            access_log: settings.access_log,
            upgrade_drain: settings.upgrade_drain,
            gzip: settings.gzip,
            response_idle_timeout: settings.response_idle_timeout,
            tls_expiries,
        }
    }

    /// The state of `service`, added to this router: no split and no
    /// endpoints yet, no regions, and the router's settings (pool,
    /// timeouts, sticky cookie, limits, access log, gzip).
    pub(crate) fn for_service(&self, service: ServiceName) -> Shared {
        Shared::new(
            service,
            true,
            None,
            None,
            self.metrics.window(),
            self.pool.clone(),
            Settings {
                grace_period: self.grace_period,
                client_header_timeout: self.client_header_timeout,
                client_body_timeout: self.client_body_timeout,
                sticky: self.sticky.clone(),
                max_request_body: self.max_request_body,
                request_timeout: self.request_timeout,
                access_log: self.access_log.clone(),
                upgrade_drain: self.upgrade_drain,
                gzip: self.gzip.clone(),
                response_idle_timeout: self.response_idle_timeout,
            },
            None,
        )
    }

    /// Whether services were added to the router (one relaxed load, all a
    /// router without added services does per request).
    #[inline]
    pub(crate) fn routes_services(&self) -> bool {
        self.services.active.load(Ordering::Relaxed)
    }

    /// The added service a request for `host` and `target` goes to;
    /// `None` when no route matches (or none was added), and the router's
    /// own service (or a 404) answers.
    pub(crate) fn route_service(&self, host: Option<&[u8]>, target: &[u8]) -> Option<Arc<Shared>> {
        let table = self.services.table.load();
        table.find(host.unwrap_or_default(), target).cloned()
    }

    /// Counts a request no route matched on a router without a service of
    /// its own.
    pub(crate) fn record_unmatched(&self) {
        self.services.unmatched.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn slot(&self, slot: Slot) -> &SlotState {
        match slot {
            Slot::Blue => &self.slots[0],
            Slot::Green => &self.slots[1],
        }
    }

    /// The slots of region `region` (0 in a router without regions).
    pub(crate) fn group(&self, region: usize) -> &[SlotState; 2] {
        match (region, &self.regions) {
            (0, _) | (_, None) => &self.slots,
            (i, Some(regions)) => regions.others.get(i - 1).unwrap_or(&self.slots),
        }
    }

    /// Every region's slots, region 0's first.
    fn groups(&self) -> impl Iterator<Item = (usize, &[SlotState; 2])> {
        let others = self.regions.as_ref().map_or(&[][..], |r| &r.others[..]);
        std::iter::once(&self.slots).chain(others).enumerate()
    }

    /// Idle connections of every endpoint, the added services' included,
    /// are closed when expired.
    pub(crate) fn reap(&self) {
        for (_, group) in self.groups() {
            for state in group {
                for upstream in state.endpoints.load().iter() {
                    upstream.reap(&self.pool);
                }
            }
        }
        if self.routes_services() {
            for (_, _, service) in self.services.table.load().services() {
                service.reap();
            }
        }
    }

    /// The endpoints of `slot` that receive new requests (region 0's).
    pub(crate) fn endpoints(&self, slot: Slot) -> Vec<Endpoint> {
        self.slot(slot)
            .endpoints
            .load()
            .iter()
            .map(|u| u.endpoint.clone())
            .collect()
    }

    /// Requests in flight to the listed endpoints of `slot` (region 0's).
    pub(crate) fn in_flight(&self, slot: Slot) -> usize {
        self.slot(slot)
            .endpoints
            .load()
            .iter()
            .map(|u| u.in_flight())
            .sum()
    }

    /// Per-replica counters of the endpoints `slot` lists (region 0's).
    pub(crate) fn replica_snapshots(&self, slot: Slot) -> Vec<ReplicaSnapshot> {
        self.slot(slot)
            .endpoints
            .load()
            .iter()
            .map(|u| {
                let in_flight = u.in_flight();
                u.stats.snapshot(
                    &u.endpoint.replica,
                    in_flight,
                    in_flight + u.idle_connections(),
                )
            })
            .collect()
    }

    /// Puts `split` in force in one swap (each request reads it once) and
    /// logs it in `span`; an invalid match rule changes nothing.
    pub(crate) fn apply_split(&self, split: &TrafficSplit, span: &tracing::Span) -> Result<()> {
        let state = SplitState::new(split)?;
        let previous = self.split.swap(Some(Arc::new(state)));
        span.in_scope(|| {
            tracing::info!(
                split = %split,
                canary_match = ?split.canary_match(),
                previous = ?previous.as_ref().map(|p| p.split.to_string()),
                "traffic split applied"
            );
        });
        Ok(())
    }

    pub(crate) fn current_split(&self) -> Option<TrafficSplit> {
        self.split.load().as_ref().map(|s| s.split.clone())
    }

    pub(crate) fn sticky_name(&self) -> Option<&str> {
        self.sticky.as_ref().map(|s| s.name.as_str())
    }

    /// Chooses an endpoint of `slot` (not `exclude`) and counts the request
    /// against it. Loops only when the chosen endpoint was removed between
    /// the list load and the count, which a fresh load resolves.
    pub(crate) fn pick(&self, slot: Slot, exclude: Option<&Arc<Upstream>>) -> Option<InFlight> {
        self.pick_from(self.slot(slot), exclude)
    }

    /// [`pick`](Self::pick) in region `region`'s slot.
    pub(crate) fn pick_in(
        &self,
        region: usize,
        slot: Slot,
        exclude: Option<&Arc<Upstream>>,
    ) -> Option<InFlight> {
        self.pick_from(slot_of(self.group(region), slot), exclude)
    }

    fn pick_from(&self, state: &SlotState, exclude: Option<&Arc<Upstream>>) -> Option<InFlight> {
        for _ in 0..4 {
            let chosen = least_outstanding(&state.endpoints.load(), &state.rr, exclude)?;
            if let Some(in_flight) = InFlight::enter(chosen) {
                return Some(in_flight);
            }
        }
        None
    }

    /// Routes a request in a router with regions: a region by the weights
    /// in force, then a slot by that region's split (its own, or the
    /// router's), then an endpoint. A region that cannot serve (no split,
    /// or no endpoint in the slot chosen) passes the request to the next
    /// serving region, as a DNS failover routes around an unhealthy
    /// record; that counts as a fallback of the region chosen first.
    pub(crate) fn route_regions(
        &self,
        regions: &Regions,
        headers: &[Header<'_>],
        sticky_cookie: Option<&str>,
    ) -> RegionChoice {
        let plan = regions.plan.load();
        let first = plan.choose();
        let mut no_endpoint = None;
        for region in std::iter::once(first).chain(plan.fallbacks(first)) {
            let own = regions.splits[region].load();
            let service;
            let split = match own.as_ref() {
                Some(split) => split,
                None => {
                    service = self.split.load();
                    match service.as_ref() {
                        Some(split) => split,
                        None => continue,
                    }
                }
            };
            let route = split.route(headers, sticky_cookie);
            match self.pick_in(region, route.slot, None) {
                Some(attempt) => {
                    if region != first {
                        regions.counters[first].record_fallback();
                        tracing::trace!(
                            from = %regions.names[first],
                            to = %regions.names[region],
                            slot = %route.slot,
                            "region cannot serve; falling back"
                        );
                    }
                    return RegionChoice::Routed {
                        region,
                        route,
                        attempt,
                    };
                }
                None => {
                    if no_endpoint.is_none() {
                        no_endpoint = Some(RegionChoice::NoEndpoint {
                            region,
                            slot: route.slot,
                        });
                    }
                }
            }
        }
        no_endpoint.unwrap_or(RegionChoice::Unrouted)
    }

    /// An endpoint of `slot` in the next serving region after `failed` that
    /// has one (declaration order, wrapping round), for a request whose
    /// connections in `failed` were all refused; counted as a fallback of
    /// `failed`. `None` in a router without regions or when no other
    /// region can take it.
    pub(crate) fn fallback_region(&self, failed: usize, slot: Slot) -> Option<(usize, InFlight)> {
        let regions = self.regions.as_ref()?;
        let plan = regions.plan.load();
        for region in plan.fallbacks(failed) {
            if let Some(attempt) = self.pick_in(region, slot, None) {
                if let Some(counters) = regions.counters.get(failed) {
                    counters.record_fallback();
                }
                tracing::debug!(
                    from = %regions.names[failed],
                    to = %regions.names[region],
                    %slot,
                    "region unreachable; falling back"
                );
                return Some((region, attempt));
            }
        }
        None
    }

    /// Counts a finished request against `region`, in a router with regions.
    pub(crate) fn record_region(&self, region: usize, outcome: Outcome) {
        if let Some(counters) = self.regions.as_ref().and_then(|r| r.counters.get(region)) {
            counters.record(outcome);
        }
    }

    /// Counts a 503 for want of an endpoint against `region` and `slot`.
    pub(crate) fn record_no_endpoint(&self, region: usize, slot: Slot) {
        let outcome = Outcome::Failed(ProxyFailure::NoEndpoint);
        self.metrics.record(slot, outcome, None);
        self.record_region(region, outcome);
    }

    pub(crate) async fn set_endpoints(&self, slot: Slot, endpoints: &[Endpoint]) -> Result<()> {
        self.set_region_endpoints(0, slot, endpoints).await
    }

    /// Replaces the endpoints of `slot` in region `region` (0 in a router
    /// without regions), draining removed ones.
    pub(crate) async fn set_region_endpoints(
        &self,
        region: usize,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        validate_endpoints(endpoints)?;
        let state = slot_of(self.group(region), slot);
        let removed = {
            let _writer = state.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let current = state.endpoints.load_full();
            let next: Vec<Arc<Upstream>> = endpoints
                .iter()
                .map(|ep| {
                    current
                        .iter()
                        .find(|u| u.endpoint == *ep)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Upstream::new(ep.clone(), &self.pool)))
                })
                .collect();
            let removed: Vec<Arc<Upstream>> = current
                .iter()
                .filter(|u| !endpoints.contains(&u.endpoint))
                .cloned()
                .collect();
            let added = endpoints.len() + removed.len() - current.len();
            state.endpoints.store(Arc::new(next));
            for upstream in &removed {
                upstream.mark_removed();
            }
            tracing::info!(
                endpoints = endpoints.len(),
                added,
                removed = removed.len(),
                "endpoints updated"
            );
            removed
        };
        let in_flight: usize = removed.iter().map(|u| u.in_flight()).sum();
        if in_flight == 0 {
            return Ok(());
        }
        let replicas: Vec<&str> = removed
            .iter()
            .map(|u| u.endpoint.replica.as_str())
            .collect();
        tracing::info!(in_flight, ?replicas, grace_period = ?self.grace_period, "draining removed endpoints");
        let started = Instant::now();
        let drained = tokio::time::timeout(
            self.grace_period,
            futures::future::join_all(removed.iter().map(|u| u.drained())),
        )
        .await;
        match drained {
            Ok(_) => tracing::info!(elapsed = ?started.elapsed(), "removed endpoints drained"),
            Err(_) => tracing::warn!(
                still_in_flight = removed.iter().map(|u| u.in_flight()).sum::<usize>(),
                grace_period = ?self.grace_period,
                "grace period over before removed endpoints drained; returning anyway"
            ),
        }
        Ok(())
    }
}

/// The settings a router's services share, from its builder.
pub(crate) struct Settings {
    pub(crate) grace_period: Duration,
    pub(crate) client_header_timeout: Option<Duration>,
    pub(crate) client_body_timeout: Option<Duration>,
    pub(crate) sticky: Option<StickyCookie>,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) upgrade_drain: Duration,
    pub(crate) gzip: Option<GzipPolicy>,
    pub(crate) response_idle_timeout: Option<Duration>,
}

fn slot_of(group: &[SlotState; 2], slot: Slot) -> &SlotState {
    match slot {
        Slot::Blue => &group[0],
        Slot::Green => &group[1],
    }
}

fn validate_endpoints(endpoints: &[Endpoint]) -> Result<()> {
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(endpoints.len());
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::with_capacity(endpoints.len());
    for (i, ep) in endpoints.iter().enumerate() {
        if ep.replica.trim().is_empty() {
            return Err(Error::invalid(
                format!("endpoints[{i}].replica"),
                "must not be empty",
            ));
        }
        if ep.addr.port() == 0 {
            return Err(Error::invalid(
                format!("endpoints[{i}].addr"),
                format!("port must not be 0 (got {})", ep.addr),
            ));
        }
        if let Some(first) = names.insert(ep.replica.as_str(), i) {
            return Err(Error::invalid(
                format!("endpoints[{i}].replica"),
                format!(
                    "must be unique within the slot; {:?} is also endpoints[{first}]",
                    ep.replica
                ),
            ));
        }
        if let Some(first) = addrs.insert(ep.addr, i) {
            return Err(Error::invalid(
                format!("endpoints[{i}].addr"),
                format!(
                    "must be unique within the slot; {} is also endpoints[{first}]",
                    ep.addr
                ),
            ));
        }
    }
    Ok(())
}

impl RouterState for Shared {
    fn service_name(&self) -> &ServiceName {
        &self.service
    }

    fn counters(&self) -> &MetricsCore {
        &self.metrics
    }

    fn split_in_force(&self) -> Option<TrafficSplit> {
        self.current_split()
    }

    fn visit_endpoints(&self, slot: Slot, visit: &mut dyn FnMut(Option<&str>, &str, usize)) {
        for (index, group) in self.groups() {
            let region = self
                .regions
                .as_ref()
                .and_then(|r| r.names.get(index))
                .map(RegionName::as_str);
            for upstream in slot_of(group, slot).endpoints.load().iter() {
                visit(region, &upstream.endpoint.replica, upstream.in_flight());
            }
        }
    }

    fn visit_regions(&self, visit: &mut dyn FnMut(RegionLine<'_>)) {
        let Some(regions) = &self.regions else { return };
        let plan = regions.plan.load();
        for (index, name) in regions.names.iter().enumerate() {
            let group = self.group(index);
            visit(RegionLine {
                name: name.as_str(),
                weight: plan.percents.get(index).copied().unwrap_or(0),
                counters: &regions.counters[index],
                endpoints: [
                    group[0].endpoints.load().len(),
                    group[1].endpoints.load().len(),
                ],
            });
        }
    }

    fn serves_own(&self) -> bool {
        self.own
    }

    fn added_services(&self) -> Vec<Arc<dyn RouterState>> {
        self.services
            .table
            .load()
            .services()
            .map(|(_, _, state)| state.clone() as Arc<dyn RouterState>)
            .collect()
    }

    fn unmatched(&self) -> Option<u64> {
        (!self.own).then(|| self.services.unmatched.load(Ordering::Relaxed))
    }

    fn visit_certificates(&self, visit: &mut dyn FnMut(&str, i64)) {
        if let Some(expiries) = &self.tls_expiries {
            for expiry in expiries.load().iter() {
                visit(&expiry.file, expiry.not_after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, port: u16) -> Endpoint {
        Endpoint::new(name, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn endpoint_lists_are_validated() {
        assert!(validate_endpoints(&[ep("a", 1), ep("b", 2)]).is_ok());
        let err = validate_endpoints(&[ep("a", 1), ep("a", 2)]).unwrap_err();
        assert!(err.to_string().contains("endpoints[1].replica"), "{err}");
        let err = validate_endpoints(&[ep("a", 1), ep("b", 1)]).unwrap_err();
        assert!(err.to_string().contains("endpoints[1].addr"), "{err}");
        let err = validate_endpoints(&[ep("", 1)]).unwrap_err();
        assert!(err.to_string().contains("endpoints[0].replica"), "{err}");
        let err = validate_endpoints(&[ep("a", 0)]).unwrap_err();
        assert!(err.to_string().contains("port must not be 0"), "{err}");
    }

    #[test]
    fn sticky_cookie_names_are_validated() {
        assert!(StickyCookie::new("atlas-slot".into()).is_ok());
        let err = StickyCookie::new("bad name".into()).unwrap_err();
        assert!(err.to_string().contains("sticky_cookie"), "{err}");
        let c = StickyCookie::new("s".into()).unwrap();
        assert_eq!(
            c.header(Slot::Green),
            "s=green; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
