//! Backup: sources, options and the pipeline that overlaps reading,
//! chunking + hashing, compression + encryption and uploads.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use super::chunker::chunk_reader;
use super::crypto::{MasterKey, sealed_capacity};
use super::format::{
    BackupKind, BlobId, BlobKind, ChunkerParams, IndexPack, MAX_RECORDED_UNREADABLE, Node,
    NodeKind, PACK_MAGIC, PackId, PackedBlob, RootMetadata, SkippedEntry, Snapshot, SnapshotId,
    SnapshotTotals, Tree, encode_pack_header,
};
use super::index::{Index, write_index};
use super::lock::LockGuard;
use super::mirror::{MirrorPolicy, TargetOutcome};
use super::pool::{BufferPool, Compressors, PooledBuf};
use super::progress::{ProgressFn, Tracker};
use super::{BACKEND, Repository};
use atlas_core::backup::{ByteStream, PutOptions};
use atlas_core::error::{Error, Result};

/// What a [`BackupSource`] hands to the backup pipeline.
#[non_exhaustive]
pub enum SourceInput {
    /// A directory tree on the local filesystem, walked recursively.
    Directory(PathBuf),
    /// A byte stream stored as one file named `file_name` in the snapshot.
    Stream {
        /// The file's name in the snapshot.
        file_name: String,
        /// The file's permission bits.
        mode: u32,
        /// The stream's length if known (for progress only).
        size_hint: Option<u64>,
        /// The bytes; an `Err` item fails the backup.
        body: ByteStream,
    },
}

impl fmt::Debug for SourceInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceInput::Directory(p) => f.debug_tuple("Directory").field(p).finish(),
            SourceInput::Stream { file_name, .. } => f
                .debug_struct("Stream")
                .field("file_name", file_name)
                .finish_non_exhaustive(),
        }
    }
}

/// Something to back up: a directory tree ([`DirectorySource`]) or a byte
/// stream ([`StreamSource`]). Implement it to name your own sources; the
/// pipeline consumes the [`SourceInput`] it returns.
pub trait BackupSource: Send {
    /// The source name recorded in the manifest (retention groups by it).
    fn source_name(&self) -> String;
    /// The paths recorded in the manifest.
    fn paths(&self) -> Vec<String>;
    /// The input to read.
    fn into_input(self: Box<Self>) -> SourceInput;
}

/// A directory tree: regular files, directories and symlinks with their
/// permission bits and modification times, and the root directory's own
/// mode and mtime ([`Snapshot::root`]). Fifos, sockets and devices are
/// skipped with a warning and counted in [`SnapshotTotals::skipped`].
///
/// An entry below the root that cannot be read (it vanished after its
/// directory was listed, its directory cannot be listed, it turned into
/// something else, a read failed) is left out with a warning, as restic
/// does, and the backup goes on: the report's
/// [`unreadable`](BackupReport::unreadable) list and the manifest
/// ([`Snapshot::unreadable`], [`Snapshot::is_complete`]) name it. Files are
/// read up to the size they had when opened, so a file that grows or
/// shrinks meanwhile is stored as the bytes read, with that size.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    root: PathBuf,
    name: Option<String>,
}

impl DirectorySource {
    /// The tree under `root`; the source name defaults to the path.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirectorySource {
            root: root.into(),
            name: None,
        }
    }

    /// Sets the source name recorded in the manifest.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

impl BackupSource for DirectorySource {
    fn source_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.root.display().to_string())
    }
    fn paths(&self) -> Vec<String> {
        vec![self.root.display().to_string()]
    }
    fn into_input(self: Box<Self>) -> SourceInput {
        SourceInput::Directory(self.root)
    }
}

/// A byte stream (e.g. the output of `pg_dump`) stored as one file.
pub struct StreamSource {
    name: String,
    file_name: String,
    mode: u32,
    size_hint: Option<u64>,
    body: ByteStream,
}

impl fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("name", &self.name)
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

impl StreamSource {
    /// `body` stored as the file `file_name` (mode 0600); the source name
    /// defaults to `file_name`.
    pub fn from_stream(file_name: impl Into<String>, body: ByteStream) -> Self {
        let file_name = file_name.into();
        StreamSource {
            name: file_name.clone(),
            file_name,
            mode: 0o600,
            size_hint: None,
            body,
        }
    }

    /// Everything `reader` yields, stored as the file `file_name`.
    pub fn from_async_read(
        file_name: impl Into<String>,
        reader: impl AsyncRead + Send + Unpin + 'static,
    ) -> Self {
        // Pieces come from a small pool of their own: each is read into
        // spare capacity (nothing zeroed) and goes back to the pool once
        // the chunker has consumed it, so a long dump reuses a few buffers
        // instead of allocating each piece on one thread and freeing it on
        // another (see the pool module).
        let pool = BufferPool::new(STREAM_PIECES_IDLE, STREAM_PIECE);
        let body = stream::unfold(Some((reader, pool)), |state| async move {
            let (mut r, pool) = state?;
            let mut buf = pool.take(STREAM_PIECE);
            match r.read_buf(&mut *buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.into_bytes()), Some((r, pool)))),
                Err(e) => Some((
                    Err(Error::backend(
                        BACKEND,
                        format!("reading the stream source failed: {e}"),
                    )),
                    None,
                )),
            }
        })
        .boxed();
        Self::from_stream(file_name, body)
    }

    /// Sets the source name recorded in the manifest.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the file's permission bits (default 0600).
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Sets the expected length, for progress totals.
    pub fn with_size_hint(mut self, bytes: u64) -> Self {
        self.size_hint = Some(bytes);
        self
    }
}

impl BackupSource for StreamSource {
    fn source_name(&self) -> String {
        self.name.clone()
    }
    fn paths(&self) -> Vec<String> {
        vec![self.file_name.clone()]
    }
    fn into_input(self: Box<Self>) -> SourceInput {
        SourceInput::Stream {
            file_name: self.file_name,
            mode: self.mode,
            size_hint: self.size_hint,
            body: self.body,
        }
    }
}

/// Options of a backup.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Full (read everything) or incremental (reuse unchanged files of the
    /// parent); default incremental. Stream sources are always read whole;
    /// mark database dumps [`BackupKind::PointInTime`].
    pub kind: BackupKind,
    /// Tags recorded in the manifest.
    pub tags: Vec<String>,
    /// Host recorded in the manifest (default: `$HOSTNAME`, else
    /// `/etc/hostname`, else `unknown`).
    pub host: Option<String>,
    /// The parent snapshot (id or unique prefix). Default for incremental
    /// runs: the newest snapshot of the same source and host.
    pub parent: Option<String>,
    /// The snapshot's time (default: now).
    pub time: Option<SystemTime>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Files read at once. Default 2.
    pub read_concurrency: usize,
    /// Blobs compressed and encrypted at once. Default: the number of CPUs.
    pub workers: usize,
    /// Closed packs whose uploads may still be completing (packs are
    /// streamed while they fill; this bounds how far the pipeline runs
    /// ahead of slow targets). Default 2.
    pub upload_concurrency: usize,
}

impl fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupOptions")
            .field("kind", &self.kind)
            .field("tags", &self.tags)
            .field("host", &self.host)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            kind: BackupKind::Incremental,
            tags: Vec::new(),
            host: None,
            parent: None,
            time: None,
            progress: None,
            read_concurrency: 2,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            upload_concurrency: 2,
        }
    }
}

impl BackupOptions {
    /// Sets the kind.
    pub fn with_kind(mut self, kind: BackupKind) -> Self {
        self.kind = kind;
        self
    }
    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
    /// Sets the host.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    /// Sets the parent snapshot.
    pub fn with_parent(mut self, parent: impl Into<String>) -> Self {
        self.parent = Some(parent.into());
        self
    }
    /// Sets the snapshot time.
    pub fn with_time(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }
    /// Sets the progress callback.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// The result of a backup to one repository.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupReport {
    /// The snapshot written (its manifest is visible).
    pub snapshot: Snapshot,
    /// Every entry left out because it could not be read, sorted by path
    /// (the manifest keeps the first [`MAX_RECORDED_UNREADABLE`]). Empty
    /// when the snapshot is complete.
    pub unreadable: Vec<SkippedEntry>,
}

pub(crate) fn default_host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}

struct RawBlob {
    kind: BlobKind,
    id: BlobId,
    data: PooledBuf,
}

struct Ctx {
    master: MasterKey,
    chunker: ChunkerParams,
    seed: u64,
    known: Mutex<HashSet<BlobId>>,
    totals: Mutex<SnapshotTotals>,
    unreadable: Mutex<Vec<SkippedEntry>>,
    tracker: Tracker,
    read_permits: Semaphore,
    incremental: bool,
    parent_repo: Repository,
    parent_index: Arc<Index>,
    /// Chunking windows, one per file being read.
    windows: BufferPool,
    /// Chunks and sealed blobs, from the reader to the targets' writers.
    blobs: BufferPool,
}

impl Ctx {
    fn totals(&self, f: impl FnOnce(&mut SnapshotTotals)) {
        f(&mut self.totals.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Marks `id` as stored by this backup; false when it already was.
    fn claim(&self, id: BlobId) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    /// Leaves the entry `rel` out of the snapshot: it could not be read.
    fn skip_unreadable(&self, rel: &str, reason: String) {
        warn!(path = %rel, reason = %reason, "leaving an unreadable entry out of the snapshot");
        self.totals(|t| t.unreadable += 1);
        self.unreadable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SkippedEntry {
                path: rel.to_owned(),
                reason,
            });
    }

    fn is_known(&self, id: &BlobId) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}

/// The most bytes [`StreamSource::from_async_read`] reads at once.
const STREAM_PIECE: usize = 1 << 20;

/// Pieces of a stream source in flight: the queue to the chunker (4), the
/// one it is consuming and the one being read.
const STREAM_PIECES_IDLE: usize = 6;

/// Sealed blobs a target may hold at once without the blob pool running
/// dry: the four pieces queued for its put, the one its body stream holds,
/// and those in the target's own write queue (the file-system target
/// queues 16 and writes one).
const BLOBS_PER_TARGET: usize = 24;

fn aborted() -> Error {
    Error::backend(
        BACKEND,
        "backup aborted: a later stage of the pipeline failed",
    )
}

/// Reads `reader` to its end, chunking, hashing and queueing new chunks.
/// Runs on a blocking thread. The outer error is fatal (the pipeline
/// stopped); the inner one is the reader's.
fn read_content(
    ctx: &Ctx,
    reader: &mut dyn Read,
    size_hint: Option<u64>,
    tx: &mpsc::Sender<RawBlob>,
) -> Result<io::Result<(Vec<BlobId>, u64)>> {
    let mut ids = Vec::new();
    let mut new_bytes = 0u64;
    let mut new_chunks = 0u64;
    let mut read = 0u64;
    let mut failure: Option<Error> = None;
    let mut window = ctx.windows.take(0);
    let size = chunk_reader(
        reader,
        &mut window,
        size_hint,
        ctx.chunker,
        ctx.seed,
        |chunk: &[u8]| -> io::Result<()> {
            let id = ctx.master.blob_id(chunk);
            let len = chunk.len() as u64;
            read += len;
            ids.push(id);
            if ctx.claim(id) {
                new_bytes += len;
                new_chunks += 1;
                // Copied out of the window into a recycled buffer: only
                // new chunks cost a copy, and no large allocation crosses
                // threads (see the pool module).
                let mut data = ctx.blobs.take(chunk.len());
                data.extend_from_slice(chunk);
                if tx
                    .blocking_send(RawBlob {
                        kind: BlobKind::Data,
                        id,
                        data,
                    })
                    .is_err()
                {
                    failure = Some(aborted());
                    return Err(io::Error::other("aborted"));
                }
            }
            ctx.tracker.update(|p| {
                p.bytes_done += len;
                p.bytes_read += len;
            });
            Ok(())
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    // Chunks queued before a read error are stored all the same (and
    // reused by later files), so they count as added.
    ctx.totals(|t| {
        t.new_bytes += new_bytes;
        t.new_chunks += new_chunks;
        t.bytes_read += read;
    });
    let size = match size {
        Ok(size) => size,
        Err(e) => return Ok(Err(e)),
    };
    ctx.totals(|t| t.chunks += ids.len() as u64);
    Ok(Ok((ids, size)))
}

/// Opens `path` for reading without following a symlink and without
/// waiting on a fifo: the entry was a regular file when its directory was
/// listed, but may have been replaced since.
fn open_source_file(path: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK);
    }
    options.open(path)
}

/// A regular file read for the snapshot: its chunks, the bytes read and
/// its metadata when opened.
struct ReadFile {
    ids: Vec<BlobId>,
    size: u64,
    meta: std::fs::Metadata,
}

/// Reads the file at `path` (relative path `rel`) on a blocking thread.
/// The outer error is fatal; the inner one says why the file is left out.
fn read_source_file(
    ctx: &Ctx,
    path: &Path,
    rel: &str,
    tx: &mpsc::Sender<RawBlob>,
) -> Result<std::result::Result<ReadFile, String>> {
    let file = match open_source_file(path) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("cannot open: {e}"))),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("cannot stat the opened file: {e}"))),
    };
    if !meta.is_file() {
        return Ok(Err("is no longer a regular file".into()));
    }
    // Read no further than the size at open: a file that keeps growing (a
    // log) cannot keep the backup reading, and the size recorded is always
    // that of the bytes stored.
    let len = meta.len();
    let mut reader = (&file).take(len);
    let (ids, size) = match read_content(ctx, &mut reader, Some(len), tx)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("cannot read: {e}"))),
    };
    let changed = size != len
        || file
            .metadata()
            .map(|after| after.len() != len || mtime_of(&after) != mtime_of(&meta))
            .unwrap_or(true);
    if changed {
        warn!(
            path = %rel,
            size_at_open = len,
            stored = size,
            "file changed while it was read; stored the bytes read"
        );
    }
    Ok(Ok(ReadFile { ids, size, meta }))
}

fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::backend_with(BACKEND, format!("{what} {}: {e}", path.display()), e)
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::backend(BACKEND, format!("a worker task failed: {e}"))
}

fn mtime_of(meta: &std::fs::Metadata) -> (i64, u32) {
    (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
}

fn node_name(name: &OsString) -> (String, Option<String>) {
    match name.to_str() {
        Some(s) => (s.to_owned(), None),
        None => (
            name.to_string_lossy().into_owned(),
            Some(super::format::to_hex(name.as_bytes())),
        ),
    }
}

async fn add_tree(ctx: &Ctx, tx: &mpsc::Sender<RawBlob>, tree: &Tree) -> Result<BlobId> {
    let mut json = ctx.blobs.take(0);
    serde_json::to_writer(&mut *json, tree).map_err(super::json_err)?;
    let id = ctx.master.blob_id(&json);
    if ctx.claim(id) {
        let len = json.len() as u64;
        ctx.totals(|t| {
            t.new_bytes += len;
            t.new_chunks += 1;
        });
        tx.send(RawBlob {
            kind: BlobKind::Tree,
            id,
            data: json,
        })
        .await
        .map_err(|_| aborted())?;
    }
    Ok(id)
}

/// One listed directory entry: its name and its `lstat`, which fails when
/// the entry vanished after the listing.
type Listed = (OsString, io::Result<std::fs::Metadata>);

/// Saves the directory `dir` (relative path `rel`, empty for the root) and
/// returns its tree blob, or `None` when it cannot be listed and is left
/// out (an unlistable root fails the backup).
fn save_dir(
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<RawBlob>,
    dir: PathBuf,
    rel: String,
    parent: Option<Tree>,
) -> BoxFuture<'static, Result<Option<BlobId>>> {
    Box::pin(async move {
        if !rel.is_empty() {
            ctx.tracker.update(|p| p.current = Some(rel.clone()));
        }
        let dir2 = dir.clone();
        let listed = tokio::task::spawn_blocking(move || -> io::Result<Vec<Listed>> {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir2)? {
                let entry = entry?;
                out.push((entry.file_name(), entry.metadata()));
            }
            out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            Ok(out)
        })
        .await
        .map_err(join_err)?;
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) if rel.is_empty() => return Err(io_err(&dir, "cannot list directory", e)),
            Err(e) => {
                ctx.skip_unreadable(&rel, format!("cannot list directory: {e}"));
                return Ok(None);
            }
        };
        ctx.totals(|t| t.dirs += 1);
        let parent = Arc::new(parent);
        let nodes: Vec<Option<Node>> = stream::iter(entries)
            .map(|(name, meta)| {
                let ctx = ctx.clone();
                let tx = tx.clone();
                let parent = parent.clone();
                let path = dir.join(&name);
                let rel = if rel.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{rel}/{}", name.to_string_lossy())
                };
                async move { save_entry(ctx, tx, path, rel, name, meta, parent).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let tree = Tree {
            nodes: nodes.into_iter().flatten().collect(),
        };
        add_tree(&ctx, &tx, &tree).await.map(Some)
    })
}

async fn save_entry(
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<RawBlob>,
    path: PathBuf,
    rel: String,
    name: OsString,
    meta: io::Result<std::fs::Metadata>,
    parent: Arc<Option<Tree>>,
) -> Result<Option<Node>> {
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            ctx.skip_unreadable(&rel, format!("cannot stat: {e}"));
            return Ok(None);
        }
    };
    let (name_str, name_bytes) = node_name(&name);
    let prev = parent.as_ref().as_ref().and_then(|t| {
        t.nodes
            .iter()
            .find(|n| n.name == name_str && n.name_bytes == name_bytes)
    });
    let (mtime_sec, mtime_nsec) = mtime_of(&meta);
    let mut node = Node {
        name: name_str,
        name_bytes,
        kind: NodeKind::File,
        mode: meta.permissions().mode() & 0o7777,
        mtime_sec,
        mtime_nsec,
        size: 0,
        inode: meta.ino(),
        content: Vec::new(),
        subtree: None,
        target: None,
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        let parent_sub = match prev
            .filter(|p| p.kind == NodeKind::Dir)
            .and_then(|p| p.subtree)
        {
            Some(id) if ctx.incremental => {
                match ctx.parent_repo.read_tree(&ctx.parent_index, &id).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        warn!(path = %rel, error = %e, "cannot read the parent's tree; reading the directory in full");
                        None
                    }
                }
            }
            _ => None,
        };
        node.kind = NodeKind::Dir;
        node.subtree = save_dir(ctx, tx, path, rel, parent_sub).await?;
        Ok(node.subtree.is_some().then_some(node))
    } else if ft.is_symlink() {
        let target = match tokio::fs::read_link(&path).await {
            Ok(t) => t,
            Err(e) => {
                ctx.skip_unreadable(&rel, format!("cannot read symlink: {e}"));
                return Ok(None);
            }
        };
        node.kind = NodeKind::Symlink;
        node.target = Some(target.to_string_lossy().into_owned());
        ctx.totals(|t| t.symlinks += 1);
        Ok(Some(node))
    } else if ft.is_file() {
        node.size = meta.len();
        let unchanged = ctx.incremental
            && prev.is_some_and(|p| {
                p.kind == NodeKind::File
                    && p.size == node.size
                    && p.mtime_sec == node.mtime_sec
                    && p.mtime_nsec == node.mtime_nsec
                    && p.inode == node.inode
                    && p.content.iter().all(|id| ctx.is_known(id))
            });
        if let (true, Some(p)) = (unchanged, prev) {
            node.content = p.content.clone();
            let n = node.content.len() as u64;
            ctx.totals(|t| {
                t.files += 1;
                t.bytes += node.size;
                t.chunks += n;
            });
            ctx.tracker.update(|pr| {
                pr.files_done += 1;
                pr.bytes_done += node.size;
            });
            return Ok(Some(node));
        }
        let _permit = ctx.read_permits.acquire().await.map_err(|_| aborted())?;
        ctx.tracker.update(|p| p.current = Some(rel.clone()));
        let ctx2 = ctx.clone();
        let rel2 = rel.clone();
        let read = tokio::task::spawn_blocking(move || read_source_file(&ctx2, &path, &rel2, &tx))
            .await
            .map_err(join_err)??;
        let ReadFile { ids, size, meta } = match read {
            Ok(r) => r,
            Err(reason) => {
                ctx.skip_unreadable(&rel, reason);
                return Ok(None);
            }
        };
        // The metadata of the file as opened and read, not as listed.
        (node.mtime_sec, node.mtime_nsec) = mtime_of(&meta);
        node.mode = meta.permissions().mode() & 0o7777;
        node.inode = meta.ino();
        node.content = ids;
        node.size = size;
        ctx.totals(|t| {
            t.files += 1;
            t.bytes += size;
        });
        ctx.tracker.update(|p| p.files_done += 1);
        Ok(Some(node))
    } else {
        warn!(path = %rel, "skipping a special file (fifo, socket or device)");
        ctx.totals(|t| t.skipped += 1);
        Ok(None)
    }
}

/// A reader over a channel of byte chunks, for the blocking chunker.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(io::Error::other(e.to_string())),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

async fn save_stream(
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<RawBlob>,
    file_name: String,
    mode: u32,
    mut body: ByteStream,
) -> Result<BlobId> {
    let (btx, brx) = mpsc::channel::<Result<Bytes>>(4);
    let pump = async move {
        while let Some(item) = body.next().await {
            let stop = item.is_err();
            if btx.send(item).await.is_err() || stop {
                break;
            }
        }
    };
    let ctx2 = ctx.clone();
    let tx2 = tx.clone();
    let name2 = file_name.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx: brx,
            cur: Bytes::new(),
        };
        ctx2.tracker.update(|p| p.current = Some(name2.clone()));
        read_content(&ctx2, &mut reader, None, &tx2)
    });
    let ((), read) = tokio::join!(pump, read);
    let (ids, size) = read
        .map_err(join_err)??
        .map_err(|e| Error::backend_with(BACKEND, format!("reading {file_name} failed: {e}"), e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    ctx.totals(|t| {
        t.files += 1;
        t.dirs += 1;
        t.bytes += size;
    });
    ctx.tracker.update(|p| p.files_done += 1);
    let node = Node {
        name: file_name,
        name_bytes: None,
        kind: NodeKind::File,
        mode,
        mtime_sec: now.as_secs() as i64,
        mtime_nsec: now.subsec_nanos(),
        size,
        inode: 0,
        content: ids,
        subtree: None,
        target: None,
    };
    add_tree(&ctx, &tx, &Tree { nodes: vec![node] }).await
}

/// Counts files and bytes under `root` for progress totals, concurrently
/// with the backup; stops early when `stop` is set.
fn scan_totals(root: PathBuf, tracker: Arc<Ctx>, stop: Arc<AtomicBool>) {
    let mut stack = vec![root];
    let (mut files, mut bytes) = (0u64, 0u64);
    while let Some(dir) = stack.pop() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    tracker.tracker.update(|p| {
        p.files_total = Some(files);
        p.bytes_total = Some(bytes);
    });
}

struct Sink {
    repo: Repository,
    error: Mutex<Option<Error>>,
}

impl Sink {
    fn healthy(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            warn!(target = ?self.repo.inner.target, error = %e, "backup target failed");
            *slot = Some(e);
        }
    }
}

fn healthy_count(sinks: &[Sink]) -> usize {
    sinks.iter().filter(|s| s.healthy()).count()
}

fn quorum_lost(sinks: &[Sink], required: usize) -> Error {
    // One target: its own error, with its own kind (a held lock stays a
    // Conflict).
    if let [only] = sinks
        && let Some(e) = only.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    {
        return e;
    }
    let errors: Vec<String> = sinks
        .iter()
        .filter_map(|s| {
            s.error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|e| format!("{:?}: {e}", s.repo.inner.target))
        })
        .collect();
    Error::backend(
        BACKEND,
        format!(
            "backup failed: {} of {} targets left, {required} required; {}",
            healthy_count(sinks),
            sinks.len(),
            errors.join("; ")
        ),
    )
}

/// A pack being streamed to every healthy target.
struct OpenPack {
    id: PackId,
    size: u64,
    blobs: Vec<PackedBlob>,
    /// Pieces of the pack; `true` marks the trailer, the last piece.
    senders: Vec<mpsc::Sender<(Bytes, bool)>>,
    puts: Vec<(usize, tokio::task::JoinHandle<Result<()>>)>,
}

fn open_pack(sinks: &[Sink]) -> Result<OpenPack> {
    let id = PackId::random();
    let mut senders = Vec::new();
    let mut puts = Vec::new();
    for (i, s) in sinks.iter().enumerate().filter(|(_, s)| s.healthy()) {
        let key = s.repo.inner.layout.pack(&id)?;
        let target = s.repo.inner.target.clone();
        // A few blobs of slack per target: the pipeline runs at the pace
        // of the slowest healthy target, with bounded memory.
        let (tx, rx) = mpsc::channel::<(Bytes, bool)>(4);
        // A channel closed before the trailer (the backup failed or was
        // dropped) fails the put, so no truncated pack is ever stored.
        let body = stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some((piece, false)) => Some((Ok(piece), Some(rx))),
                Some((piece, true)) => Some((Ok(piece), None)),
                None => Some((Err(aborted()), None)),
            }
        })
        .boxed();
        puts.push((
            i,
            tokio::spawn(async move {
                target
                    .put_opts(&key, body, PutOptions::create())
                    .await
                    .map(|_| ())
            }),
        ));
        senders.push(tx);
    }
    Ok(OpenPack {
        id,
        size: 0,
        blobs: Vec::new(),
        senders,
        puts,
    })
}

/// Sends the pack's trailer, ends its uploads and returns a future of
/// their outcome.
async fn close_pack(
    master: &MasterKey,
    pack: OpenPack,
) -> impl std::future::Future<Output = (OpenPack, Vec<(usize, Result<()>)>)> {
    let header = master.seal(
        b"atlas-backup/pack-header",
        &encode_pack_header(&pack.blobs),
    );
    let mut trailer = header;
    let hlen = trailer.len() as u32;
    trailer.extend_from_slice(&hlen.to_le_bytes());
    trailer.extend_from_slice(PACK_MAGIC);
    let trailer = Bytes::from(trailer);
    let mut pack = pack;
    pack.size += trailer.len() as u64;
    for tx in pack.senders.drain(..) {
        // A closed channel means that put failed; its handle says why.
        let _ = tx.send((trailer.clone(), true)).await;
    }
    async move {
        let puts = std::mem::take(&mut pack.puts);
        let mut out = Vec::new();
        for (i, h) in puts {
            out.push((i, h.await.map_err(join_err).and_then(|r| r)));
        }
        (pack, out)
    }
}

fn settle_pack(
    sinks: &[Sink],
    required: usize,
    pack: OpenPack,
    results: Vec<(usize, Result<()>)>,
) -> Result<IndexPack> {
    for (i, r) in results {
        if let Err(e) = r {
            sinks[i].fail(e);
        }
    }
    if healthy_count(sinks) < required {
        return Err(quorum_lost(sinks, required));
    }
    debug!(pack = %pack.id.short(), size = pack.size, blobs = pack.blobs.len(), "uploaded pack");
    Ok(IndexPack::of(pack.id, pack.size, &pack.blobs))
}

/// Compresses and encrypts queued blobs on `workers` blocking threads and
/// streams them, as packs, to every healthy target. No pack is held whole
/// in memory; up to `concurrency` finished packs may await their uploads'
/// completion.
#[allow(clippy::too_many_arguments)]
async fn pack_stage(
    master: MasterKey,
    config: super::RepoConfig,
    workers: usize,
    concurrency: usize,
    sinks: &[Sink],
    required: usize,
    rx: mpsc::Receiver<RawBlob>,
    stored: Arc<Mutex<u64>>,
    pool: BufferPool,
) -> Result<Vec<IndexPack>> {
    use futures::stream::FuturesUnordered;
    let level = config.compression_level;
    let pack_size = u64::from(config.pack_size);
    let blobs = Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b, rx))
    }));
    let m2 = master.clone();
    let zstd = Arc::new(Compressors::new(level));
    let mut encoded = blobs
        .map(move |raw| {
            let m = m2.clone();
            let pool = pool.clone();
            let zstd = zstd.clone();
            tokio::task::spawn_blocking(move || {
                let mut sealed = pool.take(sealed_capacity(raw.data.len()));
                m.encode_blob_into(raw.kind, &raw.id, &raw.data, &zstd, &mut sealed);
                // `raw` goes back to the pool here, `sealed` when the last
                // target has written it.
                (raw.kind, raw.id, raw.data.len() as u32, sealed)
            })
        })
        .buffer_unordered(workers.max(1));
    let mut current: Option<OpenPack> = None;
    let mut closing = FuturesUnordered::new();
    let mut done = Vec::new();
    while let Some(item) = encoded.next().await {
        let (kind, id, raw_length, sealed) = item.map_err(join_err)?;
        *stored.lock().unwrap_or_else(|e| e.into_inner()) += sealed.len() as u64;
        if current.is_none() {
            if healthy_count(sinks) < required {
                return Err(quorum_lost(sinks, required));
            }
            current = Some(open_pack(sinks)?);
        }
        let Some(pack) = current.as_mut() else {
            continue;
        };
        pack.blobs.push(PackedBlob {
            kind,
            id,
            offset: pack.size as u32,
            length: sealed.len() as u32,
            raw_length,
        });
        pack.size += sealed.len() as u64;
        let bytes = sealed.into_bytes();
        for tx in &pack.senders {
            let _ = tx.send((bytes.clone(), false)).await;
        }
        if pack.size >= pack_size
            && let Some(full) = current.take()
        {
            closing.push(close_pack(&master, full).await);
            while closing.len() >= concurrency.max(1) {
                if let Some((p, r)) = closing.next().await {
                    done.push(settle_pack(sinks, required, p, r)?);
                }
            }
        }
    }
    if let Some(last) = current.take() {
        closing.push(close_pack(&master, last).await);
    }
    while let Some((p, r)) = closing.next().await {
        done.push(settle_pack(sinks, required, p, r)?);
    }
    Ok(done)
}

/// What [`run_backup`] did: the snapshot, each target's outcome and every
/// entry left out as unreadable.
pub(crate) struct BackupRun {
    pub(crate) snapshot: Snapshot,
    pub(crate) targets: Vec<TargetOutcome>,
    pub(crate) unreadable: Vec<SkippedEntry>,
    /// What the chunk and blob buffer pool did.
    #[cfg(test)]
    pub(crate) blob_pool: super::pool::PoolStats,
}

/// Backs `source` up to every repository of `repos` (which share a master
/// key), committing a manifest on each that stayed healthy.
pub(crate) async fn run_backup(
    repos: &[Repository],
    policy: MirrorPolicy,
    source: Box<dyn BackupSource>,
    options: BackupOptions,
) -> Result<BackupRun> {
    let first = repos
        .first()
        .ok_or_else(|| Error::invalid("targets", "at least one repository is needed"))?;
    let required = policy.required(repos.len())?;
    let source_name = source.source_name();
    let paths = source.paths();
    let host = options.host.clone().unwrap_or_else(default_host);
    let time = options.time.unwrap_or_else(SystemTime::now);
    let span =
        info_span!("backup", source = %source_name, kind = %options.kind, targets = repos.len());
    async move {
        // Locks first: prune must not run while our packs are unindexed.
        let mut locks: Vec<Option<LockGuard>> = Vec::new();
        let sinks: Vec<Sink> = repos.iter().map(|r| Sink { repo: r.clone(), error: Mutex::new(None) }).collect();
        for s in &sinks {
            match s.repo.lock(false, "backup").await {
                Ok(g) => locks.push(Some(g)),
                Err(e) => {
                    s.fail(e);
                    locks.push(None);
                }
            }
        }
        if healthy_count(&sinks) < required {
            return Err(quorum_lost(&sinks, required));
        }
        // The blobs every healthy target already has.
        let mut known: Option<HashSet<BlobId>> = None;
        let mut first_index: Option<Arc<Index>> = None;
        for s in sinks.iter().filter(|s| s.healthy()) {
            match s.repo.load_index().await {
                Ok(ix) => {
                    let ids: HashSet<BlobId> = ix.blob_ids().copied().collect();
                    known = Some(match known {
                        None => ids,
                        Some(k) => k.intersection(&ids).copied().collect(),
                    });
                    if first_index.is_none() {
                        first_index = Some(Arc::new(ix));
                    }
                }
                Err(e) => s.fail(e),
            }
        }
        if healthy_count(&sinks) < required {
            return Err(quorum_lost(&sinks, required));
        }
        let parent_repo = sinks.iter().find(|s| s.healthy()).map(|s| s.repo.clone()).unwrap_or_else(|| first.clone());
        let parent_index = first_index.unwrap_or_default();
        let parent = match (&options.parent, options.kind) {
            (Some(p), _) => Some(parent_repo.snapshot(p).await?),
            (None, BackupKind::Incremental) => parent_repo
                .snapshots()
                .await?
                .into_iter()
                .rev()
                .find(|s| s.source == source_name && s.host == host),
            (None, _) => None,
        };
        let incremental = options.kind == BackupKind::Incremental && parent.is_some();
        let parent_root = match &parent {
            Some(p) if incremental => match parent_repo.read_tree(&parent_index, &p.tree).await {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(parent = %p.id.short(), error = %e, "cannot read the parent snapshot's tree; reading everything");
                    None
                }
            },
            _ => None,
        };
        info!(parent = ?parent.as_ref().map(|p| p.id.short()), incremental, "backup started");
        let master = first.inner.master.clone();
        let config = first.inner.config.clone();
        let workers = options.workers.max(1);
        let readers = options.read_concurrency.max(1);
        let max_chunk = config.chunker.max_size as usize;
        let ctx = Arc::new(Ctx {
            seed: master.chunker_seed(),
            master: master.clone(),
            chunker: config.chunker,
            known: Mutex::new(known.unwrap_or_default()),
            totals: Mutex::new(SnapshotTotals::default()),
            unreadable: Mutex::new(Vec::new()),
            tracker: Tracker::new("backup", options.progress.clone()),
            read_permits: Semaphore::new(readers),
            incremental,
            parent_repo,
            parent_index,
            // One window per file read at once, plus a stream source's.
            windows: BufferPool::new(readers + 1, 2 * max_chunk),
            // Enough idle buffers for what the pipeline holds at once
            // (blocked readers, the blob queue, the encoders, and the
            // per-target queues of pieces), so that once it is full it
            // allocates nothing large.
            blobs: BufferPool::new(
                readers + 4 * workers + BLOBS_PER_TARGET * repos.len(),
                sealed_capacity(max_chunk),
            ),
        });
        let (blob_tx, blob_rx) = mpsc::channel::<RawBlob>(workers * 2);
        let stored = Arc::new(Mutex::new(0u64));
        let stop_scan = Arc::new(AtomicBool::new(false));
        let input = source.into_input();
        let walk = {
            let ctx = ctx.clone();
            let stop_scan = stop_scan.clone();
            async move {
                match input {
                    SourceInput::Directory(root) => {
                        let meta = tokio::fs::metadata(&root).await.map_err(|e| io_err(&root, "cannot read the source", e))?;
                        if !meta.is_dir() {
                            return Err(Error::invalid("source", format!("{} is not a directory", root.display())));
                        }
                        let (mtime_sec, mtime_nsec) = mtime_of(&meta);
                        let root_meta = RootMetadata { mode: meta.permissions().mode() & 0o7777, mtime_sec, mtime_nsec };
                        let (c2, r2, s2) = (ctx.clone(), root.clone(), stop_scan.clone());
                        drop(tokio::task::spawn_blocking(move || scan_totals(r2, c2, s2)));
                        let tree = save_dir(ctx, blob_tx, root.clone(), String::new(), parent_root).await?;
                        // The root is never left out: its listing failing fails the backup.
                        let tree = tree.ok_or_else(|| Error::backend(BACKEND, format!("cannot list directory {}", root.display())))?;
                        Ok((tree, Some(root_meta)))
                    }
                    SourceInput::Stream { file_name, mode, size_hint, body } => {
                        ctx.tracker.update(|p| {
                            p.files_total = Some(1);
                            p.bytes_total = size_hint;
                        });
                        Ok((save_stream(ctx, blob_tx, file_name, mode, body).await?, None))
                    }
                }
            }
        };
        let packing = pack_stage(
            master,
            config.clone(),
            workers,
            options.upload_concurrency,
            &sinks,
            required,
            blob_rx,
            stored.clone(),
            ctx.blobs.clone(),
        );
        let result = tokio::try_join!(walk, packing);
        stop_scan.store(true, Ordering::Relaxed);
        let (w, b) = (ctx.windows.stats(), ctx.blobs.stats());
        debug!(
            windows_allocated = w.allocated,
            windows_high_water = w.high_water,
            blobs_allocated = b.allocated,
            blobs_reused = b.reused,
            blobs_high_water = b.high_water,
            blobs_idle = b.idle,
            blobs_idle_bytes = b.idle_bytes,
            "buffer pools"
        );
        let ((tree, root), new_packs) = match result {
            Ok(r) => r,
            Err(e) => {
                for g in locks.into_iter().flatten() {
                    g.release().await;
                }
                return Err(e);
            }
        };
        let mut totals = *ctx.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.new_bytes_stored = *stored.lock().unwrap_or_else(|e| e.into_inner());
        let mut unreadable = std::mem::take(&mut *ctx.unreadable.lock().unwrap_or_else(|e| e.into_inner()));
        unreadable.sort_by(|a, b| a.path.cmp(&b.path));
        let snapshot = Snapshot {
            id: SnapshotId::random(),
            time,
            source: source_name.clone(),
            paths,
            kind: options.kind,
            host,
            tags: options.tags.clone(),
            parent: parent.map(|p| p.id),
            tree,
            totals,
            root,
            unreadable: unreadable.iter().take(MAX_RECORDED_UNREADABLE).cloned().collect(),
        };
        // Index, then (only if the policy can still be met) manifests, last.
        futures::future::join_all(sinks.iter().filter(|s| s.healthy()).map(|s| async {
            if !new_packs.is_empty()
                && let Err(e) = write_index(&s.repo, new_packs.clone(), Vec::new()).await
            {
                s.fail(e);
            }
        }))
        .await;
        if healthy_count(&sinks) < required {
            for g in locks.into_iter().flatten() {
                g.release().await;
            }
            return Err(quorum_lost(&sinks, required));
        }
        futures::future::join_all(sinks.iter().filter(|s| s.healthy()).map(|s| async {
            let res = async { s.repo.write_file(&s.repo.inner.layout.snapshot(&snapshot.id)?, "snapshot", &snapshot, true).await }.await;
            if let Err(e) = res {
                s.fail(e);
            }
        }))
        .await;
        for g in locks.into_iter().flatten() {
            g.release().await;
        }
        let outcomes: Vec<TargetOutcome> = sinks
            .into_iter()
            .map(|s| TargetOutcome { target: format!("{:?}", s.repo.inner.target), prefix: s.repo.prefix().to_string(), error: s.error.into_inner().unwrap_or_else(|e| e.into_inner()) })
            .collect();
        let ok = outcomes.iter().filter(|o| o.error.is_none()).count();
        info!(snapshot = %snapshot.id.short(), files = totals.files, bytes = totals.bytes, new_bytes = totals.new_bytes, unreadable = totals.unreadable, committed = ok, "backup finished");
        if !unreadable.is_empty() {
            warn!(snapshot = %snapshot.id.short(), unreadable = unreadable.len(), "the snapshot is incomplete: some entries could not be read");
        }
        if ok < required {
            let msg: Vec<String> = outcomes.iter().filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.target))).collect();
            return Err(Error::backend(BACKEND, format!("backup committed on {ok} of {} targets, {required} required: {}", outcomes.len(), msg.join("; "))));
        }
        Ok(BackupRun {
            snapshot,
            targets: outcomes,
            unreadable,
            #[cfg(test)]
            blob_pool: b,
        })
    }
    .instrument(span)
    .await
}

impl Repository {
    /// Backs `source` up and commits a snapshot (its manifest written last,
    /// with a conditional create). Takes a shared lock for the duration.
    /// Entries below the root that cannot be read are left out and listed
    /// in [`BackupReport::unreadable`] (see [`DirectorySource`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a source that is not a directory;
    /// [`Error::Conflict`] when an exclusive lock (prune) is held; a source
    /// root that cannot be read or listed, or a failing stream source
    /// ([`Error::Backend`] naming it); target errors. Nothing is visible
    /// after a failure.
    pub async fn backup(
        &self,
        source: impl BackupSource + 'static,
        options: BackupOptions,
    ) -> Result<BackupReport> {
        let BackupRun {
            snapshot,
            targets: mut outcomes,
            unreadable,
            ..
        } = run_backup(
            std::slice::from_ref(self),
            MirrorPolicy::All,
            Box::new(source),
            options,
        )
        .await?;
        if let Some(TargetOutcome { error: Some(e), .. }) = outcomes.pop() {
            return Err(e);
        }
        Ok(BackupReport {
            snapshot,
            unreadable,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use futures::stream::BoxStream;

    use super::*;
    use crate::repo::{CheckOptions, InitOptions, KdfParams, KeySource, ReadDataSubset};
    use atlas_core::backup::{
        BackupTarget, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
        ObjectPrefix, PutMode, PutResult,
    };

    /// An in-memory target that copies each piece of a put as it arrives
    /// and drops it, as a target writing to a disk or a socket does.
    #[derive(Debug, Default)]
    struct Streaming {
        objects: Mutex<BTreeMap<String, Bytes>>,
    }

    impl Streaming {
        fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
            self.objects.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    #[async_trait::async_trait]
    impl BackupTarget for Streaming {
        async fn put_opts(
            &self,
            key: &ObjectKey,
            mut body: ByteStream,
            options: PutOptions,
        ) -> Result<PutResult> {
            let mut data = Vec::new();
            while let Some(piece) = body.next().await {
                data.extend_from_slice(&piece?);
            }
            let mut map = self.map();
            if options.mode == PutMode::Create && map.contains_key(key.as_str()) {
                return Err(Error::conflict(format!("{key} exists")));
            }
            let result = PutResult::new(data.len() as u64, Checksum::crc32c_of(&data));
            map.insert(key.as_str().to_owned(), data.into());
            Ok(result)
        }

        async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
            let data = self
                .map()
                .get(key.as_str())
                .cloned()
                .ok_or_else(|| Error::not_found(key.as_str()))?;
            let len = data.len() as u64;
            let range = match options.range {
                Some(r) => r.resolve(len)?,
                None => 0..len,
            };
            let body = data.slice(range.start as usize..range.end as usize);
            let meta = ObjectMeta::new(key.clone(), len, SystemTime::now());
            Ok(GetResult::new(
                meta,
                range,
                stream::iter([Ok(body)]).boxed(),
            ))
        }

        async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
            let len = self
                .map()
                .get(key.as_str())
                .map(|d| d.len() as u64)
                .ok_or_else(|| Error::not_found(key.as_str()))?;
            Ok(ObjectMeta::new(key.clone(), len, SystemTime::now()))
        }

        fn list_opts(
            &self,
            prefix: &ObjectPrefix,
            _options: ListOptions,
        ) -> BoxStream<'static, Result<ObjectMeta>> {
            let items: Vec<Result<ObjectMeta>> = self
                .map()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(k, v)| {
                    ObjectKey::new(k.clone())
                        .map(|key| ObjectMeta::new(key, v.len() as u64, SystemTime::now()))
                })
                .collect();
            stream::iter(items).boxed()
        }

        async fn delete(&self, key: &ObjectKey) -> Result<()> {
            self.map()
                .remove(key.as_str())
                .map(|_| ())
                .ok_or_else(|| Error::not_found(key.as_str()))
        }
    }

    /// Bytes that never repeat (no chunk dedups) and compress about 2:1.
    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                } else {
                    b'a'
                }
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_recycles_its_buffers_and_stores_every_chunk_intact() {
        let target = Arc::new(Streaming::default());
        let key = KeySource::passphrase("pool test");
        let repo = Repository::init(
            target.clone(),
            ObjectPrefix::new("repo/").unwrap(),
            &key,
            InitOptions::default()
                .with_kdf(KdfParams::insecure_fast())
                .with_chunker(ChunkerParams {
                    min_size: 1024,
                    avg_size: 4096,
                    max_size: 16384,
                })
                .with_pack_size(1024 * 1024),
        )
        .await
        .unwrap();
        let input = data(3 << 20);
        let source = StreamSource::from_async_read("dump.bin", io::Cursor::new(input.clone()));
        let mut options = BackupOptions::default();
        (options.workers, options.read_concurrency) = (2, 2);
        let run = run_backup(
            std::slice::from_ref(&repo),
            MirrorPolicy::All,
            Box::new(source),
            options,
        )
        .await
        .unwrap();
        let chunks = run.snapshot.totals.new_chunks;
        assert!(chunks > 300, "about 768 chunks, got {chunks}");
        let pool = run.blob_pool;
        // Readers + 4 × workers + one target's pieces: the most buffers the
        // pipeline holds at once, so the pool never frees one that it will
        // need again.
        let bound = (2 + 4 * 2 + BLOBS_PER_TARGET) as u64;
        assert!(
            pool.allocated <= bound && pool.high_water as u64 <= bound,
            "{pool:?}"
        );
        // No churn: a buffer is allocated only when every one made so far
        // is in use (the one exception: the tree blob, larger than any
        // chunk, is not kept).
        assert!(pool.allocated <= pool.high_water as u64 + 1, "{pool:?}");
        assert!(
            pool.reused + pool.allocated >= 2 * chunks,
            "each new chunk takes a buffer, and so does its sealed blob: {pool:?}"
        );
        // Recycled buffers carried no bytes from one blob into another:
        // every blob decrypts and hashes to its id, and the file reads back.
        let report = repo
            .check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        let id = run.snapshot.id.to_string();
        let (_, body) = repo.restore_file_stream(&id, "dump.bin").await.unwrap();
        let restored: Vec<Bytes> = body.try_collect().await.unwrap();
        assert!(restored.concat() == input, "the restored file differs");
    }
}
