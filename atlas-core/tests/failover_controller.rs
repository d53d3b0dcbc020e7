//! The failover controller against the mocks, under tokio's paused clock:
//! each trigger (and its threshold), hysteresis against flapping, automatic
//! and manual failback, standby activation, the database's fence-before-
//! promote order, crash and resume at every step, and two controllers
//! racing.

use std::sync::Arc;
use std::time::Duration;

use atlas_core::database::DatabaseFailover;
use atlas_core::failover::{
    Failback, FailoverController, FailoverControllerBuilder, FailoverEvent, FailoverEventKind,
    FailoverPolicy, FailoverState, FailoverStore, MetricTrigger, Transition, TransitionKind,
};
use atlas_core::region::{Region, RegionName, RegionRouter, RegionSet, RegionWeights};
use atlas_core::testing::{
    COMPARE_AND_SWAP_FAILOVER, CollectingNotifier, DatabaseCall, FENCE_PRIMARY, Fault, FaultError,
    FaultPlan, MemoryStateStore, MockDatabase, ProbeScript, RecordingRegionRouter,
    SET_REGION_WEIGHTS, ScriptedMetrics, ScriptedProbe,
};
use atlas_core::{Endpoint, ErrorKind, ProbeOutcome, ServiceName};
use tokio::sync::broadcast;

const HOUR: Duration = Duration::from_secs(3600);

fn n(s: &str) -> RegionName {
    RegionName::new(s).unwrap()
}

/// The specification's regions: three active, one standby.
fn regions() -> RegionSet {
    RegionSet::new(vec![
        Region::active(n("us-east"), 40),
        Region::active(n("eu-west"), 35),
        Region::active(n("ap-south"), 25),
        Region::standby(n("us-west"), 40),
    ])
    .unwrap()
}

fn normal() -> RegionWeights {
    regions().normal_weights()
}

/// The specification's policy with metric queries the scripted provider
/// answers by region.
fn policy() -> FailoverPolicy {
    let mut p = FailoverPolicy::specification();
    p.metrics = vec![
        MetricTrigger {
            query: "p95{region=\"{{region}}\"}".into(),
            ..MetricTrigger::response_time()
        },
        MetricTrigger {
            query: "errors{region=\"{{region}}\"}".into(),
            ..MetricTrigger::error_rate()
        },
    ];
    p
}

#[derive(Clone)]
struct Rig {
    svc: ServiceName,
    probe: ScriptedProbe,
    metrics: ScriptedMetrics,
    router: RecordingRegionRouter,
    store: MemoryStateStore,
    db: MockDatabase,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            svc: ServiceName::new("checkout").unwrap(),
            probe: ScriptedProbe::new(),
            metrics: ScriptedMetrics::new(),
            router: RecordingRegionRouter::new(),
            store: MemoryStateStore::new(),
            db: MockDatabase::new().with_promote_delay(Duration::from_secs(2)),
        }
    }

    /// A builder on every mock, endpoints named after their regions.
    fn builder(&self, policy: FailoverPolicy) -> FailoverControllerBuilder {
        let mut b = FailoverController::builder()
            .service(self.svc.clone())
            .regions(regions())
            .policy(policy)
            .router(Arc::new(self.router.clone()))
            .store(Arc::new(self.store.clone()))
            .probe(Arc::new(self.probe.clone()))
            .metrics(Arc::new(self.metrics.clone()))
            .database(Arc::new(self.db.clone()))
            .database_region(n("us-east"));
        for (i, r) in regions().regions().iter().enumerate() {
            let addr = format!("127.0.0.1:{}", 9100 + i).parse().unwrap();
            b = b.endpoint(r.name.clone(), Endpoint::new(r.name.as_str(), addr));
        }
        b
    }

    fn controller(&self, policy: FailoverPolicy) -> FailoverController {
        self.builder(policy).build().unwrap()
    }

    fn fail(&self, region: &str) {
        self.probe
            .script(region, ProbeScript::Failing("connection refused".into()));
    }

    fn heal(&self, region: &str) {
        self.probe.script(region, ProbeScript::Healthy);
    }

    fn weights(&self) -> RegionWeights {
        self.router.current(&self.svc).expect("weights were set")
    }

    fn stored(&self) -> FailoverState {
        futures_state(&self.store, &self.svc)
    }
}

fn futures_state(store: &MemoryStateStore, svc: &ServiceName) -> FailoverState {
    // The memory store answers without waiting.
    futures::executor::block_on(store.load_failover(svc))
        .unwrap()
        .expect("a failover state")
        .value
}

/// Waits (tokio time, at most an hour) for the first event matching `f`.
async fn wait_for(
    rx: &mut broadcast::Receiver<FailoverEvent>,
    what: &str,
    f: impl Fn(&FailoverEventKind) -> bool,
) -> FailoverEvent {
    let found = tokio::time::timeout(HOUR, async {
        loop {
            match rx.recv().await {
                Ok(e) if f(&e.kind) => return e,
                Ok(_) => {}
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within an hour"))
}

/// Every event up to and including the first matching `f` (tokio time, at
/// most an hour).
async fn collect_until(
    rx: &mut broadcast::Receiver<FailoverEvent>,
    what: &str,
    f: impl Fn(&FailoverEventKind) -> bool,
) -> Vec<FailoverEventKind> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(HOUR, async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let done = f(&e.kind);
                    seen.push(e.kind);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within an hour"));
    seen
}

/// Every event received so far.
fn drain(rx: &mut broadcast::Receiver<FailoverEvent>) -> Vec<FailoverEventKind> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e.kind);
    }
    out
}

fn is_done(k: &FailoverEventKind) -> bool {
    matches!(k, FailoverEventKind::FailoverDone { .. })
}

fn moved(events: &[FailoverEventKind]) -> bool {
    events
        .iter()
        .any(|k| matches!(k, FailoverEventKind::TriggerFired { .. }))
}

#[tokio::test(start_paused = true)]
async fn three_failed_health_checks_fail_a_region_over_and_two_do_not() {
    let rig = Rig::new();
    let c = rig.controller(policy());
    let mut rx = c.subscribe();
    // Two failures, then healthy again: below the threshold.
    rig.probe.script(
        "ap-south",
        ProbeScript::Sequence(vec![
            ProbeOutcome::unhealthy("503"),
            ProbeOutcome::unhealthy("503"),
            ProbeOutcome::Healthy,
        ]),
    );
    let h = c.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(
        !moved(&drain(&mut rx)),
        "two failed checks must not fail over"
    );
    assert_eq!(rig.weights(), normal());

    // ap-south fails for good: its 25 % goes to us-east and eu-west as 40 : 35.
    rig.fail("ap-south");
    let fired = wait_for(&mut rx, "trigger", |k| {
        matches!(k, FailoverEventKind::TriggerFired { .. })
    })
    .await;
    let FailoverEventKind::TriggerFired {
        region,
        trigger,
        detected_after,
    } = fired.kind
    else {
        unreachable!()
    };
    assert_eq!(region, Some(n("ap-south")));
    assert!(
        trigger.contains("3 consecutive failed health checks"),
        "{trigger}"
    );
    assert!(trigger.contains("connection refused"), "{trigger}");
    assert_eq!(
        detected_after,
        Duration::from_secs(20),
        "3 checks, 10 s apart"
    );
    wait_for(&mut rx, "failover done", is_done).await;
    assert_eq!(
        rig.weights().to_string(),
        "ap-south=0% eu-west=47% us-east=53% us-west=0%"
    );
    let state = rig.stored();
    assert!(state.failed.contains_key(&n("ap-south")));
    assert!(
        state.activated.is_empty(),
        "capacity suffices without the standby"
    );
    assert_eq!(state.in_progress, None);
    assert_eq!(state.fence, None, "ap-south holds no database");
    assert_eq!(rig.db.count(DatabaseCall::FencePrimary), 0);
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lost_primary_region_moves_traffic_activates_the_standby_then_fences_and_promotes() {
    let rig = Rig::new();
    let notifier = CollectingNotifier::new();
    let c = rig
        .builder(policy())
        .notifier(Arc::new(notifier.clone()))
        .build()
        .unwrap();
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    rig.db.set_lag(Some(Duration::from_secs(3)), Some(4096));
    rig.fail("us-east");
    let events = collect_until(&mut rx, "failover done", is_done).await;
    // The recovery point: the standby's lag when the primary was fenced.
    assert!(events.iter().any(|k| matches!(
        k,
        FailoverEventKind::DatabaseFenced { replication_lag: Some(lag), synchronous: false, .. }
            if *lag == Duration::from_secs(3)
    )));
    // us-east's 40 % cannot go to eu-west and ap-south alone (they take at
    // most 52.5 + 37.5 %): the standby takes its sized share.
    assert_eq!(
        rig.weights().to_string(),
        "ap-south=25% eu-west=35% us-east=0% us-west=40%"
    );
    let names: Vec<&str> = events
        .iter()
        .map(|k| match k {
            FailoverEventKind::StandbyActivated { .. } => "standby",
            FailoverEventKind::TrafficMoved { .. } => "traffic",
            FailoverEventKind::DatabaseFenced { .. } => "fence",
            FailoverEventKind::DatabasePromoted { .. } => "promote",
            FailoverEventKind::FailoverDone { .. } => "done",
            _ => "",
        })
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(names, ["standby", "traffic", "fence", "promote", "done"]);
    // Timings, from the decision: traffic at once, the database after its
    // 2 s promotion.
    let after = |want: &str| {
        events.iter().find_map(|k| match (k, want) {
            (FailoverEventKind::TrafficMoved { after, .. }, "traffic") => Some(*after),
            (FailoverEventKind::DatabasePromoted { after, .. }, "promote") => Some(*after),
            _ => None,
        })
    };
    assert_eq!(after("traffic"), Some(Duration::ZERO));
    assert_eq!(after("promote"), Some(Duration::from_secs(2)));
    assert_eq!(
        rig.db
            .calls()
            .into_iter()
            .filter(|c| matches!(c, DatabaseCall::FencePrimary | DatabaseCall::PromoteStandby))
            .collect::<Vec<_>>(),
        [DatabaseCall::FencePrimary, DatabaseCall::PromoteStandby],
        "fence strictly before promote, once each"
    );
    let state = rig.stored();
    assert_eq!(state.activated, [n("us-west")]);
    assert_eq!(state.promotion.as_ref().unwrap().node, "db-standby");
    assert_eq!(state.fence.as_ref().unwrap().node, "db-primary");
    assert_eq!(rig.db.primary(), "db-standby");
    let sent = notifier.wait_for(1).await;
    assert_eq!(sent[0].summary, "checkout: failed over in 2s");
    assert_eq!(sent[0].severity, atlas_core::Severity::Critical);
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_database_trigger_fires_after_30_s_unreachable_and_not_after_20() {
    let rig = Rig::new();
    let c = rig.controller(policy());
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    // Unreachable on the checks at 10 s and 20 s, back before the one at 30 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.db.set_reachable(false);
    tokio::time::sleep(Duration::from_secs(20)).await;
    rig.db.set_reachable(true);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!moved(&drain(&mut rx)));
    assert_eq!(rig.db.fence(), None);

    rig.db.set_reachable(false);
    let fired = wait_for(&mut rx, "trigger", |k| {
        matches!(k, FailoverEventKind::TriggerFired { .. })
    })
    .await;
    let FailoverEventKind::TriggerFired {
        region,
        detected_after,
        trigger,
    } = fired.kind
    else {
        unreachable!()
    };
    assert_eq!(region, None, "the database trigger");
    assert_eq!(detected_after, Duration::from_secs(30));
    assert!(trigger.contains("unreachable for 30s"), "{trigger}");
    wait_for(&mut rx, "failover done", is_done).await;
    assert_eq!(
        rig.weights(),
        normal(),
        "a database failover moves no traffic"
    );
    assert_eq!(rig.db.fence().unwrap().method, "unreachable");
    assert!(rig.db.promotion().is_some());
    // Once promoted, the database is not switched again.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(rig.db.count(DatabaseCall::PromoteStandby), 1);
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn response_time_and_error_rate_fire_above_their_thresholds_only() {
    let rig = Rig::new();
    let c = rig.controller(policy());
    let mut rx = c.subscribe();
    let at = |v: f64| [(Duration::ZERO, v)];
    rig.metrics
        .set_query_series("response-time", "p95{region=\"eu-west\"}", at(4.9));
    rig.metrics
        .set_query_series("error-rate", "errors{region=\"ap-south\"}", at(0.009));
    let h = c.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(
        !moved(&drain(&mut rx)),
        "4.9 s and 0.9 % are below the thresholds"
    );

    rig.metrics
        .set_query_series("response-time", "p95{region=\"eu-west\"}", at(5.2));
    let e = wait_for(&mut rx, "trigger", |k| {
        matches!(k, FailoverEventKind::TriggerFired { .. })
    })
    .await;
    let FailoverEventKind::TriggerFired {
        region, trigger, ..
    } = e.kind
    else {
        unreachable!()
    };
    assert_eq!(region, Some(n("eu-west")));
    assert!(trigger.contains("response-time 5.2 above 5"), "{trigger}");
    wait_for(&mut rx, "failover done", is_done).await;

    rig.metrics
        .set_query_series("error-rate", "errors{region=\"ap-south\"}", at(0.02));
    let e = wait_for(&mut rx, "trigger", |k| {
        matches!(k, FailoverEventKind::TriggerFired { .. })
    })
    .await;
    let FailoverEventKind::TriggerFired {
        region, trigger, ..
    } = e.kind
    else {
        unreachable!()
    };
    assert_eq!(region, Some(n("ap-south")));
    assert!(trigger.contains("error-rate 0.02 above 0.01"), "{trigger}");
    wait_for(&mut rx, "failover done", is_done).await;
    // Only us-east is left among the active regions; it can take 60 %, so
    // the standby (sized for 40 %, able to take 60 %) shares the traffic.
    let w = rig.weights();
    assert_eq!(w.get(&n("eu-west")), 0);
    assert_eq!(w.get(&n("ap-south")), 0);
    assert_eq!(
        w.to_string(),
        "ap-south=0% eu-west=0% us-east=50% us-west=50%"
    );
    let queries = rig.metrics.queries();
    assert!(
        queries
            .iter()
            .any(|q| q.query.query == "p95{region=\"us-west\"}"
                && q.query.args["service"] == "checkout"
                && q.query.args["window"] == "60000ms"),
        "every region is queried with its own arguments"
    );
    h.stop().await.unwrap();
}

/// From the next check of `region` on, check `i` is healthy when
/// `healthy(i)`.
fn flap(rig: &Rig, region: &str, healthy: impl Fn(usize) -> bool) {
    let base = rig.probe.attempts(region) as usize;
    let outcomes = (0..base + 1000)
        .map(|i| {
            if i < base || healthy(i - base) {
                ProbeOutcome::Healthy
            } else {
                ProbeOutcome::unhealthy("flap")
            }
        })
        .collect();
    rig.probe.script(region, ProbeScript::Sequence(outcomes));
}

#[tokio::test(start_paused = true)]
async fn flapping_health_neither_fails_over_nor_fails_back() {
    let rig = Rig::new();
    let mut p = policy();
    p.failback = Failback::Automatic {
        healthy_for: Duration::from_secs(60),
    };
    let c = rig.controller(p);
    let mut rx = c.subscribe();
    // Two bad checks, one good, for an hour: never 3 in a row.
    flap(&rig, "eu-west", |i| i % 3 == 2);
    let h = c.start().await.unwrap();
    tokio::time::sleep(HOUR).await;
    assert!(
        !moved(&drain(&mut rx)),
        "a flapping region must not fail over"
    );
    assert_eq!(rig.router.history(&rig.svc), [normal()]);

    // Now it fails, then flaps the other way: two good checks, one bad.
    rig.fail("eu-west");
    wait_for(&mut rx, "failover done", is_done).await;
    flap(&rig, "eu-west", |i| i % 3 != 2);
    tokio::time::sleep(HOUR).await;
    let events = drain(&mut rx);
    assert!(
        !events
            .iter()
            .any(|k| matches!(k, FailoverEventKind::FailbackStarted { .. })),
        "a flapping region must not fail back: {events:?}"
    );
    assert!(rig.stored().failed.contains_key(&n("eu-west")));
    assert_eq!(
        rig.router.history(&rig.svc).len(),
        2,
        "normal, then failed over"
    );
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn automatic_failback_after_the_healthy_period_restores_normal_weights() {
    let rig = Rig::new();
    let c = rig.controller(policy()); // automatic after 5 minutes
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    rig.fail("us-east");
    wait_for(&mut rx, "failover done", is_done).await;
    let failed_over = tokio::time::Instant::now();
    rig.heal("us-east");
    let recovered = wait_for(&mut rx, "recovered", |k| {
        matches!(k, FailoverEventKind::RegionRecovered { .. })
    })
    .await;
    assert_eq!(
        recovered.kind,
        FailoverEventKind::RegionRecovered {
            region: n("us-east")
        }
    );
    let done = wait_for(&mut rx, "failback done", |k| {
        matches!(k, FailoverEventKind::FailbackDone { .. })
    })
    .await;
    let waited = failed_over.elapsed();
    assert!(
        waited >= Duration::from_secs(300) && waited <= Duration::from_secs(320),
        "failback after about 5 minutes healthy, took {waited:?}"
    );
    let FailoverEventKind::FailbackDone { weights, .. } = done.kind else {
        unreachable!()
    };
    assert_eq!(weights, normal());
    assert_eq!(rig.weights(), normal());
    let state = rig.stored();
    assert!(state.failed.is_empty());
    assert!(state.activated.is_empty(), "the standby is released");
    assert_eq!(state.in_progress, None);
    // The database stays on the promoted standby.
    assert!(state.promotion.is_some());
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn manual_failback_waits_for_the_call() {
    let rig = Rig::new();
    let mut p = policy();
    p.failback = Failback::Manual;
    let c = rig.controller(p);
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();

    let e = h.failback(&n("eu-west")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Precondition);
    assert!(e.to_string().contains("has not failed over"), "{e}");

    rig.fail("eu-west");
    wait_for(&mut rx, "failover done", is_done).await;
    let e = h.failback(&n("eu-west")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Precondition);
    assert!(e.to_string().contains("0 of the 3"), "{e}");

    rig.heal("eu-west");
    tokio::time::sleep(HOUR).await;
    assert!(
        rig.stored().failed.contains_key(&n("eu-west")),
        "no automatic failback under a manual policy"
    );
    assert!(
        drain(&mut rx)
            .iter()
            .any(|k| matches!(k, FailoverEventKind::RegionRecovered { .. }))
    );
    h.failback(&n("eu-west")).await.unwrap();
    assert_eq!(rig.weights(), normal());
    assert!(rig.stored().failed.is_empty());
    h.stop().await.unwrap();
}

/// A controller stopped by a failed store write after `n` successful ones,
/// during a failover of the primary region; a new controller on the same
/// store finishes it exactly once.
async fn crash_at_write(writes: u64) {
    let rig = Rig::new();
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::backend("store crashed"))
            .on(COMPARE_AND_SWAP_FAILOVER)
            .after_successes(writes),
    )
    .unwrap();
    let faulty = Arc::new(plan.wrap(rig.store.clone()));
    let first = rig
        .builder(policy())
        .failover_store(faulty.clone())
        .lease_store(faulty)
        .build()
        .unwrap();
    let h = first.start().await.unwrap();
    rig.fail("us-east");
    let err = tokio::time::timeout(HOUR, h.wait())
        .await
        .expect("the store fault stops the controller")
        .unwrap_err();
    assert!(err.to_string().contains("store crashed"), "{writes}: {err}");
    let fenced_before = rig.stored().fence.is_some();
    let promoted_before = rig.stored().promotion.is_some();

    let second = rig.controller(policy());
    let mut rx = second.subscribe();
    let h = second.start().await.unwrap();
    // Whatever was left: done once the state has nothing in progress and
    // the region is recorded as failed.
    tokio::time::timeout(HOUR, async {
        loop {
            let s = rig.stored();
            if s.in_progress.is_none() && s.failed.contains_key(&n("us-east")) {
                break;
            }
            let _ = rx.recv().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("crash after {writes} writes: the new controller did not finish"));
    let s = rig.stored();
    assert_eq!(
        rig.weights().to_string(),
        "ap-south=25% eu-west=35% us-east=0% us-west=40%",
        "crash after {writes} writes"
    );
    assert_eq!(s.weights, rig.weights());
    assert!(
        s.fence.is_some() && s.promotion.is_some(),
        "crash after {writes} writes"
    );
    let calls: Vec<DatabaseCall> = rig
        .db
        .calls()
        .into_iter()
        .filter(|c| matches!(c, DatabaseCall::FencePrimary | DatabaseCall::PromoteStandby))
        .collect();
    let first_promote = calls
        .iter()
        .position(|c| *c == DatabaseCall::PromoteStandby);
    let first_fence = calls.iter().position(|c| *c == DatabaseCall::FencePrimary);
    assert!(
        first_fence < first_promote,
        "crash after {writes}: {calls:?}"
    );
    let fences = rig.db.count(DatabaseCall::FencePrimary);
    let promotions = rig.db.count(DatabaseCall::PromoteStandby);
    if fenced_before {
        assert_eq!(
            fences, 1,
            "crash after {writes}: a recorded fence is not repeated"
        );
    } else {
        assert!(fences <= 2, "crash after {writes}: {calls:?}");
    }
    if promoted_before {
        assert_eq!(
            promotions, 1,
            "crash after {writes}: a recorded promotion is not repeated"
        );
    } else {
        assert!(promotions <= 2, "crash after {writes}: {calls:?}");
    }
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_controller_crashing_at_any_store_write_is_finished_by_the_next() {
    // Writes: 1 the first state, 2 the decision, 3 the fence, 4 the
    // promotion, 5 the end of the change; `writes` succeed, the next fails.
    for writes in 1..=4 {
        crash_at_write(writes).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_router_or_fence_is_retried_at_the_next_check() {
    let rig = Rig::new();
    let plan = FaultPlan::new();
    // Call 1 applies the normal weights at start; call 2 is the failover.
    plan.add(
        // Not transient: not retried on the spot, so the next check does.
        Fault::fail(FaultError::backend("dns api refused the change"))
            .on(SET_REGION_WEIGHTS)
            .nth_call(2),
    )
    .unwrap();
    plan.add(
        Fault::fail(FaultError::transient("ssh timeout"))
            .on(FENCE_PRIMARY)
            .nth_call(1),
    )
    .unwrap();
    let c = rig
        .builder(policy())
        .router(Arc::new(plan.wrap(rig.router.clone())))
        .database(Arc::new(plan.wrap(rig.db.clone())))
        .build()
        .unwrap();
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    rig.fail("us-east");
    let failures: Vec<String> = collect_until(&mut rx, "failover done", is_done)
        .await
        .into_iter()
        .filter_map(|k| match k {
            FailoverEventKind::ActionFailed { action, .. } => Some(action),
            _ => None,
        })
        .collect();
    assert_eq!(failures, ["set region weights", "fence primary"]);
    assert_eq!(rig.stored().in_progress, None);
    assert_eq!(
        rig.db
            .calls()
            .into_iter()
            .filter(|c| matches!(c, DatabaseCall::FencePrimary | DatabaseCall::PromoteStandby))
            .collect::<Vec<_>>(),
        [DatabaseCall::FencePrimary, DatabaseCall::PromoteStandby],
        "no promotion was tried before the fence succeeded (the failed fence never reached the mock)"
    );
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_router_and_store_failures_are_retried_on_the_spot() {
    let rig = Rig::new();
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("dns api 503"))
            .on(SET_REGION_WEIGHTS)
            .nth_call(2),
    )
    .unwrap();
    // The decision's write is lost on the way back: it landed, the
    // controller is told it failed, and reads it back instead of failing
    // on its own write.
    plan.add(
        Fault::lose_response(FaultError::transient("connection reset"))
            .on(COMPARE_AND_SWAP_FAILOVER)
            .nth_call(2),
    )
    .unwrap();
    let faulty = Arc::new(plan.wrap(rig.store.clone()));
    let c = rig
        .builder(policy())
        .router(Arc::new(plan.wrap(rig.router.clone())))
        .failover_store(faulty.clone())
        .lease_store(faulty)
        .build()
        .unwrap();
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    rig.fail("us-east");
    let events = collect_until(&mut rx, "failover done", is_done).await;
    assert!(
        !events
            .iter()
            .any(|k| matches!(k, FailoverEventKind::ActionFailed { .. })),
        "{events:?}"
    );
    assert_eq!(plan.counts(SET_REGION_WEIGHTS).injected, 1);
    assert_eq!(plan.counts(COMPARE_AND_SWAP_FAILOVER).injected, 1);
    assert_eq!(rig.weights().get(&n("us-east")), 0);
    assert_eq!(rig.stored().in_progress, None);
    assert!(!h.is_finished());
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_aborted_controller_is_resumed_after_its_lease_expires() {
    let rig = Rig::new();
    let plan = FaultPlan::new();
    // The router fails every failover call until the controller dies.
    plan.add(
        Fault::fail(FaultError::backend("router down"))
            .on(SET_REGION_WEIGHTS)
            .after_calls(1),
    )
    .unwrap();
    let first = rig
        .builder(policy())
        .router(Arc::new(plan.wrap(rig.router.clone())))
        .build()
        .unwrap();
    let mut rx = first.subscribe();
    let h = first.start().await.unwrap();
    rig.fail("us-east");
    wait_for(&mut rx, "a failed action", |k| {
        matches!(k, FailoverEventKind::ActionFailed { .. })
    })
    .await;
    h.abort(); // a crash: the lease is not released
    assert!(rig.stored().in_progress.is_some());
    assert_eq!(rig.weights(), normal());

    let second = rig.controller(policy());
    let e = second.start().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let mut rx = second.subscribe();
    let h = second.start().await.unwrap();
    let started = wait_for(&mut rx, "started", |k| {
        matches!(k, FailoverEventKind::Started { .. })
    })
    .await;
    assert!(matches!(
        started.kind,
        FailoverEventKind::Started {
            resumed: true,
            unfinished: true,
            ..
        }
    ));
    wait_for(&mut rx, "failover done", is_done).await;
    assert_eq!(rig.weights().get(&n("us-east")), 0);
    assert_eq!(rig.db.count(DatabaseCall::FencePrimary), 1);
    assert_eq!(rig.db.count(DatabaseCall::PromoteStandby), 1);
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_resumed_change_skips_the_recorded_fence() {
    let rig = Rig::new();
    // What a controller that crashed right after recording the fence left.
    rig.db.set_reachable(false);
    let fence = rig.db.fence_primary("us-east failed").await.unwrap();
    let mut state = FailoverState::new(
        RegionWeights::new([
            (n("us-east"), 0),
            (n("eu-west"), 35),
            (n("ap-south"), 25),
            (n("us-west"), 40),
        ])
        .unwrap(),
    );
    state.fence = Some(fence);
    state.in_progress = Some(Transition {
        kind: TransitionKind::Failover,
        reason: "us-east: 3 consecutive failed health checks".into(),
        started: std::time::SystemTime::now(),
        database: true,
    });
    rig.store
        .compare_and_swap_failover(&rig.svc, None, &state)
        .await
        .unwrap();
    let c = rig.controller(policy());
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    wait_for(&mut rx, "failover done", is_done).await;
    assert_eq!(
        rig.db.count(DatabaseCall::FencePrimary),
        1,
        "not fenced again"
    );
    assert_eq!(rig.db.count(DatabaseCall::PromoteStandby), 1);
    assert_eq!(rig.weights(), state.weights, "weights applied again");
    assert_eq!(rig.stored().in_progress, None);
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_database_that_forgot_the_recorded_fence_is_fenced_again_before_promotion() {
    let rig = Rig::new();
    // The fence is recorded in the state, but the database adapter was
    // restarted and keeps its fence in memory: it refuses to promote.
    let mut state = FailoverState::new(
        RegionWeights::new([
            (n("us-east"), 0),
            (n("eu-west"), 35),
            (n("ap-south"), 25),
            (n("us-west"), 40),
        ])
        .unwrap(),
    );
    state.fence = Some(MockDatabase::new().fence_primary("earlier").await.unwrap());
    state.in_progress = Some(Transition {
        kind: TransitionKind::Failover,
        reason: "us-east: 3 consecutive failed health checks".into(),
        started: std::time::SystemTime::now(),
        database: true,
    });
    rig.store
        .compare_and_swap_failover(&rig.svc, None, &state)
        .await
        .unwrap();
    let c = rig.controller(policy());
    let mut rx = c.subscribe();
    let h = c.start().await.unwrap();
    wait_for(&mut rx, "failover done", is_done).await;
    assert_eq!(
        rig.db
            .calls()
            .into_iter()
            .filter(|c| matches!(c, DatabaseCall::FencePrimary | DatabaseCall::PromoteStandby))
            .collect::<Vec<_>>(),
        [
            DatabaseCall::PromoteStandby,
            DatabaseCall::FencePrimary,
            DatabaseCall::PromoteStandby
        ],
        "refused, fenced again, promoted"
    );
    assert!(rig.db.promotion().is_some());
    assert_eq!(
        rig.stored().fence,
        state.fence,
        "the recorded fence is kept"
    );
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn two_controllers_racing_for_one_service_one_wins() {
    let rig = Rig::new();
    let a = rig.controller(policy());
    let b = rig.controller(policy());
    let (ra, rb) = tokio::join!(a.start(), b.start());
    let (winner, winner_id, loser_err, loser) = match (ra, rb) {
        (Ok(h), Err(e)) => (h, a.id(), e, &b),
        (Err(e), Ok(h)) => (h, b.id(), e, &a),
        (ra, rb) => panic!("exactly one must win: {ra:?} / {rb:?}"),
    };
    assert_eq!(loser_err.kind(), ErrorKind::Conflict);
    assert!(
        loser_err.to_string().contains("lease on checkout-failover"),
        "{loser_err}"
    );
    assert!(loser_err.to_string().contains(winner_id), "{loser_err}");
    assert_eq!(
        rig.store
            .lease_holder(&ServiceName::new("checkout-failover").unwrap())
            .as_deref(),
        Some(winner_id)
    );
    // Only the winner acts: the first state is written once.
    rig.fail("us-east");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        rig.router.history(&rig.svc).len(),
        2,
        "normal, then failed over once"
    );
    // The loser takes over once the winner stops.
    winner.stop().await.unwrap();
    let h = loser.start().await.unwrap();
    h.stop().await.unwrap();
    // The rollout engine's lease on the service itself is untouched.
    assert_eq!(rig.store.lease_holder(&rig.svc), None);
}

#[tokio::test]
async fn builder_refuses_what_cannot_work() {
    let rig = Rig::new();
    let long = ServiceName::new("a".repeat(55)).unwrap();
    let e = rig.builder(policy()).service(long).build().unwrap_err();
    assert!(e.to_string().contains("failover.service"), "{e}");
    let e = FailoverController::builder()
        .service(rig.svc.clone())
        .regions(regions())
        .router(Arc::new(rig.router.clone()))
        .store(Arc::new(rig.store.clone()))
        .probe(Arc::new(rig.probe.clone()))
        .metrics(Arc::new(rig.metrics.clone()))
        .database(Arc::new(rig.db.clone()))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("failover.endpoints."), "{e}");
    let mut p = policy();
    p.metrics.clear();
    let e = rig
        .builder(p)
        .database_region(n("mars"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("failover.database_region"), "{e}");
    let e = FailoverController::builder()
        .service(rig.svc.clone())
        .regions(regions())
        .policy(FailoverPolicy::specification())
        .router(Arc::new(rig.router.clone()))
        .store(Arc::new(rig.store.clone()))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("failover.probe"), "{e}");
    // Nothing was touched by the refused builds.
    assert!(rig.router.region_weights(&rig.svc).await.unwrap().is_none());
    assert!(rig.store.load_failover(&rig.svc).await.unwrap().is_none());
}
