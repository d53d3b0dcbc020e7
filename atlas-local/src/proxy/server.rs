//! The listening side: the accept loop and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Accepts connections on `listener` and runs `handle` for each in its own
/// task until `stop` turns true; then stops accepting, lets the handlers
/// (which watch `stop` too) close idle connections and finish the exchange
/// in progress within `grace`, and aborts what is left.
pub(crate) async fn serve<H, F>(
    what: &'static str,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let conn_stop = stop.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(handle(stream, peer, conn_stop.clone()));
                }
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // accept: back off briefly rather than spin.
                    tracing::debug!(server = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(listener);
    let open = conns.len();
    tracing::debug!(
        server = what,
        open,
        "stopped accepting; closing connections"
    );
    let finished =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            server = what,
            left = conns.len(),
            ?grace,
            "connections still busy after the grace period; aborting them"
        );
        conns.shutdown().await;
    }
    tracing::debug!(server = what, "stopped");
}

/// Resolves once `stop` turns true (or its sender is gone). Returns
/// nothing, so no watch guard is held across an await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
