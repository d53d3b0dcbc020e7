//! [`DatabaseFailover`]: what a failover controller asks of a replicated
//! database — is the primary reachable, how far behind is the standby, fence
//! the old primary, promote the standby.
//!
//! The order a controller follows is fixed by the contract: it
//! [fences](DatabaseFailover::fence_primary) the old primary *before* it
//! [promotes](DatabaseFailover::promote_standby) the standby, so at no
//! moment can two servers take writes; a promotion without a recorded fence
//! is refused by implementations.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One check of the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryHealth {
    /// A connection was made and a trivial query answered.
    pub reachable: bool,
    /// The server accepts writes (it is not in recovery and not read-only).
    pub writable: bool,
    /// How long the check took.
    pub latency: Duration,
    /// Why it failed, when it did (no secrets: connection strings are not
    /// included).
    pub error: Option<String>,
}

/// How far the standby trails the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// The standby is connected and streaming.
    pub streaming: bool,
    /// The standby confirms commits before the primary acknowledges them
    /// (synchronous replication): a promotion loses no acknowledged
    /// transaction.
    pub synchronous: bool,
    /// WAL the primary has written that the standby has not replayed, in
    /// bytes (`None` when the primary cannot be asked).
    pub lag_bytes: Option<u64>,
    /// The age of the last transaction the standby replayed behind the
    /// primary's, an estimate of the RPO if the primary were lost now
    /// (`None` when unknown).
    pub lag: Option<Duration>,
}

/// Proof that the old primary was fenced: it can no longer take writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Which server was fenced (a name, never a connection string).
    pub node: String,
    /// How: "stopped", "unreachable", "read-only", …
    pub method: String,
    /// When.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
}

/// The result of a promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// Which server is the primary now.
    pub node: String,
    /// Its timeline (PostgreSQL) or epoch, after promotion.
    pub timeline: u64,
    /// A write was made and read back after promotion.
    pub writable: bool,
    /// How long from the promote request until it took writes.
    pub took: Duration,
}

/// A primary/standby database pair a failover controller can switch.
///
/// Implementations: `atlas_storage::postgres` (streaming replication,
/// `pg_promote()`), mocks in tests.
#[async_trait]
pub trait DatabaseFailover: Send + Sync {
    /// Checks the current primary once; an unreachable primary is
    /// `Ok(PrimaryHealth { reachable: false, .. })`, not an error.
    async fn check_primary(&self) -> Result<PrimaryHealth>;

    /// The replication state as the primary (or, when it is gone, the
    /// standby) reports it.
    async fn replication(&self) -> Result<ReplicationStatus>;

    /// Makes sure the old primary can never take writes again, and records
    /// the fence. Idempotent: fencing a fenced or unreachable primary
    /// succeeds and says how.
    async fn fence_primary(&self, reason: &str) -> Result<Fence>;

    /// Promotes the standby and verifies it takes writes. Refused (a
    /// [`Precondition`](crate::Error::Precondition) error) unless the old
    /// primary was fenced first.
    async fn promote_standby(&self) -> Result<Promotion>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn DatabaseFailover>`
/// and `Box<dyn DatabaseFailover>` are DatabaseFailovers too.
macro_rules! forward_databasefailover {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: DatabaseFailover + ?Sized> DatabaseFailover for $ptr<T> {
            async fn check_primary(&self) -> Result<PrimaryHealth> {
                (**self).check_primary().await
            }
            async fn replication(&self) -> Result<ReplicationStatus> {
                (**self).replication().await
            }
            async fn fence_primary(&self, reason: &str) -> Result<Fence> {
                (**self).fence_primary(reason).await
            }
            async fn promote_standby(&self) -> Result<Promotion> {
                (**self).promote_standby().await
            }
        }
    )*};
}
forward_databasefailover!(Arc, Box);
