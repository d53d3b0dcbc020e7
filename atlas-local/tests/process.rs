//! `ProcessWorkloads` against real processes: the `Workloads` conformance
//! suite, plus environment, logs, failures, graceful stop and cleanup.
//!
//! Replicas are `python3 -m http.server` (bound to `127.0.0.1:$PORT`) and
//! small `sh` scripts, so nothing beyond a Debian base system is needed.

use std::path::Path;
use std::time::Duration;

use atlas_core::testing::conformance::{self, workloads::WorkloadsFixture};
use atlas_core::{ErrorKind, Release, ServiceName, Slot, SlotStatus, Workloads};
use atlas_local::process::{ProcessWorkloads, Readiness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

mod common;
use common::{http_server, python, script};

const WAIT: Duration = Duration::from_secs(20);

fn workloads(logs: &Path) -> ProcessWorkloads {
    ProcessWorkloads::builder()
        .log_dir(logs)
        .grace_period(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
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

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32, within: Duration) -> Duration {
    let started = Instant::now();
    while alive(pid) {
        assert!(
            started.elapsed() < within,
            "process {pid} still alive after {within:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// The lines a replica wrote to its log, without Atlas's header lines
/// (which quote the command, and so any marker in it).
fn output_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("==== "))
        .map(str::to_string)
        .collect()
}

/// Waits until the replica wrote a line containing `marker`; returns its
/// output lines.
async fn wait_for_output(path: &Path, marker: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = output_lines(path);
        if lines.iter().any(|l| l.contains(marker)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got a line with {marker:?}; output so far: {lines:?}",
            path.display()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_workloads_and_scaler_conformance_suites() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let fixture = WorkloadsFixture::new(
        http_server("v1", site.path()),
        http_server("v2", site.path()),
    )
    .with_ready_timeout(WAIT)
    .with_poll_interval(Duration::from_millis(20));
    conformance::workloads::all(&w, &fixture, "proc").await;
    conformance::scaler::all(&w, &w, &fixture, "proc-scale").await;
    w.shutdown().await;
}

#[tokio::test]
async fn replicas_get_port_slot_and_identity_in_their_environment() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "hello from the replica").unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    let mut release = http_server("v7", site.path()).with_env("GREETING", "hi there");
    // Print the environment first, then become the server.
    release.args[1] = format!(
        "echo \"env: PORT=$PORT ATLAS_SLOT=$ATLAS_SLOT ATLAS_REPLICA=$ATLAS_REPLICA ATLAS_SERVICE=$ATLAS_SERVICE ATLAS_VERSION=$ATLAS_VERSION GREETING=$GREETING\"; {}",
        release.args[1]
    );
    w.deploy(&svc, Slot::Green, &release, 2).await.unwrap();
    let s = wait_for(&w, &svc, Slot::Green, "2 ready", |s| s.ready == 2).await;
    assert_eq!(s.version.as_deref(), Some("v7"));
    for (index, endpoint) in s.endpoints.iter().enumerate() {
        assert_eq!(endpoint.replica, format!("checkout-green-{index}"));
        assert!(endpoint.addr.ip().is_loopback());
        let log = w.log_path(&svc, Slot::Green, index as u32);
        assert_eq!(log, logs.path().join(format!("checkout-green-{index}.log")));
        let lines = wait_for_output(&log, "env: ").await;
        let expected = format!(
            "env: PORT={} ATLAS_SLOT=green ATLAS_REPLICA={index} ATLAS_SERVICE=checkout ATLAS_VERSION=v7 GREETING=hi there",
            endpoint.addr.port()
        );
        assert_eq!(lines[0], expected);
        // The endpoint really is this replica's server.
        let answer = http_get(endpoint.addr, "/hello.txt").await;
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.ends_with("hello from the replica"), "{answer}");
    }
    w.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_exits_is_reported_and_not_restarted() {
    let logs = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    w.deploy(
        &svc,
        Slot::Green,
        &script("v1", "sleep 0.2; echo bye; exit 3"),
        2,
    )
    .await
    .unwrap();
    let s = wait_for(&w, &svc, Slot::Green, "both failures", |s| {
        s.failures.len() == 2
    })
    .await;
    assert_eq!(
        s.failures,
        vec![
            "checkout-green-0 exited with status 3".to_string(),
            "checkout-green-1 exited with status 3".to_string(),
        ]
    );
    assert_eq!((s.desired, s.updated, s.ready), (2, 0, 0));
    assert!(s.endpoints.is_empty());
    assert!(!s.is_ready());
    // Not restarted: the pids stay those of the exited processes.
    let pids = w.pids(&svc, Slot::Green).await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(w.pids(&svc, Slot::Green).await, pids);
    assert_eq!(w.status(&svc, Slot::Green).await.unwrap().failures.len(), 2);
    // Scale does not restart them either.
    w.scale(&svc, Slot::Green, 2).await.unwrap();
    assert_eq!(w.pids(&svc, Slot::Green).await, pids);

    // Killed by a signal is reported as such.
    w.deploy(&svc, Slot::Blue, &script("v1", "kill -SEGV $$"), 1)
        .await
        .unwrap();
    let s = wait_for(&w, &svc, Slot::Blue, "a failure", |s| {
        !s.failures.is_empty()
    })
    .await;
    assert_eq!(
        s.failures,
        vec!["checkout-blue-0 was killed by signal SIGSEGV".to_string()]
    );

    // A new deploy clears the failures of the previous release.
    let site = tempfile::tempdir().unwrap();
    w.deploy(&svc, Slot::Green, &http_server("v2", site.path()), 2)
        .await
        .unwrap();
    let s = w.status(&svc, Slot::Green).await.unwrap();
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    let s = wait_for(&w, &svc, Slot::Green, "2 ready", |s| s.ready == 2).await;
    assert!(s.failures.is_empty());
    w.shutdown().await;
}

#[tokio::test]
async fn redeploying_the_same_release_restarts_only_exited_replicas() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    let release = http_server("v1", site.path());
    w.deploy(&svc, Slot::Blue, &release, 3).await.unwrap();
    wait_for(&w, &svc, Slot::Blue, "3 ready", |s| s.ready == 3).await;
    let before = w.pids(&svc, Slot::Blue).await;
    // Replica 1 dies.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[1].1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_for(&w, &svc, Slot::Blue, "a failure", |s| {
        !s.failures.is_empty()
    })
    .await;
    assert_eq!(
        s.failures,
        vec!["checkout-blue-1 was killed by signal SIGKILL".to_string()]
    );
    assert_eq!((s.updated, s.ready), (2, 2));
    w.deploy(&svc, Slot::Blue, &release, 3).await.unwrap();
    let s = wait_for(&w, &svc, Slot::Blue, "3 ready", |s| s.ready == 3).await;
    assert!(s.failures.is_empty());
    let after = w.pids(&svc, Slot::Blue).await;
    assert_eq!(after[0], before[0], "running replicas are kept");
    assert_eq!(after[2], before[2], "running replicas are kept");
    assert_ne!(after[1], before[1], "the exited replica is replaced");
    w.shutdown().await;
}

#[tokio::test]
async fn stop_sends_sigterm_first_and_waits_for_a_graceful_exit() {
    let logs = tempfile::tempdir().unwrap();
    // A long grace period: if the process is gone quickly, SIGTERM did it.
    let w = ProcessWorkloads::builder()
        .log_dir(logs.path())
        .grace_period(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = service("checkout");
    let graceful = script(
        "v1",
        "trap 'echo got SIGTERM, draining; sleep 0.3; echo drained; exit 0' TERM; \
         echo started; while :; do sleep 0.05; done",
    );
    w.deploy(&svc, Slot::Green, &graceful, 1).await.unwrap();
    let log = w.log_path(&svc, Slot::Green, 0);
    wait_for_output(&log, "started").await;
    let (_, pid) = w.pids(&svc, Slot::Green).await[0];
    w.scale(&svc, Slot::Green, 0).await.unwrap();
    // Well within the 30 s grace period, so SIGKILL never came.
    wait_gone(pid, Duration::from_secs(10)).await;
    // The trap ran to its end: SIGTERM came first and nothing cut it short.
    // (The shell may also report that SIGTERM ended its `sleep`: the
    // signal goes to the whole process group.)
    let mut lines = output_lines(&log);
    lines.retain(|l| l != "Terminated");
    assert_eq!(lines, ["started", "got SIGTERM, draining", "drained"]);
    w.shutdown().await;
}

#[tokio::test]
async fn a_replica_ignoring_sigterm_is_killed_after_the_grace_period() {
    let logs = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(700);
    let w = ProcessWorkloads::builder()
        .log_dir(logs.path())
        .grace_period(grace)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = service("checkout");
    let stubborn = script(
        "v1",
        "trap 'echo ignoring SIGTERM' TERM; echo started; while :; do sleep 0.05; done",
    );
    w.deploy(&svc, Slot::Green, &stubborn, 1).await.unwrap();
    let log = w.log_path(&svc, Slot::Green, 0);
    wait_for_output(&log, "started").await;
    let (_, pid) = w.pids(&svc, Slot::Green).await[0];
    let stopped_at = Instant::now();
    w.scale(&svc, Slot::Green, 0).await.unwrap();
    wait_for_output(&log, "ignoring SIGTERM").await;
    sleep(grace / 2).await;
    assert!(alive(pid), "killed before the grace period ended");
    wait_gone(pid, Duration::from_secs(10)).await;
    assert!(
        stopped_at.elapsed() >= grace,
        "gone after {:?}, before the grace period of {grace:?}",
        stopped_at.elapsed()
    );
    // shutdown waits for nothing more: the replica is gone.
    w.shutdown().await;
}

#[tokio::test]
async fn deploy_starts_the_new_replicas_then_stops_the_old() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    w.deploy(&svc, Slot::Blue, &http_server("v1", site.path()), 2)
        .await
        .unwrap();
    let old = wait_for(&w, &svc, Slot::Blue, "2 ready", |s| s.ready == 2).await;
    let old_pids = w.pids(&svc, Slot::Blue).await;
    w.deploy(&svc, Slot::Blue, &http_server("v2", site.path()), 2)
        .await
        .unwrap();
    let s = w.status(&svc, Slot::Blue).await.unwrap();
    assert_eq!(s.version.as_deref(), Some("v2"));
    let new = wait_for(&w, &svc, Slot::Blue, "2 ready", |s| s.ready == 2).await;
    assert!(new.endpoints.iter().all(|e| !old.endpoints.contains(e)));
    for (_, pid) in old_pids {
        wait_gone(pid, Duration::from_secs(10)).await;
    }
    // Each replica's log has one header per start, appended.
    let text = std::fs::read_to_string(w.log_path(&svc, Slot::Blue, 0)).unwrap();
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("==== ")).collect();
    assert_eq!(headers.len(), 2, "{text}");
    assert!(headers[0].contains("starting checkout-blue-0") && headers[0].contains("version v1"));
    assert!(headers[1].contains("version v2"), "{}", headers[1]);
    w.shutdown().await;
}

#[tokio::test]
async fn output_is_captured_to_per_replica_logs() {
    let logs = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("billing");
    let chatty = script(
        "v3",
        "echo \"out from $ATLAS_REPLICA\"; echo \"err from $ATLAS_REPLICA\" >&2; sleep 30",
    );
    w.deploy(&svc, Slot::Blue, &chatty, 2).await.unwrap();
    for index in 0..2 {
        let path = logs.path().join(format!("billing-blue-{index}.log"));
        let mut lines = wait_for_output(&path, &format!("err from {index}")).await;
        lines.sort();
        assert_eq!(
            lines,
            [format!("err from {index}"), format!("out from {index}")]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let header = text.lines().next().unwrap();
        assert!(
            header.starts_with("==== ")
                && header.contains("starting billing-blue-")
                && header.contains("version v3"),
            "{header}"
        );
    }
    w.shutdown().await;
}

#[tokio::test]
async fn http_readiness_waits_for_a_2xx() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = ProcessWorkloads::builder()
        .log_dir(logs.path())
        .readiness(Readiness::http_get("/ready"))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = service("checkout");
    w.deploy(&svc, Slot::Green, &http_server("v1", site.path()), 1)
        .await
        .unwrap();
    // The server is up (answering 404 for /ready) but not ready.
    let log = w.log_path(&svc, Slot::Green, 0);
    wait_for_output(&log, "\"GET /ready HTTP/1.1\" 404").await;
    let s = w.status(&svc, Slot::Green).await.unwrap();
    assert_eq!((s.updated, s.ready), (1, 0), "{s:?}");
    std::fs::write(site.path().join("ready"), "yes").unwrap();
    let s = wait_for(&w, &svc, Slot::Green, "ready", |s| s.ready == 1).await;
    assert_eq!(s.endpoints.len(), 1);
    w.shutdown().await;
}

/// An HTTP/1.1 server that sends its whole answer in one write and closes
/// at once, as small servers (hyper among them) do for `Connection: close`.
fn one_shot_http_server(version: &str, status: &str) -> Release {
    let program = format!(
        r#"
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    c.close()
"#
    );
    Release::new(version, python())
        .with_arg("-c")
        .with_arg(program)
}

#[tokio::test]
async fn http_readiness_reads_answers_that_close_at_once() {
    let logs = tempfile::tempdir().unwrap();
    let w = ProcessWorkloads::builder()
        .log_dir(logs.path())
        .readiness(Readiness::http_get("/ready"))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = service("checkout");
    w.deploy(&svc, Slot::Green, &one_shot_http_server("v1", "200 OK"), 2)
        .await
        .unwrap();
    wait_for(&w, &svc, Slot::Green, "2 ready", |s| s.ready == 2).await;
    // And a 503 keeps a replica unready.
    w.deploy(
        &svc,
        Slot::Blue,
        &one_shot_http_server("v1", "503 Service Unavailable"),
        1,
    )
    .await
    .unwrap();
    sleep(Duration::from_millis(500)).await;
    let s = w.status(&svc, Slot::Blue).await.unwrap();
    assert_eq!((s.updated, s.ready), (1, 0), "{s:?}");
    w.shutdown().await;
}

#[tokio::test]
async fn dropping_kills_every_replica_and_its_children() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    w.deploy(&svc, Slot::Blue, &http_server("v1", site.path()), 2)
        .await
        .unwrap();
    // A replica that ignores SIGTERM and has a child of its own.
    let grandchild_file = logs.path().join("grandchild.pid");
    let stubborn = script(
        "v1",
        &format!(
            "trap '' TERM; sleep 1000 & echo $! > {}; wait",
            grandchild_file.display()
        ),
    );
    w.deploy(&svc, Slot::Green, &stubborn, 1).await.unwrap();
    wait_for(&w, &svc, Slot::Blue, "2 ready", |s| s.ready == 2).await;
    let grandchild: u32 = wait_for_output(&grandchild_file, "")
        .await
        .concat()
        .trim()
        .parse()
        .unwrap();
    let mut pids: Vec<u32> = w
        .pids(&svc, Slot::Blue)
        .await
        .into_iter()
        .map(|p| p.1)
        .collect();
    pids.extend(w.pids(&svc, Slot::Green).await.into_iter().map(|p| p.1));
    pids.push(grandchild);
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| alive(*p)));
    drop(w);
    for pid in pids {
        // SIGKILL is immediate; no grace period applies on drop.
        wait_gone(pid, Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn shutdown_stops_everything_and_refuses_more_work() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    w.deploy(&svc, Slot::Blue, &http_server("v1", site.path()), 2)
        .await
        .unwrap();
    wait_for(&w, &svc, Slot::Blue, "2 ready", |s| s.ready == 2).await;
    let pids = w.pids(&svc, Slot::Blue).await;
    assert_eq!(
        w.shutdown().await,
        2,
        "shutdown counts the replicas it stopped"
    );
    // shutdown returns once the processes are gone.
    for (_, pid) in &pids {
        assert!(!alive(*pid), "{pid} still alive after shutdown");
    }
    let s = w.status(&svc, Slot::Blue).await.unwrap();
    assert_eq!((s.desired, s.updated, s.ready), (0, 0, 0));
    let err = w
        .deploy(&svc, Slot::Blue, &http_server("v2", site.path()), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition);
    assert_eq!(w.shutdown().await, 0, "nothing left to stop");
}

#[tokio::test]
async fn bad_releases_are_refused_and_keep_the_slot_as_it_was() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    w.deploy(&svc, Slot::Blue, &slow_server("v1"), 1)
        .await
        .unwrap();
    let before = wait_for(&w, &svc, Slot::Blue, "1 ready", |s| s.ready == 1).await;

    let missing = Release::new("v2", "/nonexistent/atlas-test-program");
    let err = w.deploy(&svc, Slot::Blue, &missing, 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("release.artifact"), "{err}");
    assert!(err.to_string().contains("was not found"), "{err}");
    assert_eq!(w.status(&svc, Slot::Blue).await.unwrap(), before);

    let reserved = http_server("v2", site.path()).with_env("ATLAS_SLOT", "red");
    let err = w.deploy(&svc, Slot::Blue, &reserved, 1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid release.env.ATLAS_SLOT: is set by Atlas for each replica and may not be set by the release"
    );
    let err = w
        .deploy(&svc, Slot::Blue, &http_server("v2", site.path()), 5000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid replicas"), "{err}");
    assert_eq!(w.status(&svc, Slot::Blue).await.unwrap(), before);

    let err = w.scale(&svc, Slot::Green, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    w.shutdown().await;
}

#[tokio::test]
async fn scale_down_stops_the_highest_indices() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = workloads(logs.path());
    let svc = service("checkout");
    w.deploy(&svc, Slot::Green, &http_server("v1", site.path()), 4)
        .await
        .unwrap();
    wait_for(&w, &svc, Slot::Green, "4 ready", |s| s.ready == 4).await;
    let pids = w.pids(&svc, Slot::Green).await;
    w.scale(&svc, Slot::Green, 2).await.unwrap();
    assert_eq!(w.pids(&svc, Slot::Green).await, pids[..2]);
    for (_, pid) in &pids[2..] {
        wait_gone(*pid, Duration::from_secs(10)).await;
    }
    assert!(alive(pids[0].1) && alive(pids[1].1));
    // Scaling up again starts fresh replicas at the freed indices.
    w.scale(&svc, Slot::Green, 3).await.unwrap();
    let s = wait_for(&w, &svc, Slot::Green, "3 ready", |s| s.ready == 3).await;
    let names: Vec<&str> = s.endpoints.iter().map(|e| e.replica.as_str()).collect();
    assert_eq!(
        names,
        ["checkout-green-0", "checkout-green-1", "checkout-green-2"]
    );
    w.shutdown().await;
}

/// The kernel ties a replica's life to the thread that forked it: replicas
/// deployed from threads that end (a thread of the caller's own, tokio's
/// blocking pool) must keep running while their owner lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_deployed_from_threads_that_end_keep_running() {
    let logs = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let w = std::sync::Arc::new(workloads(logs.path()));
    let svc = service("checkout");
    let runtime = tokio::runtime::Handle::current();
    let deploy = {
        let (w, svc, release) = (w.clone(), svc.clone(), http_server("v1", site.path()));
        move || runtime.block_on(w.deploy(&svc, Slot::Blue, &release, 2))
    };
    std::thread::spawn(deploy).join().unwrap().unwrap();
    let (w2, svc2, release) = (w.clone(), svc.clone(), http_server("v1", site.path()));
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(w2.deploy(&svc2, Slot::Green, &release, 1))
    })
    .await
    .unwrap()
    .unwrap();
    wait_for(&w, &svc, Slot::Blue, "2 ready", |s| s.ready == 2).await;
    wait_for(&w, &svc, Slot::Green, "1 ready", |s| s.ready == 1).await;
    // The deploying threads are gone; a replica tied to them would have
    // been killed by now.
    sleep(Duration::from_millis(500)).await;
    for slot in [Slot::Blue, Slot::Green] {
        let s = w.status(&svc, slot).await.unwrap();
        assert!(s.failures.is_empty(), "{slot}: {:?}", s.failures);
        for (_, pid) in w.pids(&svc, slot).await {
            assert!(alive(pid), "{slot} replica {pid} died with its thread");
        }
    }
    assert_eq!(w.shutdown().await, 3);
}

/// Set in the child copy of this test binary that plays the owner in
/// [`replicas_die_with_their_owner_even_on_sigkill`]: the directory to put
/// the replicas' logs and pids in.
const OWNER_DIR_VAR: &str = "ATLAS_TEST_PROCESS_OWNER_DIR";

/// An owner that is SIGKILLed runs no `Drop` and no signal handler: only
/// the kernel can end its replicas. This test runs a copy of this test
/// binary as the owner (the same test, with [`OWNER_DIR_VAR`] set), which
/// deploys replicas, writes their pids and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_die_with_their_owner_even_on_sigkill() {
    if let Some(dir) = std::env::var_os(OWNER_DIR_VAR) {
        return be_the_owner(Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut owner = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "replicas_die_with_their_owner_even_on_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OWNER_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pids_file = dir.path().join("pids");
    let pids: Vec<u32> = loop {
        let pids: Vec<u32> = std::fs::read_to_string(&pids_file)
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        if pids.len() == 3 {
            break pids;
        }
        if let Some(status) = owner.try_wait().unwrap() {
            panic!("the owner exited ({status}) before starting its replicas");
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert!(pids.iter().all(|p| alive(*p)), "replicas must run first");
    owner.start_kill().unwrap();
    owner.wait().await.unwrap();
    for pid in pids {
        wait_gone(pid, Duration::from_secs(5)).await;
    }
}

async fn be_the_owner(dir: &Path) {
    let w = workloads(&dir.join("logs"));
    let svc = service("checkout");
    let sleeper = Release::new("v1", "sleep").with_arg("1000");
    w.deploy(&svc, Slot::Blue, &sleeper, 2).await.unwrap();
    // One more from a thread that ends, as in the test above.
    let runtime = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(w.deploy(&svc, Slot::Green, &sleeper, 1)))
            .join()
            .unwrap()
    })
    .unwrap();
    let mut pids: Vec<String> = Vec::new();
    for slot in [Slot::Blue, Slot::Green] {
        pids.extend(w.pids(&svc, slot).await.iter().map(|p| p.1.to_string()));
    }
    // Written whole under another name, then renamed: the test never reads
    // a partial list.
    std::fs::write(dir.join("pids.tmp"), pids.join(" ")).unwrap();
    std::fs::rename(dir.join("pids.tmp"), dir.join("pids")).unwrap();
    std::future::pending::<()>().await;
}

/// Clients sending `POST /` through the proxy back to back, each request
/// on a new connection, counting answers that are not a 200. POST, because
/// the proxy retries a failed idempotent request on another replica, which
/// would hide a replica stopped with requests in flight.
struct Clients {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Clients {
    fn start(proxy: std::net::SocketAddr, n: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sent += 1;
                        let answer = tokio::time::timeout(WAIT, http_post(proxy)).await;
                        match answer {
                            Ok(a)
                                if a.starts_with("HTTP/1.1 200")
                                    || a.starts_with("HTTP/1.0 200") => {}
                            Ok(a) => failed.push(a.lines().next().unwrap_or("").to_string()),
                            Err(_) => failed.push("timed out".into()),
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        Clients { stop, tasks }
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.tasks {
            let (sent, failed) = t.await.unwrap();
            total.0 += sent;
            total.1.extend(failed);
        }
        total
    }
}

async fn http_post(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// An HTTP/1.1 keep-alive server that takes 50 ms per request and dies at
/// once on SIGTERM: a replica stopped with requests in flight fails them.
fn slow_server(version: &str) -> Release {
    let program = r#"
import http.server, os, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        time.sleep(0.05)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;
    Release::new(version, python())
        .with_arg("-c")
        .with_arg(program)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_live_slot_up_and_down_fails_no_request() {
    use atlas_core::{Scaler, TrafficRouter, TrafficSplit};
    use atlas_local::proxy::ProxyRouter;

    let logs = tempfile::tempdir().unwrap();
    // No grace: a replica stopped with requests in flight fails them at
    // once, so only draining first keeps every request whole.
    let w = ProcessWorkloads::builder()
        .log_dir(logs.path())
        .grace_period(Duration::ZERO)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = service("live-scale");
    let proxy = ProxyRouter::builder(svc.clone())
        .listen("127.0.0.1:0".parse().unwrap())
        .grace_period(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    w.deploy(&svc, Slot::Blue, &slow_server("v1"), 1)
        .await
        .unwrap();
    let ready = wait_for(&w, &svc, Slot::Blue, "1 ready", |s| s.ready == 1).await;
    proxy
        .set_endpoints(&svc, Slot::Blue, &ready.endpoints)
        .await
        .unwrap();
    proxy
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();

    let clients = Clients::start(proxy.local_addr(), 8);
    sleep(Duration::from_millis(300)).await;
    let mut stopped = Vec::new();
    for target in [4u32, 1, 3, 2, 1] {
        let before = w.pids(&svc, Slot::Blue).await;
        w.scale_live(&svc, Slot::Blue, target, &proxy)
            .await
            .unwrap();
        let listed = proxy.endpoints(Slot::Blue);
        assert_eq!(
            listed.len(),
            target as usize,
            "after scaling to {target} the proxy lists {listed:?}"
        );
        let count = w.replica_count(&svc, Slot::Blue).await.unwrap();
        assert_eq!((count.desired, count.ready), (target, target));
        let after = w.pids(&svc, Slot::Blue).await;
        stopped.extend(
            before
                .into_iter()
                .filter(|p| !after.contains(p))
                .map(|(_, pid)| pid),
        );
        // Let every replica listed now take requests for a while.
        sleep(Duration::from_millis(400)).await;
    }
    let (sent, failed) = clients.stop().await;
    assert!(sent > 100, "the clients sent only {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed while scaling: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(stopped.len(), 5, "3 + 1 + 1 replicas were scaled away");
    for pid in stopped {
        wait_gone(pid, WAIT).await;
    }
    let served = proxy
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60));
    assert_eq!(
        served.proxy_errors, 0,
        "the proxy answered no request itself"
    );
    proxy.shutdown().await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_signals_measure_each_replica_for_the_autoscaler() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use atlas_core::autoscale::{HorizontalPolicy, MetricObservation, observe::observe_policy};
    use atlas_core::{Measurement, MetricProvider, MetricQuery, TrafficRouter, TrafficSplit};
    use atlas_local::proxy::ProxyRouter;
    use atlas_local::signals::LocalSignals;

    let logs = tempfile::tempdir().unwrap();
    let w = Arc::new(workloads(logs.path()));
    let svc = service("signals");
    let proxy = Arc::new(
        ProxyRouter::builder(svc.clone())
            .listen("127.0.0.1:0".parse().unwrap())
            .build()
            .await
            .unwrap(),
    );
    w.deploy(&svc, Slot::Green, &slow_server("v1"), 2)
        .await
        .unwrap();
    let ready = wait_for(&w, &svc, Slot::Green, "2 ready", |s| s.ready == 2).await;
    proxy
        .set_endpoints(&svc, Slot::Green, &ready.endpoints)
        .await
        .unwrap();
    proxy
        .set_split(&svc, &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    let signals = LocalSignals::new(svc.clone(), w.clone(), proxy.clone())
        .unwrap()
        .with_request("cpu", 0.5)
        .unwrap();
    assert!(LocalSignals::new(service("other"), w.clone(), proxy.clone()).is_err());
    assert!(signals_with_bad_request(&svc, &w, &proxy));

    let clients = Clients::start(proxy.local_addr(), 4);
    sleep(Duration::from_millis(1500)).await;
    let q = |text: String| MetricQuery {
        metric: "m".into(),
        query: text,
        window: Duration::from_secs(1),
        args: BTreeMap::new(),
    };
    let value = |m: Measurement| match m {
        Measurement::Value(v) => v,
        other => panic!("expected a value, got {other}"),
    };
    let mut total_rate = 0.0;
    for e in &ready.endpoints {
        let rate = value(
            signals
                .measure(&q(format!("requests_per_second:{}", e.replica)))
                .await
                .unwrap(),
        );
        assert!(rate > 1.0, "{} served {rate} requests/s", e.replica);
        total_rate += rate;
        let p95 = value(
            signals
                .measure(&q(format!("latency_p95:{}", e.replica)))
                .await
                .unwrap(),
        );
        assert!(
            (0.04..2.0).contains(&p95),
            "{} p95 {p95}s (the server takes 50 ms)",
            e.replica
        );
        let open = value(
            signals
                .measure(&q(format!("open_connections:{}", e.replica)))
                .await
                .unwrap(),
        );
        assert!(
            (0.0..=8.0).contains(&open),
            "{} open connections {open}",
            e.replica
        );
        let cpu = value(
            signals
                .measure(&q(format!("cpu:{}", e.replica)))
                .await
                .unwrap(),
        );
        assert!((0.0..4.0).contains(&cpu), "{} cpu {cpu} cores", e.replica);
        let memory = value(
            signals
                .measure(&q(format!("memory:{}", e.replica)))
                .await
                .unwrap(),
        );
        assert!(memory > 1e6, "{} resident memory {memory} bytes", e.replica);
    }
    // Four clients, each waiting ~50 ms per request: tens per second.
    assert!(
        (10.0..400.0).contains(&total_rate),
        "total {total_rate} requests/s"
    );
    assert_eq!(
        signals
            .measure(&q("cpu:signals-green-9".into()))
            .await
            .unwrap(),
        Measurement::NoData,
        "no such replica"
    );
    let err = signals
        .measure(&q("load:signals-green-0".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown replica signal"), "{err}");
    // The service-wide p95 comes from the proxy's own metrics.
    assert!(
        value(
            signals
                .measure(&q("latency_p95:stable".into()))
                .await
                .unwrap()
        ) >= 0.04
    );

    // The web-service policy reads every metric through the signals.
    let policy = LocalSignals::queries_for(HorizontalPolicy::web_service());
    let pods = signals.pods(Slot::Green).await.unwrap();
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p.ready && p.requests["cpu"] == 0.5));
    let observed = observe_policy(
        &signals,
        &policy,
        &pods,
        Duration::from_secs(1),
        &BTreeMap::new(),
    )
    .await;
    assert_eq!(observed.len(), policy.metrics.len());
    for (metric, o) in policy.metrics.iter().zip(&observed) {
        match o {
            MetricObservation::PerPod(values) => {
                assert_eq!(values.len(), 2, "{}: {values:?}", metric.name)
            }
            MetricObservation::Value(v) => assert!(*v >= 0.0, "{}", metric.name),
            other => panic!("{}: {other:?}", metric.name),
        }
    }
    let (_, failed) = clients.stop().await;
    assert!(failed.is_empty(), "{failed:?}");
    proxy.shutdown().await;
    w.shutdown().await;
}

fn signals_with_bad_request(
    svc: &ServiceName,
    w: &std::sync::Arc<ProcessWorkloads>,
    proxy: &std::sync::Arc<atlas_local::proxy::ProxyRouter>,
) -> bool {
    let err = atlas_local::signals::LocalSignals::new(svc.clone(), w.clone(), proxy.clone())
        .unwrap()
        .with_request("memory", 0.0)
        .unwrap_err();
    err.to_string().contains("requests.memory")
}
