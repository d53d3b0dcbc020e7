//! [`EscalationPolicy`]: routes notifications to notifiers by severity and
//! priority, de-duplicates them, rate-limits each route, and escalates
//! alerts nobody resolved within their priority's response target.
//!
//! The standard matrix ([`EscalationPolicy::standard`]): critical alerts
//! page (PagerDuty), warnings go to chat (Slack), and a warning still
//! firing after its response target (P2: 1 hour, or whatever its
//! `priority` label says: P1 15 minutes, P3 4 hours) is escalated to the
//! pager. Info notifications have no route there and are dropped, saying
//! so in the [`DispatchReport`].
//!
//! Rules, in order:
//!
//! - **Routing**: a notification goes to every route whose severities and
//!   priorities it matches (an empty set matches all).
//! - **De-duplication**: an alert is identified by its [`dedup_key`]. A
//!   firing notification already delivered on a route within the repeat
//!   interval (default 1 hour) is not sent there again; a resolved one is
//!   sent once, to the routes that had the alert firing (and to the
//!   escalation target if it was escalated), or to the matching routes for
//!   an alert this policy never saw firing.
//! - **Rate limiting**: each route may carry a [`RateLimit`]; firing
//!   notifications beyond it are dropped on that route and reported.
//!   Resolutions are never rate-limited, so incidents always close.
//! - **Retries**: each notifier retries its own transient failures
//!   (they all take a [`RetryConfig`](atlas_core::retry::RetryConfig)). A
//!   route that still fails is reported and not marked delivered, so the
//!   sender's next re-send (Alertmanager re-sends on a 5xx) tries it again.
//! - **Memory**: a firing alert not sent again for [`FORGET_AFTER`] (24
//!   hours) is forgotten, as is a resolved one after the repeat interval.
//! - **Escalation**: [`EscalationPolicy::escalate_overdue`] (also run on
//!   every notification, and by [`EscalationPolicy::spawn_escalation`] on a
//!   timer) sends each alert firing for longer than its priority's
//!   response target to the escalation target once, labelled
//!   `escalated="true"`, unless that notifier already has it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use atlas_core::{Error, Notification, Notifier, Result, Severity};
use tracing::Instrument;

use crate::identity::{Priority, dedup_key};

/// The default interval before a still-firing alert is delivered again on a
/// route: 1 hour.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a firing alert that nobody sent again is remembered: 24
/// hours. Alertmanager re-sends firing alerts every few hours, so one not
/// seen for a day has gone without a resolution; forgetting it keeps the
/// policy's memory bounded.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// At most `burst` notifications per `per` on one route, refilled evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The most notifications sent at once.
    pub burst: u32,
    /// The time in which `burst` tokens refill.
    pub per: Duration,
}

impl RateLimit {
    /// `burst` notifications per `per`. Slack's incoming webhooks allow
    /// about one message per second: `RateLimit::new(1, Duration::from_secs(1))`.
    pub fn new(burst: u32, per: Duration) -> Self {
        RateLimit { burst, per }
    }
}

/// One destination and what it receives.
#[derive(Clone)]
pub struct Route {
    name: String,
    notifier: Arc<dyn Notifier>,
    severities: Vec<Severity>,
    priorities: Vec<Priority>,
    rate_limit: Option<RateLimit>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("severities", &self.severities)
            .field("priorities", &self.priorities)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl Route {
    /// A route named `name` (used in reports and logs) to `notifier`,
    /// matching everything until narrowed.
    pub fn new(name: impl Into<String>, notifier: Arc<dyn Notifier>) -> Self {
        Route {
            name: name.into(),
            notifier,
            severities: Vec::new(),
            priorities: Vec::new(),
            rate_limit: None,
        }
    }

    /// Also match `severity` (the first call narrows from "all").
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severities.push(severity);
        self
    }

    /// Also match `priority` (the first call narrows from "all").
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priorities.push(priority);
        self
    }

    /// Limits this route's firing notifications.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    fn matches(&self, severity: Severity, priority: Priority) -> bool {
        (self.severities.is_empty() || self.severities.contains(&severity))
            && (self.priorities.is_empty() || self.priorities.contains(&priority))
    }
}

/// Why a route did not get a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Suppressed {
    /// Already delivered there within the repeat interval, or already
    /// resolved.
    Duplicate,
    /// Over the route's rate limit.
    RateLimited,
    /// No route matches the notification.
    NoRoute,
}

/// What happened to one notification (or one escalation pass).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct DispatchReport {
    /// Routes that accepted it.
    pub delivered: Vec<String>,
    /// Routes that skipped it, and why (`"*"` for [`Suppressed::NoRoute`]).
    pub suppressed: Vec<(String, Suppressed)>,
    /// Routes that failed after their retries.
    pub failed: Vec<(String, Error)>,
    /// Alerts escalated, by dedup key.
    pub escalated: Vec<String>,
}

impl DispatchReport {
    fn merge(&mut self, other: DispatchReport) {
        self.delivered.extend(other.delivered);
        self.suppressed.extend(other.suppressed);
        self.failed.extend(other.failed);
        self.escalated.extend(other.escalated);
    }
}

struct Tracked {
    latest: Notification,
    since: SystemTime,
    last_seen: SystemTime,
    /// Route name → when the firing alert was last delivered there.
    delivered: HashMap<String, SystemTime>,
    escalated: bool,
    resolved_at: Option<SystemTime>,
}

#[derive(Default)]
struct PolicyState {
    alerts: HashMap<String, Tracked>,
    /// Route name → (tokens, last refill).
    buckets: HashMap<String, (f64, SystemTime)>,
}

/// Routes, de-duplicates, rate-limits and escalates notifications (see the
/// module docs). It is itself a [`Notifier`], so the engine, the alert
/// evaluator or the Alertmanager receiver can send to it.
///
/// ```no_run
/// use std::sync::Arc;
/// use atlas_metrics::{EscalationPolicy, PagerDutyNotifier, SlackNotifier};
/// # fn demo() -> atlas_core::Result<()> {
/// let pagerduty = Arc::new(PagerDutyNotifier::builder("R0UT1NGKEY").build()?);
/// let slack = Arc::new(SlackNotifier::builder("https://hooks.slack.com/services/T/B/X").build()?);
/// let policy = EscalationPolicy::standard(pagerduty, slack).build()?;
/// # let _ = policy; Ok(()) }
/// ```
pub struct EscalationPolicy {
    routes: Vec<Route>,
    escalation: Option<Route>,
    targets: BTreeMap<Priority, Duration>,
    repeat_interval: Duration,
    state: Mutex<PolicyState>,
}

impl fmt::Debug for EscalationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EscalationPolicy")
            .field("routes", &self.routes)
            .field("escalation", &self.escalation)
            .field("targets", &self.targets)
            .field("repeat_interval", &self.repeat_interval)
            .finish()
    }
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

impl EscalationPolicy {
    /// An empty builder: no routes, the default response targets (P1 15
    /// min, P2 1 h, P3 4 h), a 1-hour repeat interval.
    pub fn builder() -> EscalationPolicyBuilder {
        EscalationPolicyBuilder {
            routes: Vec::new(),
            escalation: None,
            targets: [Priority::P1, Priority::P2, Priority::P3]
                .into_iter()
                .map(|p| (p, p.response_target()))
                .collect(),
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
        }
    }

    /// The standard matrix: critical → `pager`, warning → `chat` (rate
    /// limited to one message a second), and alerts firing past their
    /// response target escalated to `pager`.
    pub fn standard(pager: Arc<dyn Notifier>, chat: Arc<dyn Notifier>) -> EscalationPolicyBuilder {
        Self::builder()
            .route(Route::new("pagerduty", pager.clone()).severity(Severity::Critical))
            .route(
                Route::new("slack", chat)
                    .severity(Severity::Warning)
                    .rate_limit(RateLimit::new(1, Duration::from_secs(1))),
            )
            .escalate_to(Route::new("pagerduty", pager))
    }

    /// The number of alerts the policy remembers (firing, or resolved
    /// within the repeat interval).
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .alerts
            .len()
    }

    /// The response target of `priority`.
    pub fn response_target(&self, priority: Priority) -> Duration {
        self.targets
            .get(&priority)
            .copied()
            .unwrap_or_else(|| priority.response_target())
    }

    /// Takes a token from `route`'s bucket, if it has a limit.
    fn take_token(state: &mut PolicyState, route: &Route, now: SystemTime) -> bool {
        let Some(limit) = route.rate_limit else {
            return true;
        };
        let burst = f64::from(limit.burst);
        let (tokens, last) = state
            .buckets
            .entry(route.name.clone())
            .or_insert((burst, now));
        let refill = since(now, *last).as_secs_f64() / limit.per.as_secs_f64() * burst;
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Routes `n` as of `now` (see the module docs); the [`Notifier`]
    /// implementation calls this with the current time, then
    /// [`escalate_overdue`](Self::escalate_overdue).
    pub async fn dispatch_at(&self, n: &Notification, now: SystemTime) -> DispatchReport {
        let key = dedup_key(n);
        let priority = Priority::of(n);
        let span = tracing::info_span!("escalation.dispatch", key = %key, %priority, resolved = n.resolved);
        self.dispatch(n, now, key, priority).instrument(span).await
    }

    async fn dispatch(
        &self,
        n: &Notification,
        now: SystemTime,
        key: String,
        priority: Priority,
    ) -> DispatchReport {
        let mut report = DispatchReport::default();
        let matching: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.matches(n.severity, priority))
            .collect();
        // Decide under the lock, deliver without it; a firing delivery is
        // reserved first so a concurrent duplicate is suppressed.
        let plan: Vec<Route> = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let repeat = self.repeat_interval;
            state.alerts.retain(|_, t| match t.resolved_at {
                Some(r) => since(now, r) < repeat,
                None => since(now, t.last_seen) < FORGET_AFTER,
            });
            if n.resolved {
                match state.alerts.get_mut(&key) {
                    Some(t) if t.resolved_at.is_some() => {
                        report.suppressed.push(("*".into(), Suppressed::Duplicate));
                        Vec::new()
                    }
                    Some(t) => {
                        t.resolved_at = Some(now);
                        let mut to: Vec<Route> = self
                            .routes
                            .iter()
                            .filter(|r| t.delivered.contains_key(&r.name))
                            .cloned()
                            .collect();
                        if let Some(e) = &self.escalation
                            && t.escalated
                            && !to.iter().any(|r| r.name == e.name)
                        {
                            to.push(e.clone());
                        }
                        to
                    }
                    None => matching.iter().map(|r| (*r).clone()).collect(),
                }
            } else {
                let revived = state
                    .alerts
                    .get(&key)
                    .is_some_and(|t| t.resolved_at.is_some());
                if revived {
                    state.alerts.remove(&key);
                }
                let mut to = Vec::new();
                for route in &matching {
                    let last = state
                        .alerts
                        .get(&key)
                        .and_then(|t| t.delivered.get(&route.name).copied());
                    if last.is_some_and(|l| since(now, l) < repeat) {
                        report
                            .suppressed
                            .push((route.name.clone(), Suppressed::Duplicate));
                    } else if !Self::take_token(&mut state, route, now) {
                        report
                            .suppressed
                            .push((route.name.clone(), Suppressed::RateLimited));
                    } else {
                        to.push((*route).clone());
                    }
                }
                let tracked = state.alerts.entry(key.clone()).or_insert_with(|| Tracked {
                    latest: n.clone(),
                    since: n.at.min(now),
                    last_seen: now,
                    delivered: HashMap::new(),
                    escalated: false,
                    resolved_at: None,
                });
                tracked.latest = n.clone();
                tracked.last_seen = now;
                for r in &to {
                    tracked.delivered.insert(r.name.clone(), now);
                }
                to
            }
        };
        if matching.is_empty() && plan.is_empty() {
            report.suppressed.push(("*".into(), Suppressed::NoRoute));
        }
        for route in plan {
            match route.notifier.notify(n).await {
                Ok(()) => report.delivered.push(route.name),
                Err(e) => {
                    tracing::warn!(route = %route.name, error = %e, "delivery failed");
                    if !n.resolved {
                        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(t) = state.alerts.get_mut(&key) {
                            t.delivered.remove(&route.name);
                        }
                    }
                    report.failed.push((route.name, e));
                }
            }
        }
        tracing::info!(
            key = %key,
            delivered = ?report.delivered,
            suppressed = ?report.suppressed,
            failed = report.failed.len(),
            "notification dispatched"
        );
        report
    }

    /// Escalates every alert firing for longer than its priority's response
    /// target as of `now` (see the module docs).
    pub async fn escalate_overdue(&self, now: SystemTime) -> DispatchReport {
        let mut report = DispatchReport::default();
        let Some(target) = &self.escalation else {
            return report;
        };
        let due: Vec<(String, Notification, Duration)> = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .alerts
                .iter_mut()
                .filter(|(_, t)| {
                    t.resolved_at.is_none()
                        && !t.escalated
                        && !t.delivered.contains_key(&target.name)
                        && since(now, t.since) >= self.response_target(Priority::of(&t.latest))
                })
                .map(|(k, t)| {
                    // Reserved, so a concurrent pass does not escalate twice.
                    t.escalated = true;
                    (k.clone(), t.latest.clone(), since(now, t.since))
                })
                .collect()
        };
        for (key, latest, age) in due {
            let priority = Priority::of(&latest);
            let mut n = latest.with_label("escalated", "true");
            n.summary = format!(
                "{} (unresolved {} past its {priority} response target)",
                n.summary,
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            );
            match target.notifier.notify(&n).await {
                Ok(()) => {
                    tracing::warn!(key = %key, %priority, route = %target.name, "alert escalated");
                    report.escalated.push(key);
                    report.delivered.push(target.name.clone());
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "escalation failed");
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(t) = state.alerts.get_mut(&key) {
                        t.escalated = false;
                    }
                    report.failed.push((target.name.clone(), e));
                }
            }
        }
        report
    }

    /// Runs [`escalate_overdue`](Self::escalate_overdue) every `every`
    /// until the returned task is aborted.
    pub fn spawn_escalation(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.escalate_overdue(SystemTime::now()).await;
            }
        })
    }
}

#[async_trait]
impl Notifier for EscalationPolicy {
    /// Dispatches now, then escalates what is overdue.
    ///
    /// # Errors
    /// When a route failed after its retries: [`Error::Transient`] if every
    /// failure was transient (the sender should try again), else
    /// [`Error::Backend`] naming the routes.
    async fn notify(&self, notification: &Notification) -> Result<()> {
        let now = SystemTime::now();
        let mut report = self.dispatch_at(notification, now).await;
        report.merge(self.escalate_overdue(now).await);
        if report.failed.is_empty() {
            return Ok(());
        }
        let transient = report.failed.iter().all(|(_, e)| e.is_transient());
        let message = report
            .failed
            .iter()
            .map(|(r, e)| format!("{r}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(if transient {
            Error::transient("escalation", message)
        } else {
            Error::backend("escalation", message)
        })
    }
}

/// Builds an [`EscalationPolicy`].
#[derive(Debug)]
pub struct EscalationPolicyBuilder {
    routes: Vec<Route>,
    escalation: Option<Route>,
    targets: BTreeMap<Priority, Duration>,
    repeat_interval: Duration,
}

impl EscalationPolicyBuilder {
    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Where overdue alerts are escalated (the route's matchers are not
    /// used). A route with the same name counts as the same notifier.
    pub fn escalate_to(mut self, route: Route) -> Self {
        self.escalation = Some(route);
        self
    }

    /// Overrides `priority`'s response target.
    pub fn response_target(mut self, priority: Priority, target: Duration) -> Self {
        self.targets.insert(priority, target);
        self
    }

    /// The interval before a still-firing alert is delivered again on a
    /// route. Default 1 hour.
    pub fn repeat_interval(mut self, interval: Duration) -> Self {
        self.repeat_interval = interval;
        self
    }

    /// Checks the settings and builds the policy.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `escalation.routes` (none, or two with one
    /// name), `escalation.routes.<name>.rate_limit` (zero burst or
    /// interval), `escalation.response_targets.<P>` (zero),
    /// `escalation.repeat_interval` (zero).
    pub fn build(self) -> Result<EscalationPolicy> {
        if self.routes.is_empty() {
            return Err(Error::invalid(
                "escalation.routes",
                "must have at least one route",
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if self.routes[..i].iter().any(|o| o.name == r.name) {
                return Err(Error::invalid(
                    "escalation.routes",
                    format!("two routes are named {:?}", r.name),
                ));
            }
        }
        for r in self.routes.iter().chain(&self.escalation) {
            if let Some(l) = r.rate_limit
                && (l.burst == 0 || l.per.is_zero())
            {
                return Err(Error::invalid(
                    format!("escalation.routes.{}.rate_limit", r.name),
                    "burst and interval must be greater than 0",
                ));
            }
        }
        for (p, t) in &self.targets {
            if t.is_zero() {
                return Err(Error::invalid(
                    format!("escalation.response_targets.{p}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.repeat_interval.is_zero() {
            return Err(Error::invalid(
                "escalation.repeat_interval",
                "must be greater than 0",
            ));
        }
        Ok(EscalationPolicy {
            routes: self.routes,
            escalation: self.escalation,
            targets: self.targets,
            repeat_interval: self.repeat_interval,
            state: Mutex::new(PolicyState::default()),
        })
    }
}
