//! The Azure SDK's errors, mapped onto the shared HTTP status table.

use atlas_core::Error;
use atlas_core::backup::ObjectKey;
use azure_core::error::ErrorKind as AzureErrorKind;

use super::service::BACKEND;
use crate::cloud::status::{Access, Failure, unanswered};

/// The HTTP status of a service error, if the request got an answer.
pub(super) fn http_status(e: &azure_core::Error) -> Option<u16> {
    match e.kind() {
        AzureErrorKind::HttpResponse { status, .. } => Some(*status as u16),
        _ => None,
    }
}

fn error_code(e: &azure_core::Error) -> Option<String> {
    match e.kind() {
        AzureErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
        _ => None,
    }
}

/// Maps an SDK error of a request doing `access` (`what` on `key`) into
/// Atlas's categories. Beyond the status table: a commit whose blocks a
/// concurrent commit of the same key discarded (`400 InvalidBlockList`)
/// lost a race, a conflict like a refused create.
pub(super) fn map_err(e: azure_core::Error, access: Access, what: &str, key: &str) -> Error {
    let code = error_code(&e).unwrap_or_default();
    match (http_status(&e), e.kind()) {
        (Some(400), _) if code == "InvalidBlockList" && access != Access::Read => Error::conflict(
            format!("a concurrent write to blob {key} discarded this upload's blocks"),
        ),
        (Some(status), _) => Failure {
            backend: BACKEND,
            status,
            access,
            what,
            key,
            detail: &code,
        }
        .into_error(Some(e.into())),
        (None, AzureErrorKind::Io | AzureErrorKind::HttpResponse { .. }) => {
            unanswered(BACKEND, what, key, e)
        }
        (None, _) => Error::backend_with(BACKEND, format!("{what} {key}: {e}"), e),
    }
}

/// [`map_err`] for a put of `key` in `mode`.
pub(super) fn map_put_err(
    e: azure_core::Error,
    mode: atlas_core::backup::PutMode,
    what: &str,
    key: &ObjectKey,
) -> Error {
    map_err(e, Access::of_put(mode), what, key.as_str())
}
