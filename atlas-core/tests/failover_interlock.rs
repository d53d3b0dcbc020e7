//! The rollout interlock, both ways, with the real engine and the real
//! failover controller on one `MemoryStateStore`, under tokio's paused
//! clock: a rollout does not start while a failover is in progress, and a
//! failover aborts a running rollout (all traffic back to its stable slot)
//! without waiting for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atlas_core::failover::{
    FailoverController, FailoverEvent, FailoverEventKind, FailoverPolicy, FailoverState,
    FailoverStore, Transition, TransitionKind,
};
use atlas_core::region::{Region, RegionName, RegionSet};
use atlas_core::testing::{
    COMPARE_AND_SWAP_FAILOVER, Fault, FaultError, FaultPlan, MemoryStateStore, MockWorkloads,
    ProbeScript, RecordingRegionRouter, RecordingRouter, ScriptedProbe,
};
use atlas_core::{
    BlueGreen, Canary, CanaryStep, Endpoint, Engine, ErrorKind, Outcome, Release, Rollout,
    ServiceName, Slot, Strategy, TrafficRouter, TrafficSplit, Weight, Workloads,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

const LEASE_TTL: Duration = Duration::from_secs(15);

fn n(s: &str) -> RegionName {
    RegionName::new(s).unwrap()
}

fn regions() -> RegionSet {
    RegionSet::new(vec![
        Region::active(n("us-east"), 40),
        Region::active(n("eu-west"), 35),
        Region::active(n("ap-south"), 25),
        Region::standby(n("us-west"), 40),
    ])
    .unwrap()
}

/// v1 in blue with all traffic, one store for the engine and the
/// controller.
struct World {
    svc: ServiceName,
    workloads: MockWorkloads,
    router: RecordingRouter,
    store: MemoryStateStore,
    region_probe: ScriptedProbe,
    region_router: RecordingRegionRouter,
}

impl World {
    async fn new() -> World {
        let w = World {
            svc: ServiceName::new("checkout").unwrap(),
            workloads: MockWorkloads::new().with_ready_delay(Duration::from_secs(5)),
            router: RecordingRouter::new(),
            store: MemoryStateStore::new(),
            region_probe: ScriptedProbe::new(),
            region_router: RecordingRegionRouter::new(),
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

    fn engine(&self) -> Engine {
        Engine::builder()
            .workloads(Arc::new(self.workloads.clone()))
            .router(Arc::new(self.router.clone()))
            .probe(Arc::new(ScriptedProbe::new()))
            .store(Arc::new(self.store.clone()))
            .failover_store(Arc::new(self.store.clone()))
            .lease_ttl(LEASE_TTL)
            .build()
            .unwrap()
    }

    /// A controller that moves traffic only (no metrics, no database).
    fn controller(&self) -> FailoverController {
        self.controller_on(Arc::new(self.store.clone()))
    }

    fn controller_on<S>(&self, store: Arc<S>) -> FailoverController
    where
        S: FailoverStore + atlas_core::StateStore + 'static,
    {
        let mut policy = FailoverPolicy::specification();
        policy.metrics.clear();
        policy.database = None;
        let mut b = FailoverController::builder()
            .service(self.svc.clone())
            .regions(regions())
            .policy(policy)
            .router(Arc::new(self.region_router.clone()))
            .store(store)
            .probe(Arc::new(self.region_probe.clone()));
        for (i, r) in regions().regions().iter().enumerate() {
            let addr = format!("127.0.0.1:{}", 9200 + i).parse().unwrap();
            b = b.endpoint(r.name.clone(), Endpoint::new(r.name.as_str(), addr));
        }
        b.build().unwrap()
    }

    fn canary(&self, pause: Option<Duration>) -> Rollout {
        Rollout::new(
            self.svc.clone(),
            Release::new("v2", "checkout:v2"),
            Strategy::Canary(Canary::new(
                2,
                vec![
                    CanaryStep::SetWeight(Weight::new(25).unwrap()),
                    CanaryStep::Pause(pause),
                    CanaryStep::SetWeight(Weight::new(50).unwrap()),
                ],
            )),
        )
    }
}

async fn wait_for(
    rx: &mut broadcast::Receiver<FailoverEvent>,
    f: impl Fn(&FailoverEventKind) -> bool,
) -> FailoverEvent {
    tokio::time::timeout(Duration::from_secs(3600), async {
        loop {
            let e = rx.recv().await.expect("controller events");
            if f(&e.kind) {
                return e;
            }
        }
    })
    .await
    .expect("event within an hour")
}

#[tokio::test(start_paused = true)]
async fn a_rollout_does_not_start_while_a_failover_is_in_progress() {
    let w = World::new().await;
    let mut state = FailoverState::new(regions().normal_weights());
    state.in_progress = Some(Transition {
        kind: TransitionKind::Failover,
        reason: "us-east: 3 consecutive failed health checks".into(),
        started: SystemTime::now(),
        database: false,
    });
    let v = w
        .store
        .compare_and_swap_failover(&w.svc, None, &state)
        .await
        .unwrap();
    let engine = w.engine();
    let e = engine.start(w.canary(None)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Precondition);
    let msg = e.to_string();
    assert!(msg.contains("failover of checkout is in progress"), "{msg}");
    assert!(
        msg.contains("us-east: 3 consecutive failed health checks"),
        "{msg}"
    );
    assert!(w.store.state(&w.svc).is_none(), "no rollout state written");
    assert_eq!(
        w.store.lease_holder(&w.svc),
        None,
        "the lease is given back"
    );
    assert_eq!(w.router.splits(&w.svc).len(), 1, "traffic untouched");

    // Once the failover is done, rollouts start again.
    state.in_progress = None;
    w.store
        .compare_and_swap_failover(&w.svc, Some(v), &state)
        .await
        .unwrap();
    let rollout = Rollout::new(
        w.svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::BlueGreen(BlueGreen::new(2)),
    );
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_failover_aborts_a_rollout_waiting_for_promotion_without_waiting_for_it() {
    let w = World::new().await;
    let handle = w.engine().start(w.canary(None)).await.unwrap();
    handle
        .watch()
        .wait_for(|s| s.paused)
        .await
        .expect("the rollout runs");
    assert_eq!(
        w.router
            .current(&w.svc)
            .unwrap()
            .weight_of(Slot::Green)
            .percent(),
        25
    );
    let rollout_id = handle.id().to_string();

    let controller = w.controller();
    let mut rx = controller.subscribe();
    let fo = controller.start().await.unwrap();
    w.region_probe
        .script("us-east", ProbeScript::Failing("connection refused".into()));
    let interrupted = wait_for(&mut rx, |k| {
        matches!(k, FailoverEventKind::RolloutInterrupted { .. })
    })
    .await;
    assert_eq!(
        interrupted.kind,
        FailoverEventKind::RolloutInterrupted {
            rollout: rollout_id
        }
    );
    // The failover finishes without waiting for the rollout (which ends
    // at its engine's next check, or at the same instant).
    wait_for(&mut rx, |k| {
        matches!(k, FailoverEventKind::FailoverDone { .. })
    })
    .await;
    let done_at = Instant::now();
    assert_eq!(
        w.region_router.current(&w.svc).unwrap().get(&n("us-east")),
        0
    );

    let outcome = handle.wait().await.unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("the rollout must roll back, got {outcome:?}")
    };
    assert!(reason.contains("failover"), "{reason}");
    assert!(
        done_at.elapsed() <= LEASE_TTL / 3,
        "aborted within a third of the lease ttl, took {:?}",
        done_at.elapsed()
    );
    assert_eq!(
        w.router.current(&w.svc),
        Some(TrafficSplit::all_to(Slot::Blue))
    );
    assert_eq!(w.workloads.replicas(&w.svc, Slot::Green), 0);
    fo.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failover_aborts_a_rollout_in_the_middle_of_a_step_and_later_rollouts_run() {
    let w = World::new().await;
    let engine = w.engine();
    let handle = engine
        .start(w.canary(Some(Duration::from_secs(600))))
        .await
        .unwrap();
    handle
        .watch()
        .wait_for(|s| s.weight == Weight::new(25).unwrap())
        .await
        .expect("the rollout runs");
    let started = Instant::now();
    let controller = w.controller();
    let mut rx = controller.subscribe();
    let fo = controller.start().await.unwrap();
    w.region_probe
        .script("eu-west", ProbeScript::Failing("connection refused".into()));
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("failover")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "aborted mid-pause, not after it: {:?}",
        started.elapsed()
    );
    assert_eq!(
        w.router.current(&w.svc),
        Some(TrafficSplit::all_to(Slot::Blue))
    );
    wait_for(&mut rx, |k| {
        matches!(k, FailoverEventKind::FailoverDone { .. })
    })
    .await;

    // The failover is over: a new rollout is not the one it named, and runs.
    let rollout = Rollout::new(
        w.svc.clone(),
        Release::new("v3", "checkout:v3"),
        Strategy::BlueGreen(BlueGreen::new(2)),
    );
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v3".into()
        }
    );
    fo.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_engine_without_the_failover_store_does_not_look() {
    let w = World::new().await;
    let mut state = FailoverState::new(regions().normal_weights());
    state.in_progress = Some(Transition {
        kind: TransitionKind::Failback,
        reason: "manual failback".into(),
        started: SystemTime::now(),
        database: false,
    });
    w.store
        .compare_and_swap_failover(&w.svc, None, &state)
        .await
        .unwrap();
    let engine = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(w.router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(w.store.clone()))
        .build()
        .unwrap();
    let rollout = Rollout::new(
        w.svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::BlueGreen(BlueGreen::new(2)),
    );
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    // With it, the failback blocks too.
    let e = w.engine().start(w.canary(None)).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("failback of checkout is in progress"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_controller_crashing_before_it_names_the_rollout_leaves_it_to_the_next() {
    let w = World::new().await;
    let handle = w.engine().start(w.canary(None)).await.unwrap();
    handle
        .watch()
        .wait_for(|s| s.paused)
        .await
        .expect("the rollout runs");
    // Writes: the first state, the decision; the third (naming the
    // rollout) fails and stops the controller.
    let plan = FaultPlan::new();
    plan.add(
        Fault::fail(FaultError::backend("store crashed"))
            .on(COMPARE_AND_SWAP_FAILOVER)
            .after_successes(2),
    )
    .unwrap();
    let first = w.controller_on(Arc::new(plan.wrap(w.store.clone())));
    let h = first.start().await.unwrap();
    w.region_probe
        .script("us-east", ProbeScript::Failing("connection refused".into()));
    assert!(h.wait().await.is_err());
    let stored = w.store.load_failover(&w.svc).await.unwrap().unwrap().value;
    assert!(stored.in_progress.is_some());
    assert_eq!(stored.abort_rollout, None);

    // The mark alone stops the rollout; the next controller finishes the
    // failover.
    let second = w.controller();
    let mut rx = second.subscribe();
    let h = second.start().await.unwrap();
    wait_for(&mut rx, |k| {
        matches!(k, FailoverEventKind::FailoverDone { .. })
    })
    .await;
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("failover")),
        "{outcome:?}"
    );
    assert_eq!(
        w.router.current(&w.svc),
        Some(TrafficSplit::all_to(Slot::Blue))
    );
    assert_eq!(
        w.region_router.current(&w.svc).unwrap().get(&n("us-east")),
        0
    );
    h.stop().await.unwrap();
}
