//! Cutting a put's body into parts and uploading them concurrently, with at
//! most `concurrency + 1` parts in memory (the ones in flight and the one
//! being filled). The S3 and Azure targets upload parts concurrently; all
//! three cloud targets cut their bodies with [`PartCutter`].

#[cfg(any(feature = "s3", feature = "azure"))]
use std::future::Future;

use atlas_core::Result;
use atlas_core::backup::{ByteStream, Checksum, Crc32cHasher};
use bytes::{Bytes, BytesMut};
#[cfg(any(feature = "s3", feature = "azure"))]
use futures::stream::FuturesUnordered;
use futures::stream::StreamExt;

/// How a put's body goes out, decided by [`PartCutter::start`].
#[derive(Debug)]
pub(crate) enum Upload {
    /// The whole body, shorter than a part (possibly empty): one request.
    Single(Bytes),
    /// The first part of a longer body: a multipart (resumable, block)
    /// upload, the rest still to be read from the cutter.
    Parts(Bytes),
}

/// Cuts a body into parts of `part_size` bytes (the last may be shorter)
/// and hashes the whole body on the way.
pub(crate) struct PartCutter {
    body: ByteStream,
    part_size: usize,
    buf: BytesMut,
    hasher: Crc32cHasher,
    done: bool,
}

impl PartCutter {
    pub(crate) fn new(body: ByteStream, part_size: usize) -> Self {
        PartCutter {
            body,
            part_size,
            buf: BytesMut::new(),
            hasher: Crc32cHasher::new(),
            done: false,
        }
    }

    /// The next part, or `None` at the end of the body. A part shorter than
    /// `part_size` is the last one.
    ///
    /// Cancellation-safe: a chunk taken from the body is stored before the
    /// next await, so dropping this future loses nothing.
    pub(crate) async fn next_part(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.buf.len() >= self.part_size {
                return Ok(Some(self.buf.split_to(self.part_size).freeze()));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.buf.split().freeze()));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.hasher.update(&chunk);
                    if self.buf.capacity() == 0 {
                        self.buf.reserve(self.part_size);
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.buf = BytesMut::new();
                    return Err(e);
                }
                None => self.done = true,
            }
        }
    }

    /// Reads the first part and decides how the body goes out: in one
    /// request when it is shorter than a part (an empty body included), as
    /// parts otherwise.
    pub(crate) async fn start(&mut self) -> Result<Upload> {
        match self.next_part().await? {
            Some(first) if !(self.is_finished() && first.len() < self.part_size) => {
                Ok(Upload::Parts(first))
            }
            first => Ok(Upload::Single(first.unwrap_or_default())),
        }
    }

    /// Whether the body has ended (and every byte was handed out as a part).
    pub(crate) fn is_finished(&self) -> bool {
        self.done && self.buf.is_empty()
    }

    /// Bytes read from the body so far.
    pub(crate) fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// CRC32C of the body read so far (of the whole body once finished).
    pub(crate) fn checksum(&self) -> Checksum {
        self.hasher.checksum()
    }
}

#[cfg(any(feature = "s3", feature = "azure"))]
/// Uploads `first` and the rest of `cutter`'s parts with `upload(number,
/// part)` (numbers from 1), at most `concurrency` at a time, reading the
/// body while parts travel. Returns the results in part order; the first
/// error stops everything (parts in flight are dropped).
pub(crate) async fn upload_parts<R, F, Fut>(
    cutter: &mut PartCutter,
    first: Bytes,
    concurrency: usize,
    mut upload: F,
) -> Result<Vec<R>>
where
    F: FnMut(u32, Bytes) -> Fut,
    Fut: Future<Output = Result<R>>,
{
    let concurrency = concurrency.max(1);
    let mut inflight = FuturesUnordered::new();
    let mut results: Vec<(u32, R)> = Vec::new();
    let mut number = 1u32;
    inflight.push(numbered(number, upload(number, first)));
    let mut body_done = false;
    loop {
        let can_read = !body_done && inflight.len() < concurrency;
        if !can_read && inflight.is_empty() {
            break;
        }
        tokio::select! {
            part = cutter.next_part(), if can_read => match part? {
                Some(part) => {
                    number += 1;
                    inflight.push(numbered(number, upload(number, part)));
                }
                None => body_done = true,
            },
            Some((n, r)) = inflight.next(), if !inflight.is_empty() => results.push((n, r?)),
        }
    }
    results.sort_by_key(|(n, _)| *n);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

#[cfg(any(feature = "s3", feature = "azure"))]
async fn numbered<R>(n: u32, fut: impl Future<Output = Result<R>>) -> (u32, Result<R>) {
    (n, fut.await)
}

#[cfg(test)]
mod tests {
    #[cfg(any(feature = "s3", feature = "azure"))]
    use std::sync::Arc;
    #[cfg(any(feature = "s3", feature = "azure"))]
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[cfg(any(feature = "s3", feature = "azure"))]
    use std::time::Duration;

    use atlas_core::Error;
    use futures::stream;

    use super::*;

    fn body(sizes: &[usize]) -> ByteStream {
        let mut n = 0u8;
        let items: Vec<Result<Bytes>> = sizes
            .iter()
            .map(|s| {
                n = n.wrapping_add(1);
                Ok(Bytes::from(vec![n; *s]))
            })
            .collect();
        stream::iter(items).boxed()
    }

    #[tokio::test]
    async fn parts_have_the_part_size_and_the_last_the_rest() {
        let mut c = PartCutter::new(body(&[3, 10, 0, 4]), 5);
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(p) = c.next_part().await.unwrap() {
            sizes.push(p.len());
            all.extend_from_slice(&p);
        }
        assert_eq!(sizes, [5, 5, 5, 2]);
        assert!(c.is_finished());
        assert_eq!(c.len(), 17);
        assert_eq!(c.checksum(), Checksum::crc32c_of(&all));
        let mut empty = PartCutter::new(body(&[]), 5);
        assert!(empty.next_part().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn start_sends_short_bodies_whole_and_longer_ones_as_parts() {
        let mut c = PartCutter::new(body(&[3, 1]), 5);
        assert!(matches!(c.start().await.unwrap(), Upload::Single(b) if b.len() == 4));
        let mut c = PartCutter::new(body(&[]), 5);
        assert!(matches!(c.start().await.unwrap(), Upload::Single(b) if b.is_empty()));
        // Exactly one part long is a multipart upload: its last part is
        // empty, as the size is only known at the end.
        let mut c = PartCutter::new(body(&[5]), 5);
        assert!(matches!(c.start().await.unwrap(), Upload::Parts(b) if b.len() == 5));
        let mut c = PartCutter::new(body(&[4, 4]), 5);
        assert!(matches!(c.start().await.unwrap(), Upload::Parts(b) if b.len() == 5));
        assert_eq!(c.next_part().await.unwrap().map(|p| p.len()), Some(3));
    }

    #[tokio::test]
    async fn a_body_error_comes_out_of_next_part() {
        let items: Vec<Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(Error::transient("test", "cut")),
        ];
        let mut c = PartCutter::new(stream::iter(items).boxed(), 10);
        assert!(c.next_part().await.unwrap_err().is_transient());
    }

    #[cfg(any(feature = "s3", feature = "azure"))]
    #[tokio::test(start_paused = true)]
    async fn uploads_run_concurrently_up_to_the_limit_and_keep_order() {
        let mut c = PartCutter::new(body(&[4; 10]), 4);
        let first = c.next_part().await.unwrap().unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let results = upload_parts(&mut c, first, 3, |n, part| {
            let running = running.clone();
            let peak = peak.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Later parts finish first, to test the ordering.
                tokio::time::sleep(Duration::from_millis(100 - u64::from(n) * 5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok((n, part[0]))
            }
        })
        .await
        .unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let numbers: Vec<u32> = results.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
        assert_eq!(results[4].1, 5, "part 5 holds chunk 5");
    }

    #[cfg(any(feature = "s3", feature = "azure"))]
    #[tokio::test]
    async fn the_first_failed_part_fails_the_upload() {
        let mut c = PartCutter::new(body(&[4; 6]), 4);
        let first = c.next_part().await.unwrap().unwrap();
        let err = upload_parts(&mut c, first, 2, |n, _| async move {
            if n == 3 {
                Err(Error::backend("test", "part 3 refused"))
            } else {
                Ok(n)
            }
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("part 3"), "{err}");
    }
}
