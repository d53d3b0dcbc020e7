//! Vulnerability reports — cargo-audit's JSON, Trivy's JSON, OSV (the
//! osv-scanner output and the OSV API's `{"vulns": […]}`) — and the
//! [`VulnerabilityGate`] with its expiring [`AllowList`].
//!
//! Severity of a finding, by source:
//!
//! - Trivy: its `Severity` (`UNKNOWN`, `LOW`, `MEDIUM`, `HIGH`, `CRITICAL`);
//! - cargo-audit: the advisory's `cvss` vector, scored with CVSS v3.1;
//!   advisories without one are [`VulnSeverity::Unknown`];
//! - OSV: the `max_severity` score of the osv-scanner group holding the
//!   finding, else a `CVSS_V3` vector in `severity`, else
//!   `database_specific.severity` (GitHub's `LOW`/`MODERATE`/`HIGH`/`CRITICAL`).
//!
//! Unknown severities fail the gate unless told otherwise: a finding
//! nobody scored is not known to be harmless.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cvss::base_score;
use crate::error::{Error, Result, read};
use crate::gate::{Gate, GateContext, Verdict};

/// How severe a finding is (CVSS v3 bands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VulnSeverity {
    /// Not scored.
    Unknown,
    /// Score 0.0.
    None,
    /// 0.1–3.9.
    Low,
    /// 4.0–6.9.
    Medium,
    /// 7.0–8.9.
    High,
    /// 9.0–10.0.
    Critical,
}

impl VulnSeverity {
    /// The band of a CVSS score.
    pub fn from_score(score: f64) -> Self {
        match score {
            s if s >= 9.0 => VulnSeverity::Critical,
            s if s >= 7.0 => VulnSeverity::High,
            s if s >= 4.0 => VulnSeverity::Medium,
            s if s > 0.0 => VulnSeverity::Low,
            _ => VulnSeverity::None,
        }
    }

    /// A severity word as scanners write it (`HIGH`, `moderate`, …).
    pub fn from_word(word: &str) -> Self {
        match word.trim().to_ascii_uppercase().as_str() {
            "CRITICAL" => VulnSeverity::Critical,
            "HIGH" => VulnSeverity::High,
            "MEDIUM" | "MODERATE" => VulnSeverity::Medium,
            "LOW" => VulnSeverity::Low,
            "NONE" | "NEGLIGIBLE" => VulnSeverity::None,
            _ => VulnSeverity::Unknown,
        }
    }
}

impl fmt::Display for VulnSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VulnSeverity::Unknown => "UNKNOWN",
            VulnSeverity::None => "NONE",
            VulnSeverity::Low => "LOW",
            VulnSeverity::Medium => "MEDIUM",
            VulnSeverity::High => "HIGH",
            VulnSeverity::Critical => "CRITICAL",
        })
    }
}

/// One vulnerability in one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The advisory id, e.g. `RUSTSEC-2023-0071`, `CVE-2021-36159`.
    pub id: String,
    /// Other ids of the same advisory (CVE, GHSA).
    pub aliases: Vec<String>,
    /// The affected package.
    pub package: String,
    /// Its installed version.
    pub version: String,
    /// How severe.
    pub severity: VulnSeverity,
    /// A one-line title.
    pub title: String,
}

impl Finding {
    fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Which scanner wrote a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportFormat {
    /// `cargo audit --json`.
    CargoAudit,
    /// `trivy … --format json` (schema version 2).
    Trivy,
    /// `osv-scanner --format json`, or an OSV API `{"vulns": […]}` answer.
    Osv,
}

impl ReportFormat {
    fn name(self) -> &'static str {
        match self {
            ReportFormat::CargoAudit => "cargo-audit JSON",
            ReportFormat::Trivy => "Trivy JSON",
            ReportFormat::Osv => "OSV JSON",
        }
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// An array at `key`; `null` or absent reads as empty when `optional`.
fn array<'a>(
    v: &'a Value,
    key: &str,
    optional: bool,
    bad: &impl Fn(String) -> Error,
) -> Result<&'a [Value]> {
    match v.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(Value::Null) | None if optional => Ok(&[]),
        Some(other) => Err(bad(format!("{key} is {other}, not an array"))),
        None => Err(bad(format!("no {key}"))),
    }
}

/// Parses a scanner's JSON report into findings; `origin` names it in
/// errors.
///
/// # Errors
/// [`Error::Malformed`] when it is not JSON or lacks the format's required
/// structure (cargo-audit: `vulnerabilities.list`; Trivy: `SchemaVersion`
/// 2; OSV: `results` or `vulns`), naming what is missing.
pub fn parse_findings(format: ReportFormat, json: &str, origin: &str) -> Result<Vec<Finding>> {
    let bad = |d: String| Error::malformed(format.name(), origin, d);
    let root: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if !root.is_object() {
        return Err(bad("the document is not a JSON object".into()));
    }
    let mut out = Vec::new();
    match format {
        ReportFormat::CargoAudit => {
            let vulns = root
                .get("vulnerabilities")
                .ok_or_else(|| bad("no vulnerabilities object".into()))?;
            for (i, v) in array(vulns, "list", false, &bad)?.iter().enumerate() {
                let adv = v
                    .get("advisory")
                    .ok_or_else(|| bad(format!("vulnerabilities.list[{i}] has no advisory")))?;
                let id = text(adv, "id");
                if id.is_empty() {
                    return Err(bad(format!("vulnerabilities.list[{i}].advisory has no id")));
                }
                let pkg = v.get("package").unwrap_or(&Value::Null);
                let severity = adv
                    .get("cvss")
                    .and_then(Value::as_str)
                    .and_then(base_score)
                    .map_or(VulnSeverity::Unknown, VulnSeverity::from_score);
                out.push(Finding {
                    id: id.to_string(),
                    aliases: strings(adv.get("aliases")),
                    package: text(pkg, "name").to_string(),
                    version: text(pkg, "version").to_string(),
                    severity,
                    title: text(adv, "title").to_string(),
                });
            }
        }
        ReportFormat::Trivy => {
            match root.get("SchemaVersion").and_then(Value::as_u64) {
                Some(2) => {}
                Some(v) => {
                    return Err(bad(format!(
                        "SchemaVersion {v} is not the supported version 2"
                    )));
                }
                None => return Err(bad("no SchemaVersion".into())),
            }
            for (r, result) in array(&root, "Results", true, &bad)?.iter().enumerate() {
                for (i, v) in array(result, "Vulnerabilities", true, &bad)?
                    .iter()
                    .enumerate()
                {
                    let id = text(v, "VulnerabilityID");
                    if id.is_empty() {
                        return Err(bad(format!(
                            "Results[{r}].Vulnerabilities[{i}] has no VulnerabilityID"
                        )));
                    }
                    out.push(Finding {
                        id: id.to_string(),
                        aliases: Vec::new(),
                        package: text(v, "PkgName").to_string(),
                        version: text(v, "InstalledVersion").to_string(),
                        severity: VulnSeverity::from_word(text(v, "Severity")),
                        title: text(v, "Title").to_string(),
                    });
                }
            }
        }
        ReportFormat::Osv => {
            if let Some(vulns) = root.get("vulns") {
                if !vulns.is_array() && !vulns.is_null() {
                    return Err(bad("vulns is not an array".into()));
                }
                for v in array(&root, "vulns", true, &bad)? {
                    out.push(osv_finding(v, "", "", &[], &bad)?);
                }
            } else {
                let results = array(&root, "results", false, &bad)?;
                for result in results {
                    for p in array(result, "packages", true, &bad)? {
                        let pkg = p.get("package").unwrap_or(&Value::Null);
                        let groups = array(p, "groups", true, &bad)?;
                        for v in array(p, "vulnerabilities", true, &bad)? {
                            out.push(osv_finding(
                                v,
                                text(pkg, "name"),
                                text(pkg, "version"),
                                groups,
                                &bad,
                            )?);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn osv_finding(
    v: &Value,
    package: &str,
    version: &str,
    groups: &[Value],
    bad: &impl Fn(String) -> Error,
) -> Result<Finding> {
    let id = text(v, "id");
    if id.is_empty() {
        return Err(bad("a vulnerability has no id".into()));
    }
    let from_group = groups
        .iter()
        .find(|g| strings(g.get("ids")).iter().any(|i| i == id))
        .and_then(|g| g.get("max_severity"))
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(VulnSeverity::from_score);
    let from_vector = || {
        v.get("severity")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("score").and_then(Value::as_str))
            .filter_map(base_score)
            .reduce(f64::max)
            .map(VulnSeverity::from_score)
    };
    let from_database = || {
        v.get("database_specific")
            .and_then(|d| d.get("severity"))
            .and_then(Value::as_str)
            .map(VulnSeverity::from_word)
    };
    let (package, version) = if package.is_empty() {
        // OSV API records name the package under `affected`.
        let affected = v
            .get("affected")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let name = affected
            .and_then(|a| a.get("package"))
            .map(|p| text(p, "name"))
            .unwrap_or_default();
        (name.to_string(), String::new())
    } else {
        (package.to_string(), version.to_string())
    };
    Ok(Finding {
        id: id.to_string(),
        aliases: strings(v.get("aliases")),
        package,
        version,
        severity: from_group
            .or_else(from_vector)
            .or_else(from_database)
            .unwrap_or(VulnSeverity::Unknown),
        title: text(v, "summary").to_string(),
    })
}

/// An accepted finding, until a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The advisory id or any alias.
    pub id: String,
    /// The last day (UTC) the entry applies.
    pub expires: Date,
    /// Why it is accepted.
    pub reason: String,
}

/// Findings accepted for a while. Serialises as
/// `{"allow": [{"id": …, "expires": "2027-03-31", "reason": …}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    /// The entries.
    pub allow: Vec<AllowEntry>,
}

impl AllowList {
    /// Adds an entry.
    pub fn with(mut self, id: impl Into<String>, expires: Date, reason: impl Into<String>) -> Self {
        self.allow.push(AllowEntry {
            id: id.into(),
            expires,
            reason: reason.into(),
        });
        self
    }
}

/// Passes when no finding is at or above the severity threshold (default
/// HIGH), except those on the allow-list whose entry has not expired.
#[derive(Debug, Clone)]
pub struct VulnerabilityGate {
    reports: Vec<(ReportFormat, PathBuf)>,
    threshold: VulnSeverity,
    fail_on_unknown: bool,
    allow: AllowList,
    today: Option<Date>,
}

impl Default for VulnerabilityGate {
    fn default() -> Self {
        Self::new()
    }
}

impl VulnerabilityGate {
    /// A gate with no reports yet, threshold HIGH, unknown severities
    /// failing, and an empty allow-list.
    pub fn new() -> Self {
        VulnerabilityGate {
            reports: Vec::new(),
            threshold: VulnSeverity::High,
            fail_on_unknown: true,
            allow: AllowList::default(),
            today: None,
        }
    }

    /// Reads the report at `path`, written by `format`'s scanner.
    pub fn report(mut self, format: ReportFormat, path: impl Into<PathBuf>) -> Self {
        self.reports.push((format, path.into()));
        self
    }

    /// Findings at or above `severity` fail. Default HIGH.
    pub fn threshold(mut self, severity: VulnSeverity) -> Self {
        self.threshold = severity;
        self
    }

    /// Whether unscored findings fail. Default true.
    pub fn fail_on_unknown(mut self, fail: bool) -> Self {
        self.fail_on_unknown = fail;
        self
    }

    /// The accepted findings.
    pub fn allow(mut self, list: AllowList) -> Self {
        self.allow = list;
        self
    }

    /// The date expiries are compared with. Default: today, UTC.
    pub fn today(mut self, date: Date) -> Self {
        self.today = Some(date);
        self
    }

    /// Judges already-parsed findings.
    pub fn judge(&self, findings: &[Finding]) -> Verdict {
        let today = self.today.unwrap_or_else(|| {
            jiff::tz::Offset::UTC
                .to_datetime(jiff::Timestamp::now())
                .date()
        });
        let mut seen = BTreeSet::new();
        let mut blocking = Vec::new();
        let mut allowed = 0;
        let mut notes = Vec::new();
        for f in findings {
            if !seen.insert((f.id.clone(), f.package.clone(), f.version.clone())) {
                continue;
            }
            let counts = f.severity >= self.threshold
                || (f.severity == VulnSeverity::Unknown && self.fail_on_unknown);
            if !counts {
                continue;
            }
            let entry = self.allow.allow.iter().find(|e| f.ids().any(|i| i == e.id));
            match entry {
                Some(e) if e.expires >= today => {
                    allowed += 1;
                    tracing::info!(id = %f.id, expires = %e.expires, reason = %e.reason, "finding allowed");
                }
                Some(e) => {
                    notes.push(format!(
                        "{} {} {} in {} {} (allow-list entry expired {})",
                        f.severity, f.id, f.title, f.package, f.version, e.expires
                    ));
                    blocking.push(f);
                }
                None => {
                    notes.push(format!(
                        "{} {} {} in {} {}",
                        f.severity, f.id, f.title, f.package, f.version
                    ));
                    blocking.push(f);
                }
            }
        }
        let summary = format!(
            "{} findings, {} at or above {} ({} allowed)",
            seen.len(),
            blocking.len() + allowed,
            self.threshold,
            allowed
        );
        if blocking.is_empty() {
            Verdict::pass(summary)
        } else {
            Verdict::fail(summary, notes)
        }
    }
}

#[async_trait]
impl Gate for VulnerabilityGate {
    fn name(&self) -> &str {
        "vulnerabilities"
    }

    /// # Errors
    /// [`Error::InvalidInput`] on `vulnerabilities.reports` when none is
    /// configured; [`Error::Read`] and [`Error::Malformed`] per report.
    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        if self.reports.is_empty() {
            return Err(Error::invalid(
                "vulnerabilities.reports",
                "at least one scanner report is required",
            ));
        }
        let mut findings = Vec::new();
        for (format, path) in &self.reports {
            findings.extend(read_findings(*format, path)?);
        }
        Ok(self.judge(&findings))
    }
}

/// Reads and parses one scanner report.
///
/// # Errors
/// [`Error::Read`], and those of [`parse_findings`].
pub fn read_findings(format: ReportFormat, path: &Path) -> Result<Vec<Finding>> {
    parse_findings(format, &read(path)?, &path.display().to_string())
}
