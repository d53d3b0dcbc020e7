//! The one error type of `atlas-core`, and the categories adapters map into.

use std::time::Duration;

/// A boxed error from a backend, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Atlas, by category.
///
/// Adapters map their backend's errors into these categories and name the
/// backend, so callers can decide what to do without knowing which backend
/// they talk to: retry a [`Error::Transient`], report an
/// [`Error::InvalidInput`], wait out a [`Error::Conflict`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input was refused before anything was done. `field` names what was
    /// wrong (a dotted path for nested config), `rule` the rule it broke.
    #[error("invalid {field}: {rule}")]
    InvalidInput {
        /// The field, argument or path that was wrong, e.g. `strategy.steps[2].set_weight`.
        field: String,
        /// The rule it broke, e.g. `must be between 0 and 100`.
        rule: String,
    },

    /// The named thing does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },

    /// Someone else changed or holds the thing: a stale compare-and-swap, a
    /// lease held by another controller, an object that already exists.
    #[error("conflict: {what}")]
    Conflict {
        /// What conflicted, and with whom where known.
        what: String,
    },

    /// The operation is not allowed in the current state (e.g. promoting a
    /// rollout that already finished).
    #[error("precondition failed: {what}")]
    Precondition {
        /// The unmet precondition.
        what: String,
    },

    /// A failure that may pass if the same call is retried (throttling, a
    /// 5xx, a reset connection, a timeout of one attempt).
    #[error("transient error from {backend}: {message}")]
    Transient {
        /// The backend that failed, e.g. `s3`, `proxy-router`.
        backend: String,
        /// What happened.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<BoxError>,
    },

    /// A backend failed in a way a retry will not fix.
    #[error("{backend} failed: {message}")]
    Backend {
        /// The backend that failed.
        backend: String,
        /// What happened.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<BoxError>,
    },

    /// Something did not finish within its deadline.
    #[error("deadline exceeded: {what} did not finish within {}", humantime::format_duration(*.after))]
    Deadline {
        /// What ran out of time.
        what: String,
        /// The deadline it had.
        after: Duration,
    },
}

/// The category of an [`Error`], for matching without the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::InvalidInput`].
    InvalidInput,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::Precondition`].
    Precondition,
    /// See [`Error::Transient`].
    Transient,
    /// See [`Error::Backend`].
    Backend,
    /// See [`Error::Deadline`].
    Deadline,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Precondition { .. } => ErrorKind::Precondition,
            Error::Transient { .. } => ErrorKind::Transient,
            Error::Backend { .. } => ErrorKind::Backend,
            Error::Deadline { .. } => ErrorKind::Deadline,
        }
    }

    /// Whether retrying the same call may succeed. Retry loops use this flag
    /// and nothing else.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// An [`Error::InvalidInput`] for `field` breaking `rule`.
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// An [`Error::Conflict`].
    pub fn conflict(what: impl Into<String>) -> Self {
        Error::Conflict { what: what.into() }
    }

    /// An [`Error::Precondition`].
    pub fn precondition(what: impl Into<String>) -> Self {
        Error::Precondition { what: what.into() }
    }

    /// An [`Error::Transient`] from `backend` with no source.
    pub fn transient(backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Transient {
            backend: backend.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Backend`] from `backend` with no source.
    pub fn backend(backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Backend`] from `backend` wrapping `source`.
    pub fn backend_with(
        backend: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend: backend.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An [`Error::Transient`] from `backend` wrapping `source`.
    pub fn transient_with(
        backend: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Transient {
            backend: backend.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An [`Error::Deadline`].
    pub fn deadline(what: impl Into<String>, after: Duration) -> Self {
        Error::Deadline {
            what: what.into(),
            after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_transient() {
        assert!(Error::transient("s3", "503").is_transient());
        assert!(!Error::backend("s3", "403").is_transient());
        assert!(!Error::conflict("lease").is_transient());
        assert!(!Error::deadline("step", Duration::from_secs(1)).is_transient());
    }

    #[test]
    fn messages_name_field_and_rule() {
        let e = Error::invalid("steps[2].set_weight", "must be between 0 and 100");
        assert_eq!(
            e.to_string(),
            "invalid steps[2].set_weight: must be between 0 and 100"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let d = Error::deadline("step 3", Duration::from_secs(600));
        assert_eq!(
            d.to_string(),
            "deadline exceeded: step 3 did not finish within 10m"
        );
    }
}
