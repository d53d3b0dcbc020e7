//! # atlas-local
//!
//! The embedded default for one host, with no Kubernetes and no cloud:
//!
//! - [`ProcessWorkloads`](process::ProcessWorkloads) runs each replica of a
//!   release as an OS process on its own loopback port;
//! - [`ProxyRouter`](proxy::ProxyRouter) is Atlas's own HTTP/1.1 reverse
//!   proxy, splitting traffic by weight between the two slots, with
//!   per-slot metrics usable as a [`MetricProvider`](atlas_core::MetricProvider);
//! - [`FileStateStore`](file_store::FileStateStore) persists rollout state
//!   in files, with an OS file lock as the lease;
//! - [`LocalSignals`](signals::LocalSignals) measures each replica's CPU,
//!   memory, requests per second, p95 latency and open connections for an
//!   autoscaler.

pub mod daemon;
pub mod file_store;
pub mod process;
pub mod proxy;
pub mod signals;
