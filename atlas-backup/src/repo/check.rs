//! `check`: the repository's structure, and optionally its data.

use std::collections::{HashMap, HashSet};
use std::fmt;

use futures::stream::{self, StreamExt};
use rand::seq::SliceRandom;
use tracing::{Instrument, info, info_span, warn};

use super::crypto::DecodeBuffers;
use super::damage::Opened;
use super::error::{IntegrityError, integrity_error};
use super::format::{
    BlobId, BlobKind, NodeKind, PACK_HEADER_AAD, PACK_TRAILER_LEN, PackId, decode_pack_header,
    pack_header_span,
};
use super::index::Index;
use super::layout::Layout;
use super::progress::{ProgressFn, Tracker};
use super::repository::Repository;
use atlas_core::backup::BackupTargetExt;
use atlas_core::error::{Error, Result};

/// Which packs `check` downloads and verifies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadDataSubset {
    /// Every pack.
    All,
    /// A random sample of this fraction of the packs (0 < f ≤ 1).
    Fraction(f64),
    /// Part `n` of `m` (1 ≤ n ≤ m): the packs whose id's first byte modulo
    /// `m` is `n - 1`. Running parts 1..=m over m days reads everything once.
    Part {
        /// Which part, from 1.
        n: u32,
        /// How many parts.
        m: u32,
    },
}

/// Options of [`Repository::check`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Also download packs and verify every blob in them (`--read-data`).
    pub read_data: Option<ReadDataSubset>,
    /// Progress callback (packs read).
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for CheckOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckOptions")
            .field("read_data", &self.read_data)
            .finish_non_exhaustive()
    }
}

impl CheckOptions {
    /// Structure only.
    pub fn structure() -> Self {
        CheckOptions::default()
    }

    /// Structure and the data of `subset`.
    pub fn read_data(subset: ReadDataSubset) -> Self {
        CheckOptions {
            read_data: Some(subset),
            progress: None,
        }
    }

    /// Sets the progress callback (packs read and verified).
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// One problem `check` found.
pub type CheckProblem = IntegrityError;

/// What `check` found. Problems are listed, not returned as an error, so
/// that one run reports all of them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Tree blobs read.
    pub trees: u64,
    /// Distinct data blobs referenced.
    pub data_blobs: u64,
    /// Packs in the index.
    pub packs: u64,
    /// Packs downloaded and verified.
    pub packs_read: u64,
    /// Packs on the target that no index lists (left by interrupted
    /// backups, or by a backup in progress); prune removes them.
    pub unreferenced_packs: u64,
    /// Everything wrong, each naming the snapshot, file, pack and blob it
    /// concerns where known.
    pub problems: Vec<CheckProblem>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem_of(e: Error) -> IntegrityError {
    integrity_error(&e)
        .cloned()
        .unwrap_or_else(|| IntegrityError::new(e.to_string()))
}

impl Repository {
    /// Checks the repository: every manifest decodes, every tree decodes,
    /// every referenced blob is in the index, every indexed pack exists with
    /// the indexed size; with [`CheckOptions::read_data`], the chosen packs
    /// are downloaded and every blob in them decrypted and hashed. Takes a
    /// shared lock.
    ///
    /// # Errors
    /// Only for failures that stop the check itself (listing fails, an index
    /// file of a newer format version, the lock is held exclusively);
    /// damage, including damaged manifests and index files, is reported in
    /// [`CheckReport::problems`].
    pub async fn check(&self, options: CheckOptions) -> Result<CheckReport> {
        let span = info_span!("check", read_data = ?options.read_data);
        self.under_lock(false, "check", self.check_locked(options))
            .instrument(span)
            .await
    }

    async fn check_locked(&self, options: CheckOptions) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let target = &self.inner.target;
        let on_target: HashMap<PackId, u64> = target
            .list_all(&self.inner.layout.data()?)
            .await?
            .into_iter()
            .filter_map(|m| Layout::name_of(&m.key).parse().ok().map(|id| (id, m.size)))
            .collect();
        // A damaged index file is a problem to report, not a reason to stop:
        // the intact files still say where most blobs are.
        let (index, damaged_index) = Index::load_tolerant(self).await?;
        for (_, d) in damaged_index {
            let mut p = IntegrityError::new(format!(
                "{} ({}); `repair index` rebuilds the index from the packs",
                d.reason, d.damage
            ));
            p.object = Some(d.path);
            report.problems.push(p);
        }
        report.packs = index.packs().len() as u64;
        for (id, size) in index.packs() {
            match on_target.get(id) {
                None => {
                    let mut p = IntegrityError::new("is in the index but missing from the target");
                    p.pack = Some(*id);
                    report.problems.push(p);
                }
                Some(s) if s != size => {
                    let mut p =
                        IntegrityError::new(format!("has {s} bytes, the index says {size}"));
                    p.pack = Some(*id);
                    report.problems.push(p);
                }
                Some(_) => {}
            }
        }
        report.unreferenced_packs =
            on_target.keys().filter(|id| !index.has_pack(id)).count() as u64;
        // Snapshots and their trees.
        let metas = target.list_all(&self.inner.layout.snapshots()?).await?;
        let mut seen_trees: HashSet<BlobId> = HashSet::new();
        let mut seen_data: HashSet<BlobId> = HashSet::new();
        for m in metas {
            let snap = match self.read_manifest(&m.key).await {
                Ok(Some(Opened::Intact(s))) => s,
                // Forgotten since the listing.
                Ok(None) => continue,
                Ok(Some(Opened::Damaged(d))) => {
                    let mut p = IntegrityError::new(format!(
                        "damaged snapshot manifest ({}): {}; `repair snapshots` moves it aside",
                        d.damage, d.reason
                    ));
                    p.snapshot = d.snapshot_id();
                    p.object = Some(d.path);
                    report.problems.push(p);
                    continue;
                }
                Err(e) => {
                    report.problems.push(IntegrityError::new(e.to_string()));
                    continue;
                }
            };
            report.snapshots += 1;
            let mut stack = vec![(snap.tree, String::from("/"))];
            while let Some((tid, path)) = stack.pop() {
                if !seen_trees.insert(tid) {
                    continue;
                }
                let tree = match self.read_tree(&index, &tid).await {
                    Ok(t) => t,
                    Err(e) => {
                        let mut p = problem_of(e);
                        p.snapshot = Some(snap.id);
                        p.path = Some(path);
                        report.problems.push(p);
                        continue;
                    }
                };
                report.trees += 1;
                for node in tree.nodes {
                    let child = if path == "/" {
                        node.name.clone()
                    } else {
                        format!("{path}/{}", node.name)
                    };
                    match node.kind {
                        NodeKind::Dir => match node.subtree {
                            Some(s) => stack.push((s, child)),
                            None => {
                                let mut p = IntegrityError::new("directory without subtree");
                                p.snapshot = Some(snap.id);
                                p.path = Some(child);
                                report.problems.push(p);
                            }
                        },
                        NodeKind::File => {
                            for id in node.content {
                                if seen_data.insert(id) && !index.contains(&id) {
                                    let mut p =
                                        IntegrityError::new("is not in the index (missing)");
                                    p.snapshot = Some(snap.id);
                                    p.path = Some(child.clone());
                                    p.blob = Some(id);
                                    report.problems.push(p);
                                }
                            }
                        }
                        NodeKind::Symlink => {}
                    }
                }
            }
        }
        report.data_blobs = seen_data.len() as u64;
        if let Some(subset) = options.read_data {
            let chosen = choose(&index, subset)?;
            let tracker = Tracker::new("check", options.progress.clone());
            tracker.update(|p| {
                p.files_total = Some(chosen.len() as u64);
                p.bytes_total = Some(chosen.iter().map(|(_, s)| s).sum());
            });
            let by_pack: HashMap<PackId, Vec<Expected>> = index
                .by_pack()
                .into_iter()
                .map(|p| {
                    (
                        p.id,
                        p.blobs
                            .iter()
                            .map(|b| (b.id, b.kind, b.offset, b.length, b.raw_length))
                            .collect(),
                    )
                })
                .collect();
            let by_pack = &by_pack;
            let tracker = &tracker;
            let found: Vec<Vec<IntegrityError>> = stream::iter(
                chosen
                    .into_iter()
                    .filter(|(id, _)| on_target.contains_key(id)),
            )
            .map(|(id, size)| async move {
                tracker.update(|p| p.current = Some(id.to_hex()));
                let expected = by_pack.get(&id).cloned().unwrap_or_default();
                let problems = self.read_pack(id, expected).await;
                tracker.update(|p| {
                    p.files_done += 1;
                    p.bytes_done += size;
                    p.bytes_read += size;
                });
                problems
            })
            .buffer_unordered(2)
            .collect()
            .await;
            report.packs_read = found.len() as u64;
            report.problems.extend(found.into_iter().flatten());
        }
        if report.is_ok() {
            info!(
                snapshots = report.snapshots,
                packs = report.packs,
                packs_read = report.packs_read,
                "check found no problem"
            );
        } else {
            for p in &report.problems {
                warn!(problem = %p, "check found a problem");
            }
        }
        Ok(report)
    }

    /// Downloads one pack and verifies its header against the index's
    /// `expected` blobs, and every one of those blobs.
    async fn read_pack(&self, id: PackId, expected: Vec<Expected>) -> Vec<IntegrityError> {
        let pack_problem = move |msg: String| {
            let mut p = IntegrityError::new(msg);
            p.pack = Some(id);
            vec![p]
        };
        let bytes = match async {
            self.inner
                .target
                .get_bytes(&self.inner.layout.pack(&id)?)
                .await
        }
        .await
        {
            Ok(b) => b,
            Err(e) => return pack_problem(format!("cannot be read: {e}")),
        };
        let master = self.inner.master.clone();
        tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            let n = bytes.len();
            let trailer = &bytes[n.saturating_sub(PACK_TRAILER_LEN)..];
            let (hstart, hend) = match pack_header_span(n as u64, trailer) {
                Ok((s, e)) => (s as usize, e as usize),
                Err(why) => return pack_problem(why.into()),
            };
            let header = master
                .open(PACK_HEADER_AAD, &bytes[hstart..hend])
                .and_then(|h| decode_pack_header(&h));
            match header {
                None => problems.extend(pack_problem("header does not decrypt (corrupted)".into())),
                Some(entries) => {
                    for (bid, kind, off, len, _) in &expected {
                        if !entries.iter().any(|e| {
                            e.id == *bid && e.kind == *kind && e.offset == *off && e.length == *len
                        }) {
                            let mut p = IntegrityError::new(
                                "the pack header does not list it where the index does",
                            );
                            p.pack = Some(id);
                            p.blob = Some(*bid);
                            problems.push(p);
                        }
                    }
                }
            }
            let mut buffers = DecodeBuffers::default();
            for (bid, kind, off, len, raw) in expected {
                let (s, e) = (off as usize, off as usize + len as usize);
                let fault = if e > hstart {
                    Some("lies outside the pack's blob area".to_string())
                } else {
                    master
                        .decode_blob_into(kind, &bid, raw, &[&bytes[s..e]], &mut buffers)
                        .err()
                        .map(|f| f.to_string())
                };
                if let Some(msg) = fault {
                    let mut p = IntegrityError::new(msg);
                    p.pack = Some(id);
                    p.blob = Some(bid);
                    problems.push(p);
                }
            }
            problems
        })
        .await
        .unwrap_or_else(|e| pack_problem(format!("verification task failed: {e}")))
    }
}

/// A blob as the index places it: id, kind, offset, length, raw length.
type Expected = (BlobId, BlobKind, u32, u32, u32);

fn choose(index: &Index, subset: ReadDataSubset) -> Result<Vec<(PackId, u64)>> {
    let all: Vec<(PackId, u64)> = index.packs().to_vec();
    match subset {
        ReadDataSubset::All => Ok(all),
        ReadDataSubset::Fraction(f) => {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::invalid(
                    "read_data_subset",
                    format!("fraction must be in (0, 1], got {f}"),
                ));
            }
            let k = ((all.len() as f64) * f).ceil() as usize;
            let mut v = all;
            v.shuffle(&mut rand::rng());
            v.truncate(k);
            Ok(v)
        }
        ReadDataSubset::Part { n, m } => {
            if m == 0 || n == 0 || n > m {
                return Err(Error::invalid(
                    "read_data_subset",
                    format!("part {n}/{m}: need 1 <= n <= m"),
                ));
            }
            Ok(all
                .into_iter()
                .filter(|(id, _)| u32::from(id.0[0]) % m == n - 1)
                .collect())
        }
    }
}
