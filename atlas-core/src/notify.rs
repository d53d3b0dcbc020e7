//! [`Notifier`]: where rollout events and alerts are sent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record: a rollout started or was promoted.
    Info,
    /// Someone should look soon.
    Warning,
    /// Someone should look now: a rollback, a firing critical alert.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// One message to a [`Notifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// How urgent it is.
    pub severity: Severity,
    /// A one-line summary, e.g. `checkout: rolled back v3 (analysis error-rate failed)`.
    pub summary: String,
    /// Labels identifying the source, e.g. `service`, `rollout`, `alertname`.
    pub labels: BTreeMap<String, String>,
    /// When it happened.
    pub at: SystemTime,
    /// For alerts: `true` when the condition has cleared.
    pub resolved: bool,
}

impl Notification {
    /// A notification with `severity` and `summary`, no labels, timestamped now.
    pub fn new(severity: Severity, summary: impl Into<String>) -> Self {
        Notification {
            severity,
            summary: summary.into(),
            labels: BTreeMap::new(),
            at: SystemTime::now(),
            resolved: false,
        }
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// Delivers [`Notification`]s: Alertmanager, a chat webhook, a log.
///
/// The engine never waits on a notifier to make a rollout decision: a failed
/// delivery is logged and the rollout goes on.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one notification.
    async fn notify(&self, notification: &Notification) -> Result<()>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn Notifier>` and
/// `Box<dyn Notifier>` are Notifiers too.
macro_rules! forward_notifier {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: Notifier + ?Sized> Notifier for $ptr<T> {
            async fn notify(&self, notification: &Notification) -> Result<()> {
                (**self).notify(notification).await
            }
        }
    )*};
}

forward_notifier!(Arc, Box);
