//! Ctrl-C and SIGTERM in the reference programs that run replicas: stop
//! the way the engine documents, clean up, say what was done, and exit
//! with the conventional status.
//!
//! What a program does on the first SIGINT or SIGTERM:
//!
//! 1. a rollout in progress is **aborted** ([`RolloutHandle::abort`]): all
//!    traffic returns to the stable slot in one router call and the new
//!    slot is scaled down. The program is about to stop every replica and
//!    delete its state store, so leaving the rollout resumable would
//!    leave nothing to resume;
//! 2. the program stops its load, its replicas (SIGTERM, so they drain)
//!    and its proxy, and removes its work directory;
//! 3. it prints one line starting with `interrupted`, naming the signal,
//!    what happened to the rollout, how many replicas it stopped and what
//!    it removed, and exits with 128 + the signal number: **130** after
//!    SIGINT, **143** after SIGTERM, as a shell reports a program the
//!    signal ended.
//!
//! A second SIGINT or SIGTERM during that cleanup exits at once with the
//! same status, after removing the work directory; on Linux the kernel then
//! ends the replicas (see `atlas_local::process`), elsewhere they may
//! outlive the program.
//!
//! SIGKILL runs no code at all: on Linux the replicas still die with the
//! program, but the work directory stays behind. Each program keeps its
//! work in `{temp}/{name}-{pid}` ([`work_dir`]), and the next run of the
//! same program removes such directories whose process is gone.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use atlas_core::{Outcome, RolloutHandle};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The signals that ask a reference program to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C in the terminal.
    Interrupt,
    /// SIGTERM: `kill`, a service manager, a CI runner's timeout.
    Terminate,
}

impl StopSignal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_status(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }

    /// [`exit_status`](Self::exit_status) as an [`ExitCode`].
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The rollout a stop signal interrupted, after the abort.
#[derive(Debug, Clone)]
pub struct AbortedRollout {
    /// The version that was being rolled out.
    pub version: String,
    /// How it ended: rolled back, or promoted when the signal came after
    /// all traffic had already moved (an abort is then ignored).
    pub outcome: Outcome,
}

/// The error a program's steps return once a stop signal arrived; the
/// program's `main` turns it into the cleanup, the report and the exit
/// status.
#[derive(Debug, Clone)]
pub struct Interrupted {
    /// Which signal.
    pub signal: StopSignal,
    /// The rollout that was running, if one was.
    pub rollout: Option<AbortedRollout>,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted ({})", self.signal)?;
        match &self.rollout {
            Some(AbortedRollout {
                version,
                outcome: Outcome::RolledBack { .. },
            }) => write!(
                f,
                ": rollout of {version} aborted, all traffic back on the stable slot, the new slot scaled down"
            ),
            Some(AbortedRollout { version, outcome }) => {
                write!(f, ": rollout of {version} had already ended ({outcome})")
            }
            None => f.write_str(": no rollout was running"),
        }
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// The line a program prints once it has cleaned up: this error,
    /// `replicas` stopped, and whether `work` was removed.
    pub fn report(&self, replicas: usize, work: &Path, removed: &io::Result<()>) -> String {
        let plural = if replicas == 1 { "" } else { "s" };
        let work = match removed {
            Ok(()) => format!("removed {}", work.display()),
            Err(e) => format!("could not remove {}: {e}", work.display()),
        };
        format!("{self}; {replicas} replica{plural} stopped; {work}")
    }
}

/// How a program's work ended, once everything it started is stopped.
#[derive(Debug)]
pub enum Ended<T> {
    /// It ran to its end, with this result.
    Finished(T),
    /// A stop signal ended it.
    Interrupted {
        /// The signal, and the rollout it aborted.
        interrupted: Interrupted,
        /// How many replicas the program stopped while cleaning up.
        replicas: usize,
    },
}

impl<T> Ended<T> {
    /// Sorts the result of a program's work: [`Interrupted`] becomes
    /// [`Ended::Interrupted`] with the `replicas` the cleanup stopped; any
    /// other error stays an error.
    ///
    /// # Errors
    /// Any error other than [`Interrupted`].
    pub fn sort(
        result: Result<T, Box<dyn std::error::Error>>,
        replicas: usize,
    ) -> Result<Ended<T>, Box<dyn std::error::Error>> {
        match result {
            Ok(value) => Ok(Ended::Finished(value)),
            Err(e) => match e.downcast::<Interrupted>() {
                Ok(interrupted) => Ok(Ended::Interrupted {
                    interrupted: *interrupted,
                    replicas,
                }),
                Err(e) => Err(e),
            },
        }
    }

    /// The exit code: `finished`'s for a run that finished; for an
    /// interrupted one, the signal's, after printing the
    /// [report](Interrupted::report) on how `work` was removed.
    pub fn exit_code(
        self,
        work: &Path,
        removed: &io::Result<()>,
        finished: impl FnOnce(T) -> ExitCode,
    ) -> ExitCode {
        match self {
            Ended::Finished(value) => finished(value),
            Ended::Interrupted {
                interrupted,
                replicas,
            } => {
                println!("{}", interrupted.report(replicas, work, removed));
                interrupted.signal.exit_code()
            }
        }
    }
}

/// Watches SIGINT and SIGTERM for the whole run of a program.
#[derive(Debug, Clone)]
pub struct Interrupts {
    first: watch::Receiver<Option<StopSignal>>,
    /// Directories a second signal removes before exiting.
    scratch: Arc<Mutex<Vec<PathBuf>>>,
}

impl Interrupts {
    /// Installs the handlers; from here on SIGINT and SIGTERM no longer end
    /// the program by themselves. `program` names it in the message a
    /// second signal prints. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// When a signal handler cannot be installed.
    pub fn listen(program: &'static str) -> io::Result<Interrupts> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, first) = watch::channel(None);
        let scratch: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let dirs = scratch.clone();
        tokio::spawn(async move {
            let mut seen = false;
            loop {
                let got = tokio::select! {
                    Some(()) = int.recv() => StopSignal::Interrupt,
                    Some(()) = term.recv() => StopSignal::Terminate,
                    else => return,
                };
                if !seen {
                    seen = true;
                    println!("\n{got} received: stopping (again to exit at once)");
                    tx.send_replace(Some(got));
                    continue;
                }
                let dirs = dirs.lock().unwrap_or_else(PoisonError::into_inner).clone();
                for dir in &dirs {
                    let _ = std::fs::remove_dir_all(dir);
                }
                println!(
                    "{program}: second {got}: exiting now without waiting for the cleanup \
                     (removed {} work director{}; on Linux the kernel stops the replicas)",
                    dirs.len(),
                    if dirs.len() == 1 { "y" } else { "ies" }
                );
                std::process::exit(got.exit_status().into());
            }
        });
        Ok(Interrupts { first, scratch })
    }

    /// Waits for the first stop signal (at once if one already came).
    pub async fn wait(&self) -> StopSignal {
        let mut first = self.first.clone();
        let got = first.wait_for(Option::is_some).await.map(|s| *s);
        match got {
            Ok(Some(signal)) => signal,
            // The watching task never ends while the runtime runs.
            _ => std::future::pending().await,
        }
    }

    /// Has a second signal remove `dir` before it exits the program.
    pub fn remove_on_forced_exit(&self, dir: &Path) {
        self.scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(dir.to_path_buf());
    }

    /// Runs `work` unless a stop signal comes first, which drops it and
    /// returns [`Interrupted`] (with no rollout).
    ///
    /// # Errors
    /// [`Interrupted`] when a signal came first.
    pub async fn or_stop<F: Future>(&self, work: F) -> Result<F::Output, Interrupted> {
        tokio::select! {
            biased;
            signal = self.wait() => Err(Interrupted { signal, rollout: None }),
            output = work => Ok(output),
        }
    }

    /// Waits for the rollout to end; if a stop signal comes first, aborts
    /// it, waits for the abort to finish and returns [`Interrupted`] with
    /// the outcome.
    ///
    /// # Errors
    /// [`Interrupted`]; or the engine's error when it stopped without
    /// finishing.
    pub async fn finish(
        &self,
        handle: RolloutHandle,
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        let mut state = handle.watch();
        let signal = loop {
            if state.borrow_and_update().phase.is_terminal() {
                break None;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() {
                    // The engine's task ended: wait() says how.
                    break None;
                },
                signal = self.wait() => break Some(signal),
            }
        };
        let Some(signal) = signal else {
            return Ok(handle.wait().await?);
        };
        let version = handle.state().rollout.release.version;
        // An error here means the rollout already finished; wait() still
        // returns how.
        let _ = handle.abort();
        let outcome = handle.wait().await?;
        Err(Box::new(Interrupted {
            signal,
            rollout: Some(AbortedRollout { version, outcome }),
        }))
    }
}

/// Creates `{temp}/{name}-{pid}` for this run, after removing any
/// `{temp}/{name}-{pid}` that an earlier run left behind when it was killed
/// (its process no longer exists). A directory whose pid now belongs to an
/// unrelated process is left alone.
///
/// # Errors
/// When the directory cannot be created.
pub fn work_dir(name: &str) -> io::Result<PathBuf> {
    let temp = std::env::temp_dir();
    remove_abandoned(&temp, name);
    let dir = temp.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes `{parent}/{name}-{pid}` directories whose process is gone;
/// returns what it removed.
pub fn remove_abandoned(parent: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let prefix = format!("{name}-");
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || process_exists(pid) || !entry.path().is_dir() {
            continue;
        }
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Whether a process with this id exists (signal 0 reaches it, or exists
/// but belongs to someone else).
fn process_exists(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_shell_convention() {
        assert_eq!(StopSignal::Interrupt.exit_status(), 128 + 2);
        assert_eq!(StopSignal::Terminate.exit_status(), 128 + 15);
    }

    #[test]
    fn the_report_says_what_was_done() {
        let interrupted = Interrupted {
            signal: StopSignal::Terminate,
            rollout: Some(AbortedRollout {
                version: "v2".into(),
                outcome: Outcome::RolledBack {
                    reason: "aborted".into(),
                },
            }),
        };
        assert_eq!(
            interrupted.report(6, Path::new("/tmp/w"), &Ok(())),
            "interrupted (SIGTERM): rollout of v2 aborted, all traffic back on the stable slot, \
             the new slot scaled down; 6 replicas stopped; removed /tmp/w"
        );
        let idle = Interrupted {
            signal: StopSignal::Interrupt,
            rollout: None,
        };
        let failed = Err(io::Error::other("busy"));
        assert_eq!(
            idle.report(1, Path::new("/tmp/w"), &failed),
            "interrupted (SIGINT): no rollout was running; 1 replica stopped; \
             could not remove /tmp/w: busy"
        );
    }

    #[test]
    fn abandoned_work_dirs_are_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A process that has ended (and been reaped): its id is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = parent.path().join(format!("demo-{}", child.id()));
        let live = parent.path().join(format!("demo-{}", std::process::id()));
        let other = parent.path().join(format!("other-{}", child.id()));
        for dir in [&dead, &live, &other] {
            std::fs::create_dir_all(dir.join("logs")).unwrap();
        }
        assert_eq!(remove_abandoned(parent.path(), "demo"), vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }
}
