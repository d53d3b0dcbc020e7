//! [`SignedWebhookNotifier`]: a JSON POST to any HTTP endpoint, signed with
//! HMAC-SHA256 so the receiver can tell it came from Atlas.
//!
//! The body (version 1):
//!
//! ```json
//! {"version": 1, "status": "firing", "severity": "critical", "priority": "P1",
//!  "summary": "checkout: rolled back v3", "labels": {"service": "checkout"},
//!  "at": "2026-01-01T00:00:00.000Z", "dedup_key": "atlas-…"}
//! ```
//!
//! Two headers carry the signature:
//!
//! - `X-Atlas-Timestamp`: seconds since the Unix epoch when it was sent;
//! - `X-Atlas-Signature`: `sha256=` and the lower-case hex HMAC-SHA256,
//!   under the shared secret, of the timestamp, a `.`, and the body bytes.
//!
//! Signing the timestamp lets a receiver refuse replays older than its
//! tolerance; [`verify_signature`] does both checks, in constant time.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use atlas_core::{Error, Notification, Notifier, Result};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::delivery::{Delivery, HttpSettings, http_settings_setters, rfc3339};
use crate::identity::{Priority, dedup_key, hex};

const BACKEND: &str = "webhook";

/// The header holding the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Atlas-Timestamp";
/// The header holding `sha256=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "X-Atlas-Signature";
/// The body's format version.
pub const PAYLOAD_VERSION: u32 = 1;

/// The shortest secret accepted: 16 bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Posts signed notifications to a webhook (see the module docs).
///
/// ```no_run
/// use atlas_core::{Notification, Notifier, Severity};
/// use atlas_metrics::SignedWebhookNotifier;
/// # async fn demo() -> atlas_core::Result<()> {
/// let hook = SignedWebhookNotifier::builder("https://ops.example/atlas", "a shared secret, 16+ bytes")
///     .build()?;
/// hook.notify(&Notification::new(Severity::Info, "checkout: promoted v3")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SignedWebhookNotifier {
    delivery: Delivery,
    secret: Vec<u8>,
}

impl fmt::Debug for SignedWebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedWebhookNotifier")
            .field("url", &self.delivery.shown_url())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, `<timestamp>.<body>`).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex(&mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a received request's headers against its body: the signature
/// must match under `secret`, and the timestamp must be within `tolerance`
/// of `now` either way.
///
/// # Errors
/// [`Error::InvalidInput`] naming the header: `X-Atlas-Timestamp` not a
/// number or outside the tolerance, `X-Atlas-Signature` without the
/// `sha256=` prefix, not hex, or not matching.
pub fn verify_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: SystemTime,
    tolerance: Duration,
) -> Result<()> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Error::invalid(TIMESTAMP_HEADER, "is not Unix seconds"))?;
    let skew = unix_secs(now).abs_diff(ts);
    if skew > tolerance.as_secs() {
        return Err(Error::invalid(
            TIMESTAMP_HEADER,
            format!(
                "is {skew} s away from now, beyond the {} s tolerance",
                tolerance.as_secs()
            ),
        ));
    }
    let given = signature
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| Error::invalid(SIGNATURE_HEADER, "must start with sha256="))?;
    let bytes = unhex(given).ok_or_else(|| Error::invalid(SIGNATURE_HEADER, "is not hex"))?;
    mac(secret, ts, body)
        .verify_slice(&bytes)
        .map_err(|_| Error::invalid(SIGNATURE_HEADER, "does not match the body"))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SignedWebhookNotifier {
    /// A builder for `url`, signing with `secret` (at least 16 bytes).
    pub fn builder(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> SignedWebhookBuilder {
        SignedWebhookBuilder {
            url: url.into(),
            secret: secret.into(),
            settings: HttpSettings::default(),
        }
    }

    /// The JSON body for `n`, as sent.
    pub fn payload(n: &Notification) -> serde_json::Value {
        json!({
            "version": PAYLOAD_VERSION,
            "status": if n.resolved { "resolved" } else { "firing" },
            "severity": n.severity,
            "priority": Priority::of(n).to_string(),
            "summary": n.summary,
            "labels": n.labels,
            "at": rfc3339(n.at),
            "dedup_key": dedup_key(n),
        })
    }
}

#[async_trait]
impl Notifier for SignedWebhookNotifier {
    async fn notify(&self, notification: &Notification) -> Result<()> {
        let body = serde_json::to_vec(&Self::payload(notification))
            .map_err(|e| Error::backend_with(BACKEND, "encoding the payload", e))?;
        self.delivery
            .post_json("webhook post", "notification", &body, || {
                // A fresh timestamp per attempt: a retry after a long
                // backoff must not look like a replay.
                let ts = unix_secs(SystemTime::now());
                vec![
                    (TIMESTAMP_HEADER, ts.to_string()),
                    (SIGNATURE_HEADER, signature(&self.secret, ts, &body)),
                ]
            })
            .await?;
        tracing::debug!(key = %dedup_key(notification), "signed webhook delivered");
        Ok(())
    }
}

/// Builds a [`SignedWebhookNotifier`].
pub struct SignedWebhookBuilder {
    url: String,
    secret: Vec<u8>,
    settings: HttpSettings,
}

impl fmt::Debug for SignedWebhookBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedWebhookBuilder")
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

http_settings_setters!(SignedWebhookBuilder);

impl SignedWebhookBuilder {
    /// Checks the settings and builds the notifier. The URL's path is
    /// treated as a secret too (many webhook URLs embed a token).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `webhook.secret` (shorter than 16 bytes),
    /// `webhook.url`, `webhook.timeout` (zero), `webhook.retry.*`.
    pub fn build(self) -> Result<SignedWebhookNotifier> {
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(Error::invalid(
                "webhook.secret",
                format!("must be at least {MIN_SECRET_LEN} bytes"),
            ));
        }
        Ok(SignedWebhookNotifier {
            delivery: Delivery::new(BACKEND, &self.url, self.settings, true)?,
            secret: self.secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_refuse_tampering_and_replays() {
        let secret = b"0123456789abcdef-secret";
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ts = unix_secs(now);
        let body = br#"{"version":1}"#;
        let sig = signature(secret, ts, body);
        // The known answer, computed independently with
        // `printf '1800000000.{"version":1}' | openssl dgst -sha256 -hmac '0123456789abcdef-secret'`.
        assert_eq!(
            sig,
            "sha256=348427c8a8ffeb5245dd6aad76e19c588eff15ef982a6e9b9c5e9338794b8440"
        );
        let tol = Duration::from_secs(300);
        verify_signature(secret, &ts.to_string(), body, &sig, now, tol).unwrap();
        let cases = [
            (
                ts.to_string(),
                b"{\"version\":2}".as_slice(),
                sig.clone(),
                SIGNATURE_HEADER,
            ),
            (
                (ts - 301).to_string(),
                body.as_slice(),
                signature(secret, ts - 301, body),
                TIMESTAMP_HEADER,
            ),
            (
                "soon".to_string(),
                body.as_slice(),
                sig.clone(),
                TIMESTAMP_HEADER,
            ),
            (
                ts.to_string(),
                body.as_slice(),
                sig.replace("sha256=", ""),
                SIGNATURE_HEADER,
            ),
            (
                ts.to_string(),
                body.as_slice(),
                "sha256=zz".to_string(),
                SIGNATURE_HEADER,
            ),
        ];
        for (t, b, s, header) in cases {
            let e = verify_signature(secret, &t, b, &s, now, tol).unwrap_err();
            assert!(e.to_string().contains(header), "{e}");
        }
        let other = verify_signature(
            b"another secret, long enough",
            &ts.to_string(),
            body,
            &sig,
            now,
            tol,
        );
        assert!(other.is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let e = SignedWebhookNotifier::builder("http://127.0.0.1:1/hook", "short")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("webhook.secret"), "{e}");
    }
}
