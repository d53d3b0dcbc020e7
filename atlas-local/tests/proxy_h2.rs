//! HTTP/2 clients over TLS (ALPN `h2`) relayed by the proxy router to
//! plain HTTP/1.1 hyper upstreams on 127.0.0.1: answers and headers, many
//! streams on one connection, the weighted split and the header match
//! rule, streaming bodies both ways, errors, metrics, draining and
//! shutdown, HTTP/1.1 on the same listener, and `curl --http2`. The
//! certificates are made by each test in a temporary directory. Every wait
//! is bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atlas_core::{Endpoint, RequestMatch, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::{
    AccessLog, GzipPolicy, Hsts, ProxyRouter, ProxyRouterBuilder, ServiceRoute, TlsConfig,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single wait in these tests.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

type ClientBody = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------
// One CA and one leaf for `a.test` per test.

struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "atlas h2 test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "a.test");
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let pki = Pki {
            ca_file: dir.path().join("ca.pem"),
            cert: dir.path().join("a.crt"),
            key: dir.path().join("a.key"),
            ca_der: ca_cert.der().clone(),
            dir,
        };
        std::fs::write(&pki.ca_file, ca_cert.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig::new().certificate(&self.cert, &self.key)
    }

    /// A TLS connection to `addr` offering the ALPN protocols `alpn`.
    async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        bounded(
            "TLS handshake",
            connector.connect(ServerName::try_from("a.test").unwrap(), tcp),
        )
        .await
        .unwrap()
    }

    /// An HTTP/2 client connection to `addr` (ALPN `h2`).
    async fn h2(&self, addr: SocketAddr) -> SendRequest<ClientBody> {
        let stream = self.connect(addr, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }
}

// ---------------------------------------------------------------------------
// A plain HTTP/1.1 hyper upstream: `/echo` streams the request body back,
// `/slow` answers after 600 ms, anything else answers with the upstream's
// name, the protocol and Host it saw, and a hop-by-hop header.

async fn upstream(name: &'static str) -> SocketAddr {
    counted_upstream(name).await.0
}

/// [`upstream`], with the number of connections it accepted.
async fn counted_upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    http1_upstream(move |req: Request<Incoming>| async move {
        let response = Response::builder()
            .header("x-upstream", name)
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5");
        if req.uri().path() == "/echo" {
            return response.body(req.into_body().boxed()).unwrap();
        }
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let seen = format!(
            "{name} {:?} host={} forwarded={} cookie={}",
            req.version(),
            header(&req, "host"),
            header(&req, "forwarded"),
            header(&req, "cookie"),
        );
        response
            .body(
                Full::new(Bytes::from(seen))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()
    })
    .await
}

/// A hyper HTTP/1.1 server on 127.0.0.1 answering each request with
/// `answer`, and the number of connections it accepted.
async fn http1_upstream<F, Fut, B>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service =
                    service_fn(move |req| async move { Ok::<_, Infallible>(answer(req).await) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn header<B>(req: &Request<B>, name: &str) -> String {
    req.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("|")
}

fn service() -> ServiceName {
    ServiceName::new("edge").unwrap()
}

/// A router on a TLS listener with `blue` (and `green`) upstreams.
async fn router(tls: TlsConfig, blue: SocketAddr, green: Option<SocketAddr>) -> ProxyRouter {
    router_with(tls, blue, green, |b| b).await
}

/// [`router`], its builder first passed through `configure`.
async fn router_with(
    tls: TlsConfig,
    blue: SocketAddr,
    green: Option<SocketAddr>,
    configure: impl FnOnce(ProxyRouterBuilder) -> ProxyRouterBuilder,
) -> ProxyRouter {
    let builder = ProxyRouter::builder(service())
        .worker_threads(1)
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .tls(tls);
    let router = configure(builder).build().await.unwrap();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-0", blue)])
        .await
        .unwrap();
    if let Some(green) = green {
        router
            .set_endpoints(&service(), Slot::Green, &[Endpoint::new("green-0", green)])
            .await
            .unwrap();
    }
    router
}

fn get(path: &str) -> Request<ClientBody> {
    Request::get(format!("https://a.test{path}"))
        .body(Empty::new().boxed())
        .unwrap()
}

/// Sends `request` and reads the whole answer.
async fn send(
    sender: &mut SendRequest<ClientBody>,
    request: Request<ClientBody>,
) -> (http::response::Parts, String) {
    bounded("an HTTP/2 exchange", async {
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8(body.to_vec()).unwrap())
    })
    .await
}

/// Waits until no request counts as in flight: an exchange is recorded
/// as its response body is dropped, which may come just after the client
/// read the last frame.
async fn settled(router: &ProxyRouter) {
    bounded("the exchanges to be recorded", async {
        while router.in_flight(Slot::Blue) + router.in_flight(Slot::Green) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Once the exchanges are recorded: blue's requests and proxy errors.
async fn assert_blue_counts(router: &ProxyRouter, expected: (u64, u64)) {
    settled(router).await;
    let stats = router
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60));
    assert_eq!((stats.requests, stats.proxy_errors), expected);
}

fn slot_of(parts: &http::response::Parts) -> &str {
    parts
        .headers
        .get("x-atlas-slot")
        .map_or("none", |v| v.to_str().unwrap())
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_reach_an_http1_upstream_with_converted_headers() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = router(
        pki.tls().hsts(Hsts::new(Duration::from_secs(600))),
        blue,
        None,
    )
    .await;
    let mut h2 = pki.h2(router.local_addr()).await;
    for path in ["/one", "/two?q=1"] {
        let mut request = get(path);
        // Cookies split over two fields (as HTTP/2 allows) reach the
        // HTTP/1.1 upstream as one.
        request
            .headers_mut()
            .append("cookie", "a=1".parse().unwrap());
        request
            .headers_mut()
            .append("cookie", "b=2".parse().unwrap());
        let (parts, body) = send(&mut h2, request).await;
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            body,
            "b0 HTTP/1.1 host=a.test forwarded=for=127.0.0.1;proto=https;host=a.test cookie=a=1; b=2"
        );
        assert_eq!(slot_of(&parts), "blue");
        assert_eq!(parts.headers["x-upstream"], "b0");
        assert_eq!(parts.headers["strict-transport-security"], "max-age=600");
        for hop in ["connection", "keep-alive", "x-hop", "transfer-encoding"] {
            assert!(!parts.headers.contains_key(hop), "{hop} relayed");
        }
    }
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_across_h2_requests() {
    let pki = Pki::new();
    let (blue, accepted) = counted_upstream("b0").await;
    let router = router(pki.tls(), blue, None).await;
    let mut h2 = pki.h2(router.local_addr()).await;
    for i in 0..20 {
        let (parts, _) = send(&mut h2, get(&format!("/p{i}"))).await;
        assert_eq!(parts.status, StatusCode::OK);
        settled(&router).await;
        // The connection goes back to the pool once hyper's client
        // connection has finished with it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = accepted.load(Ordering::Relaxed);
    assert!(
        opened <= 2,
        "{opened} upstream connections for 20 sequential requests"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_are_all_answered_and_counted() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = router(pki.tls(), blue, None).await;
    let h2 = pki.h2(router.local_addr()).await;
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut h2 = h2.clone();
        streams.spawn(async move { send(&mut h2, get(&format!("/s{i}"))).await });
    }
    let mut answered = 0;
    while let Some(done) = streams.join_next().await {
        let (parts, body) = done.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.starts_with("b0 HTTP/1.1"), "{body}");
        answered += 1;
    }
    assert_eq!(answered, 64);
    settled(&router).await;
    let stats = router
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60));
    assert_eq!(stats.requests, 64);
    assert_eq!(stats.successful, 64);
    assert!(stats.latency_p50.is_some());
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weighted_split_and_the_header_match_hold_over_h2() {
    let pki = Pki::new();
    let (blue, green) = (upstream("b0").await, upstream("g0").await);
    let router = router(pki.tls(), blue, Some(green)).await;
    router
        .set_split(&service(), &TrafficSplit::new(Slot::Blue, 20).unwrap())
        .await
        .unwrap();
    let mut h2 = pki.h2(router.local_addr()).await;
    let mut to_green = 0;
    for _ in 0..100 {
        let (parts, body) = send(&mut h2, get("/")).await;
        let slot = slot_of(&parts).to_owned();
        assert_eq!(body.starts_with("g0"), slot == "green", "{slot}: {body}");
        to_green += usize::from(slot == "green");
    }
    assert_eq!(
        to_green, 20,
        "of 100 consecutive requests, exactly 20 % to green"
    );

    let pinned = TrafficSplit::all_to(Slot::Blue).with_canary_match(RequestMatch::Header {
        name: "X-Canary".into(),
        value: "always".into(),
    });
    router.set_split(&service(), &pinned).await.unwrap();
    for _ in 0..10 {
        let mut request = get("/");
        request
            .headers_mut()
            .insert("x-canary", "always".parse().unwrap());
        let (parts, body) = send(&mut h2, request).await;
        assert_eq!((slot_of(&parts), &body[..2]), ("green", "g0"));
        let (parts, body) = send(&mut h2, get("/")).await;
        assert_eq!((slot_of(&parts), &body[..2]), ("blue", "b0"));
    }
    settled(&router).await;
    let green_stats = router
        .metrics()
        .window_stats(Slot::Green, Duration::from_secs(60));
    assert_eq!(green_stats.requests, 30);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_stream_both_ways() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = router(pki.tls(), blue, None).await;
    let mut h2 = pki.h2(router.local_addr()).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let request = Request::post("https://a.test/echo").body(body).unwrap();
    h2.ready().await.unwrap();
    let response = bounded("the echo's head", async {
        // The head comes back before the request body has ended.
        tx.send(Ok(Frame::data(Bytes::from_static(b"first "))))
            .await
            .unwrap();
        h2.send_request(request).await.unwrap()
    })
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Each piece is echoed before the next one is sent: nothing waits for
    // the whole body on either side.
    let mut echoed = Vec::new();
    for piece in ["second ", "third"] {
        let frame = bounded("an echoed piece", body.frame())
            .await
            .unwrap()
            .unwrap();
        echoed.extend_from_slice(frame.data_ref().unwrap());
        tx.send(Ok(Frame::data(Bytes::from(piece)))).await.unwrap();
    }
    drop(tx);
    let rest = bounded("the echo's end", body.collect())
        .await
        .unwrap()
        .to_bytes();
    echoed.extend_from_slice(&rest);
    assert_eq!(String::from_utf8(echoed).unwrap(), "first second third");
    router.shutdown().await;
}

/// A stream of the frames sent on `rx`.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_missing_endpoints_get_502_and_503() {
    let pki = Pki::new();
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let router = router(pki.tls(), closed, None).await;
    let mut h2 = pki.h2(router.local_addr()).await;
    let (parts, _) = send(&mut h2, get("/")).await;
    assert_eq!(
        (parts.status, slot_of(&parts)),
        (StatusCode::BAD_GATEWAY, "blue")
    );
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    let (parts, _) = send(&mut h2, get("/")).await;
    assert_eq!(
        (parts.status, slot_of(&parts)),
        (StatusCode::SERVICE_UNAVAILABLE, "green")
    );
    let stats = router
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60));
    assert_eq!((stats.requests, stats.proxy_errors), (1, 1));
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_and_shutdown_wait_for_h2_streams_in_flight() {
    let pki = Pki::new();
    let (old, new) = (upstream("b0").await, upstream("b1").await);
    let router = Arc::new(router(pki.tls(), old, None).await);
    let h2 = pki.h2(router.local_addr()).await;

    // A cutover returns only once the slow stream on the old endpoint
    // finished.
    let slow = {
        let mut h2 = h2.clone();
        tokio::spawn(async move { send(&mut h2, get("/slow")).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(router.in_flight(Slot::Blue), 1);
    let started = tokio::time::Instant::now();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-1", new)])
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (parts, body) = slow.await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with("b0"), "{body}");
    let (_, body) = send(&mut h2.clone(), get("/")).await;
    assert!(body.starts_with("b1"), "{body}");

    // A shutdown sends GOAWAY, and the stream in flight still finishes.
    let slow = {
        let mut h2 = h2.clone();
        tokio::spawn(async move { send(&mut h2, get("/slow")).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    bounded("the shutdown", router.shutdown()).await;
    let (parts, body) = bounded("the slow stream", slow).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with("b1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_share_the_listener_and_http2_can_be_turned_off() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    for http2 in [true, false] {
        let router = router(pki.tls().http2(http2), blue, None).await;
        // A client offering only HTTP/1.1 gets it.
        let mut stream = pki.connect(router.local_addr(), &[b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        stream
            .write_all(b"GET /h1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        bounded("an HTTP/1.1 answer", stream.read_to_string(&mut answer))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("b0 HTTP/1.1 host=a.test"), "{answer}");
        // A client offering both gets h2 only when it is on.
        let stream = pki
            .connect(router.local_addr(), &[b"h2", b"http/1.1"])
            .await;
        let chosen = if http2 { &b"h2"[..] } else { &b"http/1.1"[..] };
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(chosen));
        router.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_through_the_proxy() {
    let features = std::process::Command::new("curl").arg("-V").output();
    let Ok(features) = features else {
        panic!("curl is not installed");
    };
    assert!(
        String::from_utf8_lossy(&features.stdout).contains("HTTP2"),
        "this curl has no HTTP/2"
    );
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = router(pki.tls(), blue, None).await;
    let port = router.local_addr().port();
    let out = tokio::process::Command::new("curl")
        .args(["--http2", "-sS", "-D", "-", "--max-time", "10", "--cacert"])
        .arg(&pki.ca_file)
        .arg("--resolve")
        .arg(format!("a.test:{port}:127.0.0.1"))
        .args(["-w", "\nversion=%{http_version}"])
        .arg(format!("https://a.test:{port}/curl"))
        .output();
    let out = bounded("curl", out).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("x-atlas-slot: blue"), "{text}");
    assert!(text.contains("b0 HTTP/1.1 host=a.test:"), "{text}");
    assert!(text.ends_with("version=2"), "{text}");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_by_authority_sticky_cookies_and_the_access_log_cover_h2() {
    let pki = Pki::new();
    let (blue, green, shop) = (
        upstream("b0").await,
        upstream("g0").await,
        upstream("shop").await,
    );
    let log_file = pki.dir.path().join("access.log");
    let router = ProxyRouter::builder(service())
        .worker_threads(1)
        .initial_split(TrafficSplit::new(Slot::Blue, 50).unwrap())
        .sticky_cookie("atlas-slot")
        .access_log(AccessLog::to_file(&log_file).unwrap())
        .tls(pki.tls())
        .build()
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-0", blue)])
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Green, &[Endpoint::new("green-0", green)])
        .await
        .unwrap();
    let shop_name = ServiceName::new("shop").unwrap();
    let shop_view = router
        .add_service(shop_name.clone(), ServiceRoute::host("shop.test"))
        .unwrap();
    shop_view
        .set_endpoints(&shop_name, Slot::Blue, &[Endpoint::new("shop-0", shop)])
        .await
        .unwrap();
    shop_view
        .set_split(&shop_name, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let mut h2 = pki.h2(router.local_addr()).await;

    // `:authority` routes: the same connection reaches both services.
    let shop_get = Request::get("https://shop.test/cart")
        .body(Empty::new().boxed())
        .unwrap();
    let (parts, body) = send(&mut h2, shop_get).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with("shop HTTP/1.1 host=shop.test"), "{body}");

    // A weighted choice sets the cookie; the cookie brings the client back.
    let (parts, _) = send(&mut h2, get("/first")).await;
    let slot = slot_of(&parts).to_owned();
    let cookie = parts.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("atlas-slot={slot}")),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..20 {
        let mut request = get("/again");
        request
            .headers_mut()
            .insert("cookie", pair.parse().unwrap());
        let (parts, _) = send(&mut h2, request).await;
        assert_eq!(slot_of(&parts), slot);
        assert!(!parts.headers.contains_key("set-cookie"));
    }
    settled(&router).await;
    router.shutdown().await;

    let log = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 22, "{log}");
    let shop_line = &lines[0];
    assert_eq!(shop_line["service"], "shop");
    assert_eq!(shop_line["method"], "GET");
    assert_eq!(shop_line["path"], "/cart");
    assert_eq!(shop_line["status"], 200);
    assert_eq!(shop_line["upstream"], shop.to_string());
    assert!(
        lines[1..]
            .iter()
            .all(|l| l["service"] == "edge" && l["slot"] == slot.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_answers_504_or_resets_a_streaming_response() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = router_with(pki.tls(), blue, None, |b| {
        b.request_timeout(Duration::from_millis(300))
    })
    .await;
    let mut h2 = pki.h2(router.local_addr()).await;

    // No response head within the timeout: 504, counted as a proxy error.
    let (parts, _) = send(&mut h2, get("/slow")).await;
    assert_eq!(
        (parts.status, slot_of(&parts)),
        (StatusCode::GATEWAY_TIMEOUT, "blue")
    );

    // A response that started but has not ended by then is reset.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let request = Request::post("https://a.test/echo")
        .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"start"))))
        .await
        .unwrap();
    h2.ready().await.unwrap();
    let response = bounded("the echo's head", h2.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = tokio::time::Instant::now();
    let body = bounded("the echo's end", response.into_body().collect()).await;
    assert!(body.is_err(), "the stream was not reset");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(tx);

    // A quick request on the same connection is unaffected.
    let (parts, _) = send(&mut h2, get("/quick")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_blue_counts(&router, (3, 2)).await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_after_the_client_header_timeout() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = router_with(pki.tls(), blue, None, |b| {
        b.client_header_timeout(Duration::from_millis(300))
    })
    .await;
    let mut h2 = pki.h2(router.local_addr()).await;
    // A stream slower than the timeout keeps the connection open.
    let (parts, _) = send(&mut h2, get("/slow")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(!h2.is_closed());
    let idle = tokio::time::Instant::now();
    bounded("the idle connection to close", async {
        while !h2.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    router.shutdown().await;
}

// ---------------------------------------------------------------------------
// Gzip, the client body and response idle timeouts, and WebSocket over
// HTTP/2 (RFC 8441).

/// The text `/text` answers with.
fn text_body() -> Bytes {
    Bytes::from("hello gzip over h2, ".repeat(300))
}

/// An upstream for the gzip policy: `/text` (a long text/plain with a
/// strong ETag, or its first bytes as a 206 for a Range request),
/// `/stream` (the same text chunked), `/small` (short text), `/encoded`
/// (long text already encoded) and `/image` (a long image/png).
async fn gzip_upstream() -> SocketAddr {
    http1_upstream(|req: Request<Incoming>| async move {
        let text = text_body();
        let full = |bytes: Bytes| Full::new(bytes).boxed();
        let response = Response::builder().header("content-type", "text/plain");
        let response = match req.uri().path() {
            "/text" if req.headers().contains_key("range") => response
                .status(206)
                .header("content-range", format!("bytes 0-99/{}", text.len()))
                .body(full(text.slice(..100))),
            "/text" => response.header("etag", "\"v1\"").body(full(text)),
            "/stream" => {
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = text
                    .chunks(1000)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                response.body(StreamBody::new(futures::stream::iter(frames)).boxed())
            }
            "/small" => response.body(full(text.slice(..100))),
            "/encoded" => response.header("content-encoding", "br").body(full(text)),
            _ => Response::builder()
                .header("content-type", "image/png")
                .body(full(text)),
        };
        response.unwrap()
    })
    .await
    .0
}

/// A GET of `path` with `headers`.
fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<ClientBody> {
    let mut request = get(path);
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

/// Sends `request` and reads the whole answer as bytes.
async fn send_bytes(
    sender: &mut SendRequest<ClientBody>,
    request: Request<ClientBody>,
) -> (http::response::Parts, Bytes) {
    bounded("an HTTP/2 exchange", async {
        sender.ready().await.unwrap();
        let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    })
    .await
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn value<'a>(parts: &'a http::response::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_responses_on_h2_are_gzipped_under_the_http1_policy() {
    let pki = Pki::new();
    let blue = gzip_upstream().await;
    let router = router_with(pki.tls(), blue, None, |b| b.gzip(GzipPolicy::default())).await;
    let mut h2 = pki.h2(router.local_addr()).await;
    let gzip = [("accept-encoding", "br, gzip")];
    let text = text_body();

    // A long text, of known length or streamed: compressed, announced,
    // its strong ETag made weak; it decompresses to the upstream's bytes.
    for path in ["/text", "/stream"] {
        let (parts, body) = send_bytes(&mut h2, get_with(path, &gzip)).await;
        assert_eq!(parts.status, StatusCode::OK, "{path}");
        assert_eq!(value(&parts, "content-encoding"), Some("gzip"), "{path}");
        assert_eq!(value(&parts, "vary"), Some("accept-encoding"), "{path}");
        assert_eq!(value(&parts, "content-length"), None, "{path}");
        assert_eq!(value(&parts, "x-atlas-slot"), Some("blue"), "{path}");
        assert!(body.len() < text.len() / 4, "{path}: {} bytes", body.len());
        assert_eq!(gunzip(&body), text, "{path}");
        if path == "/text" {
            assert_eq!(value(&parts, "etag"), Some("W/\"v1\""));
        }
    }

    // Not compressed: a client that does not accept gzip (or refuses it),
    // a Range request (its 206), a body under the minimum size, one
    // already encoded, a media type not listed. Listed text varies.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case<'_>; 6] = [
        ("/text", &[], Some("accept-encoding")),
        (
            "/text",
            &[("accept-encoding", "gzip;q=0")],
            Some("accept-encoding"),
        ),
        (
            "/text",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
            Some("accept-encoding"),
        ),
        ("/small", &gzip, Some("accept-encoding")),
        ("/encoded", &gzip, None),
        ("/image", &gzip, None),
    ];
    for (path, headers, vary) in cases {
        let (parts, body) = send_bytes(&mut h2, get_with(path, headers)).await;
        let what = format!("{path} {headers:?}");
        assert_ne!(value(&parts, "content-encoding"), Some("gzip"), "{what}");
        assert_eq!(value(&parts, "vary"), vary, "{what}");
        assert_eq!(
            value(&parts, "content-length"),
            Some(body.len().to_string().as_str()),
            "{what}"
        );
        let expected = match (path, headers.len()) {
            ("/small", _) | ("/text", 2) => text.slice(..100),
            _ => text.clone(),
        };
        assert_eq!(body, expected, "{what}");
        if headers.len() == 2 {
            assert_eq!(parts.status, StatusCode::PARTIAL_CONTENT);
        }
    }
    assert_eq!(
        value(
            &send_bytes(&mut h2, get_with("/encoded", &gzip)).await.0,
            "content-encoding"
        ),
        Some("br")
    );
    router.shutdown().await;
}

/// A raw HTTP/1.1 upstream, one request per connection: `GET /stall`
/// answers a 100-byte body's first 10 bytes and then nothing; a `POST`
/// gets no answer, its bytes after the head are read until the proxy
/// closes the connection; anything else gets `ok`. What each stalled
/// connection received after its head (or, closed before a whole head,
/// all it received) comes on the channel once it is closed.
async fn stalling_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let end = loop {
                    let mut buf = [0u8; 4096];
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = closed.send(got);
                            return;
                        }
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let mut rest = got.split_off(end);
                if head.starts_with("get /stall ") {
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await
                        .unwrap();
                } else if !head.starts_with("post ") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let _ = stream.read_to_end(&mut rest).await;
                let _ = closed.send(rest);
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_request_body_is_abandoned_after_the_client_body_timeout() {
    let pki = Pki::new();
    let (blue, mut closed) = stalling_upstream().await;
    let router = router_with(pki.tls(), blue, None, |b| {
        b.client_body_timeout(Duration::from_millis(300))
    })
    .await;
    let mut h2 = pki.h2(router.local_addr()).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let request = Request::post("https://a.test/upload")
        .header("content-length", "10")
        .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
        .await
        .unwrap();
    h2.ready().await.unwrap();
    let started = tokio::time::Instant::now();
    // The client sends nothing more: the proxy drops the exchange, closing
    // the upstream connection and resetting the stream, as the HTTP/1.1
    // path closes both connections.
    let answer = bounded("the stalled upload's end", h2.send_request(request)).await;
    assert!(answer.is_err(), "the stream was answered: {answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "reset after {waited:?}"
    );
    let got = bounded("the upstream connection to close", closed.recv())
        .await
        .unwrap();
    assert_eq!(got, b"hello", "the upstream got more than was sent");
    drop(tx);

    // The connection serves the next stream; the abandoned exchange is
    // not counted, as on the HTTP/1.1 path.
    let (parts, body) = send(&mut h2, get("/next")).await;
    assert_eq!((parts.status, body.as_str()), (StatusCode::OK, "ok"));
    assert_blue_counts(&router, (1, 0)).await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_request_body_found_over_the_limit_as_it_streams_gets_413() {
    let pki = Pki::new();
    let (blue, mut closed) = stalling_upstream().await;
    let router = router_with(pki.tls(), blue, None, |b| b.max_request_body(8)).await;
    let mut h2 = pki.h2(router.local_addr()).await;
    // No declared length: the limit is found as the body streams.
    let pieces = [b"hello", b"world"].map(|p| Ok(Frame::data(Bytes::from_static(p))));
    let request = Request::post("https://a.test/upload")
        .body(StreamBody::new(futures::stream::iter(pieces)).boxed())
        .unwrap();
    let (parts, body) = send(&mut h2, request).await;
    assert_eq!(
        (parts.status, body.as_str(), slot_of(&parts)),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
            "blue"
        )
    );
    // Nothing past the limit went upstream, whose connection is closed
    // (before or after the request head went out).
    let got = bounded("the upstream connection to close", closed.recv())
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&got).contains("world"));
    assert_blue_counts(&router, (0, 0)).await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_idle_mid_body_resets_the_stream_after_the_response_idle_timeout() {
    let pki = Pki::new();
    let (blue, mut closed) = stalling_upstream().await;
    let router = router_with(pki.tls(), blue, None, |b| {
        b.response_idle_timeout(Duration::from_millis(300))
    })
    .await;
    let mut h2 = pki.h2(router.local_addr()).await;
    h2.ready().await.unwrap();
    let response = bounded("the stalling head", h2.send_request(get("/stall")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = bounded("the first bytes", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"0123456789");
    let started = tokio::time::Instant::now();
    let rest = bounded("the stalled body's end", body.collect()).await;
    assert!(rest.is_err(), "the stream was not reset");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "reset after {waited:?}"
    );
    // The upstream connection is closed, not left to hang.
    bounded("the upstream connection to close", closed.recv())
        .await
        .unwrap();

    // The connection serves the next stream; the cut-off response counts
    // as an upstream failure.
    let (parts, body) = send(&mut h2, get("/next")).await;
    assert_eq!((parts.status, body.as_str()), (StatusCode::OK, "ok"));
    assert_blue_counts(&router, (2, 1)).await;
    router.shutdown().await;
}

/// A WebSocket server on HTTP/1.1: answers 400 to anything but a
/// WebSocket upgrade request, 200 without switching to one for `/plain`,
/// 101 with the `Sec-WebSocket-Accept` of its key (a wrong one for
/// `/bad`), then echoes each (masked, short) frame back unmasked.
async fn websocket_upstream() -> SocketAddr {
    use base64::Engine as _;
    use sha1::Digest as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let original = String::from_utf8(head).unwrap();
                let head = original.to_lowercase();
                if !(head.starts_with("get /")
                    && head.contains("\r\nupgrade: websocket\r\n")
                    && head.contains("\r\nconnection: upgrade\r\n")
                    && head.contains("\r\nsec-websocket-version: 13\r\n"))
                {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let key = original
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| value.trim())
                    })
                    .expect("a key");
                if head.starts_with("get /plain ") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let mut sha = sha1::Sha1::new();
                sha.update(key.as_bytes());
                sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                let mut accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
                if head.starts_with("get /bad ") {
                    accept = "wrong".to_owned();
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                loop {
                    let mut fixed = [0u8; 6];
                    if stream.read_exact(&mut fixed).await.is_err() {
                        return;
                    }
                    let len = usize::from(fixed[1] & 0x7f);
                    assert!(
                        fixed[1] & 0x80 != 0 && len < 126,
                        "an unmasked or long frame"
                    );
                    let mut payload = vec![0u8; len];
                    if stream.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= fixed[2 + i % 4];
                    }
                    let mut echo = vec![fixed[0], len as u8];
                    echo.extend_from_slice(&payload);
                    if stream.write_all(&echo).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A client's masked text frame of `payload` (under 126 bytes).
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An extended CONNECT for WebSocket (RFC 8441) to `path`.
fn websocket_connect(path: &str) -> Request<ClientBody> {
    let mut request = Request::connect(format!("https://a.test{path}"))
        .version(Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .body(Empty::new().boxed())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_reaches_an_http1_upstream_and_is_drained_after_a_cutover() {
    let pki = Pki::new();
    let blue = websocket_upstream().await;
    let router = router_with(pki.tls(), blue, None, |b| {
        b.upgrade_drain_time(Duration::from_millis(300))
    })
    .await;
    let mut h2 = pki.h2(router.local_addr()).await;
    // A plain request reaches the upstream as it is; once answered, the
    // proxy's SETTINGS (which allow extended CONNECT) are in.
    let (parts, _) = send(&mut h2, get("/chat")).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);

    // An upstream whose Sec-WebSocket-Accept does not answer the key, or
    // that answers without switching: 502 (a 2xx would open the tunnel).
    for path in ["/bad", "/plain"] {
        let (parts, _) = send(&mut h2, websocket_connect(path)).await;
        assert_eq!(
            (parts.status, slot_of(&parts)),
            (StatusCode::BAD_GATEWAY, "blue"),
            "{path}"
        );
    }

    h2.ready().await.unwrap();
    let mut response = bounded(
        "the CONNECT answer",
        h2.send_request(websocket_connect("/chat")),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("x-atlas-slot").unwrap(), "blue");
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let upgraded = bounded("the client's upgrade", hyper::upgrade::on(&mut response))
        .await
        .unwrap();
    let mut ws = TokioIo::new(upgraded);
    // Frames go both ways, through the upstream's WebSocket framing.
    for message in [&b"hello"[..], b"over h2"] {
        ws.write_all(&masked_frame(message)).await.unwrap();
        let mut back = vec![0u8; 2 + message.len()];
        bounded("the echo", ws.read_exact(&mut back)).await.unwrap();
        assert_eq!(back[..2], [0x81, message.len() as u8]);
        assert_eq!(&back[2..], message);
    }
    let metrics = router.metrics();
    let series = |name: &str| format!("{name}{{service=\"edge\",slot=\"blue\"}}");
    let text = metrics.render_prometheus();
    assert_eq!(
        prometheus_value(&text, &series("atlas_proxy_upgraded_connections_total")),
        1
    );
    assert_eq!(
        prometheus_value(&text, &series("atlas_proxy_upgraded_connections_open")),
        1
    );
    // The stream's exchange is recorded at once (its 200, not in flight):
    // a cutover does not wait for it.
    settled(&router).await;
    bounded(
        "set_endpoints",
        router.set_endpoints(&service(), Slot::Blue, &[]),
    )
    .await
    .unwrap();
    ws.write_all(&masked_frame(b"still")).await.unwrap();
    let mut back = [0u8; 7];
    bounded("the echo after the cutover", ws.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back[2..], b"still");
    // Then, after the drain time, the stream is closed, and counted.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = bounded("the drain", ws.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let text = metrics.render_prometheus();
    assert_eq!(
        prometheus_value(&text, &series("atlas_proxy_upgraded_connections_open")),
        0
    );
    assert_eq!(
        prometheus_value(
            &text,
            &series("atlas_proxy_upgraded_connections_drained_total")
        ),
        1
    );
    // The HTTP/2 connection itself goes on.
    assert!(!h2.is_closed());
    router.shutdown().await;
}

fn prometheus_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}
