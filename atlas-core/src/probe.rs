//! [`HealthProbe`] and [`ProbePolicy`]: is a replica fit for traffic?

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::Endpoint;
use crate::error::{Error, Result};

/// The result of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeOutcome {
    /// The endpoint answered as expected.
    Healthy,
    /// It did not; `reason` says how (status 503, connection refused, timeout).
    Unhealthy {
        /// What was wrong.
        reason: String,
    },
}

impl ProbeOutcome {
    /// An unhealthy outcome with `reason`.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        ProbeOutcome::Unhealthy {
            reason: reason.into(),
        }
    }

    /// Whether the attempt succeeded.
    pub fn is_healthy(&self) -> bool {
        matches!(self, ProbeOutcome::Healthy)
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Healthy => f.write_str("healthy"),
            ProbeOutcome::Unhealthy { reason } => write!(f, "unhealthy: {reason}"),
        }
    }
}

/// Checks one endpoint once: an HTTP GET, a TCP connect, a certificate check.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// One attempt against `endpoint`. It should give up after `timeout`;
    /// [`ProbePolicy::run`] also cuts it off there and counts a failure.
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn HealthProbe>` and
/// `Box<dyn HealthProbe>` are HealthProbes too.
macro_rules! forward_healthprobe {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: HealthProbe + ?Sized> HealthProbe for $ptr<T> {
            async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
                (**self).check(endpoint, timeout).await
            }
        }
    )*};
}

forward_healthprobe!(Arc, Box);

/// When and how often to probe, with Kubernetes probe semantics: wait
/// `initial_delay`, then probe every `period`; each attempt gets `timeout`;
/// `success_threshold` consecutive successes make the endpoint healthy,
/// `failure_threshold` consecutive failures make it failed.
///
/// Defaults are Kubernetes': no initial delay, period 10 s, timeout 1 s,
/// success threshold 1, failure threshold 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbePolicy {
    /// Wait before the first attempt.
    pub initial_delay: Duration,
    /// Time between attempts.
    pub period: Duration,
    /// Time one attempt may take.
    pub timeout: Duration,
    /// Consecutive successes needed.
    pub success_threshold: u32,
    /// Consecutive failures that fail the endpoint.
    pub failure_threshold: u32,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        ProbePolicy {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

/// How a [`ProbePolicy::run`] ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The endpoint that failed.
    pub endpoint: Endpoint,
    /// Consecutive failures seen (the policy's failure threshold).
    pub failures: u32,
    /// The last attempt's reason.
    pub last_reason: String,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed {} consecutive probes, last: {}",
            self.endpoint, self.failures, self.last_reason
        )
    }
}

impl ProbePolicy {
    /// The longest period, timeout or initial delay accepted: 365 days, as
    /// for spec files. Far longer ones would overflow timers.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Checks the rules: period and timeout above zero, durations at most
    /// [`MAX_DURATION`](Self::MAX_DURATION), thresholds at least 1.
    pub fn validate(&self) -> Result<()> {
        for (field, d) in [
            ("probe.initial_delay", self.initial_delay),
            ("probe.period", self.period),
            ("probe.timeout", self.timeout),
        ] {
            if d > Self::MAX_DURATION {
                return Err(Error::invalid(field, "must be at most 365 days"));
            }
        }
        if self.period.is_zero() {
            return Err(Error::invalid("probe.period", "must be greater than 0"));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid("probe.timeout", "must be greater than 0"));
        }
        if self.success_threshold < 1 {
            return Err(Error::invalid(
                "probe.success_threshold",
                "must be at least 1",
            ));
        }
        if self.failure_threshold < 1 {
            return Err(Error::invalid(
                "probe.failure_threshold",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Probes `endpoint` until it is healthy (`Ok` with the number of
    /// attempts made) or fails `failure_threshold` times in a row.
    ///
    /// Time is tokio's, so tests run it under a paused clock.
    pub async fn run(
        &self,
        probe: &dyn HealthProbe,
        endpoint: &Endpoint,
    ) -> std::result::Result<u32, ProbeFailure> {
        tokio::time::sleep(self.initial_delay).await;
        let mut successes = 0u32;
        let mut failures = 0u32;
        let mut attempts = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            attempts += 1;
            let outcome =
                match tokio::time::timeout(self.timeout, probe.check(endpoint, self.timeout)).await
                {
                    Ok(outcome) => outcome,
                    Err(_) => ProbeOutcome::unhealthy(format!(
                        "timed out after {}",
                        humantime::format_duration(self.timeout)
                    )),
                };
            match &outcome {
                ProbeOutcome::Healthy => {
                    successes += 1;
                    failures = 0;
                    if successes >= self.success_threshold {
                        tracing::debug!(%endpoint, attempts, "probe healthy");
                        return Ok(attempts);
                    }
                }
                ProbeOutcome::Unhealthy { reason } => {
                    failures += 1;
                    successes = 0;
                    tracing::debug!(%endpoint, failures, %reason, "probe failed");
                    if failures >= self.failure_threshold {
                        return Err(ProbeFailure {
                            endpoint: endpoint.clone(),
                            failures,
                            last_reason: reason.clone(),
                        });
                    }
                }
            }
            tokio::time::sleep_until(started + self.period).await;
        }
    }
}
