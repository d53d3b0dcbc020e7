//! The JSON API's answers, mapped onto the shared HTTP status table.

use atlas_core::{Error, Result};

use super::service::BACKEND;
use crate::cloud::status::{Access, Failure, unanswered};

/// Sends a request; no answer at all is a transient error.
pub(super) async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    key: &str,
) -> Result<reqwest::Response> {
    req.send()
        .await
        .map_err(|e| unanswered(BACKEND, what, key, e))
}

/// The JSON body of a successful answer.
pub(super) async fn json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
    key: &str,
) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|e| {
        Error::transient_with(BACKEND, format!("{what} {key}: reading the answer"), e)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::backend_with(BACKEND, format!("{what} {key}: unexpected answer"), e))
}

/// Maps an unsuccessful answer to a request doing `access` into Atlas's
/// categories, with the start of the service's message. A failed
/// `ifGenerationMatch=0` (a create) is a conflict; a read pinned to a
/// generation that was replaced is transient.
pub(super) async fn status_error(
    resp: reqwest::Response,
    access: Access,
    what: &str,
    key: &str,
) -> Error {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let detail: String = text.chars().take(300).collect();
    Failure {
        backend: BACKEND,
        status,
        access,
        what,
        key,
        detail: detail.trim(),
    }
    .into_error(None)
}
