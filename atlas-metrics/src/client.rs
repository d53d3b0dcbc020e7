//! The HTTP API client under [`PrometheusProvider`](crate::PrometheusProvider)
//! and [`AlertmanagerNotifier`](crate::AlertmanagerNotifier): a base URL,
//! credentials that never show in `Debug` or logs, TLS through
//! [`TlsOptions`], a per-request timeout, and the mapping of failures into
//! [`atlas_core::Error`] categories.

use std::fmt;
use std::time::Duration;

use atlas_core::{Error, Result};
use reqwest::{RequestBuilder, StatusCode, Url};

use crate::tls::TlsOptions;

/// Credentials for an HTTP API. `Debug` shows only which kind is set.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic …`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// A configured client for one API base URL.
#[derive(Clone)]
pub(crate) struct ApiClient {
    pub(crate) backend: &'static str,
    http: reqwest::Client,
    base: Url,
    /// The URL as given (no trailing `/` added), for webhook endpoints.
    target: Url,
    /// The path is a secret (a Slack webhook's token): never shown.
    secret_path: bool,
    credentials: Option<Credentials>,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("backend", &self.backend)
            .field("base", &self.shown_base())
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `url` with any user info replaced, for logs and `Debug`.
pub(crate) fn redacted_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    let _ = shown.set_username("redacted");
    let _ = shown.set_password(None);
    shown.to_string()
}

impl ApiClient {
    /// Parses and checks `url` (field `field`), builds the client.
    pub(crate) fn new(
        backend: &'static str,
        field: &str,
        url: &str,
        credentials: Option<Credentials>,
        tls: Option<&TlsOptions>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut base = Url::parse(url.trim())
            .map_err(|e| Error::invalid(field, format!("is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::invalid(
                field,
                format!("scheme {:?} is not http or https", base.scheme()),
            ));
        }
        if base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(Error::invalid(field, "must have a host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::invalid(field, "must not have a query or fragment"));
        }
        // Credentials in the URL are moved out of it, so the URL can be
        // logged and they are sent the one way reqwest redacts.
        let mut credentials = credentials;
        if !base.username().is_empty() {
            if credentials.is_some() {
                return Err(Error::invalid(
                    field,
                    "has user info and credentials were also given; use one",
                ));
            }
            credentials = Some(Credentials::Basic {
                username: percent_decode(base.username()),
                password: base.password().map(percent_decode).unwrap_or_default(),
            });
            let _ = base.set_username("");
            let _ = base.set_password(None);
        }
        let target = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if timeout.is_zero() {
            return Err(Error::invalid(
                format!("{backend}.timeout"),
                "must be greater than 0",
            ));
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("atlas-metrics/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        if base.scheme() == "https" || tls.is_some() {
            let config = tls.cloned().unwrap_or_default().client_config()?;
            builder = builder.tls_backend_preconfigured((*config).clone());
        }
        let http = builder
            .build()
            .map_err(|e| Error::backend_with(backend, "building the HTTP client", e))?;
        Ok(ApiClient {
            backend,
            http,
            base,
            target,
            secret_path: false,
            credentials,
            timeout,
        })
    }

    /// Marks the URL's path as a secret: `Debug` and errors show only the
    /// scheme and host. Incoming-webhook URLs carry their token in the path.
    pub(crate) fn with_secret_path(mut self) -> Self {
        self.secret_path = true;
        self
    }

    /// The base URL as logs and errors may show it.
    pub(crate) fn shown_base(&self) -> String {
        if self.secret_path {
            let mut shown = self.base.clone();
            shown.set_path("/<redacted>");
            redacted_url(&shown)
        } else {
            redacted_url(&self.base)
        }
    }

    /// A POST to the URL exactly as configured, authorized.
    pub(crate) fn post_target(&self) -> RequestBuilder {
        self.authorize(self.http.post(self.target.clone()))
    }

    /// The base URL, without credentials.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::invalid("path", format!("{path:?}: {e}")))
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.credentials {
            None => request,
            Some(Credentials::Bearer(token)) => request.bearer_auth(token),
            Some(Credentials::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
        }
    }

    /// A POST to `path` under the base URL, authorized.
    pub(crate) fn post(&self, path: &str) -> Result<RequestBuilder> {
        Ok(self.authorize(self.http.post(self.url(path)?)))
    }

    /// Sends `request`, maps transport failures, and returns status and body.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<(StatusCode, bytes::Bytes)> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok((status, body))
    }

    /// Timeouts, refused or reset connections and broken bodies are
    /// transient; anything else reqwest reports (a bad URL, a redirect loop)
    /// is not.
    pub(crate) fn transport_error(&self, e: reqwest::Error) -> Error {
        // reqwest puts the URL in its message; ours has no credentials.
        let e = e.without_url();
        if e.is_timeout() {
            Error::transient_with(
                self.backend,
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
                e,
            )
        } else if e.is_connect() || e.is_request() || e.is_body() {
            Error::transient_with(self.backend, "request failed", e)
        } else {
            Error::backend_with(self.backend, "request failed", e)
        }
    }

    /// An error for a non-success status, by category: 5xx, 429 and 408 are
    /// transient; 401 and 403 name authentication; other 4xx are the
    /// caller's (`field`).
    pub(crate) fn status_error(&self, status: StatusCode, detail: &str, field: &str) -> Error {
        let detail = detail.trim();
        let detail: String = detail.chars().take(512).collect();
        let message = format!("HTTP {status}: {detail}");
        match status.as_u16() {
            408 | 429 | 500..=599 => Error::transient(self.backend, message),
            401 | 403 => Error::backend(self.backend, format!("{message} (check the credentials)")),
            404 => Error::backend(
                self.backend,
                format!("{message} (check the base URL {})", self.shown_base()),
            ),
            400..=499 => Error::invalid(field, message),
            _ => Error::backend(self.backend, message),
        }
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug() {
        let c = Credentials::Basic {
            username: "atlas".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{c:?} {:?}", Credentials::Bearer("tok3n".into()));
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert!(shown.contains("atlas"));
    }

    #[test]
    fn user_info_moves_out_of_the_url() {
        let c = ApiClient::new(
            "prometheus",
            "prometheus.url",
            "http://atlas:p%40ss@prom.internal:9090/prefix",
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.base().as_str(), "http://prom.internal:9090/prefix/");
        assert_eq!(
            c.credentials,
            Some(Credentials::Basic {
                username: "atlas".into(),
                password: "p@ss".into()
            })
        );
        assert!(!format!("{c:?}").contains("p@ss"));
        let secret = ApiClient::new(
            "slack",
            "slack.webhook_url",
            "https://hooks.example/services/T0/B0/s3cr3t",
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap()
        .with_secret_path();
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        let e = secret.status_error(StatusCode::NOT_FOUND, "no_service", "slack");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert_eq!(
            c.url("/api/v1/query").unwrap().as_str(),
            "http://prom.internal:9090/prefix/api/v1/query"
        );
    }

    #[test]
    fn bad_urls_name_the_field() {
        for bad in ["", "prom:9090", "ftp://x", "http://x/?q=1", "unix:/x"] {
            let e = ApiClient::new(
                "p",
                "prometheus.url",
                bad,
                None,
                None,
                Duration::from_secs(1),
            )
            .unwrap_err();
            assert!(e.to_string().contains("prometheus.url"), "{bad}: {e}");
        }
    }
}
