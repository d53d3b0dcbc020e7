//! Alert rules: evaluation over a [`MetricProvider`], with Prometheus'
//! alerting semantics, and export as a Prometheus alerting-rules file.
//!
//! An [`AlertRule`] is an expression (one value from the provider), a
//! [`Condition`] on it, a `for` duration and a [`Severity`]. An
//! [`AlertEvaluator`] evaluates a [`RuleSet`] every `interval`, on tokio's
//! clock, and moves each rule through its states:
//!
//! ```text
//!            met                 met for `for`
//! Inactive ───────▶ Pending ────────────────────▶ Firing
//!    ▲                 │ not met (no notification)  │ not met
//!    └─────────────────┘                            ▼
//!    ◀──────────────────────────────────────── Resolved
//! ```
//!
//! - A rule notifies when it starts firing, again every `resend_interval`
//!   while it fires, and once when it resolves; a rule that is pending and
//!   clears never notifies, so a condition flapping inside `for` stays
//!   quiet. With `for` zero a met condition fires at once.
//! - "No data" (an empty result, NaN) means the condition is not met, as
//!   in Prometheus, where an empty vector is no alert.
//! - A provider error changes nothing: a pending rule stays pending, a
//!   firing one keeps firing (and is not resolved by an outage of the
//!   metrics backend). The error is logged and kept in the rule's status.
//!
//! [`RuleSet::to_prometheus_yaml`] writes the same rules as a Prometheus
//! rules file (`promtool check rules` accepts it), so the rules can run in
//! Prometheus itself; [`seed_rules`] is the default rule set.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::analysis::{Comparison, Condition};
use crate::error::{Error, Result};
use crate::metrics::{Measurement, MetricProvider, MetricQuery};
use crate::notify::{Notification, Notifier, Severity};

/// Default evaluation interval of a [`RuleSet`]: 30 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Default interval at which a firing alert is notified again: 1 minute,
/// Prometheus' resend delay, well inside Alertmanager's 5 minute
/// `resolve_timeout`.
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The alert's name, `alertname` in Prometheus and Alertmanager:
    /// letters, digits and `_`, not starting with a digit.
    pub name: String,
    /// The provider query (PromQL for Prometheus) giving one value.
    pub expr: String,
    /// The alert is active while the value meets this.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", default)]
    pub for_duration: Duration,
    /// How urgent it is: [`Severity::Critical`] or [`Severity::Warning`].
    pub severity: Severity,
    /// Extra labels on the alert (`alertname` and `severity` are added).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations, e.g. `summary` and `description`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl AlertRule {
    /// A rule with no `for`, labels or annotations.
    pub fn new(
        name: impl Into<String>,
        expr: impl Into<String>,
        condition: Condition,
        severity: Severity,
    ) -> Self {
        AlertRule {
            name: name.into(),
            expr: expr.into(),
            condition,
            for_duration: Duration::ZERO,
            severity,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Sets the `for` duration.
    pub fn for_duration(mut self, d: Duration) -> Self {
        self.for_duration = d;
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Checks the rules; `at` is the field path used in errors.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `<at>.name` (not a valid alert name),
    /// `<at>.expr` (empty), `<at>.severity` (`info`), `<at>.labels.<k>` /
    /// `<at>.annotations.<k>` (not a valid label name, or a reserved one:
    /// `alertname`, `severity`, or starting with `__`).
    pub fn validate(&self, at: &str) -> Result<()> {
        if !is_label_name(&self.name) {
            return Err(Error::invalid(
                format!("{at}.name"),
                format!(
                    "{:?} must be letters, digits and '_', not starting with a digit",
                    self.name
                ),
            ));
        }
        if self.expr.trim().is_empty() {
            return Err(Error::invalid(format!("{at}.expr"), "must not be empty"));
        }
        if self.severity == Severity::Info {
            return Err(Error::invalid(
                format!("{at}.severity"),
                "must be critical or warning",
            ));
        }
        for (kind, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            for key in map.keys() {
                let field = format!("{at}.{kind}.{key}");
                if !is_label_name(key) || key.starts_with("__") {
                    return Err(Error::invalid(
                        field,
                        "must be letters, digits and '_', not starting with a digit or '__'",
                    ));
                }
                if kind == "labels" && (key == "alertname" || key == "severity") {
                    return Err(Error::invalid(field, "is set from the rule itself"));
                }
            }
        }
        Ok(())
    }

    /// The alert's full label set: the rule's labels plus `alertname` and
    /// `severity`. Firing and resolved notifications carry the same set.
    pub fn alert_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("alertname".into(), self.name.clone());
        labels.insert("severity".into(), self.severity.to_string());
        labels
    }

    /// The PromQL alert expression: `(expr) <op> threshold`.
    pub fn promql(&self) -> String {
        let op = match self.condition.op {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        };
        format!("({}) {op} {}", self.expr.trim(), self.condition.threshold)
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A named group of rules evaluated together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// The group name (a Prometheus rule group).
    pub name: String,
    /// How often the rules are evaluated. Default 30 s.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// The rules.
    pub rules: Vec<AlertRule>,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

#[derive(Serialize)]
struct PromFile<'a> {
    groups: Vec<PromGroup<'a>>,
}

#[derive(Serialize)]
struct PromGroup<'a> {
    name: &'a str,
    interval: String,
    rules: Vec<PromRule<'a>>,
}

#[derive(Serialize)]
struct PromRule<'a> {
    alert: &'a str,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_duration: Option<String>,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

impl RuleSet {
    /// A rule set evaluated every 30 s.
    pub fn new(name: impl Into<String>, rules: Vec<AlertRule>) -> Self {
        RuleSet {
            name: name.into(),
            interval: DEFAULT_INTERVAL,
            rules,
        }
    }

    /// Checks every rule, a non-empty group name, a positive interval and
    /// unique alert names.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `rule_set.name`, `rule_set.interval`,
    /// `rule_set.rules` (empty) or the failing `rule_set.rules[i]…` field.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("rule_set.name", "must not be empty"));
        }
        if self.interval.is_zero() {
            return Err(Error::invalid(
                "rule_set.interval",
                "must be greater than 0",
            ));
        }
        if self.rules.is_empty() {
            return Err(Error::invalid(
                "rule_set.rules",
                "must have at least one rule",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rule_set.rules[{i}]");
            r.validate(&at)?;
            if !seen.insert(r.name.as_str()) {
                return Err(Error::invalid(
                    format!("{at}.name"),
                    format!("{:?} is used by two rules", r.name),
                ));
            }
        }
        Ok(())
    }

    /// The rules as a Prometheus alerting-rules file (one group).
    ///
    /// # Errors
    /// Those of [`validate`](Self::validate); [`Error::Backend`] if YAML
    /// serialisation fails.
    pub fn to_prometheus_yaml(&self) -> Result<String> {
        self.validate()?;
        let file = PromFile {
            groups: vec![PromGroup {
                name: &self.name,
                interval: prometheus_duration(self.interval),
                rules: self
                    .rules
                    .iter()
                    .map(|r| PromRule {
                        alert: &r.name,
                        expr: r.promql(),
                        for_duration: (!r.for_duration.is_zero())
                            .then(|| prometheus_duration(r.for_duration)),
                        labels: r
                            .labels
                            .clone()
                            .into_iter()
                            .chain([("severity".to_string(), r.severity.to_string())])
                            .collect(),
                        annotations: &r.annotations,
                    })
                    .collect(),
            }],
        };
        serde_yaml_ng::to_string(&file)
            .map_err(|e| Error::backend_with("yaml", "serialising the rules", e))
    }

    /// Writes [`to_prometheus_yaml`](Self::to_prometheus_yaml) to `path`.
    ///
    /// # Errors
    /// Those of `to_prometheus_yaml`; [`Error::Backend`] when the file
    /// cannot be written.
    pub fn write_prometheus_rules(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = self.to_prometheus_yaml()?;
        std::fs::write(path, text).map_err(|e| {
            Error::backend_with("filesystem", format!("writing {}", path.display()), e)
        })?;
        tracing::info!(path = %path.display(), rules = self.rules.len(), "wrote prometheus rules");
        Ok(())
    }
}

/// `d` in Prometheus duration syntax: `1h30m`, `5m`, `250ms`, `0s`.
/// Sub-millisecond parts are dropped (Prometheus has no finer unit).
pub fn prometheus_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// The metric in which Atlas's proxy exports, per certificate it serves,
/// when that certificate expires (Unix time), like blackbox_exporter's
/// `probe_ssl_earliest_cert_expiry`.
pub const PROXY_CERT_EXPIRY: &str = "atlas_proxy_tls_certificate_expiry_timestamp_seconds";

/// Which scrape jobs the [`seed_rules`] select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedJobs {
    /// The application's job (`up`, `http_requests_total`,
    /// `http_request_duration_seconds`). Default `app`.
    pub app: String,
    /// node_exporter's job (CPU, memory, disk). Default `node`.
    pub node: String,
    /// postgres_exporter's job (`pg_up`). Default `postgres`.
    pub database: String,
    /// blackbox_exporter's job (`probe_ssl_earliest_cert_expiry`). Default
    /// `blackbox`. The certificate rule also reads the expiry of the
    /// certificates Atlas's own proxy serves ([`PROXY_CERT_EXPIRY`]),
    /// whatever job scrapes it.
    pub blackbox: String,
}

impl Default for SeedJobs {
    fn default() -> Self {
        SeedJobs {
            app: "app".into(),
            node: "node".into(),
            database: "postgres".into(),
            blackbox: "blackbox".into(),
        }
    }
}

/// The default rule set (group `atlas`), the alert table of Atlas's
/// monitoring stack, over the standard metrics of the application
/// (`up`, `http_requests_total{code}`, `http_request_duration_seconds`),
/// node_exporter, postgres_exporter and blackbox_exporter:
///
/// | alert | severity | fires when | for |
/// |---|---|---|---|
/// | `ApplicationDown` | critical | `min(up)` of the app < 1 | 1m |
/// | `HighErrorRate` | critical | 5xx share of requests over 5m > 1 % | 5m |
/// | `HighResponseTime` | critical | p95 request duration over 5m > 500 ms | 5m |
/// | `DatabaseConnectionFailure` | critical | `min(pg_up)` < 1 | 1m |
/// | `HighCpuUsage` | warning | non-idle CPU share over 5m > 80 % | 10m |
/// | `HighMemoryUsage` | warning | used memory share > 80 % | 10m |
/// | `LowDiskSpace` | warning | smallest free-space share of a real filesystem < 20 % | 10m |
/// | `CertificateExpiringSoon` | warning | days to the earliest certificate expiry < 30 | 1h |
///
/// The table gives a duration only for "down > 1 min"; the others use the
/// `for` values common in public rule collections, long enough to ride out
/// one bad scrape. Every expression aggregates to one value, as the
/// evaluator needs.
pub fn seed_rules(jobs: &SeedJobs) -> RuleSet {
    let c = |op, t| Condition { op, threshold: t };
    let min = |m: u64| Duration::from_secs(m * 60);
    let app = &jobs.app;
    let node = &jobs.node;
    let fs = format!("job=\"{node}\",fstype!~\"tmpfs|overlay|squashfs\"");
    let rules = vec![
        AlertRule::new("ApplicationDown", format!("min(up{{job=\"{app}\"}})"), c(Comparison::Lt, 1.0), Severity::Critical)
            .for_duration(min(1))
            .annotation("summary", format!("{app} is down"))
            .annotation("description", "At least one target of the application has not answered its scrape for over a minute."),
        AlertRule::new(
            "HighErrorRate",
            format!("sum(rate(http_requests_total{{job=\"{app}\",code=~\"5..\"}}[5m])) / sum(rate(http_requests_total{{job=\"{app}\"}}[5m]))"),
            c(Comparison::Gt, 0.01),
            Severity::Critical,
        )
        .for_duration(min(5))
        .annotation("summary", format!("{app}: more than 1% of requests fail"))
        .annotation("description", "The share of 5xx responses over 5 minutes is above 1%."),
        AlertRule::new(
            "HighResponseTime",
            format!("histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{job=\"{app}\"}}[5m])))"),
            c(Comparison::Gt, 0.5),
            Severity::Critical,
        )
        .for_duration(min(5))
        .annotation("summary", format!("{app}: p95 response time above 500ms"))
        .annotation("description", "The 95th percentile request duration over 5 minutes is above 500 ms."),
        AlertRule::new(
            "DatabaseConnectionFailure",
            format!("min(pg_up{{job=\"{}\"}})", jobs.database),
            c(Comparison::Lt, 1.0),
            Severity::Critical,
        )
        .for_duration(min(1))
        .annotation("summary", "the database cannot be reached")
        .annotation("description", "postgres_exporter cannot connect to the database."),
        AlertRule::new(
            "HighCpuUsage",
            format!("1 - avg(rate(node_cpu_seconds_total{{job=\"{node}\",mode=\"idle\"}}[5m]))"),
            c(Comparison::Gt, 0.8),
            Severity::Warning,
        )
        .for_duration(min(10))
        .annotation("summary", "CPU usage above 80%"),
        AlertRule::new(
            "HighMemoryUsage",
            format!("1 - sum(node_memory_MemAvailable_bytes{{job=\"{node}\"}}) / sum(node_memory_MemTotal_bytes{{job=\"{node}\"}})"),
            c(Comparison::Gt, 0.8),
            Severity::Warning,
        )
        .for_duration(min(10))
        .annotation("summary", "memory usage above 80%"),
        AlertRule::new(
            "LowDiskSpace",
            format!("min(node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}})"),
            c(Comparison::Lt, 0.2),
            Severity::Warning,
        )
        .for_duration(min(10))
        .annotation("summary", "less than 20% disk space free"),
        AlertRule::new(
            "CertificateExpiringSoon",
            format!(
                "min((probe_ssl_earliest_cert_expiry{{job=\"{}\"}} or {PROXY_CERT_EXPIRY}) - time()) / 86400",
                jobs.blackbox
            ),
            c(Comparison::Lt, 30.0),
            Severity::Warning,
        )
        .for_duration(min(60))
        .annotation("summary", "a TLS certificate expires in less than 30 days"),
    ];
    RuleSet::new("atlas", rules)
}

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// The condition is not met.
    Inactive,
    /// The condition is met, not yet for `for`.
    Pending {
        /// When it was first met (tokio clock).
        since: Instant,
    },
    /// The condition has been met for `for`: the alert is firing.
    Firing {
        /// When it was first met (tokio clock).
        since: Instant,
        /// When it started firing (wall clock), sent as the alert's start.
        started_at: SystemTime,
    },
    /// It fired and the condition cleared; like `Inactive` for evaluation.
    Resolved {
        /// When it resolved (wall clock).
        at: SystemTime,
    },
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending { .. } => "pending",
            AlertState::Firing { .. } => "firing",
            AlertState::Resolved { .. } => "resolved",
        })
    }
}

/// A rule's status after the latest evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertStatus {
    /// The rule's name.
    pub name: String,
    /// Its state.
    pub state: AlertState,
    /// The last value measured, if any.
    pub last_value: Option<f64>,
    /// The last provider error, cleared by the next successful evaluation.
    pub last_error: Option<String>,
}

struct Tracked {
    state: AlertState,
    last_value: Option<f64>,
    last_error: Option<String>,
    last_sent: Option<Instant>,
}

/// Evaluates a [`RuleSet`] against a [`MetricProvider`] (see the module
/// docs for the semantics). Uses tokio's clock.
pub struct AlertEvaluator {
    rules: RuleSet,
    tracked: Vec<Tracked>,
    resend_interval: Duration,
}

impl fmt::Debug for AlertEvaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertEvaluator")
            .field("rule_set", &self.rules.name)
            .field("states", &self.statuses())
            .finish()
    }
}

impl AlertEvaluator {
    /// An evaluator with every rule inactive.
    ///
    /// # Errors
    /// Those of [`RuleSet::validate`].
    pub fn new(rules: RuleSet) -> Result<Self> {
        rules.validate()?;
        let tracked = rules
            .rules
            .iter()
            .map(|_| Tracked {
                state: AlertState::Inactive,
                last_value: None,
                last_error: None,
                last_sent: None,
            })
            .collect();
        Ok(AlertEvaluator {
            rules,
            tracked,
            resend_interval: DEFAULT_RESEND_INTERVAL,
        })
    }

    /// How often a firing alert is notified again. Default 1 minute.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `alerts.resend_interval` when zero.
    pub fn with_resend_interval(mut self, interval: Duration) -> Result<Self> {
        if interval.is_zero() {
            return Err(Error::invalid(
                "alerts.resend_interval",
                "must be greater than 0",
            ));
        }
        self.resend_interval = interval;
        Ok(self)
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Every rule's status.
    pub fn statuses(&self) -> Vec<AlertStatus> {
        self.rules
            .rules
            .iter()
            .zip(&self.tracked)
            .map(|(r, t)| AlertStatus {
                name: r.name.clone(),
                state: t.state,
                last_value: t.last_value,
                last_error: t.last_error.clone(),
            })
            .collect()
    }

    /// Evaluates every rule once, now, and returns the notifications due:
    /// alerts that started firing, firing alerts due for a resend, and
    /// alerts that resolved.
    pub async fn evaluate(&mut self, provider: &dyn MetricProvider) -> Vec<Notification> {
        let queries = self.rules.rules.iter().map(|r| {
            let q = MetricQuery {
                metric: r.name.clone(),
                query: r.expr.clone(),
                window: self.rules.interval,
                args: BTreeMap::new(),
            };
            async move { provider.measure(&q).await }
        });
        let results = futures::future::join_all(queries).await;
        let now = Instant::now();
        let mut out = Vec::new();
        for ((rule, t), result) in self.rules.rules.iter().zip(&mut self.tracked).zip(results) {
            let active = match result {
                Ok(m) => {
                    t.last_error = None;
                    t.last_value = m.value();
                    matches!(m, Measurement::Value(v) if rule.condition.is_met(v))
                }
                Err(e) => {
                    tracing::warn!(alert = %rule.name, error = %e, "alert rule evaluation failed; state kept");
                    t.last_error = Some(e.to_string());
                    continue;
                }
            };
            let before = t.state;
            t.state = match (t.state, active) {
                (AlertState::Inactive | AlertState::Resolved { .. }, true) => {
                    if rule.for_duration.is_zero() {
                        AlertState::Firing {
                            since: now,
                            started_at: SystemTime::now(),
                        }
                    } else {
                        AlertState::Pending { since: now }
                    }
                }
                (AlertState::Pending { since }, true)
                    if now.duration_since(since) >= rule.for_duration =>
                {
                    AlertState::Firing {
                        since,
                        started_at: SystemTime::now(),
                    }
                }
                (AlertState::Pending { .. }, false) => AlertState::Inactive,
                (AlertState::Firing { .. }, false) => AlertState::Resolved {
                    at: SystemTime::now(),
                },
                (state, _) => state,
            };
            if before != t.state {
                tracing::info!(alert = %rule.name, from = %before, to = %t.state, value = ?t.last_value, "alert state changed");
            }
            match t.state {
                AlertState::Firing { started_at, .. } => {
                    let due = match (before, t.last_sent) {
                        (AlertState::Firing { .. }, Some(sent)) => {
                            now.duration_since(sent) >= self.resend_interval
                        }
                        _ => true,
                    };
                    if due {
                        t.last_sent = Some(now);
                        out.push(notification(rule, t.last_value, started_at, false));
                    }
                }
                AlertState::Resolved { at } if !matches!(before, AlertState::Resolved { .. }) => {
                    t.last_sent = None;
                    out.push(notification(rule, t.last_value, at, true));
                }
                _ => {}
            }
        }
        out
    }

    /// Evaluates every `interval` until `shutdown` completes, sending the
    /// notifications to `notifier`. A failed delivery is logged and the
    /// loop goes on.
    pub async fn run(
        &mut self,
        provider: &dyn MetricProvider,
        notifier: &dyn Notifier,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut ticks = tokio::time::interval(self.rules.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {
                    for n in self.evaluate(provider).await {
                        if let Err(e) = notifier.notify(&n).await {
                            tracing::warn!(summary = %n.summary, error = %e, "alert notification failed");
                        }
                    }
                }
            }
        }
    }
}

fn notification(
    rule: &AlertRule,
    value: Option<f64>,
    at: SystemTime,
    resolved: bool,
) -> Notification {
    let summary = match rule.annotations.get("summary") {
        Some(s) => s.clone(),
        None => match value {
            Some(v) => format!("{}: {v} {}", rule.name, rule.condition),
            None => rule.name.clone(),
        },
    };
    Notification {
        severity: rule.severity,
        summary,
        labels: rule.alert_labels(),
        at,
        resolved,
    }
}
