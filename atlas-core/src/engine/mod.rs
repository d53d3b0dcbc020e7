//! The engine: executes any strategy's [`Step`](crate::Step)s against the
//! adapter traits.
//!
//! One engine can drive many services; each rollout runs in its own task and
//! is steered through its [`RolloutHandle`]. The engine:
//!
//! - takes a lease on the service from the [`StateStore`](crate::StateStore),
//!   so a second engine is refused with a
//!   [`Conflict`](crate::Error::Conflict), and renews it while it works;
//! - writes the [`RolloutState`](crate::RolloutState) after every step, with
//!   the fingerprint of the step plan it executes, so a new engine on the
//!   same store ([`Engine::resume`]) picks up where a crashed one stopped
//!   and converges to fully promoted or fully rolled back — or refuses, when
//!   its strategies now compile a different plan;
//! - rolls back on a failed probe, a failed analysis, a step that misses the
//!   progress deadline, or an abort: all traffic returns to the stable slot
//!   in **one** [`TrafficRouter::set_split`](crate::TrafficRouter::set_split)
//!   call, then the new slot's endpoints are drained and it is scaled to
//!   zero;
//! - retries calls to the workloads, the router and the state store that
//!   fail with a transient error, with exponential backoff and jitter, by
//!   wrapping them in [`Retrying`](crate::retry::Retrying) (see
//!   [`EngineBuilder::retry`]);
//! - emits a [`RolloutEvent`](crate::RolloutEvent) for everything it does,
//!   to subscribers and as `tracing` events inside a `rollout` span;
//! - with [`EngineBuilder::failover_store`], gives way to a multi-region
//!   failover of the service: it starts no rollout while one is in
//!   progress and aborts a running one when one begins (see
//!   [the interlock](crate::failover#the-rollout-interlock)).
//!
//! The progress deadline bounds every step that waits on the platform
//! (deploy, probe, scale, router calls). Pauses and analyses are bounded by
//! their own settings and do not count, as in Argo Rollouts.
//!
//! The code is split by concern: `builder` checks the settings and wraps
//! the adapters, `start` starts and resumes rollouts, `handle` steers one,
//! `driver` is the state machine that walks the steps and persists, `step`
//! executes one step, `log` emits events and notifications, and `shared`
//! holds what every rollout of one engine shares.

mod builder;
mod driver;
mod handle;
mod log;
mod shared;
mod start;
mod step;

pub use builder::EngineBuilder;
pub use handle::{Outcome, RolloutHandle};
pub use start::Engine;
