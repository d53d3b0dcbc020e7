//! Every parser on real tool output where the tool runs on the project's
//! machines and on documented-format fixtures otherwise (see
//! `fixtures/README.md`); malformed reports are typed errors, never a
//! pass; and the quality-gates hook stopping a rollout before any deploy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atlas_core::testing::MemoryStateStore;
use atlas_core::{Outcome, ServiceName, Slot};
use atlas_gates::bench::compare;
use atlas_gates::vulns::parse_findings;
use atlas_gates::{
    AllowList, BenchmarkGate, CoverageGate, CoverageReport, Error, GateContext, GateStatus,
    PolicyGate, QualityGates, ReportFormat, StagingGate, TestGate, TestOutcome, TestReport,
    VulnSeverity, VulnerabilityGate,
};

mod support;

use support::{run, world_rollout};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn ctx() -> GateContext {
    GateContext::new(ServiceName::new("checkout").unwrap(), "v3")
}

fn is_malformed(e: &Error, format: &str) -> bool {
    matches!(e, Error::Malformed { format: f, .. } if *f == format)
}

// ---------------------------------------------------------------------------
// JUnit

#[test]
fn nextest_junit_counts_the_failure() {
    let r = TestReport::from_file(&fixture("junit/nextest.xml")).unwrap();
    assert_eq!(r.cases.len(), 3, "nextest leaves ignored tests out");
    assert_eq!(r.count(TestOutcome::Passed), 2);
    assert_eq!(r.count(TestOutcome::Failed), 1);
    let failed: Vec<&str> = r
        .cases
        .iter()
        .filter(|c| c.outcome == TestOutcome::Failed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["checkout::tests::wrong_on_purpose"]);
    let v = TestGate::junit("unused").judge(&r);
    assert!(!v.passed);
    assert_eq!(v.summary, "3 tests, 1 failed, 0 skipped (allowed 0)");
    assert_eq!(v.details, ["failed: checkout::tests::wrong_on_purpose"]);
}

#[test]
fn pytest_junit_counts_failure_and_skip() {
    let r = TestReport::from_file(&fixture("junit/pytest.xml")).unwrap();
    assert_eq!(r.cases.len(), 5);
    assert_eq!(r.count(TestOutcome::Passed), 3);
    assert_eq!(r.count(TestOutcome::Failed), 1);
    assert_eq!(r.count(TestOutcome::Skipped), 1);
    let v = TestGate::junit("unused").judge(&r);
    assert!(!v.passed);
    assert!(
        v.details
            .contains(&"skipped: test_pricing::test_bulk".to_string()),
        "{:?}",
        v.details
    );
}

#[test]
fn passing_junit_passes_within_the_skip_allowance() {
    let xml = r#"<?xml version="1.0"?>
<testsuites><testsuite name="a" tests="3">
  <testsuite name="nested"><testcase classname="a" name="one"/></testsuite>
  <testcase classname="a" name="two"><system-out>ok</system-out></testcase>
  <testcase classname="a" name="flaky"><flakyFailure message="first try"/></testcase>
  <testcase classname="a" name="later"><skipped/></testcase>
</testsuite></testsuites>"#;
    let r = TestReport::parse(xml, "inline").unwrap();
    assert_eq!(r.count(TestOutcome::Passed), 3);
    assert!(TestGate::junit("x").max_skipped(1).judge(&r).passed);
    assert!(!TestGate::junit("x").judge(&r).passed);
    assert!(
        !TestGate::junit("x")
            .max_skipped(1)
            .min_tests(4)
            .judge(&r)
            .passed
    );
    let empty = TestReport::parse("<testsuites/>", "inline").unwrap();
    assert!(
        !TestGate::junit("x").judge(&empty).passed,
        "no test ran: no pass"
    );
}

#[test]
fn failures_outside_test_cases_still_fail() {
    // pytest's collection errors and Surefire's set-up failures.
    let suite_error = r#"<testsuite name="pkg" tests="1" errors="1">
        <testcase classname="pkg" name="ok"/>
        <error message="ImportError while importing test module"/>
    </testsuite>"#;
    let r = TestReport::parse(suite_error, "inline").unwrap();
    assert_eq!(r.count(TestOutcome::Failed), 1, "{r:?}");
    assert!(!TestGate::junit("x").judge(&r).passed);
    let silent = r#"<testsuites><testsuite name="pkg" tests="2" failures="2">
        <testcase classname="pkg" name="a"><failure/></testcase>
        <testcase classname="pkg" name="b"/>
    </testsuite></testsuites>"#;
    let r = TestReport::parse(silent, "inline").unwrap();
    let failed: Vec<&str> = r
        .cases
        .iter()
        .filter(|c| c.outcome == TestOutcome::Failed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "pkg::a",
            "suite \"pkg\": 1 failures or errors not listed as test cases"
        ]
    );
    let e = TestReport::parse(r#"<testsuite failures="many"/>"#, "inline").unwrap_err();
    assert!(e.to_string().contains("failures=\"many\""), "{e}");
}

#[test]
fn malformed_junit_is_a_typed_error() {
    let cases = [
        ("", "no root element"),
        ("<testsuites><testcase name='a'>", "still open"),
        ("<html><body/></html>", "not <testsuites>"),
        (
            "<testsuites><testcase classname='a'/></testsuites>",
            "without a name",
        ),
        ("<testsuites></testsuite>", "at byte"),
        ("<testsuites/><testsuites/>", "second root"),
        ("not xml at all", "outside the root"),
    ];
    for (xml, detail) in cases {
        let e = TestReport::parse(xml, "bad.xml").unwrap_err();
        assert!(is_malformed(&e, "JUnit XML"), "{xml}: {e:?}");
        assert!(e.to_string().contains(detail), "{xml}: {e}");
        assert!(e.to_string().contains("bad.xml"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Coverage

#[test]
fn coveragepy_lcov_and_cobertura_agree() {
    let lcov = CoverageReport::from_file(&fixture("coverage/coveragepy.lcov")).unwrap();
    let cob = CoverageReport::from_file(&fixture("coverage/coveragepy-cobertura.xml")).unwrap();
    assert_eq!(lcov, cob, "the same run in two formats");
    let total = lcov.total();
    assert_eq!(
        (total.found, total.hit),
        (25, 21),
        "coverage.py's lines-valid/lines-covered"
    );
    assert_eq!(lcov.files["pricing.py"].found, 11);
    assert_eq!(lcov.files["pricing.py"].hit, 8);

    let at_80 = CoverageGate::lcov("x").judge(&lcov).unwrap();
    assert!(at_80.passed, "84 % ≥ 80 %: {}", at_80.summary);
    assert_eq!(
        at_80.summary,
        "line coverage 84.00 % (21 of 25 lines; threshold 80.00 %)"
    );
    assert!(
        !CoverageGate::lcov("x")
            .min_line_rate(0.85)
            .judge(&lcov)
            .unwrap()
            .passed
    );
    let per_file = CoverageGate::lcov("x")
        .min_file_rate(0.80)
        .judge(&cob)
        .unwrap();
    assert!(!per_file.passed);
    assert_eq!(per_file.details, ["pricing.py: 72.73 % below 80.00 %"]);
    let excluded = CoverageGate::lcov("x")
        .min_file_rate(0.80)
        .exclude("pricing.py")
        .judge(&cob)
        .unwrap();
    assert!(excluded.passed);
    let e = CoverageGate::lcov("x")
        .min_line_rate(80.0)
        .judge(&lcov)
        .unwrap_err();
    assert!(e.to_string().contains("coverage.min_line_rate"), "{e}");
}

#[test]
fn lcov_without_da_lines_uses_lf_and_lh() {
    let r = CoverageReport::parse_lcov("TN:\nSF:a.rs\nLF:10\nLH:9\nend_of_record\n", "x").unwrap();
    assert_eq!((r.total().found, r.total().hit), (10, 9));
}

#[test]
fn malformed_coverage_is_a_typed_error() {
    let lcov = [
        ("", "no SF: record"),
        ("SF:a.rs\nDA:1,1\n", "no end_of_record"),
        ("DA:1,1\nend_of_record\n", "outside a record"),
        ("SF:a.rs\nDA:x,1\nend_of_record\n", "line 2: DA line"),
        ("SF:a.rs\nDA:1,many\nend_of_record\n", "DA hits"),
        ("SF:a.rs\nLF:1\nLH:5\nend_of_record\n", "LH 5 above LF 1"),
        ("<coverage/>", "TAG:VALUE"),
    ];
    for (text, detail) in lcov {
        let e = CoverageReport::parse_lcov(text, "lcov.info").unwrap_err();
        assert!(is_malformed(&e, "lcov"), "{text:?}: {e:?}");
        assert!(e.to_string().contains(detail), "{text:?}: {e}");
    }
    let cobertura = [
        ("<report/>", "not <coverage>"),
        ("<coverage><packages/></coverage>", "no <class>"),
        (
            "<coverage><line number='1' hits='1'/></coverage>",
            "outside a <class>",
        ),
        (
            "<coverage><class filename='a'><lines><line number='x' hits='1'/></lines></class></coverage>",
            "number",
        ),
        ("<coverage><class name='a'/></coverage>", "without filename"),
        ("<coverage><class filename='a'>", "still open"),
    ];
    for (text, detail) in cobertura {
        let e = CoverageReport::parse_cobertura(text, "cov.xml").unwrap_err();
        assert!(is_malformed(&e, "Cobertura XML"), "{text}: {e:?}");
        assert!(e.to_string().contains(detail), "{text}: {e}");
    }
}

// ---------------------------------------------------------------------------
// Vulnerabilities

fn findings(format: ReportFormat, file: &str) -> Vec<atlas_gates::Finding> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    parse_findings(format, &text, file).unwrap()
}

#[test]
fn cargo_audit_findings_are_scored_from_their_cvss_vectors() {
    let f = findings(ReportFormat::CargoAudit, "vulns/cargo-audit.json");
    assert_eq!(
        f.len(),
        2,
        "warnings (unmaintained) are not vulnerabilities"
    );
    assert_eq!(f[0].id, "RUSTSEC-2023-0071");
    assert_eq!(f[0].package, "rsa");
    assert_eq!(f[0].version, "0.9.6");
    assert_eq!(f[0].severity, VulnSeverity::Medium, "5.9");
    assert_eq!(f[1].severity, VulnSeverity::High, "7.5");
    let gate = VulnerabilityGate::new().today(jiff::civil::date(2026, 12, 5));
    let v = gate.judge(&f);
    assert!(!v.passed);
    assert_eq!(v.details.len(), 1);
    assert!(
        v.details[0].starts_with("HIGH RUSTSEC-2024-0003"),
        "{:?}",
        v.details
    );
    assert!(findings(ReportFormat::CargoAudit, "vulns/cargo-audit-clean.json").is_empty());
}

#[test]
fn allow_list_entries_expire() {
    let f = findings(ReportFormat::CargoAudit, "vulns/cargo-audit.json");
    // Allowed by an alias, until the end of the day it expires.
    let allow = AllowList::default().with(
        "GHSA-8r5v-vm4m-4g25",
        jiff::civil::date(2026, 12, 31),
        "h2 only talks to our own load balancer",
    );
    let gate = VulnerabilityGate::new().allow(allow);
    let v = gate
        .clone()
        .today(jiff::civil::date(2026, 12, 31))
        .judge(&f);
    assert!(v.passed, "{v:?}");
    assert!(v.summary.contains("1 allowed"), "{}", v.summary);
    let v = gate.today(jiff::civil::date(2027, 1, 1)).judge(&f);
    assert!(!v.passed);
    assert!(
        v.details[0].contains("allow-list entry expired 2026-12-31"),
        "{:?}",
        v.details
    );
    let parsed: AllowList = serde_json::from_str(
        r#"{"allow":[{"id":"RUSTSEC-2023-0071","expires":"2027-03-31","reason":"no RSA keys"}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.allow[0].expires, jiff::civil::date(2027, 3, 31));
    assert!(
        serde_json::from_str::<AllowList>(r#"{"allow":[{"id":"x","expires":"soon","reason":""}]}"#)
            .is_err()
    );
}

#[test]
fn trivy_findings_keep_their_severity() {
    let f = findings(ReportFormat::Trivy, "vulns/trivy.json");
    let got: Vec<(&str, VulnSeverity)> = f.iter().map(|f| (f.id.as_str(), f.severity)).collect();
    assert_eq!(
        got,
        [
            ("CVE-2021-36159", VulnSeverity::Critical),
            ("CVE-2021-3711", VulnSeverity::High),
            ("CVE-2021-3712", VulnSeverity::Medium),
        ]
    );
    let v = VulnerabilityGate::new().judge(&f);
    assert_eq!(v.details.len(), 2);
    let v = VulnerabilityGate::new()
        .threshold(VulnSeverity::Critical)
        .judge(&f);
    assert_eq!(v.details.len(), 1);
}

#[test]
fn osv_findings_take_group_vector_or_database_severity() {
    let f = findings(ReportFormat::Osv, "vulns/osv-scanner.json");
    let got: Vec<(&str, &str, VulnSeverity)> = f
        .iter()
        .map(|f| (f.id.as_str(), f.package.as_str(), f.severity))
        .collect();
    assert_eq!(
        got,
        [
            ("GHSA-wcg3-cvx6-7396", "time", VulnSeverity::Medium),
            ("RUSTSEC-2020-0071", "time", VulnSeverity::Medium),
            ("GHSA-p6mc-m468-83gw", "lodash", VulnSeverity::High),
            ("GHSA-29mw-wpgm-hmr9", "lodash", VulnSeverity::Unknown),
        ]
    );
    let v = VulnerabilityGate::new().judge(&f);
    assert_eq!(
        v.details.len(),
        2,
        "HIGH and the unscored one: {:?}",
        v.details
    );
    let v = VulnerabilityGate::new().fail_on_unknown(false).judge(&f);
    assert_eq!(v.details.len(), 1);
    // The OSV API's answer shape.
    let api = r#"{"vulns":[{"id":"GHSA-x","summary":"s","affected":[{"package":{"name":"p","ecosystem":"PyPI"}}],
        "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}]}"#;
    let f = parse_findings(ReportFormat::Osv, api, "api").unwrap();
    assert_eq!(
        (f[0].package.as_str(), f[0].severity),
        ("p", VulnSeverity::Critical)
    );
    assert!(parse_findings(ReportFormat::Osv, "{}", "api").is_err());
}

#[test]
fn malformed_vulnerability_reports_are_typed_errors() {
    let cases = [
        (ReportFormat::CargoAudit, "not json", "cargo-audit JSON"),
        (
            ReportFormat::CargoAudit,
            r#"{"database":{}}"#,
            "cargo-audit JSON",
        ),
        (
            ReportFormat::CargoAudit,
            r#"{"vulnerabilities":{"list":[{"advisory":{}}]}}"#,
            "cargo-audit JSON",
        ),
        (ReportFormat::CargoAudit, "[]", "cargo-audit JSON"),
        (ReportFormat::Trivy, r#"{"Results":[]}"#, "Trivy JSON"),
        (
            ReportFormat::Trivy,
            r#"{"SchemaVersion":3,"Results":[]}"#,
            "Trivy JSON",
        ),
        (
            ReportFormat::Trivy,
            r#"{"SchemaVersion":2,"Results":{}}"#,
            "Trivy JSON",
        ),
        (
            ReportFormat::Osv,
            r#"{"results":[{"packages":[{"vulnerabilities":[{}]}]}]}"#,
            "OSV JSON",
        ),
    ];
    for (format, text, name) in cases {
        let e = parse_findings(format, text, "scan.json").unwrap_err();
        assert!(is_malformed(&e, name), "{text}: {e:?}");
    }
    let e = parse_findings(ReportFormat::Trivy, r#"{"SchemaVersion":3}"#, "x").unwrap_err();
    assert!(
        e.to_string()
            .contains("SchemaVersion 3 is not the supported version 2"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Benchmarks

#[test]
fn criterion_runs_are_compared_with_their_baseline() {
    let dir = fixture("criterion");
    let c = compare(&dir, "base", "new").unwrap();
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["parse/cobertura", "parse/junit", "parse/lcov"]);
    assert_eq!(c[1].ratio(), Some(1.3));
    let v = BenchmarkGate::criterion(&dir).judge(&c).unwrap();
    assert!(!v.passed);
    assert_eq!(v.details, ["parse/junit: +30.0 % (2000 ns → 2600 ns)"]);
    assert!(
        v.summary
            .starts_with("2 benchmarks compared, worst parse/junit +30.0 %"),
        "{}",
        v.summary
    );
    assert!(
        BenchmarkGate::criterion(&dir)
            .budget(0.35)
            .judge(&c)
            .unwrap()
            .passed
    );
    let e = BenchmarkGate::criterion(&dir)
        .budget(-1.0)
        .judge(&c)
        .unwrap_err();
    assert!(e.to_string().contains("benchmarks.budget"), "{e}");
    // A baseline that was not run again fails; nothing compared fails.
    let swapped = compare(&dir, "new", "base").unwrap();
    let v = BenchmarkGate::criterion(&dir)
        .budget(1.0)
        .judge(&swapped)
        .unwrap();
    assert_eq!(v.details, ["parse/cobertura: in the baseline, not run now"]);
    let none = compare(&dir, "base", "nightly").unwrap();
    let v = BenchmarkGate::criterion(&dir).judge(&none).unwrap();
    assert!(!v.passed);
}

#[test]
fn malformed_estimates_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("b/new");
    std::fs::create_dir_all(&bench).unwrap();
    for bad in [
        "{}",
        r#"{"mean":{"point_estimate":"fast"}}"#,
        r#"{"mean":{"point_estimate":0}}"#,
    ] {
        std::fs::write(bench.join("estimates.json"), bad).unwrap();
        let e = compare(dir.path(), "base", "new").unwrap_err();
        assert!(is_malformed(&e, "criterion estimates"), "{bad}: {e:?}");
    }
    let e = compare(&dir.path().join("absent"), "base", "new").unwrap_err();
    assert!(matches!(e, Error::Read { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------
// The hook, policies and staging

#[tokio::test]
async fn the_report_names_every_failed_gate_and_errors_never_pass() {
    let gates = QualityGates::new()
        .gate(TestGate::junit(fixture("junit/nextest.xml")))
        .gate(CoverageGate::cobertura(fixture(
            "coverage/coveragepy-cobertura.xml",
        )))
        .gate(
            VulnerabilityGate::new()
                .report(ReportFormat::Trivy, fixture("vulns/trivy.json"))
                .threshold(VulnSeverity::Critical),
        )
        .gate(BenchmarkGate::criterion(fixture("criterion")))
        .gate(CoverageGate::lcov(fixture("absent.lcov")))
        .gate(PolicyGate::from_fn("pinned-version", |ctx| {
            let v = ctx.version.clone();
            async move {
                Ok(if v == "latest" {
                    vec!["unpinned".into()]
                } else {
                    vec![]
                })
            }
        }));
    let report = gates.evaluate(&ctx()).await;
    let statuses: Vec<(&str, GateStatus)> = report
        .results
        .iter()
        .map(|r| (r.gate.as_str(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("tests", GateStatus::Failed),
            ("coverage", GateStatus::Passed),
            ("vulnerabilities", GateStatus::Failed),
            ("benchmarks", GateStatus::Failed),
            ("coverage", GateStatus::Error),
            ("pinned-version", GateStatus::Passed),
        ]
    );
    assert!(!report.passed());
    let text = report.to_string();
    assert!(text.contains("tests: 3 tests, 1 failed"), "{text}");
    assert!(text.contains("CVE-2021-36159"), "{text}");
    assert!(text.contains("coverage: error: cannot read"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["results"][4]["status"], "error");
}

#[tokio::test(start_paused = true)]
async fn staging_must_have_promoted_the_same_version_before_production() {
    // Staging: v3 goes through a full rollout, which the store records.
    let staging = MemoryStateStore::new();
    let gate = |store: &MemoryStateStore| {
        QualityGates::new().gate(StagingGate::new("staging", Arc::new(store.clone())))
    };
    let (outcome, _) = run(staging.clone(), world_rollout("v3"), QualityGates::new()).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");

    // Production: v3 passes the staging gate, v4 (never staged) does not
    // and no replica of it starts.
    let (outcome, _) = run(MemoryStateStore::new(), world_rollout("v3"), gate(&staging)).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");
    let (outcome, workloads) =
        run(MemoryStateStore::new(), world_rollout("v4"), gate(&staging)).await;
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(
        reason.contains("quality gates failed for checkout v4"),
        "{reason}"
    );
    assert!(
        reason.contains("staging: staging runs v3, not v4"),
        "{reason}"
    );
    assert_eq!(
        workloads.replicas(&ServiceName::new("checkout").unwrap(), Slot::Green),
        0
    );
    // A service staging never saw fails too.
    let other = GateContext::new(ServiceName::new("cart").unwrap(), "v3");
    let v = atlas_gates::Gate::evaluate(&StagingGate::new("staging", Arc::new(staging)), &other)
        .await
        .unwrap();
    assert!(!v.passed);
    assert_eq!(v.summary, "cart was never rolled out in staging");
}
