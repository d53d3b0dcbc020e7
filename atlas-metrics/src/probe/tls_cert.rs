//! [`TlsCertProbe`]: healthy while the served certificate has enough time left.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use atlas_core::{Endpoint, Error, HealthProbe, ProbeOutcome, Result};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::limit::{ConnectionLimiter, timed_out};
use crate::tls::{TlsOptions, provider};

/// The default minimum time a certificate must have left: 30 days, the
/// seed's alert threshold.
pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(30 * 86_400);

const SECONDS_PER_DAY: f64 = 86_400.0;

/// What [`TlsCertProbe::inspect`] read from the leaf certificate an endpoint
/// served.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateInfo {
    /// The certificate's subject, e.g. `CN=checkout.internal`.
    pub subject: String,
    /// The end of its validity (`notAfter`).
    pub not_after: SystemTime,
    /// Days from now to `not_after`, fractional; negative once expired.
    pub days_remaining: f64,
}

/// Connects with TLS (rustls), reads the leaf certificate's `notAfter` and
/// reports how many days it has left; unhealthy when fewer than the
/// threshold (default 30 days) remain, or when the handshake fails.
///
/// By default the chain is verified against the system CAs and the server
/// name is the endpoint's IP address. [`TlsCertProbeBuilder::skip_chain_verification`]
/// reads the expiry of any certificate (self-signed, already expired,
/// wrong name) while still checking the handshake signatures, as an expiry
/// monitor often must.
///
/// ```no_run
/// use atlas_metrics::probe::TlsCertProbe;
/// # fn demo() -> atlas_core::Result<()> {
/// let probe = TlsCertProbe::builder()
///     .server_name("checkout.internal")
///     .min_remaining_days(14)
///     .build()?;
/// # Ok(()) }
/// ```
pub struct TlsCertProbe {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    min_remaining: Duration,
    limiter: ConnectionLimiter,
}

impl fmt::Debug for TlsCertProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertProbe")
            .field("server_name", &self.server_name)
            .field("min_remaining", &self.min_remaining)
            .field("max_connections", &self.limiter.max())
            .finish()
    }
}

impl TlsCertProbe {
    /// A builder with the defaults above.
    pub fn builder() -> TlsCertProbeBuilder {
        TlsCertProbeBuilder::default()
    }

    /// The threshold under which the probe reports unhealthy.
    pub fn min_remaining(&self) -> Duration {
        self.min_remaining
    }

    /// The limiter this probe takes connection slots from.
    pub fn limiter(&self) -> &ConnectionLimiter {
        &self.limiter
    }

    /// Connects to `endpoint` and reads its leaf certificate, within `timeout`.
    ///
    /// # Errors
    /// [`Error::Deadline`] when `timeout` passes; [`Error::Transient`] when
    /// the connection fails; [`Error::Backend`] when the handshake fails
    /// (an untrusted or expired certificate under chain verification) or
    /// the certificate cannot be parsed.
    pub async fn inspect(&self, endpoint: &Endpoint, timeout: Duration) -> Result<CertificateInfo> {
        match tokio::time::timeout(timeout, self.read_leaf(endpoint)).await {
            Ok(r) => r,
            Err(_) => Err(Error::deadline(
                format!("TLS certificate check of {endpoint}"),
                timeout,
            )),
        }
    }

    async fn read_leaf(&self, endpoint: &Endpoint) -> Result<CertificateInfo> {
        let backend = "tls-cert-probe";
        let _slot = self
            .limiter
            .acquire()
            .await
            .map_err(|e| Error::backend(backend, e))?;
        let addr = endpoint.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::transient_with(backend, format!("connect to {addr}"), e))?;
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream =
            self.connector.connect(name, tcp).await.map_err(|e| {
                Error::backend_with(backend, format!("TLS handshake with {addr}"), e)
            })?;
        let (_, session) = stream.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| Error::backend(backend, format!("{addr} sent no certificate")))?;
        certificate_info(leaf, SystemTime::now())
    }
}

/// Reads subject and `notAfter` from a DER certificate; `now` fixes
/// `days_remaining`.
fn certificate_info(der: &CertificateDer<'_>, now: SystemTime) -> Result<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        Error::backend_with("tls-cert-probe", "the certificate is not valid X.509", e)
    })?;
    let not_after_unix = cert.validity().not_after.timestamp();
    let not_after = if not_after_unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(not_after_unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(not_after_unix.unsigned_abs())
    };
    let remaining_secs = match not_after.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        not_after,
        days_remaining: remaining_secs / SECONDS_PER_DAY,
    })
}

#[async_trait]
impl HealthProbe for TlsCertProbe {
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
        let min_days = self.min_remaining.as_secs_f64() / SECONDS_PER_DAY;
        match self.inspect(endpoint, timeout).await {
            Ok(info) if info.days_remaining < min_days => {
                let reason = if info.days_remaining < 0.0 {
                    format!(
                        "certificate {} expired {:.1} days ago",
                        info.subject, -info.days_remaining
                    )
                } else {
                    format!(
                        "certificate {} expires in {:.1} days, under the {min_days:.1}-day threshold",
                        info.subject, info.days_remaining
                    )
                };
                tracing::info!(%endpoint, days_remaining = info.days_remaining, "tls certificate expiring");
                ProbeOutcome::unhealthy(reason)
            }
            Ok(info) => {
                tracing::debug!(%endpoint, days_remaining = info.days_remaining, "tls certificate valid");
                ProbeOutcome::Healthy
            }
            Err(Error::Deadline { .. }) => ProbeOutcome::unhealthy(timed_out(timeout)),
            Err(e) => {
                let reason = error_chain(&e);
                tracing::debug!(%endpoint, %reason, "tls certificate probe failed");
                ProbeOutcome::unhealthy(reason)
            }
        }
    }
}

/// `e` and its sources, so a reason says *why* a handshake failed.
fn error_chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Builds a [`TlsCertProbe`].
#[derive(Debug, Default)]
pub struct TlsCertProbeBuilder {
    tls: Option<TlsOptions>,
    server_name: Option<String>,
    min_remaining: Option<Duration>,
    skip_chain_verification: bool,
    limiter: Option<ConnectionLimiter>,
}

impl TlsCertProbeBuilder {
    /// Trust the CAs of `tls`. Default: the system store.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The server name sent (SNI) and checked. Default: the endpoint's IP.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Unhealthy when less than `remaining` is left. Default 30 days.
    pub fn min_remaining(mut self, remaining: Duration) -> Self {
        self.min_remaining = Some(remaining);
        self
    }

    /// Unhealthy when fewer than `days` days are left. Default 30.
    pub fn min_remaining_days(self, days: u32) -> Self {
        self.min_remaining(Duration::from_secs(u64::from(days) * 86_400))
    }

    /// Read the certificate without checking its chain, name or validity
    /// period; handshake signatures are still verified.
    pub fn skip_chain_verification(mut self) -> Self {
        self.skip_chain_verification = true;
        self
    }

    /// Takes connection slots from `limiter`, shared with other probes.
    pub fn limiter(mut self, limiter: ConnectionLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Builds the probe.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `tls_cert_probe.server_name` when it is
    /// neither a DNS name nor an IP address, on
    /// `tls_cert_probe.skip_chain_verification` when combined with
    /// [`tls`](Self::tls), and the errors of [`TlsOptions::client_config`].
    pub fn build(self) -> Result<TlsCertProbe> {
        let server_name = self
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_string()).map_err(|_| {
                    Error::invalid(
                        "tls_cert_probe.server_name",
                        format!("{n:?} is not a DNS name or IP address"),
                    )
                })
            })
            .transpose()?;
        let config = if self.skip_chain_verification {
            if self.tls.is_some() {
                return Err(Error::invalid(
                    "tls_cert_probe.skip_chain_verification",
                    "cannot be combined with trusted CAs (tls)",
                ));
            }
            let provider = provider();
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::backend_with("rustls", "no usable TLS protocol version", e))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ExpiryOnly { provider }))
                .with_no_client_auth();
            Arc::new(config)
        } else {
            self.tls.unwrap_or_default().client_config()?
        };
        Ok(TlsCertProbe {
            connector: TlsConnector::from(config),
            server_name,
            min_remaining: self.min_remaining.unwrap_or(DEFAULT_MIN_REMAINING),
            limiter: self.limiter.unwrap_or_default(),
        })
    }
}

/// Accepts any certificate chain but still checks that the server holds the
/// key of the certificate it presented.
#[derive(Debug)]
struct ExpiryOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpiryOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
