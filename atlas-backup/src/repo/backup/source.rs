//! What a backup reads: the [`BackupSource`] trait, a directory tree
//! ([`DirectorySource`]) and a byte stream ([`StreamSource`]).

use std::fmt;
use std::path::PathBuf;

use futures::stream::{self, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::repo::error::BACKEND;
use crate::repo::pool::BufferPool;
use atlas_core::backup::ByteStream;
use atlas_core::error::Error;

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
    /// What to await once the input has been read to its end and before
    /// the manifest is written (called once, before
    /// [`into_input`](BackupSource::into_input)). A source whose producer
    /// can fail after its last byte (a program's exit status) or that
    /// learns its labels only at the end (a database backup's stop
    /// position) returns it here: an error fails the backup with nothing
    /// visible, and the tags it yields are added to the manifest's.
    fn completion(&mut self) -> Option<SourceCompletion> {
        None
    }
}

/// The future a [`BackupSource::completion`] returns: the tags to add to the
/// manifest, or the error that fails the backup.
pub type SourceCompletion = futures::future::BoxFuture<'static, atlas_core::Result<Vec<String>>>;

/// A directory tree: regular files, directories and symlinks with their
/// permission bits and modification times, and the root directory's own
/// mode and mtime ([`Snapshot::root`](crate::repo::Snapshot::root)). Fifos, sockets and devices are
/// skipped with a warning and counted in [`SnapshotTotals::skipped`](crate::repo::SnapshotTotals::skipped).
///
/// An entry below the root that cannot be read (it vanished after its
/// directory was listed, its directory cannot be listed, it turned into
/// something else, a read failed) is left out with a warning, as restic
/// does, and the backup goes on: the report's
/// [`unreadable`](crate::repo::BackupReport::unreadable) list and the manifest
/// ([`Snapshot::unreadable`](crate::repo::Snapshot::unreadable), [`Snapshot::is_complete`](crate::repo::Snapshot::is_complete)) name it. Files are
/// read up to the size they had when opened, so a file that grows or
/// shrinks meanwhile is stored as the bytes read, with that size.
///
/// Outside Unix there are no permission bits, inodes or fifos: files are
/// recorded with mode 0644 and directories 0755 (0444 and 0555 when
/// read-only), inode 0 (an incremental run compares size and mtime only),
/// names that are not valid Unicode lossily, and files are opened without
/// `O_NOFOLLOW`, so an entry replaced by a symlink after its directory was
/// listed is read through the link. Ownership is recorded nowhere.
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

/// The most bytes [`StreamSource::from_async_read`] reads at once.
const STREAM_PIECE: usize = 1 << 20;

/// Pieces of a stream source in flight: the queue to the chunker (4), the
/// one it is consuming and the one being read.
const STREAM_PIECES_IDLE: usize = 6;
