//! `MockDatabase` passes the database-failover conformance suite, and the
//! suite catches a database that promotes without a fence.

use async_trait::async_trait;
use atlas_core::Result;
use atlas_core::database::{DatabaseFailover, Fence, PrimaryHealth, Promotion, ReplicationStatus};
use atlas_core::testing::{DatabaseCall, MockDatabase, conformance};

#[tokio::test(start_paused = true)]
async fn mock_database_passes_the_database_failover_suite() {
    let made = std::sync::Mutex::new(Vec::new());
    conformance::database_failover::all(|| async {
        let db = MockDatabase::new();
        made.lock().unwrap().push(db.clone());
        db
    })
    .await;
    let made = made.into_inner().unwrap();
    assert_eq!(made.len(), 3, "a fresh pair per check");
    let last = &made[2];
    assert_eq!(last.count(DatabaseCall::FencePrimary), 2);
    assert_eq!(last.count(DatabaseCall::PromoteStandby), 1);
}

/// Promotes whether or not the old primary was fenced: split brain.
struct PromotesWithoutFence(MockDatabase);

#[async_trait]
impl DatabaseFailover for PromotesWithoutFence {
    async fn check_primary(&self) -> Result<PrimaryHealth> {
        self.0.check_primary().await
    }
    async fn replication(&self) -> Result<ReplicationStatus> {
        self.0.replication().await
    }
    async fn fence_primary(&self, reason: &str) -> Result<Fence> {
        self.0.fence_primary(reason).await
    }
    async fn promote_standby(&self) -> Result<Promotion> {
        if self.0.fence().is_none() {
            self.0.fence_primary("sloppy").await?;
        }
        self.0.promote_standby().await
    }
}

#[tokio::test(start_paused = true)]
async fn the_suite_catches_a_promotion_without_a_fence() {
    let run = tokio::spawn(conformance::database_failover::all(|| async {
        PromotesWithoutFence(MockDatabase::new())
    }));
    let err = run.await.expect_err("the suite must catch it");
    assert!(err.is_panic());
}

#[tokio::test(start_paused = true)]
async fn mock_database_scripts_reachability_and_lag() {
    let db = MockDatabase::with_nodes("pg-a", "pg-b");
    db.set_lag(Some(std::time::Duration::from_secs(4)), Some(8192));
    db.set_synchronous(true);
    let r = db.replication().await.unwrap();
    assert!(r.streaming && r.synchronous);
    assert_eq!(r.lag_bytes, Some(8192));
    db.set_reachable(false);
    let h = db.check_primary().await.unwrap();
    assert!(!h.reachable && !h.writable);
    assert!(h.error.unwrap().contains("pg-a"));
    let f = db.fence_primary("lost").await.unwrap();
    assert_eq!(
        (f.node.as_str(), f.method.as_str()),
        ("pg-a", "unreachable")
    );
    let p = db.promote_standby().await.unwrap();
    assert_eq!((p.node.as_str(), p.timeline), ("pg-b", 2));
    assert_eq!(db.primary(), "pg-b");
    // A repeated promotion answers with the recorded one.
    assert_eq!(db.promote_standby().await.unwrap(), p);
    assert_eq!(
        db.calls(),
        [
            DatabaseCall::Replication,
            DatabaseCall::CheckPrimary,
            DatabaseCall::FencePrimary,
            DatabaseCall::PromoteStandby,
            DatabaseCall::PromoteStandby,
        ]
    );
}
