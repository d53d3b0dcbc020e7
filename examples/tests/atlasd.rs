//! `atlasd` and the `atlas` command under live load through the proxy:
//!
//! - the deploy program killed with SIGKILL in the middle of a 25 % canary:
//!   no request fails, the split stays, a rerun resumes to the end;
//! - `atlasd --takeover` (a restart, and an upgrade to another binary):
//!   no connection refused, replicas keep running;
//! - `atlasd` killed with SIGKILL: replicas keep running, the restarted
//!   daemon adopts them; the gap in service is measured and printed.
//!
//! Each test runs its own daemon on a free port and a private state
//! directory; the replicas are the demo app.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use atlas_examples::load::{Classified, Load, LoadConfig, LoadTotals, Sample};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod support;
use support::example;

const HOST: &str = "web.test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    daemon: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Fixture {
            dir,
            port: free_port(),
            daemon: None,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.state().join("atlasd.sock")
    }

    fn proxy(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts `binary` as atlasd and waits until its admin socket answers.
    fn start_daemon(&self, binary: &Path, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("atlasd.log"))
            .unwrap();
        let mut child = Command::new(binary)
            .arg("--state-dir")
            .arg(self.state())
            .args([
                "--listen",
                &self.proxy().to_string(),
                "--grace-period",
                "3s",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("atlasd starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.atlas(&["services"]).status.success()
                && std::net::TcpStream::connect(self.proxy()).is_ok()
            {
                return child;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("atlasd did not come up:\n{}", self.daemon_log());
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("atlasd.log")).unwrap_or_default()
    }

    fn atlas_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(example("atlas"));
        command.arg("--socket").arg(self.socket()).args(args);
        command
    }

    fn atlas(&self, args: &[&str]) -> Output {
        self.atlas_command(args).output().expect("atlas runs")
    }

    fn atlas_ok(&self, args: &[&str]) -> String {
        let out = self.atlas(args);
        assert!(
            out.status.success(),
            "atlas {args:?} failed ({}):\n{}\n{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes the rollout spec: a canary that pauses at 25 % until
    /// promoted; the first deployment of a service goes straight to 100 %.
    fn spec(&self) -> PathBuf {
        let path = self.dir.path().join("web.yaml");
        std::fs::write(
            &path,
            format!(
                "service: web\nrelease:\n  version: v1\n  artifact: {}\nstrategy:\n  canary:\n    replicas: 2\n    steps:\n      - set_weight: 25\n      - pause: {{}}\n      - set_weight: 100\nprobe:\n  period: 200ms\n  timeout: 200ms\nprogress_deadline: 2m\n",
                example("demo_app").display()
            ),
        )
        .unwrap();
        path
    }

    /// Registers `web` and deploys v1 (all traffic).
    fn first_release(&mut self) -> PathBuf {
        let spec = self.spec();
        self.atlas_ok(&["services", "add", "web", "--host", HOST]);
        self.atlas_ok(&[
            "deploy",
            "web",
            "-f",
            spec.to_str().unwrap(),
            "--version",
            "v1",
            "--lease-ttl",
            "3s",
        ]);
        spec
    }

    fn status(&self) -> serde_json::Value {
        let out = self.atlas_ok(&["status", "web", "--output", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{out}"))
    }

    /// The traffic share of the slot running `version`.
    fn weight_of(&self, version: &str) -> u64 {
        let status = self.status();
        let service = status
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(status);
        service["slots"]
            .as_array()
            .and_then(|slots| {
                slots
                    .iter()
                    .find(|s| s["status"]["version"] == version)
                    .and_then(|s| s["weight"].as_u64())
            })
            .unwrap_or(0)
    }

    fn replica_pids(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.state().join("atlasd.json")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut pids: Vec<u32> = state["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
            .collect();
        pids.sort_unstable();
        pids
    }

    fn load(&self, fresh_connections: bool) -> Load {
        Load::start(LoadConfig {
            host: Some(HOST.into()),
            fresh_connections,
            record: true,
            workers: 8,
            ..LoadConfig::new(self.proxy(), 200)
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Replicas outlive atlasd by design: stop them with the test.
        if let Ok(text) = std::fs::read_to_string(self.state().join("atlasd.json"))
            && let Ok(state) = serde_json::from_str::<serde_json::Value>(&text)
        {
            for r in state["replicas"].as_array().into_iter().flatten() {
                if let Some(pid) = r["pid"].as_i64() {
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn assert_no_failures(what: &str, totals: &LoadTotals) {
    assert!(
        totals.sent > 100,
        "{what}: too little load to mean anything: {totals:?}"
    );
    assert_eq!(totals.failed, 0, "{what}: requests failed: {totals:?}");
    assert_eq!(totals.app_errors, 0, "{what}: {totals:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_deploy_killed_mid_canary_leaves_traffic_alone_and_a_rerun_resumes_it() {
    let mut f = Fixture::new();
    f.daemon = Some(f.start_daemon(&example("atlasd"), &[]));
    let spec = f.first_release();
    let rt = runtime();
    let load = rt.block_on(async { f.load(false) });

    // v2 goes to 25 % and pauses; the deploy program is killed there.
    let mut deploy = f
        .atlas_command(&[
            "deploy",
            "web",
            "-f",
            spec.to_str().unwrap(),
            "--version",
            "v2",
            "--lease-ttl",
            "3s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.weight_of("v2") != 25 {
        assert!(
            Instant::now() < deadline,
            "the canary never reached 25 %: {}",
            f.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    deploy.kill().unwrap(); // SIGKILL
    let _ = deploy.wait();
    let weight_after_kill = f.weight_of("v2");
    let (_, before) = rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        (0, load.totals())
    });
    assert_eq!(weight_after_kill, 25, "traffic stays where it was");
    assert_eq!(
        f.weight_of("v2"),
        25,
        "and stays there while nobody drives it"
    );
    let served_v2 = before.by_version.get("v2").copied().unwrap_or(0);
    assert!(served_v2 > 0, "the canary serves meanwhile: {before:?}");

    // A rerun resumes the rollout (waiting out the dead one's lease), and
    // `atlas promote` ends the pause.
    let rerun = f
        .atlas_command(&[
            "deploy",
            "web",
            "-f",
            spec.to_str().unwrap(),
            "--version",
            "v2",
            "--lease-ttl",
            "3s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    f.atlas_ok(&["promote", "web"]);
    let out = rerun.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the resumed rollout did not finish promoted ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.to_lowercase().contains("resum"),
        "the rerun says it resumed:\n{stdout}"
    );
    assert_eq!(f.weight_of("v2"), 100);
    let (totals, _) = rt.block_on(load.stop());
    println!("deploy killed mid-canary: {totals:?}");
    assert_no_failures("deploy killed mid-canary", &totals);
}

#[test]
fn a_takeover_refuses_no_connection_and_keeps_the_replicas() {
    let mut f = Fixture::new();
    let first = f.start_daemon(&example("atlasd"), &[]);
    f.first_release();
    let pids = f.replica_pids();
    assert_eq!(pids.len(), 2, "two replicas recorded");
    let rt = runtime();
    // Fresh connections for every request: each one must be accepted by
    // one process or the other.
    let fresh = rt.block_on(async { f.load(true) });
    let kept = rt.block_on(async { f.load(false) });
    std::thread::sleep(Duration::from_secs(1));

    // A restart: the same binary takes over.
    let mut old = first;
    let second = f.start_daemon(&example("atlasd"), &["--takeover"]);
    let exited = wait_exit(&mut old, Duration::from_secs(20));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old atlasd drained and exited: {exited:?}\n{}",
        f.daemon_log()
    );
    std::thread::sleep(Duration::from_secs(1));

    // An upgrade: another binary file takes over.
    let upgraded = f.dir.path().join("atlasd-upgraded");
    std::fs::copy(example("atlasd"), &upgraded).unwrap();
    let mut old = second;
    let third = f.start_daemon(&upgraded, &["--takeover"]);
    let exited = wait_exit(&mut old, Duration::from_secs(20));
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?}\n{}",
        f.daemon_log()
    );
    f.daemon = Some(third);
    std::thread::sleep(Duration::from_secs(1));

    let (fresh, _) = rt.block_on(fresh.stop());
    let (kept, _) = rt.block_on(kept.stop());
    println!("takeover, new connection per request: {fresh:?}");
    println!("takeover, kept-alive connections: {kept:?}");
    assert_no_failures("takeover (fresh connections)", &fresh);
    assert_no_failures("takeover (kept-alive connections)", &kept);
    assert_eq!(
        f.replica_pids(),
        pids,
        "the same replicas serve, adopted twice"
    );
    for pid in pids {
        assert!(alive(pid));
    }
}

#[test]
fn a_killed_daemon_leaves_the_replicas_running_and_the_next_one_adopts_them() {
    let mut f = Fixture::new();
    let mut daemon = f.start_daemon(&example("atlasd"), &[]);
    f.first_release();
    let pids = f.replica_pids();
    let rt = runtime();
    let load = rt.block_on(async { f.load(false) });
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = SystemTime::now();
    daemon.kill().unwrap(); // SIGKILL
    let _ = daemon.wait();
    std::thread::sleep(Duration::from_millis(500));
    for pid in &pids {
        assert!(alive(*pid), "replica {pid} died with atlasd");
    }
    f.daemon = Some(f.start_daemon(&example("atlasd"), &[]));
    let restarted_at = SystemTime::now();
    std::thread::sleep(Duration::from_secs(2));
    let (totals, samples) = rt.block_on(load.stop());
    assert_eq!(
        f.replica_pids(),
        pids,
        "the restarted daemon adopted the same replicas"
    );

    let gap = service_gap(&samples, killed_at);
    println!(
        "atlasd SIGKILL: {} requests sent, {} failed; gap in service {:.0} ms (restart took {:.0} ms)",
        totals.sent,
        totals.failed,
        gap.as_secs_f64() * 1000.0,
        restarted_at
            .duration_since(killed_at)
            .unwrap()
            .as_secs_f64()
            * 1000.0,
    );
    // Every request sent after the new daemon answered succeeded.
    let late_failures = samples
        .iter()
        .filter(|s| s.sent > restarted_at && !matches!(s.result, Classified::Served(_)))
        .count();
    assert_eq!(late_failures, 0, "requests failed after the restart");
}

/// From the last success before `from` to the first success after the
/// first failure that follows it (zero if nothing failed).
fn service_gap(samples: &[Sample], from: SystemTime) -> Duration {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.sent);
    let Some(first_failure) = sorted
        .iter()
        .position(|s| s.sent >= from && !matches!(s.result, Classified::Served(_)))
    else {
        return Duration::ZERO;
    };
    let last_ok = sorted[..first_failure]
        .iter()
        .rev()
        .find(|s| matches!(s.result, Classified::Served(_)))
        .map_or(from, |s| s.sent);
    let next_ok = sorted[first_failure..]
        .iter()
        .find(|s| matches!(s.result, Classified::Served(_)))
        .map_or(from, |s| s.sent);
    next_ok.duration_since(last_ok).unwrap_or_default()
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
