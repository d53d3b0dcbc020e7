//! The admin listeners: a Unix socket (mode 0600 by default, callers
//! identified by their peer credentials) and an optional TCP listener that
//! requires a bearer token.

use std::convert::Infallible;
use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use atlas_core::{Error, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::api::{
    ApiError, ApiErrorKind, ApiRequest, ApiResponse, CALL_PATH, MAX_REQUEST_BYTES, METRICS_PATH,
};

/// Who made an admin call, as the daemon logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process on this host, over the Unix socket.
    Local {
        /// Its user id.
        uid: u32,
        /// Its group id.
        gid: u32,
        /// Its process id, when the kernel reports one.
        pid: Option<i32>,
    },
    /// A client over TCP that presented the token.
    Remote {
        /// Its address.
        addr: SocketAddr,
    },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local {
                uid,
                pid: Some(pid),
                ..
            } => write!(f, "uid {uid} pid {pid}"),
            Caller::Local { uid, pid: None, .. } => write!(f, "uid {uid}"),
            Caller::Remote { addr } => write!(f, "tcp {addr}"),
        }
    }
}

/// What answers the calls: the daemon.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one call from `caller`.
    async fn handle(&self, caller: &Caller, request: ApiRequest) -> Result<ApiResponse, ApiError>;

    /// The Prometheus text for `GET /metrics`.
    fn metrics_text(&self) -> String;
}

/// Where the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The Unix socket's path.
    pub socket: PathBuf,
    /// The socket file's permission bits (default 0600: only the daemon's
    /// user; 0660 lets the socket's group in too).
    pub socket_mode: u32,
    /// An optional TCP listener and the file holding its bearer token.
    pub tcp: Option<(SocketAddr, PathBuf)>,
}

impl AdminConfig {
    /// The Unix socket at `socket`, mode 0600, no TCP.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        AdminConfig {
            socket: socket.into(),
            socket_mode: 0o600,
            tcp: None,
        }
    }
}

/// The running admin listeners.
pub struct AdminServer {
    socket: PathBuf,
    tcp_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("socket", &self.socket)
            .field("tcp_addr", &self.tcp_addr)
            .finish_non_exhaustive()
    }
}

/// Who may call over the Unix socket: the daemon's own user, root, and —
/// when the socket's mode lets its group in — that group.
#[derive(Debug, Clone, Copy)]
struct LocalPolicy {
    uid: u32,
    gid: u32,
    group_allowed: bool,
}

impl LocalPolicy {
    fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.uid || (self.group_allowed && gid == self.gid)
    }
}

impl AdminServer {
    /// Binds the listeners and serves calls with `handler`.
    ///
    /// Refuses ([`Error::InvalidInput`]) a socket whose directory others
    /// may write to (anyone could replace the socket there), a mode that
    /// lets other users in (`o+rw`), and a token file that others may read
    /// or that holds no token. A stale socket file left by a daemon that
    /// is gone is replaced; a socket another daemon still answers on is an
    /// [`Error::Conflict`].
    pub async fn start(config: AdminConfig, handler: Arc<dyn Handler>) -> Result<AdminServer> {
        if config.socket_mode & 0o007 != 0 {
            return Err(Error::invalid(
                "admin.socket_mode",
                format!(
                    "{:o} lets every user of the host in; use 0600 or 0660",
                    config.socket_mode
                ),
            ));
        }
        check_socket_dir(&config.socket)?;
        let token = match &config.tcp {
            Some((_, file)) => Some(read_token(file)?),
            None => None,
        };
        let unix = bind_unix(&config.socket, config.socket_mode).await?;
        let metadata = fs::metadata(&config.socket)
            .map_err(|e| io_error("admin socket", &config.socket, e))?;
        let policy = LocalPolicy {
            uid: metadata.uid(),
            gid: metadata.gid(),
            group_allowed: config.socket_mode & 0o060 == 0o060,
        };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_unix(unix, policy, handler.clone(), stopped.clone()));
        let mut tcp_addr = None;
        if let (Some((addr, _)), Some(token)) = (config.tcp, token) {
            let listener = TcpListener::bind(addr).await.map_err(|e| Error::Backend {
                backend: "atlasd".into(),
                message: format!("cannot listen for admin calls on {addr}: {e}"),
                source: Some(Box::new(e)),
            })?;
            tcp_addr = Some(
                listener
                    .local_addr()
                    .map_err(|e| io_error("admin listener", Path::new("tcp"), e))?,
            );
            tasks.spawn(serve_tcp(listener, Arc::new(token), handler, stopped));
        }
        tracing::info!(socket = %config.socket.display(), tcp = ?tcp_addr, "admin API listening");
        Ok(AdminServer {
            socket: config.socket,
            tcp_addr,
            stop,
            tasks,
        })
    }

    /// The Unix socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The TCP listener's address, if one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops accepting calls; calls in progress finish. The socket file is
    /// removed unless `keep_socket` (a successor already bound its own
    /// there).
    pub async fn shutdown(mut self, keep_socket: bool) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        if !keep_socket {
            let _ = fs::remove_file(&self.socket);
        }
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Backend {
        backend: "atlasd".into(),
        message: format!("{what} {}: {e}", path.display()),
        source: Some(Box::new(e)),
    }
}

/// Refuses a socket directory that users other than its owner (and root)
/// may write to, unless it is sticky like /tmp (where others cannot remove
/// or rename our file).
fn check_socket_dir(socket: &Path) -> Result<()> {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = fs::metadata(dir).map_err(|e| io_error("admin socket directory", dir, e))?;
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(Error::invalid(
            "admin.socket",
            format!(
                "directory {} is writable by other users (mode {:o}): anyone could replace the socket",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Reads the bearer token: the file's first line, trimmed. The file must
/// not be readable by other users.
fn read_token(file: &Path) -> Result<String> {
    let meta = fs::metadata(file).map_err(|e| io_error("admin token file", file, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::invalid(
            "admin.token_file",
            format!(
                "{} is readable by other users (mode {:o}); chmod 600 it",
                file.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = fs::read_to_string(file).map_err(|e| io_error("admin token file", file, e))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < 16 {
        return Err(Error::invalid(
            "admin.token_file",
            format!(
                "{} must hold a token of at least 16 characters on its first line",
                file.display()
            ),
        ));
    }
    Ok(token)
}

/// Binds the socket with the mode applied before anyone can connect: the
/// socket is bound under a temporary name, chmodded, then renamed into
/// place.
async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener> {
    if path.exists() {
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => {
                return Err(Error::Conflict {
                    what: format!("another atlasd answers on {}", path.display()),
                });
            }
            Err(_) => {
                let _ = fs::remove_file(path);
            }
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let listener =
        UnixListener::bind(&temp).map_err(|e| io_error("cannot bind admin socket", &temp, e))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(mode))
        .map_err(|e| io_error("chmod admin socket", &temp, e))?;
    fs::rename(&temp, path).map_err(|e| io_error("cannot place admin socket", path, e))?;
    Ok(listener)
}

async fn serve_unix(
    listener: UnixListener,
    policy: LocalPolicy,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let caller = match stream.peer_cred() {
                    Ok(cred) => Caller::Local { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() },
                    Err(e) => {
                        tracing::warn!(error = %e, "admin connection without peer credentials refused");
                        continue;
                    }
                };
                let allowed = match &caller {
                    Caller::Local { uid, gid, .. } => policy.allows(*uid, *gid),
                    Caller::Remote { .. } => false,
                };
                connections.spawn(serve_one(stream, caller, allowed.then_some(()).ok_or(()), None, handler.clone()));
            }
        }
    }
    drain(connections).await;
}

async fn serve_tcp(
    listener: TcpListener,
    token: Arc<String>,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, addr)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_one(stream, Caller::Remote { addr }, Ok(()), Some(token.clone()), handler.clone()));
            }
        }
    }
    drain(connections).await;
}

/// Lets calls in progress finish (a long-polling `next_command` is cut
/// after a few seconds).
async fn drain(mut connections: JoinSet<()>) {
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            _ = &mut deadline => { connections.abort_all(); break }
        }
    }
}

async fn serve_one<S>(
    stream: S,
    caller: Caller,
    allowed: Result<(), ()>,
    token: Option<Arc<String>>,
    handler: Arc<dyn Handler>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let caller = Arc::new(caller);
    let service = service_fn(move |request: Request<Incoming>| {
        let caller = caller.clone();
        let token = token.clone();
        let handler = handler.clone();
        async move {
            Ok::<_, Infallible>(
                answer(
                    request,
                    &caller,
                    allowed,
                    token.as_deref().map(String::as_str),
                    &*handler,
                )
                .await,
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    caller: &Caller,
    allowed: Result<(), ()>,
    token: Option<&str>,
    handler: &dyn Handler,
) -> Response<Full<Bytes>> {
    if allowed.is_err() {
        tracing::warn!(%caller, "admin call refused: this user may not use the socket");
        return error(&ApiError::new(
            ApiErrorKind::Unauthorized,
            format!("{caller} may not use this socket"),
        ));
    }
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()));
        if !ok {
            tracing::warn!(%caller, presented = presented.is_some(), "admin call refused: missing or wrong bearer token");
            return error(&ApiError::new(
                ApiErrorKind::Unauthorized,
                "missing or wrong bearer token",
            ));
        }
    }
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, METRICS_PATH) => {
            let mut response = Response::new(Full::new(Bytes::from(handler.metrics_text())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::POST, CALL_PATH) => {
            let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return error(&ApiError::new(
                        ApiErrorKind::Malformed,
                        format!("cannot read the request body: {e}"),
                    ));
                }
            };
            let call: ApiRequest = match serde_json::from_slice(&body) {
                Ok(call) => call,
                Err(e) => {
                    tracing::warn!(%caller, error = %e, "malformed admin call refused");
                    return error(&ApiError::new(
                        ApiErrorKind::Malformed,
                        format!("not a valid call: {e}"),
                    ));
                }
            };
            let op = call.op();
            let change = call.is_change();
            let service = call.service().map(|s| s.as_str().to_owned());
            let result = handler.handle(caller, call).await;
            match &result {
                Ok(_) if change => {
                    tracing::info!(%caller, op, service = service.as_deref().unwrap_or(""), "admin change made")
                }
                Ok(_) => tracing::debug!(%caller, op, "admin call answered"),
                Err(e) if change => {
                    tracing::warn!(%caller, op, service = service.as_deref().unwrap_or(""), kind = ?e.kind, error = %e.message, "admin change refused")
                }
                Err(e) => {
                    tracing::debug!(%caller, op, kind = ?e.kind, error = %e.message, "admin call failed")
                }
            }
            match result {
                Ok(response) => json(StatusCode::OK, &response),
                Err(e) => error(&e),
            }
        }
        _ => error(&ApiError::new(
            ApiErrorKind::Malformed,
            format!(
                "no such call: {} {path} (POST {CALL_PATH} or GET {METRICS_PATH})",
                request.method()
            ),
        )),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(e: &ApiError) -> Response<Full<Bytes>> {
    json(
        StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e,
    )
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
    }

    #[test]
    fn local_policy_admits_owner_root_and_group_only_when_allowed() {
        let policy = LocalPolicy {
            uid: 1000,
            gid: 100,
            group_allowed: false,
        };
        assert!(policy.allows(1000, 5));
        assert!(policy.allows(0, 0));
        assert!(!policy.allows(1001, 100));
        let group = LocalPolicy {
            group_allowed: true,
            ..policy
        };
        assert!(group.allows(1001, 100));
        assert!(!group.allows(1001, 101));
    }
}
