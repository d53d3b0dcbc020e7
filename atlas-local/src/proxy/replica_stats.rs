//! Per-replica counters: how many requests each upstream endpoint served,
//! how long they took, how many failed. Lifetime counters only, a few
//! relaxed atomic increments per request; rates and percentiles over a
//! window are the difference of two [`ReplicaSnapshot`]s, which the reader
//! keeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latency bins: 4 per power of two of microseconds, up to 2^32 µs (over
/// an hour); slower requests land in the last bin. A percentile taken at
/// a bin's middle is within about 10 % of the true value.
const BINS_PER_OCTAVE: usize = 4;
const OCTAVES: usize = 32;
/// The number of latency bins of a [`ReplicaSnapshot`].
pub(crate) const LATENCY_BINS: usize = BINS_PER_OCTAVE * OCTAVES;

fn bin_of(micros: u64) -> usize {
    if micros == 0 {
        return 0;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    // The two bits below the leading one pick the quarter of the octave.
    let quarter = if octave >= 2 {
        ((micros >> (octave - 2)) & 3) as usize
    } else {
        ((micros << (2 - octave)) & 3) as usize
    };
    (octave * BINS_PER_OCTAVE + quarter).min(LATENCY_BINS - 1)
}

/// The middle of bin `b`, in microseconds.
fn bin_mid(b: usize) -> f64 {
    let octave = b / BINS_PER_OCTAVE;
    let quarter = (b % BINS_PER_OCTAVE) as f64;
    let low = 2f64.powi(octave as i32);
    low * (1.0 + (quarter + 0.5) / BINS_PER_OCTAVE as f64)
}

/// One upstream endpoint's lifetime counters.
pub(crate) struct ReplicaCounters {
    since: Instant,
    requests: AtomicU64,
    failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BINS],
}

impl ReplicaCounters {
    pub(crate) fn new() -> Self {
        ReplicaCounters {
            since: Instant::now(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one finished request: `latency` for a relayed response,
    /// `None` when the proxy answered with an error of its own.
    pub(crate) fn record(&self, latency: Option<Duration>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match latency {
            Some(l) => {
                let micros = l.as_micros().min(u128::from(u64::MAX)) as u64;
                self.latency[bin_of(micros)].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters now.
    pub(crate) fn snapshot(&self, replica: &str, in_flight: usize, open: usize) -> ReplicaSnapshot {
        ReplicaSnapshot {
            replica: replica.to_string(),
            since: self.since,
            taken: Instant::now(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            in_flight,
            open_connections: open,
        }
    }
}

/// One replica's counters as the proxy sees them at one moment; see
/// [`ProxyRouter::replica_snapshots`](super::ProxyRouter::replica_snapshots).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplicaSnapshot {
    /// The replica's name, as listed with the router.
    pub replica: String,
    /// When the proxy started counting for it (when it was listed).
    pub since: Instant,
    /// When this snapshot was taken.
    pub taken: Instant,
    /// Requests that finished, including those the proxy failed.
    pub requests: u64,
    /// Requests the proxy answered itself (502, 504) or whose response
    /// broke off.
    pub failures: u64,
    /// Relayed responses per latency bin (4 bins per power of two of
    /// microseconds).
    pub latency: Vec<u64>,
    /// Requests in flight to it now.
    pub in_flight: usize,
    /// Connections the proxy holds open to it now: one per request in
    /// flight plus the idle ones in its pool.
    pub open_connections: usize,
}

impl ReplicaSnapshot {
    /// Requests per second since `earlier` (a snapshot of the same
    /// replica), or since counting began without one.
    pub fn request_rate(&self, earlier: Option<&ReplicaSnapshot>) -> f64 {
        let (t0, n0) = earlier.map_or((self.since, 0), |e| (e.taken, e.requests));
        let secs = self.taken.saturating_duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.requests.saturating_sub(n0) as f64 / secs
    }

    /// The `q` quantile (0–1) of the latency of responses since `earlier`
    /// (or since counting began); `None` without responses.
    pub fn latency_quantile(&self, earlier: Option<&ReplicaSnapshot>, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.saturating_sub(earlier.and_then(|e| e.latency.get(i)).copied().unwrap_or(0))
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_secs_f64(bin_mid(b) / 1e6));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_monotone_and_their_middles_close() {
        let mut last = 0;
        for us in [1u64, 2, 3, 5, 8, 100, 1_000, 50_000, 200_000, 10_000_000] {
            let b = bin_of(us);
            assert!(b >= last, "bin of {us} went down");
            last = b;
            let mid = bin_mid(b);
            assert!(
                (mid - us as f64).abs() / us as f64 <= 0.25,
                "{us} µs lands in a bin centred at {mid}"
            );
        }
        assert_eq!(bin_of(u64::MAX), LATENCY_BINS - 1);
    }

    #[test]
    fn rates_and_quantiles_come_from_the_difference_of_snapshots() {
        let c = ReplicaCounters::new();
        for _ in 0..90 {
            c.record(Some(Duration::from_millis(10)));
        }
        for _ in 0..10 {
            c.record(Some(Duration::from_millis(200)));
        }
        c.record(None);
        let a = c.snapshot("r-0", 0, 0);
        assert_eq!((a.requests, a.failures), (101, 1));
        let p95 = a.latency_quantile(None, 0.95).unwrap();
        assert!(p95 > Duration::from_millis(150), "{p95:?}");
        let p50 = a.latency_quantile(None, 0.5).unwrap();
        assert!(p50 < Duration::from_millis(12), "{p50:?}");
        for _ in 0..10 {
            c.record(Some(Duration::from_millis(10)));
        }
        let b = c.snapshot("r-0", 1, 3);
        assert_eq!(b.requests - a.requests, 10);
        let since_a = b.latency_quantile(Some(&a), 0.95).unwrap();
        assert!(since_a < Duration::from_millis(12), "{since_a:?}");
        assert!(b.request_rate(Some(&a)) > 0.0);
        assert_eq!(b.latency_quantile(Some(&b), 0.95), None);
    }
}
