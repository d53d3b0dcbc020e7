//! The `atlas` command against a real `atlasd`: register a service,
//! deploy the demo app, read the status as JSON, reach the app through
//! the proxy by its Host header, read a replica's log; then steer a
//! canary from a second `atlas` (abort: the deploy exits 1, all traffic
//! back on the stable release), retry it and abort it from a process that
//! takes it over; scale the serving slot up and down under load (no
//! failed request); promote a release
//! from a second atlas and undo it; and check the errors that name what is
//! wrong (exit status 2).
//!
//! Each test runs its own daemon on a free port and a private state
//! directory, and stops it and its replicas (which outlive atlasd by
//! design) when it ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use atlas_examples::load::{Load, LoadConfig};
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

/// A daemon of its own, stopped with its replicas on drop.
struct Daemon {
    dir: tempfile::TempDir,
    proxy: SocketAddr,
    child: Child,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("atlasd.log")).unwrap();
        let child = Command::new(example("atlasd"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--listen", &proxy.to_string(), "--grace-period", "2s"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("atlasd starts");
        let daemon = Daemon { dir, proxy, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.atlas(&["services"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "atlasd did not answer:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("atlasd.log")).unwrap_or_default()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(example("atlas"));
        command
            .env("ATLASD_SOCKET", self.dir.path().join("state/atlasd.sock"))
            .args(args);
        command
    }

    fn atlas(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("atlas runs")
    }

    /// Runs `atlas args`, which must exit with `code`; returns its stdout.
    fn atlas_exits(&self, code: i32, args: &[&str]) -> String {
        let out = self.atlas(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "atlas {args:?}:\n{}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The stderr of `atlas args`, which must fail with exit status 2.
    fn atlas_error(&self, args: &[&str]) -> String {
        let out = self.atlas(args);
        assert_eq!(out.status.code(), Some(2), "atlas {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.atlas_exits(0, &["status", "web", "--output", "json"]);
        let all: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{out}"));
        assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
        all[0].clone()
    }

    /// Writes a spec of the demo app: the first release goes straight to
    /// all traffic, later ones through a canary that waits at 25 %.
    fn spec(&self) -> PathBuf {
        let path = self.dir.path().join("web.yaml");
        std::fs::write(
            &path,
            format!(
                "service: web\n\
                 release:\n  version: v1\n  artifact: {}\n\
                 strategy:\n  canary:\n    replicas: 2\n    scale_down_delay: 1s\n    steps:\n      - set_weight: 25\n      - pause: {{}}\n      - set_weight: 100\n\
                 probe:\n  period: 200ms\n  timeout: 200ms\n\
                 progress_deadline: 2m\n",
                example("demo_app").display()
            ),
        )
        .unwrap();
        path
    }

    /// `GET /` through the proxy with `host`: the status code and body.
    fn get(&self, host: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Replicas outlive atlasd by design: stop them with the test.
        if let Ok(text) = std::fs::read_to_string(self.dir.path().join("state/atlasd.json"))
            && let Ok(state) = serde_json::from_str::<serde_json::Value>(&text)
        {
            for pid in state["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["pid"].as_i64())
            {
                let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Waits until the status of `web` satisfies `ready` (a minute at most).
fn wait_for(d: &Daemon, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = d.status();
        if ready(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the rollout of `status` waits for promotion.
fn paused(status: &serde_json::Value) -> bool {
    status["rollout"]
        .as_str()
        .is_some_and(|r| r.contains("progressing") && r.contains("paused"))
}

/// Runs `child` (an `atlas` that drives a rollout) to its end; it must
/// exit with `code`. Returns its stdout.
fn finish(child: Child, code: i32) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The slot of `status` running `version`.
fn slot_of<'a>(status: &'a serde_json::Value, version: &str) -> &'a serde_json::Value {
    status["slots"]
        .as_array()
        .and_then(|slots| slots.iter().find(|s| s["status"]["version"] == version))
        .unwrap_or_else(|| panic!("no slot runs {version}: {status}"))
}

#[test]
fn register_deploy_status_route_and_logs() {
    let d = Daemon::start();
    let out = d.atlas_exits(0, &["services", "add", "web", "--host", HOST]);
    assert!(out.contains("registered web"), "{out}");
    let listed: serde_json::Value =
        serde_json::from_str(&d.atlas_exits(0, &["services", "--output", "json"])).unwrap();
    assert_eq!(listed[0]["service"], "web");
    assert_eq!(listed[0]["hosts"][0], HOST);

    let spec = d.spec();
    let out = d.atlas_exits(0, &["deploy", "web", "-f", spec.to_str().unwrap()]);
    assert!(
        out.contains("promoted v1"),
        "the deploy says how it ended:\n{out}"
    );

    let status = d.status();
    let v1 = slot_of(&status, "v1");
    assert_eq!(v1["status"]["desired"], 2, "{status}");
    assert_eq!(v1["status"]["ready"], 2, "{status}");
    assert_eq!(v1["weight"], 100, "{status}");
    assert_eq!(v1["routed"].as_array().map(Vec::len), Some(2), "{status}");
    let rollout = status["rollout"].as_str().unwrap();
    assert!(rollout.contains("v1 (promoted)"), "{rollout}");

    let (code, body) = d.get(HOST);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("v1 "), "the demo app answered: {body:?}");
    let (code, _) = d.get("other.test");
    assert_ne!(code, 200, "a host no service claims reaches nothing");

    let slot = v1["status"]["slot"].as_str().unwrap();
    let logs = d.atlas_exits(0, &["logs", "web", "--slot", slot, "-n", "5"]);
    assert!(
        logs.lines().any(|l| l.contains("web-") && l.contains("v1")),
        "the replica's log names it:\n{logs}"
    );
    let text = d.atlas_exits(0, &["status"]);
    assert!(text.contains("100 %") && text.contains(HOST), "{text}");
}

#[test]
fn an_abort_from_another_atlas_rolls_the_canary_back() {
    let d = Daemon::start();
    d.atlas_exits(0, &["services", "add", "web", "--host", HOST]);
    let spec = d.spec();
    let spec = spec.to_str().unwrap();
    // Nothing to steer yet: errors name what is wrong.
    let err = d.atlas_error(&["abort", "web"]);
    assert!(err.contains("no rollout of web was ever started"), "{err}");
    d.atlas_exits(0, &["deploy", "web", "-f", spec]);
    let err = d.atlas_error(&["promote", "web"]);
    assert!(err.contains("no rollout of web is in progress"), "{err}");
    let err = d.atlas_error(&["deploy", "shop", "-f", spec]);
    assert!(err.contains("names service web"), "{err}");

    let deploy = d
        .command(&["deploy", "web", "-f", spec, "--version", "v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&d, "no 25 % canary", |status| {
        paused(status) && slot_of(status, "v2")["weight"] == 25
    });
    let out = d.atlas_exits(0, &["abort", "web"]);
    assert!(out.contains("abort posted"), "{out}");
    let stdout = finish(deploy, 1); // rolled back
    assert!(stdout.contains("received abort"), "{stdout}");
    assert!(stdout.contains("rolled back"), "{stdout}");
    let status = d.status();
    assert_eq!(slot_of(&status, "v1")["weight"], 100, "{status}");
    let (code, body) = d.get(HOST);
    assert_eq!((code, body.starts_with("v1 ")), (200, true), "{body}");

    // retry starts the same release again; it pauses at 25 % like before,
    // and an abort run here (nobody else drives it) ends it.
    let mut retry = d
        .command(&["retry", "web", "--lease-ttl", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&d, "retry did not pause", paused);
    retry.kill().unwrap(); // SIGKILL: its lease ends after 1 s
    let _ = retry.wait();
    std::thread::sleep(Duration::from_millis(1500));
    let err = d.atlas_error(&["pause", "web"]);
    assert!(err.contains("nobody drives the rollout of web"), "{err}");
    let out = d.atlas_exits(0, &["abort", "web"]);
    assert!(out.contains("taking it over here"), "{out}");
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(slot_of(&d.status(), "v1")["weight"], 100);
}

#[test]
fn scale_resizes_the_serving_slot_and_undo_goes_back_a_release() {
    let d = Daemon::start();
    d.atlas_exits(0, &["services", "add", "web", "--host", HOST]);
    let spec = d.spec();
    let spec = spec.to_str().unwrap();
    d.atlas_exits(0, &["deploy", "web", "-f", spec]);

    // Scaling happens under load, which must see no failed request.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = rt.block_on(async {
        Load::start(LoadConfig {
            host: Some(HOST.into()),
            workers: 8,
            ..LoadConfig::new(d.proxy, 200)
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = d.atlas_exits(0, &["scale", "web", "3"]);
    assert!(out.contains("2 → 3 replicas (3 ready, 3 routed)"), "{out}");
    let status = d.status();
    let v1 = slot_of(&status, "v1");
    assert_eq!(
        (
            v1["status"]["ready"].as_u64(),
            v1["routed"].as_array().map(Vec::len)
        ),
        (Some(3), Some(3)),
        "{status}"
    );
    d.atlas_exits(0, &["scale", "web", "1"]);
    let status = d.status();
    let v1 = slot_of(&status, "v1");
    assert_eq!(
        (
            v1["status"]["desired"].as_u64(),
            v1["routed"].as_array().map(Vec::len)
        ),
        (Some(1), Some(1)),
        "{status}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (totals, _) = rt.block_on(load.stop());
    println!("scale 2 → 3 → 1 under load: {totals:?}");
    assert!(
        totals.sent > 100,
        "too little load to mean anything: {totals:?}"
    );
    assert_eq!((totals.failed, totals.app_errors), (0, 0), "{totals:?}");
    let err = d.atlas_error(&["scale", "web", "0"]);
    assert!(err.contains("must be at least 1"), "{err}");

    // v2 waits at 25 % until a second atlas promotes it all the way.
    let spawn = |args: &[&str]| {
        d.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let deploy = spawn(&["deploy", "web", "-f", spec, "--version", "v2"]);
    wait_for(&d, "v2 did not pause", paused);
    d.atlas_exits(0, &["promote", "web", "--full"]);
    let out = finish(deploy, 0);
    assert!(out.contains("promoted v2"), "{out}");
    assert!(d.get(HOST).1.starts_with("v2 "));

    // undo: v1 again, with the same strategy (so it pauses at 25 % too).
    let undo = spawn(&["undo", "web"]);
    wait_for(&d, "the undo did not pause", paused);
    let rollout = d.status()["rollout"].as_str().unwrap().to_owned();
    assert!(rollout.starts_with("v2 → v1"), "{rollout}");
    d.atlas_exits(0, &["promote", "web", "--full"]);
    let out = finish(undo, 0);
    assert!(out.contains("rolling web back from v2 to v1"), "{out}");
    assert!(out.contains("promoted v1"), "{out}");
    assert!(d.get(HOST).1.starts_with("v1 "));
}

/// A spec whose canary is judged by the daemon proxy's own metrics: at
/// 50 %, three measurements a second apart (after a second of traffic) of
/// the canary's error rate over the last 3 s must stay at or below 20 %.
fn analysed_spec(d: &Daemon) -> PathBuf {
    let path = d.dir.path().join("web-analysed.yaml");
    std::fs::write(
        &path,
        format!(
            "service: web\n\
             release:\n  version: v1\n  artifact: {}\n\
             strategy:\n  canary:\n    replicas: 1\n    steps:\n      - set_weight: 50\n      - analysis: {{ template: errors }}\n      - set_weight: 100\n\
             analysis:\n  errors:\n    metrics:\n      - name: error-rate\n        query: error_rate:canary\n        window: 3s\n        initial_delay: 1s\n        interval: 1s\n        count: 3\n        failure_condition: \"> 0.2\"\n        inconclusive_limit: 1\n\
             probe:\n  period: 200ms\n  timeout: 200ms\n\
             progress_deadline: 2m\n",
            example("demo_app").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn analysis_on_the_proxys_own_metrics_promotes_a_healthy_canary_and_rolls_back_a_failing_one() {
    let d = Daemon::start();
    d.atlas_exits(0, &["services", "add", "web", "--host", HOST]);
    let spec = analysed_spec(&d);
    let spec = spec.to_str().unwrap();
    d.atlas_exits(0, &["deploy", "web", "-f", spec]);

    // Traffic for the analysis to measure, from a thread of its own.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, proxy) = (stop.clone(), d.proxy);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(proxy) {
                    let _ = write!(
                        s,
                        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.read_to_string(&mut String::new());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let out = d.atlas_exits(0, &["deploy", "web", "-f", spec, "--version", "v2"]);
    assert!(out.contains("promoted"), "{out}");
    assert_eq!(slot_of(&d.status(), "v2")["weight"], 100);

    // v3 answers 60 % of its requests with 500: the analysis fails it.
    let out = d.atlas_exits(
        1,
        &[
            "deploy",
            "web",
            "-f",
            spec,
            "--version",
            "v3",
            "--arg",
            "--error-rate",
            "--arg",
            "0.6",
        ],
    );
    assert!(out.contains("rolled back"), "{out}");
    assert!(
        out.contains("error-rate"),
        "the rollback names the failed metric:\n{out}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    let status = d.status();
    assert_eq!(slot_of(&status, "v2")["weight"], 100, "{status}");
    let (code, body) = d.get(HOST);
    assert_eq!((code, body.starts_with("v2 ")), (200, true), "{body}");
}
