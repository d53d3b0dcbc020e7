//! # atlas-metrics
//!
//! Signals for Atlas:
//!
//! - [`PrometheusProvider`]: analysis measurements and judge samples from
//!   the Prometheus HTTP API, with built-in request success-rate and latency
//!   [templates](prometheus::templates);
//! - health [probes](probe) (HTTP, TCP, TLS certificate expiry) behind a
//!   shared connection limit;
//! - Atlas's own metrics ([`Telemetry`], with `prometheus-client`) fed by
//!   rollout events, and the `/metrics`, `/health`, `/ready`
//!   [endpoints];
//! - [`AlertmanagerNotifier`], which delivers notifications and the alerts
//!   of [`atlas_core::alerts`] to Alertmanager;
//! - more notifiers — [`SlackNotifier`] (Block Kit), [`PagerDutyNotifier`]
//!   (Events API v2), [`SignedWebhookNotifier`] (HMAC-SHA256) — and the
//!   [`EscalationPolicy`] that routes between them by severity and
//!   priority, de-duplicates, rate-limits and escalates;
//! - [`AlertmanagerReceiver`], Alertmanager's webhook receiver, which hands
//!   each alert to a notifier such as the escalation policy;
//! - JSON [logs](logging) for Loki, with stable field names (`service`,
//!   `rollout`, `slot`, `step`, `event`).
//! - with feature `forecast`, `forecast::MstlForecaster`, the load
//!   forecaster for [`atlas_core::autoscale::PredictiveAutoscaler`].
//!
//! ## HTTP clients
//!
//! Two clients, each where it fits:
//!
//! - **Probes** speak HTTP/1.1 with `hyper`'s connection API over a socket
//!   they open themselves, one connection per attempt and no pool. That keeps
//!   an attempt cheap (no client state, no background tasks) and lets the
//!   [`ConnectionLimiter`] count sockets exactly:
//!   a pooled client would keep idle sockets open behind its back.
//! - **API clients** ([`PrometheusProvider`], [`AlertmanagerNotifier`]) use `reqwest` 0.13: pooled
//!   keep-alive connections to one server, timeouts, form and JSON bodies
//!   and redacted auth headers come ready-made, and its rustls backend
//!   takes the `ClientConfig` built here.
//!
//! ## TLS
//!
//! All TLS is rustls (never OpenSSL) with the **aws-lc-rs** crypto provider:
//! `rustls` and `tokio-rustls` with their `aws_lc_rs` feature, `reqwest`
//! with its `rustls` feature (which is aws-lc-rs; `ring` is never enabled by
//! this crate). This crate builds every [`rustls::ClientConfig`] with that
//! provider named explicitly ([`tls::TlsOptions`]) and hands it to
//! `reqwest` as a preconfigured backend, so it works whatever provider the
//! process installed, and never panics with "could not automatically
//! determine the process-level CryptoProvider". Binaries that also link
//! kube or the cloud SDKs should still call
//! [`tls::install_default_crypto_provider`] at the start of `main` for
//! *those* crates.
//!
//! ## The statistical judge
//!
//! [`PrometheusProvider`] also implements
//! [`atlas_core::judge::SampleProvider`] (range queries), so
//! [`atlas_core::judge::CanaryJudge`] can compare canary and stable samples
//! from Prometheus with the Mann-Whitney U test.

pub mod alertmanager;
mod client;
mod delivery;
pub mod endpoints;
pub mod escalation;
#[cfg(feature = "forecast")]
pub mod forecast;
pub mod identity;
pub mod logging;
pub mod pagerduty;
pub mod probe;
pub mod prometheus;
pub mod receiver;
mod server;
pub mod slack;
pub mod telemetry;
pub mod tls;
pub mod webhook;

pub use alertmanager::AlertmanagerNotifier;
pub use client::Credentials;
pub use endpoints::{Endpoints, EndpointsServer, ReadinessCheck};
pub use escalation::{DispatchReport, EscalationPolicy, RateLimit, Route, Suppressed};
pub use identity::{Priority, dedup_key};
pub use pagerduty::PagerDutyNotifier;
pub use probe::{ConnectionLimiter, HttpProbe, TcpProbe, TlsCertProbe};
pub use prometheus::PrometheusProvider;
pub use receiver::{AlertmanagerReceiver, ReceiverServer};
pub use slack::SlackNotifier;
pub use telemetry::{InstrumentedProbe, Telemetry};
pub use tls::TlsOptions;
pub use webhook::SignedWebhookNotifier;
