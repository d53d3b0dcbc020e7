//! End-to-end scenarios across Atlas's crates live in `tests/tests/`.
//!
//! This library also compiles the repository README's code as doctests, so
//! the embedding example a newcomer copies is known to work.

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(feature = "postgres")]
pub mod postgres;

/// The settings a command-line user would export to reach the cloud
/// emulators `cargo xtask test` starts (s3s-fs, fake-gcs-server, Azurite),
/// each overridable by the variable the test servers are announced in.
pub fn cloud_test_env() -> Vec<(String, String)> {
    let env_or =
        |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_owned());
    [
        (
            "AWS_ENDPOINT_URL",
            env_or("ATLAS_TEST_S3S_URL", "http://127.0.0.1:9001"),
        ),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("ATLAS_S3_PATH_STYLE", "true".to_owned()),
        (
            "STORAGE_EMULATOR_HOST",
            env_or("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443"),
        ),
        ("GOOGLE_CLOUD_PROJECT", "atlas-test".to_owned()),
        (
            "ATLAS_AZURE_EMULATOR",
            env_or(
                "ATLAS_TEST_AZURITE_URL",
                "http://127.0.0.1:10000/devstoreaccount1",
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
