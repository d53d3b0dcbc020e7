//! What S3 fixes for every call: the backend's name in errors,
//! size and page limits, and the metadata names Atlas writes.

pub(super) const BACKEND: &str = "s3";
pub(super) const META_CRC32C: &str = "atlas-crc32c";
pub(super) const TAG_CRC32C: &str = "atlas-crc32c";
pub(super) const CONTENT_TYPE: &str = "application/octet-stream";
/// S3's smallest part (all but the last).
pub(super) const MIN_PART: usize = 5 * 1024 * 1024;
/// S3's largest part.
pub(super) const MAX_PART: usize = 5 * 1024 * 1024 * 1024;
pub(super) const MAX_PAGE: u32 = 1000;
