//! The state one router shares between its handle, the request path, the
//! admin endpoint and its metrics: the split in force, the endpoints of
//! each slot, the counters, and the settings the request path reads.
//!
//! It lives apart from the router's public surface so that the relay can
//! use it without importing the module that starts the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use atlas_core::{Endpoint, Error, Result, ServiceName, Slot, TrafficSplit};
use http::HeaderValue;

use super::access_log::AccessLog;
use super::balance::{SplitState, is_cookie_name, least_outstanding};
use super::gzip::GzipPolicy;
use super::metrics::{MetricsCore, RouterState};
use super::tls::Expiry;
use super::upstream::{InFlight, PoolConfig, Upstream};

/// The sticky-session cookie, with its two `Set-Cookie` values prepared.
#[derive(Debug)]
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

/// State shared by the router handle, the request path, the admin
/// endpoint and [`ProxyMetrics`](super::ProxyMetrics).
pub(crate) struct Shared {
    pub(crate) service: ServiceName,
    pub(crate) split: ArcSwapOption<SplitState>,
    pub(crate) slots: [SlotState; 2],
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
    pub(crate) fn slot(&self, slot: Slot) -> &SlotState {
        match slot {
            Slot::Blue => &self.slots[0],
            Slot::Green => &self.slots[1],
        }
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
        let state = self.slot(slot);
        for _ in 0..4 {
            let chosen = least_outstanding(&state.endpoints.load(), &state.rr, exclude)?;
            if let Some(in_flight) = InFlight::enter(chosen) {
                return Some(in_flight);
            }
        }
        None
    }

    pub(crate) async fn set_endpoints(&self, slot: Slot, endpoints: &[Endpoint]) -> Result<()> {
        validate_endpoints(endpoints)?;
        let state = self.slot(slot);
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

    fn visit_endpoints(&self, slot: Slot, visit: &mut dyn FnMut(&str, usize)) {
        for upstream in self.slot(slot).endpoints.load().iter() {
            visit(&upstream.endpoint.replica, upstream.in_flight());
        }
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
