//! Point-in-time recovery of a real PostgreSQL cluster through the backup
//! repository, driven through `atlas_backup`'s verbs exactly as a server
//! runs them: `wal-push` as `archive_command`, `pg-backup`, and restores
//! (`pg-restore`, `pg-verify`) whose `restore_command` is `wal-fetch`.
//!
//! Each test creates a throwaway cluster (initdb into a temporary
//! directory, a free port, archiving on) and stops every server it started,
//! also when it fails. As root, the servers and the `atlas_backup`
//! invocations run as user `postgres` (initdb refuses root, and the
//! archive must stay writable for the server's `archive_command`).
//! Run: `cargo xtask test`, or
//! `cargo test -p atlas-tests --features postgres --test pitr_postgres -- --ignored`.
#![cfg(feature = "postgres")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use atlas_backup::pitr::PitrCatalog;
use atlas_backup::repo::{KeySource, Repository};
use atlas_backup::schedule::{PointInTimeJob, WalSwitched, job_fn, switcher_fn};
use atlas_metrics::Telemetry;
use atlas_storage::postgres::pitr::{self as pg, PgServer, PgTools};
use tokio_postgres::Client;

const PASSWORD: &str = "pitr test passphrase";

/// The `atlas_backup` example, built once per test run with the `cargo`
/// that runs this test (a no-op when fresh).
fn atlas_backup() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/Cargo.toml");
            let mut cargo = Command::new(env!("CARGO"));
            // Variables cargo set for this package's build would make the
            // nested build and the outer one rebuild each other's
            // dependencies.
            for (key, _) in std::env::vars() {
                if key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST_")
                    || key == "CARGO_CRATE_NAME"
                    || key == "OUT_DIR"
                {
                    cargo.env_remove(key);
                }
            }
            cargo
                .args(["build", "--example", "atlas_backup", "--manifest-path"])
                .arg(&manifest);
            // With the cloud targets this is most likely `cargo xtask test`
            // (`--workspace --all-features`): build the same way, so that
            // nothing is built twice.
            if cfg!(feature = "cloud") {
                cargo.args(["--workspace", "--all-features"]);
            } else {
                cargo.args(["--features", "postgres"]);
            }
            let status = cargo.status().expect("cannot run cargo");
            assert!(
                status.success(),
                "cargo build --example atlas_backup failed"
            );
            // This test runs from <target>/debug/deps/.
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("examples/atlas_backup")
        })
        .clone()
}

/// A working directory the server's user can reach, with a repository
/// and a password file in it.
struct Work {
    dir: tempfile::TempDir,
    tools: PgTools,
    /// The repositories (the first one a directory of `dir`).
    repos: Vec<String>,
    /// Settings the cloud targets read, given to every `atlas_backup`.
    env: Vec<(String, String)>,
}

impl Work {
    fn new() -> Work {
        let tools = PgTools::discover()
            .expect("the PostgreSQL server programs (cargo xtask test installs them)");
        let dir = tempfile::Builder::new()
            .prefix("atlas-pitr-")
            .tempdir()
            .unwrap();
        let repos = vec![format!("file://{}", dir.path().join("repo").display())];
        let w = Work {
            dir,
            tools,
            repos,
            env: Vec::new(),
        };
        w.give_to_owner(w.dir.path());
        std::fs::write(w.password_file(), PASSWORD).unwrap();
        w.give_to_owner(&w.password_file());
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn password_file(&self) -> PathBuf {
        self.path("password")
    }

    fn repo_url(&self) -> String {
        self.repos[0].clone()
    }

    /// The first repository, opened.
    async fn repository(&self) -> Repository {
        let url = atlas_storage::url::TargetUrl::parse(&self.repo_url()).unwrap();
        Repository::open(
            url.open(false).await.unwrap(),
            url.prefix().clone(),
            &KeySource::passphrase(PASSWORD),
        )
        .await
        .unwrap()
    }

    /// `--repo URL` for each of `repos`.
    fn repo_args(repos: &[String]) -> Vec<String> {
        repos
            .iter()
            .flat_map(|r| ["--repo".to_owned(), r.clone()])
            .collect()
    }

    fn give_to_owner(&self, path: &Path) {
        if let Some(user) = self.tools.run_as() {
            let ok = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {}", path.display());
        }
    }

    /// `atlas_backup --repo … --password-file … ARGS`, as the server's user.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_on(&self.repos, args)
    }

    /// As [`Work::cli`], with only `repos`.
    fn cli_on(&self, repos: &[String], args: &[&str]) -> Output {
        let mut cmd = match self.tools.run_as() {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(atlas_backup());
                c
            }
            None => Command::new(atlas_backup()),
        };
        cmd.args(Self::repo_args(repos))
            .arg("--password-file")
            .arg(self.password_file())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--quiet")
            .args(args)
            .env_remove("ATLAS_PASSWORD")
            .env("RUST_LOG", "warn");
        let out = cmd.output().expect("cannot run atlas_backup");
        eprintln!(
            "atlas_backup {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "atlas_backup {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new cluster archiving into the repository, started on a free port.
    async fn source_cluster(&self) -> PgServer {
        let pgdata = self.path("source");
        pg::init_cluster(&self.tools, &pgdata).await.unwrap();
        let settings: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
        let repos: Vec<String> = self.repos.iter().map(|r| format!("--repo '{r}'")).collect();
        let archive = format!(
            "{} '{}' {} --password-file '{}' --quiet wal-push %p",
            settings.join(" "),
            atlas_backup().display(),
            repos.join(" "),
            self.password_file().display()
        );
        let conf = format!(
            "\nwal_level = replica\narchive_mode = on\narchive_command = '{}'\nfsync = off\nmax_wal_senders = 4\n",
            archive.replace('\'', "''")
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        PgServer::start(&self.tools, &pgdata, pg::free_port().unwrap(), "")
            .await
            .unwrap()
    }

    /// Creates the repositories and a source cluster holding rows 1-5 in
    /// table `t`.
    async fn started_with_rows(&self) -> (PgServer, Client) {
        self.cli_ok(&["init"]);
        let server = self.source_cluster().await;
        let client = server.connection().connect().await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
            )
            .await
            .unwrap();
        insert(&client, 1..=5).await;
        (server, client)
    }

    /// The pack files of the repository.
    fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in std::fs::read_dir(self.path("repo/data")).unwrap().flatten() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                out.push(f.path());
            }
        }
        out.sort();
        out
    }
}

async fn insert(client: &Client, ids: std::ops::RangeInclusive<i32>) {
    for id in ids {
        client
            .execute("INSERT INTO t(id) VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
}

/// A moment between two batches of commits, a little away from both.
async fn marker() -> String {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let at = humantime_rfc3339(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    at
}

fn humantime_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    jiff_like(d.as_secs() as i64, d.subsec_micros())
}

/// RFC 3339 in UTC without a date library: days from the civil calendar.
fn jiff_like(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ids_check(ids: &[i32]) -> String {
    let list: Vec<String> = ids.iter().map(i32::to_string).collect();
    format!(
        "SELECT coalesce(array_agg(id ORDER BY id), '{{}}') = ARRAY[{}]::int[] FROM t",
        list.join(",")
    )
}

/// The verify checks of a restore holding exactly `ids`: those rows, a new
/// timeline, and a server that accepts writes.
fn verify_args(target: &[&str], ids: &[i32]) -> Vec<String> {
    let mut args: Vec<String> = ["pg-verify"]
        .iter()
        .chain(target)
        .map(|s| s.to_string())
        .collect();
    for sql in [
        ids_check(ids),
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) <> '00000001'".to_owned(),
        "WITH i AS (INSERT INTO t(id) VALUES (-1) RETURNING 1) SELECT count(*) = 1 FROM i"
            .to_owned(),
    ] {
        args.push("--sql".into());
        args.push(sql);
    }
    args
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the PostgreSQL server programs; run: cargo xtask test"]
async fn restores_reach_each_marker_exactly_and_bad_archives_stop_recovery() {
    let work = Work::new();
    let (server, client) = work.started_with_rows().await;
    let before_base = marker().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
    let out = work.cli_ok(&["pg-backup", "--dsn", &url]);
    assert!(
        out.contains("base backup") && out.contains("timeline 1"),
        "{out}"
    );
    let packs_after_base = work.packs();
    let out = work.cli_ok(&["check", "--pg-verifybackup"]);
    assert!(out.contains("pg_verifybackup found it intact"), "{out}");
    insert(&client, 6..=10).await;
    let m1 = marker().await;
    insert(&client, 11..=15).await;
    let m2 = marker().await;
    insert(&client, 16..=20).await;
    let m3 = marker().await;
    // Rows 21-25 go into a segment of their own, the archive's last.
    let before_last = pg::switch_wal(&client, Duration::from_secs(60))
        .await
        .unwrap()
        .segment;
    insert(&client, 21..=25).await;
    // The point-in-time job, as a scheduler runs it.
    let out = work.cli_ok(&["pg-switch-wal", "--dsn", &url]);
    assert!(out.contains("archived after"), "{out}");
    let status = pg::archiver_status(&client).await.unwrap();
    let newest = status
        .last_archived_wal
        .clone()
        .expect("a segment was archived");
    assert!(out.contains(&format!("segment {newest} archived")), "{out}");
    assert_eq!(status.failed_count, 0);
    assert!(status.last_archived_age.unwrap() < Duration::from_secs(60));

    // Targets the archive cannot reach are refused before anything starts.
    let restored = work.path("never");
    let out = work.cli(&[
        "pg-restore",
        "--pgdata",
        restored.to_str().unwrap(),
        "--target-time",
        &before_base,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("before the oldest base backup"));
    assert!(
        !restored.exists(),
        "nothing may be created for a refused target"
    );
    let later = humantime_rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let out = work.cli(&[
        "pg-restore",
        "--pgdata",
        restored.to_str().unwrap(),
        "--target-time",
        &later,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("after the newest archived WAL"));
    assert!(!restored.exists());

    // Each marker: exactly the rows committed before it.
    let all: Vec<i32> = (1..=25).collect();
    for (m, n) in [(&m1, 10), (&m2, 15), (&m3, 20)] {
        let out = work.cli_ok(
            &verify_args(&["--target-time", m], &all[..n])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(
            out.contains("recovery reached the target") && out.contains("test restore completed"),
            "{out}"
        );
    }
    let out = work.cli_ok(
        &verify_args(&["latest"], &all)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(out.contains("test restore completed"), "{out}");

    // pg-restore into a data directory of its own, then started again.
    let pgdata = work.path("restored");
    let port = pg::free_port().unwrap().to_string();
    let out = work.cli_ok(&[
        "pg-restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-time",
        &m2,
        "--port",
        &port,
    ]);
    assert!(out.contains("promoted on timeline 2"), "{out}");
    let restored = PgServer::start(&work.tools, &pgdata, pg::free_port().unwrap(), "")
        .await
        .unwrap();
    let c = restored.connection().connect().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 15);
    drop(c);
    restored.stop().await.unwrap();

    // A missing segment at the end: recovery ends at the last archived
    // point (rows 1-20) and says so.
    let repo = work.repository().await;
    let catalog = PitrCatalog::load(&repo).await.unwrap();
    let last = catalog
        .wal
        .iter()
        .find(|w| w.name.as_str() == newest)
        .expect("the last segment is archived");
    repo.forget(&[last.snapshot.to_hex()]).await.unwrap();
    let out = work.cli_ok(
        &verify_args(&["latest"], &all[..20])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        out.contains("recovery ended at the end of the archive")
            && out.contains("test restore completed"),
        "{out}"
    );

    // Retention: only the WAL from before the base backup goes.
    let out = work.cli_ok(&["pg-forget-wal"]);
    assert!(
        out.contains("forgot 000000010000000000000001\n1 WAL files"),
        "{out}"
    );
    let out = work.cli_ok(&["pg-forget-wal", "--dry-run"]);
    assert!(out.contains("0 WAL files"), "{out}");

    // wal-push: the same bytes again succeed, other bytes under the name fail.
    let seg = work.path("segment");
    let name = "000000010000000000000003";
    work.cli_ok(&["wal-fetch", name, seg.to_str().unwrap()]);
    let same = work.path(name);
    std::fs::copy(&seg, &same).unwrap();
    work.give_to_owner(&same);
    let out = work.cli_ok(&["wal-push", same.to_str().unwrap()]);
    assert!(out.contains("already archived"), "{out}");
    let mut bytes = std::fs::read(&same).unwrap();
    bytes[8192 * 3 + 100] ^= 0xFF;
    std::fs::write(&same, &bytes).unwrap();
    let out = work.cli(&["wal-push", same.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different content"));
    // wal-fetch: a file not archived is exit 1 (the end of the archive).
    let out = work.cli(&[
        "wal-fetch",
        "0000000100000000000000FF",
        work.path("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!work.path("x").exists());

    // Damaged WAL in the repository: fetching it is fatal (126), and a
    // recovery that needs it stops with an error instead of ending early.
    for pack in work
        .packs()
        .into_iter()
        .filter(|p| !packs_after_base.contains(p))
    {
        let mut b = std::fs::read(&pack).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xFF;
        std::fs::write(&pack, b).unwrap();
    }
    let out = work.cli(&["wal-fetch", &before_last, work.path("y").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
    assert!(!work.path("y").exists());
    let out = work.cli(
        &verify_args(&["latest"], &all)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("test restore completed"));
    drop(client);
    server.stop().await.unwrap();
}

/// A named restore point between two base backups: the restore starts
/// from the first backup (the second lies after the point and would never
/// meet it) and holds exactly the rows committed before the point; a name
/// created twice with no base backup between is refused, and a name never
/// recorded falls back to the newest base backup, which PostgreSQL refuses
/// to recover past without meeting the name.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the PostgreSQL server programs; run: cargo xtask test"]
async fn restore_points_restore_the_base_backup_before_them() {
    let work = Work::new();
    let (server, client) = work.started_with_rows().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
    work.cli_ok(&["pg-backup", "--dsn", &url]);
    insert(&client, 6..=10).await;
    let out = work.cli_ok(&["pg-restore-point", "before-cleanup", "--dsn", &url]);
    assert!(
        out.contains("restore point \"before-cleanup\"") && out.contains("archived after"),
        "{out}"
    );
    insert(&client, 11..=15).await;
    client
        .batch_execute("DELETE FROM t WHERE id <= 5")
        .await
        .unwrap();
    // A second base backup after the point: the newest, yet the wrong one.
    work.cli_ok(&["pg-backup", "--dsn", &url]);
    insert(&client, 16..=20).await;
    let out = work.cli_ok(&["pg-restore-point", "twice", "--dsn", &url]);
    assert!(out.contains("twice"), "{out}");
    insert(&client, 21..=22).await;
    work.cli_ok(&["pg-restore-point", "twice", "--dsn", &url]);

    let expected: Vec<i32> = (1..=10).collect();
    let args = verify_args(&["--target-name", "before-cleanup"], &expected);
    let out = work.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains("recovery reached the target") && out.contains("test restore completed"),
        "{out}"
    );

    let out = work.cli(&["pg-verify", "--target-name", "twice"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("created twice"), "{err}");

    let out = work.cli(&["pg-restore-point", &"x".repeat(64), "--dsn", &url]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 63"));
    drop(client);
    server.stop().await.unwrap();
}

#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the PostgreSQL server programs, s3s-fs, fake-gcs-server and Azurite; run: cargo xtask test"]
async fn wal_archived_to_four_mirrors_restores_from_each() {
    let mut work = Work::new();
    let run = format!("pitr-{:016x}", rand::random::<u64>());
    for scheme in ["s3", "gs", "az"] {
        work.repos.push(format!("{scheme}://atlas-mirror/{run}"));
    }
    work.env = atlas_tests::cloud_test_env();
    let (server, client) = work.started_with_rows().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
    work.cli_ok(&["pg-backup", "--dsn", &url]);
    insert(&client, 6..=10).await;
    pg::switch_wal(&client, Duration::from_secs(120))
        .await
        .unwrap();
    let all: Vec<i32> = (1..=10).collect();
    for repo in work.repos.clone() {
        let args = verify_args(&["latest"], &all);
        let out = work.cli_on(
            std::slice::from_ref(&repo),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("test restore completed"),
            "restore from {repo}: {stdout}"
        );
    }
    drop(client);
    server.stop().await.unwrap();
}

/// The scheduler's point-in-time job over a real cluster: it closes the
/// current segment, returns once `pg_stat_archiver` shows it archived (so
/// it is in the repository), and the newest archived WAL is younger after
/// it than before; the wiring exports both numbers as metrics.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the PostgreSQL server programs; run: cargo xtask test"]
async fn the_point_in_time_job_archives_the_current_segment() {
    let work = Work::new();
    let (server, client) = work.started_with_rows().await;
    let client = std::sync::Arc::new(client);
    // Something archived, then left to age while new rows are written.
    pg::switch_wal(&client, Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    insert(&client, 6..=10).await;
    let before = pg::archiver_status(&client)
        .await
        .unwrap()
        .last_archived_age
        .expect("a segment was archived");
    assert!(before >= Duration::from_secs(3), "{before:?}");

    let telemetry = Telemetry::new();
    let recorder = telemetry.clone();
    let shared = std::sync::Arc::clone(&client);
    let job = PointInTimeJob::new(
        switcher_fn(move || {
            let client = std::sync::Arc::clone(&shared);
            async move {
                let switch = pg::switch_wal(&client, Duration::from_secs(60)).await?;
                let status = pg::archiver_status(&client).await?;
                Ok(WalSwitched::new(switch.segment, status.last_archived_age))
            }
        }),
        job_fn(|run| async move { panic!("only point-in-time runs here, not {}", run.kind) }),
    )
    .on_report(move |r| {
        recorder.point_in_time_job("pitr", r.duration, r.switched.newest_archived_age);
    });
    let report = job.switch_now().await.unwrap();
    let after = report
        .switched
        .newest_archived_age
        .expect("the switched segment was archived");
    assert!(
        after < before,
        "newest WAL age {after:?}, before {before:?}"
    );

    // The closed segment, holding rows 6-10, is in the repository.
    let repo = work.repository().await;
    let catalog = PitrCatalog::load(&repo).await.unwrap();
    assert!(
        catalog
            .wal
            .iter()
            .any(|w| w.name.as_str() == report.switched.segment),
        "{} not in the repository",
        report.switched.segment
    );
    let metrics = telemetry.encode();
    assert!(
        metrics
            .contains("atlas_backup_point_in_time_duration_seconds_count{repository=\"pitr\"} 1"),
        "{metrics}"
    );
    let exported: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("atlas_backup_newest_wal_age_seconds{repository=\"pitr\"} "))
        .expect("the newest WAL age is exported")
        .parse()
        .unwrap();
    assert!((exported - after.as_secs_f64()).abs() < 1e-6, "{metrics}");
    drop(job);
    drop(client);
    server.stop().await.unwrap();
}
