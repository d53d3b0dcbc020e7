//! `forget` (drop snapshot manifests) and `prune` (drop and repack data no
//! snapshot references).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::SystemTime;

use futures::stream::{self, StreamExt, TryStreamExt};
use tracing::{Instrument, debug, info, info_span};

use super::error::{BACKEND, IntegrityError};
use super::format::{
    BlobId, IndexPack, NodeKind, PACK_HEADER_AAD, PACK_MAGIC, PackId, PackedBlob, SnapshotId,
    encode_pack_header,
};
use super::index::write_index;
use super::layout::Layout;
use super::progress::{ProgressFn, Tracker};
use super::repository::Repository;
use atlas_core::backup::{BackupTargetExt, UnfinishedPut};
use atlas_core::error::{Error, Result};

/// Options of [`Repository::prune`].
#[derive(Clone)]
#[non_exhaustive]
pub struct PruneOptions {
    /// A pack whose unused bytes exceed this fraction of its size is
    /// repacked; below it, it is kept whole. Default 0.2.
    pub max_unused_fraction: f64,
    /// Compute the report without changing anything. Default false.
    pub dry_run: bool,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_fraction: 0.2,
            dry_run: false,
            progress: None,
        }
    }
}

impl PruneOptions {
    /// Sets the repacking threshold.
    pub fn with_max_unused_fraction(mut self, fraction: f64) -> Self {
        self.max_unused_fraction = fraction;
        self
    }
    /// Only report what would be done.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Sets the progress callback.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl fmt::Debug for PruneOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PruneOptions")
            .field("max_unused_fraction", &self.max_unused_fraction)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// What prune did (or would do, in a dry run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Packs deleted because nothing in them is used.
    pub packs_deleted: u64,
    /// Packs on the target no index listed (interrupted backups), deleted.
    pub orphan_packs_deleted: u64,
    /// Partly used packs whose used blobs were copied to new packs.
    pub packs_repacked: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Bytes removed from the target, net of bytes written.
    pub bytes_freed: u64,
    /// Index files replaced by one new index.
    pub index_files_replaced: u64,
    /// Leftovers of puts that never finished (a crashed backup's temporary
    /// files), removed: those last written before the oldest live lock was
    /// taken.
    pub unfinished_puts_removed: u64,
}

impl Repository {
    /// Deletes the manifests of the snapshots `ids` (full ids or unique
    /// prefixes). Their data stays until [`prune`](Self::prune). Takes a
    /// shared lock.
    ///
    /// # Errors
    /// [`Error::NotFound`] / [`Error::InvalidInput`] for an id that matches
    /// no or several snapshots (nothing is deleted then); target errors.
    pub async fn forget(&self, ids: &[String]) -> Result<Vec<SnapshotId>> {
        let span = info_span!("forget", count = ids.len());
        async move {
            let mut resolved = Vec::new();
            for id in ids {
                resolved.push(self.snapshot(id).await?.id);
            }
            self.under_lock(false, "forget", async {
                let mut done = Vec::new();
                for id in resolved {
                    self.inner
                        .target
                        .delete_if_exists(&self.inner.layout.snapshot(&id)?)
                        .await?;
                    info!(snapshot = %id.short(), "forgot snapshot");
                    done.push(id);
                }
                Ok(done)
            })
            .await
        }
        .instrument(span)
        .await
    }

    /// Removes data no snapshot references: packs with no used blob are
    /// deleted, packs mostly unused are repacked, packs left by interrupted
    /// backups are deleted, and the index is rewritten as one file. What
    /// crashed puts left on the target (temporary files; see
    /// [`UnfinishedPut`]) is removed too when it is older than the oldest
    /// live lock, so a running writer's temporaries are never touched. Takes an
    /// exclusive lock, so it never runs alongside a backup (whose packs are
    /// not indexed until it finishes). New index first, old indexes next,
    /// packs last: a prune that stops midway loses nothing referenced.
    ///
    /// # Errors
    /// [`Error::Conflict`] while any other lock exists that is not
    /// [abandoned](crate::repo::LockInfo::is_abandoned);
    /// [`Error::Precondition`] (nothing deleted) while a snapshot manifest
    /// is damaged ([`repair_snapshots`](Self::repair_snapshots) moves such
    /// manifests aside) or of a newer format version; [`Error::Backend`]
    /// (nothing deleted) when the index or a tree cannot be read, since then
    /// what is used is unknown; target errors.
    pub async fn prune(&self, options: PruneOptions) -> Result<PruneReport> {
        if !(0.0..=1.0).contains(&options.max_unused_fraction) {
            return Err(Error::invalid(
                "max_unused_fraction",
                "must be between 0 and 1",
            ));
        }
        let span = info_span!("prune", dry_run = options.dry_run);
        self.under_lock(true, "prune", self.prune_locked(options))
            .instrument(span)
            .await
    }

    async fn prune_locked(&self, options: PruneOptions) -> Result<PruneReport> {
        let tracker = Tracker::new("prune", options.progress.clone());
        let target = &self.inner.target;
        // A manifest that cannot be read may reference any blob: until it is
        // moved aside (`repair snapshots`), deleting anything could destroy
        // a snapshot that is only unreadable for now (a truncated copy, a
        // bad sector), so prune refuses before it reads anything else.
        let listing = self.snapshot_listing().await?;
        if !listing.damaged.is_empty() {
            let names: Vec<String> = listing.damaged.iter().map(|d| d.to_string()).collect();
            return Err(Error::precondition(format!(
                "prune refused, nothing deleted: {} snapshot manifest(s) cannot be read and may \
                 reference data: {}; `repair snapshots` moves them aside (to damaged/snapshots/), \
                 after which prune deletes what only they referenced",
                names.len(),
                names.join("; ")
            )));
        }
        let index = self.load_index().await?;
        // Everything any snapshot uses.
        let mut used: HashSet<BlobId> = HashSet::new();
        for snap in listing.snapshots {
            let mut stack = vec![snap.tree];
            while let Some(tid) = stack.pop() {
                if !used.insert(tid) {
                    continue;
                }
                let tree = self.read_tree(&index, &tid).await.map_err(|e| {
                    Error::backend(
                        BACKEND,
                        format!(
                            "prune stopped, nothing deleted: snapshot {}: {e}",
                            snap.id.short()
                        ),
                    )
                })?;
                for n in tree.nodes {
                    match n.kind {
                        NodeKind::Dir => stack.extend(n.subtree),
                        NodeKind::File => used.extend(n.content),
                        NodeKind::Symlink => {}
                    }
                }
            }
        }
        let on_target: HashMap<PackId, u64> = target
            .list_all(&self.inner.layout.data()?)
            .await?
            .into_iter()
            .filter_map(|m| Layout::name_of(&m.key).parse().ok().map(|id| (id, m.size)))
            .collect();
        let mut report = PruneReport::default();
        let mut keep: Vec<IndexPack> = Vec::new();
        let mut repack: Vec<IndexPack> = Vec::new();
        let mut delete: Vec<PackId> = Vec::new();
        for mut p in index.by_pack() {
            if !on_target.contains_key(&p.id) {
                // Check reports it; nothing to delete, and its blobs are lost.
                continue;
            }
            p.blobs.retain(|b| used.contains(&b.id));
            let used_bytes: u64 = p.blobs.iter().map(|b| u64::from(b.length)).sum();
            if p.blobs.is_empty() {
                report.packs_deleted += 1;
                report.bytes_freed += p.size;
                delete.push(p.id);
            } else if (p.size.saturating_sub(used_bytes)) as f64
                > options.max_unused_fraction * p.size as f64
            {
                report.packs_repacked += 1;
                report.bytes_freed += p.size;
                repack.push(p);
            } else {
                report.packs_kept += 1;
                keep.push(p);
            }
        }
        for (id, size) in &on_target {
            if !index.has_pack(id) {
                report.orphan_packs_deleted += 1;
                report.bytes_freed += size;
                delete.push(*id);
            }
        }
        let leftovers = self.abandoned_puts().await?;
        report.unfinished_puts_removed = leftovers.len() as u64;
        if options.dry_run {
            info!(?report, "prune dry run");
            return Ok(report);
        }
        tracker.update(|p| p.files_total = Some(repack.len() as u64));
        // Repack: copy the used blobs (verified first) into new packs.
        let pack_size = self.inner.config.pack_size as usize;
        let mut data: Vec<u8> = Vec::new();
        let mut entries: Vec<PackedBlob> = Vec::new();
        let mut written: Vec<IndexPack> = Vec::new();
        for p in &repack {
            let bytes = target.get_bytes(&self.inner.layout.pack(&p.id)?).await?;
            for b in &p.blobs {
                let (s, e) = (b.offset as usize, b.offset as usize + b.length as usize);
                let sealed = bytes.get(s..e).ok_or_else(|| {
                    let mut ie = IntegrityError::new(
                        "lies outside its pack; prune stopped, nothing deleted",
                    );
                    ie.pack = Some(p.id);
                    ie.blob = Some(b.id);
                    ie.into_error()
                })?;
                if let Err(fault) =
                    self.inner
                        .master
                        .decode_blob(b.kind, &b.id, b.raw_length, sealed)
                {
                    let mut ie =
                        IntegrityError::new(format!("{fault}; prune stopped, nothing deleted"));
                    ie.pack = Some(p.id);
                    ie.blob = Some(b.id);
                    return Err(ie.into_error());
                }
                entries.push(PackedBlob {
                    kind: b.kind,
                    id: b.id,
                    offset: data.len() as u32,
                    length: b.length,
                    raw_length: b.raw_length,
                });
                data.extend_from_slice(sealed);
                if data.len() >= pack_size {
                    written.push(
                        self.upload_pack(std::mem::take(&mut data), std::mem::take(&mut entries))
                            .await?,
                    );
                }
            }
            tracker.update(|pr| pr.files_done += 1);
        }
        if !entries.is_empty() {
            written.push(self.upload_pack(data, entries).await?);
        }
        report.packs_written = written.len() as u64;
        let written_bytes: u64 = written.iter().map(|p| p.size).sum();
        report.bytes_freed = report.bytes_freed.saturating_sub(written_bytes);
        // New index, then old indexes, then packs.
        let mut all = keep;
        all.extend(written);
        let old = index.files.clone();
        write_index(self, &all, &old).await?;
        for name in &old {
            target
                .delete_if_exists(&self.inner.layout.index(name)?)
                .await?;
        }
        report.index_files_replaced = old.len() as u64;
        let to_delete: Vec<PackId> = delete
            .into_iter()
            .chain(repack.iter().map(|p| p.id))
            .collect();
        stream::iter(to_delete)
            .map(|id| async move { target.delete_if_exists(&self.inner.layout.pack(&id)?).await })
            .buffer_unordered(8)
            .try_collect::<Vec<bool>>()
            .await?;
        for put in &leftovers {
            target.remove_unfinished_put(put).await?;
            debug!(leftover = %put.id, "removed what an unfinished put left");
        }
        info!(?report, "prune finished");
        Ok(report)
    }

    /// What puts that never finished left under the repository's prefix
    /// and no live lock holder can still be writing: last written before
    /// the oldest lock that is not abandoned was taken (prune's own lock
    /// counts, so anything written since prune started stays), or all of
    /// them when there is no live lock. Lock times come from the clocks of
    /// the lock holders and leftover times from the target's, so a holder
    /// whose clock runs ahead by more than a lock's age could lose a
    /// temporary file; its put then fails and it retries, nothing is lost.
    async fn abandoned_puts(&self) -> Result<Vec<UnfinishedPut>> {
        let now = SystemTime::now();
        let oldest_live = self
            .locks()
            .await?
            .into_iter()
            .filter(|l| !l.is_abandoned(now))
            .map(|l| l.created)
            .min();
        let leftovers = self
            .inner
            .target
            .unfinished_puts(&self.inner.layout.prefix)
            .await?;
        Ok(leftovers
            .into_iter()
            .filter(|p| oldest_live.is_none_or(|t| p.last_modified < t))
            .collect())
    }

    async fn upload_pack(&self, mut data: Vec<u8>, blobs: Vec<PackedBlob>) -> Result<IndexPack> {
        let header = self
            .inner
            .master
            .seal(PACK_HEADER_AAD, &encode_pack_header(&blobs));
        data.extend_from_slice(&header);
        data.extend_from_slice(&(header.len() as u32).to_le_bytes());
        data.extend_from_slice(PACK_MAGIC);
        let id = PackId::random();
        let size = data.len() as u64;
        self.inner
            .target
            .put_bytes_if_absent(&self.inner.layout.pack(&id)?, data.into())
            .await?;
        Ok(IndexPack::of(id, size, &blobs))
    }
}
