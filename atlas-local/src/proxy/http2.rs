//! HTTP/2 from clients over TLS: the TLS handshake, and for a connection
//! that chose ALPN `h2`, hyper's HTTP/2 server whose streams are relayed to
//! HTTP/1.1 upstreams.
//!
//! Each stream is routed as an HTTP/1.1 request is (`:authority` as the
//! host), and its slot and endpoint come from the relay's own [`choose`],
//! so the split, the match rule, the sticky cookie and least-outstanding
//! balancing are the same on both paths. The [`Exchange`] the relay uses
//! travels inside the response body until its last frame, so in-flight
//! counts (and with them the drain of removed endpoints), metrics and the
//! access log see an HTTP/2 request for as long as it lasts. Upstream
//! connections come from, and go back to, the endpoint's pool; each
//! carries one HTTP/1.1 exchange at a time through hyper's client
//! connection. Bodies stream both ways ([`h2_body`](super::h2_body)).
//!
//! What the HTTP/1.1 path does, the HTTP/2 path does with the same policy
//! code: gzip (the decision and the streaming encoder of
//! [`gzip`], so the same responses are compressed, with
//! `Vary`, a weakened `ETag` and no `Content-Length`); the client body
//! timeout (a stream whose client sends nothing of its body for that long
//! is reset and its upstream connection closed, not counted, as the
//! HTTP/1.1 path closes both connections); the response idle timeout (a
//! response body whose upstream goes quiet for that long is reset, its
//! upstream connection closed, counted as an upstream failure; the
//! connection's other streams go on); a body over the maximum request
//! body size, declared or found as it streams, is refused with 413 (or,
//! when a response already started, its stream reset).
//! WebSocket comes as an extended `CONNECT` with `:protocol websocket`
//! (RFC 8441, offered in the server's SETTINGS): it goes upstream as an
//! HTTP/1.1 `GET` with `Upgrade: websocket` and a fresh
//! `Sec-WebSocket-Key`; a `101` whose `Sec-WebSocket-Accept` answers that
//! key is answered 200 on the stream (a wrong one 502), and the stream
//! then relays bytes both ways as an HTTP/1.1 upgraded connection does
//! ([`tunnel`](super::tunnel)): counted as upgraded, closed after the
//! upgrade drain time once a cutover took its endpoint out of the slot,
//! and ended with its HTTP/2 connection.
//!
//! Not on the HTTP/2 path: cleartext `h2c`, other extended `CONNECT`
//! protocols (501) and plain `CONNECT` (405), HTTP/2 upstreams, and the
//! interim (1xx) responses the HTTP/1.1 path relays.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use httparse::Header;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::ext::Protocol;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::body::Upload;
use super::gzip;
use super::h1::{Facts, Framing, SLOT_HEADER, is_hop_by_hop};
use super::h2_body::{BodyBreak, BoxError, ClientBody, RelayBody};
use super::headers::{PeerInfo, put_forwarding};
use super::metrics::{Outcome, ProxyFailure};
use super::relay::{
    Exchange, choose, failure_answer, is_idempotent, no_service_text, serve_client,
};
use super::server::stopped;
use super::shared::Shared;
use super::tls::Terminator;
use super::tunnel::{UpgradedGuard, relay_upgraded};
use super::websocket;

/// The body sent upstream: the client's stream, or nothing.
type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Serves one accepted connection: over TLS after the handshake when the
/// router terminates TLS (a handshake that does not finish within the
/// header timeout ends the connection), as HTTP/2 when the client chose
/// ALPN `h2`, as HTTP/1.1 otherwise.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    tls: Option<Arc<Terminator>>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_client(shared, stream, peer, stop, None).await;
    };
    let handshake = tls.acceptor.accept(stream);
    let accepted = match shared.client_header_timeout {
        None => handshake.await,
        Some(limit) => match tokio::time::timeout(limit, handshake).await {
            Ok(accepted) => accepted,
            Err(_) => {
                tracing::debug!(?limit, "TLS handshake not finished in time");
                return;
            }
        },
    };
    match accepted {
        Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
            serve_h2(shared, stream, peer, stop, tls.hsts.clone()).await;
        }
        Ok(stream) => {
            serve_client(shared, stream, peer, stop, Some(tls.hsts.clone())).await;
        }
        Err(error) => tracing::debug!(%error, "TLS handshake failed"),
    }
}

/// What every stream of one HTTP/2 connection shares.
struct H2Conn {
    shared: Arc<Shared>,
    peer: PeerInfo,
    /// The `Strict-Transport-Security` value for every response.
    hsts: Option<HeaderValue>,
    /// Streams open now (a WebSocket one until it closes).
    open: Arc<AtomicUsize>,
    /// The WebSocket streams' relays, ended with the connection.
    tunnels: Mutex<JoinSet<()>>,
}

/// Serves one HTTP/2 connection until the client closes it, it stays idle
/// for the client header timeout, or the router stops: then the client
/// gets a GOAWAY and the streams already open finish (within the router's
/// grace period for connections).
async fn serve_h2(
    shared: Arc<Shared>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    hsts: Option<Arc<[u8]>>,
) {
    let idle_limit = shared.client_header_timeout;
    let open = Arc::new(AtomicUsize::new(0));
    let conn = Arc::new(H2Conn {
        shared,
        peer: PeerInfo::new(peer.ip()).over_tls(),
        hsts: hsts.and_then(|h| HeaderValue::from_bytes(&h).ok()),
        open: open.clone(),
        tunnels: Mutex::new(JoinSet::new()),
    });
    tracing::debug!(%peer, "HTTP/2 connection");
    let counter = open.clone();
    let started = Arc::new(AtomicU64::new(0));
    let starts = started.clone();
    let service = service_fn(move |request| {
        let conn = conn.clone();
        starts.fetch_add(1, Ordering::Relaxed);
        let open = OpenStream::new(&counter);
        async move {
            let response = conn.relay_within(request).await?;
            Ok::<_, StreamReset>(response.map(|body| Tracked { body, _open: open }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).enable_connect_protocol();
    let served = builder.serve_connection(TokioIo::new(stream), service);
    let mut served = pin!(served);
    // A connection without a stream for a whole client header timeout
    // (checked once per period, so idle for one to two periods) is closed
    // as an idle HTTP/1.1 connection is.
    let mut seen = 0;
    // A stream open at the last check counts as activity, so the idle time
    // runs from when the last stream ended, not from when it began.
    let mut was_busy = false;
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "HTTP/2 connection ended");
                }
                return;
            }
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep(idle_limit.unwrap_or(Duration::MAX)), if idle_limit.is_some() => {
                let now = started.load(Ordering::Relaxed);
                let busy = open.load(Ordering::Acquire) > 0;
                if now == seen && !busy && !was_busy {
                    tracing::debug!("idle HTTP/2 connection closed");
                    break;
                }
                seen = now;
                was_busy = busy;
            }
        }
    }
    served.as_mut().graceful_shutdown();
    // The GOAWAY's end waits for the client to acknowledge it; a client
    // that says nothing with no stream open is closed after a moment, as
    // an idle HTTP/1.1 connection is.
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "HTTP/2 connection ended after GOAWAY");
                }
                return;
            }
            () = tokio::time::sleep(IDLE_ON_STOP) => {
                if open.load(Ordering::Acquire) == 0 {
                    tracing::debug!("idle HTTP/2 connection closed on stop");
                    return;
                }
            }
        }
    }
}

/// How long a connection without open streams may take to finish its
/// GOAWAY exchange once the router stops.
const IDLE_ON_STOP: Duration = Duration::from_secs(1);

/// Counts a stream as open on its connection until its response ended.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        OpenStream(counter.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open while it lives.
struct Tracked {
    body: RelayBody,
    _open: OpenStream,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl H2Conn {
    /// Relays one stream within the request timeout, if one is set: a
    /// stream without a response head by then gets 504, and one whose
    /// response body is still streaming is reset.
    async fn relay_within(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<RelayBody>, StreamReset> {
        let Some(limit) = self.shared.request_timeout else {
            return self.relay(request, None, &mut None).await;
        };
        let deadline = Instant::now() + limit;
        let mut chosen = None;
        let relayed =
            tokio::time::timeout_at(deadline, self.relay(request, Some(deadline), &mut chosen))
                .await;
        match relayed {
            Ok(response) => response,
            Err(_) => {
                tracing::debug!(slot = ?chosen, ?limit, "request timeout");
                let (status, text) = failure_answer(ProxyFailure::Timeout);
                Ok(self.local(status, text.into(), chosen))
            }
        }
    }

    /// Relays one stream, or answers it when it cannot be relayed;
    /// `chosen` is set to the slot once one is chosen, and the response
    /// body is cut off at `deadline`. An extended `CONNECT` for the
    /// `websocket` protocol (RFC 8441) goes upstream as an HTTP/1.1
    /// WebSocket upgrade.
    async fn relay(
        &self,
        request: Request<Incoming>,
        deadline: Option<Instant>,
        chosen: &mut Option<atlas_core::Slot>,
    ) -> Result<Response<RelayBody>, StreamReset> {
        let start = Instant::now();
        let (mut parts, body) = request.into_parts();
        let host: Option<&[u8]> = parts
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| parts.headers.get(header::HOST).map(HeaderValue::as_bytes));
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let service = if self.shared.routes_services() {
            self.shared.route_service(host, path.as_bytes())
        } else {
            None
        };
        if service.is_none() && !self.shared.own {
            self.shared.record_unmatched();
            tracing::debug!(host = ?host.map(String::from_utf8_lossy), "no service routes this host");
            return Ok(self.local(404, no_service_text(host).into(), None));
        }
        let shared = service.unwrap_or_else(|| self.shared.clone());
        // The client's side of an extended CONNECT, once it was answered.
        let mut websocket = None;
        if parts.method == Method::CONNECT {
            match parts.extensions.get::<Protocol>() {
                Some(protocol) if protocol.as_str().eq_ignore_ascii_case("websocket") => {
                    websocket = parts.extensions.remove::<OnUpgrade>();
                }
                Some(_) => {
                    return Ok(self.local(
                        501,
                        "only websocket is relayed over CONNECT\n".into(),
                        None,
                    ));
                }
                None => return Ok(self.local(405, "CONNECT is not supported\n".into(), None)),
            }
        }
        let declared = body.size_hint().exact();
        if let (Some(max), Some(n)) = (shared.max_request_body, declared)
            && n > max
        {
            tracing::debug!(length = n, max, "request body over the limit");
            return Ok(self.local(413, "request body too large\n".into(), None));
        }
        let listed = header_list(&parts.headers);
        let accepts_gzip = shared.gzip.is_some()
            && websocket.is_none()
            && parts.method != Method::HEAD
            && gzip::request_accepts(&listed);
        let (region, route, attempt) = match choose(&shared, &listed) {
            Ok(choice) => choice,
            Err(refused) => {
                return Ok(self.local(refused.status, refused.text.into(), refused.slot));
            }
        };
        let slot = route.slot;
        *chosen = Some(slot);
        let mut exchange = Exchange {
            shared: shared.clone(),
            region,
            slot,
            start,
            // Until the response head is relayed: a stream reset before it
            // was cut off.
            outcome: Some(Outcome::Failed(ProxyFailure::Timeout)),
            logged: shared
                .access_log
                .is_some()
                .then(|| Box::new((parts.method.to_string(), path.to_owned()))),
            bytes: 0,
            in_flight: attempt,
        };
        let mut upstream = Request::new(());
        *upstream.headers_mut() = self.upstream_headers(&parts.headers, &listed, host);
        drop(listed);
        // Origin form: the path and query as the client sent them.
        *upstream.uri_mut() = path
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.method_mut() = parts.method.clone();
        let key = websocket.is_some().then(websocket::key);
        if let Some(key) = &key {
            *upstream.method_mut() = Method::GET;
            let headers = upstream.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
        }
        let may_retry = body.is_end_stream() && is_idempotent(upstream.method().as_str());
        let client_body = Arc::new(BodyBreak::default());
        let body = ClientBody::new(
            body,
            shared.client_body_timeout,
            shared.max_request_body,
            client_body.clone(),
        )
        .boxed();
        let sent = match self
            .send(
                &shared,
                &mut exchange,
                upstream,
                body,
                may_retry,
                key.is_some(),
            )
            .await
        {
            Ok(sent) => sent,
            Err(failure) => return self.failed(exchange, failure, &client_body),
        };
        let Sent {
            mut response,
            reusable,
            task,
        } = sent;
        let status = response.status();
        let sticky = route
            .set_sticky
            .then(|| shared.sticky.as_ref().map(|s| s.header(slot)))
            .flatten();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(match (key, websocket) {
                (Some(key), Some(client)) => {
                    self.switch(exchange, &mut response, &key, client, sticky)
                }
                // HTTP/2 has no `101`: the upstream switched protocols for
                // a request that did not ask for it.
                _ => self.fail(exchange, ProxyFailure::UpstreamFailed),
            });
        }
        if websocket.is_some() && status.is_success() {
            // A 2xx to an extended CONNECT opens the tunnel: an upstream
            // that answered the upgrade without switching must not.
            tracing::debug!(%slot, %status, "upstream did not switch to WebSocket");
            return Ok(self.fail(exchange, ProxyFailure::UpstreamFailed));
        }
        exchange.outcome = Some(Outcome::Status(status.as_u16()));
        let (head, incoming) = response.into_parts();
        // Like the HTTP/1.1 path, a connection that answered an error (or
        // asked to close) is not pooled, nor one that was asked to switch
        // protocols.
        let keep_upstream = status.as_u16() < 400
            && head.version == Version::HTTP_11
            && websocket.is_none()
            && !head
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        // A bodiless response is never polled: its connection is free now.
        let reusable = keep_upstream.then_some(reusable).and_then(|reusable| {
            if incoming.is_end_stream() {
                reusable.store(true, Ordering::Release);
                None
            } else {
                Some(reusable)
            }
        });
        let compress = {
            let headers = header_list(&head.headers);
            let from = Facts::read(&headers).map_or(Framing::Close, |facts| {
                facts.response_framing(status.as_u16(), parts.method == Method::HEAD)
            });
            gzip::choose(
                shared.gzip.as_ref(),
                accepts_gzip,
                status.as_u16(),
                &headers,
                from,
            )
        };
        let mut out = Response::new(RelayBody::upstream(
            incoming,
            exchange,
            reusable,
            task,
            deadline,
            shared.response_idle_timeout,
            client_body,
            compress.level,
        ));
        *out.status_mut() = status;
        self.relay_headers(
            &head.headers,
            out.headers_mut(),
            compress,
            Some(slot),
            sticky,
        );
        Ok(out)
    }

    /// Connects to the exchange's endpoint and sends `upstream` with
    /// `body`: one retry on another endpoint of the slot, then in a router
    /// with regions on another serving region, for idempotent bodiless
    /// requests, as on the HTTP/1.1 path. `upgrade`: the connection is
    /// kept for a protocol switch, never pooled.
    async fn send(
        &self,
        shared: &Arc<Shared>,
        exchange: &mut Exchange,
        upstream: Request<()>,
        body: UpstreamBody,
        may_retry: bool,
        upgrade: bool,
    ) -> Result<Sent, ProxyFailure> {
        let slot = exchange.slot;
        let (template, ()) = upstream.into_parts();
        let mut body = Some(body);
        let mut retried = false;
        let mut crossed = false;
        let mut fresh_only = false;
        loop {
            let upstream = exchange.in_flight.upstream().clone();
            let conn = match upstream
                .checkout(&shared.pool, !fresh_only, !may_retry)
                .await
            {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::trace!(%slot, replica = %upstream.endpoint.replica, %error, "upstream connection failed");
                    if may_retry
                        && !retried
                        && let Some(next) = shared.pick_in(exchange.region, slot, Some(&upstream))
                    {
                        shared.metrics.record_retry(slot);
                        retried = true;
                        fresh_only = false;
                        exchange.in_flight = next;
                        continue;
                    }
                    if may_retry
                        && !crossed
                        && let Some((region, next)) = shared.fallback_region(exchange.region, slot)
                    {
                        shared.metrics.record_retry(slot);
                        crossed = true;
                        retried = true;
                        fresh_only = false;
                        exchange.region = region;
                        exchange.in_flight = next;
                        continue;
                    }
                    return Err(ProxyFailure::Unreachable);
                }
            };
            let reused = conn.reused;
            let (mut sender, connection) =
                match hyper::client::conn::http1::handshake(TokioIo::new(conn.stream)).await {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::trace!(%slot, %error, "upstream handshake failed");
                        return Err(ProxyFailure::UpstreamFailed);
                    }
                };
            // Set once the response body was relayed to its end, and the
            // exchange could leave the connection for another one.
            let reusable = Arc::new(AtomicBool::new(false));
            let pool_back = (upstream.clone(), shared.clone(), reusable.clone());
            let task = tokio::spawn(async move {
                if upgrade {
                    if let Err(error) = connection.with_upgrades().await {
                        tracing::trace!(%error, "upstream connection ended");
                    }
                    return;
                }
                let (upstream, shared, reusable) = pool_back;
                match connection.without_shutdown().await {
                    Ok(parts) if reusable.load(Ordering::Acquire) && parts.read_buf.is_empty() => {
                        upstream.release(parts.io.into_inner(), &shared.pool);
                    }
                    Ok(_) => tracing::trace!("upstream connection not reusable"),
                    Err(error) => tracing::trace!(%error, "upstream connection ended"),
                }
            })
            .abort_handle();
            let mut request = Request::from_parts(
                template.clone(),
                body.take()
                    .unwrap_or_else(|| Empty::new().map_err(BoxError::from).boxed()),
            );
            if !request.headers().contains_key(header::HOST)
                && let Ok(value) = HeaderValue::from_bytes(&upstream.host)
            {
                request.headers_mut().insert(header::HOST, value);
            }
            let sent = sender.send_request(request);
            let answered = match shared.pool.response_timeout {
                None => sent.await,
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        task.abort();
                        return Err(ProxyFailure::Timeout);
                    }
                },
            };
            if answered.is_err() {
                // The upstream holds part of a request (or nothing): its
                // connection is closed here, never pooled.
                task.abort();
            }
            match answered {
                Ok(response) => {
                    return Ok(Sent {
                        response,
                        reusable,
                        task,
                    });
                }
                // A pooled connection the upstream closed meanwhile: a new
                // one to the same endpoint.
                Err(error) if reused && may_retry && !fresh_only => {
                    tracing::trace!(%slot, %error, "pooled upstream connection closed; reconnecting");
                    fresh_only = true;
                }
                Err(error) => {
                    tracing::trace!(%slot, %error, "upstream response failed");
                    return Err(ProxyFailure::UpstreamFailed);
                }
            }
        }
    }

    /// Answers the client's extended `CONNECT` with 200 once the upstream
    /// switched to WebSocket with the right `Sec-WebSocket-Accept`, and
    /// relays the two upgraded connections both ways in a task of this
    /// connection, as an HTTP/1.1 upgraded connection is relayed: counted
    /// as upgraded, and closed after the upgrade drain time once its
    /// endpoint left the slot. The exchange is recorded (as its 200) at
    /// once and no longer counts as in flight.
    fn switch(
        &self,
        mut exchange: Exchange,
        response: &mut Response<Incoming>,
        key: &HeaderValue,
        client: OnUpgrade,
        sticky: Option<HeaderValue>,
    ) -> Response<RelayBody> {
        let headers = response.headers();
        let accepted = headers
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|accept| websocket::accepts(key.as_bytes(), accept.as_bytes()));
        let to_websocket = headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !accepted || !to_websocket {
            tracing::debug!(slot = %exchange.slot, "upstream WebSocket handshake refused: wrong accept key or protocol");
            return self.fail(exchange, ProxyFailure::UpstreamFailed);
        }
        let upstream = hyper::upgrade::on(&mut *response);
        let slot = exchange.slot;
        exchange.outcome = Some(Outcome::Status(200));
        let mut out = Response::new(RelayBody::Local(Full::default()));
        let mut relayed = response.headers().clone();
        relayed.remove(header::SEC_WEBSOCKET_ACCEPT);
        let plain = gzip::GzipChoice {
            vary: false,
            level: None,
        };
        self.relay_headers(&relayed, out.headers_mut(), plain, Some(slot), sticky);
        let open = OpenStream::new(&self.open);
        let tunnel = async move {
            let _open = open;
            let shared = exchange.shared.clone();
            let endpoint = exchange.in_flight.upstream().clone();
            drop(exchange);
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%slot, %error, "WebSocket upgrade not completed");
                    return;
                }
            };
            let mut guard = UpgradedGuard::new(&shared, slot);
            tracing::debug!(%slot, replica = %endpoint.endpoint.replica, "HTTP/2 stream upgraded to WebSocket");
            relay_upgraded(
                &shared,
                slot,
                &endpoint,
                &mut TokioIo::new(client),
                &mut TokioIo::new(upstream),
                &mut guard,
            )
            .await;
        };
        let mut tunnels = self.tunnels.lock().unwrap_or_else(PoisonError::into_inner);
        while tunnels.try_join_next().is_some() {}
        tunnels.spawn(tunnel);
        out
    }

    /// The request headers sent upstream: hop-by-hop ones (and those
    /// `Connection` names) dropped, the `cookie` fields joined into one
    /// (RFC 9113 §8.2.3), `:authority` as `Host`, and the forwarding
    /// headers the HTTP/1.1 path adds.
    fn upstream_headers(
        &self,
        from: &HeaderMap,
        listed: &[Header<'_>],
        host: Option<&[u8]>,
    ) -> HeaderMap {
        let named = connection_named(from);
        let mut headers = HeaderMap::with_capacity(from.len() + 3);
        let mut cookies: Vec<u8> = Vec::new();
        for (name, value) in from {
            if is_hop_by_hop(name.as_str().as_bytes())
                || named.contains(name)
                || name == header::HOST
                || name == header::EXPECT
                || name == "x-forwarded-for"
                || name == "forwarded"
            {
                continue;
            }
            if name == header::COOKIE {
                if !cookies.is_empty() {
                    cookies.extend_from_slice(b"; ");
                }
                cookies.extend_from_slice(value.as_bytes());
                continue;
            }
            headers.append(name, value.clone());
        }
        if !cookies.is_empty()
            && let Ok(value) = HeaderValue::from_bytes(&cookies)
        {
            headers.insert(header::COOKIE, value);
        }
        if let Some(host) = host
            && let Ok(value) = HeaderValue::from_bytes(host)
        {
            headers.insert(header::HOST, value);
        }
        // The HTTP/1.1 path's own forwarding lines, read back as headers.
        let mut lines = Vec::with_capacity(128);
        put_forwarding(&mut lines, listed, &self.peer, host);
        for line in lines.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// The headers the proxy adds to every response: HSTS, and the slot.
    fn put_own(&self, headers: &mut HeaderMap, slot: Option<atlas_core::Slot>) {
        if let Some(hsts) = &self.hsts {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        if let Some(slot) = slot {
            headers.insert(
                HeaderName::from_static(SLOT_HEADER),
                HeaderValue::from_static(slot.as_str()),
            );
        }
    }

    /// The proxy's own answer.
    fn local(
        &self,
        status: u16,
        text: std::borrow::Cow<'static, str>,
        slot: Option<atlas_core::Slot>,
    ) -> Response<RelayBody> {
        let mut response =
            Response::new(RelayBody::Local(Full::new(Bytes::from(text.into_owned()))));
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.put_own(response.headers_mut(), slot);
        response
    }

    /// Answers a stream whose upstream exchange failed: as the HTTP/1.1
    /// path does when the client's request body broke off first (413 for
    /// one over the limit, otherwise the stream is reset, neither counted),
    /// with the proxy's error otherwise.
    fn failed(
        &self,
        mut exchange: Exchange,
        failure: ProxyFailure,
        client_body: &BodyBreak,
    ) -> Result<Response<RelayBody>, StreamReset> {
        let Some(why) = client_body.get() else {
            return Ok(self.fail(exchange, failure));
        };
        exchange.outcome = None;
        tracing::debug!(slot = %exchange.slot, ?why, "client request body broke off");
        if why == Upload::TooLarge {
            let slot = exchange.slot;
            drop(exchange);
            return Ok(self.local(413, "request body too large\n".into(), Some(slot)));
        }
        Err(StreamReset("client request body broke off"))
    }

    /// Copies the upstream's response headers to the client's: without
    /// connection-specific ones, its own slot header and HSTS; with the
    /// proxy's own, the sticky cookie, and gzip's as `gzip` says.
    fn relay_headers(
        &self,
        from: &HeaderMap,
        to: &mut HeaderMap,
        gzip: gzip::GzipChoice,
        slot: Option<atlas_core::Slot>,
        sticky: Option<HeaderValue>,
    ) {
        let named = connection_named(from);
        for (name, value) in from {
            if is_hop_by_hop(name.as_str().as_bytes())
                || named.contains(name)
                || name == header::STRICT_TRANSPORT_SECURITY && self.hsts.is_some()
                || name.as_str() == SLOT_HEADER
                || gzip.level.is_some() && name == header::CONTENT_LENGTH
            {
                continue;
            }
            if gzip.level.is_some()
                && name == header::ETAG
                && let Some(weak) = gzip::weakened_etag(value.as_bytes())
                && let Ok(weak) = HeaderValue::from_bytes(&weak)
            {
                to.append(name, weak);
                continue;
            }
            to.append(name, value.clone());
        }
        if gzip.vary {
            to.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        if gzip.level.is_some() {
            to.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        self.put_own(to, slot);
        if let Some(sticky) = sticky {
            to.append(header::SET_COOKIE, sticky);
        }
    }

    /// Answers a request the proxy could not relay with its own error,
    /// counted against the slot.
    fn fail(&self, mut exchange: Exchange, failure: ProxyFailure) -> Response<RelayBody> {
        exchange.outcome = Some(Outcome::Failed(failure));
        let slot = exchange.slot;
        drop(exchange);
        tracing::trace!(%slot, ?failure, "request failed in the proxy");
        let (status, text) = failure_answer(failure);
        self.local(status, text.into(), Some(slot))
    }
}

/// The header names a `Connection` header lists (hop-by-hop too).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The headers of `headers` as the HTTP/1.1 path's policy code reads them.
fn header_list(headers: &HeaderMap) -> Vec<Header<'_>> {
    headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect()
}

/// An upstream exchange under way: its response head, the flag that
/// frees its connection for the pool, and the task driving it.
struct Sent {
    response: Response<Incoming>,
    reusable: Arc<AtomicBool>,
    task: AbortHandle,
}

/// Why a stream is reset rather than answered (hyper resets the stream
/// of a service that fails).
#[derive(Debug)]
struct StreamReset(&'static str);

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for StreamReset {}
