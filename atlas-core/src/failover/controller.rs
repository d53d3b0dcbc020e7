//! [`FailoverController`]: the loop that checks regions, decides and acts,
//! its builder, and the [`FailoverHandle`] that steers a running one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::check::{Checks, Fired, Monitor};
use super::events::{FailoverEvent, FailoverEventKind, trace};
use super::policy::{Failback, FailoverPolicy};
use super::store::{FailedRegion, FailoverState, FailoverStore, Transition, TransitionKind};
use super::weights::redistribute;
use crate::database::DatabaseFailover;
use crate::domain::{Endpoint, ServiceName};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::MetricProvider;
use crate::notify::{Notification, Notifier, Severity};
use crate::probe::HealthProbe;
use crate::region::{RegionName, RegionRouter, RegionSet};
use crate::retry::{RetryConfig, Retrying};
use crate::state::{Lease, StateStore};

/// How many events a subscriber may fall behind before it loses the oldest.
const EVENT_BUFFER: usize = 1024;

/// The suffix of the lease key: `<service>-failover`.
const LEASE_SUFFIX: &str = "-failover";

/// Builds a [`FailoverController`]. The service, its regions, a region
/// router, a failover store and a lease store are required; a probe is
/// required by the health trigger, a metric provider by metric triggers,
/// a database by the database trigger.
#[must_use]
pub struct FailoverControllerBuilder {
    service: Option<ServiceName>,
    regions: Option<RegionSet>,
    policy: FailoverPolicy,
    router: Option<Arc<dyn RegionRouter>>,
    store: Option<Arc<dyn FailoverStore>>,
    leases: Option<Arc<dyn StateStore>>,
    probe: Option<Arc<dyn HealthProbe>>,
    endpoints: BTreeMap<RegionName, Vec<Endpoint>>,
    metrics: Option<Arc<dyn MetricProvider>>,
    database: Option<Arc<dyn DatabaseFailover>>,
    database_region: Option<RegionName>,
    lease_ttl: Duration,
    retry: RetryConfig,
    notifiers: Vec<Arc<dyn Notifier>>,
}

impl FailoverControllerBuilder {
    /// The service whose regions this controller drives.
    pub fn service(mut self, service: ServiceName) -> Self {
        self.service = Some(service);
        self
    }
    /// Its regions and their configured weights.
    pub fn regions(mut self, regions: RegionSet) -> Self {
        self.regions = Some(regions);
        self
    }
    /// The policy. Default [`FailoverPolicy::specification`].
    pub fn policy(mut self, policy: FailoverPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// The router that moves traffic between regions.
    pub fn router(mut self, router: Arc<dyn RegionRouter>) -> Self {
        self.router = Some(router);
        self
    }
    /// One store for both the failover state and the lease (every store
    /// Atlas ships implements both).
    pub fn store<S: FailoverStore + StateStore + 'static>(mut self, store: Arc<S>) -> Self {
        self.store = Some(store.clone());
        self.leases = Some(store);
        self
    }
    /// Where the failover state is persisted.
    pub fn failover_store(mut self, store: Arc<dyn FailoverStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// The [`StateStore`] that grants the controller's lease. For the
    /// rollout interlock it must be the store the service's rollout engine
    /// uses: the controller reads the rollout state there.
    pub fn lease_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.leases = Some(store);
        self
    }
    /// The probe that checks region endpoints (health trigger).
    pub fn probe(mut self, probe: Arc<dyn HealthProbe>) -> Self {
        self.probe = Some(probe);
        self
    }
    /// Adds an endpoint of `region` to probe: a region's check passes when
    /// one of its endpoints answers healthy.
    pub fn endpoint(mut self, region: RegionName, endpoint: Endpoint) -> Self {
        self.endpoints.entry(region).or_default().push(endpoint);
        self
    }
    /// The metric provider metric triggers query.
    pub fn metrics(mut self, metrics: Arc<dyn MetricProvider>) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// The primary/standby database to switch. Without one the controller
    /// only moves traffic.
    pub fn database(mut self, database: Arc<dyn DatabaseFailover>) -> Self {
        self.database = Some(database);
        self
    }
    /// The region that holds the primary database: its failover switches
    /// the database too. Without it only the database trigger does.
    pub fn database_region(mut self, region: RegionName) -> Self {
        self.database_region = Some(region);
        self
    }
    /// Lease duration; renewed every third of it. Default 15 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
    /// Adds a notifier: it hears of every finished failover and failback,
    /// of healthy regions short of capacity, and of a failover that is
    /// impossible. Notifiers never hold the controller up; their failures
    /// are logged.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifiers.push(notifier);
        self
    }
    /// How calls to the region router and the two stores that fail with a
    /// transient error are retried ([`build`](Self::build) wraps each in a
    /// [`Retrying`]); default [`RetryConfig::control_plane`], as for the
    /// rollout engine. A router call still failing after its retries is
    /// tried again at the next check; a store call still failing stops the
    /// controller. The database is not wrapped: a promotion whose outcome
    /// is unknown is not safe to repeat at once, so failed database actions
    /// wait for the next check.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Checks the settings and builds the controller.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: `failover.service`,
    /// `failover.regions`, `failover.router`, `failover.store`,
    /// `failover.lease_store` when missing; `failover.service` when the
    /// service name leaves no room for the `-failover` lease suffix (54
    /// characters at most); the policy's own rules
    /// ([`FailoverPolicy::validate`]); `failover.probe`,
    /// `failover.endpoints.<region>`, `failover.metrics_provider`,
    /// `failover.database` when a trigger needs what is not given; an
    /// endpoint, database region or capacity naming a region not in the
    /// set; `failover.lease_ttl` under 30 ms; `failover.retry.*`.
    pub fn build(self) -> Result<FailoverController> {
        let missing = |what: &str| Error::invalid(format!("failover.{what}"), "is required");
        let service = self.service.ok_or_else(|| missing("service"))?;
        let regions = self.regions.ok_or_else(|| missing("regions"))?;
        let router = self.router.ok_or_else(|| missing("router"))?;
        let store = self.store.ok_or_else(|| missing("store"))?;
        let leases = self.leases.ok_or_else(|| missing("lease_store"))?;
        let lease_key = ServiceName::new(format!("{service}{LEASE_SUFFIX}")).map_err(|_| {
            Error::invalid(
                "failover.service",
                format!(
                    "{service:?} leaves no room for the lease key {service}{LEASE_SUFFIX} \
                     (service names of at most 54 characters have room)"
                ),
            )
        })?;
        let policy = self.policy;
        policy.validate()?;
        self.retry.validate("failover.retry")?;
        if self.lease_ttl < Duration::from_millis(30) {
            return Err(Error::invalid(
                "failover.lease_ttl",
                "must be at least 30ms",
            ));
        }
        let known = |r: &RegionName, field: String| -> Result<()> {
            match regions.get(r) {
                Some(_) => Ok(()),
                None => Err(Error::invalid(
                    field,
                    format!("region {r} is not in the region set"),
                )),
            }
        };
        for r in self.endpoints.keys() {
            known(r, format!("failover.endpoints.{r}"))?;
        }
        for r in policy.capacity.max_share.keys() {
            known(r, format!("failover.capacity.max_share.{r}"))?;
        }
        if let Some(r) = &self.database_region {
            known(r, "failover.database_region".into())?;
        }
        if policy.health.is_some() {
            if self.probe.is_none() {
                return Err(Error::invalid(
                    "failover.probe",
                    "the policy has a health trigger, so the controller needs a probe",
                ));
            }
            for r in regions.regions() {
                if self.endpoints.get(&r.name).is_none_or(Vec::is_empty) {
                    return Err(Error::invalid(
                        format!("failover.endpoints.{}", r.name),
                        "the policy has a health trigger, so every region needs an endpoint",
                    ));
                }
            }
        }
        if !policy.metrics.is_empty() && self.metrics.is_none() {
            return Err(Error::invalid(
                "failover.metrics_provider",
                "the policy has metric triggers, so the controller needs a metric provider",
            ));
        }
        if policy.database.is_some() && self.database.is_none() {
            return Err(Error::invalid(
                "failover.database",
                "the policy has a database trigger, so the controller needs a database \
                 (or set the policy's database trigger to None)",
            ));
        }
        if self.database_region.is_some() && self.database.is_none() {
            return Err(Error::invalid(
                "failover.database_region",
                "is set but the controller has no database",
            ));
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let id = format!("atlas-failover-{:016x}", rand::rng().random::<u64>());
        tracing::debug!(controller = %id, %service, "failover controller built");
        Ok(FailoverController {
            inner: Arc::new(Inner {
                id,
                service: service.clone(),
                lease_key,
                regions,
                checks: Checks {
                    service,
                    policy,
                    probe: self.probe,
                    endpoints: self.endpoints,
                    metrics: self.metrics,
                    database: self.database.clone(),
                },
                router: Arc::new(Retrying::new(router, self.retry.clone())?),
                store: Arc::new(Retrying::new(store, self.retry.clone())?),
                leases: Arc::new(Retrying::new(leases, self.retry)?),
                database: self.database,
                database_region: self.database_region,
                lease_ttl: self.lease_ttl,
                events,
                notifiers: self.notifiers,
            }),
        })
    }
}

struct Inner {
    id: String,
    service: ServiceName,
    lease_key: ServiceName,
    regions: RegionSet,
    checks: Checks,
    router: Arc<dyn RegionRouter>,
    store: Arc<dyn FailoverStore>,
    leases: Arc<dyn StateStore>,
    database: Option<Arc<dyn DatabaseFailover>>,
    database_region: Option<RegionName>,
    lease_ttl: Duration,
    events: broadcast::Sender<FailoverEvent>,
    notifiers: Vec<Arc<dyn Notifier>>,
}

impl Inner {
    fn policy(&self) -> &FailoverPolicy {
        &self.checks.policy
    }

    fn emit(&self, kind: FailoverEventKind) {
        trace(&self.service, &kind);
        self.notify(&kind);
        // No subscribers is fine: events are also logged.
        let _ = self.events.send(FailoverEvent {
            service: self.service.clone(),
            at: SystemTime::now(),
            kind,
        });
    }
}

impl Inner {
    /// The notification of `kind`, if it is one people hear of.
    fn notify(&self, kind: &FailoverEventKind) {
        let svc = &self.service;
        let (severity, summary) = match kind {
            FailoverEventKind::FailoverDone { after } => (
                Severity::Critical,
                format!(
                    "{svc}: failed over in {}",
                    humantime::format_duration(*after)
                ),
            ),
            FailoverEventKind::FailbackDone { weights, .. } => (
                Severity::Info,
                format!("{svc}: failed back, traffic {weights}"),
            ),
            FailoverEventKind::CapacityShort { short_by } => (
                Severity::Critical,
                format!("{svc}: healthy regions are {short_by} % of traffic short of capacity"),
            ),
            FailoverEventKind::FailoverBlocked { reason } => (
                Severity::Critical,
                format!("{svc}: cannot fail over: {reason}"),
            ),
            _ => return,
        };
        let notification = Notification::new(severity, summary)
            .with_label("service", svc.as_str())
            .with_label("controller", &self.id);
        for n in &self.notifiers {
            let n = n.clone();
            let notification = notification.clone();
            tokio::spawn(async move {
                if let Err(e) = n.notify(&notification).await {
                    tracing::warn!(error = %e, "notifier failed");
                }
            });
        }
    }
}

/// Watches one service's regions and fails over, and back, by its
/// [`FailoverPolicy`]. See the [module](super) for what it does and how it
/// interlocks with rollouts.
///
/// Build one with [`FailoverController::builder`], subscribe to its
/// events, and [`start`](Self::start) it; after a crash, a new controller
/// on the same stores starts where the old one stopped.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use atlas_core::failover::{FailoverController, FailoverEventKind, FailoverPolicy};
/// use atlas_core::region::{Region, RegionName, RegionSet};
/// use atlas_core::testing::{MemoryStateStore, ProbeScript, RecordingRegionRouter, ScriptedProbe};
/// use atlas_core::{Endpoint, ServiceName};
///
/// # tokio::runtime::Builder::new_current_thread()
/// #     .enable_time()
/// #     .start_paused(true)
/// #     .build()
/// #     .unwrap()
/// #     .block_on(async {
/// let n = |s: &str| RegionName::new(s).unwrap();
/// let regions = RegionSet::new(vec![
///     Region::active(n("us-east"), 40),
///     Region::active(n("eu-west"), 35),
///     Region::active(n("ap-south"), 25),
///     Region::standby(n("us-west"), 40),
/// ])?;
/// let probe = ScriptedProbe::new();
/// let router = RecordingRegionRouter::new();
/// let svc = ServiceName::new("checkout")?;
/// let mut policy = FailoverPolicy::specification();
/// policy.metrics.clear(); // no Prometheus here
/// policy.database = None; // and no database
/// let mut builder = FailoverController::builder()
///     .service(svc.clone())
///     .regions(regions.clone())
///     .policy(policy)
///     .router(Arc::new(router.clone()))
///     .store(Arc::new(MemoryStateStore::new()))
///     .probe(Arc::new(probe.clone()));
/// for (i, r) in regions.regions().iter().enumerate() {
///     let addr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
///     builder = builder.endpoint(r.name.clone(), Endpoint::new(r.name.as_str(), addr));
/// }
/// let controller = builder.build()?;
/// let mut events = controller.subscribe();
/// let handle = controller.start().await?;
///
/// // us-east stops answering: after 3 failed checks (10 s apart) its 40 %
/// // moves, and the standby is activated because the others lack room.
/// probe.script("us-east", ProbeScript::Failing("connection refused".into()));
/// loop {
///     if let FailoverEventKind::FailoverDone { .. } = events.recv().await.unwrap().kind {
///         break;
///     }
/// }
/// let weights = router.current(&svc).unwrap();
/// assert_eq!(weights.to_string(), "ap-south=25% eu-west=35% us-east=0% us-west=40%");
/// handle.stop().await?;
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct FailoverController {
    inner: Arc<Inner>,
}

impl fmt::Debug for FailoverController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverController")
            .field("id", &self.inner.id)
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

impl FailoverController {
    /// A builder, with the specification's policy and a 15 s lease.
    pub fn builder() -> FailoverControllerBuilder {
        FailoverControllerBuilder {
            service: None,
            regions: None,
            policy: FailoverPolicy::specification(),
            router: None,
            store: None,
            leases: None,
            probe: None,
            endpoints: BTreeMap::new(),
            metrics: None,
            database: None,
            database_region: None,
            lease_ttl: Duration::from_secs(15),
            retry: RetryConfig::control_plane(),
            notifiers: Vec::new(),
        }
    }

    /// This controller's id, the holder name on its lease.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The key its lease is taken on: `<service>-failover`.
    pub fn lease_key(&self) -> &ServiceName {
        &self.inner.lease_key
    }

    /// Events from now on. Subscribe before [`start`](Self::start) to see
    /// the first. A receiver that falls more than 1024 events behind loses
    /// the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<FailoverEvent> {
        self.inner.events.subscribe()
    }

    /// Takes the lease, loads the service's failover state (or writes the
    /// normal weights as the first one), and runs the controller in its own
    /// task. A change found unfinished in the store is finished first.
    ///
    /// # Errors
    /// [`Conflict`](Error::Conflict) when another controller holds the
    /// lease; [`Precondition`](Error::Precondition) when the stored state
    /// names a region not in this controller's set; the stores' errors.
    pub async fn start(&self) -> Result<FailoverHandle> {
        let inner = &self.inner;
        let lease = inner
            .leases
            .acquire_lease(&inner.lease_key, &inner.id, inner.lease_ttl)
            .await?;
        match self.load_or_create().await {
            Ok((state, version, resumed)) => Ok(self.spawn(state, version, lease, resumed)),
            Err(e) => {
                let _ = inner.leases.release_lease(&lease).await;
                Err(e)
            }
        }
    }

    async fn load_or_create(&self) -> Result<(FailoverState, u64, bool)> {
        let inner = &self.inner;
        match inner.store.load_failover(&inner.service).await? {
            Some(v) => {
                if let Some((unknown, _)) = v
                    .value
                    .weights
                    .iter()
                    .find(|(r, _)| inner.regions.get(r).is_none())
                {
                    return Err(Error::precondition(format!(
                        "the stored failover state of {} names region {unknown}, which is not in \
                         this controller's region set",
                        inner.service
                    )));
                }
                Ok((v.value, v.version, true))
            }
            None => {
                let state = FailoverState::new(inner.regions.normal_weights());
                let version = inner
                    .store
                    .compare_and_swap_failover(&inner.service, None, &state)
                    .await?;
                Ok((state, version, false))
            }
        }
    }

    fn spawn(
        &self,
        state: FailoverState,
        version: u64,
        lease: Lease,
        resumed: bool,
    ) -> FailoverHandle {
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(state.clone());
        let span = tracing::info_span!(
            "failover-controller",
            service = %self.inner.service,
            id = %self.inner.id
        );
        let runner = Runner {
            inner: self.inner.clone(),
            state,
            version,
            lease,
            monitor: Monitor::default(),
            commands,
            state_tx,
            decided: None,
            traffic_applied: false,
            recovered: BTreeSet::new(),
            blocked: None,
            rollout_checked: false,
        };
        let join = tokio::spawn(runner.run(resumed).instrument(span));
        FailoverHandle {
            service: self.inner.service.clone(),
            commands: commands_tx,
            state: state_rx,
            join,
        }
    }
}

/// What a handle asks of a running controller.
enum Command {
    Failback(RegionName, oneshot::Sender<Result<()>>),
    Stop,
}

/// Steers a running [`FailoverController`]. Dropping every handle stops
/// it, as [`stop`](Self::stop) does.
#[derive(Debug)]
pub struct FailoverHandle {
    service: ServiceName,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<FailoverState>,
    join: JoinHandle<Result<()>>,
}

impl FailoverHandle {
    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The failover state as last persisted.
    pub fn state(&self) -> FailoverState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every persisted state.
    pub fn watch(&self) -> watch::Receiver<FailoverState> {
        self.state.clone()
    }

    /// Gives a recovered `region` its traffic back now (the way back under
    /// [`Failback::Manual`]; under an automatic policy, earlier than it
    /// would). Returns once traffic moved.
    ///
    /// # Errors
    /// [`Precondition`](Error::Precondition) when the region has not failed
    /// over, has not passed the policy's recovery checks, or another change
    /// is in progress; [`Transient`](Error::Transient) when the failback was
    /// decided but the router failed (it is retried at the next check).
    pub async fn failback(&self, region: &RegionName) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Failback(region.clone(), tx))
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> Error {
        Error::precondition(format!(
            "the failover controller of {} has stopped",
            self.service
        ))
    }

    /// Stops after the check in progress and releases the lease.
    pub async fn stop(self) -> Result<()> {
        let _ = self.commands.send(Command::Stop);
        self.wait().await
    }

    /// Stops the controller's task at once, without releasing its lease or
    /// finishing anything: what a crash does. The state in the store is
    /// intact; a new controller takes over once the lease expires.
    pub fn abort(&self) {
        self.join.abort();
    }

    /// Whether the controller has stopped.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits for the controller to stop. An `Err` means it stopped on its
    /// own: a store write failed or the lease was lost.
    pub async fn wait(self) -> Result<()> {
        match self.join.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(Error::backend(
                "failover-controller",
                "the controller was aborted",
            )),
            Err(e) => Err(Error::backend(
                "failover-controller",
                format!("the controller's task failed: {e}"),
            )),
        }
    }
}

/// The running loop of one controller.
struct Runner {
    inner: Arc<Inner>,
    state: FailoverState,
    version: u64,
    lease: Lease,
    monitor: Monitor,
    commands: mpsc::UnboundedReceiver<Command>,
    state_tx: watch::Sender<FailoverState>,
    /// When the change in progress was decided (or taken over from the
    /// store).
    decided: Option<Instant>,
    /// The router holds `state.weights`.
    traffic_applied: bool,
    /// Failed regions announced as recovered.
    recovered: BTreeSet<RegionName>,
    /// The last reason a failover was impossible, so it is reported once.
    blocked: Option<String>,
    /// The rollout state was read for the change in progress.
    rollout_checked: bool,
}

impl Runner {
    async fn run(mut self, resumed: bool) -> Result<()> {
        self.inner.emit(FailoverEventKind::Started {
            resumed,
            weights: self.state.weights.clone(),
            unfinished: self.state.in_progress.is_some(),
        });
        let result = self.drive().await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "failover controller stopped; start another on the same store");
        }
        if let Err(e) = self.inner.leases.release_lease(&self.lease).await {
            tracing::warn!(error = %e, "could not release the failover lease");
        }
        result
    }

    async fn drive(&mut self) -> Result<()> {
        if self.state.in_progress.is_some() {
            self.decided = Some(Instant::now());
            let span = tracing::info_span!("failover", resumed = true);
            self.finish().instrument(span).await?;
        }
        let mut checks = tokio::time::interval(self.inner.policy().interval);
        checks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let period = self.inner.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + period, period);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = checks.tick() => self.cycle().await?,
                _ = renew.tick() => self.inner.leases.renew_lease(&self.lease).await?,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Stop) => return Ok(()),
                    Some(Command::Failback(region, reply)) => {
                        let answer = self.manual_failback(&region).await?;
                        let _ = reply.send(answer);
                    }
                },
            }
        }
    }

    async fn persist(&mut self) -> Result<()> {
        self.version = self
            .inner
            .store
            .compare_and_swap_failover(&self.inner.service, Some(self.version), &self.state)
            .await?;
        self.state_tx.send_replace(self.state.clone());
        Ok(())
    }

    fn action_failed(&self, action: &str, error: &Error) {
        self.inner.emit(FailoverEventKind::ActionFailed {
            action: action.into(),
            error: error.to_string(),
        });
    }

    /// The database can still be switched: there is one and it has not
    /// been promoted yet.
    fn database_switchable(&self) -> bool {
        self.inner.database.is_some() && self.state.promotion.is_none()
    }

    /// One check of every region and the database, and what follows.
    async fn cycle(&mut self) -> Result<()> {
        if self.state.in_progress.is_some() {
            self.finish().await?;
            if self.state.in_progress.is_some() {
                // Still failing: finish it before deciding anything new.
                return Ok(());
            }
        } else if !self.traffic_applied {
            // The weights in force, applied again (idempotent): the
            // router may have restarted, or this controller just started.
            self.apply_weights().await;
        }
        let names: Vec<RegionName> = self
            .inner
            .regions
            .regions()
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let db_check = async {
            if self.database_switchable() {
                self.inner.checks.database().await
            } else {
                None
            }
        };
        let (round, database) = tokio::join!(self.inner.checks.regions(&names), db_check);
        let now = Instant::now();
        let policy = self.inner.policy().clone();
        let fired = self.monitor.observe(&policy, round, now);
        let db_fired = self
            .monitor
            .observe_database(&policy, database, now)
            .filter(|_| self.database_switchable());
        let newly: Vec<Fired> = fired
            .into_iter()
            .filter(|f| !self.state.failed.contains_key(&f.region))
            .collect();
        if !newly.is_empty() || db_fired.is_some() {
            return self.fail_over(newly, db_fired).await;
        }
        self.blocked = None;
        self.recoveries(now).await
    }

    async fn fail_over(&mut self, newly: Vec<Fired>, db: Option<(String, Duration)>) -> Result<()> {
        let wall = SystemTime::now();
        let mut failed = self.state.failed.clone();
        for f in &newly {
            failed.insert(
                f.region.clone(),
                FailedRegion {
                    trigger: f.trigger.clone(),
                    since: wall,
                },
            );
        }
        let mut redistribution = None;
        if !newly.is_empty() {
            let names: BTreeSet<RegionName> = failed.keys().cloned().collect();
            match redistribute(&self.inner.regions, &names, &self.inner.policy().capacity) {
                Ok(r) => redistribution = Some(r),
                Err(e) => {
                    let reason = e.to_string();
                    if self.blocked.as_deref() != Some(reason.as_str()) {
                        self.inner.emit(FailoverEventKind::FailoverBlocked {
                            reason: reason.clone(),
                        });
                        self.blocked = Some(reason);
                    }
                }
            }
        }
        let region_db = redistribution.is_some()
            && newly
                .iter()
                .any(|f| Some(&f.region) == self.inner.database_region.as_ref());
        let database = self.database_switchable() && (db.is_some() || region_db);
        if redistribution.is_none() && !database {
            return Ok(());
        }
        let decided = Instant::now();
        let mut reasons = Vec::new();
        if redistribution.is_some() {
            for f in &newly {
                reasons.push(format!("{}: {}", f.region, f.trigger));
                self.inner.emit(FailoverEventKind::TriggerFired {
                    region: Some(f.region.clone()),
                    trigger: f.trigger.clone(),
                    detected_after: f.detected_after,
                });
            }
        }
        if let Some((trigger, lost)) = &db {
            reasons.push(trigger.clone());
            self.inner.emit(FailoverEventKind::TriggerFired {
                region: None,
                trigger: trigger.clone(),
                detected_after: *lost,
            });
        }
        let reason = reasons.join("; ");
        let span = tracing::info_span!("failover", service = %self.inner.service, reason = %reason);
        async {
            let mut next = self.state.clone();
            let before = self.state.activated.clone();
            if let Some(r) = &redistribution {
                next.failed = failed;
                next.weights = r.weights.clone();
                next.activated = r.activated.clone();
            }
            next.in_progress = Some(Transition {
                kind: TransitionKind::Failover,
                reason: reason.clone(),
                started: wall,
                database,
            });
            self.begin(next, decided).await?;
            if let Some(r) = &redistribution {
                for region in r.activated.iter().filter(|a| !before.contains(a)) {
                    self.inner.emit(FailoverEventKind::StandbyActivated {
                        region: region.clone(),
                    });
                }
                if r.short_by > 0 {
                    self.inner.emit(FailoverEventKind::CapacityShort {
                        short_by: r.short_by,
                    });
                }
            }
            self.finish().await
        }
        .instrument(span)
        .await
    }

    /// Writes the decided `next` state, the change marked in progress; the
    /// rest is [`finish`](Self::finish)'s.
    async fn begin(&mut self, next: FailoverState, decided: Instant) -> Result<()> {
        self.state = next;
        self.persist().await?;
        self.decided = Some(decided);
        self.traffic_applied = false;
        self.rollout_checked = false;
        Ok(())
    }

    /// Names an unfinished rollout of the service for its engine to abort.
    /// Read after the in-progress mark is stored: a rollout that starts from
    /// then on sees the mark; one that started before is seen here.
    async fn interrupt_rollout(&mut self) -> Result<()> {
        match self.inner.leases.load(&self.inner.service).await {
            Ok(Some(v))
                if !v.value.phase.is_terminal()
                    && !v.value.promoted
                    && self.state.abort_rollout.as_deref() != Some(v.value.id.as_str()) =>
            {
                self.state.abort_rollout = Some(v.value.id.clone());
                self.persist().await?;
                self.inner.emit(FailoverEventKind::RolloutInterrupted {
                    rollout: v.value.id,
                });
            }
            Ok(_) => {}
            Err(e) => {
                // The in-progress mark alone stops the rollout at its next
                // check; naming it only keeps it stopped after the mark.
                tracing::warn!(error = %e, "could not read the rollout state");
            }
        }
        self.rollout_checked = true;
        Ok(())
    }

    /// Applies the weights in force; false (and an event) when the router
    /// failed.
    async fn apply_weights(&mut self) -> bool {
        match self
            .inner
            .router
            .set_region_weights(&self.inner.service, &self.state.weights)
            .await
        {
            Ok(()) => {
                self.traffic_applied = true;
                if self.state.in_progress.is_some() {
                    let after = self.decided.map_or(Duration::ZERO, |d| d.elapsed());
                    self.inner.emit(FailoverEventKind::TrafficMoved {
                        weights: self.state.weights.clone(),
                        after,
                    });
                }
                true
            }
            Err(e) => {
                self.action_failed("set region weights", &e);
                false
            }
        }
    }

    /// Carries the change in progress as far as it goes: traffic, fence,
    /// promotion, done. An adapter that fails leaves it in progress for
    /// the next check; a store that fails stops the controller.
    async fn finish(&mut self) -> Result<()> {
        let Some(t) = self.state.in_progress.clone() else {
            return Ok(());
        };
        let decided = *self.decided.get_or_insert_with(Instant::now);
        if !self.traffic_applied && !self.apply_weights().await {
            return Ok(());
        }
        // Traffic first (the recovery time), then the rollout.
        if !self.rollout_checked {
            self.interrupt_rollout().await?;
        }
        if t.database {
            let Some(db) = self.inner.database.clone() else {
                return Err(Error::precondition(format!(
                    "the failover of {} in progress switches the database, but this controller \
                     has none; start one built with the database",
                    self.inner.service
                )));
            };
            // Fence before promote, always: a promotion is only tried once a
            // fence is recorded.
            if self.state.fence.is_none() {
                // The recovery point, measured while the standby still
                // reports it: the writes the promotion may lose.
                let replication = match db.replication().await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the replication lag");
                        None
                    }
                };
                match db.fence_primary(&t.reason).await {
                    Ok(fence) => {
                        self.state.fence = Some(fence.clone());
                        self.persist().await?;
                        self.inner.emit(FailoverEventKind::DatabaseFenced {
                            fence,
                            after: decided.elapsed(),
                            replication_lag: replication.as_ref().and_then(|r| r.lag),
                            synchronous: replication.is_some_and(|r| r.synchronous),
                        });
                    }
                    Err(e) => {
                        self.action_failed("fence primary", &e);
                        return Ok(());
                    }
                }
            }
            if self.state.promotion.is_none() {
                let mut promoted = db.promote_standby().await;
                if let Err(e) = &promoted
                    && e.kind() == ErrorKind::Precondition
                {
                    // The fence is recorded here but the adapter does not
                    // know it (it was restarted with the controller and
                    // keeps its fence in memory): fence again, which the
                    // contract makes idempotent, then promote.
                    tracing::warn!(error = %e, "promotion refused for want of a fence; fencing again");
                    promoted = match db.fence_primary(&t.reason).await {
                        Ok(_) => db.promote_standby().await,
                        Err(e) => Err(e),
                    };
                }
                match promoted {
                    Ok(promotion) => {
                        self.state.promotion = Some(promotion.clone());
                        self.persist().await?;
                        self.inner.emit(FailoverEventKind::DatabasePromoted {
                            promotion,
                            after: decided.elapsed(),
                        });
                    }
                    Err(e) => {
                        self.action_failed("promote standby", &e);
                        return Ok(());
                    }
                }
            }
        }
        self.state.in_progress = None;
        self.persist().await?;
        self.decided = None;
        let after = decided.elapsed();
        self.inner.emit(match t.kind {
            TransitionKind::Failover => FailoverEventKind::FailoverDone { after },
            TransitionKind::Failback => FailoverEventKind::FailbackDone {
                weights: self.state.weights.clone(),
                after,
            },
        });
        Ok(())
    }

    /// Announces recovered regions and, under an automatic policy, fails
    /// back those healthy for long enough.
    async fn recoveries(&mut self, now: Instant) -> Result<()> {
        let needed = self.inner.policy().recovery_checks;
        let mut ready = Vec::new();
        let failed: Vec<RegionName> = self.state.failed.keys().cloned().collect();
        for region in failed {
            let (checks, since) = self.monitor.healthy(&region);
            if checks < needed {
                self.recovered.remove(&region);
                continue;
            }
            if self.recovered.insert(region.clone()) {
                self.inner.emit(FailoverEventKind::RegionRecovered {
                    region: region.clone(),
                });
            }
            if let Failback::Automatic { healthy_for } = self.inner.policy().failback
                && since.is_some_and(|s| now - s >= healthy_for)
            {
                ready.push(region);
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let reason = match self.inner.policy().failback {
            Failback::Automatic { healthy_for } => {
                format!("healthy for {}", humantime::format_duration(healthy_for))
            }
            Failback::Manual => "manual failback".into(),
        };
        self.fail_back(ready, reason).await
    }

    async fn fail_back(&mut self, regions: Vec<RegionName>, reason: String) -> Result<()> {
        let mut failed = self.state.failed.clone();
        for r in &regions {
            failed.remove(r);
        }
        let names: BTreeSet<RegionName> = failed.keys().cloned().collect();
        let r = match redistribute(&self.inner.regions, &names, &self.inner.policy().capacity) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no failback possible");
                return Ok(());
            }
        };
        let span = tracing::info_span!("failback", service = %self.inner.service, ?regions, reason = %reason);
        async {
            self.inner.emit(FailoverEventKind::FailbackStarted {
                regions: regions.clone(),
                reason: reason.clone(),
            });
            let mut next = self.state.clone();
            next.failed = failed;
            next.weights = r.weights;
            next.activated = r.activated;
            next.in_progress = Some(Transition {
                kind: TransitionKind::Failback,
                reason,
                started: SystemTime::now(),
                database: false,
            });
            self.begin(next, Instant::now()).await?;
            for region in &regions {
                self.recovered.remove(region);
            }
            self.finish().await
        }
        .instrument(span)
        .await
    }

    /// A failback asked for through the handle: the outer `Result` stops
    /// the controller (a store failure), the inner one is the answer.
    async fn manual_failback(&mut self, region: &RegionName) -> Result<Result<()>> {
        if !self.state.failed.contains_key(region) {
            return Ok(Err(Error::precondition(format!(
                "{region} of {} has not failed over",
                self.inner.service
            ))));
        }
        if let Some(t) = &self.state.in_progress {
            return Ok(Err(Error::precondition(format!(
                "another change of {} is in progress ({})",
                self.inner.service, t.reason
            ))));
        }
        let (checks, _) = self.monitor.healthy(region);
        let needed = self.inner.policy().recovery_checks;
        if checks < needed {
            return Ok(Err(Error::precondition(format!(
                "{region} has passed {checks} of the {needed} consecutive healthy checks that make \
                 it recovered"
            ))));
        }
        self.fail_back(vec![region.clone()], "manual failback".into())
            .await?;
        if self.state.in_progress.is_some() {
            return Ok(Err(Error::transient(
                "failover-controller",
                format!(
                    "the failback of {region} is decided but traffic has not moved yet; it is \
                     retried at the next check"
                ),
            )));
        }
        Ok(Ok(()))
    }
}
