//! Conformance checks for [`Notifier`] adapters.
//!
//! A notifier's receiving side is outside Atlas, so the checks assert
//! delivery succeeds; an adapter's own tests check what arrived.
//!
//! ```
//! # use atlas_core::testing::{conformance, CollectingNotifier};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! conformance::notifier::all(&CollectingNotifier::new(), "notify-doc").await;
//! # });
//! ```

use crate::domain::ServiceName;
use crate::notify::{Notification, Notifier, Severity};

use super::unique_service;

/// Runs every notifier check, each on a fresh service named from `prefix`.
pub async fn all(notifier: &dyn Notifier, prefix: &str) {
    delivers_a_notification(notifier, &unique_service(prefix)).await;
    delivers_every_severity_and_resolution(notifier, &unique_service(prefix)).await;
}

/// Delivering a labelled notification succeeds.
pub async fn delivers_a_notification(notifier: &dyn Notifier, service: &ServiceName) {
    let n = Notification::new(
        Severity::Critical,
        format!("{service}: rolled back v2 (analysis error-rate failed)"),
    )
    .with_label("service", service.as_str())
    .with_label("rollout", format!("{service}-0001"));
    deliver(notifier, &n).await;
}

/// Every severity, firing and resolved, is delivered.
pub async fn delivers_every_severity_and_resolution(
    notifier: &dyn Notifier,
    service: &ServiceName,
) {
    for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
        for resolved in [false, true] {
            let mut n = Notification::new(severity, format!("{service}: conformance {severity}"))
                .with_label("service", service.as_str())
                .with_label("alertname", "AtlasConformance");
            n.resolved = resolved;
            deliver(notifier, &n).await;
        }
    }
}

async fn deliver(notifier: &dyn Notifier, n: &Notification) {
    if let Err(e) = notifier.notify(n).await {
        panic!(
            "delivering {} notification {:?} (resolved: {}) failed: {e}",
            n.severity, n.summary, n.resolved
        );
    }
}
