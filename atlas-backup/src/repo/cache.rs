//! A local cache of a repository's index files and snapshot manifests, so
//! that an operation against a remote target does not download every one
//! of them again.
//!
//! The cache lives in a folder of its own per repository,
//! `<dir>/<repository id>/{index,snapshots}/<name>`, and holds each object
//! exactly as the target stores it: sealed with the repository's master
//! key, so it is as encrypted as the repository itself. Nothing in it is
//! trusted blindly:
//!
//! - the target's listing is the truth: only objects listed are looked up,
//!   and cached objects no longer listed are deleted;
//! - each entry records the listing's description of the object it copies
//!   (size, and its checksum, entity tag, version or modification time),
//!   and is used only while the listing still describes the object so: a
//!   replaced object is downloaded again;
//! - every entry is authenticated when it is opened, as a download is: one
//!   that does not open with the repository's key (damaged, or from another
//!   repository) is deleted and the object downloaded instead.
//!
//! A cache that cannot be read or written never fails an operation: it is
//! a cache miss, logged at debug level.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::debug;

use atlas_core::backup::ObjectMeta;

/// The first line of every cache entry: the entry format's version.
const MAGIC: &[u8] = b"atlas-backup cache 1\n";

/// The folders of the cache: which kind of document an entry copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CachedKind {
    /// Index files (`index/<name>`).
    Index,
    /// Snapshot manifests (`snapshots/<id>`).
    Snapshot,
}

impl CachedKind {
    fn folder(self) -> &'static str {
        match self {
            CachedKind::Index => "index",
            CachedKind::Snapshot => "snapshots",
        }
    }
}

/// The cache of one repository.
#[derive(Debug, Clone)]
pub(crate) struct LocalCache {
    root: PathBuf,
}

/// Whether `name` can be a file name in the cache: the repository names
/// its documents (and itself) with hex ids; anything else is not cached.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the target's listing says of an object, as recorded in an entry:
/// an entry whose description differs copies another version.
pub(crate) fn describe(meta: &ObjectMeta) -> String {
    let modified = meta
        .last_modified
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "size={} checksum={:?} etag={:?} version={:?} modified={modified}",
        meta.size, meta.checksum, meta.etag, meta.version
    )
}

impl LocalCache {
    /// The cache of the repository `repo_id` under `dir`; `None` when the
    /// id cannot name a folder.
    pub(crate) fn new(dir: &Path, repo_id: &str) -> Option<Self> {
        safe_name(repo_id).then(|| LocalCache {
            root: dir.join(repo_id),
        })
    }

    /// The folder of this repository's cache.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: CachedKind, name: &str) -> Option<PathBuf> {
        safe_name(name).then(|| self.root.join(kind.folder()).join(name))
    }

    /// The cached copy of the object `name` as the listing describes it in
    /// `meta`, or `None` (not cached, cached for another version of the
    /// object, or unreadable: a miss).
    pub(crate) async fn get(
        &self,
        kind: CachedKind,
        name: &str,
        meta: &ObjectMeta,
    ) -> Option<Bytes> {
        let path = self.path(kind, name)?;
        let want = describe(meta);
        let size = meta.size;
        let got = tokio::task::spawn_blocking(move || -> Option<Bytes> {
            let data = std::fs::read(&path).ok()?;
            let rest = data.strip_prefix(MAGIC)?;
            let nl = rest.iter().position(|&b| b == b'\n')?;
            if &rest[..nl] != want.as_bytes() {
                return None;
            }
            let body = &rest[nl + 1..];
            (body.len() as u64 == size).then(|| Bytes::copy_from_slice(body))
        })
        .await
        .ok()
        .flatten();
        debug!(
            kind = kind.folder(),
            name,
            hit = got.is_some(),
            "repository cache lookup"
        );
        got
    }

    /// Stores `sealed`, the object `name` as described by `meta`. Failures
    /// are logged and otherwise ignored.
    pub(crate) async fn put(&self, kind: CachedKind, name: &str, meta: &ObjectMeta, sealed: Bytes) {
        let Some(path) = self.path(kind, name) else {
            return;
        };
        let head = describe(meta);
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            // Written aside and renamed: a reader never sees half an entry.
            let tmp = dir.join(format!(
                ".tmp-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let mut f = std::fs::File::create(&tmp)?;
            let written = f
                .write_all(MAGIC)
                .and_then(|()| f.write_all(head.as_bytes()))
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.write_all(&sealed));
            drop(f);
            match written.and_then(|()| std::fs::rename(&tmp, &path)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(kind = kind.folder(), name, error = %e, "cannot write the repository cache")
            }
            Err(e) => debug!(kind = kind.folder(), name, error = %e, "cache write task failed"),
        }
    }

    /// Deletes the entry `name` (it did not open with the repository's key).
    pub(crate) async fn remove(&self, kind: CachedKind, name: &str) {
        if let Some(path) = self.path(kind, name) {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        }
    }

    /// Deletes every entry of `kind` whose object is not in `present` (the
    /// names the target listed), and leftovers of interrupted writes.
    pub(crate) async fn retain(&self, kind: CachedKind, present: HashSet<String>) {
        let dir = self.root.join(kind.folder());
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                return;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let keep = name.to_str().is_some_and(|n| present.contains(n));
                if !keep {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        })
        .await;
    }
}
