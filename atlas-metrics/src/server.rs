//! The small HTTP/1.1 server under [`Endpoints::serve`](crate::Endpoints::serve)
//! and the Alertmanager webhook receiver: accept on one address, answer
//! every request with a handler, and on shutdown stop accepting and let
//! requests in flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use atlas_core::{Error, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running server: its address and the means to stop it.
#[derive(Debug)]
pub(crate) struct HttpServer {
    pub(crate) local: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks one) and answers each request with
    /// `handler`. `backend` names the server in errors and logs.
    pub(crate) async fn bind<F, Fut>(backend: &str, addr: SocketAddr, handler: F) -> Result<Self>
    where
        F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::backend_with(backend, format!("cannot bind {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::backend_with(backend, "no local address", e))?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let stream = match accepted {
                            Ok((s, _)) => s,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                continue;
                            }
                        };
                        let handler = handler.clone();
                        let mut stop = stopped.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                                let handler = handler.clone();
                                async move { Ok::<_, Infallible>(handler(req).await) }
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::pin!(conn);
                            tokio::select! {
                                r = conn.as_mut() => {
                                    if let Err(e) = r {
                                        tracing::debug!(error = %e, "connection ended");
                                    }
                                }
                                _ = stop.changed() => {
                                    conn.as_mut().graceful_shutdown();
                                    let _ = conn.await;
                                }
                            }
                        });
                    }
                }
            }
            while connections.join_next().await.is_some() {}
        });
        Ok(HttpServer { local, stop, task })
    }

    /// Stops accepting, lets requests in flight finish, and waits for that.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
