//! The proxy router at the edge, against a hyper upstream and raw clients
//! on 127.0.0.1: early upstream answers to requests with bodies, and the
//! other behaviour a client-facing proxy owes its clients. Every wait is
//! bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atlas_core::{Endpoint, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::{AccessLog, GzipPolicy, ProxyRouter, ProxyRouterBuilder};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single wait in these tests.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

// ---------------------------------------------------------------------------
// A hyper upstream: `/read` reads the whole body and answers 200 with its
// length, `/slow` answers 200 after 2 s, anything else 404 without reading
// the request body (as hyper applications do for auth and size errors).

/// Runs on a runtime of its own, as a separate server process would, so
/// that it closes connections when it means to, not when the test's
/// runtime gets to it.
struct Upstream {
    addr: SocketAddr,
    /// Requests that reached the upstream, by path.
    ignored: Arc<AtomicUsize>,
    read: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
    }
}

impl Upstream {
    async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let ignored = Arc::new(AtomicUsize::new(0));
        let read = Arc::new(AtomicUsize::new(0));
        let (i, r) = (ignored.clone(), read.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (i, r) = (i.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (i, r) = (i.clone(), r.clone());
                        async move {
                            let response = if req.uri().path() == "/slow" {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                Response::new(Full::new(Bytes::from_static(b"late\n")))
                            } else if req.uri().path() == "/read" {
                                // Only complete bodies count.
                                match req.into_body().collect().await {
                                    Ok(body) => {
                                        r.fetch_add(1, Ordering::SeqCst);
                                        Response::new(Full::new(Bytes::from(format!(
                                            "read {}\n",
                                            body.to_bytes().len()
                                        ))))
                                    }
                                    Err(_) => {
                                        let mut res = Response::new(Full::new(Bytes::new()));
                                        *res.status_mut() = StatusCode::BAD_REQUEST;
                                        res
                                    }
                                }
                            } else {
                                i.fetch_add(1, Ordering::SeqCst);
                                let mut res =
                                    Response::new(Full::new(Bytes::from_static(b"not here\n")));
                                *res.status_mut() = StatusCode::NOT_FOUND;
                                res
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Upstream {
            addr,
            ignored,
            read,
            stop: Some(stop),
        }
    }
}

fn service() -> ServiceName {
    ServiceName::new("edge").unwrap()
}

async fn router_with(
    upstream: SocketAddr,
    configure: impl FnOnce(ProxyRouterBuilder) -> ProxyRouterBuilder,
) -> ProxyRouter {
    let router = configure(ProxyRouter::builder(service()))
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .build()
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-0", upstream)])
        .await
        .unwrap();
    router
}

// ---------------------------------------------------------------------------
// A raw keep-alive client that reads responses framed by Content-Length.

/// A response as the client saw it.
#[derive(Debug)]
struct Seen {
    status: u16,
    close: bool,
    /// The `x-atlas-slot` header.
    slot: Option<String>,
    body: Vec<u8>,
}

/// Appends what `stream` has to `buf`; an end of stream is an error saying
/// `eof`.
async fn read_more(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    eof: &'static str,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await? {
        0 => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, eof)),
        n => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Reads one response from `stream`, `buf` holding bytes already read.
async fn read_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Seen> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf, "connection closed before a response head").await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("status code");
    let mut length = None;
    let mut close = false;
    let mut slot = None;
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim() {
                "x-atlas-slot" => slot = Some(value.trim().to_owned()),
                "content-length" => length = Some(value.trim().parse::<usize>().unwrap()),
                "connection" => close |= value.contains("close"),
                _ => {}
            }
        }
    }
    let length = length.unwrap_or_else(|| panic!("response without content-length: {head}"));
    buf.drain(..head_end);
    while buf.len() < length {
        read_more(stream, buf, "connection closed inside a response body").await?;
    }
    let body = buf.drain(..length).collect();
    Ok(Seen {
        status,
        close,
        slot,
        body,
    })
}

fn post(path: &str, body_len: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: edge\r\ncontent-type: application/octet-stream\r\ncontent-length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', body_len));
    raw
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Tally {
    responses: usize,
    /// Read or write errors and connections closed without an answer: what
    /// a load generator reports as socket errors.
    socket_errors: Vec<String>,
    /// Responses with another status or body than expected.
    wrong: Vec<String>,
}

/// `conns` connections, each sending `per_conn` POSTs of `body_len` bytes
/// to `path` back to back on one keep-alive connection (a new one after a
/// response that says `Connection: close`), writing each request while
/// reading its response, as a load generator does.
async fn post_load(
    proxy: SocketAddr,
    path: &str,
    body_len: usize,
    conns: usize,
    per_conn: usize,
    expect: (u16, &str),
) -> Tally {
    let request = Arc::new(post(path, body_len));
    let expect = (expect.0, Arc::new(expect.1.to_owned()));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let request = request.clone();
        let expect = expect.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut conn: Option<(TcpStream, Vec<u8>)> = None;
            for _ in 0..per_conn {
                let (stream, buf) = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert((TcpStream::connect(proxy).await.unwrap(), Vec::new())),
                };
                let (mut r, mut w) = stream.split();
                let (wrote, seen) = tokio::join!(w.write_all(&request), read_response(&mut r, buf));
                match (wrote, seen) {
                    (Ok(()), Ok(seen)) => {
                        tally.responses += 1;
                        if (seen.status, seen.body.as_slice()) != (expect.0, expect.1.as_bytes()) {
                            tally.wrong.push(format!(
                                "{} {}",
                                seen.status,
                                String::from_utf8_lossy(&seen.body)
                            ));
                        }
                        if seen.close {
                            conn = None;
                        }
                    }
                    (w, s) => {
                        tally
                            .socket_errors
                            .push(format!("write: {w:?}, read: {:?}", s.map(|s| s.status)));
                        conn = None;
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = bounded("a load connection", task).await.unwrap();
        all.responses += t.responses;
        all.socket_errors.extend(t.socket_errors);
        all.wrong.extend(t.wrong);
    }
    all
}

/// The data path on the test's multi-threaded runtime, or on worker
/// threads of its own.
#[derive(Debug, Clone, Copy)]
enum Mode {
    SharedRuntime,
    Workers,
}

impl Mode {
    fn apply(self, builder: ProxyRouterBuilder) -> ProxyRouterBuilder {
        match self {
            Mode::SharedRuntime => builder.worker_threads(0),
            Mode::Workers => builder.worker_threads(2),
        }
    }
}

async fn early_answers_reach_every_client(
    mode: Mode,
    body_len: usize,
    conns: usize,
    per_conn: usize,
) {
    let upstream = Upstream::start().await;
    let router = router_with(upstream.addr, |b| mode.apply(b)).await;
    let proxy = router.local_addr();
    let ignored = post_load(
        proxy,
        "/ignore",
        body_len,
        conns,
        per_conn,
        (404, "not here\n"),
    )
    .await;
    assert!(
        ignored.socket_errors.is_empty() && ignored.wrong.is_empty(),
        "{} socket errors, {} wrong statuses of {} requests with {body_len}-byte bodies the upstream did not read: {:?} {:?}",
        ignored.socket_errors.len(),
        ignored.wrong.len(),
        conns * per_conn,
        ignored.socket_errors.iter().take(5).collect::<Vec<_>>(),
        ignored.wrong.iter().take(5).collect::<Vec<_>>(),
    );
    assert_eq!(ignored.responses, conns * per_conn);
    // A POST is never sent twice: the upstream saw each one once.
    assert_eq!(upstream.ignored.load(Ordering::SeqCst), conns * per_conn);
    let read_answer = format!("read {body_len}\n");
    let read = post_load(
        proxy,
        "/read",
        body_len,
        conns,
        per_conn,
        (200, &read_answer),
    )
    .await;
    assert!(
        read.socket_errors.is_empty() && read.wrong.is_empty(),
        "{:?} {:?}",
        read.socket_errors.iter().take(5).collect::<Vec<_>>(),
        read.wrong
    );
    assert_eq!(upstream.read.load(Ordering::SeqCst), conns * per_conn);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_to_4k_posts_reach_every_client_on_a_shared_runtime() {
    early_answers_reach_every_client(Mode::SharedRuntime, 4096, 16, 150).await;
}

#[tokio::test]
async fn early_answers_to_4k_posts_reach_every_client_on_worker_threads() {
    early_answers_reach_every_client(Mode::Workers, 4096, 16, 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_to_1m_posts_reach_every_client_on_a_shared_runtime() {
    early_answers_reach_every_client(Mode::SharedRuntime, 1024 * 1024, 4, 10).await;
}

#[tokio::test]
async fn early_answers_to_1m_posts_reach_every_client_on_worker_threads() {
    early_answers_reach_every_client(Mode::Workers, 1024 * 1024, 4, 10).await;
}

// ---------------------------------------------------------------------------
// Worker threads.

/// Sends a GET on `stream` and returns the slot that answered.
async fn slot_of_next_get(stream: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: edge\r\n\r\n")
        .await
        .unwrap();
    let (mut r, _) = stream.split();
    let seen = bounded("a response", read_response(&mut r, buf))
        .await
        .unwrap();
    assert_eq!(seen.status, 404);
    seen.slot.expect("every response names its slot")
}

#[tokio::test]
async fn a_split_applies_at_once_to_connections_on_every_worker() {
    let blue = Upstream::start().await;
    let green = Upstream::start().await;
    let router = router_with(blue.addr, |b| b.worker_threads(2)).await;
    router
        .set_endpoints(
            &service(),
            Slot::Green,
            &[Endpoint::new("green-0", green.addr)],
        )
        .await
        .unwrap();
    // Eight kept-alive connections, handed to the two workers in turn.
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(slot_of_next_get(&mut stream, &mut buf).await, "blue");
        conns.push((stream, buf));
    }
    router
        .set_split(&service(), &TrafficSplit::all_to(Slot::Green))
        .await
        .unwrap();
    // The next request on every connection, whichever worker serves it,
    // follows the new split.
    for (stream, buf) in &mut conns {
        assert_eq!(slot_of_next_get(stream, buf).await, "green");
    }
    assert_eq!(green.ignored.load(Ordering::SeqCst), 8);
    assert_eq!(blue.ignored.load(Ordering::SeqCst), 8);
    router.shutdown().await;
}

#[tokio::test]
async fn an_early_answer_before_a_body_too_large_to_discard_announces_the_close() {
    let upstream = Upstream::start().await;
    let router = router_with(upstream.addr, |b| b).await;
    let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
    let (mut r, mut w) = stream.split();
    let request = post("/ignore", 8 * 1024 * 1024);
    let mut buf = Vec::new();
    // The client writes while it reads, as HTTP clients do; the proxy
    // stops reading its body some time after the answer, so the write may
    // be cut short.
    let (_, seen) = bounded("the early answer", async {
        tokio::join!(w.write_all(&request), read_response(&mut r, &mut buf))
    })
    .await;
    let seen = seen.expect("the upstream's answer reaches the client");
    assert_eq!(
        (seen.status, seen.body.as_slice()),
        (404, &b"not here\n"[..])
    );
    assert!(
        seen.close,
        "the answer announces that the connection closes"
    );
    // Then the proxy closes, after the staged close.
    let mut rest = Vec::new();
    let end = bounded("the close", r.read_to_end(&mut rest)).await;
    assert!(
        rest.is_empty(),
        "nothing follows the answer: {end:?} {rest:?}"
    );
    assert_eq!(upstream.ignored.load(Ordering::SeqCst), 1);
    router.shutdown().await;
}

// ---------------------------------------------------------------------------
// Limits and the access log.

/// Sends `raw` on a new connection and reads the one response.
async fn one_exchange(proxy: SocketAddr, raw: &[u8]) -> Seen {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = stream.split();
    let mut buf = Vec::new();
    let (_, seen) = bounded("one exchange", async {
        tokio::join!(w.write_all(raw), read_response(&mut r, &mut buf))
    })
    .await;
    seen.expect("a response")
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_never_reach_an_upstream_whole() {
    let upstream = Upstream::start().await;
    let router = router_with(upstream.addr, |b| b.max_request_body(1000)).await;
    let proxy = router.local_addr();
    // Within the limit: relayed.
    let seen = one_exchange(proxy, &post("/read", 1000)).await;
    assert_eq!(
        (seen.status, seen.body.as_slice()),
        (200, &b"read 1000\n"[..])
    );
    // A declared length over it: 413 before any upstream sees the request.
    let seen = one_exchange(proxy, &post("/read", 1001)).await;
    assert_eq!(seen.status, 413);
    assert!(seen.close);
    assert_eq!(upstream.read.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.ignored.load(Ordering::SeqCst), 0);
    // A chunked body passing it: 413, and the upstream never gets it whole.
    let mut chunked =
        b"POST /read HTTP/1.1\r\nhost: edge\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"190\r\n");
        chunked.extend(std::iter::repeat_n(b'y', 400));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let seen = one_exchange(proxy, &chunked).await;
    assert_eq!(seen.status, 413);
    assert_eq!(seen.slot.as_deref(), Some("blue"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.read.load(Ordering::SeqCst), 1);
    router.shutdown().await;
}

#[tokio::test]
async fn an_exchange_over_the_request_timeout_gets_504_and_counts_as_a_timeout() {
    let upstream = Upstream::start().await;
    let router = router_with(upstream.addr, |b| {
        b.request_timeout(Duration::from_millis(300))
    })
    .await;
    let started = std::time::Instant::now();
    let seen = one_exchange(
        router.local_addr(),
        b"GET /slow HTTP/1.1\r\nhost: edge\r\n\r\n",
    )
    .await;
    assert_eq!((seen.status, seen.slot.as_deref()), (504, Some("blue")));
    assert!(seen.close);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let stats = router
        .metrics()
        .window_stats(Slot::Blue, Duration::from_secs(60));
    assert_eq!((stats.requests, stats.proxy_errors), (1, 1));
    // A quick exchange is not affected.
    let seen = one_exchange(router.local_addr(), &post("/read", 10)).await;
    assert_eq!(seen.status, 200);
    let refused = ProxyRouter::builder(service())
        .request_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("request_timeout"), "{refused}");
    router.shutdown().await;
}

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    let upstream = Upstream::start().await;
    let out = Captured::default();
    let router = router_with(upstream.addr, |b| {
        b.access_log(AccessLog::to_writer(out.clone()))
    })
    .await;
    let proxy = router.local_addr();
    assert_eq!(one_exchange(proxy, &post("/read", 300)).await.status, 200);
    assert_eq!(
        one_exchange(proxy, b"GET /nothing?q=1 HTTP/1.1\r\nhost: edge\r\n\r\n")
            .await
            .status,
        404
    );
    router.shutdown().await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let upstream_addr = upstream.addr.to_string();
    for (line, (method, path, status, bytes)) in lines
        .iter()
        .zip([("POST", "/read", 200, 9), ("GET", "/nothing?q=1", 404, 9)])
    {
        assert_eq!(line["service"], "edge");
        assert_eq!(line["slot"], "blue");
        assert_eq!(line["method"], method);
        assert_eq!(line["path"], path);
        assert_eq!(line["status"], status);
        assert_eq!(line["bytes"], bytes);
        assert_eq!(line["upstream"], upstream_addr.as_str());
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
}

// ---------------------------------------------------------------------------
// Protocol upgrades, interim responses and the response idle timeout,
// against a raw upstream that plays a script on each connection.

/// Reads from `stream` until a head ends; returns it, lowercased.
async fn raw_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert_eq!(i + 4, buf.len(), "nothing follows the head yet");
            return String::from_utf8_lossy(&buf).to_ascii_lowercase();
        }
        let mut byte = [0u8; 1];
        let n = bounded("a head", stream.read(&mut byte)).await.unwrap();
        assert!(n == 1, "closed inside a head: {buf:?}");
        buf.push(byte[0]);
    }
}

/// A raw upstream on 127.0.0.1 running `script` for each connection.
async fn raw_upstream<F, Fut>(script: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream));
        }
    });
    (addr, task)
}

fn prometheus_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn a_websocket_upgrade_is_relayed_both_ways_and_drained_after_a_cutover() {
    let (addr, _task) = raw_upstream(|mut s| async move {
        let head = raw_head(&mut s).await;
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
            .await
            .unwrap();
        // Echo until the proxy closes.
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let router = router_with(addr, |b| b.upgrade_drain_time(Duration::from_millis(300))).await;
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nhost: edge\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: k\r\n\r\n")
        .await
        .unwrap();
    let head = raw_head(&mut client).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nsec-websocket-accept: x\r\n"), "{head}");
    assert!(head.contains("\r\nx-atlas-slot: blue\r\n"), "{head}");
    // Frames go both ways.
    for message in [&b"hello"[..], &[0x81, 0x02, 0xff, 0x00][..]] {
        client.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        bounded("the echo", client.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, message);
    }
    let metrics = router.metrics();
    let text = metrics.render_prometheus();
    let series = |name: &str| format!("{name}{{service=\"edge\",slot=\"blue\"}}");
    assert_eq!(
        prometheus_value(&text, &series("atlas_proxy_upgraded_connections_total")),
        1
    );
    assert_eq!(
        prometheus_value(&text, &series("atlas_proxy_upgraded_connections_open")),
        1
    );
    // A cutover: the endpoint leaves the slot, and set_endpoints does not
    // wait for the upgraded connection; it stays open for the drain time.
    bounded(
        "set_endpoints",
        router.set_endpoints(&service(), Slot::Blue, &[]),
    )
    .await
    .unwrap();
    client.write_all(b"still").await.unwrap();
    let mut back = [0u8; 5];
    bounded("the echo after the cutover", client.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"still");
    // Then it is closed, and counted.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    bounded("the drain", client.read_to_end(&mut rest))
        .await
        .unwrap();
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
    router.shutdown().await;
}

#[tokio::test]
async fn interim_responses_are_relayed_before_the_final_one() {
    let (addr, _task) = raw_upstream(|mut s| async move {
        raw_head(&mut s).await;
        s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let router = router_with(addr, |b| b).await;
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: edge\r\n\r\n")
        .await
        .unwrap();
    let hints = raw_head(&mut client).await;
    assert!(hints.starts_with("http/1.1 103"), "{hints}");
    assert!(
        hints.contains("\r\nlink: </s.css>; rel=preload\r\n"),
        "{hints}"
    );
    let mut buf = Vec::new();
    let (mut r, _) = client.split();
    let seen = bounded("the final response", read_response(&mut r, &mut buf))
        .await
        .unwrap();
    assert_eq!((seen.status, seen.body.as_slice()), (200, &b"ok"[..]));
    router.shutdown().await;
}

#[tokio::test]
async fn a_quiet_response_body_is_cut_off_only_with_an_idle_timeout() {
    let (addr, _task) = raw_upstream(|mut s| async move {
        raw_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let get = b"GET / HTTP/1.1\r\nhost: edge\r\n\r\n";
    // Default: a quiet body (server-sent events) is waited for. (A short
    // grace period: shutdown then cuts the exchange off.)
    let router = router_with(addr, |b| b.grace_period(Duration::from_millis(100))).await;
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    client.write_all(get).await.unwrap();
    let mut got = vec![0u8; 256];
    let mut seen = Vec::new();
    let quiet = tokio::time::timeout(Duration::from_millis(700), async {
        loop {
            let n = client.read(&mut got).await.unwrap();
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&got[..n]);
        }
    })
    .await;
    assert!(quiet.is_err(), "the connection stayed open");
    assert!(seen.ends_with(b"half"));
    router.shutdown().await;
    // With the timeout: cut off, the client connection closed.
    let router = router_with(addr, |b| {
        b.response_idle_timeout(Duration::from_millis(200))
    })
    .await;
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    client.write_all(get).await.unwrap();
    let mut all = Vec::new();
    let started = std::time::Instant::now();
    bounded("the cut-off", client.read_to_end(&mut all))
        .await
        .unwrap();
    assert!(all.ends_with(b"half"), "{all:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    router.shutdown().await;
}

// ---------------------------------------------------------------------------
// Gzip.

/// Reads one response whose body may be chunked; returns the lowercased
/// head and the body decoded from the chunked coding.
async fn head_and_body(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let head = raw_head(stream).await;
    let mut body = Vec::new();
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                let mut b = [0u8; 1];
                bounded("a chunk line", stream.read_exact(&mut b))
                    .await
                    .unwrap();
                line.push(b[0]);
            }
            let size =
                usize::from_str_radix(std::str::from_utf8(&line[..line.len() - 2]).unwrap(), 16)
                    .unwrap();
            let mut chunk = vec![0u8; size + 2];
            bounded("a chunk", stream.read_exact(&mut chunk))
                .await
                .unwrap();
            if size == 0 {
                return (head, body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    body.resize(length, 0);
    bounded("a body", stream.read_exact(&mut body))
        .await
        .unwrap();
    (head, body)
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

#[tokio::test]
async fn text_responses_are_gzipped_for_clients_that_accept_it_and_only_then() {
    let text: Vec<u8> = (0..6000).map(|i| b"abcdefgh "[i % 9]).collect();
    let page = Arc::new(text.clone());
    let (addr, _task) = raw_upstream(move |mut s| {
        let page = page.clone();
        async move {
            loop {
                let head = raw_head(&mut s).await;
                let path = head.split(' ').nth(1).unwrap().to_owned();
                let (ctype, extra, body): (&str, &str, &[u8]) = match path.as_str() {
                    "/small" => ("text/plain", "", b"tiny"),
                    "/png" => ("image/png", "", &page),
                    "/encoded" => ("text/plain", "content-encoding: br\r\n", &page),
                    _ => ("text/html; charset=utf-8", "etag: \"v1\"\r\n", &page),
                };
                let mut reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n{extra}content-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                reply.extend_from_slice(body);
                if s.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let router = router_with(addr, |b| b.gzip(GzipPolicy::default().with_min_size(100))).await;
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    let mut ask = async |path: &str, extra: &str| {
        client
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: edge\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        head_and_body(&mut client).await
    };
    // Accepted: compressed, chunked, Vary, a weak ETag; the same text.
    let (head, body) = ask("/page", "accept-encoding: br, gzip\r\n").await;
    assert!(head.contains("\r\ncontent-encoding: gzip\r\n"), "{head}");
    assert!(head.contains("\r\nvary: accept-encoding\r\n"), "{head}");
    assert!(head.contains("\r\netag: w/\"v1\"\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(body.len() < text.len() / 4, "{} bytes", body.len());
    assert_eq!(gunzip(&body), text);
    // The connection goes on; not accepted: identity, still with Vary.
    let (head, body) = ask("/page", "accept-encoding: gzip;q=0\r\n").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("\r\nvary: accept-encoding\r\n"), "{head}");
    assert!(head.contains("\r\netag: \"v1\"\r\n"), "{head}");
    assert_eq!(body, text);
    // A range request, a small body, a media type not listed, a body
    // already encoded: untouched.
    let (head, body) = ask("/page", "accept-encoding: gzip\r\nrange: bytes=0-\r\n").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, text);
    let (head, body) = ask("/small", "accept-encoding: gzip\r\n").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, b"tiny");
    let (head, _) = ask("/png", "accept-encoding: gzip\r\n").await;
    assert!(
        !head.contains("content-encoding") && !head.contains("vary"),
        "{head}"
    );
    let (head, body) = ask("/encoded", "accept-encoding: gzip\r\n").await;
    assert!(head.contains("\r\ncontent-encoding: br\r\n"), "{head}");
    assert_eq!(body, text);
    let refused = ProxyRouter::builder(service())
        .gzip(GzipPolicy::default().with_level(12))
        .build()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("gzip.level"), "{refused}");
    router.shutdown().await;
}
