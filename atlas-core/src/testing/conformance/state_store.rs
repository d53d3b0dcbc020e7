//! Conformance checks for [`StateStore`] adapters.
//!
//! ```
//! # use atlas_core::testing::{conformance, MemoryStateStore};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! conformance::state_store::all(&MemoryStateStore::new(), "store-doc").await;
//! # });
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use super::unique_service;
use crate::analysis::{AnalysisMetric, AnalysisTemplate, Comparison, Condition};
use crate::domain::{Release, RequestMatch, ServiceName, Slot, Weight};
use crate::error::{ErrorKind, Result};
use crate::probe::ProbePolicy;
use crate::rollout::{InconclusivePolicy, Rollout};
use crate::state::{Phase, PlanFingerprint, RolloutState, StateStore, Versioned};
use crate::strategy::{Canary, CanaryScale, CanaryStep, Strategy};

/// The lease time-to-live the checks use: long enough that no lease
/// expires while a check runs against a real backend.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Runs every state store check, each on a fresh service named from `prefix`.
pub async fn all(store: &dyn StateStore, prefix: &str) {
    load_of_nothing_is_none(store, &unique_service(prefix)).await;
    create_then_load(store, &unique_service(prefix)).await;
    stale_write_conflicts(store, &unique_service(prefix)).await;
    create_over_existing_conflicts(store, &unique_service(prefix)).await;
    write_to_missing_version_conflicts(store, &unique_service(prefix)).await;
    versions_increase(store, &unique_service(prefix)).await;
    state_round_trips_every_field(store, &unique_service(prefix)).await;
    services_are_independent(store, &unique_service(prefix), &unique_service(prefix)).await;
    held_lease_refuses_another_holder(store, &unique_service(prefix)).await;
    same_holder_may_reacquire(store, &unique_service(prefix)).await;
    release_lets_another_acquire(store, &unique_service(prefix)).await;
    renew_works_for_the_holder(store, &unique_service(prefix)).await;
    renew_of_a_lost_lease_conflicts(store, &unique_service(prefix)).await;
}

/// A realistic rollout state with every field away from its default: a
/// canary strategy with analysis, a match rule, a custom probe policy,
/// arguments, a rolling-back phase, flags set, a plan fingerprint. Stores
/// must round-trip it.
pub fn sample_state(service: &ServiceName) -> RolloutState {
    let error_rate = AnalysisMetric::new(
        "error-rate",
        "sum(rate(http_requests_total{service=\"{{service}}\",code=~\"5..\"}[{{window}}]))",
    )
    .success(cond(Comparison::Lt, 0.01))
    .failure(cond(Comparison::Ge, 0.05))
    .every(Duration::from_secs(30), 5)
    .failure_limit(1);
    let mut release = Release::new("v2.3.1", "registry.example/checkout:v2.3.1")
        .with_arg("--port=8080")
        .with_env("RUST_LOG", "info")
        .with_env("FEATURE_X", "on");
    release.args.push("--ünïcode=✓".into());
    let mut canary = Canary::new(
        5,
        vec![
            CanaryStep::SetWeight(weight(10)),
            CanaryStep::Pause(Some(Duration::from_secs(90))),
            CanaryStep::Analysis("health".into()),
            CanaryStep::SetCanaryScale(CanaryScale::Replicas(3)),
            CanaryStep::SetWeight(weight(50)),
            CanaryStep::Pause(None),
        ],
    );
    canary.scale_down_delay = Duration::from_millis(45_500);
    canary.canary_match = Some(RequestMatch::Cookie {
        name: "beta".into(),
        value: "yes".into(),
    });
    let mut rollout = Rollout::new(service.clone(), release, Strategy::Canary(canary))
        .with_analysis(AnalysisTemplate::new("health", vec![error_rate]))
        .with_probe(ProbePolicy {
            initial_delay: Duration::from_millis(250),
            period: Duration::from_secs(2),
            timeout: Duration::from_millis(1500),
            success_threshold: 2,
            failure_threshold: 4,
        })
        .with_progress_deadline(Duration::from_secs(900));
    rollout.on_inconclusive = InconclusivePolicy::Abort;
    rollout.args = BTreeMap::from([
        ("region".to_string(), "eu-west-1".to_string()),
        ("quote".to_string(), "a \"b\" {c}".to_string()),
    ]);
    // Serialising a plan cannot fail, so this is always `Some`.
    let plan = PlanFingerprint::of(&rollout.strategy.compile(false)).ok();
    RolloutState {
        id: format!("{service}-0123456789abcdef"),
        rollout,
        stable: Slot::Green,
        stable_version: Some("v2.3.0".into()),
        initial: false,
        phase: Phase::RollingBack {
            reason: "analysis health failed: error-rate 0.07 >= 0.05".into(),
        },
        step: 3,
        weight: weight(10),
        paused: true,
        skip_next_pause: true,
        full_promotion: true,
        promoted: false,
        plan,
    }
}

/// `load` of a service never written is `None`.
pub async fn load_of_nothing_is_none(store: &dyn StateStore, service: &ServiceName) {
    assert_eq!(
        load(store, service).await,
        None,
        "load({service}) must be None before any write"
    );
}

/// A write with expected `None` creates the state; load returns it with
/// the version the write returned.
pub async fn create_then_load(store: &dyn StateStore, service: &ServiceName) {
    let state = sample_state(service);
    let v = cas(store, service, None, &state).await;
    assert_eq!(
        load(store, service).await,
        Some(Versioned {
            version: v,
            value: state
        }),
        "load must return the state just created, with the version compare_and_swap returned"
    );
}

/// A write naming a stale version is a `Conflict` and changes nothing.
pub async fn stale_write_conflicts(store: &dyn StateStore, service: &ServiceName) {
    let mut state = sample_state(service);
    let v1 = cas(store, service, None, &state).await;
    state.step = 4;
    let v2 = cas(store, service, Some(v1), &state).await;
    let mut stale = state.clone();
    stale.step = 99;
    expect_conflict(
        store.compare_and_swap(service, Some(v1), &stale).await,
        "compare_and_swap with a stale version",
    );
    assert_eq!(
        load(store, service).await,
        Some(Versioned {
            version: v2,
            value: state
        }),
        "a refused stale write must leave the stored state and version unchanged"
    );
}

/// A create (expected `None`) when a state exists is a `Conflict` and
/// changes nothing.
pub async fn create_over_existing_conflicts(store: &dyn StateStore, service: &ServiceName) {
    let state = sample_state(service);
    let v = cas(store, service, None, &state).await;
    let mut other = state.clone();
    other.id = "another-rollout".into();
    expect_conflict(
        store.compare_and_swap(service, None, &other).await,
        "compare_and_swap with expected None over an existing state",
    );
    assert_eq!(
        load(store, service).await,
        Some(Versioned {
            version: v,
            value: state
        }),
        "a refused create must leave the existing state unchanged"
    );
}

/// A write naming a version when nothing is stored is a `Conflict` and
/// stores nothing.
pub async fn write_to_missing_version_conflicts(store: &dyn StateStore, service: &ServiceName) {
    expect_conflict(
        store
            .compare_and_swap(service, Some(1), &sample_state(service))
            .await,
        "compare_and_swap with expected Some(1) when nothing is stored",
    );
    assert_eq!(
        load(store, service).await,
        None,
        "a refused write must not create a state"
    );
}

/// Every successful write returns a greater version than the one before.
pub async fn versions_increase(store: &dyn StateStore, service: &ServiceName) {
    let mut state = sample_state(service);
    let mut version = cas(store, service, None, &state).await;
    for step in 0..5 {
        state.step = step;
        let next = cas(store, service, Some(version), &state).await;
        assert!(
            next > version,
            "versions must increase: write after {version} returned {next}"
        );
        version = next;
    }
}

/// Every field of a realistic state survives a write and a load, and so
/// do updates to the phase and flags.
pub async fn state_round_trips_every_field(store: &dyn StateStore, service: &ServiceName) {
    let state = sample_state(service);
    let v = cas(store, service, None, &state).await;
    let loaded = load(store, service).await.map(|v| v.value);
    assert_eq!(
        loaded.as_ref(),
        Some(&state),
        "the loaded state must equal the one written, field for field"
    );
    let mut next = state;
    next.phase = Phase::Promoted;
    next.stable_version = None;
    next.initial = true;
    next.paused = false;
    next.skip_next_pause = false;
    next.full_promotion = false;
    next.promoted = true;
    next.weight = Weight::FULL;
    next.step = 9;
    cas(store, service, Some(v), &next).await;
    assert_eq!(
        load(store, service).await.map(|v| v.value),
        Some(next),
        "an updated state must load back whole"
    );
}

/// States of two services do not affect each other.
pub async fn services_are_independent(
    store: &dyn StateStore,
    first: &ServiceName,
    second: &ServiceName,
) {
    let a = sample_state(first);
    let b = sample_state(second);
    let va = cas(store, first, None, &a).await;
    cas(store, second, None, &b).await;
    assert_eq!(
        load(store, first).await,
        Some(Versioned {
            version: va,
            value: a
        }),
        "writing {second} must not change {first}"
    );
}

/// While one holder's lease is live, another holder is refused with a
/// `Conflict` whose message names the holder.
pub async fn held_lease_refuses_another_holder(store: &dyn StateStore, service: &ServiceName) {
    let holder = format!("{service}-holder-a");
    let lease = acquire(store, service, &holder).await;
    assert_eq!(lease.holder, holder, "the lease must name its holder");
    assert_eq!(&lease.service, service, "the lease must name its service");
    let err = expect_conflict(
        store
            .acquire_lease(service, &format!("{service}-holder-b"), LEASE_TTL)
            .await,
        "acquire_lease by a second holder while the first holds it",
    );
    assert!(
        err.contains(&holder),
        "the lease conflict must name the current holder {holder:?}: {err}"
    );
    release(store, &lease).await;
}

/// The holder of a live lease may acquire it again.
pub async fn same_holder_may_reacquire(store: &dyn StateStore, service: &ServiceName) {
    let holder = format!("{service}-holder-a");
    acquire(store, service, &holder).await;
    let again = acquire(store, service, &holder).await;
    release(store, &again).await;
}

/// After the holder releases, another holder can acquire; releasing a
/// lease no longer held is not an error.
pub async fn release_lets_another_acquire(store: &dyn StateStore, service: &ServiceName) {
    let a = acquire(store, service, &format!("{service}-holder-a")).await;
    release(store, &a).await;
    let b = acquire(store, service, &format!("{service}-holder-b")).await;
    if let Err(e) = store.release_lease(&a).await {
        panic!("releasing a lease no longer held must not be an error: {e}");
    }
    expect_conflict(
        store
            .acquire_lease(service, &format!("{service}-holder-c"), LEASE_TTL)
            .await,
        "acquire_lease after a stale release: the live lease must survive it",
    );
    release(store, &b).await;
}

/// The holder can renew its lease, repeatedly.
pub async fn renew_works_for_the_holder(store: &dyn StateStore, service: &ServiceName) {
    let lease = acquire(store, service, &format!("{service}-holder-a")).await;
    for i in 0..3 {
        if let Err(e) = store.renew_lease(&lease).await {
            panic!("renew #{i} of a held lease failed: {e}");
        }
    }
    release(store, &lease).await;
}

/// Renewing a lease that was released and taken by another holder is a
/// `Conflict`.
pub async fn renew_of_a_lost_lease_conflicts(store: &dyn StateStore, service: &ServiceName) {
    let a = acquire(store, service, &format!("{service}-holder-a")).await;
    release(store, &a).await;
    let b = acquire(store, service, &format!("{service}-holder-b")).await;
    expect_conflict(
        store.renew_lease(&a).await,
        "renew_lease of a lease now held by another",
    );
    release(store, &b).await;
}

fn cond(op: Comparison, threshold: f64) -> Condition {
    Condition::new(op, threshold).unwrap_or_else(|e| panic!("condition: {e}"))
}

fn weight(percent: u8) -> Weight {
    Weight::new(percent).unwrap_or_else(|e| panic!("weight: {e}"))
}

async fn load(store: &dyn StateStore, service: &ServiceName) -> Option<Versioned<RolloutState>> {
    store
        .load(service)
        .await
        .unwrap_or_else(|e| panic!("load({service}) failed: {e}"))
}

async fn cas(
    store: &dyn StateStore,
    service: &ServiceName,
    expected: Option<u64>,
    state: &RolloutState,
) -> u64 {
    store
        .compare_and_swap(service, expected, state)
        .await
        .unwrap_or_else(|e| panic!("compare_and_swap({service}, {expected:?}) failed: {e}"))
}

async fn acquire(store: &dyn StateStore, service: &ServiceName, holder: &str) -> crate::Lease {
    store
        .acquire_lease(service, holder, LEASE_TTL)
        .await
        .unwrap_or_else(|e| panic!("acquire_lease({service}, {holder}) failed: {e}"))
}

async fn release(store: &dyn StateStore, lease: &crate::Lease) {
    if let Err(e) = store.release_lease(lease).await {
        panic!(
            "release_lease({}, {}) failed: {e}",
            lease.service, lease.holder
        );
    }
}

/// Asserts `r` is a `Conflict` and returns its message.
fn expect_conflict<T: std::fmt::Debug>(r: Result<T>, what: &str) -> String {
    match r {
        Err(e) if e.kind() == ErrorKind::Conflict => e.to_string(),
        Err(e) => panic!("{what} must be a Conflict, got {:?}: {e}", e.kind()),
        Ok(v) => panic!("{what} must be a Conflict, got Ok({v:?})"),
    }
}
