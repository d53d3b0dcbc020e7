//! Per-slot proxy metrics: lifetime counters for Prometheus and a sliding
//! window of time-bucketed latency histograms for analysis; per-region
//! lifetime counters when the router has regions.
//!
//! The hot path is a handful of relaxed atomic increments per request: no
//! lock, no allocation. The window is a ring of buckets, each covering a
//! fixed slice of time (1 s for the default 60 s window) and holding
//! per-status-class counts plus a log-scale latency histogram with 16 bins
//! per power of two (bins are at most 1/16 = 6.25 % wide, so a reported
//! percentile, taken at the middle of its bin, is within about 3 % of the
//! true value).

use std::fmt::Write as _;
use std::panic::RefUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atlas_core::{
    Error, Measurement, MetricProvider, MetricQuery, Result, ServiceName, Slot, TrafficSplit,
};

/// Number of log-scale latency bins: exact below 16 µs, then 16 bins per
/// power of two up to 2^36 µs (about 19 hours); slower requests land in the
/// last bin.
const BINS: usize = 16 + 32 * 16;

/// Marks a window bucket that one thread is clearing for reuse.
const RESETTING: u64 = u64::MAX;

/// Upper bounds, in microseconds, of the Prometheus histogram buckets
/// (`le` labels); the last, implicit bucket is `+Inf`.
const LE_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// The longest sliding window a router accepts.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How many buckets a window is cut into at most; windows longer than 60 s
/// get wider buckets, so memory stays fixed whatever the window.
const MAX_WINDOW_BUCKETS: u64 = 60;

/// Why the proxy answered a request itself instead of relaying an
/// upstream's response. Each counts as an error in `error_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyFailure {
    /// The chosen slot had no endpoint (503).
    NoEndpoint,
    /// No connection could be made to an upstream (502).
    Unreachable,
    /// The upstream connection failed after the request was sent, or the
    /// response body broke off (502, or a truncated response).
    UpstreamFailed,
    /// The upstream sent no response headers within the response timeout (504).
    Timeout,
}

impl ProxyFailure {
    const ALL: [ProxyFailure; 4] = [
        ProxyFailure::NoEndpoint,
        ProxyFailure::Unreachable,
        ProxyFailure::UpstreamFailed,
        ProxyFailure::Timeout,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            ProxyFailure::NoEndpoint => "no_endpoint",
            ProxyFailure::Unreachable => "upstream_unreachable",
            ProxyFailure::UpstreamFailed => "upstream_failed",
            ProxyFailure::Timeout => "upstream_timeout",
        }
    }
}

/// How one request ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered with this status code.
    Status(u16),
    /// The proxy answered with an error of its own.
    Failed(ProxyFailure),
}

/// Index of a status class in the per-class arrays: 0 = 1xx … 4 = 5xx.
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

const CLASS_LABELS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The window slot that counts proxy-generated errors, after the 5 classes.
const PROXY_ERROR: usize = 5;

fn bin_of(micros: u64) -> usize {
    if micros < 16 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    let sub = ((micros >> (octave - 4)) & 15) as usize;
    (16 + (octave - 4) * 16 + sub).min(BINS - 1)
}

/// The middle of bin `b`, in microseconds.
fn bin_mid(b: usize) -> f64 {
    if b < 16 {
        return b as f64;
    }
    let octave = (b - 16) / 16 + 4;
    let sub = ((b - 16) % 16) as u64;
    let lo = (16 + sub) << (octave - 4);
    let width = 1u64 << (octave - 4);
    lo as f64 + width as f64 / 2.0
}

struct Bucket {
    /// `epoch + 1` of the time slice this bucket holds, 0 if never used,
    /// [`RESETTING`] while being cleared.
    stamp: AtomicU64,
    /// Responses by class (1xx … 5xx), then proxy errors.
    outcomes: [AtomicU64; 6],
    bins: [AtomicU64; BINS],
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            stamp: AtomicU64::new(0),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            bins: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn clear(&self) {
        for c in &self.outcomes {
            c.store(0, Ordering::Relaxed);
        }
        for b in &self.bins {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// Lifetime counters of one slot, for the Prometheus exposition.
struct Totals {
    responses: [AtomicU64; 5],
    failures: [AtomicU64; 4],
    retries: AtomicU64,
    /// Connections switched to another protocol: all, still open, and
    /// closed by a cutover's drain time.
    upgraded: AtomicU64,
    upgraded_open: AtomicU64,
    upgraded_drained: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// Non-cumulative counts per `le` bucket, the last one being `+Inf`.
    latency_le: [AtomicU64; LE_MICROS.len() + 1],
}

impl Totals {
    fn new() -> Self {
        Totals {
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: AtomicU64::new(0),
            upgraded: AtomicU64::new(0),
            upgraded_open: AtomicU64::new(0),
            upgraded_drained: AtomicU64::new(0),
            latency_sum_micros: AtomicU64::new(0),
            latency_le: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Lifetime counters of one region of a router with regions: requests it
/// served by outcome, and requests it could not serve that another region
/// took (fallbacks). The same relaxed increments as the slot counters.
pub(crate) struct RegionCounters {
    responses: [AtomicU64; 5],
    failures: [AtomicU64; 4],
    fallbacks: AtomicU64,
}

impl RegionCounters {
    pub(crate) fn new() -> Self {
        RegionCounters {
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Counts one finished request the region served (or failed).
    pub(crate) fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Status(code) => &self.responses[class_index(code)],
            Outcome::Failed(failure) => &self.failures[failure.index()],
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request the region was chosen for but could not serve,
    /// sent to another region.
    pub(crate) fn record_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    fn requests(&self) -> u64 {
        self.responses
            .iter()
            .chain(&self.failures)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// What the exposition shows of one region.
pub(crate) struct RegionLine<'a> {
    pub(crate) name: &'a str,
    /// Its share in force, in percent.
    pub(crate) weight: u8,
    pub(crate) counters: &'a RegionCounters,
    /// Endpoints listed in blue and green.
    pub(crate) endpoints: [usize; 2],
}

struct SlotMetrics {
    totals: Totals,
    ring: Box<[Bucket]>,
}

/// The metrics store shared by the request path, the admin endpoint and
/// [`ProxyMetrics`].
pub(crate) struct MetricsCore {
    start: Instant,
    window: Duration,
    bucket_ms: u64,
    window_buckets: u64,
    slots: [SlotMetrics; 2],
    unrouted: AtomicU64,
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::Blue => 0,
        Slot::Green => 1,
    }
}

impl MetricsCore {
    /// A store whose sliding window is `window` (already validated: 1 s to
    /// [`MAX_WINDOW`]).
    pub(crate) fn new(window: Duration) -> Self {
        let window_ms = window.as_millis().max(1) as u64;
        let bucket_ms = window_ms.div_ceil(MAX_WINDOW_BUCKETS).max(1000);
        let window_buckets = window_ms.div_ceil(bucket_ms).max(1);
        // One spare bucket: the slice that starts next reuses the bucket that
        // just left the window, never one still inside it.
        let ring_len = window_buckets + 1;
        let slot = || SlotMetrics {
            totals: Totals::new(),
            ring: (0..ring_len).map(|_| Bucket::new()).collect(),
        };
        MetricsCore {
            start: Instant::now(),
            window,
            bucket_ms,
            window_buckets,
            slots: [slot(), slot()],
            unrouted: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Counts one finished request of `slot`. `latency` is given for
    /// responses relayed from an upstream, never for the proxy's own errors.
    pub(crate) fn record(&self, slot: Slot, outcome: Outcome, latency: Option<Duration>) {
        self.record_at(self.now_ms(), slot, outcome, latency);
    }

    fn record_at(&self, now_ms: u64, slot: Slot, outcome: Outcome, latency: Option<Duration>) {
        let m = &self.slots[slot_index(slot)];
        let window_index = match outcome {
            Outcome::Status(code) => {
                let class = class_index(code);
                m.totals.responses[class].fetch_add(1, Ordering::Relaxed);
                class
            }
            Outcome::Failed(failure) => {
                m.totals.failures[failure.index()].fetch_add(1, Ordering::Relaxed);
                PROXY_ERROR
            }
        };
        let micros = latency.map(|l| l.as_micros().min(u128::from(u64::MAX)) as u64);
        if let Some(us) = micros {
            m.totals.latency_sum_micros.fetch_add(us, Ordering::Relaxed);
            let le = LE_MICROS
                .iter()
                .position(|&bound| us <= bound)
                .unwrap_or(LE_MICROS.len());
            m.totals.latency_le[le].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(bucket) = self.bucket_for(m, now_ms / self.bucket_ms) {
            bucket.outcomes[window_index].fetch_add(1, Ordering::Relaxed);
            if let Some(us) = micros {
                bucket.bins[bin_of(us)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a retry on another replica of `slot`.
    pub(crate) fn record_retry(&self, slot: Slot) {
        self.slots[slot_index(slot)]
            .totals
            .retries
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection of `slot` switched to another protocol.
    pub(crate) fn record_upgrade(&self, slot: Slot) {
        let t = &self.slots[slot_index(slot)].totals;
        t.upgraded.fetch_add(1, Ordering::Relaxed);
        t.upgraded_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the end of an upgraded connection of `slot`, `drained` when
    /// a cutover's drain time closed it.
    pub(crate) fn record_upgrade_end(&self, slot: Slot, drained: bool) {
        let t = &self.slots[slot_index(slot)].totals;
        t.upgraded_open.fetch_sub(1, Ordering::Relaxed);
        if drained {
            t.upgraded_drained.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request refused because no split was set.
    pub(crate) fn record_unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }

    /// The bucket for time slice `epoch`, cleared first if it still holds
    /// an older slice; `None` for a sample older than the bucket's slice
    /// (a thread that stalled for a whole window).
    fn bucket_for<'a>(&self, m: &'a SlotMetrics, epoch: u64) -> Option<&'a Bucket> {
        let bucket = &m.ring[(epoch % m.ring.len() as u64) as usize];
        let want = epoch + 1;
        loop {
            let stamp = bucket.stamp.load(Ordering::Acquire);
            if stamp == want {
                return Some(bucket);
            }
            if stamp == RESETTING {
                // Another thread is clearing the bucket: a few hundred
                // nanoseconds, once per bucket per slice.
                std::hint::spin_loop();
                continue;
            }
            if stamp > want {
                return None;
            }
            if bucket
                .stamp
                .compare_exchange(stamp, RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                bucket.clear();
                bucket.stamp.store(want, Ordering::Release);
                return Some(bucket);
            }
        }
    }

    /// Aggregates the last `window` (capped by the sliding window) of `slot`.
    /// The sliding window kept.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn window_stats(&self, slot: Slot, window: Duration) -> WindowStats {
        self.window_stats_at(self.now_ms(), slot, window)
    }

    fn window_stats_at(&self, now_ms: u64, slot: Slot, window: Duration) -> WindowStats {
        let m = &self.slots[slot_index(slot)];
        let window_ms = (window.min(self.window).as_millis() as u64).max(1);
        let n = window_ms
            .div_ceil(self.bucket_ms)
            .clamp(1, self.window_buckets);
        let epoch = now_ms / self.bucket_ms;
        let first = epoch.saturating_sub(n - 1);
        let mut outcomes = [0u64; 6];
        let mut bins = [0u64; BINS];
        for e in first..=epoch {
            let bucket = &m.ring[(e % m.ring.len() as u64) as usize];
            if bucket.stamp.load(Ordering::Acquire) != e + 1 {
                continue;
            }
            for (sum, c) in outcomes.iter_mut().zip(&bucket.outcomes) {
                *sum += c.load(Ordering::Relaxed);
            }
            for (sum, c) in bins.iter_mut().zip(&bucket.bins) {
                *sum += c.load(Ordering::Relaxed);
            }
        }
        // The newest slice is still filling: the time covered is the full
        // older slices plus the elapsed part of the newest, and never more
        // than the router has been up.
        let covered_ms = ((n - 1) * self.bucket_ms + now_ms % self.bucket_ms)
            .min(now_ms)
            .max(1);
        let latencies: u64 = bins.iter().sum();
        let quantile = |q: f64| -> Option<Duration> {
            if latencies == 0 {
                return None;
            }
            let rank = ((q * latencies as f64).ceil() as u64).clamp(1, latencies);
            let mut seen = 0;
            for (b, count) in bins.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return Some(Duration::from_secs_f64(bin_mid(b) / 1e6));
                }
            }
            None
        };
        WindowStats {
            slot,
            covered: Duration::from_millis(covered_ms),
            requests: outcomes.iter().sum(),
            informational: outcomes[0],
            successful: outcomes[1],
            redirects: outcomes[2],
            client_errors: outcomes[3],
            server_errors: outcomes[4],
            proxy_errors: outcomes[PROXY_ERROR],
            latency_p50: quantile(0.50),
            latency_p95: quantile(0.95),
            latency_p99: quantile(0.99),
        }
    }
}

/// What one slot served over a recent window, from the proxy's sliding
/// window ([`ProxyMetrics::window_stats`]).
///
/// Latency covers responses relayed from upstreams, from the moment the
/// proxy read the request head until the response body was fully sent (or
/// the client went away); the proxy's own error responses have no latency.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WindowStats {
    /// The slot these numbers are for.
    pub slot: Slot,
    /// The time the numbers cover: the asked-for window, rounded to whole
    /// buckets, capped by the sliding window and by the router's uptime.
    pub covered: Duration,
    /// Requests that finished in the window, including proxy errors.
    pub requests: u64,
    /// Upstream responses with a 1xx status.
    pub informational: u64,
    /// Upstream responses with a 2xx status.
    pub successful: u64,
    /// Upstream responses with a 3xx status.
    pub redirects: u64,
    /// Upstream responses with a 4xx status.
    pub client_errors: u64,
    /// Upstream responses with a 5xx status.
    pub server_errors: u64,
    /// Responses the proxy generated itself: 502 (upstream unreachable or
    /// failed), 503 (no endpoint), 504 (upstream timeout), and responses
    /// whose upstream body broke off.
    pub proxy_errors: u64,
    /// Median latency, `None` without relayed responses.
    pub latency_p50: Option<Duration>,
    /// 95th percentile latency, `None` without relayed responses.
    pub latency_p95: Option<Duration>,
    /// 99th percentile latency, `None` without relayed responses.
    pub latency_p99: Option<Duration>,
}

impl WindowStats {
    /// `(5xx + proxy errors) / requests`, `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| (self.server_errors + self.proxy_errors) as f64 / self.requests as f64)
    }

    /// Requests per second over [`covered`](Self::covered).
    pub fn request_rate(&self) -> f64 {
        self.requests as f64 / self.covered.as_secs_f64()
    }
}

/// Atlas's proxy metrics as a [`MetricProvider`], and in Prometheus text
/// format. Obtained from [`ProxyRouter::metrics`](super::ProxyRouter::metrics);
/// cheap to clone, and usable after the router stopped.
///
/// # Queries
///
/// [`measure`](MetricProvider::measure) understands these names, each
/// optionally suffixed with `:blue`, `:green`, `:canary` or `:stable`:
///
/// | query | value |
/// |---|---|
/// | `request_rate` | requests per second |
/// | `request_count` | requests |
/// | `error_rate` | (5xx responses + proxy errors) / requests, 0–1 |
/// | `success_rate` | 1 − `error_rate` (4xx count as success, as in Flagger) |
/// | `latency_p50`, `latency_p95`, `latency_p99` | seconds |
///
/// Without a suffix the slot is the canary. `canary` and `stable` resolve
/// through the query's `args` (`args["canary"]`, `args["stable"]`, which
/// the engine sets to `blue`/`green`) or, when the args lack them, through
/// the split in force. The window is [`MetricQuery::window`] capped by the
/// router's sliding window (default 60 s).
///
/// Ratios and percentiles of a window without requests are
/// [`Measurement::NoData`], never 0; `request_count` and `request_rate`
/// are then 0.
///
/// # Errors
///
/// [`Error::InvalidInput`] for an unknown query or slot (the message names
/// it), a zero window, or a `canary`/`stable` slot that neither the args
/// nor a split define; [`Error::NotFound`] when `args["service"]` names
/// a service the router does not serve. On a router with services added
/// ([`ProxyRouter::add_service`](super::ProxyRouter::add_service)),
/// `args["service"]` picks the service measured (the router's own when
/// absent; required on a router without a service of its own).
#[derive(Clone)]
pub struct ProxyMetrics {
    state: Arc<dyn RouterState>,
}

/// What [`ProxyMetrics`] reads of a router besides its counters: the
/// service, the split in force and the endpoints each slot lists.
///
/// The router's shared state implements it. Reading the router through
/// this trait keeps its types out of this module, so the router depends on
/// the metrics and never the other way round. The `RefUnwindSafe` bound
/// keeps [`ProxyMetrics`] unwind-safe for callers that hold it across
/// `catch_unwind`.
pub(crate) trait RouterState: Send + Sync + RefUnwindSafe {
    /// The service the router serves, a label on every metric.
    fn service_name(&self) -> &ServiceName;
    /// The router's counters and sliding window.
    fn counters(&self) -> &MetricsCore;
    /// The split in force, if one was set.
    fn split_in_force(&self) -> Option<TrafficSplit>;
    /// Calls `visit` with the region (in a router with regions), the
    /// replica name and the requests in flight of each endpoint of `slot`
    /// that receives new requests.
    fn visit_endpoints(&self, slot: Slot, visit: &mut dyn FnMut(Option<&str>, &str, usize));
    /// Calls `visit` for each declared region, in declaration order (not
    /// at all in a router without regions).
    fn visit_regions(&self, visit: &mut dyn FnMut(RegionLine<'_>));
    /// Calls `visit` with the file and the `notAfter` (seconds since the
    /// Unix epoch) of each TLS certificate served.
    fn visit_certificates(&self, visit: &mut dyn FnMut(&str, i64));
    /// Whether the router serves a service of its own (the one
    /// [`service_name`](Self::service_name) names), or only those added to
    /// it.
    fn serves_own(&self) -> bool;
    /// The services added to the router, in the order added.
    fn added_services(&self) -> Vec<Arc<dyn RouterState>>;
    /// The requests no route matched, on a router without a service of its
    /// own (`None` on one that serves them).
    fn unmatched(&self) -> Option<u64>;
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetrics")
            .field("service", self.state.service_name())
            .field("window", &self.state.counters().window)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
enum QueryKind {
    RequestRate,
    RequestCount,
    ErrorRate,
    SuccessRate,
    LatencyP50,
    LatencyP95,
    LatencyP99,
}

const QUERY_NAMES: &str =
    "request_rate, request_count, error_rate, success_rate, latency_p50, latency_p95, latency_p99";

impl ProxyMetrics {
    /// Metrics that read `state`, a router's shared state.
    pub(crate) fn new(state: Arc<dyn RouterState>) -> Self {
        ProxyMetrics { state }
    }

    /// The sliding window the router keeps.
    pub fn window(&self) -> Duration {
        self.state.counters().window
    }

    /// What `slot` served over the last `window` (capped by the sliding
    /// window).
    pub fn window_stats(&self, slot: Slot, window: Duration) -> WindowStats {
        self.state.counters().window_stats(slot, window)
    }

    /// All metrics in the Prometheus text exposition format (version
    /// 0.0.4), as the admin endpoint serves them at `/metrics`. On a router
    /// with services added, each family lists the router's own service
    /// (unless it has none) and every added service, told apart by the
    /// `service` label; the region and certificate families are the
    /// router's.
    ///
    /// | metric | type | labels |
    /// |---|---|---|
    /// | `atlas_proxy_requests_total` | counter | `service`, `slot` |
    /// | `atlas_proxy_responses_total` | counter | `service`, `slot`, `class` (`1xx`…`5xx`, upstream responses) |
    /// | `atlas_proxy_errors_total` | counter | `service`, `slot`, `reason` (`no_endpoint`, `upstream_unreachable`, `upstream_failed`, `upstream_timeout`) |
    /// | `atlas_proxy_upstream_retries_total` | counter | `service`, `slot` |
    /// | `atlas_proxy_unrouted_requests_total` | counter | `service` (503s before any split was set) |
    /// | `atlas_proxy_unmatched_requests_total` | counter | none (404s no service's route matched; only on a router without a service of its own) |
    /// | `atlas_proxy_upgraded_connections_total` | counter | `service`, `slot` (connections switched to another protocol, such as WebSocket) |
    /// | `atlas_proxy_upgraded_connections_open` | gauge | `service`, `slot` |
    /// | `atlas_proxy_upgraded_connections_drained_total` | counter | `service`, `slot` (closed by a cutover's drain time) |
    /// | `atlas_proxy_request_duration_seconds` | histogram | `service`, `slot` |
    /// | `atlas_proxy_request_duration_window_seconds` | summary | `service`, `slot`, `quantile` (0.5, 0.95, 0.99 over the sliding window, `NaN` without data; `_sum` and `_count` are lifetime totals, as in client_golang's summaries) |
    /// | `atlas_proxy_traffic_weight_ratio` | gauge | `service`, `slot` (absent before a split is set) |
    /// | `atlas_proxy_endpoints` | gauge | `service`, `slot` (all regions together) |
    /// | `atlas_proxy_endpoint_requests_in_flight` | gauge | `service`, `slot`, `replica`; also `region` in a router with regions |
    /// | `atlas_proxy_region_requests_total` | counter | `service`, `region` (only with regions; the region that served, its slots together) |
    /// | `atlas_proxy_region_responses_total` | counter | `service`, `region`, `class` |
    /// | `atlas_proxy_region_errors_total` | counter | `service`, `region`, `reason` (as `atlas_proxy_errors_total`) |
    /// | `atlas_proxy_region_fallbacks_total` | counter | `service`, `region` (requests the region was chosen for but had no endpoint or split for, served by another region) |
    /// | `atlas_proxy_region_weight_ratio` | gauge | `service`, `region` (the region weights in force) |
    /// | `atlas_proxy_region_endpoints` | gauge | `service`, `region`, `slot` |
    ///
    /// The `region` label takes only the regions declared on the builder
    /// (at most 32), so its values stay few.
    /// | `atlas_proxy_tls_certificate_expiry_timestamp_seconds` | gauge | `service`, `certificate` (the certificate file; only with TLS) |
    pub fn render_prometheus(&self) -> String {
        let state = &*self.state;
        let service = state.service_name().as_str();
        let mut out = String::with_capacity(8 * 1024);
        let slots = [Slot::Blue, Slot::Green];
        // The router's own service (unless it has none) and the services
        // added to it, each family listing all of them under one header.
        let mut states: Vec<Arc<dyn RouterState>> = Vec::new();
        if state.serves_own() {
            states.push(self.state.clone());
        }
        states.extend(state.added_services());
        let rows: Vec<(&str, &MetricsCore, &dyn RouterState, Slot)> = states
            .iter()
            .flat_map(|s| slots.map(|slot| (s.service_name().as_str(), s.counters(), &**s, slot)))
            .collect();

        header(
            &mut out,
            "atlas_proxy_requests_total",
            "counter",
            "Requests that finished, by slot, including the proxy's own error responses.",
        );
        for &(service, core, _, slot) in &rows {
            let t = &core.slots[slot_index(slot)].totals;
            let total: u64 = t
                .responses
                .iter()
                .chain(&t.failures)
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(
                out,
                "atlas_proxy_requests_total{{service=\"{service}\",slot=\"{slot}\"}} {total}"
            );
        }

        header(
            &mut out,
            "atlas_proxy_responses_total",
            "counter",
            "Responses relayed from upstreams, by slot and status class.",
        );
        for &(service, core, _, slot) in &rows {
            let t = &core.slots[slot_index(slot)].totals;
            for (class, c) in CLASS_LABELS.iter().zip(&t.responses) {
                let _ = writeln!(
                    out,
                    "atlas_proxy_responses_total{{service=\"{service}\",slot=\"{slot}\",class=\"{class}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }

        header(
            &mut out,
            "atlas_proxy_errors_total",
            "counter",
            "Error responses generated by the proxy itself (502, 503, 504), by slot and reason.",
        );
        for &(service, core, _, slot) in &rows {
            let t = &core.slots[slot_index(slot)].totals;
            for failure in ProxyFailure::ALL {
                let _ = writeln!(
                    out,
                    "atlas_proxy_errors_total{{service=\"{service}\",slot=\"{slot}\",reason=\"{}\"}} {}",
                    failure.label(),
                    t.failures[failure.index()].load(Ordering::Relaxed)
                );
            }
        }

        header(
            &mut out,
            "atlas_proxy_upstream_retries_total",
            "counter",
            "Requests retried on another replica after a failed upstream connection.",
        );
        for &(service, core, _, slot) in &rows {
            let t = &core.slots[slot_index(slot)].totals;
            let _ = writeln!(
                out,
                "atlas_proxy_upstream_retries_total{{service=\"{service}\",slot=\"{slot}\"}} {}",
                t.retries.load(Ordering::Relaxed)
            );
        }

        for (name, kind, help, value) in [
            (
                "atlas_proxy_upgraded_connections_total",
                "counter",
                "Connections switched to another protocol (WebSocket) after a 101.",
                (|t: &Totals| &t.upgraded) as fn(&Totals) -> &AtomicU64,
            ),
            (
                "atlas_proxy_upgraded_connections_open",
                "gauge",
                "Upgraded connections open now.",
                |t: &Totals| &t.upgraded_open,
            ),
            (
                "atlas_proxy_upgraded_connections_drained_total",
                "counter",
                "Upgraded connections closed by the drain time after their endpoint left the slot.",
                |t: &Totals| &t.upgraded_drained,
            ),
        ] {
            header(&mut out, name, kind, help);
            for &(service, core, _, slot) in &rows {
                let t = &core.slots[slot_index(slot)].totals;
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{service}\",slot=\"{slot}\"}} {}",
                    value(t).load(Ordering::Relaxed)
                );
            }
        }

        header(
            &mut out,
            "atlas_proxy_unrouted_requests_total",
            "counter",
            "Requests answered 503 because no traffic split was set.",
        );
        for row in &states {
            let _ = writeln!(
                out,
                "atlas_proxy_unrouted_requests_total{{service=\"{}\"}} {}",
                row.service_name(),
                row.counters().unrouted.load(Ordering::Relaxed)
            );
        }
        if let Some(unmatched) = state.unmatched() {
            header(
                &mut out,
                "atlas_proxy_unmatched_requests_total",
                "counter",
                "Requests answered 404 because no service's route matched their host and path.",
            );
            let _ = writeln!(out, "atlas_proxy_unmatched_requests_total {unmatched}");
        }

        header(
            &mut out,
            "atlas_proxy_request_duration_seconds",
            "histogram",
            "Latency of responses relayed from upstreams, until the body was sent.",
        );
        for &(service, core, _, slot) in &rows {
            let t = &core.slots[slot_index(slot)].totals;
            let mut cumulative = 0u64;
            for (i, c) in t.latency_le.iter().enumerate() {
                cumulative += c.load(Ordering::Relaxed);
                let le = match LE_MICROS.get(i) {
                    Some(us) => format_seconds(*us as f64 / 1e6),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "atlas_proxy_request_duration_seconds_bucket{{service=\"{service}\",slot=\"{slot}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = t.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "atlas_proxy_request_duration_seconds_sum{{service=\"{service}\",slot=\"{slot}\"}} {}",
                format_seconds(sum)
            );
            let _ = writeln!(
                out,
                "atlas_proxy_request_duration_seconds_count{{service=\"{service}\",slot=\"{slot}\"}} {cumulative}"
            );
        }

        header(
            &mut out,
            "atlas_proxy_request_duration_window_seconds",
            "summary",
            "Latency percentiles of relayed responses over the sliding window (NaN without data); sum and count are lifetime totals.",
        );
        for &(service, core, _, slot) in &rows {
            let t = &core.slots[slot_index(slot)].totals;
            let stats = core.window_stats(slot, core.window);
            for (q, v) in [
                ("0.5", stats.latency_p50),
                ("0.95", stats.latency_p95),
                ("0.99", stats.latency_p99),
            ] {
                let value = v.map_or_else(|| "NaN".to_owned(), |v| format_seconds(v.as_secs_f64()));
                let _ = writeln!(
                    out,
                    "atlas_proxy_request_duration_window_seconds{{service=\"{service}\",slot=\"{slot}\",quantile=\"{q}\"}} {value}"
                );
            }
            let count: u64 = t.latency_le.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let sum = t.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "atlas_proxy_request_duration_window_seconds_sum{{service=\"{service}\",slot=\"{slot}\"}} {}",
                format_seconds(sum)
            );
            let _ = writeln!(
                out,
                "atlas_proxy_request_duration_window_seconds_count{{service=\"{service}\",slot=\"{slot}\"}} {count}"
            );
        }

        header(
            &mut out,
            "atlas_proxy_traffic_weight_ratio",
            "gauge",
            "Share of weighted traffic each slot gets under the split in force.",
        );
        for &(service, _, row, slot) in &rows {
            if let Some(split) = row.split_in_force() {
                let _ = writeln!(
                    out,
                    "atlas_proxy_traffic_weight_ratio{{service=\"{service}\",slot=\"{slot}\"}} {}",
                    f64::from(split.weight_of(slot).percent()) / 100.0
                );
            }
        }

        header(
            &mut out,
            "atlas_proxy_endpoints",
            "gauge",
            "Endpoints receiving new requests, by slot.",
        );
        for &(service, _, row, slot) in &rows {
            let mut listed = 0usize;
            row.visit_endpoints(slot, &mut |_, _, _| listed += 1);
            let _ = writeln!(
                out,
                "atlas_proxy_endpoints{{service=\"{service}\",slot=\"{slot}\"}} {listed}"
            );
        }

        header(
            &mut out,
            "atlas_proxy_endpoint_requests_in_flight",
            "gauge",
            "Requests in flight per listed endpoint.",
        );
        for &(service, _, row, slot) in &rows {
            row.visit_endpoints(slot, &mut |region, replica, in_flight| {
                let region = region.map_or_else(String::new, |r| format!(",region=\"{r}\""));
                let _ = writeln!(
                    out,
                    "atlas_proxy_endpoint_requests_in_flight{{service=\"{service}\",slot=\"{slot}\"{region},replica=\"{}\"}} {in_flight}",
                    escape_label(replica)
                );
            });
        }

        render_regions(&mut out, state, service);

        let mut certificates = Vec::new();
        state.visit_certificates(&mut |file, not_after| {
            certificates.push((escape_label(file), not_after));
        });
        if !certificates.is_empty() {
            header(
                &mut out,
                "atlas_proxy_tls_certificate_expiry_timestamp_seconds",
                "gauge",
                "When each served TLS certificate expires (notAfter), in seconds since the Unix epoch.",
            );
            for (file, not_after) in certificates {
                let _ = writeln!(
                    out,
                    "atlas_proxy_tls_certificate_expiry_timestamp_seconds{{service=\"{service}\",certificate=\"{file}\"}} {not_after}"
                );
            }
        }
        out
    }

    /// The names of the services the router serves.
    fn served(&self) -> Vec<String> {
        let own = self
            .state
            .serves_own()
            .then(|| self.state.service_name().to_string());
        own.into_iter()
            .chain(
                self.state
                    .added_services()
                    .iter()
                    .map(|s| s.service_name().to_string()),
            )
            .collect()
    }

    fn resolve_slot(&self, query: &MetricQuery, selector: Option<&str>) -> Result<Slot> {
        let role = match selector {
            Some("blue") => return Ok(Slot::Blue),
            Some("green") => return Ok(Slot::Green),
            None | Some("canary") => "canary",
            Some("stable") => "stable",
            Some(other) => {
                return Err(Error::invalid(
                    "query",
                    format!(
                        "unknown slot {other:?} in {:?}; use blue, green, canary or stable",
                        query.query
                    ),
                ));
            }
        };
        if let Some(value) = query.args.get(role) {
            return match value.as_str() {
                "blue" => Ok(Slot::Blue),
                "green" => Ok(Slot::Green),
                other => Err(Error::invalid(
                    format!("query.args.{role}"),
                    format!("must be blue or green, got {other:?}"),
                )),
            };
        }
        match self.state.split_in_force() {
            Some(split) if role == "canary" => Ok(split.canary()),
            Some(split) => Ok(split.stable()),
            None => Err(Error::invalid(
                format!("query.args.{role}"),
                format!(
                    "{:?} has no slot suffix and the args name no {role} slot, and no split is set",
                    query.query
                ),
            )),
        }
    }
}

#[async_trait]
impl MetricProvider for ProxyMetrics {
    async fn measure(&self, query: &MetricQuery) -> Result<Measurement> {
        let text = query.query.trim();
        let (name, selector) = match text.split_once(':') {
            Some((name, slot)) => (name.trim(), Some(slot.trim())),
            None => (text, None),
        };
        let kind = match name {
            "request_rate" => QueryKind::RequestRate,
            "request_count" => QueryKind::RequestCount,
            "error_rate" => QueryKind::ErrorRate,
            "success_rate" => QueryKind::SuccessRate,
            "latency_p50" => QueryKind::LatencyP50,
            "latency_p95" => QueryKind::LatencyP95,
            "latency_p99" => QueryKind::LatencyP99,
            _ => {
                return Err(Error::invalid(
                    "query",
                    format!(
                        "unknown proxy metric query {text:?}; expected one of {QUERY_NAMES}, optionally suffixed with :blue, :green, :canary or :stable"
                    ),
                ));
            }
        };
        match query.args.get("service") {
            Some(service)
                if service != self.state.service_name().as_str() || !self.state.serves_own() =>
            {
                let added = self
                    .state
                    .added_services()
                    .into_iter()
                    .find(|s| s.service_name().as_str() == service);
                return match added {
                    Some(state) => ProxyMetrics::new(state).measure(query).await,
                    None => Err(Error::not_found(format!(
                        "proxy metrics of service {service:?} (this router serves {})",
                        self.served().join(", ")
                    ))),
                };
            }
            None if !self.state.serves_own() => {
                return Err(Error::invalid(
                    "query.args.service",
                    format!(
                        "this proxy has no service of its own; name one of: {}",
                        self.served().join(", ")
                    ),
                ));
            }
            _ => {}
        }
        if query.window.is_zero() {
            return Err(Error::invalid("query.window", "must be greater than zero"));
        }
        let slot = self.resolve_slot(query, selector)?;
        let stats = self.window_stats(slot, query.window);
        let measurement = match kind {
            QueryKind::RequestRate => Measurement::from_f64(stats.request_rate()),
            QueryKind::RequestCount => Measurement::Value(stats.requests as f64),
            QueryKind::ErrorRate => stats
                .error_rate()
                .map_or(Measurement::NoData, Measurement::from_f64),
            QueryKind::SuccessRate => stats
                .error_rate()
                .map_or(Measurement::NoData, |e| Measurement::from_f64(1.0 - e)),
            QueryKind::LatencyP50 => seconds(stats.latency_p50),
            QueryKind::LatencyP95 => seconds(stats.latency_p95),
            QueryKind::LatencyP99 => seconds(stats.latency_p99),
        };
        tracing::debug!(
            service = %self.state.service_name(),
            query = text,
            %slot,
            window = ?query.window,
            %measurement,
            "proxy metric measured"
        );
        Ok(measurement)
    }
}

/// The per-region families, in a router with regions. Region names are
/// DNS labels: nothing to escape.
fn render_regions(out: &mut String, state: &dyn RouterState, service: &str) {
    let mut families: [Vec<String>; 6] = Default::default();
    state.visit_regions(&mut |line| {
        let region = line.name;
        let c = line.counters;
        families[0].push(format!(
            "atlas_proxy_region_requests_total{{service=\"{service}\",region=\"{region}\"}} {}",
            c.requests()
        ));
        for (class, n) in CLASS_LABELS.iter().zip(&c.responses) {
            families[1].push(format!(
                "atlas_proxy_region_responses_total{{service=\"{service}\",region=\"{region}\",class=\"{class}\"}} {}",
                n.load(Ordering::Relaxed)
            ));
        }
        for failure in ProxyFailure::ALL {
            families[2].push(format!(
                "atlas_proxy_region_errors_total{{service=\"{service}\",region=\"{region}\",reason=\"{}\"}} {}",
                failure.label(),
                c.failures[failure.index()].load(Ordering::Relaxed)
            ));
        }
        families[3].push(format!(
            "atlas_proxy_region_fallbacks_total{{service=\"{service}\",region=\"{region}\"}} {}",
            c.fallbacks.load(Ordering::Relaxed)
        ));
        families[4].push(format!(
            "atlas_proxy_region_weight_ratio{{service=\"{service}\",region=\"{region}\"}} {}",
            f64::from(line.weight) / 100.0
        ));
        for (slot, listed) in [Slot::Blue, Slot::Green].iter().zip(line.endpoints) {
            families[5].push(format!(
                "atlas_proxy_region_endpoints{{service=\"{service}\",region=\"{region}\",slot=\"{slot}\"}} {listed}"
            ));
        }
    });
    if families[0].is_empty() {
        return;
    }
    let heads = [
        (
            "atlas_proxy_region_requests_total",
            "counter",
            "Requests that finished, by the region that served them.",
        ),
        (
            "atlas_proxy_region_responses_total",
            "counter",
            "Responses relayed from upstreams, by region and status class.",
        ),
        (
            "atlas_proxy_region_errors_total",
            "counter",
            "Error responses generated by the proxy itself, by region and reason.",
        ),
        (
            "atlas_proxy_region_fallbacks_total",
            "counter",
            "Requests a region was chosen for but could not serve (no endpoint or split), served by another region.",
        ),
        (
            "atlas_proxy_region_weight_ratio",
            "gauge",
            "Share of new requests each region gets under the region weights in force.",
        ),
        (
            "atlas_proxy_region_endpoints",
            "gauge",
            "Endpoints receiving new requests, by region and slot.",
        ),
    ];
    for ((name, kind, help), family) in heads.into_iter().zip(families) {
        header(out, name, kind, help);
        for line in family {
            out.push_str(&line);
            out.push('\n');
        }
    }
}

fn seconds(d: Option<Duration>) -> Measurement {
    d.map_or(Measurement::NoData, |d| {
        Measurement::from_f64(d.as_secs_f64())
    })
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A float as Prometheus expects it: shortest round-trip form.
fn format_seconds(v: f64) -> String {
    format!("{v}")
}

/// Escapes a label value per the text exposition format.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_monotonic_and_narrow() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            33,
            1000,
            65_535,
            1 << 20,
            1 << 35,
        ] {
            let b = bin_of(us);
            assert!(b >= last, "bin of {us} went backwards");
            last = b;
            let mid = bin_mid(b);
            let err = (mid - us as f64).abs() / (us.max(1) as f64);
            assert!(err <= 0.0625, "{us} µs reported as {mid}: {err}");
        }
        assert_eq!(bin_of(u64::MAX), BINS - 1);
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(302), 2);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(503), 4);
        assert_eq!(class_index(99), 0);
        assert_eq!(class_index(600), 4);
    }

    #[test]
    fn window_counts_only_recent_slices() {
        let core = MetricsCore::new(Duration::from_secs(10));
        assert_eq!(core.bucket_ms, 1000);
        assert_eq!(core.window_buckets, 10);
        let ms = Duration::from_millis;
        // t = 0.5 s: two 500s; t = 5.2 s: eight 200s.
        for _ in 0..2 {
            core.record_at(500, Slot::Blue, Outcome::Status(500), Some(ms(10)));
        }
        for _ in 0..8 {
            core.record_at(5_200, Slot::Blue, Outcome::Status(200), Some(ms(100)));
        }
        let s = core.window_stats_at(5_500, Slot::Blue, Duration::from_secs(10));
        assert_eq!(s.requests, 10);
        assert_eq!(s.error_rate(), Some(0.2));
        assert_eq!(s.covered, ms(5_500));
        // A 3 s window at 5.5 s holds slices 3, 4 and 5 only.
        let s = core.window_stats_at(5_500, Slot::Blue, Duration::from_secs(3));
        assert_eq!(s.requests, 8);
        assert_eq!(s.error_rate(), Some(0.0));
        assert_eq!(s.covered, ms(2_500));
        // At 10.9 s slice 0 has left the 10 s window.
        let s = core.window_stats_at(10_900, Slot::Blue, Duration::from_secs(60));
        assert_eq!(s.requests, 8);
        // At 15.3 s everything is gone, and the slot reads as no data.
        let s = core.window_stats_at(15_300, Slot::Blue, Duration::from_secs(10));
        assert_eq!(s.requests, 0);
        assert_eq!(s.error_rate(), None);
        assert_eq!(s.latency_p99, None);
        // The other slot never saw anything.
        assert_eq!(
            core.window_stats_at(5_500, Slot::Green, Duration::from_secs(10))
                .requests,
            0
        );
    }

    #[test]
    fn reused_buckets_are_cleared() {
        let core = MetricsCore::new(Duration::from_secs(5));
        core.record_at(
            1_000,
            Slot::Green,
            Outcome::Status(200),
            Some(Duration::from_millis(1)),
        );
        // 6 s later the same ring bucket is reused for slice 7.
        core.record_at(
            7_000,
            Slot::Green,
            Outcome::Failed(ProxyFailure::NoEndpoint),
            None,
        );
        let s = core.window_stats_at(7_100, Slot::Green, Duration::from_secs(5));
        assert_eq!(s.requests, 1);
        assert_eq!(s.proxy_errors, 1);
        assert_eq!(s.latency_p50, None);
        // A sample from a slice the bucket has moved past is dropped.
        core.record_at(1_500, Slot::Green, Outcome::Status(200), None);
        let s = core.window_stats_at(7_100, Slot::Green, Duration::from_secs(5));
        assert_eq!(s.requests, 1);
    }

    #[test]
    fn percentiles_follow_the_distribution() {
        let core = MetricsCore::new(Duration::from_secs(60));
        for i in 1..=1000u64 {
            core.record_at(
                2_000,
                Slot::Blue,
                Outcome::Status(200),
                Some(Duration::from_micros(i * 1000)),
            );
        }
        let s = core.window_stats_at(2_000, Slot::Blue, Duration::from_secs(60));
        let close = |got: Option<Duration>, want: f64| {
            let got = got.unwrap().as_secs_f64();
            assert!((got - want).abs() / want < 0.04, "got {got}, want {want}");
        };
        close(s.latency_p50, 0.5);
        close(s.latency_p95, 0.95);
        close(s.latency_p99, 0.99);
    }

    #[test]
    fn long_windows_use_wider_buckets() {
        let core = MetricsCore::new(Duration::from_secs(600));
        assert_eq!(core.bucket_ms, 10_000);
        assert_eq!(core.window_buckets, 60);
        assert_eq!(core.slots[0].ring.len(), 61);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
