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
//!
//! Walking every path from the destination's handle would cost one
//! `openat` per directory level for each write; a restore makes several
//! writes per file, and a source tree holds tens of thousands of small
//! files several levels deep. So the handles of recently used directories
//! are kept ([`DirHandles`]), and a walk starts from the nearest one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::repo::error::BACKEND;
use crate::repo::platform;
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
/// are relative to it and made of plain names only. Shared by the
/// restore's workers; the directory handles it keeps are closed when it is
/// dropped, at the end of the restore.
#[derive(Debug)]
pub(super) struct Dest {
    /// The destination as given, for messages.
    path: PathBuf,
    /// Where every walk starts: the destination's handle (its path outside
    /// Unix).
    root: Arc<DirHandle>,
    /// Handles of directories below the destination opened before.
    dirs: Mutex<DirHandles>,
    /// The destination was empty (or missing) when the restore opened it.
    was_empty: bool,
    /// The process's umask, when known: what a mode given at creation
    /// becomes, so that a `chmod` that would change nothing is left out.
    umask: Option<u32>,
}

/// How many directory handles a restore keeps open on Unix: a quarter of
/// the usual soft limit of 1024 descriptors per process, and more than the
/// directories the blobs of the packs restored at once go to in a source
/// tree. Outside Unix a "handle" is a path, which a later step would follow
/// to wherever it leads by then, so none is kept.
const DIR_HANDLES: usize = if cfg!(unix) { 256 } else { 0 };

/// Open handles of directories below the destination, by their path
/// relative to it, the least recently used dropped first.
///
/// Keeping a handle does not weaken the no-symlink rule. Each was opened
/// with `O_NOFOLLOW | O_DIRECTORY` from the handle of its parent, itself
/// kept or opened the same way from the destination's, so it names the
/// directory that was at its path below the destination when it was
/// opened, never a symlink's target. Swapping a name on its path for a
/// symlink later changes what the path leads to, not what the handle
/// names: writes through a kept handle still land in that directory. The
/// directory itself can only leave the destination by a rename, and moving
/// it somewhere takes write permission there, which is the power to put
/// files there anyway; a walk done afresh for every write has the same
/// window between its `openat` and its write. The restore itself never
/// removes or replaces a directory (it refuses to), so a kept handle
/// names the directory at its path for as long as nothing else changes
/// the destination.
#[derive(Debug)]
struct DirHandles {
    /// Each handle with the tick of its last use.
    open: HashMap<PathBuf, (Arc<DirHandle>, u64)>,
    /// Counts lookups and insertions: a use's tick is unique.
    tick: u64,
    /// At most this many handles are kept.
    bound: usize,
}

impl DirHandles {
    fn new(bound: usize) -> Self {
        DirHandles {
            open: HashMap::new(),
            tick: 0,
            bound,
        }
    }

    fn get(&mut self, rel: &Path) -> Option<Arc<DirHandle>> {
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(rel).map(|(handle, used)| {
            *used = tick;
            handle.clone()
        })
    }

    /// Keeps `handle` as the directory `rel`. When the bound is reached,
    /// the older half is dropped at once, so that finding what to drop
    /// costs little per insertion. A dropped handle another worker still
    /// holds stays open until that worker is done with it.
    fn insert(&mut self, rel: PathBuf, handle: Arc<DirHandle>) {
        if self.bound == 0 {
            return;
        }
        if self.open.len() >= self.bound {
            let keep = self.bound / 2;
            tracing::trace!(
                kept = keep,
                bound = self.bound,
                "restore closes its least recently used directory handles"
            );
            let mut uses: Vec<u64> = self.open.values().map(|(_, used)| *used).collect();
            match uses.len().checked_sub(keep) {
                Some(at) if keep > 0 => {
                    let (_, oldest_kept, _) = uses.select_nth_unstable(at);
                    let oldest_kept = *oldest_kept;
                    self.open.retain(|_, (_, used)| *used >= oldest_kept);
                }
                _ => self.open.clear(),
            }
        }
        self.tick += 1;
        self.open.insert(rel, (handle, self.tick));
    }
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
        Dest::with_dir_handles(path, DIR_HANDLES)
    }

    /// [`Dest::open`], keeping at most `bound` directory handles.
    pub(super) fn with_dir_handles(path: &Path, bound: usize) -> Result<Dest> {
        std::fs::create_dir_all(path).map_err(|e| io_err(path, "cannot create", e))?;
        let was_empty = std::fs::read_dir(path)
            .map_err(|e| io_err(path, "cannot list", e))?
            .next()
            .is_none();
        #[cfg(unix)]
        let root = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECTORY)
                .open(path)
                .map_err(|e| io_err(path, "cannot open", e))?
        };
        #[cfg(not(unix))]
        let root = path.to_path_buf();
        Ok(Dest {
            path: path.to_path_buf(),
            root: Arc::new(root),
            dirs: Mutex::new(DirHandles::new(bound)),
            was_empty,
            umask: platform::umask(),
        })
    }

    /// Whether the destination was empty (or missing) when it was opened:
    /// then nothing of its own can be in the way of what the restore
    /// writes into it.
    pub(super) fn was_empty(&self) -> bool {
        self.was_empty
    }

    /// Whether an entry created with the permission bits of `mode` (as
    /// [`create_file_with_mode`](Self::create_file_with_mode) and
    /// [`create_dir`](Self::create_dir) do, less the umask) still needs a
    /// `chmod` to get `mode`: always when the umask is not known, and for
    /// the set-id and sticky bits, which creation does not give.
    pub(super) fn needs_chmod(&self, mode: u32, created_with: u32) -> bool {
        match self.umask {
            Some(umask) => mode & 0o7777 != created_with & 0o777 & !umask,
            None => true,
        }
    }

    /// How many directory handles are kept now.
    #[cfg(test)]
    pub(super) fn dir_handles_kept(&self) -> usize {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .len()
    }

    /// `rel` as a path under the destination, for messages.
    pub(super) fn shown(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// An I/O error at `rel` saying what failed; the path is made only
    /// when it is needed.
    fn failed<'a>(&'a self, rel: &'a Path, what: &'a str) -> impl Fn(io::Error) -> Error + 'a {
        move |e| io_err(&self.shown(rel), what, e)
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

    /// Creates the directory `rel` (its parent exists; mode `0o777` less
    /// the umask) unless a directory is there already. Returns whether
    /// this call created it: a directory made by the restore holds nothing
    /// but what the restore puts there.
    ///
    /// # Errors
    /// A [`RestoreConflict`] when something else is at `rel` or on the
    /// way to it; I/O errors naming the path.
    pub(super) fn create_dir(&self, rel: &Path) -> Result<bool> {
        let (parent, name) = split(rel).map_err(self.failed(rel, "cannot create"))?;
        let dir = self.open_dir(parent)?;
        let created = sys_create_dir(&dir, name).map_err(self.failed(rel, "cannot create"))?;
        // Whatever was there, `rel` must now be a real directory.
        self.open_dir(rel).map(|_| created)
    }

    /// Creates the new file `rel` (a name nothing else uses) with `len`
    /// bytes, ready to be written at any offset.
    pub(super) fn create_file(&self, rel: &Path, len: u64) -> Result<()> {
        let (parent, name) = split(rel).map_err(self.failed(rel, "cannot create"))?;
        let dir = self.open_dir(parent)?;
        let file = sys_open_file(&dir, name, true).map_err(self.failed(rel, "cannot create"))?;
        file.set_len(len).map_err(self.failed(rel, "cannot size"))
    }

    /// Creates the file `rel`, which must not exist, with the permission
    /// bits of `mode` (less the umask), and opens it for writing. For a
    /// file written through this one handle: a file created without
    /// write permission cannot be opened again to write.
    pub(super) fn create_file_with_mode(&self, rel: &Path, mode: u32) -> Result<File> {
        let (parent, name) = split(rel).map_err(self.failed(rel, "cannot create"))?;
        let dir = self.open_dir(parent)?;
        sys_create_file(&dir, name, mode & 0o777).map_err(self.failed(rel, "cannot create"))
    }

    /// Opens the file `rel` for writing, following no symlink.
    pub(super) fn open_file(&self, rel: &Path) -> Result<File> {
        let (parent, name) = split(rel).map_err(self.failed(rel, "cannot open"))?;
        let dir = self.open_dir(parent)?;
        sys_open_file(&dir, name, false).map_err(self.failed(rel, "cannot open"))
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
        let (parent, name) = split(rel).map_err(self.failed(rel, "cannot check"))?;
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
            Err(e) => Err(self.failed(rel, "cannot check")(e)),
        }
    }

    /// Moves the file `from` to `to` in the same directory, replacing a
    /// file or symlink at `to` (the entry, not what it points to).
    pub(super) fn rename_into(&self, from: &Path, to: &Path) -> Result<()> {
        let (parent, from_name) = split(from).map_err(self.failed(to, "cannot rename into"))?;
        let (_, to_name) = split(to).map_err(self.failed(to, "cannot rename into"))?;
        let dir = self.open_dir(parent)?;
        // A rename never replaces a directory with a file: what is at `to`
        // is looked at only when the rename fails, to say why.
        sys_rename(&dir, from_name, to_name).or_else(|e| {
            self.replaceable_in(&dir, to, to_name, EntryKind::File)?;
            Err(self.failed(to, "cannot rename into")(e))
        })
    }

    /// Creates the symlink `rel` pointing to `target`, replacing a file or
    /// symlink there, and gives the link itself the mtime `sec`.`nsec`.
    pub(super) fn symlink(&self, rel: &Path, target: &str, sec: i64, nsec: u32) -> Result<()> {
        let (parent, name) = split(rel).map_err(self.failed(rel, "cannot create symlink"))?;
        let dir = self.open_dir(parent)?;
        if self
            .replaceable_in(&dir, rel, name, EntryKind::Symlink)?
            .is_some()
        {
            sys_remove(&dir, name).map_err(self.failed(rel, "cannot replace"))?;
        }
        sys_symlink(&dir, name, target).map_err(self.failed(rel, "cannot create symlink"))?;
        sys_set_symlink_mtime(&dir, name, sec, nsec)
            .map_err(self.failed(rel, "cannot set mtime of"))
    }

    /// Sets the permission bits (Unix) and mtime of the directory `rel`
    /// (`""`: the destination itself).
    /// With `mode` `None`, the mtime only.
    pub(super) fn set_dir_metadata(
        &self,
        rel: &Path,
        mode: Option<u32>,
        mtime: SystemTime,
    ) -> Result<()> {
        let dir = self.open_dir(rel)?;
        sys_set_dir_metadata(&dir, mode, mtime).map_err(self.failed(rel, "cannot set metadata of"))
    }

    /// Opens the directory `rel`, following no symlink; `""` is the
    /// destination itself. The walk starts from the nearest kept handle on
    /// the way (the destination's at worst) and goes one name at a time,
    /// keeping the handle of every directory it opens.
    fn open_dir(&self, rel: &Path) -> Result<Arc<DirHandle>> {
        let (start, mut dir) = {
            let mut kept = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            // Most lookups are of a directory kept already.
            if let Some(dir) = kept.get(rel) {
                return Ok(dir);
            }
            rel.ancestors()
                .skip(1)
                .find_map(|at| {
                    if at.as_os_str().is_empty() {
                        Some((at, self.root.clone()))
                    } else {
                        kept.get(at).map(|dir| (at, dir))
                    }
                })
                .unwrap_or((Path::new(""), self.root.clone()))
        };
        let rest = rel.strip_prefix(start).unwrap_or(rel);
        let mut so_far = start.to_path_buf();
        for name in names(rest) {
            let name = name.map_err(self.failed(rel, "cannot open"))?;
            so_far.push(name);
            dir = match sys_open_dir(&dir, name) {
                Ok(next) => Arc::new(next),
                Err(e) => {
                    return Err(match sys_kind(&dir, name) {
                        Ok(Some(found)) if found != EntryKind::Directory => {
                            self.conflict(&so_far, EntryKind::Directory, found)
                        }
                        _ => io_err(&self.shown(&so_far), "cannot open", e),
                    });
                }
            };
            self.dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(so_far.clone(), dir.clone());
        }
        Ok(dir)
    }
}

// ---------------------------------------------------------------------------
// Unix: handles and the *at calls.

#[cfg(unix)]
type DirHandle = File;

/// Creates the directory `name` in `dir`, saying whether it did;
/// something already there is for the caller to look at.
#[cfg(unix)]
fn sys_create_dir(dir: &DirHandle, name: &OsStr) -> io::Result<bool> {
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o777);
    match nix::sys::stat::mkdirat(dir, name, mode) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
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

/// Creates the file `name` in `dir` (it must not exist) with the
/// permission bits `mode`, open for writing.
#[cfg(unix)]
fn sys_create_file(dir: &DirHandle, name: &OsStr, mode: u32) -> io::Result<File> {
    use nix::fcntl::{OFlag, openat};
    let flags =
        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_CREAT | OFlag::O_EXCL;
    let mode = nix::sys::stat::Mode::from_bits_truncate(mode as nix::libc::mode_t);
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
fn sys_set_dir_metadata(dir: &DirHandle, mode: Option<u32>, mtime: SystemTime) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = mode {
        dir.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    dir.set_times(std::fs::FileTimes::new().set_modified(mtime))
}

// ---------------------------------------------------------------------------
// Elsewhere: paths, checked with symlink_metadata before each step.

#[cfg(not(unix))]
type DirHandle = PathBuf;

#[cfg(not(unix))]
fn sys_create_dir(dir: &DirHandle, name: &OsStr) -> io::Result<bool> {
    match std::fs::create_dir(dir.join(name)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
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
fn sys_create_file(dir: &DirHandle, name: &OsStr, _mode: u32) -> io::Result<File> {
    sys_open_file(dir, name, true)
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
fn sys_set_dir_metadata(
    _dir: &DirHandle,
    _mode: Option<u32>,
    _mtime: SystemTime,
) -> io::Result<()> {
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
