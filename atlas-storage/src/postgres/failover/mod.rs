//! [`PostgresFailover`]: a [`DatabaseFailover`] over a PostgreSQL primary
//! and its streaming standby (feature `postgres`).
//!
//! - **Detecting loss**: [`check_primary`](DatabaseFailover::check_primary)
//!   connects and asks `pg_is_in_recovery()` and `transaction_read_only`
//!   within a timeout (5 s by default); [`PrimaryWatch`] turns those checks
//!   into "down for longer than N seconds" (30 s by default).
//! - **Fencing** ([`FenceMethod`]): stop the old primary's server when Atlas
//!   manages its data directory, leaving `standby.signal` so a restart
//!   brings it back read-only; otherwise make it read-only by configuration
//!   when it answers, or record it as `unreachable` and make it read-only
//!   once it answers again. A fenced server is never written to the
//!   connection target, and every later
//!   [`check_primary`](DatabaseFailover::check_primary) re-fences one that
//!   came back writable ([`PostgresFailover::enforce_fences`]).
//! - **Promotion**: refused without a recorded fence; `pg_promote(true,
//!   timeout)`, then checks that the server left recovery, that a write to
//!   a probe table (`atlas_failover_probe` by default) reads back, and
//!   that its timeline went up.
//! - **Pointing the application at it**: through a file, not the proxy
//!   (Atlas's proxy carries HTTP, not the database protocol). After a
//!   promotion the new primary's [`ConnectionTarget`] (host, port,
//!   database, user; never a password) is written atomically to the target
//!   file when one is set; the application (the failover example's app
//!   among them) reads it with [`ConnectionTarget::read_from`] and
//!   reconnects when it changes. A fenced server is never written there.
//! - **Replication lag**: [`replication`](DatabaseFailover::replication)
//!   reads the primary's `pg_stat_replication` and the standby's replay
//!   position; each reading is kept ([`PostgresFailover::last_replication`]),
//!   handed to an observer ([`PostgresFailoverBuilder::with_lag_observer`]),
//!   and emitted as a `tracing` event with the fields
//!   `atlas_database_replication_lag_bytes` and
//!   `atlas_database_replication_lag_seconds`, for an exporter to turn
//!   into gauges of those names.
//! - **Planned switchover**: [`PostgresFailover::planned_switchover`]
//!   refuses ([`SwitchoverError::OverBudget`]) when the standby is further
//!   behind than an [`RpoBudget`], else fences, waits for the standby to
//!   receive the old primary's last WAL, and promotes.

mod fence;
mod node;
mod replication;
mod switchover;
mod target;
mod watch;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use atlas_core::database::{DatabaseFailover, Fence, PrimaryHealth, Promotion, ReplicationStatus};
use atlas_core::{Error, Result};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

pub use fence::FenceMethod;
pub use node::PgNode;
pub use replication::{LAG_BYTES_METRIC, LAG_SECONDS_METRIC};
pub use switchover::{RpoBudget, Switchover, SwitchoverError};
pub use target::{ConnectionTarget, TARGET_FORMAT};
pub use watch::{PrimaryLoss, PrimaryVerdict, PrimaryWatch};

use super::pitr::{PgTools, parse_lsn};
use super::shared::{BACKEND, db_err, valid_table};

/// Called with the standby's name and each replication reading.
pub type LagObserver = Arc<dyn Fn(&str, &ReplicationStatus) + Send + Sync>;

/// Builds a [`PostgresFailover`].
#[derive(Clone)]
pub struct PostgresFailoverBuilder {
    primary: PgNode,
    standby: PgNode,
    fence_method: Option<FenceMethod>,
    tools: Option<PgTools>,
    target_file: Option<PathBuf>,
    check_timeout: Duration,
    promote_timeout: Duration,
    probe_table: String,
    recorded_fence: Option<Fence>,
    lag_observer: Option<LagObserver>,
}

impl fmt::Debug for PostgresFailoverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresFailoverBuilder")
            .field("primary", &self.primary)
            .field("standby", &self.standby)
            .field("fence_method", &self.fence_method)
            .field("target_file", &self.target_file)
            .field("check_timeout", &self.check_timeout)
            .field("promote_timeout", &self.promote_timeout)
            .field("probe_table", &self.probe_table)
            .finish_non_exhaustive()
    }
}

impl PostgresFailoverBuilder {
    /// Sets how the old primary is fenced (default: [`FenceMethod::Stop`]
    /// when the primary has a data directory, else
    /// [`FenceMethod::ReadOnly`]).
    pub fn with_fence_method(mut self, method: FenceMethod) -> Self {
        self.fence_method = Some(method);
        self
    }

    /// Sets where the PostgreSQL programs are, for [`FenceMethod::Stop`]
    /// (default: [`PgTools::discover`]).
    pub fn with_tools(mut self, tools: PgTools) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Writes the current primary's [`ConnectionTarget`] to `path` after
    /// each promotion (default: no file).
    pub fn with_target_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.target_file = Some(path.into());
        self
    }

    /// Sets how long one check of a server may take, connecting included
    /// (default 5 s).
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Sets how long a promotion may take until the server takes writes,
    /// and a fast shutdown before it is made immediate (default 60 s).
    pub fn with_promote_timeout(mut self, timeout: Duration) -> Self {
        self.promote_timeout = timeout;
        self
    }

    /// Sets the table the write check after a promotion writes one row per
    /// node into (default `atlas_failover_probe`, created if missing).
    pub fn with_probe_table(mut self, table: impl Into<String>) -> Self {
        self.probe_table = table.into();
        self
    }

    /// Starts with the primary already fenced by `fence` (as a resumed
    /// controller reads it from its [`FailoverState`](atlas_core::failover::FailoverState)),
    /// so the promotion may go ahead. Its `node` must be the primary's name.
    pub fn with_recorded_fence(mut self, fence: Fence) -> Self {
        self.recorded_fence = Some(fence);
        self
    }

    /// Calls `observer` with the standby's name and every replication
    /// reading, for a metrics exporter (the gauges
    /// [`LAG_BYTES_METRIC`] and [`LAG_SECONDS_METRIC`]).
    pub fn with_lag_observer(
        mut self,
        observer: impl Fn(&str, &ReplicationStatus) + Send + Sync + 'static,
    ) -> Self {
        self.lag_observer = Some(Arc::new(observer));
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: two nodes with one name,
    /// zero timeouts, a bad probe table name, [`FenceMethod::Stop`] for a
    /// primary without a data directory, a recorded fence of another node;
    /// [`Error::NotFound`] when `Stop` needs the PostgreSQL programs and
    /// they cannot be found.
    pub fn build(self) -> Result<PostgresFailover> {
        if self.primary.name() == self.standby.name() {
            return Err(Error::invalid(
                "standby",
                format!(
                    "must be named apart from the primary ({})",
                    self.primary.name()
                ),
            ));
        }
        if self.check_timeout.is_zero() {
            return Err(Error::invalid("check_timeout", "must be longer than zero"));
        }
        if self.promote_timeout < Duration::from_secs(1) {
            return Err(Error::invalid("promote_timeout", "must be at least 1 s"));
        }
        if !valid_table(&self.probe_table) {
            return Err(Error::invalid(
                "probe_table",
                "must be a lowercase identifier [a-z_][a-z0-9_]*, optionally schema.table",
            ));
        }
        let method = self
            .fence_method
            .unwrap_or(if self.primary.data_dir().is_some() {
                FenceMethod::Stop
            } else {
                FenceMethod::ReadOnly
            });
        if method == FenceMethod::Stop && self.primary.data_dir().is_none() {
            return Err(Error::invalid(
                "fence_method",
                format!(
                    "Stop needs the data directory of {} (PgNode::with_data_dir)",
                    self.primary.name()
                ),
            ));
        }
        let tools = match self.tools {
            Some(t) => Some(t),
            None if method == FenceMethod::Stop => Some(PgTools::discover()?),
            None => None,
        };
        if let Some(f) = &self.recorded_fence
            && f.node != self.primary.name()
        {
            return Err(Error::invalid(
                "recorded_fence",
                format!("fences {}, not the primary {}", f.node, self.primary.name()),
            ));
        }
        let mut fenced = BTreeSet::new();
        if self.recorded_fence.is_some() {
            fenced.insert(0);
        }
        Ok(PostgresFailover {
            nodes: [self.primary, self.standby],
            method,
            tools,
            target_file: self.target_file,
            check_timeout: self.check_timeout,
            promote_timeout: self.promote_timeout,
            probe_table: self.probe_table,
            lag_observer: self.lag_observer,
            roles: Mutex::new(Roles {
                primary: 0,
                standby: Some(1),
                fence: self.recorded_fence,
                fenced,
            }),
            last_replication: SyncMutex::new(None),
        })
    }
}

/// Who is what now.
#[derive(Debug)]
struct Roles {
    /// The node that is (or was, until promotion) the primary.
    primary: usize,
    /// The node to promote; none once promoted.
    standby: Option<usize>,
    /// The fence of the current primary, recorded before promotion.
    fence: Option<Fence>,
    /// Every node fenced so far: none may take writes again.
    fenced: BTreeSet<usize>,
}

/// A PostgreSQL primary and its streaming standby, switched by a failover
/// controller through [`DatabaseFailover`] (see the [module](self) for how
/// each step works).
///
/// ```no_run
/// # async fn demo() -> atlas_core::Result<()> {
/// use std::time::Duration;
/// use atlas_core::database::DatabaseFailover;
/// use atlas_storage::postgres::failover::{PgNode, PostgresFailover, PrimaryWatch};
///
/// let db = PostgresFailover::builder(
///     PgNode::new("db-a", "host=10.0.0.11 user=atlas dbname=app")?.with_data_dir("/srv/pg/a"),
///     PgNode::new("db-b", "host=10.0.0.12 user=atlas dbname=app")?,
/// )
/// .with_target_file("/run/app/db-target.json")
/// .build()?;
/// let loss = PrimaryWatch::default().until_lost(&db, Duration::from_secs(5)).await?;
/// db.fence_primary(&loss.reason()).await?;
/// let promoted = db.promote_standby().await?;
/// println!("{} is the primary on timeline {}", promoted.node, promoted.timeline);
/// # Ok(())
/// # }
/// ```
pub struct PostgresFailover {
    nodes: [PgNode; 2],
    method: FenceMethod,
    tools: Option<PgTools>,
    target_file: Option<PathBuf>,
    check_timeout: Duration,
    promote_timeout: Duration,
    probe_table: String,
    lag_observer: Option<LagObserver>,
    /// Held for the whole of a fence or a promotion, so they never overlap.
    roles: Mutex<Roles>,
    last_replication: SyncMutex<Option<ReplicationStatus>>,
}

impl fmt::Debug for PostgresFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresFailover")
            .field("nodes", &self.nodes)
            .field("method", &self.method)
            .field("target_file", &self.target_file)
            .finish_non_exhaustive()
    }
}

impl PostgresFailover {
    /// A builder for the pair `primary` (now the primary) and `standby`
    /// (streaming from it).
    pub fn builder(primary: PgNode, standby: PgNode) -> PostgresFailoverBuilder {
        PostgresFailoverBuilder {
            primary,
            standby,
            fence_method: None,
            tools: None,
            target_file: None,
            check_timeout: Duration::from_secs(5),
            promote_timeout: Duration::from_secs(60),
            probe_table: "atlas_failover_probe".to_owned(),
            recorded_fence: None,
            lag_observer: None,
        }
    }

    /// The fence method.
    pub fn fence_method(&self) -> FenceMethod {
        self.method
    }

    /// The current primary's name.
    pub async fn primary(&self) -> String {
        self.nodes[self.roles.lock().await.primary]
            .name()
            .to_owned()
    }

    /// The standby's name, until it is promoted.
    pub async fn standby(&self) -> Option<String> {
        self.roles
            .lock()
            .await
            .standby
            .map(|s| self.nodes[s].name().to_owned())
    }

    /// The names of the nodes fenced so far.
    pub async fn fenced(&self) -> Vec<String> {
        let roles = self.roles.lock().await;
        roles
            .fenced
            .iter()
            .map(|&i| self.nodes[i].name().to_owned())
            .collect()
    }

    /// The newest replication reading, for a metrics scrape.
    pub fn last_replication(&self) -> Option<ReplicationStatus> {
        self.last_replication
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The target file, when one is set.
    pub fn target_file(&self) -> Option<&Path> {
        self.target_file.as_deref()
    }

    /// Writes the current primary's [`ConnectionTarget`] to the target file
    /// (as the application's first target; promotions rewrite it).
    ///
    /// # Errors
    /// [`Error::Precondition`] when there is no target file or the primary
    /// is fenced (promote the standby first); [`Error::Backend`] when the
    /// file cannot be written.
    pub async fn write_target(&self) -> Result<ConnectionTarget> {
        let roles = self.roles.lock().await;
        self.write_target_locked(&roles, None).await
    }

    async fn write_target_locked(
        &self,
        roles: &Roles,
        timeline: Option<u64>,
    ) -> Result<ConnectionTarget> {
        let node = &self.nodes[roles.primary];
        // A fenced server is never the application's target again.
        if roles.fenced.contains(&roles.primary) {
            return Err(Error::precondition(format!(
                "{} is fenced and must not be the application's target; promote the standby",
                node.name()
            )));
        }
        let path = self
            .target_file
            .as_deref()
            .ok_or_else(|| Error::precondition("no target file is set (with_target_file)"))?;
        let mut target = node.target();
        if let Some(t) = timeline {
            target = target.with_timeline(t);
        }
        target.write_to(path).await?;
        Ok(target)
    }

    /// Checks every fenced node that is not the primary, and fences again
    /// one that answers and takes writes (restarted without its
    /// `standby.signal`, or fenced while it was unreachable): stopped again
    /// with [`FenceMethod::Stop`], made read-only otherwise. Returns the
    /// fences applied now. [`check_primary`](DatabaseFailover::check_primary)
    /// calls it after each check; a failure here is logged there, not
    /// returned.
    ///
    /// # Errors
    /// [`Error::Backend`] when a node that came back cannot be fenced.
    pub async fn enforce_fences(&self) -> Result<Vec<Fence>> {
        let (primary, fenced) = {
            let roles = self.roles.lock().await;
            (roles.primary, roles.fenced.clone())
        };
        let mut applied = Vec::new();
        for i in fenced.into_iter().filter(|&i| i != primary) {
            let node = &self.nodes[i];
            let health = node.health(self.check_timeout).await;
            if !health.writable {
                continue;
            }
            tracing::error!(
                node = node.name(),
                "a fenced server is back and takes writes; fencing it again"
            );
            let method = match (self.method, &self.tools, node.data_dir()) {
                (FenceMethod::Stop, Some(tools), Some(_)) => {
                    fence::stop_server(tools, node, self.promote_timeout).await?;
                    FenceMethod::Stop
                }
                _ => {
                    fence::make_read_only(node, self.check_timeout).await?;
                    FenceMethod::ReadOnly
                }
            };
            applied.push(Fence {
                node: node.name().to_owned(),
                method: method.recorded_as().to_owned(),
                at: SystemTime::now(),
                reason: "fenced earlier, came back taking writes".to_owned(),
            });
        }
        Ok(applied)
    }

    /// Switches to the standby on purpose: refused with
    /// [`SwitchoverError::OverBudget`] (nothing changed) when the standby is
    /// further behind than `budget`; otherwise fences the primary, waits (up
    /// to the promote timeout) for the standby to receive the primary's
    /// last WAL, promotes it and writes the target file.
    ///
    /// # Errors
    /// [`SwitchoverError::OverBudget`], or [`SwitchoverError::Failed`] with
    /// the failed step's error.
    pub async fn planned_switchover(
        &self,
        budget: RpoBudget,
    ) -> Result<Switchover, SwitchoverError> {
        let span = tracing::info_span!("postgres_failover.planned_switchover", %budget);
        async {
            let standby = self.standby().await.ok_or_else(|| {
                SwitchoverError::Failed(Error::precondition("no standby left to switch to"))
            })?;
            let before = self.replication().await.map_err(SwitchoverError::Failed)?;
            let over_bytes = budget
                .max_lag_bytes
                .is_some_and(|max| before.lag_bytes.is_none_or(|b| b > max));
            let over_time = budget
                .max_lag
                .is_some_and(|max| before.lag.is_none_or(|t| t > max));
            if over_bytes || over_time {
                let refused = SwitchoverError::OverBudget {
                    standby,
                    lag_bytes: before.lag_bytes,
                    lag: before.lag,
                    budget,
                };
                tracing::warn!(reason = %refused, "planned switchover refused");
                return Err(refused);
            }
            // The primary's position before the fence: a clean stop or a
            // read-only fence adds nothing the standby needs beyond it.
            let last_lsn = self.primary_lsn().await;
            let fence = self
                .fence_primary("planned switchover")
                .await
                .map_err(SwitchoverError::Failed)?;
            if let Some(lsn) = last_lsn {
                self.wait_received(lsn).await;
            }
            let promotion = self
                .promote_standby()
                .await
                .map_err(SwitchoverError::Failed)?;
            Ok(Switchover {
                before,
                fence,
                promotion,
            })
        }
        .instrument(span)
        .await
    }

    async fn primary_lsn(&self) -> Option<u64> {
        let primary = self.roles.lock().await.primary;
        let client = self.nodes[primary].connect(self.check_timeout).await.ok()?;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .ok()?;
        parse_lsn(&row.get::<_, String>(0))
    }

    /// Waits until the standby has received WAL up to `lsn`, or the promote
    /// timeout passes (then promotes with what it has: the budget allowed it).
    async fn wait_received(&self, lsn: u64) {
        let Some(standby) = self.roles.lock().await.standby else {
            return;
        };
        let node = &self.nodes[standby];
        let started = Instant::now();
        loop {
            let received = async {
                let client = node.connect(self.check_timeout).await.ok()?;
                let row = client
                    .query_one("SELECT pg_last_wal_receive_lsn()::text", &[])
                    .await
                    .ok()?;
                row.get::<_, Option<String>>(0)
                    .as_deref()
                    .and_then(parse_lsn)
            }
            .await;
            if received.is_some_and(|r| r >= lsn) {
                tracing::debug!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "standby received the last WAL"
                );
                return;
            }
            if started.elapsed() > self.promote_timeout {
                tracing::warn!(
                    ?received,
                    lsn,
                    "standby did not receive the old primary's last WAL in time"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn export(&self, standby: &str, status: &ReplicationStatus, paused: Option<bool>) {
        tracing::info!(
            target: "atlas_storage::postgres::failover::metrics",
            standby,
            atlas_database_replication_lag_bytes = status.lag_bytes,
            atlas_database_replication_lag_seconds = status.lag.map(|l| l.as_secs_f64()),
            streaming = status.streaming,
            synchronous = status.synchronous,
            replay_paused = paused,
            "replication lag"
        );
        *self
            .last_replication
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
        if let Some(observe) = &self.lag_observer {
            observe(standby, status);
        }
    }

    /// The standby's timeline before promotion: its last restartpoint's,
    /// or the timeline it receives on, whichever is newer.
    async fn standby_timeline(client: &tokio_postgres::Client, name: &str) -> Result<u64> {
        let row = client
            .query_one(
                "SELECT greatest((SELECT timeline_id FROM pg_control_checkpoint()), \
                 (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1))::bigint",
                &[],
            )
            .await
            .map_err(|e| db_err(&format!("reading the timeline of {name}"), e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// The timeline a primary writes on: the first 8 hex digits of its
    /// current WAL file's name.
    async fn primary_timeline(client: &tokio_postgres::Client, name: &str) -> Result<u64> {
        let row = client
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await
            .map_err(|e| db_err(&format!("reading the timeline of {name}"), e))?;
        let file: String = row.get(0);
        file.get(..8)
            .and_then(|t| u64::from_str_radix(t, 16).ok())
            .ok_or_else(|| {
                Error::backend(
                    BACKEND,
                    format!("{name}: unreadable WAL file name {file:?}"),
                )
            })
    }

    /// Writes a row naming `node` and `timeline` into the probe table and
    /// reads it back.
    async fn write_check(
        &self,
        client: &tokio_postgres::Client,
        node: &str,
        timeline: u64,
    ) -> Result<()> {
        let table = &self.probe_table;
        let what = |w: &str| format!("{w} {table} on {node}");
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                     node text PRIMARY KEY,
                     timeline bigint NOT NULL,
                     promoted_at timestamptz NOT NULL DEFAULT now()
                 )"
            ))
            .await
            .map_err(|e| db_err(&what("creating"), e))?;
        let tl = i64::try_from(timeline).unwrap_or(i64::MAX);
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (node, timeline) VALUES ($1, $2) \
                     ON CONFLICT (node) DO UPDATE SET timeline = EXCLUDED.timeline, promoted_at = now()"
                ),
                &[&node, &tl],
            )
            .await
            .map_err(|e| db_err(&what("writing to"), e))?;
        let back: Option<i64> = client
            .query_opt(
                &format!("SELECT timeline FROM {table} WHERE node = $1"),
                &[&node],
            )
            .await
            .map_err(|e| db_err(&what("reading back"), e))?
            .map(|r| r.get(0));
        if back != Some(tl) {
            return Err(Error::backend(
                BACKEND,
                format!("{node}: the write check read back {back:?}, not {tl}"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl DatabaseFailover for PostgresFailover {
    /// Checks the current primary; afterwards, re-fences any fenced server
    /// that came back taking writes ([`PostgresFailover::enforce_fences`]).
    async fn check_primary(&self) -> Result<PrimaryHealth> {
        let primary = self.roles.lock().await.primary;
        let node = &self.nodes[primary];
        let span = tracing::debug_span!("postgres_failover.check_primary", node = node.name());
        async {
            let health = node.health(self.check_timeout).await;
            tracing::debug!(
                reachable = health.reachable,
                writable = health.writable,
                latency_ms = health.latency.as_millis() as u64,
                error = health.error.as_deref().unwrap_or(""),
                "primary checked"
            );
            if let Err(e) = self.enforce_fences().await {
                tracing::error!(error = %e, "a fenced server came back and could not be fenced again");
            }
            Ok(health)
        }
        .instrument(span)
        .await
    }

    /// Asks the primary (`pg_stat_replication`, its WAL position) and the
    /// standby (its replay position and the age of its last replayed
    /// transaction) at once. `lag_bytes` needs the primary; `lag` is zero
    /// when nothing is left to replay, else the age of the standby's last
    /// replayed transaction. After a promotion there is no standby: nothing
    /// streams and the lag is unknown.
    async fn replication(&self) -> Result<ReplicationStatus> {
        let (primary, standby) = {
            let roles = self.roles.lock().await;
            (roles.primary, roles.standby)
        };
        let Some(standby) = standby else {
            return Ok(ReplicationStatus {
                streaming: false,
                synchronous: false,
                lag_bytes: None,
                lag: None,
            });
        };
        let (p, s) = (&self.nodes[primary], &self.nodes[standby]);
        let span = tracing::debug_span!(
            "postgres_failover.replication",
            primary = p.name(),
            standby = s.name()
        );
        async {
            let (status, paused) = replication::observe(p, s, self.check_timeout).await?;
            self.export(s.name(), &status, paused);
            Ok(status)
        }
        .instrument(span)
        .await
    }

    async fn fence_primary(&self, reason: &str) -> Result<Fence> {
        let mut roles = self.roles.lock().await;
        let node = &self.nodes[roles.primary];
        let span = tracing::info_span!(
            "postgres_failover.fence_primary",
            node = node.name(),
            reason
        );
        async {
            if let Some(f) = &roles.fence {
                tracing::info!(method = %f.method, "primary already fenced");
                return Ok(f.clone());
            }
            if roles.standby.is_none() {
                return Err(Error::precondition(format!(
                    "{} has no standby left to promote; fencing it would leave no primary",
                    node.name()
                )));
            }
            let method = match self.method {
                FenceMethod::Stop => {
                    let tools = self
                        .tools
                        .as_ref()
                        .ok_or_else(|| Error::invalid("tools", "Stop needs the PostgreSQL programs"))?;
                    fence::stop_server(tools, node, self.promote_timeout).await?;
                    FenceMethod::Stop.recorded_as()
                }
                FenceMethod::ReadOnly => match fence::make_read_only(node, self.check_timeout).await {
                    Ok(()) => FenceMethod::ReadOnly.recorded_as(),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "primary unreachable: recorded as fenced, to be made read-only when it answers");
                        fence::UNREACHABLE
                    }
                    Err(e) => return Err(e),
                },
            };
            let fence = Fence {
                node: node.name().to_owned(),
                method: method.to_owned(),
                at: SystemTime::now(),
                reason: reason.to_owned(),
            };
            roles.fence = Some(fence.clone());
            let primary = roles.primary;
            roles.fenced.insert(primary);
            tracing::warn!(method, "primary fenced");
            Ok(fence)
        }
        .instrument(span)
        .await
    }

    async fn promote_standby(&self) -> Result<Promotion> {
        let mut roles = self.roles.lock().await;
        let old = self.nodes[roles.primary].name().to_owned();
        let span = tracing::info_span!("postgres_failover.promote_standby", old_primary = %old);
        async {
            let Some(standby) = roles.standby else {
                return Err(Error::precondition(format!(
                    "{old} is the primary and has no standby to promote"
                )));
            };
            let node = &self.nodes[standby];
            if roles.fence.as_ref().is_none_or(|f| f.node != old) {
                return Err(Error::precondition(format!(
                    "the old primary {old} must be fenced before {} is promoted; no fence is recorded",
                    node.name()
                )));
            }
            let requested = Instant::now();
            let client = node.connect(self.check_timeout).await?;
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| db_err(&format!("checking {}", node.name()), e))?
                .get(0);
            let before = if in_recovery {
                let before = Self::standby_timeline(&client, node.name()).await?;
                let secs = i32::try_from(self.promote_timeout.as_secs().max(1)).unwrap_or(i32::MAX);
                tracing::info!(standby = node.name(), timeline = before, "promoting");
                let promoted: bool = client
                    .query_one("SELECT pg_promote(true, $1)", &[&secs])
                    .await
                    .map_err(|e| db_err(&format!("pg_promote() on {}", node.name()), e))?
                    .get(0);
                if !promoted {
                    return Err(Error::Deadline {
                        what: format!("promotion of {}", node.name()),
                        after: self.promote_timeout,
                    });
                }
                Some(before)
            } else {
                // Promoted by an earlier run that stopped before recording
                // it: check it as if just promoted.
                tracing::warn!(standby = node.name(), "standby already left recovery");
                None
            };
            loop {
                let in_recovery: bool = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| db_err(&format!("checking {}", node.name()), e))?
                    .get(0);
                if !in_recovery {
                    break;
                }
                if requested.elapsed() > self.promote_timeout {
                    return Err(Error::Deadline {
                        what: format!("promotion of {}", node.name()),
                        after: self.promote_timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let timeline = Self::primary_timeline(&client, node.name()).await?;
            if let Some(before) = before
                && timeline <= before
            {
                return Err(Error::backend(
                    BACKEND,
                    format!("{} left recovery on timeline {timeline}, not above {before}", node.name()),
                ));
            }
            self.write_check(&client, node.name(), timeline).await?;
            let took = requested.elapsed();
            roles.primary = standby;
            roles.standby = None;
            roles.fence = None;
            if self.target_file.is_some()
                && let Err(e) = self.write_target_locked(&roles, Some(timeline)).await
            {
                // Promoted all the same: the caller retries the file alone.
                tracing::error!(error = %e, "promoted, but the target file was not written");
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "{} was promoted (timeline {timeline}), but the application's target                          file was not written; retry with write_target(): {e}",
                        node.name()
                    ),
                ));
            }
            tracing::warn!(
                new_primary = node.name(),
                timeline,
                took_ms = took.as_millis() as u64,
                "standby promoted"
            );
            Ok(Promotion {
                node: node.name().to_owned(),
                timeline,
                writable: true,
                took,
            })
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> PostgresFailoverBuilder {
        PostgresFailover::builder(
            PgNode::new("db-a", "host=127.0.0.1 port=1 user=postgres").unwrap(),
            PgNode::new("db-b", "host=127.0.0.1 port=2 user=postgres").unwrap(),
        )
    }

    #[test]
    fn settings_are_validated_naming_the_field() {
        let same = PostgresFailover::builder(
            PgNode::new("db", "host=a").unwrap(),
            PgNode::new("db", "host=b").unwrap(),
        );
        for (builder, field) in [
            (same, "standby"),
            (pair().with_check_timeout(Duration::ZERO), "check_timeout"),
            (
                pair().with_promote_timeout(Duration::from_millis(10)),
                "promote_timeout",
            ),
            (pair().with_probe_table("Probe; drop"), "probe_table"),
            (pair().with_fence_method(FenceMethod::Stop), "fence_method"),
            (
                pair().with_recorded_fence(Fence {
                    node: "db-b".into(),
                    method: "stopped".into(),
                    at: SystemTime::now(),
                    reason: "r".into(),
                }),
                "recorded_fence",
            ),
        ] {
            let err = builder.build().unwrap_err();
            assert_eq!(err.kind(), atlas_core::ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        let ok = pair().build().unwrap();
        assert_eq!(
            ok.fence_method(),
            FenceMethod::ReadOnly,
            "no data directory: read-only"
        );
    }

    #[tokio::test]
    async fn promotion_without_a_fence_is_refused_before_any_connection() {
        let db = pair().build().unwrap();
        let err = db.promote_standby().await.unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Precondition, "{err}");
        assert!(err.to_string().contains("must be fenced"), "{err}");
        assert_eq!(db.primary().await, "db-a");
    }

    #[tokio::test]
    async fn an_unreachable_primary_is_reported_and_fenced_as_unreachable() {
        let db = pair()
            .with_check_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let h = db.check_primary().await.unwrap();
        assert!(!h.reachable && !h.writable, "{h:?}");
        assert!(h.error.unwrap().contains("db-a"));
        let f = db.fence_primary("test").await.unwrap();
        assert_eq!(
            (f.node.as_str(), f.method.as_str()),
            ("db-a", "unreachable")
        );
        // Idempotent: the same fence again.
        assert_eq!(db.fence_primary("again").await.unwrap(), f);
        assert_eq!(db.fenced().await, vec!["db-a".to_owned()]);
        // The fenced primary is never written as the application's target.
        let err = db.write_target().await.unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Precondition, "{err}");
    }

    #[test]
    fn an_over_budget_refusal_names_the_lag_and_the_budget() {
        let e = SwitchoverError::OverBudget {
            standby: "db-b".into(),
            lag_bytes: Some(81_920),
            lag: Some(Duration::from_millis(2_500)),
            budget: RpoBudget::bytes(1024),
        };
        let text = e.to_string();
        assert!(
            text.contains("db-b")
                && text.contains("81920 bytes")
                && text.contains("2.500s")
                && text.contains("budget of 1024 bytes"),
            "{text}"
        );
        assert_eq!(Error::from(e).kind(), atlas_core::ErrorKind::Precondition);
    }
}
