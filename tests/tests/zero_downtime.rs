//! Zero downtime, end to end: real processes behind Atlas's proxy, a
//! concurrent client sending steady traffic, and the engine rolling out a
//! good release (promoted) and a faulty one (rolled back).
//!
//! Asserted for every request of the run: no failed request (a connection
//! error, a timeout, or a 5xx the application did not produce itself), and
//! every answer came from a version allowed in its phase:
//!
//! | request sent | allowed versions |
//! |---|---|
//! | before the first canary step starts | stable only |
//! | between that and the step that makes the new slot stable | stable or new |
//! | after promotion completed | new only |
//! | after a rollback returned the traffic | stable only |

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atlas_core::analysis::AnalysisMetric;
use atlas_core::{
    AnalysisTemplate, BlueGreen, Engine, EventKind, Outcome, ProbePolicy, Release, Rollout,
    RolloutEvent, ServiceName, Slot, Step, Strategy,
};
use atlas_examples::load::{Classified, Load, LoadConfig, Sample};
use atlas_local::file_store::FileStateStore;
use atlas_local::process::{ProcessWorkloads, Readiness};
use atlas_local::proxy::ProxyRouter;
use atlas_metrics::probe::HttpProbe;
use tokio::sync::broadcast;

const DEMO_APP: &str = env!("CARGO_BIN_EXE_atlas-demo-app");

struct Stack {
    svc: ServiceName,
    router: Arc<ProxyRouter>,
    workloads: Arc<ProcessWorkloads>,
    engine: Engine,
    dir: std::path::PathBuf,
}

impl Stack {
    async fn new(name: &str) -> Stack {
        let dir =
            std::env::temp_dir().join(format!("atlas-zero-downtime-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let svc = ServiceName::new(name).unwrap();
        let router = Arc::new(
            ProxyRouter::builder(svc.clone())
                .listen("127.0.0.1:0".parse().unwrap())
                .grace_period(Duration::from_secs(10))
                .build()
                .await
                .unwrap(),
        );
        let workloads = Arc::new(
            ProcessWorkloads::builder()
                .log_dir(dir.join("logs"))
                .grace_period(Duration::from_secs(10))
                .readiness(Readiness::http_get("/ready"))
                .poll_interval(Duration::from_millis(50))
                .build()
                .unwrap(),
        );
        let engine = Engine::builder()
            .workloads(workloads.clone())
            .router(router.clone())
            .probe(Arc::new(HttpProbe::get("/health").unwrap()))
            .metrics(Arc::new(router.metrics()))
            .store(Arc::new(FileStateStore::new(dir.join("state")).unwrap()))
            .poll_interval(Duration::from_millis(50))
            .build()
            .unwrap();
        Stack {
            svc,
            router,
            workloads,
            engine,
            dir,
        }
    }

    fn rollout(&self, version: &str, extra: &[&str]) -> Rollout {
        let mut release = Release::new(version, DEMO_APP);
        for a in extra {
            release = release.with_arg(*a);
        }
        let mut metric = AnalysisMetric::new("error-rate", "error_rate:canary")
            .success("< 1%".parse().unwrap())
            .every(Duration::from_millis(1500), 2);
        metric.initial_delay = Duration::from_millis(500);
        metric.window = Some(Duration::from_secs(2));
        let mut strategy = BlueGreen::new(2).with_step_analysis("health");
        strategy.scale_down_delay = Duration::from_secs(1);
        Rollout::new(self.svc.clone(), release, Strategy::BlueGreen(strategy))
            .with_analysis(AnalysisTemplate::new("health", vec![metric]))
            .with_probe(ProbePolicy {
                period: Duration::from_millis(200),
                ..ProbePolicy::default()
            })
            .with_progress_deadline(Duration::from_secs(30))
    }

    async fn shutdown(self) {
        self.workloads.shutdown().await;
        self.router.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// When the phases of one rollout began, from its events.
#[derive(Debug, Default)]
struct Phases {
    /// The first traffic step started (before its router call).
    first_canary_step: Option<SystemTime>,
    /// The promote step finished: all traffic on the new slot.
    promoted: Option<SystemTime>,
    /// The rollback's router call returned the traffic.
    returned: Option<SystemTime>,
}

fn phases(events: &mut broadcast::Receiver<RolloutEvent>) -> Phases {
    let mut p = Phases::default();
    let mut aborted = false;
    while let Ok(e) = events.try_recv() {
        match e.kind {
            EventKind::StepStarted {
                step: Step::SetWeight(_),
                ..
            } if p.first_canary_step.is_none() => {
                p.first_canary_step = Some(e.at);
            }
            EventKind::StepFinished {
                step: Step::Promote,
                ..
            } => p.promoted = Some(e.at),
            EventKind::Aborted { .. } => aborted = true,
            EventKind::WeightChanged { .. } if aborted && p.returned.is_none() => {
                p.returned = Some(e.at)
            }
            _ => {}
        }
    }
    p
}

fn version_of(s: &Sample) -> Option<&str> {
    match &s.result {
        Classified::Served(v) | Classified::AppError(v) => Some(v),
        Classified::Failed(_) => None,
    }
}

/// Asserts no failure and that each answer's version is allowed for when
/// its request was sent. `window` limits the check to samples sent in it.
fn check(
    samples: &[Sample],
    from: SystemTime,
    to: SystemTime,
    stable: &str,
    new: &str,
    p: &Phases,
) -> usize {
    let mut checked = 0;
    for s in samples.iter().filter(|s| s.sent >= from && s.sent < to) {
        let version = version_of(s).unwrap_or_else(|| panic!("failed request: {:?}", s.result));
        let before_canary = p.first_canary_step.is_none_or(|t| s.sent < t);
        let after_promotion = p.promoted.is_some_and(|t| s.sent > t);
        let after_return = p.returned.is_some_and(|t| s.sent > t);
        let allowed: &[&str] = if before_canary || after_return {
            &[stable]
        } else if after_promotion {
            &[new]
        } else {
            &[stable, new]
        };
        assert!(
            allowed.contains(&version),
            "request sent at {:?} answered by {version}, allowed {allowed:?} ({p:?})",
            s.sent
        );
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_and_rollback_under_load_fail_no_request() {
    let stack = Stack::new("zdt").await;
    let first = stack
        .engine
        .start(stack.rollout("v1", &[]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        first,
        Outcome::Promoted {
            version: "v1".into()
        }
    );

    let mut config = LoadConfig::new(stack.router.local_addr(), 300);
    config.record = true;
    let load = Load::start(config);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A good release: promoted, with every answer from an allowed version.
    let t_v2 = SystemTime::now();
    let mut events = stack.engine.subscribe();
    let v2 = stack
        .engine
        .start(stack.rollout("v2", &[]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        v2,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    let p2 = phases(&mut events);
    assert!(
        p2.first_canary_step.is_some() && p2.promoted.is_some(),
        "{p2:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A faulty release: rolled back by analysis.
    let t_v3 = SystemTime::now();
    let mut events = stack.engine.subscribe();
    let v3 = stack
        .engine
        .start(stack.rollout("v3", &["--error-rate", "0.2"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let Outcome::RolledBack { reason } = &v3 else {
        panic!("v3 must be rolled back, got {v3}")
    };
    assert!(reason.contains("error-rate"), "{reason}");
    let p3 = phases(&mut events);
    assert!(p3.returned.is_some(), "{p3:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_end = SystemTime::now();

    let (totals, samples) = load.stop().await;
    assert_eq!(
        totals.failed, 0,
        "failed requests: {:?}",
        totals.failure_examples
    );
    assert!(totals.sent >= 1000, "steady load ran: {totals:?}");
    let before = check(
        &samples,
        SystemTime::UNIX_EPOCH,
        t_v2,
        "v1",
        "v1",
        &Phases::default(),
    );
    let during_v2 = check(&samples, t_v2, t_v3, "v1", "v2", &p2);
    let during_v3 = check(&samples, t_v3, t_end, "v2", "v3", &p3);
    assert!(
        before > 0 && during_v2 > 500 && during_v3 > 100,
        "{before} {during_v2} {during_v3}"
    );
    // v3's own errors happened, and only while it had canary traffic.
    assert!(
        totals.app_errors > 0,
        "the faulty release did answer with errors"
    );
    for s in samples
        .iter()
        .filter(|s| matches!(s.result, Classified::AppError(_)))
    {
        assert_eq!(version_of(s), Some("v3"));
        assert!(
            p3.returned.is_none_or(|t| s.sent < t),
            "no v3 error after the rollback"
        );
    }
    // Traffic is back on v2, and v3 is gone.
    assert_eq!(
        stack.router.endpoints(Slot::Blue).len(),
        0,
        "v3's slot drained"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_abort_mid_rollout_fails_no_request() {
    let stack = Stack::new("abort").await;
    stack
        .engine
        .start(stack.rollout("v1", &[]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let mut config = LoadConfig::new(stack.router.local_addr(), 300);
    config.record = true;
    let load = Load::start(config);
    let mut watch = stack.engine.subscribe();
    let mut events = stack.engine.subscribe();
    let handle = stack.engine.start(stack.rollout("v2", &[])).await.unwrap();
    // Abort once half the traffic is on the new release.
    loop {
        let e = watch.recv().await.unwrap();
        if matches!(&e.kind, EventKind::WeightChanged { split } if split.canary_weight().percent() == 50)
        {
            break;
        }
    }
    handle.abort().unwrap();
    let outcome = handle.wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            reason: "aborted by user".into()
        }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (totals, samples) = load.stop().await;
    assert_eq!(
        totals.failed, 0,
        "failed requests: {:?}",
        totals.failure_examples
    );
    let p = phases(&mut events);
    let checked = check(
        &samples,
        SystemTime::UNIX_EPOCH,
        SystemTime::now(),
        "v1",
        "v2",
        &p,
    );
    assert!(checked > 200);
    assert!(
        totals.by_version.contains_key("v2"),
        "v2 served while it had traffic"
    );
    stack.shutdown().await;
}
