//! The [`StagingGate`]: a release may reach this environment only after
//! the same version was promoted in an earlier one, as that environment's
//! state store records it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::ServiceName;
use atlas_core::state::{Phase, StateStore};

use crate::error::{Error, Result};
use crate::gate::{Gate, GateContext, Verdict};

/// Passes when the earlier environment's last rollout of the service (or
/// of the service named by [`service`](Self::service)) is promoted and
/// rolled out the same version.
#[derive(Clone)]
pub struct StagingGate {
    environment: String,
    store: Arc<dyn StateStore>,
    service: Option<ServiceName>,
}

impl fmt::Debug for StagingGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagingGate")
            .field("environment", &self.environment)
            .field("service", &self.service)
            .finish()
    }
}

impl StagingGate {
    /// A gate reading `environment`'s state from `store` (that
    /// environment's own store: its state directory, its cluster).
    pub fn new(environment: impl Into<String>, store: Arc<dyn StateStore>) -> Self {
        StagingGate {
            environment: environment.into(),
            store,
            service: None,
        }
    }

    /// Looks up `service` there instead of the service being released
    /// (when the earlier environment names it differently).
    pub fn service(mut self, service: ServiceName) -> Self {
        self.service = Some(service);
        self
    }
}

#[async_trait]
impl Gate for StagingGate {
    fn name(&self) -> &str {
        "staging"
    }

    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        let service = self.service.as_ref().unwrap_or(&ctx.service);
        let env = &self.environment;
        let state = self
            .store
            .load(service)
            .await
            .map_err(|source| Error::Source {
                what: format!("reading {service}'s state in {env}"),
                source,
            })?;
        let Some(state) = state else {
            return Ok(Verdict::fail(
                format!("{service} was never rolled out in {env}"),
                vec![format!("{env}: no rollout of {service}")],
            ));
        };
        let rollout = &state.value;
        let staged = &rollout.rollout.release.version;
        if staged != &ctx.version {
            return Ok(Verdict::fail(
                format!("{env} runs {staged}, not {}", ctx.version),
                vec![format!("{env}: last rollout of {service} was {staged}")],
            ));
        }
        Ok(match &rollout.phase {
            Phase::Promoted => Verdict::pass(format!("{} promoted in {env}", ctx.version)),
            other => Verdict::fail(
                format!("{} is not promoted in {env}", ctx.version),
                vec![format!("{env}: {service} {staged} is {other:?}")],
            ),
        })
    }
}
