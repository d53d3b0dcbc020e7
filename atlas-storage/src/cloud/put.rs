//! The put of every cloud target: read the first part of the body, then
//! send a short body in one request and a longer one as parts.

use std::future::Future;

use atlas_core::Result;
use atlas_core::backup::{ByteStream, Checksum, ObjectKey, PutMode, PutResult};
use bytes::Bytes;
use tracing::debug;

use super::parts::{PartCutter, Upload};

/// The two ways a cloud target stores a body; [`put`] chooses.
pub(crate) trait Uploads: Sync {
    /// The size of a part: bodies shorter than this may go in one request.
    fn part_size(&self) -> usize;

    /// Whether a body shorter than a part goes in one request in `mode`
    /// (default: always). A target whose single request cannot make a
    /// create atomic sends creates as parts.
    fn single_request(&self, _mode: PutMode) -> bool {
        true
    }

    /// Stores `data`, the whole body, whose CRC32C is `checksum`.
    fn put_single(
        &self,
        key: &ObjectKey,
        data: Bytes,
        checksum: Checksum,
        mode: PutMode,
    ) -> impl Future<Output = Result<PutResult>> + Send;

    /// Stores the body as parts: `first` (none for an empty body), then the
    /// rest of `cutter`.
    fn put_parts(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Option<Bytes>,
        mode: PutMode,
    ) -> impl Future<Output = Result<PutResult>> + Send;
}

/// Stores `body` under `key` through `uploads`, in one request or as parts.
pub(crate) async fn put<U: Uploads>(
    uploads: &U,
    key: &ObjectKey,
    body: ByteStream,
    mode: PutMode,
) -> Result<PutResult> {
    let mut cutter = PartCutter::new(body, uploads.part_size());
    let put = match cutter.start().await? {
        Upload::Single(data) if uploads.single_request(mode) => {
            uploads
                .put_single(key, data, cutter.checksum(), mode)
                .await?
        }
        Upload::Single(data) => {
            let first = (!data.is_empty()).then_some(data);
            uploads.put_parts(key, &mut cutter, first, mode).await?
        }
        Upload::Parts(first) => {
            uploads
                .put_parts(key, &mut cutter, Some(first), mode)
                .await?
        }
    };
    debug!(size = put.size, checksum = %put.checksum, "stored");
    Ok(put)
}

/// Fails a create of a long body early when its key exists, from the
/// answer of a `head`: the upload's completion is still conditional, so
/// this only saves sending a doomed body, and a concurrent create cannot
/// slip in.
#[cfg(any(feature = "s3", feature = "gcs"))]
pub(crate) fn refuse_existing(
    head: Result<atlas_core::backup::ObjectMeta>,
    backend: &str,
    key: &ObjectKey,
) -> Result<()> {
    match head {
        Ok(_) => Err(super::already_exists(backend, key)),
        Err(e) if e.kind() == atlas_core::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::stream::{self, StreamExt};

    use super::*;

    /// Records which way each put went.
    struct Recorder {
        creates_as_parts: bool,
        calls: Mutex<Vec<String>>,
    }

    impl Uploads for Recorder {
        fn part_size(&self) -> usize {
            4
        }

        fn single_request(&self, mode: PutMode) -> bool {
            !(self.creates_as_parts && mode == PutMode::Create)
        }

        async fn put_single(
            &self,
            _key: &ObjectKey,
            data: Bytes,
            checksum: Checksum,
            _mode: PutMode,
        ) -> Result<PutResult> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("single {}", data.len()));
            Ok(PutResult::new(data.len() as u64, checksum))
        }

        async fn put_parts(
            &self,
            _key: &ObjectKey,
            cutter: &mut PartCutter,
            first: Option<Bytes>,
            _mode: PutMode,
        ) -> Result<PutResult> {
            let mut sizes = vec![first.map_or(0, |f| f.len())];
            while let Some(p) = cutter.next_part().await? {
                sizes.push(p.len());
            }
            self.calls.lock().unwrap().push(format!("parts {sizes:?}"));
            Ok(PutResult::new(cutter.len(), cutter.checksum()))
        }
    }

    fn body(len: usize) -> ByteStream {
        stream::iter(vec![Ok(Bytes::from(vec![1u8; len]))]).boxed()
    }

    #[tokio::test]
    async fn short_bodies_go_whole_and_long_ones_as_parts() {
        let key = ObjectKey::new("k").unwrap();
        let r = Recorder {
            creates_as_parts: true,
            calls: Mutex::new(Vec::new()),
        };
        put(&r, &key, body(3), PutMode::Overwrite).await.unwrap();
        put(&r, &key, body(10), PutMode::Overwrite).await.unwrap();
        let created = put(&r, &key, body(3), PutMode::Create).await.unwrap();
        assert_eq!(created.size, 3);
        put(&r, &key, body(0), PutMode::Create).await.unwrap();
        assert_eq!(
            *r.calls.lock().unwrap(),
            ["single 3", "parts [4, 4, 2]", "parts [3]", "parts [0]"]
        );
    }

    #[cfg(any(feature = "s3", feature = "gcs"))]
    #[test]
    fn an_existing_key_refuses_a_create() {
        use atlas_core::ErrorKind;
        use atlas_core::backup::ObjectMeta;

        let key = ObjectKey::new("k").unwrap();
        let meta = ObjectMeta::new(key.clone(), 1, std::time::SystemTime::UNIX_EPOCH);
        let e = refuse_existing(Ok(meta), "s3", &key).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        refuse_existing(Err(atlas_core::Error::not_found("k")), "s3", &key).unwrap();
        let e = refuse_existing(Err(atlas_core::Error::transient("s3", "503")), "s3", &key);
        assert!(e.unwrap_err().is_transient());
    }
}
