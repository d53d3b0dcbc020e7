//! The demo app: a small HTTP service to roll out with Atlas, which reports
//! its version, slot and replica and can inject errors, latency, failing
//! health checks and crashes. See `atlas_examples::demo_app` for the flags.
//!
//! Run it:
//!
//! ```text
//! cargo run --example demo_app -- --port 8080 --version v2 --error-rate 0.1
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! Stop it with Ctrl-C or SIGTERM: it finishes requests in flight and exits 0.

use std::process::ExitCode;

fn main() -> ExitCode {
    atlas_examples::demo_app::main_from_args(std::env::args().skip(1))
}
