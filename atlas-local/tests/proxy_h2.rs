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
use atlas_local::proxy::{AccessLog, Hsts, ProxyRouter, ServiceRoute, TlsConfig};
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
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let response = Response::builder()
                        .header("x-upstream", name)
                        .header("connection", "x-hop")
                        .header("x-hop", "1")
                        .header("keep-alive", "timeout=5");
                    if req.uri().path() == "/echo" {
                        return Ok::<_, Infallible>(
                            response.body(req.into_body().boxed()).unwrap(),
                        );
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
                    Ok(response
                        .body(
                            Full::new(Bytes::from(seen))
                                .map_err(|never| match never {})
                                .boxed(),
                        )
                        .unwrap())
                });
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
    let router = ProxyRouter::builder(service())
        .worker_threads(1)
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .tls(tls)
        .build()
        .await
        .unwrap();
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
    let router = ProxyRouter::builder(service())
        .worker_threads(1)
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .request_timeout(Duration::from_millis(300))
        .tls(pki.tls())
        .build()
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-0", blue)])
        .await
        .unwrap();
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
    settled(&router).await;
    let stats = router
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60));
    assert_eq!((stats.requests, stats.proxy_errors), (3, 2));
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_after_the_client_header_timeout() {
    let pki = Pki::new();
    let blue = upstream("b0").await;
    let router = ProxyRouter::builder(service())
        .worker_threads(1)
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .client_header_timeout(Duration::from_millis(300))
        .tls(pki.tls())
        .build()
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-0", blue)])
        .await
        .unwrap();
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
