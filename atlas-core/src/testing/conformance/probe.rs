//! Conformance checks for [`HealthProbe`] adapters.
//!
//! A real probe needs real servers, so the caller supplies them in
//! [`ProbeEndpoints`]: one that answers healthy, one that refuses
//! connections, and one that accepts and never answers.
//!
//! ```
//! # use atlas_core::Endpoint;
//! # use atlas_core::testing::{conformance, ProbeScript, ScriptedProbe};
//! # use atlas_core::testing::conformance::probe::ProbeEndpoints;
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let probe = ScriptedProbe::new();
//! probe.script("refused", ProbeScript::Failing("connection refused".into()));
//! probe.script("hanging", ProbeScript::Hang);
//! let ep = |name: &str, port: u16| Endpoint::new(name, ([127, 0, 0, 1], port).into());
//! let endpoints = ProbeEndpoints::new(ep("healthy", 1), ep("refused", 2), ep("hanging", 3));
//! conformance::probe::all(&probe, &endpoints).await;
//! # });
//! ```

use std::time::Duration;

use crate::domain::Endpoint;
use crate::probe::{HealthProbe, ProbeOutcome};

/// The endpoints the probe checks run against, and the time bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEndpoints {
    /// Answers as the probe expects (e.g. HTTP 200 on the probed path).
    pub healthy: Endpoint,
    /// Refuses connections (nothing listens there).
    pub refused: Endpoint,
    /// Accepts connections and never answers.
    pub hanging: Endpoint,
    /// The timeout given to each check. Default 500 ms.
    pub timeout: Duration,
    /// How much longer than `timeout` a check against `hanging` may take.
    /// Default 250 ms.
    pub slack: Duration,
}

impl ProbeEndpoints {
    /// Endpoints with the default timeout and slack.
    pub fn new(healthy: Endpoint, refused: Endpoint, hanging: Endpoint) -> Self {
        ProbeEndpoints {
            healthy,
            refused,
            hanging,
            timeout: Duration::from_millis(500),
            slack: Duration::from_millis(250),
        }
    }

    /// Sets the per-check timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the slack allowed beyond the timeout.
    pub fn with_slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }
}

/// Runs every probe check.
pub async fn all(probe: &dyn HealthProbe, endpoints: &ProbeEndpoints) {
    healthy_endpoint_is_healthy(probe, endpoints).await;
    refused_endpoint_is_unhealthy(probe, endpoints).await;
    check_respects_the_timeout(probe, endpoints).await;
    healthy_after_a_failure(probe, endpoints).await;
}

/// The healthy endpoint is [`Healthy`](ProbeOutcome::Healthy), check after check.
pub async fn healthy_endpoint_is_healthy(probe: &dyn HealthProbe, endpoints: &ProbeEndpoints) {
    for i in 0..3 {
        let out = bounded(probe, &endpoints.healthy, endpoints).await;
        assert_eq!(
            out,
            ProbeOutcome::Healthy,
            "check #{i} of the healthy endpoint {} must be healthy",
            endpoints.healthy
        );
    }
}

/// The refusing endpoint is unhealthy, with a reason, well within the timeout.
pub async fn refused_endpoint_is_unhealthy(probe: &dyn HealthProbe, endpoints: &ProbeEndpoints) {
    let out = bounded(probe, &endpoints.refused, endpoints).await;
    match out {
        ProbeOutcome::Unhealthy { reason } => assert!(
            !reason.trim().is_empty(),
            "an unhealthy outcome for {} must say why",
            endpoints.refused
        ),
        ProbeOutcome::Healthy => panic!(
            "the refusing endpoint {} must be unhealthy, got healthy",
            endpoints.refused
        ),
    }
}

/// A check of the endpoint that never answers gives up by itself within
/// the timeout plus the slack, and is unhealthy.
pub async fn check_respects_the_timeout(probe: &dyn HealthProbe, endpoints: &ProbeEndpoints) {
    let started = tokio::time::Instant::now();
    let out = bounded(probe, &endpoints.hanging, endpoints).await;
    let took = started.elapsed();
    assert!(
        !out.is_healthy(),
        "the endpoint that never answers ({}) must be unhealthy",
        endpoints.hanging
    );
    assert!(
        took <= endpoints.timeout + endpoints.slack,
        "a check with timeout {:?} took {took:?} (slack {:?})",
        endpoints.timeout,
        endpoints.slack
    );
}

/// A failure leaves no state behind: the healthy endpoint is healthy right
/// after checks of the failing ones.
pub async fn healthy_after_a_failure(probe: &dyn HealthProbe, endpoints: &ProbeEndpoints) {
    let _ = bounded(probe, &endpoints.refused, endpoints).await;
    let out = bounded(probe, &endpoints.healthy, endpoints).await;
    assert!(
        out.is_healthy(),
        "the healthy endpoint must be healthy after a failed check elsewhere, got {out}"
    );
}

/// Runs one check, panicking if it ignores its timeout altogether.
async fn bounded(
    probe: &dyn HealthProbe,
    endpoint: &Endpoint,
    endpoints: &ProbeEndpoints,
) -> ProbeOutcome {
    let limit = endpoints.timeout + endpoints.slack;
    match tokio::time::timeout(limit, probe.check(endpoint, endpoints.timeout)).await {
        Ok(out) => out,
        Err(_) => panic!(
            "check({endpoint}, {:?}) did not return within {limit:?}: a probe must give up after its timeout",
            endpoints.timeout
        ),
    }
}
