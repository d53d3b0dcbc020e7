//! Backup retention (restic's `forget` rules) and backup schedules.
//!
//! Retention: scripted timelines with hand-derived expectations for every
//! rule, then the same policies compared against the real `restic` binary
//! (`restic forget --dry-run --json` on a throwaway repository, `TZ=UTC`).
//! Schedules: the cron language and its errors, next runs across month,
//! year and leap-day boundaries, the default schedule and the supersede
//! rule; the `Scheduler` on tokio's paused clock.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_backup::retention::{
    GroupBy, KeepCount, KeepReason, KeepWithin, Period, RetentionPolicy, RetentionPolicyBuilder,
    SnapshotInfo, TagSet,
};
use atlas_backup::schedule::{
    BackupSchedule, CronExpr, MissedRunPolicy, ScheduleKind, ScheduledRun, Scheduler, TokioClock,
    WallClock, job_fn,
};
use atlas_core::ErrorKind;
use jiff::Timestamp;

// ---------------------------------------------------------------- helpers

/// `"2026-01-01 10:00"` or `"2026-01-01 10:00:30"`, UTC.
fn ts(text: &str) -> Timestamp {
    let full = if text.len() == 16 {
        format!("{text}:00")
    } else {
        text.to_string()
    };
    format!("{}Z", full.replace(' ', "T"))
        .parse()
        .unwrap_or_else(|e| panic!("bad test time {text}: {e}"))
}

fn snap(id: &str, time: &str) -> SnapshotInfo {
    SnapshotInfo::new(id, ts(time))
        .with_host("h")
        .with_paths(["/d"])
}

/// Ids a policy keeps, sorted.
fn kept(policy: &RetentionPolicy, snaps: &[SnapshotInfo], now: Timestamp) -> Vec<String> {
    let plan = policy.apply(snaps, now).expect("apply");
    let mut ids: Vec<String> = plan.kept_ids().map(str::to_string).collect();
    ids.sort();
    // Every snapshot is either kept or removed, exactly once.
    let mut all: Vec<String> = plan
        .kept_ids()
        .chain(plan.removed_ids())
        .map(str::to_string)
        .collect();
    all.sort();
    let mut input: Vec<String> = snaps.iter().map(|s| s.id.clone()).collect();
    input.sort();
    assert_eq!(all, input, "keep + remove must partition the input");
    ids
}

fn ids(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn within(s: &str) -> KeepWithin {
    s.parse().expect("duration")
}

fn tags(list: &[&str]) -> TagSet {
    TagSet::new(list.iter().copied()).expect("tags")
}

/// One group crossing an ISO-week/year boundary, a same-hour pair, a month
/// end and tags. 2026-01-01 is a Thursday: ISO week 2026-W01 runs from
/// Monday 2025-12-29 to Sunday 2026-01-04.
fn timeline() -> Vec<SnapshotInfo> {
    vec![
        snap("s01", "2025-12-27 10:00"), // Sat, 2025-W52
        snap("s02", "2025-12-28 23:30").with_tags(["important"]), // Sun, 2025-W52
        snap("s03", "2025-12-29 00:10"), // Mon, 2026-W01
        snap("s04", "2025-12-31 12:00"), // Wed, 2026-W01
        snap("s05", "2026-01-01 00:00").with_tags(["a", "b"]), // Thu, same hour as s06
        snap("s06", "2026-01-01 00:45"),
        snap("s07", "2026-01-01 01:05"),
        snap("s08", "2026-01-05 09:00").with_tags(["a"]), // Mon, 2026-W02
        snap("s09", "2026-01-31 23:59"),                  // Sat, 2026-W05
        snap("s10", "2026-02-01 00:00"),                  // Sun, 2026-W05
    ]
}

fn now_after() -> Timestamp {
    ts("2026-02-02 00:00")
}

// ------------------------------------------------------ retention: rules

#[test]
fn every_rule_on_a_scripted_timeline() {
    let b = RetentionPolicy::builder;
    let cases: Vec<(&str, RetentionPolicyBuilder, Vec<&str>)> = vec![
        ("keep_last 3", b().keep_last(3), vec!["s10", "s09", "s08"]),
        // s05 and s06 share an hour: the newer, s06, is the hourly one.
        (
            "keep_hourly 5",
            b().keep_hourly(5),
            vec!["s10", "s09", "s08", "s07", "s06"],
        ),
        (
            "keep_daily 4",
            b().keep_daily(4),
            vec!["s10", "s09", "s08", "s07"],
        ),
        // s10 and s09 are both 2026-W05; s07 is 2026-W01 although in 2026.
        (
            "keep_weekly 3",
            b().keep_weekly(3),
            vec!["s10", "s08", "s07"],
        ),
        // Count left at the oldest (s01, same week as s02): kept as oldest.
        (
            "keep_weekly 10",
            b().keep_weekly(10),
            vec!["s10", "s08", "s07", "s02", "s01"],
        ),
        (
            "keep_weekly 10, restic <= 0.15",
            b().keep_weekly(10).keep_oldest(false),
            vec!["s10", "s08", "s07", "s02"],
        ),
        ("keep_monthly 2", b().keep_monthly(2), vec!["s10", "s09"]),
        (
            "keep_monthly 3",
            b().keep_monthly(3),
            vec!["s10", "s09", "s04"],
        ),
        (
            "keep_yearly unlimited",
            b().keep_yearly(KeepCount::Unlimited),
            vec!["s10", "s04", "s01"],
        ),
        (
            "keep_yearly unlimited, restic <= 0.15",
            b().keep_yearly(KeepCount::Unlimited).keep_oldest(false),
            vec!["s10", "s04"],
        ),
        (
            "keep_last unlimited",
            b().keep_last(KeepCount::Unlimited),
            vec![
                "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10",
            ],
        ),
        // Cutoff 2026-01-01 00:00 exactly: s05 sits on it and goes.
        (
            "keep_within 1m",
            b().keep_within(within("1m")),
            vec!["s10", "s09", "s08", "s07", "s06"],
        ),
        (
            "keep_within 1d",
            b().keep_within(within("1d")),
            vec!["s10", "s09"],
        ),
        // 2026-01-30 00:00 minus 1 h = 01-29 23:00.
        (
            "keep_within 2d1h",
            b().keep_within(within("2d1h")),
            vec!["s10", "s09"],
        ),
        (
            "keep_within_daily 3d",
            b().keep_within_daily(within("3d")),
            vec!["s10", "s09"],
        ),
        (
            "keep_within_weekly 1m",
            b().keep_within_weekly(within("1m")),
            vec!["s10", "s08", "s07"],
        ),
        (
            "keep_within_hourly 1y",
            b().keep_within_hourly(within("1y")),
            vec![
                "s01", "s02", "s03", "s04", "s06", "s07", "s08", "s09", "s10",
            ],
        ),
        (
            "keep_within_monthly 2m",
            b().keep_within_monthly(within("2m")),
            vec!["s10", "s09", "s04", "s01"],
        ),
        (
            "keep_within_monthly 2m, restic <= 0.15",
            b().keep_within_monthly(within("2m")).keep_oldest(false),
            vec!["s10", "s09", "s04"],
        ),
        (
            "keep_within_yearly 10y",
            b().keep_within_yearly(within("10y")),
            vec!["s10", "s04", "s01"],
        ),
        (
            "keep_tags important",
            b().keep_tags(tags(&["important"])),
            vec!["s02"],
        ),
        (
            "keep_tags a,b (all of)",
            b().keep_tags(tags(&["a", "b"])),
            vec!["s05"],
        ),
        (
            "keep_tags a",
            b().keep_tags(tags(&["a"])),
            vec!["s05", "s08"],
        ),
        (
            "keep_tags a or important",
            b().keep_tags(tags(&["a"])).keep_tags(tags(&["important"])),
            vec!["s02", "s05", "s08"],
        ),
        (
            "keep_tags untagged",
            b().keep_tags(TagSet::untagged()),
            vec!["s01", "s03", "s04", "s06", "s07", "s09", "s10"],
        ),
        (
            "combination: last 1, daily 2, monthly 2, tag important",
            b().keep_last(1)
                .keep_daily(2)
                .keep_monthly(2)
                .keep_tags(tags(&["important"])),
            vec!["s10", "s09", "s02"],
        ),
        (
            "combination: hourly 2, weekly 2, yearly 1, within 1d",
            b().keep_hourly(2)
                .keep_weekly(2)
                .keep_yearly(1)
                .keep_within(within("1d")),
            vec!["s10", "s09", "s08"],
        ),
    ];
    let snaps = timeline();
    for (name, builder, want) in cases {
        let policy = builder.build().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kept(&policy, &snaps, now_after()), ids(&want), "{name}");
    }
}

#[test]
fn reasons_and_counters_match_restic_wording() {
    let policy = RetentionPolicy::builder()
        .keep_last(1)
        .keep_daily(2)
        .keep_monthly(2)
        .keep_weekly(10)
        .keep_within_daily(within("3d"))
        .keep_tags(tags(&["important"]))
        .build()
        .unwrap();
    let plan = policy.apply(&timeline(), now_after()).unwrap();
    let words = |id: &str| -> Vec<String> {
        plan.reasons(id)
            .unwrap_or_else(|| panic!("{id} not kept"))
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        words("s10"),
        [
            "last snapshot",
            "daily snapshot",
            "weekly snapshot",
            "monthly snapshot",
            "daily within 3d"
        ]
    );
    assert_eq!(
        words("s09"),
        ["daily snapshot", "monthly snapshot", "daily within 3d"]
    );
    assert_eq!(words("s02"), ["has tags [important]", "weekly snapshot"]);
    assert_eq!(words("s01"), ["oldest weekly snapshot"]);
    assert!(plan.reasons("s03").is_none(), "s03 is removed");
    assert_eq!(
        plan.reasons("s01").unwrap(),
        [KeepReason::Bucket {
            period: Period::Week,
            oldest: true
        }]
    );

    let group = &plan.groups[0];
    assert_eq!(group.key.host.as_deref(), Some("h"));
    let first = &group.keep[0];
    assert_eq!(first.snapshot.id, "s10", "kept list is newest first");
    assert_eq!(first.counters.last, KeepCount::Count(0));
    assert_eq!(first.counters.daily, KeepCount::Count(1));
    assert_eq!(first.counters.monthly, KeepCount::Count(1));
    assert_eq!(first.counters.weekly, KeepCount::Count(9));
    assert_eq!(first.counters.hourly, KeepCount::Count(0));
    let removed: Vec<&str> = group.remove.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        removed,
        ["s06", "s05", "s04", "s03"],
        "removed newest first"
    );
}

#[test]
fn keep_within_uses_go_month_normalisation_and_strict_cutoff() {
    // 2026-03-31 minus one month is "2026-02-31", which Go (and restic)
    // normalise to 2026-03-03, not clamp to 02-28.
    let snaps = vec![
        snap("latest", "2026-03-31 12:00"),
        snap("after", "2026-03-03 12:01"),
        snap("on_cutoff", "2026-03-03 12:00"),
        snap("clamped_would_keep", "2026-03-01 00:00"),
    ];
    let policy = RetentionPolicy::builder()
        .keep_within(within("1m"))
        .build()
        .unwrap();
    assert_eq!(
        kept(&policy, &snaps, ts("2026-04-01 00:00")),
        ids(&["latest", "after"])
    );

    // A leap day minus a year: 2023-02-29 is 2023-03-01.
    let snaps = vec![
        snap("leap", "2024-02-29 06:00"),
        snap("just_after", "2023-03-01 06:30"),
        snap("on_cutoff", "2023-03-01 06:00"),
        snap("before", "2023-02-28 23:00"),
    ];
    let policy = RetentionPolicy::builder()
        .keep_within(within("1y"))
        .build()
        .unwrap();
    assert_eq!(
        kept(&policy, &snaps, ts("2024-03-01 00:00")),
        ids(&["leap", "just_after"])
    );

    // Days and hours combine: 2y5m7d3h before 2026-03-31 12:00 is
    // 2023-10-24 09:00 (2023-10-31 12:00 minus 7 d minus 3 h).
    let d = within("2y5m7d3h");
    assert_eq!(d.to_string(), "2y5m7d3h");
    assert_eq!(
        d.before(ts("2026-03-31 12:00")),
        Some(ts("2023-10-24 09:00"))
    );
    // Day overflow backwards: 2026-03-01 minus 1d is 02-28.
    assert_eq!(
        within("1d").before(ts("2026-03-01 00:30")),
        Some(ts("2026-02-28 00:30"))
    );
    // Far past the calendar: everything counts as within.
    assert_eq!(within("20000y").before(ts("2026-03-01 00:00")), None);
    let policy = RetentionPolicy::builder()
        .keep_within(within("20000y"))
        .build()
        .unwrap();
    assert_eq!(kept(&policy, &timeline(), now_after()).len(), 10);
}

#[test]
fn keep_within_is_relative_to_the_newest_snapshot_not_now() {
    let policy = RetentionPolicy::builder()
        .keep_within(within("1d"))
        .build()
        .unwrap();
    // A year later, the newest two still count as within a day.
    assert_eq!(
        kept(&policy, &timeline(), ts("2027-02-01 00:00")),
        ids(&["s10", "s09"])
    );
    // A snapshot in the future (clock skew) does not move the reference
    // point, and is itself kept as within.
    let mut snaps = timeline();
    snaps.push(snap("future", "2026-06-01 00:00"));
    assert_eq!(
        kept(&policy, &snaps, now_after()),
        ids(&["future", "s10", "s09"])
    );
    // Once it is in the past, it is the reference point.
    assert_eq!(
        kept(&policy, &snaps, ts("2026-07-01 00:00")),
        ids(&["future"])
    );
    // A snapshot exactly at `now` is not "before now": not the reference.
    assert_eq!(
        kept(&policy, &snaps, ts("2026-06-01 00:00")),
        ids(&["future", "s10", "s09"])
    );
    // All in the future: no reference point, so every snapshot is within.
    assert_eq!(kept(&policy, &snaps, ts("2020-01-01 00:00")).len(), 11);
}

#[test]
fn groups_by_host_and_paths_by_default_and_as_configured() {
    let snaps = vec![
        SnapshotInfo::new("a1", ts("2026-01-01 01:00"))
            .with_host("h1")
            .with_paths(["/a"]),
        SnapshotInfo::new("a2", ts("2026-01-01 02:00"))
            .with_host("h1")
            .with_paths(["/a"])
            .with_tags(["x"]),
        SnapshotInfo::new("ab1", ts("2026-01-01 03:00"))
            .with_host("h1")
            .with_paths(["/a", "/b"]),
        // Same paths in another order: same group as ab1.
        SnapshotInfo::new("ab2", ts("2026-01-01 04:00"))
            .with_host("h1")
            .with_paths(["/b", "/a"])
            .with_tags(["x"]),
        SnapshotInfo::new("h2a", ts("2026-01-01 00:30"))
            .with_host("h2")
            .with_paths(["/a"]),
    ];
    let last1 = |g: GroupBy| {
        RetentionPolicy::builder()
            .keep_last(1)
            .group_by(g)
            .build()
            .unwrap()
    };
    let now = ts("2026-01-02 00:00");
    assert_eq!(
        kept(&last1(GroupBy::default()), &snaps, now),
        ids(&["a2", "ab2", "h2a"])
    );
    assert_eq!(
        kept(&last1("host".parse().unwrap()), &snaps, now),
        ids(&["ab2", "h2a"])
    );
    assert_eq!(kept(&last1(GroupBy::NONE), &snaps, now), ids(&["ab2"]));
    assert_eq!(
        kept(&last1("tags".parse().unwrap()), &snaps, now),
        ids(&["ab2", "ab1"])
    );
    assert_eq!(
        kept(&last1("host,tags".parse().unwrap()), &snaps, now),
        ids(&["ab2", "ab1", "h2a"])
    );

    let plan = last1(GroupBy::default()).apply(&snaps, now).unwrap();
    let keys: Vec<String> = plan.groups.iter().map(|g| g.key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "host [h1], paths [/a]",
            "host [h1], paths [/a, /b]",
            "host [h2], paths [/a]"
        ]
    );
    assert_eq!(
        plan.groups[1].key.paths.as_deref(),
        Some(&["/a".to_string(), "/b".to_string()][..])
    );
    assert!(plan.groups[1].key.tags.is_none());

    let err = "host,colour".parse::<GroupBy>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn an_empty_policy_is_refused_unless_remove_all_is_allowed() {
    let err = RetentionPolicy::builder().build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("retention"), "{err}");
    assert!(err.to_string().contains("keeps no snapshot"), "{err}");
    // Counts of zero are no rule either.
    assert!(RetentionPolicy::builder().keep_last(0).build().is_err());

    let all = RetentionPolicy::builder()
        .allow_remove_all(true)
        .build()
        .unwrap();
    assert!(all.is_empty());
    let plan = all.apply(&timeline(), now_after()).unwrap();
    assert_eq!(plan.kept_ids().count(), 0);
    assert_eq!(plan.removed_ids().count(), 10);
}

#[test]
fn removing_a_whole_group_is_refused_unless_allowed() {
    let policy = RetentionPolicy::builder()
        .keep_tags(tags(&["nope"]))
        .build()
        .unwrap();
    let err = policy.apply(&timeline(), now_after()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Precondition);
    assert!(err.to_string().contains("all 10 snapshots"), "{err}");
    assert!(err.to_string().contains("host [h]"), "{err}");

    let allowed = policy.to_builder().allow_remove_all(true).build().unwrap();
    assert_eq!(
        kept(&allowed, &timeline(), now_after()),
        Vec::<String>::new()
    );
    // No snapshots at all: nothing to refuse.
    assert!(policy.apply(&[], now_after()).unwrap().groups.is_empty());
}

#[test]
fn ties_are_broken_by_id_so_results_are_deterministic() {
    let snaps = vec![
        snap("b", "2026-01-01 10:00"),
        snap("a", "2026-01-01 10:00"),
        snap("c", "2026-01-01 09:00"),
    ];
    let policy = RetentionPolicy::builder().keep_daily(1).build().unwrap();
    let mut reversed = snaps.clone();
    reversed.reverse();
    assert_eq!(kept(&policy, &snaps, now_after()), ids(&["a"]));
    assert_eq!(kept(&policy, &reversed, now_after()), ids(&["a"]));
}

// ------------------------------------------- retention: parsing and serde

#[test]
fn keep_within_parsing() {
    let d = within("2y5m7d3h");
    assert_eq!(
        (
            d.year_count(),
            d.month_count(),
            d.day_count(),
            d.hour_count()
        ),
        (2, 5, 7, 3)
    );
    assert_eq!(within("3h1d").to_string(), "1d3h");
    assert_eq!(within(" 7d ").to_string(), "7d");
    for (bad, says) in [
        ("", "must not be empty"),
        ("1w", "unknown unit `w`"),
        ("5", "has no unit"),
        ("1d1d", "appears twice"),
        ("0d", "is zero"),
        ("-1d", "expected a number"),
        ("d", "expected a number"),
        ("99999999999d", "too large"),
    ] {
        let err = bad.parse::<KeepWithin>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        let text = err.to_string();
        assert!(text.contains("keep_within"), "{bad}: {text}");
        assert!(text.contains(says), "{bad}: {text}");
    }
    assert!(KeepWithin::new(0, 0, 0, 0).is_err());
    assert_eq!(KeepWithin::days(3).unwrap(), within("3d"));
}

#[test]
fn keep_count_and_tag_set_parsing() {
    assert_eq!(
        "unlimited".parse::<KeepCount>().unwrap(),
        KeepCount::Unlimited
    );
    assert_eq!("-1".parse::<KeepCount>().unwrap(), KeepCount::Unlimited);
    assert_eq!("7".parse::<KeepCount>().unwrap(), KeepCount::Count(7));
    assert!("-2".parse::<KeepCount>().is_err());
    assert!("many".parse::<KeepCount>().is_err());
    assert_eq!(KeepCount::Unlimited.to_string(), "unlimited");

    assert!(TagSet::new([""]).is_err());
    assert!(TagSet::new([" a"]).is_err());
    assert!(TagSet::new(["a,b"]).is_err());
    let set = tags(&["b", "a"]);
    assert_eq!(set.tags().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(set.to_string(), "[a, b]");
    let none = BTreeSet::new();
    assert!(TagSet::untagged().matches(&none));
    assert!(!set.matches(&none));
}

#[test]
fn policy_from_json_and_yaml() {
    let json = r#"{
        "keep_last": 1,
        "keep_daily": 2,
        "keep_weekly": -1,
        "keep_monthly": "unlimited",
        "keep_within": "1m",
        "keep_within_daily": "3d",
        "keep_tags": ["important", ["a", "b"], ""],
        "group_by": "host",
        "keep_oldest": false
    }"#;
    let from_json: RetentionPolicy = serde_json::from_str(json).unwrap();
    let built = RetentionPolicy::builder()
        .keep_last(1)
        .keep_daily(2)
        .keep_weekly(KeepCount::Unlimited)
        .keep_monthly(KeepCount::Unlimited)
        .keep_within(within("1m"))
        .keep_within_daily(within("3d"))
        .keep_tags(tags(&["important"]))
        .keep_tags(tags(&["a", "b"]))
        .keep_tags(TagSet::untagged())
        .group_by("host".parse().unwrap())
        .keep_oldest(false)
        .build()
        .unwrap();
    assert_eq!(from_json, built);
    assert_eq!(from_json.group_by(), "host".parse().unwrap());

    // Round trip through its own serialization.
    let text = serde_json::to_string(&built).unwrap();
    assert!(text.contains(r#""keep_weekly":"unlimited""#), "{text}");
    let back: RetentionPolicy = serde_json::from_str(&text).unwrap();
    assert_eq!(back, built);

    let yaml = "keep_daily: 7\nkeep_within: 2y\ngroup_by: [host, paths]\n";
    let from_yaml: RetentionPolicy = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(
        from_yaml,
        RetentionPolicy::builder()
            .keep_daily(7)
            .keep_within(within("2y"))
            .build()
            .unwrap()
    );

    for (bad, says) in [
        ("{}", "keeps no snapshot"),
        (r#"{"keep_lats": 1}"#, "keep_lats"),
        (r#"{"keep_last": -2}"#, "negative"),
        (r#"{"keep_last": "lots"}"#, "lots"),
        (r#"{"keep_within": "1w"}"#, "unknown unit"),
        (r#"{"keep_daily": 1, "group_by": "colour"}"#, "colour"),
        (r#"{"keep_tags": [["a", ""]]}"#, "must be non-empty"),
    ] {
        let err = serde_json::from_str::<RetentionPolicy>(bad).unwrap_err();
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
}

// -------------------------------------------- retention vs. real restic

fn restic(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("restic")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "atlas-test-only")
        .env("TZ", "UTC")
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .output()
        .expect("run restic (is it on PATH? apt-get install restic)");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn restic_version() -> (u32, u32) {
    let out = Command::new("restic")
        .arg("version")
        .output()
        .expect("run restic (is it on PATH? apt-get install restic)");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .nth(1)
        .expect("restic version output");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
#[ignore = "needs restic; run: cargo xtask test"]
fn same_decisions_as_the_real_restic_binary() {
    let version = restic_version();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), b"atlas").unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("file"), b"atlas").unwrap();
    restic(&repo, &["init", "--quiet"]);

    // (time, host, path, tags). Irregular on purpose: same-hour pairs,
    // ISO week 1 starting in December, month ends, a leap day, years.
    // No two at the same instant: restic orders ties by load order, which
    // is unspecified (ours by id).
    let timeline: &[(&str, &str, &Path, &str)] = &[
        ("2023-06-15 08:00:00", "h1", &data, ""),
        ("2023-12-31 23:59:00", "h1", &data, "important"),
        ("2024-01-01 00:00:00", "h1", &data, ""),
        ("2024-02-28 12:00:00", "h1", &data, "a"),
        ("2024-02-29 06:00:00", "h1", &data, "a,b"),
        ("2024-03-01 06:00:00", "h1", &data, ""),
        ("2024-12-29 10:00:00", "h1", &data, ""),
        ("2024-12-30 10:00:00", "h1", &data, ""),
        ("2025-01-05 22:00:00", "h1", &data, "b"),
        ("2025-03-31 12:00:00", "h1", &data, ""),
        ("2025-05-01 00:00:00", "h1", &data, ""),
        ("2025-05-01 00:30:00", "h1", &data, ""),
        ("2025-05-01 01:00:00", "h1", &data, "important"),
        ("2025-06-01 00:00:00", "h1", &data, ""),
        ("2025-06-28 23:00:00", "h1", &data, ""),
        ("2025-06-29 23:00:00", "h1", &data, ""),
        ("2025-06-30 00:00:00", "h1", &data, "a"),
        ("2025-06-30 11:15:00", "h1", &data, ""),
        ("2025-06-30 11:45:00", "h1", &data, ""),
        ("2025-07-01 00:00:00", "h1", &data, ""),
        ("2024-05-05 05:05:00", "h2", &data, ""),
        ("2025-06-30 03:00:00", "h2", &data, "important"),
        ("2025-07-01 00:01:00", "h2", &data, ""),
        ("2025-01-01 00:00:00", "h1", &other, ""),
        ("2025-06-01 00:02:00", "h1", &other, "a"),
    ];
    for (time, host, path, tags) in timeline {
        let mut args = vec!["backup", "--quiet", "--time", time, "--host", host];
        for tag in tags.split(',').filter(|t| !t.is_empty()) {
            args.extend(["--tag", tag]);
        }
        let path = path.to_str().unwrap();
        args.push(path);
        restic(&repo, &args);
    }

    // The repository's snapshots, converted as the repository engine does.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&restic(&repo, &["snapshots", "--json"])).unwrap();
    let snaps: Vec<SnapshotInfo> = listed
        .iter()
        .map(|s| {
            let strings = |key: &str| -> Vec<String> {
                s[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            SnapshotInfo::new(
                s["short_id"].as_str().unwrap(),
                s["time"].as_str().unwrap().parse::<Timestamp>().unwrap(),
            )
            .with_host(s["hostname"].as_str().unwrap())
            .with_paths(strings("paths"))
            .with_tags(strings("tags"))
        })
        .collect();
    assert_eq!(snaps.len(), timeline.len());

    let keep_oldest = version >= (0, 16);
    let unlimited = version >= (0, 17);
    let mut cases: Vec<(Vec<&str>, RetentionPolicyBuilder)> = vec![
        (
            vec!["--keep-last", "3"],
            RetentionPolicy::builder().keep_last(3),
        ),
        (
            vec!["--keep-hourly", "4"],
            RetentionPolicy::builder().keep_hourly(4),
        ),
        (
            vec!["--keep-daily", "5"],
            RetentionPolicy::builder().keep_daily(5),
        ),
        (
            vec!["--keep-weekly", "4"],
            RetentionPolicy::builder().keep_weekly(4),
        ),
        (
            vec!["--keep-weekly", "30"],
            RetentionPolicy::builder().keep_weekly(30),
        ),
        (
            vec!["--keep-monthly", "6"],
            RetentionPolicy::builder().keep_monthly(6),
        ),
        (
            vec!["--keep-yearly", "2"],
            RetentionPolicy::builder().keep_yearly(2),
        ),
        (
            vec!["--keep-yearly", "9"],
            RetentionPolicy::builder().keep_yearly(9),
        ),
        (
            vec!["--keep-within", "1m"],
            RetentionPolicy::builder().keep_within(within("1m")),
        ),
        (
            vec!["--keep-within", "1y2m3d4h"],
            RetentionPolicy::builder().keep_within(within("1y2m3d4h")),
        ),
        (
            vec!["--keep-within-hourly", "2d"],
            RetentionPolicy::builder().keep_within_hourly(within("2d")),
        ),
        (
            vec!["--keep-within-daily", "10d", "--keep-within-weekly", "2m"],
            RetentionPolicy::builder()
                .keep_within_daily(within("10d"))
                .keep_within_weekly(within("2m")),
        ),
        (
            vec!["--keep-within-monthly", "1y", "--keep-within-yearly", "5y"],
            RetentionPolicy::builder()
                .keep_within_monthly(within("1y"))
                .keep_within_yearly(within("5y")),
        ),
        (
            vec!["--keep-tag", "important", "--keep-last", "1"],
            RetentionPolicy::builder()
                .keep_tags(tags(&["important"]))
                .keep_last(1),
        ),
        (
            vec![
                "--keep-tag",
                "a,b",
                "--keep-tag",
                "important",
                "--keep-daily",
                "1",
            ],
            RetentionPolicy::builder()
                .keep_tags(tags(&["a", "b"]))
                .keep_tags(tags(&["important"]))
                .keep_daily(1),
        ),
        (
            vec![
                "--keep-last",
                "2",
                "--keep-daily",
                "3",
                "--keep-weekly",
                "2",
                "--keep-monthly",
                "3",
                "--keep-yearly",
                "5",
            ],
            RetentionPolicy::builder()
                .keep_last(2)
                .keep_daily(3)
                .keep_weekly(2)
                .keep_monthly(3)
                .keep_yearly(5),
        ),
        (
            vec!["--group-by", "host", "--keep-last", "2"],
            RetentionPolicy::builder()
                .group_by("host".parse().unwrap())
                .keep_last(2),
        ),
        (
            vec!["--group-by", "", "--keep-daily", "3"],
            RetentionPolicy::builder()
                .group_by(GroupBy::NONE)
                .keep_daily(3),
        ),
        (
            vec!["--group-by", "host,tags", "--keep-monthly", "1"],
            RetentionPolicy::builder()
                .group_by("host,tags".parse().unwrap())
                .keep_monthly(1),
        ),
    ];
    if unlimited {
        cases.push((
            vec!["--keep-monthly", "unlimited", "--keep-last", "2"],
            RetentionPolicy::builder()
                .keep_monthly(KeepCount::Unlimited)
                .keep_last(2),
        ));
    }

    let now = Timestamp::now();
    for (flags, builder) in cases {
        let mut args = vec!["forget", "--dry-run", "--json"];
        args.extend(flags.iter().copied());
        let groups: Vec<serde_json::Value> = serde_json::from_str(&restic(&repo, &args)).unwrap();
        let mut theirs = BTreeSet::new();
        for g in &groups {
            for s in g["keep"].as_array().into_iter().flatten() {
                theirs.insert(s["short_id"].as_str().unwrap().to_string());
            }
        }
        let policy = builder.keep_oldest(keep_oldest).build().unwrap();
        let plan = policy.apply(&snaps, now).unwrap();
        let ours: BTreeSet<String> = plan.kept_ids().map(String::from).collect();
        // Shown as sorted "time host path" for a readable diff.
        let describe = |set: &BTreeSet<String>| {
            let mut v: Vec<String> = set
                .iter()
                .map(|id| {
                    let s = snaps.iter().find(|s| &s.id == id).expect("known id");
                    format!("{} {} {}", s.time, s.host, s.paths.join(","))
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            describe(&ours),
            describe(&theirs),
            "restic {version:?} {flags:?}: kept snapshots differ (times shown)"
        );
        assert_eq!(plan.groups.len(), groups.len(), "{flags:?}: group count");
        assert!(
            !ours.is_empty(),
            "{flags:?}: a case that keeps nothing proves little"
        );
    }
}

// ------------------------------------------------------- schedule: cron

#[test]
fn cron_errors_name_the_field() {
    for (expr, field, says) in [
        ("61 * * * *", "cron.minute", "61 is out of range 0-59"),
        ("* 24 * * *", "cron.hour", "24 is out of range 0-23"),
        ("* * 0 * *", "cron.day-of-month", "0 is out of range 1-31"),
        ("* * 32 * *", "cron.day-of-month", "32 is out of range 1-31"),
        ("* * * 13 *", "cron.month", "13 is out of range 1-12"),
        ("* * * FOO *", "cron.month", "neither a number nor a name"),
        ("* * * * 8", "cron.day-of-week", "8 is out of range 0-7"),
        (
            "* * * * MONDAY",
            "cron.day-of-week",
            "neither a number nor a name",
        ),
        ("*/0 * * * *", "cron.minute", "step must be at least 1"),
        (
            "*/x * * * *",
            "cron.minute",
            "step `x` is not a whole number",
        ),
        (
            "*/300 * * * *",
            "cron.minute",
            "step `300` is not a whole number",
        ),
        ("5/15 * * * *", "cron.minute", "a step needs `*` or a range"),
        ("10-5 * * * *", "cron.minute", "runs backwards"),
        ("1,,2 * * * *", "cron.minute", "empty list item"),
        ("? * * * *", "cron.minute", "not a number"),
        ("* * L * *", "cron.day-of-month", "not a number"),
        ("* * * *", "cron", "has 4 fields"),
        ("0 * * * * *", "cron", "has 6 fields"),
        ("", "cron", "has 0 fields"),
        ("@reboot", "cron", "unknown macro"),
        ("0 0 30 2 *", "cron", "never matches"),
        ("0 0 31 4,6,9,11 *", "cron", "never matches"),
    ] {
        let err = CronExpr::parse(expr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{expr}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("invalid {field}:")),
            "{expr}: {text}"
        );
        assert!(text.contains(says), "{expr}: {text}");
    }
    let err = CronExpr::parse("0 25 * * *").unwrap_err();
    assert!(err.to_string().contains("2nd field (hour)"), "{err}");
}

fn next(expr: &str, after: &str) -> String {
    let cron = CronExpr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    cron.next_after(ts(after))
        .unwrap_or_else(|| panic!("{expr}: no next"))
        .to_string()
}

#[test]
fn cron_next_run_across_boundaries() {
    let cases = [
        // Year end.
        ("0 0 1 * *", "2026-12-31 23:59", "2027-01-01T00:00:00Z"),
        ("@yearly", "2026-01-01 00:00", "2027-01-01T00:00:00Z"),
        // Leap day: next one is 2028.
        ("0 0 29 2 *", "2025-03-01 00:00", "2028-02-29T00:00:00Z"),
        ("0 0 29 2 *", "2024-02-28 12:00", "2024-02-29T00:00:00Z"),
        // The 31st skips 30-day months.
        ("59 23 31 * *", "2026-04-01 00:00", "2026-05-31T23:59:00Z"),
        // Strictly after: a matching minute is not returned again.
        ("*/15 * * * *", "2026-03-01 10:15", "2026-03-01T10:30:00Z"),
        (
            "*/15 * * * *",
            "2026-03-01 10:14:59",
            "2026-03-01T10:15:00Z",
        ),
        // Hour and day roll-over.
        ("*/15 * * * *", "2026-02-28 23:50", "2026-03-01T00:00:00Z"),
        ("0 */6 * * *", "2026-03-01 18:00", "2026-03-02T00:00:00Z"),
        // Sunday as 0 and 7 and SUN; 2026-03-01 is a Sunday.
        ("0 12 * * 7", "2026-03-01 12:00", "2026-03-08T12:00:00Z"),
        ("0 12 * * 0", "2026-03-01 11:00", "2026-03-01T12:00:00Z"),
        ("0 12 * * sun", "2026-03-01 13:00", "2026-03-08T12:00:00Z"),
        // Names and ranges.
        (
            "30 9 * * MON-FRI",
            "2026-03-06 10:00",
            "2026-03-09T09:30:00Z",
        ),
        (
            "0 0 1 jan-mar/2 *",
            "2026-01-02 00:00",
            "2026-03-01T00:00:00Z",
        ),
        ("0 0 * FEB *", "2026-03-01 00:00", "2027-02-01T00:00:00Z"),
        (
            "15,45 8-10/2 * * *",
            "2026-03-01 08:45",
            "2026-03-01T10:15:00Z",
        ),
        // Both day fields restricted: either matches. 2026-02-06 is a Friday.
        ("0 0 13 * FRI", "2026-02-01 00:00", "2026-02-06T00:00:00Z"),
        ("0 0 13 * FRI", "2026-02-06 00:00", "2026-02-13T00:00:00Z"),
        ("0 0 13 * FRI", "2026-02-13 00:00", "2026-02-20T00:00:00Z"),
        // Day-of-month starting with `*`: both must match (odd Fridays).
        ("0 0 */2 * FRI", "2026-02-01 00:00", "2026-02-13T00:00:00Z"),
        ("0 0 */2 * FRI", "2026-02-13 00:00", "2026-02-27T00:00:00Z"),
        // Only the day of month restricted: the 13th of any weekday.
        ("0 0 13 * *", "2026-02-14 00:00", "2026-03-13T00:00:00Z"),
        ("@hourly", "2026-03-01 10:00", "2026-03-01T11:00:00Z"),
        ("@weekly", "2026-03-02 00:00", "2026-03-08T00:00:00Z"),
        ("@monthly", "2026-03-02 00:00", "2026-04-01T00:00:00Z"),
        ("@daily", "2026-03-02 00:00", "2026-03-03T00:00:00Z"),
    ];
    for (expr, after, want) in cases {
        assert_eq!(next(expr, after), want, "{expr} after {after}");
    }
    let cron = CronExpr::parse(" 0 2 * * * ").unwrap();
    assert_eq!(cron.as_str(), "0 2 * * *");
    assert!(cron.matches(ts("2026-03-01 02:00:59")));
    assert!(!cron.matches(ts("2026-03-01 02:01")));
    // Past the end of the calendar there is no next run.
    assert_eq!(
        CronExpr::parse("0 0 1 1 *")
            .unwrap()
            .next_after(ts("9999-06-01 00:00")),
        None
    );
}

// --------------------------------------------------- schedule: schedules

fn runs_between(schedule: &BackupSchedule, from: &str, to: &str) -> Vec<ScheduledRun> {
    // Runs at or after `from` and before `to`.
    let start = ts(from)
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    schedule
        .upcoming(start)
        .take_while(|r| r.at < ts(to))
        .collect()
}

#[test]
fn default_schedule_over_one_day() {
    let schedule = BackupSchedule::default();
    let runs = runs_between(&schedule, "2026-03-01 00:00", "2026-03-02 00:00");
    assert_eq!(runs.len(), 96, "one run per quarter hour, never three");
    let count = |k| runs.iter().filter(|r| r.kind == k).count();
    assert_eq!(count(ScheduleKind::Full), 1);
    assert_eq!(count(ScheduleKind::Incremental), 4);
    assert_eq!(count(ScheduleKind::PointInTime), 91);
    let at = |t: &str| runs.iter().find(|r| r.at == ts(t)).unwrap().clone();
    assert_eq!(at("2026-03-01 02:00").kind, ScheduleKind::Full);
    assert_eq!(
        at("2026-03-01 02:00").superseded,
        [ScheduleKind::PointInTime]
    );
    assert_eq!(at("2026-03-01 00:00").kind, ScheduleKind::Incremental);
    assert_eq!(at("2026-03-01 06:00").kind, ScheduleKind::Incremental);
    assert_eq!(at("2026-03-01 06:15").kind, ScheduleKind::PointInTime);
    assert!(at("2026-03-01 06:15").superseded.is_empty());
    // In order, one minute each.
    assert!(runs.windows(2).all(|w| w[0].at < w[1].at));
}

#[test]
fn the_biggest_kind_due_supersedes_the_others() {
    let schedule =
        BackupSchedule::parse(Some("0 0 * * *"), Some("0 * * * *"), Some("*/30 * * * *")).unwrap();
    let run = schedule.next_run(ts("2026-03-01 23:59")).unwrap();
    assert_eq!(run.at, ts("2026-03-02 00:00"));
    assert_eq!(run.kind, ScheduleKind::Full);
    assert_eq!(
        run.superseded,
        [ScheduleKind::Incremental, ScheduleKind::PointInTime]
    );
    assert_eq!(
        schedule.due_at(ts("2026-03-02 01:00")),
        [ScheduleKind::Incremental, ScheduleKind::PointInTime]
    );
    assert_eq!(
        schedule.due_at(ts("2026-03-02 01:30")),
        [ScheduleKind::PointInTime]
    );
    assert!(schedule.due_at(ts("2026-03-02 01:31")).is_empty());

    // A kind that is off never runs.
    let no_pit = BackupSchedule::parse(Some("0 2 * * *"), Some("0 */6 * * *"), None).unwrap();
    let runs = runs_between(&no_pit, "2026-03-01 00:00", "2026-03-02 00:00");
    assert_eq!(runs.len(), 5);
    assert!(no_pit.cron(ScheduleKind::PointInTime).is_none());
}

#[test]
fn schedule_validation_and_serde() {
    let err = BackupSchedule::parse(None, None, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("every kind is off"), "{err}");
    let err = BackupSchedule::parse(Some("0 2 * * *"), Some("0 */6 * * *"), Some("61 * * * *"))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid schedule.point_in_time.cron.minute:"),
        "{err}"
    );

    let defaults: BackupSchedule = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, BackupSchedule::default());
    assert_eq!(
        defaults.cron(ScheduleKind::Full).unwrap().as_str(),
        "0 2 * * *"
    );
    assert_eq!(
        defaults.cron(ScheduleKind::Incremental).unwrap().as_str(),
        "0 */6 * * *"
    );
    assert_eq!(
        defaults.cron(ScheduleKind::PointInTime).unwrap().as_str(),
        "*/15 * * * *"
    );
    let off: BackupSchedule = serde_json::from_str(r#"{"point_in_time": null}"#).unwrap();
    assert!(off.cron(ScheduleKind::PointInTime).is_none());
    assert!(off.cron(ScheduleKind::Full).is_some());
    let yaml: BackupSchedule = serde_yaml_ng::from_str("full: '30 1 * * SUN'\n").unwrap();
    assert_eq!(
        yaml.cron(ScheduleKind::Full).unwrap().as_str(),
        "30 1 * * SUN"
    );
    let back: BackupSchedule = serde_json::from_str(&serde_json::to_string(&off).unwrap()).unwrap();
    assert_eq!(back, off);

    for (bad, says) in [
        (r#"{"full": "0 25 * * *"}"#, "hour"),
        (r#"{"weekly": "0 0 * * 0"}"#, "weekly"),
        (
            r#"{"full": null, "incremental": null, "point_in_time": null}"#,
            "every kind is off",
        ),
    ] {
        let err = serde_json::from_str::<BackupSchedule>(bad).unwrap_err();
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
}

// ------------------------------------------------ schedule: the scheduler

type Log = Arc<Mutex<Vec<(Timestamp, Timestamp, ScheduleKind)>>>;

/// How many jobs run at once, and the most ever seen.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// A job that records (started, scheduled, kind), takes `cost(kind)` of
/// virtual time, and counts how many jobs overlap.
fn recording_job(
    clock: TokioClock,
    log: Log,
    cost: fn(ScheduleKind) -> Duration,
    concurrency: Arc<Concurrency>,
) -> impl atlas_backup::schedule::BackupJob + 'static {
    job_fn(move |run: ScheduledRun| {
        let log = Arc::clone(&log);
        let concurrency = Arc::clone(&concurrency);
        async move {
            let now = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
            concurrency.max.fetch_max(now, Ordering::SeqCst);
            log.lock().unwrap().push((clock.now(), run.at, run.kind));
            tokio::time::sleep(cost(run.kind)).await;
            concurrency.now.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    })
}

fn quick(_: ScheduleKind) -> Duration {
    Duration::from_secs(30)
}

#[tokio::test(start_paused = true)]
async fn scheduler_runs_each_slot_at_its_virtual_time() {
    let clock = TokioClock::starting_at(ts("2026-03-01 00:00"));
    let log: Log = Arc::default();
    let concurrency = Arc::new(Concurrency::default());
    let scheduler = Scheduler::new(
        BackupSchedule::default(),
        recording_job(clock, Arc::clone(&log), quick, Arc::clone(&concurrency)),
    )
    .with_clock(clock);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run());

    tokio::time::sleep(Duration::from_secs(6 * 3600 + 60)).await;
    let status = handle.status();
    assert_eq!(
        status.next.as_ref().map(|n| n.at),
        Some(ts("2026-03-01 06:15"))
    );
    handle.cancel();
    let status = task.await.unwrap();

    let log = log.lock().unwrap().clone();
    assert_eq!(concurrency.max.load(Ordering::SeqCst), 1);
    // The slot at the start instant (00:00) is not run; 00:15 … 06:00 are.
    assert_eq!(log.len(), 24);
    for (started, scheduled, _) in &log {
        assert_eq!(started, scheduled, "each run starts exactly on its slot");
    }
    assert_eq!(log[0].1, ts("2026-03-01 00:15"));
    let kind_at = |t: &str| log.iter().find(|e| e.1 == ts(t)).map(|e| e.2);
    assert_eq!(kind_at("2026-03-01 02:00"), Some(ScheduleKind::Full));
    assert_eq!(kind_at("2026-03-01 06:00"), Some(ScheduleKind::Incremental));
    assert_eq!(kind_at("2026-03-01 05:45"), Some(ScheduleKind::PointInTime));

    let full = status.kind(ScheduleKind::Full);
    assert_eq!((full.runs, full.successes, full.failures), (1, 1, 0));
    assert_eq!(full.last_success, Some(ts("2026-03-01 02:00")));
    let pit = status.kind(ScheduleKind::PointInTime);
    assert_eq!((pit.runs, pit.skipped), (22, 0));
    assert_eq!(pit.superseded, 2, "02:00 and 06:00");
    assert_eq!(status.kind(ScheduleKind::Incremental).runs, 1);
    assert!(status.running.is_none() && status.next.is_none());

    // RPO inputs at 06:01.
    let now = clock.now();
    assert_eq!(now, ts("2026-03-01 06:01"));
    assert_eq!(
        status.since_last_success(ScheduleKind::Full, now),
        Some(Duration::from_secs(4 * 3600 + 60))
    );
    assert_eq!(
        status.since_last_success(ScheduleKind::PointInTime, now),
        Some(Duration::from_secs(16 * 60))
    );
    assert_eq!(
        status.recovery_point_age(now),
        Some(Duration::from_secs(60))
    );
}

fn slow_full(kind: ScheduleKind) -> Duration {
    match kind {
        ScheduleKind::Full => Duration::from_secs(50 * 60),
        _ => Duration::from_secs(60),
    }
}

/// Runs the overrun scenario; returns the log and the skipped
/// point-in-time slots, after checking no two jobs overlapped.
async fn overrun(policy: MissedRunPolicy) -> (Vec<(Timestamp, Timestamp, ScheduleKind)>, u64) {
    let clock = TokioClock::starting_at(ts("2026-03-01 00:50"));
    let log: Log = Arc::default();
    let concurrency = Arc::new(Concurrency::default());
    let schedule = BackupSchedule::parse(Some("0 1 * * *"), None, Some("*/15 * * * *")).unwrap();
    let scheduler = Scheduler::new(
        schedule,
        recording_job(clock, Arc::clone(&log), slow_full, Arc::clone(&concurrency)),
    )
    .with_clock(clock)
    .with_missed_run_policy(policy);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run());
    // Until 02:20: the full runs 01:00-01:50, missing 01:15, 01:30, 01:45.
    tokio::time::sleep(Duration::from_secs(90 * 60)).await;
    handle.cancel();
    let status = task.await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        concurrency.max.load(Ordering::SeqCst),
        1,
        "never two at once"
    );
    assert_eq!(status.kind(ScheduleKind::Full).failures, 0);
    (log, status.kind(ScheduleKind::PointInTime).skipped)
}

#[tokio::test(start_paused = true)]
async fn an_overrunning_run_skips_missed_slots() {
    let (log, skipped) = overrun(MissedRunPolicy::Skip).await;
    let got: Vec<(Timestamp, ScheduleKind)> = log.iter().map(|e| (e.0, e.2)).collect();
    assert_eq!(
        got,
        [
            (ts("2026-03-01 01:00"), ScheduleKind::Full),
            (ts("2026-03-01 02:00"), ScheduleKind::PointInTime),
            (ts("2026-03-01 02:15"), ScheduleKind::PointInTime),
        ]
    );
    assert_eq!(skipped, 3);
}

#[tokio::test(start_paused = true)]
async fn an_overrunning_run_is_followed_by_one_catch_up() {
    let (log, skipped) = overrun(MissedRunPolicy::CatchUpOnce).await;
    let got: Vec<(Timestamp, Timestamp, ScheduleKind)> = log.clone();
    assert_eq!(
        got,
        [
            (
                ts("2026-03-01 01:00"),
                ts("2026-03-01 01:00"),
                ScheduleKind::Full
            ),
            // One catch-up, at once, for the newest missed slot.
            (
                ts("2026-03-01 01:50"),
                ts("2026-03-01 01:45"),
                ScheduleKind::PointInTime
            ),
            (
                ts("2026-03-01 02:00"),
                ts("2026-03-01 02:00"),
                ScheduleKind::PointInTime
            ),
            (
                ts("2026-03-01 02:15"),
                ts("2026-03-01 02:15"),
                ScheduleKind::PointInTime
            ),
        ]
    );
    assert_eq!(skipped, 2);
    assert_eq!(MissedRunPolicy::default(), MissedRunPolicy::CatchUpOnce);
}

#[tokio::test(start_paused = true)]
async fn a_missed_full_is_caught_up_as_a_full() {
    // An incremental from 01:00 overruns past the 02:00 full.
    let clock = TokioClock::starting_at(ts("2026-03-01 00:59"));
    let log: Log = Arc::default();
    let concurrency = Arc::new(Concurrency::default());
    let schedule = BackupSchedule::parse(Some("0 2 * * *"), Some("0 1 * * *"), None).unwrap();
    fn slow_incremental(kind: ScheduleKind) -> Duration {
        match kind {
            ScheduleKind::Incremental => Duration::from_secs(90 * 60),
            _ => Duration::from_secs(60),
        }
    }
    let scheduler = Scheduler::new(
        schedule,
        recording_job(
            clock,
            Arc::clone(&log),
            slow_incremental,
            Arc::clone(&concurrency),
        ),
    )
    .with_clock(clock);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run());
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    handle.cancel();
    let status = task.await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            (
                ts("2026-03-01 01:00"),
                ts("2026-03-01 01:00"),
                ScheduleKind::Incremental
            ),
            (
                ts("2026-03-01 02:30"),
                ts("2026-03-01 02:00"),
                ScheduleKind::Full
            ),
        ]
    );
    assert_eq!(status.kind(ScheduleKind::Full).skipped, 0);
    assert_eq!(status.kind(ScheduleKind::Full).successes, 1);
    assert_eq!(
        concurrency.max.load(Ordering::SeqCst),
        1,
        "never two at once"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_and_panics_are_recorded_and_the_schedule_goes_on() {
    let clock = TokioClock::starting_at(ts("2026-03-01 00:00"));
    let calls = Arc::new(AtomicUsize::new(0));
    let job_calls = Arc::clone(&calls);
    let schedule = BackupSchedule::parse(None, Some("0 * * * *"), Some("*/30 * * * *")).unwrap();
    let scheduler = Scheduler::new(
        schedule,
        job_fn(move |run: ScheduledRun| {
            let n = job_calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match (run.kind, n) {
                    (ScheduleKind::Incremental, _) => {
                        Err(atlas_core::Error::transient("s3", "503 slow down"))
                    }
                    (ScheduleKind::PointInTime, 0) => panic!("bug in the job"),
                    _ => Ok(()),
                }
            }
        }),
    )
    .with_clock(clock);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run());
    tokio::time::sleep(Duration::from_secs(2 * 3600 + 60)).await;
    handle.cancel();
    let status = task.await.unwrap();
    // 00:30 pit (panics), 01:00 inc (fails), 01:30 pit, 02:00 inc (fails).
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let inc = status.kind(ScheduleKind::Incremental);
    assert_eq!((inc.runs, inc.failures, inc.successes), (2, 2, 0));
    assert_eq!(inc.last_failure, Some(ts("2026-03-01 02:00")));
    assert!(inc.last_error.as_deref().unwrap().contains("503 slow down"));
    assert_eq!(inc.last_success, None);
    let pit = status.kind(ScheduleKind::PointInTime);
    assert_eq!((pit.runs, pit.failures, pit.successes), (2, 1, 1));
    assert!(
        pit.last_error
            .as_deref()
            .unwrap()
            .contains("panicked: bug in the job")
    );
    assert_eq!(pit.last_success, Some(ts("2026-03-01 01:30")));
    assert_eq!(
        status.since_last_success(ScheduleKind::Incremental, clock.now()),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_while_waiting_returns_at_once() {
    let clock = TokioClock::starting_at(ts("2026-03-01 00:00"));
    let log: Log = Arc::default();
    let concurrency = Arc::new(Concurrency::default());
    let scheduler = Scheduler::new(
        BackupSchedule::default(),
        recording_job(clock, Arc::clone(&log), quick, Arc::clone(&concurrency)),
    )
    .with_clock(clock);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run());
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert!(!handle.is_cancelled());
    handle.cancel();
    let status = task.await.unwrap();
    assert!(handle.is_cancelled());
    assert_eq!(
        clock.now(),
        ts("2026-03-01 00:05"),
        "returned without waiting for 00:15"
    );
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(status.kind(ScheduleKind::PointInTime).runs, 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_during_a_run_lets_it_finish_then_stops() {
    let clock = TokioClock::starting_at(ts("2026-03-01 00:00"));
    let finished = Arc::new(Mutex::new(None));
    let job_finished = Arc::clone(&finished);
    let scheduler = Scheduler::new(
        BackupSchedule::default(),
        job_fn(move |_run: ScheduledRun| {
            let finished = Arc::clone(&job_finished);
            async move {
                tokio::time::sleep(Duration::from_secs(10 * 60)).await;
                *finished.lock().unwrap() = Some(clock.now());
                Ok(())
            }
        }),
    )
    .with_clock(clock);
    let handle = scheduler.handle();
    let task = tokio::spawn(scheduler.run());
    // The 00:15 run is in progress at 00:20.
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let status = handle.status();
    assert_eq!(
        status.running.as_ref().map(|r| r.at),
        Some(ts("2026-03-01 00:15"))
    );
    handle.cancel();
    let status = task.await.unwrap();
    assert_eq!(*finished.lock().unwrap(), Some(ts("2026-03-01 00:25")));
    assert_eq!(clock.now(), ts("2026-03-01 00:25"));
    let pit = status.kind(ScheduleKind::PointInTime);
    assert_eq!((pit.runs, pit.successes), (1, 1));
}
