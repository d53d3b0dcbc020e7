//! [`RolloutHandle`]: steering one running rollout, and how it ended.

use std::fmt;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::domain::ServiceName;
use crate::error::{Error, Result};
use crate::state::RolloutState;

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

/// What a handle asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
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
    pub(super) fn new(
        service: ServiceName,
        id: String,
        commands: mpsc::UnboundedSender<Command>,
        state: watch::Receiver<RolloutState>,
        join: JoinHandle<Result<Outcome>>,
    ) -> Self {
        RolloutHandle {
            service,
            id,
            commands,
            state,
            join,
        }
    }

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
    /// state in the store is intact and [`Engine::resume`](crate::Engine::resume) takes over.
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
