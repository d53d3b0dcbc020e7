//! `TargetUrl::open_with_env`: cloud targets opened from a URL with
//! settings from a map instead of the process environment.
//!
//! The ignored tests run against the real services (s3s-fs,
//! fake-gcs-server, Azurite), which `cargo xtask test` starts; by hand:
//! `cargo test -p atlas-storage --all-features --test url -- --include-ignored`
//! with `ATLAS_TEST_S3S_URL`, `STORAGE_EMULATOR_HOST` and
//! `ATLAS_TEST_AZURITE_URL` pointing at them (defaults as in `common`).
//! Each run uses a fresh bucket, so "missing" and "created" are both real.
//! The others need no service: settings are refused before any request.
use std::collections::HashMap;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use std::sync::Arc;

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use atlas_core::Error;
use atlas_core::ErrorKind;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use atlas_core::backup::{BackupTarget, BackupTargetExt, ObjectKey, ObjectPrefix};
use atlas_storage::url::TargetUrl;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use bytes::Bytes;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use futures::TryStreamExt;

mod common;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn invalid_field(e: &Error) -> &str {
    match e {
        Error::InvalidInput { field, .. } => field,
        other => panic!("expected InvalidInput, got {other}"),
    }
}

/// A bucket / container name no earlier run has used.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn fresh_bucket() -> String {
    format!("atlas-url-{:016x}", rand::random::<u64>())
}

/// The whole round trip of one cloud URL on a fresh bucket:
///
/// 1. without `create`, the missing bucket is `NotFound`, named;
/// 2. with `create`, the bucket is made and an object put through the
///    returned target under the URL's prefix reads back and lists;
/// 3. `direct`, a target built by hand on the same bucket (a future,
///    awaited only now: the helpers in `common` create their bucket, which
///    would spoil step 1), finds the object at exactly prefix + name, and
///    nothing outside the prefix;
/// 4. opening again, with and without `create`, finds the bucket and the
///    object.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
async fn round_trip(
    scheme: &str,
    bucket: &str,
    settings: &HashMap<String, String>,
    direct: impl Future<Output = Arc<dyn BackupTarget>>,
) {
    let repo = format!("repos/{:08x}", rand::random::<u32>());
    let url = TargetUrl::parse(&format!("{scheme}://{bucket}/{repo}")).unwrap();
    assert_eq!(url.prefix().as_str(), format!("{repo}/"));

    let e = url.open_with_env(false, settings).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains(bucket), "{e}");

    let target = url.open_with_env(true, settings).await.unwrap();
    let key = url.prefix().key("snapshots/one").unwrap();
    let data = Bytes::from_static(b"opened from a url with settings from a map");
    let put = target.put_bytes(&key, data.clone()).await.unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(target.get_bytes(&key).await.unwrap(), data);
    let listed: Vec<_> = target
        .list(url.prefix())
        .map_ok(|m| m.key.as_str().to_owned())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, [format!("{repo}/snapshots/one")]);

    // The object landed in that bucket at exactly prefix + name.
    let direct = direct.await;
    let everything: Vec<_> = direct
        .list(&ObjectPrefix::all())
        .map_ok(|m| m.key.as_str().to_owned())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(everything, [format!("{repo}/snapshots/one")]);
    let by_hand = ObjectKey::new(format!("{repo}/snapshots/one")).unwrap();
    assert_eq!(direct.get_bytes(&by_hand).await.unwrap(), data);

    // Existing buckets open either way; creating again is harmless.
    let again = url.open_with_env(false, settings).await.unwrap();
    assert_eq!(again.get_bytes(&key).await.unwrap(), data);
    let again = url.open_with_env(true, settings).await.unwrap();
    assert_eq!(again.head(&key).await.unwrap().size, data.len() as u64);
}

#[cfg(feature = "s3")]
fn s3_settings() -> HashMap<String, String> {
    env(&[
        ("AWS_ENDPOINT_URL", &common::s3s_url()),
        ("AWS_REGION", "us-east-1"),
        ("ATLAS_S3_PATH_STYLE", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ])
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs s3s-fs; run: cargo xtask test"]
async fn s3_urls_open_create_and_use_buckets_on_s3s() {
    common::init_tracing();
    let bucket = fresh_bucket();
    let settings = s3_settings();
    let url = TargetUrl::parse(&format!("s3://{bucket}/x")).unwrap();

    // s3s-fs checks signatures: a wrong secret fails at open, not as a
    // missing bucket and not later.
    let mut wrong = settings.clone();
    wrong.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let e = url.open_with_env(false, &wrong).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");

    let direct = async {
        Arc::new(common::s3_target(&common::s3s_url(), &bucket).await) as Arc<dyn BackupTarget>
    };
    round_trip("s3", &bucket, &settings, direct).await;
}

#[cfg(feature = "gcs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fake-gcs-server; run: cargo xtask test"]
async fn gcs_urls_open_create_and_use_buckets_on_fake_gcs_server() {
    common::init_tracing();
    let bucket = fresh_bucket();
    // No GOOGLE_CLOUD_PROJECT: an emulator takes any project.
    let settings = env(&[("STORAGE_EMULATOR_HOST", &common::gcs_emulator())]);
    let direct = async { Arc::new(common::gcs_target(&bucket).await) as Arc<dyn BackupTarget> };
    round_trip("gs", &bucket, &settings, direct).await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs azurite; run: cargo xtask test"]
async fn azure_urls_open_create_and_use_containers_on_azurite() {
    common::init_tracing();
    let container = fresh_bucket();
    let settings = env(&[("ATLAS_AZURE_EMULATOR", &common::azurite_url())]);
    let direct =
        async { Arc::new(common::azure_target(&container).await) as Arc<dyn BackupTarget> };
    round_trip("az", &container, &settings, direct).await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs azurite; run: cargo xtask test"]
async fn azure_urls_take_an_account_key_from_the_settings() {
    // The same Azurite account, named and keyed explicitly rather than by
    // the emulator switch: the settings an embedder would pass for Azure.
    common::init_tracing();
    let container = fresh_bucket();
    let settings = env(&[
        ("AZURE_STORAGE_ACCOUNT", "devstoreaccount1"),
        ("ATLAS_AZURE_ENDPOINT", &common::azurite_url()),
        (
            "AZURE_STORAGE_ACCESS_KEY",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        ),
    ]);
    let url = TargetUrl::parse(&format!("az://{container}/keyed")).unwrap();
    let e = url.open_with_env(false, &settings).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains(&container), "{e}");
    let target = url.open_with_env(true, &settings).await.unwrap();
    let key = url.prefix().key("one").unwrap();
    target
        .put_bytes(&key, Bytes::from_static(b"keyed"))
        .await
        .unwrap();
    let direct = common::azure_target(&container).await;
    assert_eq!(
        direct.get_bytes(&key).await.unwrap(),
        Bytes::from_static(b"keyed")
    );
    assert_eq!(key.as_str(), "keyed/one");
}

// ---- Settings refused before any request (no service needed) ----

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_urls_refuse_missing_and_invalid_settings_by_variable_name() {
    let url = TargetUrl::parse("s3://backups/prod").unwrap();
    for missing in ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"] {
        let mut settings = s3_settings();
        settings.remove(missing);
        for create in [false, true] {
            let e = url.open_with_env(create, &settings).await.unwrap_err();
            assert_eq!(invalid_field(&e), missing, "{e}");
            assert!(!e.to_string().contains("testing"), "{e}");
        }
    }
    for (variable, value) in [
        ("ATLAS_S3_PATH_STYLE", "maybe"),
        ("AWS_ENDPOINT_URL", "127.0.0.1:9001"),
        ("AWS_ENDPOINT_URL_S3", "s3s.test"),
    ] {
        let mut settings = s3_settings();
        settings.insert(variable.into(), value.into());
        let e = url.open_with_env(true, &settings).await.unwrap_err();
        assert_eq!(invalid_field(&e), variable, "{e}");
        assert!(e.to_string().contains(value), "{e}");
    }
}

#[cfg(feature = "gcs")]
#[tokio::test]
async fn gcs_urls_refuse_missing_and_invalid_settings_by_variable_name() {
    let url = TargetUrl::parse("gs://backups/prod").unwrap();
    // Creating a bucket on GCS itself needs a project; the check comes
    // before any credential lookup or request.
    let e = url.open_with_env(true, &env(&[])).await.unwrap_err();
    assert_eq!(invalid_field(&e), "GOOGLE_CLOUD_PROJECT", "{e}");
    assert!(e.to_string().contains("`backups`"), "{e}");
    let e = url
        .open_with_env(
            false,
            &env(&[("STORAGE_EMULATOR_HOST", "ftp://127.0.0.1:4443")]),
        )
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&e), "STORAGE_EMULATOR_HOST", "{e}");
}

#[cfg(feature = "azure")]
#[tokio::test]
async fn azure_urls_refuse_missing_and_invalid_settings_by_variable_name() {
    let url = TargetUrl::parse("az://backups/prod").unwrap();
    let e = url.open_with_env(false, &env(&[])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT"), "{e}");
    let e = url
        .open_with_env(false, &env(&[("AZURE_STORAGE_ACCOUNT", "acct")]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("AZURE_STORAGE_ACCESS_KEY"), "{e}");
    for (variable, value) in [
        ("ATLAS_AZURE_EMULATOR", "127.0.0.1:10000/devstoreaccount1"),
        ("ATLAS_AZURE_ENDPOINT", "devstoreaccount1.blob.test"),
        ("AZURE_STORAGE_ACCESS_KEY", "pasted wrong!"),
        (
            "AZURE_STORAGE_SAS_TOKEN",
            "https://acct.blob.core.windows.net/",
        ),
    ] {
        let settings = env(&[("AZURE_STORAGE_ACCOUNT", "acct"), (variable, value)]);
        let e = url.open_with_env(true, &settings).await.unwrap_err();
        assert_eq!(invalid_field(&e), variable, "{e}");
    }
}

#[cfg(feature = "fs")]
#[tokio::test]
async fn file_urls_need_no_settings() {
    let dir = tempfile::tempdir().unwrap();
    let url = TargetUrl::parse(&format!("file://{}/repo", dir.path().display())).unwrap();
    let e = url.open_with_env(false, &env(&[])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    url.open_with_env(true, &env(&[])).await.unwrap();
    // A closure is an `Env` too.
    url.open_with_env(false, &|_: &str| None).await.unwrap();
}

#[cfg(not(feature = "s3"))]
#[tokio::test]
async fn urls_of_schemes_not_compiled_in_name_the_feature() {
    let e = TargetUrl::parse("s3://backups/prod")
        .unwrap()
        .open_with_env(true, &env(&[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("`s3` feature"), "{e}");
}
