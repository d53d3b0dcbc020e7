//! What backing up and restoring a directory tree needs from the operating
//! system, with the Unix behaviour and a documented fallback elsewhere.
//!
//! On Unix, backup records each entry's permission bits (`st_mode &
//! 0o7777`), its mtime to the nanosecond, its inode (for change detection)
//! and the exact bytes of a name that is not UTF-8; files are opened with
//! `O_NOFOLLOW | O_NONBLOCK`, so an entry swapped for a symlink or a fifo
//! after its directory was listed is refused rather than followed or waited
//! on. Restore recreates symlinks and sets permission bits, directory
//! mtimes and a symlink's own mtime.
//!
//! Elsewhere (e.g. Windows), there are no Unix permission bits, inodes,
//! fifos or exact byte names: backup records mode `0o644` for files and
//! `0o755` for directories (`0o444`/`0o555` when read-only), inode 0 (an
//! incremental run then compares size and mtime only), names as UTF-8
//! (lossily when they are not), and opens files without those flags.
//! Restore leaves permission bits and directory and symlink mtimes as
//! created (file mtimes are still set), writes names stored as raw bytes
//! under their lossy UTF-8 form, refuses names containing `\`, and does not
//! recreate symlinks (each is skipped with a warning). Ownership is not
//! recorded or restored on any platform.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::path::Path;
use std::time::SystemTime;

/// The permission bits of an entry, as stored in a tree.
pub(crate) fn mode_of(meta: &Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        match (meta.is_dir(), meta.permissions().readonly()) {
            (true, false) => 0o755,
            (true, true) => 0o555,
            (false, false) => 0o644,
            (false, true) => 0o444,
        }
    }
}

/// The modification time of an entry: seconds since the Unix epoch (negative
/// before it) and nanoseconds.
pub(crate) fn mtime_of(meta: &Metadata) -> (i64, u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
    }
    #[cfg(not(unix))]
    {
        match meta.modified() {
            Ok(t) => split_time(t),
            Err(_) => (0, 0),
        }
    }
}

/// `t` as seconds since the Unix epoch (floored) and nanoseconds.
#[cfg_attr(unix, allow(dead_code))]
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// The inode number of an entry, for change detection; 0 where there is none.
pub(crate) fn inode_of(meta: &Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// The exact bytes of a name, to store beside its lossy UTF-8 form when it
/// is not UTF-8; `None` where names have no byte form a restore could use.
pub(crate) fn name_bytes(name: &OsStr) -> Option<&[u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Some(name.as_bytes())
    }
    #[cfg(not(unix))]
    {
        let _ = name;
        None
    }
}

/// The name whose exact bytes are `raw`; `None` where names cannot be made
/// from bytes (the caller then uses the lossy UTF-8 form).
pub(crate) fn name_from_bytes(raw: Vec<u8>) -> Option<OsString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        Some(OsString::from_vec(raw))
    }
    #[cfg(not(unix))]
    {
        let _ = raw;
        None
    }
}

/// Whether `name` (already free of `/` and NUL) is unsafe as one path
/// segment on this platform: `\` separates paths on Windows.
pub(crate) fn has_foreign_separator(name: &str) -> bool {
    cfg!(not(unix)) && name.contains('\\')
}

/// Opens `path` for reading without following a symlink and without
/// waiting on a fifo (Unix): the entry was a regular file when its
/// directory was listed, but may have been replaced since.
pub(crate) fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK);
    }
    options.open(path)
}

/// The process's umask, read without changing it (`umask(2)` can only
/// set it, which would race with other threads creating files): from
/// `/proc/self/status` on Linux, unknown elsewhere.
pub(crate) fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Sets the permission bits of the open `file` (Unix; elsewhere nothing to do).
pub(crate) fn set_file_mode(file: &File, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, mode);
        Ok(())
    }
}

/// Writes all of `buf` at `offset` of `file`, which this call alone uses.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(buf)
    }
}

/// Whether restore recreates symlinks here (Unix only).
pub(crate) const RESTORES_SYMLINKS: bool = cfg!(unix);

/// Whether the process `pid` of this machine has ended. On Unix, a signal
/// 0 that fails with ESRCH says so (EPERM means it runs as another user);
/// elsewhere this cannot be told and the answer is `false`, leaving the
/// lock's expiry to decide.
pub(crate) fn process_has_ended(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(raw) = i32::try_from(pid) else {
            return false;
        };
        if raw <= 0 {
            return false;
        }
        matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_split_around_the_epoch() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(split_time(epoch + Duration::new(5, 7)), (5, 7));
        assert_eq!(split_time(epoch - Duration::new(5, 0)), (-5, 0));
        assert_eq!(
            split_time(epoch - Duration::new(5, 250_000_000)),
            (-6, 750_000_000)
        );
    }

    #[cfg(unix)]
    #[test]
    fn unix_metadata_is_read_as_stored() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert_eq!(mode_of(&meta), 0o640);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(inode_of(&meta), meta.ino());
        assert_eq!(mtime_of(&meta).0, meta.mtime());
    }
}
