//! The requests `KubeWorkloads` sends as a `Scaler`, on the scripted API:
//! the Deployment's scale subresource is read, then written with a merge
//! patch of `spec.replicas` alone; scaling down marks the pods that go
//! first; the router is never called (Kubernetes routes by readiness).

use atlas_core::testing::RecordingRouter;
use atlas_core::{ErrorKind, Scaler, ServiceName, Slot};
use atlas_k8s::KubeWorkloads;
use http::Method;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Client;
use serde_json::{Value, json};

mod scripted;
use scripted::{ex, scripted};

const SCALE: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout-green/scale";

fn workloads(client: Client) -> KubeWorkloads {
    let template: PodTemplateSpec = serde_json::from_value(json!({
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    KubeWorkloads::builder(client, "shop", template)
        .build()
        .unwrap()
}

fn checkout() -> ServiceName {
    ServiceName::new("checkout").unwrap()
}

fn scale(replicas: i32) -> String {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": "checkout-green", "namespace": "shop"},
           "spec": {"replicas": replicas}, "status": {"replicas": replicas}})
    .to_string()
}

fn not_found() -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "deployments.apps \"checkout-green\" not found", "reason": "NotFound", "code": 404})
    .to_string()
}

fn replicas_patch(replicas: i32) -> impl Fn(&Value) + Send + 'static {
    move |body: &Value| assert_eq!(body, &json!({"spec": {"replicas": replicas}}))
}

#[tokio::test]
async fn scaling_up_writes_only_the_replicas_through_the_scale_subresource() {
    let (client, server, seen) = scripted(vec![
        ex(Method::GET, SCALE, 200, scale(3)),
        ex(Method::PATCH, SCALE, 200, scale(6))
            .query(&["fieldManager=atlas-scale"])
            .body(replicas_patch(6)),
    ]);
    let router = RecordingRouter::new();
    workloads(client)
        .scale_live(&checkout(), Slot::Green, 6, &router)
        .await
        .unwrap();
    server.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(
        router.calls().is_empty(),
        "Kubernetes routes by readiness itself"
    );
}

#[tokio::test]
async fn the_same_count_writes_nothing() {
    let (client, server, seen) = scripted(vec![ex(Method::GET, SCALE, 200, scale(4))]);
    workloads(client)
        .scale_live(&checkout(), Slot::Green, 4, &RecordingRouter::new())
        .await
        .unwrap();
    server.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1, "only the read");
}

#[tokio::test]
async fn scaling_down_marks_the_last_endpoints_pods_before_writing_the_count() {
    let slices = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
        "items": [{"metadata": {"name": "checkout-green-x", "labels": {"kubernetes.io/service-name": "checkout-green"}},
                   "addressType": "IPv4",
                   "endpoints": [
                       {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "pod-b"}},
                       {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "pod-a"}},
                       {"addresses": ["10.0.0.3"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "pod-c"}}],
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
    let cost = |c: &'static str| {
        move |body: &Value| {
            assert_eq!(
                body,
                &json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": c}}})
            )
        }
    };
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}).to_string()
    };
    let (client, server, _) = scripted(vec![
        ex(Method::GET, SCALE, 200, scale(3)),
        ex(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
            200,
            slices.to_string(),
        ),
        ex(
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/pod-b",
            200,
            pod("pod-b"),
        )
        .body(cost("-1")),
        ex(
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/pod-c",
            200,
            pod("pod-c"),
        )
        .body(cost("-2")),
        ex(Method::PATCH, SCALE, 200, scale(1)).body(replicas_patch(1)),
    ]);
    workloads(client)
        .scale_live(&checkout(), Slot::Green, 1, &RecordingRouter::new())
        .await
        .unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn an_empty_slot_is_not_found_unless_scaled_to_zero() {
    let (client, server, _) = scripted(vec![
        ex(Method::GET, SCALE, 404, not_found()),
        ex(Method::GET, SCALE, 404, not_found()),
    ]);
    let w = workloads(client);
    let router = RecordingRouter::new();
    let err = w
        .scale_live(&checkout(), Slot::Green, 2, &router)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains("Deployment shop/checkout-green"),
        "{err}"
    );
    w.scale_live(&checkout(), Slot::Green, 0, &router)
        .await
        .unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn replica_count_reads_desired_and_ready_of_the_current_spec() {
    let deployment = |observed: i64| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "checkout-green", "namespace": "shop", "generation": 3},
               "spec": {"replicas": 5, "selector": {}, "template": {}},
               "status": {"observedGeneration": observed, "readyReplicas": 4}})
        .to_string()
    };
    let path = "/apis/apps/v1/namespaces/shop/deployments/checkout-green";
    let (client, server, _) = scripted(vec![
        ex(Method::GET, path, 200, deployment(3)),
        ex(Method::GET, path, 200, deployment(2)),
        ex(Method::GET, path, 404, not_found()),
    ]);
    let w = workloads(client);
    let count = w.replica_count(&checkout(), Slot::Green).await.unwrap();
    assert_eq!((count.desired, count.ready), (5, 4));
    let stale = w.replica_count(&checkout(), Slot::Green).await.unwrap();
    assert_eq!(
        (stale.desired, stale.ready),
        (5, 0),
        "ready counts of an older spec say nothing"
    );
    let none = w.replica_count(&checkout(), Slot::Green).await.unwrap();
    assert_eq!((none.desired, none.ready), (0, 0));
    server.await.unwrap();
}
