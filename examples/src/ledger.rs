//! The demo app's ledger (feature `postgres`): `POST /ledger/<id>` commits
//! row `<id>` to PostgreSQL and answers 200 only once the commit returned,
//! so a client's list of acknowledged ids is exactly what the database
//! promised to keep. A drill compares that list with what a promoted
//! standby holds to count the transactions a failover lost (its RPO).
//!
//! The database is named by a *target file*: the JSON connection target a
//! PostgreSQL failover writes (`{"host": …, "port": …, "dbname": …,
//! "user": …}`, see `atlas_storage::postgres::failover`), or a connection
//! string (libpq `key=value` or a `postgres://` URL). Neither holds a
//! password: that comes from `PGPASSWORD`. The file is read on every write, so when a
//! failover rewrites it (atomically, by rename) the next write goes to the
//! new primary; a write that fails drops the connection, and the next one
//! connects again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

/// The table the ledger writes.
pub const LEDGER_TABLE: &str = "atlas_ledger";

/// How long a connection attempt or a write may take before it counts as
/// failed.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(3);

/// Writes ids to the database the target file names.
#[derive(Debug)]
pub struct Ledger {
    target_file: PathBuf,
    current: Mutex<Option<(String, Arc<Client>)>>,
}

impl Ledger {
    /// A ledger writing to the database `target_file` names.
    pub fn new(target_file: impl Into<PathBuf>) -> Self {
        Ledger {
            target_file: target_file.into(),
            current: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<Arc<Client>, String> {
        let target = tokio::fs::read_to_string(&self.target_file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.target_file.display()))?;
        let target = target.trim().to_owned();
        let mut current = self.current.lock().await;
        if let Some((t, c)) = current.as_ref()
            && *t == target
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let client = Arc::new(connect(&target).await?);
        tracing::info!(target = %redact(&target), "ledger connected");
        *current = Some((target, Arc::clone(&client)));
        Ok(client)
    }

    /// Commits `id` (a second write of the same id succeeds without a new
    /// row). `Err` means the write is not acknowledged.
    pub async fn write(&self, id: i64) -> Result<(), String> {
        let client = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = client.execute(
            "INSERT INTO atlas_ledger(id) VALUES ($1) ON CONFLICT DO NOTHING",
            &params,
        );
        let result = match tokio::time::timeout(LEDGER_TIMEOUT, insert).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(format!("write timed out after {LEDGER_TIMEOUT:?}")),
        };
        if result.is_err() {
            *self.current.lock().await = None;
        }
        result
    }
}

/// Connects to `target` (a target file's text, see [`parse_target`]; the
/// password comes from `PGPASSWORD`) and makes sure the ledger table
/// exists.
///
/// # Errors
/// A message naming what failed (never the password).
pub async fn connect(target: &str) -> Result<Client, String> {
    let mut config = parse_target(target)?;
    if config.get_password().is_none()
        && let Ok(pw) = std::env::var("PGPASSWORD")
    {
        config.password(pw);
    }
    if config.get_user().is_none() {
        config.user(std::env::var("PGUSER").as_deref().unwrap_or("postgres"));
    }
    config.connect_timeout(LEDGER_TIMEOUT);
    let (client, connection) = tokio::time::timeout(LEDGER_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| format!("connecting to {} timed out", redact(target)))?
        .map_err(|e| format!("cannot connect to {}: {e}", redact(target)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "ledger connection ended");
        }
    });
    // Replicas starting together race on IF NOT EXISTS (a unique
    // violation in the catalog); the loser finds the table on its retry.
    let create = "CREATE TABLE IF NOT EXISTS atlas_ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())";
    if let Err(first) = client.batch_execute(create).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .batch_execute(create)
            .await
            .map_err(|e| format!("cannot create the ledger table: {e} (first try: {first})"))?;
    }
    Ok(client)
}

/// A target file's text as connection settings: a JSON connection target
/// (`host`, `port`, `dbname`, optional `user`) or a connection string.
///
/// # Errors
/// A message naming what does not parse.
pub fn parse_target(target: &str) -> Result<tokio_postgres::Config, String> {
    if !target.trim_start().starts_with('{') {
        return target.parse().map_err(|e| {
            format!(
                "target {:?} is not a connection string: {e}",
                redact(target)
            )
        });
    }
    let v: serde_json::Value =
        serde_json::from_str(target).map_err(|e| format!("target file is not JSON: {e}"))?;
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    let host = text("host").ok_or("target file has no \"host\"")?;
    let port = v
        .get("port")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("target file has no valid \"port\"")?;
    let mut config = tokio_postgres::Config::new();
    config.host(host).port(port);
    if let Some(db) = text("dbname") {
        config.dbname(db);
    }
    if let Some(user) = text("user") {
        config.user(user);
    }
    Ok(config)
}

/// Every id the ledger table of `client`'s database holds.
///
/// # Errors
/// A message naming the failed query.
pub async fn ledger_ids(client: &Client) -> Result<std::collections::BTreeSet<i64>, String> {
    let rows = client
        .query("SELECT id FROM atlas_ledger", &[])
        .await
        .map_err(|e| format!("cannot read the ledger: {e}"))?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// `target` with any `password=` value or URL password replaced by `***`.
pub fn redact(target: &str) -> String {
    if let Some((scheme, rest)) = target.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    target
        .split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => "password=***".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("host=127.0.0.1 port=5433 password=s3cret dbname=app"),
            "host=127.0.0.1 port=5433 password=*** dbname=app"
        );
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(redact("host=db port=5432"), "host=db port=5432");
    }

    #[test]
    fn targets_parse_as_json_or_connection_strings() {
        let c = parse_target(r#"{"format":1,"node":"db-b","host":"127.0.0.1","port":5434,"dbname":"app","user":"app","timeline":2}"#).unwrap();
        assert_eq!(c.get_ports(), [5434]);
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_user(), Some("app"));
        let c = parse_target("host=127.0.0.1 port=5433 dbname=postgres").unwrap();
        assert_eq!(c.get_ports(), [5433]);
        assert!(
            parse_target(r#"{"host":"h"}"#)
                .unwrap_err()
                .contains("port")
        );
        assert!(parse_target("{not json").unwrap_err().contains("not JSON"));
    }

    #[tokio::test]
    async fn a_missing_target_file_is_a_failed_write_not_a_panic() {
        let ledger = Ledger::new("/nonexistent/atlas-ledger-target");
        let e = ledger.write(1).await.unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
