//! The PostgreSQL state store against a real server: the state-store and
//! failover-store conformance suites, two hosts racing for the lease,
//! fencing of a holder whose lease was taken over, and the rollout engine
//! resuming a crashed engine's rollout through the database.
//!
//! Each test creates a database with a random name and drops it after.
//! Run: `cargo xtask test`, or with a server of your own:
//! `ATLAS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5433/postgres
//!  cargo test -p atlas-tests --features postgres --test postgres_state -- --ignored`.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use atlas_core::failover::FailoverStore;
use atlas_core::testing::{MockWorkloads, RecordingRouter, ScriptedProbe, conformance};
use atlas_core::{
    Canary, CanaryStep, Engine, ErrorKind, Outcome, Release, Rollout, ServiceName, Slot,
    StateStore, Strategy, TrafficRouter, TrafficSplit, Weight, Workloads,
};
use atlas_storage::postgres::PostgresStateStore;
use atlas_tests::postgres::{ThrowawayDatabase, admin_url, connect};

/// A throwaway database.
struct Database(ThrowawayDatabase);

impl Database {
    async fn create() -> Self {
        Database(ThrowawayDatabase::create("atlas_state").await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// A store on its own connection, as another host would have.
    async fn store(&self) -> PostgresStateStore {
        PostgresStateStore::builder(self.url())
            .connect()
            .await
            .expect("connect the state store")
    }
}

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn passes_the_state_store_conformance_suite() {
    let db = Database::create().await;
    conformance::state_store::all(&db.store().await, "pgstate").await;

    // A schema-qualified table, created next to the default one.
    connect(&db.url())
        .await
        .batch_execute("CREATE SCHEMA ops")
        .await
        .unwrap();
    let qualified = PostgresStateStore::builder(db.url())
        .with_table("ops.rollouts")
        .connect()
        .await
        .unwrap();
    assert_eq!(qualified.table(), "ops.rollouts");
    conformance::state_store::all(&qualified, "pgstate-ops").await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn passes_the_failover_store_conformance_suite() {
    let db = Database::create().await;
    let store = db.store().await;
    conformance::failover_store::all(&store, "pgfailover").await;
    // Failover state and rollout state of one service are separate rows.
    let svc = service("pgfailover-both");
    store
        .compare_and_swap_failover(&svc, None, &conformance::failover_store::sample_state())
        .await
        .unwrap();
    assert!(store.load(&svc).await.unwrap().is_none());
    store
        .compare_and_swap(&svc, None, &conformance::state_store::sample_state(&svc))
        .await
        .unwrap();
    assert_eq!(
        store.load_failover(&svc).await.unwrap().unwrap().value,
        conformance::failover_store::sample_state()
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_lease_taken_over_fences_the_old_holders_failover_writes() {
    let db = Database::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let svc = service("failover-fenced");
    let ttl = Duration::from_millis(500);
    a.acquire_lease(&svc, "host-a", ttl).await.unwrap();
    let state = conformance::failover_store::sample_state();
    let v1 = a
        .compare_and_swap_failover(&svc, None, &state)
        .await
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    b.acquire_lease(&svc, "host-b", Duration::from_secs(30))
        .await
        .unwrap();
    let mut stale = state.clone();
    stale.activated.clear();
    let write = a
        .compare_and_swap_failover(&svc, Some(v1), &stale)
        .await
        .unwrap_err();
    assert_eq!(write.kind(), ErrorKind::Conflict, "{write}");
    assert!(write.to_string().contains("taken over"), "{write}");
    assert_eq!(b.load_failover(&svc).await.unwrap().unwrap().value, state);
    let v2 = b
        .compare_and_swap_failover(&svc, Some(v1), &stale)
        .await
        .unwrap();
    assert_eq!(v2, v1 + 1);
}

#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn stores_connecting_at_once_create_the_tables_once() {
    let db = Database::create().await;
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let url = db.url();
        connecting.spawn(async move {
            PostgresStateStore::builder(url)
                .with_table("rollouts")
                .connect()
                .await
        });
    }
    for connected in connecting.join_all().await {
        if let Err(e) = connected {
            panic!("a store connecting at the same time as others failed: {e}");
        }
    }
    let tables: Vec<String> = connect(&db.url())
        .await
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["rollouts", "rollouts_failover", "rollouts_lease"]);
}

#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn two_hosts_racing_for_the_lease_one_wins() {
    let db = Database::create().await;
    let (a, b) = (db.store().await, db.store().await);
    for round in 0..20 {
        let svc = service(&format!("race-{round}"));
        let ttl = Duration::from_secs(30);
        let (ra, rb) = tokio::join!(
            a.acquire_lease(&svc, "host-a", ttl),
            b.acquire_lease(&svc, "host-b", ttl)
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (Ok(_), Ok(_)) => panic!("round {round}: both hosts got the lease"),
            (Err(x), Err(y)) => panic!("round {round}: neither host got the lease: {x}; {y}"),
        };
        assert_eq!(loser.kind(), ErrorKind::Conflict, "{loser}");
        assert!(
            loser.to_string().contains(&winner.holder),
            "the loser's conflict must name the winner {}: {loser}",
            winner.holder
        );
        // The winner's lease is live on both connections.
        let other = if winner.holder == "host-a" { &b } else { &a };
        other.renew_lease(&winner).await.unwrap();
        assert_eq!(
            other
                .acquire_lease(&svc, "host-c", ttl)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_lease_taken_over_after_expiry_fences_the_old_holder() {
    let db = Database::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let svc = service("checkout");
    let ttl = Duration::from_millis(500);
    let old = a.acquire_lease(&svc, "host-a", ttl).await.unwrap();
    let state = conformance::state_store::sample_state(&svc);
    let v1 = a.compare_and_swap(&svc, None, &state).await.unwrap();

    // Live: another host is refused.
    let early = b.acquire_lease(&svc, "host-b", ttl).await.unwrap_err();
    assert_eq!(early.kind(), ErrorKind::Conflict, "{early}");

    // Host A stalls past its ttl; host B takes over.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let new = b
        .acquire_lease(&svc, "host-b", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        new.token > old.token,
        "the takeover's fencing token {} must exceed the old {}",
        new.token,
        old.token
    );

    // The old holder's renew and writes are refused, even naming the
    // current version, and change nothing.
    let renew = a.renew_lease(&old).await.unwrap_err();
    assert_eq!(renew.kind(), ErrorKind::Conflict, "{renew}");
    let mut stale = state.clone();
    stale.step = 42;
    let write = a
        .compare_and_swap(&svc, Some(v1), &stale)
        .await
        .unwrap_err();
    assert_eq!(write.kind(), ErrorKind::Conflict, "{write}");
    assert!(write.to_string().contains("taken over"), "{write}");
    let explicit = b
        .compare_and_swap_fenced(&old, &svc, Some(v1), &stale)
        .await
        .unwrap_err();
    assert_eq!(explicit.kind(), ErrorKind::Conflict, "{explicit}");
    let stored = b.load(&svc).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.value), (v1, state.clone()));

    // The new holder writes; the old holder's release frees nothing.
    let mut next = state;
    next.step = 5;
    let v2 = b.compare_and_swap(&svc, Some(v1), &next).await.unwrap();
    assert!(v2 > v1);
    b.compare_and_swap_fenced(&new, &svc, Some(v2), &next)
        .await
        .unwrap();
    a.release_lease(&old).await.unwrap();
    let c = b.acquire_lease(&svc, "host-c", ttl).await.unwrap_err();
    assert!(c.to_string().contains("host-b"), "{c}");

    // A lease for another service is no fence for this one.
    let wrong = b
        .compare_and_swap_fenced(&new, &service("other"), None, &next)
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::InvalidInput, "{wrong}");

    // After the new holder releases, the next grant's token is larger still.
    b.release_lease(&new).await.unwrap();
    let later = a.acquire_lease(&svc, "host-a", ttl).await.unwrap();
    assert!(later.token > new.token);
}

/// `host-a` takes the lease on `svc` with a ttl that has run out by the
/// time this returns, and wrote the sample state under it: the state and
/// its version.
async fn written_under_an_expired_lease(
    a: &PostgresStateStore,
    svc: &ServiceName,
) -> (atlas_core::RolloutState, u64) {
    a.acquire_lease(svc, "host-a", Duration::from_millis(1))
        .await
        .unwrap();
    let state = conformance::state_store::sample_state(svc);
    let version = a.compare_and_swap(svc, None, &state).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    (state, version)
}

/// The old holder writing at the very moment another host takes over:
/// its write either lands before the takeover (and the new holder loads
/// it) or is refused, never after the new holder has read the state, so
/// the new holder's write naming the version it loaded always succeeds.
#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_write_racing_a_takeover_never_lands_behind_the_new_holder() {
    let db = Database::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let (mut landed, mut refused) = (0, 0);
    for round in 0..30 {
        let svc = service(&format!("takeover-{round}"));
        let (state, v1) = written_under_an_expired_lease(&a, &svc).await;
        let mut old = state.clone();
        old.step = 1;
        let mut new = state;
        new.step = 2;
        let (old_write, new_write) =
            tokio::join!(a.compare_and_swap(&svc, Some(v1), &old), async {
                b.acquire_lease(&svc, "host-b", Duration::from_secs(30))
                    .await
                    .unwrap();
                let loaded = b.load(&svc).await.unwrap().unwrap();
                b.compare_and_swap(&svc, Some(loaded.version), &new).await
            });
        if let Err(e) = new_write {
            panic!("round {round}: the new holder's write was refused: {e}");
        }
        match old_write {
            Ok(_) => landed += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
                refused += 1;
            }
        }
        assert_eq!(b.load(&svc).await.unwrap().unwrap().value.step, 2);
    }
    assert_eq!(landed + refused, 30);
}

/// A takeover waits for the old holder's write that is in flight (here
/// held up by another session's lock on the state row), so the new holder
/// loads what that write stored instead of being overtaken by it.
#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_takeover_waits_for_the_old_holders_write_in_flight() {
    let db = Database::create().await;
    let a = Arc::new(db.store().await);
    let b = Arc::new(db.store().await);
    let svc = service("checkout");
    let (state, v1) = written_under_an_expired_lease(&a, &svc).await;

    let mut blocker = connect(&db.url()).await;
    let tx = blocker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM atlas_state WHERE service = $1 FOR UPDATE",
        &[&svc.as_str()],
    )
    .await
    .unwrap();
    let old_write = tokio::spawn({
        let (a, svc, mut old) = (a.clone(), svc.clone(), state.clone());
        old.step = 1;
        async move { a.compare_and_swap(&svc, Some(v1), &old).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let takeover = tokio::spawn({
        let (b, svc, mut new) = (b.clone(), svc.clone(), state);
        new.step = 2;
        async move {
            b.acquire_lease(&svc, "host-b", Duration::from_secs(30))
                .await
                .unwrap();
            let loaded = b.load(&svc).await.unwrap().unwrap();
            b.compare_and_swap(&svc, Some(loaded.version), &new).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !takeover.is_finished(),
        "the takeover must wait for the write in flight"
    );
    tx.commit().await.unwrap();
    let old_write = old_write.await.unwrap();
    let new_write = takeover.await.unwrap();
    assert!(
        old_write.is_ok(),
        "the write in flight lands: {old_write:?}"
    );
    if let Err(e) = new_write {
        panic!("the new holder's write, naming the version it loaded, was refused: {e}");
    }
    assert_eq!(b.load(&svc).await.unwrap().unwrap().value.step, 2);
}

/// A canary that stops at an indefinite pause after its first traffic step.
fn paused_canary(svc: &ServiceName) -> Rollout {
    let mut canary = Canary::new(
        2,
        vec![
            CanaryStep::SetWeight(Weight::new(20).unwrap()),
            CanaryStep::Pause(None),
            CanaryStep::SetWeight(Weight::new(60).unwrap()),
        ],
    );
    canary.scale_down_delay = Duration::from_millis(100);
    Rollout::new(
        svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::Canary(canary),
    )
}

fn engine(
    store: PostgresStateStore,
    workloads: &MockWorkloads,
    router: &RecordingRouter,
    lease_ttl: Duration,
) -> Engine {
    Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(store))
        .lease_ttl(lease_ttl)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
}

/// An engine on one host drives a rollout through PostgreSQL and crashes
/// (its runtime, tasks and connection dropped) at a pause; an engine on
/// another host is refused while the dead one's lease is live, then
/// resumes the rollout where it stopped and finishes it.
#[test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
fn a_second_engine_resumes_a_crashed_engines_rollout() {
    let svc = service("checkout");
    let workloads = MockWorkloads::new();
    let router = RecordingRouter::new();
    let lease_ttl = Duration::from_secs(2);

    let host_a = tokio::runtime::Runtime::new().unwrap();
    let db = host_a.block_on(async {
        let db = Database::create().await;
        workloads
            .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
            .await
            .unwrap();
        router
            .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
            .await
            .unwrap();
        let engine = engine(db.store().await, &workloads, &router, lease_ttl);
        let handle = engine.start(paused_canary(&svc)).await.unwrap();
        let mut watch = handle.watch();
        tokio::time::timeout(
            Duration::from_secs(30),
            watch.wait_for(|s| s.paused && s.weight == Weight::new(20).unwrap()),
        )
        .await
        .expect("the first engine reaches the pause")
        .unwrap();
        db
    });
    // The crash: every task of host A, its engine and its connection die.
    host_a.shutdown_background();
    let mid = router.current(&svc).unwrap();
    assert_eq!(mid.canary_weight(), Weight::new(20).unwrap(), "{mid}");

    let host_b = tokio::runtime::Runtime::new().unwrap();
    host_b.block_on(async {
        let store = db.store().await;
        let stored = store.load(&svc).await.unwrap().expect("state persisted");
        assert!(stored.value.paused && !stored.value.phase.is_terminal());
        let engine = engine(store, &workloads, &router, lease_ttl);
        // While the dead engine's lease is live, it is refused.
        let refused = engine
            .resume(&svc)
            .await
            .expect_err("refused while the lease is live");
        assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
        let started = tokio::time::Instant::now();
        let handle = loop {
            match engine.resume(&svc).await {
                Ok(Some(h)) => break h,
                Ok(None) => panic!("the crashed rollout must be resumable"),
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    assert!(
                        started.elapsed() < lease_ttl + Duration::from_secs(5),
                        "the dead engine's lease never expired: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("resume: {e}"),
            }
        };
        let state = handle.state();
        assert_eq!(
            (state.step, state.weight),
            (stored.value.step, stored.value.weight)
        );
        handle.promote().unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
            .await
            .expect("the resumed rollout finishes")
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Promoted {
                version: "v2".into()
            }
        );
        assert!(router.current(&svc).unwrap().is_all_to(Slot::Green));
        assert_eq!(workloads.version(&svc, Slot::Green).as_deref(), Some("v2"));
        let done = db.store().await.load(&svc).await.unwrap().unwrap();
        assert!(done.value.promoted && done.value.phase.is_terminal());
        assert!(done.version > stored.version);
        // The finished engine released its lease.
        db.store()
            .await
            .acquire_lease(&svc, "someone-else", lease_ttl)
            .await
            .unwrap();
    });
    drop(db);
}

/// A server that closes the store's connection (a restart, a failover, an
/// idle timeout) costs at most one transient error: the store reconnects.
#[tokio::test]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_store_reconnects_after_the_server_closed_its_connection() {
    let db = Database::create().await;
    let store = db.store().await;
    let svc = service("checkout");
    let state = conformance::state_store::sample_state(&svc);
    let v1 = store.compare_and_swap(&svc, None, &state).await.unwrap();
    let killed = connect(&admin_url())
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.0.name()],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "the store has one connection");
    let mut errors = Vec::new();
    let loaded = loop {
        match store.load(&svc).await {
            Ok(v) => break v,
            Err(e) => {
                assert!(e.is_transient(), "a closed connection is transient: {e}");
                errors.push(e.to_string());
                assert!(errors.len() < 2, "the store did not reconnect: {errors:?}");
            }
        }
    };
    assert_eq!(loaded.map(|v| v.version), Some(v1));
}
