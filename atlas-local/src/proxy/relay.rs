//! The relay: one task per client connection reads a request head, chooses
//! the slot and the endpoint, and relays the exchange over a pooled
//! upstream connection in the same task.
//!
//! Heads are parsed in place with `httparse` and the upstream head is
//! written straight from the parsed slices into one output buffer, so a
//! bodiless exchange costs four system calls (read the request, write it
//! upstream, read the response, write it back) and no allocation beyond
//! the connection's reusable buffers. A response body already read with
//! its head goes out in the same write as the head.
//!
//! A request with a body is uploaded while the response is read, so an
//! upstream that answers before it has read the whole body (or streams
//! while it reads) is relayed without deadlock.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use atlas_core::Slot;
use bytes::{Buf as _, BytesMut};
use httparse::{Header, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::access_log::Entry;
use super::balance::Route;
use super::body::{
    BodyProgress, DISCARD_LIMIT, READ_CHUNK, Upload, grown, read_body, read_some, shrink,
};
use super::gzip::{self, GzipPolicy, GzipStream};
use super::h1::{
    ChunkScanner, Facts, Framing, MAX_HEAD, MAX_HEADERS, Refusal, RequestLineCheck, SLOT_HEADER,
    head_may_be_complete, is_hop_by_hop, put_content_length, put_header, put_local_response,
    put_status_line,
};
use super::headers::{PeerInfo, put_forwarding, put_relayed};
use super::metrics::{Outcome, ProxyFailure};
use super::server::stopped;
use super::shared::{RegionChoice, Shared};
use super::tunnel::{UpgradedGuard, relay_upgraded};
use super::upstream::{InFlight, UpstreamConn};

/// The body of the 404 for a request no service's route matches, naming
/// its host (visible ASCII only, at most 253 bytes).
pub(crate) fn no_service_text(host: Option<&[u8]>) -> String {
    let host: String = host
        .unwrap_or_default()
        .iter()
        .take(253)
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    if host.is_empty() {
        "no service for this request (it names no host)\n".to_owned()
    } else {
        format!("no service for host {host}\n")
    }
}

/// How long an idle connection may take, once the router stops, to send
/// its next request (answered with `Connection: close`): a client that
/// sends continuously learns of the stop from an answer instead of racing
/// a close, and a connection accepted just before the stop (as a listener
/// is handed to another router) is not closed unanswered.
const FIRST_REQUEST_ON_STOP: Duration = Duration::from_secs(1);

/// Body bytes read together with a head go out with the head in one write
/// up to this size.
const COALESCE: usize = 16 * 1024;

/// How long a connection waits for its next request before letting go of
/// buffers grown for a long body.
const SHRINK_WHEN_IDLE: Duration = Duration::from_millis(100);

/// Serves one client connection until the client closes it, an exchange
/// ends it, or the router stops (then after the exchange in progress).
/// `tls` is `Some` on a TLS connection, with the HSTS value if any.
pub(crate) async fn serve_client<C: ClientIo>(
    shared: Arc<Shared>,
    client: C,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    tls: Option<Option<Arc<[u8]>>>,
) {
    let peer = PeerInfo::new(peer.ip());
    let (peer, hsts) = match tls {
        Some(hsts) => (peer.over_tls(), hsts),
        None => (peer, None),
    };
    let mut conn = ClientConn {
        hsts,
        peer,
        shared,
        client,
        client_in: BytesMut::with_capacity(READ_CHUNK / 4),
        upstream_in: BytesMut::new(),
        out: Vec::with_capacity(4096),
        timer: Deadline::new(),
        response_started: Arc::new(AtomicBool::new(false)),
        switched: None,
    };
    conn.run(stop).await;
    let _ = conn.client.shutdown().await;
    linger(&mut conn.client).await;
}

/// After the proxy's FIN, reads and discards what the client still sends
/// (a request body the proxy refused, a pipelined request) for a moment
/// before closing, the staged close of RFC 9112 §9.6: closing with unread
/// data makes the kernel send a reset, which a client's TCP stack may
/// take as leave to drop the last response before it was read.
async fn linger<C: AsyncRead + Unpin>(client: &mut C) {
    const LINGER: Duration = Duration::from_secs(1);
    // Enough for the rest of a body the proxy would otherwise have
    // discarded on a connection kept open.
    const LINGER_BYTES: usize = DISCARD_LIMIT as usize + 64 * 1024;
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while discarded < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// A client connection's stream, plain TCP or TLS; generic so that the
/// plain path is compiled for [`TcpStream`] itself.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half of [`halves`](Self::halves).
    type Read<'a>: AsyncRead + Unpin + Send + 'a
    where
        Self: 'a;
    /// The writing half of [`halves`](Self::halves).
    type Write<'a>: AsyncWrite + Unpin + Send + 'a
    where
        Self: 'a;
    /// Borrows the stream as a reader and a writer used together in one
    /// task.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
}

impl ClientIo for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    // One TLS session carries both directions, so the halves share it
    // through tokio's split (a lock each takes only while it polls).
    type Read<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut Self>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }
}

struct ClientConn<C> {
    shared: Arc<Shared>,
    peer: PeerInfo,
    client: C,
    /// The `Strict-Transport-Security` value added to relayed responses
    /// (TLS connections only).
    hsts: Option<Arc<[u8]>>,
    /// Bytes read from the client not yet relayed (a head being read, body
    /// bytes, pipelined requests).
    client_in: BytesMut,
    /// Bytes read from the upstream not yet relayed.
    upstream_in: BytesMut,
    /// The head (and small body) being written.
    out: Vec<u8>,
    timer: Deadline,
    /// Set once a response head of the exchange in progress was relayed,
    /// so that an exchange cut off by the request timeout gets a 504 only
    /// when the client has had nothing yet.
    response_started: Arc<AtomicBool>,
    /// An exchange answered `101`, with its upstream connection, to be
    /// turned into a tunnel.
    switched: Option<Box<(Exchange, TcpStream)>>,
}

/// A request head parsed and turned into an upstream head in `out`.
struct Plan {
    /// The service added to the router that the request goes to; `None`
    /// for the router's own.
    service: Option<Arc<Shared>>,
    head_len: usize,
    minor: u8,
    keep_alive: bool,
    body: Framing,
    head_request: bool,
    may_retry: bool,
    expect_continue: bool,
    /// The region serving (0 in a router without regions).
    region: usize,
    slot: Slot,
    set_sticky: bool,
    attempt: InFlight,
    /// Where the `Host` line the proxy adds starts in `out`, when the
    /// request had none (it names the endpoint, so a retry rewrites it).
    host_mark: Option<usize>,
    start: Instant,
    /// Method and target, copied only when the access log is on.
    logged: Option<Box<(String, String)>>,
    /// A bodiless HTTP/1.1 request asking to switch protocols
    /// (`Connection: upgrade` with an `Upgrade` header): relayed with
    /// them, and a `101` answer turns the connection into a tunnel.
    upgrade: bool,
    /// The router compresses, and this request accepts gzip.
    accepts_gzip: bool,
}

enum Parsed {
    /// The head is invalid: answer and close.
    Refused(Refusal),
    /// The proxy answers itself (no split, no endpoint, CONNECT); `close`
    /// when the connection cannot go on (a body the proxy did not read).
    Local {
        head_len: usize,
        status: u16,
        text: Cow<'static, str>,
        slot: Option<Slot>,
        close: bool,
    },
    Relay(Box<Plan>),
}

impl<C: ClientIo> ClientConn<C> {
    async fn run(&mut self, stop: watch::Receiver<bool>) {
        let mut stop_signal = pin!(stopped_owned(stop.clone()));
        // Whether the stop signal fired: its future must not be polled again.
        let mut stop_seen = false;
        loop {
            let mut plan = match self
                .read_request(stop_signal.as_mut(), &mut stop_seen)
                .await
            {
                Some(plan) => plan,
                None => return,
            };
            // Once the router stops, every answer says `Connection: close`,
            // so the client opens its next connection (to whoever serves
            // the socket now) rather than reusing this one as it closes.
            if *stop.borrow() {
                match &mut plan {
                    Parsed::Relay(plan) => plan.keep_alive = false,
                    Parsed::Local { close, .. } => *close = true,
                    Parsed::Refused(_) => {}
                }
            }
            let keep = match plan {
                Parsed::Refused(refusal) => {
                    tracing::debug!(
                        status = refusal.status,
                        reason = refusal.reason,
                        "request refused"
                    );
                    self.out.clear();
                    put_local_response(
                        &mut self.out,
                        refusal.status,
                        refusal.reason_text(),
                        None,
                        true,
                        self.hsts.as_deref(),
                    );
                    let _ = self.client.write_all(&self.out).await;
                    false
                }
                Parsed::Local {
                    head_len,
                    status,
                    text,
                    slot,
                    close,
                } => {
                    self.client_in.advance(head_len);
                    self.out.clear();
                    put_local_response(
                        &mut self.out,
                        status,
                        &text,
                        slot.map(Slot::as_str),
                        close,
                        self.hsts.as_deref(),
                    );
                    self.client.write_all(&self.out).await.is_ok() && !close
                }
                Parsed::Relay(plan) => match self.shared.request_timeout {
                    None => self.relay(*plan).await,
                    Some(limit) => self.relay_within(*plan, limit).await,
                },
            };
            if let Some(switched) = self.switched.take() {
                let (exchange, upstream) = *switched;
                self.tunnel(exchange, upstream).await;
                return;
            }
            // A stop during this exchange does not close the connection
            // now: its answer did not say `Connection: close`, so the next
            // request (within FIRST_REQUEST_ON_STOP) is answered with it.
            if !keep {
                return;
            }
        }
    }

    /// Reads until a request head is complete and plans it; `None` when
    /// the connection ends first (closed, idle too long, router stopping).
    /// When the router stops, an idle connection gets
    /// [`FIRST_REQUEST_ON_STOP`] to send its next request, then closes.
    async fn read_request(
        &mut self,
        mut stop_signal: Pin<&mut impl Future<Output = ()>>,
        stop_seen: &mut bool,
    ) -> Option<Parsed> {
        self.timer.arm(self.shared.client_header_timeout);
        if *stop_seen {
            self.timer.shorten(FIRST_REQUEST_ON_STOP);
        }
        let mut scanned = 0;
        let mut line = RequestLineCheck::default();
        loop {
            if !self.client_in.is_empty() {
                if head_may_be_complete(&self.client_in, &mut scanned)
                    && let Some(parsed) = self.plan()
                {
                    return Some(parsed);
                }
                // Only a head that came in pieces gets here: bytes that can
                // never become a request line are refused now, not at the
                // head timeout.
                if let Err(refusal) = line.check(&self.client_in) {
                    return Some(Parsed::Refused(refusal));
                }
                if self.client_in.len() >= MAX_HEAD {
                    return Some(Parsed::Refused(Refusal {
                        status: 431,
                        reason: "request head too large",
                    }));
                }
            }
            let idle = self.client_in.is_empty();
            // Buffers grown for a long body are kept while requests follow
            // each other, and let go of once the connection idles.
            let let_go = idle && (grown(&self.upstream_in) || grown(&self.client_in));
            tokio::select! {
                biased;
                read = read_some(&mut self.client, &mut self.client_in) => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(SHRINK_WHEN_IDLE), if let_go => {
                    shrink(&mut self.upstream_in);
                    shrink(&mut self.client_in);
                }
                () = self.timer.expired() => {
                    if !idle {
                        tracing::debug!("client sent no complete request head in time");
                        return Some(Parsed::Refused(Refusal { status: 408, reason: "request head timeout" }));
                    }
                    return None;
                }
                () = stop_signal.as_mut(), if idle && !*stop_seen => {
                    *stop_seen = true;
                    self.timer.shorten(FIRST_REQUEST_ON_STOP);
                }
            }
        }
    }

    /// Parses the buffered request head and, for a request to relay,
    /// chooses the slot and endpoint and writes the upstream head to `out`;
    /// `None` while the head is incomplete.
    fn plan(&mut self) -> Option<Parsed> {
        let start = Instant::now();
        let mut slots = [MaybeUninit::<Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(&self.client_in, &mut slots) {
            Ok(Status::Complete(n)) => n,
            Ok(Status::Partial) => return None,
            Err(httparse::Error::TooManyHeaders) => {
                return Some(Parsed::Refused(Refusal {
                    status: 431,
                    reason: "too many header fields",
                }));
            }
            Err(_) => {
                return Some(Parsed::Refused(Refusal {
                    status: 400,
                    reason: "malformed request head",
                }));
            }
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Some(Parsed::Refused(Refusal {
                status: 400,
                reason: "malformed request head",
            }));
        };
        let headers: &[Header<'_>] = req.headers;
        let facts = match Facts::read(headers) {
            Ok(facts) => facts,
            Err(refusal) => return Some(Parsed::Refused(refusal)),
        };
        let body = match facts.request_framing(minor) {
            Ok(body) => body,
            Err(refusal) => return Some(Parsed::Refused(refusal)),
        };
        if facts.hosts > 1 {
            return Some(Parsed::Refused(Refusal {
                status: 400,
                reason: "more than one Host header",
            }));
        }
        // RFC 9112 §3.2: an HTTP/1.1 request must name its host (even with
        // an absolute-form target); HTTP/1.0 predates the header.
        if facts.hosts == 0 && minor >= 1 {
            return Some(Parsed::Refused(Refusal {
                status: 400,
                reason: "HTTP/1.1 request without a Host header",
            }));
        }
        let keep_alive = facts.persistent(minor);
        let has_body = body != Framing::Empty;
        let upgrade_to = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .map(|h| h.value)
            .filter(|_| minor >= 1 && !has_body && facts.names(b"upgrade"));
        let local = |status, text: &'static str, slot| Parsed::Local {
            head_len,
            status,
            text: Cow::Borrowed(text),
            slot,
            close: has_body || !keep_alive,
        };
        if method == "CONNECT" {
            return Some(local(405, "CONNECT is not supported\n", None));
        }
        // A declared length over the limit is refused before any upstream
        // is chosen (a chunked body is counted as it streams).
        if let (Some(max), Framing::Length(n)) = (self.shared.max_request_body, body)
            && n > max
        {
            tracing::debug!(length = n, max, "request body over the limit");
            return Some(local(413, "request body too large\n", None));
        }
        // Absolute-form target: its authority replaces `Host` (RFC 9112 §3.2.2).
        let (path, authority) = match split_absolute(target) {
            Some((authority, path)) => (path, Some(authority)),
            None => (target, None),
        };
        // A router with services added routes by host and path first; one
        // without reads a single flag here.
        let host_header = || {
            authority.map(str::as_bytes).or_else(|| {
                headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .map(|h| h.value)
            })
        };
        let service = if self.shared.routes_services() {
            self.shared.route_service(host_header(), path.as_bytes())
        } else {
            None
        };
        if service.is_none() && !self.shared.own {
            let host = host_header();
            self.shared.record_unmatched();
            tracing::debug!(host = ?host.map(String::from_utf8_lossy), "no service routes this host");
            return Some(Parsed::Local {
                head_len,
                status: 404,
                text: Cow::Owned(no_service_text(host)),
                slot: None,
                close: has_body || !keep_alive,
            });
        }
        let shared = service.as_deref().unwrap_or(&*self.shared);
        let (region, Route { slot, set_sticky }, attempt) = match choose(shared, headers) {
            Ok(choice) => choice,
            Err(refused) => return Some(local(refused.status, refused.text, refused.slot)),
        };

        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        if !path.starts_with('/') && authority.is_some() {
            out.push(b'/');
        }
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        put_relayed(out, headers, &facts, authority.is_some());
        let host = authority.map(str::as_bytes).or_else(|| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value)
        });
        if let Some(authority) = authority {
            put_header(out, b"host", authority.as_bytes());
        }
        put_forwarding(out, headers, &self.peer, host);
        if let Some(protocol) = upgrade_to {
            put_header(out, b"connection", b"upgrade");
            put_header(out, b"upgrade", protocol);
        }
        match body {
            Framing::Length(n) => put_content_length(out, n),
            Framing::Chunked => put_header(out, b"transfer-encoding", b"chunked"),
            Framing::Empty | Framing::Close => {
                if facts.has_content_length() {
                    put_content_length(out, 0);
                }
            }
        }
        let host_mark = if host.is_none() {
            let mark = out.len();
            put_header(out, b"host", &attempt.upstream().host);
            Some(mark)
        } else {
            None
        };
        out.extend_from_slice(b"\r\n");
        let logged = shared
            .access_log
            .is_some()
            .then(|| Box::new((method.to_owned(), target.to_owned())));
        let accepts_gzip =
            shared.gzip.is_some() && method != "HEAD" && gzip::request_accepts(headers);
        Some(Parsed::Relay(Box::new(Plan {
            service,
            head_len,
            minor,
            keep_alive,
            body,
            head_request: method == "HEAD",
            may_retry: !has_body && is_idempotent(method),
            expect_continue: facts.expect_continue && has_body,
            region,
            slot,
            set_sticky,
            attempt,
            host_mark,
            start,
            logged,
            upgrade: upgrade_to.is_some(),
            accepts_gzip,
        })))
    }

    /// Relays one planned exchange; returns whether the client connection
    /// goes on.
    async fn relay(&mut self, mut plan: Plan) -> bool {
        self.client_in.advance(plan.head_len);
        let shared = plan.service.take().unwrap_or_else(|| self.shared.clone());
        self.response_started.store(false, Ordering::Relaxed);
        let started = self.response_started.clone();
        let mut exchange = Exchange {
            shared: shared.clone(),
            region: plan.region,
            slot: plan.slot,
            start: plan.start,
            // Until the exchange ends one way or another: an exchange
            // dropped unfinished was cut off by the request timeout.
            outcome: Some(Outcome::Failed(ProxyFailure::Timeout)),
            logged: plan.logged,
            bytes: 0,
            in_flight: plan.attempt,
        };
        let sticky = plan
            .set_sticky
            .then(|| shared.sticky.as_ref().map(|s| s.header(plan.slot)))
            .flatten();
        // The request body the client has yet to send, as the response
        // head is written: the head announces a close when the proxy would
        // not read and discard that much after an early answer.
        let request_unread = AtomicU64::new(0);
        let response = ResponseCtx {
            slot: plan.slot,
            sticky: sticky.as_ref().map(|v| v.as_bytes()),
            head_request: plan.head_request,
            client_minor: plan.minor,
            client_keep_alive: plan.keep_alive,
            request_unread: &request_unread,
            response_started: &started,
            upgrade: plan.upgrade,
            gzip: shared.gzip.as_ref(),
            accepts_gzip: plan.accepts_gzip,
            hsts: self.hsts.as_deref(),
        };
        // A request body read with the head goes upstream in the same
        // write, so that an upstream that answers without reading the body
        // finds it already buffered and can keep the connection.
        let mut body = BodyProgress::new(plan.body, &request_unread, shared.max_request_body);
        if !plan.expect_continue {
            body.coalesce(&mut self.client_in, COALESCE, &mut self.out);
        }

        // Connect (with one retry on another endpoint for idempotent
        // requests, then, in a router with regions, one on another serving
        // region: a refused connection sent nothing, and a region whose
        // endpoints all refuse is down before its health checks say so)
        // and send the head. A pooled connection that turns out closed is
        // replaced by a new one to the same endpoint.
        let mut retried = false;
        let mut crossed = false;
        let mut fresh_only = false;
        let conn = loop {
            let upstream = exchange.in_flight.upstream().clone();
            let mut conn = match upstream
                .checkout(&shared.pool, !fresh_only, !plan.may_retry)
                .await
            {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::trace!(slot = %plan.slot, replica = %upstream.endpoint.replica, %error, "upstream connection failed");
                    if plan.may_retry
                        && !retried
                        && let Some(next) = shared.pick_in(plan.region, plan.slot, Some(&upstream))
                    {
                        shared.metrics.record_retry(plan.slot);
                        retried = true;
                        fresh_only = false;
                        if let Some(mark) = plan.host_mark {
                            self.out.truncate(mark);
                            put_header(&mut self.out, b"host", &next.upstream().host);
                            self.out.extend_from_slice(b"\r\n");
                        }
                        exchange.in_flight = next;
                        continue;
                    }
                    if plan.may_retry
                        && !crossed
                        && let Some((region, next)) =
                            shared.fallback_region(exchange.region, plan.slot)
                    {
                        shared.metrics.record_retry(plan.slot);
                        crossed = true;
                        retried = true;
                        fresh_only = false;
                        if let Some(mark) = plan.host_mark {
                            self.out.truncate(mark);
                            put_header(&mut self.out, b"host", &next.upstream().host);
                            self.out.extend_from_slice(b"\r\n");
                        }
                        exchange.region = region;
                        exchange.in_flight = next;
                        continue;
                    }
                    return self
                        .fail(exchange, ProxyFailure::Unreachable, plan.body)
                        .await;
                }
            };
            if let Err(error) = conn.stream.write_all(&self.out).await {
                if conn.reused {
                    fresh_only = true;
                    continue;
                }
                tracing::trace!(slot = %plan.slot, %error, "writing the request upstream failed");
                return self
                    .fail(exchange, ProxyFailure::UpstreamFailed, plan.body)
                    .await;
            }
            if plan.body != Framing::Empty {
                break conn;
            }
            // Bodiless: read the response head here, so that a pooled
            // connection the upstream closed meanwhile can be replaced.
            self.timer.arm(shared.pool.response_timeout);
            self.upstream_in.clear();
            let head = tokio::select! {
                biased;
                head = read_response_head(&mut conn.stream, &mut self.client, &mut self.upstream_in, &mut self.out, &response) => head,
                () = self.timer.expired() => Err(HeadError::Timeout),
            };
            match head {
                Ok(head) if head.status == 101 => {
                    // Run by `run`, outside the request timeout.
                    self.switched = Some(Box::new((exchange, conn.stream)));
                    return false;
                }
                Ok(head) => {
                    let UpstreamConn { mut stream, .. } = conn;
                    let (mut ur, _) = stream.split();
                    let end = relay_response_body(
                        &mut Counting::new(&mut self.client, &mut exchange.bytes, head.head_len),
                        &mut ur,
                        &mut self.upstream_in,
                        &mut self.out,
                        head,
                        shared.response_idle_timeout,
                    )
                    .await;
                    return self.finish(exchange, stream, end, true);
                }
                Err(HeadError::Closed) if conn.reused && plan.may_retry => {
                    fresh_only = true;
                }
                Err(HeadError::Timeout) => {
                    return self.fail(exchange, ProxyFailure::Timeout, plan.body).await;
                }
                Err(error) => {
                    tracing::trace!(slot = %plan.slot, %error, "upstream response failed");
                    return self
                        .fail(exchange, ProxyFailure::UpstreamFailed, plan.body)
                        .await;
                }
            }
        };

        // A request with a body: upload it while the response is read.
        let UpstreamConn { mut stream, .. } = conn;
        if plan.expect_continue
            && self.client_in.is_empty()
            && plan.minor == 1
            && self
                .client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            exchange.outcome = None;
            return false;
        }
        self.upstream_in.clear();
        let head_seen = AtomicBool::new(false);
        // Whether the whole body went upstream, and whether the response
        // head came before that: an upstream that answers early may close
        // its connection without saying so (hyper does when it did not read
        // the body), so that connection is never pooled.
        let sent = AtomicBool::new(false);
        let answered_early = AtomicBool::new(false);
        let (end, uploaded) = {
            let (mut ur, mut uw) = stream.split();
            let (mut cr, mut cw) = self.client.halves();
            let client_in = &mut self.client_in;
            let body = &mut body;
            let sent = &sent;
            let idle = shared.client_body_timeout;
            let upload = pin!(async move {
                let uploaded = body.relay(&mut cr, Some(&mut uw), client_in, idle).await;
                sent.store(uploaded.is_ok(), Ordering::Relaxed);
                uploaded
            });
            let out = &mut self.out;
            let upstream_in = &mut self.upstream_in;
            let response = &response;
            let head_seen = &head_seen;
            let answered_early = &answered_early;
            let bytes = &mut exchange.bytes;
            let idle_read = shared.response_idle_timeout;
            let download = pin!(async move {
                match read_response_head(&mut ur, &mut cw, upstream_in, out, response).await {
                    Ok(head) => {
                        answered_early.store(!sent.load(Ordering::Relaxed), Ordering::Relaxed);
                        head_seen.store(true, Ordering::Relaxed);
                        let mut cw = Counting::new(&mut cw, bytes, head.head_len);
                        relay_response_body(&mut cw, &mut ur, upstream_in, out, head, idle_read)
                            .await
                    }
                    Err(error) => ResponseEnd::NoHead(error),
                }
            });
            both(upload, download, head_seen, shared.pool.response_timeout).await
        };
        match (&end, uploaded) {
            (
                _,
                Some(Err(
                    why @ (Upload::ClientGone
                    | Upload::BadBody
                    | Upload::Stalled
                    | Upload::TooLarge),
                )),
            ) => {
                exchange.outcome = None;
                tracing::debug!(slot = %plan.slot, ?why, "client request body broke off");
                // The upstream holds part of a request: its connection is
                // closed here, never pooled.
                drop(stream);
                // A client whose chunked coding is broken gets 400, and one
                // whose chunked body passed the limit 413, unless a
                // response head already went its way.
                let answer = match why {
                    Upload::BadBody => Some((400, "bad request\n")),
                    Upload::TooLarge => Some((413, "request body too large\n")),
                    _ => None,
                };
                if let Some((status, text)) = answer
                    && !head_seen.load(Ordering::Relaxed)
                {
                    self.out.clear();
                    put_local_response(
                        &mut self.out,
                        status,
                        text,
                        Some(plan.slot.as_str()),
                        true,
                        self.hsts.as_deref(),
                    );
                    let _ = self.client.write_all(&self.out).await;
                }
                false
            }
            (ResponseEnd::NoHead(HeadError::Timeout), _) => {
                self.fail(exchange, ProxyFailure::Timeout, plan.body).await
            }
            (ResponseEnd::NoHead(error), _) => {
                tracing::trace!(slot = %plan.slot, %error, "upstream response failed");
                self.fail(exchange, ProxyFailure::UpstreamFailed, plan.body)
                    .await
            }
            _ => {
                // An upstream that refuses a request with a body may not
                // have read it, and close the connection after its answer
                // without announcing it (hyper does): such a connection is
                // not pooled, since the next request on it, if it cannot be
                // retried, would fail.
                let refused = matches!(end, ResponseEnd::Done { status, .. } if status >= 400);
                let request_complete =
                    uploaded == Some(Ok(())) && !answered_early.load(Ordering::Relaxed) && !refused;
                let keep = self.finish(exchange, stream, end, request_complete);
                if !keep || body.complete() {
                    return keep;
                }
                // The upstream answered before the whole body arrived, and
                // the client, told the connection goes on, is still sending
                // it: read it to its end, so the next request is found
                // where it starts. Never sent upstream again.
                let discarded = body
                    .discard(
                        &mut self.client,
                        &mut self.client_in,
                        shared.client_body_timeout,
                    )
                    .await;
                if let Err(why) = discarded {
                    tracing::debug!(slot = %plan.slot, ?why, "request body after an early answer broke off");
                }
                discarded.is_ok()
            }
        }
    }

    /// Relays both ways between the client and the upstream after a `101`
    /// (the head is in `out`) until either side closes, or until the
    /// upgrade drain time after the endpoint left its slot (a cutover):
    /// the connection stays on the slot that accepted it until then. The
    /// exchange is recorded as a 101 at once and no longer counts as in
    /// flight, so a cutover does not wait for it; the metrics count the
    /// connection as upgraded while it lasts.
    async fn tunnel(&mut self, mut exchange: Exchange, mut upstream: TcpStream) {
        let shared = exchange.shared.clone();
        let slot = exchange.slot;
        let endpoint = exchange.in_flight.upstream().clone();
        exchange.outcome = Some(Outcome::Status(101));
        if self.client.write_all(&self.out).await.is_err() {
            return;
        }
        drop(exchange);
        let mut open = UpgradedGuard::new(&shared, slot);
        tracing::debug!(%slot, replica = %endpoint.endpoint.replica, "connection upgraded");
        // Bytes that came with the heads belong to the new protocol.
        if !self.upstream_in.is_empty() {
            if self.client.write_all(&self.upstream_in).await.is_err() {
                return;
            }
            self.upstream_in.clear();
        }
        if !self.client_in.is_empty() {
            if upstream.write_all(&self.client_in).await.is_err() {
                return;
            }
            self.client_in.clear();
        }
        relay_upgraded(
            &shared,
            slot,
            &endpoint,
            &mut self.client,
            &mut upstream,
            &mut open,
        )
        .await;
    }

    /// Relays one exchange within the request timeout `limit`; one that
    /// takes longer is abandoned, both connections closed, and the client
    /// answered 504 when it has had nothing yet.
    async fn relay_within(&mut self, plan: Plan, limit: Duration) -> bool {
        let slot = plan.slot;
        match tokio::time::timeout(limit, self.relay(plan)).await {
            Ok(keep) => keep,
            Err(_) => {
                tracing::debug!(%slot, ?limit, "request timeout");
                if !self.response_started.load(Ordering::Relaxed) {
                    let (status, text) = failure_answer(ProxyFailure::Timeout);
                    self.out.clear();
                    put_local_response(
                        &mut self.out,
                        status,
                        text,
                        Some(slot.as_str()),
                        true,
                        self.hsts.as_deref(),
                    );
                    let _ = self.client.write_all(&self.out).await;
                }
                false
            }
        }
    }

    /// Ends an exchange whose response head was relayed: records it and
    /// gives the upstream connection back when it can carry another one
    /// (`request_complete`: the whole request reached it). Returns whether
    /// the client connection may go on once the request body, if not read
    /// to its end yet, has been.
    fn finish(
        &mut self,
        mut exchange: Exchange,
        stream: TcpStream,
        end: ResponseEnd,
        request_complete: bool,
    ) -> bool {
        match end {
            ResponseEnd::Done {
                status,
                upstream_reusable,
                client_keep,
            } => {
                exchange.outcome = Some(Outcome::Status(status));
                if upstream_reusable && request_complete && self.upstream_in.is_empty() {
                    exchange
                        .in_flight
                        .upstream()
                        .release(stream, &self.shared.pool);
                }
                client_keep
            }
            ResponseEnd::UpstreamBroke { status } => {
                tracing::debug!(status, "upstream response body broke off");
                exchange.outcome = Some(Outcome::Failed(ProxyFailure::UpstreamFailed));
                false
            }
            ResponseEnd::ClientGone { status } => {
                exchange.outcome = Some(Outcome::Status(status));
                false
            }
            ResponseEnd::NoHead(_) => {
                exchange.outcome = Some(Outcome::Failed(ProxyFailure::UpstreamFailed));
                false
            }
        }
    }

    /// Answers a request the proxy could not relay with its own error,
    /// counted against the slot.
    async fn fail(&mut self, mut exchange: Exchange, failure: ProxyFailure, body: Framing) -> bool {
        exchange.outcome = Some(Outcome::Failed(failure));
        let slot = exchange.slot;
        drop(exchange);
        tracing::trace!(%slot, ?failure, "request failed in the proxy");
        let (status, text) = failure_answer(failure);
        // A body the proxy did not read leaves the connection unusable.
        let close = body != Framing::Empty;
        self.out.clear();
        put_local_response(
            &mut self.out,
            status,
            text,
            Some(slot.as_str()),
            close,
            self.hsts.as_deref(),
        );
        self.client.write_all(&self.out).await.is_ok() && !close
    }
}

/// A request [`choose`] found no upstream for: the proxy's own answer.
pub(crate) struct Unchosen {
    pub(crate) status: u16,
    pub(crate) text: &'static str,
    /// The slot chosen, when the split chose one.
    pub(crate) slot: Option<Slot>,
}

/// Chooses the region, the slot (match rule, sticky cookie, weighted
/// split) and the endpoint (fewest requests in flight) for a request to
/// `shared` with `headers`, and enters the endpoint's in-flight count;
/// the one choice both the HTTP/1.1 and the HTTP/2 paths make. A request
/// without a split or an endpoint is counted here and gets its answer.
pub(crate) fn choose(
    shared: &Shared,
    headers: &[Header<'_>],
) -> Result<(usize, Route, InFlight), Unchosen> {
    let unrouted = || Unchosen {
        status: 503,
        text: "no traffic split is set\n",
        slot: None,
    };
    let no_endpoint = |slot| {
        let (status, text) = failure_answer(ProxyFailure::NoEndpoint);
        Unchosen {
            status,
            text,
            slot: Some(slot),
        }
    };
    match &shared.regions {
        // A router without regions: the split, then the slot's endpoints.
        None => {
            let route = {
                let split = shared.split.load();
                match split.as_ref() {
                    Some(state) => state.route(headers, shared.sticky_name()),
                    None => {
                        shared.metrics.record_unrouted();
                        return Err(unrouted());
                    }
                }
            };
            let Some(attempt) = shared.pick(route.slot, None) else {
                shared.record_no_endpoint(0, route.slot);
                return Err(no_endpoint(route.slot));
            };
            Ok((0, route, attempt))
        }
        Some(regions) => match shared.route_regions(regions, headers, shared.sticky_name()) {
            RegionChoice::Routed {
                region,
                route,
                attempt,
            } => Ok((region, route, attempt)),
            RegionChoice::Unrouted => {
                shared.metrics.record_unrouted();
                Err(unrouted())
            }
            RegionChoice::NoEndpoint { region, slot } => {
                shared.record_no_endpoint(region, slot);
                Err(no_endpoint(slot))
            }
        },
    }
}

/// The proxy's own answer to a request it could not relay.
pub(crate) fn failure_answer(failure: ProxyFailure) -> (u16, &'static str) {
    match failure {
        ProxyFailure::NoEndpoint => (503, "no endpoint serves the chosen slot\n"),
        ProxyFailure::Unreachable => (502, "upstream unreachable\n"),
        ProxyFailure::UpstreamFailed => (502, "upstream connection failed\n"),
        ProxyFailure::Timeout => (504, "upstream timed out\n"),
    }
}

impl Refusal {
    fn reason_text(&self) -> &'static str {
        match self.status {
            408 => "request head timeout\n",
            431 => "request header fields too large\n",
            501 => "transfer coding not implemented\n",
            _ => "bad request\n",
        }
    }
}

async fn stopped_owned(mut stop: watch::Receiver<bool>) {
    stopped(&mut stop).await;
}

/// Runs the upload and the download together; returns when the download
/// ended (with the upload's result if it had ended), as soon as the upload
/// fails because of the client, or when no response head came within
/// `response_timeout` of the whole body having been sent (`head_seen` is
/// set by the download once it has the head).
async fn both(
    mut upload: Pin<&mut impl Future<Output = Result<(), Upload>>>,
    mut download: Pin<&mut impl Future<Output = ResponseEnd>>,
    head_seen: &AtomicBool,
    response_timeout: Option<Duration>,
) -> (ResponseEnd, Option<Result<(), Upload>>) {
    let mut uploaded = None;
    // Armed (reset) only once the body is sent.
    let mut head_deadline = pin!(tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)));
    let mut armed = false;
    loop {
        tokio::select! {
            biased;
            end = download.as_mut() => return (end, uploaded),
            up = upload.as_mut(), if uploaded.is_none() => {
                if matches!(up, Err(Upload::ClientGone | Upload::BadBody | Upload::Stalled | Upload::TooLarge)) {
                    return (ResponseEnd::ClientGone { status: 0 }, Some(up));
                }
                if up.is_ok() && let Some(limit) = response_timeout {
                    head_deadline.as_mut().reset(Instant::now() + limit);
                    armed = true;
                }
                uploaded = Some(up);
            }
            () = head_deadline.as_mut(), if armed && !head_seen.load(Ordering::Relaxed) => {
                // The head may have come while this select was waiting.
                if head_seen.load(Ordering::Relaxed) {
                    armed = false;
                    continue;
                }
                return (ResponseEnd::NoHead(HeadError::Timeout), uploaded);
            }
        }
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110
/// §9.2.2), the only ones retried after a failed upstream connection.
pub(crate) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// `http://authority/path?q` → (`authority`, `/path?q`); the path part
/// may be empty or start with `?` (the caller adds the `/`).
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some(rest.split_at(end))
}

/// One relayed request, from the choice of endpoint to the end of the
/// response. Dropping it records the outcome (if any) and ends the
/// endpoint's in-flight count, also when the task is cancelled.
pub(crate) struct Exchange {
    pub(crate) shared: Arc<Shared>,
    /// The region serving (0 in a router without regions).
    pub(crate) region: usize,
    pub(crate) slot: Slot,
    pub(crate) start: Instant,
    pub(crate) outcome: Option<Outcome>,
    /// Method and target for the access log, when it is on.
    pub(crate) logged: Option<Box<(String, String)>>,
    /// Response body bytes relayed to the client.
    pub(crate) bytes: u64,
    // Declared last: dropped after the metrics are recorded, so a drain
    // that ends sees this request counted.
    pub(crate) in_flight: InFlight,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(outcome) = self.outcome else { return };
        let latency = matches!(outcome, Outcome::Status(_)).then(|| self.start.elapsed());
        self.shared.metrics.record(self.slot, outcome, latency);
        self.shared.record_region(self.region, outcome);
        self.in_flight.upstream().stats.record(latency);
        tracing::trace!(
            slot = %self.slot,
            replica = %self.in_flight.upstream().endpoint.replica,
            ?outcome,
            ?latency,
            "request finished"
        );
        if let (Some(log), Some(logged)) = (&self.shared.access_log, &self.logged) {
            let status = match outcome {
                Outcome::Status(status) => status,
                Outcome::Failed(failure) => failure_answer(failure).0,
            };
            log.record(&Entry {
                service: self.shared.service.as_str(),
                slot: self.slot,
                method: &logged.0,
                path: &logged.1,
                status,
                bytes: self.bytes,
                duration: self.start.elapsed(),
                upstream: Some(self.in_flight.upstream().endpoint.addr),
            });
        }
    }
}

/// A writer that counts the body bytes written through it (all bytes
/// after the first `skip`, the response head).
struct Counting<'a, W> {
    inner: &'a mut W,
    written: &'a mut u64,
    skip: u64,
}

impl<'a, W> Counting<'a, W> {
    fn new(inner: &'a mut W, written: &'a mut u64, skip: usize) -> Self {
        Counting {
            inner,
            written,
            skip: skip as u64,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            let n = n as u64;
            *this.written += n.saturating_sub(this.skip);
            this.skip = this.skip.saturating_sub(n);
        }
        polled
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What writing the response to the client needs from the request.
struct ResponseCtx<'a> {
    slot: Slot,
    sticky: Option<&'a [u8]>,
    head_request: bool,
    client_minor: u8,
    client_keep_alive: bool,
    /// The request body bytes not yet read from the client
    /// ([`BodyProgress::unread`]).
    request_unread: &'a AtomicU64,
    /// Set when a final response head is written for the client.
    response_started: &'a AtomicBool,
    /// The request asked to switch protocols.
    upgrade: bool,
    /// The router's gzip policy, and whether this request may get gzip.
    gzip: Option<&'a GzipPolicy>,
    accepts_gzip: bool,
    /// The `Strict-Transport-Security` value, on TLS connections.
    hsts: Option<&'a [u8]>,
}

/// A response head relayed to `out` (not yet written to the client).
#[derive(Debug)]
struct ResponseHead {
    status: u16,
    /// Relayed gzip-compressed at this level.
    gzip: Option<u32>,
    /// The length of the client's head at the start of `out`.
    head_len: usize,
    /// How the upstream delimits the body.
    from: Framing,
    /// Whether the body goes to the client chunk-decoded (an HTTP/1.0
    /// client cannot take the chunked coding).
    decode_chunks: bool,
    upstream_persistent: bool,
    client_keep: bool,
}

#[derive(Debug)]
enum HeadError {
    /// The upstream closed (or reset) the connection before sending a byte.
    Closed,
    /// Nothing within the response timeout.
    Timeout,
    Io(io::Error),
    /// Closed part-way through the head.
    Truncated,
    Invalid(&'static str),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Closed => f.write_str("connection closed before the response"),
            HeadError::Timeout => f.write_str("no response head in time"),
            HeadError::Io(e) => write!(f, "reading the response failed: {e}"),
            HeadError::Truncated => f.write_str("connection closed inside the response head"),
            HeadError::Invalid(why) => f.write_str(why),
        }
    }
}

/// How relaying a response ended.
#[derive(Debug)]
enum ResponseEnd {
    /// All of it reached the client.
    Done {
        status: u16,
        upstream_reusable: bool,
        client_keep: bool,
    },
    /// The upstream closed or broke the body part-way.
    UpstreamBroke { status: u16 },
    /// The client went away.
    ClientGone { status: u16 },
    /// No valid response head.
    NoHead(HeadError),
}

/// Reads the response head into `buf` and writes the client's head to
/// `out`; interim 1xx responses before it go to `client` as they come.
async fn read_response_head<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    client: &mut W,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    ctx: &ResponseCtx<'_>,
) -> Result<ResponseHead, HeadError> {
    let mut got_any = false;
    let mut scanned = 0;
    loop {
        if !buf.is_empty() {
            let parsed = if head_may_be_complete(buf, &mut scanned) {
                write_response_head(buf, out, ctx)?
            } else {
                None
            };
            match parsed {
                Some((len, head)) => {
                    buf.advance(len);
                    match head {
                        Some(head) => return Ok(head),
                        None => {
                            // An interim response, in `out` when it is
                            // relayed. A client that is gone is noticed
                            // when the final head is written.
                            if !out.is_empty() {
                                let _ = client.write_all(out).await;
                                out.clear();
                            }
                            scanned = 0;
                            continue;
                        }
                    }
                }
                None if buf.len() >= MAX_HEAD => {
                    return Err(HeadError::Invalid("response head too large"));
                }
                None => {}
            }
        }
        match read_some(r, buf).await {
            Ok(0) if !got_any => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Truncated),
            Ok(_) => got_any = true,
            Err(e)
                if !got_any
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(HeadError::Closed);
            }
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Parses a response head in `buf` and writes the client's head to `out`.
/// `Ok(None)`: incomplete; `Ok(Some((len, None)))`: an interim response
/// of `len` bytes, whose head for the client is in `out` when it is
/// relayed (not `100 Continue`, which the proxy answers itself, and
/// nothing to an HTTP/1.0 client).
fn write_response_head(
    buf: &[u8],
    out: &mut Vec<u8>,
    ctx: &ResponseCtx<'_>,
) -> Result<Option<(usize, Option<ResponseHead>)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Invalid("too many response header fields"));
        }
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(HeadError::Invalid("malformed response head"));
    };
    let headers: &[Header<'_>] = res.headers;
    if status == 101 {
        if !ctx.upgrade {
            return Err(HeadError::Invalid(
                "protocol switch without an upgrade request",
            ));
        }
        return Ok(Some((len, Some(switching_head(out, headers, ctx)))));
    }
    if status < 200 {
        out.clear();
        if status != 100 && ctx.client_minor >= 1 {
            put_status_line(out, status, res.reason.unwrap_or(""));
            for h in headers.iter().filter(|h| !is_hop_by_hop(h.name.as_bytes())) {
                put_header(out, h.name.as_bytes(), h.value);
            }
            out.extend_from_slice(b"\r\n");
        }
        return Ok(Some((len, None)));
    }
    let facts =
        Facts::read(headers).map_err(|_| HeadError::Invalid("ambiguous response framing"))?;
    ctx.response_started.store(true, Ordering::Relaxed);
    let from = facts.response_framing(status, ctx.head_request);
    let upstream_persistent = facts.persistent(minor) && from != Framing::Close;
    let decode_chunks = from == Framing::Chunked && ctx.client_minor == 0;
    let client_keep = ctx.client_keep_alive
        && from != Framing::Close
        && !decode_chunks
        && ctx.request_unread.load(Ordering::Relaxed) <= DISCARD_LIMIT;

    out.clear();
    put_status_line(out, status, res.reason.unwrap_or(""));
    // On a bodiless response (HEAD, 304) `Content-Length` describes the
    // resource, and is relayed as it came.
    let keep_length = from == Framing::Empty && facts.has_content_length();
    // Gzip: for a listed media type (then `Vary` either way) and a client
    // that accepts it, a 200 not already encoded, of enough length.
    let gzip::GzipChoice { vary, level: gzip } = gzip::choose(
        ctx.gzip,
        ctx.accepts_gzip && ctx.client_minor >= 1,
        status,
        headers,
        from,
    );
    for h in headers {
        let name = h.name.as_bytes();
        if facts.hop_by_hop(name)
            || (!keep_length && name.eq_ignore_ascii_case(b"content-length"))
            || name.eq_ignore_ascii_case(SLOT_HEADER.as_bytes())
            || (ctx.hsts.is_some() && name.eq_ignore_ascii_case(b"strict-transport-security"))
        {
            continue;
        }
        if gzip.is_some()
            && name.eq_ignore_ascii_case(b"etag")
            && let Some(weak) = gzip::weakened_etag(h.value)
        {
            put_header(out, name, &weak);
            continue;
        }
        put_header(out, name, h.value);
    }
    if vary {
        put_header(out, b"vary", b"accept-encoding");
    }
    put_header(out, SLOT_HEADER.as_bytes(), ctx.slot.as_str().as_bytes());
    if let Some(hsts) = ctx.hsts {
        put_header(out, b"strict-transport-security", hsts);
    }
    if let Some(cookie) = ctx.sticky {
        put_header(out, b"set-cookie", cookie);
    }
    match from {
        _ if gzip.is_some() => {
            put_header(out, b"content-encoding", b"gzip");
            put_header(out, b"transfer-encoding", b"chunked");
        }
        Framing::Length(n) => put_content_length(out, n),
        Framing::Chunked if !decode_chunks => put_header(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !client_keep {
        put_header(out, b"connection", b"close");
    } else if ctx.client_minor == 0 {
        put_header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some((
        len,
        Some(ResponseHead {
            status,
            gzip,
            head_len: out.len(),
            from,
            decode_chunks,
            upstream_persistent,
            client_keep,
        }),
    )))
}

/// Writes the head in `out`, then the upstream's body (a length or
/// chunked) compressed with gzip at `level`, in the chunked coding.
async fn relay_gzipped<W, R>(
    w: &mut W,
    r: &mut R,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    head: ResponseHead,
    idle: Option<Duration>,
    level: u32,
) -> ResponseEnd
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let status = head.status;
    let gone = ResponseEnd::ClientGone { status };
    let broke = ResponseEnd::UpstreamBroke { status };
    let length = match head.from {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut encoder = GzipStream::new(level, length);
    let mut left = length.unwrap_or(0);
    let mut scanner = ChunkScanner::default();
    loop {
        if !buf.is_empty() {
            if let Framing::Length(_) = head.from {
                let take = left.min(buf.len() as u64) as usize;
                encoder.write(&buf[..take]);
                buf.advance(take);
                left -= take as u64;
            } else {
                match scanner.scan(buf, |data| encoder.write(&buf[data])) {
                    Ok(n) => buf.advance(n),
                    Err(error) => {
                        tracing::debug!(reason = error.0, "invalid chunked response body");
                        return broke;
                    }
                }
            }
        }
        let ended = match head.from {
            Framing::Length(_) => left == 0,
            _ => scanner.done(),
        };
        if ended {
            encoder.finish();
        }
        let compressed = encoder.output();
        if !compressed.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", compressed.len()).as_bytes());
            out.extend_from_slice(compressed);
            out.extend_from_slice(b"\r\n");
            compressed.clear();
        }
        if ended {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if !out.is_empty() {
            if w.write_all(out).await.is_err() {
                return gone;
            }
            out.clear();
        }
        if ended {
            return ResponseEnd::Done {
                status,
                upstream_reusable: head.upstream_persistent,
                client_keep: head.client_keep,
            };
        }
        let expected = if length.is_some() { left } else { u64::MAX };
        match read_within(r, buf, idle, expected).await {
            Ok(0) | Err(_) => return broke,
            Ok(_) => {}
        }
    }
}

/// Reads from the upstream as [`read_body`] does, failing with
/// `TimedOut` when nothing came within `idle`.
async fn read_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    idle: Option<Duration>,
    left: u64,
) -> io::Result<usize> {
    match idle {
        None => read_body(r, buf, left).await,
        Some(idle) => tokio::time::timeout(idle, read_body(r, buf, left))
            .await
            .unwrap_or_else(|_| {
                tracing::debug!(?idle, "upstream sent nothing of the response body in time");
                Err(io::ErrorKind::TimedOut.into())
            }),
    }
}

/// Writes the client's head for a `101 Switching Protocols` answer to an
/// upgrade request to `out`: the upstream's end-to-end headers, the
/// protocol it switched to, and the slot.
fn switching_head(
    out: &mut Vec<u8>,
    headers: &[Header<'_>],
    ctx: &ResponseCtx<'_>,
) -> ResponseHead {
    out.clear();
    put_status_line(out, 101, "Switching Protocols");
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade") {
            put_header(out, b"upgrade", h.value);
        } else if !is_hop_by_hop(name) && !name.eq_ignore_ascii_case(SLOT_HEADER.as_bytes()) {
            put_header(out, name, h.value);
        }
    }
    put_header(out, b"connection", b"upgrade");
    put_header(out, SLOT_HEADER.as_bytes(), ctx.slot.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    ctx.response_started.store(true, Ordering::Relaxed);
    ResponseHead {
        status: 101,
        gzip: None,
        head_len: out.len(),
        from: Framing::Empty,
        decode_chunks: false,
        upstream_persistent: false,
        client_keep: false,
    }
}

/// Writes the head in `out` and relays the body to the client.
async fn relay_response_body<W, R>(
    w: &mut W,
    r: &mut R,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    head: ResponseHead,
    idle: Option<Duration>,
) -> ResponseEnd
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    if let Some(level) = head.gzip {
        return relay_gzipped(w, r, buf, out, head, idle, level).await;
    }
    let status = head.status;
    let gone = ResponseEnd::ClientGone { status };
    let broke = ResponseEnd::UpstreamBroke { status };
    let done = |upstream_reusable: bool| ResponseEnd::Done {
        status,
        upstream_reusable: upstream_reusable && head.upstream_persistent,
        client_keep: head.client_keep,
    };
    match head.from {
        Framing::Empty => {
            if w.write_all(out).await.is_err() {
                return gone;
            }
            done(true)
        }
        Framing::Length(total) => {
            let mut left = total;
            let take = left.min(buf.len() as u64) as usize;
            if take <= COALESCE {
                out.extend_from_slice(&buf[..take]);
                buf.advance(take);
                left -= take as u64;
            }
            if w.write_all(out).await.is_err() {
                return gone;
            }
            loop {
                if !buf.is_empty() && left > 0 {
                    let take = left.min(buf.len() as u64) as usize;
                    if w.write_all(&buf[..take]).await.is_err() {
                        return gone;
                    }
                    buf.advance(take);
                    left -= take as u64;
                }
                if left == 0 {
                    return done(true);
                }
                match read_within(r, buf, idle, left).await {
                    Ok(0) | Err(_) => return broke,
                    Ok(_) => {}
                }
            }
        }
        Framing::Chunked => {
            let mut scanner = ChunkScanner::default();
            let mut first = true;
            loop {
                if !buf.is_empty() {
                    // Passed through as it came, or only the chunk data for
                    // an HTTP/1.0 client.
                    let scanned = if head.decode_chunks {
                        scanner.scan(buf, |data| out.extend_from_slice(&buf[data]))
                    } else {
                        scanner
                            .scan(buf, |_| {})
                            .inspect(|&n| out.extend_from_slice(&buf[..n]))
                    };
                    match scanned {
                        Ok(n) => buf.advance(n),
                        Err(error) => {
                            tracing::debug!(reason = error.0, "invalid chunked response body");
                            return broke;
                        }
                    }
                }
                if !out.is_empty() || first {
                    if w.write_all(out).await.is_err() {
                        return gone;
                    }
                    out.clear();
                    first = false;
                }
                if scanner.done() {
                    return done(true);
                }
                match read_within(r, buf, idle, u64::MAX).await {
                    Ok(0) | Err(_) => return broke,
                    Ok(_) => {}
                }
            }
        }
        Framing::Close => {
            if w.write_all(out).await.is_err() {
                return gone;
            }
            loop {
                if !buf.is_empty() {
                    if w.write_all(buf).await.is_err() {
                        return gone;
                    }
                    buf.clear();
                }
                match read_within(r, buf, idle, u64::MAX).await {
                    Ok(0) => return done(false),
                    Err(_) => return broke,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// One timer per connection for its phases (a request head, a response
/// head), re-armed per phase without touching the runtime's timer wheel:
/// the sleep keeps its deadline, and only when it fires early is it moved
/// to the phase's real deadline.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Option<Instant>,
}

impl Deadline {
    fn new() -> Self {
        Deadline {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            at: None,
        }
    }

    /// Starts a phase lasting `limit` (`None`: no limit).
    fn arm(&mut self, limit: Option<Duration>) {
        self.at = limit.map(|limit| Instant::now() + limit);
        if let Some(at) = self.at
            && at < self.sleep.deadline()
        {
            self.sleep.as_mut().reset(at);
        }
    }

    /// Ends the phase within `limit` at the latest.
    fn shorten(&mut self, limit: Duration) {
        let at = Instant::now() + limit;
        if self.at.is_none_or(|current| at < current) {
            self.at = Some(at);
            if at < self.sleep.deadline() {
                self.sleep.as_mut().reset(at);
            }
        }
    }

    /// Resolves when the phase's deadline passed; never without one.
    async fn expired(&mut self) {
        loop {
            let Some(at) = self.at else {
                return std::future::pending().await;
            };
            self.sleep.as_mut().await;
            if Instant::now() >= at {
                return;
            }
            self.sleep.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_split_into_authority_and_path() {
        assert_eq!(
            split_absolute("http://shop:8080/a?b"),
            Some(("shop:8080", "/a?b"))
        );
        assert_eq!(split_absolute("http://shop"), Some(("shop", "")));
        assert_eq!(split_absolute("http://shop?q"), Some(("shop", "?q")));
        assert_eq!(split_absolute("/a"), None);
        assert_eq!(split_absolute("http://"), None);
        assert_eq!(split_absolute("http:///x"), None);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(m));
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(m));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_fires_at_the_armed_phase_deadline() {
        let mut d = Deadline::new();
        d.arm(Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        d.expired().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        // A later phase with a longer limit is honoured, not the old sleep.
        d.arm(Some(Duration::from_secs(30)));
        let t0 = Instant::now();
        d.expired().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        // No limit: never.
        d.arm(None);
        assert!(
            tokio::time::timeout(Duration::from_secs(7200), d.expired())
                .await
                .is_err()
        );
    }
}
