//! How Kubernetes API failures map into Atlas's error categories.
//!
//! | API answer | `atlas_core::Error` |
//! |---|---|
//! | 404 Not Found | `NotFound` |
//! | 409 Conflict (a stale `resourceVersion`, an apply conflict, an existing name) | `Conflict` |
//! | 400 / 422 (the object was refused as invalid) | `InvalidInput`, naming the object |
//! | 429, 500, 502, 503, 504, a timeout, a broken connection | `Transient` (retried by `atlas_core::retry::Retrying`) |
//! | 401 / 403 and anything else | `Backend`, naming `kubernetes` |

use atlas_core::Error;

/// The backend name every error of this crate carries.
pub const BACKEND: &str = "kubernetes";

/// Maps a kube error met while doing `what` (e.g. `patching Deployment
/// shop/checkout-green`) into Atlas's categories.
pub fn map_kube_error(what: &str, error: kube::Error) -> Error {
    match &error {
        kube::Error::Api(status) => {
            let code = status.code;
            let reason = format!("{what}: {} ({code} {})", status.message, status.reason);
            match code {
                404 => Error::not_found(reason),
                409 => Error::conflict(reason),
                400 | 422 => {
                    Error::invalid(what.to_owned(), format!("{} ({code})", status.message))
                }
                408 | 429 | 500 | 502 | 503 | 504 => Error::transient_with(BACKEND, reason, error),
                _ => Error::backend_with(BACKEND, reason, error),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            Error::transient_with(BACKEND, format!("{what}: {error}"), error)
        }
        _ => Error::backend_with(BACKEND, format!("{what}: {error}"), error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas_core::ErrorKind;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn statuses_map_to_categories() {
        let kind = |code| map_kube_error("doing it", api(code)).kind();
        assert_eq!(kind(404), ErrorKind::NotFound);
        assert_eq!(kind(409), ErrorKind::Conflict);
        assert_eq!(kind(422), ErrorKind::InvalidInput);
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(map_kube_error("x", api(code)).is_transient(), "{code}");
        }
        for code in [401, 403, 405] {
            assert_eq!(kind(code), ErrorKind::Backend, "{code}");
        }
    }
}
