//! The HTTP/1.1 wire format as the relay needs it: what a message head's
//! headers say about framing and the connection, how a body is delimited,
//! a chunked-coding scanner, and head writing.
//!
//! Parsing itself is `httparse` (no allocation; the head stays in the read
//! buffer). This module adds the rules of RFC 9112 that a proxy must
//! enforce so that it and the upstream never disagree on where a message
//! ends (request smuggling): `Transfer-Encoding` together with
//! `Content-Length` is refused, differing `Content-Length` values are
//! refused, a request transfer coding other than exactly `chunked` is
//! refused, and chunk sizes, extensions and trailers are bounded.

use httparse::Header;

/// The response header naming the slot that served a request: `blue` or
/// `green`. Set on relayed responses and on the proxy's own 502/503/504
/// for a chosen slot; absent only when no split was set.
pub const SLOT_HEADER: &str = "x-atlas-slot";

/// The most bytes a request or response head may take.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a head may have.
pub(crate) const MAX_HEADERS: usize = 128;
/// The most bytes of a chunk-size line (size, extensions) or of one trailer
/// section.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// A head the relay refuses, with the status to answer (requests) and the
/// reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// What a head's headers say about framing and the connection, found in
/// one pass.
#[derive(Debug, Default)]
pub(crate) struct Facts<'a> {
    content_length: Option<u64>,
    has_transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    te_ends_chunked: bool,
    /// The codings are exactly `chunked`, once.
    te_only_chunked: bool,
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) hosts: usize,
    pub(crate) expect_continue: bool,
    /// Header names listed in `Connection` (besides close / keep-alive).
    named: Vec<&'a [u8]>,
}

impl<'a> Facts<'a> {
    /// Reads the framing and connection headers of `headers`.
    pub(crate) fn read(headers: &[Header<'a>]) -> Result<Self, Refusal> {
        let mut facts = Facts::default();
        let mut te_codings = 0usize;
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                for part in h.value.split(|&b| b == b',') {
                    let n =
                        parse_length(trim(part)).ok_or(refuse(400, "invalid Content-Length"))?;
                    match facts.content_length {
                        Some(seen) if seen != n => {
                            return Err(refuse(400, "conflicting Content-Length values"));
                        }
                        _ => facts.content_length = Some(n),
                    }
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                facts.has_transfer_encoding = true;
                for coding in h.value.split(|&b| b == b',') {
                    let coding = trim(coding);
                    if coding.is_empty() {
                        continue;
                    }
                    te_codings += 1;
                    facts.te_ends_chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        facts.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        facts.keep_alive = true;
                    } else if !token.is_empty() {
                        facts.named.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case(b"host") {
                facts.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"expect") {
                facts.expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
            }
        }
        facts.te_only_chunked = te_codings == 1 && facts.te_ends_chunked;
        if facts.has_transfer_encoding && facts.content_length.is_some() {
            return Err(refuse(
                400,
                "both Transfer-Encoding and Content-Length are present",
            ));
        }
        Ok(facts)
    }

    /// The request body's framing (RFC 9112 §6.3): chunked only as the
    /// sole transfer coding, else a length, else none.
    pub(crate) fn request_framing(&self, minor_version: u8) -> Result<Framing, Refusal> {
        if self.has_transfer_encoding {
            if minor_version == 0 {
                return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
            }
            if !self.te_only_chunked {
                return Err(refuse(501, "transfer coding other than chunked"));
            }
            return Ok(Framing::Chunked);
        }
        Ok(match self.content_length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }

    /// The response body's framing for a response of `status` to a request
    /// that was (`head`) or was not a HEAD request.
    pub(crate) fn response_framing(&self, status: u16, head: bool) -> Framing {
        if head || status == 204 || status == 304 || status < 200 {
            return Framing::Empty;
        }
        if self.has_transfer_encoding {
            return if self.te_ends_chunked {
                Framing::Chunked
            } else {
                Framing::Close
            };
        }
        match self.content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    }

    /// Whether the message declared a `Content-Length` (kept on bodiless
    /// responses such as HEAD and 304, where it describes the resource).
    pub(crate) fn has_content_length(&self) -> bool {
        self.content_length.is_some()
    }

    /// Whether the connection stays open after this message, for a
    /// message of HTTP/1.`minor_version`.
    pub(crate) fn persistent(&self, minor_version: u8) -> bool {
        if self.close {
            return false;
        }
        minor_version >= 1 || self.keep_alive
    }

    /// Whether the `Connection` header lists `token`.
    pub(crate) fn names(&self, token: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(token))
    }

    /// Whether header `name` concerns this connection only and must not
    /// be relayed (RFC 9110 §7.6.1): `Connection` and what it names,
    /// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
    /// `Proxy-*`.
    pub(crate) fn hop_by_hop(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name) || self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The hop-by-hop headers every message has, whatever its `Connection`
/// header names.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const FIXED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    FIXED.iter().any(|h| h.eq_ignore_ascii_case(name))
        || (name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// RFC 7230 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A `Content-Length` value: 1 to 19 ASCII digits.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether `buf` may hold a complete head: it has an empty line (`LF LF`
/// or `LF CR LF`) in it. Only the bytes after `scanned` (less two, for a
/// terminator split across reads) are looked at, and `scanned` moves to
/// the end, so a head that arrives a byte at a time costs linear time
/// instead of one full parse per byte.
pub(crate) fn head_may_be_complete(buf: &[u8], scanned: &mut usize) -> bool {
    let from = scanned.saturating_sub(2);
    *scanned = buf.len();
    buf.get(from..).is_some_and(|tail| {
        tail.windows(2).enumerate().any(|(i, w)| {
            w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && tail.get(i + 2) == Some(&b'\n')))
        })
    })
}

/// Where a [`RequestLineCheck`] is in the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Before the method: empty lines (CRLF or LF) are skipped, as
    /// RFC 9112 §2.2 allows and `httparse` does.
    Blank,
    /// After a CR of an empty line.
    BlankLf,
    Method,
    /// Right after the SP that ends the method.
    TargetStart,
    Target,
    /// This many bytes of `HTTP/1.` seen.
    Version(u8),
    /// After `HTTP/1.0` or `HTTP/1.1`.
    VersionEnd,
    /// After the request line's CR.
    Lf,
    /// The request line is whole and well formed.
    Done,
}

/// Tells, as the bytes of a request head arrive, whether they can still
/// be the start of a valid request line (`method SP target SP HTTP/1.x`),
/// so that bytes that cannot (binary data, a TLS handshake sent to the
/// plain port) are refused at once rather than after the head timeout.
/// Each byte is looked at once across reads, and only until the request
/// line ends; it accepts everything `httparse` accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLineCheck {
    state: LineState,
    at: usize,
}

impl Default for RequestLineCheck {
    fn default() -> Self {
        RequestLineCheck {
            state: LineState::Blank,
            at: 0,
        }
    }
}

impl RequestLineCheck {
    /// Checks the bytes of `buf` not seen yet (`buf` only grows between
    /// calls).
    pub(crate) fn check(&mut self, buf: &[u8]) -> Result<(), Refusal> {
        const VERSION: &[u8; 7] = b"HTTP/1.";
        let bad = Err(refuse(400, "bytes that cannot start a request line"));
        while self.at < buf.len() && self.state != LineState::Done {
            let b = buf[self.at];
            self.state = match self.state {
                LineState::Blank => match b {
                    b'\r' => LineState::BlankLf,
                    b'\n' => LineState::Blank,
                    _ if is_tchar(b) => LineState::Method,
                    _ => return bad,
                },
                LineState::BlankLf if b == b'\n' => LineState::Blank,
                LineState::Method if is_tchar(b) => LineState::Method,
                LineState::Method if b == b' ' => LineState::TargetStart,
                LineState::TargetStart | LineState::Target if is_target_byte(b) => {
                    LineState::Target
                }
                LineState::Target if b == b' ' => LineState::Version(0),
                LineState::Version(i) if usize::from(i) < VERSION.len() => {
                    if b != VERSION[usize::from(i)] {
                        return bad;
                    }
                    LineState::Version(i + 1)
                }
                LineState::Version(_) if b == b'0' || b == b'1' => LineState::VersionEnd,
                LineState::VersionEnd if b == b'\r' => LineState::Lf,
                LineState::VersionEnd | LineState::Lf if b == b'\n' => LineState::Done,
                _ => return bad,
            };
            self.at += 1;
        }
        Ok(())
    }
}

/// A byte `httparse` accepts in a request target: visible ASCII or any
/// byte above it.
fn is_target_byte(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) || b >= 0x80
}

/// Appends one header line.
pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a `Content-Length` header line.
pub(crate) fn put_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    put_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a status line; an empty reason gets the canonical one.
pub(crate) fn put_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(status));
    out.push(b' ');
    let reason = if reason.is_empty() {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("")
    } else {
        reason
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A complete response of the proxy's own: `text/plain`, with a length,
/// `Strict-Transport-Security` when given (on TLS connections), and
/// `Connection: close` when the connection ends after it.
pub(crate) fn put_local_response(
    out: &mut Vec<u8>,
    status: u16,
    text: &str,
    slot: Option<&str>,
    close: bool,
    hsts: Option<&[u8]>,
) {
    put_status_line(out, status, "");
    if let Some(hsts) = hsts {
        put_header(out, b"strict-transport-security", hsts);
    }
    put_header(out, b"content-type", b"text/plain; charset=utf-8");
    put_content_length(out, text.len() as u64);
    if let Some(slot) = slot {
        put_header(out, SLOT_HEADER.as_bytes(), slot.as_bytes());
    }
    if close {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
}

/// A bad chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkError(pub(crate) &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size.
    Size,
    /// After the size: extensions up to CR.
    Extension,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting LF after a trailer line's CR.
    TrailerLf,
    /// Expecting LF after the final empty line's CR.
    EndLf,
    /// The body ended.
    Done,
}

/// Finds where a chunked body ends, byte by byte across reads, and where
/// its data is (to decode it for an HTTP/1.0 client). Strict: sizes of at
/// most 16 hex digits, CRLF line ends, bounded extensions and trailers.
#[derive(Debug, Clone)]
pub(crate) struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        ChunkScanner {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl ChunkScanner {
    /// Whether the body ended.
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `input` and returns how many of its bytes belong to the body
    /// (all of them unless the body ends inside `input`). `data` gets the
    /// ranges of `input` that are chunk data.
    pub(crate) fn scan(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => {
                    if let Some(d) = hex(b) {
                        if self.digits == 16 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.digits += 1;
                        self.line += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError("chunk size missing"));
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::Extension;
                        self.line += 1;
                    } else {
                        return Err(ChunkError("invalid chunk size"));
                    }
                }
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError("invalid chunk extension"));
                    } else {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(ChunkError("chunk extension too long"));
                        }
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk size line not ended by CRLF"));
                    }
                    self.line = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(i..i + take);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    if b == b'\r' {
                        self.state = ChunkState::EndLf;
                    } else {
                        self.state = ChunkState::Trailer;
                        self.count_trailer()?;
                    }
                }
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b == b'\n' {
                        return Err(ChunkError("trailer line not ended by CRLF"));
                    } else {
                        self.count_trailer()?;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("trailer line not ended by CRLF"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunked body not ended by CRLF"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError("trailer section too large"));
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Header fields from name/value pairs, as `httparse` gives them.
#[cfg(test)]
pub(crate) fn test_headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Header<'a>> {
    pairs
        .iter()
        .map(|(name, value)| Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a [(&'a str, &'a str)]) -> Result<Facts<'a>, Refusal> {
        Facts::read(&test_headers(headers))
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let f = facts(&[("Content-Length", "12")]).unwrap();
        assert_eq!(f.request_framing(1), Ok(Framing::Length(12)));
        let f = facts(&[("content-length", "7, 7"), ("Content-Length", "7")]).unwrap();
        assert_eq!(f.request_framing(1), Ok(Framing::Length(7)));
        let f = facts(&[("Transfer-Encoding", "Chunked")]).unwrap();
        assert_eq!(f.request_framing(1), Ok(Framing::Chunked));
        let f = facts(&[]).unwrap();
        assert_eq!(f.request_framing(1), Ok(Framing::Empty));
        let f = facts(&[("Content-Length", "0")]).unwrap();
        assert_eq!(f.request_framing(1), Ok(Framing::Empty));
    }

    #[test]
    fn ambiguous_request_framing_is_refused() {
        let status = |h: &[(&str, &str)]| match facts(h) {
            Err(r) => r.status,
            Ok(f) => f.request_framing(1).err().map_or(0, |r| r.status),
        };
        assert_eq!(
            status(&[("Content-Length", "3"), ("Transfer-Encoding", "chunked")]),
            400
        );
        assert_eq!(
            status(&[("Content-Length", "3"), ("Content-Length", "4")]),
            400
        );
        assert_eq!(status(&[("Content-Length", "3, 4")]), 400);
        assert_eq!(status(&[("Content-Length", "12abc")]), 400);
        assert_eq!(status(&[("Content-Length", "-1")]), 400);
        assert_eq!(status(&[("Content-Length", "")]), 400);
        assert_eq!(status(&[("Content-Length", "99999999999999999999")]), 400);
        assert_eq!(status(&[("Transfer-Encoding", "gzip")]), 501);
        assert_eq!(status(&[("Transfer-Encoding", "gzip, chunked")]), 501);
        assert_eq!(
            status(&[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked")
            ]),
            501
        );
        let f = facts(&[("Transfer-Encoding", "chunked")]).unwrap();
        assert_eq!(f.request_framing(0).unwrap_err().status, 400);
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let f = facts(&[("Content-Length", "5")]).unwrap();
        assert_eq!(f.response_framing(200, false), Framing::Length(5));
        assert_eq!(f.response_framing(200, true), Framing::Empty);
        assert_eq!(f.response_framing(204, false), Framing::Empty);
        assert_eq!(f.response_framing(304, false), Framing::Empty);
        let f = facts(&[("Transfer-Encoding", "gzip, chunked")]).unwrap();
        assert_eq!(f.response_framing(200, false), Framing::Chunked);
        let f = facts(&[("Transfer-Encoding", "gzip")]).unwrap();
        assert_eq!(f.response_framing(200, false), Framing::Close);
        let f = facts(&[]).unwrap();
        assert_eq!(f.response_framing(200, false), Framing::Close);
    }

    #[test]
    fn connection_header_decides_persistence_and_names_hop_by_hop_headers() {
        let f = facts(&[("Connection", "close, X-Foo"), ("x-bar", "1")]).unwrap();
        assert!(!f.persistent(1));
        assert!(f.hop_by_hop(b"x-foo"));
        assert!(f.hop_by_hop(b"Proxy-Authorization"));
        assert!(f.hop_by_hop(b"Keep-Alive"));
        assert!(!f.hop_by_hop(b"x-bar"));
        assert!(!f.hop_by_hop(b"proxy"));
        assert!(facts(&[]).unwrap().persistent(1));
        assert!(!facts(&[]).unwrap().persistent(0));
        assert!(
            facts(&[("Connection", "Keep-Alive")])
                .unwrap()
                .persistent(0)
        );
    }

    fn scan_all(body: &[u8], pieces: usize) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut s = ChunkScanner::default();
        let mut data = Vec::new();
        let mut consumed = 0;
        let step = body.len().div_ceil(pieces.max(1)).max(1);
        for part in body.chunks(step) {
            let n = s.scan(part, |r| data.extend_from_slice(&part[r]))?;
            consumed += n;
            if s.done() {
                break;
            }
        }
        Ok((consumed, data, s.done()))
    }

    #[test]
    fn chunk_scanner_finds_the_end_and_the_data_across_reads() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for pieces in [1, 2, 3, 7, body.len()] {
            let (consumed, data, done) = scan_all(body, pieces).unwrap();
            assert!(done);
            assert_eq!(consumed, body.len() - 4, "pieces {pieces}");
            assert_eq!(data, b"hello world");
        }
    }

    #[test]
    fn chunk_scanner_decodes_random_bodies_in_random_reads() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let payload: Vec<u8> = (0..rng.random_range(0..5000))
                .map(|_| rng.random())
                .collect();
            let mut encoded = Vec::new();
            let mut rest = &payload[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len().min(700));
                let ext = if rng.random_bool(0.2) { ";a=b" } else { "" };
                encoded.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                encoded.extend_from_slice(&rest[..n]);
                encoded.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            encoded.extend_from_slice(b"0\r\n");
            if rng.random_bool(0.3) {
                encoded.extend_from_slice(b"x-sum: 1\r\n");
            }
            encoded.extend_from_slice(b"\r\n");
            let body_len = encoded.len();
            encoded.extend_from_slice(b"GET /next");

            let mut scanner = ChunkScanner::default();
            let (mut at, mut data) = (0, Vec::new());
            while !scanner.done() {
                let end = (at + rng.random_range(1..300)).min(encoded.len());
                let part = &encoded[at..end];
                let n = scanner
                    .scan(part, |r| data.extend_from_slice(&part[r]))
                    .unwrap();
                at += n;
                assert!(n == part.len() || scanner.done());
            }
            assert_eq!(at, body_len);
            assert_eq!(data, payload);
        }
    }

    #[test]
    fn chunk_scanner_refuses_malformed_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXY",
            b"11111111111111111\r\n",
            b"0\r\nbad\n",
        ] {
            assert!(
                scan_all(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; 5000]].concat();
        assert!(scan_all(&long_ext, 1).is_err());
    }

    #[test]
    fn a_head_end_is_found_across_reads_without_rescanning() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..head.len() {
            let mut scanned = 0;
            let first = head_may_be_complete(&head[..split], &mut scanned);
            assert!(!first, "complete at {split}");
            assert_eq!(scanned, split);
            assert!(head_may_be_complete(head, &mut scanned), "split {split}");
        }
        let mut scanned = 0;
        assert!(head_may_be_complete(b"GET / HTTP/1.0\n\n", &mut scanned));
        let mut scanned = 0;
        assert!(!head_may_be_complete(
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            &mut scanned
        ));
    }

    fn line_check(input: &[u8], pieces: usize) -> Result<(), Refusal> {
        let mut check = RequestLineCheck::default();
        let step = input.len().div_ceil(pieces.max(1)).max(1);
        let mut end = 0;
        while end < input.len() {
            end = (end + step).min(input.len());
            check.check(&input[..end])?;
        }
        Ok(())
    }

    #[test]
    fn request_line_prefixes_that_can_still_be_valid_pass_in_any_pieces() {
        let whole = b"\r\n\nGET /a?b=%20c HTTP/1.1\r\nHost: shop\r\n\r\n";
        for len in 0..=whole.len() {
            for pieces in [1, 2, 5, len.max(1)] {
                assert_eq!(
                    line_check(&whole[..len], pieces),
                    Ok(()),
                    "{:?}",
                    String::from_utf8_lossy(&whole[..len])
                );
            }
        }
        for ok in [
            &b"get /x HTTP/1.0\n"[..],
            b"M-SEARCH * HTTP/1.1\r\n",
            b"GET http://shop/\xc3\xa9 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n\x00 anything after the line is not looked at",
        ] {
            assert_eq!(
                line_check(ok, 1),
                Ok(()),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn bytes_that_cannot_start_a_request_line_are_refused_early() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"\x00\x01\x02",
            b"g\xc3\xa9t / HTTP/1.1",
            b"GET\t/",
            b"GET  /",
            b"GET /\x01",
            b"GET / HTTP/2",
            b"GET / http/1.1",
            b"GET / HTTP/1.12",
            b"GET / HTTP/1.1\rX",
            b"\r\r",
            b" GET",
        ] {
            for pieces in [1, bad.len()] {
                let refusal = line_check(bad, pieces).unwrap_err();
                assert_eq!(refusal.status, 400, "{:?}", String::from_utf8_lossy(bad));
            }
        }
    }

    #[test]
    fn local_responses_are_complete() {
        let mut out = Vec::new();
        put_local_response(&mut out, 503, "none\n", Some("blue"), true, None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("content-length: 5\r\n"));
        assert!(text.contains("x-atlas-slot: blue\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnone\n"));
    }
}
