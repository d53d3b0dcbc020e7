//! How the routers name slots and write: the labels and annotations they
//! share, slot Service names, the field manager, and weight arithmetic.

use atlas_core::{Error, Result, ServiceName, Slot};
use kube::api::PatchParams;

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
pub(super) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Parses `"blue"` / `"green"`, naming `what` when it is neither.
pub(super) fn parse_slot(value: &str, what: &str) -> Result<Slot> {
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
pub(super) fn slot_of_service_name(service: &ServiceName, name: &str, what: &str) -> Result<Slot> {
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
pub(super) fn percent_of(part: i64, total: i64, what: &str) -> Result<u8> {
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
