//! Choosing a slot for a request (split, match rule, sticky cookie) and an
//! endpoint within the slot (least outstanding requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

    #[test]
    fn cookie_parsing() {
        let h = headers(&[("cookie", "a=1"), ("cookie", " b = \"two\" ;c=3")]);
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        assert_eq!(cookie_value(&h, "b"), Some("two"));
        assert_eq!(cookie_value(&h, "c"), Some("3"));
        assert_eq!(cookie_value(&h, "d"), None);
    }
}
