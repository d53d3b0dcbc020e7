//! A statistical canary judge: the Mann-Whitney U test comparing canary and
//! stable samples per metric, and Kayenta-style scoring over weighted metric
//! groups.
//!
//! # The test
//!
//! [`mann_whitney_u`] compares two independent samples without assuming a
//! distribution. The statistic is `U` of the first sample (the canary):
//! the number of (canary, stable) pairs where the canary value is larger,
//! ties counting one half — as `scipy.stats.mannwhitneyu` reports it. The
//! p-value is computed, with [`MwuMethod::Auto`]:
//!
//! - **exactly**, from the permutation distribution of `U`, when there are
//!   no ties and both samples have at most [`EXACT_MAX_SAMPLES`] values;
//! - otherwise by the **normal approximation**, with the tie correction of
//!   the variance and a continuity correction of ½ — the same formulas as
//!   SciPy's `method="asymptotic"`.
//!
//! SciPy's own `"auto"` switches to the approximation at 8 values per
//! sample; Atlas keeps the exact distribution longer because it is cheap at
//! these sizes and the approximation is poor in the tails. Both methods can
//! be forced with [`MwuMethod::Exact`] and [`MwuMethod::Asymptotic`].
//!
//! # Classification and scoring
//!
//! Each [`JudgeMetric`] names the direction in which a change is bad
//! ([`Direction`]). Its canary and stable samples are compared with a
//! one-sided test in that direction (two-sided for [`Direction::Either`]),
//! at the configured confidence level (default 0.95). A significant
//! difference whose relative size (difference of medians over the stable
//! median) is also beyond the metric's `tolerance` makes the metric
//! [`Classification::High`] or [`Classification::Low`], which fails it;
//! fewer than `min_samples` values on either side make it
//! [`Classification::NoData`]; anything else passes.
//!
//! The score is 0–100: each group scores the share of its metrics with data
//! that passed, and groups are averaged by weight (groups with no metric
//! with data are left out). Then, in this order:
//!
//! 1. if half or more of all metrics have no data, the run **fails** with
//!    score 0;
//! 2. if a metric marked `critical` failed, the run **fails** with score 0;
//! 3. otherwise the score decides: at least `pass_score` (default 95)
//!    passes, at least `marginal_score` (default 75) is marginal, less fails.
//!
//! # Plugging into analysis
//!
//! [`CanaryJudge`] implements [`MetricProvider`]: it measures the *score*.
//! Put it behind an analysis metric with `success_condition: ">= 95"` and
//! `failure_condition: "< 75"`, and Argo's table turns a pass into success,
//! a fail into failure and a marginal score into inconclusive. Samples come
//! from any [`SampleProvider`] (e.g. `atlas-metrics`' Prometheus provider,
//! through range queries). The engine takes one provider: with
//! [`CanaryJudge::or_else`], metrics whose query is [`JUDGE_QUERY`] get the
//! score and all others go to the usual provider.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::analysis::render_query;
use crate::error::{Error, Result};
use crate::metrics::{Measurement, MetricProvider, MetricQuery};

/// Up to this many values per sample (and no ties), [`MwuMethod::Auto`]
/// computes the exact p-value.
pub const EXACT_MAX_SAMPLES: usize = 50;

/// Which alternative hypothesis a test checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    /// The first sample tends to be larger or smaller than the second.
    TwoSided,
    /// The first sample tends to be larger.
    Greater,
    /// The first sample tends to be smaller.
    Less,
}

/// How the p-value of [`mann_whitney_u`] is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MwuMethod {
    /// Exact without ties and up to [`EXACT_MAX_SAMPLES`] values per
    /// sample, asymptotic otherwise (the default).
    #[default]
    Auto,
    /// The exact permutation distribution; refused when there are ties.
    Exact,
    /// The normal approximation with tie and continuity corrections.
    Asymptotic,
}

/// The result of [`mann_whitney_u`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// `U` of the first sample.
    pub u: f64,
    /// The p-value for the alternative tested.
    pub p_value: f64,
    /// Which method computed it (never `Auto`).
    pub method: MwuMethod,
}

/// The Mann-Whitney U test of `x` against `y` (see the module docs).
///
/// ```
/// use atlas_core::judge::{mann_whitney_u, Alternative, MwuMethod};
/// let canary = [12.0, 15.0, 14.0, 18.0, 16.0];
/// let stable = [10.0, 11.0, 9.0, 13.0];
/// let r = mann_whitney_u(&canary, &stable, Alternative::Greater, MwuMethod::Auto)?;
/// assert_eq!(r.u, 19.0);
/// assert!(r.p_value < 0.05);
/// # Ok::<(), atlas_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] on `x` or `y` when a sample is empty or holds a
/// NaN or infinite value, and on `method` when `Exact` is asked for samples
/// with ties.
pub fn mann_whitney_u(
    x: &[f64],
    y: &[f64],
    alternative: Alternative,
    method: MwuMethod,
) -> Result<MannWhitney> {
    for (name, s) in [("x", x), ("y", y)] {
        if s.is_empty() {
            return Err(Error::invalid(name, "the sample must not be empty"));
        }
        if s.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                name,
                "the sample must hold only finite numbers",
            ));
        }
    }
    let (n1, n2) = (x.len(), y.len());
    let (ranks, ties) = rank(x, y);
    let r1: f64 = ranks[..n1].iter().sum();
    let n1f = n1 as f64;
    let u1 = r1 - n1f * (n1f + 1.0) / 2.0;
    let u2 = n1f * n2 as f64 - u1;
    let has_ties = ties.iter().any(|&t| t > 1);
    let method = match method {
        MwuMethod::Auto if !has_ties && n1 <= EXACT_MAX_SAMPLES && n2 <= EXACT_MAX_SAMPLES => {
            MwuMethod::Exact
        }
        MwuMethod::Auto => MwuMethod::Asymptotic,
        MwuMethod::Exact if has_ties => {
            return Err(Error::invalid(
                "method",
                "the exact method needs samples without ties",
            ));
        }
        m => m,
    };
    // The statistic whose upper tail is tested, and the two-sided factor.
    let (u, factor) = match alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let one_sided = match method {
        MwuMethod::Exact => exact_upper_tail(u, n1, n2),
        _ => asymptotic_upper_tail(u, n1, n2, &ties),
    };
    Ok(MannWhitney {
        u: u1,
        p_value: (one_sided * factor).clamp(0.0, 1.0),
        method,
    })
}

/// Average ranks (1-based) of `x` then `y` in their union, and the sizes of
/// each group of tied values.
fn rank(x: &[f64], y: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut all: Vec<(f64, usize)> = x.iter().chain(y).copied().zip(0..).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ranks = vec![0.0; all.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let mut j = i + 1;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        // Positions i..j (0-based) share the mean of ranks i+1..=j.
        let avg = (i + 1 + j) as f64 / 2.0;
        for item in &all[i..j] {
            ranks[item.1] = avg;
        }
        ties.push(j - i);
        i = j;
    }
    (ranks, ties)
}

/// P(U >= u) under the null, by the normal approximation with the tie
/// correction of the variance and a continuity correction of ½.
fn asymptotic_upper_tail(u: f64, n1: usize, n2: usize, ties: &[usize]) -> f64 {
    let (n1, n2) = (n1 as f64, n2 as f64);
    let n = n1 + n2;
    let mu = n1 * n2 / 2.0;
    let tie_term: f64 = ties.iter().map(|&t| (t as f64).powi(3) - t as f64).sum();
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 || !variance.is_finite() {
        // Every value tied: no evidence of any difference.
        return 1.0;
    }
    let z = (u - mu - 0.5) / variance.sqrt();
    normal_sf(z)
}

/// The standard normal survival function, via `erfc` for accuracy in the
/// far tail.
fn normal_sf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(z / std::f64::consts::SQRT_2)
}

/// P(U >= u) under the null, from the exact distribution of `U` for
/// samples of `n1` and `n2` distinct values.
fn exact_upper_tail(u: f64, n1: usize, n2: usize) -> f64 {
    let counts = u_distribution(n1, n2);
    let total: f64 = counts.iter().sum();
    // Without ties U is a whole number; `ceil` guards float dust.
    let from = u.ceil().max(0.0) as usize;
    let upper: f64 = counts.iter().skip(from).sum();
    upper / total
}

/// How many of the C(n1+n2, n1) arrangements give each `U` from 0 to
/// `n1*n2`, by the recurrence f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u).
fn u_distribution(n1: usize, n2: usize) -> Vec<f64> {
    // prev[j] holds f(m-1, j, ·); cur[j] holds f(m, j, ·).
    let mut prev: Vec<Vec<f64>> = (0..=n2).map(|_| vec![1.0]).collect();
    for m in 1..=n1 {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n2 + 1);
        cur.push(vec![1.0]);
        for n in 1..=n2 {
            let mut f = vec![0.0; m * n + 1];
            for (u, c) in prev[n].iter().enumerate() {
                f[u + n] += c;
            }
            for (u, c) in cur[n - 1].iter().enumerate() {
                f[u] += c;
            }
            cur.push(f);
        }
        prev = cur;
    }
    prev.swap_remove(n2)
}

/// Which change in a metric is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A higher canary is bad (latency, errors, CPU). The default.
    #[default]
    Increase,
    /// A lower canary is bad (throughput, success rate).
    Decrease,
    /// Any significant difference is bad.
    Either,
}

/// How one metric compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// No significant difference in the bad direction.
    Pass,
    /// The canary is significantly higher.
    High,
    /// The canary is significantly lower.
    Low,
    /// Too few samples to compare.
    NoData,
}

impl Classification {
    /// Whether the metric failed (`High` or `Low`).
    pub fn is_failure(self) -> bool {
        matches!(self, Classification::High | Classification::Low)
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Classification::Pass => "pass",
            Classification::High => "high",
            Classification::Low => "low",
            Classification::NoData => "no data",
        })
    }
}

/// One metric the judge compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeMetric {
    /// Name, unique in the config, e.g. `p95-latency`.
    pub name: String,
    /// Query for the canary's samples; `{{...}}` arguments are substituted.
    pub canary_query: String,
    /// Query for the stable (baseline) samples.
    pub stable_query: String,
    /// Which change is bad. Default [`Direction::Increase`].
    #[serde(default)]
    pub direction: Direction,
    /// The group it scores in. Default `default`.
    #[serde(default = "default_group")]
    pub group: String,
    /// A failure of this metric fails the whole run. Default false.
    #[serde(default)]
    pub critical: bool,
    /// A significant difference must also exceed this share of the stable
    /// median (0.1 = 10 %) to fail. Default 0: any significant difference.
    #[serde(default)]
    pub tolerance: f64,
}

fn default_group() -> String {
    "default".to_string()
}

impl JudgeMetric {
    /// A metric in group `default`, direction `increase`, not critical, no
    /// tolerance.
    pub fn new(
        name: impl Into<String>,
        canary_query: impl Into<String>,
        stable_query: impl Into<String>,
    ) -> Self {
        JudgeMetric {
            name: name.into(),
            canary_query: canary_query.into(),
            stable_query: stable_query.into(),
            direction: Direction::Increase,
            group: default_group(),
            critical: false,
            tolerance: 0.0,
        }
    }

    /// Sets the bad direction.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Puts the metric in `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Marks the metric critical.
    pub fn critical(mut self) -> Self {
        self.critical = true;
        self
    }

    /// Sets the tolerance.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }
}

/// The judge's configuration. Defaults: confidence 0.95, pass at 95,
/// marginal at 75, at least 3 samples per side, every group weighted 1,
/// [`MwuMethod::Auto`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The metrics.
    pub metrics: Vec<JudgeMetric>,
    /// Group weights; a group not listed weighs 1. Weights are relative.
    #[serde(default)]
    pub group_weights: BTreeMap<String, f64>,
    /// Confidence level of the tests, in (0, 1).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Score from which the run passes.
    #[serde(default = "default_pass")]
    pub pass_score: f64,
    /// Score from which the run is marginal.
    #[serde(default = "default_marginal")]
    pub marginal_score: f64,
    /// Fewer samples than this on either side is no data.
    #[serde(default = "default_min_samples")]
    pub min_samples: usize,
    /// How p-values are computed.
    #[serde(default)]
    pub method: MwuMethod,
}

fn default_confidence() -> f64 {
    0.95
}
fn default_pass() -> f64 {
    95.0
}
fn default_marginal() -> f64 {
    75.0
}
fn default_min_samples() -> usize {
    3
}

impl JudgeConfig {
    /// A config with `metrics` and the defaults.
    pub fn new(metrics: Vec<JudgeMetric>) -> Self {
        JudgeConfig {
            metrics,
            group_weights: BTreeMap::new(),
            confidence: default_confidence(),
            pass_score: default_pass(),
            marginal_score: default_marginal(),
            min_samples: default_min_samples(),
            method: MwuMethod::Auto,
        }
    }

    /// Sets a group's weight.
    pub fn weight(mut self, group: impl Into<String>, weight: f64) -> Self {
        self.group_weights.insert(group.into(), weight);
        self
    }

    /// Checks the rules, naming the field that breaks one.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `judge.metrics` (empty),
    /// `judge.metrics[i].name` (empty or repeated), `…canary_query` /
    /// `…stable_query` (empty), `…tolerance` (negative or not finite),
    /// `judge.confidence` (outside (0, 1)), `judge.pass_score` /
    /// `judge.marginal_score` (outside 0–100, or marginal above pass),
    /// `judge.group_weights.<g>` (not a positive number, or naming no
    /// metric's group), `judge.min_samples` (0).
    pub fn validate(&self) -> Result<()> {
        if self.metrics.is_empty() {
            return Err(Error::invalid(
                "judge.metrics",
                "must have at least one metric",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let at = format!("judge.metrics[{i}]");
            if m.name.trim().is_empty() {
                return Err(Error::invalid(format!("{at}.name"), "must not be empty"));
            }
            if !names.insert(m.name.as_str()) {
                return Err(Error::invalid(
                    format!("{at}.name"),
                    format!("{:?} is used by two metrics", m.name),
                ));
            }
            if m.canary_query.trim().is_empty() {
                return Err(Error::invalid(
                    format!("{at}.canary_query"),
                    "must not be empty",
                ));
            }
            if m.stable_query.trim().is_empty() {
                return Err(Error::invalid(
                    format!("{at}.stable_query"),
                    "must not be empty",
                ));
            }
            if !(m.tolerance.is_finite() && m.tolerance >= 0.0) {
                return Err(Error::invalid(
                    format!("{at}.tolerance"),
                    "must be a number of 0 or more",
                ));
            }
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(Error::invalid(
                "judge.confidence",
                "must be between 0 and 1, exclusive",
            ));
        }
        for (field, v) in [
            ("judge.pass_score", self.pass_score),
            ("judge.marginal_score", self.marginal_score),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(Error::invalid(field, "must be between 0 and 100"));
            }
        }
        if self.marginal_score > self.pass_score {
            return Err(Error::invalid(
                "judge.marginal_score",
                "must not be above pass_score",
            ));
        }
        let groups: BTreeSet<&str> = self.metrics.iter().map(|m| m.group.as_str()).collect();
        for (g, w) in &self.group_weights {
            if !(w.is_finite() && *w > 0.0) {
                return Err(Error::invalid(
                    format!("judge.group_weights.{g}"),
                    "must be a positive number",
                ));
            }
            if !groups.contains(g.as_str()) {
                return Err(Error::invalid(
                    format!("judge.group_weights.{g}"),
                    "names a group no metric is in",
                ));
            }
        }
        if self.min_samples == 0 {
            return Err(Error::invalid("judge.min_samples", "must be at least 1"));
        }
        Ok(())
    }
}

/// How one metric was judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    /// The metric.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Whether it was critical.
    pub critical: bool,
    /// The classification.
    pub classification: Classification,
    /// The test's p-value, when there was data.
    pub p_value: Option<f64>,
    /// Median of the canary samples, when there were any.
    pub canary_median: Option<f64>,
    /// Median of the stable samples, when there were any.
    pub stable_median: Option<f64>,
    /// Number of canary samples.
    pub canary_samples: usize,
    /// Number of stable samples.
    pub stable_samples: usize,
}

/// The overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Score at or above the pass score.
    Pass,
    /// Between the marginal and the pass score.
    Marginal,
    /// Below the marginal score, a failed critical metric, or too little data.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Marginal => "marginal",
            Verdict::Fail => "fail",
        })
    }
}

/// What the judge decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    /// The score, 0–100.
    pub score: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Each group's share of passing metrics (0–1), for groups with data.
    pub group_scores: BTreeMap<String, f64>,
    /// Each metric's verdict, in config order.
    pub metrics: Vec<MetricVerdict>,
    /// One sentence: what decided.
    pub reason: String,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    Some(if s.len().is_multiple_of(2) {
        (s[mid - 1] + s[mid]) / 2.0
    } else {
        s[mid]
    })
}

/// Classifies one metric from its samples (NaN and infinite values are
/// dropped first).
///
/// # Errors
/// Only those of [`mann_whitney_u`] for `MwuMethod::Exact` with ties.
pub fn classify(
    metric: &JudgeMetric,
    canary: &[f64],
    stable: &[f64],
    config: &JudgeConfig,
) -> Result<MetricVerdict> {
    let canary: Vec<f64> = canary.iter().copied().filter(|v| v.is_finite()).collect();
    let stable: Vec<f64> = stable.iter().copied().filter(|v| v.is_finite()).collect();
    let mut verdict = MetricVerdict {
        name: metric.name.clone(),
        group: metric.group.clone(),
        critical: metric.critical,
        classification: Classification::NoData,
        p_value: None,
        canary_median: median(&canary),
        stable_median: median(&stable),
        canary_samples: canary.len(),
        stable_samples: stable.len(),
    };
    if canary.len() < config.min_samples || stable.len() < config.min_samples {
        return Ok(verdict);
    }
    let alternative = match metric.direction {
        Direction::Increase => Alternative::Greater,
        Direction::Decrease => Alternative::Less,
        Direction::Either => Alternative::TwoSided,
    };
    let test = mann_whitney_u(&canary, &stable, alternative, config.method)?;
    verdict.p_value = Some(test.p_value);
    let significant = test.p_value < 1.0 - config.confidence;
    let (cm, sm) = (
        verdict.canary_median.unwrap_or_default(),
        verdict.stable_median.unwrap_or_default(),
    );
    let beyond_tolerance = if sm == 0.0 {
        cm != 0.0 || metric.tolerance == 0.0
    } else {
        ((cm - sm) / sm.abs()).abs() > metric.tolerance
    };
    let higher = test.u > canary.len() as f64 * stable.len() as f64 / 2.0;
    verdict.classification = if significant && beyond_tolerance {
        if higher {
            Classification::High
        } else {
            Classification::Low
        }
    } else {
        Classification::Pass
    };
    Ok(verdict)
}

/// Scores classified metrics by the rules in the module docs.
pub fn score(config: &JudgeConfig, metrics: Vec<MetricVerdict>) -> JudgeReport {
    let total = metrics.len();
    let no_data = metrics
        .iter()
        .filter(|m| m.classification == Classification::NoData)
        .count();
    let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for m in &metrics {
        if m.classification != Classification::NoData {
            let g = groups.entry(m.group.clone()).or_default();
            g.1 += 1;
            if !m.classification.is_failure() {
                g.0 += 1;
            }
        }
    }
    let group_scores: BTreeMap<String, f64> = groups
        .iter()
        .map(|(g, (passed, with_data))| (g.clone(), *passed as f64 / *with_data as f64))
        .collect();
    let (weighted, weights) = group_scores.iter().fold((0.0, 0.0), |(s, w), (g, score)| {
        let weight = config.group_weights.get(g).copied().unwrap_or(1.0);
        (s + weight * score, w + weight)
    });
    let raw = if weights > 0.0 {
        100.0 * weighted / weights
    } else {
        0.0
    };
    let failed_critical: Vec<&str> = metrics
        .iter()
        .filter(|m| m.critical && m.classification.is_failure())
        .map(|m| m.name.as_str())
        .collect();
    let failed: Vec<String> = metrics
        .iter()
        .filter(|m| m.classification.is_failure())
        .map(|m| format!("{} {}", m.name, m.classification))
        .collect();
    let (score, verdict, reason) = if total > 0 && no_data * 2 >= total {
        (
            0.0,
            Verdict::Fail,
            format!("{no_data} of {total} metrics have no data (limit: under half)"),
        )
    } else if !failed_critical.is_empty() {
        (
            0.0,
            Verdict::Fail,
            format!("critical metric failed: {}", failed_critical.join(", ")),
        )
    } else {
        let verdict = if raw >= config.pass_score {
            Verdict::Pass
        } else if raw >= config.marginal_score {
            Verdict::Marginal
        } else {
            Verdict::Fail
        };
        let detail = if failed.is_empty() {
            "no metric failed".to_string()
        } else {
            format!("failed: {}", failed.join(", "))
        };
        (
            raw,
            verdict,
            format!(
                "score {raw:.1} (pass {}, marginal {}); {detail}",
                config.pass_score, config.marginal_score
            ),
        )
    };
    JudgeReport {
        score,
        verdict,
        group_scores,
        metrics,
        reason,
    }
}

/// Where the judge gets samples: every value of a query over a window.
#[async_trait]
pub trait SampleProvider: Send + Sync {
    /// All samples of `query.query` over the last `query.window`. An empty
    /// vector means no data.
    async fn samples(&self, query: &MetricQuery) -> Result<Vec<f64>>;
}

#[async_trait]
impl<T: SampleProvider + ?Sized> SampleProvider for Arc<T> {
    async fn samples(&self, query: &MetricQuery) -> Result<Vec<f64>> {
        (**self).samples(query).await
    }
}

#[async_trait]
impl<T: SampleProvider + ?Sized> SampleProvider for Box<T> {
    async fn samples(&self, query: &MetricQuery) -> Result<Vec<f64>> {
        (**self).samples(query).await
    }
}

/// Runs a [`JudgeConfig`] against a [`SampleProvider`]; as a
/// [`MetricProvider`] it measures the score (see the module docs).
#[derive(Debug, Clone)]
pub struct CanaryJudge<P> {
    config: JudgeConfig,
    samples: P,
}

impl<P: SampleProvider> CanaryJudge<P> {
    /// A judge for `config` reading from `samples`.
    ///
    /// # Errors
    /// Those of [`JudgeConfig::validate`].
    pub fn new(config: JudgeConfig, samples: P) -> Result<Self> {
        config.validate()?;
        Ok(CanaryJudge { config, samples })
    }

    /// The configuration.
    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// The sample provider.
    pub fn samples(&self) -> &P {
        &self.samples
    }

    /// Fetches every metric's canary and stable samples over `window`
    /// (queries rendered with `args`), classifies and scores them.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a query names an unknown argument; the
    /// provider's errors.
    pub async fn judge(
        &self,
        args: &BTreeMap<String, String>,
        window: std::time::Duration,
    ) -> Result<JudgeReport> {
        let mut verdicts = Vec::with_capacity(self.config.metrics.len());
        for m in &self.config.metrics {
            let query = |text: &str| -> Result<MetricQuery> {
                Ok(MetricQuery {
                    metric: m.name.clone(),
                    query: render_query(text, args)?,
                    window,
                    args: args.clone(),
                })
            };
            let (canary_q, stable_q) = (query(&m.canary_query)?, query(&m.stable_query)?);
            let (canary, stable) = futures::try_join!(
                self.samples.samples(&canary_q),
                self.samples.samples(&stable_q)
            )?;
            let v = classify(m, &canary, &stable, &self.config)?;
            tracing::debug!(
                metric = %v.name,
                classification = %v.classification,
                p_value = ?v.p_value,
                canary = v.canary_samples,
                stable = v.stable_samples,
                "judge classified metric"
            );
            verdicts.push(v);
        }
        let report = score(&self.config, verdicts);
        tracing::info!(score = report.score, verdict = %report.verdict, reason = %report.reason, "canary judged");
        Ok(report)
    }
}

#[async_trait]
impl<P: SampleProvider> MetricProvider for CanaryJudge<P> {
    /// The score (0–100) of a judgement over `query.window` with
    /// `query.args`; the query text itself is not used.
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        let report = self.judge(&query.args, query.window).await?;
        Ok(Measurement::Value(report.score))
    }
}

/// The query text that [`WithJudge`] answers with the judge's score.
pub const JUDGE_QUERY: &str = "atlas:judge-score";

/// A [`MetricProvider`] for an engine that needs both the judge and plain
/// queries: a query whose text is [`JUDGE_QUERY`] gets the judge's score,
/// every other query goes to `provider`. Build it with
/// [`CanaryJudge::or_else`].
#[derive(Debug, Clone)]
pub struct WithJudge<P, M> {
    judge: CanaryJudge<P>,
    provider: M,
}

impl<P: SampleProvider> CanaryJudge<P> {
    /// Serves [`JUDGE_QUERY`] from this judge and everything else from
    /// `provider`.
    pub fn or_else<M: MetricProvider>(self, provider: M) -> WithJudge<P, M> {
        WithJudge {
            judge: self,
            provider,
        }
    }
}

#[async_trait]
impl<P: SampleProvider, M: MetricProvider> MetricProvider for WithJudge<P, M> {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        if query.query.trim() == JUDGE_QUERY {
            self.judge.measure(query).await
        } else {
            self.provider.measure(query).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        let (r, t) = rank(&[1.0, 2.0, 2.0], &[3.0, 2.0]);
        assert_eq!(r, vec![1.0, 3.0, 3.0, 5.0, 3.0]);
        assert_eq!(t, vec![1, 3, 1]);
    }

    #[test]
    fn exact_distribution_sums_to_the_binomial_and_is_symmetric() {
        let d = u_distribution(4, 6);
        assert_eq!(d.len(), 25);
        assert_eq!(d.iter().sum::<f64>(), 210.0); // C(10, 4)
        for u in 0..d.len() {
            assert_eq!(d[u], d[d.len() - 1 - u]);
        }
        assert_eq!(u_distribution(1, 1), vec![1.0, 1.0]);
    }

    #[test]
    fn all_ties_give_p_one() {
        let r =
            mann_whitney_u(&[1.0; 5], &[1.0; 7], Alternative::TwoSided, MwuMethod::Auto).unwrap();
        assert_eq!(r.method, MwuMethod::Asymptotic);
        assert_eq!(r.p_value, 1.0);
        assert_eq!(r.u, 17.5);
    }
}
