//! [`FsTarget`]: a backup target on a local directory, the embedded default.
//!
//! # Layout and guarantees
//!
//! The object `a/b/c` is the plain file `<root>/a/b/c`, so a backup on disk
//! can be read with ordinary tools.
//!
//! - **Atomic writes.** A put streams into a temporary file in the
//!   destination's own directory (`.atlas-tmp.<random>`, never listed),
//!   fsyncs it, then renames it over the destination (or, for a
//!   create-only put, hard-links it: `link(2)` fails when the name exists,
//!   which makes the create atomic between processes too) and fsyncs the
//!   directory. Readers see the old object or the new one, never a part; a
//!   crash leaves at most a temporary file behind.
//! - **No path traversal.** Keys are validated by [`ObjectKey`] (no `..`,
//!   no `.`, no absolute paths, no `\`), and the target refuses to follow a
//!   symbolic link inside the root, so no key reaches outside it.
//! - **Checksums.** The CRC32C computed while writing is stored in the
//!   file's extended attribute `user.atlas.crc32c`, set before the rename so
//!   data and checksum appear together. Where the filesystem has no extended
//!   attributes (or a file was placed by hand), [`head`](BackupTarget::head)
//!   computes the CRC32C by reading the file. Listings report the stored
//!   checksum only.
//! - **Keys that are also folders.** A filesystem cannot hold an object `a`
//!   and an object `a/b` at once; such a put fails with
//!   [`Error::Conflict`]. Deleting the last object of a folder removes the
//!   empty folders above it.
//!
//! File I/O runs on tokio's blocking pool with a bounded queue of chunks
//! between it and the caller: a put holds at most
//! [`FsTargetBuilder::with_write_queue`] chunks of its body, a get at most
//! two read buffers of [`FsTargetBuilder::with_read_chunk_size`] bytes.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, Crc32cHasher, GetOptions, GetResult, ListOptions,
    ObjectKey, ObjectMeta, ObjectPrefix, PutMode, PutOptions, PutResult, UnfinishedPut,
};
use atlas_core::{Error, Result};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, debug_span, warn};

const BACKEND: &str = "fs";
/// Temporary files start with this; keys may not use it as a segment prefix.
const TMP_PREFIX: &str = ".atlas-tmp.";
/// The extended attribute holding an object's CRC32C (8 hex digits).
#[cfg(all(unix, feature = "fs"))]
const XATTR_CRC32C: &str = "user.atlas.crc32c";
/// The environment variable [`FsTargetBuilder::from_env`] reads.
pub const ENV_ROOT: &str = "ATLAS_FS_TARGET_ROOT";

/// Builds an [`FsTarget`].
///
/// Defaults: fsync on, read chunks of 64 KiB, a write queue of 16 chunks.
#[derive(Debug, Clone)]
pub struct FsTargetBuilder {
    root: Option<PathBuf>,
    fsync: bool,
    read_chunk_size: usize,
    write_queue: usize,
}

impl Default for FsTargetBuilder {
    fn default() -> Self {
        FsTargetBuilder {
            root: None,
            fsync: true,
            read_chunk_size: 64 << 10,
            write_queue: 16,
        }
    }
}

impl FsTargetBuilder {
    /// A builder with no root yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder whose root comes from `ATLAS_FS_TARGET_ROOT`, if set.
    pub fn from_env() -> Self {
        let mut b = Self::default();
        if let Some(root) = std::env::var_os(ENV_ROOT) {
            b.root = Some(PathBuf::from(root));
        }
        b
    }

    /// The directory objects live in; created (with its parents) by
    /// [`build`](Self::build) if missing.
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Whether to fsync files and directories (default `true`). Turn off
    /// only for scratch data: a crash may then lose acknowledged puts.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Size of the buffers a get reads (default 64 KiB: below glibc's
    /// default mmap threshold of 128 KiB, so that each buffer comes from
    /// the heap and is reused rather than mapped, faulted in page by page
    /// and unmapped; with 1 MiB buffers a restore spent a third of its
    /// system time doing that).
    pub fn with_read_chunk_size(mut self, bytes: usize) -> Self {
        self.read_chunk_size = bytes;
        self
    }

    /// How many chunks of a put's body may wait for the disk (default 16).
    pub fn with_write_queue(mut self, chunks: usize) -> Self {
        self.write_queue = chunks;
        self
    }

    /// Creates the root if needed and returns the target.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when no root was given, or a size is zero;
    /// [`Error::Backend`] when the root cannot be created or is not a
    /// directory.
    pub fn build(self) -> Result<FsTarget> {
        let root = self.root.ok_or_else(|| {
            Error::invalid(
                "root",
                format!("is required: call with_root(..) or set {ENV_ROOT}"),
            )
        })?;
        if self.read_chunk_size == 0 {
            return Err(Error::invalid(
                "read_chunk_size",
                "must be greater than zero",
            ));
        }
        if self.write_queue == 0 {
            return Err(Error::invalid("write_queue", "must be greater than zero"));
        }
        fs::create_dir_all(&root)
            .map_err(|e| io_error(e, &format!("creating the root {}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| io_error(e, &format!("resolving the root {}", root.display())))?;
        if !root.is_dir() {
            return Err(Error::backend(
                BACKEND,
                format!("root {} is not a directory", root.display()),
            ));
        }
        debug!(root = %root.display(), fsync = self.fsync, "filesystem target ready");
        Ok(FsTarget {
            inner: Arc::new(Inner {
                root,
                fsync: self.fsync,
                read_chunk_size: self.read_chunk_size,
                write_queue: self.write_queue,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    fsync: bool,
    read_chunk_size: usize,
    write_queue: usize,
}

/// A [`BackupTarget`] on a local directory. See the [module docs](self)
/// for the layout and guarantees. Clones share the configuration.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use atlas_core::backup::{BackupTargetExt, ObjectKey};
/// use atlas_storage::FsTarget;
/// let dir = tempfile::tempdir().unwrap();
/// let target = FsTarget::builder().with_root(dir.path()).build()?;
/// let key = ObjectKey::new("snapshots/1/manifest.json")?;
/// target.put_bytes_if_absent(&key, "{}".into()).await?;
/// assert!(dir.path().join("snapshots/1/manifest.json").is_file());
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct FsTarget {
    inner: Arc<Inner>,
}

impl fmt::Debug for FsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsTarget")
            .field("root", &self.inner.root)
            .field("fsync", &self.inner.fsync)
            .finish()
    }
}

impl FsTarget {
    /// A builder; see [`FsTargetBuilder`].
    pub fn builder() -> FsTargetBuilder {
        FsTargetBuilder::new()
    }

    /// A target on `root` with the defaults.
    ///
    /// # Errors
    /// As [`FsTargetBuilder::build`].
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        FsTargetBuilder::new().with_root(root).build()
    }

    /// The (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Upper bound of the bytes of a put's body this target holds at once,
    /// for chunks of `chunk_size` bytes: the write queue plus the chunk
    /// being written.
    pub fn max_buffered_bytes(&self, chunk_size: usize) -> u64 {
        (self.inner.write_queue as u64 + 2) * chunk_size as u64
    }
}

impl Inner {
    /// The path of `key`, refusing reserved names.
    fn path_of(&self, key: &ObjectKey) -> Result<PathBuf> {
        let mut p = self.root.clone();
        for seg in key.segments() {
            if seg.starts_with(TMP_PREFIX) {
                return Err(Error::invalid(
                    "key",
                    format!(
                        "{key:?}: segments starting with {TMP_PREFIX:?} are reserved by the filesystem target"
                    ),
                ));
            }
            p.push(seg);
        }
        Ok(p)
    }

    /// Fails if any existing component of `path` below the root (`path`
    /// itself included) is a symbolic link.
    fn refuse_links(&self, path: &Path) -> Result<()> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            Error::backend(BACKEND, format!("{} is outside the root", path.display()))
        })?;
        let mut p = self.root.clone();
        for comp in rel.components() {
            p.push(comp);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::precondition(format!(
                        "{} is a symbolic link; the filesystem target does not follow links",
                        p.display()
                    )));
                }
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(io_error(e, &format!("inspecting {}", p.display()))),
            }
        }
        Ok(())
    }

    /// Makes a rename, link or unlink in `dir` durable. A folder that a
    /// concurrent delete already removed needs nothing more.
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        if !self.fsync {
            return Ok(());
        }
        match File::open(dir).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(io_error(
                e,
                &format!("fsync of directory {}", dir.display()),
            )),
        }
    }

    /// Metadata of the object at `path`, computing the checksum if no
    /// attribute holds it and `compute` is set.
    fn meta_of(&self, key: &ObjectKey, path: &Path, compute: bool) -> Result<ObjectMeta> {
        let m = match fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(not_found(key)),
            Err(e) if is_not_found(&e) => return Err(not_found(key)),
            Err(e) => return Err(io_error(e, &format!("stat of {key}"))),
        };
        let modified = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let nanos = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut checksum = read_checksum_attr(path);
        if checksum.is_none() && compute {
            checksum = Some(compute_checksum(path).map_err(|e| {
                if is_not_found(&e) {
                    not_found(key)
                } else {
                    io_error(e, &format!("reading {key} to checksum it"))
                }
            })?);
        }
        Ok(ObjectMeta::new(key.clone(), m.len(), modified)
            .with_checksum(checksum)
            .with_etag(Some(format!("{nanos:x}-{:x}", m.len()))))
    }
}

enum Msg {
    Chunk(Bytes),
    End,
}

/// Removes a temporary file unless disarmed, and the folders that the
/// failed put created and left empty.
struct TmpFile<'a> {
    path: Option<PathBuf>,
    root: &'a Path,
}

impl Drop for TmpFile<'_> {
    fn drop(&mut self) {
        let Some(p) = self.path.take() else {
            return;
        };
        match fs::remove_file(&p) {
            Ok(()) => prune_empty_dirs(self.root, p.parent()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => warn!(path = %p.display(), error = %e, "could not remove a temporary file"),
        }
    }
}

/// Removes `dir` and its parents while they are empty, up to `root`
/// (excluded). A folder that is not empty, or that a concurrent put just
/// reused, stops the climb.
fn prune_empty_dirs(root: &Path, dir: Option<&Path>) {
    let mut dir = dir.map(Path::to_path_buf);
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
}

/// The blocking half of a put: writes what arrives on `rx` into a temporary
/// file, then publishes it.
fn write_object(
    inner: &Inner,
    key: &ObjectKey,
    dest: &Path,
    mode: PutMode,
    mut rx: mpsc::Receiver<Msg>,
) -> Result<PutResult> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::backend(BACKEND, format!("{key} has no parent directory")))?;
    inner.refuse_links(dest)?;
    if mode == PutMode::Create && fs::symlink_metadata(dest).is_ok() {
        return Err(conflict(key));
    }
    let (mut file, tmp) = create_tmp(inner, key, dir)?;
    let mut guard = TmpFile {
        path: Some(tmp.clone()),
        root: &inner.root,
    };
    let mut hasher = Crc32cHasher::new();
    loop {
        match rx.blocking_recv() {
            Some(Msg::Chunk(c)) => {
                hasher.update(&c);
                file.write_all(&c)
                    .map_err(|e| io_error(e, &format!("writing {key}")))?;
            }
            Some(Msg::End) => break,
            // The caller went away (its body failed, or its future was
            // dropped): the guard removes the temporary file.
            None => {
                return Err(Error::backend(
                    BACKEND,
                    format!("put of {key} abandoned before its body ended"),
                ));
            }
        }
    }
    if inner.fsync {
        file.sync_all()
            .map_err(|e| io_error(e, &format!("fsync of {key}")))?;
    }
    drop(file);
    let checksum = hasher.checksum();
    write_checksum_attr(&tmp, checksum);
    match mode {
        PutMode::Overwrite => {
            if let Err(e) = fs::rename(&tmp, dest) {
                return Err(if dest.is_dir() {
                    folder_conflict(key)
                } else {
                    io_error(e, &format!("renaming into {key}"))
                });
            }
            guard.path = None;
        }
        PutMode::Create => match fs::hard_link(&tmp, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(if dest.is_dir() {
                    folder_conflict(key)
                } else {
                    conflict(key)
                });
            }
            Err(e) => return Err(io_error(e, &format!("linking {key}"))),
        },
    }
    drop(guard);
    inner.sync_dir(dir)?;
    let meta = fs::metadata(dest).ok();
    let etag = meta.and_then(|m| {
        let nanos = m
            .modified()
            .ok()?
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(format!("{nanos:x}-{:x}", m.len()))
    });
    Ok(PutResult::new(hasher.len(), checksum).with_etag(etag))
}

/// Creates the destination's directory and a fresh temporary file in it.
/// Retries when a concurrent delete removes the (empty) directory between
/// the two steps.
fn create_tmp(inner: &Inner, key: &ObjectKey, dir: &Path) -> Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..8 {
        if let Err(e) = fs::create_dir_all(dir) {
            if e.kind() == io::ErrorKind::NotADirectory || e.kind() == io::ErrorKind::AlreadyExists
            {
                return Err(Error::conflict(format!(
                    "cannot store {key}: a prefix of it is an object, and the filesystem target cannot hold an object and a folder of the same name"
                )));
            }
            return Err(io_error(e, &format!("creating the folder of {key}")));
        }
        inner.refuse_links(dir)?;
        let name: u64 = rand::random();
        let tmp = dir.join(format!("{TMP_PREFIX}{name:016x}"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if is_not_found(&e) => last = Some(e),
            Err(e) => return Err(io_error(e, &format!("creating a temporary file for {key}"))),
        }
    }
    Err(io_error(
        last.unwrap_or_else(|| io::Error::other("folder vanished")),
        &format!("creating a temporary file for {key}"),
    ))
}

#[async_trait]
impl BackupTarget for FsTarget {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let span = debug_span!("backup.put", backend = BACKEND, %key, mode = ?options.mode);
        async move {
            let dest = self.inner.path_of(key)?;
            let (tx, rx) = mpsc::channel(self.inner.write_queue);
            let inner = self.inner.clone();
            let k = key.clone();
            let writer = tokio::task::spawn_blocking(move || {
                write_object(&inner, &k, &dest, options.mode, rx)
            });
            let mut body = body;
            let mut body_error = None;
            while let Some(item) = body.next().await {
                match item {
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => {
                        if tx.send(Msg::Chunk(chunk)).await.is_err() {
                            // The writer stopped early; its result says why.
                            break;
                        }
                    }
                    Err(e) => {
                        body_error = Some(e);
                        break;
                    }
                }
            }
            if body_error.is_none() {
                // A failed send means the writer already stopped; its
                // result below carries the reason.
                let _ = tx.send(Msg::End).await;
            }
            drop(tx);
            let written = writer.await.map_err(|e| {
                Error::backend_with(BACKEND, format!("the writer of {key} panicked"), e)
            })?;
            if let Some(e) = body_error {
                debug!(error = %e, "put body failed; nothing written");
                return Err(e);
            }
            let put = written?;
            debug!(size = put.size, checksum = %put.checksum, "stored");
            Ok(put)
        }
        .instrument(span)
        .await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let span = debug_span!("backup.get", backend = BACKEND, %key);
        let inner = self.inner.clone();
        let k = key.clone();
        let chunk = self.inner.read_chunk_size;
        let opened = tokio::task::spawn_blocking(move || -> Result<_> {
            let path = inner.path_of(&k)?;
            inner.refuse_links(&path)?;
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if is_not_found(&e) => return Err(not_found(&k)),
                Err(e) => return Err(io_error(e, &format!("opening {k}"))),
            };
            let meta = inner.meta_of(&k, &path, false)?;
            let range = match options.range {
                Some(r) => r.resolve(meta.size)?,
                None => 0..meta.size,
            };
            file.seek(SeekFrom::Start(range.start))
                .map_err(|e| io_error(e, &format!("seeking in {k}")))?;
            // What fits one chunk (a tree, a manifest, a blob) is read
            // here, into a buffer of its size: a second task, a channel
            // and a chunk-sized buffer per read made a backup reading
            // thousands of trees map and unmap a megabyte for each.
            let len = range.end - range.start;
            let whole = if len <= chunk as u64 {
                let mut buf = BytesMut::zeroed(len as usize);
                let n = read_full(&mut file, &mut buf)
                    .map_err(|e| io_error(e, &format!("reading {k}")))?;
                buf.truncate(n);
                Some(buf.freeze())
            } else {
                None
            };
            Ok((file, meta, range, whole))
        })
        .instrument(span.clone())
        .await
        .map_err(|e| Error::backend_with(BACKEND, "a get task panicked", e))??;
        // Without the checksum attribute, get reports no checksum rather
        // than reading the file twice; head computes it.
        let (file, meta, range, whole) = opened;
        if let Some(bytes) = whole {
            let body = stream::iter((!bytes.is_empty()).then_some(Ok(bytes))).boxed();
            return Ok(GetResult::new(meta, range, body));
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(2);
        let len = range.end - range.start;
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let mut file = file.take(len);
            let mut left = len;
            loop {
                let mut buf = BytesMut::zeroed(chunk.min(left as usize));
                match read_full(&mut file, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        if tx.blocking_send(Ok(buf.freeze())).is_err() {
                            break; // the reader went away
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(io_error(e, &format!("reading {k}"))));
                        break;
                    }
                }
            }
        });
        let body = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        Ok(GetResult::new(meta, range, body))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let span = debug_span!("backup.head", backend = BACKEND, %key);
        let inner = self.inner.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let path = inner.path_of(&k)?;
            inner.refuse_links(&path)?;
            inner.meta_of(&k, &path, true)
        })
        .await
        .map_err(|e| Error::backend_with(BACKEND, "a head task panicked", e))?
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let span = debug_span!("backup.list", backend = BACKEND, %prefix);
        let capacity = options
            .page_size
            .map_or(256, |p| p.get() as usize)
            .clamp(1, 4096);
        let (tx, rx) = mpsc::channel::<Result<ObjectMeta>>(capacity);
        let inner = self.inner.clone();
        let prefix = prefix.clone();
        let after = options.start_after;
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let mut walker = Walker {
                inner: &inner,
                prefix: prefix.as_str(),
                after: after.as_ref().map(|k| k.as_str()),
                tx: &tx,
            };
            if let Err(e) = walker.run() {
                let _ = tx.blocking_send(Err(e));
            }
        });
        stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let span = debug_span!("backup.delete", backend = BACKEND, %key);
        let inner = self.inner.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let path = inner.path_of(&k)?;
            inner.refuse_links(&path)?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(not_found(&k)),
                Err(e) if is_not_found(&e) => return Err(not_found(&k)),
                Err(e) => return Err(io_error(e, &format!("stat of {k}"))),
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Err(not_found(&k)),
                Err(e) => return Err(io_error(e, &format!("deleting {k}"))),
            }
            if let Some(d) = path.parent() {
                inner.sync_dir(d)?;
            }
            prune_empty_dirs(&inner.root, path.parent());
            debug!("deleted");
            Ok(())
        })
        .await
        .map_err(|e| Error::backend_with(BACKEND, "a delete task panicked", e))?
    }

    /// The temporary files (`.atlas-tmp.<random>`) in the folders under
    /// `prefix`: a put in progress, or one whose process died mid-put.
    /// Each id is the file's path below the root, `/`-separated.
    async fn unfinished_puts(&self, prefix: &ObjectPrefix) -> Result<Vec<UnfinishedPut>> {
        let span = debug_span!("backup.unfinished_puts", backend = BACKEND, %prefix);
        let inner = self.inner.clone();
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let mut out = Vec::new();
            find_tmp_files(&inner.root, String::new(), prefix.as_str(), &mut out)?;
            debug!(found = out.len(), "listed unfinished puts");
            Ok(out)
        })
        .await
        .map_err(|e| Error::backend_with(BACKEND, "a listing task panicked", e))?
    }

    async fn remove_unfinished_put(&self, put: &UnfinishedPut) -> Result<()> {
        let span = debug_span!("backup.remove_unfinished_put", backend = BACKEND, id = %put.id);
        let inner = self.inner.clone();
        let id = put.id.clone();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let segments: Vec<&str> = id.split('/').collect();
            let (name, dirs) = segments.split_last().unwrap_or((&"", &[]));
            if !name.starts_with(TMP_PREFIX)
                || dirs
                    .iter()
                    .any(|d| d.is_empty() || *d == "." || *d == ".." || d.contains('\\'))
            {
                return Err(Error::invalid(
                    "unfinished_put",
                    format!("{id:?} is not a temporary file of the filesystem target"),
                ));
            }
            let mut path = inner.root.clone();
            path.extend(segments.iter());
            inner.refuse_links(&path)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(io_error(e, &format!("removing temporary file {id}"))),
            }
            if let Some(d) = path.parent() {
                inner.sync_dir(d)?;
            }
            prune_empty_dirs(&inner.root, path.parent());
            debug!("removed an unfinished put");
            Ok(())
        })
        .await
        .map_err(|e| Error::backend_with(BACKEND, "a removal task panicked", e))?
    }
}

/// Collects the temporary files below `dir` (whose keys start with
/// `key_prefix`) that lie in a folder under `prefix`. Symbolic links are
/// not followed.
fn find_tmp_files(
    dir: &Path,
    key_prefix: String,
    prefix: &str,
    out: &mut Vec<UnfinishedPut>,
) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(io_error(e, &format!("listing {}", dir.display()))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(e, &format!("listing {}", dir.display())))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            let sub = format!("{key_prefix}{name}/");
            // Descend only where keys under the prefix can be.
            let shared = sub.len().min(prefix.len());
            if sub.as_bytes()[..shared] == prefix.as_bytes()[..shared] {
                find_tmp_files(&entry.path(), sub, prefix, out)?;
            }
        } else if ft.is_file() && name.starts_with(TMP_PREFIX) && key_prefix.starts_with(prefix) {
            let Ok(m) = entry.metadata() else {
                continue; // renamed into place since the listing
            };
            out.push(UnfinishedPut::new(
                format!("{key_prefix}{name}"),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
            ));
        }
    }
    Ok(())
}

/// A depth-first walk that yields keys in ascending byte order: entries of a
/// folder are sorted by name, a folder sorting as its name followed by `/`
/// (so `a-b` comes before the contents of `a/`, and `a0` after them).
struct Walker<'a> {
    inner: &'a Inner,
    prefix: &'a str,
    after: Option<&'a str>,
    tx: &'a mpsc::Sender<Result<ObjectMeta>>,
}

impl Walker<'_> {
    fn run(&mut self) -> Result<()> {
        // Start in the deepest folder the prefix names in full.
        let (dir_part, _) = match self.prefix.rfind('/') {
            Some(i) => self.prefix.split_at(i + 1),
            None => ("", self.prefix),
        };
        let mut dir = self.inner.root.clone();
        for seg in dir_part.split('/').filter(|s| !s.is_empty()) {
            dir.push(seg);
        }
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(io_error(e, "listing")),
        }
        self.walk(&dir, dir_part.to_owned()).map(|_| ())
    }

    /// Walks `dir`, whose keys start with `key_prefix`. Returns `false`
    /// when the receiver went away.
    fn walk(&mut self, dir: &Path, key_prefix: String) -> Result<bool> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // Removed by a concurrent delete: it has no keys any more.
            Err(e) if is_not_found(&e) => return Ok(true),
            Err(e) => return Err(io_error(e, &format!("listing {}", dir.display()))),
        };
        let mut names: Vec<(String, bool, OsString)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(e, &format!("listing {}", dir.display())))?;
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                continue; // not UTF-8: cannot be a key
            };
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(_) => continue,
            };
            if ft.is_symlink() || !(ft.is_dir() || ft.is_file()) {
                continue;
            }
            let key = format!("{key_prefix}{name}");
            let sort_key = if ft.is_dir() { format!("{key}/") } else { key };
            // Prune what cannot match the prefix.
            let shared = sort_key.len().min(self.prefix.len());
            if sort_key.as_bytes()[..shared] != self.prefix.as_bytes()[..shared] {
                continue;
            }
            names.push((sort_key, ft.is_dir(), os_name.clone()));
        }
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (sort_key, is_dir, os_name) in names {
            if is_dir {
                // Skip folders entirely before the resume key.
                if let Some(after) = self.after
                    && sort_key.as_str() < after
                    && !after.starts_with(sort_key.as_str())
                {
                    continue;
                }
                if !self.walk(&dir.join(&os_name), sort_key)? {
                    return Ok(false);
                }
                continue;
            }
            if !sort_key.starts_with(self.prefix) {
                continue;
            }
            if let Some(after) = self.after
                && sort_key.as_str().cmp(after) != Ordering::Greater
            {
                continue;
            }
            let Ok(key) = ObjectKey::new(sort_key) else {
                continue; // a file whose name is no valid key
            };
            let meta = match self.inner.meta_of(&key, &dir.join(&os_name), false) {
                Ok(m) => m,
                Err(e) if e.kind() == atlas_core::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if self.tx.blocking_send(Ok(meta)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn compute_checksum(path: &Path) -> io::Result<Checksum> {
    let mut f = File::open(path)?;
    let mut hasher = Crc32cHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.checksum())
}

#[cfg(all(unix, feature = "fs"))]
fn read_checksum_attr(path: &Path) -> Option<Checksum> {
    let raw = xattr::get(path, XATTR_CRC32C).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    u32::from_str_radix(text, 16).ok().map(Checksum::Crc32c)
}

#[cfg(not(all(unix, feature = "fs")))]
fn read_checksum_attr(_path: &Path) -> Option<Checksum> {
    None
}

#[cfg(all(unix, feature = "fs"))]
fn write_checksum_attr(path: &Path, checksum: Checksum) {
    let Checksum::Crc32c(v) = checksum else {
        return;
    };
    if let Err(e) = xattr::set(path, XATTR_CRC32C, format!("{v:08x}").as_bytes()) {
        // Not fatal: head computes the checksum when the attribute is missing.
        debug!(error = %e, "cannot store the checksum attribute");
    }
}

#[cfg(not(all(unix, feature = "fs")))]
fn write_checksum_attr(_path: &Path, _checksum: Checksum) {}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory
}

fn io_error(e: io::Error, what: &str) -> Error {
    let transient = matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    );
    let message = format!("{what}: {e}");
    if transient {
        Error::transient_with(BACKEND, message, e)
    } else {
        Error::backend_with(BACKEND, message, e)
    }
}

fn not_found(key: &ObjectKey) -> Error {
    Error::not_found(format!("object {key} in the filesystem target"))
}

fn conflict(key: &ObjectKey) -> Error {
    Error::conflict(format!(
        "object {key} already exists in the filesystem target"
    ))
}

fn folder_conflict(key: &ObjectKey) -> Error {
    Error::conflict(format!(
        "cannot store {key}: it is a folder of other objects, and the filesystem target cannot hold an object and a folder of the same name"
    ))
}
