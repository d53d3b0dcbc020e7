//! The engine: executes any strategy's [`Step`]s against the adapter traits.
//!
//! One engine can drive many services; each rollout runs in its own task and
//! is steered through its [`RolloutHandle`]. The engine:
//!
//! - takes a lease on the service from the [`StateStore`], so a second
//!   engine is refused with a [`Conflict`](Error::Conflict), and renews it
//!   while it works;
//! - writes the [`RolloutState`] after every step, so a new engine on the
//!   same store ([`Engine::resume`]) picks up where a crashed one stopped
//!   and converges to fully promoted or fully rolled back;
//! - rolls back on a failed probe, a failed analysis, a step that misses the
//!   progress deadline, or an abort: all traffic returns to the stable slot
//!   in **one** [`TrafficRouter::set_split`] call, then the new slot's
//!   endpoints are drained and it is scaled to zero;
//! - retries adapter calls that fail with a transient error, with
//!   exponential backoff and jitter;
//! - emits a [`RolloutEvent`] for everything it does, to subscribers and as
//!   `tracing` events inside a `rollout` span.
//!
//! The progress deadline bounds every step that waits on the platform
//! (deploy, probe, scale, router calls). Pauses and analyses are bounded by
//! their own settings and do not count, as in Argo Rollouts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::analysis::{self, AnalysisPhase};
use crate::domain::{Endpoint, ServiceName, Slot, TrafficSplit, Weight};
use crate::error::{Error, Result};
use crate::events::{EventKind, RolloutEvent};
use crate::hooks::{HookContext, HookPoint, RolloutHook};
use crate::metrics::MetricProvider;
use crate::notify::{Notification, Notifier, Severity};
use crate::probe::HealthProbe;
use crate::rollout::{InconclusivePolicy, Rollout};
use crate::router::TrafficRouter;
use crate::state::{Lease, Phase, RolloutState, StateStore};
use crate::strategy::Step;
use crate::workloads::Workloads;

/// How adapter calls that fail with a transient error are retried.
///
/// Defaults: 4 attempts, backoff from 100 ms doubling up to 5 s, each
/// wait drawn uniformly from half to all of the nominal backoff (jitter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first. At least 1.
    pub attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails with a non-transient error, or the
    /// attempts are used up.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts.max(1) => {
                    let nominal = backoff.as_secs_f64();
                    let wait =
                        Duration::from_secs_f64(rand::rng().random_range(nominal / 2.0..=nominal));
                    tracing::warn!(what, attempt, error = %e, wait = ?wait, "transient failure, retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new release is stable with all traffic.
    Promoted {
        /// Its version.
        version: String,
    },
    /// The old release kept or got back all traffic.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Promoted { version } => write!(f, "promoted {version}"),
            Outcome::RolledBack { reason } => write!(f, "rolled back: {reason}"),
        }
    }
}

struct Inner {
    id: String,
    workloads: Arc<dyn Workloads>,
    router: Arc<dyn TrafficRouter>,
    probe: Arc<dyn HealthProbe>,
    metrics: Option<Arc<dyn MetricProvider>>,
    store: Arc<dyn StateStore>,
    notifiers: Vec<Arc<dyn Notifier>>,
    hooks: Vec<Arc<dyn RolloutHook>>,
    events: broadcast::Sender<RolloutEvent>,
    lease_ttl: Duration,
    poll_interval: Duration,
    retry: RetryPolicy,
}

impl Inner {
    fn emit(&self, service: &ServiceName, rollout: &str, kind: EventKind) {
        log_event(service, rollout, &kind);
        // No subscribers is fine: events are also logged.
        let _ = self.events.send(RolloutEvent {
            service: service.clone(),
            rollout: rollout.to_string(),
            at: SystemTime::now(),
            kind,
        });
    }

    fn notify(&self, notification: Notification) {
        for n in &self.notifiers {
            let n = n.clone();
            let notification = notification.clone();
            // Notifiers never hold a rollout up; failures are logged.
            tokio::spawn(async move {
                if let Err(e) = n.notify(&notification).await {
                    tracing::warn!(error = %e, "notifier failed");
                }
            });
        }
    }
}

fn log_event(service: &ServiceName, rollout: &str, kind: &EventKind) {
    match kind {
        EventKind::Started {
            from_version,
            to_version,
            steps,
            resumed,
        } => {
            tracing::info!(%service, rollout, ?from_version, to_version, steps, resumed, "rollout started")
        }
        EventKind::StepStarted { index, total, step } => {
            tracing::info!(%service, rollout, index, total, step = %step, "step started")
        }
        EventKind::StepFinished { index, step } => {
            tracing::info!(%service, rollout, index, step = %step, "step finished")
        }
        EventKind::WeightChanged { split } => {
            tracing::info!(%service, rollout, split = %split, "traffic split changed")
        }
        EventKind::Probed {
            endpoint,
            healthy,
            detail,
        } => {
            tracing::info!(%service, rollout, endpoint = %endpoint, healthy, detail, "endpoint probed")
        }
        EventKind::AnalysisMeasured { template, record } => {
            tracing::debug!(%service, rollout, template, metric = %record.metric, phase = ?record.phase, value = ?record.value, "analysis measurement")
        }
        EventKind::AnalysisFinished {
            template,
            phase,
            message,
        } => {
            tracing::info!(%service, rollout, template, phase = %phase, message, "analysis finished")
        }
        EventKind::Paused { reason } => tracing::info!(%service, rollout, reason, "rollout paused"),
        EventKind::Resumed => tracing::info!(%service, rollout, "rollout resumed"),
        EventKind::Aborted { reason } => {
            tracing::warn!(%service, rollout, reason, "rollout aborted")
        }
        EventKind::Promoted { version } => {
            tracing::info!(%service, rollout, version, "rollout promoted")
        }
        EventKind::RolledBack { reason } => {
            tracing::warn!(%service, rollout, reason, "rollout rolled back")
        }
        EventKind::HookRan {
            hook,
            point,
            error: None,
        } => tracing::info!(%service, rollout, hook, %point, "hook ran"),
        EventKind::HookRan {
            hook,
            point,
            error: Some(error),
        } => tracing::warn!(%service, rollout, hook, %point, error, "hook failed"),
    }
}

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
    retry: RetryPolicy,
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
    /// Retry policy for adapter calls.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Checks the settings and builds the engine.
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
        if self.retry.attempts < 1 {
            return Err(Error::invalid(
                "engine.retry.attempts",
                "must be at least 1",
            ));
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Engine {
            inner: Arc::new(Inner {
                id: format!("atlas-engine-{}", random_id()),
                workloads: self.workloads.ok_or_else(|| missing("workloads"))?,
                router: self.router.ok_or_else(|| missing("router"))?,
                probe: self.probe.ok_or_else(|| missing("probe"))?,
                metrics: self.metrics,
                store: self.store.ok_or_else(|| missing("store"))?,
                notifiers: self.notifiers,
                hooks: self.hooks,
                events,
                lease_ttl: self.lease_ttl,
                poll_interval: self.poll_interval,
                retry: self.retry,
            }),
        })
    }
}

fn random_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Executes rollouts. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
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
            retry: RetryPolicy::default(),
        }
    }

    /// This engine's id, the holder name on its leases.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Events of every rollout this engine drives, from now on. Subscribe
    /// before [`Engine::start`] to see a rollout's first events. A receiver
    /// that falls more than 1024 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<RolloutEvent> {
        self.inner.events.subscribe()
    }

    /// Starts `rollout`. Fails with a [`Conflict`](Error::Conflict) when
    /// another engine holds the service's lease or an unfinished rollout of
    /// the service is in the store (use [`Engine::resume`] for that).
    pub async fn start(&self, rollout: Rollout) -> Result<RolloutHandle> {
        rollout.validate()?;
        if self.inner.metrics.is_none() && !rollout.strategy.analysis_refs().is_empty() {
            return Err(Error::invalid(
                "engine.metrics",
                "the rollout uses analysis, so the engine needs a metric provider",
            ));
        }
        let service = rollout.service.clone();
        let inner = &self.inner;
        let lease = inner
            .store
            .acquire_lease(&service, &inner.id, inner.lease_ttl)
            .await?;
        match self.prepare(rollout, &lease).await {
            Ok((state, version)) => Ok(self.spawn(state, version, lease, false)),
            Err(e) => {
                let _ = inner.store.release_lease(&lease).await;
                Err(e)
            }
        }
    }

    async fn prepare(&self, rollout: Rollout, lease: &Lease) -> Result<(RolloutState, u64)> {
        let inner = &self.inner;
        let service = &lease.service;
        let existing = inner.store.load(service).await?;
        if let Some(v) = &existing
            && !v.value.phase.is_terminal()
        {
            return Err(Error::conflict(format!(
                "rollout {} of {service} is unfinished; resume it instead of starting another",
                v.value.id
            )));
        }
        let retry = &inner.retry;
        let split = retry
            .run("router.split", || inner.router.split(service))
            .await?;
        let stable = match &split {
            None => Slot::Green, // nothing yet: the first release goes to blue
            Some(s) if s.is_all_to(s.stable()) => s.stable(),
            Some(s) if s.is_all_to(s.canary()) => s.canary(),
            Some(s) => {
                return Err(Error::conflict(format!(
                    "{service} has a split traffic ({s}) but no unfinished rollout; set all traffic to one slot first"
                )));
            }
        };
        let status = retry
            .run("workloads.status", || {
                inner.workloads.status(service, stable)
            })
            .await?;
        let initial = status.desired == 0 || status.version.is_none();
        let state = RolloutState {
            id: format!("{service}-{}", random_id()),
            rollout,
            stable,
            stable_version: if initial { None } else { status.version },
            initial,
            phase: Phase::Progressing,
            step: 0,
            weight: Weight::ZERO,
            paused: false,
            skip_next_pause: false,
            full_promotion: false,
            promoted: false,
        };
        let version = inner
            .store
            .compare_and_swap(service, existing.map(|v| v.version), &state)
            .await?;
        Ok((state, version))
    }

    /// Takes over the unfinished rollout of `service` from the store, if
    /// there is one, and drives it to the end. `Ok(None)` when there is
    /// nothing to resume.
    pub async fn resume(&self, service: &ServiceName) -> Result<Option<RolloutHandle>> {
        let inner = &self.inner;
        let lease = inner
            .store
            .acquire_lease(service, &inner.id, inner.lease_ttl)
            .await?;
        let loaded = match inner.store.load(service).await {
            Ok(l) => l,
            Err(e) => {
                let _ = inner.store.release_lease(&lease).await;
                return Err(e);
            }
        };
        match loaded {
            Some(v) if !v.value.phase.is_terminal() => {
                Ok(Some(self.spawn(v.value, v.version, lease, true)))
            }
            _ => {
                inner.store.release_lease(&lease).await?;
                Ok(None)
            }
        }
    }

    fn spawn(
        &self,
        state: RolloutState,
        version: u64,
        lease: Lease,
        resumed: bool,
    ) -> RolloutHandle {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(state.clone());
        let steps = state.rollout.strategy.compile(state.initial);
        let span = tracing::info_span!("rollout", service = %state.rollout.service, id = %state.id);
        let driver = Driver {
            inner: self.inner.clone(),
            state,
            version,
            lease,
            steps,
            commands: cmd_rx,
            state_tx,
            traffic_returned: false,
        };
        let service = driver.state.rollout.service.clone();
        let id = driver.state.id.clone();
        let join = tokio::spawn(driver.run(resumed).instrument(span));
        RolloutHandle {
            service,
            id,
            commands: cmd_tx,
            state: state_rx,
            join,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Promote,
    PromoteFull,
    Pause,
    Resume,
    Abort,
}

/// Steers one running rollout. Dropping the handle does not stop the rollout.
#[derive(Debug)]
pub struct RolloutHandle {
    service: ServiceName,
    id: String,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<RolloutState>,
    join: JoinHandle<Result<Outcome>>,
}

impl RolloutHandle {
    /// The rollout's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The rollout's state as last persisted.
    pub fn state(&self) -> RolloutState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every persisted state change.
    pub fn watch(&self) -> watch::Receiver<RolloutState> {
        self.state.clone()
    }

    fn send(&self, c: Command) -> Result<()> {
        self.commands
            .send(c)
            .map_err(|_| Error::precondition(format!("rollout {} has finished", self.id)))
    }

    /// Ends the current pause step (timed or waiting for promotion) and
    /// clears a pause; outside a pause, the next pause step is skipped.
    pub fn promote(&self) -> Result<()> {
        self.send(Command::Promote)
    }

    /// Skips every remaining pause, analysis and intermediate traffic step:
    /// the release goes to 100 % as soon as its replicas are healthy.
    pub fn promote_full(&self) -> Result<()> {
        self.send(Command::PromoteFull)
    }

    /// Pauses: the step in progress is stopped and runs again from its
    /// start on [`resume`](Self::resume). Traffic stays as it is.
    pub fn pause(&self) -> Result<()> {
        self.send(Command::Pause)
    }

    /// Resumes after [`pause`](Self::pause) or an inconclusive analysis.
    pub fn resume(&self) -> Result<()> {
        self.send(Command::Resume)
    }

    /// Aborts: all traffic returns to the stable slot in one router call
    /// and the new slot is scaled down. Ignored once the rollout is promoted.
    pub fn abort(&self) -> Result<()> {
        self.send(Command::Abort)
    }

    /// Waits for the rollout to end. An `Err` means the engine stopped
    /// without finishing (the store failed or the lease was lost); the
    /// state in the store is intact and [`Engine::resume`] takes over.
    pub async fn wait(self) -> Result<Outcome> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(Error::backend(
                "engine",
                format!("rollout task failed: {e}"),
            )),
        }
    }
}

/// How a step ended.
enum StepEnd {
    Done,
    /// A `Pause(None)` step: wait for promotion.
    WaitForPromotion,
    /// Inconclusive analysis under the pause policy.
    Inconclusive(String),
    /// Roll back for this reason.
    Failed(String),
}

/// What a step changed that the state must record.
struct StepResult {
    end: StepEnd,
    weight: Option<Weight>,
}

impl StepResult {
    fn done() -> Self {
        StepResult {
            end: StepEnd::Done,
            weight: None,
        }
    }
    fn failed(reason: String) -> Self {
        StepResult {
            end: StepEnd::Failed(reason),
            weight: None,
        }
    }
}

/// What a step needs, owned, so the step future borrows nothing from the
/// driver and commands can be handled while it runs.
#[derive(Clone)]
struct StepContext {
    inner: Arc<Inner>,
    rollout_id: String,
    rollout: Arc<Rollout>,
    stable: Slot,
    initial: bool,
    stable_version: Option<String>,
}

impl StepContext {
    fn service(&self) -> &ServiceName {
        &self.rollout.service
    }
    fn canary(&self) -> Slot {
        self.stable.other()
    }
    fn emit(&self, kind: EventKind) {
        self.inner.emit(self.service(), &self.rollout_id, kind);
    }

    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        let inner = &self.inner;
        inner
            .retry
            .run("router.set_split", || {
                inner.router.set_split(self.service(), &split)
            })
            .await?;
        self.emit(EventKind::WeightChanged { split });
        Ok(())
    }

    async fn set_endpoints(&self, slot: Slot, endpoints: &[Endpoint]) -> Result<()> {
        let inner = &self.inner;
        inner
            .retry
            .run("router.set_endpoints", || {
                inner.router.set_endpoints(self.service(), slot, endpoints)
            })
            .await
    }

    async fn execute(self, step: Step) -> Result<StepResult> {
        let deadline = self.rollout.progress_deadline;
        match step {
            Step::Pause(Some(d)) => {
                tokio::time::sleep(d).await;
                Ok(StepResult::done())
            }
            Step::Pause(None) => Ok(StepResult {
                end: StepEnd::WaitForPromotion,
                weight: None,
            }),
            Step::Analysis { template } => self.analysis(&template).await,
            Step::ScaleDownOld { delay } => {
                tokio::time::sleep(delay).await;
                let r = self
                    .bounded(deadline, &step, self.scale_down(self.stable))
                    .await?;
                if !matches!(r.end, StepEnd::Done) {
                    return Ok(r);
                }
                self.bounded(deadline, &step, self.run_hooks(HookPoint::AfterScaleDown))
                    .await
            }
            other => {
                let what = other.clone();
                self.bounded(deadline, &what, self.platform_step(other))
                    .await
            }
        }
    }

    async fn bounded(
        &self,
        deadline: Duration,
        step: &Step,
        fut: impl Future<Output = Result<StepResult>>,
    ) -> Result<StepResult> {
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Ok(StepResult::failed(
                Error::deadline(format!("step '{step}'"), deadline).to_string(),
            )),
        }
    }

    async fn platform_step(&self, step: Step) -> Result<StepResult> {
        let inner = &self.inner;
        let service = self.service();
        let canary = self.canary();
        match step {
            Step::Deploy { replicas } => {
                let hooks = self.run_hooks(HookPoint::BeforeDeploy).await?;
                if !matches!(hooks.end, StepEnd::Done) {
                    return Ok(hooks);
                }
                let release = &self.rollout.release;
                inner
                    .retry
                    .run("workloads.deploy", || {
                        inner.workloads.deploy(service, canary, release, replicas)
                    })
                    .await?;
                self.await_ready(replicas).await
            }
            Step::AwaitHealthy => {
                let status = self.status(canary).await?;
                if let Some(failed) = self.probe_all(&status.endpoints).await {
                    return Ok(StepResult::failed(failed));
                }
                self.set_endpoints(canary, &status.endpoints).await?;
                Ok(StepResult::done())
            }
            Step::ScaleCanary { replicas } => {
                let before = self.status(canary).await?;
                let keep = replicas as usize;
                if keep < before.endpoints.len() {
                    // Drain the replicas that go before stopping them.
                    self.set_endpoints(canary, &before.endpoints[..keep])
                        .await?;
                }
                inner
                    .retry
                    .run("workloads.scale", || {
                        inner.workloads.scale(service, canary, replicas)
                    })
                    .await?;
                let r = self.await_ready(replicas).await?;
                if !matches!(r.end, StepEnd::Done) {
                    return Ok(r);
                }
                let after = self.status(canary).await?;
                let new: Vec<Endpoint> = after
                    .endpoints
                    .iter()
                    .filter(|e| !before.endpoints.contains(e))
                    .cloned()
                    .collect();
                if let Some(failed) = self.probe_all(&new).await {
                    return Ok(StepResult::failed(failed));
                }
                self.set_endpoints(canary, &after.endpoints).await?;
                Ok(StepResult::done())
            }
            Step::SetWeight(w) => {
                let mut split = TrafficSplit::new(self.stable, w.percent())?;
                if let Some(m) = self.rollout.strategy.canary_match() {
                    split = split.with_canary_match(m.clone());
                }
                self.set_split(split).await?;
                Ok(StepResult {
                    end: StepEnd::Done,
                    weight: Some(w),
                })
            }
            Step::Promote => {
                self.set_split(TrafficSplit::all_to(canary)).await?;
                Ok(StepResult {
                    end: StepEnd::Done,
                    weight: Some(Weight::FULL),
                })
            }
            Step::Pause(_) | Step::Analysis { .. } | Step::ScaleDownOld { .. } => {
                unreachable!("handled in execute")
            }
        }
    }

    async fn status(&self, slot: Slot) -> Result<crate::domain::SlotStatus> {
        let inner = &self.inner;
        inner
            .retry
            .run("workloads.status", || {
                inner.workloads.status(self.service(), slot)
            })
            .await
    }

    async fn await_ready(&self, replicas: u32) -> Result<StepResult> {
        let version = &self.rollout.release.version;
        loop {
            let s = self.status(self.canary()).await?;
            if let Some(f) = s.failures.first() {
                return Ok(StepResult::failed(format!("replica failed: {f}")));
            }
            if s.version.as_deref() == Some(version.as_str())
                && s.desired == replicas
                && s.is_ready()
                && s.endpoints.len() == replicas as usize
            {
                return Ok(StepResult::done());
            }
            tokio::time::sleep(self.inner.poll_interval).await;
        }
    }

    /// Probes every endpoint concurrently; the first failure, if any.
    async fn probe_all(&self, endpoints: &[Endpoint]) -> Option<String> {
        let policy = &self.rollout.probe;
        let probe = self.inner.probe.as_ref();
        let runs = endpoints
            .iter()
            .map(|ep| async move { (ep, policy.run(probe, ep).await) });
        let results = futures::future::join_all(runs).await;
        let mut first_failure = None;
        for (ep, r) in results {
            let (healthy, detail) = match &r {
                Ok(attempts) => (true, format!("healthy after {attempts} attempts")),
                Err(f) => (false, f.to_string()),
            };
            self.emit(EventKind::Probed {
                endpoint: ep.clone(),
                healthy,
                detail: detail.clone(),
            });
            if !healthy && first_failure.is_none() {
                first_failure = Some(format!("probe failed: {detail}"));
            }
        }
        first_failure
    }

    async fn analysis(&self, name: &str) -> Result<StepResult> {
        let template = self
            .rollout
            .analysis
            .get(name)
            .ok_or_else(|| Error::not_found(format!("analysis template {name:?}")))?;
        let provider =
            self.inner.metrics.as_ref().ok_or_else(|| {
                Error::invalid("engine.metrics", "analysis needs a metric provider")
            })?;
        let mut args: BTreeMap<String, String> = self.rollout.args.clone();
        args.insert("service".into(), self.service().to_string());
        args.insert("canary".into(), self.canary().to_string());
        args.insert("stable".into(), self.stable.to_string());
        args.insert(
            "canary_version".into(),
            self.rollout.release.version.clone(),
        );
        args.insert(
            "stable_version".into(),
            self.stable_version.clone().unwrap_or_default(),
        );
        let observe = |record: &analysis::MeasurementRecord| {
            self.emit(EventKind::AnalysisMeasured {
                template: name.to_string(),
                record: record.clone(),
            });
        };
        let outcome = analysis::run_template(template, provider.as_ref(), &args, &observe).await?;
        self.emit(EventKind::AnalysisFinished {
            template: name.to_string(),
            phase: outcome.phase,
            message: outcome.message.clone(),
        });
        let reason = format!("analysis {name} {}: {}", outcome.phase, outcome.message);
        Ok(match outcome.phase {
            AnalysisPhase::Successful => StepResult::done(),
            AnalysisPhase::Failed | AnalysisPhase::Error => StepResult::failed(reason),
            AnalysisPhase::Inconclusive => match self.rollout.on_inconclusive {
                InconclusivePolicy::Pause => StepResult {
                    end: StepEnd::Inconclusive(reason),
                    weight: None,
                },
                InconclusivePolicy::Abort => StepResult::failed(reason),
            },
        })
    }

    /// Runs every hook's method for `point`, in order; the first failure
    /// fails the step.
    async fn run_hooks(&self, point: HookPoint) -> Result<StepResult> {
        let ctx = HookContext {
            service: self.service().clone(),
            rollout_id: self.rollout_id.clone(),
            point,
            version: self.rollout.release.version.clone(),
            stable_version: self.stable_version.clone(),
            new_slot: self.canary(),
            old_slot: self.stable,
        };
        for hook in &self.inner.hooks {
            let span = tracing::info_span!("hook", hook = hook.name(), %point);
            let r = match point {
                HookPoint::BeforeDeploy => hook.before_deploy(&ctx).instrument(span).await,
                HookPoint::AfterScaleDown => hook.after_scale_down(&ctx).instrument(span).await,
            };
            self.emit(EventKind::HookRan {
                hook: hook.name().to_string(),
                point,
                error: r.as_ref().err().map(ToString::to_string),
            });
            if let Err(e) = r {
                return Ok(StepResult::failed(format!(
                    "hook {} ({point}) failed: {e}",
                    hook.name()
                )));
            }
        }
        Ok(StepResult::done())
    }

    /// Drains `slot`'s endpoints and scales it to zero.
    async fn scale_down(&self, slot: Slot) -> Result<StepResult> {
        if slot == self.stable && self.initial {
            return Ok(StepResult::done());
        }
        let inner = &self.inner;
        self.set_endpoints(slot, &[]).await?;
        inner
            .retry
            .run("workloads.scale", || {
                inner.workloads.scale(self.service(), slot, 0)
            })
            .await
            .or_else(|e| {
                if matches!(e, Error::NotFound { .. }) {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        Ok(StepResult::done())
    }

    /// All traffic to stable in one router call (unless `traffic_returned`
    /// says it already happened), then the canary down.
    async fn rollback(&self, traffic_returned: bool) -> Result<()> {
        if !traffic_returned {
            self.set_split(TrafficSplit::all_to(self.stable)).await?;
        }
        self.scale_down(self.canary()).await?;
        Ok(())
    }
}

struct Driver {
    inner: Arc<Inner>,
    state: RolloutState,
    version: u64,
    lease: Lease,
    steps: Vec<Step>,
    commands: mpsc::UnboundedReceiver<Command>,
    state_tx: watch::Sender<RolloutState>,
    /// The router already holds the all-stable split of a rollback.
    traffic_returned: bool,
}

/// What interrupted a running step.
enum Interrupt {
    Pause,
    Abort,
    Skip,
}

impl Driver {
    fn context(&self) -> StepContext {
        StepContext {
            inner: self.inner.clone(),
            rollout_id: self.state.id.clone(),
            rollout: Arc::new(self.state.rollout.clone()),
            stable: self.state.stable,
            initial: self.state.initial,
            stable_version: self.state.stable_version.clone(),
        }
    }

    fn emit(&self, kind: EventKind) {
        self.inner
            .emit(&self.state.rollout.service, &self.state.id, kind);
    }

    async fn persist(&mut self) -> Result<()> {
        let v = self
            .inner
            .store
            .compare_and_swap(&self.state.rollout.service, Some(self.version), &self.state)
            .await?;
        self.version = v;
        self.state_tx.send_replace(self.state.clone());
        Ok(())
    }

    async fn renew(&self) -> Result<()> {
        self.inner.store.renew_lease(&self.lease).await
    }

    fn renew_interval(&self) -> tokio::time::Interval {
        let period = self.inner.lease_ttl / 3;
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    }

    async fn run(mut self, resumed: bool) -> Result<Outcome> {
        self.emit(EventKind::Started {
            from_version: self.state.stable_version.clone(),
            to_version: self.state.rollout.release.version.clone(),
            steps: self.steps.len(),
            resumed,
        });
        let reconciled = if resumed {
            self.reconcile().await
        } else {
            Ok(())
        };
        let result = match reconciled {
            Ok(()) => self.drive().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "engine stopped without finishing; resume from the store");
        }
        if let Err(e) = self.inner.store.release_lease(&self.lease).await {
            tracing::warn!(error = %e, "could not release lease");
        }
        result
    }

    async fn drive(&mut self) -> Result<Outcome> {
        loop {
            match self.state.phase.clone() {
                Phase::Promoted => {
                    return Ok(Outcome::Promoted {
                        version: self.state.rollout.release.version.clone(),
                    });
                }
                Phase::RolledBack { reason } => return Ok(Outcome::RolledBack { reason }),
                Phase::RollingBack { reason } => {
                    self.context().rollback(self.traffic_returned).await?;
                    self.state.weight = Weight::ZERO;
                    self.state.phase = Phase::RolledBack {
                        reason: reason.clone(),
                    };
                    self.persist().await?;
                    self.emit(EventKind::RolledBack {
                        reason: reason.clone(),
                    });
                    self.inner.notify(
                        Notification::new(
                            Severity::Critical,
                            format!(
                                "{}: rolled back {} ({reason})",
                                self.state.rollout.service, self.state.rollout.release.version
                            ),
                        )
                        .with_label("service", self.state.rollout.service.as_str())
                        .with_label("rollout", &self.state.id),
                    );
                }
                Phase::Progressing => self.progress().await?,
            }
        }
    }

    fn skippable(&self, step: &Step) -> bool {
        let skipped_by_full = matches!(step, Step::Pause(_) | Step::Analysis { .. })
            || matches!(step, Step::SetWeight(w) if *w < Weight::FULL);
        (self.state.full_promotion && skipped_by_full)
            || (step.is_pause() && self.state.skip_next_pause)
    }

    async fn progress(&mut self) -> Result<()> {
        if self.state.paused {
            return self.wait_while_paused().await;
        }
        let Some(step) = self.steps.get(self.state.step).cloned() else {
            self.state.phase = Phase::Promoted;
            self.persist().await?;
            let version = self.state.rollout.release.version.clone();
            self.emit(EventKind::Promoted {
                version: version.clone(),
            });
            self.inner.notify(
                Notification::new(
                    Severity::Info,
                    format!("{}: promoted {version}", self.state.rollout.service),
                )
                .with_label("service", self.state.rollout.service.as_str())
                .with_label("rollout", &self.state.id),
            );
            return Ok(());
        };
        let index = self.state.step;
        if self.skippable(&step) {
            if step.is_pause() {
                self.state.skip_next_pause = false;
            }
            self.state.step += 1;
            self.persist().await?;
            return Ok(());
        }
        self.emit(EventKind::StepStarted {
            index,
            total: self.steps.len(),
            step: step.clone(),
        });
        let span = tracing::info_span!("step", index, step = %step);
        let fut = self.context().execute(step.clone()).instrument(span);
        tokio::pin!(fut);
        let mut renew = self.renew_interval();
        let interrupted = loop {
            tokio::select! {
                // An adapter that keeps failing is a reason to roll back;
                // only the store and the lease stop the engine.
                r = &mut fut => break Ok(r.unwrap_or_else(|e| StepResult::failed(format!("step '{step}' failed: {e}")))),
                Some(cmd) = self.commands.recv() => {
                    if let Some(i) = self.on_command_during_step(cmd, &step).await? {
                        break Err(i);
                    }
                }
                _ = renew.tick() => self.renew().await?,
            }
        };
        match interrupted {
            Ok(result) => {
                if let Some(w) = result.weight {
                    self.state.weight = w;
                }
                match result.end {
                    StepEnd::Done => {
                        if step == Step::Promote {
                            self.state.promoted = true;
                        }
                        self.state.step += 1;
                        self.persist().await?;
                        self.emit(EventKind::StepFinished { index, step });
                    }
                    StepEnd::WaitForPromotion => {
                        self.state.paused = true;
                        self.persist().await?;
                        self.emit(EventKind::Paused {
                            reason: "waiting for promotion".into(),
                        });
                    }
                    StepEnd::Inconclusive(reason) => {
                        self.state.paused = true;
                        self.persist().await?;
                        self.emit(EventKind::Paused { reason });
                    }
                    StepEnd::Failed(reason) => self.fail(reason).await?,
                }
            }
            Err(Interrupt::Abort) => self.fail("aborted by user".into()).await?,
            Err(Interrupt::Pause) => {
                self.state.paused = true;
                self.persist().await?;
                self.emit(EventKind::Paused {
                    reason: "paused by user".into(),
                });
            }
            Err(Interrupt::Skip) => {
                self.state.step += 1;
                self.persist().await?;
                self.emit(EventKind::StepFinished { index, step });
            }
        }
        Ok(())
    }

    /// A resumed rollout whose canary had traffic but whose router holds
    /// the all-stable split was interrupted between the first two moves of
    /// a rollback (see [`fail`](Self::fail)): finish that rollback.
    async fn reconcile(&mut self) -> Result<()> {
        if self.state.phase != Phase::Progressing
            || self.state.promoted
            || self.state.weight == Weight::ZERO
        {
            return Ok(());
        }
        let inner = self.inner.clone();
        let service = self.state.rollout.service.clone();
        let split = inner
            .retry
            .run("router.split", || inner.router.split(&service))
            .await?;
        if split.is_some_and(|s| s.is_all_to(self.state.stable)) {
            let reason = format!(
                "a rollback was interrupted after traffic returned to {} (canary had {})",
                self.state.stable, self.state.weight
            );
            tracing::warn!(reason, "finishing an interrupted rollback");
            self.traffic_returned = true;
            self.state.phase = Phase::RollingBack {
                reason: reason.clone(),
            };
            self.state.paused = false;
            self.persist().await?;
            self.emit(EventKind::Aborted { reason });
        }
        Ok(())
    }

    async fn fail(&mut self, reason: String) -> Result<()> {
        if self.state.promoted {
            // Past the point of no return: the new release already has all
            // traffic. Stop; a resumed engine retries the step.
            return Err(Error::backend(
                "engine",
                format!("step failed after promotion: {reason}"),
            ));
        }
        // The decision first, so watchers see it before the traffic moves.
        self.emit(EventKind::Aborted {
            reason: reason.clone(),
        });
        if self.state.weight > Weight::ZERO {
            // The canary has traffic: take it away before anything else,
            // because the store write costs an fsync. A crash before the
            // write below leaves a Progressing state with weight > 0 and an
            // all-stable router, which `reconcile` turns back into this
            // rollback.
            match self
                .context()
                .set_split(TrafficSplit::all_to(self.state.stable))
                .await
            {
                Ok(()) => self.traffic_returned = true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not return traffic yet; the rollback retries")
                }
            }
        }
        self.state.phase = Phase::RollingBack {
            reason: reason.clone(),
        };
        self.state.paused = false;
        self.persist().await
    }

    /// Handles a command that arrived while `step` runs. `Some` stops the step.
    async fn on_command_during_step(
        &mut self,
        cmd: Command,
        step: &Step,
    ) -> Result<Option<Interrupt>> {
        Ok(match cmd {
            Command::Abort if self.state.promoted => {
                tracing::warn!("abort ignored: the rollout is already promoted");
                None
            }
            Command::Abort => Some(Interrupt::Abort),
            Command::Pause if self.state.promoted => None,
            Command::Pause => Some(Interrupt::Pause),
            Command::Resume => None,
            Command::Promote if step.is_pause() => Some(Interrupt::Skip),
            Command::Promote => {
                self.state.skip_next_pause = true;
                self.persist().await?;
                None
            }
            Command::PromoteFull => {
                self.state.full_promotion = true;
                self.persist().await?;
                self.skippable(step).then_some(Interrupt::Skip)
            }
        })
    }

    async fn wait_while_paused(&mut self) -> Result<()> {
        let mut renew = self.renew_interval();
        loop {
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else {
                        // Every handle is gone, so nobody can resume the
                        // rollout through this engine: stop and free the
                        // lease, so a new engine can take it over.
                        return Err(Error::precondition("rollout paused and every handle dropped"));
                    };
                    let at_pause_step = self.steps.get(self.state.step).is_some_and(Step::is_pause);
                    match cmd {
                        Command::Abort => return self.fail("aborted by user".into()).await,
                        Command::Pause => {}
                        Command::Resume => {
                            self.state.paused = false;
                            self.persist().await?;
                            self.emit(EventKind::Resumed);
                            return Ok(());
                        }
                        Command::Promote | Command::PromoteFull => {
                            self.state.paused = false;
                            if cmd == Command::PromoteFull {
                                self.state.full_promotion = true;
                            }
                            let skip_current = at_pause_step
                                || matches!(self.steps.get(self.state.step), Some(Step::Analysis { .. }));
                            if skip_current {
                                let index = self.state.step;
                                self.state.step += 1;
                                self.persist().await?;
                                self.emit(EventKind::Resumed);
                                if let Some(step) = self.steps.get(index).cloned() {
                                    self.emit(EventKind::StepFinished { index, step });
                                }
                            } else {
                                self.persist().await?;
                                self.emit(EventKind::Resumed);
                            }
                            return Ok(());
                        }
                    }
                }
                _ = renew.tick() => self.renew().await?,
            }
        }
    }
}
