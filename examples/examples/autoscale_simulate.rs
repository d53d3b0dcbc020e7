//! Reactive against predictive autoscaling, replayed on a request-rate
//! trace: Atlas's web-service policy (500 requests/s per replica, p95
//! 200 ms, 3–100 replicas, up 100 % per 15 s, down 10 % per minute) alone,
//! and with a forecast (MSTL with daily and weekly seasons and an AutoETS
//! trend; and a seasonal-naive forecast as a simpler baseline) scaling
//! ahead by the replicas' start-up time.
//!
//! Each replica completes at most 700 requests/s (an M/M/1 queue models
//! its p95) and is ready 2 minutes after it is asked for; the autoscaler
//! decides every 15 s. Reported per policy: replica-minutes, minutes over
//! target (requests/s per ready replica above 500, or p95 above 200 ms),
//! scaling events, and the ratios to reactive.
//!
//! Run:
//! - `cargo run --release --example autoscale_simulate -- diurnal --seed 7`
//!   (a generated diurnal week with random spikes, after three weeks of
//!   history);
//! - `cargo run --release --example autoscale_simulate -- file rates.txt --step 30m`
//!   (one number per line; `scripts/bench-autoscale.sh` runs both traces,
//!   the second from pmdarima's `load_taylor`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use atlas_core::autoscale::{Forecaster, HorizontalAutoscaler, SeasonalNaive};
use atlas_examples::autoscale_sim::{
    Autoscaler, DiurnalSettings, ServiceModel, SimReport, Trace, diurnal_weeks, predictive,
    simulate, simulated_policy,
};
use atlas_metrics::forecast::MstlForecaster;
use clap::{Parser, Subcommand, ValueEnum};

/// Replays a request-rate trace through reactive and predictive
/// autoscaling and compares them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Which trace.
    #[command(subcommand)]
    trace: TraceArg,
    /// How long a new replica takes to become ready.
    #[arg(long, global = true, default_value = "2m", value_parser = humantime::parse_duration)]
    startup: Duration,
    /// A factor on the forecast load (1.0 = none).
    #[arg(long, global = true, default_value_t = 1.0)]
    headroom: f64,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum TraceArg {
    /// A generated diurnal week with random spikes, after weeks of history.
    Diurnal {
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Weeks of history before the scored week.
        #[arg(long, default_value_t = 3)]
        history_weeks: usize,
        /// Random spikes per day, on average.
        #[arg(long, default_value_t = 2.0)]
        spikes_per_day: f64,
    },
    /// A series from a file: one number per line, any unit (scaled so its
    /// highest point is --peak requests/s).
    File {
        /// The file.
        path: PathBuf,
        /// The interval between points.
        #[arg(long, value_parser = humantime::parse_duration)]
        step: Duration,
        /// Weeks of the series used as history only (the rest is scored).
        #[arg(long, default_value_t = 2)]
        history_weeks: usize,
        /// The highest point, requests/s, after scaling.
        #[arg(long, default_value_t = 40_000.0)]
        peak: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (trace, name) = match &args.trace {
        TraceArg::Diurnal {
            seed,
            history_weeks,
            spikes_per_day,
        } => (
            diurnal_weeks(&DiurnalSettings {
                seed: *seed,
                history_weeks: *history_weeks,
                spikes_per_day: *spikes_per_day,
                ..DiurnalSettings::default()
            }),
            format!("diurnal week, seed {seed}"),
        ),
        TraceArg::File {
            path,
            step,
            history_weeks,
            peak,
        } => {
            let text = std::fs::read_to_string(path)?;
            let values = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()?;
            let per_week = (7 * 86_400) / step.as_secs().max(1) as usize;
            let history = per_week * history_weeks;
            if values.len() <= history + 1 {
                return Err(format!(
                    "{} points are not more than {history} of history",
                    values.len()
                )
                .into());
            }
            (
                Trace::scaled(*step, &values, *peak, history),
                path.display().to_string(),
            )
        }
    };
    let model = ServiceModel {
        startup: args.startup,
        ..ServiceModel::default()
    };
    let refit_every = (3600 / trace.step.as_secs().max(1) as usize).max(1);
    let per_day = (86_400 / trace.step.as_secs().max(1)) as usize;

    let timed = |label: &str, run: &dyn Fn() -> atlas_core::Result<SimReport>| {
        let started = Instant::now();
        let report = run();
        eprintln!("{label}: simulated in {:.1?}", started.elapsed());
        report
    };
    let reactive = timed("reactive", &|| {
        let hpa = HorizontalAutoscaler::new(simulated_policy())?;
        simulate(&trace, &model, Autoscaler::<SeasonalNaive>::Reactive(hpa))
    })?;
    let mstl = timed("predictive (MSTL)", &|| {
        let f = MstlForecaster::daily_weekly(trace.step)?;
        run_predictive(&trace, &model, f, args.headroom, refit_every)
    })?;
    let naive = timed("predictive (seasonal naive)", &|| {
        run_predictive(
            &trace,
            &model,
            SeasonalNaive {
                period: 7 * per_day,
            },
            args.headroom,
            refit_every,
        )
    })?;

    let rows = [
        ("reactive HPA (web-service policy)", &reactive),
        ("predictive, MSTL + AutoETS", &mstl),
        ("predictive, seasonal naive (a week back)", &naive),
    ];
    match args.output {
        Output::Json => {
            let json: Vec<_> = rows
                .iter()
                .map(|(label, r)| serde_json::json!({ "policy": label, "report": r }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "trace": name, "runs": json }))?
            );
        }
        Output::Text => {
            println!(
                "trace: {name}; {} scored minutes, start-up {}, headroom {}",
                reactive.minutes,
                humantime::format_duration(args.startup),
                args.headroom
            );
            println!(
                "| policy | replica-minutes | minutes over target | scaling events | peak replicas | replica-minutes vs reactive | minutes over vs reactive |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|");
            for (label, r) in rows {
                println!(
                    "| {label} | {:.0} | {:.1} | {} | {} | {:.3} | {} |",
                    r.replica_minutes,
                    r.minutes_over_target,
                    r.scaling_events,
                    r.peak_replicas,
                    r.replica_minutes / reactive.replica_minutes,
                    if reactive.minutes_over_target > 0.0 {
                        format!(
                            "{:.3}",
                            r.minutes_over_target / reactive.minutes_over_target
                        )
                    } else {
                        "–".to_string()
                    }
                );
            }
        }
    }
    Ok(())
}

fn run_predictive<F: Forecaster>(
    trace: &Trace,
    model: &ServiceModel,
    forecaster: F,
    headroom: f64,
    refit_every: usize,
) -> atlas_core::Result<SimReport> {
    simulate(
        trace,
        model,
        predictive(trace, model, forecaster, headroom, refit_every)?,
    )
}
