//! [`KubeStateStore`]: rollout state in a ConfigMap per service, and the
//! single-driver lease on a `coordination.k8s.io/v1` Lease per service.
//!
//! ## Rollout state
//!
//! The ConfigMap `atlas-rollout-<service>` holds three data keys:
//! `state.json` (the [`RolloutState`](atlas_core::RolloutState) as JSON), `version` (Atlas's own
//! write counter, the [`Versioned::version`](atlas_core::Versioned::version) the trait speaks of: 1 on
//! create, +1 on every write) and `format` (the layout's major version,
//! `1`; a newer major is refused with both versions named).
//!
//! The trait's versions are plain increasing numbers, which a
//! `resourceVersion` is not (it is opaque and must not be compared), so
//! the counter is stored next to the state. The compare-and-swap itself
//! still rests on `resourceVersion`: a write reads the ConfigMap, checks
//! the counter against the expected version, and replaces the ConfigMap
//! with the `resourceVersion` it read, so a write in between makes the
//! API server answer 409, which becomes [`Error::Conflict`](atlas_core::Error::Conflict). A create is
//! a plain create; an existing ConfigMap makes it a 409 as well.
//!
//! ## Lease
//!
//! The Lease `atlas-rollout-<service>` records the holder in `holderIdentity`, the ttl in
//! `leaseDurationSeconds` (rounded up to whole seconds), and the fencing
//! token in `leaseTransitions`, which grows by one each time the lease
//! passes to a holder (after a release or an expiry). Every change is a
//! create or a replace carrying the `resourceVersion` read, so of two
//! engines racing for a lease one gets a 409, i.e. a [`Error::Conflict`](atlas_core::Error::Conflict).
//!
//! ### Lease expiry
//!
//! Whether another holder's lease expired is judged only by what this
//! process saw: the moment it last saw the Lease change (its
//! `resourceVersion`), on the local monotonic clock, plus
//! `leaseDurationSeconds`. The `renewTime` written by another machine is
//! never compared with the local wall clock, so clock skew between
//! machines cannot hand out a live lease. The price: a process that sees a
//! Lease for the first time waits a whole duration before taking it over.
//! A release clears `holderIdentity` and keeps the Lease, so the token
//! keeps growing.

mod lease;
mod objects;
mod store;

pub use objects::{OBJECT_PREFIX, object_name};
pub use store::{FORMAT, KEY_FORMAT, KEY_STATE, KEY_VERSION, KubeStateStore};
