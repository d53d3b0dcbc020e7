//! The in-memory index: blob id -> (pack, offset, length), merged from every
//! index file of a repository.

use std::collections::{HashMap, HashSet};

use futures::stream::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::damage::{DamagedFile, Opened};
use super::format::{BlobId, BlobKind, IndexBlob, IndexFile, IndexPack, PackId};
use super::layout::Layout;
use super::repository::Repository;
use super::version::Document;
use atlas_core::backup::{BackupTargetExt, ObjectKey};
use atlas_core::error::{Error, ErrorKind, Result};

/// Where one blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobLoc {
    pub(crate) pack: u32,
    pub(crate) kind: BlobKind,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    pub(crate) raw_length: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    packs: Vec<(PackId, u64)>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, BlobLoc>,
    /// Names of the index files this was loaded from.
    pub(crate) files: Vec<String>,
}

impl Index {
    /// Loads every index file.
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a file of a newer format
    /// version; for a damaged file, an [`Error::Backend`] naming it (its
    /// source an [`IntegrityError`](crate::repo::IntegrityError) whose
    /// `object` is `index/<name>`) that suggests `repair index`.
    pub(crate) async fn load(repo: &Repository) -> Result<Index> {
        let (index, damaged) = Index::load_tolerant(repo).await?;
        match damaged.into_iter().next() {
            Some((key, d)) => Err(d.into_error(Document::Index, &key)),
            None => Ok(index),
        }
    }

    /// Loads every index file that can be read, and names those that
    /// cannot (with their object keys).
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a file of a newer format
    /// version.
    pub(crate) async fn load_tolerant(
        repo: &Repository,
    ) -> Result<(Index, Vec<(ObjectKey, DamagedFile)>)> {
        let inner = &repo.inner;
        let metas = inner.target.list_all(&inner.layout.indexes()?).await?;
        let read: Vec<Option<(ObjectKey, Opened<IndexFile>)>> = futures::stream::iter(metas)
            .map(|m| async move {
                let sealed = match inner.target.get_bytes(&m.key).await {
                    Ok(b) => b,
                    // Superseded and deleted by a prune since the listing.
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let file = repo.open_document_checked(Document::Index, &m.key, &sealed)?;
                Ok::<_, Error>(Some((m.key, file)))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut files: Vec<(String, IndexFile)> = Vec::new();
        let mut damaged = Vec::new();
        for (key, opened) in read.into_iter().flatten() {
            match opened {
                Opened::Intact(f) => files.push((Layout::name_of(&key).to_owned(), f)),
                Opened::Damaged(d) => {
                    warn!(index = %d.path, damage = %d.damage, reason = %d.reason, "damaged index file");
                    damaged.push((key, d));
                }
            }
        }
        damaged.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        let superseded: HashSet<&str> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().map(String::as_str))
            .collect();
        let mut index = Index::default();
        for (name, file) in &files {
            if superseded.contains(name.as_str()) {
                continue;
            }
            for p in &file.packs {
                index.add_pack(p);
            }
            index.files.push(name.clone());
        }
        debug!(
            files = index.files.len(),
            packs = index.packs.len(),
            blobs = index.blobs.len(),
            damaged = damaged.len(),
            "loaded index"
        );
        Ok((index, damaged))
    }

    pub(crate) fn add_pack(&mut self, p: &IndexPack) {
        let pos = match self.pack_pos.get(&p.id) {
            Some(pos) => *pos,
            None => {
                let pos = self.packs.len() as u32;
                self.packs.push((p.id, p.size));
                self.pack_pos.insert(p.id, pos);
                pos
            }
        };
        for b in &p.blobs {
            self.blobs.entry(b.id).or_insert(BlobLoc {
                pack: pos,
                kind: b.kind,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            });
        }
    }

    pub(crate) fn get(&self, id: &BlobId) -> Option<BlobLoc> {
        self.blobs.get(id).copied()
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub(crate) fn pack_id(&self, pos: u32) -> PackId {
        self.packs[pos as usize].0
    }

    pub(crate) fn packs(&self) -> &[(PackId, u64)] {
        &self.packs
    }

    pub(crate) fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    pub(crate) fn blob_ids(&self) -> impl Iterator<Item = &BlobId> {
        self.blobs.keys()
    }

    /// Every pack with every blob that the index places in it (a blob stored
    /// twice is listed in the pack the index uses).
    pub(crate) fn by_pack(&self) -> Vec<IndexPack> {
        let mut out: Vec<IndexPack> = self
            .packs
            .iter()
            .map(|(id, size)| IndexPack {
                id: *id,
                size: *size,
                blobs: Vec::new(),
            })
            .collect();
        for (id, loc) in &self.blobs {
            out[loc.pack as usize].blobs.push(IndexBlob {
                id: *id,
                kind: loc.kind,
                offset: loc.offset,
                length: loc.length,
                raw_length: loc.raw_length,
            });
        }
        for p in &mut out {
            p.blobs.sort_by_key(|b| b.offset);
        }
        out
    }
}

/// Writes `packs` as a new index file, returning its name.
pub(crate) async fn write_index(
    repo: &Repository,
    packs: Vec<IndexPack>,
    supersedes: Vec<String>,
) -> Result<String> {
    let name = PackId::random().to_hex();
    let file = IndexFile { supersedes, packs };
    repo.write_file(
        &repo.inner.layout.index(&name)?,
        Document::Index,
        &file,
        true,
    )
    .await?;
    Ok(name)
}
