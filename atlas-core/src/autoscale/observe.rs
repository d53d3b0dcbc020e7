//! Reading a policy's metrics through any [`MetricProvider`].
//!
//! A per-pod metric (Resource, Pods) is queried once per pod, with
//! `{{pod}}` in its query replaced by the pod's name (and `pod` in the
//! query's arguments); an answer of "no data" makes that pod's metric
//! missing, which the algorithm treats as Kubernetes does. An Object or
//! External metric is queried once. A query that fails, or an argument the
//! query names but nobody set, makes the whole metric unavailable.

use std::collections::BTreeMap;
use std::time::Duration;

use super::policy::{HorizontalPolicy, MetricSpec};
use super::replicas::{MetricObservation, PodState};
use crate::analysis::render_query;
use crate::metrics::{Measurement, MetricProvider, MetricQuery};

/// Measures `metric` over `window` for `pods`. `args` are substituted into
/// the query as `{{name}}` (add `service` and the like here).
pub async fn observe_metric(
    provider: &dyn MetricProvider,
    metric: &MetricSpec,
    pods: &[PodState],
    window: Duration,
    args: &BTreeMap<String, String>,
) -> MetricObservation {
    let span = tracing::debug_span!("atlas.autoscale.observe", metric = %metric.name);
    let _entered = span.enter();
    if !metric.source.is_per_pod() {
        return match measure(provider, metric, window, args.clone()).await {
            Ok(Some(v)) => MetricObservation::Value(v),
            Ok(None) => MetricObservation::Unavailable("the provider had no data".to_string()),
            Err(reason) => MetricObservation::Unavailable(reason),
        };
    }
    let mut values = BTreeMap::new();
    for pod in pods {
        let mut args = args.clone();
        args.insert("pod".to_string(), pod.name.clone());
        match measure(provider, metric, window, args).await {
            Ok(Some(v)) => {
                values.insert(pod.name.clone(), v);
            }
            Ok(None) => tracing::debug!(pod = %pod.name, "no data for pod: metric missing"),
            Err(reason) => return MetricObservation::Unavailable(reason),
        }
    }
    MetricObservation::PerPod(values)
}

/// Measures every metric of `policy`, in its order: the `observations` of a
/// [`ScaleInput`](super::ScaleInput).
pub async fn observe_policy(
    provider: &dyn MetricProvider,
    policy: &HorizontalPolicy,
    pods: &[PodState],
    window: Duration,
    args: &BTreeMap<String, String>,
) -> Vec<MetricObservation> {
    let mut out = Vec::with_capacity(policy.metrics.len());
    for metric in &policy.metrics {
        out.push(observe_metric(provider, metric, pods, window, args).await);
    }
    out
}

async fn measure(
    provider: &dyn MetricProvider,
    metric: &MetricSpec,
    window: Duration,
    args: BTreeMap<String, String>,
) -> Result<Option<f64>, String> {
    let query = render_query(metric.query_text(), &args).map_err(|e| e.to_string())?;
    let query = MetricQuery {
        metric: metric.name.clone(),
        query,
        window,
        args,
    };
    match provider.measure(&query).await {
        Ok(Measurement::Value(v)) if v.is_finite() => Ok(Some(v)),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::warn!(metric = %metric.name, error = %e, "metric query failed");
            Err(e.to_string())
        }
    }
}
