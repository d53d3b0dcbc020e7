//! [`MockWorkloads`]: an in-memory platform with readiness delays and
//! injectable replica failures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::guard::lock;
use crate::domain::{Endpoint, Release, ServiceName, Slot, SlotStatus};
use crate::error::{Error, Result};
use crate::workloads::Workloads;

/// The first fake port handed to a replica; ports then count up, wrapping
/// back here after 65535.
pub const FIRST_MOCK_PORT: u16 = 20_000;

/// One call a [`MockWorkloads`] received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadsCall {
    /// [`Workloads::deploy`].
    Deploy {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// The release's version.
        version: String,
        /// Replicas asked for.
        replicas: u32,
    },
    /// [`Workloads::scale`].
    Scale {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// Replicas asked for.
        replicas: u32,
    },
    /// [`Workloads::status`].
    Status {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
    },
}

#[derive(Debug, Clone)]
struct Replica {
    endpoint: Endpoint,
    ready_at: Instant,
    /// Set by [`MockWorkloads::fail_replica`].
    failure: Option<String>,
}

#[derive(Debug, Clone)]
struct SlotRecord {
    release: Release,
    replicas: Vec<Replica>,
}

#[derive(Debug)]
struct State {
    ready_delay: Duration,
    never_ready: BTreeSet<String>,
    failing_versions: BTreeMap<String, String>,
    slots: BTreeMap<(ServiceName, Slot), SlotRecord>,
    calls: Vec<WorkloadsCall>,
    next_port: u16,
}

impl State {
    fn start_replica(&mut self, service: &ServiceName, slot: Slot, index: usize) -> Replica {
        let port = self.next_port;
        self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_MOCK_PORT);
        Replica {
            endpoint: Endpoint::new(
                format!("{service}-{slot}-{index}"),
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ),
            ready_at: Instant::now() + self.ready_delay,
            failure: None,
        }
    }

    /// Starts or stops replicas at the end of the list to reach `count`.
    fn resize(&mut self, service: &ServiceName, slot: Slot, count: u32) {
        let key = (service.clone(), slot);
        let Some(mut record) = self.slots.remove(&key) else {
            return;
        };
        let count = count as usize;
        record.replicas.truncate(count);
        for i in record.replicas.len()..count {
            let replica = self.start_replica(service, slot, i);
            record.replicas.push(replica);
        }
        self.slots.insert(key, record);
    }
}

/// An in-memory [`Workloads`]: slots per service, each running a release
/// with replicas that become ready a configurable delay after they start
/// (tokio time, so a paused clock skips the wait).
///
/// Replicas are named `{service}-{slot}-{i}` (`i` their position in the
/// slot) and listen on `127.0.0.1` at fake ports, distinct for every
/// replica started by one mock. Nothing listens there; pair the mock with
/// [`ScriptedProbe`](super::ScriptedProbe).
///
/// It follows the [`Workloads`] contract exactly: deploying a release the
/// slot already runs keeps its healthy replicas (only the replica count
/// changes); another release replaces every replica. Scaling down stops the
/// last replicas first; scaling to 0 keeps the release recorded; scaling a
/// slot that never ran anything is [`NotFound`](Error::NotFound) unless the
/// count is 0. An untouched slot reports [`SlotStatus::empty`].
///
/// Failures: [`fail_replica`](Self::fail_replica) makes one replica fail
/// (reported in [`SlotStatus::failures`], no longer ready) until a deploy
/// restarts it; [`fail_version`](Self::fail_version) makes every replica of
/// a version fail once it would be ready; [`never_ready`](Self::never_ready)
/// keeps a version's replicas unready forever.
///
/// Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct MockWorkloads {
    state: Arc<Mutex<State>>,
}

impl Default for MockWorkloads {
    fn default() -> Self {
        Self::new()
    }
}

impl MockWorkloads {
    /// A platform whose replicas are ready as soon as they start.
    pub fn new() -> Self {
        MockWorkloads {
            state: Arc::new(Mutex::new(State {
                ready_delay: Duration::ZERO,
                never_ready: BTreeSet::new(),
                failing_versions: BTreeMap::new(),
                slots: BTreeMap::new(),
                calls: Vec::new(),
                next_port: FIRST_MOCK_PORT,
            })),
        }
    }

    /// Replicas become ready `delay` after they start.
    pub fn with_ready_delay(self, delay: Duration) -> Self {
        self.set_ready_delay(delay);
        self
    }

    /// Changes the readiness delay of replicas started from now on.
    pub fn set_ready_delay(&self, delay: Duration) {
        lock(&self.state).ready_delay = delay;
    }

    /// Replicas running `version` never become ready (they still count as
    /// updated).
    pub fn never_ready(&self, version: impl Into<String>) {
        lock(&self.state).never_ready.insert(version.into());
    }

    /// Replicas running `version` fail with `reason` when they would become
    /// ready, as a release that crashes on start. Redeploying the version
    /// does not help; deploying another does.
    pub fn fail_version(&self, version: impl Into<String>, reason: impl Into<String>) {
        lock(&self.state)
            .failing_versions
            .insert(version.into(), reason.into());
    }

    /// Replica `index` of `slot` fails with `reason`: it is no longer ready,
    /// leaves the endpoints, and [`SlotStatus::failures`] reports
    /// `"{replica} {reason}"` until a deploy restarts it or a scale-down
    /// stops it. [`NotFound`](Error::NotFound) if there is no such replica.
    pub fn fail_replica(
        &self,
        service: &ServiceName,
        slot: Slot,
        index: usize,
        reason: impl Into<String>,
    ) -> Result<()> {
        let mut s = lock(&self.state);
        let replica = s
            .slots
            .get_mut(&(service.clone(), slot))
            .and_then(|r| r.replicas.get_mut(index))
            .ok_or_else(|| Error::not_found(format!("replica {index} of {service} {slot}")))?;
        tracing::debug!(replica = %replica.endpoint, "mock replica failed");
        replica.failure = Some(reason.into());
        Ok(())
    }

    /// Replicas asked for in `slot` (0 for an untouched slot).
    pub fn replicas(&self, service: &ServiceName, slot: Slot) -> u32 {
        lock(&self.state)
            .slots
            .get(&(service.clone(), slot))
            .map_or(0, |r| r.replicas.len() as u32)
    }

    /// The version `slot` was last asked to run.
    pub fn version(&self, service: &ServiceName, slot: Slot) -> Option<String> {
        self.release(service, slot).map(|r| r.version)
    }

    /// The release `slot` was last asked to run.
    pub fn release(&self, service: &ServiceName, slot: Slot) -> Option<Release> {
        lock(&self.state)
            .slots
            .get(&(service.clone(), slot))
            .map(|r| r.release.clone())
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<WorkloadsCall> {
        lock(&self.state).calls.clone()
    }

    /// The deploy and scale calls received, in order (status polls left out).
    pub fn changes(&self) -> Vec<WorkloadsCall> {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| !matches!(c, WorkloadsCall::Status { .. }))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Workloads for MockWorkloads {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()> {
        let mut s = lock(&self.state);
        s.calls.push(WorkloadsCall::Deploy {
            service: service.clone(),
            slot,
            version: release.version.clone(),
            replicas,
        });
        release.validate()?;
        let key = (service.clone(), slot);
        let failed: Vec<usize> = match s.slots.get(&key) {
            // The same release again: keep what runs, restart what failed.
            Some(record) if record.release == *release => record
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.failure.is_some())
                .map(|(i, _)| i)
                .collect(),
            _ => {
                s.slots.insert(
                    key.clone(),
                    SlotRecord {
                        release: release.clone(),
                        replicas: Vec::new(),
                    },
                );
                Vec::new()
            }
        };
        for i in failed {
            let fresh = s.start_replica(service, slot, i);
            if let Some(r) = s.slots.get_mut(&key) {
                r.replicas[i] = fresh;
            }
        }
        s.resize(service, slot, replicas);
        tracing::debug!(%service, %slot, version = %release.version, replicas, "mock deploy");
        Ok(())
    }

    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
        let mut s = lock(&self.state);
        s.calls.push(WorkloadsCall::Scale {
            service: service.clone(),
            slot,
            replicas,
        });
        if !s.slots.contains_key(&(service.clone(), slot)) {
            if replicas == 0 {
                return Ok(());
            }
            return Err(Error::not_found(format!(
                "{service} {slot} runs no release to scale"
            )));
        }
        s.resize(service, slot, replicas);
        tracing::debug!(%service, %slot, replicas, "mock scale");
        Ok(())
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        let mut s = lock(&self.state);
        s.calls.push(WorkloadsCall::Status {
            service: service.clone(),
            slot,
        });
        let Some(record) = s.slots.get(&(service.clone(), slot)) else {
            return Ok(SlotStatus::empty(slot));
        };
        let now = Instant::now();
        let version = &record.release.version;
        let crash = s.failing_versions.get(version);
        let never_ready = s.never_ready.contains(version);
        let mut status = SlotStatus {
            slot,
            version: Some(version.clone()),
            desired: record.replicas.len() as u32,
            updated: record.replicas.len() as u32,
            ready: 0,
            endpoints: Vec::new(),
            failures: Vec::new(),
        };
        for r in &record.replicas {
            let started = now >= r.ready_at;
            let failure = match (&r.failure, crash) {
                (Some(reason), _) => Some(reason),
                (None, Some(reason)) if started => Some(reason),
                _ => None,
            };
            if let Some(reason) = failure {
                status
                    .failures
                    .push(format!("{} {reason}", r.endpoint.replica));
            } else if started && !never_ready {
                status.ready += 1;
                status.endpoints.push(r.endpoint.clone());
            }
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceName {
        ServiceName::new("checkout").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_become_ready_after_the_delay() {
        let w = MockWorkloads::new().with_ready_delay(Duration::from_secs(5));
        w.deploy(&svc(), Slot::Green, &Release::new("v1", "app"), 2)
            .await
            .unwrap();
        let s = w.status(&svc(), Slot::Green).await.unwrap();
        assert_eq!((s.desired, s.updated, s.ready), (2, 2, 0));
        assert!(s.endpoints.is_empty());
        tokio::time::sleep(Duration::from_millis(4_999)).await;
        assert_eq!(w.status(&svc(), Slot::Green).await.unwrap().ready, 0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let s = w.status(&svc(), Slot::Green).await.unwrap();
        assert!(s.is_ready());
        let names: Vec<_> = s.endpoints.iter().map(|e| e.replica.as_str()).collect();
        assert_eq!(names, ["checkout-green-0", "checkout-green-1"]);
        assert_ne!(s.endpoints[0].addr.port(), s.endpoints[1].addr.port());
        assert!(s.endpoints.iter().all(|e| e.addr.ip().is_loopback()));
    }

    #[tokio::test(start_paused = true)]
    async fn never_ready_versions_stay_unready() {
        let w = MockWorkloads::new();
        w.never_ready("v2");
        w.deploy(&svc(), Slot::Blue, &Release::new("v2", "app"), 3)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let s = w.status(&svc(), Slot::Blue).await.unwrap();
        assert_eq!((s.desired, s.updated, s.ready), (3, 3, 0));
        assert!(!s.is_ready());
        assert!(s.failures.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_replicas_are_reported_until_a_deploy_restarts_them() {
        let w = MockWorkloads::new();
        let v1 = Release::new("v1", "app");
        w.deploy(&svc(), Slot::Blue, &v1, 2).await.unwrap();
        let before = w.status(&svc(), Slot::Blue).await.unwrap();
        w.fail_replica(&svc(), Slot::Blue, 1, "exited with status 3")
            .unwrap();
        let s = w.status(&svc(), Slot::Blue).await.unwrap();
        assert_eq!(s.failures, ["checkout-blue-1 exited with status 3"]);
        assert_eq!(s.ready, 1);
        assert_eq!(s.endpoints, before.endpoints[..1]);
        assert!(
            w.fail_replica(&svc(), Slot::Blue, 2, "x")
                .unwrap_err()
                .to_string()
                .contains("replica 2")
        );
        // Redeploying the same release restarts the failed replica only.
        w.deploy(&svc(), Slot::Blue, &v1, 2).await.unwrap();
        let s = w.status(&svc(), Slot::Blue).await.unwrap();
        assert!(s.failures.is_empty());
        assert!(s.is_ready());
        assert_eq!(s.endpoints[0], before.endpoints[0]);
        assert_eq!(s.endpoints[1].replica, "checkout-blue-1");
        assert_ne!(s.endpoints[1].addr, before.endpoints[1].addr);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_versions_fail_once_started_and_a_new_release_fixes_them() {
        let w = MockWorkloads::new().with_ready_delay(Duration::from_secs(2));
        w.fail_version("v2", "exited with status 1");
        w.deploy(&svc(), Slot::Green, &Release::new("v2", "app"), 1)
            .await
            .unwrap();
        assert!(
            w.status(&svc(), Slot::Green)
                .await
                .unwrap()
                .failures
                .is_empty()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = w.status(&svc(), Slot::Green).await.unwrap();
        assert_eq!(s.failures, ["checkout-green-0 exited with status 1"]);
        assert_eq!(s.ready, 0);
        w.deploy(&svc(), Slot::Green, &Release::new("v3", "app"), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = w.status(&svc(), Slot::Green).await.unwrap();
        assert!(s.failures.is_empty() && s.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn scale_follows_the_contract_and_calls_are_logged() {
        let w = MockWorkloads::new();
        let err = w.scale(&svc(), Slot::Blue, 2).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        w.scale(&svc(), Slot::Blue, 0).await.unwrap();
        assert_eq!(
            w.status(&svc(), Slot::Blue).await.unwrap(),
            SlotStatus::empty(Slot::Blue)
        );
        w.deploy(&svc(), Slot::Blue, &Release::new("v1", "app"), 3)
            .await
            .unwrap();
        w.scale(&svc(), Slot::Blue, 0).await.unwrap();
        assert_eq!(w.version(&svc(), Slot::Blue).as_deref(), Some("v1"));
        assert_eq!(w.replicas(&svc(), Slot::Blue), 0);
        w.scale(&svc(), Slot::Blue, 1).await.unwrap();
        assert_eq!(w.replicas(&svc(), Slot::Blue), 1);
        let bad = w
            .deploy(&svc(), Slot::Blue, &Release::new("", "app"), 1)
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("release.version"), "{bad}");
        assert_eq!(w.version(&svc(), Slot::Blue).as_deref(), Some("v1"));
        assert_eq!(
            w.changes(),
            [
                WorkloadsCall::Scale {
                    service: svc(),
                    slot: Slot::Blue,
                    replicas: 2
                },
                WorkloadsCall::Scale {
                    service: svc(),
                    slot: Slot::Blue,
                    replicas: 0
                },
                WorkloadsCall::Deploy {
                    service: svc(),
                    slot: Slot::Blue,
                    version: "v1".into(),
                    replicas: 3
                },
                WorkloadsCall::Scale {
                    service: svc(),
                    slot: Slot::Blue,
                    replicas: 0
                },
                WorkloadsCall::Scale {
                    service: svc(),
                    slot: Slot::Blue,
                    replicas: 1
                },
                WorkloadsCall::Deploy {
                    service: svc(),
                    slot: Slot::Blue,
                    version: "".into(),
                    replicas: 1
                },
            ]
        );
        assert_eq!(w.calls().len(), 7, "one status call too");
    }
}
