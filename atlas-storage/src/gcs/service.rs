//! What Google Cloud Storage fixes for every call: the backend's name in errors,
//! size and page limits, and the metadata names Atlas writes.

pub(super) const BACKEND: &str = "gcs";
pub(super) const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
pub(super) const CONTENT_TYPE: &str = "application/octet-stream";
/// Resumable chunks must be multiples of this.
pub(super) const CHUNK_QUANTUM: usize = 256 * 1024;
pub(super) const MAX_PAGE: u32 = 1000;
