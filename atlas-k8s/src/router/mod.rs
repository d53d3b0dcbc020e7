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
//! Every router names its objects after the [`ServiceName`]: the Services
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

use atlas_core::{Error, Result, ServiceName, Slot};
use kube::api::PatchParams;

mod gateway_api;
#[cfg(feature = "istio")]
mod istio;
mod nginx_ingress;
mod service_selector;

pub use gateway_api::{GatewayApiRouter, GatewayParent};
#[cfg(feature = "istio")]
pub use istio::{IstioRouter, destination_rule_resource, virtual_service_resource};
pub use nginx_ingress::NginxIngressRouter;
pub use service_selector::ServiceSelectorRouter;

/// The field manager of every write the routers make.
pub const FIELD_MANAGER: &str = "atlas";

/// The pod label naming the slot a pod runs in (`blue` or `green`).
pub const SLOT_LABEL: &str = "atlas.dev/slot";

/// The pod label naming the Atlas service a pod belongs to.
pub const SERVICE_LABEL: &str = "atlas.dev/service";

/// The annotation that records which slot is stable where the routing
/// object alone cannot tell (a Service selecting one slot says where
/// traffic goes, not whether it got there as a 0 % or a 100 % canary).
pub const STABLE_SLOT_ANNOTATION: &str = "atlas.dev/stable-slot";

/// The name of the Service that selects only `slot`'s pods of `service`:
/// `<service>-blue` or `<service>-green`.
pub fn slot_service_name(service: &ServiceName, slot: Slot) -> String {
    format!("{service}-{slot}")
}

/// Server-side apply as [`FIELD_MANAGER`], forced.
fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Parses `"blue"` / `"green"`, naming `what` when it is neither.
fn parse_slot(value: &str, what: &str) -> Result<Slot> {
    match value {
        "blue" => Ok(Slot::Blue),
        "green" => Ok(Slot::Green),
        other => Err(Error::invalid(
            what.to_owned(),
            format!("must be \"blue\" or \"green\", got {other:?}"),
        )),
    }
}

/// The slot a `<service>-<slot>` Service name points at.
fn slot_of_service_name(service: &ServiceName, name: &str, what: &str) -> Result<Slot> {
    let slot = name
        .strip_prefix(service.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(name);
    parse_slot(slot, what).map_err(|_| {
        Error::invalid(
            what.to_owned(),
            format!("must name {service}-blue or {service}-green, got {name:?}"),
        )
    })
}

/// `part` of `total` as a whole percentage (rounded to the nearest), or an
/// error naming `what` when the total sends no traffic at all.
fn percent_of(part: i64, total: i64, what: &str) -> Result<u8> {
    if total <= 0 || part < 0 || part > total {
        return Err(Error::invalid(
            what.to_owned(),
            format!("weights {part} of {total} do not describe a split"),
        ));
    }
    let percent = (part * 100 + total / 2) / total;
    u8::try_from(percent).map_err(|_| {
        Error::invalid(
            what.to_owned(),
            format!("weights {part} of {total} do not describe a split"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_and_refuse_empty_totals() {
        assert_eq!(percent_of(5, 100, "w").unwrap(), 5);
        assert_eq!(percent_of(1, 3, "w").unwrap(), 33);
        assert_eq!(percent_of(2, 3, "w").unwrap(), 67);
        assert_eq!(percent_of(0, 7, "w").unwrap(), 0);
        assert!(percent_of(0, 0, "w").is_err());
        assert!(percent_of(5, 4, "w").is_err());
    }

    #[test]
    fn slot_services_parse_back() {
        let svc = ServiceName::new("checkout").unwrap();
        for slot in [Slot::Blue, Slot::Green] {
            let name = slot_service_name(&svc, slot);
            assert_eq!(slot_of_service_name(&svc, &name, "x").unwrap(), slot);
        }
        assert!(slot_of_service_name(&svc, "checkout-red", "x").is_err());
        assert!(parse_slot("Blue", "x").is_err());
    }
}
