//! The deployment checklist over the core contracts' mocks: every item
//! kind passing, failing and not applying, the table, the JSON and the
//! exit status.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atlas_core::migration::{AppliedMigration, MigrationDriver, MigrationPhase, Version};
use atlas_core::testing::{
    MemoryDriver, MemoryStateStore, ProbeScript, ScriptedMetrics, ScriptedProbe,
};
use atlas_core::{Endpoint, ServiceName};
use atlas_gates::{
    BenchmarkGate, Bound, CheckStatus, Checklist, FnCheck, GateCheck, GateContext, MetricCheck,
    MigrationsCheck, ProbeCheck, TrafficCheck,
};

mod support;

fn endpoint(replica: &str, port: u16) -> Endpoint {
    Endpoint::new(replica, format!("127.0.0.1:{port}").parse().unwrap())
}

fn v(n: u64) -> Version {
    Version::from_parts(&[n]).unwrap()
}

fn row(n: u64, checksum: &str, success: bool) -> AppliedMigration {
    AppliedMigration {
        version: v(n),
        name: format!("m{n}"),
        checksum: checksum.into(),
        phase: MigrationPhase::Expand,
        applied_at: SystemTime::now(),
        duration: Duration::from_millis(5),
        success,
        baseline: false,
    }
}

async fn driver_with(rows: &[AppliedMigration]) -> Arc<MemoryDriver> {
    let d = MemoryDriver::new();
    d.ensure_history().await.unwrap();
    for r in rows {
        d.put_history(r).await.unwrap();
    }
    Arc::new(d)
}

fn expected(pairs: &[(u64, &str)]) -> BTreeMap<Version, String> {
    pairs.iter().map(|(n, c)| (v(*n), c.to_string())).collect()
}

#[tokio::test]
async fn probes_report_each_unhealthy_endpoint() {
    let probe = ScriptedProbe::new();
    probe.script("web-1", ProbeScript::Failing("HTTP 503".into()));
    let probe = Arc::new(probe);
    let ok = ProbeCheck::new(
        "application health",
        probe.clone(),
        vec![endpoint("web-0", 1)],
    );
    let bad = ProbeCheck::new(
        "application health",
        probe.clone(),
        vec![endpoint("web-0", 1), endpoint("web-1", 2)],
    );
    let none = ProbeCheck::new("tls certificates", probe, vec![]);
    let report = Checklist::new().item(ok).item(bad).item(none).run().await;
    let got: Vec<(CheckStatus, &str)> = report
        .items
        .iter()
        .map(|r| (r.status, r.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (CheckStatus::Pass, "1 endpoints healthy"),
            (CheckStatus::Fail, "web-1 (127.0.0.1:2): HTTP 503"),
            (CheckStatus::NotApplicable, "no endpoint given"),
        ]
    );
    assert!(!report.passed);
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test]
async fn migrations_compare_history_with_the_source() {
    let good = driver_with(&[row(1, "a", true), row(2, "b", true)]).await;
    let item = MigrationsCheck::new(good.clone(), expected(&[(1, "a"), (2, "b")]));
    let r = Checklist::new().item(item).run().await;
    assert_eq!(r.items[0].status, CheckStatus::Pass, "{:?}", r.items);
    assert_eq!(r.items[0].detail, "2 migrations applied");

    let drifted = driver_with(&[
        row(1, "a", true),
        row(2, "x", true),
        row(3, "c", false),
        row(9, "z", true),
    ])
    .await;
    let item = MigrationsCheck::new(drifted, expected(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]));
    let r = Checklist::new().item(item).run().await;
    assert_eq!(r.items[0].status, CheckStatus::Fail);
    assert_eq!(
        r.items[0].detail,
        "V2 checksum differs from the source; V3 failed; V4 not applied; V9 applied but not in the source"
    );
    let none = MigrationsCheck::new(good, BTreeMap::new());
    let r = Checklist::new().item(none).run().await;
    assert_eq!(r.items[0].status, CheckStatus::NotApplicable);
    assert!(r.passed, "not applicable is not a failure");
}

#[tokio::test]
async fn metric_checks_bound_values_and_say_when_nothing_applies() {
    let m = ScriptedMetrics::new();
    m.set_query_series("checklist", "min(up)", [(Duration::ZERO, 1.0)]);
    m.set_query_series("checklist", "backup_age", [(Duration::ZERO, 7200.0)]);
    m.set_query_series(
        "checklist",
        "drill_age",
        [(Duration::ZERO, atlas_core::Measurement::NoData)],
    );
    m.set_query_series(
        "checklist",
        "restore_age",
        [(Duration::ZERO, atlas_core::Measurement::NoData)],
    );
    let m = Arc::new(m);
    let report = Checklist::new()
        .item(MetricCheck::new(
            "prometheus targets up",
            m.clone(),
            "min(up)",
            Bound::AtLeast(1.0),
        ))
        .item(
            MetricCheck::new(
                "last backup",
                m.clone(),
                "backup_age",
                Bound::AtMost(3600.0),
            )
            .unit("s"),
        )
        .item(
            MetricCheck::new(
                "last failover drill",
                m.clone(),
                "drill_age",
                Bound::AtMost(86400.0),
            )
            .no_data_means_not_applicable("no failover drill metric: no failover configured"),
        )
        .item(MetricCheck::new(
            "last test restore",
            m,
            "restore_age",
            Bound::AtMost(86400.0),
        ))
        .run()
        .await;
    let got: Vec<(CheckStatus, &str)> = report
        .items
        .iter()
        .map(|r| (r.status, r.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (CheckStatus::Pass, "1 (at least 1)"),
            (CheckStatus::Fail, "2h (at most 1h)"),
            (
                CheckStatus::NotApplicable,
                "no failover drill metric: no failover configured"
            ),
            (CheckStatus::Fail, "no data for restore_age"),
        ]
    );
}

async fn promoted_store() -> (MemoryStateStore, ServiceName) {
    let store = MemoryStateStore::new();
    let rollout = support::world_rollout("v2");
    let svc = rollout.service.clone();
    support::run(store.clone(), rollout, atlas_gates::QualityGates::new()).await;
    (store, svc)
}

#[tokio::test(start_paused = true)]
async fn traffic_shares_match_the_recorded_split() {
    let (store, svc) = promoted_store().await;
    let q = r#"rate(atlas_proxy_requests_total{slot="{slot}"}[5m])"#;
    let shares = |green: f64, blue: f64| {
        let m = ScriptedMetrics::new();
        m.set_query_series(
            "checklist",
            q.replace("{slot}", "green"),
            [(Duration::ZERO, green)],
        );
        m.set_query_series(
            "checklist",
            q.replace("{slot}", "blue"),
            [(Duration::ZERO, blue)],
        );
        Arc::new(m)
    };
    let store = Arc::new(store);
    let check = |green, blue| TrafficCheck::new(store.clone(), svc.clone(), shares(green, blue), q);
    let r = Checklist::new()
        .item(check(98.0, 2.0))
        .item(check(90.0, 10.0))
        .item(check(0.0, 0.0))
        .item(TrafficCheck::new(
            store.clone(),
            ServiceName::new("cart").unwrap(),
            shares(1.0, 0.0),
            q,
        ))
        .run()
        .await;
    let got: Vec<CheckStatus> = r.items.iter().map(|i| i.status).collect();
    assert_eq!(
        got,
        [
            CheckStatus::Pass,
            CheckStatus::Fail,
            CheckStatus::Fail,
            CheckStatus::NotApplicable
        ],
        "{:?}",
        r.items
    );
    assert_eq!(
        r.items[1].detail,
        "green observed 90.0 % of requests, split says 100.0 % (tolerance 5.0 points)"
    );
}

#[tokio::test]
async fn the_report_renders_as_table_and_json() {
    let criterion = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/criterion");
    let ctx = GateContext::new(ServiceName::new("checkout").unwrap(), "v3");
    let report = Checklist::new()
        .item(FnCheck::new("autoscaling configured", || async {
            atlas_gates::CheckOutcome::pass("HPA 2–10 replicas on cpu 70 %")
        }))
        .not_applicable("last failover drill", "no failover regions configured")
        .item(GateCheck::new(BenchmarkGate::criterion(&criterion), ctx))
        .run()
        .await;
    let table = report.table();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ITEM "), "{table}");
    assert!(
        lines[1].starts_with("autoscaling configured  pass "),
        "{table}"
    );
    assert!(
        lines[2].contains("not applicable  no failover regions configured"),
        "{table}"
    );
    assert!(lines[3].starts_with("benchmarks "), "{table}");
    assert!(lines[3].contains("FAIL"), "{table}");
    assert!(lines[3].contains("parse/junit: +30.0 %"), "{table}");
    assert!(
        table.ends_with("1 passed, 1 failed, 1 not applicable\n"),
        "{table}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["passed"], false);
    assert_eq!(json["items"][1]["status"], "not_applicable");
    assert_eq!(json["items"][2]["item"], "benchmarks");
    assert_eq!(report.exit_code(), 1);
}
