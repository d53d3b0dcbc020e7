//! Local servers and certificates shared by this crate's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// `attempts` in all (so `attempts - 1` retries), 10 ms backoff doubling to 20 ms.
pub fn fast_retry(attempts: u32) -> atlas_core::retry::RetryConfig {
    atlas_core::retry::RetryConfig::control_plane()
        .with_max_retries(attempts - 1)
        .with_backoff(
            atlas_core::retry::BackoffConfig::default()
                .with_init_backoff(Duration::from_millis(10))
                .with_max_backoff(Duration::from_millis(20)),
        )
}

/// What the test server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    /// Held before answering: a slow server.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Self {
        Reply {
            status,
            body: body.to_string(),
            content_type: "text/plain",
            delay: Duration::ZERO,
        }
    }
    pub fn json(status: u16, body: &str) -> Self {
        Reply {
            content_type: "application/json",
            ..Reply::status(status, body)
        }
    }
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request line and headers, as sent.
    pub head: String,
    /// The body, if the request had a content-length.
    pub body: String,
}

impl Seen {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1 with a fixed behaviour, that records
/// requests and the most connections it ever had open at once.
pub struct TestServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    open: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None, Arc::new(handler)).await
    }

    pub async fn start_tls(
        acceptor: TlsAcceptor,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            Some(acceptor),
            Arc::new(handler),
        )
        .await
    }

    pub async fn start_at(addr: SocketAddr, handler: Handler) -> Self {
        Self::start_on(addr, None, handler).await
    }

    async fn start_on(addr: SocketAddr, tls: Option<TlsAcceptor>, handler: Handler) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let (s, o, m) = (seen.clone(), open.clone(), max_open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, o, m, h, tls) = (
                    s.clone(),
                    o.clone(),
                    m.clone(),
                    handler.clone(),
                    tls.clone(),
                );
                tokio::spawn(async move {
                    let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    match tls {
                        None => serve(stream, &s, &o, &*h).await,
                        Some(acc) => match acc.accept(stream).await {
                            Ok(tls) => serve(tls, &s, &o, &*h).await,
                            Err(_) => {
                                o.fetch_sub(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        TestServer {
            addr,
            seen,
            open,
            max_open,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_open.load(Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> atlas_core::Endpoint {
        atlas_core::Endpoint::new("test-0", self.addr)
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: &Mutex<Vec<Seen>>,
    open: &AtomicUsize,
    handler: &(dyn Fn(&Seen) -> Reply + Send + Sync),
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break Some(i);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let Some(head_end) = head_end else {
        open.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut request = Seen {
        head,
        body: String::new(),
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    request.body = String::from_utf8_lossy(&body).to_string();
    seen.lock().unwrap().push(request.clone());
    let reply = handler(&request);
    tokio::time::sleep(reply.delay).await;
    // Counted closed before answering: the client's socket is open for
    // at least as long as this window, so the count never over-states it.
    open.fetch_sub(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A CA and a server certificate for 127.0.0.1 it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

/// A private CA and a leaf certificate for `127.0.0.1` / `localhost`
/// valid from a day ago until `valid_for` from now (negative: expired).
pub fn pki(valid_for: time::Duration) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "atlas test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let now = time::OffsetDateTime::now_utc();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "atlas-test-server");
    leaf.not_before = now - time::Duration::days(2);
    leaf.not_after = now + valid_for;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

/// A local port nothing listens on.
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}
