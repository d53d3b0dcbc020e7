//! Reading content into blobs: what the readers of one backup share
//! ([`Ctx`]), chunking, hashing and deduplicating content, tree blobs, and
//! the body of a stream source.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use crate::repo::chunker::chunk_reader;
use crate::repo::crypto::{MasterKey, sealed_capacity};
use crate::repo::error::{BACKEND, json_err};
use crate::repo::format::{
    BlobId, BlobKind, ChunkerParams, Node, NodeKind, SkippedEntry, SnapshotTotals, Tree,
};
use crate::repo::index::Index;
use crate::repo::pool::{BufferPool, Compressors, PooledBuf};
use crate::repo::progress::Tracker;
use crate::repo::repository::Repository;
use atlas_core::backup::ByteStream;
use atlas_core::error::{Error, Result};

/// A blob to store: its kind, its id, and its plaintext or (`sealed`) the
/// blob already compressed and encrypted.
pub(super) struct RawBlob {
    pub(super) kind: BlobKind,
    pub(super) id: BlobId,
    pub(super) data: PooledBuf,
    /// The plaintext's length.
    pub(super) raw_length: u32,
    /// Whether `data` is the sealed blob rather than its plaintext.
    pub(super) sealed: bool,
}

/// Blobs smaller than this are compressed and encrypted by the thread that
/// read them, not handed to an encoder: in a tree of small files the
/// hand-off (a task, its wake-ups, a copy) cost more than the work.
pub(super) const SEAL_INLINE_BELOW: usize = 128 * 1024;

/// What the readers of one backup share.
pub(super) struct Ctx {
    pub(super) master: MasterKey,
    pub(super) chunker: ChunkerParams,
    pub(super) seed: u64,
    pub(super) known: Mutex<HashSet<BlobId>>,
    pub(super) totals: Mutex<SnapshotTotals>,
    pub(super) unreadable: Mutex<Vec<SkippedEntry>>,
    pub(super) tracker: Tracker,
    pub(super) read_permits: Semaphore,
    /// Directories listed and not done with their files (see `walk`).
    pub(super) walk_permits: Semaphore,
    pub(super) incremental: bool,
    pub(super) parent_repo: Repository,
    pub(super) parent_index: Arc<Index>,
    /// Chunking windows, one per file being read.
    pub(super) windows: BufferPool,
    /// Plaintext chunks, from the reader to the encoders (a byte budget).
    pub(super) chunks: BufferPool,
    /// Sealed blobs, from the encoders (or readers) to the targets'
    /// writers.
    pub(super) sealed: BufferPool,
    /// zstd contexts of the readers and encoders.
    pub(super) zstd: Arc<Compressors>,
}

impl Ctx {
    pub(super) fn totals(&self, f: impl FnOnce(&mut SnapshotTotals)) {
        f(&mut self.totals.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Marks `id` as stored by this backup; false when it already was.
    pub(super) fn claim(&self, id: BlobId) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    /// Leaves the entry `rel` out of the snapshot: it could not be read.
    pub(super) fn skip_unreadable(&self, rel: &str, reason: String) {
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

    /// `plain` as a blob ready for a pack: sealed here when small, else a
    /// copy for an encoder. `wait`: whether this thread may block on the
    /// pools' budgets (not on an async task).
    pub(super) fn blob(&self, kind: BlobKind, id: BlobId, plain: &[u8], wait: bool) -> RawBlob {
        let raw_length = plain.len() as u32;
        let take = |pool: &BufferPool, n: usize| if wait { pool.take(n) } else { pool.take_now(n) };
        if plain.len() < SEAL_INLINE_BELOW {
            let mut data = take(&self.sealed, sealed_capacity(plain.len()));
            self.master
                .encode_blob_into(kind, &id, plain, &self.zstd, &mut data);
            RawBlob {
                kind,
                id,
                data,
                raw_length,
                sealed: true,
            }
        } else {
            // Copied out of the window into a recycled buffer: only new
            // chunks cost a copy, and no large allocation crosses threads
            // (see the pool module).
            let mut data = take(&self.chunks, plain.len());
            data.extend_from_slice(plain);
            RawBlob {
                kind,
                id,
                data,
                raw_length,
                sealed: false,
            }
        }
    }

    pub(super) fn is_known(&self, id: &BlobId) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}

pub(super) fn aborted() -> Error {
    Error::backend(
        BACKEND,
        "backup aborted: a later stage of the pipeline failed",
    )
}

/// Reads `reader` to its end, chunking, hashing and queueing new chunks.
/// Runs on a blocking thread. The outer error is fatal (the pipeline
/// stopped); the inner one is the reader's.
pub(super) fn read_content(
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
                if tx
                    .blocking_send(ctx.blob(BlobKind::Data, id, chunk, true))
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

pub(super) fn join_err(e: tokio::task::JoinError) -> Error {
    Error::backend(BACKEND, format!("a worker task failed: {e}"))
}

pub(super) async fn add_tree(ctx: &Ctx, tx: &mpsc::Sender<RawBlob>, tree: &Tree) -> Result<BlobId> {
    let json = serde_json::to_vec(tree).map_err(json_err)?;
    let id = ctx.master.blob_id(&json);
    if ctx.claim(id) {
        let len = json.len() as u64;
        ctx.totals(|t| {
            t.new_bytes += len;
            t.new_chunks += 1;
        });
        tx.send(ctx.blob(BlobKind::Tree, id, &json, false))
            .await
            .map_err(|_| aborted())?;
    }
    Ok(id)
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

pub(super) async fn save_stream(
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
