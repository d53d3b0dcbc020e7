//! A blue-green rollout of `checkout` on the core mocks, shared by the
//! gates and checklist tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use atlas_core::testing::{MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe};
use atlas_core::{
    BlueGreen, Engine, Outcome, Release, Rollout, ServiceName, Slot, Strategy, TrafficRouter,
    TrafficSplit, Workloads,
};
use atlas_gates::QualityGates;

pub fn world_rollout(version: &str) -> Rollout {
    Rollout::new(
        ServiceName::new("checkout").unwrap(),
        Release::new(version, format!("checkout:{version}")),
        Strategy::BlueGreen(BlueGreen::new(2)),
    )
}

pub async fn run(
    store: MemoryStateStore,
    rollout: Rollout,
    hook: QualityGates,
) -> (Outcome, MockWorkloads) {
    let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(1));
    let router = RecordingRouter::new();
    let svc = rollout.service.clone();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
        .await
        .unwrap();
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let engine = Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(store))
        .hook(Arc::new(hook))
        .build()
        .unwrap();
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    (outcome, workloads)
}
