//! What identifies an alert across its notifications, and how urgent it is:
//! [`dedup_key`] and [`Priority`], shared by every notifier and the
//! [escalation policy](crate::escalation).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use atlas_core::{Error, Notification, Severity};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The label that sets a notification's priority explicitly (`P1`, `P2`,
/// `P3`, any case).
pub const PRIORITY_LABEL: &str = "priority";

/// How fast someone must respond, with the response target of each level:
/// P1 within 15 minutes, P2 within 1 hour, P3 within 4 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Respond within 15 minutes.
    P1,
    /// Respond within 1 hour.
    P2,
    /// Respond within 4 hours.
    P3,
}

impl Priority {
    /// The default response target: 15 min, 1 h, 4 h.
    pub fn response_target(self) -> Duration {
        match self {
            Priority::P1 => Duration::from_secs(15 * 60),
            Priority::P2 => Duration::from_secs(60 * 60),
            Priority::P3 => Duration::from_secs(4 * 60 * 60),
        }
    }

    /// The priority a severity implies when no `priority` label says
    /// otherwise: critical → P1, warning → P2, info → P3.
    pub fn from_severity(severity: Severity) -> Self {
        match severity {
            Severity::Critical => Priority::P1,
            Severity::Warning => Priority::P2,
            Severity::Info => Priority::P3,
        }
    }

    /// The notification's priority: its `priority` label when that is a
    /// valid level, otherwise the one its severity implies. An invalid
    /// label is logged, never fatal: an alert must still be delivered.
    pub fn of(notification: &Notification) -> Self {
        match notification.labels.get(PRIORITY_LABEL) {
            Some(v) => v.parse().unwrap_or_else(|e: Error| {
                tracing::warn!(error = %e, "ignoring the priority label");
                Priority::from_severity(notification.severity)
            }),
            None => Priority::from_severity(notification.severity),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
        })
    }
}

impl FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_uppercase().as_str() {
            "P1" => Ok(Priority::P1),
            "P2" => Ok(Priority::P2),
            "P3" => Ok(Priority::P3),
            _ => Err(Error::invalid(
                "notification.labels.priority",
                format!("{s:?} is not P1, P2 or P3"),
            )),
        }
    }
}

/// A stable key for the alert a notification is about: `atlas-` and 32 hex
/// digits of the SHA-256 of its sorted labels.
///
/// Firing and resolved notifications of one alert carry the same labels, so
/// they get the same key (PagerDuty's `dedup_key` closes the incident the
/// trigger opened); the summary, time and severity are left out because
/// they may change while the alert fires. A notification without labels is
/// keyed by its summary instead.
pub fn dedup_key(notification: &Notification) -> String {
    let mut hash = Sha256::new();
    let labels = notification
        .labels
        .iter()
        .filter(|(k, v)| !v.is_empty() && k.as_str() != PRIORITY_LABEL);
    let mut any = false;
    for (k, v) in labels {
        any = true;
        // Length prefixes keep `a=b,c` and `a=b`,`c=` apart.
        hash.update((k.len() as u64).to_be_bytes());
        hash.update(k.as_bytes());
        hash.update((v.len() as u64).to_be_bytes());
        hash.update(v.as_bytes());
    }
    if !any {
        hash.update(b"summary:");
        hash.update(notification.summary.as_bytes());
    }
    format!("atlas-{}", hex(&hash.finalize()[..16]))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(severity: Severity) -> Notification {
        Notification::new(severity, "checkout: errors")
            .with_label("alertname", "HighErrorRate")
            .with_label("service", "checkout")
    }

    #[test]
    fn the_key_ignores_state_time_summary_and_priority() {
        let firing = alert(Severity::Critical);
        let mut resolved = alert(Severity::Warning).with_label("priority", "P3");
        resolved.resolved = true;
        resolved.summary = "checkout: errors back to normal".into();
        resolved.at += Duration::from_secs(600);
        assert_eq!(dedup_key(&firing), dedup_key(&resolved));
        assert_eq!(dedup_key(&firing).len(), "atlas-".len() + 32);
        let other = alert(Severity::Critical).with_label("service", "cart");
        assert_ne!(dedup_key(&firing), dedup_key(&other));
        let a = Notification::new(Severity::Info, "x").with_label("a", "b,c");
        let b = Notification::new(Severity::Info, "x")
            .with_label("a", "b")
            .with_label("c", "");
        assert_ne!(dedup_key(&a), dedup_key(&b));
    }

    #[test]
    fn priority_comes_from_the_label_or_the_severity() {
        assert_eq!(Priority::of(&alert(Severity::Critical)), Priority::P1);
        assert_eq!(Priority::of(&alert(Severity::Warning)), Priority::P2);
        assert_eq!(Priority::of(&alert(Severity::Info)), Priority::P3);
        let labelled = alert(Severity::Warning).with_label("priority", "p1");
        assert_eq!(Priority::of(&labelled), Priority::P1);
        let bad = alert(Severity::Warning).with_label("priority", "urgent");
        assert_eq!(Priority::of(&bad), Priority::P2);
        let e = "P9".parse::<Priority>().unwrap_err();
        assert!(
            e.to_string().contains("notification.labels.priority"),
            "{e}"
        );
        assert_eq!(Priority::P1.response_target(), Duration::from_secs(900));
        assert_eq!(Priority::P2.response_target(), Duration::from_secs(3600));
        assert_eq!(Priority::P3.response_target(), Duration::from_secs(14400));
    }
}
