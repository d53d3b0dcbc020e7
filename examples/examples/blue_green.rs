//! A real zero-downtime blue-green rollout on one host, under live load.
//!
//! Atlas starts three replicas of a small HTTP app (v1) as local processes
//! in the blue slot behind its own proxy, drives steady traffic through the
//! proxy, then rolls out v2 to the green slot through 5 → 25 → 50 → 75 →
//! 100 %, probing each replica's `/health` and analysing the canary's live
//! error rate and p95 latency from the proxy's own metrics between steps.
//! Finally it rolls out v3, which answers 5 % of requests with errors:
//! analysis catches it at the 5 % step and Atlas rolls back automatically.
//! The summary counts every request sent during the whole run and how many
//! failed (none should).
//!
//! Needs no service: the app, the proxy, the metrics and the state store
//! are all local. The app is this same binary, started as `blue_green
//! demo-app …`.
//!
//! Ctrl-C (SIGINT) or SIGTERM aborts the rollout in progress (all traffic
//! back on the stable slot, the new slot scaled down: the run's state is
//! deleted, so there would be nothing to resume), stops the load, the
//! replicas and the proxy, removes the work directory, prints one line
//! starting with `interrupted` saying what it did, and exits with 130
//! (SIGINT) or 143 (SIGTERM). A second signal exits at once. On Linux the
//! replicas die with this program even when it is SIGKILLed; the work
//! directory it leaves then is removed by the next run.
//!
//! Run: `cargo run --example blue_green`
//! (`RUST_LOG=atlas_core=info` shows the engine's own tracing events.)

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_core::analysis::AnalysisMetric;
use atlas_core::{
    AnalysisTemplate, BlueGreen, Engine, EventKind, Outcome, ProbePolicy, Release, Rollout,
    RolloutEvent, ServiceName, Slot, Strategy, TrafficRouter,
};
use atlas_examples::interrupt::{self, Ended, Interrupted, Interrupts};
use atlas_examples::load::{Load, LoadConfig, LoadTotals};
use atlas_examples::main_support::StatusResult;
use atlas_local::file_store::FileStateStore;
use atlas_local::process::{ProcessWorkloads, Readiness};
use atlas_local::proxy::{ProxyMetrics, ProxyRouter};
use atlas_metrics::probe::HttpProbe;
use tokio::sync::broadcast;

/// Requests per second the load generator sends through the proxy.
const LOAD_RATE: u32 = 400;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("demo-app") {
        return atlas_examples::demo_app::main_from_args(args.into_iter().skip(1));
    }
    // The demo prints every engine event itself; RUST_LOG shows more.
    atlas_examples::main_support::init_tracing("error");
    atlas_examples::main_support::run_with_status("blue_green", run())
}

async fn run() -> StatusResult {
    // First, so that a signal at any point is handled, not fatal.
    let interrupts = Interrupts::listen("blue_green")?;
    let work = interrupt::work_dir("atlas-blue-green")?;
    interrupts.remove_on_forced_exit(&work);
    let ended = demo(&work, &interrupts).await;
    let removed = std::fs::remove_dir_all(&work);
    Ok(ended?.exit_code(&work, &removed, |ok| {
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }))
}

/// The local stack the rollouts run on.
struct Stack {
    svc: ServiceName,
    me: String,
    router: Arc<ProxyRouter>,
    metrics: ProxyMetrics,
    engine: Engine,
    t0: Instant,
}

/// The load and the once-a-second traffic line, once started.
#[derive(Default)]
struct Traffic {
    load: Option<Load>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    async fn stop(&mut self) -> Option<LoadTotals> {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        Some(self.load.take()?.stop().await.0)
    }
}

async fn demo(
    work: &Path,
    interrupts: &Interrupts,
) -> Result<Ended<bool>, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let svc = ServiceName::new("shop")?;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();

    let router = Arc::new(
        ProxyRouter::builder(svc.clone())
            .listen("127.0.0.1:0".parse()?)
            .admin("127.0.0.1:0".parse()?)
            .grace_period(Duration::from_secs(10))
            .metrics_window(Duration::from_secs(30))
            .build()
            .await?,
    );
    let workloads = Arc::new(
        ProcessWorkloads::builder()
            .log_dir(work.join("logs"))
            .grace_period(Duration::from_secs(10))
            .readiness(Readiness::http_get("/ready"))
            .poll_interval(Duration::from_millis(100))
            .build()?,
    );
    let metrics = router.metrics();
    let engine = Engine::builder()
        .workloads(workloads.clone())
        .router(router.clone())
        .probe(Arc::new(HttpProbe::get("/health")?))
        .metrics(Arc::new(metrics.clone()))
        .store(Arc::new(FileStateStore::new(work.join("state"))?))
        .poll_interval(Duration::from_millis(100))
        .build()?;
    println!("Atlas blue-green demo (Ctrl-C aborts the rollout in progress and cleans up)");
    println!("  proxy   http://{}/", router.local_addr());
    if let Some(admin) = router.admin_addr() {
        println!("  metrics http://{admin}/metrics");
    }
    println!("  work    {}", work.display());
    println!("  logs    {}", work.join("logs").display());
    let progress = tokio::spawn(show_events(engine.subscribe(), t0));
    let stack = Stack {
        svc,
        me,
        router,
        metrics,
        engine,
        t0,
    };

    let mut traffic = Traffic::default();
    let result = rollouts(&stack, &mut traffic, interrupts).await;
    // Whatever happened: stop the load first, so the proxy has no request
    // in flight, then the replicas and the proxy.
    let totals = traffic.stop().await;
    let live = stack.router.split(&stack.svc).await.ok().flatten();
    let replicas = workloads.shutdown().await;
    stack.router.shutdown().await;
    drop(stack.engine);
    let _ = progress.await;
    let [v1, v2, v3] = match Ended::sort(result, replicas)? {
        Ended::Finished(outcomes) => outcomes,
        Ended::Interrupted {
            interrupted,
            replicas,
        } => {
            return Ok(Ended::Interrupted {
                interrupted,
                replicas,
            });
        }
    };
    let totals = totals.unwrap_or_default();

    section("summary");
    println!("  v1: {v1}");
    println!("  v2: {v2}");
    println!("  v3: {v3}");
    println!(
        "  traffic now: {}",
        live.map(|s| s.to_string()).unwrap_or_else(|| "none".into())
    );
    println!("  requests sent:   {}", totals.sent);
    println!("  served (2xx):    {}", totals.served);
    println!(
        "  app errors:      {}  (v3's own 500s while it had its 5 % canary share)",
        totals.app_errors
    );
    println!(
        "  failed requests: {}  (connection errors, timeouts, or 5xx not from the app)",
        totals.failed
    );
    for f in &totals.failure_examples {
        println!("    e.g. {f}");
    }
    let versions: Vec<String> = totals
        .by_version
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    println!("  answers by version: {}", versions.join(", "));
    println!("  total time: {:.1}s", t0.elapsed().as_secs_f64());
    let ok = totals.failed == 0
        && matches!(v2, Outcome::Promoted { .. })
        && matches!(v3, Outcome::RolledBack { .. })
        && totals.sent > 0;
    println!(
        "{}",
        if ok {
            "OK: zero failed requests, v2 promoted, v3 rolled back"
        } else {
            "NOT OK"
        }
    );
    Ok(Ended::Finished(ok))
}

impl Stack {
    /// Rolls out `version` of the demo app (with `extra` flags) and waits
    /// for the outcome; a stop signal aborts it.
    async fn roll_out(
        &self,
        interrupts: &Interrupts,
        version: &str,
        extra: &[&str],
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        let handle = self
            .engine
            .start(rollout(&self.svc, &self.me, version, extra))
            .await?;
        interrupts.finish(handle).await
    }
}

/// Lets the traffic settle between rollouts, unless a stop signal comes.
async fn settle(interrupts: &Interrupts) -> Result<(), Interrupted> {
    interrupts
        .or_stop(tokio::time::sleep(Duration::from_secs(2)))
        .await
}

/// The three rollouts, under load from the second on. A stop signal ends
/// them with `Interrupted`, after aborting the rollout in progress.
async fn rollouts(
    stack: &Stack,
    traffic: &mut Traffic,
    interrupts: &Interrupts,
) -> Result<[Outcome; 3], Box<dyn std::error::Error>> {
    // v1: the first release of the service goes straight to blue.
    section("1/3 deploy v1 to blue (first release: no canary, nothing to compare with)");
    let v1 = stack.roll_out(interrupts, "v1", &[]).await?;
    expect(&v1, true)?;

    let mut load_config = LoadConfig::new(stack.router.local_addr(), LOAD_RATE);
    load_config.workers = 16;
    traffic.load = Some(Load::start(load_config));
    traffic.ticker = Some(tokio::spawn(show_traffic(
        stack.metrics.clone(),
        stack.router.clone(),
        stack.svc.clone(),
        stack.t0,
    )));
    settle(interrupts).await?;

    section("2/3 roll out v2 to green: 5 → 25 → 50 → 75 → 100 % with analysis between steps");
    let v2 = stack.roll_out(interrupts, "v2", &[]).await?;
    expect(&v2, true)?;
    settle(interrupts).await?;

    section("3/3 roll out v3 (answers 5 % of requests with 500): analysis must catch it");
    let v3 = stack
        .roll_out(interrupts, "v3", &["--error-rate", "0.05"])
        .await?;
    expect(&v3, false)?;
    settle(interrupts).await?;
    Ok([v1, v2, v3])
}

/// One rollout of the demo app at `version`, with `extra` app flags.
fn rollout(svc: &ServiceName, me: &str, version: &str, extra: &[&str]) -> Rollout {
    let mut release = Release::new(version, me).with_arg("demo-app");
    for a in extra {
        release = release.with_arg(*a);
    }
    // Short intervals so the demo fits in a minute; production settings
    // would measure for minutes per step.
    let health = AnalysisTemplate::new(
        "health",
        vec![
            analysis_metric("error-rate", "error_rate:canary", "< 1%"),
            analysis_metric("p95-latency", "latency_p95:canary", "<= 200ms"),
        ],
    );
    let mut strategy = BlueGreen::new(3).with_step_analysis("health");
    strategy.scale_down_delay = Duration::from_secs(3);
    Rollout::new(svc.clone(), release, Strategy::BlueGreen(strategy))
        .with_analysis(health)
        .with_probe(ProbePolicy {
            period: Duration::from_millis(500),
            ..ProbePolicy::default()
        })
        .with_progress_deadline(Duration::from_secs(60))
}

fn analysis_metric(name: &str, query: &str, condition: &str) -> AnalysisMetric {
    let mut m = AnalysisMetric::new(name, query)
        .success(condition.parse().expect("valid condition"))
        .every(Duration::from_secs(2), 2);
    m.initial_delay = Duration::from_secs(1);
    m.window = Some(Duration::from_secs(3));
    m
}

fn expect(outcome: &Outcome, promoted: bool) -> Result<(), Box<dyn std::error::Error>> {
    match (outcome, promoted) {
        (Outcome::Promoted { .. }, true) | (Outcome::RolledBack { .. }, false) => Ok(()),
        _ => Err(format!("unexpected outcome: {outcome}").into()),
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

async fn show_events(mut rx: broadcast::Receiver<RolloutEvent>, t0: Instant) {
    loop {
        let e = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let line = match e.kind {
            EventKind::StepStarted { index, total, step } => {
                format!("step {}/{total}: {step}", index + 1)
            }
            EventKind::Probed {
                endpoint,
                healthy,
                detail,
            } => {
                format!(
                    "  probe {}: {}",
                    endpoint.replica,
                    if healthy {
                        detail
                    } else {
                        format!("FAILED {detail}")
                    }
                )
            }
            EventKind::AnalysisFinished {
                template,
                phase,
                message,
            } => format!("  analysis {template}: {phase} ({message})"),
            EventKind::Aborted { reason } => format!("ABORTED: {reason}"),
            EventKind::Promoted { version } => format!("PROMOTED {version}"),
            EventKind::RolledBack { .. } => {
                "ROLLED BACK: all traffic returned to the stable slot".to_string()
            }
            _ => continue,
        };
        println!("[{:>5.1}s] {line}", t0.elapsed().as_secs_f64());
    }
}

/// Prints, once a second, the split and each slot's live request rate,
/// error rate and p95 latency over the last 2 seconds.
async fn show_traffic(
    metrics: ProxyMetrics,
    router: Arc<ProxyRouter>,
    svc: ServiceName,
    t0: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let split = match router.split(&svc).await {
            Ok(Some(s)) => s,
            _ => continue,
        };
        let mut line = format!(
            "[{:>5.1}s]   traffic {split:<22}",
            t0.elapsed().as_secs_f64()
        );
        for slot in [Slot::Blue, Slot::Green] {
            let s = metrics.window_stats(slot, Duration::from_secs(2));
            if s.requests == 0 {
                line.push_str(&format!(" | {slot:<5}    idle"));
                continue;
            }
            let err = s.error_rate().unwrap_or(0.0) * 100.0;
            let p95 = s
                .latency_p95
                .map(|d| format!("{:.1}ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".into());
            line.push_str(&format!(
                " | {slot:<5} {:>4.0} rps err {err:>4.1}% p95 {p95:>7}",
                s.request_rate()
            ));
        }
        println!("{line}");
    }
}
