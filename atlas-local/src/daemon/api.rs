//! The admin API's typed requests and responses, shared by the daemon and
//! its clients.
//!
//! On the wire every call is one HTTP/1.1 `POST /v1/call` whose body is an
//! [`ApiRequest`] in JSON; the answer's body is an [`ApiResponse`] on
//! success (status 200) or an [`ApiError`] (status 4xx/5xx by its
//! [`ApiErrorKind`]). `GET /metrics` answers the proxy's Prometheus text.
//! The format is versioned by the path: a later incompatible revision gets
//! `/v2/call`, and unknown fields are refused so a typo never passes as a
//! default.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use atlas_core::{
    Endpoint, Error, Measurement, MetricQuery, Release, RolloutState, ServiceName, Slot,
    SlotStatus, TrafficSplit,
};
use serde::{Deserialize, Serialize};

use crate::proxy::ServiceRoute;

/// The path every call is posted to.
pub const CALL_PATH: &str = "/v1/call";
/// The path of the Prometheus text.
pub const METRICS_PATH: &str = "/metrics";
/// The largest request body the daemon reads, in bytes.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// One admin call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    /// Adds a service and the host names (and optional path prefix) that
    /// route to it. A host already claimed by another service is a
    /// [`Conflict`](ApiErrorKind::Conflict).
    RegisterService {
        /// The service.
        service: ServiceName,
        /// Which requests reach it.
        route: ServiceRoute,
    },
    /// Removes a service: its routes go at once, its endpoints drain, its
    /// replicas stop, its rollout state is kept.
    RemoveService {
        /// The service.
        service: ServiceName,
    },
    /// Every registered service and its route.
    Services,
    /// Sets the service's traffic split (weights and header/cookie rule).
    SetSplit {
        /// The service.
        service: ServiceName,
        /// The split.
        split: TrafficSplit,
    },
    /// The service's split in force, if any.
    Split {
        /// The service.
        service: ServiceName,
    },
    /// Lists a slot's endpoints with the router; endpoints no longer
    /// listed drain before the call returns.
    SetEndpoints {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// Its endpoints.
        endpoints: Vec<Endpoint>,
    },
    /// Runs `replicas` replicas of `release` in a slot.
    Deploy {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// What to run.
        release: Release,
        /// How many.
        replicas: u32,
    },
    /// Sets a slot's replica count.
    Scale {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// How many.
        replicas: u32,
    },
    /// A slot's workload status.
    SlotStatus {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
    },
    /// Takes a slot out of the router: no new requests, requests in
    /// flight finish (bounded by the grace period). Replicas keep running.
    Drain {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
    },
    /// The status of one service, or of all of them.
    Status {
        /// The service; `None` for all.
        #[serde(default)]
        service: Option<ServiceName>,
    },
    /// The last lines of one replica's log.
    Logs {
        /// The service.
        service: ServiceName,
        /// The slot.
        slot: Slot,
        /// The replica's index in the slot.
        index: u32,
        /// How many lines from the end.
        lines: u32,
    },
    /// The stored rollout state of a service.
    LoadState {
        /// The service.
        service: ServiceName,
    },
    /// Writes a rollout state if the stored version is `expected`.
    CompareAndSwap {
        /// The service.
        service: ServiceName,
        /// The version the caller read (`None`: nothing stored yet).
        expected: Option<u64>,
        /// The new state.
        state: Box<RolloutState>,
    },
    /// Takes the lease on a service's rollout.
    AcquireLease {
        /// The service.
        service: ServiceName,
        /// Who asks (an engine's id).
        holder: String,
        /// How long it lasts without renewal.
        #[serde(with = "humantime_serde_ms")]
        ttl: Duration,
    },
    /// Extends a lease by its ttl.
    RenewLease {
        /// The lease.
        lease: WireLease,
    },
    /// Gives a lease up.
    ReleaseLease {
        /// The lease.
        lease: WireLease,
    },
    /// Asks the process driving a service's rollout to act
    /// (`atlas promote`, `pause`, `resume`, `abort`).
    Steer {
        /// The service.
        service: ServiceName,
        /// What to do.
        command: SteerCommand,
    },
    /// Waits (at most `wait`) for the next steering command of a service
    /// posted after `after` (the sequence number last seen, 0 at first).
    NextCommand {
        /// The service.
        service: ServiceName,
        /// The last sequence number seen.
        after: u64,
        /// How long to wait for one.
        #[serde(with = "humantime_serde_ms")]
        wait: Duration,
    },
    /// The releases a service was promoted to, oldest first (for `atlas undo`).
    History {
        /// The service.
        service: ServiceName,
    },
    /// The proxy's metrics in the Prometheus text format.
    Metrics,
    /// Measures one analysis query against the proxy's own per-slot
    /// metrics (the query's `args["service"]` names the service), as the
    /// embedded [`ProxyMetrics`](crate::proxy::ProxyMetrics) provider does.
    Measure {
        /// The query.
        query: MetricQuery,
    },
}

impl ApiRequest {
    /// The operation's name, as on the wire (`set_split`), for logs.
    pub fn op(&self) -> &'static str {
        match self {
            ApiRequest::RegisterService { .. } => "register_service",
            ApiRequest::RemoveService { .. } => "remove_service",
            ApiRequest::Services => "services",
            ApiRequest::SetSplit { .. } => "set_split",
            ApiRequest::Split { .. } => "split",
            ApiRequest::SetEndpoints { .. } => "set_endpoints",
            ApiRequest::Deploy { .. } => "deploy",
            ApiRequest::Scale { .. } => "scale",
            ApiRequest::SlotStatus { .. } => "slot_status",
            ApiRequest::Drain { .. } => "drain",
            ApiRequest::Status { .. } => "status",
            ApiRequest::Logs { .. } => "logs",
            ApiRequest::LoadState { .. } => "load_state",
            ApiRequest::CompareAndSwap { .. } => "compare_and_swap",
            ApiRequest::AcquireLease { .. } => "acquire_lease",
            ApiRequest::RenewLease { .. } => "renew_lease",
            ApiRequest::ReleaseLease { .. } => "release_lease",
            ApiRequest::Steer { .. } => "steer",
            ApiRequest::NextCommand { .. } => "next_command",
            ApiRequest::History { .. } => "history",
            ApiRequest::Metrics => "metrics",
            ApiRequest::Measure { .. } => "measure",
        }
    }

    /// Whether the call changes the daemon's state (and is logged as a
    /// change, with who asked).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            ApiRequest::Services
                | ApiRequest::Split { .. }
                | ApiRequest::SlotStatus { .. }
                | ApiRequest::Status { .. }
                | ApiRequest::Logs { .. }
                | ApiRequest::LoadState { .. }
                | ApiRequest::NextCommand { .. }
                | ApiRequest::History { .. }
                | ApiRequest::Metrics
                | ApiRequest::Measure { .. }
        )
    }

    /// The service the call is about, if one.
    pub fn service(&self) -> Option<&ServiceName> {
        match self {
            ApiRequest::RegisterService { service, .. }
            | ApiRequest::RemoveService { service }
            | ApiRequest::SetSplit { service, .. }
            | ApiRequest::Split { service }
            | ApiRequest::SetEndpoints { service, .. }
            | ApiRequest::Deploy { service, .. }
            | ApiRequest::Scale { service, .. }
            | ApiRequest::SlotStatus { service, .. }
            | ApiRequest::Drain { service, .. }
            | ApiRequest::Logs { service, .. }
            | ApiRequest::LoadState { service }
            | ApiRequest::CompareAndSwap { service, .. }
            | ApiRequest::AcquireLease { service, .. }
            | ApiRequest::Steer { service, .. }
            | ApiRequest::NextCommand { service, .. }
            | ApiRequest::History { service } => Some(service),
            ApiRequest::RenewLease { lease } | ApiRequest::ReleaseLease { lease } => {
                Some(&lease.service)
            }
            ApiRequest::Status { service } => service.as_ref(),
            ApiRequest::Services | ApiRequest::Metrics | ApiRequest::Measure { .. } => None,
        }
    }
}

/// A successful answer; each request has its one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiResponse {
    /// The change was made.
    Done,
    /// Answer to [`ApiRequest::Services`].
    Services {
        /// Every service and its route, by name.
        services: BTreeMap<ServiceName, ServiceRoute>,
    },
    /// Answer to [`ApiRequest::Split`].
    Split {
        /// The split, if one was set.
        split: Option<TrafficSplit>,
    },
    /// Answer to [`ApiRequest::SlotStatus`].
    SlotStatus {
        /// The status.
        status: SlotStatus,
    },
    /// Answer to [`ApiRequest::Status`].
    Status {
        /// Each service's status, by name.
        services: Vec<ServiceStatus>,
    },
    /// Answer to [`ApiRequest::Logs`].
    Logs {
        /// The log file.
        path: String,
        /// Its last lines.
        lines: Vec<String>,
    },
    /// Answer to [`ApiRequest::LoadState`].
    State {
        /// The stored state and its version.
        state: Option<Box<WireVersioned>>,
    },
    /// Answer to [`ApiRequest::CompareAndSwap`].
    Version {
        /// The new version.
        version: u64,
    },
    /// Answer to [`ApiRequest::AcquireLease`].
    Lease {
        /// The lease granted.
        lease: WireLease,
    },
    /// Answer to [`ApiRequest::NextCommand`].
    Command {
        /// The command and its sequence number, or `None` when the wait
        /// ended without one.
        command: Option<SequencedCommand>,
    },
    /// Answer to [`ApiRequest::History`].
    History {
        /// Promoted releases, oldest first.
        releases: Vec<Release>,
    },
    /// Answer to [`ApiRequest::Metrics`].
    Metrics {
        /// Prometheus text.
        text: String,
    },
    /// Answer to [`ApiRequest::Measure`].
    Measurement {
        /// What was measured.
        measurement: Measurement,
    },
}

/// A stored rollout state with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireVersioned {
    /// The version a compare-and-swap must name.
    pub version: u64,
    /// The state.
    pub state: RolloutState,
}

/// A lease on the wire ([`atlas_core::Lease`] in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireLease {
    /// The service.
    pub service: ServiceName,
    /// Who holds it.
    pub holder: String,
    /// This grant's token.
    pub token: u64,
    /// How long it lasts without renewal.
    #[serde(with = "humantime_serde_ms")]
    pub ttl: Duration,
}

impl From<&atlas_core::Lease> for WireLease {
    fn from(lease: &atlas_core::Lease) -> Self {
        WireLease {
            service: lease.service.clone(),
            holder: lease.holder.clone(),
            token: lease.token,
            ttl: lease.ttl,
        }
    }
}

impl From<WireLease> for atlas_core::Lease {
    fn from(lease: WireLease) -> Self {
        atlas_core::Lease {
            service: lease.service,
            holder: lease.holder,
            token: lease.token,
            ttl: lease.ttl,
        }
    }
}

/// What `atlas promote | pause | resume | abort` asks of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteerCommand {
    /// Skip the current pause (or the next one).
    Promote,
    /// Skip every remaining step: all traffic to the new release now.
    PromoteFull,
    /// Pause at the current step.
    Pause,
    /// End a pause.
    Resume,
    /// Roll back.
    Abort,
}

impl fmt::Display for SteerCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SteerCommand::Promote => "promote",
            SteerCommand::PromoteFull => "promote --full",
            SteerCommand::Pause => "pause",
            SteerCommand::Resume => "resume",
            SteerCommand::Abort => "abort",
        })
    }
}

/// A steering command with its sequence number (per service, from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequencedCommand {
    /// Increases by one per command posted for the service.
    pub seq: u64,
    /// The command.
    pub command: SteerCommand,
}

/// One service as `atlas status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatus {
    /// The service.
    pub service: ServiceName,
    /// Which requests reach it.
    pub route: ServiceRoute,
    /// The split in force.
    pub split: Option<TrafficSplit>,
    /// Blue, then green.
    pub slots: Vec<SlotView>,
    /// Requests per second over the metrics window.
    pub request_rate: f64,
    /// 95th percentile latency over the window, in milliseconds.
    pub p95_ms: Option<f64>,
    /// Share of answers that were 5xx or failed, over the window (0–1).
    pub error_rate: f64,
    /// The rollout in progress or last finished, in one line.
    pub rollout: Option<String>,
}

/// One slot of a service as `atlas status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotView {
    /// The workload status.
    pub status: SlotStatus,
    /// Its share of the traffic in percent.
    pub weight: u8,
    /// Endpoints listed with the router.
    pub routed: Vec<Endpoint>,
    /// Requests in flight.
    pub in_flight: usize,
    /// Replica restarts since the daemon started supervising them.
    pub restarts: u32,
}

/// Why a call failed, by category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// The request was understood and refused: a bad field.
    InvalidInput,
    /// The request could not be read: not JSON, an unknown operation or
    /// field, too large, the wrong method or path.
    Malformed,
    /// No credentials, or the wrong ones (TCP without the bearer token).
    Unauthorized,
    /// The named thing does not exist.
    NotFound,
    /// Someone else holds or changed it.
    Conflict,
    /// Not allowed in the current state.
    Precondition,
    /// May pass if retried.
    Transient,
    /// Failed; a retry will not help.
    Backend,
    /// Did not finish in time.
    Deadline,
}

impl ApiErrorKind {
    /// The HTTP status the daemon answers with.
    pub fn status(self) -> u16 {
        match self {
            ApiErrorKind::InvalidInput | ApiErrorKind::Malformed => 400,
            ApiErrorKind::Unauthorized => 401,
            ApiErrorKind::NotFound => 404,
            ApiErrorKind::Conflict => 409,
            ApiErrorKind::Precondition => 412,
            ApiErrorKind::Transient => 503,
            ApiErrorKind::Backend => 500,
            ApiErrorKind::Deadline => 504,
        }
    }
}

/// A failed call, as the daemon answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("atlasd refused the call ({kind:?}): {message}")]
pub struct ApiError {
    /// The category.
    pub kind: ApiErrorKind,
    /// What went wrong, for people.
    pub message: String,
    /// For [`ApiErrorKind::InvalidInput`]: the field that was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            field: None,
        }
    }
}

impl From<&Error> for ApiError {
    fn from(error: &Error) -> Self {
        let (kind, field, message) = match error {
            Error::InvalidInput { field, rule } => (
                ApiErrorKind::InvalidInput,
                Some(field.clone()),
                rule.clone(),
            ),
            Error::NotFound { what } => (ApiErrorKind::NotFound, None, what.clone()),
            Error::Conflict { what } => (ApiErrorKind::Conflict, None, what.clone()),
            Error::Precondition { what } => (ApiErrorKind::Precondition, None, what.clone()),
            Error::Transient { .. } => (ApiErrorKind::Transient, None, error.to_string()),
            Error::Deadline { .. } => (ApiErrorKind::Deadline, None, error.to_string()),
            _ => (ApiErrorKind::Backend, None, error.to_string()),
        };
        ApiError {
            kind,
            message,
            field,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::from(&error)
    }
}

impl From<ApiError> for Error {
    fn from(error: ApiError) -> Self {
        match error.kind {
            ApiErrorKind::InvalidInput => Error::InvalidInput {
                field: error.field.unwrap_or_else(|| "request".to_owned()),
                rule: error.message,
            },
            ApiErrorKind::NotFound => Error::NotFound {
                what: error.message,
            },
            ApiErrorKind::Conflict => Error::Conflict {
                what: error.message,
            },
            ApiErrorKind::Precondition => Error::Precondition {
                what: error.message,
            },
            ApiErrorKind::Transient => Error::Transient {
                backend: "atlasd".to_owned(),
                message: error.message,
                source: None,
            },
            ApiErrorKind::Malformed | ApiErrorKind::Unauthorized | ApiErrorKind::Backend => {
                Error::Backend {
                    backend: "atlasd".to_owned(),
                    message: format!("{:?}: {}", error.kind, error.message),
                    source: None,
                }
            }
            ApiErrorKind::Deadline => Error::Backend {
                backend: "atlasd".to_owned(),
                message: format!("deadline: {}", error.message),
                source: None,
            },
        }
    }
}

/// Durations on the wire as whole milliseconds.
mod humantime_serde_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let service = ServiceName::new("checkout").unwrap();
        let request = ApiRequest::Scale {
            service,
            slot: Slot::Green,
            replicas: 3,
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"op":"scale","service":"checkout","slot":"green","replicas":3}"#
        );
        assert_eq!(serde_json::from_str::<ApiRequest>(&json).unwrap(), request);
        let typo = r#"{"op":"scale","service":"checkout","slot":"green","replicas":3,"replica":1}"#;
        assert!(serde_json::from_str::<ApiRequest>(typo).is_err());
        assert!(serde_json::from_str::<ApiRequest>(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn errors_keep_their_category_across_the_wire() {
        let conflict = Error::Conflict {
            what: "host a.example claimed by web".into(),
        };
        let wire: ApiError = (&conflict).into();
        assert_eq!(wire.kind.status(), 409);
        let back: Error = wire.into();
        assert_eq!(back.kind(), atlas_core::ErrorKind::Conflict);
        let invalid = Error::invalid("route.hosts[0]", "must not be empty");
        let back: Error = ApiError::from(&invalid).into();
        assert!(matches!(back, Error::InvalidInput { ref field, .. } if field == "route.hosts[0]"));
    }
}
