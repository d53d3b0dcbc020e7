//! What goes in and out of a [`BackupTarget`](super::BackupTarget): object
//! metadata, checksums, byte ranges and per-call options.

use std::fmt;
use std::num::NonZeroU32;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use super::key::ObjectKey;
use crate::error::{Error, Result};

/// A stream of byte chunks: the body of a put, or of a get. An `Err` item in
/// a put body aborts the upload and leaves no object behind.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A [`ByteStream`] of one chunk (none when `bytes` is empty).
pub fn byte_stream(bytes: impl Into<Bytes>) -> ByteStream {
    let bytes = bytes.into();
    if bytes.is_empty() {
        stream::empty().boxed()
    } else {
        stream::once(async move { Ok(bytes) }).boxed()
    }
}

/// A checksum of a whole object, as computed by Atlas while the object was
/// written and returned by [`head`](super::BackupTarget::head).
///
/// CRC32C is the algorithm every backend can verify or store: S3 verifies
/// `x-amz-checksum-crc32c`, GCS computes and verifies `crc32c` on every
/// object, and the filesystem and memory targets compute it themselves.
/// Azure Blob verifies MD5 per block; Atlas keeps the CRC32C of the whole
/// blob in its metadata. Each target's docs say where its checksum comes from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Checksum {
    /// CRC-32C (Castagnoli) of the whole object.
    Crc32c(u32),
}

impl Checksum {
    /// The CRC32C of `data`.
    pub fn crc32c_of(data: &[u8]) -> Self {
        Checksum::Crc32c(crc32c::crc32c(data))
    }

    /// The checksum's bytes, big-endian, as S3 and GCS encode them (before
    /// base64).
    pub fn to_be_bytes(&self) -> Vec<u8> {
        match self {
            Checksum::Crc32c(v) => v.to_be_bytes().to_vec(),
        }
    }

    /// The algorithm's name, e.g. `crc32c`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Crc32c(_) => "crc32c",
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Crc32c(v) => write!(f, "crc32c:{v:08x}"),
        }
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Computes a CRC32C incrementally over the chunks of a stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32cHasher {
    state: u32,
    len: u64,
}

impl Crc32cHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.state = crc32c::crc32c_append(self.state, data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of everything fed so far.
    pub fn checksum(&self) -> Checksum {
        Checksum::Crc32c(self.state)
    }
}

/// What a target knows about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectMeta {
    /// The object's key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written, as the backend reports it.
    pub last_modified: SystemTime,
    /// Checksum of the whole object. Always present from
    /// [`head`](super::BackupTarget::head) for objects written through
    /// Atlas; listings may leave it out where the backend's listing does not
    /// carry it (each target documents this).
    pub checksum: Option<Checksum>,
    /// The backend's entity tag, where it has one (quotes removed).
    pub etag: Option<String>,
    /// The backend's version or generation of the object, where it has one.
    pub version: Option<String>,
}

impl ObjectMeta {
    /// Metadata with the required fields; `checksum`, `etag` and `version`
    /// empty.
    pub fn new(key: ObjectKey, size: u64, last_modified: SystemTime) -> Self {
        ObjectMeta {
            key,
            size,
            last_modified,
            checksum: None,
            etag: None,
            version: None,
        }
    }

    /// Sets the checksum.
    pub fn with_checksum(mut self, checksum: Option<Checksum>) -> Self {
        self.checksum = checksum;
        self
    }

    /// Sets the entity tag.
    pub fn with_etag(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, version: Option<String>) -> Self {
        self.version = version;
        self
    }
}

/// What a put that never finished left on a target: a writer killed
/// mid-put leaves a temporary file, or an unfinished multipart upload,
/// which no get, head or listing shows but which takes space. A put still
/// in progress looks the same; callers tell them apart by
/// [`last_modified`](Self::last_modified).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnfinishedPut {
    /// The target's own name for it (a temporary file's path below the
    /// target's root, an upload id), as
    /// [`remove_unfinished_put`](super::BackupTarget::remove_unfinished_put)
    /// takes it back.
    pub id: String,
    /// When it was last written to (or started, where the backend records
    /// nothing later).
    pub last_modified: SystemTime,
    /// Bytes it holds, where known (0 otherwise).
    pub size: u64,
}

impl UnfinishedPut {
    /// A leftover named `id`, last written at `last_modified`.
    pub fn new(id: impl Into<String>, last_modified: SystemTime, size: u64) -> Self {
        UnfinishedPut {
            id: id.into(),
            last_modified,
            size,
        }
    }
}

/// What a successful put wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutResult {
    /// Bytes written.
    pub size: u64,
    /// The checksum Atlas computed while streaming (and, where the backend
    /// verifies checksums, the one it verified).
    pub checksum: Checksum,
    /// The backend's entity tag for the new object, where it returns one.
    pub etag: Option<String>,
    /// The backend's version or generation of the new object, where it has one.
    pub version: Option<String>,
}

impl PutResult {
    /// A result with `etag` and `version` empty.
    pub fn new(size: u64, checksum: Checksum) -> Self {
        PutResult {
            size,
            checksum,
            etag: None,
            version: None,
        }
    }

    /// Sets the entity tag.
    pub fn with_etag(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, version: Option<String>) -> Self {
        self.version = version;
        self
    }
}

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Write the object, replacing any existing one (the default).
    #[default]
    Overwrite,
    /// Create the object only if the key is free; otherwise fail with
    /// [`Error::Conflict`] and leave the existing object untouched. Atomic on
    /// every target: of concurrent creates of one key exactly one succeeds.
    /// Used for manifests and locks.
    Create,
}

/// Options of [`put_opts`](super::BackupTarget::put_opts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    /// Overwrite (default) or create-only.
    pub mode: PutMode,
}

impl PutOptions {
    /// Overwrite any existing object (the default).
    pub fn overwrite() -> Self {
        PutOptions {
            mode: PutMode::Overwrite,
        }
    }

    /// Create only if absent; see [`PutMode::Create`].
    pub fn create() -> Self {
        PutOptions {
            mode: PutMode::Create,
        }
    }
}

/// A range of bytes of an object: from `start` to `end` (exclusive), or to
/// the end of the object when `end` is `None`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    start: u64,
    end: Option<u64>,
}

impl ByteRange {
    /// Bytes `start..end`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `range`) when `end <= start`.
    pub fn new(start: u64, end: u64) -> Result<Self> {
        if end <= start {
            return Err(Error::invalid(
                "range",
                format!("end ({end}) must be greater than start ({start})"),
            ));
        }
        Ok(ByteRange {
            start,
            end: Some(end),
        })
    }

    /// Bytes from `start` to the end of the object.
    pub fn starting_at(start: u64) -> Self {
        ByteRange { start, end: None }
    }

    /// First byte of the range.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End of the range (exclusive), if bounded.
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// The bytes this range selects of an object of `size` bytes: `end` is
    /// clamped to `size`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `range`) when `start >= size` — also
    /// for every range of an empty object, as S3 and Azure do.
    pub fn resolve(&self, size: u64) -> Result<Range<u64>> {
        if self.start >= size {
            return Err(Error::invalid(
                "range",
                format!(
                    "start ({}) must be less than the object size ({size})",
                    self.start
                ),
            ));
        }
        let end = self.end.map_or(size, |e| e.min(size));
        Ok(self.start..end)
    }

    /// The HTTP `Range` header value, e.g. `bytes=0-99` for `0..100`.
    pub fn to_http_header(&self) -> String {
        match self.end {
            Some(end) => format!("bytes={}-{}", self.start, end - 1),
            None => format!("bytes={}-", self.start),
        }
    }
}

impl fmt::Debug for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end {
            Some(end) => write!(f, "{}..{}", self.start, end),
            None => write!(f, "{}..", self.start),
        }
    }
}

/// Options of [`get_opts`](super::BackupTarget::get_opts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetOptions {
    /// Only these bytes (default: the whole object).
    pub range: Option<ByteRange>,
}

impl GetOptions {
    /// Only the bytes of `range`.
    pub fn range(range: ByteRange) -> Self {
        GetOptions { range: Some(range) }
    }
}

/// The answer to a get: the object's metadata, the byte range returned, and
/// the bytes as a stream.
#[non_exhaustive]
pub struct GetResult {
    /// Metadata of the whole object (`size` is the object's size, not the
    /// range's).
    pub meta: ObjectMeta,
    /// The bytes the stream yields, as offsets in the object.
    pub range: Range<u64>,
    /// The bytes. An `Err` item means the transfer broke; the bytes before it
    /// are valid.
    pub body: ByteStream,
}

impl GetResult {
    /// A result streaming `body` for `range` of the object described by `meta`.
    pub fn new(meta: ObjectMeta, range: Range<u64>, body: ByteStream) -> Self {
        GetResult { meta, range, body }
    }

    /// Collects the whole body into one buffer. Use only for objects known to
    /// be small (manifests, locks): memory grows with the object.
    ///
    /// # Errors
    /// The first error the stream yields.
    pub async fn bytes(self) -> Result<Bytes> {
        let mut body = self.body;
        let mut buf = bytes::BytesMut::with_capacity(
            usize::try_from(self.range.end - self.range.start).unwrap_or(0),
        );
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Options of [`list_opts`](super::BackupTarget::list_opts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListOptions {
    /// How many keys to ask the backend for per page (default: the target's
    /// own, usually the backend's maximum). Backends cap it at their maximum
    /// (1000 for S3 and GCS, 5000 for Azure).
    pub page_size: Option<NonZeroU32>,
    /// List only keys strictly after this one (to resume a listing).
    pub start_after: Option<ObjectKey>,
}

impl ListOptions {
    /// Sets the page size.
    pub fn with_page_size(mut self, page_size: NonZeroU32) -> Self {
        self.page_size = Some(page_size);
        self
    }

    /// Resumes after `key`.
    pub fn with_start_after(mut self, key: ObjectKey) -> Self {
        self.start_after = Some(key);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_object_size() {
        let r = ByteRange::new(10, 20).unwrap();
        assert_eq!(r.resolve(100).unwrap(), 10..20);
        assert_eq!(r.resolve(15).unwrap(), 10..15);
        assert!(r.resolve(10).is_err());
        assert_eq!(ByteRange::starting_at(5).resolve(8).unwrap(), 5..8);
        assert!(ByteRange::starting_at(0).resolve(0).is_err());
        assert!(ByteRange::new(5, 5).is_err());
        assert_eq!(r.to_http_header(), "bytes=10-19");
        assert_eq!(ByteRange::starting_at(7).to_http_header(), "bytes=7-");
    }

    #[test]
    fn incremental_crc32c_matches_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Crc32cHasher::new();
        for chunk in data.chunks(333) {
            h.update(chunk);
        }
        assert_eq!(h.checksum(), Checksum::crc32c_of(&data));
        assert_eq!(h.len(), 10_000);
        // The published check value of CRC-32C.
        assert_eq!(
            Checksum::crc32c_of(b"123456789"),
            Checksum::Crc32c(0xE306_9283)
        );
    }
}
