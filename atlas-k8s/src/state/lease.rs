//! The single-driver lease on a `coordination.k8s.io/v1` Lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_core::{Error, Lease as AtlasLease, Result, ServiceName};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::Instrument;

use super::objects::{labels, object_name};
use crate::error::map_kube_error;

/// When this process last saw a Lease change. `tokio::time::Instant` is the
/// monotonic clock (and pauses in tests).
#[derive(Debug, Clone)]
struct Observation {
    resource_version: String,
    at: Instant,
}

/// How often a release retries after another writer changed the Lease
/// between its read and its write.
const RELEASE_ATTEMPTS: usize = 3;

fn seconds(ttl: Duration) -> Result<i32> {
    if ttl.is_zero() {
        return Err(Error::invalid("ttl", "must be longer than zero"));
    }
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i32::try_from(secs).map_err(|_| Error::invalid("ttl", "must fit in i32 seconds"))
}

fn holder_of(l: &Lease) -> Option<&str> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn transitions(l: &Lease) -> u64 {
    l.spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0)
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The Leases of one namespace, and when this process last saw each one
/// change.
#[derive(Clone)]
pub(super) struct Leases {
    client: Client,
    namespace: String,
    /// Lease name → (resourceVersion, local instant it was first seen at).
    seen: Arc<Mutex<HashMap<String, Observation>>>,
}

impl Leases {
    pub(super) fn new(client: Client, namespace: String) -> Self {
        Leases {
            client,
            namespace,
            seen: Arc::default(),
        }
    }

    fn what(&self, kind: &str, name: &str) -> String {
        format!("{kind} {}/{name}", self.namespace)
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Records that the Lease `name` was seen at `resource_version` and
    /// returns when it was first seen at that version.
    fn observe(&self, name: &str, resource_version: Option<&str>) -> Instant {
        let rv = resource_version.unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(name) {
            Some(o) if o.resource_version == rv => o.at,
            _ => {
                let at = Instant::now();
                seen.insert(
                    name.to_owned(),
                    Observation {
                        resource_version: rv.to_owned(),
                        at,
                    },
                );
                at
            }
        }
    }

    async fn get_lease(&self, name: &str) -> Result<Option<Lease>> {
        self.leases()
            .get_opt(name)
            .await
            .map_err(|e| map_kube_error(&format!("reading {}", self.what("Lease", name)), e))
    }

    /// Replaces the Lease with `spec`, carrying the `resourceVersion` of
    /// `read`: a 409 if it changed since.
    async fn write_lease(&self, read: &Lease, spec: LeaseSpec) -> Result<Lease> {
        let name = read.metadata.name.clone().unwrap_or_default();
        let mut next = read.clone();
        next.metadata.managed_fields = None;
        next.spec = Some(spec);
        let written = self
            .leases()
            .replace(&name, &PostParams::default(), &next)
            .await
            .map_err(|e| map_kube_error(&format!("updating {}", self.what("Lease", &name)), e))?;
        self.observe(&name, written.metadata.resource_version.as_deref());
        Ok(written)
    }
}

pub(super) async fn acquire(
    store: &Leases,
    service: &ServiceName,
    holder: &str,
    ttl: Duration,
) -> Result<AtlasLease> {
    let name = object_name(service);
    let what = store.what("Lease", &name);
    let span =
        tracing::info_span!("kube_state.acquire_lease", %service, holder, ?ttl, lease = %what);
    async {
        if holder.is_empty() {
            return Err(Error::invalid("holder", "must not be empty"));
        }
        let secs = seconds(ttl)?;
        let grant = |token: u64| AtlasLease {
            service: service.clone(),
            holder: holder.to_owned(),
            token,
            ttl,
        };
        let Some(current) = store.get_lease(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(store.namespace.clone()),
                    labels: Some(labels(service)),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.to_owned()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let created = store
                .leases()
                .create(&PostParams::default(), &lease)
                .await
                .map_err(|e| map_kube_error(&format!("creating {what}"), e))?;
            store.observe(&name, created.metadata.resource_version.as_deref());
            tracing::info!(token = 0, "lease created and taken");
            return Ok(grant(0));
        };
        let seen_at = store.observe(&name, current.metadata.resource_version.as_deref());
        let spec = current.spec.clone().unwrap_or_default();
        let token = transitions(&current);
        match holder_of(&current) {
            Some(h) if h == holder => {
                store
                    .write_lease(
                        &current,
                        LeaseSpec {
                            lease_duration_seconds: Some(secs),
                            renew_time: Some(now()),
                            ..spec
                        },
                    )
                    .await?;
                tracing::info!(token, "lease already held; renewed");
                return Ok(grant(token));
            }
            Some(h) => {
                let duration = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(Duration::ZERO, Duration::from_secs);
                let expires = seen_at + duration;
                let now = Instant::now();
                if now < expires {
                    return Err(Error::conflict(format!(
                        "{what} is held by {h:?} (live for {}s more unless renewed, as observed here)",
                        (expires - now).as_secs()
                    )));
                }
                tracing::warn!(previous = h, "lease expired; taking it over");
            }
            None => {}
        }
        let token = token + 1;
        let transitions = i32::try_from(token)
            .map_err(|_| Error::backend(crate::BACKEND, format!("{what}: leaseTransitions overflow")))?;
        store
            .write_lease(
                &current,
                LeaseSpec {
                    holder_identity: Some(holder.to_owned()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(transitions),
                    ..spec
                },
            )
            .await?;
        tracing::info!(token, "lease taken");
        Ok(grant(token))
    }
    .instrument(span)
    .await
}

pub(super) async fn renew(store: &Leases, lease: &AtlasLease) -> Result<()> {
    let name = object_name(&lease.service);
    let what = store.what("Lease", &name);
    let span = tracing::debug_span!("kube_state.renew_lease", service = %lease.service, holder = %lease.holder, token = lease.token, lease = %what);
    async {
        let secs = seconds(lease.ttl)?;
        let Some(current) = store.get_lease(&name).await? else {
            return Err(Error::conflict(format!(
                "{what} is gone: {:?} no longer holds it",
                lease.holder
            )));
        };
        store.observe(&name, current.metadata.resource_version.as_deref());
        if holder_of(&current) != Some(lease.holder.as_str())
            || transitions(&current) != lease.token
        {
            return Err(Error::conflict(format!(
                "{what} is now held by {:?} (grant {}), not by {:?} (grant {})",
                holder_of(&current).unwrap_or("nobody"),
                transitions(&current),
                lease.holder,
                lease.token
            )));
        }
        let spec = current.spec.clone().unwrap_or_default();
        store
            .write_lease(
                &current,
                LeaseSpec {
                    lease_duration_seconds: Some(secs),
                    renew_time: Some(now()),
                    ..spec
                },
            )
            .await?;
        tracing::debug!("lease renewed");
        Ok(())
    }
    .instrument(span)
    .await
}

pub(super) async fn release(store: &Leases, lease: &AtlasLease) -> Result<()> {
    let name = object_name(&lease.service);
    let what = store.what("Lease", &name);
    let span = tracing::info_span!("kube_state.release_lease", service = %lease.service, holder = %lease.holder, token = lease.token, lease = %what);
    async {
        for attempt in 1..=RELEASE_ATTEMPTS {
            let Some(current) = store.get_lease(&name).await? else {
                return Ok(());
            };
            if holder_of(&current) != Some(lease.holder.as_str())
                || transitions(&current) != lease.token
            {
                tracing::debug!("lease no longer held; nothing to release");
                return Ok(());
            }
            // Keep the Lease and its leaseTransitions, so the next grant's
            // token is greater than every earlier one.
            let spec = LeaseSpec {
                holder_identity: None,
                acquire_time: None,
                renew_time: None,
                ..current.spec.clone().unwrap_or_default()
            };
            match store.write_lease(&current, spec).await {
                Ok(_) => {
                    tracing::info!("lease released");
                    return Ok(());
                }
                Err(e)
                    if e.kind() == atlas_core::ErrorKind::Conflict
                        && attempt < RELEASE_ATTEMPTS =>
                {
                    tracing::debug!(attempt, "lease changed while releasing; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::conflict(format!(
            "{what} kept changing while being released"
        )))
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::from_millis(1500)).unwrap(), 2);
        assert_eq!(seconds(Duration::from_secs(30)).unwrap(), 30);
        assert!(seconds(Duration::ZERO).is_err());
        assert!(seconds(Duration::from_secs(u64::MAX)).is_err());
    }
}
