//! One backup written to several repositories (mirrors sharing a master key),
//! and `sync` of a lagging mirror.

use std::collections::HashSet;

use futures::stream::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span, instrument, warn};

use super::backup::{BackupOptions, BackupRun, BackupSource, run_backup};
use super::crypto::{KdfParams, KeySource};
use super::error::BACKEND;
use super::format::{IndexPack, PackId, SkippedEntry, Snapshot};
use super::index::write_index;
use super::layout::Layout;
use super::policy::{MirrorPolicy, TargetOutcome, outcome};
use super::progress::{ProgressFn, Tracker};
use super::repository::{KeyInfo, Repository, check_removable};
use atlas_core::backup::{BackupTargetExt, PutOptions};
use atlas_core::error::{Error, ErrorKind, Result};

/// The result of a mirrored backup that met its policy.
#[derive(Debug)]
#[non_exhaustive]
pub struct MirrorReport {
    /// The snapshot (same id on every target that committed it).
    pub snapshot: Snapshot,
    /// One outcome per target, in the order of the set.
    pub targets: Vec<TargetOutcome>,
    /// Every entry left out because it could not be read, sorted by path
    /// (as [`BackupReport::unreadable`](super::backup::BackupReport::unreadable)).
    pub unreadable: Vec<SkippedEntry>,
}

/// The result of [`MirrorSet::add_key`] or [`MirrorSet::remove_key`] that
/// met the set's policy.
#[derive(Debug)]
#[non_exhaustive]
pub struct KeyChangeReport {
    /// The key file's id (the same on every mirror).
    pub id: String,
    /// One outcome per target, in the order of the set: `error` is `None`
    /// where the key file was added, or removed (or was already absent).
    pub targets: Vec<TargetOutcome>,
}

/// A key file of a mirror set, as [`MirrorSet::keys`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorKeyInfo {
    /// The key file (as the first mirror holding it lists it).
    pub key: KeyInfo,
    /// The positions, in the set, of the mirrors holding it: all of them
    /// unless a key change met a quorum only.
    pub mirrors: Vec<usize>,
}

/// The error of a key change that met its policy on `ok` targets only.
fn key_policy_error(what: &str, targets: &mut [TargetOutcome], required: usize) -> Error {
    // One target: its own error, with its own kind.
    if let [only] = targets
        && let Some(e) = only.error.take()
    {
        return e;
    }
    let ok = targets.iter().filter(|t| t.error.is_none()).count();
    let failed: Vec<String> = targets
        .iter()
        .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.target)))
        .collect();
    Error::backend(
        BACKEND,
        format!(
            "{what} succeeded on {ok} of {} targets, {required} required: {}",
            targets.len(),
            failed.join("; ")
        ),
    )
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
        let BackupRun {
            snapshot,
            targets,
            unreadable,
            ..
        } = run_backup(&self.repos, self.policy, Box::new(source), options).await?;
        Ok(MirrorReport {
            snapshot,
            targets,
            unreadable,
        })
    }

    /// The key files of every mirror, merged by id (in the order the
    /// mirrors list them), each with the mirrors that hold it.
    ///
    /// # Errors
    /// The first target error: a listing needs every mirror.
    pub async fn keys(&self) -> Result<Vec<MirrorKeyInfo>> {
        let listings = futures::future::try_join_all(self.repos.iter().map(|r| r.keys())).await?;
        let mut out: Vec<MirrorKeyInfo> = Vec::new();
        for (i, keys) in listings.into_iter().enumerate() {
            for key in keys {
                match out.iter_mut().find(|m| m.key.id == key.id) {
                    Some(m) => m.mirrors.push(i),
                    None => out.push(MirrorKeyInfo {
                        key,
                        mirrors: vec![i],
                    }),
                }
            }
        }
        Ok(out)
    }

    /// Adds one key file wrapping the master key with `key` to every mirror
    /// (same id and bytes everywhere, as [`Repository::init_mirror`] copies
    /// them), and returns its id with each mirror's outcome.
    ///
    /// When fewer mirrors than the policy requires took it, it is deleted
    /// again from those that did (best effort), so a retry starts clean.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty passphrase or bad `kdf`;
    /// [`Error::Backend`] naming each failed target when the policy is not
    /// met (with one target, that target's own error).
    #[instrument(skip_all, fields(label = %label, targets = self.repos.len()))]
    pub async fn add_key(
        &self,
        key: &KeySource,
        kdf: KdfParams,
        label: &str,
    ) -> Result<KeyChangeReport> {
        let required = self.policy.required(self.repos.len())?;
        let first = self
            .repos
            .first()
            .ok_or_else(|| Error::invalid("targets", "at least one repository is needed"))?;
        let (id, body) = first.new_key_file(key, kdf, label).await?;
        let results =
            futures::future::join_all(self.repos.iter().map(|r| r.put_key_file(&id, body.clone())))
                .await;
        let mut targets: Vec<TargetOutcome> = self
            .repos
            .iter()
            .zip(results)
            .map(|(r, res)| outcome(r, res.err()))
            .collect();
        let ok = targets.iter().filter(|t| t.error.is_none()).count();
        if ok < required {
            for (r, t) in self.repos.iter().zip(&targets) {
                if t.error.is_none()
                    && let Err(e) = r.delete_key_file(&id).await
                {
                    warn!(key = %id, target = %t.target, error = %e, "cannot roll back a key file added to too few mirrors");
                }
            }
            return Err(key_policy_error(
                &format!("adding key {id}"),
                &mut targets,
                required,
            ));
        }
        info!(key = %id, label, added = ok, "added key to the mirrors");
        Ok(KeyChangeReport { id, targets })
    }

    /// Removes the key file `id` from every mirror, so its passphrase opens
    /// none of them. Every mirror that answers is checked first: nothing is
    /// deleted when `id` is on none of them or is the last key file of any.
    /// A mirror that no longer has it counts as done, so retrying after a
    /// partial failure finishes the job.
    ///
    /// Under [`MirrorPolicy::Quorum`], the mirrors that failed keep the key
    /// file (and open with its passphrase) until removed there; the report
    /// and [`MirrorSet::keys`] say where it remains.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no mirror that answered holds `id`;
    /// [`Error::Precondition`] (naming the mirror) when it is a mirror's
    /// last key file; [`Error::Backend`] naming each failed target when
    /// fewer mirrors than the policy requires could be listed (nothing is
    /// deleted then) or deleted it (with one target, that target's own
    /// error).
    #[instrument(skip(self), fields(targets = self.repos.len()))]
    pub async fn remove_key(&self, id: &str) -> Result<KeyChangeReport> {
        let required = self.policy.required(self.repos.len())?;
        let listings = futures::future::join_all(self.repos.iter().map(|r| r.keys())).await;
        let mut holds = vec![false; self.repos.len()];
        let mut errors: Vec<Option<Error>> = Vec::with_capacity(self.repos.len());
        for (i, (repo, listing)) in self.repos.iter().zip(listings).enumerate() {
            match listing {
                Ok(keys) => {
                    if keys.iter().any(|k| k.id == id) {
                        check_removable(&keys, id).map_err(|e| {
                            Error::precondition(format!(
                                "mirror {i} ({:?}): {e}",
                                repo.inner.target
                            ))
                        })?;
                        holds[i] = true;
                    }
                    errors.push(None);
                }
                Err(e) => errors.push(Some(e)),
            }
        }
        let answered = errors.iter().filter(|e| e.is_none()).count();
        if answered < required {
            // Known before anything is deleted: delete nothing.
            let mut targets: Vec<TargetOutcome> = self
                .repos
                .iter()
                .zip(errors)
                .map(|(r, e)| outcome(r, e))
                .collect();
            return Err(key_policy_error(
                &format!("removing key {id}"),
                &mut targets,
                required,
            ));
        }
        if !holds.contains(&true) {
            return Err(Error::not_found(format!("key {id:?} on any mirror")));
        }
        let deletions =
            futures::future::join_all(self.repos.iter().zip(&holds).map(|(r, holds)| async move {
                if *holds {
                    r.delete_key_file(id).await
                } else {
                    Ok(())
                }
            }))
            .await;
        let mut targets: Vec<TargetOutcome> = self
            .repos
            .iter()
            .zip(errors)
            .zip(deletions)
            .map(|((r, listed), deleted)| outcome(r, listed.or(deleted.err())))
            .collect();
        let ok = targets.iter().filter(|t| t.error.is_none()).count();
        if ok < required {
            return Err(key_policy_error(
                &format!("removing key {id}"),
                &mut targets,
                required,
            ));
        }
        info!(key = %id, removed = ok, "removed key from the mirrors");
        Ok(KeyChangeReport {
            id: id.to_owned(),
            targets,
        })
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
        write_index(to, &copied, &[]).await?;
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
