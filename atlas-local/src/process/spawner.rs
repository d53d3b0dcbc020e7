//! The one thread that starts every replica process, and what ties a
//! replica's life to the program that owns it.
//!
//! On Linux each replica asks the kernel, between `fork` and `exec`, for
//! SIGKILL when its parent dies (`PR_SET_PDEATHSIG`). The kernel keeps that
//! promise whatever ends the owner, SIGKILL and crashes included, where
//! `Drop` and signal handlers run only on an orderly exit. The catch: the
//! "parent" the kernel watches is the *thread* that forked the child, not
//! the process. Tokio's blocking-pool threads end after a while idle, a
//! worker that ran `block_in_place` may end too, and a caller may deploy
//! from a short-lived thread of its own; a replica forked there would be
//! killed the moment that thread ends. So every replica is forked by one
//! dedicated thread that lives as long as the
//! [`ProcessWorkloads`](super::ProcessWorkloads) that owns it and its
//! replica watchers (which restart replicas): when the owner is dropped it
//! stops its watchers, the thread ends, and the kernel kills whatever it
//! had started (which `Drop` has already killed anyway).
//!
//! The setting does not reach processes a replica starts itself (the
//! kernel clears it in a forked child): those are in the replica's process
//! group, which an orderly stop signals, but they outlive an owner that was
//! SIGKILLed unless the replica passes the same request on.
//!
//! Other Unix systems have no such kernel setting: there replicas end with
//! the owner only when it exits in an orderly way (`shutdown`, `Drop`, or a
//! signal handler that runs them).
//!
//! In detached mode it is the other way round: each replica starts a
//! session of its own (`setsid`), so it has no controlling terminal (no
//! SIGHUP when the terminal goes, no Ctrl-C), is the leader of its own
//! process group (which stop signals), and nothing asks the kernel to kill
//! it: it outlives its owner however the owner ends. Forking on the one
//! thread costs nothing there and keeps one path.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use atlas_core::{Error, Result};
use tokio::process::{Child, Command};

use super::config::BACKEND;

/// One replica to start, and where the result goes.
struct Job {
    command: Command,
    /// The runtime the caller runs on: tokio registers the child with its
    /// process driver, so the spawning thread must be inside it.
    runtime: tokio::runtime::Handle,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

/// The thread that forks every replica; see the module documentation.
pub(super) struct Spawner {
    detached: bool,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawning thread. `detached` replicas get a session of
    /// their own instead of dying with their owner.
    pub(super) fn start(detached: bool) -> Result<Spawner> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("atlas-replica-spawner".into())
            .spawn(move || {
                for job in queue {
                    let _runtime = job.runtime.enter();
                    let mut command = job.command;
                    // The caller may have given up waiting (it never does
                    // today); the child is then dropped, and kill_on_drop
                    // ends it.
                    let _ = job.reply.send(command.spawn());
                }
                tracing::debug!("replica spawner thread ends: its owner was dropped");
            })
            .map_err(|e| {
                Error::backend_with(BACKEND, "cannot start the replica spawner thread", e)
            })?;
        Ok(Spawner {
            detached,
            jobs: Mutex::new(Some(jobs)),
            thread: Some(thread),
        })
    }

    /// Starts `command` on the spawning thread, tied to this process's life
    /// on Linux (or, detached, in a session of its own), and returns the
    /// child. Blocks for as long as a fork and exec take. A detached
    /// command must not ask for a process group of its own: a group leader
    /// cannot start a session, and the session gives it one anyway.
    ///
    /// Must be called inside a tokio runtime (the caller's `deploy` or
    /// `scale` is).
    pub(super) fn spawn(&self, mut command: Command) -> io::Result<Child> {
        prepare_child(&mut command, std::process::id(), self.detached);
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job {
            command,
            runtime,
            reply,
        };
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|jobs| jobs.send(job).is_ok());
        if sent != Some(true) {
            return Err(io::Error::other("the replica spawner thread has ended"));
        }
        result.recv().map_err(|_| {
            io::Error::other("the replica spawner thread ended while starting a replica")
        })?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing the queue ends the thread.
        self.jobs
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("replica spawner thread panicked");
        }
    }
}

/// Attached (`detached` false): makes the child ask for SIGKILL when the
/// thread that forks it ends, and refuse to run if `owner` (this process's
/// id, read before the fork) is already gone: an owner that died between
/// `fork` and the request would otherwise leave the child running for
/// good, reparented.
///
/// Detached: makes the child start a session of its own (see the module
/// documentation).
#[allow(unsafe_code)]
fn prepare_child(command: &mut Command, owner: u32, detached: bool) {
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed. It makes at most two system
    // calls (setsid; or prctl and getppid) through nix's thin wrappers, and
    // builds its errors with `io::Error::from_raw_os_error`: no
    // allocation, no lock, no shared state.
    unsafe {
        command.pre_exec(move || {
            if detached {
                nix::unistd::setsid()?;
                return Ok(());
            }
            die_with_owner_in_child(owner)
        });
    }
}

/// The attached half of [`prepare_child`], in the forked child.
#[cfg(target_os = "linux")]
fn die_with_owner_in_child(owner: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if u32::try_from(nix::unistd::getppid().as_raw()) != Ok(owner) {
        // The owner died before the request was in place: the spawn fails
        // here and the child exits without running.
        return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    Ok(())
}

/// No kernel setting outside Linux: see the module documentation.
#[cfg(not(target_os = "linux"))]
fn die_with_owner_in_child(_owner: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::process::Stdio;

    use super::*;

    fn sleeper() -> Command {
        let mut command = Command::new("sleep");
        command
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }

    #[tokio::test]
    async fn a_child_whose_owner_is_gone_before_it_runs_does_not_start() {
        // As if the owner had died between fork and prctl: the child sees a
        // parent that is not the owner it was told about.
        let mut command = sleeper();
        prepare_child(&mut command, std::process::id().wrapping_add(1), false);
        let err = command.spawn().expect_err("the child must refuse to run");
        assert_eq!(err.raw_os_error(), Some(nix::libc::ESRCH), "{err}");
    }

    #[tokio::test]
    async fn a_child_started_by_the_spawner_asks_for_sigkill_when_it_ends() {
        let spawner = Spawner::start(false).unwrap();
        let mut child = spawner.spawn(sleeper()).unwrap();
        assert!(child.try_wait().unwrap().is_none(), "the child must run");
        // Ending the spawner thread is what the kernel watches.
        drop(spawner);
        let exit = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .expect("the child outlived the spawner thread")
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&exit),
            Some(nix::libc::SIGKILL)
        );
    }

    #[tokio::test]
    async fn a_detached_child_leads_its_own_session_and_outlives_the_spawner() {
        let spawner = Spawner::start(true).unwrap();
        let mut child = spawner.spawn(sleeper()).unwrap();
        let pid = child.id().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // Fields 5 and 6: process group and session.
        assert_eq!(fields[2..4], [pid.to_string(), pid.to_string()]);
        drop(spawner);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(child.try_wait().unwrap().is_none(), "no SIGKILL for it");
        child.kill().await.unwrap();
    }

    #[tokio::test]
    async fn spawning_after_the_thread_ended_is_an_error() {
        let mut spawner = Spawner::start(false).unwrap();
        spawner
            .jobs
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        assert!(spawner.spawn(sleeper()).is_err());
    }
}
