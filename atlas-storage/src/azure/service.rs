//! What Azure Blob Storage fixes for every call: the backend's name in errors,
//! size and page limits, and the metadata names Atlas writes.

pub(super) const BACKEND: &str = "azure";
pub(super) const META_CRC32C: &str = "atlas_crc32c";
pub(super) const CONTENT_TYPE: &str = "application/octet-stream";
pub(super) const MAX_BLOCK: usize = 4000 * 1024 * 1024;
pub(super) const MAX_PAGE: u32 = 5000;
pub(super) const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
pub(super) const EMULATOR_URL: &str = "http://127.0.0.1:10000/devstoreaccount1";
