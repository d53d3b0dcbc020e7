//! Emission: rollout events to subscribers and to `tracing`, notifications
//! to the notifiers.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::domain::ServiceName;
use crate::events::{EventKind, RolloutEvent};
use crate::notify::{Notification, Notifier};

/// How many events a subscriber may fall behind before it loses the oldest.
pub(super) const EVENT_BUFFER: usize = 1024;

/// Where an engine's events and notifications go.
pub(super) struct EventLog {
    events: broadcast::Sender<RolloutEvent>,
    notifiers: Vec<Arc<dyn Notifier>>,
}

impl EventLog {
    pub(super) fn new(notifiers: Vec<Arc<dyn Notifier>>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        EventLog { events, notifiers }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<RolloutEvent> {
        self.events.subscribe()
    }

    /// Logs `kind` and sends it to every subscriber.
    pub(super) fn emit(&self, service: &ServiceName, rollout: &str, kind: EventKind) {
        trace(service, rollout, &kind);
        // No subscribers is fine: events are also logged.
        let _ = self.events.send(RolloutEvent {
            service: service.clone(),
            rollout: rollout.to_string(),
            at: SystemTime::now(),
            kind,
        });
    }

    /// Sends `notification` to every notifier, in the background.
    pub(super) fn notify(&self, notification: Notification) {
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

/// The `tracing` event of one rollout event.
fn trace(service: &ServiceName, rollout: &str, kind: &EventKind) {
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
