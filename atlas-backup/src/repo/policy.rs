//! How many targets of a mirror set must succeed, and what happened on each:
//! shared by mirrored backups and mirrored key changes.

use std::fmt;

use super::repository::Repository;
use atlas_core::error::{Error, Result};

/// How many targets of a mirror set must commit for a backup to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorPolicy {
    /// Every target.
    All,
    /// At least this many targets (1 ≤ n ≤ number of targets).
    Quorum(usize),
}

impl MirrorPolicy {
    pub(crate) fn required(self, targets: usize) -> Result<usize> {
        match self {
            MirrorPolicy::All => Ok(targets),
            MirrorPolicy::Quorum(n) if n >= 1 && n <= targets => Ok(n),
            MirrorPolicy::Quorum(n) => Err(Error::invalid(
                "policy",
                format!("quorum must be between 1 and {targets}, got {n}"),
            )),
        }
    }
}

/// What happened on one target of a mirrored backup.
#[non_exhaustive]
pub struct TargetOutcome {
    /// The target (its Debug form).
    pub target: String,
    /// The repository prefix on it.
    pub prefix: String,
    /// `None` when the snapshot was committed there, else why not.
    pub error: Option<Error>,
}

impl fmt::Debug for TargetOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetOutcome")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("error", &self.error.as_ref().map(ToString::to_string))
            .finish()
    }
}

/// The outcome on `repo`: committed when `error` is `None`.
pub(crate) fn outcome(repo: &Repository, error: Option<Error>) -> TargetOutcome {
    TargetOutcome {
        target: format!("{:?}", repo.inner.target),
        prefix: repo.prefix().to_string(),
        error,
    }
}
