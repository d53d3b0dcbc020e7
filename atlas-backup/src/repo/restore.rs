//! Restore of a snapshot (or a path in it) to a directory, and of one file
//! as a stream. Every blob is verified before its bytes reach a file; files
//! are written under a temporary name and renamed only once all their blobs
//! verified. Every write goes through [`dest`], which follows no symlink
//! below the destination; the snapshot's own symlinks are created last, so
//! that nothing of the same restore is written through one of them either.

mod dest;
#[cfg(all(test, unix))]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::FileTimes;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use futures::stream::{self, StreamExt};
use tracing::{Instrument, info, info_span, warn};

use super::crypto::{DecodeBuffers, MasterKey};
use super::error::{BACKEND, IntegrityError, integrity_error};
use super::format::{
    BlobId, BlobKind, Node, NodeKind, PackId, Snapshot, SnapshotId, Tree, from_hex,
};
use super::index::{BlobLoc, Index};
use super::platform;
use super::progress::{ProgressFn, Tracker};
use super::repository::Repository;
use atlas_core::backup::{BackupTargetExt, ByteRange, ByteStream};
use atlas_core::error::{Error, Result};
use dest::{Dest, temporary_name};
pub use dest::{EntryKind, RestoreConflict, restore_conflict};

/// Options of [`Repository::restore`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Restore only this path of the snapshot (`a/b`), recreated at
    /// `dest/a/b`. Default: everything.
    pub path: Option<String>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Packs downloaded at once. Default 4.
    pub concurrency: Option<usize>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("path", &self.path)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl RestoreOptions {
    /// Restores only `path`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
    /// Sets the progress callback.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Files restored.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

fn with_context(err: Error, snapshot: &SnapshotId, path: &str) -> Error {
    match integrity_error(&err) {
        Some(ie) => {
            let mut ie = ie.clone();
            ie.snapshot = Some(*snapshot);
            ie.path = Some(path.to_owned());
            ie.into_error()
        }
        None => err,
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || platform::has_foreign_separator(name)
    {
        return Err(
            IntegrityError::new(format!("tree contains an unsafe name {name:?}")).into_error(),
        );
    }
    Ok(())
}

fn os_name(node: &Node) -> Result<std::ffi::OsString> {
    check_name(&node.name)?;
    match &node.name_bytes {
        Some(hex) => {
            let raw = from_hex(hex)
                .ok_or_else(|| IntegrityError::new("name_bytes is not hex").into_error())?;
            if raw.contains(&b'/') || raw.is_empty() {
                return Err(IntegrityError::new("tree contains an unsafe name").into_error());
            }
            // Where names are not bytes, the lossy UTF-8 form (checked above).
            Ok(platform::name_from_bytes(raw).unwrap_or_else(|| node.name.clone().into()))
        }
        None => Ok(node.name.clone().into()),
    }
}

fn mtime(node: &Node) -> SystemTime {
    system_time(node.mtime_sec, node.mtime_nsec)
}

/// `sec` seconds and `nsec` nanoseconds after the epoch (`sec` may be
/// negative). A time the platform cannot represent becomes the epoch rather
/// than a panic.
fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let whole = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    whole
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
        .unwrap_or(UNIX_EPOCH)
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::backend_with(BACKEND, format!("{what} {}: {e}", path.display()), e)
}

/// One file to restore. Its paths are relative to the destination.
struct FileJob {
    /// Its path in the snapshot, for errors.
    rel: String,
    dest: PathBuf,
    tmp: PathBuf,
    node: Node,
    remaining: usize,
    failed: bool,
    /// Created (empty, sized, mode `0o600`) before any blob is written:
    /// files of several blobs, which several writes open. A file of one
    /// blob or none is created by the write that completes it, with its
    /// own mode.
    precreated: bool,
}

/// What a restore writes, with paths relative to the destination.
struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<FileJob>,
    symlinks: Vec<(PathBuf, Node)>,
}

/// Trees still to read and plan: a tree's id, its path in the snapshot and
/// its directory relative to the destination.
type PlanQueue = Vec<(BlobId, String, PathBuf)>;

/// Trees read at once while planning: a tree of thousands of directories
/// read one tree after the other waited on one small read at a time.
const TREE_READS: usize = 16;

impl Repository {
    async fn find_node(
        &self,
        index: &Index,
        snapshot: &Snapshot,
        path: &str,
    ) -> Result<Option<Node>> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segs.is_empty() {
            return Ok(None);
        }
        let mut tree = self
            .read_tree(index, &snapshot.tree)
            .await
            .map_err(|e| with_context(e, &snapshot.id, "/"))?;
        for (i, seg) in segs.iter().enumerate() {
            let node = tree
                .nodes
                .iter()
                .find(|n| n.name == *seg)
                .cloned()
                .ok_or_else(|| {
                    Error::not_found(format!("path {path:?} in snapshot {}", snapshot.id.short()))
                })?;
            if i + 1 == segs.len() {
                return Ok(Some(node));
            }
            let sub = node
                .subtree
                .filter(|_| node.kind == NodeKind::Dir)
                .ok_or_else(|| {
                    Error::not_found(format!("path {path:?} in snapshot {}", snapshot.id.short()))
                })?;
            tree = self
                .read_tree(index, &sub)
                .await
                .map_err(|e| with_context(e, &snapshot.id, path))?;
        }
        Ok(None)
    }

    /// Reads and plans every tree in `queue` and the trees below them,
    /// level by level (so parents are planned before their children), a
    /// few reads at a time.
    async fn plan_trees(
        &self,
        index: &Index,
        snapshot: &Snapshot,
        mut queue: PlanQueue,
        plan: &mut Plan,
    ) -> Result<()> {
        while !queue.is_empty() {
            let level = std::mem::take(&mut queue);
            let mut trees = stream::iter(level)
                .map(|(id, rel, dir)| async move {
                    let tree = self
                        .read_tree(index, &id)
                        .await
                        .map_err(|e| with_context(e, &snapshot.id, &rel))?;
                    Ok::<_, Error>((tree, rel, dir))
                })
                .buffered(TREE_READS);
            while let Some(read) = trees.next().await {
                let (tree, rel, dir) = read?;
                plan_tree(snapshot, tree, &rel, &dir, plan, &mut queue)?;
            }
        }
        Ok(())
    }

    /// Restores snapshot `snapshot` (id, unique prefix or `latest`), or the
    /// path [`RestoreOptions::path`] of it, under `dest` (created if
    /// missing). Files, directories, symlinks, permission bits and mtimes
    /// (a symlink's own mtime included) are recreated. A whole-snapshot
    /// restore also gives `dest` the mode and mtime of the source root
    /// ([`Snapshot::root`], when the snapshot recorded it). Each pack is
    /// read once, downloads overlapping with writes.
    ///
    /// What is already under `dest` is never written through: no symlink
    /// below `dest` is followed (symlinks in the path of `dest` itself
    /// are), and the snapshot's own symlinks are created after everything
    /// else. An existing file or symlink where the snapshot has a file or a
    /// symlink is replaced (the entry itself; what a symlink points to is
    /// left alone); an existing directory there is left alone and that
    /// entry is not restored. Where the snapshot has a directory, an
    /// existing directory is used, and anything else (a symlink, a file)
    /// stops the restore before any file is written.
    ///
    /// An incomplete snapshot ([`Snapshot::is_complete`]) restores what it
    /// holds; the entries named in [`Snapshot::unreadable`] are not there.
    ///
    /// Outside Unix, files and directories are restored with their content
    /// and file mtimes only: permission bits and directory mtimes are left
    /// as created, symlinks are skipped with a warning, a name stored as raw
    /// bytes is written in its lossy UTF-8 form, and a name containing `\`
    /// is refused as unsafe; what is in the way is checked by path, which a
    /// concurrent change can race. Ownership is restored nowhere.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown snapshot or path; an
    /// [`Error::Backend`] carrying an [`IntegrityError`] (snapshot, file,
    /// pack, blob) when a blob is missing or corrupted, or a tree names one
    /// entry twice — the files it belongs to are not created, the others
    /// are; an [`Error::Backend`] carrying a [`RestoreConflict`] (see
    /// [`restore_conflict`]) naming the path in `dest` where an existing
    /// entry of another kind is in the way; I/O errors naming the path.
    pub async fn restore(
        &self,
        snapshot: &str,
        dest: impl AsRef<Path>,
        options: RestoreOptions,
    ) -> Result<RestoreReport> {
        let snapshot = self.snapshot(snapshot).await?;
        let dest = dest.as_ref().to_path_buf();
        let span = info_span!("restore", snapshot = %snapshot.id.short(), dest = %dest.display());
        async move {
            let lock = self.lock(false, "restore").await?;
            let result = self.restore_locked(&snapshot, &dest, options).await;
            lock.release().await;
            result
        }
        .instrument(span)
        .await
    }

    async fn restore_locked(
        &self,
        snapshot: &Snapshot,
        dest: &Path,
        options: RestoreOptions,
    ) -> Result<RestoreReport> {
        let index = self.load_index().await?;
        let tracker = Arc::new(Tracker::new("restore", options.progress.clone()));
        let out = Arc::new(Dest::open(dest)?);
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            symlinks: Vec::new(),
        };
        let mut root_metadata = None;
        let mut lead = None;
        match options
            .path
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
        {
            None => {
                let root = self
                    .read_tree(&index, &snapshot.tree)
                    .await
                    .map_err(|e| with_context(e, &snapshot.id, "/"))?;
                root_metadata = snapshot.root;
                let mut queue = Vec::new();
                plan_tree(snapshot, root, "", Path::new(""), &mut plan, &mut queue)?;
                self.plan_trees(&index, snapshot, queue, &mut plan).await?;
            }
            Some(path) => {
                let node = self
                    .find_node(&index, snapshot, path)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("path {path:?}")))?;
                let parent_rel = path
                    .rsplit_once('/')
                    .map(|(p, _)| p.to_owned())
                    .unwrap_or_default();
                let mut dir = PathBuf::new();
                for seg in parent_rel.split('/').filter(|s| !s.is_empty()) {
                    check_name(seg)?;
                    dir.push(seg);
                }
                lead = Some(dir.clone());
                let mut queue = Vec::new();
                plan_node(
                    snapshot,
                    node,
                    &parent_rel,
                    &dir,
                    &mut HashSet::new(),
                    &mut plan,
                    &mut queue,
                )?;
                self.plan_trees(&index, snapshot, queue, &mut plan).await?;
            }
        }
        // Directories the restore creates hold nothing but what it puts
        // there, and neither does a destination that was empty: nothing
        // can be in the way of a file there.
        let mut fresh: HashSet<PathBuf> = HashSet::new();
        if out.was_empty() {
            fresh.insert(PathBuf::new());
        }
        // The directories leading to the path, with default metadata.
        if let Some(dir) = lead {
            let mut lead = PathBuf::new();
            for seg in dir.iter() {
                lead.push(seg);
                if out.create_dir(&lead)? {
                    fresh.insert(lead.clone());
                }
            }
        }
        // Directories first (parents before children: plan order).
        let mut report = RestoreReport::default();
        let mut created = HashSet::new();
        for (path, _) in &plan.dirs {
            if out.create_dir(path)? {
                fresh.insert(path.clone());
                created.insert(path.clone());
            }
            report.dirs += 1;
        }
        // Where each blob goes, grouped by pack.
        let mut users: HashMap<BlobId, Vec<(usize, u64)>> = HashMap::new();
        let mut first_error: Option<Error> = None;
        let mut error_count = 0usize;
        let total_bytes: u64 = plan.files.iter().map(|f| f.node.size).sum();
        tracker.update(|p| {
            p.files_total = Some(plan.files.len() as u64);
            p.bytes_total = Some(total_bytes);
        });
        for (i, f) in plan.files.iter_mut().enumerate() {
            // A directory where the file goes: nothing to download for it.
            let in_fresh = f.dest.parent().is_some_and(|p| fresh.contains(p));
            let checked = if in_fresh {
                Ok(())
            } else {
                out.check_replaceable(&f.dest, EntryKind::File)
            };
            if let Err(e) = checked {
                f.failed = true;
                error_count += 1;
                first_error.get_or_insert(e);
                continue;
            }
            let mut offset = 0u64;
            for id in &f.node.content {
                match index.get(id) {
                    Some(loc) => {
                        users.entry(*id).or_default().push((i, offset));
                        offset += u64::from(loc.raw_length);
                    }
                    None => {
                        f.failed = true;
                        let mut ie = IntegrityError::new("is not in the index (missing)");
                        ie.snapshot = Some(snapshot.id);
                        ie.path = Some(f.rel.clone());
                        ie.blob = Some(*id);
                        error_count += 1;
                        first_error.get_or_insert(ie.into_error());
                        break;
                    }
                }
            }
            if !f.failed && f.node.content.len() > 1 {
                out.create_file(&f.tmp, offset)?;
                f.precreated = true;
            }
        }
        let mut by_pack: HashMap<u32, Vec<(BlobLoc, BlobId)>> = HashMap::new();
        for id in users.keys() {
            if let Some(loc) = index.get(id) {
                by_pack.entry(loc.pack).or_default().push((loc, *id));
            }
        }
        let jobs = Arc::new(Mutex::new(plan.files));
        let users = Arc::new(users);
        // Files without content are complete already.
        {
            let mut j = jobs.lock().unwrap_or_else(|e| e.into_inner());
            for f in j.iter_mut().filter(|f| f.remaining == 0 && !f.failed) {
                if let Err(e) = finalize(&out, f) {
                    f.failed = true;
                    error_count += 1;
                    first_error.get_or_insert(e);
                    continue;
                }
                report.files += 1;
                tracker.update(|p| p.files_done += 1);
            }
        }
        let buffers = Arc::new(Mutex::new(Vec::new()));
        let mut packs: Vec<(u32, Vec<(BlobLoc, BlobId)>)> = by_pack.into_iter().collect();
        packs.sort_by_key(|(p, _)| index.pack_id(*p));
        let results: Vec<(u64, u64, Vec<Error>)> = stream::iter(packs)
            .map(|(pos, mut blobs)| {
                blobs.sort_by_key(|(l, _)| l.offset);
                let (index, jobs, users, tracker, out, buffers) = (
                    index.clone(),
                    jobs.clone(),
                    users.clone(),
                    tracker.clone(),
                    out.clone(),
                    buffers.clone(),
                );
                async move {
                    let writer = BlobWriter { out, buffers };
                    self.restore_pack(
                        snapshot, &index, pos, blobs, &jobs, &users, &tracker, writer,
                    )
                    .await
                }
            })
            .buffer_unordered(options.concurrency.unwrap_or(4).max(1))
            .collect()
            .await;
        for (files, bytes, errors) in results {
            report.files += files;
            report.bytes += bytes;
            error_count += errors.len();
            for e in errors {
                first_error.get_or_insert(e);
            }
        }
        // Remove what could not be verified.
        for f in jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|f| f.failed || f.remaining > 0)
        {
            out.remove_file(&f.tmp);
        }
        // The snapshot's symlinks, once nothing else is left to write.
        for (path, node) in &plan.symlinks {
            if !platform::RESTORES_SYMLINKS {
                warn!(path = %out.shown(path).display(), "symlinks are not restored on this platform; skipped");
                continue;
            }
            let target = node.target.as_deref().unwrap_or_default();
            match out.symlink(path, target, node.mtime_sec, node.mtime_nsec) {
                Ok(()) => report.symlinks += 1,
                Err(e) if restore_conflict(&e).is_some() => {
                    error_count += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        // Directory metadata last, children first, as writing into a
        // directory changes its mtime.
        // A directory this restore created has mode 0o777 less the umask
        // already, often the mode it needs.
        for (path, node) in plan.dirs.iter().rev() {
            let chmod = !created.contains(path) || out.needs_chmod(node.mode, 0o777);
            out.set_dir_metadata(path, chmod.then_some(node.mode), mtime(node))?;
        }
        // The root last: everything below it is written.
        if let Some(root) = root_metadata {
            out.set_dir_metadata(
                Path::new(""),
                Some(root.mode),
                system_time(root.mtime_sec, root.mtime_nsec),
            )?;
        }
        if let Some(e) = first_error {
            warn!(
                errors = error_count,
                "restore left out entries: damaged or missing data, or something in the way"
            );
            return Err(if error_count > 1 {
                match integrity_error(&e) {
                    Some(ie) => {
                        let mut ie = ie.clone();
                        ie.problem =
                            format!("{} (and {} more problems)", ie.problem, error_count - 1);
                        ie.into_error()
                    }
                    None => e,
                }
            } else {
                e
            });
        }
        info!(
            files = report.files,
            bytes = report.bytes,
            "restore finished"
        );
        Ok(report)
    }

    /// Downloads the needed blobs of one pack (one ranged read per run of
    /// nearby blobs), verifies each and writes it to its files.
    #[allow(clippy::too_many_arguments)]
    async fn restore_pack(
        &self,
        snapshot: &Snapshot,
        index: &Index,
        pos: u32,
        blobs: Vec<(BlobLoc, BlobId)>,
        jobs: &Mutex<Vec<FileJob>>,
        users: &HashMap<BlobId, Vec<(usize, u64)>>,
        tracker: &Tracker,
        writer: BlobWriter,
    ) -> (u64, u64, Vec<Error>) {
        let out = &writer.out;
        let pack = index.pack_id(pos);
        let mut errors = Vec::new();
        let (mut files_done, mut bytes_done) = (0u64, 0u64);
        // Runs of blobs with gaps under 1 MiB are read with one request.
        let mut runs: Vec<Vec<(BlobLoc, BlobId)>> = Vec::new();
        for b in blobs {
            match runs.last_mut() {
                Some(run)
                    if {
                        let last = run
                            .last()
                            .map(|(l, _)| u64::from(l.offset) + u64::from(l.length))
                            .unwrap_or(0);
                        u64::from(b.0.offset) <= last + (1 << 20)
                    } =>
                {
                    run.push(b)
                }
                _ => runs.push(vec![b]),
            }
        }
        let fail_blob =
            |jobs: &Mutex<Vec<FileJob>>, id: &BlobId, problem: String, errors: &mut Vec<Error>| {
                let mut j = jobs.lock().unwrap_or_else(|e| e.into_inner());
                for (fi, _) in users.get(id).into_iter().flatten() {
                    let f = &mut j[*fi];
                    if !f.failed {
                        f.failed = true;
                        let mut ie = IntegrityError::new(problem.clone());
                        ie.snapshot = Some(snapshot.id);
                        ie.path = Some(f.rel.clone());
                        ie.pack = Some(pack);
                        ie.blob = Some(*id);
                        errors.push(ie.into_error());
                    }
                }
            };
        // What a written (or failed) blob means for its files.
        macro_rules! settle {
            ($id:expr, $len:expr, $written:expr, $finished:ident) => {{
                let (id, len, written): (BlobId, u64, std::result::Result<u64, String>) =
                    ($id, $len, $written);
                match written {
                    Ok(n) => {
                        bytes_done += n;
                        tracker.update(|p| {
                            p.bytes_done += n;
                            p.bytes_read += len;
                        });
                        let mut j = jobs.lock().unwrap_or_else(|e| e.into_inner());
                        for (fi, _) in users.get(&id).into_iter().flatten() {
                            let f = &mut j[*fi];
                            if f.failed {
                                continue;
                            }
                            f.remaining -= 1;
                            if f.remaining == 0 {
                                let done = match $finished.remove(&f.tmp) {
                                    Some(r) => r,
                                    None => finalize(out, f),
                                };
                                match done {
                                    Ok(()) => {
                                        files_done += 1;
                                        tracker.update(|p| {
                                            p.files_done += 1;
                                            p.current = Some(f.rel.clone());
                                        });
                                    }
                                    Err(e) => {
                                        f.failed = true;
                                        errors.push(e);
                                    }
                                }
                            }
                        }
                    }
                    Err(problem) => fail_blob(jobs, &id, problem, &mut errors),
                }
            }};
        }
        let mut batch: Vec<PendingBlob> = Vec::new();
        // Decodes and writes the blobs of `batch`, and settles them.
        macro_rules! flush {
            () => {{
                let (done, finished) = writer
                    .write(&self.inner.master, std::mem::take(&mut batch))
                    .await;
                let mut finished: HashMap<PathBuf, Result<()>> = finished.into_iter().collect();
                for (id, len, written) in done {
                    settle!(id, len, written, finished);
                }
            }};
        }
        let mut batch_bytes = 0u64;
        for run in runs {
            let start = u64::from(run[0].0.offset);
            let end = run
                .last()
                .map(|(l, _)| u64::from(l.offset) + u64::from(l.length))
                .unwrap_or(start);
            let body = async {
                let key = self.inner.layout.pack(&pack)?;
                let range = ByteRange::new(start, end)?;
                Ok::<_, Error>(self.inner.target.get_range(&key, range).await?.body)
            }
            .await;
            let mut body = match body {
                Ok(b) => b,
                Err(e) => {
                    for (_, id) in &run {
                        fail_blob(jobs, id, format!("cannot read the pack: {e}"), &mut errors);
                    }
                    continue;
                }
            };
            let mut window = Window::at(start);
            let mut broken: Option<String> = None;
            for (loc, id) in run {
                let (off, len) = (u64::from(loc.offset), u64::from(loc.length));
                while broken.is_none() && window.end() < off + len {
                    match body.next().await {
                        Some(Ok(chunk)) => {
                            window.push(chunk);
                            window.skip_to(off);
                        }
                        Some(Err(e)) => broken = Some(format!("download failed: {e}")),
                        None => {
                            broken =
                                Some("the pack is shorter than the index says (truncated)".into())
                        }
                    }
                }
                if let Some(why) = &broken {
                    fail_blob(jobs, &id, why.clone(), &mut errors);
                    continue;
                }
                window.skip_to(off);
                let sealed = window.take(len);
                // A file this blob completes is finished by the task that
                // writes it, through the same handle.
                let targets: Vec<(PathBuf, u64, Option<Finish>)> = {
                    let j = jobs.lock().unwrap_or_else(|e| e.into_inner());
                    users
                        .get(&id)
                        .into_iter()
                        .flatten()
                        .filter(|(fi, _)| !j[*fi].failed)
                        .map(|(fi, o)| {
                            let f = &j[*fi];
                            let finish = (f.remaining == 1).then(|| Finish {
                                dest: f.dest.clone(),
                                mode: f.node.mode,
                                modified: mtime(&f.node),
                                precreated: f.precreated,
                            });
                            (f.tmp.clone(), *o, finish)
                        })
                        .collect()
                };
                batch_bytes += len;
                batch.push(PendingBlob {
                    id,
                    raw_length: loc.raw_length,
                    len,
                    sealed,
                    targets,
                });
                if batch.len() >= WRITE_BATCH_BLOBS || batch_bytes >= WRITE_BATCH_BYTES {
                    batch_bytes = 0;
                    flush!();
                }
            }
            flush!();
        }
        (files_done, bytes_done, errors)
    }

    /// The content of the file `path` in snapshot `snapshot` as a stream
    /// (blobs fetched a few ahead, each verified before it is yielded), with
    /// its node (size, mode, mtime).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the path does not exist or is not a regular
    /// file. Stream items carry an [`IntegrityError`] naming the file, pack
    /// and blob when a blob is missing or corrupted; nothing after it is
    /// yielded.
    pub async fn restore_file_stream(
        &self,
        snapshot: &str,
        path: &str,
    ) -> Result<(Node, ByteStream)> {
        let snapshot = self.snapshot(snapshot).await?;
        let index = self.load_index().await?;
        let node = self
            .find_node(&index, &snapshot, path)
            .await?
            .filter(|n| n.kind == NodeKind::File)
            .ok_or_else(|| {
                Error::not_found(format!("file {path:?} in snapshot {}", snapshot.id.short()))
            })?;
        let repo = self.clone();
        let sid = snapshot.id;
        let p = path.to_owned();
        let body = stream::iter(node.content.clone())
            .map(move |id| {
                let (repo, index, p) = (repo.clone(), index.clone(), p.clone());
                async move {
                    repo.read_blob(&index, BlobKind::Data, &id)
                        .await
                        .map(Bytes::from)
                        .map_err(|e| with_context(e, &sid, &p))
                }
            })
            .buffered(4)
            .scan(false, |failed, item| {
                let out = if *failed { None } else { Some(item) };
                if let Some(Err(_)) = &out {
                    *failed = true;
                }
                futures::future::ready(out)
            })
            .boxed();
        Ok((node, body))
    }
}

/// Plans the entries of `tree`, at `rel` in the snapshot and `dir` in the
/// destination; its subtrees go to `queue`.
fn plan_tree(
    snapshot: &Snapshot,
    tree: Tree,
    rel: &str,
    dir: &Path,
    plan: &mut Plan,
    queue: &mut PlanQueue,
) -> Result<()> {
    let mut names = HashSet::with_capacity(tree.nodes.len());
    for node in tree.nodes {
        plan_node(snapshot, node, rel, dir, &mut names, plan, queue)?;
    }
    Ok(())
}

/// Plans one entry of a tree; `names` holds the names of the entries of
/// the same tree planned before it. A directory's tree goes to `queue`.
fn plan_node(
    snapshot: &Snapshot,
    node: Node,
    rel: &str,
    dir: &Path,
    names: &mut HashSet<OsString>,
    plan: &mut Plan,
    queue: &mut PlanQueue,
) -> Result<()> {
    let name = os_name(&node)?;
    let child_rel = if rel.is_empty() {
        node.name.clone()
    } else {
        format!("{rel}/{}", node.name)
    };
    // A tree naming one entry twice (no file system lists one) could
    // make a symlink and a directory of one path; it is refused whole.
    if !names.insert(name.clone()) {
        let mut ie = IntegrityError::new(format!(
            "the directory holds two entries named {:?}",
            name.to_string_lossy()
        ));
        ie.snapshot = Some(snapshot.id);
        ie.path = Some(child_rel);
        return Err(ie.into_error());
    }
    let dest = dir.join(&name);
    match node.kind {
        NodeKind::Dir => {
            let sub = node.subtree.ok_or_else(|| {
                IntegrityError::new(format!("directory {child_rel:?} has no subtree")).into_error()
            })?;
            plan.dirs.push((dest.clone(), node));
            queue.push((sub, child_rel, dest));
        }
        NodeKind::Symlink => plan.symlinks.push((dest, node)),
        NodeKind::File => {
            let tmp = dir.join(temporary_name(&name, &PackId::random().to_hex()[..8]));
            plan.files.push(FileJob {
                rel: child_rel,
                dest,
                tmp,
                remaining: node.content.len(),
                node,
                failed: false,
                precreated: false,
            });
        }
    }
    Ok(())
}

/// Gives the complete temporary file of `f` its metadata and moves it to
/// its name (creating it first when it has no content).
fn finalize(out: &Dest, f: &FileJob) -> Result<()> {
    let (file, created_with) = open_target(out, &f.tmp, f.precreated, f.node.mode)?;
    finish_file(
        out,
        file,
        &f.tmp,
        &f.dest,
        f.node.mode,
        created_with,
        mtime(&f.node),
    )
}

/// Opens the temporary file `tmp` to write: the one created before when
/// `precreated`, else a new one with the permission bits of `mode`.
/// Returns it with the mode it was created with.
fn open_target(
    out: &Dest,
    tmp: &Path,
    precreated: bool,
    mode: u32,
) -> Result<(std::fs::File, u32)> {
    if precreated {
        Ok((out.open_file(tmp)?, PRECREATED_MODE))
    } else {
        Ok((out.create_file_with_mode(tmp, mode)?, mode))
    }
}

/// The mode files of several blobs are created with, so that each write
/// can open them again.
const PRECREATED_MODE: u32 = 0o600;

/// Sets the mode (when creating it with `created_with` did not give it)
/// and mtime of the complete temporary file `tmp` (open as `file`) and
/// renames it to `dest`.
fn finish_file(
    out: &Dest,
    file: std::fs::File,
    tmp: &Path,
    dest: &Path,
    mode: u32,
    created_with: u32,
    modified: SystemTime,
) -> Result<()> {
    if out.needs_chmod(mode, created_with) {
        platform::set_file_mode(&file, mode)
            .map_err(|e| io_err(&out.shown(tmp), "cannot chmod", e))?;
    }
    file.set_times(FileTimes::new().set_modified(modified))
        .map_err(|e| io_err(&out.shown(tmp), "cannot set mtime of", e))?;
    drop(file);
    out.rename_into(tmp, dest)
}

/// What finishes a file once its last blob is written: where it goes, its
/// mode and mtime.
struct Finish {
    dest: PathBuf,
    mode: u32,
    modified: SystemTime,
    /// See [`FileJob::precreated`].
    precreated: bool,
}

/// Blobs of a pack decoded and written by one blocking task at most: a
/// tree of small files paid a task and its wake-ups per file.
const WRITE_BATCH_BLOBS: usize = 64;
/// Bytes (sealed) decoded and written by one blocking task at most.
const WRITE_BATCH_BYTES: u64 = 4 << 20;

/// A blob downloaded and waiting to be decoded and written.
struct PendingBlob {
    id: BlobId,
    raw_length: u32,
    /// Its sealed length.
    len: u64,
    /// Its sealed bytes, as slices of the chunks they came in.
    sealed: Vec<Bytes>,
    /// The files (temporary paths) and offsets it goes to, and how to
    /// finish those it completes.
    targets: Vec<(PathBuf, u64, Option<Finish>)>,
}

/// The downloaded bytes of a run not taken yet: the chunks as the target
/// sent them, shared (not copied) by the blobs taken from them. Copying
/// them into one growing buffer cost a copy of every byte, and a new
/// buffer of a megabyte or more for about every blob.
struct Window {
    chunks: VecDeque<Bytes>,
    /// The pack offset of the first byte held.
    start: u64,
    /// Bytes held.
    len: u64,
}

impl Window {
    /// An empty window at pack offset `start`.
    fn at(start: u64) -> Self {
        Window {
            chunks: VecDeque::new(),
            start,
            len: 0,
        }
    }

    /// The pack offset after the last byte held.
    fn end(&self) -> u64 {
        self.start + self.len
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Drops what lies before pack offset `at`.
    fn skip_to(&mut self, at: u64) {
        let mut skip = at.saturating_sub(self.start).min(self.len);
        self.start += skip;
        self.len -= skip;
        while skip > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if (front.len() as u64) <= skip {
                skip -= front.len() as u64;
                self.chunks.pop_front();
            } else {
                front.advance(skip as usize);
                skip = 0;
            }
        }
    }

    /// Takes the first `len` bytes held (fewer if fewer are held) as
    /// slices of their chunks.
    fn take(&mut self, len: u64) -> Vec<Bytes> {
        let mut left = len.min(self.len);
        self.start += left;
        self.len -= left;
        let mut pieces = Vec::new();
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if (front.len() as u64) <= left {
                left -= front.len() as u64;
                pieces.extend(self.chunks.pop_front());
            } else {
                pieces.push(front.split_to(left as usize));
                left = 0;
            }
        }
        pieces
    }
}

/// What [`BlobWriter::write`] did: per blob its id, sealed length and the bytes
/// written (or why not); and the files it finished (by temporary path).
type Written = (
    Vec<(BlobId, u64, std::result::Result<u64, String>)>,
    Vec<(PathBuf, Result<()>)>,
);

/// Where a pack's blobs are written: the destination, and the decode
/// buffers of the restore (one set per batch being written, kept for the
/// next batch).
struct BlobWriter {
    out: Arc<Dest>,
    buffers: Arc<Mutex<Vec<DecodeBuffers>>>,
}

impl BlobWriter {
    /// Decodes and writes `batch` on one blocking thread, and finishes (mode,
    /// mtime, rename) the files a blob completes with the handle it was
    /// written through.
    async fn write(&self, master: &MasterKey, batch: Vec<PendingBlob>) -> Written {
        if batch.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let ids: Vec<(BlobId, u64)> = batch.iter().map(|b| (b.id, b.len)).collect();
        let (master, writer, pool) = (master.clone(), self.out.clone(), self.buffers.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut buffers = pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            let mut finished = Vec::new();
            let written = batch
                .into_iter()
                .map(|b| {
                    let written = master
                        .decode_blob_into(
                            BlobKind::Data,
                            &b.id,
                            b.raw_length,
                            &b.sealed,
                            &mut buffers,
                        )
                        .map_err(|f| f.to_string())
                        .and_then(|plain| {
                            let mut done = Vec::new();
                            let copies = b.targets.len() as u64;
                            for (path, offset, finish) in b.targets {
                                // A file of one blob is created here; one of
                                // several was created before.
                                let precreated = finish.as_ref().is_none_or(|fin| fin.precreated);
                                let mode = finish.as_ref().map_or(PRECREATED_MODE, |fin| fin.mode);
                                let (f, created_with) =
                                    open_target(&writer, &path, precreated, mode)
                                        .map_err(|e| e.to_string())?;
                                platform::write_all_at(&f, plain, offset).map_err(|e| {
                                    format!("cannot write {}: {e}", writer.shown(&path).display())
                                })?;
                                if let Some(fin) = finish {
                                    done.push((path, f, fin, created_with));
                                }
                            }
                            Ok((plain.len() as u64 * copies, done))
                        });
                    let written = written.map(|(n, done)| {
                        for (path, f, fin, created_with) in done {
                            let r = finish_file(
                                &writer,
                                f,
                                &path,
                                &fin.dest,
                                fin.mode,
                                created_with,
                                fin.modified,
                            );
                            finished.push((path, r));
                        }
                        n
                    });
                    (b.id, b.len, written)
                })
                .collect::<Vec<_>>();
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(buffers);
            (written, finished)
        })
        .await;
        match done {
            Ok(v) => v,
            Err(e) => (
                ids.into_iter()
                    .map(|(id, len)| (id, len, Err(format!("worker failed: {e}"))))
                    .collect(),
                Vec::new(),
            ),
        }
    }
}
