//! [`TcpProbe`]: healthy when a TCP connection opens.

use std::time::Duration;

use async_trait::async_trait;
use atlas_core::{Endpoint, HealthProbe, ProbeOutcome};
use tokio::net::TcpStream;

use super::limit::{ConnectionLimiter, timed_out};

/// Probes an endpoint by opening a TCP connection and closing it at once,
/// as Kubernetes' `tcpSocket` probe does.
///
/// ```
/// use atlas_metrics::probe::{ConnectionLimiter, TcpProbe};
/// let shared = ConnectionLimiter::new(100)?;
/// let probe = TcpProbe::new().with_limiter(shared);
/// assert_eq!(probe.limiter().max(), 100);
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct TcpProbe {
    limiter: ConnectionLimiter,
}

impl TcpProbe {
    /// A TCP probe with a [`ConnectionLimiter`] of its own.
    pub fn new() -> Self {
        TcpProbe::default()
    }

    /// Takes connection slots from `limiter`, shared with other probes.
    pub fn with_limiter(mut self, limiter: ConnectionLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// The limiter this probe takes connection slots from.
    pub fn limiter(&self) -> &ConnectionLimiter {
        &self.limiter
    }

    async fn attempt(&self, endpoint: &Endpoint) -> std::result::Result<(), String> {
        let _slot = self.limiter.acquire().await?;
        let stream = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| format!("connect to {}: {e}", endpoint.addr))?;
        drop(stream);
        Ok(())
    }
}

#[async_trait]
impl HealthProbe for TcpProbe {
    async fn check(&self, endpoint: &Endpoint, timeout: Duration) -> ProbeOutcome {
        match tokio::time::timeout(timeout, self.attempt(endpoint)).await {
            Ok(Ok(())) => {
                tracing::debug!(%endpoint, "tcp probe healthy");
                ProbeOutcome::Healthy
            }
            Ok(Err(reason)) => {
                tracing::debug!(%endpoint, %reason, "tcp probe unhealthy");
                ProbeOutcome::unhealthy(reason)
            }
            Err(_) => {
                tracing::debug!(%endpoint, "tcp probe timed out");
                ProbeOutcome::unhealthy(timed_out(timeout))
            }
        }
    }
}
