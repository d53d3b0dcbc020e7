//! The PostgreSQL side of point-in-time recovery: `pg_basebackup` as a
//! stream, the WAL switch that closes a recovery window, unpacking a base
//! backup, `pg_verifybackup`, and a server started on a restored data
//! directory that is followed until recovery ends.
//!
//! The server programs are found in `ATLAS_PG_BINDIR`, else in the newest
//! `/usr/lib/postgresql/<version>/bin` (where Debian's `postgresql-<n>`
//! package puts them, mostly off `PATH`). `initdb` and the server refuse
//! to run as root, so when this process is root the programs that own a
//! data directory (initdb, pg_ctl, tar into it, pg_verifybackup) run as
//! user `postgres` through `runuser`, as `cargo xtask test` does. The
//! connection password reaches `pg_basebackup` through `PGPASSWORD`,
//! never its command line, and is never logged.
//!
//! **Recovery point objective.** WAL reaches the archive a segment at a
//! time, so what is committed in the current segment is not recoverable
//! until the segment is closed. [`switch_wal`] closes it on demand and waits
//! for the archiver: run it from a schedule (every 15 minutes for a
//! 15-minute RPO); the time it waited is the job's duration, and the
//! newest recovery point is the moment it was called. The alternative is
//! the server setting `archive_timeout`, which switches segments by itself
//! after that many seconds of activity; its cost is that every switched
//! segment is archived at its full size (16 MiB by default) however little
//! it holds, so a low timeout on a quiet server fills the archive with
//! mostly-empty segments (the repository's dedup stores their zero-filled
//! tails once, but each is still a separate push).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use atlas_core::backup::ByteStream;
use atlas_core::{Error, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

use super::shared::{first_host, libpq_env};

const BACKEND: &str = "postgres";

/// Where the PostgreSQL programs are, and which user runs the ones that
/// own a data directory.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin_dir: PathBuf,
    run_as: Option<String>,
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl PgTools {
    /// The programs in `bin_dir`, run as this process's user.
    pub fn new(bin_dir: impl Into<PathBuf>) -> Self {
        PgTools {
            bin_dir: bin_dir.into(),
            run_as: None,
        }
    }

    /// Finds the programs: `ATLAS_PG_BINDIR`, else the newest
    /// `/usr/lib/postgresql/<version>/bin` holding `pg_basebackup` and
    /// `pg_ctl`; as root, the data-directory programs run as `postgres`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when neither has the programs.
    pub fn discover() -> Result<Self> {
        let has = |d: &Path| d.join("pg_basebackup").is_file() && d.join("pg_ctl").is_file();
        let dir = match std::env::var_os("ATLAS_PG_BINDIR") {
            Some(d) => Some(PathBuf::from(d)).filter(|d| has(d)),
            None => std::fs::read_dir("/usr/lib/postgresql")
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    Some((
                        e.file_name().to_str()?.parse::<u32>().ok()?,
                        e.path().join("bin"),
                    ))
                })
                .filter(|(_, d)| has(d))
                .max_by_key(|(v, _)| *v)
                .map(|(_, d)| d),
        };
        let dir = dir.ok_or_else(|| {
            Error::not_found("the PostgreSQL server programs (pg_basebackup, pg_ctl): set ATLAS_PG_BINDIR or install postgresql")
        })?;
        debug!(bin_dir = %dir.display(), "found the PostgreSQL programs");
        Ok(PgTools {
            bin_dir: dir,
            run_as: is_root().then(|| "postgres".to_owned()),
        })
    }

    /// Runs the data-directory programs as `user` (through `runuser`), or
    /// as this process's user with `None`.
    pub fn with_run_as(mut self, user: Option<String>) -> Self {
        self.run_as = user;
        self
    }

    /// The user the data-directory programs run as, when not this
    /// process's.
    pub fn run_as(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    /// The path of program `name`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A command for `program` (a path) run as the data-directory user.
    pub(super) fn as_owner(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        match &self.run_as {
            Some(user) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        }
    }

    /// Creates `dir` (mode 0700, owned by the data-directory user), which
    /// must not exist or be empty.
    pub(super) async fn make_data_dir(&self, dir: &Path) -> Result<()> {
        let io = |what: &str, e: std::io::Error| {
            Error::backend_with(BACKEND, format!("{what} {}", dir.display()), e)
        };
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::invalid(
                        "pgdata",
                        format!("{} is not empty", dir.display()),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| io("cannot create", e))?;
            }
            Err(e) => return Err(io("cannot read", e)),
        }
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(|e| io("cannot chmod", e))?;
        if let Some(user) = &self.run_as {
            run(
                tokio::process::Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir),
                "chown",
            )
            .await?;
        }
        Ok(())
    }
}

/// Runs `cmd` to its end; its stderr goes into the error on failure.
pub(super) async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::backend_with(BACKEND, format!("cannot start {what}"), e))?;
    if !out.status.success() {
        return Err(Error::backend(
            BACKEND,
            format!(
                "{what} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How to reach a server: a URL, or libpq's environment (`PGHOST`,
/// `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`).
#[derive(Clone)]
pub struct PgConnection {
    config: tokio_postgres::Config,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("host", &self.host())
            .field("port", &self.config.get_ports().first())
            .field("user", &self.config.get_user())
            .finish_non_exhaustive()
    }
}

impl PgConnection {
    /// From a `postgres://` URL or a `key=value` connection string.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `dsn` when it does not parse (the text
    /// is not repeated: it may hold a password).
    pub fn from_dsn(dsn: &str) -> Result<Self> {
        let config = dsn
            .parse()
            .map_err(|_| Error::invalid("dsn", "is not a PostgreSQL URL or connection string"))?;
        Ok(PgConnection { config })
    }

    /// From libpq's environment variables; unset ones take libpq's
    /// defaults (local socket in `/var/run/postgresql`, port 5432, user
    /// `postgres`... as `$USER`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut config = tokio_postgres::Config::new();
        config.host(var("PGHOST").unwrap_or_else(|| "/var/run/postgresql".to_owned()));
        config.port(var("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432));
        config.user(
            var("PGUSER")
                .or_else(|| var("USER"))
                .unwrap_or_else(|| "postgres".to_owned()),
        );
        if let Some(p) = var("PGPASSWORD") {
            config.password(p);
        }
        config.dbname(var("PGDATABASE").unwrap_or_else(|| "postgres".to_owned()));
        PgConnection { config }
    }

    fn host(&self) -> Option<String> {
        first_host(&self.config)
    }

    /// Gives `cmd` this connection through libpq's environment.
    fn apply(&self, cmd: &mut tokio::process::Command) {
        libpq_env(&self.config, cmd);
    }

    /// Opens a session (plain text; the connection task runs on the
    /// current runtime).
    ///
    /// # Errors
    /// [`Error::Backend`] when the server cannot be reached.
    pub async fn connect(&self) -> Result<Client> {
        let (client, conn) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| Error::backend_with(BACKEND, "cannot connect", e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection ended");
            }
        });
        Ok(client)
    }
}

fn db_err(what: &str, e: tokio_postgres::Error) -> Error {
    Error::backend_with(BACKEND, what.to_owned(), e)
}

/// Parses `X/Y` (PostgreSQL's LSN notation) into a byte position.
pub(super) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}

/// Where a finished base backup lies in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseBackupResult {
    /// The cluster's database system identifier.
    pub system_identifier: u64,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// The WAL position replay starts from.
    pub start_lsn: u64,
    /// The consistent point.
    pub stop_lsn: u64,
    /// When `pg_basebackup` had finished.
    pub stop_time: SystemTime,
}

/// A running `pg_basebackup`: its tar stream, and what reports where the
/// backup lies once the stream has ended and the program exited 0.
pub struct BaseBackupRun {
    /// The tar stream (`base.tar` with the WAL needed for consistency and
    /// the backup manifest inside).
    pub body: ByteStream,
    /// Resolves when `pg_basebackup` has exited: its result, or the error
    /// (its exit status and stderr) that must fail the backup.
    pub finished: BoxFuture<'static, Result<BaseBackupResult>>,
}

impl fmt::Debug for BaseBackupRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaseBackupRun").finish_non_exhaustive()
    }
}

/// Starts `pg_basebackup` in tar format to stdout, with the WAL needed for
/// consistency fetched into the tar, a fast checkpoint and a SHA-256
/// backup manifest; nothing is written to local disk.
///
/// # Errors
/// [`Error::Backend`] when the server cannot be queried for its system
/// identifier or the program cannot start.
pub async fn start_base_backup(tools: &PgTools, conn: &PgConnection) -> Result<BaseBackupRun> {
    let client = conn.connect().await?;
    let row = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| db_err("reading the system identifier", e))?;
    let sysid: String = row.get(0);
    let system_identifier: u64 = sysid.parse().map_err(|_| {
        Error::backend(
            BACKEND,
            format!("system identifier {sysid:?} is not a number"),
        )
    })?;
    drop(client);
    let mut cmd = tokio::process::Command::new(tools.program("pg_basebackup"));
    cmd.args([
        "-D",
        "-",
        "-F",
        "tar",
        "-X",
        "fetch",
        "--checkpoint=fast",
        "--manifest-checksums=SHA256",
        "--verbose",
        "--no-password",
    ]);
    conn.apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::backend_with("pg_basebackup", "cannot start pg_basebackup", e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::backend("pg_basebackup", "no stdout"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::backend("pg_basebackup", "no stderr"))?;
    info!(system_identifier, "pg_basebackup started");
    // Read stderr as it comes, so the program never blocks on it.
    let stderr_task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            debug!(line = %l, "pg_basebackup");
            all.push(l);
        }
        all
    });
    let body = futures::stream::unfold(stdout, |mut out| async move {
        let mut buf = vec![0u8; 1 << 20];
        match out.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), out))
            }
            Err(e) => Some((
                Err(Error::backend_with(
                    "pg_basebackup",
                    "reading its output",
                    e,
                )),
                out,
            )),
        }
    })
    .boxed();
    let finished = async move {
        let status = child
            .wait()
            .await
            .map_err(|e| Error::backend_with("pg_basebackup", "waiting for pg_basebackup", e))?;
        let lines = stderr_task.await.unwrap_or_default();
        let stop_time = SystemTime::now();
        if !status.success() {
            return Err(Error::backend(
                "pg_basebackup",
                format!("exited with {status}: {}", lines.join("\n")),
            ));
        }
        let find = |needle: &str| {
            lines
                .iter()
                .find_map(|l| l.split_once(needle).map(|(_, rest)| rest.trim().to_owned()))
        };
        let start = find("write-ahead log start point:")
            .ok_or_else(|| Error::backend("pg_basebackup", "did not report its start point"))?;
        let (start_lsn, timeline) = start
            .split_once(" on timeline ")
            .and_then(|(l, t)| Some((parse_lsn(l)?, t.trim().parse().ok()?)))
            .ok_or_else(|| {
                Error::backend("pg_basebackup", format!("unreadable start point {start:?}"))
            })?;
        let stop = find("write-ahead log end point:")
            .ok_or_else(|| Error::backend("pg_basebackup", "did not report its end point"))?;
        let stop_lsn = parse_lsn(&stop).ok_or_else(|| {
            Error::backend("pg_basebackup", format!("unreadable end point {stop:?}"))
        })?;
        info!(timeline, start_lsn = %start, stop_lsn = %stop, "pg_basebackup finished");
        Ok(BaseBackupResult {
            system_identifier,
            timeline,
            start_lsn,
            stop_lsn,
            stop_time,
        })
    }
    .boxed();
    Ok(BaseBackupRun { body, finished })
}

/// A restore point the server created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestorePointCreated {
    /// The name given.
    pub name: String,
    /// The WAL position `pg_create_restore_point` returned.
    pub lsn: u64,
    /// The timeline it was written on.
    pub timeline: u32,
    /// The database system identifier.
    pub system_identifier: u64,
    /// When it was created (the client's clock).
    pub time: SystemTime,
}

/// Creates the restore point `name` (`pg_create_restore_point`, which needs
/// superuser or an explicit grant) and reports where it lies, for the
/// repository to record.
///
/// # Errors
/// [`Error::Backend`] for a failed query (a standby, missing privilege,
/// `wal_level = minimal`) or an answer that does not parse.
pub async fn create_restore_point(client: &Client, name: &str) -> Result<RestorePointCreated> {
    let row = client
        .query_one(
            "SELECT pg_create_restore_point($1)::text, \
                    (SELECT timeline_id FROM pg_control_checkpoint())::int4, \
                    (SELECT system_identifier::text FROM pg_control_system())",
            &[&name],
        )
        .await
        .map_err(|e| db_err("pg_create_restore_point", e))?;
    let lsn_text: String = row.get(0);
    let timeline: i32 = row.get(1);
    let sys: String = row.get(2);
    let bad = |what: &str, v: &str| {
        Error::backend(
            BACKEND,
            format!("pg_create_restore_point: {what} {v:?} does not parse"),
        )
    };
    let lsn = parse_lsn(&lsn_text).ok_or_else(|| bad("LSN", &lsn_text))?;
    let system_identifier = sys.parse().map_err(|_| bad("system identifier", &sys))?;
    let timeline = u32::try_from(timeline).map_err(|_| bad("timeline", &timeline.to_string()))?;
    info!(name, lsn = %lsn_text, timeline, "restore point created");
    Ok(RestorePointCreated {
        name: name.to_owned(),
        lsn,
        timeline,
        system_identifier,
        time: SystemTime::now(),
    })
}

/// What [`switch_wal`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalSwitch {
    /// The segment the switch closed.
    pub segment: String,
    /// How long it took until `pg_stat_archiver` showed it archived.
    pub waited: Duration,
}

/// Closes the current WAL segment (`pg_switch_wal()`) and waits until
/// `pg_stat_archiver` reports it archived, so everything committed before
/// the call is recoverable from the archive.
///
/// # Errors
/// [`Error::Backend`] for a failed query; [`Error::Transient`]-kind
/// timeout error naming the segment and the archiver's last failure when
/// it is not archived within `timeout`.
pub async fn switch_wal(client: &Client, timeout: Duration) -> Result<WalSwitch> {
    let started = Instant::now();
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|e| db_err("pg_switch_wal", e))?;
    let segment: String = row.get(0);
    loop {
        let row = client
            .query_one("SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), failed_count FROM pg_stat_archiver", &[])
            .await
            .map_err(|e| db_err("reading pg_stat_archiver", e))?;
        let archived: String = row.get(0);
        // Same-length names on one timeline sort by position.
        if archived.len() >= 24 && archived[..24] >= *segment.as_str() {
            let waited = started.elapsed();
            info!(%segment, waited_ms = waited.as_millis() as u64, "WAL segment archived");
            return Ok(WalSwitch { segment, waited });
        }
        if started.elapsed() > timeout {
            let failed: String = row.get(1);
            let count: i64 = row.get(2);
            return Err(Error::Transient {
                backend: BACKEND.to_owned(),
                message: format!(
                    "segment {segment} not archived after {timeout:?} (archiver failures: {count}, last failed: {failed:?})"
                ),
                source: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `pg_stat_archiver` says: the recovery point objective's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiverStatus {
    /// WAL files archived since the statistics were reset.
    pub archived_count: i64,
    /// The newest archived WAL file.
    pub last_archived_wal: Option<String>,
    /// How long ago it was archived (the age of the newest recoverable
    /// WAL, by the server's clock).
    pub last_archived_age: Option<Duration>,
    /// Failed attempts to archive.
    pub failed_count: i64,
    /// The file of the newest failed attempt.
    pub last_failed_wal: Option<String>,
}

/// Reads `pg_stat_archiver`.
///
/// # Errors
/// [`Error::Backend`] for a failed query.
pub async fn archiver_status(client: &Client) -> Result<ArchiverStatus> {
    let row = client
        .query_one(
            "SELECT archived_count, last_archived_wal, \
             extract(epoch FROM now() - last_archived_time)::float8, failed_count, last_failed_wal \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .map_err(|e| db_err("reading pg_stat_archiver", e))?;
    let age: Option<f64> = row.get(2);
    Ok(ArchiverStatus {
        archived_count: row.get(0),
        last_archived_wal: row.get(1),
        last_archived_age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
        failed_count: row.get(3),
        last_failed_wal: row.get(4),
    })
}

/// Unpacks a base backup's tar stream into `pgdata` (created mode 0700;
/// it must not exist or be empty), as the data-directory user. Returns the
/// bytes unpacked.
///
/// # Errors
/// [`Error::InvalidInput`] for a non-empty `pgdata`; the stream's own
/// error, or `tar`'s exit status and stderr.
pub async fn unpack_base_backup(
    tools: &PgTools,
    mut body: ByteStream,
    pgdata: &Path,
) -> Result<u64> {
    tools.make_data_dir(pgdata).await?;
    let mut cmd = tools.as_owner("tar");
    cmd.args(["-x", "-f", "-", "-C"]).arg(pgdata);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::backend_with("tar", "cannot start tar", e))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::backend("tar", "no stdin"))?;
    let mut total = 0u64;
    let fed = async {
        while let Some(piece) = body.next().await {
            let piece = piece?;
            stdin
                .write_all(&piece)
                .await
                .map_err(|e| Error::backend_with("tar", "writing to tar", e))?;
            total += piece.len() as u64;
        }
        drop(stdin);
        Ok::<_, Error>(())
    }
    .await;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::backend_with("tar", "waiting for tar", e))?;
    fed?;
    if !out.status.success() {
        return Err(Error::backend(
            "tar",
            format!(
                "exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    info!(pgdata = %pgdata.display(), bytes = total, "base backup unpacked");
    Ok(total)
}

/// Checks an unpacked base backup against its manifest (`pg_verifybackup`:
/// every file's size and SHA-256, and that the WAL it needs parses).
///
/// # Errors
/// [`Error::Backend`] with `pg_verifybackup`'s report when anything differs.
pub async fn verify_base_backup(tools: &PgTools, pgdata: &Path) -> Result<()> {
    let mut cmd = tools.as_owner(tools.program("pg_verifybackup"));
    cmd.arg(pgdata);
    run(&mut cmd, "pg_verifybackup").await?;
    info!(pgdata = %pgdata.display(), "pg_verifybackup: the base backup matches its manifest");
    Ok(())
}

/// Creates a new cluster in `pgdata` (initdb: user `postgres`, trust
/// authentication, UTF8, no locale), for tests and trial restores.
///
/// # Errors
/// [`Error::InvalidInput`] for a non-empty `pgdata`; initdb's stderr.
pub async fn init_cluster(tools: &PgTools, pgdata: &Path) -> Result<()> {
    tools.make_data_dir(pgdata).await?;
    let mut cmd = tools.as_owner(tools.program("initdb"));
    cmd.arg("-D").arg(pgdata).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    ]);
    run(&mut cmd, "initdb").await?;
    info!(pgdata = %pgdata.display(), "cluster created");
    Ok(())
}

/// Creates a streaming standby of `primary` in `pgdata` (`pg_basebackup
/// -R -X stream`: a copy of the primary with `standby.signal` and
/// `primary_conninfo` written, so it follows the primary once started), as
/// the data-directory user. The primary must allow replication connections
/// (`wal_level = replica`, `max_wal_senders`, a `replication` line in
/// `pg_hba.conf`). The password goes to `pg_basebackup` through
/// `PGPASSWORD`, never its command line; `-R` writes it into the standby's
/// `postgresql.auto.conf`, as libpq's `primary_conninfo` needs it.
///
/// # Errors
/// [`Error::InvalidInput`] for a non-empty `pgdata`; `pg_basebackup`'s
/// stderr when it fails.
pub async fn create_standby(tools: &PgTools, primary: &PgConnection, pgdata: &Path) -> Result<()> {
    tools.make_data_dir(pgdata).await?;
    let mut cmd = tools.as_owner(tools.program("pg_basebackup"));
    cmd.arg("-D")
        .arg(pgdata)
        .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-password"]);
    primary.apply(&mut cmd);
    run(&mut cmd, "pg_basebackup -R").await?;
    info!(pgdata = %pgdata.display(), "standby created");
    Ok(())
}

/// Appends `settings` to `pgdata/postgresql.auto.conf` and creates
/// `recovery.signal`, so the next start recovers.
///
/// # Errors
/// [`Error::Backend`] naming the file that cannot be written.
pub async fn prepare_recovery(pgdata: &Path, settings: &str) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| {
        Error::backend_with(BACKEND, format!("cannot write {}", p.display()), e)
    };
    let auto = pgdata.join("postgresql.auto.conf");
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .await
        .map_err(|e| io(&auto, e))?;
    f.write_all(format!("\n{settings}").as_bytes())
        .await
        .map_err(|e| io(&auto, e))?;
    let signal = pgdata.join("recovery.signal");
    tokio::fs::write(&signal, b"")
        .await
        .map_err(|e| io(&signal, e))?;
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released: good for a server
/// started right after).
///
/// # Errors
/// [`Error::Backend`] when no port can be bound.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::backend_with(BACKEND, "cannot bind a port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::backend_with(BACKEND, "cannot read the bound port", e))
}

/// Where recovery ended, as the promoted server and its log report it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The timeline the server runs on now (a new one after promotion).
    pub timeline: u32,
    /// The WAL position the server is writing at.
    pub lsn: String,
    /// The log's `recovery stopping …` line: the target was reached.
    pub stopped_at_target: Option<String>,
    /// The log's `last completed transaction was at log time …` line.
    pub last_transaction: Option<String>,
    /// The log's `redo done at …` line.
    pub redo_done: Option<String>,
    /// How long from start to the end of recovery.
    pub took: Duration,
}

/// A server running on a data directory of its own (on 127.0.0.1, its
/// socket in the data directory). Dropping it stops the server at once
/// (`pg_ctl stop -m immediate`), so a failing caller leaves no server
/// behind; [`PgServer::stop`] stops it cleanly.
#[derive(Debug)]
pub struct PgServer {
    tools: PgTools,
    pgdata: PathBuf,
    port: u16,
    log: PathBuf,
    running: bool,
}

impl PgServer {
    /// Starts the server on `pgdata` listening on 127.0.0.1:`port`, with
    /// `options` added to its command line (`-c name=value ...`), and waits
    /// until it accepts connections (during archive recovery: once it is
    /// consistent). Its log goes to `<pgdata>/atlas-server.log`.
    ///
    /// # Errors
    /// [`Error::Backend`] with the log's last lines when it does not start.
    pub async fn start(
        tools: &PgTools,
        pgdata: &Path,
        port: u16,
        options: &str,
    ) -> Result<PgServer> {
        let log = pgdata.join("atlas-server.log");
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {options}",
            pgdata.display()
        );
        let mut server = PgServer {
            tools: tools.clone(),
            pgdata: pgdata.to_owned(),
            port,
            log,
            running: true,
        };
        let mut cmd = tools.as_owner(tools.program("pg_ctl"));
        cmd.arg("-D")
            .arg(pgdata)
            .arg("-l")
            .arg(&server.log)
            .args(["-w", "-t", "86400", "-o", &opts, "start"]);
        // Keep the postmaster out of the caller's process group (Ctrl-C).
        cmd.process_group(0);
        info!(pgdata = %pgdata.display(), port, "starting the server");
        if let Err(e) = run(&mut cmd, "pg_ctl start").await {
            let tail = server.log_tail(30).await;
            server.kill();
            return Err(Error::backend(BACKEND, format!("{e}\nserver log:\n{tail}")));
        }
        Ok(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection to its database `postgres` as user `postgres`.
    pub fn connection(&self) -> PgConnection {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        PgConnection { config }
    }

    /// The last `lines` lines of its log.
    pub async fn log_tail(&self, lines: usize) -> String {
        let text = tokio::fs::read_to_string(&self.log)
            .await
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until recovery has ended and the server accepts writes, and
    /// reports where it stopped.
    ///
    /// # Errors
    /// [`Error::Backend`] with the log's last lines when the server stops
    /// (a fatal recovery error: a damaged or unobtainable WAL file, a target
    /// recovery never reached) or `timeout` passes.
    pub async fn wait_recovery_end(&self, timeout: Duration) -> Result<RecoveryReport> {
        let started = Instant::now();
        loop {
            let state = async {
                let client = self.connection().connect().await?;
                let row = client
                    .query_one("SELECT pg_is_in_recovery(), pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text", &[])
                    .await;
                Ok::<_, Error>(match row {
                    Ok(r) if !r.get::<_, bool>(0) => Some((r.get::<_, String>(1), r.get::<_, String>(2))),
                    _ => None,
                })
            }
            .await;
            if let Ok(Some((walfile, lsn))) = state {
                let log = tokio::fs::read_to_string(&self.log)
                    .await
                    .unwrap_or_default();
                let line = |needle: &str| {
                    log.lines()
                        .rfind(|l| l.contains(needle))
                        .map(|l| l.split_once(needle).map_or(l, |(_, r)| r).trim().to_owned())
                };
                let report = RecoveryReport {
                    timeline: u32::from_str_radix(&walfile[..8.min(walfile.len())], 16)
                        .unwrap_or(0),
                    lsn,
                    stopped_at_target: line("recovery stopping "),
                    last_transaction: line("last completed transaction was at log time "),
                    redo_done: line("redo done at "),
                    took: started.elapsed(),
                };
                info!(timeline = report.timeline, lsn = %report.lsn, "recovery ended");
                return Ok(report);
            }
            if !self.pgdata.join("postmaster.pid").exists() || started.elapsed() > timeout {
                let tail = self.log_tail(30).await;
                warn!(pgdata = %self.pgdata.display(), "recovery did not end");
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "recovery did not end (the server stopped or {timeout:?} passed); server log:\n{tail}"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the server (fast shutdown) and waits for it.
    ///
    /// # Errors
    /// [`Error::Backend`] with `pg_ctl`'s stderr.
    pub async fn stop(mut self) -> Result<()> {
        self.running = false;
        let mut cmd = self.tools.as_owner(self.tools.program("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut cmd, "pg_ctl stop").await?;
        info!(pgdata = %self.pgdata.display(), "server stopped");
        Ok(())
    }

    /// Leaves the server running after this value is dropped.
    pub fn detach(mut self) {
        self.running = false;
    }

    fn kill(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        let mut cmd = match &self.tools.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.tools.program("pg_ctl"));
                c
            }
            None => std::process::Command::new(self.tools.program("pg_ctl")),
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_in_program_output_parse() {
        assert_eq!(parse_lsn("0/2000028"), Some(0x2000028));
        assert_eq!(parse_lsn(" 1A/FF "), Some(0x1A_0000_00FF));
        assert_eq!(parse_lsn("zz"), None);
    }

    #[test]
    fn a_connection_never_shows_its_password() {
        let c = PgConnection::from_dsn("postgres://u:s3cret@127.0.0.1:5433/db").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = PgConnection::from_dsn("postgres://u:s3cret@[::1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
