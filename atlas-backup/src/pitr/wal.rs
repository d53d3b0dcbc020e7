//! PostgreSQL's WAL vocabulary: log sequence numbers and the names of the
//! files an archive holds (segments, timeline history files, backup history
//! files), and the header every segment starts with.

use std::fmt;
use std::str::FromStr;

use atlas_core::{Error, Result};

/// A log sequence number: a byte position in the write-ahead log, written
/// `X/Y` (two hexadecimal halves) as PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "lsn",
                format!("{s:?} is not a log sequence number (X/Y in hexadecimal)"),
            )
        };
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(hi << 32 | lo))
    }
}

/// The default WAL segment size (initdb's `--wal-segsize` default).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// What kind of file of the WAL archive a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileKind {
    /// A WAL segment (`TTTTTTTTXXXXXXXXYYYYYYYY`).
    Segment,
    /// A timeline history file (`TTTTTTTT.history`).
    History,
    /// A backup history file (`<segment>.<offset>.backup`) that
    /// `pg_backup_stop` writes.
    BackupHistory,
    /// A partial segment (`<segment>.partial`) left when a timeline ended
    /// in the middle of a segment.
    Partial,
}

/// The validated name of a file in the WAL archive: exactly the names
/// PostgreSQL gives `archive_command` (`%f`) and asks `restore_command` for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName {
    name: String,
}

fn is_upper_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalFileName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file when it is none of the
    /// archive's kinds (which also rules out any path separator).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let ok = match name.split_once('.') {
            None => is_upper_hex(&name, 24),
            Some((head, "history")) => is_upper_hex(head, 8),
            Some((head, "partial")) => is_upper_hex(head, 24),
            Some((head, rest)) => {
                is_upper_hex(head, 24)
                    && rest
                        .strip_suffix(".backup")
                        .is_some_and(|off| is_upper_hex(off, 8))
            }
        };
        if !ok {
            return Err(Error::invalid(
                "wal file",
                format!("{name:?} is not a WAL segment, .history, .backup or .partial file name"),
            ));
        }
        Ok(WalFileName { name })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> WalFileKind {
        if self.name.ends_with(".history") {
            WalFileKind::History
        } else if self.name.ends_with(".backup") {
            WalFileKind::BackupHistory
        } else if self.name.ends_with(".partial") {
            WalFileKind::Partial
        } else {
            WalFileKind::Segment
        }
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        // Validated: the first eight characters are hexadecimal.
        u32::from_str_radix(&self.name[..8], 16).unwrap_or(0)
    }

    /// The segment number (counted from LSN 0 in segments of
    /// `segment_size` bytes) of a segment, partial segment or backup
    /// history file; `None` for a timeline history file.
    pub fn segment_number(&self, segment_size: u64) -> Option<u64> {
        if self.kind() == WalFileKind::History || segment_size == 0 {
            return None;
        }
        let log = u64::from_str_radix(&self.name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&self.name[16..24], 16).ok()?;
        Some(log * (0x1_0000_0000 / segment_size) + seg)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The name of the segment of timeline `timeline` that holds `lsn`.
pub fn segment_name(timeline: u32, lsn: Lsn, segment_size: u64) -> String {
    let per_log = 0x1_0000_0000 / segment_size.max(1);
    let segno = lsn.0 / segment_size.max(1);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    )
}

/// What the long page header at the start of every WAL segment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The timeline the page was written on.
    pub timeline: u32,
    /// The LSN of the segment's first byte.
    pub start: Lsn,
    /// The database system identifier of the cluster that wrote it.
    pub system_identifier: u64,
    /// The segment size the cluster was created with.
    pub segment_size: u64,
}

/// `XLP_LONG_HEADER`: the first page of a segment carries the long header.
const XLP_LONG_HEADER: u16 = 0x0002;

impl SegmentHeader {
    /// Reads the long page header from a segment's first 40 bytes
    /// (little-endian, as every platform Atlas runs on writes it).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `file` when the bytes are too short
    /// or are not a long page header (a segment's first page always is).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("wal file {file}"), why.to_owned());
        if bytes.len() < 40 {
            return Err(bad("is shorter than a WAL page header"));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        if u16_at(2) & XLP_LONG_HEADER == 0 {
            return Err(bad("does not start with a long WAL page header"));
        }
        let segment_size = u64::from(u32_at(32));
        if !segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&segment_size) {
            return Err(bad(
                "names a WAL segment size that is not a power of two from 1 MiB to 1 GiB",
            ));
        }
        Ok(SegmentHeader {
            timeline: u32_at(4),
            start: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size,
        })
    }

    /// Checks that a segment named `name` is the segment this header
    /// describes (same timeline, same position), so a file renamed or
    /// copied over another's name is refused.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file and both positions.
    pub fn check_name(&self, name: &WalFileName) -> Result<()> {
        let expected = segment_name(self.timeline, self.start, self.segment_size);
        let stem = &name.as_str()[..24];
        if stem != expected {
            return Err(Error::invalid(
                format!("wal file {name}"),
                format!(
                    "its header is that of segment {expected} (timeline {}, LSN {})",
                    self.timeline, self.start
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_print_as_postgres_writes_them() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "1", "/1", "1/", "G/1", "1/2/3", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn archive_names_are_validated_and_classified() {
        let seg = WalFileName::new("000000010000000A000000FE").unwrap();
        assert_eq!(seg.kind(), WalFileKind::Segment);
        assert_eq!(seg.timeline(), 1);
        assert_eq!(
            seg.segment_number(DEFAULT_SEGMENT_SIZE),
            Some(0xA * 256 + 0xFE)
        );
        assert_eq!(
            WalFileName::new("00000002.history").unwrap().kind(),
            WalFileKind::History
        );
        assert_eq!(
            WalFileName::new("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind(),
            WalFileKind::BackupHistory
        );
        assert_eq!(
            WalFileName::new("000000010000000000000002.partial")
                .unwrap()
                .kind(),
            WalFileKind::Partial
        );
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000000",
            "000000010000000000000002x",
            "00000001000000000000000g",
            "0000000100000000000000a2",
            "000000010000000000000002.backup",
            "0000001.history",
            "000000010000000000000002/x",
        ] {
            let e = WalFileName::new(bad).unwrap_err();
            assert!(e.to_string().contains("wal file"), "{bad}: {e}");
        }
    }

    #[test]
    fn segment_names_follow_from_positions() {
        assert_eq!(
            segment_name(1, Lsn(0x2000028), DEFAULT_SEGMENT_SIZE),
            "000000010000000000000002"
        );
        assert_eq!(
            segment_name(3, Lsn(0x1_FF00_0000), DEFAULT_SEGMENT_SIZE),
            "0000000300000001000000FF"
        );
        assert_eq!(
            segment_name(1, Lsn(0x4000000), 64 << 20),
            "000000010000000000000001"
        );
    }

    fn header(tli: u32, start: u64, sysid: u64, size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&start.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&size.to_le_bytes());
        b
    }

    #[test]
    fn segment_headers_are_read_and_checked_against_the_name() {
        let h = SegmentHeader::parse(
            "x",
            &header(1, 0x3000000, 7_312_345_678_901_234_567, 16 << 20),
        )
        .unwrap();
        assert_eq!(h.timeline, 1);
        assert_eq!(h.start, Lsn(0x3000000));
        assert_eq!(h.system_identifier, 7_312_345_678_901_234_567);
        h.check_name(&WalFileName::new("000000010000000000000003").unwrap())
            .unwrap();
        let e = h
            .check_name(&WalFileName::new("000000010000000000000004").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("000000010000000000000003"), "{e}");
        assert!(SegmentHeader::parse("x", &[0; 10]).is_err());
        let mut short_header = header(1, 0, 1, 16 << 20);
        short_header[2] = 0;
        assert!(SegmentHeader::parse("x", &short_header).is_err());
        assert!(SegmentHeader::parse("x", &header(1, 0, 1, 12345)).is_err());
    }
}
