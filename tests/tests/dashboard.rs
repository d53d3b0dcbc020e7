//! Every PromQL query of the Grafana dashboard (`deploy/grafana/atlas.json`)
//! against the real Prometheus scraping a live Atlas: the engine's
//! telemetry after a canary with analysis, backup and drill records, and
//! `atlas-local`'s proxy carrying traffic. Each query must parse and
//! return series.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use atlas_core::analysis::{AnalysisMetric, AnalysisTemplate};
use atlas_core::autoscale::{
    HorizontalAutoscaler, HorizontalPolicy, MetricObservation, ScaleDecision, ScaleInput,
};
use atlas_core::testing::{
    MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedMetrics, ScriptedProbe,
};
use atlas_core::{
    Canary, CanaryStep, Endpoint, Engine, Release, Rollout, ServiceName, Slot, Strategy,
    TrafficRouter, TrafficSplit, Weight, Workloads,
};
use atlas_local::proxy::ProxyRouter;
use atlas_metrics::endpoints::Endpoints;
use atlas_metrics::{InstrumentedProbe, Telemetry};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Two of the fixed targets of Prometheus's `atlas-test` job.
const TELEMETRY_ADDR: &str = "127.0.0.1:19094";
const PROXY_ADMIN_ADDR: &str = "127.0.0.1:19096";

fn prometheus_url() -> String {
    std::env::var("ATLAS_TEST_PROMETHEUS_URL")
        .expect("ATLAS_TEST_PROMETHEUS_URL is not set; run: cargo xtask test")
}

/// Every panel's queries, by panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/atlas.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                expr.to_string(),
            ));
        }
    }
    out
}

/// Grafana's variables as Grafana would fill them with "All".
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$service", ".+")
}

async fn query(client: &reqwest::Client, expr: &str) -> Result<usize, String> {
    let r = client
        .post(format!("{}/api/v1/query", prometheus_url()))
        .form(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("HTTP {status}: {}", body["error"]));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

/// A canary with an analysis on the core mocks, observed by `telemetry`;
/// the analysis passes unless `error_rate` is 1 % or more. Health probes
/// go through an instrumented probe, as an embedding tool would wire them.
async fn canary(telemetry: &Telemetry, service: &str, error_rate: f64) {
    let svc = ServiceName::new(service).unwrap();
    let workloads = MockWorkloads::new();
    let router = RecordingRouter::new();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "dashboard:v1"), 2)
        .await
        .unwrap();
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let metrics = ScriptedMetrics::new();
    metrics.set_constant("error-rate", error_rate);
    let engine = Engine::builder()
        .workloads(Arc::new(workloads))
        .router(Arc::new(router))
        .probe(Arc::new(InstrumentedProbe::new(
            "scripted",
            ScriptedProbe::new(),
            telemetry.clone(),
        )))
        .metrics(Arc::new(metrics))
        .store(Arc::new(MemoryStateStore::new()))
        .build()
        .unwrap();
    let collector = telemetry.spawn_collector(engine.subscribe());
    let w = |p| Weight::new(p).unwrap();
    let strategy = Strategy::Canary(Canary::new(
        2,
        vec![
            CanaryStep::SetWeight(w(20)),
            CanaryStep::Analysis("errors".into()),
            CanaryStep::SetWeight(w(50)),
        ],
    ));
    let template = AnalysisTemplate::new(
        "errors",
        vec![AnalysisMetric::new("error-rate", "q").success("< 0.01".parse().unwrap())],
    );
    let rollout =
        Rollout::new(svc, Release::new("v2", "dashboard:v2"), strategy).with_analysis(template);
    let handle = engine.start(rollout).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), handle.wait())
        .await
        .expect("the canary finishes")
        .unwrap();
    drop(engine);
    let _ = tokio::time::timeout(Duration::from_secs(10), collector).await;
}

/// A real decision of the specification's horizontal policy: three
/// replicas at twice their request-rate target.
/// A failover as a controller reports it, and the standby's lag as a
/// database adapter reports it.
fn record_failover(telemetry: &Telemetry) {
    use atlas_core::database::ReplicationStatus;
    use atlas_core::failover::{FailoverEvent, FailoverEventKind};
    use atlas_core::region::{RegionName, RegionWeights};
    telemetry.replication_observed(
        "db-b",
        &ReplicationStatus {
            streaming: true,
            synchronous: false,
            lag_bytes: Some(4096),
            lag: Some(Duration::from_millis(120)),
        },
    );
    let r = |n: &str| RegionName::new(n).unwrap();
    let service = ServiceName::new("dashboard").unwrap();
    let moved = RegionWeights::new([(r("us"), 0), (r("eu"), 60), (r("ap"), 40)]).unwrap();
    for kind in [
        FailoverEventKind::TrafficMoved {
            weights: moved,
            after: Duration::from_millis(300),
        },
        FailoverEventKind::FailoverDone {
            after: Duration::from_secs(2),
        },
    ] {
        telemetry.failover_event(&FailoverEvent {
            service: service.clone(),
            at: SystemTime::now(),
            kind,
        });
    }
}

fn autoscale_decision() -> ScaleDecision {
    let policy = HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]);
    let mut hpa = HorizontalAutoscaler::new(policy).unwrap();
    let input = ScaleInput::with_ready_pods(3).observe(MetricObservation::per_pod(
        (0..3).map(|i| (format!("pod-{i}"), 1000.0)),
    ));
    let decision = hpa.recommend(Instant::now(), &input).unwrap();
    assert!(decision.changes(), "{decision:?}");
    decision
}

/// An upstream answering 200, and 500 for every fifth request.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            n += 1;
            let status = if n.is_multiple_of(5) {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus; run: cargo xtask test"]
async fn every_dashboard_query_parses_and_returns_series() {
    let _ = prometheus_url();
    // Atlas's telemetry, served where Prometheus scrapes it.
    let telemetry = Telemetry::new();
    canary(&telemetry, "dashboard", 0.001).await;
    canary(&telemetry, "dashboard-rollback", 0.5).await;
    let now = SystemTime::now();
    telemetry.backup_finished("offsite", true, 1 << 20, now);
    telemetry.restore_tested("offsite", now);
    telemetry.failover_drilled("dashboard", now);
    telemetry.autoscale_decided("dashboard", &autoscale_decision());
    record_failover(&telemetry);
    let endpoints = Endpoints::new(telemetry.clone())
        .serve(TELEMETRY_ADDR.parse().unwrap())
        .await
        .unwrap();

    // The proxy with traffic to both slots, its /metrics where Prometheus
    // scrapes it.
    let svc = ServiceName::new("dashboard").unwrap();
    let router = ProxyRouter::builder(svc.clone())
        .listen("127.0.0.1:0".parse().unwrap())
        .admin(PROXY_ADMIN_ADDR.parse().unwrap())
        .build()
        .await
        .unwrap();
    for (slot, name) in [(Slot::Blue, "blue-0"), (Slot::Green, "green-0")] {
        let ep = Endpoint::new(name, upstream().await);
        router.set_endpoints(&svc, slot, &[ep]).await.unwrap();
    }
    router
        .set_split(&svc, &TrafficSplit::new(Slot::Blue, 30).unwrap())
        .await
        .unwrap();
    let proxy = router.local_addr();
    let traffic = tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let _ = client.get(format!("http://{proxy}/")).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Wait for both targets to be scraped, then for a few more scrapes so
    // that rates over the window have two samples with traffic between.
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let t = query(
            &client,
            &format!("atlas_rollout_phase{{instance=\"{TELEMETRY_ADDR}\"}}"),
        )
        .await;
        let p = query(
            &client,
            &format!("atlas_proxy_requests_total{{instance=\"{PROXY_ADMIN_ADDR}\"}}"),
        )
        .await;
        if matches!((t, p), (Ok(a), Ok(b)) if a > 0 && b > 0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped the targets"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut failures = BTreeMap::new();
    for (title, expr) in &queries {
        let expr = substitute(expr);
        match query(&client, &expr).await {
            Ok(0) => {
                failures.insert(title.clone(), format!("no series: {expr}"));
            }
            Ok(_) => {}
            Err(e) => {
                failures.insert(title.clone(), format!("{e}: {expr}"));
            }
        }
    }
    traffic.abort();
    router.shutdown().await;
    endpoints.shutdown().await;
    assert!(failures.is_empty(), "panels failing: {failures:#?}");
}
