//! The S3 SDK's errors, mapped onto the shared HTTP status table.

use atlas_core::Error;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::service::BACKEND;
use crate::cloud::status::{Access, Failure, unanswered};

/// Maps an SDK error of a request doing `access` (`what` on `key`) into
/// Atlas's categories: the status table, except for the error codes that
/// say more than their status (S3 answers a timed-out upload with
/// `400 RequestTimeout`, which a retry fixes).
pub(super) fn map_err<E>(
    e: SdkError<E, HttpResponse>,
    access: Access,
    what: &str,
    key: &str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_owned();
            let message = se.err().message().unwrap_or("");
            let detail = format!("{code} {message}");
            let detail = detail.trim();
            match code.as_str() {
                "NoSuchKey" => Error::not_found(format!("object {key} in {BACKEND}")),
                "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" => {
                    Error::transient_with(
                        BACKEND,
                        format!("{what} {key}: HTTP {status} {detail}"),
                        e,
                    )
                }
                _ => Failure {
                    backend: BACKEND,
                    status,
                    access,
                    what,
                    key,
                    detail,
                }
                .into_error(Some(e.into())),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            unanswered(BACKEND, what, key, e)
        }
        _ => Error::backend_with(BACKEND, format!("{what} {key}: {e}"), e),
    }
}
