//! The GCS target's uploads: a body shorter than a chunk in one multipart
//! request, a longer one through a resumable session, chunk by chunk,
//! cancelled through the shared guard when it fails or is dropped.

use atlas_core::backup::{Checksum, ObjectKey, PutMode, PutResult};
use atlas_core::{Error, Result};
use bytes::{Bytes, BytesMut};
use reqwest::{Method, header};
use tracing::{debug, warn};

use super::error::{json, send, status_error};
use super::service::{BACKEND, CONTENT_TYPE};
use super::target::Inner;
use super::wire::ObjectResource;
use crate::cloud::abort::AbortOnDrop;
use crate::cloud::checksum::{crc32c_base64, parse_crc32c_base64};
use crate::cloud::parts::PartCutter;
use crate::cloud::put::{Uploads, refuse_existing};
use crate::cloud::status::Access;

impl Uploads for Inner {
    fn part_size(&self) -> usize {
        self.transfer.part_size
    }

    /// One multipart upload (`uploadType=multipart`) carrying the CRC32C.
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
            "crc32c": crc32c_base64(checksum),
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
            .transfer
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
                    return Err(
                        status_error(resp, Access::of_put(mode), "put", key.as_str()).await,
                    );
                }
                json(resp, "put", key.as_str()).await
            })
            .await?;
        finish_put(key, obj, data.len() as u64, checksum)
    }

    /// A resumable upload session, chunk by chunk.
    async fn put_parts(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Option<Bytes>,
        mode: PutMode,
    ) -> Result<PutResult> {
        if mode == PutMode::Create {
            // fake-gcs-server ignores ifGenerationMatch on sessions; GCS
            // applies it at the end, and this saves a doomed upload there.
            refuse_existing(self.head(key).await, BACKEND, key)?;
        }
        let session = self.start_session(key, mode).await?;
        let guard = AbortOnDrop::new(
            BACKEND,
            format!("resumable upload of {key}"),
            "GCS expires the session after a week",
            cancel(self.http.clone(), session.clone()),
        );
        guard
            .run(self.send_chunks(key, &session, cutter, first.unwrap_or_default(), mode))
            .await
    }
}

impl Inner {
    async fn start_session(&self, key: &ObjectKey, mode: PutMode) -> Result<String> {
        let url = self.upload_url();
        let mut query = vec![("uploadType", "resumable".to_owned())];
        if mode == PutMode::Create {
            query.push(("ifGenerationMatch", "0".to_owned()));
        }
        let metadata =
            serde_json::json!({ "name": key.as_str(), "contentType": CONTENT_TYPE }).to_string();
        self.transfer
            .retry
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
                    return Err(
                        status_error(resp, Access::of_put(mode), "put", key.as_str()).await,
                    );
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
        mode: PutMode,
    ) -> Result<PutResult> {
        let mut offset = 0u64;
        let mut part = Some(first);
        loop {
            let chunk = match part.take() {
                Some(c) => c,
                None => Bytes::new(),
            };
            let last = chunk.len() < self.transfer.part_size;
            let total = last.then(|| offset + chunk.len() as u64);
            let hash = last.then(|| cutter.checksum());
            let outcome = self
                .send_chunk(key, session, (offset, chunk.clone()), total, hash, mode)
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
        (offset, chunk): (u64, Bytes),
        total: Option<u64>,
        hash: Option<Checksum>,
        mode: PutMode,
    ) -> Result<Option<ObjectResource>> {
        let mut first_attempt = true;
        self.transfer
            .retry
            .run(BACKEND, "upload chunk", || {
                let retrying = !std::mem::replace(&mut first_attempt, false);
                let chunk = chunk.clone();
                async move {
                    let mut skip = 0u64;
                    if retrying {
                        match self.persisted(session, key, mode).await? {
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
                        req = req.header("X-Goog-Hash", format!("crc32c={}", crc32c_base64(h)));
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
                        _ => {
                            Err(status_error(resp, Access::of_put(mode), "put", key.as_str()).await)
                        }
                    }
                }
            })
            .await
    }

    async fn persisted(&self, session: &str, key: &ObjectKey, mode: PutMode) -> Result<Persisted> {
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
            _ => Err(status_error(resp, Access::of_put(mode), "put", key.as_str()).await),
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
    if let Some(server) = obj.crc32c.as_deref().and_then(parse_crc32c_base64)
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

/// Cancels a resumable session, so nothing it holds becomes an object.
async fn cancel(http: reqwest::Client, session: String) {
    // GCS answers a cancelled session with 499.
    match http
        .delete(&session)
        .header(header::CONTENT_LENGTH, 0)
        .send()
        .await
    {
        Ok(r) => debug!(status = r.status().as_u16(), "upload session cancelled"),
        Err(e) => warn!(error = %e, "cannot cancel an upload session; GCS expires it after a week"),
    }
}
