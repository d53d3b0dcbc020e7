//! The deployment validation checklist: a list of [`CheckItem`]s run one
//! after another into a [`ChecklistReport`] — a table for people, JSON for
//! scripts, and an exit status scripts can gate on.
//!
//! Items that do not apply (no autoscaling configured, a service without
//! a database) say so with [`CheckStatus::NotApplicable`] and a reason;
//! they never pass in silence, and they do not fail the list.
//!
//! The items here use only the contracts of `atlas-core`, so any adapter
//! fits them: [`ProbeCheck`] (application health over a
//! [`HealthProbe`]; with a TLS certificate probe, certificate expiry),
//! [`MigrationsCheck`] (the history table against the migration source),
//! [`TrafficCheck`] (observed request shares against the split in the
//! state store), [`MetricCheck`] (any query with a bound: targets up,
//! Atlas's metrics present, backup and drill ages), [`GateCheck`] (a
//! quality gate such as the benchmark gate), and [`FnCheck`] for the
//! rest.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atlas_core::migration::{MigrationDriver, Version};
use atlas_core::{
    Endpoint, HealthProbe, Measurement, MetricProvider, MetricQuery, ProbeOutcome, ServiceName,
    StateStore,
};
use serde::Serialize;
use tracing::Instrument;

use crate::gate::{Gate, GateContext};

/// How one item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// It holds.
    Pass,
    /// It does not hold, or could not be checked.
    Fail,
    /// It does not apply to this deployment; the detail says why.
    NotApplicable,
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "FAIL",
            CheckStatus::NotApplicable => "not applicable",
        })
    }
}

/// An item's status and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// How it came out.
    pub status: CheckStatus,
    /// What was found, or why it does not apply.
    pub detail: String,
}

impl CheckOutcome {
    /// A pass.
    pub fn pass(detail: impl Into<String>) -> Self {
        CheckOutcome {
            status: CheckStatus::Pass,
            detail: detail.into(),
        }
    }

    /// A failure.
    pub fn fail(detail: impl Into<String>) -> Self {
        CheckOutcome {
            status: CheckStatus::Fail,
            detail: detail.into(),
        }
    }

    /// Does not apply, because `reason`.
    pub fn not_applicable(reason: impl Into<String>) -> Self {
        CheckOutcome {
            status: CheckStatus::NotApplicable,
            detail: reason.into(),
        }
    }
}

/// One item of the checklist.
#[async_trait]
pub trait CheckItem: Send + Sync {
    /// The item's name in the table, e.g. `application health`.
    fn name(&self) -> &str;

    /// Checks it. Failures to check are [`CheckStatus::Fail`] with the
    /// error as the detail.
    async fn check(&self) -> CheckOutcome;
}

/// One line of a [`ChecklistReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemResult {
    /// The item's name.
    pub item: String,
    /// How it came out.
    pub status: CheckStatus,
    /// What it found.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// The outcome of a whole checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChecklistReport {
    /// Format version of the JSON form.
    pub version: u32,
    /// One line per item, in order.
    pub items: Vec<ItemResult>,
    /// Whether no item failed.
    pub passed: bool,
}

impl ChecklistReport {
    /// 0 when no item failed, 1 otherwise: the process exit status.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.passed)
    }

    /// The report as an aligned text table, one row per item.
    pub fn table(&self) -> String {
        let width = |f: &dyn Fn(&ItemResult) -> usize, title: &str| {
            self.items
                .iter()
                .map(f)
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let w_item = width(&|r| r.item.chars().count(), "ITEM");
        let w_status = width(&|r| r.status.to_string().len(), "STATUS");
        let mut out = format!("{:<w_item$}  {:<w_status$}  DETAIL\n", "ITEM", "STATUS");
        for r in &self.items {
            out.push_str(&format!(
                "{:<w_item$}  {:<w_status$}  {}\n",
                r.item,
                r.status.to_string(),
                r.detail.replace('\n', " ")
            ));
        }
        let count = |s| self.items.iter().filter(|r| r.status == s).count();
        out.push_str(&format!(
            "\n{} passed, {} failed, {} not applicable\n",
            count(CheckStatus::Pass),
            count(CheckStatus::Fail),
            count(CheckStatus::NotApplicable)
        ));
        out
    }
}

/// The checklist: items run in order.
#[derive(Clone, Default)]
pub struct Checklist {
    items: Vec<Arc<dyn CheckItem>>,
}

impl fmt::Debug for Checklist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.items.iter().map(|i| i.name()).collect();
        f.debug_struct("Checklist").field("items", &names).finish()
    }
}

/// The JSON format version of [`ChecklistReport`].
pub const REPORT_VERSION: u32 = 1;

impl Checklist {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an item.
    pub fn item(mut self, item: impl CheckItem + 'static) -> Self {
        self.items.push(Arc::new(item));
        self
    }

    /// Adds an item that does not apply, saying why.
    pub fn not_applicable(self, name: impl Into<String>, reason: impl Into<String>) -> Self {
        let (name, reason) = (name.into(), reason.into());
        self.item(FnCheck::new(name, move || {
            let reason = reason.clone();
            async move { CheckOutcome::not_applicable(reason) }
        }))
    }

    /// Runs every item, in order.
    pub async fn run(&self) -> ChecklistReport {
        let mut items = Vec::with_capacity(self.items.len());
        for item in &self.items {
            let started = Instant::now();
            let span = tracing::info_span!("check", item = item.name());
            let outcome = item.check().instrument(span).await;
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(item = item.name(), status = %outcome.status, detail = %outcome.detail, "checklist item");
            items.push(ItemResult {
                item: item.name().to_string(),
                status: outcome.status,
                detail: outcome.detail,
                millis,
            });
        }
        let passed = items.iter().all(|r| r.status != CheckStatus::Fail);
        ChecklistReport {
            version: REPORT_VERSION,
            items,
            passed,
        }
    }
}

type BoxedCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = CheckOutcome> + Send>> + Send + Sync>;

/// An item from an async closure.
#[derive(Clone)]
pub struct FnCheck {
    name: String,
    check: BoxedCheck,
}

impl FnCheck {
    /// An item named `name` running `check`.
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckOutcome> + Send + 'static,
    {
        FnCheck {
            name: name.into(),
            check: Arc::new(move || Box::pin(check())),
        }
    }
}

#[async_trait]
impl CheckItem for FnCheck {
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&self) -> CheckOutcome {
        (self.check)().await
    }
}

/// Every endpoint answers `probe` as healthy. With no endpoints: not
/// applicable.
pub struct ProbeCheck {
    name: String,
    probe: Arc<dyn HealthProbe>,
    endpoints: Vec<Endpoint>,
    timeout: Duration,
}

impl ProbeCheck {
    /// An item named `name` probing each of `endpoints` once, 5 s timeout.
    pub fn new(
        name: impl Into<String>,
        probe: Arc<dyn HealthProbe>,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        ProbeCheck {
            name: name.into(),
            probe,
            endpoints,
            timeout: Duration::from_secs(5),
        }
    }

    /// The time one probe may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl CheckItem for ProbeCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> CheckOutcome {
        if self.endpoints.is_empty() {
            return CheckOutcome::not_applicable("no endpoint given");
        }
        let mut bad = Vec::new();
        for e in &self.endpoints {
            let outcome = tokio::time::timeout(self.timeout, self.probe.check(e, self.timeout))
                .await
                .unwrap_or_else(|_| ProbeOutcome::unhealthy("timed out"));
            if let ProbeOutcome::Unhealthy { reason } = outcome {
                bad.push(format!("{} ({}): {reason}", e.replica, e.addr));
            }
        }
        if bad.is_empty() {
            CheckOutcome::pass(format!("{} endpoints healthy", self.endpoints.len()))
        } else {
            CheckOutcome::fail(bad.join("; "))
        }
    }
}

/// Every migration of the source is applied, successfully, with the same
/// checksum, and the history holds none the source lacks.
pub struct MigrationsCheck {
    driver: Arc<dyn MigrationDriver>,
    expected: BTreeMap<Version, String>,
}

impl MigrationsCheck {
    /// An item comparing `driver`'s history with `expected` (version →
    /// checksum, as the migration source computes them).
    pub fn new(driver: Arc<dyn MigrationDriver>, expected: BTreeMap<Version, String>) -> Self {
        MigrationsCheck { driver, expected }
    }
}

#[async_trait]
impl CheckItem for MigrationsCheck {
    fn name(&self) -> &str {
        "migrations applied"
    }

    async fn check(&self) -> CheckOutcome {
        if self.expected.is_empty() {
            return CheckOutcome::not_applicable("the migration source has no migration");
        }
        let history = match self.driver.history().await {
            Ok(h) => h,
            Err(e) => return CheckOutcome::fail(format!("cannot read the history: {e}")),
        };
        let mut problems = Vec::new();
        let applied: BTreeMap<&Version, _> = history.iter().map(|m| (&m.version, m)).collect();
        for (v, checksum) in &self.expected {
            match applied.get(v) {
                None => problems.push(format!("{v} not applied")),
                Some(m) if !m.success => problems.push(format!("{v} failed")),
                Some(m) if !m.baseline && &m.checksum != checksum => {
                    problems.push(format!("{v} checksum differs from the source"))
                }
                Some(_) => {}
            }
        }
        for m in &history {
            if !m.baseline && !self.expected.contains_key(&m.version) {
                problems.push(format!("{} applied but not in the source", m.version));
            }
        }
        if problems.is_empty() {
            CheckOutcome::pass(format!("{} migrations applied", self.expected.len()))
        } else {
            CheckOutcome::fail(problems.join("; "))
        }
    }
}

fn query(text: &str, window: Duration) -> MetricQuery {
    MetricQuery {
        metric: "checklist".into(),
        query: text.to_string(),
        window,
        args: BTreeMap::new(),
    }
}

/// The bound a [`MetricCheck`] applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
}

/// A query's value within a bound. "No data" fails, unless the item was
/// told it means the item does not apply.
pub struct MetricCheck {
    name: String,
    provider: Arc<dyn MetricProvider>,
    query: String,
    bound: Bound,
    unit: &'static str,
    no_data: Option<String>,
}

impl MetricCheck {
    /// An item named `name` checking `query` against `bound`.
    pub fn new(
        name: impl Into<String>,
        provider: Arc<dyn MetricProvider>,
        query: impl Into<String>,
        bound: Bound,
    ) -> Self {
        MetricCheck {
            name: name.into(),
            provider,
            query: query.into(),
            bound,
            unit: "",
            no_data: None,
        }
    }

    /// Shows values with `unit` (`s` values are also shown as durations).
    pub fn unit(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    /// "No data" means the item does not apply, because `reason`.
    pub fn no_data_means_not_applicable(mut self, reason: impl Into<String>) -> Self {
        self.no_data = Some(reason.into());
        self
    }

    fn show(&self, v: f64) -> String {
        if self.unit == "s" && v.is_finite() && v >= 0.0 {
            humantime::format_duration(Duration::from_secs(v.round() as u64)).to_string()
        } else {
            format!("{v}{}", self.unit)
        }
    }
}

#[async_trait]
impl CheckItem for MetricCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> CheckOutcome {
        match self
            .provider
            .measure(&query(&self.query, Duration::from_secs(300)))
            .await
        {
            Err(e) => CheckOutcome::fail(format!("query failed: {e}")),
            Ok(Measurement::Value(v)) => {
                let (ok, rule) = match self.bound {
                    Bound::AtLeast(min) => (v >= min, format!("at least {}", self.show(min))),
                    Bound::AtMost(max) => (v <= max, format!("at most {}", self.show(max))),
                };
                let detail = format!("{} ({rule})", self.show(v));
                if ok {
                    CheckOutcome::pass(detail)
                } else {
                    CheckOutcome::fail(detail)
                }
            }
            Ok(_) => match &self.no_data {
                Some(reason) => CheckOutcome::not_applicable(reason.clone()),
                None => CheckOutcome::fail(format!("no data for {}", self.query)),
            },
        }
    }
}

/// The request shares each slot observed over a window match the split
/// the state store records, within a tolerance (default 5 points).
pub struct TrafficCheck {
    store: Arc<dyn StateStore>,
    service: ServiceName,
    provider: Arc<dyn MetricProvider>,
    rate_query: String,
    window: Duration,
    tolerance: f64,
}

impl TrafficCheck {
    /// An item for `service`: the split comes from `store`; each slot's
    /// request rate from `rate_query` with `{slot}` replaced by the slot
    /// name (`blue`/`green`), e.g.
    /// `sum(rate(atlas_proxy_requests_total{service="checkout",slot="{slot}"}[5m]))`.
    pub fn new(
        store: Arc<dyn StateStore>,
        service: ServiceName,
        provider: Arc<dyn MetricProvider>,
        rate_query: impl Into<String>,
    ) -> Self {
        TrafficCheck {
            store,
            service,
            provider,
            rate_query: rate_query.into(),
            window: Duration::from_secs(300),
            tolerance: 0.05,
        }
    }

    /// The largest difference allowed between a slot's observed share and
    /// its weight, as a fraction (0.05 = 5 points).
    pub fn tolerance(mut self, fraction: f64) -> Self {
        self.tolerance = fraction;
        self
    }
}

#[async_trait]
impl CheckItem for TrafficCheck {
    fn name(&self) -> &str {
        "traffic distribution"
    }

    async fn check(&self) -> CheckOutcome {
        let state = match self.store.load(&self.service).await {
            Ok(Some(s)) => s.value,
            Ok(None) => {
                return CheckOutcome::not_applicable(format!(
                    "no rollout of {} recorded",
                    self.service
                ));
            }
            Err(e) => return CheckOutcome::fail(format!("cannot read the state: {e}")),
        };
        let canary_weight = f64::from(state.weight.percent()) / 100.0;
        // After a promotion the new slot is stable with all traffic.
        let (canary, stable) = (state.canary(), state.stable);
        let mut rates = Vec::new();
        for slot in [canary, stable] {
            let text = self.rate_query.replace("{slot}", &slot.to_string());
            match self.provider.measure(&query(&text, self.window)).await {
                Ok(Measurement::Value(v)) => rates.push(v.max(0.0)),
                Ok(_) => rates.push(0.0),
                Err(e) => return CheckOutcome::fail(format!("query failed: {e}")),
            }
        }
        let total = rates[0] + rates[1];
        if total <= 0.0 {
            return CheckOutcome::fail("no requests observed in the window");
        }
        let observed = rates[0] / total;
        let detail = format!(
            "{canary} observed {:.1} % of requests, split says {:.1} % (tolerance {:.1} points)",
            observed * 100.0,
            canary_weight * 100.0,
            self.tolerance * 100.0
        );
        if (observed - canary_weight).abs() <= self.tolerance {
            CheckOutcome::pass(detail)
        } else {
            CheckOutcome::fail(detail)
        }
    }
}

/// A quality gate as a checklist item (the benchmark gate, say).
pub struct GateCheck {
    gate: Arc<dyn Gate>,
    ctx: GateContext,
}

impl GateCheck {
    /// An item evaluating `gate` for `ctx`.
    pub fn new(gate: impl Gate + 'static, ctx: GateContext) -> Self {
        GateCheck {
            gate: Arc::new(gate),
            ctx,
        }
    }
}

#[async_trait]
impl CheckItem for GateCheck {
    fn name(&self) -> &str {
        self.gate.name()
    }

    async fn check(&self) -> CheckOutcome {
        match self.gate.evaluate(&self.ctx).await {
            Ok(v) if v.passed => CheckOutcome::pass(v.summary),
            Ok(v) => CheckOutcome::fail(if v.details.is_empty() {
                v.summary
            } else {
                format!("{}: {}", v.summary, v.details.join("; "))
            }),
            Err(e) => CheckOutcome::fail(e.to_string()),
        }
    }
}
