//! [`S3Target`]: Amazon S3 and S3-compatible servers, through `aws-sdk-s3`.
//!
//! # Uploads
//!
//! A body shorter than the part size (default 8 MiB) goes as one
//! `PutObject`. Anything longer is a multipart upload: parts of the part
//! size, up to [`S3TargetBuilder::with_concurrency`] (default 4) in flight
//! while the next part is read, so the target holds at most
//! `part_size × (concurrency + 1)` bytes of the body
//! ([`S3Target::max_buffered_bytes`]). A failed or dropped upload is
//! aborted (`AbortMultipartUpload`), so no part lingers and no object
//! appears.
//!
//! # Conditional create
//!
//! `put_if_absent` sends `If-None-Match: *` on `PutObject` or on
//! `CompleteMultipartUpload`: the server refuses (412, or 409 for a
//! concurrent create) if the key exists, atomically. A multipart create
//! first checks with a `HEAD` so that a doomed upload fails before sending
//! gigabytes.
//!
//! # Checksums
//!
//! Every request that carries data carries its CRC32C
//! (`x-amz-checksum-crc32c`), which S3 and strict servers verify (a
//! mismatch fails the put with `BadDigest`). A multipart upload declares
//! `ChecksumType: FULL_OBJECT` and sends the CRC32C of the whole object on
//! completion, which S3 verifies against the parts. The whole-object CRC32C
//! is also kept where [`head`](BackupTarget::head) can read it back on every
//! server: as the user metadata `x-amz-meta-atlas-crc32c` on single-request
//! objects, and as the object tag `atlas-crc32c` on multipart objects (tags
//! can be set after the upload; metadata cannot). `head` reads the metadata,
//! then the tag (multipart objects only), then S3's own full-object
//! checksum. Listings carry no checksum.
//!
//! Servers that implement neither tagging nor full-object checksums
//! (s3s-fs) report no checksum for multipart objects; the upload was still
//! verified part by part.
//!
//! # Deletes
//!
//! S3 deletes missing keys silently; the contract wants
//! [`Error::NotFound`], so `delete` sends a `HEAD` first. The check and the
//! delete are two requests: a concurrent delete in between goes unnoticed.
//!
//! # Retries
//!
//! The SDK's own retries are off; every request (each part, each page of a
//! listing, the start of a get) runs through the target's
//! [`RetryConfig`], whose per-attempt timeout bounds each request.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutMode, PutOptions, PutResult, RetryConfig,
};
use atlas_core::{Error, ErrorKind, Result};
use aws_credential_types::provider::future as creds_future;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart, Tag,
    Tagging,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tracing::{Instrument, debug, debug_span, warn};

use crate::env::{Env, ProcessEnv, setting, url_setting};
use crate::parts::{PartCutter, upload_parts};
use crate::secret::Secret;

const BACKEND: &str = "s3";
const META_CRC32C: &str = "atlas-crc32c";
const TAG_CRC32C: &str = "atlas-crc32c";
const CONTENT_TYPE: &str = "application/octet-stream";
/// S3's smallest part (all but the last).
const MIN_PART: usize = 5 * 1024 * 1024;
/// S3's largest part.
const MAX_PART: usize = 5 * 1024 * 1024 * 1024;
const MAX_PAGE: u32 = 1000;

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
    part_size: usize,
    concurrency: usize,
    checksum_tags: bool,
    retry: RetryConfig,
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
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("checksum_tags", &self.checksum_tags)
            .field("retry", &self.retry)
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
            part_size: 8 * 1024 * 1024,
            concurrency: 4,
            checksum_tags: true,
            retry: RetryConfig::default(),
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
        self.part_size = bytes;
        self
    }

    /// Parts uploaded at once, at least 1 (default 4).
    pub fn with_concurrency(mut self, parts: usize) -> Self {
        self.concurrency = parts;
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
        self.retry = retry;
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
        let bucket = self
            .bucket
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::invalid("bucket", "is required (or set ATLAS_S3_BUCKET)"))?;
        if !(MIN_PART..=MAX_PART).contains(&self.part_size) {
            return Err(Error::invalid(
                "part_size",
                format!(
                    "must be between 5 MiB and 5 GiB (S3's part limits), got {}",
                    self.part_size
                ),
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        self.retry.validate("retry")?;
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(Error::invalid(
                "endpoint",
                format!("must be an http:// or https:// URL, got {e:?}"),
            ));
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
        Ok(S3Target {
            inner: Arc::new(Inner {
                client,
                bucket,
                endpoint: self.endpoint,
                part_size: self.part_size,
                concurrency: self.concurrency,
                checksum_tags: self.checksum_tags,
                retry: self.retry,
            }),
        })
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

struct Inner {
    client: Client,
    bucket: String,
    endpoint: Option<String>,
    part_size: usize,
    concurrency: usize,
    checksum_tags: bool,
    retry: RetryConfig,
}

/// A [`BackupTarget`] on an S3 bucket. See the [module docs](self) for how
/// uploads, conditional creates and checksums work. Clones share the client.
#[derive(Clone)]
pub struct S3Target {
    inner: Arc<Inner>,
}

impl fmt::Debug for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Target")
            .field("bucket", &self.inner.bucket)
            .field("endpoint", &self.inner.endpoint)
            .field("part_size", &self.inner.part_size)
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    /// A builder; see [`S3TargetBuilder`].
    pub fn builder() -> S3TargetBuilder {
        S3TargetBuilder::new()
    }

    /// The SDK client, for what this target does not cover (bucket
    /// policies, lifecycle rules).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The most bytes of a put's body this target holds at once:
    /// `part_size × (concurrency + 1)`.
    pub fn max_buffered_bytes(&self) -> u64 {
        (self.inner.part_size as u64) * (self.inner.concurrency as u64 + 1)
    }

    /// Creates the bucket if it does not exist (for first-run setups and
    /// tests). An existing bucket owned by the caller is fine.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Transient`] when the server refuses.
    pub async fn ensure_bucket(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .retry
            .run(BACKEND, "create bucket", || async {
                match inner
                    .client
                    .create_bucket()
                    .bucket(&inner.bucket)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let code = e.code().unwrap_or_default().to_owned();
                        if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
                            Ok(())
                        } else {
                            Err(map_err(e, "create bucket", &inner.bucket))
                        }
                    }
                }
            })
            .await
    }
}

impl Inner {
    async fn put_single(
        &self,
        key: &ObjectKey,
        data: Bytes,
        checksum: Checksum,
        mode: PutMode,
    ) -> Result<PutResult> {
        let crc = b64(checksum);
        let size = data.len() as u64;
        let out = self
            .retry
            .run(BACKEND, "put object", || {
                let mut req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .content_type(CONTENT_TYPE)
                    .checksum_crc32_c(&crc)
                    .metadata(META_CRC32C, hex(checksum))
                    .body(SdkBody::from(data.clone()));
                if mode == PutMode::Create {
                    req = req.if_none_match("*");
                }
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_err(e, "put", key.as_str()))
                }
            })
            .await?;
        Ok(PutResult::new(size, checksum)
            .with_etag(out.e_tag().map(unquote))
            .with_version(out.version_id().map(str::to_owned)))
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Bytes,
        mode: PutMode,
    ) -> Result<PutResult> {
        if mode == PutMode::Create {
            match self.head(key).await {
                Ok(_) => return Err(conflict(key)),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let created = self
            .retry
            .run(BACKEND, "create multipart upload", || async {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .content_type(CONTENT_TYPE)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_type(ChecksumType::FullObject)
                    .send()
                    .await
                    .map_err(|e| map_err(e, "create multipart upload", key.as_str()))
            })
            .await?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        if upload_id.is_empty() {
            return Err(Error::backend(
                BACKEND,
                format!("create multipart upload of {key}: no upload id in the answer"),
            ));
        }
        debug!(%upload_id, "multipart upload started");
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: Some(upload_id.clone()),
        };
        let outcome = self
            .upload_and_complete(key, cutter, first, mode, &upload_id)
            .await;
        match outcome {
            Ok(r) => {
                guard.upload_id = None;
                Ok(r)
            }
            Err(e) => {
                // Abort now (not in the background) so the caller sees a
                // clean bucket when the error arrives.
                if let Some(id) = guard.upload_id.take() {
                    abort(&self.client, &self.bucket, key.as_str(), &id).await;
                }
                Err(e)
            }
        }
    }

    async fn upload_and_complete(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Bytes,
        mode: PutMode,
        upload_id: &str,
    ) -> Result<PutResult> {
        let parts = upload_parts(cutter, first, self.concurrency, |number, part| {
            let crc = b64(Checksum::crc32c_of(&part));
            async move {
                let what = format!("upload part {number}");
                let out = self
                    .retry
                    .run(BACKEND, &what, || {
                        let req = self
                            .client
                            .upload_part()
                            .bucket(&self.bucket)
                            .key(key.as_str())
                            .upload_id(upload_id)
                            .part_number(i32::try_from(number).unwrap_or(i32::MAX))
                            .checksum_crc32_c(&crc)
                            .body(SdkBody::from(part.clone()));
                        async {
                            req.send()
                                .await
                                .map_err(|e| map_err(e, &what, key.as_str()))
                        }
                    })
                    .await?;
                Ok(CompletedPart::builder()
                    .part_number(i32::try_from(number).unwrap_or(i32::MAX))
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .checksum_crc32_c(crc)
                    .build())
            }
        })
        .await?;
        let checksum = cutter.checksum();
        let size = cutter.len();
        let count = parts.len();
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let out = self
            .retry
            .run(BACKEND, "complete multipart upload", || {
                let mut req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone())
                    .checksum_crc32_c(b64(checksum))
                    .checksum_type(ChecksumType::FullObject);
                if mode == PutMode::Create {
                    req = req.if_none_match("*");
                }
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_err(e, "complete multipart upload", key.as_str()))
                }
            })
            .await?;
        debug!(parts = count, size, %checksum, "multipart upload complete");
        if self.checksum_tags {
            self.tag_checksum(key, checksum).await;
        }
        Ok(PutResult::new(size, checksum)
            .with_etag(out.e_tag().map(unquote))
            .with_version(out.version_id().map(str::to_owned)))
    }

    /// Tags a multipart object with its CRC32C. Best effort: the object is
    /// complete and verified already; a server without tagging (or
    /// credentials without the permission) only loses the checksum in head.
    async fn tag_checksum(&self, key: &ObjectKey, checksum: Checksum) {
        let tagging = Tag::builder()
            .key(TAG_CRC32C)
            .value(hex(checksum))
            .build()
            .ok()
            .and_then(|t| Tagging::builder().tag_set(t).build().ok());
        let Some(tagging) = tagging else { return };
        let result = self
            .retry
            .run(BACKEND, "tag object", || async {
                self.client
                    .put_object_tagging()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .tagging(tagging.clone())
                    .send()
                    .await
                    .map_err(|e| map_err(e, "tag object", key.as_str()))
            })
            .await;
        if let Err(e) = result {
            debug!(error = %e, "cannot tag the object with its checksum; head will not report one");
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let out = self
            .retry
            .run(BACKEND, "head object", || async {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(|e| map_err(e, "head", key.as_str()))
            })
            .await?;
        let etag = out.e_tag().map(unquote);
        let mut checksum = out
            .metadata()
            .and_then(|m| m.get(META_CRC32C))
            .and_then(|v| parse_hex(v));
        let multipart = etag.as_deref().is_some_and(|e| e.contains('-'));
        if checksum.is_none() && multipart && self.checksum_tags {
            checksum = self.tagged_checksum(key).await;
        }
        if checksum.is_none() && out.checksum_type() == Some(&ChecksumType::FullObject) {
            checksum = out.checksum_crc32_c().and_then(parse_b64);
        }
        Ok(ObjectMeta::new(
            key.clone(),
            u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
            out.last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
        .with_checksum(checksum)
        .with_etag(etag)
        .with_version(out.version_id().map(str::to_owned)))
    }

    async fn tagged_checksum(&self, key: &ObjectKey) -> Option<Checksum> {
        let out = self
            .retry
            .run(BACKEND, "get object tagging", || async {
                self.client
                    .get_object_tagging()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .send()
                    .await
                    .map_err(|e| map_err(e, "get tags", key.as_str()))
            })
            .await
            .map_err(|e| debug!(error = %e, "cannot read the checksum tag"))
            .ok()?;
        out.tag_set()
            .iter()
            .find(|t| t.key() == TAG_CRC32C)
            .and_then(|t| parse_hex(t.value()))
    }
}

/// Aborts a multipart upload if dropped armed: the put's future was dropped
/// midway.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { abort(&client, &bucket, &key, &id).await });
            }
            Err(_) => {
                warn!(%key, upload_id = %id, "no runtime to abort an abandoned multipart upload; a bucket lifecycle rule must clean it up")
            }
        }
    }
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let r = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match r {
        Ok(_) => debug!(%key, %upload_id, "multipart upload aborted"),
        Err(e) => {
            warn!(%key, %upload_id, error = %map_err(e, "abort", key), "cannot abort a multipart upload; a bucket lifecycle rule must clean it up")
        }
    }
}

#[async_trait]
impl BackupTarget for S3Target {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let span = debug_span!("backup.put", backend = BACKEND, bucket = %self.inner.bucket, %key, mode = ?options.mode);
        async move {
            let mut cutter = PartCutter::new(body, self.inner.part_size);
            let first = cutter.next_part().await?;
            let put = match first {
                Some(first) if !(cutter.is_finished() && first.len() < self.inner.part_size) => {
                    self.inner
                        .put_multipart(key, &mut cutter, first, options.mode)
                        .await?
                }
                first => {
                    let data = first.unwrap_or_default();
                    self.inner
                        .put_single(key, data, cutter.checksum(), options.mode)
                        .await?
                }
            };
            debug!(size = put.size, checksum = %put.checksum, "stored");
            Ok(put)
        }
        .instrument(span)
        .await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let span = debug_span!("backup.get", backend = BACKEND, bucket = %self.inner.bucket, %key);
        async move {
            let inner = &self.inner;
            let range_header = options.range.map(|r| r.to_http_header());
            let out = inner
                .retry
                .run(BACKEND, "get object", || {
                    let mut req = inner
                        .client
                        .get_object()
                        .bucket(&inner.bucket)
                        .key(key.as_str());
                    if let Some(r) = &range_header {
                        req = req.range(r);
                    }
                    async {
                        req.send()
                            .await
                            .map_err(|e| map_err(e, "get", key.as_str()))
                    }
                })
                .await?;
            let length = u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0);
            let (range, size) = match (options.range, out.content_range()) {
                (Some(_), Some(cr)) => parse_content_range(cr).ok_or_else(|| {
                    Error::backend(BACKEND, format!("get {key}: bad Content-Range {cr:?}"))
                })?,
                (Some(r), None) => {
                    // A server that ignored the range sent the whole object.
                    let resolved = r.resolve(length)?;
                    if resolved != (0..length) {
                        return Err(Error::backend(
                            BACKEND,
                            format!(
                                "get {key}: the server ignored the range {}",
                                r.to_http_header()
                            ),
                        ));
                    }
                    (resolved, length)
                }
                (None, _) => (0..length, length),
            };
            let etag = out.e_tag().map(unquote);
            let meta = ObjectMeta::new(
                key.clone(),
                size,
                out.last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
            .with_checksum(
                out.metadata()
                    .and_then(|m| m.get(META_CRC32C))
                    .and_then(|v| parse_hex(v)),
            )
            .with_etag(etag)
            .with_version(out.version_id().map(str::to_owned));
            let k = key.to_string();
            let body = stream::unfold(Some(out.body), move |body| {
                let k = k.clone();
                async move {
                    let mut body = body?;
                    match body.next().await {
                        Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                        Some(Err(e)) => Some((
                            Err(Error::transient_with(
                                BACKEND,
                                format!("reading the body of {k}"),
                                e,
                            )),
                            None,
                        )),
                        None => None,
                    }
                }
            })
            .boxed();
            Ok(GetResult::new(meta, range, body))
        }
        .instrument(span)
        .await
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let span = debug_span!("backup.head", backend = BACKEND, bucket = %self.inner.bucket, %key);
        self.inner.head(key).instrument(span).await
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        let page = options
            .page_size
            .map_or(MAX_PAGE, NonZeroU32::get)
            .min(MAX_PAGE);
        let page = i32::try_from(page).unwrap_or(1000);
        let start_after = options.start_after.map(|k| k.to_string());
        debug!(backend = BACKEND, bucket = %inner.bucket, %prefix, page, "list");
        // State: None = finished; Some(token) = the next page to fetch
        // (`None` token: the first page).
        stream::unfold(Some(None::<String>), move |state| {
            let inner = inner.clone();
            let prefix = prefix.clone();
            let start_after = start_after.clone();
            async move {
                let token = state?;
                let out = inner
                    .retry
                    .run(BACKEND, "list objects", || {
                        let mut req = inner
                            .client
                            .list_objects_v2()
                            .bucket(&inner.bucket)
                            .prefix(&prefix)
                            .max_keys(page);
                        if let Some(t) = &token {
                            req = req.continuation_token(t);
                        } else if let Some(a) = &start_after {
                            req = req.start_after(a);
                        }
                        async { req.send().await.map_err(|e| map_err(e, "list", &prefix)) }
                    })
                    .await;
                let out = match out {
                    Ok(o) => o,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                let mut items = Vec::with_capacity(out.contents().len());
                for o in out.contents() {
                    let Some(k) = o.key() else { continue };
                    let key = match ObjectKey::new(k) {
                        Ok(k) => k,
                        Err(_) => {
                            debug!(key = k, "skipping an object whose key Atlas cannot address");
                            continue;
                        }
                    };
                    items.push(Ok(ObjectMeta::new(
                        key,
                        u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                        o.last_modified()
                            .and_then(|t| SystemTime::try_from(*t).ok())
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    )
                    .with_etag(o.e_tag().map(unquote))));
                }
                let next = match (out.is_truncated(), out.next_continuation_token()) {
                    (Some(true), Some(t)) => Some(Some(t.to_owned())),
                    _ => None,
                };
                Some((items, next))
            }
        })
        .flat_map(stream::iter)
        .boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let span =
            debug_span!("backup.delete", backend = BACKEND, bucket = %self.inner.bucket, %key);
        async move {
            let inner = &self.inner;
            // S3 deletes missing keys silently; the contract reports them.
            inner
                .retry
                .run(BACKEND, "head before delete", || async {
                    inner
                        .client
                        .head_object()
                        .bucket(&inner.bucket)
                        .key(key.as_str())
                        .send()
                        .await
                        .map_err(|e| map_err(e, "head", key.as_str()))
                })
                .await?;
            inner
                .retry
                .run(BACKEND, "delete object", || async {
                    inner
                        .client
                        .delete_object()
                        .bucket(&inner.bucket)
                        .key(key.as_str())
                        .send()
                        .await
                        .map_err(|e| map_err(e, "delete", key.as_str()))
                })
                .await?;
            debug!("deleted");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// Maps an SDK error into Atlas's categories.
fn map_err<E>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    what: &str,
    key: &str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_owned();
            let message = se.err().message().unwrap_or("").to_owned();
            let text = format!("{what} {key}: HTTP {status} {code} {message}");
            match (status, code.as_str()) {
                (404, _) | (_, "NoSuchKey") => Error::not_found(format!("object {key} in s3")),
                (412, _) | (409, "ConditionalRequestConflict") => Error::conflict(format!(
                    "object {key} already exists in s3 (or a concurrent write won)"
                )),
                (416, _) | (_, "InvalidRange") => Error::invalid(
                    "range",
                    format!("starts at or past the end of object {key}"),
                ),
                (429 | 500 | 502 | 503 | 504, _)
                | (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                    Error::transient_with(BACKEND, text, e)
                }
                _ => Error::backend_with(BACKEND, text, e),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Error::transient_with(BACKEND, format!("{what} {key}: {e}"), e)
        }
        _ => Error::backend_with(BACKEND, format!("{what} {key}: {e}"), e),
    }
}

fn conflict(key: &ObjectKey) -> Error {
    Error::conflict(format!("object {key} already exists in s3"))
}

fn b64(c: Checksum) -> String {
    B64.encode(c.to_be_bytes())
}

fn hex(c: Checksum) -> String {
    match c {
        Checksum::Crc32c(v) => format!("{v:08x}"),
        _ => String::new(),
    }
}

fn parse_hex(s: &str) -> Option<Checksum> {
    u32::from_str_radix(s.trim(), 16).ok().map(Checksum::Crc32c)
}

fn parse_b64(s: &str) -> Option<Checksum> {
    let raw = B64.decode(s.trim()).ok()?;
    let arr: [u8; 4] = raw.try_into().ok()?;
    Some(Checksum::Crc32c(u32::from_be_bytes(arr)))
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_owned()
}

/// `bytes 10-19/1000` → (10..20, 1000).
fn parse_content_range(s: &str) -> Option<(std::ops::Range<u64>, u64)> {
    let rest = s.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = b.trim().parse().ok()?;
    let total: u64 = total.trim().parse().ok()?;
    Some((start..end + 1, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 10-19/1000"),
            Some((10..20, 1000))
        );
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0..1, 1)));
        assert_eq!(parse_content_range("items 0-0/1"), None);
    }

    #[test]
    fn checksums_round_trip_through_their_encodings() {
        let c = Checksum::crc32c_of(b"hello");
        assert_eq!(b64(c), "mnG7TA==");
        assert_eq!(parse_b64(&b64(c)), Some(c));
        assert_eq!(parse_hex(&hex(c)), Some(c));
    }

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
