//! An autoscaler and a canary rollout on one service, against the mock
//! adapters under tokio's paused clock: the desired count applies to the
//! service as a whole, each slot gets its share by traffic weight (at
//! least the canary's scale), and neither side undoes the other's work.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_core::scaler::{Applied, SlotReplicas, apportion, scale_service};
use atlas_core::testing::{
    CollectingNotifier, MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe,
};
use atlas_core::{
    Canary, CanaryStep, DesiredReplicas, Engine, Outcome, Release, Rollout, ServiceName, Slot,
    Strategy, TrafficRouter, TrafficSplit, Weight, Workloads,
};
use tokio::time::Instant;

/// Requests per second one replica serves at its target.
const PER_REPLICA: u32 = 500;

/// The scripted load: requests per second at `t` seconds into the run.
fn load_at(t: u64) -> u32 {
    match t {
        0..30 => 2_000,
        30..90 => 5_000,
        _ => 3_000,
    }
}

/// What one autoscaler tick saw and did.
#[derive(Debug, Clone)]
struct Tick {
    at: u64,
    desired: u32,
    applied: Applied,
}

async fn world() -> (ServiceName, MockWorkloads, RecordingRouter) {
    let svc = ServiceName::new("checkout").unwrap();
    let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(3));
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 4)
        .await
        .unwrap();
    let router = RecordingRouter::new();
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = workloads.status(&svc, Slot::Blue).await.unwrap();
    router
        .set_endpoints(&svc, Slot::Blue, &ready.endpoints)
        .await
        .unwrap();
    (svc, workloads, router)
}

#[tokio::test(start_paused = true)]
async fn autoscaler_and_canary_share_the_replicas_without_fighting() {
    let (svc, workloads, router) = world().await;
    let desired = DesiredReplicas::new();
    desired.set(&svc, load_at(0).div_ceil(PER_REPLICA));

    // The autoscaler: every 5 s it turns the scripted load into a desired
    // count for the whole service and applies it.
    let started = Instant::now();
    let ticks = Arc::new(Mutex::new(Vec::<Tick>::new()));
    let autoscaler = {
        let (svc, workloads, router, desired, ticks) = (
            svc.clone(),
            workloads.clone(),
            router.clone(),
            desired.clone(),
            ticks.clone(),
        );
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                let at = started.elapsed().as_secs();
                let want = load_at(at).div_ceil(PER_REPLICA);
                desired.set(&svc, want);
                let applied = scale_service(&workloads, &router, &desired, &svc)
                    .await
                    .unwrap();
                ticks.lock().unwrap().push(Tick {
                    at,
                    desired: want,
                    applied,
                });
            }
        })
    };

    // While the rollout runs, sample each second what every slot runs.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (svc, workloads, router, samples) = (
            svc.clone(),
            workloads.clone(),
            router.clone(),
            samples.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let split = router.current(&svc).unwrap();
                let counts = SlotReplicas {
                    blue: workloads.replicas(&svc, Slot::Blue),
                    green: workloads.replicas(&svc, Slot::Green),
                };
                samples.lock().unwrap().push((split, counts));
            }
        })
    };

    let engine = Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(MemoryStateStore::new()))
        .notifier(Arc::new(CollectingNotifier::new()))
        .desired_replicas(desired.clone())
        .build()
        .unwrap();
    let canary_total = 4;
    let rollout = Rollout::new(
        svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::Canary(Canary::new(
            canary_total,
            vec![
                CanaryStep::SetWeight(Weight::new(25).unwrap()),
                CanaryStep::Pause(Some(Duration::from_secs(40))),
                CanaryStep::SetWeight(Weight::new(50).unwrap()),
                CanaryStep::Pause(Some(Duration::from_secs(40))),
                CanaryStep::SetWeight(Weight::new(80).unwrap()),
                CanaryStep::Pause(Some(Duration::from_secs(40))),
            ],
        )),
    );
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    // Let the autoscaler see the finished rollout for a few ticks.
    tokio::time::sleep(Duration::from_secs(20)).await;
    autoscaler.abort();
    sampler.abort();

    let ticks = ticks.lock().unwrap().clone();
    let samples = samples.lock().unwrap().clone();
    assert!(
        ticks.iter().any(|t| t.applied == Applied::Deferred),
        "some ticks must have found a rollout step scaling: {ticks:#?}"
    );

    // Never overwriting each other: a tick whose desired count did not
    // change since the last tick that applied one finds every slot with
    // traffic already at its share, whatever the engine did in between.
    let mut last_applied: Option<u32> = None;
    for t in &ticks {
        match &t.applied {
            Applied::Scaled { changed, .. } => {
                if last_applied == Some(t.desired) {
                    assert!(
                        changed.is_empty(),
                        "at {}s the autoscaler changed {changed:?} with an unchanged desired count of {}: it and the engine disagree",
                        t.at,
                        t.desired
                    );
                }
                last_applied = Some(t.desired);
            }
            Applied::Deferred => {}
            other => panic!("unexpected tick outcome {other:?}"),
        }
    }
    assert!(
        ticks
            .iter()
            .any(|t| matches!(&t.applied, Applied::Scaled { changed, .. } if !changed.is_empty())),
        "the load changes must have scaled something: {ticks:#?}"
    );

    // During the canary, green never runs less than its scale under the
    // strategy (ceil(4 × weight)) once it has traffic, and both slots with
    // traffic run at least their share of the desired count once the
    // autoscaler and the engine had a moment (the sample before shows the
    // same split).
    for pair in samples.windows(2) {
        let ((split0, _), (split, counts)) = (&pair[0], &pair[1]);
        let w = split.weight_of(Slot::Green).percent();
        if split.stable() == Slot::Blue && (1..100).contains(&w) {
            let floor = (canary_total * u32::from(w)).div_ceil(100);
            assert!(
                counts.green >= floor,
                "green ran {} at {w} %, under its canary scale of {floor}",
                counts.green
            );
        }
        if split0 != split {
            continue;
        }
        // Shares are of a count between the lowest and highest desired.
        let least = apportion(4, split, SlotReplicas::default());
        for slot in [Slot::Blue, Slot::Green] {
            if split.weight_of(slot) > Weight::ZERO {
                assert!(
                    counts.get(slot) >= least.get(slot),
                    "{slot} ran {} under {split}, below its least share {}",
                    counts.get(slot),
                    least.get(slot)
                );
            }
        }
    }
    // The rollout moved through 25, 50 and 80 % with the autoscaler live.
    let greens: Vec<u8> = samples
        .iter()
        .map(|(s, _)| s.weight_of(Slot::Green).percent())
        .collect();
    for w in [25, 50, 80, 100] {
        assert!(
            greens.contains(&w),
            "never sampled green at {w} %: {greens:?}"
        );
    }

    // After the rollout: the whole desired count runs in green, blue is
    // gone, and no floor is left behind.
    let final_desired = load_at(started.elapsed().as_secs()).div_ceil(PER_REPLICA);
    assert_eq!(workloads.replicas(&svc, Slot::Green), final_desired);
    assert_eq!(workloads.replicas(&svc, Slot::Blue), 0);
    assert_eq!(desired.floors(&svc), SlotReplicas::default());
    assert_eq!(
        router.endpoints(&svc, Slot::Green).len(),
        final_desired as usize,
        "every green replica is listed with the router"
    );
}

#[tokio::test(start_paused = true)]
async fn the_autoscaler_defers_while_the_gate_is_held_and_grows_first() {
    let (svc, workloads, router) = world().await;
    let desired = DesiredReplicas::new();
    assert_eq!(
        scale_service(&workloads, &router, &desired, &svc)
            .await
            .unwrap(),
        Applied::NoDesiredCount
    );
    desired.set(&svc, 6);
    let gate = desired.hold(&svc).await;
    assert_eq!(
        scale_service(&workloads, &router, &desired, &svc)
            .await
            .unwrap(),
        Applied::Deferred
    );
    assert_eq!(
        workloads.replicas(&svc, Slot::Blue),
        4,
        "nothing changed while deferred"
    );
    drop(gate);
    let applied = scale_service(&workloads, &router, &desired, &svc)
        .await
        .unwrap();
    assert_eq!(
        applied,
        Applied::Scaled {
            targets: SlotReplicas { blue: 6, green: 0 },
            changed: vec![(Slot::Blue, 4, 6)],
        }
    );
    assert_eq!(router.endpoints(&svc, Slot::Blue).len(), 6);

    // Half the traffic to a green that runs 1: green grows to 3 before
    // blue shrinks to 3.
    workloads
        .deploy(&svc, Slot::Green, &Release::new("v2", "checkout:v2"), 1)
        .await
        .unwrap();
    router
        .set_split(&svc, &TrafficSplit::new(Slot::Blue, 50).unwrap())
        .await
        .unwrap();
    let applied = scale_service(&workloads, &router, &desired, &svc)
        .await
        .unwrap();
    assert_eq!(
        applied,
        Applied::Scaled {
            targets: SlotReplicas { blue: 3, green: 3 },
            changed: vec![(Slot::Green, 1, 3), (Slot::Blue, 6, 3)],
        }
    );
    let router_calls = router.calls();
    let green_listed = router_calls
        .iter()
        .rposition(|c| {
            matches!(
                c,
                atlas_core::testing::RouterCall::SetEndpoints {
                    slot: Slot::Green,
                    ..
                }
            )
        })
        .unwrap();
    let blue_drained = router_calls
        .iter()
        .rposition(|c| {
            matches!(
                c,
                atlas_core::testing::RouterCall::SetEndpoints {
                    slot: Slot::Blue,
                    ..
                }
            )
        })
        .unwrap();
    assert!(
        green_listed < blue_drained,
        "capacity arrives before any leaves"
    );
}
