//! What the S3, GCS and Azure builders share: the transfer settings (part
//! size, parts in flight, retry policy) and the checks of their common
//! fields, so each rule and its message is written once.

use std::ops::RangeInclusive;

use atlas_core::backup::RetryConfig;
use atlas_core::{Error, Result};

/// How a target moves a body: parts of `part_size` bytes, `concurrency` of
/// them in flight while the next is read, every request under `retry`.
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    pub(crate) part_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) retry: RetryConfig,
}

impl Transfer {
    /// The cloud targets' defaults: 8 MiB parts, 4 in flight, the default
    /// retry policy.
    pub(crate) fn cloud_default() -> Self {
        Transfer {
            part_size: 8 * 1024 * 1024,
            concurrency: 4,
            retry: RetryConfig::default(),
        }
    }

    /// Checks the settings: the part size within `sizes` (reported as
    /// `part_field`, with `limits` saying why, e.g. "S3's part limits"), at
    /// least one part in flight, a valid retry policy.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub(crate) fn validate(
        &self,
        part_field: &str,
        sizes: RangeInclusive<usize>,
        limits: &str,
    ) -> Result<()> {
        if !sizes.contains(&self.part_size) {
            return Err(Error::invalid(
                part_field,
                format!(
                    "must be between {} and {} ({limits}), got {}",
                    bytes(*sizes.start()),
                    bytes(*sizes.end()),
                    self.part_size
                ),
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        self.retry.validate("retry")
    }

    /// The most bytes of a put's body the target holds at once: the parts
    /// in flight and the one being read.
    pub(crate) fn max_buffered_bytes(&self) -> u64 {
        self.part_size as u64 * (self.concurrency as u64 + 1)
    }
}

/// `1 byte`, `5 MiB`, `5 GiB`: a size limit as a person reads it.
fn bytes(n: usize) -> String {
    const KIB: usize = 1024;
    match n {
        1 => "1 byte".to_owned(),
        n if n >= KIB * KIB * KIB && n.is_multiple_of(KIB * KIB * KIB) => {
            format!("{} GiB", n / (KIB * KIB * KIB))
        }
        n if n >= KIB * KIB && n.is_multiple_of(KIB * KIB) => format!("{} MiB", n / (KIB * KIB)),
        n if n >= KIB && n.is_multiple_of(KIB) => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

/// The bucket or container name, which is required: `value` when set and
/// not empty.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` and the variable `env_var` that
/// also sets it.
pub(crate) fn required(value: Option<String>, field: &str, env_var: &str) -> Result<String> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::invalid(field, format!("is required (or set {env_var})")))
}

/// Refuses an endpoint that is not an `http://` or `https://` URL.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` (a builder field or a variable).
pub(crate) fn check_endpoint(field: &str, endpoint: &str) -> Result<()> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("must be an http:// or https:// URL, got {endpoint:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn field(e: Error) -> String {
        match e {
            Error::InvalidInput { field, rule } => format!("{field}: {rule}"),
            other => panic!("expected InvalidInput, got {other}"),
        }
    }

    #[test]
    fn transfers_are_checked_field_by_field() {
        let ok = Transfer::cloud_default();
        ok.validate("part_size", 5 * MIB..=5 * 1024 * MIB, "S3's part limits")
            .unwrap();
        assert_eq!(ok.max_buffered_bytes(), 5 * 8 * MIB as u64);
        let small = Transfer {
            part_size: 1024,
            ..Transfer::cloud_default()
        };
        let e = field(
            small
                .validate("part_size", 5 * MIB..=5 * 1024 * MIB, "S3's part limits")
                .unwrap_err(),
        );
        assert_eq!(
            e,
            "part_size: must be between 5 MiB and 5 GiB (S3's part limits), got 1024"
        );
        let none = Transfer {
            concurrency: 0,
            ..Transfer::cloud_default()
        };
        assert!(
            field(none.validate("block_size", 1..=16 * MIB, "x").unwrap_err())
                .starts_with("concurrency")
        );
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(4000 * MIB), "4000 MiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }

    #[test]
    fn names_and_endpoints_are_checked() {
        assert_eq!(required(Some("b".into()), "bucket", "X").unwrap(), "b");
        assert_eq!(
            field(required(Some(String::new()), "bucket", "ATLAS_S3_BUCKET").unwrap_err()),
            "bucket: is required (or set ATLAS_S3_BUCKET)"
        );
        assert!(required(None, "container", "Y").is_err());
        check_endpoint("endpoint", "https://s3.example").unwrap();
        assert!(
            field(check_endpoint("endpoint", "127.0.0.1:9000").unwrap_err())
                .starts_with("endpoint")
        );
    }
}
