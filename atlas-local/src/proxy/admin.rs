//! The admin endpoint: `GET /metrics` in the Prometheus text format.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::metrics::ProxyMetrics;

/// The admin endpoint's response body: complete, in memory.
pub(crate) type AdminBody = Full<Bytes>;

/// Answers one admin request: `/metrics` for GET and HEAD, 405 for other
/// methods on it, 404 elsewhere.
pub(crate) fn respond<B>(metrics: &ProxyMetrics, request: &Request<B>) -> Response<AdminBody> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let text = metrics.render_prometheus();
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
