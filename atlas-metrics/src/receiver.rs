//! [`AlertmanagerReceiver`]: Alertmanager's webhook receiver, which turns
//! each alert of a webhook notification (payload version 4) into a
//! [`Notification`] for any [`Notifier`] — typically an
//! [`EscalationPolicy`](crate::EscalationPolicy).
//!
//! The mapping of one alert:
//!
//! - labels: the alert's labels;
//! - severity: the `severity` label — `critical` or `page` → critical,
//!   `warning` or `warn` → warning, `info` or `none` → info; missing or
//!   anything else → warning, so an alert is never silently dropped;
//! - summary: the `summary` annotation, else `description`, else the
//!   `alertname` label;
//! - time: `startsAt` for a firing alert, `endsAt` for a resolved one.
//!
//! Answers: `200` when every alert was delivered; `400` for a body that is
//! not a version-4 payload (naming the field); `401` without the configured
//! bearer token; `413` above 1 MiB; `503` when a delivery failed
//! transiently and `500` otherwise, so Alertmanager sends it again (the
//! escalation policy's de-duplication keeps routes that already have it
//! from getting it twice).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use atlas_core::{Error, Notification, Notifier, Result, Severity};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use std::collections::BTreeMap;
use tracing::Instrument;

use crate::server::HttpServer;

/// The largest body accepted: 1 MiB.
pub const MAX_BODY: usize = 1 << 20;
/// The default path: `/alertmanager`.
pub const DEFAULT_PATH: &str = "/alertmanager";
/// The payload version this receiver reads.
pub const PAYLOAD_VERSION: &str = "4";

#[derive(Deserialize)]
struct Payload {
    version: String,
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: Option<String>,
}

/// The severity an Alertmanager `severity` label stands for (see the
/// module docs).
pub fn severity_of(label: Option<&str>) -> Severity {
    match label.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical" | "page") => Severity::Critical,
        Some("info" | "none") => Severity::Info,
        _ => Severity::Warning,
    }
}

fn time(field: &str, value: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339_weak(value.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(value))
        .map_err(|e| Error::invalid(field, format!("{value:?} is not an RFC 3339 time: {e}")))
}

/// Parses a webhook body into notifications, one per alert.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field: `body` (not JSON or a missing
/// field, with its path), `version` (not 4), `alerts[i].status` (not
/// `firing` or `resolved`), `alerts[i].startsAt` / `endsAt` (not a time).
pub fn parse_webhook(body: &[u8]) -> Result<Vec<Notification>> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let payload: Payload = serde_path_to_error::deserialize(de)
        .map_err(|e| Error::invalid(format!("body.{}", e.path()), e.inner().to_string()))?;
    if payload.version.split('.').next() != Some(PAYLOAD_VERSION) {
        return Err(Error::invalid(
            "version",
            format!(
                "payload version {:?} is not the supported version {PAYLOAD_VERSION}",
                payload.version
            ),
        ));
    }
    payload
        .alerts
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let resolved = match a.status.as_str() {
                "firing" => false,
                "resolved" => true,
                other => {
                    return Err(Error::invalid(
                        format!("alerts[{i}].status"),
                        format!("{other:?} is not firing or resolved"),
                    ));
                }
            };
            let at = match (&a.ends_at, resolved) {
                (Some(end), true) => time(&format!("alerts[{i}].endsAt"), end)?,
                _ => time(&format!("alerts[{i}].startsAt"), &a.starts_at)?,
            };
            let summary = a
                .annotations
                .get("summary")
                .or_else(|| a.annotations.get("description"))
                .or_else(|| a.labels.get("alertname"))
                .cloned()
                .unwrap_or_else(|| "alert".to_string());
            let mut n = Notification::new(
                severity_of(a.labels.get("severity").map(String::as_str)),
                summary,
            );
            n.labels = a.labels;
            n.at = at;
            n.resolved = resolved;
            Ok(n)
        })
        .collect()
}

/// Receives Alertmanager webhooks and forwards each alert (see the module
/// docs). Cheap to clone.
///
/// ```no_run
/// use std::sync::Arc;
/// use atlas_metrics::{AlertmanagerReceiver, EscalationPolicy, PagerDutyNotifier, SlackNotifier};
/// # async fn demo() -> atlas_core::Result<()> {
/// let policy = EscalationPolicy::standard(
///     Arc::new(PagerDutyNotifier::builder("R0UT1NGKEY").build()?),
///     Arc::new(SlackNotifier::builder("https://hooks.slack.com/services/T/B/X").build()?),
/// ).build()?;
/// let server = AlertmanagerReceiver::new(Arc::new(policy))
///     .serve("127.0.0.1:9095".parse().unwrap())
///     .await?;
/// // alertmanager.yml: webhook_configs: [{url: 'http://127.0.0.1:9095/alertmanager'}]
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AlertmanagerReceiver {
    notifier: Arc<dyn Notifier>,
    path: String,
    token: Option<String>,
}

impl fmt::Debug for AlertmanagerReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertmanagerReceiver")
            .field("path", &self.path)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Equal without an early exit, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AlertmanagerReceiver {
    /// A receiver forwarding to `notifier`, on [`DEFAULT_PATH`], without
    /// authentication.
    pub fn new(notifier: Arc<dyn Notifier>) -> Self {
        AlertmanagerReceiver {
            notifier,
            path: DEFAULT_PATH.to_string(),
            token: None,
        }
    }

    /// Serves on `path` instead.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Requires `Authorization: Bearer <token>` (Alertmanager's
    /// `http_config.authorization.credentials`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Answers one request; mount this in an existing server.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if request.uri().path() != self.path {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        }
        if request.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
        }
        if let Some(token) = &self.token {
            let given = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if !given.is_some_and(|g| same(g, token.as_bytes())) {
                tracing::warn!("alertmanager webhook refused: bad or missing bearer token");
                return text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
            }
        }
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return if too_large {
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body above {MAX_BODY} bytes\n"),
                    )
                } else {
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {e}\n"),
                    )
                };
            }
        };
        let notifications = match parse_webhook(&body) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "alertmanager webhook refused");
                return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
            }
        };
        let span = tracing::info_span!("alertmanager.webhook", alerts = notifications.len());
        let mut failures = Vec::new();
        async {
            for n in &notifications {
                if let Err(e) = self.notifier.notify(n).await {
                    failures.push(e);
                }
            }
        }
        .instrument(span)
        .await;
        if failures.is_empty() {
            tracing::info!(
                alerts = notifications.len(),
                "alertmanager webhook delivered"
            );
            return text(StatusCode::OK, "ok\n".into());
        }
        let status = if failures.iter().all(Error::is_transient) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let message = failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        tracing::warn!(
            failed = failures.len(),
            "alertmanager webhook partly undelivered"
        );
        text(status, format!("{message}\n"))
    }

    /// Binds `addr` (port 0 picks one) and serves until
    /// [`ReceiverServer::shutdown`].
    ///
    /// # Errors
    /// [`Error::Backend`] when the address cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> Result<ReceiverServer> {
        let server = HttpServer::bind("alertmanager-receiver", addr, move |req| {
            let this = self.clone();
            async move { this.handle(req).await }
        })
        .await?;
        tracing::info!(addr = %server.local, "receiving alertmanager webhooks");
        Ok(ReceiverServer { server })
    }
}

/// A running [`AlertmanagerReceiver`].
#[derive(Debug)]
pub struct ReceiverServer {
    server: HttpServer,
}

impl ReceiverServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local
    }

    /// Stops accepting, lets requests in flight finish, and waits for that.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
