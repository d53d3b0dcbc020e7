//! Header rewriting on the way upstream: which headers are relayed, and the
//! forwarding headers (`X-Forwarded-For`, `Forwarded`) the proxy adds.

use std::net::IpAddr;

use httparse::Header;

use super::h1::{Facts, is_tchar, put_header};

/// What the proxy says about a client connection, prepared once per
/// connection.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    /// The client address as an `X-Forwarded-For` element.
    xff: Box<[u8]>,
    /// The client address as a `Forwarded` `for=` value (IPv6 quoted and
    /// bracketed, as RFC 7239 requires).
    forwarded_for: Box<[u8]>,
    /// The `Forwarded` `proto=` value: the scheme the client used.
    proto: &'static [u8],
}

impl PeerInfo {
    pub(crate) fn new(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let text = ip.to_string();
        let forwarded_for = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        PeerInfo {
            xff: text.into_bytes().into_boxed_slice(),
            forwarded_for: forwarded_for.into_bytes().into_boxed_slice(),
            proto: b"http",
        }
    }

    /// The client came over TLS: `proto=https`.
    pub(crate) fn over_tls(mut self) -> Self {
        self.proto = b"https";
        self
    }
}

/// Whether a request header is relayed upstream as it came: not
/// hop-by-hop, and not one the proxy writes itself (framing, `Expect`,
/// the forwarding headers; `Host` when `host_replaced`).
pub(crate) fn relayed_request_header(name: &str, facts: &Facts<'_>, host_replaced: bool) -> bool {
    let n = name.as_bytes();
    !(facts.hop_by_hop(n)
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("expect")
        || name.eq_ignore_ascii_case("x-forwarded-for")
        || name.eq_ignore_ascii_case("forwarded")
        || (host_replaced && name.eq_ignore_ascii_case("host")))
}

/// Writes `X-Forwarded-For` (earlier values, then the client) and
/// `Forwarded` (earlier elements, then `for=…;proto=http|https;host=…`) as one
/// line each. `host` is the request's host, if it named one.
pub(crate) fn put_forwarding(
    out: &mut Vec<u8>,
    headers: &[Header<'_>],
    peer: &PeerInfo,
    host: Option<&[u8]>,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    put_earlier(out, headers, "x-forwarded-for");
    out.extend_from_slice(&peer.xff);
    out.extend_from_slice(b"\r\n");

    out.extend_from_slice(b"forwarded: ");
    put_earlier(out, headers, "forwarded");
    out.extend_from_slice(b"for=");
    out.extend_from_slice(&peer.forwarded_for);
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(peer.proto);
    if let Some(host) = host {
        out.extend_from_slice(b";host=");
        put_token_or_quoted(out, host);
    }
    out.extend_from_slice(b"\r\n");
}

/// Every non-empty value of header `name`, each followed by `", "`.
fn put_earlier(out: &mut Vec<u8>, headers: &[Header<'_>], name: &str) {
    for h in headers {
        if h.name.eq_ignore_ascii_case(name) && !h.value.is_empty() {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
}

/// Writes `value` as an RFC 7230 token when it is one, else as a
/// quoted-string (a `host:port` needs quoting: `:` is no token character).
fn put_token_or_quoted(out: &mut Vec<u8>, value: &[u8]) {
    if !value.is_empty() && value.iter().all(|b| is_tchar(*b)) {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Writes the relayed headers of a request, in their order.
pub(crate) fn put_relayed(
    out: &mut Vec<u8>,
    headers: &[Header<'_>],
    facts: &Facts<'_>,
    host_replaced: bool,
) {
    for h in headers {
        if relayed_request_header(h.name, facts, host_replaced) {
            put_header(out, h.name.as_bytes(), h.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::test_headers as headers;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_and_proxy_written_headers_are_not_relayed() {
        let h = headers(&[
            ("Connection", "keep-alive, X-Private"),
            ("connection", "x-other"),
            ("x-private", "1"),
            ("X-Other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("Proxy-Connection", "keep-alive"),
            ("expect", "100-continue"),
            ("content-length", "3"),
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=1.1.1.1"),
            ("X-Kept", "3"),
            ("content-type", "text/plain"),
            ("Host", "shop"),
        ]);
        let facts = Facts::read(&h).unwrap();
        let mut out = Vec::new();
        put_relayed(&mut out, &h, &facts, false);
        assert_eq!(
            text(out),
            "X-Kept: 3\r\ncontent-type: text/plain\r\nHost: shop\r\n"
        );
        let mut out = Vec::new();
        put_relayed(&mut out, &h, &facts, true);
        assert!(!text(out).contains("Host"));
    }

    #[test]
    fn forwarding_headers_are_appended() {
        let peer = PeerInfo::new("10.1.2.3".parse().unwrap());
        let mut out = Vec::new();
        put_forwarding(&mut out, &[], &peer, Some(b"shop.example:8080"));
        assert_eq!(
            text(out),
            "x-forwarded-for: 10.1.2.3\r\nforwarded: for=10.1.2.3;proto=http;host=\"shop.example:8080\"\r\n"
        );

        let h = headers(&[
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let mut out = Vec::new();
        put_forwarding(&mut out, &h, &peer, Some(b"shop"));
        assert_eq!(
            text(out),
            "x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nforwarded: for=1.1.1.1, for=10.1.2.3;proto=http;host=shop\r\n"
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let peer = PeerInfo::new("::1".parse().unwrap());
        let mut out = Vec::new();
        put_forwarding(&mut out, &[], &peer, None);
        assert_eq!(
            text(out),
            "x-forwarded-for: ::1\r\nforwarded: for=\"[::1]\";proto=http\r\n"
        );
        let mapped = PeerInfo::new("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(&*mapped.xff, b"127.0.0.1");
    }
}
