//! The encodings of checksums on the wire and in object metadata: CRC32C as
//! base64 of its big-endian bytes (S3's `x-amz-checksum-crc32c`, GCS's
//! `crc32c` and `X-Goog-Hash`) and as 8 hex digits (the metadata and tags
//! Atlas writes), and the MD5 of a body (Azure's `Content-MD5`).

use atlas_core::backup::Checksum;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// A CRC32C as base64 of its 4 big-endian bytes, e.g. `mnG7TA==`.
#[cfg(any(feature = "s3", feature = "gcs"))]
pub(crate) fn crc32c_base64(c: Checksum) -> String {
    B64.encode(c.to_be_bytes())
}

/// A CRC32C from base64 of its 4 big-endian bytes; `None` for anything else.
#[cfg(any(feature = "s3", feature = "gcs"))]
pub(crate) fn parse_crc32c_base64(s: &str) -> Option<Checksum> {
    let raw = B64.decode(s.trim()).ok()?;
    let arr: [u8; 4] = raw.try_into().ok()?;
    Some(Checksum::Crc32c(u32::from_be_bytes(arr)))
}

/// A CRC32C as 8 lowercase hex digits, as Atlas stores it in metadata and
/// tags; empty for another algorithm.
#[cfg(any(feature = "s3", feature = "azure"))]
pub(crate) fn crc32c_hex(c: Checksum) -> String {
    match c {
        Checksum::Crc32c(v) => format!("{v:08x}"),
        _ => String::new(),
    }
}

/// A CRC32C from hex digits; `None` for anything else.
#[cfg(any(feature = "s3", feature = "azure"))]
pub(crate) fn parse_crc32c_hex(s: &str) -> Option<Checksum> {
    u32::from_str_radix(s.trim(), 16).ok().map(Checksum::Crc32c)
}

/// Whether `s` is non-empty base64 (an Azure account key always is).
#[cfg(feature = "azure")]
pub(crate) fn is_base64(s: &str) -> bool {
    B64.decode(s).is_ok_and(|raw| !raw.is_empty())
}

/// The MD5 digest of `data`, which Azure verifies as `Content-MD5`.
#[cfg(feature = "azure")]
pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "s3", feature = "gcs"))]
    #[test]
    fn crc32c_round_trips_through_base64() {
        let c = Checksum::crc32c_of(b"hello");
        assert_eq!(crc32c_base64(c), "mnG7TA==");
        assert_eq!(parse_crc32c_base64(&crc32c_base64(c)), Some(c));
        assert_eq!(parse_crc32c_base64(" mnG7TA== "), Some(c));
        assert_eq!(parse_crc32c_base64("bm90IDQgYnl0ZXM="), None);
        assert_eq!(parse_crc32c_base64("%%%"), None);
    }

    #[cfg(any(feature = "s3", feature = "azure"))]
    #[test]
    fn crc32c_round_trips_through_hex() {
        let c = Checksum::crc32c_of(b"hello");
        assert_eq!(crc32c_hex(c), "9a71bb4c");
        assert_eq!(parse_crc32c_hex(&crc32c_hex(c)), Some(c));
        assert_eq!(crc32c_hex(Checksum::Crc32c(1)), "00000001");
        assert_eq!(parse_crc32c_hex("not hex"), None);
    }

    #[cfg(feature = "azure")]
    #[test]
    fn md5_and_base64_checks() {
        // RFC 1321's test vector for "abc".
        let d = md5(b"abc");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "900150983cd24fb0d6963f7d28e17f72");
        assert!(is_base64("c2VjcmV0LWtleS1ieXRlcw=="));
        assert!(!is_base64("not base64!"));
        assert!(!is_base64(""));
    }
}
