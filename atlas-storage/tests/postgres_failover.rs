//! PostgreSQL failover against real servers: each test starts its own
//! throwaway primary (initdb, `wal_level = replica`) and a streaming
//! standby made from it with `pg_basebackup -R`, on free ports, and stops
//! them when it ends, also when it fails. As root, the servers run as user
//! `postgres` (initdb refuses root).
//!
//! Run: `cargo xtask test`, or
//! `cargo test -p atlas-storage --features postgres --test postgres_failover -- --ignored`
//! (the server programs: `ATLAS_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/<n>/bin`).
#![cfg(feature = "postgres")]

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_core::ErrorKind;
use atlas_core::database::{DatabaseFailover, ReplicationStatus};
use atlas_core::failover::{FailoverState, FailoverStore};
use atlas_core::region::{RegionName, RegionWeights};
use atlas_core::testing::conformance;
use atlas_core::{ServiceName, StateStore};
use atlas_storage::postgres::PostgresStateStore;
use atlas_storage::postgres::failover::{
    ConnectionTarget, FenceMethod, PgNode, PostgresFailover, PrimaryWatch, RpoBudget,
    SwitchoverError,
};
use atlas_storage::postgres::pitr::{self as pg, PgServer, PgTools};
use tokio_postgres::{Client, NoTls};

mod common;

/// The standby's `cluster_name`, which it streams under as its
/// `application_name`.
const STANDBY_APP: &str = "db_b";

/// A primary and its streaming standby in a temporary directory.
struct Pair {
    // Fields drop in order: the servers stop before the directory goes.
    primary: Option<PgServer>,
    standby: Option<PgServer>,
    primary_port: u16,
    standby_port: u16,
    tools: PgTools,
    dir: tempfile::TempDir,
}

impl Pair {
    /// Starts the pair; with `synchronous`, commits on the primary wait
    /// for the standby (`synchronous_standby_names`).
    async fn start(synchronous: bool) -> Pair {
        common::init_tracing();
        let tools = PgTools::discover()
            .expect("the PostgreSQL server programs (cargo xtask test installs them)");
        let dir = tempfile::Builder::new()
            .prefix("atlas-failover-")
            .tempdir()
            .unwrap();
        if let Some(user) = tools.run_as() {
            let ok = std::process::Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {}", dir.path().display());
        }
        let mut pair = Pair {
            primary: None,
            standby: None,
            primary_port: pg::free_port().unwrap(),
            standby_port: 0,
            tools,
            dir,
        };
        pg::init_cluster(&pair.tools, &pair.primary_dir())
            .await
            .unwrap();
        let conf = "\nwal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n\
                    fsync = off\nwal_keep_size = '256MB'\nwal_receiver_status_interval = '1s'\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pair.primary_dir().join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        pair.primary = Some(
            PgServer::start(
                &pair.tools,
                &pair.primary_dir(),
                pair.primary_port,
                "-c cluster_name=db_a",
            )
            .await
            .unwrap(),
        );
        let primary_conn = pair.primary.as_ref().unwrap().connection();
        pg::create_standby(&pair.tools, &primary_conn, &pair.standby_dir())
            .await
            .unwrap();
        assert!(pair.standby_dir().join("standby.signal").exists());
        pair.standby_port = pg::free_port().unwrap();
        pair.standby = Some(
            PgServer::start(
                &pair.tools,
                &pair.standby_dir(),
                pair.standby_port,
                &format!("-c cluster_name={STANDBY_APP}"),
            )
            .await
            .unwrap(),
        );
        let primary = connect(pair.primary_port).await;
        wait_for(
            &primary,
            "SELECT count(*) = 1 FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .await;
        if synchronous {
            primary
                .batch_execute(&format!(
                    "ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_APP}'"
                ))
                .await
                .unwrap();
            primary
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .unwrap();
            wait_for(
                &primary,
                "SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .await;
        }
        primary
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            .await
            .unwrap();
        pair
    }

    fn primary_dir(&self) -> PathBuf {
        self.dir.path().join("primary")
    }

    fn standby_dir(&self) -> PathBuf {
        self.dir.path().join("standby")
    }

    fn target_file(&self) -> PathBuf {
        self.dir.path().join("db-target.json")
    }

    fn dsn(port: u16) -> String {
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
    }

    /// The failover pair: with `managed`, Atlas manages the primary's data
    /// directory and fences by stopping it; without, by configuration.
    fn failover(&self, managed: bool) -> PostgresFailover {
        let mut primary = PgNode::new("db-a", &Self::dsn(self.primary_port)).unwrap();
        if managed {
            primary = primary.with_data_dir(self.primary_dir());
        }
        let standby = PgNode::new("db-b", &Self::dsn(self.standby_port))
            .unwrap()
            .with_data_dir(self.standby_dir())
            .with_application_name(STANDBY_APP);
        let db = PostgresFailover::builder(primary, standby)
            .with_tools(self.tools.clone())
            .with_target_file(self.target_file())
            .with_check_timeout(Duration::from_secs(2))
            .with_promote_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let expected = if managed {
            FenceMethod::Stop
        } else {
            FenceMethod::ReadOnly
        };
        assert_eq!(db.fence_method(), expected);
        db
    }

    /// Stops the primary at once, as a crash would (`pg_ctl stop -m
    /// immediate`: no shutdown checkpoint, nothing more sent to the
    /// standby).
    fn kill_primary(&mut self) {
        drop(self.primary.take());
    }

    /// Starts the old primary's data directory again, as an operator or a
    /// supervisor would after the crash.
    async fn restart_old_primary(&self) -> PgServer {
        PgServer::start(
            &self.tools,
            &self.primary_dir(),
            self.primary_port,
            "-c cluster_name=db_a",
        )
        .await
        .unwrap()
    }
}

async fn connect(port: u16) -> Client {
    let (client, conn) = tokio_postgres::connect(&Pair::dsn(port), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    tokio::spawn(conn);
    client
}

/// Polls `sql` (one boolean) until true, for up to 30 s.
async fn wait_for(client: &Client, sql: &str) {
    let started = Instant::now();
    loop {
        if client.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn insert_one_by_one(client: &Client, ids: std::ops::RangeInclusive<i32>) -> usize {
    let mut acknowledged = 0;
    for id in ids {
        client
            .execute("INSERT INTO t (id) VALUES ($1)", &[&id])
            .await
            .unwrap();
        acknowledged += 1;
    }
    acknowledged
}

async fn ids(client: &Client) -> Vec<i32> {
    client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn in_recovery(port: u16) -> bool {
    connect(port)
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A write through a fresh session, as an application that connected to
/// the old primary would make; the SQLSTATE when it is refused.
async fn try_write(port: u16, id: i32) -> Result<(), String> {
    connect(port)
        .await
        .execute("INSERT INTO t (id, note) VALUES ($1, 'late')", &[&id])
        .await
        .map(|_| ())
        .map_err(|e| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.code().code().to_owned())
        })
}

/// SQLSTATE 25006: read_only_sql_transaction (in recovery or read-only).
const READ_ONLY: &str = "25006";

/// Kills the primary, waits for the watch to call it lost, fences,
/// promotes; checks the new primary and returns (acknowledged, present).
async fn failover_after_primary_loss(synchronous: bool) -> (usize, usize) {
    let mut pair = Pair::start(synchronous).await;
    let db = pair.failover(true);
    db.write_target().await.unwrap();
    assert_eq!(
        ConnectionTarget::read_from(&pair.target_file())
            .await
            .unwrap()
            .port,
        pair.primary_port
    );
    let status = db.replication().await.unwrap();
    assert!(status.streaming, "{status:?}");
    assert_eq!(status.synchronous, synchronous, "{status:?}");
    assert!(db.check_primary().await.unwrap().writable);

    // An application writes one row per transaction, without pause, and
    // counts the commits the primary acknowledged; the primary dies while
    // it writes.
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let primary = connect(pair.primary_port).await;
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                let id = acked.load(SeqCst) as i32 + 1;
                if primary
                    .execute("INSERT INTO t (id) VALUES ($1)", &[&id])
                    .await
                    .is_err()
                {
                    return;
                }
                acked.fetch_add(1, SeqCst);
            }
        })
    };
    while acked.load(SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pair.kill_primary();
    writer.await.unwrap();
    let acknowledged = acked.load(SeqCst);
    let killed = Instant::now();
    let mut watch = PrimaryWatch::new(Duration::from_secs(1)).unwrap();
    let loss = watch
        .until_lost(&db, Duration::from_millis(200))
        .await
        .unwrap();
    let detected = killed.elapsed();
    assert!(loss.down_for > Duration::from_secs(1), "{loss:?}");
    assert!(loss.failed_checks >= 2, "{loss:?}");

    let fence = db.fence_primary(&loss.reason()).await.unwrap();
    assert_eq!(
        (fence.node.as_str(), fence.method.as_str()),
        ("db-a", "stopped")
    );
    assert!(fence.reason.contains("primary down for"), "{fence:?}");
    assert!(
        pair.primary_dir().join("standby.signal").exists(),
        "the fenced data directory restarts as a standby"
    );
    let promotion = db.promote_standby().await.unwrap();
    assert_eq!(promotion.node, "db-b");
    assert_eq!(
        promotion.timeline, 2,
        "a new timeline after the first promotion"
    );
    assert!(promotion.writable);
    assert!(!in_recovery(pair.standby_port).await);

    let target = ConnectionTarget::read_from(&pair.target_file())
        .await
        .unwrap();
    assert_eq!(
        (
            target.node.as_str(),
            target.host.as_str(),
            target.port,
            target.timeline
        ),
        ("db-b", "127.0.0.1", pair.standby_port, Some(2))
    );
    assert_eq!(db.primary().await, "db-b");
    let health = db.check_primary().await.unwrap();
    assert!(health.reachable && health.writable, "{health:?}");
    // The probe row is there, and the application can write.
    let new_primary = connect(target.port).await;
    let probe: i64 = new_primary
        .query_one(
            "SELECT timeline FROM atlas_failover_probe WHERE node = 'db-b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(probe, 2);
    new_primary
        .execute("INSERT INTO t (id) VALUES (100000)", &[])
        .await
        .unwrap();
    let present = ids(&new_primary).await;
    // Replication keeps commit order: what arrived is a prefix (with,
    // perhaps, the one commit in flight when the primary died).
    let before_kill: Vec<i32> = present.iter().copied().filter(|&i| i < 100_000).collect();
    assert_eq!(
        before_kill,
        (1..=before_kill.len() as i32).collect::<Vec<_>>()
    );
    let after = db.replication().await.unwrap();
    assert!(
        !after.streaming && after.lag_bytes.is_none(),
        "no standby any more: {after:?}"
    );
    eprintln!(
        "failover ({}): loss detected {:.2}s after the kill ({} checks), promotion took {:.3}s, \
         {} of {acknowledged} acknowledged rows present",
        if synchronous {
            "synchronous"
        } else {
            "asynchronous"
        },
        detected.as_secs_f64(),
        loss.failed_checks,
        promotion.took.as_secs_f64(),
        before_kill.len().min(acknowledged)
    );
    (acknowledged, before_kill.len().min(acknowledged))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn failover_after_primary_loss_with_synchronous_replication_loses_nothing() {
    let (acknowledged, present) = failover_after_primary_loss(true).await;
    assert_eq!(
        present, acknowledged,
        "RPO 0: every acknowledged commit survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn failover_after_primary_loss_with_asynchronous_replication_counts_what_is_missing() {
    let (acknowledged, present) = failover_after_primary_loss(false).await;
    assert!(present <= acknowledged);
    eprintln!(
        "asynchronous replication: {} acknowledged rows missing",
        acknowledged - present
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_standby_behind_reports_lag_and_a_small_rpo_budget_blocks_the_switchover() {
    let pair = Pair::start(false).await;
    let seen: Arc<Mutex<Vec<(String, ReplicationStatus)>>> = Arc::default();
    let db = {
        let seen = seen.clone();
        let primary = PgNode::new("db-a", &Pair::dsn(pair.primary_port))
            .unwrap()
            .with_data_dir(pair.primary_dir());
        PostgresFailover::builder(
            primary,
            PgNode::new("db-b", &Pair::dsn(pair.standby_port))
                .unwrap()
                .with_application_name(STANDBY_APP),
        )
        .with_tools(pair.tools.clone())
        .with_target_file(pair.target_file())
        .with_check_timeout(Duration::from_secs(2))
        .with_promote_timeout(Duration::from_secs(30))
        .with_lag_observer(move |standby, status| {
            seen.lock()
                .unwrap()
                .push((standby.to_owned(), status.clone()));
        })
        .build()
        .unwrap()
    };
    let primary = connect(pair.primary_port).await;
    let standby = connect(pair.standby_port).await;
    insert_one_by_one(&primary, 1..=10).await;
    // Caught up: no lag.
    let started = Instant::now();
    let caught_up = loop {
        let s = db.replication().await.unwrap();
        if s.lag_bytes == Some(0) || started.elapsed() > Duration::from_secs(30) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(caught_up.lag_bytes, Some(0), "{caught_up:?}");
    assert_eq!(caught_up.lag, Some(Duration::ZERO));
    assert!(
        caught_up.streaming && !caught_up.synchronous,
        "{caught_up:?}"
    );

    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    wait_for(
        &standby,
        "SELECT pg_get_wal_replay_pause_state() = 'paused'",
    )
    .await;
    primary
        .batch_execute(
            "INSERT INTO t (id, note) SELECT g, repeat('x', 100) FROM generate_series(11, 5000) g",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let behind = db.replication().await.unwrap();
    let lag_bytes = behind.lag_bytes.expect("the primary answers: lag in bytes");
    assert!(lag_bytes > 100_000, "{behind:?}");
    assert!(behind.lag.is_some_and(|l| l > Duration::ZERO), "{behind:?}");
    assert!(
        behind.streaming,
        "receiving still streams while replay is paused"
    );
    // The reading was exported.
    assert_eq!(db.last_replication(), Some(behind.clone()));
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&("db-b".to_owned(), behind.clone()))
    );

    let refused = db
        .planned_switchover(RpoBudget::bytes(64 * 1024))
        .await
        .unwrap_err();
    match &refused {
        SwitchoverError::OverBudget {
            standby,
            lag_bytes: Some(b),
            budget,
            ..
        } => {
            assert_eq!(standby, "db-b");
            assert!(*b >= lag_bytes, "{refused}");
            assert_eq!(budget.max_lag_bytes, Some(64 * 1024));
        }
        other => panic!("expected OverBudget, got {other}"),
    }
    assert!(refused.to_string().contains("65536 bytes"), "{refused}");
    eprintln!("{refused}");
    // Refused means untouched: the primary still takes writes, nothing is
    // fenced, the standby is still a standby.
    assert!(db.check_primary().await.unwrap().writable);
    assert!(db.fenced().await.is_empty());
    assert!(in_recovery(pair.standby_port).await);
    assert_eq!(
        atlas_core::Error::from(refused).kind(),
        ErrorKind::Precondition
    );

    // A budget the lag fits in: fenced (stopped cleanly), promoted, and
    // the standby replays what it had received first.
    let done = db
        .planned_switchover(RpoBudget::bytes(1 << 30))
        .await
        .unwrap();
    assert_eq!(done.before.lag_bytes.map(|b| b >= lag_bytes), Some(true));
    assert_eq!(done.fence.method, "stopped");
    assert_eq!(done.fence.reason, "planned switchover");
    assert_eq!(
        (done.promotion.node.as_str(), done.promotion.timeline),
        ("db-b", 2)
    );
    let new_primary = connect(pair.standby_port).await;
    assert_eq!(
        ids(&new_primary).await,
        (1..=5000).collect::<Vec<_>>(),
        "a planned switchover loses no committed row"
    );
    assert_eq!(
        ConnectionTarget::read_from(&pair.target_file())
            .await
            .unwrap()
            .node,
        "db-b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_stopped_old_primary_that_is_restarted_comes_back_read_only() {
    let mut pair = Pair::start(false).await;
    let db = pair.failover(true);
    insert_one_by_one(&connect(pair.primary_port).await, 1..=20).await;
    pair.kill_primary();
    let fence = db.fence_primary("primary crashed").await.unwrap();
    assert_eq!(fence.method, "stopped");
    db.promote_standby().await.unwrap();

    // Someone starts the old data directory again: the fence left
    // standby.signal there, so it comes back in recovery.
    let _old = pair.restart_old_primary().await;
    assert!(in_recovery(pair.primary_port).await);
    assert_eq!(
        try_write(pair.primary_port, 9001).await,
        Err(READ_ONLY.to_owned())
    );
    // Atlas neither points at it nor needs to fence it again.
    assert!(db.enforce_fences().await.unwrap().is_empty());
    let health = db.check_primary().await.unwrap();
    assert!(health.writable);
    assert_eq!(db.primary().await, "db-b");
    assert_eq!(
        ConnectionTarget::read_from(&pair.target_file())
            .await
            .unwrap()
            .port,
        pair.standby_port
    );
    assert_eq!(db.write_target().await.unwrap().node, "db-b");
    assert_eq!(
        try_write(pair.primary_port, 9002).await,
        Err(READ_ONLY.to_owned())
    );
    // Fencing again after the promotion has no standby to go to.
    let err = db.fence_primary("again").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn an_unreachable_old_primary_that_comes_back_is_made_read_only() {
    let mut pair = Pair::start(false).await;
    // Atlas does not manage the primary's data directory: it can only
    // fence by configuration, and the primary is gone.
    let db = pair.failover(false);
    insert_one_by_one(&connect(pair.primary_port).await, 1..=20).await;
    pair.kill_primary();
    let fence = db.fence_primary("primary crashed").await.unwrap();
    assert_eq!(
        (fence.node.as_str(), fence.method.as_str()),
        ("db-a", "unreachable")
    );
    db.promote_standby().await.unwrap();

    // The old primary is restarted as it was: writable on its own.
    let _old = pair.restart_old_primary().await;
    assert!(!in_recovery(pair.primary_port).await);
    let lingering = connect(pair.primary_port).await;
    lingering
        .execute("INSERT INTO t (id) VALUES (9000)", &[])
        .await
        .expect("before Atlas looks again, the returning server takes writes");
    // Atlas's next check of the primary finds it and fences it.
    let health = db.check_primary().await.unwrap();
    assert!(health.writable, "{health:?}");
    assert_eq!(
        try_write(pair.primary_port, 9001).await,
        Err(READ_ONLY.to_owned())
    );
    assert!(
        lingering
            .execute("INSERT INTO t (id) VALUES (9002)", &[])
            .await
            .is_err(),
        "sessions open on the returning server were ended"
    );
    assert!(
        db.enforce_fences().await.unwrap().is_empty(),
        "fenced already"
    );
    // It never becomes the target.
    assert_eq!(db.primary().await, "db-b");
    let target = ConnectionTarget::read_from(&pair.target_file())
        .await
        .unwrap();
    assert_eq!(
        (target.node.as_str(), target.port),
        ("db-b", pair.standby_port)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn a_returning_primary_restarted_without_its_signal_is_stopped_again() {
    let mut pair = Pair::start(false).await;
    let db = pair.failover(true);
    pair.kill_primary();
    db.fence_primary("primary crashed").await.unwrap();
    db.promote_standby().await.unwrap();
    // Someone removes the fence's signal file and starts it: writable.
    std::fs::remove_file(pair.primary_dir().join("standby.signal")).unwrap();
    let old = pair.restart_old_primary().await;
    assert!(!in_recovery(pair.primary_port).await);
    let applied = db.enforce_fences().await.unwrap();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(
        (applied[0].node.as_str(), applied[0].method.as_str()),
        ("db-a", "stopped")
    );
    assert!(connect_fails(pair.primary_port).await, "stopped again");
    assert!(pair.primary_dir().join("standby.signal").exists());
    old.detach();
}

async fn connect_fails(port: u16) -> bool {
    tokio_postgres::connect(&Pair::dsn(port), NoTls)
        .await
        .is_err()
}

/// The core contract's own checks, each on a fresh primary/standby pair
/// (fence and promote change a pair for good). The pairs live until the
/// suite ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn postgres_failover_passes_the_database_failover_suite() {
    let pairs: Arc<Mutex<Vec<Pair>>> = Arc::default();
    let keep = Arc::clone(&pairs);
    conformance::database_failover::all(move || {
        let keep = Arc::clone(&keep);
        async move {
            let pair = Pair::start(false).await;
            let db = pair.failover(true);
            keep.lock().unwrap().push(pair);
            db
        }
    })
    .await;
    assert_eq!(pairs.lock().unwrap().len(), 3, "one pair per check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn promotion_without_a_fence_is_refused() {
    let pair = Pair::start(false).await;
    for managed in [true, false] {
        let db = pair.failover(managed);
        let err = db.promote_standby().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Precondition, "{err}");
        assert!(err.to_string().contains("db-a must be fenced"), "{err}");
    }
    // Nothing changed: the standby is still in recovery, the primary
    // still takes writes.
    assert!(in_recovery(pair.standby_port).await);
    assert!(try_write(pair.primary_port, 1).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL; run: cargo xtask test"]
async fn failover_state_is_stored_on_the_promoted_primary() {
    let mut pair = Pair::start(false).await;
    let db = pair.failover(true);
    pair.kill_primary();
    let fence = db.fence_primary("primary crashed").await.unwrap();
    let promotion = db.promote_standby().await.unwrap();
    // The controller records its decisions in the database it just made
    // the primary; the failover store passes its conformance suite there.
    let store = PostgresStateStore::builder(Pair::dsn(pair.standby_port))
        .connect()
        .await
        .unwrap();
    conformance::failover_store::all(&store, "pgfail").await;
    conformance::state_store::all(&store, "pgfail-rollout").await;
    let service = ServiceName::new("checkout").unwrap();
    let mut state = FailoverState::new(
        RegionWeights::new([
            (RegionName::new("us-east").unwrap(), 0),
            (RegionName::new("eu-west").unwrap(), 100),
        ])
        .unwrap(),
    );
    state.fence = Some(fence.clone());
    state.promotion = Some(promotion.clone());
    let v = store
        .compare_and_swap_failover(&service, None, &state)
        .await
        .unwrap();
    let back = store.load_failover(&service).await.unwrap().unwrap();
    assert_eq!((back.version, &back.value), (v, &state));
    // A rollout state of the same service is a separate row.
    assert!(store.load(&service).await.unwrap().is_none());
    // A controller resuming from the stored fence may promote without
    // fencing again (here: the standby was promoted already).
    let resumed = PostgresFailover::builder(
        PgNode::new("db-a", &Pair::dsn(pair.primary_port))
            .unwrap()
            .with_data_dir(pair.primary_dir()),
        PgNode::new("db-b", &Pair::dsn(pair.standby_port)).unwrap(),
    )
    .with_tools(pair.tools.clone())
    .with_recorded_fence(back.value.fence.clone().unwrap())
    .build()
    .unwrap();
    let again = resumed.promote_standby().await.unwrap();
    assert_eq!((again.node.as_str(), again.timeline), ("db-b", 2));
}
