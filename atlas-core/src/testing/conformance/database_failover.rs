//! Conformance checks for [`DatabaseFailover`] adapters.
//!
//! The checks fence and promote, so they need a pair of their own: a
//! healthy primary streaming to a standby, thrown away afterwards. [`all`]
//! takes a function that makes one and gives each check a fresh pair.
//!
//! ```
//! # use atlas_core::testing::{conformance, MockDatabase};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! conformance::database_failover::all(|| async { MockDatabase::new() }).await;
//! # });
//! ```

use std::future::Future;

use crate::database::DatabaseFailover;
use crate::error::ErrorKind;

/// Runs every check, each on a pair from `fresh_pair`.
pub async fn all<D, F, Fut>(mut fresh_pair: F)
where
    D: DatabaseFailover,
    F: FnMut() -> Fut,
    Fut: Future<Output = D>,
{
    a_healthy_primary_is_reachable_and_writable(&fresh_pair().await).await;
    promotion_without_a_fence_is_refused(&fresh_pair().await).await;
    fence_then_promote(&fresh_pair().await).await;
}

/// A fresh pair: the primary answers and takes writes; replication can be
/// asked about.
pub async fn a_healthy_primary_is_reachable_and_writable(db: &dyn DatabaseFailover) {
    let h = db.check_primary().await.expect("check_primary");
    assert!(
        h.reachable && h.writable,
        "database failover: a fresh primary must be reachable and writable, got {h:?}"
    );
    assert!(
        h.error.is_none(),
        "database failover: a healthy check must carry no error, got {:?}",
        h.error
    );
    let r = db.replication().await.expect("replication");
    assert!(
        r.streaming,
        "database failover: a fresh pair's standby must be streaming, got {r:?}"
    );
}

/// Promoting before a fence is a `Precondition` error and changes nothing.
pub async fn promotion_without_a_fence_is_refused(db: &dyn DatabaseFailover) {
    let refused = db.promote_standby().await;
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(ErrorKind::Precondition),
        "database failover: promoting without a fence must be refused with a precondition error"
    );
    let h = db.check_primary().await.expect("check_primary");
    assert!(
        h.reachable && h.writable,
        "database failover: a refused promotion must leave the primary as it was, got {h:?}"
    );
}

/// Fence (twice: idempotent), the old primary takes no writes, promote,
/// the new primary takes writes.
pub async fn fence_then_promote(db: &dyn DatabaseFailover) {
    let fence = db
        .fence_primary("conformance: fence then promote")
        .await
        .expect("fence_primary");
    assert!(
        !fence.node.is_empty() && !fence.method.is_empty(),
        "database failover: a fence must name the node and the method, got {fence:?}"
    );
    assert_eq!(
        fence.reason, "conformance: fence then promote",
        "database failover: a fence must record its reason"
    );
    let again = db
        .fence_primary("conformance: fence again")
        .await
        .expect("database failover: fencing a fenced primary must succeed");
    assert_eq!(
        again.node, fence.node,
        "database failover: fencing again must fence the same node"
    );
    let h = db.check_primary().await.expect("check_primary");
    assert!(
        !h.writable,
        "database failover: a fenced primary must take no writes, got {h:?}"
    );
    let promotion = db.promote_standby().await.expect("promote_standby");
    assert!(
        promotion.writable,
        "database failover: a promotion must verify a write, got {promotion:?}"
    );
    assert_ne!(
        promotion.node, fence.node,
        "database failover: the promoted node must not be the fenced one"
    );
    let h = db.check_primary().await.expect("check_primary");
    assert!(
        h.reachable && h.writable,
        "database failover: after promotion the primary must take writes, got {h:?}"
    );
}
