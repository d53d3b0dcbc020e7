//! Reading blobs back: the index, one verified blob, trees and directory
//! listings.

use super::error::{BACKEND, IntegrityError};
use super::format::{BlobId, BlobKind, NodeKind, Snapshot, Tree};
use super::index::Index;
use super::repository::Repository;
use atlas_core::backup::{BackupTargetExt, ByteRange};
use atlas_core::error::{Error, ErrorKind, Result};

/// Blobs smaller than this (plaintext) are decoded on the calling task.
const INLINE_DECODE_BELOW: usize = 64 * 1024;

impl Repository {
    pub(crate) async fn load_index(&self) -> Result<std::sync::Arc<Index>> {
        Index::load(self).await
    }

    /// Reads, decrypts and verifies one blob.
    pub(crate) async fn read_blob(
        &self,
        index: &Index,
        kind: BlobKind,
        id: &BlobId,
    ) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| {
            let mut e = IntegrityError::new("is not in the index (missing)");
            e.blob = Some(*id);
            e.into_error()
        })?;
        let pack = index.pack_id(loc.pack);
        let range = ByteRange::new(
            u64::from(loc.offset),
            u64::from(loc.offset) + u64::from(loc.length),
        )?;
        let sealed = self
            .inner
            .target
            .get_range(&self.inner.layout.pack(&pack)?, range)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    let mut ie = IntegrityError::new("its pack is missing");
                    ie.blob = Some(*id);
                    ie.pack = Some(pack);
                    ie.into_error()
                } else {
                    e
                }
            })?
            .bytes()
            .await?;
        let master = self.inner.master.clone();
        let id2 = *id;
        let raw = loc.raw_length;
        // A small blob (most trees) is decoded here: a few microseconds,
        // less than handing it to a blocking thread and waking this task.
        let decoded = if (raw as usize) < INLINE_DECODE_BELOW {
            master.decode_blob(kind, &id2, raw, &sealed)
        } else {
            tokio::task::spawn_blocking(move || master.decode_blob(kind, &id2, raw, &sealed))
                .await
                .map_err(|e| Error::backend(BACKEND, format!("decode task failed: {e}")))?
        };
        decoded.map_err(|fault| {
            let mut ie = IntegrityError::new(fault.to_string());
            ie.blob = Some(*id);
            ie.pack = Some(pack);
            ie.into_error()
        })
    }

    /// Reads a tree blob.
    ///
    /// # Errors
    /// As [`read_blob`](Self::read_blob); [`Error::Backend`] when it is not a tree.
    pub(crate) async fn read_tree(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        let plain = self.read_blob(index, BlobKind::Tree, id).await?;
        serde_json::from_slice(&plain).map_err(|e| {
            let mut ie = IntegrityError::new(format!("is not a valid tree: {e}"));
            ie.blob = Some(*id);
            ie.into_error()
        })
    }

    /// The directory listing of `path` (`""` or `/` for the root) in a snapshot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the path does not exist or is not a directory.
    pub async fn list_dir(&self, snapshot: &Snapshot, path: &str) -> Result<Tree> {
        let index = self.load_index().await?;
        let mut tree = self.read_tree(&index, &snapshot.tree).await?;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            let node = tree
                .nodes
                .iter()
                .find(|n| n.name == seg && n.kind == NodeKind::Dir)
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "directory {path:?} in snapshot {}",
                        snapshot.id.short()
                    ))
                })?;
            let sub = node
                .subtree
                .ok_or_else(|| Error::backend(BACKEND, "directory node without subtree"))?;
            tree = self.read_tree(&index, &sub).await?;
        }
        Ok(tree)
    }
}
