//! The WebSocket opening handshake's keys (RFC 6455 §4), for the
//! HTTP/1.1 upgrade the proxy makes upstream for an HTTP/2 client's
//! extended `CONNECT` (RFC 8441).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use sha1::{Digest as _, Sha1};

/// The GUID RFC 6455 appends to the key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64.
pub(crate) fn key() -> HeaderValue {
    let nonce: [u8; 16] = rand::random();
    // Base64 is always a valid header value.
    HeaderValue::from_str(&STANDARD.encode(nonce)).unwrap_or(HeaderValue::from_static(""))
}

/// Whether `accept` is the `Sec-WebSocket-Accept` answering `key`.
pub(crate) fn accepts(key: &[u8], accept: &[u8]) -> bool {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize()).as_bytes() == accept.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_the_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert!(accepts(
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        ));
        assert!(!accepts(b"dGhlIHNhbXBsZSBub25jZQ==", b"x"));
        let (a, b) = (key(), key());
        assert_ne!(a, b);
        assert_eq!(STANDARD.decode(a.as_bytes()).unwrap().len(), 16);
    }
}
