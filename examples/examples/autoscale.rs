//! Autoscaling live on one host: replicas follow the load, and no request
//! fails while they come and go.
//!
//! Atlas starts three replicas of a small HTTP app as local processes
//! behind its own proxy and drives traffic through the proxy that ramps
//! from 100 requests/s up to a few thousand and back. Every sync period
//! the Kubernetes HPA algorithm (`HorizontalAutoscaler`, with Atlas's
//! web-service policy: 500 requests/s per replica, 3 to 100 replicas, up
//! by at most 100 % per period, down by at most 10 % per period) reads each
//! replica's request rate from the proxy (`LocalSignals`) and decides the
//! replica count; `ProcessWorkloads` scales the live slot: new replicas
//! join the proxy only once ready, and leaving ones are drained from it
//! before they are stopped. A terminal chart shows load, replicas and p95
//! latency each second; the run ends once the replicas are back at 3, with
//! the count of failed requests, which must be zero (the exit status is 1
//! otherwise, or when the replicas did not go up and come back down).
//!
//! To fit in about two minutes the demo compresses time: the policy's
//! periods (15 s up, 60 s down) and the 15 s sync are divided by
//! `--time-scale` (default 6), and the scale-down stabilization window
//! (300 s in the policy, as in Kubernetes) is shortened to
//! `--scale-down-window` (default 10 s). The rates per period are the
//! policy's own. Only the request-rate metric drives the decisions: on a
//! shared machine, CPU and latency say more about the neighbours than
//! about the load (p95 is still shown).
//!
//! Ctrl-C stops the run, the replicas and the proxy, and removes the work
//! directory. Needs no service; the app is this same binary, started as
//! `autoscale demo-app …`.
//!
//! Run: `cargo run --example autoscale` (`-- --help` for the knobs;
//! `-- --short` for a 30-second run).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use atlas_core::autoscale::observe::observe_policy;
use atlas_core::autoscale::{HorizontalAutoscaler, HorizontalPolicy, ScaleInput};
use atlas_core::scaler::scale_service;
use atlas_core::{
    DesiredReplicas, Release, Scaler, ServiceName, Slot, TrafficRouter, TrafficSplit, Workloads,
};
use atlas_examples::interrupt::{self, Interrupts};
use atlas_examples::load::{Load, LoadConfig};
use atlas_examples::main_support::StatusResult;
use atlas_local::process::{ProcessWorkloads, Readiness};
use atlas_local::proxy::ProxyRouter;
use atlas_local::signals::LocalSignals;
use clap::Parser;

/// The HPA's sync period in Kubernetes, before `--time-scale`.
const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// Autoscaling under a load that ramps up and back down.
#[derive(Debug, Parser)]
#[command(name = "autoscale", about, long_about = None)]
struct Args {
    /// Load at rest, in requests per second.
    #[arg(long, default_value_t = 100)]
    base: u32,
    /// Peak load, in requests per second.
    #[arg(long, default_value_t = 4000)]
    peak: u32,
    /// Seconds the load takes to climb to its peak, and again to fall back.
    #[arg(long, default_value_t = 20)]
    ramp: u64,
    /// Seconds the load stays at its peak.
    #[arg(long, default_value_t = 15)]
    hold: u64,
    /// Divides the policy's rate periods and the sync period, so the run
    /// fits in minutes (1 = real Kubernetes timing).
    #[arg(long, default_value_t = 6.0)]
    time_scale: f64,
    /// The scale-down stabilization window, shortened for the demo (the
    /// policy's is 300 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    scale_down_window: Duration,
    /// Longest wait, after the load fell back, for the replicas to return
    /// to the minimum.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    settle_timeout: Duration,
    /// Concurrent load-generator connections.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// A short run (about 30 s): peak 2500 requests/s, 4 s ramps, 6 s
    /// hold, time scale 10, 3 s scale-down window.
    #[arg(long)]
    short: bool,
}

impl Args {
    fn effective(mut self) -> Self {
        if self.short {
            self.peak = 2500;
            self.ramp = 4;
            self.hold = 6;
            self.time_scale = 10.0;
            self.scale_down_window = Duration::from_secs(3);
            self.settle_timeout = Duration::from_secs(60);
        }
        self
    }

    /// The requested load `t` into the run.
    fn load_at(&self, t: Duration) -> u32 {
        let t = t.as_secs_f64();
        let (ramp, hold) = (self.ramp as f64, self.hold as f64);
        let share = if t < ramp {
            t / ramp
        } else if t < ramp + hold {
            1.0
        } else if t < 2.0 * ramp + hold {
            1.0 - (t - ramp - hold) / ramp
        } else {
            0.0
        };
        let span = f64::from(self.peak.saturating_sub(self.base));
        self.base + (span * share.max(0.0)).round() as u32
    }

    fn load_over(&self) -> Duration {
        Duration::from_secs(2 * self.ramp + self.hold)
    }
}

/// The policy the demo runs: the web-service policy on request rate only,
/// with time compressed by `scale` and the scale-down window set.
fn demo_policy(scale: f64, scale_down_window: Duration) -> HorizontalPolicy {
    let mut policy = LocalSignals::queries_for(
        HorizontalPolicy::web_service().with_metrics_named(&["requests_per_second"]),
    );
    let compress = |d: Duration| d.div_f64(scale);
    let b = &mut policy.behavior;
    b.scale_up.stabilization_window = compress(b.scale_up.stabilization_window);
    b.scale_down.stabilization_window = scale_down_window;
    for p in b
        .scale_up
        .policies
        .iter_mut()
        .chain(b.scale_down.policies.iter_mut())
    {
        p.period = compress(p.period);
    }
    policy
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("demo-app") {
        return atlas_examples::demo_app::main_from_args(args.into_iter().skip(1));
    }
    let args = Args::parse().effective();
    atlas_examples::main_support::init_tracing("error");
    atlas_examples::main_support::run_with_status("autoscale", run(args))
}

async fn run(args: Args) -> StatusResult {
    if !(args.time_scale >= 1.0 && args.time_scale <= 100.0) {
        return Err("--time-scale must be between 1 and 100".into());
    }
    if args.peak <= args.base {
        return Err("--peak must be above --base".into());
    }
    let interrupts = Interrupts::listen("autoscale")?;
    let work = interrupt::work_dir("atlas-autoscale")?;
    interrupts.remove_on_forced_exit(&work);
    let stack = Stack::start(&work).await?;
    let result = interrupts.or_stop(demo(&args, &stack)).await;
    let totals = stack
        .traffic
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let totals = match totals {
        Some(load) => Some(load.stop().await.0),
        None => None,
    };
    let replicas = stack.workloads.shutdown().await;
    stack.router.shutdown().await;
    let removed = std::fs::remove_dir_all(&work);
    let timeline = match result {
        Err(interrupted) => {
            println!("{}", interrupted.report(replicas, &work, &removed));
            return Ok(interrupted.signal.exit_code());
        }
        Ok(timeline) => timeline?,
    };
    let totals = totals.unwrap_or_default();
    Ok(summary(&timeline, &totals))
}

/// The local stack: the proxy, the replicas and the signals.
struct Stack {
    svc: ServiceName,
    router: Arc<ProxyRouter>,
    workloads: Arc<ProcessWorkloads>,
    signals: LocalSignals,
    traffic: Mutex<Option<Load>>,
}

impl Stack {
    async fn start(work: &Path) -> Result<Stack, Box<dyn std::error::Error>> {
        let svc = ServiceName::new("shop")?;
        let router = Arc::new(
            ProxyRouter::builder(svc.clone())
                .listen("127.0.0.1:0".parse()?)
                .grace_period(Duration::from_secs(10))
                .metrics_window(Duration::from_secs(30))
                .build()
                .await?,
        );
        let workloads = Arc::new(
            ProcessWorkloads::builder()
                .log_dir(work.join("logs"))
                .grace_period(Duration::from_secs(10))
                .readiness(Readiness::http_get("/ready"))
                .poll_interval(Duration::from_millis(50))
                .build()?,
        );
        let signals = LocalSignals::new(svc.clone(), workloads.clone(), router.clone())?;
        Ok(Stack {
            svc,
            router,
            workloads,
            signals,
            traffic: Mutex::new(None),
        })
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy)]
struct Second {
    at: Duration,
    asked: u32,
    served: f64,
    replicas: u32,
    p95: Option<Duration>,
}

/// What the autoscaler last did, for the chart.
#[derive(Debug, Clone, Default)]
struct LastDecision {
    desired: u32,
    reason: String,
}

async fn demo(args: &Args, stack: &Stack) -> Result<Vec<Second>, Box<dyn std::error::Error>> {
    let svc = &stack.svc;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let policy = demo_policy(args.time_scale, args.scale_down_window);
    let min = policy.min_replicas;
    let sync = SYNC_PERIOD.div_f64(args.time_scale);

    // v1 in blue with the policy's minimum, all traffic to it.
    let release = Release::new("v1", me).with_arg("demo-app");
    stack
        .workloads
        .deploy(svc, Slot::Blue, &release, min)
        .await?;
    let ready = wait_ready(stack, min).await?;
    stack.router.set_endpoints(svc, Slot::Blue, &ready).await?;
    stack
        .router
        .set_split(svc, &TrafficSplit::all_to(Slot::Blue))
        .await?;

    println!("Atlas autoscaling demo (Ctrl-C stops it and cleans up)");
    println!("  proxy   http://{}/", stack.router.local_addr());
    println!(
        "  policy  500 requests/s per replica, {min} to {} replicas; up 100 % per {}, down 10 % per {}, scale-down window {} (compressed {}x; see --help)",
        policy.max_replicas,
        humantime::format_duration(policy.behavior.scale_up.policies[0].period),
        humantime::format_duration(policy.behavior.scale_down.policies[0].period),
        humantime::format_duration(args.scale_down_window),
        args.time_scale
    );
    println!(
        "  load    {} -> {} -> {} requests/s ({} s up, {} s hold, {} s down), sync every {}",
        args.base,
        args.peak,
        args.base,
        args.ramp,
        args.hold,
        args.ramp,
        humantime::format_duration(sync)
    );
    println!();
    println!(
        "     t   asked  served  load chart (# = 250 req/s)            replicas chart        p95"
    );

    *stack.traffic.lock().unwrap_or_else(PoisonError::into_inner) = Some(Load::start(LoadConfig {
        workers: args.workers,
        ..LoadConfig::new(stack.router.local_addr(), args.base)
    }));

    let desired = DesiredReplicas::new();
    let last = Arc::new(Mutex::new(LastDecision {
        desired: min,
        reason: "start".into(),
    }));
    let t0 = Instant::now();
    let autoscaler = autoscale_loop(stack, &policy, sync, &desired, &last);
    let chart = chart_loop(args, stack, t0, min, &last);
    tokio::pin!(autoscaler);
    tokio::pin!(chart);
    tokio::select! {
        r = &mut autoscaler => {
            r?;
            Err("the autoscaler stopped".into())
        }
        timeline = &mut chart => Ok(timeline),
    }
}

/// Every sync period: measure, decide, scale.
async fn autoscale_loop(
    stack: &Stack,
    policy: &HorizontalPolicy,
    sync: Duration,
    desired: &DesiredReplicas,
    last: &Mutex<LastDecision>,
) -> Result<(), Box<dyn std::error::Error>> {
    let svc = &stack.svc;
    let mut hpa = HorizontalAutoscaler::new(policy.clone())?;
    let mut tick = tokio::time::interval(sync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let no_args = BTreeMap::new();
    loop {
        tick.tick().await;
        let pods = stack.signals.pods(Slot::Blue).await?;
        let current = stack
            .workloads
            .replica_count(svc, Slot::Blue)
            .await?
            .desired;
        let observations =
            observe_policy(&stack.signals, hpa.policy(), &pods, sync, &no_args).await;
        let input = ScaleInput {
            current_replicas: current,
            pods,
            observations,
        };
        let now = Instant::now();
        let decision = hpa.recommend(now, &input)?;
        *last.lock().unwrap_or_else(PoisonError::into_inner) = LastDecision {
            desired: decision.desired_replicas,
            reason: format!("{:?}", decision.reason),
        };
        if !decision.changes() {
            continue;
        }
        desired.set(svc, decision.desired_replicas);
        scale_service(
            stack.workloads.as_ref(),
            stack.router.as_ref(),
            desired,
            svc,
        )
        .await?;
        hpa.record_scale(now, current, decision.desired_replicas);
    }
}

/// Every second: set the load, draw one line; ends once the load is over
/// and the replicas are back at `min` (or the settle timeout passed).
async fn chart_loop(
    args: &Args,
    stack: &Stack,
    t0: Instant,
    min: u32,
    last: &Mutex<LastDecision>,
) -> Vec<Second> {
    let metrics = stack.router.metrics();
    let mut timeline = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = t0.elapsed();
        let asked = args.load_at(at);
        if let Some(load) = stack
            .traffic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            load.set_rate(asked);
        }
        let stats = metrics.window_stats(Slot::Blue, Duration::from_secs(2));
        let replicas = stack
            .workloads
            .status(&stack.svc, Slot::Blue)
            .await
            .map(|s| s.ready)
            .unwrap_or(0);
        let second = Second {
            at,
            asked,
            served: stats.request_rate(),
            replicas,
            p95: stats.latency_p95,
        };
        let decision = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
        println!("{}", chart_line(&second, &decision));
        timeline.push(second);
        let over = at >= args.load_over();
        if over && replicas == min && decision.desired == min {
            return timeline;
        }
        if at >= args.load_over() + args.settle_timeout {
            println!("  the replicas did not return to {min} within the settle timeout");
            return timeline;
        }
    }
}

fn chart_line(s: &Second, decision: &LastDecision) -> String {
    let load_bar = "#".repeat(((s.served / 250.0).round() as usize).min(36));
    let replica_bar = "|".repeat((s.replicas as usize).min(20));
    let p95 = s
        .p95
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into());
    format!(
        "  {:>4}s  {:>5}  {:>6.0}  {load_bar:<36}  {:>2} {replica_bar:<18}  {p95:>9}  (hpa: {} {})",
        s.at.as_secs(),
        s.asked,
        s.served,
        s.replicas,
        decision.desired,
        decision.reason
    )
}

/// Prints the summary; success when no request failed and the replicas
/// went up and came back down.
fn summary(timeline: &[Second], totals: &atlas_examples::load::LoadTotals) -> ExitCode {
    let start = timeline.first().map_or(0, |s| s.replicas);
    let peak = timeline.iter().map(|s| s.replicas).max().unwrap_or(0);
    let end = timeline.last().map_or(0, |s| s.replicas);
    let peak_load = timeline.iter().map(|s| s.served).fold(0.0, f64::max);
    let worst_p95 = timeline.iter().filter_map(|s| s.p95).max();
    println!();
    println!("summary");
    println!("  peak load served: {peak_load:.0} requests/s");
    println!("  replicas: start {start}, peak {peak}, end {end}");
    if let Some(p) = worst_p95 {
        println!("  worst p95 over 2 s: {:.1} ms", p.as_secs_f64() * 1000.0);
    }
    println!("  requests sent:   {}", totals.sent);
    println!("  served (2xx):    {}", totals.served);
    println!("  failed requests: {}", totals.failed);
    for f in &totals.failure_examples {
        println!("    e.g. {f}");
    }
    let followed = peak > start && end == start;
    if !followed {
        println!("  the replicas did not go up and come back down");
    }
    if totals.failed == 0 && totals.app_errors == 0 && followed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Waits until `n` replicas of blue are ready; their endpoints.
async fn wait_ready(
    stack: &Stack,
    n: u32,
) -> Result<Vec<atlas_core::Endpoint>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stack.workloads.status(&stack.svc, Slot::Blue).await?;
        if let Some(f) = s.failures.first() {
            return Err(format!("a replica failed: {f}").into());
        }
        if s.ready == n && s.endpoints.len() == n as usize {
            return Ok(s.endpoints);
        }
        if Instant::now() >= deadline {
            return Err(format!("{n} replicas were not ready within 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_ramps_up_holds_and_falls_back() {
        let args = Args::parse_from(["autoscale"]).effective();
        assert_eq!(args.load_at(Duration::ZERO), 100);
        assert_eq!(args.load_at(Duration::from_secs(10)), 2050);
        assert_eq!(args.load_at(Duration::from_secs(20)), 4000);
        assert_eq!(args.load_at(Duration::from_secs(35)), 4000);
        assert!(args.load_at(Duration::from_secs(45)) < 4000);
        assert_eq!(args.load_at(Duration::from_secs(200)), 100);
        let short = Args::parse_from(["autoscale", "--short"]).effective();
        assert_eq!(short.load_over(), Duration::from_secs(14));
    }

    #[test]
    fn the_demo_policy_compresses_time_but_keeps_the_rates() {
        let p = demo_policy(4.0, Duration::from_secs(10));
        p.validate().unwrap();
        let spec = HorizontalPolicy::web_service();
        assert_eq!((p.min_replicas, p.max_replicas), (3, 100));
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].query, "requests_per_second:{{pod}}");
        let up = p.behavior.scale_up.policies[0];
        assert_eq!(up.value, spec.behavior.scale_up.policies[0].value);
        assert_eq!(up.period, Duration::from_millis(3750));
        let down = p.behavior.scale_down.policies[0];
        assert_eq!(down.value, spec.behavior.scale_down.policies[0].value);
        assert_eq!(down.period, Duration::from_secs(15));
        assert_eq!(
            p.behavior.scale_down.stabilization_window,
            Duration::from_secs(10)
        );
    }
}
