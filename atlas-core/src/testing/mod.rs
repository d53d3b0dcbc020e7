//! Mock adapters, fault-injecting wrappers and conformance suites (feature `testing`).
//!
//! Everything here is for tests: Atlas's own, an adapter's, and those of
//! tools that embed Atlas.
//!
//! - **Mocks**, one per adapter trait, faithful to the trait contracts and
//!   inspectable: [`MockWorkloads`], [`RecordingRouter`], [`ScriptedProbe`],
//!   [`ScriptedMetrics`], [`MemoryStateStore`], [`CollectingNotifier`],
//!   [`RecordingRegionRouter`], [`MockDatabase`].
//!   Each is cheap to clone, clones sharing state, so a test keeps a clone
//!   for assertions after handing one to the engine. All of them wait on
//!   tokio's clock, so tests run under a paused clock
//!   (`#[tokio::test(start_paused = true)]`) and a ten-minute rollout takes
//!   milliseconds.
//! - **Faults**: [`Faulty<T>`] wraps any adapter and applies a shared
//!   [`FaultPlan`] of [`Fault`]s: fail the nth call, every call after n
//!   calls or after n successes (a backend that crashes), a seeded
//!   percentage of calls, added latency, or lost responses.
//! - **Conformance suites** in [`conformance`]: the checks every adapter of
//!   a trait must pass. The mocks pass them; so must every real adapter.
//!
//! # Example: a blue-green rollout against the mocks
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use atlas_core::testing::{
//!     CollectingNotifier, MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe,
//! };
//! use atlas_core::{
//!     BlueGreen, Engine, Outcome, Release, Rollout, ServiceName, Slot, Strategy, TrafficRouter,
//!     TrafficSplit, Workloads,
//! };
//!
//! # tokio::runtime::Builder::new_current_thread()
//! #     .enable_time()
//! #     .start_paused(true)
//! #     .build()
//! #     .unwrap()
//! #     .block_on(async {
//! let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(5));
//! let router = RecordingRouter::new();
//! let store = MemoryStateStore::new();
//! let notifier = CollectingNotifier::new();
//!
//! // v1 runs in blue with all the traffic.
//! let svc = ServiceName::new("checkout")?;
//! workloads.deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2).await?;
//! router.set_split(&svc, &TrafficSplit::all_to(Slot::Blue)).await?;
//!
//! let engine = Engine::builder()
//!     .workloads(Arc::new(workloads.clone()))
//!     .router(Arc::new(router.clone()))
//!     .probe(Arc::new(ScriptedProbe::new()))
//!     .store(Arc::new(store.clone()))
//!     .notifier(Arc::new(notifier.clone()))
//!     .build()?;
//! let rollout = Rollout::new(
//!     svc.clone(),
//!     Release::new("v2", "checkout:v2"),
//!     Strategy::BlueGreen(BlueGreen::new(2)),
//! );
//! let outcome = engine.start(rollout).await?.wait().await?;
//!
//! assert_eq!(outcome, Outcome::Promoted { version: "v2".into() });
//! let weights: Vec<u8> = router
//!     .splits(&svc)
//!     .iter()
//!     .map(|s| s.weight_of(Slot::Green).percent())
//!     .collect();
//! assert_eq!(weights, [0, 5, 25, 50, 75, 100, 100]);
//! assert_eq!(router.current(&svc), Some(TrafficSplit::all_to(Slot::Green)));
//! assert_eq!(workloads.replicas(&svc, Slot::Blue), 0, "old slot scaled down");
//! assert_eq!(workloads.version(&svc, Slot::Green).as_deref(), Some("v2"));
//! assert!(store.state(&svc).unwrap().phase.is_terminal());
//! assert_eq!(notifier.wait_for(1).await[0].summary, "checkout: promoted v2");
//! # Ok::<(), atlas_core::Error>(())
//! # }).unwrap();
//! ```

pub mod backup_faults;
pub mod conformance;
mod database;
mod fault;
mod guard;
mod metrics;
mod migration;
mod notify;
mod probe;
mod region;
mod router;
mod scaler;
mod state;
mod workloads;

pub use database::{DatabaseCall, MockDatabase};
pub use fault::{
    CallCounts, DEFAULT_SEED, FAULT_BACKEND, Fault, FaultError, FaultPlan, Faulty, Method,
};
pub use metrics::{MetricAnswer, RecordedQuery, ScriptedMetrics};
pub use migration::{MemoryDriver, RecordedRun};
pub use notify::CollectingNotifier;
pub use probe::{ProbeKey, ProbeScript, ScriptedProbe};
pub use region::{
    CHECK_PRIMARY, COMPARE_AND_SWAP_FAILOVER, FENCE_PRIMARY, LOAD_FAILOVER, PROMOTE_STANDBY,
    REGION_WEIGHTS, REPLICATION, RecordingRegionRouter, SET_REGION_WEIGHTS,
};
pub use router::{RecordingRouter, RouterCall};
pub use state::MemoryStateStore;
pub use workloads::{FIRST_MOCK_PORT, MockWorkloads, WorkloadsCall};
