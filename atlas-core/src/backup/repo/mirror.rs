//! One backup written to several repositories (mirrors sharing a master key),
//! and `sync` of a lagging mirror.

use std::collections::HashSet;
use std::fmt;

use futures::stream::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span};

use super::backup::{BackupOptions, BackupSource, run_backup};
use super::format::{IndexPack, PackId, Snapshot};
use super::index::write_index;
use super::progress::{ProgressFn, Tracker};
use super::{BACKEND, Layout, Repository};
use crate::backup::{BackupTargetExt, PutOptions};
use crate::error::{Error, ErrorKind, Result};

/// How many targets of a mirror set must commit for a backup to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorPolicy {
    /// Every target.
    All,
    /// At least this many targets (1 ≤ n ≤ number of targets).
    Quorum(usize),
}

impl MirrorPolicy {
    pub(crate) fn required(self, targets: usize) -> Result<usize> {
        match self {
            MirrorPolicy::All => Ok(targets),
            MirrorPolicy::Quorum(n) if n >= 1 && n <= targets => Ok(n),
            MirrorPolicy::Quorum(n) => Err(Error::invalid(
                "policy",
                format!("quorum must be between 1 and {targets}, got {n}"),
            )),
        }
    }
}

/// What happened on one target of a mirrored backup.
#[non_exhaustive]
pub struct TargetOutcome {
    /// The target (its Debug form).
    pub target: String,
    /// The repository prefix on it.
    pub prefix: String,
    /// `None` when the snapshot was committed there, else why not.
    pub error: Option<Error>,
}

impl fmt::Debug for TargetOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetOutcome")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("error", &self.error.as_ref().map(ToString::to_string))
            .finish()
    }
}

/// The result of a mirrored backup that met its policy.
#[derive(Debug)]
#[non_exhaustive]
pub struct MirrorReport {
    /// The snapshot (same id on every target that committed it).
    pub snapshot: Snapshot,
    /// One outcome per target, in the order of the set.
    pub targets: Vec<TargetOutcome>,
}

/// Repositories that mirror each other: same config and master key (create
/// the others with [`Repository::init_mirror`]).
#[derive(Debug, Clone)]
pub struct MirrorSet {
    repos: Vec<Repository>,
    policy: MirrorPolicy,
}

impl MirrorSet {
    /// A set of `repos` under `policy`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `repos` is empty, the policy cannot be
    /// met, or the repositories do not share a repository id and master key.
    pub fn new(repos: Vec<Repository>, policy: MirrorPolicy) -> Result<Self> {
        let first = repos
            .first()
            .ok_or_else(|| Error::invalid("targets", "at least one repository is needed"))?;
        policy.required(repos.len())?;
        for (i, r) in repos.iter().enumerate() {
            if r.config().id != first.config().id || r.key_fingerprint() != first.key_fingerprint()
            {
                return Err(Error::invalid(
                    format!("targets[{i}]"),
                    "is not a mirror of targets[0] (different repository id or master key); create it with Repository::init_mirror",
                ));
            }
        }
        Ok(MirrorSet { repos, policy })
    }

    /// The repositories.
    pub fn repositories(&self) -> &[Repository] {
        &self.repos
    }

    /// Backs `source` up once, uploading every pack to each target and
    /// committing the manifest on each independently. A target that fails
    /// is dropped from the rest of the run.
    ///
    /// # Errors
    /// [`Error::Backend`] listing each failed target when fewer targets than
    /// the policy requires committed (no manifest is written anywhere when
    /// that is known before the commit); source errors as
    /// [`Repository::backup`].
    pub async fn backup(
        &self,
        source: impl BackupSource + 'static,
        options: BackupOptions,
    ) -> Result<MirrorReport> {
        let (snapshot, targets) =
            run_backup(&self.repos, self.policy, Box::new(source), options).await?;
        Ok(MirrorReport { snapshot, targets })
    }
}

/// What [`sync`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Packs copied.
    pub packs: u64,
    /// Bytes of packs copied.
    pub bytes: u64,
    /// Snapshots copied.
    pub snapshots: u64,
}

/// Copies to `to` whatever packs and snapshots of `from` it lacks: packs
/// first, then one index file for them, then the snapshot manifests (each
/// with a conditional create), so a sync that stops midway leaves nothing
/// half-visible. Takes a shared lock on both.
///
/// # Errors
/// [`Error::InvalidInput`] when `to` is not a mirror of `from`; target errors.
pub async fn sync(
    from: &Repository,
    to: &Repository,
    progress: Option<ProgressFn>,
) -> Result<SyncReport> {
    if from.config().id != to.config().id || from.key_fingerprint() != to.key_fingerprint() {
        return Err(Error::invalid(
            "to",
            "is not a mirror of the source repository (different id or master key)",
        ));
    }
    let span = info_span!("sync");
    async move {
        let lock_from = from.lock(false, "sync (source)").await?;
        let lock_to = match to.lock(false, "sync").await {
            Ok(l) => l,
            Err(e) => {
                lock_from.release().await;
                return Err(e);
            }
        };
        let result = sync_locked(from, to, progress).await;
        lock_to.release().await;
        lock_from.release().await;
        result
    }
    .instrument(span)
    .await
}

async fn sync_locked(
    from: &Repository,
    to: &Repository,
    progress: Option<ProgressFn>,
) -> Result<SyncReport> {
    let tracker = Tracker::new("sync", progress);
    let src_index = from.load_index().await?;
    let present: HashSet<PackId> = to
        .inner
        .target
        .list_all(&to.inner.layout.data()?)
        .await?
        .iter()
        .filter_map(|m| Layout::name_of(&m.key).parse().ok())
        .collect();
    let dst_index = to.load_index().await?;
    let missing: Vec<IndexPack> = src_index
        .by_pack()
        .into_iter()
        .filter(|p| !present.contains(&p.id) || !dst_index.has_pack(&p.id))
        .collect();
    tracker.update(|p| {
        p.files_total = Some(missing.len() as u64);
        p.bytes_total = Some(missing.iter().map(|p| p.size).sum());
    });
    let mut report = SyncReport::default();
    let copied: Vec<IndexPack> = futures::stream::iter(missing)
        .map(|p| {
            let tracker = &tracker;
            let present = &present;
            async move {
                if !present.contains(&p.id) {
                    let key_from = from.inner.layout.pack(&p.id)?;
                    let key_to = to.inner.layout.pack(&p.id)?;
                    tracker.update(|pr| pr.current = Some(p.id.to_hex()));
                    let got = from.inner.target.get(&key_from).await?;
                    match to
                        .inner
                        .target
                        .put_opts(&key_to, got.body, PutOptions::create())
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Conflict => {}
                        Err(e) => return Err(e),
                    }
                }
                tracker.update(|pr| {
                    pr.files_done += 1;
                    pr.bytes_done += p.size;
                    pr.bytes_read += p.size;
                });
                Ok::<_, Error>(p)
            }
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    report.packs = copied.len() as u64;
    report.bytes = copied.iter().map(|p| p.size).sum();
    if !copied.is_empty() {
        write_index(to, copied, Vec::new()).await?;
    }
    let have: HashSet<_> = to.snapshots().await?.into_iter().map(|s| s.id).collect();
    for s in from.snapshots().await? {
        if have.contains(&s.id) {
            continue;
        }
        let key_from = from.inner.layout.snapshot(&s.id)?;
        let body = from.inner.target.get_bytes(&key_from).await?;
        match to
            .inner
            .target
            .put_bytes_if_absent(&to.inner.layout.snapshot(&s.id)?, body)
            .await
        {
            Ok(_) => report.snapshots += 1,
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("copying snapshot {}: {e}", s.id.short()),
                ));
            }
        }
    }
    info!(
        packs = report.packs,
        bytes = report.bytes,
        snapshots = report.snapshots,
        "sync finished"
    );
    Ok(report)
}
