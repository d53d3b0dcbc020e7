//! The one retry policy of the workspace: exponential backoff with jitter,
//! a per-attempt timeout and an overall budget, for calls that fail with a
//! [transient](crate::Error::is_transient) error.
//!
//! [`RetryConfig`] is the policy. It is applied two ways:
//!
//! - [`Retrying<T>`] wraps an adapter — [`Workloads`](crate::Workloads),
//!   [`TrafficRouter`](crate::TrafficRouter),
//!   [`StateStore`](crate::StateStore),
//!   [`RegionRouter`](crate::region::RegionRouter) or
//!   [`FailoverStore`](crate::failover::FailoverStore) — and retries each
//!   of its calls. The [`Engine`](crate::Engine) and the
//!   [`FailoverController`](crate::failover::FailoverController) wrap the
//!   adapters they are given this way (see
//!   [`EngineBuilder::retry`](crate::EngineBuilder::retry)).
//! - [`RetryConfig::run`] retries one replayable request; backup targets run
//!   each request (one part of an upload, a head, a page of a listing, the
//!   start of a download) through it, and HTTP clients their calls. A put's
//!   body is a one-shot stream, so a whole put is never retried: its parts
//!   are.
//!
//! Only [`Error::Transient`](crate::Error::Transient) failures are retried — throttling, 5xx,
//! timeouts of one attempt, reset connections — never a conflict, a refusal
//! or a missing object, and never for longer than
//! [`RetryConfig::retry_timeout`] in total. Every retry is a `tracing` warn
//! event naming the backend, the call, the attempt and the wait.

mod config;
mod retrying;

pub use config::{BackoffConfig, RetryConfig};
pub use retrying::Retrying;
