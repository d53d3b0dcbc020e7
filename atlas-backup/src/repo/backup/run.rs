//! One backup run: its options and report, and the orchestration that
//! overlaps reading, chunking + hashing, compression + encryption and
//! uploads to every target of the run.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use super::content::{Ctx, RawBlob, save_stream};
use super::pack::{BLOBS_PER_TARGET, PIECE_BYTES, pack_stage};
use super::sink::{Sink, healthy_count, quorum_lost};
use super::source::{BackupSource, SourceInput};
use super::walk::{WALK_DIRECTORIES, io_err, save_dir, scan_totals};
use crate::repo::crypto::sealed_capacity;
use crate::repo::error::BACKEND;
use crate::repo::format::{
    BackupKind, BlobId, MAX_RECORDED_UNREADABLE, RootMetadata, SkippedEntry, Snapshot, SnapshotId,
    SnapshotTotals,
};
use crate::repo::host::default_host;
use crate::repo::index::{Index, write_index};
use crate::repo::lock::LockGuard;
use crate::repo::platform::{mode_of, mtime_of};
use crate::repo::policy::{MirrorPolicy, TargetOutcome};
use crate::repo::pool::{BufferPool, Compressors};
use crate::repo::progress::{ProgressFn, Tracker};
use crate::repo::repository::Repository;
use crate::repo::version::Document;
use atlas_core::error::{Error, Result};

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
    /// `/etc/hostname`, else `$COMPUTERNAME`, else `unknown`).
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
    /// Bytes of plaintext chunks the pipeline holds at once on their way
    /// from the readers to the encoders: readers wait when it is used up,
    /// so memory is bounded by bytes whatever the chunk sizes. (What waits
    /// for the targets is bounded by pieces of at most 512 KiB in queues
    /// of a few pieces.) Default 12 MiB; never less than two largest
    /// chunks.
    pub buffer_bytes: usize,
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
            buffer_bytes: 12 << 20,
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
    /// Sets the bytes of buffers held at once ([`buffer_bytes`](Self::buffer_bytes)).
    pub fn with_buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes;
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

/// What [`run_backup`] did: the snapshot, each target's outcome and every
/// entry left out as unreadable.
pub(crate) struct BackupRun {
    pub(crate) snapshot: Snapshot,
    pub(crate) targets: Vec<TargetOutcome>,
    pub(crate) unreadable: Vec<SkippedEntry>,
    /// What the chunk and blob buffer pool did.
    #[cfg(test)]
    pub(crate) blob_pool: crate::repo::pool::PoolStats,
    /// What the plaintext chunk pool did.
    #[cfg(test)]
    pub(crate) chunk_pool: crate::repo::pool::PoolStats,
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
    let mut source = source;
    let source_name = source.source_name();
    let paths = source.paths();
    let completion = source.completion();
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
                        first_index = Some(ix);
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
        let budget = options.buffer_bytes.max(2 * max_chunk);
        let ctx = Arc::new(Ctx {
            seed: master.chunker_seed(),
            master: master.clone(),
            chunker: config.chunker,
            known: Mutex::new(known.unwrap_or_default()),
            totals: Mutex::new(SnapshotTotals::default()),
            unreadable: Mutex::new(Vec::new()),
            tracker: Tracker::new("backup", options.progress.clone()),
            read_permits: Semaphore::new(readers),
            walk_permits: Semaphore::new(WALK_DIRECTORIES),
            incremental,
            parent_repo,
            parent_index,
            // One window per file read at once, plus a stream source's.
            windows: BufferPool::new(readers + 1, 2 * max_chunk),
            // Enough idle buffers for what the pipeline holds at once
            // (blocked readers, the blob queue, the encoders, and the
            // per-target queues of pieces), so that once it is full it
            // allocates nothing large; the byte budget bounds the chunks
            // out at once.
            chunks: BufferPool::with_budget(readers + 4 * workers, max_chunk, budget),
            sealed: BufferPool::new(
                readers + 4 * workers + BLOBS_PER_TARGET * repos.len(),
                sealed_capacity(max_chunk).max(PIECE_BYTES),
            ),
            zstd: Arc::new(Compressors::new(config.compression_level)),
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
                        let root_meta = RootMetadata { mode: mode_of(&meta), mtime_sec, mtime_nsec };
                        // Totals only serve progress: no second walk of the
                        // tree when nobody is told.
                        if ctx.tracker.has_callback() {
                            let (c2, r2, s2) = (ctx.clone(), root.clone(), stop_scan.clone());
                            drop(tokio::task::spawn_blocking(move || scan_totals(r2, c2, s2)));
                        }
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
            ctx.sealed.clone(),
            ctx.zstd.clone(),
        );
        // The source's own verdict comes after its last byte, before
        // anything is committed: a failed producer leaves no snapshot.
        let walk = async move {
            let out = walk.await?;
            let tags = match completion {
                Some(done) => done.await?,
                None => Vec::new(),
            };
            Ok::<_, Error>((out, tags))
        };
        let result = tokio::try_join!(walk, packing);
        stop_scan.store(true, Ordering::Relaxed);
        let (w, c, b) = (ctx.windows.stats(), ctx.chunks.stats(), ctx.sealed.stats());
        debug!(
            windows_allocated = w.allocated,
            windows_high_water = w.high_water,
            chunks_allocated = c.allocated,
            chunks_reused = c.reused,
            chunks_peak_bytes = c.peak_bytes,
            blobs_allocated = b.allocated,
            blobs_reused = b.reused,
            blobs_high_water = b.high_water,
            blobs_peak_bytes = b.peak_bytes,
            blobs_idle = b.idle,
            blobs_idle_bytes = b.idle_bytes,
            "buffer pools"
        );
        let (((tree, root), late_tags), new_packs) = match result {
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
            tags: options.tags.iter().cloned().chain(late_tags).collect(),
            parent: parent.map(|p| p.id),
            tree,
            totals,
            root,
            unreadable: unreadable.iter().take(MAX_RECORDED_UNREADABLE).cloned().collect(),
        };
        // Index, then (only if the policy can still be met) manifests, last.
        futures::future::join_all(sinks.iter().filter(|s| s.healthy()).map(|s| async {
            if !new_packs.is_empty()
                && let Err(e) = write_index(&s.repo, &new_packs, &[]).await
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
            let res = async { s.repo.write_file(&s.repo.inner.layout.snapshot(&snapshot.id)?, Document::Snapshot, &snapshot, true).await }.await;
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
            #[cfg(test)]
            chunk_pool: c,
        })
    }
    .instrument(span)
    .await
}

impl Repository {
    /// Backs `source` up and commits a snapshot (its manifest written last,
    /// with a conditional create). Takes a shared lock for the duration.
    /// Entries below the root that cannot be read are left out and listed
    /// in [`BackupReport::unreadable`] (see [`DirectorySource`](super::source::DirectorySource)).
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
