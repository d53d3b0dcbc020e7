//! [`AlertmanagerNotifier`]: delivers [`Notification`]s to Alertmanager's
//! v2 API (`POST /api/v2/alerts`).
//!
//! Each notification becomes one alert. Its labels identify it (Alertmanager
//! groups and deduplicates by them), so a firing and a resolved notification
//! with the same labels are the same alert: the resolved one closes it. The
//! mapping:
//!
//! - labels: the notification's labels, plus `severity` and, when absent,
//!   `alertname="AtlasNotification"`; labels with empty values are dropped
//!   (Alertmanager treats them as absent);
//! - annotations: `summary` from the notification's summary;
//! - `startsAt`: the notification's time;
//! - `endsAt`: for a resolved notification its time (the alert resolves);
//!   for a firing one its time plus the firing TTL (default 4 minutes), so
//!   an alert that is not sent again resolves by itself, as Prometheus does
//!   it. [`AlertEvaluator`](atlas_core::alerts::AlertEvaluator) re-sends
//!   firing alerts every minute by default.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::retry::RetryConfig;
use atlas_core::{Error, Notification, Notifier, Result};
use serde::Serialize;
use tracing::Instrument;

use crate::client::{ApiClient, Credentials};
use crate::delivery::rfc3339;
use crate::tls::TlsOptions;

const BACKEND: &str = "alertmanager";

/// The default time a firing alert stays active without being sent again: 4 minutes.
pub const DEFAULT_FIRING_TTL: Duration = Duration::from_secs(240);

/// The `alertname` given to notifications that have none.
pub const DEFAULT_ALERTNAME: &str = "AtlasNotification";

/// Sends notifications to Alertmanager (see the module docs).
///
/// Defaults: no credentials, 10 s timeout per request,
/// [`RetryConfig::control_plane`] for transient failures, firing TTL 4
/// minutes.
///
/// ```no_run
/// use atlas_core::{Notification, Notifier, Severity};
/// use atlas_metrics::AlertmanagerNotifier;
/// # async fn demo() -> atlas_core::Result<()> {
/// let am = AlertmanagerNotifier::builder("http://127.0.0.1:9093").build()?;
/// am.notify(&Notification::new(Severity::Critical, "checkout: rolled back v3")
///     .with_label("alertname", "RolloutRolledBack")
///     .with_label("service", "checkout"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AlertmanagerNotifier {
    api: ApiClient,
    retry: RetryConfig,
    firing_ttl: Duration,
    generator_url: Option<String>,
}

impl fmt::Debug for AlertmanagerNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertmanagerNotifier")
            .field("api", &self.api)
            .field("retry", &self.retry)
            .field("firing_ttl", &self.firing_ttl)
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    generator_url: Option<String>,
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl AlertmanagerNotifier {
    /// A builder for the Alertmanager at `url`, e.g. `http://127.0.0.1:9093`.
    pub fn builder(url: impl Into<String>) -> AlertmanagerNotifierBuilder {
        AlertmanagerNotifierBuilder {
            url: url.into(),
            credentials: None,
            tls: None,
            timeout: Duration::from_secs(10),
            retry: RetryConfig::control_plane(),
            firing_ttl: DEFAULT_FIRING_TTL,
            generator_url: None,
        }
    }

    /// Alertmanager's base URL (credentials removed).
    pub fn url(&self) -> &str {
        self.api.base().as_str()
    }

    fn alert(&self, n: &Notification) -> Result<PostableAlert> {
        let mut labels = BTreeMap::new();
        for (k, v) in &n.labels {
            if !is_label_name(k) {
                return Err(Error::invalid(
                    format!("notification.labels.{k}"),
                    "must be letters, digits and '_', not starting with a digit",
                ));
            }
            if !v.is_empty() {
                labels.insert(k.clone(), v.clone());
            }
        }
        labels
            .entry("alertname".to_string())
            .or_insert_with(|| DEFAULT_ALERTNAME.to_string());
        labels.insert("severity".to_string(), n.severity.to_string());
        let ends = if n.resolved {
            n.at
        } else {
            n.at.checked_add(self.firing_ttl).unwrap_or(n.at)
        };
        Ok(PostableAlert {
            labels,
            annotations: [("summary".to_string(), n.summary.clone())].into(),
            starts_at: rfc3339(n.at),
            ends_at: rfc3339(ends),
            generator_url: self.generator_url.clone(),
        })
    }

    /// Sends several notifications in one request.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `notification.labels.<k>` for a label name
    /// Alertmanager refuses, or on `notification` when Alertmanager answers
    /// 400; [`Error::Transient`] for connection failures, timeouts and 5xx
    /// (after the retries); [`Error::Backend`] otherwise.
    pub async fn send(&self, notifications: &[Notification]) -> Result<()> {
        if notifications.is_empty() {
            return Ok(());
        }
        let alerts = notifications
            .iter()
            .map(|n| self.alert(n))
            .collect::<Result<Vec<_>>>()?;
        let span = tracing::info_span!("alertmanager.send", alerts = alerts.len());
        self.retry
            .run(BACKEND, "alertmanager post", || async {
                let request = self.api.post("api/v2/alerts")?.json(&alerts);
                let (status, body) = self.api.send(request).await?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(self.api.status_error(
                        status,
                        &String::from_utf8_lossy(&body),
                        "notification",
                    ))
                }
            })
            .instrument(span)
            .await?;
        for n in notifications {
            tracing::debug!(summary = %n.summary, resolved = n.resolved, "alert delivered");
        }
        Ok(())
    }
}

#[async_trait]
impl Notifier for AlertmanagerNotifier {
    async fn notify(&self, notification: &Notification) -> Result<()> {
        self.send(std::slice::from_ref(notification)).await
    }
}

/// Builds an [`AlertmanagerNotifier`].
#[derive(Debug)]
pub struct AlertmanagerNotifierBuilder {
    url: String,
    credentials: Option<Credentials>,
    tls: Option<TlsOptions>,
    timeout: Duration,
    retry: RetryConfig,
    firing_ttl: Duration,
    generator_url: Option<String>,
}

impl AlertmanagerNotifierBuilder {
    /// Authenticate with `Authorization: Bearer <token>` (for a proxy in front).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Bearer(token.into()));
        self
    }

    /// Authenticate with HTTP basic auth.
    pub fn basic_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Basic {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Trust the CAs of `tls` for an `https` URL. Default: the system store.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The time one request may take. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How transient failures are retried. Default:
    /// [`RetryConfig::control_plane`]. Its per-attempt timeout bounds each
    /// request too, besides [`timeout`](Self::timeout).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// How long a firing alert stays active without being sent again.
    /// Default 4 minutes; keep it above the sender's resend interval.
    pub fn firing_ttl(mut self, ttl: Duration) -> Self {
        self.firing_ttl = ttl;
        self
    }

    /// A link sent as every alert's `generatorURL` (e.g. the tool's UI).
    pub fn generator_url(mut self, url: impl Into<String>) -> Self {
        self.generator_url = Some(url.into());
        self
    }

    /// Checks the settings and builds the notifier.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `alertmanager.url`, `alertmanager.timeout`
    /// (zero), `alertmanager.firing_ttl` (zero), `alertmanager.retry.*`
    /// (see [`RetryConfig::validate`]), `alertmanager.generator_url` (not an absolute URL), and the
    /// errors of [`TlsOptions::client_config`].
    pub fn build(self) -> Result<AlertmanagerNotifier> {
        if self.firing_ttl.is_zero() {
            return Err(Error::invalid(
                "alertmanager.firing_ttl",
                "must be greater than 0",
            ));
        }
        self.retry.validate("alertmanager.retry")?;
        if let Some(u) = &self.generator_url {
            reqwest::Url::parse(u).map_err(|e| {
                Error::invalid("alertmanager.generator_url", format!("is not a URL: {e}"))
            })?;
        }
        let api = ApiClient::new(
            BACKEND,
            "alertmanager.url",
            &self.url,
            self.credentials,
            self.tls.as_ref(),
            self.timeout,
        )?;
        Ok(AlertmanagerNotifier {
            api,
            retry: self.retry,
            firing_ttl: self.firing_ttl,
            generator_url: self.generator_url,
        })
    }
}
