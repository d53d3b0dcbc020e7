//! The Azure target's puts: one `Put Blob` for a short overwrite, or blocks
//! staged concurrently and committed with one `Put Block List`, under the
//! shared abort-on-drop guard.

use atlas_core::Result;
use atlas_core::backup::{Checksum, ObjectKey, PutMode, PutResult};
use azure_core::prelude::IfMatchCondition;
use azure_core::request_options::Metadata;
use azure_storage_blobs::blob::{BlobBlockType, BlockList};
use azure_storage_blobs::prelude::{BlobClient, BlockId, Hash};
use bytes::Bytes;
use tracing::debug;

use super::error::{map_err, map_put_err};
use super::service::{BACKEND, CONTENT_TYPE, META_CRC32C};
use super::target::Inner;
use crate::cloud::abort::AbortOnDrop;
use crate::cloud::checksum::{crc32c_hex, md5};
use crate::cloud::parts::{PartCutter, upload_parts};
use crate::cloud::put::Uploads;
use crate::cloud::status::Access;
use crate::cloud::unquote;

impl Uploads for Inner {
    fn part_size(&self) -> usize {
        self.transfer.part_size
    }

    /// Creates always commit a block list: Azurite refuses `Put Blob` with
    /// `If-None-Match: *` where an interrupted upload left uncommitted
    /// blocks, but `Put Block List` ignores them.
    fn single_request(&self, mode: PutMode) -> bool {
        mode == PutMode::Overwrite
    }

    /// One `Put Blob` with the body's MD5.
    async fn put_single(
        &self,
        key: &ObjectKey,
        data: Bytes,
        checksum: Checksum,
        mode: PutMode,
    ) -> Result<PutResult> {
        let md5 = md5(&data);
        let size = data.len() as u64;
        let blob = self.blob(key);
        let out = self
            .transfer
            .retry
            .run(BACKEND, "put blob", || {
                let mut req = blob
                    .put_block_blob(data.clone())
                    .content_type(CONTENT_TYPE)
                    .hash(Hash::MD5(md5))
                    .metadata(checksum_metadata(checksum));
                if mode == PutMode::Create {
                    req = req.if_match(IfMatchCondition::NotMatch("*".into()));
                }
                async move { req.await.map_err(|e| map_put_err(e, mode, "put blob", key)) }
            })
            .await?;
        Ok(PutResult::new(size, checksum).with_etag(Some(unquote(&out.etag))))
    }

    /// Blocks staged concurrently, then one `Put Block List`.
    async fn put_parts(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Option<Bytes>,
        mode: PutMode,
    ) -> Result<PutResult> {
        let blob = self.blob(key);
        let upload: u64 = rand::random();
        let Some(first) = first else {
            return self
                .commit(
                    key,
                    &blob,
                    Vec::new(),
                    cutter.checksum(),
                    cutter.len(),
                    mode,
                )
                .await;
        };
        // Blob Storage has no call to discard staged blocks: the guard's
        // abort only records the abandoned upload. Nothing of it is visible,
        // and the service drops uncommitted blocks after seven days.
        let guard = AbortOnDrop::new(
            BACKEND,
            format!("block upload {upload:016x} of {key}"),
            "the service drops its uncommitted blocks after seven days",
            abandoned(key.to_string(), upload),
        );
        guard
            .run(async {
                let ids = upload_parts(cutter, first, self.transfer.concurrency, |number, part| {
                    // Equal-length ids (Azure requires it), unique per upload.
                    let id = BlockId::new(Bytes::from(format!("{upload:016x}-{number:08}")));
                    let blob = &blob;
                    async move {
                        let what = format!("put block {number}");
                        self.transfer
                            .retry
                            .run(BACKEND, &what, || {
                                let req = blob.put_block(id.clone(), part.clone());
                                async {
                                    req.await
                                        .map_err(|e| map_err(e, Access::Write, &what, key.as_str()))
                                }
                            })
                            .await?;
                        Ok(id)
                    }
                })
                .await?;
                self.commit(key, &blob, ids, cutter.checksum(), cutter.len(), mode)
                    .await
            })
            .await
    }
}

impl Inner {
    /// Commits the staged blocks `ids` (possibly none: an empty blob).
    async fn commit(
        &self,
        key: &ObjectKey,
        blob: &BlobClient,
        ids: Vec<BlockId>,
        checksum: Checksum,
        size: u64,
        mode: PutMode,
    ) -> Result<PutResult> {
        let count = ids.len();
        let list = BlockList {
            blocks: ids.into_iter().map(BlobBlockType::Uncommitted).collect(),
        };
        let out = self
            .transfer
            .retry
            .run(BACKEND, "put block list", || {
                let mut req = blob
                    .put_block_list(list.clone())
                    .content_type(CONTENT_TYPE)
                    .metadata(checksum_metadata(checksum));
                if mode == PutMode::Create {
                    req = req.if_match(IfMatchCondition::NotMatch("*".into()));
                }
                async move {
                    req.await
                        .map_err(|e| map_put_err(e, mode, "put block list", key))
                }
            })
            .await?;
        debug!(blocks = count, size, %checksum, "block list committed");
        Ok(PutResult::new(size, checksum).with_etag(Some(unquote(&out.etag))))
    }
}

/// The metadata that carries the blob's CRC32C, set in the request that
/// makes the blob visible.
fn checksum_metadata(checksum: Checksum) -> Metadata {
    let mut m = Metadata::new();
    m.insert(META_CRC32C, crc32c_hex(checksum));
    m
}

/// The guard's abort of a block upload: there is nothing to call, so it
/// records that the upload's staged blocks are left for the service.
async fn abandoned(key: String, upload: u64) {
    debug!(%key, upload = %format!("{upload:016x}"), "block upload abandoned; its uncommitted blocks are left for the service to drop");
}
