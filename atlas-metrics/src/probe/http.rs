//! [`HttpProbe`]: one HTTP(S) request per attempt, judged by status and body.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::{Endpoint, Error, HealthProbe, ProbeOutcome, Result};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::limit::{ConnectionLimiter, timed_out};
use crate::tls::TlsOptions;

/// The default range of statuses that count as healthy: 200 to 399, as
/// Kubernetes' HTTP probe.
pub const DEFAULT_HEALTHY_STATUSES: RangeInclusive<u16> = 200..=399;

/// The default number of body bytes searched for [`HttpProbeBuilder::body_contains`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

const USER_AGENT_VALUE: &str = concat!("atlas-probe/", env!("CARGO_PKG_VERSION"));

/// Probes an endpoint with one HTTP/1.1 request per attempt over a fresh
/// connection (plain TCP, or TLS with rustls), and calls it healthy when the
/// status is in the expected range and, if asked, the body contains a given
/// text.
///
/// Defaults: `GET`, status 200–399, no body check, `Host` set to the
/// endpoint's address, a [`ConnectionLimiter`] of its own.
///
/// ```no_run
/// use atlas_core::{Endpoint, HealthProbe};
/// use atlas_metrics::probe::HttpProbe;
/// # async fn demo() -> atlas_core::Result<()> {
/// let probe = HttpProbe::builder()
///     .path("/health")
///     .body_contains("ok")
///     .build()?;
/// let ep = Endpoint::new("web-0", "127.0.0.1:8080".parse().unwrap());
/// let outcome = probe.check(&ep, std::time::Duration::from_secs(1)).await;
/// println!("{outcome}");
/// # Ok(()) }
/// ```
pub struct HttpProbe {
    method: Method,
    path: PathAndQuery,
    host: Option<HeaderValue>,
    statuses: RangeInclusive<u16>,
    body_contains: Option<String>,
    max_body_bytes: usize,
    headers: HeaderMap,
    tls: Option<TlsTarget>,
    limiter: ConnectionLimiter,
}

struct TlsTarget {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for HttpProbe {
    // Header values may be credentials: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("HttpProbe")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("statuses", &self.statuses)
            .field("body_contains", &self.body_contains)
            .field("headers", &header_names)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.limiter.max())
            .finish()
    }
}

impl HttpProbe {
    /// A builder with the defaults above.
    pub fn builder() -> HttpProbeBuilder {
        HttpProbeBuilder::default()
    }

    /// A plain-HTTP `GET path` probe with all other defaults.
    ///
    /// # Errors
    /// As [`HttpProbeBuilder::build`].
    pub fn get(path: &str) -> Result<Self> {
        HttpProbe::builder().path(path).build()
    }

    /// The limiter this probe takes connection slots from.
    pub fn limiter(&self) -> &ConnectionLimiter {
        &self.limiter
    }

    async fn attempt(&self, endpoint: &Endpoint) -> std::result::Result<u16, String> {
        let _slot = self.limiter.acquire().await?;
        let addr = endpoint.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        // Probes send one small request; Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(TokioIo::new(tcp), endpoint).await,
            Some(tls) => {
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                let stream = tls
                    .connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                self.exchange(TokioIo::new(stream), endpoint).await
            }
        }
        // The socket is closed here, before `_slot` gives the slot back.
    }

    async fn exchange<I>(&self, io: I, endpoint: &Endpoint) -> std::result::Result<u16, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let host = match &self.host {
            Some(h) => h.clone(),
            None => HeaderValue::from_str(&endpoint.addr.to_string())
                .map_err(|e| format!("endpoint address as Host header: {e}"))?,
        };
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building request: {e}"))?;
        let headers = request.headers_mut();
        headers.insert(HOST, host);
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }

        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status().as_u16();
            if !self.statuses.contains(&status) {
                return Err(format!(
                    "status {status}, expected {}-{}",
                    self.statuses.start(),
                    self.statuses.end()
                ));
            }
            if let Some(needle) = &self.body_contains {
                find_in_body(response.into_body(), needle, self.max_body_bytes).await?;
            }
            Ok(status)
        };
        tokio::pin!(conn);
        tokio::pin!(exchange);
        tokio::select! {
            biased;
            result = &mut exchange => result,
            ended = &mut conn => {
                // The connection can finish in the same poll that hands the
                // response over; the exchange then completes on its own (or
                // reports why it could not).
                if let Err(e) = ended {
                    tracing::trace!(error = %e, "probe connection ended with an error");
                }
                exchange.await
            }
        }
    }
}

async fn find_in_body(
    mut body: hyper::body::Incoming,
    needle: &str,
    limit: usize,
) -> std::result::Result<(), String> {
    let mut seen: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let room = limit.saturating_sub(seen.len());
            seen.extend_from_slice(&data[..data.len().min(room)]);
            if contains(&seen, needle.as_bytes()) {
                return Ok(());
            }
            if seen.len() >= limit {
                return Err(format!(
                    "body does not contain {needle:?} in its first {limit} bytes"
                ));
            }
        }
    }
    Err(format!("body does not contain {needle:?}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[async_trait]
impl HealthProbe for HttpProbe {
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(timeout, self.attempt(endpoint)).await;
        let elapsed = started.elapsed();
        match result {
            Ok(Ok(status)) => {
                tracing::debug!(%endpoint, status, ?elapsed, "http probe healthy");
                ProbeOutcome::Healthy
            }
            Ok(Err(reason)) => {
                tracing::debug!(%endpoint, %reason, ?elapsed, "http probe unhealthy");
                ProbeOutcome::unhealthy(reason)
            }
            Err(_) => {
                tracing::debug!(%endpoint, ?elapsed, "http probe timed out");
                ProbeOutcome::unhealthy(timed_out(timeout))
            }
        }
    }
}

/// Builds an [`HttpProbe`]; errors are reported by [`build`](Self::build),
/// naming the setting that was wrong.
#[derive(Default)]
pub struct HttpProbeBuilder {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    statuses: Option<RangeInclusive<u16>>,
    body_contains: Option<String>,
    max_body_bytes: Option<usize>,
    headers: Vec<(String, String, bool)>,
    tls: Option<TlsOptions>,
    server_name: Option<String>,
    limiter: Option<ConnectionLimiter>,
}

impl fmt::Debug for HttpProbeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _, _)| k.as_str()).collect();
        f.debug_struct("HttpProbeBuilder")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("statuses", &self.statuses)
            .field("headers", &header_names)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl HttpProbeBuilder {
    /// The request method, e.g. `GET` (default) or `HEAD`.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// The request path with an optional query, starting with `/`. Default `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The `Host` header. Default: the endpoint's `ip:port`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Statuses that count as healthy. Default 200–399.
    pub fn expect_status(mut self, statuses: RangeInclusive<u16>) -> Self {
        self.statuses = Some(statuses);
        self
    }

    /// Healthy only if the body contains `text` within its first
    /// [`max_body_bytes`](Self::max_body_bytes) bytes.
    pub fn body_contains(mut self, text: impl Into<String>) -> Self {
        self.body_contains = Some(text.into());
        self
    }

    /// How much of the body is searched. Default 64 KiB.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = Some(limit);
        self
    }

    /// Sends a header with every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into(), false));
        self
    }

    /// Sends a header whose value is a secret (a token): it is marked
    /// sensitive and never shown in `Debug` output or logs.
    pub fn secret_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into(), true));
        self
    }

    /// Speak HTTPS, trusting the CAs of `tls`.
    pub fn https(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS server name (SNI and certificate check). Default: the
    /// endpoint's IP address, which the certificate must then list.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Takes connection slots from `limiter`, shared with other probes.
    pub fn limiter(mut self, limiter: ConnectionLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Checks every setting and builds the probe.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the setting: `http_probe.method` not a
    /// method, `http_probe.path` not starting with `/` or not a valid path,
    /// `http_probe.expect_status` empty or outside 100–599,
    /// `http_probe.headers[i]` with an invalid name or value,
    /// `http_probe.host`, `http_probe.tls_server_name` invalid, or a TLS
    /// setting that cannot be used.
    pub fn build(self) -> Result<HttpProbe> {
        let method = match &self.method {
            None => Method::GET,
            Some(m) => Method::from_bytes(m.trim().as_bytes()).map_err(|_| {
                Error::invalid("http_probe.method", format!("{m:?} is not an HTTP method"))
            })?,
        };
        let path = self.path.as_deref().unwrap_or("/");
        if !path.starts_with('/') {
            return Err(Error::invalid(
                "http_probe.path",
                format!("{path:?} must start with '/'"),
            ));
        }
        let path: PathAndQuery = path.parse().map_err(|e| {
            Error::invalid(
                "http_probe.path",
                format!("{path:?} is not a valid path: {e}"),
            )
        })?;
        let statuses = self.statuses.unwrap_or(DEFAULT_HEALTHY_STATUSES);
        if statuses.is_empty() || *statuses.start() < 100 || *statuses.end() > 599 {
            return Err(Error::invalid(
                "http_probe.expect_status",
                format!(
                    "{}..={} must be a non-empty range within 100..=599",
                    statuses.start(),
                    statuses.end()
                ),
            ));
        }
        let host = self
            .host
            .as_deref()
            .map(|h| {
                HeaderValue::from_str(h).map_err(|_| {
                    Error::invalid(
                        "http_probe.host",
                        format!("{h:?} is not a valid Host header"),
                    )
                })
            })
            .transpose()?;
        let mut headers = HeaderMap::new();
        for (i, (name, value, secret)) in self.headers.iter().enumerate() {
            let field = format!("http_probe.headers[{i}]");
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::invalid(&field, format!("{name:?} is not a valid header name"))
            })?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                // The value may be a secret: never echo it.
                Error::invalid(
                    &field,
                    format!("the value of {name} is not a valid header value"),
                )
            })?;
            let secret = *secret
                || name == http::header::AUTHORIZATION
                || name == http::header::PROXY_AUTHORIZATION
                || name == http::header::COOKIE;
            value.set_sensitive(secret);
            headers.insert(name, value);
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if self.body_contains.is_some() && max_body_bytes == 0 {
            return Err(Error::invalid(
                "http_probe.max_body_bytes",
                "must be at least 1 when body_contains is set",
            ));
        }
        let server_name = self
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_string()).map_err(|_| {
                    Error::invalid(
                        "http_probe.tls_server_name",
                        format!("{n:?} is not a DNS name or IP address"),
                    )
                })
            })
            .transpose()?;
        if server_name.is_some() && self.tls.is_none() {
            return Err(Error::invalid(
                "http_probe.tls_server_name",
                "is only used with https(..)",
            ));
        }
        let tls = match &self.tls {
            None => None,
            Some(opts) => Some(TlsTarget {
                connector: TlsConnector::from(opts.client_config()?),
                server_name,
            }),
        };
        Ok(HttpProbe {
            method,
            path,
            host,
            statuses,
            body_contains: self.body_contains,
            max_body_bytes,
            headers,
            tls,
            limiter: self.limiter.unwrap_or_default(),
        })
    }
}
