//! The backup pipeline end to end against a target that streams puts:
//! buffer reuse, and every chunk stored intact.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use super::pack::BLOBS_PER_TARGET;
use super::run::{BackupOptions, run_backup};
use super::source::StreamSource;
use crate::repo::check::{CheckOptions, ReadDataSubset};
use crate::repo::crypto::{KdfParams, KeySource};
use crate::repo::format::ChunkerParams;
use crate::repo::policy::MirrorPolicy;
use crate::repo::repository::{InitOptions, Repository};
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutMode, PutOptions, PutResult,
};
use atlas_core::error::{Error, Result};

/// An in-memory target that copies each piece of a put as it arrives
/// and drops it, as a target writing to a disk or a socket does. The
/// restore tests use it too.
#[derive(Debug, Default)]
pub(crate) struct Streaming {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl Streaming {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl BackupTarget for Streaming {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        mut body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let mut data = Vec::new();
        while let Some(piece) = body.next().await {
            data.extend_from_slice(&piece?);
        }
        let mut map = self.map();
        if options.mode == PutMode::Create && map.contains_key(key.as_str()) {
            return Err(Error::conflict(format!("{key} exists")));
        }
        let result = PutResult::new(data.len() as u64, Checksum::crc32c_of(&data));
        map.insert(key.as_str().to_owned(), data.into());
        Ok(result)
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let data = self
            .map()
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| Error::not_found(key.as_str()))?;
        let len = data.len() as u64;
        let range = match options.range {
            Some(r) => r.resolve(len)?,
            None => 0..len,
        };
        let body = data.slice(range.start as usize..range.end as usize);
        let meta = ObjectMeta::new(key.clone(), len, SystemTime::now());
        Ok(GetResult::new(
            meta,
            range,
            stream::iter([Ok(body)]).boxed(),
        ))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let len = self
            .map()
            .get(key.as_str())
            .map(|d| d.len() as u64)
            .ok_or_else(|| Error::not_found(key.as_str()))?;
        Ok(ObjectMeta::new(key.clone(), len, SystemTime::now()))
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        _options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let items: Vec<Result<ObjectMeta>> = self
            .map()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_str()))
            .map(|(k, v)| {
                ObjectKey::new(k.clone())
                    .map(|key| ObjectMeta::new(key, v.len() as u64, SystemTime::now()))
            })
            .collect();
        stream::iter(items).boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.map()
            .remove(key.as_str())
            .map(|_| ())
            .ok_or_else(|| Error::not_found(key.as_str()))
    }
}

/// Bytes that never repeat (no chunk dedups) and compress about 2:1.
fn data(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            } else {
                b'a'
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_recycles_its_buffers_and_stores_every_chunk_intact() {
    let target = Arc::new(Streaming::default());
    let key = KeySource::passphrase("pool test");
    let repo = Repository::init(
        target.clone(),
        ObjectPrefix::new("repo/").unwrap(),
        &key,
        InitOptions::default()
            .with_kdf(KdfParams::insecure_fast())
            .with_chunker(ChunkerParams {
                min_size: 1024,
                avg_size: 4096,
                max_size: 16384,
            })
            .with_pack_size(1024 * 1024),
    )
    .await
    .unwrap();
    let input = data(3 << 20);
    let source = StreamSource::from_async_read("dump.bin", io::Cursor::new(input.clone()));
    let mut options = BackupOptions::default();
    (options.workers, options.read_concurrency) = (2, 2);
    let run = run_backup(
        std::slice::from_ref(&repo),
        MirrorPolicy::All,
        Box::new(source),
        options,
    )
    .await
    .unwrap();
    let chunks = run.snapshot.totals.new_chunks;
    assert!(chunks > 300, "about 768 chunks, got {chunks}");
    let pool = run.blob_pool;
    // Readers + 4 × workers + one target's pieces: the most buffers the
    // pipeline holds at once, so the pool never frees one that it will
    // need again.
    let bound = (2 + 4 * 2 + BLOBS_PER_TARGET) as u64;
    assert!(
        pool.allocated <= bound && pool.high_water as u64 <= bound,
        "{pool:?}"
    );
    // No churn: a buffer is allocated only when every one made so far
    // is in use (the one exception: the tree blob, larger than any
    // chunk, is not kept).
    assert!(pool.allocated <= pool.high_water as u64 + 1, "{pool:?}");
    // Chunks this small are sealed by their reader: one sealed buffer
    // each, and no plaintext copy for an encoder.
    assert!(
        pool.reused + pool.allocated >= chunks,
        "each new chunk takes a buffer for its sealed blob: {pool:?}"
    );
    assert_eq!(run.chunk_pool.allocated, 0, "{:?}", run.chunk_pool);
    // Recycled buffers carried no bytes from one blob into another:
    // every blob decrypts and hashes to its id, and the file reads back.
    let report = repo
        .check(CheckOptions::read_data(ReadDataSubset::All))
        .await
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let id = run.snapshot.id.to_string();
    let (_, body) = repo.restore_file_stream(&id, "dump.bin").await.unwrap();
    let restored: Vec<Bytes> = body.try_collect().await.unwrap();
    assert!(restored.concat() == input, "the restored file differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_waiting_for_the_encoders_stay_within_the_byte_budget() {
    let target = Arc::new(Streaming::default());
    let key = KeySource::passphrase("budget test");
    let max_size = 1024 * 1024;
    let repo = Repository::init(
        target.clone(),
        ObjectPrefix::new("repo/").unwrap(),
        &key,
        InitOptions::default()
            .with_kdf(KdfParams::insecure_fast())
            .with_chunker(ChunkerParams {
                min_size: 64 * 1024,
                avg_size: 256 * 1024,
                max_size,
            })
            .with_pack_size(1024 * 1024),
    )
    .await
    .unwrap();
    let input = data(12 << 20);
    let source = StreamSource::from_async_read("dump.bin", io::Cursor::new(input.clone()));
    // Below the floor of two largest chunks: the floor applies.
    let options = BackupOptions::default().with_buffer_bytes(0);
    let run = run_backup(
        std::slice::from_ref(&repo),
        MirrorPolicy::All,
        Box::new(source),
        options,
    )
    .await
    .unwrap();
    let chunks = run.chunk_pool;
    assert!(
        chunks.reused + chunks.allocated > 5,
        "large chunks went to the encoders: {chunks:?}"
    );
    assert!(chunks.peak_bytes <= 2 * max_size as usize, "{chunks:?}");
    let id = run.snapshot.id.to_string();
    let (_, body) = repo.restore_file_stream(&id, "dump.bin").await.unwrap();
    let restored: Vec<Bytes> = body.try_collect().await.unwrap();
    assert!(restored.concat() == input, "the restored file differs");
}
