//! `cargo xtask`: the project's test command and service helper.
//!
//! `cargo xtask test` is the one command a newcomer (and CI, via `.ci/run`)
//! runs. It stops at the first failing stage, names it, and prints a timing
//! summary of all stages at the end:
//!
//! 1. `fmt`: `cargo fmt --all -- --check`;
//!    then `imports`: no crate's modules import in a circle (`cargo xtask
//!    imports`, see `imports.rs`).
//! 2. `clippy`: `cargo clippy --workspace --all-targets --all-features -- -D warnings`
//! 3. `services`: installs the real services that are missing, and `restic`
//!    (the baseline backup tests compare against), with apt, npm, pip and
//!    `cargo install` in parallel threads overlapping `clippy`, starts them on
//!    127.0.0.1 and health-checks each one. A service that already answers as
//!    expected (say, one a developer started) is reused and left running;
//!    anything else holding a port is a hard error, as is a service that fails
//!    to install or start.
//! 4. `test`: `cargo test --workspace --all-features --tests --no-fail-fast --
//!    --include-ignored`, so the `#[ignore = "needs …; run: cargo xtask test"]`
//!    tests run too, and every failing test binary is reported. The
//!    real-cluster tests (`cluster_*`, atlas-k8s) are skipped, and the
//!    summary says so, unless `KUBECONFIG` is set: no Kubernetes API server
//!    can be installed on the project's machines. Then
//!    the services it started are stopped (also on failure and on Ctrl-C/SIGTERM);
//!    on failure the last 50 lines of each started service's log are printed.
//! 5. `examples`: runs `cargo run --example blue_green` (the README's first
//!    command), `k8s_blue_green --dry-run` and, with the services, the
//!    `migrate_with_rollout` example
//!    against the real PostgreSQL; any failing fails the run.
//! 6. `doctest`: `cargo test --workspace --all-features --doc`, kept apart from
//!    `--include-ignored`, which would also try to compile ```` ```ignore ````
//!    doc blocks.
//! 7. `doc`: `cargo doc --workspace --no-deps --all-features` with
//!    `RUSTDOCFLAGS=-D warnings`.
//!
//! Options: `--no-services` skips stage 3 and runs stage 4 without
//! `--include-ignored`; `--skip-lint` skips stages 1 and 2.
//!
//! Environment exported to the `test` stage (fixed addresses, all 127.0.0.1):
//!
//! | variable | value | service |
//! |---|---|---|
//! | `ATLAS_TEST_POSTGRES_URL` | `postgres://postgres@127.0.0.1:5433/postgres` | PostgreSQL (throwaway cluster, trust auth) |
//! | `ATLAS_TEST_PROMETHEUS_URL` | `http://127.0.0.1:9090` | Prometheus, scrape/eval every 1s, job `atlas-test` scraping 127.0.0.1:19091–19096, plus itself; rule `AtlasTestAlert` (`atlas_test_alert_trigger > 0`); alerts go to the Alertmanager; lifecycle API and remote-write receiver on |
//! | `ATLAS_TEST_ALERTMANAGER_URL` | `http://127.0.0.1:9093` | Alertmanager, null receiver, 1s group timers; `source="atlas-test"` alerts also to a webhook on 127.0.0.1:19099 |
//! | `ATLAS_TEST_AZURITE_URL` | `http://127.0.0.1:10000/devstoreaccount1` | Azurite blob |
//! | `STORAGE_EMULATOR_HOST` | `http://127.0.0.1:4443` | fake-gcs-server |
//! | `ATLAS_TEST_S3_MOTO_URL` | `http://127.0.0.1:9000` | moto (S3) |
//! | `ATLAS_TEST_S3S_URL` | `http://127.0.0.1:9001` | s3s-fs (strict S3, keys testing/testing) |
//!
//! Installs and service state live in `ATLAS_SERVICES_DIR` (default
//! `/var/tmp/atlas-services`), outside the clone, so later runs reuse them.
//! For developers: `cargo xtask services install|start|stop|status`
//! (`start` leaves the services running for plain `cargo test`, and prints the
//! `export` lines; `stop` stops only what xtask started).

mod imports;
mod probe;
mod services;
mod sys;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::services::{Layout, Service, StartOutcome};
use crate::sys::{cargo, say, secs, tail, terminate};

const USAGE: &str = "\
usage:
  cargo xtask test [--no-services] [--skip-lint]
      fmt, clippy, real services, every test (ignored ones included), doc
      --no-services  provision nothing; run only the tests that need no service
      --skip-lint    skip `cargo fmt --check` and clippy
  cargo xtask imports
      list module import circles in every crate (exit 1 if any)
  cargo xtask services install|start|stop|status
      install  install missing services into $ATLAS_SERVICES_DIR (default /var/tmp/atlas-services)
      start    install if needed, start (or reuse) every service, leave them running
      stop     stop the services xtask started; leave others alone
      status   show install state, health and owner of each service";

/// The name prefix of tests that need a real Kubernetes cluster.
const CLUSTER_TEST_PREFIX: &str = "cluster_";

/// Set by the signal handler; the main thread then leaves cleanup to it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The pid of the running stage's cargo, 0 when none.
static CURRENT_CHILD: AtomicU32 = AtomicU32::new(0);

fn main() -> ExitCode {
    if let Err(e) = ctrlc::set_handler(on_signal) {
        say!(
            "warning: cannot install the Ctrl-C handler ({e}); services may outlive an interrupted run"
        );
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            halt_if_interrupted();
            services::stop_started();
            say!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT/SIGTERM/SIGHUP: stop the running stage and the services this run
/// started, then exit 130.
fn on_signal() {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        return;
    }
    say!("interrupted: stopping what this run started");
    let child = CURRENT_CHILD.load(Ordering::SeqCst);
    if child != 0 {
        terminate(child);
    }
    services::stop_started();
    std::process::exit(130);
}

/// After an interruption the handler thread owns cleanup and exit; should it
/// not get there, stop and exit here after a grace period.
fn halt_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_secs(60));
        services::stop_started();
        std::process::exit(130);
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("test") => test(rest),
        Some("services") => services_command(rest),
        Some("imports") => imports_command(),
        Some("help" | "--help" | "-h") => {
            print_stdout(USAGE);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            say!("{USAGE}");
            Ok(ExitCode::from(2))
        }
        Some(other) => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

fn services_command(args: &[String]) -> Result<ExitCode> {
    let [action] = args else {
        bail!("expected one of install|start|stop|status\n{USAGE}");
    };
    let layout = Layout::from_env()?;
    match action.as_str() {
        "install" => {
            let report = services::install(&layout, &Service::ALL)?;
            for (service, took) in report {
                match took {
                    Some(d) => say!("  {:<16} installed in {}", service.name(), secs(d)),
                    None => say!("  {:<16} already installed", service.name()),
                }
            }
        }
        "start" => {
            services::install(&layout, &Service::ALL)?;
            services::start(&layout, &Service::ALL)?;
            // From here on they belong to their pid files, not to this process.
            services::detach_started();
            say!("all services ready; `cargo xtask services stop` stops the ones xtask started");
            print_stdout(&services::export_lines());
        }
        "stop" => services::stop_recorded(&layout),
        "status" => {
            services::status(&layout);
            print_stdout(&services::export_lines());
        }
        other => bail!("unknown services action `{other}`\n{USAGE}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists every module import circle.
fn imports_command() -> Result<ExitCode> {
    let circles = imports::circles(&workspace_root())?;
    print_circles(&circles);
    if circles.is_empty() {
        say!("no module import circle");
        Ok(ExitCode::SUCCESS)
    } else {
        say!("{} module import circle(s)", circles.len());
        Ok(ExitCode::FAILURE)
    }
}

fn print_circles(circles: &[imports::Circle]) {
    for circle in circles {
        say!("import circle in {}:", circle.krate);
        for hop in &circle.hops {
            say!("    {hop}");
        }
    }
}

/// Prints to stdout without panicking when the reader went away (`| head`).
fn print_stdout(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// Stops this run's services on every way out of `test`, panics included.
struct StopServicesOnDrop;

impl Drop for StopServicesOnDrop {
    fn drop(&mut self) {
        halt_if_interrupted();
        services::stop_started();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Failed,
    Skipped,
}

struct Row {
    stage: &'static str,
    status: Status,
    took: Duration,
    note: String,
}

/// Stage results, printed as the closing timing summary.
#[derive(Default)]
struct Summary {
    rows: Vec<Row>,
}

impl Summary {
    fn add(
        &mut self,
        stage: &'static str,
        status: Status,
        took: Duration,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            stage,
            status,
            took,
            note: note.into(),
        });
    }

    fn print(&self) {
        say!("summary:");
        for row in &self.rows {
            let (status, took) = match row.status {
                Status::Ok => ("ok", secs(row.took)),
                Status::Failed => ("FAILED", secs(row.took)),
                Status::Skipped => ("skipped", "-".to_owned()),
            };
            let note = if row.note.is_empty() {
                String::new()
            } else {
                format!("  {}", row.note)
            };
            say!("  {:<9} {status:<8} {took:>8}{note}", row.stage);
        }
        let total: Duration = self.rows.iter().map(|r| r.took).sum();
        say!("  {:<9} {:<8} {:>8}", "total", "", secs(total));
    }

    /// Prints the summary and the failure line naming the stage.
    fn fail(&self, stage: &str, why: &str) -> ExitCode {
        halt_if_interrupted();
        // Stop first, so the summary is the last thing printed.
        services::stop_started();
        self.print();
        say!("FAILED at stage `{stage}`: {why}");
        ExitCode::FAILURE
    }
}

fn workspace_root() -> PathBuf {
    // Set by `cargo run` at run time; the compile-time value is a fallback.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs one cargo stage with inherited output (so cargo's own `test result:`
/// lines stay visible); Err carries the time taken and a one-line reason.
fn cargo_stage(
    name: &str,
    args: &[&str],
    envs: &[(&str, String)],
) -> Result<Duration, (Duration, String)> {
    say!("stage {name}: cargo {}", args.join(" "));
    let t0 = Instant::now();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root()).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| (t0.elapsed(), format!("cannot run cargo: {e}")))?;
    CURRENT_CHILD.store(child.id(), Ordering::SeqCst);
    let status = child.wait();
    CURRENT_CHILD.store(0, Ordering::SeqCst);
    let status = status.map_err(|e| (t0.elapsed(), format!("cannot wait for cargo: {e}")))?;
    if status.success() {
        return Ok(t0.elapsed());
    }
    use std::os::unix::process::ExitStatusExt;
    if status.signal().is_some() {
        // Killed by a signal: give the handler thread the moment it needs
        // to notice, so cleanup is not done twice.
        thread::sleep(Duration::from_millis(300));
        halt_if_interrupted();
    }
    let how = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => status.to_string(),
    };
    Err((
        t0.elapsed(),
        format!("`cargo {}` failed ({how})", args.join(" ")),
    ))
}

fn test(args: &[String]) -> Result<ExitCode> {
    let mut with_services = true;
    let mut lint = true;
    for arg in args {
        match arg.as_str() {
            "--no-services" => with_services = false,
            "--skip-lint" => lint = false,
            other => bail!("unknown option `{other}` for `test`\n{USAGE}"),
        }
    }
    let _stop_services = StopServicesOnDrop;
    let mut summary = Summary::default();
    let skipped = |summary: &mut Summary, stage, why: &str| {
        summary.add(stage, Status::Skipped, Duration::ZERO, why)
    };

    if lint {
        // rustfmt colours its diff by itself; follow cargo's colour choice.
        let mut fmt = vec!["fmt", "--all", "--", "--check"];
        let color = std::env::var("CARGO_TERM_COLOR").unwrap_or_default();
        if let Some(choice) = ["never", "always", "auto"]
            .into_iter()
            .find(|c| *c == color)
        {
            fmt.extend(["--color", choice]);
        }
        match cargo_stage("fmt", &fmt, &[]) {
            Ok(d) => summary.add("fmt", Status::Ok, d, ""),
            Err((took, why)) => {
                summary.add("fmt", Status::Failed, took, "run `cargo fmt --all`");
                return Ok(summary.fail("fmt", &why));
            }
        }
        say!("stage imports: module import circles");
        let t0 = Instant::now();
        let circles = imports::circles(&workspace_root())?;
        print_circles(&circles);
        if circles.is_empty() {
            summary.add("imports", Status::Ok, t0.elapsed(), "");
        } else {
            summary.add("imports", Status::Failed, t0.elapsed(), "");
            let why = format!("{} module import circle(s)", circles.len());
            return Ok(summary.fail("imports", &why));
        }
    } else {
        skipped(&mut summary, "fmt", "--skip-lint");
        skipped(&mut summary, "imports", "--skip-lint");
    }

    // Installs are mostly network and disk bound: let them overlap clippy.
    let layout = with_services.then(Layout::from_env).transpose()?;
    let install = layout.clone().map(|layout| {
        thread::spawn(move || {
            let t0 = Instant::now();
            let report = services::install(&layout, &Service::ALL);
            (report, t0.elapsed())
        })
    });

    if lint {
        let clippy = [
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ];
        match cargo_stage("clippy", &clippy, &[]) {
            Ok(d) => summary.add("clippy", Status::Ok, d, ""),
            Err((took, why)) => {
                summary.add("clippy", Status::Failed, took, "");
                if let Some(install) = install {
                    // Killing apt/dpkg halfway would break the machine's
                    // package state; the finished installs are reused next run.
                    say!("waiting for the service installs in progress to finish before exiting");
                    let _ = install.join();
                }
                return Ok(summary.fail("clippy", &why));
            }
        }
    } else {
        skipped(&mut summary, "clippy", "--skip-lint");
    }

    // --no-fail-fast: one CI run reports every failing test binary.
    let mut test_args = vec![
        "test",
        "--workspace",
        "--all-features",
        "--tests",
        "--no-fail-fast",
    ];
    let mut test_env: Vec<(&str, String)> = Vec::new();
    let mut cluster_note = "";
    if let (Some(layout), Some(install)) = (&layout, install) {
        let t0 = Instant::now();
        let (report, install_took) = install.join().unwrap_or_else(|_| {
            (
                Err(anyhow::anyhow!("install thread panicked")),
                Duration::ZERO,
            )
        });
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                summary.add("services", Status::Failed, t0.elapsed(), "install failed");
                return Ok(summary.fail("services", &format!("{e:#}")));
            }
        };
        let started = match services::start(layout, &Service::ALL) {
            Ok(s) => s,
            Err(e) => {
                summary.add("services", Status::Failed, t0.elapsed(), "start failed");
                return Ok(summary.fail("services", &format!("{e:#}")));
            }
        };
        let installed: Vec<String> = report
            .iter()
            .filter_map(|(s, d)| d.map(|d| format!("{} {}", s.name(), secs(d))))
            .collect();
        let starts: Vec<String> = started
            .iter()
            .map(|(s, o)| match o {
                StartOutcome::Reused => format!("{} reused", s.name()),
                StartOutcome::Started(d) => format!("{} {}", s.name(), secs(*d)),
            })
            .collect();
        let install_note = if installed.is_empty() {
            "none needed".to_owned()
        } else {
            format!(
                "{} total, in parallel: {}",
                secs(install_took),
                installed.join(", ")
            )
        };
        summary.add(
            "services",
            Status::Ok,
            t0.elapsed(),
            format!("install: {install_note}; ready: {}", starts.join(", ")),
        );
        test_args.extend(["--", "--include-ignored"]);
        // No Kubernetes API server can be installed here: the real-cluster
        // tests (named `cluster_*`) run only when KUBECONFIG names one, and
        // are reported as skipped otherwise, never as passed.
        if std::env::var_os("KUBECONFIG").is_none() {
            test_args.extend(["--skip", CLUSTER_TEST_PREFIX]);
            cluster_note = "real-cluster tests (cluster_*) skipped: KUBECONFIG is not set";
            say!("{cluster_note}");
        }
        for service in Service::ALL {
            let (k, v) = service.env();
            test_env.push((k, v.to_owned()));
        }
        say!("services ready; dir {}", layout.root().display());
    } else {
        skipped(
            &mut summary,
            "services",
            "--no-services: ignored tests not run",
        );
    }
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        test_env.push(("RUST_BACKTRACE", "1".to_owned()));
    }

    match cargo_stage("test", &test_args, &test_env) {
        Ok(d) => summary.add("test", Status::Ok, d, cluster_note),
        Err((took, why)) => {
            summary.add("test", Status::Failed, took, "");
            print_service_logs();
            return Ok(summary.fail("test", &why));
        }
    }
    // The reference binaries, run for real: the README's first command, the
    // Kubernetes rollout as a dry run (every API call it would make, against
    // an in-process API), and the expand/contract migration example on the
    // real PostgreSQL.
    let mut examples: Vec<Vec<&str>> = vec![
        vec!["run", "--example", "blue_green"],
        vec![
            "run",
            "-p",
            "atlas-examples",
            "--example",
            "k8s_blue_green",
            "--",
            "--dry-run",
            "--writes-only",
        ],
    ];
    if layout.is_some() {
        examples.push(vec![
            "run",
            "-p",
            "atlas-examples",
            "--features",
            "postgres",
            "--example",
            "migrate_with_rollout",
        ]);
    }
    let t0 = Instant::now();
    for args in &examples {
        if let Err((_, why)) = cargo_stage("examples", args, &test_env) {
            summary.add("examples", Status::Failed, t0.elapsed(), "");
            print_service_logs();
            return Ok(summary.fail("examples", &why));
        }
    }
    summary.add(
        "examples",
        Status::Ok,
        t0.elapsed(),
        format!("{} run", examples.len()),
    );
    // The remaining stages need no service.
    services::stop_started();

    match cargo_stage(
        "doctest",
        &["test", "--workspace", "--all-features", "--doc"],
        &[],
    ) {
        Ok(d) => summary.add("doctest", Status::Ok, d, ""),
        Err((took, why)) => {
            summary.add("doctest", Status::Failed, took, "");
            return Ok(summary.fail("doctest", &why));
        }
    }

    let rustdocflags = match std::env::var("RUSTDOCFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} -D warnings"),
        _ => "-D warnings".to_owned(),
    };
    match cargo_stage(
        "doc",
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", rustdocflags)],
    ) {
        Ok(d) => summary.add("doc", Status::Ok, d, ""),
        Err((took, why)) => {
            summary.add("doc", Status::Failed, took, "");
            return Ok(summary.fail("doc", &why));
        }
    }

    summary.print();
    say!("all stages passed");
    Ok(ExitCode::SUCCESS)
}

/// The tail of every started service's log, to see its side of a failed test.
fn print_service_logs() {
    for (service, log) in services::started_logs() {
        say!(
            "----- last 50 lines of {} ({}) -----\n{}",
            service.name(),
            log.display(),
            tail(&log, 50)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Probe;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn env_names_and_ports_match_the_contract() {
        let expected = [
            (
                "ATLAS_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5433/postgres",
            ),
            ("ATLAS_TEST_PROMETHEUS_URL", "http://127.0.0.1:9090"),
            ("ATLAS_TEST_ALERTMANAGER_URL", "http://127.0.0.1:9093"),
            (
                "ATLAS_TEST_AZURITE_URL",
                "http://127.0.0.1:10000/devstoreaccount1",
            ),
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443"),
            ("ATLAS_TEST_S3_MOTO_URL", "http://127.0.0.1:9000"),
            ("ATLAS_TEST_S3S_URL", "http://127.0.0.1:9001"),
        ];
        for (k, v) in expected {
            let service = Service::ALL
                .into_iter()
                .find(|s| s.env().0 == k)
                .unwrap_or_else(|| panic!("no service exports {k}"));
            assert_eq!(service.env().1, v);
            assert!(
                v.contains(&format!(":{}", service.port())),
                "{k}={v} does not point at port {}",
                service.port()
            );
        }
        assert_eq!(Service::ALL.len(), expected.len());
    }

    /// Serves one canned HTTP answer on an ephemeral port.
    fn serve_once(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0_u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        port
    }

    #[test]
    fn http_get_parses_status_head_and_body() {
        let port = serve_once("HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\nnot ready");
        let resp = probe::http_get(port, "/-/ready").expect("answer");
        assert_eq!(resp.status, 503);
        assert!(resp.head.contains("Server: x"));
        assert_eq!(resp.body, "not ready");
    }

    #[test]
    fn http_expect_reports_wrong_status_as_unexpected() {
        let port = serve_once("HTTP/1.1 404 Not Found\r\n\r\nnope");
        match probe::http_expect(port, "/x", 200) {
            Err(Probe::Unexpected(what)) => assert!(what.contains("404"), "{what}"),
            other => panic!("expected Unexpected, got {other:?}"),
        }
    }

    #[test]
    fn non_http_answer_is_unexpected_and_closed_port_is_down() {
        let port = serve_once("SSH-2.0-OpenSSH\r\n");
        assert!(matches!(probe::http_get(port, "/"), Err(Some(_))));
        // Bind then drop to get a port that is (almost certainly) closed.
        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        assert!(matches!(probe::http_get(closed, "/"), Err(None)));
        assert_eq!(probe::postgres(closed), Probe::Down);
    }

    #[test]
    fn postgres_probe_needs_trust_auth() {
        // AuthenticationMD5Password (code 5) instead of AuthenticationOk.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0_u8; 256];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(&[b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4]);
            }
        });
        match probe::postgres(port) {
            Probe::Unexpected(what) => assert!(what.contains("password"), "{what}"),
            other => panic!("expected Unexpected, got {other:?}"),
        }
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("xtask-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&file, text).expect("write");
        let out = tail(&file, 3);
        assert_eq!(out, "    line 98\n    line 99\n    line 100");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
            .expect("workspace Cargo.toml");
        assert!(manifest.contains("[workspace]"));
    }
}
