//! Criterion's saved estimates compared against a baseline, and the
//! [`BenchmarkGate`].
//!
//! Criterion writes, for every benchmark, a directory under
//! `target/criterion/<group>/<function>[/<parameter>]/` holding one
//! sub-directory per saved run: `new` (the latest), `base` (the previous,
//! or the one named by `--save-baseline NAME`), each with an
//! `estimates.json`:
//!
//! ```json
//! {"mean": {"confidence_interval": {"confidence_level": 0.95,
//!   "lower_bound": 1021.3, "upper_bound": 1043.9}, "point_estimate": 1032.0,
//!   "standard_error": 5.7}, "median": {…}, "median_abs_dev": {…},
//!   "slope": {…} | null, "std_dev": {…}}
//! ```
//!
//! Times are nanoseconds per iteration. The gate compares the mean's point
//! estimate of the current run with the baseline's; a benchmark whose time
//! grew by more than the budget (default 10 %) fails, as does one the
//! baseline has and the current run lacks. Benchmarks new in the current
//! run have nothing to compare with and are listed, not judged; a
//! comparison of zero benchmarks fails, since it proves nothing.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use crate::error::{Error, Result, read};
use crate::gate::{Gate, GateContext, Verdict};

const FORMAT: &str = "criterion estimates";

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct Estimates {
    mean: Estimate,
}

/// The mean time per iteration, in nanoseconds, in one `estimates.json`.
///
/// # Errors
/// [`Error::Malformed`] when it is not JSON with a numeric
/// `mean.point_estimate` above zero.
pub fn parse_estimates(json: &str, origin: &str) -> Result<f64> {
    let e: Estimates =
        serde_json::from_str(json).map_err(|e| Error::malformed(FORMAT, origin, e.to_string()))?;
    let mean = e.mean.point_estimate;
    if !mean.is_finite() || mean <= 0.0 {
        return Err(Error::malformed(
            FORMAT,
            origin,
            format!("mean.point_estimate {mean} is not a positive time"),
        ));
    }
    Ok(mean)
}

/// One benchmark's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchComparison {
    /// Its path under the criterion directory, e.g. `parse/lcov/10000`.
    pub name: String,
    /// The baseline's mean, ns.
    pub baseline_ns: Option<f64>,
    /// The current run's mean, ns.
    pub current_ns: Option<f64>,
}

impl BenchComparison {
    /// `current / baseline`, when both exist.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.current_ns? / self.baseline_ns?)
    }
}

/// Every benchmark under `dir` with a `baseline` or `current` run.
///
/// # Errors
/// [`Error::Read`] for a directory or file that cannot be read, and
/// [`Error::Malformed`] for an `estimates.json` that does not parse.
pub fn compare(dir: &Path, baseline: &str, current: &str) -> Result<Vec<BenchComparison>> {
    let mut out = Vec::new();
    walk(dir, dir, baseline, current, &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    baseline: &str,
    current: &str,
    out: &mut Vec<BenchComparison>,
) -> Result<()> {
    let io = |source, path: &Path| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let load = |run: &str| -> Result<Option<f64>> {
        let file = dir.join(run).join("estimates.json");
        if file.is_file() {
            parse_estimates(&read(&file)?, &file.display().to_string()).map(Some)
        } else {
            Ok(None)
        }
    };
    let (b, c) = (load(baseline)?, load(current)?);
    if b.is_some() || c.is_some() {
        let name = dir
            .strip_prefix(root)
            .unwrap_or(dir)
            .to_string_lossy()
            .replace('\\', "/");
        out.push(BenchComparison {
            name,
            baseline_ns: b,
            current_ns: c,
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io(e, dir))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(e, dir))?;
        let path = entry.path();
        let name = entry.file_name();
        // Run directories and criterion's HTML reports hold no benchmarks.
        if !path.is_dir()
            || name == *baseline
            || name == *current
            || name == "report"
            || name == "change"
        {
            continue;
        }
        walk(root, &path, baseline, current, out)?;
    }
    Ok(())
}

/// Passes when no benchmark under a criterion directory got slower than
/// its baseline by more than the budget.
#[derive(Debug, Clone)]
pub struct BenchmarkGate {
    dir: PathBuf,
    baseline: String,
    current: String,
    budget: f64,
}

/// The default regression budget: 10 %.
pub const DEFAULT_BUDGET: f64 = 0.10;

impl BenchmarkGate {
    /// A gate over the criterion directory `dir` (usually
    /// `target/criterion`), comparing run `new` with baseline `base`.
    pub fn criterion(dir: impl Into<PathBuf>) -> Self {
        BenchmarkGate {
            dir: dir.into(),
            baseline: "base".into(),
            current: "new".into(),
            budget: DEFAULT_BUDGET,
        }
    }

    /// The baseline's name (`--save-baseline NAME`). Default `base`.
    pub fn baseline(mut self, name: impl Into<String>) -> Self {
        self.baseline = name.into();
        self
    }

    /// The current run's name. Default `new`.
    pub fn current(mut self, name: impl Into<String>) -> Self {
        self.current = name.into();
        self
    }

    /// The largest slowdown allowed, as a fraction (0.10 = 10 %).
    pub fn budget(mut self, fraction: f64) -> Self {
        self.budget = fraction;
        self
    }

    /// Judges already-made comparisons.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `benchmarks.budget` when negative or not
    /// finite.
    pub fn judge(&self, comparisons: &[BenchComparison]) -> Result<Verdict> {
        if !self.budget.is_finite() || self.budget < 0.0 {
            return Err(Error::invalid(
                "benchmarks.budget",
                format!("{} is not a fraction of at least 0", self.budget),
            ));
        }
        let mut details = Vec::new();
        let mut compared = 0;
        let mut worst: Option<(f64, &str)> = None;
        for c in comparisons {
            match (c.baseline_ns, c.current_ns, c.ratio()) {
                (_, _, Some(r)) => {
                    compared += 1;
                    if worst.is_none_or(|(w, _)| r > w) {
                        worst = Some((r, &c.name));
                    }
                    if r > 1.0 + self.budget {
                        details.push(format!(
                            "{}: {:+.1} % ({:.0} ns → {:.0} ns)",
                            c.name,
                            (r - 1.0) * 100.0,
                            c.baseline_ns.unwrap_or_default(),
                            c.current_ns.unwrap_or_default()
                        ));
                    }
                }
                (Some(_), None, _) => {
                    details.push(format!("{}: in the baseline, not run now", c.name))
                }
                _ => tracing::info!(bench = %c.name, "new benchmark, no baseline to compare"),
            }
        }
        if compared == 0 {
            details.push(format!(
                "no benchmark has both a {:?} and a {:?} run",
                self.baseline, self.current
            ));
        }
        let summary = match worst {
            Some((r, name)) => format!(
                "{compared} benchmarks compared, worst {name} {:+.1} % (budget {:.0} %)",
                (r - 1.0) * 100.0,
                self.budget * 100.0
            ),
            None => "no benchmark compared".to_string(),
        };
        Ok(Verdict::from_problems(summary, details))
    }
}

#[async_trait]
impl Gate for BenchmarkGate {
    fn name(&self) -> &str {
        "benchmarks"
    }

    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        self.judge(&compare(&self.dir, &self.baseline, &self.current)?)
    }
}
