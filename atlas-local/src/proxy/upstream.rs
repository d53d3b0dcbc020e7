//! One upstream endpoint: its in-flight counter (for balancing and
//! draining) and its keep-alive connection pool.
//!
//! The pool is a small LIFO stack of idle HTTP/1.1 connections per
//! endpoint (the most recently used connection is the warmest). A
//! connection goes back to the stack when its response body has been fully
//! relayed; one whose response was abandoned half-way is closed, since
//! HTTP/1.1 cannot reuse it. Taking a connection first, then sending, means
//! a refused connection is known before the request is consumed, so the
//! request can be retried elsewhere without copying it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atlas_core::Endpoint;
use atlas_core::error::BoxError;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Connection pool settings shared by all endpoints of a router.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) response_timeout: Option<Duration>,
}

struct IdleConn {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// A listed (or draining) endpoint of a slot.
pub(crate) struct Upstream {
    pub(crate) endpoint: Endpoint,
    /// `ip:port`, sent as `Host` for requests that came without one.
    pub(crate) host: HeaderValue,
    in_flight: AtomicUsize,
    removed: AtomicBool,
    drained: Notify,
    idle: Mutex<Vec<IdleConn>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoint", &self.endpoint)
            .field("in_flight", &self.in_flight())
            .field("removed", &self.removed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a request could not be relayed.
pub(crate) enum SendFailure {
    /// No connection could be made (refused, unreachable, connect
    /// timeout). The request was not sent and is handed back.
    Connect {
        // Boxed: the failure path is rare and the request head is large.
        request: Box<Request<UpstreamBody>>,
        error: BoxError,
    },
    /// The connection failed after the request (or part of it) was sent.
    Failed(hyper::Error),
    /// No response headers within the response timeout.
    Timeout,
}

impl Upstream {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        let host = HeaderValue::from_str(&endpoint.addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Upstream {
            endpoint,
            host,
            in_flight: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            drained: Notify::new(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Requests in flight to this endpoint.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes the endpoint out of service: no new request enters it (see
    /// [`InFlight::enter`]) and its idle connections are closed.
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
        let idle = std::mem::take(&mut *self.lock_idle());
        drop(idle);
    }

    /// Resolves once no request is in flight to this endpoint.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Register before checking, so a decrement to zero between the
            // check and the await still wakes us.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.removed.load(Ordering::SeqCst)
        {
            self.drained.notify_waiters();
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        // The critical sections only push, pop or retain: a panic cannot
        // leave the stack inconsistent, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` on a pooled connection or a new one, and returns the
    /// response head with the connection to give back once the body is
    /// relayed.
    pub(crate) async fn send(
        &self,
        mut request: Request<UpstreamBody>,
        pool: &PoolConfig,
    ) -> Result<(Response<Incoming>, SendRequest<UpstreamBody>), SendFailure> {
        loop {
            let (mut sender, fresh) = match self.idle_connection(pool).await {
                Some(sender) => (sender, false),
                None => match self.connect(pool).await {
                    Ok(sender) => (sender, true),
                    Err(error) => {
                        return Err(SendFailure::Connect {
                            request: Box::new(request),
                            error,
                        });
                    }
                },
            };
            // Only bodiless requests are timed: the clock would otherwise
            // include a slow client's upload, which is not the upstream's
            // fault. A client that gives up cancels the exchange anyway.
            let limit = match request.body() {
                UpstreamBody::Empty => pool.response_timeout,
                UpstreamBody::Streaming(_) => None,
            };
            let sent = sender.try_send_request(request);
            let result = match limit {
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(result) => result,
                    // Dropping the exchange closes the connection.
                    Err(_) => return Err(SendFailure::Timeout),
                },
                None => sent.await,
            };
            match result {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    // A pooled connection the upstream had closed: nothing
                    // was written, so the request goes out again, on the next
                    // idle connection or a new one. Bounded by the stack size.
                    Some(back) if !fresh => request = back,
                    Some(back) => {
                        return Err(SendFailure::Connect {
                            request: Box::new(back),
                            error: Box::new(e.into_error()),
                        });
                    }
                    None => return Err(SendFailure::Failed(e.into_error())),
                },
            }
        }
    }

    async fn idle_connection(&self, pool: &PoolConfig) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let conn = self.lock_idle().pop()?;
            if conn.sender.is_closed() || conn.since.elapsed() > pool.idle_timeout {
                continue;
            }
            let mut sender = conn.sender;
            // A connection goes back to the stack as soon as its response
            // body ended; the connection task may not have caught up yet.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            return Some(sender);
        }
    }

    async fn connect(&self, pool: &PoolConfig) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let addr = self.endpoint.addr;
        let stream =
            match tokio::time::timeout(pool.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(Box::new(e)),
                Err(_) => {
                    return Err(format!(
                        "connect to {addr} timed out after {:?}",
                        pool.connect_timeout
                    )
                    .into());
                }
            };
        // Small request/response exchanges: do not wait to coalesce writes.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let replica = self.endpoint.replica.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(%replica, error = %e, "upstream connection closed with an error");
            }
        });
        tracing::trace!(replica = %self.endpoint.replica, %addr, "upstream connection opened");
        Ok(sender)
    }

    /// Gives a connection whose exchange completed back to the pool.
    pub(crate) fn release(&self, sender: SendRequest<UpstreamBody>, pool: &PoolConfig) {
        if sender.is_closed() || self.removed.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < pool.max_idle {
            idle.push(IdleConn {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections that expired or that the upstream closed.
    pub(crate) fn reap(&self, pool: &PoolConfig) {
        let now = Instant::now();
        let expired: Vec<IdleConn> = {
            let mut idle = self.lock_idle();
            let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) <= pool.idle_timeout
            });
            *idle = keep;
            expired
        };
        drop(expired);
    }

    /// Idle connections in the pool.
    #[cfg(test)]
    pub(crate) fn idle_connections(&self) -> usize {
        self.lock_idle().len()
    }
}

/// One request counted against an endpoint, from choice to the end of the
/// response body. Dropping it ends the count.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Upstream>);

impl InFlight {
    /// Counts a request against `upstream`, unless the endpoint was
    /// removed meanwhile. Both sides use sequentially consistent atomics:
    /// either this sees the removal, or the drain sees this request.
    pub(crate) fn enter(upstream: Arc<Upstream>) -> Option<Self> {
        upstream.in_flight.fetch_add(1, Ordering::SeqCst);
        if upstream.removed.load(Ordering::SeqCst) {
            upstream.leave();
            return None;
        }
        Some(InFlight(upstream))
    }

    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A request body on its way upstream: streamed as it arrives, or empty.
#[derive(Debug)]
pub(crate) enum UpstreamBody {
    Empty,
    Streaming(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streaming(body) => body.size_hint(),
        }
    }
}
