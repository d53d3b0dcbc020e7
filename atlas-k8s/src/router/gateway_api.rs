//! [`GatewayApiRouter`]: canary weights and header matches on an HTTPRoute.

use std::collections::BTreeMap;

use async_trait::async_trait;
use atlas_core::{Error, RequestMatch, Result, ServiceName, Slot, TrafficRouter, TrafficSplit};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders, HttpRouteRulesMatchesHeadersType,
    HttpRouteSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::Patch;
use tracing::{Instrument, debug, info_span};

use super::slots::{
    SERVICE_LABEL, apply_params, percent_of, slot_of_service_name, slot_service_name,
};
use crate::error::map_kube_error;

/// The Gateway an HTTPRoute attaches to (its `parentRefs` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayParent {
    name: String,
    namespace: Option<String>,
    section_name: Option<String>,
}

impl GatewayParent {
    /// The Gateway `name` in the route's own namespace.
    pub fn new(name: impl Into<String>) -> Self {
        GatewayParent {
            name: name.into(),
            namespace: None,
            section_name: None,
        }
    }

    /// The Gateway lives in `namespace` (it must allow routes from the
    /// route's namespace).
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Attach to one listener of the Gateway only.
    pub fn with_section(mut self, section_name: impl Into<String>) -> Self {
        self.section_name = Some(section_name.into());
        self
    }
}

/// Routes a service with a Gateway API `HTTPRoute` named like the service,
/// whose backends are the Services `<service>-blue` and `<service>-green`
/// on one port.
///
/// # The route
///
/// The last rule carries the split: two `backendRefs`, the stable slot's
/// Service first, then the canary's. Gateway API weights are proportions,
/// not percentages: a backend gets `weight / sum of weights` of the
/// requests and weight 0 means no traffic. This router writes the
/// percentages themselves (they sum to 100), and reads any weights back as
/// proportions rounded to whole percent. A header match
/// ([`RequestMatch::Header`]) becomes an extra rule before it, with
/// `matches.headers` (type `Exact`) and the canary Service as its only
/// backend; Gateway API gives that rule precedence because it has more
/// header matches than the catch-all.
///
/// # No cookie match
///
/// `HTTPRoute` matches on path, method, headers and query parameters only;
/// a cookie is one `Cookie` header holding many pairs, which an exact
/// header match cannot single out. A [`RequestMatch::Cookie`] is therefore
/// refused with [`Error::InvalidInput`] before anything is written.
///
/// # Writes
///
/// Every `set_split` is one server-side apply of the whole route (field
/// manager `atlas`), so weights and match rule change together: a rule
/// Atlas wrote before and does not send again is removed by that same
/// apply. The first call creates the route.
///
/// ```no_run
/// # async fn demo() -> atlas_core::Result<()> {
/// use atlas_core::{ServiceName, Slot, TrafficRouter, TrafficSplit};
/// use atlas_k8s::router::{GatewayApiRouter, GatewayParent};
///
/// let client = kube::Client::try_default().await.expect("kubeconfig");
/// let router = GatewayApiRouter::new(client, "shop", 8080, GatewayParent::new("public"))
///     .with_hostname("shop.example.com");
/// let checkout = ServiceName::new("checkout")?;
/// router.set_split(&checkout, &TrafficSplit::new(Slot::Blue, 5)?).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GatewayApiRouter {
    routes: Api<HttpRoute>,
    namespace: String,
    port: i32,
    parents: Vec<GatewayParent>,
    hostnames: Vec<String>,
}

impl std::fmt::Debug for GatewayApiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayApiRouter")
            .field("namespace", &self.namespace)
            .field("port", &self.port)
            .field("parents", &self.parents)
            .field("hostnames", &self.hostnames)
            .finish_non_exhaustive()
    }
}

impl GatewayApiRouter {
    /// A router for HTTPRoutes in `namespace` attached to `parent`, sending
    /// requests to port `port` of the slot Services (Gateway API requires
    /// the port of a Service backend).
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        port: u16,
        parent: GatewayParent,
    ) -> Self {
        let namespace = namespace.into();
        GatewayApiRouter {
            routes: Api::namespaced(client, &namespace),
            namespace,
            port: i32::from(port),
            parents: vec![parent],
            hostnames: Vec::new(),
        }
    }

    /// Also attach the routes to `parent`.
    pub fn with_parent(mut self, parent: GatewayParent) -> Self {
        self.parents.push(parent);
        self
    }

    /// Only route requests for `hostname` (without any, the route matches
    /// every host its Gateway listener accepts).
    pub fn with_hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostnames.push(hostname.into());
        self
    }

    fn backend(&self, service: &ServiceName, slot: Slot, weight: i32) -> HttpRouteRulesBackendRefs {
        HttpRouteRulesBackendRefs {
            name: slot_service_name(service, slot),
            port: Some(self.port),
            weight: Some(weight),
            ..HttpRouteRulesBackendRefs::default()
        }
    }

    /// The HTTPRoute that carries `split` for `service`: what `set_split`
    /// applies. Refuses a cookie match with [`Error::InvalidInput`].
    pub fn route(&self, service: &ServiceName, split: &TrafficSplit) -> Result<HttpRoute> {
        let mut rules = Vec::new();
        match split.canary_match() {
            None => {}
            Some(RequestMatch::Header { name, value }) => rules.push(HttpRouteRules {
                matches: Some(vec![HttpRouteRulesMatches {
                    headers: Some(vec![HttpRouteRulesMatchesHeaders {
                        name: name.clone(),
                        r#type: Some(HttpRouteRulesMatchesHeadersType::Exact),
                        value: value.clone(),
                    }]),
                    ..HttpRouteRulesMatches::default()
                }]),
                backend_refs: Some(vec![self.backend(service, split.canary(), 1)]),
                ..HttpRouteRules::default()
            }),
            Some(RequestMatch::Cookie { name, .. }) => {
                return Err(Error::invalid(
                    format!("canary match cookie {name:?}"),
                    "an HTTPRoute cannot match a cookie (only path, method, headers and query parameters); use a header match",
                ));
            }
        }
        rules.push(HttpRouteRules {
            backend_refs: Some(vec![
                self.backend(
                    service,
                    split.stable(),
                    i32::from(split.stable_weight().percent()),
                ),
                self.backend(
                    service,
                    split.canary(),
                    i32::from(split.canary_weight().percent()),
                ),
            ]),
            ..HttpRouteRules::default()
        });
        let parent_refs = self
            .parents
            .iter()
            .map(|p| HttpRouteParentRefs {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                section_name: p.section_name.clone(),
                ..HttpRouteParentRefs::default()
            })
            .collect();
        Ok(HttpRoute {
            metadata: ObjectMeta {
                name: Some(service.as_str().to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_owned(),
                    service.as_str().to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: HttpRouteSpec {
                hostnames: (!self.hostnames.is_empty()).then(|| self.hostnames.clone()),
                parent_refs: Some(parent_refs),
                rules: Some(rules),
            },
            status: None,
        })
    }

    /// Reads the split an HTTPRoute carries, naming the route when its rules
    /// are not a split this router could have written.
    pub fn split_of(&self, service: &ServiceName, route: &HttpRoute) -> Result<TrafficSplit> {
        let what = format!("HTTPRoute {}/{service}", self.namespace);
        let rules = route.spec.rules.as_deref().unwrap_or_default();
        let mut canary_match = None;
        let mut weights = None;
        for rule in rules {
            let header = rule
                .matches
                .iter()
                .flatten()
                .flat_map(|m| m.headers.iter().flatten())
                .next();
            match header {
                Some(h) => {
                    canary_match = Some(RequestMatch::Header {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    });
                }
                None => weights = Some(rule.backend_refs.as_deref().unwrap_or_default()),
            }
        }
        let Some([stable, canary]) = weights else {
            return Err(Error::invalid(
                format!("{what} rules"),
                "must end with one rule of exactly two backendRefs (stable, canary)",
            ));
        };
        let stable_slot =
            slot_of_service_name(service, &stable.name, &format!("{what} backendRefs[0]"))?;
        let canary_slot =
            slot_of_service_name(service, &canary.name, &format!("{what} backendRefs[1]"))?;
        if stable_slot == canary_slot {
            return Err(Error::invalid(
                format!("{what} backendRefs"),
                "both backends point at the same slot",
            ));
        }
        // An unset weight is 1 in Gateway API.
        let (sw, cw) = (
            i64::from(stable.weight.unwrap_or(1)),
            i64::from(canary.weight.unwrap_or(1)),
        );
        let percent = percent_of(cw, sw + cw, &format!("{what} backend weights"))?;
        let split = TrafficSplit::new(stable_slot, percent)?;
        Ok(match canary_match {
            Some(rule) => split.with_canary_match(rule),
            None => split,
        })
    }
}

#[async_trait]
impl TrafficRouter for GatewayApiRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let span = info_span!("k8s.router.gateway_api.set_split", namespace = %self.namespace, name = %service, %split);
        async {
            let body = self.route(service, split)?;
            self.routes
                .patch(service.as_str(), &apply_params(), &Patch::Apply(&body))
                .await
                .map_err(|e| {
                    map_kube_error(
                        &format!("applying HTTPRoute {}/{service}", self.namespace),
                        e,
                    )
                })?;
            debug!("HTTPRoute applied");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        let span = info_span!("k8s.router.gateway_api.split", namespace = %self.namespace, name = %service);
        async {
            let route = self.routes.get_opt(service.as_str()).await.map_err(|e| {
                map_kube_error(
                    &format!("reading HTTPRoute {}/{service}", self.namespace),
                    e,
                )
            })?;
            match route {
                None => {
                    debug!("no HTTPRoute");
                    Ok(None)
                }
                Some(route) => self.split_of(service, &route).map(Some),
            }
        }
        .instrument(span)
        .await
    }
}
