//! TLS client settings shared by the probes, the Prometheus provider and the
//! Alertmanager notifier.
//!
//! Every TLS connection this crate makes uses a [`rustls::ClientConfig`]
//! built here with the **aws-lc-rs** crypto provider named explicitly, so no
//! code path depends on a process-level default provider (see the crate
//! docs: a binary that links both `ring` and `aws-lc-rs` panics when a
//! library asks rustls to pick one).

use std::fmt;
use std::sync::Arc;

use atlas_core::{Error, Result};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Which certificate authorities a TLS client trusts.
///
/// Default: the operating system's trust store (read with
/// `rustls-native-certs`, e.g. `/etc/ssl/certs` on Debian). Add a private CA
/// with [`TlsOptions::with_ca_pem`], or trust only given CAs with
/// [`TlsOptions::only_ca_pem`].
#[derive(Clone, Default)]
pub struct TlsOptions {
    system_roots: SystemRoots,
    extra: Vec<CertificateDer<'static>>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum SystemRoots {
    #[default]
    Include,
    Exclude,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("system_roots", &(self.system_roots == SystemRoots::Include))
            .field("extra_cas", &self.extra.len())
            .finish()
    }
}

impl TlsOptions {
    /// Trust the operating system's CAs (the default).
    pub fn system() -> Self {
        TlsOptions::default()
    }

    /// Trust only the CA certificates in `pem` (one or more `CERTIFICATE`
    /// blocks), not the system store.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `tls.ca_pem` when the text holds no
    /// certificate or a malformed one.
    pub fn only_ca_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        TlsOptions {
            system_roots: SystemRoots::Exclude,
            extra: Vec::new(),
        }
        .with_ca_pem(pem)
    }

    /// Also trust the CA certificates in `pem`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `tls.ca_pem` when the text holds no
    /// certificate or a malformed one.
    pub fn with_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Result<Self> {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_ref()) {
            let cert =
                cert.map_err(|e| Error::invalid("tls.ca_pem", format!("is not valid PEM: {e}")))?;
            self.extra.push(cert);
            found += 1;
        }
        if found == 0 {
            return Err(Error::invalid("tls.ca_pem", "holds no CERTIFICATE block"));
        }
        Ok(self)
    }

    /// Also trust a CA given as DER bytes.
    pub fn with_ca_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra.push(CertificateDer::from(der.into()));
        self
    }

    /// The rustls client configuration: aws-lc-rs provider, TLS 1.2 and 1.3,
    /// the chosen roots, no client certificate.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `tls.ca_pem` when a given CA certificate is
    /// not a usable trust anchor, and when no root at all is trusted.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = RootCertStore::empty();
        if self.system_roots == SystemRoots::Include {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!(error = %e, "skipping unreadable system CA");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "loaded system CAs");
        }
        for (i, cert) in self.extra.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                Error::invalid(
                    format!("tls.ca_pem[{i}]"),
                    format!("is not a usable CA certificate: {e}"),
                )
            })?;
        }
        if roots.is_empty() {
            return Err(Error::invalid(
                "tls.roots",
                "no trusted CA: the system store is empty or excluded and no CA was given",
            ));
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::backend_with("rustls", "no usable TLS protocol version", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The crypto provider every TLS connection of this crate uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide rustls provider, once; later calls
/// (and a provider installed by someone else first) are fine.
///
/// This crate never needs it, but a binary that also links kube or the cloud
/// SDKs must do it at the start of `main`: with those in one build, rustls
/// has both the `ring` and `aws-lc-rs` providers compiled in, cannot pick
/// one, and panics at the first TLS connection ("Could not automatically
/// determine the process-level CryptoProvider"). Examples and tests call
/// this.
pub fn install_default_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
