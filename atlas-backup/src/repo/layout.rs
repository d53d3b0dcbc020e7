//! Object names inside a repository's prefix.

use super::format::{PackId, SnapshotId};
use atlas_core::backup::{ObjectKey, ObjectPrefix};
use atlas_core::error::Result;

/// Object names inside a repository's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) prefix: ObjectPrefix,
}

impl Layout {
    pub(crate) fn new(prefix: ObjectPrefix) -> Self {
        Layout { prefix }
    }
    fn sub(&self, rest: &str) -> Result<ObjectPrefix> {
        ObjectPrefix::new(format!("{}{}", self.prefix.as_str(), rest))
    }
    pub(crate) fn config(&self) -> Result<ObjectKey> {
        self.prefix.key("config")
    }
    pub(crate) fn keys(&self) -> Result<ObjectPrefix> {
        self.sub("keys/")
    }
    pub(crate) fn key_file(&self, id: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("keys/{id}"))
    }
    pub(crate) fn data(&self) -> Result<ObjectPrefix> {
        self.sub("data/")
    }
    pub(crate) fn pack(&self, id: &PackId) -> Result<ObjectKey> {
        let hex = id.to_hex();
        self.prefix.key(&format!("data/{}/{}", &hex[..2], hex))
    }
    pub(crate) fn indexes(&self) -> Result<ObjectPrefix> {
        self.sub("index/")
    }
    pub(crate) fn index(&self, name: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("index/{name}"))
    }
    pub(crate) fn snapshots(&self) -> Result<ObjectPrefix> {
        self.sub("snapshots/")
    }
    pub(crate) fn snapshot(&self, id: &SnapshotId) -> Result<ObjectKey> {
        self.prefix.key(&format!("snapshots/{id}"))
    }
    pub(crate) fn locks(&self) -> Result<ObjectPrefix> {
        self.sub("locks/")
    }
    pub(crate) fn lock(&self, name: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("locks/{name}"))
    }
    /// Where a damaged document at `path` (`snapshots/<id>`) is moved
    /// aside: `damaged/<path>`, out of every folder the repository reads.
    pub(crate) fn damaged_copy(&self, path: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("damaged/{path}"))
    }
    /// `key`'s path inside the repository (`snapshots/<id>`, …).
    pub(crate) fn path_of(&self, key: &ObjectKey) -> String {
        key.as_str()
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(key.as_str())
            .to_owned()
    }
    /// The last segment of `key` (the id of a key file, index, snapshot…).
    pub(crate) fn name_of(key: &ObjectKey) -> &str {
        key.as_str().rsplit('/').next().unwrap_or_default()
    }
}
