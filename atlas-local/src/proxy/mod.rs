//! Atlas's own traffic router for one host: an HTTP/1.1 reverse proxy (and
//! HTTP/2 for clients over TLS) that splits a service's traffic by weight
//! between its blue and green slots, for one service or several on one
//! listener.
//!
//! [`ProxyRouter`] implements [`TrafficRouter`]:
//!
//! - **Split.** The [`TrafficSplit`] in force lives behind an `ArcSwap`:
//!   each request reads it once, so a change is atomic and requests in
//!   flight finish where they started. The weighted choice is exact over
//!   time: of every 100 consecutive weighted choices under one split,
//!   exactly the canary's percentage go to the canary, evenly spread.
//! - **Match rule.** A request matching the split's
//!   [`RequestMatch`](atlas_core::RequestMatch) (header or cookie) goes to
//!   the canary whatever the weights.
//! - **Sticky sessions** (option [`ProxyRouterBuilder::sticky_cookie`]): a
//!   weighted choice sets a cookie naming the slot chosen; a request
//!   carrying it returns to that slot while the slot has weight > 0.
//! - **Regions** (option [`ProxyRouterBuilder::regions`]): one host can
//!   stand in for several regions in a failover drill. Each declared
//!   region has an upstream group of its own (blue and green endpoints:
//!   [`ProxyRouter::set_region_endpoints`], or the region's
//!   [`ProxyRegion`] view, a [`TrafficRouter`] of its own). A request
//!   first gets a region by the region weights, exact over time as the
//!   split is (of every 100 consecutive choices, exactly each region's
//!   percentage, evenly interleaved), then a slot by that region's split
//!   (its own, set through its view, or else the router's), then an
//!   endpoint. [`ProxyRouter`] implements
//!   [`RegionRouter`]: the weights swap atomically like the split, a
//!   region at 0 % gets no new request while its requests in flight
//!   finish, and the builder's region set gives the weights in force
//!   until the first change (standby regions at 0). A region chosen for a
//!   request that has no endpoint in the slot its split chose (or no split
//!   at all) passes it to the next serving region in declaration order,
//!   as DNS failover answers with the next healthy record: counted as
//!   that region's fallback, never a 503 while another region with a
//!   share can serve; regions at 0 % are never fallbacks. A failed
//!   connection is retried within the region serving. The router's own
//!   [`set_endpoints`](TrafficRouter::set_endpoints) fills the first
//!   region's group, and the metrics add per-region counters with a
//!   `region` label. A router without regions does no region work per
//!   request.
//! - **Services.** One listener can serve several services, each with
//!   its own split, endpoints, sticky cookie and metrics:
//!   [`ProxyRouter::add_service`] routes the requests a [`ServiceRoute`]
//!   matches (host names, case-insensitive, port ignored, an optional
//!   leading `*.` wildcard label; an optional path prefix) to the service,
//!   and returns its [`ProxyService`] view, a [`TrafficRouter`] of its own
//!   (the router's own `TrafficRouter` calls naming the service act on it
//!   too). The exact host beats a wildcard, and the longest matching path
//!   prefix wins; the path is relayed unchanged. A second claim of a host
//!   and prefix is an [`Error::Conflict`] naming the host and the service
//!   that owns it. The route table swaps atomically like the split, so requests
//!   in flight finish where they started;
//!   [`remove_service`](ProxyRouter::remove_service) drains the service's
//!   requests in flight as removed endpoints drain. A router from
//!   [`ProxyRouter::builder`] serves its own service for every request no
//!   route matches (a router without added services does no routing work
//!   per request but one flag read); one from
//!   [`ProxyRouter::shared_builder`] has no service of its own and answers
//!   those `404`. The metrics list every service, labelled `service`, and
//!   measure the one `args["service"]` names; [`ProxyService::metrics`]
//!   gives one service's. A router can serve an already bound listener
//!   ([`ProxyRouterBuilder::listener`]: systemd socket activation) and
//!   hand a duplicate of its own to a successor
//!   ([`ProxyRouter::try_clone_listener`]): both accept on the one socket
//!   until the old one [shuts down](ProxyRouter::shutdown), and no
//!   connection is refused or dropped unanswered in between.
//! - **Balancing.** Within a slot, the endpoint with the fewest requests in
//!   flight wins; ties go round-robin.
//! - **Draining.** [`set_endpoints`](TrafficRouter::set_endpoints) takes
//!   endpoints no longer listed out of selection at once and returns when
//!   their requests in flight finished, or when the grace period (default
//!   30 s) ran out. New endpoints take traffic at once.
//! - **Failures.** A failed upstream *connection* (refused, unreachable,
//!   connect timeout; not an HTTP error status) is retried once on another
//!   endpoint of the same slot for idempotent methods (GET, HEAD, OPTIONS,
//!   PUT, DELETE, TRACE) without a request body; anything else gets 502.
//!   A slot without endpoints answers 503, a router without a split 503,
//!   an upstream that sends no response head within the response timeout
//!   of the whole request having been sent 504. Request and response bodies stream; nothing
//!   is buffered. A pooled upstream connection found closed when a
//!   bodiless idempotent request is sent on it is replaced by a new one.
//! - **Early answers.** An upstream may answer a request before it has
//!   read the request body (a 404 or 401 from a framework that never
//!   looks at it). The client gets that answer; the proxy then reads and
//!   discards the rest of the body (at most 1 MiB, each read bounded by
//!   the client body timeout), so the connection goes on; with more to
//!   come, or a chunked body not yet ended, the answer says
//!   `Connection: close` and the proxy closes after a staged close
//!   (shuts down writing, discards what the client still sends for up to
//!   1 s, then closes), never with a reset that could destroy the answer.
//!   A request is never sent upstream twice unless it is idempotent and
//!   bodiless. An upstream connection that answered a request with a body
//!   early, or with a status of 400 or more, is closed rather than pooled:
//!   such an upstream may close it right after the answer without saying
//!   so, and the next request on it could not be retried.
//! - **Protocol.** HTTP/1.1 and 1.0 clients, keep-alive and pipelining,
//!   and HTTP/2 clients over TLS;
//!   upstreams are always spoken to in HTTP/1.1 over kept-alive
//!   connections. Message framing follows RFC 9112 strictly, so the proxy
//!   and an upstream can never disagree on where a request ends (request
//!   smuggling): a request with both `Content-Length` and
//!   `Transfer-Encoding`, with differing or invalid `Content-Length`
//!   values, more than one `Host` (or none, in HTTP/1.1; HTTP/1.0
//!   requests get the endpoint as their host), or a malformed head gets
//!   400, and so do bytes that cannot start a request line (binary data,
//!   a TLS handshake sent to the plain port), as soon as they arrive; a
//!   transfer coding other than exactly `chunked` 501; a head over 64 KiB
//!   or 128 fields 431; a client that starts a head but does not finish it
//!   within the client header timeout 408. Each ends the connection. A
//!   chunked request body with a bad chunk size (or any other break of the
//!   coding) gets 400 unless a response has already started; the upstream
//!   connection, which holds part of that request, is closed, never
//!   pooled. A client that sends nothing of its request body for the
//!   client body timeout has the exchange abandoned and both connections
//!   closed.
//!   `Expect: 100-continue` is answered by the proxy. Interim (1xx)
//!   upstream responses are relayed to HTTP/1.1 clients (except the
//!   upstream's own `100 Continue`); a response the proxy cannot frame
//!   unambiguously counts as an upstream failure (502). A response body
//!   may stream for as long as it takes, unless
//!   [`ProxyRouterBuilder::response_idle_timeout`] bounds the quiet time
//!   between two reads.
//!   HTTP/2 clients are served on a TLS listener that offers ALPN `h2`
//!   ([`TlsConfig::http2`], on by default; no cleartext `h2c`): hyper's
//!   HTTP/2 server takes the connection and each stream is relayed to an
//!   HTTP/1.1 upstream chosen exactly as an HTTP/1.1 request's is (host
//!   from `:authority`, the same split, match rule, sticky cookie,
//!   endpoint choice, in-flight count, metrics, access log, HSTS and
//!   [`SLOT_HEADER`]) over the same pooled connections, bodies streamed
//!   both ways; connection-specific headers are dropped both ways and
//!   split `cookie` fields joined. Unreachable upstream 502, no endpoint
//!   503, no response head within the response timeout 504; a failed
//!   connection is retried as on the HTTP/1.1 path. On a stop each
//!   HTTP/2 connection gets a GOAWAY and its open streams finish within
//!   the grace period, and a connection without a stream for the client
//!   header timeout is closed the same way. The request timeout answers
//!   504 before a response head and resets the stream after one. Gzip,
//!   the client body timeout and the response idle timeout apply as on
//!   the HTTP/1.1 path (a stalled body resets the stream rather than
//!   closing the connection), and so does
//!   [`ProxyRouterBuilder::max_request_body`] (413). WebSocket over
//!   HTTP/2 is the extended `CONNECT` of RFC 8441: relayed upstream as an
//!   HTTP/1.1 upgrade with its own `Sec-WebSocket-Key` (the upstream's
//!   `Sec-WebSocket-Accept` checked), answered 200, then counted and
//!   drained as an upgraded HTTP/1.1 connection is.
//! - **Upgrades.** A bodiless HTTP/1.1 request with `Connection: upgrade`
//!   and an `Upgrade` header (WebSocket) is relayed with both; a `101`
//!   answer turns the connection into a tunnel relaying bytes both ways
//!   until either side closes. It stays on the endpoint that accepted it:
//!   when that endpoint leaves its slot (a cutover), the tunnel is closed
//!   after [`ProxyRouterBuilder::upgrade_drain_time`]. The metrics count
//!   upgraded connections, open ones and those a cutover closed.
//! - **Headers.** Hop-by-hop headers (`Connection` and what it names,
//!   `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//!   `Proxy-*`) are stripped both ways; `X-Forwarded-For` is appended to and
//!   a `Forwarded: for=…;proto=http;host=…` element added. The original
//!   `Host` is kept. Every response carries [`SLOT_HEADER`]
//!   (`x-atlas-slot: blue|green`) naming the slot that served it, the
//!   proxy's own error responses included.
//! - **Limits.** Optional: a maximum request body size (413, checked
//!   against the declared length before any upstream is chosen) and a
//!   request timeout bounding a whole exchange (504 if nothing of the
//!   response went out yet); see [`ProxyRouterBuilder::max_request_body`]
//!   and [`ProxyRouterBuilder::request_timeout`].
//! - **TLS.** Optional ([`ProxyRouterBuilder::tls`], [`TlsConfig`]):
//!   the listener terminates TLS 1.2 and 1.3 only, with ECDHE key exchange
//!   and the AES-GCM and ChaCha20-Poly1305 suites only (rustls with the
//!   aws-lc-rs provider, named explicitly, so no process-wide provider is
//!   needed); upstreams are still spoken to in plain HTTP. Several
//!   certificates are chosen by the client's SNI name from their subject
//!   alternative names (wildcards included; the first one otherwise). A
//!   handshake not finished within the client header timeout ends the
//!   connection.
//!   [`ProxyRouter::reload_tls`], or a poll of the files' modification
//!   times ([`TlsConfig::watch_files`]), reads them again: new handshakes
//!   get the new certificates, open connections keep going, and a bad file
//!   keeps the certificates in force. Each certificate's `notAfter` is the
//!   gauge `atlas_proxy_tls_certificate_expiry_timestamp_seconds`. An
//!   optional [`Hsts`] header goes on every TLS response (the upstream's
//!   own is replaced), and an optional plain-HTTP listener
//!   ([`TlsConfig::redirect_http`]) answers everything with a `301` to
//!   `https://` the same host and path. HTTP/2 is offered through ALPN
//!   (see **Protocol**).
//! - **Access log.** Optional JSON lines, one per relayed request
//!   ([`AccessLog`]); off by default, at no cost on the request path.
//! - **Metrics.** [`ProxyRouter::metrics`] gives a [`ProxyMetrics`], a
//!   [`MetricProvider`](atlas_core::MetricProvider) over a sliding window
//!   (default 60 s), also served in the Prometheus text format at
//!   `/metrics` on the admin address ([`ProxyRouterBuilder::admin`]).
//!
//! Upstream connections are kept alive in a pool per endpoint (see
//! [`ProxyRouterBuilder`] for limits and timeouts). The data path runs on
//! worker threads of the router's own, one single-threaded runtime each
//! ([`ProxyRouterBuilder::worker_threads`]): connections are handed to the
//! workers in turn and never cross threads, while the split, the endpoints
//! and the metrics are one state all workers read. The data path is
//! Atlas's own: heads are parsed in place with `httparse` and each
//! exchange is relayed inside its client connection's task, which costs
//! less than half the CPU per request of a general-purpose HTTP stack
//! (see `BENCHMARKS.md`). CONNECT is not relayed.
//!
//! ```no_run
//! use atlas_core::{Endpoint, ServiceName, Slot, TrafficRouter, TrafficSplit};
//! use atlas_local::proxy::ProxyRouter;
//!
//! # async fn demo() -> atlas_core::Result<()> {
//! let service = ServiceName::new("checkout")?;
//! let router = ProxyRouter::builder(service.clone())
//!     .listen("127.0.0.1:8080".parse().unwrap())
//!     .admin("127.0.0.1:9100".parse().unwrap())
//!     .build()
//!     .await?;
//! let blue = [Endpoint::new("checkout-blue-0", "127.0.0.1:7001".parse().unwrap())];
//! router.set_endpoints(&service, Slot::Blue, &blue).await?;
//! router.set_split(&service, &TrafficSplit::all_to(Slot::Blue)).await?;
//! // … later, 5 % to green:
//! router.set_split(&service, &TrafficSplit::new(Slot::Blue, 5)?).await?;
//! router.shutdown().await;
//! # Ok(())
//! # }
//! ```

// Imports run one way, so no module needs another that needs it back:
// h1, metrics, replica_stats, route, server and tls use no other proxy
// module; upstream uses replica_stats; headers and body use h1;
// balance uses h1 and upstream; admin uses metrics; shared uses balance,
// metrics, route, tls and upstream; gzip uses h1; tunnel uses shared and
// upstream; websocket uses nothing; relay, region and service use those;
// h2_body uses relay; http2 uses relay and h2_body; and nothing uses this
// module, which ties them together.
mod access_log;
mod admin;
mod balance;
mod body;
mod gzip;
mod h1;
mod h2_body;
mod headers;
mod http2;
mod metrics;
mod region;
mod relay;
mod replica_stats;
mod route;
mod server;
mod service;
mod shared;
mod tls;
mod tunnel;
mod upstream;
mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::region::{RegionName, RegionRouter, RegionSet, RegionWeights};
use atlas_core::{Endpoint, Error, Result, ServiceName, Slot, TrafficRouter, TrafficSplit};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

pub use access_log::AccessLog;
pub use gzip::GzipPolicy;
pub use h1::SLOT_HEADER;
pub use metrics::{ProxyMetrics, WindowStats};
pub use region::ProxyRegion;
pub use replica_stats::ReplicaSnapshot;
pub use route::ServiceRoute;
pub use service::ProxyService;
pub use tls::{Hsts, TlsConfig};

use balance::{RegionPlan, SplitState};
use metrics::MAX_WINDOW;
use server::stopped;
use shared::{Regions, Settings, Shared, StickyCookie};
use tls::Terminator;
use upstream::PoolConfig;

/// The backend name in errors from this module.
const BACKEND: &str = "proxy-router";

/// Configures and starts a [`ProxyRouter`]; from [`ProxyRouter::builder`].
///
/// | option | default |
/// |---|---|
/// | [`listen`](Self::listen) | `127.0.0.1:0` (any free port; see [`ProxyRouter::local_addr`]) |
/// | [`admin`](Self::admin) | none (no admin endpoint) |
/// | [`grace_period`](Self::grace_period) | 30 s |
/// | [`connect_timeout`](Self::connect_timeout) | 2 s |
/// | [`response_timeout`](Self::response_timeout) | 60 s |
/// | [`pool_idle_timeout`](Self::pool_idle_timeout) | 30 s |
/// | [`pool_max_idle_per_endpoint`](Self::pool_max_idle_per_endpoint) | 128 |
/// | [`client_header_timeout`](Self::client_header_timeout) | 30 s |
/// | [`client_body_timeout`](Self::client_body_timeout) | 60 s |
/// | [`metrics_window`](Self::metrics_window) | 60 s |
/// | [`sticky_cookie`](Self::sticky_cookie) | none (no sticky sessions) |
/// | [`initial_split`](Self::initial_split) | none (503 until a split is set) |
/// | [`listener`](Self::listener) | none (bind `listen`) |
/// | [`reuse_port`](Self::reuse_port) | off |
/// | [`worker_threads`](Self::worker_threads) | the number of cores |
/// | [`max_request_body`](Self::max_request_body) | none (no limit) |
/// | [`request_timeout`](Self::request_timeout) | none (no limit) |
/// | [`access_log`](Self::access_log) | none (off) |
/// | [`upgrade_drain_time`](Self::upgrade_drain_time) | 30 s |
/// | [`response_idle_timeout`](Self::response_idle_timeout) | none (no limit) |
/// | [`gzip`](Self::gzip) | none (no compression) |
/// | [`tls`](Self::tls) | none (plain HTTP) |
/// | [`regions`](Self::regions) | none (one upstream group) |
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is awaited"]
pub struct ProxyRouterBuilder {
    service: ServiceName,
    /// Whether the router serves `service` for requests no added route
    /// matches (false from [`ProxyRouter::shared_builder`]).
    own: bool,
    /// An already bound listener, served instead of binding `listen`.
    listener: Option<Arc<std::net::TcpListener>>,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    grace_period: Duration,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    pool_idle_timeout: Duration,
    pool_max_idle: usize,
    client_header_timeout: Option<Duration>,
    client_body_timeout: Option<Duration>,
    metrics_window: Duration,
    sticky_cookie: Option<String>,
    initial_split: Option<TrafficSplit>,
    reuse_port: bool,
    paused: bool,
    worker_threads: usize,
    max_request_body: Option<u64>,
    request_timeout: Option<Duration>,
    access_log: Option<AccessLog>,
    upgrade_drain_time: Duration,
    response_idle_timeout: Option<Duration>,
    gzip: Option<GzipPolicy>,
    tls: Option<TlsConfig>,
    regions: Option<RegionSet>,
}

impl ProxyRouterBuilder {
    /// Where the proxy listens. Port 0 picks a free port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves on `listener`, a socket already bound and listening, instead
    /// of binding [`listen`](Self::listen) (which, with
    /// [`reuse_port`](Self::reuse_port), is then ignored): a socket passed
    /// by systemd's socket activation, or handed over by the process that
    /// served before (over `SCM_RIGHTS`, or to a router in the same
    /// process; see [`ProxyRouter::try_clone_listener`]). The router
    /// serves a duplicate of its descriptor, so the socket stays open as
    /// long as either is; [`ProxyRouter::shutdown`] closes the router's own
    /// descriptors only and never shuts the socket down, so another holder
    /// keeps accepting on it without refusing a connection.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Builds the router without accepting connections until
    /// [`ProxyRouter::start_accepting`]: connections wait in the socket's
    /// queue (or go to another holder of the socket) while the program
    /// adds services, splits and endpoints, so none is answered by a router
    /// that does not know its routes yet. Off by default.
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Serves `GET /metrics` (Prometheus text format) on `addr`. Port 0
    /// picks a free port; see [`ProxyRouter::admin_addr`].
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// How long [`set_endpoints`](TrafficRouter::set_endpoints) waits for
    /// requests in flight to removed endpoints, and how long
    /// [`ProxyRouter::shutdown`] waits for open exchanges. Zero does not
    /// wait. Default 30 s.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// How long a TCP connect to an upstream may take before it counts as a
    /// failed connection (retried elsewhere for idempotent requests, else
    /// 502). Default 2 s, enough for any reachable loopback or LAN peer.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an upstream may take to send the response head once the
    /// whole request was sent (504 after that); `None` waits forever. For a
    /// request with a body the clock starts after its last byte, so a slow
    /// upload is never cut off by it (see
    /// [`client_body_timeout`](Self::client_body_timeout)); response
    /// bodies are not limited. Default 60 s, as nginx's
    /// `proxy_read_timeout`.
    pub fn response_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.response_timeout = timeout.into();
        self
    }

    /// How long an idle upstream connection stays in the pool. Default
    /// 30 s; keep it below the upstreams' own keep-alive timeout.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections each endpoint keeps at most (busy
    /// connections are not limited). Zero disables keep-alive to upstreams.
    /// Default 128.
    pub fn pool_max_idle_per_endpoint(mut self, max: usize) -> Self {
        self.pool_max_idle = max;
        self
    }

    /// How long a client may take to send a request head, which also
    /// bounds how long an idle client keep-alive connection stays open;
    /// `None` disables it. Default 30 s.
    pub fn client_header_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.client_header_timeout = timeout.into();
        self
    }

    /// How long a client uploading a request body may send nothing (the
    /// time between two reads, as nginx's `client_body_timeout`) before the
    /// exchange is abandoned and both connections closed, so a stalled
    /// upload cannot hold an upstream connection forever; `None` disables
    /// it. Default 60 s.
    pub fn client_body_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.client_body_timeout = timeout.into();
        self
    }

    /// The sliding window the metrics keep, 1 s to 24 h; queries ask for
    /// at most this much. Default 60 s (1 s buckets; longer windows use
    /// 60 wider buckets).
    pub fn metrics_window(mut self, window: Duration) -> Self {
        self.metrics_window = window;
        self
    }

    /// Enables sticky sessions with cookie `name`: a weighted choice sets
    /// `name=blue|green; Path=/; HttpOnly; SameSite=Lax`, and a request
    /// carrying the cookie goes to the slot it names while that slot has
    /// weight > 0. Requests pinned by the split's match rule neither read
    /// nor set it.
    pub fn sticky_cookie(mut self, name: impl Into<String>) -> Self {
        self.sticky_cookie = Some(name.into());
        self
    }

    /// The split in force from the start, instead of answering 503 until
    /// [`set_split`](TrafficRouter::set_split) is called.
    pub fn initial_split(mut self, split: TrafficSplit) -> Self {
        self.initial_split = Some(split);
        self
    }

    /// Binds the proxy listener with `SO_REUSEPORT` (Unix only; ignored
    /// elsewhere), so several routers, each on its own single-threaded
    /// runtime like nginx's worker processes, can listen on the same
    /// address and the kernel spreads new connections among them. Each
    /// such router keeps its own split, endpoints, pools and metrics: the
    /// caller applies every change to all of them. Off by default.
    pub fn reuse_port(mut self, reuse: bool) -> Self {
        self.reuse_port = reuse;
        self
    }

    /// How many threads relay the traffic, each running a single-threaded
    /// Tokio runtime of its own, as nginx's worker processes do: one
    /// thread accepts and hands the connections to the workers in turn,
    /// and a client connection, with the upstream connections it uses,
    /// stays on its worker, so a request never crosses threads. The split,
    /// the endpoints and the metrics are one state shared by all workers,
    /// so a [`set_split`](TrafficRouter::set_split) applies to all of them
    /// at once; each worker keeps its own upstream connection pool.
    ///
    /// Zero runs the data path on the runtime that calls
    /// [`build`](Self::build) instead (one multi-threaded runtime shared
    /// with the rest of the program), which costs more CPU per request.
    /// Default: the number of cores.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads;
        self
    }

    /// The largest request body the proxy relays, in bytes. A request
    /// declaring a longer `Content-Length` is answered 413 before any
    /// upstream is chosen; a chunked body is counted as it streams, and
    /// the one that passes the limit is cut off before its excess goes
    /// upstream: that upstream connection is closed, so no upstream ever
    /// receives a complete body over the limit, and the client gets 413
    /// unless a response had already started. Either way the client
    /// connection closes. `None`: no limit (the default).
    pub fn max_request_body(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.max_request_body = bytes.into();
        self
    }

    /// How long one exchange may take, from its complete request head to
    /// the end of the response body. One that takes longer is abandoned
    /// and both its connections closed; the client gets 504 if nothing of
    /// the response had reached it, and it counts as a timeout in the
    /// metrics. Unlike [`response_timeout`](Self::response_timeout) it
    /// also bounds slow uploads and long response bodies, so leave it off
    /// for streaming responses. `None`: no limit (the default).
    pub fn request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.request_timeout = timeout.into();
        self
    }

    /// Writes an access log: one JSON line per relayed request (see
    /// [`AccessLog`] for the fields). Off by default, and then it costs
    /// nothing on the request path.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// How long an upgraded (WebSocket) connection stays open after its
    /// endpoint left the slot (a cutover): it stays on the endpoint that
    /// accepted it until then, and is closed and counted as drained after.
    /// Zero closes such connections at once. Default 30 s, the default
    /// grace period.
    pub fn upgrade_drain_time(mut self, drain: Duration) -> Self {
        self.upgrade_drain_time = drain;
        self
    }

    /// How long an upstream may send nothing while a response body is
    /// being relayed (the time between two reads); the response is then
    /// cut off and both connections closed. Off by default, since
    /// streaming responses (server-sent events) may be quiet for long.
    pub fn response_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.response_idle_timeout = timeout.into();
        self
    }

    /// Compresses text responses with gzip for clients that accept it, as
    /// `policy` says (see [`GzipPolicy`] for when). Off by default.
    pub fn gzip(mut self, policy: GzipPolicy) -> Self {
        self.gzip = Some(policy);
        self
    }

    /// Terminates TLS on the proxy's listener with `config` (certificates
    /// chosen by SNI, HSTS, an optional plain-HTTP redirect listener);
    /// the upstreams are still reached over plain HTTP. Off by default.
    pub fn tls(mut self, config: TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Declares the service's regions: each gets an upstream group of its
    /// own (blue and green endpoints, set through
    /// [`ProxyRouter::set_region_endpoints`] or [`ProxyRouter::region`]),
    /// and requests are spread over them by the region weights, starting
    /// with the set's normal weights (active regions their share, standby
    /// regions none) until
    /// [`set_region_weights`](RegionRouter::set_region_weights) changes
    /// them. The first region listed is the one the router's own
    /// [`set_endpoints`](TrafficRouter::set_endpoints) fills. At most 32
    /// regions. None by default: one upstream group, and no region work on
    /// the request path.
    pub fn regions(mut self, regions: RegionSet) -> Self {
        self.regions = Some(regions);
        self
    }

    /// Validates the options, binds the listeners and starts serving: the
    /// data path on its [worker threads](Self::worker_threads), the admin
    /// endpoint and the pool reaper on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the option for a zero connect, pool
    /// idle, response, response idle, request or header timeout, a metrics window outside 1 s–24 h,
    /// an invalid sticky cookie name, an invalid initial split match rule,
    /// a gzip level outside 1–9 or more than 32 regions;
    /// [`Error::Backend`] when an address cannot be bound or a worker
    /// thread cannot be started.
    pub async fn build(self) -> Result<ProxyRouter> {
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.pool_idle_timeout.is_zero() {
            return Err(Error::invalid(
                "pool_idle_timeout",
                "must be greater than zero",
            ));
        }
        if self.response_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "response_timeout",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if self.client_body_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "client_body_timeout",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if let Some(policy) = &self.gzip
            && !(1..=9).contains(&policy.level)
        {
            return Err(Error::invalid(
                "gzip.level",
                format!("must be 1 to 9, got {}", policy.level),
            ));
        }
        if self.response_idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "response_idle_timeout",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if self.request_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "request_timeout",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if self.client_header_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "client_header_timeout",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if self.metrics_window < Duration::from_secs(1) || self.metrics_window > MAX_WINDOW {
            return Err(Error::invalid(
                "metrics_window",
                format!("must be between 1s and 24h, got {:?}", self.metrics_window),
            ));
        }
        if !self.own {
            if self.initial_split.is_some() {
                return Err(Error::invalid(
                    "initial_split",
                    "a router without a service of its own has no split (set one per added service)",
                ));
            }
            if self.regions.is_some() {
                return Err(Error::invalid(
                    "regions",
                    "a router without a service of its own has no regions",
                ));
            }
        }
        let tls = self
            .tls
            .as_ref()
            .map(Terminator::new)
            .transpose()?
            .map(Arc::new);
        let sticky = self.sticky_cookie.map(StickyCookie::new).transpose()?;
        let initial = self
            .initial_split
            .as_ref()
            .map(SplitState::new)
            .transpose()?;
        let regions = self.regions.as_ref().map(Regions::new).transpose()?;

        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                Error::backend_with(BACKEND, format!("cannot listen on {addr} ({what})"), e)
            })
        };
        let listener = match &self.listener {
            Some(given) => adopt_listener(given)?,
            None if self.reuse_port => bind_reuse_port(self.listen)?,
            None => bind(self.listen, "proxy").await?,
        };
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::backend_with(BACKEND, "cannot read the bound address", e))?;
        // A descriptor of the router's own for try_clone_listener, closed
        // at shutdown with the others.
        let (listener, listen_socket) = with_duplicate(listener)?;
        let admin_listener = match self.admin {
            Some(addr) => Some(bind(addr, "admin").await?),
            None => None,
        };
        let redirect_listener = match self.tls.as_ref().and_then(|t| t.redirect_http) {
            Some(addr) => Some(bind(addr, "HTTP to HTTPS redirect").await?),
            None => None,
        };
        let redirect_addr = redirect_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| {
                Error::backend_with(BACKEND, "cannot read the bound redirect address", e)
            })?;
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| Error::backend_with(BACKEND, "cannot read the bound admin address", e))?;

        let shared = Arc::new(Shared::new(
            self.service,
            self.own,
            initial,
            regions,
            self.metrics_window,
            PoolConfig {
                stacks: self.worker_threads.max(1),
                connect_timeout: self.connect_timeout,
                idle_timeout: self.pool_idle_timeout,
                max_idle: self.pool_max_idle,
                response_timeout: self.response_timeout,
            },
            Settings {
                grace_period: self.grace_period,
                client_header_timeout: self.client_header_timeout,
                client_body_timeout: self.client_body_timeout,
                sticky,
                max_request_body: self.max_request_body,
                request_timeout: self.request_timeout,
                access_log: self.access_log,
                upgrade_drain: self.upgrade_drain_time,
                gzip: self.gzip,
                response_idle_timeout: self.response_idle_timeout,
            },
            tls.as_ref().map(|t| t.expiries.clone()),
        ));

        let (stop, stop_rx) = watch::channel(false);
        let (accepting, accepting_rx) = watch::channel(!self.paused);
        let span = tracing::info_span!("proxy_router", service = %shared.service);
        let mut tasks = Vec::with_capacity(3);

        if self.worker_threads == 0 {
            let for_requests = shared.clone();
            let tls = tls.clone();
            let mut gate = (accepting_rx.clone(), stop_rx.clone());
            let serve = server::serve(
                "proxy",
                listener,
                stop_rx.clone(),
                self.grace_period,
                move |stream, peer, stop| {
                    http2::serve_connection(for_requests.clone(), tls.clone(), stream, peer, stop)
                        .instrument(tracing::trace_span!("client_connection", %peer))
                },
            );
            tasks.push(tokio::spawn(
                async move {
                    if server::accepting(&mut gate.0, &mut gate.1).await {
                        serve.await;
                    }
                }
                .instrument(span.clone()),
            ));
        } else {
            let started = start_workers(
                self.worker_threads,
                listener,
                &shared,
                tls.as_ref(),
                (&stop_rx, &accepting_rx),
                self.grace_period,
                &span,
            );
            match started {
                Ok(done) => tasks.extend(done.into_iter().map(|done| {
                    tokio::spawn(async move {
                        let _ = done.await;
                    })
                })),
                Err(e) => {
                    // Workers already started stop again.
                    stop.send_replace(true);
                    return Err(e);
                }
            }
        }

        if let Some(admin_listener) = admin_listener {
            let metrics = ProxyMetrics::new(shared.clone());
            let header_timeout = self.client_header_timeout;
            tasks.push(tokio::spawn(
                server::serve(
                    "admin",
                    admin_listener,
                    stop_rx.clone(),
                    self.grace_period,
                    move |stream, _peer, stop| {
                        let metrics = metrics.clone();
                        let service = service_fn(move |request| {
                            let response = admin::respond(&metrics, &request);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        serve_http1("admin", stream, service, header_timeout, stop)
                    },
                )
                .instrument(span.clone()),
            ));
        }

        if let Some(redirect_listener) = redirect_listener {
            let tls_port = local_addr.port();
            tasks.push(tokio::spawn(
                server::serve(
                    "redirect",
                    redirect_listener,
                    stop_rx.clone(),
                    self.grace_period,
                    move |stream, _peer, stop| {
                        serve_redirect(stream, tls_port, self.client_header_timeout, stop)
                    },
                )
                .instrument(span.clone()),
            ));
        }
        if let (Some(tls), Some(every)) = (&tls, self.tls.as_ref().and_then(|t| t.watch_interval)) {
            tasks.push(tokio::spawn(
                watch_certificates(tls.clone(), every, stop_rx.clone()).instrument(span.clone()),
            ));
        }
        tasks.push(tokio::spawn(
            reap_idle(shared.clone(), stop_rx.clone()).instrument(span.clone()),
        ));
        if let Some(log) = shared.access_log.clone() {
            tasks.push(tokio::spawn(flush_access_log(log, stop_rx.clone())));
        }

        span.in_scope(|| {
            tracing::info!(
                %local_addr,
                admin_addr = ?admin_addr,
                tls = tls.is_some(),
                redirect_addr = ?redirect_addr,
                reuse_port = self.reuse_port,
                split = ?shared.current_split().map(|s| s.to_string()),
                regions = ?self.regions.as_ref().map(|set| set.normal_weights().to_string()),
                "proxy router listening"
            );
        });
        Ok(ProxyRouter {
            shared,
            local_addr,
            admin_addr,
            redirect_addr,
            tls,
            listen_socket: Mutex::new(Some(listen_socket)),
            stop,
            accepting,
            tasks: Mutex::new(tasks),
            span,
        })
    }
}

/// Starts `count` data-path worker threads serving `listener`'s
/// connections with `shared`; the first also runs the acceptor. Returns
/// one receiver per thread, resolved when the thread has stopped.
fn start_workers(
    count: usize,
    listener: TcpListener,
    shared: &Arc<Shared>,
    tls: Option<&Arc<Terminator>>,
    (stop, accepting): (&watch::Receiver<bool>, &watch::Receiver<bool>),
    grace: Duration,
    span: &tracing::Span,
) -> Result<Vec<oneshot::Receiver<()>>> {
    let listener = listener
        .into_std()
        .map_err(|e| Error::backend_with(BACKEND, "cannot hand the listener to a worker", e))?;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let mut acceptor = Some((listener, senders));
    let mut done = Vec::with_capacity(count);
    for (index, incoming) in receivers.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::backend_with(BACKEND, "cannot start a worker runtime", e))?;
        let acceptor = acceptor.take();
        let (shared, stop, span) = (shared.clone(), stop.clone(), span.clone());
        let accepting = accepting.clone();
        let tls = tls.cloned();
        let (finished, finished_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("atlas-proxy-{index}"))
            .spawn(move || {
                upstream::set_worker(index);
                runtime.block_on(async move {
                    if let Some((listener, workers)) = acceptor {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let (mut accepting, mut stopped) = (accepting, stop.clone());
                                let stop = stop.clone();
                                tokio::spawn(
                                    async move {
                                        if server::accepting(&mut accepting, &mut stopped).await {
                                            server::dispatch(listener, stop, workers).await;
                                        }
                                    }
                                    .instrument(span.clone()),
                                );
                            }
                            Err(e) => tracing::error!(
                                parent: &span,
                                error = %e,
                                "the proxy listener cannot be registered; no connection is accepted"
                            ),
                        }
                    }
                    let worker_span = tracing::debug_span!(parent: &span, "worker", index);
                    server::serve_handed(incoming, stop, grace, move |stream, peer, stop| {
                        http2::serve_connection(shared.clone(), tls.clone(), stream, peer, stop)
                            .instrument(tracing::trace_span!("client_connection", %peer))
                    })
                    .instrument(worker_span)
                    .await;
                });
                drop(runtime);
                let _ = finished.send(());
            })
            .map_err(|e| Error::backend_with(BACKEND, "cannot start a worker thread", e))?;
        done.push(finished_rx);
    }
    Ok(done)
}

/// A listener of this router's own on the socket `given` is bound to (a
/// duplicate of its descriptor), non-blocking for Tokio.
fn adopt_listener(given: &std::net::TcpListener) -> Result<TcpListener> {
    let failed = |e| Error::backend_with(BACKEND, "cannot take over the given listener", e);
    let listener = given.try_clone().map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    TcpListener::from_std(listener).map_err(failed)
}

/// `listener` with a duplicate of its descriptor, as a standard listener.
fn with_duplicate(listener: TcpListener) -> Result<(TcpListener, std::net::TcpListener)> {
    let failed = |e| Error::backend_with(BACKEND, "cannot duplicate the listener", e);
    let listener = listener.into_std().map_err(failed)?;
    let duplicate = listener.try_clone().map_err(failed)?;
    Ok((TcpListener::from_std(listener).map_err(failed)?, duplicate))
}

/// Binds `addr` with `SO_REUSEPORT` where the platform has it.
fn bind_reuse_port(addr: SocketAddr) -> Result<TcpListener> {
    let failed = |e| {
        Error::backend_with(
            BACKEND,
            format!("cannot listen on {addr} (proxy, reuse_port)"),
            e,
        )
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(failed)?;
    socket.set_reuseaddr(true).map_err(failed)?;
    #[cfg(unix)]
    socket.set_reuseport(true).map_err(failed)?;
    socket.bind(addr).map_err(failed)?;
    socket.listen(1024).map_err(failed)
}

/// Reloads the TLS certificates whenever one of their files' modification
/// times changes, checked every `every`; a failed reload keeps the
/// certificates in force and is retried at the next change.
async fn watch_certificates(
    tls: Arc<Terminator>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = tls.modified();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(every) => {
                let now = tls.modified();
                if now != seen {
                    seen = now;
                    if let Err(error) = tls.reload() {
                        tracing::warn!(%error, "TLS certificate files changed but cannot be loaded; keeping the certificates in force");
                    }
                }
            }
        }
    }
}

/// Answers every request on a plain-HTTP connection with a `301` to the
/// same host and path over HTTPS on `tls_port` (`400` without a usable
/// `Host`).
async fn serve_redirect(
    stream: tokio::net::TcpStream,
    tls_port: u16,
    header_timeout: Option<Duration>,
    stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())
            .unwrap_or("");
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = tls::https_location(host, path, tls_port);
        tracing::trace!(?location, "redirecting to HTTPS");
        let response = match location {
            Some(location) => hyper::Response::builder()
                .status(http::StatusCode::MOVED_PERMANENTLY)
                .header(http::header::LOCATION, location)
                .header(http::header::CONTENT_LENGTH, "0")
                .body(http_body_util::Empty::<bytes::Bytes>::new()),
            None => hyper::Response::builder()
                .status(http::StatusCode::BAD_REQUEST)
                .header(http::header::CONTENT_LENGTH, "0")
                .body(http_body_util::Empty::<bytes::Bytes>::new()),
        };
        async move { response }
    });
    serve_http1("redirect", stream, service, header_timeout, stop).await;
}

/// Serves one HTTP/1.1 connection of the admin or redirect listener with
/// `service` until it ends, or, once `stop` turns true, until the
/// exchange in progress is answered.
async fn serve_http1<S>(
    what: &'static str,
    stream: tokio::net::TcpStream,
    service: S,
    header_timeout: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(header_timeout);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(server = what, error = %e, "connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

/// Writes the access log's buffered lines once a second, so that a quiet
/// router's last lines do not wait for the buffer to fill.
async fn flush_access_log(log: AccessLog, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => log.flush(),
        }
    }
}

/// Closes expired idle upstream connections in the background, so an
/// endpoint that stops getting traffic does not hold sockets forever.
async fn reap_idle(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every =
        (shared.pool.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(every) => shared.reap(),
        }
    }
}

/// Atlas's HTTP/1.1 reverse proxy for one service, splitting its traffic
/// between the blue and green slots, and between regions when it declares
/// them. See the [module docs](self) for routing, regions, balancing,
/// draining, retries and headers.
///
/// Built with [`ProxyRouter::builder`]; serves until
/// [`shutdown`](Self::shutdown) or until dropped (dropping stops accepting
/// at once and lets open exchanges finish within the grace period in the
/// background). Share it with an engine as `Arc<ProxyRouter>`.
///
/// [`TrafficRouter`] calls naming a service added with
/// [`add_service`](Self::add_service) act on that service; calls naming
/// any other service than the router's own, and [`RegionRouter`] calls
/// naming another service, fail with [`Error::NotFound`].
///
/// ```no_run
/// use atlas_core::region::{Region, RegionName, RegionRouter, RegionSet, RegionWeights};
/// use atlas_core::{Endpoint, ServiceName, Slot, TrafficSplit};
/// use atlas_local::proxy::ProxyRouter;
///
/// # async fn demo() -> atlas_core::Result<()> {
/// let service = ServiceName::new("checkout")?;
/// let (us, eu) = (RegionName::new("us-east")?, RegionName::new("eu-west")?);
/// let router = ProxyRouter::builder(service.clone())
///     .regions(RegionSet::new(vec![
///         Region::active(us.clone(), 60),
///         Region::active(eu.clone(), 40),
///     ])?)
///     .initial_split(TrafficSplit::all_to(Slot::Blue))
///     .build()
///     .await?;
/// let us_blue = [Endpoint::new("us-blue-0", "127.0.0.1:7001".parse().unwrap())];
/// let eu_blue = [Endpoint::new("eu-blue-0", "127.0.0.1:7101".parse().unwrap())];
/// router.set_region_endpoints(&us, Slot::Blue, &us_blue).await?;
/// router.set_region_endpoints(&eu, Slot::Blue, &eu_blue).await?;
/// // us-east fails: all traffic to eu-west in one atomic change.
/// router
///     .set_region_weights(&service, &RegionWeights::new([(us, 0), (eu, 100)])?)
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct ProxyRouter {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    redirect_addr: Option<SocketAddr>,
    tls: Option<Arc<Terminator>>,
    /// A descriptor of the listening socket, for
    /// [`try_clone_listener`](Self::try_clone_listener); closed at shutdown.
    listen_socket: Mutex<Option<std::net::TcpListener>>,
    stop: watch::Sender<bool>,
    /// False while a router built with
    /// [`start_paused`](ProxyRouterBuilder::start_paused) waits.
    accepting: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    span: tracing::Span,
}

impl std::fmt::Debug for ProxyRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRouter")
            .field("service", &self.shared.service)
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .field("split", &self.shared.current_split())
            .finish_non_exhaustive()
    }
}

impl ProxyRouter {
    /// A builder for a router of `service`, with the defaults listed on
    /// [`ProxyRouterBuilder`].
    pub fn builder(service: ServiceName) -> ProxyRouterBuilder {
        ProxyRouterBuilder {
            service,
            own: true,
            listener: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            grace_period: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Some(Duration::from_secs(60)),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 128,
            client_header_timeout: Some(Duration::from_secs(30)),
            client_body_timeout: Some(Duration::from_secs(60)),
            metrics_window: Duration::from_secs(60),
            sticky_cookie: None,
            initial_split: None,
            reuse_port: false,
            paused: false,
            worker_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_request_body: None,
            request_timeout: None,
            access_log: None,
            upgrade_drain_time: Duration::from_secs(30),
            response_idle_timeout: None,
            gzip: None,
            tls: None,
            regions: None,
        }
    }

    /// A builder for a router without a service of its own, such as a
    /// daemon serving several services on one listener: it serves only
    /// the services added with [`add_service`](Self::add_service), routed
    /// by host and path, and answers requests no route matches with `404`
    /// and a short body naming the host (counted as
    /// `atlas_proxy_unmatched_requests_total`). Its
    /// [`TrafficRouter`] calls act on the services added; its
    /// [`service`](Self::service) is the placeholder `proxy`, which names
    /// nothing served. The builder's defaults are those of
    /// [`builder`](Self::builder); [`initial_split`](ProxyRouterBuilder::initial_split)
    /// and [`regions`](ProxyRouterBuilder::regions) have nothing to apply
    /// to and are refused.
    pub fn shared_builder() -> ProxyRouterBuilder {
        let placeholder = ServiceName::new("proxy").expect("a valid service name");
        ProxyRouterBuilder {
            own: false,
            ..Self::builder(placeholder)
        }
    }

    /// The service this router serves for requests no added route
    /// matches: its own service (see [`shared_builder`](Self::shared_builder)
    /// for a router without one).
    pub fn service(&self) -> &ServiceName {
        &self.shared.service
    }

    /// The address of the plain-HTTP listener that redirects to HTTPS,
    /// when [`TlsConfig::redirect_http`] was set.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// Reads the TLS certificate and key files again and serves them to
    /// new connections; open connections keep going with the certificate
    /// they started with.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the file when one cannot be read,
    /// holds no certificate or key, or the key does not match its
    /// certificate (the certificates in force stay), or on `tls` when the
    /// router does not terminate TLS.
    pub fn reload_tls(&self) -> Result<()> {
        let _span = self.span.enter();
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err(Error::invalid("tls", "the router does not terminate TLS")),
        }
    }

    /// A duplicate of the listening socket's descriptor, to hand to the
    /// router that takes over: [`ProxyRouterBuilder::listener`] in this
    /// process, or another process over `SCM_RIGHTS` (its raw descriptor
    /// through `AsRawFd`). Both then accept on the one socket; once this
    /// router [shuts down](Self::shutdown), the other alone does, and no
    /// connection is refused in between.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] after [`shutdown`](Self::shutdown);
    /// [`Error::Backend`] when the descriptor cannot be duplicated (out of
    /// descriptors).
    pub fn try_clone_listener(&self) -> Result<std::net::TcpListener> {
        let socket = self
            .listen_socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let socket = socket.as_ref().ok_or_else(|| {
            Error::conflict("the proxy router was shut down; its listener is closed")
        })?;
        socket
            .try_clone()
            .map_err(|e| Error::backend_with(BACKEND, "cannot duplicate the listener", e))
    }

    /// The address the proxy listens on (the actual port when built with
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, if [`ProxyRouterBuilder::admin`] was set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy's metrics: a [`MetricProvider`](atlas_core::MetricProvider)
    /// and the Prometheus exposition.
    pub fn metrics(&self) -> ProxyMetrics {
        ProxyMetrics::new(self.shared.clone())
    }

    /// The regions declared on the builder, in order (empty for a router
    /// without regions).
    pub fn regions(&self) -> Vec<RegionName> {
        self.shared
            .regions
            .as_ref()
            .map(|r| r.names.to_vec())
            .unwrap_or_default()
    }

    /// Region `region` as a [`TrafficRouter`] of its own: its endpoints,
    /// and a split that applies in that region only (see [`ProxyRegion`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the region when the router does not
    /// declare it.
    pub fn region(&self, region: &RegionName) -> Result<ProxyRegion> {
        ProxyRegion::new(&self.shared, region, &self.span)
    }

    /// Replaces the endpoints of `slot` in region `region`: as
    /// [`set_endpoints`](TrafficRouter::set_endpoints), for that region's
    /// upstream group.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the region when the router does not
    /// declare it, or naming the entry as `set_endpoints` does.
    pub async fn set_region_endpoints(
        &self,
        region: &RegionName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        let view = self.region(region)?;
        view.set_endpoints(&self.shared.service, slot, endpoints)
            .await
    }

    /// The endpoints of `slot` that receive new requests (draining ones
    /// excluded); in a router with regions, those of its first region.
    pub fn endpoints(&self, slot: Slot) -> Vec<Endpoint> {
        self.shared.endpoints(slot)
    }

    /// Per-replica counters of the endpoints `slot` lists now (in a router
    /// with regions, in its first region): requests,
    /// failures and latency since each was listed, and the requests in
    /// flight and connections open to it. Rates and percentiles over a
    /// window are the difference of two snapshots
    /// ([`ReplicaSnapshot::request_rate`],
    /// [`ReplicaSnapshot::latency_quantile`]).
    pub fn replica_snapshots(&self, slot: Slot) -> Vec<ReplicaSnapshot> {
        self.shared.replica_snapshots(slot)
    }

    /// Requests in flight to the listed endpoints of `slot` (in a router
    /// with regions, in its first region; see [`ProxyRegion::in_flight`]).
    pub fn in_flight(&self, slot: Slot) -> usize {
        self.shared.in_flight(slot)
    }

    /// Adds `service`, routed by `route` (host names, optional path
    /// prefix; see [`ServiceRoute`]), in one atomic swap of the route
    /// table: each request reads the table once, so requests in flight
    /// finish where they started. The service starts with no split and no
    /// endpoints (503 until both are set through the view returned, or
    /// through this router's [`TrafficRouter`] calls naming it) and the
    /// router's settings (timeouts, pools, sticky cookie, limits, access
    /// log, gzip).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field (`route.hosts[i]`,
    /// `route.path_prefix`) of an invalid route; [`Error::Conflict`] when
    /// `service` is the router's own or was added already, or when another
    /// service claims one of the hosts with the same path prefix (the
    /// message names the host and that service). Nothing changes then.
    pub fn add_service(&self, service: ServiceName, route: ServiceRoute) -> Result<ProxyService> {
        service::add(&self.shared, service, route, &self.span)
    }

    /// Removes a service added with [`add_service`](Self::add_service):
    /// no new request goes to it once this is called, and it returns when
    /// its requests in flight finished, or when the grace period ran out
    /// (then `Ok`, logging a warning), as endpoints removed by
    /// [`set_endpoints`](TrafficRouter::set_endpoints) drain. Its views
    /// then refuse calls with [`Error::NotFound`].
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such service was added.
    pub async fn remove_service(&self, service: &ServiceName) -> Result<()> {
        service::remove(&self.shared, service, &self.span).await
    }

    /// The view of `service`, added with [`add_service`](Self::add_service);
    /// `None` when no such service was added.
    pub fn service_view(&self, service: &ServiceName) -> Option<ProxyService> {
        let table = self.shared.services.table.load();
        let state = table.get(service)?.clone();
        let route = table.services().find(|(s, _, _)| *s == service)?.1.clone();
        Some(ProxyService::view(state, route, &self.span))
    }

    /// The services added, with their routes, in the order added.
    pub fn routes(&self) -> Vec<(ServiceName, ServiceRoute)> {
        self.shared
            .services
            .table
            .load()
            .services()
            .map(|(s, r, _)| (s.clone(), r.clone()))
            .collect()
    }

    /// Starts accepting connections on a router built with
    /// [`start_paused`](ProxyRouterBuilder::start_paused); harmless
    /// otherwise.
    pub fn start_accepting(&self) {
        self.accepting.send_replace(true);
    }

    /// Stops accepting connections, closes idle ones, lets exchanges in
    /// progress finish within the grace period (aborting the rest), and
    /// returns when everything stopped. Calling it again returns at once.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        // Only this router's descriptor: the socket itself stays open
        // while another holder (a router given a duplicate) has one.
        drop(
            self.listen_socket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        if tasks.is_empty() {
            return;
        }
        for task in tasks {
            let _ = task.await;
        }
        // The last exchanges ended with the tasks above.
        if let Some(log) = &self.shared.access_log {
            log.flush();
        }
        self.span
            .in_scope(|| tracing::info!("proxy router stopped"));
    }

    fn check_service(&self, service: &ServiceName) -> Result<()> {
        if self.shared.own && *service == self.shared.service {
            Ok(())
        } else {
            Err(self.not_served(service))
        }
    }

    /// `None` for the router's own service, the view of an added one, or
    /// [`Error::NotFound`].
    fn added(&self, service: &ServiceName) -> Result<Option<ProxyService>> {
        if self.shared.own && *service == self.shared.service {
            return Ok(None);
        }
        self.service_view(service)
            .map(Some)
            .ok_or_else(|| self.not_served(service))
    }

    fn not_served(&self, service: &ServiceName) -> Error {
        if self.shared.own {
            Error::not_found(format!(
                "service {service} on the proxy router of service {}",
                self.shared.service
            ))
        } else {
            Error::not_found(format!("service {service} on this proxy router"))
        }
    }
}

impl Drop for ProxyRouter {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[async_trait]
impl TrafficRouter for ProxyRouter {
    /// Applies `split` atomically; returns once new requests follow it
    /// (at once: there is no propagation delay).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for another service; [`Error::InvalidInput`]
    /// for a match rule with an invalid header or cookie name or value.
    async fn set_split(&self, service: &ServiceName, split: &TrafficSplit) -> Result<()> {
        if let Some(view) = self.added(service)? {
            return view.set_split(service, split).await;
        }
        self.shared.apply_split(split, &self.span)
    }

    async fn split(&self, service: &ServiceName) -> Result<Option<TrafficSplit>> {
        if let Some(view) = self.added(service)? {
            return view.split(service).await;
        }
        Ok(self.shared.current_split())
    }

    /// Replaces the endpoints of `slot`. Endpoints are identified by
    /// replica name and address together; kept ones keep their
    /// connections and counters. Removed endpoints leave selection at once;
    /// the call returns when their requests in flight finished, or when
    /// the grace period ran out (then with `Ok`, logging a warning: the
    /// requests go on, but the caller may stop those replicas).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for another service; [`Error::InvalidInput`]
    /// naming the entry for an empty replica name, port 0, or a replica
    /// name or address listed twice.
    async fn set_endpoints(
        &self,
        service: &ServiceName,
        slot: Slot,
        endpoints: &[Endpoint],
    ) -> Result<()> {
        if let Some(view) = self.added(service)? {
            return view.set_endpoints(service, slot, endpoints).await;
        }
        let span = tracing::info_span!(parent: &self.span, "set_endpoints", %slot);
        self.shared
            .set_endpoints(slot, endpoints)
            .instrument(span)
            .await
    }
}

#[async_trait]
impl RegionRouter for ProxyRouter {
    /// Applies `weights` in one atomic swap: each new request reads the
    /// weights once, so it follows the old ones or the new ones, never a
    /// mix; requests in flight finish in the region they started in. A
    /// declared region not listed gets 0.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for another service; [`Error::InvalidInput`]
    /// naming the first listed region the router does not declare (every
    /// region, for a router without regions), and nothing changes.
    async fn set_region_weights(
        &self,
        service: &ServiceName,
        weights: &RegionWeights,
    ) -> Result<()> {
        self.check_service(service)?;
        let names = self
            .shared
            .regions
            .as_ref()
            .map_or(&[][..], |r| &r.names[..]);
        let plan = RegionPlan::new(names, weights, true).inspect_err(|e| {
            self.span
                .in_scope(|| tracing::warn!(error = %e, "region weights refused"))
        })?;
        let Some(regions) = &self.shared.regions else {
            return Err(Error::invalid(
                "region weights",
                "the proxy router declares no regions",
            ));
        };
        let previous = regions.plan.swap(Arc::new(plan));
        self.span.in_scope(|| {
            tracing::info!(
                weights = %weights,
                previous = ?previous.set.as_ref().map(ToString::to_string),
                "region weights applied"
            );
        });
        Ok(())
    }

    /// The weights last set, or `None` while the builder's initial
    /// weights are in force (or the router has no regions).
    async fn region_weights(&self, service: &ServiceName) -> Result<Option<RegionWeights>> {
        self.check_service(service)?;
        Ok(self
            .shared
            .regions
            .as_ref()
            .and_then(|r| r.plan.load().set.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::upstream::InFlight;
    use super::*;

    fn ep(name: &str, port: u16) -> Endpoint {
        Endpoint::new(name, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test]
    async fn builder_refuses_bad_options() {
        let service = ServiceName::new("svc").unwrap();
        let err = ProxyRouter::builder(service.clone())
            .connect_timeout(Duration::ZERO)
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        let err = ProxyRouter::builder(service.clone())
            .metrics_window(Duration::from_millis(10))
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("metrics_window"), "{err}");
        let err = ProxyRouter::builder(service.clone())
            .response_timeout(Duration::ZERO)
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("response_timeout"), "{err}");
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = ProxyRouter::builder(service)
            .listen(taken.local_addr().unwrap())
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Backend, "{err}");
    }

    #[tokio::test]
    async fn removal_waits_for_in_flight_and_blocks_new_entries() {
        let service = ServiceName::new("svc").unwrap();
        let router = ProxyRouter::builder(service.clone()).build().await.unwrap();
        let shared = router.shared.clone();
        shared
            .set_endpoints(Slot::Blue, &[ep("a", 1001), ep("b", 1002)])
            .await
            .unwrap();
        let a = shared.slot(Slot::Blue).endpoints.load()[0].clone();
        let held = InFlight::enter(a.clone()).unwrap();
        let drain = tokio::spawn({
            let shared = shared.clone();
            async move { shared.set_endpoints(Slot::Blue, &[ep("b", 1002)]).await }
        });
        // Once removed, `a` can no longer be entered, and picks go to `b`.
        while !shared
            .slot(Slot::Blue)
            .endpoints
            .load()
            .iter()
            .all(|u| u.endpoint.replica == "b")
        {
            tokio::task::yield_now().await;
        }
        assert!(InFlight::enter(a.clone()).is_none());
        for _ in 0..10 {
            let p = shared.pick(Slot::Blue, None).unwrap();
            assert_eq!(p.upstream().endpoint.replica, "b");
        }
        assert!(!drain.is_finished());
        drop(held);
        drain.await.unwrap().unwrap();
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.idle_connections(), 0);
    }

    #[tokio::test]
    async fn least_outstanding_prefers_idle_endpoints_and_rotates_ties() {
        let service = ServiceName::new("svc").unwrap();
        let router = ProxyRouter::builder(service).build().await.unwrap();
        let shared = router.shared.clone();
        shared
            .set_endpoints(Slot::Green, &[ep("a", 1), ep("b", 2), ep("c", 3)])
            .await
            .unwrap();
        // Ties rotate: three picks released at once cover all three.
        let mut seen: Vec<String> = (0..3)
            .map(|_| {
                let p = shared.pick(Slot::Green, None).unwrap();
                p.upstream().endpoint.replica.clone()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        // Held picks spread one per endpoint before any endpoint gets two.
        let held: Vec<InFlight> = (0..3)
            .map(|_| shared.pick(Slot::Green, None).unwrap())
            .collect();
        let mut names: Vec<&str> = held
            .iter()
            .map(|p| p.upstream().endpoint.replica.as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        // With `a` and `b` busier, `c` wins.
        let extra_a = InFlight::enter(held[0].upstream().clone()).unwrap();
        let busy = held
            .iter()
            .find(|p| p.upstream().endpoint.replica != extra_a.upstream().endpoint.replica)
            .unwrap();
        let extra_b = InFlight::enter(busy.upstream().clone()).unwrap();
        let free = shared.pick(Slot::Green, None).unwrap();
        assert_ne!(
            free.upstream().endpoint.replica,
            extra_a.upstream().endpoint.replica
        );
        assert_ne!(
            free.upstream().endpoint.replica,
            extra_b.upstream().endpoint.replica
        );
        // Excluding the only other choice leaves none.
        let only = ProxyRouter::builder(ServiceName::new("one").unwrap())
            .build()
            .await
            .unwrap();
        only.shared
            .set_endpoints(Slot::Blue, &[ep("x", 9)])
            .await
            .unwrap();
        let x = only.shared.pick(Slot::Blue, None).unwrap();
        assert!(only.shared.pick(Slot::Blue, Some(x.upstream())).is_none());
        assert!(only.shared.pick(Slot::Green, None).is_none());
    }

    async fn raw_get(addr: SocketAddr) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply.to_ascii_lowercase()
    }

    #[tokio::test]
    async fn reuse_port_routers_share_one_address() {
        let svc = ServiceName::new("shared").unwrap();
        let first = ProxyRouter::builder(svc.clone())
            .reuse_port(true)
            .build()
            .await
            .unwrap();
        let addr = first.local_addr();
        // Without the option the address is taken.
        let taken = ProxyRouter::builder(svc.clone()).listen(addr).build().await;
        assert!(matches!(taken, Err(Error::Backend { .. })), "{taken:?}");
        let second = ProxyRouter::builder(svc.clone())
            .listen(addr)
            .reuse_port(true)
            .initial_split(TrafficSplit::all_to(Slot::Blue))
            .build()
            .await
            .unwrap();
        assert_eq!(second.local_addr(), addr);
        // Once the first stops, the second alone answers on the address:
        // a split but no endpoint, so 503 naming the slot (the first, with
        // no split, would answer 503 without naming one).
        first.shutdown().await;
        let reply = raw_get(addr).await;
        assert!(reply.starts_with("http/1.1 503"), "{reply}");
        assert!(reply.contains("x-atlas-slot: blue"), "{reply}");
        second.shutdown().await;
    }
}
