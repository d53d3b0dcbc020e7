//! The restore destination: every write goes below one directory handle,
//! path component by path component, and no symlink on the way is
//! followed.
//!
//! On Unix each step is an `openat` with `O_NOFOLLOW | O_DIRECTORY` from
//! the directory before it, entries are created with `mkdirat`,
//! `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`, `symlinkat` and replaced with
//! `renameat`, so a symlink already in the destination (or one put there
//! while the restore runs) is never written through: where the snapshot
//! needs a directory, a symlink, a file or anything else that is not a
//! directory is refused with a [`RestoreConflict`] naming the path. A file
//! or symlink where the snapshot has a file or a symlink is replaced (the
//! entry itself; what a symlink points to is not touched); a directory
//! there is refused. Elsewhere the same checks are made on paths with
//! `symlink_metadata`, which a concurrent change can race.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::repo::error::BACKEND;
use atlas_core::error::{Error, Result};

/// A kind of directory entry, in a [`RestoreConflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// Anything else: a fifo, a socket, a device.
    Other,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "special file",
        })
    }
}

/// An entry already in a restore's destination that stands where the
/// snapshot has an entry of another kind: a symlink or a file where the
/// snapshot has a directory (restore never writes through a symlink it did
/// not create), or a directory where it has a file or a symlink. Attached
/// as the `source` of the [`Error::Backend`] that reports it:
/// [`restore_conflict`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreConflict {
    /// The path in the destination.
    pub path: PathBuf,
    /// What the snapshot has at that path.
    pub wanted: EntryKind,
    /// What the destination has there.
    pub found: EntryKind,
}

impl fmt::Display for RestoreConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot restore {}: the destination has a {} where the snapshot has a {}",
            self.path.display(),
            self.found,
            self.wanted
        )?;
        if self.found == EntryKind::Symlink && self.wanted == EntryKind::Directory {
            f.write_str(" (restore does not write through a symlink it did not create)")?;
        }
        Ok(())
    }
}

impl std::error::Error for RestoreConflict {}

impl RestoreConflict {
    fn into_error(self) -> Error {
        Error::backend_with(BACKEND, self.to_string(), self)
    }
}

/// The [`RestoreConflict`] inside `err`, if it reports one.
pub fn restore_conflict(err: &Error) -> Option<&RestoreConflict> {
    std::error::Error::source(err).and_then(|s| s.downcast_ref::<RestoreConflict>())
}

fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::backend_with(BACKEND, format!("{what} {}: {e}", path.display()), e)
}

/// The destination directory of one restore. Paths given to its methods
/// are relative to it and made of plain names only.
#[derive(Debug)]
pub(super) struct Dest {
    /// The destination as given, for messages.
    path: PathBuf,
    /// Where every walk starts: the destination's handle (its path outside
    /// Unix).
    root: DirHandle,
}

/// `rel` split into its parent (relative) and its last name.
fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a path below the destination",
        )),
    }
}

/// The names of `rel`, refusing anything but plain names.
fn names(rel: &Path) -> impl Iterator<Item = io::Result<&OsStr>> {
    rel.components().map(|c| match c {
        Component::Normal(name) => Ok(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a path below the destination",
        )),
    })
}

impl Dest {
    /// Creates the destination `path` if missing (symlinks in `path`
    /// itself are the caller's choice and are followed) and opens it.
    pub(super) fn open(path: &Path) -> Result<Dest> {
        std::fs::create_dir_all(path).map_err(|e| io_err(path, "cannot create", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let root = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECTORY)
                .open(path)
                .map_err(|e| io_err(path, "cannot open", e))?;
            Ok(Dest {
                path: path.to_path_buf(),
                root,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Dest {
                path: path.to_path_buf(),
                root: path.to_path_buf(),
            })
        }
    }

    /// `rel` as a path under the destination, for messages.
    pub(super) fn shown(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    fn conflict(&self, rel: &Path, wanted: EntryKind, found: EntryKind) -> Error {
        tracing::debug!(path = %self.shown(rel).display(), %wanted, %found, "restore found an entry in the way");
        RestoreConflict {
            path: self.shown(rel),
            wanted,
            found,
        }
        .into_error()
    }

    /// Creates the directory `rel` (its parent exists) unless a directory
    /// is there already.
    ///
    /// # Errors
    /// A [`RestoreConflict`] when something else is at `rel` or on the
    /// way to it; I/O errors naming the path.
    pub(super) fn create_dir(&self, rel: &Path) -> Result<()> {
        let shown = self.shown(rel);
        let (parent, name) = split(rel).map_err(|e| io_err(&shown, "cannot create", e))?;
        let dir = self.open_dir(parent)?;
        sys_create_dir(&dir, name).map_err(|e| io_err(&shown, "cannot create", e))?;
        // Whatever was there, `rel` must now be a real directory.
        self.open_dir(rel).map(drop)
    }

    /// Creates the new file `rel` (a name nothing else uses) with `len`
    /// bytes, ready to be written at any offset.
    pub(super) fn create_file(&self, rel: &Path, len: u64) -> Result<()> {
        let shown = self.shown(rel);
        let (parent, name) = split(rel).map_err(|e| io_err(&shown, "cannot create", e))?;
        let dir = self.open_dir(parent)?;
        let file =
            sys_open_file(&dir, name, true).map_err(|e| io_err(&shown, "cannot create", e))?;
        file.set_len(len)
            .map_err(|e| io_err(&shown, "cannot size", e))
    }

    /// Opens the file `rel` for writing, following no symlink.
    pub(super) fn open_file(&self, rel: &Path) -> Result<File> {
        let shown = self.shown(rel);
        let (parent, name) = split(rel).map_err(|e| io_err(&shown, "cannot open", e))?;
        let dir = self.open_dir(parent)?;
        sys_open_file(&dir, name, false).map_err(|e| io_err(&shown, "cannot open", e))
    }

    /// Removes the file `rel`, if it is there (a temporary file that could
    /// not be completed).
    pub(super) fn remove_file(&self, rel: &Path) {
        if let Ok((parent, name)) = split(rel)
            && let Ok(dir) = self.open_dir(parent)
        {
            let _ = sys_remove(&dir, name);
        }
    }

    /// Checks that an entry of kind `wanted` can be put at `rel`: nothing
    /// is there, or a file or symlink the restore may replace.
    pub(super) fn check_replaceable(&self, rel: &Path, wanted: EntryKind) -> Result<()> {
        let shown = self.shown(rel);
        let (parent, name) = split(rel).map_err(|e| io_err(&shown, "cannot check", e))?;
        let dir = self.open_dir(parent)?;
        self.replaceable_in(&dir, rel, name, wanted).map(drop)
    }

    /// What is at `name` in `dir` (that is, at `rel`), if the restore may
    /// replace it with an entry of kind `wanted`.
    fn replaceable_in(
        &self,
        dir: &DirHandle,
        rel: &Path,
        name: &OsStr,
        wanted: EntryKind,
    ) -> Result<Option<EntryKind>> {
        match sys_kind(dir, name) {
            Ok(Some(EntryKind::Directory)) => Err(self.conflict(rel, wanted, EntryKind::Directory)),
            Ok(found) => Ok(found),
            Err(e) => Err(io_err(&self.shown(rel), "cannot check", e)),
        }
    }

    /// Moves the file `from` to `to` in the same directory, replacing a
    /// file or symlink at `to` (the entry, not what it points to).
    pub(super) fn rename_into(&self, from: &Path, to: &Path) -> Result<()> {
        let shown = self.shown(to);
        let (parent, from_name) =
            split(from).map_err(|e| io_err(&shown, "cannot rename into", e))?;
        let (_, to_name) = split(to).map_err(|e| io_err(&shown, "cannot rename into", e))?;
        let dir = self.open_dir(parent)?;
        self.replaceable_in(&dir, to, to_name, EntryKind::File)?;
        sys_rename(&dir, from_name, to_name).map_err(|e| io_err(&shown, "cannot rename into", e))
    }

    /// Creates the symlink `rel` pointing to `target`, replacing a file or
    /// symlink there, and gives the link itself the mtime `sec`.`nsec`.
    pub(super) fn symlink(&self, rel: &Path, target: &str, sec: i64, nsec: u32) -> Result<()> {
        let shown = self.shown(rel);
        let (parent, name) = split(rel).map_err(|e| io_err(&shown, "cannot create symlink", e))?;
        let dir = self.open_dir(parent)?;
        if self
            .replaceable_in(&dir, rel, name, EntryKind::Symlink)?
            .is_some()
        {
            sys_remove(&dir, name).map_err(|e| io_err(&shown, "cannot replace", e))?;
        }
        sys_symlink(&dir, name, target).map_err(|e| io_err(&shown, "cannot create symlink", e))?;
        sys_set_symlink_mtime(&dir, name, sec, nsec)
            .map_err(|e| io_err(&shown, "cannot set mtime of", e))
    }

    /// Sets the permission bits (Unix) and mtime of the directory `rel`
    /// (`""`: the destination itself).
    pub(super) fn set_dir_metadata(&self, rel: &Path, mode: u32, mtime: SystemTime) -> Result<()> {
        let shown = self.shown(rel);
        let dir = self.open_dir(rel)?;
        sys_set_dir_metadata(&dir, mode, mtime)
            .map_err(|e| io_err(&shown, "cannot set metadata of", e))
    }

    /// Opens the directory `rel`, one name at a time, following no
    /// symlink; `""` is the destination itself.
    fn open_dir(&self, rel: &Path) -> Result<DirHandle> {
        let mut so_far = PathBuf::new();
        let mut dir: Option<DirHandle> = None;
        for name in names(rel) {
            let name = name.map_err(|e| io_err(&self.shown(rel), "cannot open", e))?;
            so_far.push(name);
            let from = dir.as_ref().unwrap_or(&self.root);
            dir = Some(match sys_open_dir(from, name) {
                Ok(next) => next,
                Err(e) => {
                    return Err(match sys_kind(from, name) {
                        Ok(Some(found)) if found != EntryKind::Directory => {
                            self.conflict(&so_far, EntryKind::Directory, found)
                        }
                        _ => io_err(&self.shown(&so_far), "cannot open", e),
                    });
                }
            });
        }
        match dir {
            Some(dir) => Ok(dir),
            None => self
                .root_handle()
                .map_err(|e| io_err(&self.path, "cannot open", e)),
        }
    }
}

// ---------------------------------------------------------------------------
// Unix: handles and the *at calls.

#[cfg(unix)]
type DirHandle = File;

#[cfg(unix)]
impl Dest {
    fn root_handle(&self) -> io::Result<DirHandle> {
        self.root.try_clone()
    }
}

/// Creates the directory `name` in `dir`; something already there is for
/// the caller to look at.
#[cfg(unix)]
fn sys_create_dir(dir: &DirHandle, name: &OsStr) -> io::Result<()> {
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o777);
    match nix::sys::stat::mkdirat(dir, name, mode) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(unix)]
fn sys_open_dir(dir: &DirHandle, name: &OsStr) -> io::Result<DirHandle> {
    use nix::fcntl::{OFlag, openat};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(File::from(openat(
        dir,
        name,
        flags,
        nix::sys::stat::Mode::empty(),
    )?))
}

#[cfg(unix)]
fn sys_open_file(dir: &DirHandle, name: &OsStr, create: bool) -> io::Result<File> {
    use nix::fcntl::{OFlag, openat};
    let mut flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if create {
        flags |= OFlag::O_CREAT | OFlag::O_EXCL;
    }
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    Ok(File::from(openat(dir, name, flags, mode)?))
}

/// What `name` in `dir` is, without following it; `None` if nothing.
#[cfg(unix)]
fn sys_kind(dir: &DirHandle, name: &OsStr) -> io::Result<Option<EntryKind>> {
    use nix::libc::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
    match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(match st.st_mode & S_IFMT {
            S_IFDIR => EntryKind::Directory,
            S_IFLNK => EntryKind::Symlink,
            S_IFREG => EntryKind::File,
            _ => EntryKind::Other,
        })),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(unix)]
fn sys_remove(dir: &DirHandle, name: &OsStr) -> io::Result<()> {
    Ok(nix::unistd::unlinkat(
        dir,
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )?)
}

#[cfg(unix)]
fn sys_rename(dir: &DirHandle, from: &OsStr, to: &OsStr) -> io::Result<()> {
    Ok(nix::fcntl::renameat(dir, from, dir, to)?)
}

#[cfg(unix)]
fn sys_symlink(dir: &DirHandle, name: &OsStr, target: &str) -> io::Result<()> {
    Ok(nix::unistd::symlinkat(target, dir, name)?)
}

#[cfg(unix)]
fn sys_set_symlink_mtime(dir: &DirHandle, name: &OsStr, sec: i64, nsec: u32) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(sec as _, nsec as _);
    Ok(utimensat(
        dir,
        name,
        &TimeSpec::UTIME_OMIT,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )?)
}

#[cfg(unix)]
fn sys_set_dir_metadata(dir: &DirHandle, mode: u32, mtime: SystemTime) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    dir.set_permissions(std::fs::Permissions::from_mode(mode))?;
    dir.set_times(std::fs::FileTimes::new().set_modified(mtime))
}

// ---------------------------------------------------------------------------
// Elsewhere: paths, checked with symlink_metadata before each step.

#[cfg(not(unix))]
type DirHandle = PathBuf;

#[cfg(not(unix))]
impl Dest {
    fn root_handle(&self) -> io::Result<DirHandle> {
        Ok(self.root.clone())
    }
}

#[cfg(not(unix))]
fn sys_create_dir(dir: &DirHandle, name: &OsStr) -> io::Result<()> {
    match std::fs::create_dir(dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(not(unix))]
fn sys_open_dir(dir: &DirHandle, name: &OsStr) -> io::Result<DirHandle> {
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path)?.is_dir() {
        Ok(path)
    } else {
        Err(io::Error::other("not a directory"))
    }
}

#[cfg(not(unix))]
fn sys_open_file(dir: &DirHandle, name: &OsStr, create: bool) -> io::Result<File> {
    let path = dir.join(name);
    if !create && !std::fs::symlink_metadata(&path)?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(create)
        .open(path)
}

#[cfg(not(unix))]
fn sys_kind(dir: &DirHandle, name: &OsStr) -> io::Result<Option<EntryKind>> {
    match std::fs::symlink_metadata(dir.join(name)) {
        Ok(m) if m.is_dir() => Ok(Some(EntryKind::Directory)),
        Ok(m) if m.is_symlink() => Ok(Some(EntryKind::Symlink)),
        Ok(m) if m.is_file() => Ok(Some(EntryKind::File)),
        Ok(_) => Ok(Some(EntryKind::Other)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn sys_remove(dir: &DirHandle, name: &OsStr) -> io::Result<()> {
    std::fs::remove_file(dir.join(name))
}

#[cfg(not(unix))]
fn sys_rename(dir: &DirHandle, from: &OsStr, to: &OsStr) -> io::Result<()> {
    std::fs::rename(dir.join(from), dir.join(to))
}

#[cfg(not(unix))]
fn sys_symlink(_dir: &DirHandle, _name: &OsStr, _target: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are restored on Unix only",
    ))
}

#[cfg(not(unix))]
fn sys_set_symlink_mtime(_dir: &DirHandle, _name: &OsStr, _sec: i64, _nsec: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(not(unix))]
fn sys_set_dir_metadata(_dir: &DirHandle, _mode: u32, _mtime: SystemTime) -> io::Result<()> {
    // No Unix permission bits, and a directory cannot be opened as a file
    // portably: left as created.
    Ok(())
}

/// A name for a file's temporary copy beside it: hidden, and unique.
pub(super) fn temporary_name(name: &OsStr, unique: &str) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".atlas-restore-{unique}"));
    tmp
}
