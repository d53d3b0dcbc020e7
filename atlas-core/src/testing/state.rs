//! [`MemoryStateStore`]: rollout state and leases in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::guard::lock;
use crate::domain::ServiceName;
use crate::error::{Error, Result};
use crate::failover::{FailoverState, FailoverStore};
use crate::state::{Lease, RolloutState, StateStore, Versioned};

#[derive(Debug, Clone)]
struct LeaseRecord {
    holder: String,
    token: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    states: BTreeMap<ServiceName, Versioned<RolloutState>>,
    history: BTreeMap<ServiceName, Vec<RolloutState>>,
    leases: BTreeMap<ServiceName, LeaseRecord>,
    failovers: BTreeMap<ServiceName, Versioned<FailoverState>>,
    writes: u64,
    next_token: u64,
}

/// An in-memory [`StateStore`] with the full contract: compare-and-swap on
/// versions (the first write is version 1, each write adds 1) and leases
/// whose time-to-live runs on tokio's clock, so a paused clock can expire
/// them.
///
/// Leases: a live lease of another holder refuses
/// [`acquire_lease`](StateStore::acquire_lease) with a
/// [`Conflict`](Error::Conflict) naming the holder; the same holder may
/// acquire again (a new token, the old one is superseded); an expired lease
/// goes to whoever asks. [`renew_lease`](StateStore::renew_lease) works
/// while the store still records that grant (even past its expiry, if
/// nobody took it) and is a `Conflict` once the lease was released,
/// superseded or taken.
///
/// Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryStateStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Successful compare-and-swap writes, over all services.
    pub fn writes(&self) -> u64 {
        lock(&self.state).writes
    }

    /// The state stored for `service`.
    pub fn state(&self, service: &ServiceName) -> Option<RolloutState> {
        lock(&self.state)
            .states
            .get(service)
            .map(|v| v.value.clone())
    }

    /// The state stored for `service`, with its version.
    pub fn versioned(&self, service: &ServiceName) -> Option<Versioned<RolloutState>> {
        lock(&self.state).states.get(service).cloned()
    }

    /// Every state written for `service`, oldest first.
    pub fn history(&self, service: &ServiceName) -> Vec<RolloutState> {
        lock(&self.state)
            .history
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The holder of the live lease on `service`, if any.
    pub fn lease_holder(&self, service: &ServiceName) -> Option<String> {
        let now = Instant::now();
        lock(&self.state)
            .leases
            .get(service)
            .filter(|l| l.expires > now)
            .map(|l| l.holder.clone())
    }
}

#[async_trait]
impl FailoverStore for MemoryStateStore {
    async fn load_failover(
        &self,
        service: &ServiceName,
    ) -> Result<Option<Versioned<FailoverState>>> {
        Ok(lock(&self.state).failovers.get(service).cloned())
    }

    async fn compare_and_swap_failover(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &FailoverState,
    ) -> Result<u64> {
        let mut s = lock(&self.state);
        let stored = s.failovers.get(service).map(|v| v.version);
        if stored != expected {
            let show = |v: Option<u64>| v.map_or("nothing".to_string(), |v| format!("version {v}"));
            return Err(Error::conflict(format!(
                "failover state of {service}: expected {}, found {}",
                show(expected),
                show(stored)
            )));
        }
        let version = stored.unwrap_or(0) + 1;
        s.failovers.insert(
            service.clone(),
            Versioned {
                version,
                value: state.clone(),
            },
        );
        s.writes += 1;
        tracing::debug!(%service, version, "memory store: failover state written");
        Ok(version)
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        Ok(self.versioned(service))
    }

    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        let mut s = lock(&self.state);
        let stored = s.states.get(service).map(|v| v.version);
        if stored != expected {
            let show = |v: Option<u64>| v.map_or("nothing".to_string(), |v| format!("version {v}"));
            tracing::debug!(%service, ?expected, ?stored, "memory store: stale write refused");
            return Err(Error::conflict(format!(
                "state of {service}: expected {}, found {}",
                show(expected),
                show(stored)
            )));
        }
        let version = stored.unwrap_or(0) + 1;
        s.states.insert(
            service.clone(),
            Versioned {
                version,
                value: state.clone(),
            },
        );
        s.history
            .entry(service.clone())
            .or_default()
            .push(state.clone());
        s.writes += 1;
        tracing::debug!(%service, version, "memory store: state written");
        Ok(version)
    }

    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        if holder.trim().is_empty() {
            return Err(Error::invalid("lease.holder", "must not be empty"));
        }
        if ttl.is_zero() {
            return Err(Error::invalid("lease.ttl", "must be greater than 0"));
        }
        let now = Instant::now();
        let mut s = lock(&self.state);
        if let Some(l) = s.leases.get(service)
            && l.holder != holder
            && l.expires > now
        {
            return Err(Error::conflict(format!(
                "lease on {service} is held by {} for another {}",
                l.holder,
                humantime::format_duration(l.expires - now)
            )));
        }
        s.next_token += 1;
        let token = s.next_token;
        s.leases.insert(
            service.clone(),
            LeaseRecord {
                holder: holder.to_string(),
                token,
                expires: now + ttl,
            },
        );
        tracing::debug!(%service, holder, token, "memory store: lease granted");
        Ok(Lease {
            service: service.clone(),
            holder: holder.to_string(),
            token,
            ttl,
        })
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        let mut s = lock(&self.state);
        match s.leases.get_mut(&lease.service) {
            Some(l) if l.holder == lease.holder && l.token == lease.token => {
                l.expires = Instant::now() + lease.ttl;
                tracing::debug!(service = %lease.service, holder = %lease.holder, "memory store: lease renewed");
                Ok(())
            }
            Some(l) => Err(Error::conflict(format!(
                "lease on {} was lost to {} (token {})",
                lease.service, l.holder, l.token
            ))),
            None => Err(Error::conflict(format!(
                "lease on {} is no longer held by {}",
                lease.service, lease.holder
            ))),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut s = lock(&self.state);
        if s.leases
            .get(&lease.service)
            .is_some_and(|l| l.holder == lease.holder && l.token == lease.token)
        {
            s.leases.remove(&lease.service);
            tracing::debug!(service = %lease.service, holder = %lease.holder, "memory store: lease released");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::testing::conformance::state_store::sample_state;

    fn svc() -> ServiceName {
        ServiceName::new("checkout").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_on_tokio_time() {
        let store = MemoryStateStore::new();
        let ttl = Duration::from_secs(15);
        let a = store.acquire_lease(&svc(), "engine-a", ttl).await.unwrap();
        tokio::time::sleep(Duration::from_secs(14)).await;
        let err = store
            .acquire_lease(&svc(), "engine-b", ttl)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("engine-a"), "{err}");
        assert!(err.to_string().contains("for another 1s"), "{err}");
        // Renewal pushes the expiry out by a whole ttl.
        store.renew_lease(&a).await.unwrap();
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert_eq!(store.lease_holder(&svc()).as_deref(), Some("engine-a"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(store.lease_holder(&svc()), None);
        // Expired but not taken: the holder can still renew.
        store.renew_lease(&a).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let b = store.acquire_lease(&svc(), "engine-b", ttl).await.unwrap();
        assert_ne!(a.token, b.token);
        let err = store.renew_lease(&a).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("engine-b"), "{err}");
        // Releasing a lost lease is no error and leaves b's lease alone.
        store.release_lease(&a).await.unwrap();
        assert_eq!(store.lease_holder(&svc()).as_deref(), Some("engine-b"));
    }

    #[tokio::test(start_paused = true)]
    async fn reacquiring_supersedes_the_old_grant() {
        let store = MemoryStateStore::new();
        let ttl = Duration::from_secs(15);
        let first = store.acquire_lease(&svc(), "a", ttl).await.unwrap();
        let second = store.acquire_lease(&svc(), "a", ttl).await.unwrap();
        assert!(second.token > first.token);
        assert_eq!(
            store.renew_lease(&first).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        store.renew_lease(&second).await.unwrap();
        let bad = store
            .acquire_lease(&svc(), "a", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("lease.ttl"), "{bad}");
        let bad = store.acquire_lease(&svc(), " ", ttl).await.unwrap_err();
        assert!(bad.to_string().contains("lease.holder"), "{bad}");
    }

    #[tokio::test]
    async fn writes_and_history_are_recorded() {
        let store = MemoryStateStore::new();
        let mut s = sample_state(&svc());
        assert_eq!(store.compare_and_swap(&svc(), None, &s).await.unwrap(), 1);
        s.step = 4;
        assert_eq!(
            store.compare_and_swap(&svc(), Some(1), &s).await.unwrap(),
            2
        );
        let err = store
            .compare_and_swap(&svc(), Some(1), &s)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "conflict: state of checkout: expected version 1, found version 2"
        );
        assert_eq!(store.writes(), 2);
        assert_eq!(store.state(&svc()).unwrap().step, 4);
        let steps: Vec<usize> = store.history(&svc()).iter().map(|s| s.step).collect();
        assert_eq!(steps, [sample_state(&svc()).step, 4]);
    }
}
