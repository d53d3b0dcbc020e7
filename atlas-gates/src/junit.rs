//! JUnit XML test reports (what cargo-nextest, pytest, Maven Surefire,
//! Gradle and most CI tools write) and the [`TestGate`].
//!
//! The root is `<testsuites>` or a single `<testsuite>`; suites may nest.
//! Each `<testcase>` counts once: failed when it has a `<failure>` or
//! `<error>` child, skipped when it has `<skipped>`, passed otherwise
//! (nextest's `<flakyFailure>` and `<rerunFailure>` record retries, not the
//! outcome). The counts come from the test cases themselves, not from the
//! suites' `tests`/`failures` attributes, which tools fill inconsistently.
//! nextest leaves ignored tests out of its report entirely; pytest and
//! Surefire list them as skipped. A `<failure>` or `<error>` directly
//! inside a suite (a collection or set-up failure) counts as a failed
//! test, and so do failures a `<testsuite>` declares in its
//! `failures`/`errors` attributes beyond those its test cases show.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::{Error, Result, read};
use crate::gate::{Gate, GateContext, Verdict};
use crate::xml::{Visit, walk};

const FORMAT: &str = "JUnit XML";

/// How one test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestOutcome {
    /// It passed.
    Passed,
    /// It failed (`<failure>` or `<error>`).
    Failed,
    /// It did not run (`<skipped>`).
    Skipped,
}

/// One test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// `classname::name` (or `name` without a class name).
    pub name: String,
    /// How it ended.
    pub outcome: TestOutcome,
}

/// A parsed JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestReport {
    /// Every test case, in document order.
    pub cases: Vec<TestCase>,
}

impl TestReport {
    /// The number of cases with `outcome`.
    pub fn count(&self, outcome: TestOutcome) -> usize {
        self.cases.iter().filter(|c| c.outcome == outcome).count()
    }

    /// Parses a JUnit XML document; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Malformed`] when it is not well-formed XML, its root is not
    /// `<testsuites>` or `<testsuite>`, a `<testcase>` has no `name`, or a
    /// `<testsuite>`'s `failures`/`errors` is not a number.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |d: String| Error::malformed(FORMAT, origin, d);
        let mut report = TestReport::default();
        let mut root: Option<String> = None;
        let mut current: Option<TestCase> = None;
        // Open suites: name, declared failures + errors, failed cases seen
        // directly inside.
        let mut suites: Vec<(String, u64, u64)> = Vec::new();
        walk(text, FORMAT, origin, |v| {
            match v {
                Visit::Start(el) => {
                    if root.is_none() {
                        if el.name != "testsuites" && el.name != "testsuite" {
                            return Err(bad(format!(
                                "the root element is <{}>, not <testsuites> or <testsuite>",
                                el.name
                            )));
                        }
                        root = Some(el.name.clone());
                    }
                    match el.name.as_str() {
                        "testsuite" => {
                            let declared = |k: &str| el.parsed::<u64>(k, bad);
                            let n = declared("failures")?.unwrap_or(0)
                                + declared("errors")?.unwrap_or(0);
                            let name = el.attrs.get("name").cloned().unwrap_or_default();
                            suites.push((name, n, 0));
                        }
                        "testcase" => {
                            if current.is_some() {
                                return Err(bad("a <testcase> inside a <testcase>".into()));
                            }
                            let name = el
                                .attrs
                                .get("name")
                                .ok_or_else(|| bad("a <testcase> without a name".into()))?;
                            let name = match el.attrs.get("classname") {
                                Some(c) if !c.is_empty() => format!("{c}::{name}"),
                                _ => name.clone(),
                            };
                            current = Some(TestCase {
                                name,
                                outcome: TestOutcome::Passed,
                            });
                        }
                        "failure" | "error" => match current.as_mut() {
                            Some(c) => c.outcome = TestOutcome::Failed,
                            // A suite-level error (a collection or set-up
                            // failure) fails like a test.
                            None => {
                                let suite = suites.last().map_or("", |s| s.0.as_str());
                                report.cases.push(TestCase {
                                    name: format!("suite {suite:?}: {}", el.name),
                                    outcome: TestOutcome::Failed,
                                });
                                if let Some(s) = suites.last_mut() {
                                    s.2 += 1;
                                }
                            }
                        },
                        "skipped" => {
                            if let Some(c) = current.as_mut()
                                && c.outcome != TestOutcome::Failed
                            {
                                c.outcome = TestOutcome::Skipped;
                            }
                        }
                        _ => {}
                    }
                }
                Visit::End(name) => {
                    if name == "testcase"
                        && let Some(c) = current.take()
                    {
                        if c.outcome == TestOutcome::Failed
                            && let Some(s) = suites.last_mut()
                        {
                            s.2 += 1;
                        }
                        report.cases.push(c);
                    } else if name == "testsuite"
                        && let Some((suite, declared, seen)) = suites.pop()
                    {
                        // Failures a suite declares but does not list
                        // still fail: a report never passes on silence.
                        if declared > seen {
                            report.cases.push(TestCase {
                                name: format!(
                                    "suite {suite:?}: {} failures or errors not listed as test cases",
                                    declared - seen
                                ),
                                outcome: TestOutcome::Failed,
                            });
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// Reads and parses the JUnit report at `path`.
    ///
    /// # Errors
    /// [`Error::Read`], and those of [`parse`](Self::parse).
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?, &path.display().to_string())
    }
}

/// Passes when every test in one or more JUnit reports passed, at most
/// `max_skipped` were skipped (default 0), and at least `min_tests` ran
/// (default 1: an empty report proves nothing).
#[derive(Debug, Clone)]
pub struct TestGate {
    paths: Vec<PathBuf>,
    max_skipped: usize,
    min_tests: usize,
}

impl TestGate {
    /// A gate over the JUnit report at `path`.
    pub fn junit(path: impl Into<PathBuf>) -> Self {
        TestGate {
            paths: vec![path.into()],
            max_skipped: 0,
            min_tests: 1,
        }
    }

    /// Also reads the report at `path` (counts add up).
    pub fn and_junit(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.push(path.into());
        self
    }

    /// The most skipped tests allowed. Default 0.
    pub fn max_skipped(mut self, n: usize) -> Self {
        self.max_skipped = n;
        self
    }

    /// The fewest tests that must have run. Default 1.
    pub fn min_tests(mut self, n: usize) -> Self {
        self.min_tests = n;
        self
    }

    /// Judges already-parsed reports.
    pub fn judge(&self, report: &TestReport) -> Verdict {
        let failed: Vec<String> = report
            .cases
            .iter()
            .filter(|c| c.outcome == TestOutcome::Failed)
            .map(|c| format!("failed: {}", c.name))
            .collect();
        let skipped = report.count(TestOutcome::Skipped);
        let ran = report.cases.len() - skipped;
        let summary = format!(
            "{} tests, {} failed, {skipped} skipped (allowed {})",
            report.cases.len(),
            failed.len(),
            self.max_skipped
        );
        let mut details = failed;
        if skipped > self.max_skipped {
            details.extend(
                report
                    .cases
                    .iter()
                    .filter(|c| c.outcome == TestOutcome::Skipped)
                    .map(|c| format!("skipped: {}", c.name)),
            );
        }
        if ran < self.min_tests {
            details.push(format!(
                "only {ran} tests ran, at least {} required",
                self.min_tests
            ));
        }
        Verdict::from_problems(summary, details)
    }
}

#[async_trait]
impl Gate for TestGate {
    fn name(&self) -> &str {
        "tests"
    }

    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        let mut all = TestReport::default();
        for p in &self.paths {
            all.cases.extend(TestReport::from_file(p)?.cases);
        }
        Ok(self.judge(&all))
    }
}
