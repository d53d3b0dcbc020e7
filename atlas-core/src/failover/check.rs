//! One round of checks (probes, metric queries, the database) and the
//! counters that turn rounds into triggers and recoveries.
//!
//! The counters live in memory only: a controller that restarts counts
//! from zero, which can delay a failover by at most one trigger's streak
//! and a failback by one recovery streak — never cause either.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::policy::FailoverPolicy;
use crate::analysis::render_query;
use crate::database::DatabaseFailover;
use crate::domain::{Endpoint, ServiceName};
use crate::metrics::{MetricProvider, MetricQuery};
use crate::probe::HealthProbe;
use crate::region::RegionName;

/// One trigger's answer on one check.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    Pass,
    Fail(String),
    /// No data, or the check itself failed: counts neither way.
    Unknown,
}

/// What one round found for one region: the probe's verdict (if the health
/// trigger is on) and each metric trigger's.
#[derive(Debug, Clone)]
pub(super) struct RegionCheck {
    probe: Option<Verdict>,
    metrics: Vec<Verdict>,
}

/// Everything a round of checks needs.
pub(super) struct Checks {
    pub(super) service: ServiceName,
    pub(super) policy: FailoverPolicy,
    pub(super) probe: Option<Arc<dyn HealthProbe>>,
    pub(super) endpoints: BTreeMap<RegionName, Vec<Endpoint>>,
    pub(super) metrics: Option<Arc<dyn MetricProvider>>,
    pub(super) database: Option<Arc<dyn DatabaseFailover>>,
}

impl Checks {
    /// Checks every region in `regions` at once.
    pub(super) async fn regions(&self, regions: &[RegionName]) -> Vec<(RegionName, RegionCheck)> {
        join_all(
            regions
                .iter()
                .map(|r| async move { (r.clone(), self.region(r).await) }),
        )
        .await
    }

    async fn region(&self, region: &RegionName) -> RegionCheck {
        let probe = match (&self.policy.health, &self.probe) {
            (Some(h), Some(p)) => Some(self.probe_region(p.as_ref(), region, h.timeout).await),
            _ => None,
        };
        let mut metrics = Vec::new();
        if let Some(provider) = &self.metrics {
            for trigger in &self.policy.metrics {
                let args = trigger.args(self.service.as_str(), region);
                let verdict = match render_query(&trigger.query, &args) {
                    Err(e) => {
                        tracing::warn!(region = %region, trigger = %trigger.name, error = %e, "metric query does not render");
                        Verdict::Unknown
                    }
                    Ok(query) => {
                        let q = MetricQuery {
                            metric: trigger.name.clone(),
                            query,
                            window: trigger.window,
                            args,
                        };
                        match provider.measure(&q).await {
                            Ok(m) => match m.value() {
                                Some(v) if v > trigger.above => Verdict::Fail(format!(
                                    "{} {v} above {}",
                                    trigger.name, trigger.above
                                )),
                                Some(_) => Verdict::Pass,
                                None => Verdict::Unknown,
                            },
                            Err(e) => {
                                tracing::warn!(region = %region, trigger = %trigger.name, error = %e, "metric query failed");
                                Verdict::Unknown
                            }
                        }
                    }
                };
                metrics.push(verdict);
            }
        }
        RegionCheck { probe, metrics }
    }

    async fn probe_region(
        &self,
        probe: &dyn HealthProbe,
        region: &RegionName,
        timeout: Duration,
    ) -> Verdict {
        let Some(endpoints) = self.endpoints.get(region).filter(|e| !e.is_empty()) else {
            return Verdict::Unknown;
        };
        let attempts = join_all(endpoints.iter().map(|ep| async move {
            match tokio::time::timeout(timeout, probe.check(ep, timeout)).await {
                Ok(o) => (ep, o),
                Err(_) => (
                    ep,
                    crate::probe::ProbeOutcome::unhealthy(format!(
                        "timed out after {}",
                        humantime::format_duration(timeout)
                    )),
                ),
            }
        }))
        .await;
        if attempts.iter().any(|(_, o)| o.is_healthy()) {
            return Verdict::Pass;
        }
        let reasons: Vec<String> = attempts
            .iter()
            .map(|(ep, o)| format!("{}: {o}", ep.replica))
            .collect();
        Verdict::Fail(reasons.join("; "))
    }

    /// Whether the primary database is reachable; `None` when the check
    /// could not be made (or there is no database trigger).
    pub(super) async fn database(&self) -> Option<bool> {
        let db = self.database.as_ref()?;
        self.policy.database.as_ref()?;
        match db.check_primary().await {
            Ok(h) => Some(h.reachable),
            Err(e) => {
                tracing::warn!(error = %e, "database check failed");
                None
            }
        }
    }
}

/// The counters of one region.
#[derive(Debug, Default)]
struct Track {
    probe_failures: u32,
    metric_breaches: Vec<u32>,
    /// The first failing check of the current failure streak.
    failing_since: Option<Instant>,
    last_failure: String,
    healthy_checks: u32,
    healthy_since: Option<Instant>,
}

/// A trigger that fired for a region.
#[derive(Debug, Clone)]
pub(super) struct Fired {
    pub(super) region: RegionName,
    pub(super) trigger: String,
    pub(super) detected_after: Duration,
}

/// The counters of every region and of the database.
#[derive(Debug, Default)]
pub(super) struct Monitor {
    regions: BTreeMap<RegionName, Track>,
    database_lost_since: Option<Instant>,
}

impl Monitor {
    /// Counts one round; returns the regions whose trigger is firing now
    /// (whether or not they already failed over).
    pub(super) fn observe(
        &mut self,
        policy: &FailoverPolicy,
        round: Vec<(RegionName, RegionCheck)>,
        now: Instant,
    ) -> Vec<Fired> {
        let mut fired = Vec::new();
        for (region, check) in round {
            let t = self.regions.entry(region.clone()).or_default();
            t.metric_breaches.resize(check.metrics.len(), 0);
            let mut failing = Vec::new();
            let mut healthy = true;
            match &check.probe {
                Some(Verdict::Fail(reason)) => {
                    t.probe_failures = t.probe_failures.saturating_add(1);
                    healthy = false;
                    if let Some(h) = &policy.health
                        && t.probe_failures >= h.consecutive_failures
                    {
                        failing.push(format!(
                            "{} consecutive failed health checks (last: {reason})",
                            t.probe_failures
                        ));
                    }
                    t.last_failure = reason.clone();
                }
                Some(Verdict::Pass) => t.probe_failures = 0,
                Some(Verdict::Unknown) | None => {}
            }
            for (i, (verdict, trigger)) in check.metrics.iter().zip(&policy.metrics).enumerate() {
                match verdict {
                    Verdict::Fail(reason) => {
                        t.metric_breaches[i] = t.metric_breaches[i].saturating_add(1);
                        healthy = false;
                        if t.metric_breaches[i] >= trigger.consecutive {
                            failing.push(if trigger.consecutive > 1 {
                                format!("{reason} on {} checks in a row", t.metric_breaches[i])
                            } else {
                                reason.clone()
                            });
                        }
                        t.last_failure = reason.clone();
                    }
                    Verdict::Pass => t.metric_breaches[i] = 0,
                    Verdict::Unknown => {}
                }
            }
            if healthy {
                t.failing_since = None;
                if t.healthy_checks == 0 {
                    t.healthy_since = Some(now);
                }
                t.healthy_checks = t.healthy_checks.saturating_add(1);
            } else {
                t.failing_since.get_or_insert(now);
                t.healthy_checks = 0;
                t.healthy_since = None;
            }
            if !failing.is_empty() {
                fired.push(Fired {
                    region,
                    trigger: failing.join(", "),
                    detected_after: now - t.failing_since.unwrap_or(now),
                });
            }
        }
        fired
    }

    /// Counts one database check (`None`: unknown); returns the trigger's
    /// description and how long the loss has lasted when it fires.
    pub(super) fn observe_database(
        &mut self,
        policy: &FailoverPolicy,
        reachable: Option<bool>,
        now: Instant,
    ) -> Option<(String, Duration)> {
        match reachable {
            Some(true) => self.database_lost_since = None,
            Some(false) => {
                self.database_lost_since.get_or_insert(now);
            }
            None => {}
        }
        let trigger = policy.database.as_ref()?;
        let since = self.database_lost_since?;
        let lost = now - since;
        (lost >= trigger.lost_for).then(|| {
            (
                format!(
                    "database primary unreachable for {}",
                    humantime::format_duration(lost)
                ),
                lost,
            )
        })
    }

    /// Consecutive healthy checks of `region` and since when it has been
    /// healthy.
    pub(super) fn healthy(&self, region: &RegionName) -> (u32, Option<Instant>) {
        self.regions
            .get(region)
            .map_or((0, None), |t| (t.healthy_checks, t.healthy_since))
    }
}
