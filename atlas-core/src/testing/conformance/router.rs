//! Conformance checks for [`TrafficRouter`] adapters.
//!
//! Routers differ in what they can express: a Kubernetes Service selector
//! moves all traffic at once, an HTTPRoute has no cookie match, ingress-nginx
//! matches a cookie only on the value `always`. A router declares that in a
//! [`SuiteConfig`] and calls [`all_with`]: every check then runs in the form
//! the router supports, and what it cannot do is checked to be *refused*
//! with an invalid-input error, never silently accepted or skipped.
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

/// Which traffic weights a router can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightSupport {
    /// Any canary weight from 0 to 100 (the default).
    #[default]
    Any,
    /// Only 0 and 100: all traffic moves at once. Other weights must be
    /// refused with an invalid-input error.
    AllOrNothing,
}

/// Which canary match rules a router can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatchSupport {
    /// Header and cookie matches with any value (the default).
    #[default]
    Any,
    /// Header matches, and cookie matches only on the value `always`
    /// (ingress-nginx); other cookie values must be refused.
    CookieAlwaysOnly,
    /// Header matches only; cookie matches must be refused.
    HeaderOnly,
    /// No match rules; any must be refused.
    None,
}

/// What a router can express, for [`all_with`]. The default is everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SuiteConfig {
    /// The weights it can set.
    pub weights: WeightSupport,
    /// The match rules it can set.
    pub matches: MatchSupport,
}

impl SuiteConfig {
    /// Everything supported.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares the weights the router can set.
    pub fn with_weights(mut self, weights: WeightSupport) -> Self {
        self.weights = weights;
        self
    }

    /// Declares the match rules the router can set.
    pub fn with_matches(mut self, matches: MatchSupport) -> Self {
        self.matches = matches;
        self
    }

    /// A split of `canary` % away from `stable`, as close as the router
    /// can express: an all-or-nothing router gets 0 below 50 and 100 from
    /// 50 on.
    fn split(&self, stable: Slot, canary: u8) -> TrafficSplit {
        match self.weights {
            WeightSupport::Any => split(stable, canary),
            WeightSupport::AllOrNothing => split(stable, if canary < 50 { 0 } else { 100 }),
        }
    }
}

/// Runs every router check, each on a fresh service named from `prefix`,
/// for a router that supports everything.
pub async fn all(router: &dyn TrafficRouter, prefix: &str) {
    all_with(router, prefix, &SuiteConfig::new()).await;
}

/// Runs every router check for a router with the abilities `config`
/// declares; what it lacks is checked to be refused.
pub async fn all_with(router: &dyn TrafficRouter, prefix: &str, config: &SuiteConfig) {
    weights_out_of_range_are_refused();
    unset_split_is_none(router, &unique_service(prefix)).await;
    split_round_trips_with(router, &unique_service(prefix), config).await;
    unsupported_weights_are_refused(router, &unique_service(prefix), config).await;
    canary_match_round_trips_with(router, &unique_service(prefix), config).await;
    concurrent_splits_never_mix_with(router, &unique_service(prefix), config).await;
    endpoints_then_split_with(router, &unique_service(prefix), config).await;
    services_are_independent_with(
        router,
        &unique_service(prefix),
        &unique_service(prefix),
        config,
    )
    .await;
}

/// An all-or-nothing router refuses a partial weight with an invalid-input
/// error and keeps the split it had; a router of any weight has nothing to
/// refuse.
pub async fn unsupported_weights_are_refused(
    router: &dyn TrafficRouter,
    service: &ServiceName,
    config: &SuiteConfig,
) {
    if config.weights == WeightSupport::Any {
        return;
    }
    let before = TrafficSplit::all_to(Slot::Blue);
    set(router, service, &before).await;
    for canary in [5, 25, 50, 75] {
        let err = router
            .set_split(service, &split(Slot::Blue, canary))
            .await
            .expect_err("an all-or-nothing router must refuse a partial weight");
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidInput,
            "weight {canary}: {err}"
        );
    }
    assert_eq!(
        read(router, service).await,
        Some(before),
        "a refused split must leave the split as it was"
    );
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
    split_round_trips_with(router, service, &SuiteConfig::new()).await;
}

/// [`split_round_trips`] with the weights `config` declares.
pub async fn split_round_trips_with(
    router: &dyn TrafficRouter,
    service: &ServiceName,
    config: &SuiteConfig,
) {
    let splits = [
        TrafficSplit::all_to(Slot::Blue),
        config.split(Slot::Blue, 5),
        config.split(Slot::Blue, 50),
        config.split(Slot::Green, 25),
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
    canary_match_round_trips_with(router, service, &SuiteConfig::new()).await;
}

/// [`canary_match_round_trips`] with the rules `config` declares; the rules
/// it lacks must be refused with an invalid-input error.
pub async fn canary_match_round_trips_with(
    router: &dyn TrafficRouter,
    service: &ServiceName,
    config: &SuiteConfig,
) {
    let header = config
        .split(Slot::Blue, 10)
        .with_canary_match(RequestMatch::Header {
            name: "x-canary".into(),
            value: "always".into(),
        });
    let cookie = |value: &str| {
        TrafficSplit::all_to(Slot::Green).with_canary_match(RequestMatch::Cookie {
            name: "beta".into(),
            value: value.into(),
        })
    };
    let (supported, refused): (Vec<TrafficSplit>, Vec<TrafficSplit>) = match config.matches {
        MatchSupport::Any => (vec![header, cookie("1")], vec![]),
        MatchSupport::CookieAlwaysOnly => (vec![header, cookie("always")], vec![cookie("1")]),
        MatchSupport::HeaderOnly => (vec![header], vec![cookie("1")]),
        MatchSupport::None => (vec![], vec![header, cookie("1")]),
    };
    for s in refused {
        let err = router
            .set_split(service, &s)
            .await
            .expect_err("a match rule the router declares it lacks must be refused");
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidInput,
            "refusing {s} ({:?}): {err}",
            s.canary_match()
        );
    }
    for s in supported {
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
    let plain = config.split(Slot::Green, 30);
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
    concurrent_splits_never_mix_with(router, service, &SuiteConfig::new()).await;
}

/// [`concurrent_splits_never_mix`] with the weights and rules `config`
/// declares.
pub async fn concurrent_splits_never_mix_with(
    router: &dyn TrafficRouter,
    service: &ServiceName,
    config: &SuiteConfig,
) {
    let mut candidates: Vec<TrafficSplit> = (0..16u8)
        .map(|i| {
            let stable = if i % 2 == 0 { Slot::Blue } else { Slot::Green };
            let s = config.split(stable, i * 6);
            if i % 3 == 0 && config.matches != MatchSupport::None {
                s.with_canary_match(RequestMatch::Header {
                    name: "x-canary".into(),
                    value: format!("v{i}"),
                })
            } else {
                s
            }
        })
        .collect();
    candidates.dedup();
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
    endpoints_then_split_with(router, service, &SuiteConfig::new()).await;
}

/// [`endpoints_then_split`] with the weights `config` declares.
pub async fn endpoints_then_split_with(
    router: &dyn TrafficRouter,
    service: &ServiceName,
    config: &SuiteConfig,
) {
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
    // 20 % where weights are free; all of it on green otherwise, so the
    // return to blue below is a change either way.
    let s = match config.weights {
        WeightSupport::Any => split(Slot::Blue, 20),
        WeightSupport::AllOrNothing => split(Slot::Blue, 100),
    };
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
    services_are_independent_with(router, first, second, &SuiteConfig::new()).await;
}

/// [`services_are_independent`] with the weights `config` declares.
pub async fn services_are_independent_with(
    router: &dyn TrafficRouter,
    first: &ServiceName,
    second: &ServiceName,
    config: &SuiteConfig,
) {
    let a = config.split(Slot::Blue, 40);
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
