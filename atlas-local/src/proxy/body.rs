//! Request bodies: relaying one to the upstream, and reading and
//! discarding what is left of one that the upstream no longer takes.
//!
//! An upstream may answer before it has read the request body (a 404, a
//! 401, a 413 from a framework that never looks at the body) and then
//! close its connection. The client is still sending that body on a
//! connection it means to keep: the proxy relays the answer, then reads the
//! rest of the body and throws it away, so the client's next request is
//! found where it starts. The progress through the body lives outside the
//! upload ([`BodyProgress`]) so that the discarding can pick up exactly
//! where an abandoned upload stopped.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::h1::{ChunkScanner, Framing};

/// Read buffers grow by this much when they run low.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// The most of a request body that the proxy reads and discards after the
/// upstream answered without it, to keep the client's connection. A larger
/// remainder (or an unknown one: a chunked body not yet ended) closes the
/// connection after the response instead, announced in it.
pub(crate) const DISCARD_LIMIT: u64 = 1024 * 1024;

/// Reads from `r` into the spare capacity of `buf`.
pub(crate) async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    r.read_buf(buf).await
}

/// The most read in one call while a long body of known length is still
/// coming: fewer, larger reads and writes, each of which wakes the
/// receiver once (a third less proxy CPU for 64 KiB answers than reads
/// of [`READ_CHUNK`]).
pub(crate) const BODY_READ: usize = 64 * 1024;

/// Reads a body of which `left` bytes are still to come (`u64::MAX` when
/// unknown) as [`read_some`] does, with room for up to [`BODY_READ`] of
/// them in one read.
pub(crate) async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    left: u64,
) -> io::Result<usize> {
    if left > READ_CHUNK as u64 && left != u64::MAX {
        let want = left.min(BODY_READ as u64) as usize;
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
    }
    read_some(r, buf).await
}

/// Whether `buf` grew beyond what requests and heads need ([`read_body`]
/// for a long body).
pub(crate) fn grown(buf: &BytesMut) -> bool {
    buf.capacity() > 2 * READ_CHUNK
}

/// Lets go of a [`grown`] buffer once it is empty, so that an idle
/// keep-alive connection does not hold it.
pub(crate) fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && grown(buf) {
        *buf = BytesMut::new();
    }
}

/// How a request body upload ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upload {
    /// The client closed or broke the connection part-way.
    ClientGone,
    /// The client's chunked coding is invalid.
    BadBody,
    /// The client sent nothing for the client body timeout.
    Stalled,
    /// The upstream stopped taking the body; the rest was read from the
    /// client and discarded.
    Upstream,
    /// The body passed the router's maximum request body size.
    TooLarge,
}

/// How far the client's request body has been read, by its framing.
pub(crate) struct BodyProgress<'a> {
    framing: Framing,
    /// Bytes still to come (`Length` framing).
    left: u64,
    scanner: ChunkScanner,
    /// Body bytes at the front of the client buffer already counted, not
    /// yet consumed (being written upstream).
    counted: usize,
    /// Body data bytes counted so far, and the most allowed.
    total: u64,
    limit: Option<u64>,
    /// What [`unread`](Self::unread) says, shared with the response head
    /// written while the upload runs.
    unread: &'a AtomicU64,
}

impl<'a> BodyProgress<'a> {
    /// The progress through a body of `framing`, published to `unread`,
    /// of at most `limit` data bytes.
    pub(crate) fn new(framing: Framing, unread: &'a AtomicU64, limit: Option<u64>) -> Self {
        let progress = BodyProgress {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            scanner: ChunkScanner::default(),
            counted: 0,
            total: 0,
            limit,
            unread,
        };
        progress.publish();
        progress
    }

    /// Whether the whole body has been read from the client.
    pub(crate) fn complete(&self) -> bool {
        self.counted == 0
            && match self.framing {
                Framing::Length(_) => self.left == 0,
                Framing::Chunked => self.scanner.done(),
                Framing::Empty | Framing::Close => true,
            }
    }

    /// The body bytes the client has yet to send, `u64::MAX` when unknown
    /// (a chunked body not yet ended); readable while the upload runs.
    pub(crate) fn unread(&self) -> u64 {
        self.unread.load(Ordering::Relaxed)
    }

    fn publish(&self) {
        let unread = match self.framing {
            Framing::Length(_) => self.left,
            Framing::Chunked if !self.scanner.done() => u64::MAX,
            _ => 0,
        };
        self.unread.store(unread, Ordering::Relaxed);
    }

    /// Counts the body bytes at the front of `buf` (none while earlier
    /// counted ones are not consumed yet).
    fn count(&mut self, buf: &[u8]) -> Result<(), Upload> {
        if self.counted > 0 || buf.is_empty() {
            return Ok(());
        }
        let mut data = 0u64;
        self.counted = match self.framing {
            Framing::Length(_) => {
                let n = self.left.min(buf.len() as u64);
                self.left -= n;
                data = n;
                n as usize
            }
            Framing::Chunked if !self.scanner.done() => self
                .scanner
                .scan(buf, |range| data += range.len() as u64)
                .map_err(|_| Upload::BadBody)?,
            _ => 0,
        };
        self.total += data;
        self.publish();
        if self.limit.is_some_and(|limit| self.total > limit) {
            // Nothing of these bytes goes upstream.
            self.counted = 0;
            return Err(Upload::TooLarge);
        }
        Ok(())
    }

    /// Moves a body of known length that is all in `buf` and at most `max`
    /// bytes to `out`, to go upstream with the head. (A chunked body is
    /// left to the upload, which answers a broken coding.)
    pub(crate) fn coalesce(&mut self, buf: &mut BytesMut, max: usize, out: &mut Vec<u8>) {
        if !matches!(self.framing, Framing::Length(n) if n <= max as u64 && n <= buf.len() as u64)
            || self.count(buf).is_err()
        {
            return;
        }
        if self.counted > 0 {
            out.extend_from_slice(&buf[..self.counted]);
            buf.advance(self.counted);
            self.counted = 0;
        }
    }

    /// Relays the body from the client to `upstream` as it came (a
    /// length, or the chunked coding passed through), or, with no
    /// upstream, reads and discards it. An upstream that stops taking it
    /// turns the rest into discarding ([`Upload::Upstream`] at the end).
    /// Bytes after the body (a pipelined request) stay in `buf`. `idle`
    /// bounds the wait for each read from the client.
    pub(crate) async fn relay<R, W>(
        &mut self,
        client: &mut R,
        mut upstream: Option<&mut W>,
        buf: &mut BytesMut,
        idle: Option<Duration>,
    ) -> Result<(), Upload>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut discarded = upstream.is_none();
        loop {
            self.count(buf)?;
            if self.counted > 0 {
                if let Some(w) = upstream.as_mut()
                    && w.write_all(&buf[..self.counted]).await.is_err()
                {
                    tracing::debug!(
                        unread = self.unread(),
                        "upstream stopped taking the request body; discarding the rest"
                    );
                    upstream = None;
                    discarded = true;
                }
                buf.advance(self.counted);
                self.counted = 0;
            }
            if self.complete() {
                return if discarded {
                    Err(Upload::Upstream)
                } else {
                    Ok(())
                };
            }
            let left = self.unread();
            let read = match idle {
                Some(idle) => tokio::time::timeout(idle, read_body(client, buf, left))
                    .await
                    .map_err(|_| Upload::Stalled)?,
                None => read_body(client, buf, left).await,
            };
            match read {
                Ok(0) | Err(_) => return Err(Upload::ClientGone),
                Ok(_) => {}
            }
        }
    }

    /// Reads and discards the rest of the body from the client.
    pub(crate) async fn discard<R: AsyncRead + Unpin>(
        &mut self,
        client: &mut R,
        buf: &mut BytesMut,
        idle: Option<Duration>,
    ) -> Result<(), Upload> {
        self.relay(client, None::<&mut tokio::io::Sink>, buf, idle)
            .await
            .or_else(|e| {
                if e == Upload::Upstream {
                    Ok(())
                } else {
                    Err(e)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_abandoned_upload_is_discarded_from_where_it_stopped() {
        let unread = AtomicU64::new(0);
        // 10 bytes of body, 7 of them read with the head; the upload had
        // counted them and was dropped while writing them upstream.
        let mut body = BodyProgress::new(Framing::Length(10), &unread, None);
        assert_eq!(body.unread(), 10);
        let mut buf = BytesMut::from(&b"0123456"[..]);
        body.count(&buf).unwrap();
        assert_eq!(body.unread(), 3);
        assert!(!body.complete());
        // The rest of the body and the next request are on the wire.
        let mut client: &[u8] = b"789GET /next";
        body.discard(&mut client, &mut buf, None).await.unwrap();
        assert!(body.complete());
        assert_eq!(body.unread(), 0);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[tokio::test]
    async fn chunked_bodies_are_discarded_to_their_end_and_the_next_request_kept() {
        let unread = AtomicU64::new(0);
        let mut body = BodyProgress::new(Framing::Chunked, &unread, None);
        assert_eq!(body.unread(), u64::MAX);
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n0\r\n\r\nGET /next"[..]);
        let mut client: &[u8] = b"";
        body.discard(&mut client, &mut buf, None).await.unwrap();
        assert_eq!(&buf[..], b"GET /next");
        assert_eq!(body.unread(), 0);
    }

    #[tokio::test]
    async fn an_upstream_that_stops_reading_turns_the_rest_into_discarding() {
        struct Broken;
        impl AsyncWrite for Broken {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &[u8],
            ) -> std::task::Poll<io::Result<usize>> {
                std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let unread = AtomicU64::new(0);
        let mut body = BodyProgress::new(Framing::Length(8), &unread, None);
        let mut buf = BytesMut::from(&b"abcd"[..]);
        let mut client: &[u8] = b"efghNEXT";
        let end = body
            .relay(&mut client, Some(&mut Broken), &mut buf, None)
            .await;
        assert_eq!(end, Err(Upload::Upstream));
        assert!(body.complete());
        // Only the body was taken from the client's bytes.
        assert_eq!(&buf[..], b"NEXT");
        // A broken chunked coding is the client's fault.
        let mut body = BodyProgress::new(Framing::Chunked, &unread, None);
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        let end = body.discard(&mut client, &mut buf, None).await;
        assert_eq!(end, Err(Upload::BadBody));
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_stops_before_its_excess_goes_upstream() {
        let unread = AtomicU64::new(0);
        let mut body = BodyProgress::new(Framing::Chunked, &unread, Some(6));
        let mut upstream = Vec::new();
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n"[..]);
        let mut client: &[u8] = b"5\r\nworld\r\n0\r\n\r\n";
        let end = body
            .relay(&mut client, Some(&mut upstream), &mut buf, None)
            .await;
        assert_eq!(end, Err(Upload::TooLarge));
        // Only the first chunk, within the limit, went upstream.
        assert_eq!(upstream, b"5\r\nhello\r\n");
    }

    #[tokio::test]
    async fn long_bodies_of_known_length_are_read_in_large_pieces() {
        let data = vec![7u8; 300_000];
        // Known and long: up to BODY_READ in one read.
        let mut src: &[u8] = &data;
        let mut buf = BytesMut::new();
        let n = read_body(&mut src, &mut buf, data.len() as u64)
            .await
            .unwrap();
        assert!(n >= BODY_READ, "{n}");
        // Not more room than what is still to come.
        let mut buf = BytesMut::new();
        let n = read_body(&mut src, &mut buf, 20_000).await.unwrap();
        assert!((20_000..BODY_READ).contains(&n), "{n}");
        // Unknown (chunked) or short: the usual piece.
        for left in [u64::MAX, 100] {
            let mut buf = BytesMut::new();
            let n = read_body(&mut src, &mut buf, left).await.unwrap();
            assert!(n <= 2 * READ_CHUNK, "{left}: {n}");
        }
        // A grown buffer is let go of once empty, not while it holds bytes.
        let mut buf = BytesMut::with_capacity(BODY_READ);
        buf.extend_from_slice(b"next request");
        shrink(&mut buf);
        assert_eq!(&buf[..], b"next request");
        buf.clear();
        shrink(&mut buf);
        assert_eq!(buf.capacity(), 0);
        let mut small = BytesMut::with_capacity(READ_CHUNK);
        shrink(&mut small);
        assert_eq!(small.capacity(), READ_CHUNK);
    }
}
