//! What every reference binary's `main` does: logging to stderr, a tokio
//! runtime, and an exit code from the program's result.

use std::future::Future;
use std::process::ExitCode;

/// The result of a reference program: success, a failed check
/// (`Ok(false)`, already explained on stdout), or an error.
pub type ProgramResult = Result<bool, Box<dyn std::error::Error>>;

/// The result of a reference program that picks its own exit status.
pub type StatusResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Installs a `tracing` subscriber writing to stderr (above any progress
/// bar, through [`LogWriter`](crate::cli::LogWriter)), filtered by
/// `RUST_LOG` or else by `default_filter` (e.g. `"error"`, `"warn"`).
pub fn init_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        // Log lines go above a progress bar rather than through it.
        .with_writer(|| crate::cli::LogWriter)
        .init();
}

/// Runs `program` on a multi-thread runtime and maps its result to an exit
/// code: 0 on `Ok(true)`, 1 on `Ok(false)` or an error (printed with
/// `name`).
pub fn run<F>(name: &str, program: F) -> ExitCode
where
    F: Future<Output = ProgramResult>,
{
    run_with_status(name, async {
        program.await.map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        })
    })
}

/// As [`run`], for a program that returns its exit status itself; an
/// error is printed with `name` and exits with 1.
pub fn run_with_status<F>(name: &str, program: F) -> ExitCode
where
    F: Future<Output = StatusResult>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(program) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
