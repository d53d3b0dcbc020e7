//! # atlas
//!
//! Zero-downtime delivery as a library, in one dependency line: the rollout
//! engine and its contracts from `atlas-core` are always here; every engine
//! and adapter crate comes behind a feature, as kube-rs's `kube` does for its
//! crates.
//!
//! | feature | brings | as |
//! |---|---|---|
//! | (always) | rollout engine, strategies, analysis, judge, alerts, autoscaling, specs, the adapter traits and contracts | the root (`atlas::Engine`, …) and [`core`] |
//! | `local` | `atlas-local`: process workloads, Atlas's HTTP proxy router, file state store | `atlas::local` |
//! | `k8s` | `atlas-k8s`: Kubernetes adapters | `atlas::k8s` |
//! | `metrics` | `atlas-metrics`: Prometheus provider, health probes, Atlas's metrics, Alertmanager | `atlas::metrics` |
//! | `gates` | `atlas-gates`: quality gates before a rollout (tests, coverage, vulnerabilities, benchmarks, policies, staging) | `atlas::gates` |
//! | `forecast` | `metrics` and its MSTL load forecaster for predictive autoscaling | `atlas::metrics::forecast` |
//! | `backup` | `atlas-backup` (repository, retention, schedules) and `storage` | `atlas::backup` |
//! | `migrate` | `atlas-migrate`: migration engine, zero-downtime lint, rollout hook | `atlas::migrate` |
//! | `storage` | `atlas-storage` with the filesystem and memory targets | `atlas::storage` |
//! | `s3`, `gcs`, `azure` | the cloud backup targets (slow to build) | `atlas::storage::{s3, gcs, azure}` |
//! | `postgres` | the PostgreSQL migration driver and state store | `atlas::storage::postgres` |
//! | `testing` | mock adapters, fault wrappers, conformance suites | `atlas::core::testing` |
//! | `full` | all of the above but `testing` | |
//!
//! Core's modules stay reachable under [`core`] (`atlas::core::metrics` is
//! the metric-provider contract; `atlas::metrics` is the adapter crate).
//!
//! ```
//! use atlas::{BlueGreen, Release, Rollout, ServiceName, Strategy};
//!
//! let rollout = Rollout::new(
//!     ServiceName::new("checkout")?,
//!     Release::new("v2", "registry/checkout:v2"),
//!     Strategy::BlueGreen(BlueGreen::new(3)),
//! );
//! assert_eq!(rollout.service.as_str(), "checkout");
//! # Ok::<(), atlas::Error>(())
//! ```

pub use atlas_core as core;
pub use atlas_core::autoscale::{
    Forecaster, HorizontalAutoscaler, HorizontalPolicy, PredictiveAutoscaler, PredictivePolicy,
    ScaleDecision, ScaleInput, VerticalPolicy, VerticalRecommender,
};
pub use atlas_core::{
    AnalysisMetric, AnalysisPhase, AnalysisTemplate, BlueGreen, Canary, CanaryScale, CanaryStep,
    Condition, Endpoint, Engine, EngineBuilder, Error, ErrorKind, EventKind, HealthProbe,
    HookContext, HookPoint, InconclusivePolicy, Lease, Measurement, MetricProvider, MetricQuery,
    Notification, Notifier, Outcome, Phase, ProbeOutcome, ProbePolicy, Release, RequestMatch,
    Result, Rollout, RolloutEvent, RolloutHandle, RolloutHook, RolloutState, ServiceName, Severity,
    Slot, SlotStatus, StateStore, Step, Strategy, TrafficRouter, TrafficSplit, Versioned, Weight,
    Workloads,
};
pub use atlas_core::{DesiredReplicas, ReplicaCount, Scaler};

#[cfg(feature = "backup")]
pub use atlas_backup as backup;
#[cfg(feature = "gates")]
pub use atlas_gates as gates;
#[cfg(feature = "k8s")]
pub use atlas_k8s as k8s;
#[cfg(feature = "local")]
pub use atlas_local as local;
#[cfg(feature = "metrics")]
pub use atlas_metrics as metrics;
#[cfg(feature = "migrate")]
pub use atlas_migrate as migrate;
#[cfg(feature = "storage")]
pub use atlas_storage as storage;
