//! When a replica counts as ready for traffic.

use std::net::SocketAddr;
use std::time::Duration;

use atlas_core::{Error, Result};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How [`ProcessWorkloads`](super::ProcessWorkloads) decides that a started
/// replica is ready for traffic. Probing starts when the process starts,
/// repeats every poll interval, and stops once the replica is ready:
/// readiness here is a start-up gate; ongoing health is the job of the
/// rollout's [`HealthProbe`](atlas_core::HealthProbe).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Readiness {
    /// Ready once its port accepts a TCP connection (the default).
    #[default]
    TcpConnect,
    /// Ready once an HTTP/1.1 `GET` of `path` on its port answers 2xx.
    HttpGet {
        /// Path and optional query, starting with `/`, e.g. `/ready`.
        path: String,
    },
}

impl Readiness {
    /// Ready once `GET path` answers 2xx.
    pub fn http_get(path: impl Into<String>) -> Self {
        Readiness::HttpGet { path: path.into() }
    }

    pub(super) fn validate(&self) -> Result<()> {
        if let Readiness::HttpGet { path } = self {
            if !path.starts_with('/') {
                return Err(Error::invalid(
                    "readiness.path",
                    format!("must start with '/', got {path:?}"),
                ));
            }
            if path.parse::<PathAndQuery>().is_err() {
                return Err(Error::invalid(
                    "readiness.path",
                    format!("must be a valid URL path and query, got {path:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// One readiness check of the replica at `addr`, bounded by `timeout`.
pub(super) async fn probe(readiness: &Readiness, addr: SocketAddr, timeout: Duration) -> bool {
    let check = async {
        match readiness {
            Readiness::TcpConnect => TcpStream::connect(addr).await.is_ok(),
            Readiness::HttpGet { path } => http_get_ok(addr, path).await,
        }
    };
    tokio::time::timeout(timeout, check).await.unwrap_or(false)
}

async fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    let Ok(request) = http::Request::get(path)
        .header(HOST, addr.to_string())
        .header(USER_AGENT, "atlas-process-readiness")
        .header(CONNECTION, "close")
        .body(Empty::new())
    else {
        return false;
    };
    let response = sender.send_request(request);
    tokio::pin!(response);
    let response = tokio::select! {
        response = &mut response => response,
        // With `Connection: close` the connection can finish in the same
        // poll that delivers the answer; the answer is then waiting (or the
        // request failed), so look at it rather than give up.
        _ = connection => response.await,
    };
    matches!(response, Ok(r) if r.status().is_success())
}
