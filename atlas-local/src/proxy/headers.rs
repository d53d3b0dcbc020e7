//! Header rewriting: hop-by-hop headers out, forwarding headers in.

use std::net::IpAddr;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{
    CONNECTION, Entry, FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

use super::balance::is_tchar;

/// The response header naming the slot that served a request.
pub(crate) const X_ATLAS_SLOT: HeaderName = HeaderName::from_static("x-atlas-slot");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1):
/// `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade` and all `Proxy-*` headers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Entry::Occupied(entry) = headers.entry(CONNECTION) {
        let (_, values) = entry.remove_entry_mult();
        let listed: Vec<HeaderValue> = values.collect();
        for value in &listed {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split(',') {
                let token = token.trim();
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in [KEEP_ALIVE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// What the proxy says about a client connection, prepared once per
/// connection.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    /// The client address as an `X-Forwarded-For` element.
    xff: HeaderValue,
    /// The client address as a `Forwarded` `for=` value (IPv6 quoted and
    /// bracketed, as RFC 7239 requires).
    forwarded_for: String,
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
            xff: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_for,
        }
    }
}

/// Appends the client to `X-Forwarded-For` and a `Forwarded` element
/// (`for=…;proto=http;host=…`), keeping what earlier proxies wrote.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, peer: &PeerInfo) {
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(peer.xff.clone());
        }
        Entry::Occupied(mut entry) => {
            let joined = join_list(entry.iter(), peer.xff.as_bytes());
            entry.insert(joined);
        }
    }

    let mut element = BytesMut::with_capacity(64);
    element.put_slice(b"for=");
    element.put_slice(peer.forwarded_for.as_bytes());
    element.put_slice(b";proto=http");
    if let Some(host) = headers.get(HOST) {
        element.put_slice(b";host=");
        put_token_or_quoted(&mut element, host.as_bytes());
    }
    match headers.entry(FORWARDED) {
        Entry::Vacant(entry) => {
            if let Ok(value) = HeaderValue::from_maybe_shared(element.freeze()) {
                entry.insert(value);
            }
        }
        Entry::Occupied(mut entry) => {
            let joined = join_list(entry.iter(), &element);
            entry.insert(joined);
        }
    }
}

/// All values of a list header plus `item`, as one comma-separated value.
fn join_list<'a>(values: impl Iterator<Item = &'a HeaderValue>, item: &[u8]) -> HeaderValue {
    let mut buf = BytesMut::with_capacity(128);
    for value in values {
        buf.put_slice(value.as_bytes());
        buf.put_slice(b", ");
    }
    buf.put_slice(item);
    let bytes: Bytes = buf.freeze();
    // Every part is already a valid header value, and ", " is too.
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Writes `value` as an RFC 7230 token when it is one, else as a
/// quoted-string (a `host:port` needs quoting: `:` is no token character).
fn put_token_or_quoted(buf: &mut BytesMut, value: &[u8]) {
    if !value.is_empty() && value.iter().all(|b| is_tchar(*b)) {
        buf.put_slice(value);
        return;
    }
    buf.put_u8(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            buf.put_u8(b'\\');
        }
        buf.put_u8(b);
    }
    buf.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Private"),
            ("connection", "x-other"),
            ("x-private", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "3"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-type", "x-kept"]);
    }

    #[test]
    fn forwarding_headers_are_appended() {
        let peer = PeerInfo::new("10.1.2.3".parse().unwrap());
        let mut h = map(&[("host", "shop.example:8080")]);
        add_forwarding(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(
            h["forwarded"],
            "for=10.1.2.3;proto=http;host=\"shop.example:8080\""
        );

        let mut h = map(&[
            ("host", "shop"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        add_forwarding(&mut h, &peer);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1, for=10.1.2.3;proto=http;host=shop"
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let peer = PeerInfo::new("::1".parse().unwrap());
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        let mapped = PeerInfo::new("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(mapped.xff, "127.0.0.1");
    }
}
