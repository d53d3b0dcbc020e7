//! What the real-service tests share: tracing, the services' addresses
//! (from the environment `cargo xtask test` exports, with its defaults),
//! and targets ready for use with short retries. Each test binary uses a
//! part of it.
#![allow(dead_code)]

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use atlas_core::backup::RetryConfig;

pub(crate) const MIB: usize = 1024 * 1024;

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,atlas_core=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `var` when set and not empty, else `default`.
pub(crate) fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// moto (complete S3 behaviour).
pub(crate) fn moto_url() -> String {
    env_or("ATLAS_TEST_S3_MOTO_URL", "http://127.0.0.1:9000")
}

/// s3s-fs (strict S3: signatures and checksums verified; keys testing/testing).
pub(crate) fn s3s_url() -> String {
    env_or("ATLAS_TEST_S3S_URL", "http://127.0.0.1:9001")
}

/// fake-gcs-server.
pub(crate) fn gcs_emulator() -> String {
    env_or("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
}

/// Azurite's blob endpoint.
pub(crate) fn azurite_url() -> String {
    env_or(
        "ATLAS_TEST_AZURITE_URL",
        "http://127.0.0.1:10000/devstoreaccount1",
    )
}

/// An S3 target on `bucket` at `endpoint`, the bucket created.
#[cfg(feature = "s3")]
pub(crate) async fn s3_target(endpoint: &str, bucket: &str) -> atlas_storage::S3Target {
    let target = atlas_storage::S3Target::builder()
        .with_bucket(bucket)
        .with_endpoint(endpoint)
        .with_path_style(true)
        .with_credentials("testing", "testing")
        .with_part_size(5 * MIB)
        .with_concurrency(4)
        .with_retry(RetryConfig::default().with_max_retries(2))
        .build()
        .unwrap();
    target.ensure_bucket().await.unwrap();
    target
}

/// A GCS target on `bucket` of fake-gcs-server, the bucket created.
#[cfg(feature = "gcs")]
pub(crate) async fn gcs_target(bucket: &str) -> atlas_storage::GcsTarget {
    let target = atlas_storage::GcsTarget::builder()
        .with_bucket(bucket)
        .with_endpoint(gcs_emulator())
        .with_anonymous_credentials()
        .with_chunk_size(4 * MIB)
        .with_retry(RetryConfig::default().with_max_retries(2))
        .build()
        .unwrap();
    target.ensure_bucket("atlas-test").await.unwrap();
    target
}

/// An Azure Blob target on `container` of Azurite, the container created.
#[cfg(feature = "azure")]
pub(crate) async fn azure_target(container: &str) -> atlas_storage::AzureBlobTarget {
    let target = atlas_storage::AzureBlobTarget::builder()
        .emulator(azurite_url())
        .with_container(container)
        .with_block_size(4 * MIB)
        .with_concurrency(4)
        .with_retry(RetryConfig::default().with_max_retries(2))
        .build()
        .unwrap();
    target.ensure_container().await.unwrap();
    target
}
