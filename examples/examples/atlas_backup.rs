//! `atlas_backup`: the reference command line for Atlas's backup engine —
//! deduplicated, compressed, encrypted snapshots in one or several
//! repositories, as restic does, embeddable as `atlas_backup::repo`.
//!
//! ```text
//! atlas_backup [--repo URL]... [--quorum N] [--password-file FILE] [--quiet]
//!              [--cache-dir DIR | --no-cache] COMMAND
//!
//!   init                              create the repositories (the 2nd and later mirror the 1st)
//!   backup DIR|--stdin NAME [--kind full|incremental|point-in-time] [--tag T]... [--host H]
//!          [--output text|json]
//!   snapshots [--output text|json]    list snapshots with their totals
//!   restore ID|latest --target DIR [--path P]
//!   restore ID|latest --path FILE --stdout
//!   check [--read-data | --read-data-subset N/M | --read-data-subset P%] [--output text|json]
//!   forget [ID...] [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N]
//!          [--keep-monthly N] [--keep-yearly N] [--keep-within 1y2m3d4h] [--keep-tag T,U]
//!          [--group-by host,paths,tags] [--dry-run] [--prune]
//!   prune                             delete data no snapshot references
//!   sync                              copy what the 2nd and later repositories lack from the 1st
//!   key add|list|remove ID            (the new passphrase comes from ATLAS_NEW_PASSWORD)
//!   repair snapshots                  move damaged snapshot manifests aside (damaged/snapshots/)
//!   repair index                      rebuild the index from the packs' headers
//!   unlock [--remove-all]             remove stale locks (--remove-all: every lock)
//!   wal-push PATH                     PostgreSQL archive_command: `wal-push %p`
//!   wal-fetch NAME DEST               PostgreSQL restore_command: `wal-fetch %f %p`
//!   pg-forget-wal [--dry-run]        forget the WAL no remaining base backup needs
//!   pg-backup [--dsn DSN]             pg_basebackup streamed into a snapshot (feature postgres)
//!   pg-switch-wal [--dsn DSN] [--timeout 60s]   the point-in-time job (feature postgres)
//!   pg-restore-point NAME [--dsn DSN] [--no-switch-wal]   a named point to restore to (feature postgres)
//!   pg-restore --pgdata DIR [--target-time T | --target-lsn L | --target-name N | latest]
//!              [--port P] [--keep-running] [--keep-archiving]   (feature postgres)
//!   pg-verify [--sql QUERY]... [same targets]   trial restore on a spare port (feature postgres)
//! ```
//!
//! `wal-fetch` exits 1 when the archive has no such file (the end of the
//! archive for PostgreSQL) and 126 on any other failure, which makes
//! PostgreSQL abort recovery instead of ending it early. `wal-push` of a
//! file already archived with the same bytes succeeds; different bytes
//! under an archived name fail. The server is reached through libpq's
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`)
//! or `--dsn`.
//!
//! `--help` explains the program and every verb (`atlas_backup backup
//! --help`); the global options may also follow the verb. Backup, restore,
//! check, prune and sync draw a progress bar on stderr when it is a
//! terminal (never under `--quiet`, nor into a file or pipe); results go
//! to stdout, as JSON with `--output json` where scripts read them.
//!
//! Repository URLs: `file:///abs/path`, `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix` (see
//! `atlas_storage::url`; the cloud schemes need `--features storage-cloud`).
//! The passphrase comes from `ATLAS_PASSWORD` or `--password-file`, never from
//! the command line, and is never printed. With several `--repo`s, a backup
//! goes to all of them at once and succeeds when all (or `--quorum N`)
//! committed it; `key` changes every repository (under the same policy);
//! `check`, `repair` and `unlock` work on each; the other commands on the
//! first one.
//!
//! A damaged snapshot manifest (truncated, changed bytes) is listed by
//! `snapshots` and reported by `check`, and the other commands skip it;
//! `prune` refuses to run while one exists (it might reference data), until
//! `repair snapshots` moves it aside. Lost or damaged index files are
//! rebuilt from the packs by `repair index`. A crashed backup's lock blocks
//! nothing once its process has ended (or its lock expired); `unlock`
//! removes it, and `prune` removes the temporary files it left.
//!
//! A source entry that cannot be read (it vanished, or reading it failed)
//! is left out with a warning, as restic does: the snapshot is saved but
//! marked incomplete (`snapshots` shows `!`), the skipped paths are listed,
//! and the exit status is 3.
//!
//! Index files and snapshot manifests are cached locally, as restic does,
//! in `--cache-dir` (default `$XDG_CACHE_HOME/atlas-backup`, else
//! `~/.cache/atlas-backup`), one folder per repository id: encrypted as the
//! repository stores them, used only while the repository lists the same
//! objects, and downloaded again when a copy does not open
//! (`Repository::with_cache_dir`). `--no-cache` reads everything from the
//! repository.
//!
//! It runs with glibc's `MALLOC_ARENA_MAX=1` (re-executing itself with it
//! when unset), which saves another 10–16 MiB of peak memory on top of the
//! engine's own buffer recycling, and with a fixed mmap threshold of
//! 128 KiB (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`), which saves
//! 10–15 MiB more; `ATLAS_NO_ARENA_LIMIT=1` turns all of that off.
//!
//! Run: `cargo run --release -p atlas-examples --example atlas_backup -- --help`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use atlas_backup::pitr::{PitrCatalog, PushOutcome, WalArchive, WalFileName};
use atlas_backup::repo::{
    BackupKind, BackupOptions, CheckOptions, CheckReport, DirectorySource, InitOptions, KdfParams,
    KeySource, MirrorPolicy, MirrorSet, Progress, PruneOptions, ReadDataSubset, Repository,
    RestoreOptions, Snapshot, StreamSource, progress_channel, sync,
};
use atlas_backup::retention::{GroupBy, KeepCount, KeepWithin, RetentionPolicy, TagSet};
use atlas_examples::cli::{self, OutputFormat};
use atlas_examples::main_support::{ProgramResult, StatusResult};
use atlas_storage::url::TargetUrl;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

type Failure = Box<dyn std::error::Error>;

#[cfg(feature = "postgres")]
#[path = "atlas_backup/pitr_cli.rs"]
mod pitr_cli;

/// Deduplicated, compressed, encrypted snapshots in one or several
/// repositories (Atlas's backup engine, `atlas_backup::repo`).
///
/// The passphrase comes from ATLAS_PASSWORD or --password-file, never from
/// the command line, and is never printed. With several --repo, a backup
/// goes to all of them at once and succeeds when all (or --quorum N)
/// committed it; `key` changes every repository; `check`, `repair` and
/// `unlock` work on each; the other commands on the first one.
#[derive(Debug, Parser)]
#[command(
    name = "atlas_backup",
    version,
    args_override_self = true,
    after_help = "Environment: ATLAS_PASSWORD (the passphrase), ATLAS_NEW_PASSWORD (`key add`), \
ATLAS_REPOSITORY (when no --repo is given), ATLAS_CACHE_DIR (--cache-dir), \
ATLAS_NO_ARENA_LIMIT=1 (keep glibc's malloc arenas).\n\
Exit status: 0 success, 1 failure (or problems found by `check` or `repair index`), 2 bad usage, \
3 snapshot saved without some unreadable entries."
)]
struct Cli {
    /// Repository URL: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix
    /// or az://container/prefix. Repeat it to mirror: the 2nd and later
    /// repositories mirror the 1st.
    #[arg(
        short = 'r',
        long = "repo",
        value_name = "URL",
        global = true,
        help_heading = "Global options",
        env = "ATLAS_REPOSITORY",
        hide_env_values = true,
        value_parser = parse_url
    )]
    repos: Vec<TargetUrl>,

    /// With several --repo: a backup or key change succeeds once N
    /// repositories committed it (default: all of them).
    #[arg(long, value_name = "N", global = true, help_heading = "Global options")]
    quorum: Option<usize>,

    /// Read the passphrase from FILE (trailing newlines dropped) instead
    /// of ATLAS_PASSWORD.
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    password_file: Option<PathBuf>,

    /// Draw no progress on stderr (progress is also off when stderr is not
    /// a terminal).
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,

    /// Keep a local cache of the repositories' index files and snapshot
    /// manifests (encrypted, one folder per repository id) in DIR
    /// (default: $XDG_CACHE_HOME/atlas-backup, else ~/.cache/atlas-backup).
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        help_heading = "Global options",
        env = "ATLAS_CACHE_DIR"
    )]
    cache_dir: Option<PathBuf>,

    /// Keep no local cache: read every index file and manifest from the
    /// repository.
    #[arg(long, global = true, help_heading = "Global options")]
    no_cache: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the repositories (the 2nd and later mirror the 1st).
    Init,
    /// Back up a directory, or standard input with --stdin, into a new
    /// snapshot.
    ///
    /// Entries that cannot be read (they vanished, or reading failed) are
    /// left out with a warning: the snapshot is saved but marked
    /// incomplete, and the exit status is 3.
    Backup(BackupArgs),
    /// List the snapshots with their totals (`!` marks incomplete ones),
    /// and the snapshot manifests that are damaged (with `--output json`,
    /// those go to stderr).
    Snapshots {
        #[command(flatten)]
        output: Output,
    },
    /// Restore a snapshot into a directory, or one file to stdout.
    Restore(RestoreArgs),
    /// Verify the repository's structure, and with --read-data the packs'
    /// contents (every repository given with --repo).
    Check(CheckArgs),
    /// Remove snapshots by id or by a retention policy (restic's rules).
    Forget(ForgetArgs),
    /// Delete data no snapshot references, and the temporary files crashed
    /// backups left. Refuses while a snapshot manifest is damaged (see
    /// `repair snapshots`).
    Prune,
    /// Copy what the 2nd and later repositories lack from the 1st.
    Sync,
    /// Manage the passphrases (keys) that open the repositories.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Repair a damaged repository (each one given with --repo).
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Remove stale locks: expired ones, and those of ended processes of
    /// this machine (each repository given with --repo).
    Unlock {
        /// Remove every lock, live ones too: the operations holding them go
        /// on unprotected. Only when their holders are known to be gone.
        #[arg(long)]
        remove_all: bool,
    },
    /// Archive one WAL file (PostgreSQL's archive_command: `wal-push %p`)
    /// to every repository. A file already archived with the same bytes
    /// succeeds; different bytes under its name fail.
    WalPush {
        /// The file (`%p`); its name is the archive name.
        path: PathBuf,
    },
    /// Restore one archived WAL file (PostgreSQL's restore_command:
    /// `wal-fetch %f %p`). Exit status 1: the archive has no such file;
    /// 126: any other failure (recovery must stop).
    WalFetch {
        /// The file's name (`%f`).
        name: String,
        /// Where to write it (`%p`).
        dest: PathBuf,
    },
    /// Take a base backup (pg_basebackup, tar with the WAL it needs and a
    /// checksummed manifest) streamed into a snapshot of every repository.
    #[cfg(feature = "postgres")]
    PgBackup(pitr_cli::PgBackupArgs),
    /// The point-in-time job: close the current WAL segment
    /// (pg_switch_wal) and wait until the archiver has stored it, so that
    /// everything committed before is recoverable; prints how long that
    /// took and the age of the newest archived WAL.
    #[cfg(feature = "postgres")]
    PgSwitchWal(pitr_cli::PgSwitchWalArgs),
    /// Create a named restore point (pg_create_restore_point), record its
    /// WAL position in every repository and switch the WAL segment, so
    /// `pg-restore --target-name NAME` restores the base backup before it.
    #[cfg(feature = "postgres")]
    PgRestorePoint(pitr_cli::PgRestorePointArgs),
    /// Forget the archived WAL that no base backup still in the repository
    /// needs (run it after `forget` removed base backups; `prune` then
    /// frees the space). WAL a kept base backup needs is never forgotten.
    PgForgetWal {
        /// Only list what would be forgotten.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a base backup into an empty data directory and recover to a
    /// point with the archived WAL, then promote.
    #[cfg(feature = "postgres")]
    PgRestore(pitr_cli::PgRestoreArgs),
    /// Restore into a throwaway data directory on a spare port, run SQL
    /// checks, and remove it.
    #[cfg(feature = "postgres")]
    PgVerify(pitr_cli::PgVerifyArgs),
}

#[derive(Debug, Subcommand)]
enum RepairCommand {
    /// Move damaged snapshot manifests aside, to damaged/snapshots/ in the
    /// repository (nothing is deleted), so that prune runs again; prune
    /// then deletes the data only they referenced.
    Snapshots,
    /// Rebuild the index from the packs' own headers, then remove the old
    /// index files (damaged ones included).
    Index,
}

/// `--output`, for the verbs whose result scripts read.
#[derive(Debug, Args)]
struct Output {
    /// Print the result as text, or as one JSON document on stdout.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// The directory to back up.
    #[arg(
        value_name = "DIR",
        required_unless_present = "stdin",
        conflicts_with = "stdin"
    )]
    dir: Option<String>,
    /// Back up standard input as one file named NAME instead of a
    /// directory (an incremental kind becomes point-in-time).
    #[arg(long, value_name = "NAME")]
    stdin: Option<String>,
    /// What the snapshot is: full, incremental (reuse unchanged files of
    /// the last snapshot), or point-in-time (alias pit).
    #[arg(long, value_enum, value_name = "KIND")]
    kind: Option<Kind>,
    /// A tag for the snapshot; repeat for several.
    #[arg(long = "tag", value_name = "T")]
    tags: Vec<String>,
    /// The host name recorded in the snapshot (default: this host's).
    #[arg(long, value_name = "H")]
    host: Option<String>,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// Read every file.
    Full,
    /// Reuse the files unchanged since the last snapshot without reading
    /// them.
    Incremental,
    /// A point-in-time copy (a stream such as a database dump).
    #[value(alias = "pit")]
    PointInTime,
}

impl From<Kind> for BackupKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Full => BackupKind::Full,
            Kind::Incremental => BackupKind::Incremental,
            Kind::PointInTime => BackupKind::PointInTime,
        }
    }
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The snapshot: an id, a unique prefix of one, or `latest`.
    #[arg(value_name = "ID|latest")]
    id: String,
    /// The directory to restore into; existing files of the same names
    /// are replaced.
    #[arg(long, value_name = "DIR", required_unless_present = "stdout")]
    target: Option<String>,
    /// Restore only this path of the snapshot (with --stdout: the file to
    /// write out).
    #[arg(long, value_name = "P")]
    path: Option<String>,
    /// Write the file given with --path to standard output instead of
    /// restoring into a directory.
    #[arg(long, requires = "path", conflicts_with = "target")]
    stdout: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Also download and verify every pack.
    #[arg(long)]
    read_data: bool,
    /// Download and verify part of the packs: N/M (part N of M, so that M
    /// runs read everything once) or P% (a random sample).
    #[arg(long, value_name = "N/M|P%", value_parser = parse_subset)]
    read_data_subset: Option<ReadDataSubset>,
    /// Also unpack every PostgreSQL base backup of the first repository
    /// into a temporary directory and check it against its own manifest
    /// with pg_verifybackup (sizes, SHA-256 checksums, the WAL it needs).
    #[cfg(feature = "postgres")]
    #[arg(long)]
    pg_verifybackup: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Args)]
struct ForgetArgs {
    /// Snapshots to remove (ids or unique prefixes), besides those the
    /// policy removes.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Keep the N most recent snapshots (-1 or `unlimited`: all).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_last: Option<KeepCount>,
    /// Keep the last snapshot of each of the N most recent hours.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_hourly: Option<KeepCount>,
    /// Keep the last snapshot of each of the N most recent days.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_daily: Option<KeepCount>,
    /// Keep the last snapshot of each of the N most recent weeks.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_weekly: Option<KeepCount>,
    /// Keep the last snapshot of each of the N most recent months.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_monthly: Option<KeepCount>,
    /// Keep the last snapshot of each of the N most recent years.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_yearly: Option<KeepCount>,
    /// Keep every snapshot younger than this, counted back from the newest
    /// snapshot (e.g. 1y2m3d4h).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<KeepWithin>,
    /// Keep the snapshots that carry all of these tags (comma-separated);
    /// repeat it to keep those matching any of the lists.
    #[arg(long, value_name = "T,U")]
    keep_tag: Vec<String>,
    /// Apply the policy to each group of snapshots with the same host,
    /// paths and/or tags (default host,paths).
    #[arg(long, value_name = "host,paths,tags")]
    group_by: Option<GroupBy>,
    /// Only show what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Prune right after forgetting.
    #[arg(long)]
    prune: bool,
}

impl ForgetArgs {
    fn has_policy(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_hourly.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.keep_yearly.is_some()
            || self.keep_within.is_some()
            || !self.keep_tag.is_empty()
    }
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Add a key whose passphrase comes from ATLAS_NEW_PASSWORD.
    Add,
    /// List the keys of every repository.
    List,
    /// Remove a key from every repository (a repository's last key
    /// stays).
    Remove {
        /// The key's id, as `key list` shows it.
        id: String,
    },
}

fn parse_url(text: &str) -> Result<TargetUrl, String> {
    TargetUrl::parse(text).map_err(|e| e.to_string())
}

fn parse_subset(text: &str) -> Result<ReadDataSubset, String> {
    if let Some(p) = text.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| "bad percentage".to_owned())?;
        return Ok(ReadDataSubset::Fraction(p / 100.0));
    }
    if let Some((n, m)) = text.split_once('/') {
        let n = n.parse().map_err(|_| format!("`{n}` is no part number"))?;
        let m = m.parse().map_err(|_| format!("`{m}` is no part count"))?;
        return Ok(ReadDataSubset::Part { n, m });
    }
    Err("write N/M or P%".to_owned())
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    atlas_examples::main_support::init_tracing("warn");
    let cli = Cli::parse();
    if cli.repos.is_empty() {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no repository: give --repo URL or set ATLAS_REPOSITORY",
            )
            .exit();
    }
    #[cfg(feature = "storage-cloud")]
    {
        // One rustls provider for the cloud SDKs (see atlas-storage's docs).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    atlas_examples::main_support::run_with_status("atlas_backup", run(cli))
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
            let mut cmd = std::process::Command::new(exe);
            cmd.args(std::env::args_os().skip(1))
                .env("MALLOC_ARENA_MAX", "1");
            // A fixed mmap threshold: glibc otherwise raises it to the size
            // of the largest block freed (Argon2's 19 MiB when the key is
            // unlocked), after which every buffer up to that size comes
            // from the heap and its freed pages stay resident.
            for (var, value) in [
                ("MALLOC_MMAP_THRESHOLD_", "131072"),
                ("MALLOC_TRIM_THRESHOLD_", "1048576"),
            ] {
                if std::env::var_os(var).is_none() {
                    cmd.env(var, value);
                }
            }
            let err = cmd.exec();
            // Only reached when exec failed: carry on with the defaults.
            eprintln!("atlas_backup: could not re-execute with MALLOC_ARENA_MAX=1: {err}");
        }
    }
}

fn passphrase(cli: &Cli, var: &str) -> Result<KeySource, Failure> {
    let text = match (&cli.password_file, std::env::var(var)) {
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

async fn open_all(cli: &Cli) -> Result<Vec<Repository>, Failure> {
    let key = passphrase(cli, "ATLAS_PASSWORD")?;
    let mut repos = Vec::new();
    for url in &cli.repos {
        let target = url.open(false).await?;
        let repo = Repository::open(target, url.prefix().clone(), &key)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        repos.push(match cache_dir(cli) {
            Some(dir) => repo.with_cache_dir(dir),
            None => repo,
        });
    }
    Ok(repos)
}

/// Where the local cache lives, unless `--no-cache`.
fn cache_dir(cli: &Cli) -> Option<PathBuf> {
    if cli.no_cache {
        return None;
    }
    cli.cache_dir.clone().or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("atlas-backup"))
    })
}

fn mirror_policy(cli: &Cli) -> MirrorPolicy {
    match cli.quorum {
        Some(n) => MirrorPolicy::Quorum(n),
        None => MirrorPolicy::All,
    }
}

async fn run(cli: Cli) -> StatusResult {
    let ok = match &cli.command {
        Command::Init => init(&cli).await,
        Command::Backup(args) => return backup(&cli, args).await,
        Command::Snapshots { output } => snapshots(&cli, output.output).await,
        Command::Restore(args) => restore(&cli, args).await,
        Command::Check(args) => check(&cli, args).await,
        Command::Forget(args) => forget(&cli, args).await,
        Command::Prune => {
            let repos = open_all(&cli).await?;
            prune(&cli, &repos[0]).await
        }
        Command::Sync => sync_all(&cli).await,
        Command::Key(command) => key(&cli, command).await,
        Command::Repair(command) => repair(&cli, command).await,
        Command::Unlock { remove_all } => unlock(&cli, *remove_all).await,
        Command::WalPush { path } => wal_push(&cli, path).await,
        Command::WalFetch { name, dest } => return Ok(wal_fetch(&cli, name, dest).await),
        Command::PgForgetWal { dry_run } => pg_forget_wal(&cli, *dry_run).await,
        #[cfg(feature = "postgres")]
        Command::PgBackup(args) => pitr_cli::pg_backup(&cli, args).await,
        #[cfg(feature = "postgres")]
        Command::PgSwitchWal(args) => pitr_cli::pg_switch_wal(args).await,
        #[cfg(feature = "postgres")]
        Command::PgRestorePoint(args) => pitr_cli::pg_restore_point(&cli, args).await,
        #[cfg(feature = "postgres")]
        Command::PgRestore(args) => pitr_cli::pg_restore(&cli, args).await,
        #[cfg(feature = "postgres")]
        Command::PgVerify(args) => pitr_cli::pg_verify(&cli, args).await,
    }?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn wal_archive(cli: &Cli) -> Result<WalArchive, Failure> {
    Ok(WalArchive::new(MirrorSet::new(
        open_all(cli).await?,
        mirror_policy(cli),
    )?))
}

async fn wal_push(cli: &Cli, path: &std::path::Path) -> ProgramResult {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    let name = WalFileName::new(name)?;
    match wal_archive(cli).await?.push(&name, path).await? {
        PushOutcome::Stored(id) => println!("archived {name} as snapshot {}", id.short()),
        PushOutcome::AlreadyArchived(id) => {
            println!(
                "{name} is already archived (snapshot {}), same content",
                id.short()
            )
        }
        _ => {}
    }
    Ok(true)
}

/// Exit status of `wal-fetch` on a failure other than "not archived":
/// PostgreSQL treats a status above 125 as fatal and aborts recovery,
/// while 1 means the end of the archive.
const WAL_FETCH_FATAL: u8 = 126;

async fn wal_fetch(cli: &Cli, name: &str, dest: &std::path::Path) -> ExitCode {
    let result = async {
        let name = WalFileName::new(name)?;
        wal_archive(cli).await?.fetch(&name, dest).await?;
        Ok::<_, Failure>(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let not_found = e
                .downcast_ref::<atlas_core::Error>()
                .is_some_and(|e| e.kind() == atlas_core::ErrorKind::NotFound);
            eprintln!("atlas_backup wal-fetch {name}: {e}");
            if not_found {
                ExitCode::FAILURE
            } else {
                ExitCode::from(WAL_FETCH_FATAL)
            }
        }
    }
}

async fn pg_forget_wal(cli: &Cli, dry_run: bool) -> ProgramResult {
    let repos = open_all(cli).await?;
    let names = PitrCatalog::forget_released_wal(&repos[0], dry_run).await?;
    let verb = if dry_run { "would forget" } else { "forgot" };
    for n in &names {
        println!("{verb} {n}");
    }
    println!("{} WAL files no base backup needs", names.len());
    Ok(true)
}

async fn init(cli: &Cli) -> ProgramResult {
    let key = passphrase(cli, "ATLAS_PASSWORD")?;
    let first = &cli.repos[0];
    let target = first.open(true).await?;
    let repo =
        Repository::init(target, first.prefix().clone(), &key, InitOptions::default()).await?;
    println!("created repository {} at {first}", repo.config().id);
    for url in &cli.repos[1..] {
        let target = url.open(true).await?;
        Repository::init_mirror(&repo, target, url.prefix().clone()).await?;
        println!("created mirror at {url}");
    }
    Ok(true)
}

/// Exits 0, or 3 when the snapshot was saved without some source entries
/// that could not be read (restic's convention).
async fn backup(cli: &Cli, args: &BackupArgs) -> StatusResult {
    let repos = open_all(cli).await?;
    let mut options = BackupOptions::default();
    if let Some(k) = args.kind {
        options = options.with_kind(k.into());
    }
    for t in &args.tags {
        options = options.with_tag(t);
    }
    if let Some(h) = &args.host {
        options = options.with_host(h);
    }
    let (progress, rx) = progress_channel();
    let t0 = Instant::now();
    let set = MirrorSet::new(repos, mirror_policy(cli))?;
    let bar = ProgressView::start("backup", "scanning", rx, cli.quiet);
    // Without a bar nobody reads progress: the engine then skips the walk
    // that only counts the totals.
    if bar.task.is_some() {
        options = options.with_progress(progress);
    }
    let result = match (&args.stdin, &args.dir) {
        (Some(name), _) => {
            if options.kind == BackupKind::Incremental {
                options = options.with_kind(BackupKind::PointInTime);
            }
            let source = StreamSource::from_async_read(name, tokio::io::stdin());
            set.backup(source, options).await
        }
        (None, Some(dir)) => match std::fs::canonicalize(dir) {
            Ok(path) => set.backup(DirectorySource::new(path), options).await,
            Err(e) => {
                bar.finish().await;
                return Err(format!("{dir}: {e}").into());
            }
        },
        // clap requires one of the two; this only guards against a change
        // of the argument definitions.
        (None, None) => {
            bar.finish().await;
            return Err("backup needs exactly one directory, or --stdin NAME".into());
        }
    };
    bar.finish().await;
    let report = result?;
    let elapsed = t0.elapsed();
    let s = &report.snapshot;
    let incomplete = !report.unreadable.is_empty();
    if args.output.output == OutputFormat::Json {
        cli::print_json(&BackupJson {
            snapshot: SnapshotJson::of(s),
            elapsed_seconds: elapsed.as_secs_f64(),
            repositories: cli
                .repos
                .iter()
                .zip(&report.targets)
                .map(|(url, t)| RepositoryOutcome {
                    repository: url.to_string(),
                    committed: t.error.is_none(),
                    error: t.error.as_ref().map(ToString::to_string),
                })
                .collect(),
            unreadable: report
                .unreadable
                .iter()
                .map(|e| UnreadableJson {
                    path: &e.path,
                    reason: &e.reason,
                })
                .collect(),
        })?;
        return Ok(if incomplete {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        });
    }
    println!(
        "snapshot {} saved: {} files, {} dirs, {} in {:.1?} ({}/s); new data {} ({} stored, {} new blobs)",
        s.id.short(),
        s.totals.files,
        s.totals.dirs,
        human(s.totals.bytes),
        elapsed,
        human((s.totals.bytes as f64 / elapsed.as_secs_f64().max(1e-9)) as u64),
        human(s.totals.new_bytes),
        human(s.totals.new_bytes_stored),
        s.totals.new_chunks,
    );
    let mut all_ok = true;
    // One outcome per repository, in the order of the set.
    for (url, t) in cli.repos.iter().zip(&report.targets) {
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
    if incomplete {
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

async fn snapshots(cli: &Cli, output: OutputFormat) -> ProgramResult {
    let repos = open_all(cli).await?;
    let listing = repos[0].snapshot_listing().await?;
    let mut snaps = listing.snapshots;
    snaps.sort_by_key(|s| s.time);
    let damaged = |to_stderr: bool| {
        for d in &listing.damaged {
            let line = format!("DAMAGED {}: {} ({})", d.path, d.reason, d.damage);
            if to_stderr {
                eprintln!("atlas_backup: {line}");
            } else {
                println!("{line}");
            }
        }
        if !listing.damaged.is_empty() {
            let hint = format!(
                "{} damaged snapshot manifests: other commands skip them, prune refuses to run; \
                 `atlas_backup repair snapshots` moves them aside",
                listing.damaged.len()
            );
            if to_stderr {
                eprintln!("atlas_backup: {hint}");
            } else {
                println!("{hint}");
            }
        }
    };
    if output == OutputFormat::Json {
        // The array stays what scripts read; the damaged go to stderr.
        cli::print_json(&snaps.iter().map(SnapshotJson::of).collect::<Vec<_>>())?;
        damaged(true);
        return Ok(true);
    }
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
    damaged(false);
    Ok(true)
}

async fn restore(cli: &Cli, args: &RestoreArgs) -> ProgramResult {
    let repos = open_all(cli).await?;
    let repo = &repos[0];
    // An id, a unique prefix of one, or `latest`.
    let snapshot = repo.snapshot(&args.id).await?;
    let sid = snapshot.id.to_hex();
    if args.stdout {
        // clap makes --stdout require --path.
        let path = args.path.as_deref().ok_or("--stdout needs --path FILE")?;
        let (_node, mut stream) = repo.restore_file_stream(&sid, path).await?;
        let mut out = tokio::io::stdout();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        return Ok(true);
    }
    // clap requires --target without --stdout.
    let target = args.target.as_deref().ok_or("restore needs --target DIR")?;
    let (progress, rx) = progress_channel();
    let mut options = RestoreOptions::default();
    if let Some(p) = &args.path {
        options = options.with_path(p);
    }
    let bar = ProgressView::start("restore", "reading the snapshot", rx, cli.quiet);
    // Without a bar nobody reads progress.
    if bar.task.is_some() {
        options = options.with_progress(progress);
    }
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

async fn check(cli: &Cli, args: &CheckArgs) -> ProgramResult {
    let subset = match (args.read_data, args.read_data_subset) {
        (_, Some(s)) => Some(s),
        (true, None) => Some(ReadDataSubset::All),
        (false, None) => None,
    };
    let repos = open_all(cli).await?;
    let mut ok = true;
    let mut results = Vec::new();
    for (url, repo) in cli.repos.iter().zip(&repos) {
        let (progress, rx) = progress_channel();
        let mut options = match subset {
            Some(s) => CheckOptions::read_data(s),
            None => CheckOptions::structure(),
        };
        options.progress = Some(progress);
        let bar = ProgressView::start("check", "checking the structure", rx, cli.quiet);
        let result = repo.check(options).await;
        bar.finish().await;
        let r = result?;
        ok &= r.is_ok();
        if args.output.output == OutputFormat::Json {
            results.push(CheckJson::of(url, &r));
            continue;
        }
        println!(
            "{url}: {} snapshots, {} trees, {} data blobs, {} packs ({} read), {} unreferenced packs",
            r.snapshots, r.trees, r.data_blobs, r.packs, r.packs_read, r.unreferenced_packs
        );
        for p in &r.problems {
            println!("  PROBLEM: {p}");
        }
        if r.is_ok() {
            println!("  no errors");
        }
    }
    if args.output.output == OutputFormat::Json {
        cli::print_json(&results)?;
    }
    #[cfg(feature = "postgres")]
    if args.pg_verifybackup {
        ok &= pitr_cli::verify_base_backups(&repos[0]).await?;
    }
    Ok(ok)
}

async fn forget(cli: &Cli, args: &ForgetArgs) -> ProgramResult {
    let repos = open_all(cli).await?;
    let repo = &repos[0];
    let mut remove: Vec<String> = args.ids.clone();
    if args.has_policy() {
        let mut b = RetentionPolicy::builder();
        if let Some(v) = args.keep_last {
            b = b.keep_last(v);
        }
        if let Some(v) = args.keep_hourly {
            b = b.keep_hourly(v);
        }
        if let Some(v) = args.keep_daily {
            b = b.keep_daily(v);
        }
        if let Some(v) = args.keep_weekly {
            b = b.keep_weekly(v);
        }
        if let Some(v) = args.keep_monthly {
            b = b.keep_monthly(v);
        }
        if let Some(v) = args.keep_yearly {
            b = b.keep_yearly(v);
        }
        if let Some(v) = args.keep_within {
            b = b.keep_within(v);
        }
        for tags in &args.keep_tag {
            b = b.keep_tags(TagSet::new(tags.split(','))?);
        }
        if let Some(v) = args.group_by {
            b = b.group_by(v);
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
    } else if args.dry_run {
        println!("would forget {} snapshots (dry run)", remove.len());
    } else {
        let gone = repo.forget(&remove).await?;
        println!("forgot {} snapshots", gone.len());
    }
    if args.prune && !args.dry_run {
        return prune(cli, repo).await;
    }
    Ok(true)
}

async fn prune(cli: &Cli, repo: &Repository) -> ProgramResult {
    let (progress, rx) = progress_channel();
    let bar = ProgressView::start("prune", "finding unused data", rx, cli.quiet);
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
    if r.unfinished_puts_removed > 0 {
        println!(
            "prune: removed {} temporary files left by crashed uploads",
            r.unfinished_puts_removed
        );
    }
    Ok(true)
}

async fn repair(cli: &Cli, command: &RepairCommand) -> ProgramResult {
    let repos = open_all(cli).await?;
    let mut ok = true;
    for (url, repo) in cli.repos.iter().zip(&repos) {
        match command {
            RepairCommand::Snapshots => {
                let r = repo.repair_snapshots().await?;
                for d in &r.moved {
                    println!(
                        "{url}: moved {} to damaged/{}: {}",
                        d.path, d.path, d.reason
                    );
                }
                println!(
                    "{url}: moved {} damaged snapshot manifests aside",
                    r.moved.len()
                );
            }
            RepairCommand::Index => {
                let r = repo.repair_index().await?;
                for d in &r.damaged_index_files {
                    println!("{url}: damaged index file {}: {}", d.path, d.reason);
                }
                for p in &r.unreadable_packs {
                    println!("{url}: PROBLEM: {p} (left out of the index)");
                }
                ok &= r.unreadable_packs.is_empty();
                println!(
                    "{url}: indexed {} packs ({} blobs) in {}, removed {} old index files",
                    r.packs_indexed,
                    r.blobs,
                    r.index_file
                        .as_deref()
                        .map_or("no index file (no pack)".into(), |n| format!("index/{n}")),
                    r.index_files_removed
                );
            }
        }
    }
    Ok(ok)
}

async fn unlock(cli: &Cli, remove_all: bool) -> ProgramResult {
    let repos = open_all(cli).await?;
    for (url, repo) in cli.repos.iter().zip(&repos) {
        let now = SystemTime::now();
        let removed = repo.unlock(remove_all).await?;
        for l in &removed {
            if !l.is_abandoned(now) {
                eprintln!(
                    "atlas_backup: WARNING: removed the live lock {} of {:?}: it is no longer protected",
                    &l.id[..8],
                    l.holder
                );
            }
        }
        println!("{url}: removed {} locks", removed.len());
    }
    Ok(true)
}

async fn sync_all(cli: &Cli) -> ProgramResult {
    let repos = open_all(cli).await?;
    if repos.len() < 2 {
        return Err("sync needs two or more --repo: it copies from the first to the others".into());
    }
    for (url, to) in cli.repos[1..].iter().zip(&repos[1..]) {
        let (progress, rx) = progress_channel();
        let bar = ProgressView::start("sync", "comparing the repositories", rx, cli.quiet);
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

async fn key(cli: &Cli, command: &KeyCommand) -> ProgramResult {
    let repos = open_all(cli).await?;
    let set = MirrorSet::new(repos, mirror_policy(cli))?;
    let report = match command {
        KeyCommand::List => {
            for k in set.keys().await? {
                let on: Vec<String> = k
                    .mirrors
                    .iter()
                    .map(|&i| cli.repos[i].to_string())
                    .collect();
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
        KeyCommand::Add => {
            let new = passphrase(cli, "ATLAS_NEW_PASSWORD")?;
            let report = set
                .add_key(&new, KdfParams::default(), "atlas_backup")
                .await?;
            println!("added key {}", report.id);
            report
        }
        KeyCommand::Remove { id } => {
            let report = set.remove_key(id).await?;
            println!("removed key {}", report.id);
            report
        }
    };
    for (url, t) in cli.repos.iter().zip(&report.targets) {
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

/// A snapshot as `snapshots --output json` and `backup --output json`
/// print it: a view of its own rather than the manifest's encoding, so
/// that scripts do not depend on the repository format.
#[derive(Debug, Serialize)]
struct SnapshotJson<'a> {
    id: String,
    short_id: String,
    time: String,
    kind: String,
    host: &'a str,
    source: &'a str,
    paths: &'a [String],
    tags: &'a [String],
    parent: Option<String>,
    complete: bool,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    bytes_read: u64,
    new_bytes: u64,
    new_bytes_stored: u64,
    new_blobs: u64,
    unreadable: u64,
}

impl<'a> SnapshotJson<'a> {
    fn of(s: &'a Snapshot) -> Self {
        SnapshotJson {
            id: s.id.to_hex(),
            short_id: s.id.short(),
            time: humantime::format_rfc3339_seconds(s.time).to_string(),
            kind: s.kind.to_string(),
            host: &s.host,
            source: &s.source,
            paths: &s.paths,
            tags: &s.tags,
            parent: s.parent.as_ref().map(|p| p.to_hex()),
            complete: s.is_complete(),
            files: s.totals.files,
            dirs: s.totals.dirs,
            symlinks: s.totals.symlinks,
            bytes: s.totals.bytes,
            bytes_read: s.totals.bytes_read,
            new_bytes: s.totals.new_bytes,
            new_bytes_stored: s.totals.new_bytes_stored,
            new_blobs: s.totals.new_chunks,
            unreadable: s.totals.unreadable,
        }
    }
}

/// `backup --output json`.
#[derive(Debug, Serialize)]
struct BackupJson<'a> {
    snapshot: SnapshotJson<'a>,
    elapsed_seconds: f64,
    repositories: Vec<RepositoryOutcome>,
    unreadable: Vec<UnreadableJson<'a>>,
}

#[derive(Debug, Serialize)]
struct RepositoryOutcome {
    repository: String,
    committed: bool,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct UnreadableJson<'a> {
    path: &'a str,
    reason: &'a str,
}

/// One repository's result in `check --output json`.
#[derive(Debug, Serialize)]
struct CheckJson {
    repository: String,
    ok: bool,
    snapshots: u64,
    trees: u64,
    data_blobs: u64,
    packs: u64,
    packs_read: u64,
    unreferenced_packs: u64,
    problems: Vec<String>,
}

impl CheckJson {
    fn of(url: &TargetUrl, r: &CheckReport) -> Self {
        CheckJson {
            repository: url.to_string(),
            ok: r.is_ok(),
            snapshots: r.snapshots,
            trees: r.trees,
            data_blobs: r.data_blobs,
            packs: r.packs,
            packs_read: r.packs_read,
            unreferenced_packs: r.unreferenced_packs,
            problems: r.problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Draws an action's progress on stderr with indicatif: a byte bar with
/// rate and ETA once the total is known, a count bar for work counted only
/// in packs (prune), a spinner with bytes and rate before that, and
/// nothing under `--quiet` or when stderr is not a terminal. The engine
/// publishes into a `watch` channel; a task reads it ten times a second,
/// so the engine's workers never wait for the terminal.
struct ProgressView {
    bar: ProgressBar,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Which of the bar's layouts is showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Nothing reported yet: the caller's message.
    Waiting,
    /// Bytes counted, total unknown.
    Spinner,
    /// Bytes against a known total.
    Bytes,
    /// Items (packs) against a known total, no bytes.
    Count,
}

impl ProgressView {
    fn start(
        action: &'static str,
        waiting: &'static str,
        mut rx: watch::Receiver<Progress>,
        quiet: bool,
    ) -> ProgressView {
        let (stop, mut stopped) = watch::channel(false);
        let bar = cli::spinner(quiet, action, waiting);
        if bar.is_hidden() {
            return ProgressView {
                bar,
                stop,
                task: None,
            };
        }
        let task = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut shape = Shape::Waiting;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    let last = tokio::select! {
                        _ = tick.tick() => false,
                        _ = stopped.changed() => true,
                    };
                    let p = rx.borrow_and_update().clone();
                    show(&bar, &p, &mut shape);
                    if last {
                        break;
                    }
                }
            }
        });
        ProgressView {
            bar,
            stop,
            task: Some(task),
        }
    }

    /// Stops drawing and clears the bar: the result printed next on
    /// stdout says what it came to.
    async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.bar.finish_and_clear();
    }
}

fn show(bar: &ProgressBar, p: &Progress, shape: &mut Shape) {
    if p.action.is_empty() {
        return;
    }
    // check, sync and prune count packs where backup and restore count
    // files.
    let unit = match p.action {
        "check" | "sync" | "prune" => "packs",
        _ => "files",
    };
    let (want, length) = match (p.bytes_total, p.files_total) {
        (Some(total), _) if total > 0 => (Shape::Bytes, total),
        (_, Some(total)) if total > 0 && p.bytes_done == 0 => (Shape::Count, total),
        _ => (Shape::Spinner, 0),
    };
    if want != *shape {
        bar.set_style(cli::style(match want {
            Shape::Bytes => {
                "{spinner:.green} {prefix:.bold} [{bar:16.cyan/blue}] {bytes}/{total_bytes} \
                 {bytes_per_sec} eta {eta} {wide_msg}"
            }
            Shape::Count => {
                "{spinner:.green} {prefix:.bold} [{bar:16.cyan/blue}] {pos}/{len} {msg}, {elapsed}"
            }
            Shape::Spinner | Shape::Waiting => {
                "{spinner:.green} {prefix:.bold} {bytes} ({bytes_per_sec}), {elapsed} {wide_msg}"
            }
        }));
        *shape = want;
    }
    let current = p.current.as_deref().map(tail).unwrap_or_default();
    match want {
        Shape::Count => {
            bar.set_length(length);
            bar.set_position(p.files_done);
            bar.set_message(unit);
        }
        Shape::Bytes | Shape::Spinner | Shape::Waiting => {
            if want == Shape::Bytes {
                bar.set_length(length);
            }
            bar.set_position(p.bytes_done);
            let counted = match p.files_total {
                Some(t) => format!("{} of {t} {unit}", p.files_done),
                None => format!("{} {unit}", p.files_done),
            };
            bar.set_message(format!("{counted}  {current}"));
        }
    }
}

/// The last 40 characters of a path: its most telling part on one line.
fn tail(path: &str) -> String {
    let count = path.chars().count();
    path.chars().skip(count.saturating_sub(40)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("atlas_backup").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_benchmark_scripts_invocations_parse_as_before() {
        // scripts/bench-backup.sh and BENCHMARKS.md.
        let cli = parse(&["--repo", "file:///var/tmp/repo", "init"]).unwrap();
        assert!(matches!(cli.command, Command::Init));
        assert_eq!(cli.repos[0].to_string(), "file:///var/tmp/repo");

        let cli = parse(&[
            "--repo",
            "file:///var/tmp/repo",
            "--quiet",
            "backup",
            "/var/tmp/data",
        ])
        .unwrap();
        assert!(cli.quiet);
        let Command::Backup(b) = cli.command else {
            panic!("not a backup: {:?}", cli.command)
        };
        assert_eq!(b.dir.as_deref(), Some("/var/tmp/data"));
        assert_eq!(b.stdin, None);
        assert_eq!(b.output.output, OutputFormat::Text);

        let cli = parse(&[
            "--repo",
            "file:///w/repo-atlas",
            "--quiet",
            "restore",
            "latest",
            "--target",
            "/w/restore-atlas",
        ])
        .unwrap();
        assert!(cli.quiet);
        let Command::Restore(r) = cli.command else {
            panic!("not a restore: {:?}", cli.command)
        };
        assert_eq!(r.id, "latest");
        assert_eq!(r.target.as_deref(), Some("/w/restore-atlas"));
        assert!(!r.stdout);
    }

    #[test]
    fn the_cache_options_parse_and_no_cache_wins() {
        let cli = parse(&["--repo", "file:///r", "--cache-dir", "/c", "snapshots"]).unwrap();
        assert_eq!(cache_dir(&cli), Some(PathBuf::from("/c")));
        let cli = parse(&[
            "--repo",
            "file:///r",
            "snapshots",
            "--cache-dir",
            "/c",
            "--no-cache",
        ])
        .unwrap();
        assert_eq!(cache_dir(&cli), None);
    }

    #[test]
    fn the_readme_invocations_parse_as_before() {
        let two = [
            "--repo",
            "file:///var/backups/a",
            "--repo",
            "file:///mnt/other/a",
        ];
        let cli = parse(&[&two[..], &["init"]].concat()).unwrap();
        assert_eq!(cli.repos.len(), 2);

        let cli = parse(&[&two[..], &["backup", "./data", "--tag", "nightly"]].concat()).unwrap();
        let Command::Backup(b) = cli.command else {
            panic!("not a backup")
        };
        assert_eq!(b.tags, ["nightly"]);

        let cli = parse(&["--repo", "file:///var/backups/a", "snapshots"]).unwrap();
        assert!(matches!(cli.command, Command::Snapshots { .. }));

        let cli = parse(&[
            "--repo",
            "file:///var/backups/a",
            "forget",
            "--keep-daily",
            "7",
            "--keep-weekly",
            "4",
            "--prune",
        ])
        .unwrap();
        let Command::Forget(f) = cli.command else {
            panic!("not a forget")
        };
        assert!(f.has_policy() && f.prune && !f.dry_run);
        assert_eq!(f.keep_daily, Some(KeepCount::Count(7)));
        assert_eq!(f.keep_weekly, Some(KeepCount::Count(4)));
    }

    #[test]
    fn the_header_forms_parse() {
        let repo = ["-r", "file:///r"];
        let with = |rest: &[&str]| parse(&[&repo[..], rest].concat());

        let Command::Backup(b) = with(&["backup", "--stdin", "dump.sql", "--kind", "pit"])
            .unwrap()
            .command
        else {
            panic!("not a backup")
        };
        assert_eq!(b.stdin.as_deref(), Some("dump.sql"));
        assert!(matches!(b.kind, Some(Kind::PointInTime)));

        let Command::Restore(r) = with(&["restore", "ab12", "--path", "f", "--stdout"])
            .unwrap()
            .command
        else {
            panic!("not a restore")
        };
        assert!(r.stdout && r.target.is_none());

        let Command::Check(c) = with(&["check", "--read-data-subset", "2/7"])
            .unwrap()
            .command
        else {
            panic!("not a check")
        };
        assert_eq!(
            c.read_data_subset,
            Some(ReadDataSubset::Part { n: 2, m: 7 })
        );
        let Command::Check(c) = with(&["check", "--read-data-subset", "10%"])
            .unwrap()
            .command
        else {
            panic!("not a check")
        };
        assert_eq!(c.read_data_subset, Some(ReadDataSubset::Fraction(0.1)));

        // restic's -1: keep all; a negative number, not an option.
        let Command::Forget(f) = with(&[
            "forget",
            "--keep-last",
            "-1",
            "--keep-tag",
            "a,b",
            "--keep-tag",
            "c",
            "--group-by",
            "host,tags",
            "--dry-run",
            "0a1b",
        ])
        .unwrap()
        .command
        else {
            panic!("not a forget")
        };
        assert_eq!(f.keep_last, Some(KeepCount::Unlimited));
        assert_eq!(f.keep_tag, ["a,b", "c"]);
        assert_eq!(f.ids, ["0a1b"]);
        assert!(f.dry_run);

        let Command::Key(KeyCommand::Remove { id }) =
            with(&["key", "remove", "k1"]).unwrap().command
        else {
            panic!("not key remove")
        };
        assert_eq!(id, "k1");

        // Global options may follow the verb.
        let cli = parse(&["snapshots", "--output", "json", "--repo", "file:///r", "-q"]).unwrap();
        assert!(cli.quiet);
        let Command::Snapshots { output } = cli.command else {
            panic!("not snapshots")
        };
        assert_eq!(output.output, OutputFormat::Json);
    }

    #[test]
    fn bad_usage_is_refused_by_the_parser() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).map(|_| ()).unwrap_err().kind();
        assert_eq!(
            kind(&["-r", "file:///r", "backup"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["-r", "file:///r", "backup", "/d", "--stdin", "x"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["-r", "file:///r", "restore", "latest"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["-r", "file:///r", "restore", "latest", "--stdout"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["-r", "file:///r", "backup", "/d", "--kind", "weekly"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&["-r", "file:///r", "check", "--read-data-subset", "half"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["-r", "relative/path", "init"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["-r", "file:///r", "bogus"]),
            ErrorKind::InvalidSubcommand
        );
        // Usage errors exit 2, as the old parser did.
        assert_eq!(
            parse(&["-r", "file:///r", "bogus"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn progress_names_what_each_action_counts() {
        let bar = ProgressBar::hidden();
        let mut shape = Shape::Waiting;
        // Progress is non-exhaustive: start from the default.
        let mut p = Progress::default();
        p.action = "prune";
        p.files_total = Some(4);
        p.files_done = 1;
        show(&bar, &p, &mut shape);
        assert_eq!(shape, Shape::Count);
        assert_eq!((bar.position(), bar.length()), (1, Some(4)));
        assert_eq!(bar.message(), "packs");

        p.action = "restore";
        p.bytes_total = Some(1000);
        p.bytes_done = 250;
        p.current = Some(format!("{}/tail.txt", "d".repeat(60)));
        show(&bar, &p, &mut shape);
        assert_eq!(shape, Shape::Bytes);
        assert_eq!((bar.position(), bar.length()), (250, Some(1000)));
        assert!(
            bar.message().starts_with("1 of 4 files  "),
            "{}",
            bar.message()
        );
        assert!(bar.message().ends_with("/tail.txt"));
        assert_eq!(tail(p.current.as_deref().unwrap()).chars().count(), 40);
    }

    #[test]
    fn the_wal_verbs_parse_as_postgres_calls_them() {
        let with = |rest: &[&str]| parse(&[&["-r", "file:///r", "--quiet"][..], rest].concat());
        let Command::WalPush { path } = with(&["wal-push", "pg_wal/000000010000000000000003"])
            .unwrap()
            .command
        else {
            panic!("not wal-push")
        };
        assert_eq!(path, PathBuf::from("pg_wal/000000010000000000000003"));
        let Command::WalFetch { name, dest } =
            with(&["wal-fetch", "00000002.history", "pg_wal/RECOVERYHISTORY"])
                .unwrap()
                .command
        else {
            panic!("not wal-fetch")
        };
        assert_eq!(name, "00000002.history");
        assert_eq!(dest, PathBuf::from("pg_wal/RECOVERYHISTORY"));
        assert!(with(&["wal-fetch", "only-one"]).is_err());
        assert!(with(&["wal-push"]).is_err());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_postgres_verbs_parse_and_take_one_target() {
        let with = |rest: &[&str]| parse(&[&["-r", "file:///r"][..], rest].concat());
        assert!(matches!(
            with(&["pg-backup", "--dsn", "postgres://u@h/db"])
                .unwrap()
                .command,
            Command::PgBackup(_)
        ));
        assert!(matches!(
            with(&[
                "pg-restore",
                "--pgdata",
                "/d",
                "--target-time",
                "2026-01-01T00:00:00Z"
            ])
            .unwrap()
            .command,
            Command::PgRestore(_)
        ));
        assert!(with(&["pg-restore", "--pgdata", "/d", "latest"]).is_ok());
        assert!(
            with(&["pg-restore", "--target-lsn", "0/1"]).is_err(),
            "--pgdata is required"
        );
        let two = with(&[
            "pg-restore",
            "--pgdata",
            "/d",
            "--target-lsn",
            "0/1",
            "--target-name",
            "n",
        ]);
        assert!(two.is_err(), "one target at most");
        assert!(matches!(
            with(&["pg-verify", "--sql", "SELECT true", "--sql", "SELECT 1 = 1"])
                .unwrap()
                .command,
            Command::PgVerify(_)
        ));
    }

    #[test]
    fn the_repair_and_unlock_verbs_parse_and_are_documented() {
        let with = |rest: &[&str]| parse(&[&["-r", "file:///r"][..], rest].concat());
        assert!(matches!(
            with(&["repair", "snapshots"]).unwrap().command,
            Command::Repair(RepairCommand::Snapshots)
        ));
        assert!(matches!(
            with(&["repair", "index"]).unwrap().command,
            Command::Repair(RepairCommand::Index)
        ));
        assert!(matches!(
            with(&["unlock"]).unwrap().command,
            Command::Unlock { remove_all: false }
        ));
        assert!(matches!(
            parse(&["unlock", "--remove-all", "-r", "file:///r"])
                .unwrap()
                .command,
            Command::Unlock { remove_all: true }
        ));
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| with(args).map(|_| ()).unwrap_err().kind();
        assert_eq!(
            kind(&["repair"]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(kind(&["repair", "packs"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["unlock", "--all"]), ErrorKind::UnknownArgument);

        let help = Cli::command().render_long_help().to_string();
        for verb in ["repair", "unlock"] {
            assert!(help.contains(verb), "--help lists {verb}: {help}");
        }
        let mut cmd = Cli::command();
        let repair = cmd
            .find_subcommand_mut("repair")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            repair.contains("snapshots") && repair.contains("index"),
            "{repair}"
        );
        let unlock = cmd
            .find_subcommand_mut("unlock")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(unlock.contains("--remove-all"), "{unlock}");
    }

    /// The whole story on a repository in a directory: a damaged manifest
    /// makes `check` fail and `prune` refuse until `repair snapshots`; lost
    /// index files come back with `repair index`; `unlock` and `prune`
    /// clear what a crashed backup left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_repository_is_repaired_from_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let url = format!("file://{}", root.display());
        let password = dir.path().join("password");
        std::fs::write(&password, "correct horse\n").unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.txt"), "first version\n".repeat(1000)).unwrap();
        let run_args = |args: &[&str]| {
            let cli = parse(
                &[
                    &["-q", "-r", url.as_str(), "--password-file"][..],
                    &[password.to_str().unwrap()],
                    args,
                ]
                .concat(),
            )
            .unwrap();
            run(cli)
        };
        let ok = |r: StatusResult| r.map_err(|e| e.to_string()).unwrap();
        assert_eq!(ok(run_args(&["init"]).await), ExitCode::SUCCESS);
        assert_eq!(
            ok(run_args(&["backup", src.to_str().unwrap()]).await),
            ExitCode::SUCCESS
        );
        std::fs::write(src.join("b.txt"), "second file\n".repeat(1000)).unwrap();
        assert_eq!(
            ok(run_args(&["backup", src.to_str().unwrap()]).await),
            ExitCode::SUCCESS
        );

        // Truncate the first snapshot's manifest.
        let manifests = |sub: &str| -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = std::fs::read_dir(root.join(sub))
                .map(|d| d.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            v.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
            v
        };
        let first = manifests("snapshots")[0].clone();
        let bytes = std::fs::read(&first).unwrap();
        std::fs::write(&first, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(ok(run_args(&["snapshots"]).await), ExitCode::SUCCESS);
        assert_eq!(ok(run_args(&["check"]).await), ExitCode::FAILURE);
        let err = run_args(&["prune"]).await.unwrap_err().to_string();
        assert!(err.contains("repair snapshots"), "{err}");
        assert_eq!(
            ok(run_args(&["repair", "snapshots"]).await),
            ExitCode::SUCCESS
        );
        assert!(!first.exists());
        let name = first.file_name().unwrap();
        assert!(root.join("damaged/snapshots").join(name).exists());
        assert_eq!(ok(run_args(&["check"]).await), ExitCode::SUCCESS);

        // A crashed backup: a temporary upload file and a lock of ours that
        // nothing releases (this process lives: only --remove-all takes it).
        let pack_dir = std::fs::read_dir(root.join("data"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let tmp = pack_dir.join(".atlas-tmp.00000000000000aa");
        std::fs::write(&tmp, b"half a pack").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let target = TargetUrl::parse(&url).unwrap();
        let repo = Repository::open(
            target.open(false).await.unwrap(),
            target.prefix().clone(),
            &KeySource::passphrase("correct horse"),
        )
        .await
        .unwrap();
        repo.lock(false, "backup").await.unwrap().leak();
        assert!(
            run_args(&["prune"]).await.is_err(),
            "a live lock blocks prune"
        );
        assert_eq!(ok(run_args(&["unlock"]).await), ExitCode::SUCCESS);
        assert_eq!(repo.locks().await.unwrap().len(), 1, "a live lock stays");
        assert_eq!(
            ok(run_args(&["unlock", "--remove-all"]).await),
            ExitCode::SUCCESS
        );
        assert!(repo.locks().await.unwrap().is_empty());
        assert_eq!(ok(run_args(&["prune"]).await), ExitCode::SUCCESS);
        assert!(!tmp.exists(), "prune removed the crashed upload's file");

        // Lost index files.
        for f in manifests("index") {
            std::fs::remove_file(f).unwrap();
        }
        let out = dir.path().join("out");
        assert!(
            run_args(&["restore", "latest", "--target", out.to_str().unwrap()])
                .await
                .is_err()
        );
        assert_eq!(ok(run_args(&["repair", "index"]).await), ExitCode::SUCCESS);
        let out = dir.path().join("out2");
        assert_eq!(
            ok(run_args(&["restore", "latest", "--target", out.to_str().unwrap()]).await),
            ExitCode::SUCCESS
        );
        for f in ["a.txt", "b.txt"] {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(src.join(f)).unwrap()
            );
        }
        assert_eq!(
            ok(run_args(&["check", "--read-data"]).await),
            ExitCode::SUCCESS
        );
    }
}
