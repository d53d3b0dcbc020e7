//! `Retrying<T>` around the fault-injecting mocks, under tokio's paused
//! clock: transient failures are retried up to the limit and then surface,
//! permanent ones are not retried, the waits follow the config, and state
//! writes whose outcome is unknown are read back instead of repeated
//! blindly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::retry::{BackoffConfig, RetryConfig, Retrying};
use atlas_core::testing::{
    Fault, FaultError, FaultPlan, MemoryStateStore, Method, MockWorkloads, RecordingRouter,
    conformance,
};
use atlas_core::{
    ErrorKind, Release, ServiceName, Slot, SlotStatus, StateStore, TrafficRouter, TrafficSplit,
    Workloads,
};
use tokio::time::Instant;

fn svc() -> ServiceName {
    ServiceName::new("checkout").unwrap()
}

/// Retries after 1 s, 2 s, 4 s, 4 s, … (before jitter).
fn config(max_retries: u32) -> RetryConfig {
    RetryConfig::default()
        .with_max_retries(max_retries)
        .with_backoff(
            BackoffConfig::default()
                .with_init_backoff(Duration::from_secs(1))
                .with_max_backoff(Duration::from_secs(4)),
        )
}

/// Records when each `deploy` reached it, to measure the waits between
/// attempts.
#[derive(Clone)]
struct Clocked<T> {
    inner: T,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl<T> Clocked<T> {
    fn new(inner: T) -> Self {
        Clocked {
            inner,
            calls: Arc::default(),
        }
    }

    /// The waits between consecutive calls.
    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls.lock().unwrap();
        calls.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[async_trait]
impl<T: Workloads> Workloads for Clocked<T> {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> atlas_core::Result<()> {
        self.calls.lock().unwrap().push(Instant::now());
        self.inner.deploy(service, slot, release, replicas).await
    }

    async fn scale(
        &self,
        service: &ServiceName,
        slot: Slot,
        replicas: u32,
    ) -> atlas_core::Result<()> {
        self.inner.scale(service, slot, replicas).await
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> atlas_core::Result<SlotStatus> {
        self.inner.status(service, slot).await
    }
}

fn release() -> Release {
    Release::new("v2", "checkout:v2")
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_up_to_the_limit_then_surface() {
    let plan = FaultPlan::new();
    plan.add(Fault::fail(FaultError::transient("503")).on(Method::DEPLOY))
        .unwrap();
    let clocked = Clocked::new(plan.wrap(MockWorkloads::new()));
    let workloads = Retrying::new(clocked.clone(), config(3)).unwrap();
    let started = Instant::now();
    let err = workloads
        .deploy(&svc(), Slot::Green, &release(), 2)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(plan.calls(Method::DEPLOY), 4, "1 attempt + 3 retries");
    // Each wait lies between half and all of its nominal backoff.
    let gaps = clocked.gaps();
    let nominal = [1, 2, 4].map(Duration::from_secs);
    assert_eq!(gaps.len(), nominal.len(), "{gaps:?}");
    for (gap, nominal) in gaps.iter().zip(nominal) {
        assert!(
            *gap >= nominal / 2 && *gap <= nominal,
            "waited {gap:?}, nominal {nominal:?}: {gaps:?}"
        );
    }
    assert_eq!(started.elapsed(), gaps.iter().sum::<Duration>());
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_that_passes_is_hidden_from_the_caller() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("connection reset"))
            .on(Method::DEPLOY)
            .first_calls(2),
    )
    .unwrap();
    let mock = MockWorkloads::new();
    let clocked = Clocked::new(plan.wrap(mock.clone()));
    let workloads = Retrying::new(clocked.clone(), config(3)).unwrap();
    workloads
        .deploy(&svc(), Slot::Green, &release(), 2)
        .await
        .unwrap();
    assert_eq!(plan.calls(Method::DEPLOY), 3);
    assert_eq!(
        mock.replicas(&svc(), Slot::Green),
        2,
        "the third call deployed"
    );
    let gaps = clocked.gaps();
    assert!(gaps[0] >= Duration::from_millis(500) && gaps[0] <= Duration::from_secs(1));
    assert!(gaps[1] >= Duration::from_secs(1) && gaps[1] <= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried() {
    let faults = [
        (FaultError::backend("403 forbidden"), ErrorKind::Backend),
        (FaultError::conflict("held by b"), ErrorKind::Conflict),
        (
            FaultError::not_found("no such service"),
            ErrorKind::NotFound,
        ),
        (FaultError::precondition("paused"), ErrorKind::Precondition),
        (
            FaultError::deadline("apply", Duration::from_secs(1)),
            ErrorKind::Deadline,
        ),
    ];
    for (fault, kind) in faults {
        let plan = FaultPlan::new();
        plan.add(Fault::fail(fault).on(Method::SET_SPLIT)).unwrap();
        let router = Retrying::new(plan.wrap(RecordingRouter::new()), config(5)).unwrap();
        let started = Instant::now();
        let err = router
            .set_split(&svc(), &TrafficSplit::all_to(Slot::Blue))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(plan.calls(Method::SET_SPLIT), 1, "{kind:?} is not retried");
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait for {kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_retries_tries_once() {
    let plan = FaultPlan::new();
    plan.add(Fault::fail(FaultError::transient("503")).on(Method::SPLIT))
        .unwrap();
    let router =
        Retrying::new(plan.wrap(RecordingRouter::new()), RetryConfig::no_retries()).unwrap();
    let err = router.split(&svc()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(plan.calls(Method::SPLIT), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_is_cut_by_the_request_timeout_and_retried() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::delay(Duration::from_secs(3600))
            .on(Method::STATUS)
            .nth_call(1),
    )
    .unwrap();
    let mock = MockWorkloads::new();
    mock.deploy(&svc(), Slot::Blue, &release(), 1)
        .await
        .unwrap();
    let workloads = Retrying::new(
        plan.wrap(mock),
        config(2).with_request_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let started = Instant::now();
    let status = workloads.status(&svc(), Slot::Blue).await.unwrap();
    assert_eq!(status.desired, 1);
    assert_eq!(plan.calls(Method::STATUS), 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(5500) && took <= Duration::from_secs(6),
        "5 s timeout + one backoff of 0.5-1 s: {took:?}"
    );
}

#[test]
fn an_invalid_config_is_refused() {
    let bad = RetryConfig::default().with_request_timeout(Duration::ZERO);
    let err = Retrying::new(MockWorkloads::new(), bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid retry.request_timeout: must be greater than zero"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_write_is_read_back_instead_of_repeated() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::lose_response(FaultError::transient("connection reset"))
            .on(Method::COMPARE_AND_SWAP)
            .nth_call(1),
    )
    .unwrap();
    let memory = MemoryStateStore::new();
    let store = Retrying::new(plan.wrap(memory.clone()), config(3)).unwrap();
    let s = svc();
    let state = conformance::state_store::sample_state(&s);
    // A blind retry of the landed write would conflict with itself.
    let version = store.compare_and_swap(&s, None, &state).await.unwrap();
    assert_eq!(memory.writes(), 1, "written once");
    assert_eq!(plan.calls(Method::COMPARE_AND_SWAP), 1, "not written again");
    assert_eq!(plan.calls(Method::LOAD), 1, "read back");
    let stored = memory.load(&s).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.value), (version, state));
}

#[tokio::test(start_paused = true)]
async fn a_write_that_did_not_land_is_read_back_then_retried() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("503"))
            .on(Method::COMPARE_AND_SWAP)
            .nth_call(1),
    )
    .unwrap();
    let memory = MemoryStateStore::new();
    let store = Retrying::new(plan.wrap(memory.clone()), config(3)).unwrap();
    let s = svc();
    let mut state = conformance::state_store::sample_state(&s);
    let v1 = memory.compare_and_swap(&s, None, &state).await.unwrap();
    state.step += 1;
    let v2 = store.compare_and_swap(&s, Some(v1), &state).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(plan.calls(Method::COMPARE_AND_SWAP), 2);
    assert_eq!(plan.calls(Method::LOAD), 1);
    assert_eq!(memory.writes(), 2);
    assert_eq!(memory.state(&s), Some(state));
}

#[tokio::test(start_paused = true)]
async fn a_conflict_is_never_retried() {
    let memory = MemoryStateStore::new();
    let plan = FaultPlan::new();
    let store = Retrying::new(plan.wrap(memory.clone()), config(3)).unwrap();
    let s = svc();
    let state = conformance::state_store::sample_state(&s);
    let v1 = store.compare_and_swap(&s, None, &state).await.unwrap();
    store.compare_and_swap(&s, Some(v1), &state).await.unwrap();
    let err = store
        .compare_and_swap(&s, Some(v1), &state)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(plan.calls(Method::COMPARE_AND_SWAP), 3);
    assert_eq!(plan.calls(Method::LOAD), 0);
}

#[tokio::test(start_paused = true)]
async fn another_writer_while_a_write_is_in_doubt_is_a_conflict() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("timeout"))
            .on(Method::COMPARE_AND_SWAP)
            .nth_call(1),
    )
    .unwrap();
    let memory = MemoryStateStore::new();
    let store = Retrying::new(plan.wrap(memory.clone()), config(3)).unwrap();
    let s = svc();
    let ours = conformance::state_store::sample_state(&s);
    let mut theirs = ours.clone();
    theirs.step = 42;
    // The other writer gets in during our first backoff (at least 500 ms).
    let other = memory.clone();
    let other_svc = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        other
            .compare_and_swap(&other_svc, None, &theirs)
            .await
            .unwrap();
    });
    let err = store.compare_and_swap(&s, None, &ours).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("another writer"), "{err}");
    assert_eq!(
        plan.calls(Method::COMPARE_AND_SWAP),
        1,
        "not written over theirs"
    );
    assert_eq!(memory.state(&s).unwrap().step, 42);
}

#[tokio::test(start_paused = true)]
async fn lease_renewal_retries_stop_within_the_lease_ttl() {
    let plan = FaultPlan::new();
    plan.add(Fault::fail(FaultError::transient("503")).on(Method::RENEW_LEASE))
        .unwrap();
    let store = Retrying::new(plan.wrap(MemoryStateStore::new()), config(1000)).unwrap();
    let ttl = Duration::from_secs(10);
    let lease = store.acquire_lease(&svc(), "engine-a", ttl).await.unwrap();
    let started = Instant::now();
    let err = store.renew_lease(&lease).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deadline, "{err}");
    assert!(started.elapsed() <= ttl, "{:?}", started.elapsed());
    assert!(
        plan.calls(Method::RENEW_LEASE) > 1,
        "retried within the ttl"
    );
}

#[tokio::test(start_paused = true)]
async fn the_wrappers_pass_the_conformance_suites() {
    conformance::router::all(
        &Retrying::new(RecordingRouter::new(), RetryConfig::control_plane()).unwrap(),
        "retrying",
    )
    .await;
    conformance::state_store::all(
        &Retrying::new(MemoryStateStore::new(), RetryConfig::control_plane()).unwrap(),
        "retrying",
    )
    .await;
}
