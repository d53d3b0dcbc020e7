//! [`MetricProvider`]: where analysis gets its numbers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One query for a provider, with the rollout's arguments already
/// substituted into `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricQuery {
    /// The analysis metric this query serves, e.g. `error-rate`.
    pub metric: String,
    /// The provider's query text (PromQL, a built-in proxy metric name, …).
    pub query: String,
    /// How far back the measurement looks.
    pub window: Duration,
    /// The rollout's arguments (`service`, `canary`, `stable`,
    /// `canary_version`, `stable_version`, `window`, and user arguments),
    /// for providers that template queries themselves.
    pub args: BTreeMap<String, String>,
}

/// What a provider measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Measurement {
    /// One number, in base units (seconds, ratios 0–1, bytes).
    Value(f64),
    /// The provider answered but had nothing: an empty vector, NaN, no
    /// requests in the window. Analysis counts this as inconclusive, never
    /// as a pass.
    NoData,
}

impl Measurement {
    /// `Value(v)`, or `NoData` when `v` is NaN or infinite.
    pub fn from_f64(v: f64) -> Self {
        if v.is_finite() {
            Measurement::Value(v)
        } else {
            Measurement::NoData
        }
    }

    /// The value, if there is one.
    pub fn value(&self) -> Option<f64> {
        match self {
            Measurement::Value(v) if v.is_finite() => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Measurement::Value(v) => write!(f, "{v}"),
            Measurement::NoData => f.write_str("no data"),
        }
    }
}

/// Answers metric queries: Prometheus, Atlas's own proxy, a scripted series.
#[async_trait]
pub trait MetricProvider: Send + Sync {
    /// Runs `query` once.
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn MetricProvider>` and
/// `Box<dyn MetricProvider>` are MetricProviders too.
macro_rules! forward_metricprovider {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: MetricProvider + ?Sized> MetricProvider for $ptr<T> {
            async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
                (**self).measure(query).await
            }
        }
    )*};
}

forward_metricprovider!(Arc, Box);
