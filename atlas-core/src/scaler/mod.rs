//! [`Scaler`]: changing how many replicas a live slot runs, without failing
//! a request; and how an autoscaler and the rollout engine share a
//! service's replicas.
//!
//! - [`Scaler::scale_live`] scales a slot that serves traffic. New
//!   replicas get requests only once they are ready; replicas that go are
//!   taken out of the router and finish their requests in flight before
//!   they are stopped. [`scale_behind_router`] does this for any
//!   [`Workloads`](crate::Workloads) whose replicas the router lists one by one (local
//!   processes); platforms whose router finds ready replicas itself
//!   (a Kubernetes Service) scale their own way.
//! - [`apportion`] splits a service-wide replica count between the two
//!   slots by traffic weight, with a floor per slot.
//! - [`DesiredReplicas`] is the handle an autoscaler and the rollout engine
//!   share: the autoscaler publishes the service's desired count, the
//!   engine publishes the floors its strategy needs (the canary's scale),
//!   and both scale slots to the same [`apportion`]ed shares, one at a time
//!   ([`DesiredReplicas::hold`]), so neither undoes the other's work.
//!   [`scale_service`] is the autoscaler's side: it defers while a rollout
//!   step is scaling.

// Imports run one way: contract (the trait), live and share use no other
// scaler module; desired uses contract and share.
mod contract;
mod desired;
mod live;
mod share;

pub use contract::{ReplicaCount, Scaler};
pub use desired::{Applied, DesiredReplicas, ScalingGuard, scale_service};
pub use live::{LiveScale, scale_behind_router};
pub use share::{SlotReplicas, apportion};
