//! Vertical recommendations in the manner of the Kubernetes VPA's
//! recommender: CPU and memory usage go into decaying histograms, and the
//! requests are read from their percentiles.
//!
//! - Histograms with exponentially growing buckets (each 5 % wider than the
//!   one before; the first 0.01 cores or 10 MB), whose samples lose half
//!   their weight every 24 hours.
//! - Target at the 90th percentile, lower bound at the 50th, upper bound at
//!   the 95th, each plus a 15 % safety margin, and at least 25 millicores
//!   and 250 MiB.
//! - With little history the bounds widen: the lower bound is multiplied by
//!   `(1 + 0.001/c)^-2` and the upper by `(1 + 1/c)`, where `c` is the
//!   history's length in days (or its sample count over 1,440, a day of
//!   one-minute samples, when that is smaller).
//! - Memory counts by its peak per 24-hour interval; CPU by every sample.
//! - An out-of-memory kill records a memory sample of `max(1.2 × usage,
//!   usage + 100 MB)`, so the next recommendation is above what killed it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of the recommender; [`Default`] holds the VPA's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalPolicy {
    /// How long a sample takes to lose half its weight. Default 24 h.
    pub half_life: Duration,
    /// Percentile of the target, 0–1. Default 0.9.
    pub target_percentile: f64,
    /// Percentile of the lower bound. Default 0.5.
    pub lower_percentile: f64,
    /// Percentile of the upper bound. Default 0.95.
    pub upper_percentile: f64,
    /// Added to every estimate, as a fraction. Default 0.15.
    pub safety_margin: f64,
    /// The smallest CPU recommendation, cores. Default 0.025.
    pub min_cpu: f64,
    /// The smallest memory recommendation, bytes. Default 250 MiB.
    pub min_memory: f64,
    /// Memory after an OOM kill is at least usage × this. Default 1.2.
    pub oom_bump_ratio: f64,
    /// … and at least usage + this many bytes. Default 100 MB.
    pub oom_min_bump: f64,
    /// Memory counts by its peak over each interval this long (usage
    /// between peaks does not matter for memory). Default 24 h.
    pub memory_peak_interval: Duration,
}

impl Default for VerticalPolicy {
    fn default() -> Self {
        VerticalPolicy {
            half_life: Duration::from_secs(24 * 3600),
            target_percentile: 0.9,
            lower_percentile: 0.5,
            upper_percentile: 0.95,
            safety_margin: 0.15,
            min_cpu: 0.025,
            min_memory: 250.0 * 1024.0 * 1024.0,
            oom_bump_ratio: 1.2,
            oom_min_bump: 100e6,
            memory_peak_interval: Duration::from_secs(24 * 3600),
        }
    }
}

impl VerticalPolicy {
    /// Checks every rule.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field: `half_life` (0), a
    /// percentile outside 0–1 or out of order, a negative `safety_margin`,
    /// minimum or bump, an `oom_bump_ratio` under 1.
    pub fn validate(&self) -> Result<()> {
        if self.half_life.is_zero() {
            return Err(Error::invalid("half_life", "must be greater than 0"));
        }
        if self.memory_peak_interval.is_zero() {
            return Err(Error::invalid(
                "memory_peak_interval",
                "must be greater than 0",
            ));
        }
        for (field, p) in [
            ("lower_percentile", self.lower_percentile),
            ("target_percentile", self.target_percentile),
            ("upper_percentile", self.upper_percentile),
        ] {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid(
                    field,
                    format!("must be above 0 and at most 1, got {p}"),
                ));
            }
        }
        if !(self.lower_percentile <= self.target_percentile
            && self.target_percentile <= self.upper_percentile)
        {
            return Err(Error::invalid(
                "target_percentile",
                "must lie between lower_percentile and upper_percentile",
            ));
        }
        for (field, v) in [
            ("safety_margin", self.safety_margin),
            ("min_cpu", self.min_cpu),
            ("min_memory", self.min_memory),
            ("oom_min_bump", self.oom_min_bump),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(
                    field,
                    format!("must be at least 0, got {v}"),
                ));
            }
        }
        if !self.oom_bump_ratio.is_finite() || self.oom_bump_ratio < 1.0 {
            return Err(Error::invalid(
                "oom_bump_ratio",
                format!("must be at least 1, got {}", self.oom_bump_ratio),
            ));
        }
        Ok(())
    }
}

/// A histogram whose buckets grow by a ratio and whose samples decay with a
/// half-life.
#[derive(Debug, Clone)]
pub struct DecayingHistogram {
    first_bucket: f64,
    ratio: f64,
    weights: Vec<f64>,
    half_life: Duration,
    /// Weights are stored relative to this time (a sample at `reference`
    /// has weight 1 × its own weight); moved forward when they grow large.
    reference: Option<Instant>,
}

/// Decay exponents beyond this move the reference, so weights stay finite.
const MAX_DECAY_EXPONENT: f64 = 100.0;

impl DecayingHistogram {
    /// Buckets `[0, first)`, `[first, first × (1 + ratio))`, … up to
    /// `max`, samples halving in weight every `half_life`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `first_bucket`, `ratio` or `max` when
    /// not positive (`ratio` above 1), or `half_life` when 0.
    pub fn new(first_bucket: f64, ratio: f64, max: f64, half_life: Duration) -> Result<Self> {
        if !(first_bucket.is_finite() && first_bucket > 0.0) {
            return Err(Error::invalid("first_bucket", "must be greater than 0"));
        }
        if !(ratio.is_finite() && ratio > 1.0) {
            return Err(Error::invalid("ratio", "must be greater than 1"));
        }
        if !(max.is_finite() && max > first_bucket) {
            return Err(Error::invalid("max", "must be greater than first_bucket"));
        }
        if half_life.is_zero() {
            return Err(Error::invalid("half_life", "must be greater than 0"));
        }
        // Bucket i starts at first × (ratio^i − 1)/(ratio − 1).
        let buckets =
            ((max * (ratio - 1.0) / first_bucket + 1.0).ln() / ratio.ln()).ceil() as usize + 1;
        Ok(DecayingHistogram {
            first_bucket,
            ratio,
            weights: vec![0.0; buckets],
            half_life,
            reference: None,
        })
    }

    /// Where bucket `i` starts.
    pub fn bucket_start(&self, i: usize) -> f64 {
        self.first_bucket * (self.ratio.powi(i as i32) - 1.0) / (self.ratio - 1.0)
    }

    fn bucket_of(&self, value: f64) -> usize {
        let i =
            ((value * (self.ratio - 1.0) / self.first_bucket + 1.0).ln() / self.ratio.ln()).floor();
        (i.max(0.0) as usize).min(self.weights.len() - 1)
    }

    /// Adds `value` with `weight` at `at`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `value` or `weight` when negative or
    /// not finite.
    pub fn add(&mut self, value: f64, weight: f64, at: Instant) -> Result<()> {
        if !value.is_finite() || value < 0.0 {
            return Err(Error::invalid(
                "value",
                format!("must be a number of at least 0, got {value}"),
            ));
        }
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::invalid(
                "weight",
                format!("must be a number of at least 0, got {weight}"),
            ));
        }
        let reference = *self.reference.get_or_insert(at);
        let mut exponent = self.exponent(reference, at);
        if exponent > MAX_DECAY_EXPONENT {
            // Rescale everything to `at` as the new reference.
            let factor = 2f64.powf(-exponent);
            self.weights.iter_mut().for_each(|w| *w *= factor);
            self.reference = Some(at);
            exponent = 0.0;
        }
        let bucket = self.bucket_of(value);
        self.weights[bucket] += weight * 2f64.powf(exponent);
        Ok(())
    }

    fn exponent(&self, reference: Instant, at: Instant) -> f64 {
        let half = self.half_life.as_secs_f64();
        if at >= reference {
            at.duration_since(reference).as_secs_f64() / half
        } else {
            -(reference.duration_since(at).as_secs_f64() / half)
        }
    }

    /// Whether nothing (of any weight) was added.
    pub fn is_empty(&self) -> bool {
        self.weights.iter().all(|w| *w <= 0.0)
    }

    /// The value below which `p` (0–1) of the weight lies: the end of the
    /// bucket where the cumulative weight reaches it. `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let total: f64 = self.weights.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let threshold = p.clamp(0.0, 1.0) * total;
        let mut sum = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            sum += w;
            if sum >= threshold && *w > 0.0 || sum >= total {
                return Some(self.bucket_start(i + 1));
            }
        }
        Some(self.bucket_start(self.weights.len()))
    }
}

/// One resource's recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResourceRecommendation {
    /// Below this, the workload is likely starved.
    pub lower_bound: f64,
    /// The request to set.
    pub target: f64,
    /// Above this, resources are likely wasted.
    pub upper_bound: f64,
}

/// CPU (cores) and memory (bytes) recommendations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VerticalRecommendation {
    /// CPU, in cores.
    pub cpu: ResourceRecommendation,
    /// Memory, in bytes.
    pub memory: ResourceRecommendation,
    /// How much history the bounds rest on, in days (see the module docs).
    pub confidence_days: f64,
}

/// Requests and limits by resource name (`cpu` in cores, `memory` in
/// bytes): what a Kubernetes container spec or a local replica applies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// Requests.
    pub requests: BTreeMap<String, f64>,
    /// Limits.
    pub limits: BTreeMap<String, f64>,
}

impl VerticalRecommendation {
    /// The targets as requests, with limits kept in the same proportion to
    /// the requests as `current` had (the VPA's behaviour); a resource
    /// without both a current request and limit gets no limit.
    pub fn requirements(&self, current: &ResourceRequirements) -> ResourceRequirements {
        let mut out = ResourceRequirements::default();
        for (name, target) in [("cpu", self.cpu.target), ("memory", self.memory.target)] {
            out.requests.insert(name.to_string(), target);
            if let (Some(req), Some(lim)) = (current.requests.get(name), current.limits.get(name))
                && *req > 0.0
            {
                out.limits.insert(name.to_string(), target * lim / req);
            }
        }
        out
    }
}

/// Samples minutes in a day: the unit of the sample-count confidence.
const SAMPLES_PER_DAY: f64 = 24.0 * 60.0;

/// Collects usage samples of one workload's containers and recommends
/// their CPU and memory requests.
///
/// ```
/// use std::time::{Duration, Instant};
/// use atlas_core::autoscale::VerticalRecommender;
///
/// let mut vpa = VerticalRecommender::new(Default::default())?;
/// let t0 = Instant::now();
/// for minute in 0..(3 * 24 * 60) {
///     let at = t0 + Duration::from_secs(60 * minute);
///     vpa.add_cpu(at, 0.2 + 0.1 * ((minute % 10) as f64 / 10.0))?;
///     vpa.add_memory(at, 300e6)?;
/// }
/// let r = vpa.recommend().expect("samples");
/// assert!(r.cpu.target > 0.29 && r.cpu.target < 0.4, "{r:?}");
/// assert!(r.cpu.lower_bound <= r.cpu.target && r.cpu.target <= r.cpu.upper_bound);
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VerticalRecommender {
    policy: VerticalPolicy,
    cpu: DecayingHistogram,
    /// Peaks of finished memory intervals.
    memory: DecayingHistogram,
    /// The current memory interval: its start, and its peak so far.
    memory_window: Option<(Instant, f64)>,
    first: Option<Instant>,
    last: Option<Instant>,
    samples: u64,
}

impl VerticalRecommender {
    /// A recommender with no samples.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field of `policy` that breaks a
    /// rule.
    pub fn new(policy: VerticalPolicy) -> Result<Self> {
        policy.validate()?;
        Ok(VerticalRecommender {
            cpu: DecayingHistogram::new(0.01, 1.05, 1000.0, policy.half_life)?,
            memory: DecayingHistogram::new(1e7, 1.05, 1e12, policy.half_life)?,
            memory_window: None,
            policy,
            first: None,
            last: None,
            samples: 0,
        })
    }

    fn seen(&mut self, at: Instant) {
        self.first = Some(self.first.map_or(at, |f| f.min(at)));
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
    }

    /// Adds a CPU usage sample, in cores.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `cpu`) for a negative or non-finite
    /// value.
    pub fn add_cpu(&mut self, at: Instant, cores: f64) -> Result<()> {
        self.cpu
            .add(cores, 1.0, at)
            .map_err(|_| usage_error("cpu", cores))?;
        self.seen(at);
        self.samples += 1;
        Ok(())
    }

    /// Adds a memory usage sample, in bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `memory`) for a negative or
    /// non-finite value.
    pub fn add_memory(&mut self, at: Instant, bytes: f64) -> Result<()> {
        if !bytes.is_finite() || bytes < 0.0 {
            return Err(usage_error("memory", bytes));
        }
        match &mut self.memory_window {
            Some((start, peak))
                if at.saturating_duration_since(*start) < self.policy.memory_peak_interval =>
            {
                *peak = peak.max(bytes);
            }
            Some((start, peak)) => {
                // The interval is over: its peak becomes a sample, dated at
                // its start.
                self.memory.add(*peak, 1.0, *start)?;
                self.memory_window = Some((at, bytes));
            }
            None => self.memory_window = Some((at, bytes)),
        }
        self.seen(at);
        Ok(())
    }

    /// Records an out-of-memory kill at `bytes` of usage: a memory sample
    /// of `max(bytes × oom_bump_ratio, bytes + oom_min_bump)`.
    ///
    /// # Errors
    ///
    /// As [`add_memory`](Self::add_memory).
    pub fn record_oom(&mut self, at: Instant, bytes: f64) -> Result<()> {
        if !bytes.is_finite() || bytes < 0.0 {
            return Err(usage_error("memory", bytes));
        }
        let bumped = (bytes * self.policy.oom_bump_ratio).max(bytes + self.policy.oom_min_bump);
        tracing::info!(bytes, bumped, "out-of-memory kill recorded");
        self.add_memory(at, bumped)
    }

    /// How much history the bounds rest on, in days: the shorter of the
    /// time covered and the CPU sample count over a day of one-minute
    /// samples.
    pub fn confidence_days(&self) -> f64 {
        let span = match (self.first, self.last) {
            (Some(f), Some(l)) => l.duration_since(f).as_secs_f64() / 86_400.0,
            _ => 0.0,
        };
        span.min(self.samples as f64 / SAMPLES_PER_DAY)
    }

    /// The recommendation, or `None` before any CPU and memory sample.
    pub fn recommend(&self) -> Option<VerticalRecommendation> {
        let p = &self.policy;
        let confidence = self.confidence_days();
        let estimate = |h: &DecayingHistogram, min: f64| -> Option<ResourceRecommendation> {
            let margin = 1.0 + p.safety_margin;
            let target = h.percentile(p.target_percentile)? * margin;
            let lower = h.percentile(p.lower_percentile)? * margin;
            let upper = h.percentile(p.upper_percentile)? * margin;
            // Infinity at zero confidence: no bound yet.
            let lower = if confidence > 0.0 {
                lower * (1.0 + 0.001 / confidence).powi(-2)
            } else {
                0.0
            };
            let upper = if confidence > 0.0 {
                upper * (1.0 + 1.0 / confidence)
            } else {
                f64::INFINITY
            };
            Some(ResourceRecommendation {
                lower_bound: lower.max(min),
                target: target.max(min),
                upper_bound: upper.max(min),
            })
        };
        // The current interval's peak counts as if it were finished.
        let mut memory = self.memory.clone();
        if let Some((start, peak)) = self.memory_window {
            memory.add(peak, 1.0, start).ok()?;
        }
        let r = VerticalRecommendation {
            cpu: estimate(&self.cpu, p.min_cpu)?,
            memory: estimate(&memory, p.min_memory)?,
            confidence_days: confidence,
        };
        tracing::debug!(?r, "vertical recommendation");
        Some(r)
    }
}

fn usage_error(field: &str, v: f64) -> Error {
    Error::invalid(
        field,
        format!("usage must be a number of at least 0, got {v}"),
    )
}
