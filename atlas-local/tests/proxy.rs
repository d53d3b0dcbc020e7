//! The proxy router against small upstream servers started in the test, all
//! on 127.0.0.1: routing, balancing, draining, retries, headers, streaming,
//! metrics and the admin endpoint. Every wait is bounded.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_core::testing::conformance;
use atlas_core::{
    Endpoint, ErrorKind, Measurement, MetricProvider, MetricQuery, RequestMatch, ServiceName, Slot,
    TrafficRouter, TrafficSplit,
};
use atlas_local::proxy::{ProxyMetrics, ProxyRouter, ProxyRouterBuilder, SLOT_HEADER};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// Upper bound for any single wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed_unsync()
}

fn empty() -> TestBody {
    Empty::new().boxed_unsync()
}

// ---------------------------------------------------------------------------
// A small upstream that names itself in every response.

struct UpstreamState {
    name: String,
    /// Added before every response.
    delay: Duration,
    hits: AtomicUsize,
    /// Method, path and headers of every request received.
    seen: Mutex<Vec<(Method, String, HeaderMap)>>,
    /// `/hold` and `/stream-out` wait for a permit.
    release: Semaphore,
    /// Events: `arrived <path>`, `frame <len>`.
    events: mpsc::UnboundedSender<String>,
}

struct TestUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    async fn start(name: &str) -> Self {
        Self::with_delay(name, Duration::ZERO).await
    }

    async fn with_delay(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(UpstreamState {
            name: name.to_owned(),
            delay,
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            release: Semaphore::new(0),
            events: tx,
        });
        let for_task = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = for_task.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            state,
            events: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.state.name.clone(), self.addr)
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn release(&self, n: usize) {
        self.state.release.add_permits(n);
    }

    async fn next_event(&self) -> String {
        let mut rx = self.events.lock().await;
        bounded("upstream event", rx.recv())
            .await
            .expect("upstream event channel closed")
    }

    fn last_seen(&self) -> (Method, String, HeaderMap) {
        self.state
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    fn seen_methods(&self, method: &Method) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _, _)| m == method)
            .count()
    }
}

async fn upstream_handle(
    state: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    state
        .seen
        .lock()
        .unwrap()
        .push((req.method().clone(), path.clone(), req.headers().clone()));
    let _ = state.events.send(format!("arrived {path}"));
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let name = state.name.clone();
    let mut status = StatusCode::OK;
    let mut extra: Vec<(&'static str, &'static str)> = Vec::new();
    let body = if path == "/hold" {
        state.release.acquire().await.unwrap().forget();
        full(name)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        full(name)
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        full(name)
    } else if path == "/echo" || path == "/stream-in" {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                total += data.len();
                let _ = state.events.send(format!("frame {}", data.len()));
            }
        }
        full(format!("{name}:{total}"))
    } else if path == "/stream-out" {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first;")).await;
            state.release.acquire().await.unwrap().forget();
            let _ = tx.send(Bytes::from_static(b"second")).await;
        });
        channel_body(rx)
    } else if path == "/hop" {
        extra = vec![
            ("connection", "x-hop-response"),
            ("x-hop-response", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=\"x\""),
            ("x-end-to-end", "kept"),
        ];
        full(name)
    } else {
        full(name)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-upstream", state.name.parse().unwrap());
    for (k, v) in extra {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    Ok(response)
}

fn channel_body(rx: mpsc::Receiver<Bytes>) -> TestBody {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

// ---------------------------------------------------------------------------
// A client of the proxy.

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn slot(&self) -> &str {
        self.headers
            .get(SLOT_HEADER)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

#[derive(Clone)]
struct TestClient {
    inner: Client<HttpConnector, TestBody>,
    base: String,
}

impl TestClient {
    fn new(addr: SocketAddr) -> Self {
        TestClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).unwrap();
        let response = bounded("proxy request", self.inner.request(req))
            .await
            .expect("request to the proxy failed");
        let (parts, body) = response.into_parts();
        let body = bounded("proxy response body", body.collect())
            .await
            .expect("response body failed")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], empty()).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, empty()).await
    }

    /// Sends `n` GETs one after the other and counts the slots that served
    /// them, checking that each body names an upstream of that slot.
    async fn count_slots(&self, n: usize, blue: &[&str], green: &[&str]) -> (usize, usize) {
        let (mut b, mut g) = (0, 0);
        for _ in 0..n {
            let r = self.get("/").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            match r.slot() {
                "blue" => {
                    assert!(blue.contains(&r.body.as_str()), "blue served by {}", r.body);
                    b += 1;
                }
                "green" => {
                    assert!(
                        green.contains(&r.body.as_str()),
                        "green served by {}",
                        r.body
                    );
                    g += 1;
                }
                other => panic!("unexpected slot header {other:?}"),
            }
        }
        (b, g)
    }
}

fn service() -> ServiceName {
    ServiceName::new("shop").unwrap()
}

fn split(stable: Slot, canary: u8) -> TrafficSplit {
    TrafficSplit::new(stable, canary).unwrap()
}

/// A router for `shop` with the given endpoints, built from `builder`.
async fn router_from(
    builder: ProxyRouterBuilder,
    blue: &[&TestUpstream],
    green: &[&TestUpstream],
) -> ProxyRouter {
    let router = builder.build().await.unwrap();
    let eps = |ups: &[&TestUpstream]| ups.iter().map(|u| u.endpoint()).collect::<Vec<_>>();
    router
        .set_endpoints(&service(), Slot::Blue, &eps(blue))
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Green, &eps(green))
        .await
        .unwrap();
    router
}

async fn router(blue: &[&TestUpstream], green: &[&TestUpstream]) -> ProxyRouter {
    router_from(ProxyRouter::builder(service()), blue, green).await
}

/// Waits (bounded) until the metrics counted `n` requests for `slot`: the
/// proxy records a request when its response body ended, which may be just
/// after the client read the last byte.
async fn wait_for_requests(metrics: &ProxyMetrics, slot: Slot, n: u64) {
    bounded("metrics to catch up", async {
        while metrics.window_stats(slot, Duration::from_secs(60)).requests < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

fn query(q: &str, window: Duration, args: &[(&str, &str)]) -> MetricQuery {
    MetricQuery {
        metric: "test".into(),
        query: q.into(),
        window,
        args: args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

async fn measure(metrics: &ProxyMetrics, q: &str) -> Measurement {
    metrics
        .measure(&query(q, Duration::from_secs(60), &[]))
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

// ---------------------------------------------------------------------------
// TrafficRouter conformance.

/// The whole shared router suite for one-service routers: every check on
/// a fresh router of the service it names, plus the refusal of services
/// the router does not serve.
#[tokio::test]
async fn passes_the_router_conformance_suite() {
    bounded(
        "router conformance",
        conformance::router::all_single_service("proxy-conformance", |svc| async move {
            ProxyRouter::builder(svc).build().await.unwrap()
        }),
    )
    .await;
}

#[tokio::test]
async fn calls_for_another_service_are_not_found() {
    let router = ProxyRouter::builder(service()).build().await.unwrap();
    let other = ServiceName::new("other").unwrap();
    let err = router
        .set_split(&other, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(
        router.split(&other).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        router
            .set_endpoints(&other, Slot::Blue, &[])
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // Nothing changed for the router's own service.
    assert_eq!(router.split(&service()).await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// Weighted split, match rules, sticky sessions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_exact_over_sequential_requests() {
    let b0 = TestUpstream::start("b0").await;
    let b1 = TestUpstream::start("b1").await;
    let g0 = TestUpstream::start("g0").await;
    let router = router(&[&b0, &b1], &[&g0]).await;
    let client = TestClient::new(router.local_addr());
    let (blue, green) = (&["b0", "b1"][..], &["g0"][..]);

    for (s, n, want_green) in [
        (split(Slot::Blue, 0), 200, 0),
        (split(Slot::Blue, 100), 200, 200),
        (split(Slot::Green, 100), 200, 0),
        (split(Slot::Blue, 5), 1000, 50),
        (split(Slot::Blue, 50), 400, 200),
        (split(Slot::Green, 25), 400, 300),
    ] {
        router.set_split(&service(), &s).await.unwrap();
        let (b, g) = client.count_slots(n, blue, green).await;
        assert_eq!(g, want_green, "{s}: green got {g} of {n}");
        assert_eq!(b + g, n);
    }
    // Both blue replicas took part: balancing within the slot.
    assert!(
        b0.hits() > 0 && b1.hits() > 0,
        "{} {}",
        b0.hits(),
        b1.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_change_applies_to_the_next_request_and_not_to_requests_in_flight() {
    let b0 = TestUpstream::start("b0").await;
    let g0 = TestUpstream::start("g0").await;
    let router = router(&[&b0], &[&g0]).await;
    let client = TestClient::new(router.local_addr());

    // No split yet: 503 without a slot.
    let r = client.get("/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.slot(), "");

    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    assert_eq!(client.get("/").await.body, "b0");
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.get("/hold").await }
    });
    assert_eq!(b0.next_event().await, "arrived /");
    assert_eq!(b0.next_event().await, "arrived /hold");

    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    let r = client.get("/").await;
    assert_eq!((r.slot(), r.body.as_str()), ("green", "g0"));

    b0.release(1);
    let r = bounded("held request", held).await.unwrap();
    assert_eq!(
        (r.status, r.slot(), r.body.as_str()),
        (StatusCode::OK, "blue", "b0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_cookie_matches_pin_to_the_canary() {
    let b0 = TestUpstream::start("b0").await;
    let g0 = TestUpstream::start("g0").await;
    let router = router(&[&b0], &[&g0]).await;
    let client = TestClient::new(router.local_addr());

    let by_header = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Header {
        name: "X-Canary".into(),
        value: "always".into(),
    });
    router.set_split(&service(), &by_header).await.unwrap();
    for _ in 0..20 {
        assert_eq!(
            client.get_with("/", &[("x-canary", "always")]).await.body,
            "g0"
        );
        assert_eq!(client.get_with("/", &[("x-canary", "no")]).await.body, "b0");
        assert_eq!(client.get("/").await.body, "b0");
    }

    let by_cookie = TrafficSplit::new(Slot::Green, 0)
        .unwrap()
        .with_canary_match(RequestMatch::Cookie {
            name: "beta".into(),
            value: "1".into(),
        });
    router.set_split(&service(), &by_cookie).await.unwrap();
    for _ in 0..20 {
        let pinned = client
            .get_with("/", &[("cookie", "session=abc; beta=1")])
            .await;
        assert_eq!((pinned.slot(), pinned.body.as_str()), ("blue", "b0"));
        let other = client.get_with("/", &[("cookie", "beta=0")]).await;
        assert_eq!((other.slot(), other.body.as_str()), ("green", "g0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_keeps_a_client_on_its_slot() {
    let b0 = TestUpstream::start("b0").await;
    let g0 = TestUpstream::start("g0").await;
    let router = router_from(
        ProxyRouter::builder(service()).sticky_cookie("atlas-slot"),
        &[&b0],
        &[&g0],
    )
    .await;
    let client = TestClient::new(router.local_addr());
    router
        .set_split(&service(), &split(Slot::Blue, 50))
        .await
        .unwrap();

    // Without the cookie, choices alternate and each response sets it.
    let mut first_slots = Vec::new();
    for _ in 0..4 {
        let r = client.get("/").await;
        let cookie = r.headers["set-cookie"].to_str().unwrap().to_owned();
        assert_eq!(
            cookie,
            format!("atlas-slot={}; Path=/; HttpOnly; SameSite=Lax", r.slot())
        );
        first_slots.push(r.slot().to_owned());
    }
    assert!(first_slots.contains(&"blue".into()) && first_slots.contains(&"green".into()));

    // With the cookie, the client stays, and no new cookie is set.
    for slot in ["blue", "green"] {
        let cookie = format!("atlas-slot={slot}");
        for _ in 0..30 {
            let r = client.get_with("/", &[("cookie", &cookie)]).await;
            assert_eq!(r.slot(), slot);
            assert!(r.headers.get("set-cookie").is_none());
        }
    }

    // Once green has no weight, its cookie no longer binds and is replaced.
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let r = client
        .get_with("/", &[("cookie", "atlas-slot=green")])
        .await;
    assert_eq!(r.slot(), "blue");
    assert_eq!(
        r.headers["set-cookie"],
        "atlas-slot=blue; Path=/; HttpOnly; SameSite=Lax"
    );
}

// ---------------------------------------------------------------------------
// Balancing, draining, retries.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sends_fewer_requests_to_a_slow_replica() {
    let fast = TestUpstream::start("fast").await;
    let slow = TestUpstream::with_delay("slow", Duration::from_millis(100)).await;
    let router = router(&[&fast, &slow], &[]).await;
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    assert_eq!(client.get("/").await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for w in workers {
        bounded("worker", w).await.unwrap();
    }
    let (f, s) = (fast.hits(), slow.hits());
    assert_eq!(f + s, 120);
    // Round-robin would give each 60; least-outstanding starves the slow one.
    assert!(
        s >= 1,
        "the slow replica should get a first request on a tie"
    );
    assert!(f >= 4 * s, "fast {f} vs slow {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_drains_before_set_endpoints_returns() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let router = Arc::new(router(&[&a, &b], &[]).await);
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());

    // A slow request to `a`: with both idle, ties rotate, so at most two
    // tries put a held request on `a`.
    let mut held = Vec::new();
    while a.hits() == 0 {
        held.push(tokio::spawn({
            let client = client.clone();
            async move { client.get("/hold").await }
        }));
        bounded("held request to arrive", async {
            while a.hits() + b.hits() < held.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(held.len() <= 2, "ties must rotate between replicas");
    }
    assert_eq!(a.hits(), 1);
    b.release(held.len() - 1);

    let drain = tokio::spawn({
        let router = router.clone();
        let only_b = vec![b.endpoint()];
        async move {
            router
                .set_endpoints(&service(), Slot::Blue, &only_b)
                .await
                .unwrap();
            Instant::now()
        }
    });
    bounded("a to leave selection", async {
        while router.endpoints(Slot::Blue) != vec![b.endpoint()] {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.body, "b");
    }
    assert_eq!(a.hits(), 1, "no new request may reach a removed endpoint");
    assert!(
        !drain.is_finished(),
        "set_endpoints returned while a request to the removed endpoint was in flight"
    );

    let released = Instant::now();
    a.release(1);
    let returned = bounded("set_endpoints", drain).await.unwrap();
    assert!(returned >= released);
    for h in held {
        let r = bounded("held request", h).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        if r.body == "a" {
            assert_eq!(r.slot(), "blue");
        }
    }
    // A request leaves the count just after its client saw the last byte.
    bounded("the in-flight count to settle", async {
        while router.in_flight(Slot::Blue) != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_gives_up_after_the_grace_period() {
    let a = TestUpstream::start("a").await;
    let grace = Duration::from_millis(300);
    let router = router_from(
        ProxyRouter::builder(service()).grace_period(grace),
        &[&a],
        &[],
    )
    .await;
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.get("/hold").await }
    });
    assert_eq!(a.next_event().await, "arrived /hold");

    let started = Instant::now();
    bounded(
        "set_endpoints with a hanging request",
        router.set_endpoints(&service(), Slot::Blue, &[]),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took >= grace,
        "returned after {took:?}, before the grace period"
    );
    assert!(took < grace + Duration::from_secs(3), "took {took:?}");

    // The hanging request was not cut off; it still completes.
    a.release(1);
    assert_eq!(bounded("held", held).await.unwrap().body, "a");
    // New requests find no endpoint.
    let r = client.get("/").await;
    assert_eq!(
        (r.status, r.slot()),
        (StatusCode::SERVICE_UNAVAILABLE, "blue")
    );
}

/// An address that refuses connections for as long as the returned socket
/// lives: bound but never listening, so no other test can take the port
/// between choosing it and connecting to it (a closed listener's port can be
/// handed to the next socket that binds port 0).
fn refusing_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_for_idempotent_requests_only() {
    let (_held, dead_addr) = refusing_addr();
    let live = TestUpstream::start("live").await;
    let router = router(&[], &[]).await;
    router
        .set_endpoints(
            &service(),
            Slot::Blue,
            &[Endpoint::new("dead", dead_addr), live.endpoint()],
        )
        .await
        .unwrap();
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());

    for method in [Method::GET, Method::HEAD, Method::DELETE] {
        for _ in 0..4 {
            let r = client.send(method.clone(), "/", &[], empty()).await;
            assert_eq!(r.status, StatusCode::OK, "{method}");
        }
    }
    let retries = prometheus_value(
        &router.metrics().render_prometheus(),
        "atlas_proxy_upstream_retries_total{service=\"shop\",slot=\"blue\"}",
    );
    assert!(retries >= 1.0, "no request was retried");

    let (mut ok, mut bad_gateway) = (0, 0);
    for _ in 0..10 {
        let r = client
            .send(Method::POST, "/echo", &[], full("payload"))
            .await;
        match r.status {
            StatusCode::OK => {
                assert_eq!(r.body, "live:7");
                ok += 1;
            }
            StatusCode::BAD_GATEWAY => {
                assert_eq!(r.slot(), "blue");
                bad_gateway += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(bad_gateway >= 1, "no POST chose the dead replica");
    assert!(ok >= 1, "no POST chose the live replica");
    assert_eq!(
        live.seen_methods(&Method::POST),
        ok,
        "a POST was retried on the live replica"
    );
    let after = prometheus_value(
        &router.metrics().render_prometheus(),
        "atlas_proxy_upstream_retries_total{service=\"shop\",slot=\"blue\"}",
    );
    assert_eq!(after, retries, "POSTs must not be retried");
    let unreachable = prometheus_value(
        &router.metrics().render_prometheus(),
        "atlas_proxy_errors_total{service=\"shop\",slot=\"blue\",reason=\"upstream_unreachable\"}",
    );
    assert_eq!(unreachable, bad_gateway as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_without_reachable_replicas_answers_502_or_503() {
    let (_held, dead_addr) = refusing_addr();
    let router = router(&[], &[]).await;
    router
        .set_endpoints(&service(), Slot::Green, &[Endpoint::new("dead", dead_addr)])
        .await
        .unwrap();
    router
        .set_split(&service(), &split(Slot::Blue, 100))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());
    // The only replica is down: nothing to retry on.
    let r = client.get("/").await;
    assert_eq!((r.status, r.slot()), (StatusCode::BAD_GATEWAY, "green"));
    // Blue has no endpoints at all.
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let r = client.get("/").await;
    assert_eq!(
        (r.status, r.slot()),
        (StatusCode::SERVICE_UNAVAILABLE, "blue")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_response_head_in_time_gets_504() {
    let b0 = TestUpstream::start("b0").await;
    let router = router_from(
        ProxyRouter::builder(service())
            .response_timeout(Duration::from_millis(200))
            .initial_split(TrafficSplit::all_to(Slot::Blue)),
        &[&b0],
        &[],
    )
    .await;
    let client = TestClient::new(router.local_addr());
    let started = Instant::now();
    let r = client.get("/hold").await;
    assert_eq!((r.status, r.slot()), (StatusCode::GATEWAY_TIMEOUT, "blue"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    b0.release(1);
    // The next request gets a fresh connection and succeeds.
    assert_eq!(client.get("/").await.body, "b0");
    let text = router.metrics().render_prometheus();
    assert_eq!(
        prometheus_value(
            &text,
            "atlas_proxy_errors_total{service=\"shop\",slot=\"blue\",reason=\"upstream_timeout\"}"
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------
// Headers and streaming.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_and_hop_by_hop_headers_stripped() {
    let b0 = TestUpstream::start("b0").await;
    let router = router(&[&b0], &[]).await;
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());
    let r = client
        .get_with(
            "/hop",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("te", "trailers"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let (_, path, seen) = b0.last_seen();
    assert_eq!(path, "/hop");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    let proxy = router.local_addr();
    assert_eq!(
        seen["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{proxy}\"").as_str()
    );
    assert_eq!(
        seen["host"],
        proxy.to_string().as_str(),
        "the original Host is kept"
    );
    assert_eq!(seen["x-kept"], "yes");
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(seen.get(gone).is_none(), "{gone} reached the upstream");
    }

    assert_eq!(r.headers[SLOT_HEADER], "blue");
    assert_eq!(r.headers["x-upstream"], "b0");
    assert_eq!(r.headers["x-end-to-end"], "kept");
    for gone in ["x-hop-response", "keep-alive", "proxy-authenticate"] {
        assert!(r.headers.get(gone).is_none(), "{gone} reached the client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_stream() {
    let b0 = TestUpstream::start("b0").await;
    let router = router(&[&b0], &[]).await;
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());

    // Upload: the upstream sees the first chunk before the client sends
    // the second. A proxy that buffered the body would hang here.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let upload = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .send(Method::POST, "/stream-in", &[], channel_body(rx))
                .await
        }
    });
    assert_eq!(b0.next_event().await, "arrived /stream-in");
    tx.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
    assert_eq!(b0.next_event().await, "frame 1000");
    tx.send(Bytes::from(vec![b'y'; 500])).await.unwrap();
    assert_eq!(b0.next_event().await, "frame 500");
    drop(tx);
    let r = bounded("upload", upload).await.unwrap();
    assert_eq!(r.body, "b0:1500");

    // Download: the client reads the first chunk before the upstream sends
    // the second.
    let req = Request::get(format!("http://{}/stream-out", router.local_addr()))
        .body(empty())
        .unwrap();
    let response = bounded("download head", client.inner.request(req))
        .await
        .unwrap();
    assert_eq!(response.headers()[SLOT_HEADER], "blue");
    let mut body = response.into_body();
    let first = bounded("first chunk", body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "first;");
    b0.release(1);
    let rest = bounded("rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "second");

    // A large body goes through whole.
    let big = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let r = client.send(Method::PUT, "/echo", &[], full(big)).await;
    assert_eq!(r.body, format!("b0:{}", 3 * 1024 * 1024));
}

// ---------------------------------------------------------------------------
// Metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_and_latency_reflect_upstream_responses() {
    let b0 = TestUpstream::start("b0").await;
    let g0 = TestUpstream::start("g0").await;
    let router = router(&[&b0], &[&g0]).await;
    let metrics = router.metrics();
    let client = TestClient::new(router.local_addr());

    // Blue: 15 OK, 5 upstream 500s, 4 404s (not errors).
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    for _ in 0..15 {
        client.get("/").await;
    }
    for _ in 0..5 {
        assert_eq!(client.get("/status/500").await.status, 500);
    }
    for _ in 0..4 {
        assert_eq!(client.get("/status/404").await.status, 404);
    }
    wait_for_requests(&metrics, Slot::Blue, 24).await;
    assert_eq!(
        measure(&metrics, "error_rate:blue").await,
        Measurement::Value(5.0 / 24.0)
    );
    assert_eq!(
        measure(&metrics, "success_rate:blue").await,
        Measurement::Value(1.0 - 5.0 / 24.0)
    );
    assert_eq!(
        measure(&metrics, "request_count:blue").await,
        Measurement::Value(24.0)
    );
    let rate = measure(&metrics, "request_rate:blue")
        .await
        .value()
        .unwrap();
    assert!(rate > 0.0, "{rate}");

    // Green: 90 fast responses and 10 that take 200 ms.
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    for _ in 0..90 {
        client.get("/").await;
    }
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/sleep/200").await })
        })
        .collect();
    for s in slow {
        assert_eq!(bounded("slow", s).await.unwrap().status, 200);
    }
    wait_for_requests(&metrics, Slot::Green, 100).await;
    let p50 = measure(&metrics, "latency_p50:green")
        .await
        .value()
        .unwrap();
    let p95 = measure(&metrics, "latency_p95:green")
        .await
        .value()
        .unwrap();
    let p99 = measure(&metrics, "latency_p99:green")
        .await
        .value()
        .unwrap();
    assert!(p50 < 0.1, "p50 {p50}");
    assert!((0.18..1.0).contains(&p95), "p95 {p95}");
    assert!((0.18..1.0).contains(&p99), "p99 {p99}");
    assert_eq!(
        measure(&metrics, "error_rate:green").await,
        Measurement::Value(0.0)
    );

    // Without a suffix the slot is args["canary"]; canary/stable resolve too.
    let args = [("canary", "green"), ("stable", "blue"), ("service", "shop")];
    let w = Duration::from_secs(30);
    let via_args = metrics
        .measure(&query("latency_p99", w, &args))
        .await
        .unwrap();
    assert_eq!(via_args.value(), Some(p99));
    let stable = metrics
        .measure(&query("error_rate:stable", w, &args))
        .await
        .unwrap();
    assert_eq!(stable, Measurement::Value(5.0 / 24.0));
    // Without args, the split in force names the canary (blue, at 0 %).
    assert_eq!(
        measure(&metrics, "error_rate").await,
        Measurement::Value(5.0 / 24.0)
    );
}

#[tokio::test]
async fn proxy_errors_count_as_errors_and_no_traffic_is_no_data() {
    let router = router(&[], &[]).await;
    let metrics = router.metrics();
    for q in [
        "error_rate:blue",
        "success_rate:green",
        "latency_p50:blue",
        "latency_p95:green",
        "latency_p99:blue",
    ] {
        assert_eq!(measure(&metrics, q).await, Measurement::NoData, "{q}");
    }
    assert_eq!(
        measure(&metrics, "request_count:blue").await,
        Measurement::Value(0.0)
    );

    // 503s from an empty slot are errors, and have no latency.
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 503);
    }
    wait_for_requests(&metrics, Slot::Green, 3).await;
    assert_eq!(
        measure(&metrics, "error_rate:green").await,
        Measurement::Value(1.0)
    );
    assert_eq!(
        measure(&metrics, "latency_p99:green").await,
        Measurement::NoData
    );
    let stats = metrics.window_stats(Slot::Green, Duration::from_secs(60));
    assert_eq!((stats.requests, stats.proxy_errors), (3, 3));
}

#[tokio::test]
async fn bad_queries_are_refused_by_name() {
    let router = ProxyRouter::builder(service()).build().await.unwrap();
    let metrics = router.metrics();
    let w = Duration::from_secs(10);
    let err = metrics
        .measure(&query("p99_latency:blue", w, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("p99_latency:blue"), "{err}");
    let err = metrics
        .measure(&query("error_rate:purple", w, &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("purple"), "{err}");
    // No suffix, no args, no split: the canary is unknown.
    let err = metrics
        .measure(&query("error_rate", w, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = metrics
        .measure(&query("error_rate", w, &[("canary", "teal")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("args.canary"), "{err}");
    let err = metrics
        .measure(&query("error_rate:blue", Duration::ZERO, &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("window"), "{err}");
    let err = metrics
        .measure(&query("error_rate:blue", w, &[("service", "billing")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// The value of the sample line starting with `series ` in `text`.
fn prometheus_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Checks one line of the Prometheus text format (0.0.4) and returns the
/// metric name of a sample line.
fn check_exposition_line(line: &str) -> Option<String> {
    let is_name = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if let Some(comment) = line.strip_prefix("# ") {
        let mut parts = comment.splitn(3, ' ');
        let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
        match kind {
            Some("HELP") => assert!(name.is_some_and(is_name) && rest.is_some(), "{line}"),
            Some("TYPE") => {
                assert!(name.is_some_and(is_name), "{line}");
                assert!(
                    matches!(
                        rest,
                        Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                    ),
                    "{line}"
                );
            }
            _ => panic!("bad comment line {line:?}"),
        }
        return None;
    }
    let name_end = line.find(['{', ' ']).expect(line);
    let name = &line[..name_end];
    assert!(is_name(name), "bad metric name in {line:?}");
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let mut s = labels;
        loop {
            let eq = s.find('=').unwrap_or_else(|| panic!("{line}"));
            assert!(is_name(&s[..eq]), "bad label name in {line:?}");
            s = s[eq + 1..]
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("{line}"));
            let mut escaped = false;
            let mut close = None;
            for (i, c) in s.char_indices() {
                match (escaped, c) {
                    (true, '\\' | '"' | 'n') => escaped = false,
                    (true, _) => panic!("bad escape in {line:?}"),
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        close = Some(i);
                        break;
                    }
                    (false, _) => {}
                }
            }
            s = &s[close.unwrap_or_else(|| panic!("{line}")) + 1..];
            if let Some(more) = s.strip_prefix(',') {
                s = more;
            } else {
                rest = s.strip_prefix('}').unwrap_or_else(|| panic!("{line}"));
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
    assert!(
        matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok(),
        "bad value in {line:?}"
    );
    Some(name.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_serves_well_formed_prometheus_text() {
    let b0 = TestUpstream::start("b0").await;
    let g0 = TestUpstream::start("g0").await;
    let router = router_from(
        ProxyRouter::builder(service()).admin("127.0.0.1:0".parse().unwrap()),
        &[&b0],
        &[&g0],
    )
    .await;
    router
        .set_split(&service(), &split(Slot::Blue, 50))
        .await
        .unwrap();
    let client = TestClient::new(router.local_addr());
    for _ in 0..10 {
        client.get("/").await;
    }
    // The 11th weighted choice at 50 % is blue again: blue 6, green 5.
    assert_eq!(client.get("/status/503").await.status, 503);
    let metrics = router.metrics();
    wait_for_requests(&metrics, Slot::Blue, 6).await;
    wait_for_requests(&metrics, Slot::Green, 5).await;

    let admin = TestClient::new(router.admin_addr().expect("admin address"));
    let r = admin.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.body;
    let mut declared = std::collections::HashSet::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.insert(rest.split(' ').next().unwrap().to_owned());
        }
        if let Some(name) = check_exposition_line(line) {
            samples += 1;
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(&name);
            assert!(
                declared.contains(family),
                "{name} has no TYPE line before it"
            );
            assert!(name.starts_with("atlas_proxy_"), "{name}");
        }
    }
    assert!(samples > 30, "only {samples} samples");
    let v = |series: &str| prometheus_value(&text, series);
    assert_eq!(
        v("atlas_proxy_requests_total{service=\"shop\",slot=\"blue\"}"),
        6.0
    );
    assert_eq!(
        v("atlas_proxy_requests_total{service=\"shop\",slot=\"green\"}"),
        5.0
    );
    assert_eq!(
        v("atlas_proxy_responses_total{service=\"shop\",slot=\"blue\",class=\"5xx\"}"),
        1.0
    );
    assert_eq!(
        v("atlas_proxy_responses_total{service=\"shop\",slot=\"blue\",class=\"2xx\"}"),
        5.0
    );
    assert_eq!(
        v("atlas_proxy_responses_total{service=\"shop\",slot=\"green\",class=\"2xx\"}"),
        5.0
    );
    assert_eq!(
        v("atlas_proxy_errors_total{service=\"shop\",slot=\"green\",reason=\"no_endpoint\"}"),
        0.0
    );
    assert_eq!(
        v("atlas_proxy_request_duration_seconds_count{service=\"shop\",slot=\"blue\"}"),
        6.0
    );
    assert_eq!(
        v(
            "atlas_proxy_request_duration_seconds_bucket{service=\"shop\",slot=\"blue\",le=\"+Inf\"}"
        ),
        6.0
    );
    assert_eq!(
        v("atlas_proxy_traffic_weight_ratio{service=\"shop\",slot=\"green\"}"),
        0.5
    );
    assert_eq!(
        v("atlas_proxy_endpoints{service=\"shop\",slot=\"blue\"}"),
        1.0
    );
    assert_eq!(
        v(
            "atlas_proxy_endpoint_requests_in_flight{service=\"shop\",slot=\"green\",replica=\"g0\"}"
        ),
        0.0
    );

    // promtool, where installed, agrees.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    assert_eq!(admin.get("/other").await.status, StatusCode::NOT_FOUND);
    let r = admin.send(Method::POST, "/metrics", &[], empty()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

// ---------------------------------------------------------------------------
// Lifecycle.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_exchanges_in_progress_finish() {
    let b0 = TestUpstream::start("b0").await;
    let router = Arc::new(router(&[&b0], &[]).await);
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let addr = router.local_addr();
    let client = TestClient::new(addr);
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.get("/hold").await }
    });
    assert_eq!(b0.next_event().await, "arrived /hold");
    let stopping = tokio::spawn({
        let router = router.clone();
        async move { router.shutdown().await }
    });
    // New connections are refused once the listener closed.
    bounded("listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!stopping.is_finished());
    b0.release(1);
    assert_eq!(bounded("held", held).await.unwrap().body, "b0");
    bounded("shutdown", stopping).await.unwrap();
    // A second call returns at once.
    bounded("second shutdown", router.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_router_stops_it() {
    let router = ProxyRouter::builder(service())
        .admin("127.0.0.1:0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let (addr, admin) = (router.local_addr(), router.admin_addr().unwrap());
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(router);
    bounded("listeners to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok()
            || tokio::net::TcpStream::connect(admin).await.is_ok()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn invalid_input_is_refused_with_the_field_named() {
    let router = ProxyRouter::builder(service()).build().await.unwrap();
    let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let err = router
        .set_endpoints(
            &service(),
            Slot::Blue,
            &[
                Endpoint::new("x", a),
                Endpoint::new("x", "127.0.0.1:7002".parse().unwrap()),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("endpoints[1].replica"), "{err}");
    let bad_match = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Header {
        name: "not a header".into(),
        value: "1".into(),
    });
    let err = router.set_split(&service(), &bad_match).await.unwrap_err();
    assert!(err.to_string().contains("canary_match"), "{err}");
    assert_eq!(router.split(&service()).await.unwrap(), None);
    let err = ProxyRouter::builder(service())
        .sticky_cookie("no spaces allowed")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sticky_cookie"), "{err}");
    for (builder, field) in [
        (
            ProxyRouter::builder(service()).client_body_timeout(Duration::ZERO),
            "client_body_timeout",
        ),
        (
            ProxyRouter::builder(service()).client_header_timeout(Duration::ZERO),
            "client_header_timeout",
        ),
        (
            ProxyRouter::builder(service()).response_timeout(Duration::ZERO),
            "response_timeout",
        ),
    ] {
        let err = builder.build().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(field), "{err}");
    }
}
