//! Fault injection: one [`FaultPlan`] of rules, one wrapper [`Faulty<T>`]
//! that applies it to any adapter trait.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::guard::lock;
use crate::domain::{Endpoint, Release, ServiceName, Slot, SlotStatus, TrafficSplit};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Measurement, MetricProvider, MetricQuery};
use crate::notify::{Notification, Notifier};
use crate::probe::{HealthProbe, ProbeOutcome};
use crate::router::TrafficRouter;
use crate::state::{Lease, RolloutState, StateStore, Versioned};
use crate::workloads::Workloads;

/// The backend name injected errors carry, so logs show they are not real.
pub const FAULT_BACKEND: &str = "fault-injection";

/// A trait method, as fault rules and call counters name it.
///
/// The constants cover every method of the core adapter traits; wrappers of
/// other traits (backup targets, drivers) name theirs with [`Method::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Method(&'static str);

impl Method {
    /// [`Workloads::deploy`].
    pub const DEPLOY: Method = Method("deploy");
    /// [`Workloads::scale`].
    pub const SCALE: Method = Method("scale");
    /// [`Workloads::status`].
    pub const STATUS: Method = Method("status");
    /// [`TrafficRouter::set_split`].
    pub const SET_SPLIT: Method = Method("set_split");
    /// [`TrafficRouter::split`].
    pub const SPLIT: Method = Method("split");
    /// [`TrafficRouter::set_endpoints`].
    pub const SET_ENDPOINTS: Method = Method("set_endpoints");
    /// [`HealthProbe::check`].
    pub const CHECK: Method = Method("check");
    /// [`MetricProvider::measure`].
    pub const MEASURE: Method = Method("measure");
    /// [`StateStore::load`].
    pub const LOAD: Method = Method("load");
    /// [`StateStore::compare_and_swap`].
    pub const COMPARE_AND_SWAP: Method = Method("compare_and_swap");
    /// [`StateStore::acquire_lease`].
    pub const ACQUIRE_LEASE: Method = Method("acquire_lease");
    /// [`StateStore::renew_lease`].
    pub const RENEW_LEASE: Method = Method("renew_lease");
    /// [`StateStore::release_lease`].
    pub const RELEASE_LEASE: Method = Method("release_lease");
    /// [`Notifier::notify`].
    pub const NOTIFY: Method = Method("notify");

    /// A method named `name`, for wrappers of traits outside this module.
    pub const fn new(name: &'static str) -> Self {
        Method(name)
    }

    /// The method's name.
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FaultErrorKind {
    Transient,
    Backend,
    Conflict,
    NotFound,
    Precondition,
    Deadline(Duration),
}

/// The error an injected fault returns: a category and a message. Turned
/// into an [`Error`] (backend [`FAULT_BACKEND`], message prefixed with the
/// method) on every injection, since [`Error`] is not `Clone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultError {
    kind: FaultErrorKind,
    message: String,
}

impl FaultError {
    /// A [transient](Error::Transient) error: the engine retries it.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::of(FaultErrorKind::Transient, message)
    }

    /// A [backend](Error::Backend) error: not retried.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::of(FaultErrorKind::Backend, message)
    }

    /// A [conflict](Error::Conflict).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::of(FaultErrorKind::Conflict, message)
    }

    /// A [not found](Error::NotFound).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::of(FaultErrorKind::NotFound, message)
    }

    /// A [precondition](Error::Precondition) failure.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::of(FaultErrorKind::Precondition, message)
    }

    /// A [deadline](Error::Deadline) error, as if the call ran out of `after`.
    pub fn deadline(message: impl Into<String>, after: Duration) -> Self {
        Self::of(FaultErrorKind::Deadline(after), message)
    }

    fn of(kind: FaultErrorKind, message: impl Into<String>) -> Self {
        FaultError {
            kind,
            message: message.into(),
        }
    }

    /// The category of the [`Error`] this becomes.
    pub fn kind(&self) -> ErrorKind {
        match self.kind {
            FaultErrorKind::Transient => ErrorKind::Transient,
            FaultErrorKind::Backend => ErrorKind::Backend,
            FaultErrorKind::Conflict => ErrorKind::Conflict,
            FaultErrorKind::NotFound => ErrorKind::NotFound,
            FaultErrorKind::Precondition => ErrorKind::Precondition,
            FaultErrorKind::Deadline(_) => ErrorKind::Deadline,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The [`Error`] a call of `method` returns for this fault.
    pub fn to_error(&self, method: Method) -> Error {
        let message = format!("{method}: {} (injected)", self.message);
        match self.kind {
            FaultErrorKind::Transient => Error::transient(FAULT_BACKEND, message),
            FaultErrorKind::Backend => Error::backend(FAULT_BACKEND, message),
            FaultErrorKind::Conflict => Error::conflict(message),
            FaultErrorKind::NotFound => Error::not_found(message),
            FaultErrorKind::Precondition => Error::precondition(message),
            FaultErrorKind::Deadline(after) => Error::deadline(message, after),
        }
    }
}

/// When a [`Fault`] fires. Calls are numbered from 1 per method (or across
/// all methods for a fault without [`Fault::on`]).
#[derive(Debug, Clone, PartialEq)]
enum Trigger {
    Always,
    Nth(u64),
    First(u64),
    AfterCalls(u64),
    AfterSuccesses(u64),
    Percent(f64),
}

/// What a [`Fault`] does when it fires.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Fail(FaultError),
    LoseResponse(FaultError),
    Delay(Duration),
}

/// One rule of a [`FaultPlan`]: an effect (fail, lose the response, delay),
/// the method it applies to (default: every method) and when it fires
/// (default: on every call).
///
/// ```
/// use std::time::Duration;
/// use atlas_core::testing::{Fault, FaultError, Method};
/// // A state store that crashes after 5 successful writes:
/// let crash = Fault::fail(FaultError::backend("store crashed"))
///     .on(Method::COMPARE_AND_SWAP)
///     .after_successes(5);
/// // A flaky router: a fifth of all calls fail, retryably.
/// let flaky = Fault::fail(FaultError::transient("503")).percent(20.0);
/// // A slow platform.
/// let slow = Fault::delay(Duration::from_secs(2)).on(Method::DEPLOY);
/// # let _ = (crash, flaky, slow);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    method: Option<Method>,
    trigger: Trigger,
    effect: Effect,
}

impl Fault {
    /// The call fails with `error` before it reaches the wrapped adapter.
    pub fn fail(error: FaultError) -> Self {
        Self::with_effect(Effect::Fail(error))
    }

    /// The call reaches the wrapped adapter and takes effect there, but the
    /// caller gets `error` instead of the result: a lost response, the
    /// ambiguous outcome idempotent callers must survive.
    pub fn lose_response(error: FaultError) -> Self {
        Self::with_effect(Effect::LoseResponse(error))
    }

    /// The call waits `latency` (tokio time) before it proceeds. Delays of
    /// every firing rule add up.
    pub fn delay(latency: Duration) -> Self {
        Self::with_effect(Effect::Delay(latency))
    }

    fn with_effect(effect: Effect) -> Self {
        Fault {
            method: None,
            trigger: Trigger::Always,
            effect,
        }
    }

    /// Applies only to calls of `method`; the call numbers and success
    /// counts below are then that method's.
    pub fn on(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Fires on every call (the default).
    pub fn always(mut self) -> Self {
        self.trigger = Trigger::Always;
        self
    }

    /// Fires on call number `n` only (the first call is 1).
    pub fn nth_call(mut self, n: u64) -> Self {
        self.trigger = Trigger::Nth(n);
        self
    }

    /// Fires on calls 1 to `n`.
    pub fn first_calls(mut self, n: u64) -> Self {
        self.trigger = Trigger::First(n);
        self
    }

    /// Fires on every call after the `n`th: calls `n + 1`, `n + 2`, …
    pub fn after_calls(mut self, n: u64) -> Self {
        self.trigger = Trigger::AfterCalls(n);
        self
    }

    /// Fires on every call once `n` calls have succeeded (returned `Ok`, or
    /// a healthy outcome for probes): simulates a backend that crashes
    /// after `n` good calls.
    pub fn after_successes(mut self, n: u64) -> Self {
        self.trigger = Trigger::AfterSuccesses(n);
        self
    }

    /// Fires on each call with probability `percent` / 100, drawn from the
    /// plan's seeded generator, so the same calls in the same order meet
    /// the same faults.
    pub fn percent(mut self, percent: f64) -> Self {
        self.trigger = Trigger::Percent(percent);
        self
    }

    fn validate(&self) -> Result<()> {
        match self.trigger {
            Trigger::Nth(0) => Err(Error::invalid(
                "fault.nth_call",
                "calls are numbered from 1",
            )),
            Trigger::Percent(p) if !(0.0..=100.0).contains(&p) => Err(Error::invalid(
                "fault.percent",
                format!("must be between 0 and 100, got {p}"),
            )),
            _ => Ok(()),
        }
    }
}

/// How many calls of one method (or of all) a wrapper saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls made, including those failed by a fault.
    pub calls: u64,
    /// Calls that returned `Ok` (for probes: a healthy outcome).
    pub successes: u64,
    /// Calls that returned an error, injected or from the wrapped adapter
    /// (for probes: an unhealthy outcome).
    pub failures: u64,
    /// Calls failed by a fault (a subset of `failures`).
    pub injected: u64,
}

/// The default seed of [`FaultPlan::new`].
pub const DEFAULT_SEED: u64 = 0x00a7_1a55;

struct PlanState {
    faults: Vec<Fault>,
    rng: StdRng,
    by_method: BTreeMap<Method, CallCounts>,
    total: CallCounts,
}

/// A shared, cloneable set of [`Fault`]s and the call counters of every
/// wrapper using it. Clones share everything, so a test keeps one clone to
/// add faults, clear them ("the backend recovered") and read counters while
/// the wrapped adapter is owned by the engine.
///
/// Rules are checked in the order added; the delays of all firing rules
/// add up, and the first firing failure wins.
///
/// ```
/// use atlas_core::testing::{Fault, FaultError, FaultPlan, MemoryStateStore, Method};
/// let plan = FaultPlan::new();
/// plan.add(
///     Fault::fail(FaultError::backend("store crashed"))
///         .on(Method::COMPARE_AND_SWAP)
///         .after_successes(5),
/// )?;
/// let store = plan.wrap(MemoryStateStore::new());
/// // hand `store` to the engine; later: plan.counts(Method::COMPARE_AND_SWAP)
/// # let _ = store;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Clone)]
pub struct FaultPlan {
    state: Arc<std::sync::Mutex<PlanState>>,
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("FaultPlan")
            .field("faults", &s.faults)
            .field("total", &s.total)
            .finish_non_exhaustive()
    }
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::new()
    }
}

/// What the rules decided for one call.
struct Decision {
    delay: Duration,
    fail: Option<FaultError>,
    lose: Option<FaultError>,
}

impl FaultPlan {
    /// An empty plan (every call passes through), seeded with
    /// [`DEFAULT_SEED`].
    pub fn new() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }

    /// An empty plan whose percentage faults draw from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        FaultPlan {
            state: Arc::new(std::sync::Mutex::new(PlanState {
                faults: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                by_method: BTreeMap::new(),
                total: CallCounts::default(),
            })),
        }
    }

    /// Adds `fault`. Fails with [`InvalidInput`](Error::InvalidInput) for a
    /// percentage outside 0–100 or a call number of 0.
    pub fn add(&self, fault: Fault) -> Result<()> {
        fault.validate()?;
        tracing::debug!(?fault, "fault added");
        lock(&self.state).faults.push(fault);
        Ok(())
    }

    /// Removes every fault; counters are kept.
    pub fn clear(&self) {
        tracing::debug!("faults cleared");
        lock(&self.state).faults.clear();
    }

    /// Wraps `inner` in a [`Faulty`] driven by this plan.
    pub fn wrap<T>(&self, inner: T) -> Faulty<T> {
        Faulty::new(inner, self.clone())
    }

    /// The counters of `method`.
    pub fn counts(&self, method: Method) -> CallCounts {
        lock(&self.state)
            .by_method
            .get(&method)
            .copied()
            .unwrap_or_default()
    }

    /// Calls of `method` made so far.
    pub fn calls(&self, method: Method) -> u64 {
        self.counts(method).calls
    }

    /// The counters over every method.
    pub fn total(&self) -> CallCounts {
        lock(&self.state).total
    }

    fn decide(&self, method: Method) -> Decision {
        let mut s = lock(&self.state);
        let s = &mut *s;
        s.total.calls += 1;
        let own = s.by_method.entry(method).or_default();
        own.calls += 1;
        let own = *own;
        let mut d = Decision {
            delay: Duration::ZERO,
            fail: None,
            lose: None,
        };
        for fault in &s.faults {
            let counts = match fault.method {
                Some(m) if m != method => continue,
                Some(_) => own,
                None => s.total,
            };
            let fires = match fault.trigger {
                Trigger::Always => true,
                Trigger::Nth(n) => counts.calls == n,
                Trigger::First(n) => counts.calls <= n,
                Trigger::AfterCalls(n) => counts.calls > n,
                Trigger::AfterSuccesses(n) => counts.successes >= n,
                Trigger::Percent(p) => s.rng.random::<f64>() * 100.0 < p,
            };
            if !fires {
                continue;
            }
            match &fault.effect {
                Effect::Delay(l) => d.delay += *l,
                Effect::Fail(e) if d.fail.is_none() && d.lose.is_none() => d.fail = Some(e.clone()),
                Effect::LoseResponse(e) if d.fail.is_none() && d.lose.is_none() => {
                    d.lose = Some(e.clone())
                }
                _ => {}
            }
        }
        d
    }

    fn record(&self, method: Method, success: bool, injected: bool) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        bump(&mut s.total, success, injected);
        bump(s.by_method.entry(method).or_default(), success, injected);
    }

    /// Runs `call` (a call of `method` on the wrapped adapter) under the
    /// plan: waits the injected latency, then fails, or runs it and maybe
    /// loses its response. `succeeded` tells counters what counts as a
    /// success. `Err` carries the injected fault.
    async fn run<R>(
        &self,
        method: Method,
        call: impl Future<Output = R>,
        succeeded: impl Fn(&R) -> bool,
    ) -> std::result::Result<R, FaultError> {
        let d = self.decide(method);
        if !d.delay.is_zero() {
            tracing::debug!(%method, delay = ?d.delay, "injecting latency");
            tokio::time::sleep(d.delay).await;
        }
        if let Some(e) = d.fail {
            tracing::debug!(%method, error = %e.message, "injecting failure");
            self.record(method, false, true);
            return Err(e);
        }
        let r = call.await;
        if let Some(e) = d.lose {
            tracing::debug!(%method, error = %e.message, "losing response");
            self.record(method, false, true);
            return Err(e);
        }
        self.record(method, succeeded(&r), false);
        Ok(r)
    }

    /// Runs `call`, a call of `method` on a wrapped adapter, under this
    /// plan, and counts it. This is how a wrapper of any trait applies the
    /// plan; [`Faulty`] uses it for every core trait.
    ///
    /// Injected faults come back as their [`FaultError::to_error`].
    pub async fn call<R>(
        &self,
        method: Method,
        call: impl Future<Output = Result<R>>,
    ) -> Result<R> {
        match self.run(method, call, |r| r.is_ok()).await {
            Ok(r) => r,
            Err(fault) => Err(fault.to_error(method)),
        }
    }
}

fn bump(c: &mut CallCounts, success: bool, injected: bool) {
    if success {
        c.successes += 1;
    } else {
        c.failures += 1;
    }
    if injected {
        c.injected += 1;
    }
}

/// Any adapter `T` with the faults of a [`FaultPlan`] applied. Implements
/// every core adapter trait `T` implements.
///
/// For [`HealthProbe`], whose `check` has no error, an injected fault is an
/// [`Unhealthy`](ProbeOutcome::Unhealthy) outcome carrying the fault's
/// message.
///
/// ```
/// use std::sync::Arc;
/// use atlas_core::StateStore;
/// use atlas_core::testing::{Fault, FaultError, Faulty, MemoryStateStore, Method};
/// let store = Faulty::new(MemoryStateStore::new(), Default::default());
/// store.plan().add(Fault::fail(FaultError::transient("timeout")).on(Method::LOAD).nth_call(1))?;
/// let store: Arc<dyn StateStore> = Arc::new(store);
/// # let _ = store;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Faulty<T> {
    inner: T,
    plan: FaultPlan,
}

impl<T> Faulty<T> {
    /// `inner` under `plan`.
    pub fn new(inner: T, plan: FaultPlan) -> Self {
        Faulty { inner, plan }
    }

    /// The plan: add faults, read counters.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
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
impl<T: Workloads> Workloads for Faulty<T> {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()> {
        let call = self.inner.deploy(service, slot, release, replicas);
        self.plan.call(Method::DEPLOY, call).await
    }

    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
        let call = self.inner.scale(service, slot, replicas);
        self.plan.call(Method::SCALE, call).await
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        let call = self.inner.status(service, slot);
        self.plan.call(Method::STATUS, call).await
    }
}

#[async_trait]
impl<T: TrafficRouter> TrafficRouter for Faulty<T> {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let call = self.inner.set_split(service, split);
        self.plan.call(Method::SET_SPLIT, call).await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        let call = self.inner.split(service);
        self.plan.call(Method::SPLIT, call).await
    }

    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        let call = self.inner.set_endpoints(service, slot, endpoints);
        self.plan.call(Method::SET_ENDPOINTS, call).await
    }
}

#[async_trait]
impl<T: HealthProbe> HealthProbe for Faulty<T> {
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
        let call = self.inner.check(endpoint, timeout);
        match self
            .plan
            .run(Method::CHECK, call, ProbeOutcome::is_healthy)
            .await
        {
            Ok(outcome) => outcome,
            Err(fault) => ProbeOutcome::unhealthy(format!("{} (injected)", fault.message)),
        }
    }
}

#[async_trait]
impl<T: MetricProvider> MetricProvider for Faulty<T> {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        let call = self.inner.measure(query);
        self.plan.call(Method::MEASURE, call).await
    }
}

#[async_trait]
impl<T: StateStore> StateStore for Faulty<T> {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        let call = self.inner.load(service);
        self.plan.call(Method::LOAD, call).await
    }

    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        let call = self.inner.compare_and_swap(service, expected, state);
        self.plan.call(Method::COMPARE_AND_SWAP, call).await
    }

    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        let call = self.inner.acquire_lease(service, holder, ttl);
        self.plan.call(Method::ACQUIRE_LEASE, call).await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        let call = self.inner.renew_lease(lease);
        self.plan.call(Method::RENEW_LEASE, call).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let call = self.inner.release_lease(lease);
        self.plan.call(Method::RELEASE_LEASE, call).await
    }
}

#[async_trait]
impl<T: Notifier> Notifier for Faulty<T> {
    async fn notify(&self, notification: &Notification) -> Result<()> {
        let call = self.inner.notify(notification);
        self.plan.call(Method::NOTIFY, call).await
    }
}
