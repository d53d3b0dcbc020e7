//! [`Rollout`]: everything the engine needs to roll one release out.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisTemplate;
use crate::autoscale::HorizontalPolicy;
use crate::domain::{Release, ServiceName};
use crate::error::{Error, Result};
use crate::probe::ProbePolicy;
use crate::strategy::Strategy;

/// Argo Rollouts' default progress deadline.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// What the engine does when an analysis can neither pass nor fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusivePolicy {
    /// Pause the rollout until a human promotes or aborts it (Argo's behaviour).
    #[default]
    Pause,
    /// Roll back, as for a failed analysis.
    Abort,
}

/// One rollout of a release of a service.
///
/// ```
/// use atlas_core::{BlueGreen, Release, Rollout, ServiceName, Strategy};
/// let rollout = Rollout::new(
///     ServiceName::new("checkout")?,
///     Release::new("v2", "/usr/local/bin/checkout"),
///     Strategy::BlueGreen(BlueGreen::new(2)),
/// );
/// rollout.validate()?;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The service.
    pub service: ServiceName,
    /// The release to roll out.
    pub release: Release,
    /// How.
    pub strategy: Strategy,
    /// How replicas are probed before they get traffic.
    pub probe: ProbePolicy,
    /// Analysis templates by name, referenced by the strategy.
    pub analysis: BTreeMap<String, AnalysisTemplate>,
    /// Longest time one step may take before the rollout is rolled back.
    /// Pauses do not count. Default 600 s.
    pub progress_deadline: Duration,
    /// What an inconclusive analysis does.
    pub on_inconclusive: InconclusivePolicy,
    /// Extra arguments for analysis queries.
    pub args: BTreeMap<String, String>,
    /// How the service scales horizontally, if it does. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<HorizontalPolicy>,
}

impl Rollout {
    /// A rollout with default probe policy, no analysis, default deadline.
    pub fn new(service: ServiceName, release: Release, strategy: Strategy) -> Self {
        Rollout {
            service,
            release,
            strategy,
            probe: ProbePolicy::default(),
            analysis: BTreeMap::new(),
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            on_inconclusive: InconclusivePolicy::default(),
            args: BTreeMap::new(),
            autoscaling: None,
        }
    }

    /// Sets the horizontal autoscaling policy.
    pub fn with_autoscaling(mut self, policy: HorizontalPolicy) -> Self {
        self.autoscaling = Some(policy);
        self
    }

    /// Adds an analysis template, under its own name.
    pub fn with_analysis(mut self, template: AnalysisTemplate) -> Self {
        self.analysis.insert(template.name.clone(), template);
        self
    }

    /// Sets the probe policy.
    pub fn with_probe(mut self, probe: ProbePolicy) -> Self {
        self.probe = probe;
        self
    }

    /// Sets the progress deadline.
    pub fn with_progress_deadline(mut self, deadline: Duration) -> Self {
        self.progress_deadline = deadline;
        self
    }

    /// Checks every rule; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.release.validate()?;
        self.strategy.validate()?;
        self.probe.validate()?;
        if self.progress_deadline.is_zero() {
            return Err(Error::invalid(
                "progress_deadline",
                "must be greater than 0",
            ));
        }
        for (name, t) in &self.analysis {
            let at = format!("analysis.{name}");
            if &t.name != name {
                return Err(Error::invalid(
                    format!("{at}.name"),
                    format!("must equal its key {name:?}"),
                ));
            }
            t.validate(&at)?;
        }
        if let Some(policy) = &self.autoscaling {
            policy.validate().map_err(|e| match e {
                Error::InvalidInput { field, rule } => Error::InvalidInput {
                    field: format!("autoscaling.{field}"),
                    rule,
                },
                other => other,
            })?;
        }
        for (field, template) in self.strategy.analysis_refs() {
            if !self.analysis.contains_key(template) {
                return Err(Error::invalid(
                    field,
                    format!("refers to analysis template {template:?}, which is not defined"),
                ));
            }
        }
        Ok(())
    }
}
