//! Listening sockets that outlive one daemon process: handed from a
//! running `atlasd` to its successor over a Unix socket (`SCM_RIGHTS`), or
//! received from systemd (socket activation), and systemd's readiness
//! notification.
//!
//! A successor that binds its own socket beside the old one with
//! `SO_REUSEPORT` is not enough for zero refused connections: the kernel
//! spreads new connections over both sockets, and those still queued on
//! the old one when it closes are reset (unless `net.ipv4.tcp_migrate_req`
//! is set, which needs root and is off by default). Passing the *same*
//! socket keeps one accept queue: both processes accept from it during
//! the hand-over, the old one stops accepting, and no connection is ever
//! queued on a socket about to close.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;

use atlas_core::{Error, Result};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg, sockopt};

/// Set once systemd's socket was taken.
static SYSTEMD_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The first line a successor sends.
pub(crate) const HELLO: &str = "atlasd-takeover 1";
/// What a successor sends once it serves.
pub(crate) const READY: &str = "ready";

fn backend(message: String, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend {
        backend: "atlasd".into(),
        message,
        source: Some(Box::new(e)),
    }
}

/// Sends `listener` and a one-line note over `stream`.
pub(crate) fn send_listener(stream: &UnixStream, listener: &TcpListener, note: &str) -> Result<()> {
    let fds = [listener.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let line = format!("{note}\n");
    let iov = [IoSlice::new(line.as_bytes())];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(|e| {
        backend(
            "cannot pass the listening socket to the successor".into(),
            e,
        )
    })?;
    Ok(())
}

/// Receives the listener a predecessor sent, with its note.
pub(crate) fn receive_listener(stream: &UnixStream) -> Result<(TcpListener, String)> {
    let mut buf = [0u8; 1024];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (fds, len) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| {
            backend(
                "cannot receive the listening socket from the running atlasd".into(),
                e,
            )
        })?;
        let mut fds = Vec::new();
        for cmsg in message
            .cmsgs()
            .map_err(|e| backend("bad control message".into(), e))?
        {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        (fds, message.bytes)
    };
    let mut owned: Vec<OwnedFd> = fds.into_iter().map(adopt_fd).collect();
    if owned.len() != 1 {
        return Err(Error::Backend {
            backend: "atlasd".into(),
            message: format!(
                "the running atlasd passed {} sockets, expected 1",
                owned.len()
            ),
            source: None,
        });
    }
    let fd = owned.remove(0);
    check_listening(&fd)?;
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|e| backend("cannot make the received socket non-blocking".into(), e))?;
    let note = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
    Ok((listener, note))
}

/// Takes ownership of a descriptor the kernel just installed in this
/// process's table.
#[allow(unsafe_code)]
fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` comes from an SCM_RIGHTS message (recvmsg) or from
    // systemd's LISTEN_FDS hand-over checked against our pid: in both cases
    // it is an open descriptor that nothing else in this process owns, so
    // this OwnedFd is its only owner and closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Refuses a descriptor that is not a listening socket.
fn check_listening(fd: &OwnedFd) -> Result<()> {
    match nix::sys::socket::getsockopt(&fd.as_fd(), sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::invalid(
            "listener",
            "the passed socket is not listening",
        )),
        Err(e) => Err(backend("the passed descriptor is not a socket".into(), e)),
    }
}

/// The listening socket systemd passed (`LISTEN_FDS`/`LISTEN_PID`, socket
/// activation), if any. The variables are removed so children do not see
/// them.
pub fn systemd_listener() -> Result<Option<TcpListener>> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !pid_matches || count == 0 {
        return Ok(None);
    }
    // Descriptor 3 is adopted once per process, never twice.
    if SYSTEMD_TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    if count > 1 {
        return Err(Error::invalid(
            "LISTEN_FDS",
            format!("systemd passed {count} sockets; atlasd takes one (the proxy's)"),
        ));
    }
    // systemd passes its sockets from descriptor 3 on.
    let fd = adopt_fd(3);
    check_listening(&fd)?;
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|e| backend("cannot make the systemd socket non-blocking".into(), e))?;
    Ok(Some(listener))
}

/// Tells systemd (`Type=notify`) the daemon is ready, or what it is doing;
/// nothing without `NOTIFY_SOCKET`.
pub fn notify_systemd(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Reads one line (without its newline) from a hand-over connection.
pub(crate) fn read_line(stream: &UnixStream) -> io::Result<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Writes one line to a hand-over connection.
pub(crate) fn write_line(mut stream: &UnixStream, line: &str) -> io::Result<()> {
    stream.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_passed_over_a_socket_pair_is_the_same_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_listener(&a, &listener, "proxy").unwrap();
        let (received, note) = receive_listener(&b).unwrap();
        assert_eq!(note, "proxy");
        assert_eq!(received.local_addr().unwrap(), addr);
        drop(listener);
        // The original descriptor is closed; the socket still accepts.
        let client = std::net::TcpStream::connect(addr).unwrap();
        received.set_nonblocking(false).unwrap();
        let (_, peer) = received.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[test]
    fn a_descriptor_that_is_not_listening_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fds = [bound.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(b"x\n")];
        sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        assert!(receive_listener(&b).is_err());
    }
}
