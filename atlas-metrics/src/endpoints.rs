//! The `/metrics`, `/health` and `/ready` endpoints, as a handler an
//! embedding tool mounts in its own HTTP server ([`Endpoints::handle`]) or as
//! a small server of their own ([`Endpoints::serve`]).
//!
//! - `GET /metrics`: the [`Telemetry`] registry as OpenMetrics text.
//! - `GET /health`: liveness, `200 ok` while the process serves requests.
//! - `GET /ready`: readiness, `200` when every registered
//!   [`ReadinessCheck`] passes within its timeout, `503` listing the ones
//!   that did not. With no checks, ready.
//!
//! `HEAD` works wherever `GET` does; other methods get `405`, other paths `404`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::Result;
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::server::HttpServer;
use crate::telemetry::{OPENMETRICS_CONTENT_TYPE, Telemetry};

/// The default time one readiness check may take: 2 s.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One condition for readiness: a database connection, a loaded config, a
/// reachable dependency.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// `Ok` when ready, `Err(reason)` when not.
    async fn check(&self) -> std::result::Result<(), String>;
}

type BoxedCheck = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>> + Send + Sync,
>;

struct FnCheck(BoxedCheck);

#[async_trait]
impl ReadinessCheck for FnCheck {
    async fn check(&self) -> std::result::Result<(), String> {
        (self.0)().await
    }
}

/// The endpoints' handler. Cheap to clone.
///
/// ```no_run
/// use atlas_metrics::endpoints::Endpoints;
/// use atlas_metrics::Telemetry;
/// # async fn demo() -> atlas_core::Result<()> {
/// let telemetry = Telemetry::new();
/// let server = Endpoints::new(telemetry)
///     .readiness_fn("config", || async { Ok(()) })
///     .serve("127.0.0.1:9464".parse().unwrap())
///     .await?;
/// println!("metrics on http://{}/metrics", server.local_addr());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Endpoints {
    telemetry: Telemetry,
    checks: Vec<(String, Arc<dyn ReadinessCheck>)>,
    check_timeout: Duration,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Endpoints")
            .field("checks", &names)
            .field("check_timeout", &self.check_timeout)
            .finish()
    }
}

impl Endpoints {
    /// Endpoints serving `telemetry`, with no readiness checks and a 2 s
    /// check timeout.
    pub fn new(telemetry: Telemetry) -> Self {
        Endpoints {
            telemetry,
            checks: Vec::new(),
            check_timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }

    /// Adds a readiness check named `name`.
    pub fn readiness(
        mut self,
        name: impl Into<String>,
        check: impl ReadinessCheck + 'static,
    ) -> Self {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }

    /// Adds a readiness check from an async closure.
    pub fn readiness_fn<F, Fut>(self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let boxed: BoxedCheck = Arc::new(move || Box::pin(check()));
        self.readiness(name, FnCheck(boxed))
    }

    /// The time each readiness check may take before it counts as failed.
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Answers one request. Mount this in an existing server for the three
    /// paths; the request body is ignored.
    pub async fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if !matches!(path, "/metrics" | "/health" | "/ready") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let head = request.method() == Method::HEAD;
        if request.method() != Method::GET && !head {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let mut response = match path {
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.telemetry.encode())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                );
                r
            }
            "/health" => text(StatusCode::OK, "ok\n"),
            _ => self.ready().await,
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if head {
            *response.body_mut() = Full::new(Bytes::new());
        }
        response
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        let mut set = JoinSet::new();
        for (i, (name, check)) in self.checks.iter().enumerate() {
            let (check, timeout) = (check.clone(), self.check_timeout);
            let name = name.clone();
            set.spawn(async move {
                let r = match tokio::time::timeout(timeout, check.check()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    )),
                };
                (i, name, r)
            });
        }
        let mut results = Vec::with_capacity(self.checks.len());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => results.push((usize::MAX, "check".into(), Err(format!("panicked: {e}")))),
            }
        }
        results.sort_by_key(|(i, _, _)| *i);
        let failed: Vec<String> = results
            .iter()
            .filter_map(|(_, name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect();
        if failed.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            tracing::info!(failed = ?failed, "not ready");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready\n{}\n", failed.join("\n")),
            )
        }
    }

    /// Binds `addr` (port 0 picks one) and serves the endpoints until
    /// [`EndpointsServer::shutdown`].
    ///
    /// # Errors
    /// [`atlas_core::Error::Backend`] when the address cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> Result<EndpointsServer> {
        let server = HttpServer::bind("endpoints", addr, move |req| {
            let this = self.clone();
            async move { this.handle(&req).await }
        })
        .await?;
        tracing::info!(addr = %server.local, "serving /metrics, /health, /ready");
        Ok(EndpointsServer { server })
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A running endpoints server.
#[derive(Debug)]
pub struct EndpointsServer {
    server: HttpServer,
}

impl EndpointsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local
    }

    /// Stops accepting, lets requests in flight finish, and waits for that.
    pub async fn shutdown(self) {
        let local = self.server.local;
        self.server.shutdown().await;
        tracing::info!(addr = %local, "endpoints stopped");
    }
}
