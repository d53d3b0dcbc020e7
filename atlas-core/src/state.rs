//! [`StateStore`]: where a rollout's progress is persisted, so a crashed
//! controller resumes and two controllers never drive one service.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{ServiceName, Slot, Weight};
use crate::error::Result;
use crate::rollout::Rollout;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Executing steps.
    Progressing,
    /// Returning all traffic to the old stable slot and scaling the new one
    /// down, because of `reason`.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// Finished: the new release is stable and has all traffic.
    Promoted,
    /// Finished: the old release kept (or got back) all traffic.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl Phase {
    /// Whether the rollout has finished.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack { .. })
    }
}

/// The persisted state of one rollout. The engine writes it after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Unique id of this rollout.
    pub id: String,
    /// The whole rollout, so a resumed engine needs nothing else.
    pub rollout: Rollout,
    /// The slot that was stable when the rollout began.
    pub stable: Slot,
    /// The version the stable slot ran, if any.
    pub stable_version: Option<String>,
    /// True when the stable slot ran nothing (first deployment).
    pub initial: bool,
    /// Where it stands.
    pub phase: Phase,
    /// Index of the step being executed (steps before it are done).
    pub step: usize,
    /// The canary weight last applied.
    pub weight: Weight,
    /// Paused by a human or an inconclusive analysis.
    pub paused: bool,
    /// A promote arrived outside a pause: skip the next pause.
    pub skip_next_pause: bool,
    /// A full promotion was asked for: pauses, analyses and intermediate
    /// traffic steps are skipped.
    pub full_promotion: bool,
    /// All traffic moved to the new slot ([`Step::Promote`](crate::Step::Promote) done):
    /// from here on the rollout can only finish promoted.
    pub promoted: bool,
}

impl RolloutState {
    /// The canary (new) slot.
    pub fn canary(&self) -> Slot {
        self.stable.other()
    }
}

/// A state value with the version a compare-and-swap must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// Version, increased by every successful write.
    pub version: u64,
    /// The value.
    pub value: T,
}

/// Proof of holding the lease on a service; only its holder may drive the
/// service's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The service.
    pub service: ServiceName,
    /// Who holds it (an engine's id).
    pub holder: String,
    /// Distinguishes this grant from earlier ones to the same holder.
    pub token: u64,
    /// How long the lease lasts without renewal. Stores that tie the lease
    /// to a process (an OS file lock) may ignore it.
    pub ttl: Duration,
}

/// Persists rollout state with compare-and-swap, and grants leases.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The state of `service`'s rollout, or `None` if it never had one.
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>>;

    /// Writes `state` if the stored version is `expected` (`None`: nothing
    /// stored yet). Returns the new version. A stale `expected` is a
    /// [`Conflict`](crate::Error::Conflict).
    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64>;

    /// Grants `holder` the lease on `service` for `ttl`, or fails with a
    /// [`Conflict`](crate::Error::Conflict) naming the current holder while
    /// another holder's lease is live.
    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease>;

    /// Extends `lease` by its ttl; a [`Conflict`](crate::Error::Conflict)
    /// if it expired and someone else took it.
    async fn renew_lease(&self, lease: &Lease) -> Result<()>;

    /// Gives `lease` up. Releasing a lease no longer held is not an error.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn StateStore>` and
/// `Box<dyn StateStore>` are StateStores too.
macro_rules! forward_statestore {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: StateStore + ?Sized> StateStore for $ptr<T> {
            async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
                (**self).load(service).await
            }
            async fn compare_and_swap(
                &self,
                service: &ServiceName,
                expected: Option<u64>,
                state: &RolloutState,
            ) -> Result<u64> {
                (**self).compare_and_swap(service, expected, state).await
            }
            async fn acquire_lease(
                &self,
                service: &ServiceName,
                holder: &str,
                ttl: Duration,
            ) -> Result<Lease> {
                (**self).acquire_lease(service, holder, ttl).await
            }
            async fn renew_lease(&self, lease: &Lease) -> Result<()> {
                (**self).renew_lease(lease).await
            }
            async fn release_lease(&self, lease: &Lease) -> Result<()> {
                (**self).release_lease(lease).await
            }
        }
    )*};
}

forward_statestore!(Arc, Box);
