//! Packing: compressing and encrypting new blobs, cutting them into packs
//! and streaming each pack to every healthy target as it fills.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::content::{RawBlob, aborted, join_err};
use super::sink::{Sink, healthy_count, quorum_lost};
use crate::repo::crypto::{MasterKey, sealed_capacity};
use crate::repo::format::{
    IndexPack, PACK_HEADER_AAD, PACK_MAGIC, PackId, PackedBlob, RepoConfig, encode_pack_header,
};
use crate::repo::pool::{BufferPool, Compressors, PooledBuf};
use atlas_core::backup::PutOptions;
use atlas_core::error::Result;

/// Sealed blobs a target may hold at once without the blob pool running
/// dry: the four pieces queued for its put, the one its body stream holds,
/// and those in the target's own write queue (the file-system target
/// queues 16 and writes one).
pub(super) const BLOBS_PER_TARGET: usize = 24;

/// Sealed blobs smaller than this are not sent to the targets one by one
/// but copied into a piece of [`PIECE_BYTES`]: a tree of small files made
/// a channel hand-off, a wake-up and a write per file.
const COALESCE_BELOW: usize = 64 * 1024;
/// The most bytes of one piece of a pack sent to a target. Larger blobs
/// go as several slices of their buffer (no copy), so that what waits in a
/// target's queues is bounded by bytes, not by a count of pieces of any
/// size: the four queued for its put and the file-system target's 16 are
/// at most 10 MiB, where 4 MiB chunks made them 80. (The pieces of the
/// open pack cannot be bounded by a budget that blocks the encoders: a
/// target may keep every piece until the pack ends.)
pub(super) const PIECE_BYTES: usize = 512 * 1024;

/// A pack being streamed to every healthy target.
struct OpenPack {
    id: PackId,
    size: u64,
    blobs: Vec<PackedBlob>,
    /// Small sealed blobs not sent yet, in pack order.
    pending: Option<PooledBuf>,
    /// Pieces of the pack; `true` marks the trailer, the last piece.
    senders: Vec<mpsc::Sender<(Bytes, bool)>>,
    puts: Vec<(usize, tokio::task::JoinHandle<Result<()>>)>,
}

fn open_pack(sinks: &[Sink]) -> Result<OpenPack> {
    let id = PackId::random();
    let mut senders = Vec::new();
    let mut puts = Vec::new();
    for (i, s) in sinks.iter().enumerate().filter(|(_, s)| s.healthy()) {
        let key = s.repo.inner.layout.pack(&id)?;
        let target = s.repo.inner.target.clone();
        // A few blobs of slack per target: the pipeline runs at the pace
        // of the slowest healthy target, with bounded memory.
        let (tx, rx) = mpsc::channel::<(Bytes, bool)>(4);
        // A channel closed before the trailer (the backup failed or was
        // dropped) fails the put, so no truncated pack is ever stored.
        let body = stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some((piece, false)) => Some((Ok(piece), Some(rx))),
                Some((piece, true)) => Some((Ok(piece), None)),
                None => Some((Err(aborted()), None)),
            }
        })
        .boxed();
        puts.push((
            i,
            tokio::spawn(async move {
                target
                    .put_opts(&key, body, PutOptions::create())
                    .await
                    .map(|_| ())
            }),
        ));
        senders.push(tx);
    }
    Ok(OpenPack {
        id,
        size: 0,
        blobs: Vec::new(),
        pending: None,
        senders,
        puts,
    })
}

/// Sends the pack's trailer, ends its uploads and returns a future of
/// their outcome.
async fn close_pack(
    master: &MasterKey,
    pack: OpenPack,
) -> impl std::future::Future<Output = (OpenPack, Vec<(usize, Result<()>)>)> {
    let header = master.seal(PACK_HEADER_AAD, &encode_pack_header(&pack.blobs));
    let mut trailer = header;
    let hlen = trailer.len() as u32;
    trailer.extend_from_slice(&hlen.to_le_bytes());
    trailer.extend_from_slice(PACK_MAGIC);
    let trailer = Bytes::from(trailer);
    let mut pack = pack;
    flush(&mut pack).await;
    pack.size += trailer.len() as u64;
    for tx in pack.senders.drain(..) {
        // A closed channel means that put failed; its handle says why.
        let _ = tx.send((trailer.clone(), true)).await;
    }
    async move {
        let puts = std::mem::take(&mut pack.puts);
        let mut out = Vec::new();
        for (i, h) in puts {
            out.push((i, h.await.map_err(join_err).and_then(|r| r)));
        }
        (pack, out)
    }
}

/// Sends `piece` (the pack's next bytes) to every target of the pack.
async fn send_piece(pack: &OpenPack, piece: Bytes) {
    for tx in &pack.senders {
        // A closed channel means that put failed; its handle says why.
        let _ = tx.send((piece.clone(), false)).await;
    }
}

/// Sends the coalesced small blobs, if any.
async fn flush(pack: &mut OpenPack) {
    if let Some(piece) = pack.pending.take() {
        send_piece(pack, piece.into_bytes()).await;
    }
}

/// Appends one sealed blob to the pack's stream: small ones are gathered
/// into pieces, large ones sent as they are (after what was gathered).
async fn append(pack: &mut OpenPack, pool: &BufferPool, sealed: PooledBuf) {
    if sealed.len() < COALESCE_BELOW {
        if pack
            .pending
            .as_ref()
            .is_some_and(|p| p.len() + sealed.len() > PIECE_BYTES)
        {
            flush(pack).await;
        }
        pack.pending
            .get_or_insert_with(|| pool.take_now(PIECE_BYTES))
            .extend_from_slice(&sealed);
    } else {
        flush(pack).await;
        let bytes = sealed.into_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + PIECE_BYTES).min(bytes.len());
            send_piece(pack, bytes.slice(at..end)).await;
            at = end;
        }
    }
}

fn settle_pack(
    sinks: &[Sink],
    required: usize,
    pack: OpenPack,
    results: Vec<(usize, Result<()>)>,
) -> Result<IndexPack> {
    for (i, r) in results {
        if let Err(e) = r {
            sinks[i].fail(e);
        }
    }
    if healthy_count(sinks) < required {
        return Err(quorum_lost(sinks, required));
    }
    debug!(pack = %pack.id.short(), size = pack.size, blobs = pack.blobs.len(), "uploaded pack");
    Ok(IndexPack::of(pack.id, pack.size, &pack.blobs))
}

/// Compresses and encrypts queued blobs on `workers` blocking threads and
/// streams them, as packs, to every healthy target. No pack is held whole
/// in memory; up to `concurrency` finished packs may await their uploads'
/// completion.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pack_stage(
    master: MasterKey,
    config: RepoConfig,
    workers: usize,
    concurrency: usize,
    sinks: &[Sink],
    required: usize,
    rx: mpsc::Receiver<RawBlob>,
    stored: Arc<Mutex<u64>>,
    pool: BufferPool,
    zstd: Arc<Compressors>,
) -> Result<Vec<IndexPack>> {
    use futures::stream::FuturesUnordered;
    let pack_size = u64::from(config.pack_size);
    let blobs = Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b, rx))
    }));
    let m2 = master.clone();
    let p2 = pool.clone();
    let mut encoded = blobs
        .map(move |raw| {
            if raw.sealed {
                // Sealed by its reader already.
                return futures::future::Either::Left(futures::future::ready(Ok((
                    raw.kind,
                    raw.id,
                    raw.raw_length,
                    raw.data,
                ))));
            }
            let m = m2.clone();
            let pool = p2.clone();
            let zstd = zstd.clone();
            futures::future::Either::Right(tokio::task::spawn_blocking(move || {
                let mut sealed = pool.take(sealed_capacity(raw.data.len()));
                m.encode_blob_into(raw.kind, &raw.id, &raw.data, &zstd, &mut sealed);
                // `raw` goes back to the pool here, `sealed` when the last
                // target has written it.
                (raw.kind, raw.id, raw.raw_length, sealed)
            }))
        })
        .buffer_unordered(workers.max(1));
    let mut current: Option<OpenPack> = None;
    let mut closing = FuturesUnordered::new();
    let mut done = Vec::new();
    while let Some(item) = encoded.next().await {
        let (kind, id, raw_length, sealed) = item.map_err(join_err)?;
        *stored.lock().unwrap_or_else(|e| e.into_inner()) += sealed.len() as u64;
        if current.is_none() {
            if healthy_count(sinks) < required {
                return Err(quorum_lost(sinks, required));
            }
            current = Some(open_pack(sinks)?);
        }
        let Some(pack) = current.as_mut() else {
            continue;
        };
        pack.blobs.push(PackedBlob {
            kind,
            id,
            offset: pack.size as u32,
            length: sealed.len() as u32,
            raw_length,
        });
        pack.size += sealed.len() as u64;
        append(pack, &pool, sealed).await;
        if pack.size >= pack_size
            && let Some(full) = current.take()
        {
            closing.push(close_pack(&master, full).await);
            while closing.len() >= concurrency.max(1) {
                if let Some((p, r)) = closing.next().await {
                    done.push(settle_pack(sinks, required, p, r)?);
                }
            }
        }
    }
    if let Some(last) = current.take() {
        closing.push(close_pack(&master, last).await);
    }
    while let Some((p, r)) = closing.next().await {
        done.push(settle_pack(sinks, required, p, r)?);
    }
    Ok(done)
}
