//! The daemon itself: one proxy router for every service, one supervisor
//! for every replica, the persisted state, and the answers to admin calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use atlas_core::{
    Endpoint, Error, MetricProvider, Phase, Result, RolloutState, ServiceName, Slot, StateStore,
    TrafficRouter, Workloads,
};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::api::{
    ApiError, ApiRequest, ApiResponse, SequencedCommand, ServiceStatus, SlotView, WireLease,
    WireVersioned,
};
use super::persist::{Persisted, PersistedService, StateFile, now_ms};
use super::server::{Caller, Handler};
use crate::file_store::FileStateStore;
use crate::process::{ProcessWorkloads, ReplicaEventKind, ReplicaRecord};
use crate::proxy::{ProxyRouter, ProxyService};

/// The window `atlas status` reports request rate, p95 and errors over.
const STATUS_WINDOW: Duration = Duration::from_secs(60);

/// The longest `next_command` wait the daemon grants.
const MAX_COMMAND_WAIT: Duration = Duration::from_secs(30);

/// The lock serialising changes to one service, and who holds it.
type Claim = (Arc<Mutex<()>>, String);

/// The daemon's state shared by the admin handler and its background tasks.
pub(crate) struct Core {
    pub(crate) router: ProxyRouter,
    /// The supervisor; replaced by a fresh one that adopts the replicas
    /// again when a hand-over fails after this one released them.
    workloads: ArcSwap<ProcessWorkloads>,
    rollouts: FileStateStore,
    file: StateFile,
    state: Mutex<Persisted>,
    /// Bumped whenever a steering command is posted.
    commands: watch::Sender<u64>,
    /// Who is changing which service right now.
    busy: SyncMutex<HashMap<ServiceName, Claim>>,
    /// The records of replicas the supervisor released (hand-over,
    /// shutdown): from then on they are what the state file names, since
    /// the released supervisor knows none.
    released: SyncMutex<Option<Vec<ReplicaRecord>>>,
}

impl Core {
    pub(crate) fn new(
        router: ProxyRouter,
        workloads: ProcessWorkloads,
        state_dir: &Path,
        state: Persisted,
    ) -> Result<Core> {
        let rollouts = FileStateStore::new(state_dir.join("rollouts"))?;
        Ok(Core {
            router,
            workloads: ArcSwap::from_pointee(workloads),
            rollouts,
            file: StateFile::new(state_dir),
            state: Mutex::new(state),
            commands: watch::channel(0).0,
            busy: SyncMutex::new(HashMap::new()),
            released: SyncMutex::new(None),
        })
    }

    /// The supervisor in charge now.
    pub(crate) fn workloads(&self) -> Arc<ProcessWorkloads> {
        self.workloads.load_full()
    }

    /// The state file's path.
    pub(crate) fn state_path(&self) -> PathBuf {
        self.file.path().to_owned()
    }

    /// Writes the state with the supervisor's current replica records.
    pub(crate) async fn persist(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        self.save(&mut state).await
    }

    /// Writes the state naming `records`, the replicas the supervisor just
    /// released, and keeps naming them in later writes.
    pub(crate) async fn persist_released(&self, records: Vec<ReplicaRecord>) -> Result<()> {
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = Some(records);
        self.persist().await
    }

    /// Supervises again (a hand-over failed): records come from the
    /// supervisor once more.
    pub(crate) fn resume_supervising(&self, workloads: ProcessWorkloads) {
        self.workloads.store(Arc::new(workloads));
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Persists whenever a replica starts, exits, is restarted or adopted,
    /// so the records name the live pids.
    pub(crate) fn watch_replicas(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let core = Arc::downgrade(self);
        let mut events = self.workloads().events();
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => Some(event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(core) = core.upgrade() else { return };
                if let Some(event) = &event {
                    match &event.kind {
                        ReplicaEventKind::Exited { status } => tracing::warn!(
                            service = %event.service, slot = %event.slot, index = event.index, status = %status,
                            "replica exited"
                        ),
                        ReplicaEventKind::RestartScheduled { attempt, after } => tracing::warn!(
                            service = %event.service, slot = %event.slot, index = event.index, attempt, after = ?after,
                            "replica restart scheduled"
                        ),
                        _ => {}
                    }
                }
                if let Err(e) = core.persist().await {
                    tracing::error!(error = %e, "cannot persist the daemon state after a replica event");
                }
            }
        })
    }

    fn view(&self, service: &ServiceName) -> Result<ProxyService> {
        self.router
            .service_view(service)
            .ok_or_else(|| Error::NotFound {
                what: format!("service {service} is not registered (atlas services add)"),
            })
    }

    /// Serialises changes to one service: the same caller waits its turn,
    /// another caller is refused with a conflict while a change runs.
    async fn claim(
        &self,
        service: &ServiceName,
        caller: &Caller,
        op: &str,
    ) -> Result<OwnedMutexGuard<()>> {
        let (lock, holder) = {
            let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = busy
                .entry(service.clone())
                .or_insert_with(|| (Arc::new(Mutex::new(())), String::new()));
            (entry.0.clone(), entry.1.clone())
        };
        let me = caller_key(caller);
        let guard = match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) if holder.starts_with(&me) => lock.lock_owned().await,
            Err(_) => {
                return Err(Error::Conflict {
                    what: format!("service {service} is being changed by {holder}; try again"),
                });
            }
        };
        if let Some(entry) = self
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(service)
        {
            entry.1 = format!("{me} ({op})");
        }
        Ok(guard)
    }

    async fn answer(&self, caller: &Caller, request: ApiRequest) -> Result<ApiResponse> {
        if let Some(service) = request.service() {
            // Names arrive unchecked from JSON: check them as the type would.
            ServiceName::new(service.as_str())?;
        }
        let _guard = match (&request, request.service()) {
            (
                ApiRequest::RegisterService { .. }
                | ApiRequest::RemoveService { .. }
                | ApiRequest::SetSplit { .. }
                | ApiRequest::SetEndpoints { .. }
                | ApiRequest::Deploy { .. }
                | ApiRequest::Scale { .. }
                | ApiRequest::Drain { .. },
                Some(service),
            ) => Some(self.claim(service, caller, request.op()).await?),
            _ => None,
        };
        match request {
            ApiRequest::RegisterService { service, route } => {
                let mut state = self.state.lock().await;
                if state.services.contains_key(&service) {
                    return Err(Error::Conflict {
                        what: format!("service {service} is already registered"),
                    });
                }
                self.router.add_service(service.clone(), route.clone())?;
                state.services.insert(
                    service,
                    PersistedService {
                        route,
                        split: None,
                        endpoints: Default::default(),
                    },
                );
                self.save(&mut state).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::RemoveService { service } => {
                if !self.state.lock().await.services.contains_key(&service) {
                    return Err(Error::not_found(format!("service {service}")));
                }
                self.router.remove_service(&service).await?;
                for slot in [Slot::Blue, Slot::Green] {
                    self.workloads().scale(&service, slot, 0).await?;
                }
                let mut state = self.state.lock().await;
                state.services.remove(&service);
                self.save(&mut state).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::Services => {
                let state = self.state.lock().await;
                Ok(ApiResponse::Services {
                    services: state
                        .services
                        .iter()
                        .map(|(name, s)| (name.clone(), s.route.clone()))
                        .collect(),
                })
            }
            ApiRequest::SetSplit { service, split } => {
                self.view(&service)?.set_split(&service, &split).await?;
                let mut state = self.state.lock().await;
                if let Some(s) = state.services.get_mut(&service) {
                    s.split = Some(split);
                }
                self.save(&mut state).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::Split { service } => Ok(ApiResponse::Split {
                split: self.view(&service)?.split(&service).await?,
            }),
            ApiRequest::SetEndpoints {
                service,
                slot,
                endpoints,
            } => {
                let view = self.view(&service)?;
                // Persist first: a daemon that dies while the old endpoints
                // drain comes back with the new ones.
                {
                    let mut state = self.state.lock().await;
                    if let Some(s) = state.services.get_mut(&service) {
                        s.endpoints.insert(slot, endpoints.clone());
                    }
                    self.save(&mut state).await?;
                }
                view.set_endpoints(&service, slot, &endpoints).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::Deploy {
                service,
                slot,
                release,
                replicas,
            } => {
                self.workloads()
                    .deploy(&service, slot, &release, replicas)
                    .await?;
                self.persist().await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::Scale {
                service,
                slot,
                replicas,
            } => {
                self.workloads().scale(&service, slot, replicas).await?;
                self.persist().await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::SlotStatus { service, slot } => Ok(ApiResponse::SlotStatus {
                status: self.workloads().status(&service, slot).await?,
            }),
            ApiRequest::Drain { service, slot } => {
                let view = self.view(&service)?;
                {
                    let mut state = self.state.lock().await;
                    if let Some(s) = state.services.get_mut(&service) {
                        s.endpoints.insert(slot, Vec::new());
                    }
                    self.save(&mut state).await?;
                }
                view.set_endpoints(&service, slot, &[]).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::Status { service } => {
                let names: Vec<ServiceName> = match service {
                    Some(s) => {
                        self.view(&s)?;
                        vec![s]
                    }
                    None => self.state.lock().await.services.keys().cloned().collect(),
                };
                let mut services = Vec::with_capacity(names.len());
                for name in names {
                    services.push(self.service_status(&name).await?);
                }
                Ok(ApiResponse::Status { services })
            }
            ApiRequest::Logs {
                service,
                slot,
                index,
                lines,
            } => {
                let path = self.workloads().log_path(&service, slot, index);
                let tail = tail_lines(&path, lines.min(10_000) as usize).await?;
                Ok(ApiResponse::Logs {
                    path: path.display().to_string(),
                    lines: tail,
                })
            }
            ApiRequest::LoadState { service } => Ok(ApiResponse::State {
                state: self.rollouts.load(&service).await?.map(|v| {
                    Box::new(WireVersioned {
                        version: v.version,
                        state: v.value,
                    })
                }),
            }),
            ApiRequest::CompareAndSwap {
                service,
                expected,
                state,
            } => {
                let version = self
                    .rollouts
                    .compare_and_swap(&service, expected, &state)
                    .await?;
                if state.phase == Phase::Promoted {
                    self.record_promotion(&service, &state).await?;
                }
                Ok(ApiResponse::Version { version })
            }
            ApiRequest::AcquireLease {
                service,
                holder,
                ttl,
            } => {
                let mut state = self.state.lock().await;
                let lease = state.acquire(&service, &holder, ttl, now_ms())?;
                self.save(&mut state).await?;
                Ok(ApiResponse::Lease {
                    lease: WireLease::from(&lease),
                })
            }
            ApiRequest::RenewLease { lease } => {
                let mut state = self.state.lock().await;
                state.renew(&lease.into(), now_ms())?;
                self.save(&mut state).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::ReleaseLease { lease } => {
                let mut state = self.state.lock().await;
                state.release(&lease.into());
                self.save(&mut state).await?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::Steer { service, command } => {
                let mut state = self.state.lock().await;
                let seq = state.commands.get(&service).map_or(0, |c| c.seq) + 1;
                state
                    .commands
                    .insert(service.clone(), SequencedCommand { seq, command });
                self.save(&mut state).await?;
                drop(state);
                self.commands.send_modify(|n| *n += 1);
                tracing::info!(service = %service, %command, seq, "steering command posted");
                Ok(ApiResponse::Done)
            }
            ApiRequest::NextCommand {
                service,
                after,
                wait,
            } => {
                let mut changed = self.commands.subscribe();
                let deadline = tokio::time::Instant::now() + wait.min(MAX_COMMAND_WAIT);
                loop {
                    if let Some(command) = self.state.lock().await.commands.get(&service).copied()
                        && command.seq > after
                    {
                        return Ok(ApiResponse::Command {
                            command: Some(command),
                        });
                    }
                    if tokio::time::timeout_at(deadline, changed.changed())
                        .await
                        .is_err()
                    {
                        return Ok(ApiResponse::Command { command: None });
                    }
                }
            }
            ApiRequest::History { service } => Ok(ApiResponse::History {
                releases: self
                    .state
                    .lock()
                    .await
                    .history
                    .get(&service)
                    .cloned()
                    .unwrap_or_default(),
            }),
            ApiRequest::Metrics => Ok(ApiResponse::Metrics {
                text: self.router.metrics().render_prometheus(),
            }),
            ApiRequest::Measure { query } => Ok(ApiResponse::Measurement {
                measurement: self.router.metrics().measure(&query).await?,
            }),
        }
    }

    async fn save(&self, state: &mut Persisted) -> Result<()> {
        let released = self
            .released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        state.replicas = match released {
            Some(records) => records,
            None => self.workloads().records().await,
        };
        self.file.save(state)
    }

    /// Appends a promoted release to the service's history once per
    /// rollout.
    async fn record_promotion(&self, service: &ServiceName, rollout: &RolloutState) -> Result<()> {
        let mut state = self.state.lock().await;
        let history = state.history.entry(service.clone()).or_default();
        if history.last() != Some(&rollout.rollout.release) {
            history.push(rollout.rollout.release.clone());
            // Keep the last 20: enough for `atlas undo`, bounded forever.
            let excess = history.len().saturating_sub(20);
            history.drain(..excess);
            self.save(&mut state).await?;
        }
        Ok(())
    }

    async fn service_status(&self, service: &ServiceName) -> Result<ServiceStatus> {
        let view = self.view(service)?;
        let route = self
            .state
            .lock()
            .await
            .services
            .get(service)
            .map(|s| s.route.clone())
            .ok_or_else(|| Error::not_found(format!("service {service}")))?;
        let split = view.split(service).await?;
        let metrics = view.metrics();
        let mut slots = Vec::with_capacity(2);
        let (mut requests, mut errors, mut covered, mut p95) =
            (0u64, 0u64, Duration::ZERO, None::<Duration>);
        let replicas = self.workloads().replicas().await;
        for slot in [Slot::Blue, Slot::Green] {
            let status = self.workloads().status(service, slot).await?;
            let stats = metrics.window_stats(slot, STATUS_WINDOW);
            requests += stats.requests;
            errors += stats.server_errors + stats.proxy_errors;
            covered = covered.max(stats.covered);
            // The busier slot's p95 stands for the service's (percentiles
            // of two windows do not combine exactly).
            if stats.requests > 0 && (p95.is_none() || stats.requests * 2 >= requests) {
                p95 = stats.latency_p95.or(p95);
            }
            slots.push(SlotView {
                weight: split.as_ref().map_or(0, |s| s.weight_of(slot).percent()),
                routed: view.endpoints(slot),
                in_flight: view.in_flight(slot),
                restarts: replicas
                    .iter()
                    .filter(|r| &r.service == service && r.slot == slot)
                    .map(|r| r.restarts)
                    .sum(),
                status,
            });
        }
        let rollout = self
            .rollouts
            .load(service)
            .await?
            .map(|v| describe(&v.value));
        Ok(ServiceStatus {
            service: service.clone(),
            route,
            split,
            slots,
            request_rate: if covered.is_zero() {
                0.0
            } else {
                requests as f64 / covered.as_secs_f64()
            },
            p95_ms: p95.map(|d| d.as_secs_f64() * 1000.0),
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            rollout,
        })
    }

    /// Routes and endpoints back as persisted, after the supervisor adopted
    /// or restarted the replicas; an endpoint whose replica had to move to
    /// another port is listed at its new address.
    pub(crate) async fn restore_routes(&self) -> Result<()> {
        let services = self.state.lock().await.services.clone();
        for (service, persisted) in services {
            let view = self
                .router
                .add_service(service.clone(), persisted.route.clone())?;
            if let Some(split) = &persisted.split {
                view.set_split(&service, split).await?;
            }
            for (slot, endpoints) in &persisted.endpoints {
                let live = self.workloads().status(&service, *slot).await?.endpoints;
                let endpoints: Vec<Endpoint> = endpoints
                    .iter()
                    .map(|e| {
                        live.iter()
                            .find(|l| l.replica == e.replica)
                            .cloned()
                            .unwrap_or_else(|| e.clone())
                    })
                    .collect();
                view.set_endpoints(&service, *slot, &endpoints).await?;
            }
            tracing::info!(service = %service, "routes restored");
        }
        Ok(())
    }
}

fn caller_key(caller: &Caller) -> String {
    match caller {
        Caller::Local {
            pid: Some(pid),
            uid,
            ..
        } => format!("uid {uid} pid {pid}"),
        other => other.to_string(),
    }
}

/// One line about a rollout, for `atlas status`.
fn describe(state: &RolloutState) -> String {
    let phase = match &state.phase {
        Phase::Promoted => "promoted".to_owned(),
        Phase::RolledBack { reason } => format!("rolled back: {reason}"),
        other => format!("{other:?}").to_lowercase(),
    };
    format!(
        "{} → {} ({}), step {}, canary {} %{}",
        state.stable_version.as_deref().unwrap_or("nothing"),
        state.rollout.release.version,
        phase,
        state.step,
        state.weight.percent(),
        if state.paused { ", paused" } else { "" }
    )
}

/// The last `n` lines of a file, reading at most its last 4 MiB.
async fn tail_lines(path: &Path, n: usize) -> Result<Vec<String>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!("log {}", path.display())));
        }
        Err(e) => {
            return Err(Error::Backend {
                backend: "atlasd".into(),
                message: format!("cannot read {}: {e}", path.display()),
                source: Some(Box::new(e)),
            });
        }
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(4 * 1024 * 1024);
    let _ = file.seek(std::io::SeekFrom::Start(start)).await;
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().rev().take(n).map(str::to_owned).collect();
    lines.reverse();
    Ok(lines)
}

#[async_trait]
impl Handler for Core {
    async fn handle(&self, caller: &Caller, request: ApiRequest) -> Result<ApiResponse, ApiError> {
        self.answer(caller, request).await.map_err(ApiError::from)
    }

    fn metrics_text(&self) -> String {
        self.router.metrics().render_prometheus()
    }
}
