//! The access log: one JSON line per request routed to a slot.
//!
//! Off by default, and then the request path pays one branch on an
//! `Option` and nothing else: the method and path are copied, and a line
//! formatted, only when a log is configured. Lines are buffered and written
//! by whichever worker finishes a request, under one lock held only to
//! append; the buffer goes to the sink when it fills, once a second, and
//! when the router stops.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use atlas_core::{Error, Result, Slot};

/// Flush the buffer to the sink once it holds this much.
const BUFFER: usize = 64 * 1024;

/// Where the proxy's access log goes; set with
/// [`ProxyRouterBuilder::access_log`](super::ProxyRouterBuilder::access_log).
///
/// Each line is one JSON object:
///
/// ```text
/// {"time":"2026-12-05T05:35:00.123Z","service":"shop","slot":"blue","method":"POST","path":"/cart","status":201,"bytes":512,"duration_ms":1.482,"upstream":"127.0.0.1:7001"}
/// ```
///
/// `status` is the status the client got (the proxy's own 502, 503 or 504
/// when the exchange failed), `bytes` the response body bytes relayed,
/// `duration_ms` the time from the complete request head to the end of
/// the response, `upstream` the endpoint's address (`null` when none was
/// chosen).
///
/// Clones share one sink.
#[derive(Clone)]
pub struct AccessLog {
    sink: Arc<Mutex<Sink>>,
}

struct Sink {
    writer: Box<dyn Write + Send>,
    buffer: Vec<u8>,
    /// Set after a write error, reported once.
    failed: bool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// A log written to `writer` (a file, standard output, a pipe).
    pub fn to_writer(writer: impl Write + Send + 'static) -> Self {
        AccessLog {
            sink: Arc::new(Mutex::new(Sink {
                writer: Box::new(writer),
                buffer: Vec::with_capacity(BUFFER),
                failed: false,
            })),
        }
    }

    /// A log appended to the file at `path`, created if missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `access_log` when the file cannot be
    /// opened for appending.
    pub fn to_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Error::invalid(
                    "access_log",
                    format!("cannot open {} for appending: {e}", path.display()),
                )
            })?;
        Ok(Self::to_writer(file))
    }

    /// Appends one line.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let mut line = Vec::with_capacity(256);
        entry.write_json(&mut line);
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        sink.buffer.extend_from_slice(&line);
        if sink.buffer.len() >= BUFFER {
            sink.flush();
        }
    }

    /// Writes buffered lines to the sink.
    pub(crate) fn flush(&self) {
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Sink {
    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let written = self
            .writer
            .write_all(&self.buffer)
            .and_then(|()| self.writer.flush());
        self.buffer.clear();
        match written {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                tracing::warn!(error = %e, "the access log cannot be written; lines are dropped");
            }
            Err(_) => {}
        }
    }
}

/// What the log says about one request.
pub(crate) struct Entry<'a> {
    pub(crate) service: &'a str,
    pub(crate) slot: Slot,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream: Option<std::net::SocketAddr>,
}

impl Entry<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        // Method and path come from the client: serde_json escapes them.
        let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let upstream = self
            .upstream
            .map_or_else(|| "null".to_owned(), |a| format!("\"{a}\""));
        let _ = writeln!(
            out,
            r#"{{"time":"{}","service":{},"slot":"{}","method":{},"path":{},"status":{},"bytes":{},"duration_ms":{:.3},"upstream":{}}}"#,
            humantime::format_rfc3339_millis(SystemTime::now()),
            text(self.service),
            self.slot,
            text(self.method),
            text(self.path),
            self.status,
            self.bytes,
            self.duration.as_secs_f64() * 1000.0,
            upstream,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_json_with_every_field_and_escaped_client_text() {
        let out = Shared::default();
        let log = AccessLog::to_writer(out.clone());
        log.record(&Entry {
            service: "shop",
            slot: Slot::Green,
            method: "POST",
            path: "/a\"b\\c",
            status: 404,
            bytes: 9,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:7001".parse().unwrap()),
        });
        assert!(out.0.lock().unwrap().is_empty(), "buffered until flushed");
        log.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["service"], "shop");
        assert_eq!(v["slot"], "green");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/a\"b\\c");
        assert_eq!(v["status"], 404);
        assert_eq!(v["bytes"], 9);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "127.0.0.1:7001");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn an_unopenable_file_is_refused_by_name() {
        let err = AccessLog::to_file("/nonexistent-dir/x/access.log").unwrap_err();
        assert!(err.to_string().contains("access_log"), "{err}");
    }
}
