//! The in-memory index: blob id -> (pack, offset, length), and the copy a
//! repository handle keeps of it. How it is loaded is in `index`.

use std::collections::HashMap;
use std::sync::Arc;

use super::format::{BlobId, BlobKind, IndexBlob, IndexPack, PackId};

/// Where one blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobLoc {
    pub(crate) pack: u32,
    pub(crate) kind: BlobKind,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    pub(crate) raw_length: u32,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Index {
    packs: Vec<(PackId, u64)>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, BlobLoc>,
    /// Names of the index files this was loaded from.
    pub(crate) files: Vec<String>,
}

/// An index kept in memory by a repository handle, and the listing of the
/// index files it was built from (each file's name and what the listing
/// said of it): reused as long as the target lists the same files.
#[derive(Debug)]
pub(crate) struct IndexMemo {
    pub(crate) listing: Vec<(String, String)>,
    pub(crate) index: Arc<Index>,
}

impl Index {
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

    /// How many blobs it places.
    pub(crate) fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}
