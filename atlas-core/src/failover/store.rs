//! [`FailoverState`] and [`FailoverStore`]: what a failover controller
//! writes after every decision, with compare-and-swap, so a controller that
//! crashed is resumed by the next one exactly where it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::database::{Fence, Promotion};
use crate::domain::ServiceName;
use crate::error::Result;
use crate::region::{RegionName, RegionWeights};
use crate::state::Versioned;

/// A region the controller moved traffic away from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRegion {
    /// Which trigger fired, in words ("3 consecutive failed health checks").
    pub trigger: String,
    /// When the controller decided to fail over.
    pub since: SystemTime,
}

/// The persisted state of one service's multi-region failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverState {
    /// The region weights the controller last applied (or was about to
    /// apply: a resumed controller applies them again, which is idempotent).
    pub weights: RegionWeights,
    /// Regions failed over away from, with the trigger that fired.
    #[serde(default)]
    pub failed: BTreeMap<RegionName, FailedRegion>,
    /// Standby regions the controller activated.
    #[serde(default)]
    pub activated: Vec<RegionName>,
    /// The old primary database was fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
    /// The standby database was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// The change the controller decided and has not finished: the
    /// weights above are applied again and the database steps not yet
    /// recorded are done by whichever controller finds it. While it is set,
    /// rollouts of the service may not start (see the
    /// [interlock](crate::failover#the-rollout-interlock)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<Transition>,
    /// The id of a rollout that was unfinished when a change began: its
    /// engine aborts it at its next check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_rollout: Option<String>,
}

/// What a [`Transition`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// Moves traffic away from failed regions and/or switches the database.
    Failover,
    /// Gives recovered regions their traffic back.
    Failback,
}

/// A change of region weights (and maybe of the primary database) that a
/// controller decided and has not yet finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Failover or failback.
    pub kind: TransitionKind,
    /// Why, in words: the triggers that fired or the regions that
    /// recovered.
    pub reason: String,
    /// When it was decided.
    pub started: SystemTime,
    /// The database is switched too: fence the old primary, then promote
    /// the standby (each skipped when already recorded in the state).
    #[serde(default)]
    pub database: bool,
}

impl FailoverState {
    /// Normal operation at `weights`: nothing failed, nothing activated.
    pub fn new(weights: RegionWeights) -> Self {
        FailoverState {
            weights,
            failed: BTreeMap::new(),
            activated: Vec::new(),
            fence: None,
            promotion: None,
            in_progress: None,
            abort_rollout: None,
        }
    }
}

/// Persists [`FailoverState`] per service with compare-and-swap, like
/// [`StateStore`](crate::StateStore) does for rollouts (the first write is
/// version 1, each write adds 1, a stale version is a
/// [`Conflict`](crate::Error::Conflict)). A controller takes the
/// single-driver lease through the same store's
/// [`StateStore`](crate::StateStore) leases.
#[async_trait]
pub trait FailoverStore: Send + Sync {
    /// The failover state of `service`, or `None` if none was written.
    async fn load_failover(
        &self,
        service: &ServiceName,
    ) -> Result<Option<Versioned<FailoverState>>>;

    /// Writes `state` if the stored version is `expected` (`None`: nothing
    /// stored yet). Returns the new version.
    async fn compare_and_swap_failover(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &FailoverState,
    ) -> Result<u64>;
}

/// Forwards the trait through a smart pointer.
macro_rules! forward_failoverstore {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: FailoverStore + ?Sized> FailoverStore for $ptr<T> {
            async fn load_failover(
                &self,
                service: &ServiceName,
            ) -> Result<Option<Versioned<FailoverState>>> {
                (**self).load_failover(service).await
            }
            async fn compare_and_swap_failover(
                &self,
                service: &ServiceName,
                expected: Option<u64>,
                state: &FailoverState,
            ) -> Result<u64> {
                (**self).compare_and_swap_failover(service, expected, state).await
            }
        }
    )*};
}
forward_failoverstore!(Arc, Box);
