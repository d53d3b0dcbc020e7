//! [`ScriptedMetrics`]: a metric provider answering from scripted series.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::fault::{FaultError, Method};
use super::guard::lock;
use crate::error::Result;
use crate::metrics::{Measurement, MetricProvider, MetricQuery};

/// One scripted answer of a [`ScriptedMetrics`] series.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricAnswer {
    /// The provider answers this measurement.
    Measurement(Measurement),
    /// The provider fails with this error.
    Error(FaultError),
}

impl From<Measurement> for MetricAnswer {
    fn from(m: Measurement) -> Self {
        MetricAnswer::Measurement(m)
    }
}

impl From<f64> for MetricAnswer {
    /// [`Measurement::from_f64`]: NaN and infinities become no data.
    fn from(v: f64) -> Self {
        MetricAnswer::Measurement(Measurement::from_f64(v))
    }
}

impl From<FaultError> for MetricAnswer {
    fn from(e: FaultError) -> Self {
        MetricAnswer::Error(e)
    }
}

/// One query a [`ScriptedMetrics`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedQuery {
    /// Time since the provider's start instant when it arrived.
    pub elapsed: Duration,
    /// The query.
    pub query: MetricQuery,
}

/// A step function: `(offset, answer)` points sorted by offset.
type Series = Vec<(Duration, MetricAnswer)>;

#[derive(Debug)]
struct State {
    start: Instant,
    /// Key: metric name and, for query-specific series, the query text.
    series: BTreeMap<(String, Option<String>), Series>,
    fallback: MetricAnswer,
    queries: Vec<RecordedQuery>,
}

/// A [`MetricProvider`] that answers from series scripted over time.
///
/// A series is a step function of the time elapsed (tokio time) since the
/// provider's start instant (its creation, or [`restart`](Self::restart) /
/// [`start_at`](Self::start_at)): at elapsed `t` it answers the last point
/// whose offset is `<= t`, and no data before its first point. A series is
/// chosen by the query's metric name and query text if one was scripted
/// for both, else by metric name; a query matching no series gets the
/// fallback answer, no data unless [`set_fallback`](Self::set_fallback)
/// changes it (like Prometheus answering an empty vector).
///
/// ```
/// # use std::time::Duration;
/// # use atlas_core::{Measurement, MetricProvider, MetricQuery};
/// # use atlas_core::testing::ScriptedMetrics;
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let metrics = ScriptedMetrics::new();
/// // Error rate 0.1 % for two minutes, then 7 %.
/// metrics.set_series("error-rate", [(Duration::ZERO, 0.001), (Duration::from_secs(120), 0.07)]);
/// let q = MetricQuery {
///     metric: "error-rate".into(),
///     query: "rate(errors[1m])".into(),
///     window: Duration::from_secs(60),
///     args: Default::default(),
/// };
/// assert_eq!(metrics.measure(&q).await?, Measurement::Value(0.001));
/// tokio::time::sleep(Duration::from_secs(120)).await;
/// assert_eq!(metrics.measure(&q).await?, Measurement::Value(0.07));
/// assert_eq!(metrics.queries().len(), 2);
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
///
/// Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct ScriptedMetrics {
    state: Arc<Mutex<State>>,
}

impl Default for ScriptedMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedMetrics {
    /// A provider with no series, started now.
    pub fn new() -> Self {
        ScriptedMetrics {
            state: Arc::new(Mutex::new(State {
                start: Instant::now(),
                series: BTreeMap::new(),
                fallback: MetricAnswer::Measurement(Measurement::NoData),
                queries: Vec::new(),
            })),
        }
    }

    /// Series time counts from now.
    pub fn restart(&self) {
        self.start_at(Instant::now());
    }

    /// Series time counts from `start`.
    pub fn start_at(&self, start: Instant) {
        lock(&self.state).start = start;
    }

    /// The series of `metric`: `(offset, answer)` points, a step function
    /// (order does not matter). Replaces an earlier series of `metric`.
    pub fn set_series<A: Into<MetricAnswer>>(
        &self,
        metric: impl Into<String>,
        points: impl IntoIterator<Item = (Duration, A)>,
    ) {
        self.insert(metric.into(), None, points);
    }

    /// Like [`set_series`](Self::set_series), for queries of `metric` whose
    /// text is exactly `query` only.
    pub fn set_query_series<A: Into<MetricAnswer>>(
        &self,
        metric: impl Into<String>,
        query: impl Into<String>,
        points: impl IntoIterator<Item = (Duration, A)>,
    ) {
        self.insert(metric.into(), Some(query.into()), points);
    }

    /// `metric` answers `value` at all times.
    pub fn set_constant(&self, metric: impl Into<String>, value: f64) {
        self.set_series(metric, [(Duration::ZERO, value)]);
    }

    /// `metric` answers no data at all times.
    pub fn set_no_data(&self, metric: impl Into<String>) {
        self.set_series(metric, [(Duration::ZERO, Measurement::NoData)]);
    }

    /// `metric` fails with `error` at all times.
    pub fn set_error(&self, metric: impl Into<String>, error: FaultError) {
        self.set_series(metric, [(Duration::ZERO, error)]);
    }

    /// The answer to queries no series matches (default: no data).
    pub fn set_fallback(&self, answer: impl Into<MetricAnswer>) {
        lock(&self.state).fallback = answer.into();
    }

    /// Every query received, in order.
    pub fn queries(&self) -> Vec<RecordedQuery> {
        lock(&self.state).queries.clone()
    }

    fn insert<A: Into<MetricAnswer>>(
        &self,
        metric: String,
        query: Option<String>,
        points: impl IntoIterator<Item = (Duration, A)>,
    ) {
        let mut points: Series = points.into_iter().map(|(t, a)| (t, a.into())).collect();
        points.sort_by_key(|(t, _)| *t);
        lock(&self.state).series.insert((metric, query), points);
    }
}

#[async_trait]
impl MetricProvider for ScriptedMetrics {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        let mut s = lock(&self.state);
        let elapsed = Instant::now().saturating_duration_since(s.start);
        s.queries.push(RecordedQuery {
            elapsed,
            query: query.clone(),
        });
        let series = s
            .series
            .get(&(query.metric.clone(), Some(query.query.clone())))
            .or_else(|| s.series.get(&(query.metric.clone(), None)));
        let answer = match series {
            Some(points) => points
                .iter()
                .rev()
                .find(|(t, _)| *t <= elapsed)
                .map(|(_, a)| a.clone())
                .unwrap_or(MetricAnswer::Measurement(Measurement::NoData)),
            None => s.fallback.clone(),
        };
        tracing::debug!(metric = %query.metric, ?elapsed, ?answer, "scripted measurement");
        match answer {
            MetricAnswer::Measurement(m) => Ok(m),
            MetricAnswer::Error(e) => Err(e.to_error(Method::MEASURE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn q(metric: &str, query: &str) -> MetricQuery {
        MetricQuery {
            metric: metric.into(),
            query: query.into(),
            window: Duration::from_secs(60),
            args: BTreeMap::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn series_are_step_functions_of_tokio_time() {
        let m = ScriptedMetrics::new();
        m.set_series(
            "latency",
            [
                (Duration::from_secs(60), MetricAnswer::from(0.2)),
                (Duration::from_secs(10), MetricAnswer::from(0.1)),
                (
                    Duration::from_secs(90),
                    FaultError::transient("prometheus 503").into(),
                ),
            ],
        );
        let query = q("latency", "histogram_quantile(...)");
        assert_eq!(m.measure(&query).await.unwrap(), Measurement::NoData);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(m.measure(&query).await.unwrap(), Measurement::Value(0.1));
        tokio::time::sleep(Duration::from_secs(49)).await;
        assert_eq!(m.measure(&query).await.unwrap(), Measurement::Value(0.1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(m.measure(&query).await.unwrap(), Measurement::Value(0.2));
        tokio::time::sleep(Duration::from_secs(30)).await;
        let err = m.measure(&query).await.unwrap_err();
        assert!(
            err.is_transient() && err.to_string().contains("503"),
            "{err}"
        );
        let at: Vec<u64> = m.queries().iter().map(|r| r.elapsed.as_secs()).collect();
        assert_eq!(at, [0, 10, 59, 60, 90]);
        m.restart();
        assert_eq!(m.measure(&query).await.unwrap(), Measurement::NoData);
    }

    #[tokio::test(start_paused = true)]
    async fn query_series_win_over_metric_series_and_fallback_applies() {
        let m = ScriptedMetrics::new();
        m.set_constant("errors", 0.01);
        m.set_query_series("errors", "canary", [(Duration::ZERO, 0.5)]);
        m.set_no_data("empty");
        m.set_error("broken", FaultError::backend("bad query"));
        assert_eq!(
            m.measure(&q("errors", "canary")).await.unwrap(),
            Measurement::Value(0.5)
        );
        assert_eq!(
            m.measure(&q("errors", "stable")).await.unwrap(),
            Measurement::Value(0.01)
        );
        assert_eq!(
            m.measure(&q("empty", "x")).await.unwrap(),
            Measurement::NoData
        );
        let err = m.measure(&q("broken", "x")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend);
        assert_eq!(
            m.measure(&q("unknown", "x")).await.unwrap(),
            Measurement::NoData
        );
        m.set_fallback(FaultError::not_found("no such metric"));
        let err = m.measure(&q("unknown", "x")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        m.set_constant("nan", f64::NAN);
        assert_eq!(
            m.measure(&q("nan", "x")).await.unwrap(),
            Measurement::NoData
        );
    }
}
