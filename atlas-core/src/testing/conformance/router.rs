//! Conformance checks for [`TrafficRouter`] adapters.
//!
//! ```
//! # use atlas_core::testing::{conformance, RecordingRouter};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! conformance::router::all(&RecordingRouter::new(), "router-doc").await;
//! # });
//! ```

use std::net::SocketAddr;

use super::unique_service;
use crate::domain::{Endpoint, RequestMatch, ServiceName, Slot, TrafficSplit};
use crate::error::ErrorKind;
use crate::router::TrafficRouter;

/// Runs every router check, each on a fresh service named from `prefix`.
pub async fn all(router: &dyn TrafficRouter, prefix: &str) {
    weights_out_of_range_are_refused();
    unset_split_is_none(router, &unique_service(prefix)).await;
    split_round_trips(router, &unique_service(prefix)).await;
    canary_match_round_trips(router, &unique_service(prefix)).await;
    concurrent_splits_never_mix(router, &unique_service(prefix)).await;
    endpoints_then_split(router, &unique_service(prefix)).await;
    services_are_independent(router, &unique_service(prefix), &unique_service(prefix)).await;
}

/// Runs every check that applies to a router serving exactly one service,
/// such as Atlas's own proxy: `make(service)` builds a fresh router for
/// `service`, one per check. In place of the independence of two services,
/// it checks that a service the router does not serve is refused with a
/// not-found error rather than silently accepted.
pub async fn all_single_service<R, F, Fut>(prefix: &str, mut make: F)
where
    R: TrafficRouter,
    F: FnMut(ServiceName) -> Fut,
    Fut: Future<Output = R>,
{
    weights_out_of_range_are_refused();
    let svc = unique_service(prefix);
    unset_split_is_none(&make(svc.clone()).await, &svc).await;
    let svc = unique_service(prefix);
    split_round_trips(&make(svc.clone()).await, &svc).await;
    let svc = unique_service(prefix);
    canary_match_round_trips(&make(svc.clone()).await, &svc).await;
    let svc = unique_service(prefix);
    concurrent_splits_never_mix(&make(svc.clone()).await, &svc).await;
    let svc = unique_service(prefix);
    endpoints_then_split(&make(svc.clone()).await, &svc).await;
    let svc = unique_service(prefix);
    other_services_are_refused(&make(svc.clone()).await, &unique_service(prefix)).await;
}

/// A single-service router refuses calls for `other`, a service it does
/// not serve, with a not-found error.
pub async fn other_services_are_refused(router: &dyn TrafficRouter, other: &ServiceName) {
    let split = TrafficSplit::new(Slot::Blue, 10).expect("valid split");
    let err = router
        .set_split(other, &split)
        .await
        .expect_err("set_split for a service the router does not serve must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "set_split of another service: {err}"
    );
    let err = router
        .split(other)
        .await
        .expect_err("split() for a service the router does not serve must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "split() of another service: {err}"
    );
}

/// Weights above 100 cannot reach a router: [`TrafficSplit::new`] refuses
/// them with an invalid-input error, and so does deserializing one.
pub fn weights_out_of_range_are_refused() {
    let err = TrafficSplit::new(Slot::Blue, 101)
        .expect_err("TrafficSplit::new(_, 101) must be refused: weights are 0 to 100");
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "weight 101 must be an invalid-input error, got {err}"
    );
    let json = r#"{"stable":"blue","canary_weight":150}"#;
    assert!(
        serde_json::from_str::<TrafficSplit>(json).is_err(),
        "a split with canary weight 150 must not deserialize"
    );
    let ok = r#"{"stable":"blue","canary_weight":100}"#;
    assert!(
        serde_json::from_str::<TrafficSplit>(ok).is_ok(),
        "a split with canary weight 100 must deserialize"
    );
}

/// `split` of a service no split was ever set for is `None`.
pub async fn unset_split_is_none(router: &dyn TrafficRouter, service: &ServiceName) {
    let got = router
        .split(service)
        .await
        .unwrap_or_else(|e| panic!("split({service}) of a never-set service failed: {e}"));
    assert_eq!(
        got, None,
        "split({service}) must be None before any set_split"
    );
}

/// The split set is the split read back, every time it changes.
pub async fn split_round_trips(router: &dyn TrafficRouter, service: &ServiceName) {
    let splits = [
        TrafficSplit::all_to(Slot::Blue),
        split(Slot::Blue, 5),
        split(Slot::Blue, 50),
        split(Slot::Green, 25),
        TrafficSplit::all_to(Slot::Green),
        split(Slot::Blue, 100),
    ];
    for s in splits {
        set(router, service, &s).await;
        assert_eq!(
            read(router, service).await,
            Some(s.clone()),
            "after set_split({service}, {s}) the split read back must be the same"
        );
    }
}

/// A canary match rule (header or cookie) survives the round trip, and
/// setting a split without one clears it.
pub async fn canary_match_round_trips(router: &dyn TrafficRouter, service: &ServiceName) {
    let header = split(Slot::Blue, 10).with_canary_match(RequestMatch::Header {
        name: "x-canary".into(),
        value: "always".into(),
    });
    let cookie = TrafficSplit::all_to(Slot::Green).with_canary_match(RequestMatch::Cookie {
        name: "beta".into(),
        value: "1".into(),
    });
    for s in [header, cookie] {
        set(router, service, &s).await;
        let got = read(router, service).await;
        assert_eq!(
            got.as_ref().and_then(TrafficSplit::canary_match),
            s.canary_match(),
            "the canary match rule of {s} must survive set_split/split"
        );
        assert_eq!(
            got,
            Some(s),
            "the split with a match rule must read back whole"
        );
    }
    let plain = split(Slot::Green, 30);
    set(router, service, &plain).await;
    assert_eq!(
        read(router, service).await,
        Some(plain),
        "a split without a match rule must clear the previous rule"
    );
}

/// Concurrent `set_split` calls end in exactly one of the splits set,
/// never a mix of two (weights of one, stable slot or match rule of
/// another).
pub async fn concurrent_splits_never_mix(router: &dyn TrafficRouter, service: &ServiceName) {
    let candidates: Vec<TrafficSplit> = (0..16u8)
        .map(|i| {
            let stable = if i % 2 == 0 { Slot::Blue } else { Slot::Green };
            let s = split(stable, i * 6);
            if i % 3 == 0 {
                s.with_canary_match(RequestMatch::Header {
                    name: "x-canary".into(),
                    value: format!("v{i}"),
                })
            } else {
                s
            }
        })
        .collect();
    for round in 0..4 {
        let calls = candidates.iter().map(|s| router.set_split(service, s));
        for (i, r) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = r {
                panic!("concurrent set_split #{i} of {service} failed: {e}");
            }
        }
        let got = read(router, service).await.unwrap_or_else(|| {
            panic!("after concurrent set_split calls, split({service}) is None")
        });
        assert!(
            candidates.contains(&got),
            "round {round}: after concurrent set_split calls the split must be one of those set, got a mix: {got} (match {:?})",
            got.canary_match()
        );
    }
}

/// `set_endpoints` for both slots, then `set_split`, works and the split
/// reads back; emptying a slot's endpoints works too.
pub async fn endpoints_then_split(router: &dyn TrafficRouter, service: &ServiceName) {
    let eps = |slot: Slot, base: u16| -> Vec<Endpoint> {
        (0..2)
            .map(|i| {
                Endpoint::new(
                    format!("{service}-{slot}-{i}"),
                    SocketAddr::from(([127, 0, 0, 1], base + i)),
                )
            })
            .collect()
    };
    for (slot, base) in [(Slot::Blue, 29_100), (Slot::Green, 29_200)] {
        router
            .set_endpoints(service, slot, &eps(slot, base))
            .await
            .unwrap_or_else(|e| panic!("set_endpoints({service}, {slot}) failed: {e}"));
    }
    let s = split(Slot::Blue, 20);
    set(router, service, &s).await;
    assert_eq!(
        read(router, service).await,
        Some(s),
        "a split set after set_endpoints must read back"
    );
    let back = TrafficSplit::all_to(Slot::Blue);
    set(router, service, &back).await;
    router
        .set_endpoints(service, Slot::Green, &[])
        .await
        .unwrap_or_else(|e| panic!("set_endpoints({service}, green, []) failed: {e}"));
    assert_eq!(
        read(router, service).await,
        Some(back),
        "emptying the idle slot's endpoints must not change the split"
    );
}

/// Splits of two services do not affect each other.
pub async fn services_are_independent(
    router: &dyn TrafficRouter,
    first: &ServiceName,
    second: &ServiceName,
) {
    let a = split(Slot::Blue, 40);
    let b = TrafficSplit::all_to(Slot::Green);
    set(router, first, &a).await;
    set(router, second, &b).await;
    assert_eq!(
        read(router, first).await,
        Some(a),
        "setting {second}'s split must not change {first}'s"
    );
    assert_eq!(read(router, second).await, Some(b));
}

fn split(stable: Slot, canary: u8) -> TrafficSplit {
    TrafficSplit::new(stable, canary).unwrap_or_else(|e| panic!("weight {canary}: {e}"))
}

async fn set(router: &dyn TrafficRouter, service: &ServiceName, split: &TrafficSplit) {
    router
        .set_split(service, split)
        .await
        .unwrap_or_else(|e| panic!("set_split({service}, {split}) failed: {e}"));
}

async fn read(router: &dyn TrafficRouter, service: &ServiceName) -> Option<TrafficSplit> {
    router
        .split(service)
        .await
        .unwrap_or_else(|e| panic!("split({service}) failed: {e}"))
}
