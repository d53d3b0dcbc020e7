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
//!
//! Three modules, each with one concern, and dependencies that run one way
//! (`install` and `lifecycle` build on `catalog`; neither on the other):
//!
//! - `catalog`: which services exist, their versions, ports, environment
//!   variables, health checks, installers and paths in the cache directory;
//! - `install`: the apt, npm, pip and `cargo install` steps;
//! - `lifecycle`: start, health-check, reuse, stop, pid files and logs.

mod catalog;
mod install;
mod lifecycle;

pub(crate) use catalog::{Layout, Service, export_lines};
pub(crate) use install::install;
pub(crate) use lifecycle::{
    StartOutcome, detach_started, start, started_logs, status, stop_recorded, stop_started,
};
