//! [`FailoverPolicy`]: when a region or the database counts as failed, when
//! a failed region counts as recovered, how traffic comes back, and how much
//! traffic each region can take.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::analysis::render_query;
use crate::error::{Error, Result};
use crate::region::{Region, RegionName};

/// The health trigger: a region fails after this many consecutive failed
/// checks of its endpoints. One check probes every endpoint of the region
/// once; it passes when at least one endpoint answers healthy within
/// `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTrigger {
    /// Consecutive failed checks that fail the region (specification: 3).
    pub consecutive_failures: u32,
    /// Time one probe attempt may take; a slower answer is a failure.
    pub timeout: Duration,
}

/// The database trigger: the primary counts as lost once every check for
/// at least `lost_for` has found it unreachable, measured from the first
/// such check (specification: 30 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseTrigger {
    /// How long the primary must stay unreachable.
    pub lost_for: Duration,
}

/// A metric trigger: a region fails when its measurement is above `above`
/// on `consecutive` checks in a row.
///
/// `query` is a template: `{{region}}`, `{{service}}` and `{{window}}`
/// (the window in milliseconds, `60000ms`, which Prometheus accepts) are
/// substituted per region, as analysis does with its arguments (see
/// [`render_query`](crate::analysis::render_query)); the provider also gets
/// them as [`MetricQuery::args`](crate::MetricQuery::args). No data and a
/// provider error count neither for nor against the region (a dead region
/// answers no data; the health trigger is there for it), so an outage of
/// the metrics backend never fails a region over.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricTrigger {
    /// The trigger's name, e.g. `response-time`; the query's metric name.
    pub name: String,
    /// The query template.
    pub query: String,
    /// How far back one measurement looks.
    pub window: Duration,
    /// The threshold, in the query's base unit (seconds, a ratio 0–1).
    pub above: f64,
    /// Consecutive breaching checks that fail the region (at least 1).
    pub consecutive: u32,
}

impl MetricTrigger {
    /// The specification's response-time trigger: p95 above 5 s over the
    /// last minute, from the usual Prometheus histogram.
    pub fn response_time() -> Self {
        MetricTrigger {
            name: "response-time".into(),
            query: "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{service=\"{{service}}\",region=\"{{region}}\"}[{{window}}])))".into(),
            window: Duration::from_secs(60),
            above: 5.0,
            consecutive: 1,
        }
    }

    /// The specification's error-rate trigger: more than 1 % of requests
    /// answered 5xx over the last minute.
    pub fn error_rate() -> Self {
        MetricTrigger {
            name: "error-rate".into(),
            query: "sum(rate(http_requests_total{service=\"{{service}}\",region=\"{{region}}\",code=~\"5..\"}[{{window}}])) / sum(rate(http_requests_total{service=\"{{service}}\",region=\"{{region}}\"}[{{window}}]))".into(),
            window: Duration::from_secs(60),
            above: 0.01,
            consecutive: 1,
        }
    }

    /// The arguments the template is rendered with for `region`.
    pub(crate) fn args(&self, service: &str, region: &RegionName) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("service".to_string(), service.to_string()),
            ("region".to_string(), region.as_str().to_string()),
            (
                "window".to_string(),
                format!("{}ms", self.window.as_millis().max(1)),
            ),
        ])
    }
}

/// How traffic returns to a failed region once it has recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// Automatically, once the region has passed every check for
    /// `healthy_for` (and at least the policy's
    /// [`recovery_checks`](FailoverPolicy::recovery_checks) in a row).
    Automatic {
        /// How long the region must have been healthy.
        healthy_for: Duration,
    },
    /// Only when [`FailoverHandle::failback`](super::FailoverHandle::failback)
    /// is called for a recovered region.
    Manual,
}

/// How much traffic a region can take, in percent of the service's.
///
/// A region can take `factor` × its configured weight (for a standby, the
/// share it is sized for), capped at 100 %, unless `max_share` names an
/// explicit maximum for it. With the default factor 1.5, the
/// specification's regions take up to 60 / 52.5 / 37.5 %: losing the 40 %
/// region leaves 90 % of capacity for 100 % of traffic, so the standby is
/// activated.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Multiple of the configured weight a region can take. Default 1.5.
    pub factor: f64,
    /// Explicit maxima, in percent, overriding `factor` per region.
    pub max_share: BTreeMap<RegionName, u8>,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            factor: 1.5,
            max_share: BTreeMap::new(),
        }
    }
}

impl Capacity {
    /// The most `region` can take, in percent.
    pub fn of(&self, region: &Region) -> f64 {
        match self.max_share.get(&region.name) {
            Some(&max) => f64::from(max),
            None => (self.factor * f64::from(region.weight)).min(100.0),
        }
    }
}

/// When to fail over, when to fail back, and where traffic goes.
///
/// [`specification`](Self::specification) holds the specification's
/// values; every trigger is an `Option` (or, for metrics, a list) so each
/// can be changed or turned off:
///
/// ```
/// use std::time::Duration;
/// use atlas_core::failover::{Failback, FailoverPolicy};
/// let mut policy = FailoverPolicy::specification();
/// assert_eq!(policy.health.as_ref().unwrap().consecutive_failures, 3);
/// assert_eq!(policy.database.as_ref().unwrap().lost_for, Duration::from_secs(30));
/// policy.database = None; // no database to switch
/// policy.failback = Failback::Manual;
/// policy.validate()?;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverPolicy {
    /// How often every region (and the database) is checked. Default 10 s.
    pub interval: Duration,
    /// Consecutive failed health checks of a region.
    pub health: Option<HealthTrigger>,
    /// Loss of the primary database.
    pub database: Option<DatabaseTrigger>,
    /// Metric thresholds per region (response time, error rate, …).
    pub metrics: Vec<MetricTrigger>,
    /// Hysteresis: a failed region counts as recovered only after this many
    /// consecutive healthy checks (every trigger passing). A single bad
    /// check starts the count again. Default 3.
    pub recovery_checks: u32,
    /// How traffic returns to a recovered region.
    pub failback: Failback,
    /// How much traffic each region can take; decides when a standby is
    /// activated.
    pub capacity: Capacity,
}

impl FailoverPolicy {
    /// The specification's policy: checks every 10 s; a region fails after
    /// 3 consecutive failed health checks (5 s probe timeout), a p95
    /// response time above 5 s or an error rate above 1 %; the database
    /// fails over after 30 s unreachable; a region is recovered after 3
    /// healthy checks in a row and gets its traffic back automatically
    /// after 5 minutes healthy; capacity factor 1.5.
    pub fn specification() -> Self {
        FailoverPolicy {
            interval: Duration::from_secs(10),
            health: Some(HealthTrigger {
                consecutive_failures: 3,
                timeout: Duration::from_secs(5),
            }),
            database: Some(DatabaseTrigger {
                lost_for: Duration::from_secs(30),
            }),
            metrics: vec![MetricTrigger::response_time(), MetricTrigger::error_rate()],
            recovery_checks: 3,
            failback: Failback::Automatic {
                healthy_for: Duration::from_secs(300),
            },
            capacity: Capacity::default(),
        }
    }

    /// The longest duration accepted anywhere in a policy: 365 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Checks the rules; errors name the field (`failover.interval`,
    /// `failover.metrics[1].query`, …).
    pub fn validate(&self) -> Result<()> {
        let duration = |field: &str, d: Duration| -> Result<()> {
            if d.is_zero() {
                Err(Error::invalid(field, "must be greater than 0"))
            } else if d > Self::MAX_DURATION {
                Err(Error::invalid(field, "must be at most 365 days"))
            } else {
                Ok(())
            }
        };
        duration("failover.interval", self.interval)?;
        if let Some(h) = &self.health {
            if h.consecutive_failures < 1 {
                return Err(Error::invalid(
                    "failover.health.consecutive_failures",
                    "must be at least 1",
                ));
            }
            duration("failover.health.timeout", h.timeout)?;
        }
        if let Some(d) = &self.database {
            duration("failover.database.lost_for", d.lost_for)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let field = |f: &str| format!("failover.metrics[{i}].{f}");
            if m.name.trim().is_empty() {
                return Err(Error::invalid(field("name"), "must not be empty"));
            }
            if !names.insert(m.name.as_str()) {
                return Err(Error::invalid(
                    field("name"),
                    format!("{:?} is used by another trigger", m.name),
                ));
            }
            duration(&field("window"), m.window)?;
            if !m.above.is_finite() {
                return Err(Error::invalid(field("above"), "must be a finite number"));
            }
            if m.consecutive < 1 {
                return Err(Error::invalid(field("consecutive"), "must be at least 1"));
            }
            let probe = RegionName::new("region")
                .map_err(|e| Error::invalid(field("query"), e.to_string()))?;
            render_query(&m.query, &m.args("service", &probe))
                .map_err(|e| Error::invalid(field("query"), e.to_string()))?;
        }
        if self.recovery_checks < 1 {
            return Err(Error::invalid(
                "failover.recovery_checks",
                "must be at least 1",
            ));
        }
        if let Failback::Automatic { healthy_for } = self.failback
            && healthy_for > Self::MAX_DURATION
        {
            return Err(Error::invalid(
                "failover.failback.healthy_for",
                "must be at most 365 days",
            ));
        }
        if !(self.capacity.factor.is_finite() && self.capacity.factor >= 1.0) {
            return Err(Error::invalid(
                "failover.capacity.factor",
                format!(
                    "must be a number of at least 1, got {}",
                    self.capacity.factor
                ),
            ));
        }
        for (region, &max) in &self.capacity.max_share {
            if max == 0 || max > 100 {
                return Err(Error::invalid(
                    format!("failover.capacity.max_share.{region}"),
                    format!("must be between 1 and 100 %, got {max}"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self::specification()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_policy_is_valid_and_holds_its_numbers() {
        let p = FailoverPolicy::specification();
        p.validate().unwrap();
        assert_eq!(p.metrics[0].above, 5.0);
        assert_eq!(p.metrics[1].above, 0.01);
        assert_eq!(p.recovery_checks, 3);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let mut p = FailoverPolicy::specification();
        p.metrics[1].query = "rate(x{r=\"{{regoin}}\"}[1m])".into();
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("failover.metrics[1].query"), "{e}");
        assert!(e.contains("regoin"), "{e}");

        let mut p = FailoverPolicy::specification();
        p.health.as_mut().unwrap().consecutive_failures = 0;
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("failover.health.consecutive_failures"), "{e}");

        let mut p = FailoverPolicy::specification();
        p.capacity.factor = 0.5;
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("failover.capacity.factor"), "{e}");

        let mut p = FailoverPolicy::specification();
        p.metrics.push(MetricTrigger::error_rate());
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("another trigger"), "{e}");

        let mut p = FailoverPolicy::specification();
        p.interval = Duration::ZERO;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("failover.interval")
        );
    }

    #[test]
    fn capacity_is_a_factor_of_the_weight_or_an_explicit_share() {
        let us = RegionName::new("us").unwrap();
        let mut c = Capacity::default();
        assert_eq!(c.of(&Region::active(us.clone(), 40)), 60.0);
        assert_eq!(c.of(&Region::active(us.clone(), 80)), 100.0);
        c.max_share.insert(us.clone(), 45);
        assert_eq!(c.of(&Region::active(us, 40)), 45.0);
    }
}
