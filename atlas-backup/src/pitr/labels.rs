//! Reading the labels (tags `prefix:value`) that point-in-time recovery
//! puts on its snapshots: base backups, restore points.

use std::str::FromStr;

use crate::repo::Snapshot;
use atlas_core::{Error, Result};

/// The value of `snapshot`'s tag starting `prefix`.
///
/// # Errors
/// [`Error::InvalidInput`] naming the snapshot when it has no such tag.
pub(super) fn tag<'a>(snapshot: &'a Snapshot, prefix: &str) -> Result<&'a str> {
    snapshot
        .tags
        .iter()
        .find_map(|t| t.strip_prefix(prefix))
        .ok_or_else(|| {
            Error::invalid(
                format!("snapshot {}.tags", snapshot.id.short()),
                format!("has no {prefix} tag"),
            )
        })
}

/// The error for tag `prefix` holding `value` that does not parse.
pub(super) fn malformed(snapshot: &Snapshot, prefix: &str, value: &str) -> Error {
    Error::invalid(
        format!("snapshot {}.tags", snapshot.id.short()),
        format!("{prefix}{value} is malformed"),
    )
}

/// The value of the tag starting `prefix`, parsed.
///
/// # Errors
/// As [`tag`], and [`malformed`] when the value does not parse.
pub(super) fn parsed_tag<T: FromStr>(snapshot: &Snapshot, prefix: &str) -> Result<T> {
    let value = tag(snapshot, prefix)?;
    value
        .parse()
        .map_err(|_| malformed(snapshot, prefix, value))
}
