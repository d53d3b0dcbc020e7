//! Metric analysis with Argo Rollouts' AnalysisTemplate semantics.
//!
//! An [`AnalysisTemplate`] holds metrics; each metric is measured `count`
//! times, `interval` apart, after `initial_delay`. Each measurement is judged
//! by the metric's conditions:
//!
//! | conditions set | value matches success | matches failure | neither |
//! |---|---|---|---|
//! | success only | successful | — | failed |
//! | failure only | — | failed | successful |
//! | both | successful | failed (wins) | inconclusive |
//!
//! "No data" is inconclusive, never a pass. A provider error counts toward
//! `consecutive_error_limit` (default 4, Argo's); more consecutive errors
//! than that end the metric in error. A metric fails as soon as its failed
//! measurements exceed `failure_limit`, and is inconclusive as soon as its
//! inconclusive ones exceed `inconclusive_limit`. The template fails if any
//! metric fails or errs, is inconclusive if any metric is, and succeeds
//! otherwise. Metrics run concurrently; the first failure stops the rest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::{Measurement, MetricProvider, MetricQuery};

/// A comparison operator in a [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Comparison {
    fn symbol(self) -> &'static str {
        match self {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        }
    }
}

/// A typed condition on a measured value: `value <op> threshold`.
///
/// Parses from config strings. Thresholds may carry a unit, converted to
/// the base unit Prometheus uses: durations (`ns`, `us`, `ms`, `s`, `m`,
/// `h`) become seconds, and `%` divides by 100.
///
/// ```
/// use atlas_core::analysis::Condition;
/// let c: Condition = "<= 200ms".parse()?;
/// assert!(c.is_met(0.150));
/// assert!(!c.is_met(0.250));
/// let e: Condition = "< 1%".parse()?;
/// assert!(e.is_met(0.005));
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Condition {
    /// The operator.
    pub op: Comparison,
    /// The right-hand side, in base units.
    pub threshold: f64,
}

impl Condition {
    /// `value <op> threshold`.
    pub fn new(op: Comparison, threshold: f64) -> Result<Self> {
        if !threshold.is_finite() {
            return Err(Error::invalid(
                "condition",
                "threshold must be a finite number",
            ));
        }
        Ok(Condition { op, threshold })
    }

    /// Whether `value` satisfies the condition. NaN satisfies nothing.
    pub fn is_met(&self, value: f64) -> bool {
        let t = self.threshold;
        match self.op {
            Comparison::Lt => value < t,
            Comparison::Le => value <= t,
            Comparison::Gt => value > t,
            Comparison::Ge => value >= t,
            Comparison::Eq => value == t,
            Comparison::Ne => !value.is_nan() && value != t,
        }
    }
}

impl FromStr for Condition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let field = "condition";
        let s = s.trim();
        let (op, rest) = [
            ("<=", Comparison::Le),
            (">=", Comparison::Ge),
            ("==", Comparison::Eq),
            ("!=", Comparison::Ne),
            ("<", Comparison::Lt),
            (">", Comparison::Gt),
        ]
        .iter()
        .find_map(|(sym, op)| s.strip_prefix(sym).map(|rest| (*op, rest.trim())))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("{s:?} must start with one of <, <=, >, >=, ==, !="),
            )
        })?;
        if rest.is_empty() {
            return Err(Error::invalid(field, format!("{s:?} has no threshold")));
        }
        let threshold = parse_quantity(rest).ok_or_else(|| {
            Error::invalid(
                field,
                format!("{s:?}: {rest:?} is not a number, a percentage or a duration"),
            )
        })?;
        Condition::new(op, threshold)
    }
}

/// Parses `0.01`, `1%`, `200ms`, `1.5s`, `2m` into a number in base units.
fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    if let Some(p) = s.strip_suffix('%') {
        return p
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| v / 100.0);
    }
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.trim().parse().ok().filter(|v: &f64| v.is_finite())?;
    // Divide for sub-second units so `350ms` is exactly 0.35, not 0.35000000000000003.
    let (mul, div) = match unit.trim() {
        "ns" => (1.0, 1e9),
        "us" | "µs" => (1.0, 1e6),
        "ms" => (1.0, 1e3),
        "s" => (1.0, 1.0),
        "m" => (60.0, 1.0),
        "h" => (3600.0, 1.0),
        _ => return None,
    };
    Some(num * mul / div)
}

impl TryFrom<String> for Condition {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        value.parse()
    }
}

impl From<Condition> for String {
    fn from(value: Condition) -> Self {
        value.to_string()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.symbol(), self.threshold)
    }
}

/// One metric of an [`AnalysisTemplate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisMetric {
    /// Name, unique within the template, e.g. `error-rate`.
    pub name: String,
    /// The provider query, with `{{service}}`, `{{canary}}`, `{{stable}}`,
    /// `{{canary_version}}`, `{{stable_version}}`, `{{window}}` (this
    /// metric's window in Prometheus syntax, e.g. `60000ms`) and user
    /// arguments substituted before it is sent.
    pub query: String,
    /// How far back each measurement looks. Default: the interval.
    pub window: Option<Duration>,
    /// Time between measurements. Default 1 minute.
    pub interval: Duration,
    /// Number of measurements. Default 1.
    pub count: u32,
    /// Wait before the first measurement. Default none.
    pub initial_delay: Duration,
    /// A measurement matching this is successful.
    pub success_condition: Option<Condition>,
    /// A measurement matching this is failed.
    pub failure_condition: Option<Condition>,
    /// Failed measurements tolerated. Default 0.
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated. Default 0.
    pub inconclusive_limit: u32,
    /// Consecutive provider errors tolerated. Default 4.
    pub consecutive_error_limit: u32,
}

impl AnalysisMetric {
    /// A metric with Argo's defaults and no conditions yet.
    pub fn new(name: impl Into<String>, query: impl Into<String>) -> Self {
        AnalysisMetric {
            name: name.into(),
            query: query.into(),
            window: None,
            interval: Duration::from_secs(60),
            count: 1,
            initial_delay: Duration::ZERO,
            success_condition: None,
            failure_condition: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
        }
    }

    /// Sets the success condition.
    pub fn success(mut self, condition: Condition) -> Self {
        self.success_condition = Some(condition);
        self
    }

    /// Sets the failure condition.
    pub fn failure(mut self, condition: Condition) -> Self {
        self.failure_condition = Some(condition);
        self
    }

    /// Sets interval and count.
    pub fn every(mut self, interval: Duration, count: u32) -> Self {
        self.interval = interval;
        self.count = count;
        self
    }

    /// Sets the failure limit.
    pub fn failure_limit(mut self, limit: u32) -> Self {
        self.failure_limit = limit;
        self
    }

    /// Checks the rules; `at` is the field path used in errors.
    pub fn validate(&self, at: &str) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid(format!("{at}.name"), "must not be empty"));
        }
        if self.query.trim().is_empty() {
            return Err(Error::invalid(format!("{at}.query"), "must not be empty"));
        }
        if self.count < 1 {
            return Err(Error::invalid(format!("{at}.count"), "must be at least 1"));
        }
        if self.count > 1 && self.interval.is_zero() {
            return Err(Error::invalid(
                format!("{at}.interval"),
                "must be greater than 0 when count is more than 1",
            ));
        }
        if self.success_condition.is_none() && self.failure_condition.is_none() {
            return Err(Error::invalid(
                format!("{at}.success_condition"),
                "a metric needs a success_condition, a failure_condition or both",
            ));
        }
        Ok(())
    }

    /// Judges one measurement by this metric's conditions.
    pub fn judge(&self, m: &Measurement) -> MeasurementPhase {
        let Some(v) = m.value() else {
            return MeasurementPhase::Inconclusive;
        };
        let failed = self.failure_condition.map(|c| c.is_met(v));
        let passed = self.success_condition.map(|c| c.is_met(v));
        match (passed, failed) {
            (_, Some(true)) => MeasurementPhase::Failed,
            (Some(true), _) => MeasurementPhase::Successful,
            (Some(false), None) => MeasurementPhase::Failed,
            (None, Some(false)) => MeasurementPhase::Successful,
            (Some(false), Some(false)) | (None, None) => MeasurementPhase::Inconclusive,
        }
    }
}

/// A named set of metrics judged together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisTemplate {
    /// Template name, referenced by strategies.
    pub name: String,
    /// Its metrics.
    pub metrics: Vec<AnalysisMetric>,
}

impl AnalysisTemplate {
    /// A template with `metrics`.
    pub fn new(name: impl Into<String>, metrics: Vec<AnalysisMetric>) -> Self {
        AnalysisTemplate {
            name: name.into(),
            metrics,
        }
    }

    /// Checks the rules: at least one metric, unique names, each metric valid.
    pub fn validate(&self, at: &str) -> Result<()> {
        if self.metrics.is_empty() {
            return Err(Error::invalid(
                format!("{at}.metrics"),
                "must have at least one metric",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let path = format!("{at}.metrics[{i}]");
            m.validate(&path)?;
            if !seen.insert(m.name.as_str()) {
                return Err(Error::invalid(
                    format!("{path}.name"),
                    format!("{:?} is used by two metrics", m.name),
                ));
            }
        }
        Ok(())
    }
}

/// How one measurement was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeasurementPhase {
    /// Met the success condition (or missed the failure one).
    Successful,
    /// Met the failure condition (or missed the success one).
    Failed,
    /// No data, or neither condition decided.
    Inconclusive,
    /// The provider returned an error.
    Error,
}

/// How an analysis (a metric, or a whole template) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisPhase {
    /// Every metric passed.
    Successful,
    /// A metric failed.
    Failed,
    /// A metric could not decide (too many inconclusive measurements).
    Inconclusive,
    /// A metric hit its consecutive error limit.
    Error,
}

impl fmt::Display for AnalysisPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnalysisPhase::Successful => "successful",
            AnalysisPhase::Failed => "failed",
            AnalysisPhase::Inconclusive => "inconclusive",
            AnalysisPhase::Error => "error",
        })
    }
}

/// One measurement, as reported to an observer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementRecord {
    /// The metric.
    pub metric: String,
    /// What was measured; `None` when the provider failed.
    pub value: Option<Measurement>,
    /// The provider's error, when it failed.
    pub error: Option<String>,
    /// How it was judged.
    pub phase: MeasurementPhase,
}

/// The result of running a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisOutcome {
    /// The overall phase.
    pub phase: AnalysisPhase,
    /// Each metric's phase.
    pub metrics: BTreeMap<String, AnalysisPhase>,
    /// A sentence for humans: which metric decided and on what value.
    pub message: String,
}

/// Substitutes `{{key}}` (spaces inside the braces allowed) from `args`.
/// Unknown keys are an error naming the key, so a typo never reaches a
/// provider.
pub fn render_query(query: &str, args: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| Error::invalid("query", format!("unclosed '{{{{' in {query:?}")))?;
        let key = after[..end].trim();
        let value = args.get(key).ok_or_else(|| {
            Error::invalid(
                "query",
                format!("unknown argument {{{{{key}}}}} in {query:?}"),
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Runs `template` against `provider`, calling `observe` with every
/// measurement. Uses tokio's clock, so it runs under a paused clock in tests.
pub async fn run_template(
    template: &AnalysisTemplate,
    provider: &dyn MetricProvider,
    args: &BTreeMap<String, String>,
    observe: &(dyn Fn(&MeasurementRecord) + Send + Sync),
) -> Result<AnalysisOutcome> {
    let mut runs = FuturesUnordered::new();
    for metric in &template.metrics {
        let window = metric.window.unwrap_or(metric.interval);
        let mut args = args.clone();
        // `{{window}}` in Prometheus duration syntax, per metric.
        args.entry("window".to_string())
            .or_insert_with(|| format!("{}ms", window.as_millis().max(1)));
        let query = MetricQuery {
            metric: metric.name.clone(),
            query: render_query(&metric.query, &args)?,
            window,
            args,
        };
        runs.push(async move {
            let (phase, msg) = run_metric(metric, &query, provider, observe).await;
            (metric.name.clone(), phase, msg)
        });
    }
    let mut metrics = BTreeMap::new();
    let mut messages = Vec::new();
    while let Some((name, phase, msg)) = runs.next().await {
        metrics.insert(name.clone(), phase);
        if phase != AnalysisPhase::Successful {
            messages.push(format!("{name}: {msg}"));
        }
        if matches!(phase, AnalysisPhase::Failed | AnalysisPhase::Error) {
            // The first failure decides; stop measuring the others.
            break;
        }
    }
    drop(runs);
    let phase = if metrics
        .values()
        .any(|p| matches!(p, AnalysisPhase::Failed | AnalysisPhase::Error))
    {
        if metrics.values().any(|p| *p == AnalysisPhase::Failed) {
            AnalysisPhase::Failed
        } else {
            AnalysisPhase::Error
        }
    } else if metrics.values().any(|p| *p == AnalysisPhase::Inconclusive) {
        AnalysisPhase::Inconclusive
    } else {
        AnalysisPhase::Successful
    };
    let message = if messages.is_empty() {
        format!("all {} metrics successful", metrics.len())
    } else {
        messages.join("; ")
    };
    Ok(AnalysisOutcome {
        phase,
        metrics,
        message,
    })
}

async fn run_metric(
    metric: &AnalysisMetric,
    query: &MetricQuery,
    provider: &dyn MetricProvider,
    observe: &(dyn Fn(&MeasurementRecord) + Send + Sync),
) -> (AnalysisPhase, String) {
    tokio::time::sleep(metric.initial_delay).await;
    let (mut failed, mut inconclusive, mut consecutive_errors) = (0u32, 0u32, 0u32);
    let mut last = String::from("no measurement");
    for i in 0..metric.count {
        if i > 0 {
            tokio::time::sleep(metric.interval).await;
        }
        let record = match provider.measure(query).await {
            Ok(m) => {
                consecutive_errors = 0;
                let phase = metric.judge(&m);
                last = format!("measured {m}, {}", describe(metric, phase));
                MeasurementRecord {
                    metric: metric.name.clone(),
                    value: Some(m),
                    error: None,
                    phase,
                }
            }
            Err(e) => {
                consecutive_errors += 1;
                last = format!("provider error: {e}");
                MeasurementRecord {
                    metric: metric.name.clone(),
                    value: None,
                    error: Some(e.to_string()),
                    phase: MeasurementPhase::Error,
                }
            }
        };
        tracing::debug!(metric = %metric.name, phase = ?record.phase, value = ?record.value, "analysis measurement");
        observe(&record);
        match record.phase {
            MeasurementPhase::Failed => failed += 1,
            MeasurementPhase::Inconclusive => inconclusive += 1,
            _ => {}
        }
        if failed > metric.failure_limit {
            return (
                AnalysisPhase::Failed,
                format!(
                    "{failed} failed measurements (limit {}), last {last}",
                    metric.failure_limit
                ),
            );
        }
        if consecutive_errors > metric.consecutive_error_limit {
            return (
                AnalysisPhase::Error,
                format!(
                    "{consecutive_errors} consecutive errors (limit {}), last {last}",
                    metric.consecutive_error_limit
                ),
            );
        }
        if inconclusive > metric.inconclusive_limit {
            return (
                AnalysisPhase::Inconclusive,
                format!(
                    "{inconclusive} inconclusive measurements (limit {}), last {last}",
                    metric.inconclusive_limit
                ),
            );
        }
    }
    if consecutive_errors > 0 && consecutive_errors == metric.count {
        // Every measurement errored but stayed under the limit: nothing was
        // measured, so this cannot count as a pass.
        return (
            AnalysisPhase::Inconclusive,
            format!("no successful measurement, last {last}"),
        );
    }
    (AnalysisPhase::Successful, last)
}

fn describe(metric: &AnalysisMetric, phase: MeasurementPhase) -> String {
    let conds: Vec<String> = [
        metric.success_condition.map(|c| format!("success {c}")),
        metric.failure_condition.map(|c| format!("failure {c}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("{phase:?} ({})", conds.join(", ")).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;

    #[test]
    fn conditions_parse_with_units() {
        let cases = [
            ("< 0.01", Comparison::Lt, 0.01),
            ("<=200ms", Comparison::Le, 0.2),
            (">= 99.5%", Comparison::Ge, 0.995),
            ("> 2m", Comparison::Gt, 120.0),
            ("== 0", Comparison::Eq, 0.0),
            ("!= 1", Comparison::Ne, 1.0),
            ("< 1.5s", Comparison::Lt, 1.5),
            ("> 350ms", Comparison::Gt, 0.35),
        ];
        for (s, op, t) in cases {
            let c: Condition = s.parse().unwrap();
            assert_eq!(c.op, op, "{s}");
            assert_eq!(c.threshold, t, "{s}");
        }
        for bad in [
            "",
            "0.01",
            "< ",
            "<< 1",
            "< abc",
            "< 5 parsecs",
            "< NaN",
            "< inf",
        ] {
            let err = bad.parse::<Condition>().unwrap_err();
            assert!(err.to_string().contains("condition"), "{bad}: {err}");
        }
    }

    #[test]
    fn nan_meets_no_condition() {
        for s in ["< 1", "<= 1", "> 1", ">= 1", "== 1", "!= 1"] {
            let c: Condition = s.parse().unwrap();
            assert!(!c.is_met(f64::NAN), "{s}");
        }
    }

    #[test]
    fn judging_follows_argo_table() {
        let both = AnalysisMetric::new("m", "q")
            .success("< 0.01".parse().unwrap())
            .failure("> 0.05".parse().unwrap());
        assert_eq!(
            both.judge(&Measurement::Value(0.001)),
            MeasurementPhase::Successful
        );
        assert_eq!(
            both.judge(&Measurement::Value(0.1)),
            MeasurementPhase::Failed
        );
        assert_eq!(
            both.judge(&Measurement::Value(0.03)),
            MeasurementPhase::Inconclusive
        );
        assert_eq!(
            both.judge(&Measurement::NoData),
            MeasurementPhase::Inconclusive
        );
        let success_only = AnalysisMetric::new("m", "q").success("< 0.01".parse().unwrap());
        assert_eq!(
            success_only.judge(&Measurement::Value(0.03)),
            MeasurementPhase::Failed
        );
        assert_eq!(
            success_only.judge(&Measurement::NoData),
            MeasurementPhase::Inconclusive
        );
        let failure_only = AnalysisMetric::new("m", "q").failure("> 0.05".parse().unwrap());
        assert_eq!(
            failure_only.judge(&Measurement::Value(0.03)),
            MeasurementPhase::Successful
        );
        assert_eq!(
            failure_only.judge(&Measurement::NoData),
            MeasurementPhase::Inconclusive
        );
        assert_eq!(
            failure_only.judge(&Measurement::Value(f64::NAN)),
            MeasurementPhase::Inconclusive
        );
    }

    #[test]
    fn render_substitutes_and_refuses_unknown_keys() {
        let args: BTreeMap<String, String> =
            [("service".to_string(), "checkout".to_string())].into();
        assert_eq!(
            render_query("rate(x{svc=\"{{ service }}\"}[1m])", &args).unwrap(),
            "rate(x{svc=\"checkout\"}[1m])"
        );
        assert!(
            render_query("{{nope}}", &args)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        assert!(render_query("{{service", &args).is_err());
    }

    struct Series(Mutex<Vec<Result<Measurement>>>);

    #[async_trait]
    impl MetricProvider for Series {
        async fn measure(&self, _: &MetricQuery) -> Result<Measurement> {
            let mut v = self.0.lock().unwrap();
            if v.is_empty() {
                Ok(Measurement::NoData)
            } else {
                v.remove(0)
            }
        }
    }

    fn series(v: Vec<Result<Measurement>>) -> Series {
        Series(Mutex::new(v))
    }

    async fn run(metric: AnalysisMetric, provider: &Series) -> AnalysisOutcome {
        let t = AnalysisTemplate::new("t", vec![metric]);
        run_template(&t, provider, &BTreeMap::new(), &|_| {})
            .await
            .unwrap()
    }

    fn error_rate() -> AnalysisMetric {
        AnalysisMetric::new("error-rate", "q")
            .success("< 0.01".parse().unwrap())
            .every(Duration::from_secs(10), 3)
    }

    #[tokio::test(start_paused = true)]
    async fn limits_decide_the_metric() {
        let v = |x| Ok(Measurement::Value(x));
        let ok = run(error_rate(), &series(vec![v(0.0), v(0.001), v(0.002)])).await;
        assert_eq!(ok.phase, AnalysisPhase::Successful);

        let fail = run(error_rate(), &series(vec![v(0.0), v(0.5), v(0.0)])).await;
        assert_eq!(fail.phase, AnalysisPhase::Failed);

        let tolerated = run(
            error_rate().failure_limit(1),
            &series(vec![v(0.5), v(0.0), v(0.0)]),
        )
        .await;
        assert_eq!(tolerated.phase, AnalysisPhase::Successful);

        let no_data = run(error_rate(), &series(vec![])).await;
        assert_eq!(no_data.phase, AnalysisPhase::Inconclusive);

        let err = || Err(Error::transient("prom", "503"));
        let mut m = error_rate();
        m.count = 10;
        let errors = run(
            m.clone(),
            &series(vec![err(), err(), err(), err(), err(), v(0.0)]),
        )
        .await;
        assert_eq!(errors.phase, AnalysisPhase::Error);
        let recovered = run(
            m,
            &series(vec![
                err(),
                err(),
                err(),
                err(),
                v(0.0),
                v(0.0),
                v(0.0),
                v(0.0),
                v(0.0),
                v(0.0),
            ]),
        )
        .await;
        assert_eq!(recovered.phase, AnalysisPhase::Successful);
    }

    #[tokio::test(start_paused = true)]
    async fn measurements_are_spaced_by_interval() {
        let start = tokio::time::Instant::now();
        let mut m = error_rate();
        m.initial_delay = Duration::from_secs(5);
        let out = run(
            m,
            &series((0..3).map(|_| Ok(Measurement::Value(0.0))).collect()),
        )
        .await;
        assert_eq!(out.phase, AnalysisPhase::Successful);
        assert_eq!(start.elapsed(), Duration::from_secs(25));
    }
}
