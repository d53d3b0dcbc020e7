//! The repository's on-target data structures: ids, config, pack headers,
//! index files, trees and snapshot manifests (see `docs/backup-format.md`).
//!
//! None of them refuses unknown fields: a newer build of the same major
//! format version may add fields, and this one must still read what it
//! wrote (the `version` module checks the major version first).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use atlas_core::error::{Error, Result};

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(crate) [u8; 32]);

        impl $name {
            /// A new random id (blob ids are hashes and never random).
            #[allow(dead_code)]
            pub(crate) fn random() -> Self {
                use rand::RngCore;
                let mut b = [0u8; 32];
                rand::rng().fill_bytes(&mut b);
                $name(b)
            }

            /// The id as 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }

            /// The first 8 hex digits, for display.
            pub fn short(&self) -> String {
                to_hex(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            /// Parses 64 hex digits.
            fn from_str(s: &str) -> Result<Self> {
                let bytes = from_hex(s)
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| Error::invalid($what, format!("{s:?} is not 64 hex digits")))?;
                let mut b = [0u8; 32];
                b.copy_from_slice(&bytes);
                Ok($name(b))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// The id of a blob: keyed BLAKE3 of its plaintext.
    BlobId, "blob_id"
);
hex_id!(
    /// The id of a pack file (random).
    PackId, "pack_id"
);
hex_id!(
    /// The id of a snapshot (random), the name of its manifest.
    SnapshotId, "snapshot_id"
);

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A directory listing (JSON).
    Tree,
}

impl BlobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// Chunker parameters, fixed per repository (dedup needs them constant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk in bytes (except a file's last). Default 256 KiB.
    pub min_size: u32,
    /// Average chunk in bytes. Default 1 MiB.
    pub avg_size: u32,
    /// Largest chunk in bytes. Default 4 MiB.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds FastCDC 2020 accepts and `min < avg < max`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as f;
        let check = |field: &str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                Err(Error::invalid(
                    format!("chunker.{field}"),
                    format!("must be between {lo} and {hi}, got {v}"),
                ))
            } else {
                Ok(())
            }
        };
        check("min_size", self.min_size, f::MINIMUM_MIN, f::MINIMUM_MAX)?;
        check("avg_size", self.avg_size, f::AVERAGE_MIN, f::AVERAGE_MAX)?;
        check("max_size", self.max_size, f::MAXIMUM_MIN, f::MAXIMUM_MAX)?;
        if !(self.min_size < self.avg_size && self.avg_size < self.max_size) {
            return Err(Error::invalid(
                "chunker",
                "must satisfy min_size < avg_size < max_size",
            ));
        }
        Ok(())
    }
}

/// The repository's `config` object (plaintext JSON; holds no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always `atlas-backup`.
    pub format: String,
    /// The config's major format version (1). A reader refuses a config
    /// of a newer major version and ignores fields it does not know.
    pub version: u32,
    /// Random repository id (64 hex digits); mirrors share it.
    pub id: String,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Pack size at which a pack is sealed, in bytes.
    pub pack_size: u32,
    /// zstd level for blobs (at least 3 for blobs under 128 KiB).
    pub compression_level: i32,
}

pub(crate) const FORMAT_NAME: &str = "atlas-backup";

// ---- packs ----

/// Magic at the very end of every pack.
pub(crate) const PACK_MAGIC: &[u8; 8] = b"ATLSPAK1";
/// Bytes of one header entry: kind, id, length, raw length.
pub(crate) const HEADER_ENTRY_LEN: usize = 1 + 32 + 4 + 4;
/// The associated data a pack's header is sealed under.
pub(crate) const PACK_HEADER_AAD: &[u8] = b"atlas-backup/pack-header";
/// Bytes after the encrypted header: its length (u32 LE) and the magic.
pub(crate) const PACK_TRAILER_LEN: usize = 4 + 8;

/// One blob inside a pack, as the pack header and the index list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedBlob {
    pub(crate) kind: BlobKind,
    pub(crate) id: BlobId,
    pub(crate) offset: u32,
    /// Stored (encrypted) length.
    pub(crate) length: u32,
    /// Plaintext length.
    pub(crate) raw_length: u32,
}

/// Where the sealed header of a pack of `size` bytes lies, from the pack's
/// last [`PACK_TRAILER_LEN`] bytes `trailer`: `(start, end)` byte offsets.
///
/// # Errors
/// What is wrong, when the trailer has no magic or its length points
/// outside the pack.
pub(crate) fn pack_header_span(size: u64, trailer: &[u8]) -> Result<(u64, u64), &'static str> {
    if size < PACK_TRAILER_LEN as u64
        || trailer.len() != PACK_TRAILER_LEN
        || &trailer[4..] != PACK_MAGIC
    {
        return Err("has no pack trailer (truncated or not a pack)");
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&trailer[..4]);
    let end = size - PACK_TRAILER_LEN as u64;
    let start = end
        .checked_sub(u64::from(u32::from_le_bytes(len)))
        .ok_or("header length points outside the pack")?;
    Ok((start, end))
}

pub(crate) fn encode_pack_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blobs.len() * HEADER_ENTRY_LEN);
    for b in blobs {
        out.push(b.kind.code());
        out.extend_from_slice(&b.id.0);
        out.extend_from_slice(&b.length.to_le_bytes());
        out.extend_from_slice(&b.raw_length.to_le_bytes());
    }
    out
}

pub(crate) fn decode_pack_header(plain: &[u8]) -> Option<Vec<PackedBlob>> {
    if !plain.len().is_multiple_of(HEADER_ENTRY_LEN) {
        return None;
    }
    let mut offset = 0u32;
    plain
        .chunks_exact(HEADER_ENTRY_LEN)
        .map(|e| {
            let kind = BlobKind::from_code(e[0])?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[1..33]);
            let length = u32::from_le_bytes(e[33..37].try_into().ok()?);
            let raw_length = u32::from_le_bytes(e[37..41].try_into().ok()?);
            let b = PackedBlob {
                kind,
                id: BlobId(id),
                offset,
                length,
                raw_length,
            };
            offset = offset.checked_add(length)?;
            Some(b)
        })
        .collect()
}

// ---- index files ----

/// An index file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    /// Index files this one replaces (written by prune); readers ignore the
    /// listed ones if they still exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) supersedes: Vec<String>,
    pub(crate) packs: Vec<IndexPack>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexPack {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    pub(crate) blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexBlob {
    pub(crate) id: BlobId,
    #[serde(rename = "type")]
    pub(crate) kind: BlobKind,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    pub(crate) raw_length: u32,
}

impl IndexPack {
    /// The index entry of a pack written with `blobs` in its header.
    pub(crate) fn of(id: PackId, size: u64, blobs: &[PackedBlob]) -> Self {
        IndexPack {
            id,
            size,
            blobs: blobs
                .iter()
                .map(|b| IndexBlob {
                    id: b.id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                })
                .collect(),
        }
    }
}

// ---- trees ----

/// What a tree node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name (UTF-8; see `name_bytes`).
    pub name: String,
    /// The name's raw bytes in hex, only when the name is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_bytes: Option<String>,
    /// Kind of entry.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_sec: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Size in bytes (files only).
    #[serde(default)]
    pub size: u64,
    /// Inode number, for change detection.
    #[serde(default)]
    pub inode: u64,
    /// Content chunks in order (files only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    /// Subtree (directories only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A directory listing, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries, sorted by name bytes.
    pub nodes: Vec<Node>,
}

// ---- snapshots ----

/// What kind of backup a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// Everything read and hashed again.
    Full,
    /// Unchanged files (size, mtime, inode) reuse the parent's chunk lists.
    Incremental,
    /// A consistent dump of a database at one point in time (a stream source).
    PointInTime,
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
            BackupKind::PointInTime => "point-in-time",
        })
    }
}

/// Totals of one backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTotals {
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot (the root included).
    pub dirs: u64,
    /// Symlinks in the snapshot.
    #[serde(default)]
    pub symlinks: u64,
    /// Special files skipped (fifos, sockets, devices).
    #[serde(default)]
    pub skipped: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Bytes of file content actually read (less than `bytes` when an
    /// incremental run reused unchanged files).
    #[serde(default)]
    pub bytes_read: u64,
    /// Plaintext bytes of blobs this backup added to the repository.
    pub new_bytes: u64,
    /// Bytes this backup added to the repository after compression and
    /// encryption (pack headers excluded).
    #[serde(default)]
    pub new_bytes_stored: u64,
    /// Content chunks referenced by the snapshot's files (with repeats).
    pub chunks: u64,
    /// Blobs (data and tree) this backup added.
    pub new_chunks: u64,
    /// Entries of the source that could not be read (vanished, unreadable,
    /// changed type) and are therefore missing from the snapshot; the first
    /// [`MAX_RECORDED_UNREADABLE`] of them are named in
    /// [`Snapshot::unreadable`]. Absent (0) in manifests written before it
    /// existed and in complete snapshots.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreadable: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How many unreadable entries a manifest names (their count is always
/// exact in [`SnapshotTotals::unreadable`]): enough to act on, while a
/// source full of unreadable files cannot bloat every listing of the
/// repository's snapshots.
pub const MAX_RECORDED_UNREADABLE: usize = 1000;

/// An entry of the source left out of a backup because it could not be
/// read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SkippedEntry {
    /// The entry's path relative to the source root, `/`-separated (lossy
    /// UTF-8 for names that are not).
    pub path: String,
    /// Why it was left out (the operation and the OS error).
    pub reason: String,
}

/// Permission bits and modification time of a snapshot's root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMetadata {
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_sec: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
}

/// A snapshot manifest: everything retention, listing and restore need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot's id (also the manifest's object name).
    pub id: SnapshotId,
    /// When the backup started (RFC 3339 in the manifest).
    #[serde(with = "rfc3339")]
    pub time: std::time::SystemTime,
    /// Name of the source, e.g. a directory path or `pg_dump:orders`.
    pub source: String,
    /// Paths the snapshot covers.
    pub paths: Vec<String>,
    /// Full, incremental or point-in-time.
    pub kind: BackupKind,
    /// Host that made the backup.
    pub host: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// The snapshot this one was compared with, if any.
    pub parent: Option<SnapshotId>,
    /// The root tree blob.
    pub tree: BlobId,
    /// Totals.
    pub totals: SnapshotTotals,
    /// Mode and mtime of the source directory itself (restored onto the
    /// destination of a whole-snapshot restore). `None` for stream sources
    /// and for manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootMetadata>,
    /// Entries left out because they could not be read (at most
    /// [`MAX_RECORDED_UNREADABLE`]; [`SnapshotTotals::unreadable`] has the
    /// count). Empty for a complete snapshot; see [`Snapshot::is_complete`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<SkippedEntry>,
}

impl Snapshot {
    /// Whether every entry of the source made it into the snapshot (no
    /// entry was left out as unreadable). Special files, which are never
    /// stored, do not make a snapshot incomplete.
    pub fn is_complete(&self) -> bool {
        self.totals.unreadable == 0
    }

    /// What [`retention`](crate::retention) needs of this snapshot
    /// (id as hex, time, host, paths, tags), for
    /// [`RetentionPolicy::apply`](crate::retention::RetentionPolicy::apply).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) when the time
    /// lies outside the range retention computes with (years -9999 to 9999).
    pub fn retention_info(&self) -> crate::Result<crate::retention::SnapshotInfo> {
        let time = jiff::Timestamp::try_from(self.time).map_err(|e| {
            crate::Error::invalid(
                format!("snapshot {}.time", self.id.short()),
                format!("out of range: {e}"),
            )
        })?;
        Ok(crate::retention::SnapshotInfo::new(self.id.to_hex(), time)
            .with_host(&self.host)
            .with_paths(self.paths.iter())
            .with_tags(self.tags.iter()))
    }
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_nanos(*t).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// A lock object's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LockFile {
    pub(crate) exclusive: bool,
    pub(crate) holder: String,
    #[serde(with = "rfc3339")]
    pub(crate) created: std::time::SystemTime,
    #[serde(with = "rfc3339")]
    pub(crate) expires: std::time::SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_ids_round_trip() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(from_hex("0g"), None);
        let id = BlobId::random();
        assert_eq!(id.to_hex().parse::<BlobId>().unwrap(), id);
        assert!("abc".parse::<SnapshotId>().is_err());
    }

    #[test]
    fn pack_headers_round_trip_with_offsets() {
        let blobs = vec![
            PackedBlob {
                kind: BlobKind::Data,
                id: BlobId([1; 32]),
                offset: 0,
                length: 100,
                raw_length: 90,
            },
            PackedBlob {
                kind: BlobKind::Tree,
                id: BlobId([2; 32]),
                offset: 100,
                length: 7,
                raw_length: 5,
            },
        ];
        assert_eq!(
            decode_pack_header(&encode_pack_header(&blobs)).unwrap(),
            blobs
        );
        assert!(decode_pack_header(&[1, 2, 3]).is_none());
    }

    /// A manifest as written before `root`, `unreadable` and
    /// `totals.unreadable` existed.
    const OLD_MANIFEST: &str = r#"{
        "id": "0101010101010101010101010101010101010101010101010101010101010101",
        "time": "2025-01-02T03:04:05.000000006Z",
        "source": "/var/lib/app", "paths": ["/var/lib/app"], "kind": "full",
        "host": "db1", "tags": ["nightly"], "parent": null,
        "tree": "0202020202020202020202020202020202020202020202020202020202020202",
        "totals": { "files": 1, "dirs": 1, "symlinks": 0, "skipped": 0, "bytes": 5,
                    "bytes_read": 5, "new_bytes": 5, "new_bytes_stored": 40,
                    "chunks": 1, "new_chunks": 2 }
    }"#;

    #[test]
    fn manifests_without_the_newer_fields_still_read() {
        let s: Snapshot = serde_json::from_str(OLD_MANIFEST).unwrap();
        assert_eq!(s.root, None);
        assert!(s.unreadable.is_empty());
        assert_eq!(s.totals.unreadable, 0);
        assert!(s.is_complete());
        // Written back, a complete snapshot without root metadata carries
        // none of the new fields, so older readers still accept it.
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            !json.contains("unreadable") && !json.contains("root"),
            "{json}"
        );
    }

    #[test]
    fn root_metadata_and_unreadable_entries_round_trip() {
        let mut s: Snapshot = serde_json::from_str(OLD_MANIFEST).unwrap();
        s.root = Some(RootMetadata {
            mode: 0o751,
            mtime_sec: -5,
            mtime_nsec: 7,
        });
        s.totals.unreadable = 1;
        s.unreadable = vec![SkippedEntry {
            path: "a/b".into(),
            reason: "cannot open: No such file or directory (os error 2)".into(),
        }];
        let json = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(!back.is_complete());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["root"]["mode"], 0o751);
        assert_eq!(v["totals"]["unreadable"], 1);
        assert_eq!(v["unreadable"][0]["path"], "a/b");
    }

    #[test]
    fn chunker_params_are_checked() {
        assert!(ChunkerParams::default().validate().is_ok());
        let bad = ChunkerParams {
            min_size: 10,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("chunker.min_size")
        );
    }
}
