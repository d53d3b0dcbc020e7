//! `atlasd` through its admin API: the core conformance suites through the
//! remote clients, refusals (permissions, tokens, malformed calls, racing
//! clients), and state that survives a restart.
//!
//! The daemon runs in the test process ([`Daemon::start`], exactly what the
//! `atlasd` binary runs); replicas are Python's `http.server`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atlas_core::testing::conformance::{self, workloads::WorkloadsFixture};
use atlas_core::{
    Endpoint, ErrorKind, Measurement, MetricProvider, MetricQuery, ServiceName, Slot,
    TrafficRouter, TrafficSplit, Workloads,
};
use atlas_local::daemon::api::{ApiErrorKind, ApiRequest};
use atlas_local::daemon::client::{
    AtlasdClient, RemoteMetrics, RemoteRouter, RemoteStateStore, RemoteWorkloads,
};
use atlas_local::daemon::server::AdminConfig;
use atlas_local::daemon::{Daemon, DaemonConfig};
use atlas_local::proxy::ServiceRoute;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

mod common;
use common::{http_server, python};

const WAIT: Duration = Duration::from_secs(20);

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn config(dir: &Path) -> DaemonConfig {
    let mut config = DaemonConfig::new(dir.join("state"));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.grace_period = Duration::from_secs(2);
    config.poll_interval = Duration::from_millis(20);
    config.worker_threads = 1;
    config
}

/// A state directory under a private (0700) parent, as a socket directory
/// must be. Dropped, it SIGKILLs every replica the state file names:
/// replicas outlive their daemon by design, so a test that fails before
/// its `shutdown_all` must not leave them behind.
struct Temp(tempfile::TempDir);

impl Temp {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.path().join("state/atlasd.json")) else {
            return;
        };
        let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        for record in state["replicas"].as_array().into_iter().flatten() {
            if let Some(pid) = record["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                // Each detached replica leads a session (and group) of its own.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn temp() -> Temp {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    Temp(dir)
}

async fn start(dir: &Path) -> (Daemon, AtlasdClient) {
    let daemon = Daemon::start(config(dir)).await.unwrap();
    let client = AtlasdClient::unix(daemon.admin_socket());
    (daemon, client)
}

/// GET `path` with `Host: host` through the proxy; the status and body.
async fn get(proxy: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn wait_ready(w: &RemoteWorkloads, svc: &ServiceName, slot: Slot, n: u32) -> Vec<Endpoint> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = w.status(svc, slot).await.unwrap();
        if status.ready == n {
            return status.endpoints;
        }
        assert!(Instant::now() < deadline, "replicas not ready: {status:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `svc` on `host` and serves `site` from one blue replica with
/// all of its traffic, through the daemon's API.
async fn serve_site(client: &AtlasdClient, svc: &ServiceName, host: &str, site: &Path) {
    let (router, workloads) = (
        RemoteRouter::new(client.clone()),
        RemoteWorkloads::new(client.clone()),
    );
    client
        .register_service(svc, ServiceRoute::host(host))
        .await
        .unwrap();
    workloads
        .deploy(svc, Slot::Blue, &http_server("v1", site), 1)
        .await
        .unwrap();
    let endpoints = wait_ready(&workloads, svc, Slot::Blue, 1).await;
    router
        .set_endpoints(svc, Slot::Blue, &endpoints)
        .await
        .unwrap();
    router
        .set_split(svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_state_store_passes_the_conformance_suite() {
    let dir = temp();
    let (daemon, client) = start(dir.path()).await;
    conformance::state_store::all(&RemoteStateStore::new(client), "remote").await;
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_router_passes_the_conformance_suite() {
    let dir = temp();
    let (daemon, client) = start(dir.path()).await;
    let make = |svc: ServiceName| {
        let client = client.clone();
        async move {
            let host = format!("{}.test", svc.as_str());
            client
                .register_service(&svc, ServiceRoute::host(host))
                .await
                .unwrap();
            RemoteRouter::new(client)
        }
    };
    conformance::router::all_single_service("remote", make).await;
    // Unlike a single-service proxy, the daemon serves several services,
    // which must stay independent.
    let (a, b) = (service("remote-indep-a"), service("remote-indep-b"));
    client
        .register_service(&a, ServiceRoute::host("a.test"))
        .await
        .unwrap();
    client
        .register_service(&b, ServiceRoute::host("b.test"))
        .await
        .unwrap();
    let router = RemoteRouter::new(client.clone());
    conformance::router::services_are_independent_with(
        &router,
        &a,
        &b,
        &conformance::router::SuiteConfig::new(),
    )
    .await;
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_workloads_pass_the_conformance_suite() {
    let dir = temp();
    let site = tempfile::tempdir().unwrap();
    let (daemon, client) = start(dir.path()).await;
    let fixture = WorkloadsFixture::new(
        http_server("v1", site.path()),
        http_server("v2", site.path()),
    )
    .with_ready_timeout(WAIT)
    .with_poll_interval(Duration::from_millis(20));
    conformance::workloads::all(&RemoteWorkloads::new(client), &fixture, "remote").await;
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_routed_by_host_and_a_second_claim_is_refused() {
    let dir = temp();
    let (a_site, b_site) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(a_site.path().join("who"), "service a").unwrap();
    std::fs::write(b_site.path().join("who"), "service b").unwrap();
    let (daemon, client) = start(dir.path()).await;
    for (name, site) in [("svc-a", &a_site), ("svc-b", &b_site)] {
        serve_site(
            &client,
            &service(name),
            &format!("{name}.example"),
            site.path(),
        )
        .await;
    }
    let proxy = daemon.proxy_addr();
    assert_eq!(
        get(proxy, "svc-a.example", "/who").await,
        (200, "service a".into())
    );
    assert_eq!(
        get(proxy, "SVC-B.example:8080", "/who").await,
        (200, "service b".into())
    );
    assert_eq!(get(proxy, "nobody.example", "/who").await.0, 404);

    // A second claim on a host: refused, typed, and nothing changed.
    let err = client
        .register_service(&service("svc-c"), ServiceRoute::host("svc-a.example"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains("svc-a"),
        "the error names the owner: {err}"
    );
    // The proxy's own metrics answer analysis queries through the API.
    let count = |service: &str| {
        let metrics = RemoteMetrics::new(client.clone());
        let query = MetricQuery {
            metric: "requests".into(),
            query: "request_count:blue".into(),
            window: Duration::from_secs(60),
            args: [("service".to_owned(), service.to_owned())].into(),
        };
        async move { metrics.measure(&query).await }
    };
    assert_eq!(count("svc-a").await.unwrap(), Measurement::Value(1.0));
    assert_eq!(count("svc-b").await.unwrap(), Measurement::Value(1.0));
    assert_eq!(
        count("svc-z").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let names: Vec<_> = client
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![service("svc-a"), service("svc-b")]);
    assert_eq!(
        get(proxy, "svc-a.example", "/who").await,
        (200, "service a".into())
    );
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_splits_and_replicas_survive_a_restart_of_the_daemon() {
    let dir = temp();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("who"), "kept").unwrap();
    let svc = service("kept");
    let (daemon, client) = start(dir.path()).await;
    let (router, workloads) = (
        RemoteRouter::new(client.clone()),
        RemoteWorkloads::new(client.clone()),
    );
    client
        .register_service(&svc, ServiceRoute::host("kept.example"))
        .await
        .unwrap();
    workloads
        .deploy(&svc, Slot::Green, &http_server("v3", site.path()), 2)
        .await
        .unwrap();
    let endpoints = wait_ready(&workloads, &svc, Slot::Green, 2).await;
    router
        .set_endpoints(&svc, Slot::Green, &endpoints)
        .await
        .unwrap();
    let split = TrafficSplit::all_to(Slot::Green);
    router.set_split(&svc, &split).await.unwrap();
    let before = workloads.status(&svc, Slot::Green).await.unwrap();
    daemon.shutdown().await;

    // The replicas outlived the daemon.
    for e in &before.endpoints {
        assert!(
            TcpStream::connect(e.addr).await.is_ok(),
            "{e} stopped with the daemon"
        );
    }
    let mut again = config(dir.path());
    again.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let daemon = Daemon::start(again).await.unwrap();
    let client = AtlasdClient::unix(daemon.admin_socket());
    let (router, workloads) = (
        RemoteRouter::new(client.clone()),
        RemoteWorkloads::new(client.clone()),
    );
    assert_eq!(router.split(&svc).await.unwrap(), Some(split));
    let after = workloads.status(&svc, Slot::Green).await.unwrap();
    assert_eq!(
        after.endpoints, before.endpoints,
        "the same replicas, adopted"
    );
    assert_eq!(after.version.as_deref(), Some("v3"));
    assert_eq!(
        get(daemon.proxy_addr(), "kept.example", "/who").await,
        (200, "kept".into())
    );
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_are_refused_with_a_typed_error_and_change_nothing() {
    let dir = temp();
    let (daemon, client) = start(dir.path()).await;
    for body in [
        &b"not json"[..],
        br#"{"op":"explode"}"#,
        br#"{"op":"register_service","service":"x"}"#,
        br#"{"op":"register_service","service":"x","route":{"hosts":["x.test"],"path_prefix":null},"extra":1}"#,
    ] {
        let err = client.call_raw(body.to_vec()).await.unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Malformed, "{}: {err}", String::from_utf8_lossy(body));
    }
    // A name that the type would refuse, smuggled through JSON: refused
    // while reading the call, naming the rule.
    let err = client
        .call_raw(
            br#"{"op":"register_service","service":"Bad Name!","route":{"hosts":["x.test"]}}"#
                .to_vec(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Malformed, "{err}");
    assert!(err.message.contains("invalid service name"), "{err}");
    // An invalid host.
    let err = client
        .register_service(&service("x"), ServiceRoute::host("not a host"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        client.services().await.unwrap().is_empty(),
        "nothing was registered"
    );
    daemon.shutdown_all().await;
}

fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_listener_requires_the_token_and_racing_clients_get_a_conflict() {
    let dir = temp();
    let token = token_file(dir.path(), "s3cret-token-0123456789", 0o600);
    let mut config = config(dir.path());
    config.admin.tcp = Some((SocketAddr::from(([127, 0, 0, 1], 0)), token.clone()));
    let daemon = Daemon::start(config).await.unwrap();
    let addr = daemon.admin_tcp_addr().expect("tcp listener");

    let good = AtlasdClient::tcp(addr, &token).unwrap();
    assert!(good.services().await.unwrap().is_empty());
    let wrong = AtlasdClient::tcp(
        addr,
        &token_file(&dir.path().join("state"), "another-token-0123456789", 0o600),
    )
    .unwrap();
    let err = wrong.call(&ApiRequest::Services).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Unauthorized, "{err}");
    // No token at all: a bare HTTP call.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = r#"{"op":"services"}"#;
    stream
        .write_all(format!("POST /v1/call HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");

    // Two clients race to register the same service: one wins.
    let svc = service("raced");
    let second = AtlasdClient::tcp(addr, &token).unwrap();
    let (a, b) = tokio::join!(
        good.register_service(&svc, ServiceRoute::host("raced.test")),
        second.register_service(&svc, ServiceRoute::host("raced.test")),
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{a:?} {b:?}");
    let loser = a.err().or(b.err()).unwrap();
    assert_eq!(loser.kind(), ErrorKind::Conflict, "{loser}");

    // Two clients race to change the same service: while one change runs
    // (endpoints draining a request that never ends, bounded by the 2 s
    // grace period), the other is refused rather than interleaved.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let (ra, rb) = (
        RemoteRouter::new(good.clone()),
        RemoteRouter::new(second.clone()),
    );
    ra.set_endpoints(&svc, Slot::Blue, &[Endpoint::new("hang-0", hang_addr)])
        .await
        .unwrap();
    ra.set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    let proxy = daemon.proxy_addr();
    let stuck = tokio::spawn(async move { get(proxy, "raced.test", "/").await });
    sleep(Duration::from_millis(200)).await;
    let (a, b) = tokio::join!(ra.set_endpoints(&svc, Slot::Blue, &[]), async {
        sleep(Duration::from_millis(100)).await;
        rb.set_split(&svc, &TrafficSplit::new(Slot::Blue, 50).unwrap())
            .await
    });
    a.unwrap();
    let err = b.expect_err("the second change must be refused while the first runs");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains("set_endpoints"),
        "the conflict names the change in progress: {err}"
    );
    assert_eq!(
        rb.split(&svc).await.unwrap(),
        Some(TrafficSplit::all_to(Slot::Blue)),
        "the refused split changed nothing"
    );
    stuck.abort();
    drop(hang);
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_permissions_are_refused_at_start() {
    // A token file others may read.
    let dir = temp();
    let token = token_file(dir.path(), "s3cret-token-0123456789", 0o644);
    let mut c = config(dir.path());
    c.admin.tcp = Some((SocketAddr::from(([127, 0, 0, 1], 0)), token));
    let err = Daemon::start(c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("readable by other users"), "{err}");

    // A socket mode that lets every user in.
    let mut c = config(dir.path());
    c.admin.socket_mode = 0o666;
    let err = Daemon::start(c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // A socket directory anyone may write to.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = config(dir.path());
    c.admin = AdminConfig::unix(open.join("atlasd.sock"));
    let err = Daemon::start(c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("writable by other users"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0600_and_other_users_are_refused() {
    let dir = temp();
    let (daemon, client) = start(dir.path()).await;
    let mode = std::fs::metadata(daemon.admin_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(client.services().await.is_ok());

    // Another user cannot connect. As root, run the attempt as `nobody`
    // (uid 65534); the parent directories must let it reach the socket.
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1)
        != 0
    {
        eprintln!(
            "not root: the other-user check needs root to switch users; the mode check above ran"
        );
        daemon.shutdown_all().await;
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(
        dir.path().join("state"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect({:?})\n  s.sendall(b'POST /v1/call HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 17\\r\\n\\r\\n{{\"op\":\"services\"}}')\n  print(s.recv(100).split(b' ')[1].decode())\nexcept PermissionError:\n  print('denied')\n",
        daemon.admin_socket().display().to_string()
    );
    let run = |script: String| async move {
        let out = tokio::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &python(),
                "-c",
                &script,
            ])
            .output()
            .await
            .expect("setpriv runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        run(script.clone()).await,
        "denied",
        "mode 0600 keeps other users out"
    );
    // Even if the socket file is opened up by hand, the daemon checks the
    // caller's credentials and refuses.
    std::fs::set_permissions(
        daemon.admin_socket(),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    assert_eq!(run(script).await, "401", "peer credentials are checked");
    assert!(client.services().await.unwrap().is_empty());
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_commands_reach_a_waiting_deployer_in_order() {
    let dir = temp();
    let (daemon, client) = start(dir.path()).await;
    let svc = service("steered");
    let waiter = {
        let client = client.clone();
        let svc = svc.clone();
        tokio::spawn(async move { client.next_command(&svc, 0, Duration::from_secs(10)).await })
    };
    sleep(Duration::from_millis(100)).await;
    client
        .steer(&svc, atlas_local::daemon::api::SteerCommand::Pause)
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap().expect("a command");
    assert_eq!(
        (got.seq, got.command),
        (1, atlas_local::daemon::api::SteerCommand::Pause)
    );
    assert_eq!(
        client
            .next_command(&svc, 1, Duration::from_millis(100))
            .await
            .unwrap(),
        None
    );
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_daemon_is_not() {
    let dir = temp();
    let (daemon, _client) = start(dir.path()).await;
    let mut second = config(dir.path());
    second.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let err = Daemon::start(second).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    daemon.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_terminates_tls_with_http2_for_its_services() {
    let dir = temp();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("who"), "over tls").unwrap();
    // A self-signed certificate for the service's host.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["web.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("web.crt"), dir.path().join("web.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut c = config(dir.path());
    c.tls = Some(atlas_local::proxy::TlsConfig::new().certificate(&cert_path, &key_path));
    let daemon = Daemon::start(c).await.unwrap();
    let client = AtlasdClient::unix(daemon.admin_socket());
    serve_site(&client, &service("web"), "web.test", site.path()).await;
    let port = daemon.proxy_addr().port();
    for protocol in ["--http1.1", "--http2"] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", protocol, "-w", " %{http_version}", "--cacert"])
            .arg(&cert_path)
            .arg("--resolve")
            .arg(format!("web.test:{port}:127.0.0.1"))
            .arg(format!("https://web.test:{port}/who"))
            .output()
            .await
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = if protocol == "--http2" {
            "over tls 2"
        } else {
            "over tls 1.1"
        };
        assert_eq!(
            text,
            expected,
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    daemon.shutdown_all().await;
}
