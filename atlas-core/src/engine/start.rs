//! [`Engine`]: starts rollouts and resumes persisted ones.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use super::driver::Driver;
use super::handle::RolloutHandle;
use super::shared::{Shared, random_id};
use crate::domain::{ServiceName, Slot, Weight};
use crate::error::{Error, Result};
use crate::events::RolloutEvent;
use crate::rollout::Rollout;
use crate::state::{Lease, Phase, PlanFingerprint, RolloutState};
use crate::strategy::Step;

/// Executes rollouts. Cheap to clone; clones share everything.
///
/// Build one with [`Engine::builder`], [`start`](Engine::start) a
/// [`Rollout`], and steer it through the [`RolloutHandle`]; after a crash,
/// a new engine on the same state store [`resume`](Engine::resume)s it.
///
/// # Example: a canary that waits for a human, against the mocks
///
/// The mock adapters of the `testing` feature wait on tokio's clock, so
/// under a paused clock this rollout's minute of pauses and readiness
/// waits takes milliseconds.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use atlas_core::testing::{MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe};
/// use atlas_core::{
///     Canary, CanaryStep, Engine, Outcome, Release, Rollout, ServiceName, Slot, Strategy,
///     TrafficRouter, TrafficSplit, Weight, Workloads,
/// };
///
/// # tokio::runtime::Builder::new_current_thread()
/// #     .enable_time()
/// #     .start_paused(true)
/// #     .build()
/// #     .unwrap()
/// #     .block_on(async {
/// let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(5));
/// let router = RecordingRouter::new();
/// let store = MemoryStateStore::new();
///
/// // v1 runs in blue with all the traffic.
/// let svc = ServiceName::new("checkout")?;
/// workloads.deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 4).await?;
/// router.set_split(&svc, &TrafficSplit::all_to(Slot::Blue)).await?;
///
/// let engine = Engine::builder()
///     .workloads(Arc::new(workloads.clone()))
///     .router(Arc::new(router.clone()))
///     .probe(Arc::new(ScriptedProbe::new()))
///     .store(Arc::new(store.clone()))
///     .build()?;
/// let rollout = Rollout::new(
///     svc.clone(),
///     Release::new("v2", "checkout:v2"),
///     Strategy::Canary(Canary::new(
///         4,
///         vec![
///             CanaryStep::SetWeight(Weight::new(25)?),
///             CanaryStep::Pause(None), // until a human promotes
///             CanaryStep::SetWeight(Weight::new(50)?),
///             CanaryStep::Pause(Some(Duration::from_secs(60))),
///         ],
///     )),
/// );
/// let handle = engine.start(rollout).await?;
///
/// // The canary holds 25 % until promoted.
/// handle.watch().wait_for(|s| s.paused).await.expect("the rollout is running");
/// assert_eq!(router.current(&svc).unwrap().weight_of(Slot::Green).percent(), 25);
/// handle.promote()?;
///
/// assert_eq!(handle.wait().await?, Outcome::Promoted { version: "v2".into() });
/// assert_eq!(router.current(&svc), Some(TrafficSplit::all_to(Slot::Green)));
/// assert_eq!(workloads.replicas(&svc, Slot::Green), 4);
/// assert_eq!(workloads.replicas(&svc, Slot::Blue), 0, "old slot scaled down");
/// assert!(store.state(&svc).unwrap().phase.is_terminal());
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub(super) fn from_shared(shared: Shared) -> Self {
        Engine {
            shared: Arc::new(shared),
        }
    }

    /// This engine's id, the holder name on its leases.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Events of every rollout this engine drives, from now on. Subscribe
    /// before [`Engine::start`] to see a rollout's first events. A receiver
    /// that falls more than 1024 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<RolloutEvent> {
        self.shared.log.subscribe()
    }

    /// Starts `rollout`. Fails with a [`Conflict`](Error::Conflict) when
    /// another engine holds the service's lease or an unfinished rollout of
    /// the service is in the store (use [`Engine::resume`] for that), and
    /// with [`InvalidInput`](Error::InvalidInput) when the rollout is
    /// invalid or uses analysis and the engine has no metric provider, and
    /// with [`Precondition`](Error::Precondition) naming the failover when
    /// the engine is interlocked with a failover controller
    /// ([`EngineBuilder::failover_store`](crate::EngineBuilder::failover_store))
    /// whose failover of the service is in progress.
    pub async fn start(&self, rollout: Rollout) -> Result<RolloutHandle> {
        rollout.validate()?;
        self.shared.check_rollout(&rollout)?;
        let service = rollout.service.clone();
        let shared = &self.shared;
        let lease = shared
            .store
            .acquire_lease(&service, &shared.id, shared.lease_ttl)
            .await?;
        match self.prepare(rollout, &lease).await {
            Ok((state, version, steps)) => Ok(self.spawn(state, version, steps, lease, false)),
            Err(e) => {
                let _ = shared.store.release_lease(&lease).await;
                Err(e)
            }
        }
    }

    /// Writes the initial state of `rollout`; returns it, its version and
    /// its compiled steps.
    async fn prepare(
        &self,
        rollout: Rollout,
        lease: &Lease,
    ) -> Result<(RolloutState, u64, Vec<Step>)> {
        let shared = &self.shared;
        let service = &lease.service;
        let existing = shared.store.load(service).await?;
        if let Some(v) = &existing
            && !v.value.phase.is_terminal()
        {
            return Err(Error::conflict(format!(
                "rollout {} of {service} is unfinished; resume it instead of starting another",
                v.value.id
            )));
        }
        if let Some(reason) = shared.failover_block(service, None).await? {
            return Err(Error::precondition(format!(
                "cannot start a rollout of {service}: {reason}"
            )));
        }
        let split = shared.router.split(service).await?;
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
        let status = shared.workloads.status(service, stable).await?;
        let initial = status.desired == 0 || status.version.is_none();
        let steps = rollout.strategy.compile(initial);
        let plan = PlanFingerprint::of(&steps)?;
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
            plan: Some(plan),
        };
        let version = shared
            .store
            .compare_and_swap(service, existing.map(|v| v.version), &state)
            .await?;
        Ok((state, version, steps))
    }

    /// Takes over the unfinished rollout of `service` from the store, if
    /// there is one, and drives it to the end. `Ok(None)` when there is
    /// nothing to resume.
    ///
    /// The stored state's step index means something only in the step plan
    /// it was written against, so the plan is compiled again and its
    /// [`PlanFingerprint`] compared with the stored one. When they differ
    /// (this build's strategies compile other steps than the build that
    /// started the rollout), resume fails with a
    /// [`Precondition`](Error::Precondition) error naming the service and
    /// both fingerprints, and leaves the stored state untouched: finish the
    /// rollout with a build that compiles the stored plan. A state written
    /// without a fingerprint (by an older build) has nothing to compare
    /// against: the compiled plan is accepted and its fingerprint stored
    /// with the next write.
    ///
    /// Like [`start`](Engine::start), fails with
    /// [`InvalidInput`](Error::InvalidInput) when the rollout uses analysis
    /// and the engine has no metric provider.
    pub async fn resume(&self, service: &ServiceName) -> Result<Option<RolloutHandle>> {
        let shared = &self.shared;
        let lease = shared
            .store
            .acquire_lease(service, &shared.id, shared.lease_ttl)
            .await?;
        let loaded = match shared.store.load(service).await {
            Ok(l) => l,
            Err(e) => {
                let _ = shared.store.release_lease(&lease).await;
                return Err(e);
            }
        };
        match loaded {
            Some(mut v) if !v.value.phase.is_terminal() => {
                match self.plan_to_resume(&mut v.value) {
                    Ok(steps) => Ok(Some(self.spawn(v.value, v.version, steps, lease, true))),
                    Err(e) => {
                        tracing::warn!(%service, rollout = %v.value.id, error = %e, "refusing to resume");
                        let _ = shared.store.release_lease(&lease).await;
                        Err(e)
                    }
                }
            }
            _ => {
                shared.store.release_lease(&lease).await?;
                Ok(None)
            }
        }
    }

    /// The steps a resumed `state` goes on with: its plan compiled again,
    /// if that is the plan it was written against.
    fn plan_to_resume(&self, state: &mut RolloutState) -> Result<Vec<Step>> {
        self.shared.check_rollout(&state.rollout)?;
        let steps = state.rollout.strategy.compile(state.initial);
        let current = PlanFingerprint::of(&steps)?;
        match &state.plan {
            Some(stored) if *stored != current => Err(Error::precondition(format!(
                "rollout {} of {} was started with step plan {stored}, but this engine compiles \
                 step plan {current} from its strategy; resuming would give the stored step index \
                 ({}) another meaning, so finish the rollout with a build that compiles {stored}",
                state.id, state.rollout.service, state.step
            ))),
            Some(_) => Ok(steps),
            None => {
                tracing::info!(
                    service = %state.rollout.service,
                    rollout = %state.id,
                    plan = %current,
                    "the stored state has no plan fingerprint (written by an older build); \
                     accepting the compiled plan"
                );
                state.plan = Some(current);
                Ok(steps)
            }
        }
    }

    fn spawn(
        &self,
        state: RolloutState,
        version: u64,
        steps: Vec<Step>,
        lease: Lease,
        resumed: bool,
    ) -> RolloutHandle {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(state.clone());
        let span = tracing::info_span!("rollout", service = %state.rollout.service, id = %state.id);
        let service = state.rollout.service.clone();
        let id = state.id.clone();
        let driver = Driver::new(
            self.shared.clone(),
            state,
            version,
            lease,
            steps,
            cmd_rx,
            state_tx,
        );
        let join = tokio::spawn(driver.run(resumed).instrument(span));
        RolloutHandle::new(service, id, cmd_tx, state_rx, join)
    }
}
