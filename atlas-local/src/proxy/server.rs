//! The listening side: accept loop, connections with graceful shutdown, and
//! the per-request relay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_core::Slot;
use http::header::{CONTENT_TYPE, HOST, HeaderValue, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version, request};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Shared;
use super::balance::Route;
use super::body::{Exchange, ProxyBody};
use super::headers::{PeerInfo, X_ATLAS_SLOT, add_forwarding, strip_hop_by_hop};
use super::metrics::{Outcome, ProxyFailure};
use super::upstream::{SendFailure, UpstreamBody};

/// What every request on one client connection shares.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: PeerInfo,
}

/// Runs an HTTP/1.1 server on `listener` until `stop` turns true, then
/// closes idle connections, lets busy ones finish their current exchange
/// within `grace`, and aborts what is left.
pub(crate) async fn serve<M, S>(
    what: &'static str,
    listener: TcpListener,
    builder: http1::Builder,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    make_service: M,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(builder);
    let conn_stop = stop.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = make_service(peer);
                    let builder = builder.clone();
                    let mut stop = conn_stop.clone();
                    conns.spawn(async move {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            result = conn.as_mut() => {
                                if let Err(e) = result {
                                    tracing::trace!(%peer, error = %e, "client connection ended with an error");
                                }
                            }
                            _ = stopped(&mut stop) => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.as_mut().await;
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // accept: back off briefly rather than spin.
                    tracing::debug!(server = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(listener);
    let open = conns.len();
    tracing::debug!(
        server = what,
        open,
        "stopped accepting; closing connections"
    );
    let finished =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            server = what,
            left = conns.len(),
            ?grace,
            "connections still busy after the grace period; aborting them"
        );
        conns.shutdown().await;
    }
    tracing::debug!(server = what, "stopped");
}

/// Resolves once `stop` turns true (or its sender is gone). Returns
/// nothing, so no watch guard is held across an await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Methods whose repetition has the same effect as one request (RFC 9110
/// §9.2.2), the only ones retried after a failed upstream connection.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn slot_value(slot: Slot) -> HeaderValue {
    HeaderValue::from_static(slot.as_str())
}

fn local_response(
    status: StatusCode,
    text: &'static str,
    slot: Option<Slot>,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(slot) = slot {
        headers.insert(X_ATLAS_SLOT, slot_value(slot));
    }
    response
}

fn failure(shared: &Shared, slot: Slot, failure: ProxyFailure) -> Response<ProxyBody> {
    shared.metrics.record(slot, Outcome::Failed(failure), None);
    tracing::trace!(%slot, ?failure, "request failed in the proxy");
    let (status, text) = match failure {
        ProxyFailure::NoEndpoint => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no endpoint serves the chosen slot\n",
        ),
        ProxyFailure::Unreachable => (StatusCode::BAD_GATEWAY, "upstream unreachable\n"),
        ProxyFailure::UpstreamFailed => (StatusCode::BAD_GATEWAY, "upstream connection failed\n"),
        ProxyFailure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
    };
    local_response(status, text, Some(slot))
}

/// Rewrites the request head for the upstream: origin-form URI, HTTP/1.1,
/// no hop-by-hop headers, forwarding headers added.
fn prepare(parts: &mut request::Parts, peer: &PeerInfo) {
    strip_hop_by_hop(&mut parts.headers);
    if let Some(authority) = parts.uri.authority() {
        // Absolute-form: the URI's authority overrides `Host` (RFC 9112 §3.2.2).
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(HOST, host);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    add_forwarding(&mut parts.headers, peer);
    parts.version = Version::HTTP_11;
}

/// Relays one request.
pub(crate) async fn handle(ctx: Arc<ConnCtx>, request: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let shared = &ctx.shared;
    if request.method() == Method::CONNECT {
        return local_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported\n",
            None,
        );
    }
    let route = {
        let split = shared.split.load();
        match split.as_ref() {
            Some(state) => state.route(request.headers(), shared.sticky_name()),
            None => {
                shared.metrics.record_unrouted();
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no traffic split is set\n",
                    None,
                );
            }
        }
    };
    let Route { slot, set_sticky } = route;

    let (mut parts, body) = request.into_parts();
    let bodiless = body.is_end_stream();
    let may_retry = bodiless && is_idempotent(&parts.method);
    let had_host = parts.headers.contains_key(HOST) || parts.uri.authority().is_some();
    prepare(&mut parts, &ctx.peer);
    let body = if bodiless {
        UpstreamBody::Empty
    } else {
        UpstreamBody::Streaming(body)
    };
    let mut request = Request::from_parts(parts, body);

    let Some(mut attempt) = shared.pick(slot, None) else {
        return failure(shared, slot, ProxyFailure::NoEndpoint);
    };
    let mut retried = false;
    let (response, sender) = loop {
        if !had_host {
            request
                .headers_mut()
                .insert(HOST, attempt.upstream().host.clone());
        }
        match attempt.upstream().send(request, &shared.pool).await {
            Ok(done) => break done,
            Err(SendFailure::Connect {
                request: back,
                error,
            }) => {
                tracing::trace!(
                    %slot,
                    replica = %attempt.upstream().endpoint.replica,
                    %error,
                    "upstream connection failed"
                );
                if may_retry
                    && !retried
                    && let Some(next) = shared.pick(slot, Some(attempt.upstream()))
                {
                    shared.metrics.record_retry(slot);
                    retried = true;
                    request = *back;
                    attempt = next;
                    continue;
                }
                return failure(shared, slot, ProxyFailure::Unreachable);
            }
            Err(SendFailure::Failed(error)) => {
                tracing::trace!(%slot, %error, "upstream exchange failed");
                return failure(shared, slot, ProxyFailure::UpstreamFailed);
            }
            Err(SendFailure::Timeout) => return failure(shared, slot, ProxyFailure::Timeout),
        }
    };

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(X_ATLAS_SLOT, slot_value(slot));
    if set_sticky && let Some(sticky) = &shared.sticky {
        parts.headers.append(SET_COOKIE, sticky.header(slot));
    }
    let exchange = Exchange {
        shared: ctx.shared.clone(),
        slot,
        start,
        outcome: Outcome::Status(parts.status.as_u16()),
        sender: Some(sender),
        reusable: false,
        in_flight: attempt,
    };
    Response::from_parts(parts, ProxyBody::relayed(body, exchange))
}
