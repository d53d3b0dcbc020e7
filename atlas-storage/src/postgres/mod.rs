//! The PostgreSQL [`MigrationDriver`] (feature `postgres`), on
//! `tokio-postgres`.
//!
//! - **Run lock**: a session advisory lock keyed on the history table's
//!   name, so concurrent runners against one database either wait (polling
//!   `pg_try_advisory_lock` up to [`LockWait::Wait`]'s timeout, the default
//!   being 60 s) or are refused at once ([`LockWait::FailFast`]).
//! - **Statements**: each statement of a script is sent on its own, its
//!   text exactly as the engine cut it from the file; a `COPY … FROM STDIN`
//!   statement streams its inline data with the copy-in protocol.
//! - **Transactions**: each script runs in its own transaction together
//!   with its verify queries and its history row, unless it runs without
//!   one; then each statement commits on its own, and a failure after the
//!   first committed statement is reported as partially applied (saying
//!   how many committed; a failed `CREATE INDEX CONCURRENTLY` leaves an
//!   invalid index behind) so the migrator runs the down file.
//! - **Timeouts**: `lock_timeout` and `statement_timeout` are set for every
//!   script (`SET LOCAL` in a transaction, `SET`/`RESET` outside).
//! - **History**: table `atlas_schema_history` by default: one row per
//!   version (unique, as text such as `1.2.3`), and one row per repeatable
//!   migration with no version (unique by name). It is created, or upgraded
//!   from the version-keyed table of earlier Atlas releases, only under the
//!   run lock; reading a database without it finds an empty history and
//!   creates nothing.
//! - **Backups**: `pg_dump --format=custom` streamed into any
//!   [`BackupTarget`]; the connection password goes to `pg_dump` through
//!   `PGPASSWORD`, never on its command line, and never into logs.
//!
//! - **TLS**: give a `rustls::ClientConfig` to
//!   [`PostgresDriverBuilder::with_tls`]; the URL's `sslmode` (`prefer` by
//!   default, `require`, `disable`) then decides as libpq does. Without
//!   it the driver connects in plain text. A binary that ends up with two
//!   rustls crypto providers must install one first (see the crate docs).

pub mod failover;
pub mod pitr;

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atlas_core::backup::{BackupTarget, BackupTargetExt, ObjectKey};
use atlas_core::migration::{
    AppliedMigration, AppliedRepeatable, BackupRecord, FlywayHistoryRow, MigrationDriver,
    MigrationPhase, MigrationStep, Statement, StepError, StepKind, Version,
};
use atlas_core::{Error, Result};
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

mod shared;
mod state_store;
use shared::{BACKEND, db_err, first_host, libpq_env, lock_key, valid_table};
pub use state_store::{PostgresStateStore, PostgresStateStoreBuilder};

/// How a runner behaves when another holds the migration lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Refuse at once with [`Error::Conflict`].
    FailFast,
    /// Wait up to this long, then refuse with [`Error::Conflict`].
    Wait(Duration),
}

impl Default for LockWait {
    /// Wait up to 60 s.
    fn default() -> Self {
        LockWait::Wait(Duration::from_secs(60))
    }
}

/// Builds a [`PostgresDriver`].
#[derive(Clone)]
pub struct PostgresDriverBuilder {
    url: String,
    table: String,
    lock_wait: LockWait,
    tls: Option<rustls::ClientConfig>,
}

impl fmt::Debug for PostgresDriverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDriverBuilder")
            .field("table", &self.table)
            .field("lock_wait", &self.lock_wait)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresDriverBuilder {
    /// Connects over TLS with `config` (default: no TLS). Whether TLS is
    /// required follows the URL's `sslmode`.
    pub fn with_tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Sets the history table (default `atlas_schema_history`): a lowercase
    /// identifier, optionally schema-qualified (`ops.history`).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets how to wait for the run lock (default: wait up to 60 s).
    pub fn with_lock_wait(mut self, lock_wait: LockWait) -> Self {
        self.lock_wait = lock_wait;
        self
    }

    /// Connects.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `url` or `table`) for a bad URL or
    /// table name; [`Error::Transient`] when the server cannot be reached.
    pub async fn connect(self) -> Result<PostgresDriver> {
        let config: tokio_postgres::Config = self.url.parse().map_err(|_| {
            Error::invalid(
                "url",
                "must be a PostgreSQL connection URL or key=value string",
            )
        })?;
        if !valid_table(&self.table) {
            return Err(Error::invalid(
                "table",
                "must be a lowercase identifier [a-z_][a-z0-9_]*, optionally schema.table",
            ));
        }
        if let LockWait::Wait(d) = self.lock_wait
            && d.is_zero()
        {
            return Err(Error::invalid(
                "lock_wait",
                "a wait must be above zero; use FailFast",
            ));
        }
        let connect_err = |e: tokio_postgres::Error| {
            // A refused TLS handshake or bad credentials will not pass by
            // retrying; an unreachable server may.
            if e.as_db_error().is_some() || e.to_string().contains("TLS") {
                Error::backend_with(BACKEND, "connecting", e)
            } else {
                Error::transient_with(BACKEND, "connecting", e)
            }
        };
        let client = match self.tls {
            Some(tls) => {
                let (client, connection) = config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                    .await
                    .map_err(connect_err)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        warn!(error = %e, "postgres connection closed with an error");
                    }
                });
                client
            }
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        warn!(error = %e, "postgres connection closed with an error");
                    }
                });
                client
            }
        };
        let lock_key = lock_key(&self.table);
        info!(table = %self.table, "connected to postgres for migrations");
        Ok(PostgresDriver {
            client: Mutex::new(client),
            config,
            table: self.table,
            lock_wait: self.lock_wait,
            lock_key,
        })
    }
}

/// Row count and content hash of one invariant table, over the columns it
/// had before the migration (so adding a column does not count as a data
/// change, and dropping one fails the check).
#[derive(Debug, PartialEq, Eq)]
struct TableState {
    rows: i64,
    md5: String,
}

async fn invariant_columns(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<String>> {
    if !valid_table(table) {
        return Err(Error::invalid(
            "invariant_tables",
            format!("`{table}` must be a lowercase identifier, optionally schema.table"),
        ));
    }
    let rows = client
        .query(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(|e| {
            db_err(
                &format!("reading the columns of invariant table {table}"),
                e,
            )
        })?;
    Ok(rows
        .iter()
        .map(|r| format!("\"{}\"", r.get::<_, String>(0).replace('"', "\"\"")))
        .collect())
}

async fn table_state(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    columns: &[String],
) -> Result<TableState> {
    let row_expr = format!("ROW({})::text", columns.join(", "));
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg({row_expr}, ',' ORDER BY {row_expr})), '') FROM {table}"
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| db_err(&format!("checking invariant table {table}"), e))?;
    Ok(TableState {
        rows: row.get(0),
        md5: row.get(1),
    })
}

type Invariants = Vec<(String, Vec<String>, TableState)>;

async fn capture_invariants(
    client: &impl tokio_postgres::GenericClient,
    step: &MigrationStep,
) -> Result<Invariants> {
    let mut out = Vec::new();
    for table in &step.invariants {
        let columns = invariant_columns(client, table).await?;
        let state = table_state(client, table, &columns).await?;
        out.push((table.clone(), columns, state));
    }
    Ok(out)
}

async fn check_invariants(
    client: &impl tokio_postgres::GenericClient,
    step: &MigrationStep,
    before: &Invariants,
) -> Result<()> {
    for (table, columns, was) in before {
        let now = table_state(client, table, columns).await?;
        if &now != was {
            return Err(Error::precondition(format!(
                "table invariant broken by {}: {table} had {} rows (md5 {}), now {} (md5 {}); \
                 declare `-- atlas:allow-data-change {table}` if the change is intended",
                step.file, was.rows, was.md5, now.rows, now.md5
            )));
        }
    }
    Ok(())
}

/// Migrates one PostgreSQL database over one connection.
pub struct PostgresDriver {
    client: Mutex<Client>,
    config: tokio_postgres::Config,
    table: String,
    lock_wait: LockWait,
    lock_key: i64,
}

impl fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDriver")
            .field("dbname", &self.config.get_dbname())
            .field("table", &self.table)
            .field("lock_wait", &self.lock_wait)
            .finish_non_exhaustive()
    }
}

/// A connection or a transaction on it: both can start a copy-in.
trait Session: tokio_postgres::GenericClient {
    async fn copy_in_bytes(
        &self,
        sql: &str,
    ) -> Result<tokio_postgres::CopyInSink<Bytes>, tokio_postgres::Error>;
}

impl Session for Client {
    async fn copy_in_bytes(
        &self,
        sql: &str,
    ) -> Result<tokio_postgres::CopyInSink<Bytes>, tokio_postgres::Error> {
        self.copy_in(sql).await
    }
}

impl Session for tokio_postgres::Transaction<'_> {
    async fn copy_in_bytes(
        &self,
        sql: &str,
    ) -> Result<tokio_postgres::CopyInSink<Bytes>, tokio_postgres::Error> {
        self.copy_in(sql).await
    }
}

/// Runs one statement: as a simple query, or, for `COPY … FROM STDIN`
/// with inline data, through the copy-in protocol.
async fn run_statement(
    client: &impl Session,
    step: &MigrationStep,
    statement: &Statement,
) -> Result<()> {
    let what = || format!("running {}:{}", step.file, statement.line);
    match &statement.copy_data {
        None => client
            .batch_execute(&statement.sql)
            .await
            .map_err(|e| db_err(&what(), e)),
        Some(data) => {
            use futures::SinkExt;
            let sink = client
                .copy_in_bytes(&statement.sql)
                .await
                .map_err(|e| db_err(&what(), e))?;
            let mut sink = std::pin::pin!(sink);
            sink.send(Bytes::copy_from_slice(data.as_bytes()))
                .await
                .map_err(|e| db_err(&what(), e))?;
            let rows = sink
                .as_mut()
                .finish()
                .await
                .map_err(|e| db_err(&what(), e))?;
            debug!(file = %step.file, line = statement.line, rows, "copied inline data");
            Ok(())
        }
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

impl PostgresDriver {
    /// A builder for the database at `url` (`postgres://user@host:port/db`
    /// or `host=… dbname=…`).
    pub fn builder(url: impl Into<String>) -> PostgresDriverBuilder {
        PostgresDriverBuilder {
            url: url.into(),
            table: "atlas_schema_history".to_owned(),
            lock_wait: LockWait::default(),
            tls: None,
        }
    }

    /// The history table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The `pg_restore` command that restores a backup file `file` into
    /// this database (no password in it; set `PGPASSWORD` or use a
    /// `.pgpass` file).
    pub fn restore_command(&self, file: &str) -> String {
        let mut conn = Vec::new();
        if let Some(host) = first_host(&self.config) {
            conn.push(format!("host={host}"));
        }
        if let Some(port) = self.config.get_ports().first() {
            conn.push(format!("port={port}"));
        }
        if let Some(user) = self.config.get_user() {
            conn.push(format!("user={user}"));
        }
        if let Some(db) = self.config.get_dbname() {
            conn.push(format!("dbname={db}"));
        }
        format!(
            "pg_restore --clean --if-exists --no-owner --single-transaction --dbname '{}' {file}",
            conn.join(" ")
        )
    }

    async fn try_lock(&self, client: &Client) -> Result<bool> {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.lock_key])
            .await
            .map_err(|e| db_err("taking the migration lock", e))?;
        Ok(row.get::<_, bool>(0))
    }

    async fn insert_row(
        client: &impl tokio_postgres::GenericClient,
        table: &str,
        row: &AppliedMigration,
    ) -> std::result::Result<(), Error> {
        let sql = format!(
            "INSERT INTO {table} (version, name, checksum, phase, applied_at, duration_ms, success, baseline) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, \
             phase = EXCLUDED.phase, applied_at = EXCLUDED.applied_at, duration_ms = EXCLUDED.duration_ms, \
             success = EXCLUDED.success, baseline = EXCLUDED.baseline"
        );
        let duration_ms = i64::try_from(row.duration.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(
                &sql,
                &[
                    &row.version.dotted(),
                    &row.name,
                    &row.checksum,
                    &row.phase.as_str(),
                    &row.applied_at,
                    &duration_ms,
                    &row.success,
                    &row.baseline,
                ],
            )
            .await
            .map_err(|e| db_err("writing the history", e))?;
        Ok(())
    }

    async fn insert_repeatable(
        client: &impl tokio_postgres::GenericClient,
        table: &str,
        row: &AppliedRepeatable,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {table} (version, name, checksum, phase, applied_at, duration_ms, success, baseline) \
             VALUES (NULL, $1, $2, 'expand', $3, $4, $5, false) \
             ON CONFLICT (name) WHERE version IS NULL DO UPDATE SET checksum = EXCLUDED.checksum, \
             applied_at = EXCLUDED.applied_at, duration_ms = EXCLUDED.duration_ms, success = EXCLUDED.success"
        );
        let duration_ms = i64::try_from(row.duration.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(
                &sql,
                &[
                    &row.name,
                    &row.checksum,
                    &row.applied_at,
                    &duration_ms,
                    &row.success,
                ],
            )
            .await
            .map_err(|e| db_err("writing the history", e))?;
        Ok(())
    }

    async fn verify(
        client: &impl tokio_postgres::GenericClient,
        step: &MigrationStep,
    ) -> Result<()> {
        for query in &step.verify {
            let row = client
                .query_opt(query.as_str(), &[])
                .await
                .map_err(|e| db_err(&format!("verify query `{query}`"), e))?;
            let ok = row.and_then(|r| r.try_get::<_, Option<bool>>(0).ok().flatten());
            if ok != Some(true) {
                return Err(Error::precondition(format!(
                    "verify query of {} did not return true: {query}",
                    step.file
                )));
            }
            debug!(file = %step.file, %query, "verify query passed");
        }
        Ok(())
    }

    async fn record(
        &self,
        client: &impl tokio_postgres::GenericClient,
        step: &MigrationStep,
        took: Duration,
    ) -> Result<()> {
        match step.kind {
            StepKind::Up => Self::insert_row(client, &self.table, &step.history_row(took)).await,
            StepKind::Repeatable => {
                Self::insert_repeatable(client, &self.table, &step.repeatable_row(took)).await
            }
            StepKind::Down => {
                let sql = format!("DELETE FROM {} WHERE version = $1", self.table);
                client
                    .execute(&sql, &[&step.version.dotted()])
                    .await
                    .map_err(|e| db_err("writing the history", e))?;
                Ok(())
            }
        }
    }

    fn timeouts(step: &MigrationStep, local: bool) -> String {
        let scope = if local { "SET LOCAL" } else { "SET" };
        let mut sql = String::new();
        if let Some(t) = step.lock_timeout {
            sql.push_str(&format!("{scope} lock_timeout = '{}ms';", millis(t)));
        }
        if let Some(t) = step.statement_timeout {
            sql.push_str(&format!("{scope} statement_timeout = '{}ms';", millis(t)));
        }
        sql
    }

    async fn apply_in_transaction(
        &self,
        client: &mut Client,
        step: &MigrationStep,
    ) -> Result<Duration> {
        let started = Instant::now();
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_err("starting the transaction", e))?;
        let timeouts = Self::timeouts(step, true);
        if !timeouts.is_empty() {
            tx.batch_execute(&timeouts)
                .await
                .map_err(|e| db_err("setting timeouts", e))?;
        }
        let invariants = capture_invariants(&tx, step).await?;
        for statement in &step.statements {
            run_statement(&tx, step, statement).await?;
        }
        Self::verify(&tx, step).await?;
        check_invariants(&tx, step, &invariants).await?;
        let took = started.elapsed();
        self.record(&tx, step, took).await?;
        tx.commit()
            .await
            .map_err(|e| db_err(&format!("committing {}", step.file), e))?;
        Ok(took)
    }

    /// Runs the statements one by one, each committing on its own; on
    /// failure, says how many committed before it (none: nothing changed).
    async fn apply_outside_transaction(
        &self,
        client: &Client,
        step: &MigrationStep,
    ) -> Result<Duration, StepError> {
        let started = Instant::now();
        let invariants = capture_invariants(client, step)
            .await
            .map_err(StepError::rolled_back)?;
        let total = step.statements.len();
        for (done, statement) in step.statements.iter().enumerate() {
            if let Err(e) = run_statement(client, step, statement).await {
                if done == 0 {
                    return Err(StepError::rolled_back(e));
                }
                return Err(StepError::partial(Error::backend_with(
                    BACKEND,
                    format!(
                        "{} of {total} statements of {} committed before the statement at line {} failed",
                        done, step.file, statement.line
                    ),
                    e,
                )));
            }
        }
        let after = async {
            Self::verify(client, step).await?;
            check_invariants(client, step, &invariants).await?;
            let took = started.elapsed();
            self.record(client, step, took).await?;
            Ok(took)
        };
        after.await.map_err(|e: Error| {
            if total == 0 {
                StepError::rolled_back(e)
            } else {
                StepError::partial(e)
            }
        })
    }

    /// Whether the history table exists, so that reading it never has to
    /// create it.
    async fn history_exists(&self, client: &Client) -> Result<bool> {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table])
            .await
            .map_err(|e| db_err("looking for the history table", e))?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl MigrationDriver for PostgresDriver {
    #[tracing::instrument(skip(self), fields(table = %self.table))]
    async fn lock(&self) -> Result<()> {
        let client = self.client.lock().await;
        let deadline = match self.lock_wait {
            LockWait::FailFast => None,
            LockWait::Wait(d) => Some((tokio::time::Instant::now() + d, d)),
        };
        loop {
            if self.try_lock(&client).await? {
                debug!("migration lock taken");
                return Ok(());
            }
            match deadline {
                None => {
                    return Err(Error::conflict(format!(
                        "another runner holds the migration lock of {}",
                        self.table
                    )));
                }
                Some((at, d)) if tokio::time::Instant::now() >= at => {
                    return Err(Error::conflict(format!(
                        "another runner held the migration lock of {} for more than {}",
                        self.table,
                        humantime_secs(d)
                    )));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn unlock(&self) -> Result<()> {
        let client = self.client.lock().await;
        client
            .query_one("SELECT pg_advisory_unlock($1)", &[&self.lock_key])
            .await
            .map_err(|e| db_err("releasing the migration lock", e))?;
        Ok(())
    }

    /// Creates the table, or upgrades the table of earlier Atlas releases
    /// (a bigint or text version primary key) to text versions that may be
    /// NULL for repeatable migrations. The engine calls it under the run
    /// lock only, so concurrent runners never race on `CREATE TABLE`.
    async fn ensure_history(&self) -> Result<()> {
        let client = self.client.lock().await;
        let table = &self.table;
        let short = table.rsplit('.').next().unwrap_or(table);
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
             version text UNIQUE, name text NOT NULL, checksum text NOT NULL, \
             phase text NOT NULL, applied_at timestamptz NOT NULL, duration_ms bigint NOT NULL, \
             success boolean NOT NULL, baseline boolean NOT NULL DEFAULT false)"
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| db_err("creating the history table", e))?;
        let primary_key: Option<String> = client
            .query_opt(
                "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p'",
                &[table],
            )
            .await
            .map_err(|e| db_err("reading the history table's constraints", e))?
            .map(|r| r.get(0));
        if let Some(key) = primary_key {
            info!(%table, "upgrading the history table: text versions, rows for repeatable migrations");
            client
                .batch_execute(&format!(
                    "ALTER TABLE {table} DROP CONSTRAINT \"{}\", \
                     ALTER COLUMN version TYPE text USING version::text, \
                     ALTER COLUMN version DROP NOT NULL, ADD UNIQUE (version)",
                    key.replace('"', "\"\"")
                ))
                .await
                .map_err(|e| db_err("upgrading the history table", e))?;
        }
        client
            .batch_execute(&format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {short}_repeatable ON {table} (name) WHERE version IS NULL"
            ))
            .await
            .map_err(|e| db_err("creating the history table's index", e))?;
        Ok(())
    }

    async fn history(&self) -> Result<Vec<AppliedMigration>> {
        let client = self.client.lock().await;
        if !self.history_exists(&client).await? {
            debug!(table = %self.table, "no history table yet: nothing applied");
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT version::text, name, checksum, phase, applied_at, duration_ms, success, baseline \
             FROM {} WHERE version IS NOT NULL",
            self.table
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| db_err("reading the history", e))?;
        let mut out = rows
            .iter()
            .map(|r| {
                let version: String = r.get(0);
                let phase: String = r.get(3);
                let duration_ms: i64 = r.get(5);
                Ok(AppliedMigration {
                    version: version.parse().map_err(|_| {
                        Error::backend(
                            BACKEND,
                            format!("version `{version}` in the history is not a version"),
                        )
                    })?,
                    name: r.get(1),
                    checksum: r.get(2),
                    phase: MigrationPhase::parse(&phase, &format!("{}.phase", self.table))?,
                    applied_at: r.get(4),
                    duration: Duration::from_millis(u64::try_from(duration_ms).unwrap_or(0)),
                    success: r.get(6),
                    baseline: r.get(7),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.version);
        Ok(out)
    }

    #[tracing::instrument(skip(self, step), fields(file = %step.file, transactional = step.transactional()))]
    async fn apply(&self, step: &MigrationStep) -> Result<Duration, StepError> {
        let mut client = self.client.lock().await;
        if step.transactional() {
            return self
                .apply_in_transaction(&mut client, step)
                .await
                .map_err(StepError::rolled_back);
        }
        let timeouts = Self::timeouts(step, false);
        if !timeouts.is_empty() {
            client
                .batch_execute(&timeouts)
                .await
                .map_err(|e| StepError::rolled_back(db_err("setting timeouts", e)))?;
        }
        let result = self.apply_outside_transaction(&client, step).await;
        if let Err(e) = client
            .batch_execute("RESET lock_timeout; RESET statement_timeout;")
            .await
        {
            warn!(error = %e, "resetting timeouts failed");
        }
        result
    }

    async fn repeatable_history(&self) -> Result<Vec<AppliedRepeatable>> {
        let client = self.client.lock().await;
        if !self.history_exists(&client).await? {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT name, checksum, applied_at, duration_ms, success FROM {} \
             WHERE version IS NULL ORDER BY name",
            self.table
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| db_err("reading the history", e))?;
        Ok(rows
            .iter()
            .map(|r| AppliedRepeatable {
                name: r.get(0),
                checksum: r.get(1),
                applied_at: r.get(2),
                duration: Duration::from_millis(u64::try_from(r.get::<_, i64>(3)).unwrap_or(0)),
                success: r.get(4),
            })
            .collect())
    }

    async fn put_repeatable(&self, row: &AppliedRepeatable) -> Result<()> {
        let client = self.client.lock().await;
        Self::insert_repeatable(&*client, &self.table, row).await
    }

    async fn delete_repeatable(&self, name: &str) -> Result<()> {
        let client = self.client.lock().await;
        let sql = format!(
            "DELETE FROM {} WHERE version IS NULL AND name = $1",
            self.table
        );
        client
            .execute(&sql, &[&name])
            .await
            .map_err(|e| db_err("writing the history", e))?;
        Ok(())
    }

    async fn put_history(&self, row: &AppliedMigration) -> Result<()> {
        let client = self.client.lock().await;
        Self::insert_row(&*client, &self.table, row).await
    }

    async fn delete_history(&self, version: Version) -> Result<()> {
        let client = self.client.lock().await;
        let sql = format!("DELETE FROM {} WHERE version = $1", self.table);
        client
            .execute(&sql, &[&version.dotted()])
            .await
            .map_err(|e| db_err("writing the history", e))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn flyway_history(&self, table: &str) -> Result<Vec<FlywayHistoryRow>> {
        if !valid_table(table) {
            return Err(Error::invalid(
                "flyway table",
                "must be a lowercase identifier [a-z_][a-z0-9_]*, optionally schema.table",
            ));
        }
        let client = self.client.lock().await;
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(|e| db_err("looking for the Flyway history table", e))?
            .get(0);
        if !exists {
            return Err(Error::not_found(format!("Flyway history table {table}")));
        }
        let sql = format!(
            "SELECT installed_rank, version, description, type, script, checksum, installed_by, \
             installed_on::timestamptz, execution_time::bigint, success FROM {table} ORDER BY installed_rank"
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| db_err("reading the Flyway history", e))?;
        let out: Vec<FlywayHistoryRow> = rows
            .iter()
            .map(|r| FlywayHistoryRow {
                installed_rank: r.get(0),
                version: r.get(1),
                description: r.get(2),
                kind: r.get(3),
                script: r.get(4),
                checksum: r.get(5),
                installed_by: r.get(6),
                installed_on: r.get(7),
                execution_time_ms: r.get(8),
                success: r.get(9),
            })
            .collect();
        info!(rows = out.len(), %table, "read the Flyway history");
        Ok(out)
    }

    #[tracing::instrument(skip(self, target), fields(key = %key))]
    async fn backup(&self, target: &dyn BackupTarget, key: &ObjectKey) -> Result<BackupRecord> {
        use std::process::Stdio;
        use tokio::io::AsyncReadExt;
        let mut cmd = tokio::process::Command::new("pg_dump");
        cmd.arg("--format=custom").arg("--no-password");
        libpq_env(&self.config, &mut cmd);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::backend_with("pg_dump", "starting pg_dump (is it on PATH?)", e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::backend("pg_dump", "no stdout"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::backend("pg_dump", "no stderr"))?;
        let body = futures::stream::unfold(stdout, |mut out| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match out.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), out))
                }
                Err(e) => Some((
                    Err(Error::backend_with("pg_dump", "reading its output", e)),
                    out,
                )),
            }
        });
        let put = target.put(key, Box::pin(body)).await;
        let mut err_text = String::new();
        let _ = stderr.read_to_string(&mut err_text).await;
        let status = child
            .wait()
            .await
            .map_err(|e| Error::backend_with("pg_dump", "waiting for pg_dump", e))?;
        if !status.success() {
            let _ = target.delete(key).await;
            return Err(Error::backend(
                "pg_dump",
                format!("exited with {status}: {}", err_text.trim()),
            ));
        }
        let put = put?;
        info!(size = put.size, "pg_dump backup stored");
        Ok(BackupRecord {
            key: key.clone(),
            size: put.size,
            restore_command: self.restore_command("<FILE>"),
        })
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
