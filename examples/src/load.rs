//! A steady HTTP load generator that classifies every response, for
//! judging zero-downtime claims.
//!
//! Each worker sends `GET /` over its own keep-alive connection pool, at a
//! fixed interval that [`Load::set_rate`] can change while it runs. A response counts as:
//!
//! - **served** when it is 2xx; the `x-app-version` header says which
//!   release answered;
//! - an **app error** when it is 5xx *with* `x-app-version`: the
//!   application itself answered with an error (a faulty release does
//!   that; Atlas's analysis is what catches it);
//! - **failed** otherwise: a connection error, a timeout, or a 5xx the
//!   application did not produce (the proxy's own 502/503). A zero-downtime
//!   rollout has zero of these.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Header the demo app sets to its version.
pub const VERSION_HEADER: &str = "x-app-version";

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// 2xx from this version.
    Served(String),
    /// 5xx from the application itself (this version).
    AppError(String),
    /// No usable answer from the application: what it was.
    Failed(String),
}

/// One request, kept when [`LoadConfig::record`] is on.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent.
    pub sent: SystemTime,
    /// How it ended.
    pub result: Classified,
}

/// Settings of a [`Load`].
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The address to send to (the proxy).
    pub target: SocketAddr,
    /// Concurrent workers.
    pub workers: usize,
    /// Requests per second in all (spread across workers).
    pub rate: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Keep every [`Sample`], for per-phase assertions.
    pub record: bool,
    /// The `Host` header to send (default: the target address), for a
    /// proxy that routes services by host name.
    pub host: Option<String>,
    /// Open a new connection for every request instead of keeping
    /// connections alive, to exercise the proxy's accepting.
    pub fresh_connections: bool,
}

impl LoadConfig {
    /// `rate` requests per second to `target` from 8 workers, 5 s timeout.
    pub fn new(target: SocketAddr, rate: u32) -> Self {
        LoadConfig {
            target,
            workers: 8,
            rate,
            timeout: Duration::from_secs(5),
            record: false,
            host: None,
            fresh_connections: false,
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    served: AtomicU64,
    app_errors: AtomicU64,
    failed: AtomicU64,
}

/// Totals so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadTotals {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub served: u64,
    /// 5xx answers from the application.
    pub app_errors: u64,
    /// Requests that got no answer from the application.
    pub failed: u64,
    /// Answers (2xx or app 5xx) per version.
    pub by_version: BTreeMap<String, u64>,
    /// The first few failures, for the report.
    pub failure_examples: Vec<String>,
}

struct Shared {
    counters: Counters,
    by_version: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
    /// Time between two requests of one worker, in nanoseconds; changed
    /// by [`Load::set_rate`].
    period_nanos: AtomicU64,
    workers: usize,
}

/// A running load; [`Load::stop`] ends it and returns the totals.
pub struct Load {
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts the workers.
    pub fn start(config: LoadConfig) -> Load {
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            by_version: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(Vec::new()),
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            period_nanos: AtomicU64::new(0),
            workers: config.workers.max(1),
        });
        let workers = shared.workers;
        let per_worker = per_worker_period(workers, config.rate);
        shared
            .period_nanos
            .store(per_worker.as_nanos() as u64, Ordering::Relaxed);
        let handles = (0..workers)
            .map(|i| {
                let shared = shared.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    // Stagger the workers so the load is smooth.
                    tokio::time::sleep(per_worker.mul_f64(i as f64 / workers as f64)).await;
                    worker(shared, config).await
                })
            })
            .collect();
        Load {
            shared,
            workers: handles,
            started: Instant::now(),
        }
    }

    /// Totals so far.
    pub fn totals(&self) -> LoadTotals {
        let c = &self.shared.counters;
        LoadTotals {
            sent: c.sent.load(Ordering::Relaxed),
            served: c.served.load(Ordering::Relaxed),
            app_errors: c.app_errors.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            by_version: self
                .shared
                .by_version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            failure_examples: self
                .shared
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Changes the rate (requests per second in all) from the next request
    /// of each worker on. A worker waits for each answer before it sends
    /// again, so the rate reached is at most `workers / latency`.
    pub fn set_rate(&self, rate: u32) {
        let period = per_worker_period(self.shared.workers, rate);
        self.shared
            .period_nanos
            .store(period.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the workers, waits for requests in flight, returns the totals
    /// and the samples (empty unless recording).
    pub async fn stop(self) -> (LoadTotals, Vec<Sample>) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        let samples = std::mem::take(
            &mut *self
                .shared
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let totals = Load {
            shared: self.shared,
            workers: Vec::new(),
            started: self.started,
        }
        .totals();
        (totals, samples)
    }
}

fn per_worker_period(workers: usize, rate: u32) -> Duration {
    Duration::from_secs_f64(workers as f64 / f64::from(rate.max(1)))
}

async fn worker(shared: Arc<Shared>, config: LoadConfig) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(30));
    if config.fresh_connections {
        builder.pool_max_idle_per_host(0);
    }
    let client: Client<HttpConnector, Empty<Bytes>> = builder.build(connector);
    let uri: hyper::Uri = format!("http://{}/", config.target)
        .parse()
        .expect("socket address forms a URI");
    // The first request goes at once, then one per period; a worker that
    // fell behind goes on from now rather than sending a burst.
    let mut next = tokio::time::Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        let period = Duration::from_nanos(shared.period_nanos.load(Ordering::Relaxed));
        next = (next + period).max(tokio::time::Instant::now());
        let sent = SystemTime::now();
        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(
            config.timeout,
            send(&client, uri.clone(), config.host.as_deref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Classified::Failed(format!("timed out after {:?}", config.timeout)),
        };
        record(&shared, &result);
        if config.record {
            shared
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Sample { sent, result });
        }
    }
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: hyper::Uri,
    host: Option<&str>,
) -> Classified {
    let mut request = hyper::Request::new(Empty::new());
    *request.uri_mut() = uri;
    if let Some(host) = host {
        match hyper::header::HeaderValue::from_str(host) {
            Ok(value) => {
                request.headers_mut().insert(hyper::header::HOST, value);
            }
            Err(_) => return Classified::Failed(format!("bad host {host:?}")),
        }
    }
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return Classified::Failed(format!("request error: {e}")),
    };
    let status = response.status();
    let version = response
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Read the whole body: a response cut short is a failure too.
    if let Err(e) = response.into_body().collect().await {
        return Classified::Failed(format!("body error after {status}: {e}"));
    }
    match (status.as_u16(), version) {
        (200..=299, Some(v)) => Classified::Served(v),
        (500..=599, Some(v)) => Classified::AppError(v),
        (code, v) => Classified::Failed(format!(
            "status {code} from {}",
            v.as_deref().unwrap_or("the proxy")
        )),
    }
}

fn record(shared: &Shared, result: &Classified) {
    let c = &shared.counters;
    match result {
        Classified::Served(v) | Classified::AppError(v) => {
            if matches!(result, Classified::Served(_)) {
                c.served.fetch_add(1, Ordering::Relaxed);
            } else {
                c.app_errors.fetch_add(1, Ordering::Relaxed);
            }
            *shared
                .by_version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(v.clone())
                .or_default() += 1;
        }
        Classified::Failed(why) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            let mut f = shared.failures.lock().unwrap_or_else(|p| p.into_inner());
            if f.len() < 10 {
                f.push(why.clone());
            }
        }
    }
}
