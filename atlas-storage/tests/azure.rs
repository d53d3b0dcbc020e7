//! The Azure Blob target against Azurite: the whole conformance suite.
//! `cargo xtask test` starts Azurite; by hand:
//! `ATLAS_TEST_AZURITE_URL=http://127.0.0.1:10000/devstoreaccount1
//! cargo test -p atlas-storage --features azure --test azure -- --include-ignored`.
#![cfg(feature = "azure")]

use atlas_core::ErrorKind;
use atlas_core::backup::{BackupTarget, BackupTargetExt, ObjectKey, RetryConfig};
use atlas_core::testing::conformance::backup_target::{self as suite, SuiteConfig};
use atlas_storage::AzureBlobTarget;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

mod common;

use common::{MIB, azure_target as target, azurite_url, init_tracing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs azurite; run: cargo xtask test"]
async fn azure_target_passes_the_conformance_suite_on_azurite() {
    init_tracing();
    let target = target("atlas-conformance").await;
    // Azurite has every capability the suite asks about.
    let config = SuiteConfig::new().with_memory_bound(target.max_buffered_bytes());
    let report = suite::run_all(&target, &config).await;
    assert!(report.skipped().is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs azurite; run: cargo xtask test"]
async fn block_uploads_commit_atomically_and_carry_their_checksum() {
    init_tracing();
    let target = target("atlas-blocks").await;
    let key = ObjectKey::new(format!("blocks/{:016x}", rand::random::<u64>())).unwrap();
    // Three blocks: 4 + 4 + 1 MiB.
    let data: Vec<u8> = (0..9 * MIB).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<_> = data
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let put = target
        .put_if_absent(&key, stream::iter(chunks).boxed())
        .await
        .unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(
        target.head(&key).await.unwrap().checksum,
        Some(put.checksum)
    );
    assert_eq!(
        target.get_bytes(&key).await.unwrap(),
        Bytes::from(data.clone())
    );
    // A second create of the same key, as blocks, is refused at commit.
    let chunks: Vec<_> = data
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let err = target
        .put_if_absent(&key, stream::iter(chunks).boxed())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    target.delete(&key).await.unwrap();
}

#[tokio::test]
#[ignore = "needs azurite; run: cargo xtask test"]
async fn a_wrong_account_key_is_refused_not_retried() {
    let target = AzureBlobTarget::builder()
        .with_account("devstoreaccount1")
        .with_endpoint(azurite_url())
        .with_access_key("d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")
        .with_container("atlas-conformance")
        .build()
        .unwrap();
    let err = target
        .put_bytes(&ObjectKey::new("k").unwrap(), "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
}

#[tokio::test]
async fn an_unreachable_service_fails_fast_and_transiently() {
    let target = AzureBlobTarget::builder()
        .emulator("http://127.0.0.1:9/devstoreaccount1")
        .with_container("atlas-conformance")
        .with_retry(RetryConfig::default().with_max_retries(1))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = target
        .head(&ObjectKey::new("k").unwrap())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
