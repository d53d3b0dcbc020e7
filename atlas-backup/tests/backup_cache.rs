//! The repository's index kept in memory by a handle, and the local cache
//! of index files and snapshot manifests: what each saves in downloads,
//! and that neither is trusted blindly (a replaced, corrupted or foreign
//! copy is ignored).

#![cfg(unix)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use atlas_backup::repo::{
    BackupOptions, DirectorySource, KeySource, PruneOptions, Repository, RestoreOptions,
};
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutOptions, PutResult,
};
use futures::stream::{BoxStream, StreamExt};

mod common;
use common::{Memory, PASS, assert_same_tree, fast_init, init, prefix, random_bytes, write_file};

/// The in-memory target, listing objects as a cloud store does (with an
/// entity tag of their content and a fixed modification time), counting
/// the downloads of each repository folder.
#[derive(Debug, Clone, Default)]
struct Counted {
    mem: Memory,
    gets: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Counted {
    /// Downloads of objects under `folder/` (`index`, `snapshots`) so far.
    fn gets(&self, folder: &str) -> u64 {
        self.gets.lock().unwrap().get(folder).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl BackupTarget for Counted {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> atlas_core::Result<PutResult> {
        self.mem.put_opts(key, body, options).await
    }

    async fn get_opts(
        &self,
        key: &ObjectKey,
        options: GetOptions,
    ) -> atlas_core::Result<GetResult> {
        let folder = key
            .as_str()
            .split('/')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        *self.gets.lock().unwrap().entry(folder).or_default() += 1;
        self.mem.get_opts(key, options).await
    }

    async fn head(&self, key: &ObjectKey) -> atlas_core::Result<ObjectMeta> {
        self.mem.head(key).await
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        _options: ListOptions,
    ) -> BoxStream<'static, atlas_core::Result<ObjectMeta>> {
        let items: Vec<_> = self
            .mem
            .map()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_str()))
            .map(|(k, v)| {
                ObjectKey::new(k.clone()).map(|key| {
                    let mut m = ObjectMeta::new(key, v.len() as u64, UNIX_EPOCH);
                    m.etag = Some(format!("{:?}", Checksum::crc32c_of(v)));
                    m
                })
            })
            .collect();
        futures::stream::iter(items).boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> atlas_core::Result<()> {
        self.mem.delete(key).await
    }
}

async fn open(target: &Counted, cache: Option<&Path>) -> Repository {
    let repo = Repository::open(
        Arc::new(target.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
    )
    .await
    .unwrap();
    match cache {
        Some(dir) => repo.with_cache_dir(dir),
        None => repo,
    }
}

fn tree(root: &Path, seed: u64) {
    for i in 0..20u64 {
        let data = random_bytes(1000 + 300 * i as usize, seed * 100 + i);
        write_file(
            &root.join(format!("d{}/f{i}.txt", i % 3)),
            &data,
            0o644,
            1_600_000_000 + seed * 1000 + i,
        );
    }
}

/// The files under `dir`, by name.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

async fn restores_as(repo: &Repository, snapshot: &str, source: &Path) {
    let out = tempfile::tempdir().unwrap();
    repo.restore(snapshot, out.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(source, out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_keeps_its_index_and_the_cache_saves_every_second_download() {
    let target = Counted::default();
    init(&target.mem, fast_init()).await;
    let src = tempfile::tempdir().unwrap();
    tree(src.path(), 1);
    let cache = tempfile::tempdir().unwrap();

    // Without a cache: one handle loads the index once, and again only
    // the files added since.
    let plain = open(&target, None).await;
    plain
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let before = target.gets("index");
    restores_as(&plain, "latest", src.path()).await;
    restores_as(&plain, "latest", src.path()).await;
    assert_eq!(
        target.gets("index") - before,
        1,
        "the second restore reuses the index the first one loaded"
    );
    tree(src.path(), 2);
    plain
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let before = target.gets("index");
    restores_as(&plain, "latest", src.path()).await;
    assert_eq!(
        target.gets("index") - before,
        1,
        "only the index file the second backup added is read"
    );
    assert!(plain.cache_dir().is_none());

    // With a cache: a new handle (a new process) downloads each index
    // file and manifest once; the next one downloads none.
    let first = open(&target, Some(cache.path())).await;
    let (idx, snaps) = (target.gets("index"), target.gets("snapshots"));
    assert_eq!(first.snapshots().await.unwrap().len(), 2);
    restores_as(&first, "latest", src.path()).await;
    assert_eq!(target.gets("index") - idx, 2);
    assert!(target.gets("snapshots") - snaps >= 2);
    let dir = first.cache_dir().unwrap().to_path_buf();
    assert!(dir.starts_with(cache.path()));
    assert_eq!(files_in(&dir.join("index")).len(), 2);
    assert_eq!(files_in(&dir.join("snapshots")).len(), 2);
    // Cached copies are what the target stores: encrypted.
    for f in files_in(&dir.join("index")) {
        let text = String::from_utf8_lossy(&fs::read(&f).unwrap()).into_owned();
        assert!(
            !text.contains("\"packs\""),
            "a cached index is not plain JSON"
        );
    }

    let second = open(&target, Some(cache.path())).await;
    let (idx, snaps) = (target.gets("index"), target.gets("snapshots"));
    assert_eq!(second.snapshots().await.unwrap().len(), 2);
    tree(src.path(), 3);
    second
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(
        target.gets("index") - idx,
        0,
        "the index came from the cache"
    );
    // Resolving the parent and `latest` read the manifests of the cache.
    restores_as(&second, "latest", src.path()).await;
    assert_eq!(
        target.gets("index") - idx,
        1,
        "only the index file this backup wrote is downloaded"
    );
    assert_eq!(
        target.gets("snapshots") - snaps,
        1,
        "only the manifest this backup wrote is downloaded"
    );

    // A prune rewrites the index: the handle and the cache follow the
    // listing, not what they held.
    let other = open(&target, None).await;
    let snaps = other.snapshots().await.unwrap();
    other.forget(&[snaps[0].id.to_hex()]).await.unwrap();
    other.prune(PruneOptions::default()).await.unwrap();
    restores_as(&second, "latest", src.path()).await;
    assert_eq!(second.snapshots().await.unwrap().len(), 2);
    let listed = target.mem.keys_under("repo/index/").len();
    assert_eq!(files_in(&dir.join("index")).len(), listed);
    assert_eq!(files_in(&dir.join("snapshots")).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_replaced_or_foreign_cache_is_ignored() {
    let target = Counted::default();
    init(&target.mem, fast_init()).await;
    let src = tempfile::tempdir().unwrap();
    tree(src.path(), 1);
    let cache = tempfile::tempdir().unwrap();
    let repo = open(&target, Some(cache.path())).await;
    repo.backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
    restores_as(&repo, "latest", src.path()).await;
    let dir = repo.cache_dir().unwrap().to_path_buf();
    let [entry] = &files_in(&dir.join("index"))[..] else {
        panic!("one cached index file")
    };
    let good = fs::read(entry).unwrap();

    // Corrupted: the body changed, its size and header kept.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 20] ^= 0x55;
    fs::write(entry, &bad).unwrap();
    let before = target.gets("index");
    let fresh = open(&target, Some(cache.path())).await;
    restores_as(&fresh, "latest", src.path()).await;
    assert_eq!(target.gets("index") - before, 1, "downloaded instead");
    assert_eq!(fs::read(entry).unwrap(), good, "and the copy replaced");

    // Foreign: another repository's index file (another key) in its place,
    // under this one's header.
    let other_target = Counted::default();
    init(&other_target.mem, fast_init()).await;
    let other = open(&other_target, None).await;
    other
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let foreign_key = other_target.mem.keys_under("repo/index/").remove(0);
    let foreign = other_target.mem.map()[&foreign_key].clone();
    let header_end = good
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0;
    let mut planted = good[..=header_end].to_vec();
    planted.extend_from_slice(&foreign);
    fs::write(entry, &planted).unwrap();
    let before = target.gets("index");
    let fresh = open(&target, Some(cache.path())).await;
    restores_as(&fresh, "latest", src.path()).await;
    assert_eq!(target.gets("index") - before, 1);
    assert_eq!(fs::read(entry).unwrap(), good);

    // A cached manifest that does not open: ignored, the listing correct.
    let [manifest] = &files_in(&dir.join("snapshots"))[..] else {
        panic!("one cached manifest")
    };
    let mut m = fs::read(manifest).unwrap();
    let n = m.len();
    m[n - 1] ^= 1;
    fs::write(manifest, &m).unwrap();
    let before = target.gets("snapshots");
    let fresh = open(&target, Some(cache.path())).await;
    assert_eq!(fresh.snapshots().await.unwrap().len(), 1);
    assert_eq!(target.gets("snapshots") - before, 1);

    // Replaced on the target (same name, other content): the listing
    // describes it differently, so the copy is not used. Simulated by a
    // cache entry whose header describes another version.
    let text = fs::read(entry).unwrap();
    let replaced: Vec<u8> = String::from_utf8_lossy(&text[..=header_end])
        .replace("etag=Some(", "etag=Some(0")
        .into_bytes()
        .into_iter()
        .chain(text[header_end + 1..].iter().copied())
        .collect();
    fs::write(entry, &replaced).unwrap();
    let before = target.gets("index");
    let fresh = open(&target, Some(cache.path())).await;
    restores_as(&fresh, "latest", src.path()).await;
    assert_eq!(target.gets("index") - before, 1);
    assert_eq!(fs::read(entry).unwrap(), good);

    // A cache folder that cannot be written is no failure.
    let blocked = cache.path().join("blocked");
    fs::write(&blocked, b"a file, not a folder").unwrap();
    let fresh = open(&target, Some(&blocked)).await;
    assert_eq!(fresh.snapshots().await.unwrap().len(), 1);
    restores_as(&fresh, "latest", src.path()).await;
}
