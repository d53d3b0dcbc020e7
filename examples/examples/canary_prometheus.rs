//! A canary judged by a real Prometheus: a good release is promoted, a bad
//! one is rolled back by its analysis.
//!
//! The workloads and the router are Atlas's mocks (`atlas_core::testing`),
//! but the signals are real: this program serves the application's request
//! metrics (`http_requests_total{code}`, `http_request_duration_seconds`,
//! labelled with the slot and version each simulated request hit) on
//! `127.0.0.1:19093/metrics`, Prometheus scrapes them every second, and the
//! engine's analysis asks Prometheus — through `PrometheusProvider` and the
//! built-in `request-success-rate` and `request-duration-p95` templates —
//! whether the canary is healthy. Traffic follows the router's current
//! split, so the canary only has requests once the engine sends it some.
//!
//! - `v2` is healthy: promoted after two analyses.
//! - `v3` fails one request in ten and answers in ~350 ms: the first
//!   analysis fails and the engine returns all traffic to stable.
//!
//! It needs a Prometheus that scrapes `127.0.0.1:19093` every second. It
//! uses the one at `ATLAS_TEST_PROMETHEUS_URL` (default
//! `http://127.0.0.1:9090`), which is what `cargo xtask test` starts; to run
//! one by hand (Debian):
//!
//! ```text
//! apt-get install -y --no-install-recommends prometheus
//! cat > /tmp/prom.yml <<'EOF'
//! global: {scrape_interval: 1s}
//! scrape_configs:
//!   - job_name: atlas-test
//!     static_configs: [{targets: ['127.0.0.1:19093']}]
//! EOF
//! prometheus --config.file=/tmp/prom.yml --storage.tsdb.path=/tmp/prom-data \
//!     --web.listen-address=127.0.0.1:9090 &
//! ```
//!
//! Ctrl-C (SIGINT) or SIGTERM aborts the canary in progress (all traffic
//! back to stable), prints one line starting with `interrupted`, and exits
//! with 130 (SIGINT) or 143 (SIGTERM).
//!
//! Run: `cargo run --example canary_prometheus` (about a minute).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use atlas_core::testing::{MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe};
use atlas_core::{
    AnalysisTemplate, Canary, CanaryStep, Engine, EventKind, MetricProvider, MetricQuery, Outcome,
    Release, Rollout, RolloutEvent, ServiceName, Slot, Strategy, TrafficRouter, TrafficSplit,
    Weight, Workloads,
};
use atlas_examples::interrupt::{Interrupted, Interrupts};
use atlas_metrics::prometheus::RequestMetrics;
use atlas_metrics::{PrometheusProvider, Telemetry};
use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Where the application metrics are served; Prometheus must scrape it.
const METRICS_ADDR: &str = "127.0.0.1:19093";
/// The Prometheus job that scrapes it.
const JOB: &str = "atlas-test";

type Labels = Vec<(String, String)>;

fn main() -> ExitCode {
    atlas_metrics::tls::install_default_crypto_provider();
    atlas_examples::main_support::init_tracing("warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // First, so that a signal at any point is handled, not fatal.
    let interrupts = Interrupts::listen("canary_prometheus")?;
    match canaries(&interrupts).await {
        Err(e) => match e.downcast::<Interrupted>() {
            Ok(interrupted) => {
                // The workloads and the router are in-memory mocks, and the
                // metrics server ends with the program.
                println!("{interrupted}; nothing else to stop");
                Ok(interrupted.signal.exit_code())
            }
            Err(e) => Err(e),
        },
        ok => ok,
    }
}

async fn canaries(interrupts: &Interrupts) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (url, source) = match std::env::var("ATLAS_TEST_PROMETHEUS_URL") {
        Ok(u) => (u, "ATLAS_TEST_PROMETHEUS_URL"),
        Err(_) => ("http://127.0.0.1:9090".to_string(), "the default address"),
    };
    let ready = prometheus_answers(&url).await;
    if !ready {
        eprintln!(
            "No Prometheus answers at {url} (from {source}).\n\
             This example needs one that scrapes {METRICS_ADDR} every second (job {JOB}):\n\
             run `cargo xtask test` once, or start one as the header of\n\
             examples/examples/canary_prometheus.rs shows, then run it again."
        );
        return Ok(ExitCode::from(2));
    }
    println!("Using Prometheus at {url} (found via {source}).");

    let svc = ServiceName::new("checkout")?;
    let workloads = MockWorkloads::new();
    let router = RecordingRouter::new();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
        .await?;
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await?;

    let app = AppMetrics::new();
    serve_metrics(METRICS_ADDR.parse()?, app.registry.clone()).await?;
    let traffic = tokio::spawn(simulate_traffic(
        app.clone(),
        svc.clone(),
        workloads.clone(),
        router.clone(),
    ));

    let prometheus = PrometheusProvider::builder(&url)
        .timeout(Duration::from_secs(10))
        .build()?;
    println!("Waiting for Prometheus to scrape {METRICS_ADDR} ...");
    interrupts.or_stop(wait_for_scrape(&prometheus)).await??;

    let requests = RequestMetrics::new(format!(
        "job=\"{JOB}\",instance=\"{METRICS_ADDR}\",slot=\"{{{{canary}}}}\",version=\"{{{{canary_version}}}}\""
    ));
    let window = Duration::from_secs(5);
    let template = AnalysisTemplate::new(
        "canary-health",
        vec![
            requests.success_rate(0.99, window)?,
            requests.p95_latency(Duration::from_millis(200), window)?,
        ],
    );
    println!("Analysis queries:");
    for m in &template.metrics {
        println!("  {}: {}  ({})", m.name, m.query, describe(m));
    }

    let telemetry = Telemetry::new();
    let engine = Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .metrics(Arc::new(prometheus.clone()))
        .store(Arc::new(MemoryStateStore::new()))
        .build()?;
    telemetry.spawn_collector(engine.subscribe());
    tokio::spawn(print_events(engine.subscribe()));

    let steps = vec![
        CanaryStep::SetWeight(Weight::new(20)?),
        // Long enough for a 5 s window of canary-only requests.
        CanaryStep::Pause(Some(Duration::from_secs(8))),
        CanaryStep::Analysis("canary-health".into()),
        CanaryStep::SetWeight(Weight::new(50)?),
        CanaryStep::Pause(Some(Duration::from_secs(8))),
        CanaryStep::Analysis("canary-health".into()),
    ];
    let mut outcomes = Vec::new();
    for version in ["v2", "v3"] {
        println!("\n== Rolling out {version} ==");
        let rollout = Rollout::new(
            svc.clone(),
            Release::new(version, format!("checkout:{version}")),
            Strategy::Canary(Canary::new(2, steps.clone())),
        )
        .with_analysis(template.clone());
        let outcome = match interrupts.finish(engine.start(rollout).await?).await {
            Ok(outcome) => outcome,
            Err(e) => {
                traffic.abort();
                return Err(e);
            }
        };
        println!("=> {version}: {outcome:?}");
        outcomes.push(outcome);
    }
    traffic.abort();

    println!("\nAtlas's own metrics after both rollouts:");
    for line in telemetry.encode().lines() {
        if line.starts_with("atlas_rollbacks_total")
            || line.starts_with("atlas_rollouts_finished_total")
            || line.starts_with("atlas_analysis_runs_total")
        {
            println!("  {line}");
        }
    }

    let expected = matches!(outcomes[0], Outcome::Promoted { .. })
        && matches!(outcomes[1], Outcome::RolledBack { .. });
    if expected {
        println!("\nv2 was promoted and v3 rolled back, as Prometheus' numbers demanded.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nUnexpected outcomes: {outcomes:?}");
        Ok(ExitCode::FAILURE)
    }
}

fn describe(m: &atlas_core::AnalysisMetric) -> String {
    m.success_condition
        .map(|c| format!("success when {c}"))
        .unwrap_or_default()
}

async fn prometheus_answers(url: &str) -> bool {
    // A query of `vector(1)` through the provider proves the server is up
    // and speaks the API.
    let Ok(p) = PrometheusProvider::builder(url)
        .timeout(Duration::from_secs(3))
        .retry(atlas_core::retry::RetryConfig::no_retries())
        .build()
    else {
        return false;
    };
    p.query("vector(1)", None).await.is_ok()
}

async fn wait_for_scrape(prom: &PrometheusProvider) -> Result<(), Box<dyn std::error::Error>> {
    let q = MetricQuery {
        metric: "up".into(),
        query: format!("max(up{{job=\"{JOB}\",instance=\"{METRICS_ADDR}\"}})"),
        window: Duration::from_secs(5),
        args: Default::default(),
    };
    for _ in 0..60 {
        if prom.measure(&q).await?.value() == Some(1.0) {
            // rate() over 5 s needs a few samples.
            tokio::time::sleep(Duration::from_secs(3)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "Prometheus never scraped {METRICS_ADDR}: does it have a job scraping that target every second?"
    )
    .into())
}

/// The application's metrics, as an instrumented service would export them.
#[derive(Clone)]
struct AppMetrics {
    registry: Arc<Registry>,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
}

impl AppMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 10))
        });
        registry.register("http_requests", "Requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Request latency",
            durations.clone(),
        );
        AppMetrics {
            registry: Arc::new(registry),
            requests,
            durations,
        }
    }
}

/// About 200 requests a second, split by the router's current weights; the
/// version running in the chosen slot decides how the request goes.
async fn simulate_traffic(
    app: AppMetrics,
    svc: ServiceName,
    workloads: MockWorkloads,
    router: RecordingRouter,
) {
    let counter = AtomicU64::new(0);
    loop {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(split) = router.current(&svc) {
            // A deterministic spread over 0..100 instead of randomness.
            let bucket = (n * 37 % 100) as u8;
            let slot = if bucket < split.canary_weight().percent() {
                split.canary()
            } else {
                split.stable()
            };
            if let Some(version) = workloads.version(&svc, slot) {
                let bad = version == "v3";
                let code = if bad && n.is_multiple_of(10) {
                    "500"
                } else {
                    "200"
                };
                let latency = if bad { 0.35 } else { 0.04 };
                let base = vec![
                    ("slot".to_string(), slot.to_string()),
                    ("version".to_string(), version),
                ];
                let mut with_code = base.clone();
                with_code.push(("code".to_string(), code.to_string()));
                app.requests.get_or_create(&with_code).inc();
                app.durations.get_or_create(&base).observe(latency);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for Prometheus to scrape: {e}"))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let mut text = String::new();
                    let _ = encode(&mut text, &registry);
                    let mut response = http::Response::new(Full::new(Bytes::from(text)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn print_events(mut events: tokio::sync::broadcast::Receiver<RolloutEvent>) {
    while let Ok(e) = events.recv().await {
        let line = match &e.kind {
            EventKind::WeightChanged { split } => format!("traffic: {split}"),
            EventKind::AnalysisMeasured { record, .. } => format!(
                "  measured {} = {} -> {:?}",
                record.metric,
                record
                    .value
                    .as_ref()
                    .map(|v| v.to_string())
                    .or_else(|| record.error.clone())
                    .unwrap_or_default(),
                record.phase
            ),
            EventKind::AnalysisFinished { phase, message, .. } => {
                format!("analysis {phase}: {message}")
            }
            EventKind::Paused { reason } => format!("paused: {reason}"),
            EventKind::Aborted { reason } => format!("aborting: {reason}"),
            EventKind::Promoted { version } => format!("promoted {version}"),
            EventKind::RolledBack { reason } => format!("rolled back: {reason}"),
            _ => continue,
        };
        println!("[{}] {line}", e.service);
    }
}
