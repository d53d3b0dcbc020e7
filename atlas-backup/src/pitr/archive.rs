//! The WAL archive: `archive_command` and `restore_command` over the
//! repository. Each archived file is a snapshot of its own (source
//! [`WAL_SOURCE`], one file named as PostgreSQL named it), so WAL gets the
//! repository's dedup, encryption, mirroring, retention and `check`. An
//! empty pointer object per file (`pitr-wal/<name>/<snapshot id>`),
//! written once the snapshot is committed, finds it without reading every
//! manifest.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, info, info_span, warn};

use super::wal::{SegmentHeader, WalFileKind, WalFileName};
use crate::repo::{
    BackupKind, BackupOptions, MirrorSet, Repository, Snapshot, SnapshotId, StreamSource,
};
use atlas_core::backup::{BackupTargetExt, ObjectPrefix};
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

/// The folder, inside a repository's prefix, of the pointers to the
/// snapshots holding the archived file `name`: one empty object per
/// snapshot, named by its id (`pitr-wal/<name>/<snapshot id>`). A pointer
/// is written only after its snapshot is committed, so an interrupted push
/// leaves no pointer claiming the file is archived; finding a file reads
/// one listing of this folder and one manifest, however large the archive.
const POINTER_FOLDER: &str = "pitr-wal/";

fn pointer_folder(repo: &Repository, name: &WalFileName) -> Result<ObjectPrefix> {
    ObjectPrefix::new(format!("{}{POINTER_FOLDER}{name}/", repo.prefix().as_str()))
}

/// The newest snapshot of `repo` holding the archived file `name`, through
/// its pointers. A pointer whose snapshot is gone (forgotten) or does not
/// hold `name` is ignored.
async fn find_in(repo: &Repository, name: &WalFileName) -> Result<Option<Snapshot>> {
    let folder = pointer_folder(repo, name)?;
    let tag = format!("{TAG_WAL_FILE}{name}");
    let mut newest: Option<Snapshot> = None;
    for meta in repo.target().list_all(&folder).await? {
        let Some(id) = meta
            .key
            .as_str()
            .rsplit('/')
            .next()
            .and_then(|h| h.parse::<SnapshotId>().ok())
        else {
            continue;
        };
        let snapshot = match repo.snapshot(&id.to_hex()).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if snapshot.source == WAL_SOURCE
            && snapshot.tags.contains(&tag)
            && newest.as_ref().is_none_or(|n| snapshot.time > n.time)
        {
            newest = Some(snapshot);
        }
    }
    Ok(newest)
}

/// Records that snapshot `id` of `repo` holds the archived file `name`.
async fn point_to(repo: &Repository, name: &WalFileName, id: &SnapshotId) -> Result<()> {
    let key = pointer_folder(repo, name)?.key(&id.to_hex())?;
    repo.target().put_bytes(&key, bytes::Bytes::new()).await?;
    Ok(())
}

/// Removes the pointer from the archived file `name` to snapshot `id` of
/// `repo`, once that snapshot is forgotten; a pointer already gone is fine.
pub(super) async fn unpoint(repo: &Repository, name: &WalFileName, id: &SnapshotId) -> Result<()> {
    let key = pointer_folder(repo, name)?.key(&id.to_hex())?;
    repo.target().delete_if_exists(&key).await?;
    Ok(())
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
                if let Some(s) = find_in(repo, name).await? {
                    if !same_content(repo, &s, name, path).await? {
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
            // Only now, with the snapshot committed, may the file be found.
            for (repo, outcome) in self.set.repositories().iter().zip(&report.targets) {
                if outcome.error.is_none() {
                    point_to(repo, name, &report.snapshot.id).await?;
                }
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
    let snapshot = find_in(repo, name)
        .await?
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use futures::FutureExt;

    use super::*;
    use crate::pitr::{BaseBackupInfo, BaseBackupSource, Lsn, PitrCatalog};
    use crate::repo::{InitOptions, KdfParams, KeySource, MirrorPolicy, Streaming};

    const SEG: usize = 1 << 20;

    /// A segment of a 1 MiB-segment cluster: a long page header naming
    /// `segno` on timeline 1, then bytes that differ per segment.
    fn segment(segno: u64) -> Vec<u8> {
        let mut b: Vec<u8> = (0..SEG)
            .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 13) as u8 ^ segno as u8)
            .collect();
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(segno * SEG as u64).to_le_bytes());
        b[24..32].copy_from_slice(&42u64.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b
    }

    async fn archive() -> (WalArchive, Repository) {
        let repo = Repository::init(
            Arc::new(Streaming::default()),
            ObjectPrefix::new("pitr/").unwrap(),
            &KeySource::passphrase("wal test"),
            InitOptions::default().with_kdf(KdfParams::insecure_fast()),
        )
        .await
        .unwrap();
        let set = MirrorSet::new(vec![repo.clone()], MirrorPolicy::All).unwrap();
        (WalArchive::new(set), repo)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_pushed_twice_is_stored_once_and_other_bytes_are_refused() {
        let (archive, repo) = archive().await;
        let dir = tempfile::tempdir().unwrap();
        let name = WalFileName::new("000000010000000000000003").unwrap();
        let path = dir.path().join(name.as_str());
        std::fs::write(&path, segment(3)).unwrap();
        let PushOutcome::Stored(first) = archive.push(&name, &path).await.unwrap() else {
            panic!("the first push must store the segment")
        };
        assert_eq!(
            archive.push(&name, &path).await.unwrap(),
            PushOutcome::AlreadyArchived(first)
        );
        let mut other = segment(3);
        other[SEG / 2] ^= 1;
        std::fs::write(&path, &other).unwrap();
        let e = archive.push(&name, &path).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains(name.as_str()), "{e}");
        // A segment under another segment's name is refused before storing.
        let wrong = WalFileName::new("000000010000000000000004").unwrap();
        let e = archive.push(&wrong, &path).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert_eq!(
            repo.snapshots().await.unwrap().len(),
            1,
            "nothing stored but the first push"
        );

        // Fetch: the archived bytes, through a temporary file; a name not
        // archived is NotFound and creates nothing.
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(archive.fetch(&name, &dest).await.unwrap(), SEG as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), segment(3));
        let missing = WalFileName::new("000000010000000000000009").unwrap();
        let gone = dir.path().join("gone");
        let e = archive.fetch(&missing, &gone).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!gone.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_pointer_written_after_the_snapshot_makes_a_file_found() {
        let (archive, repo) = archive().await;
        let dir = tempfile::tempdir().unwrap();
        let name = WalFileName::new("000000010000000000000005").unwrap();
        let path = dir.path().join(name.as_str());
        std::fs::write(&path, segment(5)).unwrap();
        // A push interrupted after its snapshot was committed, before the
        // pointer: the file is not archived as far as a fetch knows.
        let set = MirrorSet::new(vec![repo.clone()], MirrorPolicy::All).unwrap();
        let mut options = BackupOptions::default().with_kind(BackupKind::PointInTime);
        options.tags = vec![format!("{TAG_WAL_FILE}{name}")];
        let source = StreamSource::from_async_read(
            name.as_str(),
            tokio::fs::File::open(&path).await.unwrap(),
        )
        .with_name(WAL_SOURCE);
        let orphan = set.backup(source, options).await.unwrap().snapshot.id;
        let dest = dir.path().join("RECOVERYXLOG");
        let e = archive.fetch(&name, &dest).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        // The retried push stores it again and points to the new snapshot.
        let PushOutcome::Stored(stored) = archive.push(&name, &path).await.unwrap() else {
            panic!("a file without a pointer must be stored")
        };
        assert_ne!(stored, orphan);
        assert_eq!(archive.fetch(&name, &dest).await.unwrap(), SEG as u64);
        let folder = pointer_folder(&repo, &name).unwrap();
        let pointers = repo.target().list_all(&folder).await.unwrap();
        assert_eq!(pointers.len(), 1);
        assert!(pointers[0].key.as_str().ends_with(&stored.to_hex()));
        // A pointer naming a snapshot that does not hold the file is ignored.
        let other = WalFileName::new("000000010000000000000006").unwrap();
        point_to(&repo, &other, &orphan).await.unwrap();
        let e = archive.fetch(&other, &dest).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_base_backup_is_labelled_when_its_producer_ends_and_absent_when_it_fails() {
        let (archive, repo) = archive().await;
        let set = MirrorSet::new(vec![repo.clone()], MirrorPolicy::All).unwrap();
        let stop = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let body = || futures::stream::iter([Ok(bytes::Bytes::from(vec![7u8; 300_000]))]).boxed();
        // The producer fails after its last byte: no snapshot.
        let failing =
            async { Err(atlas_core::Error::backend("pg_basebackup", "exited with 1")) }.boxed();
        let e = set
            .backup(
                BaseBackupSource::new(body(), failing),
                BackupOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exited with 1"), "{e}");
        assert!(repo.snapshots().await.unwrap().is_empty());
        // It succeeds: the label is in the manifest.
        let info = BaseBackupInfo::new(
            42,
            1,
            Lsn(3 * SEG as u64 + 0x28),
            Lsn(3 * SEG as u64 + 0x100),
            stop,
        )
        .unwrap();
        let report = set
            .backup(
                BaseBackupSource::new(body(), async move { Ok(info) }.boxed()),
                BackupOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            BaseBackupInfo::from_snapshot(&report.snapshot).unwrap(),
            info
        );
        for n in 3..=4 {
            let name = WalFileName::new(format!("00000001000000000000000{n}")).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(name.as_str());
            std::fs::write(&path, segment(n)).unwrap();
            archive.push(&name, &path).await.unwrap();
        }
        let catalog = PitrCatalog::load(&repo).await.unwrap();
        assert_eq!(catalog.base_backups.len(), 1);
        assert_eq!(catalog.wal.len(), 2);
        assert_eq!(catalog.segment_size(), SEG as u64);
        assert_eq!(catalog.wal[0].system_identifier, Some(42));
        // The backup is kept: its segments are needed.
        assert!(catalog.wal_released_by(&[report.snapshot.id]).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forgetting_released_wal_removes_its_pointers() {
        let (archive, repo) = archive().await;
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<WalFileName> = (3..=5)
            .map(|n| WalFileName::new(format!("00000001000000000000000{n}")).unwrap())
            .collect();
        for (n, name) in (3..=5).zip(&names) {
            let path = dir.path().join(name.as_str());
            std::fs::write(&path, segment(n)).unwrap();
            archive.push(name, &path).await.unwrap();
        }
        // A base backup starting in segment 5: segments 3 and 4 are released.
        let set = MirrorSet::new(vec![repo.clone()], MirrorPolicy::All).unwrap();
        let info = BaseBackupInfo::new(
            42,
            1,
            Lsn(5 * SEG as u64 + 0x28),
            Lsn(5 * SEG as u64 + 0x100),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap();
        let body = futures::stream::iter([Ok(bytes::Bytes::from(vec![7u8; 1000]))]).boxed();
        set.backup(
            BaseBackupSource::new(body, async move { Ok(info) }.boxed()),
            BackupOptions::default(),
        )
        .await
        .unwrap();
        let forgotten = PitrCatalog::forget_released_wal(&repo, false)
            .await
            .unwrap();
        assert_eq!(forgotten, names[..2].to_vec());
        for (i, name) in names.iter().enumerate() {
            let folder = pointer_folder(&repo, name).unwrap();
            let left = repo.target().list_all(&folder).await.unwrap().len();
            assert_eq!(left, usize::from(i == 2), "pointers left for {name}");
        }
        let dest = dir.path().join("RECOVERYXLOG");
        let e = archive.fetch(&names[0], &dest).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(archive.fetch(&names[2], &dest).await.unwrap(), SEG as u64);
    }
}
