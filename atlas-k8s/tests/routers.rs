//! The traffic routers: the core conformance checks on kube-fake-client,
//! the exact API requests of each write on a mock transport, and the
//! generated objects against their typed schemas.

use std::time::Duration;

use atlas_core::testing::conformance::router::{MatchSupport, SuiteConfig, WeightSupport};
use atlas_core::testing::conformance::{router as checks, unique_service};
use atlas_core::{ErrorKind, RequestMatch, ServiceName, Slot, TrafficRouter, TrafficSplit};
use atlas_k8s::router::{GatewayApiRouter, GatewayParent};
use atlas_k8s::{NginxIngressRouter, ServiceSelectorRouter};
use gateway_api::httproutes::HttpRoute;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressSpec};
use kube::client::Body;
use serde_json::{Value, json};

const NS: &str = "shop";

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).expect("valid service name")
}

fn split(stable: Slot, canary: u8) -> TrafficSplit {
    TrafficSplit::new(stable, canary).expect("valid split")
}

fn header(name: &str, value: &str) -> RequestMatch {
    RequestMatch::Header {
        name: name.into(),
        value: value.into(),
    }
}

fn cookie(name: &str, value: &str) -> RequestMatch {
    RequestMatch::Cookie {
        name: name.into(),
        value: value.into(),
    }
}

async fn fake() -> kube::Client {
    kube_fake_client::ClientBuilder::new()
        .with_resource::<HttpRoute>()
        .build()
        .await
        .expect("fake client")
}

async fn set(router: &dyn TrafficRouter, service: &ServiceName, s: &TrafficSplit) {
    router
        .set_split(service, s)
        .await
        .unwrap_or_else(|e| panic!("set_split({service}, {s}): {e}"));
}

async fn read(router: &dyn TrafficRouter, service: &ServiceName) -> Option<TrafficSplit> {
    router
        .split(service)
        .await
        .unwrap_or_else(|e| panic!("split({service}): {e}"))
}

/// The splits read back equal the splits set.
async fn round_trip(router: &dyn TrafficRouter, service: &ServiceName, splits: &[TrafficSplit]) {
    for s in splits {
        set(router, service, s).await;
        assert_eq!(read(router, service).await.as_ref(), Some(s), "{s}");
    }
}

// ---------------------------------------------------------------- conformance

/// The Service-selector router moves all traffic at once and has no match
/// rules: it declares both, and the suite checks that 5/25/50/75 % and
/// every match rule are refused.
#[tokio::test]
async fn service_selector_conformance() {
    let router = ServiceSelectorRouter::new(fake().await, NS, 80);
    let config = SuiteConfig::new()
        .with_weights(WeightSupport::AllOrNothing)
        .with_matches(MatchSupport::None);
    checks::all_with(&router, "sel", &config).await;
}

/// An HTTPRoute has no cookie match: the router declares header matches
/// only, and the suite checks that a cookie match is refused.
#[tokio::test]
async fn gateway_api_conformance() {
    let router = GatewayApiRouter::new(fake().await, NS, 8080, GatewayParent::new("public"));
    let config = SuiteConfig::new().with_matches(MatchSupport::HeaderOnly);
    checks::all_with(&router, "gw", &config).await;
}

/// ingress-nginx routes by cookie only on the value `always`: the router
/// declares it, and the suite checks that another value is refused.
#[tokio::test]
async fn nginx_ingress_conformance() {
    let router = NginxIngressRouter::new(fake().await, NS, "shop.example.com", 8080);
    let config = SuiteConfig::new().with_matches(MatchSupport::CookieAlwaysOnly);
    checks::all_with(&router, "ngx", &config).await;
}

#[cfg(feature = "istio")]
mod istio {
    use std::borrow::Cow;

    use super::*;
    use atlas_k8s::router::IstioRouter;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// Only registers Istio's kinds with kube-fake-client, whose registry
    /// takes statically typed resources; the router itself sends
    /// `DynamicObject`s to the same paths.
    macro_rules! istio_kind {
        ($ty:ident, $kind:literal, $plural:literal) => {
            struct $ty {
                metadata: ObjectMeta,
            }
            impl kube::Resource for $ty {
                type DynamicType = ();
                type Scope = k8s_openapi::NamespaceResourceScope;
                fn kind(_: &()) -> Cow<'_, str> {
                    $kind.into()
                }
                fn group(_: &()) -> Cow<'_, str> {
                    "networking.istio.io".into()
                }
                fn version(_: &()) -> Cow<'_, str> {
                    "v1".into()
                }
                fn plural(_: &()) -> Cow<'_, str> {
                    $plural.into()
                }
                fn meta(&self) -> &ObjectMeta {
                    &self.metadata
                }
                fn meta_mut(&mut self) -> &mut ObjectMeta {
                    &mut self.metadata
                }
            }
        };
    }
    istio_kind!(VirtualServiceKind, "VirtualService", "virtualservices");
    istio_kind!(DestinationRuleKind, "DestinationRule", "destinationrules");

    /// The whole core suite.
    #[tokio::test]
    async fn istio_conformance() {
        let client = kube_fake_client::ClientBuilder::new()
            .with_resource::<VirtualServiceKind>()
            .with_resource::<DestinationRuleKind>()
            .build()
            .await
            .expect("fake client");
        checks::all(&IstioRouter::new(client, NS), "istio").await;
    }
}

// ---------------------------------------------------------------- requests

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One request the mock expects, and its scripted answer.
struct Expect {
    method: &'static str,
    uri: String,
    content_type: Option<&'static str>,
    body: Option<Value>,
    status: u16,
    reply: Value,
}

fn get(uri: &str, status: u16, reply: Value) -> Expect {
    Expect {
        method: "GET",
        uri: uri.to_owned(),
        content_type: None,
        body: None,
        status,
        reply,
    }
}

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";
const APPLY_QUERY: &str = "?&force=true&fieldManager=atlas";

/// A write whose answer echoes the body (what an API server returns,
/// near enough for the client to decode).
fn patch(uri: &str, content_type: &'static str, body: Value) -> Expect {
    Expect {
        method: "PATCH",
        uri: uri.to_owned(),
        content_type: Some(content_type),
        reply: body.clone(),
        body: Some(body),
        status: 200,
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// Answers `expected` in order, asserting each request, then checks no
/// other request follows.
fn serve(mut handle: Handle, expected: Vec<Expect>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for (i, e) in expected.into_iter().enumerate() {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method().as_str(), e.method, "request {i}");
            assert_eq!(request.uri().to_string(), e.uri, "request {i}");
            let ct = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().expect("ascii").to_owned());
            assert_eq!(ct.as_deref(), e.content_type, "request {i} content type");
            let bytes = request.into_body().collect_bytes().await.expect("body");
            match e.body {
                Some(want) => {
                    let got: Value = serde_json::from_slice(&bytes).expect("JSON body");
                    assert_eq!(got, want, "request {i} body");
                }
                None => assert!(bytes.is_empty(), "request {i} has a body"),
            }
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(serde_json::to_vec(&e.reply).expect("json")))
                    .expect("response"),
            );
        }
        let extra = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(
            !matches!(extra, Ok(Some(_))),
            "no request may follow the expected ones"
        );
    })
}

fn service_body(slot: &str, stable: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "checkout",
            "namespace": NS,
            "labels": {"atlas.dev/service": "checkout"},
            "annotations": {"atlas.dev/stable-slot": stable},
        },
        "spec": {
            "selector": {"atlas.dev/service": "checkout", "atlas.dev/slot": slot},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

#[tokio::test]
async fn service_selector_requests() {
    let (client, handle) = mock();
    let router = ServiceSelectorRouter::new(client, NS, 80).with_target_port(8080);
    let checkout = svc("checkout");
    let uri = format!("/api/v1/namespaces/{NS}/services/checkout{APPLY_QUERY}");
    let server = serve(
        handle,
        vec![
            // Promote: all to green, blue still recorded as stable.
            patch(&uri, APPLY, service_body("green", "blue")),
            // Abort: back to blue.
            patch(&uri, APPLY, service_body("blue", "blue")),
            // The preview Service.
            patch(
                &format!("/api/v1/namespaces/{NS}/services/checkout-preview{APPLY_QUERY}"),
                APPLY,
                json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "checkout-preview", "namespace": NS, "labels": {"atlas.dev/service": "checkout"}},
                    "spec": {
                        "selector": {"atlas.dev/service": "checkout", "atlas.dev/slot": "green"},
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                    },
                }),
            ),
        ],
    );
    // A 5 % step is refused before any request, naming the weight.
    for w in [5, 25] {
        let err = router
            .set_split(&checkout, &split(Slot::Blue, w))
            .await
            .expect_err("only 0 or 100 %");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(&format!("{w}%")), "{err}");
    }
    let err = router
        .set_split(
            &checkout,
            &TrafficSplit::all_to(Slot::Blue).with_canary_match(header("x-canary", "1")),
        )
        .await
        .expect_err("no match rules on a Service");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    set(&router, &checkout, &split(Slot::Blue, 100)).await;
    set(&router, &checkout, &TrafficSplit::all_to(Slot::Blue)).await;
    router
        .set_preview(&checkout, Slot::Green)
        .await
        .expect("preview");
    drop(router);
    server.await.expect("server");
}

fn route_body(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "checkout", "namespace": NS, "labels": {"atlas.dev/service": "checkout"}},
        "spec": {
            "hostnames": ["shop.example.com"],
            "parentRefs": [{"name": "public", "namespace": "infra"}],
            "rules": rules,
        },
    })
}

fn backends(blue: i32, green: i32, stable_first: &str) -> Value {
    let b = json!({"name": "checkout-blue", "port": 8080, "weight": blue});
    let g = json!({"name": "checkout-green", "port": 8080, "weight": green});
    if stable_first == "blue" {
        json!([b, g])
    } else {
        json!([g, b])
    }
}

#[tokio::test]
async fn gateway_api_requests() {
    let (client, handle) = mock();
    let router = GatewayApiRouter::new(
        client,
        NS,
        8080,
        GatewayParent::new("public").in_namespace("infra"),
    )
    .with_hostname("shop.example.com");
    let checkout = svc("checkout");
    let uri = format!(
        "/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/checkout{APPLY_QUERY}"
    );
    let server = serve(
        handle,
        vec![
            // 5 % canary with a header rule first.
            patch(
                &uri,
                APPLY,
                route_body(json!([
                    {
                        "matches": [{"headers": [{"name": "x-canary", "type": "Exact", "value": "always"}]}],
                        "backendRefs": [{"name": "checkout-green", "port": 8080, "weight": 1}],
                    },
                    {"backendRefs": backends(95, 5, "blue")},
                ])),
            ),
            // Promote to 100 %: blue stays first with weight 0.
            patch(
                &uri,
                APPLY,
                route_body(json!([{"backendRefs": backends(0, 100, "blue")}])),
            ),
            // Abort: everything back to blue.
            patch(
                &uri,
                APPLY,
                route_body(json!([{"backendRefs": backends(100, 0, "blue")}])),
            ),
        ],
    );
    set(
        &router,
        &checkout,
        &split(Slot::Blue, 5).with_canary_match(header("x-canary", "always")),
    )
    .await;
    set(&router, &checkout, &split(Slot::Blue, 100)).await;
    set(&router, &checkout, &TrafficSplit::all_to(Slot::Blue)).await;
    let err = router
        .set_split(
            &checkout,
            &split(Slot::Blue, 5).with_canary_match(cookie("beta", "1")),
        )
        .await
        .expect_err("cookie");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("cookie \"beta\""), "{err}");
    drop(router);
    server.await.expect("server");
}

fn ingress_json(name: &str, backend: &str, annotations: Option<Value>) -> Value {
    let mut v = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "labels": {"atlas.dev/service": "checkout"}},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{
                "host": "shop.example.com",
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": backend, "port": {"number": 8080}}},
                }]},
            }],
        },
    });
    if let Some(a) = annotations {
        v["metadata"]["annotations"] = a;
    }
    v
}

fn merge_body(weight: &str, header: Option<(&str, &str)>) -> Value {
    let full = ingress_json("checkout-canary", "checkout-green", None);
    json!({
        "metadata": {
            "labels": {"atlas.dev/service": "checkout"},
            "annotations": {
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": weight,
                "nginx.ingress.kubernetes.io/canary-weight-total": "100",
                "nginx.ingress.kubernetes.io/canary-by-header": header.map(|h| h.0),
                "nginx.ingress.kubernetes.io/canary-by-header-value": header.map(|h| h.1),
                "nginx.ingress.kubernetes.io/canary-by-cookie": null,
            },
        },
        "spec": full["spec"],
    })
}

#[tokio::test]
async fn nginx_ingress_requests() {
    let (client, handle) = mock();
    let router = NginxIngressRouter::new(client, NS, "shop.example.com", 8080);
    let checkout = svc("checkout");
    let base = format!("/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses");
    let main = ingress_json("checkout", "checkout-blue", None);
    let canary = ingress_json(
        "checkout-canary",
        "checkout-green",
        Some(json!({"nginx.ingress.kubernetes.io/canary": "true"})),
    );
    let canary_uri = format!("{base}/checkout-canary?&fieldManager=atlas");
    let step = |weight: &'static str, header: Option<(&'static str, &'static str)>| {
        let mut write = patch(&canary_uri, MERGE, merge_body(weight, header));
        write.reply = canary.clone();
        vec![
            get(&format!("{base}/checkout"), 200, main.clone()),
            get(&format!("{base}/checkout-canary"), 200, canary.clone()),
            write,
        ]
    };
    let mut script = Vec::new();
    // The first split of a service creates both Ingresses with apply.
    script.push(get(&format!("{base}/checkout"), 404, not_found()));
    script.push(patch(
        &format!("{base}/checkout{APPLY_QUERY}"),
        APPLY,
        main.clone(),
    ));
    script.push(get(&format!("{base}/checkout-canary"), 404, not_found()));
    script.push(patch(
        &format!("{base}/checkout-canary{APPLY_QUERY}"),
        APPLY,
        ingress_json(
            "checkout-canary",
            "checkout-green",
            Some(json!({
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": "0",
                "nginx.ingress.kubernetes.io/canary-weight-total": "100",
            })),
        ),
    ));
    // Then each step is one merge patch of the canary Ingress.
    script.extend(step("5", Some(("x-canary", "always"))));
    script.extend(step("100", None));
    script.extend(step("0", None));
    let server = serve(handle, script);
    set(&router, &checkout, &TrafficSplit::all_to(Slot::Blue)).await;
    set(
        &router,
        &checkout,
        &split(Slot::Blue, 5).with_canary_match(header("x-canary", "always")),
    )
    .await;
    set(&router, &checkout, &split(Slot::Blue, 100)).await;
    set(&router, &checkout, &TrafficSplit::all_to(Slot::Blue)).await;
    drop(router);
    server.await.expect("server");
}

#[cfg(feature = "istio")]
#[tokio::test]
async fn istio_requests() {
    use atlas_k8s::router::IstioRouter;

    let (client, handle) = mock();
    let router = IstioRouter::new(client, NS);
    let checkout = svc("checkout");
    let base = format!("/apis/networking.istio.io/v1/namespaces/{NS}");
    let labels = json!({"atlas.dev/service": "checkout"});
    let dest = |slot: &str, weight: u8| json!({"destination": {"host": "checkout", "subset": slot}, "weight": weight});
    let vs = |http: Value| {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": NS, "labels": labels},
            "spec": {"hosts": ["checkout"], "http": http},
        })
    };
    let vs_uri = format!("{base}/virtualservices/checkout{APPLY_QUERY}");
    let server = serve(
        handle,
        vec![
            patch(
                &format!("{base}/destinationrules/checkout{APPLY_QUERY}"),
                APPLY,
                json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "DestinationRule",
                    "metadata": {"name": "checkout", "namespace": NS, "labels": labels},
                    "spec": {"host": "checkout", "subsets": [
                        {"name": "blue", "labels": {"atlas.dev/slot": "blue"}},
                        {"name": "green", "labels": {"atlas.dev/slot": "green"}},
                    ]},
                }),
            ),
            patch(
                &vs_uri,
                APPLY,
                vs(json!([
                    {
                        "name": "atlas-canary-match",
                        "match": [{"headers": {"cookie": {"regex": r"^(.*;\s*)?beta=1(;.*)?$"}}}],
                        "route": [dest("green", 100)],
                    },
                    {"name": "atlas-split", "route": [dest("blue", 95), dest("green", 5)]},
                ])),
            ),
            patch(
                &vs_uri,
                APPLY,
                vs(
                    json!([{"name": "atlas-split", "route": [dest("blue", 0), dest("green", 100)]}]),
                ),
            ),
            patch(
                &vs_uri,
                APPLY,
                vs(
                    json!([{"name": "atlas-split", "route": [dest("blue", 100), dest("green", 0)]}]),
                ),
            ),
        ],
    );
    set(
        &router,
        &checkout,
        &split(Slot::Blue, 5).with_canary_match(cookie("beta", "1")),
    )
    .await;
    set(&router, &checkout, &split(Slot::Blue, 100)).await;
    set(&router, &checkout, &TrafficSplit::all_to(Slot::Blue)).await;
    drop(router);
    server.await.expect("server");
}

// ---------------------------------------------------------------- schemas

fn offline() -> kube::Client {
    mock().0
}

#[tokio::test]
async fn generated_objects_round_trip_through_their_types() {
    let checkout = svc("checkout");
    let splits = [
        TrafficSplit::all_to(Slot::Blue),
        split(Slot::Green, 5).with_canary_match(header("x-canary", "always")),
        split(Slot::Blue, 100),
    ];

    let selector = ServiceSelectorRouter::new(offline(), NS, 80);
    for s in [
        selector.active_service(&checkout, Slot::Green, Slot::Blue),
        selector.preview_service(&checkout, Slot::Green),
    ] {
        let json = serde_json::to_value(&s).expect("serialize");
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Service");
        let back: Service = serde_json::from_value(json).expect("a valid Service");
        assert_eq!(back, s);
    }

    let gateway = GatewayApiRouter::new(offline(), NS, 8080, GatewayParent::new("public"));
    let nginx = NginxIngressRouter::new(offline(), NS, "shop.example.com", 8080);
    for s in &splits {
        let route = gateway.route(&checkout, s).expect("route");
        let json = serde_json::to_value(&route).expect("serialize");
        assert_eq!(json["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(json["kind"], "HTTPRoute");
        let back: HttpRoute = serde_json::from_value(json).expect("a valid HTTPRoute");
        assert_eq!(back, route);
        assert_eq!(&gateway.split_of(&checkout, &back).expect("split"), s);

        let canary = nginx.canary_ingress(&checkout, s).expect("canary");
        let json = serde_json::to_value(&canary).expect("serialize");
        assert_eq!(json["kind"], "Ingress");
        let back: Ingress = serde_json::from_value(json).expect("a valid Ingress");
        assert_eq!(back, canary);
        assert_eq!(&nginx.split_of(&checkout, &back).expect("split"), s);
        let patch = nginx.canary_merge_patch(&checkout, s).expect("patch");
        let spec: IngressSpec =
            serde_json::from_value(patch["spec"].clone()).expect("a valid IngressSpec");
        assert_eq!(Some(spec), canary.spec);
        for (k, v) in patch["metadata"]["annotations"].as_object().expect("map") {
            assert!(
                v.is_string() || v.is_null(),
                "{k}: annotation values are strings"
            );
        }
    }
    let main = nginx.main_ingress(&checkout, Slot::Blue);
    let back: Ingress =
        serde_json::from_value(serde_json::to_value(&main).expect("serialize")).expect("Ingress");
    assert_eq!(back, main);
}

#[cfg(feature = "istio")]
#[tokio::test]
async fn istio_objects_are_well_formed() {
    use atlas_k8s::router::IstioRouter;

    let router = IstioRouter::new(offline(), NS);
    let checkout = svc("checkout");
    for s in [
        split(Slot::Blue, 5).with_canary_match(cookie("beta", "1")),
        split(Slot::Green, 37).with_canary_match(header("x-canary", "on")),
        TrafficSplit::all_to(Slot::Green),
    ] {
        let vs = router.virtual_service(&checkout, &s);
        let json = serde_json::to_value(&vs).expect("serialize");
        assert_eq!(json["apiVersion"], "networking.istio.io/v1");
        assert_eq!(json["kind"], "VirtualService");
        for rule in json["spec"]["http"].as_array().expect("http") {
            let sum: i64 = rule["route"]
                .as_array()
                .expect("route")
                .iter()
                .map(|d| d["weight"].as_i64().expect("weight"))
                .sum();
            assert_eq!(sum, 100, "Istio route weights sum to 100: {rule}");
        }
        let back: kube::api::DynamicObject = serde_json::from_value(json).expect("object");
        assert_eq!(router.split_of(&checkout, &back).expect("split"), s);
    }
}

// ---------------------------------------------------------------- cluster

/// Flips a real Service between slots and reads it back, in the namespace
/// `ATLAS_K8S_TEST_NAMESPACE` (default `default`), then deletes it.
/// `cargo xtask test` skips `cluster_*` tests unless `KUBECONFIG` is set.
#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=... cargo test -p atlas-k8s -- --ignored cluster_"]
async fn cluster_service_selector_round_trips() {
    let namespace =
        std::env::var("ATLAS_K8S_TEST_NAMESPACE").unwrap_or_else(|_| "default".to_owned());
    let client = kube::Client::try_default().await.expect("kubeconfig");
    let router = ServiceSelectorRouter::new(client.clone(), &namespace, 80);
    let service = unique_service("atlas-sel");
    checks::unset_split_is_none(&router, &service).await;
    round_trip(
        &router,
        &service,
        &[
            TrafficSplit::all_to(Slot::Blue),
            split(Slot::Blue, 100),
            TrafficSplit::all_to(Slot::Green),
        ],
    )
    .await;
    let api: kube::Api<Service> = kube::Api::namespaced(client, &namespace);
    api.delete(service.as_str(), &Default::default())
        .await
        .expect("delete the test Service");
}

// ---------------------------------------------------------------- reading

#[test]
fn gateway_weights_read_back_as_proportions() {
    let router = GatewayApiRouter::new(offline_sync(), NS, 8080, GatewayParent::new("public"));
    let checkout = svc("checkout");
    let route = |blue: Option<i32>, green: Option<i32>| -> HttpRoute {
        let mut body = route_body(json!([{"backendRefs": [
            {"name": "checkout-blue", "port": 8080},
            {"name": "checkout-green", "port": 8080},
        ]}]));
        if let Some(w) = blue {
            body["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(w);
        }
        if let Some(w) = green {
            body["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(w);
        }
        serde_json::from_value(body).expect("HTTPRoute")
    };
    let read = |r: &HttpRoute| router.split_of(&checkout, r);
    assert_eq!(
        read(&route(Some(3), Some(1))).unwrap(),
        split(Slot::Blue, 25)
    );
    assert_eq!(
        read(&route(Some(0), Some(7))).unwrap(),
        split(Slot::Blue, 100)
    );
    // An unset weight is 1, so two unset weights split evenly.
    assert_eq!(read(&route(None, None)).unwrap(), split(Slot::Blue, 50));
    let err = read(&route(Some(0), Some(0))).expect_err("no traffic at all");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("HTTPRoute shop/checkout"), "{err}");
}

#[test]
fn nginx_weights_read_back_against_their_total() {
    let router = NginxIngressRouter::new(offline_sync(), NS, "shop.example.com", 8080);
    let checkout = svc("checkout");
    let canary = |notes: Value| -> Ingress {
        serde_json::from_value(ingress_json(
            "checkout-canary",
            "checkout-blue",
            Some(notes),
        ))
        .expect("Ingress")
    };
    let read = |i: &Ingress| router.split_of(&checkout, i);
    let got = read(&canary(json!({
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": "50",
        "nginx.ingress.kubernetes.io/canary-weight-total": "1000",
        "nginx.ingress.kubernetes.io/canary-by-header": "x-beta",
    })))
    .unwrap();
    // The canary Ingress points at blue, so green is stable; a header rule
    // without a value routes the value `always`.
    assert_eq!(
        got,
        split(Slot::Green, 5).with_canary_match(header("x-beta", "always"))
    );
    let err = read(&canary(json!({
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": "five",
    })))
    .expect_err("not a number");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("canary-weight"), "{err}");
    let err = read(&canary(json!({}))).expect_err("not a canary");
    assert!(
        err.to_string().contains("Ingress shop/checkout-canary"),
        "{err}"
    );
}

/// A client for building objects only: it is never called.
fn offline_sync() -> kube::Client {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    mock().0
}

/// Changing the stable slot rewrites the main Ingress first, then the
/// canary Ingress: the promotion path's two writes.
#[tokio::test]
async fn nginx_stable_change_writes_main_then_canary() {
    let (client, handle) = mock();
    let router = NginxIngressRouter::new(client, NS, "shop.example.com", 8080);
    let base = format!("/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses");
    let canary = ingress_json(
        "checkout-canary",
        "checkout-green",
        Some(json!({"nginx.ingress.kubernetes.io/canary": "true"})),
    );
    let mut to_blue = merge_body("0", None);
    to_blue["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] =
        json!("checkout-blue");
    let mut write = patch(
        &format!("{base}/checkout-canary?&fieldManager=atlas"),
        MERGE,
        to_blue,
    );
    write.reply = canary.clone();
    let server = serve(
        handle,
        vec![
            get(
                &format!("{base}/checkout"),
                200,
                ingress_json("checkout", "checkout-blue", None),
            ),
            patch(
                &format!("{base}/checkout{APPLY_QUERY}"),
                APPLY,
                ingress_json("checkout", "checkout-green", None),
            ),
            get(&format!("{base}/checkout-canary"), 200, canary.clone()),
            write,
        ],
    );
    set(
        &router,
        &svc("checkout"),
        &TrafficSplit::all_to(Slot::Green),
    )
    .await;
    drop(router);
    server.await.expect("server");
}
