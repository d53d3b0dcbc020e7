//! Atlas's cluster policies as typed Kubernetes objects and as YAML.
//!
//! Each object has a small builder whose `build()` validates every field
//! and refuses bad input with [`atlas_core::Error::InvalidInput`] naming the
//! field. The defaults are Atlas's production numbers:
//!
//! | object | defaults |
//! |---|---|
//! | [`HpaBuilder`] (`autoscaling/v2`) | CPU 60 %, memory 70 % average utilization, 500 requests/s per pod, 3 to 100 replicas, scale up by at most 100 % per 15 s, scale down by at most 10 % per 60 s, stabilization 0 s up / 300 s down |
//! | [`PdbBuilder`] (`policy/v1`) | exactly one of `minAvailable` / `maxUnavailable` ([`DisruptionBudget`]) |
//! | [`default_deny`], [`AllowFromRouterBuilder`], [`dns_egress`] (`networking/v1`) | deny all ingress and egress, then allow the router to reach the app port and the pods to reach cluster DNS |
//! | [`ContainerResources`] | requests 250m CPU / 512Mi, limits 500m CPU / 1Gi |
//! | [`AtlasRoleBuilder`], [`role_binding`] (`rbac.authorization.k8s.io/v1`) | the least Atlas needs in one namespace, per router |
//!
//! [`to_yaml`], [`to_json`] and [`from_yaml`] turn any of them into text
//! for `kubectl apply` and back.
//!
//! ```
//! use atlas_k8s::manifests::{HpaBuilder, to_yaml};
//!
//! let hpa = HpaBuilder::new("checkout", "checkout-green")
//!     .namespace("shop")
//!     .build()?;
//! let yaml = to_yaml(&hpa)?;
//! assert!(yaml.contains("averageUtilization: 60"));
//! assert!(yaml.contains("maxReplicas: 100"));
//! // Refused input names the field.
//! let err = HpaBuilder::new("checkout", "checkout-green").replicas(5, 4).build();
//! assert!(matches!(err, Err(atlas_core::Error::InvalidInput { field, .. }) if field == "max_replicas"));
//! # Ok::<(), atlas_core::Error>(())
//! ```

use std::collections::BTreeMap;

use atlas_core::{Error, Result};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BACKEND;
use crate::names::{check_name, check_object_name};

/// Labels: key to value.
pub type Labels = BTreeMap<String, String>;

/// Refuses an empty label map or one with an empty key or a value longer
/// than 63 characters (the Kubernetes limit).
fn check_labels(field: &str, labels: &Labels) -> Result<()> {
    if labels.is_empty() {
        return Err(Error::invalid(field, "must hold at least one label"));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 253 {
            return Err(Error::invalid(
                format!("{field}.{k}"),
                "label keys must be 1-253 characters",
            ));
        }
        if v.len() > 63 {
            return Err(Error::invalid(
                format!("{field}.{k}"),
                "label values must be at most 63 characters",
            ));
        }
    }
    Ok(())
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(Labels::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            "atlas".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

fn check_namespace(namespace: Option<&str>) -> Result<()> {
    match namespace {
        Some(ns) => check_name("namespace", ns),
        None => Ok(()),
    }
}

fn selector(labels: &Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

/// Renders a manifest as YAML, as `kubectl apply -f` reads it.
///
/// # Errors
/// [`Error::Backend`] if the object cannot be serialized (a k8s-openapi
/// object always can).
pub fn to_yaml<T: Serialize>(object: &T) -> Result<String> {
    serde_yaml_ng::to_string(object)
        .map_err(|e| Error::backend_with(BACKEND, "rendering a manifest as YAML", e))
}

/// Renders a manifest as pretty JSON.
///
/// # Errors
/// [`Error::Backend`] if the object cannot be serialized.
pub fn to_json<T: Serialize>(object: &T) -> Result<String> {
    serde_json::to_string_pretty(object)
        .map_err(|e| Error::backend_with(BACKEND, "rendering a manifest as JSON", e))
}

/// Reads a manifest from YAML into its typed object; k8s-openapi checks
/// `apiVersion` and `kind`.
///
/// # Errors
/// [`Error::InvalidInput`] naming `yaml` when the text is not that object.
pub fn from_yaml<T: DeserializeOwned>(yaml: &str) -> Result<T> {
    serde_yaml_ng::from_str(yaml).map_err(|e| Error::invalid("yaml", e.to_string()))
}

// ---------------------------------------------------------------------------
// HorizontalPodAutoscaler
// ---------------------------------------------------------------------------

/// The default custom metric name for the requests-per-second target; a
/// Prometheus adapter must serve it through the custom metrics API.
pub const DEFAULT_RPS_METRIC: &str = "http_requests_per_second";

/// One scaling policy of an HPA behavior: change by at most `percent` of the
/// current replicas per `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PercentPolicy {
    /// The largest change per period, in percent of the current replicas.
    pub percent: u32,
    /// The period, in seconds (1 to 1800, the Kubernetes bounds).
    pub period_seconds: u32,
}

/// Builds an `autoscaling/v2` HorizontalPodAutoscaler for a Deployment.
///
/// Defaults: CPU 60 %, memory 70 %, [`DEFAULT_RPS_METRIC`] at 500 per pod
/// (a `Pods` metric, averaged over the pods), 3 to 100 replicas; scale up by
/// at most 100 % per 15 s with no stabilization window (the Kubernetes
/// default for scale-up, so load spikes are answered at once); scale down by
/// at most 10 % per 60 s after a 300 s stabilization window (the Kubernetes
/// default for scale-down, so a brief dip does not shed capacity).
#[derive(Debug, Clone)]
pub struct HpaBuilder {
    name: String,
    namespace: Option<String>,
    target: String,
    min: u32,
    max: u32,
    cpu: Option<u32>,
    memory: Option<u32>,
    rps: Option<u32>,
    rps_metric: String,
    scale_up: PercentPolicy,
    scale_down: PercentPolicy,
    up_window: u32,
    down_window: u32,
}

impl HpaBuilder {
    /// An HPA named `name` scaling the Deployment `deployment`, with the
    /// defaults above.
    pub fn new(name: impl Into<String>, deployment: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            target: deployment.into(),
            min: 3,
            max: 100,
            cpu: Some(60),
            memory: Some(70),
            rps: Some(500),
            rps_metric: DEFAULT_RPS_METRIC.to_owned(),
            scale_up: PercentPolicy {
                percent: 100,
                period_seconds: 15,
            },
            scale_down: PercentPolicy {
                percent: 10,
                period_seconds: 60,
            },
            up_window: 0,
            down_window: 300,
        }
    }

    /// The namespace (unset: the one `kubectl apply` uses).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Minimum and maximum replicas.
    pub fn replicas(mut self, min: u32, max: u32) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Target average CPU utilization in percent of the request; `None`
    /// leaves CPU out.
    pub fn cpu_utilization(mut self, percent: Option<u32>) -> Self {
        self.cpu = percent;
        self
    }

    /// Target average memory utilization in percent of the request; `None`
    /// leaves memory out.
    pub fn memory_utilization(mut self, percent: Option<u32>) -> Self {
        self.memory = percent;
        self
    }

    /// Target requests per second per pod; `None` leaves the metric out.
    pub fn requests_per_second(mut self, rps: Option<u32>) -> Self {
        self.rps = rps;
        self
    }

    /// The custom metric that carries requests per second per pod.
    pub fn rps_metric(mut self, name: impl Into<String>) -> Self {
        self.rps_metric = name.into();
        self
    }

    /// The scale-up policy.
    pub fn scale_up(mut self, policy: PercentPolicy) -> Self {
        self.scale_up = policy;
        self
    }

    /// The scale-down policy.
    pub fn scale_down(mut self, policy: PercentPolicy) -> Self {
        self.scale_down = policy;
        self
    }

    /// Stabilization windows in seconds for scaling up and down (0 to
    /// 3600, the Kubernetes bounds).
    pub fn stabilization(mut self, up_seconds: u32, down_seconds: u32) -> Self {
        self.up_window = up_seconds;
        self.down_window = down_seconds;
        self
    }

    /// Validates and builds the HPA.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: a bad name or namespace,
    /// `min_replicas` of 0, `max_replicas` below `min_replicas`, a zero
    /// utilization or rps target, no metric at all, an empty metric name, a
    /// zero policy percentage, a period outside 1..=1800 s or a window
    /// above 3600 s.
    pub fn build(self) -> Result<HorizontalPodAutoscaler> {
        let _span = tracing::debug_span!("build_hpa", name = %self.name).entered();
        check_object_name("name", &self.name)?;
        check_namespace(self.namespace.as_deref())?;
        check_object_name("scale_target_ref.name", &self.target)?;
        if self.min == 0 {
            return Err(Error::invalid("min_replicas", "must be at least 1"));
        }
        if self.max < self.min {
            return Err(Error::invalid(
                "max_replicas",
                format!("{} is below min_replicas {}", self.max, self.min),
            ));
        }
        let max = i32::try_from(self.max)
            .map_err(|_| Error::invalid("max_replicas", "must fit in a 32-bit integer"))?;
        let mut metrics = Vec::new();
        for (field, name, target) in [
            ("cpu_utilization", "cpu", self.cpu),
            ("memory_utilization", "memory", self.memory),
        ] {
            if let Some(percent) = target {
                let percent = positive(field, percent)?;
                metrics.push(MetricSpec {
                    type_: "Resource".to_owned(),
                    resource: Some(ResourceMetricSource {
                        name: name.to_owned(),
                        target: MetricTarget {
                            type_: "Utilization".to_owned(),
                            average_utilization: Some(percent),
                            ..MetricTarget::default()
                        },
                    }),
                    ..MetricSpec::default()
                });
            }
        }
        if let Some(rps) = self.rps {
            positive("requests_per_second", rps)?;
            if self.rps_metric.trim().is_empty() {
                return Err(Error::invalid("rps_metric", "must not be empty"));
            }
            metrics.push(MetricSpec {
                type_: "Pods".to_owned(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: self.rps_metric.clone(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".to_owned(),
                        average_value: Some(Quantity(rps.to_string())),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            });
        }
        if metrics.is_empty() {
            return Err(Error::invalid("metrics", "at least one metric is needed"));
        }
        let scale_up = rules("scale_up", self.scale_up, self.up_window)?;
        let scale_down = rules("scale_down", self.scale_down, self.down_window)?;
        Ok(HorizontalPodAutoscaler {
            metadata: meta(&self.name, self.namespace.as_deref()),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".to_owned()),
                    kind: "Deployment".to_owned(),
                    name: self.target.clone(),
                },
                min_replicas: Some(self.min as i32),
                max_replicas: max,
                metrics: Some(metrics),
                behavior: Some(HorizontalPodAutoscalerBehavior {
                    scale_up: Some(scale_up),
                    scale_down: Some(scale_down),
                }),
            }),
            status: None,
        })
    }
}

fn positive(field: &str, value: u32) -> Result<i32> {
    if value == 0 {
        return Err(Error::invalid(field, "must be greater than 0"));
    }
    i32::try_from(value).map_err(|_| Error::invalid(field, "must fit in a 32-bit integer"))
}

fn rules(field: &str, policy: PercentPolicy, window: u32) -> Result<HPAScalingRules> {
    let percent = positive(&format!("{field}.percent"), policy.percent)?;
    if !(1..=1800).contains(&policy.period_seconds) {
        return Err(Error::invalid(
            format!("{field}.period_seconds"),
            "must be between 1 and 1800",
        ));
    }
    if window > 3600 {
        return Err(Error::invalid(
            format!("{field}.stabilization_window_seconds"),
            "must be at most 3600",
        ));
    }
    Ok(HPAScalingRules {
        policies: Some(vec![HPAScalingPolicy {
            type_: "Percent".to_owned(),
            value: percent,
            period_seconds: policy.period_seconds as i32,
        }]),
        select_policy: Some("Max".to_owned()),
        stabilization_window_seconds: Some(window as i32),
    })
}

// ---------------------------------------------------------------------------
// PodDisruptionBudget
// ---------------------------------------------------------------------------

/// A number of pods, absolute or in percent of the desired replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodCount {
    /// An absolute number of pods.
    Count(u32),
    /// A percentage of the desired replicas (0 to 100).
    Percent(u32),
}

impl PodCount {
    fn to_int_or_string(self, field: &str) -> Result<IntOrString> {
        match self {
            PodCount::Count(n) => i32::try_from(n)
                .map(IntOrString::Int)
                .map_err(|_| Error::invalid(field, "must fit in a 32-bit integer")),
            PodCount::Percent(p) if p <= 100 => Ok(IntOrString::String(format!("{p}%"))),
            PodCount::Percent(p) => Err(Error::invalid(field, format!("{p}% is above 100%"))),
        }
    }

    fn from_int_or_string(field: &str, v: &IntOrString) -> Result<Self> {
        match v {
            IntOrString::Int(n) => u32::try_from(*n)
                .map(PodCount::Count)
                .map_err(|_| Error::invalid(field, "must not be negative")),
            IntOrString::String(s) => s
                .strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .map(PodCount::Percent)
                .ok_or_else(|| Error::invalid(field, format!("{s:?} is neither a count nor N%"))),
        }
    }
}

/// What a PodDisruptionBudget guarantees: Kubernetes accepts exactly one of
/// `minAvailable` and `maxUnavailable`, so it is one or the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisruptionBudget {
    /// At least this many pods stay available during voluntary disruptions.
    MinAvailable(PodCount),
    /// At most this many pods may be unavailable during voluntary disruptions.
    MaxUnavailable(PodCount),
}

impl DisruptionBudget {
    /// Reads the two optional fields of a PDB spec, refusing both or neither.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `min_available` / `max_unavailable`.
    pub fn from_fields(
        min_available: Option<&IntOrString>,
        max_unavailable: Option<&IntOrString>,
    ) -> Result<Self> {
        match (min_available, max_unavailable) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "min_available/max_unavailable",
                "set exactly one of them, not both",
            )),
            (None, None) => Err(Error::invalid(
                "min_available/max_unavailable",
                "set exactly one of them",
            )),
            (Some(v), None) => Ok(DisruptionBudget::MinAvailable(
                PodCount::from_int_or_string("min_available", v)?,
            )),
            (None, Some(v)) => Ok(DisruptionBudget::MaxUnavailable(
                PodCount::from_int_or_string("max_unavailable", v)?,
            )),
        }
    }
}

/// Builds a `policy/v1` PodDisruptionBudget over the pods a label selector
/// picks.
#[derive(Debug, Clone)]
pub struct PdbBuilder {
    name: String,
    namespace: Option<String>,
    budget: DisruptionBudget,
    selector: Labels,
}

impl PdbBuilder {
    /// A PDB named `name` with `budget`; set its selector with
    /// [`selector`](Self::selector).
    pub fn new(name: impl Into<String>, budget: DisruptionBudget) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            budget,
            selector: Labels::new(),
        }
    }

    /// The namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The labels of the pods the budget protects.
    pub fn selector(mut self, labels: Labels) -> Self {
        self.selector = labels;
        self
    }

    /// Validates and builds the PDB.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: a bad name or namespace,
    /// an empty selector (which would protect every pod of the namespace),
    /// a percentage above 100, or `max_unavailable` of zero pods (which
    /// blocks every drain).
    pub fn build(self) -> Result<PodDisruptionBudget> {
        let _span = tracing::debug_span!("build_pdb", name = %self.name).entered();
        check_object_name("name", &self.name)?;
        check_namespace(self.namespace.as_deref())?;
        check_labels("selector", &self.selector)?;
        let (min_available, max_unavailable) = match self.budget {
            DisruptionBudget::MinAvailable(c) => (Some(c.to_int_or_string("min_available")?), None),
            DisruptionBudget::MaxUnavailable(c) => {
                if matches!(c, PodCount::Count(0) | PodCount::Percent(0)) {
                    return Err(Error::invalid(
                        "max_unavailable",
                        "0 would block every node drain",
                    ));
                }
                (None, Some(c.to_int_or_string("max_unavailable")?))
            }
        };
        Ok(PodDisruptionBudget {
            metadata: meta(&self.name, self.namespace.as_deref()),
            spec: Some(PodDisruptionBudgetSpec {
                min_available,
                max_unavailable,
                selector: Some(selector(&self.selector)),
                unhealthy_pod_eviction_policy: None,
            }),
            status: None,
        })
    }
}

// ---------------------------------------------------------------------------
// NetworkPolicy
// ---------------------------------------------------------------------------

/// A NetworkPolicy named `default-deny` selecting every pod of `namespace`
/// and allowing no ingress and no egress. Every other policy of the
/// namespace then opens exactly what is needed.
///
/// Egress is denied too, DNS included: pair it with [`dns_egress`] or pods
/// cannot resolve names.
///
/// # Errors
/// [`Error::InvalidInput`] naming `namespace` if it is not a valid name.
pub fn default_deny(namespace: &str) -> Result<NetworkPolicy> {
    check_name("namespace", namespace)?;
    tracing::debug!(namespace, "building default-deny network policy");
    Ok(NetworkPolicy {
        metadata: meta("default-deny", Some(namespace)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: None,
            egress: None,
        }),
    })
}

/// A NetworkPolicy named `allow-dns` letting every pod of `namespace` reach
/// cluster DNS (pods labelled `k8s-app: kube-dns` in `kube-system`, the
/// label CoreDNS and kube-dns carry) on port 53 over UDP and TCP. Needed
/// beside [`default_deny`], which blocks all egress.
///
/// # Errors
/// [`Error::InvalidInput`] naming `namespace` if it is not a valid name.
pub fn dns_egress(namespace: &str) -> Result<NetworkPolicy> {
    check_name("namespace", namespace)?;
    tracing::debug!(namespace, "building DNS egress network policy");
    let port = |protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.to_owned()),
        end_port: None,
    };
    Ok(NetworkPolicy {
        metadata: meta("allow-dns", Some(namespace)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Egress".to_owned()]),
            ingress: None,
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector(&Labels::from([(
                        "kubernetes.io/metadata.name".to_owned(),
                        "kube-system".to_owned(),
                    )]))),
                    pod_selector: Some(selector(&Labels::from([(
                        "k8s-app".to_owned(),
                        "kube-dns".to_owned(),
                    )]))),
                    ip_block: None,
                }]),
                ports: Some(vec![port("UDP"), port("TCP")]),
            }]),
        }),
    })
}

/// Where the router's pods run, for [`AllowFromRouterBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterPeer {
    /// Pods with these labels in the app's own namespace.
    Pods(Labels),
    /// Every pod of the namespaces with these labels (e.g.
    /// `kubernetes.io/metadata.name: ingress-nginx`).
    Namespace(Labels),
    /// Pods with `pods` labels in the namespaces with `namespace` labels.
    PodsInNamespace {
        /// Labels of the namespace.
        namespace: Labels,
        /// Labels of the pods.
        pods: Labels,
    },
}

/// Builds a NetworkPolicy that lets the router reach the app's pods on the
/// app's port (TCP), and nothing else in.
#[derive(Debug, Clone)]
pub struct AllowFromRouterBuilder {
    name: String,
    namespace: Option<String>,
    app: Labels,
    port: u16,
    router: Option<RouterPeer>,
}

impl AllowFromRouterBuilder {
    /// A policy named `name` for the pods labelled `app`, opening `port`.
    /// Set the router with [`router`](Self::router).
    pub fn new(name: impl Into<String>, app: Labels, port: u16) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            app,
            port,
            router: None,
        }
    }

    /// The namespace of the app.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Where the router runs.
    pub fn router(mut self, router: RouterPeer) -> Self {
        self.router = Some(router);
        self
    }

    /// Validates and builds the policy.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: a bad name or namespace,
    /// empty app labels (which would select every pod), port 0, no router,
    /// or a router with empty labels (which would allow every pod or
    /// namespace).
    pub fn build(self) -> Result<NetworkPolicy> {
        let _span = tracing::debug_span!("build_allow_from_router", name = %self.name).entered();
        check_object_name("name", &self.name)?;
        check_namespace(self.namespace.as_deref())?;
        check_labels("app", &self.app)?;
        if self.port == 0 {
            return Err(Error::invalid("port", "must be between 1 and 65535"));
        }
        let peer = match &self.router {
            None => return Err(Error::invalid("router", "must be set")),
            Some(RouterPeer::Pods(pods)) => {
                check_labels("router.pods", pods)?;
                NetworkPolicyPeer {
                    pod_selector: Some(selector(pods)),
                    ..NetworkPolicyPeer::default()
                }
            }
            Some(RouterPeer::Namespace(ns)) => {
                check_labels("router.namespace", ns)?;
                NetworkPolicyPeer {
                    namespace_selector: Some(selector(ns)),
                    ..NetworkPolicyPeer::default()
                }
            }
            Some(RouterPeer::PodsInNamespace { namespace, pods }) => {
                check_labels("router.namespace", namespace)?;
                check_labels("router.pods", pods)?;
                NetworkPolicyPeer {
                    namespace_selector: Some(selector(namespace)),
                    pod_selector: Some(selector(pods)),
                    ip_block: None,
                }
            }
        };
        Ok(NetworkPolicy {
            metadata: meta(&self.name, self.namespace.as_deref()),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(&self.app)),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![peer]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(self.port))),
                        protocol: Some("TCP".to_owned()),
                        end_port: None,
                    }]),
                }]),
                egress: None,
            }),
        })
    }
}

// ---------------------------------------------------------------------------
// Container resources
// ---------------------------------------------------------------------------

/// CPU and memory requests and limits for every container of a pod.
///
/// The default is Atlas's production sizing: requests 250m CPU and 512Mi,
/// limits 500m CPU and 1Gi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerResources {
    /// CPU request in millicores.
    pub cpu_request_millis: u32,
    /// CPU limit in millicores.
    pub cpu_limit_millis: u32,
    /// Memory request in MiB.
    pub memory_request_mib: u32,
    /// Memory limit in MiB.
    pub memory_limit_mib: u32,
}

impl Default for ContainerResources {
    fn default() -> Self {
        Self {
            cpu_request_millis: 250,
            cpu_limit_millis: 500,
            memory_request_mib: 512,
            memory_limit_mib: 1024,
        }
    }
}

fn mib(v: u32) -> Quantity {
    if v.is_multiple_of(1024) {
        Quantity(format!("{}Gi", v / 1024))
    } else {
        Quantity(format!("{v}Mi"))
    }
}

impl ContainerResources {
    /// Validates the numbers and renders them as a container's
    /// `resources`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: a zero value, or a request
    /// above its limit.
    pub fn requirements(&self) -> Result<ResourceRequirements> {
        for (field, v) in [
            ("cpu_request_millis", self.cpu_request_millis),
            ("cpu_limit_millis", self.cpu_limit_millis),
            ("memory_request_mib", self.memory_request_mib),
            ("memory_limit_mib", self.memory_limit_mib),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be greater than 0"));
            }
        }
        if self.cpu_request_millis > self.cpu_limit_millis {
            return Err(Error::invalid(
                "cpu_request_millis",
                "must not exceed cpu_limit_millis",
            ));
        }
        if self.memory_request_mib > self.memory_limit_mib {
            return Err(Error::invalid(
                "memory_request_mib",
                "must not exceed memory_limit_mib",
            ));
        }
        let pair = |cpu: u32, mem: u32| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(format!("{cpu}m"))),
                ("memory".to_owned(), mib(mem)),
            ])
        };
        Ok(ResourceRequirements {
            requests: Some(pair(self.cpu_request_millis, self.memory_request_mib)),
            limits: Some(pair(self.cpu_limit_millis, self.memory_limit_mib)),
            claims: None,
        })
    }

    /// Sets these resources on every container and init container of
    /// `template`, replacing what they had.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the numbers are invalid (see
    /// [`requirements`](Self::requirements)) or the template has no
    /// container (`spec.containers`).
    pub fn apply_to(&self, template: &mut PodTemplateSpec) -> Result<()> {
        let requirements = self.requirements()?;
        let spec = template
            .spec
            .as_mut()
            .filter(|s| !s.containers.is_empty())
            .ok_or_else(|| Error::invalid("spec.containers", "the template has no container"))?;
        tracing::debug!(
            containers = spec.containers.len(),
            "applying container resources"
        );
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.resources = Some(requirements.clone());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------

/// A traffic router Atlas drives, each needing access to its own objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouterKind {
    /// Service selector switching: Services only (always granted).
    ServiceSelector,
    /// Gateway API HTTPRoute weights.
    GatewayApi,
    /// NGINX ingress canary annotations (a canary Ingress is created).
    Nginx,
    /// Istio VirtualService weights and DestinationRule subsets.
    Istio,
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: None,
        non_resource_urls: None,
    }
}

/// Builds the namespaced `Role` holding the least Atlas needs:
///
/// | API group | resources | verbs | why |
/// |---|---|---|---|
/// | `apps` | deployments | get, list, watch, create, patch | run and scale the slots |
/// | core | pods | get, list, patch | set `controller.kubernetes.io/pod-deletion-cost` before a scale-down |
/// | core | services | get, create, patch | the slot Services and the stable Service's selector (a server-side apply that creates an object is also authorized as `create`) |
/// | `discovery.k8s.io` | endpointslices | get, list, watch | ready endpoints of a slot |
/// | core | configmaps | get, create, update | rollout state |
/// | `coordination.k8s.io` | leases | get, create, update | one controller per service |
/// | `gateway.networking.k8s.io` | httproutes | get, create, patch | [`RouterKind::GatewayApi`] |
/// | `networking.k8s.io` | ingresses | get, create, patch | [`RouterKind::Nginx`] |
/// | `networking.istio.io` | virtualservices, destinationrules | get, create, patch | [`RouterKind::Istio`] |
/// | `batch` | jobs (get, list, watch, create), cronjobs (get) | | [`migration_jobs`](Self::migration_jobs): migrations run as Jobs |
/// | core | pods/log | get | [`migration_jobs`](Self::migration_jobs): the Job's log in its error |
#[derive(Debug, Clone)]
pub struct AtlasRoleBuilder {
    name: String,
    namespace: String,
    routers: Vec<RouterKind>,
    migration_jobs: bool,
}

impl AtlasRoleBuilder {
    /// A Role named `name` in `namespace`, with no router beyond the
    /// Service selector.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            routers: Vec::new(),
            migration_jobs: false,
        }
    }

    /// Grants what `atlas_k8s::job::MigrationJobRunner` needs: create and
    /// follow Jobs made from a CronJob, and read their pods' logs.
    pub fn migration_jobs(mut self, enabled: bool) -> Self {
        self.migration_jobs = enabled;
        self
    }

    /// The routers Atlas drives in this namespace.
    pub fn routers(mut self, routers: impl IntoIterator<Item = RouterKind>) -> Self {
        self.routers = routers.into_iter().collect();
        self
    }

    /// Validates and builds the Role.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `name` or `namespace` if invalid.
    pub fn build(self) -> Result<Role> {
        let _span = tracing::debug_span!("build_role", name = %self.name).entered();
        check_object_name("name", &self.name)?;
        check_name("namespace", &self.namespace)?;
        let mut routers = self.routers.clone();
        routers.sort();
        routers.dedup();
        let mut rules = vec![
            rule(
                "apps",
                &["deployments"],
                &["get", "list", "watch", "create", "patch"],
            ),
            rule("", &["pods"], &["get", "list", "patch"]),
            rule("", &["services"], &["get", "create", "patch"]),
            rule(
                "discovery.k8s.io",
                &["endpointslices"],
                &["get", "list", "watch"],
            ),
            rule("", &["configmaps"], &["get", "create", "update"]),
            rule(
                "coordination.k8s.io",
                &["leases"],
                &["get", "create", "update"],
            ),
        ];
        for r in routers {
            match r {
                RouterKind::ServiceSelector => {}
                RouterKind::GatewayApi => rules.push(rule(
                    "gateway.networking.k8s.io",
                    &["httproutes"],
                    &["get", "create", "patch"],
                )),
                RouterKind::Nginx => rules.push(rule(
                    "networking.k8s.io",
                    &["ingresses"],
                    &["get", "create", "patch"],
                )),
                RouterKind::Istio => rules.push(rule(
                    "networking.istio.io",
                    &["virtualservices", "destinationrules"],
                    &["get", "create", "patch"],
                )),
            }
        }
        if self.migration_jobs {
            rules.push(rule(
                "batch",
                &["jobs"],
                &["get", "list", "watch", "create"],
            ));
            rules.push(rule("batch", &["cronjobs"], &["get"]));
            rules.push(rule("", &["pods/log"], &["get"]));
        }
        Ok(Role {
            metadata: meta(&self.name, Some(&self.namespace)),
            rules: Some(rules),
        })
    }
}

/// A RoleBinding granting `role` to the ServiceAccount
/// `service_account_namespace/service_account`, named after the role and
/// placed in the role's namespace.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field if the role has no name or
/// namespace, or the service account's name or namespace is invalid.
pub fn role_binding(
    role: &Role,
    service_account: &str,
    service_account_namespace: &str,
) -> Result<RoleBinding> {
    let name = role
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| Error::invalid("role.metadata.name", "must be set"))?;
    let namespace = role
        .metadata
        .namespace
        .as_deref()
        .ok_or_else(|| Error::invalid("role.metadata.namespace", "must be set"))?;
    check_object_name("service_account", service_account)?;
    check_name("service_account_namespace", service_account_namespace)?;
    tracing::debug!(
        role = name,
        namespace,
        service_account,
        "building role binding"
    );
    Ok(RoleBinding {
        metadata: meta(name, Some(namespace)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: service_account.to_owned(),
            namespace: Some(service_account_namespace.to_owned()),
            api_group: None,
        }]),
    })
}
