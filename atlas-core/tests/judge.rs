//! The statistical judge: Mann-Whitney U against SciPy's reference values,
//! then classification, Kayenta-style scoring and the judge as a provider.
//!
//! Reference values were computed with SciPy 1.17.1 (NumPy data generator
//! `np.random.default_rng(20240601)` for the two larger cases, rounded to 5
//! decimals and pasted below), each by
//! `scipy.stats.mannwhitneyu(x, y, alternative=ALT, method=METHOD, use_continuity=True)`
//! for ALT in `two-sided`, `greater`, `less` and METHOD in `exact`,
//! `asymptotic`, printing `statistic` and `pvalue`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::judge::{
    Alternative, CanaryJudge, Classification, Direction, JudgeConfig, JudgeMetric, MwuMethod,
    SampleProvider, Verdict, classify, mann_whitney_u, score,
};
use atlas_core::{ErrorKind, Measurement, MetricProvider, MetricQuery, Result};

const SMALL_X: [f64; 5] = [12.0, 15.0, 14.0, 18.0, 16.0];
const SMALL_Y: [f64; 4] = [10.0, 11.0, 9.0, 13.0];

const TIES_X: [f64; 8] = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 6.0];
const TIES_Y: [f64; 10] = [2.0, 3.0, 3.0, 4.0, 4.0, 7.0, 8.0, 9.0, 9.0, 10.0];

// rng.normal(0.100, 0.010, 30) and rng.normal(0.106, 0.010, 25), rounded.
const MEDIUM_X: [f64; 30] = [
    0.10648, 0.10469, 0.09357, 0.08822, 0.09855, 0.11203, 0.11334, 0.10908, 0.10347, 0.116,
    0.11233, 0.0978, 0.08938, 0.09635, 0.0958, 0.10688, 0.08101, 0.09809, 0.11671, 0.0908, 0.09242,
    0.09916, 0.08582, 0.0987, 0.09984, 0.09995, 0.09011, 0.09634, 0.10654, 0.09285,
];
const MEDIUM_Y: [f64; 25] = [
    0.11147, 0.11256, 0.09173, 0.09955, 0.11255, 0.11093, 0.10779, 0.10251, 0.10709, 0.12475,
    0.10379, 0.1118, 0.10183, 0.10402, 0.11248, 0.09671, 0.10358, 0.0999, 0.09741, 0.10776, 0.1184,
    0.10821, 0.10218, 0.09149, 0.11419,
];

// rng.lognormal(-2.0, 0.3, 3) and rng.lognormal(-2.3, 0.3, 60), rounded.
const UNEQUAL_X: [f64; 3] = [0.14416, 0.11198, 0.17525];
const UNEQUAL_Y: [f64; 60] = [
    0.16078, 0.06145, 0.11968, 0.12922, 0.11933, 0.16211, 0.12095, 0.07645, 0.3135, 0.10475,
    0.1564, 0.18084, 0.13061, 0.05846, 0.06013, 0.08182, 0.10129, 0.0661, 0.07569, 0.08773,
    0.08694, 0.1061, 0.10247, 0.0991, 0.0833, 0.0781, 0.05651, 0.14664, 0.10631, 0.11201, 0.05989,
    0.1256, 0.09765, 0.13406, 0.08161, 0.13527, 0.1544, 0.09529, 0.09151, 0.08891, 0.10442,
    0.22809, 0.09884, 0.12187, 0.06426, 0.04987, 0.10521, 0.09733, 0.14453, 0.04979, 0.11359,
    0.05925, 0.16989, 0.12596, 0.07478, 0.1248, 0.13098, 0.10387, 0.15932, 0.1343,
];

use Alternative::{Greater, Less, TwoSided};
use MwuMethod::{Asymptotic, Exact};

/// (x, y, alternative, method, SciPy's U, SciPy's p-value)
#[allow(clippy::type_complexity)]
fn scipy_cases() -> Vec<(
    &'static [f64],
    &'static [f64],
    Alternative,
    MwuMethod,
    f64,
    f64,
)> {
    vec![
        (
            &SMALL_X,
            &SMALL_Y,
            TwoSided,
            Exact,
            19.0,
            0.031746031746031744,
        ),
        (
            &SMALL_X,
            &SMALL_Y,
            TwoSided,
            Asymptotic,
            19.0,
            0.03733641592066288,
        ),
        (
            &SMALL_X,
            &SMALL_Y,
            Greater,
            Exact,
            19.0,
            0.015873015873015872,
        ),
        (
            &SMALL_X,
            &SMALL_Y,
            Greater,
            Asymptotic,
            19.0,
            0.01866820796033144,
        ),
        (&SMALL_X, &SMALL_Y, Less, Exact, 19.0, 0.9920634920634921),
        (
            &SMALL_X,
            &SMALL_Y,
            Less,
            Asymptotic,
            19.0,
            0.9900177733473919,
        ),
        (
            &TIES_X,
            &TIES_Y,
            TwoSided,
            Asymptotic,
            22.0,
            0.11728504065389572,
        ),
        (
            &TIES_X,
            &TIES_Y,
            Greater,
            Asymptotic,
            22.0,
            0.9511160872247197,
        ),
        (
            &TIES_X,
            &TIES_Y,
            Less,
            Asymptotic,
            22.0,
            0.05864252032694786,
        ),
        (
            &MEDIUM_X,
            &MEDIUM_Y,
            TwoSided,
            Exact,
            222.0,
            0.00916553373510454,
        ),
        (
            &MEDIUM_X,
            &MEDIUM_Y,
            TwoSided,
            Asymptotic,
            222.0,
            0.0099454412655302,
        ),
        (
            &MEDIUM_X,
            &MEDIUM_Y,
            Greater,
            Exact,
            222.0,
            0.9956498648308915,
        ),
        (
            &MEDIUM_X,
            &MEDIUM_Y,
            Greater,
            Asymptotic,
            222.0,
            0.9952652715338137,
        ),
        (
            &MEDIUM_X,
            &MEDIUM_Y,
            Less,
            Exact,
            222.0,
            0.00458276686755227,
        ),
        (
            &MEDIUM_X,
            &MEDIUM_Y,
            Less,
            Asymptotic,
            222.0,
            0.0049727206327651,
        ),
        (
            &UNEQUAL_X,
            &UNEQUAL_Y,
            TwoSided,
            Exact,
            140.0,
            0.1149303719372466,
        ),
        (
            &UNEQUAL_X,
            &UNEQUAL_Y,
            TwoSided,
            Asymptotic,
            140.0,
            0.1101307726153572,
        ),
        (
            &UNEQUAL_X,
            &UNEQUAL_Y,
            Greater,
            Exact,
            140.0,
            0.0574651859686233,
        ),
        (
            &UNEQUAL_X,
            &UNEQUAL_Y,
            Greater,
            Asymptotic,
            140.0,
            0.0550653863076786,
        ),
        (
            &UNEQUAL_X,
            &UNEQUAL_Y,
            Less,
            Exact,
            140.0,
            0.9464128327163759,
        ),
        (
            &UNEQUAL_X,
            &UNEQUAL_Y,
            Less,
            Asymptotic,
            140.0,
            0.9484366212423374,
        ),
    ]
}

#[test]
fn mann_whitney_matches_scipy() {
    for (x, y, alt, method, u, p) in scipy_cases() {
        let r = mann_whitney_u(x, y, alt, method).unwrap();
        let what = format!("n={}/{} {alt:?} {method:?}", x.len(), y.len());
        assert_eq!(r.u, u, "{what}: U");
        assert_eq!(r.method, method, "{what}");
        let rel = ((r.p_value - p) / p).abs();
        assert!(
            rel < 1e-9,
            "{what}: p {} vs SciPy {p} (rel {rel:e})",
            r.p_value
        );
    }
}

#[test]
fn auto_is_exact_without_ties_up_to_fifty_values() {
    let r = mann_whitney_u(&MEDIUM_X, &MEDIUM_Y, TwoSided, MwuMethod::Auto).unwrap();
    assert_eq!(r.method, Exact);
    assert!((r.p_value - 0.00916553373510454).abs() < 1e-12);
    let r = mann_whitney_u(&TIES_X, &TIES_Y, TwoSided, MwuMethod::Auto).unwrap();
    assert_eq!(r.method, Asymptotic);
    let r = mann_whitney_u(&UNEQUAL_X, &UNEQUAL_Y, Greater, MwuMethod::Auto).unwrap();
    assert_eq!(r.method, Asymptotic, "60 values is past the exact limit");
}

#[test]
fn bad_samples_are_refused() {
    let e = mann_whitney_u(&[], &[1.0], TwoSided, MwuMethod::Auto).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("invalid x"), "{e}");
    let e = mann_whitney_u(&[1.0], &[f64::NAN], TwoSided, MwuMethod::Auto).unwrap_err();
    assert!(e.to_string().contains("invalid y"), "{e}");
    let e = mann_whitney_u(&TIES_X, &TIES_Y, TwoSided, Exact).unwrap_err();
    assert!(e.to_string().contains("ties"), "{e}");
}

fn config(metrics: Vec<JudgeMetric>) -> JudgeConfig {
    JudgeConfig::new(metrics)
}

#[test]
fn classification_follows_direction_confidence_and_tolerance() {
    let c = config(vec![JudgeMetric::new("m", "c", "s")]);
    // MEDIUM_X (canary) is lower than MEDIUM_Y: p(less) = 0.0046.
    let lower_is_bad = JudgeMetric::new("m", "c", "s").direction(Direction::Decrease);
    let v = classify(&lower_is_bad, &MEDIUM_X, &MEDIUM_Y, &c).unwrap();
    assert_eq!(v.classification, Classification::Low);
    assert!((v.p_value.unwrap() - 0.00458276686755227).abs() < 1e-12);

    let higher_is_bad = JudgeMetric::new("m", "c", "s").direction(Direction::Increase);
    let v = classify(&higher_is_bad, &MEDIUM_X, &MEDIUM_Y, &c).unwrap();
    assert_eq!(
        v.classification,
        Classification::Pass,
        "a faster canary is fine"
    );

    let either = JudgeMetric::new("m", "c", "s").direction(Direction::Either);
    assert_eq!(
        classify(&either, &MEDIUM_X, &MEDIUM_Y, &c)
            .unwrap()
            .classification,
        Classification::Low
    );
    assert_eq!(
        classify(&either, &MEDIUM_Y, &MEDIUM_X, &c)
            .unwrap()
            .classification,
        Classification::High
    );

    // At 99.9 % confidence the same difference is not significant.
    let mut strict = c.clone();
    strict.confidence = 0.999;
    assert_eq!(
        classify(&either, &MEDIUM_X, &MEDIUM_Y, &strict)
            .unwrap()
            .classification,
        Classification::Pass
    );

    // Medians differ by about 6 %: a 10 % tolerance absorbs it.
    let tolerant = either.clone().tolerance(0.10);
    assert_eq!(
        classify(&tolerant, &MEDIUM_X, &MEDIUM_Y, &c)
            .unwrap()
            .classification,
        Classification::Pass
    );

    // Too few samples (NaN dropped first) is no data, not a pass.
    let v = classify(&either, &[1.0, f64::NAN, 2.0], &MEDIUM_Y, &c).unwrap();
    assert_eq!(v.classification, Classification::NoData);
    assert_eq!(v.canary_samples, 2);
}

fn verdict(
    name: &str,
    group: &str,
    critical: bool,
    cls: Classification,
) -> atlas_core::judge::MetricVerdict {
    atlas_core::judge::MetricVerdict {
        name: name.into(),
        group: group.into(),
        critical,
        classification: cls,
        p_value: None,
        canary_median: None,
        stable_median: None,
        canary_samples: 10,
        stable_samples: 10,
    }
}

fn metrics_for(groups: &[(&str, &str, bool)]) -> JudgeConfig {
    config(
        groups
            .iter()
            .map(|(n, g, crit)| {
                let m = JudgeMetric::new(*n, "c", "s").group(*g);
                if *crit { m.critical() } else { m }
            })
            .collect(),
    )
}

#[test]
fn scoring_weighs_groups_and_applies_thresholds() {
    use Classification::*;
    // latency: 1 of 2 passes (0.5); errors: 1 of 1 (1.0).
    let cfg = metrics_for(&[
        ("p95", "latency", false),
        ("p99", "latency", false),
        ("5xx", "errors", false),
    ]);
    let vs = || {
        vec![
            verdict("p95", "latency", false, Pass),
            verdict("p99", "latency", false, High),
            verdict("5xx", "errors", false, Pass),
        ]
    };
    let equal = score(&cfg, vs());
    assert_eq!(equal.score, 75.0);
    assert_eq!(equal.verdict, Verdict::Marginal);
    assert_eq!(equal.group_scores["latency"], 0.5);
    assert!(equal.reason.contains("p99 high"), "{}", equal.reason);

    let errors_matter = cfg.clone().weight("errors", 3.0);
    let r = score(&errors_matter, vs());
    assert_eq!(r.score, 87.5); // (0.5*1 + 1.0*3) / 4
    assert_eq!(r.verdict, Verdict::Marginal);

    let latency_matters = cfg.clone().weight("latency", 9.0);
    let r = score(&latency_matters, vs());
    assert_eq!(r.score, 55.0); // (0.5*9 + 1.0) / 10
    assert_eq!(r.verdict, Verdict::Fail);

    let all_pass = score(
        &cfg,
        vs().into_iter()
            .map(|mut v| {
                v.classification = Pass;
                v
            })
            .collect(),
    );
    assert_eq!((all_pass.score, all_pass.verdict), (100.0, Verdict::Pass));
}

#[test]
fn a_failed_critical_metric_fails_the_run() {
    use Classification::*;
    let cfg = metrics_for(&[
        ("a", "g", false),
        ("b", "g", false),
        ("c", "g", false),
        ("d", "g", false),
        ("crit", "g", true),
    ]);
    let mut vs: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| verdict(n, "g", false, Pass))
        .collect();
    vs.push(verdict("crit", "g", true, High));
    let r = score(&cfg, vs);
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(r.score, 0.0);
    assert!(
        r.reason.contains("critical metric failed: crit"),
        "{}",
        r.reason
    );
}

#[test]
fn half_the_metrics_without_data_fails_the_run() {
    use Classification::*;
    let cfg = metrics_for(&[
        ("a", "g", false),
        ("b", "g", false),
        ("c", "g", false),
        ("d", "g", false),
    ]);
    let half = vec![
        verdict("a", "g", false, Pass),
        verdict("b", "g", false, Pass),
        verdict("c", "g", false, NoData),
        verdict("d", "g", false, NoData),
    ];
    let r = score(&cfg, half);
    assert_eq!((r.score, r.verdict), (0.0, Verdict::Fail));
    assert!(
        r.reason.contains("2 of 4 metrics have no data"),
        "{}",
        r.reason
    );

    // One in four without data: left out of the score, which stays 100.
    let quarter = vec![
        verdict("a", "g", false, Pass),
        verdict("b", "g", false, Pass),
        verdict("c", "g", false, Pass),
        verdict("d", "g", false, NoData),
    ];
    let r = score(&cfg, quarter);
    assert_eq!((r.score, r.verdict), (100.0, Verdict::Pass));
}

#[test]
fn config_validation_names_the_field() {
    let ok = || config(vec![JudgeMetric::new("m", "c", "s")]);
    let cases: Vec<(JudgeConfig, &str)> = vec![
        (config(vec![]), "judge.metrics"),
        (
            config(vec![
                JudgeMetric::new("m", "c", "s"),
                JudgeMetric::new("m", "c", "s"),
            ]),
            "judge.metrics[1].name",
        ),
        (
            config(vec![JudgeMetric::new("m", " ", "s")]),
            "judge.metrics[0].canary_query",
        ),
        (
            config(vec![JudgeMetric::new("m", "c", "s").tolerance(-1.0)]),
            "judge.metrics[0].tolerance",
        ),
        (
            {
                let mut c = ok();
                c.confidence = 1.0;
                c
            },
            "judge.confidence",
        ),
        (
            {
                let mut c = ok();
                c.marginal_score = 96.0;
                c
            },
            "judge.marginal_score",
        ),
        (
            {
                let mut c = ok();
                c.pass_score = 101.0;
                c
            },
            "judge.pass_score",
        ),
        (ok().weight("nope", 1.0), "judge.group_weights.nope"),
        (ok().weight("default", 0.0), "judge.group_weights.default"),
        (
            {
                let mut c = ok();
                c.min_samples = 0;
                c
            },
            "judge.min_samples",
        ),
    ];
    for (cfg, field) in cases {
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(field), "{e} should name {field}");
    }
    ok().validate().unwrap();
    let parsed: JudgeConfig = serde_json::from_str(
        r#"{"metrics":[{"name":"p95","canary_query":"a","stable_query":"b","direction":"decrease","critical":true}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.confidence, 0.95);
    assert_eq!((parsed.pass_score, parsed.marginal_score), (95.0, 75.0));
    assert_eq!(parsed.metrics[0].direction, Direction::Decrease);
    assert_eq!(parsed.metrics[0].group, "default");
    assert!(serde_json::from_str::<JudgeConfig>(r#"{"metrics":[],"bogus":1}"#).is_err());
}

/// Answers by query text, and records what was asked.
struct Samples {
    by_query: BTreeMap<String, Vec<f64>>,
    asked: Mutex<Vec<(String, Duration)>>,
}

#[async_trait]
impl SampleProvider for Samples {
    async fn samples(&self, q: &MetricQuery) -> Result<Vec<f64>> {
        self.asked.lock().unwrap().push((q.query.clone(), q.window));
        Ok(self.by_query.get(&q.query).cloned().unwrap_or_default())
    }
}

#[tokio::test]
async fn the_judge_measures_its_score_for_analysis() {
    let samples = Samples {
        by_query: [
            ("lat{slot=\"green\"}".to_string(), MEDIUM_Y.to_vec()),
            ("lat{slot=\"blue\"}".to_string(), MEDIUM_X.to_vec()),
            ("err{slot=\"green\"}".to_string(), vec![0.0, 0.0, 0.0, 0.0]),
            ("err{slot=\"blue\"}".to_string(), vec![0.0, 0.0, 0.0, 0.0]),
        ]
        .into(),
        asked: Mutex::new(Vec::new()),
    };
    let cfg = config(vec![
        JudgeMetric::new(
            "latency",
            "lat{slot=\"{{canary}}\"}",
            "lat{slot=\"{{stable}}\"}",
        ),
        JudgeMetric::new(
            "errors",
            "err{slot=\"{{canary}}\"}",
            "err{slot=\"{{stable}}\"}",
        ),
    ]);
    let judge = CanaryJudge::new(cfg, samples).unwrap();
    let args: BTreeMap<String, String> = [
        ("canary".to_string(), "green".to_string()),
        ("stable".to_string(), "blue".to_string()),
    ]
    .into();
    let q = MetricQuery {
        metric: "judge".into(),
        query: "ignored".into(),
        window: Duration::from_secs(300),
        args: args.clone(),
    };
    // Green is slower than blue (p = 0.0046 < 0.05): latency fails, errors pass.
    assert_eq!(judge.measure(&q).await.unwrap(), Measurement::Value(50.0));
    let report = judge.judge(&args, Duration::from_secs(300)).await.unwrap();
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.metrics[0].classification, Classification::High);
    assert_eq!(
        report.metrics[1].classification,
        Classification::Pass,
        "all ties: p = 1"
    );
    let asked = judge.samples().asked.lock().unwrap().clone();
    assert!(asked.contains(&("lat{slot=\"green\"}".to_string(), Duration::from_secs(300))));

    // Routed beside a plain provider: the judge answers its query only.
    let plain = atlas_core::testing::ScriptedMetrics::new();
    plain.set_constant("error-rate", 0.002);
    let routed = judge.or_else(plain.clone());
    let mut judged = q.clone();
    judged.query = atlas_core::judge::JUDGE_QUERY.into();
    assert_eq!(
        routed.measure(&judged).await.unwrap(),
        Measurement::Value(50.0)
    );
    let mut other = q.clone();
    other.metric = "error-rate".into();
    other.query = "rate(errors[1m])".into();
    assert_eq!(
        routed.measure(&other).await.unwrap(),
        Measurement::Value(0.002)
    );
    assert_eq!(
        plain.queries().len(),
        1,
        "only the plain query reached the plain provider"
    );
    let judge = CanaryJudge::new(
        config(vec![JudgeMetric::new(
            "latency",
            "lat{slot=\"{{canary}}\"}",
            "lat{slot=\"{{stable}}\"}",
        )]),
        Samples {
            by_query: BTreeMap::new(),
            asked: Mutex::new(Vec::new()),
        },
    )
    .unwrap();

    let mut unknown = q.clone();
    unknown.args.remove("stable");
    let e = judge.measure(&unknown).await.unwrap_err();
    assert!(e.to_string().contains("stable"), "{e}");
}
