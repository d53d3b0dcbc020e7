//! The [`Gate`] trait and [`QualityGates`], the rollout hook that runs
//! every gate before anything is deployed.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::ServiceName;
use atlas_core::hooks::{HookContext, RolloutHook};
use serde::Serialize;
use tracing::Instrument;

use crate::error::Result;

/// The release a gate judges.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateContext {
    /// The service being released.
    pub service: ServiceName,
    /// The version being released.
    pub version: String,
}

impl GateContext {
    /// The context for `version` of `service`.
    pub fn new(service: ServiceName, version: impl Into<String>) -> Self {
        GateContext {
            service,
            version: version.into(),
        }
    }
}

/// A gate's judgement of one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the release may go on.
    pub passed: bool,
    /// One line, e.g. `142 tests, 0 failed, 1 skipped (allowed 2)`.
    pub summary: String,
    /// What failed, one item per line: test names, files under the
    /// threshold, findings.
    pub details: Vec<String>,
}

impl Verdict {
    /// A passing verdict.
    pub fn pass(summary: impl Into<String>) -> Self {
        Verdict {
            passed: true,
            summary: summary.into(),
            details: Vec::new(),
        }
    }

    /// Passing when `problems` is empty, else failing and listing them.
    pub fn from_problems(summary: impl Into<String>, problems: Vec<String>) -> Self {
        if problems.is_empty() {
            Self::pass(summary)
        } else {
            Self::fail(summary, problems)
        }
    }

    /// A failing verdict listing `details`.
    pub fn fail(summary: impl Into<String>, details: Vec<String>) -> Self {
        Verdict {
            passed: false,
            summary: summary.into(),
            details,
        }
    }
}

/// One check a release must pass before it is deployed.
#[async_trait]
pub trait Gate: Send + Sync + fmt::Debug {
    /// A short name for reports, e.g. `tests`, `coverage`.
    fn name(&self) -> &str;

    /// Judges the release.
    ///
    /// # Errors
    /// A report that cannot be read or parsed, or a data source that fails.
    /// [`QualityGates`] counts an error as a failed gate, never a pass.
    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict>;
}

#[async_trait]
impl<T: Gate + ?Sized> Gate for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        (**self).evaluate(ctx).await
    }
}

/// How one gate came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// The release passed the gate.
    Passed,
    /// The release failed the gate.
    Failed,
    /// The gate could not judge (a malformed or missing report): a failure.
    Error,
}

/// One gate's line in a [`GateReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateResult {
    /// The gate's name.
    pub gate: String,
    /// How it came out.
    pub status: GateStatus,
    /// Its summary, or the error.
    pub summary: String,
    /// What failed.
    pub details: Vec<String>,
}

/// Every gate's result for one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateReport {
    /// The results, in the order the gates were added.
    pub results: Vec<GateResult>,
}

impl GateReport {
    /// Whether every gate passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.status == GateStatus::Passed)
    }

    /// The results that did not pass.
    pub fn failures(&self) -> impl Iterator<Item = &GateResult> {
        self.results
            .iter()
            .filter(|r| r.status != GateStatus::Passed)
    }
}

impl fmt::Display for GateReport {
    /// One line per gate that did not pass: `tests: 2 of 40 failed (a, b)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .failures()
            .map(|r| {
                let status = if r.status == GateStatus::Error {
                    "error: "
                } else {
                    ""
                };
                let mut line = format!("{}: {status}{}", r.gate, r.summary);
                if !r.details.is_empty() {
                    let shown: Vec<&str> = r.details.iter().take(5).map(String::as_str).collect();
                    line.push_str(&format!(" ({}", shown.join("; ")));
                    if r.details.len() > shown.len() {
                        line.push_str(&format!("; {} more", r.details.len() - shown.len()));
                    }
                    line.push(')');
                }
                line
            })
            .collect();
        if lines.is_empty() {
            f.write_str("all gates passed")
        } else {
            f.write_str(&lines.join("\n"))
        }
    }
}

/// Runs every gate before a rollout deploys anything, and stops the
/// rollout with a report naming each gate that failed.
///
/// As a [`RolloutHook`] it acts in `before_deploy`: the new slot has not
/// started, so a failed gate rolls back with nothing to undo. Gates run one
/// after another in the order added, all of them even after a failure, so
/// the report is complete. Gates read their reports afresh on every call,
/// which keeps the hook idempotent.
///
/// ```
/// use std::sync::Arc;
/// use atlas_gates::{QualityGates, TestGate, CoverageGate};
/// let gates = QualityGates::new()
///     .gate(TestGate::junit("target/nextest/ci/junit.xml"))
///     .gate(CoverageGate::lcov("target/coverage/lcov.info").min_line_rate(0.80));
/// let hook: Arc<dyn atlas_core::hooks::RolloutHook> = Arc::new(gates);
/// # let _ = hook;
/// ```
#[derive(Debug, Clone, Default)]
pub struct QualityGates {
    gates: Vec<Arc<dyn Gate>>,
}

impl QualityGates {
    /// No gates yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a gate.
    pub fn gate(mut self, gate: impl Gate + 'static) -> Self {
        self.gates.push(Arc::new(gate));
        self
    }

    /// Evaluates every gate for `ctx`.
    pub async fn evaluate(&self, ctx: &GateContext) -> GateReport {
        let mut results = Vec::with_capacity(self.gates.len());
        for gate in &self.gates {
            let span = tracing::info_span!("gate", gate = gate.name(), service = %ctx.service, version = %ctx.version);
            let outcome = gate.evaluate(ctx).instrument(span).await;
            let result = match outcome {
                Ok(v) => GateResult {
                    gate: gate.name().to_string(),
                    status: if v.passed {
                        GateStatus::Passed
                    } else {
                        GateStatus::Failed
                    },
                    summary: v.summary,
                    details: v.details,
                },
                Err(e) => GateResult {
                    gate: gate.name().to_string(),
                    status: GateStatus::Error,
                    summary: e.to_string(),
                    details: Vec::new(),
                },
            };
            match result.status {
                GateStatus::Passed => {
                    tracing::info!(gate = %result.gate, summary = %result.summary, "gate passed");
                }
                _ => {
                    tracing::warn!(gate = %result.gate, status = ?result.status, summary = %result.summary, "gate did not pass");
                }
            }
            results.push(result);
        }
        GateReport { results }
    }
}

#[async_trait]
impl RolloutHook for QualityGates {
    fn name(&self) -> &str {
        "quality-gates"
    }

    /// # Errors
    /// [`atlas_core::Error::Precondition`] listing each gate that did not
    /// pass.
    async fn before_deploy(&self, ctx: &HookContext) -> atlas_core::Result<()> {
        let report = self
            .evaluate(&GateContext::new(ctx.service.clone(), ctx.version.clone()))
            .await;
        if report.passed() {
            return Ok(());
        }
        Err(atlas_core::Error::precondition(format!(
            "quality gates failed for {} {}:\n{report}",
            ctx.service, ctx.version
        )))
    }
}
