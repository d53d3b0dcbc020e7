//! What happens when a replica exits on its own.

use std::time::Duration;

use atlas_core::{Error, Result};

/// Whether and when [`ProcessWorkloads`](super::ProcessWorkloads) starts a
/// replica again after it exited on its own (any exit status, or a signal
/// Atlas did not send). Replicas Atlas stops itself (scale down, deploy,
/// shutdown) are never restarted.
///
/// A restarted replica keeps its name, index and port, so the endpoints a
/// router holds stay valid; while it is down, [`SlotStatus`] reports it in
/// `failures` and it is neither updated nor ready.
///
/// [`SlotStatus`]: atlas_core::SlotStatus
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Never restart (the default): the replica stays failed until the
    /// next deploy.
    #[default]
    Never,
    /// Restart after a backoff that starts at `initial_backoff` and doubles
    /// with each exit in a row, up to `max_backoff`. A replica that ran for
    /// `reset_after` before it exited starts over at `initial_backoff`.
    ///
    /// Despite its name (that of Docker's and Kubernetes' policy for
    /// failing jobs), a replica that exits with status 0 is restarted too:
    /// a service replica is not meant to finish.
    OnFailure {
        /// The wait before the first restart of a crash loop.
        initial_backoff: Duration,
        /// The longest wait between two restarts.
        max_backoff: Duration,
        /// How long a replica must run for its next exit to count as the
        /// first of a new crash loop.
        reset_after: Duration,
    },
}

/// [`RestartPolicy::on_failure`]'s first wait.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// [`RestartPolicy::on_failure`]'s longest wait.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// [`RestartPolicy::on_failure`]'s run time that resets the backoff: ten
/// minutes, as Kubernetes.
pub const DEFAULT_BACKOFF_RESET: Duration = Duration::from_secs(600);

impl RestartPolicy {
    /// Restart with the defaults: 1 s, doubling up to 60 s, reset after
    /// 10 min of running. Kubernetes' CrashLoopBackOff starts at 10 s and
    /// doubles up to 5 min (with the same 10 min reset); a local process
    /// starts in milliseconds and holds a port its router keeps listing, so
    /// Atlas tries sooner and caps lower.
    pub fn on_failure() -> Self {
        RestartPolicy::OnFailure {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            reset_after: DEFAULT_BACKOFF_RESET,
        }
    }

    /// The wait before restart `attempt` (1 for the first exit of a crash
    /// loop), or `None` for [`Never`](Self::Never).
    pub fn backoff(&self, attempt: u32) -> Option<Duration> {
        match *self {
            RestartPolicy::Never => None,
            RestartPolicy::OnFailure {
                initial_backoff,
                max_backoff,
                ..
            } => {
                let factor = 1u32
                    .checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX);
                Some(
                    initial_backoff
                        .checked_mul(factor)
                        .unwrap_or(max_backoff)
                        .min(max_backoff),
                )
            }
        }
    }

    pub(super) fn validate(&self, max: Duration) -> Result<()> {
        if let RestartPolicy::OnFailure {
            initial_backoff,
            max_backoff,
            reset_after,
        } = *self
        {
            if initial_backoff.is_zero() || initial_backoff > max_backoff {
                return Err(Error::invalid(
                    "restart.initial_backoff",
                    "must be greater than 0 and at most max_backoff",
                ));
            }
            if max_backoff > max {
                return Err(Error::invalid("restart.max_backoff", "must be at most 1h"));
            }
            if reset_after.is_zero() || reset_after > max {
                return Err(Error::invalid(
                    "restart.reset_after",
                    "must be greater than 0 and at most 1h",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RestartPolicy::on_failure();
        let waits: Vec<u64> = (1..=8).map(|a| p.backoff(a).unwrap().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.backoff(u32::MAX), Some(Duration::from_secs(60)));
        assert_eq!(RestartPolicy::Never.backoff(1), None);
    }

    #[test]
    fn bad_policies_are_refused() {
        let bad = RestartPolicy::OnFailure {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
            reset_after: Duration::from_secs(1),
        };
        let err = bad.validate(Duration::from_secs(3600)).unwrap_err();
        assert!(err.to_string().contains("restart.initial_backoff"), "{err}");
        assert!(
            RestartPolicy::on_failure()
                .validate(Duration::from_secs(3600))
                .is_ok()
        );
    }
}
