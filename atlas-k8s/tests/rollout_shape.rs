//! The shape of a whole rollout on Kubernetes: `atlas_core::Engine` on
//! `KubeWorkloads`, `GatewayApiRouter` and `KubeStateStore` over
//! kube-fake-client, with `atlas_k8s::testing::play_controllers` making
//! Deployments ready, and every API request recorded in order. The checks
//! look only at writes (any method but GET), and only at their order and
//! targets: the bodies of each object are checked in the router, workloads
//! and state store tests.

use std::sync::Arc;
use std::time::Duration;

use atlas_core::analysis::AnalysisMetric;
use atlas_core::testing::{ScriptedMetrics, ScriptedProbe};
use atlas_core::{
    AnalysisTemplate, BlueGreen, Engine, EventKind, Outcome, ProbePolicy, Release, Rollout,
    ServiceName, Strategy,
};
use atlas_k8s::router::{GatewayApiRouter, GatewayParent};
use atlas_k8s::testing::{RecordedRequest, RecordingService, RequestLog, play_controllers};
use atlas_k8s::{KubeStateStore, KubeWorkloads};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::json;

const NS: &str = "shop";
const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/checkout";
const STATE: &str = "/api/v1/namespaces/shop/configmaps/";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments/";
const APPLY: &str = "application/apply-patch+yaml";

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "spec": {"containers": [{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}
        }]}
    }))
    .expect("valid template")
}

struct Cluster {
    engine: Engine,
    log: RequestLog,
    metrics: ScriptedMetrics,
    controllers: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

async fn cluster() -> Cluster {
    let fake = kube_fake_client::ClientBuilder::new()
        .with_status_subresource::<Deployment>()
        .with_resource::<HttpRoute>()
        .build()
        .await
        .expect("fake client");
    // The controllers talk to the fake directly: only Atlas's requests
    // are recorded.
    let controllers = tokio::spawn(play_controllers(fake.clone(), NS.to_string()));
    let (service, log) = RecordingService::new(fake);
    let client = kube::Client::new(service, NS);
    let workloads = KubeWorkloads::builder(client.clone(), NS, template())
        .container("app")
        .build()
        .expect("workloads");
    let router = GatewayApiRouter::new(client.clone(), NS, 8080, GatewayParent::new("public"));
    let store = KubeStateStore::new(client, NS).expect("store");
    let metrics = ScriptedMetrics::new();
    let engine = Engine::builder()
        .workloads(Arc::new(workloads))
        .router(Arc::new(router))
        .probe(Arc::new(ScriptedProbe::new()))
        .metrics(Arc::new(metrics.clone()))
        .store(Arc::new(store))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("engine");
    Cluster {
        engine,
        log,
        metrics,
        controllers,
    }
}

fn checkout() -> ServiceName {
    ServiceName::new("checkout").expect("valid name")
}

fn rollout(version: &str, strategy: BlueGreen) -> Rollout {
    Rollout::new(
        checkout(),
        Release::new(version, format!("registry.example/checkout:{version}")),
        Strategy::BlueGreen(strategy),
    )
    .with_probe(ProbePolicy {
        period: Duration::from_millis(10),
        ..ProbePolicy::default()
    })
    .with_progress_deadline(Duration::from_secs(30))
}

fn quick(replicas: u32) -> BlueGreen {
    let mut s = BlueGreen::new(replicas);
    s.scale_down_delay = Duration::from_millis(50);
    s
}

fn writes(log: &RequestLog) -> Vec<RecordedRequest> {
    log.requests()
        .into_iter()
        .filter(|r| r.is_write())
        .collect()
}

/// The canary weight of each HTTPRoute write, in order: the green
/// backend's weight as a share of the total.
fn route_weights(writes: &[RecordedRequest], canary: &str) -> Vec<u64> {
    writes
        .iter()
        .filter(|r| r.path_only() == ROUTE)
        .map(|r| {
            let body = r.body.as_ref().expect("route body");
            let refs = body["spec"]["rules"]
                .as_array()
                .and_then(|rules| rules.last())
                .and_then(|rule| rule["backendRefs"].as_array())
                .cloned()
                .unwrap_or_default();
            let total: u64 = refs.iter().filter_map(|b| b["weight"].as_u64()).sum();
            let new: u64 = refs
                .iter()
                .filter(|b| b["name"] == format!("checkout-{canary}"))
                .filter_map(|b| b["weight"].as_u64())
                .sum();
            (new * 100).checked_div(total).unwrap_or(0)
        })
        .collect()
}

fn show(writes: &[RecordedRequest]) -> String {
    writes
        .iter()
        .map(|r| {
            format!(
                "{} {} [{}]",
                r.method,
                r.path,
                r.content_type.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The stable slot of an HTTPRoute write: the first backend listed.
fn route_stable(r: &RecordedRequest) -> Option<String> {
    r.body.as_ref()?["spec"]["rules"].as_array()?.last()?["backendRefs"][0]["name"]
        .as_str()
        .map(str::to_owned)
}

/// Position of the first write matching `pred`, with the sequence in the
/// panic message when there is none.
fn position(
    writes: &[RecordedRequest],
    what: &str,
    pred: impl Fn(&RecordedRequest) -> bool,
) -> usize {
    writes
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} in:\n{}", show(writes)))
}

/// A server-side apply of Deployment `deployment` under field manager
/// `manager`.
fn is_apply(r: &RecordedRequest, deployment: &str, manager: &str) -> bool {
    let query = r.path.split_once('?').map_or("", |(_, q)| q);
    r.method == "PATCH"
        && r.path_only() == format!("{DEPLOYMENTS}{deployment}")
        && query
            .split('&')
            .any(|kv| kv == format!("fieldManager={manager}"))
        && r.content_type.as_deref() == Some(APPLY)
}

fn replicas(r: &RecordedRequest) -> Option<u64> {
    r.body.as_ref()?["spec"]["replicas"].as_u64()
}

/// Every route write is followed by the state ConfigMap being written
/// before any other router or Deployment write: the engine records each
/// step it took.
fn assert_state_after_each_route_write(writes: &[RecordedRequest]) {
    for (i, w) in writes.iter().enumerate() {
        if w.path_only() != ROUTE {
            continue;
        }
        let next = writes[i + 1..]
            .iter()
            .find(|n| !n.path_only().contains("/leases/"))
            .unwrap_or_else(|| panic!("nothing written after route write {i}:\n{}", show(writes)));
        assert!(
            next.method == "PUT" && next.path_only().starts_with(STATE),
            "route write {i} not followed by the state ConfigMap:\n{}",
            show(writes)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rollout_writes_in_order() {
    let c = cluster().await;
    let v1 = c
        .engine
        .start(rollout("v1", quick(3)))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(matches!(v1, Outcome::Promoted { .. }), "{v1}");
    let first = writes(&c.log);
    // The first release: the blue Deployment applied with 3 replicas, the
    // state created, then all traffic to blue.
    let apply = position(&first, "blue apply", |r| {
        is_apply(r, "checkout-blue", "atlas")
    });
    assert_eq!(replicas(&first[apply]), Some(3), "{}", first[apply]);
    let created = position(&first, "state create", |r| {
        r.method == "POST" && r.path_only() == STATE.trim_end_matches('/')
    });
    let route = position(&first, "route write", |r| r.path_only() == ROUTE);
    assert!(created < route && apply < route, "{}", show(&first));
    // Every route write sends all traffic to blue; the last one makes blue
    // the stable slot.
    assert!(
        route_weights(&first, "blue").iter().all(|w| *w == 100),
        "{}",
        show(&first)
    );
    let last = first.iter().rposition(|r| r.path_only() == ROUTE).unwrap();
    assert_eq!(route_stable(&first[last]).as_deref(), Some("checkout-blue"));
    assert_state_after_each_route_write(&first);

    c.log.clear();
    let v2 = c
        .engine
        .start(rollout("v2", quick(3)))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(matches!(v2, Outcome::Promoted { .. }), "{v2}");
    let second = writes(&c.log);
    // The green Deployment is applied before any traffic moves.
    let apply = position(&second, "green apply", |r| {
        is_apply(r, "checkout-green", "atlas")
    });
    assert_eq!(replicas(&second[apply]), Some(3), "{}", second[apply]);
    assert!(
        second[apply]
            .body
            .as_ref()
            .unwrap()
            .to_string()
            .contains("registry.example/checkout:v2"),
        "{}",
        second[apply]
    );
    let first_route = position(&second, "route write", |r| r.path_only() == ROUTE);
    assert!(apply < first_route, "{}", show(&second));
    // One route write per step, in order, then the promotion: green
    // becomes the stable slot with all traffic.
    assert_eq!(
        route_weights(&second, "green"),
        [5, 25, 50, 75, 100, 100],
        "{}",
        show(&second)
    );
    let routes: Vec<_> = second.iter().filter(|r| r.path_only() == ROUTE).collect();
    assert!(
        routes
            .iter()
            .all(|r| r.method == "PATCH" && r.content_type.as_deref() == Some(APPLY))
    );
    assert_eq!(route_stable(routes[4]).as_deref(), Some("checkout-blue"));
    assert_eq!(route_stable(routes[5]).as_deref(), Some("checkout-green"));
    assert_state_after_each_route_write(&second);
    // After the promotion, and only then, blue is scaled to zero with a
    // replica-only apply, and green is never scaled.
    let last_route = second.iter().rposition(|r| r.path_only() == ROUTE).unwrap();
    let scale = position(&second, "blue scale", |r| {
        is_apply(r, "checkout-blue", "atlas-scale")
    });
    assert!(scale > last_route, "{}", show(&second));
    assert_eq!(replicas(&second[scale]), Some(0), "{}", second[scale]);
    assert!(
        !second
            .iter()
            .any(|r| is_apply(r, "checkout-green", "atlas-scale")),
        "{}",
        show(&second)
    );
    // The last write of the state is after everything else but the lease
    // release.
    let last_state = second
        .iter()
        .rposition(|r| r.path_only().starts_with(STATE))
        .unwrap();
    assert!(last_state > scale, "{}", show(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_returns_traffic_then_scales_the_new_slot_to_zero() {
    let c = cluster().await;
    let v1 = c
        .engine
        .start(rollout("v1", quick(2)))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(matches!(v1, Outcome::Promoted { .. }), "{v1}");
    c.log.clear();

    // Analysis after each step takes an hour between measurements, so
    // the rollout sits at 5 % until aborted.
    c.metrics.set_constant("error-rate", 0.0);
    let mut m = AnalysisMetric::new("error-rate", "error_rate:canary")
        .success("< 1%".parse().expect("valid condition"))
        .every(Duration::from_secs(3600), 2);
    m.initial_delay = Duration::ZERO;
    let slow = quick(2).with_step_analysis("health");
    let mut events = c.engine.subscribe();
    let handle = c
        .engine
        .start(rollout("v2", slow).with_analysis(AnalysisTemplate::new("health", vec![m])))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(e) = events.recv().await
                && let EventKind::WeightChanged { split } = e.kind
                && split.canary_weight().percent() == 5
            {
                return;
            }
        }
    })
    .await
    .expect("the 5 % step within 30 s");
    handle.abort().unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");

    let w = writes(&c.log);
    let routes: Vec<usize> = w
        .iter()
        .enumerate()
        .filter(|(_, r)| r.path_only() == ROUTE)
        .map(|(i, _)| i)
        .collect();
    // 5 %, then exactly one write returning everything to blue.
    assert_eq!(route_weights(&w, "green"), [5, 0], "{}", show(&w));
    assert_eq!(
        route_stable(&w[routes[1]]).as_deref(),
        Some("checkout-blue")
    );
    // Then green, and only green, scaled to zero.
    let scales: Vec<usize> = w
        .iter()
        .enumerate()
        .filter(|(_, r)| r.path.contains("fieldManager=atlas-scale"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(scales.len(), 1, "{}", show(&w));
    assert!(
        is_apply(&w[scales[0]], "checkout-green", "atlas-scale"),
        "{}",
        w[scales[0]]
    );
    assert_eq!(replicas(&w[scales[0]]), Some(0), "{}", w[scales[0]]);
    assert!(scales[0] > routes[1], "{}", show(&w));
    assert_state_after_each_route_write(&w);
}
