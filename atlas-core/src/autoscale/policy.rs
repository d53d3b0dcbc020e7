//! The horizontal policy: which metrics drive the replica count, their
//! targets, the replica bounds and the behaviour that limits how fast the
//! count may move.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::strategy::MAX_REPLICAS;

/// The Kubernetes HPA's default tolerance: no scaling while the usage ratio
/// is within 10 % of 1.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// The longest period a rate policy may have: 30 minutes, as in Kubernetes.
pub const MAX_POLICY_PERIOD: Duration = Duration::from_secs(1800);

/// The longest stabilization window: one hour, as in Kubernetes.
pub const MAX_STABILIZATION_WINDOW: Duration = Duration::from_secs(3600);

/// The Kubernetes default scale-down stabilization window: 300 s.
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// Where a metric comes from, in the Kubernetes HPA's four kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MetricSource {
    /// A resource of each pod (`cpu`, `memory`), measured per pod and
    /// compared with the pod's request as a utilization, or as an average
    /// value.
    Resource {
        /// The resource's name, e.g. `cpu`.
        resource: String,
    },
    /// A per-pod metric (requests per second, open connections), averaged
    /// over the pods.
    Pods,
    /// A metric of one object of the service (an ingress's request rate,
    /// the service's p95 latency).
    Object,
    /// A metric from outside the service (a queue's depth).
    External,
}

impl MetricSource {
    /// Whether the metric is measured once per pod.
    pub fn is_per_pod(&self) -> bool {
        matches!(self, MetricSource::Resource { .. } | MetricSource::Pods)
    }

    fn kind_name(&self) -> &'static str {
        match self {
            MetricSource::Resource { .. } => "resource",
            MetricSource::Pods => "pods",
            MetricSource::Object => "object",
            MetricSource::External => "external",
        }
    }
}

/// What a metric is held at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MetricTarget {
    /// Percent of the pods' resource request (Resource metrics only), e.g.
    /// `60.0`; may exceed 100.
    Utilization(f64),
    /// The metric's value divided by the number of pods.
    AverageValue(f64),
    /// The metric's value as measured (Object and External metrics only).
    Value(f64),
}

impl MetricTarget {
    /// The target number, whatever its kind.
    pub fn amount(&self) -> f64 {
        match *self {
            MetricTarget::Utilization(v)
            | MetricTarget::AverageValue(v)
            | MetricTarget::Value(v) => v,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            MetricTarget::Utilization(_) => "utilization",
            MetricTarget::AverageValue(_) => "average_value",
            MetricTarget::Value(_) => "value",
        }
    }
}

/// One metric the autoscaler follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// The metric's name, used in decisions and logs, e.g. `cpu` or
    /// `requests_per_second`.
    pub name: String,
    /// Where it comes from.
    pub source: MetricSource,
    /// What it is held at.
    pub target: MetricTarget,
    /// The provider's query (PromQL, a proxy metric name, …). For per-pod
    /// metrics it is run once per pod with `{{pod}}` replaced by the pod's
    /// name. Empty means the metric's name is the query.
    pub query: String,
}

impl MetricSpec {
    /// A Resource metric held at `percent` % of the pods' request.
    pub fn resource_utilization(resource: impl Into<String>, percent: f64) -> Self {
        let resource = resource.into();
        MetricSpec {
            name: resource.clone(),
            source: MetricSource::Resource { resource },
            target: MetricTarget::Utilization(percent),
            query: String::new(),
        }
    }

    /// A Pods metric held at an average of `per_pod` per pod.
    pub fn pods_average(name: impl Into<String>, per_pod: f64) -> Self {
        MetricSpec {
            name: name.into(),
            source: MetricSource::Pods,
            target: MetricTarget::AverageValue(per_pod),
            query: String::new(),
        }
    }

    /// An Object metric held at `value`.
    pub fn object_value(name: impl Into<String>, value: f64) -> Self {
        MetricSpec {
            name: name.into(),
            source: MetricSource::Object,
            target: MetricTarget::Value(value),
            query: String::new(),
        }
    }

    /// An External metric held at `target` (a value or an average value).
    pub fn external(name: impl Into<String>, target: MetricTarget) -> Self {
        MetricSpec {
            name: name.into(),
            source: MetricSource::External,
            target,
            query: String::new(),
        }
    }

    /// The same metric, measured by `query`.
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// The query text to run: `query`, or the name when it is empty.
    pub fn query_text(&self) -> &str {
        if self.query.trim().is_empty() {
            &self.name
        } else {
            &self.query
        }
    }

    /// Checks the metric; `at` is its place, e.g. `metrics[0]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `at.name`, `at.target` or
    /// `at.resource` and the rule broken.
    pub fn validate(&self, at: &str) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid(format!("{at}.name"), "must not be empty"));
        }
        if let MetricSource::Resource { resource } = &self.source
            && resource.trim().is_empty()
        {
            return Err(Error::invalid(
                format!("{at}.resource"),
                "must not be empty",
            ));
        }
        let field = format!("{at}.target");
        let amount = self.target.amount();
        if !amount.is_finite() || amount <= 0.0 {
            return Err(Error::invalid(
                field,
                format!("must be a number greater than 0, got {amount}"),
            ));
        }
        let allowed = match (&self.source, &self.target) {
            (MetricSource::Resource { .. }, MetricTarget::Value(_)) => false,
            (MetricSource::Pods, MetricTarget::AverageValue(_)) => true,
            (MetricSource::Pods, _) => false,
            (MetricSource::Object | MetricSource::External, MetricTarget::Utilization(_)) => false,
            _ => true,
        };
        if !allowed {
            return Err(Error::invalid(
                field,
                format!(
                    "a {} metric cannot have a {} target",
                    self.source.kind_name(),
                    self.target.kind_name()
                ),
            ));
        }
        Ok(())
    }
}

/// How a rate policy counts the change it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatePolicyKind {
    /// A number of replicas per period.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// One limit on how fast the replica count moves: `value` replicas or
/// percent per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePolicy {
    /// Pods or percent.
    pub kind: RatePolicyKind,
    /// How many replicas or percent; at least 1.
    pub value: u32,
    /// The period the change is counted over; more than 0 and at most
    /// [`MAX_POLICY_PERIOD`].
    pub period: Duration,
}

impl RatePolicy {
    /// `n` replicas per `period`.
    pub fn pods(n: u32, period: Duration) -> Self {
        RatePolicy {
            kind: RatePolicyKind::Pods,
            value: n,
            period,
        }
    }

    /// `percent` % per `period`.
    pub fn percent(percent: u32, period: Duration) -> Self {
        RatePolicy {
            kind: RatePolicyKind::Percent,
            value: percent,
            period,
        }
    }

    fn validate(&self, at: &str) -> Result<()> {
        if self.value == 0 {
            return Err(Error::invalid(format!("{at}.value"), "must be at least 1"));
        }
        if self.period.is_zero() {
            return Err(Error::invalid(
                format!("{at}.period"),
                "must be greater than 0",
            ));
        }
        if self.period > MAX_POLICY_PERIOD {
            return Err(Error::invalid(
                format!("{at}.period"),
                format!(
                    "must be at most {}s, got {}s",
                    MAX_POLICY_PERIOD.as_secs(),
                    self.period.as_secs_f64()
                ),
            ));
        }
        Ok(())
    }
}

/// Which rate policy wins when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectPolicy {
    /// The policy that allows the largest change (Kubernetes' default).
    #[default]
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No change in this direction at all.
    Disabled,
}

/// The rules for one direction: a stabilization window and rate policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingRules {
    /// How far back recommendations are remembered: scaling up follows the
    /// lowest recommendation in the window, scaling down the highest. At
    /// most [`MAX_STABILIZATION_WINDOW`].
    pub stabilization_window: Duration,
    /// Which policy wins.
    pub select: SelectPolicy,
    /// The rate policies; at least one unless `select` is
    /// [`SelectPolicy::Disabled`].
    pub policies: Vec<RatePolicy>,
}

impl ScalingRules {
    /// Kubernetes' default for scaling up: no window; 4 pods or 100 %,
    /// whichever is more, per 15 s.
    pub fn default_scale_up() -> Self {
        ScalingRules {
            stabilization_window: Duration::ZERO,
            select: SelectPolicy::Max,
            policies: vec![
                RatePolicy::pods(4, Duration::from_secs(15)),
                RatePolicy::percent(100, Duration::from_secs(15)),
            ],
        }
    }

    /// Kubernetes' default for scaling down: a 300 s window; 100 % per 15 s.
    pub fn default_scale_down() -> Self {
        ScalingRules {
            stabilization_window: DEFAULT_SCALE_DOWN_WINDOW,
            select: SelectPolicy::Max,
            policies: vec![RatePolicy::percent(100, Duration::from_secs(15))],
        }
    }

    /// The longest policy period: how long scale events must be remembered.
    pub fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Checks the rules; `at` is their place, e.g. `behavior.scale_up`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `at.stabilization_window`,
    /// `at.policies` or `at.policies[i].period` / `.value`.
    pub fn validate(&self, at: &str) -> Result<()> {
        if self.stabilization_window > MAX_STABILIZATION_WINDOW {
            return Err(Error::invalid(
                format!("{at}.stabilization_window"),
                format!(
                    "must be at most {}s, got {}s",
                    MAX_STABILIZATION_WINDOW.as_secs(),
                    self.stabilization_window.as_secs_f64()
                ),
            ));
        }
        if self.policies.is_empty() && self.select != SelectPolicy::Disabled {
            return Err(Error::invalid(
                format!("{at}.policies"),
                "must hold at least one policy unless select is disabled",
            ));
        }
        for (i, p) in self.policies.iter().enumerate() {
            p.validate(&format!("{at}.policies[{i}]"))?;
        }
        Ok(())
    }
}

/// Both directions' rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behavior {
    /// Rules for adding replicas.
    pub scale_up: ScalingRules,
    /// Rules for removing replicas.
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    /// Kubernetes' default behaviour.
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules::default_scale_down(),
        }
    }
}

/// A horizontal autoscaling policy: the Kubernetes HPA's settings.
///
/// ```
/// use atlas_core::autoscale::HorizontalPolicy;
/// let policy = HorizontalPolicy::web_service();
/// policy.validate()?;
/// assert_eq!((policy.min_replicas, policy.max_replicas), (3, 100));
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HorizontalPolicy {
    /// The fewest replicas; at least 1.
    pub min_replicas: u32,
    /// The most replicas; at least `min_replicas`, at most
    /// [`MAX_REPLICAS`].
    pub max_replicas: u32,
    /// No scaling while `|1 − usage/target| ≤ tolerance`; 0 to below 1.
    /// Default [`DEFAULT_TOLERANCE`].
    pub tolerance: f64,
    /// The metrics; the replica count is the largest any of them asks for.
    /// At least one.
    pub metrics: Vec<MetricSpec>,
    /// Stabilization windows and rate policies.
    pub behavior: Behavior,
}

impl HorizontalPolicy {
    /// A policy with Kubernetes' defaults (tolerance 0.1, default
    /// behaviour) for `metrics` between `min` and `max` replicas.
    pub fn new(min_replicas: u32, max_replicas: u32, metrics: Vec<MetricSpec>) -> Self {
        HorizontalPolicy {
            min_replicas,
            max_replicas,
            tolerance: DEFAULT_TOLERANCE,
            metrics,
            behavior: Behavior::default(),
        }
    }

    /// Atlas's policy for a web service: CPU at 60 % and memory at 70 % of
    /// the request, 500 requests/s and 100 open connections per replica,
    /// p95 latency at 200 ms; 3 to 100 replicas; scale up by at most 100 %
    /// per 15 s, down by at most 10 % per 60 s (with Kubernetes' 300 s
    /// scale-down window).
    ///
    /// The metrics are named `cpu`, `memory`, `requests_per_second`,
    /// `open_connections` and `p95_latency_seconds` (an Object metric in
    /// seconds); set each one's `query` for the provider in use.
    pub fn web_service() -> Self {
        HorizontalPolicy {
            min_replicas: 3,
            max_replicas: 100,
            tolerance: DEFAULT_TOLERANCE,
            metrics: vec![
                MetricSpec::resource_utilization("cpu", 60.0),
                MetricSpec::resource_utilization("memory", 70.0),
                MetricSpec::pods_average("requests_per_second", 500.0),
                MetricSpec::object_value("p95_latency_seconds", 0.2),
                MetricSpec::pods_average("open_connections", 100.0),
            ],
            behavior: Behavior {
                scale_up: ScalingRules {
                    stabilization_window: Duration::ZERO,
                    select: SelectPolicy::Max,
                    policies: vec![RatePolicy::percent(100, Duration::from_secs(15))],
                },
                scale_down: ScalingRules {
                    stabilization_window: DEFAULT_SCALE_DOWN_WINDOW,
                    select: SelectPolicy::Max,
                    policies: vec![RatePolicy::percent(10, Duration::from_secs(60))],
                },
            },
        }
    }

    /// The same policy with only the metrics named in `names`, in their
    /// order here; unknown names are ignored.
    pub fn with_metrics_named(mut self, names: &[&str]) -> Self {
        self.metrics.retain(|m| names.contains(&m.name.as_str()));
        self
    }

    /// The same policy between other bounds.
    pub fn with_bounds(mut self, min_replicas: u32, max_replicas: u32) -> Self {
        self.min_replicas = min_replicas;
        self.max_replicas = max_replicas;
        self
    }

    /// The same policy with another tolerance.
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The same policy with another behaviour.
    pub fn with_behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// Checks every rule.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for the first rule broken, naming the field:
    /// `min_replicas` (0, or above `max_replicas`), `max_replicas` (above
    /// [`MAX_REPLICAS`]), `tolerance`, `metrics` (none),
    /// `metrics[i].target` (zero, negative or not a number, or a kind the
    /// source cannot have), `behavior.scale_up.policies[j].period` (0 or
    /// over 1800 s), `behavior.scale_down.stabilization_window` (over
    /// 3600 s), ….
    pub fn validate(&self) -> Result<()> {
        if self.min_replicas == 0 {
            return Err(Error::invalid("min_replicas", "must be at least 1"));
        }
        if self.max_replicas > MAX_REPLICAS {
            return Err(Error::invalid(
                "max_replicas",
                format!("must be at most {MAX_REPLICAS}, got {}", self.max_replicas),
            ));
        }
        if self.min_replicas > self.max_replicas {
            return Err(Error::invalid(
                "min_replicas",
                format!(
                    "must not exceed max_replicas ({} > {})",
                    self.min_replicas, self.max_replicas
                ),
            ));
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(Error::invalid(
                "tolerance",
                format!("must be at least 0 and below 1, got {}", self.tolerance),
            ));
        }
        if self.metrics.is_empty() {
            return Err(Error::invalid("metrics", "must hold at least one metric"));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            m.validate(&format!("metrics[{i}]"))?;
            if self.metrics[..i].iter().any(|o| o.name == m.name) {
                return Err(Error::invalid(
                    format!("metrics[{i}].name"),
                    format!("{:?} is used by another metric", m.name),
                ));
            }
        }
        self.behavior.scale_up.validate("behavior.scale_up")?;
        self.behavior.scale_down.validate("behavior.scale_down")?;
        Ok(())
    }
}
