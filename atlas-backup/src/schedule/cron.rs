//! Standard 5-field cron expressions, evaluated in UTC.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use atlas_core::{Error, Result};

/// How far ahead [`CronExpr::next_after`] looks: the Gregorian calendar
/// repeats (weekdays and leap years alike) every 400 years, so an
/// expression with no match in 400 years has none at all.
const SEARCH_DAYS: u32 = 146_097 + 1;

/// A field of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: &'static str,
    position: &'static str,
    min: u8,
    max: u8,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    position: "1st",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    position: "2nd",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    position: "3rd",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    position: "4th",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
// 7 is accepted as Sunday, as in every crontab(5), and folded onto 0.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    position: "5th",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// A standard 5-field cron expression — `minute hour day-of-month month
/// day-of-week` — evaluated in UTC at minute resolution.
///
/// The language is crontab(5)'s:
/// - each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`,
///   or a comma-separated list of those;
/// - months may be written `JAN`…`DEC` and days of the week `SUN`…`SAT`
///   (any case, also in ranges: `MON-FRI`); day-of-week `0` and `7` are
///   both Sunday;
/// - when **both** day-of-month and day-of-week are restricted (neither
///   starts with `*`), a day matches if **either** matches
///   (`0 0 1 * MON` runs on the 1st and on every Monday); otherwise both
///   must match (`0 0 */2 * MON` is odd days that are Mondays);
/// - the macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
///   (`@midnight`) and `@hourly`.
///
/// Not accepted: seconds or year fields, `?`, `L`, `W`, `#`, `@reboot`, and
/// a step on a single number (`5/15`: write `5-59/15`).
///
/// Parsing fails with [`Error::InvalidInput`] whose `field` names the cron
/// field (`cron.hour`, …) and whose rule quotes the expression. An
/// expression that can never match (`0 0 30 2 *`) is refused too.
///
/// Serializes as its source text.
#[derive(Clone, PartialEq, Eq)]
pub struct CronExpr {
    source: String,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_restricted: bool,
    dow_restricted: bool,
}

impl CronExpr {
    /// Parses `text`; the same as `text.parse()`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field and the rule it broke.
    pub fn parse(text: &str) -> Result<Self> {
        text.parse()
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the minute containing `t` (UTC) matches.
    pub fn matches(&self, t: Timestamp) -> bool {
        let dt = TimeZone::UTC.to_datetime(t);
        self.day_matches(dt.date())
            && bit64(self.minutes, dt.minute())
            && bit32(self.hours, dt.hour())
    }

    /// The first matching minute strictly after `t` (so `t` itself, even on
    /// a matching minute, is never returned). `None` only past the end of
    /// the representable calendar (year 9999).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let dt = TimeZone::UTC.to_datetime(t);
        let mut date = dt.date();
        // The first candidate minute today: the one after `t`'s minute.
        let mut from = Some((dt.hour(), dt.minute() + 1));
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date) {
                let (h0, m0) = from.unwrap_or((0, 0));
                if let Some((h, m)) = self.first_time_from(h0, m0) {
                    let at = date.at(h, m, 0, 0);
                    return TimeZone::UTC.to_timestamp(at).ok();
                }
            }
            from = None;
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The earliest matching (hour, minute) at or after `h0:m0` (m0 may be 60).
    fn first_time_from(&self, h0: i8, m0: i8) -> Option<(i8, i8)> {
        (h0..24).filter(|h| bit32(self.hours, *h)).find_map(|h| {
            let start = if h == h0 { m0 } else { 0 };
            (start..60)
                .find(|m| bit64(self.minutes, *m))
                .map(|m| (h, m))
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if !bit16(self.months, date.month()) {
            return false;
        }
        let dom = bit32(self.days_of_month, date.day());
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_restricted && self.dow_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }
}

fn bit64(set: u64, v: i8) -> bool {
    (0..64).contains(&v) && set & (1u64 << v) != 0
}

fn bit32(set: u32, v: i8) -> bool {
    (0..32).contains(&v) && set & (1u32 << v) != 0
}

fn bit16(set: u16, v: i8) -> bool {
    (0..16).contains(&v) && set & (1u16 << v) != 0
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.source)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for CronExpr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let source = text.trim().to_string();
        let expanded = match source.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(Error::invalid(
                    "cron",
                    format!(
                        "`{source}`: unknown macro (use @yearly, @annually, @monthly, @weekly, \
                         @daily, @midnight or @hourly)"
                    ),
                ));
            }
            _ => source.as_str(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(Error::invalid(
                "cron",
                format!(
                    "`{source}` has {} fields; expected 5: minute hour day-of-month month \
                     day-of-week",
                    parts.len()
                ),
            ));
        }
        let minutes = parse_field(&source, parts[0], MINUTE)?;
        let hours = parse_field(&source, parts[1], HOUR)?;
        let days_of_month = parse_field(&source, parts[2], DAY_OF_MONTH)?;
        let months = parse_field(&source, parts[3], MONTH)?;
        let dow_raw = parse_field(&source, parts[4], DAY_OF_WEEK)?;
        // Fold 7 (Sunday) onto 0.
        let days_of_week = ((dow_raw | (dow_raw >> 7)) & 0x7f) as u8;
        let expr = CronExpr {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week,
            dom_restricted: !parts[2].starts_with('*'),
            dow_restricted: !parts[4].starts_with('*'),
            source,
        };
        if expr.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(Error::invalid(
                "cron",
                format!(
                    "`{}` never matches (no such day, e.g. 30 February)",
                    expr.source
                ),
            ));
        }
        Ok(expr)
    }
}

/// Parses one field into a bit set (bit `v` set when value `v` matches).
fn parse_field(source: &str, text: &str, field: Field) -> Result<u64> {
    let bad = |rule: String| {
        Error::invalid(
            format!("cron.{}", field.name),
            format!(
                "`{source}`: {} field ({}) `{text}`: {rule}",
                field.position, field.name
            ),
        )
    };
    let mut set = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(bad("empty list item".into()));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u8 = s
                    .parse()
                    .map_err(|_| bad(format!("step `{s}` is not a whole number from 1 to 255")))?;
                if step == 0 {
                    return Err(bad("step must be at least 1".into()));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = value(a, field).map_err(&bad)?;
            let hi = value(b, field).map_err(&bad)?;
            if lo > hi {
                return Err(bad(format!(
                    "range `{range}` runs backwards (write the smaller value first)"
                )));
            }
            (lo, hi)
        } else {
            let v = value(range, field).map_err(&bad)?;
            if step.is_some() {
                return Err(bad(format!(
                    "a step needs `*` or a range: write `{v}-{}/…`",
                    field.max
                )));
            }
            (v, v)
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            set |= 1u64 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Ok(set)
}

/// One value: a number in range or, where the field has names, a name.
fn value(text: &str, field: Field) -> std::result::Result<u8, String> {
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        // Month names start at 1, weekday names at 0 (SUN).
        let i = u8::try_from(i).unwrap_or(u8::MAX);
        return Ok(if field.name == MONTH.name { i + 1 } else { i });
    }
    let v: u8 = text.parse().map_err(|_| {
        if field.names.is_empty() {
            format!("`{text}` is not a number")
        } else {
            format!(
                "`{text}` is neither a number nor a name ({})",
                field.names.join(", ")
            )
        }
    })?;
    if v < field.min || v > field.max {
        return Err(format!("{v} is out of range {}-{}", field.min, field.max));
    }
    Ok(v)
}

impl Serialize for CronExpr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| serde::de::Error::custom(e))
    }
}
