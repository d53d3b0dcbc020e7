//! # atlas-k8s
//!
//! Kubernetes adapters for Atlas: the same engine that drives local
//! processes drives Deployments and routes traffic through the routers
//! teams run.
//!
//! Every failure of the Kubernetes API maps into Atlas's error categories as
//! [`error`] documents, carrying the backend name `kubernetes`.
//!
//! ## Kubernetes version
//!
//! `k8s-openapi` needs exactly one Kubernetes version feature, chosen by the
//! final binary: add `k8s-openapi = { version = "0.28", features =
//! ["v1_32"] }` (or the version your clusters run) to the binary that embeds
//! this crate. This workspace builds with `K8S_OPENAPI_ENABLED_VERSION` set
//! in `.cargo/config.toml`.
//!
//! ## TLS
//!
//! kube is built on rustls with aws-lc-rs. A binary that also links the
//! cloud SDKs installs one provider at the start of `main`
//! (`rustls::crypto::aws_lc_rs::default_provider().install_default()`).

pub mod error;
pub mod export;
pub mod job;
pub mod manifests;
mod names;
pub mod router;
pub mod security;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workloads;

pub use error::{BACKEND, map_kube_error};
pub use export::NamespaceExport;
pub use job::{MigrationJobHook, MigrationJobRunner};
pub use router::{GatewayApiRouter, NginxIngressRouter, ServiceSelectorRouter};
pub use security::{Level, PodSecurityHook, Rule, Violation};
pub use state::KubeStateStore;
pub use workloads::{KubeWorkloads, KubeWorkloadsBuilder};
