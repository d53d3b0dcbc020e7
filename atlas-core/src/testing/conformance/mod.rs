//! Conformance suites: public async checks per trait.
//!
//! One module per adapter trait. Each check is a public async function
//! that takes the adapter (as `&dyn Trait`) plus what the check needs, and
//! **panics with an assertion message** naming the contract rule when the
//! adapter breaks it, like `object_store`'s suites: call them from a
//! `#[tokio::test]`, and a failure reads as a normal test failure. Each
//! module's `all` runs its whole list; an adapter is done when it passes
//! `all` against its real backend.
//!
//! Checks work on services named by [`unique_service`] (a prefix plus a
//! random suffix), so runs against a shared backend never collide. Waits
//! use tokio time, bounded, so the suites run under a paused clock against
//! the mocks and in real time against real backends.
//!
//! ```
//! use atlas_core::testing::{conformance, MemoryStateStore, RecordingRouter};
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! conformance::router::all(&RecordingRouter::new(), "doc").await;
//! conformance::state_store::all(&MemoryStateStore::new(), "doc").await;
//! # });
//! ```

use rand::Rng;

use crate::domain::ServiceName;

pub mod backup_target;
pub mod database_failover;
pub mod failover_store;
pub mod notifier;
pub mod probe;
pub mod region_router;
pub mod router;
pub mod scaler;
pub mod state_store;
pub mod workloads;

/// A service name no other run uses: `prefix`, a dash and 8 random hex
/// digits (the prefix is shortened to keep the name within 63 characters).
///
/// # Panics
///
/// If `prefix` does not start a valid [`ServiceName`] (lowercase letters,
/// digits and `-`, starting with a letter): the suites' caller passed a
/// bad prefix, a bug in the test.
pub fn unique_service(prefix: &str) -> ServiceName {
    let suffix: u32 = rand::rng().random();
    let prefix: String = prefix.trim_end_matches('-').chars().take(54).collect();
    let name = format!("{prefix}-{suffix:08x}");
    match ServiceName::new(name) {
        Ok(n) => n,
        Err(e) => panic!("conformance: bad service prefix {prefix:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_services_differ_and_stay_valid() {
        let a = unique_service("checkout");
        let b = unique_service("checkout");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("checkout-"));
        let long = unique_service(&"a".repeat(80));
        assert_eq!(long.as_str().len(), 63);
    }

    #[test]
    #[should_panic(expected = "bad service prefix")]
    fn bad_prefixes_are_reported() {
        unique_service("Checkout");
    }
}
