//! How `atlas` shows things to people: the status table, one line per
//! rollout event, and the new lines of a log that is being followed.
//! Pure functions of the daemon's answers, so they are tested without one.

use std::fmt::Write as _;
use std::time::Duration;

use atlas_core::{EventKind, RolloutEvent, ServiceName};
use atlas_local::daemon::api::ServiceStatus;
use atlas_local::proxy::ServiceRoute;

/// Clears a terminal and moves the cursor home (`status --watch`).
pub(crate) const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// The route in one phrase: `hosts a.example, b.example, path prefix /api`.
pub(crate) fn route(route: &ServiceRoute) -> String {
    let mut text = format!("hosts {}", route.hosts.join(", "));
    if let Some(prefix) = &route.path_prefix {
        let _ = write!(text, ", path prefix {prefix}");
    }
    text
}

/// The services as a table: name, hosts, path prefix.
pub(crate) fn services_table(services: &[(ServiceName, ServiceRoute)]) -> String {
    if services.is_empty() {
        return "no services registered (atlas services add NAME --host HOST)\n".to_owned();
    }
    let width = services
        .iter()
        .map(|(name, _)| name.as_str().len())
        .max()
        .unwrap_or(0)
        .max("SERVICE".len());
    let mut out = format!("{:<width$}  {:<40}  PATH PREFIX\n", "SERVICE", "HOSTS");
    for (name, route) in services {
        let _ = writeln!(
            out,
            "{:<width$}  {:<40}  {}",
            name.as_str(),
            route.hosts.join(","),
            route.path_prefix.as_deref().unwrap_or("-")
        );
    }
    out
}

/// The `atlas status` table: per service its route, traffic, one row per
/// slot, the rollout line and any replica failures.
pub(crate) fn status_table(services: &[ServiceStatus]) -> String {
    if services.is_empty() {
        return "no services registered (atlas services add NAME --host HOST)\n".to_owned();
    }
    let mut out = String::new();
    for (i, s) in services.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}  ({})", s.service, route(&s.route));
        let _ = writeln!(
            out,
            "  traffic  {}   {:.1} req/s   p95 {}   errors {:.2} %",
            s.split
                .as_ref()
                .map_or_else(|| "no split yet".to_owned(), ToString::to_string),
            s.request_rate,
            s.p95_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms")),
            s.error_rate * 100.0,
        );
        let _ = writeln!(
            out,
            "  {:<6} {:<14} {:>7} {:>5} {:>6} {:>6} {:>9} {:>8} {:>8}",
            "SLOT",
            "VERSION",
            "DESIRED",
            "READY",
            "WEIGHT",
            "ROUTED",
            "IN FLIGHT",
            "RESTARTS",
            "FAILURES"
        );
        for slot in &s.slots {
            let _ = writeln!(
                out,
                "  {:<6} {:<14} {:>7} {:>5} {:>4} % {:>6} {:>9} {:>8} {:>8}",
                slot.status.slot.as_str(),
                slot.status.version.as_deref().unwrap_or("-"),
                slot.status.desired,
                slot.status.ready,
                slot.weight,
                slot.routed.len(),
                slot.in_flight,
                slot.restarts,
                slot.status.failures.len(),
            );
        }
        let _ = writeln!(
            out,
            "  rollout  {}",
            s.rollout.as_deref().unwrap_or("none yet")
        );
        for slot in &s.slots {
            for failure in &slot.status.failures {
                let _ = writeln!(out, "  failure  {}: {failure}", slot.status.slot);
            }
        }
    }
    out
}

/// One line for a rollout event, or `None` for events too fine to show
/// (each analysis measurement, each finished step).
pub(crate) fn event_line(event: &RolloutEvent, elapsed: Duration) -> Option<String> {
    let text = match &event.kind {
        EventKind::Started {
            from_version,
            to_version,
            steps,
            resumed,
        } => format!(
            "rollout {}: {} → {to_version}, {steps} steps{}",
            event.rollout,
            from_version.as_deref().unwrap_or("nothing"),
            if *resumed { " (resumed)" } else { "" }
        ),
        EventKind::StepStarted { index, total, step } => {
            format!("step {}/{total}: {step}", index + 1)
        }
        EventKind::WeightChanged { split } => format!("  traffic {split}"),
        EventKind::Probed {
            endpoint,
            healthy: true,
            detail,
        } => format!("  probe {}: healthy ({detail})", endpoint.replica),
        EventKind::Probed {
            endpoint,
            healthy: false,
            detail,
        } => format!("  probe {}: FAILED ({detail})", endpoint.replica),
        EventKind::AnalysisFinished {
            template,
            phase,
            message,
        } => format!("  analysis {template}: {phase} ({message})"),
        EventKind::Paused { reason } => format!(
            "paused: {reason} (atlas promote {0} | atlas resume {0})",
            event.service
        ),
        EventKind::Resumed => "resumed".to_owned(),
        EventKind::Aborted { reason } => format!("aborted: {reason}"),
        EventKind::Promoted { version } => format!("promoted {version}"),
        EventKind::RolledBack { reason } => format!("rolled back: {reason}"),
        EventKind::HookRan {
            hook,
            point,
            error: Some(error),
        } => format!("  hook {hook} ({point:?}) FAILED: {error}"),
        EventKind::HookRan { hook, point, .. } => format!("  hook {hook} ({point:?}) ran"),
        _ => return None,
    };
    Some(format!("[{:>6.1}s] {text}", elapsed.as_secs_f64()))
}

/// The lines of `latest` that `previous` did not end with: both are the
/// last lines of the same growing log, so the longest tail of `previous`
/// that starts `latest` is what was seen already. With no overlap at all
/// (more new lines than one window holds) every line of `latest` is new.
pub(crate) fn new_lines<'a>(previous: &[String], latest: &'a [String]) -> &'a [String] {
    let most = previous.len().min(latest.len());
    for k in (1..=most).rev() {
        if previous[previous.len() - k..] == latest[..k] {
            return &latest[k..];
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas_core::{Endpoint, Slot, SlotStatus, TrafficSplit};
    use atlas_local::daemon::api::SlotView;

    fn lines(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn only_the_lines_not_seen_before_are_new() {
        assert_eq!(
            new_lines(&lines("a b c"), &lines("a b c d e")),
            lines("d e")
        );
        assert!(new_lines(&lines("a b c"), &lines("a b c")).is_empty());
        // A full window that moved on: the overlap is its tail.
        assert_eq!(new_lines(&lines("b c d"), &lines("c d e")), lines("e"));
        // Repeated lines: the longest overlap wins, so one new `b` shows.
        assert_eq!(new_lines(&lines("a b b"), &lines("a b b b")), lines("b"));
        // Nothing in common: all of it is new.
        assert_eq!(new_lines(&lines("a b"), &lines("x y")), lines("x y"));
        assert_eq!(new_lines(&[], &lines("x")), lines("x"));
    }

    #[test]
    fn the_status_table_shows_every_slot_and_the_rollout() {
        let endpoint = Endpoint::new("web-blue-0", "127.0.0.1:20001".parse().unwrap());
        let status = ServiceStatus {
            service: ServiceName::new("web").unwrap(),
            route: ServiceRoute {
                hosts: vec!["web.example".into()],
                path_prefix: Some("/api".into()),
            },
            split: Some(TrafficSplit::all_to(Slot::Blue)),
            slots: vec![
                SlotView {
                    status: SlotStatus {
                        slot: Slot::Blue,
                        version: Some("v1".into()),
                        desired: 1,
                        updated: 1,
                        ready: 1,
                        endpoints: vec![endpoint.clone()],
                        failures: vec![],
                    },
                    weight: 100,
                    routed: vec![endpoint],
                    in_flight: 3,
                    restarts: 2,
                },
                SlotView {
                    status: SlotStatus {
                        failures: vec!["web-green-0 exited with status 3".into()],
                        ..SlotStatus::empty(Slot::Green)
                    },
                    weight: 0,
                    routed: vec![],
                    in_flight: 0,
                    restarts: 0,
                },
            ],
            request_rate: 12.5,
            p95_ms: Some(4.25),
            error_rate: 0.01,
            rollout: Some("nothing → v1 (promoted), step 3, canary 0 %".into()),
        };
        let table = status_table(&[status]);
        assert!(
            table.starts_with("web  (hosts web.example, path prefix /api)\n"),
            "{table}"
        );
        assert!(
            table.contains("12.5 req/s   p95 4.2 ms   errors 1.00 %"),
            "{table}"
        );
        let blue = table
            .lines()
            .find(|l| l.trim_start().starts_with("blue"))
            .unwrap();
        assert_eq!(
            blue.split_whitespace().collect::<Vec<_>>(),
            ["blue", "v1", "1", "1", "100", "%", "1", "3", "2", "0"]
        );
        let green = table
            .lines()
            .find(|l| l.trim_start().starts_with("green"))
            .unwrap();
        assert_eq!(
            green.split_whitespace().collect::<Vec<_>>(),
            ["green", "-", "0", "0", "0", "%", "0", "0", "0", "1"]
        );
        assert!(
            table.contains("rollout  nothing → v1 (promoted)"),
            "{table}"
        );
        assert!(
            table.contains("failure  green: web-green-0 exited with status 3"),
            "{table}"
        );
    }
}
