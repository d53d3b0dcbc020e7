//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong reading reports and evaluating gates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A report file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A report is not in the format its parser reads. A malformed report
    /// never passes a gate.
    #[error("{format} report {origin} is malformed: {detail}")]
    Malformed {
        /// The format, e.g. `JUnit XML`.
        format: &'static str,
        /// Where the report came from (a path, or `<memory>`).
        origin: String,
        /// What is wrong, with the position when the parser knows it.
        detail: String,
    },
    /// A setting breaks a rule.
    #[error("invalid {field}: {rule}")]
    InvalidInput {
        /// The dotted setting, e.g. `coverage.min_line_rate`.
        field: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A gate's data source (the state store, a custom check) failed.
    #[error("{what} failed: {source}")]
    Source {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: atlas_core::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            rule: rule.into(),
        }
    }

    pub(crate) fn malformed(format: &'static str, origin: &str, detail: impl Into<String>) -> Self {
        Error::Malformed {
            format,
            origin: origin.to_string(),
            detail: detail.into(),
        }
    }
}

impl From<Error> for atlas_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidInput { field, rule } => atlas_core::Error::invalid(field, rule),
            Error::Source { source, .. } => source,
            other => atlas_core::Error::backend_with("gates", "reading a report", other),
        }
    }
}

/// Reads `path` as text, naming it on failure.
pub(crate) fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}
