//! How a service's state objects are named and labelled: one ConfigMap and
//! one Lease, both `atlas-rollout-<service>`.

use std::collections::BTreeMap;

use atlas_core::ServiceName;

/// Prefix of the ConfigMap and Lease names: `atlas-rollout-<service>`.
pub const OBJECT_PREFIX: &str = "atlas-rollout-";
/// The name of `service`'s ConfigMap and Lease.
pub fn object_name(service: &ServiceName) -> String {
    format!("{OBJECT_PREFIX}{service}")
}

/// The labels on a service's ConfigMap and Lease.
pub(super) fn labels(service: &ServiceName) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            crate::workloads::LABEL_SERVICE.to_owned(),
            service.to_string(),
        ),
        (
            crate::workloads::LABEL_MANAGED_BY.to_owned(),
            "atlas".to_owned(),
        ),
    ])
}
