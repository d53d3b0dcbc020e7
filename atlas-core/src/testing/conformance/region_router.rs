//! Conformance checks for [`RegionRouter`] adapters.
//!
//! The router under test must know the regions passed to [`all`] (at least
//! two); the checks set weights over them and read them back.
//!
//! ```
//! # use atlas_core::region::RegionName;
//! # use atlas_core::testing::{conformance, RecordingRegionRouter};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let regions = [RegionName::new("us").unwrap(), RegionName::new("eu").unwrap()];
//! let router = RecordingRegionRouter::with_regions(regions.clone());
//! conformance::region_router::all(&router, "regions-doc", &regions).await;
//! # });
//! ```

use super::unique_service;
use crate::domain::ServiceName;
use crate::error::ErrorKind;
use crate::region::{RegionName, RegionRouter, RegionWeights};

/// Runs every region router check, each on a fresh service named from
/// `prefix`, over `regions` (at least two the router knows).
///
/// # Panics
///
/// When the router breaks the contract, or fewer than two regions are given.
pub async fn all(router: &dyn RegionRouter, prefix: &str, regions: &[RegionName]) {
    assert!(
        regions.len() >= 2,
        "region router suite: give at least two regions"
    );
    nothing_set_is_none(router, &unique_service(prefix)).await;
    weights_read_back(router, &unique_service(prefix), regions).await;
    all_to_one_then_back(router, &unique_service(prefix), regions).await;
    unknown_region_is_refused_and_changes_nothing(router, &unique_service(prefix), regions).await;
    services_are_independent(
        router,
        &unique_service(prefix),
        &unique_service(prefix),
        regions,
    )
    .await;
    setting_the_same_weights_twice_is_idempotent(router, &unique_service(prefix), regions).await;
}

/// Runs the checks on one service, for a router that serves exactly one
/// (Atlas's proxy): `service` must have had no weights set. Instead of
/// the independence of two services, another service must be refused with
/// a not-found error.
///
/// # Panics
///
/// When the router breaks the contract, or fewer than two regions are given.
pub async fn all_single_service(
    router: &dyn RegionRouter,
    service: &ServiceName,
    regions: &[RegionName],
) {
    assert!(
        regions.len() >= 2,
        "region router suite: give at least two regions"
    );
    nothing_set_is_none(router, service).await;
    weights_read_back(router, service, regions).await;
    all_to_one_then_back(router, service, regions).await;
    unknown_region_is_refused_and_changes_nothing(router, service, regions).await;
    setting_the_same_weights_twice_is_idempotent(router, service, regions).await;
    another_service_is_not_found(router, &unique_service(service.as_str()), regions).await;
}

/// A router of one service refuses `other` with a not-found error, both
/// to set and to read.
pub async fn another_service_is_not_found(
    router: &dyn RegionRouter,
    other: &ServiceName,
    regions: &[RegionName],
) {
    let set = router.set_region_weights(other, &spread(regions)).await;
    assert_eq!(
        set.map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "region router: setting weights of a service it does not serve must be not-found"
    );
    let read = router.region_weights(other).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "region router: reading weights of a service it does not serve must be not-found"
    );
}

/// Spreads 100 % over `regions`: the first takes the rest after an even share.
pub fn spread(regions: &[RegionName]) -> RegionWeights {
    let n = regions.len() as u32;
    let each = 100 / n;
    let first = 100 - each * (n - 1);
    let w = regions.iter().enumerate().map(|(i, r)| {
        let share = if i == 0 { first } else { each };
        (r.clone(), u8::try_from(share).unwrap_or(100))
    });
    match RegionWeights::new(w) {
        Ok(w) => w,
        Err(e) => panic!("region router suite: could not spread weights: {e}"),
    }
}

/// Nothing set: `None`.
pub async fn nothing_set_is_none(router: &dyn RegionRouter, svc: &ServiceName) {
    let got = router.region_weights(svc).await.expect("region_weights");
    assert!(
        got.is_none(),
        "region router: weights of a new service must be None, got {got:?}"
    );
}

/// What is set is what is read back.
pub async fn weights_read_back(
    router: &dyn RegionRouter,
    svc: &ServiceName,
    regions: &[RegionName],
) {
    let w = spread(regions);
    router
        .set_region_weights(svc, &w)
        .await
        .expect("set_region_weights");
    let got = router.region_weights(svc).await.expect("region_weights");
    assert_eq!(
        got,
        Some(w),
        "region router: the weights set must be read back"
    );
}

/// All traffic to one region (the others listed at 0), then back.
pub async fn all_to_one_then_back(
    router: &dyn RegionRouter,
    svc: &ServiceName,
    regions: &[RegionName],
) {
    let last = regions.len() - 1;
    let one = RegionWeights::new(
        regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), if i == last { 100 } else { 0 })),
    )
    .expect("valid weights");
    router
        .set_region_weights(svc, &one)
        .await
        .expect("all to one");
    let got = router
        .region_weights(svc)
        .await
        .expect("read")
        .expect("set");
    assert_eq!(
        got.get(&regions[last]),
        100,
        "region router: all traffic must go to {}",
        regions[last]
    );
    assert_eq!(
        got.serving().count(),
        1,
        "region router: only one region may serve, got {got}"
    );
    let back = spread(regions);
    router.set_region_weights(svc, &back).await.expect("back");
    assert_eq!(
        router.region_weights(svc).await.expect("read"),
        Some(back),
        "region router: weights must move back"
    );
}

/// Weights naming a region the router does not know: an invalid-input
/// error, and the weights in force stay.
pub async fn unknown_region_is_refused_and_changes_nothing(
    router: &dyn RegionRouter,
    svc: &ServiceName,
    regions: &[RegionName],
) {
    let before = spread(regions);
    router.set_region_weights(svc, &before).await.expect("set");
    let stranger = RegionName::new("no-such-region-zz9").expect("valid name");
    let bad =
        RegionWeights::new([(regions[0].clone(), 50), (stranger, 50)]).expect("valid weights");
    let err = router.set_region_weights(svc, &bad).await;
    assert_eq!(
        err.map_err(|e| e.kind()),
        Err(ErrorKind::InvalidInput),
        "region router: weights naming an unknown region must be refused as invalid input"
    );
    assert_eq!(
        router.region_weights(svc).await.expect("read"),
        Some(before),
        "region router: a refused change must leave the weights in force"
    );
}

/// Weights of one service leave another alone.
pub async fn services_are_independent(
    router: &dyn RegionRouter,
    a: &ServiceName,
    b: &ServiceName,
    regions: &[RegionName],
) {
    let wa = spread(regions);
    router.set_region_weights(a, &wa).await.expect("set a");
    assert!(
        router.region_weights(b).await.expect("read b").is_none(),
        "region router: weights of {a} must not appear on {b}"
    );
    let wb = RegionWeights::all_to(regions[1].clone());
    let wb = RegionWeights::new(regions.iter().map(|r| (r.clone(), wb.get(r)))).expect("valid");
    router.set_region_weights(b, &wb).await.expect("set b");
    assert_eq!(
        router.region_weights(a).await.expect("read a"),
        Some(wa),
        "region router: {b} must not change {a}"
    );
}

/// Setting the weights in force again succeeds and changes nothing (a
/// resumed controller re-applies what it last wrote).
pub async fn setting_the_same_weights_twice_is_idempotent(
    router: &dyn RegionRouter,
    svc: &ServiceName,
    regions: &[RegionName],
) {
    let w = spread(regions);
    router.set_region_weights(svc, &w).await.expect("first");
    router.set_region_weights(svc, &w).await.expect("second");
    assert_eq!(
        router.region_weights(svc).await.expect("read"),
        Some(w),
        "region router: re-applying must be idempotent"
    );
}
