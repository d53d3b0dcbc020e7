//! The multipart uploads a put started and never completed or aborted (its
//! process died): listing them under a prefix and aborting them.
//!
//! A leftover's id is `<key>\<upload id>`: aborting needs both, and `\`
//! never occurs in a key, so the first one splits them back.

use std::time::SystemTime;

use atlas_core::backup::{ObjectKey, ObjectPrefix, UnfinishedPut};
use atlas_core::{Error, Result};
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use tracing::{debug, warn};

use super::error::map_err;
use super::service::{BACKEND, MAX_PAGE};
use super::target::Inner;
use super::upload::abort_upload;
use crate::cloud::status::Access;

/// Separates the key from the upload id in a leftover's id.
const SEPARATOR: char = '\\';

/// The id of the upload `upload_id` of `key`.
fn unfinished_id(key: &ObjectKey, upload_id: &str) -> String {
    format!("{key}{SEPARATOR}{upload_id}")
}

/// The key and upload id an [`unfinished_id`] names.
///
/// # Errors
/// [`Error::InvalidInput`] on the field `unfinished_put` for an id of
/// another shape.
fn parse_unfinished_id(id: &str) -> Result<(ObjectKey, &str)> {
    let refuse = || {
        Error::invalid(
            "unfinished_put",
            format!("{id:?} is not a multipart upload of the S3 target (`<key>\\<upload id>`)"),
        )
    };
    let (key, upload_id) = id.split_once(SEPARATOR).ok_or_else(refuse)?;
    if upload_id.is_empty() {
        return Err(refuse());
    }
    let key = ObjectKey::new(key).map_err(|_| refuse())?;
    Ok((key, upload_id))
}

impl Inner {
    /// Every multipart upload in progress under `prefix`, page by page
    /// (S3 pages them by key, then by upload id). Their initiation time is
    /// their time: S3 records nothing later on the upload. Their size is
    /// unknown (0): S3 tells it only part by part. A server that does not
    /// implement the listing (501 `NotImplemented`, as s3s-fs answers)
    /// reports none, with a warning.
    pub(super) async fn unfinished_puts(
        &self,
        prefix: &ObjectPrefix,
    ) -> Result<Vec<UnfinishedPut>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let page = self
                .transfer
                .retry
                .run(BACKEND, "list multipart uploads", || {
                    let mut req = self
                        .client
                        .list_multipart_uploads()
                        .bucket(&self.bucket)
                        .prefix(prefix.as_str())
                        .max_uploads(i32::try_from(MAX_PAGE).unwrap_or(1000));
                    if let Some((key, upload)) = &markers {
                        req = req.key_marker(key).upload_id_marker(upload);
                    }
                    async {
                        match req.send().await {
                            Ok(page) => Ok(Some(page)),
                            Err(e) if e.code() == Some("NotImplemented") => Ok(None),
                            Err(e) => Err(map_err(
                                e,
                                Access::Read,
                                "list multipart uploads",
                                prefix.as_str(),
                            )),
                        }
                    }
                })
                .await?;
            let Some(page) = page else {
                // Reporting none, as the contract does for targets that
                // cannot list leftovers, keeps prune working there.
                warn!(
                    bucket = %self.bucket,
                    "the server cannot list multipart uploads (NotImplemented); \
                     unfinished uploads are not reported and stay until a \
                     lifecycle rule aborts them"
                );
                return Ok(out);
            };
            for upload in page.uploads() {
                let (Some(name), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                // A prefix-blind server would hand back others' uploads.
                if !name.starts_with(prefix.as_str()) {
                    continue;
                }
                let Ok(key) = ObjectKey::new(name) else {
                    debug!(name, "skipping an upload whose name Atlas cannot address");
                    continue;
                };
                let started = upload
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(UnfinishedPut::new(
                    unfinished_id(&key, upload_id),
                    started,
                    0,
                ));
            }
            let next = match (
                page.is_truncated(),
                page.next_key_marker(),
                page.next_upload_id_marker(),
            ) {
                (Some(true), Some(k), Some(u)) => Some((k.to_owned(), u.to_owned())),
                _ => None,
            };
            // A server that repeats its markers would loop forever.
            if next.is_none() || next == markers {
                break;
            }
            markers = next;
        }
        Ok(out)
    }

    /// Aborts the upload `id` names; one already gone (`NoSuchUpload`, or
    /// 404 from servers without the code) counts as removed.
    pub(super) async fn remove_unfinished_put(&self, id: &str) -> Result<()> {
        let (key, upload_id) = parse_unfinished_id(id)?;
        self.transfer
            .retry
            .run(BACKEND, "abort multipart upload", || {
                abort_upload(&self.client, &self.bucket, key.as_str(), upload_id)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas_core::ErrorKind;

    #[test]
    fn ids_carry_the_key_and_the_upload_id_back() {
        let key = ObjectKey::new("repo/data/ab/p1").unwrap();
        let id = unfinished_id(&key, "2~abc\\def");
        assert_eq!(parse_unfinished_id(&id).unwrap(), (key, "2~abc\\def"));
        for bad in ["repo/data/p1", "repo/data/p1\\", "\\abc", "a//b\\abc"] {
            let err = parse_unfinished_id(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
