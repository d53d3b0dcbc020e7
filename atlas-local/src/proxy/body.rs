//! The response body the proxy sends: an upstream's body relayed frame by
//! frame, or a short message of the proxy's own.
//!
//! A relayed body carries the [`Exchange`]: the endpoint's in-flight count,
//! the pooled connection and what the metrics need. The exchange ends when
//! the body ends (the connection goes back to the pool), breaks off (the
//! connection is closed and the request counts as a proxy error), or is
//! dropped early because the client went away (the connection is closed).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use atlas_core::Slot;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use super::Shared;
use super::metrics::{Outcome, ProxyFailure};
use super::upstream::{InFlight, UpstreamBody};

/// One relayed request, from the choice of endpoint to the end of the
/// response body.
pub(crate) struct Exchange {
    pub(crate) shared: Arc<Shared>,
    pub(crate) slot: Slot,
    pub(crate) start: Instant,
    pub(crate) outcome: Outcome,
    pub(crate) sender: Option<SendRequest<UpstreamBody>>,
    /// Whether the connection may serve another request.
    pub(crate) reusable: bool,
    // Declared last: dropped after the metrics are recorded, so a drain
    // that ends sees this request counted.
    pub(crate) in_flight: InFlight,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && self.reusable
        {
            self.in_flight.upstream().release(sender, &self.shared.pool);
        }
        let latency = matches!(self.outcome, Outcome::Status(_)).then(|| self.start.elapsed());
        self.shared.metrics.record(self.slot, self.outcome, latency);
        tracing::trace!(
            slot = %self.slot,
            replica = %self.in_flight.upstream().endpoint.replica,
            outcome = ?self.outcome,
            ?latency,
            "request finished"
        );
    }
}

/// The body of every response the proxy sends.
pub(crate) struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Local(Option<Bytes>),
    Relayed {
        body: Incoming,
        exchange: Option<Exchange>,
    },
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Local(_) => f.write_str("ProxyBody::Local"),
            Kind::Relayed { .. } => f.write_str("ProxyBody::Relayed"),
        }
    }
}

impl ProxyBody {
    /// A body of the proxy's own.
    pub(crate) fn local(text: &'static str) -> Self {
        ProxyBody {
            kind: Kind::Local(Some(Bytes::from_static(text.as_bytes()))),
        }
    }

    /// An owned body of the proxy's own (the admin endpoint).
    pub(crate) fn owned(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Local(Some(bytes)),
        }
    }

    /// Relays `body`; `exchange` ends with it.
    pub(crate) fn relayed(body: Incoming, mut exchange: Exchange) -> Self {
        if body.is_end_stream() {
            // No body (HEAD, 204, 304, `content-length: 0`): the exchange
            // is complete now, whether or not the server polls us.
            exchange.reusable = true;
            drop(exchange);
            return ProxyBody {
                kind: Kind::Relayed {
                    body,
                    exchange: None,
                },
            };
        }
        ProxyBody {
            kind: Kind::Relayed {
                body,
                exchange: Some(exchange),
            },
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Kind::Relayed { body, exchange } = &mut self.kind
            && let Some(exchange) = exchange.as_mut()
        {
            // The server stops polling once the declared length was sent,
            // so a body dropped at its end completed normally.
            exchange.reusable = body.is_end_stream();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Relayed { body, exchange } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(mut done) = exchange.take() {
                            done.reusable = true;
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(mut broken) = exchange.take() {
                            broken.reusable = false;
                            broken.outcome = Outcome::Failed(ProxyFailure::UpstreamFailed);
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => {
                        if body.is_end_stream()
                            && let Some(mut done) = exchange.take()
                        {
                            done.reusable = true;
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(bytes) => bytes.is_none(),
            Kind::Relayed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
            Kind::Relayed { body, .. } => body.size_hint(),
        }
    }
}
