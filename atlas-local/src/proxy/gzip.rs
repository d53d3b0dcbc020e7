//! Gzip compression of text responses for clients that accept it: the
//! policy, the decision for one response, and the streaming encoder, the
//! same for the HTTP/1.1 and the HTTP/2 paths.

use std::io::Write as _;

use httparse::Header;

use super::h1::Framing;

/// When the proxy compresses responses with gzip; set with
/// [`ProxyRouterBuilder::gzip`](super::ProxyRouterBuilder::gzip).
///
/// A response is compressed when all of these hold: the client's
/// `Accept-Encoding` accepts `gzip` (a q-value above 0), the request is
/// an HTTP/1.1 `GET`, `POST` or other non-`HEAD` request without `Range`,
/// the response is a `200` without `Content-Encoding` or `Content-Range`,
/// its media type is in [`content_types`](Self::content_types), and its
/// declared length is at least [`min_size`](Self::min_size) (a chunked
/// response, of unknown length, qualifies). It then goes out chunked with
/// `Content-Encoding: gzip`, and a strong `ETag` becomes weak, since the
/// bytes differ. Every response of a listed media type carries
/// `Vary: Accept-Encoding`, compressed or not, so caches keep both forms
/// apart.
///
/// A body of declared length up to 256 KiB is compressed in one call
/// once it has arrived (libdeflate: at level 1 about twice as fast as
/// zlib, and smaller); longer bodies and chunked ones are compressed as
/// they pass (zlib-rs), so a stream of unknown length is not held back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GzipPolicy {
    /// The smallest declared body compressed. Default 1024 bytes: below
    /// that, the gzip header and trailer eat most of the gain.
    pub min_size: u64,
    /// Media types compressed, without parameters, lowercase. Default:
    /// `text/html`, `text/plain`, `text/css`, `text/javascript`,
    /// `text/xml`, `application/javascript`, `application/json`,
    /// `application/xml`, `image/svg+xml`.
    pub content_types: Vec<String>,
    /// The compression level, 1 (fastest) to 9 (smallest). Default 1,
    /// as nginx's `gzip_comp_level`.
    pub level: u32,
}

impl Default for GzipPolicy {
    fn default() -> Self {
        GzipPolicy {
            min_size: 1024,
            content_types: [
                "text/html",
                "text/plain",
                "text/css",
                "text/javascript",
                "text/xml",
                "application/javascript",
                "application/json",
                "application/xml",
                "image/svg+xml",
            ]
            .map(str::to_owned)
            .to_vec(),
            level: 1,
        }
    }
}

impl GzipPolicy {
    /// Sets [`min_size`](Self::min_size).
    #[must_use]
    pub fn with_min_size(mut self, bytes: u64) -> Self {
        self.min_size = bytes;
        self
    }

    /// Sets [`content_types`](Self::content_types).
    #[must_use]
    pub fn with_content_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.content_types = types
            .into_iter()
            .map(|t| t.into().trim().to_ascii_lowercase())
            .collect();
        self
    }

    /// Sets [`level`](Self::level).
    #[must_use]
    pub fn with_level(mut self, level: u32) -> Self {
        self.level = level;
        self
    }

    /// Whether the response's media type is one compressed.
    pub(crate) fn compressible(&self, headers: &[Header<'_>]) -> bool {
        let Some(value) = header(headers, "content-type") else {
            return false;
        };
        let media = value.split(|&b| b == b';').next().unwrap_or(b"");
        let media = trim(media);
        self.content_types
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(media))
    }
}

/// How one response goes out: whether it carries `Vary: Accept-Encoding`
/// (a listed media type, compressed or not), and the level it is
/// compressed at, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GzipChoice {
    pub(crate) vary: bool,
    pub(crate) level: Option<u32>,
}

/// The choice for a response with `status`, `headers` and a body framed
/// as `from` to a request that `accepts` gzip ([`request_accepts`], not
/// `HEAD`, from a client that can take a body of unannounced length): a
/// listed media type not already encoded varies; it is compressed when it
/// is a `200` without `Content-Range` of at least the minimum length (or
/// of a length not known before its end, when chunked).
pub(crate) fn choose(
    policy: Option<&GzipPolicy>,
    accepts: bool,
    status: u16,
    headers: &[Header<'_>],
    from: Framing,
) -> GzipChoice {
    match policy {
        Some(policy)
            if policy.compressible(headers) && header(headers, "content-encoding").is_none() =>
        {
            let compress = accepts
                && status == 200
                && header(headers, "content-range").is_none()
                && match from {
                    Framing::Length(n) => n >= policy.min_size,
                    Framing::Chunked => true,
                    Framing::Empty | Framing::Close => false,
                };
            GzipChoice {
                vary: true,
                level: compress.then_some(policy.level),
            }
        }
        _ => GzipChoice {
            vary: false,
            level: None,
        },
    }
}

/// The `ETag` of a compressed response: a strong tag made weak, since the
/// compressed bytes are not the ones it names; `None` for a weak one.
pub(crate) fn weakened_etag(value: &[u8]) -> Option<Vec<u8>> {
    value.starts_with(b"\"").then(|| {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(value);
        weak
    })
}

/// The largest body of announced length compressed in one call when it
/// has fully arrived; longer ones, and bodies of unannounced length,
/// are compressed as they pass.
pub(crate) const WHOLE_MAX: u64 = 256 * 1024;

/// A gzip stream: what it has compressed so far waits in
/// [`output`](Self::output) for the caller to send.
///
/// A body whose length is announced and at most [`WHOLE_MAX`] is kept
/// until its end and compressed in one call by libdeflate, which at
/// level 1 is about twice as fast as zlib and compresses smaller (the
/// proxy has the whole body before the last byte goes out either way).
/// Other bodies are compressed as they pass by zlib-rs, so a stream of
/// unannounced length (server-sent events, say) goes out as it comes.
pub(crate) struct GzipStream {
    level: u32,
    mode: Mode,
}

enum Mode {
    /// Collecting a body of announced length; the compressed bytes once
    /// it ended.
    Whole {
        input: Vec<u8>,
        output: Vec<u8>,
    },
    Streaming(Box<flate2::write::GzEncoder<Vec<u8>>>),
}

thread_local! {
    /// This thread's libdeflate compressors, by level: set up once (its
    /// tables are larger than a small response), used by one response
    /// at a time.
    static COMPRESSORS: std::cell::RefCell<Vec<(u32, libdeflater::Compressor)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Buffers of ended whole-body compressions, for the next ones on
    /// this thread: freeing and allocating 100 KiB buffers for every
    /// response had glibc hand the memory back to the kernel and fault it
    /// in again each time (reusing them took a third off the proxy's CPU
    /// per request on 10:1 JSON, a fifth on prose).
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most spare buffers a thread keeps.
const SPARE_MAX: usize = 4;

/// An empty buffer with room for `capacity` bytes, a spare one if any.
fn take_buffer(capacity: usize) -> Vec<u8> {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut buf) => {
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Keeps `buf` for [`take_buffer`], unless the thread has enough or it is
/// larger than whole bodies need.
fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > 2 * WHOLE_MAX as usize {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAX {
            spare.push(buf);
        }
    });
}

impl GzipStream {
    /// A stream at `level` (clamped to 1–9) for a body of `length` bytes,
    /// if announced.
    pub(crate) fn new(level: u32, length: Option<u64>) -> Self {
        let level = level.clamp(1, 9);
        let mode = match length {
            Some(n) if n <= WHOLE_MAX => Mode::Whole {
                input: take_buffer(n as usize),
                output: Vec::new(),
            },
            _ => Mode::Streaming(streaming_encoder(level)),
        };
        GzipStream { level, mode }
    }

    /// Compresses `data`.
    pub(crate) fn write(&mut self, data: &[u8]) {
        match &mut self.mode {
            Mode::Whole { input, .. } if (input.len() + data.len()) as u64 <= WHOLE_MAX => {
                input.extend_from_slice(data);
            }
            // More than announced (the framing layers keep to the
            // length, so only by a bug): go on as a stream.
            Mode::Whole { input, .. } => {
                let mut encoder = streaming_encoder(self.level);
                let _ = encoder.write_all(input);
                let _ = encoder.write_all(data);
                give_back(std::mem::take(input));
                self.mode = Mode::Streaming(encoder);
            }
            // Writes to a Vec cannot fail.
            Mode::Streaming(encoder) => {
                let _ = encoder.write_all(data);
            }
        }
    }

    /// Ends the stream: the rest of it and the gzip trailer go to the
    /// output.
    pub(crate) fn finish(&mut self) {
        match &mut self.mode {
            Mode::Whole { input, output } => {
                if output.capacity() == 0 {
                    *output = take_buffer(0);
                }
                if !compress_whole(self.level, input, output) {
                    // libdeflate refused (it cannot with the bound's
                    // room): the same bytes through zlib-rs.
                    let mut encoder = streaming_encoder(self.level);
                    let _ = encoder.write_all(input);
                    let _ = encoder.try_finish();
                    *output = std::mem::take(encoder.get_mut());
                }
                give_back(std::mem::take(input));
            }
            Mode::Streaming(encoder) => {
                let _ = encoder.try_finish();
            }
        }
    }

    /// The compressed bytes not yet taken; the caller clears it.
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        match &mut self.mode {
            Mode::Whole { output, .. } => output,
            Mode::Streaming(encoder) => encoder.get_mut(),
        }
    }
}

impl Drop for GzipStream {
    fn drop(&mut self) {
        if let Mode::Whole { input, output } = &mut self.mode {
            give_back(std::mem::take(input));
            give_back(std::mem::take(output));
        }
    }
}

fn streaming_encoder(level: u32) -> Box<flate2::write::GzEncoder<Vec<u8>>> {
    Box::new(flate2::write::GzEncoder::new(
        Vec::with_capacity(16 * 1024),
        flate2::Compression::new(level),
    ))
}

/// `input` as one gzip member in `output` with this thread's libdeflate
/// compressor at `level` (1–9); false if it refused.
fn compress_whole(level: u32, input: &[u8], output: &mut Vec<u8>) -> bool {
    COMPRESSORS.with_borrow_mut(|compressors| {
        let at = match compressors.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                let Ok(lvl) = libdeflater::CompressionLvl::new(level as i32) else {
                    return false;
                };
                compressors.push((level, libdeflater::Compressor::new(lvl)));
                compressors.len() - 1
            }
        };
        let compressor = &mut compressors[at].1;
        output.resize(compressor.gzip_compress_bound(input.len()), 0);
        match compressor.gzip_compress(input, output) {
            Ok(n) => {
                output.truncate(n);
                true
            }
            Err(_) => {
                output.clear();
                false
            }
        }
    })
}

/// Whether a request with `headers` may get a gzip response: its
/// `Accept-Encoding` lists `gzip` or `*` with a q-value above 0, and it
/// asks for no range.
pub(crate) fn request_accepts(headers: &[Header<'_>]) -> bool {
    if header(headers, "range").is_some() {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|item| {
            let mut parts = item.split(|&b| b == b';');
            let coding = trim(parts.next().unwrap_or(b""));
            if !(coding.eq_ignore_ascii_case(b"gzip") || coding == b"*") {
                return false;
            }
            // `q=0` (or 0.0, 0.00…) refuses it.
            !parts.any(|p| {
                let p = trim(p);
                p.len() >= 2
                    && p[..2].eq_ignore_ascii_case(b"q=")
                    && p[2..].iter().all(|&b| b == b'0' || b == b'.')
            })
        })
}

/// The first value of header `name`.
pub(crate) fn header<'a>(headers: &[Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Header<'a>> {
        pairs
            .iter()
            .map(|(n, v)| Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        assert!(request_accepts(&h(&[(
            "Accept-Encoding",
            "gzip, deflate, br"
        )])));
        assert!(request_accepts(&h(&[(
            "accept-encoding",
            "br;q=1, GZIP;q=0.5"
        )])));
        assert!(request_accepts(&h(&[("accept-encoding", "*")])));
        assert!(!request_accepts(&h(&[("accept-encoding", "gzip;q=0")])));
        assert!(!request_accepts(&h(&[(
            "accept-encoding",
            "gzip; q=0.000"
        )])));
        assert!(!request_accepts(&h(&[("accept-encoding", "br, identity")])));
        assert!(!request_accepts(&h(&[])));
        assert!(!request_accepts(&h(&[
            ("accept-encoding", "gzip"),
            ("range", "bytes=0-10")
        ])));
    }

    #[test]
    fn media_types_are_matched_without_parameters() {
        let p = GzipPolicy::default();
        assert!(p.compressible(&h(&[("Content-Type", "text/html; charset=utf-8")])));
        assert!(p.compressible(&h(&[("content-type", "Application/JSON")])));
        assert!(!p.compressible(&h(&[("content-type", "image/png")])));
        assert!(!p.compressible(&h(&[])));
        let p = p.with_content_types(["Text/CSV "]);
        assert!(p.compressible(&h(&[("content-type", "text/csv")])));
        assert!(!p.compressible(&h(&[("content-type", "text/html")])));
    }

    /// Text that compresses as prose does: words of a vocabulary drawn
    /// by a seeded generator.
    fn prose(n: usize) -> Vec<u8> {
        let words = [
            "proxy", "replica", "the", "of", "canary", "a", "rollout", "and",
        ];
        let mut state = 7u64;
        let mut out = Vec::new();
        while out.len() < n {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(words[(state >> 59) as usize % words.len()].as_bytes());
            out.push(if (state >> 40).is_multiple_of(11) {
                b'\n'
            } else {
                b' '
            });
        }
        out.truncate(n);
        out
    }

    /// Everything a stream put out, written in `pieces`, after its end.
    fn compress(level: u32, length: Option<u64>, pieces: &[&[u8]]) -> Vec<u8> {
        let mut stream = GzipStream::new(level, length);
        let mut sent = Vec::new();
        for piece in pieces {
            stream.write(piece);
            sent.append(stream.output());
        }
        stream.finish();
        sent.append(stream.output());
        sent
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut plain).unwrap();
        plain
    }

    #[test]
    fn bodies_of_announced_length_are_compressed_whole_and_others_as_they_pass() {
        let text = prose(200_000);
        let pieces: Vec<&[u8]> = text.chunks(16 * 1024).collect();
        // Announced and small enough: nothing goes out before the end,
        // then one gzip member of the whole body.
        let mut stream = GzipStream::new(1, Some(text.len() as u64));
        for piece in &pieces {
            stream.write(piece);
            assert!(stream.output().is_empty());
        }
        stream.finish();
        let whole = std::mem::take(stream.output());
        assert_eq!(gunzip(&whole), text);
        // Unannounced: compressed output leaves before the end.
        let mut stream = GzipStream::new(1, None);
        let mut early = 0;
        for piece in &pieces {
            stream.write(piece);
            early += std::mem::take(stream.output()).len();
        }
        assert!(early > 0);
        let streamed = compress(1, None, &pieces);
        assert_eq!(gunzip(&streamed), text);
        // Whole bodies come out smaller than zlib-rs's level 1 stream.
        assert!(
            whole.len() < streamed.len(),
            "{} vs {}",
            whole.len(),
            streamed.len()
        );
        // Every level round-trips; higher levels are no larger.
        let mut last = usize::MAX;
        for level in [1, 6, 9] {
            let out = compress(level, Some(text.len() as u64), &pieces);
            assert_eq!(gunzip(&out), text);
            assert!(out.len() <= last);
            last = out.len();
        }
    }

    #[test]
    fn lengths_at_the_edges_still_round_trip() {
        let text = prose(WHOLE_MAX as usize + 1);
        let at_most = &text[..WHOLE_MAX as usize];
        for (length, body) in [
            (Some(0), &text[..0]),
            (Some(1), &text[..1]),
            (Some(WHOLE_MAX), at_most),
            // Above the limit: streamed.
            (Some(WHOLE_MAX + 1), &text[..]),
            (None, &text[..0]),
        ] {
            let pieces: Vec<&[u8]> = body.chunks(5000).collect();
            assert_eq!(gunzip(&compress(1, length, &pieces)), body, "{length:?}");
        }
        // More than announced (a framing bug): nothing lost, streamed on.
        let pieces: Vec<&[u8]> = text.chunks(5000).collect();
        assert_eq!(gunzip(&compress(1, Some(10), &pieces)), text);
        // Levels outside 1-9 are clamped, not refused.
        assert_eq!(gunzip(&compress(0, Some(5), &[b"hello"])), b"hello");
        assert_eq!(gunzip(&compress(12, Some(5), &[b"hello"])), b"hello");
    }

    #[test]
    fn whole_body_buffers_are_reused_by_the_next_response_on_the_thread() {
        let spares = || SPARE.with_borrow(Vec::len);
        let text = prose(50_000);
        let first = compress(1, Some(50_000), &[&text]);
        // The input and the output buffer came back.
        assert_eq!(spares(), 2);
        let second = compress(1, Some(50_000), &[&text[..25_000], &text[25_000..]]);
        assert_eq!(first, second);
        assert_eq!(spares(), 2);
        assert_eq!(gunzip(&second), text);
        // Many at once: no more than SPARE_MAX kept.
        let streams: Vec<GzipStream> = (0..10)
            .map(|_| {
                let mut stream = GzipStream::new(1, Some(10));
                stream.write(b"0123456789");
                stream.finish();
                stream
            })
            .collect();
        drop(streams);
        assert_eq!(spares(), SPARE_MAX);
    }
}
