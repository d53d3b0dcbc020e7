//! `atlasd`: the local runtime as a long-running service.
//!
//! One [`Daemon`] owns one [`ProxyRouter`]
//! listener for every service of the host (routed by `Host` and optional
//! path prefix), supervises every replica as a child process
//! ([`ProcessWorkloads`] in detached mode,
//! restarting crashed replicas with backoff), and persists services,
//! routes, splits, endpoints and replica records in
//! `{state_dir}/atlasd.json`. Deploy programs talk to it through the admin
//! API ([`api`]) with [`AtlasdClient`](client::AtlasdClient), or through
//! the core traits over it — [`RemoteRouter`](client::RemoteRouter),
//! [`RemoteWorkloads`](client::RemoteWorkloads),
//! [`RemoteStateStore`](client::RemoteStateStore) — so the unchanged
//! engine drives rollouts on the daemon from another process.
//!
//! ## What survives what
//!
//! | event | traffic | replicas | state |
//! |---|---|---|---|
//! | the deploy program dies (even SIGKILL) | keeps its split | keep running | its lease ends after one ttl; a rerun resumes the rollout |
//! | `atlasd --takeover` (restart, binary upgrade) | the listening socket passes to the new process: no connection refused, requests in flight finish on the old one | keep running, adopted by the new process | read by the new process after the old one wrote it last |
//! | atlasd stopped (SIGTERM) | stops accepting, drains | keep running | kept; the next start adopts the replicas |
//! | atlasd killed (SIGKILL) | refused until the next start (queued instead, under systemd socket activation) | keep running (own session, no parent-death signal) | kept; the next start adopts them |
//!
//! ## Files in the state directory
//!
//! | file | holds |
//! |---|---|
//! | `atlasd.json` | services, routes, splits, endpoints, replica records (with release environments: mode 0600), leases, steering commands, promotion history |
//! | `atlasd.sock` | the admin socket (default; mode 0600) |
//! | `handover.sock` | where a successor asks for the listening socket (mode 0600) |
//! | `rollouts/` | rollout states ([`FileStateStore`](crate::file_store::FileStateStore) layout) |
//! | `logs/` | replica logs |

pub mod api;
pub mod client;
mod core;
pub mod handover;
mod persist;
pub mod server;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atlas_core::{Error, Result};
use tokio::sync::mpsc;

use self::core::Core;
use self::handover::{HELLO, READY, read_line, receive_listener, send_listener, write_line};
use self::persist::StateFile;
use self::server::{AdminConfig, AdminServer};
use crate::process::{ProcessWorkloads, RestartPolicy};
use crate::proxy::{ProxyRouter, TlsConfig};

/// How to run a daemon.
#[derive(Debug)]
pub struct DaemonConfig {
    /// Where the state, sockets and replica logs live (created 0700).
    pub state_dir: PathBuf,
    /// The proxy's address, unless `listener` or a predecessor provides
    /// the socket.
    pub listen: SocketAddr,
    /// An already bound listener (systemd socket activation).
    pub listener: Option<TcpListener>,
    /// The admin API.
    pub admin: AdminConfig,
    /// How long endpoints and replicas drain.
    pub grace_period: Duration,
    /// What happens to replicas that exit on their own.
    pub restart: RestartPolicy,
    /// The proxy's data-path threads (0: the caller's runtime).
    pub worker_threads: usize,
    /// How often replicas are probed for readiness and checked for exits.
    pub poll_interval: Duration,
    /// Take the listening socket and the replicas over from the daemon
    /// running on the same state directory, which then drains and exits.
    pub takeover: bool,
    /// Terminate TLS on the proxy listener (certificates chosen by SNI,
    /// reloaded from their files, HTTP/2 by ALPN), or plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl DaemonConfig {
    /// Defaults: proxy on 127.0.0.1:8080, admin socket
    /// `{state_dir}/atlasd.sock` (0600), 30 s grace period, restarts with
    /// backoff, two data-path threads, replicas polled every 200 ms.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        DaemonConfig {
            admin: AdminConfig::unix(state_dir.join("atlasd.sock")),
            state_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listener: None,
            grace_period: Duration::from_secs(30),
            restart: RestartPolicy::on_failure(),
            worker_threads: 2,
            poll_interval: Duration::from_millis(200),
            takeover: false,
            tls: None,
        }
    }
}

/// How a [`Daemon::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Stopped by the caller's signal: drained, replicas left running.
    Stopped,
    /// A successor took the socket and the replicas over.
    HandedOver,
}

/// A running daemon.
pub struct Daemon {
    core: Arc<Core>,
    admin: Option<AdminServer>,
    admin_config: AdminConfig,
    listener: TcpListener,
    handover_path: PathBuf,
    handovers: mpsc::Receiver<StdUnixStream>,
    handover_task: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    supervisor: Supervisor,
}

/// How the daemon's supervisor is built (again, after a failed hand-over).
#[derive(Debug, Clone)]
struct Supervisor {
    log_dir: PathBuf,
    grace_period: Duration,
    poll_interval: Duration,
    restart: RestartPolicy,
}

impl Supervisor {
    fn build(&self) -> Result<ProcessWorkloads> {
        ProcessWorkloads::builder()
            .log_dir(&self.log_dir)
            .grace_period(self.grace_period)
            .poll_interval(self.poll_interval)
            .detached(true)
            .restart(self.restart)
            .build()
    }
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("proxy", &self.core.router.local_addr())
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

fn io_err(what: String, e: std::io::Error) -> Error {
    Error::Backend {
        backend: "atlasd".into(),
        message: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
}

impl Daemon {
    /// Starts the daemon: loads the state, adopts (or restarts) the
    /// replicas it recorded, restores routes, splits and endpoints, binds
    /// the proxy (or takes its socket from a predecessor or systemd), then
    /// opens the admin API.
    #[tracing::instrument(name = "atlasd_start", skip_all, fields(state_dir = %config.state_dir.display()))]
    pub async fn start(mut config: DaemonConfig) -> Result<Daemon> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| io_err(format!("cannot create {}", config.state_dir.display()), e))?;
        let handover_path = config.state_dir.join("handover.sock");
        if !config.takeover
            && tokio::net::UnixStream::connect(&config.admin.socket)
                .await
                .is_ok()
        {
            return Err(Error::Conflict {
                what: format!(
                    "another atlasd answers on {}; stop it, or start this one with --takeover",
                    config.admin.socket.display()
                ),
            });
        }
        let mut predecessor = None;
        let listener = if config.takeover {
            let (stream, listener) = take_over(&handover_path).await?;
            predecessor = Some(stream);
            listener
        } else if let Some(listener) = config.listener.take() {
            listener
        } else {
            bind_proxy(config.listen)?
        };
        let state = StateFile::new(&config.state_dir).load()?;
        let supervisor = Supervisor {
            log_dir: config.state_dir.join("logs"),
            grace_period: config.grace_period,
            poll_interval: config.poll_interval,
            restart: config.restart,
        };
        let workloads = supervisor.build()?;
        let report = workloads.adopt(state.replicas.clone()).await?;
        tracing::info!(
            adopted = report.adopted.len(),
            restarted = report.restarted.len(),
            moved = report.moved.len(),
            failed = report.failed.len(),
            "replicas taken over"
        );
        for (replica, reason) in &report.failed {
            tracing::error!(replica = %replica, reason = %reason, "replica could not be adopted or restarted");
        }
        let proxy_listener = listener
            .try_clone()
            .map_err(|e| io_err("cannot duplicate the proxy socket".into(), e))?;
        let mut builder = ProxyRouter::shared_builder();
        if let Some(tls) = config.tls.take() {
            builder = builder.tls(tls);
        }
        let router = builder
            .listener(proxy_listener)
            .grace_period(config.grace_period)
            .worker_threads(config.worker_threads)
            .start_paused(true)
            .build()
            .await?;
        let core = Arc::new(Core::new(router, workloads, &config.state_dir, state)?);
        core.restore_routes().await?;
        // Only a router that knows every route takes connections (during a
        // hand-over the predecessor goes on accepting until then).
        core.router.start_accepting();
        core.persist().await?;
        let watcher = core.watch_replicas();
        let admin = AdminServer::start(config.admin.clone(), core.clone()).await?;
        let (handover_tx, handovers) = mpsc::channel(1);
        let handover_task = listen_for_successors(&handover_path, handover_tx)?;
        if let Some(stream) = predecessor {
            // The predecessor drains and exits once told.
            let _ = tokio::task::spawn_blocking(move || write_line(&stream, READY)).await;
        }
        tracing::info!(
            proxy = %core.router.local_addr(),
            admin = %config.admin.socket.display(),
            state = %core.state_path().display(),
            "atlasd ready"
        );
        handover::notify_systemd(&format!("READY=1\nMAINPID={}", std::process::id()));
        Ok(Daemon {
            core,
            admin: Some(admin),
            admin_config: config.admin,
            listener,
            handover_path,
            handovers,
            handover_task,
            watcher,
            supervisor,
        })
    }

    /// The proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.core.router.local_addr()
    }

    /// The admin socket's path.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_config.socket
    }

    /// The admin TCP listener's address, if one.
    pub fn admin_tcp_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(AdminServer::tcp_addr)
    }

    /// The proxy router.
    pub fn router(&self) -> &ProxyRouter {
        &self.core.router
    }

    /// Serves until `stop` resolves (then drains and leaves the replicas
    /// running) or a successor takes over.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> Result<Ending> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => {
                    self.shutdown().await;
                    return Ok(Ending::Stopped);
                }
                Some(stream) = self.handovers.recv() => {
                    match self.hand_over(stream).await {
                        Ok(()) => return Ok(Ending::HandedOver),
                        Err(e) => tracing::error!(error = %e, "hand-over failed; this atlasd goes on serving"),
                    }
                }
            }
        }
    }

    /// Stops accepting, drains requests in flight, closes the admin API
    /// and leaves the replicas running for the next start to adopt.
    pub async fn shutdown(mut self) {
        tracing::info!("atlasd stopping; replicas keep running");
        handover::notify_systemd("STOPPING=1");
        self.handover_task.abort();
        let _ = fs::remove_file(&self.handover_path);
        if let Some(admin) = self.admin.take() {
            admin.shutdown(false).await;
        }
        self.core.router.shutdown().await;
        self.watcher.abort();
        let records = match self.core.workloads().release_all().await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot release the replicas");
                self.core.workloads().records().await
            }
        };
        tracing::info!(replicas = records.len(), "replicas left running");
        if let Err(e) = self.core.persist_released(records).await {
            tracing::error!(error = %e, "cannot persist the daemon state at shutdown");
        }
    }

    /// Stops everything, replicas included (for tests and `atlasd
    /// --stop-replicas`).
    pub async fn shutdown_all(self) {
        let stopped = self.core.workloads().shutdown().await;
        tracing::info!(stopped, "replicas stopped");
        self.shutdown().await;
    }

    /// Hands the socket and the replicas to the successor on `stream`:
    /// closes the admin API, writes the state, stops supervising, passes
    /// the socket; once the successor serves, drains and returns. If the
    /// successor fails first, takes everything back.
    async fn hand_over(&mut self, stream: StdUnixStream) -> Result<()> {
        tracing::info!("successor asked for a hand-over");
        if let Some(admin) = self.admin.take() {
            admin.shutdown(true).await;
        }
        self.watcher.abort();
        // Released first, so no restart slips in after the records are
        // written; the successor reads them.
        let records = self.core.workloads().release_all().await?;
        self.core.persist_released(records.clone()).await?;
        let listener = self
            .listener
            .try_clone()
            .map_err(|e| io_err("cannot duplicate the proxy socket".into(), e))?;
        let ready = tokio::task::spawn_blocking(move || -> Result<bool> {
            send_listener(&stream, &listener, "proxy")?;
            stream
                .set_read_timeout(Some(Duration::from_secs(120)))
                .map_err(|e| io_err("hand-over socket".into(), e))?;
            Ok(read_line(&stream).map(|l| l == READY).unwrap_or(false))
        })
        .await
        .map_err(|e| Error::Backend {
            backend: "atlasd".into(),
            message: format!("hand-over task failed: {e}"),
            source: None,
        })??;
        if ready {
            tracing::info!("successor serves; draining and exiting");
            self.handover_task.abort();
            self.core.router.shutdown().await;
            return Ok(());
        }
        tracing::error!("successor failed before serving; taking the replicas back");
        let workloads = self.supervisor.build()?;
        let report = workloads.adopt(records).await?;
        tracing::info!(
            adopted = report.adopted.len(),
            restarted = report.restarted.len(),
            "replicas taken back"
        );
        self.core.resume_supervising(workloads);
        self.watcher = self.core.watch_replicas();
        self.admin = Some(AdminServer::start(self.admin_config.clone(), self.core.clone()).await?);
        Err(Error::Backend {
            backend: "atlasd".into(),
            message: "the successor did not start".into(),
            source: None,
        })
    }
}

/// Binds the proxy socket with `SO_REUSEADDR` and `SO_REUSEPORT`, so a
/// successor can also bind beside this process when no hand-over is
/// possible.
fn bind_proxy(addr: SocketAddr) -> Result<TcpListener> {
    let fail = |what: &str, e: std::io::Error| {
        io_err(format!("cannot {what} the proxy socket on {addr}"), e)
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| fail("create", e))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| fail("configure", e))?;
    socket
        .set_reuseport(true)
        .map_err(|e| fail("configure", e))?;
    socket.bind(addr).map_err(|e| fail("bind", e))?;
    let listener = socket.listen(1024).map_err(|e| fail("listen on", e))?;
    listener.into_std().map_err(|e| fail("hand over", e))
}

/// Asks the daemon on `path` for its listening socket.
async fn take_over(path: &Path) -> Result<(StdUnixStream, TcpListener)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let stream = StdUnixStream::connect(&path).map_err(|e| {
            io_err(format!("no running atlasd to take over from at {}", path.display()), e)
        })?;
        write_line(&stream, HELLO).map_err(|e| io_err("hand-over".into(), e))?;
        let (listener, note) = receive_listener(&stream)?;
        tracing::info!(note = %note, addr = ?listener.local_addr().ok(), "took the proxy socket over");
        Ok((stream, listener))
    })
    .await
    .map_err(|e| Error::Backend {
        backend: "atlasd".into(),
        message: format!("take-over task failed: {e}"),
        source: None,
    })?
}

/// Listens on `path` (mode 0600) for a successor's hand-over request.
fn listen_for_successors(
    path: &Path,
    tx: mpsc::Sender<StdUnixStream>,
) -> Result<tokio::task::JoinHandle<()>> {
    let _ = fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| io_err(format!("cannot bind {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err(format!("cannot chmod {}", path.display()), e))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(stream);
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) || line.trim_end() != HELLO {
                tracing::warn!("a connection to the hand-over socket did not ask for a hand-over");
                continue;
            }
            let Ok(stream) = reader.into_inner().into_std() else {
                continue;
            };
            if stream.set_nonblocking(false).is_err() {
                continue;
            }
            if tx.send(stream).await.is_err() {
                return;
            }
        }
    }))
}
