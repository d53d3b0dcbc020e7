//! [`NginxIngressRouter`]: ingress-nginx canary annotations on a canary Ingress.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::{Error, RequestMatch, Result, ServiceName, Slot, TrafficRouter, TrafficSplit};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{Instrument, debug, info_span};

use super::slots::{
    FIELD_MANAGER, SERVICE_LABEL, apply_params, percent_of, slot_of_service_name, slot_service_name,
};
use crate::error::map_kube_error;

/// `nginx.ingress.kubernetes.io/canary`: marks the canary Ingress.
pub(crate) const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
/// `nginx.ingress.kubernetes.io/canary-weight`: the canary's share.
pub(crate) const CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
/// `nginx.ingress.kubernetes.io/canary-weight-total`: what the weight is a share of.
pub(crate) const CANARY_WEIGHT_TOTAL: &str = "nginx.ingress.kubernetes.io/canary-weight-total";
/// `nginx.ingress.kubernetes.io/canary-by-header`: the header that selects the canary.
pub(crate) const CANARY_BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
/// `nginx.ingress.kubernetes.io/canary-by-header-value`: the header value that selects it.
pub(crate) const CANARY_BY_HEADER_VALUE: &str =
    "nginx.ingress.kubernetes.io/canary-by-header-value";
/// `nginx.ingress.kubernetes.io/canary-by-cookie`: the cookie that selects the canary.
pub(crate) const CANARY_BY_COOKIE: &str = "nginx.ingress.kubernetes.io/canary-by-cookie";

/// The weight total this router writes: weights are percentages.
const WEIGHT_TOTAL: u8 = 100;

/// Routes a service with ingress-nginx's canary Ingress.
///
/// # Objects
///
/// The *main* Ingress, named like the service, sends the host and path to
/// the stable slot's Service (`<service>-blue` or `<service>-green`). The
/// *canary* Ingress, `<service>-canary`, is a copy of it (same class, host,
/// path and port) pointing at the canary slot's Service, with the
/// annotations `nginx.ingress.kubernetes.io/canary: "true"`,
/// `canary-weight` (the canary's percentage) and `canary-weight-total:
/// "100"`, and for a match rule `canary-by-header` plus
/// `canary-by-header-value`, or `canary-by-cookie`. Annotation values are
/// strings, numbers included.
///
/// # Precedence
///
/// ingress-nginx decides per request: the header rule first, then the
/// cookie rule, then the weight. A request carrying the canary header value
/// goes to the canary whatever the weight; any other request falls through
/// to the weight.
///
/// # Cookies
///
/// ingress-nginx routes by cookie only on the values `always` (canary) and
/// `never` (stable), and ignores any other value. A
/// [`RequestMatch::Cookie`] is therefore accepted only with the value
/// `always`; any other value is refused with [`Error::InvalidInput`], since
/// the rule would silently never match.
///
/// # Writes
///
/// A split with the same stable slot as the one in force (every canary
/// step, a promotion to 100 %, an abort back to stable) is **one write**:
/// the canary Ingress. Once it exists that write is a JSON merge patch
/// rather than an apply, because it must remove the match annotations a
/// previous split set (`null` in a merge patch removes a key whoever set
/// it, where an apply removes only keys Atlas owned); it carries every
/// canary annotation and the backend, so the Ingress changes whole.
///
/// A split that changes the stable slot also rewrites the main Ingress,
/// first (two writes; Kubernetes has no transaction over two objects), and
/// so does the first split of a service, which creates both Ingresses. On
/// the promotion path, from 100 % canary to all traffic on that slot, no
/// request changes destination between the two writes: after the first,
/// both Ingresses point at the new slot. On any other path requests go to
/// the new stable slot between the two writes. Calls on one router are
/// serialized, so its own concurrent calls never interleave those writes.
///
/// ```no_run
/// # async fn demo() -> atlas_core::Result<()> {
/// use atlas_core::{ServiceName, Slot, TrafficRouter, TrafficSplit};
/// use atlas_k8s::NginxIngressRouter;
///
/// let client = kube::Client::try_default().await.expect("kubeconfig");
/// let router = NginxIngressRouter::new(client, "shop", "shop.example.com", 8080);
/// let checkout = ServiceName::new("checkout")?;
/// router.set_split(&checkout, &TrafficSplit::new(Slot::Blue, 5)?).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NginxIngressRouter {
    ingresses: Api<Ingress>,
    namespace: String,
    host: String,
    path: String,
    port: i32,
    class: String,
    writes: Arc<Mutex<()>>,
}

impl std::fmt::Debug for NginxIngressRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NginxIngressRouter")
            .field("namespace", &self.namespace)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("port", &self.port)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl NginxIngressRouter {
    /// A router for Ingresses in `namespace` serving `host` (path `/`,
    /// class `nginx`) and forwarding to port `port` of the slot Services.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        host: impl Into<String>,
        port: u16,
    ) -> Self {
        let namespace = namespace.into();
        NginxIngressRouter {
            ingresses: Api::namespaced(client, &namespace),
            namespace,
            host: host.into(),
            path: "/".to_owned(),
            port: i32::from(port),
            class: "nginx".to_owned(),
            writes: Arc::new(Mutex::new(())),
        }
    }

    /// Route only `path` and below (type `Prefix`); defaults to `/`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The IngressClass of ingress-nginx; defaults to `nginx`.
    pub fn with_ingress_class(mut self, class: impl Into<String>) -> Self {
        self.class = class.into();
        self
    }

    /// The name of the canary Ingress of `service`: `<service>-canary`.
    pub fn canary_name(service: &ServiceName) -> String {
        format!("{service}-canary")
    }

    fn ingress(&self, name: String, service: &ServiceName, slot: Slot) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_owned(),
                    service.as_str().to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: Some(self.class.clone()),
                rules: Some(vec![IngressRule {
                    host: Some(self.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some(self.path.clone()),
                            path_type: "Prefix".to_owned(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: slot_service_name(service, slot),
                                    port: Some(ServiceBackendPort {
                                        number: Some(self.port),
                                        name: None,
                                    }),
                                }),
                                resource: None,
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            status: None,
        }
    }

    /// The main Ingress of `service`, sending everything to `stable`.
    pub fn main_ingress(&self, service: &ServiceName, stable: Slot) -> Ingress {
        self.ingress(service.as_str().to_owned(), service, stable)
    }

    /// The canary annotations for `split`: a value for each one in force and
    /// `None` for those the split does not use (so a merge patch removes
    /// them). Refuses a cookie value other than `always`.
    fn canary_annotations(split: &TrafficSplit) -> Result<BTreeMap<&'static str, Option<String>>> {
        let (mut header, mut header_value, mut cookie) = (None, None, None);
        match split.canary_match() {
            None => {}
            Some(RequestMatch::Header { name, value }) => {
                header = Some(name.clone());
                header_value = Some(value.clone());
            }
            Some(RequestMatch::Cookie { name, value }) if value == "always" => {
                cookie = Some(name.clone());
            }
            Some(RequestMatch::Cookie { name, value }) => {
                return Err(Error::invalid(
                    format!("canary match cookie {name}={value}"),
                    "ingress-nginx routes by cookie only on the value \"always\"; use a header match or the cookie value \"always\"",
                ));
            }
        }
        Ok(BTreeMap::from([
            (CANARY, Some("true".to_owned())),
            (
                CANARY_WEIGHT,
                Some(split.canary_weight().percent().to_string()),
            ),
            (CANARY_WEIGHT_TOTAL, Some(WEIGHT_TOTAL.to_string())),
            (CANARY_BY_HEADER, header),
            (CANARY_BY_HEADER_VALUE, header_value),
            (CANARY_BY_COOKIE, cookie),
        ]))
    }

    /// The canary Ingress that carries `split` for `service`, as applied
    /// when it does not exist yet.
    pub fn canary_ingress(&self, service: &ServiceName, split: &TrafficSplit) -> Result<Ingress> {
        let annotations = Self::canary_annotations(split)?
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        let mut ingress = self.ingress(Self::canary_name(service), service, split.canary());
        ingress.metadata.annotations = Some(annotations);
        Ok(ingress)
    }

    /// The JSON merge patch that turns an existing canary Ingress into the
    /// one carrying `split`: every canary annotation (`null` for those not
    /// in use) and the whole spec.
    pub fn canary_merge_patch(&self, service: &ServiceName, split: &TrafficSplit) -> Result<Value> {
        let annotations: serde_json::Map<String, Value> = Self::canary_annotations(split)?
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map_or(Value::Null, Value::String)))
            .collect();
        let ingress = self.ingress(Self::canary_name(service), service, split.canary());
        let spec = serde_json::to_value(&ingress.spec).map_err(|e| {
            Error::invalid(
                format!("Ingress {}/{}", self.namespace, Self::canary_name(service)),
                format!("does not serialize: {e}"),
            )
        })?;
        Ok(json!({
            "metadata": {
                "labels": ingress.metadata.labels,
                "annotations": annotations,
            },
            "spec": spec,
        }))
    }

    /// Reads the split a canary Ingress carries, naming the Ingress when its
    /// annotations or backend are not a split.
    pub fn split_of(&self, service: &ServiceName, canary: &Ingress) -> Result<TrafficSplit> {
        let what = format!("Ingress {}/{}", self.namespace, Self::canary_name(service));
        let empty = BTreeMap::new();
        let notes = canary.metadata.annotations.as_ref().unwrap_or(&empty);
        if notes.get(CANARY).map(String::as_str) != Some("true") {
            return Err(Error::invalid(
                format!("{what} annotation {CANARY}"),
                "must be \"true\" on the canary Ingress",
            ));
        }
        let backend = canary
            .spec
            .as_ref()
            .and_then(|s| s.rules.as_ref())
            .and_then(|r| r.first())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.paths.first())
            .and_then(|p| p.backend.service.as_ref())
            .ok_or_else(|| {
                Error::invalid(
                    format!("{what} rules"),
                    "must hold one path with a Service backend",
                )
            })?;
        let canary_slot = slot_of_service_name(service, &backend.name, &format!("{what} backend"))?;
        let number = |key: &str, default: i64| -> Result<i64> {
            match notes.get(key) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| {
                    Error::invalid(
                        format!("{what} annotation {key}"),
                        format!("must be a whole number, got {v:?}"),
                    )
                }),
            }
        };
        let weight = number(CANARY_WEIGHT, 0)?;
        // ingress-nginx's default total is 100.
        let total = number(CANARY_WEIGHT_TOTAL, 100)?;
        let percent = percent_of(weight, total, &format!("{what} canary weight"))?;
        let split = TrafficSplit::new(canary_slot.other(), percent)?;
        // Precedence as ingress-nginx applies it: header, then cookie.
        let rule = if let Some(name) = notes.get(CANARY_BY_HEADER) {
            Some(RequestMatch::Header {
                name: name.clone(),
                // Without a value ingress-nginx sends a header of `always`
                // to the canary.
                value: notes
                    .get(CANARY_BY_HEADER_VALUE)
                    .cloned()
                    .unwrap_or_else(|| "always".to_owned()),
            })
        } else {
            notes
                .get(CANARY_BY_COOKIE)
                .map(|name| RequestMatch::Cookie {
                    name: name.clone(),
                    value: "always".to_owned(),
                })
        };
        Ok(match rule {
            Some(rule) => split.with_canary_match(rule),
            None => split,
        })
    }

    fn stable_of_main(main: &Ingress, service: &ServiceName) -> Option<Slot> {
        let name = &main
            .spec
            .as_ref()?
            .rules
            .as_ref()?
            .first()?
            .http
            .as_ref()?
            .paths
            .first()?
            .backend
            .service
            .as_ref()?
            .name;
        slot_of_service_name(service, name, "main Ingress backend").ok()
    }
}

#[async_trait]
impl TrafficRouter for NginxIngressRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let canary_name = Self::canary_name(service);
        let span = info_span!("k8s.router.nginx.set_split", namespace = %self.namespace, name = %service, canary = %canary_name, %split);
        async {
            // Refuse bad input before any request.
            let annotations_ok = Self::canary_annotations(split).map(|_| ());
            annotations_ok?;
            let _serial = self.writes.lock().await;
            let ns = &self.namespace;
            let main = self
                .ingresses
                .get_opt(service.as_str())
                .await
                .map_err(|e| map_kube_error(&format!("reading Ingress {ns}/{service}"), e))?;
            if main.as_ref().and_then(|m| Self::stable_of_main(m, service)) != Some(split.stable())
            {
                let body = self.main_ingress(service, split.stable());
                self.ingresses
                    .patch(service.as_str(), &apply_params(), &Patch::Apply(&body))
                    .await
                    .map_err(|e| map_kube_error(&format!("applying Ingress {ns}/{service}"), e))?;
                debug!(stable = %split.stable(), "main Ingress applied");
            }
            let exists = self
                .ingresses
                .get_opt(&canary_name)
                .await
                .map_err(|e| map_kube_error(&format!("reading Ingress {ns}/{canary_name}"), e))?
                .is_some();
            if exists {
                let patch = self.canary_merge_patch(service, split)?;
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                self.ingresses
                    .patch(&canary_name, &params, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| {
                        map_kube_error(&format!("patching Ingress {ns}/{canary_name}"), e)
                    })?;
                debug!("canary Ingress patched");
            } else {
                let body = self.canary_ingress(service, split)?;
                self.ingresses
                    .patch(&canary_name, &apply_params(), &Patch::Apply(&body))
                    .await
                    .map_err(|e| {
                        map_kube_error(&format!("applying Ingress {ns}/{canary_name}"), e)
                    })?;
                debug!("canary Ingress created");
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        let canary_name = Self::canary_name(service);
        let span =
            info_span!("k8s.router.nginx.split", namespace = %self.namespace, name = %canary_name);
        async {
            let canary = self.ingresses.get_opt(&canary_name).await.map_err(|e| {
                map_kube_error(
                    &format!("reading Ingress {}/{canary_name}", self.namespace),
                    e,
                )
            })?;
            match canary {
                None => {
                    debug!("no canary Ingress");
                    Ok(None)
                }
                Some(canary) => self.split_of(service, &canary).map(Some),
            }
        }
        .instrument(span)
        .await
    }
}
