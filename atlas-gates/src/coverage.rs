//! Line coverage from lcov tracefiles and Cobertura XML, and the
//! [`CoverageGate`].
//!
//! - **lcov** (grcov, `cargo llvm-cov --lcov`, coverage.py, gcov via lcov):
//!   records `SF:<file>` … `end_of_record`; a file's lines are its `DA:`
//!   entries (`DA:<line>,<hits>[,<checksum>]`), or its `LF:`/`LH:` totals
//!   when it has no `DA:` lines. Other record types (`TN`, `FN`, `BRDA`, …)
//!   are skipped.
//! - **Cobertura** (`cargo llvm-cov --cobertura`, grcov, coverage.py,
//!   JaCoCo converters): `<coverage>` with `<class filename=…>` elements
//!   whose `<line number hits>` children are the lines; a class without
//!   line elements counts by its `line-rate` only if the root's
//!   `lines-valid`/`lines-covered` are absent.
//!
//! A line counts as covered when its hit count is above zero; a line listed
//! twice for one file (two classes of one file) counts once, covered if
//! either says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::{Error, Result, read};
use crate::gate::{Gate, GateContext, Verdict};
use crate::xml::{Visit, walk};

/// One file's lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileCoverage {
    /// Instrumented lines.
    pub found: u64,
    /// Lines run at least once.
    pub hit: u64,
}

impl FileCoverage {
    /// `hit / found`; 1.0 for a file with no instrumented line.
    pub fn rate(&self) -> f64 {
        if self.found == 0 {
            1.0
        } else {
            self.hit as f64 / self.found as f64
        }
    }
}

/// Coverage per file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CoverageReport {
    /// By file path as the report names it.
    pub files: BTreeMap<String, FileCoverage>,
}

#[derive(Default)]
struct Lines(BTreeMap<String, BTreeMap<u64, bool>>);

impl Lines {
    fn add(&mut self, file: &str, line: u64, hits: u64) {
        let covered = self
            .0
            .entry(file.to_string())
            .or_default()
            .entry(line)
            .or_insert(false);
        *covered |= hits > 0;
    }

    fn into_report(self, mut totals: BTreeMap<String, FileCoverage>) -> CoverageReport {
        for (file, lines) in self.0 {
            totals.insert(
                file,
                FileCoverage {
                    found: lines.len() as u64,
                    hit: lines.values().filter(|c| **c).count() as u64,
                },
            );
        }
        CoverageReport { files: totals }
    }
}

impl CoverageReport {
    /// The totals over every file.
    pub fn total(&self) -> FileCoverage {
        self.files
            .values()
            .fold(FileCoverage::default(), |acc, f| FileCoverage {
                found: acc.found + f.found,
                hit: acc.hit + f.hit,
            })
    }

    /// Parses an lcov tracefile; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming the line: a `DA`/`LF`/`LH` value that is
    /// not a number, a record outside `SF:` … `end_of_record`, a file
    /// that ends inside a record, or no record at all.
    pub fn parse_lcov(text: &str, origin: &str) -> Result<Self> {
        const FORMAT: &str = "lcov";
        let bad = |n: usize, d: String| Error::malformed(FORMAT, origin, format!("line {n}: {d}"));
        let number = |n: usize, what: &str, v: &str| -> Result<u64> {
            v.trim()
                .parse()
                .map_err(|_| bad(n, format!("{what} {v:?} is not a number")))
        };
        let mut lines = Lines::default();
        let mut totals: BTreeMap<String, FileCoverage> = BTreeMap::new();
        let mut current: Option<(String, Option<u64>, Option<u64>, bool)> = None;
        let mut records = 0;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if line == "end_of_record" {
                let (file, lf, lh, had_da) = current
                    .take()
                    .ok_or_else(|| bad(n, "end_of_record without SF:".into()))?;
                if !had_da {
                    let found = lf.unwrap_or(0);
                    let hit = lh.unwrap_or(0);
                    if hit > found {
                        return Err(bad(n, format!("{file}: LH {hit} above LF {found}")));
                    }
                    totals.insert(file, FileCoverage { found, hit });
                } else {
                    lines.0.entry(file).or_default();
                }
                records += 1;
                continue;
            }
            let (tag, value) = line
                .split_once(':')
                .ok_or_else(|| bad(n, format!("{line:?} is not TAG:VALUE")))?;
            if tag == "SF" {
                if current.is_some() {
                    return Err(bad(n, "SF: before the previous end_of_record".into()));
                }
                current = Some((value.to_string(), None, None, false));
                continue;
            }
            if tag == "TN" {
                continue;
            }
            let Some((file, lf, lh, had_da)) = current.as_mut() else {
                return Err(bad(
                    n,
                    format!("{tag}: outside a record (no SF: before it)"),
                ));
            };
            match tag {
                "DA" => {
                    let mut parts = value.split(',');
                    let line_no = number(n, "DA line", parts.next().unwrap_or(""))?;
                    let hits = parts
                        .next()
                        .ok_or_else(|| bad(n, "DA without a hit count".into()))?;
                    // Some tools write negative or fractional counts for
                    // unexecutable lines; anything else is an error.
                    let hits: u64 = match hits.trim().parse::<i64>() {
                        Ok(h) => h.max(0) as u64,
                        Err(_) => return Err(bad(n, format!("DA hits {hits:?} is not a number"))),
                    };
                    lines.add(file, line_no, hits);
                    *had_da = true;
                }
                "LF" => *lf = Some(number(n, "LF", value)?),
                "LH" => *lh = Some(number(n, "LH", value)?),
                _ => {}
            }
        }
        if current.is_some() {
            return Err(Error::malformed(
                FORMAT,
                origin,
                "ends inside a record (no end_of_record)",
            ));
        }
        if records == 0 {
            return Err(Error::malformed(FORMAT, origin, "no SF: record"));
        }
        Ok(lines.into_report(totals))
    }

    /// Parses a Cobertura XML report; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Malformed`]: not well-formed XML, a root other than
    /// `<coverage>`, a `<line>` outside a `<class>` or without a numeric
    /// `number`/`hits`, a `<class>` without `filename`, no class at all.
    pub fn parse_cobertura(text: &str, origin: &str) -> Result<Self> {
        const FORMAT: &str = "Cobertura XML";
        let bad = |d: String| Error::malformed(FORMAT, origin, d);
        let mut lines = Lines::default();
        let mut root = false;
        let mut class: Option<String> = None;
        let mut classes = 0;
        walk(text, FORMAT, origin, |v| {
            match v {
                Visit::Start(el) => {
                    if !root {
                        if el.name != "coverage" {
                            return Err(bad(format!(
                                "the root element is <{}>, not <coverage>",
                                el.name
                            )));
                        }
                        root = true;
                    }
                    match el.name.as_str() {
                        "class" => {
                            let file = el
                                .attrs
                                .get("filename")
                                .ok_or_else(|| bad("a <class> without filename".into()))?;
                            lines.0.entry(file.clone()).or_default();
                            class = Some(file.clone());
                            classes += 1;
                        }
                        "line" => {
                            // `<line>` also appears under `<method>`, inside a class.
                            let file = class
                                .as_ref()
                                .ok_or_else(|| bad("a <line> outside a <class>".into()))?;
                            let number: u64 = el
                                .parsed("number", bad)?
                                .ok_or_else(|| bad("a <line> without number".into()))?;
                            // Hit counts above u64 appear in the wild as
                            // floats ("1.0E10"); parse wide and clamp.
                            let hits: f64 = el
                                .parsed("hits", bad)?
                                .ok_or_else(|| bad("a <line> without hits".into()))?;
                            lines.add(file, number, if hits > 0.0 { 1 } else { 0 });
                        }
                        _ => {}
                    }
                }
                Visit::End(name) => {
                    if name == "class" {
                        class = None;
                    }
                }
            }
            Ok(())
        })?;
        if classes == 0 {
            return Err(bad("no <class> element".into()));
        }
        Ok(lines.into_report(BTreeMap::new()))
    }

    /// Reads `path`, as lcov unless its name ends in `.xml`.
    ///
    /// # Errors
    /// [`Error::Read`], and those of the parser.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let origin = path.display().to_string();
        if path.extension().is_some_and(|e| e == "xml") {
            Self::parse_cobertura(&text, &origin)
        } else {
            Self::parse_lcov(&text, &origin)
        }
    }
}

/// Passes when line coverage is at least the threshold (default 80 %),
/// and, optionally, every file's coverage at least a per-file threshold.
#[derive(Debug, Clone)]
pub struct CoverageGate {
    path: PathBuf,
    cobertura: bool,
    min_line_rate: f64,
    min_file_rate: Option<f64>,
    exclude: BTreeSet<String>,
}

/// The default line-coverage threshold: 80 %.
pub const DEFAULT_MIN_LINE_RATE: f64 = 0.80;

impl CoverageGate {
    /// A gate over the lcov tracefile at `path`.
    pub fn lcov(path: impl Into<PathBuf>) -> Self {
        CoverageGate {
            path: path.into(),
            cobertura: false,
            min_line_rate: DEFAULT_MIN_LINE_RATE,
            min_file_rate: None,
            exclude: BTreeSet::new(),
        }
    }

    /// A gate over the Cobertura XML report at `path`.
    pub fn cobertura(path: impl Into<PathBuf>) -> Self {
        CoverageGate {
            cobertura: true,
            ..Self::lcov(path)
        }
    }

    /// The least total line coverage, 0.0–1.0. Default 0.80.
    pub fn min_line_rate(mut self, rate: f64) -> Self {
        self.min_line_rate = rate;
        self
    }

    /// Also require every file to reach `rate`.
    pub fn min_file_rate(mut self, rate: f64) -> Self {
        self.min_file_rate = Some(rate);
        self
    }

    /// Leaves `file` (as the report names it) out of both checks.
    pub fn exclude(mut self, file: impl Into<String>) -> Self {
        self.exclude.insert(file.into());
        self
    }

    /// Judges an already-parsed report.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `coverage.min_line_rate` or
    /// `coverage.min_file_rate` outside 0.0–1.0.
    pub fn judge(&self, report: &CoverageReport) -> Result<Verdict> {
        for (field, rate) in [
            ("coverage.min_line_rate", Some(self.min_line_rate)),
            ("coverage.min_file_rate", self.min_file_rate),
        ] {
            if let Some(r) = rate
                && !(0.0..=1.0).contains(&r)
            {
                return Err(Error::invalid(
                    field,
                    format!("{r} is not between 0.0 and 1.0"),
                ));
            }
        }
        let mut kept = report.clone();
        kept.files.retain(|f, _| !self.exclude.contains(f));
        let total = kept.total();
        if total.found == 0 {
            return Ok(Verdict::fail(
                "no instrumented line in the report",
                vec!["an empty coverage report proves nothing".into()],
            ));
        }
        let pct = |r: f64| format!("{:.2} %", r * 100.0);
        let summary = format!(
            "line coverage {} ({} of {} lines; threshold {})",
            pct(total.rate()),
            total.hit,
            total.found,
            pct(self.min_line_rate)
        );
        let mut details = Vec::new();
        if total.rate() < self.min_line_rate {
            details.push(format!(
                "total {} below {}",
                pct(total.rate()),
                pct(self.min_line_rate)
            ));
        }
        if let Some(min) = self.min_file_rate {
            for (file, f) in &kept.files {
                if f.rate() < min {
                    details.push(format!("{file}: {} below {}", pct(f.rate()), pct(min)));
                }
            }
        }
        Ok(Verdict::from_problems(summary, details))
    }
}

#[async_trait]
impl Gate for CoverageGate {
    fn name(&self) -> &str {
        "coverage"
    }

    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        let text = read(&self.path)?;
        let origin = self.path.display().to_string();
        let report = if self.cobertura {
            CoverageReport::parse_cobertura(&text, &origin)?
        } else {
            CoverageReport::parse_lcov(&text, &origin)?
        };
        self.judge(&report)
    }
}
