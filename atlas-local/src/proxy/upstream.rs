//! One upstream endpoint: its in-flight counter (for balancing and
//! draining) and its keep-alive connection pool.
//!
//! The pool is a small LIFO stack of idle HTTP/1.1 connections per
//! endpoint (the most recently used connection is the warmest). A
//! connection goes back to the stack only after a complete exchange that
//! left nothing unread; anything else closes it. A connection the upstream
//! closed while idle is noticed without a system call from the readiness
//! the runtime already tracks, and dropped.
//!
//! A router whose data path runs on several worker threads, each with a
//! runtime of its own, keeps one stack per worker: a connection is driven
//! by the runtime that opened it, so it is only ever reused on the thread
//! that opened it. Each worker thread names itself with
//! [`set_worker`].

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use atlas_core::Endpoint;
use atlas_core::error::BoxError;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::replica_stats::ReplicaCounters;

thread_local! {
    /// The data-path worker this thread is; 0 on threads of a shared
    /// runtime.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Names the calling thread as data-path worker `index`, whose upstream
/// connections go to pool stack `index`.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Connection pool settings shared by all endpoints of a router.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// Pool stacks per endpoint: one per data-path worker thread.
    pub(crate) stacks: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) response_timeout: Option<Duration>,
}

struct IdleConn {
    stream: TcpStream,
    since: Instant,
}

/// A connection to an upstream, checked out of the pool or new.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub(crate) stream: TcpStream,
    /// Whether it served an exchange before (then a failure before any
    /// response byte may be the upstream having closed it while idle).
    pub(crate) reused: bool,
}

/// A listed (or draining) endpoint of a slot.
pub(crate) struct Upstream {
    pub(crate) endpoint: Endpoint,
    /// `ip:port`, sent as `Host` for requests that came without one.
    pub(crate) host: Box<[u8]>,
    in_flight: AtomicUsize,
    removed: AtomicBool,
    drained: Notify,
    /// One stack per data-path worker.
    idle: Box<[Mutex<Vec<IdleConn>>]>,
    /// Turns true when the endpoint leaves its slot, for the upgraded
    /// connections still open to it.
    retired: tokio::sync::watch::Sender<bool>,
    /// Per-replica counters, kept by the relay.
    pub(crate) stats: ReplicaCounters,
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

impl Upstream {
    pub(crate) fn new(endpoint: Endpoint, pool: &PoolConfig) -> Self {
        let host = endpoint.addr.to_string().into_bytes().into_boxed_slice();
        Upstream {
            endpoint,
            host,
            in_flight: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            drained: Notify::new(),
            idle: (0..pool.stacks.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            retired: tokio::sync::watch::Sender::new(false),
            stats: ReplicaCounters::new(),
        }
    }

    /// Resolves (`true`) once the endpoint has left its slot.
    pub(crate) fn retired(&self) -> tokio::sync::watch::Receiver<bool> {
        self.retired.subscribe()
    }

    /// Requests in flight to this endpoint.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes the endpoint out of service: no new request enters it (see
    /// [`InFlight::enter`]) and its idle connections are closed.
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.retired.send_replace(true);
        for stack in &self.idle {
            let idle = std::mem::take(&mut *lock(stack));
            drop(idle);
        }
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

    /// The calling worker's stack.
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        let worker = WORKER.with(Cell::get).min(self.idle.len() - 1);
        lock(&self.idle[worker])
    }

    /// A pooled connection that is still open (when `reuse`), or a new one.
    ///
    /// `verify` is for requests that cannot be retried once sent: it asks
    /// the kernel whether a pooled connection is still open instead of
    /// trusting the readiness the runtime last saw, which may not include
    /// a close that just arrived. A system call is cheaper than a lost
    /// request.
    ///
    /// # Errors
    ///
    /// The connect error (refused, unreachable, timeout) when no pooled
    /// connection was taken and a new one could not be made.
    pub(crate) async fn checkout(
        &self,
        pool: &PoolConfig,
        reuse: bool,
        verify: bool,
    ) -> Result<UpstreamConn, BoxError> {
        if reuse && let Some(stream) = self.idle_connection(pool, verify) {
            return Ok(UpstreamConn {
                stream,
                reused: true,
            });
        }
        self.connect(pool).await.map(|stream| UpstreamConn {
            stream,
            reused: false,
        })
    }

    fn idle_connection(&self, pool: &PoolConfig, verify: bool) -> Option<TcpStream> {
        loop {
            let conn = { self.lock_idle().pop()? };
            if conn.since.elapsed() > pool.idle_timeout
                || !still_open(&conn.stream)
                || (verify && !kernel_says_open(&conn.stream))
            {
                continue;
            }
            return Some(conn.stream);
        }
    }

    /// A new connection to the endpoint.
    async fn connect(&self, pool: &PoolConfig) -> Result<TcpStream, BoxError> {
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
        tracing::trace!(replica = %self.endpoint.replica, %addr, "upstream connection opened");
        Ok(stream)
    }

    /// Gives a connection whose exchange completed back to the pool.
    pub(crate) fn release(&self, stream: TcpStream, pool: &PoolConfig) {
        if self.removed.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < pool.max_idle {
            idle.push(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections that expired or that the upstream closed.
    pub(crate) fn reap(&self, pool: &PoolConfig) {
        let now = Instant::now();
        for stack in &self.idle {
            let expired: Vec<IdleConn> = {
                let mut idle = lock(stack);
                let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(|c| {
                    now.duration_since(c.since) <= pool.idle_timeout && still_open(&c.stream)
                });
                *idle = keep;
                expired
            };
            drop(expired);
        }
    }

    /// Idle connections in the pool, all workers' stacks together.
    pub(crate) fn idle_connections(&self) -> usize {
        self.idle.iter().map(|stack| lock(stack).len()).sum()
    }
}

fn lock(stack: &Mutex<Vec<IdleConn>>) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
    // The critical sections only push, pop or retain: a panic cannot leave
    // the stack inconsistent, so a poisoned lock is still usable.
    stack.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether an idle connection may carry another request: nothing to read
/// on it (an idle upstream that sends something either closed the
/// connection or broke the protocol). The runtime's cached readiness
/// answers without a system call in the usual case; only a connection
/// marked readable is probed with a read.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Whether an idle connection is still open and has nothing to read, asked
/// of the kernel with a non-blocking peek (Unix; elsewhere the runtime's
/// readiness is all there is).
fn kernel_says_open(stream: &TcpStream) -> bool {
    #[cfg(unix)]
    {
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsRawFd as _;
        let mut probe = [0u8; 1];
        matches!(
            recv(
                stream.as_raw_fd(),
                &mut probe,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
            ),
            Err(nix::errno::Errno::EAGAIN)
        )
    }
    #[cfg(not(unix))]
    {
        still_open(stream)
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
