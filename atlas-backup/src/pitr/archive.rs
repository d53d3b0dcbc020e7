//! The WAL archive: `archive_command` and `restore_command` over the
//! repository. Each archived file is a snapshot of its own (source
//! [`WAL_SOURCE`], one file named as PostgreSQL named it), so WAL gets the
//! repository's dedup, encryption, mirroring, retention and `check`.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, info, info_span, warn};

use super::wal::{SegmentHeader, WalFileKind, WalFileName};
use crate::repo::{
    BackupKind, BackupOptions, MirrorSet, Repository, Snapshot, SnapshotId, StreamSource,
};
use atlas_core::{Error, ErrorKind, Result};

/// The source name of every archived WAL file's snapshot.
pub const WAL_SOURCE: &str = "pg-wal";
/// Tag prefix naming the archived file (`pg-wal-file:<name>`).
pub const TAG_WAL_FILE: &str = "pg-wal-file:";
/// Tag prefix of the database system identifier (`pg-system:<id>`).
pub const TAG_SYSTEM: &str = "pg-system:";
/// Tag prefix of a segment's first LSN (`pg-wal-start:<X/Y>`).
pub const TAG_WAL_START: &str = "pg-wal-start:";
/// Tag prefix of a segment's size in bytes (`pg-wal-segsize:<n>`).
pub const TAG_WAL_SEGSIZE: &str = "pg-wal-segsize:";

/// What [`WalArchive::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushOutcome {
    /// The file was stored as this snapshot.
    Stored(SnapshotId),
    /// Every repository already held the file with the same content (a
    /// retried `archive_command`); nothing was written.
    AlreadyArchived(SnapshotId),
}

/// The WAL archive in a set of mirrored repositories: pushes go to every
/// mirror under the set's policy, fetches read the first mirror that has
/// the file and fall back to the next on any failure.
#[derive(Debug, Clone)]
pub struct WalArchive {
    set: MirrorSet,
}

/// The newest snapshot of `repo` holding the archived file `name`.
fn find_in<'a>(snapshots: &'a [Snapshot], name: &WalFileName) -> Option<&'a Snapshot> {
    let tag = format!("{TAG_WAL_FILE}{name}");
    snapshots
        .iter()
        .filter(|s| s.source == WAL_SOURCE && s.tags.contains(&tag))
        .max_by_key(|s| s.time)
}

impl WalArchive {
    /// The archive in `set`.
    pub fn new(set: MirrorSet) -> Self {
        WalArchive { set }
    }

    /// The repositories, first the one fetches read first.
    pub fn repositories(&self) -> &[Repository] {
        self.set.repositories()
    }

    /// Archives the file at `path` under `name` (`%p` and `%f` of
    /// `archive_command`). A segment's header must match its name. A file
    /// every repository already holds with the same bytes succeeds without
    /// writing anything, so a retried push is harmless.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a file that is not what its name says;
    /// [`Error::Conflict`] naming the file when a repository holds
    /// different bytes under the same name (two clusters archiving into one
    /// repository, or a damaged file): nothing is overwritten; read and
    /// target errors otherwise, and then PostgreSQL keeps the file and
    /// retries.
    pub async fn push(&self, name: &WalFileName, path: &Path) -> Result<PushOutcome> {
        let span = info_span!("wal_push", file = %name);
        async move {
            let io = |what: &str, e: std::io::Error| {
                Error::backend_with("wal", format!("{what} {}", path.display()), e)
            };
            let mut file = tokio::fs::File::open(path).await.map_err(|e| io("cannot open", e))?;
            let size = file.metadata().await.map_err(|e| io("cannot stat", e))?.len();
            let mut tags = vec![format!("{TAG_WAL_FILE}{name}")];
            if matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
                let mut head = [0u8; 40];
                file.read_exact(&mut head).await.map_err(|e| io("cannot read the header of", e))?;
                let header = SegmentHeader::parse(name.as_str(), &head)?;
                header.check_name(name)?;
                if name.kind() == WalFileKind::Segment && size != header.segment_size {
                    return Err(Error::invalid(
                        format!("wal file {name}"),
                        format!("is {size} bytes, its header says segments are {}", header.segment_size),
                    ));
                }
                tags.push(format!("{TAG_SYSTEM}{}", header.system_identifier));
                tags.push(format!("{TAG_WAL_START}{}", header.start));
                tags.push(format!("{TAG_WAL_SEGSIZE}{}", header.segment_size));
            }
            let mut holders = 0;
            let mut existing = None;
            for repo in self.set.repositories() {
                let snapshots = repo.snapshots().await?;
                if let Some(s) = find_in(&snapshots, name) {
                    if !same_content(repo, s, name, path).await? {
                        warn!(file = %name, snapshot = %s.id.short(), "a different file of this name is already archived");
                        return Err(Error::conflict(format!(
                            "wal file {name}: the archive already holds different content under this name (snapshot {}); refusing to overwrite it",
                            s.id.short()
                        )));
                    }
                    holders += 1;
                    existing = Some(s.id);
                }
            }
            if let Some(id) = existing.filter(|_| holders == self.set.repositories().len()) {
                info!(snapshot = %id.short(), "already archived with the same content");
                return Ok(PushOutcome::AlreadyArchived(id));
            }
            let file = tokio::fs::File::open(path).await.map_err(|e| io("cannot open", e))?;
            let source = StreamSource::from_async_read(name.as_str(), file)
                .with_name(WAL_SOURCE)
                .with_size_hint(size);
            let mut options = BackupOptions::default().with_kind(BackupKind::PointInTime);
            options.tags = tags;
            let report = self.set.backup(source, options).await?;
            if report.snapshot.totals.bytes != size {
                return Err(Error::backend(
                    "wal",
                    format!("{} changed while it was archived ({size} bytes before, {} read)", path.display(), report.snapshot.totals.bytes),
                ));
            }
            info!(snapshot = %report.snapshot.id.short(), bytes = size, "archived");
            Ok(PushOutcome::Stored(report.snapshot.id))
        }
        .instrument(span)
        .await
    }

    /// Restores the archived file `name` to `dest` (`%f` and `%p` of
    /// `restore_command`), through a temporary file beside it that is
    /// renamed into place only once complete and verified. Returns its
    /// size.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no repository holds the file (the normal
    /// end of the archive for recovery); any other error (a damaged blob,
    /// an unreachable target, a full disk) otherwise, which recovery must
    /// treat as fatal rather than as the end of the archive.
    pub async fn fetch(&self, name: &WalFileName, dest: &Path) -> Result<u64> {
        let span = info_span!("wal_fetch", file = %name);
        async move {
            let mut failure = None;
            for repo in self.set.repositories() {
                match fetch_from(repo, name, dest).await {
                    Ok(n) => {
                        info!(bytes = n, "restored");
                        return Ok(n);
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        warn!(prefix = %repo.prefix(), error = %e, "fetching from this repository failed");
                        failure.get_or_insert(e);
                    }
                }
            }
            Err(failure.unwrap_or_else(|| Error::not_found(format!("wal file {name} in the archive"))))
        }
        .instrument(span)
        .await
    }
}

async fn fetch_from(repo: &Repository, name: &WalFileName, dest: &Path) -> Result<u64> {
    let snapshots = repo.snapshots().await?;
    let snapshot = find_in(&snapshots, name)
        .ok_or_else(|| Error::not_found(format!("wal file {name} in the archive")))?;
    let (_, mut body) = repo
        .restore_file_stream(&snapshot.id.to_hex(), name.as_str())
        .await?;
    let tmp = temporary_beside(dest);
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::backend_with("wal", format!("{what} {}", p.display()), e)
    };
    let written = async {
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io("cannot create", &tmp, e))?;
        let mut n = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece?;
            out.write_all(&piece)
                .await
                .map_err(|e| io("cannot write", &tmp, e))?;
            n += piece.len() as u64;
        }
        out.sync_all()
            .await
            .map_err(|e| io("cannot sync", &tmp, e))?;
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(|e| io("cannot rename into", dest, e))?;
        Ok(n)
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    written
}

fn temporary_beside(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".atlas-fetch-{}", std::process::id()));
    dest.with_file_name(name)
}

/// Whether the archived copy of `name` in `snapshot` has exactly the bytes
/// of the file at `path`.
async fn same_content(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &WalFileName,
    path: &Path,
) -> Result<bool> {
    let (node, mut body) = repo
        .restore_file_stream(&snapshot.id.to_hex(), name.as_str())
        .await?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::backend_with("wal", format!("cannot open {}", path.display()), e))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| Error::backend_with("wal", format!("cannot stat {}", path.display()), e))?
        .len();
    if node.size != size {
        return Ok(false);
    }
    let mut local = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece?;
        local.resize(piece.len(), 0);
        file.read_exact(&mut local).await.map_err(|e| {
            Error::backend_with("wal", format!("cannot read {}", path.display()), e)
        })?;
        if local[..] != piece[..] {
            return Ok(false);
        }
    }
    Ok(true)
}
