//! How fast an abort takes traffic off a canary, on the real local stack.
//!
//! Runs the demo app as processes behind Atlas's proxy, starts a canary at
//! 50 % that pauses, drives ~2,000 requests/s through the proxy, then calls
//! `RolloutHandle::abort()` and measures:
//!
//! - **engine**: from `abort()` until the proxy holds the all-stable split
//!   (the engine makes the one router call first, then persists the
//!   rollback decision with an fsync'd file write; a crash in between is
//!   reconciled on resume);
//! - **clients**: from `abort()` until the last request that the canary
//!   answered was sent — after it, every new request reached stable.
//!
//! Baseline in the same process: a bare `ProxyRouter::set_split` call,
//! which is the floor any abort path has to pay.
//!
//! Run: `cargo run --release --example abort_latency [ITERATIONS]`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use atlas_core::{
    Canary, CanaryStep, Engine, EventKind, ProbePolicy, Release, Rollout, ServiceName, Slot,
    StateStore, Strategy, TrafficRouter, Weight,
};
use atlas_examples::load::{Classified, Load, LoadConfig};
use atlas_local::file_store::FileStateStore;
use atlas_local::process::{ProcessWorkloads, Readiness};
use atlas_local::proxy::ProxyRouter;
use atlas_metrics::probe::HttpProbe;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("demo-app") {
        let _ = atlas_examples::demo_app::main_from_args(args.into_iter().skip(1));
        return Ok(());
    }
    let iterations: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(20);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(iterations))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(name: &str, mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let p50 = v[v.len() / 2];
    let max = *v.last().expect("at least one iteration");
    println!(
        "  {name:<44} p50 {:>7.3} ms   max {:>7.3} ms   (n = {})",
        ms(p50),
        ms(max),
        v.len()
    );
    (ms(p50), ms(max))
}

async fn run(iterations: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("atlas-abort-latency-{}", std::process::id()));
    let svc = ServiceName::new("bench")?;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let router = Arc::new(
        ProxyRouter::builder(svc.clone())
            .listen("127.0.0.1:0".parse()?)
            .build()
            .await?,
    );
    let workloads = Arc::new(
        ProcessWorkloads::builder()
            .log_dir(dir.join("logs"))
            .grace_period(Duration::from_secs(5))
            .readiness(Readiness::http_get("/ready"))
            .poll_interval(Duration::from_millis(20))
            .build()?,
    );
    let engine = Engine::builder()
        .workloads(workloads.clone())
        .router(router.clone())
        .probe(Arc::new(HttpProbe::get("/health")?))
        .store(Arc::new(FileStateStore::new(dir.join("state"))?))
        .poll_interval(Duration::from_millis(20))
        .build()?;
    let probe = ProbePolicy {
        period: Duration::from_millis(100),
        ..ProbePolicy::default()
    };
    let first = Rollout::new(
        svc.clone(),
        Release::new("v1", &me).with_arg("demo-app"),
        Strategy::Canary(Canary::new(2, vec![])),
    )
    .with_probe(probe.clone());
    engine.start(first).await?.wait().await?;

    // Baseline: the bare router call, in this process, under the same load.
    let mut config = LoadConfig::new(router.local_addr(), 2000);
    config.workers = 16;
    config.record = true;
    let load = Load::start(config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stable = router.split(&svc).await?.expect("split set");
    let mut bare = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        router.set_split(&svc, &stable).await?;
        bare.push(t.elapsed());
    }

    // The other component of an abort: persisting the decision (the file
    // store writes a temp file, fsyncs it, renames it, fsyncs the directory).
    let store = FileStateStore::new(dir.join("bench-store"))?;
    let mut writes = Vec::new();
    let state_svc = ServiceName::new("write-bench")?;
    let probe_state = {
        let r = Rollout::new(
            state_svc.clone(),
            Release::new("v", "v"),
            Strategy::Canary(Canary::new(1, vec![])),
        );
        atlas_core::RolloutState {
            id: "bench".into(),
            rollout: r,
            stable: Slot::Blue,
            stable_version: None,
            initial: false,
            phase: atlas_core::Phase::Progressing,
            step: 0,
            weight: Weight::ZERO,
            paused: false,
            skip_next_pause: false,
            full_promotion: false,
            promoted: false,
            plan: None,
        }
    };
    let mut version = None;
    for _ in 0..50 {
        let t = Instant::now();
        version = Some(
            store
                .compare_and_swap(&state_svc, version, &probe_state)
                .await?,
        );
        writes.push(t.elapsed());
    }

    let mut engine_times = Vec::new();
    let mut aborts = Vec::new();
    for i in 0..iterations {
        let canary = Rollout::new(
            svc.clone(),
            Release::new("canary", &me).with_arg("demo-app"),
            Strategy::Canary(Canary::new(
                2,
                vec![
                    CanaryStep::SetWeight(Weight::new(50)?),
                    CanaryStep::Pause(None),
                ],
            )),
        )
        .with_probe(probe.clone());
        let mut events = engine.subscribe();
        let handle = engine.start(canary).await?;
        loop {
            if let EventKind::Paused { .. } = events.recv().await?.kind {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = SystemTime::now();
        handle.abort()?;
        let outcome = handle.wait().await?;
        let done = SystemTime::now();
        let mut split_at = None;
        while let Ok(e) = events.try_recv() {
            if let EventKind::WeightChanged { split } = &e.kind
                && e.at >= t0
                && split.is_all_to(split.stable())
                && split.stable() == Slot::Blue
            {
                split_at = Some(e.at);
            }
        }
        let split_at = split_at.ok_or("no return split after the abort")?;
        engine_times.push(split_at.duration_since(t0)?);
        aborts.push((t0, done));
        eprintln!("iteration {}/{iterations}: {outcome}", i + 1);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (totals, samples) = load.stop().await;
    // Client view: the last request sent after each abort that the canary
    // still answered.
    let mut client_times = Vec::new();
    for (t0, done) in &aborts {
        // Up to the end of the rollback: the next iteration's canary must
        // not count.
        let last_canary = samples
            .iter()
            .filter(|s| s.sent >= *t0 && s.sent < *done)
            .filter(|s| matches!(&s.result, Classified::Served(v) | Classified::AppError(v) if v == "canary"))
            .map(|s| s.sent.duration_since(*t0).unwrap_or_default())
            .max()
            .unwrap_or_default();
        client_times.push(last_canary);
    }
    workloads.shutdown().await;
    router.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "abort latency, {iterations} aborts of a 50 % canary under {} requests/s",
        2000
    );
    let (bare_p50, _) = summary("baseline: bare ProxyRouter::set_split", bare);
    summary("component: FileStateStore compare_and_swap", writes);
    let (engine_p50, engine_max) =
        summary("engine: abort() -> all-stable split applied", engine_times);
    let (client_p50, client_max) =
        summary("clients: abort() -> last canary request sent", client_times);
    println!(
        "  ratio engine/baseline (p50): {:.1}x",
        engine_p50 / bare_p50.max(1e-6)
    );
    println!("  requests: {} sent, {} failed", totals.sent, totals.failed);
    println!(
        "  target < 10 ms: {}",
        if engine_max < 10.0 && client_max < 10.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = client_p50;
    Ok(())
}
