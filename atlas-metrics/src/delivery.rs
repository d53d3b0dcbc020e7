//! What the Slack, PagerDuty and signed-webhook notifiers share: one
//! endpoint, its client settings, and a JSON POST retried under the
//! workspace's retry policy.

use std::time::Duration;

use atlas_core::Result;
use atlas_core::retry::RetryConfig;
use reqwest::StatusCode;
use tracing::Instrument;

use crate::client::ApiClient;
use crate::tls::TlsOptions;

/// Client settings every notifier builder takes, with their defaults:
/// 10 s per request, [`RetryConfig::control_plane`], the system's CAs.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) tls: Option<TlsOptions>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout: Duration::from_secs(10),
            retry: RetryConfig::control_plane(),
            tls: None,
        }
    }
}

/// One webhook endpoint and how to deliver to it.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    api: ApiClient,
    retry: RetryConfig,
}

impl Delivery {
    /// Checks `url` (named `<backend>.url` in errors) and the settings.
    /// With `secret_path`, the URL's path never shows in logs or errors.
    pub(crate) fn new(
        backend: &'static str,
        url: &str,
        settings: HttpSettings,
        secret_path: bool,
    ) -> Result<Self> {
        settings.retry.validate(&format!("{backend}.retry"))?;
        let api = ApiClient::new(
            backend,
            &format!("{backend}.url"),
            url,
            None,
            settings.tls.as_ref(),
            settings.timeout,
        )?;
        let api = if secret_path {
            api.with_secret_path()
        } else {
            api
        };
        Ok(Delivery {
            api,
            retry: settings.retry,
        })
    }

    /// The endpoint as logs may show it.
    pub(crate) fn shown_url(&self) -> String {
        self.api.shown_base()
    }

    /// POSTs `body` as JSON with extra `headers` (rebuilt per attempt by
    /// `headers`, so a signature can cover a fresh timestamp), retrying
    /// transient failures. Any 2xx is delivered; other statuses map through
    /// the shared status table, a 4xx naming `field`.
    pub(crate) async fn post_json(
        &self,
        what: &str,
        field: &str,
        body: &[u8],
        headers: impl Fn() -> Vec<(&'static str, String)>,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let span = tracing::info_span!("notify.post", backend = self.api.backend, what);
        self.retry
            .run(self.api.backend, what, || async {
                let mut request = self
                    .api
                    .post_target()
                    .header("content-type", "application/json")
                    .body(body.to_vec());
                for (k, v) in headers() {
                    request = request.header(k, v);
                }
                let (status, reply) = self.api.send(request).await?;
                if status.is_success() {
                    Ok((status, reply))
                } else {
                    Err(self
                        .api
                        .status_error(status, &String::from_utf8_lossy(&reply), field))
                }
            })
            .instrument(span)
            .await
    }
}

/// Adds the three client setters to a notifier builder that has a
/// `settings: HttpSettings` field.
macro_rules! http_settings_setters {
    ($builder:ty) => {
        impl $builder {
            /// The time one request may take. Default 10 s.
            pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
                self.settings.timeout = timeout;
                self
            }

            /// How transient failures (connection errors, timeouts, 429,
            /// 5xx) are retried. Default: [`RetryConfig::control_plane`](atlas_core::retry::RetryConfig::control_plane).
            pub fn retry(mut self, retry: atlas_core::retry::RetryConfig) -> Self {
                self.settings.retry = retry;
                self
            }

            /// Trust the CAs of `tls`. Default: the system store.
            pub fn tls(mut self, tls: $crate::tls::TlsOptions) -> Self {
                self.settings.tls = Some(tls);
                self
            }
        }
    };
}
pub(crate) use http_settings_setters;

/// `s` cut to at most `max` characters, with `…` marking a cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
