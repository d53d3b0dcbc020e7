//! The proxy router's HTTP/1.1 wire behaviour, with both sides as raw TCP
//! under the test's control: the client writes exact bytes to the proxy,
//! and the upstream is a bare `TcpListener` that parses what the proxy
//! sends and answers with exact bytes. These tests are the behaviour spec
//! of the data path (framing, keep-alive, pipelining, hop-by-hop headers,
//! forwarding headers, request-smuggling defences, failure handling), so
//! any reimplementation of it can be checked against them.
//!
//! Every socket wait is bounded by [`BOUND`], and every test as a whole by
//! [`TEST_BOUND`], so a hang fails instead of blocking.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_core::{Endpoint, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::{ProxyRouter, ProxyRouterBuilder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single socket wait.
const BOUND: Duration = Duration::from_secs(10);
/// Upper bound for a whole test.
const TEST_BOUND: Duration = Duration::from_secs(20);
/// The largest head the test parsers accept.
const MAX_HEAD: usize = 4 * 1024 * 1024;

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

/// Runs a whole test body under [`TEST_BOUND`].
async fn within<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_BOUND:?}"));
}

// ---------------------------------------------------------------------------
// Message heads and a buffered raw connection.

/// A parsed request or response head.
#[derive(Debug, Clone)]
struct Head {
    /// The request line or status line.
    line: String,
    /// Names as sent, values with surrounding whitespace trimmed.
    headers: Vec<(String, String)>,
}

impl Head {
    /// Parses a head (without its terminating empty line), strictly: CRLF
    /// line ends, token header names, no whitespace before the colon, no
    /// obsolete line folding.
    fn parse(raw: &[u8]) -> Result<Head, String> {
        let text = std::str::from_utf8(raw).map_err(|e| format!("head is not UTF-8: {e}"))?;
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default().to_owned();
        if line.contains('\n') || line.contains('\r') {
            return Err(format!("bare CR or LF in the first line {line:?}"));
        }
        let mut headers = Vec::new();
        for l in lines {
            if l.contains('\n') || l.contains('\r') {
                return Err(format!("bare CR or LF in header line {l:?}"));
            }
            if l.starts_with([' ', '\t']) {
                return Err(format!("obsolete line folding: {l:?}"));
            }
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| format!("header line without a colon: {l:?}"))?;
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(format!("invalid header name {name:?}"));
            }
            headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
        }
        Ok(Head { line, headers })
    }

    /// Every value of `name`, in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `name`, which must appear at most once.
    fn get(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {self:?}",
            all.len()
        );
        all.first().copied()
    }

    fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// The comma-separated elements of every `name` line, lower-cased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The status code of a response head.
    fn status(&self) -> Result<u16, String> {
        let mut parts = self.line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP/1.x status line: {:?}", self.line));
        }
        parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status code in {:?}", self.line))
    }

    /// `(method, target, version)` of a request head.
    fn request_line(&self) -> (&str, &str, &str) {
        let mut parts = self.line.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let version = parts.next().unwrap_or_default();
        (method, target, version)
    }

    fn is_chunked(&self) -> bool {
        self.tokens("transfer-encoding").last().map(String::as_str) == Some("chunked")
    }

    fn content_length(&self) -> Result<Option<usize>, String> {
        let all = self.all("content-length");
        let Some(first) = all.first() else {
            return Ok(None);
        };
        if all.len() > 1 {
            return Err(format!("several Content-Length lines: {all:?}"));
        }
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid Content-Length {first:?}"));
        }
        first
            .parse()
            .map(Some)
            .map_err(|e| format!("Content-Length {first:?}: {e}"))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a message body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body by the rules of the method or status.
    NoBody,
    Length(usize),
    Chunked,
    /// Delimited by the connection closing.
    Close,
}

/// A TCP connection with a read buffer, on either side of the proxy.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    async fn connect(addr: SocketAddr) -> Self {
        let stream = bounded("connect to the proxy", TcpStream::connect(addr))
            .await
            .expect("connect to the proxy");
        Wire::new(stream)
    }

    /// Writes all of `bytes`; panics on failure.
    async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .await
            .unwrap_or_else(|e| panic!("write failed: {e}"));
    }

    async fn try_send(&mut self, bytes: &[u8]) -> Result<(), String> {
        bounded("write", self.stream.write_all(bytes))
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads more bytes into the buffer: `Ok(0)` at end of stream. A
    /// connection reset is an error.
    async fn more(&mut self) -> Result<usize, String> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(BOUND, self.stream.read(&mut chunk))
            .await
            .map_err(|_| format!("nothing read within {BOUND:?}"))?
            .map_err(|e| format!("read failed: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads a head up to its empty line. `Ok(None)` when the connection
    /// ended cleanly before any byte of it.
    async fn head(&mut self) -> Result<Option<Head>, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Head::parse(&raw[..end]).map(Some);
            }
            if self.buf.len() > MAX_HEAD {
                return Err("head larger than the test's limit".into());
            }
            if self.more().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(format!(
                    "connection closed inside a head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    /// Takes exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.more().await? == 0 {
                return Err(format!(
                    "connection closed after {} of {n} body bytes",
                    self.buf.len()
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                return String::from_utf8(raw[..end].to_vec())
                    .map_err(|e| format!("line is not UTF-8: {e}"));
            }
            if self.more().await? == 0 {
                return Err(format!(
                    "connection closed inside a line: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    /// Decodes a chunked body strictly, trailers included, appending the
    /// payload to `out` as it goes (so a caller sees what arrived before
    /// an error).
    async fn chunked_into(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or_default().trim_end();
            if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("invalid chunk size line {line:?}"));
            }
            let size = usize::from_str_radix(size, 16).map_err(|e| format!("{line:?}: {e}"))?;
            if size == 0 {
                // Trailer section, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            out.extend(self.take(size).await?);
            let end = self.take(2).await?;
            if end != b"\r\n" {
                return Err(format!("chunk data not followed by CRLF: {end:?}"));
            }
        }
    }

    async fn chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.chunked_into(&mut out).await?;
        Ok(out)
    }

    /// Everything up to the end of the stream (a reset counts as the end:
    /// the proxy may reset a connection it closes with unread input).
    async fn until_close(&mut self) -> Vec<u8> {
        loop {
            match self.more().await {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
                Err(e) if e.starts_with("nothing read") => {
                    panic!("the connection stayed open: {e}")
                }
                Err(_) => return std::mem::take(&mut self.buf),
            }
        }
    }

    /// Asserts that the peer closes the connection without sending more.
    async fn expect_closed(&mut self, context: &str) {
        let rest = self.until_close().await;
        assert!(
            rest.is_empty(),
            "{context}: bytes after the message: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Requests and responses on the wire.

/// A final response as the client received it.
#[derive(Debug)]
struct Received {
    head: Head,
    status: u16,
    body: Vec<u8>,
    framing: Framing,
    /// 1xx heads before it.
    informational: Vec<Head>,
}

impl Received {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a response to a request (a HEAD request when `head_request`),
/// skipping interim 1xx responses.
async fn read_response(w: &mut Wire, head_request: bool) -> Result<Received, String> {
    let mut informational = Vec::new();
    loop {
        let head = w
            .head()
            .await?
            .ok_or("connection closed before a response")?;
        let status = head.status()?;
        if (100..200).contains(&status) && status != 101 {
            informational.push(head);
            continue;
        }
        let (framing, body) = if head_request || status == 204 || status == 304 {
            (Framing::NoBody, Vec::new())
        } else if head.has("transfer-encoding") {
            if !head.is_chunked() {
                return Err(format!("transfer-encoding not ending in chunked: {head:?}"));
            }
            if head.has("content-length") {
                return Err(format!(
                    "both Transfer-Encoding and Content-Length: {head:?}"
                ));
            }
            (Framing::Chunked, w.chunked().await?)
        } else if let Some(n) = head.content_length()? {
            (Framing::Length(n), w.take(n).await?)
        } else {
            (Framing::Close, w.until_close().await)
        };
        return Ok(Received {
            head,
            status,
            body,
            framing,
            informational,
        });
    }
}

async fn response(w: &mut Wire) -> Received {
    read_response(w, false)
        .await
        .unwrap_or_else(|e| panic!("reading the response: {e}"))
}

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection (0-based) it came on.
    conn: usize,
    head: Head,
    body: Vec<u8>,
    framing: Framing,
}

impl Seen {
    fn target(&self) -> &str {
        self.head.request_line().1
    }
}

/// Reads one request; `Ok(None)` when the connection ended cleanly between
/// requests.
async fn read_request(w: &mut Wire, conn: usize) -> Result<Option<Seen>, String> {
    let Some(head) = w.head().await? else {
        return Ok(None);
    };
    let (framing, body) = if head.has("transfer-encoding") {
        if !head.is_chunked() {
            return Err(format!("transfer-encoding not ending in chunked: {head:?}"));
        }
        if head.has("content-length") {
            return Err(format!(
                "both Transfer-Encoding and Content-Length: {head:?}"
            ));
        }
        (Framing::Chunked, w.chunked().await?)
    } else if let Some(n) = head.content_length()? {
        (Framing::Length(n), w.take(n).await?)
    } else {
        (Framing::NoBody, Vec::new())
    };
    Ok(Some(Seen {
        conn,
        head,
        body,
        framing,
    }))
}

/// A `200 OK` with a Content-Length body and the given extra header lines.
fn ok_with(body: &[u8], extra: &[&str]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
    for line in extra {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn ok(body: &[u8]) -> Vec<u8> {
    ok_with(body, &["Content-Type: text/plain"])
}

/// A GET with the given extra header lines.
fn get(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n").into_bytes();
    for line in extra {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Deterministic, non-repeating-looking test bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8) ^ usize::from(seed)) as u8)
        .collect()
}

// ---------------------------------------------------------------------------
// A scripted upstream.

/// What the scripted upstream does after reading a request.
struct Reply {
    bytes: Vec<u8>,
    /// Close the connection after writing `bytes`.
    close: bool,
}

impl Reply {
    fn keep(bytes: Vec<u8>) -> Self {
        Reply {
            bytes,
            close: false,
        }
    }

    fn close(bytes: Vec<u8>) -> Self {
        Reply { bytes, close: true }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An upstream that accepts any number of connections, reads requests off
/// each in turn and answers each with what its handler says, recording
/// everything it saw.
struct ScriptedUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Protocol errors seen on the upstream side (e.g. a request cut off).
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedUpstream {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (accepts, seen, errors) = (accepts.clone(), seen.clone(), errors.clone());
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let conn = accepts.fetch_add(1, Ordering::SeqCst);
                    let (handler, seen, errors) = (handler.clone(), seen.clone(), errors.clone());
                    conns.spawn(async move {
                        let mut w = Wire::new(stream);
                        loop {
                            let request = match read_request(&mut w, conn).await {
                                Ok(Some(request)) => request,
                                Ok(None) => return,
                                Err(e) => {
                                    errors.lock().unwrap().push(format!("conn {conn}: {e}"));
                                    return;
                                }
                            };
                            let reply = handler(&request);
                            seen.lock().unwrap().push(request);
                            if w.try_send(&reply.bytes).await.is_err() || reply.close {
                                return;
                            }
                        }
                    });
                }
            }
        });
        ScriptedUpstream {
            addr,
            accepts,
            seen,
            errors,
            task,
        }
    }

    /// An upstream answering every request with `200 OK` and its target
    /// as the body.
    async fn echo_target() -> Self {
        Self::start(|req| Reply::keep(ok(req.target().as_bytes()))).await
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// The requests received so far; fails the test on upstream-side
    /// protocol errors.
    fn requests(&self) -> Vec<Seen> {
        let errors = self.errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "the upstream saw broken requests: {errors:?}"
        );
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
}

// ---------------------------------------------------------------------------
// The router.

fn service() -> ServiceName {
    ServiceName::new("shop").unwrap()
}

/// A router sending everything to the blue slot, served by `upstream`.
async fn router_to(upstream: SocketAddr) -> ProxyRouter {
    router_with(upstream, |builder| builder).await
}

/// As [`router_to`], with options set by `configure`.
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

/// Waits (bounded) until the metrics counted `n` finished requests for
/// blue: a request is recorded when its response ended, which may be just
/// after the client saw the last byte.
async fn wait_for_requests(router: &ProxyRouter, n: u64) {
    let metrics = router.metrics();
    bounded("metrics to catch up", async {
        while metrics
            .window_stats(Slot::Blue, Duration::from_secs(60))
            .requests
            < n
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// What a client got for a request the proxy must refuse.
#[derive(Debug)]
struct Refusal {
    /// The response status, when a response head arrived.
    status: Option<u16>,
}

/// Sends `raw` on a fresh connection (tolerating a write cut short by the
/// proxy closing), reads whatever answer comes and asserts that the
/// connection is then closed.
async fn refusal(proxy: SocketAddr, raw: &[u8]) -> Refusal {
    let mut w = Wire::connect(proxy).await;
    let _ = w.try_send(raw).await;
    let status = match w.head().await {
        Ok(Some(head)) => {
            let status = head.status().expect("a valid status line");
            // A refusal is closed after its answer; anything else is
            // reported to the caller's assertion as it is.
            if status >= 400 {
                // The proxy's own error bodies are Content-Length delimited.
                if let Ok(Some(n)) = head.content_length() {
                    let _ = w.take(n).await;
                }
                w.expect_closed("after a refused request").await;
            }
            Some(status)
        }
        // Closed without an answer (or reset): refused all the same.
        Ok(None) => None,
        Err(e) => {
            assert!(
                e.starts_with("read failed"),
                "neither an answer nor a reset: {e}"
            );
            None
        }
    };
    Refusal { status }
}

/// Asserts that the upstream got nothing from an earlier refused request:
/// a good request sent afterwards is the only one it ever saw.
async fn assert_only_later_request_reaches(up: &ScriptedUpstream, proxy: SocketAddr) {
    let mut w = Wire::connect(proxy).await;
    w.send(&get("/after-refusal", &[])).await;
    let r = response(&mut w).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"/after-refusal");
    let seen = up.requests();
    let targets: Vec<&str> = seen.iter().map(Seen::target).collect();
    assert_eq!(
        targets,
        ["/after-refusal"],
        "the refused request reached the upstream"
    );
    assert_eq!(
        up.accepts(),
        1,
        "only the later request opened a connection"
    );
}

// ---------------------------------------------------------------------------
// 1. Keep-alive.

#[tokio::test]
async fn keep_alive_client_connection_reuses_one_upstream_connection() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        for i in 0..3 {
            let path = format!("/ka/{i}");
            client.send(&get(&path, &[])).await;
            let r = response(&mut client).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.text(), path);
            assert_eq!(r.framing, Framing::Length(path.len()));
            assert_eq!(r.head.get("x-atlas-slot"), Some("blue"));
        }
        let seen = up.requests();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|s| s.conn == 0),
            "requests spread over upstream connections: {:?}",
            seen.iter().map(|s| s.conn).collect::<Vec<_>>()
        );
        assert_eq!(up.accepts(), 1, "one upstream connection serves all three");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Pipelining.

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        let mut all = Vec::new();
        for path in ["/p/1", "/p/2", "/p/3"] {
            all.extend(get(path, &[]));
        }
        client.send(&all).await;
        for path in ["/p/1", "/p/2", "/p/3"] {
            let r = response(&mut client).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.text(), path);
        }
        let targets: Vec<String> = up
            .requests()
            .iter()
            .map(|s| s.target().to_owned())
            .collect();
        assert_eq!(targets, ["/p/1", "/p/2", "/p/3"]);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Content-Length bodies both ways.

#[tokio::test]
async fn content_length_bodies_arrive_byte_exact_both_ways() {
    within(async {
        let download = pattern(1024 * 1024, 2);
        let up = ScriptedUpstream::start({
            let download = download.clone();
            move |_| Reply::keep(ok_with(&download, &["Content-Type: application/octet-stream"]))
        })
        .await;
        let router = router_to(up.addr).await;
        let upload = pattern(100 * 1024, 1);
        let mut client = Wire::connect(router.local_addr()).await;
        let mut request = format!(
            "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        )
        .into_bytes();
        request.extend_from_slice(&upload);
        client.send(&request).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.framing, Framing::Length(download.len()));
        assert!(r.body == download, "the response body was altered");
        assert!(!r.head.has("transfer-encoding"));

        let seen = up.last();
        assert_eq!(seen.head.request_line(), ("POST", "/upload", "HTTP/1.1"));
        assert_eq!(seen.framing, Framing::Length(upload.len()));
        assert!(!seen.head.has("transfer-encoding"));
        assert!(seen.body == upload, "the request body was altered");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Chunked bodies both ways.

#[tokio::test]
async fn chunked_bodies_keep_their_content_both_ways() {
    within(async {
        let big = pattern(20_000, 4);
        let chunked_reply = {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
            r.extend_from_slice(b"5;ext=1\r\nhello\r\n");
            r.extend_from_slice(b"1;name=\"quoted\"\r\n \r\n");
            r.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
            r.extend_from_slice(&big);
            r.extend_from_slice(b"\r\n6\r\nworld!\r\n0\r\n\r\n");
            r
        };
        let up = ScriptedUpstream::start(move |req| {
            if req.target() == "/chunked" {
                Reply::keep(chunked_reply.clone())
            } else {
                Reply::keep(ok(req.target().as_bytes()))
            }
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;

        // Upload: chunks of assorted sizes, one with an extension.
        let parts = [pattern(1, 5), pattern(4096, 6), pattern(10, 7), pattern(70_000, 8)];
        let mut request =
            b"POST /chunked-upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for (i, part) in parts.iter().enumerate() {
            let ext = if i == 1 { ";note=x" } else { "" };
            request.extend_from_slice(format!("{:x}{ext}\r\n", part.len()).as_bytes());
            request.extend_from_slice(part);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        client.send(&request).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "/chunked-upload");
        let seen = up.last();
        assert!(
            matches!(seen.framing, Framing::Chunked | Framing::Length(_)),
            "upstream framing {:?}",
            seen.framing
        );
        assert!(seen.body == parts.concat(), "the chunked request payload was altered");

        // Download: the client gets the decoded content in valid framing,
        // and the connection stays in step for the next request.
        client.send(&get("/chunked", &[])).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert!(
            matches!(r.framing, Framing::Chunked | Framing::Length(_)),
            "client framing {:?}",
            r.framing
        );
        let mut expected = b"hello ".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"world!");
        assert!(r.body == expected, "the chunked response payload was altered");

        client.send(&get("/after", &[])).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/after"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Close-delimited upstream responses.

#[tokio::test]
async fn close_delimited_upstream_response_reaches_the_client_whole_and_properly_ended() {
    within(async {
        let body = pattern(64 * 1024, 9);
        let up = ScriptedUpstream::start({
            let body = body.clone();
            move |req| {
                if req.target() == "/eof" {
                    let mut r =
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
                            .to_vec();
                    r.extend_from_slice(&body);
                    Reply::close(r)
                } else {
                    Reply::keep(ok(req.target().as_bytes()))
                }
            }
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        client.send(&get("/eof", &[])).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert!(
            r.body == body,
            "the close-delimited body was altered ({} bytes)",
            r.body.len()
        );
        match r.framing {
            // Re-framed: the connection stays usable.
            Framing::Chunked => {
                client.send(&get("/after", &[])).await;
                let r = response(&mut client).await;
                assert_eq!((r.status, r.text().as_str()), (200, "/after"));
            }
            // Close-delimited in turn: reading to the close delivered it all.
            Framing::Close => {}
            other => panic!("unexpected framing {other:?}"),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. HEAD.

#[tokio::test]
async fn head_response_keeps_content_length_and_has_no_body() {
    within(async {
        let up = ScriptedUpstream::start(|req| {
            if req.head.request_line().0 == "HEAD" {
                Reply::keep(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"
                        .to_vec(),
                )
            } else {
                Reply::keep(ok(req.target().as_bytes()))
            }
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        client
            .send(b"HEAD /doc HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await;
        let r = read_response(&mut client, true).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.head.get("content-length"), Some("1234"));
        assert!(!r.head.has("transfer-encoding"));
        assert_eq!(up.last().head.request_line(), ("HEAD", "/doc", "HTTP/1.1"));

        // Any body byte after the HEAD response would corrupt this one.
        client.send(&get("/next", &[])).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/next"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 7. 204 and 304.

#[tokio::test]
async fn no_content_and_not_modified_have_no_body_and_keep_the_connection() {
    within(async {
        let up = ScriptedUpstream::start(|req| match req.target() {
            "/204" => Reply::keep(b"HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n".to_vec()),
            "/304" => Reply::keep(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n"
                    .to_vec(),
            ),
            other => Reply::keep(ok(other.as_bytes())),
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;

        client.send(&get("/204", &[])).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.head.get("x-done"), Some("yes"));
        assert!(!r.head.has("transfer-encoding"), "{:?}", r.head);
        assert!(
            !r.head.has("content-length"),
            "a 204 has no Content-Length: {:?}",
            r.head
        );

        client.send(&get("/304", &["If-None-Match: \"v1\""])).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 304);
        assert_eq!(r.head.get("etag"), Some("\"v1\""));
        assert!(!r.head.has("transfer-encoding"), "{:?}", r.head);

        client.send(&get("/next", &[])).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/next"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 8. Hop-by-hop headers.

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways_and_connection_close_honoured() {
    within(async {
        let up = ScriptedUpstream::start(|_| {
            Reply::keep(ok_with(
                b"ok",
                &[
                    "Connection: X-Bar",
                    "X-Bar: 1",
                    "Keep-Alive: timeout=5",
                    "Proxy-Authenticate: Basic realm=\"x\"",
                    "X-End: 2",
                ],
            ))
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        client
            .send(&get(
                "/hop",
                &[
                    "Connection: close, X-Foo",
                    "X-Foo: 1",
                    "Keep-Alive: 5",
                    "Proxy-Authorization: x",
                    "TE: trailers",
                    "X-Kept: yes",
                ],
            ))
            .await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        for gone in ["x-bar", "keep-alive", "proxy-authenticate"] {
            assert!(!r.head.has(gone), "{gone} reached the client: {:?}", r.head);
        }
        assert_eq!(r.head.get("x-end"), Some("2"));
        for token in r.head.tokens("connection") {
            assert_eq!(token, "close", "the client sees a foreign Connection token");
        }
        client
            .expect_closed("after a Connection: close exchange")
            .await;

        let seen = up.last();
        for gone in ["x-foo", "keep-alive", "proxy-authorization", "te"] {
            assert!(
                !seen.head.has(gone),
                "{gone} reached the upstream: {:?}",
                seen.head
            );
        }
        for token in seen.head.tokens("connection") {
            assert!(
                token == "keep-alive" || token == "close",
                "the upstream sees the client's Connection token {token:?}"
            );
        }
        assert_eq!(seen.head.get("x-kept"), Some("yes"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 9. Forwarding headers.

#[tokio::test]
async fn forwarding_headers_are_appended_and_host_kept() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        client
            .send(&get(
                "/a/b?x=1&y=%20",
                &["X-Forwarded-For: 203.0.113.7", "Forwarded: for=203.0.113.7"],
            ))
            .await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.head.get("x-atlas-slot"), Some("blue"));

        let seen = up.last();
        assert_eq!(
            seen.head.request_line(),
            ("GET", "/a/b?x=1&y=%20", "HTTP/1.1")
        );
        assert_eq!(seen.head.get("host"), Some("shop.example"));
        assert_eq!(
            seen.head.get("x-forwarded-for"),
            Some("203.0.113.7, 127.0.0.1")
        );
        let forwarded = seen.head.tokens("forwarded");
        assert_eq!(forwarded.len(), 2, "{forwarded:?}");
        assert_eq!(forwarded[0], "for=203.0.113.7");
        let mut params: Vec<&str> = forwarded[1].split(';').map(str::trim).collect();
        params.sort_unstable();
        assert_eq!(params, ["for=127.0.0.1", "host=shop.example", "proto=http"]);
    })
    .await;
}

#[tokio::test]
async fn absolute_form_target_goes_upstream_in_origin_form_with_its_host() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        client
            .send(b"GET http://shop.example/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
            .await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        let seen = up.last();
        assert_eq!(seen.head.request_line(), ("GET", "/abs?q=1", "HTTP/1.1"));
        assert_eq!(seen.head.get("host"), Some("shop.example"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 10. Request smuggling defences.

/// A body that means different requests under Content-Length and chunked
/// framing: by Content-Length it is 4 bytes followed by a second request,
/// `GET /smuggled`; by chunked framing that request is body data.
fn te_cl_desync() -> Vec<u8> {
    let inner = b"GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let size = format!("{:x}\r\n", inner.len());
    assert_eq!(size.len(), 4);
    let mut body = size.into_bytes();
    body.extend_from_slice(inner);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut out = b"POST /desync HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    out.extend_from_slice(&body);
    out
}

/// The other way round: by chunked framing the body ends at the zero
/// chunk and `GET /smuggled` follows; by Content-Length it is all body.
fn cl_te_desync() -> Vec<u8> {
    let body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let mut out = format!(
        "POST /desync HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The strict promise: both framings at once are refused with 400 and
/// nothing is forwarded.
#[tokio::test]
async fn content_length_with_chunked_is_refused_with_400() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        for raw in [te_cl_desync(), cl_te_desync()] {
            let r = refusal(router.local_addr(), &raw).await;
            assert_eq!(r.status, Some(400));
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

/// What holds today, and must hold for any implementation: a request with
/// both framings is either refused (4xx/5xx or closed, nothing upstream) or
/// forwarded with chunked framing only, never with the Content-Length, and
/// the client connection is closed after it, so the bytes past the chunked
/// body can never become a second request.
#[tokio::test]
async fn content_length_with_chunked_is_never_forwarded_ambiguously() {
    within(async {
        for (name, raw) in [("TE.CL", te_cl_desync()), ("CL.TE", cl_te_desync())] {
            let up = ScriptedUpstream::echo_target().await;
            let router = router_to(up.addr).await;
            let mut w = Wire::connect(router.local_addr()).await;
            let _ = w.try_send(&raw).await;
            match read_response(&mut w, false).await {
                Ok(r) if r.status == 200 => {
                    // Forwarded: as chunked only.
                    assert_eq!(r.text(), "/desync", "{name}");
                    let seen = up.requests();
                    assert_eq!(seen.len(), 1, "{name}: {seen:?}");
                    assert!(
                        !seen[0].head.has("content-length"),
                        "{name}: {:?}",
                        seen[0].head
                    );
                    let expected: &[u8] = if name == "TE.CL" {
                        b"GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n"
                    } else {
                        b""
                    };
                    assert_eq!(seen[0].body, expected, "{name}: not decoded as chunked");
                    w.expect_closed(name).await;
                }
                Ok(r) => {
                    assert!(r.status >= 400, "{name}: {r:?}");
                    w.expect_closed(name).await;
                }
                Err(e) => assert!(e.starts_with("read failed"), "{name}: {e}"),
            }
            let seen = up.requests();
            assert!(
                seen.iter().all(|s| s.target() != "/smuggled"),
                "{name}: a smuggled request reached the upstream"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn differing_content_lengths_are_refused_with_400() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        for lengths in [
            "Content-Length: 3\r\nContent-Length: 5\r\n",
            "Content-Length: 3, 5\r\n",
        ] {
            let raw = format!("POST /cl HTTP/1.1\r\nHost: shop.example\r\n{lengths}\r\nabcde");
            let r = refusal(router.local_addr(), raw.as_bytes()).await;
            assert_eq!(r.status, Some(400), "{lengths:?}");
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_refused() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        for te in ["gzip", "chunked, gzip", "identity"] {
            let raw = format!(
                "POST /te HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: {te}\r\n\r\nabc"
            );
            let r = refusal(router.local_addr(), raw.as_bytes()).await;
            // Hyper answers 400 (RFC 9112 6.3 also allows 501).
            assert!(matches!(r.status, Some(400 | 501)), "{te}: {r:?}");
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_content_length_is_refused_with_400() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        for cl in ["12abc", "-1", "+5", " ", "0x10", "99999999999999999999999"] {
            let raw = format!(
                "POST /cl HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {cl}\r\n\r\nabc"
            );
            let r = refusal(router.local_addr(), raw.as_bytes()).await;
            assert_eq!(r.status, Some(400), "Content-Length {cl:?}");
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

#[tokio::test]
async fn transfer_encoding_on_http_1_0_is_refused_with_400() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let r = refusal(
            router.local_addr(),
            b"POST /te HTTP/1.0\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, Some(400));
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

/// A transfer coding the proxy does not decode must not be dropped while
/// its encoded bytes are forwarded as if they were the payload.
#[tokio::test]
async fn unhandled_transfer_coding_before_chunked_is_refused_or_kept() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let raw = b"POST /te HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut w = Wire::connect(router.local_addr()).await;
        let _ = w.try_send(raw).await;
        match read_response(&mut w, false).await {
            Ok(r) if r.status == 200 => {
                let seen = up.last();
                assert!(
                    seen.head.tokens("transfer-encoding").contains(&"gzip".to_owned())
                        || seen.head.tokens("content-encoding").contains(&"gzip".to_owned()),
                    "the gzip coding was dropped: {:?}",
                    seen.head
                );
            }
            Ok(r) => assert!(matches!(r.status, 400 | 501), "{r:?}"),
            Err(e) => panic!("no answer: {e}"),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 11. Malformed heads.

#[tokio::test]
async fn malformed_request_heads_are_refused_with_400() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let cases: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : shop.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: shop.example\r\nX-Folded: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad\x01Name: 1\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: shop.example\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\nHost: shop.example\r\n\r\n",
        ];
        for raw in cases {
            let r = refusal(router.local_addr(), raw).await;
            assert_eq!(r.status, Some(400), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 12. Oversized heads.

/// A request head of `size` bytes: one large header.
fn big_head(size: usize) -> Vec<u8> {
    let mut raw = b"GET /big HTTP/1.1\r\nHost: shop.example\r\nX-Big: ".to_vec();
    raw.resize(size, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    raw
}

#[tokio::test]
async fn oversized_request_head_is_refused_without_reaching_upstream() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        // Hyper's limit is its read buffer, 8 KiB + 400 KiB.
        let r = refusal(router.local_addr(), &big_head(1024 * 1024)).await;
        assert!(matches!(r.status, None | Some(400 | 431)), "{r:?}");
        // Too many header lines, too.
        let mut raw = b"GET /many HTTP/1.1\r\nHost: shop.example\r\n".to_vec();
        for i in 0..500 {
            raw.extend_from_slice(format!("X-H-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let r = refusal(router.local_addr(), &raw).await;
        assert!(matches!(r.status, None | Some(400 | 431)), "{r:?}");
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

#[tokio::test]
async fn request_head_of_200_kib_is_refused() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let r = refusal(router.local_addr(), &big_head(200 * 1024)).await;
        assert!(matches!(r.status, None | Some(400 | 431)), "{r:?}");
        assert_only_later_request_reaches(&up, router.local_addr()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 13. HTTP/1.0 clients.

#[tokio::test]
async fn http_1_0_client_gets_its_response_then_the_connection_closes() {
    within(async {
        let up = ScriptedUpstream::start(|req| {
            if req.target() == "/eof" {
                Reply::close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec())
            } else {
                Reply::keep(ok(req.target().as_bytes()))
            }
        })
        .await;
        let router = router_to(up.addr).await;

        // With a Host header and a Content-Length response.
        let mut client = Wire::connect(router.local_addr()).await;
        client
            .send(b"GET /old HTTP/1.0\r\nHost: shop.example\r\n\r\n")
            .await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "/old");
        assert_ne!(
            r.framing,
            Framing::Chunked,
            "chunked sent to an HTTP/1.0 client"
        );
        client.expect_closed("after an HTTP/1.0 exchange").await;
        let seen = up.last();
        assert_eq!(seen.head.request_line(), ("GET", "/old", "HTTP/1.1"));
        assert_eq!(seen.head.get("host"), Some("shop.example"));

        // Without Host, and a close-delimited response: the proxy must not
        // chunk it for a client that cannot decode chunks.
        let mut client = Wire::connect(router.local_addr()).await;
        client.send(b"GET /eof HTTP/1.0\r\n\r\n").await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "until the end");
        assert_ne!(
            r.framing,
            Framing::Chunked,
            "chunked sent to an HTTP/1.0 client"
        );
        if r.framing != Framing::Close {
            client.expect_closed("after an HTTP/1.0 exchange").await;
        }
        let seen = up.last();
        assert_eq!(seen.head.request_line(), ("GET", "/eof", "HTTP/1.1"));
        let upstream_host = up.addr.to_string();
        assert_eq!(
            seen.head.get("host"),
            Some(upstream_host.as_str()),
            "a request without Host gets the endpoint's address"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 14. Expect: 100-continue.

#[tokio::test]
async fn expect_100_continue_gets_100_then_the_body_is_relayed() {
    within(async {
        let up = ScriptedUpstream::start(|req| {
            let mut body = b"got ".to_vec();
            body.extend_from_slice(&req.body);
            Reply::keep(ok(&body))
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        let payload = b"hello, upstream";
        client
            .send(
                format!(
                    "PUT /upload HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                    payload.len()
                )
                .as_bytes(),
            )
            .await;
        let interim = tokio::time::timeout(Duration::from_secs(2), client.head())
            .await
            .expect("no 100 Continue within 2 s")
            .expect("reading the interim response")
            .expect("connection closed instead of 100 Continue");
        assert_eq!(interim.status(), Ok(100), "{interim:?}");
        client.send(payload).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "got hello, upstream");
        assert!(r.informational.is_empty(), "a second interim response: {r:?}");
        assert_eq!(up.last().body, payload);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 15. Upstream failing mid-body.

#[tokio::test]
async fn upstream_closing_mid_body_closes_the_client_connection_and_counts_as_failure() {
    within(async {
        let sent = pattern(400, 3);
        let up = ScriptedUpstream::start({
            let sent = sent.clone();
            move |_| {
                let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
                r.extend_from_slice(&sent);
                Reply::close(r)
            }
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        client.send(&get("/cut", &[])).await;
        let head = client.head().await.unwrap().expect("a response head");
        assert_eq!(head.status(), Ok(200));
        let mut got = Vec::new();
        if head.is_chunked() {
            let ended = client.chunked_into(&mut got).await;
            assert!(ended.is_err(), "the cut body was terminated as if complete");
        } else {
            assert_eq!(head.content_length(), Ok(Some(1000)));
            got = client.until_close().await;
        }
        assert!(
            got.len() < 1000,
            "the client got {} bytes and a reusable connection",
            got.len()
        );
        assert!(sent.starts_with(&got), "the relayed prefix was altered");
        // Whatever framing, the connection is over.
        client.expect_closed("after a cut body").await;

        wait_for_requests(&router, 1).await;
        let stats = router
            .metrics()
            .window_stats(Slot::Blue, Duration::from_secs(60));
        assert_eq!((stats.requests, stats.proxy_errors, stats.successful), (1, 1, 0));
        let text = router.metrics().render_prometheus();
        assert!(
            text.lines().any(|l| l
                == "atlas_proxy_errors_total{service=\"shop\",slot=\"blue\",reason=\"upstream_failed\"} 1"),
            "{text}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 16. Stale pooled connections.

#[tokio::test]
async fn upstream_closing_an_idle_pooled_connection_does_not_fail_the_next_request() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = router_to(listener.local_addr().unwrap()).await;
        let mut client = Wire::connect(router.local_addr()).await;

        client.send(&get("/one", &[])).await;
        let (stream, _) = bounded("first accept", listener.accept()).await.unwrap();
        let mut conn0 = Wire::new(stream);
        let seen = read_request(&mut conn0, 0).await.unwrap().unwrap();
        assert_eq!(seen.target(), "/one");
        conn0.send(&ok(b"one")).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "one"));
        wait_for_requests(&router, 1).await;

        // The upstream drops the idle keep-alive connection.
        drop(conn0);

        client.send(&get("/two", &[])).await;
        let stream = tokio::select! {
            accepted = bounded("second accept", listener.accept()) => accepted.unwrap().0,
            r = read_response(&mut client, false) => {
                panic!("the proxy answered without a new upstream connection: {r:?}")
            }
        };
        let mut conn1 = Wire::new(stream);
        let seen = read_request(&mut conn1, 1).await.unwrap().unwrap();
        assert_eq!(seen.target(), "/two");
        conn1.send(&ok(b"two")).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "two"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 17. Interim 1xx from the upstream.

#[tokio::test]
async fn upstream_early_hints_do_not_hide_the_final_response() {
    within(async {
        let up = ScriptedUpstream::start(|req| {
            let mut r =
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
            r.extend(ok(req.target().as_bytes()));
            Reply::keep(r)
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        for path in ["/hints/1", "/hints/2"] {
            client.send(&get(path, &[])).await;
            let r = response(&mut client).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), path);
            for interim in &r.informational {
                assert_eq!(interim.status(), Ok(103), "{interim:?}");
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 18. Many headers.

#[tokio::test]
async fn ninety_headers_are_relayed_intact_both_ways() {
    within(async {
        let response_lines: Vec<String> = (0..90)
            .map(|i| format!("X-Resp-{i:02}: r{i}-{}", "v".repeat(i)))
            .collect();
        let up = ScriptedUpstream::start({
            let lines = response_lines.clone();
            move |_| {
                let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
                Reply::keep(ok_with(b"many", &refs))
            }
        })
        .await;
        let router = router_to(up.addr).await;
        let mut client = Wire::connect(router.local_addr()).await;
        let mut request_lines: Vec<String> = (0..87)
            .map(|i| format!("X-Req-{i:02}: q{i}-{}", "w".repeat(i)))
            .collect();
        request_lines.extend(["X-Multi: one", "X-Multi: two", "X-Multi: three"].map(String::from));
        let refs: Vec<&str> = request_lines.iter().map(String::as_str).collect();
        client.send(&get("/many", &refs)).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "many");
        for i in 0..response_lines.len() {
            let expected = format!("r{i}-{}", "v".repeat(i));
            assert_eq!(
                r.head.get(&format!("x-resp-{i:02}")),
                Some(expected.as_str())
            );
        }

        let seen = up.last();
        for i in 0..87 {
            let expected = format!("q{i}-{}", "w".repeat(i));
            assert_eq!(
                seen.head.get(&format!("x-req-{i:02}")),
                Some(expected.as_str())
            );
        }
        assert_eq!(
            seen.head.tokens("x-multi"),
            ["one", "two", "three"],
            "repeated headers keep their order"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 19. A client going away mid-response.

#[tokio::test]
async fn client_leaving_mid_response_closes_that_upstream_connection_and_service_goes_on() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = router_to(listener.local_addr().unwrap()).await;

        let mut leaving = Wire::connect(router.local_addr()).await;
        leaving.send(&get("/huge", &[])).await;
        let (stream, _) = bounded("first accept", listener.accept()).await.unwrap();
        let mut conn0 = Wire::new(stream);
        assert_eq!(
            read_request(&mut conn0, 0).await.unwrap().unwrap().target(),
            "/huge"
        );
        let declared = 64 * 1024 * 1024;
        conn0
            .send(format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n").as_bytes())
            .await;
        let piece = pattern(64 * 1024, 1);
        conn0.send(&piece).await;
        let head = leaving.head().await.unwrap().expect("a response head");
        assert_eq!(head.status(), Ok(200));
        drop(leaving);

        // The upstream keeps streaming; the proxy must give up on this
        // connection (it cannot be reused mid-body) well before the end.
        let mut written = piece.len();
        let broke = loop {
            if written >= declared {
                break false;
            }
            if conn0.try_send(&piece).await.is_err() {
                break true;
            }
            written += piece.len();
        };
        assert!(broke, "the proxy read the whole abandoned body");

        // Another client is served, on a new upstream connection.
        let mut client = Wire::connect(router.local_addr()).await;
        client.send(&get("/after", &[])).await;
        let (stream, _) = bounded("second accept", listener.accept()).await.unwrap();
        let mut conn1 = Wire::new(stream);
        assert_eq!(
            read_request(&mut conn1, 1).await.unwrap().unwrap().target(),
            "/after"
        );
        conn1.send(&ok(b"after")).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "after"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 20. A pooled connection the upstream closes after taking the request.

/// Serves `/one` on a first upstream connection, then reads the next
/// request on it and closes without answering, as an upstream whose
/// keep-alive timeout fires just as the request arrives. Returns the
/// listener and the targets that connection took.
async fn close_after_second_request(
    listener: &TcpListener,
    client: &mut Wire,
    second: &[u8],
) -> Vec<String> {
    client.send(&get("/one", &[])).await;
    let (stream, _) = bounded("first accept", listener.accept()).await.unwrap();
    let mut conn0 = Wire::new(stream);
    let first = read_request(&mut conn0, 0).await.unwrap().unwrap();
    conn0.send(&ok(b"one")).await;
    let r = response(client).await;
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
    client.send(second).await;
    let again = read_request(&mut conn0, 0).await.unwrap().unwrap();
    drop(conn0);
    vec![first.target().to_owned(), again.target().to_owned()]
}

#[tokio::test]
async fn a_pooled_connection_closed_without_an_answer_is_retried_for_idempotent_requests() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = router_to(listener.local_addr().unwrap()).await;
        let mut client = Wire::connect(router.local_addr()).await;
        let taken = close_after_second_request(&listener, &mut client, &get("/two", &[])).await;
        assert_eq!(taken, ["/one", "/two"]);
        // The GET goes again, on a new connection, and succeeds.
        let (stream, _) = bounded("second accept", listener.accept()).await.unwrap();
        let mut conn1 = Wire::new(stream);
        let seen = read_request(&mut conn1, 1).await.unwrap().unwrap();
        assert_eq!(seen.target(), "/two");
        conn1.send(&ok(b"two")).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text().as_str()), (200, "two"));
    })
    .await;
}

#[tokio::test]
async fn a_pooled_connection_closed_without_an_answer_is_not_retried_for_a_post() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = router_to(listener.local_addr().unwrap()).await;
        let mut client = Wire::connect(router.local_addr()).await;
        let post = b"POST /pay HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\n\r\n";
        let taken = close_after_second_request(&listener, &mut client, post).await;
        assert_eq!(taken, ["/one", "/pay"]);
        // The upstream may have acted on it: 502, and never a second copy.
        let r = response(&mut client).await;
        assert_eq!(r.status, 502);
        let second = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(second.is_err(), "the POST was sent a second time");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 21. The client header timeout.

#[tokio::test]
async fn an_unfinished_head_gets_408_and_an_idle_connection_is_closed() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_with(up.addr, |b| {
            b.client_header_timeout(Duration::from_millis(300))
        })
        .await;

        // Half a head, then silence: 408 and the connection closes.
        let started = std::time::Instant::now();
        let mut w = Wire::connect(router.local_addr()).await;
        w.send(b"GET /slow HTTP/1.1\r\nHost: shop.example\r\n")
            .await;
        let head = w.head().await.unwrap().expect("an answer");
        assert_eq!(head.status().unwrap(), 408);
        let n = head.content_length().unwrap().unwrap();
        let _ = w.take(n).await.unwrap();
        w.expect_closed("after 408").await;
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A served keep-alive connection left idle is closed, silently.
        let mut w = Wire::connect(router.local_addr()).await;
        w.send(&get("/a", &[])).await;
        assert_eq!(response(&mut w).await.status, 200);
        let idle = std::time::Instant::now();
        w.expect_closed("an idle connection").await;
        assert!(idle.elapsed() >= Duration::from_millis(250));
        assert_eq!(
            up.requests().len(),
            1,
            "the unfinished head reached the upstream"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 22. An answer before the body is read is not destroyed by a reset.

#[tokio::test]
async fn a_refusal_before_a_large_body_reaches_the_client() {
    within(async {
        // No split set: every request gets 503 without its body being read.
        let router = ProxyRouter::builder(service()).build().await.unwrap();
        for _ in 0..5 {
            let stream = TcpStream::connect(router.local_addr()).await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let body = vec![b'x'; 4 * 1024 * 1024];
            let writer = tokio::spawn(async move {
                let head = format!(
                    "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = write.write_all(head.as_bytes()).await;
                // The proxy stops reading; this write fails or stalls.
                let _ = write.write_all(&body).await;
            });
            // Read late, as a client busy uploading does: the answer waits
            // in the receive buffer while the proxy closes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let answer = bounded("the 503", async {
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => break Err(e),
                    }
                    if find(&got, b"\r\n\r\n").is_some() {
                        break Ok(());
                    }
                }
            })
            .await;
            writer.abort();
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("HTTP/1.1 503"),
                "no 503 before the connection ended ({answer:?}): {text:?}"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 23. The client body timeout.

#[tokio::test]
async fn a_stalled_upload_is_abandoned_after_the_client_body_timeout() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = router_with(listener.local_addr().unwrap(), |b| {
            b.client_body_timeout(Duration::from_millis(300))
        })
        .await;

        let mut client = Wire::connect(router.local_addr()).await;
        client
            .send(b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\nhello")
            .await;
        let started = std::time::Instant::now();
        let (stream, _) = bounded("accept", listener.accept()).await.unwrap();
        let mut upstream = Wire::new(stream);
        let head = bounded("the request head", upstream.head())
            .await
            .unwrap()
            .expect("a head");
        assert_eq!(head.content_length().unwrap(), Some(10));
        // The client sends nothing more: after the timeout the proxy drops
        // the exchange, closing both connections.
        let got = upstream.until_close().await;
        assert_eq!(got, b"hello", "the upstream got more than was sent");
        client.expect_closed("a stalled upload").await;
        assert!(started.elapsed() >= Duration::from_millis(250));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 24. The response timeout counts from the end of the request body.

#[tokio::test]
async fn an_upstream_silent_after_a_request_body_gets_504() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = router_with(listener.local_addr().unwrap(), |b| {
            b.response_timeout(Duration::from_millis(300))
        })
        .await;

        let mut client = Wire::connect(router.local_addr()).await;
        // The body comes slowly, in two parts 500 ms apart: longer than the
        // response timeout, which must not count the upload.
        client
            .send(b"POST /slow HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\nhello")
            .await;
        let (stream, _) = bounded("accept", listener.accept()).await.unwrap();
        let mut upstream = Wire::new(stream);
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.send(b"world").await;
        let seen = read_request(&mut upstream, 0).await.unwrap().unwrap();
        assert_eq!(seen.body, b"helloworld");
        let sent = std::time::Instant::now();
        // The upstream never answers.
        let r = response(&mut client).await;
        assert_eq!(r.status, 504);
        assert!(sent.elapsed() >= Duration::from_millis(250));
        let stats = router
            .metrics()
            .window_stats(Slot::Blue, Duration::from_secs(60));
        assert_eq!((stats.requests, stats.proxy_errors), (1, 1));
        drop(upstream);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 25. Refused with 400 as soon as the proxy can tell: a broken chunk size,
//     an HTTP/1.1 request without exactly one Host, bytes that cannot start
//     a request line.

/// Sends `raw` on a fresh connection, keeps it open, and asserts that the
/// answer is exactly the proxy's `400 Bad Request`, after which the proxy
/// closes the connection.
async fn assert_400_then_closed(proxy: SocketAddr, raw: &[u8]) {
    let what = String::from_utf8_lossy(raw).into_owned();
    let mut w = Wire::connect(proxy).await;
    let _ = w.try_send(raw).await;
    let head = w
        .head()
        .await
        .unwrap_or_else(|e| panic!("{what:?}: no answer: {e}"))
        .unwrap_or_else(|| panic!("{what:?}: closed without an answer"));
    assert_eq!(head.line, "HTTP/1.1 400 Bad Request", "{what:?}");
    assert_eq!(head.tokens("connection"), ["close"], "{what:?}");
    let n = head.content_length().unwrap().expect("a Content-Length");
    w.take(n).await.unwrap();
    w.expect_closed(&what).await;
}

#[tokio::test]
async fn a_bad_chunk_size_gets_400_and_that_upstream_connection_is_never_reused() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        let sizes = ["zz", "-5", "ffffffffffffffffffff"];
        for (i, size) in sizes.iter().enumerate() {
            let raw = format!(
                "POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
            );
            assert_400_then_closed(router.local_addr(), raw.as_bytes()).await;
            // The head went upstream before the body was seen; the upstream
            // then sees its connection end inside the body, and the next
            // broken request comes on a connection of its own.
            bounded("the upstream to see the broken request end", async {
                while up.errors.lock().unwrap().len() <= i {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            assert_eq!(up.accepts(), i + 1, "a broken upstream connection was reused");
        }
        let errors = up.errors.lock().unwrap().clone();
        for (conn, error) in errors.iter().enumerate() {
            assert!(error.starts_with(&format!("conn {conn}: ")), "{error}");
        }
        up.errors.lock().unwrap().clear();
        assert!(up.seen.lock().unwrap().is_empty(), "a broken body reached the upstream whole");

        // The proxy goes on serving, on a fresh upstream connection.
        let mut w = Wire::connect(router.local_addr()).await;
        w.send(&get("/after", &[])).await;
        let r = response(&mut w).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"/after"[..]));
        assert_eq!(up.last().conn, sizes.len(), "served on a new connection");
        assert_eq!(up.accepts(), sizes.len() + 1);
    })
    .await;
}

#[tokio::test]
async fn http_1_1_needs_exactly_one_host_and_http_1_0_needs_none() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_to(up.addr).await;
        for raw in [
            &b"GET /no-host HTTP/1.1\r\n\r\n"[..],
            b"GET /no-host HTTP/1.1\r\nX-Other: 1\r\n\r\n",
            b"GET http://shop.example/absolute HTTP/1.1\r\n\r\n",
            b"GET /two HTTP/1.1\r\nHost: shop.example\r\nHost: other.example\r\n\r\n",
            b"GET /two HTTP/1.1\r\nhost: shop.example\r\nHOST: shop.example\r\n\r\n",
        ] {
            assert_400_then_closed(router.local_addr(), raw).await;
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;

        // HTTP/1.0 predates Host: relayed, with the endpoint as its host.
        let mut w = Wire::connect(router.local_addr()).await;
        w.send(b"GET /old HTTP/1.0\r\n\r\n").await;
        let r = response(&mut w).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"/old"[..]));
        assert_eq!(
            up.last().head.get("host"),
            Some(up.addr.to_string().as_str())
        );
    })
    .await;
}

#[tokio::test]
async fn bytes_that_cannot_start_a_request_line_get_400_at_once() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        // A head timeout far beyond the test's bound: only an immediate
        // answer can pass.
        let router = router_with(up.addr, |b| {
            b.client_header_timeout(Duration::from_secs(3600))
        })
        .await;
        // The start of a TLS 1.2 ClientHello, as a client speaking HTTPS
        // to the plain port sends it.
        let client_hello: &[u8] = &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x8a, 0x1f,
        ];
        for raw in [
            client_hello,
            b"\x00\x01\x02\x03binary",
            b"g\xc3\xa9t / HTTP/1.1\r\n",
            b"GET /\x01 HTTP/1.1",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1\rHost",
        ] {
            assert_400_then_closed(router.local_addr(), raw).await;
        }
        assert_only_later_request_reaches(&up, router.local_addr()).await;

        // A valid head sent a few bytes at a time, after an empty line,
        // is still served.
        let mut w = Wire::connect(router.local_addr()).await;
        for piece in b"\r\nget /slowly HTTP/1.1\r\nHost: shop.example\r\n\r\n".chunks(3) {
            w.send(piece).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let r = response(&mut w).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"/slowly"[..]));
        assert_eq!(up.last().head.request_line().0, "get");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Stopping and starting: a router that stops tells its kept-alive clients
// before it closes, and a paused router accepts only once told to.

#[tokio::test]
async fn a_stopping_router_answers_the_next_request_with_connection_close() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = std::sync::Arc::new(router_to(up.addr).await);
        let mut client = Wire::connect(router.local_addr()).await;
        client.send(&get("/before", &[])).await;
        let r = response(&mut client).await;
        assert_eq!((r.status, r.head.get("connection")), (200, None), "{r:?}");

        // The stop comes while the connection is idle between requests:
        // its next request is still answered, saying the connection ends.
        let stopping = {
            let router = router.clone();
            tokio::spawn(async move { router.shutdown().await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.send(&get("/after", &[])).await;
        let r = response(&mut client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "/after");
        assert_eq!(r.head.get("connection"), Some("close"), "{r:?}");
        assert!(
            client.until_close().await.is_empty(),
            "then the proxy closes"
        );
        bounded("the router stops", stopping).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_router_built_paused_accepts_once_started() {
    within(async {
        let up = ScriptedUpstream::echo_target().await;
        let router = router_with(up.addr, |b| b.start_paused(true)).await;
        // The kernel completes the connection; the router does not read it.
        let mut client = Wire::connect(router.local_addr()).await;
        client.send(&get("/queued", &[])).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(up.requests().is_empty(), "a paused router relays nothing");
        router.start_accepting();
        let r = response(&mut client).await;
        assert_eq!((r.status, r.text()), (200, "/queued".to_owned()));
    })
    .await;
}
