//! Traffic routers: [`atlas_core::TrafficRouter`] on the routing layers
//! Kubernetes teams run.
//!
//! | router | objects it writes | weights | canary match |
//! |---|---|---|---|
//! | [`ServiceSelectorRouter`] | the active Service's selector | 0 or 100 % only | none |
//! | [`GatewayApiRouter`] | one `HTTPRoute` | any | header |
//! | [`NginxIngressRouter`] | the canary Ingress (and the main Ingress when the stable slot changes) | any | header; cookie with the value `always` |
//! | `IstioRouter` (feature `istio`) | one `VirtualService` (and its `DestinationRule` once) | any | header, cookie |
//!
//! Every router names its objects after the [`ServiceName`](atlas_core::ServiceName): the Services
//! that select one slot's pods are `<service>-blue` and `<service>-green`,
//! and the pods of a slot carry the labels [`SERVICE_LABEL`]` = <service>`
//! and [`SLOT_LABEL`]` = blue|green`. A split is stored in the routing
//! objects themselves and read back from them, so a restarted controller
//! sees what requests follow now. None of them needs
//! [`TrafficRouter::set_endpoints`](atlas_core::TrafficRouter::set_endpoints):
//! Kubernetes Services find their pods by label, so the default, which does
//! nothing, is right.
//!
//! Writes are server-side apply with field manager [`FIELD_MANAGER`],
//! forced, so Atlas takes over the fields it routes by even when a person
//! set them by hand; the NGINX canary Ingress is updated with a JSON merge
//! patch once it exists, as that router's documentation explains.

mod gateway_api;
#[cfg(feature = "istio")]
mod istio;
mod nginx_ingress;
mod service_selector;
mod slots;

pub use gateway_api::{GatewayApiRouter, GatewayParent};
#[cfg(feature = "istio")]
pub use istio::{IstioRouter, destination_rule_resource, virtual_service_resource};
pub use nginx_ingress::NginxIngressRouter;
pub use service_selector::ServiceSelectorRouter;
pub use slots::{
    FIELD_MANAGER, SERVICE_LABEL, SLOT_LABEL, STABLE_SLOT_ANNOTATION, slot_service_name,
};
