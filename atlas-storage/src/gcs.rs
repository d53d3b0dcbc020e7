//! [`GcsTarget`]: Google Cloud Storage and fake-gcs-server, over the GCS
//! JSON API.
//!
//! # Why the JSON API on `reqwest`, with Google's official auth crate
//!
//! Google's official `google-cloud-storage` crate reaches object metadata,
//! listings and deletes only through the gRPC `StorageControl` service,
//! which emulators such as fake-gcs-server do not serve, so a GCS target
//! built on it needs a JSON-API client for those calls anyway. Once that
//! client exists, the data path is two more calls of the same API (a
//! multipart upload and a resumable upload session), so this target speaks
//! the JSON API for everything: one HTTP stack, one error mapping, one
//! retry policy, and no second copy of the storage SDK to build. The
//! community `gcloud-storage` crate would do the same with more surface
//! than Atlas needs. Credentials come from the official `google-cloud-auth`
//! crate (application-default credentials: service-account keys, workload
//! identity, the metadata server, `gcloud auth application-default login`).
//!
//! # Uploads
//!
//! A body shorter than the chunk size (default 8 MiB) is one multipart
//! upload (`uploadType=multipart`) that carries its CRC32C in the object
//! metadata, which GCS verifies. Longer bodies go through a resumable
//! upload session, chunk by chunk (GCS sessions take chunks in order, so
//! uploads of one object are sequential); the last request carries the
//! whole object's CRC32C (`X-Goog-Hash`), which GCS verifies before the
//! object appears. A failed or dropped upload cancels its session, and
//! nothing appears. The target holds at most two chunks of a body
//! ([`GcsTarget::max_buffered_bytes`]).
//!
//! # Conditional create
//!
//! `put_if_absent` sends `ifGenerationMatch=0`, which GCS checks atomically
//! when the object is finalized. fake-gcs-server honours it on multipart
//! uploads only, not on resumable sessions: against the emulator, creates
//! shorter than the chunk size are atomic, and longer ones are checked with
//! a metadata read before the upload (a race with a concurrent create can
//! then be lost silently on the emulator, never on GCS).
//!
//! # Checksums
//!
//! GCS computes the CRC32C of every object; [`head`](BackupTarget::head)
//! and listings return it. After every upload the target compares the CRC32C
//! the server reports with the one it computed while streaming and fails the
//! put on a mismatch.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutMode, PutOptions, PutResult, RetryConfig,
};
use atlas_core::{Error, ErrorKind, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use tracing::{Instrument, debug, debug_span, warn};

use crate::env::{Env, ProcessEnv, setting};
use crate::parts::PartCutter;

const BACKEND: &str = "gcs";
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const CONTENT_TYPE: &str = "application/octet-stream";
/// Resumable chunks must be multiples of this.
const CHUNK_QUANTUM: usize = 256 * 1024;
const MAX_PAGE: u32 = 1000;

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
    chunk_size: usize,
    retry: RetryConfig,
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
            .field("chunk_size", &self.chunk_size)
            .field("retry", &self.retry)
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
            chunk_size: 8 * 1024 * 1024,
            retry: RetryConfig::default(),
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
        self.chunk_size = bytes;
        self
    }

    /// The retry policy of every request.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
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
        let bucket = self
            .bucket
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::invalid("bucket", "is required (or set ATLAS_GCS_BUCKET)"))?;
        if self.chunk_size == 0 || !self.chunk_size.is_multiple_of(CHUNK_QUANTUM) {
            return Err(Error::invalid(
                "chunk_size",
                format!(
                    "must be a positive multiple of 256 KiB, got {}",
                    self.chunk_size
                ),
            ));
        }
        self.retry.validate("retry")?;
        let endpoint = self
            .endpoint
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::invalid(
                "endpoint",
                format!("must be an http:// or https:// URL, got {endpoint:?}"),
            ));
        }
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
        Ok(GcsTarget {
            inner: Arc::new(Inner {
                http,
                credentials,
                bucket,
                endpoint,
                chunk_size: self.chunk_size,
                retry: self.retry,
            }),
        })
    }
}

struct Inner {
    http: reqwest::Client,
    credentials: Option<Credentials>,
    bucket: String,
    endpoint: String,
    chunk_size: usize,
    retry: RetryConfig,
}

/// A [`BackupTarget`] on a Google Cloud Storage bucket. See the
/// [module docs](self). Clones share the client.
#[derive(Clone)]
pub struct GcsTarget {
    inner: Arc<Inner>,
}

impl fmt::Debug for GcsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsTarget")
            .field("bucket", &self.inner.bucket)
            .field("endpoint", &self.inner.endpoint)
            .field("chunk_size", &self.inner.chunk_size)
            .finish_non_exhaustive()
    }
}

/// The JSON API's object resource, the fields Atlas reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectResource {
    name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    crc32c: Option<String>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    generation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectResource>,
    #[serde(default)]
    next_page_token: Option<String>,
}

impl GcsTarget {
    /// A builder; see [`GcsTargetBuilder`].
    pub fn builder() -> GcsTargetBuilder {
        GcsTargetBuilder::new()
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The most bytes of a put's body this target holds at once: two
    /// chunks (the one travelling, the one being read).
    pub fn max_buffered_bytes(&self) -> u64 {
        2 * self.inner.chunk_size as u64
    }

    /// Creates the bucket in `project` if it does not exist (for first-run
    /// setups and tests).
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Transient`] when the server refuses.
    pub async fn ensure_bucket(&self, project: &str) -> Result<()> {
        let inner = &self.inner;
        let url = format!("{}/storage/v1/b", inner.endpoint);
        let body = serde_json::json!({ "name": inner.bucket }).to_string();
        inner
            .retry
            .run(BACKEND, "create bucket", || async {
                let req = inner
                    .request(Method::POST, &url)
                    .await?
                    .query(&[("project", project)])
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                let resp = send(req, "create bucket", &inner.bucket).await?;
                match resp.status() {
                    s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
                    _ => Err(status_error(resp, "create bucket", &inner.bucket).await),
                }
            })
            .await
    }
}

impl Inner {
    /// A request with the credentials' headers.
    async fn request(&self, method: Method, url: &str) -> Result<reqwest::RequestBuilder> {
        let mut req = self.http.request(method, url);
        if let Some(creds) = &self.credentials {
            match creds.headers(http::Extensions::new()).await {
                Ok(CacheableResource::New { data, .. }) => req = req.headers(data),
                Ok(CacheableResource::NotModified) => {}
                Err(e) => {
                    return Err(if e.is_transient() {
                        Error::transient_with(BACKEND, "fetching an access token", e)
                    } else {
                        Error::backend_with(BACKEND, "fetching an access token", e)
                    });
                }
            }
        }
        Ok(req)
    }

    fn object_url(&self, key: &ObjectKey) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode(&self.bucket),
            encode(key.as_str())
        )
    }

    fn upload_url(&self) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o",
            self.endpoint,
            encode(&self.bucket)
        )
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let url = self.object_url(key);
        let obj: ObjectResource = self
            .retry
            .run(BACKEND, "get object metadata", || async {
                let req = self.request(Method::GET, &url).await?;
                let resp = send(req, "head", key.as_str()).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, "head", key.as_str()).await);
                }
                json(resp, "head", key.as_str()).await
            })
            .await?;
        meta_of(obj)
    }

    async fn put_single(
        &self,
        key: &ObjectKey,
        data: Bytes,
        checksum: Checksum,
        mode: PutMode,
    ) -> Result<PutResult> {
        let boundary = format!("atlas-{:016x}", rand::random::<u64>());
        let metadata = serde_json::json!({
            "name": key.as_str(),
            "contentType": CONTENT_TYPE,
            "crc32c": b64(checksum),
        })
        .to_string();
        let mut body = BytesMut::with_capacity(data.len() + metadata.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = body.freeze();
        let url = self.upload_url();
        let mut query = vec![("uploadType", "multipart".to_owned())];
        if mode == PutMode::Create {
            query.push(("ifGenerationMatch", "0".to_owned()));
        }
        let obj: ObjectResource = self
            .retry
            .run(BACKEND, "multipart upload", || async {
                let req = self
                    .request(Method::POST, &url)
                    .await?
                    .query(&query)
                    .header(
                        header::CONTENT_TYPE,
                        format!("multipart/related; boundary={boundary}"),
                    )
                    .body(body.clone());
                let resp = send(req, "put", key.as_str()).await?;
                if !resp.status().is_success() {
                    return Err(put_error(resp, key).await);
                }
                json(resp, "put", key.as_str()).await
            })
            .await?;
        finish_put(key, obj, data.len() as u64, checksum)
    }

    async fn put_resumable(
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
        let session = self.start_session(key, mode).await?;
        let mut guard = CancelOnDrop {
            http: self.http.clone(),
            session: Some(session.clone()),
        };
        let outcome = self.send_chunks(key, &session, cutter, first).await;
        match outcome {
            Ok(r) => {
                guard.session = None;
                Ok(r)
            }
            Err(e) => {
                if let Some(s) = guard.session.take() {
                    cancel(&self.http, &s).await;
                }
                Err(e)
            }
        }
    }

    async fn start_session(&self, key: &ObjectKey, mode: PutMode) -> Result<String> {
        let url = self.upload_url();
        let mut query = vec![("uploadType", "resumable".to_owned())];
        if mode == PutMode::Create {
            query.push(("ifGenerationMatch", "0".to_owned()));
        }
        let metadata =
            serde_json::json!({ "name": key.as_str(), "contentType": CONTENT_TYPE }).to_string();
        self.retry
            .run(BACKEND, "start resumable upload", || async {
                let req = self
                    .request(Method::POST, &url)
                    .await?
                    .query(&query)
                    .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
                    .header("X-Upload-Content-Type", CONTENT_TYPE)
                    .body(metadata.clone());
                let resp = send(req, "start upload", key.as_str()).await?;
                if !resp.status().is_success() {
                    return Err(put_error(resp, key).await);
                }
                resp.headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::backend(
                            BACKEND,
                            format!("start upload of {key}: no session location in the answer"),
                        )
                    })
            })
            .await
    }

    /// Sends the chunks in order; full chunks with an open total, the last
    /// with the total and the whole object's CRC32C.
    async fn send_chunks(
        &self,
        key: &ObjectKey,
        session: &str,
        cutter: &mut PartCutter,
        first: Bytes,
    ) -> Result<PutResult> {
        let mut offset = 0u64;
        let mut part = Some(first);
        loop {
            let chunk = match part.take() {
                Some(c) => c,
                None => Bytes::new(),
            };
            let last = chunk.len() < self.chunk_size;
            let total = last.then(|| offset + chunk.len() as u64);
            let hash = last.then(|| cutter.checksum());
            let outcome = self
                .send_chunk(key, session, offset, chunk.clone(), total, hash)
                .await?;
            offset += chunk.len() as u64;
            if let Some(obj) = outcome {
                return finish_put(key, obj, cutter.len(), cutter.checksum());
            }
            if last {
                return Err(Error::backend(
                    BACKEND,
                    format!("upload of {key}: the session did not finish after the last chunk"),
                ));
            }
            part = Some(cutter.next_part().await?.unwrap_or_default());
        }
    }

    /// Sends `chunk` at `offset`; returns the object once the upload is
    /// finished. On a retry, asks the session how much it has and sends the
    /// rest of the chunk only.
    async fn send_chunk(
        &self,
        key: &ObjectKey,
        session: &str,
        offset: u64,
        chunk: Bytes,
        total: Option<u64>,
        hash: Option<Checksum>,
    ) -> Result<Option<ObjectResource>> {
        let mut first_attempt = true;
        self.retry
            .run(BACKEND, "upload chunk", || {
                let retrying = !std::mem::replace(&mut first_attempt, false);
                let chunk = chunk.clone();
                async move {
                    let mut skip = 0u64;
                    if retrying {
                        match self.persisted(session, key).await? {
                            Persisted::Done(obj) => return Ok(Some(*obj)),
                            Persisted::Upto(n) => skip = n.saturating_sub(offset),
                        }
                    }
                    let skip = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                    let body = chunk.slice(skip..);
                    let start = offset + skip as u64;
                    let range = match (body.is_empty(), total) {
                        (true, Some(t)) => format!("bytes */{t}"),
                        (false, Some(t)) => {
                            format!("bytes {start}-{}/{t}", start + body.len() as u64 - 1)
                        }
                        (false, None) => {
                            format!("bytes {start}-{}/*", start + body.len() as u64 - 1)
                        }
                        (true, None) => return Ok(None),
                    };
                    let mut req = self
                        .http
                        .put(session)
                        .header(header::CONTENT_RANGE, range)
                        .header(header::CONTENT_LENGTH, body.len());
                    if let Some(h) = hash {
                        req = req.header("X-Goog-Hash", format!("crc32c={}", b64(h)));
                    }
                    let resp = send(req.body(body), "upload chunk", key.as_str()).await?;
                    match resp.status().as_u16() {
                        200 | 201 => Ok(Some(json(resp, "upload chunk", key.as_str()).await?)),
                        308 => {
                            let have = persisted_upto(&resp);
                            let want = start + (chunk.len() - skip) as u64;
                            if have < want {
                                return Err(Error::transient(
                                    BACKEND,
                                    format!(
                                        "upload of {key}: the server kept {have} of {want} bytes"
                                    ),
                                ));
                            }
                            Ok(None)
                        }
                        _ => Err(put_error(resp, key).await),
                    }
                }
            })
            .await
    }

    async fn persisted(&self, session: &str, key: &ObjectKey) -> Result<Persisted> {
        let req = self
            .http
            .put(session)
            .header(header::CONTENT_RANGE, "bytes */*")
            .header(header::CONTENT_LENGTH, 0);
        let resp = send(req, "upload status", key.as_str()).await?;
        match resp.status().as_u16() {
            200 | 201 => Ok(Persisted::Done(Box::new(
                json(resp, "upload status", key.as_str()).await?,
            ))),
            308 => Ok(Persisted::Upto(persisted_upto(&resp))),
            _ => Err(put_error(resp, key).await),
        }
    }
}

enum Persisted {
    Done(Box<ObjectResource>),
    Upto(u64),
}

/// Bytes the session has, from a 308's `Range: bytes=0-N`.
fn persisted_upto(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('-').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(0, |n| n + 1)
}

fn finish_put(
    key: &ObjectKey,
    obj: ObjectResource,
    size: u64,
    checksum: Checksum,
) -> Result<PutResult> {
    if let Some(server) = obj.crc32c.as_deref().and_then(parse_b64)
        && server != checksum
    {
        return Err(Error::backend(
            BACKEND,
            format!(
                "put of {key}: the server stored CRC32C {server} but Atlas sent {checksum}; the object is corrupt"
            ),
        ));
    }
    Ok(PutResult::new(size, checksum)
        .with_etag(obj.etag)
        .with_version(obj.generation))
}

/// Cancels a resumable session if dropped armed: the put's future was
/// dropped midway.
struct CancelOnDrop {
    http: reqwest::Client,
    session: Option<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let http = self.http.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { cancel(&http, &session).await });
            }
            Err(_) => warn!(
                "no runtime to cancel an abandoned upload session; GCS expires it after a week"
            ),
        }
    }
}

async fn cancel(http: &reqwest::Client, session: &str) {
    // GCS answers a cancelled session with 499.
    match http
        .delete(session)
        .header(header::CONTENT_LENGTH, 0)
        .send()
        .await
    {
        Ok(r) => debug!(status = r.status().as_u16(), "upload session cancelled"),
        Err(e) => warn!(error = %e, "cannot cancel an upload session; GCS expires it after a week"),
    }
}

#[async_trait]
impl BackupTarget for GcsTarget {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let span = debug_span!("backup.put", backend = BACKEND, bucket = %self.inner.bucket, %key, mode = ?options.mode);
        async move {
            let mut cutter = PartCutter::new(body, self.inner.chunk_size);
            let first = cutter.next_part().await?;
            let put = match first {
                Some(first) if !(cutter.is_finished() && first.len() < self.inner.chunk_size) => {
                    self.inner
                        .put_resumable(key, &mut cutter, first, options.mode)
                        .await?
                }
                first => {
                    self.inner
                        .put_single(
                            key,
                            first.unwrap_or_default(),
                            cutter.checksum(),
                            options.mode,
                        )
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
            // Metadata first: ranges resolve exactly, and the read is pinned
            // to that generation.
            let meta = inner.head(key).await?;
            let range = match options.range {
                Some(r) => r.resolve(meta.size)?,
                None => 0..meta.size,
            };
            if range.is_empty() {
                return Ok(GetResult::new(meta, range, stream::empty().boxed()));
            }
            let url = inner.object_url(key);
            let generation = meta.version.clone().unwrap_or_default();
            let header_range = format!("bytes={}-{}", range.start, range.end - 1);
            let resp = inner
                .retry
                .run(BACKEND, "get object", || async {
                    let mut query = vec![("alt", "media".to_owned())];
                    if !generation.is_empty() {
                        query.push(("generation", generation.clone()));
                    }
                    let req = inner
                        .request(Method::GET, &url)
                        .await?
                        .query(&query)
                        .header(header::RANGE, &header_range);
                    let resp = send(req, "get", key.as_str()).await?;
                    if !resp.status().is_success() {
                        return Err(status_error(resp, "get", key.as_str()).await);
                    }
                    Ok(resp)
                })
                .await?;
            let k = key.to_string();
            let body = resp
                .bytes_stream()
                .map(move |chunk| {
                    chunk.map_err(|e| {
                        Error::transient_with(BACKEND, format!("reading the body of {k}"), e)
                    })
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
        let after = options.start_after.map(|k| k.to_string());
        debug!(backend = BACKEND, bucket = %inner.bucket, %prefix, page, "list");
        stream::unfold(Some(None::<String>), move |state| {
            let inner = inner.clone();
            let prefix = prefix.clone();
            let after = after.clone();
            async move {
                let token = state?;
                let url = format!("{}/storage/v1/b/{}/o", inner.endpoint, encode(&inner.bucket));
                let mut query = vec![
                    ("prefix", prefix.clone()),
                    ("maxResults", page.to_string()),
                    (
                        "fields",
                        "items(name,size,updated,crc32c,etag,generation),nextPageToken".to_owned(),
                    ),
                ];
                if let Some(t) = &token {
                    query.push(("pageToken", t.clone()));
                }
                if let Some(a) = &after {
                    // startOffset is inclusive; the equal key is skipped below.
                    query.push(("startOffset", a.clone()));
                }
                let out: Result<ObjectList> = inner
                    .retry
                    .run(BACKEND, "list objects", || async {
                        let req = inner.request(Method::GET, &url).await?.query(&query);
                        let resp = send(req, "list", &prefix).await?;
                        if !resp.status().is_success() {
                            return Err(status_error(resp, "list", &prefix).await);
                        }
                        json(resp, "list", &prefix).await
                    })
                    .await;
                let out = match out {
                    Ok(o) => o,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                let mut items = Vec::with_capacity(out.items.len());
                for obj in out.items {
                    if after.as_deref().is_some_and(|a| obj.name.as_str() <= a) {
                        continue;
                    }
                    match meta_of(obj) {
                        Ok(m) => items.push(Ok(m)),
                        Err(e) if e.kind() == ErrorKind::InvalidInput => {
                            debug!(error = %e, "skipping an object whose name Atlas cannot address");
                        }
                        Err(e) => items.push(Err(e)),
                    }
                }
                Some((items, out.next_page_token.filter(|t| !t.is_empty()).map(Some)))
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
            let url = inner.object_url(key);
            inner
                .retry
                .run(BACKEND, "delete object", || async {
                    let req = inner.request(Method::DELETE, &url).await?;
                    let resp = send(req, "delete", key.as_str()).await?;
                    if !resp.status().is_success() {
                        return Err(status_error(resp, "delete", key.as_str()).await);
                    }
                    Ok(())
                })
                .await?;
            debug!("deleted");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

fn meta_of(obj: ObjectResource) -> Result<ObjectMeta> {
    let key = ObjectKey::new(obj.name)?;
    let size = obj
        .size
        .as_deref()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let updated = obj
        .updated
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(ObjectMeta::new(key, size, updated)
        .with_checksum(obj.crc32c.as_deref().and_then(parse_b64))
        .with_etag(obj.etag)
        .with_version(obj.generation))
}

async fn send(req: reqwest::RequestBuilder, what: &str, key: &str) -> Result<reqwest::Response> {
    req.send()
        .await
        .map_err(|e| Error::transient_with(BACKEND, format!("{what} {key}: {e}"), e))
}

async fn json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
    key: &str,
) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|e| {
        Error::transient_with(BACKEND, format!("{what} {key}: reading the answer"), e)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::backend_with(BACKEND, format!("{what} {key}: unexpected answer"), e))
}

/// Maps an unsuccessful answer into Atlas's categories.
async fn status_error(resp: reqwest::Response, what: &str, key: &str) -> Error {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let message: String = text.chars().take(300).collect();
    match status {
        404 => Error::not_found(format!("object {key} in gcs")),
        416 => Error::invalid(
            "range",
            format!("starts at or past the end of object {key}"),
        ),
        // A read pinned to a generation that was replaced or deleted.
        412 => Error::transient(
            BACKEND,
            format!("{what} {key}: the object changed while being read"),
        ),
        408 | 429 | 500 | 502 | 503 | 504 => {
            Error::transient(BACKEND, format!("{what} {key}: HTTP {status} {message}"))
        }
        _ => Error::backend(BACKEND, format!("{what} {key}: HTTP {status} {message}")),
    }
}

/// As [`status_error`], for writes: a failed `ifGenerationMatch=0` is a
/// conflict.
async fn put_error(resp: reqwest::Response, key: &ObjectKey) -> Error {
    if resp.status() == StatusCode::PRECONDITION_FAILED {
        return conflict(key);
    }
    status_error(resp, "put", key.as_str()).await
}

fn conflict(key: &ObjectKey) -> Error {
    Error::conflict(format!("object {key} already exists in gcs"))
}

fn b64(c: Checksum) -> String {
    B64.encode(c.to_be_bytes())
}

fn parse_b64(s: &str) -> Option<Checksum> {
    let raw = B64.decode(s.trim()).ok()?;
    let arr: [u8; 4] = raw.try_into().ok()?;
    Some(Checksum::Crc32c(u32::from_be_bytes(arr)))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as the
/// JSON API wants object names in paths.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2024-05-01T12:34:56.789Z` (or with an offset) → `SystemTime`.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once('T').or_else(|| s.split_once(' '))?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (time, offset_secs) =
        if let Some(t) = rest.strip_suffix('Z').or_else(|| rest.strip_suffix('z')) {
            (t, 0i64)
        } else {
            let pos = rest.rfind(['+', '-'])?;
            let (t, off) = rest.split_at(pos);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, m) = off[1..].split_once(':')?;
            (
                t,
                sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60),
            )
        };
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let sec_str = t.next()?;
    let (whole, frac) = sec_str.split_once('.').unwrap_or((sec_str, ""));
    let second: i64 = whole.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse() {
        let t = parse_rfc3339("2026-11-25T19:51:51.729866Z").unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_636_311);
        assert_eq!(d.subsec_nanos(), 729_866_000);
        assert_eq!(
            parse_rfc3339("1970-01-01T01:00:00+01:00").unwrap(),
            SystemTime::UNIX_EPOCH
        );
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z")
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            951_868_800
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(encode("a/b c+é"), "a%2Fb%20c%2B%C3%A9");
        assert_eq!(encode("A-z_0.~"), "A-z_0.~");
    }

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
