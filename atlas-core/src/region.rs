//! Regions: where a service runs, what share of its traffic each region
//! takes, and the [`RegionRouter`] that applies those shares.
//!
//! A [`RegionSet`] names the active regions with their configured weights
//! (the specification's 40 / 35 / 25 %) and the standby regions, which take
//! no traffic until a failover activates them. [`RegionWeights`] is the
//! traffic in force: whole percentages per region that add up to 100. The
//! blue/green split of a rollout applies *inside* each region; a region
//! router moves traffic *between* regions.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{ServiceName, dns_label_rule};
use crate::error::{Error, Result};

/// The name of a region: the same rules as a [`ServiceName`] (a DNS-1123
/// label), so it works in metric labels, file names and Kubernetes objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionName(String);

impl RegionName {
    /// Validates `name`.
    ///
    /// ```
    /// use atlas_core::region::RegionName;
    /// assert!(RegionName::new("eu-west-1").is_ok());
    /// assert!(RegionName::new("EU West").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match dns_label_rule(&name) {
            Some(rule) => Err(Error::invalid(format!("region name {name:?}"), rule)),
            None => Ok(RegionName(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegionName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        RegionName::new(value)
    }
}

impl From<RegionName> for String {
    fn from(value: RegionName) -> Self {
        value.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a region serves traffic in normal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionRole {
    /// Serves its configured share of traffic.
    Active,
    /// Takes no traffic until a failover activates it.
    Standby,
}

/// One region of a [`RegionSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Its name.
    pub name: RegionName,
    /// Active or standby.
    pub role: RegionRole,
    /// The configured share of traffic, in percent, for an active region;
    /// for a standby, the share it is sized to take when activated.
    pub weight: u8,
}

impl Region {
    /// An active region taking `weight` percent of traffic.
    pub fn active(name: RegionName, weight: u8) -> Self {
        Region {
            name,
            role: RegionRole::Active,
            weight,
        }
    }

    /// A standby region sized for `weight` percent of traffic once activated.
    pub fn standby(name: RegionName, weight: u8) -> Self {
        Region {
            name,
            role: RegionRole::Standby,
            weight,
        }
    }
}

/// The regions a service runs in: at least one active region, the active
/// weights adding up to 100, names unique; standby regions optional.
///
/// ```
/// use atlas_core::region::{Region, RegionName, RegionSet};
/// let set = RegionSet::new(vec![
///     Region::active(RegionName::new("us-east")?, 40),
///     Region::active(RegionName::new("eu-west")?, 35),
///     Region::active(RegionName::new("ap-south")?, 25),
///     Region::standby(RegionName::new("us-west")?, 40),
/// ])?;
/// assert_eq!(set.normal_weights().get(&RegionName::new("eu-west")?), 35);
/// assert_eq!(set.normal_weights().get(&RegionName::new("us-west")?), 0);
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Region>", into = "Vec<Region>")]
pub struct RegionSet {
    regions: Vec<Region>,
}

impl RegionSet {
    /// Validates `regions`.
    pub fn new(regions: Vec<Region>) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        for r in &regions {
            if !seen.insert(&r.name) {
                return Err(Error::invalid(
                    format!("region set: region {}", r.name),
                    "is named twice",
                ));
            }
            if r.weight > 100 {
                return Err(Error::invalid(
                    format!("region set: weight of {}", r.name),
                    format!("is {} %, above 100 %", r.weight),
                ));
            }
            if r.role == RegionRole::Active && r.weight == 0 {
                return Err(Error::invalid(
                    format!("region set: weight of active region {}", r.name),
                    "is 0 %; make it a standby or give it a share",
                ));
            }
        }
        let active: u32 = regions
            .iter()
            .filter(|r| r.role == RegionRole::Active)
            .map(|r| u32::from(r.weight))
            .sum();
        if active == 0 {
            return Err(Error::invalid(
                "region set",
                "has no active region (at least one must take traffic)",
            ));
        }
        if active != 100 {
            return Err(Error::invalid(
                "region set: active weights",
                format!("add up to {active} %, not 100 %"),
            ));
        }
        Ok(RegionSet { regions })
    }

    /// Every region, in the order given.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region named `name`.
    pub fn get(&self, name: &RegionName) -> Option<&Region> {
        self.regions.iter().find(|r| &r.name == name)
    }

    /// The active regions, in the order given.
    pub fn active(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(|r| r.role == RegionRole::Active)
    }

    /// The standby regions, in the order given.
    pub fn standby(&self) -> impl Iterator<Item = &Region> {
        self.regions
            .iter()
            .filter(|r| r.role == RegionRole::Standby)
    }

    /// The weights of normal operation: each active region its configured
    /// share, each standby 0.
    pub fn normal_weights(&self) -> RegionWeights {
        let mut w = BTreeMap::new();
        for r in &self.regions {
            let share = match r.role {
                RegionRole::Active => r.weight,
                RegionRole::Standby => 0,
            };
            w.insert(r.name.clone(), share);
        }
        RegionWeights(w)
    }
}

impl TryFrom<Vec<Region>> for RegionSet {
    type Error = Error;
    fn try_from(value: Vec<Region>) -> Result<Self> {
        RegionSet::new(value)
    }
}

impl From<RegionSet> for Vec<Region> {
    fn from(value: RegionSet) -> Self {
        value.regions
    }
}

/// The traffic shares in force: whole percentages per region adding up to
/// 100. A region listed with 0 takes no new requests; a region not listed
/// is unknown to the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<RegionName, u8>",
    into = "BTreeMap<RegionName, u8>"
)]
pub struct RegionWeights(BTreeMap<RegionName, u8>);

impl RegionWeights {
    /// Validates `weights`: at least one region, each at most 100, the sum
    /// exactly 100.
    ///
    /// ```
    /// use atlas_core::region::{RegionName, RegionWeights};
    /// let us = RegionName::new("us")?;
    /// let eu = RegionName::new("eu")?;
    /// assert!(RegionWeights::new([(us.clone(), 60), (eu.clone(), 40)]).is_ok());
    /// assert!(RegionWeights::new([(us, 60), (eu, 30)]).is_err());
    /// # Ok::<(), atlas_core::Error>(())
    /// ```
    pub fn new(weights: impl IntoIterator<Item = (RegionName, u8)>) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, w) in weights {
            if w > 100 {
                return Err(Error::invalid(
                    format!("region weights: {name}"),
                    format!("is {w} %, above 100 %"),
                ));
            }
            if map.insert(name.clone(), w).is_some() {
                return Err(Error::invalid(
                    format!("region weights: {name}"),
                    "is given twice",
                ));
            }
        }
        let sum: u32 = map.values().map(|&w| u32::from(w)).sum();
        if sum != 100 {
            return Err(Error::invalid(
                "region weights",
                format!("add up to {sum} %, not 100 %"),
            ));
        }
        Ok(RegionWeights(map))
    }

    /// All traffic to `region`.
    pub fn all_to(region: RegionName) -> Self {
        RegionWeights(BTreeMap::from([(region, 100)]))
    }

    /// The share of `region` (0 when not listed).
    pub fn get(&self, region: &RegionName) -> u8 {
        self.0.get(region).copied().unwrap_or(0)
    }

    /// Every listed region with its share, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&RegionName, u8)> {
        self.0.iter().map(|(n, &w)| (n, w))
    }

    /// The regions taking a share above 0.
    pub fn serving(&self) -> impl Iterator<Item = &RegionName> {
        self.0.iter().filter(|(_, w)| **w > 0).map(|(n, _)| n)
    }
}

impl TryFrom<BTreeMap<RegionName, u8>> for RegionWeights {
    type Error = Error;
    fn try_from(value: BTreeMap<RegionName, u8>) -> Result<Self> {
        RegionWeights::new(value)
    }
}

impl From<RegionWeights> for BTreeMap<RegionName, u8> {
    fn from(value: RegionWeights) -> Self {
        value.0
    }
}

impl fmt::Display for RegionWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, w) in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={w}%")?;
        }
        Ok(())
    }
}

/// Moves a service's traffic between regions: DNS weights, a global load
/// balancer, or Atlas's own proxy with an upstream group per region.
///
/// [`set_region_weights`](Self::set_region_weights) applies all shares in
/// one call, atomically: a new request sees the old weights or the new ones,
/// never a mix. Requests in flight finish where they started. The rollout's
/// blue/green split ([`TrafficRouter`](crate::TrafficRouter)) applies inside
/// each region and is not changed by this trait.
#[async_trait]
pub trait RegionRouter: Send + Sync {
    /// Applies `weights` to `service`. Returns once new requests follow
    /// them. A region the router does not know is an
    /// [`InvalidInput`](crate::Error::InvalidInput) error naming it, and nothing
    /// changes.
    async fn set_region_weights(
        &self,
        service: &ServiceName,
        weights: &RegionWeights,
    ) -> Result<()>;

    /// The weights in force, or `None` if none were ever set for `service`.
    async fn region_weights(&self, service: &ServiceName) -> Result<Option<RegionWeights>>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn RegionRouter>`
/// and `Box<dyn RegionRouter>` are RegionRouters too.
macro_rules! forward_regionrouter {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: RegionRouter + ?Sized> RegionRouter for $ptr<T> {
            async fn set_region_weights(
                &self,
                service: &ServiceName,
                weights: &RegionWeights,
            ) -> Result<()> {
                (**self).set_region_weights(service, weights).await
            }
            async fn region_weights(&self, service: &ServiceName) -> Result<Option<RegionWeights>> {
                (**self).region_weights(service).await
            }
        }
    )*};
}
forward_regionrouter!(Arc, Box);

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> RegionName {
        RegionName::new(s).unwrap()
    }

    #[test]
    fn region_sets_are_validated() {
        let ok = RegionSet::new(vec![Region::active(n("a"), 60), Region::active(n("b"), 40)]);
        assert!(ok.is_ok());
        let twice = RegionSet::new(vec![Region::active(n("a"), 60), Region::active(n("a"), 40)]);
        assert!(twice.unwrap_err().to_string().contains("named twice"));
        let short = RegionSet::new(vec![
            Region::active(n("a"), 60),
            Region::standby(n("b"), 40),
        ]);
        assert!(short.unwrap_err().to_string().contains("60 %"));
        let none = RegionSet::new(vec![Region::standby(n("a"), 100)]);
        assert!(none.unwrap_err().to_string().contains("no active region"));
        let zero = RegionSet::new(vec![Region::active(n("a"), 100), Region::active(n("b"), 0)]);
        assert!(zero.unwrap_err().to_string().contains("is 0 %"));
    }

    #[test]
    fn region_names_follow_label_rules() {
        assert!(RegionName::new("us-east-1").is_ok());
        let e = RegionName::new("US").unwrap_err().to_string();
        assert!(e.contains("region name"), "{e}");
    }

    #[test]
    fn weights_round_trip_through_serde_and_are_checked_on_load() {
        let w = RegionWeights::new([(n("a"), 70), (n("b"), 30)]).unwrap();
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, r#"{"a":70,"b":30}"#);
        assert_eq!(serde_json::from_str::<RegionWeights>(&json).unwrap(), w);
        assert!(serde_json::from_str::<RegionWeights>(r#"{"a":70,"b":20}"#).is_err());
        assert_eq!(w.to_string(), "a=70% b=30%");
    }
}
