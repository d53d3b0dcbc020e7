//! Health probes against local servers: healthy, failing, slow, refused,
//! TLS with a generated CA, an expiring certificate, and the socket limit.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_core::{Endpoint, ErrorKind, HealthProbe, ProbeOutcome};
use atlas_metrics::TlsOptions;
use atlas_metrics::probe::{ConnectionLimiter, HttpProbe, TcpProbe, TlsCertProbe};
use support::{Reply, TestServer, pki, refused_addr};

const T: Duration = Duration::from_secs(2);

fn reason(o: &ProbeOutcome) -> String {
    match o {
        ProbeOutcome::Healthy => panic!("expected unhealthy, got healthy"),
        ProbeOutcome::Unhealthy { reason } => reason.clone(),
    }
}

#[tokio::test]
async fn http_probe_healthy_on_expected_status_and_body() {
    let server = TestServer::start(|req| {
        if req.request_line().starts_with("GET /health ") {
            Reply::status(200, "{\"status\":\"ok\"}")
        } else {
            Reply::status(404, "nope")
        }
    })
    .await;
    let probe = HttpProbe::builder()
        .path("/health")
        .body_contains("\"ok\"")
        .build()
        .unwrap();
    assert_eq!(
        probe.check(&server.endpoint(), T).await,
        ProbeOutcome::Healthy
    );

    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].request_line(), "GET /health HTTP/1.1");
    assert_eq!(seen[0].header("host"), Some(server.addr.to_string()));
    assert_eq!(seen[0].header("connection").as_deref(), Some("close"));

    let wrong_path = HttpProbe::get("/ready").unwrap();
    let r = reason(&wrong_path.check(&server.endpoint(), T).await);
    assert!(r.contains("status 404") && r.contains("200-399"), "{r}");
}

#[tokio::test]
async fn http_probe_judges_status_range_and_body() {
    let server = TestServer::start(|_| Reply::status(503, "draining")).await;
    let ep = server.endpoint();
    let default = HttpProbe::get("/").unwrap();
    assert!(reason(&default.check(&ep, T).await).contains("status 503"));

    let accepts_503 = HttpProbe::builder()
        .expect_status(500..=503)
        .build()
        .unwrap();
    assert!(accepts_503.check(&ep, T).await.is_healthy());

    let wants_ok = HttpProbe::builder()
        .expect_status(200..=599)
        .body_contains("ready")
        .build()
        .unwrap();
    let r = reason(&wants_ok.check(&ep, T).await);
    assert!(r.contains("body does not contain \"ready\""), "{r}");

    // The text is past the search limit: not found, and the reason says so.
    let big = TestServer::start(|_| Reply::status(200, &format!("{}ready", "x".repeat(100)))).await;
    let small_window = HttpProbe::builder()
        .body_contains("ready")
        .max_body_bytes(50)
        .build()
        .unwrap();
    let r = reason(&small_window.check(&big.endpoint(), T).await);
    assert!(r.contains("first 50 bytes"), "{r}");
    let wide_window = HttpProbe::builder().body_contains("ready").build().unwrap();
    assert!(wide_window.check(&big.endpoint(), T).await.is_healthy());
}

#[tokio::test]
async fn http_probe_sends_method_and_headers_and_hides_secrets() {
    let server = TestServer::start(|_| Reply::status(204, "")).await;
    let probe = HttpProbe::builder()
        .method("HEAD")
        .path("/health?deep=1")
        .host("checkout.internal")
        .header("x-probe", "atlas")
        .secret_header("x-api-key", "s3cr3t-key")
        .header("authorization", "Bearer t0ken")
        .build()
        .unwrap();
    assert!(probe.check(&server.endpoint(), T).await.is_healthy());
    let seen = &server.requests()[0];
    assert_eq!(seen.request_line(), "HEAD /health?deep=1 HTTP/1.1");
    assert_eq!(seen.header("host").as_deref(), Some("checkout.internal"));
    assert_eq!(seen.header("x-probe").as_deref(), Some("atlas"));
    assert_eq!(seen.header("x-api-key").as_deref(), Some("s3cr3t-key"));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer t0ken")
    );
    assert!(
        seen.header("user-agent")
            .unwrap()
            .starts_with("atlas-probe/")
    );

    let debug = format!("{probe:?}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("t0ken"),
        "{debug}"
    );
    assert!(debug.contains("x-api-key"), "{debug}");
}

#[tokio::test]
async fn http_probe_times_out_on_a_slow_server() {
    let server =
        TestServer::start(|_| Reply::status(200, "ok").delayed(Duration::from_secs(5))).await;
    let probe = HttpProbe::get("/health").unwrap();
    let started = Instant::now();
    let outcome = probe
        .check(&server.endpoint(), Duration::from_millis(300))
        .await;
    let took = started.elapsed();
    assert_eq!(reason(&outcome), "timed out after 300ms");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "gave up late: {took:?}");
    // The same server within its delay is healthy: the timeout, not the
    // server, decided.
    let patient =
        TestServer::start(|_| Reply::status(200, "ok").delayed(Duration::from_millis(50))).await;
    assert!(probe.check(&patient.endpoint(), T).await.is_healthy());
}

#[tokio::test]
async fn probes_report_a_refused_port() {
    let ep = Endpoint::new("gone-0", refused_addr().await);
    let r = reason(&HttpProbe::get("/").unwrap().check(&ep, T).await);
    assert!(
        r.contains("connect to") && r.to_lowercase().contains("refused"),
        "{r}"
    );
    let r = reason(&TcpProbe::new().check(&ep, T).await);
    assert!(r.to_lowercase().contains("refused"), "{r}");
    let r = reason(
        &TlsCertProbe::builder()
            .skip_chain_verification()
            .build()
            .unwrap()
            .check(&ep, T)
            .await,
    );
    assert!(r.to_lowercase().contains("refused"), "{r}");
}

#[tokio::test]
async fn tcp_probe_healthy_when_port_accepts() {
    let server = TestServer::start(|_| Reply::status(200, "")).await;
    assert!(
        TcpProbe::new()
            .check(&server.endpoint(), T)
            .await
            .is_healthy()
    );
}

#[tokio::test]
async fn waiting_for_a_connection_slot_counts_toward_the_timeout() {
    let server = TestServer::start(|_| Reply::status(200, "")).await;
    let limiter = ConnectionLimiter::new(1).unwrap();
    let probe = TcpProbe::new().with_limiter(limiter.clone());
    // Another probe holds the only slot for a long time.
    let slow = TestServer::start(|_| Reply::status(200, "").delayed(Duration::from_secs(5))).await;
    let holder = HttpProbe::builder()
        .limiter(limiter.clone())
        .build()
        .unwrap();
    let slow_ep = slow.endpoint();
    let held = tokio::spawn(async move { holder.check(&slow_ep, Duration::from_secs(3)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(limiter.available(), 0);
    let outcome = probe
        .check(&server.endpoint(), Duration::from_millis(200))
        .await;
    assert_eq!(reason(&outcome), "timed out after 200ms");
    held.abort();
    let _ = held.await;
    assert_eq!(
        limiter.available(),
        1,
        "an aborted attempt gives its slot back"
    );
    assert!(probe.check(&server.endpoint(), T).await.is_healthy());
}

#[tokio::test]
async fn https_probe_trusts_a_given_ca_only() {
    let pki = pki(time::Duration::days(90));
    let server = TestServer::start_tls(pki.acceptor.clone(), |_| Reply::status(200, "ok")).await;
    let trusted = HttpProbe::builder()
        .path("/health")
        .body_contains("ok")
        .https(TlsOptions::only_ca_pem(&pki.ca_pem).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        trusted.check(&server.endpoint(), T).await,
        ProbeOutcome::Healthy
    );

    let by_name = HttpProbe::builder()
        .https(TlsOptions::only_ca_pem(&pki.ca_pem).unwrap())
        .tls_server_name("localhost")
        .build()
        .unwrap();
    assert!(by_name.check(&server.endpoint(), T).await.is_healthy());

    let other_ca = support::pki(time::Duration::days(90));
    let untrusted = HttpProbe::builder()
        .https(TlsOptions::only_ca_pem(&other_ca.ca_pem).unwrap())
        .build()
        .unwrap();
    let r = reason(&untrusted.check(&server.endpoint(), T).await);
    assert!(r.contains("TLS handshake"), "{r}");
}

#[tokio::test]
async fn tls_cert_probe_reports_a_certificate_expiring_in_ten_days() {
    let pki = pki(time::Duration::days(10));
    let server = TestServer::start_tls(pki.acceptor.clone(), |_| Reply::status(200, "ok")).await;
    let ep = server.endpoint();
    let tls = || TlsOptions::only_ca_pem(&pki.ca_pem).unwrap();

    let default = TlsCertProbe::builder().tls(tls()).build().unwrap();
    assert_eq!(default.min_remaining(), Duration::from_secs(30 * 86_400));
    let info = default.inspect(&ep, T).await.unwrap();
    assert!(
        (info.days_remaining - 10.0).abs() < 0.01,
        "{}",
        info.days_remaining
    );
    assert!(
        info.subject.contains("atlas-test-server"),
        "{}",
        info.subject
    );
    let r = reason(&default.check(&ep, T).await);
    assert!(
        r.contains("expires in 10.0 days") && r.contains("30.0-day"),
        "{r}"
    );

    let lenient = TlsCertProbe::builder()
        .tls(tls())
        .min_remaining_days(5)
        .build()
        .unwrap();
    assert_eq!(lenient.check(&ep, T).await, ProbeOutcome::Healthy);
}

#[tokio::test]
async fn tls_cert_probe_verifies_the_chain_unless_told_not_to() {
    let expired = pki(-time::Duration::days(3));
    let server = TestServer::start_tls(expired.acceptor.clone(), |_| Reply::status(200, "")).await;
    let ep = server.endpoint();

    let verifying = TlsCertProbe::builder()
        .tls(TlsOptions::only_ca_pem(&expired.ca_pem).unwrap())
        .build()
        .unwrap();
    let r = reason(&verifying.check(&ep, T).await);
    assert!(
        r.contains("TLS handshake") && r.to_lowercase().contains("expired"),
        "{r}"
    );
    assert_eq!(
        verifying.inspect(&ep, T).await.unwrap_err().kind(),
        ErrorKind::Backend
    );

    let monitor = TlsCertProbe::builder()
        .skip_chain_verification()
        .build()
        .unwrap();
    let info = monitor.inspect(&ep, T).await.unwrap();
    assert!(
        (info.days_remaining + 3.0).abs() < 0.01,
        "{}",
        info.days_remaining
    );
    let r = reason(&monitor.check(&ep, T).await);
    assert!(r.contains("expired 3.0 days ago"), "{r}");

    let combined = TlsCertProbe::builder()
        .skip_chain_verification()
        .tls(TlsOptions::only_ca_pem(&expired.ca_pem).unwrap())
        .build()
        .unwrap_err();
    assert!(
        combined.to_string().contains("skip_chain_verification"),
        "{combined}"
    );
}

#[tokio::test]
async fn tls_cert_probe_times_out_on_a_silent_server() {
    // Accepts TCP but never speaks TLS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let probe = TlsCertProbe::builder()
        .skip_chain_verification()
        .build()
        .unwrap();
    let outcome = probe
        .check(&Endpoint::new("silent", addr), Duration::from_millis(200))
        .await;
    assert_eq!(reason(&outcome), "timed out after 200ms");
    hold.abort();
}

/// 1,000 endpoints probed at once through one limiter never hold more
/// sockets than its size; a larger limiter does let more through, so the
/// count is measured, not assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limiter_caps_open_sockets_across_a_thousand_probes() {
    async fn run(limit: usize) -> (usize, usize) {
        let server =
            TestServer::start(|_| Reply::status(200, "ok").delayed(Duration::from_millis(5))).await;
        let limiter = ConnectionLimiter::new(limit).unwrap();
        let probe = Arc::new(
            HttpProbe::builder()
                .limiter(limiter.clone())
                .build()
                .unwrap(),
        );
        let ep = server.endpoint();
        let checks = (0..1000).map(|_| {
            let (probe, ep) = (probe.clone(), ep.clone());
            async move { probe.check(&ep, Duration::from_secs(60)).await }
        });
        let started = Instant::now();
        let outcomes = futures::future::join_all(checks).await;
        eprintln!(
            "limit {limit}: 1000 probes in {:?}, at most {} sockets open",
            started.elapsed(),
            server.max_concurrent()
        );
        let healthy = outcomes.iter().filter(|o| o.is_healthy()).count();
        assert_eq!(limiter.available(), limit, "every slot returned");
        (healthy, server.max_concurrent())
    }
    let (healthy, max_open) = run(16).await;
    assert_eq!(healthy, 1000);
    assert!(max_open <= 16, "{max_open} sockets open at once, limit 16");
    assert!(max_open >= 8, "probes did not run concurrently: {max_open}");
    let (healthy, wider) = run(64).await;
    assert_eq!(healthy, 1000);
    assert!(wider > 16 && wider <= 64, "{wider}");
}

#[test]
fn builders_refuse_bad_settings_naming_the_field() {
    let cases: Vec<(atlas_core::Result<HttpProbe>, &str)> = vec![
        (
            HttpProbe::builder().path("health").build(),
            "http_probe.path",
        ),
        (HttpProbe::builder().path("/a b").build(), "http_probe.path"),
        (
            HttpProbe::builder().method("GE T").build(),
            "http_probe.method",
        ),
        (
            HttpProbe::builder()
                .expect_status(std::ops::RangeInclusive::new(400, 300))
                .build(),
            "http_probe.expect_status",
        ),
        (
            HttpProbe::builder().expect_status(0..=200).build(),
            "http_probe.expect_status",
        ),
        (
            HttpProbe::builder().expect_status(200..=700).build(),
            "http_probe.expect_status",
        ),
        (
            HttpProbe::builder().header("bad header", "x").build(),
            "http_probe.headers[0]",
        ),
        (
            HttpProbe::builder()
                .header("x-ok", "v")
                .secret_header("x-key", "line\nbreak")
                .build(),
            "http_probe.headers[1]",
        ),
        (
            HttpProbe::builder().tls_server_name("example.com").build(),
            "http_probe.tls_server_name",
        ),
        (
            HttpProbe::builder()
                .body_contains("x")
                .max_body_bytes(0)
                .build(),
            "http_probe.max_body_bytes",
        ),
    ];
    for (result, field) in cases {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
        assert!(!err.to_string().contains("break"), "secret echoed: {err}");
    }
    assert!(
        ConnectionLimiter::new(0)
            .unwrap_err()
            .to_string()
            .contains("max_connections")
    );
    assert!(
        TlsOptions::only_ca_pem("not pem")
            .unwrap_err()
            .to_string()
            .contains("tls.ca_pem")
    );
    let err = TlsCertProbe::builder()
        .server_name("bad name!")
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("tls_cert_probe.server_name"),
        "{err}"
    );
}

/// A listener that accepts connections and never says a word.
async fn silent_server() -> (Endpoint, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (Endpoint::new("silent-0", addr), task)
}

/// A port whose accept queue is full, so a TCP connect to it never
/// completes (the kernel drops the SYNs): a hanging endpoint for `TcpProbe`.
async fn unconnectable() -> (
    Endpoint,
    Vec<tokio::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    (Endpoint::new("backlogged-0", addr), fillers, listener)
}

mod conformance {
    use super::*;
    use atlas_core::testing::conformance::probe::{ProbeEndpoints, all};

    #[tokio::test]
    async fn http_probe_passes_the_probe_suite() {
        let healthy = TestServer::start(|_| Reply::status(200, "ok")).await;
        let (hanging, task) = silent_server().await;
        let endpoints = ProbeEndpoints::new(
            healthy.endpoint(),
            Endpoint::new("gone", refused_addr().await),
            hanging,
        );
        all(&HttpProbe::get("/health").unwrap(), &endpoints).await;
        task.abort();
    }

    #[tokio::test]
    async fn https_probe_passes_the_probe_suite() {
        let pki = pki(time::Duration::days(90));
        let healthy =
            TestServer::start_tls(pki.acceptor.clone(), |_| Reply::status(200, "ok")).await;
        let (hanging, task) = silent_server().await;
        let endpoints = ProbeEndpoints::new(
            healthy.endpoint(),
            Endpoint::new("gone", refused_addr().await),
            hanging,
        );
        let probe = HttpProbe::builder()
            .https(TlsOptions::only_ca_pem(&pki.ca_pem).unwrap())
            .build()
            .unwrap();
        all(&probe, &endpoints).await;
        task.abort();
    }

    #[tokio::test]
    async fn tcp_probe_passes_the_probe_suite() {
        let healthy = TestServer::start(|_| Reply::status(200, "")).await;
        let (hanging, _fillers, _listener) = unconnectable().await;
        let endpoints = ProbeEndpoints::new(
            healthy.endpoint(),
            Endpoint::new("gone", refused_addr().await),
            hanging,
        );
        all(&TcpProbe::new(), &endpoints).await;
    }

    #[tokio::test]
    async fn tls_cert_probe_passes_the_probe_suite() {
        let pki = pki(time::Duration::days(90));
        let healthy = TestServer::start_tls(pki.acceptor.clone(), |_| Reply::status(200, "")).await;
        let (hanging, task) = silent_server().await;
        let endpoints = ProbeEndpoints::new(
            healthy.endpoint(),
            Endpoint::new("gone", refused_addr().await),
            hanging,
        );
        let probe = TlsCertProbe::builder()
            .tls(TlsOptions::only_ca_pem(&pki.ca_pem).unwrap())
            .build()
            .unwrap();
        all(&probe, &endpoints).await;
        task.abort();
    }
}
