//! Namespace export and restore against a scripted API server: which
//! objects are read, what is stripped, the restore order, and the YAML
//! round trip.

use atlas_core::ErrorKind;
use atlas_k8s::NamespaceExport;
use atlas_k8s::export::{RESTORE_ORDER, from_yaml, restore, restore_rank, to_yaml};
use http::Method;
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

mod scripted;

use scripted::{ex, scripted};

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn resources() -> Vec<ApiResource> {
    vec![
        resource("apps", "v1", "Deployment", "deployments"),
        resource("", "v1", "Service", "services"),
        resource("", "v1", "Secret", "secrets"),
        resource("", "v1", "Event", "events"),
        resource("", "v1", "Pod", "pods"),
        resource("", "v1", "ConfigMap", "configmaps"),
    ]
}

fn list(kind: &str, items: Vec<Value>) -> String {
    json!({ "apiVersion": "v1", "kind": format!("{kind}List"), "metadata": { "resourceVersion": "9" }, "items": items }).to_string()
}

fn server_set_meta(name: &str) -> Value {
    json!({
        "name": name, "namespace": "shop", "uid": "u-1", "resourceVersion": "42", "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
        "labels": { "app": "checkout" },
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "team": "payments"
        }
    })
}

fn script(include_secrets: bool) -> Vec<scripted::Exchange> {
    let mut s = vec![
        ex(
            Method::GET,
            "/apis/apps/v1/namespaces/shop/deployments",
            200,
            list(
                "Deployment",
                vec![json!({
                    "metadata": server_set_meta("checkout"),
                    "spec": { "replicas": 3, "selector": { "matchLabels": { "app": "checkout" } },
                              "template": { "metadata": { "labels": { "app": "checkout" } }, "spec": { "containers": [{ "name": "app", "image": "checkout:v2" }] } } },
                    "status": { "readyReplicas": 3 }
                })],
            ),
        ),
        ex(
            Method::GET,
            "/api/v1/namespaces/shop/services",
            200,
            list(
                "Service",
                vec![
                    json!({
                        "metadata": server_set_meta("checkout"),
                        "spec": { "type": "NodePort", "clusterIP": "10.0.0.5", "clusterIPs": ["10.0.0.5"],
                                  "ports": [{ "port": 80, "nodePort": 30080 }], "selector": { "app": "checkout" } }
                    }),
                    json!({
                        "metadata": { "name": "checkout-headless" },
                        "spec": { "clusterIP": "None", "ports": [{ "port": 80 }] }
                    }),
                ],
            ),
        ),
    ];
    if include_secrets {
        s.push(ex(
            Method::GET,
            "/api/v1/namespaces/shop/secrets",
            200,
            list(
                "Secret",
                vec![json!({
                    "metadata": { "name": "db" }, "data": { "password": "aHVudGVyMg==" }
                })],
            ),
        ));
    }
    s.push(ex(Method::GET, "/api/v1/namespaces/shop/pods", 200, list("Pod", vec![
        json!({ "metadata": { "name": "checkout-abc", "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-5d", "uid": "r", "controller": true }] },
                "spec": { "containers": [{ "name": "app", "image": "checkout:v2" }] } }),
        json!({ "metadata": { "name": "debug" }, "spec": { "containers": [{ "name": "sh", "image": "busybox" }] } }),
    ])));
    s.push(ex(
        Method::GET,
        "/api/v1/namespaces/shop/configmaps",
        200,
        list(
            "ConfigMap",
            vec![json!({
                "metadata": server_set_meta("settings"), "data": { "mode": "live" }
            })],
        ),
    ));
    s
}

#[tokio::test]
async fn an_export_strips_server_fields_leaves_out_derived_objects_and_orders_for_restore() {
    let (client, server, seen) = scripted(script(false));
    let objects = NamespaceExport::new(client, "shop")
        .with_resources(resources())
        .objects()
        .await
        .unwrap();
    server.await.unwrap();
    let requested = seen.lock().unwrap().clone();
    assert!(
        requested
            .iter()
            .all(|r| !r.contains("secrets") && !r.contains("events")),
        "{requested:?}"
    );

    let order: Vec<(String, String)> = objects
        .iter()
        .map(|o| (o.gvk.kind.clone(), o.name.clone()))
        .collect();
    assert_eq!(
        order,
        [
            ("ConfigMap".to_owned(), "settings".to_owned()),
            ("Pod".to_owned(), "debug".to_owned()),
            ("Service".to_owned(), "checkout".to_owned()),
            ("Service".to_owned(), "checkout-headless".to_owned()),
            ("Deployment".to_owned(), "checkout".to_owned()),
        ],
        "ConfigMaps before Pods before Services before the rest; the ReplicaSet's pod left out"
    );
    let deployment = &objects[4].object;
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["kind"], "Deployment");
    assert!(deployment.get("status").is_none());
    let meta = &deployment["metadata"];
    for gone in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
    ] {
        assert!(meta.get(gone).is_none(), "{gone} kept: {meta}");
    }
    assert_eq!(meta["annotations"], json!({ "team": "payments" }));
    assert_eq!(meta["labels"]["app"], "checkout");
    assert_eq!(deployment["spec"]["replicas"], 3);

    let service = &objects[2].object["spec"];
    assert!(
        service.get("clusterIP").is_none() && service.get("clusterIPs").is_none(),
        "{service}"
    );
    assert!(service["ports"][0].get("nodePort").is_none(), "{service}");
    assert_eq!(service["ports"][0]["port"], 80);
    assert_eq!(
        objects[3].object["spec"]["clusterIP"], "None",
        "headless kept"
    );

    // The YAML stream reads back into the same objects, in the same order.
    let yaml = to_yaml(&objects).unwrap();
    assert_eq!(yaml.matches("---\n").count(), 5);
    let back = from_yaml(&yaml).unwrap();
    assert_eq!(back.len(), objects.len());
    for (a, b) in objects.iter().zip(&back) {
        assert_eq!((&a.gvk, &a.name, &a.object), (&b.gvk, &b.name, &b.object));
        assert_eq!(a.plural, b.plural);
    }
}

#[tokio::test]
async fn secrets_are_exported_only_when_asked_for() {
    let (client, server, _) = scripted(script(true));
    let objects = NamespaceExport::new(client, "shop")
        .with_resources(resources())
        .with_secrets(true)
        .objects()
        .await
        .unwrap();
    server.await.unwrap();
    let secret = objects
        .iter()
        .find(|o| o.gvk.kind == "Secret")
        .expect("secret exported");
    assert_eq!(secret.object["data"]["password"], "aHVudGVyMg==");
    // Secrets come before ConfigMaps and Pods.
    assert_eq!(objects[0].gvk.kind, "Secret");
}

#[tokio::test]
async fn a_restore_applies_in_dependency_order_into_the_target_namespace() {
    let yaml = "\
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: checkout }
spec: { replicas: 2 }
---
apiVersion: v1
kind: Service
metadata: { name: checkout }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: runner }
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: { name: data }
";
    let objects = from_yaml(yaml).unwrap();
    let apply = |path: &str| {
        ex(
            Method::PATCH,
            path,
            200,
            json!({ "metadata": { "name": "x" } }).to_string(),
        )
        .query(&["fieldManager=atlas", "force=true"])
        .body(|b| assert_eq!(b["metadata"]["namespace"], "restored"))
    };
    let (client, server, seen) = scripted(vec![
        apply("/api/v1/namespaces/restored/persistentvolumeclaims/data"),
        apply("/api/v1/namespaces/restored/serviceaccounts/runner"),
        apply("/api/v1/namespaces/restored/services/checkout"),
        apply("/apis/apps/v1/namespaces/restored/deployments/checkout"),
    ]);
    restore(&client, "restored", &objects).await.unwrap();
    server.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[test]
fn the_restore_order_is_velero_s() {
    assert_eq!(RESTORE_ORDER[0], "CustomResourceDefinition");
    assert!(restore_rank("Namespace") < restore_rank("PersistentVolume"));
    assert!(restore_rank("PersistentVolume") < restore_rank("PersistentVolumeClaim"));
    assert!(restore_rank("Secret") < restore_rank("Pod"));
    assert!(restore_rank("ReplicaSet") < restore_rank("Service"));
    assert!(restore_rank("Service") < restore_rank("Deployment"));
    assert_eq!(restore_rank("Deployment"), restore_rank("Ingress"));
}

#[test]
fn a_document_that_is_not_an_object_is_refused_naming_it() {
    let err = from_yaml(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: a }\n---\nkind: Service\n",
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("document 2"), "{err}");
}

/// Against a real cluster (kind will do): exports `default` by discovery.
/// `cargo xtask test` skips `cluster_*` tests unless `KUBECONFIG` is set.
#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=... cargo test -p atlas-k8s -- --ignored cluster_"]
async fn cluster_exports_a_real_namespace() {
    let client = kube::Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG or in-cluster config");
    let yaml = NamespaceExport::new(client, "default")
        .to_yaml()
        .await
        .unwrap();
    let objects = from_yaml(&yaml).unwrap();
    assert!(
        objects
            .iter()
            .any(|o| o.gvk.kind == "ConfigMap" && o.name == "kube-root-ca.crt")
    );
}
