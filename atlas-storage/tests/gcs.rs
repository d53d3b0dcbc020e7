//! The GCS target against fake-gcs-server: the whole conformance suite.
//! `cargo xtask test` starts the server; by hand:
//! `STORAGE_EMULATOR_HOST=http://127.0.0.1:4443
//! cargo test -p atlas-storage --features gcs --test gcs -- --include-ignored`.
#![cfg(feature = "gcs")]

use atlas_core::ErrorKind;
use atlas_core::backup::{BackupTarget, BackupTargetExt, ByteStream, ObjectKey, RetryConfig};
use atlas_core::testing::conformance::backup_target::{self as suite, SuiteConfig};
use atlas_storage::GcsTarget;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

mod common;

use common::{MIB, gcs_target as target, init_tracing};

fn body(data: &[u8]) -> ByteStream {
    let chunks: Vec<_> = data
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fake-gcs-server; run: cargo xtask test"]
async fn gcs_target_passes_the_conformance_suite_on_fake_gcs_server() {
    init_tracing();
    let target = target("atlas-conformance").await;
    // fake-gcs-server has every capability the suite asks about.
    let config = SuiteConfig::new().with_memory_bound(target.max_buffered_bytes());
    let report = suite::run_all(&target, &config).await;
    assert!(report.skipped().is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fake-gcs-server; run: cargo xtask test"]
async fn resumable_uploads_end_on_chunk_boundaries_and_report_the_server_checksum() {
    init_tracing();
    let target = target("atlas-resumable").await;
    // Exactly two chunks: the session is finished by an empty last request.
    for size in [8 * MIB, 8 * MIB + 1, 4 * MIB] {
        let key = ObjectKey::new(format!("r/{size}-{:08x}", rand::random::<u32>())).unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
        let put = target.put(&key, body(&data)).await.unwrap();
        assert_eq!(put.size, size as u64);
        let meta = target.head(&key).await.unwrap();
        assert_eq!(meta.size, size as u64);
        assert_eq!(
            meta.checksum,
            Some(put.checksum),
            "server CRC32C of {size} bytes"
        );
        assert!(meta.version.is_some(), "generation");
        assert_eq!(target.get_bytes(&key).await.unwrap(), Bytes::from(data));
        // A large create of an existing key is refused before uploading.
        let err = target
            .put_if_absent(&key, body(&vec![0u8; 5 * MIB]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        target.delete(&key).await.unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    let target = GcsTarget::builder()
        .with_bucket("b")
        .with_endpoint("http://127.0.0.1:9")
        .with_anonymous_credentials()
        .with_retry(RetryConfig::default().with_max_retries(0))
        .build()
        .unwrap();
    let err = target
        .head(&ObjectKey::new("k").unwrap())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}
