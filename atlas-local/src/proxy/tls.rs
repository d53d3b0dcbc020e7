//! TLS termination: the server configuration (TLS 1.2 and 1.3, ECDHE with
//! AEAD suites only, the aws-lc-rs provider named explicitly), the
//! certificates chosen by SNI and reloaded from their files, HSTS, and the
//! plain-HTTP redirect answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use atlas_core::{Error, Result};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Browsers' HTTPS-only preload lists take a host only with an HSTS
/// `max-age` of at least one year.
const PRELOAD_MIN_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// TLS termination for a [`ProxyRouter`](super::ProxyRouter): the
/// certificates with their keys, HSTS, and an optional plain-HTTP listener
/// that redirects to HTTPS.
///
/// The proxy speaks TLS 1.2 and 1.3 only, with ECDHE key exchange and the
/// AEAD suites AES-GCM and ChaCha20-Poly1305 only (no CBC, no RSA key
/// exchange), through rustls with the aws-lc-rs provider.
///
/// Each certificate serves the DNS names of its subject alternative names
/// (its common name when it has none), wildcards included; the first one
/// added also serves clients that send no SNI name or one no certificate
/// names.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub(crate) certificates: Vec<CertificateFiles>,
    pub(crate) hsts: Option<Hsts>,
    pub(crate) redirect_http: Option<SocketAddr>,
    pub(crate) watch_interval: Option<Duration>,
    /// HTTP/2 is not offered (ALPN `http/1.1` only).
    pub(crate) no_http2: bool,
}

impl TlsConfig {
    /// No certificate yet; add at least one with
    /// [`certificate`](Self::certificate).
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Serves the certificate chain in the PEM file `cert` (end-entity
    /// certificate first) with the private key in the PEM file `key`
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.certificates.push(CertificateFiles {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Adds a `Strict-Transport-Security` header to every response relayed
    /// over TLS.
    pub fn hsts(mut self, hsts: Hsts) -> Self {
        self.hsts = Some(hsts);
        self
    }

    /// Also listens for plain HTTP on `addr` and answers every request
    /// there with `301 Moved Permanently` to the same host and path over
    /// HTTPS, on the TLS listener's port.
    pub fn redirect_http(mut self, addr: SocketAddr) -> Self {
        self.redirect_http = Some(addr);
        self
    }

    /// Checks the certificate and key files' modification times every
    /// `interval` and reloads them when one changed (off by default;
    /// [`ProxyRouter::reload_tls`](super::ProxyRouter::reload_tls) reloads
    /// on demand).
    pub fn watch_files(mut self, interval: Duration) -> Self {
        self.watch_interval = Some(interval);
        self
    }

    /// Whether clients may speak HTTP/2 (on by default): the listener
    /// offers ALPN `h2` before `http/1.1`, and a connection that chose
    /// `h2` is served by an HTTP/2 server whose requests are relayed to
    /// the HTTP/1.1 upstreams. With `false` only `http/1.1` is offered.
    pub fn http2(mut self, enabled: bool) -> Self {
        self.no_http2 = !enabled;
        self
    }
}

/// One certificate chain file and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertificateFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// The `Strict-Transport-Security` header: browsers that saw it use only
/// HTTPS for the host for `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hsts {
    max_age: Duration,
    include_subdomains: bool,
    preload: bool,
}

impl Hsts {
    /// `max-age` of `max_age` (whole seconds), without `includeSubDomains`
    /// or `preload`.
    pub fn new(max_age: Duration) -> Self {
        Hsts {
            max_age,
            include_subdomains: false,
            preload: false,
        }
    }

    /// Adds `includeSubDomains`: the policy covers every subdomain too.
    pub fn include_subdomains(mut self) -> Self {
        self.include_subdomains = true;
        self
    }

    /// Adds `preload`, the consent to browsers' built-in HTTPS-only lists;
    /// those require `includeSubDomains` and a `max-age` of a year or more,
    /// which [`build`](super::ProxyRouterBuilder::build) checks.
    pub fn preload(mut self) -> Self {
        self.preload = true;
        self
    }

    /// The header value.
    fn value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }

    fn validate(&self) -> Result<()> {
        if self.preload && !self.include_subdomains {
            return Err(Error::invalid(
                "tls.hsts.preload",
                "needs includeSubDomains",
            ));
        }
        if self.preload && self.max_age < PRELOAD_MIN_AGE {
            return Err(Error::invalid(
                "tls.hsts.preload",
                format!(
                    "needs a max-age of at least one year, got {} s",
                    self.max_age.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// The crypto provider of the proxy's TLS: aws-lc-rs, with ECDHE + AEAD
/// suites only (the provider has no weaker ones, and listing them keeps
/// it so whatever it adds later).
fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    }
}

/// A certificate's expiry, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expiry {
    /// The certificate file.
    pub(crate) file: String,
    /// `notAfter`, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// The certificates in force, by name.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

/// Chooses the certificate for each handshake from the set in force,
/// which a reload swaps whole.
#[derive(Debug)]
struct Resolver {
    set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}

/// The running TLS side of a router: the acceptor, the files it reloads
/// from, and what it adds to responses.
pub(crate) struct Terminator {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
    files: Vec<CertificateFiles>,
    provider: Arc<CryptoProvider>,
    /// The `Strict-Transport-Security` header line's value.
    pub(crate) hsts: Option<Arc<[u8]>>,
    /// The expiries of the certificates in force.
    pub(crate) expiries: Arc<ArcSwap<Vec<Expiry>>>,
    /// Serialises reloads, so the set and the expiries swapped go together.
    reloading: std::sync::Mutex<()>,
}

impl Terminator {
    /// Validates `config` and loads its certificates.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no certificate, an unreadable file, a
    /// file without a certificate or key, a key that does not match its
    /// certificate, or an HSTS `preload` without its requirements.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self> {
        if let Some(hsts) = &config.hsts {
            hsts.validate()?;
        }
        if config.watch_interval.is_some_and(|i| i.is_zero()) {
            return Err(Error::invalid(
                "tls.watch_files",
                "must be greater than zero",
            ));
        }
        let provider = Arc::new(provider());
        let (set, expiries) = load(&config.certificates, &provider)?;
        let resolver = Arc::new(Resolver {
            set: ArcSwap::from_pointee(set),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::invalid("tls", format!("no usable TLS protocol version: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = if config.no_http2 {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(Terminator {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            resolver,
            files: config.certificates.clone(),
            provider,
            hsts: config.hsts.map(|h| Arc::from(h.value().into_bytes())),
            expiries: Arc::new(ArcSwap::from_pointee(expiries)),
            reloading: std::sync::Mutex::new(()),
        })
    }

    /// Reads the certificate and key files again and serves them to new
    /// handshakes; connections already open keep theirs. On an error the
    /// certificates in force stay.
    pub(crate) fn reload(&self) -> Result<()> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, expiries) = load(&self.files, &self.provider)?;
        self.resolver.set.store(Arc::new(set));
        tracing::info!(certificates = expiries.len(), "TLS certificates reloaded");
        self.expiries.store(Arc::new(expiries));
        Ok(())
    }

    /// The latest modification time of each certificate and key file.
    pub(crate) fn modified(&self) -> Vec<Option<SystemTime>> {
        self.files
            .iter()
            .flat_map(|f| [&f.cert, &f.key])
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// Loads every certificate with its key.
fn load(files: &[CertificateFiles], provider: &CryptoProvider) -> Result<(CertSet, Vec<Expiry>)> {
    let mut default = None;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut expiries = Vec::with_capacity(files.len());
    for (i, files) in files.iter().enumerate() {
        let (key, names, not_after) = load_one(i, files, provider)?;
        let key = Arc::new(key);
        for name in names {
            let name = name.to_ascii_lowercase();
            // The first certificate naming a host serves it.
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_owned()),
                None => exact.entry(name),
            }
            .or_insert_with(|| key.clone());
        }
        expiries.push(Expiry {
            file: files.cert.display().to_string(),
            not_after,
        });
        default.get_or_insert(key);
    }
    let default = default.ok_or_else(|| {
        Error::invalid(
            "tls.certificates",
            "no certificate given: add one with TlsConfig::certificate",
        )
    })?;
    Ok((
        CertSet {
            default,
            exact,
            wildcard,
        },
        expiries,
    ))
}

/// One certificate chain with its key, the DNS names it serves and its
/// `notAfter`.
fn load_one(
    i: usize,
    files: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>, i64)> {
    let cert_field = || format!("tls.certificates[{i}].cert");
    let key_field = || format!("tls.certificates[{i}].key");
    let cert_pem = read(&files.cert, cert_field)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(
                cert_field(),
                format!("{} is not valid PEM: {e}", files.cert.display()),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(Error::invalid(
            cert_field(),
            format!("{} holds no CERTIFICATE block", files.cert.display()),
        ));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
        Error::invalid(
            cert_field(),
            format!(
                "{} holds an unreadable certificate: {e}",
                files.cert.display()
            ),
        )
    })?;
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    let not_after = parsed.validity().not_after.timestamp();
    let key_pem = read(&files.key, key_field)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::invalid(
            key_field(),
            format!("{} holds no usable private key: {e}", files.key.display()),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => Error::invalid(
            key_field(),
            format!(
                "{} does not match the certificate in {}",
                files.key.display(),
                files.cert.display()
            ),
        ),
        e => Error::invalid(
            key_field(),
            format!("{} is not a usable private key: {e}", files.key.display()),
        ),
    })?;
    tracing::debug!(
        cert = %files.cert.display(),
        ?names,
        not_after,
        "TLS certificate loaded"
    );
    Ok((certified, names, not_after))
}

fn read(path: &Path, field: impl Fn() -> String) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::invalid(field(), format!("cannot read {}: {e}", path.display())))
}

/// The redirect of a plain-HTTP request to HTTPS: `Location` for the
/// request's `host` (its port dropped) and `path`, on `tls_port`.
pub(crate) fn https_location(host: &str, path: &str, tls_port: u16) -> Option<String> {
    let host = host.trim();
    // An IPv6 literal keeps its brackets; a port after them goes.
    let name = if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        &host[..end + 2]
    } else {
        host.split(':').next().unwrap_or(host)
    };
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return None;
    }
    let path = if path.starts_with('/') { path } else { "/" };
    Some(if tls_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{tls_port}{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_location_keeps_host_and_path_and_names_the_tls_port() {
        assert_eq!(
            https_location("example.com:8080", "/a?b=1", 443).as_deref(),
            Some("https://example.com/a?b=1")
        );
        assert_eq!(
            https_location("example.com", "/", 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            https_location("[::1]:80", "/x", 443).as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(https_location("", "/", 443), None);
        assert_eq!(https_location("a/b", "/", 443), None);
    }

    #[test]
    fn hsts_value_and_preload_rules() {
        let year = Duration::from_secs(31_536_000);
        assert_eq!(Hsts::new(year).value(), "max-age=31536000");
        let full = Hsts::new(year).include_subdomains().preload();
        assert_eq!(full.value(), "max-age=31536000; includeSubDomains; preload");
        assert!(full.validate().is_ok());
        assert!(Hsts::new(year).preload().validate().is_err());
        assert!(
            Hsts::new(Duration::from_secs(60))
                .include_subdomains()
                .preload()
                .validate()
                .is_err()
        );
    }
}
