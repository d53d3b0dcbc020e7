//! How far the standby trails the primary, from both servers' views.

use std::time::Duration;

use atlas_core::database::ReplicationStatus;
use atlas_core::{Error, Result};

use super::super::pitr::parse_lsn;
use super::super::shared::{BACKEND, db_err};
use super::node::PgNode;

/// The metric family of the replication lag in bytes.
pub const LAG_BYTES_METRIC: &str = "atlas_database_replication_lag_bytes";
/// The metric family of the replication lag in seconds.
pub const LAG_SECONDS_METRIC: &str = "atlas_database_replication_lag_seconds";

/// The primary's view: its WAL position and its standby's row of
/// `pg_stat_replication`.
#[derive(Debug, Default)]
struct PrimaryView {
    lsn: Option<u64>,
    state: Option<String>,
    sync_state: Option<String>,
    replay_lsn: Option<u64>,
    replay_lag: Option<Duration>,
}

/// The standby's view of itself.
#[derive(Debug, Default)]
struct StandbyView {
    in_recovery: bool,
    replay_lsn: Option<u64>,
    /// Since the last transaction it replayed committed on the primary.
    replay_age: Option<Duration>,
    receiver: Option<String>,
    paused: Option<bool>,
}

fn seconds(s: Option<f64>) -> Option<Duration> {
    s.filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

async fn primary_view(
    primary: &PgNode,
    standby: &PgNode,
    timeout: Duration,
) -> Result<PrimaryView> {
    let client = primary.connect(timeout).await?;
    let what = |w: &str| format!("{w} on {}", primary.name());
    let row = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(|e| db_err(&what("reading the WAL position"), e))?;
    let lsn = row
        .get::<_, Option<String>>(0)
        .as_deref()
        .and_then(parse_lsn);
    let rows = client
        .query(
            "SELECT application_name, state, sync_state, replay_lsn::text, \
             extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication \
             ORDER BY replay_lsn NULLS FIRST",
            &[],
        )
        .await
        .map_err(|e| db_err(&what("reading pg_stat_replication"), e))?;
    // The standby's own row; without an application name to match, the
    // only row, or else the furthest behind (the conservative reading).
    let row = match standby.application_name() {
        Some(app) => rows
            .iter()
            .find(|r| r.get::<_, Option<String>>(0).as_deref() == Some(app)),
        None => rows.first(),
    };
    let mut view = PrimaryView {
        lsn,
        ..PrimaryView::default()
    };
    if let Some(r) = row {
        view.state = r.get(1);
        view.sync_state = r.get(2);
        view.replay_lsn = r.get::<_, Option<String>>(3).as_deref().and_then(parse_lsn);
        view.replay_lag = seconds(r.get(4));
    }
    Ok(view)
}

async fn standby_view(standby: &PgNode, timeout: Duration) -> Result<StandbyView> {
    let client = standby.connect(timeout).await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
             extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
             (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
             CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END",
            &[],
        )
        .await
        .map_err(|e| {
            db_err(
                &format!("reading the replay position on {}", standby.name()),
                e,
            )
        })?;
    Ok(StandbyView {
        in_recovery: row.get(0),
        replay_lsn: row
            .get::<_, Option<String>>(1)
            .as_deref()
            .and_then(parse_lsn),
        replay_age: seconds(row.get(2)),
        receiver: row.get(3),
        paused: row.get(4),
    })
}

/// Asks both servers (at once) and combines their views. Also reports
/// whether replay is paused on the standby, when it said.
pub(super) async fn observe(
    primary: &PgNode,
    standby: &PgNode,
    timeout: Duration,
) -> Result<(ReplicationStatus, Option<bool>)> {
    let (p, s) = tokio::join!(
        primary_view(primary, standby, timeout),
        standby_view(standby, timeout)
    );
    if let (Err(pe), Err(se)) = (&p, &s) {
        return Err(Error::transient(
            BACKEND,
            format!("neither server answers: {pe}; {se}"),
        ));
    }
    if let Err(e) = &p {
        tracing::debug!(error = %e, "primary unreachable: replication as the standby reports it");
    }
    let p = p.ok();
    let s = s.ok().filter(|s| s.in_recovery);
    let streaming = p.as_ref().and_then(|p| p.state.as_deref()) == Some("streaming")
        || s.as_ref().and_then(|s| s.receiver.as_deref()) == Some("streaming");
    let synchronous = matches!(
        p.as_ref().and_then(|p| p.sync_state.as_deref()),
        Some("sync" | "quorum")
    );
    let replayed = s
        .as_ref()
        .and_then(|s| s.replay_lsn)
        .or_else(|| p.as_ref().and_then(|p| p.replay_lsn));
    let lag_bytes = match (p.as_ref().and_then(|p| p.lsn), replayed) {
        (Some(at), Some(replayed)) => Some(at.saturating_sub(replayed)),
        _ => None,
    };
    let lag = match lag_bytes {
        Some(0) => Some(Duration::ZERO),
        _ => s
            .as_ref()
            .and_then(|s| s.replay_age)
            .or_else(|| p.as_ref().and_then(|p| p.replay_lag)),
    };
    let paused = s.as_ref().and_then(|s| s.paused);
    Ok((
        ReplicationStatus {
            streaming,
            synchronous,
            lag_bytes,
            lag,
        },
        paused,
    ))
}
