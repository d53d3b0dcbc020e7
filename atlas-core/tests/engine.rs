//! The engine against the mock adapters, under tokio's paused clock: happy
//! paths, every abort cause, steering from the handle, two engines on one
//! service, and crash-resume as a property.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::analysis::AnalysisMetric;
use atlas_core::hooks::{HookContext, HookPoint, RolloutHook};
use atlas_core::retry::RetryConfig;
use atlas_core::testing::{
    CollectingNotifier, Fault, FaultError, FaultPlan, MemoryDriver, MemoryStateStore, Method,
    MockWorkloads, ProbeKey, ProbeScript, RecordingRouter, RouterCall, ScriptedMetrics,
    ScriptedProbe,
};
use atlas_core::{
    AnalysisTemplate, BlueGreen, Canary, CanaryStep, Engine, ErrorKind, EventKind, Measurement,
    MetricProvider, MetricQuery, Outcome, Phase, PlanFingerprint, Release, Rollout, RolloutEvent,
    RolloutState, ServiceName, Slot, StateStore, Step, Strategy, TrafficRouter, TrafficSplit,
    Versioned, Weight, Workloads,
};
use proptest::prelude::*;
use tokio::sync::broadcast;

const LEASE_TTL: Duration = Duration::from_secs(15);

/// v1 runs in blue with all traffic; v2 is rolled out to green.
#[derive(Clone)]
struct World {
    svc: ServiceName,
    workloads: MockWorkloads,
    router: RecordingRouter,
    probe: ScriptedProbe,
    store: MemoryStateStore,
    notifier: CollectingNotifier,
}

impl World {
    async fn new() -> World {
        let w = World {
            svc: ServiceName::new("checkout").unwrap(),
            workloads: MockWorkloads::new().with_ready_delay(Duration::from_secs(5)),
            router: RecordingRouter::new(),
            probe: ScriptedProbe::new(),
            store: MemoryStateStore::new(),
            notifier: CollectingNotifier::new(),
        };
        w.workloads
            .deploy(&w.svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
            .await
            .unwrap();
        w.router
            .set_split(&w.svc, &TrafficSplit::all_to(Slot::Blue))
            .await
            .unwrap();
        w
    }

    fn engine_with(&self, metrics: Arc<dyn MetricProvider>, store: Arc<dyn StateStore>) -> Engine {
        Engine::builder()
            .workloads(Arc::new(self.workloads.clone()))
            .router(Arc::new(self.router.clone()))
            .probe(Arc::new(self.probe.clone()))
            .metrics(metrics)
            .store(store)
            .notifier(Arc::new(self.notifier.clone()))
            .lease_ttl(LEASE_TTL)
            .build()
            .unwrap()
    }

    fn engine(&self, metrics: Arc<dyn MetricProvider>) -> Engine {
        self.engine_with(metrics, Arc::new(self.store.clone()))
    }

    /// Canary weights (green's share) of every split set, in order.
    fn green_weights(&self) -> Vec<u8> {
        self.router
            .splits(&self.svc)
            .iter()
            .map(|s| s.weight_of(Slot::Green).percent())
            .collect()
    }

    fn set_split_calls(&self) -> usize {
        self.router
            .calls()
            .iter()
            .filter(|c| matches!(c, RouterCall::SetSplit { .. }))
            .count()
    }

    /// 100 % blue, green scaled to zero, v1 untouched, and the return to
    /// blue was exactly one router call after the last forward split.
    fn assert_rolled_back(&self) {
        let splits = self.router.splits(&self.svc);
        assert_eq!(
            splits.last(),
            Some(&TrafficSplit::all_to(Slot::Blue)),
            "all traffic back on stable: {splits:?}"
        );
        let returns = splits
            .iter()
            .skip(1)
            .filter(|s| s.is_all_to(Slot::Blue))
            .count();
        assert_eq!(returns, 1, "one router call returns traffic: {splits:?}");
        // Traffic leaves the new slot before its endpoints are drained.
        let calls = self.router.calls();
        let returned = calls
            .iter()
            .rposition(
                |c| matches!(c, RouterCall::SetSplit { split, .. } if split.is_all_to(Slot::Blue)),
            )
            .unwrap();
        let drained = calls
            .iter()
            .rposition(|c| matches!(c, RouterCall::SetEndpoints { slot: Slot::Green, endpoints, .. } if endpoints.is_empty()))
            .expect("new slot drained");
        assert!(
            returned < drained,
            "traffic returned before the drain: {calls:?}"
        );
        assert_eq!(
            self.workloads.replicas(&self.svc, Slot::Green),
            0,
            "new slot scaled down"
        );
        assert_eq!(
            self.workloads.replicas(&self.svc, Slot::Blue),
            2,
            "stable untouched"
        );
        assert_eq!(
            self.workloads.version(&self.svc, Slot::Blue).as_deref(),
            Some("v1")
        );
        let state = self.store.state(&self.svc).expect("state persisted");
        assert!(
            matches!(state.phase, Phase::RolledBack { .. }),
            "{:?}",
            state.phase
        );
    }

    fn assert_promoted(&self, replicas: u32) {
        assert_eq!(
            self.router.current(&self.svc),
            Some(TrafficSplit::all_to(Slot::Green))
        );
        assert_eq!(self.workloads.replicas(&self.svc, Slot::Green), replicas);
        assert_eq!(
            self.workloads.version(&self.svc, Slot::Green).as_deref(),
            Some("v2")
        );
        assert_eq!(
            self.workloads.replicas(&self.svc, Slot::Blue),
            0,
            "old slot scaled down"
        );
        assert_eq!(self.store.state(&self.svc).unwrap().phase, Phase::Promoted);
    }
}

fn health() -> AnalysisTemplate {
    AnalysisTemplate::new(
        "health",
        vec![
            AnalysisMetric::new("error-rate", "error_rate{slot=\"{{canary}}\"}")
                .success("< 0.01".parse().unwrap())
                .every(Duration::from_secs(10), 3),
        ],
    )
}

fn blue_green(svc: &ServiceName) -> Rollout {
    Rollout::new(
        svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::BlueGreen(BlueGreen::new(2).with_step_analysis("health")),
    )
    .with_analysis(health())
}

/// A canary whose error rate is bad once it has `bad_at` % of traffic (or
/// never): reads the split the router holds, like a real metric would
/// reflect the traffic the canary gets.
struct ErrorRateByWeight {
    router: RecordingRouter,
    svc: ServiceName,
    bad_at: Option<u8>,
}

#[async_trait]
impl MetricProvider for ErrorRateByWeight {
    async fn measure(&self, _: &MetricQuery) -> atlas_core::Result<Measurement> {
        let weight = self
            .router
            .current(&self.svc)
            .map(|s| s.weight_of(Slot::Green).percent());
        Ok(Measurement::Value(
            if weight.is_some() && weight == self.bad_at {
                0.2
            } else {
                0.001
            },
        ))
    }
}

fn metrics_bad_at(w: &World, bad_at: Option<u8>) -> Arc<dyn MetricProvider> {
    Arc::new(ErrorRateByWeight {
        router: w.router.clone(),
        svc: w.svc.clone(),
        bad_at,
    })
}

async fn next_event(
    rx: &mut broadcast::Receiver<RolloutEvent>,
    pred: impl Fn(&EventKind) -> bool,
) -> RolloutEvent {
    loop {
        let e = rx.recv().await.expect("event stream open");
        if pred(&e.kind) {
            return e;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn blue_green_happy_path_shifts_5_25_50_75_100_and_scales_old_down() {
    let w = World::new().await;
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let started = tokio::time::Instant::now();
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(w.green_weights(), [0, 5, 25, 50, 75, 100, 100]);
    w.assert_promoted(2);
    // Probed before traffic, endpoints handed to the router before the first split.
    let calls = w.router.calls();
    let first_endpoints = calls
        .iter()
        .position(|c| {
            matches!(
                c,
                RouterCall::SetEndpoints {
                    slot: Slot::Green,
                    ..
                }
            )
        })
        .unwrap();
    let first_canary = calls.iter().position(|c| matches!(c, RouterCall::SetSplit { split, .. } if split.canary_weight().percent() == 5)).unwrap();
    assert!(first_endpoints < first_canary);
    // Analysis ran 4 times (after 5, 25, 50, 75) × 3 measurements 10 s apart,
    // plus the 30 s scale-down delay: at least 4 × 20 s + 30 s.
    assert!(
        started.elapsed() >= Duration::from_secs(110),
        "{:?}",
        started.elapsed()
    );
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e.kind);
    }
    let measured = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::AnalysisMeasured { .. }))
        .count();
    assert_eq!(measured, 12);
    assert!(matches!(
        kinds.first(),
        Some(EventKind::Started { resumed: false, .. })
    ));
    assert!(matches!(kinds.last(), Some(EventKind::Promoted { version }) if version == "v2"));
    assert_eq!(
        w.notifier.wait_for(1).await[0].summary,
        "checkout: promoted v2"
    );
}

#[tokio::test(start_paused = true)]
async fn canary_happy_path_follows_its_steps_and_scales_with_weight() {
    let w = World::new().await;
    let rollout = Rollout::new(
        w.svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::Canary(Canary::new(
            10,
            vec![
                CanaryStep::SetWeight(Weight::new(20).unwrap()),
                CanaryStep::Pause(Some(Duration::from_secs(60))),
                CanaryStep::Analysis("health".into()),
                CanaryStep::SetWeight(Weight::new(50).unwrap()),
                CanaryStep::Analysis("health".into()),
            ],
        )),
    )
    .with_analysis(health());
    let engine = w.engine(metrics_bad_at(&w, None));
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(w.green_weights(), [0, 20, 50, 100, 100]);
    w.assert_promoted(10);
    let green_scales: Vec<u32> = w
        .workloads
        .changes()
        .into_iter()
        .filter_map(|c| match c {
            atlas_core::testing::WorkloadsCall::Deploy {
                slot: Slot::Green,
                replicas,
                ..
            }
            | atlas_core::testing::WorkloadsCall::Scale {
                slot: Slot::Green,
                replicas,
                ..
            } => Some(replicas),
            _ => None,
        })
        .collect();
    assert_eq!(
        green_scales,
        [2, 5, 10],
        "canary scales 20 % -> 50 % -> full"
    );
}

#[tokio::test(start_paused = true)]
async fn first_release_of_a_service_goes_straight_to_full() {
    let w = World::new().await;
    let fresh = ServiceName::new("fresh").unwrap();
    let engine = w.engine(metrics_bad_at(&w, None));
    let rollout = Rollout::new(
        fresh.clone(),
        Release::new("v1", "fresh:v1"),
        Strategy::BlueGreen(BlueGreen::new(1).with_step_analysis("health")),
    )
    .with_analysis(health());
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v1".into()
        }
    );
    assert_eq!(
        w.router.current(&fresh),
        Some(TrafficSplit::all_to(Slot::Blue))
    );
    assert_eq!(
        w.workloads.version(&fresh, Slot::Blue).as_deref(),
        Some("v1")
    );
    let state = w.store.state(&fresh).unwrap();
    assert!(state.initial);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_before_any_traffic_rolls_back() {
    let w = World::new().await;
    w.probe.script(
        ProbeKey::Replica("checkout-green-1".into()),
        ProbeScript::Failing("connection refused".into()),
    );
    let engine = w.engine(metrics_bad_at(&w, None));
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected rollback")
    };
    assert!(
        reason.contains("probe failed") && reason.contains("checkout-green-1"),
        "{reason}"
    );
    assert_eq!(w.green_weights(), [0, 0], "no traffic ever reached green");
    assert_eq!(
        w.probe
            .attempts(ProbeKey::Replica("checkout-green-1".into())),
        3,
        "failure threshold"
    );
    w.assert_rolled_back();
}

#[tokio::test(start_paused = true)]
async fn analysis_failure_at_each_weight_rolls_back_in_one_call() {
    for bad_at in [5u8, 25, 50, 75] {
        let w = World::new().await;
        let engine = w.engine(metrics_bad_at(&w, Some(bad_at)));
        let outcome = engine
            .start(blue_green(&w.svc))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        let Outcome::RolledBack { reason } = outcome else {
            panic!("expected rollback at {bad_at}")
        };
        assert!(reason.contains("analysis health failed"), "{reason}");
        let expected: Vec<u8> = [0u8]
            .into_iter()
            .chain([5u8, 25, 50, 75].into_iter().take_while(|x| *x <= bad_at))
            .chain([0])
            .collect();
        assert_eq!(w.green_weights(), expected, "bad at {bad_at}");
        w.assert_rolled_back();
        let notes = w.notifier.wait_for(1).await;
        assert_eq!(notes[0].severity, atlas_core::Severity::Critical);
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_past_the_progress_deadline_rolls_back() {
    let w = World::new().await;
    w.workloads.never_ready("v2");
    let engine = w.engine(metrics_bad_at(&w, None));
    let started = tokio::time::Instant::now();
    let rollout = blue_green(&w.svc).with_progress_deadline(Duration::from_secs(120));
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected rollback")
    };
    assert!(
        reason.contains("deadline exceeded") && reason.contains("deploy"),
        "{reason}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(120) && took < Duration::from_secs(130),
        "{took:?}"
    );
    w.assert_rolled_back();
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_fails_rolls_back() {
    let w = World::new().await;
    w.workloads.fail_version("v2", "exited with status 3");
    let engine = w.engine(metrics_bad_at(&w, None));
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected rollback")
    };
    assert!(reason.contains("exited with status 3"), "{reason}");
    w.assert_rolled_back();
}

#[tokio::test(start_paused = true)]
async fn manual_abort_mid_rollout_returns_traffic_in_one_call() {
    let w = World::new().await;
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let handle = engine.start(blue_green(&w.svc)).await.unwrap();
    next_event(&mut events, |k| matches!(k, EventKind::WeightChanged { split } if split.canary_weight().percent() == 25)).await;
    handle.abort().unwrap();
    let outcome = handle.wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            reason: "aborted by user".into()
        }
    );
    assert_eq!(w.green_weights(), [0, 5, 25, 0]);
    w.assert_rolled_back();
    // The decision is announced before the traffic moves, then the end.
    let mut after_25 = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e.kind {
            EventKind::Aborted { .. } => after_25.push("aborted"),
            EventKind::WeightChanged { split } if split.is_all_to(Slot::Blue) => {
                after_25.push("returned")
            }
            EventKind::RolledBack { .. } => after_25.push("rolled back"),
            _ => {}
        }
    }
    assert_eq!(after_25, ["aborted", "returned", "rolled back"]);
}

#[tokio::test(start_paused = true)]
async fn abort_during_deploy_stops_the_deploy_and_rolls_back() {
    let w = World::new().await;
    w.workloads.set_ready_delay(Duration::from_secs(3600));
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let handle = engine.start(blue_green(&w.svc)).await.unwrap();
    next_event(&mut events, |k| {
        matches!(
            k,
            EventKind::StepStarted {
                step: Step::Deploy { .. },
                ..
            }
        )
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    handle.abort().unwrap();
    assert!(matches!(
        handle.wait().await.unwrap(),
        Outcome::RolledBack { .. }
    ));
    assert_eq!(w.green_weights(), [0, 0]);
    w.assert_rolled_back();
}

#[tokio::test(start_paused = true)]
async fn pause_during_analysis_holds_traffic_until_resumed() {
    let w = World::new().await;
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let handle = engine.start(blue_green(&w.svc)).await.unwrap();
    next_event(&mut events, |k| {
        matches!(k, EventKind::AnalysisMeasured { .. })
    })
    .await;
    handle.pause().unwrap();
    next_event(&mut events, |k| matches!(k, EventKind::Paused { .. })).await;
    assert!(handle.state().paused);
    let splits_when_paused = w.set_split_calls();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        w.set_split_calls(),
        splits_when_paused,
        "nothing moves while paused"
    );
    assert_eq!(
        w.router.current(&w.svc).unwrap().canary_weight().percent(),
        5
    );
    handle.resume().unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(2);
}

#[tokio::test(start_paused = true)]
async fn promote_ends_a_pause_until_promoted() {
    let w = World::new().await;
    let rollout = Rollout::new(
        w.svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::Canary(Canary::new(
            2,
            vec![
                CanaryStep::SetWeight(Weight::new(10).unwrap()),
                CanaryStep::Pause(None),
            ],
        )),
    );
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let handle = engine.start(rollout).await.unwrap();
    next_event(&mut events, |k| matches!(k, EventKind::Paused { .. })).await;
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert_eq!(
        w.router.current(&w.svc).unwrap().canary_weight().percent(),
        10,
        "waits for a human"
    );
    // Resume alone does not pass a pause step; promote does.
    handle.resume().unwrap();
    next_event(&mut events, |k| matches!(k, EventKind::Paused { .. })).await;
    handle.promote().unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(2);
}

#[tokio::test(start_paused = true)]
async fn promote_full_during_analysis_skips_to_full_traffic() {
    let w = World::new().await;
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let handle = engine.start(blue_green(&w.svc)).await.unwrap();
    next_event(&mut events, |k| {
        matches!(k, EventKind::AnalysisMeasured { .. })
    })
    .await;
    handle.promote_full().unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(w.green_weights(), [0, 5, 100, 100]);
    w.assert_promoted(2);
}

#[tokio::test(start_paused = true)]
async fn inconclusive_analysis_pauses_until_promoted() {
    let w = World::new().await;
    let metrics = ScriptedMetrics::new();
    metrics.set_no_data("error-rate");
    let engine = w.engine(Arc::new(metrics.clone()));
    let mut events = engine.subscribe();
    let handle = engine.start(blue_green(&w.svc)).await.unwrap();
    let paused = next_event(&mut events, |k| matches!(k, EventKind::Paused { .. })).await;
    let EventKind::Paused { reason } = paused.kind else {
        unreachable!()
    };
    assert!(reason.contains("inconclusive"), "{reason}");
    assert_eq!(
        w.router.current(&w.svc).unwrap().canary_weight().percent(),
        5,
        "no data never passes"
    );
    metrics.set_constant("error-rate", 0.0);
    handle.promote().unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(2);
}

#[tokio::test(start_paused = true)]
async fn abort_after_promotion_is_ignored() {
    let w = World::new().await;
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut events = engine.subscribe();
    let handle = engine.start(blue_green(&w.svc)).await.unwrap();
    next_event(&mut events, |k| {
        matches!(
            k,
            EventKind::StepStarted {
                step: Step::ScaleDownOld { .. },
                ..
            }
        )
    })
    .await;
    handle.abort().unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(2);
}

#[tokio::test(start_paused = true)]
async fn a_second_engine_on_the_same_service_is_refused() {
    let w = World::new().await;
    let first = w.engine(metrics_bad_at(&w, None));
    let second = w.engine(metrics_bad_at(&w, None));
    let handle = first.start(blue_green(&w.svc)).await.unwrap();
    let err = second.start(blue_green(&w.svc)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("checkout"), "{err}");
    let err = second.resume(&w.svc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Long past the lease ttl the first engine still holds it: it renews.
    tokio::time::sleep(LEASE_TTL * 4).await;
    assert_eq!(
        second.start(blue_green(&w.svc)).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    // Once finished, the lease is free and a new rollout may start.
    assert!(second.resume(&w.svc).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_transient_router_error_is_retried() {
    let w = World::new().await;
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("503 from router"))
            .on(Method::SET_SPLIT)
            .nth_call(2),
    )
    .unwrap();
    let engine = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(plan.wrap(w.router.clone())))
        .probe(Arc::new(w.probe.clone()))
        .metrics(metrics_bad_at(&w, None))
        .store(Arc::new(w.store.clone()))
        .build()
        .unwrap();
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(plan.calls(Method::SET_SPLIT), 7, "6 splits + 1 retry");
}

#[tokio::test(start_paused = true)]
async fn with_retries_off_a_transient_router_error_fails_the_step() {
    let w = World::new().await;
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::transient("503 from router"))
            .on(Method::SET_SPLIT)
            .nth_call(2),
    )
    .unwrap();
    let engine = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(plan.wrap(w.router.clone())))
        .probe(Arc::new(w.probe.clone()))
        .metrics(metrics_bad_at(&w, None))
        .store(Arc::new(w.store.clone()))
        .retry(RetryConfig::no_retries())
        .build()
        .unwrap();
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}")
    };
    assert!(reason.contains("503 from router"), "{reason}");
    w.assert_rolled_back();
}

#[tokio::test(start_paused = true)]
async fn transient_state_store_errors_are_retried() {
    let w = World::new().await;
    let plan = FaultPlan::new();
    for method in [Method::ACQUIRE_LEASE, Method::LOAD, Method::RENEW_LEASE] {
        plan.add(
            Fault::fail(FaultError::transient("store unavailable"))
                .on(method)
                .nth_call(1),
        )
        .unwrap();
    }
    // A lost write: it lands, the engine hears a transient error.
    plan.add(
        Fault::lose_response(FaultError::transient("connection reset"))
            .on(Method::COMPARE_AND_SWAP)
            .nth_call(3),
    )
    .unwrap();
    let engine = w.engine_with(
        metrics_bad_at(&w, None),
        Arc::new(plan.wrap(w.store.clone())),
    );
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(2);
    assert_eq!(plan.calls(Method::ACQUIRE_LEASE), 2);
    // Every write landed exactly once: the lost one was read back, not
    // written again.
    let c = plan.counts(Method::COMPARE_AND_SWAP);
    assert_eq!(w.store.writes(), c.calls);
    assert_eq!((c.failures, c.injected), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_retry_config_is_refused() {
    let w = World::new().await;
    let err = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(w.router.clone()))
        .probe(Arc::new(w.probe.clone()))
        .store(Arc::new(w.store.clone()))
        .retry(RetryConfig::default().with_retry_timeout(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid engine.retry.retry_timeout: must be greater than zero"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_rollouts_are_refused_before_anything_happens() {
    let w = World::new().await;
    let engine = w.engine(metrics_bad_at(&w, None));
    let mut r = blue_green(&w.svc);
    r.analysis.clear();
    let err = engine.start(r).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains("strategy.blue_green.step_analysis"),
        "{err}"
    );
    let no_metrics = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(w.router.clone()))
        .probe(Arc::new(w.probe.clone()))
        .store(Arc::new(w.store.clone()))
        .build()
        .unwrap();
    let err = no_metrics.start(blue_green(&w.svc)).await.unwrap_err();
    assert!(err.to_string().contains("engine.metrics"), "{err}");
    assert_eq!(w.store.writes(), 0);
    assert_eq!(w.green_weights(), [0]);
}

/// One crash-resume scenario: the first engine's store dies after
/// `crash_after` successful writes; a second engine resumes from what was
/// written. Returns the final outcome, or `None` when nothing was written.
async fn crash_and_resume(crash_after: u64, bad_at: Option<u8>, canary: bool) -> Option<Outcome> {
    let w = World::new().await;
    let rollout = if canary {
        Rollout::new(
            w.svc.clone(),
            Release::new("v2", "checkout:v2"),
            Strategy::Canary(Canary::new(
                4,
                vec![
                    CanaryStep::SetWeight(Weight::new(25).unwrap()),
                    CanaryStep::Analysis("health".into()),
                    CanaryStep::SetWeight(Weight::new(50).unwrap()),
                    CanaryStep::Pause(Some(Duration::from_secs(30))),
                    CanaryStep::Analysis("health".into()),
                ],
            )),
        )
        .with_analysis(health())
    } else {
        blue_green(&w.svc)
    };
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::backend("store crashed"))
            .on(Method::COMPARE_AND_SWAP)
            .after_successes(crash_after),
    )
    .unwrap();
    let crashing = w.engine_with(
        metrics_bad_at(&w, bad_at),
        Arc::new(plan.wrap(w.store.clone())),
    );
    if let Ok(handle) = crashing.start(rollout).await {
        let _ = handle.wait().await;
    }
    // The crashed engine's lease runs out; a new engine takes over.
    tokio::time::sleep(LEASE_TTL + Duration::from_secs(1)).await;
    let fresh = w.engine(metrics_bad_at(&w, bad_at));
    let outcome = match fresh.resume(&w.svc).await.expect("resume") {
        Some(handle) => Some(handle.wait().await.expect("resumed rollout finishes")),
        None => w.store.state(&w.svc).map(|s| match s.phase {
            Phase::Promoted => Outcome::Promoted {
                version: "v2".into(),
            },
            Phase::RolledBack { reason } => Outcome::RolledBack { reason },
            other => panic!("resume found nothing to do in phase {other:?}"),
        }),
    };
    // Never a stuck split: all traffic on one slot, and the slots agree.
    let current = w.router.current(&w.svc).unwrap();
    let replicas = if canary { 4 } else { 2 };
    match &outcome {
        Some(Outcome::Promoted { .. }) => {
            assert!(bad_at.is_none(), "a failing analysis never promotes");
            w.assert_promoted(replicas);
        }
        Some(Outcome::RolledBack { .. }) => {
            assert!(bad_at.is_some(), "a healthy rollout is not rolled back");
            assert!(current.is_all_to(Slot::Blue));
            assert_eq!(w.workloads.replicas(&w.svc, Slot::Green), 0);
            assert_eq!(
                w.workloads.version(&w.svc, Slot::Blue).as_deref(),
                Some("v1")
            );
            assert_eq!(w.workloads.replicas(&w.svc, Slot::Blue), 2);
        }
        None => {
            assert_eq!(crash_after, 0);
            assert!(current.is_all_to(Slot::Blue));
            assert_eq!(
                w.workloads.replicas(&w.svc, Slot::Green),
                0,
                "nothing happened"
            );
        }
    }
    outcome
}

#[tokio::test(start_paused = true)]
async fn crash_after_every_write_converges() {
    // Exhaustive over the crash point for both strategies and outcomes.
    for canary in [false, true] {
        for bad_at in [None, Some(25)] {
            for crash_after in 0..25 {
                crash_and_resume(crash_after, bad_at, canary).await;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn crash_resume_converges(
        crash_after in 0u64..30,
        bad_at in prop::option::of(prop::sample::select(vec![5u8, 25, 50, 75])),
        canary in any::<bool>(),
    ) {
        // The canary strategy has weights 25 and 50 only.
        let bad_at = if canary { bad_at.map(|w| if w <= 25 { 25 } else { 50 }) } else { bad_at };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(crash_and_resume(crash_after, bad_at, canary));
    }
}

/// A canary of v2 that waits at 25 % for a human.
fn canary_waiting_for_promotion(svc: &ServiceName) -> Rollout {
    Rollout::new(
        svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::Canary(Canary::new(
            4,
            vec![
                CanaryStep::SetWeight(Weight::new(25).unwrap()),
                CanaryStep::Pause(None),
                CanaryStep::SetWeight(Weight::new(50).unwrap()),
            ],
        )),
    )
}

/// Starts `rollout` and leaves it persisted mid-way: paused at its
/// `Pause(None)` step, by an engine that is gone (its handle dropped, so it
/// stopped and gave up the lease).
async fn persisted_mid_way(w: &World, rollout: Rollout) -> Versioned<RolloutState> {
    let engine = w.engine(metrics_bad_at(w, None));
    let handle = engine.start(rollout).await.unwrap();
    handle.watch().wait_for(|s| s.paused).await.unwrap();
    drop(handle);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = w.store.load(&w.svc).await.unwrap().unwrap();
    assert_eq!(stored.value.phase, Phase::Progressing);
    assert!(stored.value.paused && stored.value.step > 0, "{stored:?}");
    stored
}

/// Resumes `w`'s rollout with a fresh engine, promotes it past its pause
/// and waits for the end.
async fn resume_and_promote(w: &World) -> Outcome {
    let fresh = w.engine(metrics_bad_at(w, None));
    let handle = fresh.resume(&w.svc).await.unwrap().expect("resumable");
    handle.promote().unwrap();
    handle.wait().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_persisted_rollout_stores_its_plan_and_resumes_with_the_same_plan() {
    let w = World::new().await;
    let rollout = canary_waiting_for_promotion(&w.svc);
    let compiled = PlanFingerprint::of(&rollout.strategy.compile(false)).unwrap();
    let stored = persisted_mid_way(&w, rollout).await;
    assert_eq!(stored.value.plan, Some(compiled));
    assert_eq!(
        resume_and_promote(&w).await,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(4);
}

#[tokio::test(start_paused = true)]
async fn resuming_with_a_different_plan_is_refused_and_leaves_the_state_alone() {
    let w = World::new().await;
    let stored = persisted_mid_way(&w, canary_waiting_for_promotion(&w.svc)).await;
    // What a build whose strategy compiles other steps sees: the stored
    // step index and fingerprint, and a different plan for the rollout.
    let mut changed = stored.value.clone();
    let Strategy::Canary(c) = &mut changed.rollout.strategy else {
        unreachable!()
    };
    c.steps
        .insert(0, CanaryStep::SetWeight(Weight::new(10).unwrap()));
    let current = PlanFingerprint::of(&changed.rollout.strategy.compile(false)).unwrap();
    let version = w
        .store
        .compare_and_swap(&w.svc, Some(stored.version), &changed)
        .await
        .unwrap();
    let before = w.store.load(&w.svc).await.unwrap().unwrap();
    let writes = w.store.writes();
    let splits = w.router.calls().len();

    let fresh = w.engine(metrics_bad_at(&w, None));
    let err = fresh.resume(&w.svc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition, "{err}");
    let message = err.to_string();
    let stored_plan = stored.value.plan.clone().unwrap();
    assert_ne!(stored_plan, current);
    for part in [
        "checkout",
        stored_plan.as_str(),
        current.as_str(),
        "step plan",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // Untouched: same version, same value, no write, no traffic change.
    assert_eq!(w.store.load(&w.svc).await.unwrap().unwrap(), before);
    assert_eq!(before.version, version);
    assert_eq!(w.store.writes(), writes);
    assert_eq!(w.router.calls().len(), splits);
    assert_eq!(
        w.router
            .current(&w.svc)
            .unwrap()
            .weight_of(Slot::Green)
            .percent(),
        25
    );

    // The lease was given back: with the plan it was started with, the
    // rollout resumes and finishes.
    w.store
        .compare_and_swap(&w.svc, Some(version), &stored.value)
        .await
        .unwrap();
    assert_eq!(
        resume_and_promote(&w).await,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(4);
}

#[tokio::test(start_paused = true)]
async fn a_state_written_without_a_plan_is_resumed_and_gets_one() {
    let w = World::new().await;
    let rollout = canary_waiting_for_promotion(&w.svc);
    let compiled = PlanFingerprint::of(&rollout.strategy.compile(false)).unwrap();
    let stored = persisted_mid_way(&w, rollout).await;
    // What an older build wrote.
    let mut old = stored.value.clone();
    old.plan = None;
    w.store
        .compare_and_swap(&w.svc, Some(stored.version), &old)
        .await
        .unwrap();

    let fresh = w.engine(metrics_bad_at(&w, None));
    let handle = fresh.resume(&w.svc).await.unwrap().expect("resumable");
    handle.promote().unwrap();
    let mut watch = handle.watch();
    let written = watch.wait_for(|s| s.step > old.step).await.unwrap().clone();
    assert_eq!(written.plan, Some(compiled.clone()));
    assert_eq!(w.store.state(&w.svc).unwrap().plan, Some(compiled));
    assert_eq!(
        handle.wait().await.unwrap(),
        Outcome::Promoted {
            version: "v2".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn resuming_a_rollout_with_analysis_needs_a_metric_provider() {
    let w = World::new().await;
    let mut rollout = canary_waiting_for_promotion(&w.svc).with_analysis(health());
    let Strategy::Canary(c) = &mut rollout.strategy else {
        unreachable!()
    };
    c.steps.push(CanaryStep::Analysis("health".into()));
    let stored = persisted_mid_way(&w, rollout).await;
    let writes = w.store.writes();
    let no_metrics = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(w.router.clone()))
        .probe(Arc::new(w.probe.clone()))
        .store(Arc::new(w.store.clone()))
        .build()
        .unwrap();
    let err = no_metrics.resume(&w.svc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("engine.metrics"), "{err}");
    assert_eq!(w.store.load(&w.svc).await.unwrap().unwrap(), stored);
    assert_eq!(w.store.writes(), writes);
    assert_eq!(
        resume_and_promote(&w).await,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
}

/// What the world looked like each time a hook ran.
#[derive(Debug, Clone, PartialEq)]
struct HookSighting {
    point: HookPoint,
    green_replicas: u32,
    blue_replicas: u32,
    split: Option<TrafficSplit>,
    applied: Vec<u64>,
}

/// Records the world at each hook point; fails the first `fail_first`
/// calls at `fail_at`.
#[derive(Debug)]
struct SpyHook {
    svc: ServiceName,
    workloads: MockWorkloads,
    router: RecordingRouter,
    driver: Option<MemoryDriver>,
    fail_at: Option<HookPoint>,
    fail_first: std::sync::atomic::AtomicUsize,
    seen: std::sync::Mutex<Vec<HookSighting>>,
}

impl SpyHook {
    fn new(
        w: &World,
        driver: Option<MemoryDriver>,
        fail_at: Option<HookPoint>,
        fail_first: usize,
    ) -> Arc<SpyHook> {
        Arc::new(SpyHook {
            svc: w.svc.clone(),
            workloads: w.workloads.clone(),
            router: w.router.clone(),
            driver,
            fail_at,
            fail_first: fail_first.into(),
            seen: Default::default(),
        })
    }

    fn seen(&self) -> Vec<HookSighting> {
        self.seen.lock().unwrap().clone()
    }

    fn sight(&self, ctx: &HookContext) -> atlas_core::Result<()> {
        assert_eq!(ctx.service, self.svc);
        assert_eq!(ctx.version, "v2");
        assert_eq!(ctx.stable_version.as_deref(), Some("v1"));
        assert_eq!((ctx.old_slot, ctx.new_slot), (Slot::Blue, Slot::Green));
        self.seen.lock().unwrap().push(HookSighting {
            point: ctx.point,
            green_replicas: self.workloads.replicas(&self.svc, Slot::Green),
            blue_replicas: self.workloads.replicas(&self.svc, Slot::Blue),
            split: self.router.current(&self.svc),
            applied: self
                .driver
                .iter()
                .flat_map(|d| d.rows())
                .filter(|r| r.success)
                .map(|r| r.version.major())
                .collect(),
        });
        let failing = self.fail_at == Some(ctx.point)
            && self
                .fail_first
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
        if failing {
            return Err(atlas_core::Error::backend("spy", "injected hook failure"));
        }
        Ok(())
    }
}

#[async_trait]
impl RolloutHook for SpyHook {
    fn name(&self) -> &str {
        "spy"
    }
    async fn before_deploy(&self, ctx: &HookContext) -> atlas_core::Result<()> {
        self.sight(ctx)
    }
    async fn after_scale_down(&self, ctx: &HookContext) -> atlas_core::Result<()> {
        self.sight(ctx)
    }
}

fn engine_with_hooks(
    w: &World,
    store: Arc<dyn StateStore>,
    hooks: Vec<Arc<dyn RolloutHook>>,
) -> Engine {
    let mut b = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(w.router.clone()))
        .probe(Arc::new(w.probe.clone()))
        .metrics(metrics_bad_at(w, None))
        .store(store)
        .lease_ttl(LEASE_TTL);
    for h in hooks {
        b = b.hook(h);
    }
    b.build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failing_expand_hook_rolls_back_before_the_new_slot_starts() {
    let w = World::new().await;
    let spy = SpyHook::new(&w, None, Some(HookPoint::BeforeDeploy), usize::MAX);
    let engine = engine_with_hooks(&w, Arc::new(w.store.clone()), vec![spy.clone()]);
    let outcome = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(
        reason.contains("hook spy (before_deploy) failed"),
        "{reason}"
    );
    assert!(
        !w.workloads.calls().iter().any(|c| matches!(
            c,
            atlas_core::testing::WorkloadsCall::Deploy {
                slot: Slot::Green,
                ..
            }
        )),
        "the new slot was never started: {:?}",
        w.workloads.calls()
    );
    assert_eq!(
        w.router.current(&w.svc),
        Some(TrafficSplit::all_to(Slot::Blue))
    );
    assert_eq!(w.workloads.replicas(&w.svc, Slot::Blue), 2);
    assert_eq!(spy.seen().len(), 1, "no contract after a rollback");
}

#[tokio::test(start_paused = true)]
async fn a_failing_contract_hook_stops_promoted_and_a_resumed_engine_retries_it() {
    let w = World::new().await;
    let spy = SpyHook::new(&w, None, Some(HookPoint::AfterScaleDown), 1);
    let engine = engine_with_hooks(&w, Arc::new(w.store.clone()), vec![spy.clone()]);
    let err = engine
        .start(blue_green(&w.svc))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after promotion"), "{err}");
    // Fully promoted, never rolled back: the old version is already gone.
    assert_eq!(
        w.router.current(&w.svc),
        Some(TrafficSplit::all_to(Slot::Green))
    );
    assert_eq!(w.workloads.replicas(&w.svc, Slot::Blue), 0);
    let state = w.store.state(&w.svc).unwrap();
    assert!(
        state.promoted && state.phase == Phase::Progressing,
        "{state:?}"
    );

    let fresh = engine_with_hooks(&w, Arc::new(w.store.clone()), vec![spy.clone()]);
    let outcome = fresh
        .resume(&w.svc)
        .await
        .unwrap()
        .expect("resumable")
        .wait()
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    w.assert_promoted(2);
    let points: Vec<HookPoint> = spy.seen().iter().map(|s| s.point).collect();
    assert_eq!(
        points,
        [
            HookPoint::BeforeDeploy,
            HookPoint::AfterScaleDown,
            HookPoint::AfterScaleDown
        ]
    );
}
