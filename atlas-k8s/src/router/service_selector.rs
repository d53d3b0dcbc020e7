//! [`ServiceSelectorRouter`]: blue-green by switching one Service's selector.

use std::collections::BTreeMap;

use async_trait::async_trait;
use atlas_core::{Error, Result, ServiceName, Slot, TrafficRouter, TrafficSplit, Weight};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::Patch;
use tracing::{Instrument, debug, info_span};

use super::slots::{
    FIELD_MANAGER, SERVICE_LABEL, SLOT_LABEL, STABLE_SLOT_ANNOTATION, apply_params, parse_slot,
};
use crate::error::map_kube_error;

/// Routes a service by the selector of its *active* Service: the Service
/// named like the service selects the pods labelled
/// `atlas.dev/slot: blue` or `green`, and the cutover is one write of that
/// selector. A *preview* Service, `<service>-preview`, selects the slot
/// about to take traffic so it can be tested before the cutover
/// ([`ServiceSelectorRouter::set_preview`]).
///
/// # Only 0 % or 100 %
///
/// A Service load-balances over every pod its selector matches; it cannot
/// send a share of requests to one slot. This router therefore accepts only
/// splits that send everything to one slot (a canary weight of 0 or 100 %)
/// and no canary match rule: any other weight or a match rule is refused
/// with [`Error::InvalidInput`] naming it, before anything is written. Use
/// [`GatewayApiRouter`](super::GatewayApiRouter),
/// [`NginxIngressRouter`](super::NginxIngressRouter) or the Istio router for
/// canary steps.
///
/// # Objects
///
/// `set_split` server-side applies the whole active Service (selector,
/// port, and the [`STABLE_SLOT_ANNOTATION`] that tells a 100 % canary from
/// a 0 % one), so the first call creates it and every later call is one
/// write. The selector is `atlas.dev/service: <service>` plus
/// `atlas.dev/slot: <slot>`.
///
/// ```no_run
/// # async fn demo() -> atlas_core::Result<()> {
/// use atlas_core::{ServiceName, Slot, TrafficRouter, TrafficSplit};
/// use atlas_k8s::ServiceSelectorRouter;
///
/// let client = kube::Client::try_default().await.expect("kubeconfig");
/// let router = ServiceSelectorRouter::new(client, "shop", 80).with_target_port(8080);
/// let checkout = ServiceName::new("checkout")?;
/// router.set_preview(&checkout, Slot::Green).await?;
/// router.set_split(&checkout, &TrafficSplit::all_to(Slot::Green)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ServiceSelectorRouter {
    services: Api<Service>,
    namespace: String,
    port: i32,
    target_port: i32,
}

impl std::fmt::Debug for ServiceSelectorRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSelectorRouter")
            .field("namespace", &self.namespace)
            .field("port", &self.port)
            .field("target_port", &self.target_port)
            .finish_non_exhaustive()
    }
}

impl ServiceSelectorRouter {
    /// A router for the Services of `namespace`, which listen on `port` and
    /// forward to the same port of the pods (see
    /// [`with_target_port`](Self::with_target_port)).
    pub fn new(client: kube::Client, namespace: impl Into<String>, port: u16) -> Self {
        let namespace = namespace.into();
        ServiceSelectorRouter {
            services: Api::namespaced(client, &namespace),
            namespace,
            port: i32::from(port),
            target_port: i32::from(port),
        }
    }

    /// The pods' port the Services forward to; defaults to the Service port.
    pub fn with_target_port(mut self, target_port: u16) -> Self {
        self.target_port = i32::from(target_port);
        self
    }

    /// The name of the preview Service of `service`: `<service>-preview`.
    pub fn preview_name(service: &ServiceName) -> String {
        format!("{service}-preview")
    }

    /// The active Service that sends every request of `service` to `slot`,
    /// recording `stable` as the stable slot: what `set_split` applies.
    pub fn active_service(&self, service: &ServiceName, slot: Slot, stable: Slot) -> Service {
        let mut svc = self.slot_service(service.as_str().to_owned(), service, slot);
        svc.metadata.annotations = Some(BTreeMap::from([(
            STABLE_SLOT_ANNOTATION.to_owned(),
            stable.as_str().to_owned(),
        )]));
        svc
    }

    /// The preview Service of `service`, selecting `slot`.
    pub fn preview_service(&self, service: &ServiceName, slot: Slot) -> Service {
        self.slot_service(Self::preview_name(service), service, slot)
    }

    fn slot_service(&self, name: String, service: &ServiceName, slot: Slot) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_owned(),
                    service.as_str().to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([
                    (SERVICE_LABEL.to_owned(), service.as_str().to_owned()),
                    (SLOT_LABEL.to_owned(), slot.as_str().to_owned()),
                ])),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: self.port,
                    target_port: Some(IntOrString::Int(self.target_port)),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Points the preview Service of `service` at `slot` (creating it on
    /// first use), so the release in `slot` can be tested before any user
    /// request reaches it. One write; the active Service is not touched.
    pub async fn set_preview(&self, service: &ServiceName, slot: Slot) -> Result<()> {
        let name = Self::preview_name(service);
        let span = info_span!("k8s.router.service_selector.set_preview", namespace = %self.namespace, name = %name, %slot);
        async {
            let body = self.preview_service(service, slot);
            self.services
                .patch(&name, &apply_params(), &Patch::Apply(&body))
                .await
                .map_err(|e| {
                    map_kube_error(&format!("applying Service {}/{name}", self.namespace), e)
                })?;
            debug!(field_manager = FIELD_MANAGER, "preview Service applied");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The slot a split sends everything to, or the typed refusal.
    fn target_slot(split: &TrafficSplit) -> Result<Slot> {
        if let Some(rule) = split.canary_match() {
            return Err(Error::invalid(
                "canary match",
                format!(
                    "a Service selector cannot route by request ({rule:?}); use the Gateway API, NGINX or Istio router"
                ),
            ));
        }
        match split.canary_weight() {
            Weight::ZERO => Ok(split.stable()),
            Weight::FULL => Ok(split.canary()),
            other => Err(Error::invalid(
                format!("canary weight {other}"),
                "a Service selector sends all traffic to one slot: only 0% or 100% can be set",
            )),
        }
    }
}

#[async_trait]
impl TrafficRouter for ServiceSelectorRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let span = info_span!("k8s.router.service_selector.set_split", namespace = %self.namespace, name = %service, %split);
        async {
            let slot = Self::target_slot(split)?;
            let body = self.active_service(service, slot, split.stable());
            // One apply of the whole Service: the selector flips in one
            // write, so endpoints switch slot together.
            self.services
                .patch(service.as_str(), &apply_params(), &Patch::Apply(&body))
                .await
                .map_err(|e| {
                    map_kube_error(&format!("applying Service {}/{service}", self.namespace), e)
                })?;
            debug!(%slot, "active Service selector applied");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        let span = info_span!("k8s.router.service_selector.split", namespace = %self.namespace, name = %service);
        async {
            let what = format!("Service {}/{service}", self.namespace);
            let Some(svc) = self
                .services
                .get_opt(service.as_str())
                .await
                .map_err(|e| map_kube_error(&format!("reading {what}"), e))?
            else {
                debug!("no active Service");
                return Ok(None);
            };
            let Some(slot) = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.get(SLOT_LABEL))
            else {
                debug!("active Service has no slot selector");
                return Ok(None);
            };
            let slot = parse_slot(slot, &format!("{what} selector {SLOT_LABEL}"))?;
            let stable = match svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STABLE_SLOT_ANNOTATION))
            {
                Some(s) => parse_slot(s, &format!("{what} annotation {STABLE_SLOT_ANNOTATION}"))?,
                None => slot,
            };
            let canary = if stable == slot { 0 } else { 100 };
            Ok(Some(TrafficSplit::new(stable, canary)?))
        }
        .instrument(span)
        .await
    }
}
