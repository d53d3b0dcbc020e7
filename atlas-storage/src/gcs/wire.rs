//! The JSON API on the wire: the object resources Atlas reads, object names
//! in paths, timestamps.

use std::time::{Duration, SystemTime};

use atlas_core::Result;
use atlas_core::backup::{ObjectKey, ObjectMeta};
use serde::Deserialize;

use crate::cloud::checksum::parse_crc32c_base64;

/// The JSON API's object resource, the fields Atlas reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ObjectResource {
    pub(super) name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    pub(super) crc32c: Option<String>,
    #[serde(default)]
    pub(super) etag: Option<String>,
    #[serde(default)]
    pub(super) generation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ObjectList {
    #[serde(default)]
    pub(super) items: Vec<ObjectResource>,
    #[serde(default)]
    pub(super) next_page_token: Option<String>,
}

/// The metadata of a listed or fetched object; an error for a name Atlas
/// cannot address.
pub(super) fn meta_of(obj: ObjectResource) -> Result<ObjectMeta> {
    let key = ObjectKey::new(obj.name)?;
    let size = obj
        .size
        .as_deref()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let updated = obj
        .updated
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(ObjectMeta::new(key, size, updated)
        .with_checksum(obj.crc32c.as_deref().and_then(parse_crc32c_base64))
        .with_etag(obj.etag)
        .with_version(obj.generation))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as the
/// JSON API wants object names in paths.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2024-05-01T12:34:56.789Z` (or with an offset) → `SystemTime`.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once('T').or_else(|| s.split_once(' '))?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (time, offset_secs) =
        if let Some(t) = rest.strip_suffix('Z').or_else(|| rest.strip_suffix('z')) {
            (t, 0i64)
        } else {
            let pos = rest.rfind(['+', '-'])?;
            let (t, off) = rest.split_at(pos);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, m) = off[1..].split_once(':')?;
            (
                t,
                sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60),
            )
        };
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let sec_str = t.next()?;
    let (whole, frac) = sec_str.split_once('.').unwrap_or((sec_str, ""));
    let second: i64 = whole.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse() {
        let t = parse_rfc3339("2026-11-25T19:51:51.729866Z").unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_636_311);
        assert_eq!(d.subsec_nanos(), 729_866_000);
        assert_eq!(
            parse_rfc3339("1970-01-01T01:00:00+01:00").unwrap(),
            SystemTime::UNIX_EPOCH
        );
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z")
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            951_868_800
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(encode("a/b c+é"), "a%2Fb%20c%2B%C3%A9");
        assert_eq!(encode("A-z_0.~"), "A-z_0.~");
    }
}
