//! [`LocalSignals`]: what an autoscaler measures on one host — each
//! replica's CPU and memory from `/proc`, and its requests per second,
//! p95 latency and open connections from Atlas's proxy — as a
//! [`MetricProvider`].
//!
//! # Queries
//!
//! Per replica, `NAME:REPLICA` (the autoscaler's per-pod queries put the
//! replica's name where `{{pod}}` stands):
//!
//! | name | value |
//! |---|---|
//! | `requests_per_second` | requests the proxy relayed to it per second over the window |
//! | `latency_p95` | the 95th percentile of its response time over the window, seconds |
//! | `open_connections` | connections the proxy holds open to it now |
//! | `cpu` | CPU it used over the window, in cores (user + system time of its process) |
//! | `memory` | its resident memory now, in bytes |
//!
//! Any other query (without a replica) goes to the proxy's own
//! [`ProxyMetrics`](crate::proxy::ProxyMetrics), e.g. `latency_p95:stable`
//! for the service's p95.
//!
//! Rates over a window are the difference between now and the newest
//! reading at least a window old that this provider took before (it keeps
//! the readings of the last hour), or, when it has none that old, since
//! the replica was listed with the proxy (its process started, for CPU):
//! call it regularly, as an autoscaler does.
//!
//! CPU and memory come from `/proc/PID/stat` and `/proc/PID/status` of the
//! replica's own process (not processes it started), so they need Linux;
//! elsewhere they are "no data", which the autoscaler treats as a missing
//! metric.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atlas_core::autoscale::{HorizontalPolicy, PodState};
use atlas_core::{
    Error, Measurement, MetricProvider, MetricQuery, Result, ServiceName, Slot, Workloads,
};

use crate::process::ProcessWorkloads;
use crate::proxy::{ProxyRouter, ReplicaSnapshot};

/// How long readings are kept for window differences.
const HISTORY: Duration = Duration::from_secs(3600);

/// Clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, 100 on
/// every Linux architecture (the kernel converts to it for user space).
const USER_HZ: f64 = 100.0;

const REPLICA_QUERIES: &str = "requests_per_second, latency_p95, open_connections, cpu, memory";

/// CPU time of a process at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    at: Instant,
    cpu_seconds: f64,
}

/// The replica signals of one service on one host, as a
/// [`MetricProvider`]; see the [module documentation](self) for the
/// queries.
pub struct LocalSignals {
    service: ServiceName,
    workloads: Arc<ProcessWorkloads>,
    router: Arc<ProxyRouter>,
    requests: BTreeMap<String, f64>,
    proxy_history: Mutex<HashMap<String, VecDeque<ReplicaSnapshot>>>,
    cpu_history: Mutex<HashMap<u32, VecDeque<CpuReading>>>,
}

impl std::fmt::Debug for LocalSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSignals")
            .field("service", &self.service)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl LocalSignals {
    /// Signals of `service`, whose replicas `workloads` runs behind
    /// `router`. Each replica's resource requests (the base of CPU and
    /// memory utilization) default to 1 core and 256 MiB.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when `router` serves another service.
    pub fn new(
        service: ServiceName,
        workloads: Arc<ProcessWorkloads>,
        router: Arc<ProxyRouter>,
    ) -> Result<Self> {
        if *router.service() != service {
            return Err(Error::not_found(format!(
                "service {service} on the proxy router of service {}",
                router.service()
            )));
        }
        Ok(LocalSignals {
            service,
            workloads,
            router,
            requests: BTreeMap::from([
                ("cpu".to_string(), 1.0),
                ("memory".to_string(), 256.0 * 1024.0 * 1024.0),
            ]),
            proxy_history: Mutex::new(HashMap::new()),
            cpu_history: Mutex::new(HashMap::new()),
        })
    }

    /// Sets what each replica is taken to request of `resource` (`cpu` in
    /// cores, `memory` in bytes).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `requests.RESOURCE` for an amount
    /// that is not a positive number.
    pub fn with_request(mut self, resource: &str, amount: f64) -> Result<Self> {
        if !(amount.is_finite() && amount > 0.0) {
            return Err(Error::invalid(
                format!("requests.{resource}"),
                format!("must be a positive number, got {amount}"),
            ));
        }
        self.requests.insert(resource.to_string(), amount);
        Ok(self)
    }

    /// `policy` with each metric this provider knows measured by it:
    /// `cpu`, `memory`, `requests_per_second` and `open_connections` per
    /// replica, `p95_latency_seconds` as the p95 of the slot with the
    /// most traffic.
    pub fn queries_for(policy: HorizontalPolicy) -> HorizontalPolicy {
        let mut policy = policy;
        for m in &mut policy.metrics {
            let query = match m.name.as_str() {
                "cpu" | "memory" | "requests_per_second" | "open_connections" => {
                    format!("{}:{{{{pod}}}}", m.name)
                }
                "p95_latency_seconds" => "latency_p95:stable".to_string(),
                _ => continue,
            };
            m.query = query;
        }
        policy
    }

    /// The replicas of `slot` as the autoscaler counts them: each ready or
    /// not, with this provider's resource requests.
    ///
    /// # Errors
    ///
    /// Whatever [`Workloads::status`] returns.
    pub async fn pods(&self, slot: Slot) -> Result<Vec<PodState>> {
        let status = self.workloads.status(&self.service, slot).await?;
        let ready: Vec<&str> = status
            .endpoints
            .iter()
            .map(|e| e.replica.as_str())
            .collect();
        let pids = self.workloads.pids(&self.service, slot).await;
        Ok(pids
            .into_iter()
            .map(|(index, _)| {
                let name = replica_name(&self.service, slot, index);
                let mut pod = if ready.contains(&name.as_str()) {
                    PodState::ready(name)
                } else {
                    PodState::not_ready(name)
                };
                pod.requests = self.requests.clone();
                pod
            })
            .collect())
    }

    fn proxy_snapshot(&self, replica: &str) -> Option<ReplicaSnapshot> {
        [Slot::Blue, Slot::Green].into_iter().find_map(|slot| {
            self.router
                .replica_snapshots(slot)
                .into_iter()
                .find(|s| s.replica == replica)
        })
    }

    /// The newest earlier snapshot at least `window` old, if any, after
    /// recording `now`.
    fn proxy_base(&self, now: &ReplicaSnapshot, window: Duration) -> Option<ReplicaSnapshot> {
        let mut history = self
            .proxy_history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let kept = history.entry(now.replica.clone()).or_default();
        // A replica listed again starts counting anew.
        kept.retain(|s| s.since == now.since && now.taken.duration_since(s.taken) <= HISTORY);
        let base = pick_base(kept.iter(), |s| s.taken, now.taken, window).cloned();
        kept.push_back(now.clone());
        base
    }

    async fn pid_of(&self, replica: &str) -> Option<u32> {
        for slot in [Slot::Blue, Slot::Green] {
            for (index, pid) in self.workloads.pids(&self.service, slot).await {
                if replica_name(&self.service, slot, index) == replica {
                    return Some(pid);
                }
            }
        }
        None
    }

    fn cpu_cores(&self, pid: u32, window: Duration) -> Option<f64> {
        let stat = read_stat(pid)?;
        let now = CpuReading {
            at: Instant::now(),
            cpu_seconds: stat.cpu_seconds,
        };
        let base = {
            let mut history = self
                .cpu_history
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let kept = history.entry(pid).or_default();
            kept.retain(|r| now.at.duration_since(r.at) <= HISTORY);
            let base = pick_base(kept.iter(), |r| r.at, now.at, window).copied();
            kept.push_back(now);
            base
        };
        match base {
            Some(b) => {
                let secs = now.at.duration_since(b.at).as_secs_f64();
                (secs > 0.0).then(|| (now.cpu_seconds - b.cpu_seconds).max(0.0) / secs)
            }
            None => (stat.age_seconds > 0.0).then(|| stat.cpu_seconds / stat.age_seconds),
        }
    }

    async fn measure_replica(
        &self,
        name: &str,
        replica: &str,
        window: Duration,
    ) -> Result<Measurement> {
        let value = match name {
            "requests_per_second" | "latency_p95" | "open_connections" => {
                let Some(now) = self.proxy_snapshot(replica) else {
                    // Not listed with the proxy (not ready, or gone): no data.
                    return Ok(Measurement::NoData);
                };
                let base = self.proxy_base(&now, window);
                match name {
                    "requests_per_second" => Some(now.request_rate(base.as_ref())),
                    "latency_p95" => now
                        .latency_quantile(base.as_ref(), 0.95)
                        .map(|d| d.as_secs_f64()),
                    _ => Some(now.open_connections as f64),
                }
            }
            "cpu" | "memory" => {
                let Some(pid) = self.pid_of(replica).await else {
                    return Ok(Measurement::NoData);
                };
                if name == "cpu" {
                    self.cpu_cores(pid, window)
                } else {
                    resident_bytes(pid)
                }
            }
            other => {
                return Err(Error::invalid(
                    "query",
                    format!("unknown replica signal {other:?}; expected one of {REPLICA_QUERIES}"),
                ));
            }
        };
        Ok(value.map_or(Measurement::NoData, Measurement::from_f64))
    }
}

/// The newest of `items` taken at least `window` before `now`. A younger
/// one would measure a shorter span than asked (down to nothing, for two
/// queries in a row), so without one the caller counts from the start.
fn pick_base<'a, T>(
    items: impl DoubleEndedIterator<Item = &'a T>,
    taken: impl Fn(&T) -> Instant,
    now: Instant,
    window: Duration,
) -> Option<&'a T> {
    items.rev().find(|t| now.duration_since(taken(t)) >= window)
}

fn replica_name(service: &ServiceName, slot: Slot, index: u32) -> String {
    format!("{service}-{slot}-{index}")
}

struct Stat {
    cpu_seconds: f64,
    age_seconds: f64,
}

/// User + system CPU time and age of process `pid`, from
/// `/proc/PID/stat` and `/proc/uptime`.
fn read_stat(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, starttime 22.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) / USER_HZ;
    let started = field(22)? / USER_HZ;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Stat {
        cpu_seconds,
        age_seconds: uptime - started,
    })
}

/// Resident memory of process `pid` in bytes (`VmRSS` of
/// `/proc/PID/status`).
fn resident_bytes(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

#[async_trait]
impl MetricProvider for LocalSignals {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        let text = query.query.trim();
        if query.window.is_zero() {
            return Err(Error::invalid("query.window", "must be greater than zero"));
        }
        let measurement = match text.split_once(':') {
            Some((name, replica)) if replica.trim().starts_with(&format!("{}-", self.service)) => {
                self.measure_replica(name.trim(), replica.trim(), query.window)
                    .await?
            }
            _ => self.router.metrics().measure(query).await?,
        };
        tracing::debug!(service = %self.service, query = text, %measurement, "local signal measured");
        Ok(measurement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let stat = read_stat(pid).expect("/proc/self/stat");
        assert!(stat.cpu_seconds >= 0.0 && stat.age_seconds > 0.0);
        let rss = resident_bytes(pid).expect("VmRSS");
        assert!(rss > 1024.0 * 1024.0, "resident memory {rss}");
        assert!(read_stat(u32::MAX).is_none());
    }

    #[test]
    fn the_base_is_the_newest_reading_a_window_old() {
        let t0 = Instant::now();
        let times = [
            t0,
            t0 + Duration::from_secs(10),
            t0 + Duration::from_secs(20),
        ];
        let now = t0 + Duration::from_secs(30);
        let base = |w| pick_base(times.iter(), |t| *t, now, Duration::from_secs(w)).copied();
        assert_eq!(base(15), Some(times[1]));
        assert_eq!(base(10), Some(times[2]));
        assert_eq!(base(60), None, "none is old enough");
    }
}
