//! Slack, PagerDuty and signed-webhook notifiers against a local receiver
//! that checks each payload's documented shape; the escalation policy's
//! routing, de-duplication, rate limiting and escalation; the Alertmanager
//! webhook receiver; and, with the real services, a firing rule in
//! Prometheus → Alertmanager → the receiver → the routed notifiers.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use atlas_core::testing::{CollectingNotifier, conformance};
use atlas_core::{Error, ErrorKind, Notification, Notifier, Severity};
use atlas_metrics::receiver::parse_webhook;
use atlas_metrics::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature};
use atlas_metrics::{
    AlertmanagerReceiver, EscalationPolicy, PagerDutyNotifier, Priority, RateLimit, Route,
    SignedWebhookNotifier, SlackNotifier, Suppressed, dedup_key,
};
use serde_json::Value;
use support::{Reply, Seen, TestServer, fast_retry};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn alert(severity: Severity, service: &str) -> Notification {
    let mut n = Notification::new(severity, format!("{service}: error rate 3% <5xx> & rising"))
        .with_label("alertname", "HighErrorRate")
        .with_label("service", service)
        .with_label("rollout", format!("{service}-0007"));
    n.at = at(1_800_000_000);
    n
}

fn json(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap_or_else(|e| panic!("{e}: {}", seen.body))
}

// ---------------------------------------------------------------------------
// Slack

#[tokio::test]
async fn slack_messages_are_block_kit() {
    let server = TestServer::start(|_| Reply::status(200, "ok")).await;
    let slack = SlackNotifier::builder(format!("http://{}/services/T0/B0/s3cr3t", server.addr))
        .build()
        .unwrap();
    assert!(!format!("{slack:?}").contains("s3cr3t"));
    let firing = alert(Severity::Critical, "checkout");
    slack.notify(&firing).await.unwrap();
    let mut resolved = firing.clone();
    resolved.resolved = true;
    slack.notify(&resolved).await.unwrap();

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].request_line(),
        "POST /services/T0/B0/s3cr3t HTTP/1.1"
    );
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/json")
    );
    let m = json(&seen[0]);
    assert_eq!(
        m["text"],
        "[FIRING critical P1] checkout: error rate 3% <5xx> & rising"
    );
    let blocks = m["blocks"].as_array().unwrap();
    let kinds: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["header", "section", "section", "context"]);
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(
        blocks[0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("FIRING · critical · P1")
    );
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    // mrkdwn control characters are escaped.
    assert_eq!(
        blocks[1]["text"]["text"],
        "checkout: error rate 3% &lt;5xx&gt; &amp; rising"
    );
    let fields = blocks[2]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 3);
    assert!(fields.iter().all(|f| f["type"] == "mrkdwn"));
    assert_eq!(fields[1]["text"], "*rollout*\ncheckout-0007");
    let context = blocks[3]["elements"][0]["text"].as_str().unwrap();
    assert!(context.contains(&dedup_key(&firing)), "{context}");
    assert!(context.contains("2027-01-15T08:00:00"), "{context}");
    assert!(
        json(&seen[1])["text"]
            .as_str()
            .unwrap()
            .starts_with("[RESOLVED")
    );
}

/// The error of one notification to a Slack webhook answering `reply`,
/// with `attempts` tries, and the server that saw them.
async fn slack_failure(
    reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    attempts: u32,
) -> (Error, TestServer) {
    let server = TestServer::start(reply).await;
    let slack = SlackNotifier::builder(format!("http://{}/services/T/B/s3cr3t", server.addr))
        .retry(fast_retry(attempts))
        .build()
        .unwrap();
    let e = slack
        .notify(&alert(Severity::Warning, "cart"))
        .await
        .unwrap_err();
    (e, server)
}

#[tokio::test]
async fn slack_limits_hold_and_errors_keep_the_url_secret() {
    let long = "x".repeat(5000);
    let mut n = Notification::new(Severity::Warning, long.clone());
    for i in 0..15 {
        n = n.with_label(format!("l{i:02}"), long.clone());
    }
    let m = SlackNotifier::message(&n);
    let blocks = m["blocks"].as_array().unwrap();
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    assert!(blocks[1]["text"]["text"].as_str().unwrap().chars().count() <= 3000);
    let fields = blocks[2]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 10);
    assert!(
        fields
            .iter()
            .all(|f| f["text"].as_str().unwrap().chars().count() <= 2000)
    );

    let (e, bad) = slack_failure(|_| Reply::status(400, "invalid_payload"), 3).await;
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("invalid_payload"), "{e}");
    assert_eq!(bad.requests().len(), 1, "a 400 is not retried");

    let (e, _gone) = slack_failure(|_| Reply::status(404, "no_service"), 1).await;
    assert!(!e.to_string().contains("s3cr3t"), "{e}");

    let (e, busy) = slack_failure(|_| Reply::status(429, "rate_limited"), 3).await;
    assert!(e.is_transient(), "{e}");
    assert_eq!(busy.requests().len(), 3, "429 is retried");
    let e = SlackNotifier::builder("hooks.slack.com/x")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("slack.url"), "{e}");
}

// ---------------------------------------------------------------------------
// PagerDuty

fn slack_at(addr: SocketAddr) -> Arc<SlackNotifier> {
    let url = format!("http://{addr}/services/T/B/X");
    Arc::new(SlackNotifier::builder(url).build().unwrap())
}

fn pagerduty_at(addr: SocketAddr) -> Arc<PagerDutyNotifier> {
    let url = format!("http://{addr}/v2/enqueue");
    Arc::new(PagerDutyNotifier::builder("key").url(url).build().unwrap())
}

fn pd_ok() -> Reply {
    Reply::json(
        202,
        r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#,
    )
}

#[tokio::test]
async fn pagerduty_triggers_and_resolves_with_one_dedup_key() {
    let server = TestServer::start(|_| pd_ok()).await;
    let pd = PagerDutyNotifier::builder("R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12")
        .url(format!("http://{}/v2/enqueue", server.addr))
        .build()
        .unwrap();
    assert!(!format!("{pd:?}").contains("R0UT1NGKEY"));
    let firing = alert(Severity::Critical, "checkout").with_label("instance", "10.0.0.7:8080");
    pd.notify(&firing).await.unwrap();
    let mut resolved = firing.clone();
    resolved.resolved = true;
    resolved.at = at(1_800_000_600);
    resolved.summary = "checkout: error rate back to 0.1%".into();
    pd.notify(&resolved).await.unwrap();

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].request_line(), "POST /v2/enqueue HTTP/1.1");
    let t = json(&seen[0]);
    assert_eq!(t["routing_key"], "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12");
    assert_eq!(t["event_action"], "trigger");
    let key = t["dedup_key"].as_str().unwrap();
    assert_eq!(key, dedup_key(&firing));
    let p = &t["payload"];
    assert_eq!(p["summary"], "checkout: error rate 3% <5xx> & rising");
    assert_eq!(p["source"], "10.0.0.7:8080");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["timestamp"], "2027-01-15T08:00:00.000Z");
    assert_eq!(p["component"], "checkout");
    assert_eq!(p["group"], "checkout-0007");
    assert_eq!(p["class"], "HighErrorRate");
    assert_eq!(p["custom_details"]["priority"], "P1");
    assert_eq!(p["custom_details"]["service"], "checkout");

    let r = json(&seen[1]);
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(r["dedup_key"], key, "the resolve closes the same incident");
    assert!(r.get("payload").is_none());
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["dedup_key", "event_action", "routing_key"]);

    // Severities map to PagerDuty's names; no instance → service.
    let w = pd.event(&alert(Severity::Warning, "cart"));
    assert_eq!(w["payload"]["severity"], "warning");
    assert_eq!(w["payload"]["source"], "cart");
    let i = pd.event(&Notification::new(Severity::Info, "promoted"));
    assert_eq!(i["payload"]["severity"], "info");
    assert_eq!(i["payload"]["source"], "atlas");
}

#[tokio::test]
async fn pagerduty_errors_are_typed() {
    let server = TestServer::start(|_| {
        Reply::json(
            400,
            r#"{"status":"invalid event","errors":["'payload.summary' is missing"]}"#,
        )
    })
    .await;
    let pd = PagerDutyNotifier::builder("key")
        .url(format!("http://{}/v2/enqueue", server.addr))
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let e = pd
        .notify(&alert(Severity::Critical, "a"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("payload.summary"), "{e}");
    assert_eq!(server.requests().len(), 1);

    let odd = TestServer::start(|_| Reply::json(202, r#"{"status":"nope"}"#)).await;
    let pd = PagerDutyNotifier::builder("key")
        .url(format!("http://{}/v2/enqueue", odd.addr))
        .build()
        .unwrap();
    let e = pd
        .notify(&alert(Severity::Critical, "a"))
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Backend,
        "a 2xx without success is no delivery: {e}"
    );

    for (b, field) in [
        (PagerDutyNotifier::builder(""), "pagerduty.routing_key"),
        (PagerDutyNotifier::builder("a key"), "pagerduty.routing_key"),
        (
            PagerDutyNotifier::builder("k").source(" "),
            "pagerduty.source",
        ),
        (PagerDutyNotifier::builder("k").url("nope"), "pagerduty.url"),
    ] {
        let e = b.build().unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Signed webhook

#[tokio::test]
async fn signed_webhooks_carry_a_verifiable_hmac() {
    let server = TestServer::start(|_| Reply::status(204, "")).await;
    let secret = "the shared secret, 32 bytes long";
    let hook = SignedWebhookNotifier::builder(format!("http://{}/atlas", server.addr), secret)
        .build()
        .unwrap();
    assert!(!format!("{hook:?}").contains("shared secret"));
    let n = alert(Severity::Warning, "checkout").with_label("priority", "p3");
    hook.notify(&n).await.unwrap();
    let seen = &server.requests()[0];
    let ts = seen.header(TIMESTAMP_HEADER).unwrap();
    let sig = seen.header(SIGNATURE_HEADER).unwrap();
    assert!(sig.starts_with("sha256="), "{sig}");
    let verify = |key: &[u8]| {
        let tolerance = Duration::from_secs(300);
        verify_signature(
            key,
            &ts,
            seen.body.as_bytes(),
            &sig,
            SystemTime::now(),
            tolerance,
        )
    };
    verify(secret.as_bytes()).unwrap();
    let e = verify(b"another secret entirely").unwrap_err();
    assert!(e.to_string().contains(SIGNATURE_HEADER), "{e}");
    let p = json(seen);
    assert_eq!(p["version"], 1);
    assert_eq!(p["status"], "firing");
    assert_eq!(p["severity"], "warning");
    assert_eq!(p["priority"], "P3");
    assert_eq!(p["labels"]["service"], "checkout");
    assert_eq!(p["at"], "2027-01-15T08:00:00.000Z");
    assert_eq!(p["dedup_key"], dedup_key(&n));
}

#[tokio::test]
async fn every_notifier_passes_the_notifier_suite() {
    let ok = TestServer::start(|s| {
        if s.request_line().contains("/v2/enqueue") {
            pd_ok()
        } else {
            Reply::status(200, "ok")
        }
    })
    .await;
    let (slack, pd) = (slack_at(ok.addr), pagerduty_at(ok.addr));
    let hook = SignedWebhookNotifier::builder(
        format!("http://{}/hook", ok.addr),
        "sixteen bytes at least",
    )
    .build()
    .unwrap();
    conformance::notifier::all(slack.as_ref(), "slack").await;
    conformance::notifier::all(pd.as_ref(), "pagerduty").await;
    conformance::notifier::all(&hook, "webhook").await;
    let policy = EscalationPolicy::standard(pd, slack).build().unwrap();
    conformance::notifier::all(&policy, "escalation").await;
}

// ---------------------------------------------------------------------------
// Escalation policy

/// A notifier that fails while `failing` is set.
struct Flaky {
    inner: CollectingNotifier,
    failing: AtomicBool,
    calls: AtomicUsize,
}

#[async_trait]
impl Notifier for Flaky {
    async fn notify(&self, n: &Notification) -> atlas_core::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::transient("flaky", "503"));
        }
        self.inner.notify(n).await
    }
}

fn flaky() -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: CollectingNotifier::new(),
        failing: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    })
}

/// The standard matrix over two flaky collectors: (pager, chat, policy).
fn standard_policy() -> (Arc<Flaky>, Arc<Flaky>, EscalationPolicy) {
    let (pager, chat) = (flaky(), flaky());
    let policy = EscalationPolicy::standard(pager.clone(), chat.clone());
    (pager, chat, policy.build().unwrap())
}

#[tokio::test]
async fn critical_pages_warning_chats_info_has_no_route() {
    let (pager, chat, policy) = standard_policy();
    let now = at(1_800_000_000);
    let r = policy
        .dispatch_at(&alert(Severity::Critical, "a"), now)
        .await;
    assert_eq!(r.delivered, ["pagerduty"]);
    let r = policy
        .dispatch_at(&alert(Severity::Warning, "b"), now)
        .await;
    assert_eq!(r.delivered, ["slack"]);
    let r = policy.dispatch_at(&alert(Severity::Info, "c"), now).await;
    assert!(r.delivered.is_empty());
    assert_eq!(r.suppressed, [("*".to_string(), Suppressed::NoRoute)]);
    // A priority label narrows routes that match on priority.
    let p1 = CollectingNotifier::new();
    let by_priority = EscalationPolicy::builder()
        .route(Route::new("p1-only", Arc::new(p1.clone())).priority(Priority::P1))
        .build()
        .unwrap();
    let warn_p1 = alert(Severity::Warning, "d").with_label("priority", "P1");
    assert_eq!(
        by_priority.dispatch_at(&warn_p1, now).await.delivered,
        ["p1-only"]
    );
    let warn = alert(Severity::Warning, "e");
    assert!(
        by_priority
            .dispatch_at(&warn, now)
            .await
            .delivered
            .is_empty()
    );
    assert_eq!(p1.len(), 1);
    assert_eq!(pager.inner.len(), 1);
    assert_eq!(chat.inner.len(), 1);
}

#[tokio::test]
async fn duplicates_are_suppressed_until_the_repeat_interval() {
    let (pager, chat) = (flaky(), flaky());
    let policy = EscalationPolicy::standard(pager.clone(), chat.clone())
        .repeat_interval(Duration::from_secs(600))
        .build()
        .unwrap();
    let t0 = at(1_800_000_000);
    let n = alert(Severity::Critical, "a");
    assert_eq!(policy.dispatch_at(&n, t0).await.delivered, ["pagerduty"]);
    let again = policy.dispatch_at(&n, t0 + Duration::from_secs(60)).await;
    assert!(again.delivered.is_empty());
    assert_eq!(
        again.suppressed,
        [("pagerduty".to_string(), Suppressed::Duplicate)]
    );
    let reminder = policy.dispatch_at(&n, t0 + Duration::from_secs(601)).await;
    assert_eq!(reminder.delivered, ["pagerduty"]);
    let mut resolved = n.clone();
    resolved.resolved = true;
    let r = policy
        .dispatch_at(&resolved, t0 + Duration::from_secs(700))
        .await;
    assert_eq!(r.delivered, ["pagerduty"]);
    let r = policy
        .dispatch_at(&resolved, t0 + Duration::from_secs(701))
        .await;
    assert!(r.delivered.is_empty(), "a resolution is sent once");
    // Firing again after resolving is a new episode, delivered at once.
    let r = policy.dispatch_at(&n, t0 + Duration::from_secs(702)).await;
    assert_eq!(r.delivered, ["pagerduty"]);
    let got = pager.inner.notifications();
    assert_eq!(
        got.iter().map(|n| n.resolved).collect::<Vec<_>>(),
        [false, false, true, false]
    );
    assert!(chat.inner.is_empty());
}

#[tokio::test]
async fn stale_and_resolved_alerts_are_forgotten() {
    let (_pager, _chat, policy) = standard_policy();
    let t0 = at(1_800_000_000);
    let old = alert(Severity::Critical, "old");
    policy.dispatch_at(&old, t0).await;
    let mut gone = alert(Severity::Critical, "gone");
    policy.dispatch_at(&gone, t0).await;
    gone.resolved = true;
    policy
        .dispatch_at(&gone, t0 + Duration::from_secs(60))
        .await;
    assert_eq!(policy.tracked(), 2);
    // An hour later the resolved one is gone; a day later the firing one
    // nobody re-sent is too.
    policy
        .dispatch_at(
            &alert(Severity::Critical, "new"),
            t0 + Duration::from_secs(3700),
        )
        .await;
    assert_eq!(policy.tracked(), 2, "old and new");
    policy
        .dispatch_at(
            &alert(Severity::Critical, "newer"),
            t0 + Duration::from_secs(86_401),
        )
        .await;
    assert_eq!(policy.tracked(), 2, "new and newer");
}

#[tokio::test]
async fn rate_limits_drop_firing_but_never_resolutions() {
    let chat = CollectingNotifier::new();
    let policy = EscalationPolicy::builder()
        .route(
            Route::new("chat", Arc::new(chat.clone()))
                .rate_limit(RateLimit::new(2, Duration::from_secs(10))),
        )
        .build()
        .unwrap();
    let t0 = at(1_800_000_000);
    let mut limited = Vec::new();
    for i in 0..5 {
        let r = policy
            .dispatch_at(&alert(Severity::Warning, &format!("svc{i}")), t0)
            .await;
        if r.suppressed
            .contains(&("chat".to_string(), Suppressed::RateLimited))
        {
            limited.push(i);
        }
    }
    assert_eq!(limited, [2, 3, 4]);
    // 5 s refill one token (2 per 10 s).
    let r = policy
        .dispatch_at(
            &alert(Severity::Warning, "svc9"),
            t0 + Duration::from_secs(5),
        )
        .await;
    assert_eq!(r.delivered, ["chat"]);
    let r = policy
        .dispatch_at(
            &alert(Severity::Warning, "svc10"),
            t0 + Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        r.suppressed,
        [("chat".to_string(), Suppressed::RateLimited)]
    );
    let mut resolved = alert(Severity::Warning, "svc0");
    resolved.resolved = true;
    let r = policy
        .dispatch_at(&resolved, t0 + Duration::from_secs(5))
        .await;
    assert_eq!(r.delivered, ["chat"], "resolutions bypass the limit");
    assert_eq!(chat.len(), 4);
}

#[tokio::test]
async fn unresolved_alerts_escalate_after_their_response_target() {
    let (pager, chat, policy) = standard_policy();
    let t0 = at(1_800_000_000);
    let p2 = alert(Severity::Warning, "p2"); // warning → P2 → 1 h
    let mut p3 = alert(Severity::Warning, "p3").with_label("priority", "P3"); // 4 h
    p3.at = t0;
    policy.dispatch_at(&p2, t0).await;
    // A second later: the chat route allows one message a second.
    let r = policy.dispatch_at(&p3, t0 + Duration::from_secs(1)).await;
    assert_eq!(r.delivered, ["slack"]);
    let early = policy
        .escalate_overdue(t0 + Duration::from_secs(3599))
        .await;
    assert!(early.escalated.is_empty());
    let due = policy
        .escalate_overdue(t0 + Duration::from_secs(3600))
        .await;
    assert_eq!(due.escalated, [dedup_key(&p2)]);
    let paged = pager.inner.notifications();
    assert_eq!(paged.len(), 1);
    assert_eq!(
        paged[0].labels.get("escalated").map(String::as_str),
        Some("true")
    );
    assert!(
        paged[0].summary.contains("past its P2 response target"),
        "{}",
        paged[0].summary
    );
    // Once only.
    let again = policy
        .escalate_overdue(t0 + Duration::from_secs(7200))
        .await;
    assert!(again.escalated.is_empty());
    // The resolution reaches both the chat route and the pager.
    let mut resolved = p2.clone();
    resolved.resolved = true;
    let r = policy
        .dispatch_at(&resolved, t0 + Duration::from_secs(7300))
        .await;
    let mut delivered = r.delivered.clone();
    delivered.sort();
    assert_eq!(delivered, ["pagerduty", "slack"]);
    let late = policy
        .escalate_overdue(t0 + Duration::from_secs(4 * 3600))
        .await;
    assert_eq!(late.escalated, [dedup_key(&p3)]);
    // A critical alert is already paged: nothing to escalate.
    let crit = alert(Severity::Critical, "crit");
    policy.dispatch_at(&crit, t0).await;
    let r = policy
        .escalate_overdue(t0 + Duration::from_secs(86_400))
        .await;
    assert!(!r.escalated.contains(&dedup_key(&crit)));
    // Chat had both warnings firing and the one resolution, nothing else.
    assert_eq!(chat.inner.len(), 3);
}

#[tokio::test]
async fn failed_routes_are_reported_and_tried_again() {
    let (pager, chat, policy) = standard_policy();
    pager.failing.store(true, Ordering::SeqCst);
    let n = alert(Severity::Critical, "a");
    let e = policy.notify(&n).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("pagerduty"), "{e}");
    pager.failing.store(false, Ordering::SeqCst);
    policy.notify(&n).await.unwrap();
    assert_eq!(pager.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        pager.inner.len(),
        1,
        "not suppressed as a duplicate after a failure"
    );
    assert!(chat.inner.is_empty());
}

#[tokio::test]
async fn bad_policies_name_the_field() {
    let c: Arc<dyn Notifier> = Arc::new(CollectingNotifier::new());
    let cases = [
        (EscalationPolicy::builder(), "escalation.routes"),
        (
            EscalationPolicy::builder()
                .route(Route::new("a", c.clone()))
                .route(Route::new("a", c.clone())),
            "escalation.routes",
        ),
        (
            EscalationPolicy::builder().route(
                Route::new("a", c.clone()).rate_limit(RateLimit::new(0, Duration::from_secs(1))),
            ),
            "escalation.routes.a.rate_limit",
        ),
        (
            EscalationPolicy::builder()
                .route(Route::new("a", c.clone()))
                .response_target(Priority::P1, Duration::ZERO),
            "escalation.response_targets.P1",
        ),
        (
            EscalationPolicy::builder()
                .route(Route::new("a", c.clone()))
                .repeat_interval(Duration::ZERO),
            "escalation.repeat_interval",
        ),
    ];
    for (b, field) in cases {
        let e = b.build().unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}

// ---------------------------------------------------------------------------
// Alertmanager webhook receiver

const AM_PAYLOAD: &str = r#"{
  "version": "4", "groupKey": "{}:{alertname=\"HighErrorRate\"}", "truncatedAlerts": 0,
  "status": "firing", "receiver": "atlas", "groupLabels": {"alertname": "HighErrorRate"},
  "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093",
  "alerts": [
    {"status": "firing", "labels": {"alertname": "HighErrorRate", "severity": "critical", "service": "checkout"},
     "annotations": {"summary": "checkout: 5xx above 1%"}, "startsAt": "2027-01-15T08:00:00.123Z",
     "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph", "fingerprint": "a1"},
    {"status": "resolved", "labels": {"alertname": "SlowP99", "severity": "page"},
     "annotations": {"description": "p99 back"}, "startsAt": "2027-01-15T07:00:00Z",
     "endsAt": "2027-01-15T08:00:05Z", "generatorURL": "", "fingerprint": "b2"},
    {"status": "firing", "labels": {"alertname": "DiskFilling"},
     "annotations": {}, "startsAt": "2027-01-15T08:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}
  ]
}"#;

#[test]
fn webhook_payloads_become_notifications() {
    let ns = parse_webhook(AM_PAYLOAD.as_bytes()).unwrap();
    assert_eq!(ns.len(), 3);
    assert_eq!(ns[0].severity, Severity::Critical);
    assert_eq!(ns[0].summary, "checkout: 5xx above 1%");
    assert!(!ns[0].resolved);
    assert_eq!(ns[0].at, at(1_800_000_000) + Duration::from_millis(123));
    assert_eq!(ns[0].labels["service"], "checkout");
    assert_eq!(ns[1].severity, Severity::Critical);
    assert!(ns[1].resolved);
    assert_eq!(ns[1].summary, "p99 back");
    assert_eq!(ns[1].at, at(1_800_000_005));
    assert_eq!(
        ns[2].severity,
        Severity::Warning,
        "no severity label → warning"
    );
    assert_eq!(ns[2].summary, "DiskFilling");

    let bad = [
        (r#"{"version":"5","alerts":[]}"#, "version"),
        (r#"{"version":"4"}"#, "alerts"),
        ("not json", "body"),
        (
            r#"{"version":"4","alerts":[{"status":"maybe","labels":{},"startsAt":"2027-01-15T08:00:00Z"}]}"#,
            "alerts[0].status",
        ),
        (
            r#"{"version":"4","alerts":[{"status":"firing","labels":{},"startsAt":"yesterday"}]}"#,
            "alerts[0].startsAt",
        ),
        (
            r#"{"version":"4","alerts":[{"status":"firing","labels":{"a":1},"startsAt":"2027-01-15T08:00:00Z"}]}"#,
            "alerts[0].labels",
        ),
    ];
    for (body, field) in bad {
        let e = parse_webhook(body.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}

async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_receiver_forwards_alerts_and_answers_by_outcome() {
    let target = flaky();
    let server = AlertmanagerReceiver::new(target.clone())
        .bearer_token("am-token")
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20));
    let cases = [
        ("/alertmanager", Some("am-token"), AM_PAYLOAD, 200),
        ("/alertmanager", None, AM_PAYLOAD, 401),
        ("/alertmanager", Some("wrong"), AM_PAYLOAD, 401),
        (
            "/alertmanager",
            Some("am-token"),
            r#"{"version":"9","alerts":[]}"#,
            400,
        ),
        ("/elsewhere", Some("am-token"), AM_PAYLOAD, 404),
        ("/alertmanager", Some("am-token"), huge.as_str(), 413),
    ];
    for (path, token, body, want) in cases {
        let (status, text) = post(addr, path, token, body).await;
        assert_eq!(status, want, "{path} {token:?}: {text}");
        if want == 400 {
            assert!(text.contains("version"), "{text}");
        }
    }
    assert_eq!(
        target.inner.len(),
        3,
        "only the accepted request was forwarded"
    );
    target.failing.store(true, Ordering::SeqCst);
    let (status, _) = post(addr, "/alertmanager", Some("am-token"), AM_PAYLOAD).await;
    assert_eq!(
        status, 503,
        "a transient failure asks Alertmanager to retry"
    );
    assert_eq!(target.inner.len(), 3);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// End to end: Prometheus rule → Alertmanager → receiver → routed notifiers.

/// The port `cargo xtask` routes `source="atlas-test"` alerts to.
const RECEIVER_ADDR: &str = "127.0.0.1:19099";
/// One of the fixed targets of Prometheus's `atlas-test` job.
const TRIGGER_ADDR: &str = "127.0.0.1:19095";

fn service_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set; run: cargo xtask test"))
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and alertmanager; run: cargo xtask test"]
async fn a_firing_rule_reaches_pagerduty_through_alertmanager() {
    let _ = service_url("ATLAS_TEST_PROMETHEUS_URL");
    let _ = service_url("ATLAS_TEST_ALERTMANAGER_URL");
    let run = format!(
        "e2e{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    // The scrape target: the trigger metric while `firing` is set.
    let firing = Arc::new(AtomicBool::new(true));
    let metric_run = run.clone();
    let flag = firing.clone();
    let target = TestServer::start_at(
        TRIGGER_ADDR.parse().unwrap(),
        Arc::new(move |_| {
            let v = u8::from(flag.load(Ordering::SeqCst));
            Reply::status(
                200,
                &format!(
                    "# TYPE atlas_test_alert_trigger gauge\natlas_test_alert_trigger{{run=\"{metric_run}\",severity=\"critical\",priority=\"P1\",service=\"checkout\"}} {v}\n"
                ),
            )
        }),
    )
    .await;
    // The notifiers' receiving ends.
    let pd_server = TestServer::start(|_| pd_ok()).await;
    let slack_server = TestServer::start(|_| Reply::status(200, "ok")).await;
    let (pd, slack) = (pagerduty_at(pd_server.addr), slack_at(slack_server.addr));
    let policy = EscalationPolicy::standard(pd, slack).build().unwrap();
    let receiver = AlertmanagerReceiver::new(Arc::new(policy))
        .serve(RECEIVER_ADDR.parse().unwrap())
        .await
        .unwrap();

    let events = |action: &'static str| {
        let run = run.clone();
        let server = &pd_server;
        move || {
            server
                .requests()
                .iter()
                .map(json)
                .filter(|e| e["event_action"] == action)
                .filter(|e| {
                    action == "resolve" || e["payload"]["custom_details"]["run"] == run.as_str()
                })
                .count()
                > 0
        }
    };
    wait_until(
        "the PagerDuty trigger",
        Duration::from_secs(60),
        events("trigger"),
    )
    .await;
    let trigger = pd_server
        .requests()
        .iter()
        .map(json)
        .find(|e| {
            e["event_action"] == "trigger" && e["payload"]["custom_details"]["run"] == run.as_str()
        })
        .unwrap();
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["class"], "AtlasTestAlert");
    assert_eq!(
        trigger["payload"]["summary"],
        format!("{run}: test alert firing")
    );
    assert_eq!(trigger["payload"]["custom_details"]["priority"], "P1");
    let key = trigger["dedup_key"].as_str().unwrap().to_string();
    assert!(
        slack_server
            .requests()
            .iter()
            .all(|s| !s.body.contains(&run)),
        "a critical alert is not sent to Slack"
    );

    firing.store(false, Ordering::SeqCst);
    wait_until("the PagerDuty resolve", Duration::from_secs(60), || {
        pd_server
            .requests()
            .iter()
            .map(json)
            .any(|e| e["event_action"] == "resolve" && e["dedup_key"] == key.as_str())
    })
    .await;
    let triggers = pd_server
        .requests()
        .iter()
        .map(json)
        .filter(|e| e["dedup_key"] == key.as_str() && e["event_action"] == "trigger")
        .count();
    assert_eq!(triggers, 1, "Alertmanager's repeats are de-duplicated");
    receiver.shutdown().await;
    drop(target);
}
