//! TLS termination by the proxy router, against a plain hyper upstream on
//! 127.0.0.1: handshakes with a rustls client (TLS 1.3 and 1.2), the
//! certificate chosen by SNI, HSTS, reloads that keep open connections,
//! the expiry metric, the plain-HTTP redirect, bad configurations, and
//! `openssl s_client` refused old protocol versions and weak suites. The
//! certificates are made by each test in a temporary directory. Every wait
//! is bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atlas_core::{Endpoint, Error, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_local::proxy::{Hsts, ProxyRouter, TlsConfig};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// Upper bound for any single wait in these tests.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

// ---------------------------------------------------------------------------
// Certificates: one CA per test, leaves signed by it written to files.

struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

/// A leaf certificate's files and DER.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "atlas proxy test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Issuer::new(params, key),
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
        }
    }

    /// Writes `<stem>.crt` and `<stem>.key` for `names`, valid until the
    /// first of January of `until_year`.
    fn leaf(&self, stem: &str, names: &[&str], until_year: i32) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{stem}.crt")),
            key: self.dir.path().join(format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Seconds since the Unix epoch of the first of January of `year`.
fn new_year(year: i32) -> i64 {
    rcgen::date_time_ymd(year, 1, 1).unix_timestamp()
}

// ---------------------------------------------------------------------------
// A plain hyper upstream answering every request with its path.

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = format!("upstream saw {}", req.uri().path());
                    let forwarded = req.headers().get("forwarded").cloned();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(
                                "x-seen-forwarded",
                                forwarded.unwrap_or_else(|| "none".parse().unwrap()),
                            )
                            // Replaced by the proxy's own policy.
                            .header("strict-transport-security", "max-age=1")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn service() -> ServiceName {
    ServiceName::new("edge").unwrap()
}

async fn router(tls: TlsConfig) -> ProxyRouter {
    let upstream = upstream().await;
    let router = ProxyRouter::builder(service())
        .worker_threads(1)
        .initial_split(TrafficSplit::all_to(Slot::Blue))
        .tls(tls)
        .build()
        .await
        .unwrap();
    router
        .set_endpoints(&service(), Slot::Blue, &[Endpoint::new("blue-0", upstream)])
        .await
        .unwrap();
    router
}

async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    bounded(
        "TLS handshake",
        connector.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp),
    )
    .await
    .unwrap()
}

/// The certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A response: its head (lower-cased) and body.
struct Seen {
    head: String,
    body: String,
}

/// Sends a keep-alive GET for `path` and reads the response (framed by
/// `Content-Length`).
async fn get(stream: &mut TlsStream<TcpStream>, host: &str, path: &str) -> Seen {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    bounded("a response", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Seen { head, body };
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the proxy closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_and_tls12_clients_are_relayed_to_a_plain_upstream_with_hsts() {
    let pki = Pki::new();
    let leaf = pki.leaf("a", &["a.test"], 2031);
    let router = router(
        TlsConfig::new().certificate(&leaf.cert, &leaf.key).hsts(
            Hsts::new(Duration::from_secs(63_072_000))
                .include_subdomains()
                .preload(),
        ),
    )
    .await;
    for (version, expected) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let connector = pki.client(&[version]);
        let mut stream = connect(&connector, router.local_addr(), "a.test").await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        for path in ["/one", "/two"] {
            let seen = get(&mut stream, "a.test", path).await;
            assert!(seen.head.starts_with("http/1.1 200"), "{}", seen.head);
            assert_eq!(seen.body, format!("upstream saw {path}"));
            let hsts: Vec<_> = seen
                .head
                .lines()
                .filter_map(|l| l.strip_prefix("strict-transport-security:"))
                .map(str::trim)
                .collect();
            assert_eq!(hsts, ["max-age=63072000; includesubdomains; preload"]);
            // The upstream learns the client came over TLS.
            assert!(
                seen.head
                    .contains("x-seen-forwarded: for=127.0.0.1;proto=https;host=a.test\r\n"),
                "{}",
                seen.head
            );
        }
    }
    // The proxy's own answers carry it too: here a 501 for a transfer
    // coding it does not implement.
    let connector = pki.client(&[&rustls::version::TLS13]);
    let mut stream = connect(&connector, router.local_addr(), "a.test").await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: br\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    bounded("the proxy's answer", stream.read_to_string(&mut answer))
        .await
        .ok();
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 501"), "{answer}");
    assert!(
        answer.contains(
            "strict-transport-security: max-age=63072000; includesubdomains; preload\r\n"
        ),
        "{answer}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_the_metrics_export_each_expiry() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"], 2031);
    let b = pki.leaf("b", &["b.test", "*.wild.test"], 2032);
    let router = ProxyRouter::builder(service())
        .worker_threads(1)
        .admin("127.0.0.1:0".parse().unwrap())
        .tls(
            TlsConfig::new()
                .certificate(&a.cert, &a.key)
                .certificate(&b.cert, &b.key),
        )
        .build()
        .await
        .unwrap();
    let connector = pki.client(&[&rustls::version::TLS13]);
    for (sni, expected) in [
        ("a.test", &a.der),
        ("b.test", &b.der),
        ("B.Test", &b.der),
        ("x.wild.test", &b.der),
    ] {
        let stream = connect(&connector, router.local_addr(), sni).await;
        assert!(served(&stream) == *expected, "wrong certificate for {sni}");
    }
    // A name no certificate serves gets the first one (which the client
    // then refuses, as it does not name it).
    let tcp = TcpStream::connect(router.local_addr()).await.unwrap();
    let refused = connector
        .connect(ServerName::try_from("other.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "a certificate for other.test was served");

    let text = router.metrics().render_prometheus();
    for (leaf, year) in [(&a, 2031), (&b, 2032)] {
        let series = format!(
            "atlas_proxy_tls_certificate_expiry_timestamp_seconds{{service=\"edge\",certificate=\"{}\"}} {}",
            leaf.cert.display(),
            new_year(year)
        );
        assert!(text.contains(&series), "no `{series}` in\n{text}");
    }
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones() {
    let pki = Pki::new();
    let old = pki.leaf("a", &["a.test"], 2031);
    let router = router(TlsConfig::new().certificate(&old.cert, &old.key)).await;
    let connector = pki.client(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let mut open = connect(&connector, router.local_addr(), "a.test").await;
    assert_eq!(
        get(&mut open, "a.test", "/before").await.body,
        "upstream saw /before"
    );
    assert!(served(&open) == old.der);

    // Rotated in place: same files, a new certificate and key.
    let new = pki.leaf("a", &["a.test"], 2033);
    assert!(new.der != old.der);
    router.reload_tls().unwrap();

    // A client of its own: this one would resume its session, which skips
    // the certificate.
    let mut fresh = connect(
        &pki.client(&[&rustls::version::TLS13]),
        router.local_addr(),
        "a.test",
    )
    .await;
    assert!(
        served(&fresh) == new.der,
        "a new connection got the old certificate"
    );
    assert_eq!(
        get(&mut fresh, "a.test", "/new").await.body,
        "upstream saw /new"
    );
    // The connection opened before the reload goes on.
    assert_eq!(
        get(&mut open, "a.test", "/after").await.body,
        "upstream saw /after"
    );
    let text = router.metrics().render_prometheus();
    assert!(text.contains(&format!("}} {}", new_year(2033))), "{text}");

    // A key that does not match: the reload fails naming the file, and
    // the certificate in force stays.
    let other = pki.leaf("other", &["a.test"], 2034);
    std::fs::copy(&other.key, &old.key).unwrap();
    match router.reload_tls() {
        Err(Error::InvalidInput { field, rule, .. }) => {
            assert_eq!(field, "tls.certificates[0].key");
            assert!(rule.contains(&old.key.display().to_string()), "{rule}");
            assert!(rule.contains("does not match"), "{rule}");
        }
        other => panic!("expected a typed error, got {other:?}"),
    }
    let again = connect(
        &pki.client(&[&rustls::version::TLS13]),
        router.local_addr(),
        "a.test",
    )
    .await;
    assert!(served(&again) == new.der);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_reloaded_when_watched() {
    let pki = Pki::new();
    let old = pki.leaf("a", &["a.test"], 2031);
    let router = router(
        TlsConfig::new()
            .certificate(&old.cert, &old.key)
            .watch_files(Duration::from_millis(50)),
    )
    .await;
    // Modification times have a coarse grain on some file systems.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = pki.leaf("a", &["a.test"], 2033);
    bounded("the watched files to be reloaded", async {
        loop {
            let stream = connect(
                &pki.client(&[&rustls::version::TLS13]),
                router.local_addr(),
                "a.test",
            )
            .await;
            if served(&stream) == new.der {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https() {
    let pki = Pki::new();
    let leaf = pki.leaf("a", &["a.test"], 2031);
    let router = router(
        TlsConfig::new()
            .certificate(&leaf.cert, &leaf.key)
            .redirect_http("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    let mut stream = TcpStream::connect(router.redirect_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /path?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    bounded("the redirect", stream.read_to_string(&mut response))
        .await
        .unwrap();
    let response = response.to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 301"), "{response}");
    let location = format!(
        "location: https://a.test:{}/path?q=1",
        router.local_addr().port()
    );
    assert!(response.contains(&location), "{response}");
    router.shutdown().await;
}

#[tokio::test]
async fn bad_tls_configurations_are_typed_errors_naming_the_file() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"], 2031);
    let b = pki.leaf("b", &["b.test"], 2031);
    let build = |tls: TlsConfig| async move {
        ProxyRouter::builder(service())
            .worker_threads(1)
            .tls(tls)
            .build()
            .await
    };
    let invalid = |result: atlas_core::Result<ProxyRouter>| match result {
        Err(Error::InvalidInput { field, rule, .. }) => (field, rule),
        Err(other) => panic!("expected InvalidInput, got {other:?}"),
        Ok(_) => panic!("a bad TLS configuration was accepted"),
    };

    let (field, _) = invalid(build(TlsConfig::new()).await);
    assert_eq!(field, "tls.certificates");

    let missing = pki.dir.path().join("missing.crt");
    let (field, rule) = invalid(build(TlsConfig::new().certificate(&missing, &a.key)).await);
    assert_eq!(field, "tls.certificates[0].cert");
    assert!(rule.contains(&missing.display().to_string()), "{rule}");

    // The key file given as the certificate: no CERTIFICATE block.
    let (field, rule) = invalid(build(TlsConfig::new().certificate(&a.key, &a.key)).await);
    assert_eq!(field, "tls.certificates[0].cert");
    assert!(rule.contains("no CERTIFICATE"), "{rule}");

    let (field, rule) = invalid(
        build(
            TlsConfig::new()
                .certificate(&a.cert, &a.key)
                .certificate(&b.cert, &a.key),
        )
        .await,
    );
    assert_eq!(field, "tls.certificates[1].key");
    assert!(rule.contains("does not match"), "{rule}");
    assert!(rule.contains(&b.cert.display().to_string()), "{rule}");

    let (field, _) = invalid(
        build(
            TlsConfig::new()
                .certificate(&a.cert, &a.key)
                .hsts(Hsts::new(Duration::from_secs(31_536_000)).preload()),
        )
        .await,
    );
    assert_eq!(field, "tls.hsts.preload");

    // A router without TLS has nothing to reload.
    let plain = ProxyRouter::builder(service())
        .worker_threads(1)
        .build()
        .await
        .unwrap();
    assert!(matches!(
        plain.reload_tls(),
        Err(Error::InvalidInput { .. })
    ));
    plain.shutdown().await;
}

// ---------------------------------------------------------------------------
// openssl s_client: old protocol versions and weak suites refused.

/// Runs `openssl s_client` against `addr` with `args`; returns whether the
/// handshake succeeded and what it printed.
fn s_client(addr: SocketAddr, ca: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "a.test", "-CAfile"])
        .arg(ca)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl must be on PATH for this test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // A finished handshake prints the negotiated suite.
    let handshake = output.status.success()
        && text.contains("Cipher is ")
        && !text.contains("Cipher is (NONE)");
    (handshake, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs openssl; run: cargo xtask test"]
async fn openssl_clients_get_only_tls_1_2_and_1_3_with_strong_suites() {
    let pki = Pki::new();
    let leaf = pki.leaf("a", &["a.test"], 2031);
    let ca = pki.dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let router = router(TlsConfig::new().certificate(&leaf.cert, &leaf.key)).await;
    let addr = router.local_addr();
    let run = |args: &'static [&'static str]| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || s_client(addr, &ca, args))
    };
    // Security level 0 lets this openssl offer what its defaults would
    // not, so a refusal is the proxy's.
    let (ok, text) = run(&["-tls1_3"]).await.unwrap();
    assert!(ok && text.contains("TLSv1.3"), "TLS 1.3 refused:\n{text}");
    let (ok, text) = run(&[
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0",
    ])
    .await
    .unwrap();
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 refused:\n{text}");
    for args in [
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
        &["-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"][..],
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0",
        ][..],
        &["-tls1_2", "-cipher", "AES128-GCM-SHA256:@SECLEVEL=0"][..],
    ] {
        let (ok, text) = run(args).await.unwrap();
        assert!(!ok, "openssl {args:?} got a session:\n{text}");
        assert!(
            text.contains("alert"),
            "openssl {args:?} failed for another reason:\n{text}"
        );
    }
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_a_tls_listener_get_their_own_certificate_and_requests() {
    use atlas_local::proxy::ServiceRoute;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"], 2031);
    let b = pki.leaf("b", &["b.test"], 2032);
    let router = ProxyRouter::shared_builder()
        .worker_threads(1)
        .tls(
            TlsConfig::new()
                .certificate(&a.cert, &a.key)
                .certificate(&b.cert, &b.key),
        )
        .build()
        .await
        .unwrap();
    let upstream = upstream().await;
    let mut views = Vec::new();
    for name in ["a", "b"] {
        let service = ServiceName::new(name).unwrap();
        let view = router
            .add_service(service.clone(), ServiceRoute::host(format!("{name}.test")))
            .unwrap();
        view.set_endpoints(&service, Slot::Blue, &[Endpoint::new("blue-0", upstream)])
            .await
            .unwrap();
        view.set_split(&service, &TrafficSplit::all_to(Slot::Blue))
            .await
            .unwrap();
        views.push(view);
    }
    let connector = pki.client(&[&rustls::version::TLS13]);
    for (sni, leaf, requests) in [("a.test", &a, 1), ("b.test", &b, 2)] {
        let mut stream = connect(&connector, router.local_addr(), sni).await;
        assert!(served(&stream) == leaf.der, "wrong certificate for {sni}");
        for _ in 0..requests {
            let seen = get(&mut stream, sni, "/x").await;
            assert!(seen.head.starts_with("http/1.1 200"), "{}", seen.head);
            assert_eq!(seen.body, "upstream saw /x");
        }
    }
    // Each service counts its own requests (recorded just after the
    // response went out).
    let requests = || -> Vec<u64> {
        views
            .iter()
            .map(|v| {
                v.metrics()
                    .window_stats(Slot::Blue, Duration::from_secs(60))
                    .requests
            })
            .collect()
    };
    bounded("the requests to be counted", async {
        while requests() != [1, 2] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // A host no service claims gets the 404, over TLS too.
    let mut stream = connect(&connector, router.local_addr(), "a.test").await;
    let seen = get(&mut stream, "c.test", "/").await;
    assert!(seen.head.starts_with("http/1.1 404"), "{}", seen.head);
    router.shutdown().await;
}
