//! [`EngineBuilder`]: the engine's adapters and settings, checked once.

use std::sync::Arc;
use std::time::Duration;

use super::log::EventLog;
use super::shared::{Shared, random_id};
use super::start::Engine;
use crate::error::{Error, Result};
use crate::failover::FailoverStore;
use crate::hooks::RolloutHook;
use crate::metrics::MetricProvider;
use crate::notify::Notifier;
use crate::probe::HealthProbe;
use crate::retry::{RetryConfig, Retrying};
use crate::router::TrafficRouter;
use crate::scaler::DesiredReplicas;
use crate::state::StateStore;
use crate::workloads::Workloads;

/// Builds an [`Engine`]. Workloads, router, probe and state store are
/// required; a metric provider is required by rollouts that use analysis.
#[must_use]
pub struct EngineBuilder {
    workloads: Option<Arc<dyn Workloads>>,
    router: Option<Arc<dyn TrafficRouter>>,
    probe: Option<Arc<dyn HealthProbe>>,
    metrics: Option<Arc<dyn MetricProvider>>,
    store: Option<Arc<dyn StateStore>>,
    notifiers: Vec<Arc<dyn Notifier>>,
    hooks: Vec<Arc<dyn RolloutHook>>,
    lease_ttl: Duration,
    poll_interval: Duration,
    retry: RetryConfig,
    desired: Option<DesiredReplicas>,
    failover: Option<Arc<dyn FailoverStore>>,
}

impl Engine {
    /// A builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            workloads: None,
            router: None,
            probe: None,
            metrics: None,
            store: None,
            notifiers: Vec::new(),
            hooks: Vec::new(),
            lease_ttl: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            retry: RetryConfig::control_plane(),
            desired: None,
            failover: None,
        }
    }
}

impl EngineBuilder {
    /// Sets the workloads adapter.
    pub fn workloads(mut self, w: Arc<dyn Workloads>) -> Self {
        self.workloads = Some(w);
        self
    }
    /// Sets the traffic router.
    pub fn router(mut self, r: Arc<dyn TrafficRouter>) -> Self {
        self.router = Some(r);
        self
    }
    /// Sets the health probe.
    pub fn probe(mut self, p: Arc<dyn HealthProbe>) -> Self {
        self.probe = Some(p);
        self
    }
    /// Sets the metric provider used by analysis.
    pub fn metrics(mut self, m: Arc<dyn MetricProvider>) -> Self {
        self.metrics = Some(m);
        self
    }
    /// Sets the state store.
    pub fn store(mut self, s: Arc<dyn StateStore>) -> Self {
        self.store = Some(s);
        self
    }
    /// Adds a notifier for promotions and rollbacks.
    pub fn notifier(mut self, n: Arc<dyn Notifier>) -> Self {
        self.notifiers.push(n);
        self
    }
    /// Adds a [`RolloutHook`], run before the new slot starts and after the
    /// old slot is scaled down (see [`hooks`](crate::hooks)); hooks run in
    /// the order they were added.
    pub fn hook(mut self, hook: Arc<dyn RolloutHook>) -> Self {
        self.hooks.push(hook);
        self
    }
    /// Lease duration; renewed every third of it. Default 15 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
    /// How often workload readiness is polled. Default 1 s.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
    /// How calls to the workloads, the router and the state store that fail
    /// with a transient error are retried: [`build`](Self::build) wraps each
    /// of the three in a [`Retrying`] with this policy. Health probes,
    /// metric providers, notifiers and hooks are not wrapped: probes and
    /// analyses count failures themselves, and notifiers and hooks are the
    /// caller's code.
    ///
    /// The default is [`RetryConfig::control_plane`]:
    ///
    /// | setting | default | why |
    /// |---|---|---|
    /// | retries | 3 (4 attempts) | rides out a blip; an adapter still failing after that fails the step, which rolls back |
    /// | backoff | 100 ms doubling to 5 s, each wait drawn between half and all of it | quick enough that a step barely notices, jittered so engines that failed together do not retry together |
    /// | per attempt | 60 s | a hung call counts as a transient failure instead of holding the step until its progress deadline |
    /// | in all | 3 min | one call and its retries never outlast that, even outside a step (rollback, resume) |
    ///
    /// [`RetryConfig::no_retries`] turns retries off (each call is tried
    /// once, still under the per-attempt timeout).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Shares replica counts with an autoscaler. The engine then sets the
    /// canary's floor whenever its strategy deploys or scales the canary,
    /// gives each slot with traffic its share of the autoscaler's desired
    /// count whenever it moves traffic (growing slots before the split
    /// changes, shrinking them after), holds the service's scaling gate
    /// while it does so, so the autoscaler defers to it, and clears the
    /// floors when the rollout ends. Without it the strategy's counts are
    /// used as they are.
    pub fn desired_replicas(mut self, desired: DesiredReplicas) -> Self {
        self.desired = Some(desired);
        self
    }

    /// Interlocks rollouts with a multi-region
    /// [`FailoverController`](crate::failover::FailoverController) that
    /// persists in `store`: a rollout does not start while a failover of
    /// its service is in progress (a
    /// [`Precondition`](Error::Precondition) error naming it), and a
    /// running rollout is aborted (all traffic back to its stable slot)
    /// when a failover begins — checked before every step and every third
    /// of the lease time-to-live during a step or pause. See
    /// [the interlock](crate::failover#the-rollout-interlock). Without it
    /// the engine does not look at failovers.
    pub fn failover_store(mut self, store: Arc<dyn FailoverStore>) -> Self {
        self.failover = Some(store);
        self
    }

    /// Checks the settings and builds the engine.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `engine.lease_ttl` (under 30 ms),
    /// `engine.poll_interval` (zero), `engine.retry.*` (see
    /// [`RetryConfig::validate`]), and `engine.workloads`, `engine.router`,
    /// `engine.probe` or `engine.store` when not set.
    pub fn build(self) -> Result<Engine> {
        let missing = |what: &str| Error::invalid(format!("engine.{what}"), "is required");
        if self.lease_ttl < Duration::from_millis(30) {
            return Err(Error::invalid("engine.lease_ttl", "must be at least 30ms"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::invalid(
                "engine.poll_interval",
                "must be greater than 0",
            ));
        }
        self.retry.validate("engine.retry")?;
        let workloads = self.workloads.ok_or_else(|| missing("workloads"))?;
        let router = self.router.ok_or_else(|| missing("router"))?;
        let probe = self.probe.ok_or_else(|| missing("probe"))?;
        let store = self.store.ok_or_else(|| missing("store"))?;
        let id = format!("atlas-engine-{}", random_id());
        tracing::debug!(engine = %id, retry = ?self.retry, "engine built");
        Ok(Engine::from_shared(Shared {
            id,
            workloads: Arc::new(Retrying::new(workloads, self.retry.clone())?),
            router: Arc::new(Retrying::new(router, self.retry.clone())?),
            probe,
            metrics: self.metrics,
            store: Arc::new(Retrying::new(store, self.retry)?),
            hooks: self.hooks,
            log: EventLog::new(self.notifiers),
            lease_ttl: self.lease_ttl,
            poll_interval: self.poll_interval,
            desired: self.desired,
            failover: self.failover,
        }))
    }
}
