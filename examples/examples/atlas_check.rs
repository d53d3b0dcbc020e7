//! `atlas check`: the deployment validation checklist from the command
//! line — a table for people, `--output json` for scripts, and exit status
//! 0 when nothing failed, 1 when an item failed, 2 for a bad command line
//! or one that gave no item its inputs (every item not applicable: nothing
//! was checked, which must not read as a pass).
//!
//! Every item needs its inputs; an item whose inputs are not given says
//! "not applicable" and why, instead of passing:
//!
//! | item | inputs |
//! |---|---|
//! | application health | `--health ADDR…` (`--health-path`, default `/health`) |
//! | migrations applied | `--postgres-url URL --migrations DIR` (feature `postgres`) |
//! | autoscaling configured | `--hpa FILE` (a HorizontalPodAutoscaler manifest) or `--spec FILE` (a rollout spec file with an `autoscaling` section) |
//! | traffic distribution | `--state-dir DIR` (the service's file state store) and `--prometheus URL` |
//! | tls certificates | `--tls ADDR…` (`--tls-server-name`, `--tls-min-days`, default 30) |
//! | prometheus targets up | `--prometheus URL` (`--job REGEX`, default every job) |
//! | atlas metrics present | `--prometheus URL` |
//! | last backup | `--prometheus URL --backup-rpo DURATION` |
//! | last test restore | `--prometheus URL --restore-max-age DURATION` |
//! | last failover drill | `--prometheus URL --drill-max-age DURATION` |
//! | benchmarks | `--criterion DIR` (`--baseline`, `--budget`) |
//!
//! Run:
//! `cargo run --example atlas_check -- --service checkout --health 127.0.0.1:8080 \
//!     --prometheus http://127.0.0.1:9090 --backup-rpo 24h --criterion target/criterion`
//!
//! The checklist itself is the library function
//! `atlas_gates::Checklist::run`; this program only builds its items from
//! the command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use atlas_core::{Endpoint, MetricProvider, ServiceName};
use atlas_gates::{
    BenchmarkGate, Bound, CheckOutcome, Checklist, FnCheck, GateCheck, GateContext, MetricCheck,
    ProbeCheck, TrafficCheck,
};
use atlas_metrics::{HttpProbe, PrometheusProvider, TlsCertProbe};
use clap::{Parser, ValueEnum};

/// Checks a deployment against the go-live checklist and exits 1 when an
/// item fails. Items whose inputs are not given are reported as not
/// applicable.
#[derive(Debug, Parser)]
#[command(name = "atlas_check", version)]
struct Args {
    /// The service being checked.
    #[arg(long)]
    service: String,
    /// The release being checked (named in the benchmark gate's report).
    #[arg(long, value_name = "VERSION", default_value = "current")]
    release: String,
    /// Endpoints whose health path must answer 2xx.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    health: Vec<SocketAddr>,
    /// The health path probed on each --health endpoint.
    #[arg(long, default_value = "/health")]
    health_path: String,
    /// TLS endpoints whose certificate must stay valid for --tls-min-days.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    tls: Vec<SocketAddr>,
    /// The name the TLS certificates must be valid for.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// The fewest days a certificate must still be valid.
    #[arg(long, default_value_t = 30)]
    tls_min_days: u32,
    /// Prometheus's base URL, for targets, Atlas's metrics, traffic, backup
    /// and drill ages.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// Which scrape jobs must be up (a PromQL regex).
    #[arg(long, default_value = ".+")]
    job: String,
    /// The service's file state store (atlas-local), for the split.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The largest difference between a slot's observed share and its
    /// weight, in percentage points.
    #[arg(long, default_value_t = 5.0)]
    traffic_tolerance: f64,
    /// A HorizontalPodAutoscaler manifest (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    hpa: Option<PathBuf>,
    /// A rollout spec file (YAML or TOML) whose `autoscaling` section is
    /// checked when `--hpa` is not given.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// The recovery-point objective: the oldest the last backup may be.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    backup_rpo: Option<Duration>,
    /// The oldest the last successful test restore may be.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    restore_max_age: Option<Duration>,
    /// The oldest the last successful failover drill may be.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drill_max_age: Option<Duration>,
    /// PostgreSQL URL, for the migration history.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// The migration files' directory.
    #[arg(long, value_name = "DIR")]
    migrations: Option<PathBuf>,
    /// Criterion's output directory (usually target/criterion).
    #[arg(long, value_name = "DIR")]
    criterion: Option<PathBuf>,
    /// The criterion baseline compared against.
    #[arg(long, default_value = "base")]
    baseline: String,
    /// The largest benchmark slowdown allowed, as a fraction.
    #[arg(long, default_value_t = 0.10)]
    budget: f64,
    /// How to print the report.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// An aligned table.
    Table,
    /// The report as JSON (format version 1).
    Json,
}

fn not_given(flags: &str) -> String {
    format!("{flags} not given")
}

/// The autoscaling item: the manifest is an HPA whose bounds make sense
/// and that scales on at least one metric.
fn check_hpa(path: &PathBuf) -> CheckOutcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return CheckOutcome::fail(format!("cannot read {}: {e}", path.display())),
    };
    let doc: serde_json::Value = match serde_yaml_ng::from_str(&text) {
        Ok(d) => d,
        Err(e) => return CheckOutcome::fail(format!("{} is not YAML: {e}", path.display())),
    };
    if doc["kind"] != "HorizontalPodAutoscaler" {
        return CheckOutcome::fail(format!(
            "{} is not a HorizontalPodAutoscaler",
            path.display()
        ));
    }
    let spec = &doc["spec"];
    let min = spec["minReplicas"].as_u64().unwrap_or(1);
    let Some(max) = spec["maxReplicas"].as_u64() else {
        return CheckOutcome::fail("spec.maxReplicas is missing");
    };
    let metrics = spec["metrics"].as_array().map_or(0, Vec::len)
        + usize::from(spec["targetCPUUtilizationPercentage"].is_u64());
    if min < 1 || min > max {
        return CheckOutcome::fail(format!(
            "minReplicas {min} and maxReplicas {max} are inconsistent"
        ));
    }
    if metrics == 0 {
        return CheckOutcome::fail("spec.metrics is empty: nothing to scale on");
    }
    CheckOutcome::pass(format!("{min}–{max} replicas on {metrics} metric(s)"))
}

/// The autoscaling item from a rollout spec file: it loads (every field
/// checked) and has an `autoscaling` section.
fn check_spec_autoscaling(path: &PathBuf) -> CheckOutcome {
    match atlas_core::spec::load(path) {
        Ok(rollout) => match rollout.autoscaling {
            Some(policy) => CheckOutcome::pass(format!(
                "{}–{} replicas on {} metric(s)",
                policy.min_replicas,
                policy.max_replicas,
                policy.metrics.len()
            )),
            None => CheckOutcome::fail(format!("{} has no autoscaling section", path.display())),
        },
        Err(e) => CheckOutcome::fail(format!("{}: {e}", path.display())),
    }
}

#[cfg(feature = "postgres")]
async fn migrations_item(url: &str, dir: &PathBuf) -> Result<atlas_gates::MigrationsCheck, String> {
    let set = atlas_migrate::MigrationSet::load(dir).map_err(|e| e.to_string())?;
    let expected: std::collections::BTreeMap<_, _> = set
        .migrations()
        .iter()
        .map(|m| (m.version, m.checksum().to_string()))
        .collect();
    let driver = atlas_storage::postgres::PostgresDriver::builder(url)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(atlas_gates::MigrationsCheck::new(
        Arc::new(driver),
        expected,
    ))
}

fn metric_age(
    name: &str,
    prom: &Option<Arc<dyn MetricProvider>>,
    max_age: Option<Duration>,
    flag: &str,
    metric: &str,
) -> Result<MetricCheck, String> {
    match (prom, max_age) {
        (Some(p), Some(max)) => Ok(MetricCheck::new(
            name,
            p.clone(),
            format!("time() - max({metric})"),
            Bound::AtMost(max.as_secs_f64()),
        )
        .unit("s")),
        (None, _) => Err(not_given("--prometheus")),
        (_, None) => Err(not_given(flag)),
    }
}

async fn checklist(args: &Args) -> Result<Checklist, String> {
    let service = ServiceName::new(&args.service).map_err(|e| e.to_string())?;
    let mut list = Checklist::new();
    let endpoints = |addrs: &[SocketAddr], prefix: &str| -> Vec<Endpoint> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Endpoint::new(format!("{prefix}-{i}"), *a))
            .collect()
    };

    let health = HttpProbe::builder()
        .path(args.health_path.clone())
        .build()
        .map_err(|e| e.to_string())?;
    list = if args.health.is_empty() {
        list.not_applicable("application health", not_given("--health"))
    } else {
        list.item(ProbeCheck::new(
            "application health",
            Arc::new(health),
            endpoints(&args.health, "health"),
        ))
    };

    list = match (&args.postgres_url, &args.migrations) {
        #[cfg(feature = "postgres")]
        (Some(url), Some(dir)) => match migrations_item(url, dir).await {
            Ok(item) => list.item(item),
            Err(e) => {
                let detail = format!("cannot check: {e}");
                list.item(FnCheck::new("migrations applied", move || {
                    let detail = detail.clone();
                    async move { CheckOutcome::fail(detail) }
                }))
            }
        },
        #[cfg(not(feature = "postgres"))]
        (Some(_), Some(_)) => list.not_applicable(
            "migrations applied",
            "this build has no PostgreSQL driver (build with --features postgres)",
        ),
        _ => list.not_applicable(
            "migrations applied",
            not_given("--postgres-url and --migrations"),
        ),
    };

    list = match &args.hpa {
        Some(path) => {
            let path = path.clone();
            list.item(FnCheck::new("autoscaling configured", move || {
                let outcome = check_hpa(&path);
                async move { outcome }
            }))
        }
        None => match &args.spec {
            Some(path) => {
                let path = path.clone();
                list.item(FnCheck::new("autoscaling configured", move || {
                    let outcome = check_spec_autoscaling(&path);
                    async move { outcome }
                }))
            }
            None => list.not_applicable("autoscaling configured", not_given("--hpa or --spec")),
        },
    };

    let prom: Option<Arc<dyn MetricProvider>> = match &args.prometheus {
        Some(url) => Some(Arc::new(
            PrometheusProvider::builder(url.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )),
        None => None,
    };

    list = match (&args.state_dir, &prom) {
        (Some(dir), Some(p)) => {
            let store = atlas_local::file_store::FileStateStore::new(dir.clone())
                .map_err(|e| e.to_string())?;
            let query = format!(
                "sum(rate(atlas_proxy_requests_total{{service=\"{service}\",slot=\"{{slot}}\"}}[5m]))"
            );
            list.item(
                TrafficCheck::new(Arc::new(store), service.clone(), p.clone(), query)
                    .tolerance(args.traffic_tolerance / 100.0),
            )
        }
        _ => list.not_applicable(
            "traffic distribution",
            not_given("--state-dir and --prometheus"),
        ),
    };

    list = if args.tls.is_empty() {
        list.not_applicable("tls certificates", not_given("--tls"))
    } else {
        let mut b = TlsCertProbe::builder().min_remaining_days(args.tls_min_days);
        if let Some(name) = &args.tls_server_name {
            b = b.server_name(name.clone());
        }
        let probe = b.build().map_err(|e| e.to_string())?;
        list.item(ProbeCheck::new(
            "tls certificates",
            Arc::new(probe),
            endpoints(&args.tls, "tls"),
        ))
    };

    list = match &prom {
        Some(p) => list
            .item(MetricCheck::new(
                "prometheus targets up",
                p.clone(),
                format!("min(up{{job=~\"{}\"}})", args.job),
                Bound::AtLeast(1.0),
            ))
            .item(MetricCheck::new(
                "atlas metrics present",
                p.clone(),
                "count({__name__=~\"atlas_.+\"})",
                Bound::AtLeast(1.0),
            )),
        None => list
            .not_applicable("prometheus targets up", not_given("--prometheus"))
            .not_applicable("atlas metrics present", not_given("--prometheus")),
    };

    for (name, max_age, flag, metric) in [
        (
            "last backup",
            args.backup_rpo,
            "--backup-rpo",
            "atlas_backup_last_success_timestamp_seconds",
        ),
        (
            "last test restore",
            args.restore_max_age,
            "--restore-max-age",
            "atlas_backup_last_restore_test_timestamp_seconds",
        ),
        (
            "last failover drill",
            args.drill_max_age,
            "--drill-max-age",
            "atlas_failover_last_drill_timestamp_seconds",
        ),
    ] {
        list = match metric_age(name, &prom, max_age, flag, metric) {
            Ok(item) => list.item(item),
            Err(reason) => list.not_applicable(name, reason),
        };
    }

    list = match &args.criterion {
        Some(dir) => list.item(GateCheck::new(
            BenchmarkGate::criterion(dir)
                .baseline(args.baseline.clone())
                .budget(args.budget),
            GateContext::new(service.clone(), args.release.clone()),
        )),
        None => list.not_applicable("benchmarks", not_given("--criterion")),
    };
    Ok(list)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("atlas_check: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(async {
        let list = checklist(&args).await?;
        Ok::<_, String>(list.run().await)
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("atlas_check: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match args.output {
        Output::Table => report.table(),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("atlas_check: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // A closed pipe (`| head`) is the reader's choice, not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    let status = exit_status(&report);
    if status == 2 {
        eprintln!(
            "atlas_check: nothing was checked: give at least one item its inputs (see --help)"
        );
    }
    ExitCode::from(status)
}

/// 0 when nothing failed and something was checked, 1 when an item
/// failed, 2 when every item was not applicable.
fn exit_status(report: &atlas_gates::ChecklistReport) -> u8 {
    let checked = report
        .items
        .iter()
        .any(|i| i.status != atlas_gates::CheckStatus::NotApplicable);
    if checked { report.exit_code() } else { 2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_checked_is_not_a_pass() {
        use atlas_gates::{CheckOutcome, Checklist, FnCheck};
        let none = Checklist::new()
            .not_applicable("a", "no input")
            .not_applicable("b", "no input")
            .run()
            .await;
        assert_eq!(exit_status(&none), 2);
        let one = Checklist::new()
            .not_applicable("a", "no input")
            .item(FnCheck::new("b", || async { CheckOutcome::pass("ok") }))
            .run()
            .await;
        assert_eq!(exit_status(&one), 0);
        let failed = Checklist::new()
            .item(FnCheck::new("c", || async { CheckOutcome::fail("down") }))
            .run()
            .await;
        assert_eq!(exit_status(&failed), 1);
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "atlas_check",
            "--service",
            "checkout",
            "--health",
            "127.0.0.1:8080,127.0.0.1:8081",
            "--backup-rpo",
            "24h",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(a.health.len(), 2);
        assert_eq!(a.backup_rpo, Some(Duration::from_secs(86_400)));
        assert_eq!(a.output, Output::Json);
        assert!(
            Args::try_parse_from(["atlas_check"]).is_err(),
            "--service is required"
        );
        assert!(
            Args::try_parse_from(["atlas_check", "--service", "x", "--backup-rpo", "soon"])
                .is_err()
        );
    }

    #[test]
    fn hpa_manifests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let good = write(
            "good.yaml",
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nspec:\n  minReplicas: 2\n  maxReplicas: 10\n  metrics:\n    - type: Resource\n      resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}\n",
        );
        assert_eq!(
            check_hpa(&good),
            CheckOutcome::pass("2–10 replicas on 1 metric(s)")
        );
        let inverted = write(
            "bad.yaml",
            "kind: HorizontalPodAutoscaler\nspec: {minReplicas: 5, maxReplicas: 2, metrics: [{}]}\n",
        );
        assert_eq!(check_hpa(&inverted).status, atlas_gates::CheckStatus::Fail);
        let other = write("deploy.yaml", "kind: Deployment\n");
        assert_eq!(check_hpa(&other).status, atlas_gates::CheckStatus::Fail);
    }

    #[test]
    fn spec_file_autoscaling_sections_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let head = "service: web\nrelease: { version: v1, artifact: ./web }\nstrategy: { blue_green: { replicas: 3 } }\n";
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("{head}{text}")).unwrap();
            p
        };
        let good = write(
            "good.yaml",
            "autoscaling:\n  min_replicas: 3\n  max_replicas: 100\n  metrics:\n    - { type: pods, name: requests_per_second, average_value: 500 }\n",
        );
        assert_eq!(
            check_spec_autoscaling(&good),
            CheckOutcome::pass("3–100 replicas on 1 metric(s)")
        );
        let none = write("none.yaml", "");
        assert_eq!(
            check_spec_autoscaling(&none).status,
            atlas_gates::CheckStatus::Fail
        );
        let inverted = write(
            "inverted.yaml",
            "autoscaling:\n  min_replicas: 5\n  max_replicas: 2\n  metrics:\n    - { type: resource, name: cpu, utilization: 60 }\n",
        );
        let outcome = check_spec_autoscaling(&inverted);
        assert_eq!(outcome.status, atlas_gates::CheckStatus::Fail);
        assert!(outcome.detail.contains("min_replicas"), "{outcome:?}");
    }
}
