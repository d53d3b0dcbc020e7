//! The planned switchover's RPO budget, its refusal and its report.

use std::fmt;
use std::time::Duration;

use atlas_core::Error;
use atlas_core::database::{Fence, Promotion, ReplicationStatus};

/// How far behind the standby may be for a planned switchover to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RpoBudget {
    /// At most this much WAL not yet replayed (`None`: no limit).
    pub max_lag_bytes: Option<u64>,
    /// At most this old a last replayed transaction (`None`: no limit).
    pub max_lag: Option<Duration>,
}

impl RpoBudget {
    /// No more than `bytes` of WAL behind.
    pub fn bytes(bytes: u64) -> Self {
        RpoBudget {
            max_lag_bytes: Some(bytes),
            max_lag: None,
        }
    }

    /// No more than `lag` behind in time.
    pub fn time(lag: Duration) -> Self {
        RpoBudget {
            max_lag_bytes: None,
            max_lag: Some(lag),
        }
    }
}

impl fmt::Display for RpoBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.max_lag_bytes, self.max_lag) {
            (None, None) => write!(f, "no limit"),
            (Some(b), None) => write!(f, "{b} bytes"),
            (None, Some(t)) => write!(f, "{:.3}s", t.as_secs_f64()),
            (Some(b), Some(t)) => write!(f, "{b} bytes and {:.3}s", t.as_secs_f64()),
        }
    }
}

/// Why a planned switchover did not happen.
#[derive(Debug)]
#[non_exhaustive]
pub enum SwitchoverError {
    /// The standby is further behind than the budget allows (or its lag is
    /// unknown while the budget limits it); nothing was changed.
    OverBudget {
        /// The standby.
        standby: String,
        /// Its lag in WAL bytes, when known.
        lag_bytes: Option<u64>,
        /// Its lag in time, when known.
        lag: Option<Duration>,
        /// The budget it broke.
        budget: RpoBudget,
    },
    /// A step failed.
    Failed(Error),
}

impl fmt::Display for SwitchoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchoverError::OverBudget {
                standby,
                lag_bytes,
                lag,
                budget,
            } => write!(
                f,
                "planned switchover refused: standby {standby} is {} and {} behind, over the RPO budget of {budget}",
                lag_bytes.map_or_else(
                    || "an unknown number of bytes".to_owned(),
                    |b| format!("{b} bytes")
                ),
                lag.map_or_else(
                    || "an unknown time".to_owned(),
                    |t| format!("{:.3}s", t.as_secs_f64())
                ),
            ),
            SwitchoverError::Failed(e) => write!(f, "planned switchover failed: {e}"),
        }
    }
}

impl std::error::Error for SwitchoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SwitchoverError::Failed(e) => Some(e),
            SwitchoverError::OverBudget { .. } => None,
        }
    }
}

impl From<SwitchoverError> for Error {
    /// An over-budget refusal is a [`Error::Precondition`].
    fn from(e: SwitchoverError) -> Self {
        match e {
            SwitchoverError::Failed(e) => e,
            over @ SwitchoverError::OverBudget { .. } => Error::precondition(over.to_string()),
        }
    }
}

/// What a planned switchover did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Switchover {
    /// The replication reading the budget was checked against.
    pub before: ReplicationStatus,
    /// The old primary's fence.
    pub fence: Fence,
    /// The promotion.
    pub promotion: Promotion,
}
