//! `KubeStateStore` on kube-fake-client: the whole `StateStore` conformance
//! suite. The fake keeps resourceVersions and refuses stale replaces and
//! existing names with 409, which is all the store relies on, so no check
//! needs a harness.

use atlas_core::testing::conformance;
use atlas_k8s::KubeStateStore;

#[tokio::test]
async fn passes_the_state_store_conformance_suite() {
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let store = KubeStateStore::new(client, "atlas").unwrap();
    conformance::state_store::all(&store, "kube").await;
}
