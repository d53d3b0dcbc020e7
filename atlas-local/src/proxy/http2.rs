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
//! connection. Bodies stream both ways.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use httparse::Header;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::h1::{SLOT_HEADER, is_hop_by_hop};
use super::headers::{PeerInfo, put_forwarding};
use super::metrics::{Outcome, ProxyFailure};
use super::relay::{
    Exchange, choose, failure_answer, is_idempotent, no_service_text, serve_client,
};
use super::server::stopped;
use super::shared::Shared;
use super::tls::Terminator;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    let conn = Arc::new(H2Conn {
        shared,
        peer: PeerInfo::new(peer.ip()).over_tls(),
        hsts: hsts.and_then(|h| HeaderValue::from_bytes(&h).ok()),
    });
    tracing::debug!(%peer, "HTTP/2 connection");
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    let started = Arc::new(AtomicU64::new(0));
    let starts = started.clone();
    let service = service_fn(move |request| {
        let conn = conn.clone();
        starts.fetch_add(1, Ordering::Relaxed);
        let open = OpenStream::new(&counter);
        async move {
            let response = conn.relay_within(request).await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _open: open }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
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
    async fn relay_within(&self, request: Request<Incoming>) -> Response<RelayBody> {
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
                self.local(status, text.into(), chosen)
            }
        }
    }

    /// Relays one stream, or answers it when it cannot be relayed;
    /// `chosen` is set to the slot once one is chosen, and the response
    /// body is cut off at `deadline`.
    async fn relay(
        &self,
        request: Request<Incoming>,
        deadline: Option<Instant>,
        chosen: &mut Option<atlas_core::Slot>,
    ) -> Response<RelayBody> {
        let start = Instant::now();
        let (parts, body) = request.into_parts();
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
            return self.local(404, no_service_text(host).into(), None);
        }
        let shared = service.unwrap_or_else(|| self.shared.clone());
        if parts.method == Method::CONNECT {
            return self.local(405, "CONNECT is not supported\n".into(), None);
        }
        let declared = body.size_hint().exact();
        if let (Some(max), Some(n)) = (shared.max_request_body, declared)
            && n > max
        {
            tracing::debug!(length = n, max, "request body over the limit");
            return self.local(413, "request body too large\n".into(), None);
        }
        let listed: Vec<Header<'_>> = parts
            .headers
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str(),
                value: value.as_bytes(),
            })
            .collect();
        let (region, route, attempt) = match choose(&shared, &listed) {
            Ok(choice) => choice,
            Err(refused) => return self.local(refused.status, refused.text.into(), refused.slot),
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
        let upstream_headers = self.upstream_headers(&parts.headers, &listed, host);
        drop(listed);
        // Origin form: the path and query as the client sent them.
        let target = path
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        let may_retry = body.is_end_stream() && is_idempotent(parts.method.as_str());
        let mut body: Option<UpstreamBody> = Some(match shared.max_request_body {
            Some(max) => Limited::new(body, max as usize).boxed(),
            None => body.map_err(BoxError::from).boxed(),
        });

        // Connect (one retry on another endpoint of the slot, then in a
        // router with regions on another serving region, for idempotent
        // bodiless requests, as on the HTTP/1.1 path), then send.
        let mut retried = false;
        let mut crossed = false;
        let mut fresh_only = false;
        let (response, reusable) = loop {
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
                    return self.fail(exchange, ProxyFailure::Unreachable);
                }
            };
            let reused = conn.reused;
            let (mut sender, connection) =
                match hyper::client::conn::http1::handshake(TokioIo::new(conn.stream)).await {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::trace!(%slot, %error, "upstream handshake failed");
                        return self.fail(exchange, ProxyFailure::UpstreamFailed);
                    }
                };
            // Set once the response body was relayed to its end, and the
            // exchange could leave the connection for another one.
            let reusable = Arc::new(AtomicBool::new(false));
            let pool_back = (upstream.clone(), shared.clone(), reusable.clone());
            tokio::spawn(async move {
                let (upstream, shared, reusable) = pool_back;
                match connection.without_shutdown().await {
                    Ok(parts) if reusable.load(Ordering::Acquire) && parts.read_buf.is_empty() => {
                        upstream.release(parts.io.into_inner(), &shared.pool);
                    }
                    Ok(_) => tracing::trace!("upstream connection not reusable"),
                    Err(error) => tracing::trace!(%error, "upstream connection ended"),
                }
            });
            let mut request = Request::new(
                body.take()
                    .unwrap_or_else(|| Empty::new().map_err(BoxError::from).boxed()),
            );
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = target.clone();
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = upstream_headers.clone();
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
                    Err(_) => return self.fail(exchange, ProxyFailure::Timeout),
                },
            };
            match answered {
                Ok(response) => break (response, reusable),
                // A pooled connection the upstream closed meanwhile: a new
                // one to the same endpoint.
                Err(error) if reused && may_retry && !fresh_only => {
                    tracing::trace!(%slot, %error, "pooled upstream connection closed; reconnecting");
                    fresh_only = true;
                }
                Err(error) => {
                    tracing::trace!(%slot, %error, "upstream response failed");
                    return self.fail(exchange, ProxyFailure::UpstreamFailed);
                }
            }
        };
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // HTTP/2 has no `101`: the upstream switched protocols for a
            // request that could not ask for it.
            return self.fail(exchange, ProxyFailure::UpstreamFailed);
        }
        exchange.outcome = Some(Outcome::Status(status.as_u16()));
        let (head, incoming) = response.into_parts();
        // Like the HTTP/1.1 path, a connection that answered an error (or
        // asked to close) is not pooled.
        let keep_upstream = status.as_u16() < 400
            && head.version == Version::HTTP_11
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
        let mut out = Response::new(RelayBody::Upstream {
            inner: incoming,
            exchange,
            reusable,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        });
        *out.status_mut() = status;
        let headers = out.headers_mut();
        let named = connection_named(&head.headers);
        for (name, value) in &head.headers {
            if is_hop_by_hop(name.as_str().as_bytes())
                || named.contains(name)
                || name == header::STRICT_TRANSPORT_SECURITY && self.hsts.is_some()
                || name.as_str() == SLOT_HEADER
            {
                continue;
            }
            headers.append(name, value.clone());
        }
        self.put_own(headers, Some(slot));
        if route.set_sticky
            && let Some(sticky) = &shared.sticky
        {
            headers.append(header::SET_COOKIE, sticky.header(slot));
        }
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

/// A response body to an HTTP/2 client: the proxy's own text, or the
/// upstream's body streamed with the exchange it ends.
enum RelayBody {
    Local(Full<Bytes>),
    Upstream {
        inner: Incoming,
        /// Recorded (metrics, in-flight count, access log) when the body
        /// is dropped: at its end, or when the client reset the stream.
        exchange: Exchange,
        /// Set at the body's end when its connection may be pooled.
        reusable: Option<Arc<AtomicBool>>,
        /// The end of the request timeout, if one is set.
        deadline: Option<Pin<Box<Sleep>>>,
    },
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RelayBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            RelayBody::Upstream {
                inner,
                exchange,
                reusable,
                deadline,
            } => {
                if let Some(deadline) = deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    tracing::debug!(slot = %exchange.slot, "request timeout while the response streamed");
                    exchange.outcome = Some(Outcome::Failed(ProxyFailure::Timeout));
                    return Poll::Ready(Some(Err("request timeout".into())));
                }
                let polled = Pin::new(&mut *inner).poll_frame(cx).map_err(BoxError::from);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            exchange.bytes += data.len() as u64;
                        }
                        // hyper asks no further frame of a body that says
                        // it ended.
                        if inner.is_end_stream()
                            && let Some(reusable) = reusable.take()
                        {
                            reusable.store(true, Ordering::Release);
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        tracing::debug!(slot = %exchange.slot, %error, "upstream response body broke off");
                        exchange.outcome = Some(Outcome::Failed(ProxyFailure::UpstreamFailed));
                    }
                    Poll::Ready(None) => {
                        if let Some(reusable) = reusable.take() {
                            reusable.store(true, Ordering::Release);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Local(full) => full.is_end_stream(),
            RelayBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Local(full) => full.size_hint(),
            RelayBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
