//! [`PrometheusProvider`]: analysis measurements from the Prometheus HTTP API.
//!
//! Instant queries (`/api/v1/query`) answer [`MetricProvider::measure`];
//! range queries (`/api/v1/query_range`) answer [`SampleProvider::samples`]
//! for the statistical judge. Both are also public as
//! [`PrometheusProvider::query`] and [`PrometheusProvider::query_range`],
//! which return every result type Prometheus has ([`QueryResult`]).
//!
//! Queries are sent as form-encoded POSTs, so long PromQL never hits a URL
//! length limit and needs no escaping by the caller.

mod result;
pub mod templates;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use atlas_core::judge::SampleProvider;
use atlas_core::retry::RetryConfig;
use atlas_core::{Error, Measurement, MetricProvider, MetricQuery, Result};
use tracing::Instrument;

pub use atlas_core::alerts::prometheus_duration;
pub use result::{InstantSeries, MatrixReduction, QueryResult, RangeSeries, Sample};
pub use templates::RequestMetrics;

use crate::client::{ApiClient, Credentials};
use crate::tls::TlsOptions;

const BACKEND: &str = "prometheus";

/// The default time one query may take, including Prometheus' own
/// evaluation: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers analysis queries from a Prometheus server (or anything that
/// speaks its HTTP API: Thanos, Cortex, Mimir, VictoriaMetrics).
///
/// Defaults: no credentials, 30 s timeout per request,
/// [`RetryConfig::control_plane`] (3 retries, 100 ms doubling to 5 s, with
/// jitter) for transient failures, matrix results reduced to their last sample, judge
/// samples every `window / 30` (at least 1 s).
///
/// Errors map to categories: connection failures, timeouts, HTTP 5xx/429,
/// and Prometheus' `timeout`/`canceled`/`unavailable` errors are
/// [`Error::Transient`] (and retried); a query Prometheus refuses
/// (`bad_data`, HTTP 400, or an execution error, HTTP 422) or a result with
/// several series is [`Error::InvalidInput`] on `query`; bad credentials,
/// unknown paths and answers that are not the Prometheus API are
/// [`Error::Backend`].
///
/// ```no_run
/// use atlas_core::{MetricProvider, MetricQuery};
/// use atlas_metrics::PrometheusProvider;
/// # async fn demo() -> atlas_core::Result<()> {
/// let prom = PrometheusProvider::builder("http://127.0.0.1:9090")
///     .bearer_token(std::env::var("PROM_TOKEN").unwrap_or_default())
///     .build()?;
/// let q = MetricQuery {
///     metric: "up".into(),
///     query: "min(up{job=\"checkout\"})".into(),
///     window: std::time::Duration::from_secs(60),
///     args: Default::default(),
/// };
/// println!("{}", prom.measure(&q).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PrometheusProvider {
    api: ApiClient,
    retry: RetryConfig,
    reduction: MatrixReduction,
    sample_step: Option<Duration>,
}

impl fmt::Debug for PrometheusProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusProvider")
            .field("api", &self.api)
            .field("retry", &self.retry)
            .field("reduction", &self.reduction)
            .field("sample_step", &self.sample_step)
            .finish()
    }
}

impl PrometheusProvider {
    /// A builder for the server at `url`, e.g. `http://127.0.0.1:9090` or
    /// `https://prom.internal/prometheus` (a path prefix is kept).
    pub fn builder(url: impl Into<String>) -> PrometheusProviderBuilder {
        PrometheusProviderBuilder {
            url: url.into(),
            credentials: None,
            tls: None,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryConfig::control_plane(),
            reduction: MatrixReduction::default(),
            sample_step: None,
        }
    }

    /// A provider for `url` with all defaults.
    ///
    /// # Errors
    /// As [`PrometheusProviderBuilder::build`].
    pub fn new(url: impl Into<String>) -> Result<Self> {
        PrometheusProvider::builder(url).build()
    }

    /// The server's base URL (credentials removed).
    pub fn url(&self) -> &str {
        self.api.base().as_str()
    }

    /// Runs an instant query at `at` (default: now), with retries.
    ///
    /// # Errors
    /// See the type's documentation for the categories.
    pub async fn query(&self, promql: &str, at: Option<SystemTime>) -> Result<QueryResult> {
        let mut form = vec![
            ("query", promql.to_string()),
            ("timeout", prometheus_duration(self.api.timeout)),
        ];
        if let Some(at) = at {
            form.push(("time", unix_seconds(at)));
        }
        self.call("api/v1/query", &form)
            .instrument(tracing::debug_span!("prometheus.query", promql))
            .await
    }

    /// Runs a range query from `start` to `end` every `step`, with retries.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `query_range.step` when `step` is zero or
    /// `end` is before `start`; otherwise as [`query`](Self::query).
    pub async fn query_range(
        &self,
        promql: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<QueryResult> {
        if step.is_zero() {
            return Err(Error::invalid("query_range.step", "must be greater than 0"));
        }
        if end < start {
            return Err(Error::invalid(
                "query_range.end",
                "must not be before start",
            ));
        }
        let form = vec![
            ("query", promql.to_string()),
            ("start", unix_seconds(start)),
            ("end", unix_seconds(end)),
            ("step", format!("{}", step.as_secs_f64())),
            ("timeout", prometheus_duration(self.api.timeout)),
        ];
        self.call("api/v1/query_range", &form)
            .instrument(tracing::debug_span!(
                "prometheus.query_range",
                promql,
                ?step
            ))
            .await
    }

    async fn call(&self, path: &str, form: &[(&str, String)]) -> Result<QueryResult> {
        self.retry
            .run(BACKEND, "prometheus query", || async {
                let request = self.api.post(path)?.form(form);
                let (status, body) = self.api.send(request).await?;
                result::parse_response(status, &body, &self.api)
            })
            .await
    }

    fn step_for(&self, window: Duration) -> Duration {
        self.sample_step
            .unwrap_or_else(|| (window / 30).max(Duration::from_secs(1)))
    }
}

#[async_trait]
impl MetricProvider for PrometheusProvider {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        let promql = render(query)?;
        let span = tracing::info_span!("prometheus.measure", metric = %query.metric);
        async {
            let result = self.query(&promql, None).await?;
            let m = result.to_measurement(self.reduction)?;
            tracing::debug!(measurement = %m, "measured");
            Ok(m)
        }
        .instrument(span)
        .await
    }
}

#[async_trait]
impl SampleProvider for PrometheusProvider {
    /// Every sample of every series of a range query over the last
    /// `query.window`, at the configured step, in time order per series;
    /// NaN and ±Inf samples are dropped.
    async fn samples(&self, query: &MetricQuery) -> Result<Vec<f64>> {
        let promql = render(query)?;
        let end = SystemTime::now();
        let start = end.checked_sub(query.window).unwrap_or(UNIX_EPOCH);
        let step = self.step_for(query.window);
        let span = tracing::info_span!("prometheus.samples", metric = %query.metric);
        async {
            let result = self.query_range(&promql, start, end, step).await?;
            let samples = result.finite_values();
            tracing::debug!(count = samples.len(), "sampled");
            Ok(samples)
        }
        .instrument(span)
        .await
    }
}

/// Substitutes `{{key}}` placeholders still left in the query, from the
/// query's arguments plus `window` in Prometheus duration syntax (unless the
/// arguments set `window` themselves). The analysis engine renders queries
/// before they get here, so this only does work for queries sent to the
/// provider directly.
fn render(query: &MetricQuery) -> Result<String> {
    if !query.query.contains("{{") {
        return Ok(query.query.clone());
    }
    let mut args: BTreeMap<String, String> = query.args.clone();
    args.entry("window".to_string())
        .or_insert_with(|| prometheus_duration(query.window));
    atlas_core::analysis::render_query(&query.query, &args)
}

fn unix_seconds(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{:.3}", d.as_secs_f64()),
        Err(e) => format!("-{:.3}", e.duration().as_secs_f64()),
    }
}

/// Builds a [`PrometheusProvider`].
#[derive(Debug)]
pub struct PrometheusProviderBuilder {
    url: String,
    credentials: Option<Credentials>,
    tls: Option<TlsOptions>,
    timeout: Duration,
    retry: RetryConfig,
    reduction: MatrixReduction,
    sample_step: Option<Duration>,
}

impl PrometheusProviderBuilder {
    /// Authenticate with `Authorization: Bearer <token>`.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Bearer(token.into()));
        self
    }

    /// Authenticate with HTTP basic auth. User info in the URL does the same.
    pub fn basic_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Basic {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Trust the CAs of `tls` for an `https` URL. Default: the system store.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The time one request may take. Default 30 s. Also sent to Prometheus
    /// as the query's evaluation timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How transient failures are retried. Default:
    /// [`RetryConfig::control_plane`]. Its per-attempt timeout bounds each
    /// request too, besides [`timeout`](Self::timeout).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// How a matrix result becomes one number. Default [`MatrixReduction::Last`].
    pub fn matrix_reduction(mut self, reduction: MatrixReduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The step of the range queries behind [`SampleProvider::samples`].
    /// Default: the window divided by 30, at least 1 s.
    pub fn sample_step(mut self, step: Duration) -> Self {
        self.sample_step = Some(step);
        self
    }

    /// Checks the settings and builds the provider.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `prometheus.url` (not an http(s) URL with
    /// a host, or with a query), `prometheus.timeout` (zero),
    /// `prometheus.retry.*` (see [`RetryConfig::validate`]),
    /// `prometheus.sample_step` (zero),
    /// and the errors of [`TlsOptions::client_config`].
    pub fn build(self) -> Result<PrometheusProvider> {
        self.retry.validate("prometheus.retry")?;
        if self.sample_step.is_some_and(|s| s.is_zero()) {
            return Err(Error::invalid(
                "prometheus.sample_step",
                "must be greater than 0",
            ));
        }
        let api = ApiClient::new(
            BACKEND,
            "prometheus.url",
            &self.url,
            self.credentials,
            self.tls.as_ref(),
            self.timeout,
        )?;
        Ok(PrometheusProvider {
            api,
            retry: self.retry,
            reduction: self.reduction,
            sample_step: self.sample_step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_prometheus_syntax() {
        let cases = [
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600 * 26 + 1), "26h1s"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_micros(10), "0s"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(prometheus_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn render_fills_window_and_leaves_rendered_queries_alone() {
        let mut q = MetricQuery {
            metric: "m".into(),
            query: "rate(x{svc=\"{{service}}\"}[{{window}}])".into(),
            window: Duration::from_secs(120),
            args: [("service".to_string(), "checkout".to_string())].into(),
        };
        assert_eq!(render(&q).unwrap(), "rate(x{svc=\"checkout\"}[2m])");
        q.args.insert("window".into(), "30s".into());
        assert_eq!(render(&q).unwrap(), "rate(x{svc=\"checkout\"}[30s])");
        q.query = "{{missing}}".into();
        assert!(render(&q).unwrap_err().to_string().contains("missing"));
        q.query = "sum(rate(x[1m]))".into();
        assert_eq!(render(&q).unwrap(), "sum(rate(x[1m]))");
    }
}
