//! [`RetryConfig`] and [`BackoffConfig`]: how often, how long and how far
//! apart calls are retried.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tracing::{debug, warn};

use crate::error::{Error, Result};

/// How long to wait between attempts: `init_backoff × base^n` before retry
/// `n` (counted from 0), capped at `max_backoff`, with "equal jitter" (a
/// uniformly random wait between half the computed delay and all of it) so
/// that many clients that failed together do not retry together.
///
/// | field | default | why |
/// |---|---|---|
/// | [`init_backoff`](Self::init_backoff) | 100 ms | a blip (a dropped connection, one throttled request) is usually gone by then, and a caller waiting on the call barely notices |
/// | [`max_backoff`](Self::max_backoff) | 15 s | long enough to let a throttling backend recover, short enough that a recovered backend is noticed within a few seconds |
/// | [`base`](Self::base) | 2 | doubling reaches `max_backoff` in 8 retries from 100 ms, the usual choice of cloud SDKs |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter). Default 100 ms.
    pub init_backoff: Duration,
    /// The largest delay between two attempts. Default 15 s.
    pub max_backoff: Duration,
    /// Growth factor per attempt, at least 1. Default 2.
    pub base: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        }
    }
}

impl BackoffConfig {
    /// Sets the first delay.
    pub fn with_init_backoff(mut self, d: Duration) -> Self {
        self.init_backoff = d;
        self
    }

    /// Sets the largest delay.
    pub fn with_max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Sets the growth factor.
    pub fn with_base(mut self, base: f64) -> Self {
        self.base = base;
        self
    }

    /// The delay before retry number `retry` (0 for the first retry), before
    /// jitter.
    pub fn delay_before_jitter(&self, retry: u32) -> Duration {
        let factor = self.base.powi(i32::try_from(retry).unwrap_or(i32::MAX));
        let secs = self.init_backoff.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_backoff.as_secs_f64() {
            self.max_backoff
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry number `retry`, with jitter drawn from `rng`:
    /// between half of [`delay_before_jitter`](Self::delay_before_jitter)
    /// and all of it.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let full = self.delay_before_jitter(retry);
        let half = full / 2;
        let spread = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            rng.random_range(0..=spread)
        })
    }

    fn validate(&self, field: &str) -> Result<()> {
        if !(self.base.is_finite() && self.base >= 1.0) {
            return Err(Error::invalid(
                format!("{field}.base"),
                format!("must be a finite number >= 1, got {}", self.base),
            ));
        }
        if self.max_backoff < self.init_backoff {
            return Err(Error::invalid(
                format!("{field}.max_backoff"),
                "must be at least init_backoff",
            ));
        }
        Ok(())
    }
}

/// The retry policy: how often, how long and how far apart calls that fail
/// with a [transient](Error::is_transient) error are tried again.
///
/// [`RetryConfig::default`], used by backup targets:
///
/// | field | default | why |
/// |---|---|---|
/// | [`max_retries`](Self::max_retries) | 10 | with the default backoff, about a minute of retries: rides out a backend restart or a burst of throttling |
/// | [`retry_timeout`](Self::retry_timeout) | 3 min | bounds one call and all its retries, so a dead backend fails the caller instead of hanging it |
/// | [`request_timeout`](Self::request_timeout) | 60 s | a hung attempt counts as a transient failure and is retried; a part of a multipart upload is one attempt, and 60 s carries an 8 MiB part at 140 kB/s |
/// | [`backoff`](Self::backoff) | [`BackoffConfig::default`] | 100 ms doubling to 15 s, with jitter |
///
/// [`RetryConfig::control_plane`], used by the rollout engine and the
/// metric and alert clients, differs in two fields: 3 retries and backoff
/// capped at 5 s. Those callers have their own deadline (a step's progress
/// deadline, an analysis interval, an alert's resend), so a few quick
/// retries serve them better than a minute of waiting.
///
/// To turn retries off, use [`RetryConfig::no_retries`] (or
/// [`with_max_retries(0)`](Self::with_max_retries)): each call is tried once,
/// still under the per-attempt timeout.
///
/// ```
/// use std::time::Duration;
/// use atlas_core::retry::{BackoffConfig, RetryConfig};
///
/// let patient = RetryConfig::default()
///     .with_max_retries(20)
///     .with_backoff(BackoffConfig::default().with_max_backoff(Duration::from_secs(30)));
/// patient.validate("retry")?;
/// assert_eq!(RetryConfig::control_plane().max_retries, 3);
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Backoff between attempts.
    pub backoff: BackoffConfig,
    /// How many times a failed request is retried (0: never). Default 10.
    pub max_retries: u32,
    /// The overall time budget of one request including all its retries;
    /// once spent, the request fails with [`Error::Deadline`]. Default 3 min.
    pub retry_timeout: Duration,
    /// The time one attempt may take before it is abandoned and counted as a
    /// transient failure. Default 60 s.
    pub request_timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// The policy for calls made while steering or watching a rollout —
    /// the platform, the router, the state store, metric queries, alert
    /// deliveries: up to 3 retries, backoff from 100 ms doubling to 5 s
    /// (with jitter), 60 s per attempt, 3 min in all.
    pub fn control_plane() -> Self {
        RetryConfig {
            backoff: BackoffConfig::default().with_max_backoff(Duration::from_secs(5)),
            max_retries: 3,
            ..Self::default()
        }
    }

    /// One attempt only, with the default per-attempt timeout.
    pub fn no_retries() -> Self {
        RetryConfig {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Sets the backoff.
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the number of retries.
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the overall budget of a request and its retries.
    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = d;
        self
    }

    /// Sets the budget of one attempt.
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Checks the configuration; builders call this from `build()`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field (prefixed by `field`, e.g.
    /// `retry.request_timeout`) when a timeout is zero, `base < 1` or
    /// `max_backoff < init_backoff`.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.request_timeout.is_zero() {
            return Err(Error::invalid(
                format!("{field}.request_timeout"),
                "must be greater than zero",
            ));
        }
        if self.retry_timeout.is_zero() {
            return Err(Error::invalid(
                format!("{field}.retry_timeout"),
                "must be greater than zero",
            ));
        }
        self.backoff.validate(&format!("{field}.backoff"))
    }

    /// Runs `attempt` until it succeeds, fails with a non-transient error,
    /// runs out of retries or of [`retry_timeout`](Self::retry_timeout).
    /// Each attempt is cut off after [`request_timeout`](Self::request_timeout)
    /// (or what is left of the overall budget) and counted as a transient
    /// failure. `what` names the request in logs and errors, `backend` names
    /// the backend in timeout errors.
    ///
    /// # Errors
    /// The first non-transient error; the last transient error once the
    /// retries are spent; [`Error::Deadline`] when the overall budget runs
    /// out.
    pub async fn run<T, F, Fut>(&self, backend: &str, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = tokio::time::Instant::now();
        // A budget too large for the clock (e.g. `Duration::MAX`) means none.
        let deadline = started.checked_add(self.retry_timeout);
        let mut retry = 0u32;
        loop {
            let now = tokio::time::Instant::now();
            let budget = match deadline {
                Some(d) => self.request_timeout.min(d.saturating_duration_since(now)),
                None => self.request_timeout,
            };
            let outcome = match tokio::time::timeout(budget, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(Error::transient(
                    backend,
                    format!(
                        "{what}: attempt timed out after {}",
                        humantime::format_duration(budget)
                    ),
                )),
            };
            let error = match outcome {
                Ok(v) => {
                    if retry > 0 {
                        debug!(
                            backend,
                            what,
                            retries = retry,
                            "request succeeded after retries"
                        );
                    }
                    return Ok(v);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            if retry >= self.max_retries {
                return Err(error);
            }
            let delay = self.backoff.delay(retry, &mut rand::rng());
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now.checked_add(delay).is_none_or(|at| at >= d)) {
                return Err(Error::deadline(
                    format!("{what} and its retries (last error: {error})"),
                    self.retry_timeout,
                ));
            }
            warn!(
                backend,
                what,
                retry = retry + 1,
                max_retries = self.max_retries,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "transient failure, retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::ErrorKind;

    #[test]
    fn delays_grow_exponentially_and_are_capped() {
        let b = BackoffConfig::default();
        assert_eq!(b.delay_before_jitter(0), Duration::from_millis(100));
        assert_eq!(b.delay_before_jitter(1), Duration::from_millis(200));
        assert_eq!(b.delay_before_jitter(3), Duration::from_millis(800));
        assert_eq!(b.delay_before_jitter(10), Duration::from_secs(15));
        assert_eq!(b.delay_before_jitter(u32::MAX), Duration::from_secs(15));
        let mut rng = rand::rng();
        for retry in 0..12 {
            let full = b.delay_before_jitter(retry);
            for _ in 0..50 {
                let d = b.delay(retry, &mut rng);
                assert!(
                    d >= full / 2 && d <= full,
                    "{d:?} outside jitter of {full:?}"
                );
            }
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = RetryConfig::default().with_request_timeout(Duration::ZERO);
        let e = bad.validate("retry").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid retry.request_timeout: must be greater than zero"
        );
        let bad = RetryConfig::default().with_backoff(BackoffConfig::default().with_base(0.5));
        assert!(
            bad.validate("retry")
                .unwrap_err()
                .to_string()
                .contains("retry.backoff.base")
        );
        let bad = RetryConfig::default().with_backoff(
            BackoffConfig::default()
                .with_init_backoff(Duration::from_secs(2))
                .with_max_backoff(Duration::from_secs(1)),
        );
        assert!(bad.validate("retry").is_err());
        assert!(RetryConfig::default().validate("retry").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let started = tokio::time::Instant::now();
        let v = RetryConfig::default()
            .run("test", "op", || {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err(Error::transient("test", "503"))
                    } else {
                        Ok(7)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Three backoffs of at least 50, 100 and 200 ms, at most 100+200+400.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(350), "{waited:?}");
        assert!(waited <= Duration::from_millis(700), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let e = RetryConfig::default()
            .run("test", "op", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Error::not_found("x")) }
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_max_retries_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let e = RetryConfig::default()
            .with_max_retries(2)
            .run("test", "op", || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { Err::<(), _>(Error::transient("test", format!("fail {n}"))) }
            })
            .await
            .unwrap_err();
        assert!(e.is_transient());
        assert!(e.to_string().contains("fail 2"), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_times_out_and_is_retried() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let v = RetryConfig::default()
            .with_request_timeout(Duration::from_secs(5))
            .run("test", "op", || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(n)
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 1);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_budget_ends_retries_with_a_deadline() {
        let started = tokio::time::Instant::now();
        let e = RetryConfig::default()
            .with_max_retries(1000)
            .with_retry_timeout(Duration::from_secs(20))
            .run("test", "put part 3", || async {
                Err::<(), _>(Error::transient("test", "throttled"))
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Deadline);
        assert!(e.to_string().contains("put part 3"), "{e}");
        assert!(e.to_string().contains("throttled"), "{e}");
        assert!(started.elapsed() <= Duration::from_secs(20));
    }
}
