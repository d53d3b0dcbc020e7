//! `ProcessWorkloads` as a long-running supervisor's backend: detached
//! replicas that outlive their owner (even a SIGKILLed one) and are adopted
//! by the next, restarts with backoff on the same port, and the events
//! that report all of it. Real processes throughout: `sh` scripts and
//! `python3 -m http.server`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use atlas_core::testing::conformance::{self, workloads::WorkloadsFixture};
use atlas_core::{ErrorKind, Release, ServiceName, Slot, SlotStatus, Workloads};
use atlas_local::process::{
    ProcessWorkloads, ReplicaEvent, ReplicaEventKind, ReplicaRecord, RestartPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep};

mod common;
use common::{script, shell_quote};

const WAIT: Duration = Duration::from_secs(20);

/// Backoffs short enough for real processes: 50 ms doubling to 200 ms.
fn fast_restarts(reset_after: Duration) -> RestartPolicy {
    RestartPolicy::OnFailure {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        reset_after,
    }
}

/// An HTTP server on `127.0.0.1:$PORT` serving `dir`, with a secret in
/// its environment: records carry the environment, and the tests check it
/// round-trips.
fn http_server(version: &str, dir: &Path) -> Release {
    common::http_server(version, dir).with_env("API_TOKEN", "s3cret")
}

fn builder(logs: &Path) -> atlas_local::process::ProcessWorkloadsBuilder {
    ProcessWorkloads::builder()
        .log_dir(logs)
        .grace_period(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(20))
}

fn detached(logs: &Path) -> ProcessWorkloads {
    builder(logs).detached(true).build().unwrap()
}

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

/// Fields of `/proc/<pid>/stat` after the command name, from field 3
/// (state); `None` for a process that is gone or a zombie.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
    (fields[0] != "Z" && fields[0] != "X").then_some(fields)
}

fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some()
}

/// The session id (field 6) of `pid`.
fn session(pid: u32) -> Option<u32> {
    stat_fields(pid)?[3].parse().ok()
}

async fn wait_gone(pid: u32, within: Duration) {
    let started = Instant::now();
    while alive(pid) {
        assert!(
            started.elapsed() < within,
            "process {pid} still alive after {within:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for(
    w: &ProcessWorkloads,
    service: &ServiceName,
    slot: Slot,
    what: &str,
    done: impl Fn(&SlotStatus) -> bool,
) -> SlotStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = w.status(service, slot).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// The next event `pick` accepts, with the time it arrived; earlier ones
/// are skipped.
async fn next_event(
    events: &mut broadcast::Receiver<ReplicaEvent>,
    what: &str,
    pick: impl Fn(&ReplicaEvent) -> bool,
) -> (ReplicaEvent, Instant) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        if pick(&event) {
            return (event, Instant::now());
        }
    }
}

async fn http_get(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Set in the copy of this test binary that plays the owner to be
/// SIGKILLed: the directory to write the records to.
const OWNER_DIR_VAR: &str = "ATLAS_TEST_SUPERVISOR_OWNER_DIR";

/// The owner (a copy of this test binary, [`OWNER_DIR_VAR`] set) deploys
/// two detached HTTP replicas, writes their records and waits to be
/// SIGKILLed; no `Drop` and no handler runs. The replicas keep serving,
/// and a new owner adopts them from the records, sees them ready on their
/// ports, and stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_replicas_outlive_a_sigkilled_owner_and_are_adopted() {
    if let Some(dir) = std::env::var_os(OWNER_DIR_VAR) {
        return be_the_owner(Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut owner = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "detached_replicas_outlive_a_sigkilled_owner_and_are_adopted",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OWNER_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let records_file = dir.path().join("records.json");
    let records: Vec<ReplicaRecord> = loop {
        if let Ok(text) = std::fs::read_to_string(&records_file) {
            break serde_json::from_str(&text).unwrap();
        }
        if let Some(status) = owner.try_wait().unwrap() {
            panic!("the owner exited ({status}) before writing its records");
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(records.len(), 2);
    let owner_pid = owner.id().unwrap();
    for r in &records {
        assert!(alive(r.pid), "replicas must run first");
        // A session of its own: no controlling terminal, and nothing ties
        // it to the owner's session.
        assert_eq!(
            session(r.pid),
            Some(r.pid),
            "{} is a session leader",
            r.name()
        );
        assert_eq!(
            r.release.env.get("API_TOKEN").map(String::as_str),
            Some("s3cret")
        );
        assert_eq!(r.replicas, 2);
        assert!(r.start_time.is_some());
    }
    owner.start_kill().unwrap();
    owner.wait().await.unwrap();
    assert!(!alive(owner_pid));
    // Give the kernel's owner-death machinery time to act, were it armed.
    sleep(Duration::from_millis(300)).await;
    for r in &records {
        assert!(alive(r.pid), "{} died with its owner", r.name());
        let addr = (Ipv4Addr::LOCALHOST, r.port).into();
        assert!(http_get(addr).await.starts_with("HTTP/1.0 200"));
        // It still logs (its own descriptor of the log file): the request
        // line http.server writes to stderr lands there.
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(&r.log_path)
            .unwrap()
            .contains("\"GET / HTTP/1.0\" 200")
        {
            assert!(Instant::now() < deadline, "{} logs nothing", r.name());
            sleep(Duration::from_millis(20)).await;
        }
    }

    let logs = dir.path().join("logs");
    let w = detached(&logs);
    let mut events = w.events();
    let report = w.adopt(records.clone()).await.unwrap();
    assert_eq!(report.adopted, ["checkout-blue-0", "checkout-blue-1"]);
    assert!(
        report.restarted.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let svc = service("checkout");
    let status = wait_for(&w, &svc, Slot::Blue, "2 adopted ready", |s| s.ready == 2).await;
    assert_eq!(status.desired, 2);
    assert_eq!(status.version.as_deref(), Some("v1"));
    let mut ports: Vec<u16> = status.endpoints.iter().map(|e| e.addr.port()).collect();
    ports.sort_unstable();
    let mut recorded: Vec<u16> = records.iter().map(|r| r.port).collect();
    recorded.sort_unstable();
    assert_eq!(ports, recorded, "adopted replicas keep their ports");
    let (adopted, _) = next_event(&mut events, "Adopted", |e| {
        e.kind == ReplicaEventKind::Adopted
    })
    .await;
    assert!(records.iter().any(|r| r.pid == adopted.pid));
    let replicas = w.replicas().await;
    assert!(
        replicas.iter().all(|r| r.adopted && r.running),
        "{replicas:?}"
    );
    // The new owner's records name the same processes.
    let again = w.records().await;
    assert_eq!(
        again
            .iter()
            .map(|r| (r.pid, r.start_time))
            .collect::<HashSet<_>>(),
        records
            .iter()
            .map(|r| (r.pid, r.start_time))
            .collect::<HashSet<_>>()
    );

    // Stopped through their process group, like any replica.
    assert_eq!(w.shutdown().await, 2);
    for r in &records {
        wait_gone(r.pid, Duration::from_secs(5)).await;
    }
    let (stopped, _) = next_event(&mut events, "Stopped", |e| {
        e.kind == ReplicaEventKind::Stopped
    })
    .await;
    assert!(records.iter().any(|r| r.pid == stopped.pid));
}

async fn be_the_owner(dir: &Path) {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let w = detached(&dir.join("logs"));
    let svc = service("checkout");
    w.deploy(&svc, Slot::Blue, &http_server("v1", &site), 2)
        .await
        .unwrap();
    wait_for(&w, &svc, Slot::Blue, "2 ready", |s| s.ready == 2).await;
    let records = serde_json::to_string(&w.records().await).unwrap();
    std::fs::write(dir.join("records.tmp"), records).unwrap();
    std::fs::rename(dir.join("records.tmp"), dir.join("records.json")).unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_detached_workloads_leaves_replicas_running_and_release_hands_them_on() {
    let logs = tempfile::tempdir().unwrap();
    let svc = service("checkout");
    let sleeper = Release::new("v1", "sleep").with_arg("1000");

    // Dropped: left running.
    let w = detached(logs.path());
    w.deploy(&svc, Slot::Blue, &sleeper, 1).await.unwrap();
    let records = w.records().await;
    let dropped_pid = records[0].pid;
    drop(w);
    sleep(Duration::from_millis(200)).await;
    assert!(alive(dropped_pid), "drop must not kill a detached replica");

    // Released: left running, with records taken after the watchers ended.
    let w = detached(logs.path());
    let mut events = w.events();
    assert_eq!(w.adopt(records).await.unwrap().adopted, ["checkout-blue-0"]);
    w.deploy(&svc, Slot::Green, &sleeper, 1).await.unwrap();
    let released = w.release_all().await.unwrap();
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|r| alive(r.pid)));
    assert!(released.iter().any(|r| r.pid == dropped_pid));
    next_event(&mut events, "Released", |e| {
        e.kind == ReplicaEventKind::Released
    })
    .await;
    let err = w.deploy(&svc, Slot::Blue, &sleeper, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition);
    drop(w);

    // Attached workloads cannot release: their replicas die with them.
    let attached = builder(logs.path()).build().unwrap();
    let err = attached.release_all().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition);

    // A third owner adopts both; its restart policy covers them too: one
    // killed from outside (its exit status unknown, as it is not our
    // child) comes back on its port.
    let w = builder(logs.path())
        .detached(true)
        .restart(fast_restarts(Duration::from_secs(10)))
        .build()
        .unwrap();
    let mut events = w.events();
    let report = w.adopt(released.clone()).await.unwrap();
    assert_eq!(report.adopted.len(), 2, "{report:?}");
    let victim = &released[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (exited, _) = next_event(&mut events, "Exited", |e| {
        matches!(e.kind, ReplicaEventKind::Exited { .. })
    })
    .await;
    assert_eq!(exited.pid, victim.pid);
    assert_eq!(
        exited.kind,
        ReplicaEventKind::Exited {
            status: "is gone, exit status unknown (adopted, so not our child)".into()
        }
    );
    let (started, _) = next_event(&mut events, "Started", |e| {
        e.kind == ReplicaEventKind::Started
    })
    .await;
    let now = w
        .replicas()
        .await
        .into_iter()
        .find(|r| r.name == victim.name())
        .unwrap();
    assert_eq!((now.pid, now.addr.port()), (started.pid, victim.port));
    assert_eq!(now.restarts, victim.restarts + 1);
    assert!(!now.adopted && now.running);
    w.shutdown().await;
    for pid in [released[1].pid, started.pid] {
        wait_gone(pid, Duration::from_secs(5)).await;
    }
}

/// An owner that goes while a replica is being stopped (here: one that
/// ignores SIGTERM, with a long grace period) records it as stopping, and
/// lets go of it without waiting out the grace period; the next owner
/// finishes the job instead of adopting it into its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_left_half_stopped_is_stopped_by_the_next_owner() {
    let logs = tempfile::tempdir().unwrap();
    let svc = service("checkout");
    let w = builder(logs.path())
        .detached(true)
        .grace_period(Duration::from_secs(600))
        .build()
        .unwrap();
    let stubborn = script("v1", "trap '' TERM; echo armed; exec sleep 1000");
    w.deploy(&svc, Slot::Blue, &stubborn, 1).await.unwrap();
    let pid = w.pids(&svc, Slot::Blue).await[0].1;
    // SIGTERM only once the trap is set.
    let log = w.log_path(&svc, Slot::Blue, 0);
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log).unwrap().contains("\narmed") {
        assert!(
            Instant::now() < deadline,
            "the replica never armed its trap"
        );
        sleep(Duration::from_millis(10)).await;
    }
    w.scale(&svc, Slot::Blue, 0).await.unwrap();
    let records = w.records().await;
    assert_eq!(records.len(), 1);
    assert!(records[0].stopping && records[0].pid == pid, "{records:?}");
    let released = Instant::now();
    assert_eq!(w.release_all().await.unwrap(), records);
    assert!(released.elapsed() < Duration::from_secs(5));
    drop(w);
    sleep(Duration::from_millis(200)).await;
    assert!(alive(pid), "SIGTERM is ignored and the owner is gone");

    let w = builder(logs.path())
        .detached(true)
        .grace_period(Duration::from_millis(100))
        .build()
        .unwrap();
    let report = w.adopt(records).await.unwrap();
    assert_eq!(report.stopping, ["checkout-blue-0"]);
    assert!(
        report.adopted.is_empty() && report.restarted.is_empty(),
        "{report:?}"
    );
    wait_gone(pid, Duration::from_secs(5)).await;
    assert_eq!(
        w.status(&svc, Slot::Blue).await.unwrap(),
        SlotStatus::empty(Slot::Blue)
    );
    assert!(w.replicas().await.is_empty());
}

/// A replica that crashes is restarted on its port after 50, 100, 200 and
/// 200 ms (capped); once one ran past `reset_after`, the next crash waits
/// 50 ms again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replica_restarts_on_its_port_with_growing_backoff() {
    let logs = tempfile::tempdir().unwrap();
    let w = builder(logs.path())
        .restart(fast_restarts(Duration::from_millis(600)))
        .build()
        .unwrap();
    let mut events = w.events();
    let svc = service("checkout");
    let counter = logs.path().join("runs");
    // Runs 1-5 crash at once; later runs live for a second, then crash.
    let crasher = script(
        "v1",
        &format!(
            "n=$(($(cat {c} 2>/dev/null || echo 0) + 1)); echo $n > {c}; \
             echo \"run $n port $PORT\"; \
             if [ $n -le 5 ]; then exit 3; fi; sleep 1; exit 4",
            c = shell_quote(&counter.display().to_string())
        ),
    );
    w.deploy(&svc, Slot::Blue, &crasher, 1).await.unwrap();
    let port = w.replicas().await[0].addr.port();

    let mut waits = Vec::new();
    let mut seen_down = 0;
    for _ in 0..6 {
        let (scheduled, at) = next_event(&mut events, "RestartScheduled", |e| {
            matches!(e.kind, ReplicaEventKind::RestartScheduled { .. })
        })
        .await;
        let ReplicaEventKind::RestartScheduled { attempt, after } = scheduled.kind else {
            unreachable!()
        };
        if after >= Duration::from_millis(200) {
            // Down during its backoff: reported, not ready (unless this
            // test saw the event so late that the restart came first).
            let s = w.status(&svc, Slot::Blue).await.unwrap();
            if s.updated == 0 {
                assert_eq!(s.ready, 0);
                assert!(
                    s.failures[0].starts_with("checkout-blue-0 exited with status 3"),
                    "{s:?}"
                );
                seen_down += 1;
            }
        }
        let (_, started) = next_event(&mut events, "Started", |e| {
            e.kind == ReplicaEventKind::Started
        })
        .await;
        // Measured from when this test saw the scheduling, which may be a
        // little late: half the backoff is the bound that cannot flake.
        assert!(
            started - at >= after / 2,
            "restart {attempt} came {:?} after it was scheduled, before its {after:?} backoff",
            started - at
        );
        waits.push((attempt, after.as_millis()));
    }
    assert_eq!(
        waits,
        [(1, 50), (2, 100), (3, 200), (4, 200), (5, 200), (1, 50)],
        "the 6th run lived past reset_after, so its crash starts a new loop"
    );
    // Same port every run; the replica is down (and reported) between runs.
    let log = std::fs::read_to_string(w.log_path(&svc, Slot::Blue, 0)).unwrap();
    let runs: Vec<&str> = log.lines().filter(|l| l.starts_with("run ")).collect();
    assert!(runs.len() >= 6, "{log}");
    assert!(seen_down > 0, "never saw the replica down between runs");
    assert!(
        runs.iter().all(|l| l.ends_with(&format!("port {port}"))),
        "{log}"
    );
    let status = &w.replicas().await[0];
    assert!(status.restarts >= 6, "{status:?}");
    w.shutdown().await;
}

/// Restarts are for exits Atlas did not cause: a SIGKILL from elsewhere
/// restarts the replica; scale down, deploy and shutdown never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_stopped_by_atlas_are_not_restarted() {
    let logs = tempfile::tempdir().unwrap();
    let w = builder(logs.path())
        .detached(true)
        .restart(fast_restarts(Duration::from_secs(10)))
        .build()
        .unwrap();
    let mut events = w.events();
    let svc = service("checkout");
    let sleeper = |v: &str| script(v, "echo up; exec sleep 1000");
    w.deploy(&svc, Slot::Blue, &sleeper("v1"), 3).await.unwrap();
    let pids = w.pids(&svc, Slot::Blue).await;

    // Killed by someone else: restarted, same port.
    let victim = pids[0].1;
    let port = w.replicas().await[0].addr.port();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (exited, _) = next_event(&mut events, "Exited", |e| {
        matches!(e.kind, ReplicaEventKind::Exited { .. })
    })
    .await;
    assert_eq!(
        exited.kind,
        ReplicaEventKind::Exited {
            status: "was killed by signal SIGKILL".into()
        }
    );
    let (restarted, _) = next_event(&mut events, "Started", |e| {
        e.kind == ReplicaEventKind::Started && e.index == 0
    })
    .await;
    assert_ne!(restarted.pid, victim);
    let now = &w.replicas().await[0];
    assert_eq!(
        (now.addr.port(), now.restarts, now.pid),
        (port, 1, restarted.pid)
    );

    // Scale down: index 2 stops and stays stopped.
    w.scale(&svc, Slot::Blue, 2).await.unwrap();
    let (stopped, _) = next_event(&mut events, "Stopped", |e| {
        e.kind == ReplicaEventKind::Stopped
    })
    .await;
    assert_eq!((stopped.index, stopped.pid), (2, pids[2].1));
    // Deploy: the old replicas stop and stay stopped.
    w.deploy(&svc, Slot::Blue, &sleeper("v2"), 1).await.unwrap();
    let old: Vec<u32> = vec![restarted.pid, pids[1].1, pids[2].1];
    for pid in &old {
        wait_gone(*pid, Duration::from_secs(5)).await;
    }
    let v2 = w.pids(&svc, Slot::Blue).await[0].1;
    w.shutdown().await;
    wait_gone(v2, Duration::from_secs(5)).await;
    // Several backoffs later, nothing came back.
    sleep(Duration::from_millis(500)).await;
    let mut later = Vec::new();
    while let Ok(e) = events.try_recv() {
        later.push(e);
    }
    assert!(
        !later.iter().any(|e| matches!(
            e.kind,
            ReplicaEventKind::RestartScheduled { .. } | ReplicaEventKind::Exited { .. }
        )),
        "{later:?}"
    );
    assert_eq!(
        later
            .iter()
            .filter(|e| e.kind == ReplicaEventKind::Started)
            .count(),
        1,
        "only v2 started: {later:?}"
    );
    assert!(w.replicas().await.is_empty());
}

/// A record whose process is gone, or whose pid now names a process with
/// another start time, gets a fresh replica; on its recorded port if free,
/// else on a new one; a record with a bad release is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_records_get_fresh_replicas() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let svc = service("checkout");
    let w = detached(logs.path());
    w.deploy(&svc, Slot::Blue, &http_server("v1", site.path()), 3)
        .await
        .unwrap();
    wait_for(&w, &svc, Slot::Blue, "3 ready", |s| s.ready == 3).await;
    let mut records = w.release_all().await.unwrap();
    records.sort_by_key(|r| r.index);
    drop(w);

    // 0: its process is gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(records[0].pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(records[0].pid, Duration::from_secs(5)).await;
    // 1: its pid was "reused" by a process with another start time (this
    // test's own), while the old replica is gone and another program
    // took its port.
    let old_1 = records[1].pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(old_1, Duration::from_secs(5)).await;
    records[1].pid = std::process::id();
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, records[1].port)).unwrap();
    // 2 still runs; a fourth record names an invalid release.
    let mut bad = records[2].clone();
    bad.index = 3;
    bad.release.artifact = String::new();

    let w = detached(logs.path());
    let report = w
        .adopt(records.iter().cloned().chain([bad]).collect())
        .await
        .unwrap();
    assert_eq!(report.adopted, ["checkout-blue-2"]);
    assert_eq!(report.restarted, ["checkout-blue-0", "checkout-blue-1"]);
    assert_eq!(report.moved.len(), 1, "{report:?}");
    let (moved, from, to) = &report.moved[0];
    assert_eq!(
        (moved.as_str(), *from),
        ("checkout-blue-1", records[1].port)
    );
    assert_ne!(*to, records[1].port);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, "checkout-blue-3");
    assert!(
        report.failed[0].1.contains("release.artifact"),
        "{report:?}"
    );
    assert!(alive(std::process::id()), "a reused pid is never signalled");

    let status = wait_for(&w, &svc, Slot::Blue, "3 ready", |s| s.ready == 3).await;
    let port_of = |name: &str| {
        status
            .endpoints
            .iter()
            .find(|e| e.replica == name)
            .map(|e| e.addr.port())
    };
    assert_eq!(port_of("checkout-blue-0"), Some(records[0].port));
    assert_eq!(port_of("checkout-blue-1"), Some(*to));
    assert_eq!(port_of("checkout-blue-2"), Some(records[2].port));
    let fresh: Vec<u32> = w
        .pids(&svc, Slot::Blue)
        .await
        .into_iter()
        .map(|p| p.1)
        .collect();
    assert!(!fresh.contains(&records[0].pid) && !fresh.contains(&std::process::id()));
    assert!(fresh.contains(&records[2].pid));
    drop(squatter);
    w.shutdown().await;
    for pid in fresh {
        wait_gone(pid, Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_restarting_workloads_pass_the_conformance_suites() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = builder(logs.path())
        .detached(true)
        .restart(fast_restarts(Duration::from_secs(10)))
        .build()
        .unwrap();
    let fixture = WorkloadsFixture::new(
        http_server("v1", site.path()),
        http_server("v2", site.path()),
    )
    .with_ready_timeout(WAIT)
    .with_poll_interval(Duration::from_millis(20));
    conformance::workloads::all(&w, &fixture, "proc-detached").await;
    conformance::scaler::all(&w, &w, &fixture, "proc-detached-scale").await;
    w.shutdown().await;
    assert!(w.replicas().await.is_empty());
}
