//! [`MockDatabase`]: a scripted primary/standby pair behind the
//! [`DatabaseFailover`] contract.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::guard::lock;
use crate::database::{DatabaseFailover, Fence, PrimaryHealth, Promotion, ReplicationStatus};
use crate::error::{Error, Result};

/// A call a [`MockDatabase`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatabaseCall {
    /// [`DatabaseFailover::check_primary`].
    CheckPrimary,
    /// [`DatabaseFailover::replication`].
    Replication,
    /// [`DatabaseFailover::fence_primary`].
    FencePrimary,
    /// [`DatabaseFailover::promote_standby`].
    PromoteStandby,
}

#[derive(Debug)]
struct State {
    primary: String,
    standby: String,
    reachable: bool,
    lag: Option<Duration>,
    lag_bytes: Option<u64>,
    synchronous: bool,
    timeline: u64,
    promote_delay: Duration,
    fence: Option<Fence>,
    promotion: Option<Promotion>,
    calls: Vec<DatabaseCall>,
}

/// An in-memory primary/standby pair that follows the
/// [`DatabaseFailover`] contract and records what it was asked.
///
/// - The primary's reachability and the standby's lag are scripted
///   ([`set_reachable`](Self::set_reachable), [`set_lag`](Self::set_lag)).
/// - [`fence_primary`](DatabaseFailover::fence_primary) records a fence
///   (method `unreachable` when the primary is, else `read-only`); fencing
///   again returns the recorded fence.
/// - [`promote_standby`](DatabaseFailover::promote_standby) is refused with
///   a [`Precondition`](Error::Precondition) error until a fence is
///   recorded; it takes [`with_promote_delay`](Self::with_promote_delay)
///   (tokio time), moves the timeline on, and makes the standby the
///   primary. Promoting again returns the recorded promotion.
/// - Every call is recorded in order ([`calls`](Self::calls)).
///
/// ```
/// # use atlas_core::database::DatabaseFailover;
/// # use atlas_core::testing::{DatabaseCall, MockDatabase};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let db = MockDatabase::new();
/// db.set_reachable(false);
/// assert!(!db.check_primary().await?.reachable);
/// assert!(db.promote_standby().await.is_err(), "no fence yet");
/// db.fence_primary("primary lost").await?;
/// let p = db.promote_standby().await?;
/// assert_eq!(p.node, "db-standby");
/// assert!(db.check_primary().await?.writable);
/// assert_eq!(db.count(DatabaseCall::PromoteStandby), 2);
/// # Ok::<(), atlas_core::Error>(())
/// # }).unwrap();
/// ```
///
/// Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct MockDatabase {
    state: Arc<Mutex<State>>,
}

impl Default for MockDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl MockDatabase {
    /// A reachable primary `db-primary` streaming to `db-standby` with no
    /// lag, timeline 1.
    pub fn new() -> Self {
        Self::with_nodes("db-primary", "db-standby")
    }

    /// Like [`new`](Self::new), with these node names.
    pub fn with_nodes(primary: impl Into<String>, standby: impl Into<String>) -> Self {
        MockDatabase {
            state: Arc::new(Mutex::new(State {
                primary: primary.into(),
                standby: standby.into(),
                reachable: true,
                lag: Some(Duration::ZERO),
                lag_bytes: Some(0),
                synchronous: false,
                timeline: 1,
                promote_delay: Duration::ZERO,
                fence: None,
                promotion: None,
                calls: Vec::new(),
            })),
        }
    }

    /// A promotion takes `delay` (tokio time) before the standby takes
    /// writes.
    pub fn with_promote_delay(self, delay: Duration) -> Self {
        lock(&self.state).promote_delay = delay;
        self
    }

    /// Whether the primary answers.
    pub fn set_reachable(&self, reachable: bool) {
        lock(&self.state).reachable = reachable;
    }

    /// How far the standby trails (`None`: unknown).
    pub fn set_lag(&self, lag: Option<Duration>, bytes: Option<u64>) {
        let mut s = lock(&self.state);
        s.lag = lag;
        s.lag_bytes = bytes;
    }

    /// Whether replication is synchronous.
    pub fn set_synchronous(&self, synchronous: bool) {
        lock(&self.state).synchronous = synchronous;
    }

    /// The recorded fence.
    pub fn fence(&self) -> Option<Fence> {
        lock(&self.state).fence.clone()
    }

    /// The recorded promotion.
    pub fn promotion(&self) -> Option<Promotion> {
        lock(&self.state).promotion.clone()
    }

    /// The node that takes writes now.
    pub fn primary(&self) -> String {
        lock(&self.state).primary.clone()
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<DatabaseCall> {
        lock(&self.state).calls.clone()
    }

    /// How many calls of `call` were made.
    pub fn count(&self, call: DatabaseCall) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| **c == call)
            .count()
    }
}

#[async_trait]
impl DatabaseFailover for MockDatabase {
    async fn check_primary(&self) -> Result<PrimaryHealth> {
        let mut s = lock(&self.state);
        s.calls.push(DatabaseCall::CheckPrimary);
        let promoted = s.promotion.is_some();
        let reachable = promoted || s.reachable;
        Ok(PrimaryHealth {
            reachable,
            writable: promoted || (reachable && s.fence.is_none()),
            latency: Duration::from_millis(1),
            error: (!reachable).then(|| format!("{}: connection refused", s.primary)),
        })
    }

    async fn replication(&self) -> Result<ReplicationStatus> {
        let mut s = lock(&self.state);
        s.calls.push(DatabaseCall::Replication);
        let streaming = s.promotion.is_none() && s.reachable && s.fence.is_none();
        Ok(ReplicationStatus {
            streaming,
            synchronous: streaming && s.synchronous,
            lag_bytes: if s.reachable { s.lag_bytes } else { None },
            lag: s.lag,
        })
    }

    async fn fence_primary(&self, reason: &str) -> Result<Fence> {
        let mut s = lock(&self.state);
        s.calls.push(DatabaseCall::FencePrimary);
        if let Some(f) = &s.fence {
            return Ok(f.clone());
        }
        let fence = Fence {
            node: s.primary.clone(),
            method: if s.reachable {
                "read-only"
            } else {
                "unreachable"
            }
            .into(),
            at: SystemTime::now(),
            reason: reason.into(),
        };
        s.fence = Some(fence.clone());
        tracing::debug!(node = %fence.node, method = %fence.method, "mock database: primary fenced");
        Ok(fence)
    }

    async fn promote_standby(&self) -> Result<Promotion> {
        let delay = {
            let mut s = lock(&self.state);
            s.calls.push(DatabaseCall::PromoteStandby);
            if let Some(p) = &s.promotion {
                return Ok(p.clone());
            }
            if s.fence.is_none() {
                return Err(Error::precondition(format!(
                    "promoting {} needs {} fenced first",
                    s.standby, s.primary
                )));
            }
            s.promote_delay
        };
        tokio::time::sleep(delay).await;
        let mut s = lock(&self.state);
        if let Some(p) = &s.promotion {
            return Ok(p.clone());
        }
        s.timeline += 1;
        let promotion = Promotion {
            node: s.standby.clone(),
            timeline: s.timeline,
            writable: true,
            took: delay,
        };
        s.primary = s.standby.clone();
        s.promotion = Some(promotion.clone());
        tracing::debug!(node = %promotion.node, timeline = promotion.timeline, "mock database: standby promoted");
        Ok(promotion)
    }
}
