//! Durations as spec files write them (`30s`, `10m`, `1h30m`).

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest duration a spec may give anywhere: 365 days.
///
/// Longer values are refused because they are typos in practice (`30y` for
/// `30s`), and because adding them to a clock reading can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

pub(super) fn duration(at: &str, text: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        Error::invalid(
            at,
            format!("{text:?} is not a duration ({e}); write it like 30s, 10m or 1h30m"),
        )
    })?;
    if d > MAX_DURATION {
        return Err(Error::invalid(
            at,
            format!("{text:?} is longer than the maximum of 365 days"),
        ));
    }
    Ok(d)
}

pub(super) fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
