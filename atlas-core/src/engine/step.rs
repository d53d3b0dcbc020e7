//! One step: what it needs ([`StepContext`]) and how it ends
//! ([`StepResult`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::shared::Shared;
use crate::analysis::{self, AnalysisPhase};
use crate::domain::{Endpoint, ServiceName, Slot, SlotStatus, TrafficSplit, Weight};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::hooks::{HookContext, HookPoint};
use crate::rollout::{InconclusivePolicy, Rollout};
use crate::scaler::{LiveScale, ScalingGuard, SlotReplicas, scale_behind_router};
use crate::state::RolloutState;
use crate::strategy::Step;

/// How a step ended.
pub(super) enum StepEnd {
    Done,
    /// A `Pause(None)` step: wait for promotion.
    WaitForPromotion,
    /// Inconclusive analysis under the pause policy.
    Inconclusive(String),
    /// Roll back for this reason.
    Failed(String),
}

/// What a step changed that the state must record.
pub(super) struct StepResult {
    pub(super) end: StepEnd,
    pub(super) weight: Option<Weight>,
}

impl StepResult {
    pub(super) fn done() -> Self {
        StepResult {
            end: StepEnd::Done,
            weight: None,
        }
    }
    pub(super) fn failed(reason: String) -> Self {
        StepResult {
            end: StepEnd::Failed(reason),
            weight: None,
        }
    }
}

/// What a step needs, owned, so the step future borrows nothing from the
/// driver and commands can be handled while it runs.
#[derive(Clone)]
pub(super) struct StepContext {
    shared: Arc<Shared>,
    rollout_id: String,
    rollout: Arc<Rollout>,
    stable: Slot,
    initial: bool,
    stable_version: Option<String>,
}

impl StepContext {
    /// What a step of the rollout in `state` needs.
    pub(super) fn new(shared: Arc<Shared>, state: &RolloutState) -> Self {
        StepContext {
            shared,
            rollout_id: state.id.clone(),
            rollout: Arc::new(state.rollout.clone()),
            stable: state.stable,
            initial: state.initial,
            stable_version: state.stable_version.clone(),
        }
    }

    fn service(&self) -> &ServiceName {
        &self.rollout.service
    }
    fn canary(&self) -> Slot {
        self.stable.other()
    }
    fn emit(&self, kind: EventKind) {
        self.shared.log.emit(self.service(), &self.rollout_id, kind);
    }

    /// Sets `split` in one router call.
    pub(super) async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        self.shared.router.set_split(self.service(), &split).await?;
        self.emit(EventKind::WeightChanged { split });
        Ok(())
    }

    async fn set_endpoints(&self, slot: Slot, endpoints: &[Endpoint]) -> Result<()> {
        self.shared
            .router
            .set_endpoints(self.service(), slot, endpoints)
            .await
    }

    /// Executes `step`. Owned, so the future borrows nothing from the
    /// driver and commands can be handled while it runs.
    pub(super) async fn execute(self, step: Step) -> Result<StepResult> {
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
        let shared = &self.shared;
        let service = self.service();
        let canary = self.canary();
        match step {
            Step::Deploy { replicas } => {
                let hooks = self.run_hooks(HookPoint::BeforeDeploy).await?;
                if !matches!(hooks.end, StepEnd::Done) {
                    return Ok(hooks);
                }
                let _gate = self.hold_gate().await;
                self.set_floor(replicas);
                let release = &self.rollout.release;
                shared
                    .workloads
                    .deploy(service, canary, release, replicas)
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
                let _gate = self.hold_gate().await;
                self.set_floor(replicas);
                // The autoscaler's share of the current traffic may ask for
                // more than the strategy: the larger wins.
                let replicas = match self.router_split().await? {
                    Some(split) => replicas.max(self.share(&split).map_or(0, |t| t.get(canary))),
                    None => replicas,
                };
                let before = self.status(canary).await?;
                let keep = replicas as usize;
                if keep < before.endpoints.len() {
                    // Drain the replicas that go before stopping them.
                    self.set_endpoints(canary, &before.endpoints[..keep])
                        .await?;
                }
                shared.workloads.scale(service, canary, replicas).await?;
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
                if let Some(failed) = self.shift_with_shares(split).await? {
                    return Ok(StepResult::failed(failed));
                }
                Ok(StepResult {
                    end: StepEnd::Done,
                    weight: Some(w),
                })
            }
            Step::Promote => {
                if let Some(failed) = self.shift_with_shares(TrafficSplit::all_to(canary)).await? {
                    return Ok(StepResult::failed(failed));
                }
                Ok(StepResult {
                    end: StepEnd::Done,
                    weight: Some(Weight::FULL),
                })
            }
            // `execute` runs these itself and never passes them here.
            Step::Pause(_) | Step::Analysis { .. } | Step::ScaleDownOld { .. } => Err(
                Error::backend("engine", format!("step '{step}' is not a platform step")),
            ),
        }
    }

    async fn status(&self, slot: Slot) -> Result<SlotStatus> {
        self.shared.workloads.status(self.service(), slot).await
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
            tokio::time::sleep(self.shared.poll_interval).await;
        }
    }

    /// Probes every endpoint concurrently; the first failure, if any.
    async fn probe_all(&self, endpoints: &[Endpoint]) -> Option<String> {
        let policy = &self.rollout.probe;
        let probe = self.shared.probe.as_ref();
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
        let provider = self.shared.analysis_provider()?;
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
        for hook in &self.shared.hooks {
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
            self.clear_floors();
            return Ok(StepResult::done());
        }
        let _gate = self.hold_gate().await;
        self.set_endpoints(slot, &[]).await?;
        self.shared
            .workloads
            .scale(self.service(), slot, 0)
            .await
            .or_else(|e| {
                if matches!(e, Error::NotFound { .. }) {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        // Scaling a slot down ends the rollout either way (the old slot
        // after promotion, the canary on rollback): no floor is needed.
        self.clear_floors();
        Ok(StepResult::done())
    }

    /// Waits for the service's scaling gate when an autoscaler shares the
    /// replica counts, so the two never scale the same service at once.
    async fn hold_gate(&self) -> Option<ScalingGuard> {
        match &self.shared.desired {
            Some(d) => Some(d.hold(self.service()).await),
            None => None,
        }
    }

    fn set_floor(&self, replicas: u32) {
        if let Some(d) = &self.shared.desired {
            d.set_floor(self.service(), self.canary(), replicas);
        }
    }

    fn clear_floors(&self) {
        if let Some(d) = &self.shared.desired {
            d.clear_floors(self.service());
        }
    }

    /// Each slot's share of the autoscaler's desired count under `split`,
    /// if an autoscaler set one.
    fn share(&self, split: &TrafficSplit) -> Option<SlotReplicas> {
        self.shared.desired.as_ref()?.targets(self.service(), split)
    }

    async fn router_split(&self) -> Result<Option<TrafficSplit>> {
        self.shared.router.split(self.service()).await
    }

    /// Sets `split`; with an autoscaler's desired count, the slots with
    /// traffic under `split` that need more replicas grow first (ready and
    /// listed before the traffic arrives) and those that need fewer shrink
    /// after it left. A slot that loses all its traffic is left as it is:
    /// the strategy scales it down after its delay. `Some(reason)` when a
    /// slot could not be scaled.
    async fn shift_with_shares(&self, split: TrafficSplit) -> Result<Option<String>> {
        let _gate = self.hold_gate().await;
        let Some(targets) = self.share(&split) else {
            self.set_split(split).await?;
            return Ok(None);
        };
        let mut grow = Vec::new();
        let mut shrink = Vec::new();
        for slot in [Slot::Blue, Slot::Green] {
            if split.weight_of(slot) == Weight::ZERO {
                continue;
            }
            let now = self.status(slot).await?.desired;
            let want = targets.get(slot);
            if want > now {
                grow.push((slot, want));
            } else if want < now {
                shrink.push((slot, want));
            }
        }
        for (slot, want) in grow {
            if let Err(e) = self.scale_live(slot, want).await {
                return Ok(Some(format!(
                    "scaling {slot} to its share of {want} failed: {e}"
                )));
            }
        }
        self.set_split(split).await?;
        for (slot, want) in shrink {
            if let Err(e) = self.scale_live(slot, want).await {
                return Ok(Some(format!(
                    "scaling {slot} to its share of {want} failed: {e}"
                )));
            }
        }
        Ok(None)
    }

    async fn scale_live(&self, slot: Slot, replicas: u32) -> Result<()> {
        let limits = LiveScale {
            ready_timeout: self.rollout.progress_deadline,
            poll_interval: self
                .shared
                .poll_interval
                .min(self.rollout.progress_deadline),
        };
        scale_behind_router(
            self.shared.workloads.as_ref(),
            self.shared.router.as_ref(),
            self.service(),
            slot,
            replicas,
            limits,
        )
        .await?;
        tracing::info!(service = %self.service(), %slot, replicas, "slot scaled to its share of the desired replicas");
        Ok(())
    }

    /// All traffic to stable in one router call (unless `traffic_returned`
    /// says it already happened), then the canary down.
    pub(super) async fn rollback(&self, traffic_returned: bool) -> Result<()> {
        if !traffic_returned {
            self.set_split(TrafficSplit::all_to(self.stable)).await?;
        }
        self.scale_down(self.canary()).await?;
        Ok(())
    }
}
