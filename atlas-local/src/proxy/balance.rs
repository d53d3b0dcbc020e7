//! Choosing a region for a request (region weights), a slot within it
//! (split, match rule, sticky cookie) and an endpoint within the slot
//! (least outstanding requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use atlas_core::region::{RegionName, RegionWeights};
use atlas_core::{Error, RequestMatch, Result, Slot, TrafficSplit};
use http::header::{HeaderName, HeaderValue};
use httparse::Header;

use super::h1::is_tchar;
use super::upstream::Upstream;

/// A compiled [`RequestMatch`]: header names parsed once, not per request.
#[derive(Debug)]
enum Matcher {
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    Cookie {
        name: String,
        value: String,
    },
}

impl Matcher {
    fn compile(rule: &RequestMatch) -> Result<Self> {
        match rule {
            RequestMatch::Header { name, value } => {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Error::invalid(
                        "split.canary_match.header.name",
                        format!("{name:?} is not a valid HTTP header name"),
                    )
                })?;
                let value = HeaderValue::from_str(value).map_err(|_| {
                    Error::invalid(
                        "split.canary_match.header.value",
                        "must be visible ASCII characters, spaces or tabs",
                    )
                })?;
                Ok(Matcher::Header { name, value })
            }
            RequestMatch::Cookie { name, value } => {
                if !is_cookie_name(name) {
                    return Err(Error::invalid(
                        "split.canary_match.cookie.name",
                        format!("{name:?} is not a valid cookie name (an RFC 6265 token)"),
                    ));
                }
                if value.is_empty() || !value.bytes().all(is_cookie_octet) {
                    return Err(Error::invalid(
                        "split.canary_match.cookie.value",
                        "must be 1 or more cookie octets (no spaces, quotes, commas, semicolons or backslashes)",
                    ));
                }
                Ok(Matcher::Cookie {
                    name: name.clone(),
                    value: value.clone(),
                })
            }
        }
    }

    fn matches(&self, headers: &[Header<'_>]) -> bool {
        match self {
            Matcher::Header { name, value } => headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name.as_str()) && h.value == value.as_bytes()),
            Matcher::Cookie { name, value } => cookie_value(headers, name) == Some(value.as_str()),
        }
    }
}

/// Whether `name` is an RFC 6265 cookie name (an RFC 7230 token).
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value<'a>(headers: &[Header<'a>], name: &str) -> Option<&'a str> {
    for header in headers {
        if !header.name.eq_ignore_ascii_case("cookie") {
            continue;
        }
        let Ok(text) = std::str::from_utf8(header.value) else {
            continue;
        };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k.trim() == name
            {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v);
            }
        }
    }
    None
}

/// The split in force plus what routing needs per request. Replaced whole
/// (through an `ArcSwap`) on every change, so one request sees one split.
#[derive(Debug)]
pub(crate) struct SplitState {
    pub(crate) split: TrafficSplit,
    canary_percent: u64,
    matcher: Option<Matcher>,
    /// Weighted choices made under this split.
    sequence: AtomicU64,
}

/// Where a request goes, and whether to (re)set the sticky cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) slot: Slot,
    pub(crate) set_sticky: bool,
}

impl SplitState {
    /// Compiles `split`, refusing a match rule that no request could carry.
    pub(crate) fn new(split: &TrafficSplit) -> Result<Self> {
        Ok(SplitState {
            canary_percent: u64::from(split.canary_weight().percent()),
            matcher: split.canary_match().map(Matcher::compile).transpose()?,
            split: split.clone(),
            sequence: AtomicU64::new(0),
        })
    }

    /// Chooses the slot for a request: a matching request goes to the
    /// canary whatever the weights; a request whose sticky cookie names a
    /// slot with weight > 0 goes there; any other gets a weighted choice.
    pub(crate) fn route(&self, headers: &[Header<'_>], sticky_cookie: Option<&str>) -> Route {
        if let Some(m) = &self.matcher
            && m.matches(headers)
        {
            return Route {
                slot: self.split.canary(),
                set_sticky: false,
            };
        }
        if let Some(cookie) = sticky_cookie
            && let Some(slot) = cookie_value(headers, cookie).and_then(parse_slot)
            && self.split.weight_of(slot).percent() > 0
        {
            return Route {
                slot,
                set_sticky: false,
            };
        }
        Route {
            slot: self.weighted(),
            set_sticky: sticky_cookie.is_some(),
        }
    }

    /// A weighted choice that is exact over time: of every 100 consecutive
    /// weighted choices under one split, exactly `canary_percent` go to the
    /// canary, spread evenly (a Bresenham line over a shared counter).
    pub(crate) fn weighted(&self) -> Slot {
        let w = self.canary_percent;
        if w == 0 {
            return self.split.stable();
        }
        if w >= 100 {
            return self.split.canary();
        }
        let k = self.sequence.fetch_add(1, Ordering::Relaxed) % 100;
        if (k * w) % 100 + w >= 100 {
            self.split.canary()
        } else {
            self.split.stable()
        }
    }
}

/// The region weights in force, compiled for the request path: a table
/// of 100 region indexes in which each region appears as often as its
/// percentage, spread evenly, walked by a shared counter. Replaced whole
/// (through an `ArcSwap`) on every change, so one request sees one set of
/// weights.
#[derive(Debug)]
pub(crate) struct RegionPlan {
    /// The weights as last set through the region router; `None` while
    /// the builder's initial weights are in force.
    pub(crate) set: Option<RegionWeights>,
    /// The share of each declared region, by index.
    pub(crate) percents: Box<[u8]>,
    /// The one region serving, when only one does (no counter to touch).
    only: Option<u8>,
    table: [u8; 100],
    /// Choices made under these weights.
    sequence: AtomicU64,
}

impl RegionPlan {
    /// Compiles `weights` over the declared `regions` (a region not listed
    /// gets 0). `set`: whether these weights were set through the region
    /// router rather than taken from the builder.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming a listed region that is not declared.
    pub(crate) fn new(regions: &[RegionName], weights: &RegionWeights, set: bool) -> Result<Self> {
        for (name, _) in weights.iter() {
            if !regions.contains(name) {
                let known: Vec<&str> = regions.iter().map(RegionName::as_str).collect();
                return Err(Error::invalid(
                    format!("region weights: {name}"),
                    format!(
                        "is not a region of this proxy (it has: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        let percents: Box<[u8]> = regions.iter().map(|r| weights.get(r)).collect();
        // Smooth weighted round-robin (nginx's), run once over 100 choices:
        // each region comes up exactly `percent` times, evenly spread.
        let mut current: Vec<i32> = vec![0; percents.len()];
        let mut table = [0u8; 100];
        for entry in &mut table {
            let mut best = 0;
            for (i, p) in percents.iter().enumerate() {
                current[i] += i32::from(*p);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= 100;
            *entry = u8::try_from(best).unwrap_or(u8::MAX);
        }
        let serving: Vec<usize> = (0..percents.len()).filter(|&i| percents[i] > 0).collect();
        let only = match serving.as_slice() {
            [one] => u8::try_from(*one).ok(),
            _ => None,
        };
        Ok(RegionPlan {
            set: set.then(|| weights.clone()),
            percents,
            only,
            table,
            sequence: AtomicU64::new(0),
        })
    }

    /// The region index for the next request: of every 100 consecutive
    /// choices, exactly each region's percentage, evenly spread.
    pub(crate) fn choose(&self) -> usize {
        if let Some(only) = self.only {
            return usize::from(only);
        }
        let k = self.sequence.fetch_add(1, Ordering::Relaxed) % 100;
        usize::from(self.table[k as usize])
    }

    /// The other serving regions, in declaration order after `failed`
    /// (wrapping round): where a request goes when `failed` cannot serve it.
    pub(crate) fn fallbacks(&self, failed: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.percents.len();
        (1..n)
            .map(move |k| (failed + k) % n)
            .filter(|&i| self.percents[i] > 0)
    }
}

fn parse_slot(s: &str) -> Option<Slot> {
    match s {
        "blue" => Some(Slot::Blue),
        "green" => Some(Slot::Green),
        _ => None,
    }
}

/// Picks the listed endpoint with the fewest requests in flight, skipping
/// `exclude`; ties go round-robin from a rotating start. `rr` is the
/// slot's rotation counter. Returns the endpoint already counted as in
/// flight, or `None` when no endpoint qualifies.
pub(crate) fn least_outstanding(
    list: &[Arc<Upstream>],
    rr: &AtomicUsize,
    exclude: Option<&Arc<Upstream>>,
) -> Option<Arc<Upstream>> {
    let n = list.len();
    if n == 0 {
        return None;
    }
    let start = if n == 1 {
        0
    } else {
        rr.fetch_add(1, Ordering::Relaxed) % n
    };
    let mut best: Option<&Arc<Upstream>> = None;
    let mut best_load = usize::MAX;
    for k in 0..n {
        let candidate = &list[(start + k) % n];
        if exclude.is_some_and(|e| Arc::ptr_eq(e, candidate)) {
            continue;
        }
        let load = candidate.in_flight();
        if load < best_load {
            best = Some(candidate);
            best_load = load;
            if load == 0 {
                break;
            }
        }
    }
    best.cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::test_headers as headers;

    fn count_canary(state: &SplitState, n: usize) -> usize {
        (0..n)
            .filter(|_| state.weighted() == state.split.canary())
            .count()
    }

    #[test]
    fn weighted_choice_is_exact_over_10k_choices() {
        for w in [0u8, 1, 5, 25, 33, 50, 99, 100] {
            let state = SplitState::new(&TrafficSplit::new(Slot::Blue, w).unwrap()).unwrap();
            assert_eq!(count_canary(&state, 10_000), usize::from(w) * 100, "{w} %");
        }
    }

    #[test]
    fn weighted_choice_is_spread_evenly() {
        let state = SplitState::new(&TrafficSplit::new(Slot::Green, 5).unwrap()).unwrap();
        // Every window of 20 consecutive choices holds exactly one canary.
        let picks: Vec<bool> = (0..1000).map(|_| state.weighted() == Slot::Blue).collect();
        for window in picks.windows(20) {
            assert_eq!(window.iter().filter(|c| **c).count(), 1);
        }
    }

    #[test]
    fn match_rules_pin_to_canary() {
        let split = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Header {
            name: "X-Canary".into(),
            value: "yes".into(),
        });
        let state = SplitState::new(&split).unwrap();
        assert_eq!(
            state.route(&headers(&[("x-canary", "yes")]), None).slot,
            Slot::Green
        );
        assert_eq!(
            state.route(&headers(&[("x-canary", "no")]), None).slot,
            Slot::Blue
        );
        assert_eq!(state.route(&headers(&[]), None).slot, Slot::Blue);

        let split = TrafficSplit::all_to(Slot::Green).with_canary_match(RequestMatch::Cookie {
            name: "beta".into(),
            value: "1".into(),
        });
        let state = SplitState::new(&split).unwrap();
        let with = headers(&[("cookie", "a=b; beta=1; c=d")]);
        assert_eq!(state.route(&with, None).slot, Slot::Blue);
        let without = headers(&[("cookie", "beta=2")]);
        assert_eq!(state.route(&without, None).slot, Slot::Green);
    }

    #[test]
    fn invalid_match_rules_are_refused() {
        let bad = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Header {
            name: "bad header".into(),
            value: "1".into(),
        });
        let err = SplitState::new(&bad).unwrap_err();
        assert!(
            err.to_string().contains("canary_match.header.name"),
            "{err}"
        );
        let bad = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Cookie {
            name: "ok".into(),
            value: "a;b".into(),
        });
        let err = SplitState::new(&bad).unwrap_err();
        assert!(
            err.to_string().contains("canary_match.cookie.value"),
            "{err}"
        );
    }

    #[test]
    fn sticky_cookie_keeps_slot_while_it_has_weight() {
        let state = SplitState::new(&TrafficSplit::new(Slot::Blue, 10).unwrap()).unwrap();
        let green = headers(&[("cookie", "atlas=green")]);
        for _ in 0..50 {
            let r = state.route(&green, Some("atlas"));
            assert_eq!(
                r,
                Route {
                    slot: Slot::Green,
                    set_sticky: false
                }
            );
        }
        let none = headers(&[]);
        assert!(state.route(&none, Some("atlas")).set_sticky);
        assert!(!state.route(&none, None).set_sticky);
        // Green at 0 %: the cookie no longer binds.
        let state = SplitState::new(&TrafficSplit::all_to(Slot::Blue)).unwrap();
        let r = state.route(&green, Some("atlas"));
        assert_eq!(
            r,
            Route {
                slot: Slot::Blue,
                set_sticky: true
            }
        );
    }

    fn regions(names: &[&str]) -> Vec<RegionName> {
        names.iter().map(|n| RegionName::new(*n).unwrap()).collect()
    }

    #[test]
    fn region_choice_is_exact_and_spread_over_every_100() {
        let names = regions(&["a", "b", "c"]);
        let w = RegionWeights::new([
            (names[0].clone(), 40),
            (names[1].clone(), 35),
            (names[2].clone(), 25),
        ])
        .unwrap();
        let plan = RegionPlan::new(&names, &w, true).unwrap();
        let mut counts = [0usize; 3];
        let picks: Vec<usize> = (0..10_000).map(|_| plan.choose()).collect();
        for &p in &picks {
            counts[p] += 1;
        }
        assert_eq!(counts, [4000, 3500, 2500]);
        // Evenly spread: no region waits more than a few choices for its turn.
        for window in picks.windows(5) {
            assert!(window.contains(&0), "{window:?}");
        }
        assert_eq!(plan.fallbacks(0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(plan.fallbacks(2).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn regions_at_zero_are_never_chosen_nor_fallen_back_to() {
        let names = regions(&["a", "b", "c"]);
        let w = RegionWeights::new([(names[0].clone(), 0), (names[2].clone(), 100)]).unwrap();
        let plan = RegionPlan::new(&names, &w, true).unwrap();
        assert!((0..500).all(|_| plan.choose() == 2));
        assert_eq!(plan.fallbacks(2).count(), 0);
        assert_eq!(plan.set, Some(w));
    }

    #[test]
    fn unknown_regions_are_refused_by_name() {
        let names = regions(&["a", "b"]);
        let w = RegionWeights::all_to(RegionName::new("zz").unwrap());
        let err = RegionPlan::new(&names, &w, true).unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("zz"), "{err}");
        assert!(err.to_string().contains("a, b"), "{err}");
        let err = RegionPlan::new(&[], &w, true).unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn cookie_parsing() {
        let h = headers(&[("cookie", "a=1"), ("cookie", " b = \"two\" ;c=3")]);
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        assert_eq!(cookie_value(&h, "b"), Some("two"));
        assert_eq!(cookie_value(&h, "c"), Some("3"));
        assert_eq!(cookie_value(&h, "d"), None);
    }
}
