//! [`PgNode`]: one server of a primary/standby pair — its name, how to
//! reach it, and its data directory when Atlas manages the server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atlas_core::database::PrimaryHealth;
use atlas_core::{Error, Result};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use super::super::shared::{BACKEND, db_err, first_host};
use super::target::ConnectionTarget;

/// One server of a failover pair.
///
/// Its connection settings are a `tokio_postgres::Config` (from a URL or a
/// `key=value` string); the password in them is used to connect and never
/// printed or logged (`Debug` shows the name, host, port and database).
#[derive(Clone)]
pub struct PgNode {
    name: String,
    config: tokio_postgres::Config,
    data_dir: Option<PathBuf>,
    application_name: Option<String>,
}

impl fmt::Debug for PgNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgNode")
            .field("name", &self.name)
            .field("host", &first_host(&self.config))
            .field("port", &self.port())
            .field("dbname", &self.config.get_dbname())
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl PgNode {
    /// The server named `name` (letters, digits, `.`, `_`, `-`; at most 63)
    /// at `dsn`, a PostgreSQL URL or `key=value` connection string.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name (field `name`) or a DSN that
    /// does not parse (field `dsn`; its text is not repeated, it may hold a
    /// password).
    pub fn new(name: impl Into<String>, dsn: &str) -> Result<Self> {
        let config = dsn
            .parse()
            .map_err(|_| Error::invalid("dsn", "is not a PostgreSQL URL or connection string"))?;
        Self::from_config(name, config)
    }

    /// The server named `name` reached with `config`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name, or a config without a host.
    pub fn from_config(name: impl Into<String>, config: tokio_postgres::Config) -> Result<Self> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(Error::invalid(
                "name",
                format!("{name:?} must be 1 to 63 letters, digits, '.', '_' or '-'"),
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(Error::invalid(
                "dsn",
                format!("of node {name} names no host"),
            ));
        }
        Ok(PgNode {
            name,
            config,
            data_dir: None,
            application_name: None,
        })
    }

    /// The server's data directory on this host: Atlas manages the server
    /// and may stop it through `pg_ctl` to fence it.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// As a standby: the `application_name` it streams under, to find its
    /// row in the primary's `pg_stat_replication` (default: the first row,
    /// when the primary has a single standby).
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its data directory, when Atlas manages the server.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    pub(super) fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// Where an application connects to reach it (no password).
    pub fn target(&self) -> ConnectionTarget {
        let mut t = ConnectionTarget::new(
            &self.name,
            first_host(&self.config).unwrap_or_default(),
            self.port(),
            self.config
                .get_dbname()
                .or(self.config.get_user())
                .unwrap_or("postgres"),
        );
        if let Some(user) = self.config.get_user() {
            t = t.with_user(user);
        }
        t
    }

    /// A session, within `timeout` (connection and authentication).
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Client> {
        let mut config = self.config.clone();
        config.connect_timeout(timeout);
        let connecting = config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                // The server refusing us (authentication, a missing
                // database) will not pass by retrying; no answer may.
                return Err(match e.as_db_error() {
                    Some(db) => {
                        let message = format!(
                            "connecting to {}: {} ({})",
                            self.name,
                            db.message(),
                            db.code().code()
                        );
                        Error::backend_with(BACKEND, message, e)
                    }
                    None => Error::transient_with(
                        BACKEND,
                        format!("connecting to {}: {e}", self.name),
                        e,
                    ),
                });
            }
            Err(_) => {
                return Err(Error::transient(
                    BACKEND,
                    format!("connecting to {}: no answer within {timeout:?}", self.name),
                ));
            }
        };
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(node = %name, error = %e, "failover connection ended");
            }
        });
        Ok(client)
    }

    /// One check: connect, then ask whether the server is in recovery or
    /// read-only, all within `timeout`. Never an error: an unreachable
    /// server is `reachable: false` with the reason.
    pub(super) async fn health(&self, timeout: Duration) -> PrimaryHealth {
        let started = Instant::now();
        let checked = tokio::time::timeout(timeout, async {
            let client = self.connect(timeout).await?;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
                    &[],
                )
                .await
                .map_err(|e| db_err(&format!("checking {}", self.name), e))?;
            Ok::<_, Error>((row.get::<_, bool>(0), row.get::<_, bool>(1)))
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::transient(
                BACKEND,
                format!("checking {}: no answer within {timeout:?}", self.name),
            ))
        });
        let latency = started.elapsed();
        match checked {
            Ok((in_recovery, read_only)) => PrimaryHealth {
                reachable: true,
                writable: !in_recovery && !read_only,
                latency,
                error: (in_recovery || read_only).then(|| {
                    format!(
                        "{} refuses writes ({})",
                        self.name,
                        if in_recovery {
                            "in recovery"
                        } else {
                            "read-only"
                        }
                    )
                }),
            },
            Err(e) => PrimaryHealth {
                reachable: false,
                writable: false,
                latency,
                error: Some(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dsns_are_validated_without_repeating_the_dsn() {
        assert!(PgNode::new("db-a", "host=127.0.0.1 port=5433 user=app dbname=app").is_ok());
        for bad in ["", "db a", "db/a", &"x".repeat(64)] {
            let e = PgNode::new(bad, "host=h").unwrap_err();
            assert!(e.to_string().contains("name"), "{e}");
        }
        let e = PgNode::new("db", "postgres://u:s3cret@[::1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(PgNode::new("db", "user=x").is_err(), "a node needs a host");
    }

    #[test]
    fn debug_and_target_never_show_the_password() {
        let n = PgNode::new("db-a", "postgres://app:s3cret@10.0.0.1:6543/shop")
            .unwrap()
            .with_data_dir("/srv/pg");
        assert!(!format!("{n:?}").contains("s3cret"));
        let t = n.target();
        assert_eq!(
            (t.host.as_str(), t.port, t.dbname.as_str()),
            ("10.0.0.1", 6543, "shop")
        );
        assert_eq!(t.user.as_deref(), Some("app"));
        assert!(!serde_json::to_string(&t).unwrap().contains("s3cret"));
        assert!(!t.dsn().contains("s3cret"));
    }
}
