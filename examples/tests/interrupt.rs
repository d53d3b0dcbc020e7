//! The `blue_green` example, run for real and stopped mid-rollout by
//! SIGINT, SIGTERM and SIGKILL: no replica may outlive it, and the
//! signals it can catch end it cleanly (rollout aborted, work directory
//! removed, a report, exit status 130 or 143). Also the demo app's own
//! SIGTERM handling, which stopping replicas relies on.
//!
//! The example binary is built by the test itself with the `cargo` that
//! runs it (a no-op when it is fresh): `cargo test` builds examples, but
//! `cargo test --tests` (what `cargo xtask test` runs) does not.
//!
//! Every run gets a unique `ATLAS_EXAMPLE_RUN_ID` in its environment,
//! which its replicas inherit; a replica is a live process (not a zombie)
//! other than the example whose `/proc/PID/environ` holds it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

mod support;
use support::example;

/// How long the example may take to reach its v2 rollout: building on a
/// loaded machine and the v1 rollout come first.
const STARTUP: Duration = Duration::from_secs(120);
/// How long the example may take to clean up and exit after a signal: the
/// abort, the replicas' drain and the proxy's shutdown.
const CLEANUP: Duration = Duration::from_secs(30);
/// How long replicas may take to vanish once the example has exited.
const REPLICAS_GONE: Duration = Duration::from_secs(5);
const RUN_ID_VAR: &str = "ATLAS_EXAMPLE_RUN_ID";

/// A run id no other run (of this or another test process) has.
fn run_id(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

/// Live processes other than `except` whose environment holds
/// `RUN_ID_VAR=id`.
fn replicas(id: &str, except: u32) -> Vec<u32> {
    let needle = format!("{RUN_ID_VAR}={id}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == except || !alive(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// One run of an example, its stdout read line by line.
struct Run {
    child: Child,
    id: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    /// Starts `binary args` in a process group of its own, as a shell
    /// starts a foreground job.
    fn start(binary: &Path, args: &[&str], label: &str) -> Run {
        let id = run_id(label);
        let mut child = Command::new(binary)
            .args(args)
            .env(RUN_ID_VAR, &id)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Run {
            child,
            id,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `marker`; returns it.
    fn wait_for_line(&mut self, marker: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {marker:?} within {within:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit, then collects the rest of the output.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "still running {within:?} after the signal; output:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end when the pipes close; replicas never hold them.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        status
    }

    /// Waits until the run has `count` replicas; returns their pids.
    fn wait_for_replicas(&self, count: usize, within: Duration) -> Vec<u32> {
        let deadline = Instant::now() + within;
        loop {
            let found = replicas(&self.id, self.pid());
            if found.len() == count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "found {} replicas, not {count}, within {within:?}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that no replica of the run is alive, allowing them
    /// [`REPLICAS_GONE`] to go.
    fn assert_no_replica_survives(&self) {
        let deadline = Instant::now() + REPLICAS_GONE;
        loop {
            let left = replicas(&self.id, self.pid());
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let cmdlines: Vec<String> = left
                    .iter()
                    .map(|p| {
                        let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                        format!("{p}: {}", String::from_utf8_lossy(&c).replace('\0', " "))
                    })
                    .collect();
                for p in &left {
                    let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
                }
                panic!(
                    "replicas outlived the example by {REPLICAS_GONE:?}: {cmdlines:?}\noutput:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed test must not leave the example (or replicas) behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in replicas(&self.id, self.pid()) {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
    }
}

/// Runs blue_green until its v2 rollout is under way with all six replicas
/// (three v1 on blue, three v2 on green) running; returns the run and its
/// work directory.
fn blue_green_mid_rollout(label: &str) -> (Run, PathBuf) {
    let mut run = Run::start(&example("blue_green"), &[], label);
    let work = run.wait_for_line("  work ", STARTUP);
    let work = PathBuf::from(work.trim_start().trim_start_matches("work").trim());
    assert!(work.is_dir(), "{} is not a directory", work.display());
    run.wait_for_line("== 2/3 roll out v2", STARTUP);
    // Traffic is moving to green: its replicas are up.
    run.wait_for_line("set canary weight 5%", STARTUP);
    let pids = run.wait_for_replicas(6, STARTUP);
    assert!(pids.iter().all(|p| alive(*p)));
    (run, work)
}

/// The examples are heavy (six processes and 400 requests/s each): one at a
/// time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn stopped_cleanly_by(signal: Signal, to_group: bool, status: i32) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut run, work) = blue_green_mid_rollout(signal.as_str());
    let pid = Pid::from_raw(run.pid() as i32);
    if to_group {
        killpg(pid, signal).unwrap();
    } else {
        kill(pid, signal).unwrap();
    }
    let exit = run.wait_exit(CLEANUP);
    run.assert_no_replica_survives();
    assert_eq!(
        exit.code(),
        Some(status),
        "exit {exit}; output:\n{}",
        run.seen.join("\n")
    );
    let report = run
        .seen
        .iter()
        .find(|l| l.starts_with("interrupted"))
        .unwrap_or_else(|| panic!("no report; output:\n{}", run.seen.join("\n")));
    assert!(
        report.starts_with(&format!(
            "interrupted ({}): rollout of v2 aborted, all traffic back on the stable slot",
            signal.as_str()
        )),
        "{report}"
    );
    assert!(
        report.ends_with(&format!("; removed {}", work.display())),
        "{report}"
    );
    assert!(!work.exists(), "{} is still there", work.display());
}

/// Ctrl-C in a terminal signals the whole foreground process group: the
/// example must handle it, and its replicas (in groups of their own) must
/// not get it straight from the terminal.
#[test]
fn ctrl_c_aborts_the_rollout_stops_the_replicas_and_exits_130() {
    stopped_cleanly_by(Signal::SIGINT, true, 130);
}

#[test]
fn sigterm_aborts_the_rollout_stops_the_replicas_and_exits_143() {
    stopped_cleanly_by(Signal::SIGTERM, false, 143);
}

/// SIGKILL runs nothing in the example: the kernel ends its replicas. The
/// work directory stays behind, and the next run removes it.
#[test]
fn sigkill_leaves_no_replica_running() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut run, work) = blue_green_mid_rollout("SIGKILL");
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGKILL).unwrap();
    let exit = run.wait_exit(CLEANUP);
    assert_eq!(exit.signal(), Some(Signal::SIGKILL as i32), "{exit}");
    run.assert_no_replica_survives();
    assert!(work.is_dir(), "SIGKILL cannot remove the work directory");
    let parent = work.parent().unwrap();
    let removed = atlas_examples::interrupt::remove_abandoned(parent, "atlas-blue-green");
    assert!(removed.contains(&work), "{removed:?}");
    assert!(!work.exists());
}

/// Stopping a replica is a SIGTERM: the demo app must finish the request in
/// flight, close idle keep-alive connections, and exit 0 at once.
#[test]
fn demo_app_drains_and_exits_promptly_on_sigterm() {
    let mut app = Run::start(
        &example("blue_green"),
        &[
            "demo-app",
            "--port",
            "0",
            "--version",
            "v9",
            "--latency-ms",
            "700",
        ],
        "demo-app",
    );
    let listening = app.wait_for_line("demo app listening", STARTUP);
    let addr: SocketAddr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    // An idle keep-alive connection, which must not hold the exit up.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // A request in flight (700 ms of latency) when the signal comes.
    let in_flight = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    });
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    kill(Pid::from_raw(app.pid() as i32), Signal::SIGTERM).unwrap();
    let exit = app.wait_exit(Duration::from_secs(5));
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit}");
    let answer = in_flight.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("v9"), "{answer}");
    // The request in flight had at most 500 ms left; the idle connection
    // must not add anything like a keep-alive timeout.
    assert!(took < Duration::from_secs(3), "took {took:?} to exit");
}
