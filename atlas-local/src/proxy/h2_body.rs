//! The bodies of HTTP/2 streams relayed to HTTP/1.1 upstreams: the
//! client's request body on its way upstream, bounded by the client body
//! timeout and the maximum request body size, and the upstream's response
//! body on its way to the client, bounded by the response idle timeout and
//! the request timeout and compressed with gzip when the policy says so.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use super::body::Upload;
use super::gzip::GzipStream;
use super::metrics::{Outcome, ProxyFailure};
use super::relay::Exchange;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bounds the quiet time of one side of a stream: how long a body's
/// source may keep it waiting, counted from the first poll that found
/// nothing since the last frame (so time the reader spends not asking,
/// under flow control, is not counted against the source).
struct IdleTimer {
    limit: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl IdleTimer {
    fn new(limit: Option<Duration>) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            waiting: false,
        }
    }

    /// The source had a frame (or ended).
    fn progressed(&mut self) {
        self.waiting = false;
    }

    /// The source has nothing now: whether it has had nothing for the
    /// whole limit (the task is woken when it will have).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let at = Instant::now() + limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if !self.waiting {
            self.waiting = true;
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Why a client's request body broke off, once it did; read by the stream
/// whose upstream exchange then failed, to give the HTTP/1.1 path's
/// outcome rather than blaming the upstream.
#[derive(Default)]
pub(crate) struct BodyBreak(OnceLock<Upload>);

impl BodyBreak {
    /// How the body broke off, if it did.
    pub(crate) fn get(&self) -> Option<Upload> {
        self.0.get().copied()
    }

    fn set(&self, why: Upload) {
        let _ = self.0.set(why);
    }
}

/// A client's request body on its way upstream: a client that sends
/// nothing of it for the client body timeout, resets it, or sends more
/// than the maximum request body size breaks it off (said in the shared
/// [`BodyBreak`]).
pub(crate) struct ClientBody {
    inner: Incoming,
    idle: IdleTimer,
    limit: Option<u64>,
    seen: u64,
    broke: Arc<BodyBreak>,
}

impl ClientBody {
    pub(crate) fn new(
        inner: Incoming,
        idle: Option<Duration>,
        limit: Option<u64>,
        broke: Arc<BodyBreak>,
    ) -> Self {
        ClientBody {
            inner,
            idle: IdleTimer::new(idle),
            limit,
            seen: 0,
            broke,
        }
    }

    fn fail(&self, why: Upload) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::debug!(?why, "client request body broke off");
        self.broke.set(why);
        Poll::Ready(Some(Err(format!("client request body: {why:?}").into())))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.expired(cx) {
                    return this.fail(Upload::Stalled);
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.limit.is_some_and(|limit| this.seen > limit) {
                        return this.fail(Upload::TooLarge);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(Upload::ClientGone),
            Poll::Ready(None) => {
                this.idle.progressed();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body to an HTTP/2 client: the proxy's own text, or the
/// upstream's body streamed with the exchange it ends.
pub(crate) enum RelayBody {
    Local(Full<Bytes>),
    Upstream(Box<Streamed>),
}

/// The upstream's response body as it streams to the client.
pub(crate) struct Streamed {
    inner: Incoming,
    /// Recorded (metrics, in-flight count, access log) when the body is
    /// dropped: at its end, or when the client reset the stream.
    exchange: Exchange,
    /// Set at the body's end when its connection may be pooled.
    reusable: Option<Arc<AtomicBool>>,
    /// The task driving the upstream connection, aborted (closing the
    /// connection) when the body is cut off.
    upstream_task: AbortHandle,
    /// The end of the request timeout, if one is set.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The response idle timeout.
    idle: IdleTimer,
    /// How the client's request body broke off, if it did.
    client_body: Arc<BodyBreak>,
    /// The gzip stream, when the body is compressed; `None` inside once
    /// it ended.
    gzip: Option<Option<GzipStream>>,
}

impl RelayBody {
    /// The upstream's body `inner` relayed for `exchange`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upstream(
        inner: Incoming,
        exchange: Exchange,
        reusable: Option<Arc<AtomicBool>>,
        upstream_task: AbortHandle,
        deadline: Option<Instant>,
        idle: Option<Duration>,
        client_body: Arc<BodyBreak>,
        gzip: Option<u32>,
    ) -> Self {
        let gzip = gzip.map(|level| Some(GzipStream::new(level, inner.size_hint().exact())));
        RelayBody::Upstream(Box::new(Streamed {
            inner,
            exchange,
            reusable,
            upstream_task,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            idle: IdleTimer::new(idle),
            client_body,
            gzip,
        }))
    }
}

impl Streamed {
    /// Cuts the body off: the exchange ends as `outcome` (not recorded
    /// when `None`), the upstream connection is closed, and the client's
    /// stream is reset.
    fn cut_off(
        &mut self,
        outcome: Option<Outcome>,
        why: &'static str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.exchange.outcome = outcome;
        self.reusable = None;
        self.upstream_task.abort();
        Poll::Ready(Some(Err(why.into())))
    }

    /// Marks the upstream connection as free for another exchange.
    fn ended(&mut self) {
        if let Some(reusable) = self.reusable.take() {
            reusable.store(true, Ordering::Release);
        }
    }

    /// Sends `data` on to the client, counted.
    fn emit(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.exchange.bytes += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(slot = %self.exchange.slot, "request timeout while the response streamed");
            return self.cut_off(
                Some(Outcome::Failed(ProxyFailure::Timeout)),
                "request timeout",
            );
        }
        loop {
            if let Some(None) = &self.gzip {
                return Poll::Ready(None);
            }
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            if !polled.is_pending() {
                self.idle.progressed();
            }
            match polled {
                Poll::Pending => {
                    if self.idle.expired(cx) {
                        tracing::debug!(slot = %self.exchange.slot, "upstream sent nothing of the response body in time");
                        return self.cut_off(
                            Some(Outcome::Failed(ProxyFailure::UpstreamFailed)),
                            "upstream response idle",
                        );
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // hyper asks no further frame of a body that says it
                    // ended.
                    let last = self.inner.is_end_stream();
                    if last {
                        self.ended();
                    }
                    let Some(Some(gzip)) = &mut self.gzip else {
                        return match frame.into_data() {
                            Ok(data) => self.emit(data),
                            Err(trailers) => Poll::Ready(Some(Ok(trailers))),
                        };
                    };
                    // Trailers are not relayed after a compressed body, as
                    // on the HTTP/1.1 path.
                    if let Some(data) = frame.data_ref() {
                        gzip.write(data);
                    }
                    if last {
                        gzip.finish();
                    }
                    let out = Bytes::from(std::mem::take(gzip.output()));
                    if last {
                        self.gzip = Some(None);
                    }
                    if !out.is_empty() {
                        return self.emit(out);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    // A client whose request body broke off broke the
                    // exchange (not counted, as on the HTTP/1.1 path).
                    if let Some(why) = self.client_body.get() {
                        tracing::debug!(slot = %self.exchange.slot, ?why, "client request body broke off");
                        return self.cut_off(None, "client request body broke off");
                    }
                    tracing::debug!(slot = %self.exchange.slot, %error, "upstream response body broke off");
                    return self.cut_off(
                        Some(Outcome::Failed(ProxyFailure::UpstreamFailed)),
                        "upstream response body broke off",
                    );
                }
                Poll::Ready(None) => {
                    self.ended();
                    let Some(Some(gzip)) = &mut self.gzip else {
                        return Poll::Ready(None);
                    };
                    gzip.finish();
                    let out = Bytes::from(std::mem::take(gzip.output()));
                    self.gzip = Some(None);
                    return if out.is_empty() {
                        Poll::Ready(None)
                    } else {
                        self.emit(out)
                    };
                }
            }
        }
    }
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
            RelayBody::Upstream(streamed) => streamed.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Local(full) => full.is_end_stream(),
            RelayBody::Upstream(streamed) => match &streamed.gzip {
                None => streamed.inner.is_end_stream(),
                Some(gzip) => gzip.is_none(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Local(full) => full.size_hint(),
            // A compressed body's length is not known before its end.
            RelayBody::Upstream(streamed) if streamed.gzip.is_some() => SizeHint::default(),
            RelayBody::Upstream(streamed) => streamed.inner.size_hint(),
        }
    }
}
