//! File checksums: Atlas's SHA-256 and Flyway's CRC32, both blind to
//! line-ending style and to a leading byte-order mark, so a checkout with
//! CRLF line endings or an editor's BOM does not count as a change.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

/// The text without a leading UTF-8 byte-order mark and with every `\r\n`
/// and lone `\r` turned into `\n`.
pub(crate) fn normalise(bytes: &[u8]) -> Cow<'_, [u8]> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if !bytes.contains(&b'\r') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            out.push(b'\n');
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The SHA-256 of exactly these bytes, lowercase hex: what Atlas recorded
/// before it normalised line endings, still accepted for files applied then.
pub(crate) fn raw_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The checksum Atlas records for a file: the SHA-256 of its text, after
/// dropping a leading byte-order mark and turning CRLF and CR line endings
/// into LF, lowercase hex. For a file with LF endings and no BOM it is the
/// plain SHA-256 of its bytes.
pub fn checksum(bytes: &[u8]) -> String {
    raw_sha256(&normalise(bytes))
}

/// The IEEE CRC-32 (the one zip and `java.util.zip.CRC32` compute) with a
/// lookup table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32(bytes: impl Iterator<Item = u8>) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// The checksum Flyway records for a SQL file in `flyway_schema_history`.
///
/// Flyway reads the file line by line (a line ends at `\n`, `\r` or
/// `\r\n`, and the terminator is not part of it), removes a byte-order mark
/// from the first line, feeds each line's UTF-8 bytes to one CRC-32, and
/// stores the result as a signed 32-bit integer. Feeding lines one after
/// another is the same as one CRC-32 over the text with every `\r` and `\n`
/// removed, which is how it is computed here.
pub fn flyway_checksum(bytes: &[u8]) -> i32 {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let crc = crc32(bytes.iter().copied().filter(|b| *b != b'\r' && *b != b'\n'));
    i32::from_ne_bytes(crc.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789".iter().copied()), 0xCBF4_3926);
        assert_eq!(crc32(std::iter::empty()), 0);
    }

    #[test]
    fn flyway_checksum_ignores_line_endings_and_a_leading_bom_only() {
        let lf = flyway_checksum(b"first\nsecond\nthird");
        for same in [
            &b"first\r\nsecond\r\nthird"[..],
            b"first\rsecond\rthird",
            b"first\nsecond\nthird\n",
            b"\xef\xbb\xbffirst\nsecond\nthird",
        ] {
            assert_eq!(flyway_checksum(same), lf);
        }
        assert_eq!(lf, flyway_checksum(b"firstsecondthird"));
        assert_ne!(flyway_checksum(b"first\n\xef\xbb\xbfsecond\nthird"), lf);
        assert_eq!(flyway_checksum(b""), 0);
        // Stored signed, as Java's int.
        let high = (0..1000u32)
            .map(|i| i.to_le_bytes())
            .find(|b| crc32(b.iter().copied()) > 0x8000_0000)
            .expect("some input has the high bit set");
        assert!(flyway_checksum(&high) < 0);
    }

    #[test]
    fn atlas_checksum_normalises_the_same_way_and_is_plain_sha256_otherwise() {
        assert_eq!(
            checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let lf = checksum(b"SELECT 1;\nSELECT 2;\n");
        assert_eq!(checksum(b"SELECT 1;\r\nSELECT 2;\r\n"), lf);
        assert_eq!(checksum(b"\xef\xbb\xbfSELECT 1;\rSELECT 2;\r"), lf);
        assert_ne!(checksum(b"SELECT 1;\n\nSELECT 2;\n"), lf);
    }
}
