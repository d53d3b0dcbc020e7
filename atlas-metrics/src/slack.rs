//! [`SlackNotifier`]: posts notifications to a Slack incoming webhook as
//! Block Kit messages.
//!
//! One message per notification:
//!
//! - `text`: the fallback line shown in push notifications,
//!   `[FIRING critical P1] <summary>`;
//! - `blocks`: a `header` (state, severity, priority), a `section` with the
//!   summary, a `section` whose `fields` are the labels (Slack shows at most
//!   10), and a `context` with the alert's dedup key and time.
//!
//! Slack answers `200 ok`; a 4xx names the problem (`invalid_payload`,
//! `no_service`, `channel_is_archived`) and is not retried, a 429 or 5xx is.
//! The webhook URL holds the channel's token in its path, so it never
//! shows in `Debug`, logs or errors.

use std::fmt;

use async_trait::async_trait;
use atlas_core::{Notification, Notifier, Result};
use serde_json::{Value, json};

use crate::delivery::{Delivery, HttpSettings, http_settings_setters, rfc3339, truncate};
use crate::identity::{Priority, dedup_key};

const BACKEND: &str = "slack";
/// Slack's limits: header text 150 characters, section text 3000, a field
/// 2000, ten fields per section.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const FIELDS_MAX: usize = 10;

/// Sends notifications to a Slack incoming webhook (see the module docs).
///
/// ```no_run
/// use atlas_core::{Notification, Notifier, Severity};
/// use atlas_metrics::SlackNotifier;
/// # async fn demo() -> atlas_core::Result<()> {
/// let slack = SlackNotifier::builder("https://hooks.slack.com/services/T000/B000/XXXX").build()?;
/// slack.notify(&Notification::new(Severity::Warning, "checkout: p99 above 800 ms")
///     .with_label("service", "checkout"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SlackNotifier {
    delivery: Delivery,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("url", &self.delivery.shown_url())
            .finish()
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped; everything else is text.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl SlackNotifier {
    /// A builder for the incoming webhook at `webhook_url`.
    pub fn builder(webhook_url: impl Into<String>) -> SlackNotifierBuilder {
        SlackNotifierBuilder {
            url: webhook_url.into(),
            settings: HttpSettings::default(),
        }
    }

    /// The Block Kit message for `n`, as sent.
    pub fn message(n: &Notification) -> Value {
        let state = if n.resolved { "RESOLVED" } else { "FIRING" };
        let priority = Priority::of(n);
        let icon = match (n.resolved, n.severity) {
            (true, _) => "✅",
            (false, atlas_core::Severity::Critical) => "🔴",
            (false, atlas_core::Severity::Warning) => "🟠",
            (false, _) => "🔵",
        };
        let fields: Vec<Value> = n
            .labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .take(FIELDS_MAX)
            .map(|(k, v)| {
                json!({
                    "type": "mrkdwn",
                    "text": truncate(&format!("*{}*\n{}", escape(k), escape(v)), FIELD_MAX),
                })
            })
            .collect();
        let mut blocks = vec![
            json!({
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate(&format!("{icon} {state} · {} · {priority}", n.severity), HEADER_MAX),
                    "emoji": true,
                },
            }),
            json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": truncate(&escape(&n.summary), SECTION_MAX)},
            }),
        ];
        if !fields.is_empty() {
            blocks.push(json!({"type": "section", "fields": fields}));
        }
        blocks.push(json!({
            "type": "context",
            "elements": [{
                "type": "mrkdwn",
                "text": format!("Atlas · `{}` · {}", dedup_key(n), rfc3339(n.at)),
            }],
        }));
        json!({
            "text": truncate(&format!("[{state} {} {priority}] {}", n.severity, n.summary), SECTION_MAX),
            "blocks": blocks,
        })
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    async fn notify(&self, notification: &Notification) -> Result<()> {
        let body = serde_json::to_vec(&Self::message(notification))
            .map_err(|e| atlas_core::Error::backend_with(BACKEND, "encoding the message", e))?;
        self.delivery
            .post_json("slack post", "notification", &body, Vec::new)
            .await?;
        tracing::debug!(key = %dedup_key(notification), resolved = notification.resolved, "slack message delivered");
        Ok(())
    }
}

/// Builds a [`SlackNotifier`].
#[derive(Debug)]
pub struct SlackNotifierBuilder {
    url: String,
    settings: HttpSettings,
}

http_settings_setters!(SlackNotifierBuilder);

impl SlackNotifierBuilder {
    /// Checks the settings and builds the notifier.
    ///
    /// # Errors
    /// [`atlas_core::Error::InvalidInput`] on `slack.url` (not an http(s)
    /// URL), `slack.timeout` (zero), `slack.retry.*`, and the errors of
    /// [`TlsOptions::client_config`](crate::TlsOptions::client_config).
    pub fn build(self) -> Result<SlackNotifier> {
        Ok(SlackNotifier {
            delivery: Delivery::new(BACKEND, &self.url, self.settings, true)?,
        })
    }
}
