//! Built-in analysis metrics over the standard HTTP server metrics: request
//! success rate and latency quantiles, in the spirit of Flagger's
//! `request-success-rate` and `request-duration` checks.
//!
//! The queries assume the Prometheus naming conventions most HTTP libraries
//! follow: a counter `http_requests_total` with the status code in label
//! `code`, and a histogram `http_request_duration_seconds` (its
//! `_bucket` series with `le`). Both names and the label are settable.
//!
//! Results are in base units: the success rate is a ratio (0.99, which a
//! condition can write as `>= 99%`), latencies are seconds (a condition
//! can write `<= 500ms`). With no requests in the window the ratio is NaN,
//! which the provider reports as no data: inconclusive, never a pass.

use std::time::Duration;

use atlas_core::analysis::{AnalysisMetric, Comparison, Condition};
use atlas_core::{Error, Result};

use super::prometheus_duration;

/// Names of the standard request metrics and the series to look at.
///
/// `selector` is the label matchers inside `{...}`, for example
/// `job="checkout", slot="{{canary}}"`; the analysis engine substitutes the
/// `{{...}}` arguments before the query is sent.
///
/// ```
/// use std::time::Duration;
/// use atlas_metrics::prometheus::RequestMetrics;
/// let m = RequestMetrics::new(r#"job="checkout",slot="{{canary}}""#);
/// assert_eq!(
///     m.success_rate_query(Duration::from_secs(60)),
///     r#"sum(rate(http_requests_total{job="checkout",slot="{{canary}}",code!~"5.."}[1m])) / sum(rate(http_requests_total{job="checkout",slot="{{canary}}"}[1m]))"#
/// );
/// let metric = m.success_rate(0.99, Duration::from_secs(60))?;
/// assert_eq!(metric.name, "request-success-rate");
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMetrics {
    /// Label matchers selecting the service's series (may be empty).
    pub selector: String,
    /// The request counter. Default `http_requests_total`.
    pub requests_total: String,
    /// The duration histogram's base name, without `_bucket`. Default
    /// `http_request_duration_seconds`.
    pub duration_histogram: String,
    /// The label holding the HTTP status code. Default `code`.
    pub status_label: String,
}

impl RequestMetrics {
    /// The standard metric names, selecting series with `selector`.
    pub fn new(selector: impl Into<String>) -> Self {
        RequestMetrics {
            selector: selector.into(),
            requests_total: "http_requests_total".to_string(),
            duration_histogram: "http_request_duration_seconds".to_string(),
            status_label: "code".to_string(),
        }
    }

    /// Uses `name` as the request counter.
    pub fn with_requests_total(mut self, name: impl Into<String>) -> Self {
        self.requests_total = name.into();
        self
    }

    /// Uses `name` (without `_bucket`) as the duration histogram.
    pub fn with_duration_histogram(mut self, name: impl Into<String>) -> Self {
        self.duration_histogram = name.into();
        self
    }

    /// Reads the status code from label `label`.
    pub fn with_status_label(mut self, label: impl Into<String>) -> Self {
        self.status_label = label.into();
        self
    }

    fn matchers(&self, extra: Option<String>) -> String {
        let parts: Vec<String> = [
            Some(self.selector.trim().trim_end_matches(',').to_string()),
            extra,
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
        parts.join(",")
    }

    /// PromQL for the share of requests that did not fail with a 5xx over
    /// `window`, as a ratio.
    pub fn success_rate_query(&self, window: Duration) -> String {
        let w = prometheus_duration(window);
        let ok = self.matchers(Some(format!("{}!~\"5..\"", self.status_label)));
        let all = self.matchers(None);
        format!(
            "sum(rate({m}{{{ok}}}[{w}])) / sum(rate({m}{{{all}}}[{w}]))",
            m = self.requests_total
        )
    }

    /// PromQL for the share of requests that failed with a 5xx over
    /// `window`, as a ratio.
    pub fn error_rate_query(&self, window: Duration) -> String {
        let w = prometheus_duration(window);
        let bad = self.matchers(Some(format!("{}=~\"5..\"", self.status_label)));
        let all = self.matchers(None);
        format!(
            "sum(rate({m}{{{bad}}}[{w}])) / sum(rate({m}{{{all}}}[{w}]))",
            m = self.requests_total
        )
    }

    /// PromQL for the `quantile` (0 < q < 1) request duration in seconds
    /// over `window`, from the histogram's buckets.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `quantile` outside (0, 1).
    pub fn latency_quantile_query(&self, quantile: f64, window: Duration) -> Result<String> {
        if !(quantile > 0.0 && quantile < 1.0) {
            return Err(Error::invalid(
                "quantile",
                format!("{quantile} must be between 0 and 1, exclusive"),
            ));
        }
        let w = prometheus_duration(window);
        Ok(format!(
            "histogram_quantile({quantile}, sum by (le) (rate({h}_bucket{{{sel}}}[{w}])))",
            h = self.duration_histogram,
            sel = self.matchers(None)
        ))
    }

    /// The `request-success-rate` analysis metric: successful while the
    /// success ratio over `window` is at least `min_ratio` (e.g. 0.99),
    /// measured once per `window` (set `interval`/`count` on the result
    /// with [`AnalysisMetric::every`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `min_ratio` outside 0–1 or a zero `window`.
    pub fn success_rate(&self, min_ratio: f64, window: Duration) -> Result<AnalysisMetric> {
        if !(0.0..=1.0).contains(&min_ratio) {
            return Err(Error::invalid(
                "min_ratio",
                format!("{min_ratio} must be between 0 and 1"),
            ));
        }
        let window = check_window(window)?;
        Ok(metric(
            "request-success-rate",
            self.success_rate_query(window),
            window,
            Condition::new(Comparison::Ge, min_ratio)?,
        ))
    }

    /// The `request-error-rate` analysis metric: successful while the 5xx
    /// ratio over `window` is at most `max_ratio` (e.g. 0.01).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `max_ratio` outside 0–1 or a zero `window`.
    pub fn error_rate(&self, max_ratio: f64, window: Duration) -> Result<AnalysisMetric> {
        if !(0.0..=1.0).contains(&max_ratio) {
            return Err(Error::invalid(
                "max_ratio",
                format!("{max_ratio} must be between 0 and 1"),
            ));
        }
        let window = check_window(window)?;
        Ok(metric(
            "request-error-rate",
            self.error_rate_query(window),
            window,
            Condition::new(Comparison::Le, max_ratio)?,
        ))
    }

    /// The `request-duration-p95` analysis metric: successful while the
    /// 95th percentile request duration over `window` is at most `max`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on a zero `window`.
    pub fn p95_latency(&self, max: Duration, window: Duration) -> Result<AnalysisMetric> {
        self.latency("request-duration-p95", 0.95, max, window)
    }

    /// The `request-duration-p99` analysis metric: successful while the
    /// 99th percentile request duration over `window` is at most `max`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on a zero `window`.
    pub fn p99_latency(&self, max: Duration, window: Duration) -> Result<AnalysisMetric> {
        self.latency("request-duration-p99", 0.99, max, window)
    }

    fn latency(
        &self,
        name: &str,
        q: f64,
        max: Duration,
        window: Duration,
    ) -> Result<AnalysisMetric> {
        let window = check_window(window)?;
        Ok(metric(
            name,
            self.latency_quantile_query(q, window)?,
            window,
            Condition::new(Comparison::Le, max.as_secs_f64())?,
        ))
    }
}

fn check_window(window: Duration) -> Result<Duration> {
    if window < Duration::from_millis(1) {
        return Err(Error::invalid("window", "must be at least 1ms"));
    }
    Ok(window)
}

fn metric(name: &str, query: String, window: Duration, success: Condition) -> AnalysisMetric {
    let mut m = AnalysisMetric::new(name, query).success(success);
    m.window = Some(window);
    m.interval = window;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_use_selector_and_names() {
        let m = RequestMetrics::new("job=\"api\",")
            .with_requests_total("requests_total")
            .with_status_label("status")
            .with_duration_histogram("latency_seconds");
        assert_eq!(
            m.error_rate_query(Duration::from_secs(300)),
            "sum(rate(requests_total{job=\"api\",status=~\"5..\"}[5m])) / sum(rate(requests_total{job=\"api\"}[5m]))"
        );
        assert_eq!(
            m.latency_quantile_query(0.99, Duration::from_secs(30))
                .unwrap(),
            "histogram_quantile(0.99, sum by (le) (rate(latency_seconds_bucket{job=\"api\"}[30s])))"
        );
        let empty = RequestMetrics::new("");
        assert_eq!(
            empty.success_rate_query(Duration::from_secs(60)),
            "sum(rate(http_requests_total{code!~\"5..\"}[1m])) / sum(rate(http_requests_total{}[1m]))"
        );
    }

    #[test]
    fn metrics_carry_conditions_and_window() {
        let m = RequestMetrics::new("job=\"api\"");
        let p95 = m
            .p95_latency(Duration::from_millis(500), Duration::from_secs(60))
            .unwrap();
        assert_eq!(p95.name, "request-duration-p95");
        assert_eq!(p95.window, Some(Duration::from_secs(60)));
        let c = p95.success_condition.unwrap();
        assert!(c.is_met(0.5) && !c.is_met(0.501));
        let sr = m.success_rate(0.99, Duration::from_secs(60)).unwrap();
        assert!(sr.success_condition.unwrap().is_met(0.995));
        assert!(!sr.success_condition.unwrap().is_met(0.98));
        let er = m.error_rate(0.01, Duration::from_secs(60)).unwrap();
        assert!(er.success_condition.unwrap().is_met(0.0));
        sr.validate("m").unwrap();
    }

    #[test]
    fn bad_arguments_name_the_field() {
        let m = RequestMetrics::new("");
        assert!(
            m.success_rate(1.5, Duration::from_secs(1))
                .unwrap_err()
                .to_string()
                .contains("min_ratio")
        );
        assert!(
            m.error_rate(-0.1, Duration::from_secs(1))
                .unwrap_err()
                .to_string()
                .contains("max_ratio")
        );
        assert!(
            m.latency_quantile_query(1.0, Duration::from_secs(1))
                .unwrap_err()
                .to_string()
                .contains("quantile")
        );
        assert!(
            m.p99_latency(Duration::from_secs(1), Duration::ZERO)
                .unwrap_err()
                .to_string()
                .contains("window")
        );
    }
}
