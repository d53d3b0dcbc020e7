//! What every rollout of one engine shares: the (retrying) adapters, the
//! settings and the event log — and the one rule that ties adapters to
//! rollouts.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::log::EventLog;
use crate::domain::ServiceName;
use crate::error::{Error, Result};
use crate::failover::FailoverStore;
use crate::failover::interlock::rollout_blocked;
use crate::hooks::RolloutHook;
use crate::metrics::MetricProvider;
use crate::probe::HealthProbe;
use crate::rollout::Rollout;
use crate::router::TrafficRouter;
use crate::scaler::DesiredReplicas;
use crate::state::StateStore;
use crate::workloads::Workloads;

pub(super) struct Shared {
    /// The engine's id, the holder name on its leases.
    pub(super) id: String,
    pub(super) workloads: Arc<dyn Workloads>,
    pub(super) router: Arc<dyn TrafficRouter>,
    pub(super) probe: Arc<dyn HealthProbe>,
    pub(super) metrics: Option<Arc<dyn MetricProvider>>,
    pub(super) store: Arc<dyn StateStore>,
    pub(super) hooks: Vec<Arc<dyn RolloutHook>>,
    pub(super) log: EventLog,
    pub(super) lease_ttl: Duration,
    pub(super) poll_interval: Duration,
    /// Replica counts shared with an autoscaler, if one was given.
    pub(super) desired: Option<DesiredReplicas>,
    /// Where a failover controller of the service records its changes, if
    /// rollouts are interlocked with one.
    pub(super) failover: Option<Arc<dyn FailoverStore>>,
}

impl Shared {
    /// The metric provider analysis steps query. This is the one place the
    /// rule "analysis needs a metric provider" is enforced: starting and
    /// resuming call it (through [`check_rollout`](Self::check_rollout)) so
    /// an engine without a provider refuses such a rollout before anything
    /// happens, and the analysis step calls it to get the provider.
    pub(super) fn analysis_provider(&self) -> Result<&Arc<dyn MetricProvider>> {
        self.metrics.as_ref().ok_or_else(|| {
            Error::invalid(
                "engine.metrics",
                "the rollout uses analysis, so the engine needs a metric provider",
            )
        })
    }

    /// Whether this engine can drive `rollout`: one with analysis steps
    /// needs a metric provider.
    pub(super) fn check_rollout(&self, rollout: &Rollout) -> Result<()> {
        if !rollout.strategy.analysis_refs().is_empty() {
            self.analysis_provider()?;
        }
        Ok(())
    }
}

impl Shared {
    /// Why a rollout of `service` (`rollout`: the running one's id) must
    /// not start or go on because of a failover, or `None`.
    pub(super) async fn failover_block(
        &self,
        service: &ServiceName,
        rollout: Option<&str>,
    ) -> Result<Option<String>> {
        match &self.failover {
            Some(store) => rollout_blocked(store.as_ref(), service, rollout).await,
            None => Ok(None),
        }
    }
}

/// 16 random hex digits, for engine and rollout ids.
pub(super) fn random_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}
