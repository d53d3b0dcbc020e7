//! Failover files: a service's regions and its [`FailoverPolicy`] in YAML
//! or TOML, checked field by field, and the way back.
//!
//! ```yaml
//! regions:
//!   - { name: us-east, weight: 40 }
//!   - { name: eu-west, weight: 35 }
//!   - { name: ap-south, weight: 25 }
//!   - { name: us-west, weight: 40, standby: true }
//! database_region: us-east
//! interval: 10s
//! health: { consecutive_failures: 3, timeout: 5s }
//! database: { lost_for: 30s }
//! failback: { automatic: 5m }
//! capacity: { factor: 1.5, max_share: { us-west: 60 } }
//! ```
//!
//! Every field but `regions` may be left out and then takes the
//! specification's policy ([`FailoverPolicy::specification`]): 10 s checks,
//! 3 failed health checks, the primary unreachable for 30 s, p95 above 5 s
//! and errors above 1 % (Prometheus queries with a `region` label), 3
//! healthy checks to recover, automatic failback after 5 minutes, capacity
//! 1.5 × a region's weight. `health: off` and `database: off` remove a
//! trigger; `metrics: []` removes the metric triggers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::document::{DOCUMENT, parse_toml, parse_yaml, read_as};
use super::durations::{duration, format_duration};
use crate::error::{Error, Result};
use crate::failover::{
    Capacity, DatabaseTrigger, Failback, FailoverPolicy, HealthTrigger, MetricTrigger,
};
use crate::region::{Region, RegionName, RegionRole, RegionSet};

/// A failover file: the service's regions and its failover policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSpec {
    /// The regions; active weights add up to 100.
    pub regions: Vec<RegionSpec>,
    /// The region holding the primary database, if the controller switches
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_region: Option<String>,
    /// How often every region is checked, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// The health trigger, or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Toggle<HealthSpec>>,
    /// The database trigger, or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Toggle<DatabaseSpec>>,
    /// The metric triggers; left out, the specification's two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<MetricTriggerSpec>>,
    /// Healthy checks in a row before a failed region counts as recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_checks: Option<u32>,
    /// `manual`, or `{ automatic: 5m }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<FailbackSpec>,
    /// What each region can carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySpec>,
}

/// One region: `{ name: us-east, weight: 40 }`, `standby: true` for a
/// standby region (its weight is the share it is sized for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// A DNS-1123 label.
    pub name: String,
    /// Percent of traffic.
    pub weight: u8,
    /// A standby region. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// A trigger's settings, or the word `off`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Toggle<T> {
    /// `off`: no such trigger.
    Off(Off),
    /// The settings; left-out fields take the specification's.
    On(T),
}

/// The word `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Off {
    /// Off.
    Off,
}

/// `health:` — defaults 3 failures, 5 s timeout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Consecutive failed checks that fail a region; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Time one probe may take, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `database:` — default 30 s.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    /// How long the primary must stay unreachable, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_for: Option<String>,
}

/// One metric trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricTriggerSpec {
    /// Its name, unique.
    pub name: String,
    /// The query template (`{{region}}`, `{{service}}`, `{{window}}`).
    pub query: String,
    /// How far back one measurement looks. Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The threshold, in the query's unit.
    pub above: f64,
    /// Breaching checks in a row that fail a region. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
}

/// `failback:` — `manual` or `{ automatic: 5m }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FailbackSpec {
    /// `manual`: traffic returns on a call.
    Manual(Manual),
    /// Traffic returns after the region stayed healthy this long.
    Automatic {
        /// E.g. `5m`.
        automatic: String,
    },
}

/// The word `manual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manual {
    /// Manual.
    Manual,
}

/// `capacity:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    /// Share a region can carry as a multiple of its weight. Default 1.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Explicit largest shares, in percent, by region.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_share: BTreeMap<String, u8>,
}

/// A checked failover file.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverConfig {
    /// The regions.
    pub regions: RegionSet,
    /// The policy.
    pub policy: FailoverPolicy,
    /// The region holding the primary database, if any.
    pub database_region: Option<RegionName>,
}

impl FailoverSpec {
    /// Parses YAML; errors name the field.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for bad YAML, a wrong type, a missing or
    /// unknown field.
    pub fn from_yaml(text: &str) -> Result<Self> {
        parse_yaml(text)
    }

    /// Parses TOML; errors name the field.
    ///
    /// # Errors
    /// As [`from_yaml`](Self::from_yaml).
    pub fn from_toml(text: &str) -> Result<Self> {
        parse_toml(text)
    }

    /// Reads a `.yaml`, `.yml` or `.toml` file and checks it.
    ///
    /// # Errors
    /// As [`RolloutSpec::from_path`](super::RolloutSpec::from_path) and
    /// [`to_config`](Self::to_config); fields are named `PATH: FIELD`.
    pub fn load(path: &Path) -> Result<FailoverConfig> {
        let spec: FailoverSpec = read_as(path)?;
        spec.to_config().map_err(|e| match e {
            Error::InvalidInput { field, rule } => Error::InvalidInput {
                field: format!("{}: {field}", path.display()),
                rule,
            },
            other => other,
        })
    }

    /// Checks every rule and builds the regions and the policy.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field, e.g. `regions[1].name` or
    /// `capacity.max_share.eu-central`.
    pub fn to_config(&self) -> Result<FailoverConfig> {
        let mut regions = Vec::with_capacity(self.regions.len());
        for (i, r) in self.regions.iter().enumerate() {
            let name = RegionName::new(r.name.as_str())
                .map_err(|e| Error::invalid(format!("regions[{i}].name"), rule_of(e)))?;
            regions.push(if r.standby {
                Region::standby(name, r.weight)
            } else {
                Region::active(name, r.weight)
            });
        }
        let regions = RegionSet::new(regions).map_err(|e| Error::invalid("regions", rule_of(e)))?;
        let known = |field: String, name: &str| -> Result<RegionName> {
            let n = RegionName::new(name).map_err(|e| Error::invalid(field.clone(), rule_of(e)))?;
            match regions.get(&n) {
                Some(_) => Ok(n),
                None => Err(Error::invalid(
                    field,
                    format!("{name} is not one of the regions"),
                )),
            }
        };
        let database_region = self
            .database_region
            .as_deref()
            .map(|r| known("database_region".into(), r))
            .transpose()?;
        let spec = FailoverPolicy::specification();
        let mut policy = spec.clone();
        if let Some(i) = &self.interval {
            policy.interval = duration("interval", i)?;
        }
        policy.health = match &self.health {
            None => spec.health.clone(),
            Some(Toggle::Off(_)) => None,
            Some(Toggle::On(h)) => {
                let d = spec.health.clone().unwrap_or(HealthTrigger {
                    consecutive_failures: 3,
                    timeout: std::time::Duration::from_secs(5),
                });
                Some(HealthTrigger {
                    consecutive_failures: h.consecutive_failures.unwrap_or(d.consecutive_failures),
                    timeout: match &h.timeout {
                        Some(t) => duration("health.timeout", t)?,
                        None => d.timeout,
                    },
                })
            }
        };
        policy.database = match &self.database {
            None => spec.database.clone(),
            Some(Toggle::Off(_)) => None,
            Some(Toggle::On(d)) => Some(DatabaseTrigger {
                lost_for: match &d.lost_for {
                    Some(t) => duration("database.lost_for", t)?,
                    None => spec
                        .database
                        .as_ref()
                        .map_or(std::time::Duration::from_secs(30), |d| d.lost_for),
                },
            }),
        };
        if let Some(list) = &self.metrics {
            policy.metrics = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                policy.metrics.push(MetricTrigger {
                    name: m.name.clone(),
                    query: m.query.clone(),
                    window: match &m.window {
                        Some(w) => duration(&format!("metrics[{i}].window"), w)?,
                        None => std::time::Duration::from_secs(60),
                    },
                    above: m.above,
                    consecutive: m.consecutive.unwrap_or(1),
                });
            }
        }
        if let Some(n) = self.recovery_checks {
            policy.recovery_checks = n;
        }
        if let Some(f) = &self.failback {
            policy.failback = match f {
                FailbackSpec::Manual(_) => Failback::Manual,
                FailbackSpec::Automatic { automatic } => Failback::Automatic {
                    healthy_for: duration("failback.automatic", automatic)?,
                },
            };
        }
        if let Some(c) = &self.capacity {
            let mut capacity = Capacity::default();
            if let Some(f) = c.factor {
                capacity.factor = f;
            }
            for (name, share) in &c.max_share {
                let region = known(format!("capacity.max_share.{name}"), name)?;
                capacity.max_share.insert(region, *share);
            }
            policy.capacity = capacity;
        }
        // The domain's own rules, its fields spelled as the file's.
        policy.validate().map_err(|e| match e {
            Error::InvalidInput { field, rule } => Error::InvalidInput {
                field: field
                    .strip_prefix("failover.")
                    .unwrap_or(&field)
                    .to_string(),
                rule,
            },
            other => other,
        })?;
        tracing::debug!(regions = regions.regions().len(), "failover spec accepted");
        Ok(FailoverConfig {
            regions,
            policy,
            database_region,
        })
    }

    /// Writes the spec as YAML; [`from_yaml`](Self::from_yaml) reads it back.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the serializer refuses a value.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml_ng::to_string(self)
            .map_err(|e| Error::invalid(DOCUMENT, format!("cannot be written as YAML: {e}")))
    }
}

impl From<&FailoverConfig> for FailoverSpec {
    fn from(c: &FailoverConfig) -> Self {
        let p = &c.policy;
        FailoverSpec {
            regions: c
                .regions
                .regions()
                .iter()
                .map(|r| RegionSpec {
                    name: r.name.to_string(),
                    weight: r.weight,
                    standby: r.role == RegionRole::Standby,
                })
                .collect(),
            database_region: c.database_region.as_ref().map(ToString::to_string),
            interval: Some(format_duration(p.interval)),
            health: Some(match &p.health {
                None => Toggle::Off(Off::Off),
                Some(h) => Toggle::On(HealthSpec {
                    consecutive_failures: Some(h.consecutive_failures),
                    timeout: Some(format_duration(h.timeout)),
                }),
            }),
            database: Some(match &p.database {
                None => Toggle::Off(Off::Off),
                Some(d) => Toggle::On(DatabaseSpec {
                    lost_for: Some(format_duration(d.lost_for)),
                }),
            }),
            metrics: Some(
                p.metrics
                    .iter()
                    .map(|m| MetricTriggerSpec {
                        name: m.name.clone(),
                        query: m.query.clone(),
                        window: Some(format_duration(m.window)),
                        above: m.above,
                        consecutive: Some(m.consecutive),
                    })
                    .collect(),
            ),
            recovery_checks: Some(p.recovery_checks),
            failback: Some(match p.failback {
                Failback::Manual => FailbackSpec::Manual(Manual::Manual),
                Failback::Automatic { healthy_for } => FailbackSpec::Automatic {
                    automatic: format_duration(healthy_for),
                },
            }),
            capacity: Some(CapacitySpec {
                factor: Some(p.capacity.factor),
                max_share: p
                    .capacity
                    .max_share
                    .iter()
                    .map(|(r, s)| (r.to_string(), *s))
                    .collect(),
            }),
        }
    }
}

/// The rule of an invalid-input error (its message without the field).
fn rule_of(e: Error) -> String {
    match e {
        Error::InvalidInput { field, rule } if field.starts_with("region") => {
            format!("{field}: {rule}")
        }
        Error::InvalidInput { rule, .. } => rule,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SPEC: &str = r#"
regions:
  - { name: us-east, weight: 40 }
  - { name: eu-west, weight: 35 }
  - { name: ap-south, weight: 25 }
  - { name: us-west, weight: 40, standby: true }
database_region: us-east
"#;

    #[test]
    fn a_minimal_file_is_the_specification_policy() {
        let c = FailoverSpec::from_yaml(SPEC).unwrap().to_config().unwrap();
        assert_eq!(c.policy, FailoverPolicy::specification());
        assert_eq!(
            c.regions.normal_weights().to_string(),
            "ap-south=25% eu-west=35% us-east=40% us-west=0%"
        );
        assert_eq!(c.database_region, Some(RegionName::new("us-east").unwrap()));
    }

    #[test]
    fn every_field_is_read_and_round_trips() {
        let text = format!(
            "{SPEC}interval: 2s\nhealth: {{ consecutive_failures: 2, timeout: 1s }}\ndatabase: off\n\
             metrics: [{{ name: p99, query: 'p99{{region=\"{{{{region}}}}\"}}', above: 2.5, consecutive: 2 }}]\n\
             recovery_checks: 5\nfailback: manual\ncapacity: {{ factor: 2.0, max_share: {{ us-west: 60 }} }}\n"
        );
        let c = FailoverSpec::from_yaml(&text).unwrap().to_config().unwrap();
        let p = &c.policy;
        assert_eq!(p.interval, Duration::from_secs(2));
        assert_eq!(
            p.health,
            Some(HealthTrigger {
                consecutive_failures: 2,
                timeout: Duration::from_secs(1)
            })
        );
        assert_eq!(p.database, None);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].window, Duration::from_secs(60));
        assert_eq!(p.metrics[0].above, 2.5);
        assert_eq!(p.recovery_checks, 5);
        assert_eq!(p.failback, Failback::Manual);
        assert_eq!(p.capacity.factor, 2.0);
        let back = FailoverSpec::from(&c);
        let again = FailoverSpec::from_yaml(&back.to_yaml().unwrap())
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn toml_reads_the_same() {
        let text = r#"
database_region = "us-east"
failback = { automatic = "10m" }
health = "off"
[[regions]]
name = "us-east"
weight = 60
[[regions]]
name = "eu-west"
weight = 40
"#;
        let c = FailoverSpec::from_toml(text).unwrap().to_config().unwrap();
        assert_eq!(c.policy.health, None);
        assert_eq!(
            c.policy.failback,
            Failback::Automatic {
                healthy_for: Duration::from_secs(600)
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |extra: &str| {
            FailoverSpec::from_yaml(&format!("{SPEC}{extra}"))
                .and_then(|s| s.to_config())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("interval: soon\n").contains("interval"));
        assert!(bad("capacity: { max_share: { mars: 10 } }\n").contains("capacity.max_share.mars"));
        assert!(
            bad("health: { consecutive_failures: 0 }\n").contains("health.consecutive_failures")
        );
        assert!(bad("failback: { automatic: never }\n").contains("failback.automatic"));
        let c = FailoverSpec::from_yaml(&format!("{SPEC}failback: {{ automatic: 90s }}\n"))
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(
            c.policy.failback,
            Failback::Automatic {
                healthy_for: Duration::from_secs(90)
            }
        );
        assert!(bad("bogus: 1\n").contains("bogus"));
        let e = FailoverSpec::from_yaml("regions: [{ name: US, weight: 100 }]")
            .unwrap()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("regions[0].name"), "{e}");
        let e =
            FailoverSpec::from_yaml("regions: [{ name: a, weight: 60 }, { name: b, weight: 30 }]")
                .unwrap()
                .to_config()
                .unwrap_err()
                .to_string();
        assert!(e.contains("90 %"), "{e}");
        let e = FailoverSpec::from_yaml(&format!("{SPEC}database_region: mars\n"));
        assert!(e.is_err(), "a duplicate key is refused");
    }
}
