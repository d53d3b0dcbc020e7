//! The one table from an HTTP status to an error category, for the S3, GCS
//! and Azure targets alike.
//!
//! | status | category |
//! |---|---|
//! | 404 | [`ErrorKind::NotFound`] |
//! | 409, 412 on a conditional create | [`ErrorKind::Conflict`]: the key exists, or a concurrent create won |
//! | 412 on a read pinned to a version | [`ErrorKind::Transient`]: the object changed while being read, and a retry reads it again |
//! | 409 otherwise | [`ErrorKind::Conflict`]: another operation on the object holds it |
//! | 412 otherwise | [`ErrorKind::Precondition`] |
//! | 416 | [`ErrorKind::InvalidInput`] on the field `range` |
//! | 408, 429, 500, 502, 503, 504 | [`ErrorKind::Transient`] |
//! | anything else (400, 401, 403, 501, …) | [`ErrorKind::Backend`], naming the backend: a retry will not fix it |
//!
//! Backends refine the table only where their answers carry more than the
//! status (an S3 error code, an Azure block list that a concurrent commit
//! discarded) and map failures without a status (a refused connection, a
//! timeout) as transient themselves.

use atlas_core::backup::PutMode;
use atlas_core::error::BoxError;
use atlas_core::{Error, ErrorKind};

/// What the failed request was doing; decides what 409 and 412 mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A head, get, list or delete. A get may be pinned to the version its
    /// head saw (`If-Match`, a GCS generation).
    Read,
    /// A put-if-absent: sent with `If-None-Match: *` or
    /// `ifGenerationMatch=0`.
    Create,
    /// Any other request: an overwrite, a part, a session, a bucket call.
    Write,
}

impl Access {
    /// What a put in `mode` does: a create is sent with a condition that
    /// the key is absent.
    pub(crate) fn of_put(mode: PutMode) -> Self {
        match mode {
            PutMode::Create => Access::Create,
            _ => Access::Write,
        }
    }
}

/// The category of an unsuccessful answer with `status` to a request doing
/// `access`.
pub(crate) fn kind_of(status: u16, access: Access) -> ErrorKind {
    match (status, access) {
        (404, _) => ErrorKind::NotFound,
        (409 | 412, Access::Create) => ErrorKind::Conflict,
        (412, Access::Read) => ErrorKind::Transient,
        (409, _) => ErrorKind::Conflict,
        (412, _) => ErrorKind::Precondition,
        (416, _) => ErrorKind::InvalidInput,
        (408 | 429 | 500 | 502 | 503 | 504, _) => ErrorKind::Transient,
        _ => ErrorKind::Backend,
    }
}

/// An unsuccessful answer, to turn into an [`Error`].
#[derive(Debug)]
pub(crate) struct Failure<'a> {
    /// The backend: `s3`, `gcs`, `azure`.
    pub(crate) backend: &'a str,
    /// The HTTP status.
    pub(crate) status: u16,
    /// What the request was doing.
    pub(crate) access: Access,
    /// The request, for messages: `put`, `upload part 3`, `list`.
    pub(crate) what: &'a str,
    /// The object key (or the prefix, bucket or container) it was about.
    pub(crate) key: &'a str,
    /// The service's error code and message, if any; never a credential.
    pub(crate) detail: &'a str,
}

impl Failure<'_> {
    /// The error of the table's category, with a message naming the
    /// request, the key, the status and the service's detail, and `source`
    /// kept where the category has one.
    pub(crate) fn into_error(self, source: Option<BoxError>) -> Error {
        let Failure {
            backend,
            status,
            access,
            what,
            key,
            detail,
        } = self;
        let text = if detail.is_empty() {
            format!("{what} {key}: HTTP {status}")
        } else {
            format!("{what} {key}: HTTP {status} {detail}")
        };
        match kind_of(status, access) {
            ErrorKind::NotFound => Error::not_found(format!("object {key} in {backend}")),
            ErrorKind::Conflict if access == Access::Create => Error::conflict(format!(
                "object {key} already exists in {backend} (or a concurrent create won): {text}"
            )),
            ErrorKind::Conflict => Error::conflict(format!(
                "another operation holds object {key} in {backend}: {text}"
            )),
            ErrorKind::Precondition => {
                Error::precondition(format!("{backend} refused {what} of {key}: {text}"))
            }
            ErrorKind::InvalidInput => Error::invalid(
                "range",
                format!("starts at or past the end of object {key} in {backend}"),
            ),
            ErrorKind::Transient => {
                let text = if status == 412 {
                    format!("{what} {key}: the object changed while being read (HTTP 412)")
                } else {
                    text
                };
                match source {
                    Some(s) => Error::transient_with(backend, text, s),
                    None => Error::transient(backend, text),
                }
            }
            _ => match source {
                Some(s) => Error::backend_with(backend, text, s),
                None => Error::backend(backend, text),
            },
        }
    }
}

/// A request that got no answer (a refused or reset connection, a timeout):
/// transient, as a retry may reach the service.
pub(crate) fn unanswered(
    backend: &str,
    what: &str,
    key: &str,
    source: impl Into<BoxError>,
) -> Error {
    let source = source.into();
    Error::transient_with(backend, format!("{what} {key}: {source}"), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Access; 3] = [Access::Read, Access::Create, Access::Write];

    #[test]
    fn the_table_is_the_same_for_every_backend_and_access() {
        for access in ALL {
            assert_eq!(kind_of(404, access), ErrorKind::NotFound, "{access:?}");
            assert_eq!(kind_of(416, access), ErrorKind::InvalidInput, "{access:?}");
            for status in [408, 429, 500, 502, 503, 504] {
                assert_eq!(
                    kind_of(status, access),
                    ErrorKind::Transient,
                    "{status} {access:?}"
                );
            }
            for status in [301, 400, 401, 403, 405, 411, 413, 501, 505] {
                assert_eq!(
                    kind_of(status, access),
                    ErrorKind::Backend,
                    "{status} {access:?}"
                );
            }
        }
    }

    #[test]
    fn conflicts_and_preconditions_follow_the_contract() {
        // A create of an existing key, or one a concurrent create beat.
        assert_eq!(kind_of(409, Access::Create), ErrorKind::Conflict);
        assert_eq!(kind_of(412, Access::Create), ErrorKind::Conflict);
        // A read pinned to a version the object no longer has: read again.
        assert_eq!(kind_of(412, Access::Read), ErrorKind::Transient);
        assert_eq!(kind_of(409, Access::Read), ErrorKind::Conflict);
        assert_eq!(kind_of(409, Access::Write), ErrorKind::Conflict);
        assert_eq!(kind_of(412, Access::Write), ErrorKind::Precondition);
    }

    fn failure(status: u16, access: Access) -> Failure<'static> {
        Failure {
            backend: "s3",
            status,
            access,
            what: "put",
            key: "a/b",
            detail: "AccessDenied no",
        }
    }

    #[test]
    fn errors_name_the_backend_and_keep_their_source() {
        for status in [400, 401, 403] {
            let e = failure(status, Access::Write).into_error(Some("cause".into()));
            match &e {
                Error::Backend {
                    backend, message, ..
                } => {
                    assert_eq!(backend, "s3");
                    assert!(message.contains(&format!("HTTP {status}")), "{message}");
                    assert!(message.contains("AccessDenied"), "{message}");
                }
                other => panic!("{status}: expected Backend, got {other:?}"),
            }
            assert!(!e.is_transient());
            assert!(std::error::Error::source(&e).is_some(), "{status}");
        }
        let e = failure(503, Access::Read).into_error(None);
        assert!(e.is_transient() && e.to_string().contains("s3"), "{e}");
        let e = failure(408, Access::Write).into_error(None);
        assert!(
            e.is_transient(),
            "408 is retried like the other timeouts: {e}"
        );
        let e = failure(412, Access::Read).into_error(None);
        assert!(e.to_string().contains("changed while being read"), "{e}");
        let e = failure(412, Access::Create).into_error(None);
        assert!(e.to_string().contains("already exists in s3"), "{e}");
        let e = failure(404, Access::Read).into_error(None);
        assert_eq!(e.to_string(), "not found: object a/b in s3");
        match failure(416, Access::Read).into_error(None) {
            Error::InvalidInput { field, .. } => assert_eq!(field, "range"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn unanswered_requests_are_transient() {
        let e = unanswered("gcs", "head", "k", "connection refused");
        assert!(e.is_transient());
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
