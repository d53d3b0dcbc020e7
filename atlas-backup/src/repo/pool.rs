//! A bounded pool of reusable byte buffers for the backup pipeline.
//!
//! The pipeline hands every chunk from a reading thread to an encoding
//! thread, and every sealed blob from the encoding thread to a target's
//! writer. With glibc's malloc each thread allocates from its own arena (up
//! to eight per core) and a buffer freed on another thread goes back to the
//! arena it came from, where it mostly stays: allocating on one set of
//! threads and freeing on another left a 512 MiB backup with 2.7× the peak
//! resident memory of the same run with a single arena. Recycling the
//! buffers means that, once the pipeline is full, it allocates nothing
//! large at all, so which arena a buffer came from no longer matters and
//! the peak is that of the buffers actually in flight. A library cannot set
//! the arena limit for its embedder (that needs `mallopt` or an environment
//! variable read at process start), so the fix has to be here.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use bytes::Bytes;

/// Reusable buffers: [`take`](Self::take) hands out an empty buffer,
/// dropping the [`PooledBuf`] clears it and gives it back. At most
/// `max_idle` buffers wait in the pool, and none larger than
/// `max_capacity`; others are freed. Taking never waits: when the pool is
/// empty a new buffer is allocated, so a consumer that keeps buffers (a
/// target holding a pack's pieces) cannot stall the pipeline.
///
/// Clones share the same buffers. Buffers hold a weak reference: once
/// every clone of the pool is dropped (the backup ended), buffers still
/// held elsewhere are freed, not kept.
///
/// A pool made [`with_budget`](Self::with_budget) also bounds the bytes out
/// of it: [`take`](Self::take) waits (blocking its thread) while the
/// capacity of the buffers out of the pool would exceed the budget, until
/// enough of them come back. Memory is then bounded by bytes, whatever the
/// size of the pieces or the length of the queues they wait in. One buffer
/// is always granted, however large, so a budget never deadlocks a single
/// consumer.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    idle: Mutex<Vec<Vec<u8>>>,
    max_idle: usize,
    max_capacity: usize,
    /// The most bytes of capacity out of the pool at once (`usize::MAX`:
    /// no bound).
    budget: usize,
    /// Bytes of capacity out of the pool now (as taken).
    out_bytes: Mutex<usize>,
    returned: Condvar,
    peak_bytes: AtomicUsize,
    outstanding: AtomicUsize,
    high_water: AtomicUsize,
    allocated: AtomicU64,
    reused: AtomicU64,
}

/// What a pool did, for the end-of-backup debug event and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolStats {
    /// Buffers allocated because no idle one was there.
    pub(crate) allocated: u64,
    /// Takes served by an idle buffer.
    pub(crate) reused: u64,
    /// The most buffers out of the pool at once.
    pub(crate) high_water: usize,
    /// Buffers waiting in the pool now.
    pub(crate) idle: usize,
    /// Bytes of capacity waiting in the pool now.
    pub(crate) idle_bytes: usize,
    /// The most bytes of capacity out of the pool at once (as taken).
    pub(crate) peak_bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_idle` buffers of at most `max_capacity`
    /// bytes each.
    pub(crate) fn new(max_idle: usize, max_capacity: usize) -> Self {
        Self::with_budget(max_idle, max_capacity, usize::MAX)
    }

    /// A pool as [`new`](Self::new) that also keeps the capacity of the
    /// buffers out of it at `budget` bytes or below (see the type's docs).
    pub(crate) fn with_budget(max_idle: usize, max_capacity: usize, budget: usize) -> Self {
        BufferPool {
            shared: Arc::new(Shared {
                idle: Mutex::new(Vec::with_capacity(max_idle)),
                max_idle,
                max_capacity,
                budget,
                out_bytes: Mutex::new(0),
                returned: Condvar::new(),
                peak_bytes: AtomicUsize::new(0),
                outstanding: AtomicUsize::new(0),
                high_water: AtomicUsize::new(0),
                allocated: AtomicU64::new(0),
                reused: AtomicU64::new(0),
            }),
        }
    }

    /// An empty buffer with room for at least `capacity` bytes: the
    /// smallest idle one that fits, else the largest idle one grown to
    /// fit (so the pool's buffers converge on the sizes in use instead of
    /// multiplying), else a new one. With a budget, waits until `capacity`
    /// more bytes fit in it (or nothing else is out): call it only where
    /// blocking the thread is allowed.
    pub(crate) fn take(&self, capacity: usize) -> PooledBuf {
        self.take_inner(capacity, true)
    }

    /// As [`take`](Self::take), but never waits: the buffer is counted
    /// against the budget even when it exceeds it. For small buffers taken
    /// on an async task (tree blobs, coalesced pieces).
    pub(crate) fn take_now(&self, capacity: usize) -> PooledBuf {
        self.take_inner(capacity, false)
    }

    fn take_inner(&self, capacity: usize, wait: bool) -> PooledBuf {
        let s = &self.shared;
        {
            let mut out = s.out_bytes.lock().unwrap_or_else(|e| e.into_inner());
            while wait && *out > 0 && out.saturating_add(capacity) > s.budget {
                out = s.returned.wait(out).unwrap_or_else(|e| e.into_inner());
            }
            *out += capacity;
            s.peak_bytes.fetch_max(*out, Ordering::Relaxed);
        }
        let found = {
            let mut idle = s.idle.lock().unwrap_or_else(|e| e.into_inner());
            let fit = idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            let largest = || {
                idle.iter()
                    .enumerate()
                    .max_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i)
            };
            fit.or_else(largest).map(|i| idle.swap_remove(i))
        };
        let buf = match found {
            Some(mut b) => {
                s.reused.fetch_add(1, Ordering::Relaxed);
                // Exact: doubling could push it past `max_capacity`.
                b.reserve_exact(capacity);
                b
            }
            None => {
                s.allocated.fetch_add(1, Ordering::Relaxed);
                Vec::with_capacity(capacity)
            }
        };
        let out = s.outstanding.fetch_add(1, Ordering::Relaxed) + 1;
        s.high_water.fetch_max(out, Ordering::Relaxed);
        PooledBuf {
            buf,
            charged: capacity,
            home: Arc::downgrade(s),
        }
    }

    /// What the pool did so far.
    pub(crate) fn stats(&self) -> PoolStats {
        let s = &self.shared;
        let idle = s.idle.lock().unwrap_or_else(|e| e.into_inner());
        PoolStats {
            allocated: s.allocated.load(Ordering::Relaxed),
            reused: s.reused.load(Ordering::Relaxed),
            high_water: s.high_water.load(Ordering::Relaxed),
            idle: idle.len(),
            idle_bytes: idle.iter().map(Vec::capacity).sum(),
            peak_bytes: s.peak_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A buffer from a [`BufferPool`]: a `Vec<u8>` that goes back to its pool,
/// cleared, when dropped (also when dropped as the owner of a [`Bytes`]
/// made by [`into_bytes`](Self::into_bytes)).
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    /// The bytes counted against the pool's budget for this buffer.
    charged: usize,
    home: Weak<Shared>,
}

impl PooledBuf {
    /// The buffer as [`Bytes`], without copying; it returns to the pool
    /// when the last clone of the `Bytes` is dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let Some(s) = self.home.upgrade() else {
            return;
        };
        s.outstanding.fetch_sub(1, Ordering::Relaxed);
        {
            let mut out = s.out_bytes.lock().unwrap_or_else(|e| e.into_inner());
            *out = out.saturating_sub(self.charged);
        }
        if s.budget != usize::MAX {
            s.returned.notify_all();
        }
        let cap = self.buf.capacity();
        if cap == 0 || cap > s.max_capacity {
            return;
        }
        let mut idle = s.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < s.max_idle {
            // Length zero: the next user sees none of this one's bytes.
            self.buf.clear();
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Idle zstd contexts waiting for their next use: a context is taken for
/// one blob and put back, so there are never more than blobs (de)compressed
/// at once. A context per thread (a thread-local) left one on every
/// blocking thread tokio had started — dozens in a large backup or restore,
/// up to a MiB each, each in its thread's malloc arena.
struct Idle<T>(Mutex<Vec<T>>);

impl<T> Idle<T> {
    fn new() -> Self {
        Idle(Mutex::new(Vec::new()))
    }

    /// Runs `work` with an idle context, or a new one from `create` (`None`
    /// when that fails), and keeps the context for the next caller.
    fn with<R>(
        &self,
        create: impl FnOnce() -> Option<T>,
        work: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let idle = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut ctx = match idle {
            Some(ctx) => ctx,
            None => create()?,
        };
        let out = work(&mut ctx);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(ctx);
        Some(out)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Blobs smaller than this are compressed at level
/// [`SMALL_BLOB_MIN_LEVEL`] at least: small files and directory listings
/// are mostly text, where level 3 stores 3–5 % less than level 1, and for
/// them zstd's per-call set-up, not its level, is most of the cost.
pub(crate) const SMALL_BLOB: usize = 128 * 1024;
/// The lowest zstd level of blobs under [`SMALL_BLOB`].
pub(crate) const SMALL_BLOB_MIN_LEVEL: i32 = 3;

/// zstd compression contexts shared by one backup's encoders.
pub(crate) struct Compressors {
    level: i32,
    idle: Idle<zstd::bulk::Compressor<'static>>,
    /// Contexts at the level of small blobs.
    idle_small: Idle<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Compressors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressors")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Compressors {
    /// Contexts compressing at `level`, created on first use.
    pub(crate) fn new(level: i32) -> Self {
        Compressors {
            level,
            idle: Idle::new(),
            idle_small: Idle::new(),
        }
    }

    /// Compresses `plain` into `dest`; `None` when it does not fit (or
    /// zstd fails).
    pub(crate) fn compress_into(&self, plain: &[u8], dest: &mut [u8]) -> Option<usize> {
        if dest.is_empty() {
            return None;
        }
        let (idle, level) = if plain.len() < SMALL_BLOB && self.level < SMALL_BLOB_MIN_LEVEL {
            (&self.idle_small, SMALL_BLOB_MIN_LEVEL)
        } else {
            (&self.idle, self.level)
        };
        idle.with(
            || zstd::bulk::Compressor::new(level).ok(),
            |c| c.compress_to_buffer(plain, dest).ok(),
        )
        .flatten()
    }

    /// Contexts created so far.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.len() + self.idle_small.len()
    }
}

/// zstd decompression contexts shared by everything decoding blobs with one
/// key (restore, check, prune, reading trees). Creating and freeing a
/// context for every blob cost about a fifth of the CPU time of restoring a
/// tree of small files.
pub(crate) struct Decompressors {
    idle: Idle<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Decompressors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressors").finish_non_exhaustive()
    }
}

impl Decompressors {
    /// No contexts yet; they are created on first use.
    pub(crate) fn new() -> Self {
        Decompressors { idle: Idle::new() }
    }

    /// Decompresses the single zstd frame `data`, which must come to at
    /// most `capacity` bytes: the output buffer is allocated at that size up
    /// front and never grown, so `capacity` bounds the memory used. `None`
    /// when `data` is not such a frame (or no context can be created).
    #[cfg(test)]
    fn decompress(&self, data: &[u8], capacity: usize) -> Option<Vec<u8>> {
        let mut out = vec![0; capacity];
        let n = self.decompress_to(data, &mut out)?;
        out.truncate(n);
        Some(out)
    }

    /// Decompresses the single zstd frame `data` into `out`, which bounds
    /// the size it may come to; the bytes written. `None` when `data` is
    /// not such a frame, does not fit, or no context can be created.
    pub(crate) fn decompress_to(&self, data: &[u8], out: &mut [u8]) -> Option<usize> {
        self.idle
            .with(
                || {
                    tracing::trace!("creating a zstd decompression context");
                    zstd::bulk::Decompressor::new().ok()
                },
                // A context that failed on bad data starts afresh on the
                // next frame: every single-shot decompression resets it.
                |d| d.decompress_to_buffer(data, out).ok(),
            )
            .flatten()
    }

    /// Contexts created so far.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_empty_and_shows_nothing_of_its_last_use() {
        let pool = BufferPool::new(4, 1 << 20);
        let mut a = pool.take(4096);
        a.extend_from_slice(b"secret plaintext");
        let ptr = a.as_ptr();
        drop(a);
        let mut b = pool.take(16);
        assert_eq!(b.as_ptr(), ptr, "the same allocation came back");
        assert!(b.is_empty(), "returned cleared");
        assert!(b.capacity() >= 4096, "its capacity was kept");
        // Growing it exposes zeros, not the previous user's bytes.
        b.resize(16, 0);
        assert_eq!(&b[..], &[0u8; 16]);
        let st = pool.stats();
        assert_eq!((st.allocated, st.reused, st.high_water), (1, 1, 1));
    }

    #[test]
    fn the_pool_keeps_at_most_max_idle_buffers_and_none_too_large() {
        let pool = BufferPool::new(3, 1024);
        let bufs: Vec<PooledBuf> = (0..5).map(|_| pool.take(512)).collect();
        assert_eq!(pool.stats().high_water, 5);
        drop(bufs);
        let st = pool.stats();
        assert_eq!(st.idle, 3, "two of the five were freed");
        assert!(st.idle_bytes >= 3 * 512 && st.idle_bytes <= 3 * 1024);
        let mut big = pool.take(10);
        big.extend_from_slice(&[1u8; 4096]);
        drop(big);
        assert_eq!(pool.stats().idle, 2, "a buffer grown past 1024 is freed");
        // Taking never blocks: an empty pool allocates.
        let held: Vec<PooledBuf> = (0..6).map(|_| pool.take(100)).collect();
        assert_eq!(held.len(), 6);
        assert_eq!(pool.stats().allocated, 5 + 4);
    }

    #[test]
    fn take_picks_the_smallest_idle_buffer_that_fits() {
        let pool = BufferPool::new(4, 1 << 20);
        let (small, large) = (pool.take(1024), pool.take(64 * 1024));
        let (sp, lp) = (small.as_ptr(), large.as_ptr());
        drop((small, large));
        let a = pool.take(512);
        assert_eq!(a.as_ptr(), sp);
        let b = pool.take(2048);
        assert_eq!(b.as_ptr(), lp);
        drop((a, b));
        // Nothing fits: the largest is grown rather than a third allocated.
        let c = pool.take(128 * 1024);
        assert!(c.capacity() >= 128 * 1024);
        assert_eq!(pool.stats().allocated, 2);
        assert_eq!(pool.stats().idle, 1);
    }

    #[test]
    fn bytes_made_from_a_buffer_return_it_when_the_last_clone_drops() {
        let pool = BufferPool::new(2, 1 << 20);
        let mut a = pool.take(64);
        a.extend_from_slice(b"sealed blob");
        let bytes = a.into_bytes();
        let clone = bytes.clone();
        assert_eq!(&clone[..], b"sealed blob");
        drop(bytes);
        assert_eq!(pool.stats().idle, 0, "a clone still holds it");
        // Dropped on another thread, as a target's writer does.
        std::thread::spawn(move || drop(clone)).join().unwrap();
        let st = pool.stats();
        assert_eq!(st.idle, 1);
        assert!(pool.take(8).is_empty());
    }

    #[test]
    fn compressors_are_shared_not_made_per_thread() {
        let zstd = Arc::new(Compressors::new(1));
        let plain = b"chunk chunk chunk chunk chunk chunk chunk chunk ".repeat(100);
        // One after the other on eight threads: one context serves them all.
        for _ in 0..8 {
            let (z, p) = (zstd.clone(), plain.clone());
            let n = std::thread::spawn(move || {
                let mut dest = vec![0u8; p.len()];
                let n = z.compress_into(&p, &mut dest).unwrap();
                assert_eq!(zstd::bulk::decompress(&dest[..n], p.len()).unwrap(), p);
                n
            })
            .join()
            .unwrap();
            assert!(n < plain.len());
        }
        assert_eq!(zstd.idle(), 1);
        // Incompressible into a too-small buffer: no output, context kept.
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut small = vec![0u8; 100];
        assert_eq!(zstd.compress_into(&noise, &mut small), None);
        assert_eq!(zstd.compress_into(&noise, &mut []), None);
        assert_eq!(zstd.idle(), 1);
    }

    #[test]
    fn decompressors_reuse_one_context_and_survive_bad_frames() {
        let zstd = Arc::new(Decompressors::new());
        let plain = b"blob blob blob blob blob blob blob blob blob blob ".repeat(100);
        let frame = zstd::bulk::compress(&plain, 3).unwrap();
        // One after the other on eight threads: one context serves them all.
        for _ in 0..8 {
            let (z, f, p) = (zstd.clone(), frame.clone(), plain.clone());
            std::thread::spawn(move || assert_eq!(z.decompress(&f, p.len()), Some(p)))
                .join()
                .unwrap();
        }
        assert_eq!(zstd.idle(), 1);
        // Not a frame, or more output than allowed: nothing, context kept,
        // and it still decodes a good frame afterwards.
        assert_eq!(zstd.decompress(b"not a zstd frame", 1 << 20), None);
        assert_eq!(zstd.decompress(&frame, plain.len() - 1), None);
        assert_eq!(
            zstd.decompress(&frame[..frame.len() - 3], plain.len()),
            None
        );
        assert_eq!(
            zstd.decompress(&frame, plain.len()).as_deref(),
            Some(&plain[..])
        );
        assert_eq!(zstd.idle(), 1);
        // Two at once (one held here while a thread decodes) need two
        // contexts, both kept.
        let held = zstd.idle.with(
            || None,
            |_| {
                let (z, f, p) = (zstd.clone(), frame.clone(), plain.clone());
                std::thread::spawn(move || assert_eq!(z.decompress(&f, p.len()), Some(p)))
                    .join()
                    .unwrap();
            },
        );
        assert!(held.is_some());
        assert_eq!(zstd.idle(), 2);
    }

    #[test]
    fn buffers_outliving_their_pool_are_freed_not_kept() {
        let pool = BufferPool::new(2, 1 << 20);
        let mut a = pool.take(64);
        a.push(1);
        let bytes = a.into_bytes();
        let shared = Arc::downgrade(&pool.shared);
        drop(pool);
        assert!(
            shared.upgrade().is_none(),
            "a buffer still in use does not keep the pool (and its idle buffers) alive"
        );
        assert_eq!(&bytes[..], &[1]);
        drop(bytes);
    }

    #[test]
    fn a_budget_bounds_the_bytes_out_of_the_pool_and_take_waits_for_returns() {
        let pool = BufferPool::with_budget(8, 1 << 20, 1000);
        let a = pool.take(600);
        // Over budget without waiting: counted all the same.
        let b = pool.take_now(600);
        assert_eq!(pool.stats().peak_bytes, 1200);
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = pool.clone();
        let waiter = std::thread::spawn(move || {
            let c = p2.take(300);
            tx.send(()).unwrap();
            c.capacity()
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            rx.try_recv().is_err(),
            "take waits while 1200 bytes are out"
        );
        drop(b);
        // 600 + 300 fit: the waiter goes on.
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        assert!(waiter.join().unwrap() >= 300);
        drop(a);
        // One buffer is always granted, however large.
        let big = pool.take(5000);
        assert!(big.capacity() >= 5000);
        assert_eq!(pool.stats().peak_bytes, 5000);
    }
}
