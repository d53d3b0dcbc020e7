//! Health probes that speak just enough HTTP/1.0 and PostgreSQL wire protocol
//! to tell "the expected service is ready" from "nothing there" and from
//! "something else holds the port", without pulling an HTTP client into xtask.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// What a probe found on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The expected service answers and is ready for tests.
    Ready,
    /// Nothing accepts connections on the port.
    Down,
    /// Something answers, but it is not (yet) the expected service in the
    /// expected state; the text says what was seen.
    Unexpected(String),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Responses larger than this are cut: probes only look for markers near the start.
const MAX_RESPONSE: u64 = 1 << 20;

fn connect(port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// A parsed HTTP response: status code, raw header block and body as text.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

/// The outcome of one GET: refused/timed out connections are `Err(None)`,
/// garbage on the wire is `Err(Some(description))`.
type HttpResult = Result<HttpResponse, Option<String>>;

/// `GET path` on 127.0.0.1:port. HTTP/1.0 on purpose: servers then answer
/// with a close-delimited, unchunked body that can be read to the end.
pub(crate) fn http_get(port: u16, path: &str) -> HttpResult {
    let mut stream = connect(port).map_err(|_| None)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: atlas-xtask\r\nAccept: */*\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| Some(format!("connection accepted but write failed: {e}")))?;
    let mut raw = Vec::new();
    if let Err(e) = stream.take(MAX_RESPONSE).read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(Some(format!("connection accepted but no HTTP answer: {e}")));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            Some(format!(
                "answers, but not with HTTP: {:?}",
                head.chars().take(60).collect::<String>()
            ))
        })?;
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// GET and require a status; maps every failure onto a [`Probe`].
pub(crate) fn http_expect(port: u16, path: &str, status: u16) -> Result<HttpResponse, Probe> {
    match http_get(port, path) {
        Ok(resp) if resp.status == status => Ok(resp),
        Ok(resp) => Err(Probe::Unexpected(format!(
            "GET {path} answered {} (expected {status}): {}",
            resp.status,
            snippet(&resp.body)
        ))),
        Err(None) => Err(Probe::Down),
        Err(Some(what)) => Err(Probe::Unexpected(what)),
    }
}

/// The first line-ish of a body, for error messages.
pub(crate) fn snippet(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|&i| flat.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &flat[..cut])
    } else {
        flat
    }
}

/// Checks for a PostgreSQL server that lets user `postgres` into database
/// `postgres` without a password (trust auth), as the tests expect.
pub(crate) fn postgres(port: u16) -> Probe {
    let Ok(mut stream) = connect(port) else {
        return Probe::Down;
    };
    let mut params = Vec::new();
    for part in ["user", "postgres", "database", "postgres"] {
        params.extend_from_slice(part.as_bytes());
        params.push(0);
    }
    params.push(0);
    let len = u32::try_from(8 + params.len()).unwrap_or(u32::MAX);
    let mut startup = Vec::with_capacity(params.len() + 8);
    startup.extend_from_slice(&len.to_be_bytes());
    startup.extend_from_slice(&196_608_u32.to_be_bytes()); // protocol 3.0
    startup.extend_from_slice(&params);
    if stream.write_all(&startup).is_err() {
        return Probe::Unexpected("connection accepted but write failed".into());
    }
    let mut header = [0_u8; 5];
    if stream.read_exact(&mut header).is_err() {
        return Probe::Unexpected("no PostgreSQL answer to a startup message".into());
    }
    let body_len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_len = usize::try_from(body_len.saturating_sub(4).min(8192)).unwrap_or(0);
    let mut body = vec![0_u8; body_len];
    if stream.read_exact(&mut body).is_err() {
        return Probe::Unexpected("truncated PostgreSQL answer".into());
    }
    match header[0] {
        b'R' if body.starts_with(&[0, 0, 0, 0]) => {
            // Terminate politely so the server log stays free of EOF noise.
            let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
            Probe::Ready
        }
        b'R' => Probe::Unexpected(
            "PostgreSQL asks user `postgres` for a password; the tests expect trust auth".into(),
        ),
        b'E' => {
            // Error fields are (type byte, C string); 'M' is the human message.
            let message = body
                .split(|&b| b == 0)
                .find_map(|field| field.strip_prefix(b"M"))
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_else(|| "unknown error".into());
            Probe::Unexpected(format!("PostgreSQL refuses the connection: {message}"))
        }
        other => Probe::Unexpected(format!(
            "answers, but not like PostgreSQL (first byte {other:#04x})"
        )),
    }
}
