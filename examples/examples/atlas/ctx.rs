//! What every verb of `atlas` shares: the daemon client, the output
//! format, exit statuses and how errors are told.

use atlas_core::{Error, ErrorKind, ServiceName};
use atlas_examples::cli::OutputFormat;
use atlas_local::daemon::client::{AtlasdClient, RemoteStateStore};

/// Any error a verb ends with.
pub(crate) type Failure = Box<dyn std::error::Error>;

/// Promoted; or, for `abort`, rolled back; or any other verb done.
pub(crate) const EXIT_OK: u8 = 0;

/// The rollout ended the other way than asked.
pub(crate) const EXIT_OTHER_WAY: u8 = 1;

/// An error.
pub(crate) const EXIT_ERROR: u8 = 2;

/// Ctrl-C while driving a rollout.
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// The error's message, with a hint when the daemon did not answer.
pub(crate) fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<Error>() {
        Some(err)
            if err.kind() == ErrorKind::Transient && err.to_string().contains("not answering") =>
        {
            format!(
                "{err} (is atlasd running? the socket is --socket or ATLASD_SOCKET; --tcp for its TCP listener)"
            )
        }
        _ => e.to_string(),
    }
}

/// What every verb needs.
pub(crate) struct Ctx {
    pub(crate) client: AtlasdClient,
    pub(crate) output: OutputFormat,
}

impl Ctx {
    /// Whether scripts read the output (`--output json`).
    pub(crate) fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// A message for people: stdout in text mode, stderr under `--output
    /// json` (stdout then holds only JSON).
    pub(crate) fn say(&self, text: impl AsRef<str>) {
        if self.json() {
            eprintln!("{}", text.as_ref());
        } else {
            println!("{}", text.as_ref());
        }
    }

    /// The daemon's rollout states and leases.
    pub(crate) fn store(&self) -> RemoteStateStore {
        RemoteStateStore::new(self.client.clone())
    }
}

/// A service name from the command line.
pub(crate) fn parse_service(s: &str) -> Result<ServiceName, String> {
    ServiceName::new(s).map_err(|e| e.to_string())
}
