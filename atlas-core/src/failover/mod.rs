//! Multi-region failover: the state a failover controller persists and the
//! [`FailoverStore`] it persists it in.

mod store;

pub use store::{FailedRegion, FailoverState, FailoverStore};
