//! The directory walk: listing, reading regular files without following
//! what replaced them, reusing a parent's unchanged files, and leaving out
//! (and naming) entries that cannot be read.

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

/// One listed directory entry: its name and its `lstat`, which fails when
/// the entry vanished after the listing.
type Listed = (OsString, io::Result<std::fs::Metadata>);

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
        node.mode = mode_of(&meta);
        node.inode = inode_of(&meta);
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
