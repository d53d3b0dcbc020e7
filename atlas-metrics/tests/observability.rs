//! Atlas's own metrics from real engine events, the instrumented probe, and
//! the `/metrics`, `/health`, `/ready` endpoints.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atlas_core::analysis::{AnalysisMetric, AnalysisTemplate};
use atlas_core::testing::{
    MemoryStateStore, MockWorkloads, ProbeScript, RecordingRouter, ScriptedMetrics, ScriptedProbe,
};
use atlas_core::{
    Canary, CanaryStep, Endpoint, Engine, HealthProbe, Outcome, Release, Rollout, RolloutEvent,
    ServiceName, Slot, Strategy, TrafficRouter, TrafficSplit, Weight, Workloads,
};
use atlas_metrics::endpoints::Endpoints;
use atlas_metrics::telemetry::{InstrumentedProbe, OPENMETRICS_CONTENT_TYPE, Telemetry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Unit;

/// The value of the exported sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}

/// A canary of checkout v1 -> v2 through 20 %, a 10 s pause, an analysis of
/// `error-rate` (which `rate` answers) and 50 %, observed by `telemetry`.
async fn canary(telemetry: &Telemetry, error_rate: f64) -> Outcome {
    let workloads = MockWorkloads::new();
    let router = RecordingRouter::new();
    let svc = ServiceName::new("checkout").unwrap();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
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
        .probe(Arc::new(ScriptedProbe::new()))
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
            CanaryStep::Pause(Some(Duration::from_secs(10))),
            CanaryStep::Analysis("errors".into()),
            CanaryStep::SetWeight(w(50)),
        ],
    ));
    let template = AnalysisTemplate::new(
        "errors",
        vec![AnalysisMetric::new("error-rate", "q").success("< 0.01".parse().unwrap())],
    );
    let rollout =
        Rollout::new(svc, Release::new("v2", "checkout:v2"), strategy).with_analysis(template);
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    // The engine's sender goes with it; the collector then drains and stops.
    drop(engine);
    tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("collector stops when the engine is gone")
        .unwrap();
    outcome
}

#[tokio::test(start_paused = true)]
async fn a_promoted_canary_shows_in_the_metrics() {
    let telemetry = Telemetry::new();
    let outcome = canary(&telemetry, 0.001).await;
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    let text = telemetry.encode();
    let s =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));

    assert_eq!(
        s(r#"atlas_rollouts_started_total{service="checkout"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_rollouts_finished_total{service="checkout",outcome="promoted"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_rollout_phase{service="checkout",phase="promoted"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_rollout_phase{service="checkout",phase="progressing"}"#),
        0.0
    );
    assert_eq!(
        s(r#"atlas_traffic_weight_ratio{service="checkout",slot="green"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_traffic_weight_ratio{service="checkout",slot="blue"}"#),
        0.0
    );
    assert_eq!(
        s(r#"atlas_analysis_runs_total{service="checkout",template="errors",phase="successful"}"#),
        1.0
    );
    assert_eq!(
        s(
            r#"atlas_analysis_measurements_total{service="checkout",template="errors",metric="error-rate",phase="successful"}"#
        ),
        1.0
    );
    assert_eq!(
        s(
            r#"atlas_analysis_measurement_value{service="checkout",template="errors",metric="error-rate"}"#
        ),
        0.001
    );
    // Every step was timed once (their length is wall-clock time between
    // the events, which a paused tokio clock does not move; see
    // `step_durations_come_from_event_times`).
    assert_eq!(
        s(r#"atlas_rollout_step_duration_seconds_count{service="checkout",step="pause"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_rollout_step_duration_seconds_count{service="checkout",step="set_weight"}"#),
        3.0
    );
    assert_eq!(
        s(r#"atlas_rollout_step_duration_seconds_count{service="checkout",step="analysis"}"#),
        1.0
    );
    assert!(s(r#"atlas_probe_results_total{service="checkout",result="healthy"}"#) >= 1.0);
    assert!(sample(&text, r#"atlas_rollbacks_total{service="checkout"}"#).is_none());
    assert!(
        text.contains("# TYPE atlas_rollout_step_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# UNIT atlas_rollout_step_duration_seconds seconds"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_analysis_counts_a_rollback() {
    let telemetry = Telemetry::new();
    let outcome = canary(&telemetry, 0.2).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let text = telemetry.encode();
    let s =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(s(r#"atlas_rollbacks_total{service="checkout"}"#), 1.0);
    assert_eq!(
        s(r#"atlas_rollouts_finished_total{service="checkout",outcome="rolled_back"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_rollout_phase{service="checkout",phase="rolled_back"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_analysis_runs_total{service="checkout",template="errors",phase="failed"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_traffic_weight_ratio{service="checkout",slot="blue"}"#),
        1.0
    );
    assert_eq!(
        s(r#"atlas_traffic_weight_ratio{service="checkout",slot="green"}"#),
        0.0
    );
}

#[test]
fn step_durations_come_from_event_times() {
    use atlas_core::{EventKind, Step};
    use std::time::{SystemTime, UNIX_EPOCH};
    let telemetry = Telemetry::new();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let ev = |at: SystemTime, rollout: &str, kind: EventKind| RolloutEvent {
        service: ServiceName::new("checkout").unwrap(),
        rollout: rollout.into(),
        at,
        kind,
    };
    let pause = Step::Pause(Some(Duration::from_secs(10)));
    telemetry.observe(&ev(
        t0,
        "r1",
        EventKind::StepStarted {
            index: 2,
            total: 5,
            step: pause.clone(),
        },
    ));
    // Another rollout's events in between do not disturb r1's timing.
    telemetry.observe(&ev(
        t0,
        "r2",
        EventKind::StepStarted {
            index: 0,
            total: 1,
            step: Step::Promote,
        },
    ));
    telemetry.observe(&ev(
        t0 + Duration::from_millis(10_250),
        "r1",
        EventKind::StepFinished {
            index: 2,
            step: pause.clone(),
        },
    ));
    // A finish without its start (a resumed rollout) is not timed.
    telemetry.observe(&ev(
        t0,
        "r3",
        EventKind::StepFinished {
            index: 1,
            step: pause,
        },
    ));
    let text = telemetry.encode();
    let s = |series: &str| sample(&text, series);
    assert_eq!(
        s(r#"atlas_rollout_step_duration_seconds_sum{service="checkout",step="pause"}"#),
        Some(10.25)
    );
    assert_eq!(
        s(r#"atlas_rollout_step_duration_seconds_count{service="checkout",step="pause"}"#),
        Some(1.0)
    );
    assert_eq!(
        s(
            r#"atlas_rollout_step_duration_seconds_bucket{le="21.87",service="checkout",step="pause"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        s(
            r#"atlas_rollout_step_duration_seconds_bucket{le="7.29",service="checkout",step="pause"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_collector_that_falls_behind_counts_what_it_missed() {
    let telemetry = Telemetry::new();
    let (tx, rx) = tokio::sync::broadcast::channel::<RolloutEvent>(2);
    let event = RolloutEvent {
        service: ServiceName::new("checkout").unwrap(),
        rollout: "r1".into(),
        at: std::time::SystemTime::now(),
        kind: atlas_core::EventKind::Resumed,
    };
    for _ in 0..5 {
        tx.send(event.clone()).unwrap();
    }
    drop(tx);
    telemetry.collect(rx).await;
    let text = telemetry.encode();
    assert_eq!(
        sample(&text, "atlas_events_lagged_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"atlas_rollout_phase{service="checkout",phase="progressing"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn instrumented_probes_record_results_and_latency() {
    let telemetry = Telemetry::new();
    let scripted = ScriptedProbe::new();
    scripted.script("bad-0", ProbeScript::Failing("503".into()));
    let probe = InstrumentedProbe::new("http", scripted, telemetry.clone());
    let ep = |n: &str| Endpoint::new(n, "127.0.0.1:1".parse().unwrap());
    for _ in 0..3 {
        assert!(
            probe
                .check(&ep("good-0"), Duration::from_secs(1))
                .await
                .is_healthy()
        );
    }
    assert!(
        !probe
            .check(&ep("bad-0"), Duration::from_secs(1))
            .await
            .is_healthy()
    );
    let text = telemetry.encode();
    assert_eq!(
        sample(
            &text,
            r#"atlas_probe_attempts_total{probe="http",result="healthy"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"atlas_probe_attempts_total{probe="http",result="unhealthy"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"atlas_probe_duration_seconds_count{probe="http",result="healthy"}"#
        ),
        Some(3.0)
    );
}

#[test]
fn later_subsystems_register_into_the_same_registry() {
    let telemetry = Telemetry::new();
    let bytes: Counter = Counter::default();
    telemetry
        .register(
            "backup_uploaded",
            "Bytes uploaded by backups",
            Some(Unit::Bytes),
            bytes.clone(),
        )
        .unwrap();
    bytes.inc_by(4096);
    assert_eq!(
        sample(&telemetry.encode(), "atlas_backup_uploaded_bytes_total"),
        Some(4096.0)
    );

    let again = telemetry.register(
        "backup_uploaded",
        "again",
        Some(Unit::Bytes),
        Counter::<u64>::default(),
    );
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("already registered")
    );
    let clash = telemetry.register("rollbacks", "clash", None, Counter::<u64>::default());
    assert!(clash.is_err(), "built-in names are taken");
    for bad in ["Backups", "9lives", "with-dash", "uploads_total", ""] {
        let e = telemetry
            .register(bad, "h", None, Counter::<u64>::default())
            .unwrap_err();
        assert!(e.to_string().contains("metric.name"), "{bad}: {e}");
    }
    let e = telemetry
        .register("ok_name", " ", None, Counter::<u64>::default())
        .unwrap_err();
    assert!(e.to_string().contains("metric.help"), "{e}");
}

#[tokio::test]
async fn endpoints_serve_metrics_health_and_readiness() {
    let telemetry = Telemetry::new();
    let db_up = Arc::new(AtomicBool::new(true));
    let flag = db_up.clone();
    let server = Endpoints::new(telemetry.clone())
        .readiness_fn("database", move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused".to_string())
                }
            }
        })
        .readiness_fn("slow-dependency", || async { Ok(()) })
        .check_timeout(Duration::from_millis(200))
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let http = reqwest::Client::new();

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(metrics.headers()["content-type"], OPENMETRICS_CONTENT_TYPE);
    let body = metrics.text().await.unwrap();
    assert!(
        body.contains("atlas_events_lagged_total 0\n") && body.ends_with("# EOF\n"),
        "{body}"
    );

    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(
        (health.status().as_u16(), health.text().await.unwrap()),
        (200, "ok\n".to_string())
    );

    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    db_up.store(false, Ordering::SeqCst);
    let not_ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let why = not_ready.text().await.unwrap();
    assert!(why.contains("database: connection refused"), "{why}");
    assert!(!why.contains("slow-dependency"), "{why}");

    let head = http.head(format!("{base}/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        http.post(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        http.get(format!("{base}/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.shutdown().await;
    assert!(
        http.get(format!("{base}/health")).send().await.is_err(),
        "stopped"
    );
}

#[tokio::test]
async fn a_hanging_readiness_check_times_out_and_the_handler_mounts_anywhere() {
    let endpoints = Endpoints::new(Telemetry::new())
        .readiness_fn("hangs", std::future::pending::<Result<(), String>>)
        .check_timeout(Duration::from_millis(100));
    let request = http::Request::get("/ready").body(()).unwrap();
    let started = std::time::Instant::now();
    let response = endpoints.handle(&request).await;
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("hangs: no answer within 100ms"), "{body}");
    let no_checks = Endpoints::new(Telemetry::new());
    assert_eq!(
        no_checks
            .handle(&http::Request::get("/ready").body(()).unwrap())
            .await
            .status(),
        200
    );
}

/// A writer into a shared buffer, for capturing log lines.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn json_logs_carry_the_stable_fields() {
    use tracing_subscriber::layer::SubscriberExt;
    let out = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(atlas_metrics::logging::JsonLogLayer::new(out.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let outcome = canary(&Telemetry::new(), 0.5).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    // An adapter's event inside the engine's spans: the stable fields come
    // from the spans (the `rollout` span's `id` is the rollout).
    let span = tracing::info_span!("rollout", service = "cart", id = "cart-0001");
    span.in_scope(|| {
        tracing::info_span!("step", step = "set weight 20").in_scope(|| {
            tracing::info!(slot = "green", replicas = 2, "Replica started");
        })
    });
    drop(_guard);

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 5, "{text}");
    for l in &lines {
        for key in ["ts", "level", "target", "event", "message"] {
            assert!(l.get(key).is_some(), "{key} missing: {l}");
        }
    }
    let find = |event: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event)
            .unwrap_or_else(|| panic!("no {event} in\n{text}"))
    };
    let started = find("rollout_started");
    assert_eq!(started["service"], "checkout");
    let rollout = started["rollout"].as_str().unwrap().to_string();
    assert!(!rollout.is_empty());
    assert_eq!(started["fields"]["to_version"], "v2");
    let step = find("step_started");
    assert_eq!(step["rollout"], rollout.as_str());
    assert!(
        step["step"].as_str().unwrap().starts_with("deploy"),
        "{step}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "step_started" && l["step"].as_str().unwrap().contains("20")),
        "a step_started names the 20 % step:\n{text}"
    );
    let rolled_back = find("rollout_rolled_back");
    assert_eq!(rolled_back["level"], "WARN");
    assert_eq!(rolled_back["service"], "checkout");
    let adapter = find("replica_started");
    assert_eq!(adapter["service"], "cart");
    assert_eq!(adapter["rollout"], "cart-0001");
    assert_eq!(adapter["step"], "set weight 20");
    assert_eq!(adapter["slot"], "green");
    assert_eq!(adapter["span"], "step");
    assert_eq!(adapter["fields"]["replicas"], 2);
    // Every line inside the engine's `rollout` span names the rollout,
    // from the event itself or from the span's `id`.
    let in_rollout: Vec<_> = lines
        .iter()
        .filter(|l| l.get("span").is_some() && l["service"] == "checkout")
        .collect();
    assert!(!in_rollout.is_empty(), "{text}");
    for l in in_rollout {
        assert_eq!(l["rollout"], rollout.as_str(), "{l}");
    }
}
