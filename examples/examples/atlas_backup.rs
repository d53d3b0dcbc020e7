//! `atlas_backup`: the reference command line for Atlas's backup engine —
//! deduplicated, compressed, encrypted snapshots in one or several
//! repositories, as restic does, embeddable as `atlas_backup::repo`.
//!
//! ```text
//! atlas_backup [--repo URL]... [--quorum N] [--password-file FILE] [--quiet] COMMAND
//!
//!   init                              create the repositories (the 2nd and later mirror the 1st)
//!   backup DIR [--stdin NAME] [--kind full|incremental|point-in-time] [--tag T]... [--host H]
//!   snapshots                         list snapshots with their totals
//!   restore ID|latest --target DIR [--path P]
//!   restore ID|latest --path FILE --stdout
//!   check [--read-data | --read-data-subset N/M | --read-data-subset P%]
//!   forget [ID...] [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N]
//!          [--keep-monthly N] [--keep-yearly N] [--keep-within 1y2m3d4h] [--keep-tag T,U]
//!          [--group-by host,paths,tags] [--dry-run] [--prune]
//!   prune                             delete data no snapshot references
//!   sync                              copy what the 2nd and later repositories lack from the 1st
//!   key add|list|remove ID            (the new passphrase comes from ATLAS_NEW_PASSWORD)
//! ```
//!
//! Repository URLs: `file:///abs/path`, `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix` (see
//! `atlas_storage::url`; the cloud schemes need `--features storage-cloud`).
//! The passphrase comes from `ATLAS_PASSWORD` or `--password-file`, never from
//! the command line, and is never printed. With several `--repo`s, a backup
//! goes to all of them at once and succeeds when all (or `--quorum N`)
//! committed it; `key` changes every repository (under the same policy); the
//! other commands work on the first one (`check` on each).
//!
//! A source entry that cannot be read (it vanished, or reading it failed)
//! is left out with a warning, as restic does: the snapshot is saved but
//! marked incomplete (`snapshots` shows `!`), the skipped paths are listed,
//! and the exit status is 3.
//!
//! It runs with glibc's `MALLOC_ARENA_MAX=1` (re-executing itself with it
//! when unset), which saves another 10–16 MiB of peak memory on top of the
//! engine's own buffer recycling; `ATLAS_NO_ARENA_LIMIT=1` turns that off.
//!
//! Run: `cargo run --release -p atlas-examples --example atlas_backup -- --help`

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use atlas_backup::repo::{
    BackupKind, BackupOptions, CheckOptions, DirectorySource, InitOptions, KdfParams, KeySource,
    MirrorPolicy, MirrorSet, Progress, PruneOptions, ReadDataSubset, Repository, RestoreOptions,
    Snapshot, StreamSource, progress_channel, sync,
};
use atlas_backup::retention::{GroupBy, KeepCount, KeepWithin, RetentionPolicy, TagSet};
use atlas_storage::url::TargetUrl;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

type Failure = Box<dyn std::error::Error>;

const USAGE: &str = "usage: atlas_backup [--repo URL]... [--quorum N] [--password-file FILE] [--quiet] \
<init | backup DIR|--stdin NAME [--kind K] [--tag T] [--host H] | snapshots | \
restore ID|latest (--target DIR [--path P] | --path FILE --stdout) | \
check [--read-data | --read-data-subset N/M|P%] | \
forget [ID...] [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] \
[--keep-yearly N] [--keep-within D] [--keep-tag T,U] [--group-by host,paths,tags] [--dry-run] [--prune] | \
prune | sync | key add|list|remove ID>
passphrase: ATLAS_PASSWORD or --password-file; new key passphrase: ATLAS_NEW_PASSWORD";

struct Global {
    repos: Vec<TargetUrl>,
    quorum: Option<usize>,
    password_file: Option<PathBuf>,
    quiet: bool,
    command: String,
    rest: Vec<String>,
}

fn parse_global(mut args: std::vec::IntoIter<String>) -> Result<Global, String> {
    let mut g = Global {
        repos: Vec::new(),
        quorum: None,
        password_file: None,
        quiet: false,
        command: String::new(),
        rest: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repo" | "-r" => {
                let url = args.next().ok_or("--repo needs a URL")?;
                g.repos
                    .push(TargetUrl::parse(&url).map_err(|e| e.to_string())?);
            }
            "--quorum" => {
                let n = args.next().ok_or("--quorum needs a number")?;
                g.quorum = Some(
                    n.parse()
                        .map_err(|_| format!("--quorum: `{n}` is no number"))?,
                );
            }
            "--password-file" => {
                g.password_file = Some(args.next().ok_or("--password-file needs a path")?.into())
            }
            "--quiet" | "-q" => g.quiet = true,
            "--help" | "-h" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            _ => {
                g.command = a;
                g.rest = args.collect();
                break;
            }
        }
    }
    if g.command.is_empty() {
        return Err("no command given".into());
    }
    if g.repos.is_empty() {
        if let Ok(url) = std::env::var("ATLAS_REPOSITORY") {
            g.repos
                .push(TargetUrl::parse(&url).map_err(|e| e.to_string())?);
        } else {
            return Err("no repository: give --repo URL or set ATLAS_REPOSITORY".into());
        }
    }
    Ok(g)
}

/// Options of one command: flags with a value, boolean flags, positionals.
struct Flags {
    values: Vec<(String, String)>,
    switches: BTreeSet<String>,
    positional: Vec<String>,
}

impl Flags {
    fn parse(rest: &[String], with_value: &[&str], switches: &[&str]) -> Result<Flags, String> {
        let mut f = Flags {
            values: Vec::new(),
            switches: BTreeSet::new(),
            positional: Vec::new(),
        };
        let mut it = rest.iter();
        while let Some(a) = it.next() {
            if with_value.contains(&a.as_str()) {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                f.values.push((a.clone(), v.clone()));
            } else if switches.contains(&a.as_str()) {
                f.switches.insert(a.clone());
            } else if a.starts_with("--") {
                return Err(format!("unknown option {a}"));
            } else {
                f.positional.push(a.clone());
            }
        }
        Ok(f)
    }
    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.values
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn on(&self, name: &str) -> bool {
        self.switches.contains(name)
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    atlas_examples::main_support::init_tracing("warn");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let global = match parse_global(args.into_iter()) {
        Ok(g) => g,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("atlas_backup: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    #[cfg(feature = "storage-cloud")]
    {
        // One rustls provider for the cloud SDKs (see atlas-storage's docs).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    atlas_examples::main_support::run_with_status("atlas_backup", run(global))
}

/// glibc gives threads their own malloc arenas (up to 8 per core) and keeps
/// freed memory in the arena it came from. The backup engine recycles its
/// large buffers, so it does well with glibc's defaults (peak RSS of a
/// 512 MiB backup 77 MiB, 251 MiB before it did), but one arena still
/// saves what the many blocking threads leave in theirs: 67 MiB, and 82
/// instead of 98 MiB at 2 GiB, at the same speed (BENCHMARKS.md). The
/// limit is only read at process start, so the binary re-executes itself
/// once with `MALLOC_ARENA_MAX=1` unless that variable is already set or
/// `ATLAS_NO_ARENA_LIMIT` is (to measure glibc's defaults, which is what a
/// program embedding the library gets).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && std::env::var_os("ATLAS_NO_ARENA_LIMIT").is_none()
    {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("MALLOC_ARENA_MAX", "1")
                .exec();
            // Only reached when exec failed: carry on with the defaults.
            eprintln!("atlas_backup: could not re-execute with MALLOC_ARENA_MAX=1: {err}");
        }
    }
}

fn passphrase(g: &Global, var: &str) -> Result<KeySource, Failure> {
    let text = match (&g.password_file, std::env::var(var)) {
        (Some(file), _) if var == "ATLAS_PASSWORD" => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read --password-file {}: {e}", file.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (_, Ok(p)) => p,
        _ => return Err(format!("no passphrase: set {var}").into()),
    };
    if text.is_empty() {
        return Err(format!("{var} is empty").into());
    }
    Ok(KeySource::passphrase(text))
}

async fn open_all(g: &Global) -> Result<Vec<Repository>, Failure> {
    let key = passphrase(g, "ATLAS_PASSWORD")?;
    let mut repos = Vec::new();
    for url in &g.repos {
        let target = url.open(false).await?;
        let repo = Repository::open(target, url.prefix().clone(), &key)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        repos.push(repo);
    }
    Ok(repos)
}

async fn run(g: Global) -> atlas_examples::main_support::StatusResult {
    let ok = match g.command.as_str() {
        "init" => init(&g).await,
        "backup" => return backup(&g).await,
        "snapshots" => snapshots(&g).await,
        "restore" => restore(&g).await,
        "check" => check(&g).await,
        "forget" => forget(&g).await,
        "prune" => {
            let repos = open_all(&g).await?;
            prune(&g, &repos[0]).await
        }
        "sync" => sync_all(&g).await,
        "key" => key(&g).await,
        other => Err(format!("unknown command `{other}`\n{USAGE}").into()),
    }?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn init(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let key = passphrase(g, "ATLAS_PASSWORD")?;
    let first = &g.repos[0];
    let target = first.open(true).await?;
    let repo =
        Repository::init(target, first.prefix().clone(), &key, InitOptions::default()).await?;
    println!("created repository {} at {first}", repo.config().id);
    for url in &g.repos[1..] {
        let target = url.open(true).await?;
        Repository::init_mirror(&repo, target, url.prefix().clone()).await?;
        println!("created mirror at {url}");
    }
    Ok(true)
}

fn parse_kind(text: &str) -> Result<BackupKind, Failure> {
    Ok(match text {
        "full" => BackupKind::Full,
        "incremental" => BackupKind::Incremental,
        "point-in-time" | "pit" => BackupKind::PointInTime,
        other => {
            return Err(
                format!("--kind `{other}`: must be full, incremental or point-in-time").into(),
            );
        }
    })
}

/// Exits 0, or 3 when the snapshot was saved without some source entries
/// that could not be read (restic's convention).
async fn backup(g: &Global) -> atlas_examples::main_support::StatusResult {
    let f = Flags::parse(&g.rest, &["--kind", "--tag", "--host", "--stdin"], &[])?;
    let repos = open_all(g).await?;
    let mut options = BackupOptions::default();
    if let Some(k) = f.value("--kind") {
        options = options.with_kind(parse_kind(k)?);
    }
    for t in f.all("--tag") {
        options = options.with_tag(t);
    }
    if let Some(h) = f.value("--host") {
        options = options.with_host(h);
    }
    let (progress, rx) = progress_channel();
    options = options.with_progress(progress);
    let bar = ProgressBar::start(rx, g.quiet);
    let t0 = Instant::now();
    let policy = match g.quorum {
        Some(n) => MirrorPolicy::Quorum(n),
        None => MirrorPolicy::All,
    };
    let set = MirrorSet::new(repos, policy)?;
    let result = match (f.value("--stdin"), f.positional.as_slice()) {
        (Some(name), []) => {
            if options.kind == BackupKind::Incremental {
                options = options.with_kind(BackupKind::PointInTime);
            }
            let source = StreamSource::from_async_read(name, tokio::io::stdin());
            set.backup(source, options).await
        }
        (None, [dir]) => {
            let path = std::fs::canonicalize(dir).map_err(|e| format!("{dir}: {e}"))?;
            set.backup(DirectorySource::new(path), options).await
        }
        _ => return Err("backup needs exactly one directory, or --stdin NAME".into()),
    };
    bar.finish().await;
    let report = result?;
    let s = &report.snapshot;
    println!(
        "snapshot {} saved: {} files, {} dirs, {} in {:.1?} ({}/s); new data {} ({} stored, {} new blobs)",
        s.id.short(),
        s.totals.files,
        s.totals.dirs,
        human(s.totals.bytes),
        t0.elapsed(),
        human((s.totals.bytes as f64 / t0.elapsed().as_secs_f64().max(1e-9)) as u64),
        human(s.totals.new_bytes),
        human(s.totals.new_bytes_stored),
        s.totals.new_chunks,
    );
    let mut all_ok = true;
    // One outcome per repository, in the order of the set.
    for (url, t) in g.repos.iter().zip(&report.targets) {
        match &t.error {
            None => {
                if report.targets.len() > 1 {
                    println!("  committed on {url}")
                }
            }
            Some(e) => {
                all_ok = false;
                println!("  NOT committed on {url}: {e}")
            }
        }
    }
    if !all_ok {
        println!("  (the quorum was met; run `sync` to bring the lagging repositories up to date)");
    }
    if !report.unreadable.is_empty() {
        const SHOWN: usize = 20;
        println!(
            "  INCOMPLETE: {} entries could not be read and are left out:",
            report.unreadable.len()
        );
        for e in report.unreadable.iter().take(SHOWN) {
            println!("    {}: {}", e.path, e.reason);
        }
        if report.unreadable.len() > SHOWN {
            println!("    … and {} more", report.unreadable.len() - SHOWN);
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshots(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let repos = open_all(g).await?;
    let mut snaps = repos[0].snapshots().await?;
    snaps.sort_by_key(|s| s.time);
    println!(
        "{:<10} {:<20} {:<14} {:<12} {:>8} {:>11} {:>11}  source / tags",
        "id", "time (UTC)", "kind", "host", "files", "size", "added"
    );
    for s in &snaps {
        let time = humantime::format_rfc3339_seconds(s.time).to_string();
        println!(
            "{:<10} {:<20} {:<14} {:<12} {:>8} {:>11} {:>11}  {}{}{}",
            s.id.short(),
            time.trim_end_matches('Z').replace('T', " "),
            s.kind.to_string(),
            s.host,
            s.totals.files,
            human(s.totals.bytes),
            human(s.totals.new_bytes_stored),
            s.source,
            if s.tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", s.tags.join(","))
            },
            if s.is_complete() {
                String::new()
            } else {
                format!(" ! {} entries unreadable", s.totals.unreadable)
            }
        );
    }
    println!("{} snapshots", snaps.len());
    Ok(true)
}

async fn restore(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let f = Flags::parse(&g.rest, &["--target", "--path"], &["--stdout"])?;
    let [id] = f.positional.as_slice() else {
        return Err("restore needs one snapshot id (or `latest`)".into());
    };
    let repos = open_all(g).await?;
    let repo = &repos[0];
    // An id, a unique prefix of one, or `latest`.
    let snapshot = repo.snapshot(id).await?;
    let sid = snapshot.id.to_hex();
    if f.on("--stdout") {
        let path = f.value("--path").ok_or("--stdout needs --path FILE")?;
        let (_node, mut stream) = repo.restore_file_stream(&sid, path).await?;
        let mut out = tokio::io::stdout();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        return Ok(true);
    }
    let target = f.value("--target").ok_or("restore needs --target DIR")?;
    let (progress, rx) = progress_channel();
    let mut options = RestoreOptions::default().with_progress(progress);
    if let Some(p) = f.value("--path") {
        options = options.with_path(p);
    }
    let bar = ProgressBar::start(rx, g.quiet);
    let t0 = Instant::now();
    let result = repo.restore(&sid, target, options).await;
    bar.finish().await;
    let r = result?;
    println!(
        "restored snapshot {} to {target}: {} files, {} dirs, {} symlinks, {} in {:.1?}",
        snapshot.id.short(),
        r.files,
        r.dirs,
        r.symlinks,
        human(r.bytes),
        t0.elapsed()
    );
    Ok(true)
}

fn parse_subset(text: &str) -> Result<ReadDataSubset, Failure> {
    if let Some(p) = text.strip_suffix('%') {
        let p: f64 = p
            .parse()
            .map_err(|_| format!("--read-data-subset `{text}`: bad percentage"))?;
        return Ok(ReadDataSubset::Fraction(p / 100.0));
    }
    if let Some((n, m)) = text.split_once('/') {
        let n = n
            .parse()
            .map_err(|_| format!("--read-data-subset `{text}`"))?;
        let m = m
            .parse()
            .map_err(|_| format!("--read-data-subset `{text}`"))?;
        return Ok(ReadDataSubset::Part { n, m });
    }
    Err(format!("--read-data-subset `{text}`: write N/M or P%").into())
}

async fn check(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let f = Flags::parse(&g.rest, &["--read-data-subset"], &["--read-data"])?;
    let subset = match (f.on("--read-data"), f.value("--read-data-subset")) {
        (_, Some(s)) => Some(parse_subset(s)?),
        (true, None) => Some(ReadDataSubset::All),
        (false, None) => None,
    };
    let repos = open_all(g).await?;
    let mut ok = true;
    for (url, repo) in g.repos.iter().zip(&repos) {
        let (progress, rx) = progress_channel();
        let mut options = match subset {
            Some(s) => CheckOptions::read_data(s),
            None => CheckOptions::structure(),
        };
        options.progress = Some(progress);
        let bar = ProgressBar::start(rx, g.quiet);
        let result = repo.check(options).await;
        bar.finish().await;
        let r = result?;
        println!(
            "{url}: {} snapshots, {} trees, {} data blobs, {} packs ({} read), {} unreferenced packs",
            r.snapshots, r.trees, r.data_blobs, r.packs, r.packs_read, r.unreferenced_packs
        );
        for p in &r.problems {
            println!("  PROBLEM: {p}");
        }
        if r.is_ok() {
            println!("  no errors");
        } else {
            ok = false;
        }
    }
    Ok(ok)
}

fn count(text: &str, flag: &str) -> Result<KeepCount, Failure> {
    text.parse()
        .map_err(|e| format!("{flag} `{text}`: {e}").into())
}

async fn forget(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let keep_flags = [
        "--keep-last",
        "--keep-hourly",
        "--keep-daily",
        "--keep-weekly",
        "--keep-monthly",
        "--keep-yearly",
        "--keep-within",
        "--keep-tag",
        "--group-by",
    ];
    let f = Flags::parse(&g.rest, &keep_flags, &["--dry-run", "--prune"])?;
    let repos = open_all(g).await?;
    let repo = &repos[0];
    let mut remove: Vec<String> = f.positional.clone();
    let has_policy = f.values.iter().any(|(n, _)| n.starts_with("--keep"));
    if has_policy {
        let mut b = RetentionPolicy::builder();
        if let Some(v) = f.value("--keep-last") {
            b = b.keep_last(count(v, "--keep-last")?);
        }
        if let Some(v) = f.value("--keep-hourly") {
            b = b.keep_hourly(count(v, "--keep-hourly")?);
        }
        if let Some(v) = f.value("--keep-daily") {
            b = b.keep_daily(count(v, "--keep-daily")?);
        }
        if let Some(v) = f.value("--keep-weekly") {
            b = b.keep_weekly(count(v, "--keep-weekly")?);
        }
        if let Some(v) = f.value("--keep-monthly") {
            b = b.keep_monthly(count(v, "--keep-monthly")?);
        }
        if let Some(v) = f.value("--keep-yearly") {
            b = b.keep_yearly(count(v, "--keep-yearly")?);
        }
        if let Some(v) = f.value("--keep-within") {
            b = b.keep_within(v.parse::<KeepWithin>()?);
        }
        for tags in f.all("--keep-tag") {
            b = b.keep_tags(TagSet::new(tags.split(','))?);
        }
        if let Some(v) = f.value("--group-by") {
            b = b.group_by(v.parse::<GroupBy>()?);
        }
        let policy = b.build()?;
        let snaps = repo.snapshots().await?;
        let infos = snaps
            .iter()
            .map(Snapshot::retention_info)
            .collect::<Result<Vec<_>, _>>()?;
        let plan = policy.apply(&infos, jiff::Timestamp::try_from(SystemTime::now())?)?;
        for group in &plan.groups {
            let key = &group.key;
            println!(
                "group host {} paths {} tags {}",
                key.host.as_deref().unwrap_or("*"),
                key.paths.as_ref().map_or("*".into(), |p| p.join(",")),
                key.tags.as_ref().map_or("*".into(), |t| t.join(","))
            );
            for k in &group.keep {
                let reasons: Vec<String> = k.reasons.iter().map(|r| r.to_string()).collect();
                println!(
                    "  keep   {} {}  ({})",
                    &k.snapshot.id[..8],
                    k.snapshot.time,
                    reasons.join(", ")
                );
            }
            for r in &group.remove {
                println!("  remove {} {}", &r.id[..8], r.time);
            }
        }
        remove.extend(plan.removed_ids().map(str::to_owned));
    }
    if remove.is_empty() {
        println!("nothing to forget");
    } else if f.on("--dry-run") {
        println!("would forget {} snapshots (dry run)", remove.len());
    } else {
        let gone = repo.forget(&remove).await?;
        println!("forgot {} snapshots", gone.len());
    }
    if f.on("--prune") && !f.on("--dry-run") {
        return prune(g, repo).await;
    }
    Ok(true)
}

async fn prune(g: &Global, repo: &Repository) -> atlas_examples::main_support::ProgramResult {
    let (progress, rx) = progress_channel();
    let bar = ProgressBar::start(rx, g.quiet);
    let result = repo
        .prune(PruneOptions::default().with_progress(progress))
        .await;
    bar.finish().await;
    let r = result?;
    println!(
        "prune: deleted {} packs ({} left by interrupted backups), repacked {}, kept {}, wrote {}, freed {}",
        r.packs_deleted + r.orphan_packs_deleted,
        r.orphan_packs_deleted,
        r.packs_repacked,
        r.packs_kept,
        r.packs_written,
        human(r.bytes_freed)
    );
    Ok(true)
}

async fn sync_all(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let repos = open_all(g).await?;
    if repos.len() < 2 {
        return Err("sync needs two or more --repo: it copies from the first to the others".into());
    }
    for (url, to) in g.repos[1..].iter().zip(&repos[1..]) {
        let (progress, rx) = progress_channel();
        let bar = ProgressBar::start(rx, g.quiet);
        let result = sync(&repos[0], to, Some(progress)).await;
        bar.finish().await;
        let r = result?;
        println!(
            "synced to {url}: {} packs ({}), {} snapshots",
            r.packs,
            human(r.bytes),
            r.snapshots
        );
    }
    Ok(true)
}

async fn key(g: &Global) -> atlas_examples::main_support::ProgramResult {
    let repos = open_all(g).await?;
    let policy = match g.quorum {
        Some(n) => MirrorPolicy::Quorum(n),
        None => MirrorPolicy::All,
    };
    let set = MirrorSet::new(repos, policy)?;
    let report = match g
        .rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for k in set.keys().await? {
                let on: Vec<String> = k.mirrors.iter().map(|&i| g.repos[i].to_string()).collect();
                println!(
                    "{} {} {:<12} created {}{}  on {}",
                    k.key.id,
                    k.key.kdf,
                    k.key.label,
                    k.key.created,
                    if k.key.current { " (current)" } else { "" },
                    on.join(", ")
                );
            }
            return Ok(true);
        }
        ["add"] => {
            let new = passphrase(g, "ATLAS_NEW_PASSWORD")?;
            let report = set
                .add_key(&new, KdfParams::default(), "atlas_backup")
                .await?;
            println!("added key {}", report.id);
            report
        }
        ["remove", id] => {
            let report = set.remove_key(id).await?;
            println!("removed key {}", report.id);
            report
        }
        _ => return Err("key needs add, list or remove ID".into()),
    };
    for (url, t) in g.repos.iter().zip(&report.targets) {
        if let Some(e) = &t.error {
            println!("  NOT changed on {url}: {e}");
        }
    }
    Ok(true)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Draws progress on stderr: one line redrawn in place on a terminal, a
/// line every few seconds otherwise (logs), nothing with `--quiet`.
struct ProgressBar {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(mut rx: watch::Receiver<Progress>, quiet: bool) -> ProgressBar {
        let (stop, mut stopped) = watch::channel(false);
        if quiet {
            return ProgressBar { stop, task: None };
        }
        let task = tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let period = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopped.changed() => true,
                };
                let p = rx.borrow_and_update().clone();
                let line = render(&p, t0.elapsed());
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                    if last {
                        let _ = writeln!(err);
                    }
                } else if !line.is_empty() {
                    let _ = writeln!(err, "{line}");
                }
                if last {
                    break;
                }
            }
        });
        ProgressBar {
            stop,
            task: Some(task),
        }
    }

    async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn render(p: &Progress, elapsed: Duration) -> String {
    if p.action.is_empty() {
        return String::new();
    }
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = p.bytes_done as f64 / secs;
    let mut line = format!("[{}] {}", p.action, human(p.bytes_done));
    if let Some(total) = p.bytes_total.filter(|t| *t > 0) {
        let pct = 100.0 * p.bytes_done as f64 / total as f64;
        line += &format!(" / {} ({pct:.0}%)", human(total));
        if rate > 0.0 && total > p.bytes_done {
            let eta = (total - p.bytes_done) as f64 / rate;
            line += &format!(", ETA {eta:.0}s");
        }
    }
    line += &format!(", {}/s, {} files", human(rate as u64), p.files_done);
    if let Some(t) = p.files_total {
        line += &format!(" of {t}");
    }
    if let Some(current) = &p.current {
        let tail: String = current
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        line += &format!("  {tail}");
    }
    line
}
