//! Several services on one proxy listener, routed by host and path, with
//! small upstream servers started in the test, all on 127.0.0.1: host,
//! wildcard and path-prefix routing, the 404 of a router without a
//! service of its own, refused claims, removal with draining, independent
//! splits and metrics per service, the conformance suite on a service's
//! view, and a listener handed from one router to another. Every wait is
//! bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use atlas_core::testing::conformance;
use atlas_core::{
    Endpoint, ErrorKind, Measurement, MetricProvider, MetricQuery, ServiceName, Slot,
    TrafficRouter, TrafficSplit,
};
use atlas_local::proxy::{ProxyRouter, ProxyRouterBuilder, ServiceRoute};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Upper bound for any single wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

/// An upstream answering every request with its name; `/hold` waits for
/// a permit first.
struct Upstream {
    name: String,
    addr: SocketAddr,
    release: Arc<Semaphore>,
    held: Arc<AtomicUsize>,
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
        let release = Arc::new(Semaphore::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let (for_task, release_task, held_task) = (name.to_owned(), release.clone(), held.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, release, held) =
                    (for_task.clone(), release_task.clone(), held_task.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (name, release, held) = (name.clone(), release.clone(), held.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            if path == "/hold" {
                                held.fetch_add(1, Ordering::SeqCst);
                                release.acquire().await.unwrap().forget();
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "{name} {path}"
                            )))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            name: name.to_owned(),
            addr,
            release,
            held,
            task,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.name.clone(), self.addr)
    }
}

/// A response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// `GET target` with `Host: host` on a fresh connection.
async fn get(addr: SocketAddr, host: &str, target: &str) -> Reply {
    bounded("request", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        parse(&reply)
    })
    .await
}

fn parse(reply: &str) -> Reply {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn shared() -> ProxyRouterBuilder {
    ProxyRouter::shared_builder()
        .worker_threads(1)
        .grace_period(Duration::from_secs(5))
}

/// Adds `name` on `route` with `upstream` as its only (blue) endpoint, all
/// traffic to blue, through the router's own `TrafficRouter` calls.
async fn add(router: &ProxyRouter, name: &str, route: ServiceRoute, upstream: &Upstream) {
    let service = svc(name);
    router.add_service(service.clone(), route).unwrap();
    router
        .set_endpoints(&service, Slot::Blue, &[upstream.endpoint()])
        .await
        .unwrap();
    router
        .set_split(&service, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
}

#[tokio::test]
async fn hosts_route_to_their_services_and_unknown_hosts_get_404() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let router = shared().build().await.unwrap();
    let addr = router.local_addr();
    // Before any service: 404 naming the host.
    let reply = get(addr, "a.example.com", "/").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(reply.body.contains("a.example.com"), "{reply:?}");

    add(&router, "a", ServiceRoute::host("a.example.com"), &a).await;
    add(
        &router,
        "b",
        ServiceRoute::host("b.example.com").with_host("www.b.example.com"),
        &b,
    )
    .await;
    assert_eq!(get(addr, "a.example.com", "/x").await.body, "a /x");
    // Case-insensitive, port ignored.
    assert_eq!(get(addr, "B.Example.COM:8080", "/").await.body, "b /");
    assert_eq!(get(addr, "www.b.example.com", "/").await.body, "b /");
    let reply = get(addr, "c.example.com", "/").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.body, "no service for host c.example.com\n");
    assert_eq!(
        router.routes(),
        [
            (svc("a"), ServiceRoute::host("a.example.com")),
            (
                svc("b"),
                ServiceRoute::host("b.example.com").with_host("www.b.example.com")
            ),
        ]
    );
    let text = router.metrics().render_prometheus();
    assert!(
        text.contains("atlas_proxy_unmatched_requests_total 2"),
        "{text}"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn longest_path_prefix_wins_and_exact_hosts_beat_wildcards() {
    let ups = [
        Upstream::start("web").await,
        Upstream::start("api").await,
        Upstream::start("any").await,
    ];
    let router = shared().build().await.unwrap();
    let addr = router.local_addr();
    add(
        &router,
        "web",
        ServiceRoute::host("shop.example.com"),
        &ups[0],
    )
    .await;
    add(
        &router,
        "api",
        ServiceRoute::host("shop.example.com").with_path_prefix("/api"),
        &ups[1],
    )
    .await;
    add(&router, "any", ServiceRoute::host("*.example.com"), &ups[2]).await;
    // The path reaches the upstream unchanged.
    assert_eq!(
        get(addr, "shop.example.com", "/api/orders").await.body,
        "api /api/orders"
    );
    assert_eq!(
        get(addr, "shop.example.com", "/api?q=1").await.body,
        "api /api"
    );
    assert_eq!(
        get(addr, "shop.example.com", "/apis").await.body,
        "web /apis"
    );
    assert_eq!(get(addr, "shop.example.com", "/").await.body, "web /");
    assert_eq!(get(addr, "blog.example.com", "/api").await.body, "any /api");
    assert_eq!(get(addr, "a.b.example.com", "/").await.body, "any /");
    assert_eq!(get(addr, "example.com", "/").await.status, 404);
    // An absolute-form target routes by its authority.
    assert_eq!(
        get(addr, "ignored.org", "http://shop.example.com/api/x")
            .await
            .body,
        "api /api/x"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn a_router_of_its_own_service_keeps_serving_it_for_other_hosts() {
    let (own, b) = (Upstream::start("own").await, Upstream::start("b").await);
    let service = svc("own");
    let router = ProxyRouter::builder(service.clone())
        .worker_threads(1)
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .build()
        .await
        .unwrap();
    router
        .set_endpoints(&service, Slot::Blue, &[own.endpoint()])
        .await
        .unwrap();
    let addr = router.local_addr();
    assert_eq!(get(addr, "b.example.com", "/").await.body, "own /");
    add(&router, "b", ServiceRoute::host("b.example.com"), &b).await;
    assert_eq!(get(addr, "b.example.com", "/").await.body, "b /");
    assert_eq!(get(addr, "other.example.com", "/").await.body, "own /");
    // The router's own service cannot be added.
    let err = router
        .add_service(service.clone(), ServiceRoute::host("own.example.com"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    // Both services in one exposition, each family's header once.
    let text = router.metrics().render_prometheus();
    assert!(
        text.contains("atlas_proxy_requests_total{service=\"own\",slot=\"blue\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("atlas_proxy_requests_total{service=\"b\",slot=\"blue\"} 1"),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE atlas_proxy_requests_total ").count(),
        1,
        "{text}"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn conflicting_claims_are_refused_and_change_nothing() {
    let a = Upstream::start("a").await;
    let router = shared().build().await.unwrap();
    let addr = router.local_addr();
    add(&router, "a", ServiceRoute::host("a.example.com"), &a).await;
    let before = router.routes();

    let err = router
        .add_service(
            svc("c"),
            ServiceRoute::host("c.example.com").with_host("A.example.com"),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("a.example.com"), "{err}");
    assert!(err.to_string().contains("service a"), "{err}");
    let err = router
        .add_service(svc("a"), ServiceRoute::host("other.example.com"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    for (route, field) in [
        (ServiceRoute::host("bad host"), "route.hosts[0]"),
        (
            ServiceRoute::host("x.example.com").with_path_prefix("api"),
            "route.path_prefix",
        ),
    ] {
        let err = router.add_service(svc("d"), route).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }

    assert_eq!(router.routes(), before);
    assert!(router.service_view(&svc("c")).is_none());
    assert_eq!(get(addr, "c.example.com", "/").await.status, 404);
    assert_eq!(get(addr, "a.example.com", "/").await.body, "a /");
    // Unknown services are not found through the router either.
    let err = router.split(&svc("c")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    router.shutdown().await;
}

#[tokio::test]
async fn removing_a_service_drains_its_requests_in_flight() {
    let a = Upstream::start("a").await;
    let router = shared().build().await.unwrap();
    let addr = router.local_addr();
    add(&router, "a", ServiceRoute::host("a.example.com"), &a).await;
    let view = router.service_view(&svc("a")).unwrap();

    let held = tokio::spawn(get(addr, "a.example.com", "/hold"));
    bounded("the held request to arrive", async {
        while a.held.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(view.in_flight(Slot::Blue), 1);
    let removal = tokio::spawn({
        let router = Arc::new(router);
        let for_task = router.clone();
        async move {
            let result = for_task.remove_service(&svc("a")).await;
            (result, for_task)
        }
    });
    // New requests no longer reach it while its request in flight goes on.
    bounded("the route to go", async {
        while get(addr, "a.example.com", "/").await.status != 404 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !removal.is_finished(),
        "removal must wait for the request in flight"
    );
    a.release.add_permits(1);
    let reply = bounded("the held request", held).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "a /hold");
    let (result, router) = bounded("the removal", removal).await.unwrap();
    result.unwrap();

    assert!(router.service_view(&svc("a")).is_none());
    assert!(router.routes().is_empty());
    let err = view
        .set_split(&svc("a"), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = router.remove_service(&svc("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // The host is free again.
    router
        .add_service(svc("b"), ServiceRoute::host("a.example.com"))
        .unwrap();
    router.shutdown().await;
}

fn query(q: &str, args: &[(&str, &str)]) -> MetricQuery {
    MetricQuery {
        metric: "test".into(),
        query: q.into(),
        window: Duration::from_secs(60),
        args: args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

#[tokio::test]
async fn splits_and_metrics_are_per_service() {
    let ups = [
        Upstream::start("a-blue").await,
        Upstream::start("a-green").await,
        Upstream::start("b-blue").await,
        Upstream::start("b-green").await,
    ];
    let router = shared().build().await.unwrap();
    let addr = router.local_addr();
    let a = router
        .add_service(svc("a"), ServiceRoute::host("a.example.com"))
        .unwrap();
    let b = router
        .add_service(svc("b"), ServiceRoute::host("b.example.com"))
        .unwrap();
    for (view, blue, green) in [(&a, &ups[0], &ups[1]), (&b, &ups[2], &ups[3])] {
        view.set_endpoints(view.name(), Slot::Blue, &[blue.endpoint()])
            .await
            .unwrap();
        view.set_endpoints(view.name(), Slot::Green, &[green.endpoint()])
            .await
            .unwrap();
    }
    a.set_split(&svc("a"), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    b.set_split(&svc("b"), &TrafficSplit::new(Slot::Blue, 50).unwrap())
        .await
        .unwrap();
    assert_eq!(
        router.split(&svc("a")).await.unwrap(),
        Some(TrafficSplit::all_to(Slot::Green))
    );
    assert_eq!(a.endpoints(Slot::Blue), [ups[0].endpoint()]);

    let mut b_green = 0;
    for _ in 0..10 {
        let reply = get(addr, "a.example.com", "/").await;
        assert_eq!(reply.body, "a-green /");
        assert!(reply.head.contains("x-atlas-slot: green"), "{reply:?}");
        let reply = get(addr, "b.example.com", "/").await;
        if reply.body == "b-green /" {
            b_green += 1;
        }
    }
    // Exact over time: 5 of 10 consecutive weighted choices.
    assert_eq!(b_green, 5);

    let count = |m: Measurement| match m {
        Measurement::Value(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        count(
            a.metrics()
                .measure(&query("request_count:green", &[]))
                .await
                .unwrap()
        ),
        10.0
    );
    assert_eq!(
        count(
            router
                .metrics()
                .measure(&query("request_count:blue", &[("service", "b")]))
                .await
                .unwrap()
        ),
        5.0
    );
    let err = router
        .metrics()
        .measure(&query("request_count:blue", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = router
        .metrics()
        .measure(&query("request_count:blue", &[("service", "zz")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(a.replica_snapshots(Slot::Green)[0].requests, 10);

    let text = router.metrics().render_prometheus();
    for line in [
        "atlas_proxy_requests_total{service=\"a\",slot=\"green\"} 10",
        "atlas_proxy_requests_total{service=\"a\",slot=\"blue\"} 0",
        "atlas_proxy_requests_total{service=\"b\",slot=\"blue\"} 5",
        "atlas_proxy_request_duration_seconds_count{service=\"a\",slot=\"green\"} 10",
        "atlas_proxy_traffic_weight_ratio{service=\"b\",slot=\"green\"} 0.5",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // The placeholder service of a router without one is not rendered.
    assert!(!text.contains("service=\"proxy\""), "{text}");
    // One service's exposition holds that service only.
    let text = b.metrics().render_prometheus();
    assert!(!text.contains("service=\"a\""), "{text}");
    router.shutdown().await;
}

/// The whole single-service router suite on a service's view.
#[tokio::test]
async fn a_service_view_passes_the_router_conformance_suite() {
    bounded(
        "router conformance",
        conformance::router::all_single_service("proxy-service", |svc| async move {
            let router = shared().build().await.unwrap();
            let host = format!("{svc}.example.com");
            router.add_service(svc, ServiceRoute::host(host)).unwrap()
        }),
    )
    .await;
}

#[tokio::test]
async fn a_shared_router_refuses_a_split_or_regions_of_its_own() {
    let err = shared()
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("initial_split"), "{err}");
}

/// Two routers accepting on one socket, as an old and a new daemon after
/// a hand-over: once the first shuts down, the second accepts every new
/// connection, and none is refused or lost under a steady stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_handed_to_another_router_keeps_accepting() {
    let up = Upstream::start("up").await;
    let service = svc("web");
    let start = |listener: std::net::TcpListener| {
        let service = service.clone();
        let endpoint = up.endpoint();
        async move {
            let router = ProxyRouter::builder(service.clone())
                .listener(listener)
                .worker_threads(1)
                .grace_period(Duration::from_secs(2))
                .initial_split(TrafficSplit::all_to(Slot::Blue))
                .build()
                .await
                .unwrap();
            router
                .set_endpoints(&service, Slot::Blue, &[endpoint])
                .await
                .unwrap();
            router
        }
    };
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let first = start(socket).await;
    assert_eq!(first.local_addr(), addr);
    let second = start(first.try_clone_listener().unwrap()).await;
    assert_eq!(second.local_addr(), addr);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect(addr).await {
                        Ok(mut stream) => {
                            let exchange = async {
                                stream
                                    .write_all(
                                        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                                    )
                                    .await?;
                                let mut reply = String::new();
                                stream.read_to_string(&mut reply).await?;
                                Ok::<_, std::io::Error>(reply)
                            };
                            match tokio::time::timeout(BOUND, exchange).await {
                                Ok(Ok(reply)) if reply.starts_with("HTTP/1.1 200") => ok += 1,
                                other => failed.push(format!("{other:?}")),
                            }
                        }
                        Err(e) => failed.push(format!("connect: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bounded("the first router's shutdown", first.shutdown()).await;
    assert!(first.try_clone_listener().is_err());
    let served_before = second
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60))
        .requests;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (o, f) = bounded("a client", client).await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let served_after = second
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60))
        .requests;
    assert!(
        served_after > served_before + 10,
        "the second router served {served_before} then {served_after} of {ok}"
    );
    second.shutdown().await;
}
