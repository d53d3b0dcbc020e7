//! [`GcsTargetBuilder`]: the GCS target's settings, from code or from the
//! environment, checked by [`build`](GcsTargetBuilder::build).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use atlas_core::backup::RetryConfig;
use atlas_core::{Error, Result};
use google_cloud_auth::credentials::Credentials;
use tracing::debug;

use super::service::{BACKEND, CHUNK_QUANTUM, DEFAULT_ENDPOINT};
use super::target::{GcsTarget, Inner};
use crate::cloud::config::{Transfer, check_endpoint, required};
use crate::env::{Env, ProcessEnv, setting};

/// Builds a [`GcsTarget`].
///
/// Defaults: endpoint `https://storage.googleapis.com`,
/// application-default credentials, chunk size 8 MiB,
/// [`RetryConfig::default`].
///
/// ```no_run
/// use atlas_storage::GcsTarget;
/// // fake-gcs-server, without credentials:
/// let target = GcsTarget::builder()
///     .with_bucket("backups")
///     .with_endpoint("http://127.0.0.1:4443")
///     .with_anonymous_credentials()
///     .build()?;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Clone)]
pub struct GcsTargetBuilder {
    bucket: Option<String>,
    endpoint: Option<String>,
    credentials: Option<Credentials>,
    anonymous: bool,
    /// Chunks go one at a time: a resumable session takes them in order.
    transfer: Transfer,
}

impl fmt::Debug for GcsTargetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsTargetBuilder")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field(
                "credentials",
                &match (&self.credentials, self.anonymous) {
                    (_, true) => "anonymous",
                    (Some(_), false) => "given (redacted)",
                    (None, false) => "application default",
                },
            )
            .field("chunk_size", &self.transfer.part_size)
            .field("retry", &self.transfer.retry)
            .finish()
    }
}

impl Default for GcsTargetBuilder {
    fn default() -> Self {
        GcsTargetBuilder {
            bucket: None,
            endpoint: None,
            credentials: None,
            anonymous: false,
            transfer: Transfer {
                concurrency: 1,
                ..Transfer::cloud_default()
            },
        }
    }
}

impl GcsTargetBuilder {
    /// A builder with the defaults and no bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder from the process environment; see
    /// [`from_env_with`](Self::from_env_with) for the variables.
    ///
    /// # Errors
    /// As [`from_env_with`](Self::from_env_with).
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(&ProcessEnv)
    }

    /// A builder from the settings in `env` (see [`crate::env`]):
    ///
    /// | variable | sets | default |
    /// |---|---|---|
    /// | `ATLAS_GCS_BUCKET` | the bucket | none |
    /// | `STORAGE_EMULATOR_HOST` | an emulator (`host:port` or an `http(s)://` URL), with anonymous credentials, as Google's own clients do | GCS with application-default credentials |
    ///
    /// Empty values count as unset. Application-default credentials are
    /// found by `google-cloud-auth` in the *process* environment
    /// (`GOOGLE_APPLICATION_CREDENTIALS`), gcloud's files or the metadata
    /// server, whatever `env` is.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `STORAGE_EMULATOR_HOST` when it has a
    /// scheme other than `http://` or `https://`, or holds whitespace.
    pub fn from_env_with<E: Env + ?Sized>(env: &E) -> Result<Self> {
        let mut b = GcsTargetBuilder {
            bucket: setting(env, "ATLAS_GCS_BUCKET"),
            ..Self::default()
        };
        if let Some(host) = setting(env, "STORAGE_EMULATOR_HOST") {
            let endpoint = if host.contains("://") {
                host.clone()
            } else {
                format!("http://{host}")
            };
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                || endpoint.chars().any(char::is_whitespace)
            {
                return Err(Error::invalid(
                    "STORAGE_EMULATOR_HOST",
                    format!("must be HOST:PORT or an http:// or https:// URL, got {host:?}"),
                ));
            }
            b.endpoint = Some(endpoint);
            b.anonymous = true;
        }
        Ok(b)
    }

    /// The bucket (required).
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    /// A custom endpoint, e.g. `http://127.0.0.1:4443` for fake-gcs-server.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Credentials built by the caller with `google-cloud-auth`.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self.anonymous = false;
        self
    }

    /// No credentials (emulators, public buckets).
    pub fn with_anonymous_credentials(mut self) -> Self {
        self.anonymous = true;
        self.credentials = None;
        self
    }

    /// Size of a resumable-upload chunk, a multiple of 256 KiB (default
    /// 8 MiB). Bodies shorter than this go in one request.
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.transfer.part_size = bytes;
        self
    }

    /// The retry policy of every request.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.transfer.retry = retry;
        self
    }

    /// Validates the configuration and creates the client. No request is
    /// sent (credentials are resolved, not used).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: no bucket, a chunk size that
    /// is not a positive multiple of 256 KiB, an endpoint that is not an
    /// `http(s)://` URL, a bad retry policy; [`Error::Backend`] when no
    /// application-default credentials can be found.
    pub fn build(self) -> Result<GcsTarget> {
        let bucket = required(self.bucket, "bucket", "ATLAS_GCS_BUCKET")?;
        let chunk_size = self.transfer.part_size;
        if chunk_size == 0 || !chunk_size.is_multiple_of(CHUNK_QUANTUM) {
            return Err(Error::invalid(
                "chunk_size",
                format!("must be a positive multiple of 256 KiB, got {chunk_size}"),
            ));
        }
        self.transfer
            .validate("chunk_size", CHUNK_QUANTUM..=usize::MAX, "GCS's chunk rule")?;
        let endpoint = self
            .endpoint
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        check_endpoint("endpoint", &endpoint)?;
        let credentials = if self.anonymous {
            None
        } else {
            Some(match self.credentials {
                Some(c) => c,
                None => google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| {
                        Error::backend_with(
                            BACKEND,
                            "no application-default credentials (set GOOGLE_APPLICATION_CREDENTIALS, or use anonymous credentials for an emulator)",
                            e,
                        )
                    })?,
            })
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::backend_with(BACKEND, "creating the HTTP client", e))?;
        debug!(%bucket, %endpoint, anonymous = credentials.is_none(), "gcs target ready");
        Ok(GcsTarget::from_inner(Arc::new(Inner {
            http,
            credentials,
            bucket,
            endpoint,
            transfer: self.transfer,
        })))
    }
}

impl GcsTarget {
    /// A builder; see [`GcsTargetBuilder`].
    pub fn builder() -> GcsTargetBuilder {
        GcsTargetBuilder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates() {
        let e = GcsTarget::builder().build().unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
        let e = GcsTarget::builder()
            .with_bucket("b")
            .with_anonymous_credentials()
            .with_chunk_size(1000)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("chunk_size"), "{e}");
        let t = GcsTarget::builder()
            .with_bucket("b")
            .with_endpoint("http://127.0.0.1:4443/")
            .with_anonymous_credentials()
            .build()
            .unwrap();
        assert_eq!(t.max_buffered_bytes(), 16 * 1024 * 1024);
        assert!(format!("{t:?}").contains("127.0.0.1:4443\""));
    }

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn settings_come_from_the_given_env_by_their_names() {
        let b = GcsTargetBuilder::from_env_with(&env(&[
            ("ATLAS_GCS_BUCKET", "from-env"),
            ("STORAGE_EMULATOR_HOST", "127.0.0.1:4443"),
        ]))
        .unwrap();
        assert_eq!(b.bucket.as_deref(), Some("from-env"));
        // A bare host:port means plain HTTP, as Google's clients read it.
        assert_eq!(b.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        assert!(b.anonymous);
        let b = GcsTargetBuilder::from_env_with(&env(&[(
            "STORAGE_EMULATOR_HOST",
            "https://emulator.test",
        )]))
        .unwrap();
        assert_eq!(b.endpoint.as_deref(), Some("https://emulator.test"));
        // No emulator: GCS itself, with application-default credentials.
        let b = GcsTargetBuilder::from_env_with(&env(&[("STORAGE_EMULATOR_HOST", "")])).unwrap();
        assert!(b.endpoint.is_none() && !b.anonymous && b.bucket.is_none());
    }

    #[test]
    fn invalid_emulator_hosts_are_refused_by_variable_name() {
        for bad in ["ftp://127.0.0.1:4443", "bad host:4443"] {
            let e = GcsTargetBuilder::from_env_with(&env(&[("STORAGE_EMULATOR_HOST", bad)]))
                .unwrap_err();
            match &e {
                Error::InvalidInput { field, rule } => {
                    assert_eq!(field, "STORAGE_EMULATOR_HOST");
                    assert!(rule.contains(bad), "{rule}");
                }
                other => panic!("expected InvalidInput, got {other}"),
            }
        }
    }
}
