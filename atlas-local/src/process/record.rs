//! What a supervisor persists about each replica to adopt it later, what
//! adoption reports, and how a process is recognised again.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use atlas_core::{Release, ServiceName, Slot};
use serde::{Deserialize, Serialize};

/// One replica as [`ProcessWorkloads::records`](super::ProcessWorkloads::records)
/// describes it, enough for a later owner to
/// [`adopt`](super::ProcessWorkloads::adopt) it: its identity, the release
/// it runs, and which process it is.
///
/// `release.env` may hold secrets: store records in a file only its owner
/// can read (mode 0600). `Debug` hides the values, as
/// [`Release`]'s does. Unknown fields are ignored when reading, so a newer
/// writer's extra fields do not break an older reader.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// The service.
    pub service: ServiceName,
    /// The slot.
    pub slot: Slot,
    /// The replica's index in the slot.
    pub index: u32,
    /// The release the slot runs.
    pub release: Release,
    /// How many replicas the slot should run (ignored when `stopping`).
    pub replicas: u32,
    /// The replica's (last) process id.
    pub pid: u32,
    /// The process's start time, field 22 of `/proc/<pid>/stat` (clock ticks
    /// after boot): a pid the kernel gave to another process since has
    /// another start time. `None` where it could not be read.
    pub start_time: Option<u64>,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its log file.
    pub log_path: PathBuf,
    /// How often it was restarted after exiting on its own.
    #[serde(default)]
    pub restarts: u32,
    /// Atlas was stopping it (scale down, deploy) when the record was
    /// taken: a later owner that finds it still running stops it again
    /// rather than adopting it into its slot.
    #[serde(default)]
    pub stopping: bool,
}

impl ReplicaRecord {
    /// `{service}-{slot}-{index}`.
    pub fn name(&self) -> String {
        format!("{}-{}-{}", self.service, self.slot, self.index)
    }
}

impl fmt::Debug for ReplicaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaRecord")
            .field("service", &self.service)
            .field("slot", &self.slot)
            .field("index", &self.index)
            .field("release", &self.release)
            .field("replicas", &self.replicas)
            .field("pid", &self.pid)
            .field("start_time", &self.start_time)
            .field("port", &self.port)
            .field("log_path", &self.log_path)
            .field("restarts", &self.restarts)
            .field("stopping", &self.stopping)
            .finish()
    }
}

/// What [`ProcessWorkloads::adopt`](super::ProcessWorkloads::adopt) did with
/// each record, by replica name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AdoptReport {
    /// Replicas whose process still ran and was taken over.
    pub adopted: Vec<String>,
    /// Replicas whose process was gone (or whose pid now belongs to another
    /// process) and that were started afresh.
    pub restarted: Vec<String>,
    /// Replicas started afresh on a new port, because another program held
    /// theirs: `(name, old port, new port)`. Each is also in `restarted`.
    pub moved: Vec<(String, u16, u16)>,
    /// Replicas an earlier owner was stopping and that still ran: they are
    /// being stopped again (SIGTERM, SIGKILL after the grace period).
    pub stopping: Vec<String>,
    /// Records that could not be adopted nor started, with the reason.
    pub failed: Vec<(String, String)>,
}

/// One replica as [`ProcessWorkloads::replicas`](super::ProcessWorkloads::replicas)
/// sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The service.
    pub service: ServiceName,
    /// The slot.
    pub slot: Slot,
    /// The replica's index in the slot.
    pub index: u32,
    /// `{service}-{slot}-{index}`.
    pub name: String,
    /// The release version it runs.
    pub version: String,
    /// Its current (or last) process id.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether its process runs.
    pub running: bool,
    /// Whether it passed its readiness check (and still runs).
    pub ready: bool,
    /// How often it was restarted after exiting on its own.
    pub restarts: u32,
    /// How its last process ended, while it is down.
    pub exit: Option<String>,
    /// Whether it was taken over from an earlier owner.
    pub adopted: bool,
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`), or `None` if
/// there is no such process, it is a zombie, or `/proc` cannot tell.
pub(super) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: the fields after it start past the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // Field 3, the state: a zombie or a dead process has ended.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Fields 4..=21 come before the start time.
    fields.nth(22 - 4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_start_time() {
        let mine = process_start_time(std::process::id());
        if cfg!(target_os = "linux") {
            assert!(mine.is_some());
            assert_eq!(mine, process_start_time(std::process::id()));
        }
        assert_eq!(process_start_time(u32::MAX), None);
    }

    #[test]
    fn records_round_trip_hide_secrets_and_accept_newer_fields() {
        let record = ReplicaRecord {
            service: ServiceName::new("checkout").unwrap(),
            slot: Slot::Blue,
            index: 2,
            release: Release::new("v1", "/bin/app").with_env("API_TOKEN", "s3cret"),
            replicas: 3,
            pid: 4242,
            start_time: Some(123_456),
            port: 21000,
            log_path: "/tmp/checkout-blue-2.log".into(),
            restarts: 1,
            stopping: false,
        };
        assert_eq!(record.name(), "checkout-blue-2");
        assert!(!format!("{record:?}").contains("s3cret"));
        let mut json = serde_json::to_value(&record).unwrap();
        json["written_by_a_newer_atlas"] = serde_json::json!(true);
        assert_eq!(
            serde_json::from_value::<ReplicaRecord>(json).unwrap(),
            record
        );
    }
}
