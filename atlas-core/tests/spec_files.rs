//! Rollout spec files: the example files, every validation rule, unknown
//! fields, file handling, round trips, and a fuzz of the loader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atlas_core::analysis::Comparison;
use atlas_core::rollout::DEFAULT_PROGRESS_DEADLINE;
use atlas_core::spec::{self, MAX_SPEC_FILE_BYTES, RolloutSpec, SpecFormat};
use atlas_core::{
    AnalysisMetric, AnalysisTemplate, BlueGreen, Canary, CanaryScale, CanaryStep, Condition, Error,
    ErrorKind, InconclusivePolicy, ProbePolicy, Release, RequestMatch, Rollout, ServiceName, Step,
    Strategy, Weight,
};
use proptest::prelude::*;
use proptest::strategy::Strategy as Gen;
use serde_yaml_ng::Value;

const BLUE_GREEN_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/specs/checkout-blue-green.yaml"
);
const CANARY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/specs/payments-canary.toml"
);

fn blue_green_text() -> String {
    std::fs::read_to_string(BLUE_GREEN_FILE).expect("example file")
}

fn canary_text() -> String {
    std::fs::read_to_string(CANARY_FILE).expect("example file")
}

fn w(p: u8) -> Weight {
    Weight::new(p).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A condition as (operator, threshold).
type Cond = Option<(Comparison, f64)>;

/// The metric without its conditions, and the conditions apart, so that
/// thresholds computed from units (`350ms`) can be compared approximately.
fn split_conditions(m: &AnalysisMetric) -> (AnalysisMetric, Cond, Cond) {
    let mut bare = m.clone();
    bare.success_condition = None;
    bare.failure_condition = None;
    let c = |c: Option<Condition>| c.map(|c| (c.op, c.threshold));
    (bare, c(m.success_condition), c(m.failure_condition))
}

fn assert_condition(actual: Cond, expected: Cond, what: &str) {
    match (actual, expected) {
        (None, None) => {}
        (Some((op, t)), Some((eop, et))) => {
            assert_eq!(op, eop, "{what}: operator");
            assert!((t - et).abs() < 1e-12, "{what}: threshold {t} != {et}");
        }
        _ => panic!("{what}: {actual:?} != {expected:?}"),
    }
}

fn assert_metric(actual: &AnalysisMetric, expected: &AnalysisMetric, s: Cond, f: Cond) {
    let (bare, success, failure) = split_conditions(actual);
    assert_eq!(&bare, expected, "metric {}", expected.name);
    assert_condition(success, s, &format!("{} success_condition", expected.name));
    assert_condition(failure, f, &format!("{} failure_condition", expected.name));
}

// ---------------------------------------------------------------------------
// The example files
// ---------------------------------------------------------------------------

#[test]
fn blue_green_example_loads_field_by_field() {
    let r = spec::load(BLUE_GREEN_FILE).unwrap();

    assert_eq!(r.service, ServiceName::new("checkout").unwrap());
    assert_eq!(
        r.release,
        Release::new("v2.4.0", "./target/release/checkout")
            .with_arg("--listen")
            .with_arg("127.0.0.1:0")
            .with_arg("--log-format")
            .with_arg("json")
            .with_env("RUST_LOG", "info")
            .with_env("CHECKOUT_CURRENCY", "EUR")
    );

    let mut bg = BlueGreen::new(3);
    bg.preview_replicas = Some(1);
    bg.auto_promotion = true;
    bg.traffic_steps = vec![w(5), w(25), w(50), w(75), w(100)];
    bg.pre_promotion_analysis = Some("smoke".into());
    bg.step_analysis = Some("health".into());
    bg.post_promotion_analysis = None;
    bg.scale_down_delay = secs(30);
    bg.canary_match = Some(RequestMatch::Header {
        name: "x-canary".into(),
        value: "always".into(),
    });
    assert_eq!(r.strategy, Strategy::BlueGreen(bg));

    assert_eq!(
        r.probe,
        ProbePolicy {
            initial_delay: secs(1),
            period: secs(2),
            timeout: Duration::from_millis(500),
            success_threshold: 2,
            failure_threshold: 3,
        }
    );

    assert_eq!(
        r.analysis.keys().collect::<Vec<_>>(),
        ["health", "smoke"],
        "templates"
    );
    let smoke = &r.analysis["smoke"];
    assert_eq!(smoke.name, "smoke");
    assert_eq!(smoke.metrics.len(), 1);
    assert_metric(
        &smoke.metrics[0],
        &AnalysisMetric::new(
            "startup-errors",
            r#"sum(increase(checkout_startup_errors_total{slot="{{canary}}"}[1m]))"#,
        )
        .every(secs(15), 2),
        None,
        Some((Comparison::Gt, 0.0)),
    );
    let health = &r.analysis["health"];
    assert_eq!(health.name, "health");
    assert_eq!(health.metrics.len(), 2);
    assert_metric(
        &health.metrics[0],
        &AnalysisMetric::new(
            "error-rate",
            r#"sum(rate(http_requests_total{service="{{service}}",slot="{{canary}}",code=~"5.."}[1m])) / sum(rate(http_requests_total{service="{{service}}",slot="{{canary}}"}[1m]))"#,
        )
        .every(secs(10), 3)
        .failure_limit(1),
        Some((Comparison::Lt, 0.01)),
        Some((Comparison::Ge, 0.05)),
    );
    let mut p99 = AnalysisMetric::new(
        "p99-latency",
        r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{service="{{service}}",slot="{{canary}}"}[1m])))"#,
    )
    .every(secs(10), 3);
    p99.window = Some(secs(60));
    assert_metric(&health.metrics[1], &p99, Some((Comparison::Le, 0.2)), None);

    assert_eq!(r.progress_deadline, secs(600));
    assert_eq!(r.on_inconclusive, InconclusivePolicy::Pause);
    assert!(r.args.is_empty());

    let a = |t: &str| Step::Analysis {
        template: t.to_string(),
    };
    assert_eq!(
        r.strategy.compile(false),
        vec![
            Step::Deploy { replicas: 1 },
            Step::AwaitHealthy,
            a("smoke"),
            Step::ScaleCanary { replicas: 3 },
            Step::SetWeight(w(5)),
            a("health"),
            Step::SetWeight(w(25)),
            a("health"),
            Step::SetWeight(w(50)),
            a("health"),
            Step::SetWeight(w(75)),
            a("health"),
            Step::SetWeight(w(100)),
            Step::Promote,
            Step::ScaleDownOld { delay: secs(30) },
        ]
    );
}

#[test]
fn canary_example_loads_field_by_field() {
    let r = spec::load(CANARY_FILE).unwrap();

    assert_eq!(r.service.as_str(), "payments");
    assert_eq!(
        r.release,
        Release::new("1.8.0", "registry.example.com/payments:1.8.0")
            .with_arg("serve")
            .with_env("PAYMENTS_MODE", "live")
    );

    let mut canary = Canary::new(
        10,
        vec![
            CanaryStep::SetWeight(w(10)),
            CanaryStep::Pause(Some(secs(120))),
            CanaryStep::SetCanaryScale(CanaryScale::Replicas(2)),
            CanaryStep::SetWeight(w(20)),
            CanaryStep::Analysis("success-rate".into()),
            CanaryStep::SetCanaryScale(CanaryScale::MatchTrafficWeight),
            CanaryStep::SetWeight(w(50)),
            CanaryStep::Analysis("success-rate".into()),
            CanaryStep::Pause(None),
        ],
    );
    canary.scale_down_delay = secs(60);
    canary.canary_match = Some(RequestMatch::Cookie {
        name: "beta".into(),
        value: "1".into(),
    });
    assert_eq!(r.strategy, Strategy::Canary(canary));

    assert_eq!(
        r.probe,
        ProbePolicy {
            period: secs(5),
            timeout: secs(2),
            failure_threshold: 5,
            ..ProbePolicy::default()
        }
    );

    assert_eq!(r.analysis.len(), 1);
    let t = &r.analysis["success-rate"];
    assert_eq!(t.name, "success-rate");
    assert_eq!(t.metrics.len(), 2);
    let mut success = AnalysisMetric::new(
        "success-rate",
        "sum(rate(http_requests_total{namespace=\"{{namespace}}\",service=\"{{service}}\",version=\"{{canary_version}}\",code!~\"5..\"}[2m]))\n/ sum(rate(http_requests_total{namespace=\"{{namespace}}\",service=\"{{service}}\",version=\"{{canary_version}}\"}[2m]))",
    )
    .every(secs(30), 4)
    .failure_limit(1);
    success.inconclusive_limit = 1;
    assert_metric(&t.metrics[0], &success, Some((Comparison::Ge, 0.995)), None);
    let mut p95 = AnalysisMetric::new(
        "p95-latency",
        "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{namespace=\"{{namespace}}\",service=\"{{service}}\",version=\"{{canary_version}}\"}[2m])))",
    )
    .every(secs(30), 4);
    p95.consecutive_error_limit = 2;
    assert_metric(&t.metrics[1], &p95, None, Some((Comparison::Gt, 0.35)));

    assert_eq!(r.progress_deadline, secs(900));
    assert_eq!(r.on_inconclusive, InconclusivePolicy::Abort);
    assert_eq!(
        r.args,
        BTreeMap::from([("namespace".to_string(), "prod".to_string())])
    );

    let a = || Step::Analysis {
        template: "success-rate".into(),
    };
    assert_eq!(
        r.strategy.compile(false),
        vec![
            Step::Deploy { replicas: 1 },
            Step::AwaitHealthy,
            Step::SetWeight(w(10)),
            Step::Pause(Some(secs(120))),
            Step::ScaleCanary { replicas: 2 },
            Step::SetWeight(w(20)),
            a(),
            Step::ScaleCanary { replicas: 5 },
            Step::SetWeight(w(50)),
            a(),
            Step::Pause(None),
            Step::ScaleCanary { replicas: 10 },
            Step::SetWeight(w(100)),
            Step::Promote,
            Step::ScaleDownOld { delay: secs(60) },
        ]
    );
}

#[test]
fn omitted_fields_take_the_domain_defaults() {
    let r = RolloutSpec::from_yaml(
        "service: web\nrelease: { version: v1, artifact: web }\nstrategy: { blue_green: { replicas: 2 } }\n",
    )
    .unwrap()
    .into_rollout()
    .unwrap();
    assert_eq!(
        r,
        Rollout::new(
            ServiceName::new("web").unwrap(),
            Release::new("v1", "web"),
            Strategy::BlueGreen(BlueGreen::new(2)),
        )
    );
    assert_eq!(r.probe, ProbePolicy::default());
    assert_eq!(r.progress_deadline, DEFAULT_PROGRESS_DEADLINE);

    let r = RolloutSpec::from_toml(
        r#"
service = "web"
release = { version = "v1", artifact = "web" }
strategy.canary = { replicas = 3, steps = [{ analysis = { template = "t" } }] }
[[analysis.t.metrics]]
name = "m"
query = "q"
success_condition = "> 0"
"#,
    )
    .unwrap()
    .into_rollout()
    .unwrap();
    assert_eq!(
        r,
        Rollout::new(
            ServiceName::new("web").unwrap(),
            Release::new("v1", "web"),
            Strategy::Canary(Canary::new(3, vec![CanaryStep::Analysis("t".into())])),
        )
        .with_analysis(AnalysisTemplate::new(
            "t",
            vec![
                AnalysisMetric::new("m", "q").success(Condition::new(Comparison::Gt, 0.0).unwrap())
            ],
        ))
    );
}

// ---------------------------------------------------------------------------
// Helpers: edit a spec as a YAML value, render it as YAML or TOML
// ---------------------------------------------------------------------------

fn base(which: Base) -> Value {
    match which {
        Base::BlueGreen => serde_yaml_ng::from_str(&blue_green_text()).unwrap(),
        Base::Canary => toml::from_str(&canary_text()).unwrap(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Base {
    BlueGreen,
    Canary,
}

/// `a.b[2].c` → [Key(a), Key(b), Index(2), Key(c)].
enum Seg {
    Key(String),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Seg::Key(rest[..open].to_string()));
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let close = stripped.find(']').unwrap();
                out.push(Seg::Index(stripped[..close].parse().unwrap()));
                rest = &stripped[close + 1..];
            }
        } else {
            // `''` stands for the empty key.
            out.push(Seg::Key(rest.replace("''", "")));
        }
    }
    out
}

/// Sets (or with `None` removes) the value at `path`, creating maps on the way.
fn edit(doc: &mut Value, path: &str, value: Option<&str>) {
    let segs = segments(path);
    let (last, parents) = segs.split_last().expect("non-empty path");
    let mut node = doc;
    for seg in parents {
        node = match seg {
            Seg::Key(k) => {
                let map = node.as_mapping_mut().expect("map on the way");
                if !map.contains_key(k.as_str()) {
                    map.insert(Value::from(k.as_str()), Value::Mapping(Default::default()));
                }
                map.get_mut(k.as_str()).unwrap()
            }
            Seg::Index(i) => &mut node.as_sequence_mut().expect("list on the way")[*i],
        };
    }
    let new = value.map(|v| serde_yaml_ng::from_str::<Value>(v).unwrap());
    match (last, new) {
        (Seg::Key(k), Some(v)) => {
            node.as_mapping_mut()
                .unwrap()
                .insert(Value::from(k.as_str()), v);
        }
        (Seg::Key(k), None) => {
            node.as_mapping_mut().unwrap().remove(k.as_str());
        }
        (Seg::Index(i), Some(v)) => node.as_sequence_mut().unwrap()[*i] = v,
        (Seg::Index(i), None) => {
            node.as_sequence_mut().unwrap().remove(*i);
        }
    }
}

/// The value as TOML, dropping nulls (TOML has none). `None` when the root
/// is not a table.
fn to_toml_text(v: &Value) -> Option<String> {
    fn conv(v: &Value) -> Option<toml::Value> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => toml::Value::Integer(i),
                None => toml::Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => toml::Value::String(s.clone()),
            Value::Sequence(items) => toml::Value::Array(items.iter().filter_map(conv).collect()),
            Value::Mapping(m) => toml::Value::Table(
                m.iter()
                    .filter_map(|(k, v)| {
                        let k = match k {
                            Value::String(s) => s.clone(),
                            other => serde_yaml_ng::to_string(other).ok()?.trim().to_string(),
                        };
                        Some((k, conv(v)?))
                    })
                    .collect(),
            ),
            Value::Tagged(t) => return conv(&t.value),
        })
    }
    match conv(v)? {
        toml::Value::Table(t) => toml::to_string(&t).ok(),
        _ => None,
    }
}

fn load_both(doc: &Value) -> Vec<(&'static str, atlas_core::Result<Rollout>)> {
    let yaml = serde_yaml_ng::to_string(doc).unwrap();
    let toml = to_toml_text(doc).expect("TOML rendering");
    vec![
        (
            "yaml",
            RolloutSpec::from_yaml(&yaml).and_then(RolloutSpec::into_rollout),
        ),
        (
            "toml",
            RolloutSpec::from_toml(&toml).and_then(RolloutSpec::into_rollout),
        ),
    ]
}

fn invalid(e: &Error) -> (String, String) {
    match e {
        Error::InvalidInput { field, rule } => (field.clone(), rule.clone()),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Every rule, one case each
// ---------------------------------------------------------------------------

struct Case {
    base: Base,
    edits: &'static [(&'static str, Option<&'static str>)],
    field: &'static str,
    rule: &'static str,
}

const fn bg(
    edits: &'static [(&'static str, Option<&'static str>)],
    field: &'static str,
    rule: &'static str,
) -> Case {
    Case {
        base: Base::BlueGreen,
        edits,
        field,
        rule,
    }
}

const fn ca(
    edits: &'static [(&'static str, Option<&'static str>)],
    field: &'static str,
    rule: &'static str,
) -> Case {
    Case {
        base: Base::Canary,
        edits,
        field,
        rule,
    }
}

#[rustfmt::skip]
const RULES: &[Case] = &[
    // service
    bg(&[("service", Some("Checkout"))], "service", "must start with a lowercase letter"),
    bg(&[("service", Some("''"))], "service", "must be 1 to 63 characters"),
    bg(&[("service", Some("check_out"))], "service", "may hold only lowercase letters"),
    // release
    bg(&[("release.version", Some("''"))], "release.version", "must not be empty"),
    bg(&[("release.artifact", Some("'  '"))], "release.artifact", "must not be empty"),
    bg(&[("release.args[1]", Some(r#""a\0b""#))], "release.args[1]", "NUL"),
    bg(&[("release.env", Some("{'A=B': x}"))], "release.env.A=B", "without '='"),
    bg(&[("release.env.SECRET", Some(r#""a\0b""#))], "release.env.SECRET", "NUL"),
    // strategy
    bg(&[("strategy.blue_green", None)], "strategy", "must set one of blue_green or canary"),
    bg(&[("strategy.canary", Some("{replicas: 1}"))], "strategy", "not both"),
    // blue-green
    bg(&[("strategy.blue_green.replicas", Some("0"))], "strategy.blue_green.replicas", "must be at least 1"),
    bg(&[("strategy.blue_green.preview_replicas", Some("0"))], "strategy.blue_green.preview_replicas", "must be at least 1"),
    bg(&[("strategy.blue_green.replicas", Some("10001"))], "strategy.blue_green.replicas", "must be at most 10000, got 10001"),
    bg(&[("strategy.blue_green.replicas", Some("4294967295"))], "strategy.blue_green.replicas", "must be at most 10000, got 4294967295"),
    bg(&[("strategy.blue_green.preview_replicas", Some("20000"))], "strategy.blue_green.preview_replicas", "must be at most 10000, got 20000"),
    bg(&[("strategy.blue_green.traffic_steps", Some("[]"))], "strategy.blue_green.traffic_steps", "at least one step"),
    bg(&[("strategy.blue_green.traffic_steps", Some("[5, 150, 100]"))], "strategy.blue_green.traffic_steps[1]", "must be between 0 and 100, got 150"),
    bg(&[("strategy.blue_green.traffic_steps", Some("[50, 25, 100]"))], "strategy.blue_green.traffic_steps[1]", "must not decrease (was 50, now 25)"),
    bg(&[("strategy.blue_green.traffic_steps", Some("[5, 50]"))], "strategy.blue_green.traffic_steps", "must end at 100"),
    bg(&[("strategy.blue_green.step_analysis", Some("healthy"))], "strategy.blue_green.step_analysis", "\"healthy\", which is not defined"),
    bg(&[("strategy.blue_green.pre_promotion_analysis", Some("''"))], "strategy.blue_green.pre_promotion_analysis", "must name an analysis template"),
    bg(&[("strategy.blue_green.post_promotion_analysis", Some("nope"))], "strategy.blue_green.post_promotion_analysis", "not defined"),
    bg(&[("strategy.blue_green.scale_down_delay", Some("soon"))], "strategy.blue_green.scale_down_delay", "is not a duration"),
    bg(&[("strategy.blue_green.scale_down_delay", Some("400d"))], "strategy.blue_green.scale_down_delay", "longer than the maximum of 365 days"),
    bg(&[("strategy.blue_green.canary_match", Some("{}"))], "strategy.blue_green.canary_match", "exactly one of header or cookie"),
    bg(&[("strategy.blue_green.canary_match.cookie", Some("{name: a, value: b}"))], "strategy.blue_green.canary_match", "exactly one of header or cookie"),
    bg(&[("strategy.blue_green.canary_match.header.name", Some("x canary"))], "strategy.blue_green.canary_match.header.name", "HTTP token"),
    bg(&[("strategy.blue_green.canary_match.header.value", Some(r#""a\r\nb""#))], "strategy.blue_green.canary_match.header.value", "control characters"),
    // canary
    ca(&[("strategy.canary.replicas", Some("0"))], "strategy.canary.replicas", "must be at least 1"),
    ca(&[("strategy.canary.replicas", Some("10001"))], "strategy.canary.replicas", "must be at most 10000, got 10001"),
    ca(&[("strategy.canary.steps[2]", Some("{}"))], "strategy.canary.steps[2]", "found none"),
    ca(&[("strategy.canary.steps[8]", Some("{pause: }"))], "strategy.canary.steps[8]", "written `pause: {}`"),
    ca(&[("strategy.canary.steps[2]", Some("{set_weight: 15, pause: {}}"))], "strategy.canary.steps[2]", "found set_weight, pause"),
    ca(&[("strategy.canary.steps[0].set_weight", Some("101"))], "strategy.canary.steps[0].set_weight", "must be between 0 and 100, got 101"),
    ca(&[("strategy.canary.steps[3].set_weight", Some("5"))], "strategy.canary.steps[3].set_weight", "must not decrease (was 10, now 5)"),
    ca(&[("strategy.canary.steps[1].pause.duration", Some("0s"))], "strategy.canary.steps[1].pause.duration", "must be greater than 0"),
    ca(&[("strategy.canary.steps[1].pause.duration", Some("2 fortnights"))], "strategy.canary.steps[1].pause.duration", "is not a duration"),
    ca(&[("strategy.canary.steps[4].analysis.template", Some("success"))], "strategy.canary.steps[4].analysis.template", "not defined"),
    ca(&[("strategy.canary.steps[2].set_canary_scale", Some("{}"))], "strategy.canary.steps[2].set_canary_scale", "exactly one of replicas, weight or match_traffic_weight"),
    ca(&[("strategy.canary.steps[2].set_canary_scale", Some("{replicas: 2, weight: 20}"))], "strategy.canary.steps[2].set_canary_scale", "exactly one of replicas, weight or match_traffic_weight"),
    ca(&[("strategy.canary.steps[2].set_canary_scale.replicas", Some("0"))], "strategy.canary.steps[2].set_canary_scale.replicas", "must be at least 1"),
    ca(&[("strategy.canary.steps[2].set_canary_scale.replicas", Some("11"))], "strategy.canary.steps[2].set_canary_scale.replicas", "must be at most the strategy's replicas (10), got 11"),
    ca(&[("strategy.canary.replicas", Some("1"))], "strategy.canary.steps[2].set_canary_scale.replicas", "must be at most the strategy's replicas (1), got 2"),
    ca(&[("strategy.canary.steps[2].set_canary_scale", Some("{weight: 120}"))], "strategy.canary.steps[2].set_canary_scale.weight", "must be between 0 and 100"),
    ca(&[("strategy.canary.steps[5].set_canary_scale.match_traffic_weight", Some("false"))], "strategy.canary.steps[5].set_canary_scale.match_traffic_weight", "must be true"),
    ca(&[("strategy.canary.scale_down_delay", Some("1 minute and a bit"))], "strategy.canary.scale_down_delay", "is not a duration"),
    ca(&[("strategy.canary.canary_match.cookie.value", Some("a;b"))], "strategy.canary.canary_match.cookie.value", "';'"),
    ca(&[("strategy.canary.canary_match.cookie.name", Some("''"))], "strategy.canary.canary_match.cookie.name", "non-empty HTTP token"),
    // probe
    bg(&[("probe.initial_delay", Some("-1s"))], "probe.initial_delay", "is not a duration"),
    bg(&[("probe.period", Some("0s"))], "probe.period", "must be greater than 0"),
    bg(&[("probe.timeout", Some("0ms"))], "probe.timeout", "must be greater than 0"),
    bg(&[("probe.timeout", Some("3s"))], "probe.timeout", "must not be longer than probe.period (2s), got 3s"),
    bg(&[("probe.period", Some("400ms"))], "probe.timeout", "must not be longer than probe.period (400ms), got 500ms"),
    bg(&[("probe.timeout", None), ("probe.period", Some("500ms"))], "probe.timeout", "the default of 1s is longer than probe.period (500ms)"),
    bg(&[("probe.success_threshold", Some("0"))], "probe.success_threshold", "must be at least 1"),
    bg(&[("probe.failure_threshold", Some("0"))], "probe.failure_threshold", "must be at least 1"),
    // analysis
    bg(&[("analysis.health.metrics", Some("[]"))], "analysis.health.metrics", "at least one metric"),
    bg(&[("analysis.health.metrics[0].name", Some("'  '"))], "analysis.health.metrics[0].name", "must not be empty"),
    bg(&[("analysis.health.metrics[1].name", Some("error-rate"))], "analysis.health.metrics[1].name", "already the name of analysis.health.metrics[0]"),
    bg(&[("analysis.health.metrics[0].query", Some("''"))], "analysis.health.metrics[0].query", "must not be empty"),
    bg(&[("analysis.health.metrics[0].query", Some("'up{job=\"{{servce}}\"}'"))], "analysis.health.metrics[0].query", "unknown argument {{servce}}"),
    bg(&[("analysis.health.metrics[0].query", Some("'up{{service'"))], "analysis.health.metrics[0].query", "unclosed"),
    bg(&[("analysis.health.metrics[1].window", Some("0s"))], "analysis.health.metrics[1].window", "must be greater than 0"),
    bg(&[("analysis.health.metrics[0].interval", Some("0s"))], "analysis.health.metrics[0].interval", "greater than 0 when count is more than 1"),
    bg(&[("analysis.health.metrics[0].interval", Some("every ten seconds"))], "analysis.health.metrics[0].interval", "is not a duration"),
    bg(&[("analysis.health.metrics[0].count", Some("0"))], "analysis.health.metrics[0].count", "must be at least 1"),
    bg(&[("analysis.health.metrics[0].initial_delay", Some("1 eon"))], "analysis.health.metrics[0].initial_delay", "is not a duration"),
    bg(&[("analysis.health.metrics[0].success_condition", Some("about 0.01"))], "analysis.health.metrics[0].success_condition", "must start with one of"),
    bg(&[("analysis.health.metrics[0].failure_condition", Some("'> lots'"))], "analysis.health.metrics[0].failure_condition", "is not a number, a percentage or a duration"),
    bg(&[("analysis.health.metrics[0].success_condition", None), ("analysis.health.metrics[0].failure_condition", None),], "analysis.health.metrics[0]", "must have a success_condition, a failure_condition or both"),
    bg(&[("analysis.''", Some("{metrics: [{name: m, query: q, success_condition: '> 1'}]}"))], "analysis", "template names must not be empty"),
    // top level
    bg(&[("progress_deadline", Some("0s"))], "progress_deadline", "must be greater than 0"),
    bg(&[("progress_deadline", Some("ten minutes"))], "progress_deadline", "is not a duration"),
    bg(&[("args", Some("{service: billing}"))], "args.service", "cannot be overridden"),
    bg(&[("args", Some("{'': x}"))], "args", "must not be empty"),
    bg(&[("args", Some("{'{{x}}': x}"))], "args.{{x}}", "braces"),
    // parse-level rules, reported by the parser with the same paths
    bg(&[("on_inconclusive", Some("retry"))], "on_inconclusive", "unknown variant `retry`"),
    bg(&[("strategy.blue_green.replicas", Some("-1"))], "strategy.blue_green.replicas", "expected u32"),
    ca(&[("strategy.canary.steps[0].set_weight", Some("ten"))], "strategy.canary.steps[0].set_weight", "invalid type"),
    bg(&[("service", None)], "document", "missing field `service`"),
    bg(&[("release.artifact", None)], "release", "missing field `artifact`"),
    bg(&[("analysis.health.metrics[0].query", None)], "analysis.health.metrics[0]", "missing field `query`"),
];

#[test]
fn every_rule_names_the_field_in_yaml_and_toml() {
    let mut failures = Vec::new();
    for (i, case) in RULES.iter().enumerate() {
        let mut doc = base(case.base);
        for (path, value) in case.edits {
            edit(&mut doc, path, *value);
        }
        for (format, result) in load_both(&doc) {
            match result {
                Ok(_) => failures.push(format!(
                    "case {i} ({format}): accepted, wanted {}",
                    case.field
                )),
                Err(e) => {
                    let (field, rule) = invalid(&e);
                    if field != case.field || !rule.contains(case.rule) {
                        failures.push(format!(
                            "case {i} ({format}): got {field:?}: {rule:?}; wanted {:?}: …{:?}…",
                            case.field, case.rule
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        RULES.len() * 2,
        failures.join("\n")
    );
}

#[test]
fn the_unedited_bases_are_valid_in_both_formats() {
    for which in [Base::BlueGreen, Base::Canary] {
        for (format, result) in load_both(&base(which)) {
            result.unwrap_or_else(|e| panic!("{which:?} as {format}: {e}"));
        }
    }
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let places: &[(Base, &str)] = &[
        (Base::BlueGreen, ""),
        (Base::BlueGreen, "release"),
        (Base::BlueGreen, "strategy"),
        (Base::BlueGreen, "strategy.blue_green"),
        (Base::BlueGreen, "strategy.blue_green.canary_match"),
        (Base::BlueGreen, "strategy.blue_green.canary_match.header"),
        (Base::BlueGreen, "probe"),
        (Base::BlueGreen, "analysis.health"),
        (Base::BlueGreen, "analysis.health.metrics[1]"),
        (Base::Canary, "strategy.canary"),
        (Base::Canary, "strategy.canary.steps[0]"),
        (Base::Canary, "strategy.canary.steps[1].pause"),
        (Base::Canary, "strategy.canary.steps[2].set_canary_scale"),
        (Base::Canary, "strategy.canary.steps[4].analysis"),
        (Base::Canary, "strategy.canary.canary_match.cookie"),
    ];
    for (which, at) in places {
        let key = if at.is_empty() {
            "typo".to_string()
        } else {
            format!("{at}.typo")
        };
        let mut doc = base(*which);
        edit(&mut doc, &key, Some("1"));
        for (format, result) in load_both(&doc) {
            let e = result.expect_err(&key);
            let (field, rule) = invalid(&e);
            assert_eq!(field, key, "{format}: {rule}");
            assert!(
                rule.contains("unknown field `typo`"),
                "{format} {key}: {rule}"
            );
            assert!(
                rule.contains(" at line "),
                "{format} {key}: no location in {rule}"
            );
        }
    }
}

#[test]
fn parse_errors_keep_line_and_column() {
    let e = RolloutSpec::from_yaml("service: web\nrelease: { version: v1, artifact: x }\nstrategy:\n  canary: { replicas: many }\n")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let (field, rule) = invalid(&e);
    assert_eq!(field, "strategy.canary.replicas");
    assert!(rule.contains("at line 4 column"), "{rule}");

    let e = RolloutSpec::from_toml("service = \"web\"\n[release]\nversion = \"v1\"\nartifact = \"x\"\n[strategy.canary]\nreplicas = \"many\"\n")
        .unwrap_err();
    let (field, rule) = invalid(&e);
    assert_eq!(field, "strategy.canary.replicas");
    assert!(rule.contains("at line 6 column 12"), "{rule}");

    // Syntax errors: YAML is parsed as it is read, so the error names the
    // field being read; TOML is parsed whole first, so it names the document.
    let (field, rule) = invalid(&RolloutSpec::from_yaml("service: \"web\n").unwrap_err());
    assert_eq!(field, "service", "{rule}");
    assert!(
        rule.contains("while scanning a quoted scalar at line 1 column 10"),
        "{rule}"
    );
    let (field, rule) = invalid(&RolloutSpec::from_toml("service = 'web\n").unwrap_err());
    assert_eq!(field, "document", "{rule}");
    assert!(rule.contains("at line 1 column"), "{rule}");
}

#[test]
fn deeply_nested_yaml_is_refused_before_parsing() {
    // libyaml needs most of a minute for this; the guard answers at once.
    let text = format!("service: {}", "[".repeat(100_000));
    let (field, rule) = invalid(&RolloutSpec::from_yaml(&text).unwrap_err());
    assert_eq!(field, "document");
    assert!(rule.contains("more than 256 deep"), "{rule}");
    // TOML's parser bounds its own recursion.
    let text = format!("service = {}", "[".repeat(100_000));
    let (field, rule) = invalid(&RolloutSpec::from_toml(&text).unwrap_err());
    assert_eq!(field, "document");
    assert!(rule.contains("recurs"), "{rule}");
}

#[test]
fn release_debug_output_hides_env_values() {
    let spec = RolloutSpec::from_yaml(
        "service: web\nrelease: { version: v1, artifact: x, env: { DB_PASSWORD: hunter2 } }\nstrategy: { blue_green: { replicas: 1 } }\n",
    )
    .unwrap();
    let shown = format!("{spec:?}");
    assert!(shown.contains("DB_PASSWORD"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("spec_files")
        .join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn files_are_read_by_extension() {
    let dir = scratch_dir("ext");
    let yaml = blue_green_text();
    for name in ["a.yaml", "b.yml", "c.YAML"] {
        let path = dir.join(name);
        std::fs::write(&path, &yaml).unwrap();
        assert_eq!(SpecFormat::of_path(&path).unwrap(), SpecFormat::Yaml);
        assert_eq!(spec::load(&path).unwrap().service.as_str(), "checkout");
    }
    let toml_path = dir.join("d.toml");
    std::fs::write(&toml_path, canary_text()).unwrap();
    assert_eq!(spec::load(&toml_path).unwrap().service.as_str(), "payments");

    // YAML content in a .toml file is parsed as TOML, and fails as TOML.
    let wrong = dir.join("e.toml");
    std::fs::write(&wrong, &yaml).unwrap();
    let (field, _) = invalid(&spec::load(&wrong).unwrap_err());
    assert_eq!(field, wrong.display().to_string());

    for name in ["spec.json", "spec", "spec.yaml.bak"] {
        let path = dir.join(name);
        std::fs::write(&path, &yaml).unwrap();
        let e = spec::load(&path).unwrap_err();
        let (field, rule) = invalid(&e);
        assert_eq!(field, path.display().to_string());
        assert!(rule.contains(".yaml, .yml or .toml"), "{rule}");
    }
}

#[test]
fn file_errors_name_the_file_and_the_field() {
    let dir = scratch_dir("errors");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        blue_green_text().replace("failure_threshold: 3", "failure_threshold: 0"),
    )
    .unwrap();
    let e = spec::load(&path).unwrap_err();
    let (field, rule) = invalid(&e);
    assert_eq!(
        field,
        format!("{}: probe.failure_threshold", path.display())
    );
    assert_eq!(rule, "must be at least 1");

    std::fs::write(
        &path,
        blue_green_text().replace("period: 2s", "periodd: 2s"),
    )
    .unwrap();
    let e = RolloutSpec::from_path(&path).unwrap_err();
    let (field, rule) = invalid(&e);
    assert_eq!(field, format!("{}: probe.periodd", path.display()));
    assert!(rule.contains("unknown field `periodd`"), "{rule}");

    let missing = dir.join("missing.yaml");
    assert_eq!(
        spec::load(&missing).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let binary = dir.join("binary.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let (field, rule) = invalid(&spec::load(&binary).unwrap_err());
    assert_eq!(field, binary.display().to_string());
    assert!(rule.contains("UTF-8"), "{rule}");

    // A directory with a spec-like name cannot be read.
    let as_dir = dir.join("dir.yaml");
    std::fs::create_dir_all(&as_dir).unwrap();
    assert_eq!(spec::load(&as_dir).unwrap_err().kind(), ErrorKind::Backend);
}

#[test]
fn limits_broken_in_a_file_name_the_file_and_the_field() {
    let dir = scratch_dir("limits");
    let cases = [
        (
            "replicas.toml",
            canary_text().replace("replicas = 10\n", "replicas = 50000\n"),
            "strategy.canary.replicas",
            format!("must be at most {}, got 50000", spec::MAX_REPLICAS),
        ),
        (
            "scale.toml",
            canary_text().replace(
                "set_canary_scale = { replicas = 2 }",
                "set_canary_scale = { replicas = 12 }",
            ),
            "strategy.canary.steps[2].set_canary_scale.replicas",
            "must be at most the strategy's replicas (10), got 12".to_string(),
        ),
        (
            "timeout.yaml",
            blue_green_text().replace("timeout: 500ms", "timeout: 5s"),
            "probe.timeout",
            "must not be longer than probe.period (2s), got 5s".to_string(),
        ),
    ];
    for (name, text, field, rule) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let e = spec::load(&path).unwrap_err();
        assert_eq!(
            invalid(&e),
            (format!("{}: {field}", path.display()), rule),
            "{name}"
        );
    }
}

/// The same limits hold for a rollout built in code: the engine's
/// validation refuses it before anything is deployed.
#[test]
fn limits_hold_for_rollouts_built_in_code() {
    assert_eq!(spec::MAX_REPLICAS, atlas_core::strategy::MAX_REPLICAS);
    let rollout = |strategy: Strategy| {
        Rollout::new(
            ServiceName::new("web").unwrap(),
            Release::new("v1", "web"),
            strategy,
        )
    };
    let over = spec::MAX_REPLICAS + 1;
    let ok = rollout(Strategy::BlueGreen(BlueGreen::new(spec::MAX_REPLICAS)));
    ok.validate().unwrap();

    let e = rollout(Strategy::BlueGreen(BlueGreen::new(over)))
        .validate()
        .unwrap_err();
    assert_eq!(
        invalid(&e),
        (
            "strategy.blue_green.replicas".to_string(),
            format!("must be at most 10000, got {over}")
        )
    );
    let mut b = BlueGreen::new(3);
    b.preview_replicas = Some(u32::MAX);
    let e = rollout(Strategy::BlueGreen(b)).validate().unwrap_err();
    assert_eq!(invalid(&e).0, "strategy.blue_green.preview_replicas");

    let e = rollout(Strategy::Canary(Canary::new(over, vec![])))
        .validate()
        .unwrap_err();
    assert_eq!(invalid(&e).0, "strategy.canary.replicas");

    let scaled = |n| {
        rollout(Strategy::Canary(Canary::new(
            4,
            vec![
                CanaryStep::SetWeight(w(10)),
                CanaryStep::SetCanaryScale(CanaryScale::Replicas(n)),
            ],
        )))
    };
    scaled(4).validate().unwrap();
    let e = scaled(5).validate().unwrap_err();
    assert_eq!(
        invalid(&e),
        (
            "strategy.canary.steps[1].set_canary_scale.replicas".to_string(),
            "must be at most the strategy's replicas (4), got 5".to_string()
        )
    );
}

#[test]
fn files_over_the_size_cap_are_refused() {
    let dir = scratch_dir("size");
    let base = blue_green_text();
    let at_cap = dir.join("at-cap.yaml");
    let pad = MAX_SPEC_FILE_BYTES as usize - base.len() - 1;
    std::fs::write(&at_cap, format!("{base}#{}", "x".repeat(pad))).unwrap();
    assert_eq!(
        std::fs::metadata(&at_cap).unwrap().len(),
        MAX_SPEC_FILE_BYTES
    );
    assert!(spec::load(&at_cap).is_ok());

    let over = dir.join("over.yaml");
    std::fs::write(&over, format!("{base}#{}", "x".repeat(pad + 1))).unwrap();
    let (field, rule) = invalid(&spec::load(&over).unwrap_err());
    assert_eq!(field, over.display().to_string());
    assert!(rule.contains("at most"), "{rule}");
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

fn via_yaml(r: &Rollout) -> Rollout {
    let text = RolloutSpec::from(r).to_yaml().unwrap();
    RolloutSpec::from_yaml(&text)
        .and_then(RolloutSpec::into_rollout)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn via_toml(r: &Rollout) -> Rollout {
    let text = RolloutSpec::from(r).to_toml().unwrap();
    RolloutSpec::from_toml(&text)
        .and_then(RolloutSpec::into_rollout)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn example_rollouts_survive_a_round_trip_in_both_formats() {
    for file in [BLUE_GREEN_FILE, CANARY_FILE] {
        let r = spec::load(file).unwrap();
        let once = via_yaml(&r);
        assert_eq!(once, r, "{file} via YAML");
        assert_eq!(via_yaml(&once), r, "{file} via YAML twice");
        assert_eq!(via_toml(&r), r, "{file} via TOML");
        assert_eq!(via_toml(&via_yaml(&r)), r, "{file} via YAML then TOML");
    }
}

#[test]
fn a_spec_written_from_a_rollout_states_every_default() {
    let r = spec::load(CANARY_FILE).unwrap();
    let yaml = RolloutSpec::from(&r).to_yaml().unwrap();
    for field in [
        "initial_delay: 0s",
        "success_threshold: 1",
        "consecutive_error_limit: 4",
        "progress_deadline: 15m",
        "on_inconclusive: abort",
        "- pause: {}",
        "- set_weight: 10",
        "match_traffic_weight: true",
    ] {
        assert!(yaml.contains(field), "{field} missing from\n{yaml}");
    }
}

fn duration_strategy(min: u64) -> impl Gen<Value = Duration> {
    prop_oneof![
        (min..=3_600u64).prop_map(Duration::from_secs),
        (min.max(1)..=365 * 86_400_000u64).prop_map(Duration::from_millis),
        (min..=365 * 86_400u64, 0u32..1_000_000_000)
            .prop_map(|(s, n)| Duration::new(s, n))
            .prop_filter("positive", move |d| min == 0 || !d.is_zero()),
    ]
}

fn condition_strategy() -> impl Gen<Value = Condition> {
    let op = prop::sample::select(vec![
        Comparison::Lt,
        Comparison::Le,
        Comparison::Gt,
        Comparison::Ge,
        Comparison::Eq,
        Comparison::Ne,
    ]);
    let threshold = prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        (0u32..10_000).prop_map(|n| f64::from(n) / 1000.0),
    ];
    (op, threshold).prop_map(|(op, t)| Condition::new(op, t).unwrap())
}

fn metric_strategy(args: Vec<String>) -> impl Gen<Value = AnalysisMetric> {
    let placeholder = prop::sample::select(
        [
            "service",
            "canary",
            "stable",
            "canary_version",
            "stable_version",
            "window",
        ]
        .into_iter()
        .map(String::from)
        .chain(args)
        .collect::<Vec<_>>(),
    );
    (
        "[a-z][a-z0-9-]{0,8}",
        ("[a-z_ ()\\[\\]=\"]{1,12}", placeholder),
        prop::option::of(duration_strategy(1)),
        duration_strategy(1),
        1u32..6,
        duration_strategy(0),
        (
            prop::option::of(condition_strategy()),
            prop::option::of(condition_strategy()),
        )
            .prop_filter("one condition", |(s, f)| s.is_some() || f.is_some()),
        (any::<u32>(), 0u32..5, 0u32..10),
    )
        .prop_map(
            |(name, (q, p), window, interval, count, initial_delay, (s, f), (fl, il, cel))| {
                let mut m = AnalysisMetric::new(name, format!("{q}{{{{{p}}}}}"));
                m.window = window;
                m.interval = interval;
                m.count = count;
                m.initial_delay = initial_delay;
                m.success_condition = s;
                m.failure_condition = f;
                m.failure_limit = fl;
                m.inconclusive_limit = il;
                m.consecutive_error_limit = cel;
                m
            },
        )
}

fn request_match_strategy() -> impl Gen<Value = Option<RequestMatch>> {
    prop::option::of(prop_oneof![
        ("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,10}", "[ -~]{0,10}")
            .prop_map(|(name, value)| RequestMatch::Header { name, value }),
        ("[a-zA-Z0-9_-]{1,10}", "[ -:<-~]{0,10}")
            .prop_map(|(name, value)| RequestMatch::Cookie { name, value }),
    ])
}

fn rollout_strategy() -> impl Gen<Value = Rollout> {
    let templates = prop::collection::btree_set("[a-z][a-z0-9-]{0,6}", 1..3);
    let args = prop::collection::btree_map("arg_[a-z]{1,4}", "[^\\x00]{0,12}", 0..3);
    (templates, args)
        .prop_flat_map(|(names, args)| {
            let names: Vec<String> = names.into_iter().collect();
            let keys: Vec<String> = args.keys().cloned().collect();
            let analysis = names
                .iter()
                .map(|n| {
                    let n = n.clone();
                    prop::collection::vec(metric_strategy(keys.clone()), 1..4).prop_map(move |ms| {
                        // Unique metric names, as the rules require.
                        let metrics = ms
                            .into_iter()
                            .enumerate()
                            .map(|(i, mut m)| {
                                m.name = format!("{}-{i}", m.name);
                                m
                            })
                            .collect();
                        AnalysisTemplate::new(n.clone(), metrics)
                    })
                })
                .collect::<Vec<_>>();
            let template = prop::sample::select(names.clone());
            let strategy = prop_oneof![
                blue_green_strategy(template.clone()),
                canary_strategy(template),
            ];
            let release = (
                "[a-zA-Z0-9._-]{1,10}",
                "[^\\x00]{1,20}".prop_filter("non-blank", |s| !s.trim().is_empty()),
                prop::collection::vec("[^\\x00]{0,10}", 0..3),
                prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,6}", "[^\\x00]{0,10}", 0..3),
            )
                .prop_filter("non-blank version", |(v, ..)| !v.trim().is_empty())
                .prop_map(|(version, artifact, args, env)| Release {
                    version,
                    artifact,
                    args,
                    env,
                });
            let probe = (
                duration_strategy(0),
                duration_strategy(1),
                duration_strategy(1),
                1u32..10,
                1u32..10,
            )
                .prop_map(|(initial_delay, period, timeout, s, f)| ProbePolicy {
                    initial_delay,
                    period,
                    // A timeout may not outlast the period.
                    timeout: timeout.min(period),
                    success_threshold: s,
                    failure_threshold: f,
                });
            (
                "[a-z]([a-z0-9-]{0,20}[a-z0-9])?",
                release,
                strategy,
                probe,
                analysis,
                duration_strategy(1),
                any::<bool>(),
                Just(args),
            )
        })
        .prop_map(
            |(service, release, strategy, probe, analysis, deadline, abort, args)| Rollout {
                service: ServiceName::new(service).unwrap(),
                release,
                strategy,
                probe,
                analysis: analysis.into_iter().map(|t| (t.name.clone(), t)).collect(),
                progress_deadline: deadline,
                on_inconclusive: if abort {
                    InconclusivePolicy::Abort
                } else {
                    InconclusivePolicy::Pause
                },
                args,
                autoscaling: None,
            },
        )
}

fn blue_green_strategy(template: impl Gen<Value = String> + Clone) -> impl Gen<Value = Strategy> {
    (
        1u32..20,
        prop::option::of(1u32..5),
        any::<bool>(),
        prop::collection::vec(0u8..=100, 0..5),
        prop::option::of(template.clone()),
        prop::option::of(template.clone()),
        prop::option::of(template),
        duration_strategy(0),
        request_match_strategy(),
    )
        .prop_map(
            |(replicas, preview, auto, mut steps, step_a, pre, post, delay, canary_match)| {
                steps.sort_unstable();
                steps.push(100);
                let mut b = BlueGreen::new(replicas);
                b.preview_replicas = preview;
                b.auto_promotion = auto;
                b.traffic_steps = steps.into_iter().map(w).collect();
                b.step_analysis = step_a;
                b.pre_promotion_analysis = pre;
                b.post_promotion_analysis = post;
                b.scale_down_delay = delay;
                b.canary_match = canary_match;
                Strategy::BlueGreen(b)
            },
        )
}

fn canary_strategy(template: impl Gen<Value = String>) -> impl Gen<Value = Strategy> {
    #[derive(Debug, Clone)]
    enum Raw {
        Weight(u8),
        Pause(Option<Duration>),
        Analysis(String),
        Scale(CanaryScale),
    }
    let raw = prop_oneof![
        (0u8..=100).prop_map(Raw::Weight),
        prop::option::of(duration_strategy(1)).prop_map(Raw::Pause),
        template.prop_map(Raw::Analysis),
        prop_oneof![
            (1u32..20).prop_map(CanaryScale::Replicas),
            (0u8..=100).prop_map(|p| CanaryScale::Weight(w(p))),
            Just(CanaryScale::MatchTrafficWeight),
        ]
        .prop_map(Raw::Scale),
    ];
    (
        1u32..30,
        prop::collection::vec(raw, 0..8),
        duration_strategy(0),
        request_match_strategy(),
    )
        .prop_map(|(replicas, raw, delay, canary_match)| {
            // Weights must not decrease: use the running maximum.
            let mut top = 0u8;
            let steps = raw
                .into_iter()
                .map(|r| match r {
                    Raw::Weight(p) => {
                        top = top.max(p);
                        CanaryStep::SetWeight(w(top))
                    }
                    Raw::Pause(d) => CanaryStep::Pause(d),
                    Raw::Analysis(t) => CanaryStep::Analysis(t),
                    // A canary scale may not exceed the strategy's replicas.
                    Raw::Scale(CanaryScale::Replicas(n)) => {
                        CanaryStep::SetCanaryScale(CanaryScale::Replicas(n.min(replicas)))
                    }
                    Raw::Scale(s) => CanaryStep::SetCanaryScale(s),
                })
                .collect();
            let mut c = Canary::new(replicas, steps);
            c.scale_down_delay = delay;
            c.canary_match = canary_match;
            Strategy::Canary(c)
        })
}

/// `cases` cases; failures print their seed instead of writing a
/// regression file (integration tests have no lib.rs to put it beside).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any valid rollout → spec → YAML/TOML → spec → rollout is identical.
    #[test]
    fn random_rollouts_round_trip(r in rollout_strategy()) {
        r.validate().unwrap();
        prop_assert_eq!(&via_yaml(&r), &r);
        prop_assert_eq!(&via_toml(&r), &r);
    }
}

// ---------------------------------------------------------------------------
// Fuzz: the loader never panics, and whatever it accepts round-trips
// ---------------------------------------------------------------------------

/// Loads `text` both ways. Panics propagate and fail the test; an accepted
/// spec must round-trip exactly.
fn load_anything(text: &str) -> Result<(), TestCaseError> {
    for parsed in [RolloutSpec::from_yaml(text), RolloutSpec::from_toml(text)] {
        match parsed.and_then(RolloutSpec::into_rollout) {
            Ok(r) => {
                prop_assert_eq!(&via_yaml(&r), &r);
                prop_assert_eq!(&via_toml(&r), &r);
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}", e);
            }
        }
    }
    Ok(())
}

const FIELD_NAMES: &[&str] = &[
    "service",
    "release",
    "version",
    "artifact",
    "args",
    "env",
    "strategy",
    "blue_green",
    "canary",
    "replicas",
    "preview_replicas",
    "auto_promotion",
    "traffic_steps",
    "step_analysis",
    "pre_promotion_analysis",
    "post_promotion_analysis",
    "scale_down_delay",
    "canary_match",
    "header",
    "cookie",
    "name",
    "value",
    "steps",
    "set_weight",
    "pause",
    "duration",
    "analysis",
    "template",
    "set_canary_scale",
    "weight",
    "match_traffic_weight",
    "probe",
    "initial_delay",
    "period",
    "timeout",
    "success_threshold",
    "failure_threshold",
    "metrics",
    "query",
    "window",
    "interval",
    "count",
    "success_condition",
    "failure_condition",
    "failure_limit",
    "inconclusive_limit",
    "consecutive_error_limit",
    "progress_deadline",
    "on_inconclusive",
    "health",
];

const INTERESTING: &[&str] = &[
    "",
    "0",
    "-1",
    "100",
    "101",
    "30s",
    "0s",
    "1h30m",
    "999999999999999h",
    "< 0.01",
    "<= 200ms",
    ">= 99%",
    "> lots",
    "==",
    "pause",
    "abort",
    "checkout",
    "{{service}}",
    "{{nope}}",
    "{{",
    "~",
    "null",
    "yes",
    "1e400",
    "NaN",
    "\u{0}",
    "é",
    "a\nb",
    "x-canary",
];

fn scalar() -> impl Gen<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(INTERESTING).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn key() -> impl Gen<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELD_NAMES).prop_map(String::from),
        1 => "[a-z_]{0,8}",
    ]
}

fn tree() -> impl Gen<Value = Value> {
    scalar().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Sequence),
            prop::collection::vec((key(), inner), 0..8).prop_map(|kv| {
                Value::Mapping(kv.into_iter().map(|(k, v)| (Value::String(k), v)).collect())
            }),
        ]
    })
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(items) => items.iter().map(count_nodes).sum(),
        Value::Mapping(m) => m.values().map(count_nodes).sum(),
        _ => 0,
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    RemoveChild(prop::sample::Index),
    AddEntry(String, Value),
}

fn mutation() -> impl Gen<Value = Mutation> {
    prop_oneof![
        2 => prop_oneof![scalar(), tree()].prop_map(Mutation::Replace),
        1 => any::<prop::sample::Index>().prop_map(Mutation::RemoveChild),
        1 => (key(), tree()).prop_map(|(k, v)| Mutation::AddEntry(k, v)),
    ]
}

fn apply(node: &mut Value, m: Mutation) {
    match m {
        Mutation::Replace(v) => *node = v,
        Mutation::RemoveChild(i) => match node {
            Value::Sequence(items) if !items.is_empty() => {
                items.remove(i.index(items.len()));
            }
            Value::Mapping(map) if !map.is_empty() => {
                let k = map.keys().nth(i.index(map.len())).cloned().unwrap();
                map.remove(&k);
            }
            other => *other = Value::Null,
        },
        Mutation::AddEntry(k, v) => match node {
            Value::Mapping(map) => {
                map.insert(Value::String(k), v);
            }
            Value::Sequence(items) => items.push(v),
            other => *other = v,
        },
    }
}

/// Applies `m` to the `n`th node of `v`, counting depth first from 0.
fn apply_at(v: &mut Value, n: &mut usize, m: &mut Option<Mutation>) {
    if *n == 0 {
        if let Some(m) = m.take() {
            apply(v, m);
        }
        return;
    }
    *n -= 1;
    let children: Vec<&mut Value> = match v {
        Value::Sequence(items) => items.iter_mut().collect(),
        Value::Mapping(map) => map.values_mut().collect(),
        _ => Vec::new(),
    };
    for child in children {
        if m.is_none() {
            return;
        }
        apply_at(child, n, m);
    }
}

fn mutated(base: Base, edits: Vec<(prop::sample::Index, Mutation)>) -> Value {
    let mut doc = self::base(base);
    for (at, m) in edits {
        let mut n = at.index(count_nodes(&doc));
        apply_at(&mut doc, &mut n, &mut Some(m));
    }
    doc
}

fn any_base() -> impl Gen<Value = Base> {
    prop_oneof![Just(Base::BlueGreen), Just(Base::Canary)]
}

/// Text edits: delete, insert or replace a run of characters.
fn text_edit(text: &str, at: prop::sample::Index, len: usize, insert: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = at.index(chars.len() + 1);
    let end = (start + len).min(chars.len());
    chars[..start]
        .iter()
        .chain(insert.chars().collect::<Vec<_>>().iter())
        .chain(chars[end..].iter())
        .collect()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fuzz_random_strings(text in prop_oneof![
        any::<String>(),
        "[a-z_:{}\\[\\]\\-,\n 0-9\"'#&*!|>%@`=.]{0,200}",
    ]) {
        load_anything(&text)?;
    }

    #[test]
    fn fuzz_random_yaml_and_toml_structures(
        top in prop::collection::vec((key(), tree()), 0..10),
        any_tree in tree(),
    ) {
        let doc = Value::Mapping(top.into_iter().map(|(k, v)| (Value::String(k), v)).collect());
        for v in [&doc, &any_tree] {
            load_anything(&serde_yaml_ng::to_string(v).unwrap())?;
            if let Some(toml) = to_toml_text(v) {
                load_anything(&toml)?;
            }
        }
    }

    #[test]
    fn fuzz_mutated_valid_specs(
        which in any_base(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), mutation()), 1..4),
    ) {
        let doc = mutated(which, edits);
        load_anything(&serde_yaml_ng::to_string(&doc).unwrap())?;
        if let Some(toml) = to_toml_text(&doc) {
            load_anything(&toml)?;
        }
    }

    #[test]
    fn fuzz_mutated_spec_text(
        which in any_base(),
        at in any::<prop::sample::Index>(),
        len in 0usize..12,
        insert in prop_oneof![
            Just(String::new()),
            prop::sample::select(INTERESTING).prop_map(String::from),
            ".{0,8}",
            "[\\[\\]{}:,\"' \n-]{1,4}",
        ],
    ) {
        let text = match which {
            Base::BlueGreen => blue_green_text(),
            Base::Canary => canary_text(),
        };
        load_anything(&text_edit(&text, at, len, &insert))?;
    }
}
