//! Health probes: [`HttpProbe`], [`TcpProbe`], [`TlsCertProbe`], and the
//! [`ConnectionLimiter`] that caps how many sockets probes hold open at once.
//!
//! Each probe opens its own connection per attempt, without a pool, and
//! closes it before the attempt returns: a probe checks that a *new* client
//! can reach the replica, and a pool would keep sockets open beyond the
//! limiter's count.
//!
//! Every attempt, including the wait for a connection slot, finishes within
//! the `timeout` it is given; time spent waiting for a slot counts, because
//! [`ProbePolicy::run`](atlas_core::ProbePolicy::run) cuts an attempt off at
//! the same timeout anyway.

mod http;
mod limit;
mod tcp;
mod tls_cert;

pub use http::{DEFAULT_HEALTHY_STATUSES, DEFAULT_MAX_BODY_BYTES, HttpProbe, HttpProbeBuilder};
pub use limit::{ConnectionLimiter, DEFAULT_MAX_CONNECTIONS};
pub use tcp::TcpProbe;
pub use tls_cert::{CertificateInfo, DEFAULT_MIN_REMAINING, TlsCertProbe, TlsCertProbeBuilder};
