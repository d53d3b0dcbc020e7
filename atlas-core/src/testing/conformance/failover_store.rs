//! Conformance checks for [`FailoverStore`] adapters.
//!
//! ```
//! # use atlas_core::testing::{conformance, MemoryStateStore};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! conformance::failover_store::all(&MemoryStateStore::new(), "failover-doc").await;
//! # });
//! ```

use std::time::{Duration, SystemTime};

use super::unique_service;
use crate::database::{Fence, Promotion};
use crate::domain::ServiceName;
use crate::error::ErrorKind;
use crate::failover::{FailedRegion, FailoverState, FailoverStore, Transition, TransitionKind};
use crate::region::{RegionName, RegionWeights};

/// Runs every failover store check, each on a fresh service named from
/// `prefix`.
pub async fn all(store: &dyn FailoverStore, prefix: &str) {
    load_of_nothing_is_none(store, &unique_service(prefix)).await;
    create_update_and_stale_writes(store, &unique_service(prefix)).await;
    state_round_trips_every_field(store, &unique_service(prefix)).await;
    services_are_independent(store, &unique_service(prefix), &unique_service(prefix)).await;
}

fn region(name: &str) -> RegionName {
    match RegionName::new(name) {
        Ok(n) => n,
        Err(e) => panic!("conformance: bad region name {name:?}: {e}"),
    }
}

fn normal() -> FailoverState {
    let w = RegionWeights::new([
        (region("us-east"), 40),
        (region("eu-west"), 35),
        (region("ap-south"), 25),
        (region("us-west"), 0),
    ]);
    FailoverState::new(w.expect("valid weights"))
}

/// A failover state with every field set: a failed region, an activated
/// standby, a fence, a promotion, an unfinished transition and a rollout to
/// abort. Stores must round-trip it.
pub fn sample_state() -> FailoverState {
    // Whole seconds: some stores keep timestamps to the microsecond.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let mut s = FailoverState::new(
        RegionWeights::new([
            (region("us-east"), 0),
            (region("eu-west"), 40),
            (region("ap-south"), 28),
            (region("us-west"), 32),
        ])
        .expect("valid weights"),
    );
    s.failed.insert(
        region("us-east"),
        FailedRegion {
            trigger: "3 consecutive failed health checks — ünïcode ✓".into(),
            since: at,
        },
    );
    s.activated.push(region("us-west"));
    s.fence = Some(Fence {
        node: "db-us-east".into(),
        method: "stopped".into(),
        at,
        reason: "primary unreachable for 31 s".into(),
    });
    s.promotion = Some(Promotion {
        node: "db-us-west".into(),
        timeline: 2,
        writable: true,
        took: Duration::from_millis(1_250),
    });
    s.in_progress = Some(Transition {
        kind: TransitionKind::Failover,
        reason: "us-east: 3 consecutive failed health checks".into(),
        started: at,
        database: true,
    });
    s.abort_rollout = Some("checkout-00000000000000aa".into());
    s
}

/// Nothing written: `None`.
pub async fn load_of_nothing_is_none(store: &dyn FailoverStore, svc: &ServiceName) {
    let got = store.load_failover(svc).await.expect("load");
    assert!(
        got.is_none(),
        "failover store: load of an unwritten service must be None, got {got:?}"
    );
}

/// Create at version 1, update to 2; a stale or repeated create conflicts
/// and changes nothing.
pub async fn create_update_and_stale_writes(store: &dyn FailoverStore, svc: &ServiceName) {
    let first = normal();
    let v1 = store
        .compare_and_swap_failover(svc, None, &first)
        .await
        .expect("create");
    assert_eq!(v1, 1, "failover store: the first write is version 1");
    let again = store.compare_and_swap_failover(svc, None, &first).await;
    assert_eq!(
        again.map_err(|e| e.kind()),
        Err(ErrorKind::Conflict),
        "failover store: a create over an existing state must conflict"
    );
    let second = sample_state();
    let v2 = store
        .compare_and_swap_failover(svc, Some(1), &second)
        .await
        .expect("update");
    assert_eq!(v2, 2, "failover store: each write adds 1 to the version");
    let stale = store.compare_and_swap_failover(svc, Some(1), &first).await;
    assert_eq!(
        stale.map_err(|e| e.kind()),
        Err(ErrorKind::Conflict),
        "failover store: a write naming a stale version must conflict"
    );
    let missing = store.compare_and_swap_failover(svc, Some(7), &first).await;
    assert_eq!(
        missing.map_err(|e| e.kind()),
        Err(ErrorKind::Conflict),
        "failover store: a write naming a version never written must conflict"
    );
    let got = store
        .load_failover(svc)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        got.version, 2,
        "failover store: refused writes must not change the version"
    );
    assert_eq!(
        got.value, second,
        "failover store: refused writes must not change the state"
    );
}

/// Every field survives the store.
pub async fn state_round_trips_every_field(store: &dyn FailoverStore, svc: &ServiceName) {
    let s = sample_state();
    store
        .compare_and_swap_failover(svc, None, &s)
        .await
        .expect("create");
    let got = store
        .load_failover(svc)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        got.value, s,
        "failover store: the state must round-trip every field"
    );
}

/// Writes to one service leave another alone.
pub async fn services_are_independent(store: &dyn FailoverStore, a: &ServiceName, b: &ServiceName) {
    store
        .compare_and_swap_failover(a, None, &normal())
        .await
        .expect("create a");
    assert!(
        store.load_failover(b).await.expect("load b").is_none(),
        "failover store: a write to {a} must not create state for {b}"
    );
    let vb = store
        .compare_and_swap_failover(b, None, &sample_state())
        .await
        .expect("create b");
    assert_eq!(vb, 1, "failover store: versions are per service");
    let ga = store
        .load_failover(a)
        .await
        .expect("load a")
        .expect("a stored");
    assert_eq!(
        ga.value,
        normal(),
        "failover store: a write to {b} must not change {a}"
    );
}
