//! Atlas's own metrics, with `prometheus-client`: what rollouts, analyses
//! and probes are doing, in one registry that later subsystems (backups,
//! migrations, autoscaling) add their metrics to.
//!
//! [`Telemetry`] turns [`RolloutEvent`]s into metrics — feed it from
//! [`Engine::subscribe`](atlas_core::Engine::subscribe) with
//! [`Telemetry::collect`] — and [`InstrumentedProbe`] times every probe
//! attempt. Names follow Prometheus conventions: `atlas_` prefix, base
//! units in the name (`_seconds`, `_ratio`), counters end in `_total`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `atlas_rollout_phase` | gauge | service, phase | 1 for the phase the service's rollout is in, 0 for the others (`progressing`, `paused`, `rolling_back`, `promoted`, `rolled_back`) |
//! | `atlas_rollouts_started_total` | counter | service | rollouts started (resumed ones included) |
//! | `atlas_rollouts_finished_total` | counter | service, outcome | rollouts that ended `promoted` or `rolled_back` |
//! | `atlas_rollbacks_total` | counter | service | rollbacks |
//! | `atlas_traffic_weight_ratio` | gauge | service, slot | share of traffic (0–1) each slot has now |
//! | `atlas_rollout_step_duration_seconds` | histogram | service, step | time from a step's start to its end |
//! | `atlas_analysis_runs_total` | counter | service, template, phase | analysis runs by result |
//! | `atlas_analysis_measurements_total` | counter | service, template, metric, phase | measurements by judgement |
//! | `atlas_analysis_measurement_value` | gauge | service, template, metric | the last value measured |
//! | `atlas_probe_results_total` | counter | service, result | endpoints that became `healthy` or failed (`unhealthy`) their probes during rollouts |
//! | `atlas_probe_attempts_total` | counter | probe, result | single probe attempts ([`InstrumentedProbe`]) |
//! | `atlas_probe_duration_seconds` | histogram | probe, result | time of single probe attempts |
//! | `atlas_backups_total` | counter | repository, result | backups finished ([`Telemetry::backup_finished`]) |
//! | `atlas_backup_last_success_timestamp_seconds` | gauge | repository | when the last successful backup finished |
//! | `atlas_backup_last_size_bytes` | gauge | repository | bytes the last successful backup read |
//! | `atlas_backup_last_restore_test_timestamp_seconds` | gauge | repository | when a test restore last succeeded |
//! | `atlas_failover_last_drill_timestamp_seconds` | gauge | service | when the last failover drill succeeded |
//! | `atlas_autoscale_replicas` | gauge | service, kind | the replica count before (`current`) and after (`desired`) the last autoscaling decision ([`Telemetry::autoscale_decided`]) |
//! | `atlas_autoscale_scale_events_total` | counter | service, direction | decisions that changed the count (`up`, `down`) |
//! | `atlas_autoscale_usage_ratio` | gauge | service, metric | each metric's usage over its target at the last decision (1 = on target) |
//! | `atlas_database_replication_lag_bytes` | gauge | standby | WAL the standby has not replayed ([`Telemetry::replication_observed`]) |
//! | `atlas_database_replication_lag_seconds` | gauge | standby | the age of the standby's last replayed transaction behind the primary |
//! | `atlas_database_replication_streaming` | gauge | standby | 1 while the standby streams, 0 otherwise |
//! | `atlas_failover_events_total` | counter | service, kind | failover controller events by kind ([`Telemetry::failover_event`]) |
//! | `atlas_region_weight_percent` | gauge | service, region | each region's share of traffic after the last change |
//! | `atlas_failover_recovery_seconds` | histogram | service, phase | from a failover's decision to `traffic` moved, `database` writable and `done` |
//! | `atlas_events_lagged_total` | counter | — | events a slow collector missed |

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use atlas_core::analysis::MeasurementPhase;
use atlas_core::autoscale::{MetricOutcome, ScaleDecision};
use atlas_core::database::ReplicationStatus;
use atlas_core::failover::{FailoverEvent, FailoverEventKind};
use atlas_core::{
    Endpoint, Error, EventKind, HealthProbe, ProbeOutcome, Result, RolloutEvent, Step,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// The prefix of every metric in the registry.
pub const PREFIX: &str = "atlas";

/// The content type of [`Telemetry::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PHASES: [&str; 5] = [
    "progressing",
    "paused",
    "rolling_back",
    "promoted",
    "rolled_back",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    service: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    service: String,
    slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    service: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    service: String,
    template: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeasurementLabels {
    service: String,
    template: String,
    metric: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValueLabels {
    service: String,
    template: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    service: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepositoryLabels {
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupResultLabels {
    repository: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    service: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    service: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingMetricLabels {
    service: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StandbyLabels {
    standby: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverKindLabels {
    service: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    service: String,
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecoveryLabels {
    service: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
    result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Seconds since the Unix epoch (0 before it).
fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn step_histogram() -> Histogram {
    // 10 ms to about 45 minutes: a weight change to a long pause.
    Histogram::new(exponential_buckets(0.01, 3.0, 12))
}

fn probe_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn wal_switch_histogram() -> Histogram {
    // 10 ms .. ~5.5 min: an archive_command upload of one 16 MB segment.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

#[derive(Debug)]
struct Families {
    phase: Family<PhaseLabels, Gauge>,
    started: Family<ServiceLabels, Counter>,
    finished: Family<OutcomeLabels, Counter>,
    rollbacks: Family<ServiceLabels, Counter>,
    weight: Family<SlotLabels, FloatGauge>,
    step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
    analysis_runs: Family<RunLabels, Counter>,
    measurements: Family<MeasurementLabels, Counter>,
    measurement_value: Family<ValueLabels, FloatGauge>,
    probe_results: Family<ResultLabels, Counter>,
    probe_attempts: Family<ProbeLabels, Counter>,
    probe_duration: Family<ProbeLabels, Histogram, fn() -> Histogram>,
    backups: Family<BackupResultLabels, Counter>,
    backup_success: Family<RepositoryLabels, FloatGauge>,
    backup_size: Family<RepositoryLabels, Gauge>,
    restore_test: Family<RepositoryLabels, FloatGauge>,
    point_in_time_duration: Family<RepositoryLabels, Histogram, fn() -> Histogram>,
    newest_wal_age: Family<RepositoryLabels, FloatGauge>,
    failover_drill: Family<ServiceLabels, FloatGauge>,
    autoscale_replicas: Family<ReplicaLabels, Gauge>,
    autoscale_events: Family<DirectionLabels, Counter>,
    autoscale_ratio: Family<ScalingMetricLabels, FloatGauge>,
    replication_lag_bytes: Family<StandbyLabels, Gauge>,
    replication_lag_seconds: Family<StandbyLabels, FloatGauge>,
    replication_streaming: Family<StandbyLabels, Gauge>,
    failover_events: Family<FailoverKindLabels, Counter>,
    region_weight: Family<RegionLabels, Gauge>,
    failover_recovery: Family<RecoveryLabels, Histogram, fn() -> Histogram>,
    lagged: Counter,
}

struct Inner {
    registry: RwLock<Registry>,
    names: Mutex<BTreeSet<String>>,
    families: Families,
    /// Start time and step of each rollout's running step, by rollout id.
    steps: Mutex<HashMap<String, (usize, SystemTime)>>,
}

/// Atlas's metric registry and the rollout-event collector that fills it.
///
/// Cheap to clone; clones share one registry. See the module docs for the
/// metrics.
///
/// ```
/// use atlas_metrics::telemetry::Telemetry;
/// let telemetry = Telemetry::new();
/// let text = telemetry.encode();
/// assert!(text.contains("atlas_events_lagged_total 0"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &*lock(&self.inner.names))
            .finish()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Telemetry {
    /// A registry with the rollout, analysis and probe metrics registered.
    pub fn new() -> Self {
        let families = Families {
            phase: Family::default(),
            started: Family::default(),
            finished: Family::default(),
            rollbacks: Family::default(),
            weight: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            analysis_runs: Family::default(),
            measurements: Family::default(),
            measurement_value: Family::default(),
            probe_results: Family::default(),
            probe_attempts: Family::default(),
            probe_duration: Family::new_with_constructor(probe_histogram as fn() -> Histogram),
            backups: Family::default(),
            backup_success: Family::default(),
            backup_size: Family::default(),
            restore_test: Family::default(),
            point_in_time_duration: Family::new_with_constructor(
                wal_switch_histogram as fn() -> Histogram,
            ),
            newest_wal_age: Family::default(),
            failover_drill: Family::default(),
            autoscale_replicas: Family::default(),
            autoscale_events: Family::default(),
            autoscale_ratio: Family::default(),
            replication_lag_bytes: Family::default(),
            replication_lag_seconds: Family::default(),
            replication_streaming: Family::default(),
            failover_events: Family::default(),
            region_weight: Family::default(),
            failover_recovery: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            lagged: Counter::default(),
        };
        let mut registry = Registry::with_prefix(PREFIX);
        let f = &families;
        let mut names = BTreeSet::new();
        let mut reg = |name: &str, help: &str, unit: Option<Unit>, metric: Box<dyn RegisterAs>| {
            names.insert(full_name(name, unit.as_ref()));
            metric.register(&mut registry, name, help, unit);
        };
        reg(
            "rollout_phase",
            "1 for the phase the service's rollout is in, 0 for the others",
            None,
            Box::new(f.phase.clone()),
        );
        reg(
            "rollouts_started",
            "Rollouts started, resumed ones included",
            None,
            Box::new(f.started.clone()),
        );
        reg(
            "rollouts_finished",
            "Rollouts that ended, by outcome",
            None,
            Box::new(f.finished.clone()),
        );
        reg(
            "rollbacks",
            "Rollbacks",
            None,
            Box::new(f.rollbacks.clone()),
        );
        reg(
            "traffic_weight",
            "Share of the service's traffic each slot has",
            Some(Unit::Other("ratio".into())),
            Box::new(f.weight.clone()),
        );
        reg(
            "rollout_step_duration",
            "Time from a rollout step's start to its end",
            Some(Unit::Seconds),
            Box::new(f.step_duration.clone()),
        );
        reg(
            "analysis_runs",
            "Analysis runs, by result",
            None,
            Box::new(f.analysis_runs.clone()),
        );
        reg(
            "analysis_measurements",
            "Analysis measurements, by judgement",
            None,
            Box::new(f.measurements.clone()),
        );
        reg(
            "analysis_measurement_value",
            "The last value an analysis metric measured",
            None,
            Box::new(f.measurement_value.clone()),
        );
        reg(
            "probe_results",
            "Endpoints that became healthy or failed their probes during rollouts",
            None,
            Box::new(f.probe_results.clone()),
        );
        reg(
            "probe_attempts",
            "Single health probe attempts, by result",
            None,
            Box::new(f.probe_attempts.clone()),
        );
        reg(
            "probe_duration",
            "Time of single health probe attempts",
            Some(Unit::Seconds),
            Box::new(f.probe_duration.clone()),
        );
        reg(
            "backups",
            "Backups finished, by result",
            None,
            Box::new(f.backups.clone()),
        );
        reg(
            "backup_last_success_timestamp",
            "When the repository's last successful backup finished, Unix time",
            Some(Unit::Seconds),
            Box::new(f.backup_success.clone()),
        );
        reg(
            "backup_last_size",
            "Bytes the repository's last successful backup read from its source",
            Some(Unit::Bytes),
            Box::new(f.backup_size.clone()),
        );
        reg(
            "backup_last_restore_test_timestamp",
            "When a restore from the repository was last tested successfully, Unix time",
            Some(Unit::Seconds),
            Box::new(f.restore_test.clone()),
        );
        reg(
            "backup_point_in_time_duration",
            "Time of point-in-time jobs: closing the current WAL segment until it is archived",
            Some(Unit::Seconds),
            Box::new(f.point_in_time_duration.clone()),
        );
        reg(
            "backup_newest_wal_age",
            "Age of the newest archived WAL file when last measured: the data a restore would lose",
            Some(Unit::Seconds),
            Box::new(f.newest_wal_age.clone()),
        );
        reg(
            "failover_last_drill_timestamp",
            "When the service's last successful failover drill finished, Unix time",
            Some(Unit::Seconds),
            Box::new(f.failover_drill.clone()),
        );
        reg(
            "autoscale_replicas",
            "Replicas before (current) and after (desired) the last autoscaling decision",
            None,
            Box::new(f.autoscale_replicas.clone()),
        );
        reg(
            "autoscale_scale_events",
            "Autoscaling decisions that changed the replica count, by direction",
            None,
            Box::new(f.autoscale_events.clone()),
        );
        reg(
            "autoscale_usage",
            "Each scaling metric's usage over its target at the last decision",
            Some(Unit::Other("ratio".into())),
            Box::new(f.autoscale_ratio.clone()),
        );
        reg(
            "database_replication_lag",
            "WAL the standby has not replayed",
            Some(Unit::Bytes),
            Box::new(f.replication_lag_bytes.clone()),
        );
        reg(
            "database_replication_lag",
            "Age of the standby's last replayed transaction behind the primary",
            Some(Unit::Seconds),
            Box::new(f.replication_lag_seconds.clone()),
        );
        reg(
            "database_replication_streaming",
            "1 while the standby streams from the primary, 0 otherwise",
            None,
            Box::new(f.replication_streaming.clone()),
        );
        reg(
            "failover_events",
            "Failover controller events, by kind",
            None,
            Box::new(f.failover_events.clone()),
        );
        reg(
            "region_weight_percent",
            "Each region's share of the service's traffic after the last change",
            None,
            Box::new(f.region_weight.clone()),
        );
        reg(
            "failover_recovery",
            "From a failover's decision to traffic moved, database writable and done",
            Some(Unit::Seconds),
            Box::new(f.failover_recovery.clone()),
        );
        reg(
            "events_lagged",
            "Rollout events the collector missed because it fell behind",
            None,
            Box::new(f.lagged.clone()),
        );
        Telemetry {
            inner: Arc::new(Inner {
                registry: RwLock::new(registry),
                names: Mutex::new(names),
                families,
                steps: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Adds a metric under `atlas_<name>` (plus `_<unit>`, and `_total` for
    /// counters, which the encoder appends), for subsystems beyond rollouts.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `metric.name` when the name is not
    /// `[a-z_][a-z0-9_]*`, ends in `_total` (added by the encoder for
    /// counters), or is already registered; on `metric.help` when empty.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric: impl Metric,
    ) -> Result<()> {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::invalid(
                "metric.name",
                format!("{name:?} must match [a-z_][a-z0-9_]*"),
            ));
        }
        if name.ends_with("_total") {
            return Err(Error::invalid(
                "metric.name",
                format!("{name:?} must not end in _total; the encoder adds it to counters"),
            ));
        }
        if help.trim().is_empty() {
            return Err(Error::invalid("metric.help", "must not be empty"));
        }
        let full = full_name(name, unit.as_ref());
        if !lock(&self.inner.names).insert(full.clone()) {
            return Err(Error::invalid(
                "metric.name",
                format!("{full} is already registered"),
            ));
        }
        let mut registry = self
            .inner
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, metric),
            None => registry.register(name, help, metric),
        }
        tracing::debug!(metric = %full, "registered metric");
        Ok(())
    }

    /// The registry as OpenMetrics text (see [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let registry = self
            .inner
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            // Only a failing `fmt::Write` can cause this, and a `String` never fails.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Updates the metrics for one rollout event.
    pub fn observe(&self, event: &RolloutEvent) {
        let f = &self.inner.families;
        let service = event.service.to_string();
        let svc = ServiceLabels {
            service: service.clone(),
        };
        match &event.kind {
            EventKind::Started { .. } => {
                f.started.get_or_create(&svc).inc();
                self.set_phase(&service, "progressing");
            }
            EventKind::StepStarted { index, .. } => {
                lock(&self.inner.steps).insert(event.rollout.clone(), (*index, event.at));
            }
            EventKind::StepFinished { index, step } => {
                let started = lock(&self.inner.steps).remove(&event.rollout);
                if let Some((i, at)) = started.filter(|(i, _)| i == index) {
                    let took = event.at.duration_since(at).unwrap_or(Duration::ZERO);
                    f.step_duration
                        .get_or_create(&StepLabels {
                            service: service.clone(),
                            step: step_kind(step).to_string(),
                        })
                        .observe(took.as_secs_f64());
                    tracing::trace!(%service, step = i, ?took, "step timed");
                }
            }
            EventKind::WeightChanged { split } => {
                for slot in [split.stable(), split.canary()] {
                    f.weight
                        .get_or_create(&SlotLabels {
                            service: service.clone(),
                            slot: slot.to_string(),
                        })
                        .set(f64::from(split.weight_of(slot).percent()) / 100.0);
                }
            }
            EventKind::Probed { healthy, .. } => {
                let result = if *healthy { "healthy" } else { "unhealthy" };
                f.probe_results
                    .get_or_create(&ResultLabels {
                        service,
                        result: result.to_string(),
                    })
                    .inc();
            }
            EventKind::AnalysisMeasured { template, record } => {
                f.measurements
                    .get_or_create(&MeasurementLabels {
                        service: service.clone(),
                        template: template.clone(),
                        metric: record.metric.clone(),
                        phase: measurement_phase(record.phase).to_string(),
                    })
                    .inc();
                if let Some(v) = record.value.as_ref().and_then(|m| m.value()) {
                    f.measurement_value
                        .get_or_create(&ValueLabels {
                            service,
                            template: template.clone(),
                            metric: record.metric.clone(),
                        })
                        .set(v);
                }
            }
            EventKind::AnalysisFinished {
                template, phase, ..
            } => {
                f.analysis_runs
                    .get_or_create(&RunLabels {
                        service,
                        template: template.clone(),
                        phase: phase.to_string(),
                    })
                    .inc();
            }
            EventKind::Paused { .. } => self.set_phase(&service, "paused"),
            EventKind::Resumed => self.set_phase(&service, "progressing"),
            EventKind::Aborted { .. } => self.set_phase(&service, "rolling_back"),
            EventKind::Promoted { .. } => {
                self.finish(&event.rollout);
                f.finished
                    .get_or_create(&OutcomeLabels {
                        service: service.clone(),
                        outcome: "promoted".into(),
                    })
                    .inc();
                self.set_phase(&service, "promoted");
            }
            EventKind::RolledBack { .. } => {
                self.finish(&event.rollout);
                f.rollbacks.get_or_create(&svc).inc();
                f.finished
                    .get_or_create(&OutcomeLabels {
                        service: service.clone(),
                        outcome: "rolled_back".into(),
                    })
                    .inc();
                self.set_phase(&service, "rolled_back");
            }
            // New event kinds are counted by nothing until mapped here.
            _ => {}
        }
    }

    /// Records a finished backup of `repository`: counted by result; a
    /// success also sets the last-success time (`at`) and size (`bytes`
    /// read from the source), from which dashboards and alerts compute the
    /// recovery-point age.
    pub fn backup_finished(&self, repository: &str, succeeded: bool, bytes: u64, at: SystemTime) {
        let f = &self.inner.families;
        let result = if succeeded { "success" } else { "failure" };
        f.backups
            .get_or_create(&BackupResultLabels {
                repository: repository.to_string(),
                result: result.into(),
            })
            .inc();
        if succeeded {
            let repo = RepositoryLabels {
                repository: repository.to_string(),
            };
            f.backup_success.get_or_create(&repo).set(unix(at));
            f.backup_size
                .get_or_create(&repo)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        tracing::debug!(repository, succeeded, bytes, "backup recorded");
    }

    /// Records a successful test restore from `repository` at `at`.
    pub fn restore_tested(&self, repository: &str, at: SystemTime) {
        self.inner
            .families
            .restore_test
            .get_or_create(&RepositoryLabels {
                repository: repository.to_string(),
            })
            .set(unix(at));
        tracing::debug!(repository, "restore test recorded");
    }

    /// Records a finished point-in-time job of `repository`: how long
    /// closing the current WAL segment until it was archived took, and the
    /// age of the newest archived WAL file measured afterwards (`None`
    /// when nothing was ever archived, which leaves the gauge as it was).
    pub fn point_in_time_job(
        &self,
        repository: &str,
        duration: Duration,
        newest_wal_age: Option<Duration>,
    ) {
        let f = &self.inner.families;
        let repo = RepositoryLabels {
            repository: repository.to_string(),
        };
        f.point_in_time_duration
            .get_or_create(&repo)
            .observe(duration.as_secs_f64());
        if let Some(age) = newest_wal_age {
            f.newest_wal_age.get_or_create(&repo).set(age.as_secs_f64());
        }
        tracing::debug!(
            repository,
            duration_ms = duration.as_millis() as u64,
            newest_wal_age_ms = newest_wal_age.map(|a| a.as_millis() as u64),
            "point-in-time job recorded"
        );
    }

    /// Records a successful failover drill of `service` at `at`.
    pub fn failover_drilled(&self, service: &str, at: SystemTime) {
        self.inner
            .families
            .failover_drill
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .set(unix(at));
        tracing::debug!(service, "failover drill recorded");
    }

    /// Records what a database failover adapter reported about `standby`'s
    /// replication: lag in bytes and seconds (unknown values keep the last
    /// one) and whether it streams.
    pub fn replication_observed(&self, standby: &str, status: &ReplicationStatus) {
        let f = &self.inner.families;
        let labels = StandbyLabels {
            standby: standby.to_string(),
        };
        if let Some(bytes) = status.lag_bytes {
            f.replication_lag_bytes
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Some(lag) = status.lag {
            f.replication_lag_seconds
                .get_or_create(&labels)
                .set(lag.as_secs_f64());
        }
        f.replication_streaming
            .get_or_create(&labels)
            .set(i64::from(status.streaming));
    }

    /// Records a failover controller event: a count by kind, the region
    /// weights whenever they change, and the recovery timings (decision to
    /// traffic moved, to database writable, to done).
    pub fn failover_event(&self, event: &FailoverEvent) {
        use FailoverEventKind as K;
        let f = &self.inner.families;
        let service = event.service.as_str();
        let kind = match &event.kind {
            K::Started { .. } => "started",
            K::TriggerFired { .. } => "trigger_fired",
            K::RolloutInterrupted { .. } => "rollout_interrupted",
            K::StandbyActivated { .. } => "standby_activated",
            K::CapacityShort { .. } => "capacity_short",
            K::TrafficMoved { .. } => "traffic_moved",
            K::DatabaseFenced { .. } => "database_fenced",
            K::DatabasePromoted { .. } => "database_promoted",
            K::FailoverDone { .. } => "failover_done",
            K::FailoverBlocked { .. } => "failover_blocked",
            K::RegionRecovered { .. } => "region_recovered",
            K::FailbackStarted { .. } => "failback_started",
            K::FailbackDone { .. } => "failback_done",
            K::ActionFailed { .. } => "action_failed",
            _ => "other",
        };
        f.failover_events
            .get_or_create(&FailoverKindLabels {
                service: service.to_string(),
                kind: kind.into(),
            })
            .inc();
        let weights = match &event.kind {
            K::Started { weights, .. }
            | K::TrafficMoved { weights, .. }
            | K::FailbackDone { weights, .. } => Some(weights),
            _ => None,
        };
        if let Some(weights) = weights {
            for (region, w) in weights.iter() {
                f.region_weight
                    .get_or_create(&RegionLabels {
                        service: service.to_string(),
                        region: region.to_string(),
                    })
                    .set(i64::from(w));
            }
        }
        let phase = match &event.kind {
            K::TrafficMoved { after, .. } => Some(("traffic", after)),
            K::DatabasePromoted { after, .. } => Some(("database", after)),
            K::FailoverDone { after } => Some(("done", after)),
            _ => None,
        };
        if let Some((phase, after)) = phase {
            f.failover_recovery
                .get_or_create(&RecoveryLabels {
                    service: service.to_string(),
                    phase: phase.into(),
                })
                .observe(after.as_secs_f64());
        }
    }

    /// Records an autoscaling decision for `service`: the replica count
    /// before and after, a scale event when it changes, and each metric's
    /// usage ratio (metrics that gave no value keep their last ratio).
    pub fn autoscale_decided(&self, service: &str, decision: &ScaleDecision) {
        let f = &self.inner.families;
        for (kind, n) in [
            ("current", decision.current_replicas),
            ("desired", decision.desired_replicas),
        ] {
            f.autoscale_replicas
                .get_or_create(&ReplicaLabels {
                    service: service.to_string(),
                    kind: kind.into(),
                })
                .set(i64::from(n));
        }
        if decision.changes() {
            let direction = if decision.desired_replicas > decision.current_replicas {
                "up"
            } else {
                "down"
            };
            f.autoscale_events
                .get_or_create(&DirectionLabels {
                    service: service.to_string(),
                    direction: direction.into(),
                })
                .inc();
        }
        for proposal in &decision.proposals {
            if let MetricOutcome::Replicas { usage_ratio, .. } = proposal.outcome {
                f.autoscale_ratio
                    .get_or_create(&ScalingMetricLabels {
                        service: service.to_string(),
                        metric: proposal.metric.clone(),
                    })
                    .set(usage_ratio);
            }
        }
        tracing::debug!(
            service,
            current = decision.current_replicas,
            desired = decision.desired_replicas,
            reason = ?decision.reason,
            "autoscaling decision recorded"
        );
    }

    fn finish(&self, rollout: &str) {
        lock(&self.inner.steps).remove(rollout);
    }

    fn set_phase(&self, service: &str, current: &str) {
        for phase in PHASES {
            self.inner
                .families
                .phase
                .get_or_create(&PhaseLabels {
                    service: service.to_string(),
                    phase: phase.to_string(),
                })
                .set(i64::from(phase == current));
        }
    }

    /// Observes every event from `events` (e.g. `engine.subscribe()`) until
    /// the sender is dropped. Events missed because the collector fell
    /// behind are counted in `atlas_events_lagged_total` and skipped.
    pub async fn collect(&self, mut events: broadcast::Receiver<RolloutEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => self.observe(&event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "metrics collector fell behind; events skipped");
                    self.inner.families.lagged.inc_by(missed);
                }
                Err(RecvError::Closed) => {
                    tracing::debug!("event stream closed; collector stops");
                    return;
                }
            }
        }
    }

    /// Spawns [`collect`](Self::collect) on the current tokio runtime.
    pub fn spawn_collector(
        &self,
        events: broadcast::Receiver<RolloutEvent>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.collect(events).await })
    }

    fn record_probe(&self, probe: &str, outcome: &ProbeOutcome, took: Duration) {
        let labels = ProbeLabels {
            probe: probe.to_string(),
            result: if outcome.is_healthy() {
                "healthy"
            } else {
                "unhealthy"
            }
            .to_string(),
        };
        let f = &self.inner.families;
        f.probe_attempts.get_or_create(&labels).inc();
        f.probe_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

/// The exported name of a metric registered as `name` with `unit`.
fn full_name(name: &str, unit: Option<&Unit>) -> String {
    match unit {
        Some(u) => format!("{PREFIX}_{name}_{}", u.as_str()),
        None => format!("{PREFIX}_{name}"),
    }
}

/// Registers a boxed metric; lets `Telemetry::new` list its metrics in one table.
trait RegisterAs {
    fn register(
        self: Box<Self>,
        registry: &mut Registry,
        name: &str,
        help: &str,
        unit: Option<Unit>,
    );
}

impl<M: Metric> RegisterAs for M {
    fn register(
        self: Box<Self>,
        registry: &mut Registry,
        name: &str,
        help: &str,
        unit: Option<Unit>,
    ) {
        match unit {
            Some(u) => registry.register_with_unit(name, help, u, *self),
            None => registry.register(name, help, *self),
        }
    }
}

fn step_kind(step: &Step) -> &'static str {
    match step {
        Step::Deploy { .. } => "deploy",
        Step::AwaitHealthy => "await_healthy",
        Step::SetWeight(_) => "set_weight",
        Step::Pause(_) => "pause",
        Step::Analysis { .. } => "analysis",
        Step::ScaleCanary { .. } => "scale_canary",
        Step::Promote => "promote",
        Step::ScaleDownOld { .. } => "scale_down_old",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

fn measurement_phase(p: MeasurementPhase) -> &'static str {
    match p {
        MeasurementPhase::Successful => "successful",
        MeasurementPhase::Failed => "failed",
        MeasurementPhase::Inconclusive => "inconclusive",
        MeasurementPhase::Error => "error",
    }
}

/// A [`HealthProbe`] wrapper that records every attempt's result and
/// duration in `atlas_probe_attempts_total` and
/// `atlas_probe_duration_seconds`, labelled `probe=<name>`.
///
/// ```
/// use atlas_metrics::probe::TcpProbe;
/// use atlas_metrics::telemetry::{InstrumentedProbe, Telemetry};
/// let telemetry = Telemetry::new();
/// let probe = InstrumentedProbe::new("tcp", TcpProbe::new(), telemetry.clone());
/// ```
#[derive(Debug, Clone)]
pub struct InstrumentedProbe<P> {
    name: String,
    probe: P,
    telemetry: Telemetry,
}

impl<P: HealthProbe> InstrumentedProbe<P> {
    /// Wraps `probe`, recording under label `probe=name`.
    pub fn new(name: impl Into<String>, probe: P, telemetry: Telemetry) -> Self {
        InstrumentedProbe {
            name: name.into(),
            probe,
            telemetry,
        }
    }

    /// The wrapped probe.
    pub fn inner(&self) -> &P {
        &self.probe
    }
}

#[async_trait]
impl<P: HealthProbe> HealthProbe for InstrumentedProbe<P> {
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
        let started = tokio::time::Instant::now();
        let outcome = self.probe.check(endpoint, timeout).await;
        self.telemetry
            .record_probe(&self.name, &outcome, started.elapsed());
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_restores_and_drills_are_exposed() {
        let t = Telemetry::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        t.backup_finished("offsite", true, 4096, at);
        t.backup_finished("offsite", false, 0, at + Duration::from_secs(60));
        t.restore_tested("offsite", at);
        t.point_in_time_job(
            "offsite",
            Duration::from_millis(1500),
            Some(Duration::from_secs(4)),
        );
        t.failover_drilled("checkout", at);
        let text = t.encode();
        for line in [
            "atlas_backups_total{repository=\"offsite\",result=\"success\"} 1",
            "atlas_backups_total{repository=\"offsite\",result=\"failure\"} 1",
            "atlas_backup_last_success_timestamp_seconds{repository=\"offsite\"} 1800000000.0",
            "atlas_backup_last_size_bytes{repository=\"offsite\"} 4096",
            "atlas_backup_last_restore_test_timestamp_seconds{repository=\"offsite\"} 1800000000.0",
            "atlas_backup_point_in_time_duration_seconds_count{repository=\"offsite\"} 1",
            "atlas_backup_point_in_time_duration_seconds_sum{repository=\"offsite\"} 1.5",
            "atlas_backup_newest_wal_age_seconds{repository=\"offsite\"} 4.0",
            "atlas_failover_last_drill_timestamp_seconds{service=\"checkout\"} 1800000000.0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn autoscaling_decisions_are_exposed() {
        use atlas_core::autoscale::{
            HorizontalAutoscaler, HorizontalPolicy, MetricObservation, MetricSpec, ScaleInput,
        };
        let policy =
            HorizontalPolicy::new(1, 10, vec![MetricSpec::pods_average("requests", 500.0)]);
        let mut hpa = HorizontalAutoscaler::new(policy).unwrap();
        // Three pods at twice their target: the HPA asks for six.
        let input = ScaleInput::with_ready_pods(3).observe(MetricObservation::per_pod(
            (0..3).map(|i| (format!("pod-{i}"), 1000.0)),
        ));
        let decision = hpa.recommend(std::time::Instant::now(), &input).unwrap();
        assert_eq!(decision.desired_replicas, 6);
        let t = Telemetry::new();
        t.autoscale_decided("checkout", &decision);
        let text = t.encode();
        for line in [
            "atlas_autoscale_replicas{service=\"checkout\",kind=\"current\"} 3",
            "atlas_autoscale_replicas{service=\"checkout\",kind=\"desired\"} 6",
            "atlas_autoscale_scale_events_total{service=\"checkout\",direction=\"up\"} 1",
            "atlas_autoscale_usage_ratio{service=\"checkout\",metric=\"requests\"} 2.0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("direction=\"down\""), "{text}");
    }

    #[test]
    fn replication_and_failover_events_are_exposed() {
        use atlas_core::ServiceName;
        use atlas_core::region::{RegionName, RegionWeights};
        let t = Telemetry::new();
        t.replication_observed(
            "db-b",
            &ReplicationStatus {
                streaming: true,
                synchronous: false,
                lag_bytes: Some(1_131_048),
                lag: Some(Duration::from_millis(360)),
            },
        );
        let svc = ServiceName::new("checkout").unwrap();
        let r = |n: &str| RegionName::new(n).unwrap();
        let moved = RegionWeights::new([(r("us"), 0), (r("eu"), 60), (r("ap"), 40)]).unwrap();
        let at = SystemTime::UNIX_EPOCH;
        for kind in [
            FailoverEventKind::TrafficMoved {
                weights: moved,
                after: Duration::from_millis(250),
            },
            FailoverEventKind::FailoverDone {
                after: Duration::from_secs(2),
            },
        ] {
            t.failover_event(&FailoverEvent {
                service: svc.clone(),
                at,
                kind,
            });
        }
        let text = t.encode();
        for line in [
            "atlas_database_replication_lag_bytes{standby=\"db-b\"} 1131048",
            "atlas_database_replication_lag_seconds{standby=\"db-b\"} 0.36",
            "atlas_database_replication_streaming{standby=\"db-b\"} 1",
            "atlas_failover_events_total{service=\"checkout\",kind=\"traffic_moved\"} 1",
            "atlas_region_weight_percent{service=\"checkout\",region=\"us\"} 0",
            "atlas_region_weight_percent{service=\"checkout\",region=\"eu\"} 60",
            "atlas_failover_recovery_seconds_sum{service=\"checkout\",phase=\"traffic\"} 0.25",
            "atlas_failover_recovery_seconds_count{service=\"checkout\",phase=\"done\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
