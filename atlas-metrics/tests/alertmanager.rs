//! `AlertmanagerNotifier`: the v2 API contract against a scripted server,
//! then alerts firing and resolving in a real Alertmanager, sent by the
//! core alert evaluator.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use atlas_core::alerts::{AlertEvaluator, AlertRule, AlertState, RuleSet};
use atlas_core::testing::{ScriptedMetrics, conformance};
use atlas_core::{ErrorKind, Notification, Notifier, Severity};
use atlas_metrics::AlertmanagerNotifier;
use serde_json::Value;
use support::{Reply, TestServer, fast_retry};

fn parse_time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}

#[tokio::test]
async fn alerts_are_posted_with_start_end_labels_and_summary() {
    let server = TestServer::start(|_| Reply::json(200, "")).await;
    let am = AlertmanagerNotifier::builder(format!("http://{}", server.addr))
        .firing_ttl(Duration::from_secs(300))
        .generator_url("http://atlas.internal/rollouts/checkout")
        .bearer_token("am-t0ken")
        .build()
        .unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut firing = Notification::new(Severity::Critical, "checkout: error rate 3%")
        .with_label("alertname", "HighErrorRate")
        .with_label("service", "checkout")
        .with_label("empty", "");
    firing.at = at;
    am.notify(&firing).await.unwrap();
    let mut resolved = firing.clone();
    resolved.resolved = true;
    resolved.at = at + Duration::from_secs(90);
    am.notify(&resolved).await.unwrap();
    let plain = Notification::new(Severity::Info, "checkout: promoted v2");
    am.notify(&plain).await.unwrap();

    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].request_line(), "POST /api/v2/alerts HTTP/1.1");
    assert_eq!(
        seen[0].header("authorization").as_deref(),
        Some("Bearer am-t0ken")
    );
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/json")
    );
    let body = |i: usize| -> Value { serde_json::from_str(&seen[i].body).unwrap() };

    let f = &body(0)[0];
    assert_eq!(f["labels"]["alertname"], "HighErrorRate");
    assert_eq!(f["labels"]["service"], "checkout");
    assert_eq!(f["labels"]["severity"], "critical");
    assert!(f["labels"].get("empty").is_none(), "empty labels dropped");
    assert_eq!(f["annotations"]["summary"], "checkout: error rate 3%");
    assert_eq!(f["generatorURL"], "http://atlas.internal/rollouts/checkout");
    assert_eq!(parse_time(f["startsAt"].as_str().unwrap()), at);
    assert_eq!(
        parse_time(f["endsAt"].as_str().unwrap()),
        at + Duration::from_secs(300)
    );

    let r = &body(1)[0];
    assert_eq!(r["labels"], f["labels"], "same alert");
    assert_eq!(
        parse_time(r["endsAt"].as_str().unwrap()),
        at + Duration::from_secs(90)
    );

    let p = &body(2)[0];
    assert_eq!(p["labels"]["alertname"], "AtlasNotification");
    assert_eq!(p["labels"]["severity"], "info");

    assert!(!format!("{am:?}").contains("am-t0ken"));
}

#[tokio::test]
async fn errors_map_to_categories() {
    let server =
        TestServer::start(|_| Reply::status(400, "{\"code\":400,\"message\":\"bad\"}")).await;
    let am = AlertmanagerNotifier::builder(format!("http://{}", server.addr))
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let e = am
        .notify(&Notification::new(Severity::Warning, "x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(server.requests().len(), 1, "a 400 is not retried");

    let bad_label = Notification::new(Severity::Warning, "x").with_label("not-a-label", "v");
    let e = am.notify(&bad_label).await.unwrap_err();
    assert!(
        e.to_string().contains("notification.labels.not-a-label"),
        "{e}"
    );
    assert_eq!(server.requests().len(), 1, "refused before sending");

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let flaky = TestServer::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(503, "busy")
        } else {
            Reply::json(200, "")
        }
    })
    .await;
    let am = AlertmanagerNotifier::builder(format!("http://{}", flaky.addr))
        .retry(fast_retry(3))
        .build()
        .unwrap();
    am.notify(&Notification::new(Severity::Warning, "x"))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    for (b, field) in [
        (AlertmanagerNotifier::builder("nope"), "alertmanager.url"),
        (
            AlertmanagerNotifier::builder("http://x").firing_ttl(Duration::ZERO),
            "alertmanager.firing_ttl",
        ),
        (
            AlertmanagerNotifier::builder("http://x").generator_url("::"),
            "alertmanager.generator_url",
        ),
    ] {
        let e = b.build().unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[tokio::test]
async fn passes_the_notifier_suite_against_a_scripted_server() {
    let server = TestServer::start(|_| Reply::json(200, "")).await;
    let am = AlertmanagerNotifier::builder(format!("http://{}", server.addr))
        .build()
        .unwrap();
    conformance::notifier::all(&am, "am-scripted").await;
    assert_eq!(server.requests().len(), 7);
}

// ---------------------------------------------------------------------------
// Real Alertmanager.

fn alertmanager_url() -> String {
    std::env::var("ATLAS_TEST_ALERTMANAGER_URL").unwrap_or_else(|_| "http://127.0.0.1:9093".into())
}

/// The active alerts with label `run=<run>`, as Alertmanager lists them.
async fn active_alerts(run: &str) -> Vec<Value> {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v2/alerts", alertmanager_url().trim_end_matches('/')),
        [("filter", format!("run=\"{run}\""))],
    )
    .unwrap();
    let list: Vec<Value> = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("alertmanager reachable")
        .json()
        .await
        .unwrap();
    list
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs alertmanager; run: cargo xtask test"]
async fn an_alert_fires_then_resolves_in_alertmanager() {
    atlas_metrics::tls::install_default_crypto_provider();
    let run = format!("r{}", rand_suffix());
    let am = AlertmanagerNotifier::builder(alertmanager_url())
        .generator_url("http://atlas.test/alerts")
        .build()
        .unwrap();
    conformance::notifier::all(&am, "am-real").await;

    // The core evaluator drives the alert: the error rate is high for the
    // first seconds, then clears.
    let metrics = ScriptedMetrics::new();
    metrics.set_series(
        "HighErrorRate",
        [(Duration::ZERO, 0.05), (Duration::from_secs(4), 0.0)],
    );
    let rule = AlertRule::new(
        "HighErrorRate",
        "error_ratio",
        "> 0.01".parse().unwrap(),
        Severity::Critical,
    )
    .for_duration(Duration::from_secs(1))
    .label("run", run.clone())
    .annotation("summary", "more than 1% of requests fail");
    let mut set = RuleSet::new("atlas-test", vec![rule]);
    set.interval = Duration::from_millis(500);
    let mut evaluator = AlertEvaluator::new(set).unwrap();

    // Evaluate until firing, sending what is due.
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(evaluator.statuses()[0].state, AlertState::Firing { .. }) {
        assert!(
            Instant::now() < deadline,
            "never fired: {:?}",
            evaluator.statuses()
        );
        for n in evaluator.evaluate(&metrics).await {
            am.notify(&n).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(sent, 1);
    wait_until("the alert is active in alertmanager", async || {
        let alerts = active_alerts(&run).await;
        alerts.len() == 1
            && alerts[0]["status"]["state"] == "active"
            && alerts[0]["labels"]["alertname"] == "HighErrorRate"
            && alerts[0]["labels"]["severity"] == "critical"
            && alerts[0]["annotations"]["summary"] == "more than 1% of requests fail"
            && alerts[0]["generatorURL"] == "http://atlas.test/alerts"
    })
    .await;

    // Keep evaluating until resolved; the resolved notification closes it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(evaluator.statuses()[0].state, AlertState::Resolved { .. }) {
        assert!(
            Instant::now() < deadline,
            "never resolved: {:?}",
            evaluator.statuses()
        );
        for n in evaluator.evaluate(&metrics).await {
            am.notify(&n).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_until("the alert is resolved in alertmanager", async || {
        active_alerts(&run).await.is_empty()
    })
    .await;
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}
