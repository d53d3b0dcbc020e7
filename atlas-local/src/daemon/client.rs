//! Clients of a running `atlasd`: the raw [`AtlasdClient`], and the core
//! traits over it — [`RemoteRouter`], [`RemoteWorkloads`] and
//! [`RemoteStateStore`] — so the unchanged engine drives rollouts on the
//! daemon from another process.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::{
    Endpoint, Error, Lease, Measurement, MetricProvider, MetricQuery, Release, Result,
    RolloutState, ServiceName, Slot, SlotStatus, StateStore, TrafficRouter, TrafficSplit,
    Versioned, Workloads,
};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::api::{
    ApiError, ApiErrorKind, ApiRequest, ApiResponse, CALL_PATH, SequencedCommand, ServiceStatus,
    SteerCommand, WireLease,
};
use crate::proxy::ServiceRoute;

/// How to reach the daemon.
#[derive(Clone)]
enum Transport {
    Unix(PathBuf),
    Tcp { addr: SocketAddr, token: Arc<str> },
}

/// A client of one `atlasd`. Cheap to clone; each call opens its own
/// connection, so a daemon restarted between calls is simply reached
/// again, and a call made while no daemon answers fails with
/// [`ApiErrorKind::Transient`] (which the engine's retries wait out).
#[derive(Clone)]
pub struct AtlasdClient {
    transport: Transport,
    timeout: Duration,
}

impl fmt::Debug for AtlasdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Unix(path) => write!(f, "AtlasdClient(unix {})", path.display()),
            // The token is a secret: never shown.
            Transport::Tcp { addr, .. } => write!(f, "AtlasdClient(tcp {addr})"),
        }
    }
}

impl AtlasdClient {
    /// A client of the daemon listening on the Unix socket `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        AtlasdClient {
            transport: Transport::Unix(path.into()),
            timeout: Duration::from_secs(60),
        }
    }

    /// A client of the daemon's TCP listener at `addr`, presenting the
    /// bearer token read from `token_file` (its first line).
    pub fn tcp(addr: SocketAddr, token_file: &Path) -> Result<Self> {
        let text = fs::read_to_string(token_file).map_err(|e| Error::Backend {
            backend: "atlasd".into(),
            message: format!("cannot read token file {}: {e}", token_file.display()),
            source: Some(Box::new(e)),
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(Error::invalid(
                "token_file",
                format!("{} holds no token", token_file.display()),
            ));
        }
        Ok(AtlasdClient {
            transport: Transport::Tcp {
                addr,
                token: Arc::from(token),
            },
            timeout: Duration::from_secs(60),
        })
    }

    /// Bounds each call (default 60 s; a `next_command` wait adds its own).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Makes one call.
    pub async fn call(&self, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        let body = serde_json::to_vec(request).map_err(|e| {
            ApiError::new(
                ApiErrorKind::Malformed,
                format!("cannot encode the call: {e}"),
            )
        })?;
        self.post(Bytes::from(body), request).await
    }

    /// Posts an already encoded body (tests use it to send malformed calls).
    pub async fn call_raw(&self, body: impl Into<Bytes>) -> Result<ApiResponse, ApiError> {
        self.post(body.into(), &ApiRequest::Services).await
    }

    async fn post(&self, body: Bytes, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        let extra = match request {
            ApiRequest::NextCommand { wait, .. } => *wait,
            _ => Duration::ZERO,
        };
        let exchange = async {
            match &self.transport {
                Transport::Unix(path) => {
                    let stream = UnixStream::connect(path)
                        .await
                        .map_err(|e| unreachable(&path.display().to_string(), e))?;
                    exchange(stream, body, None).await
                }
                Transport::Tcp { addr, token } => {
                    let stream = TcpStream::connect(addr)
                        .await
                        .map_err(|e| unreachable(&addr.to_string(), e))?;
                    let _ = stream.set_nodelay(true);
                    exchange(stream, body, Some(token)).await
                }
            }
        };
        match tokio::time::timeout(self.timeout + extra, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                ApiErrorKind::Transient,
                format!(
                    "atlasd did not answer {} within {:?}",
                    request.op(),
                    self.timeout + extra
                ),
            )),
        }
    }

    /// `GET /metrics`: the proxy's Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        match self.call(&ApiRequest::Metrics).await? {
            ApiResponse::Metrics { text } => Ok(text),
            other => Err(unexpected("metrics", &other)),
        }
    }

    /// Registers a service with its route.
    pub async fn register_service(&self, service: &ServiceName, route: ServiceRoute) -> Result<()> {
        self.done(ApiRequest::RegisterService {
            service: service.clone(),
            route,
        })
        .await
    }

    /// Removes a service.
    pub async fn remove_service(&self, service: &ServiceName) -> Result<()> {
        self.done(ApiRequest::RemoveService {
            service: service.clone(),
        })
        .await
    }

    /// Every service and its route.
    pub async fn services(&self) -> Result<Vec<(ServiceName, ServiceRoute)>> {
        match self.call(&ApiRequest::Services).await? {
            ApiResponse::Services { services } => Ok(services.into_iter().collect()),
            other => Err(unexpected("services", &other)),
        }
    }

    /// The status of one service, or of all.
    pub async fn status(&self, service: Option<&ServiceName>) -> Result<Vec<ServiceStatus>> {
        match self
            .call(&ApiRequest::Status {
                service: service.cloned(),
            })
            .await?
        {
            ApiResponse::Status { services } => Ok(services),
            other => Err(unexpected("status", &other)),
        }
    }

    /// Takes a slot out of the router, draining its requests in flight.
    pub async fn drain(&self, service: &ServiceName, slot: Slot) -> Result<()> {
        self.done(ApiRequest::Drain {
            service: service.clone(),
            slot,
        })
        .await
    }

    /// The last `lines` lines of a replica's log, and the log's path.
    pub async fn logs(
        &self,
        service: &ServiceName,
        slot: Slot,
        index: u32,
        lines: u32,
    ) -> Result<(String, Vec<String>)> {
        match self
            .call(&ApiRequest::Logs {
                service: service.clone(),
                slot,
                index,
                lines,
            })
            .await?
        {
            ApiResponse::Logs { path, lines } => Ok((path, lines)),
            other => Err(unexpected("logs", &other)),
        }
    }

    /// Posts a steering command for whoever drives the service's rollout.
    pub async fn steer(&self, service: &ServiceName, command: SteerCommand) -> Result<()> {
        self.done(ApiRequest::Steer {
            service: service.clone(),
            command,
        })
        .await
    }

    /// Waits up to `wait` for a steering command posted after `after`.
    pub async fn next_command(
        &self,
        service: &ServiceName,
        after: u64,
        wait: Duration,
    ) -> Result<Option<SequencedCommand>> {
        match self
            .call(&ApiRequest::NextCommand {
                service: service.clone(),
                after,
                wait,
            })
            .await?
        {
            ApiResponse::Command { command } => Ok(command),
            other => Err(unexpected("next_command", &other)),
        }
    }

    /// The releases the service was promoted to, oldest first.
    pub async fn history(&self, service: &ServiceName) -> Result<Vec<Release>> {
        match self
            .call(&ApiRequest::History {
                service: service.clone(),
            })
            .await?
        {
            ApiResponse::History { releases } => Ok(releases),
            other => Err(unexpected("history", &other)),
        }
    }

    async fn done(&self, request: ApiRequest) -> Result<()> {
        match self.call(&request).await? {
            ApiResponse::Done => Ok(()),
            other => Err(unexpected(request.op(), &other)),
        }
    }
}

fn unreachable(where_: &str, e: std::io::Error) -> ApiError {
    ApiError::new(
        ApiErrorKind::Transient,
        format!("atlasd is not answering on {where_}: {e}"),
    )
}

fn unexpected(op: &str, response: &ApiResponse) -> Error {
    Error::Backend {
        backend: "atlasd".into(),
        message: format!("unexpected answer to {op}: {response:?}"),
        source: None,
    }
}

async fn exchange<S>(
    stream: S,
    body: Bytes,
    token: Option<&Arc<str>>,
) -> Result<ApiResponse, ApiError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |e: &dyn fmt::Display| {
        ApiError::new(
            ApiErrorKind::Transient,
            format!("atlasd connection failed: {e}"),
        )
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| broken(&e))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(CALL_PATH)
        .header(HOST, "atlasd")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| broken(&e))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ApiError::new(
                ApiErrorKind::InvalidInput,
                "the token holds characters a header cannot carry",
            )
        })?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let response = sender.send_request(request).await.map_err(|e| broken(&e))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| broken(&e))?
        .to_bytes();
    driver.abort();
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ApiErrorKind::Backend,
                format!("unreadable answer from atlasd: {e}"),
            )
        })
    } else {
        Err(
            serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                ApiError::new(
                    ApiErrorKind::Backend,
                    format!(
                        "atlasd answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ),
                )
            }),
        )
    }
}

/// The daemon's proxy as a [`TrafficRouter`].
#[derive(Debug, Clone)]
pub struct RemoteRouter {
    client: AtlasdClient,
}

impl RemoteRouter {
    /// The router of the daemon `client` talks to.
    pub fn new(client: AtlasdClient) -> Self {
        RemoteRouter { client }
    }
}

#[async_trait]
impl TrafficRouter for RemoteRouter {
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        self.client
            .done(ApiRequest::SetSplit {
                service: service.clone(),
                split: split.clone(),
            })
            .await
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        match self
            .client
            .call(&ApiRequest::Split {
                service: service.clone(),
            })
            .await?
        {
            ApiResponse::Split { split } => Ok(split),
            other => Err(unexpected("split", &other)),
        }
    }

    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        self.client
            .done(ApiRequest::SetEndpoints {
                service: service.clone(),
                slot,
                endpoints: endpoints.to_vec(),
            })
            .await
    }
}

/// The daemon proxy's own per-slot metrics as a [`MetricProvider`], for
/// rollout analysis without Prometheus: the queries of
/// [`ProxyMetrics`](crate::proxy::ProxyMetrics) (`error_rate`,
/// `latency_p95`, …), the service named by the query's `args["service"]`
/// (the engine sets it).
#[derive(Debug, Clone)]
pub struct RemoteMetrics {
    client: AtlasdClient,
}

impl RemoteMetrics {
    /// The metrics of the daemon `client` talks to.
    pub fn new(client: AtlasdClient) -> Self {
        RemoteMetrics { client }
    }
}

#[async_trait]
impl MetricProvider for RemoteMetrics {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        match self
            .client
            .call(&ApiRequest::Measure {
                query: query.clone(),
            })
            .await?
        {
            ApiResponse::Measurement { measurement } => Ok(measurement),
            other => Err(unexpected("measure", &other)),
        }
    }
}

/// The daemon's supervisor as [`Workloads`].
#[derive(Debug, Clone)]
pub struct RemoteWorkloads {
    client: AtlasdClient,
}

impl RemoteWorkloads {
    /// The workloads of the daemon `client` talks to.
    pub fn new(client: AtlasdClient) -> Self {
        RemoteWorkloads { client }
    }
}

#[async_trait]
impl Workloads for RemoteWorkloads {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()> {
        self.client
            .done(ApiRequest::Deploy {
                service: service.clone(),
                slot,
                release: release.clone(),
                replicas,
            })
            .await
    }

    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
        self.client
            .done(ApiRequest::Scale {
                service: service.clone(),
                slot,
                replicas,
            })
            .await
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        match self
            .client
            .call(&ApiRequest::SlotStatus {
                service: service.clone(),
                slot,
            })
            .await?
        {
            ApiResponse::SlotStatus { status } => Ok(status),
            other => Err(unexpected("slot_status", &other)),
        }
    }
}

/// The daemon's rollout state and leases as a [`StateStore`].
///
/// Leases are granted by the daemon for their ttl and end when not
/// renewed, so a deploy program that dies (even by SIGKILL) gives its
/// lease up after at most one ttl, and the next run resumes the rollout.
#[derive(Debug, Clone)]
pub struct RemoteStateStore {
    client: AtlasdClient,
}

impl RemoteStateStore {
    /// The state of the daemon `client` talks to.
    pub fn new(client: AtlasdClient) -> Self {
        RemoteStateStore { client }
    }
}

#[async_trait]
impl StateStore for RemoteStateStore {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        match self
            .client
            .call(&ApiRequest::LoadState {
                service: service.clone(),
            })
            .await?
        {
            ApiResponse::State { state } => Ok(state.map(|s| Versioned {
                version: s.version,
                value: s.state,
            })),
            other => Err(unexpected("load_state", &other)),
        }
    }

    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        let request = ApiRequest::CompareAndSwap {
            service: service.clone(),
            expected,
            state: Box::new(state.clone()),
        };
        match self.client.call(&request).await? {
            ApiResponse::Version { version } => Ok(version),
            other => Err(unexpected("compare_and_swap", &other)),
        }
    }

    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        let request = ApiRequest::AcquireLease {
            service: service.clone(),
            holder: holder.to_owned(),
            ttl,
        };
        match self.client.call(&request).await? {
            ApiResponse::Lease { lease } => Ok(lease.into()),
            other => Err(unexpected("acquire_lease", &other)),
        }
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        self.client
            .done(ApiRequest::RenewLease {
                lease: WireLease::from(lease),
            })
            .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.client
            .done(ApiRequest::ReleaseLease {
                lease: WireLease::from(lease),
            })
            .await
    }
}
