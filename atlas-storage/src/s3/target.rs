//! [`S3Target`] and its [`BackupTarget`] calls: get, head, list, delete, and
//! the choice between a single and a multipart put (the puts themselves are
//! in `upload`).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutOptions, PutResult, UnfinishedPut,
};
use atlas_core::{Error, Result};
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use futures::stream::{self, BoxStream};
use tracing::{Instrument, debug, debug_span};

use super::error::map_err;
use super::service::{BACKEND, MAX_PAGE, META_CRC32C, TAG_CRC32C};
use crate::cloud::checksum::{parse_crc32c_base64, parse_crc32c_hex};
use crate::cloud::config::Transfer;
use crate::cloud::list::{Listing, Page, list, listed_key};
use crate::cloud::put::put;
use crate::cloud::status::Access;
use crate::cloud::{body_stream, unquote};

/// The client and settings every request of a target uses.
pub(super) struct Inner {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) endpoint: Option<String>,
    pub(super) transfer: Transfer,
    pub(super) checksum_tags: bool,
}

/// A [`BackupTarget`] on an S3 bucket. See the [module docs](super) for how
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
            .field("part_size", &self.inner.transfer.part_size)
            .field("concurrency", &self.inner.transfer.concurrency)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    pub(super) fn from_inner(inner: Arc<Inner>) -> Self {
        S3Target { inner }
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
        self.inner.transfer.max_buffered_bytes()
    }

    /// Creates the bucket if it does not exist (for first-run setups and
    /// tests). An existing bucket owned by the caller is fine.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Transient`] when the server refuses.
    pub async fn ensure_bucket(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .transfer
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
                        use aws_sdk_s3::error::ProvideErrorMetadata as _;
                        let code = e.code().unwrap_or_default().to_owned();
                        if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
                            Ok(())
                        } else {
                            Err(map_err(e, Access::Write, "create bucket", &inner.bucket))
                        }
                    }
                }
            })
            .await
    }
}

impl Inner {
    pub(super) async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let out = self
            .transfer
            .retry
            .run(BACKEND, "head object", || async {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(|e| map_err(e, Access::Read, "head", key.as_str()))
            })
            .await?;
        let etag = out.e_tag().map(unquote);
        let mut checksum = out
            .metadata()
            .and_then(|m| m.get(META_CRC32C))
            .and_then(|v| parse_crc32c_hex(v));
        let multipart = etag.as_deref().is_some_and(|e| e.contains('-'));
        if checksum.is_none() && multipart && self.checksum_tags {
            checksum = self.tagged_checksum(key).await;
        }
        if checksum.is_none() && out.checksum_type() == Some(&ChecksumType::FullObject) {
            checksum = out.checksum_crc32_c().and_then(parse_crc32c_base64);
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
            .transfer
            .retry
            .run(BACKEND, "get object tagging", || async {
                self.client
                    .get_object_tagging()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .send()
                    .await
                    .map_err(|e| map_err(e, Access::Read, "get tags", key.as_str()))
            })
            .await
            .map_err(|e| debug!(error = %e, "cannot read the checksum tag"))
            .ok()?;
        out.tag_set()
            .iter()
            .find(|t| t.key() == TAG_CRC32C)
            .and_then(|t| parse_crc32c_hex(t.value()))
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
        start_after: Option<&str>,
    ) -> Result<Page<String>> {
        let page = i32::try_from(page).unwrap_or(1000);
        let out = self
            .transfer
            .retry
            .run(BACKEND, "list objects", || {
                let mut req = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .max_keys(page);
                if let Some(t) = &token {
                    req = req.continuation_token(t);
                } else if let Some(a) = start_after {
                    req = req.start_after(a);
                }
                async {
                    req.send()
                        .await
                        .map_err(|e| map_err(e, Access::Read, "list", prefix))
                }
            })
            .await?;
        let items = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = listed_key(o.key()?)?;
                Some(Ok(ObjectMeta::new(
                    key,
                    u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                    o.last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                )
                .with_etag(o.e_tag().map(unquote))))
            })
            .collect();
        let next = match (out.is_truncated(), out.next_continuation_token()) {
            (Some(true), Some(t)) => Some(t.to_owned()),
            _ => None,
        };
        Ok(Page { items, next })
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
        put(self.inner.as_ref(), key, body, options.mode)
            .instrument(span)
            .await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let span = debug_span!("backup.get", backend = BACKEND, bucket = %self.inner.bucket, %key);
        async move {
            let inner = &self.inner;
            let range_header = options.range.map(|r| r.to_http_header());
            let out = inner
                .transfer
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
                            .map_err(|e| map_err(e, Access::Read, "get", key.as_str()))
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
                    .and_then(|v| parse_crc32c_hex(v)),
            )
            .with_etag(out.e_tag().map(unquote))
            .with_version(out.version_id().map(str::to_owned));
            // The SDK's body is no `Stream`; pull it chunk by chunk.
            let chunks = stream::unfold(out.body, |mut body| async move {
                body.next().await.map(|chunk| (chunk, body))
            });
            Ok(GetResult::new(
                meta,
                range,
                body_stream(BACKEND, key, chunks),
            ))
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
            // S3 deletes missing keys silently; the contract reports them.
            inner
                .transfer
                .retry
                .run(BACKEND, "head before delete", || async {
                    inner
                        .client
                        .head_object()
                        .bucket(&inner.bucket)
                        .key(key.as_str())
                        .send()
                        .await
                        .map_err(|e| map_err(e, Access::Read, "head", key.as_str()))
                })
                .await?;
            inner
                .transfer
                .retry
                .run(BACKEND, "delete object", || async {
                    inner
                        .client
                        .delete_object()
                        .bucket(&inner.bucket)
                        .key(key.as_str())
                        .send()
                        .await
                        .map_err(|e| map_err(e, Access::Write, "delete", key.as_str()))
                })
                .await?;
            debug!("deleted");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The multipart uploads under `prefix` that were neither completed
    /// nor aborted: puts in progress, and those whose process died
    /// mid-upload (S3 keeps and bills their parts until they are aborted).
    /// Each time is the upload's initiation, each size 0 (S3 lists sizes
    /// only part by part), each id `<key>\<upload id>`. A server that
    /// does not implement `ListMultipartUploads` reports none (and a
    /// warning): the contract's answer for a target that cannot list its
    /// leftovers, which keeps prune working there.
    async fn unfinished_puts(&self, prefix: &ObjectPrefix) -> Result<Vec<UnfinishedPut>> {
        let span = debug_span!("backup.unfinished_puts", backend = BACKEND, bucket = %self.inner.bucket, %prefix);
        async move {
            let found = self.inner.unfinished_puts(prefix).await?;
            debug!(found = found.len(), "listed unfinished puts");
            Ok(found)
        }
        .instrument(span)
        .await
    }

    /// Aborts the multipart upload (`AbortMultipartUpload`), which frees
    /// its parts; one already gone counts as removed.
    async fn remove_unfinished_put(&self, put: &UnfinishedPut) -> Result<()> {
        let span = debug_span!("backup.remove_unfinished_put", backend = BACKEND, bucket = %self.inner.bucket, id = %put.id);
        async move {
            self.inner.remove_unfinished_put(&put.id).await?;
            debug!("removed an unfinished put");
            Ok(())
        }
        .instrument(span)
        .await
    }
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
}
