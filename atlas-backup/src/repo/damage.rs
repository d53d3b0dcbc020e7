//! Damaged documents: what is wrong with a snapshot manifest or an index
//! file that does not open, so that one damaged object is reported and
//! skipped instead of stopping every operation on the repository.

use std::fmt;

use super::crypto::FileFault;
use super::error::{BACKEND, IntegrityError};
use super::format::{Snapshot, SnapshotId};
use super::version::Document;
use atlas_core::backup::ObjectKey;
use atlas_core::error::Error;

/// Why a sealed document of the repository cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DocumentDamage {
    /// Fewer bytes than any sealed document has (a nonce and a tag): the
    /// object was cut off.
    Truncated,
    /// Its authentication tag does not verify: bytes were changed or cut
    /// off, or it was not written with this repository's key.
    Undecryptable,
    /// It decrypts, but does not decompress or is not a valid document of
    /// its kind.
    Unparsable,
}

impl fmt::Display for DocumentDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocumentDamage::Truncated => "truncated",
            DocumentDamage::Undecryptable => "undecryptable",
            DocumentDamage::Unparsable => "unparsable",
        })
    }
}

/// A snapshot manifest or index file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DamagedFile {
    /// Its path inside the repository: `snapshots/<id>` or `index/<name>`.
    pub path: String,
    /// What kind of damage.
    pub damage: DocumentDamage,
    /// What is wrong, in words.
    pub reason: String,
}

impl DamagedFile {
    /// The object's name: the last segment of [`path`](Self::path) (a
    /// snapshot id for a manifest).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// The snapshot id of a damaged manifest, when its name is one.
    pub fn snapshot_id(&self) -> Option<SnapshotId> {
        if self.path.starts_with("snapshots/") {
            self.name().parse().ok()
        } else {
            None
        }
    }

    pub(crate) fn of_fault(path: String, fault: &FileFault) -> Self {
        let damage = match fault {
            FileFault::Truncated(_) => DocumentDamage::Truncated,
            FileFault::Authentication => DocumentDamage::Undecryptable,
            FileFault::Decompression(_) => DocumentDamage::Unparsable,
        };
        DamagedFile {
            path,
            damage,
            reason: fault.to_string(),
        }
    }

    /// The error an operation that needs this document fails with: an
    /// [`Error::Backend`] naming the object, whose source is an
    /// [`IntegrityError`] with [`object`](IntegrityError::object) set, and
    /// whose message says which repair applies.
    pub(crate) fn into_error(self, doc: Document, key: &ObjectKey) -> Error {
        let hint = match doc {
            Document::Index => {
                "; `repair index` rebuilds the index from the packs and removes damaged index files"
            }
            Document::Snapshot => {
                "; `repair snapshots` moves damaged manifests aside so that prune can run"
            }
            _ => "",
        };
        let message = format!("{} {key}: {}{hint}", doc.noun(), self.reason);
        let snapshot = self.snapshot_id();
        let mut ie = IntegrityError::new(format!("{}{hint}", self.reason));
        ie.object = Some(self.path);
        ie.snapshot = snapshot;
        Error::backend_with(BACKEND, message, ie)
    }
}

impl fmt::Display for DamagedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.path, self.damage, self.reason)
    }
}

/// Every snapshot of a repository, as
/// [`Repository::snapshot_listing`](crate::repo::Repository::snapshot_listing)
/// reads them: the intact ones and the manifests that cannot be read.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SnapshotListing {
    /// The intact snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The manifests that cannot be read, by path.
    pub damaged: Vec<DamagedFile>,
}

/// A document as read: intact, or damaged.
pub(crate) enum Opened<T> {
    Intact(T),
    Damaged(DamagedFile),
}
