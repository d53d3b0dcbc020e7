//! Releases the process and daemon tests run: small `sh` scripts and
//! Python's `http.server`, so nothing beyond a Debian base system is needed.
#![allow(dead_code)] // each test file uses its own part

use std::path::Path;

use atlas_core::Release;

/// The distribution's Python (it starts faster than a version-manager shim).
pub(crate) fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// `s` quoted for `sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A shell command as a release: `sh -c SCRIPT`.
pub(crate) fn script(version: &str, script: &str) -> Release {
    Release::new(version, "sh").with_arg("-c").with_arg(script)
}

/// An HTTP server on `127.0.0.1:$PORT` serving `dir`. http.server takes
/// the port as an argument, so `sh` passes `$PORT` on.
pub(crate) fn http_server(version: &str, dir: &Path) -> Release {
    script(
        version,
        &format!(
            "exec {} -m http.server --bind 127.0.0.1 --directory {} \"$PORT\"",
            shell_quote(&python()),
            shell_quote(&dir.display().to_string())
        ),
    )
    .with_env("PYTHONUNBUFFERED", "1")
}
