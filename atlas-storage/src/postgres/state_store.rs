//! [`PostgresStateStore`]: rollout state, failover state and the
//! single-driver lease in PostgreSQL.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use atlas_core::failover::{FailoverState, FailoverStore};
use atlas_core::{Error, Lease, Result, RolloutState, ServiceName, StateStore, Versioned};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};
use tracing::Instrument;

use super::shared::{BACKEND, db_err, valid_table};

/// The default state table; the lease table is named after it.
const DEFAULT_TABLE: &str = "atlas_state";

/// Appended to the state table's name to name the lease table.
const LEASE_SUFFIX: &str = "_lease";

/// Appended to the state table's name to name the failover state table.
const FAILOVER_SUFFIX: &str = "_failover";

/// Builds a [`PostgresStateStore`].
#[derive(Clone)]
pub struct PostgresStateStoreBuilder {
    url: String,
    table: String,
    tls: Option<rustls::ClientConfig>,
}

impl fmt::Debug for PostgresStateStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("PostgresStateStoreBuilder")
            .field("table", &self.table)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresStateStoreBuilder {
    /// Sets the state table (default `atlas_state`): a lowercase
    /// identifier of at most 54 characters (the lease and failover tables
    /// add `_lease` and `_failover`),
    /// optionally schema-qualified (`ops.rollouts`; the schema must exist).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Connects over TLS with `config` (default: no TLS). Whether TLS is
    /// required follows the URL's `sslmode`.
    pub fn with_tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Connects and creates the tables if they are missing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `url` or `table`) for a bad URL or
    /// table name; [`Error::Transient`] when the server cannot be reached;
    /// [`Error::Backend`] when the tables cannot be created.
    pub async fn connect(self) -> Result<PostgresStateStore> {
        let config: tokio_postgres::Config = self.url.parse().map_err(|_| {
            Error::invalid(
                "url",
                "must be a PostgreSQL connection URL or key=value string",
            )
        })?;
        let name = self.table.rsplit('.').next().unwrap_or_default();
        if !valid_table(&self.table) || name.len() + FAILOVER_SUFFIX.len() > 63 {
            return Err(Error::invalid(
                "table",
                "must be a lowercase identifier [a-z_][a-z0-9_]* of at most 54 characters, \
                 optionally schema.table",
            ));
        }
        let span = tracing::info_span!("postgres_state.connect", table = %self.table);
        async {
            let connector = Connector {
                config,
                tls: self.tls,
            };
            let mut client = connector.open().await?;
            let lease_table = format!("{}{LEASE_SUFFIX}", self.table);
            let failover_table = format!("{}{FAILOVER_SUFFIX}", self.table);
            create_tables(&mut client, &self.table, &lease_table, &failover_table).await?;
            tracing::info!("connected to postgres for rollout state");
            Ok(PostgresStateStore {
                client: Mutex::new(client),
                connector,
                table: self.table,
                lease_table,
                failover_table,
                held: SyncMutex::new(HashMap::new()),
                suspect: AtomicBool::new(false),
            })
        }
        .instrument(span)
        .await
    }
}

/// Creates the tables if missing, in one transaction under an advisory
/// lock keyed on the state table's name: `CREATE TABLE IF NOT EXISTS` run
/// by two sessions at once can fail on the catalog's unique index.
async fn create_tables(
    client: &mut Client,
    table: &str,
    lease_table: &str,
    failover_table: &str,
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_error("starting the table setup", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(table)])
        .await
        .map_err(|e| db_error("taking the table setup lock", e))?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             service text PRIMARY KEY,
             version bigint NOT NULL CHECK (version > 0),
             state jsonb NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE IF NOT EXISTS {lease_table} (
             service text PRIMARY KEY,
             holder text,
             token bigint NOT NULL,
             expires_at timestamptz
         );
         CREATE TABLE IF NOT EXISTS {failover_table} (
             service text PRIMARY KEY,
             version bigint NOT NULL CHECK (version > 0),
             state jsonb NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(|e| {
        db_error(
            &format!("creating tables {table}, {lease_table} and {failover_table}"),
            e,
        )
    })?;
    tx.commit()
        .await
        .map_err(|e| db_error("committing the table setup", e))
}

/// A PostgreSQL error as an Atlas error. Transient when retrying may pass:
/// the connection is gone, the server is shutting down or starting
/// (`57P01`–`57P03`, class `08`), out of connections (`53300`), or the
/// statement lost a serialisation race or a deadlock (`40001`, `40P01`).
fn db_error(what: &str, e: tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        return db_err(what, e);
    };
    let code = db.code().code();
    let transient = code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
        );
    if transient {
        let message = format!("{what}: {} ({code})", db.message());
        Error::transient_with(BACKEND, message, e)
    } else {
        db_err(what, e)
    }
}

/// A stable advisory lock key for the state table `table` (FNV-1a over a
/// fixed namespace), distinct from the migration driver's keys.
fn lock_key(table: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "atlas-state:".bytes().chain(table.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// What is needed to open (and re-open) the connection.
struct Connector {
    config: tokio_postgres::Config,
    tls: Option<rustls::ClientConfig>,
}

impl Connector {
    async fn open(&self) -> Result<Client> {
        let connect_err = |e: tokio_postgres::Error| {
            // A refused TLS handshake or bad credentials will not pass by
            // retrying; an unreachable server may.
            if e.as_db_error().is_some() || e.to_string().contains("TLS") {
                Error::backend_with(BACKEND, "connecting", e)
            } else {
                Error::transient_with(BACKEND, "connecting", e)
            }
        };
        let (client, connection) = match &self.tls {
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))
                    .await
                    .map_err(connect_err)?;
                (client, tokio::spawn(connection))
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(connect_err)?;
                (client, tokio::spawn(connection))
            }
        };
        tokio::spawn(async move {
            if let Ok(Err(e)) = connection.await {
                tracing::warn!(error = %e, "postgres state connection closed with an error");
            }
        });
        Ok(client)
    }
}

/// The lease this store instance holds on a service, which fences its
/// writes to that service's state.
#[derive(Debug, Clone)]
struct Held {
    holder: String,
    token: i64,
}

/// Rollout state and the single-driver lease in PostgreSQL, so drivers on
/// several hosts coordinate through a database they already run.
///
/// Three tables, created on connect if missing (under an advisory lock, so
/// stores connecting at once do not race on the catalog):
///
/// | table | one row per service |
/// |---|---|
/// | `{table}` (default `atlas_state`) | `service` (key), `version` (bigint, +1 per write), `state` (the rollout state as `jsonb`), `updated_at` |
/// | `{table}_lease` | `service` (key), `holder` (null once released), `token` (bigint), `expires_at` |
/// | `{table}_failover` | `service` (key), `version`, `state` (the [`FailoverState`] as `jsonb`), `updated_at` |
///
/// - **Compare-and-swap**: every write is one statement that names the
///   expected version (`UPDATE … WHERE version = $expected`, or an
///   `INSERT … ON CONFLICT DO NOTHING` for the first write); no row changed
///   is a [`Conflict`](Error::Conflict).
/// - **Lease**: granted by one `INSERT … ON CONFLICT DO UPDATE` that only
///   updates a row that is free, expired (by the database's clock, so hosts
///   need no synchronised clocks) or held by the same holder; two hosts
///   racing for it cannot both win.
/// - **Fencing**: every grant increases the row's token (it never goes back,
///   since released rows are kept). Renew and release name the token, so a
///   holder whose lease was taken over gets a `Conflict`. While this store
///   instance holds a service's lease, its writes to that service's state
///   also check the token in the same statement (locking the lease row, so
///   a takeover waits for a write in flight and the write after it fails):
///   a holder that was taken over can never overwrite the new holder's
///   state. [`PostgresStateStore::compare_and_swap_fenced`] does the same
///   for a lease passed explicitly.
/// - **Connection**: one connection, replaced by a new one before the next
///   statement once a statement failed transiently (the server closed it,
///   is shutting down, or a serialisation race). Those failures are
///   [`Transient`](Error::Transient), so a caller that retries (the engine
///   does) sees at most one; other SQL errors are [`Backend`](Error::Backend).
///
/// ```no_run
/// # async fn demo() -> atlas_core::Result<()> {
/// use std::time::Duration;
/// use atlas_core::{ServiceName, StateStore};
/// use atlas_storage::postgres::PostgresStateStore;
///
/// let store = PostgresStateStore::builder("postgres://atlas@db.internal/ops")
///     .with_table("atlas_state")
///     .connect()
///     .await?;
/// let service = ServiceName::new("checkout")?;
/// let lease = store.acquire_lease(&service, "host-a", Duration::from_secs(15)).await?;
/// // … drive the rollout, renewing the lease every few seconds …
/// store.release_lease(&lease).await?;
/// # Ok(())
/// # }
/// ```
pub struct PostgresStateStore {
    client: Mutex<Client>,
    connector: Connector,
    table: String,
    lease_table: String,
    failover_table: String,
    /// Service → the lease this instance holds on it.
    held: SyncMutex<HashMap<ServiceName, Held>>,
    /// A statement failed in a way that may have left the connection
    /// unusable: open a new one before the next statement. The client only
    /// reports itself closed once its connection task has ended, which may
    /// be after the caller has seen the error.
    suspect: AtomicBool,
}

impl fmt::Debug for PostgresStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStateStore")
            .field("dbname", &self.connector.config.get_dbname())
            .field("table", &self.table)
            .field("lease_table", &self.lease_table)
            .field("failover_table", &self.failover_table)
            .finish_non_exhaustive()
    }
}

/// Which state a row holds: each kind has its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// [`RolloutState`], in `{table}`.
    Rollout,
    /// [`FailoverState`], in `{table}_failover`.
    Failover,
}

impl Stored {
    /// How messages name it.
    fn what(self) -> &'static str {
        match self {
            Stored::Rollout => "state",
            Stored::Failover => "failover state",
        }
    }
}

/// `state` as the JSON stored in a `jsonb` column: through serde, so
/// fields added to the state types are stored without a schema change.
fn to_json(service: &ServiceName, state: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(state)
        .map_err(|e| Error::backend_with(BACKEND, format!("serialising the state of {service}"), e))
}

/// A lease token as stored (bigint).
fn db_token(lease: &Lease) -> Result<i64> {
    i64::try_from(lease.token).map_err(|_| {
        Error::conflict(format!(
            "lease {} on {} was never granted by a PostgreSQL store",
            lease.token, lease.service
        ))
    })
}

/// A lease ttl in seconds, as the SQL computes expiry times in.
fn ttl_seconds(ttl: Duration) -> Result<f64> {
    if ttl.is_zero() {
        return Err(Error::invalid("ttl", "must be longer than zero"));
    }
    if ttl > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(Error::invalid("ttl", "must be at most 100 years"));
    }
    Ok(ttl.as_secs_f64())
}

impl PostgresStateStore {
    /// A builder for a store on the database at `url` (a PostgreSQL URL or
    /// key=value string).
    pub fn builder(url: impl Into<String>) -> PostgresStateStoreBuilder {
        PostgresStateStoreBuilder {
            url: url.into(),
            table: DEFAULT_TABLE.to_owned(),
            tls: None,
        }
    }

    /// The state table's name (the lease table adds `_lease`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The connection, re-opened first if the server closed it.
    async fn client(&self) -> Result<MutexGuard<'_, Client>> {
        let mut client = self.client.lock().await;
        if self.suspect.swap(false, Ordering::SeqCst) || client.is_closed() {
            tracing::warn!("postgres state connection failed; reconnecting");
            match self.connector.open().await {
                Ok(fresh) => *client = fresh,
                Err(e) => {
                    self.suspect.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(client)
    }

    /// `e` as an Atlas error; a transient one marks the connection for
    /// replacement.
    fn failed(&self, what: &str, e: tokio_postgres::Error) -> Error {
        let err = db_error(what, e);
        if err.is_transient() {
            self.suspect.store(true, Ordering::SeqCst);
        }
        err
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceName, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Like [`compare_and_swap`](StateStore::compare_and_swap), and also
    /// only if `lease` is still the service's current grant (same holder,
    /// same token), checked in the same statement. A lease taken over by
    /// another holder is a [`Conflict`](Error::Conflict), and nothing is
    /// written.
    ///
    /// # Errors
    /// [`Error::Conflict`] for a stale `expected` or a lost lease;
    /// [`Error::InvalidInput`] if `lease` is for another service.
    pub async fn compare_and_swap_fenced(
        &self,
        lease: &Lease,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        if &lease.service != service {
            return Err(Error::invalid(
                "lease",
                format!("is on {}, not on {service}", lease.service),
            ));
        }
        let fence = Held {
            holder: lease.holder.clone(),
            token: db_token(lease)?,
        };
        self.write(
            Stored::Rollout,
            service,
            expected,
            &to_json(service, state)?,
            Some(&fence),
        )
        .await
    }

    /// The `kind` state of `service` and its version, if stored.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        kind: Stored,
        service: &ServiceName,
    ) -> Result<Option<Versioned<T>>> {
        let table = self.table_of(kind);
        let what = kind.what();
        let span = tracing::debug_span!("postgres_state.load", %service, table);
        async {
            let row = self
                .client()
                .await?
                .query_opt(
                    &format!("SELECT version, state::text FROM {table} WHERE service = $1"),
                    &[&service.as_str()],
                )
                .await
                .map_err(|e| self.failed(&format!("reading the {what} of {service}"), e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let version: i64 = row.get(0);
            let json: String = row.get(1);
            let value = serde_json::from_str(&json).map_err(|e| {
                Error::backend_with(
                    BACKEND,
                    format!("{table}: the {what} of {service} does not read as one"),
                    e,
                )
            })?;
            let version = u64::try_from(version).map_err(|_| {
                Error::backend(BACKEND, format!("{table}: negative version {version}"))
            })?;
            Ok(Some(Versioned { version, value }))
        }
        .instrument(span)
        .await
    }

    /// The table `kind` of state is kept in.
    fn table_of(&self, kind: Stored) -> &str {
        match kind {
            Stored::Rollout => &self.table,
            Stored::Failover => &self.failover_table,
        }
    }

    /// Writes `json` as the `kind` state of `service` if the stored
    /// version is `expected`, and, with a `fence`, only while it holds.
    async fn write(
        &self,
        kind: Stored,
        service: &ServiceName,
        expected: Option<u64>,
        json: &str,
        fence: Option<&Held>,
    ) -> Result<u64> {
        let table = self.table_of(kind);
        let what = kind.what();
        let span = tracing::debug_span!(
            "postgres_state.compare_and_swap",
            %service,
            table,
            ?expected,
            fenced_token = fence.map(|f| f.token)
        );
        async {
            let expected_db = match expected {
                Some(v) => Some(i64::try_from(v).map_err(|_| {
                    Error::conflict(format!(
                        "{what} of {service}: expected version {v} was never stored"
                    ))
                })?),
                None => None,
            };
            let (holder, token) = match fence {
                Some(f) => (Some(f.holder.as_str()), Some(f.token)),
                None => (None, None),
            };
            let leases = &self.lease_table;
            // The fence locks the lease row FOR SHARE, so a takeover
            // (an UPDATE of that row) waits for this write, and a write
            // after a takeover sees the new token and changes nothing.
            let fenced = format!(
                "($3::text IS NULL OR EXISTS (SELECT 1 FROM {leases} \
                 WHERE service = $1 AND holder = $3 AND token = $4 FOR SHARE))"
            );
            let client = self.client().await?;
            let row = match expected_db {
                None => {
                    client
                        .query_opt(
                            &format!(
                                "INSERT INTO {table} (service, version, state) \
                                 SELECT $1, 1, $2::text::jsonb WHERE {fenced} \
                                 ON CONFLICT (service) DO NOTHING RETURNING version"
                            ),
                            &[&service.as_str(), &json, &holder, &token],
                        )
                        .await
                }
                Some(v) => {
                    client
                        .query_opt(
                            &format!(
                                "UPDATE {table} SET version = version + 1, \
                                 state = $2::text::jsonb, updated_at = now() \
                                 WHERE service = $1 AND version = $5 AND {fenced} \
                                 RETURNING version"
                            ),
                            &[&service.as_str(), &json, &holder, &token, &v],
                        )
                        .await
                }
            }
            .map_err(|e| self.failed(&format!("writing the {what} of {service}"), e))?;
            if let Some(row) = row {
                let version: i64 = row.get(0);
                tracing::debug!(version, "{what} written");
                return u64::try_from(version).map_err(|_| {
                    Error::backend(BACKEND, format!("{table}: negative version {version}"))
                });
            }
            // Nothing changed: say why, for the operator.
            let why = match fence {
                Some(f) if !self.fence_holds(&client, service, f).await? => format!(
                    "the lease on {service} granted to {:?} with token {} was taken over; \
                     its holder must not write",
                    f.holder, f.token
                ),
                _ => {
                    let stored: Option<i64> = client
                        .query_opt(
                            &format!("SELECT version FROM {table} WHERE service = $1"),
                            &[&service.as_str()],
                        )
                        .await
                        .map_err(|e| self.failed(&format!("reading the {what} of {service}"), e))?
                        .map(|r| r.get(0));
                    format!(
                        "{what} of {service} is at version {}, not at {}",
                        stored.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                        expected.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                    )
                }
            };
            tracing::info!(reason = %why, "compare-and-swap refused");
            Err(Error::conflict(why))
        }
        .instrument(span)
        .await
    }

    /// Whether `fence` is still the current grant on `service`.
    async fn fence_holds(
        &self,
        client: &Client,
        service: &ServiceName,
        fence: &Held,
    ) -> Result<bool> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {} WHERE service = $1 AND holder = $2 AND token = $3",
                    self.lease_table
                ),
                &[&service.as_str(), &fence.holder, &fence.token],
            )
            .await
            .map_err(|e| self.failed(&format!("reading the lease on {service}"), e))?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl StateStore for PostgresStateStore {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        self.read(Stored::Rollout, service).await
    }

    /// Writes `state` if the stored version is `expected`; while this
    /// instance holds the service's lease, only if that lease has not been
    /// taken over (see [`PostgresStateStore`]).
    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        let fence = self.held().get(service).cloned();
        self.write(
            Stored::Rollout,
            service,
            expected,
            &to_json(service, state)?,
            fence.as_ref(),
        )
        .await
    }

    /// Grants the lease with a token larger than every earlier grant on the
    /// service, if it is free, expired (by the database's clock) or held by
    /// `holder` already.
    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        let span = tracing::info_span!("postgres_state.acquire_lease", %service, holder, ?ttl);
        async {
            if holder.is_empty() {
                return Err(Error::invalid("holder", "must not be empty"));
            }
            let secs = ttl_seconds(ttl)?;
            let leases = &self.lease_table;
            let client = self.client().await?;
            let granted = client
                .query_opt(
                    &format!(
                        "INSERT INTO {leases} AS l (service, holder, token, expires_at) \
                         VALUES ($1, $2, 1, now() + make_interval(secs => $3)) \
                         ON CONFLICT (service) DO UPDATE \
                         SET holder = EXCLUDED.holder, token = l.token + 1, \
                             expires_at = EXCLUDED.expires_at \
                         WHERE l.holder IS NULL OR l.holder = EXCLUDED.holder \
                            OR l.expires_at <= now() \
                         RETURNING token"
                    ),
                    &[&service.as_str(), &holder, &secs],
                )
                .await
                .map_err(|e| self.failed(&format!("taking the lease on {service}"), e))?;
            if let Some(row) = granted {
                let token: i64 = row.get(0);
                let token = u64::try_from(token).map_err(|_| {
                    Error::backend(BACKEND, format!("{leases}: negative token {token}"))
                })?;
                self.held().insert(
                    service.clone(),
                    Held {
                        holder: holder.to_owned(),
                        token: row.get(0),
                    },
                );
                tracing::info!(token, "lease acquired");
                return Ok(Lease {
                    service: service.clone(),
                    holder: holder.to_owned(),
                    token,
                    ttl,
                });
            }
            let current = client
                .query_opt(
                    &format!(
                        "SELECT holder, GREATEST(0, EXTRACT(EPOCH FROM expires_at - now()))::float8 \
                         FROM {leases} WHERE service = $1"
                    ),
                    &[&service.as_str()],
                )
                .await
                .map_err(|e| self.failed(&format!("reading the lease on {service}"), e))?;
            let why = match current {
                Some(row) => {
                    let by: Option<String> = row.get(0);
                    let left: Option<f64> = row.get(1);
                    format!(
                        "lease on {service} is held by {} (live for {:.1}s more unless renewed)",
                        by.as_deref().unwrap_or("nobody any more; try again"),
                        left.unwrap_or(0.0)
                    )
                }
                None => format!("lease on {service} was just released; try again"),
            };
            tracing::info!(reason = %why, "lease not acquired");
            Err(Error::conflict(why))
        }
        .instrument(span)
        .await
    }

    /// Extends the lease by its ttl from now, if it is still the current
    /// grant (even when it expired meanwhile and nobody took it).
    async fn renew_lease(&self, lease: &Lease) -> Result<()> {
        let span = tracing::debug_span!(
            "postgres_state.renew_lease",
            service = %lease.service,
            holder = %lease.holder,
            token = lease.token
        );
        async {
            let secs = ttl_seconds(lease.ttl)?;
            let token = db_token(lease)?;
            let renewed = self
                .client()
                .await?
                .execute(
                    &format!(
                        "UPDATE {} SET expires_at = now() + make_interval(secs => $4) \
                         WHERE service = $1 AND holder = $2 AND token = $3",
                        self.lease_table
                    ),
                    &[&lease.service.as_str(), &lease.holder, &token, &secs],
                )
                .await
                .map_err(|e| self.failed(&format!("renewing the lease on {}", lease.service), e))?;
            if renewed == 1 {
                tracing::trace!("lease renewed");
                return Ok(());
            }
            tracing::warn!("lease to renew was taken over or released");
            Err(Error::conflict(format!(
                "lease {} on {} is no longer held by {}",
                lease.token, lease.service, lease.holder
            )))
        }
        .instrument(span)
        .await
    }

    /// Frees the lease if it is still the current grant; the row (and its
    /// token) stays, so later grants get larger tokens.
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let span = tracing::info_span!(
            "postgres_state.release_lease",
            service = %lease.service,
            holder = %lease.holder,
            token = lease.token
        );
        async {
            // A token beyond bigint was never granted here: nothing to free.
            let Ok(token) = i64::try_from(lease.token) else {
                return Ok(());
            };
            {
                let mut held = self.held();
                if held
                    .get(&lease.service)
                    .is_some_and(|h| h.holder == lease.holder && h.token == token)
                {
                    held.remove(&lease.service);
                }
            }
            let released = self
                .client()
                .await?
                .execute(
                    &format!(
                        "UPDATE {} SET holder = NULL, expires_at = NULL \
                         WHERE service = $1 AND holder = $2 AND token = $3",
                        self.lease_table
                    ),
                    &[&lease.service.as_str(), &lease.holder, &token],
                )
                .await
                .map_err(|e| {
                    self.failed(&format!("releasing the lease on {}", lease.service), e)
                })?;
            tracing::info!(released = released == 1, "lease released");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// Failover state in `{table}_failover`, with the same compare-and-swap
/// and, while this instance holds the service's lease, the same fencing as
/// rollout state. The state is stored as its serde JSON in a `jsonb`
/// column, so fields added to [`FailoverState`] need no schema change.
#[async_trait]
impl FailoverStore for PostgresStateStore {
    async fn load_failover(
        &self,
        service: &ServiceName,
    ) -> Result<Option<Versioned<FailoverState>>> {
        self.read(Stored::Failover, service).await
    }

    async fn compare_and_swap_failover(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &FailoverState,
    ) -> Result<u64> {
        let fence = self.held().get(service).cloned();
        self.write(
            Stored::Failover,
            service,
            expected,
            &to_json(service, state)?,
            fence.as_ref(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_table_names_are_refused_before_connecting() {
        for table in [
            "",
            "Rollouts",
            "a;drop table x",
            "a.b.c",
            "1abc",
            &"x".repeat(55),
        ] {
            let err = PostgresStateStore::builder("postgres://nobody@127.0.0.1:1/none")
                .with_table(table)
                .connect()
                .await
                .expect_err(table);
            assert_eq!(
                err.kind(),
                atlas_core::ErrorKind::InvalidInput,
                "{table}: {err}"
            );
            assert!(err.to_string().contains("table"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_bad_url_is_refused() {
        let err = PostgresStateStore::builder("host=localhost port=notaport")
            .connect()
            .await
            .expect_err("bad url");
        assert_eq!(err.kind(), atlas_core::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("url"), "{err}");
    }

    #[test]
    fn ttls_are_validated() {
        assert!(ttl_seconds(Duration::ZERO).is_err());
        assert!(ttl_seconds(Duration::from_secs(u64::MAX)).is_err());
        assert_eq!(ttl_seconds(Duration::from_millis(1500)).unwrap(), 1.5);
    }

    #[test]
    fn lock_keys_differ_per_table_and_from_the_migration_lock() {
        assert_ne!(lock_key("atlas_state"), lock_key("ops.atlas_state"));
        assert_ne!(
            lock_key("atlas_state"),
            super::super::shared::lock_key("atlas_state")
        );
    }
}
