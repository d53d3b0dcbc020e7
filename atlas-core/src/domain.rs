//! The nouns of a rollout: services, slots, releases, traffic splits, endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name of a service Atlas rolls out: 1–63 characters of lowercase ASCII
/// letters, digits and `-`, starting with a letter and not ending with `-`
/// (a DNS-1123 label, so the same name works for Kubernetes objects, file
/// names and metric labels).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates `name`.
    ///
    /// ```
    /// use atlas_core::ServiceName;
    /// assert!(ServiceName::new("checkout-api").is_ok());
    /// assert!(ServiceName::new("Checkout").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let rule = dns_label_rule(&name);
        match rule {
            Some(rule) => Err(Error::invalid(format!("service name {name:?}"), rule)),
            None => Ok(ServiceName(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rule a DNS-1123 label `name` breaks, or `None` when it is one:
/// 1–63 characters of lowercase ASCII letters, digits and `-`, starting
/// with a letter and not ending with `-`.
pub(crate) fn dns_label_rule(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 63 {
        Some("must be 1 to 63 characters")
    } else if !name.as_bytes()[0].is_ascii_lowercase() {
        Some("must start with a lowercase letter")
    } else if name.ends_with('-') {
        Some("must not end with '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may hold only lowercase letters, digits and '-'")
    } else {
        None
    }
}

impl TryFrom<String> for ServiceName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        ServiceName::new(value)
    }
}

impl From<ServiceName> for String {
    fn from(value: ServiceName) -> Self {
        value.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of the two slots a service runs in. At any time one slot is *stable*
/// (serving) and the other is idle or running the release being rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// The blue slot.
    Blue,
    /// The green slot.
    Green,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    /// `"blue"` or `"green"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to run: a version of a service and how to start it.
///
/// Adapters read `artifact` in their own way: a container image for
/// Kubernetes, a program path for local processes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The version label, e.g. `v2` or a git sha. Shown in events and metrics.
    pub version: String,
    /// The image or program to run.
    pub artifact: String,
    /// Arguments passed to the artifact.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for every replica.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Env values often hold secrets: `Debug` shows only their names.
impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release")
            .field("version", &self.version)
            .field("artifact", &self.artifact)
            .field("args", &self.args)
            .field(
                "env",
                &self
                    .env
                    .keys()
                    .map(|k| (k, "<redacted>"))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
}

impl Release {
    /// A release of `artifact` labelled `version`, with no args and no env.
    pub fn new(version: impl Into<String>, artifact: impl Into<String>) -> Self {
        Release {
            version: version.into(),
            artifact: artifact.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// Adds an argument.
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Checks that version and artifact are set.
    pub fn validate(&self) -> Result<()> {
        if self.version.trim().is_empty() {
            return Err(Error::invalid("release.version", "must not be empty"));
        }
        if self.artifact.trim().is_empty() {
            return Err(Error::invalid("release.artifact", "must not be empty"));
        }
        Ok(())
    }
}

/// A traffic weight in percent, 0 to 100.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct Weight(pub(crate) u8);

impl Weight {
    /// No traffic.
    pub const ZERO: Weight = Weight(0);
    /// All traffic.
    pub const FULL: Weight = Weight(100);

    /// A weight of `percent`, refused above 100.
    pub fn new(percent: u8) -> Result<Self> {
        if percent > 100 {
            return Err(Error::invalid(
                "weight",
                format!("must be between 0 and 100, got {percent}"),
            ));
        }
        Ok(Weight(percent))
    }

    /// The weight in percent.
    pub fn percent(self) -> u8 {
        self.0
    }

    /// `100 - self`.
    pub fn complement(self) -> Weight {
        Weight(100 - self.0)
    }
}

impl TryFrom<u8> for Weight {
    type Error = Error;
    fn try_from(value: u8) -> Result<Self> {
        Weight::new(value)
    }
}

impl From<Weight> for u8 {
    fn from(value: Weight) -> Self {
        value.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A rule that sends matching requests to the canary slot whatever the
/// weights say (A/B testing, internal users first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestMatch {
    /// The request has header `name` with exactly `value`.
    Header {
        /// Header name, case-insensitive.
        name: String,
        /// Exact header value.
        value: String,
    },
    /// The request has cookie `name` with exactly `value`.
    Cookie {
        /// Cookie name.
        name: String,
        /// Exact cookie value.
        value: String,
    },
}

/// How traffic of one service is split between its stable slot and the other
/// (canary) slot. Weights always add up to 100.
///
/// ```
/// use atlas_core::{Slot, TrafficSplit};
/// let split = TrafficSplit::new(Slot::Blue, 25)?;
/// assert_eq!(split.stable_weight().percent(), 75);
/// assert_eq!(split.weight_of(Slot::Green).percent(), 25);
/// assert!(TrafficSplit::new(Slot::Blue, 101).is_err());
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplit {
    stable: Slot,
    canary_weight: Weight,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    canary_match: Option<RequestMatch>,
}

impl TrafficSplit {
    /// `canary_percent` % to the slot that is not `stable`, the rest to `stable`.
    pub fn new(stable: Slot, canary_percent: u8) -> Result<Self> {
        Ok(TrafficSplit {
            stable,
            canary_weight: Weight::new(canary_percent)?,
            canary_match: None,
        })
    }

    /// All traffic to `slot`.
    pub fn all_to(slot: Slot) -> Self {
        TrafficSplit {
            stable: slot,
            canary_weight: Weight::ZERO,
            canary_match: None,
        }
    }

    /// Also send requests matching `rule` to the canary.
    pub fn with_canary_match(mut self, rule: RequestMatch) -> Self {
        self.canary_match = Some(rule);
        self
    }

    /// The stable slot.
    pub fn stable(&self) -> Slot {
        self.stable
    }

    /// The canary slot (the one that is not stable).
    pub fn canary(&self) -> Slot {
        self.stable.other()
    }

    /// The canary's weight.
    pub fn canary_weight(&self) -> Weight {
        self.canary_weight
    }

    /// The stable slot's weight.
    pub fn stable_weight(&self) -> Weight {
        self.canary_weight.complement()
    }

    /// The weight of `slot`.
    pub fn weight_of(&self, slot: Slot) -> Weight {
        if slot == self.stable {
            self.stable_weight()
        } else {
            self.canary_weight
        }
    }

    /// The canary match rule, if any.
    pub fn canary_match(&self) -> Option<&RequestMatch> {
        self.canary_match.as_ref()
    }

    /// Whether every request goes to `slot` (weight 100, no match rule to the other).
    pub fn is_all_to(&self, slot: Slot) -> bool {
        self.weight_of(slot) == Weight::FULL && (slot != self.stable || self.canary_match.is_none())
    }
}

impl fmt::Display for TrafficSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} / {} {}",
            self.stable,
            self.stable_weight(),
            self.canary(),
            self.canary_weight
        )
    }
}

/// One replica's network address, as routers and probes see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// A name unique within the slot, e.g. `checkout-green-0` or a pod name.
    pub replica: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// An endpoint for `replica` at `addr`.
    pub fn new(replica: impl Into<String>, addr: SocketAddr) -> Self {
        Endpoint {
            replica: replica.into(),
            addr,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.replica, self.addr)
    }
}

/// What a slot is running right now, as its [`Workloads`](crate::Workloads) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// The slot.
    pub slot: Slot,
    /// The release version the slot was last asked to run, if any.
    pub version: Option<String>,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas running the asked-for release (started, maybe not ready).
    pub updated: u32,
    /// Replicas running and ready for traffic.
    pub ready: u32,
    /// Addresses of the ready replicas, in a stable order; adapters that can
    /// choose remove the last ones first when scaling down.
    pub endpoints: Vec<Endpoint>,
    /// Replicas that exited or failed, with the reason, e.g.
    /// `checkout-green-1 exited with status 3`. Never hidden.
    pub failures: Vec<String>,
}

impl SlotStatus {
    /// The status of a slot that runs nothing.
    pub fn empty(slot: Slot) -> Self {
        SlotStatus {
            slot,
            version: None,
            desired: 0,
            updated: 0,
            ready: 0,
            endpoints: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Whether every desired replica runs the release and is ready.
    pub fn is_ready(&self) -> bool {
        self.updated == self.desired && self.ready == self.desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_dns_label_rules() {
        for ok in ["a", "checkout", "checkout-api-2", &"a".repeat(63)] {
            assert!(ServiceName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "1abc", "abc-", "ab_c", "ab.c", &"a".repeat(64)] {
            let err = ServiceName::new(bad).unwrap_err();
            assert!(err.to_string().contains("service name"), "{err}");
        }
    }

    #[test]
    fn release_debug_hides_env_values() {
        let r = Release::new("v1", "app").with_env("DB_PASSWORD", "hunter2");
        let shown = format!("{r:?}");
        assert!(
            shown.contains("DB_PASSWORD") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn weights_above_100_are_refused() {
        assert!(Weight::new(100).is_ok());
        let err = Weight::new(101).unwrap_err();
        assert!(err.to_string().contains("between 0 and 100"), "{err}");
        let parsed: std::result::Result<Weight, _> = serde_json::from_str("150");
        assert!(parsed.is_err());
    }

    #[test]
    fn split_weights_add_up() {
        for w in 0..=100 {
            let s = TrafficSplit::new(Slot::Green, w).unwrap();
            assert_eq!(
                s.weight_of(Slot::Blue).percent() + s.weight_of(Slot::Green).percent(),
                100
            );
        }
        assert!(TrafficSplit::all_to(Slot::Blue).is_all_to(Slot::Blue));
        assert!(
            TrafficSplit::new(Slot::Blue, 100)
                .unwrap()
                .is_all_to(Slot::Green)
        );
        let with_match = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Header {
            name: "x-canary".into(),
            value: "1".into(),
        });
        assert!(!with_match.is_all_to(Slot::Blue));
    }
}
