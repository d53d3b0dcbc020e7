//! [`ScriptedProbe`]: a health probe whose answers a test scripts per endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::guard::lock;
use crate::domain::Endpoint;
use crate::probe::{HealthProbe, ProbeOutcome};

/// How a scripted endpoint answers, attempt after attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeScript {
    /// Every attempt is healthy (the default).
    Healthy,
    /// The first `n` attempts fail (`"not ready yet"`), then every attempt
    /// is healthy.
    HealthyAfter(u32),
    /// Every attempt fails with this reason, e.g. `connection refused`.
    Failing(String),
    /// Attempt `i` answers `outcomes[i]`; after the last, the last repeats
    /// (healthy if the list is empty).
    Sequence(Vec<ProbeOutcome>),
    /// The endpoint never answers: each attempt waits out its timeout and
    /// fails with `timed out after …`, as a real probe does.
    Hang,
    /// The check itself never returns, ignoring its timeout: a misbehaving
    /// probe, to exercise [`ProbePolicy::run`](crate::ProbePolicy::run)'s own cut-off.
    HangIgnoringTimeout,
}

/// Which endpoints a script applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKey {
    /// Endpoints with this replica name.
    Replica(String),
    /// Endpoints at this address.
    Addr(SocketAddr),
}

impl From<&str> for ProbeKey {
    fn from(replica: &str) -> Self {
        ProbeKey::Replica(replica.to_string())
    }
}

impl From<String> for ProbeKey {
    fn from(replica: String) -> Self {
        ProbeKey::Replica(replica)
    }
}

impl From<SocketAddr> for ProbeKey {
    fn from(addr: SocketAddr) -> Self {
        ProbeKey::Addr(addr)
    }
}

impl ProbeKey {
    fn matches(&self, endpoint: &Endpoint) -> bool {
        match self {
            ProbeKey::Replica(r) => *r == endpoint.replica,
            ProbeKey::Addr(a) => *a == endpoint.addr,
        }
    }
}

#[derive(Debug)]
struct State {
    default: ProbeScript,
    scripts: BTreeMap<ProbeKey, ProbeScript>,
    attempts: BTreeMap<Endpoint, u32>,
}

/// A [`HealthProbe`] whose outcome per endpoint is scripted: healthy by
/// default, or any [`ProbeScript`] chosen by replica name (checked first)
/// or address. Attempts are counted per endpoint, so a script such as
/// [`ProbeScript::HealthyAfter`] starts over for a replica restarted at a
/// new address. Waits use tokio time.
///
/// ```
/// # use std::time::Duration;
/// # use atlas_core::{Endpoint, HealthProbe};
/// # use atlas_core::testing::{ProbeScript, ScriptedProbe};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let probe = ScriptedProbe::new();
/// probe.script("checkout-green-1", ProbeScript::HealthyAfter(2));
/// let ep = Endpoint::new("checkout-green-1", "127.0.0.1:20001".parse().unwrap());
/// let t = Duration::from_secs(1);
/// assert!(!probe.check(&ep, t).await.is_healthy());
/// assert!(!probe.check(&ep, t).await.is_healthy());
/// assert!(probe.check(&ep, t).await.is_healthy());
/// assert_eq!(probe.attempts("checkout-green-1"), 3);
/// # });
/// ```
///
/// Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct ScriptedProbe {
    state: Arc<Mutex<State>>,
}

impl Default for ScriptedProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedProbe {
    /// A probe that finds every endpoint healthy.
    pub fn new() -> Self {
        ScriptedProbe {
            state: Arc::new(Mutex::new(State {
                default: ProbeScript::Healthy,
                scripts: BTreeMap::new(),
                attempts: BTreeMap::new(),
            })),
        }
    }

    /// The script of endpoints no other script names.
    pub fn with_default(self, script: ProbeScript) -> Self {
        lock(&self.state).default = script;
        self
    }

    /// Scripts the endpoints `key` names (a replica name or a
    /// `SocketAddr`), replacing an earlier script for the same key.
    pub fn script(&self, key: impl Into<ProbeKey>, script: ProbeScript) {
        lock(&self.state).scripts.insert(key.into(), script);
    }

    /// Attempts made against the endpoints `key` names.
    pub fn attempts(&self, key: impl Into<ProbeKey>) -> u32 {
        let key = key.into();
        lock(&self.state)
            .attempts
            .iter()
            .filter(|(e, _)| key.matches(e))
            .map(|(_, n)| n)
            .sum()
    }

    /// Attempts made against every endpoint.
    pub fn total_attempts(&self) -> u32 {
        lock(&self.state).attempts.values().sum()
    }
}

/// What one attempt does.
enum Answer {
    Now(ProbeOutcome),
    AfterTimeout,
    Never,
}

#[async_trait]
impl HealthProbe for ScriptedProbe {
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
        let answer = {
            let mut s = lock(&self.state);
            let n = s.attempts.entry(endpoint.clone()).or_default();
            *n += 1;
            // Zero-based index of this attempt.
            let attempt = (*n - 1) as usize;
            let script = s
                .scripts
                .get(&ProbeKey::Replica(endpoint.replica.clone()))
                .or_else(|| s.scripts.get(&ProbeKey::Addr(endpoint.addr)))
                .unwrap_or(&s.default);
            match script {
                ProbeScript::Healthy => Answer::Now(ProbeOutcome::Healthy),
                ProbeScript::HealthyAfter(n) if attempt < *n as usize => {
                    Answer::Now(ProbeOutcome::unhealthy("not ready yet"))
                }
                ProbeScript::HealthyAfter(_) => Answer::Now(ProbeOutcome::Healthy),
                ProbeScript::Failing(reason) => Answer::Now(ProbeOutcome::unhealthy(reason)),
                ProbeScript::Sequence(outcomes) => Answer::Now(
                    outcomes
                        .get(attempt)
                        .or(outcomes.last())
                        .cloned()
                        .unwrap_or(ProbeOutcome::Healthy),
                ),
                ProbeScript::Hang => Answer::AfterTimeout,
                ProbeScript::HangIgnoringTimeout => Answer::Never,
            }
        };
        let outcome = match answer {
            Answer::Now(o) => o,
            Answer::AfterTimeout => {
                tokio::time::sleep(timeout).await;
                ProbeOutcome::unhealthy(format!(
                    "timed out after {}",
                    humantime::format_duration(timeout)
                ))
            }
            Answer::Never => std::future::pending().await,
        };
        tracing::debug!(%endpoint, %outcome, "scripted probe");
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, port: u16) -> Endpoint {
        Endpoint::new(name, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test(start_paused = true)]
    async fn scripts_apply_by_name_then_address_then_default() {
        let p = ScriptedProbe::new().with_default(ProbeScript::Failing("refused".into()));
        p.script("a", ProbeScript::Healthy);
        p.script(ep("x", 2).addr, ProbeScript::Healthy);
        p.script("c", ProbeScript::Failing("503".into()));
        let t = Duration::from_secs(1);
        assert!(p.check(&ep("a", 1), t).await.is_healthy());
        assert!(p.check(&ep("b", 2), t).await.is_healthy());
        assert_eq!(
            p.check(&ep("c", 2), t).await,
            ProbeOutcome::unhealthy("503"),
            "name wins over address"
        );
        assert_eq!(
            p.check(&ep("d", 4), t).await,
            ProbeOutcome::unhealthy("refused")
        );
        assert_eq!(p.attempts(ep("x", 2).addr), 2);
        assert_eq!(p.attempts("a"), 1);
        assert_eq!(p.total_attempts(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn sequences_repeat_their_last_outcome_per_endpoint() {
        let p = ScriptedProbe::new();
        p.script(
            "a",
            ProbeScript::Sequence(vec![ProbeOutcome::Healthy, ProbeOutcome::unhealthy("500")]),
        );
        let t = Duration::from_secs(1);
        let a = ep("a", 1);
        let got: Vec<bool> = futures::future::join_all((0..4).map(|_| p.check(&a, t)))
            .await
            .iter()
            .map(ProbeOutcome::is_healthy)
            .collect();
        assert_eq!(got, [true, false, false, false]);
        // Same replica name at a new address: a new endpoint, a fresh script.
        assert!(p.check(&ep("a", 9), t).await.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn hangs_wait_out_the_timeout_or_forever() {
        let p = ScriptedProbe::new();
        p.script("slow", ProbeScript::Hang);
        p.script("stuck", ProbeScript::HangIgnoringTimeout);
        let started = tokio::time::Instant::now();
        let out = p.check(&ep("slow", 1), Duration::from_millis(300)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(out, ProbeOutcome::unhealthy("timed out after 300ms"));
        let stuck = tokio::time::timeout(
            Duration::from_secs(3600),
            p.check(&ep("stuck", 2), Duration::from_millis(300)),
        )
        .await;
        assert!(stuck.is_err(), "a probe ignoring its timeout never returns");
        let policy = crate::ProbePolicy {
            failure_threshold: 2,
            ..Default::default()
        };
        let failure = policy.run(&p, &ep("stuck", 2)).await.unwrap_err();
        assert!(failure.last_reason.contains("timed out"), "{failure}");
    }
}
