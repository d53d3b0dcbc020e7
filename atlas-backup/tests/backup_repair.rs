//! A repository robust to damage and to crashed processes: damaged
//! snapshot manifests are reported and skipped, and moved aside by
//! `repair_snapshots`; a lost or damaged index is rebuilt from the packs by
//! `repair_index`; a crashed backup's lock and temporary uploads neither
//! block prune nor stay behind.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use atlas_backup::repo::{
    BackupKind, BackupOptions, CheckOptions, DirectorySource, DocumentDamage, KeySource,
    PruneOptions, ReadDataSubset, Repository, RestoreOptions, StreamSource, integrity_error,
};
use atlas_core::ErrorKind;
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};

mod common;
use common::{Memory, assert_same_tree, init, random_bytes, small_chunks, write_file};

fn stream(name: &str, data: &[u8]) -> StreamSource {
    StreamSource::from_stream(
        name,
        futures::stream::iter([Ok(Bytes::from(data.to_vec()))]).boxed(),
    )
}

async fn restored(repo: &Repository, snapshot: &str, name: &str) -> atlas_core::Result<Vec<u8>> {
    let (_, body) = repo.restore_file_stream(snapshot, name).await?;
    let pieces: Vec<Bytes> = body.try_collect().await?;
    Ok(pieces.concat())
}

fn contents(mem: &Memory) -> BTreeMap<String, Bytes> {
    mem.map().clone()
}

/// Replaces the object `key` with what `edit` makes of it.
fn damage(mem: &Memory, key: &str, edit: impl FnOnce(&Bytes) -> Bytes) {
    let mut map = mem.map();
    let damaged = edit(&map[key]);
    map.insert(key.to_owned(), damaged);
}

/// One snapshot manifest damaged in every way a user meets: each is listed
/// as damaged with its kind, every other operation skips it, check reports
/// it, prune refuses to delete anything, and `repair_snapshots` moves it
/// aside, after which prune runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_reported_skipped_and_moved_aside() {
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let data_a = random_bytes(400_000, 1);
    let data_b = random_bytes(300_000, 2);
    let a = repo
        .backup(stream("a.sql", &data_a), BackupOptions::default())
        .await
        .unwrap()
        .snapshot;
    let b = repo
        .backup(stream("b.sql", &data_b), BackupOptions::default())
        .await
        .unwrap()
        .snapshot;
    let a_key = format!("repo/snapshots/{}", a.id);
    let a_path = format!("snapshots/{}", a.id);
    let intact = mem.map()[&a_key].clone();

    // A manifest of another repository (another key) is undecryptable too.
    let other_mem = Memory::default();
    let other = init(&other_mem, small_chunks()).await;
    let foreign_snapshot = other
        .backup(stream("a.sql", b"other"), BackupOptions::default())
        .await
        .unwrap()
        .snapshot;
    let foreign = other_mem.map()[&format!("repo/snapshots/{}", foreign_snapshot.id)].clone();

    let mut flipped = intact.to_vec();
    flipped[intact.len() / 2] ^= 0x40;
    let damages: Vec<(&str, Bytes, DocumentDamage)> = vec![
        (
            "cut in half",
            intact.slice(..intact.len() / 2),
            DocumentDamage::Undecryptable,
        ),
        (
            "cut to 10 bytes",
            intact.slice(..10),
            DocumentDamage::Truncated,
        ),
        (
            "a flipped byte",
            flipped.into(),
            DocumentDamage::Undecryptable,
        ),
        ("another key", foreign, DocumentDamage::Undecryptable),
        ("empty", Bytes::new(), DocumentDamage::Truncated),
    ];
    for (what, bytes, expected) in damages {
        mem.map().insert(a_key.clone(), bytes);
        assert_damaged_is_skipped(
            &mem,
            &repo,
            &a_path,
            expected,
            what,
            &b.id.to_hex(),
            &data_b,
        )
        .await;
    }
    // Decrypts, but is no manifest.
    mem.map().insert(a_key.clone(), intact.clone());
    repo.write_raw_document(&a_path, br#"{"version": 1, "id": 5}"#)
        .await
        .unwrap();
    assert_damaged_is_skipped(
        &mem,
        &repo,
        &a_path,
        DocumentDamage::Unparsable,
        "not a manifest",
        &b.id.to_hex(),
        &data_b,
    )
    .await;

    // A backup's parent lookup skips it: an incremental run finds b.
    let c = repo
        .backup(
            stream("b.sql", &data_b),
            BackupOptions::default().with_kind(BackupKind::Incremental),
        )
        .await
        .unwrap()
        .snapshot;
    assert_eq!(c.parent, Some(b.id));
    // Forget (of intact snapshots) works; the damaged one stays listed.
    assert_eq!(repo.forget(&[c.id.to_hex()]).await.unwrap(), vec![c.id]);
    // Forgetting the damaged one by id names its damage.
    let err = repo.forget(&[a.id.to_hex()]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("repair snapshots"), "{err}");

    // Repair moves it aside, byte for byte, and prune runs again.
    let damaged_bytes = mem.map()[&a_key].clone();
    let report = repo.repair_snapshots().await.unwrap();
    assert_eq!(report.moved.len(), 1, "{report:?}");
    assert_eq!(report.moved[0].path, a_path);
    assert_eq!(report.moved[0].snapshot_id(), Some(a.id));
    assert!(!mem.map().contains_key(&a_key));
    assert_eq!(
        mem.map()[&format!("repo/damaged/snapshots/{}", a.id)],
        damaged_bytes
    );
    assert!(repo.snapshot_listing().await.unwrap().damaged.is_empty());
    assert!(repo.repair_snapshots().await.unwrap().moved.is_empty());
    let before: usize = mem.map().values().map(Bytes::len).sum();
    let pruned = repo.prune(PruneOptions::default()).await.unwrap();
    assert!(
        pruned.packs_deleted + pruned.packs_repacked > 0,
        "a's data goes once its manifest is aside: {pruned:?}"
    );
    let after: usize = mem.map().values().map(Bytes::len).sum();
    assert!(after < before, "{before} -> {after}");
    let check = repo
        .check(CheckOptions::read_data(ReadDataSubset::All))
        .await
        .unwrap();
    assert!(check.is_ok(), "{:?}", check.problems);
    assert_eq!(
        restored(&repo, &b.id.to_hex(), "b.sql").await.unwrap(),
        data_b
    );
}

/// With the manifest at `path` damaged as `expected`: the listing names
/// it, everything else skips it, check reports it and prune refuses.
async fn assert_damaged_is_skipped(
    mem: &Memory,
    repo: &Repository,
    path: &str,
    expected: DocumentDamage,
    what: &str,
    intact_id: &str,
    intact_data: &[u8],
) {
    let listing = repo.snapshot_listing().await.unwrap();
    assert_eq!(listing.snapshots.len(), 1, "{what}");
    assert_eq!(listing.snapshots[0].id.to_hex(), intact_id, "{what}");
    assert_eq!(listing.damaged.len(), 1, "{what}");
    assert_eq!(listing.damaged[0].path, path, "{what}");
    assert_eq!(
        listing.damaged[0].damage, expected,
        "{what}: {}",
        listing.damaged[0]
    );
    assert!(!listing.damaged[0].reason.is_empty(), "{what}");
    let snapshots = repo.snapshots().await.unwrap();
    assert_eq!(snapshots.len(), 1, "{what}");
    // Restores of the intact snapshot, by id and as the latest.
    for id in [intact_id, "latest", &intact_id[..8]] {
        assert_eq!(
            restored(repo, id, "b.sql").await.unwrap(),
            intact_data,
            "{what}: restore {id}"
        );
    }
    // Reading the damaged one names it and what repairs it.
    let err = repo
        .snapshot(path.trim_start_matches("snapshots/"))
        .await
        .unwrap_err();
    let ie = integrity_error(&err).unwrap_or_else(|| panic!("{what}: typed: {err}"));
    assert_eq!(ie.object.as_deref(), Some(path), "{what}");
    // Check reports it as a problem.
    let report = repo.check(CheckOptions::structure()).await.unwrap();
    assert!(!report.is_ok(), "{what}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.as_deref() == Some(path)),
        "{what}: {:?}",
        report.problems
    );
    // Prune refuses, and deletes nothing.
    let before = contents(mem);
    let err = repo.prune(PruneOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition, "{what}: {err}");
    assert!(err.to_string().contains(path), "{what}: {err}");
    assert!(
        err.to_string().contains("repair snapshots"),
        "{what}: {err}"
    );
    let after = contents(mem);
    assert_eq!(
        before
            .keys()
            .filter(|k| !k.contains("/locks/"))
            .collect::<Vec<_>>(),
        after
            .keys()
            .filter(|k| !k.contains("/locks/"))
            .collect::<Vec<_>>(),
        "{what}: prune deleted nothing"
    );
}

/// Two backups of a directory, over several packs and two index files.
async fn two_backups(mem: &Memory) -> (Repository, tempfile::TempDir, String) {
    let repo = init(mem, small_chunks()).await;
    let src = tempfile::tempdir().unwrap();
    for i in 0..6u64 {
        write_file(
            &src.path().join(format!("dir{}/file{i}.bin", i % 2)),
            &random_bytes(1_200_000, i),
            0o640,
            1_600_000_000 + i,
        );
    }
    repo.backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    write_file(
        &src.path().join("later.bin"),
        &random_bytes(900_000, 9),
        0o600,
        1_700_000_000,
    );
    let last = repo
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap()
        .snapshot;
    assert_eq!(mem.keys_under("repo/index/").len(), 2);
    assert!(mem.keys_under("repo/data/").len() > 2, "several packs");
    (repo, src, last.id.to_hex())
}

async fn assert_restores_and_checks(repo: &Repository, src: &std::path::Path, id: &str) {
    let out = tempfile::tempdir().unwrap();
    repo.restore(id, out.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(src, out.path());
    let check = repo
        .check(CheckOptions::read_data(ReadDataSubset::All))
        .await
        .unwrap();
    assert!(check.is_ok(), "{:?}", check.problems);
    assert!(check.packs_read > 2);
}

/// Deleted index files: nothing is readable until `repair_index` rebuilds
/// the index from the packs' headers; then restore is byte-identical and
/// `check --read-data` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_rebuilds_deleted_index_files_from_the_packs() {
    let mem = Memory::default();
    let (repo, src, id) = two_backups(&mem).await;
    let packs = mem.keys_under("repo/data/").len() as u64;
    for k in mem.keys_under("repo/index/") {
        mem.map().remove(&k);
    }
    // The manifests are intact; the blobs cannot be found.
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
    let out = tempfile::tempdir().unwrap();
    assert!(
        repo.restore(&id, out.path(), RestoreOptions::default())
            .await
            .is_err()
    );
    // Prune must not take every pack for an orphan: it refuses.
    let before = contents(&mem);
    assert!(repo.prune(PruneOptions::default()).await.is_err());
    assert_eq!(contents(&mem).len(), before.len(), "prune deleted nothing");

    let report = repo.repair_index().await.unwrap();
    assert_eq!(report.packs_indexed, packs, "{report:?}");
    assert!(report.unreadable_packs.is_empty(), "{report:?}");
    assert_eq!(report.index_files_removed, 0);
    assert!(report.blobs > 8, "{report:?}");
    let name = report.index_file.clone().expect("a new index");
    assert_eq!(
        mem.keys_under("repo/index/"),
        [format!("repo/index/{name}")]
    );
    assert_restores_and_checks(&repo, src.path(), &id).await;
    // Nothing referenced went: prune finds nothing to delete.
    let pruned = repo.prune(PruneOptions::default()).await.unwrap();
    assert_eq!(
        pruned.packs_deleted + pruned.orphan_packs_deleted,
        0,
        "{pruned:?}"
    );
    assert_restores_and_checks(&repo, src.path(), &id).await;
}

/// Damaged index files: listing snapshots still works, what needs the index
/// fails with a typed error naming the file and `repair index`, check
/// reports them, and `repair_index` replaces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_replaces_damaged_index_files() {
    let mem = Memory::default();
    let (repo, src, id) = two_backups(&mem).await;
    let files = mem.keys_under("repo/index/");
    damage(&mem, &files[0], |b| {
        let mut flipped = b.to_vec();
        flipped[30] ^= 1;
        flipped.into()
    });
    damage(&mem, &files[1], |b| b.slice(..b.len() - 5));
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
    let out = tempfile::tempdir().unwrap();
    let err = repo
        .restore(&id, out.path(), RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("repair index"), "{err}");
    let object = integrity_error(&err)
        .and_then(|ie| ie.object.clone())
        .unwrap_or_else(|| panic!("names the index file: {err}"));
    assert!(
        files.contains(&format!("repo/{object}")),
        "{object} is one of {files:?}"
    );
    let err = repo
        .backup(stream("x", b"x"), BackupOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("repair index"), "{err}");
    let check = repo.check(CheckOptions::structure()).await.unwrap();
    let named: Vec<&str> = check
        .problems
        .iter()
        .filter_map(|p| p.object.as_deref())
        .collect();
    assert_eq!(named.len(), 2, "{:?}", check.problems);

    let report = repo.repair_index().await.unwrap();
    assert_eq!(report.damaged_index_files.len(), 2, "{report:?}");
    assert_eq!(report.index_files_removed, 2);
    let left = mem.keys_under("repo/index/");
    assert_eq!(left.len(), 1);
    assert!(!files.contains(&left[0]), "the damaged files are gone");
    assert_restores_and_checks(&repo, src.path(), &id).await;
    // A second repair reads the same packs and replaces the one file.
    let again = repo.repair_index().await.unwrap();
    assert_eq!(again.packs_indexed, report.packs_indexed);
    assert_eq!(again.index_files_removed, 1);
    assert_restores_and_checks(&repo, src.path(), &id).await;
}

/// A pack whose header was cut off is reported by `repair_index` and left
/// out; the other packs are indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_reports_a_pack_whose_header_is_damaged() {
    let mem = Memory::default();
    let (repo, _src, _) = two_backups(&mem).await;
    let packs = mem.keys_under("repo/data/");
    damage(&mem, &packs[0], |b| b.slice(..b.len() - 20));
    let report = repo.repair_index().await.unwrap();
    assert_eq!(report.packs_indexed, packs.len() as u64 - 1);
    assert_eq!(report.unreadable_packs.len(), 1, "{report:?}");
    let pack = report.unreadable_packs[0].pack.expect("names the pack");
    assert!(packs[0].ends_with(&pack.to_hex()));
    assert!(mem.map().contains_key(&packs[0]), "left where it is");
}

/// A crashed backup (its lock names a process that has ended) does not
/// block prune; prune removes what its uploads left, but never what a
/// writer may still be writing; `unlock` clears stale locks and, asked to,
/// live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_backup_leaves_nothing_that_blocks_or_stays() {
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let data = random_bytes(200_000, 5);
    let snap = repo
        .backup(stream("a.sql", &data), BackupOptions::default())
        .await
        .unwrap()
        .snapshot;

    // The crashed backup: a lock of an ended process of this machine, and
    // an upload it never finished.
    let probe = repo.lock(false, "probe").await.unwrap();
    let holder = repo.locks().await.unwrap()[0].holder.clone();
    probe.release().await;
    let host = holder.split(" pid ").next().unwrap().to_owned();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let ended = child.id();
    child.wait().unwrap();
    let now = SystemTime::now();
    let lock = serde_json::json!({
        "version": 1, "exclusive": false, "holder": format!("{host} pid {ended} backup"),
        "created": humantime::format_rfc3339_seconds(now - Duration::from_secs(600)).to_string(),
        "expires": humantime::format_rfc3339_seconds(now + Duration::from_secs(1200)).to_string(),
    });
    repo.write_raw_document(
        &format!("locks/{}", "c".repeat(64)),
        &serde_json::to_vec(&lock).unwrap(),
    )
    .await
    .unwrap();
    mem.leave_unfinished_put(
        "repo/data/ab/crashed-upload",
        now - Duration::from_secs(600),
    );
    // Another repository's leftovers on the same target are not ours.
    mem.leave_unfinished_put("elsewhere/data/ab/upload", now - Duration::from_secs(600));

    // A running backup (a live lock) blocks prune, which touches nothing.
    let running = repo.lock(false, "backup").await.unwrap();
    mem.leave_unfinished_put("repo/data/cd/running-upload", SystemTime::now());
    let err = repo.prune(PruneOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(mem.unfinished_ids().len(), 3);
    running.release().await;

    // Once the running backup is gone, its leftover is as abandoned as the
    // crashed one's; a put stamped after prune took its lock (newer than
    // the oldest live lock, as from a writer racing prune) stays.
    let later = SystemTime::now() + Duration::from_secs(3600);
    mem.leave_unfinished_put("repo/data/ef/started-during-prune", later);
    let dry = repo
        .prune(PruneOptions::default().with_dry_run(true))
        .await
        .unwrap();
    assert_eq!(dry.unfinished_puts_removed, 2, "{dry:?}");
    assert_eq!(mem.unfinished_ids().len(), 4, "a dry run removes nothing");
    let report = repo.prune(PruneOptions::default()).await.unwrap();
    assert_eq!(report.unfinished_puts_removed, 2, "{report:?}");
    assert_eq!(
        mem.unfinished_ids(),
        [
            "elsewhere/data/ab/upload".to_owned(),
            "repo/data/ef/started-during-prune".to_owned()
        ]
    );

    // unlock removes the crashed backup's lock, and only that.
    let live = repo.lock(false, "backup").await.unwrap();
    assert_eq!(repo.locks().await.unwrap().len(), 2);
    let removed = repo.unlock(false).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(
        removed[0].holder.contains(&format!("pid {ended} ")),
        "{removed:?}"
    );
    let left = repo.locks().await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(!left[0].is_abandoned(SystemTime::now()));
    // unlock with remove_all takes the live one too.
    let removed = repo.unlock(true).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(repo.locks().await.unwrap().is_empty());
    live.release().await;
    assert_eq!(repo.unlock(false).await.unwrap().len(), 0);
    let check = repo
        .check(CheckOptions::read_data(ReadDataSubset::All))
        .await
        .unwrap();
    assert!(check.is_ok(), "{:?}", check.problems);
    assert_eq!(
        restored(&repo, &snap.id.to_hex(), "a.sql").await.unwrap(),
        data
    );
}

/// A lock object that does not open blocks as an exclusive lock would
/// (whose it is cannot be known) until it is a lock's lifetime old;
/// `unlock` with `remove_all` removes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_lock_blocks_until_removed_and_does_not_break_listing() {
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let key = format!("repo/locks/{}", "d".repeat(64));
    mem.map()
        .insert(key.clone(), Bytes::from_static(b"garbage, not a lock"));
    let locks = repo.locks().await.unwrap();
    assert_eq!(locks.len(), 1);
    assert!(locks[0].exclusive);
    assert!(locks[0].holder.contains("damaged"), "{:?}", locks[0]);
    let err = repo
        .backup(stream("a.sql", b"abc"), BackupOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(
        repo.unlock(false).await.unwrap().is_empty(),
        "not stale yet"
    );
    assert_eq!(repo.unlock(true).await.unwrap().len(), 1);
    assert!(!mem.map().contains_key(&key));
    repo.backup(stream("a.sql", b"abc"), BackupOptions::default())
        .await
        .unwrap();
}

/// A damaged manifest neither stops the repository from opening nor its
/// listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_manifests_do_not_stop_opening_the_repository() {
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let snap = repo
        .backup(stream("a.sql", b"abc"), BackupOptions::default())
        .await
        .unwrap()
        .snapshot;
    mem.map().insert(
        format!("repo/snapshots/{}", snap.id),
        Bytes::from_static(b"x"),
    );
    let reopened = Repository::open(
        std::sync::Arc::new(mem.clone()),
        common::prefix(),
        &KeySource::passphrase(common::PASS),
    )
    .await
    .unwrap();
    let listing = reopened.snapshot_listing().await.unwrap();
    assert!(listing.snapshots.is_empty());
    assert_eq!(listing.damaged[0].damage, DocumentDamage::Truncated);
}
