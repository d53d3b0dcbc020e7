//! `FileStateStore` on a real directory: the `StateStore` conformance suite,
//! plus persistence across instances, corruption, and leases as OS locks
//! between instances and processes.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use atlas_core::failover::FailoverStore;
use atlas_core::testing::conformance::{self, state_store::sample_state};
use atlas_core::{ErrorKind, Phase, ServiceName, StateStore};
use atlas_local::file_store::FileStateStore;
use tokio::io::{AsyncBufReadExt, BufReader};

const TTL: Duration = Duration::from_secs(15);

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

#[tokio::test]
async fn passes_the_state_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::new(dir.path()).unwrap();
    conformance::state_store::all(&store, "file").await;
}

#[tokio::test]
async fn passes_the_failover_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::new(dir.path()).unwrap();
    conformance::failover_store::all(&store, "file-failover").await;
    // Failover state lives beside rollout state, in files of its own.
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(files >= 3, "the suite wrote failover files");
    let again = FileStateStore::new(dir.path()).unwrap();
    let svc = service("after-restart");
    let s = conformance::failover_store::sample_state();
    let v = again
        .compare_and_swap_failover(&svc, None, &s)
        .await
        .unwrap();
    let third = FileStateStore::new(dir.path()).unwrap();
    let got = third.load_failover(&svc).await.unwrap().unwrap();
    assert_eq!(
        (got.version, got.value),
        (v, s),
        "a new instance reads it back"
    );
    assert!(third.failover_path(&svc).exists());
    assert!(
        third.load(&svc).await.unwrap().is_none(),
        "no rollout state was written"
    );
}

#[tokio::test]
async fn state_survives_a_new_instance() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service("checkout");
    let mut state = sample_state(&svc);
    let v2 = {
        let store = FileStateStore::new(dir.path()).unwrap();
        let v1 = store.compare_and_swap(&svc, None, &state).await.unwrap();
        state.step = 5;
        store
            .compare_and_swap(&svc, Some(v1), &state)
            .await
            .unwrap()
    };
    let store = FileStateStore::new(dir.path()).unwrap();
    let loaded = store.load(&svc).await.unwrap().unwrap();
    assert_eq!(loaded.version, v2);
    assert_eq!(loaded.value, state);
    // The new instance continues from the stored version, and refuses a stale one.
    let err = store
        .compare_and_swap(&svc, Some(v2 - 1), &state)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("checkout"), "{err}");
    state.phase = Phase::Promoted;
    let v3 = store
        .compare_and_swap(&svc, Some(v2), &state)
        .await
        .unwrap();
    assert!(v3 > v2);
    // One file per service, replaced atomically: no temporary file stays.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["checkout.json", "checkout.state.lock"]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.state_path(&svc)).unwrap()).unwrap();
    assert_eq!(json["version"], v3);
    assert_eq!(json["service"], "checkout");
    assert_eq!(json["format"], 1);
}

async fn expect_backend_error_naming(store: &FileStateStore, svc: &ServiceName, path: &Path) {
    let err = store.load(svc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "load error must name the file: {err}"
    );
    let err = store
        .compare_and_swap(svc, Some(1), &sample_state(svc))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // Not even a create is allowed over it: the file is never reset.
    let err = store
        .compare_and_swap(svc, None, &sample_state(svc))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
}

#[tokio::test]
async fn a_truncated_state_file_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::new(dir.path()).unwrap();
    let svc = service("checkout");
    store
        .compare_and_swap(&svc, None, &sample_state(&svc))
        .await
        .unwrap();
    let path = store.state_path(&svc);
    let full = std::fs::read(&path).unwrap();
    let cut = &full[..full.len() / 2];
    std::fs::write(&path, cut).unwrap();
    expect_backend_error_naming(&store, &svc, &path).await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        cut,
        "the file must be left as it was"
    );

    std::fs::write(&path, b"").unwrap();
    expect_backend_error_naming(&store, &svc, &path).await;
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[tokio::test]
async fn a_corrupt_or_foreign_state_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::new(dir.path()).unwrap();
    let svc = service("checkout");
    let path = store.state_path(&svc);

    std::fs::write(
        &path,
        b"{\"format\":1,\"service\":\"checkout\",\"version\":3,\"state\":{\"id\":7}}",
    )
    .unwrap();
    expect_backend_error_naming(&store, &svc, &path).await;

    std::fs::write(&path, [0xff, 0x00, 0x13]).unwrap();
    expect_backend_error_naming(&store, &svc, &path).await;

    // Another service's file copied over this one.
    let other = service("billing");
    store
        .compare_and_swap(&other, None, &sample_state(&other))
        .await
        .unwrap();
    std::fs::copy(store.state_path(&other), &path).unwrap();
    expect_backend_error_naming(&store, &svc, &path).await;
    let err = store.load(&svc).await.unwrap_err();
    assert!(
        err.to_string().contains("belongs to service billing"),
        "{err}"
    );

    // A format from a future version of Atlas.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.state_path(&other)).unwrap()).unwrap();
    json["format"] = 2.into();
    json["service"] = "checkout".into();
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    expect_backend_error_naming(&store, &svc, &path).await;
    let err = store.load(&svc).await.unwrap_err();
    assert!(err.to_string().contains("format 2"), "{err}");
}

#[tokio::test]
async fn two_instances_in_one_process_conflict_on_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileStateStore::new(dir.path()).unwrap();
    let b = FileStateStore::new(dir.path()).unwrap();
    let svc = service("checkout");

    let lease_a = a.acquire_lease(&svc, "engine-a", TTL).await.unwrap();
    let err = b.acquire_lease(&svc, "engine-b", TTL).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let message = err.to_string();
    assert!(
        message.contains("checkout"),
        "must name the service: {message}"
    );
    assert!(
        message.contains("engine-a"),
        "must name the holder: {message}"
    );
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    // The same holder name on another instance is another holder: the lock
    // belongs to the instance.
    let err = b.acquire_lease(&svc, "engine-a", TTL).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // b cannot renew or release a's lease.
    assert_eq!(
        b.renew_lease(&lease_a).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    b.release_lease(&lease_a).await.unwrap();
    assert!(b.acquire_lease(&svc, "engine-b", TTL).await.is_err());
    a.renew_lease(&lease_a).await.unwrap();

    // Released: b gets it, with a later token.
    a.release_lease(&lease_a).await.unwrap();
    let lease_b = b.acquire_lease(&svc, "engine-b", TTL).await.unwrap();
    assert!(lease_b.token > lease_a.token);
    assert!(a.acquire_lease(&svc, "engine-a", TTL).await.is_err());
    // A re-grant to the same holder supersedes the earlier grant.
    let again = b.acquire_lease(&svc, "engine-b", TTL).await.unwrap();
    assert!(again.token > lease_b.token);
    assert_eq!(
        b.renew_lease(&lease_b).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    b.renew_lease(&again).await.unwrap();

    // Dropping the holding store releases the lock.
    drop(b);
    let lease = a.acquire_lease(&svc, "engine-a", TTL).await.unwrap();
    assert!(lease.token > again.token);
    // Leases of different services are independent.
    let other = service("billing");
    let c = FileStateStore::new(dir.path()).unwrap();
    c.acquire_lease(&other, "engine-c", TTL).await.unwrap();
}

/// Holds an exclusive `flock` on `path` from another process until killed.
async fn lock_in_another_process(path: &Path) -> tokio::process::Child {
    let mut child = tokio::process::Command::new("flock")
        .arg("--nonblock")
        .arg("--exclusive")
        // The holder is the very process we kill later, not a child of it.
        .arg("--no-fork")
        .arg(path)
        .arg("-c")
        .arg("echo locked; exec sleep 60")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("flock(1) from util-linux is needed for this test");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

#[tokio::test]
async fn a_lease_held_by_another_process_conflicts_until_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::new(dir.path()).unwrap();
    let svc = service("checkout");
    let mut other = lock_in_another_process(&store.lock_path(&svc)).await;

    let err = store
        .acquire_lease(&svc, "engine-a", TTL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        err.to_string().contains("lease on checkout is held by"),
        "{err}"
    );

    // The other process dies without releasing anything: the OS does.
    other.kill().await.unwrap();
    let lease = store.acquire_lease(&svc, "engine-a", TTL).await.unwrap();
    store.release_lease(&lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_through_two_instances_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service("checkout");
    let stores = [
        Arc::new(FileStateStore::new(dir.path()).unwrap()),
        Arc::new(FileStateStore::new(dir.path()).unwrap()),
    ];
    let mut initial = sample_state(&svc);
    initial.step = 0;
    stores[0]
        .compare_and_swap(&svc, None, &initial)
        .await
        .unwrap();
    const WRITERS: usize = 6;
    const INCREMENTS: usize = 15;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = stores[w % 2].clone();
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.load(&svc).await.unwrap().unwrap();
                    let mut next = current.value.clone();
                    next.step += 1;
                    match store
                        .compare_and_swap(&svc, Some(current.version), &next)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = stores[1].load(&svc).await.unwrap().unwrap();
    assert_eq!(last.value.step, WRITERS * INCREMENTS);
    assert_eq!(last.version, 1 + (WRITERS * INCREMENTS) as u64);
}

#[tokio::test]
async fn compare_and_swap_waits_for_the_os_lock_of_another_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::new(dir.path()).unwrap();
    let svc = service("checkout");
    let v1 = store
        .compare_and_swap(&svc, None, &sample_state(&svc))
        .await
        .unwrap();
    // Another writer (here: this test, through its own open file) is in
    // the middle of a read-compare-write.
    let guard = std::fs::File::create(dir.path().join("checkout.state.lock")).unwrap();
    guard.lock().unwrap();
    let mut next = sample_state(&svc);
    next.step = 8;
    let writer = {
        let store = store.clone();
        let svc = svc.clone();
        tokio::spawn(async move { store.compare_and_swap(&svc, Some(v1), &next).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the write must wait for the lock");
    assert_eq!(store.load(&svc).await.unwrap().unwrap().version, v1);
    guard.unlock().unwrap();
    let v2 = writer.await.unwrap().unwrap();
    assert!(v2 > v1);
    assert_eq!(store.load(&svc).await.unwrap().unwrap().value.step, 8);
}
