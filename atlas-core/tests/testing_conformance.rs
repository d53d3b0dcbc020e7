//! The mocks of `atlas_core::testing` pass every conformance suite, the
//! suites catch broken adapters, and the fault wrappers do what they claim.

#![cfg(feature = "testing")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::region::RegionName;
use atlas_core::testing::conformance::{self, probe::ProbeEndpoints, workloads::WorkloadsFixture};
use atlas_core::testing::{
    CollectingNotifier, Fault, FaultError, FaultPlan, Faulty, MemoryStateStore, Method,
    MockWorkloads, ProbeScript, RecordingRegionRouter, RecordingRouter, ScriptedMetrics,
    ScriptedProbe,
};
use atlas_core::{
    BlueGreen, Endpoint, Engine, Error, ErrorKind, HealthProbe, Lease, MetricProvider, MetricQuery,
    Notification, Notifier, Outcome, ProbeOutcome, Release, Result, Rollout, RolloutState,
    ServiceName, Severity, Slot, SlotStatus, StateStore, Strategy, TrafficRouter, TrafficSplit,
    Versioned, Workloads,
};
use tokio::time::Instant;

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn fixture() -> WorkloadsFixture {
    WorkloadsFixture::new(
        Release::new("v1", "mock://app:v1"),
        Release::new("v2", "mock://app:v2"),
    )
}

fn probe_endpoints() -> (ScriptedProbe, ProbeEndpoints) {
    let probe = ScriptedProbe::new();
    probe.script("refused", ProbeScript::Failing("connection refused".into()));
    probe.script("hanging", ProbeScript::Hang);
    let ep = |name: &str, port: u16| Endpoint::new(name, ([127, 0, 0, 1], port).into());
    let endpoints = ProbeEndpoints::new(ep("healthy", 1), ep("refused", 2), ep("hanging", 3));
    (probe, endpoints)
}

// ---------------------------------------------------------------------------
// The mocks pass every suite.

#[tokio::test(start_paused = true)]
async fn recording_router_passes_the_router_suite() {
    let router = RecordingRouter::new();
    conformance::router::all(&router, "mock-router").await;
    assert!(
        router.calls().len() > 20,
        "the suite really drove the router"
    );
}

/// A router that declares abilities it lacks, or lacks abilities it does
/// not declare, fails the suite: the capability flags narrow what is
/// checked, they never wave a check through.
#[tokio::test(start_paused = true)]
async fn the_router_suite_holds_routers_to_what_they_declare() {
    use conformance::router::{MatchSupport, SuiteConfig, WeightSupport};
    // The recording router accepts every weight and rule: declaring
    // all-or-nothing weights (or no match rules) must fail, since it does
    // not refuse what it claims it cannot do.
    for config in [
        SuiteConfig::new().with_weights(WeightSupport::AllOrNothing),
        SuiteConfig::new().with_matches(MatchSupport::None),
        SuiteConfig::new().with_matches(MatchSupport::HeaderOnly),
    ] {
        let run = tokio::spawn(async move {
            conformance::router::all_with(&RecordingRouter::new(), "declared", &config).await;
        });
        assert!(
            run.await.unwrap_err().is_panic(),
            "{config:?} must fail on a router that accepts everything"
        );
    }
    // Declaring every ability passes, as with `all`.
    conformance::router::all_with(&RecordingRouter::new(), "declared", &SuiteConfig::new()).await;
}

#[tokio::test(start_paused = true)]
async fn mock_workloads_pass_the_workloads_suite_with_and_without_delay() {
    conformance::workloads::all(&MockWorkloads::new(), &fixture(), "mock-workloads").await;
    let slow = MockWorkloads::new().with_ready_delay(Duration::from_secs(3));
    let started = Instant::now();
    conformance::workloads::all(&slow, &fixture(), "slow-workloads").await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the suite waited for readiness"
    );
}

#[tokio::test(start_paused = true)]
async fn memory_store_passes_the_state_store_suite() {
    let store = MemoryStateStore::new();
    conformance::state_store::all(&store, "mock-store").await;
    assert!(store.writes() >= 10, "the suite really wrote");
}

#[tokio::test(start_paused = true)]
async fn memory_store_passes_the_failover_store_suite() {
    let store = MemoryStateStore::new();
    conformance::failover_store::all(&store, "mock-failover").await;
    assert_eq!(
        store.writes(),
        5,
        "the suite wrote exactly its five successful writes"
    );
}

#[tokio::test(start_paused = true)]
async fn recording_region_router_passes_the_region_router_suite() {
    let regions = ["us-east", "eu-west", "ap-south"].map(|r| RegionName::new(r).unwrap());
    let router = RecordingRegionRouter::with_regions(regions.clone());
    conformance::region_router::all(&router, "mock-regions", &regions).await;
}

#[tokio::test(start_paused = true)]
async fn the_single_service_suite_catches_a_router_that_serves_any_service() {
    let regions = ["us-east", "eu-west"].map(|r| RegionName::new(r).unwrap());
    let router = RecordingRegionRouter::with_regions(regions.clone());
    let svc = conformance::unique_service("single");
    let run = tokio::spawn(async move {
        conformance::region_router::all_single_service(&router, &svc, &regions).await;
    });
    let err = run
        .await
        .expect_err("a router answering for every service is no single-service router");
    assert!(err.is_panic());
}

#[tokio::test(start_paused = true)]
async fn a_router_that_accepts_unknown_regions_fails_the_suite() {
    let regions = ["us-east", "eu-west"].map(|r| RegionName::new(r).unwrap());
    let lax = RecordingRegionRouter::new();
    let run = tokio::spawn(async move {
        conformance::region_router::all(&lax, "lax-regions", &regions).await;
    });
    let err = run
        .await
        .expect_err("the suite must catch a router that accepts any region");
    assert!(err.is_panic());
}

#[tokio::test(start_paused = true)]
async fn scripted_probe_passes_the_probe_suite() {
    let (probe, endpoints) = probe_endpoints();
    conformance::probe::all(&probe, &endpoints).await;
    assert_eq!(probe.attempts("hanging"), 1);
}

#[tokio::test]
async fn collecting_notifier_passes_the_notifier_suite() {
    let notifier = CollectingNotifier::new();
    conformance::notifier::all(&notifier, "mock-notifier").await;
    let got = notifier.notifications();
    assert_eq!(got.len(), 7);
    assert!(got.iter().any(|n| n.resolved) && got.iter().any(|n| !n.resolved));
}

#[tokio::test(start_paused = true)]
async fn fault_wrappers_without_faults_are_transparent_to_every_suite() {
    let plan = FaultPlan::new();
    conformance::router::all(&plan.wrap(RecordingRouter::new()), "faulty-router").await;
    conformance::workloads::all(&plan.wrap(MockWorkloads::new()), &fixture(), "faulty-w").await;
    conformance::state_store::all(&plan.wrap(MemoryStateStore::new()), "faulty-store").await;
    let (probe, endpoints) = probe_endpoints();
    conformance::probe::all(&plan.wrap(probe), &endpoints).await;
    conformance::notifier::all(&plan.wrap(CollectingNotifier::new()), "faulty-n").await;
    let total = plan.total();
    assert!(total.calls > 100);
    assert_eq!(total.injected, 0);
}

#[tokio::test(start_paused = true)]
async fn suites_pass_under_injected_latency() {
    let plan = FaultPlan::new();
    plan.add(Fault::delay(Duration::from_millis(40))).unwrap();
    let started = Instant::now();
    conformance::state_store::all(&plan.wrap(MemoryStateStore::new()), "slow-store").await;
    let calls = plan.total().calls;
    assert_eq!(started.elapsed(), Duration::from_millis(40) * calls as u32);
}

// ---------------------------------------------------------------------------
// The suites catch broken adapters.

/// Forgets the canary match rule.
struct LossyRouter(RecordingRouter);

#[async_trait]
impl TrafficRouter for LossyRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        let plain = TrafficSplit::new(split.stable(), split.canary_weight().percent())?;
        self.0.set_split(service, &plain).await
    }
    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        self.0.split(service).await
    }
}

#[tokio::test]
#[should_panic(expected = "canary match rule")]
async fn router_suite_catches_a_lost_match_rule() {
    conformance::router::all(&LossyRouter(RecordingRouter::new()), "lossy").await;
}

/// Writes the stable slot and the weight in two steps, yielding between.
#[derive(Default)]
struct TornRouter {
    stable: std::sync::Mutex<Option<Slot>>,
    weight: std::sync::Mutex<Option<u8>>,
    calls: AtomicU64,
}

#[async_trait]
impl TrafficRouter for TornRouter {
    async fn set_split(&self, _: &ServiceName, split: &TrafficSplit) -> Result<()> {
        *self.stable.lock().unwrap() = Some(split.stable());
        for _ in 0..self.calls.fetch_add(1, Ordering::Relaxed) % 3 {
            tokio::task::yield_now().await;
        }
        *self.weight.lock().unwrap() = Some(split.canary_weight().percent());
        Ok(())
    }
    async fn split(&self, _: &ServiceName) -> Result<Option<TrafficSplit>> {
        let stable = *self.stable.lock().unwrap();
        let weight = *self.weight.lock().unwrap();
        Ok(match (stable, weight) {
            (Some(s), Some(w)) => Some(TrafficSplit::new(s, w)?),
            _ => None,
        })
    }
}

#[tokio::test]
#[should_panic(expected = "got a mix")]
async fn router_suite_catches_torn_splits() {
    conformance::router::concurrent_splits_never_mix(&TornRouter::default(), &svc("torn")).await;
}

/// Lists endpoints in reverse, so the mock's scale-down stops the first listed.
struct ReversedWorkloads(MockWorkloads);

#[async_trait]
impl Workloads for ReversedWorkloads {
    async fn deploy(&self, s: &ServiceName, slot: Slot, r: &Release, n: u32) -> Result<()> {
        self.0.deploy(s, slot, r, n).await
    }
    async fn scale(&self, s: &ServiceName, slot: Slot, n: u32) -> Result<()> {
        self.0.scale(s, slot, n).await
    }
    async fn status(&self, s: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        let mut st = self.0.status(s, slot).await?;
        st.endpoints.reverse();
        Ok(st)
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "must stop the last two endpoints listed")]
async fn workloads_suite_catches_scale_down_from_the_front() {
    let w = ReversedWorkloads(MockWorkloads::new());
    conformance::workloads::all(&w, &fixture(), "reversed").await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "not 2 ready within 1m")]
async fn workloads_suite_bounds_its_wait_for_readiness() {
    let w = MockWorkloads::new();
    w.never_ready("v1");
    conformance::workloads::deploy_becomes_ready(&w, &fixture(), &svc("stuck")).await;
}

/// Ignores versions: last write wins.
#[derive(Default)]
struct BlindStore(MemoryStateStore);

#[async_trait]
impl StateStore for BlindStore {
    async fn load(&self, s: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        self.0.load(s).await
    }
    async fn compare_and_swap(
        &self,
        s: &ServiceName,
        _expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        let current = self.0.load(s).await?.map(|v| v.version);
        self.0.compare_and_swap(s, current, state).await
    }
    async fn acquire_lease(&self, s: &ServiceName, h: &str, ttl: Duration) -> Result<Lease> {
        self.0.acquire_lease(s, h, ttl).await
    }
    async fn renew_lease(&self, l: &Lease) -> Result<()> {
        self.0.renew_lease(l).await
    }
    async fn release_lease(&self, l: &Lease) -> Result<()> {
        self.0.release_lease(l).await
    }
}

#[tokio::test]
#[should_panic(expected = "must be a Conflict, got Ok")]
async fn state_store_suite_catches_blind_writes() {
    conformance::state_store::all(&BlindStore::default(), "blind").await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "did not return within")]
async fn probe_suite_catches_a_probe_ignoring_its_timeout() {
    let (probe, endpoints) = probe_endpoints();
    probe.script("hanging", ProbeScript::HangIgnoringTimeout);
    conformance::probe::all(&probe, &endpoints).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "must be healthy")]
async fn probe_suite_catches_a_probe_failing_healthy_endpoints() {
    let (probe, endpoints) = probe_endpoints();
    probe.script("healthy", ProbeScript::HealthyAfter(1));
    conformance::probe::all(&probe, &endpoints).await;
}

#[tokio::test]
#[should_panic(expected = "delivering critical notification")]
async fn notifier_suite_catches_failed_deliveries() {
    let plan = FaultPlan::new();
    plan.add(Fault::fail(FaultError::backend("webhook 500")))
        .unwrap();
    conformance::notifier::all(&plan.wrap(CollectingNotifier::new()), "broken").await;
}

// ---------------------------------------------------------------------------
// The fault wrappers do what they claim.

#[tokio::test]
async fn nth_call_fails_only_that_call() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("timeout"))
            .on(Method::LOAD)
            .nth_call(2),
    )
    .unwrap();
    let store = plan.wrap(MemoryStateStore::new());
    let s = svc("nth");
    assert!(store.load(&s).await.is_ok());
    let err = store.load(&s).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        err.to_string(),
        "transient error from fault-injection: load: timeout (injected)"
    );
    assert!(store.load(&s).await.is_ok());
    // Other methods have their own numbering.
    store
        .acquire_lease(&s, "a", Duration::from_secs(1))
        .await
        .unwrap();
    store
        .acquire_lease(&s, "a", Duration::from_secs(1))
        .await
        .unwrap();
    let c = plan.counts(Method::LOAD);
    assert_eq!((c.calls, c.successes, c.failures, c.injected), (3, 2, 1, 1));
    assert_eq!(plan.calls(Method::ACQUIRE_LEASE), 2);
    assert_eq!(plan.total().calls, 5);
}

#[tokio::test]
async fn after_calls_fails_every_later_call_until_cleared() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::backend("router gone"))
            .on(Method::SET_SPLIT)
            .after_calls(2),
    )
    .unwrap();
    let router = plan.wrap(RecordingRouter::new());
    let s = svc("after");
    let results: Vec<bool> = futures_results(&router, &s, 5).await;
    assert_eq!(results, [true, true, false, false, false]);
    assert_eq!(
        router.inner().splits(&s).len(),
        2,
        "failed calls never reached it"
    );
    plan.clear();
    router
        .set_split(&s, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    assert_eq!(plan.counts(Method::SET_SPLIT).injected, 3);
}

async fn futures_results(router: &Faulty<RecordingRouter>, s: &ServiceName, n: u8) -> Vec<bool> {
    let mut out = Vec::new();
    for i in 0..n {
        let split = TrafficSplit::new(Slot::Blue, i * 10).unwrap();
        out.push(router.set_split(s, &split).await.is_ok());
    }
    out
}

#[tokio::test]
async fn store_crashes_after_n_successful_writes() {
    let plan = FaultPlan::new();
    // A transient blip on the 2nd write, and a crash once 3 writes succeeded.
    plan.add(
        Fault::fail(FaultError::transient("blip"))
            .on(Method::COMPARE_AND_SWAP)
            .nth_call(2),
    )
    .unwrap();
    plan.add(
        Fault::fail(FaultError::backend("store crashed"))
            .on(Method::COMPARE_AND_SWAP)
            .after_successes(3),
    )
    .unwrap();
    let inner = MemoryStateStore::new();
    let store = plan.wrap(inner.clone());
    let s = svc("crash");
    let state = conformance::state_store::sample_state(&s);
    let mut version = None;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        match store.compare_and_swap(&s, version, &state).await {
            Ok(v) => {
                version = Some(v);
                outcomes.push("ok");
            }
            Err(e) if e.is_transient() => outcomes.push("transient"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Backend);
                outcomes.push("crashed");
            }
        }
    }
    assert_eq!(
        outcomes,
        ["ok", "transient", "ok", "ok", "crashed", "crashed"]
    );
    assert_eq!(inner.writes(), 3);
    assert_eq!(plan.counts(Method::COMPARE_AND_SWAP).successes, 3);
    // Only writes crash: reads still work.
    assert_eq!(store.load(&s).await.unwrap().unwrap().version, 3);
}

#[tokio::test]
async fn percentage_faults_are_seeded_and_near_their_rate() {
    async fn pattern(seed: u64, percent: f64) -> Vec<bool> {
        let plan = FaultPlan::with_seed(seed);
        plan.add(Fault::fail(FaultError::transient("flaky")).percent(percent))
            .unwrap();
        let w = plan.wrap(MockWorkloads::new());
        let mut out = Vec::new();
        for _ in 0..2000 {
            out.push(w.status(&svc("pct"), Slot::Blue).await.is_err());
        }
        assert_eq!(
            plan.total().injected as usize,
            out.iter().filter(|f| **f).count()
        );
        out
    }
    let a = pattern(7, 30.0).await;
    let failed = a.iter().filter(|f| **f).count();
    // Binomial(2000, 0.3): mean 600, sd ~20.5; 500..700 is ~5 sd.
    assert!((500..=700).contains(&failed), "{failed} of 2000 failed");
    assert_eq!(a, pattern(7, 30.0).await, "same seed, same faults");
    assert_ne!(a, pattern(8, 30.0).await, "another seed, other faults");
    assert!(pattern(1, 0.0).await.iter().all(|f| !f));
    assert!(pattern(1, 100.0).await.iter().all(|f| *f));
}

#[tokio::test(start_paused = true)]
async fn latency_is_tokio_time_and_adds_up() {
    let plan = FaultPlan::new();
    plan.add(Fault::delay(Duration::from_millis(250)).on(Method::DEPLOY))
        .unwrap();
    plan.add(Fault::delay(Duration::from_millis(750))).unwrap();
    plan.add(
        Fault::fail(FaultError::transient("slow then failed"))
            .on(Method::SCALE)
            .always(),
    )
    .unwrap();
    let w = plan.wrap(MockWorkloads::new());
    let s = svc("slow");
    let t = Instant::now();
    w.deploy(&s, Slot::Blue, &Release::new("v1", "app"), 1)
        .await
        .unwrap();
    assert_eq!(t.elapsed(), Duration::from_secs(1));
    let t = Instant::now();
    w.status(&s, Slot::Blue).await.unwrap();
    assert_eq!(t.elapsed(), Duration::from_millis(750));
    let t = Instant::now();
    assert!(w.scale(&s, Slot::Blue, 2).await.is_err());
    assert_eq!(
        t.elapsed(),
        Duration::from_millis(750),
        "a failure comes after the latency"
    );
    assert_eq!(w.inner().replicas(&s, Slot::Blue), 1);
}

#[tokio::test]
async fn lost_responses_take_effect_but_report_failure() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::lose_response(FaultError::transient("connection reset"))
            .on(Method::COMPARE_AND_SWAP)
            .nth_call(1),
    )
    .unwrap();
    let store = plan.wrap(MemoryStateStore::new());
    let s = svc("lost");
    let state = conformance::state_store::sample_state(&s);
    assert!(
        store
            .compare_and_swap(&s, None, &state)
            .await
            .unwrap_err()
            .is_transient()
    );
    assert_eq!(store.inner().writes(), 1, "the write happened");
    let retry = store.compare_and_swap(&s, None, &state).await.unwrap_err();
    assert_eq!(retry.kind(), ErrorKind::Conflict, "a blind retry conflicts");
    let c = plan.counts(Method::COMPARE_AND_SWAP);
    assert_eq!((c.successes, c.failures, c.injected), (0, 2, 1));
}

#[tokio::test]
async fn probe_faults_are_unhealthy_outcomes() {
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::backend("network partition"))
            .on(Method::CHECK)
            .first_calls(1),
    )
    .unwrap();
    plan.add(
        Fault::fail(FaultError::transient("pod evicted"))
            .on(Method::CHECK)
            .after_successes(2),
    )
    .unwrap();
    let probe = plan.wrap(ScriptedProbe::new());
    let ep = Endpoint::new("a", ([127, 0, 0, 1], 1).into());
    let t = Duration::from_secs(1);
    assert_eq!(
        probe.check(&ep, t).await,
        ProbeOutcome::unhealthy("network partition (injected)")
    );
    assert_eq!(probe.inner().attempts("a"), 0, "the fault stopped the call");
    assert!(probe.check(&ep, t).await.is_healthy());
    assert!(probe.check(&ep, t).await.is_healthy());
    assert!(!probe.check(&ep, t).await.is_healthy());
    let c = plan.counts(Method::CHECK);
    assert_eq!((c.calls, c.successes, c.failures, c.injected), (4, 2, 2, 2));
}

#[tokio::test]
async fn every_wrapped_method_is_counted_and_faulted_by_its_name() {
    let plan = FaultPlan::new();
    plan.add(Fault::fail(FaultError::conflict("no"))).unwrap();
    let s = svc("every");
    let ep = Endpoint::new("a", ([127, 0, 0, 1], 1).into());
    let lease = Lease {
        service: s.clone(),
        holder: "a".into(),
        token: 1,
        ttl: Duration::from_secs(1),
    };
    let state = conformance::state_store::sample_state(&s);
    let query = MetricQuery {
        metric: "m".into(),
        query: "q".into(),
        window: Duration::from_secs(1),
        args: Default::default(),
    };
    let w = plan.wrap(MockWorkloads::new());
    let r = plan.wrap(RecordingRouter::new());
    let st = plan.wrap(MemoryStateStore::new());
    let m = plan.wrap(ScriptedMetrics::new());
    let n = plan.wrap(CollectingNotifier::new());
    let release = Release::new("v1", "app");
    let split = TrafficSplit::all_to(Slot::Blue);
    let errors: Vec<(Method, Error)> = vec![
        (
            Method::DEPLOY,
            w.deploy(&s, Slot::Blue, &release, 1).await.unwrap_err(),
        ),
        (Method::SCALE, w.scale(&s, Slot::Blue, 1).await.unwrap_err()),
        (Method::STATUS, w.status(&s, Slot::Blue).await.unwrap_err()),
        (
            Method::SET_SPLIT,
            r.set_split(&s, &split).await.unwrap_err(),
        ),
        (Method::SPLIT, r.split(&s).await.unwrap_err()),
        (
            Method::SET_ENDPOINTS,
            r.set_endpoints(&s, Slot::Blue, &[]).await.unwrap_err(),
        ),
        (Method::MEASURE, m.measure(&query).await.unwrap_err()),
        (Method::LOAD, st.load(&s).await.unwrap_err()),
        (
            Method::COMPARE_AND_SWAP,
            st.compare_and_swap(&s, None, &state).await.unwrap_err(),
        ),
        (
            Method::ACQUIRE_LEASE,
            st.acquire_lease(&s, "a", Duration::from_secs(1))
                .await
                .unwrap_err(),
        ),
        (
            Method::RENEW_LEASE,
            st.renew_lease(&lease).await.unwrap_err(),
        ),
        (
            Method::RELEASE_LEASE,
            st.release_lease(&lease).await.unwrap_err(),
        ),
        (
            Method::NOTIFY,
            n.notify(&Notification::new(Severity::Info, "x"))
                .await
                .unwrap_err(),
        ),
    ];
    for (method, e) in &errors {
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(e.to_string(), format!("conflict: {method}: no (injected)"));
        assert_eq!(plan.counts(*method).injected, 1, "{method}");
    }
    let probe = plan.wrap(ScriptedProbe::new());
    assert!(!probe.check(&ep, Duration::from_secs(1)).await.is_healthy());
    assert_eq!(plan.total().injected, errors.len() as u64 + 1);
    assert!(r.inner().calls().is_empty() && w.inner().calls().is_empty());
}

#[test]
fn invalid_fault_rules_are_refused_naming_the_field() {
    let plan = FaultPlan::new();
    let e = FaultError::transient("x");
    for (fault, field) in [
        (Fault::fail(e.clone()).percent(101.0), "fault.percent"),
        (Fault::fail(e.clone()).percent(-1.0), "fault.percent"),
        (Fault::fail(e.clone()).percent(f64::NAN), "fault.percent"),
        (Fault::fail(e.clone()).nth_call(0), "fault.nth_call"),
    ] {
        let err = plan.add(fault).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(field), "{err}");
    }
    assert_eq!(
        FaultError::deadline("slow", Duration::from_secs(2)).kind(),
        ErrorKind::Deadline
    );
}

// ---------------------------------------------------------------------------
// The mocks and faults drive the engine.

fn engine(
    w: &MockWorkloads,
    r: &RecordingRouter,
    store: Arc<dyn StateStore>,
    metrics: &ScriptedMetrics,
) -> Engine {
    Engine::builder()
        .workloads(Arc::new(w.clone()))
        .router(Arc::new(r.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .metrics(Arc::new(metrics.clone()))
        .store(store)
        .build()
        .unwrap()
}

async fn running_v1(w: &MockWorkloads, r: &RecordingRouter, s: &ServiceName) {
    w.deploy(s, Slot::Blue, &Release::new("v1", "app:v1"), 2)
        .await
        .unwrap();
    r.set_split(s, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_crashed_store_stops_the_engine_and_a_new_engine_resumes() {
    let s = svc("resume");
    let (w, r, metrics) = (
        MockWorkloads::new().with_ready_delay(Duration::from_secs(2)),
        RecordingRouter::new(),
        ScriptedMetrics::new(),
    );
    running_v1(&w, &r, &s).await;
    let store = MemoryStateStore::new();
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::backend("store crashed"))
            .on(Method::COMPARE_AND_SWAP)
            .after_successes(4),
    )
    .unwrap();
    let first = engine(&w, &r, Arc::new(plan.wrap(store.clone())), &metrics);
    let rollout = Rollout::new(
        s.clone(),
        Release::new("v2", "app:v2"),
        Strategy::BlueGreen(BlueGreen::new(2)),
    );
    let err = first
        .start(rollout)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("store crashed"), "{err}");
    assert_eq!(store.writes(), 4);
    let stopped_at = store.state(&s).unwrap();
    assert!(!stopped_at.phase.is_terminal());

    let second = engine(&w, &r, Arc::new(store.clone()), &metrics);
    let outcome = second.resume(&s).await.unwrap().unwrap().wait().await;
    assert_eq!(
        outcome.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(r.current(&s), Some(TrafficSplit::all_to(Slot::Green)));
    assert_eq!(w.replicas(&s, Slot::Blue), 0);
    assert_eq!(w.version(&s, Slot::Green).as_deref(), Some("v2"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_release_rolls_back_in_one_router_call() {
    let s = svc("rollback");
    let (w, r, metrics) = (
        MockWorkloads::new().with_ready_delay(Duration::from_secs(2)),
        RecordingRouter::new(),
        ScriptedMetrics::new(),
    );
    running_v1(&w, &r, &s).await;
    // The canary passes its probes, then the error rate is bad.
    metrics.set_constant("error-rate", 0.2);
    let template = atlas_core::AnalysisTemplate::new(
        "health",
        vec![
            atlas_core::AnalysisMetric::new("error-rate", "rate(errors[1m])")
                .success("< 1%".parse().unwrap()),
        ],
    );
    let rollout = Rollout::new(
        s.clone(),
        Release::new("v2", "app:v2"),
        Strategy::BlueGreen(BlueGreen::new(2).with_step_analysis("health")),
    )
    .with_analysis(template);
    let store = MemoryStateStore::new();
    let e = engine(&w, &r, Arc::new(store.clone()), &metrics);
    let before = r.splits(&s).len();
    let outcome = e.start(rollout).await.unwrap().wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let splits = r.splits(&s)[before..].to_vec();
    assert_eq!(
        splits,
        [
            TrafficSplit::new(Slot::Blue, 5).unwrap(),
            TrafficSplit::all_to(Slot::Blue)
        ],
        "5 % canary, then all traffic back in one call"
    );
    assert_eq!(w.replicas(&s, Slot::Green), 0);
    assert_eq!(metrics.queries().len(), 1);
    assert_eq!(metrics.queries()[0].query.query, "rate(errors[1m])");
}

#[tokio::test(start_paused = true)]
async fn mock_workloads_pass_the_scaler_suite() {
    let slow = MockWorkloads::new().with_ready_delay(Duration::from_secs(2));
    conformance::scaler::all(&slow, &slow, &fixture(), "mock-scaler").await;
}

/// A scaler that lists new replicas at once and stops old ones before the
/// router lets go of them: what the suite exists to catch.
struct HastyScaler(MockWorkloads);

#[async_trait]
impl atlas_core::Scaler for HastyScaler {
    async fn scale_live(
        &self,
        service: &ServiceName,
        slot: Slot,
        replicas: u32,
        router: &dyn TrafficRouter,
    ) -> atlas_core::Result<()> {
        self.0.scale(service, slot, replicas).await?;
        let listed: Vec<_> = (0..replicas)
            .map(|i| {
                atlas_core::Endpoint::new(
                    format!("{service}-{slot}-{i}"),
                    std::net::SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)),
                )
            })
            .collect();
        router.set_endpoints(service, slot, &listed).await
    }
    async fn replica_count(
        &self,
        service: &ServiceName,
        slot: Slot,
    ) -> atlas_core::Result<atlas_core::ReplicaCount> {
        atlas_core::Scaler::replica_count(&self.0, service, slot).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_scaler_suite_catches_replicas_listed_before_ready() {
    let mock = MockWorkloads::new().with_ready_delay(Duration::from_secs(2));
    let hasty = HastyScaler(mock.clone());
    let run = tokio::spawn(async move {
        conformance::scaler::scale_up_lists_only_ready_replicas(
            &hasty,
            &mock,
            &fixture(),
            &conformance::unique_service("hasty"),
        )
        .await;
    });
    let err = run.await.unwrap_err();
    assert!(
        err.is_panic(),
        "a scaler listing unready replicas must fail"
    );
}
