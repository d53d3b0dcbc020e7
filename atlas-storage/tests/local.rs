//! The filesystem and memory targets: the whole conformance suite, plus what
//! only the filesystem can get wrong (atomic files, links, folders) and the
//! fault-injecting wrapper. Runs on plain `cargo test`.
#![cfg(all(feature = "fs", feature = "memory"))]

use std::time::Duration;

use atlas_core::ErrorKind;
use atlas_core::backup::{
    BackupTarget, BackupTargetExt, ByteStream, Checksum, ObjectKey, ObjectPrefix, RetryConfig,
};
use atlas_core::testing::backup_faults::{self, FaultyTarget};
use atlas_core::testing::conformance::backup_target::{self as suite, SuiteConfig};
use atlas_core::testing::{Fault, FaultError};
use atlas_storage::{FsTarget, MemoryTarget};
use bytes::Bytes;
use common::init_tracing;
use futures::stream::{self, StreamExt};

mod common;

const MIB: u64 = 1024 * 1024;

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_target_passes_the_conformance_suite() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    // The write queue of 64 KiB chunks plus two read buffers (64 KiB each) in flight, with room to spare.
    let bound = target.max_buffered_bytes(64 * 1024) + 4 * MIB;
    let report = suite::run_all(&target, &SuiteConfig::new().with_memory_bound(bound)).await;
    // The filesystem has every capability: nothing skipped.
    assert!(report.skipped().is_empty(), "{report:?}");
    assert_eq!(report.passed(), &suite::CHECKS[..]);
    // The suite cleaned up after itself, folders included.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_target_passes_the_conformance_suite() {
    init_tracing();
    let target = MemoryTarget::new();
    // Memory keeps objects in memory by design: no memory bound, so the
    // memory bounds are reported skipped, and every check still runs.
    let report = suite::run_all(&target, &SuiteConfig::new()).await;
    assert!(target.is_empty());
    assert_eq!(report.passed(), &suite::CHECKS[..]);
    let skipped: Vec<_> = report.skipped().iter().map(|s| s.check).collect();
    assert_eq!(skipped, ["large_object_streamed: memory bounds"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_capability_skips_its_check_and_says_so() {
    let config = SuiteConfig::new()
        .with_large_object_size(3 * MIB)
        .with_put_if_absent_atomic(false);
    let report = suite::run_all(&MemoryTarget::new(), &config).await;
    let skipped: Vec<_> = report.skipped().iter().map(|s| s.check).collect();
    assert_eq!(
        skipped,
        [
            "concurrent_put_if_absent",
            "large_object_streamed: memory bounds"
        ]
    );
    assert!(
        report.skipped()[0].reason.contains("put_if_absent_atomic"),
        "{report:?}"
    );
    // A skipped check is never counted as passed; the rest all ran.
    assert!(!report.passed().contains(&"concurrent_put_if_absent"));
    assert_eq!(report.passed().len(), suite::CHECKS.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_pass_the_suite_through_arc_and_box_and_a_fault_free_wrapper() {
    let config = SuiteConfig::default().with_large_object_size(3 * MIB);
    let arc: std::sync::Arc<dyn BackupTarget> = std::sync::Arc::new(MemoryTarget::new());
    suite::run_all(&arc, &config).await;
    let boxed: Box<dyn BackupTarget> = Box::new(MemoryTarget::new());
    suite::run_all(&boxed, &config).await;
    suite::run_all(&FaultyTarget::new(MemoryTarget::new()), &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_check_fails_a_target_that_buffers_whole_objects() {
    // The memory target keeps every object in memory: held to the bound of
    // a streaming target, the suite must reject it.
    let run = suite::SuiteRun::new(SuiteConfig::default().with_memory_bound(8 * MIB));
    let outcome = tokio::spawn(async move {
        suite::large_object_streamed(&MemoryTarget::new(), &run).await;
    })
    .await;
    let panic = outcome.expect_err("the suite accepted a buffering target");
    let message = panic
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        message.contains("peak resident memory grew"),
        "unexpected failure: {message}"
    );
}

/// Ranges up to one read chunk come back as one piece of their own size;
/// longer ones in pieces of at most a chunk, the last one cut to what is
/// left; the bytes are those of the range either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_ranged_reads_come_in_pieces_of_at_most_a_chunk() {
    use atlas_core::backup::ByteRange;
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::builder()
        .with_root(dir.path())
        .with_read_chunk_size(1000)
        .build()
        .unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let k = key("ranges/object");
    target
        .put_bytes(&k, Bytes::from(data.clone()))
        .await
        .unwrap();
    for (start, end, pieces) in [
        (0, 1, 1),
        (0, 1000, 1),
        (5, 1005, 1),
        (5, 1006, 2),
        (123, 9999, 10),
        (0, 10_000, 10),
        (9000, 10_000, 1),
    ] {
        let got = target
            .get_range(&k, ByteRange::new(start, end).unwrap())
            .await
            .unwrap();
        let chunks: Vec<Bytes> = got.body.map(|c| c.unwrap()).collect().await;
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(chunks.len(), pieces, "{start}..{end}: {sizes:?}");
        assert!(sizes.iter().all(|n| (1..=1000).contains(n)), "{sizes:?}");
        assert_eq!(chunks.concat(), &data[start as usize..end as usize]);
    }
}

#[tokio::test]
async fn fs_objects_are_plain_files_with_their_checksum_attached() {
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    let k = key("snap/1/data.bin");
    target.put_bytes(&k, "payload".into()).await.unwrap();
    let path = dir.path().join("snap/1/data.bin");
    assert_eq!(std::fs::read(&path).unwrap(), b"payload");
    let expected = Checksum::crc32c_of(b"payload");
    assert_eq!(target.head(&k).await.unwrap().checksum, Some(expected));
    // A file placed by hand has no attribute: head computes the checksum.
    std::fs::write(dir.path().join("snap/1/by-hand"), b"manual").unwrap();
    let meta = target.head(&key("snap/1/by-hand")).await.unwrap();
    assert_eq!(meta.checksum, Some(Checksum::crc32c_of(b"manual")));
    assert_eq!(meta.size, 6);
}

#[tokio::test]
async fn fs_puts_leave_no_temporary_files_and_never_list_them() {
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    let k = key("a/obj");
    let failing: ByteStream = stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 100_000])),
        Err(atlas_core::Error::transient("test", "cut")),
    ])
    .boxed();
    assert_eq!(
        target.put(&k, failing).await.unwrap_err().kind(),
        ErrorKind::Transient,
        "the body's own error comes back"
    );
    target.put_bytes(&k, "x".into()).await.unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["obj"]);
    // A stray temporary file (as after a crash) is not an object.
    std::fs::write(dir.path().join("a/.atlas-tmp.0000000000000001"), b"junk").unwrap();
    let listed = target.list_all(&ObjectPrefix::all()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, k);
    // Keys cannot name temporary files.
    let err = target
        .put_bytes(&key("a/.atlas-tmp.x"), "y".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn fs_lists_and_removes_the_temporary_files_a_crashed_put_left() {
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    target
        .put_bytes(&key("repo/data/ab/p1"), "x".into())
        .await
        .unwrap();
    target.put_bytes(&key("other/o"), "y".into()).await.unwrap();
    // What a put killed midway leaves: a temporary file beside its
    // destination.
    std::fs::write(
        dir.path().join("repo/data/ab/.atlas-tmp.0000000000000001"),
        b"half",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("other/.atlas-tmp.0000000000000002"),
        b"other",
    )
    .unwrap();
    let found = target
        .unfinished_puts(&ObjectPrefix::new("repo/").unwrap())
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "only those under the prefix: {found:?}");
    assert_eq!(found[0].id, "repo/data/ab/.atlas-tmp.0000000000000001");
    assert_eq!(found[0].size, 4);
    assert_eq!(
        target
            .unfinished_puts(&ObjectPrefix::all())
            .await
            .unwrap()
            .len(),
        2
    );
    target.remove_unfinished_put(&found[0]).await.unwrap();
    assert!(
        !dir.path()
            .join("repo/data/ab/.atlas-tmp.0000000000000001")
            .exists()
    );
    // Gone already: removed.
    target.remove_unfinished_put(&found[0]).await.unwrap();
    // Objects are untouched, and an id that names an object is refused.
    assert_eq!(
        target.get_bytes(&key("repo/data/ab/p1")).await.unwrap(),
        "x"
    );
    let mut forged = found[0].clone();
    forged.id = "repo/data/ab/p1".into();
    let err = target.remove_unfinished_put(&forged).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    forged.id = "../.atlas-tmp.1".into();
    let err = target.remove_unfinished_put(&forged).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(dir.path().join("repo/data/ab/p1").exists());
}

#[cfg(unix)]
#[tokio::test]
async fn fs_refuses_to_follow_symbolic_links_out_of_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"top secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    let k = key("escape/secret");
    assert_eq!(
        target.get(&k).await.unwrap_err().kind(),
        ErrorKind::Precondition
    );
    assert_eq!(
        target.head(&k).await.unwrap_err().kind(),
        ErrorKind::Precondition
    );
    assert_eq!(
        target.delete(&k).await.unwrap_err().kind(),
        ErrorKind::Precondition
    );
    assert_eq!(
        target
            .put_bytes(&key("escape/new"), "x".into())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Precondition
    );
    assert!(!outside.path().join("new").exists());
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"top secret"
    );
    // Links are not listed either.
    assert!(
        target
            .list_all(&ObjectPrefix::all())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn fs_objects_and_folders_of_one_name_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    target.put_bytes(&key("x/y"), "1".into()).await.unwrap();
    for (k, what) in [
        ("x", "object over a folder"),
        ("x/y/z", "object under an object"),
    ] {
        let err = target.put_bytes(&key(k), "2".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{what}: {err}");
    }
    assert_eq!(
        target.get(&key("x")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Deleting the last object removes the empty folder, freeing the name.
    target.delete(&key("x/y")).await.unwrap();
    assert!(!dir.path().join("x").exists());
    target.put_bytes(&key("x"), "3".into()).await.unwrap();
}

#[tokio::test]
async fn fs_listing_follows_byte_order_across_folders() {
    let dir = tempfile::tempdir().unwrap();
    let target = FsTarget::new(dir.path()).unwrap();
    // '-' < '/' < '0': "a-b" sorts before "a/…", "a0" after it.
    for k in ["a0", "a/z", "a-b", "a/b/c", "a.", "b"] {
        target.put_bytes(&key(k), "v".into()).await.unwrap();
    }
    let listed: Vec<String> = target
        .list_all(&ObjectPrefix::all())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert_eq!(listed, ["a-b", "a.", "a/b/c", "a/z", "a0", "b"]);
    let listed: Vec<String> = target
        .list_all(&ObjectPrefix::new("a/").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    assert_eq!(listed, ["a/b/c", "a/z"]);
}

#[test]
fn fs_builder_validates_its_input() {
    let err = FsTarget::builder().build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("root"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = FsTarget::builder()
        .with_root(dir.path())
        .with_read_chunk_size(0)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("read_chunk_size"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert_eq!(FsTarget::new(&file).unwrap_err().kind(), ErrorKind::Backend);
}

#[tokio::test]
async fn faults_fail_the_nth_call_and_a_retry_policy_rides_them_out() {
    let target = FaultyTarget::new(MemoryTarget::new());
    let k = key("f/obj");
    target.put_bytes(&k, "v".into()).await.unwrap();
    target
        .plan()
        .add(
            Fault::fail(FaultError::transient("503 slow down"))
                .on(backup_faults::HEAD)
                .first_calls(2),
        )
        .unwrap();
    assert!(target.head(&k).await.unwrap_err().is_transient());
    let retry = RetryConfig::default();
    let meta = retry.run("test", "head", || target.head(&k)).await.unwrap();
    assert_eq!(meta.size, 1);
    let counts = target.plan().counts(backup_faults::HEAD);
    assert_eq!((counts.calls, counts.injected, counts.successes), (3, 2, 1));
}

#[tokio::test]
async fn faults_break_bodies_midway_and_percentages_are_reproducible() {
    let target = FaultyTarget::new(MemoryTarget::new());
    let k = key("f/big");
    target.fail_put_body_after(1000, FaultError::transient("connection reset"));
    let body: ByteStream = stream::iter((0..10).map(|_| Ok(Bytes::from(vec![0u8; 500])))).boxed();
    let err = target.put(&k, body).await.unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert!(
        !target.exists(&k).await.unwrap(),
        "a broken put left an object"
    );

    target.clear_stream_faults();
    target
        .put_bytes(&k, Bytes::from(vec![9u8; 5000]))
        .await
        .unwrap();
    target.fail_get_body_after(1234, FaultError::transient("reset"));
    let mut body = target.get(&k).await.unwrap().body;
    let mut got = 0;
    let mut failed = false;
    while let Some(item) = body.next().await {
        match item {
            Ok(c) => got += c.len(),
            Err(_) => failed = true,
        }
    }
    assert_eq!((got, failed), (1234, true));

    // A seeded 30 % failure rate gives the same pattern on every run.
    let pattern = |seed| async move {
        let plan = atlas_core::testing::FaultPlan::with_seed(seed);
        plan.add(Fault::fail(FaultError::transient("flaky")).percent(30.0))
            .unwrap();
        let t = FaultyTarget::with_plan(MemoryTarget::new(), plan);
        let mut v = Vec::new();
        for _ in 0..50 {
            v.push(t.head(&key("nothing")).await.unwrap_err().is_transient());
        }
        v
    };
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    let failures = a.iter().filter(|t| **t).count();
    assert!((5..=25).contains(&failures), "{failures} of 50 at 30 %");
}

#[tokio::test(start_paused = true)]
async fn faults_add_latency() {
    let target = FaultyTarget::new(MemoryTarget::new());
    target
        .plan()
        .add(Fault::delay(Duration::from_secs(3)).on(backup_faults::LIST))
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        target
            .list_all(&ObjectPrefix::all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(target.plan().calls(backup_faults::LIST), 1);
}
