//! Conformance suite for [`BackupTarget`]: the checks every backup target
//! passes — the in-memory and filesystem targets on plain `cargo test`, the
//! S3, GCS and Azure targets against their real servers.
//!
//! ```no_run
//! # async fn demo(target: impl atlas_core::backup::BackupTarget) {
//! use atlas_core::testing::conformance::backup_target::{SuiteConfig, run_all};
//! // The target holds at most 4 parts of 8 MiB in memory while uploading,
//! // and its server lets racing creates of one key all succeed.
//! let config = SuiteConfig::new()
//!     .with_memory_bound(4 * 8 * 1024 * 1024)
//!     .with_put_if_absent_atomic(false);
//! let report = run_all(&target, &config).await;
//! assert_eq!(report.skipped()[0].check, "concurrent_put_if_absent");
//! # }
//! ```
//!
//! # Capabilities
//!
//! Targets differ in what their backend can promise. [`SuiteConfig`]
//! declares it with capability flags, all on by default; a target that
//! lacks one turns it off where it is tested, and [`run_all`] still runs the
//! whole list: a check that needs a missing capability is skipped, reported
//! as skipped with the reason (a `tracing` warning and a line on standard
//! output) and listed in the [`SuiteReport`], never counted as passed.
//!
//! | flag | default | without it |
//! |---|---|---|
//! | [`put_if_absent_atomic`](SuiteConfig::put_if_absent_atomic) | on | [`concurrent_put_if_absent`] is skipped |
//! | [`large_object_checksum_in_head`](SuiteConfig::large_object_checksum_in_head) | on | [`large_object_streamed`] accepts a `head` without a checksum (a reported one must still be right) |
//! | [`memory_bound`](SuiteConfig::memory_bound) (`Some`: streams in bounded memory) | off (`None`) | the memory bounds of [`large_object_streamed`] are skipped (the object is still streamed and verified) |
//!
//! Each run writes under a fresh random prefix (`atlas-conformance/<hex>/`),
//! so runs against a shared bucket never collide, and deletes what it wrote
//! when every check passed. A failed check panics with a message naming the
//! check and what was expected, like any assertion in a test.
//!
//! # How memory is measured
//!
//! The large-object check streams [`SuiteConfig::large_object_size`] bytes
//! (100 MiB by default) in and out and bounds the memory the transfer used
//! in two ways, neither of which needs help from the target:
//!
//! - **Input held by the target.** The suite's body stream makes each chunk
//!   lazily and tracks, chunk by chunk, how many of its bytes are alive (a
//!   chunk dies when the target drops the last reference to it). The peak
//!   must stay within [`SuiteConfig::memory_bound`] plus one chunk: a target
//!   that keeps the input until the end fails here.
//! - **Process peak (Linux).** The peak resident set size (`VmHWM` in
//!   `/proc/self/status`, reset through `/proc/self/clear_refs` before each
//!   transfer) may grow by at most `memory_bound` +
//!   [`SuiteConfig::memory_slack`] over the resident size before the transfer,
//!   during the upload and during the verifying download (which hashes the
//!   stream and keeps nothing). This catches a target that copies the input
//!   into buffers of its own. The suite serialises its large transfers within
//!   one process so that two targets tested in parallel do not add up.
//!
//! Targets that keep objects in memory by design (the memory target) set no
//! bound; the large object is still streamed in and out and verified.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use tracing::{info, warn};

use crate::backup::{
    BackupTarget, BackupTargetExt, ByteRange, ByteStream, Checksum, Crc32cHasher, GetOptions,
    ListOptions, ObjectKey, ObjectMeta, ObjectPrefix,
};
use crate::error::{Error, ErrorKind, Result};

const MIB: u64 = 1024 * 1024;

/// What the suite expects of the target under test.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SuiteConfig {
    /// Size of the object streamed in and out by [`large_object_streamed`].
    /// Default 100 MiB.
    pub large_object_size: u64,
    /// Bytes of an upload the target may hold at once: its part size × its
    /// upload concurrency. `None` (the default) skips the memory checks, for
    /// targets that keep objects in memory by design.
    pub memory_bound: Option<u64>,
    /// Growth of the process's peak resident size allowed on top of
    /// `memory_bound`, for the runtime, the HTTP client, the allocator and
    /// other tests in the same process. Default 32 MiB — well under the
    /// 100 MiB object, so a target that buffers the object still fails.
    pub memory_slack: u64,
    /// Size of the chunks of the suite's body streams. Default 64 KiB.
    pub chunk_size: usize,
    /// Bytes an interrupted upload sends before its body fails. Default
    /// 12 MiB: more than one part of every target's default configuration,
    /// so a multipart upload is under way when the body fails.
    pub interrupt_after: u64,
    /// How many objects [`list_many_with_pagination`] writes. Default 45.
    pub list_objects: usize,
    /// How many writers race in [`concurrent_put_if_absent`]. Default 8.
    pub racing_writers: usize,
    /// How far a target's `last_modified` may be from this machine's clock.
    /// Default 10 minutes.
    pub clock_tolerance: Duration,
    /// Capability: whether `head` reports the checksum of the large
    /// (multipart) object. Default `true`. Turn off only for a server that
    /// stores no whole-object checksum for multipart uploads and offers no
    /// place to keep one (s3s-fs: neither full-object checksums nor object
    /// tags), and say so where the target is tested; a reported checksum
    /// must still be right.
    pub large_object_checksum_in_head: bool,
    /// Capability: whether racing `put_if_absent`s of one key are atomic,
    /// so that exactly one wins and the others fail with
    /// [`Error::Conflict`]. Default `true`. Turn off for a server that
    /// checks for the key and then writes in two steps (s3s-fs), where
    /// racing creates can all succeed; [`concurrent_put_if_absent`] is then
    /// skipped and reported as skipped. A single writer's second create
    /// ([`put_if_absent_twice`]) must still conflict.
    pub put_if_absent_atomic: bool,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            large_object_size: 100 * MIB,
            memory_bound: None,
            memory_slack: 32 * MIB,
            chunk_size: 64 * 1024,
            interrupt_after: 12 * MIB,
            list_objects: 45,
            racing_writers: 8,
            clock_tolerance: Duration::from_secs(600),
            large_object_checksum_in_head: true,
            put_if_absent_atomic: true,
        }
    }
}

impl SuiteConfig {
    /// The defaults: every capability on, no memory bound (see the fields
    /// for each default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether racing creates of one key are atomic (the
    /// [`put_if_absent_atomic`](Self::put_if_absent_atomic) capability).
    pub fn with_put_if_absent_atomic(mut self, atomic: bool) -> Self {
        self.put_if_absent_atomic = atomic;
        self
    }

    /// Sets the bytes the target may hold during a transfer (part size ×
    /// concurrency) and turns the memory checks on.
    pub fn with_memory_bound(mut self, bytes: u64) -> Self {
        self.memory_bound = Some(bytes);
        self
    }

    /// Sets the allowed extra growth of the process's peak resident size.
    pub fn with_memory_slack(mut self, bytes: u64) -> Self {
        self.memory_slack = bytes;
        self
    }

    /// Sets the size of the large object.
    pub fn with_large_object_size(mut self, bytes: u64) -> Self {
        self.large_object_size = bytes;
        self
    }

    /// Sets how much an interrupted upload sends before failing.
    pub fn with_interrupt_after(mut self, bytes: u64) -> Self {
        self.interrupt_after = bytes;
        self
    }

    /// Sets whether `head` must report the large object's checksum (the
    /// [`large_object_checksum_in_head`](Self::large_object_checksum_in_head)
    /// capability).
    pub fn with_large_object_checksum_in_head(mut self, required: bool) -> Self {
        self.large_object_checksum_in_head = required;
        self
    }

    /// Sets the chunk size of the suite's body streams.
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.max(16);
        self
    }
}

/// One run of the suite: its configuration and its random prefix.
#[derive(Debug, Clone)]
pub struct SuiteRun {
    config: SuiteConfig,
    prefix: ObjectPrefix,
}

impl SuiteRun {
    /// A run under a fresh prefix `atlas-conformance/<16 hex digits>/`.
    pub fn new(config: SuiteConfig) -> Self {
        let id: u64 = rand::random();
        let prefix = ObjectPrefix::new(format!("atlas-conformance/{id:016x}/"))
            .unwrap_or_else(|e| panic!("conformance prefix: {e}"));
        SuiteRun { config, prefix }
    }

    /// The run's prefix; everything the suite writes is under it.
    pub fn prefix(&self) -> &ObjectPrefix {
        &self.prefix
    }

    /// The run's configuration.
    pub fn config(&self) -> &SuiteConfig {
        &self.config
    }

    /// The key `<prefix><rest>`.
    ///
    /// # Panics
    /// When the result is not a valid key (a bug in the suite).
    pub fn key(&self, rest: &str) -> ObjectKey {
        self.prefix
            .key(rest)
            .unwrap_or_else(|e| panic!("conformance key {rest:?}: {e}"))
    }

    /// The prefix `<prefix><rest>`.
    ///
    /// # Panics
    /// When the result is not a valid prefix (a bug in the suite).
    pub fn sub_prefix(&self, rest: &str) -> ObjectPrefix {
        ObjectPrefix::new(format!("{}{rest}", self.prefix))
            .unwrap_or_else(|e| panic!("conformance prefix {rest:?}: {e}"))
    }
}

/// A check the suite skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedCheck {
    /// The check, by its function name (e.g. `concurrent_put_if_absent`),
    /// or `<check>: <part>` for the part of a check that needs the
    /// capability while the rest of the check ran (e.g.
    /// `large_object_streamed: memory bounds`).
    pub check: &'static str,
    /// Why: the capability the target lacks.
    pub reason: &'static str,
}

/// What [`run_all`] ran: the checks that passed and the ones skipped for a
/// capability the target lacks. (A failing check panics instead.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuiteReport {
    passed: Vec<&'static str>,
    skipped: Vec<SkippedCheck>,
}

impl SuiteReport {
    /// The checks that ran and passed, in order.
    pub fn passed(&self) -> &[&'static str] {
        &self.passed
    }

    /// The checks skipped, in order, each with its reason.
    pub fn skipped(&self) -> &[SkippedCheck] {
        &self.skipped
    }

    fn pass(&mut self, check: &'static str) {
        info!(check, "backup target conformance: check passed");
        self.passed.push(check);
    }

    fn skip(&mut self, check: &'static str, reason: &'static str) {
        warn!(check, reason, "backup target conformance: check skipped");
        // Also on standard output, which the test harness shows with the
        // test's result, so a skip is seen without a tracing subscriber.
        println!("backup target conformance: {check} SKIPPED: {reason}");
        self.skipped.push(SkippedCheck { check, reason });
    }
}

/// The checks of the suite, in the order [`run_all`] runs them.
pub const CHECKS: [&str; 10] = [
    "invalid_keys_refused",
    "put_get_head_delete_round_trip",
    "missing_keys_are_not_found",
    "ranged_get",
    "put_if_absent_twice",
    "concurrent_put_if_absent",
    "list_many_with_pagination",
    "interrupted_upload_leaves_no_object",
    "large_object_streamed",
    "cleanup",
];

/// Runs the whole suite, in order, under one fresh prefix, then deletes what
/// the run wrote. A check that needs a capability `config` turns off is
/// skipped and reported as such (see the [module docs](self)); every other
/// check runs.
///
/// # Panics
/// On the first check that fails, naming it.
pub async fn run_all(target: &dyn BackupTarget, config: &SuiteConfig) -> SuiteReport {
    let run = SuiteRun::new(config.clone());
    let mut report = SuiteReport::default();
    info!(prefix = %run.prefix(), target = ?target, "backup target conformance: start");
    invalid_keys_refused(target, &run).await;
    report.pass("invalid_keys_refused");
    put_get_head_delete_round_trip(target, &run).await;
    report.pass("put_get_head_delete_round_trip");
    missing_keys_are_not_found(target, &run).await;
    report.pass("missing_keys_are_not_found");
    ranged_get(target, &run).await;
    report.pass("ranged_get");
    put_if_absent_twice(target, &run).await;
    report.pass("put_if_absent_twice");
    if config.put_if_absent_atomic {
        concurrent_put_if_absent(target, &run).await;
        report.pass("concurrent_put_if_absent");
    } else {
        report.skip(
            "concurrent_put_if_absent",
            "the target declares put_if_absent_atomic = false: racing creates may all succeed",
        );
    }
    list_many_with_pagination(target, &run).await;
    report.pass("list_many_with_pagination");
    interrupted_upload_leaves_no_object(target, &run).await;
    report.pass("interrupted_upload_leaves_no_object");
    large_object_streamed(target, &run).await;
    report.pass("large_object_streamed");
    if config.memory_bound.is_none() {
        report.skip(
            "large_object_streamed: memory bounds",
            "the target declares no memory_bound (it keeps objects in memory by design); the object was still streamed and verified",
        );
    }
    if !config.large_object_checksum_in_head {
        report.skip(
            "large_object_streamed: checksum in head",
            "the target declares large_object_checksum_in_head = false; a reported checksum was still checked",
        );
    }
    cleanup(target, &run).await;
    report.pass("cleanup");
    info!(
        prefix = %run.prefix(),
        passed = report.passed.len(),
        skipped = report.skipped.len(),
        "backup target conformance: done"
    );
    report
}

/// Runs the whole suite as [`run_all`] does, discarding the report: the
/// entry point every conformance module names `all`.
///
/// # Panics
/// On the first check that fails, naming it.
pub async fn all(target: &dyn BackupTarget, config: &SuiteConfig) {
    run_all(target, config).await;
}

/// Deletes everything under the run's prefix and checks the prefix is then
/// empty.
///
/// # Panics
/// When listing or deleting fails, or objects remain.
pub async fn cleanup(target: &dyn BackupTarget, run: &SuiteRun) {
    let left = must(target.list_all(run.prefix()).await, "cleanup: list");
    for meta in &left {
        must(target.delete(&meta.key).await, "cleanup: delete");
    }
    let after = must(target.list_all(run.prefix()).await, "cleanup: list again");
    assert!(
        after.is_empty(),
        "cleanup: objects remain after deleting: {:?}",
        keys(&after)
    );
}

/// Keys that break a rule are refused with [`Error::InvalidInput`] before
/// any target is called, and prefixes likewise.
///
/// # Panics
/// When an invalid key or prefix is accepted, or refused with another error.
pub async fn invalid_keys_refused(_target: &dyn BackupTarget, _run: &SuiteRun) {
    let too_long = "k".repeat(crate::backup::MAX_KEY_LEN + 1);
    for bad in [
        "",
        "/leading",
        "trailing/",
        "a//b",
        "..",
        "../escape",
        "a/../../escape",
        "a/./b",
        "nul\0byte",
        "new\nline",
        "del\u{7f}",
        "back\\slash",
        too_long.as_str(),
    ] {
        match ObjectKey::new(bad) {
            Err(Error::InvalidInput { field, rule }) => {
                assert_eq!(field, "key", "invalid key {bad:?}: field");
                assert!(!rule.is_empty(), "invalid key {bad:?}: empty rule");
            }
            other => panic!("invalid_keys_refused: key {bad:?} gave {other:?}"),
        }
    }
    for bad in ["/", "/a", "a//", "../", "a/../b", "x\u{1}"] {
        assert_eq!(
            ObjectPrefix::new(bad).map_err(|e| e.kind()).err(),
            Some(ErrorKind::InvalidInput),
            "invalid_keys_refused: prefix {bad:?} was accepted"
        );
    }
}

/// Put, head, get, overwrite, list and delete of small objects: an empty
/// one, one sent in many odd-sized chunks, one with a unicode key.
///
/// # Panics
/// On any difference from what was written.
pub async fn put_get_head_delete_round_trip(target: &dyn BackupTarget, run: &SuiteRun) {
    let check = "round_trip";
    let tol = run.config.clock_tolerance;

    let key = run.key("round-trip/hello.txt");
    let put = must(target.put_bytes(&key, "hello".into()).await, check);
    assert_eq!(put.size, 5, "{check}: put size");
    assert_eq!(
        put.checksum,
        Checksum::crc32c_of(b"hello"),
        "{check}: put checksum"
    );
    let meta = must(target.head(&key).await, check);
    assert_eq!(meta.key, key, "{check}: head key");
    assert_eq!(meta.size, 5, "{check}: head size");
    assert_eq!(
        meta.checksum,
        Some(Checksum::crc32c_of(b"hello")),
        "{check}: head must return the checksum computed at put"
    );
    assert_recent(meta.last_modified, tol, check);
    let got = must(target.get(&key).await, check);
    assert_eq!(got.range, 0..5, "{check}: get range");
    assert_eq!(got.meta.size, 5, "{check}: get meta size");
    assert_eq!(
        &must(got.bytes().await, check)[..],
        b"hello",
        "{check}: get"
    );

    // Overwrite with different, longer content sent in odd chunks (and an
    // empty chunk, which targets must tolerate).
    let parts: Vec<Bytes> = vec![
        Bytes::from_static(b"abc"),
        Bytes::new(),
        Bytes::from(vec![7u8; 70_001]),
        Bytes::from_static(b"z"),
    ];
    let whole: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
    let body = stream::iter(parts.into_iter().map(Ok)).boxed();
    let put = must(target.put(&key, body).await, check);
    assert_eq!(put.size, whole.len() as u64, "{check}: overwrite size");
    assert_eq!(
        &must(target.get_bytes(&key).await, check)[..],
        &whole[..],
        "{check}: get after overwrite"
    );
    let meta = must(target.head(&key).await, check);
    assert_eq!(
        meta.size,
        whole.len() as u64,
        "{check}: head after overwrite"
    );
    assert_eq!(
        meta.checksum,
        Some(Checksum::crc32c_of(&whole)),
        "{check}: checksum after overwrite"
    );

    // The empty object.
    let empty = run.key("round-trip/empty");
    let put = must(
        target.put(&empty, stream::empty().boxed()).await,
        "round_trip: empty",
    );
    assert_eq!(put.size, 0, "{check}: empty put size");
    let meta = must(target.head(&empty).await, check);
    assert_eq!(meta.size, 0, "{check}: empty head size");
    assert_eq!(
        meta.checksum,
        Some(Checksum::Crc32c(0)),
        "{check}: empty checksum"
    );
    assert!(
        must(target.get_bytes(&empty).await, check).is_empty(),
        "{check}: empty get"
    );

    // A key with spaces, unicode and several segments.
    let fancy = run.key("round-trip/sub dir/ünï cödé+=&?.bin");
    let data = Bytes::from((0..=255u8).cycle().take(3000).collect::<Vec<u8>>());
    must(target.put_bytes(&fancy, data.clone()).await, check);
    assert_eq!(
        must(target.get_bytes(&fancy).await, check),
        data,
        "{check}: unicode key"
    );

    let listed = must(target.list_all(&run.sub_prefix("round-trip/")).await, check);
    assert_eq!(
        keys(&listed),
        vec![empty.to_string(), key.to_string(), fancy.to_string()]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "{check}: list"
    );
    let by_key: std::collections::HashMap<_, _> =
        listed.iter().map(|m| (m.key.clone(), m.size)).collect();
    assert_eq!(by_key[&fancy], 3000, "{check}: listed size");
    assert_eq!(by_key[&empty], 0, "{check}: listed size of empty");

    for k in [&key, &empty, &fancy] {
        must(target.delete(k).await, check);
        assert_kind(
            target.head(k).await,
            ErrorKind::NotFound,
            "round_trip: head after delete",
        );
        assert_kind(
            target.get(k).await.map(|_| ()),
            ErrorKind::NotFound,
            "round_trip: get after delete",
        );
    }
    assert!(
        must(target.list_all(&run.sub_prefix("round-trip/")).await, check).is_empty(),
        "{check}: list after delete"
    );
    assert!(
        !must(target.exists(&key).await, check),
        "{check}: exists after delete"
    );
}

/// Get, ranged get, head and delete of a key that was never written fail
/// with [`Error::NotFound`].
///
/// # Panics
/// When they succeed or fail otherwise.
pub async fn missing_keys_are_not_found(target: &dyn BackupTarget, run: &SuiteRun) {
    let key = run.key("missing/never-written");
    assert_kind(
        target.get(&key).await.map(|_| ()),
        ErrorKind::NotFound,
        "missing: get",
    );
    assert_kind(
        target
            .get_range(&key, ByteRange::starting_at(0))
            .await
            .map(|_| ()),
        ErrorKind::NotFound,
        "missing: ranged get",
    );
    assert_kind(
        target.head(&key).await,
        ErrorKind::NotFound,
        "missing: head",
    );
    assert_kind(
        target.delete(&key).await,
        ErrorKind::NotFound,
        "missing: delete",
    );
    assert!(
        !must(
            target.delete_if_exists(&key).await,
            "missing: delete_if_exists"
        ),
        "missing: delete_if_exists reported a deletion"
    );
    assert!(
        must(
            target.list_all(&run.sub_prefix("missing/")).await,
            "missing: list"
        )
        .is_empty(),
        "missing: list of an unused prefix is not empty"
    );
}

/// Ranged gets return exactly the bytes asked for, clamp the end to the
/// object's size, and refuse a start at or past the end with
/// [`Error::InvalidInput`].
///
/// # Panics
/// On any wrong byte or error.
pub async fn ranged_get(target: &dyn BackupTarget, run: &SuiteRun) {
    let check = "ranged_get";
    let key = run.key("range/object");
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    must(
        target.put_bytes(&key, Bytes::from(data.clone())).await,
        check,
    );
    let cases: [(ByteRange, std::ops::Range<usize>); 7] = [
        (range(0, 1), 0..1),
        (range(0, 1000), 0..1000),
        (range(10, 20), 10..20),
        (range(999, 1000), 999..1000),
        (range(990, 5000), 990..1000),
        (ByteRange::starting_at(500), 500..1000),
        (ByteRange::starting_at(0), 0..1000),
    ];
    for (r, expect) in cases {
        let got = must(target.get_opts(&key, GetOptions::range(r)).await, check);
        assert_eq!(
            got.range,
            expect.start as u64..expect.end as u64,
            "{check}: range reported for {r:?}"
        );
        assert_eq!(got.meta.size, 1000, "{check}: object size for {r:?}");
        let bytes = must(got.bytes().await, check);
        assert_eq!(&bytes[..], &data[expect], "{check}: bytes of {r:?}");
    }
    for r in [
        ByteRange::starting_at(1000),
        range(1000, 1010),
        range(5000, 6000),
    ] {
        assert_kind(
            target.get_range(&key, r).await.map(|_| ()),
            ErrorKind::InvalidInput,
            "ranged_get: range past the end",
        );
    }
    must(target.delete(&key).await, check);
}

/// A second `put_if_absent` of one key fails with [`Error::Conflict`] and
/// leaves the first object untouched; after a delete the key is free again.
///
/// # Panics
/// When the second create succeeds or the object changes.
pub async fn put_if_absent_twice(target: &dyn BackupTarget, run: &SuiteRun) {
    let check = "put_if_absent_twice";
    let key = run.key("create/manifest.json");
    must(
        target.put_bytes_if_absent(&key, "first".into()).await,
        check,
    );
    assert_kind(
        target.put_bytes_if_absent(&key, "second".into()).await,
        ErrorKind::Conflict,
        "put_if_absent_twice: second create",
    );
    // A streamed create of an existing key conflicts too.
    let body = generated_body(3 * 64 * 1024, 64 * 1024, 1).0;
    assert_kind(
        target.put_if_absent(&key, body).await,
        ErrorKind::Conflict,
        "put_if_absent_twice: streamed second create",
    );
    assert_eq!(
        &must(target.get_bytes(&key).await, check)[..],
        b"first",
        "{check}: the first object must be untouched"
    );
    must(target.delete(&key).await, check);
    must(
        target.put_bytes_if_absent(&key, "third".into()).await,
        "put_if_absent_twice: create after delete",
    );
    assert_eq!(&must(target.get_bytes(&key).await, check)[..], b"third");
    // Overwrite still works on a key made by a create.
    must(target.put_bytes(&key, "fourth".into()).await, check);
    assert_eq!(&must(target.get_bytes(&key).await, check)[..], b"fourth");
    must(target.delete(&key).await, check);
}

/// Of [`SuiteConfig::racing_writers`] concurrent `put_if_absent`s of one
/// key, exactly one succeeds, the others fail with [`Error::Conflict`], and
/// the stored object is the winner's.
///
/// # Panics
/// When zero or several win, or a loser fails otherwise.
pub async fn concurrent_put_if_absent(target: &dyn BackupTarget, run: &SuiteRun) {
    let check = "concurrent_put_if_absent";
    let key = run.key("race/lock");
    let n = run.config.racing_writers.max(2);
    let bodies: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("writer {i} ").repeat(500 + i)))
        .collect();
    let results = futures::future::join_all(
        bodies
            .iter()
            .map(|b| target.put_bytes_if_absent(&key, b.clone())),
    )
    .await;
    let mut winners = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(_) => winners.push(i),
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => panic!("{check}: writer {i} failed with {e} instead of a conflict"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{check}: winners {winners:?}, expected exactly one"
    );
    let stored = must(target.get_bytes(&key).await, check);
    assert_eq!(
        stored, bodies[winners[0]],
        "{check}: stored object is not the winner's"
    );
    must(target.delete(&key).await, check);
}

/// After [`SuiteConfig::list_objects`] puts, listing returns each key once,
/// in ascending order, with its size — with the default page size, with
/// small pages (7 and 1 keys per page), by string prefix, and resumed with
/// `start_after`.
///
/// # Panics
/// On a missing, extra, duplicate or misordered key.
pub async fn list_many_with_pagination(target: &dyn BackupTarget, run: &SuiteRun) {
    let check = "list_many_with_pagination";
    let n = run.config.list_objects.max(10);
    let n_a = n * 2 / 3;
    let mut written: Vec<(ObjectKey, u64)> = Vec::new();
    for i in 0..n_a {
        written.push((run.key(&format!("list/a/{i:04}")), (i % 7) as u64));
    }
    for i in 0..(n - n_a) {
        written.push((run.key(&format!("list/b/{i:04}")), (i % 5) as u64 + 1));
    }
    written.push((run.key("list/ab"), 3));
    let results: Vec<Result<_>> = stream::iter(written.iter().map(|(k, size)| {
        let body = Bytes::from(vec![b'x'; *size as usize]);
        async move { target.put_bytes(k, body).await }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    for r in results {
        must(r, check);
    }
    written.sort();
    let all_keys: Vec<String> = written.iter().map(|(k, _)| k.to_string()).collect();

    let list_prefix = run.sub_prefix("list/");
    for page in [None, NonZeroU32::new(7), NonZeroU32::new(1)] {
        let opts = match page {
            Some(p) => ListOptions::default().with_page_size(p),
            None => ListOptions::default(),
        };
        let listed = must(
            target
                .list_opts(&list_prefix, opts)
                .try_collect::<Vec<_>>()
                .await,
            check,
        );
        assert_eq!(
            listed.iter().map(|m| m.key.to_string()).collect::<Vec<_>>(),
            all_keys,
            "{check}: page size {page:?}: keys must be complete, unique and ascending"
        );
        for (meta, (key, size)) in listed.iter().zip(&written) {
            assert_eq!(meta.size, *size, "{check}: size of {key}");
            assert_recent(meta.last_modified, run.config.clock_tolerance, check);
        }
    }

    // String-prefix semantics: "list/a" matches "list/a/…" and "list/ab".
    let listed = must(target.list_all(&run.sub_prefix("list/a")).await, check);
    let expect: Vec<String> = all_keys
        .iter()
        .filter(|k| k.starts_with(&format!("{}list/a", run.prefix())))
        .cloned()
        .collect();
    assert_eq!(listed.len(), n_a + 1, "{check}: prefix list/a");
    assert_eq!(keys_vec(&listed), expect, "{check}: prefix list/a");
    let listed = must(target.list_all(&run.sub_prefix("list/a/")).await, check);
    assert_eq!(listed.len(), n_a, "{check}: prefix list/a/");

    // Resuming after a key, with small pages.
    let after = run.key(&format!("list/a/{:04}", n_a / 2));
    let opts = ListOptions::default()
        .with_start_after(after.clone())
        .with_page_size(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
    let listed = must(
        target
            .list_opts(&list_prefix, opts)
            .try_collect::<Vec<_>>()
            .await,
        check,
    );
    let expect: Vec<String> = all_keys
        .iter()
        .filter(|k| k.as_str() > after.as_str())
        .cloned()
        .collect();
    assert_eq!(keys_vec(&listed), expect, "{check}: start_after {after}");

    let results: Vec<Result<()>> = stream::iter(written.iter().map(|(k, _)| target.delete(k)))
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        must(r, check);
    }
    assert!(
        must(target.list_all(&list_prefix).await, check).is_empty(),
        "{check}: list after deleting all"
    );
}

/// A put whose body fails midway (after [`SuiteConfig::interrupt_after`]
/// bytes) returns an error and leaves no object: nothing under the key, an
/// overwritten object intact, a create's key still free. A put whose future
/// is dropped midway leaves nothing either.
///
/// # Panics
/// When the put succeeds or leaves a trace.
pub async fn interrupted_upload_leaves_no_object(target: &dyn BackupTarget, run: &SuiteRun) {
    let check = "interrupted_upload";
    let cfg = &run.config;
    let key = run.key("interrupted/object");

    let body = failing_body(cfg.interrupt_after, cfg.chunk_size);
    let err = target
        .put(&key, body)
        .await
        .err()
        .unwrap_or_else(|| panic!("{check}: a put whose body failed succeeded"));
    info!(error = %err, "interrupted put failed as expected");
    assert_kind(
        target.head(&key).await,
        ErrorKind::NotFound,
        "interrupted: head",
    );
    assert_kind(
        target.get(&key).await.map(|_| ()),
        ErrorKind::NotFound,
        "interrupted: get",
    );
    assert!(
        must(
            target.list_all(&run.sub_prefix("interrupted/")).await,
            check
        )
        .is_empty(),
        "{check}: an interrupted put left a listed object"
    );

    // An interrupted overwrite keeps the old object.
    must(target.put_bytes(&key, "old".into()).await, check);
    let body = failing_body(cfg.interrupt_after, cfg.chunk_size);
    assert!(
        target.put(&key, body).await.is_err(),
        "{check}: interrupted overwrite succeeded"
    );
    assert_eq!(
        &must(target.get_bytes(&key).await, check)[..],
        b"old",
        "{check}: an interrupted overwrite changed the object"
    );
    must(target.delete(&key).await, check);

    // An interrupted create leaves the key free.
    let body = failing_body(cfg.interrupt_after, cfg.chunk_size);
    assert!(
        target.put_if_absent(&key, body).await.is_err(),
        "{check}: interrupted create succeeded"
    );
    must(
        target.put_bytes_if_absent(&key, "created".into()).await,
        "interrupted: create after an interrupted create",
    );
    must(target.delete(&key).await, check);

    // A put abandoned midway (its future dropped) leaves nothing.
    let dropped = run.key("interrupted/dropped");
    let (body, _) = generated_body(cfg.interrupt_after, cfg.chunk_size, 9);
    let body = body.chain(stream::pending()).boxed();
    let outcome = tokio::time::timeout(Duration::from_secs(3), target.put(&dropped, body)).await;
    assert!(
        outcome.is_err(),
        "{check}: a put with a stalled body finished"
    );
    // Give a target that cleans up in the background a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_kind(
        target.head(&dropped).await,
        ErrorKind::NotFound,
        "interrupted: head after a dropped put",
    );
    assert!(
        must(
            target.list_all(&run.sub_prefix("interrupted/")).await,
            check
        )
        .is_empty(),
        "{check}: a dropped put left a listed object"
    );
}

/// Streams a [`SuiteConfig::large_object_size`] object in and out and
/// verifies it by size and CRC32C, with bounded memory (see the module
/// docs), plus ranged gets around likely part boundaries.
///
/// # Panics
/// On wrong content or memory beyond the bound.
pub async fn large_object_streamed(target: &dyn BackupTarget, run: &SuiteRun) {
    static LARGE_TRANSFERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = LARGE_TRANSFERS.lock().await;

    let check = "large_object_streamed";
    let cfg = &run.config;
    let size = cfg.large_object_size;
    let key = run.key("large/object.bin");

    let rss = MemoryWatch::start(cfg.memory_bound.is_some());
    let (body, tracker) = generated_body(size, cfg.chunk_size, 42);
    let started = std::time::Instant::now();
    let put = must(target.put(&key, body).await, check);
    let put_elapsed = started.elapsed();
    let put_peak_rss = rss.peak_growth();
    let expected = tracker.checksum();
    assert_eq!(put.size, size, "{check}: put size");
    assert_eq!(put.checksum, expected, "{check}: put checksum");
    assert_eq!(
        tracker.produced(),
        size,
        "{check}: the body was not read to the end"
    );

    let meta = must(target.head(&key).await, check);
    assert_eq!(meta.size, size, "{check}: head size");
    if cfg.large_object_checksum_in_head {
        assert_eq!(meta.checksum, Some(expected), "{check}: head checksum");
    } else if let Some(c) = meta.checksum {
        assert_eq!(c, expected, "{check}: head reported a wrong checksum");
    }

    let rss = MemoryWatch::start(cfg.memory_bound.is_some());
    let started = std::time::Instant::now();
    let got = must(target.get(&key).await, check);
    assert_eq!(got.range, 0..size, "{check}: get range");
    let mut hasher = Crc32cHasher::new();
    let mut body = got.body;
    while let Some(chunk) = body.next().await {
        hasher.update(&must(chunk, check));
    }
    let get_elapsed = started.elapsed();
    let get_peak_rss = rss.peak_growth();
    assert_eq!(hasher.len(), size, "{check}: get size");
    assert_eq!(hasher.checksum(), expected, "{check}: get content (CRC32C)");

    info!(
        size,
        put_ms = put_elapsed.as_millis() as u64,
        get_ms = get_elapsed.as_millis() as u64,
        input_held_peak = tracker.peak_live(),
        put_peak_rss_growth = ?put_peak_rss,
        get_peak_rss_growth = ?get_peak_rss,
        "large object streamed"
    );

    if let Some(bound) = cfg.memory_bound {
        let held = tracker.peak_live();
        assert!(
            held <= bound + cfg.chunk_size as u64,
            "{check}: the target held {held} bytes of the body at once; bound {bound} (+ one chunk)"
        );
        let limit = bound + cfg.memory_slack;
        for (what, growth) in [("put", put_peak_rss), ("get", get_peak_rss)] {
            let growth = growth.unwrap_or_else(|| {
                panic!("{check}: cannot measure peak memory (needs Linux /proc/self); set no memory_bound on this platform")
            });
            assert!(
                growth <= limit,
                "{check}: peak resident memory grew by {} MiB during the {what} of a {} MiB object; allowed {} MiB (bound {} + slack {})",
                growth / MIB,
                size / MIB,
                limit / MIB,
                bound / MIB,
                cfg.memory_slack / MIB
            );
        }
    }

    // Ranges around the part boundaries of common configurations.
    for boundary in [5 * MIB, 8 * MIB, 16 * MIB] {
        if boundary + 100 > size {
            continue;
        }
        let r = range(boundary - 100, boundary + 100);
        let got = must(target.get_range(&key, r).await, check);
        let bytes = must(got.bytes().await, check);
        assert_eq!(
            bytes,
            generated_slice(boundary - 100, 200, cfg.chunk_size, 42),
            "{check}: bytes around offset {boundary}"
        );
    }
    must(target.delete(&key).await, check);
}

// ---------------------------------------------------------------------------
// Body generation and tracking.

/// Counts the bytes of the suite's body chunks that are still alive.
#[derive(Debug, Default)]
struct Tracker {
    live: AtomicU64,
    peak: AtomicU64,
    produced: AtomicU64,
    crc: std::sync::Mutex<Crc32cHasher>,
}

impl Tracker {
    fn peak_live(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
    fn produced(&self) -> u64 {
        self.produced.load(Ordering::SeqCst)
    }
    fn checksum(&self) -> Checksum {
        self.crc
            .lock()
            .map(|h| h.checksum())
            .unwrap_or_else(|e| e.into_inner().checksum())
    }
}

/// A chunk's storage that reports its death to the tracker.
struct TrackedChunk {
    data: Vec<u8>,
    tracker: Arc<Tracker>,
}

impl AsRef<[u8]> for TrackedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for TrackedChunk {
    fn drop(&mut self) {
        self.tracker
            .live
            .fetch_sub(self.data.len() as u64, Ordering::SeqCst);
    }
}

/// One MiB of pseudo-random bytes from `seed`; chunks are cut from it.
fn pattern(seed: u64) -> Arc<Vec<u8>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(MIB as usize);
    while v.len() < MIB as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Arc::new(v)
}

/// Chunk `index` of a generated body: a window of the pattern that moves
/// with the index, stamped with the index so no two chunks are equal.
fn chunk_bytes(pattern: &[u8], index: u64, len: usize, out: &mut Vec<u8>) {
    let span = pattern.len() - len.min(pattern.len() / 2);
    let start = (index.wrapping_mul(7919) % span as u64) as usize;
    let take = len.min(pattern.len() - start);
    out.extend_from_slice(&pattern[start..start + take]);
    out.resize(len, 0);
    let stamp = index.to_le_bytes();
    let n = stamp.len().min(len);
    out[..n].copy_from_slice(&stamp[..n]);
}

/// A lazily generated body of `size` bytes in chunks of `chunk_size`.
fn generated_body(size: u64, chunk_size: usize, seed: u64) -> (ByteStream, Arc<Tracker>) {
    let tracker = Arc::new(Tracker::default());
    let pattern = pattern(seed);
    let t = tracker.clone();
    let chunks = size.div_ceil(chunk_size as u64);
    let body = stream::iter(0..chunks)
        .map(move |i| {
            let len = (size - i * chunk_size as u64).min(chunk_size as u64) as usize;
            let mut data = Vec::with_capacity(len);
            chunk_bytes(&pattern, i, len, &mut data);
            if let Ok(mut h) = t.crc.lock() {
                h.update(&data);
            }
            t.produced.fetch_add(len as u64, Ordering::SeqCst);
            let live = t.live.fetch_add(len as u64, Ordering::SeqCst) + len as u64;
            t.peak.fetch_max(live, Ordering::SeqCst);
            Ok(Bytes::from_owner(TrackedChunk {
                data,
                tracker: t.clone(),
            }))
        })
        .boxed();
    (body, tracker)
}

/// `len` bytes at `offset` of the body [`generated_body`] makes.
fn generated_slice(offset: u64, len: usize, chunk_size: usize, seed: u64) -> Bytes {
    let pattern = pattern(seed);
    let mut out = Vec::with_capacity(len);
    let mut pos = offset;
    let mut chunk = Vec::with_capacity(chunk_size);
    while out.len() < len {
        let index = pos / chunk_size as u64;
        chunk.clear();
        chunk_bytes(&pattern, index, chunk_size, &mut chunk);
        let within = (pos % chunk_size as u64) as usize;
        let take = (chunk_size - within).min(len - out.len());
        out.extend_from_slice(&chunk[within..within + take]);
        pos += take as u64;
    }
    Bytes::from(out)
}

/// A body that yields `after` bytes, then an error.
fn failing_body(after: u64, chunk_size: usize) -> ByteStream {
    let (body, _) = generated_body(after, chunk_size, 7);
    body.chain(stream::once(async {
        Err(Error::transient(
            "conformance",
            "the body stream failed midway (injected by the suite)",
        ))
    }))
    .boxed()
}

// ---------------------------------------------------------------------------
// Peak memory of the process.

/// Watches the growth of the process's peak resident size from now.
struct MemoryWatch {
    baseline: Option<u64>,
}

impl MemoryWatch {
    fn start(enabled: bool) -> Self {
        if !enabled {
            return MemoryWatch { baseline: None };
        }
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        MemoryWatch {
            baseline: reset.then(|| status_bytes("VmRSS:")).flatten(),
        }
    }

    /// Peak RSS growth since [`start`](Self::start), if measurable.
    fn peak_growth(&self) -> Option<u64> {
        let base = self.baseline?;
        Some(status_bytes("VmHWM:")?.saturating_sub(base))
    }
}

fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

// ---------------------------------------------------------------------------
// Assertion helpers.

fn must<T>(r: Result<T>, check: &str) -> T {
    r.unwrap_or_else(|e| panic!("{check}: unexpected error: {e} ({e:?})"))
}

fn assert_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, check: &str) {
    match r {
        Err(e) if e.kind() == kind => {}
        Err(e) => panic!("{check}: expected {kind:?}, got {:?}: {e}", e.kind()),
        Ok(v) => panic!("{check}: expected {kind:?}, got Ok({v:?})"),
    }
}

fn assert_recent(t: SystemTime, tolerance: Duration, check: &str) {
    let now = SystemTime::now();
    let off = now.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(
        off <= tolerance,
        "{check}: last_modified {t:?} is {off:?} away from now"
    );
}

fn range(start: u64, end: u64) -> ByteRange {
    ByteRange::new(start, end).unwrap_or_else(|e| panic!("suite range: {e}"))
}

fn keys(metas: &[ObjectMeta]) -> Vec<String> {
    let mut v = keys_vec(metas);
    v.sort();
    v
}

fn keys_vec(metas: &[ObjectMeta]) -> Vec<String> {
    metas.iter().map(|m| m.key.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_slices_match_the_generated_body() {
        let chunk = 1000;
        let (body, tracker) = generated_body(10_500, chunk, 3);
        let all: Vec<u8> =
            futures::executor::block_on(body.map_ok(|b| b.to_vec()).try_concat()).unwrap();
        assert_eq!(all.len(), 10_500);
        assert_eq!(tracker.checksum(), Checksum::crc32c_of(&all));
        assert_eq!(tracker.peak_live(), 1000, "chunks die as they are consumed");
        assert_eq!(
            generated_slice(950, 100, chunk, 3),
            Bytes::from(all[950..1050].to_vec())
        );
        assert_ne!(&all[0..1000], &all[1000..2000]);
    }
}
