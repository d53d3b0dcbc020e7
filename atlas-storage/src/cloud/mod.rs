//! What the S3, GCS and Azure targets share, so that each concern is
//! written once: the HTTP status table ([`status`]), the checksum encodings
//! ([`checksum`]), the abort-on-drop guard of uploads ([`abort`]), cutting
//! and uploading parts ([`parts`]), the choice between a single and a
//! multipart put ([`put`]), paginated listings ([`list`]), the
//! builders' common settings and checks ([`config`]) and redacted
//! credentials ([`secret`]).

pub(crate) mod abort;
pub(crate) mod checksum;
pub(crate) mod config;
pub(crate) mod list;
pub(crate) mod parts;
pub(crate) mod put;
#[cfg(any(feature = "s3", feature = "azure"))]
pub(crate) mod secret;
pub(crate) mod status;

use atlas_core::Error;
use atlas_core::backup::{ByteStream, ObjectKey};
use atlas_core::error::BoxError;
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};

/// The error of a create whose key exists: the contract's
/// [`Error::Conflict`], naming the backend.
#[cfg(any(feature = "s3", feature = "gcs"))]
pub(crate) fn already_exists(backend: &str, key: &ObjectKey) -> Error {
    Error::conflict(format!("object {key} already exists in {backend}"))
}

/// An entity tag without its quotes, as the contract reports it.
#[cfg(any(feature = "s3", feature = "azure"))]
pub(crate) fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// A get's body as the contract streams it: the transport's errors become
/// transient errors naming the key, and the stream ends after the first.
pub(crate) fn body_stream<S, E>(backend: &'static str, key: &ObjectKey, body: S) -> ByteStream
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError>,
{
    let key = key.to_string();
    stream::unfold(Some(Box::pin(body)), move |body| {
        let key = key.clone();
        async move {
            let mut body = body?;
            match body.next().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                Some(Err(e)) => Some((
                    Err(Error::transient_with(
                        backend,
                        format!("reading the body of {key}"),
                        e,
                    )),
                    None,
                )),
                None => None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_ends_after_its_first_error_which_is_transient() {
        let key = ObjectKey::new("a/b").unwrap();
        let items: Vec<std::result::Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("reset")),
            Ok(Bytes::from_static(b"never")),
        ];
        let out: Vec<_> = body_stream("s3", &key, stream::iter(items)).collect().await;
        assert_eq!(out.len(), 2);
        let e = out[1].as_ref().unwrap_err();
        assert!(e.is_transient() && e.to_string().contains("a/b"), "{e}");
        #[cfg(any(feature = "s3", feature = "gcs"))]
        assert_eq!(
            already_exists("gcs", &key).kind(),
            atlas_core::ErrorKind::Conflict
        );
    }
}
