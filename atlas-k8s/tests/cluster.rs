//! Both adapters against a real cluster: the whole conformance suites.
//!
//! Run with a cluster (kind works unchanged):
//! `KUBECONFIG=~/.kube/config cargo test -p atlas-k8s --test cluster -- --ignored`.
//! Objects go to the namespace `ATLAS_K8S_NAMESPACE` (default `default`)
//! and are deleted afterwards.
//!
//! The tests are named `cluster_*`: `cargo xtask test`, which runs ignored
//! tests too, skips them by that name unless `KUBECONFIG` is set, and says
//! so in its summary.

use std::time::Duration;

use atlas_core::Release;
use atlas_core::testing::conformance::{self, workloads::WorkloadsFixture};
use atlas_k8s::workloads::{LABEL_MANAGED_BY, LABEL_SERVICE};
use atlas_k8s::{KubeStateStore, KubeWorkloads};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

const PREFIX: &str = "atlas-it";
const IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// The cluster's client and the namespace to work in.
async fn cluster() -> (Client, String) {
    let client = Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG or in-cluster config");
    let namespace = std::env::var("ATLAS_K8S_NAMESPACE").unwrap_or_else(|_| "default".into());
    (client, namespace)
}

/// Deletes every object of kind `K` Atlas made for a conformance service.
async fn delete_ours<K>(client: &Client, namespace: &str)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}=atlas"));
    for o in api.list(&params).await.expect("listing for cleanup").items {
        let meta = o.meta();
        let ours = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE))
            .is_some_and(|s| s.starts_with(PREFIX));
        if let (true, Some(name)) = (ours, meta.name.as_deref()) {
            let _ = api.delete(name, &DeleteParams::background()).await;
        }
    }
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=... cargo test -p atlas-k8s -- --ignored cluster_"]
async fn cluster_workloads_pass_the_conformance_suite() {
    let (client, namespace) = cluster().await;
    let template: PodTemplateSpec = serde_json::from_value(json!({
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "args": ["netexec", "--http-port=8080"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}
            }]
        }
    }))
    .unwrap();
    let workloads = KubeWorkloads::builder(client.clone(), namespace.clone(), template)
        .container("app")
        .build()
        .unwrap();
    let fixture = WorkloadsFixture::new(
        Release::new("v1", IMAGE),
        Release::new("v2", IMAGE).with_env("ATLAS_RELEASE", "v2"),
    )
    .with_ready_timeout(Duration::from_secs(180))
    .with_poll_interval(Duration::from_millis(500));
    conformance::workloads::all(&workloads, &fixture, PREFIX).await;
    delete_ours::<Deployment>(&client, &namespace).await;
    delete_ours::<Service>(&client, &namespace).await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=... cargo test -p atlas-k8s -- --ignored cluster_"]
async fn cluster_state_store_passes_the_conformance_suite() {
    let (client, namespace) = cluster().await;
    let store = KubeStateStore::new(client.clone(), namespace.clone()).unwrap();
    conformance::state_store::all(&store, PREFIX).await;
    delete_ours::<ConfigMap>(&client, &namespace).await;
    delete_ours::<Lease>(&client, &namespace).await;
}
