//! What the daemon keeps across restarts, in one JSON file written
//! atomically: services, routes, splits, endpoints, replica records,
//! leases, steering commands and promotion history.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atlas_core::{Endpoint, Error, Lease, Release, Result, ServiceName, Slot, TrafficSplit};
use serde::{Deserialize, Serialize};

use super::api::SequencedCommand;
use crate::process::ReplicaRecord;
use crate::proxy::ServiceRoute;

/// The file format's version; a file of a later version is refused.
const FORMAT: u32 = 1;

/// One service as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PersistedService {
    pub(crate) route: ServiceRoute,
    #[serde(default)]
    pub(crate) split: Option<TrafficSplit>,
    #[serde(default)]
    pub(crate) endpoints: BTreeMap<Slot, Vec<Endpoint>>,
}

/// A lease granted to a remote engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PersistedLease {
    pub(crate) holder: String,
    pub(crate) token: u64,
    pub(crate) ttl_ms: u64,
    /// Wall-clock expiry in milliseconds since the epoch, so a restarted
    /// daemon honours leases granted before.
    pub(crate) expires_ms: u64,
}

/// Everything the daemon persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Persisted {
    #[serde(default)]
    pub(crate) format: u32,
    #[serde(default)]
    pub(crate) services: BTreeMap<ServiceName, PersistedService>,
    #[serde(default)]
    pub(crate) replicas: Vec<ReplicaRecord>,
    #[serde(default)]
    pub(crate) leases: BTreeMap<ServiceName, PersistedLease>,
    /// The last lease token granted (tokens only grow).
    #[serde(default)]
    pub(crate) last_token: u64,
    #[serde(default)]
    pub(crate) commands: BTreeMap<ServiceName, SequencedCommand>,
    #[serde(default)]
    pub(crate) history: BTreeMap<ServiceName, Vec<Release>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Persisted {
    /// Grants `holder` the lease on `service` unless another holder's
    /// lease is live; the same holder gets a fresh grant.
    pub(crate) fn acquire(
        &mut self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
        now: u64,
    ) -> Result<Lease> {
        if holder.is_empty() {
            return Err(Error::invalid("holder", "must not be empty"));
        }
        if ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be positive"));
        }
        if let Some(current) = self.leases.get(service)
            && current.expires_ms > now
            && current.holder != holder
        {
            return Err(Error::Conflict {
                what: format!(
                    "the lease on {service} is held by {} for another {} ms",
                    current.holder,
                    current.expires_ms - now
                ),
            });
        }
        self.last_token += 1;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.leases.insert(
            service.clone(),
            PersistedLease {
                holder: holder.to_owned(),
                token: self.last_token,
                ttl_ms,
                expires_ms: now.saturating_add(ttl_ms),
            },
        );
        Ok(Lease {
            service: service.clone(),
            holder: holder.to_owned(),
            token: self.last_token,
            ttl,
        })
    }

    /// Extends a lease still held (even one past its expiry that nobody
    /// took since); a [`Error::Conflict`] once another grant replaced it.
    pub(crate) fn renew(&mut self, lease: &Lease, now: u64) -> Result<()> {
        match self.leases.get_mut(&lease.service) {
            Some(current) if current.token == lease.token && current.holder == lease.holder => {
                current.expires_ms = now.saturating_add(current.ttl_ms);
                Ok(())
            }
            Some(current) => Err(Error::Conflict {
                what: format!(
                    "the lease on {} passed to {}",
                    lease.service, current.holder
                ),
            }),
            None => Err(Error::Conflict {
                what: format!("the lease on {} was released", lease.service),
            }),
        }
    }

    /// Gives a lease up; one no longer held is not an error.
    pub(crate) fn release(&mut self, lease: &Lease) {
        if self
            .leases
            .get(&lease.service)
            .is_some_and(|current| current.token == lease.token)
        {
            self.leases.remove(&lease.service);
        }
    }
}

/// The state file and its atomic writes.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub(crate) fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("atlasd.json"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted state; an absent file is an empty state, a damaged or
    /// newer one an error naming the file (never silently reset).
    pub(crate) fn load(&self) -> Result<Persisted> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Persisted {
                    format: FORMAT,
                    ..Persisted::default()
                });
            }
            Err(e) => return Err(backend(&self.path, "cannot read", e)),
        };
        let state: Persisted = serde_json::from_slice(&text).map_err(|e| Error::Backend {
            backend: "atlasd".into(),
            message: format!("state file {} is damaged: {e}", self.path.display()),
            source: Some(Box::new(e)),
        })?;
        if state.format > FORMAT {
            return Err(Error::Backend {
                backend: "atlasd".into(),
                message: format!(
                    "state file {} has format {}; this atlasd reads up to {FORMAT}",
                    self.path.display(),
                    state.format
                ),
                source: None,
            });
        }
        Ok(state)
    }

    /// Writes `state`: a temporary file (mode 0600: replica records hold
    /// release environments, which may hold secrets), fsynced, renamed over
    /// the state file, then the directory fsynced.
    pub(crate) fn save(&self, state: &Persisted) -> Result<()> {
        let mut state_json = serde_json::to_vec_pretty(&Persisted {
            format: FORMAT,
            ..state.clone()
        })
        .map_err(|e| Error::Backend {
            backend: "atlasd".into(),
            message: format!("cannot encode the daemon state: {e}"),
            source: Some(Box::new(e)),
        })?;
        state_json.push(b'\n');
        let temp = self.path.with_file_name(".atlasd.json.tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| backend(&temp, "cannot write", e))?;
        file.write_all(&state_json)
            .map_err(|e| backend(&temp, "cannot write", e))?;
        file.sync_all()
            .map_err(|e| backend(&temp, "cannot sync", e))?;
        fs::rename(&temp, &self.path).map_err(|e| backend(&self.path, "cannot replace", e))?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn backend(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Backend {
        backend: "atlasd".into(),
        message: format!("{what} {}: {e}", path.display()),
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceName {
        ServiceName::new("web").unwrap()
    }

    #[test]
    fn a_live_lease_refuses_another_holder_and_an_expired_one_passes() {
        let mut state = Persisted::default();
        let first = state
            .acquire(&svc(), "a", Duration::from_secs(10), 1_000)
            .unwrap();
        let err = state
            .acquire(&svc(), "b", Duration::from_secs(10), 5_000)
            .unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Conflict);
        state.renew(&first, 9_000).unwrap();
        assert!(
            state
                .acquire(&svc(), "b", Duration::from_secs(10), 18_000)
                .is_err()
        );
        let second = state
            .acquire(&svc(), "b", Duration::from_secs(10), 19_001)
            .unwrap();
        assert!(second.token > first.token);
        assert_eq!(
            state.renew(&first, 19_002).unwrap_err().kind(),
            atlas_core::ErrorKind::Conflict
        );
        state.release(&first);
        assert!(
            state.leases.contains_key(&svc()),
            "a stale release must not free another's lease"
        );
        state.release(&second);
        assert!(state.leases.is_empty());
    }

    #[test]
    fn an_expired_lease_nobody_took_can_still_be_renewed() {
        let mut state = Persisted::default();
        let lease = state
            .acquire(&svc(), "a", Duration::from_secs(1), 0)
            .unwrap();
        state.renew(&lease, 5_000).unwrap();
        assert_eq!(state.leases[&svc()].expires_ms, 6_000);
    }

    #[test]
    fn state_files_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert!(file.load().unwrap().services.is_empty());
        let mut state = Persisted::default();
        state
            .acquire(&svc(), "a", Duration::from_secs(1), 0)
            .unwrap();
        file.save(&state).unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(file.load().unwrap().last_token, 1);
        fs::write(file.path(), b"{\"format\":1,\"services\":").unwrap();
        let err = file.load().unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
