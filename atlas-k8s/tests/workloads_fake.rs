//! `KubeWorkloads` on kube-fake-client: the whole `Workloads` conformance
//! suite.
//!
//! kube-fake-client stores objects but runs no controllers, so a small
//! harness plays the Deployment, ReplicaSet and EndpointSlice controllers
//! (`atlas_k8s::testing::play_controllers`). The checks that wait for replicas to become
//! ready need it: `deploy_becomes_ready`, `deploy_is_idempotent`,
//! `scale_up_and_down`, `scale_down_stops_last_replicas_first`,
//! `scale_to_zero_keeps_the_release`, `slots_are_independent` and
//! `redeploy_changes_the_version`. `untouched_slot_is_empty` and
//! `scaling_an_empty_slot_is_not_found` would pass without it.
//!
//! The harness removes surplus pods lowest
//! `controller.kubernetes.io/pod-deletion-cost` first, as the ReplicaSet
//! controller does for ready pods, and among equal costs the oldest first
//! (the opposite of the endpoint order), so
//! `scale_down_stops_last_replicas_first` passes only because
//! KubeWorkloads marks the right pods. It does not prove that a real
//! ReplicaSet honours the annotation; the cluster test covers that.
//! Server-side apply is stored by the fake as a JSON merge, so field
//! ownership is not exercised here either.

use std::collections::BTreeMap;
use std::time::Duration;

use atlas_core::Release;
use atlas_core::testing::conformance::{self, workloads::WorkloadsFixture};
use atlas_k8s::KubeWorkloads;
use atlas_k8s::testing::play_controllers;
use atlas_k8s::workloads::{LABEL_SERVICE, LABEL_SLOT};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

const NS: &str = "atlas";

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"team": "shop"}},
        "spec": {"containers": [{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}
        }]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_workloads_conformance_suite() {
    let client = kube_fake_client::ClientBuilder::new()
        .with_status_subresource::<Deployment>()
        .build()
        .await
        .unwrap();
    let controllers = tokio::spawn(play_controllers(client.clone(), NS.to_owned()));
    let workloads = KubeWorkloads::builder(client.clone(), NS, template())
        .container("app")
        .build()
        .unwrap();
    let fixture = WorkloadsFixture::new(
        Release::new("v1", "registry.example/shop:v1"),
        Release::new("v2", "registry.example/shop:v2").with_env("MODE", "two"),
    )
    .with_ready_timeout(Duration::from_secs(20))
    .with_poll_interval(Duration::from_millis(10));
    conformance::workloads::all(&workloads, &fixture, "kube").await;
    controllers.abort();

    // What the suite left behind is what Atlas wrote: check the labels.
    let deployments: Api<Deployment> = Api::namespaced(client, NS);
    let any = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(!any.is_empty());
    for d in any {
        let labels: BTreeMap<_, _> = d.metadata.labels.unwrap();
        assert!(labels.contains_key(LABEL_SERVICE) && labels.contains_key(LABEL_SLOT));
    }
}
