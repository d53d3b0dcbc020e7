//! Running the services: start (or reuse one that already answers as
//! expected), wait for the health check, record pid files, stop what xtask
//! started and nothing else, and report status.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::catalog::{Layout, Service, postgres_bin_dir};
use crate::probe::Probe;
use crate::sys::{
    alive, alive_with, find_in_path, is_root, run_logged, say, secs, stop_group, tail,
};

/// How long a started service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long something answering "not quite right" on a port gets to settle
/// (e.g. a Prometheus started a second ago has no samples yet) before it is
/// declared to be the wrong thing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// SIGTERM grace before SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How to stop a service that xtask started.
#[derive(Debug, Clone)]
enum StopHow {
    /// Signal the process group led by this pid.
    Group(u32),
    /// `pg_ctl stop` on the throwaway cluster (pid: the postmaster).
    PgCtl {
        bin: PathBuf,
        data: PathBuf,
        pid: u32,
    },
}

/// A service that this xtask process started and will stop.
#[derive(Debug, Clone)]
struct Started {
    service: Service,
    how: StopHow,
    pid_file: PathBuf,
    log: PathBuf,
}

/// Services started by this process, so that every exit path (including a
/// signal handler) can stop exactly those and nothing else.
static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());

fn register(started: Started) {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(started);
}

/// Logs of the services this process started, for failure reports.
pub(crate) fn started_logs() -> Vec<(Service, PathBuf)> {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|s| (s.service, s.log.clone()))
        .collect()
}

/// Hands the started services over to their pid files (for `services start`,
/// whose services outlive xtask until `services stop`).
pub(crate) fn detach_started() {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Stops every service this process started. Safe to call from
/// several paths: each service is stopped once.
pub(crate) fn stop_started() {
    let started = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|e| e.into_inner()));
    stop_all(&started);
}

/// Stops services concurrently: each may take seconds to shut down cleanly.
fn stop_all(started: &[Started]) {
    thread::scope(|scope| {
        for s in started {
            scope.spawn(move || stop_one(s));
        }
    });
}

fn stop_one(s: &Started) {
    let clean = match &s.how {
        StopHow::Group(pid) => stop_group(*pid, STOP_GRACE),
        StopHow::PgCtl { bin, data, pid } => {
            let mut cmd = as_postgres(&bin.join("pg_ctl"));
            cmd.arg("-D")
                .arg(data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.status().is_ok_and(|st| st.success()) || !alive(*pid)
        }
    };
    let _ = fs::remove_file(&s.pid_file);
    if clean {
        say!("[{}] stopped", s.service.name());
    } else {
        say!("[{}] did not stop in time; killed", s.service.name());
    }
}

/// What `start` did for one service.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StartOutcome {
    /// It already answered; left as it was (and left running afterwards).
    Reused,
    /// Started by this process; ready after this long.
    Started(Duration),
}

/// Makes every service in `services` answer on its port: reuses one that
/// already answers as expected, starts the others (concurrently) and waits
/// until each passes its health check.
///
/// Errors: a port held by something else, a missing install, or a service
/// that does not become ready in time. On error, services this call started
/// are stopped again.
pub(crate) fn start(layout: &Layout, services: &[Service]) -> Result<Vec<(Service, StartOutcome)>> {
    // Probe first, all at once: a port may need a few seconds to settle.
    let probes: Vec<(Service, Probe)> = thread::scope(|scope| {
        let handles: Vec<_> = services
            .iter()
            .map(|&s| (s, scope.spawn(move || settle(s))))
            .collect();
        handles
            .into_iter()
            .map(|(s, h)| {
                (
                    s,
                    h.join()
                        .unwrap_or(Probe::Unexpected("probe panicked".into())),
                )
            })
            .collect()
    });
    let mut conflicts = Vec::new();
    let mut to_start = Vec::new();
    for (service, probe) in &probes {
        match probe {
            Probe::Ready => say!(
                "[{}] already answering on 127.0.0.1:{}: reusing it (and leaving it running)",
                service.name(),
                service.port()
            ),
            Probe::Down => to_start.push(*service),
            Probe::Unexpected(what) => conflicts.push(format!(
                "{}: port 127.0.0.1:{} is taken by something that is not the expected service: {what}",
                service.name(),
                service.port()
            )),
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "cannot start the test services:\n  {}\nstop whatever holds those ports (or fix its configuration) and run again",
            conflicts.join("\n  ")
        );
    }
    let mut missing = Vec::new();
    let mut programs = Vec::new();
    for service in &to_start {
        match layout.locate(*service) {
            Some(p) => programs.push((*service, p)),
            None => missing.push(service.name()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "not installed: {} (run `cargo xtask services install`)",
            missing.join(", ")
        );
    }

    let before = started_logs().len();
    let results: Vec<(Service, Result<Duration>)> = thread::scope(|scope| {
        let handles: Vec<_> = programs
            .iter()
            .map(|(service, program)| {
                let service = *service;
                (
                    service,
                    scope.spawn(move || {
                        let t0 = Instant::now();
                        let result = start_one(layout, service, program);
                        let took = t0.elapsed();
                        match &result {
                            Ok(()) => say!(
                                "[{}] ready on 127.0.0.1:{} in {} (log: {})",
                                service.name(),
                                service.port(),
                                secs(took),
                                layout.log(service).display()
                            ),
                            Err(_) => say!("[{}] FAILED to start", service.name()),
                        }
                        result.map(|()| took)
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(s, h)| {
                (
                    s,
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("start thread panicked"))),
                )
            })
            .collect()
    });

    let failures: Vec<String> = results
        .iter()
        .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{}: {e:#}", s.name())))
        .collect();
    if !failures.is_empty() {
        // Leave no half-started set behind: stop what this call started.
        let mut all = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        let len = all.len();
        let ours: Vec<Started> = all.drain(before.min(len)..).collect();
        drop(all);
        stop_all(&ours);
        bail!("service start failed:\n{}", failures.join("\n"));
    }
    Ok(probes
        .iter()
        .map(|(s, _)| {
            let outcome = results
                .iter()
                .find(|(r, _)| r == s)
                .and_then(|(_, r)| r.as_ref().ok())
                .map_or(StartOutcome::Reused, |d| StartOutcome::Started(*d));
            (*s, outcome)
        })
        .collect())
}

/// Probes until the answer is Ready or Down, or SETTLE_TIMEOUT passes.
fn settle(service: Service) -> Probe {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let probe = service.probe();
        if !matches!(probe, Probe::Unexpected(_)) || Instant::now() >= deadline {
            return probe;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn start_one(layout: &Layout, service: Service, program: &Path) -> Result<()> {
    if service == Service::Postgres {
        return start_postgres(layout, program);
    }
    let state = layout.state(service)?;
    let port = service.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<OsString> = match service {
        Service::Prometheus => {
            let config = write_prometheus_config(layout)?;
            vec![
                format!("--config.file={}", config.display()).into(),
                format!(
                    "--storage.tsdb.path={}",
                    fresh_dir(&state.join("data"))?.display()
                )
                .into(),
                format!("--web.listen-address={listen}").into(),
                "--web.enable-lifecycle".into(),
                "--web.enable-remote-write-receiver".into(),
            ]
        }
        Service::Alertmanager => {
            let config = state.join("alertmanager.yml");
            fs::write(&config, ALERTMANAGER_CONFIG)?;
            vec![
                format!("--config.file={}", config.display()).into(),
                format!(
                    "--storage.path={}",
                    fresh_dir(&state.join("data"))?.display()
                )
                .into(),
                format!("--web.listen-address={listen}").into(),
                // No gossip: it would otherwise listen on 0.0.0.0:9094.
                "--cluster.listen-address=".into(),
            ]
        }
        Service::Azurite => [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port,
            "--inMemoryPersistence",
            "--loose",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]
        .map(OsString::from)
        .to_vec(),
        Service::FakeGcs => [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port,
            "-backend",
            "memory",
            "-public-host",
            &listen,
            "-external-url",
            &format!("http://{listen}"),
        ]
        .map(OsString::from)
        .to_vec(),
        Service::Moto => ["-H", "127.0.0.1", "-p", &port]
            .map(OsString::from)
            .to_vec(),
        Service::S3s => {
            let data = fresh_dir(&state.join("data"))?;
            let mut args = [
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--access-key",
                "testing",
                "--secret-key",
                "testing",
            ]
            .map(OsString::from)
            .to_vec();
            args.push(data.into_os_string());
            args
        }
        Service::Postgres => unreachable!("handled above"),
    };

    let log_path = layout.log(service);
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let child = Command::new(program)
        .args(&args)
        .current_dir(&state)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // A group of its own: a Ctrl-C in the terminal reaches xtask, which
        // then stops the service in order, instead of killing it mid-run.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let pid = child.id();
    // Not waited on: it runs until stopped by pid (possibly by a later xtask).
    drop(child);
    let pid_file = layout.pid_file(service);
    fs::write(&pid_file, format!("{pid}\n"))?;
    register(Started {
        service,
        how: StopHow::Group(pid),
        pid_file,
        log: log_path.clone(),
    });
    wait_ready(service, Some(pid), &log_path)
}

fn wait_ready(service: Service, pid: Option<u32>, log: &Path) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let last = match service.probe() {
            Probe::Ready => return Ok(()),
            Probe::Down => "nothing listening yet".to_owned(),
            Probe::Unexpected(what) => what,
        };
        if let Some(pid) = pid
            && !alive(pid)
        {
            bail!(
                "exited during startup; last lines of {}:\n{}",
                log.display(),
                tail(log, 50)
            );
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!(
                "not ready on 127.0.0.1:{} after {} ({last}); last lines of {}:\n{}",
                service.port(),
                secs(READY_TIMEOUT),
                log.display(),
                tail(log, 50)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Empties (or creates) a throwaway state directory.
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

const ALERTMANAGER_CONFIG: &str = "\
# Written by `cargo xtask`; rewritten at every start.
# One receiver that drops everything, and short timers so that alerts and
# their groups show up in the v2 API quickly. Alerts of the `atlas-test`
# rule group (source=\"atlas-test\") also go to Atlas's webhook receiver,
# which the notification end-to-end test serves on 127.0.0.1:19099.
route:
  receiver: 'null'
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1m
  routes:
    - matchers: ['source=\"atlas-test\"']
      receiver: 'atlas-webhook'
      group_by: ['alertname', 'run']
receivers:
  - name: 'null'
  - name: 'atlas-webhook'
    webhook_configs:
      - url: 'http://127.0.0.1:19099/alertmanager'
        send_resolved: true
";

/// One rule for the notification end-to-end test: it fires while a test
/// target exposes `atlas_test_alert_trigger` above 0, carrying the series'
/// labels (`run`, `severity`, `priority`).
const PROMETHEUS_RULES: &str = "\
# Written by `cargo xtask`; rewritten at every start.
groups:
  - name: atlas-test
    rules:
      - alert: AtlasTestAlert
        expr: atlas_test_alert_trigger > 0
        labels:
          source: atlas-test
        annotations:
          summary: '{{ $labels.run }}: test alert firing'
";

fn write_prometheus_config(layout: &Layout) -> Result<PathBuf> {
    let dir = layout.state(Service::Prometheus)?;
    let rules = dir.join("rules.yml");
    fs::write(&rules, PROMETHEUS_RULES)?;
    let targets = (19091..=19096)
        .map(|p| format!("'127.0.0.1:{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "\
# Written by `cargo xtask`; rewritten at every start.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['127.0.0.1:{am}']
rule_files:
  - {rules}
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:{prom}']
  # Tests serve /metrics on these fixed ports while they run.
  - job_name: atlas-test
    static_configs:
      - targets: [{targets}]
",
        am = Service::Alertmanager.port(),
        prom = Service::Prometheus.port(),
        rules = rules.display(),
    );
    let path = dir.join("prometheus.yml");
    fs::write(&path, config)?;
    let promtool = find_in_path("promtool").ok_or_else(|| anyhow!("promtool is not on PATH"))?;
    let check_log = layout.logs().join("prometheus-config-check.log");
    let _ = fs::remove_file(&check_log);
    run_logged(
        Command::new(promtool).args(["check", "config"]).arg(&path),
        &check_log,
        "promtool check config",
    )?;
    Ok(path)
}

/// A command run as user `postgres` when xtask is root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn start_postgres(layout: &Layout, bin: &Path) -> Result<()> {
    let pg = layout.pg();
    fs::create_dir_all(&pg).with_context(|| format!("cannot create {}", pg.display()))?;
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&pg)
            .status()
            .context("cannot run chown")?;
        if !status.success() {
            bail!(
                "cannot hand {} to user postgres (does the user exist? it comes with the postgresql package)",
                pg.display()
            );
        }
    }
    let data = pg.join("data");
    if data.join("postmaster.pid").exists() {
        // A cluster left behind by a killed run (it does not answer, or the
        // probe would have reused it): make sure it is down before wiping it.
        let _ = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if data.exists() {
        fs::remove_dir_all(&data).with_context(|| format!("cannot clear {}", data.display()))?;
    }
    let setup_log = layout.logs().join("postgres-setup.log");
    let _ = fs::remove_file(&setup_log);
    run_logged(
        as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]),
        &setup_log,
        "initdb",
    )?;
    let log = layout.log(Service::Postgres);
    let _ = fs::remove_file(&log);
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c max_connections=200 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        Service::Postgres.port(),
        pg.display()
    );
    let pid_file = layout.pid_file(Service::Postgres);
    let mut ctl = as_postgres(&bin.join("pg_ctl"));
    ctl.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "-o", &options, "start"])
        // Keep the postmaster out of the terminal's process group (Ctrl-C).
        .process_group(0);
    let started = run_logged(&mut ctl, &setup_log, "pg_ctl start");
    // Register even after a failed start: pg_ctl may have left a server up.
    let pid = fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        .unwrap_or(0);
    fs::write(&pid_file, format!("{pid}\n"))?;
    register(Started {
        service: Service::Postgres,
        how: StopHow::PgCtl {
            bin: bin.to_path_buf(),
            data,
            pid,
        },
        pid_file,
        log: log.clone(),
    });
    started.map_err(|e| anyhow!("{e:#}\nserver log:\n{}", tail(&log, 50)))?;
    wait_ready(Service::Postgres, Some(pid).filter(|p| *p != 0), &log)
}

/// The services a previous `services start` (or a killed run) recorded in
/// `run/`, still alive, as stoppable entries; stale pid files are removed.
fn recorded(layout: &Layout) -> Vec<Started> {
    let mut found = Vec::new();
    for service in Service::ALL {
        let pid_file = layout.pid_file(service);
        let Ok(text) = fs::read_to_string(&pid_file) else {
            continue;
        };
        let pid = text.trim().parse::<u32>().unwrap_or(0);
        if pid == 0 || !alive_with(pid, service.process_marker()) {
            let _ = fs::remove_file(&pid_file);
            continue;
        }
        let how = match (service, postgres_bin_dir()) {
            (Service::Postgres, Some(bin)) => StopHow::PgCtl {
                bin,
                data: layout.pg().join("data"),
                pid,
            },
            _ => StopHow::Group(pid),
        };
        found.push(Started {
            service,
            how,
            pid_file,
            log: layout.log(service),
        });
    }
    found
}

/// `services stop`: stops what xtask started earlier (per `run/*.pid`) and
/// leaves every other process alone.
pub(crate) fn stop_recorded(layout: &Layout) {
    let found = recorded(layout);
    stop_all(&found);
    for service in Service::ALL {
        if !found.iter().any(|s| s.service == service) && service.probe() != Probe::Down {
            say!(
                "[{}] answering on 127.0.0.1:{} but not started by xtask: left alone",
                service.name(),
                service.port()
            );
        }
    }
    if found.is_empty() {
        say!("services: nothing started by xtask is running");
    }
}

/// `services status`: install location, health and owner of every service.
pub(crate) fn status(layout: &Layout) {
    let recorded = recorded(layout);
    say!("services dir: {}", layout.root().display());
    for service in Service::ALL {
        let installed = layout
            .locate(service)
            .map_or("NOT installed".to_owned(), |p| {
                format!("installed: {}", p.display())
            });
        let state = match service.probe() {
            Probe::Ready => "ready".to_owned(),
            Probe::Down => "down".to_owned(),
            Probe::Unexpected(what) => format!("NOT ready ({what})"),
        };
        let owner = recorded
            .iter()
            .find(|s| s.service == service)
            .map(|s| match s.how {
                StopHow::Group(pid) | StopHow::PgCtl { pid, .. } => {
                    format!(", started by xtask (pid {pid})")
                }
            })
            .unwrap_or_default();
        say!(
            "  {:<16} 127.0.0.1:{:<6} {state}{owner}; {installed}",
            service.name(),
            service.port()
        );
    }
}
