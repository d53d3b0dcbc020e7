//! [`GcsTarget`] and its [`BackupTarget`] calls: get, head, list, delete, and
//! the choice between a multipart and a resumable upload (the uploads
//! themselves are in `upload`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutOptions, PutResult,
};
use atlas_core::{Error, Result};
use futures::stream::{self, BoxStream, StreamExt};
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reqwest::{Method, StatusCode, header};
use tracing::{Instrument, debug, debug_span};

use super::error::{json, send, status_error};
use super::service::{BACKEND, MAX_PAGE};
use super::wire::{ObjectList, ObjectResource, encode, meta_of};
use crate::cloud::body_stream;
use crate::cloud::config::Transfer;
use crate::cloud::list::{Listing, Page, before_start, list, listed_key};
use crate::cloud::put::put;
use crate::cloud::status::Access;

/// The client and settings every request of a target uses.
pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) credentials: Option<Credentials>,
    pub(super) bucket: String,
    pub(super) endpoint: String,
    pub(super) transfer: Transfer,
}

/// A [`BackupTarget`] on a Google Cloud Storage bucket. See the
/// [module docs](super). Clones share the client.
#[derive(Clone)]
pub struct GcsTarget {
    inner: Arc<Inner>,
}

impl fmt::Debug for GcsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsTarget")
            .field("bucket", &self.inner.bucket)
            .field("endpoint", &self.inner.endpoint)
            .field("chunk_size", &self.inner.transfer.part_size)
            .finish_non_exhaustive()
    }
}

impl GcsTarget {
    pub(super) fn from_inner(inner: Arc<Inner>) -> Self {
        GcsTarget { inner }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The most bytes of a put's body this target holds at once: two
    /// chunks (the one travelling, the one being read).
    pub fn max_buffered_bytes(&self) -> u64 {
        self.inner.transfer.max_buffered_bytes()
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
            .transfer
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
                    _ => {
                        Err(status_error(resp, Access::Write, "create bucket", &inner.bucket).await)
                    }
                }
            })
            .await
    }
}

impl Inner {
    /// A request with the credentials' headers.
    pub(super) async fn request(
        &self,
        method: Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder> {
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

    pub(super) fn upload_url(&self) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o",
            self.endpoint,
            encode(&self.bucket)
        )
    }

    pub(super) async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let url = self.object_url(key);
        let obj: ObjectResource = self
            .transfer
            .retry
            .run(BACKEND, "get object metadata", || async {
                let req = self.request(Method::GET, &url).await?;
                let resp = send(req, "head", key.as_str()).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, Access::Read, "head", key.as_str()).await);
                }
                json(resp, "head", key.as_str()).await
            })
            .await?;
        meta_of(obj)
    }
}

impl Listing for Inner {
    type Token = String;
    const MAX_PAGE: u32 = MAX_PAGE;

    async fn list_page(
        &self,
        prefix: &str,
        page: u32,
        token: Option<String>,
        after: Option<&str>,
    ) -> Result<Page<String>> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, encode(&self.bucket));
        let mut query = vec![
            ("prefix", prefix.to_owned()),
            ("maxResults", page.to_string()),
            (
                "fields",
                "items(name,size,updated,crc32c,etag,generation),nextPageToken".to_owned(),
            ),
        ];
        if let Some(t) = &token {
            query.push(("pageToken", t.clone()));
        }
        if let Some(a) = after {
            // startOffset is inclusive; the equal key is skipped below.
            query.push(("startOffset", a.to_owned()));
        }
        let out: ObjectList = self
            .transfer
            .retry
            .run(BACKEND, "list objects", || async {
                let req = self.request(Method::GET, &url).await?.query(&query);
                let resp = send(req, "list", prefix).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, Access::Read, "list", prefix).await);
                }
                json(resp, "list", prefix).await
            })
            .await?;
        let items = out
            .items
            .into_iter()
            .filter(|obj| !before_start(&obj.name, after) && listed_key(&obj.name).is_some())
            .map(meta_of)
            .collect();
        Ok(Page {
            items,
            next: out.next_page_token.filter(|t| !t.is_empty()),
        })
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
        put(self.inner.as_ref(), key, body, options.mode)
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
                .transfer
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
                        return Err(status_error(resp, Access::Read, "get", key.as_str()).await);
                    }
                    Ok(resp)
                })
                .await?;
            let body = body_stream(BACKEND, key, resp.bytes_stream());
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
        list(
            self.inner.clone(),
            BACKEND,
            &self.inner.bucket,
            prefix,
            options,
        )
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let span =
            debug_span!("backup.delete", backend = BACKEND, bucket = %self.inner.bucket, %key);
        async move {
            let inner = &self.inner;
            let url = inner.object_url(key);
            inner
                .transfer
                .retry
                .run(BACKEND, "delete object", || async {
                    let req = inner.request(Method::DELETE, &url).await?;
                    let resp = send(req, "delete", key.as_str()).await?;
                    if !resp.status().is_success() {
                        return Err(status_error(resp, Access::Write, "delete", key.as_str()).await);
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
