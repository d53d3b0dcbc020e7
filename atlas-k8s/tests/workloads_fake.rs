//! `KubeWorkloads` on kube-fake-client: the whole `Workloads` conformance
//! suite.
//!
//! kube-fake-client stores objects but runs no controllers, so a small
//! harness plays the Deployment, ReplicaSet and EndpointSlice controllers
//! (see [`play_controllers`]). The checks that wait for replicas to become
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
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use atlas_core::Release;
use atlas_core::testing::conformance::{self, workloads::WorkloadsFixture};
use atlas_k8s::KubeWorkloads;
use atlas_k8s::workloads::{
    ANNOTATION_DELETION_COST, LABEL_SERVICE, LABEL_SERVICE_NAME, LABEL_SLOT,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "atlas";
const HASH: &str = "fake.atlas.dev/template-hash";

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

/// Plays the controllers a cluster runs, every few milliseconds, for every
/// Deployment in the namespace:
/// - ReplicaSet: pods whose template hash differs from the Deployment's
///   are deleted; missing pods are created (named `<deployment>-<n>`, `n`
///   growing, so newer pods sort last); surplus pods are removed lowest
///   deletion cost first, then oldest first.
/// - EndpointSlice: one slice per Service `<deployment>` listing every pod
///   as ready, with the Service's first port.
/// - Deployment: status gets `observedGeneration = generation` and all
///   counts equal to `spec.replicas`.
async fn play_controllers(client: Client) {
    let mut next_pod = 0u32;
    loop {
        if let Err(e) = reconcile(&client, &mut next_pod).await {
            eprintln!("fake controllers: {e}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn reconcile(client: &Client, next_pod: &mut u32) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    for d in deployments.list(&ListParams::default()).await?.items {
        let name = d.metadata.name.clone().unwrap();
        let spec = d.spec.clone().unwrap();
        let want = spec.replicas.unwrap_or(1) as usize;
        let mut hasher = DefaultHasher::new();
        serde_json::to_string(&spec.template)
            .unwrap()
            .hash(&mut hasher);
        let hash = format!("{:x}", hasher.finish());
        let labels = spec.selector.match_labels.clone().unwrap();
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut current = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        for p in current
            .iter()
            .filter(|p| annotation(p, HASH) != Some(hash.clone()))
        {
            pods.delete(
                p.metadata.name.as_deref().unwrap(),
                &DeleteParams::default(),
            )
            .await?;
        }
        current.retain(|p| annotation(p, HASH) == Some(hash.clone()));
        if current.len() > want {
            let cost = |p: &Pod| -> i64 {
                annotation(p, ANNOTATION_DELETION_COST).map_or(0, |c| c.parse().unwrap())
            };
            // Lowest cost first, then oldest first: the opposite of the
            // endpoint order, so only the deletion cost KubeWorkloads sets
            // makes the last endpoints go.
            current.sort_by(|a, b| {
                cost(a)
                    .cmp(&cost(b))
                    .then(a.metadata.name.cmp(&b.metadata.name))
            });
            for p in current.drain(..current.len() - want) {
                pods.delete(
                    p.metadata.name.as_deref().unwrap(),
                    &DeleteParams::default(),
                )
                .await?;
            }
        }
        while current.len() < want {
            *next_pod += 1;
            let n = *next_pod;
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("{name}-{n:05}"),
                    "namespace": NS,
                    "labels": labels,
                    "annotations": {HASH: hash},
                },
                "spec": spec.template.spec,
                "status": {"podIP": format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)},
            }))
            .unwrap();
            current.push(pods.create(&PostParams::default(), &pod).await?);
        }
        if let Some(svc) = services.get_opt(&name).await? {
            let port = svc.spec.unwrap().ports.unwrap()[0].clone();
            let mut endpoints: Vec<_> = current
                .iter()
                .map(|p| {
                    json!({
                        "addresses": [p.status.as_ref().unwrap().pod_ip],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "targetRef": {"kind": "Pod", "namespace": NS, "name": p.metadata.name},
                    })
                })
                .collect();
            endpoints.sort_by_key(|e| e["targetRef"]["name"].as_str().map(str::to_owned));
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-fake"), "namespace": NS,
                             "labels": {LABEL_SERVICE_NAME: name}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": port.name, "port": port.port, "protocol": "TCP"}],
            });
            let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                Api::namespaced(client.clone(), NS);
            slices
                .patch(
                    &format!("{name}-fake"),
                    &PatchParams::apply("fake-controller"),
                    &Patch::Apply(&slice),
                )
                .await?;
        }
        let generation = d.metadata.generation.unwrap_or(0);
        let status = d.status.clone().unwrap_or_default();
        let n = want as i32;
        if status.observed_generation != Some(generation) || status.ready_replicas != Some(n) {
            let patch = json!({"status": {
                "observedGeneration": generation,
                "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
                "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
            }});
            deployments
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_workloads_conformance_suite() {
    let client = kube_fake_client::ClientBuilder::new()
        .with_status_subresource::<Deployment>()
        .build()
        .await
        .unwrap();
    let controllers = tokio::spawn(play_controllers(client.clone()));
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
