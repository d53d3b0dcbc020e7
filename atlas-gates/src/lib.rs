//! # atlas-gates
//!
//! Quality gates a release must pass before a rollout deploys anything:
//!
//! - [`TestGate`]: JUnit XML reports (cargo-nextest, pytest, Maven, most
//!   CI tools) — every test passed, at most N skipped;
//! - [`CoverageGate`]: lcov and Cobertura XML — line coverage at or above a
//!   threshold (default 80 %), optionally per file;
//! - [`VulnerabilityGate`]: cargo-audit, Trivy and OSV JSON — no finding at
//!   or above a severity (default HIGH), with an [`AllowList`] whose
//!   entries expire;
//! - [`BenchmarkGate`]: criterion's saved estimates against a baseline —
//!   no regression beyond a budget (default 10 %);
//! - [`PolicyGate`]: any [`PolicyCheck`] (the Kubernetes pod security
//!   checker, a custom rule);
//! - [`StagingGate`]: the same version promoted in an earlier environment,
//!   read from that environment's [`StateStore`](atlas_core::StateStore).
//!
//! [`QualityGates`] runs them as a [`RolloutHook`](atlas_core::hooks::RolloutHook)
//! in `before_deploy`, and stops the rollout with a report naming each gate
//! that failed. A report that is missing or malformed is a typed
//! [`Error`], which the hook counts as a failed gate: never a pass.
//!
//! The deployment validation [`Checklist`] (application health, migrations
//! applied, traffic distribution, certificates, metrics, backup and drill
//! ages, the benchmark gate, …) lives here too, as a library function
//! separate from any command line: [`Checklist::run`] gives a
//! [`ChecklistReport`] with a table, JSON and an exit status.
//!
//! This crate is an engine in Atlas's layout: it depends on `atlas-core`
//! only. Its parsers need an XML reader (quick-xml), which `atlas-core`
//! does not take on, and policy checks that live in adapters (the pod
//! security checker is in `atlas-k8s`) plug in through [`PolicyCheck`]
//! where the embedding program wires both.
//!
//! ```no_run
//! use std::sync::Arc;
//! use atlas_gates::{
//!     AllowList, CoverageGate, QualityGates, ReportFormat, TestGate, VulnerabilityGate,
//! };
//! let gates = QualityGates::new()
//!     .gate(TestGate::junit("target/nextest/ci/junit.xml"))
//!     .gate(CoverageGate::lcov("target/lcov.info").min_line_rate(0.80))
//!     .gate(
//!         VulnerabilityGate::new()
//!             .report(ReportFormat::CargoAudit, "target/audit.json")
//!             .allow(AllowList::default().with(
//!                 "RUSTSEC-2023-0071",
//!                 jiff::civil::date(2027, 3, 31),
//!                 "no RSA private keys handled",
//!             )),
//!     );
//! // Engine::builder()…hook(Arc::new(gates))…
//! # let _ = Arc::new(gates);
//! ```

pub mod bench;
pub mod checklist;
pub mod coverage;
pub mod cvss;
mod error;
pub mod gate;
pub mod junit;
pub mod policy;
pub mod staging;
pub mod vulns;
mod xml;

pub use bench::BenchmarkGate;
pub use checklist::{
    Bound, CheckItem, CheckOutcome, CheckStatus, Checklist, ChecklistReport, FnCheck, GateCheck,
    ItemResult, MetricCheck, MigrationsCheck, ProbeCheck, TrafficCheck,
};
pub use coverage::{CoverageGate, CoverageReport, FileCoverage};
pub use error::{Error, Result};
pub use gate::{Gate, GateContext, GateReport, GateResult, GateStatus, QualityGates, Verdict};
pub use junit::{TestCase, TestGate, TestOutcome, TestReport};
pub use policy::{PolicyCheck, PolicyGate};
pub use staging::StagingGate;
pub use vulns::{AllowEntry, AllowList, Finding, ReportFormat, VulnSeverity, VulnerabilityGate};
