//! Repairs: moving damaged snapshot manifests aside, and rebuilding the
//! index from the packs' own headers.

use futures::stream::{self, StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span, warn};

use super::damage::DamagedFile;
use super::error::IntegrityError;
use super::format::{
    IndexPack, PACK_HEADER_AAD, PACK_TRAILER_LEN, PackId, decode_pack_header, pack_header_span,
};
use super::index::{Index, write_index};
use super::layout::Layout;
use super::repository::Repository;
use atlas_core::backup::{BackupTargetExt, ByteRange};
use atlas_core::error::{ErrorKind, Result};

/// What [`Repository::repair_snapshots`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairSnapshotsReport {
    /// The damaged manifests moved aside: each `snapshots/<id>` now lies at
    /// `damaged/snapshots/<id>` in the repository, byte for byte.
    pub moved: Vec<DamagedFile>,
}

/// What [`Repository::repair_index`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairIndexReport {
    /// Packs whose headers were read into the new index.
    pub packs_indexed: u64,
    /// Blobs the new index lists.
    pub blobs: u64,
    /// Packs whose header cannot be read (truncated, changed): left where
    /// they are, out of the index; `check` reports what they held as
    /// missing.
    pub unreadable_packs: Vec<IntegrityError>,
    /// Index files that could not be read before the repair.
    pub damaged_index_files: Vec<DamagedFile>,
    /// Old index files removed (damaged or not: the new one replaces all).
    pub index_files_removed: u64,
    /// The name of the new index file (`index/<name>`); `None` when the
    /// repository holds no pack.
    pub index_file: Option<String>,
}

impl Repository {
    /// Moves every damaged snapshot manifest (truncated, changed, not
    /// decodable) aside, to `damaged/snapshots/<id>` in the repository, so
    /// that [`prune`](Self::prune), which refuses to run while a manifest
    /// it cannot read might reference data, runs again. Nothing is deleted:
    /// a moved manifest can be put back (or examined) by hand, and data only
    /// it referenced goes at the next prune. Takes an exclusive lock.
    ///
    /// # Errors
    /// [`Error::Conflict`](atlas_core::Error::Conflict) while another lock
    /// is held; [`Error::Precondition`](atlas_core::Error::Precondition) for
    /// a manifest of a newer format version (not damage: it is left alone);
    /// target errors (a manifest copied but not yet deleted is moved again
    /// by the next run).
    pub async fn repair_snapshots(&self) -> Result<RepairSnapshotsReport> {
        let span = info_span!("repair_snapshots");
        self.under_lock(true, "repair snapshots", async {
            let target = &self.inner.target;
            let layout = &self.inner.layout;
            let listing = self.snapshot_listing().await?;
            let mut report = RepairSnapshotsReport::default();
            for d in listing.damaged {
                let key = layout.prefix.key(&d.path)?;
                let bytes = match target.get_bytes(&key).await {
                    Ok(b) => b,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                // Copy first, delete second: a repair that stops between
                // the two leaves both, and the next one moves it again.
                let aside = layout.damaged_copy(&d.path)?;
                target.put_bytes(&aside, bytes).await?;
                target.delete_if_exists(&key).await?;
                warn!(manifest = %d.path, to = %aside, damage = %d.damage, reason = %d.reason,
                    "moved a damaged snapshot manifest aside");
                report.moved.push(d);
            }
            info!(moved = report.moved.len(), "repaired snapshots");
            Ok(report)
        })
        .instrument(span)
        .await
    }

    /// Rebuilds the index from the packs' own headers (every pack carries
    /// an encrypted list of its blobs): reads the header of every pack on
    /// the target, writes one new index file listing them all, then
    /// removes every old index file, damaged or not. Use it when index
    /// files were lost or damaged; the data itself is untouched. A pack
    /// whose header cannot be read is reported and left alone. Takes an
    /// exclusive lock, so no backup adds packs meanwhile.
    ///
    /// # Errors
    /// [`Error::Conflict`](atlas_core::Error::Conflict) while another lock
    /// is held; [`Error::Precondition`](atlas_core::Error::Precondition)
    /// for an index file of a newer format version (nothing changed);
    /// target errors (old index files are removed only after the new one is
    /// written, so a repair that stops midway loses nothing).
    pub async fn repair_index(&self) -> Result<RepairIndexReport> {
        let span = info_span!("repair_index");
        self.under_lock(true, "repair index", self.repair_index_locked())
            .instrument(span)
            .await
    }

    async fn repair_index_locked(&self) -> Result<RepairIndexReport> {
        let target = &self.inner.target;
        let layout = &self.inner.layout;
        let mut report = RepairIndexReport::default();
        let old: Vec<String> = target
            .list_all(&layout.indexes()?)
            .await?
            .iter()
            .map(|m| Layout::name_of(&m.key).to_owned())
            .collect();
        // Refuses newer versions; names the damaged files for the report.
        let (_, damaged) = Index::load_tolerant(self).await?;
        report.damaged_index_files = damaged.into_iter().map(|(_, d)| d).collect();
        let packs: Vec<(PackId, u64)> = target
            .list_all(&layout.data()?)
            .await?
            .into_iter()
            .filter_map(|m| Layout::name_of(&m.key).parse().ok().map(|id| (id, m.size)))
            .collect();
        let read: Vec<std::result::Result<IndexPack, IntegrityError>> = stream::iter(packs)
            .map(|(id, size)| async move { self.read_pack_header(id, size).await })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut indexed = Vec::new();
        for r in read {
            match r {
                Ok(p) => indexed.push(p),
                Err(ie) => {
                    warn!(problem = %ie, "a pack's header cannot be read; it stays out of the index");
                    report.unreadable_packs.push(ie);
                }
            }
        }
        indexed.sort_by_key(|p| p.id);
        report.packs_indexed = indexed.len() as u64;
        let mut check = Index::default();
        for p in &indexed {
            check.add_pack(p);
        }
        report.blobs = check.blob_ids().count() as u64;
        if !indexed.is_empty() {
            report.index_file = Some(write_index(self, &indexed, &old).await?);
        }
        for name in &old {
            target.delete_if_exists(&layout.index(name)?).await?;
        }
        report.index_files_removed = old.len() as u64;
        info!(
            packs = report.packs_indexed,
            blobs = report.blobs,
            unreadable = report.unreadable_packs.len(),
            removed = report.index_files_removed,
            "rebuilt the index from the packs"
        );
        Ok(report)
    }

    /// The index entry of the pack `id` of `size` bytes, from its header:
    /// the inner error names what is wrong with the pack; the outer one is
    /// a target failure.
    async fn read_pack_header(
        &self,
        id: PackId,
        size: u64,
    ) -> Result<std::result::Result<IndexPack, IntegrityError>> {
        let bad = |why: &str| {
            let mut ie = IntegrityError::new(why.to_owned());
            ie.pack = Some(id);
            Ok(Err(ie))
        };
        if size < PACK_TRAILER_LEN as u64 {
            return bad("has no pack trailer (truncated or not a pack)");
        }
        let key = self.inner.layout.pack(&id)?;
        let target = &self.inner.target;
        let trailer = target
            .get_range(&key, ByteRange::new(size - PACK_TRAILER_LEN as u64, size)?)
            .await?
            .bytes()
            .await?;
        let (start, end) = match pack_header_span(size, &trailer) {
            Ok(span) => span,
            Err(why) => return bad(why),
        };
        if start == end {
            return bad("header is empty (truncated or not a pack)");
        }
        let sealed = target
            .get_range(&key, ByteRange::new(start, end)?)
            .await?
            .bytes()
            .await?;
        let Some(blobs) = self
            .inner
            .master
            .open(PACK_HEADER_AAD, &sealed)
            .and_then(|h| decode_pack_header(&h))
        else {
            return bad("header does not decrypt (corrupted)");
        };
        // The blobs must fill the space before the header exactly.
        let blob_end = blobs
            .last()
            .map_or(0, |b| u64::from(b.offset) + u64::from(b.length));
        if blob_end != start {
            return bad("header does not match the pack's size (truncated or corrupted)");
        }
        Ok(Ok(IndexPack::of(id, size, &blobs)))
    }
}
