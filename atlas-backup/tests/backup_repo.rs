//! The backup repository engine (`atlas_backup::repo`) end to end,
//! over an in-memory target and temporary directories.
//!
//! Unix only: the trees under test have Unix permission bits, symlinks,
//! fifos and sockets, which restore reproduces on Unix alone.

#![cfg(unix)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atlas_backup::repo::{
    BackupKind, BackupOptions, CheckOptions, DirectorySource, KdfParams, KeySource, MirrorPolicy,
    MirrorSet, Progress, ProgressFn, PruneOptions, ReadDataSubset, Repository, RestoreOptions,
    RootMetadata, StreamSource, integrity_error, sync,
};
use atlas_core::ErrorKind;
use atlas_core::backup::BackupTarget;
use atlas_core::testing::backup_faults::{self, FaultyTarget};
use atlas_core::testing::{Fault, FaultError};
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};

mod common;
use common::{
    Memory, PASS, assert_same_tree, describe, fast_init, init, prefix, random_bytes, set_mtime,
    small_chunks, write_file,
};

fn counting_progress() -> (atlas_backup::repo::ProgressFn, Arc<AtomicU64>) {
    let read = Arc::new(AtomicU64::new(0));
    let r2 = read.clone();
    let f: atlas_backup::repo::ProgressFn = Arc::new(move |p: &Progress| {
        r2.store(p.bytes_read, Ordering::Relaxed);
    });
    (f, read)
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_tree_round_trips_byte_identical() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    let mib = 1024 * 1024;
    // Sizes around FastCDC's bounds (256 KiB min, 1 MiB avg, 4 MiB max).
    let sizes = [
        0,
        1,
        4095,
        256 * 1024 - 1,
        256 * 1024,
        256 * 1024 + 1,
        mib,
        4 * mib - 1,
        4 * mib,
        4 * mib + 1,
        9 * mib + 7,
    ];
    for (i, size) in sizes.iter().enumerate() {
        let mode = [0o644, 0o600, 0o755, 0o444][i % 4];
        write_file(
            &root.join(format!("d{}/sub{}/f{i}.bin", i % 3, i % 2)),
            &random_bytes(*size, i as u64 + 1),
            mode,
            1_600_000_000 + i as u64,
        );
    }
    // One 64 MiB file, and a duplicate of a small one (dedup inside a run).
    write_file(
        &root.join("big/huge.bin"),
        &random_bytes(64 * mib, 99),
        0o640,
        1_700_000_000,
    );
    write_file(
        &root.join("copy.bin"),
        &random_bytes(mib, 7),
        0o644,
        1_650_000_000,
    );
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    std::os::unix::fs::symlink("d0/sub0/f0.bin", root.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("d1/dangling")).unwrap();
    // A special file: skipped and counted.
    let _sock = std::os::unix::net::UnixListener::bind(root.join("d2/app.sock")).unwrap();
    fs::set_permissions(root.join("d1"), fs::Permissions::from_mode(0o750)).unwrap();
    for d in [
        "d0/sub0",
        "d0/sub1",
        "d0",
        "d1/sub0",
        "d1/sub1",
        "d1",
        "d2/sub0",
        "d2/sub1",
        "d2",
        "big",
        "empty/nested-empty",
        "empty",
    ] {
        set_mtime(&root.join(d), 1_500_000_000);
    }

    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    let report = repo
        .backup(
            DirectorySource::new(root).with_name("generated"),
            BackupOptions::default().with_tag("t1").with_host("h1"),
        )
        .await
        .unwrap();
    let t = report.snapshot.totals;
    assert_eq!(t.files, sizes.len() as u64 + 2);
    assert_eq!(t.symlinks, 2);
    assert_eq!(t.skipped, 1, "the socket is skipped");
    let total: u64 = sizes.iter().map(|s| *s as u64).sum::<u64>() + 65 * mib as u64;
    assert_eq!(t.bytes, total);
    assert!(t.new_bytes < total, "the duplicate file is stored once");
    // Few objects: packs of about 16 MiB.
    let packs = mem.keys_under("repo/data/").len();
    assert!((1..=12).contains(&packs), "{packs} packs for ~95 MiB");

    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].source, "generated");
    assert_eq!(snaps[0].host, "h1");
    assert_eq!(snaps[0].tags, vec!["t1".to_owned()]);

    // Whole snapshot, opened afresh (nothing cached).
    let reopened = Repository::open(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
    )
    .await
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let (progress, _) = counting_progress();
    let r = reopened
        .restore(
            "latest",
            out.path(),
            RestoreOptions::default().with_progress(progress),
        )
        .await
        .unwrap();
    assert_eq!(r.files, sizes.len() as u64 + 2);
    fs::remove_file(root.join("d2/app.sock")).unwrap();
    set_mtime(&root.join("d2"), 1_500_000_000);
    assert_same_tree(root, out.path());
    assert!(
        !describe(out.path())
            .keys()
            .any(|k| k.contains("atlas-restore")),
        "no temporary file left"
    );

    // A sub-path.
    let part = tempfile::tempdir().unwrap();
    reopened
        .restore(
            &report.snapshot.id.to_hex()[..8],
            part.path(),
            RestoreOptions::default().with_path("d1/sub1"),
        )
        .await
        .unwrap();
    assert_same_tree(&root.join("d1/sub1"), &part.path().join("d1/sub1"));
    assert_eq!(fs::read_dir(part.path().join("d1")).unwrap().count(), 1);

    // One file as a stream.
    let (node, body) = reopened
        .restore_file_stream("latest", "big/huge.bin")
        .await
        .unwrap();
    assert_eq!(node.size, 64 * mib as u64);
    let chunks: Vec<Bytes> = body.try_collect().await.unwrap();
    assert!(chunks.concat() == random_bytes(64 * mib, 99));
    let Err(missing) = reopened.restore_file_stream("latest", "no/such").await else {
        panic!("a missing path must fail")
    };
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_source_is_stored_as_one_file() {
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let dump = random_bytes(3 * 1024 * 1024 + 5, 5);
    let (rd, mut wr) = tokio::io::duplex(64 * 1024);
    let writer = {
        let dump = dump.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            wr.write_all(&dump).await.unwrap();
            wr.shutdown().await.unwrap();
        })
    };
    let source = StreamSource::from_async_read("orders.sql", rd).with_name("pg_dump:orders");
    let report = repo
        .backup(
            source,
            BackupOptions::default().with_kind(BackupKind::PointInTime),
        )
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!(report.snapshot.kind, BackupKind::PointInTime);
    assert_eq!(report.snapshot.source, "pg_dump:orders");
    assert_eq!(report.snapshot.totals.bytes, dump.len() as u64);
    let (_, body) = repo
        .restore_file_stream("latest", "orders.sql")
        .await
        .unwrap();
    let got: Vec<Bytes> = body.try_collect().await.unwrap();
    assert!(got.concat() == dump);

    // A stream that fails midway commits nothing.
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from(random_bytes(100_000, 1))),
        Err(atlas_core::Error::backend("pg_dump", "exit status 1")),
    ])
    .boxed();
    let err = repo
        .backup(
            StreamSource::from_stream("bad.sql", failing),
            BackupOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exit status 1"), "{err}");
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
}

/// 64 MiB in 16 files; ~1 % (two regions of 320 KiB) changes.
fn changing_tree(root: &Path) -> u64 {
    for i in 0..16u64 {
        write_file(
            &root.join(format!("dir{}/file{i}.bin", i % 4)),
            &random_bytes(4 << 20, 1000 + i),
            0o644,
            1_600_000_000,
        );
    }
    64 << 20
}

fn change_one_percent(root: &Path) -> u64 {
    let mut changed = 0;
    for (i, at) in [(3u64, 1_000_000usize), (11, 2_500_000)] {
        let p = root.join(format!("dir{}/file{i}.bin", i % 4));
        let mut d = fs::read(&p).unwrap();
        let region = 320 * 1024;
        d[at..at + region].copy_from_slice(&random_bytes(region, 77 + i));
        write_file(&p, &d, 0o644, 1_600_000_500);
        changed += region as u64;
    }
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backup_after_a_one_percent_change_stores_about_one_percent() {
    let src = tempfile::tempdir().unwrap();
    let total = changing_tree(src.path());
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let first = repo
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    assert!(first.snapshot.totals.new_bytes >= total);
    let changed = change_one_percent(src.path());
    let second = repo
        .backup(
            DirectorySource::new(src.path()),
            BackupOptions::default().with_kind(BackupKind::Full),
        )
        .await
        .unwrap();
    let new = second.snapshot.totals.new_bytes;
    assert!(
        new >= changed,
        "at least the changed bytes are new: {new} < {changed}"
    );
    assert!(
        (new as f64) < 0.03 * total as f64,
        "new bytes {new} should be under 3 % of {total} (changed {changed})"
    );
    let stored_before: u64 = mem
        .map()
        .iter()
        .filter(|(k, _)| k.starts_with("repo/data/"))
        .map(|(_, v)| v.len() as u64)
        .sum();
    assert!(
        stored_before < total + total / 20,
        "the repository holds little more than one copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_skip_unchanged_files_and_full_runs_read_everything() {
    let src = tempfile::tempdir().unwrap();
    let total = changing_tree(src.path());
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let (p1, read1) = counting_progress();
    repo.backup(
        DirectorySource::new(src.path()),
        BackupOptions::default().with_progress(p1),
    )
    .await
    .unwrap();
    assert_eq!(
        read1.load(Ordering::Relaxed),
        total,
        "the first run reads everything"
    );

    change_one_percent(src.path());
    let (p2, read2) = counting_progress();
    let inc = repo
        .backup(
            DirectorySource::new(src.path()),
            BackupOptions::default().with_progress(p2),
        )
        .await
        .unwrap();
    assert_eq!(
        read2.load(Ordering::Relaxed),
        2 * (4 << 20),
        "only the two changed files are read"
    );
    assert_eq!(inc.snapshot.totals.bytes_read, 2 * (4 << 20));
    assert_eq!(inc.snapshot.totals.bytes, total);
    assert!(inc.snapshot.parent.is_some());
    assert_eq!(inc.snapshot.kind, BackupKind::Incremental);

    let (p3, read3) = counting_progress();
    let full = repo
        .backup(
            DirectorySource::new(src.path()),
            BackupOptions::default()
                .with_kind(BackupKind::Full)
                .with_progress(p3),
        )
        .await
        .unwrap();
    assert_eq!(
        read3.load(Ordering::Relaxed),
        total,
        "a full run reads everything again"
    );
    assert_eq!(full.snapshot.totals.new_bytes, 0, "and finds nothing new");
    assert_eq!(
        full.snapshot.tree, inc.snapshot.tree,
        "both runs describe the same tree"
    );

    let out = tempfile::tempdir().unwrap();
    repo.restore(
        &inc.snapshot.id.to_hex(),
        out.path(),
        RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert_same_tree(src.path(), out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_encrypted_and_a_wrong_passphrase_fails_cleanly() {
    let marker = "ATLAS-PLAINTEXT-MARKER-7f3a9c";
    let src = tempfile::tempdir().unwrap();
    write_file(
        &src.path().join(format!("{marker}.txt")),
        marker.repeat(5000).as_bytes(),
        0o644,
        1_600_000_000,
    );
    write_file(
        &src.path().join("other.txt"),
        format!("x {marker} y").as_bytes(),
        0o644,
        1_600_000_000,
    );
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    repo.backup(
        DirectorySource::new(src.path()).with_name("secret-source"),
        BackupOptions::default().with_tag("secret-tag"),
    )
    .await
    .unwrap();
    for (key, value) in mem.map().iter() {
        for needle in [
            marker.as_bytes(),
            b"secret-source".as_slice(),
            b"secret-tag".as_slice(),
        ] {
            assert!(
                !value.windows(needle.len()).any(|w| w == needle),
                "{key} contains plaintext {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    let err = Repository::open(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase("wrong"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("wrong key or passphrase"), "{err}");
    let err = Repository::open(Arc::new(mem.clone()), prefix(), &KeySource::Raw([1; 32]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = Repository::open(
        Arc::new(Memory::default()),
        prefix(),
        &KeySource::passphrase(PASS),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(!format!("{repo:?}").contains(PASS));
    let again = Repository::init(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
        fast_init(),
    )
    .await
    .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_caught_by_check_and_restore_and_nothing_is_restored_silently() {
    let src = tempfile::tempdir().unwrap();
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    // A big file in its own packs, small files in the last pack.
    write_file(
        &src.path().join("victim.bin"),
        &random_bytes(2 << 20, 3),
        0o644,
        1_600_000_000,
    );
    let first = repo
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let victim_packs = mem.keys_under("repo/data/");
    write_file(
        &src.path().join("bystander.txt"),
        b"still fine",
        0o644,
        1_600_000_000,
    );
    repo.backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    assert!(
        repo.check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap()
            .is_ok()
    );

    // Flip a byte inside the first blob of the first pack.
    let bad_key = victim_packs[0].clone();
    let bad_pack = bad_key.rsplit('/').next().unwrap().to_owned();
    {
        let mut map = mem.map();
        let mut v = map[&bad_key].to_vec();
        v[100] ^= 0x01;
        map.insert(bad_key.clone(), v.into());
    }
    let structure = repo.check(CheckOptions::structure()).await.unwrap();
    assert!(
        structure.is_ok(),
        "the structure is intact: {:?}",
        structure.problems
    );
    let report = repo
        .check(CheckOptions::read_data(ReadDataSubset::All))
        .await
        .unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.pack.map(|p| p.to_hex()) == Some(bad_pack.clone())),
        "every problem names the damaged pack: {:?}",
        report.problems
    );
    assert!(report.problems[0].to_string().contains(&bad_pack));

    let out = tempfile::tempdir().unwrap();
    let err = repo
        .restore("latest", out.path(), RestoreOptions::default())
        .await
        .unwrap_err();
    let ie = integrity_error(&err).expect("a typed integrity error");
    assert_eq!(ie.path.as_deref(), Some("victim.bin"));
    assert_eq!(ie.pack.map(|p| p.to_hex()), Some(bad_pack.clone()));
    assert!(ie.snapshot.is_some() && ie.blob.is_some());
    assert!(
        err.to_string().contains("victim.bin") && err.to_string().contains(&bad_pack),
        "{err}"
    );
    let left = describe(out.path());
    assert!(
        !left.contains_key("victim.bin"),
        "the damaged file is not restored"
    );
    assert!(
        left.keys().all(|k| !k.contains("atlas-restore")),
        "no temporary file left: {left:?}"
    );
    assert_eq!(
        fs::read(out.path().join("bystander.txt")).unwrap(),
        b"still fine"
    );

    let (_, body) = repo
        .restore_file_stream(&first.snapshot.id.to_hex(), "victim.bin")
        .await
        .unwrap();
    let items: Vec<atlas_core::Result<Bytes>> = body.collect().await;
    let e = items
        .into_iter()
        .find_map(|i| i.err())
        .expect("the stream reports the damage");
    assert_eq!(
        integrity_error(&e).and_then(|i| i.path.clone()).as_deref(),
        Some("victim.bin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_mid_backup_leaves_no_snapshot_and_prune_removes_the_orphans() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..6u64 {
        write_file(
            &src.path().join(format!("f{i}")),
            &random_bytes(1 << 20, i),
            0o644,
            1_600_000_000,
        );
    }
    let mem = Memory::default();
    let faulty = FaultyTarget::new(mem.clone());
    let repo = Repository::init(
        Arc::new(faulty.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
        small_chunks(),
    )
    .await
    .unwrap();
    // Puts so far: key file, config. Then: lock, pack, pack, (fail).
    let before = faulty.plan().calls(backup_faults::PUT);
    faulty
        .plan()
        .add(
            Fault::fail(FaultError::backend("disk full"))
                .on(backup_faults::PUT)
                .nth_call(before + 4),
        )
        .unwrap();
    let err = repo
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(
        repo.snapshots().await.unwrap().is_empty(),
        "no snapshot is visible"
    );
    assert!(mem.keys_under("repo/snapshots/").is_empty());
    assert!(mem.keys_under("repo/index/").is_empty());
    let orphans = mem.keys_under("repo/data/");
    assert!(
        !orphans.is_empty(),
        "the packs uploaded before the failure remain"
    );
    assert!(
        mem.keys_under("repo/locks/").is_empty(),
        "the lock was released"
    );

    faulty.plan().clear();
    let ok = repo
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    assert!(
        ok.snapshot.totals.new_bytes >= 6 << 20,
        "all data is stored again: orphans are not indexed"
    );
    let check = repo.check(CheckOptions::structure()).await.unwrap();
    assert!(check.is_ok());
    assert_eq!(check.unreferenced_packs as usize, orphans.len());
    let pruned = repo.prune(PruneOptions::default()).await.unwrap();
    assert_eq!(pruned.orphan_packs_deleted as usize, orphans.len());
    for o in &orphans {
        assert!(!mem.map().contains_key(o), "{o} was removed");
    }
    assert!(
        repo.check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap()
            .is_ok()
    );
    let out = tempfile::tempdir().unwrap();
    repo.restore("latest", out.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sets_meet_their_policy_and_sync_catches_a_lagging_target_up() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..4u64 {
        write_file(
            &src.path().join(format!("d/f{i}")),
            &random_bytes(700_000, i),
            0o600,
            1_600_000_000,
        );
    }
    let (a, b, c) = (Memory::default(), Memory::default(), Memory::default());
    let c_faulty = FaultyTarget::new(c.clone());
    let ra = init(&a, small_chunks()).await;
    let rb = Repository::init_mirror(&ra, Arc::new(b.clone()), prefix())
        .await
        .unwrap();
    let rc = Repository::init_mirror(&ra, Arc::new(c_faulty.clone()), prefix())
        .await
        .unwrap();
    // The mirror opens with the same passphrase.
    Repository::open(Arc::new(b.clone()), prefix(), &KeySource::passphrase(PASS))
        .await
        .unwrap();
    // C accepts nothing any more.
    c_faulty
        .plan()
        .add(Fault::fail(FaultError::backend("c is down")).on(backup_faults::PUT))
        .unwrap();

    let all = MirrorSet::new(vec![ra.clone(), rb.clone(), rc.clone()], MirrorPolicy::All).unwrap();
    let err = all
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("c is down"), "{err}");
    assert!(ra.snapshots().await.unwrap().is_empty() && rb.snapshots().await.unwrap().is_empty());

    let quorum = MirrorSet::new(
        vec![ra.clone(), rb.clone(), rc.clone()],
        MirrorPolicy::Quorum(2),
    )
    .unwrap();
    let report = quorum
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    assert!(report.targets[0].error.is_none() && report.targets[1].error.is_none());
    assert!(
        report.targets[2]
            .error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("c is down")
    );
    let id = report.snapshot.id;
    assert_eq!(ra.snapshots().await.unwrap()[0].id, id);
    assert_eq!(rb.snapshots().await.unwrap()[0].id, id);
    assert!(rc.snapshots().await.unwrap().is_empty());
    assert!(MirrorSet::new(vec![ra.clone()], MirrorPolicy::Quorum(2)).is_err());
    let stranger = init(&Memory::default(), fast_init()).await;
    assert!(MirrorSet::new(vec![ra.clone(), stranger.clone()], MirrorPolicy::All).is_err());

    // C recovers; sync brings it up to date.
    c_faulty.plan().clear();
    let synced = sync(&ra, &rc, None).await.unwrap();
    assert_eq!(synced.snapshots, 1);
    assert!(synced.packs >= 1);
    assert_eq!(rc.snapshots().await.unwrap(), ra.snapshots().await.unwrap());
    assert_eq!(
        sync(&ra, &rc, None).await.unwrap().packs,
        0,
        "a second sync copies nothing"
    );
    assert!(sync(&ra, &stranger, None).await.is_err());
    let out = tempfile::tempdir().unwrap();
    rc.restore(&id.to_hex(), out.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
    assert!(
        rc.check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_is_referenced_and_respects_locks() {
    let src1 = tempfile::tempdir().unwrap();
    let src2 = tempfile::tempdir().unwrap();
    let shared = random_bytes(1_500_000, 42);
    write_file(
        &src1.path().join("shared.bin"),
        &shared,
        0o644,
        1_600_000_000,
    );
    write_file(
        &src1.path().join("only-in-1.bin"),
        &random_bytes(3_000_000, 1),
        0o644,
        1_600_000_000,
    );
    write_file(
        &src2.path().join("shared.bin"),
        &shared,
        0o644,
        1_600_000_000,
    );
    write_file(
        &src2.path().join("only-in-2.bin"),
        &random_bytes(2_000_000, 2),
        0o644,
        1_600_000_000,
    );
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let s1 = repo
        .backup(DirectorySource::new(src1.path()), BackupOptions::default())
        .await
        .unwrap();
    let s2 = repo
        .backup(DirectorySource::new(src2.path()), BackupOptions::default())
        .await
        .unwrap();

    // A backup in progress (its lock) blocks prune.
    let lock = repo.lock(false, "backup").await.unwrap();
    let err = repo.prune(PruneOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("backup"), "{err}");
    // And a prune (exclusive) blocks a backup.
    lock.release().await;
    let prune_lock = repo.lock(true, "prune").await.unwrap();
    let err = repo
        .backup(DirectorySource::new(src2.path()), BackupOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    prune_lock.release().await;

    // A crashed holder's lock blocks until it expires, then can be broken.
    let stale = repo
        .lock_with_ttl(false, "crashed backup", Duration::from_millis(300))
        .await
        .unwrap();
    stale.leak();
    assert_eq!(
        repo.prune(PruneOptions::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(repo.break_stale_locks().await.unwrap(), 0, "not yet stale");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(repo.break_stale_locks().await.unwrap(), 1);
    assert!(repo.locks().await.unwrap().is_empty());

    let forgotten = repo
        .forget(&[s1.snapshot.id.to_hex()[..10].to_owned()])
        .await
        .unwrap();
    assert_eq!(forgotten, vec![s1.snapshot.id]);
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
    let bytes_before: usize = mem.map().values().map(|v| v.len()).sum();
    let dry = repo
        .prune(PruneOptions::default().with_dry_run(true))
        .await
        .unwrap();
    assert_eq!(
        mem.map().values().map(|v| v.len()).sum::<usize>(),
        bytes_before,
        "a dry run changes nothing"
    );
    let report = repo.prune(PruneOptions::default()).await.unwrap();
    assert_eq!(
        report.packs_deleted + report.packs_repacked,
        dry.packs_deleted + dry.packs_repacked
    );
    assert!(
        report.packs_deleted + report.packs_repacked > 0,
        "{report:?}"
    );
    let bytes_after: usize = mem.map().values().map(|v| v.len()).sum();
    // only-in-1.bin: 3 MB of plaintext, about 1 MB once compressed.
    assert!(
        bytes_after + 700_000 < bytes_before,
        "only-in-1 is gone: {bytes_before} -> {bytes_after}"
    );
    assert!(report.bytes_freed > 700_000, "{report:?}");
    assert_eq!(mem.keys_under("repo/index/").len(), 1, "one index remains");

    assert!(
        repo.check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap()
            .is_ok()
    );
    let out = tempfile::tempdir().unwrap();
    repo.restore(
        &s2.snapshot.id.to_hex(),
        out.path(),
        RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert_same_tree(src2.path(), out.path());
    // Pruning again finds nothing more to do.
    let again = repo.prune(PruneOptions::default()).await.unwrap();
    assert_eq!(
        again.packs_deleted + again.packs_repacked + again.orphan_packs_deleted,
        0
    );
    // Check subsets.
    let part = repo
        .check(CheckOptions::read_data(ReadDataSubset::Part { n: 1, m: 1 }))
        .await
        .unwrap();
    assert_eq!(part.packs_read, part.packs);
    assert!(
        repo.check(CheckOptions::read_data(ReadDataSubset::Fraction(0.0)))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_passphrase_keeps_the_data_and_retires_the_old_one() {
    let src = tempfile::tempdir().unwrap();
    write_file(&src.path().join("a.txt"), b"hello", 0o644, 1_600_000_000);
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    repo.backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let old = repo.keys().await.unwrap();
    assert_eq!(old.len(), 1);
    assert!(old[0].current);
    assert_eq!(
        repo.remove_key(&old[0].id).await.unwrap_err().kind(),
        ErrorKind::Precondition
    );
    repo.add_key(
        &KeySource::passphrase("new passphrase"),
        KdfParams::insecure_fast(),
        "rotated",
    )
    .await
    .unwrap();
    let raw = [9u8; 32];
    repo.add_key(&KeySource::Raw(raw), KdfParams::insecure_fast(), "kms")
        .await
        .unwrap();
    repo.remove_key(&old[0].id).await.unwrap();
    assert_eq!(repo.keys().await.unwrap().len(), 2);
    assert_eq!(
        repo.remove_key("nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let target: Arc<dyn BackupTarget> = Arc::new(mem.clone());
    let err = Repository::open(target.clone(), prefix(), &KeySource::passphrase(PASS))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let reopened = Repository::open(
        target.clone(),
        prefix(),
        &KeySource::passphrase("new passphrase"),
    )
    .await
    .unwrap();
    let by_raw = Repository::open(target, prefix(), &KeySource::raw(&raw).unwrap())
        .await
        .unwrap();
    assert_eq!(by_raw.key_fingerprint(), reopened.key_fingerprint());
    let out = tempfile::tempdir().unwrap();
    reopened
        .restore("latest", out.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(fs::read(out.path().join("a.txt")).unwrap(), b"hello");
    assert!(KeySource::raw(&[1, 2, 3]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_rules_pick_from_the_repositorys_snapshots() {
    use atlas_backup::retention::RetentionPolicy;
    let src = tempfile::tempdir().unwrap();
    write_file(&src.path().join("a.txt"), b"v", 0o644, 1_600_000_000);
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    // Three snapshots on two days: keep-daily 2 keeps the newest of each day.
    let day = |d: u64, h: u64| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + d * 86_400 + h * 3_600)
    };
    let mut ids = Vec::new();
    for t in [day(0, 1), day(0, 5), day(1, 2)] {
        let r = repo
            .backup(
                DirectorySource::new(src.path()),
                BackupOptions::default().with_time(t).with_host("h"),
            )
            .await
            .unwrap();
        ids.push(r.snapshot.id.to_hex());
    }
    let infos: Vec<_> = repo
        .snapshots()
        .await
        .unwrap()
        .iter()
        .map(|s| s.retention_info().unwrap())
        .collect();
    let policy = RetentionPolicy::builder().keep_daily(2u32).build().unwrap();
    let plan = policy
        .apply(&infos, jiff::Timestamp::try_from(day(2, 0)).unwrap())
        .unwrap();
    let mut kept: Vec<&str> = plan.kept_ids().collect();
    kept.sort();
    let mut want = vec![ids[1].as_str(), ids[2].as_str()];
    want.sort();
    assert_eq!(kept, want);
    assert_eq!(plan.removed_ids().collect::<Vec<_>>(), [ids[0].as_str()]);
    // Forgetting what the plan removes leaves exactly the kept snapshots.
    let removed: Vec<String> = plan.removed_ids().map(str::to_owned).collect();
    repo.forget(&removed).await.unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------
// Unreadable entries, changing files, symlink and root metadata, mirror keys.

/// A progress callback that runs `hook` on every update, so a test can
/// change the source at a precise point of the backup: the backup reports
/// `current` just before it lists a directory or opens a file, and bytes
/// read after each chunk.
fn hooked_progress(hook: impl Fn(&Progress) + Send + Sync + 'static) -> ProgressFn {
    Arc::new(move |p: &Progress| hook(p))
}

/// Captures what `tracing` writes on this thread (the backup's walk is
/// polled on the test's thread: nothing of it is spawned).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

fn once_at(
    name: &'static str,
    action: impl Fn() + Send + Sync + 'static,
) -> impl Fn(&Progress) + Send + Sync + 'static {
    let done = std::sync::atomic::AtomicBool::new(false);
    move |p: &Progress| {
        if p.current.as_deref() == Some(name) && !done.swap(true, Ordering::SeqCst) {
            action();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_vanish_before_they_are_read_are_left_out_and_named() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().to_path_buf();
    write_file(&root.join("keep.txt"), b"kept", 0o644, 1_600_000_000);
    write_file(&root.join("victim.txt"), b"gone soon", 0o644, 1_600_000_000);
    write_file(
        &root.join("gone_dir/inner.txt"),
        b"inner",
        0o644,
        1_600_000_000,
    );
    write_file(&root.join("stays/deep.txt"), b"deep", 0o644, 1_600_000_000);
    // Both were listed as present; each disappears right before the backup
    // opens the file or lists the directory (root cannot be kept out of a
    // mode-000 file, so vanishing is the unreadable case to test).
    let (r1, r2) = (root.clone(), root.clone());
    let file_hook = once_at("victim.txt", move || {
        fs::remove_file(r1.join("victim.txt")).unwrap()
    });
    let dir_hook = once_at("gone_dir", move || {
        fs::remove_dir_all(r2.join("gone_dir")).unwrap()
    });
    let progress = hooked_progress(move |p| {
        file_hook(p);
        dir_hook(p);
    });
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let report = repo
        .backup(
            DirectorySource::new(&root),
            BackupOptions::default().with_progress(progress),
        )
        .await
        .expect("an unreadable entry does not fail the backup");
    drop(guard);

    let paths: Vec<&str> = report.unreadable.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["gone_dir", "victim.txt"]);
    assert!(
        report.unreadable[0]
            .reason
            .starts_with("cannot list directory"),
        "{:?}",
        report.unreadable[0]
    );
    assert!(
        report.unreadable[1].reason.starts_with("cannot open"),
        "{:?}",
        report.unreadable[1]
    );
    let logs = logs.text();
    for path in paths {
        assert!(
            logs.lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("path={path}"))),
            "a warning names {path}: {logs}"
        );
    }
    let snap = &report.snapshot;
    assert_eq!(snap.totals.unreadable, 2);
    assert!(!snap.is_complete());
    assert_eq!(snap.totals.files, 2, "keep.txt and stays/deep.txt");
    // The manifest says so to whoever lists the snapshots later.
    let listed = Repository::open(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
    )
    .await
    .unwrap()
    .snapshots()
    .await
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].is_complete());
    assert_eq!(listed[0].unreadable, report.unreadable);
    assert_eq!(listed[0].totals.unreadable, 2);

    // What was read restores; what was not is simply absent.
    let out = tempfile::tempdir().unwrap();
    repo.restore("latest", out.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(&root, out.path());
    assert!(!out.path().join("victim.txt").exists() && !out.path().join("gone_dir").exists());

    // The next backup sees everything again and is complete.
    let again = repo
        .backup(DirectorySource::new(&root), BackupOptions::default())
        .await
        .unwrap();
    assert!(again.unreadable.is_empty() && again.snapshot.is_complete());
    assert!(repo.snapshots().await.unwrap()[1].is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_swapped_for_a_fifo_or_a_symlink_after_listing_are_not_followed() {
    let src = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = src.path().to_path_buf();
    write_file(&root.join("to-fifo.txt"), b"plain", 0o644, 1_600_000_000);
    write_file(&root.join("to-link.txt"), b"plain", 0o644, 1_600_000_000);
    write_file(
        &outside.path().join("secret"),
        b"not part of the source",
        0o600,
        1,
    );
    let (r1, r2, secret) = (root.clone(), root.clone(), outside.path().join("secret"));
    let fifo_hook = once_at("to-fifo.txt", move || {
        let p = r1.join("to-fifo.txt");
        fs::remove_file(&p).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    });
    let link_hook = once_at("to-link.txt", move || {
        let p = r2.join("to-link.txt");
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&secret, &p).unwrap();
    });
    let progress = hooked_progress(move |p| {
        fifo_hook(p);
        link_hook(p);
    });
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    // A fifo opened for reading blocks until a writer comes: bound the wait.
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        repo.backup(
            DirectorySource::new(&root),
            BackupOptions::default().with_progress(progress),
        ),
    )
    .await
    .expect("the backup does not wait on a fifo")
    .unwrap();
    let got: Vec<(&str, &str)> = report
        .unreadable
        .iter()
        .map(|e| (e.path.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], ("to-fifo.txt", "is no longer a regular file"));
    assert_eq!(got[1].0, "to-link.txt");
    assert!(got[1].1.starts_with("cannot open"), "{got:?}");
    assert_eq!(report.snapshot.totals.files, 0);
    assert_eq!(report.snapshot.totals.bytes, 0, "the secret was not read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_grows_or_shrinks_while_read_is_stored_as_read() {
    let mib = 1024 * 1024;
    let original = random_bytes(2 * mib, 21);
    let mem = Memory::default();
    let repo = init(&mem, small_chunks()).await;
    let check_stored = |name: &'static str| {
        let repo = repo.clone();
        async move {
            let (node, body) = repo.restore_file_stream("latest", name).await.unwrap();
            let content: Vec<Bytes> = body.try_collect().await.unwrap();
            let content = content.concat();
            assert_eq!(
                node.size,
                content.len() as u64,
                "{name}: size matches the bytes stored"
            );
            content
        }
    };

    // Grows after its first chunk is read: stored as it was when opened.
    let grow = tempfile::tempdir().unwrap();
    let path = grow.path().join("growing.log");
    write_file(&path, &original, 0o644, 1_600_000_000);
    let p2 = path.clone();
    let appended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a2 = appended.clone();
    let progress = hooked_progress(move |p| {
        if p.bytes_read > 0 && !a2.swap(true, Ordering::SeqCst) {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&p2).unwrap();
            f.write_all(&random_bytes(mib, 22)).unwrap();
        }
    });
    let report = repo
        .backup(
            DirectorySource::new(grow.path()),
            BackupOptions::default().with_progress(progress),
        )
        .await
        .unwrap();
    assert!(
        appended.load(Ordering::SeqCst),
        "the file grew during the read"
    );
    assert!(report.unreadable.is_empty());
    assert_eq!(report.snapshot.totals.bytes, original.len() as u64);
    let stored = check_stored("growing.log").await;
    assert!(stored == original, "the bytes up to the size at open");

    // Shrinks after its first chunk is read: stored as far as it was read.
    let shrink = tempfile::tempdir().unwrap();
    let path = shrink.path().join("shrinking.bin");
    write_file(&path, &original, 0o644, 1_600_000_000);
    let p2 = path.clone();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c2 = cut.clone();
    let progress = hooked_progress(move |p| {
        if p.bytes_read > 0 && !c2.swap(true, Ordering::SeqCst) {
            fs::OpenOptions::new()
                .write(true)
                .open(&p2)
                .unwrap()
                .set_len(100_000)
                .unwrap();
        }
    });
    let report = repo
        .backup(
            DirectorySource::new(shrink.path()),
            BackupOptions::default().with_progress(progress),
        )
        .await
        .unwrap();
    assert!(cut.load(Ordering::SeqCst));
    let stored = check_stored("shrinking.bin").await;
    assert_eq!(report.snapshot.totals.bytes, stored.len() as u64);
    assert!(
        stored.len() < original.len() && stored[..] == original[..stored.len()],
        "a prefix of the original, {} bytes",
        stored.len()
    );
    assert!(
        repo.check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap()
            .is_ok()
    );
}

fn set_symlink_mtime(path: &Path, secs: i64, nanos: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(secs, nanos),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_keep_their_own_mtime() {
    let src = tempfile::tempdir().unwrap();
    write_file(&src.path().join("a.txt"), b"a", 0o644, 1_600_000_000);
    std::os::unix::fs::symlink("a.txt", src.path().join("link")).unwrap();
    fs::create_dir(src.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("/nowhere", src.path().join("sub/dangling")).unwrap();
    set_symlink_mtime(&src.path().join("link"), 1_300_000_000, 250_000_000);
    set_symlink_mtime(&src.path().join("sub/dangling"), 1_200_000_000, 0);
    set_mtime(&src.path().join("sub"), 1_500_000_000);
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    repo.backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    repo.restore("latest", out.path(), RestoreOptions::default())
        .await
        .unwrap();
    for (link, secs, nanos) in [
        ("link", 1_300_000_000, 250_000_000),
        ("sub/dangling", 1_200_000_000, 0),
    ] {
        let m = fs::symlink_metadata(out.path().join(link)).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!(
            m.modified().unwrap(),
            UNIX_EPOCH + Duration::new(secs, nanos),
            "{link}: the link's own mtime"
        );
    }
    // The link's target kept its own mtime, untouched by the link's.
    assert_eq!(
        fs::metadata(out.path().join("a.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789)
    );
    assert_same_tree(src.path(), out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_root_keeps_its_mode_and_mtime() {
    let src = tempfile::tempdir().unwrap();
    write_file(&src.path().join("d/f.txt"), b"f", 0o644, 1_600_000_000);
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o751)).unwrap();
    set_mtime(src.path(), 1_450_000_000);
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    let report = repo
        .backup(DirectorySource::new(src.path()), BackupOptions::default())
        .await
        .unwrap();
    let expected = RootMetadata {
        mode: 0o751,
        mtime_sec: 1_450_000_000,
        mtime_nsec: 123_456_789,
    };
    assert_eq!(report.snapshot.root, Some(expected));
    assert_eq!(repo.snapshots().await.unwrap()[0].root, Some(expected));

    // A whole restore gives the destination the root's metadata, into a
    // new directory and into an existing one alike.
    let parent = tempfile::tempdir().unwrap();
    for dest in [parent.path().join("new"), parent.path().join("existing")] {
        if dest.ends_with("existing") {
            fs::create_dir(&dest).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o700)).unwrap();
        }
        repo.restore("latest", &dest, RestoreOptions::default())
            .await
            .unwrap();
        let m = fs::metadata(&dest).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o751, "{}", dest.display());
        assert_eq!(
            m.modified().unwrap(),
            UNIX_EPOCH + Duration::new(1_450_000_000, 123_456_789),
            "{}",
            dest.display()
        );
        assert_same_tree(src.path(), &dest);
    }
    // A restore of one path leaves the destination as it is: it is not the root.
    let part = parent.path().join("part");
    fs::create_dir(&part).unwrap();
    fs::set_permissions(&part, fs::Permissions::from_mode(0o700)).unwrap();
    repo.restore("latest", &part, RestoreOptions::default().with_path("d"))
        .await
        .unwrap();
    assert_eq!(fs::metadata(&part).unwrap().mode() & 0o7777, 0o700);

    // A stream source has no root directory to record.
    let dump = repo
        .backup(
            StreamSource::from_stream(
                "x.sql",
                futures::stream::iter(vec![Ok(Bytes::from_static(b"x"))]).boxed(),
            ),
            BackupOptions::default().with_kind(BackupKind::PointInTime),
        )
        .await
        .unwrap();
    assert_eq!(dump.snapshot.root, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_on_a_mirror_set_reach_every_mirror() {
    let (a, b, c) = (Memory::default(), Memory::default(), Memory::default());
    let c_faulty = FaultyTarget::new(c.clone());
    let ra = init(&a, fast_init()).await;
    let rb = Repository::init_mirror(&ra, Arc::new(b.clone()), prefix())
        .await
        .unwrap();
    let rc = Repository::init_mirror(&ra, Arc::new(c_faulty.clone()), prefix())
        .await
        .unwrap();
    let targets: [Arc<dyn BackupTarget>; 3] = [
        Arc::new(a.clone()),
        Arc::new(b.clone()),
        Arc::new(c_faulty.clone()),
    ];
    let opens = |i: usize, pass: &'static str| {
        let t = targets[i].clone();
        async move {
            match Repository::open(t, prefix(), &KeySource::passphrase(pass)).await {
                Ok(_) => true,
                Err(e) if e.kind() == ErrorKind::InvalidInput => false,
                Err(e) => panic!("{e}"),
            }
        }
    };

    let pair = MirrorSet::new(vec![ra.clone(), rb.clone()], MirrorPolicy::All).unwrap();
    let initial = ra.keys().await.unwrap()[0].id.clone();
    let added = pair
        .add_key(
            &KeySource::passphrase("second"),
            KdfParams::insecure_fast(),
            "second",
        )
        .await
        .unwrap();
    assert!(added.targets.iter().all(|t| t.error.is_none()));
    assert!(opens(0, "second").await && opens(1, "second").await);
    let keys = pair.keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.mirrors == [0, 1]), "{keys:?}");

    let removed = pair.remove_key(&initial).await.unwrap();
    assert_eq!(removed.id, initial);
    assert!(!opens(0, PASS).await, "mirror 0 no longer opens with it");
    assert!(!opens(1, PASS).await, "mirror 1 no longer opens with it");
    assert!(opens(0, "second").await && opens(1, "second").await);
    assert_eq!(
        pair.remove_key(&initial).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        pair.remove_key(&added.id).await.unwrap_err().kind(),
        ErrorKind::Precondition,
        "never the last key"
    );
    assert!(opens(0, "second").await && opens(1, "second").await);

    // Three mirrors, one refusing deletes: a quorum of two removes the key
    // where it can, and the report and keys() say where it remains.
    let trio = MirrorSet::new(
        vec![ra.clone(), rb.clone(), rc.clone()],
        MirrorPolicy::Quorum(2),
    )
    .unwrap();
    let third = trio
        .add_key(
            &KeySource::passphrase("third"),
            KdfParams::insecure_fast(),
            "third",
        )
        .await
        .unwrap();
    assert!(opens(2, "third").await);
    c_faulty
        .plan()
        .add(Fault::fail(FaultError::backend("c refuses deletes")).on(backup_faults::DELETE))
        .unwrap();
    let report = trio.remove_key(&third.id).await.unwrap();
    assert!(report.targets[0].error.is_none() && report.targets[1].error.is_none());
    assert!(report.targets[2].error.is_some());
    assert!(!opens(0, "third").await && !opens(1, "third").await);
    let left = trio.keys().await.unwrap();
    let third_left = left.iter().find(|k| k.key.id == third.id).unwrap();
    assert_eq!(third_left.mirrors, [2]);
    // Under All the same failure fails the call; once c accepts deletes
    // again, the same call finishes the job (mirrors without it count as done).
    let all = MirrorSet::new(vec![ra.clone(), rb.clone(), rc.clone()], MirrorPolicy::All).unwrap();
    let err = all.remove_key(&third.id).await.unwrap_err();
    assert!(err.to_string().contains("c refuses deletes"), "{err}");
    assert!(opens(2, "third").await);
    c_faulty.plan().clear();
    all.remove_key(&third.id).await.unwrap();
    assert!(!opens(2, "third").await);
}

// ---------------------------------------------------------------------------
// Format versions: documents carry `"version": <major>`; a reader accepts
// fields it does not know within its major version, refuses a newer major
// version naming both, and reads documents written before the field existed.

/// A repository with one stream snapshot; returns it, the snapshot's
/// manifest name, the name of its one index file, and the stream's bytes.
async fn one_snapshot(mem: &Memory) -> (Repository, String, String, Vec<u8>) {
    let repo = init(mem, small_chunks()).await;
    let dump = random_bytes(300_000, 11);
    let source = StreamSource::from_stream(
        "dump.sql",
        futures::stream::iter([Ok(Bytes::from(dump.clone()))]).boxed(),
    );
    let report = repo.backup(source, BackupOptions::default()).await.unwrap();
    let manifest = format!("snapshots/{}", report.snapshot.id);
    let indexes = mem.keys_under("repo/index/");
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    let index = indexes[0].trim_start_matches("repo/").to_owned();
    (repo, manifest, index, dump)
}

/// The decrypted JSON of the document `name`, as a value.
async fn raw_json(repo: &Repository, name: &str) -> serde_json::Value {
    serde_json::from_slice(&repo.read_raw_document(name).await.unwrap()).unwrap()
}

/// Encrypts `value` as the repository does and stores it as `name`.
async fn plant(repo: &Repository, name: &str, value: &serde_json::Value) {
    repo.write_raw_document(name, &serde_json::to_vec(value).unwrap())
        .await
        .unwrap();
}

/// The plaintext document at `key` (config, key files), edited by `edit`.
fn edit_plain(mem: &Memory, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut map = mem.map();
    let mut v: serde_json::Value = serde_json::from_slice(&map[key]).unwrap();
    edit(&mut v);
    map.insert(key.to_owned(), serde_json::to_vec(&v).unwrap().into());
}

async fn restored(repo: &Repository, snapshot: &str) -> atlas_core::Result<Vec<u8>> {
    let (_, body) = repo.restore_file_stream(snapshot, "dump.sql").await?;
    let pieces: Vec<Bytes> = body.try_collect().await?;
    Ok(pieces.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_with_fields_added_by_a_newer_build_still_read() {
    let mem = Memory::default();
    let (repo, manifest, index, dump) = one_snapshot(&mem).await;
    let before = repo.snapshots().await.unwrap();

    // What this build writes carries the version.
    let mut m = raw_json(&repo, &manifest).await;
    assert_eq!(m["version"], 1, "{m}");
    let mut ix = raw_json(&repo, &index).await;
    assert_eq!(ix["version"], 1, "{ix}");

    // A newer build of the same major version added fields, at the top
    // and nested.
    m["retention_hold"] = serde_json::json!({ "until": "2030-01-01T00:00:00Z" });
    m["totals"]["dedup_ratio"] = serde_json::json!(0.5);
    plant(&repo, &manifest, &m).await;
    ix["written_by"] = serde_json::json!("atlas-backup 9.9");
    ix["packs"][0]["storage_class"] = serde_json::json!("cold");
    ix["packs"][0]["blobs"][0]["checksum"] = serde_json::json!("abc");
    plant(&repo, &index, &ix).await;

    // The known fields read back unchanged, and the data with them.
    assert_eq!(repo.snapshots().await.unwrap(), before);
    let id = before[0].id.to_hex();
    assert_eq!(repo.snapshot(&id).await.unwrap(), before[0]);
    assert!(restored(&repo, &id).await.unwrap() == dump);
    let check = repo
        .check(CheckOptions::read_data(ReadDataSubset::All))
        .await
        .unwrap();
    assert!(check.is_ok(), "{:?}", check.problems);

    // Locks, the config and key files too.
    let lock = repo.lock(false, "test").await.unwrap();
    let locks = mem.keys_under("repo/locks/");
    let lock_name = locks[0].trim_start_matches("repo/").to_owned();
    let mut l = raw_json(&repo, &lock_name).await;
    assert_eq!(l["version"], 1, "{l}");
    l["pid_namespace"] = serde_json::json!(4026531836u64);
    plant(&repo, &lock_name, &l).await;
    let listed = repo.locks().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].holder.ends_with("test"), "{listed:?}");
    lock.release().await;
    edit_plain(&mem, "repo/config", |c| {
        assert_eq!(c["version"], 1);
        c["object_lock"] = serde_json::json!(true);
    });
    let key_file = mem.keys_under("repo/keys/")[0].clone();
    edit_plain(&mem, &key_file, |k| {
        assert_eq!(k["version"], 1);
        k["hint"] = serde_json::json!("the usual one");
    });
    let reopened = Repository::open(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
    )
    .await
    .unwrap();
    assert_eq!(reopened.config(), repo.config());
    assert_eq!(reopened.snapshots().await.unwrap(), before);
}

/// Asserts that `err` refuses `document` at `found`, naming both versions.
fn assert_newer_major(err: &atlas_core::Error, document: &str, found: u32) {
    assert_eq!(err.kind(), ErrorKind::Precondition, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(document), "names the document: {msg}");
    assert!(
        msg.contains(&format!("version {found}")),
        "names its version: {msg}"
    );
    assert!(
        msg.contains("up to version 1"),
        "names the newest this build reads: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_of_a_newer_major_version_are_refused_naming_both_versions() {
    let mem = Memory::default();
    let (repo, manifest, index, _) = one_snapshot(&mem).await;
    let id = repo.snapshots().await.unwrap()[0].id.to_hex();

    // A manifest of major version 2, whose fields changed meaning.
    let mut m = raw_json(&repo, &manifest).await;
    m["version"] = serde_json::json!(2);
    m["tree"] = serde_json::json!({ "root": m["tree"].clone(), "algorithm": "blake3" });
    plant(&repo, &manifest, &m).await;
    let err = repo.snapshot(&id).await.unwrap_err();
    assert_newer_major(&err, "snapshot manifest", 2);
    assert!(err.to_string().contains(&id), "names which manifest: {err}");
    assert_newer_major(&repo.snapshots().await.unwrap_err(), "snapshot manifest", 2);
    m["version"] = serde_json::json!(1);
    m["tree"] = m["tree"]["root"].clone();
    plant(&repo, &manifest, &m).await;
    assert_eq!(repo.snapshot(&id).await.unwrap().id.to_hex(), id);

    // An index file of major version 7.
    let mut ix = raw_json(&repo, &index).await;
    ix["version"] = serde_json::json!(7);
    plant(&repo, &index, &ix).await;
    let err = restored(&repo, &id).await.unwrap_err();
    assert_newer_major(&err, "index file", 7);
    assert!(err.to_string().contains(&index), "names which index: {err}");
    let snapshot = repo.snapshot(&id).await.unwrap();
    assert_newer_major(
        &repo.list_dir(&snapshot, "").await.unwrap_err(),
        "index file",
        7,
    );
    // A backup, which must know what the repository holds, refuses too.
    let err = repo
        .backup(
            StreamSource::from_stream(
                "more.sql",
                futures::stream::iter([Ok(Bytes::from_static(b"more"))]).boxed(),
            ),
            BackupOptions::default(),
        )
        .await
        .unwrap_err();
    assert_newer_major(&err, "index file", 7);

    // A config of major version 2: the repository does not open.
    edit_plain(&mem, "repo/config", |c| c["version"] = serde_json::json!(2));
    let err = Repository::open(
        Arc::new(mem.clone()),
        prefix(),
        &KeySource::passphrase(PASS),
    )
    .await
    .unwrap_err();
    assert_newer_major(&err, "repository config", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_written_before_versions_were_recorded_read_as_version_1() {
    let mem = Memory::default();
    let (repo, manifest, index, dump) = one_snapshot(&mem).await;
    let before = repo.snapshots().await.unwrap();
    for name in [&manifest, &index] {
        let mut v = raw_json(&repo, name).await;
        assert!(v.as_object_mut().unwrap().remove("version").is_some());
        plant(&repo, name, &v).await;
    }
    assert_eq!(repo.snapshots().await.unwrap(), before);
    assert!(restored(&repo, &before[0].id.to_hex()).await.unwrap() == dump);
    // And the repository keeps working: a new snapshot reuses the old data.
    let again = repo
        .backup(
            StreamSource::from_stream(
                "dump.sql",
                futures::stream::iter([Ok(Bytes::from(dump.clone()))]).boxed(),
            ),
            BackupOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(again.snapshot.totals.new_chunks, 1, "only the tree is new");
}

/// A process killed in the middle of a backup leaves its lock behind. On the
/// machine that took it, a lock whose process has ended no longer blocks
/// (and `break_stale_locks` removes it), as restic does; a lock of a live
/// process, or of another machine, still blocks until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_an_ended_process_of_this_machine_does_not_block() {
    let mem = Memory::default();
    let repo = init(&mem, fast_init()).await;
    // This machine's holder prefix, as the repository writes it.
    let ours = repo.lock(false, "probe").await.unwrap();
    let holder = repo.locks().await.unwrap()[0].holder.clone();
    ours.release().await;
    let host = holder
        .split(" pid ")
        .next()
        .expect("holder is `host pid N action`")
        .to_owned();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let ended = child.id();
    child.wait().unwrap();

    let in_an_hour =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let plant_lock = |id: char, holder: String| {
        let repo = repo.clone();
        let now = now.to_string();
        let until = in_an_hour.to_string();
        async move {
            let name = format!("locks/{}", id.to_string().repeat(64));
            let lock = serde_json::json!({
                "version": 1, "exclusive": true, "holder": holder,
                "created": now, "expires": until,
            });
            plant(&repo, &name, &lock).await;
            name
        }
    };

    // Another machine's lock: its processes cannot be seen, it blocks.
    let foreign = plant_lock('a', format!("elsewhere-{host} pid {ended} backup")).await;
    let err = repo.lock(false, "backup").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    mem.map().remove(&format!("repo/{foreign}"));

    // A live process of this machine (this one): it blocks.
    let live = plant_lock('b', format!("{host} pid {} backup", std::process::id())).await;
    let err = repo.lock(false, "backup").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    mem.map().remove(&format!("repo/{live}"));

    // An ended process of this machine: abandoned, so it does not block, and
    // breaking stale locks removes it.
    plant_lock('c', format!("{host} pid {ended} backup")).await;
    let lock = repo
        .lock(true, "prune")
        .await
        .expect("an abandoned lock does not block");
    lock.release().await;
    assert_eq!(repo.break_stale_locks().await.unwrap(), 1);
    assert!(repo.locks().await.unwrap().is_empty());
}
