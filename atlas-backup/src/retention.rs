//! Which snapshots to keep: restic's `forget` policy, as pure logic.
//!
//! A [`RetentionPolicy`] is a set of `keep_*` rules; [`RetentionPolicy::apply`]
//! takes the repository's snapshots (as [`SnapshotInfo`]s), splits them into
//! groups ([`GroupBy`], by default host and paths) and decides for each group
//! which snapshots stay and which go, with the reasons every kept snapshot
//! was kept ([`KeepReason`]). The repository engine then removes the rest.
//!
//! The semantics are restic's (`restic forget`, `ApplyPolicy`), rule by rule:
//!
//! - Snapshots of a group are walked newest first (ties: by id, ascending).
//! - `keep_last n` keeps the `n` newest snapshots.
//! - `keep_hourly/daily/weekly/monthly/yearly n`: a snapshot is kept when its
//!   bucket (its hour, day, ISO week, month or year) differs from the bucket
//!   of the snapshot this rule kept last, and the rule has count left; each
//!   keep uses one. So the newest snapshot of each of the `n` newest buckets
//!   *that have snapshots* is kept — empty hours or days are not counted.
//! - [`KeepCount::Unlimited`] (restic's `-1` / `unlimited`) never runs out.
//! - `keep_within d` keeps every snapshot strictly newer than `latest - d`,
//!   where `latest` is the newest snapshot of the group that is not in the
//!   future (relative to the `now` passed to `apply`), **not** `now`. `d` is
//!   calendar arithmetic (`1y2m3d4h`), normalised like Go's `AddDate`
//!   (31 March minus one month is 3 March, not 28 February).
//! - `keep_within_hourly d` (and daily, weekly, monthly, yearly): among the
//!   snapshots within `d` of `latest`, keep the newest of each bucket.
//! - `keep_tags`: keep every snapshot that has all tags of at least one
//!   [`TagSet`]; an empty set matches untagged snapshots only. Tags do not
//!   count against anything.
//! - With [`keep_oldest`](RetentionPolicyBuilder::keep_oldest) on (the
//!   default, restic 0.16 and later), a bucket rule that still has count
//!   left when it reaches the oldest snapshot of the group keeps that one
//!   too (reason prefixed `oldest`), so a young repository keeps its history.
//! - The rules are ORed: a snapshot is kept if any rule keeps it.
//!
//! One deliberate difference: buckets are computed in **UTC**. restic uses
//! the local time zone of the machine running `forget`; run it with `TZ=UTC`
//! to compare the two.
//!
//! Safety rails, as restic 0.17: a policy without any rule is refused at
//! build time, and `apply` refuses to remove every snapshot of a group (a
//! tag-only policy that matches nothing), unless
//! [`allow_remove_all`](RetentionPolicyBuilder::allow_remove_all) is set.
//!
//! ```
//! use atlas_backup::retention::{KeepWithin, RetentionPolicy, SnapshotInfo};
//! use jiff::Timestamp;
//!
//! let policy = RetentionPolicy::builder()
//!     .keep_last(2)
//!     .keep_daily(7)
//!     .keep_within("1m".parse::<KeepWithin>()?)
//!     .build()?;
//! let at = |s: &str| s.parse::<Timestamp>().unwrap();
//! let snapshots = vec![
//!     SnapshotInfo::new("a", at("2026-01-01T10:00:00Z")).with_host("db1").with_paths(["/data"]),
//!     SnapshotInfo::new("b", at("2026-01-01T11:00:00Z")).with_host("db1").with_paths(["/data"]),
//!     SnapshotInfo::new("c", at("2026-03-01T11:00:00Z")).with_host("db1").with_paths(["/data"]),
//! ];
//! let plan = policy.apply(&snapshots, at("2026-03-02T00:00:00Z"))?;
//! assert_eq!(plan.kept_ids().collect::<Vec<_>>(), ["c", "b", "a"]);
//! // `a` shares its day with `b`, but `keep_daily` still had count left when
//! // it reached the group's oldest snapshot (restic 0.16+ behaviour).
//! let why: Vec<String> = plan.reasons("a").unwrap().iter().map(|r| r.to_string()).collect();
//! assert_eq!(why, ["oldest daily snapshot"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use atlas_core::{Error, Result};

/// How many buckets (or snapshots, for `keep_last`) a rule keeps.
///
/// Deserializes from a non-negative integer, from `-1` (restic's spelling of
/// "all") or from the string `"unlimited"`; serializes as the integer or
/// `"unlimited"`. The default is `Count(0)`: the rule is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeepCount {
    /// Keep at most this many; `0` turns the rule off.
    Count(u32),
    /// Keep all (restic's `unlimited` / `-1`).
    Unlimited,
}

impl KeepCount {
    /// The rule is off.
    pub const OFF: KeepCount = KeepCount::Count(0);

    /// Whether the rule keeps anything at all.
    pub fn is_active(self) -> bool {
        self != KeepCount::OFF
    }

    fn has_left(self) -> bool {
        self.is_active()
    }

    fn take_one(&mut self) {
        if let KeepCount::Count(n) = self {
            *n = n.saturating_sub(1);
        }
    }
}

impl Default for KeepCount {
    fn default() -> Self {
        KeepCount::OFF
    }
}

impl From<u32> for KeepCount {
    fn from(n: u32) -> Self {
        KeepCount::Count(n)
    }
}

impl fmt::Display for KeepCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepCount::Count(n) => write!(f, "{n}"),
            KeepCount::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl FromStr for KeepCount {
    type Err = Error;

    /// Parses `unlimited`, `-1` or a non-negative integer.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("unlimited") || s == "-1" {
            return Ok(KeepCount::Unlimited);
        }
        s.parse::<u32>().map(KeepCount::Count).map_err(|_| {
            Error::invalid(
                "keep count",
                format!("`{s}` must be a non-negative integer, -1 or `unlimited`"),
            )
        })
    }
}

impl Serialize for KeepCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            KeepCount::Count(n) => s.serialize_u32(*n),
            KeepCount::Unlimited => s.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeepCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer, -1 or \"unlimited\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<KeepCount, E> {
                u32::try_from(v)
                    .map(KeepCount::Count)
                    .map_err(|_| E::custom(format!("{v} is larger than {}", u32::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<KeepCount, E> {
                match v {
                    -1 => Ok(KeepCount::Unlimited),
                    v if v < 0 => Err(E::custom(format!(
                        "{v} is negative; use -1 or \"unlimited\" to keep all"
                    ))),
                    v => self.visit_u64(v.unsigned_abs()),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<KeepCount, E> {
                v.parse::<KeepCount>().map_err(|e| E::custom(rule_of(&e)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A calendar duration in restic's `--keep-within` format: years, months,
/// days and hours, written like `2y5m7d3h` (any subset, each unit at most
/// once, `m` is months). Serializes as that string.
///
/// It is subtracted from a time as calendar arithmetic, normalised like
/// Go's `time.AddDate` (which restic uses): years and months first, an
/// overflowing day rolls into the next month (31 March minus `1m` is
/// 3 March in a common year), then days and hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct KeepWithin {
    years: u32,
    months: u32,
    days: u32,
    hours: u32,
}

impl KeepWithin {
    /// A duration of `years`, `months`, `days` and `hours`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if all four are zero (leave the rule out
    /// instead).
    pub fn new(years: u32, months: u32, days: u32, hours: u32) -> Result<Self> {
        let d = KeepWithin {
            years,
            months,
            days,
            hours,
        };
        if d.is_zero() {
            return Err(Error::invalid(
                "keep_within",
                "must be longer than zero; leave the rule out instead",
            ));
        }
        Ok(d)
    }

    /// `n` days.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), for `n == 0`.
    pub fn days(n: u32) -> Result<Self> {
        Self::new(0, 0, n, 0)
    }

    /// `n` hours.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), for `n == 0`.
    pub fn hours(n: u32) -> Result<Self> {
        Self::new(0, 0, 0, n)
    }

    /// Years.
    pub fn year_count(&self) -> u32 {
        self.years
    }

    /// Months.
    pub fn month_count(&self) -> u32 {
        self.months
    }

    /// Days.
    pub fn day_count(&self) -> u32 {
        self.days
    }

    /// Hours.
    pub fn hour_count(&self) -> u32 {
        self.hours
    }

    fn is_zero(&self) -> bool {
        self.years == 0 && self.months == 0 && self.days == 0 && self.hours == 0
    }

    /// `t` minus this duration, in UTC, normalised like Go's
    /// `t.AddDate(-y, -m, -d).Add(-h * time.Hour)`. `None` when the result
    /// is before the earliest representable time: everything is newer.
    pub fn before(&self, t: Timestamp) -> Option<Timestamp> {
        let dt = TimeZone::UTC.to_datetime(t);
        let month0 = i64::from(dt.month()) - 1 - i64::from(self.months);
        let year = i64::from(dt.year()) - i64::from(self.years) + month0.div_euclid(12);
        let month = month0.rem_euclid(12) + 1;
        let first = Date::new(i16::try_from(year).ok()?, i8::try_from(month).ok()?, 1).ok()?;
        let start = TimeZone::UTC
            .to_timestamp(first.to_datetime(dt.time()))
            .ok()?;
        // Days and hours are exact in UTC: no DST, so plain seconds.
        let day_offset = i64::from(dt.day()) - 1 - i64::from(self.days);
        let secs = day_offset
            .checked_mul(86_400)?
            .checked_sub(i64::from(self.hours).checked_mul(3_600)?)?;
        start.checked_add(SignedDuration::from_secs(secs)).ok()
    }
}

impl fmt::Display for KeepWithin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for KeepWithin {
    type Err = Error;

    /// Parses `2y5m7d3h` (any subset of the units, each at most once).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |rule: String| Error::invalid("keep_within", rule);
        let text = s.trim();
        if text.is_empty() {
            return Err(bad(
                "must not be empty; write e.g. `7d`, `1y6m` or `2y5m7d3h`".into(),
            ));
        }
        let mut d = KeepWithin::default();
        let mut seen = BTreeSet::new();
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad(format!(
                    "`{text}`: expected a number at `{rest}` (format: 2y5m7d3h, no signs or spaces)"
                )));
            }
            let n: u32 = rest[..digits].parse().map_err(|_| {
                bad(format!(
                    "`{text}`: number `{}` is too large",
                    &rest[..digits]
                ))
            })?;
            let Some(unit) = rest[digits..].chars().next() else {
                return Err(bad(format!(
                    "`{text}`: number {n} has no unit (y, m, d or h)"
                )));
            };
            let slot = match unit {
                'y' => &mut d.years,
                'm' => &mut d.months,
                'd' => &mut d.days,
                'h' => &mut d.hours,
                other => {
                    return Err(bad(format!(
                        "`{text}`: unknown unit `{other}` (y = years, m = months, d = days, h = hours)"
                    )));
                }
            };
            if !seen.insert(unit) {
                return Err(bad(format!("`{text}`: unit `{unit}` appears twice")));
            }
            *slot = n;
            rest = &rest[digits + unit.len_utf8()..];
        }
        if d.is_zero() {
            return Err(bad(format!("`{text}` is zero; leave the rule out instead")));
        }
        Ok(d)
    }
}

impl Serialize for KeepWithin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeepWithin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| serde::de::Error::custom(rule_of(&e)))
    }
}

/// One `keep_tags` entry: a snapshot matches when it has **all** these tags.
/// An empty set matches untagged snapshots only (restic's `--keep-tag ''`).
///
/// Deserializes from a list of tags or from restic's comma-separated string
/// (`"daily,important"`; `""` is the empty set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct TagSet(BTreeSet<String>);

impl TagSet {
    /// A set of tags.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if a tag is empty or has surrounding
    /// whitespace or a comma (use an empty set to match untagged snapshots).
    pub fn new<I, S>(tags: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = BTreeSet::new();
        for tag in tags {
            let tag = tag.into();
            if tag.is_empty() || tag.trim() != tag || tag.contains(',') {
                return Err(Error::invalid(
                    "keep_tags",
                    format!(
                        "tag `{tag}` must be non-empty, without surrounding spaces or commas \
                         (an empty tag set matches untagged snapshots)"
                    ),
                ));
            }
            set.insert(tag);
        }
        Ok(TagSet(set))
    }

    /// The set that matches untagged snapshots only.
    pub fn untagged() -> Self {
        TagSet::default()
    }

    /// The tags, sorted.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether a snapshot with `tags` matches.
    pub fn matches(&self, tags: &BTreeSet<String>) -> bool {
        if self.0.is_empty() {
            tags.is_empty()
        } else {
            self.0.is_subset(tags)
        }
    }
}

impl fmt::Display for TagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}]",
            self.0.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

impl Serialize for TagSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

impl<'de> Deserialize<'de> for TagSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Joined(String),
            List(Vec<String>),
        }
        let tags = match Form::deserialize(d)? {
            Form::Joined(s) if s.trim().is_empty() => Vec::new(),
            Form::Joined(s) => s.split(',').map(|t| t.trim().to_string()).collect(),
            Form::List(list) => list,
        };
        TagSet::new(tags).map_err(|e| serde::de::Error::custom(rule_of(&e)))
    }
}

/// Which snapshot attributes split snapshots into independent groups, each
/// getting the policy on its own (restic's `--group-by`). The default is
/// host and paths; [`GroupBy::NONE`] applies the policy to all snapshots at
/// once.
///
/// Deserializes from restic's string (`"host,paths"`, `""` for none; the
/// names `host`/`hosts`, `path`/`paths`, `tag`/`tags`) or a list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupBy {
    /// Group by host name.
    pub host: bool,
    /// Group by the set of backed-up paths.
    pub paths: bool,
    /// Group by the set of tags.
    pub tags: bool,
}

impl GroupBy {
    /// No grouping: one group for all snapshots.
    pub const NONE: GroupBy = GroupBy {
        host: false,
        paths: false,
        tags: false,
    };

    fn key(&self, s: &SnapshotInfo) -> GroupKey {
        GroupKey {
            host: self.host.then(|| s.host.clone()),
            paths: self.paths.then(|| {
                let mut p = s.paths.clone();
                p.sort();
                p
            }),
            tags: self.tags.then(|| s.tags.iter().cloned().collect()),
        }
    }
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.host, "host"),
            (self.paths, "paths"),
            (self.tags, "tags"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for GroupBy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut g = GroupBy::NONE;
        for part in s.split(',').map(str::trim) {
            match part {
                "host" | "hosts" => g.host = true,
                "path" | "paths" => g.paths = true,
                "tag" | "tags" => g.tags = true,
                "" => {}
                other => {
                    return Err(Error::invalid(
                        "group_by",
                        format!("unknown grouping `{other}` (use host, paths, tags)"),
                    ));
                }
            }
        }
        Ok(g)
    }
}

impl Serialize for GroupBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GroupBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Joined(String),
            List(Vec<String>),
        }
        let joined = match Form::deserialize(d)? {
            Form::Joined(s) => s,
            Form::List(list) => list.join(","),
        };
        joined
            .parse()
            .map_err(|e: Error| serde::de::Error::custom(rule_of(&e)))
    }
}

/// What the policy needs to know about one snapshot. The repository engine
/// converts its manifests to these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The snapshot's id, returned in the plan.
    pub id: String,
    /// When the snapshot was taken.
    pub time: Timestamp,
    /// The host it was taken on (empty if unknown).
    #[serde(default)]
    pub host: String,
    /// The paths or sources it holds.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Its tags.
    #[serde(default)]
    pub tags: BTreeSet<String>,
}

impl SnapshotInfo {
    /// A snapshot with no host, paths or tags.
    pub fn new(id: impl Into<String>, time: Timestamp) -> Self {
        SnapshotInfo {
            id: id.into(),
            time,
            host: String::new(),
            paths: Vec::new(),
            tags: BTreeSet::new(),
        }
    }

    /// With this host.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// With these paths.
    pub fn with_paths<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.paths = paths.into_iter().map(Into::into).collect();
        self
    }

    /// With these tags.
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }
}

/// A calendar bucket of the bucket rules, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A clock hour, `:00` to `:59`.
    Hour,
    /// A day, 00:00 to 23:59.
    Day,
    /// An ISO 8601 week, Monday to Sunday (the week of 1 January may belong
    /// to the previous year).
    Week,
    /// A calendar month.
    Month,
    /// A calendar year.
    Year,
}

impl Period {
    const ALL: [Period; 5] = [
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Year,
    ];

    fn adjective(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// The bucket `t` falls in, as one comparable number (restic's `ymdh`,
    /// `ymd`, `yw`, `ym`, `y`).
    fn bucket(self, t: Timestamp) -> i64 {
        let dt = TimeZone::UTC.to_datetime(t);
        let (y, m, d, h) = (
            i64::from(dt.year()),
            i64::from(dt.month()),
            i64::from(dt.day()),
            i64::from(dt.hour()),
        );
        match self {
            Period::Hour => ((y * 100 + m) * 100 + d) * 100 + h,
            Period::Day => (y * 100 + m) * 100 + d,
            Period::Week => {
                let w = dt.date().iso_week_date();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Month => y * 100 + m,
            Period::Year => y,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.adjective())
    }
}

/// Why a snapshot was kept. `Display` gives restic's wording (`daily
/// snapshot`, `oldest weekly snapshot`, `within 7d`, `hourly within 2d`,
/// `has tags [a, b]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
#[non_exhaustive]
pub enum KeepReason {
    /// It has all tags of this `keep_tags` entry.
    Tags {
        /// The matching entry.
        tags: TagSet,
    },
    /// It is within `keep_within` of the newest snapshot.
    Within {
        /// The rule's duration.
        within: KeepWithin,
    },
    /// `keep_last`.
    Last {
        /// Kept only because it is the oldest and count was left.
        oldest: bool,
    },
    /// `keep_hourly` … `keep_yearly`: newest of its bucket.
    Bucket {
        /// Which rule.
        period: Period,
        /// Kept only because it is the oldest and count was left.
        oldest: bool,
    },
    /// `keep_within_hourly` … `keep_within_yearly`.
    BucketWithin {
        /// Which rule.
        period: Period,
        /// The rule's duration.
        within: KeepWithin,
        /// Kept only because it is the oldest snapshot of the group.
        oldest: bool,
    },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oldest = |o: bool| if o { "oldest " } else { "" };
        match self {
            KeepReason::Tags { tags } => write!(f, "has tags {tags}"),
            KeepReason::Within { within } => write!(f, "within {within}"),
            KeepReason::Last { oldest: o } => write!(f, "{}last snapshot", oldest(*o)),
            KeepReason::Bucket { period, oldest: o } => {
                write!(f, "{}{period} snapshot", oldest(*o))
            }
            KeepReason::BucketWithin {
                period,
                within,
                oldest: o,
            } => write!(f, "{}{period} within {within}", oldest(*o)),
        }
    }
}

/// The count each counted rule has left after a snapshot was evaluated
/// (restic's `counters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemainingCounts {
    /// `keep_last`.
    pub last: KeepCount,
    /// `keep_hourly`.
    pub hourly: KeepCount,
    /// `keep_daily`.
    pub daily: KeepCount,
    /// `keep_weekly`.
    pub weekly: KeepCount,
    /// `keep_monthly`.
    pub monthly: KeepCount,
    /// `keep_yearly`.
    pub yearly: KeepCount,
}

/// A snapshot the policy keeps, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptSnapshot {
    /// The snapshot.
    pub snapshot: SnapshotInfo,
    /// Every rule that kept it, in restic's order (tags, within, counted
    /// rules, within-bucket rules).
    pub reasons: Vec<KeepReason>,
    /// Counts left after it.
    pub counters: RemainingCounts,
}

/// What identifies a group: the attributes [`GroupBy`] selected (the others
/// are `None`). Paths and tags are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// The host, when grouping by host.
    pub host: Option<String>,
    /// The sorted paths, when grouping by paths.
    pub paths: Option<Vec<String>>,
    /// The sorted tags, when grouping by tags.
    pub tags: Option<Vec<String>>,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host [{h}]"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("(all snapshots)")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The decision for one group. Both lists are newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub key: GroupKey,
    /// Snapshots to keep, with reasons.
    pub keep: Vec<KeptSnapshot>,
    /// Snapshots to remove.
    pub remove: Vec<SnapshotInfo>,
}

/// The decision for all groups, sorted by group key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    /// One entry per group.
    pub groups: Vec<GroupPlan>,
}

impl RetentionPlan {
    /// Ids of all kept snapshots, group by group, newest first in a group.
    pub fn kept_ids(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.keep.iter().map(|k| k.snapshot.id.as_str()))
    }

    /// Ids of all snapshots to remove, group by group, newest first.
    pub fn removed_ids(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.remove.iter().map(|s| s.id.as_str()))
    }

    /// The reasons `id` is kept, or `None` if it is removed or unknown.
    pub fn reasons(&self, id: &str) -> Option<&[KeepReason]> {
        self.groups
            .iter()
            .flat_map(|g| &g.keep)
            .find(|k| k.snapshot.id == id)
            .map(|k| k.reasons.as_slice())
    }
}

/// Builder and serde form of [`RetentionPolicy`]; every rule defaults to
/// off, grouping to host and paths, `keep_oldest` to `true`.
///
/// Field names match restic's flags with `_` (`keep_last`,
/// `keep_within_daily`, …); unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicyBuilder {
    keep_last: KeepCount,
    keep_hourly: KeepCount,
    keep_daily: KeepCount,
    keep_weekly: KeepCount,
    keep_monthly: KeepCount,
    keep_yearly: KeepCount,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_within: Option<KeepWithin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_within_hourly: Option<KeepWithin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_within_daily: Option<KeepWithin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_within_weekly: Option<KeepWithin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_within_monthly: Option<KeepWithin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_within_yearly: Option<KeepWithin>,
    keep_tags: Vec<TagSet>,
    group_by: GroupBy,
    keep_oldest: bool,
    allow_remove_all: bool,
}

impl Default for RetentionPolicyBuilder {
    fn default() -> Self {
        RetentionPolicyBuilder {
            keep_last: KeepCount::OFF,
            keep_hourly: KeepCount::OFF,
            keep_daily: KeepCount::OFF,
            keep_weekly: KeepCount::OFF,
            keep_monthly: KeepCount::OFF,
            keep_yearly: KeepCount::OFF,
            keep_within: None,
            keep_within_hourly: None,
            keep_within_daily: None,
            keep_within_weekly: None,
            keep_within_monthly: None,
            keep_within_yearly: None,
            keep_tags: Vec::new(),
            group_by: GroupBy::default(),
            keep_oldest: true,
            allow_remove_all: false,
        }
    }
}

impl RetentionPolicyBuilder {
    /// Keep the `n` newest snapshots (`--keep-last`).
    pub fn keep_last(mut self, n: impl Into<KeepCount>) -> Self {
        self.keep_last = n.into();
        self
    }
    /// Keep the newest snapshot of each of the `n` newest hours that have
    /// snapshots (`--keep-hourly`).
    pub fn keep_hourly(mut self, n: impl Into<KeepCount>) -> Self {
        self.keep_hourly = n.into();
        self
    }
    /// As [`keep_hourly`](Self::keep_hourly), per UTC day (`--keep-daily`).
    pub fn keep_daily(mut self, n: impl Into<KeepCount>) -> Self {
        self.keep_daily = n.into();
        self
    }
    /// As [`keep_hourly`](Self::keep_hourly), per ISO week (`--keep-weekly`).
    pub fn keep_weekly(mut self, n: impl Into<KeepCount>) -> Self {
        self.keep_weekly = n.into();
        self
    }
    /// As [`keep_hourly`](Self::keep_hourly), per month (`--keep-monthly`).
    pub fn keep_monthly(mut self, n: impl Into<KeepCount>) -> Self {
        self.keep_monthly = n.into();
        self
    }
    /// As [`keep_hourly`](Self::keep_hourly), per year (`--keep-yearly`).
    pub fn keep_yearly(mut self, n: impl Into<KeepCount>) -> Self {
        self.keep_yearly = n.into();
        self
    }
    /// Keep every snapshot newer than the newest one minus `d`
    /// (`--keep-within`).
    pub fn keep_within(mut self, d: KeepWithin) -> Self {
        self.keep_within = Some(d);
        self
    }
    /// Keep the newest snapshot of each hour within `d` of the newest
    /// snapshot (`--keep-within-hourly`).
    pub fn keep_within_hourly(mut self, d: KeepWithin) -> Self {
        self.keep_within_hourly = Some(d);
        self
    }
    /// Per day, within `d` (`--keep-within-daily`).
    pub fn keep_within_daily(mut self, d: KeepWithin) -> Self {
        self.keep_within_daily = Some(d);
        self
    }
    /// Per ISO week, within `d` (`--keep-within-weekly`).
    pub fn keep_within_weekly(mut self, d: KeepWithin) -> Self {
        self.keep_within_weekly = Some(d);
        self
    }
    /// Per month, within `d` (`--keep-within-monthly`).
    pub fn keep_within_monthly(mut self, d: KeepWithin) -> Self {
        self.keep_within_monthly = Some(d);
        self
    }
    /// Per year, within `d` (`--keep-within-yearly`).
    pub fn keep_within_yearly(mut self, d: KeepWithin) -> Self {
        self.keep_within_yearly = Some(d);
        self
    }
    /// Also keep every snapshot that has all of `tags` (`--keep-tag`; may
    /// be given several times, a snapshot matching any entry is kept).
    pub fn keep_tags(mut self, tags: TagSet) -> Self {
        self.keep_tags.push(tags);
        self
    }
    /// How to group snapshots; default host and paths.
    pub fn group_by(mut self, g: GroupBy) -> Self {
        self.group_by = g;
        self
    }
    /// Whether a bucket rule with count left keeps the group's oldest
    /// snapshot too (restic 0.16 and later; default `true`). `false` gives
    /// restic 0.15 and earlier.
    pub fn keep_oldest(mut self, on: bool) -> Self {
        self.keep_oldest = on;
        self
    }
    /// Allow a policy that removes every snapshot (an empty policy, or a
    /// group none of whose snapshots a rule keeps; restic's
    /// `--unsafe-allow-remove-all`). Default `false`.
    pub fn allow_remove_all(mut self, on: bool) -> Self {
        self.allow_remove_all = on;
        self
    }

    /// Checks the policy.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `retention`) when no rule keeps
    /// anything and [`allow_remove_all`](Self::allow_remove_all) is off.
    pub fn build(self) -> Result<RetentionPolicy> {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        let withins = [
            self.keep_within,
            self.keep_within_hourly,
            self.keep_within_daily,
            self.keep_within_weekly,
            self.keep_within_monthly,
            self.keep_within_yearly,
        ];
        let empty = counts.iter().all(|c| !c.is_active())
            && withins.iter().all(Option::is_none)
            && self.keep_tags.is_empty();
        if empty && !self.allow_remove_all {
            return Err(Error::invalid(
                "retention",
                "keeps no snapshot: set at least one keep_* rule, or allow_remove_all \
                 to remove every snapshot",
            ));
        }
        Ok(RetentionPolicy { spec: self })
    }
}

/// A validated retention policy; see the [module docs](self) for the rules.
/// Build one with [`RetentionPolicy::builder`] or deserialize it (the
/// fields of [`RetentionPolicyBuilder`]; validated the same way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RetentionPolicyBuilder", into = "RetentionPolicyBuilder")]
pub struct RetentionPolicy {
    spec: RetentionPolicyBuilder,
}

impl TryFrom<RetentionPolicyBuilder> for RetentionPolicy {
    type Error = Error;
    fn try_from(b: RetentionPolicyBuilder) -> Result<Self> {
        b.build()
    }
}

impl From<RetentionPolicy> for RetentionPolicyBuilder {
    fn from(p: RetentionPolicy) -> Self {
        p.spec
    }
}

struct CountRule {
    count: KeepCount,
    period: Option<Period>,
    last: Option<i64>,
}

struct WithinRule {
    period: Period,
    within: KeepWithin,
    cutoff: Option<Timestamp>,
    last: Option<i64>,
}

impl RetentionPolicy {
    /// A builder with every rule off.
    pub fn builder() -> RetentionPolicyBuilder {
        RetentionPolicyBuilder::default()
    }

    /// This policy as a builder, to change it.
    pub fn to_builder(&self) -> RetentionPolicyBuilder {
        self.spec.clone()
    }

    /// How snapshots are grouped.
    pub fn group_by(&self) -> GroupBy {
        self.spec.group_by
    }

    /// Whether this policy has no rule (only possible with
    /// `allow_remove_all`): it removes everything.
    pub fn is_empty(&self) -> bool {
        RetentionPolicyBuilder {
            group_by: self.spec.group_by,
            keep_oldest: self.spec.keep_oldest,
            allow_remove_all: self.spec.allow_remove_all,
            ..RetentionPolicyBuilder::default()
        } == self.spec
    }

    /// Decides, group by group, which of `snapshots` to keep. `now` is the
    /// current time: snapshots after it are ignored when finding the newest
    /// snapshot that the `keep_within*` rules measure from (restic does the
    /// same, so a clock-skewed snapshot cannot expire the others).
    ///
    /// # Errors
    ///
    /// [`Error::Precondition`] if the policy would remove every snapshot of
    /// a group and `allow_remove_all` is off (restic: "refusing to delete
    /// last snapshot of snapshot group"); nothing is decided then.
    pub fn apply(&self, snapshots: &[SnapshotInfo], now: Timestamp) -> Result<RetentionPlan> {
        let span = tracing::debug_span!(
            "retention.apply",
            snapshots = snapshots.len(),
            group_by = %self.spec.group_by
        );
        let _enter = span.enter();

        let mut groups: BTreeMap<GroupKey, Vec<&SnapshotInfo>> = BTreeMap::new();
        for s in snapshots {
            groups.entry(self.spec.group_by.key(s)).or_default().push(s);
        }
        let mut plan = RetentionPlan { groups: Vec::new() };
        for (key, mut list) in groups {
            list.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
            let group = self.apply_group(key, &list, now);
            if group.keep.is_empty() && !self.spec.allow_remove_all {
                tracing::warn!(group = %group.key, "retention policy would remove every snapshot of a group; refused");
                return Err(Error::precondition(format!(
                    "retention policy would remove all {} snapshots of group {}; \
                     refusing (set allow_remove_all to permit it)",
                    group.remove.len(),
                    group.key
                )));
            }
            tracing::debug!(
                group = %group.key,
                keep = group.keep.len(),
                remove = group.remove.len(),
                "retention decided a group"
            );
            plan.groups.push(group);
        }
        tracing::info!(
            groups = plan.groups.len(),
            keep = plan.kept_ids().count(),
            remove = plan.removed_ids().count(),
            "retention plan"
        );
        Ok(plan)
    }

    fn apply_group(&self, key: GroupKey, list: &[&SnapshotInfo], now: Timestamp) -> GroupPlan {
        let p = &self.spec;
        let mut out = GroupPlan {
            key,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        if self.is_empty() {
            out.remove = list.iter().map(|s| (*s).clone()).collect();
            return out;
        }
        // The newest snapshot not in the future; `None` (all in the future)
        // makes every snapshot count as within, as restic's zero time does.
        let latest = list.iter().map(|s| s.time).filter(|t| *t < now).max();
        let cutoff = |d: &KeepWithin| latest.and_then(|l| d.before(l));
        let is_within = |t: Timestamp, cutoff: Option<Timestamp>| match (latest, cutoff) {
            (None, _) | (Some(_), None) => true,
            (Some(_), Some(c)) => t > c,
        };

        let mut counted = [
            (p.keep_last, None),
            (p.keep_hourly, Some(Period::Hour)),
            (p.keep_daily, Some(Period::Day)),
            (p.keep_weekly, Some(Period::Week)),
            (p.keep_monthly, Some(Period::Month)),
            (p.keep_yearly, Some(Period::Year)),
        ]
        .map(|(count, period)| CountRule {
            count,
            period,
            last: None,
        });
        let withins = [
            p.keep_within_hourly,
            p.keep_within_daily,
            p.keep_within_weekly,
            p.keep_within_monthly,
            p.keep_within_yearly,
        ];
        let mut within_rules: Vec<WithinRule> = Period::ALL
            .into_iter()
            .zip(withins)
            .filter_map(|(period, w)| {
                w.map(|within| WithinRule {
                    period,
                    within,
                    cutoff: cutoff(&within),
                    last: None,
                })
            })
            .collect();
        let plain_within = p.keep_within.map(|w| (w, cutoff(&w)));

        let oldest_index = list.len().saturating_sub(1);
        for (nr, snap) in list.iter().enumerate() {
            let is_oldest = p.keep_oldest && nr == oldest_index;
            let mut reasons = Vec::new();
            for tags in &p.keep_tags {
                if tags.matches(&snap.tags) {
                    reasons.push(KeepReason::Tags { tags: tags.clone() });
                }
            }
            if let Some((within, c)) = plain_within
                && is_within(snap.time, c)
            {
                reasons.push(KeepReason::Within { within });
            }
            for rule in &mut counted {
                if !rule.count.has_left() {
                    continue;
                }
                // `keep_last` buckets by position: every snapshot is new.
                let bucket = match rule.period {
                    Some(period) => period.bucket(snap.time),
                    None => i64::try_from(nr).unwrap_or(i64::MAX),
                };
                let new_bucket = rule.last != Some(bucket);
                if new_bucket || is_oldest {
                    let oldest = !new_bucket;
                    rule.last = Some(bucket);
                    rule.count.take_one();
                    reasons.push(match rule.period {
                        None => KeepReason::Last { oldest },
                        Some(period) => KeepReason::Bucket { period, oldest },
                    });
                }
            }
            for rule in &mut within_rules {
                if !is_within(snap.time, rule.cutoff) {
                    continue;
                }
                let bucket = rule.period.bucket(snap.time);
                let new_bucket = rule.last != Some(bucket);
                if new_bucket || is_oldest {
                    rule.last = Some(bucket);
                    reasons.push(KeepReason::BucketWithin {
                        period: rule.period,
                        within: rule.within,
                        oldest: !new_bucket,
                    });
                }
            }
            if reasons.is_empty() {
                out.remove.push((*snap).clone());
            } else {
                let [last, hourly, daily, weekly, monthly, yearly] =
                    counted.each_ref().map(|r| r.count);
                out.keep.push(KeptSnapshot {
                    snapshot: (*snap).clone(),
                    reasons,
                    counters: RemainingCounts {
                        last,
                        hourly,
                        daily,
                        weekly,
                        monthly,
                        yearly,
                    },
                });
            }
        }
        out
    }
}

/// The `rule` of an `InvalidInput`, for serde messages (serde adds the path).
fn rule_of(e: &Error) -> String {
    match e {
        Error::InvalidInput { rule, .. } => rule.clone(),
        other => other.to_string(),
    }
}
