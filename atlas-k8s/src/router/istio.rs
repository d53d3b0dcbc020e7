//! `IstioRouter`: route weights of an Istio VirtualService.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::{Error, RequestMatch, Result, ServiceName, Slot, TrafficRouter, TrafficSplit};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{Instrument, debug, info_span};

use super::slots::{SERVICE_LABEL, SLOT_LABEL, apply_params, parse_slot, percent_of};
use crate::error::map_kube_error;

/// The API group of Istio's networking objects.
const GROUP: &str = "networking.istio.io";
/// The version this router writes; `v1` is served by Istio 1.22 and later.
const VERSION: &str = "v1";
/// The name of the VirtualService rule carrying a canary match.
const MATCH_RULE: &str = "atlas-canary-match";
/// The name of the VirtualService rule carrying the weights.
const SPLIT_RULE: &str = "atlas-split";
/// What a cookie match regex starts and ends with: the cookie may sit
/// anywhere in the `Cookie` header.
const COOKIE_PREFIX: &str = r"^(.*;\s*)?";
const COOKIE_SUFFIX: &str = r"(;.*)?$";

/// The `ApiResource` of `networking.istio.io/v1` `VirtualService`.
pub fn virtual_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "VirtualService"),
        "virtualservices",
    )
}

/// The `ApiResource` of `networking.istio.io/v1` `DestinationRule`.
pub fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "DestinationRule"),
        "destinationrules",
    )
}

/// Routes a service with an Istio `VirtualService` (`networking.istio.io/v1`)
/// named like the service, over the subsets `blue` and `green` of a
/// `DestinationRule` of the same name, which select pods by the
/// `atlas.dev/slot` label. Both are written as
/// [`DynamicObject`]s: no Istio crate builds on kube 4.
///
/// # The route
///
/// The rule `atlas-split` routes to the stable subset then the canary
/// subset, with weights that sum to 100 as Istio requires. A match rule
/// comes first as the rule `atlas-canary-match`, sending matching requests
/// to the canary subset: a [`RequestMatch::Header`] as an `exact` header
/// match (the header name written in lowercase, as Istio requires), a
/// [`RequestMatch::Cookie`] as a `regex` on the `Cookie` header that finds
/// `name=value` among the request's cookies.
///
/// # Writes
///
/// `set_split` is one server-side apply of the whole VirtualService (field
/// manager `atlas`): weights and match rule change together. The first
/// `set_split` of a service by a router also applies the DestinationRule,
/// before the VirtualService that needs its subsets; the subsets never
/// change, so later calls do not write it again.
#[derive(Clone)]
pub struct IstioRouter {
    client: kube::Client,
    namespace: String,
    gateways: Vec<String>,
    hosts: Vec<String>,
    subsets_applied: Arc<Mutex<HashSet<ServiceName>>>,
}

impl std::fmt::Debug for IstioRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioRouter")
            .field("namespace", &self.namespace)
            .field("gateways", &self.gateways)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl IstioRouter {
    /// A router for VirtualServices in `namespace`; each routes the
    /// Kubernetes Service named like the Atlas service, for mesh traffic.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        IstioRouter {
            client,
            namespace: namespace.into(),
            gateways: Vec::new(),
            hosts: Vec::new(),
            subsets_applied: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Also route requests arriving through the Istio Gateway `gateway`
    /// (`<namespace>/<name>`); add `mesh` too to keep routing mesh traffic.
    pub fn with_gateway(mut self, gateway: impl Into<String>) -> Self {
        self.gateways.push(gateway.into());
        self
    }

    /// Also match requests for `host` (e.g. the public host name a Gateway
    /// receives).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    fn api(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, resource)
    }

    fn labels(service: &ServiceName) -> BTreeMap<String, String> {
        BTreeMap::from([(SERVICE_LABEL.to_owned(), service.as_str().to_owned())])
    }

    /// The DestinationRule with the subsets `blue` and `green` of `service`.
    pub fn destination_rule(&self, service: &ServiceName) -> DynamicObject {
        let subsets: Vec<Value> = [Slot::Blue, Slot::Green]
            .map(|slot| {
                json!({
                    "name": slot.as_str(),
                    "labels": { SLOT_LABEL: slot.as_str() },
                })
            })
            .into();
        let mut obj = DynamicObject::new(service.as_str(), &destination_rule_resource())
            .within(&self.namespace)
            .data(json!({
                "spec": { "host": service.as_str(), "subsets": subsets }
            }));
        obj.metadata.labels = Some(Self::labels(service));
        obj
    }

    /// The VirtualService that carries `split` for `service`: what
    /// `set_split` applies.
    pub fn virtual_service(&self, service: &ServiceName, split: &TrafficSplit) -> DynamicObject {
        let destination = |slot: Slot, weight: u8| {
            json!({
                "destination": { "host": service.as_str(), "subset": slot.as_str() },
                "weight": weight,
            })
        };
        let mut http = Vec::new();
        if let Some(rule) = split.canary_match() {
            let headers = match rule {
                RequestMatch::Header { name, value } => {
                    json!({ name.to_ascii_lowercase(): { "exact": value } })
                }
                RequestMatch::Cookie { name, value } => json!({
                    "cookie": { "regex": cookie_regex(name, value) }
                }),
            };
            http.push(json!({
                "name": MATCH_RULE,
                "match": [{ "headers": headers }],
                "route": [destination(split.canary(), 100)],
            }));
        }
        http.push(json!({
            "name": SPLIT_RULE,
            "route": [
                destination(split.stable(), split.stable_weight().percent()),
                destination(split.canary(), split.canary_weight().percent()),
            ],
        }));
        let mut hosts = vec![service.as_str().to_owned()];
        hosts.extend(self.hosts.iter().cloned());
        let mut spec = json!({ "hosts": hosts, "http": http });
        if !self.gateways.is_empty() {
            spec["gateways"] = json!(self.gateways);
        }
        let mut obj = DynamicObject::new(service.as_str(), &virtual_service_resource())
            .within(&self.namespace)
            .data(json!({ "spec": spec }));
        obj.metadata.labels = Some(Self::labels(service));
        obj
    }

    /// Reads the split a VirtualService carries, naming it when its rules
    /// are not a split this router could have written.
    pub fn split_of(&self, service: &ServiceName, vs: &DynamicObject) -> Result<TrafficSplit> {
        let what = format!("VirtualService {}/{service}", self.namespace);
        let bad = |field: &str, rule: &str| Error::invalid(format!("{what} {field}"), rule);
        let rules = vs.data["spec"]["http"]
            .as_array()
            .ok_or_else(|| bad("spec.http", "must be a list of routes"))?;
        let find = |name: &str| rules.iter().find(|r| r["name"] == name);
        let split_rule =
            find(SPLIT_RULE).ok_or_else(|| bad("spec.http", "has no rule named atlas-split"))?;
        let route = split_rule["route"]
            .as_array()
            .filter(|r| r.len() == 2)
            .ok_or_else(|| bad("atlas-split route", "must hold two destinations"))?;
        let subset = |i: usize| -> Result<Slot> {
            let s = route[i]["destination"]["subset"].as_str().unwrap_or("");
            parse_slot(s, &format!("{what} atlas-split route[{i}] subset"))
        };
        let weight = |i: usize| route[i]["weight"].as_i64().unwrap_or(0);
        let (stable, canary) = (subset(0)?, subset(1)?);
        if stable == canary {
            return Err(bad("atlas-split route", "both destinations are one subset"));
        }
        let percent = percent_of(weight(1), weight(0) + weight(1), &what)?;
        let split = TrafficSplit::new(stable, percent)?;
        let Some(rule) = find(MATCH_RULE) else {
            return Ok(split);
        };
        let headers = rule["match"][0]["headers"]
            .as_object()
            .filter(|h| h.len() == 1)
            .ok_or_else(|| bad("atlas-canary-match", "must match exactly one header"))?;
        let (name, matcher) = headers
            .iter()
            .next()
            .ok_or_else(|| bad("atlas-canary-match", "must match exactly one header"))?;
        let rule = if let Some(value) = matcher["exact"].as_str() {
            RequestMatch::Header {
                name: name.clone(),
                value: value.to_owned(),
            }
        } else if let (true, Some(regex)) = (name == "cookie", matcher["regex"].as_str()) {
            let (name, value) = parse_cookie_regex(regex)
                .ok_or_else(|| bad("atlas-canary-match", "cookie regex is not one Atlas writes"))?;
            RequestMatch::Cookie { name, value }
        } else {
            return Err(bad(
                "atlas-canary-match",
                "must be an exact header match or a cookie regex",
            ));
        };
        Ok(split.with_canary_match(rule))
    }
}

/// Escapes the regex (RE2) metacharacters of `text`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// A regex on the `Cookie` header that matches when the cookie `name` has
/// exactly `value`.
fn cookie_regex(name: &str, value: &str) -> String {
    format!(
        "{COOKIE_PREFIX}{}={}{COOKIE_SUFFIX}",
        escape(name),
        escape(value)
    )
}

fn parse_cookie_regex(regex: &str) -> Option<(String, String)> {
    let pair = regex
        .strip_prefix(COOKIE_PREFIX)?
        .strip_suffix(COOKIE_SUFFIX)?;
    let (name, value) = pair.split_once('=')?;
    Some((unescape(name), unescape(value)))
}

#[async_trait]
impl TrafficRouter for IstioRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let span = info_span!("k8s.router.istio.set_split", namespace = %self.namespace, name = %service, %split);
        async {
            let ns = &self.namespace;
            {
                let mut applied = self.subsets_applied.lock().await;
                if !applied.contains(service) {
                    let body = self.destination_rule(service);
                    self.api(&destination_rule_resource())
                        .patch(service.as_str(), &apply_params(), &Patch::Apply(&body))
                        .await
                        .map_err(|e| {
                            map_kube_error(&format!("applying DestinationRule {ns}/{service}"), e)
                        })?;
                    debug!("DestinationRule applied");
                    applied.insert(service.clone());
                }
            }
            let body = self.virtual_service(service, split);
            self.api(&virtual_service_resource())
                .patch(service.as_str(), &apply_params(), &Patch::Apply(&body))
                .await
                .map_err(|e| {
                    map_kube_error(&format!("applying VirtualService {ns}/{service}"), e)
                })?;
            debug!("VirtualService applied");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        let span =
            info_span!("k8s.router.istio.split", namespace = %self.namespace, name = %service);
        async {
            let vs = self
                .api(&virtual_service_resource())
                .get_opt(service.as_str())
                .await
                .map_err(|e| {
                    map_kube_error(
                        &format!("reading VirtualService {}/{service}", self.namespace),
                        e,
                    )
                })?;
            match vs {
                None => {
                    debug!("no VirtualService");
                    Ok(None)
                }
                Some(vs) => self.split_of(service, &vs).map(Some),
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_regexes_round_trip() {
        for (name, value) in [("beta", "1"), ("a.b", "x+y(z)"), ("c", "v=w")] {
            let regex = cookie_regex(name, value);
            assert_eq!(
                parse_cookie_regex(&regex),
                Some((name.to_owned(), value.to_owned())),
                "{regex}"
            );
        }
        assert_eq!(cookie_regex("beta", "1"), r"^(.*;\s*)?beta=1(;.*)?$");
        assert_eq!(parse_cookie_regex("beta=1"), None);
    }
}
