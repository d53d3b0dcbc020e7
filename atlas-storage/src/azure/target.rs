//! [`AzureBlobTarget`] and its [`BackupTarget`] calls: get, head, list,
//! delete, and the choice between one `Put Blob` and a block upload (the
//! uploads themselves are in `upload`).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutOptions, PutResult,
};
use atlas_core::{Error, Result};
use azure_core::prelude::{IfMatchCondition, NextMarker};
use azure_core::request_options::MaxResults;
use azure_storage_blobs::prelude::{BlobClient, ContainerClient};
use futures::stream::{self, BoxStream, StreamExt};
use tracing::{Instrument, debug, debug_span};

use super::error::{http_status, map_err};
use super::service::{BACKEND, EMULATOR_URL, MAX_PAGE, META_CRC32C};
use crate::cloud::checksum::parse_crc32c_hex;
use crate::cloud::config::Transfer;
use crate::cloud::list::{Listing, Page, before_start, list, listed_key};
use crate::cloud::put::put;
use crate::cloud::status::Access;
use crate::cloud::{body_stream, unquote};

/// The client and settings every request of a target uses.
pub(super) struct Inner {
    pub(super) container_client: ContainerClient,
    pub(super) account: String,
    pub(super) container: String,
    pub(super) endpoint: Option<String>,
    pub(super) transfer: Transfer,
}

/// A [`BackupTarget`] on an Azure Blob Storage container. See the
/// [module docs](super). Clones share the client.
#[derive(Clone)]
pub struct AzureBlobTarget {
    inner: Arc<Inner>,
}

impl fmt::Debug for AzureBlobTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobTarget")
            .field("account", &self.inner.account)
            .field("container", &self.inner.container)
            .field("endpoint", &self.inner.endpoint)
            .field("block_size", &self.inner.transfer.part_size)
            .field("concurrency", &self.inner.transfer.concurrency)
            .finish_non_exhaustive()
    }
}

impl AzureBlobTarget {
    pub(super) fn from_inner(inner: Arc<Inner>) -> Self {
        AzureBlobTarget { inner }
    }

    /// The default Azurite endpoint, `http://127.0.0.1:10000/devstoreaccount1`.
    pub const EMULATOR_URL: &'static str = EMULATOR_URL;

    /// The container.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// The most bytes of a put's body this target holds at once:
    /// `block_size × (concurrency + 1)`.
    pub fn max_buffered_bytes(&self) -> u64 {
        self.inner.transfer.max_buffered_bytes()
    }

    /// Creates the container if it does not exist (for first-run setups and
    /// tests).
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Transient`] when the service refuses.
    pub async fn ensure_container(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .transfer
            .retry
            .run(BACKEND, "create container", || async {
                match inner.container_client.create().await {
                    Ok(_) => Ok(()),
                    Err(e) if http_status(&e) == Some(409) => Ok(()),
                    Err(e) => Err(map_err(
                        e,
                        Access::Write,
                        "create container",
                        &inner.container,
                    )),
                }
            })
            .await
    }
}

impl Inner {
    pub(super) fn blob(&self, key: &ObjectKey) -> BlobClient {
        self.container_client.blob_client(key.as_str())
    }

    pub(super) async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let blob = self.blob(key);
        let out = self
            .transfer
            .retry
            .run(BACKEND, "get blob properties", || async {
                blob.get_properties()
                    .await
                    .map_err(|e| map_err(e, Access::Read, "head", key.as_str()))
            })
            .await?;
        Ok(meta_of(key.clone(), &out.blob))
    }
}

fn meta_of(key: ObjectKey, blob: &azure_storage_blobs::blob::Blob) -> ObjectMeta {
    let checksum = blob
        .metadata
        .as_ref()
        .and_then(|m| m.get(META_CRC32C))
        .and_then(|v| parse_crc32c_hex(v));
    ObjectMeta::new(
        key,
        blob.properties.content_length,
        SystemTime::from(blob.properties.last_modified),
    )
    .with_checksum(checksum)
    .with_etag(Some(unquote(blob.properties.etag.as_ref())))
    .with_version(blob.version_id.clone())
}

impl Listing for Inner {
    type Token = NextMarker;
    const MAX_PAGE: u32 = MAX_PAGE;

    /// Blob Storage cannot start a listing after a key: the page skips up
    /// to it.
    async fn list_page(
        &self,
        prefix: &str,
        page: u32,
        marker: Option<NextMarker>,
        after: Option<&str>,
    ) -> Result<Page<NextMarker>> {
        let page = NonZeroU32::new(page).unwrap_or(NonZeroU32::MIN);
        let out = self
            .transfer
            .retry
            .run(BACKEND, "list blobs", || {
                let mut req = self
                    .container_client
                    .list_blobs()
                    .prefix(prefix.to_owned())
                    .include_metadata(true)
                    .max_results(MaxResults::new(page));
                if let Some(m) = &marker {
                    req = req.marker(m.clone());
                }
                let mut pages = req.into_stream();
                async move {
                    match pages.next().await {
                        Some(Ok(p)) => Ok(p),
                        Some(Err(e)) => Err(map_err(e, Access::Read, "list", prefix)),
                        None => Err(Error::backend(BACKEND, "list: no response")),
                    }
                }
            })
            .await?;
        let items = out
            .blobs
            .blobs()
            .filter(|blob| !before_start(&blob.name, after))
            .filter_map(|blob| Some(Ok(meta_of(listed_key(&blob.name)?, blob))))
            .collect();
        Ok(Page {
            items,
            next: out.next_marker,
        })
    }
}

#[async_trait]
impl BackupTarget for AzureBlobTarget {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let span = debug_span!("backup.put", backend = BACKEND, container = %self.inner.container, %key, mode = ?options.mode);
        put(self.inner.as_ref(), key, body, options.mode)
            .instrument(span)
            .await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let span =
            debug_span!("backup.get", backend = BACKEND, container = %self.inner.container, %key);
        async move {
            let inner = &self.inner;
            // The size first, so that ranges resolve exactly (and a range
            // past the end is refused) whatever the service does with them;
            // the read is then pinned to that version with If-Match.
            let meta = inner.head(key).await?;
            let range = match options.range {
                Some(r) => r.resolve(meta.size)?,
                None => 0..meta.size,
            };
            if range.is_empty() {
                return Ok(GetResult::new(meta, range, stream::empty().boxed()));
            }
            let blob = inner.blob(key);
            let etag = meta.etag.clone().unwrap_or_default();
            let len = range.end - range.start;
            let first = inner
                .transfer
                .retry
                .run(BACKEND, "get blob", || {
                    let mut pages = blob
                        .get()
                        .range(range.clone())
                        .chunk_size(len)
                        .if_match(IfMatchCondition::Match(format!("\"{etag}\"")))
                        .into_stream();
                    async move {
                        match pages.next().await {
                            Some(Ok(page)) => Ok(page),
                            // A blob replaced since its size was read fails
                            // the If-Match: transient, the retry reads again.
                            Some(Err(e)) => Err(map_err(e, Access::Read, "get", key.as_str())),
                            None => Err(Error::backend(BACKEND, format!("get {key}: no response"))),
                        }
                    }
                })
                .await?;
            Ok(GetResult::new(
                meta,
                range,
                body_stream(BACKEND, key, first.data),
            ))
        }
        .instrument(span)
        .await
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let span =
            debug_span!("backup.head", backend = BACKEND, container = %self.inner.container, %key);
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
            &self.inner.container,
            prefix,
            options,
        )
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let span = debug_span!("backup.delete", backend = BACKEND, container = %self.inner.container, %key);
        async move {
            let blob = self.inner.blob(key);
            self.inner
                .transfer
                .retry
                .run(BACKEND, "delete blob", || async {
                    blob.delete()
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
}
