//! The `autoscale` example, run for real in its short mode: the replicas
//! must go up with the load and come back down, and no request may fail.

use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::example;

/// Building on a loaded machine, then a run of about 30 s.
const RUN: Duration = Duration::from_secs(300);

/// The numbers after `label` on the summary line that starts with it.
fn numbers_after(output: &str, label: &str) -> Vec<u64> {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in the output:\n{output}"));
    line[line.find(label).unwrap_or(0) + label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn replicas_follow_the_load_up_and_down_without_a_failed_request() {
    let binary = example("autoscale");
    let started = Instant::now();
    let output = Command::new(binary)
        .arg("--short")
        .output()
        .expect("cannot run the autoscale example");
    assert!(
        started.elapsed() < RUN,
        "the short run took {:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "autoscale --short failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let failed = numbers_after(&stdout, "failed requests:");
    assert_eq!(failed, [0], "failed requests:\n{stdout}");
    let sent = numbers_after(&stdout, "requests sent:");
    assert!(sent[0] > 5_000, "too little load was sent:\n{stdout}");
    let replicas = numbers_after(&stdout, "replicas:");
    let [start, peak, end] = replicas[..] else {
        panic!("replicas line without start, peak and end:\n{stdout}");
    };
    assert_eq!(start, 3, "the policy's minimum:\n{stdout}");
    assert!(peak > start, "the replicas never went up:\n{stdout}");
    assert_eq!(end, start, "the replicas did not come back down:\n{stdout}");
    // The chart shows one line per second with the replica count.
    let chart_lines = stdout.lines().filter(|l| l.contains("(hpa:")).count();
    assert!(
        chart_lines >= 14,
        "the timeline has {chart_lines} lines:\n{stdout}"
    );
}
