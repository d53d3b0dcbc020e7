//! The backup repository engine: deduplicated, compressed, encrypted
//! snapshots of directory trees and byte streams, stored in any
//! [`BackupTarget`].
//!
//! A [`Repository`] lives under a prefix of a target. Content is cut into
//! chunks by FastCDC (about 1 MiB on average), each chunk is identified by a
//! keyed BLAKE3 hash, compressed with zstd and encrypted with
//! XChaCha20-Poly1305, and chunks are grouped into pack files of about
//! 16 MiB. Directory listings are stored as tree blobs; a snapshot manifest
//! names the root tree and carries what listing and retention need. The byte
//! format is specified in `atlas-backup/docs/backup-format.md`.
//!
//! A snapshot becomes visible only when its manifest is written, last, with
//! a conditional create: an interrupted backup leaves only packs and indexes
//! nobody references, which [`Repository::prune`] removes.
//!
//! ```no_run
//! # async fn demo(target: std::sync::Arc<dyn atlas_core::backup::BackupTarget>) -> atlas_core::Result<()> {
//! use atlas_core::backup::ObjectPrefix;
//! use atlas_backup::repo::{
//!     BackupOptions, DirectorySource, InitOptions, KeySource, Repository, RestoreOptions,
//! };
//! let repo = Repository::init(
//!     target,
//!     ObjectPrefix::new("backups/db1/")?,
//!     &KeySource::passphrase("correct horse"),
//!     InitOptions::default(),
//! )
//! .await?;
//! let report = repo
//!     .backup(DirectorySource::new("/var/lib/app"), BackupOptions::default().with_tag("nightly"))
//!     .await?;
//! println!("snapshot {} ({} new bytes)", report.snapshot.id, report.snapshot.totals.new_bytes);
//! repo.restore(&report.snapshot.id.to_hex(), "/tmp/restore", RestoreOptions::default()).await?;
//! # Ok(()) }
//! ```

mod backup;
mod check;
mod chunker;
mod crypto;
mod format;
mod index;
mod lock;
mod mirror;
mod pool;
mod progress;
mod prune;
mod restore;

use std::fmt;
use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};
use tracing::{info, instrument};

pub use backup::{
    BackupOptions, BackupReport, BackupSource, DirectorySource, SourceInput, StreamSource,
};
pub use check::{CheckOptions, CheckProblem, CheckReport, ReadDataSubset};
pub use crypto::{KdfParams, KeySource};
pub use format::{
    BackupKind, BlobId, BlobKind, ChunkerParams, MAX_RECORDED_UNREADABLE, Node, NodeKind, PackId,
    RepoConfig, RootMetadata, SkippedEntry, Snapshot, SnapshotId, SnapshotTotals, Tree,
};
pub use lock::{LockGuard, LockInfo};
pub use mirror::{
    KeyChangeReport, MirrorKeyInfo, MirrorPolicy, MirrorReport, MirrorSet, SyncReport,
    TargetOutcome, sync,
};
pub use progress::{Progress, ProgressFn, progress_channel};
pub use prune::{PruneOptions, PruneReport};
pub use restore::{RestoreOptions, RestoreReport};

use atlas_core::backup::{BackupTarget, BackupTargetExt, ByteRange, ObjectKey, ObjectPrefix};
use atlas_core::error::{Error, ErrorKind, Result};
use crypto::{KeyFile, MasterKey};
use format::{FORMAT_NAME, FORMAT_VERSION};
use index::Index;

/// The backend name in errors raised by the repository engine itself.
pub(crate) const BACKEND: &str = "backup-repo";

/// A corrupted or missing piece of a repository, attached as the `source`
/// of the [`Error::Backend`] that reports it, so that callers can tell
/// exactly what broke: `err.source().and_then(|s| s.downcast_ref::<IntegrityError>())`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntegrityError {
    /// The snapshot being read, if any.
    pub snapshot: Option<SnapshotId>,
    /// The file path inside the snapshot, if any.
    pub path: Option<String>,
    /// The pack holding the bad blob, if known.
    pub pack: Option<PackId>,
    /// The blob, if the problem is one blob.
    pub blob: Option<BlobId>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.snapshot {
            write!(f, "snapshot {}: ", s.short())?;
        }
        if let Some(p) = &self.path {
            write!(f, "file {p:?}: ")?;
        }
        if let Some(b) = &self.blob {
            write!(f, "blob {b}")?;
            if let Some(p) = &self.pack {
                write!(f, " in pack {p}")?;
            }
            f.write_str(": ")?;
        } else if let Some(p) = &self.pack {
            write!(f, "pack {p}: ")?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for IntegrityError {}

impl IntegrityError {
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        IntegrityError {
            snapshot: None,
            path: None,
            pack: None,
            blob: None,
            problem: problem.into(),
        }
    }

    pub(crate) fn into_error(self) -> Error {
        Error::backend_with(BACKEND, self.to_string(), self)
    }
}

/// The [`IntegrityError`] inside `err`, if it reports one.
pub fn integrity_error(err: &Error) -> Option<&IntegrityError> {
    std::error::Error::source(err).and_then(|s| s.downcast_ref::<IntegrityError>())
}

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
    /// beyond it on typical backup data, its cost a lot).
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

/// Object names inside a repository's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: ObjectPrefix,
}

impl Layout {
    fn new(prefix: ObjectPrefix) -> Self {
        Layout { prefix }
    }
    fn sub(&self, rest: &str) -> Result<ObjectPrefix> {
        ObjectPrefix::new(format!("{}{}", self.prefix.as_str(), rest))
    }
    pub(crate) fn config(&self) -> Result<ObjectKey> {
        self.prefix.key("config")
    }
    pub(crate) fn keys(&self) -> Result<ObjectPrefix> {
        self.sub("keys/")
    }
    pub(crate) fn key_file(&self, id: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("keys/{id}"))
    }
    pub(crate) fn data(&self) -> Result<ObjectPrefix> {
        self.sub("data/")
    }
    pub(crate) fn pack(&self, id: &PackId) -> Result<ObjectKey> {
        let hex = id.to_hex();
        self.prefix.key(&format!("data/{}/{}", &hex[..2], hex))
    }
    pub(crate) fn indexes(&self) -> Result<ObjectPrefix> {
        self.sub("index/")
    }
    pub(crate) fn index(&self, name: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("index/{name}"))
    }
    pub(crate) fn snapshots(&self) -> Result<ObjectPrefix> {
        self.sub("snapshots/")
    }
    pub(crate) fn snapshot(&self, id: &SnapshotId) -> Result<ObjectKey> {
        self.prefix.key(&format!("snapshots/{id}"))
    }
    pub(crate) fn locks(&self) -> Result<ObjectPrefix> {
        self.sub("locks/")
    }
    pub(crate) fn lock(&self, name: &str) -> Result<ObjectKey> {
        self.prefix.key(&format!("locks/{name}"))
    }
    /// The last segment of `key` (the id of a key file, index, snapshot…).
    pub(crate) fn name_of(key: &ObjectKey) -> &str {
        key.as_str().rsplit('/').next().unwrap_or_default()
    }
}

pub(crate) struct RepoInner {
    pub(crate) target: Arc<dyn BackupTarget>,
    pub(crate) layout: Layout,
    pub(crate) master: MasterKey,
    pub(crate) config: RepoConfig,
    pub(crate) key_id: Option<String>,
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
            version: FORMAT_VERSION,
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
            inner: Arc::new(RepoInner {
                target,
                layout,
                master,
                config,
                key_id: Some(key_id),
            }),
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
                    inner: Arc::new(RepoInner {
                        target,
                        layout,
                        master,
                        config,
                        key_id: Some(id),
                    }),
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
    /// data yet. Back up to both with a [`MirrorSet`]; fill it with [`sync`].
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
            inner: Arc::new(RepoInner {
                target,
                layout,
                master: src.master.clone(),
                config: src.config.clone(),
                key_id: src.key_id.clone(),
            }),
        })
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
    /// [`MirrorSet::add_key`], which writes the same key file to each.
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
    /// [`MirrorSet::remove_key`], which removes it from each.
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

    /// Every snapshot, oldest first.
    ///
    /// # Errors
    /// Target errors; a manifest that does not decrypt or decode
    /// ([`Error::Backend`] naming it).
    #[instrument(skip(self))]
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let metas = self
            .inner
            .target
            .list_all(&self.inner.layout.snapshots()?)
            .await?;
        let mut out: Vec<Snapshot> = futures::stream::iter(metas)
            .map(|m| async move { self.read_snapshot_key(&m.key).await })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
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

    async fn read_snapshot_key(&self, key: &ObjectKey) -> Result<Snapshot> {
        let sealed = self.inner.target.get_bytes(key).await?;
        let what = format!("snapshot manifest {key}");
        let plain = self.inner.master.open_file("snapshot", &what, &sealed)?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::backend(BACKEND, format!("{what}: not a valid manifest: {e}")))
    }

    pub(crate) async fn load_index(&self) -> Result<Index> {
        Index::load(self).await
    }

    /// Reads, decrypts and verifies one blob.
    pub(crate) async fn read_blob(
        &self,
        index: &Index,
        kind: BlobKind,
        id: &BlobId,
    ) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| {
            let mut e = IntegrityError::new("is not in the index (missing)");
            e.blob = Some(*id);
            e.into_error()
        })?;
        let pack = index.pack_id(loc.pack);
        let range = ByteRange::new(
            u64::from(loc.offset),
            u64::from(loc.offset) + u64::from(loc.length),
        )?;
        let sealed = self
            .inner
            .target
            .get_range(&self.inner.layout.pack(&pack)?, range)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    let mut ie = IntegrityError::new("its pack is missing");
                    ie.blob = Some(*id);
                    ie.pack = Some(pack);
                    ie.into_error()
                } else {
                    e
                }
            })?
            .bytes()
            .await?;
        let master = self.inner.master.clone();
        let id2 = *id;
        let raw = loc.raw_length;
        tokio::task::spawn_blocking(move || master.decode_blob(kind, &id2, raw, &sealed))
            .await
            .map_err(|e| Error::backend(BACKEND, format!("decode task failed: {e}")))?
            .map_err(|fault| {
                let mut ie = IntegrityError::new(fault.to_string());
                ie.blob = Some(*id);
                ie.pack = Some(pack);
                ie.into_error()
            })
    }

    /// Reads a tree blob.
    ///
    /// # Errors
    /// As [`read_blob`](Self::read_blob); [`Error::Backend`] when it is not a tree.
    pub(crate) async fn read_tree(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        let plain = self.read_blob(index, BlobKind::Tree, id).await?;
        serde_json::from_slice(&plain).map_err(|e| {
            let mut ie = IntegrityError::new(format!("is not a valid tree: {e}"));
            ie.blob = Some(*id);
            ie.into_error()
        })
    }

    /// The directory listing of `path` (`""` or `/` for the root) in a snapshot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the path does not exist or is not a directory.
    pub async fn list_dir(&self, snapshot: &Snapshot, path: &str) -> Result<Tree> {
        let index = self.load_index().await?;
        let mut tree = self.read_tree(&index, &snapshot.tree).await?;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            let node = tree
                .nodes
                .iter()
                .find(|n| n.name == seg && n.kind == NodeKind::Dir)
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "directory {path:?} in snapshot {}",
                        snapshot.id.short()
                    ))
                })?;
            let sub = node
                .subtree
                .ok_or_else(|| Error::backend(BACKEND, "directory node without subtree"))?;
            tree = self.read_tree(&index, &sub).await?;
        }
        Ok(tree)
    }

    pub(crate) async fn write_file(
        &self,
        key: &ObjectKey,
        kind: &str,
        value: &impl serde::Serialize,
        create: bool,
    ) -> Result<()> {
        let json = serde_json::to_vec(value).map_err(json_err)?;
        let sealed = self.inner.master.seal_file(kind, &json);
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

pub(crate) fn json_err(e: serde_json::Error) -> Error {
    Error::backend(BACKEND, format!("JSON encoding failed: {e}"))
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
    let config: RepoConfig = serde_json::from_slice(&bytes)
        .map_err(|e| Error::backend(BACKEND, format!("repository config is not valid: {e}")))?;
    if config.format != FORMAT_NAME || config.version != FORMAT_VERSION {
        return Err(Error::backend(
            BACKEND,
            format!(
                "repository format {} v{} is not supported (expected {FORMAT_NAME} v{FORMAT_VERSION})",
                config.format, config.version
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
        let kf: KeyFile = serde_json::from_slice(&body).map_err(|e| {
            Error::backend(BACKEND, format!("key file {} is not valid: {e}", m.key))
        })?;
        out.push((Layout::name_of(&m.key).to_owned(), kf));
    }
    Ok(out)
}
