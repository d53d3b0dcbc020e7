//! What the process workloads and their replica watchers share: the
//! validated configuration and the backend's name.

use std::path::PathBuf;
use std::time::Duration;

use super::readiness::Readiness;
use super::restart::RestartPolicy;

/// The backend name in errors.
pub(super) const BACKEND: &str = "process-workloads";

/// Validated configuration, shared with the replica watchers.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) log_dir: PathBuf,
    pub(super) grace_period: Duration,
    pub(super) readiness: Readiness,
    pub(super) poll_interval: Duration,
    pub(super) probe_timeout: Duration,
    pub(super) scale_ready_timeout: Duration,
    /// Replicas in sessions of their own, left running when the owner goes.
    pub(super) detached: bool,
    pub(super) restart: RestartPolicy,
}

impl Config {
    pub(super) fn log_path(&self, replica: &str) -> PathBuf {
        self.log_dir.join(format!("{replica}.log"))
    }
}
