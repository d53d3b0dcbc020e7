//! What goes wrong inside a repository: the backend name the engine's own
//! errors carry, and [`IntegrityError`], which names the broken piece.

use std::fmt;

use super::format::{BlobId, PackId, SnapshotId};
use atlas_core::error::Error;

/// The backend name in errors raised by the repository engine itself.
pub(crate) const BACKEND: &str = "backup-repo";

/// A corrupted or missing piece of a repository, attached as the `source`
/// of the [`Error::Backend`] that reports it, so that callers can tell
/// exactly what broke: `err.source().and_then(|s| s.downcast_ref::<IntegrityError>())`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntegrityError {
    /// The damaged object, by its path inside the repository
    /// (`snapshots/<id>`, `index/<name>`), when the problem is one whole
    /// object rather than a blob in a pack.
    pub object: Option<String>,
    /// The snapshot being read, if any.
    pub snapshot: Option<SnapshotId>,
    /// The file path inside the snapshot, if any.
    pub path: Option<String>,
    /// The pack holding the bad blob, if known.
    pub pack: Option<PackId>,
    /// The blob, if the problem is one blob.
    pub blob: Option<BlobId>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A damaged manifest's path already names its snapshot.
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        } else if let Some(s) = &self.snapshot {
            write!(f, "snapshot {}: ", s.short())?;
        }
        if let Some(p) = &self.path {
            write!(f, "file {p:?}: ")?;
        }
        if let Some(b) = &self.blob {
            write!(f, "blob {b}")?;
            if let Some(p) = &self.pack {
                write!(f, " in pack {p}")?;
            }
            f.write_str(": ")?;
        } else if let Some(p) = &self.pack {
            write!(f, "pack {p}: ")?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for IntegrityError {}

impl IntegrityError {
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        IntegrityError {
            object: None,
            snapshot: None,
            path: None,
            pack: None,
            blob: None,
            problem: problem.into(),
        }
    }

    pub(crate) fn into_error(self) -> Error {
        Error::backend_with(BACKEND, self.to_string(), self)
    }
}

/// The [`IntegrityError`] inside `err`, if it reports one.
pub fn integrity_error(err: &Error) -> Option<&IntegrityError> {
    std::error::Error::source(err).and_then(|s| s.downcast_ref::<IntegrityError>())
}

pub(crate) fn json_err(e: serde_json::Error) -> Error {
    Error::backend(BACKEND, format!("JSON encoding failed: {e}"))
}
