//! The migration hook on a real engine run (mock adapters, paused clock):
//! expand migrations are applied before the new slot starts, contract ones
//! only after the old slot is scaled down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::hooks::{HookContext, HookPoint, RolloutHook};
use atlas_core::testing::{
    MemoryDriver, MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe,
};
use atlas_core::{
    BlueGreen, Engine, EventKind, Outcome, Release, Rollout, ServiceName, Slot, Strategy,
    TrafficRouter, TrafficSplit, Workloads,
};
use atlas_migrate::{BackupPolicy, MigrationHook, MigrationSet, Migrator, MigratorConfig};

/// What the world looked like each time the spy hook ran.
#[derive(Debug, Clone, PartialEq)]
struct Sighting {
    point: HookPoint,
    green_replicas: u32,
    blue_replicas: u32,
    split: Option<TrafficSplit>,
    applied: Vec<u64>,
}

/// Runs after the migration hook and records what it left behind.
#[derive(Debug)]
struct Spy {
    svc: ServiceName,
    workloads: MockWorkloads,
    router: RecordingRouter,
    driver: MemoryDriver,
    seen: Mutex<Vec<Sighting>>,
}

impl Spy {
    fn sight(&self, ctx: &HookContext) -> atlas_core::Result<()> {
        assert_eq!((ctx.old_slot, ctx.new_slot), (Slot::Blue, Slot::Green));
        self.seen.lock().unwrap().push(Sighting {
            point: ctx.point,
            green_replicas: self.workloads.replicas(&self.svc, Slot::Green),
            blue_replicas: self.workloads.replicas(&self.svc, Slot::Blue),
            split: self.router.current(&self.svc),
            applied: self
                .driver
                .rows()
                .iter()
                .filter(|r| r.success)
                .map(|r| r.version.major())
                .collect(),
        });
        Ok(())
    }
}

#[async_trait]
impl RolloutHook for Spy {
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

fn expand_contract_set() -> MigrationSet {
    MigrationSet::from_sources([
        (
            "V1__accounts.sql",
            "CREATE TABLE accounts (id bigint PRIMARY KEY, legacy text);",
        ),
        (
            "V2__add_plan.sql",
            "-- atlas:phase expand\nALTER TABLE accounts ADD COLUMN plan text;",
        ),
        (
            "V3__drop_legacy.sql",
            "-- atlas:phase contract\nALTER TABLE accounts DROP COLUMN legacy;",
        ),
    ])
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn migration_hook_expands_before_the_new_slot_and_contracts_after_the_old_is_gone() {
    let svc = ServiceName::new("checkout").unwrap();
    let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(5));
    let router = RecordingRouter::new();
    let store = MemoryStateStore::new();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
        .await
        .unwrap();
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();

    let driver = MemoryDriver::new();
    let migrator =
        Migrator::new(driver.clone(), expand_contract_set()).with_config(MigratorConfig {
            backup: BackupPolicy::Disabled,
            ..MigratorConfig::default()
        });
    let migrations = Arc::new(MigrationHook::new(Arc::new(migrator)));
    let spy = Arc::new(Spy {
        svc: svc.clone(),
        workloads: workloads.clone(),
        router: router.clone(),
        driver: driver.clone(),
        seen: Mutex::default(),
    });
    let engine = Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(store.clone()))
        .hook(migrations.clone())
        .hook(spy.clone())
        .build()
        .unwrap();
    let mut events = engine.subscribe();
    let rollout = Rollout::new(
        svc.clone(),
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
    assert_eq!(
        router.current(&svc),
        Some(TrafficSplit::all_to(Slot::Green))
    );
    assert_eq!(
        workloads.replicas(&svc, Slot::Blue),
        0,
        "old slot scaled down"
    );
    assert_eq!(
        spy.seen.lock().unwrap().clone(),
        [
            Sighting {
                point: HookPoint::BeforeDeploy,
                green_replicas: 0,
                blue_replicas: 2,
                split: Some(TrafficSplit::all_to(Slot::Blue)),
                applied: vec![1, 2],
            },
            Sighting {
                point: HookPoint::AfterScaleDown,
                green_replicas: 2,
                blue_replicas: 0,
                split: Some(TrafficSplit::all_to(Slot::Green)),
                applied: vec![1, 2, 3],
            },
        ]
    );
    let reports: Vec<(HookPoint, Vec<u64>)> = migrations
        .reports()
        .into_iter()
        .map(|(p, r)| (p, r.versions.iter().map(|v| v.major()).collect()))
        .collect();
    assert_eq!(
        reports,
        [
            (HookPoint::BeforeDeploy, vec![1, 2]),
            (HookPoint::AfterScaleDown, vec![3]),
        ]
    );
    let mut hook_events = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::HookRan { hook, point, error } = e.kind {
            hook_events.push((hook, point, error.is_none()));
        }
    }
    assert_eq!(hook_events.len(), 4, "{hook_events:?}");
    assert!(hook_events.iter().all(|(_, _, ok)| *ok));
}
