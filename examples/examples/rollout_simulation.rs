//! A blue-green rollout that is promoted, then a canary that fails its
//! analysis and is rolled back automatically — on Atlas's mock adapters,
//! under tokio's paused clock, so minutes of rollout run in milliseconds.
//!
//! This is how to test a tool that embeds Atlas without any platform: the
//! same engine, the mock `Workloads`, `TrafficRouter`, `HealthProbe`,
//! `MetricProvider` and `StateStore` from `atlas_core::testing`.
//!
//! Run: `cargo run --example rollout_simulation`

use std::sync::Arc;
use std::time::Duration;

use atlas_core::analysis::AnalysisMetric;
use atlas_core::testing::{
    MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedMetrics, ScriptedProbe,
};
use atlas_core::{
    AnalysisTemplate, BlueGreen, Canary, CanaryStep, Engine, EventKind, Outcome, Release, Rollout,
    RolloutEvent, ServiceName, Slot, Strategy, TrafficRouter, TrafficSplit, Weight, Workloads,
};
use tokio::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A paused clock: timers fire as soon as every task is idle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(simulate())
}

async fn simulate() -> Result<(), Box<dyn std::error::Error>> {
    let wall = std::time::Instant::now();
    let svc = ServiceName::new("checkout")?;
    let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(8));
    let router = RecordingRouter::new();
    let metrics = ScriptedMetrics::new();
    workloads
        .deploy(
            &svc,
            Slot::Blue,
            &Release::new("v1", "registry/checkout:v1"),
            3,
        )
        .await?;
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await?;

    let engine = Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .metrics(Arc::new(metrics.clone()))
        .store(Arc::new(MemoryStateStore::new()))
        .build()?;
    let printer = tokio::spawn(print_events(engine.subscribe(), Instant::now()));

    let health = AnalysisTemplate::new(
        "health",
        vec![
            AnalysisMetric::new("error-rate", "error_rate")
                .success("< 1%".parse()?)
                .every(Duration::from_secs(30), 2),
            AnalysisMetric::new("p95-latency", "latency_p95")
                .success("<= 200ms".parse()?)
                .every(Duration::from_secs(30), 2),
        ],
    );

    println!("== blue-green: v1 (blue) -> v2 (green), healthy metrics");
    metrics.set_constant("error-rate", 0.002);
    metrics.set_constant("p95-latency", 0.120);
    let rollout = Rollout::new(
        svc.clone(),
        Release::new("v2", "registry/checkout:v2"),
        Strategy::BlueGreen(BlueGreen::new(3).with_step_analysis("health")),
    )
    .with_analysis(health.clone());
    let first = engine.start(rollout).await?.wait().await?;

    println!("\n== canary: v3 into blue, its error rate climbs to 4 % a minute in");
    metrics.restart();
    metrics.set_series(
        "error-rate",
        [(Duration::ZERO, 0.003), (Duration::from_secs(60), 0.04)],
    );
    let rollout = Rollout::new(
        svc.clone(),
        Release::new("v3", "registry/checkout:v3"),
        Strategy::Canary(Canary::new(
            3,
            vec![
                CanaryStep::SetWeight(Weight::new(5)?),
                CanaryStep::Analysis("health".into()),
                CanaryStep::SetWeight(Weight::new(25)?),
                CanaryStep::Analysis("health".into()),
                CanaryStep::SetWeight(Weight::new(50)?),
                CanaryStep::Analysis("health".into()),
            ],
        )),
    )
    .with_analysis(health);
    let second = engine.start(rollout).await?.wait().await?;

    drop(engine);
    let _ = printer.await;
    println!("\n== summary");
    println!("blue-green: {first}");
    println!("canary:     {second}");
    println!(
        "now: {} has all traffic, running {}; {} is scaled to {} replicas",
        Slot::Green,
        workloads.version(&svc, Slot::Green).unwrap_or_default(),
        Slot::Blue,
        workloads.replicas(&svc, Slot::Blue)
    );
    println!(
        "simulated {} router calls in {:?} of wall time",
        router.calls().len(),
        wall.elapsed()
    );
    let ok = matches!(first, Outcome::Promoted { .. })
        && matches!(second, Outcome::RolledBack { .. })
        && router.current(&svc) == Some(TrafficSplit::all_to(Slot::Green));
    if ok {
        Ok(())
    } else {
        Err("the simulation did not end as expected".into())
    }
}

async fn print_events(mut rx: tokio::sync::broadcast::Receiver<RolloutEvent>, t0: Instant) {
    while let Ok(e) = rx.recv().await {
        let t = t0.elapsed().as_secs();
        let line = match e.kind {
            EventKind::Started {
                from_version,
                to_version,
                steps,
                ..
            } => {
                format!(
                    "started {} -> {to_version} in {steps} steps",
                    from_version.unwrap_or_else(|| "nothing".into())
                )
            }
            EventKind::StepStarted { index, total, step } => {
                format!("step {}/{total}: {step}", index + 1)
            }
            EventKind::WeightChanged { split } => format!("  traffic: {split}"),
            EventKind::Probed {
                endpoint, healthy, ..
            } => format!(
                "  probe {endpoint}: {}",
                if healthy { "healthy" } else { "FAILED" }
            ),
            EventKind::AnalysisMeasured { record, .. } => format!(
                "  measured {} = {} -> {:?}",
                record.metric,
                record
                    .value
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| record.error.unwrap_or_default()),
                record.phase
            ),
            EventKind::AnalysisFinished {
                template, phase, ..
            } => format!("  analysis {template}: {phase}"),
            EventKind::Aborted { reason } => format!("ABORTED: {reason}"),
            EventKind::Promoted { version } => format!("PROMOTED {version}"),
            EventKind::RolledBack { reason } => format!("ROLLED BACK: {reason}"),
            EventKind::Paused { reason } => format!("paused: {reason}"),
            EventKind::Resumed => "resumed".into(),
            EventKind::StepFinished { .. } => continue,
            _ => continue,
        };
        println!("[t+{t:>4}s] {line}");
    }
}
