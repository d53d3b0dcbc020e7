//! The repository handle: creating and opening a repository, its key
//! files, and reading snapshot manifests.

use std::fmt;
use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};
use tracing::{info, instrument, warn};

use super::cache::{CachedKind, LocalCache};
use super::crypto::{KdfParams, KeyFile, KeySource, MasterKey};
use super::damage::{DamagedFile, DocumentDamage, Opened, SnapshotListing};
use super::error::{BACKEND, json_err};
use super::format::{self, ChunkerParams, FORMAT_NAME, RepoConfig, Snapshot, SnapshotId};
use super::index_map::IndexMemo;
use super::layout::Layout;
use super::version::{self, Document};
use atlas_core::backup::{BackupTarget, BackupTargetExt, ObjectKey, ObjectPrefix};
use atlas_core::error::{Error, ErrorKind, Result};

/// Options of [`Repository::init`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitOptions {
    /// Chunker parameters (default: 256 KiB / 1 MiB / 4 MiB).
    pub chunker: ChunkerParams,
    /// Size at which a pack is closed. Default 16 MiB: about 64 objects per
    /// GiB keeps listings and per-object costs low, while packs are streamed
    /// to the target blob by blob, so the size costs no memory. 1–128 MiB.
    pub pack_size: u32,
    /// zstd level of blobs. Default 1 (fast; zstd's ratio grows little
    /// beyond it on typical backup data, its cost a lot). Blobs under
    /// 128 KiB (small files, directory listings) are compressed at level 3
    /// at least: they are mostly text, where level 3 stores 3–5 % less, and
    /// zstd's set-up per call, not its level, is most of their cost.
    pub compression_level: i32,
    /// Argon2id costs of the first key file.
    pub kdf: KdfParams,
    /// Label of the first key file. Default `initial`.
    pub key_label: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            pack_size: 16 * 1024 * 1024,
            compression_level: 1,
            kdf: KdfParams::default(),
            key_label: "initial".into(),
        }
    }
}

impl InitOptions {
    /// Sets the chunker parameters.
    pub fn with_chunker(mut self, chunker: ChunkerParams) -> Self {
        self.chunker = chunker;
        self
    }

    /// Sets the pack size.
    pub fn with_pack_size(mut self, bytes: u32) -> Self {
        self.pack_size = bytes;
        self
    }

    /// Sets the Argon2id costs.
    pub fn with_kdf(mut self, kdf: KdfParams) -> Self {
        self.kdf = kdf;
        self
    }
}

/// A key file of a repository, as [`Repository::keys`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key file's id (its object name).
    pub id: String,
    /// `argon2id` (passphrase) or `raw`.
    pub kdf: String,
    /// The label given when it was added.
    pub label: String,
    /// When it was added (RFC 3339).
    pub created: String,
    /// Whether this repository handle was opened with it.
    pub current: bool,
}

pub(crate) struct RepoInner {
    pub(crate) target: Arc<dyn BackupTarget>,
    pub(crate) layout: Layout,
    pub(crate) master: MasterKey,
    pub(crate) config: RepoConfig,
    pub(crate) key_id: Option<String>,
    /// The local cache of index files and manifests, if the handle has one.
    pub(crate) cache: Option<LocalCache>,
    /// The index loaded last (see [`Index::load`](super::index::Index::load)).
    pub(crate) index_memo: tokio::sync::Mutex<Option<IndexMemo>>,
}

impl RepoInner {
    fn new(
        target: Arc<dyn BackupTarget>,
        layout: Layout,
        master: MasterKey,
        config: RepoConfig,
        key_id: Option<String>,
    ) -> Self {
        RepoInner {
            target,
            layout,
            master,
            config,
            key_id,
            cache: None,
            index_memo: tokio::sync::Mutex::new(None),
        }
    }
}

/// A handle on an opened repository. Cheap to clone; clones share the key.
///
/// Debug output names the target and prefix, never key material.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<RepoInner>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.layout.prefix)
            .field("id", &self.inner.config.id)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Creates a new repository under `prefix` of `target` with a random
    /// master key, protected by `key`.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a repository (its `config`) already exists
    /// there; [`Error::InvalidInput`] for bad options or an empty
    /// passphrase; target errors.
    #[instrument(skip_all, fields(prefix = %prefix))]
    pub async fn init(
        target: Arc<dyn BackupTarget>,
        prefix: ObjectPrefix,
        key: &KeySource,
        options: InitOptions,
    ) -> Result<Self> {
        options.chunker.validate()?;
        if !(1024 * 1024..=128 * 1024 * 1024).contains(&options.pack_size) {
            return Err(Error::invalid(
                "pack_size",
                format!(
                    "must be between 1 MiB and 128 MiB, got {}",
                    options.pack_size
                ),
            ));
        }
        if !(-7..=22).contains(&options.compression_level) {
            return Err(Error::invalid(
                "compression_level",
                "must be between -7 and 22",
            ));
        }
        let layout = Layout::new(prefix);
        let config = RepoConfig {
            format: FORMAT_NAME.into(),
            version: Document::Config.newest(),
            id: format::PackId::random().to_hex(),
            chunker: options.chunker,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
        };
        let master = MasterKey::generate();
        let key_file = KeyFile::wrap(&master, key, options.kdf, &options.key_label)?;
        let key_id = format::PackId::random().to_hex();
        let config_json = serde_json::to_vec_pretty(&config).map_err(json_err)?;
        if target.exists(&layout.config()?).await? {
            return Err(Error::conflict(format!(
                "a repository already exists under {:?}",
                layout.prefix.as_str()
            )));
        }
        target
            .put_bytes_if_absent(
                &layout.key_file(&key_id)?,
                serde_json::to_vec_pretty(&key_file)
                    .map_err(json_err)?
                    .into(),
            )
            .await?;
        target
            .put_bytes_if_absent(&layout.config()?, config_json.into())
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::Conflict {
                    Error::conflict(format!(
                        "a repository already exists under {:?}",
                        layout.prefix.as_str()
                    ))
                } else {
                    e
                }
            })?;
        info!(repo = %config.id, "initialised backup repository");
        Ok(Repository {
            inner: Arc::new(RepoInner::new(target, layout, master, config, Some(key_id))),
        })
    }

    /// Opens the repository under `prefix` of `target`, unlocking its master
    /// key with `key` (every key file is tried).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no repository there;
    /// [`Error::InvalidInput`] (field `key`) "wrong key or passphrase" when
    /// no key file opens with `key`; [`Error::Backend`] for a config of an
    /// unknown format; target errors.
    #[instrument(skip_all, fields(prefix = %prefix))]
    pub async fn open(
        target: Arc<dyn BackupTarget>,
        prefix: ObjectPrefix,
        key: &KeySource,
    ) -> Result<Self> {
        let layout = Layout::new(prefix);
        let config = read_config(&*target, &layout).await?;
        let key_files = list_key_files(&*target, &layout).await?;
        for (id, kf) in key_files {
            let source = key.clone();
            let kf2 = kf.clone();
            let got = tokio::task::spawn_blocking(move || kf2.unwrap_with(&source))
                .await
                .map_err(|e| {
                    Error::backend(BACKEND, format!("key derivation task failed: {e}"))
                })??;
            if let Some(master) = got {
                info!(repo = %config.id, key = %id, "opened backup repository");
                return Ok(Repository {
                    inner: Arc::new(RepoInner::new(target, layout, master, config, Some(id))),
                });
            }
        }
        Err(Error::invalid(
            "key",
            "wrong key or passphrase: no key file of the repository opens with it",
        ))
    }

    /// Creates, under `prefix` of `target`, a mirror of `existing`: the same
    /// config and key files (so the same master key and passphrases), and no
    /// data yet. Back up to both with a [`MirrorSet`](crate::repo::MirrorSet); fill it with [`sync`](crate::repo::sync).
    ///
    /// # Errors
    /// [`Error::Conflict`] when a repository already exists there; target errors.
    #[instrument(skip_all, fields(prefix = %prefix))]
    pub async fn init_mirror(
        existing: &Repository,
        target: Arc<dyn BackupTarget>,
        prefix: ObjectPrefix,
    ) -> Result<Self> {
        let layout = Layout::new(prefix);
        if target.exists(&layout.config()?).await? {
            return Err(Error::conflict(format!(
                "a repository already exists under {:?}",
                layout.prefix.as_str()
            )));
        }
        let src = &existing.inner;
        let keys = src.target.list_all(&src.layout.keys()?).await?;
        for k in keys {
            let body = src.target.get_bytes(&k.key).await?;
            target
                .put_bytes_if_absent(&layout.key_file(Layout::name_of(&k.key))?, body)
                .await?;
        }
        let config = src.target.get_bytes(&src.layout.config()?).await?;
        target
            .put_bytes_if_absent(&layout.config()?, config)
            .await?;
        info!(repo = %src.config.id, "initialised mirror repository");
        Ok(Repository {
            inner: Arc::new(RepoInner::new(
                target,
                layout,
                src.master.clone(),
                src.config.clone(),
                src.key_id.clone(),
            )),
        })
    }

    /// This handle with a local cache of the repository's index files and
    /// snapshot manifests under `dir` (in `dir/<repository id>/`), so that
    /// an operation downloads only the ones it has not seen. What is cached
    /// is what the target stores, encrypted with the repository's key; a
    /// cached copy is used only while the target still lists the object
    /// with the same size (and checksum, entity tag, version or
    /// modification time, as the target reports them), and only if it
    /// opens with the repository's key. Copies of objects no longer listed
    /// are deleted; a copy that does not open (damaged, or from another
    /// repository) is deleted and the object downloaded instead. The
    /// cache never fails an operation: when it cannot be read or written,
    /// the target is read. `check` and `repair` read the target only.
    ///
    /// Without a cache (the default) a handle still keeps the index it
    /// loaded last in memory, and reuses it while the target lists the
    /// same index files.
    pub fn with_cache_dir(self, dir: impl Into<std::path::PathBuf>) -> Self {
        let dir = dir.into();
        let inner = &self.inner;
        let cache = LocalCache::new(&dir, &inner.config.id);
        if cache.is_none() {
            warn!(repo = %inner.config.id, "the repository id cannot name a cache folder; not caching");
        }
        let mut fresh = RepoInner::new(
            inner.target.clone(),
            inner.layout.clone(),
            inner.master.clone(),
            inner.config.clone(),
            inner.key_id.clone(),
        );
        fresh.cache = cache;
        Repository {
            inner: Arc::new(fresh),
        }
    }

    /// The folder of this repository's local cache, if it has one.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.inner.cache.as_ref().map(LocalCache::root)
    }

    /// The repository's config.
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// The target the repository lives in.
    pub fn target(&self) -> &Arc<dyn BackupTarget> {
        &self.inner.target
    }

    /// The prefix the repository lives under.
    pub fn prefix(&self) -> &ObjectPrefix {
        &self.inner.layout.prefix
    }

    /// A fingerprint of the master key (not the key): equal for mirrors.
    pub fn key_fingerprint(&self) -> String {
        self.inner.master.fingerprint()
    }

    /// The key files.
    ///
    /// # Errors
    /// Target errors; a key file that is not valid JSON.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let files = list_key_files(&*self.inner.target, &self.inner.layout).await?;
        Ok(files
            .into_iter()
            .map(|(id, kf)| KeyInfo {
                current: self.inner.key_id.as_deref() == Some(id.as_str()),
                id,
                kdf: kf.kdf,
                label: kf.label,
                created: kf.created,
            })
            .collect())
    }

    /// Adds a key file wrapping the same master key with `key`, and returns
    /// its id. Nothing else changes: every snapshot stays readable.
    ///
    /// This writes to this repository only; for mirrors use
    /// [`MirrorSet::add_key`](crate::repo::MirrorSet::add_key), which writes the same key file to each.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty passphrase or bad `kdf`; target errors.
    #[instrument(skip_all)]
    pub async fn add_key(&self, key: &KeySource, kdf: KdfParams, label: &str) -> Result<String> {
        let (id, body) = self.new_key_file(key, kdf, label).await?;
        self.put_key_file(&id, body).await?;
        info!(key = %id, label, "added key");
        Ok(id)
    }

    /// A new key file wrapping the master key with `key`: its random id and
    /// its JSON. Key derivation runs on a blocking thread.
    pub(crate) async fn new_key_file(
        &self,
        key: &KeySource,
        kdf: KdfParams,
        label: &str,
    ) -> Result<(String, bytes::Bytes)> {
        let master = self.inner.master.clone();
        let source = key.clone();
        let label2 = label.to_owned();
        let kf = tokio::task::spawn_blocking(move || KeyFile::wrap(&master, &source, kdf, &label2))
            .await
            .map_err(|e| Error::backend(BACKEND, format!("key derivation task failed: {e}")))??;
        let id = format::PackId::random().to_hex();
        let body = serde_json::to_vec_pretty(&kf).map_err(json_err)?;
        Ok((id, body.into()))
    }

    /// Stores the key file `id` (create-if-absent).
    pub(crate) async fn put_key_file(&self, id: &str, body: bytes::Bytes) -> Result<()> {
        self.inner
            .target
            .put_bytes_if_absent(&self.inner.layout.key_file(id)?, body)
            .await?;
        Ok(())
    }

    /// Deletes the key file `id`; one already gone counts as deleted.
    pub(crate) async fn delete_key_file(&self, id: &str) -> Result<()> {
        match self
            .inner
            .target
            .delete(&self.inner.layout.key_file(id)?)
            .await
        {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes the key file `id`, so its passphrase no longer opens the
    /// repository.
    ///
    /// This acts on this repository only: a mirror keeps its copy of the key
    /// file, and the passphrase still opens it. For mirrors use
    /// [`MirrorSet::remove_key`](crate::repo::MirrorSet::remove_key), which removes it from each.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id; [`Error::Precondition`] when it
    /// is the last key file; target errors.
    #[instrument(skip(self))]
    pub async fn remove_key(&self, id: &str) -> Result<()> {
        let keys = self.keys().await?;
        check_removable(&keys, id)?;
        self.delete_key_file(id).await?;
        info!(key = %id, "removed key");
        Ok(())
    }

    /// Every intact snapshot, oldest first. A manifest that cannot be read
    /// (truncated, changed, not decodable) is left out with a warning:
    /// [`snapshot_listing`](Self::snapshot_listing) names those.
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a manifest of a newer
    /// format version, which is not damaged but cannot be read by this build.
    #[instrument(skip(self))]
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let listing = self.snapshot_listing().await?;
        for d in &listing.damaged {
            warn!(manifest = %d.path, damage = %d.damage, reason = %d.reason, "skipping a damaged snapshot manifest");
        }
        Ok(listing.snapshots)
    }

    /// Every snapshot: the intact ones, oldest first, and the manifests
    /// that cannot be read ([`SnapshotListing::damaged`]), with why.
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a manifest of a newer
    /// format version.
    #[instrument(skip(self))]
    pub async fn snapshot_listing(&self) -> Result<SnapshotListing> {
        let metas = self
            .inner
            .target
            .list_all(&self.inner.layout.snapshots()?)
            .await?;
        let cache = self.inner.cache.as_ref();
        let present: std::collections::HashSet<String> = metas
            .iter()
            .map(|m| Layout::name_of(&m.key).to_owned())
            .collect();
        let read: Vec<Option<Opened<Snapshot>>> = futures::stream::iter(metas)
            .map(|m| async move {
                let name = Layout::name_of(&m.key);
                if let Some(c) = cache
                    && let Some(sealed) = c.get(CachedKind::Snapshot, name, &m).await
                {
                    match self.open_document_checked(Document::Snapshot, &m.key, &sealed)? {
                        Opened::Intact(s) => return Ok(Some(Opened::Intact(s))),
                        Opened::Damaged(d) => {
                            warn!(manifest = %d.path, reason = %d.reason, "ignoring a cached manifest that does not open");
                            c.remove(CachedKind::Snapshot, name).await;
                        }
                    }
                }
                let sealed = match self.inner.target.get_bytes(&m.key).await {
                    Ok(b) => b,
                    // Forgotten between the listing and the read.
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let opened = self.open_document_checked(Document::Snapshot, &m.key, &sealed)?;
                if let (Some(c), Opened::Intact(_)) = (cache, &opened) {
                    c.put(CachedKind::Snapshot, name, &m, sealed).await;
                }
                Ok(Some(opened))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        if let Some(c) = cache {
            c.retain(CachedKind::Snapshot, present).await;
        }
        let mut listing = SnapshotListing::default();
        for r in read.into_iter().flatten() {
            match r {
                Opened::Intact(s) => listing.snapshots.push(s),
                Opened::Damaged(d) => listing.damaged.push(d),
            }
        }
        listing
            .snapshots
            .sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        listing.damaged.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(listing)
    }

    /// The snapshot with the id `id`, or the only one whose id starts with
    /// `id` (at least 4 hex digits), or the newest one for `latest`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when none matches; [`Error::InvalidInput`] when
    /// the prefix is ambiguous or too short.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot> {
        if let Ok(full) = id.parse::<SnapshotId>() {
            return self
                .read_snapshot_key(&self.inner.layout.snapshot(&full)?)
                .await
                .map_err(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        Error::not_found(format!("snapshot {id}"))
                    } else {
                        e
                    }
                });
        }
        let all = self.snapshots().await?;
        if id == "latest" {
            return all.into_iter().next_back().ok_or_else(|| {
                Error::not_found("snapshot latest: the repository has no snapshot")
            });
        }
        if id.len() < 4 {
            return Err(Error::invalid("snapshot_id", "give at least 4 hex digits"));
        }
        let mut matching: Vec<Snapshot> = all
            .into_iter()
            .filter(|s| s.id.to_hex().starts_with(id))
            .collect();
        match matching.len() {
            0 => Err(Error::not_found(format!("snapshot {id}"))),
            1 => Ok(matching.remove(0)),
            n => Err(Error::invalid(
                "snapshot_id",
                format!("{id:?} matches {n} snapshots"),
            )),
        }
    }

    pub(crate) async fn read_snapshot_key(&self, key: &ObjectKey) -> Result<Snapshot> {
        let sealed = self.inner.target.get_bytes(key).await?;
        self.open_document(Document::Snapshot, key, &sealed)
    }

    /// Reads the manifest at `key`: `None` when it is gone (forgotten
    /// between a listing and the read).
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a newer format version.
    pub(crate) async fn read_manifest(&self, key: &ObjectKey) -> Result<Option<Opened<Snapshot>>> {
        let sealed = match self.inner.target.get_bytes(key).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        self.open_document_checked(Document::Snapshot, key, &sealed)
            .map(Some)
    }

    /// Decrypts the document `doc` read from `key` and decodes it after
    /// checking its format version.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the document when it does not decrypt or
    /// decode, with an [`IntegrityError`](crate::repo::IntegrityError) naming
    /// the object as its source; [`Error::Precondition`] for a newer major
    /// version.
    pub(crate) fn open_document<T: serde::de::DeserializeOwned>(
        &self,
        doc: Document,
        key: &ObjectKey,
        sealed: &[u8],
    ) -> Result<T> {
        match self.open_document_checked(doc, key, sealed)? {
            Opened::Intact(v) => Ok(v),
            Opened::Damaged(d) => Err(d.into_error(doc, key)),
        }
    }

    /// As [`open_document`](Self::open_document), with damage as a value:
    /// only a newer format version (which is not damage) is an error.
    pub(crate) fn open_document_checked<T: serde::de::DeserializeOwned>(
        &self,
        doc: Document,
        key: &ObjectKey,
        sealed: &[u8],
    ) -> Result<Opened<T>> {
        let path = self.inner.layout.path_of(key);
        let plain = match self
            .inner
            .master
            .open_file_checked(doc.seal_label(), sealed)
        {
            Ok(p) => p,
            Err(fault) => return Ok(Opened::Damaged(DamagedFile::of_fault(path, &fault))),
        };
        let what = format!("{} {key}", doc.noun());
        match version::decode(doc, &what, &plain) {
            Ok(v) => Ok(Opened::Intact(v)),
            Err(e) if e.kind() == ErrorKind::Precondition => Err(e),
            Err(e) => {
                let text = e.to_string();
                let reason = text
                    .split_once(&format!("{what}: "))
                    .map_or(text.as_str(), |(_, r)| r)
                    .to_owned();
                Ok(Opened::Damaged(DamagedFile {
                    path,
                    damage: DocumentDamage::Unparsable,
                    reason,
                }))
            }
        }
    }

    /// Encrypts `value` as the document `doc`, with its format version, and
    /// stores it at `key` (`create`: only if absent).
    pub(crate) async fn write_file(
        &self,
        key: &ObjectKey,
        doc: Document,
        value: &impl serde::Serialize,
        create: bool,
    ) -> Result<()> {
        let sealed = self
            .inner
            .master
            .seal_json(doc.seal_label(), &version::versioned(doc, value))?;
        self.put_sealed_bytes(key, sealed, create).await
    }

    /// The decrypted JSON of the encrypted document `name` (a path inside
    /// the repository: `snapshots/<id>`, `index/<name>` or `locks/<name>`).
    /// For tests of the format's compatibility rules; not a stable API.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name outside those folders; target
    /// errors; [`Error::Backend`] when it does not decrypt.
    #[doc(hidden)]
    pub async fn read_raw_document(&self, name: &str) -> Result<Vec<u8>> {
        let (doc, key) = self.raw_document(name)?;
        let sealed = self.inner.target.get_bytes(&key).await?;
        self.inner
            .master
            .open_file(doc.seal_label(), &format!("{} {key}", doc.noun()), &sealed)
    }

    /// Encrypts `json` as the repository does and stores it as the document
    /// `name` (as [`read_raw_document`](Self::read_raw_document)), replacing
    /// it. Nothing is checked: for tests that plant documents written by
    /// other versions; not a stable API.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name outside those folders; target errors.
    #[doc(hidden)]
    pub async fn write_raw_document(&self, name: &str, json: &[u8]) -> Result<()> {
        let (doc, key) = self.raw_document(name)?;
        self.put_sealed(&key, doc, json, false).await
    }

    fn raw_document(&self, name: &str) -> Result<(Document, ObjectKey)> {
        let doc = match name.split('/').next() {
            Some("snapshots") => Document::Snapshot,
            Some("index") => Document::Index,
            Some("locks") => Document::Lock,
            _ => {
                return Err(Error::invalid(
                    "name",
                    "must name a document under snapshots/, index/ or locks/",
                ));
            }
        };
        Ok((doc, self.inner.layout.prefix.key(name)?))
    }

    async fn put_sealed(
        &self,
        key: &ObjectKey,
        doc: Document,
        json: &[u8],
        create: bool,
    ) -> Result<()> {
        let sealed = self.inner.master.seal_file(doc.seal_label(), json);
        self.put_sealed_bytes(key, sealed, create).await
    }

    async fn put_sealed_bytes(&self, key: &ObjectKey, sealed: Vec<u8>, create: bool) -> Result<()> {
        if create {
            self.inner
                .target
                .put_bytes_if_absent(key, sealed.into())
                .await?;
        } else {
            self.inner.target.put_bytes(key, sealed.into()).await?;
        }
        Ok(())
    }
}

/// Checks that the key file `id` is in `keys` and not the last one.
pub(crate) fn check_removable(keys: &[KeyInfo], id: &str) -> Result<()> {
    if !keys.iter().any(|k| k.id == id) {
        return Err(Error::not_found(format!("key {id:?}")));
    }
    if keys.len() == 1 {
        return Err(Error::precondition(
            "refusing to remove the last key: the repository would be unreadable",
        ));
    }
    Ok(())
}

async fn read_config(target: &dyn BackupTarget, layout: &Layout) -> Result<RepoConfig> {
    let bytes = match target.get_bytes(&layout.config()?).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "backup repository under {:?} (no config)",
                layout.prefix.as_str()
            )));
        }
        Err(e) => return Err(e),
    };
    let what = format!("repository config {}", layout.config()?);
    let config: RepoConfig = version::decode(Document::Config, &what, &bytes)?;
    if config.format != FORMAT_NAME {
        return Err(Error::backend(
            BACKEND,
            format!(
                "{what}: repository format {:?} is not supported (expected {FORMAT_NAME})",
                config.format
            ),
        ));
    }
    config.chunker.validate()?;
    Ok(config)
}

async fn list_key_files(
    target: &dyn BackupTarget,
    layout: &Layout,
) -> Result<Vec<(String, KeyFile)>> {
    let metas = target.list_all(&layout.keys()?).await?;
    let mut out = Vec::new();
    for m in metas {
        let body = target.get_bytes(&m.key).await?;
        let kf: KeyFile =
            version::decode(Document::KeyFile, &format!("key file {}", m.key), &body)?;
        out.push((Layout::name_of(&m.key).to_owned(), kf));
    }
    Ok(out)
}
