//! [`S3TargetBuilder`]: the S3 target's settings, from code or from the
//! environment, checked by [`build`](S3TargetBuilder::build).

use std::fmt;
use std::sync::Arc;

use atlas_core::backup::RetryConfig;
use atlas_core::{Error, Result};
use aws_credential_types::provider::future as creds_future;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, SharedCredentialsProvider,
};
use tracing::debug;

use super::service::{MAX_PART, MIN_PART};
use super::target::{Inner, S3Target};
use crate::cloud::config::{Transfer, check_endpoint, required};
use crate::cloud::secret::Secret;
use crate::env::{Env, ProcessEnv, setting, url_setting};

/// Builds an [`S3Target`].
///
/// Defaults: region `us-east-1`, virtual-hosted addressing, part size
/// 8 MiB, 4 parts in flight, tags for multipart checksums on, the default
/// AWS credential chain (environment, profile, SSO, web identity, ECS/EC2
/// metadata) unless keys are given, [`RetryConfig::default`].
///
/// ```no_run
/// use atlas_storage::S3Target;
/// let target = S3Target::builder()
///     .with_bucket("backups")
///     .with_endpoint("http://127.0.0.1:9000") // an S3-compatible server
///     .with_path_style(true)
///     .with_credentials("access-key", "secret-key")
///     .build()?;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Clone)]
pub struct S3TargetBuilder {
    bucket: Option<String>,
    region: String,
    endpoint: Option<String>,
    path_style: bool,
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
    transfer: Transfer,
    checksum_tags: bool,
}

impl fmt::Debug for S3TargetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3TargetBuilder")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("transfer", &self.transfer)
            .field("checksum_tags", &self.checksum_tags)
            .finish()
    }
}

impl Default for S3TargetBuilder {
    fn default() -> Self {
        S3TargetBuilder {
            bucket: None,
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            transfer: Transfer::cloud_default(),
            checksum_tags: true,
        }
    }
}

impl S3TargetBuilder {
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
    /// | `ATLAS_S3_BUCKET` | the bucket | none |
    /// | `AWS_REGION`, else `AWS_DEFAULT_REGION` | the region | `us-east-1` |
    /// | `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` | a custom endpoint (`http(s)://`) | AWS |
    /// | `ATLAS_S3_PATH_STYLE` | path-style addressing: `true`/`1` or `false`/`0` | `false` |
    /// | `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`) | static credentials | the default AWS credential chain |
    ///
    /// Empty values count as unset. Without keys, the default credential
    /// chain resolves credentials on first use from the *process*
    /// environment, profile files, SSO, web identity or instance metadata,
    /// whatever `env` is.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the variable: an endpoint that is not
    /// an `http(s)://` URL, a path style that is no boolean, one of the two
    /// keys without the other, a session token without keys.
    pub fn from_env_with<E: Env + ?Sized>(env: &E) -> Result<Self> {
        let var = |n: &str| setting(env, n);
        let mut b = S3TargetBuilder {
            bucket: var("ATLAS_S3_BUCKET"),
            ..Self::default()
        };
        if let Some(r) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            b.region = r;
        }
        b.endpoint = match url_setting(env, "AWS_ENDPOINT_URL_S3")? {
            Some(e) => Some(e),
            None => url_setting(env, "AWS_ENDPOINT_URL")?,
        };
        b.path_style = match var("ATLAS_S3_PATH_STYLE") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => {
                return Err(Error::invalid(
                    "ATLAS_S3_PATH_STYLE",
                    format!("must be true, false, 1 or 0, got {v:?}"),
                ));
            }
        };
        let token = var("AWS_SESSION_TOKEN").map(Secret::new);
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                b.access_key_id = Some(id);
                b.secret_access_key = Some(Secret::new(secret));
                b.session_token = token;
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "AWS_SECRET_ACCESS_KEY",
                    "is required when AWS_ACCESS_KEY_ID is set",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "AWS_ACCESS_KEY_ID",
                    "is required when AWS_SECRET_ACCESS_KEY is set",
                ));
            }
            (None, None) if token.is_some() => {
                return Err(Error::invalid(
                    "AWS_SESSION_TOKEN",
                    "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                ));
            }
            (None, None) => {}
        }
        Ok(b)
    }

    /// The bucket (required).
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    /// The region (default `us-east-1`).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// A custom endpoint, e.g. `http://127.0.0.1:9000` for an S3-compatible
    /// server.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need (default `false`: `bucket.endpoint/key`).
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = path_style;
        self
    }

    /// Static credentials instead of the default chain.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(Secret::new(secret_access_key));
        self
    }

    /// A session token to go with [`with_credentials`](Self::with_credentials).
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Secret::new(token));
        self
    }

    /// Size of a multipart part, 5 MiB to 5 GiB (default 8 MiB). Bodies
    /// shorter than this go in one request.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.transfer.part_size = bytes;
        self
    }

    /// Parts uploaded at once, at least 1 (default 4).
    pub fn with_concurrency(mut self, parts: usize) -> Self {
        self.transfer.concurrency = parts;
        self
    }

    /// Whether to tag multipart objects with their CRC32C (default `true`).
    /// Turn off where the credentials may not tag objects.
    pub fn with_checksum_tags(mut self, on: bool) -> Self {
        self.checksum_tags = on;
        self
    }

    /// The retry policy of every request.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.transfer.retry = retry;
        self
    }

    /// Validates the configuration and creates the client. No request is
    /// sent.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: no bucket, a part size
    /// outside 5 MiB–5 GiB, a concurrency of 0, a bad retry policy, an
    /// endpoint that is not an `http(s)://` URL, a session token without keys.
    pub fn build(self) -> Result<S3Target> {
        let bucket = required(self.bucket, "bucket", "ATLAS_S3_BUCKET")?;
        self.transfer
            .validate("part_size", MIN_PART..=MAX_PART, "S3's part limits")?;
        if let Some(e) = &self.endpoint {
            check_endpoint("endpoint", e)?;
        }
        let credentials: SharedCredentialsProvider =
            match (self.access_key_id, self.secret_access_key) {
                (Some(id), Some(secret)) => SharedCredentialsProvider::new(Credentials::new(
                    id,
                    secret.expose(),
                    self.session_token.map(|t| t.expose().to_owned()),
                    None,
                    "atlas-static",
                )),
                (None, None) if self.session_token.is_some() => {
                    return Err(Error::invalid(
                        "session_token",
                        "needs an access key id and secret access key",
                    ));
                }
                (None, None) => SharedCredentialsProvider::new(DefaultChain::default()),
                _ => {
                    return Err(Error::invalid(
                        "credentials",
                        "need both an access key id and a secret access key",
                    ));
                }
            };
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(self.path_style)
            // Atlas retries (see RetryConfig); the SDK must not retry too.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            // Checksums are computed by Atlas and sent explicitly.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &self.endpoint {
            config = config.endpoint_url(e);
        }
        let client = Client::from_conf(config.build());
        debug!(bucket, endpoint = ?self.endpoint, path_style = self.path_style, "s3 target ready");
        Ok(S3Target::from_inner(Arc::new(Inner {
            client,
            bucket,
            endpoint: self.endpoint,
            transfer: self.transfer,
            checksum_tags: self.checksum_tags,
        })))
    }
}

impl S3Target {
    /// A builder; see [`S3TargetBuilder`].
    pub fn builder() -> S3TargetBuilder {
        S3TargetBuilder::new()
    }
}

/// The default AWS credential chain, built on first use (building it is
/// async; [`S3TargetBuilder::build`] is not).
#[derive(Debug, Default)]
struct DefaultChain {
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
}

impl ProvideCredentials for DefaultChain {
    fn provide_credentials<'a>(&'a self) -> creds_future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        creds_future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates_and_hides_secrets() {
        let e = S3Target::builder().build().unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
        let e = S3Target::builder()
            .with_bucket("b")
            .with_part_size(1024)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("part_size"), "{e}");
        let e = S3Target::builder()
            .with_bucket("b")
            .with_concurrency(0)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let e = S3Target::builder()
            .with_bucket("b")
            .with_endpoint("127.0.0.1:9000")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("endpoint"), "{e}");
        let b = S3Target::builder()
            .with_bucket("b")
            .with_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG")
            .with_session_token("FwoGZXIvYXdzEJr");
        let shown = format!("{b:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("FwoGZXIvYXdzEJr"), "{shown}");
        let target = b.build().unwrap();
        let shown = format!("{target:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert_eq!(target.max_buffered_bytes(), 5 * 8 * 1024 * 1024);
    }

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn invalid_field(e: &Error) -> &str {
        match e {
            Error::InvalidInput { field, .. } => field,
            other => panic!("expected InvalidInput, got {other}"),
        }
    }

    #[test]
    fn settings_come_from_the_given_env_by_their_names() {
        let b = S3TargetBuilder::from_env_with(&env(&[
            ("ATLAS_S3_BUCKET", "from-env"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://general:9000"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-only:9000"),
            ("ATLAS_S3_PATH_STYLE", "TRUE"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG"),
            ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr"),
        ]))
        .unwrap();
        assert_eq!(b.bucket.as_deref(), Some("from-env"));
        assert_eq!(b.region, "eu-west-1");
        assert_eq!(b.endpoint.as_deref(), Some("http://s3-only:9000"));
        assert!(b.path_style);
        assert_eq!(b.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(
            b.secret_access_key.as_ref().map(Secret::expose),
            Some("wJalrXUtnFEMI/K7MDENG")
        );
        assert_eq!(
            b.session_token.as_ref().map(Secret::expose),
            Some("FwoGZXIvYXdzEJr")
        );
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIvYXdzEJr"),
            "{shown}"
        );

        // AWS_REGION wins over AWS_DEFAULT_REGION; the general endpoint
        // applies without the S3 one; empty values count as unset.
        let b = S3TargetBuilder::from_env_with(&env(&[
            ("AWS_REGION", "ap-south-1"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "https://general"),
            ("AWS_ENDPOINT_URL_S3", ""),
            ("ATLAS_S3_PATH_STYLE", "0"),
            ("AWS_ACCESS_KEY_ID", ""),
        ]))
        .unwrap();
        assert_eq!(b.region, "ap-south-1");
        assert_eq!(b.endpoint.as_deref(), Some("https://general"));
        assert!(!b.path_style);
        assert!(b.access_key_id.is_none() && b.secret_access_key.is_none());

        // Nothing set: the builder's defaults, the default credential chain.
        let b = S3TargetBuilder::from_env_with(&env(&[])).unwrap();
        assert_eq!(
            (b.bucket, b.region.as_str(), b.endpoint, b.path_style),
            (None, "us-east-1", None, false)
        );
        assert!(b.access_key_id.is_none() && b.session_token.is_none());
    }

    #[test]
    fn invalid_settings_are_refused_by_variable_name() {
        for (pairs, variable) in [
            (
                &[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")][..],
                "AWS_SECRET_ACCESS_KEY",
            ),
            (
                &[("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")][..],
                "AWS_ACCESS_KEY_ID",
            ),
            (
                &[("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr")][..],
                "AWS_SESSION_TOKEN",
            ),
            (&[("ATLAS_S3_PATH_STYLE", "yes")][..], "ATLAS_S3_PATH_STYLE"),
            (
                &[("AWS_ENDPOINT_URL", "127.0.0.1:9000")][..],
                "AWS_ENDPOINT_URL",
            ),
            (
                &[
                    ("AWS_ENDPOINT_URL", "http://fine:9000"),
                    ("AWS_ENDPOINT_URL_S3", "ftp://s3"),
                ][..],
                "AWS_ENDPOINT_URL_S3",
            ),
        ] {
            let e = S3TargetBuilder::from_env_with(&env(pairs)).unwrap_err();
            assert_eq!(invalid_field(&e), variable, "{pairs:?}: {e}");
            let text = e.to_string();
            assert!(
                !text.contains("wJalrXUtnFEMI") && !text.contains("FwoGZXIvYXdzEJr"),
                "{text}"
            );
        }
    }
}
