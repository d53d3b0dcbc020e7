//! Repository locks: shared for backups (and sync, forget), exclusive for
//! prune. Lock objects are created with a conditional put, carry their holder
//! and an expiry, and are refreshed while held.

use std::fmt;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};

use super::damage::Opened;
use super::format::{LockFile, PackId};
use super::host::default_host;
use super::layout::Layout;
use super::platform::process_has_ended;
use super::repository::Repository;
use super::version::Document;
use atlas_core::backup::{BackupTargetExt, ObjectKey};
use atlas_core::error::{Error, ErrorKind, Result};

/// How long a lock lives without a refresh. A holder refreshes it every
/// third of this, so an expired lock means its holder stopped (crashed or
/// was cut off) at least 20 minutes ago.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// A lock found in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock object's id.
    pub id: String,
    /// Exclusive (prune) or shared (backup, sync, forget).
    pub exclusive: bool,
    /// Who holds it: `host pid action`.
    pub holder: String,
    /// When it was taken.
    pub created: SystemTime,
    /// When it expires unless refreshed.
    pub expires: SystemTime,
}

impl LockInfo {
    /// Whether the lock is past its expiry at `now`.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.expires <= now
    }

    /// Whether the lock no longer protects anything: past its expiry, or
    /// taken on this machine by a process that has ended (a crash or a
    /// `kill -9` leaves its lock behind until it expires; restic treats such
    /// locks the same way). A lock of another machine is judged by its
    /// expiry alone.
    pub fn is_abandoned(&self, now: SystemTime) -> bool {
        self.is_stale(now) || self.local_pid().is_some_and(process_has_ended)
    }

    /// The pid in the holder (`host pid N action`) when the host is this
    /// machine.
    fn local_pid(&self) -> Option<u32> {
        let rest = self
            .holder
            .strip_prefix(&default_host())?
            .strip_prefix(" pid ")?;
        rest.split(' ').next()?.parse().ok()
    }
}

/// A held lock. Refreshed in the background while alive; call
/// [`release`](Self::release) to remove it (dropping it removes it too, in
/// the background, when a tokio runtime is running).
pub struct LockGuard {
    repo: Repository,
    key: Option<ObjectKey>,
    stop: Option<oneshot::Sender<()>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// Removes the lock.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Wait out a refresh in progress, so it cannot recreate the lock
        // after the delete below.
        if let Some(task) = self.refresher.take() {
            let _ = task.await;
        }
        if let Some(key) = self.key.take() {
            if let Err(e) = self.repo.inner.target.delete_if_exists(&key).await {
                warn!(lock = %key, error = %e, "could not remove a lock; it will expire");
            } else {
                debug!(lock = %key, "released lock");
            }
        }
    }

    /// Stops refreshing and forgets the lock without removing it, as a
    /// crashed process would. For tests of stale-lock handling.
    pub fn leak(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.key = None;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(key) = self.key.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let target = self.repo.inner.target.clone();
            handle.spawn(async move {
                let _ = target.delete_if_exists(&key).await;
            });
        }
    }
}

fn holder(action: &str) -> String {
    format!("{} pid {} {action}", default_host(), std::process::id())
}

impl Repository {
    /// Every lock in the repository. A lock object that does not open is
    /// listed as an exclusive lock held by "a damaged lock (…)", taken when
    /// the object was last written and expiring a lock's lifetime later:
    /// it blocks until then, and [`unlock`](Self::unlock) removes it after
    /// (or at once with `remove_all`).
    ///
    /// # Errors
    /// Target errors; [`Error::Precondition`] for a lock of a newer format
    /// version.
    pub async fn locks(&self) -> Result<Vec<LockInfo>> {
        let metas = self
            .inner
            .target
            .list_all(&self.inner.layout.locks()?)
            .await?;
        let mut out = Vec::new();
        for m in metas {
            let sealed = match self.inner.target.get_bytes(&m.key).await {
                Ok(b) => b,
                // Released between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let id = Layout::name_of(&m.key).to_owned();
            out.push(match self.open_document_checked(Document::Lock, &m.key, &sealed)? {
                Opened::Intact(lf) => {
                    let lf: LockFile = lf;
                    LockInfo {
                        id,
                        exclusive: lf.exclusive,
                        holder: lf.holder,
                        created: lf.created,
                        expires: lf.expires,
                    }
                }
                // Whose it is cannot be read, so it blocks everything, as an
                // exclusive lock, until a holder would have refreshed it:
                // a lock object unchanged for a whole TTL is stale.
                Opened::Damaged(d) => {
                    warn!(lock = %d.path, damage = %d.damage, reason = %d.reason, "damaged lock");
                    LockInfo {
                        id,
                        exclusive: true,
                        holder: format!("a damaged lock ({}: {})", d.damage, d.reason),
                        created: m.last_modified,
                        expires: m.last_modified + LOCK_TTL,
                    }
                }
            });
        }
        Ok(out)
    }

    /// Takes a lock: `exclusive` for prune, shared otherwise. `action` is
    /// recorded in the holder (`host pid action`).
    ///
    /// # Errors
    /// [`Error::Conflict`] naming the holder when a lock that conflicts is
    /// not [abandoned](LockInfo::is_abandoned) (any lock for an exclusive one, an exclusive one for
    /// a shared one); target errors.
    pub async fn lock(&self, exclusive: bool, action: &str) -> Result<LockGuard> {
        self.lock_with_ttl(exclusive, action, LOCK_TTL).await
    }

    /// Runs `work` under a [`lock`](Self::lock), releasing it whatever
    /// `work` returns.
    pub(crate) async fn under_lock<T>(
        &self,
        exclusive: bool,
        action: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let lock = self.lock(exclusive, action).await?;
        let result = work.await;
        lock.release().await;
        result
    }

    /// [`lock`](Self::lock) with a custom time to live (refreshed every
    /// third of it).
    ///
    /// # Errors
    /// As [`lock`](Self::lock); [`Error::InvalidInput`] for a zero `ttl`.
    pub async fn lock_with_ttl(
        &self,
        exclusive: bool,
        action: &str,
        ttl: Duration,
    ) -> Result<LockGuard> {
        if ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be positive"));
        }
        let name = PackId::random().to_hex();
        let key = self.inner.layout.lock(&name)?;
        let now = SystemTime::now();
        let file = LockFile {
            exclusive,
            holder: holder(action),
            created: now,
            expires: now + ttl,
        };
        self.write_file(&key, Document::Lock, &file, true).await?;
        let guard = LockGuard {
            repo: self.clone(),
            key: Some(key.clone()),
            stop: None,
            refresher: None,
        };
        let now = SystemTime::now();
        let conflicts: Vec<LockInfo> = self
            .locks()
            .await?
            .into_iter()
            .filter(|l| l.id != name && !l.is_abandoned(now) && (exclusive || l.exclusive))
            .collect();
        if let Some(c) = conflicts.first() {
            guard.release().await;
            return Err(Error::conflict(format!(
                "the repository is locked {} by {:?} (lock {}, expires {})",
                if c.exclusive {
                    "exclusively"
                } else {
                    "(shared)"
                },
                c.holder,
                &c.id[..8],
                humantime::format_rfc3339_seconds(c.expires)
            )));
        }
        // Refresh in the background until released.
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let repo = self.clone();
        let refresher = tokio::spawn(async move {
            let mut file = file;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                file.expires = SystemTime::now() + ttl;
                if let Err(e) = repo.write_file(&key, Document::Lock, &file, false).await {
                    warn!(lock = %key, error = %e, "could not refresh a lock");
                }
            }
        });
        info!(exclusive, action, "took repository lock");
        let mut guard = guard;
        guard.stop = Some(stop_tx);
        guard.refresher = Some(refresher);
        Ok(guard)
    }

    /// Removes every abandoned lock (past its expiry, or left by a process of
    /// this machine that has ended); returns how many.
    ///
    /// # Errors
    /// Target errors.
    pub async fn break_stale_locks(&self) -> Result<usize> {
        Ok(self.unlock(false).await?.len())
    }

    /// Removes stale locks — past their expiry, or left on this machine by a
    /// process that has ended — and returns them. With `remove_all`, removes
    /// every lock, live ones included, with a warning: the operations
    /// holding them go on unprotected (a prune could then delete the packs
    /// of a running backup), so use it only when their holders are known to
    /// be gone (a lock of another machine whose process crashed, before its
    /// expiry).
    ///
    /// # Errors
    /// Target errors; as [`locks`](Self::locks).
    pub async fn unlock(&self, remove_all: bool) -> Result<Vec<LockInfo>> {
        let span = info_span!("unlock", remove_all);
        async {
            let now = SystemTime::now();
            let mut removed = Vec::new();
            for l in self.locks().await? {
                let abandoned = l.is_abandoned(now);
                if !abandoned && !remove_all {
                    continue;
                }
                self.inner
                    .target
                    .delete_if_exists(&self.inner.layout.lock(&l.id)?)
                    .await?;
                if abandoned {
                    warn!(lock = %l.id, holder = %l.holder, "broke a stale lock");
                } else {
                    warn!(lock = %l.id, holder = %l.holder, exclusive = l.exclusive,
                        "removed a live lock: its holder is no longer protected");
                }
                removed.push(l);
            }
            info!(removed = removed.len(), "unlocked");
            Ok(removed)
        }
        .instrument(span)
        .await
    }
}
