//! What the reference binaries' command lines share: the `--output`
//! choice, where progress is drawn, and JSON on stdout.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, WeakProgressBar};

/// How a verb prints its result: text for people, or one JSON document on
/// stdout for scripts (progress and warnings stay on stderr either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lines for a person to read.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Where progress bars draw: stderr when it is a terminal, nowhere under
/// `--quiet` or when stderr is a file or a pipe, where redrawn lines would
/// only fill a log.
pub fn progress_target(quiet: bool) -> ProgressDrawTarget {
    if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// The bar being drawn, if any, for [`LogWriter`]. Weak, so that a bar
/// dropped without being finished is still cleaned up as indicatif does.
static DRAWN_BAR: Mutex<Option<WeakProgressBar>> = Mutex::new(None);

/// A progress bar on [`progress_target`]; when it is drawn, log lines
/// written through [`LogWriter`] appear above it instead of on its line.
pub fn progress_bar(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, progress_target(quiet));
    if !bar.is_hidden() {
        *DRAWN_BAR.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.downgrade());
    }
    bar
}

/// Standard error for log lines (the `tracing` subscriber of
/// [`main_support::init_tracing`](crate::main_support::init_tracing)):
/// while a progress bar is drawn, the bar is lifted for each line and
/// redrawn below it, so that a warning and the bar never share a line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = DRAWN_BAR
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(WeakProgressBar::upgrade);
        let write = || std::io::stderr().lock().write_all(buf);
        match bar {
            Some(bar) => bar.suspend(write)?,
            None => write()?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A ticking spinner on [`progress_target`] showing `prefix`, the time
/// spent and `message`; call `finish_with_message` or `finish_and_clear`
/// on it when the work is done.
pub fn spinner(
    quiet: bool,
    prefix: impl Into<Cow<'static, str>>,
    message: impl Into<Cow<'static, str>>,
) -> ProgressBar {
    let bar = progress_bar(quiet);
    if bar.is_hidden() {
        return bar;
    }
    bar.set_style(style(
        "{spinner:.green} {prefix:.bold} {elapsed} {wide_msg}",
    ));
    bar.set_prefix(prefix);
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A progress style from `template`. The templates are constants of these
/// programs; should one not parse, the bar falls back to a plain spinner
/// rather than stopping the work it reports on.
pub fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

/// Prints `value` as pretty JSON on stdout, followed by a newline.
///
/// # Errors
/// When stdout is closed (a pipe whose reader went away) or `value`
/// cannot be serialized (a map with non-string keys); `println!` would
/// panic on the former.
pub fn print_json<T: serde::Serialize>(value: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()
}
