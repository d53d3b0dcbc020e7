//! [`Retrying<T>`]: any adapter with a [`RetryConfig`] applied to every call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::config::RetryConfig;
use crate::domain::{Endpoint, Release, ServiceName, Slot, SlotStatus, TrafficSplit};
use crate::error::{Error, Result};
use crate::failover::{FailoverState, FailoverStore};
use crate::region::{RegionRouter, RegionWeights};
use crate::router::TrafficRouter;
use crate::state::{Lease, RolloutState, StateStore, Versioned};
use crate::workloads::Workloads;

/// The backend names retries and attempt timeouts are reported under.
const WORKLOADS: &str = "workloads";
const ROUTER: &str = "router";
const STATE_STORE: &str = "state-store";
const REGION_ROUTER: &str = "region-router";
const FAILOVER_STORE: &str = "failover-store";

/// An adapter `T` whose calls are retried under a [`RetryConfig`]: a call
/// that fails with a [transient](Error::is_transient) error (or whose
/// attempt outlives [`request_timeout`](RetryConfig::request_timeout)) is
/// tried again after a backoff with jitter, up to
/// [`max_retries`](RetryConfig::max_retries) times and within
/// [`retry_timeout`](RetryConfig::retry_timeout); any other error is
/// returned at once. Each retry is a `tracing` warn event.
///
/// Implements [`Workloads`], [`TrafficRouter`], [`StateStore`],
/// [`RegionRouter`] and [`FailoverStore`] for a `T` that does. Their contracts make most calls safe to repeat: workload and
/// router calls set a desired state (idempotent), `load` reads, a holder may
/// acquire its own live lease again, renewing is idempotent, and releasing
/// a lease no longer held is not an error. Two calls need more:
///
/// - [`compare_and_swap`](StateStore::compare_and_swap): a write that failed
///   transiently (or timed out) may still have landed, and a blind retry of
///   a write that landed is a [`Conflict`](Error::Conflict) with our own
///   write. So after such a failure the wrapper reads the state back before
///   trying again: if the stored state is the one being written under a new
///   version, the write landed and that version is returned; if the stored
///   version is still the expected one, the write did not land and is tried
///   again; anything else means another writer got in between, a
///   `Conflict`. A `Conflict` from the store itself is never retried.
///   [`compare_and_swap_failover`](FailoverStore::compare_and_swap_failover)
///   is handled the same way.
/// - [`renew_lease`](StateStore::renew_lease): retries stop once the
///   lease's ttl has passed since the first attempt, since a renewal after
///   that is moot (the holder must assume the lease lost).
///
/// ```
/// use std::sync::Arc;
/// use atlas_core::StateStore;
/// use atlas_core::retry::{RetryConfig, Retrying};
/// use atlas_core::testing::MemoryStateStore;
///
/// let store = Retrying::new(MemoryStateStore::new(), RetryConfig::control_plane())?;
/// let store: Arc<dyn StateStore> = Arc::new(store);
/// # let _ = store;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Retrying<T> {
    inner: T,
    config: RetryConfig,
}

impl<T> Retrying<T> {
    /// `inner` with its calls retried under `config`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `retry.*` when `config` does not
    /// [validate](RetryConfig::validate).
    pub fn new(inner: T, config: RetryConfig) -> Result<Self> {
        config.validate("retry")?;
        Ok(Retrying { inner, config })
    }

    /// The retry policy.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Unwraps the adapter.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

#[async_trait]
impl<T: Workloads> Workloads for Retrying<T> {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()> {
        self.config
            .run(WORKLOADS, "workloads.deploy", || {
                self.inner.deploy(service, slot, release, replicas)
            })
            .await
    }

    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
        self.config
            .run(WORKLOADS, "workloads.scale", || {
                self.inner.scale(service, slot, replicas)
            })
            .await
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        self.config
            .run(WORKLOADS, "workloads.status", || {
                self.inner.status(service, slot)
            })
            .await
    }
}

#[async_trait]
impl<T: TrafficRouter> TrafficRouter for Retrying<T> {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        self.config
            .run(ROUTER, "router.set_split", || {
                self.inner.set_split(service, split)
            })
            .await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        self.config
            .run(ROUTER, "router.split", || self.inner.split(service))
            .await
    }

    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        self.config
            .run(ROUTER, "router.set_endpoints", || {
                self.inner.set_endpoints(service, slot, endpoints)
            })
            .await
    }
}

#[async_trait]
impl<T: StateStore> StateStore for Retrying<T> {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        self.config
            .run(STATE_STORE, "state_store.load", || self.inner.load(service))
            .await
    }

    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        // Set once a write was sent: from then on its outcome is unknown
        // until an attempt returns, so the next attempt reads back first.
        let in_doubt = &AtomicBool::new(false);
        self.config
            .run(STATE_STORE, "state_store.compare_and_swap", || async move {
                if in_doubt.load(Ordering::SeqCst) {
                    let current = self.inner.load(service).await?;
                    match current {
                        Some(v) if Some(v.version) != expected && v.value == *state => {
                            tracing::info!(
                                %service,
                                version = v.version,
                                "the write whose outcome was unknown had landed"
                            );
                            return Ok(v.version);
                        }
                        Some(v) if Some(v.version) == expected => {}
                        None if expected.is_none() => {}
                        other => {
                            return Err(Error::conflict(format!(
                                "state of {service} changed from version {} to {} by another writer \
                                 while the outcome of a write was unknown",
                                version_name(expected),
                                version_name(other.map(|v| v.version)),
                            )));
                        }
                    }
                }
                in_doubt.store(true, Ordering::SeqCst);
                self.inner.compare_and_swap(service, expected, state).await
            })
            .await
    }

    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        self.config
            .run(STATE_STORE, "state_store.acquire_lease", || {
                self.inner.acquire_lease(service, holder, ttl)
            })
            .await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        let config = if lease.ttl < self.config.retry_timeout && !lease.ttl.is_zero() {
            self.config.clone().with_retry_timeout(lease.ttl)
        } else {
            self.config.clone()
        };
        config
            .run(STATE_STORE, "state_store.renew_lease", || {
                self.inner.renew_lease(lease)
            })
            .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.config
            .run(STATE_STORE, "state_store.release_lease", || {
                self.inner.release_lease(lease)
            })
            .await
    }
}

#[async_trait]
impl<T: RegionRouter> RegionRouter for Retrying<T> {
    async fn set_region_weights(
        &self,
        service: &ServiceName,
        weights: &RegionWeights,
    ) -> Result<()> {
        self.config
            .run(REGION_ROUTER, "region_router.set_region_weights", || {
                self.inner.set_region_weights(service, weights)
            })
            .await
    }

    async fn region_weights(&self, service: &ServiceName) -> Result<Option<RegionWeights>> {
        self.config
            .run(REGION_ROUTER, "region_router.region_weights", || {
                self.inner.region_weights(service)
            })
            .await
    }
}

#[async_trait]
impl<T: FailoverStore> FailoverStore for Retrying<T> {
    async fn load_failover(
        &self,
        service: &ServiceName,
    ) -> Result<Option<Versioned<FailoverState>>> {
        self.config
            .run(FAILOVER_STORE, "failover_store.load_failover", || {
                self.inner.load_failover(service)
            })
            .await
    }

    async fn compare_and_swap_failover(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &FailoverState,
    ) -> Result<u64> {
        // As for `compare_and_swap`: once a write was sent, its outcome is
        // unknown until an attempt returns, so the next attempt reads back.
        let in_doubt = &AtomicBool::new(false);
        self.config
            .run(
                FAILOVER_STORE,
                "failover_store.compare_and_swap_failover",
                || async move {
                    if in_doubt.load(Ordering::SeqCst) {
                        match self.inner.load_failover(service).await? {
                            Some(v) if Some(v.version) != expected && v.value == *state => {
                                tracing::info!(
                                    %service,
                                    version = v.version,
                                    "the failover state write whose outcome was unknown had landed"
                                );
                                return Ok(v.version);
                            }
                            Some(v) if Some(v.version) == expected => {}
                            None if expected.is_none() => {}
                            other => {
                                return Err(Error::conflict(format!(
                                    "failover state of {service} changed from version {} to {} by \
                                     another writer while the outcome of a write was unknown",
                                    version_name(expected),
                                    version_name(other.map(|v| v.version)),
                                )));
                            }
                        }
                    }
                    in_doubt.store(true, Ordering::SeqCst);
                    self.inner
                        .compare_and_swap_failover(service, expected, state)
                        .await
                },
            )
            .await
    }
}

fn version_name(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}
