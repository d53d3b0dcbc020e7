//! Fencing an old primary: stopping its server (when Atlas manages its
//! data directory) or making it read-only by configuration.

use std::time::Duration;

use atlas_core::{Error, Result};
use tokio::time::Instant;

use super::super::pitr::{PgTools, run};
use super::super::shared::{BACKEND, db_err};
use super::node::PgNode;

/// How [`PostgresFailover`](super::PostgresFailover) fences an old primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceMethod {
    /// Atlas manages the server (its node has a data directory on this
    /// host): stop it (`pg_ctl stop -m fast`, `-m immediate` if that does
    /// not finish in time), and write `standby.signal` into its data
    /// directory, so whoever starts it again gets a standby in recovery
    /// that refuses writes. A server already down is fenced the same way
    /// (fence method `stopped`).
    Stop,
    /// The server is elsewhere: when it answers, set
    /// `default_transaction_read_only = on` with `ALTER SYSTEM`, reload,
    /// and end the other client sessions (fence method `read-only`; needs a
    /// superuser or the `ALTER SYSTEM` privilege). When it does not answer,
    /// the fence is recorded as `unreachable`, and it is made read-only as
    /// soon as a later check finds it back (see
    /// [`PostgresFailover::enforce_fences`](super::PostgresFailover::enforce_fences)).
    /// Until that check, a server restarted as it was takes writes from
    /// clients that connect to it directly (never through the target file,
    /// which never names a fenced server); prefer `Stop` when Atlas can
    /// reach the data directory. A client may also `SET
    /// default_transaction_read_only = off` itself: this fence stops
    /// applications, not an operator.
    ReadOnly,
}

impl FenceMethod {
    /// The name recorded in a [`Fence`](atlas_core::database::Fence)'s
    /// `method` when the fence was applied.
    pub fn recorded_as(self) -> &'static str {
        match self {
            FenceMethod::Stop => "stopped",
            FenceMethod::ReadOnly => "read-only",
        }
    }
}

/// The `method` of a fence recorded while the server did not answer.
pub(super) const UNREACHABLE: &str = "unreachable";

/// Whether a server runs on `node`'s data directory (`pg_ctl status`).
async fn running(tools: &PgTools, node: &PgNode) -> Result<bool> {
    let dir = data_dir(node)?;
    let out = tools
        .as_owner(tools.program("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .arg("status")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::backend_with(BACKEND, "cannot start pg_ctl status", e))?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(Error::backend(
            BACKEND,
            format!(
                "pg_ctl status on the data directory of {} ({}) exited with {}: {}",
                node.name(),
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
    }
}

fn data_dir(node: &PgNode) -> Result<&std::path::Path> {
    node.data_dir().ok_or_else(|| {
        Error::invalid(
            "fence_method",
            format!(
                "stopping {} needs its data directory (PgNode::with_data_dir)",
                node.name()
            ),
        )
    })
}

/// Stops `node`'s server if it runs, and leaves `standby.signal` in its
/// data directory. Returns whether it was running.
pub(super) async fn stop_server(tools: &PgTools, node: &PgNode, timeout: Duration) -> Result<bool> {
    let dir = data_dir(node)?;
    let was_running = running(tools, node).await?;
    // The signal first: a server that crashes or is restarted by a
    // supervisor between the two steps comes back read-only too.
    let signal = dir.join("standby.signal");
    let mut touch = tools.as_owner("touch");
    touch.arg(&signal);
    run(&mut touch, "touch standby.signal").await?;
    if was_running {
        let secs = timeout.as_secs().max(1).to_string();
        let mut fast = tools.as_owner(tools.program("pg_ctl"));
        fast.arg("-D")
            .arg(dir)
            .args(["-m", "fast", "-w", "-t", &secs, "stop"]);
        if let Err(e) = run(&mut fast, "pg_ctl stop -m fast").await {
            tracing::warn!(node = node.name(), error = %e, "fast shutdown did not finish; stopping immediately");
            let mut immediate = tools.as_owner(tools.program("pg_ctl"));
            immediate
                .arg("-D")
                .arg(dir)
                .args(["-m", "immediate", "-w", "-t", &secs, "stop"]);
            run(&mut immediate, "pg_ctl stop -m immediate").await?;
        }
    }
    if running(tools, node).await? {
        return Err(Error::backend(
            BACKEND,
            format!("{} still runs after pg_ctl stop", node.name()),
        ));
    }
    tracing::info!(node = node.name(), was_running, data_dir = %dir.display(), "server stopped and left to start as a standby");
    Ok(was_running)
}

/// Makes `node` refuse writes by configuration and ends its other client
/// sessions, then checks a new session starts read-only. Errors when it
/// cannot be reached.
pub(super) async fn make_read_only(node: &PgNode, timeout: Duration) -> Result<()> {
    let what = |w: &str| format!("{w} on {}", node.name());
    let client = node.connect(timeout).await?;
    client
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .map_err(|e| db_err(&what("ALTER SYSTEM SET default_transaction_read_only"), e))?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|e| db_err(&what("pg_reload_conf()"), e))?;
    let ended: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) ended",
            &[],
        )
        .await
        .map_err(|e| db_err(&what("ending the client sessions"), e))?
        .get(0);
    drop(client);
    // The postmaster reloads asynchronously: wait until new sessions see it.
    let started = Instant::now();
    loop {
        let fresh = node.connect(timeout).await?;
        let on: String = fresh
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .map_err(|e| db_err(&what("reading default_transaction_read_only"), e))?
            .get(0);
        if on == "on" {
            break;
        }
        if started.elapsed() > timeout {
            return Err(Error::backend(
                BACKEND,
                format!(
                    "{} still starts sessions read-write after a reload",
                    node.name()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        node = node.name(),
        sessions_ended = ended,
        "server made read-only"
    );
    Ok(())
}
