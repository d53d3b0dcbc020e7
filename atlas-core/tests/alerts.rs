//! Alert rules: the state machine under a paused clock, the evaluation
//! loop, the seed rule set and the Prometheus rules export.

use std::collections::BTreeMap;
use std::time::Duration;

use atlas_core::alerts::{
    AlertEvaluator, AlertRule, AlertState, RuleSet, SeedJobs, prometheus_duration, seed_rules,
};
use atlas_core::testing::{CollectingNotifier, FaultError, ScriptedMetrics};
use atlas_core::{ErrorKind, Measurement, Notification, Severity};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `HighErrorRate`: fires when the value is above 0.01 for 60 s.
fn error_rule() -> AlertRule {
    AlertRule::new(
        "HighErrorRate",
        "error_ratio",
        "> 0.01".parse().unwrap(),
        Severity::Critical,
    )
    .for_duration(secs(60))
    .label("team", "payments")
    .annotation("summary", "more than 1% of requests fail")
}

fn evaluator(rule: AlertRule) -> AlertEvaluator {
    let mut set = RuleSet::new("test", vec![rule]);
    set.interval = secs(10);
    AlertEvaluator::new(set).unwrap()
}

fn state(e: &AlertEvaluator) -> AlertState {
    e.statuses()[0].state
}

/// Evaluates at each of `at` (seconds from `start`), collecting notifications.
async fn evaluate_at(
    start: tokio::time::Instant,
    e: &mut AlertEvaluator,
    m: &ScriptedMetrics,
    at: &[u64],
) -> Vec<(u64, Notification)> {
    let mut out = Vec::new();
    for &t in at {
        tokio::time::sleep_until(start + secs(t)).await;
        for n in e.evaluate(m).await {
            out.push((t, n));
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn pending_then_firing_after_for_then_resolved() {
    let start = tokio::time::Instant::now();
    let m = ScriptedMetrics::new();
    m.set_series(
        "HighErrorRate",
        [(secs(0), 0.0), (secs(10), 0.05), (secs(100), 0.0)],
    );
    let mut e = evaluator(error_rule());

    let sent = evaluate_at(start, &mut e, &m, &[0]).await;
    assert!(sent.is_empty());
    assert_eq!(state(&e), AlertState::Inactive);

    let sent = evaluate_at(start, &mut e, &m, &[10]).await;
    assert!(sent.is_empty(), "pending does not notify");
    assert!(matches!(state(&e), AlertState::Pending { .. }));
    assert_eq!(e.statuses()[0].last_value, Some(0.05));

    // 50 s after the condition began: still pending.
    let m2 = evaluate_at(start, &mut e, &m, &[20, 30, 40, 50, 60]).await;
    assert!(m2.is_empty());
    assert!(matches!(state(&e), AlertState::Pending { .. }));

    // 60 s: fires, once.
    let fired = evaluate_at(start, &mut e, &m, &[70]).await;
    assert_eq!(fired.len(), 1);
    let firing = &fired[0].1;
    assert!(!firing.resolved);
    assert_eq!(firing.severity, Severity::Critical);
    assert_eq!(firing.summary, "more than 1% of requests fail");
    let labels: BTreeMap<String, String> = [
        ("alertname", "HighErrorRate"),
        ("severity", "critical"),
        ("team", "payments"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(firing.labels, labels);
    assert!(matches!(state(&e), AlertState::Firing { .. }));

    // Still firing inside the resend interval: nothing new.
    assert!(evaluate_at(start, &mut e, &m, &[80, 90]).await.is_empty());

    let resolved = evaluate_at(start, &mut e, &m, &[100]).await;
    assert_eq!(resolved.len(), 1);
    assert!(resolved[0].1.resolved);
    assert_eq!(
        resolved[0].1.labels, labels,
        "resolved carries the firing labels"
    );
    assert!(matches!(state(&e), AlertState::Resolved { .. }));
    assert!(
        evaluate_at(start, &mut e, &m, &[110, 120]).await.is_empty(),
        "resolved once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_condition_flapping_inside_for_never_fires() {
    let start = tokio::time::Instant::now();
    let m = ScriptedMetrics::new();
    // Bad for 50 s, good for 10 s, bad for 50 s, good...: never 60 s in a row.
    let mut points = Vec::new();
    for cycle in 0..5u64 {
        points.push((secs(cycle * 60), 0.5));
        points.push((secs(cycle * 60 + 50), 0.0));
    }
    m.set_series("HighErrorRate", points);
    let mut e = evaluator(error_rule());
    let times: Vec<u64> = (0..30).map(|i| i * 10).collect();
    let sent = evaluate_at(start, &mut e, &m, &times).await;
    assert!(sent.is_empty(), "{sent:?}");
    // The pending timer restarts after each good evaluation.
    assert!(matches!(
        state(&e),
        AlertState::Pending { .. } | AlertState::Inactive
    ));
}

#[tokio::test(start_paused = true)]
async fn zero_for_fires_at_once_and_resends_while_firing() {
    let start = tokio::time::Instant::now();
    let m = ScriptedMetrics::new();
    m.set_constant("Down", 0.0);
    let rule = AlertRule::new("Down", "min(up)", "< 1".parse().unwrap(), Severity::Warning);
    let mut e = evaluator(rule).with_resend_interval(secs(30)).unwrap();
    let sent = evaluate_at(start, &mut e, &m, &[0, 10, 20, 30, 40, 50, 60]).await;
    let at: Vec<u64> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(at, [0, 30, 60]);
    assert_eq!(sent[0].1.summary, "Down: 0 < 1");
    // Every resend keeps the start time, so a receiver sees one alert.
    assert!(
        sent.iter()
            .all(|(_, n)| n.at == sent[0].1.at && !n.resolved)
    );
    assert!(
        AlertEvaluator::new(RuleSet::new("x", vec![error_rule()]))
            .unwrap()
            .with_resend_interval(Duration::ZERO)
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn no_data_is_not_firing_and_errors_keep_the_state() {
    let start = tokio::time::Instant::now();
    let m = ScriptedMetrics::new();
    m.set_series(
        "HighErrorRate",
        [
            (secs(0), Measurement::Value(0.5)),
            (secs(30), Measurement::NoData),
        ],
    );
    let mut e = evaluator(error_rule());
    evaluate_at(start, &mut e, &m, &[0]).await;
    assert!(matches!(state(&e), AlertState::Pending { .. }));
    evaluate_at(start, &mut e, &m, &[30]).await;
    assert_eq!(
        state(&e),
        AlertState::Inactive,
        "no data clears a pending alert"
    );

    // Firing, then the metrics backend fails: the alert keeps firing.
    let m = ScriptedMetrics::new();
    m.set_constant("HighErrorRate", 0.5);
    let mut e = evaluator(error_rule().for_duration(Duration::ZERO));
    assert_eq!(evaluate_at(start, &mut e, &m, &[0]).await.len(), 1);
    m.set_error(
        "HighErrorRate",
        FaultError::transient("prometheus unreachable"),
    );
    assert!(evaluate_at(start, &mut e, &m, &[10, 20]).await.is_empty());
    assert!(matches!(state(&e), AlertState::Firing { .. }));
    assert!(e.statuses()[0].last_error.is_some());
}

#[tokio::test(start_paused = true)]
async fn the_loop_evaluates_every_interval_and_notifies() {
    let m = ScriptedMetrics::new();
    m.set_series("HighErrorRate", [(secs(0), 0.5), (secs(95), 0.0)]);
    let notifier = CollectingNotifier::new();
    let mut e = evaluator(error_rule());
    e.run(&m, &notifier, tokio::time::sleep(secs(125))).await;
    let sent = notifier.notifications();
    // Pending at 0, firing at 60 (for = 60 s), resolved at 100.
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(!sent[0].resolved && sent[1].resolved);
    // 13 evaluations: 0, 10, ..., 120.
    assert_eq!(m.queries().len(), 13);
    assert_eq!(m.queries()[0].query.query, "error_ratio");
}

#[test]
fn seed_rules_follow_the_alert_table() {
    let set = seed_rules(&SeedJobs::default());
    set.validate().unwrap();
    let by_name: BTreeMap<&str, &AlertRule> =
        set.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    let critical = [
        "ApplicationDown",
        "HighErrorRate",
        "HighResponseTime",
        "DatabaseConnectionFailure",
    ];
    let warning = [
        "HighCpuUsage",
        "HighMemoryUsage",
        "LowDiskSpace",
        "CertificateExpiringSoon",
    ];
    assert_eq!(set.rules.len(), 8);
    for n in critical {
        assert_eq!(by_name[n].severity, Severity::Critical, "{n}");
    }
    for n in warning {
        assert_eq!(by_name[n].severity, Severity::Warning, "{n}");
    }
    let meets = |n: &str, v: f64| by_name[n].condition.is_met(v);
    assert_eq!(by_name["ApplicationDown"].for_duration, secs(60));
    assert!(meets("ApplicationDown", 0.0) && !meets("ApplicationDown", 1.0));
    assert!(meets("HighErrorRate", 0.011) && !meets("HighErrorRate", 0.01));
    assert!(meets("HighResponseTime", 0.51) && !meets("HighResponseTime", 0.5));
    assert!(meets("DatabaseConnectionFailure", 0.0));
    assert!(meets("HighCpuUsage", 0.81) && !meets("HighCpuUsage", 0.8));
    assert!(meets("HighMemoryUsage", 0.81));
    assert!(meets("LowDiskSpace", 0.19) && !meets("LowDiskSpace", 0.2));
    assert!(meets("CertificateExpiringSoon", 29.9) && !meets("CertificateExpiringSoon", 30.0));
    let cert = set
        .rules
        .iter()
        .find(|r| r.name == "CertificateExpiringSoon")
        .unwrap();
    assert!(
        cert.expr.contains("probe_ssl_earliest_cert_expiry")
            && cert.expr.contains(atlas_core::alerts::PROXY_CERT_EXPIRY),
        "{}",
        cert.expr
    );
    let jobs = SeedJobs {
        app: "checkout".into(),
        ..SeedJobs::default()
    };
    assert!(seed_rules(&jobs).rules[0].expr.contains("job=\"checkout\""));
}

#[test]
fn rules_export_as_prometheus_yaml() {
    let yaml = seed_rules(&SeedJobs::default())
        .to_prometheus_yaml()
        .unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let group = &doc["groups"][0];
    assert_eq!(group["name"].as_str(), Some("atlas"));
    assert_eq!(group["interval"].as_str(), Some("30s"));
    let first = &group["rules"][0];
    assert_eq!(first["alert"].as_str(), Some("ApplicationDown"));
    assert_eq!(first["expr"].as_str(), Some("(min(up{job=\"app\"})) < 1"));
    assert_eq!(first["for"].as_str(), Some("1m"));
    assert_eq!(first["labels"]["severity"].as_str(), Some("critical"));
    assert_eq!(
        first["annotations"]["summary"].as_str(),
        Some("app is down")
    );
    let err = &group["rules"][1];
    assert!(
        err["expr"].as_str().unwrap().ends_with(") > 0.01"),
        "{yaml}"
    );
    assert_eq!(group["rules"][7]["for"].as_str(), Some("1h"));

    let no_for = RuleSet::new(
        "g",
        vec![AlertRule::new(
            "X",
            "v",
            "== 1".parse().unwrap(),
            Severity::Warning,
        )],
    );
    let yaml = no_for.to_prometheus_yaml().unwrap();
    assert!(!yaml.contains("for:"), "{yaml}");
    assert!(yaml.contains("(v) == 1"), "{yaml}");
}

#[test]
fn bad_rules_are_refused_naming_the_field() {
    let ok = || AlertRule::new("Ok", "v", "> 1".parse().unwrap(), Severity::Warning);
    let cases: Vec<(RuleSet, &str)> = vec![
        (RuleSet::new("", vec![ok()]), "rule_set.name"),
        (RuleSet::new("g", vec![]), "rule_set.rules"),
        (
            {
                let mut s = RuleSet::new("g", vec![ok()]);
                s.interval = Duration::ZERO;
                s
            },
            "rule_set.interval",
        ),
        (
            RuleSet::new("g", vec![ok(), ok()]),
            "rule_set.rules[1].name",
        ),
        (
            RuleSet::new(
                "g",
                vec![AlertRule::new(
                    "bad name",
                    "v",
                    "> 1".parse().unwrap(),
                    Severity::Warning,
                )],
            ),
            "rule_set.rules[0].name",
        ),
        (
            RuleSet::new(
                "g",
                vec![AlertRule::new(
                    "A",
                    " ",
                    "> 1".parse().unwrap(),
                    Severity::Warning,
                )],
            ),
            "rule_set.rules[0].expr",
        ),
        (
            RuleSet::new(
                "g",
                vec![AlertRule::new(
                    "A",
                    "v",
                    "> 1".parse().unwrap(),
                    Severity::Info,
                )],
            ),
            "rule_set.rules[0].severity",
        ),
        (
            RuleSet::new("g", vec![ok().label("severity", "x")]),
            "rule_set.rules[0].labels.severity",
        ),
        (
            RuleSet::new("g", vec![ok().label("__name__", "x")]),
            "rule_set.rules[0].labels.__name__",
        ),
        (
            RuleSet::new("g", vec![ok().annotation("a-b", "x")]),
            "rule_set.rules[0].annotations.a-b",
        ),
    ];
    for (set, field) in cases {
        let e = AlertEvaluator::new(set.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(field), "{e} should name {field}");
        assert!(set.to_prometheus_yaml().is_err());
    }
    let parsed: RuleSet = serde_json::from_str(
        r#"{"name":"g","rules":[{"name":"A","expr":"v","condition":"> 2%","for":{"secs":60,"nanos":0},"severity":"critical"}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.interval, secs(30));
    assert_eq!(parsed.rules[0].for_duration, secs(60));
    assert!((parsed.rules[0].condition.threshold - 0.02).abs() < 1e-12);
}

#[test]
fn durations_in_prometheus_syntax() {
    for (d, s) in [
        (secs(60), "1m"),
        (secs(90), "1m30s"),
        (secs(3600), "1h"),
        (Duration::from_millis(250), "250ms"),
        (Duration::ZERO, "0s"),
    ] {
        assert_eq!(prometheus_duration(d), s);
    }
}

/// `promtool` (from the Debian `prometheus` package) accepts the file.
#[test]
#[ignore = "needs promtool; run: cargo xtask test"]
fn promtool_accepts_the_exported_rules() {
    let path = std::env::temp_dir().join(format!("atlas-rules-{}.yml", std::process::id()));
    seed_rules(&SeedJobs::default())
        .write_prometheus_rules(&path)
        .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool on PATH");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "promtool refused the rules:\n{text}");
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
}
