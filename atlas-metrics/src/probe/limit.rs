//! The socket budget shared by probes, and the wording of probe timeouts.

use std::sync::Arc;
use std::time::Duration;

use atlas_core::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default number of sockets one [`ConnectionLimiter`] allows open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// A cap on the sockets that probes hold open at the same time.
///
/// Clones share one budget: give the same limiter to every probe that may
/// run at once (for example all the probes of a fleet of 1,000 endpoints)
/// and at most [`max`](Self::max) of their connections are open at any
/// moment; the other attempts wait for a slot. A probe built without a
/// limiter gets a budget of its own of [`DEFAULT_MAX_CONNECTIONS`].
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Default for ConnectionLimiter {
    fn default() -> Self {
        ConnectionLimiter {
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
            max: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ConnectionLimiter {
    /// A limiter allowing `max` open sockets.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `probe.max_connections` when `max` is 0 or
    /// above tokio's semaphore limit.
    pub fn new(max: usize) -> Result<Self> {
        if max == 0 {
            return Err(Error::invalid(
                "probe.max_connections",
                "must be at least 1",
            ));
        }
        if max > Semaphore::MAX_PERMITS {
            return Err(Error::invalid(
                "probe.max_connections",
                format!("must be at most {}", Semaphore::MAX_PERMITS),
            ));
        }
        Ok(ConnectionLimiter {
            slots: Arc::new(Semaphore::new(max)),
            max,
        })
    }

    /// The most sockets open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Waits for a slot. The slot is given back when the permit drops, which
    /// the probes do only after their socket is closed.
    pub(crate) async fn acquire(&self) -> std::result::Result<OwnedSemaphorePermit, String> {
        // Nothing closes the semaphore; the error arm only keeps this total.
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "connection limiter is closed".to_string())
    }
}

/// Formats a timeout for probe reasons, e.g. `timed out after 1s`.
pub(crate) fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(timeout))
}
