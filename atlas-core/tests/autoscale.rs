//! The autoscalers against worked cases derived from the Kubernetes HPA's
//! documented rules, their properties under random load, predictive scaling,
//! and the autoscaling section of spec files.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atlas_core::ErrorKind;
use atlas_core::autoscale::{
    Behavior, HorizontalAutoscaler, HorizontalPolicy, MetricObservation, MetricOutcome, MetricSpec,
    MetricTarget, PodState, RatePolicy, ScaleDecision, ScaleInput, ScaleReason, ScalingRules,
    SelectPolicy, metric_replicas,
};
use proptest::prelude::*;

const S: fn(u64) -> Duration = Duration::from_secs;

/// One per-pod case: `ready` pods reporting a value, `missing` ready pods
/// without one, `unready` pods; target an average of 60.
struct PodCase {
    name: &'static str,
    ready: &'static [f64],
    missing: usize,
    unready: usize,
    expect: u32,
}

fn pods_of(case: &PodCase) -> (Vec<PodState>, MetricObservation) {
    let mut pods = Vec::new();
    let mut values = BTreeMap::new();
    for (i, v) in case.ready.iter().enumerate() {
        pods.push(PodState::ready(format!("r{i}")));
        values.insert(format!("r{i}"), *v);
    }
    pods.extend((0..case.missing).map(|i| PodState::ready(format!("m{i}"))));
    pods.extend((0..case.unready).map(|i| PodState::not_ready(format!("u{i}"))));
    (pods, MetricObservation::PerPod(values))
}

#[test]
fn per_pod_metrics_follow_the_documented_rules() {
    let cases = [
        // desired = ceil(current/target × pods): 120/60 × 2 = 4.
        PodCase {
            name: "double",
            ready: &[120.0, 120.0],
            missing: 0,
            unready: 0,
            expect: 4,
        },
        PodCase {
            name: "halve",
            ready: &[30.0, 30.0, 30.0, 30.0],
            missing: 0,
            unready: 0,
            expect: 2,
        },
        // Within the 0.1 tolerance: no change (1.05 and 0.95).
        PodCase {
            name: "tolerance up",
            ready: &[63.0, 63.0, 63.0],
            missing: 0,
            unready: 0,
            expect: 3,
        },
        PodCase {
            name: "tolerance down",
            ready: &[57.0, 57.0, 57.0],
            missing: 0,
            unready: 0,
            expect: 3,
        },
        // Just past it: 67/60 × 3 = 3.35 → 4.
        PodCase {
            name: "past tolerance",
            ready: &[67.0, 67.0, 67.0],
            missing: 0,
            unready: 0,
            expect: 4,
        },
        // Scaling down with a missing pod: it counts as 100 % of target.
        // (30+30+30+60)/(4×60) = 0.625 → ceil(2.5) = 3, not ceil(0.5×3) = 2.
        PodCase {
            name: "missing on scale-down",
            ready: &[30.0, 30.0, 30.0],
            missing: 1,
            unready: 0,
            expect: 3,
        },
        // Scaling up with a missing pod: it counts as 0.
        // 360/240 = 1.5 → 6 (without it 2.0 × 3 = 6 too; use 4 ready).
        PodCase {
            name: "missing on scale-up",
            ready: &[120.0, 120.0, 120.0, 120.0],
            missing: 1,
            unready: 0,
            expect: 8,
        },
        // Not-ready pods count as 0 when scaling up: 360/(5×60) = 1.2 → 6.
        PodCase {
            name: "unready on scale-up",
            ready: &[120.0, 120.0, 120.0],
            missing: 0,
            unready: 2,
            expect: 6,
        },
        // Not-ready pods are ignored when scaling down: 0.5 × 3 → 2.
        PodCase {
            name: "unready on scale-down",
            ready: &[30.0, 30.0, 30.0],
            missing: 0,
            unready: 2,
            expect: 2,
        },
        // Filling in reverses the direction (140/300 < 1): no change.
        PodCase {
            name: "fill reverses",
            ready: &[70.0, 70.0],
            missing: 0,
            unready: 3,
            expect: 5,
        },
        // Filling in lands within the tolerance (280/300): no change.
        PodCase {
            name: "fill within tolerance",
            ready: &[70.0, 70.0, 70.0, 70.0],
            missing: 1,
            unready: 0,
            expect: 5,
        },
    ];
    for case in &cases {
        let (pods, observation) = pods_of(case);
        let current = pods.len() as u32;
        let metric = MetricSpec::pods_average("rps", 60.0);
        let got = metric_replicas(&metric, &observation, &pods, current, 0.1);
        assert_eq!(
            got.replicas(),
            Some(case.expect),
            "case {:?}: {got:?}",
            case.name
        );
    }
}

#[test]
fn resource_utilization_is_usage_over_requests() {
    // 4 pods requesting 0.5 cores, using 0.45: 90 % against 60 % → 1.5 × 4.
    let pods: Vec<_> = (0..4)
        .map(|i| PodState::ready(format!("p{i}")).with_request("cpu", 0.5))
        .collect();
    let metric = MetricSpec::resource_utilization("cpu", 60.0);
    let values = MetricObservation::per_pod((0..4).map(|i| (format!("p{i}"), 0.45)));
    let got = metric_replicas(&metric, &values, &pods, 4, 0.1);
    assert_eq!(got.replicas(), Some(6));
    // Unequal requests: the ratio is of the sums, (0.9 + 0.1)/(2 + 0.5) = 40 %
    // of request against 60 %: ratio 2/3 → ceil(1.33) = 2.
    let pods = vec![
        PodState::ready("a").with_request("cpu", 2.0),
        PodState::ready("b").with_request("cpu", 0.5),
    ];
    let values = MetricObservation::per_pod([("a", 0.9), ("b", 0.1)]);
    assert_eq!(
        metric_replicas(&metric, &values, &pods, 2, 0.1).replicas(),
        Some(2)
    );
    // A missing pod on scale-down counts as its request × the target.
    let pods = vec![
        PodState::ready("a").with_request("cpu", 1.0),
        PodState::ready("b").with_request("cpu", 1.0),
        PodState::ready("c").with_request("cpu", 1.0),
    ];
    let values = MetricObservation::per_pod([("a", 0.15), ("b", 0.15)]);
    // First ratio 0.25; filled (0.15+0.15+0.6)/1.8 = 0.5 → ceil(1.5) = 2.
    assert_eq!(
        metric_replicas(&metric, &values, &pods, 3, 0.1).replicas(),
        Some(2)
    );
    // A pod without a request makes utilization meaningless.
    let pods = vec![PodState::ready("a")];
    let values = MetricObservation::per_pod([("a", 0.15)]);
    let got = metric_replicas(&metric, &values, &pods, 1, 0.1);
    assert!(
        matches!(got.outcome, MetricOutcome::Invalid { ref reason } if reason.contains("no cpu request"))
    );
}

#[test]
fn object_and_external_metrics_use_value_or_average_value() {
    let pods: Vec<_> = (0..4).map(|i| PodState::ready(format!("p{i}"))).collect();
    let mut with_unready = pods.clone();
    with_unready.push(PodState::not_ready("late"));
    let cases = [
        // Value: ratio × ready pods. p95 0.3 s against 0.2 s: 1.5 × 4.
        (MetricSpec::object_value("p95", 0.2), 0.3, &pods, 4, 6),
        // Not-ready pods are not counted: still 1.5 × 4.
        (
            MetricSpec::object_value("p95", 0.2),
            0.3,
            &with_unready,
            5,
            6,
        ),
        // Within tolerance: current.
        (MetricSpec::object_value("p95", 0.2), 0.21, &pods, 4, 4),
        // Average value: ceil(total / target). 1000 / 100 = 10.
        (
            MetricSpec::external("queue", MetricTarget::AverageValue(100.0)),
            1000.0,
            &pods,
            4,
            10,
        ),
        // Average value within tolerance of the current count: 410/(100×4).
        (
            MetricSpec::external("queue", MetricTarget::AverageValue(100.0)),
            410.0,
            &pods,
            4,
            4,
        ),
        (
            MetricSpec::external("lag", MetricTarget::Value(50.0)),
            10.0,
            &pods,
            4,
            1,
        ),
    ];
    for (metric, value, pods, current, expect) in cases {
        let got = metric_replicas(
            &metric,
            &MetricObservation::Value(value),
            pods,
            current,
            0.1,
        );
        assert_eq!(got.replicas(), Some(expect), "{metric:?} at {value}");
    }
}

fn hpa(policy: HorizontalPolicy) -> HorizontalAutoscaler {
    HorizontalAutoscaler::new(policy).expect("valid policy")
}

/// An input of `current` ready pods at `per_pod` each.
fn load(current: u32, per_pod: f64) -> ScaleInput {
    let input = ScaleInput::with_ready_pods(current);
    let values = input
        .pods
        .iter()
        .map(|p| (p.name.clone(), per_pod))
        .collect();
    input.observe(MetricObservation::PerPod(values))
}

/// Asks for `recommend` replicas: per-pod load such that the metric asks
/// for exactly that many (target 100).
fn asking(current: u32, recommend: u32) -> ScaleInput {
    load(current, 100.0 * f64::from(recommend) / f64::from(current))
}

fn rps_policy() -> HorizontalPolicy {
    HorizontalPolicy::new(1, 1000, vec![MetricSpec::pods_average("rps", 100.0)])
}

fn step(h: &mut HorizontalAutoscaler, at: Instant, input: &ScaleInput) -> ScaleDecision {
    let d = h.recommend(at, input).expect("recommend");
    if d.changes() {
        h.record_scale(at, d.current_replicas, d.desired_replicas);
    }
    d
}

#[test]
fn default_behavior_scales_up_by_four_pods_or_double_per_15s() {
    let t0 = Instant::now();
    let mut h = hpa(rps_policy());
    // From 2: max(2 + 4, ceil(2 × 2)) = 6.
    let d = step(&mut h, t0, &asking(2, 50));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (6, ScaleReason::ScaleUpLimit)
    );
    // 10 s later the period still starts at 2: no more room.
    let d = step(&mut h, t0 + S(10), &asking(6, 50));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (6, ScaleReason::ScaleUpLimit)
    );
    // 16 s after the first change the period starts at 6: max(10, 12).
    let d = step(&mut h, t0 + S(16), &asking(6, 50));
    assert_eq!(d.desired_replicas, 12);
}

#[test]
fn select_policy_min_takes_the_smallest_change_and_disabled_none() {
    let t0 = Instant::now();
    let mut behavior = Behavior::default();
    behavior.scale_up.select = SelectPolicy::Min;
    let mut h = hpa(rps_policy().with_behavior(behavior.clone()));
    // From 10: min(10 + 4, 20) = 14.
    assert_eq!(step(&mut h, t0, &asking(10, 50)).desired_replicas, 14);
    behavior.scale_up.select = SelectPolicy::Disabled;
    behavior.scale_down.select = SelectPolicy::Disabled;
    behavior.scale_down.stabilization_window = Duration::ZERO;
    let mut h = hpa(rps_policy().with_behavior(behavior));
    assert_eq!(step(&mut h, t0, &asking(10, 50)).desired_replicas, 10);
    assert_eq!(step(&mut h, t0 + S(1), &asking(10, 2)).desired_replicas, 10);
}

#[test]
fn web_service_policy_doubles_per_15s_and_sheds_10_percent_per_minute() {
    let t0 = Instant::now();
    let policy = HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]);
    let mut h = hpa(policy.clone());
    let at_rps = |current: u32, total: f64| {
        let input = ScaleInput::with_ready_pods(current);
        let per = total / f64::from(current);
        let values = input.pods.iter().map(|p| (p.name.clone(), per)).collect();
        input.observe(MetricObservation::PerPod(values))
    };
    // 25 000 requests/s need 50 replicas; from 10 the first step is 20.
    let d = step(&mut h, t0, &at_rps(10, 25_000.0));
    assert_eq!((d.recommended_replicas, d.desired_replicas), (Some(50), 20));
    assert_eq!(
        step(&mut h, t0 + S(14), &at_rps(20, 25_000.0)).desired_replicas,
        20
    );
    assert_eq!(
        step(&mut h, t0 + S(16), &at_rps(20, 25_000.0)).desired_replicas,
        40
    );
    assert_eq!(
        step(&mut h, t0 + S(32), &at_rps(40, 25_000.0)).desired_replicas,
        50
    );

    // Scaling down, without the window to see the rate alone.
    let mut behavior = policy.behavior.clone();
    behavior.scale_down.stabilization_window = Duration::ZERO;
    let mut h = hpa(policy.with_behavior(behavior));
    let d = step(&mut h, t0, &at_rps(100, 1_000.0));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (90, ScaleReason::ScaleDownLimit)
    );
    // The period (60 s) still starts at 100: floor(90) = 90, no change.
    assert_eq!(
        step(&mut h, t0 + S(30), &at_rps(90, 1_000.0)).desired_replicas,
        90
    );
    assert_eq!(
        step(&mut h, t0 + S(61), &at_rps(90, 1_000.0)).desired_replicas,
        81
    );
    // Never below min (3).
    let mut h = hpa(HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]));
    let d = step(&mut h, t0, &at_rps(3, 10.0));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (3, ScaleReason::TooFewReplicas)
    );
}

#[test]
fn the_period_start_adds_back_removed_replicas() {
    let t0 = Instant::now();
    let mut behavior = Behavior::default();
    behavior.scale_down.stabilization_window = Duration::ZERO;
    behavior.scale_up.policies = vec![RatePolicy::percent(100, S(15))];
    let mut h = hpa(rps_policy().with_behavior(behavior));
    // 10 → 8 (asked for 8), then load jumps 5 s later: the period starts at
    // 8 − 0 + 2 = 10, so up to 20.
    assert_eq!(step(&mut h, t0, &asking(10, 8)).desired_replicas, 8);
    assert_eq!(
        step(&mut h, t0 + S(5), &asking(8, 100)).desired_replicas,
        20
    );
}

#[test]
fn scale_down_follows_the_highest_recommendation_in_its_window() {
    let t0 = Instant::now();
    let mut h = hpa(rps_policy());
    assert_eq!(step(&mut h, t0, &asking(10, 10)).desired_replicas, 10);
    let d = step(&mut h, t0 + S(60), &asking(10, 5));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (10, ScaleReason::ScaleDownStabilized)
    );
    // At 300 s the first recommendation is exactly at the window's edge,
    // which is outside it: 5 is the highest left.
    assert_eq!(
        step(&mut h, t0 + S(300), &asking(10, 5)).desired_replicas,
        5
    );
}

#[test]
fn scale_up_follows_the_lowest_recommendation_in_its_window() {
    let t0 = Instant::now();
    let mut behavior = Behavior::default();
    behavior.scale_up.stabilization_window = S(60);
    let mut h = hpa(rps_policy().with_behavior(behavior));
    assert_eq!(step(&mut h, t0, &asking(5, 5)).desired_replicas, 5);
    let d = step(&mut h, t0 + S(30), &asking(5, 8));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (5, ScaleReason::ScaleUpStabilized)
    );
    let d = step(&mut h, t0 + S(61), &asking(5, 8));
    assert_eq!(d.desired_replicas, 8);
}

#[test]
fn bounds_apply_before_anything_else() {
    let t0 = Instant::now();
    let policy = rps_policy().with_bounds(3, 10);
    let mut h = hpa(policy);
    let d = step(&mut h, t0, &asking(15, 15));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (10, ScaleReason::TooManyReplicas)
    );
    let d = step(&mut h, t0, &asking(1, 1));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (3, ScaleReason::TooFewReplicas)
    );
    // Within range, the metric's wish is capped at max.
    let d = step(&mut h, t0 + S(100), &asking(8, 40));
    assert_eq!(
        (d.desired_replicas, d.reason),
        (10, ScaleReason::TooManyReplicas)
    );
    // Scaled to zero by hand: autoscaling is off.
    let d = step(
        &mut h,
        t0,
        &ScaleInput::with_ready_pods(0).observe(MetricObservation::per_pod::<_, String>([])),
    );
    assert_eq!(
        (d.desired_replicas, d.reason),
        (0, ScaleReason::ScaledToZero)
    );
}

#[test]
fn the_largest_metric_wins_and_a_failed_metric_blocks_scale_down() {
    let t0 = Instant::now();
    let policy = HorizontalPolicy::new(
        1,
        100,
        vec![
            MetricSpec::pods_average("rps", 100.0),
            MetricSpec::object_value("p95", 0.2),
        ],
    );
    let mut h = hpa(policy);
    let input = asking(4, 6).observe(MetricObservation::Value(0.4));
    let d = step(&mut h, t0, &input);
    assert_eq!(d.recommended_replicas, Some(8));
    assert_eq!(d.desired_replicas, 8);
    // rps asks for fewer, p95 cannot be read: keep the count.
    let input = asking(8, 2).observe(MetricObservation::Unavailable("timeout".into()));
    let d = step(&mut h, t0 + S(400), &input);
    assert_eq!(
        (d.desired_replicas, d.reason),
        (8, ScaleReason::MetricsUnavailable)
    );
    // …but it may still scale up.
    let input = asking(8, 12).observe(MetricObservation::Unavailable("timeout".into()));
    assert_eq!(step(&mut h, t0 + S(401), &input).desired_replicas, 12);
    // Nothing readable: keep.
    let input = ScaleInput::with_ready_pods(12)
        .observe(MetricObservation::Unavailable("down".into()))
        .observe(MetricObservation::Value(f64::NAN));
    let d = step(&mut h, t0 + S(402), &input);
    assert_eq!(
        (d.desired_replicas, d.reason),
        (12, ScaleReason::MetricsUnavailable)
    );
}

#[test]
fn a_wrong_number_of_observations_is_refused() {
    let mut h = hpa(rps_policy());
    let err = h
        .recommend(Instant::now(), &ScaleInput::with_ready_pods(2))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().starts_with("invalid observations:"),
        "{err}"
    );
}

/// Bad policies: each a typed error naming its field.
#[test]
fn bad_policies_name_their_field() {
    let base = HorizontalPolicy::web_service;
    let mut zero_target = base();
    zero_target.metrics[2].target = MetricTarget::AverageValue(0.0);
    let mut negative_target = base();
    negative_target.metrics[0].target = MetricTarget::Utilization(-60.0);
    let mut nan_target = base();
    nan_target.metrics[3].target = MetricTarget::Value(f64::NAN);
    let mut zero_period = base();
    zero_period.behavior.scale_up.policies[0].period = Duration::ZERO;
    let mut long_period = base();
    long_period.behavior.scale_down.policies[0].period = S(1801);
    let mut long_window = base();
    long_window.behavior.scale_down.stabilization_window = S(3601);
    let mut no_policies = base();
    no_policies.behavior.scale_up = ScalingRules {
        stabilization_window: Duration::ZERO,
        select: SelectPolicy::Max,
        policies: vec![],
    };
    let mut wrong_kind = base();
    wrong_kind.metrics[2].target = MetricTarget::Utilization(50.0);
    let cases = [
        (base().with_bounds(5, 4), "min_replicas"),
        (base().with_bounds(0, 4), "min_replicas"),
        (base().with_bounds(1, 20_000), "max_replicas"),
        (base().with_tolerance(-0.1), "tolerance"),
        (base().with_metrics_named(&[]), "metrics"),
        (zero_target, "metrics[2].target"),
        (negative_target, "metrics[0].target"),
        (nan_target, "metrics[3].target"),
        (zero_period, "behavior.scale_up.policies[0].period"),
        (long_period, "behavior.scale_down.policies[0].period"),
        (long_window, "behavior.scale_down.stabilization_window"),
        (no_policies, "behavior.scale_up.policies"),
        (wrong_kind, "metrics[2].target"),
    ];
    for (policy, field) in cases {
        match HorizontalAutoscaler::new(policy) {
            Err(atlas_core::Error::InvalidInput { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected an error naming {field}, got {other:?}"),
        }
    }
    // The limits themselves are allowed.
    let mut edge = base();
    edge.behavior.scale_down.policies[0].period = S(1800);
    edge.behavior.scale_down.stabilization_window = S(3600);
    edge.validate()
        .expect("1800 s period and 3600 s window are allowed");
}

/// The spec policy's one limit per direction, checked from the replica
/// timeline: at every decision, the count is within what the policy allows
/// counting from the period's start.
fn check_rate(
    timeline: &[(u64, u32)],
    t: u64,
    current: u32,
    desired: u32,
    period: u64,
    up: bool,
) -> bool {
    // The count as of `t − period` (changes at or before that moment).
    let start = timeline
        .iter()
        .rev()
        .find(|(at, _)| t >= period && *at <= t - period)
        .map_or(timeline[0].1, |(_, n)| *n);
    if up {
        desired <= current.max((f64::from(start) * 2.0).ceil() as u32)
    } else {
        desired
            >= current
                .min((f64::from(start) * 0.9).floor() as u32)
                .max(3)
                .min(current)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn never_outside_bounds_nor_faster_than_the_policies(
        loads in prop::collection::vec(0.0f64..80_000.0, 1..80),
        gaps in prop::collection::vec(1u64..40, 80),
        start in 1u32..150,
    ) {
        let policy = HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]);
        let mut h = hpa(policy);
        let t0 = Instant::now();
        let mut t = 0u64;
        let mut current = start;
        let mut timeline = vec![(0u64, start)];
        for (i, total) in loads.iter().enumerate() {
            t += gaps[i];
            let input = ScaleInput::with_ready_pods(current);
            let per = total / f64::from(current);
            let values = input.pods.iter().map(|p| (p.name.clone(), per)).collect();
            let d = step(&mut h, t0 + S(t), &input.observe(MetricObservation::PerPod(values)));
            prop_assert!((3..=100).contains(&d.desired_replicas), "{d:?}");
            if (3..=100).contains(&current) {
                prop_assert!(check_rate(&timeline, t, current, d.desired_replicas, 15, true), "up too fast at {t}: {d:?} {timeline:?}");
                prop_assert!(check_rate(&timeline, t, current, d.desired_replicas, 60, false), "down too fast at {t}: {d:?} {timeline:?}");
            }
            if d.changes() {
                timeline.push((t, d.desired_replicas));
            }
            current = d.desired_replicas;
        }
    }

    #[test]
    fn more_load_never_means_fewer_replicas(
        history in prop::collection::vec((0.0f64..50_000.0, 1u64..60), 0..30),
        a in 0.0f64..60_000.0,
        b in 0.0f64..60_000.0,
        unready in 0usize..3,
    ) {
        let policy = HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]);
        let mut h = hpa(policy);
        let t0 = Instant::now();
        let mut t = 0;
        let mut current = 3u32;
        for (total, gap) in history {
            t += gap;
            let d = step(&mut h, t0 + S(t), &load(current, total / f64::from(current)));
            current = d.desired_replicas;
        }
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let with = |total: f64| {
            let mut input = load(current, total / f64::from(current));
            for i in 0..unready {
                input.pods.push(PodState::not_ready(format!("late-{i}")));
            }
            input
        };
        let at = t0 + S(t + 5);
        let d_lo = h.clone().recommend(at, &with(lo)).unwrap();
        let d_hi = h.clone().recommend(at, &with(hi)).unwrap();
        prop_assert!(d_lo.desired_replicas <= d_hi.desired_replicas, "{d_lo:?} vs {d_hi:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_are_read_through_any_provider() {
    use atlas_core::autoscale::observe::{observe_metric, observe_policy};
    use atlas_core::testing::{FaultError, ScriptedMetrics};

    let provider = ScriptedMetrics::new();
    let rps = MetricSpec::pods_average("rps", 100.0)
        .with_query("rate(requests{service=\"{{service}}\",pod=\"{{pod}}\"}[1m])");
    for (pod, v) in [("a", 150.0), ("b", 250.0)] {
        provider.set_query_series(
            "rps",
            format!("rate(requests{{service=\"web\",pod=\"{pod}\"}}[1m])"),
            [(Duration::ZERO, v)],
        );
    }
    provider.set_constant("p95", 0.3);
    let pods = vec![
        PodState::ready("a"),
        PodState::ready("b"),
        PodState::ready("c"),
    ];
    let args = BTreeMap::from([("service".to_string(), "web".to_string())]);
    let window = S(60);

    // Pod c has no data: missing, not zero.
    let observed = observe_metric(&provider, &rps, &pods, window, &args).await;
    assert_eq!(
        observed,
        MetricObservation::per_pod([("a", 150.0), ("b", 250.0)])
    );
    let queries = provider.queries();
    assert_eq!(queries.len(), 3);
    assert_eq!(
        queries[2].query.args.get("pod").map(String::as_str),
        Some("c")
    );

    // The whole policy, in order, and a decision from it: rps (150 + 250 +
    // 0 for the missing pod on a scale-up) = 400/300 → 4; p95 1.5 × 3 = 5.
    let policy = HorizontalPolicy::new(
        1,
        10,
        vec![rps.clone(), MetricSpec::object_value("p95", 0.2)],
    );
    let observations = observe_policy(&provider, &policy, &pods, window, &args).await;
    let input = ScaleInput {
        current_replicas: 3,
        pods: pods.clone(),
        observations,
    };
    let d = hpa(policy).recommend(Instant::now(), &input).unwrap();
    assert_eq!(
        d.proposals.iter().map(|p| p.replicas()).collect::<Vec<_>>(),
        vec![Some(4), Some(5)]
    );
    assert_eq!(d.desired_replicas, 5);

    // A failing query or an unknown argument makes the metric unavailable.
    provider.set_error("p95", FaultError::backend("prometheus down"));
    let observed = observe_metric(
        &provider,
        &MetricSpec::object_value("p95", 0.2),
        &pods,
        window,
        &args,
    )
    .await;
    assert!(
        matches!(observed, MetricObservation::Unavailable(ref r) if r.contains("prometheus down")),
        "{observed:?}"
    );
    let typo = MetricSpec::object_value("p95", 0.2).with_query("x{svc=\"{{servce}}\"}");
    let observed = observe_metric(&provider, &typo, &pods, window, &args).await;
    assert!(
        matches!(observed, MetricObservation::Unavailable(ref r) if r.contains("servce")),
        "{observed:?}"
    );
}

mod spec_files {
    use atlas_core::autoscale::{HorizontalPolicy, RatePolicy, SelectPolicy};
    use atlas_core::spec::RolloutSpec;
    use atlas_core::{BlueGreen, Release, Rollout, ServiceName, Strategy};
    use std::time::Duration;

    const HEAD: &str = "service: web\nrelease: { version: v1, artifact: ./web }\nstrategy: { blue_green: { replicas: 3 } }\n";

    fn load(autoscaling: &str) -> atlas_core::Result<Rollout> {
        RolloutSpec::from_yaml(&format!("{HEAD}autoscaling:\n{autoscaling}"))?.into_rollout()
    }

    fn field_of(autoscaling: &str) -> String {
        match load(autoscaling) {
            Err(atlas_core::Error::InvalidInput { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_policy_loads_from_yaml_with_kubernetes_defaults() {
        let rollout = load(
            "  min_replicas: 3\n  max_replicas: 100\n  metrics:\n    - { type: resource, name: cpu, utilization: 60 }\n    - { type: pods, name: rps, query: 'rate(x{pod=\"{{pod}}\"}[1m])', average_value: 500 }\n  behavior:\n    scale_down:\n      stabilization_window: 10m\n      select_policy: min\n      policies: [{ type: percent, value: 10, period: 1m }, { type: pods, value: 2, period: 30s }]\n",
        )
        .unwrap();
        let p = rollout.autoscaling.expect("policy");
        assert_eq!((p.min_replicas, p.max_replicas, p.tolerance), (3, 100, 0.1));
        assert_eq!(p.metrics[1].query, "rate(x{pod=\"{{pod}}\"}[1m])");
        assert_eq!(
            p.behavior.scale_up,
            atlas_core::autoscale::ScalingRules::default_scale_up()
        );
        assert_eq!(
            p.behavior.scale_down.stabilization_window,
            Duration::from_secs(600)
        );
        assert_eq!(p.behavior.scale_down.select, SelectPolicy::Min);
        assert_eq!(
            p.behavior.scale_down.policies,
            vec![
                RatePolicy::percent(10, Duration::from_secs(60)),
                RatePolicy::pods(2, Duration::from_secs(30))
            ]
        );
        // No section, no policy.
        let plain = RolloutSpec::from_yaml(HEAD)
            .unwrap()
            .into_rollout()
            .unwrap();
        assert_eq!(plain.autoscaling, None);
    }

    #[test]
    fn the_web_service_policy_round_trips_through_both_formats() {
        let rollout = Rollout::new(
            ServiceName::new("web").unwrap(),
            Release::new("v1", "./web"),
            Strategy::BlueGreen(BlueGreen::new(3)),
        )
        .with_autoscaling(HorizontalPolicy::web_service());
        let spec = RolloutSpec::from(&rollout);
        let yaml = spec.to_yaml().unwrap();
        assert_eq!(
            RolloutSpec::from_yaml(&yaml)
                .unwrap()
                .into_rollout()
                .unwrap(),
            rollout
        );
        let toml = spec.to_toml().unwrap();
        assert_eq!(
            RolloutSpec::from_toml(&toml)
                .unwrap()
                .into_rollout()
                .unwrap(),
            rollout
        );
    }

    #[test]
    fn bad_autoscaling_sections_name_their_field() {
        let m = "  metrics: [{ type: pods, name: rps, average_value: 500 }]\n";
        let cases = [
            (format!("  min_replicas: 5\n  max_replicas: 4\n{m}"), "autoscaling.min_replicas"),
            ("  max_replicas: 4\n  metrics: [{ type: pods, name: rps, average_value: 0 }]\n".to_string(), "autoscaling.metrics[0].average_value"),
            ("  max_replicas: 4\n  metrics: [{ type: resource, name: cpu, utilization: -60 }]\n".to_string(), "autoscaling.metrics[0].utilization"),
            ("  max_replicas: 4\n  metrics: [{ type: object, name: p95, value: -0.2 }]\n".to_string(), "autoscaling.metrics[0].value"),
            ("  max_replicas: 4\n  metrics: [{ type: pods, name: rps, value: 5 }]\n".to_string(), "autoscaling.metrics[0].value"),
            ("  max_replicas: 4\n  metrics: [{ type: pods, name: rps }]\n".to_string(), "autoscaling.metrics[0]"),
            (format!("  max_replicas: 4\n{m}  behavior: {{ scale_up: {{ policies: [{{ type: pods, value: 4, period: 0s }}] }} }}\n"), "autoscaling.behavior.scale_up.policies[0].period"),
            (format!("  max_replicas: 4\n{m}  behavior: {{ scale_down: {{ policies: [{{ type: percent, value: 10, period: 31m }}] }} }}\n"), "autoscaling.behavior.scale_down.policies[0].period"),
            (format!("  max_replicas: 4\n{m}  behavior: {{ scale_down: {{ stabilization_window: 61m }} }}\n"), "autoscaling.behavior.scale_down.stabilization_window"),
            (format!("  max_replicas: 4\n{m}  behavior: {{ scale_up: {{ policies: [{{ type: pods, value: 0, period: 15s }}] }} }}\n"), "autoscaling.behavior.scale_up.policies[0].value"),
            (format!("  max_replicas: 4\n{m}  behavior: {{ scale_up: {{ policies: [] }} }}\n"), "autoscaling.behavior.scale_up.policies"),
            (format!("  max_replicas: 4\n{m}  tolerance: 1.5\n"), "autoscaling.tolerance"),
            (format!("  max_replicas: 4\n{m}  stabilisation: 5m\n"), "autoscaling.stabilisation"),
            ("  max_replicas: 4\n  metrics: [{ type: pods, name: rps, average_value: -5, period: 1 }]\n".to_string(), "autoscaling.metrics[0].period"),
        ];
        for (section, field) in &cases {
            assert_eq!(&field_of(section), field, "for {section}");
        }
        // TOML spells the same fields.
        let toml = "service = \"web\"\nrelease = { version = \"v1\", artifact = \"./web\" }\n[strategy.blue_green]\nreplicas = 3\n[autoscaling]\nmax_replicas = 4\nmetrics = [{ type = \"pods\", name = \"rps\", average_value = 5.0 }]\n[autoscaling.behavior.scale_down]\nstabilization_window = \"2h\"\n";
        let err = RolloutSpec::from_toml(toml)
            .unwrap()
            .into_rollout()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid autoscaling.behavior.scale_down.stabilization_window: must be at most 3600s, got 7200s"
        );
    }
}

mod predictive {
    use super::*;
    use atlas_core::autoscale::{
        Forecaster, PredictiveAutoscaler, PredictivePolicy, SeasonalNaive,
    };

    /// A forecaster that always answers the same value, or fails.
    struct Fixed(Option<f64>);

    impl Forecaster for Fixed {
        fn forecast(&self, _: &[f64], horizon: usize) -> atlas_core::Result<Vec<f64>> {
            match self.0 {
                Some(v) => Ok(vec![v; horizon]),
                None => Err(atlas_core::Error::precondition("model did not converge")),
            }
        }
    }

    fn policy() -> PredictivePolicy {
        PredictivePolicy {
            step: S(60),
            startup: S(120),
            capacity_per_replica: 100.0,
            headroom: 1.0,
            min_history: 10,
            max_history: 100,
            refit_every: 1,
        }
    }

    fn predictive<F: Forecaster>(f: F) -> PredictiveAutoscaler<F> {
        PredictiveAutoscaler::new(hpa(rps_policy()), f, policy()).unwrap()
    }

    #[test]
    fn the_forecast_reads_start_up_time_plus_one_step_ahead() {
        assert_eq!(policy().lookahead(), 3);
        let p = PredictivePolicy {
            startup: S(61),
            ..policy()
        };
        assert_eq!(p.lookahead(), 3);
        let p = PredictivePolicy {
            startup: Duration::ZERO,
            ..policy()
        };
        assert_eq!(p.lookahead(), 1);
    }

    #[test]
    fn it_scales_ahead_of_a_seasonal_peak() {
        // A 10-sample season: quiet (200/s) except a peak of 1500/s at
        // positions 7 and 8.
        let season: Vec<f64> = (0..10)
            .map(|i| if (7..9).contains(&i) { 1500.0 } else { 200.0 })
            .collect();
        let mut p = predictive(SeasonalNaive { period: 10 });
        let t0 = Instant::now();
        // No history yet: reactive only.
        let d = p.recommend(t0, &asking(2, 2)).unwrap();
        assert_eq!(
            (d.predicted_replicas, d.decision.desired_replicas),
            (None, 2)
        );
        p.record_history(season.iter().copied()).unwrap();
        // Positions 0..=3 follow: the look-ahead (4, 5, 6) is quiet.
        p.record_history(season[..4].iter().copied()).unwrap();
        let d = p.recommend(t0 + S(60), &asking(2, 2)).unwrap();
        assert_eq!(
            (d.predicted_replicas, d.decision.desired_replicas),
            (Some(2), 2)
        );
        // After position 4, the look-ahead (5, 6, 7) holds the peak: 15
        // replicas asked while the live load still asks for 2; the rate
        // policy lets 2 become max(2 + 4, 4) = 6 now.
        p.record_load(season[4]).unwrap();
        let d = p.recommend(t0 + S(120), &asking(2, 2)).unwrap();
        assert_eq!(d.forecast_peak, Some(1500.0));
        assert_eq!(d.predicted_replicas, Some(15));
        assert_eq!(d.reactive_replicas, 2);
        assert_eq!(d.decision.desired_replicas, 6);
    }

    #[test]
    fn a_low_or_failing_forecast_never_goes_below_reactive() {
        let t0 = Instant::now();
        let mut low = predictive(Fixed(Some(0.0)));
        low.record_history(std::iter::repeat_n(800.0, 10)).unwrap();
        assert_eq!(low.predicted_replicas(), Some(0));
        let d = low.recommend(t0, &asking(4, 8)).unwrap();
        assert_eq!((d.reactive_replicas, d.decision.desired_replicas), (8, 8));

        let mut failing = predictive(Fixed(None));
        failing
            .record_history(std::iter::repeat_n(800.0, 10))
            .unwrap();
        assert_eq!(failing.predicted_replicas(), None);
        assert!(
            failing
                .last_forecast_error()
                .unwrap()
                .contains("did not converge")
        );
        let d = failing.recommend(t0, &asking(4, 8)).unwrap();
        assert_eq!(d.decision.desired_replicas, 8);
    }

    #[test]
    fn bad_loads_and_settings_are_refused_by_field() {
        let mut p = predictive(Fixed(Some(1.0)));
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            match p.record_load(bad) {
                Err(atlas_core::Error::InvalidInput { field, .. }) => assert_eq!(field, "load"),
                other => panic!("expected a load error, got {other:?}"),
            }
        }
        let cases = [
            (
                PredictivePolicy {
                    step: Duration::ZERO,
                    ..policy()
                },
                "step",
            ),
            (
                PredictivePolicy {
                    capacity_per_replica: 0.0,
                    ..policy()
                },
                "capacity_per_replica",
            ),
            (
                PredictivePolicy {
                    capacity_per_replica: -5.0,
                    ..policy()
                },
                "capacity_per_replica",
            ),
            (
                PredictivePolicy {
                    headroom: 0.5,
                    ..policy()
                },
                "headroom",
            ),
            (
                PredictivePolicy {
                    min_history: 0,
                    ..policy()
                },
                "min_history",
            ),
            (
                PredictivePolicy {
                    max_history: 5,
                    ..policy()
                },
                "max_history",
            ),
            (
                PredictivePolicy {
                    refit_every: 0,
                    ..policy()
                },
                "refit_every",
            ),
        ];
        for (settings, field) in cases {
            match PredictiveAutoscaler::new(hpa(rps_policy()), Fixed(None), settings) {
                Err(atlas_core::Error::InvalidInput { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected an error naming {field}, got {:?}", other.err()),
            }
        }
        assert!(SeasonalNaive { period: 0 }.forecast(&[1.0], 1).is_err());
        assert!(SeasonalNaive { period: 5 }.forecast(&[1.0], 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn predictive_is_never_below_reactive_nor_outside_bounds(
            loads in prop::collection::vec((0.0f64..5_000.0, 0.0f64..8_000.0), 1..60),
        ) {
            let web = HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]);
            let settings = PredictivePolicy { capacity_per_replica: 500.0, min_history: 1, ..policy() };
            // The forecast is each step's second number: right or wrong.
            let mut p = PredictiveAutoscaler::new(hpa(web), SeasonalNaive { period: 1 }, settings).unwrap();
            let t0 = Instant::now();
            let mut cur_p = 3u32;
            for (i, (live, forecast)) in loads.iter().enumerate() {
                let at = t0 + S(15 * i as u64);
                p.record_load(*forecast).unwrap();
                let input = load(cur_p, live / f64::from(cur_p));
                // The reactive autoscaler alone, in the same state.
                let alone = p.reactive().clone().recommend(at, &input).unwrap();
                // The forecast as a proposal already keeps the floor: the
                // decision is monotone in the proposals.
                let with_forecast = p
                    .reactive()
                    .clone()
                    .recommend_with_floor(at, &input, p.predicted_replicas())
                    .unwrap();
                prop_assert!(with_forecast.desired_replicas >= alone.desired_replicas);
                let d = p.recommend(at, &input).unwrap();
                prop_assert_eq!(d.reactive_replicas, alone.desired_replicas);
                prop_assert!(d.decision.desired_replicas >= alone.desired_replicas);
                prop_assert!((3..=100).contains(&d.decision.desired_replicas));
                if d.decision.changes() {
                    p.record_scale(at, cur_p, d.decision.desired_replicas);
                }
                cur_p = d.decision.desired_replicas;
            }
        }
    }
}

mod predictive_timing {
    use super::*;
    use atlas_core::autoscale::{Forecaster, PredictiveAutoscaler, PredictivePolicy};

    /// Forecasts 1000, 2000, 3000, … after any history.
    struct Ramp;

    impl Forecaster for Ramp {
        fn forecast(&self, _: &[f64], horizon: usize) -> atlas_core::Result<Vec<f64>> {
            Ok((1..=horizon).map(|k| 1000.0 * k as f64).collect())
        }
    }

    #[test]
    fn with_sample_times_the_forecast_is_read_over_the_start_up_time() {
        let settings = PredictivePolicy {
            step: S(600),
            startup: S(120),
            capacity_per_replica: 100.0,
            headroom: 1.0,
            min_history: 1,
            max_history: 10,
            refit_every: 1,
        };
        let mut p = PredictiveAutoscaler::new(hpa(rps_policy()), Ramp, settings).unwrap();
        let t0 = Instant::now();
        // Without a time: whole steps ahead (lookahead 2: 1000 and 2000).
        p.record_load(0.0).unwrap();
        assert_eq!(p.forecast_peak(), Some(2000.0));
        // Sample 0 at t0: at t0 + 300 s the series is 500 (half way to
        // 1000) and at + 420 s it is 700.
        p.record_load_at(t0, 0.0).unwrap();
        assert_eq!(p.forecast_peak_at(t0 + S(300)), Some(700.0));
        assert_eq!(p.predicted_replicas_at(t0 + S(300)), Some(7));
        // Across a sample: 540 s → 660 s spans the point 1000 at 600 s, and
        // ends at 1100.
        let peak = p.forecast_peak_at(t0 + S(540)).unwrap();
        assert!((peak - 1100.0).abs() < 1e-9, "{peak}");
        let d = p.recommend(t0 + S(300), &asking(4, 4)).unwrap();
        assert_eq!(d.predicted_replicas, Some(7));
        assert_eq!(d.decision.desired_replicas, 7);
    }
}

mod vertical {
    use super::*;
    use atlas_core::autoscale::{
        DecayingHistogram, ResourceRequirements, VerticalPolicy, VerticalRecommender,
    };

    const MIB: f64 = 1024.0 * 1024.0;

    fn minutes(t0: Instant, n: u64) -> impl Iterator<Item = Instant> {
        (0..n).map(move |m| t0 + S(60 * m))
    }

    #[test]
    fn histogram_percentiles_are_within_one_bucket() {
        let t0 = Instant::now();
        let mut h = DecayingHistogram::new(0.01, 1.05, 1000.0, S(86_400)).unwrap();
        assert_eq!(h.percentile(0.5), None);
        for i in 1..=1000 {
            h.add(f64::from(i) / 1000.0, 1.0, t0).unwrap();
        }
        for (p, want) in [(0.5, 0.5), (0.9, 0.9), (0.95, 0.95)] {
            let got = h.percentile(p).unwrap();
            assert!(got >= want && got <= want * 1.06, "p{p}: {got}");
        }
        assert!(h.add(-1.0, 1.0, t0).is_err());
        assert!(h.add(1.0, f64::NAN, t0).is_err());
        assert!(DecayingHistogram::new(0.01, 1.0, 10.0, S(1)).is_err());
    }

    #[test]
    fn old_samples_lose_half_their_weight_per_half_life() {
        let t0 = Instant::now();
        let mut h = DecayingHistogram::new(0.01, 1.05, 1000.0, S(86_400)).unwrap();
        // 1.0 core three days ago, weight 6; 0.1 core now, weight 1: the
        // old weight is 6/8 < 1, so the median is the recent value.
        h.add(1.0, 6.0, t0).unwrap();
        h.add(0.1, 1.0, t0 + S(3 * 86_400)).unwrap();
        assert!(h.percentile(0.5).unwrap() < 0.12);
        // Two days ago (6/4 > 1) it would still be the old one.
        let mut h = DecayingHistogram::new(0.01, 1.05, 1000.0, S(86_400)).unwrap();
        h.add(1.0, 6.0, t0).unwrap();
        h.add(0.1, 1.0, t0 + S(2 * 86_400)).unwrap();
        assert!(h.percentile(0.5).unwrap() > 0.99);
        // A year of hourly samples keeps finite weights.
        let mut h = DecayingHistogram::new(0.01, 1.05, 1000.0, S(3600)).unwrap();
        for hour in 0..(365 * 24) {
            h.add(0.5, 1.0, t0 + S(3600 * hour)).unwrap();
        }
        assert!(h.percentile(0.9).unwrap() > 0.49);
    }

    #[test]
    fn target_bounds_margin_and_confidence_follow_the_vpa_rules() {
        let t0 = Instant::now();
        let mut vpa = VerticalRecommender::new(VerticalPolicy::default()).unwrap();
        assert!(vpa.recommend().is_none());
        // Two days of one-minute samples, CPU constant at 0.5 cores.
        for at in minutes(t0, 2 * 1440 + 1) {
            vpa.add_cpu(at, 0.5).unwrap();
            vpa.add_memory(at, 600.0 * MIB).unwrap();
        }
        let r = vpa.recommend().unwrap();
        let c = r.confidence_days;
        assert!((c - 2.0).abs() < 0.01, "{c}");
        // Every percentile is the end of 0.5's bucket, b; target b × 1.15.
        let b = r.cpu.target / 1.15;
        assert!((0.5..0.5 * 1.06).contains(&b), "{b}");
        assert!((r.cpu.upper_bound - b * 1.15 * (1.0 + 1.0 / c)).abs() < 1e-9);
        assert!((r.cpu.lower_bound - b * 1.15 * (1.0 + 0.001 / c).powi(-2)).abs() < 1e-9);
        // With an hour of history the upper bound is ~25× wider.
        let mut young = VerticalRecommender::new(VerticalPolicy::default()).unwrap();
        for at in minutes(t0, 61) {
            young.add_cpu(at, 0.5).unwrap();
            young.add_memory(at, 600.0 * MIB).unwrap();
        }
        let y = young.recommend().unwrap();
        assert!(y.cpu.upper_bound > 20.0 * y.cpu.target, "{y:?}");
        assert!((y.cpu.target - r.cpu.target).abs() < 1e-12);
    }

    #[test]
    fn minimums_apply_and_an_oom_bumps_memory() {
        let t0 = Instant::now();
        let mut vpa = VerticalRecommender::new(VerticalPolicy::default()).unwrap();
        for at in minutes(t0, 600) {
            vpa.add_cpu(at, 0.001).unwrap();
            vpa.add_memory(at, 20.0 * MIB).unwrap();
        }
        let r = vpa.recommend().unwrap();
        assert_eq!(r.cpu.target, 0.025);
        assert_eq!(r.memory.target, 250.0 * MIB);

        let mut vpa = VerticalRecommender::new(VerticalPolicy::default()).unwrap();
        for at in minutes(t0, 600) {
            vpa.add_cpu(at, 0.2).unwrap();
            vpa.add_memory(at, 400e6).unwrap();
        }
        let before = vpa.recommend().unwrap().memory.target;
        // Killed at 400 MB: the day's peak becomes max(480, 500) MB.
        vpa.record_oom(t0 + S(601 * 60), 400e6).unwrap();
        let after = vpa.recommend().unwrap().memory.target;
        assert!(before < 400e6 * 1.15 * 1.06, "{before}");
        assert!(after >= 500e6 * 1.15, "{after}");
        // Usage large enough that the ratio matters: max(1.2 × 2 GB, +100 MB).
        vpa.record_oom(t0 + S(602 * 60), 2e9).unwrap();
        assert!(vpa.recommend().unwrap().memory.target >= 2.4e9 * 1.15);
    }

    #[test]
    fn requirements_keep_the_limit_to_request_ratio() {
        let t0 = Instant::now();
        let mut vpa = VerticalRecommender::new(VerticalPolicy::default()).unwrap();
        for at in minutes(t0, 1440) {
            vpa.add_cpu(at, 0.4).unwrap();
            vpa.add_memory(at, 512.0 * MIB).unwrap();
        }
        let r = vpa.recommend().unwrap();
        let current = ResourceRequirements {
            requests: [("cpu".to_string(), 1.0), ("memory".to_string(), 1e9)].into(),
            limits: [("cpu".to_string(), 2.0)].into(),
        };
        let out = r.requirements(&current);
        assert_eq!(out.requests["cpu"], r.cpu.target);
        assert_eq!(out.limits["cpu"], 2.0 * r.cpu.target);
        assert!(!out.limits.contains_key("memory"));
    }

    #[test]
    fn bad_samples_and_settings_name_their_field() {
        let t0 = Instant::now();
        let mut vpa = VerticalRecommender::new(VerticalPolicy::default()).unwrap();
        let field = |r: atlas_core::Result<()>| match r {
            Err(atlas_core::Error::InvalidInput { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        assert_eq!(field(vpa.add_cpu(t0, -0.1)), "cpu");
        assert_eq!(field(vpa.add_memory(t0, f64::NAN)), "memory");
        assert_eq!(field(vpa.record_oom(t0, -1.0)), "memory");
        let d = VerticalPolicy::default;
        let cases = [
            (
                VerticalPolicy {
                    half_life: Duration::ZERO,
                    ..d()
                },
                "half_life",
            ),
            (
                VerticalPolicy {
                    target_percentile: 1.5,
                    ..d()
                },
                "target_percentile",
            ),
            (
                VerticalPolicy {
                    lower_percentile: 0.95,
                    ..d()
                },
                "target_percentile",
            ),
            (
                VerticalPolicy {
                    safety_margin: -0.1,
                    ..d()
                },
                "safety_margin",
            ),
            (
                VerticalPolicy {
                    oom_bump_ratio: 0.9,
                    ..d()
                },
                "oom_bump_ratio",
            ),
            (
                VerticalPolicy {
                    memory_peak_interval: Duration::ZERO,
                    ..d()
                },
                "memory_peak_interval",
            ),
        ];
        for (policy, want) in cases {
            match VerticalRecommender::new(policy) {
                Err(atlas_core::Error::InvalidInput { field, .. }) => assert_eq!(field, want),
                other => panic!("expected {want}, got {:?}", other.err()),
            }
        }
    }
}
