//! What the repository's integration tests share: an in-memory target and
//! the settings and data they start from.
//!
//! Each test binary uses part of it, so the rest is dead code there.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atlas_backup::repo::{ChunkerParams, InitOptions, KdfParams, KeySource, Repository};
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutMode, PutOptions, PutResult, UnfinishedPut,
};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

// ---------------------------------------------------------------------------
// An in-memory target (atlas-core ships none of its own, and an engine
// crate may not depend on atlas-storage's MemoryTarget, even for tests).

#[derive(Debug, Default, Clone)]
pub(crate) struct Memory {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
    /// What puts that never finished left, as a cloud target's unfinished
    /// uploads: invisible to gets and listings.
    unfinished: Arc<Mutex<Vec<UnfinishedPut>>>,
}

impl Memory {
    /// Records a leftover of a put that never finished, named `id` (under
    /// the repository's prefix), last written at `at`.
    pub(crate) fn leave_unfinished_put(&self, id: &str, at: SystemTime) {
        self.unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(UnfinishedPut::new(id, at, 1000));
    }
    /// The ids of the leftovers still there.
    pub(crate) fn unfinished_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.id.clone())
            .collect();
        ids.sort();
        ids
    }
    pub(crate) fn map(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.map()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl BackupTarget for Memory {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> atlas_core::Result<PutResult> {
        let chunks: Vec<Bytes> = body.try_collect().await?;
        let data = Bytes::from(chunks.concat());
        let mut map = self.map();
        if options.mode == PutMode::Create && map.contains_key(key.as_str()) {
            return Err(atlas_core::Error::conflict(format!("{key} exists")));
        }
        let result = PutResult::new(data.len() as u64, Checksum::crc32c_of(&data));
        map.insert(key.as_str().to_owned(), data);
        Ok(result)
    }

    async fn get_opts(
        &self,
        key: &ObjectKey,
        options: GetOptions,
    ) -> atlas_core::Result<GetResult> {
        let data = self
            .map()
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| atlas_core::Error::not_found(key.as_str()))?;
        let len = data.len() as u64;
        let range = match options.range {
            Some(r) => r.resolve(len)?,
            None => 0..len,
        };
        let meta = ObjectMeta::new(key.clone(), len, SystemTime::now());
        let body = data.slice(range.start as usize..range.end as usize);
        // Yield in 64 KiB pieces, as a network body would.
        let pieces: Vec<atlas_core::Result<Bytes>> = (0..body.len())
            .step_by(64 * 1024)
            .map(|i| Ok(body.slice(i..(i + 64 * 1024).min(body.len()))))
            .collect();
        Ok(GetResult::new(
            meta,
            range,
            futures::stream::iter(pieces).boxed(),
        ))
    }

    async fn head(&self, key: &ObjectKey) -> atlas_core::Result<ObjectMeta> {
        let len = self
            .map()
            .get(key.as_str())
            .map(|d| d.len() as u64)
            .ok_or_else(|| atlas_core::Error::not_found(key.as_str()))?;
        Ok(ObjectMeta::new(key.clone(), len, SystemTime::now()))
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        _options: ListOptions,
    ) -> BoxStream<'static, atlas_core::Result<ObjectMeta>> {
        let items: Vec<_> = self
            .map()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_str()))
            .map(|(k, v)| {
                ObjectKey::new(k.clone())
                    .map(|key| ObjectMeta::new(key, v.len() as u64, SystemTime::now()))
            })
            .collect();
        futures::stream::iter(items).boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> atlas_core::Result<()> {
        self.map()
            .remove(key.as_str())
            .map(|_| ())
            .ok_or_else(|| atlas_core::Error::not_found(key.as_str()))
    }

    async fn unfinished_puts(
        &self,
        prefix: &ObjectPrefix,
    ) -> atlas_core::Result<Vec<UnfinishedPut>> {
        Ok(self
            .unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| p.id.starts_with(prefix.as_str()))
            .cloned()
            .collect())
    }

    async fn remove_unfinished_put(&self, put: &UnfinishedPut) -> atlas_core::Result<()> {
        self.unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p.id != put.id);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers.

pub(crate) const PASS: &str = "correct horse battery staple";

pub(crate) fn prefix() -> ObjectPrefix {
    ObjectPrefix::new("repo/").unwrap()
}

pub(crate) fn fast_init() -> InitOptions {
    InitOptions::default().with_kdf(KdfParams::insecure_fast())
}

pub(crate) fn small_chunks() -> InitOptions {
    fast_init()
        .with_chunker(ChunkerParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        })
        .with_pack_size(1024 * 1024)
}

pub(crate) async fn init(mem: &Memory, options: InitOptions) -> Repository {
    Repository::init(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
        options,
    )
    .await
    .unwrap()
}

/// Pseudo-random bytes that never repeat but compress about 3:1: two random
/// bytes in every eight. Compressible on purpose: the AEAD's generic code is
/// compiled unoptimised in debug test builds (a few MB/s), so tests encrypt
/// less when zstd shrinks the data first. Dedup and chunking are unaffected.
pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x as u16).to_le_bytes());
        out.extend_from_slice(b"      ");
    }
    out.truncate(n);
    out
}

pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32, mtime_secs: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime_secs);
}

pub(crate) fn set_mtime(path: &Path, secs: u64) {
    let f = fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| fs::File::open(path))
        .unwrap();
    f.set_times(fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::new(secs, 123_456_789)))
        .unwrap();
}

/// Everything under `root`: path -> (kind, mode, mtime, content or target).
/// A symlink's mode is not compared (Linux ignores it); its own mtime is.
pub(crate) fn describe(root: &Path) -> BTreeMap<String, (char, u32, Option<SystemTime>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let m = fs::symlink_metadata(&path).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&path).unwrap();
                out.insert(
                    rel,
                    (
                        'l',
                        0,
                        Some(m.modified().unwrap()),
                        t.to_string_lossy().as_bytes().to_vec(),
                    ),
                );
            } else if m.is_dir() {
                stack.push(path.clone());
                out.insert(rel, ('d', mode, Some(m.modified().unwrap()), Vec::new()));
            } else if m.is_file() {
                out.insert(
                    rel,
                    (
                        'f',
                        mode,
                        Some(m.modified().unwrap()),
                        fs::read(&path).unwrap(),
                    ),
                );
            }
        }
    }
    out
}

pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
    let (da, db) = (describe(a), describe(b));
    assert_eq!(
        da.keys().collect::<Vec<_>>(),
        db.keys().collect::<Vec<_>>(),
        "same entries"
    );
    for (k, va) in &da {
        let vb = &db[k];
        assert_eq!(va.0, vb.0, "{k}: kind");
        assert_eq!(va.1, vb.1, "{k}: mode");
        assert_eq!(va.2, vb.2, "{k}: mtime");
        assert!(va.3 == vb.3, "{k}: content differs");
    }
}
