//! The requests `KubeWorkloads` and `KubeStateStore` send, on a scripted
//! transport (`tower_test::mock::pair`): exact method, path, query,
//! content type and body, and the answers they make of scripted responses
//! and watch streams. Time is paused, so deadlines pass instantly.

use std::collections::BTreeMap;
use std::time::Duration;

use atlas_core::testing::conformance::state_store::sample_state;
use atlas_core::{ErrorKind, Lease, Release, ServiceName, Slot, StateStore, Workloads};
use atlas_k8s::workloads::PROGRESS_DEADLINE_EXCEEDED;
use atlas_k8s::{KubeStateStore, KubeWorkloads};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

type Mock = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, Mock) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server would see it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Value,
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn next(handle: &mut Mock) -> (Seen, SendResponse<Response<Body>>) {
    let (req, send) = handle.next_request().await.expect("a request");
    let query = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    let seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query,
        content_type: req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned()),
        body: Value::Null,
    };
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (Seen { body, ..seen }, send)
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn status_failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("the object has been modified ({reason})"), "reason": reason, "code": code})
}

const APPLY: &str = "application/apply-patch+yaml";

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"team": "shop"}},
        "spec": {"containers": [
            {"name": "proxy", "image": "envoy:1"},
            {"name": "app", "args": ["serve"],
             "ports": [{"name": "http", "containerPort": 8080}]}
        ]}
    }))
    .unwrap()
}

fn workloads(client: Client) -> KubeWorkloads {
    KubeWorkloads::builder(client, "shop", template())
        .container("app")
        .build()
        .unwrap()
}

fn checkout() -> ServiceName {
    ServiceName::new("checkout").unwrap()
}

fn labels() -> Value {
    json!({
        "app.kubernetes.io/managed-by": "atlas",
        "app.kubernetes.io/name": "checkout",
        "atlas.dev/service": "checkout",
        "atlas.dev/slot": "green",
    })
}

#[tokio::test]
async fn deploy_applies_the_service_then_the_deployment() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        let (svc, send) = next(&mut api).await;
        assert_eq!(svc.method, "PATCH");
        assert_eq!(svc.path, "/api/v1/namespaces/shop/services/checkout-green");
        assert_eq!(
            svc.query,
            query(&[("fieldManager", "atlas"), ("force", "true")])
        );
        assert_eq!(svc.content_type.as_deref(), Some(APPLY));
        assert_eq!(
            svc.body,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "checkout-green", "namespace": "shop", "labels": labels()},
                "spec": {
                    "selector": {"atlas.dev/service": "checkout", "atlas.dev/slot": "green"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
                },
            })
        );
        respond(send, 200, &svc.body);

        let (dep, send) = next(&mut api).await;
        assert_eq!(dep.method, "PATCH");
        assert_eq!(
            dep.path,
            "/apis/apps/v1/namespaces/shop/deployments/checkout-green"
        );
        assert_eq!(
            dep.query,
            query(&[("fieldManager", "atlas"), ("force", "true")])
        );
        assert_eq!(dep.content_type.as_deref(), Some(APPLY));
        let mut pod_labels = labels();
        pod_labels["team"] = json!("shop");
        assert_eq!(
            dep.body,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "checkout-green", "namespace": "shop", "labels": labels(),
                             "annotations": {"atlas.dev/version": "v2"}},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"atlas.dev/service": "checkout", "atlas.dev/slot": "green"}},
                    "template": {
                        "metadata": {"labels": pod_labels, "annotations": {"atlas.dev/version": "v2"}},
                        "spec": {"containers": [
                            {"name": "proxy", "image": "envoy:1"},
                            {"name": "app", "image": "registry.example/checkout:v2",
                             "args": ["--port=8080"],
                             "env": [{"name": "MODE", "value": "fast"}],
                             "ports": [{"name": "http", "containerPort": 8080}]},
                        ]},
                    },
                },
            })
        );
        respond(send, 200, &dep.body);
    });
    let release = Release::new("v2", "registry.example/checkout:v2")
        .with_arg("--port=8080")
        .with_env("MODE", "fast");
    workloads(client)
        .deploy(&checkout(), Slot::Green, &release, 3)
        .await
        .unwrap();
    server.await.unwrap();
}

fn deployment(replicas: i32, generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "checkout-green", "namespace": "shop", "generation": generation,
                     "resourceVersion": "10", "annotations": {"atlas.dev/version": "v2"}},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": 120,
                 "selector": {"matchLabels": {"atlas.dev/slot": "green"}},
                 "template": {"spec": {"containers": [{"name": "app"}]}}},
        "status": status,
    })
}

fn expect_scale_apply(seen: &Seen, replicas: i32) {
    assert_eq!(seen.method, "PATCH");
    assert_eq!(
        seen.path,
        "/apis/apps/v1/namespaces/shop/deployments/checkout-green"
    );
    assert_eq!(
        seen.query,
        query(&[("fieldManager", "atlas-scale"), ("force", "true")])
    );
    assert_eq!(seen.content_type.as_deref(), Some(APPLY));
    assert_eq!(
        seen.body,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "checkout-green", "namespace": "shop"},
               "spec": {"replicas": replicas}})
    );
}

#[tokio::test]
async fn scale_up_applies_only_the_replicas() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        let (get, send) = next(&mut api).await;
        assert_eq!(
            (get.method.as_str(), get.path.as_str()),
            (
                "GET",
                "/apis/apps/v1/namespaces/shop/deployments/checkout-green"
            )
        );
        respond(send, 200, &deployment(2, 1, json!({})));
        let (apply, send) = next(&mut api).await;
        expect_scale_apply(&apply, 5);
        respond(send, 200, &deployment(5, 2, json!({})));
    });
    workloads(client)
        .scale(&checkout(), Slot::Green, 5)
        .await
        .unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn scaling_an_empty_slot_is_not_found_and_creates_nothing() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        let (get, send) = next(&mut api).await;
        assert_eq!(get.method, "GET");
        respond(send, 404, &status_failure(404, "NotFound"));
    });
    let err = workloads(client)
        .scale(&checkout(), Slot::Green, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains("Deployment shop/checkout-green"),
        "{err}"
    );
    server.await.unwrap();
}

fn slice(pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true},
                                "targetRef": {"kind": "Pod", "name": name, "namespace": "shop"}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {"resourceVersion": "5"},
           "items": [{"metadata": {"name": "checkout-green-x1", "labels": {"kubernetes.io/service-name": "checkout-green"}},
                      "addressType": "IPv4", "endpoints": endpoints,
                      "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]})
}

#[tokio::test]
async fn scale_down_marks_the_last_endpoints_pods_then_applies_the_replicas() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        let (_, send) = next(&mut api).await;
        respond(send, 200, &deployment(4, 1, json!({})));
        let (list, send) = next(&mut api).await;
        assert_eq!(list.method, "GET");
        assert_eq!(
            list.path,
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
        );
        assert_eq!(
            list.query,
            query(&[("labelSelector", "kubernetes.io/service-name=checkout-green")])
        );
        // Listed out of order: the adapter orders endpoints by pod name.
        respond(
            send,
            200,
            &slice(&[
                ("pod-d", "10.0.0.4"),
                ("pod-a", "10.0.0.1"),
                ("pod-c", "10.0.0.3"),
                ("pod-b", "10.0.0.2"),
            ]),
        );
        for (pod, cost) in [("pod-c", "-1"), ("pod-d", "-2")] {
            let (patch, send) = next(&mut api).await;
            assert_eq!(patch.method, "PATCH");
            assert_eq!(patch.path, format!("/api/v1/namespaces/shop/pods/{pod}"));
            assert_eq!(patch.query, query(&[("fieldManager", "atlas")]));
            assert_eq!(
                patch.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(
                patch.body,
                json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": cost}}})
            );
            respond(
                send,
                200,
                &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod}}),
            );
        }
        let (apply, send) = next(&mut api).await;
        expect_scale_apply(&apply, 2);
        respond(send, 200, &deployment(2, 2, json!({})));
    });
    workloads(client)
        .scale(&checkout(), Slot::Green, 2)
        .await
        .unwrap();
    server.await.unwrap();
}

fn not_ready() -> Value {
    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
           "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]})
}

fn deployment_list(item: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "10"}, "items": [item]})
}

fn watch_body(events: &[Value]) -> Body {
    let mut bytes = Vec::new();
    for e in events {
        bytes.extend(serde_json::to_vec(e).unwrap());
        bytes.push(b'\n');
    }
    Body::from(bytes)
}

/// Answers the watcher's list, then streams `events` on its first watch,
/// then holds every later request open, as a quiet API server does.
fn script_watch(mut api: Mock, first: Value, events: Vec<Value>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (list, send) = next(&mut api).await;
        assert_eq!(list.method, "GET");
        assert_eq!(list.path, "/apis/apps/v1/namespaces/shop/deployments");
        assert_eq!(
            list.query.get("fieldSelector").map(String::as_str),
            Some("metadata.name=checkout-green")
        );
        assert!(!list.query.contains_key("watch"), "{:?}", list.query);
        respond(send, 200, &deployment_list(first));
        let (watch, send) = next(&mut api).await;
        assert_eq!(watch.path, "/apis/apps/v1/namespaces/shop/deployments");
        assert_eq!(watch.query.get("watch").map(String::as_str), Some("true"));
        assert_eq!(
            watch.query.get("fieldSelector").map(String::as_str),
            Some("metadata.name=checkout-green")
        );
        assert_eq!(
            watch.query.get("resourceVersion").map(String::as_str),
            Some("10")
        );
        send.send_response(
            Response::builder()
                .status(200)
                .body(watch_body(&events))
                .unwrap(),
        );
        let mut open = Vec::new();
        while let Some((_, send)) = api.next_request().await {
            open.push(send);
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_deployment_that_never_becomes_ready_ends_the_wait_at_its_deadline() {
    let (client, api) = mock_client();
    let still = deployment(3, 2, not_ready());
    let server = script_watch(
        api,
        still.clone(),
        vec![json!({"type": "MODIFIED", "object": still})],
    );
    let started = tokio::time::Instant::now();
    let err = workloads(client)
        .wait_ready(&checkout(), Slot::Green, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deadline, "{err}");
    assert!(
        err.to_string()
            .contains("Deployment shop/checkout-green becoming ready"),
        "{err}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn progress_deadline_exceeded_is_a_typed_deadline_error_naming_the_deployment() {
    let (client, api) = mock_client();
    let stuck = deployment(
        3,
        2,
        json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
               "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                               "message": "ReplicaSet \"checkout-green-7d9\" has timed out progressing."}]}),
    );
    let server = script_watch(
        api,
        deployment(3, 2, not_ready()),
        vec![
            json!({"type": "MODIFIED", "object": deployment(3, 2, not_ready())}),
            json!({"type": "MODIFIED", "object": stuck}),
        ],
    );
    let err = workloads(client)
        .wait_ready(&checkout(), Slot::Green, Duration::from_secs(3600))
        .await
        .unwrap_err();
    match &err {
        atlas_core::Error::Deadline { what, after } => {
            assert!(what.contains("Deployment shop/checkout-green"), "{what}");
            assert!(what.contains(PROGRESS_DEADLINE_EXCEEDED), "{what}");
            assert!(what.contains("has timed out progressing"), "{what}");
            assert_eq!(
                *after,
                Duration::from_secs(120),
                "the Deployment's progressDeadlineSeconds"
            );
        }
        other => panic!("want a Deadline error, got {other:?}"),
    }
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_deployment_that_rolls_out_ends_the_wait_with_its_status() {
    let (client, api) = mock_client();
    let done = deployment(
        2,
        2,
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}),
    );
    let server = tokio::spawn(async move {
        let mut api = api;
        let (_, send) = next(&mut api).await;
        respond(send, 200, &deployment_list(deployment(2, 2, not_ready())));
        let (_, send) = next(&mut api).await;
        send.send_response(
            Response::builder()
                .status(200)
                .body(watch_body(&[json!({"type": "MODIFIED", "object": done})]))
                .unwrap(),
        );
        // The watcher may ask again before the slices are listed: held open.
        let mut open = Vec::new();
        loop {
            let (seen, send) = next(&mut api).await;
            if seen.path.ends_with("/endpointslices") {
                respond(
                    send,
                    200,
                    &slice(&[("pod-b", "10.0.0.2"), ("pod-a", "10.0.0.1")]),
                );
                break;
            }
            open.push(send);
        }
    });
    let status = workloads(client)
        .wait_ready(&checkout(), Slot::Green, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(status.is_ready(), "{status:?}");
    assert_eq!(status.version.as_deref(), Some("v2"));
    let names: Vec<_> = status
        .endpoints
        .iter()
        .map(|e| e.replica.as_str())
        .collect();
    assert_eq!(names, ["pod-a", "pod-b"]);
    assert_eq!(status.endpoints[0].addr, "10.0.0.1:8080".parse().unwrap());
    server.await.unwrap();
}

fn config_map(version: &str, rv: &str, state: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "atlas-rollout-checkout", "namespace": "shop", "resourceVersion": rv},
           "data": {"format": "1", "version": version, "state.json": state.to_string()}})
}

/// Scripts a compare-and-swap of version 3 to 4 whose write gets `status`.
async fn cas_with_write_status(status: u16) -> (atlas_core::Result<u64>, Seen) {
    let (client, mut api) = mock_client();
    let store = KubeStateStore::new(client, "shop").unwrap();
    let state = sample_state(&checkout());
    let stored = serde_json::to_value(&state).unwrap();
    let server = tokio::spawn(async move {
        let (get, send) = next(&mut api).await;
        assert_eq!(
            (get.method.as_str(), get.path.as_str()),
            (
                "GET",
                "/api/v1/namespaces/shop/configmaps/atlas-rollout-checkout"
            )
        );
        respond(send, 200, &config_map("3", "42", &stored));
        let (put, send) = next(&mut api).await;
        if status == 200 {
            respond(send, 200, &put.body);
        } else {
            respond(send, status, &status_failure(status, "Conflict"));
        }
        put
    });
    let result = store.compare_and_swap(&checkout(), Some(3), &state).await;
    (result, server.await.unwrap())
}

#[tokio::test]
async fn state_writes_replace_the_config_map_carrying_the_resource_version_read() {
    let (result, put) = cas_with_write_status(200).await;
    assert_eq!(result.unwrap(), 4);
    assert_eq!(put.method, "PUT");
    assert_eq!(
        put.path,
        "/api/v1/namespaces/shop/configmaps/atlas-rollout-checkout"
    );
    assert_eq!(put.query, BTreeMap::new());
    assert_eq!(put.content_type.as_deref(), Some("application/json"));
    let state = serde_json::to_string(&sample_state(&checkout())).unwrap();
    assert_eq!(
        put.body,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "atlas-rollout-checkout", "namespace": "shop", "resourceVersion": "42",
                            "labels": {"app.kubernetes.io/managed-by": "atlas", "atlas.dev/service": "checkout"}},
               "data": {"format": "1", "version": "4", "state.json": state}})
    );
}

#[tokio::test]
async fn a_409_on_the_state_write_is_a_conflict() {
    let (result, put) = cas_with_write_status(409).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "42");
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string()
            .contains("ConfigMap shop/atlas-rollout-checkout"),
        "{err}"
    );
}

fn lease(holder: &str, rv: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "atlas-rollout-checkout", "namespace": "shop", "resourceVersion": rv},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                    "acquireTime": "2026-01-01T00:00:00.000000Z",
                    // Far in the future on purpose: expiry is judged on the
                    // local clock, never on another machine's renewTime.
                    "renewTime": "2099-01-01T00:00:00.000000Z"}})
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_with_its_transitions_incremented() {
    let (client, mut api) = mock_client();
    let store = KubeStateStore::new(client, "shop").unwrap();
    let path = "/apis/coordination.k8s.io/v1/namespaces/shop/leases/atlas-rollout-checkout";
    let server = tokio::spawn(async move {
        // Seen at rv 7, renewed (rv 8) 10 s later, then quiet.
        for rv in ["7", "8", "8", "8"] {
            let (get, send) = next(&mut api).await;
            assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", path));
            respond(send, 200, &lease("engine-a", rv, 2));
        }
        let (put, send) = next(&mut api).await;
        let mut written = put.body.clone();
        written["metadata"]["resourceVersion"] = json!("9");
        respond(send, 200, &written);
        put
    });
    let service = checkout();
    let acquire = || store.acquire_lease(&service, "engine-b", Duration::from_secs(30));
    let err = acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("engine-a"), "{err}");
    tokio::time::advance(Duration::from_secs(10)).await;
    // Renewed at rv 8: live for 15 s from now on.
    assert_eq!(acquire().await.unwrap_err().kind(), ErrorKind::Conflict);
    tokio::time::advance(Duration::from_secs(14)).await;
    assert_eq!(
        acquire().await.unwrap_err().kind(),
        ErrorKind::Conflict,
        "24 s after rv 7, but 14 s after rv 8"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let granted = acquire().await.unwrap();
    assert_eq!(
        granted,
        Lease {
            service: checkout(),
            holder: "engine-b".into(),
            token: 3,
            ttl: Duration::from_secs(30)
        }
    );
    let put = server.await.unwrap();
    assert_eq!(put.method, "PUT");
    assert_eq!(put.path, path);
    assert_eq!(put.body["metadata"]["resourceVersion"], "8");
    let spec = &put.body["spec"];
    assert_eq!(spec["holderIdentity"], "engine-b");
    assert_eq!(spec["leaseTransitions"], 3);
    assert_eq!(spec["leaseDurationSeconds"], 30);
    assert_ne!(spec["renewTime"], "2099-01-01T00:00:00.000000Z");
}

#[tokio::test(start_paused = true)]
async fn losing_the_race_for_a_lease_is_a_conflict() {
    let (client, mut api) = mock_client();
    let store = KubeStateStore::new(client, "shop").unwrap();
    let server = tokio::spawn(async move {
        let (get, send) = next(&mut api).await;
        assert_eq!(get.method, "GET");
        respond(send, 404, &status_failure(404, "NotFound"));
        let (post, send) = next(&mut api).await;
        assert_eq!(post.method, "POST");
        assert_eq!(
            post.path,
            "/apis/coordination.k8s.io/v1/namespaces/shop/leases"
        );
        assert_eq!(post.body["spec"]["holderIdentity"], "engine-b");
        assert_eq!(post.body["spec"]["leaseTransitions"], 0);
        respond(send, 409, &status_failure(409, "AlreadyExists"));
    });
    let err = store
        .acquire_lease(&checkout(), "engine-b", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string()
            .contains("Lease shop/atlas-rollout-checkout"),
        "{err}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_first_state_write_creates_the_config_map_at_version_1() {
    let (client, mut api) = mock_client();
    let store = KubeStateStore::new(client, "shop").unwrap();
    let server = tokio::spawn(async move {
        let (post, send) = next(&mut api).await;
        respond(send, 201, &post.body);
        post
    });
    let state = sample_state(&checkout());
    assert_eq!(
        store
            .compare_and_swap(&checkout(), None, &state)
            .await
            .unwrap(),
        1
    );
    let post = server.await.unwrap();
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/api/v1/namespaces/shop/configmaps");
    assert_eq!(post.body["metadata"]["name"], "atlas-rollout-checkout");
    assert!(post.body["metadata"].get("resourceVersion").is_none());
    assert_eq!(post.body["data"]["version"], "1");
    assert_eq!(post.body["data"]["format"], "1");
    let stored: atlas_core::RolloutState =
        serde_json::from_str(post.body["data"]["state.json"].as_str().unwrap()).unwrap();
    assert_eq!(stored, state);
}

#[tokio::test]
async fn releasing_clears_the_holder_and_keeps_the_transitions() {
    let (client, mut api) = mock_client();
    let store = KubeStateStore::new(client, "shop").unwrap();
    let server = tokio::spawn(async move {
        let (_, send) = next(&mut api).await;
        respond(send, 200, &lease("engine-a", "7", 2));
        let (put, send) = next(&mut api).await;
        respond(send, 200, &put.body);
        put
    });
    let held = Lease {
        service: checkout(),
        holder: "engine-a".into(),
        token: 2,
        ttl: Duration::from_secs(15),
    };
    store.release_lease(&held).await.unwrap();
    let put = server.await.unwrap();
    assert_eq!(put.method, "PUT");
    assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    assert_eq!(
        put.body["spec"],
        json!({"leaseDurationSeconds": 15, "leaseTransitions": 2})
    );
}

#[tokio::test]
async fn renewing_a_lease_taken_by_another_is_a_conflict_and_writes_nothing() {
    let (client, mut api) = mock_client();
    let store = KubeStateStore::new(client, "shop").unwrap();
    let server = tokio::spawn(async move {
        let (get, send) = next(&mut api).await;
        assert_eq!(get.method, "GET");
        respond(send, 200, &lease("engine-b", "9", 3));
        assert!(api.next_request().await.is_none(), "no write may follow");
    });
    let lost = Lease {
        service: checkout(),
        holder: "engine-a".into(),
        token: 2,
        ttl: Duration::from_secs(15),
    };
    let err = store.renew_lease(&lost).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("engine-b"), "{err}");
    drop(store);
    server.await.unwrap();
}
