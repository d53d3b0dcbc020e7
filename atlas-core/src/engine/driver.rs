//! The state machine that executes a rollout's steps: one [`Driver`] per
//! rollout, in its own task, persisting the state after every step and
//! handling the commands of its [`RolloutHandle`](super::RolloutHandle).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::handle::{Command, Outcome};
use super::shared::Shared;
use super::step::{StepContext, StepEnd, StepResult};
use crate::domain::{TrafficSplit, Weight};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::notify::{Notification, Severity};
use crate::state::{Lease, Phase, RolloutState};
use crate::strategy::Step;

/// Drives one rollout from its persisted state to the end.
pub(super) struct Driver {
    shared: Arc<Shared>,
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
    /// A failover of the service began: abort for this reason.
    Failover(String),
}

impl Driver {
    /// A driver for `state`, stored under `version`, executing `steps`
    /// while holding `lease`.
    pub(super) fn new(
        shared: Arc<Shared>,
        state: RolloutState,
        version: u64,
        lease: Lease,
        steps: Vec<Step>,
        commands: mpsc::UnboundedReceiver<Command>,
        state_tx: watch::Sender<RolloutState>,
    ) -> Self {
        Driver {
            shared,
            state,
            version,
            lease,
            steps,
            commands,
            state_tx,
            traffic_returned: false,
        }
    }

    fn context(&self) -> StepContext {
        StepContext::new(self.shared.clone(), &self.state)
    }

    fn emit(&self, kind: EventKind) {
        self.shared
            .log
            .emit(&self.state.rollout.service, &self.state.id, kind);
    }

    async fn persist(&mut self) -> Result<()> {
        let v = self
            .shared
            .store
            .compare_and_swap(&self.state.rollout.service, Some(self.version), &self.state)
            .await?;
        self.version = v;
        self.state_tx.send_replace(self.state.clone());
        Ok(())
    }

    /// Why a failover stops this rollout, or `None`. A rollout past its
    /// point of no return finishes; an unreadable failover store is logged
    /// and does not stop the rollout.
    async fn failover_block(&self) -> Option<String> {
        if self.state.promoted {
            return None;
        }
        match self
            .shared
            .failover_block(&self.state.rollout.service, Some(&self.state.id))
            .await
        {
            Ok(reason) => reason,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the failover state; going on");
                None
            }
        }
    }

    async fn renew(&self) -> Result<()> {
        self.shared.store.renew_lease(&self.lease).await
    }

    fn renew_interval(&self) -> tokio::time::Interval {
        let period = self.shared.lease_ttl / 3;
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    }

    /// Drives the rollout to the end (`resumed`: taken over from the store,
    /// so first reconcile with what the router holds), then releases the
    /// lease.
    pub(super) async fn run(mut self, resumed: bool) -> Result<Outcome> {
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
        if let Err(e) = self.shared.store.release_lease(&self.lease).await {
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
                    self.shared.log.notify(
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
            self.shared.log.notify(
                Notification::new(
                    Severity::Info,
                    format!("{}: promoted {version}", self.state.rollout.service),
                )
                .with_label("service", self.state.rollout.service.as_str())
                .with_label("rollout", &self.state.id),
            );
            return Ok(());
        };
        if let Some(reason) = self.failover_block().await {
            return self.fail(reason).await;
        }
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
                _ = renew.tick() => {
                    self.renew().await?;
                    if let Some(reason) = self.failover_block().await {
                        break Err(Interrupt::Failover(reason));
                    }
                }
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
            Err(Interrupt::Failover(reason)) => self.fail(reason).await?,
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
        let split = self
            .shared
            .router
            .split(&self.state.rollout.service)
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
                _ = renew.tick() => {
                    self.renew().await?;
                    if let Some(reason) = self.failover_block().await {
                        return self.fail(reason).await;
                    }
                }
            }
        }
    }
}
