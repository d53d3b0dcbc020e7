//! Items the PostgreSQL driver and state store share: a leaf module, so
//! neither imports the other's parent.

use atlas_core::Error;

/// The backend name errors carry.
pub(super) const BACKEND: &str = "postgres";

/// A lowercase identifier, optionally schema-qualified: safe to splice
/// into SQL unquoted.
pub(super) fn valid_table(table: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    table.split('.').count() <= 2 && table.split('.').all(valid)
}

/// A stable 64-bit advisory lock key for `table` (FNV-1a over a fixed
/// namespace), so runners of one history table share one lock.
pub(super) fn lock_key(table: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "atlas-migrate:".bytes().chain(table.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// A driver error as a core error: connection-level failures are
/// transient, SQL errors are not.
pub(super) fn db_err(what: &str, e: tokio_postgres::Error) -> Error {
    // Connection-level failures may pass on retry; SQL errors will not.
    let message = match e.as_db_error() {
        Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
        None => format!("{what}: {e}"),
    };
    if e.is_closed() {
        Error::transient_with(BACKEND, message, e)
    } else {
        Error::backend_with(BACKEND, message, e)
    }
}

/// The first host of `config` as libpq spells it: a name or address, or a
/// socket directory.
pub(super) fn first_host(config: &tokio_postgres::Config) -> Option<String> {
    match config.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(p) => Some(p.display().to_string()),
    }
}

/// Gives `cmd` the connection settings of `config` through libpq's
/// environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`),
/// so no password ever appears on a command line.
pub(super) fn libpq_env(config: &tokio_postgres::Config, cmd: &mut tokio::process::Command) {
    if let Some(host) = first_host(config) {
        cmd.env("PGHOST", host);
    }
    if let Some(port) = config.get_ports().first() {
        cmd.env("PGPORT", port.to_string());
    }
    if let Some(user) = config.get_user() {
        cmd.env("PGUSER", user);
    }
    if let Some(db) = config.get_dbname() {
        cmd.env("PGDATABASE", db);
    }
    if let Some(password) = config.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
}
