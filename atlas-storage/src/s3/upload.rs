//! The S3 target's puts: one `PutObject`, or a multipart upload whose parts
//! travel concurrently, completed with the whole object's CRC32C and aborted
//! through the shared guard when it fails or is dropped.

use atlas_core::backup::{Checksum, ObjectKey, PutMode, PutResult};
use atlas_core::{Error, Result};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, Tag, Tagging,
};
use bytes::Bytes;
use tracing::{debug, warn};

use super::error::map_err;
use super::service::{BACKEND, CONTENT_TYPE, META_CRC32C, TAG_CRC32C};
use super::target::Inner;
use crate::cloud::abort::AbortOnDrop;
use crate::cloud::checksum::{crc32c_base64, crc32c_hex};
use crate::cloud::parts::{PartCutter, upload_parts};
use crate::cloud::put::{Uploads, refuse_existing};
use crate::cloud::status::Access;
use crate::cloud::unquote;

impl Uploads for Inner {
    fn part_size(&self) -> usize {
        self.transfer.part_size
    }

    async fn put_single(
        &self,
        key: &ObjectKey,
        data: Bytes,
        checksum: Checksum,
        mode: PutMode,
    ) -> Result<PutResult> {
        let crc = crc32c_base64(checksum);
        let size = data.len() as u64;
        let out = self
            .transfer
            .retry
            .run(BACKEND, "put object", || {
                let mut req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .content_type(CONTENT_TYPE)
                    .checksum_crc32_c(&crc)
                    .metadata(META_CRC32C, crc32c_hex(checksum))
                    .body(SdkBody::from(data.clone()));
                if mode == PutMode::Create {
                    req = req.if_none_match("*");
                }
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_err(e, Access::of_put(mode), "put", key.as_str()))
                }
            })
            .await?;
        Ok(PutResult::new(size, checksum)
            .with_etag(out.e_tag().map(unquote))
            .with_version(out.version_id().map(str::to_owned)))
    }

    async fn put_parts(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Option<Bytes>,
        mode: PutMode,
    ) -> Result<PutResult> {
        let Some(first) = first else {
            // An empty body has no parts; `put` sends it whole.
            return self
                .put_single(key, Bytes::new(), cutter.checksum(), mode)
                .await;
        };
        if mode == PutMode::Create {
            refuse_existing(self.head(key).await, BACKEND, key)?;
        }
        let created = self
            .transfer
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
                    .map_err(|e| map_err(e, Access::Write, "create multipart upload", key.as_str()))
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
        let guard = AbortOnDrop::new(
            BACKEND,
            format!("multipart upload {upload_id} of {key}"),
            "a bucket lifecycle rule must clean it up",
            abort(
                self.client.clone(),
                self.bucket.clone(),
                key.to_string(),
                upload_id.clone(),
            ),
        );
        guard
            .run(self.upload_and_complete(key, cutter, first, mode, &upload_id))
            .await
    }
}

impl Inner {
    async fn upload_and_complete(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Bytes,
        mode: PutMode,
        upload_id: &str,
    ) -> Result<PutResult> {
        let retry = &self.transfer.retry;
        let parts = upload_parts(cutter, first, self.transfer.concurrency, |number, part| {
            let crc = crc32c_base64(Checksum::crc32c_of(&part));
            async move {
                let what = format!("upload part {number}");
                let out = retry
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
                                .map_err(|e| map_err(e, Access::Write, &what, key.as_str()))
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
        let out = retry
            .run(BACKEND, "complete multipart upload", || {
                let mut req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone())
                    .checksum_crc32_c(crc32c_base64(checksum))
                    .checksum_type(ChecksumType::FullObject);
                if mode == PutMode::Create {
                    req = req.if_none_match("*");
                }
                async move {
                    req.send().await.map_err(|e| {
                        map_err(
                            e,
                            Access::of_put(mode),
                            "complete multipart upload",
                            key.as_str(),
                        )
                    })
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
            .value(crc32c_hex(checksum))
            .build()
            .ok()
            .and_then(|t| Tagging::builder().tag_set(t).build().ok());
        let Some(tagging) = tagging else { return };
        let result = self
            .transfer
            .retry
            .run(BACKEND, "tag object", || async {
                self.client
                    .put_object_tagging()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .tagging(tagging.clone())
                    .send()
                    .await
                    .map_err(|e| map_err(e, Access::Write, "tag object", key.as_str()))
            })
            .await;
        if let Err(e) = result {
            debug!(error = %e, "cannot tag the object with its checksum; head will not report one");
        }
    }
}

/// Aborts a multipart upload, so its parts are freed and no object appears.
async fn abort(client: Client, bucket: String, key: String, upload_id: String) {
    match abort_upload(&client, &bucket, &key, &upload_id).await {
        Ok(()) => debug!(%key, %upload_id, "multipart upload aborted"),
        Err(e) => {
            warn!(%key, %upload_id, error = %e, "cannot abort a multipart upload; a bucket lifecycle rule must clean it up")
        }
    }
}

/// One `AbortMultipartUpload` request; an upload that is gone already
/// (`NoSuchUpload`, or 404) counts as aborted.
pub(super) async fn abort_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<()> {
    let sent = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match sent {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("NoSuchUpload") => {
            debug!(%key, %upload_id, "the upload was gone already");
            Ok(())
        }
        Err(e) => match map_err(e, Access::Write, "abort upload", key) {
            err if err.kind() == atlas_core::ErrorKind::NotFound => Ok(()),
            err => Err(err),
        },
    }
}
