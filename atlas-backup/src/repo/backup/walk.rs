//! The directory walk: listing, reading regular files without following
//! what replaced them, reusing a parent's unchanged files, and leaving out
//! (and naming) entries that cannot be read.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::content::{Ctx, RawBlob, aborted, add_tree, join_err, read_content};
use crate::repo::error::BACKEND;
use crate::repo::format::{BlobId, Node, NodeKind, Tree, to_hex};
use crate::repo::platform::{inode_of, mode_of, mtime_of, name_bytes, open_no_follow};
use atlas_core::error::{Error, Result};

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
    // Not following a symlink and not waiting on a fifo (Unix): the entry
    // was a regular file when its directory was listed, but may have been
    // replaced since.
    let file = match open_no_follow(path) {
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

pub(super) fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::backend_with(BACKEND, format!("{what} {}: {e}", path.display()), e)
}

/// A node's name: UTF-8, plus the exact bytes in hex when it is not UTF-8
/// (where the platform has them).
fn node_name(name: &OsString) -> (String, Option<String>) {
    match name.to_str() {
        Some(s) => (s.to_owned(), None),
        None => (
            name.to_string_lossy().into_owned(),
            name_bytes(name).map(to_hex),
        ),
    }
}

/// One listed directory entry: its name, its `lstat` (which fails when the
/// entry vanished after the listing) and, for a symlink, its target (read
/// while listing, on the same thread).
type Listed = (
    OsString,
    io::Result<std::fs::Metadata>,
    Option<io::Result<PathBuf>>,
);

/// Files read by one blocking task at most: reading a tree of small files
/// one task per file cost a thread hand-off (and its wake-ups) per file.
const BATCH_FILES: usize = 64;
/// Bytes (as listed) read by one blocking task at most.
const BATCH_BYTES: u64 = 8 << 20;
/// A file at least this large is read by a task of its own.
const ALONE_BYTES: u64 = 1 << 20;
/// Batches of one directory's files waiting for a reader at once.
const BATCH_CONCURRENCY: usize = 8;
/// Subdirectories of one directory saved at once.
const SUBDIR_CONCURRENCY: usize = 4;
/// Directories listed and not yet done with their files, in the whole walk.
pub(super) const WALK_DIRECTORIES: usize = 8;

/// A regular file to read: where its node goes, and the node filled from
/// the listing.
struct FileJob {
    slot: usize,
    path: PathBuf,
    rel: String,
    node: Node,
}

/// What a directory's entries need beyond what the listing gave.
enum Work {
    /// A subdirectory, saved recursively (with its node and the parent's
    /// tree of it, for an incremental run).
    Dir {
        slot: usize,
        path: PathBuf,
        rel: String,
        node: Box<Node>,
        parent_sub: Option<BlobId>,
    },
    /// Regular files read one after the other by one blocking task.
    Batch(Vec<FileJob>),
}

/// The nodes of the previous snapshot's listing of a directory, by name.
type ParentNodes = HashMap<(String, Option<String>), Node>;

/// Saves the directory `dir` (relative path `rel`, empty for the root) and
/// returns its tree blob, or `None` when it cannot be listed and is left
/// out (an unlistable root fails the backup).
pub(super) fn save_dir(
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<RawBlob>,
    dir: PathBuf,
    rel: String,
    parent: Option<Tree>,
) -> BoxFuture<'static, Result<Option<BlobId>>> {
    Box::pin(async move {
        // Held while the directory is listed and its files read, not while
        // its subdirectories are saved: the listings and files waiting at
        // once are bounded, so the walk cannot run ahead of the readers and
        // hold the whole tree's listing in memory.
        let permit = ctx.walk_permits.acquire().await.map_err(|_| aborted())?;
        if !rel.is_empty() {
            ctx.tracker.update(|p| p.current = Some(rel.clone()));
        }
        let dir2 = dir.clone();
        let listed = tokio::task::spawn_blocking(move || -> io::Result<Vec<Listed>> {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir2)? {
                let entry = entry?;
                let meta = entry.metadata();
                let link = match &meta {
                    Ok(m) if m.file_type().is_symlink() => Some(std::fs::read_link(entry.path())),
                    _ => None,
                };
                out.push((entry.file_name(), meta, link));
            }
            // By the name's bytes (on Unix, its exact bytes).
            out.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
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
        let mut parent: ParentNodes = parent
            .map(|t| {
                t.nodes
                    .into_iter()
                    .map(|n| ((n.name.clone(), n.name_bytes.clone()), n))
                    .collect()
            })
            .unwrap_or_default();
        let mut nodes: Vec<Option<Node>> = Vec::new();
        nodes.resize_with(entries.len(), || None);
        let mut work: Vec<Work> = Vec::new();
        let mut dirs: Vec<Work> = Vec::new();
        let mut batch: Vec<FileJob> = Vec::new();
        let mut batch_bytes = 0u64;
        for (slot, (name, meta, link)) in entries.into_iter().enumerate() {
            let path = dir.join(&name);
            let rel = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            match plan_entry(&ctx, &mut parent, path, rel, &name, meta, link) {
                Planned::Done(node) => nodes[slot] = node,
                Planned::Dir {
                    path,
                    rel,
                    node,
                    parent_sub,
                } => dirs.push(Work::Dir {
                    slot,
                    path,
                    rel,
                    node: Box::new(node),
                    parent_sub,
                }),
                Planned::Read(path, rel, node) => {
                    let size = node.size;
                    let job = FileJob {
                        slot,
                        path,
                        rel,
                        node,
                    };
                    if size >= ALONE_BYTES {
                        work.push(Work::Batch(vec![job]));
                        continue;
                    }
                    if batch.len() >= BATCH_FILES || batch_bytes + size > BATCH_BYTES {
                        work.push(Work::Batch(std::mem::take(&mut batch)));
                        batch_bytes = 0;
                    }
                    batch_bytes += size;
                    batch.push(job);
                }
            }
        }
        if !batch.is_empty() {
            work.push(Work::Batch(batch));
        }
        // This directory's files first; then, without the permit, its
        // subdirectories.
        let mut permit = Some(permit);
        for (items, concurrency) in [(work, BATCH_CONCURRENCY), (dirs, SUBDIR_CONCURRENCY)] {
            let mut done = stream::iter(items)
                .map(|w| {
                    let ctx = ctx.clone();
                    let tx = tx.clone();
                    async move { run_work(ctx, tx, w).await }
                })
                .buffer_unordered(concurrency);
            while let Some(saved) = done.try_next().await? {
                for (slot, node) in saved {
                    nodes[slot] = node;
                }
            }
            drop(done);
            drop(permit.take());
        }
        let tree = Tree {
            nodes: nodes.into_iter().flatten().collect(),
        };
        add_tree(&ctx, &tx, &tree).await.map(Some)
    })
}

/// What one listed entry needs.
enum Planned {
    /// Nothing more: its node (`None`: left out).
    Done(Option<Node>),
    /// A subdirectory to save.
    Dir {
        path: PathBuf,
        rel: String,
        node: Node,
        parent_sub: Option<BlobId>,
    },
    /// A regular file to read.
    Read(PathBuf, String, Node),
}

/// Decides what the entry `name` needs, from its listing alone: symlinks,
/// special files, entries that vanished and files an incremental run can
/// reuse are done here, without another task.
fn plan_entry(
    ctx: &Ctx,
    parent: &mut ParentNodes,
    path: PathBuf,
    rel: String,
    name: &OsString,
    meta: io::Result<std::fs::Metadata>,
    link: Option<io::Result<PathBuf>>,
) -> Planned {
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            ctx.skip_unreadable(&rel, format!("cannot stat: {e}"));
            return Planned::Done(None);
        }
    };
    let (name_str, name_bytes) = node_name(name);
    let prev = parent.remove(&(name_str.clone(), name_bytes.clone()));
    let (mtime_sec, mtime_nsec) = mtime_of(&meta);
    let mut node = Node {
        name: name_str,
        name_bytes,
        kind: NodeKind::File,
        mode: mode_of(&meta),
        mtime_sec,
        mtime_nsec,
        size: 0,
        inode: inode_of(&meta),
        content: Vec::new(),
        subtree: None,
        target: None,
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        node.kind = NodeKind::Dir;
        let parent_sub = prev
            .filter(|p| p.kind == NodeKind::Dir && ctx.incremental)
            .and_then(|p| p.subtree);
        Planned::Dir {
            path,
            rel,
            node,
            parent_sub,
        }
    } else if ft.is_symlink() {
        let target = match link {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                ctx.skip_unreadable(&rel, format!("cannot read symlink: {e}"));
                return Planned::Done(None);
            }
            None => match std::fs::read_link(&path) {
                Ok(t) => t,
                Err(e) => {
                    ctx.skip_unreadable(&rel, format!("cannot read symlink: {e}"));
                    return Planned::Done(None);
                }
            },
        };
        node.kind = NodeKind::Symlink;
        node.target = Some(target.to_string_lossy().into_owned());
        ctx.totals(|t| t.symlinks += 1);
        Planned::Done(Some(node))
    } else if ft.is_file() {
        node.size = meta.len();
        let unchanged = ctx.incremental
            && prev.as_ref().is_some_and(|p| {
                p.kind == NodeKind::File
                    && p.size == node.size
                    && p.mtime_sec == node.mtime_sec
                    && p.mtime_nsec == node.mtime_nsec
                    && p.inode == node.inode
                    && p.content.iter().all(|id| ctx.is_known(id))
            });
        if let (true, Some(p)) = (unchanged, prev) {
            node.content = p.content;
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
            return Planned::Done(Some(node));
        }
        Planned::Read(path, rel, node)
    } else {
        warn!(path = %rel, "skipping a special file (fifo, socket or device)");
        ctx.totals(|t| t.skipped += 1);
        Planned::Done(None)
    }
}

/// Saves a subdirectory, or reads a batch of files on one blocking thread;
/// returns the nodes by slot.
async fn run_work(
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<RawBlob>,
    work: Work,
) -> Result<Vec<(usize, Option<Node>)>> {
    match work {
        Work::Dir {
            slot,
            path,
            rel,
            mut node,
            parent_sub,
        } => {
            let parent_tree = match parent_sub {
                Some(id) => match ctx.parent_repo.read_tree(&ctx.parent_index, &id).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        warn!(path = %rel, error = %e, "cannot read the parent's tree; reading the directory in full");
                        None
                    }
                },
                None => None,
            };
            node.subtree = save_dir(ctx, tx, path, rel, parent_tree).await?;
            Ok(vec![(slot, node.subtree.is_some().then_some(*node))])
        }
        Work::Batch(jobs) => {
            let _permit = ctx.read_permits.acquire().await.map_err(|_| aborted())?;
            let ctx2 = ctx.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(jobs.len());
                for job in jobs {
                    ctx2.tracker.update(|p| p.current = Some(job.rel.clone()));
                    let read = read_source_file(&ctx2, &job.path, &job.rel, &tx)?;
                    out.push((job, read));
                }
                Ok::<_, Error>(out)
            })
            .await
            .map_err(join_err)??;
            // Left-out entries are reported here, on the walk's task.
            Ok(read
                .into_iter()
                .map(|(job, read)| {
                    let FileJob {
                        slot,
                        rel,
                        mut node,
                        ..
                    } = job;
                    let ReadFile { ids, size, meta } = match read {
                        Ok(r) => r,
                        Err(reason) => {
                            ctx.skip_unreadable(&rel, reason);
                            return (slot, None);
                        }
                    };
                    // The metadata of the file as opened and read, not as listed.
                    (node.mtime_sec, node.mtime_nsec) = mtime_of(&meta);
                    node.mode = mode_of(&meta);
                    node.inode = inode_of(&meta);
                    node.content = ids;
                    node.size = size;
                    ctx.totals(|t| {
                        t.files += 1;
                        t.bytes += size;
                    });
                    ctx.tracker.update(|p| p.files_done += 1);
                    (slot, Some(node))
                })
                .collect())
        }
    }
}

/// Counts files and bytes under `root` for progress totals, concurrently
/// with the backup; stops early when `stop` is set.
pub(super) fn scan_totals(root: PathBuf, tracker: Arc<Ctx>, stop: Arc<AtomicBool>) {
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
