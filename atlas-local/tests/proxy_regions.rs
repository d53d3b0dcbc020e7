//! The proxy router with regions, against small upstream servers tagged
//! per region and slot, all on 127.0.0.1: the region router conformance
//! suite, shares by weight, a region moved to 0 while its slow request
//! finishes, a split per region, fallback from a region without
//! endpoints, per-region metrics, and weight changes under load. Every
//! wait is bounded.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use atlas_core::region::{Region, RegionName, RegionRouter, RegionSet, RegionWeights};
use atlas_core::testing::conformance;
use atlas_core::{Endpoint, ErrorKind, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::{ProxyRouter, SLOT_HEADER};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Upper bound for any single wait in these tests.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

fn region(name: &str) -> RegionName {
    RegionName::new(name).unwrap()
}

fn service() -> ServiceName {
    ServiceName::new("shop").unwrap()
}

fn weights(pairs: &[(&str, u8)]) -> RegionWeights {
    RegionWeights::new(pairs.iter().map(|(n, w)| (region(n), *w))).unwrap()
}

fn active(pairs: &[(&str, u8)]) -> RegionSet {
    RegionSet::new(
        pairs
            .iter()
            .map(|(n, w)| Region::active(region(n), *w))
            .collect(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------
// An upstream that names itself (`<region>-<slot>`) in every response.

struct Upstream {
    addr: SocketAddr,
    name: String,
    hits: Arc<AtomicUsize>,
    /// `/hold` waits for a permit.
    release: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let (n, h, r) = (name.to_owned(), hits.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, r) = (n.clone(), h.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (n, h, r) = (n.clone(), h.clone(), r.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            if req.uri().path() == "/hold" {
                                r.acquire().await.unwrap().forget();
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_owned(),
            hits,
            release,
            task,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.name.clone(), self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A router over `set` with a blue upstream in every region (and a green
/// one where `green` says), all traffic on blue.
struct Drill {
    router: ProxyRouter,
    upstreams: BTreeMap<String, Upstream>,
}

impl Drill {
    async fn start(set: RegionSet, green: &[&str]) -> Self {
        let router = ProxyRouter::builder(service())
            .regions(set.clone())
            .initial_split(TrafficSplit::all_to(Slot::Blue))
            .worker_threads(2)
            .admin("127.0.0.1:0".parse().unwrap())
            .build()
            .await
            .unwrap();
        let mut upstreams = BTreeMap::new();
        for r in set.regions() {
            let mut slots = vec![Slot::Blue];
            if green.contains(&r.name.as_str()) {
                slots.push(Slot::Green);
            }
            for slot in slots {
                let up = Upstream::start(&format!("{}-{slot}", r.name)).await;
                router
                    .set_region_endpoints(&r.name, slot, &[up.endpoint()])
                    .await
                    .unwrap();
                upstreams.insert(up.name.clone(), up);
            }
        }
        Drill { router, upstreams }
    }

    fn client(&self) -> Client<HttpConnector, Empty<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn up(&self, name: &str) -> &Upstream {
        &self.upstreams[name]
    }

    async fn metrics(&self) -> String {
        let addr = self.router.admin_addr().unwrap();
        let reply = get(&self.client(), addr, "/metrics").await;
        assert_eq!(reply.0, StatusCode::OK);
        reply.2
    }

    /// Waits until sample `prefix` reads `want`: the proxy counts an
    /// exchange once it has ended on its side, which may be just after the
    /// client has read the response.
    async fn await_sample(&self, prefix: &str, want: f64) {
        let mut last = String::new();
        let reached = tokio::time::timeout(BOUND, async {
            loop {
                last = self.metrics().await;
                if sample(&last, prefix) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "{prefix} never reached {want}:\n{last}");
    }

    /// Sends `n` GETs from `tasks` concurrent clients; counts the
    /// responses by the upstream that served them. Any non-200 fails.
    async fn spread(&self, n: usize, tasks: usize) -> BTreeMap<String, usize> {
        let addr = self.router.local_addr();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let client = self.client();
                let share = n / tasks + usize::from(t < n % tasks);
                tokio::spawn(async move {
                    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                    for _ in 0..share {
                        let (status, slot, body) = get(&client, addr, "/").await;
                        assert_eq!(status, StatusCode::OK, "{body}");
                        assert!(body.ends_with(&format!("-{slot}")), "{body} on {slot}");
                        *seen.entry(body).or_default() += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut total = BTreeMap::new();
        for h in handles {
            for (k, v) in bounded("requests", h).await.unwrap() {
                *total.entry(k).or_default() += v;
            }
        }
        total
    }
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (StatusCode, String, String) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = bounded("request", client.request(req))
        .await
        .expect("request to the proxy failed");
    let slot = response
        .headers()
        .get(SLOT_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = response.status();
    let body = bounded("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, slot, String::from_utf8(body.to_vec()).unwrap())
}

fn share(counts: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(name).copied().unwrap_or(0) as f64 / total as f64
}

/// The value of the sample line starting `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Conformance.

/// A proxy router serves one service: the single-service form of the
/// region router suite, on a real router (another service is refused).
#[tokio::test]
async fn passes_the_region_router_conformance_suite() {
    let set = active(&[("us-east", 40), ("eu-west", 35), ("ap-south", 25)]);
    let regions: Vec<RegionName> = set.regions().iter().map(|r| r.name.clone()).collect();
    let svc = conformance::unique_service("proxy-regions");
    let router = ProxyRouter::builder(svc.clone())
        .regions(set)
        .worker_threads(1)
        .build()
        .await
        .unwrap();
    bounded(
        "region router conformance",
        conformance::region_router::all_single_service(&router, &svc, &regions),
    )
    .await;
    router.shutdown().await;
}

/// Each region's view passes the traffic-router suite.
#[tokio::test]
async fn region_views_pass_the_router_conformance_suite() {
    bounded(
        "region view conformance",
        conformance::router::all_single_service("proxy-region-view", |svc| async move {
            let router = ProxyRouter::builder(svc)
                .regions(active(&[("us", 60), ("eu", 40)]))
                .worker_threads(1)
                .build()
                .await
                .unwrap();
            router.region(&region("eu")).unwrap()
        }),
    )
    .await;
}

#[tokio::test]
async fn unknown_regions_other_services_and_too_many_regions_are_refused() {
    let router = ProxyRouter::builder(service())
        .regions(active(&[("us", 60), ("eu", 40)]))
        .worker_threads(1)
        .build()
        .await
        .unwrap();
    assert_eq!(router.regions(), [region("us"), region("eu")]);
    let err = router.region(&region("mars")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("mars"), "{err}");
    let err = router
        .set_region_endpoints(&region("mars"), Slot::Blue, &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mars"), "{err}");
    let other = ServiceName::new("other").unwrap();
    let err = router
        .set_region_weights(&other, &weights(&[("us", 100)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(
        router.region_weights(&other).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    router.shutdown().await;

    // Without regions: no weights, and any region is unknown.
    let plain = ProxyRouter::builder(service())
        .worker_threads(1)
        .build()
        .await
        .unwrap();
    assert_eq!(plain.region_weights(&service()).await.unwrap(), None);
    let err = plain
        .set_region_weights(&service(), &weights(&[("us", 100)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("us"), "{err}");
    plain.shutdown().await;

    // 33 regions: one active, 32 standby.
    let mut many = vec![Region::active(region("r0"), 100)];
    many.extend((1..33).map(|i| Region::standby(region(&format!("r{i}")), 10)));
    let err = ProxyRouter::builder(service())
        .regions(RegionSet::new(many).unwrap())
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("regions"), "{err}");
}

// ---------------------------------------------------------------------------
// Traffic.

/// 40/35/25 from the builder's region set, measured over 2,100 requests
/// from 6 clients; then all to one region, then back.
#[tokio::test]
async fn three_regions_take_their_shares_then_all_to_one_and_back() {
    let drill = Drill::start(active(&[("us", 40), ("eu", 35), ("ap", 25)]), &[]).await;
    let svc = service();
    assert_eq!(drill.router.region_weights(&svc).await.unwrap(), None);
    let counts = drill.spread(2100, 6).await;
    for (name, want) in [("us-blue", 0.40), ("eu-blue", 0.35), ("ap-blue", 0.25)] {
        let got = share(&counts, name);
        assert!(
            (got - want).abs() <= 0.04,
            "{name}: {got:.3} not within 4 % of {want}: {counts:?}"
        );
    }

    for r in ["us", "eu", "ap"] {
        drill
            .await_sample(
                &format!("atlas_proxy_region_requests_total{{service=\"shop\",region=\"{r}\"}}"),
                counts[&format!("{r}-blue")] as f64,
            )
            .await;
    }
    let metrics = drill.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "atlas_proxy_region_weight_ratio{service=\"shop\",region=\"eu\"}"
        ),
        0.35
    );
    assert_eq!(
        sample(
            &metrics,
            "atlas_proxy_region_endpoints{service=\"shop\",region=\"ap\",slot=\"blue\"}"
        ),
        1.0
    );

    assert_eq!(
        sample(
            &metrics,
            "atlas_proxy_endpoint_requests_in_flight{service=\"shop\",slot=\"blue\",region=\"ap\",replica=\"ap-blue\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "atlas_proxy_endpoints{service=\"shop\",slot=\"blue\"}"
        ),
        3.0
    );

    let one = weights(&[("us", 0), ("eu", 0), ("ap", 100)]);
    drill.router.set_region_weights(&svc, &one).await.unwrap();
    assert_eq!(drill.router.region_weights(&svc).await.unwrap(), Some(one));
    let counts = drill.spread(300, 3).await;
    assert_eq!(counts.get("ap-blue"), Some(&300), "{counts:?}");

    let back = weights(&[("us", 40), ("eu", 35), ("ap", 25)]);
    drill.router.set_region_weights(&svc, &back).await.unwrap();
    let counts = drill.spread(2000, 4).await;
    for (name, want) in [("us-blue", 0.40), ("eu-blue", 0.35), ("ap-blue", 0.25)] {
        let got = share(&counts, name);
        assert!(
            (got - want).abs() <= 0.04,
            "{name}: {got:.3} after moving back: {counts:?}"
        );
    }
    drill.router.shutdown().await;
}

/// A region moved to 0 % gets no new request, while the slow request it
/// was serving finishes there.
#[tokio::test]
async fn a_region_at_zero_gets_nothing_new_while_its_slow_request_finishes() {
    let drill = Drill::start(active(&[("us", 50), ("eu", 50)]), &[]).await;
    let svc = service();
    drill
        .router
        .set_region_weights(&svc, &weights(&[("us", 100), ("eu", 0)]))
        .await
        .unwrap();
    let addr = drill.router.local_addr();
    let client = drill.client();
    let held = tokio::spawn(async move { get(&client, addr, "/hold").await });
    bounded("the slow request reaches us", async {
        while drill.up("us-blue").hits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    drill
        .router
        .set_region_weights(&svc, &weights(&[("us", 0), ("eu", 100)]))
        .await
        .unwrap();
    let counts = drill.spread(200, 4).await;
    assert_eq!(counts.get("eu-blue"), Some(&200), "{counts:?}");
    assert_eq!(drill.up("us-blue").hits(), 1, "us got a new request at 0 %");
    assert!(!held.is_finished());

    drill.up("us-blue").release.add_permits(1);
    let (status, slot, body) = bounded("the held request", held).await.unwrap();
    assert_eq!(
        (status, slot.as_str(), body.as_str()),
        (StatusCode::OK, "blue", "us-blue")
    );
    drill.router.shutdown().await;
}

/// A region's own split applies to its requests only; the others follow
/// the router's split, and the region can go back to it.
#[tokio::test]
async fn each_region_has_its_own_blue_green_split() {
    let drill = Drill::start(active(&[("us", 50), ("eu", 50)]), &["us", "eu"]).await;
    let svc = service();
    let us = drill.router.region(&region("us")).unwrap();
    us.set_split(&svc, &TrafficSplit::new(Slot::Blue, 50).unwrap())
        .await
        .unwrap();
    assert_eq!(
        us.split(&svc).await.unwrap(),
        Some(TrafficSplit::new(Slot::Blue, 50).unwrap())
    );
    let eu = drill.router.region(&region("eu")).unwrap();
    assert_eq!(
        eu.split(&svc).await.unwrap(),
        Some(TrafficSplit::all_to(Slot::Blue)),
        "eu follows the router's split"
    );
    let counts = drill.spread(1200, 4).await;
    for (name, want) in [("us-blue", 0.25), ("us-green", 0.25), ("eu-blue", 0.5)] {
        let got = share(&counts, name);
        assert!((got - want).abs() <= 0.04, "{name}: {got:.3}: {counts:?}");
    }
    assert_eq!(counts.get("eu-green"), None, "{counts:?}");
    assert_eq!(us.endpoints(Slot::Green), [drill.up("us-green").endpoint()]);

    // The router's split moves eu; us keeps its own until it follows again.
    drill
        .router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    let counts = drill.spread(400, 4).await;
    assert_eq!(counts.get("eu-green"), Some(&200), "{counts:?}");
    assert_eq!(counts.get("eu-blue"), None, "{counts:?}");
    assert_eq!(counts.get("us-blue"), Some(&100), "{counts:?}");
    us.follow_router_split();
    let counts = drill.spread(400, 4).await;
    assert_eq!(counts.get("us-green"), Some(&200), "{counts:?}");
    assert_eq!(counts.get("eu-green"), Some(&200), "{counts:?}");
    drill.router.shutdown().await;
}

/// A region chosen for a request but without an endpoint in the slot its
/// split chose passes it to another serving region, counted as its
/// fallback; with no region able to serve, 503 counted on the region.
#[tokio::test]
async fn a_region_without_endpoints_falls_back_to_another() {
    let drill = Drill::start(active(&[("us", 50), ("eu", 50)]), &[]).await;
    let svc = service();
    let us = drill.router.region(&region("us")).unwrap();
    us.set_endpoints(&svc, Slot::Blue, &[]).await.unwrap();
    let counts = drill.spread(200, 2).await;
    assert_eq!(counts.get("eu-blue"), Some(&200), "{counts:?}");
    drill
        .await_sample(
            "atlas_proxy_region_requests_total{service=\"shop\",region=\"eu\"}",
            200.0,
        )
        .await;
    let metrics = drill.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "atlas_proxy_region_fallbacks_total{service=\"shop\",region=\"us\"}"
        ),
        100.0
    );

    // A region at 0 is no fallback: with eu's endpoints gone too, 503.
    drill
        .router
        .region(&region("eu"))
        .unwrap()
        .set_endpoints(&svc, Slot::Blue, &[])
        .await
        .unwrap();
    let (status, slot, _) = get(&drill.client(), drill.router.local_addr(), "/").await;
    assert_eq!(
        (status, slot.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "blue")
    );
    let metrics = drill.metrics().await;
    let errors: f64 = ["us", "eu"]
        .iter()
        .map(|r| {
            sample(
                &metrics,
                &format!(
                    "atlas_proxy_region_errors_total{{service=\"shop\",region=\"{r}\",reason=\"no_endpoint\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(errors, 1.0);
    drill.router.shutdown().await;
}

/// A region whose endpoints are listed but refuse connections (its
/// replicas died before any health check noticed): bodiless idempotent
/// requests go to another region instead of failing, counted as
/// fallbacks; a request with a body is not resent and fails.
#[tokio::test]
async fn a_region_whose_endpoints_refuse_connections_falls_back_for_idempotent_requests() {
    let drill = Drill::start(active(&[("us", 50), ("eu", 50)]), &[]).await;
    // Two ports nobody listens on.
    let dead: Vec<Endpoint> = (0..2)
        .map(|i| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Endpoint::new(format!("us-dead-{i}"), l.local_addr().unwrap())
        })
        .collect();
    drill
        .router
        .set_region_endpoints(&region("us"), Slot::Blue, &dead)
        .await
        .unwrap();
    let counts = drill.spread(200, 2).await;
    assert_eq!(counts.get("eu-blue"), Some(&200), "{counts:?}");
    drill
        .await_sample(
            "atlas_proxy_region_requests_total{service=\"shop\",region=\"eu\"}",
            200.0,
        )
        .await;
    let metrics = drill.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "atlas_proxy_region_fallbacks_total{service=\"shop\",region=\"us\"}"
        ),
        100.0,
        "every request chosen for us fell back"
    );
    // A POST with a body is never sent twice: of two, the one chosen for
    // us fails with 502.
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = Request::post(format!("http://{}/", drill.router.local_addr()))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let response = bounded("post", client.request(req)).await.unwrap();
        statuses.push(response.status());
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    drill.router.shutdown().await;
}

/// Eight clients send requests without pause while the weights flip 20
/// times (all to one region, to zero, back): not one request fails.
#[tokio::test]
async fn weight_changes_under_load_fail_no_request() {
    let drill = Arc::new(Drill::start(active(&[("us", 40), ("eu", 35), ("ap", 25)]), &[]).await);
    let svc = service();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = drill.router.local_addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop) = (drill.client(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = get(&client, addr, "/").await;
                    if status == StatusCode::OK {
                        ok += 1;
                    } else {
                        failed.push(format!("{status} {body}"));
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let plans = [
        weights(&[("us", 100)]),
        weights(&[("us", 0), ("eu", 50), ("ap", 50)]),
        weights(&[("ap", 100)]),
        weights(&[("us", 40), ("eu", 35), ("ap", 25)]),
        weights(&[("eu", 90), ("ap", 10)]),
    ];
    for i in 0..20 {
        drill
            .router
            .set_region_weights(&svc, &plans[i % plans.len()])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = bounded("client", c).await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(ok > 100, "only {ok} requests");
    for name in ["us-blue", "eu-blue", "ap-blue"] {
        assert!(drill.up(name).hits() > 0, "{name} got nothing");
    }
    drill.router.shutdown().await;
}
