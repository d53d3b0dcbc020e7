//! [`FileStateStore`]: rollout state in JSON files, leases as OS file locks.
//!
//! Layout of the store's directory, per service:
//!
//! | file | holds |
//! |---|---|
//! | `{service}.json` | the state and its version: `{"format":1,"service":…,"version":N,"state":{…}}` |
//! | `{service}.failover.json` | the failover controller's state ([`FailoverStore`]), in the same envelope |
//! | `{service}.lock` | the lease: an OS advisory lock held by the lease holder; its content names the holder, its pid and the last lease token |
//! | `{service}.state.lock` | locked for the few microseconds of one compare-and-swap, so two processes never interleave a read-compare-write |
//! | `.{service}.json.tmp` | the next state while it is written |
//!
//! Writes are atomic: the new state goes to the temporary file, which is
//! fsynced and renamed over the state file, then the directory is fsynced;
//! a reader sees the old state or the new one, never a mix, and a crash
//! loses at most the write in progress. A state file that is cut short or
//! corrupt anyway (edited by hand, a disk fault) is reported as
//! [`Error::Backend`] naming the file, and never silently reset.
//!
//! ## Leases
//!
//! A lease is an exclusive OS lock (`flock`) on `{service}.lock`, held by
//! this store instance from [`acquire_lease`](StateStore::acquire_lease)
//! until [`release_lease`](StateStore::release_lease), until the store is
//! dropped, or until the process dies, whichever comes first; the OS
//! releases the lock of a dead process. So the lease's `ttl` is ignored: a
//! lease cannot outlive its holder, and a live holder needs no renewal (which
//! only checks that the lease is still held). OS locks belong to one open
//! file, so two stores on the same directory conflict even inside one
//! process. The directory must be on a local filesystem: advisory locks on
//! network filesystems are not reliable.
//!
//! Lease tokens count up per service across every holder (the last one is
//! kept in the lock file), so a later grant always has a larger token.
//!
//! ```no_run
//! use std::time::Duration;
//! use atlas_core::{ServiceName, StateStore};
//! use atlas_local::file_store::FileStateStore;
//!
//! # async fn run() -> atlas_core::Result<()> {
//! let store = FileStateStore::new("/var/lib/atlas/state")?;
//! let service = ServiceName::new("checkout")?;
//! let lease = store.acquire_lease(&service, "engine-1", Duration::from_secs(15)).await?;
//! let state = store.load(&service).await?;
//! println!("stored version: {:?}", state.map(|v| v.version));
//! store.release_lease(&lease).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::failover::{FailoverState, FailoverStore};
use atlas_core::{Error, Lease, Result, RolloutState, ServiceName, StateStore, Versioned};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The backend name in errors.
const BACKEND: &str = "file-state-store";

/// The version of the state file layout this store reads and writes.
const FORMAT: u32 = 1;

/// Longest holder name accepted.
const MAX_HOLDER_LEN: usize = 253;

/// Rollout state as JSON files in one directory, with compare-and-swap and
/// leases as OS file locks. See the [module documentation](self) for the
/// layout and guarantees.
///
/// Blocking file I/O runs on tokio's blocking pool. Cheap to clone; clones
/// are one store instance (they share its leases), while a second
/// [`FileStateStore::new`] on the same directory is another holder.
#[derive(Debug, Clone)]
pub struct FileStateStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// One compare-and-swap at a time in this instance; the OS lock on
    /// `{service}.state.lock` keeps other instances and processes out.
    cas: tokio::sync::Mutex<()>,
    /// Leases this instance holds, by service; the open file keeps the OS
    /// lock, dropping it releases the lease.
    leases: Mutex<HashMap<ServiceName, HeldLease>>,
}

#[derive(Debug)]
struct HeldLease {
    holder: String,
    token: u64,
    file: File,
}

/// What the state file holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile<S> {
    format: u32,
    service: ServiceName,
    version: u64,
    state: S,
}

/// Just the format of a state file.
#[derive(Deserialize)]
struct FormatHeader {
    format: u32,
}

/// What the lease lock file holds.
#[derive(Serialize, Deserialize)]
struct LockInfo {
    holder: String,
    pid: u32,
    token: u64,
}

impl FileStateStore {
    /// A store in `dir`, created if missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty path; [`Error::Backend`] if the
    /// directory cannot be created or is not a directory.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(Error::invalid("dir", "must not be empty"));
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::backend_with(
                BACKEND,
                format!("cannot create state directory {}", dir.display()),
                e,
            )
        })?;
        tracing::debug!(dir = %dir.display(), "file state store opened");
        Ok(FileStateStore {
            inner: Arc::new(Inner {
                dir,
                cas: tokio::sync::Mutex::new(()),
                leases: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The directory the store keeps its files in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The state file of `service`.
    pub fn state_path(&self, service: &ServiceName) -> PathBuf {
        self.inner.dir.join(format!("{service}.json"))
    }

    /// The lease lock file of `service`.
    pub fn lock_path(&self, service: &ServiceName) -> PathBuf {
        self.inner.dir.join(format!("{service}.lock"))
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<ServiceName, HeldLease>> {
        // The map stays consistent whatever panicked while it was locked:
        // every change to it is a single insert or remove.
        self.inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend_with(BACKEND, format!("{what} did not finish"), e))?
}

fn io_error(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::backend_with(BACKEND, what(), e)
}

/// Reads and checks the state file; `None` if there is none.
fn read_state<S: DeserializeOwned>(
    path: &Path,
    service: &ServiceName,
) -> Result<Option<Versioned<S>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io_error(|| {
                format!("cannot read state file {}", path.display())
            })(e));
        }
    };
    let corrupt = |e: serde_json::Error| {
        Error::backend_with(
            BACKEND,
            format!(
                "state file {} is corrupt or cut short; it is left as it is for a human to repair or remove",
                path.display()
            ),
            e,
        )
    };
    // The format first, so a file from a newer Atlas says so rather than
    // looking corrupt.
    let header: FormatHeader = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if header.format != FORMAT {
        return Err(Error::backend(
            BACKEND,
            format!(
                "state file {} has format {}, this version of Atlas reads format {FORMAT}",
                path.display(),
                header.format
            ),
        ));
    }
    let file: StateFile<S> = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if &file.service != service {
        return Err(Error::backend(
            BACKEND,
            format!(
                "state file {} belongs to service {}, not {service}",
                path.display(),
                file.service
            ),
        ));
    }
    Ok(Some(Versioned {
        version: file.version,
        value: file.state,
    }))
}

/// Replaces `path` with `bytes` atomically and durably.
fn write_atomic(dir: &Path, path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let write_err = || format!("cannot write {}", tmp.display());
    let mut f = File::create(tmp).map_err(io_error(write_err))?;
    f.write_all(bytes).map_err(io_error(write_err))?;
    f.sync_all().map_err(io_error(write_err))?;
    drop(f);
    std::fs::rename(tmp, path).map_err(io_error(|| {
        format!("cannot rename {} to {}", tmp.display(), path.display())
    }))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(|| {
            format!("cannot sync directory {}", dir.display())
        }))
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error(|| {
            format!("cannot open lock file {}", path.display())
        }))
}

fn read_lock_info(file: &mut File) -> Option<LockInfo> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_lock_info(file: &mut File, info: &LockInfo) -> io::Result<()> {
    let bytes = serde_json::to_vec(info).map_err(io::Error::other)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&bytes)?;
    // The token must never go backwards, even across a power loss.
    file.sync_data()
}

fn validate_holder(holder: &str) -> Result<()> {
    if holder.trim().is_empty() {
        return Err(Error::invalid("holder", "must not be empty"));
    }
    if holder.len() > MAX_HOLDER_LEN {
        return Err(Error::invalid(
            "holder",
            format!("must be at most {MAX_HOLDER_LEN} bytes"),
        ));
    }
    if holder.chars().any(char::is_control) {
        return Err(Error::invalid(
            "holder",
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl FileStateStore {
    /// The failover state file of `service`.
    pub fn failover_path(&self, service: &ServiceName) -> PathBuf {
        self.inner.dir.join(format!("{service}.failover.json"))
    }

    /// Compare-and-swap of `{service}.{ext}`: under this instance's mutex
    /// and the OS lock on `{service}.state.lock`, reads the version, refuses
    /// a stale `expected` with a conflict, writes the next version
    /// atomically.
    async fn swap_file<S: Serialize + DeserializeOwned + Send + 'static>(
        &self,
        service: &ServiceName,
        ext: &'static str,
        expected: Option<u64>,
        state: S,
        what: &'static str,
    ) -> Result<u64> {
        let _one_at_a_time = self.inner.cas.lock().await;
        let dir = self.inner.dir.clone();
        let path = dir.join(format!("{service}.{ext}"));
        let tmp = dir.join(format!(".{service}.{ext}.tmp"));
        let guard_path = dir.join(format!("{service}.state.lock"));
        let svc = service.clone();
        let result = blocking("compare-and-swap", move || {
            let guard = open_lock_file(&guard_path)?;
            guard
                .lock()
                .map_err(io_error(|| format!("cannot lock {}", guard_path.display())))?;
            let current = read_state::<S>(&path, &svc)?.map(|v| v.version);
            if current != expected {
                return Err(Error::conflict(format!(
                    "{what} of {svc} is at version {}, not the expected {}",
                    current.map_or("none".to_string(), |v| v.to_string()),
                    expected.map_or("none".to_string(), |v| v.to_string()),
                )));
            }
            let next = match current {
                None => 1,
                Some(v) => v.checked_add(1).ok_or_else(|| {
                    Error::backend(BACKEND, format!("{what} version of {svc} overflowed"))
                })?,
            };
            let bytes = serde_json::to_vec_pretty(&StateFile {
                format: FORMAT,
                service: svc.clone(),
                version: next,
                state: &state,
            })
            .map_err(|e| Error::backend_with(BACKEND, format!("cannot serialize {what}"), e))?;
            write_atomic(&dir, &path, &tmp, &bytes)?;
            // Dropping `guard` unlocks it.
            Ok(next)
        })
        .await;
        match &result {
            Ok(version) => {
                tracing::debug!(service = %service, ?expected, version, what, "state written")
            }
            Err(e) => {
                tracing::warn!(service = %service, ?expected, error = %e, what, "state not written")
            }
        }
        result
    }
}

#[async_trait]
impl FailoverStore for FileStateStore {
    async fn load_failover(
        &self,
        service: &ServiceName,
    ) -> Result<Option<Versioned<FailoverState>>> {
        let path = self.failover_path(service);
        let svc = service.clone();
        blocking("loading failover state", move || read_state(&path, &svc)).await
    }

    async fn compare_and_swap_failover(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &FailoverState,
    ) -> Result<u64> {
        self.swap_file(
            service,
            "failover.json",
            expected,
            state.clone(),
            "failover state",
        )
        .await
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        let path = self.state_path(service);
        let svc = service.clone();
        let loaded = blocking("loading state", move || read_state(&path, &svc)).await;
        match &loaded {
            Ok(v) => {
                tracing::debug!(service = %service, version = v.as_ref().map(|v| v.version), "state loaded")
            }
            Err(e) => tracing::error!(service = %service, error = %e, "cannot load state"),
        }
        loaded
    }

    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        self.swap_file(service, "json", expected, state.clone(), "rollout state")
            .await
    }

    /// Takes the OS lock on `{service}.lock`. The `ttl` is ignored: the lock
    /// lasts until released, until this store is dropped, or until the
    /// process dies. The same holder asking again through the same store
    /// gets a new grant (a new token) that supersedes its earlier one.
    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        validate_holder(holder)?;
        let store = self.clone();
        let svc = service.clone();
        let who = holder.to_string();
        let result = blocking("acquiring a lease", move || {
            let mut leases = store.leases();
            let path = store.lock_path(&svc);
            let (mut file, previous) = match leases.remove(&svc) {
                // A new grant to the same holder supersedes its earlier one.
                Some(held) if held.holder == who => (held.file, Some(held.token)),
                Some(held) => {
                    let conflict =
                        Error::conflict(format!("lease on {svc} is held by {}", held.holder));
                    leases.insert(svc, held);
                    return Err(conflict);
                }
                None => {
                    let mut file = open_lock_file(&path)?;
                    match file.try_lock() {
                        Ok(()) => (file, None),
                        Err(TryLockError::WouldBlock) => {
                            let by = read_lock_info(&mut file).map_or_else(
                                || "another store or process".to_string(),
                                |i| format!("{} (pid {})", i.holder, i.pid),
                            );
                            return Err(Error::conflict(format!("lease on {svc} is held by {by}")));
                        }
                        Err(TryLockError::Error(e)) => {
                            return Err(io_error(|| format!("cannot lock {}", path.display()))(e));
                        }
                    }
                }
            };
            let token = read_lock_info(&mut file)
                .map_or(0, |i| i.token)
                .saturating_add(1);
            let info = LockInfo {
                holder: who.clone(),
                pid: std::process::id(),
                token,
            };
            if let Err(e) = write_lock_info(&mut file, &info) {
                if let Some(token) = previous {
                    // The earlier grant still stands.
                    leases.insert(
                        svc,
                        HeldLease {
                            holder: who,
                            token,
                            file,
                        },
                    );
                }
                return Err(io_error(|| format!("cannot write {}", path.display()))(e));
            }
            leases.insert(
                svc,
                HeldLease {
                    holder: who,
                    token,
                    file,
                },
            );
            Ok(token)
        })
        .await;
        match result {
            Ok(token) => {
                tracing::info!(service = %service, holder, token, "lease acquired");
                Ok(Lease {
                    service: service.clone(),
                    holder: holder.to_string(),
                    token,
                    ttl,
                })
            }
            Err(e) => {
                tracing::info!(service = %service, holder, error = %e, "lease not acquired");
                Err(e)
            }
        }
    }

    /// Checks that this store still holds `lease` (the OS lock needs no
    /// renewal); a [`Conflict`](Error::Conflict) if it does not.
    async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        let leases = self.leases();
        match leases.get(&lease.service) {
            Some(held) if held.holder == lease.holder && held.token == lease.token => {
                tracing::trace!(service = %lease.service, holder = %lease.holder, "lease renewed");
                Ok(())
            }
            _ => {
                tracing::warn!(service = %lease.service, holder = %lease.holder, token = lease.token, "lease to renew is not held");
                Err(Error::conflict(format!(
                    "lease {} on {} is no longer held by {}",
                    lease.token, lease.service, lease.holder
                )))
            }
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut leases = self.leases();
        let matches = leases
            .get(&lease.service)
            .is_some_and(|h| h.holder == lease.holder && h.token == lease.token);
        if matches && let Some(held) = leases.remove(&lease.service) {
            // Closing the file would release the lock too; unlocking first
            // says so, and lets another waiter in even if a clone of the
            // descriptor lingered.
            if let Err(e) = held.file.unlock() {
                tracing::warn!(service = %lease.service, error = %e, "cannot unlock lease file; closing it releases the lock");
            }
            tracing::info!(service = %lease.service, holder = %lease.holder, token = lease.token, "lease released");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_are_checked() {
        assert!(validate_holder("engine-1").is_ok());
        for bad in ["", "  ", "a\nb"] {
            let err = validate_holder(bad).unwrap_err();
            assert!(err.to_string().contains("holder"), "{err}");
        }
        assert!(validate_holder(&"x".repeat(MAX_HOLDER_LEN + 1)).is_err());
    }

    #[test]
    fn empty_dir_is_refused() {
        let err = FileStateStore::new("").unwrap_err();
        assert_eq!(err.to_string(), "invalid dir: must not be empty");
    }
}
