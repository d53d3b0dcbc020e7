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
