//! # atlas-core
//!
//! The domain of zero-downtime delivery, as a library: blue-green and canary
//! [strategies](strategy), metric [`analysis`] with Argo Rollouts'
//! semantics, and one [`engine`] that executes any strategy against
//! small traits — [`Workloads`], [`TrafficRouter`], [`HealthProbe`],
//! [`MetricProvider`], [`StateStore`], [`Notifier`], [`RolloutHook`] — persisting its state
//! after every step so a crashed controller resumes where it stopped.
//!
//! It also holds the contracts the other engines and adapters meet: the
//! backup-target object contract ([`backup`]) and the migration-driver
//! contract ([`migration`]); and multi-region [`failover`]: the
//! [`region`] router and [`database`] contracts and a controller that
//! moves traffic between regions and promotes the standby database by a
//! policy, interlocked with the rollout engine. The engines built on them live in their own
//! crates, `atlas-backup` and `atlas-migrate`, so a tool that only rolls
//! out compiles no compression, cryptography or SQL parser.
//!
//! `atlas-core` does no network I/O. Adapters live in their own crates:
//! `atlas-local` (processes behind Atlas's own proxy), `atlas-k8s`,
//! `atlas-storage`, `atlas-metrics`. With the `testing` feature, the
//! `testing` module has mock adapters, fault-injecting
//! wrappers and the conformance suites every adapter must pass.
//!
//! ## TLS in binaries that embed Atlas with cloud adapters
//!
//! When `rustls` ends up with both the `ring` and `aws-lc-rs` providers (the
//! cloud SDKs, kube and reqwest in one build do this), install one provider
//! at the start of `main`, e.g.
//! `rustls::crypto::aws_lc_rs::default_provider().install_default()`.

pub mod alerts;
pub mod analysis;
pub mod autoscale;
pub mod backup;
pub mod database;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod failover;
pub mod hooks;
pub mod judge;
pub mod metrics;
pub mod migration;
pub mod notify;
pub mod probe;
pub mod region;
pub mod retry;
pub mod rollout;
pub mod router;
pub mod scaler;
pub mod spec;
pub mod state;
pub mod strategy;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workloads;

pub use analysis::{AnalysisMetric, AnalysisPhase, AnalysisTemplate, Condition};
pub use domain::{
    Endpoint, Release, RequestMatch, ServiceName, Slot, SlotStatus, TrafficSplit, Weight,
};
pub use engine::{Engine, EngineBuilder, Outcome, RolloutHandle};
pub use error::{Error, ErrorKind, Result};
pub use events::{EventKind, RolloutEvent};
pub use hooks::{HookContext, HookPoint, RolloutHook};
pub use metrics::{Measurement, MetricProvider, MetricQuery};
pub use notify::{Notification, Notifier, Severity};
pub use probe::{HealthProbe, ProbeOutcome, ProbePolicy};
pub use rollout::{InconclusivePolicy, Rollout};
pub use router::TrafficRouter;
pub use scaler::{DesiredReplicas, ReplicaCount, Scaler};
pub use state::{Lease, Phase, PlanFingerprint, RolloutState, StateStore, Versioned};
pub use strategy::{BlueGreen, Canary, CanaryScale, CanaryStep, Step, Strategy};
pub use workloads::Workloads;
