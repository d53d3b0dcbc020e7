//! The in-memory index: blob id -> (pack, offset, length), merged from every
//! index file of a repository.

use std::collections::HashSet;
use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::cache::{CachedKind, describe};
use super::damage::{DamagedFile, Opened};
use super::format::{IndexFile, IndexPack, PackId};
pub(crate) use super::index_map::{BlobLoc, Index, IndexMemo};
use super::layout::Layout;
use super::repository::Repository;
use super::version::Document;
use atlas_core::backup::{BackupTargetExt, ObjectKey, ObjectMeta};
use atlas_core::error::{Error, ErrorKind, Result};

/// The listing of index files as a memo records it, sorted.
fn listing_of(metas: &[ObjectMeta]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = metas
        .iter()
        .map(|m| (Layout::name_of(&m.key).to_owned(), describe(m)))
        .collect();
    out.sort();
    out
}

/// The index files read: the intact ones by name, and the damaged ones.
type ReadFiles = (Vec<(String, IndexFile)>, Vec<(ObjectKey, DamagedFile)>);

/// Reads the index files `metas`: from the local cache where it holds a
/// copy that the listing still describes and that opens with the
/// repository's key, else from the target (and then into the cache).
async fn read_files(repo: &Repository, metas: Vec<ObjectMeta>, cached: bool) -> Result<ReadFiles> {
    let inner = &repo.inner;
    let cache = if cached { inner.cache.as_ref() } else { None };
    let read: Vec<Option<(ObjectKey, Opened<IndexFile>)>> = futures::stream::iter(metas)
        .map(|m| async move {
            let name = Layout::name_of(&m.key).to_owned();
            if let Some(c) = cache
                && let Some(sealed) = c.get(CachedKind::Index, &name, &m).await
            {
                match repo.open_document_checked(Document::Index, &m.key, &sealed)? {
                    Opened::Intact(f) => return Ok(Some((m.key, Opened::Intact(f)))),
                    Opened::Damaged(d) => {
                        warn!(index = %name, reason = %d.reason, "ignoring a cached index file that does not open");
                        c.remove(CachedKind::Index, &name).await;
                    }
                }
            }
            let sealed = match inner.target.get_bytes(&m.key).await {
                Ok(b) => b,
                // Superseded and deleted by a prune since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let file = repo.open_document_checked(Document::Index, &m.key, &sealed)?;
            if let (Some(c), Opened::Intact(_)) = (cache, &file) {
                c.put(CachedKind::Index, &name, &m, sealed).await;
            }
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
    Ok((files, damaged))
}

impl Index {
    /// The repository's index: every index file, merged. A handle keeps
    /// the index it loaded last and reuses it while the target lists the
    /// same index files; when files were only added, it reads just those.
    /// Files are read through the local cache when the handle has one.
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a file of a newer format
    /// version; for a damaged file, an [`Error::Backend`] naming it (its
    /// source an [`IntegrityError`](crate::repo::IntegrityError) whose
    /// `object` is `index/<name>`) that suggests `repair index`.
    pub(crate) async fn load(repo: &Repository) -> Result<Arc<Index>> {
        let inner = &repo.inner;
        let metas = inner.target.list_all(&inner.layout.indexes()?).await?;
        let listing = listing_of(&metas);
        let mut memo = inner.index_memo.lock().await;
        if let Some(m) = memo.as_ref() {
            if m.listing == listing {
                debug!(files = listing.len(), "index unchanged since it was loaded");
                return Ok(m.index.clone());
            }
            // Only files added: read those, on top of what is known.
            let known: HashSet<&(String, String)> = m.listing.iter().collect();
            let now: HashSet<&(String, String)> = listing.iter().collect();
            if known.is_subset(&now) {
                let added: Vec<ObjectMeta> = metas
                    .iter()
                    .filter(|meta| {
                        !known.contains(&(Layout::name_of(&meta.key).to_owned(), describe(meta)))
                    })
                    .cloned()
                    .collect();
                let (files, damaged) = read_files(repo, added, true).await?;
                if let Some((key, d)) = damaged.into_iter().next() {
                    return Err(d.into_error(Document::Index, &key));
                }
                if files.iter().all(|(_, f)| f.supersedes.is_empty()) {
                    let mut index = Index::clone(&m.index);
                    for (name, file) in &files {
                        for p in &file.packs {
                            index.add_pack(p);
                        }
                        index.files.push(name.clone());
                    }
                    debug!(
                        added = files.len(),
                        blobs = index.blob_count(),
                        "index extended"
                    );
                    let index = Arc::new(index);
                    *memo = Some(IndexMemo {
                        listing,
                        index: index.clone(),
                    });
                    return Ok(index);
                }
            }
        }
        let (index, damaged) = Index::from_listing(repo, metas, true).await?;
        if let Some((key, d)) = damaged.into_iter().next() {
            return Err(d.into_error(Document::Index, &key));
        }
        let index = Arc::new(index);
        *memo = Some(IndexMemo {
            listing,
            index: index.clone(),
        });
        Ok(index)
    }

    /// Loads every index file that can be read, and names those that
    /// cannot (with their object keys). Reads the target itself, never the
    /// local cache: `check` and `repair` judge what the target holds.
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a file of a newer format
    /// version.
    pub(crate) async fn load_tolerant(
        repo: &Repository,
    ) -> Result<(Index, Vec<(ObjectKey, DamagedFile)>)> {
        let inner = &repo.inner;
        let metas = inner.target.list_all(&inner.layout.indexes()?).await?;
        Index::from_listing(repo, metas, false).await
    }

    /// Reads the index files `metas` (through the cache when `cached`) and
    /// merges them; leaves the cache with only the files listed.
    async fn from_listing(
        repo: &Repository,
        metas: Vec<ObjectMeta>,
        cached: bool,
    ) -> Result<(Index, Vec<(ObjectKey, DamagedFile)>)> {
        let present: HashSet<String> = metas
            .iter()
            .map(|m| Layout::name_of(&m.key).to_owned())
            .collect();
        let (files, damaged) = read_files(repo, metas, cached).await?;
        if let Some(c) = repo.inner.cache.as_ref() {
            c.retain(CachedKind::Index, present).await;
        }
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
            packs = index.packs().len(),
            blobs = index.blob_count(),
            damaged = damaged.len(),
            "loaded index"
        );
        Ok((index, damaged))
    }
}

/// An index file's content, borrowed: serialised as [`IndexFile`] is.
#[derive(serde::Serialize)]
struct IndexFileRef<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    supersedes: &'a [String],
    packs: &'a [IndexPack],
}

/// Writes `packs` as a new index file, returning its name.
pub(crate) async fn write_index(
    repo: &Repository,
    packs: &[IndexPack],
    supersedes: &[String],
) -> Result<String> {
    let name = PackId::random().to_hex();
    let file = IndexFileRef { supersedes, packs };
    repo.write_file(
        &repo.inner.layout.index(&name)?,
        Document::Index,
        &file,
        true,
    )
    .await?;
    Ok(name)
}
