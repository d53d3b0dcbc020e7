//! [`MemoryTarget`]: a backup target that keeps objects in process memory.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, Crc32cHasher, GetOptions, GetResult, ListOptions, ObjectKey,
    ObjectMeta, ObjectPrefix, PutMode, PutOptions, PutResult,
};
use atlas_core::{Error, Result};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use tracing::{Instrument, debug, debug_span};

const BACKEND: &str = "memory";
/// Default keys per listing page.
const DEFAULT_PAGE: u32 = 1000;
/// The get body is served in slices of this size (no copy).
const READ_SLICE: usize = 1 << 20;

#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    meta: ObjectMeta,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Stored>,
    generation: u64,
}

/// A [`BackupTarget`] in process memory: for tests, examples and
/// short-lived tools. Clones share the objects.
///
/// An upload is collected in full before it becomes visible (a failed or
/// abandoned put leaves nothing), so memory grows with the objects stored;
/// everything else follows the [`BackupTarget`] contract. Checksums are
/// CRC32C computed at put; the etag and version are a generation number
/// that grows with every write.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use atlas_core::backup::{BackupTargetExt, ObjectKey};
/// use atlas_storage::MemoryTarget;
/// let target = MemoryTarget::new();
/// let key = ObjectKey::new("a/b")?;
/// target.put_bytes(&key, "hello".into()).await?;
/// assert_eq!(&target.get_bytes(&key).await?[..], b"hello");
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryTarget {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTarget")
            .field("objects", &self.lock().objects.len())
            .finish()
    }
}

impl MemoryTarget {
    /// An empty target.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of objects stored.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written object:
        // every mutation is a single map operation.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl BackupTarget for MemoryTarget {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let span = debug_span!("backup.put", backend = BACKEND, %key, mode = ?options.mode);
        async move {
            if options.mode == PutMode::Create && self.lock().objects.contains_key(key.as_str()) {
                return Err(conflict(key));
            }
            let mut body = body;
            let mut buf = BytesMut::new();
            let mut hasher = Crc32cHasher::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                buf.extend_from_slice(&chunk);
            }
            let checksum = hasher.checksum();
            let size = buf.len() as u64;
            let mut state = self.lock();
            if options.mode == PutMode::Create && state.objects.contains_key(key.as_str()) {
                return Err(conflict(key));
            }
            state.generation += 1;
            let generation = state.generation.to_string();
            let meta = ObjectMeta::new(key.clone(), size, SystemTime::now())
                .with_checksum(Some(checksum))
                .with_etag(Some(generation.clone()))
                .with_version(Some(generation.clone()));
            state.objects.insert(
                key.to_string(),
                Stored {
                    data: buf.freeze(),
                    meta,
                },
            );
            debug!(size, %checksum, "stored");
            Ok(PutResult::new(size, checksum)
                .with_etag(Some(generation.clone()))
                .with_version(Some(generation)))
        }
        .instrument(span)
        .await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let _span = debug_span!("backup.get", backend = BACKEND, %key).entered();
        let stored = self
            .lock()
            .objects
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| not_found(key))?;
        let range = match options.range {
            Some(r) => r.resolve(stored.meta.size)?,
            None => 0..stored.meta.size,
        };
        // Ranges are within `data`, which is in memory, so they fit in usize.
        let data = stored.data.slice(
            usize::try_from(range.start).unwrap_or(0)..usize::try_from(range.end).unwrap_or(0),
        );
        let body = stream::iter(
            (0..data.len())
                .step_by(READ_SLICE)
                .map(move |at| Ok(data.slice(at..(at + READ_SLICE).min(data.len())))),
        )
        .boxed();
        Ok(GetResult::new(stored.meta, range, body))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let _span = debug_span!("backup.head", backend = BACKEND, %key).entered();
        self.lock()
            .objects
            .get(key.as_str())
            .map(|s| s.meta.clone())
            .ok_or_else(|| not_found(key))
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let page = options
            .page_size
            .unwrap_or(NonZeroU32::new(DEFAULT_PAGE).unwrap_or(NonZeroU32::MIN))
            .get() as usize;
        let target = self.clone();
        let prefix = prefix.clone();
        debug!(backend = BACKEND, %prefix, page, "list");
        // One page per lock, like a remote listing: writes between pages are
        // seen by later pages.
        stream::unfold((options.start_after, false), move |(after, done)| {
            let target = target.clone();
            let prefix = prefix.clone();
            async move {
                if done {
                    return None;
                }
                let state = target.lock();
                // Start at the later of the prefix and the resume key.
                let lower = match &after {
                    Some(k) if k.as_str() >= prefix.as_str() => Bound::Excluded(k.as_str()),
                    _ => Bound::Included(prefix.as_str()),
                };
                let batch: Vec<ObjectMeta> = state
                    .objects
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .take(page)
                    .map(|(_, s)| s.meta.clone())
                    .collect();
                drop(state);
                let last = batch.last().map(|m| m.key.clone());
                let done = batch.len() < page;
                Some((batch, (last, done)))
            }
        })
        .take_while(|batch| futures::future::ready(!batch.is_empty()))
        .flat_map(|batch| stream::iter(batch.into_iter().map(Ok)))
        .boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let _span = debug_span!("backup.delete", backend = BACKEND, %key).entered();
        self.lock()
            .objects
            .remove(key.as_str())
            .map(|_| ())
            .ok_or_else(|| not_found(key))
    }
}

fn not_found(key: &ObjectKey) -> Error {
    Error::not_found(format!("object {key} in the memory target"))
}

fn conflict(key: &ObjectKey) -> Error {
    Error::conflict(format!("object {key} already exists in the memory target"))
}
