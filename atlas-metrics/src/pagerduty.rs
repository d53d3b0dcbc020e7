//! [`PagerDutyNotifier`]: PagerDuty Events API v2 (`POST /v2/enqueue`).
//!
//! A firing notification is a `trigger` event, a resolved one a `resolve`
//! event; both carry the alert's [`dedup_key`], derived from its labels, so
//! the resolve closes the incident the trigger opened and a repeated
//! trigger adds to it instead of opening another. The trigger's `payload`:
//!
//! - `summary`: the notification's summary (PagerDuty keeps 1024
//!   characters);
//! - `source`: the `instance` label, else `service`, else the configured
//!   source (default `atlas`);
//! - `severity`: `critical`, `warning` or `info`;
//! - `timestamp`: the notification's time;
//! - `component` (`service` label), `group` (`rollout` label), `class`
//!   (`alertname` label) when present;
//! - `custom_details`: every label and the priority.
//!
//! PagerDuty answers `202` with `{"status":"success"}`; `400` is the
//! caller's, `429` and 5xx are retried. The routing key is a secret: it
//! never shows in `Debug` or logs.

use std::fmt;

use async_trait::async_trait;
use atlas_core::{Error, Notification, Notifier, Result, Severity};
use serde_json::{Map, Value, json};

use crate::delivery::{Delivery, HttpSettings, http_settings_setters, rfc3339, truncate};
use crate::identity::{Priority, dedup_key};

const BACKEND: &str = "pagerduty";

/// The Events API v2 endpoint.
pub const EVENTS_V2_URL: &str = "https://events.pagerduty.com/v2/enqueue";

const SUMMARY_MAX: usize = 1024;

/// Sends notifications to PagerDuty (see the module docs).
///
/// ```no_run
/// use atlas_core::{Notification, Notifier, Severity};
/// use atlas_metrics::PagerDutyNotifier;
/// # async fn demo() -> atlas_core::Result<()> {
/// let pd = PagerDutyNotifier::builder("R0UT1NGKEY0000000000000000000000").build()?;
/// pd.notify(&Notification::new(Severity::Critical, "checkout: rolled back v3")
///     .with_label("alertname", "RolloutRolledBack")
///     .with_label("service", "checkout"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PagerDutyNotifier {
    delivery: Delivery,
    routing_key: String,
    source: String,
}

impl fmt::Debug for PagerDutyNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutyNotifier")
            .field("url", &self.delivery.shown_url())
            .field("routing_key", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

impl PagerDutyNotifier {
    /// A builder for the service whose integration (routing) key is
    /// `routing_key`.
    pub fn builder(routing_key: impl Into<String>) -> PagerDutyNotifierBuilder {
        PagerDutyNotifierBuilder {
            routing_key: routing_key.into(),
            url: EVENTS_V2_URL.to_string(),
            source: "atlas".to_string(),
            settings: HttpSettings::default(),
        }
    }

    /// The event for `n`, as sent.
    pub fn event(&self, n: &Notification) -> Value {
        let key = dedup_key(n);
        if n.resolved {
            return json!({
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": key,
            });
        }
        let label = |k: &str| n.labels.get(k).filter(|v| !v.is_empty());
        let mut details: Map<String, Value> = n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        details.insert("priority".into(), Priority::of(n).to_string().into());
        let mut payload = json!({
            "summary": truncate(&n.summary, SUMMARY_MAX),
            "source": label("instance").or(label("service")).unwrap_or(&self.source),
            "severity": match n.severity {
                Severity::Critical => "critical",
                Severity::Warning => "warning",
                Severity::Info => "info",
            },
            "timestamp": rfc3339(n.at),
            "custom_details": details,
        });
        for (field, from) in [
            ("component", "service"),
            ("group", "rollout"),
            ("class", "alertname"),
        ] {
            if let Some(v) = label(from) {
                payload[field] = Value::String(v.clone());
            }
        }
        json!({
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "client": "Atlas",
            "payload": payload,
        })
    }
}

#[async_trait]
impl Notifier for PagerDutyNotifier {
    async fn notify(&self, notification: &Notification) -> Result<()> {
        let event = self.event(notification);
        let body = serde_json::to_vec(&event)
            .map_err(|e| Error::backend_with(BACKEND, "encoding the event", e))?;
        let (_, reply) = self
            .delivery
            .post_json("pagerduty enqueue", "notification", &body, Vec::new)
            .await?;
        // A 2xx whose body is not a success means the event was not taken.
        let answer: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
        if answer.get("status").and_then(Value::as_str) != Some("success") {
            return Err(Error::backend(
                BACKEND,
                format!(
                    "unexpected answer: {}",
                    truncate(&String::from_utf8_lossy(&reply), 512)
                ),
            ));
        }
        tracing::debug!(
            dedup_key = %event["dedup_key"].as_str().unwrap_or_default(),
            action = %event["event_action"].as_str().unwrap_or_default(),
            "pagerduty event accepted"
        );
        Ok(())
    }
}

/// Builds a [`PagerDutyNotifier`].
pub struct PagerDutyNotifierBuilder {
    routing_key: String,
    url: String,
    source: String,
    settings: HttpSettings,
}

impl fmt::Debug for PagerDutyNotifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutyNotifierBuilder")
            .field("url", &self.url)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

http_settings_setters!(PagerDutyNotifierBuilder);

impl PagerDutyNotifierBuilder {
    /// The Events API URL. Default [`EVENTS_V2_URL`]; EU accounts use
    /// `https://events.eu.pagerduty.com/v2/enqueue`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The `source` of events whose labels have no `instance` or
    /// `service`. Default `atlas`.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Checks the settings and builds the notifier.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `pagerduty.routing_key` (empty or with
    /// whitespace), `pagerduty.source` (empty), `pagerduty.url`,
    /// `pagerduty.timeout` (zero), `pagerduty.retry.*`.
    pub fn build(self) -> Result<PagerDutyNotifier> {
        if self.routing_key.is_empty() || self.routing_key.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "pagerduty.routing_key",
                "must be a non-empty integration key without whitespace",
            ));
        }
        if self.source.trim().is_empty() {
            return Err(Error::invalid("pagerduty.source", "must not be empty"));
        }
        Ok(PagerDutyNotifier {
            delivery: Delivery::new(BACKEND, &self.url, self.settings, false)?,
            routing_key: self.routing_key,
            source: self.source,
        })
    }
}
