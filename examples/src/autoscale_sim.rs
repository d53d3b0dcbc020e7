//! A trace simulator for autoscaling: replays a request-rate series through
//! an autoscaler with a replica start-up delay and a per-replica service
//! rate, and counts what it cost and how often the service was over target.
//!
//! Also the seeded generator of a diurnal week with random spikes, so the
//! benchmark has a trace anyone can regenerate bit for bit.

use std::time::{Duration, Instant};

use atlas_core::autoscale::{
    Forecaster, HorizontalAutoscaler, HorizontalPolicy, MetricObservation, PodState,
    PredictiveAutoscaler, PredictivePolicy, ScaleDecision, ScaleInput,
};

/// A request-rate series: `rates[i]` is the rate (requests/s) at `i × step`.
/// The first `history` points are the forecaster's history only: the
/// simulation scores from there on.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The interval between points.
    pub step: Duration,
    /// Requests per second at each point.
    pub rates: Vec<f64>,
    /// Points before the scored part.
    pub history: usize,
}

impl Trace {
    /// The rate at `t` after the first point, linear between points (the
    /// last point holds after the end).
    pub fn rate_at(&self, t: Duration) -> f64 {
        let x = t.as_secs_f64() / self.step.as_secs_f64();
        let i = x.floor() as usize;
        match (self.rates.get(i), self.rates.get(i + 1)) {
            (Some(a), Some(b)) => a + (b - a) * (x - x.floor()),
            (Some(a), None) => *a,
            _ => self.rates.last().copied().unwrap_or(0.0),
        }
    }

    /// A trace from a series in other units, scaled so its highest point
    /// is `peak` requests/s.
    pub fn scaled(step: Duration, values: &[f64], peak: f64, history: usize) -> Self {
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let k = if max > 0.0 { peak / max } else { 0.0 };
        Trace {
            step,
            rates: values.iter().map(|v| v * k).collect(),
            history,
        }
    }
}

/// SplitMix64: a tiny seeded generator, so the trace depends on the seed
/// alone and on no crate's version.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Settings of the diurnal generator.
#[derive(Debug, Clone)]
pub struct DiurnalSettings {
    /// Seed of every random choice.
    pub seed: u64,
    /// Weeks of history before the scored week.
    pub history_weeks: usize,
    /// Interval between points.
    pub step: Duration,
    /// A weekday's peak, requests/s (spikes come on top).
    pub peak: f64,
    /// Random spikes per day, on average.
    pub spikes_per_day: f64,
}

impl Default for DiurnalSettings {
    fn default() -> Self {
        DiurnalSettings {
            seed: 7,
            history_weeks: 3,
            step: Duration::from_secs(300),
            peak: 25_000.0,
            spikes_per_day: 2.0,
        }
    }
}

/// A diurnal request rate over `history_weeks` + 1 weeks: a night trough at
/// 15 % of the peak around 04:00, a morning ramp, a midday peak and a
/// smaller evening one; weekends at 70 %; slow day-to-day drift of ±5 %
/// and ±3 % noise per point; and random spikes (+30 % to +120 %, 10 to 40
/// minutes, a fast rise and a slower fall) at random times.
pub fn diurnal_weeks(s: &DiurnalSettings) -> Trace {
    let mut rng = SplitMix64::new(s.seed);
    let step = s.step.as_secs_f64();
    let per_day = (86_400.0 / step).round() as usize;
    let days = 7 * (s.history_weeks + 1);
    let n = per_day * days;
    // Day-level drift: a random walk kept within ±5 %.
    let mut drift = vec![1.0; days];
    for d in 1..days {
        drift[d] = (drift[d - 1] + (rng.next_f64() - 0.5) * 0.04).clamp(0.95, 1.05);
    }
    let mut rates: Vec<f64> = (0..n)
        .map(|i| {
            let day = i / per_day;
            let hour = (i % per_day) as f64 * step / 3600.0;
            // Two bumps over a floor: midday (13:00) and evening (20:00).
            let bump = |center: f64, width: f64| {
                let d = (hour - center).abs().min(24.0 - (hour - center).abs());
                (-(d * d) / (2.0 * width * width)).exp()
            };
            let shape = 0.15 + 0.85 * (bump(13.0, 3.5).max(0.8 * bump(20.0, 2.0)));
            let weekend = if day % 7 >= 5 { 0.7 } else { 1.0 };
            let noise = 1.0 + (rng.next_f64() - 0.5) * 0.06;
            s.peak * shape * weekend * drift[day] * noise
        })
        .collect();
    let spikes = (s.spikes_per_day * days as f64).round() as usize;
    for _ in 0..spikes {
        let start = (rng.next_f64() * n as f64) as usize;
        let size = 0.3 + rng.next_f64() * 0.9;
        let minutes = 10.0 + rng.next_f64() * 30.0;
        let len = ((minutes * 60.0 / step).ceil() as usize).max(1);
        let rise = (len / 4).max(1);
        for k in 0..len {
            let Some(r) = rates.get_mut(start + k) else {
                break;
            };
            let shape = if k < rise {
                (k + 1) as f64 / rise as f64
            } else {
                1.0 - (k - rise) as f64 / (len - rise) as f64
            };
            *r *= 1.0 + size * shape;
        }
    }
    Trace {
        step: s.step,
        rates,
        history: per_day * 7 * s.history_weeks,
    }
}

/// The simulated service.
#[derive(Debug, Clone)]
pub struct ServiceModel {
    /// Requests/s one replica completes at most (its service rate).
    pub service_rate: f64,
    /// Requests/s per replica above which a minute counts as over target.
    pub target_per_replica: f64,
    /// p95 latency above which a minute counts as over target, seconds.
    pub p95_target: f64,
    /// How long a new replica takes to become ready.
    pub startup: Duration,
    /// How often the autoscaler decides (Kubernetes' sync period).
    pub tick: Duration,
}

impl Default for ServiceModel {
    fn default() -> Self {
        ServiceModel {
            service_rate: 700.0,
            target_per_replica: 500.0,
            p95_target: 0.2,
            startup: Duration::from_secs(120),
            tick: Duration::from_secs(15),
        }
    }
}

impl ServiceModel {
    /// p95 latency of one replica as an M/M/1 queue: the sojourn time is
    /// exponential with rate μ − λ, so its 95th percentile is
    /// ln 20 / (μ − λ); 10 s when saturated.
    pub fn p95(&self, per_replica: f64) -> f64 {
        let spare = self.service_rate - per_replica;
        if spare <= 0.0 {
            10.0
        } else {
            (20.0f64.ln() / spare).min(10.0)
        }
    }
}

/// What a run cost and how it served.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SimReport {
    /// Σ replicas (ready or starting) × time, minutes.
    pub replica_minutes: f64,
    /// Time with requests/s per ready replica above target or modelled p95
    /// above target, minutes.
    pub minutes_over_target: f64,
    /// Decisions that changed the replica count.
    pub scaling_events: u32,
    /// The most replicas at once.
    pub peak_replicas: u32,
    /// The scored time, minutes.
    pub minutes: f64,
}

/// Either autoscaler, behind one call.
pub enum Autoscaler<F> {
    /// The reactive HPA alone.
    Reactive(HorizontalAutoscaler),
    /// The predictive autoscaler over it.
    Predictive(Box<PredictiveAutoscaler<F>>),
}

impl<F: Forecaster> Autoscaler<F> {
    fn decide(&mut self, now: Instant, input: &ScaleInput) -> atlas_core::Result<ScaleDecision> {
        match self {
            Autoscaler::Reactive(h) => h.recommend(now, input),
            Autoscaler::Predictive(p) => Ok(p.recommend(now, input)?.decision),
        }
    }

    fn record_scale(&mut self, now: Instant, from: u32, to: u32) {
        match self {
            Autoscaler::Reactive(h) => h.record_scale(now, from, to),
            Autoscaler::Predictive(p) => p.record_scale(now, from, to),
        }
    }

    fn sample(&mut self, at: Instant, load: f64) -> atlas_core::Result<()> {
        match self {
            Autoscaler::Reactive(_) => Ok(()),
            Autoscaler::Predictive(p) => p.record_load_at(at, load),
        }
    }
}

/// The horizontal policy both runs use: Atlas's web-service policy with
/// the two metrics the simulator models, requests/s per replica and p95.
pub fn simulated_policy() -> HorizontalPolicy {
    HorizontalPolicy::web_service()
        .with_metrics_named(&["requests_per_second", "p95_latency_seconds"])
}

/// A predictive autoscaler for `trace` over [`simulated_policy`].
///
/// # Errors
///
/// A policy that does not validate.
pub fn predictive<F: Forecaster>(
    trace: &Trace,
    model: &ServiceModel,
    forecaster: F,
    headroom: f64,
    refit_every: usize,
) -> atlas_core::Result<Autoscaler<F>> {
    let settings = PredictivePolicy {
        step: trace.step,
        startup: model.startup,
        capacity_per_replica: model.target_per_replica,
        headroom,
        min_history: trace.history.max(1),
        max_history: trace.history.max(1),
        refit_every,
    };
    let reactive = HorizontalAutoscaler::new(simulated_policy())?;
    Ok(Autoscaler::Predictive(Box::new(PredictiveAutoscaler::new(
        reactive, forecaster, settings,
    )?)))
}

/// Replays the scored part of `trace` through `autoscaler`.
///
/// The history points are fed first (to a predictive autoscaler). Each
/// tick, the ready replicas share the load evenly; replicas asked for
/// become ready after the start-up time; replicas removed go starting ones
/// first.
///
/// # Errors
///
/// An autoscaler error (none for a valid policy and well-formed input).
pub fn simulate<F: Forecaster>(
    trace: &Trace,
    model: &ServiceModel,
    mut autoscaler: Autoscaler<F>,
) -> atlas_core::Result<SimReport> {
    let t0 = Instant::now();
    let at = |t: Duration| t0 + t;
    let start = trace.step * trace.history as u32;
    for (i, rate) in trace.rates[..trace.history].iter().enumerate() {
        autoscaler.sample(at(trace.step * i as u32), *rate)?;
    }
    let end = trace.step * (trace.rates.len() as u32 - 1);
    let first = trace.rate_at(start);
    let initial = ((first / model.target_per_replica).ceil() as u32).clamp(3, 100);
    // Each replica: when it becomes ready.
    let mut replicas: Vec<Duration> = vec![start; initial as usize];
    let mut next_sample = trace.history;
    let mut report = SimReport::default();
    let tick_minutes = model.tick.as_secs_f64() / 60.0;
    let mut t = start;
    while t < end {
        while next_sample < trace.rates.len() && trace.step * next_sample as u32 <= t {
            autoscaler.sample(
                at(trace.step * next_sample as u32),
                trace.rates[next_sample],
            )?;
            next_sample += 1;
        }
        let load = trace.rate_at(t);
        let ready = replicas.iter().filter(|r| **r <= t).count();
        let per_replica = if ready == 0 {
            f64::INFINITY
        } else {
            load / ready as f64
        };
        let p95 = model.p95(per_replica);
        report.replica_minutes += replicas.len() as f64 * tick_minutes;
        if per_replica > model.target_per_replica || p95 > model.p95_target {
            report.minutes_over_target += tick_minutes;
        }
        let pods: Vec<PodState> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| PodState {
                ready: *r <= t,
                ..PodState::ready(format!("r{i}"))
            })
            .collect();
        let rps = pods
            .iter()
            .filter(|p| p.ready)
            .map(|p| (p.name.clone(), per_replica.min(1e9)));
        let input = ScaleInput {
            current_replicas: replicas.len() as u32,
            observations: vec![
                MetricObservation::per_pod(rps),
                MetricObservation::Value(p95),
            ],
            pods,
        };
        let d = autoscaler.decide(at(t), &input)?;
        if d.changes() {
            let (from, to) = (d.current_replicas, d.desired_replicas);
            if to > from {
                replicas.extend(std::iter::repeat_n(t + model.startup, (to - from) as usize));
            } else {
                // Starting replicas go first, then the newest ready ones.
                replicas.sort();
                replicas.truncate(to as usize);
            }
            autoscaler.record_scale(at(t), from, to);
            report.scaling_events += 1;
        }
        report.peak_replicas = report.peak_replicas.max(replicas.len() as u32);
        report.minutes += tick_minutes;
        t += model.tick;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas_core::autoscale::SeasonalNaive;

    #[test]
    fn the_generator_is_seeded_and_diurnal() {
        let s = DiurnalSettings::default();
        let a = diurnal_weeks(&s);
        assert_eq!(a.rates, diurnal_weeks(&s).rates);
        assert_ne!(
            a.rates,
            diurnal_weeks(&DiurnalSettings {
                seed: 8,
                ..s.clone()
            })
            .rates
        );
        assert_eq!(a.rates.len(), 4 * 7 * 288);
        assert_eq!(a.history, 3 * 7 * 288);
        // Night well below midday on a weekday (day 1).
        let at = |h: usize| a.rates[288 + h * 12];
        assert!(at(4) < 0.4 * at(13), "{} vs {}", at(4), at(13));
    }

    #[test]
    fn a_perfect_forecast_scales_ahead_and_the_reactive_floor_holds() {
        // A seasonal-naive forecast on a trace that repeats exactly is
        // perfect: predictive must be over target for less time.
        let s = DiurnalSettings {
            spikes_per_day: 0.0,
            history_weeks: 1,
            ..DiurnalSettings::default()
        };
        let mut trace = diurnal_weeks(&s);
        let week = 7 * 288;
        let first: Vec<f64> = trace.rates[..week].to_vec();
        trace.rates[week..].copy_from_slice(&first);
        let model = ServiceModel::default();
        let reactive = simulate(
            &trace,
            &model,
            Autoscaler::<SeasonalNaive>::Reactive(
                HorizontalAutoscaler::new(simulated_policy()).unwrap(),
            ),
        )
        .unwrap();
        let ahead = predictive(&trace, &model, SeasonalNaive { period: week }, 1.0, 1).unwrap();
        let predictive = simulate(&trace, &model, ahead).unwrap();
        assert!(reactive.minutes_over_target > 0.0, "{reactive:?}");
        assert!(
            predictive.minutes_over_target < reactive.minutes_over_target,
            "{predictive:?} vs {reactive:?}"
        );
        assert!((3..=100).contains(&predictive.peak_replicas));
    }
}
