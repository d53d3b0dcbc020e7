//! The listening side: the accept loop, the hand-off of connections to
//! data-path worker threads, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Accepts connections on `listener` and runs `handle` for each in its own
/// task until `stop` turns true; then stops accepting, lets the handlers
/// (which watch `stop` too) close idle connections and finish the exchange
/// in progress within `grace`, and aborts what is left.
pub(crate) async fn serve<H, F>(
    what: &'static str,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    grace: Duration,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let conns = run(Source::Listener(what, &listener), stop, &handle).await;
    drop(listener);
    finish(what, conns, grace).await;
}

/// Where a server's connections come from.
enum Source<'a> {
    /// Its own listener.
    Listener(&'static str, &'a TcpListener),
    /// The acceptor, which hands them over.
    Handed(&'a mut mpsc::UnboundedReceiver<Accepted>),
}

impl Source<'_> {
    /// The next connection: `Some(None)` when there is none this time
    /// (a failed accept), `None` when no more will come.
    async fn next(&mut self) -> Option<Option<(TcpStream, SocketAddr)>> {
        match self {
            Source::Listener(what, listener) => Some(accept(what, listener).await),
            Source::Handed(incoming) => {
                let (stream, peer) = incoming.recv().await?;
                match TcpStream::from_std(stream) {
                    Ok(stream) => Some(Some((stream, peer))),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot take over a connection");
                        Some(None)
                    }
                }
            }
        }
    }
}

/// Runs `handle` for each connection from `source` until it ends or
/// `stop` turns true; returns the connections still open.
async fn run<H, F>(
    mut source: Source<'_>,
    mut stop: watch::Receiver<bool>,
    handle: &H,
) -> JoinSet<()>
where
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
            conn = source.next() => match conn {
                Some(Some((stream, peer))) => {
                    conns.spawn(handle(stream, peer, conn_stop.clone()));
                }
                Some(None) => {}
                None => break,
            }
        }
    }
    conns
}

/// Waits until `accepting` turns true (true at once for a router not
/// built paused); false when the router stopped first.
pub(crate) async fn accepting(
    accepting: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        biased;
        _ = stopped(stop) => false,
        started = accepting.wait_for(|on| *on) => started.is_ok(),
    }
}

/// A connection accepted by the acceptor, for a worker to serve.
pub(crate) type Accepted = (std::net::TcpStream, SocketAddr);

/// Accepts connections on `listener` until `stop` turns true and hands
/// them to `workers` in turn, so that each worker thread serves an equal
/// share of the connections (the kernel would wake every worker for each
/// connection on a shared listener, and one would take most).
pub(crate) async fn dispatch(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
) {
    let mut next = 0;
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = accept("proxy", &listener) => if let Some((stream, peer)) = accepted {
                // The worker's runtime registers it anew.
                match stream.into_std() {
                    Ok(stream) => {
                        let _ = workers[next].send((stream, peer));
                        next = (next + 1) % workers.len();
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot hand over a connection"),
                }
            }
        }
    }
}

/// Serves the connections the acceptor hands to this worker, as
/// [`serve`] does with its own listener.
pub(crate) async fn serve_handed<H, F>(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut conns = run(Source::Handed(&mut incoming), stop.clone(), &handle).await;
    // Connections the acceptor handed over before it stopped are served
    // too: on a listener handed to another router, dropping them would
    // lose connections the kernel had already completed.
    // The acceptor stops on the same signal and then drops its senders,
    // which ends this.
    let _ = tokio::time::timeout(grace, async {
        while let Some((stream, peer)) = incoming.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    conns.spawn(handle(stream, peer, stop.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "cannot take over a connection"),
            }
        }
    })
    .await;
    finish("proxy", conns, grace).await;
}

/// One accepted connection, or `None` after a failed accept.
async fn accept(what: &'static str, listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            // Out of file descriptors or a connection reset before accept:
            // back off briefly rather than spin.
            tracing::debug!(server = what, error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    }
}

/// Lets the open connections finish within `grace`, then aborts the rest.
async fn finish(what: &'static str, mut conns: JoinSet<()>, grace: Duration) {
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
