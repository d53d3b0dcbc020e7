//! The `dr_drill` example, run for real with a short check interval: the
//! primary region and its database die, traffic and the database fail
//! over, no acknowledged write is lost with synchronous replication, and
//! traffic fails back once the region recovers.
#![cfg(feature = "postgres")]

use std::process::Command;

mod support;
use support::example;

/// The seconds on the RTO line that starts with `label`.
fn seconds(output: &str, label: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in the output:\n{output}"));
    line.trim_start()[label.len()..]
        .trim()
        .trim_end_matches('s')
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no seconds on {line:?}"))
}

#[test]
#[ignore = "needs the PostgreSQL server programs; run: cargo xtask test"]
fn the_primary_region_fails_over_and_back_without_losing_an_acknowledged_write() {
    let output = Command::new(example("dr_drill"))
        .args(["--synchronous", "--interval", "2s", "--warmup", "4s"])
        .args([
            "--failback-after",
            "5s",
            "--rate",
            "100",
            "--write-rate",
            "20",
        ])
        .output()
        .expect("cannot run the dr_drill example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("drill passed"),
        "dr_drill failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Three failed checks two seconds apart: detected within seconds,
    // and the database right behind the traffic.
    let detected = seconds(&stdout, "trigger detected");
    let moved = seconds(&stdout, "traffic moved");
    let writable = seconds(&stdout, "database writable");
    assert!(detected <= 10.0, "{stdout}");
    assert!(moved >= detected && writable >= moved, "{stdout}");
    assert!(writable < 20.0, "{stdout}");
    assert!(
        stdout.contains("RPO: 0 of "),
        "synchronous replication loses nothing:\n{stdout}"
    );
    assert!(
        stdout.contains("standby region us-west activated"),
        "{stdout}"
    );
    assert!(stdout.contains("promoted on timeline 2"), "{stdout}");
    assert!(
        stdout.contains("failed before the kill 0,") && stdout.contains("after it 0"),
        "{stdout}"
    );
    // Before the controller moves traffic, the proxy already sends what
    // the dead region refuses to another region: (almost) nothing fails.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("requests:"))
        .expect("a requests line");
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let (sent, window) = (numbers[0], numbers[3]);
    assert!(
        window * 100 <= sent,
        "more than 1 % failed in the window: {line}"
    );
}
