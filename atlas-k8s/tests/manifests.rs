//! The policy manifests: the production numbers in the output, a schema
//! round trip through YAML and JSON back into the typed k8s-openapi object,
//! a golden HPA, and the refusals of every builder.

use std::collections::BTreeMap;

use atlas_core::{Error, ErrorKind};
use atlas_k8s::manifests::{
    AllowFromRouterBuilder, AtlasRoleBuilder, ContainerResources, DEFAULT_RPS_METRIC,
    DisruptionBudget, HpaBuilder, Labels, PdbBuilder, PercentPolicy, PodCount, RouterKind,
    RouterPeer, default_deny, dns_egress, from_yaml, role_binding, to_json, to_yaml,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

/// Serializes `object` to YAML and JSON, reads both back into the same
/// typed object and asserts nothing was lost; returns the YAML.
fn round_trip<T>(object: &T) -> String
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let yaml = to_yaml(object).unwrap();
    let back: T = from_yaml(&yaml).unwrap();
    assert_eq!(&back, object, "YAML round trip:\n{yaml}");
    let json = to_json(object).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, object, "JSON round trip:\n{json}");
    yaml
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn field_of(e: Error) -> String {
    match e {
        Error::InvalidInput { field, .. } => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// Walks a dotted path with `[i]` indices through a YAML value.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        cur = cur.get(key).unwrap_or_else(|| panic!("{path}: no {key}"));
        if let Some(i) = index {
            cur = cur.get(i).unwrap_or_else(|| panic!("{path}: no [{i}]"));
        }
    }
    cur
}

const GOLDEN_HPA: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: checkout
  namespace: shop
  labels:
    app.kubernetes.io/managed-by: atlas
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: checkout-green
  minReplicas: 3
  maxReplicas: 100
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 60
  - type: Resource
    resource:
      name: memory
      target:
        type: Utilization
        averageUtilization: 70
  - type: Pods
    pods:
      metric:
        name: http_requests_per_second
      target:
        type: AverageValue
        averageValue: "500"
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies:
      - type: Percent
        value: 100
        periodSeconds: 15
    scaleDown:
      stabilizationWindowSeconds: 300
      selectPolicy: Max
      policies:
      - type: Percent
        value: 10
        periodSeconds: 60
"#;

#[test]
fn hpa_defaults_match_the_golden_manifest_field_by_field() {
    let hpa = HpaBuilder::new("checkout", "checkout-green")
        .namespace("shop")
        .build()
        .unwrap();
    let yaml = round_trip(&hpa);
    let got: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let golden: Value = serde_yaml_ng::from_str(GOLDEN_HPA).unwrap();
    for path in [
        "apiVersion",
        "kind",
        "metadata.name",
        "metadata.namespace",
        "metadata.labels",
        "spec.scaleTargetRef",
        "spec.minReplicas",
        "spec.maxReplicas",
        "spec.metrics[0]",
        "spec.metrics[1]",
        "spec.metrics[2]",
        "spec.behavior.scaleUp",
        "spec.behavior.scaleDown",
    ] {
        assert_eq!(at(&got, path), at(&golden, path), "{path}");
    }
    assert_eq!(got, golden, "nothing beyond the golden fields");

    // The specification's numbers, read from the typed object too.
    let spec = hpa.spec.unwrap();
    assert_eq!(spec.min_replicas, Some(3));
    assert_eq!(spec.max_replicas, 100);
    let metrics = spec.metrics.unwrap();
    let util = |i: usize| {
        metrics[i]
            .resource
            .as_ref()
            .unwrap()
            .target
            .average_utilization
    };
    assert_eq!(util(0), Some(60));
    assert_eq!(util(1), Some(70));
    let pods = metrics[2].pods.as_ref().unwrap();
    assert_eq!(pods.metric.name, DEFAULT_RPS_METRIC);
    assert_eq!(pods.target.average_value, Some(Quantity("500".into())));
    let behavior = spec.behavior.unwrap();
    let up = behavior.scale_up.unwrap();
    let down = behavior.scale_down.unwrap();
    let p_up = &up.policies.unwrap()[0];
    let p_down = &down.policies.unwrap()[0];
    assert_eq!((p_up.value, p_up.period_seconds), (100, 15));
    assert_eq!((p_down.value, p_down.period_seconds), (10, 60));
    assert_eq!(up.stabilization_window_seconds, Some(0));
    assert_eq!(down.stabilization_window_seconds, Some(300));
}

#[test]
fn hpa_options_are_honoured() {
    let hpa = HpaBuilder::new("api", "api-blue")
        .replicas(2, 10)
        .cpu_utilization(Some(75))
        .memory_utilization(None)
        .requests_per_second(Some(250))
        .rps_metric("nginx_ingress_requests_per_second")
        .scale_up(PercentPolicy {
            percent: 50,
            period_seconds: 30,
        })
        .stabilization(10, 600)
        .build()
        .unwrap();
    let yaml = round_trip(&hpa);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(at(&v, "spec.minReplicas"), &Value::from(2));
    assert_eq!(at(&v, "spec.maxReplicas"), &Value::from(10));
    assert_eq!(at(&v, "spec.metrics").as_sequence().unwrap().len(), 2);
    assert_eq!(
        at(&v, "spec.metrics[0].resource.target.averageUtilization"),
        &Value::from(75)
    );
    assert_eq!(
        at(&v, "spec.metrics[1].pods.metric.name"),
        &Value::from("nginx_ingress_requests_per_second")
    );
    assert_eq!(
        at(&v, "spec.metrics[1].pods.target.averageValue"),
        &Value::from("250")
    );
    assert_eq!(
        at(&v, "spec.behavior.scaleUp.policies[0].periodSeconds"),
        &Value::from(30)
    );
    assert_eq!(
        at(&v, "spec.behavior.scaleUp.stabilizationWindowSeconds"),
        &Value::from(10)
    );
    assert_eq!(
        at(&v, "spec.behavior.scaleDown.stabilizationWindowSeconds"),
        &Value::from(600)
    );
    assert!(v.get("metadata").unwrap().get("namespace").is_none());
}

#[test]
fn hpa_refuses_bad_input_naming_the_field() {
    let base = || HpaBuilder::new("checkout", "checkout-green");
    let cases: Vec<(HpaBuilder, &str)> = vec![
        (HpaBuilder::new("Checkout", "checkout-green"), "name"),
        (HpaBuilder::new("checkout", ""), "scale_target_ref.name"),
        (base().namespace("shop_1"), "namespace"),
        (base().replicas(0, 10), "min_replicas"),
        (base().replicas(5, 4), "max_replicas"),
        (base().cpu_utilization(Some(0)), "cpu_utilization"),
        (base().memory_utilization(Some(0)), "memory_utilization"),
        (base().requests_per_second(Some(0)), "requests_per_second"),
        (base().rps_metric(" "), "rps_metric"),
        (
            base()
                .cpu_utilization(None)
                .memory_utilization(None)
                .requests_per_second(None),
            "metrics",
        ),
        (
            base().scale_up(PercentPolicy {
                percent: 0,
                period_seconds: 15,
            }),
            "scale_up.percent",
        ),
        (
            base().scale_down(PercentPolicy {
                percent: 10,
                period_seconds: 0,
            }),
            "scale_down.period_seconds",
        ),
        (
            base().scale_up(PercentPolicy {
                percent: 10,
                period_seconds: 1801,
            }),
            "scale_up.period_seconds",
        ),
        (
            base().stabilization(0, 3601),
            "scale_down.stabilization_window_seconds",
        ),
    ];
    for (builder, field) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(field_of(err), field);
    }
}

#[test]
fn pdb_carries_exactly_one_budget() {
    let app = labels(&[("app", "checkout")]);
    let pdb = PdbBuilder::new(
        "checkout",
        DisruptionBudget::MinAvailable(PodCount::Count(2)),
    )
    .namespace("shop")
    .selector(app.clone())
    .build()
    .unwrap();
    let yaml = round_trip(&pdb);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(at(&v, "apiVersion"), &Value::from("policy/v1"));
    assert_eq!(at(&v, "spec.minAvailable"), &Value::from(2));
    assert!(at(&v, "spec").get("maxUnavailable").is_none());
    assert_eq!(
        at(&v, "spec.selector.matchLabels.app"),
        &Value::from("checkout")
    );

    let pdb = PdbBuilder::new(
        "checkout",
        DisruptionBudget::MaxUnavailable(PodCount::Percent(10)),
    )
    .selector(app.clone())
    .build()
    .unwrap();
    let yaml = round_trip(&pdb);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(at(&v, "spec.maxUnavailable"), &Value::from("10%"));
    assert!(at(&v, "spec").get("minAvailable").is_none());

    // Reading a spec back into the enum.
    let spec = pdb.spec.unwrap();
    assert_eq!(
        DisruptionBudget::from_fields(spec.min_available.as_ref(), spec.max_unavailable.as_ref())
            .unwrap(),
        DisruptionBudget::MaxUnavailable(PodCount::Percent(10))
    );
    let back: PodDisruptionBudget = from_yaml(&yaml).unwrap();
    assert!(back.spec.unwrap().min_available.is_none());
}

#[test]
fn pdb_refusals() {
    let two = IntOrString::Int(2);
    let one = IntOrString::String("1%".into());
    let err = DisruptionBudget::from_fields(Some(&two), Some(&one)).unwrap_err();
    assert_eq!(field_of(err), "min_available/max_unavailable");
    let err = DisruptionBudget::from_fields(None, None).unwrap_err();
    assert_eq!(field_of(err), "min_available/max_unavailable");
    let err = DisruptionBudget::from_fields(Some(&IntOrString::Int(-1)), None).unwrap_err();
    assert_eq!(field_of(err), "min_available");
    let err =
        DisruptionBudget::from_fields(None, Some(&IntOrString::String("half".into()))).unwrap_err();
    assert_eq!(field_of(err), "max_unavailable");

    let app = labels(&[("app", "checkout")]);
    let build =
        |b: DisruptionBudget, sel: Labels| PdbBuilder::new("checkout", b).selector(sel).build();
    let err = build(
        DisruptionBudget::MinAvailable(PodCount::Percent(101)),
        app.clone(),
    )
    .unwrap_err();
    assert_eq!(field_of(err), "min_available");
    let err = build(
        DisruptionBudget::MaxUnavailable(PodCount::Count(0)),
        app.clone(),
    )
    .unwrap_err();
    assert_eq!(field_of(err), "max_unavailable");
    let err = build(
        DisruptionBudget::MinAvailable(PodCount::Count(1)),
        Labels::new(),
    )
    .unwrap_err();
    assert_eq!(field_of(err), "selector");
}

#[test]
fn default_deny_blocks_ingress_and_egress() {
    let np = default_deny("shop").unwrap();
    let yaml = round_trip(&np);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(at(&v, "apiVersion"), &Value::from("networking.k8s.io/v1"));
    assert_eq!(at(&v, "kind"), &Value::from("NetworkPolicy"));
    assert_eq!(at(&v, "metadata.namespace"), &Value::from("shop"));
    assert_eq!(
        at(&v, "spec.policyTypes"),
        &serde_yaml_ng::from_str::<Value>("[Ingress, Egress]").unwrap()
    );
    assert_eq!(
        at(&v, "spec.podSelector"),
        &serde_yaml_ng::from_str::<Value>("{}").unwrap(),
        "selects every pod"
    );
    let spec = at(&v, "spec");
    assert!(spec.get("ingress").is_none() && spec.get("egress").is_none());
    assert_eq!(field_of(default_deny("Shop").unwrap_err()), "namespace");
}

#[test]
fn dns_egress_opens_port_53_to_kube_dns() {
    let np = dns_egress("shop").unwrap();
    let yaml = round_trip(&np);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(
        at(&v, "spec.policyTypes"),
        &serde_yaml_ng::from_str::<Value>("[Egress]").unwrap()
    );
    assert_eq!(
        at(&v, "spec.egress[0].to[0].podSelector.matchLabels.k8s-app"),
        &Value::from("kube-dns")
    );
    let ports: Vec<(i64, String)> = at(&v, "spec.egress[0].ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.get("port").unwrap().as_i64().unwrap(),
                p.get("protocol").unwrap().as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ports, [(53, "UDP".into()), (53, "TCP".into())]);
}

#[test]
fn allow_from_router_for_pods_namespaces_or_both() {
    let app = labels(&[("app", "checkout")]);
    let router_pods = labels(&[("app.kubernetes.io/name", "ingress-nginx")]);
    let router_ns = labels(&[("kubernetes.io/metadata.name", "ingress-nginx")]);
    let cases = [
        (RouterPeer::Pods(router_pods.clone()), true, false),
        (RouterPeer::Namespace(router_ns.clone()), false, true),
        (
            RouterPeer::PodsInNamespace {
                namespace: router_ns.clone(),
                pods: router_pods.clone(),
            },
            true,
            true,
        ),
    ];
    for (peer, has_pods, has_ns) in cases {
        let np = AllowFromRouterBuilder::new("allow-router", app.clone(), 8080)
            .namespace("shop")
            .router(peer.clone())
            .build()
            .unwrap();
        let yaml = round_trip(&np);
        let back: NetworkPolicy = from_yaml(&yaml).unwrap();
        let spec = back.spec.unwrap();
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        assert_eq!(
            spec.pod_selector.unwrap().match_labels,
            Some(app.clone()),
            "{peer:?}"
        );
        let rule = &spec.ingress.unwrap()[0];
        let port = &rule.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, Some(IntOrString::Int(8080)));
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        let from = &rule.from.as_ref().unwrap()[0];
        assert_eq!(
            from.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            has_pods.then(|| router_pods.clone())
        );
        assert_eq!(
            from.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            has_ns.then(|| router_ns.clone())
        );
    }

    let build = |app: Labels, port: u16, peer: Option<RouterPeer>| {
        let b = AllowFromRouterBuilder::new("allow-router", app, port);
        match peer {
            Some(p) => b.router(p),
            None => b,
        }
        .build()
        .unwrap_err()
    };
    let pods = Some(RouterPeer::Pods(router_pods.clone()));
    assert_eq!(field_of(build(app.clone(), 0, pods.clone())), "port");
    assert_eq!(field_of(build(Labels::new(), 80, pods)), "app");
    assert_eq!(field_of(build(app.clone(), 80, None)), "router");
    assert_eq!(
        field_of(build(
            app.clone(),
            80,
            Some(RouterPeer::Pods(Labels::new()))
        )),
        "router.pods"
    );
    assert_eq!(
        field_of(build(app, 80, Some(RouterPeer::Namespace(Labels::new())))),
        "router.namespace"
    );
}

fn template(containers: &[&str]) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: containers
                .iter()
                .map(|n| Container {
                    name: (*n).to_owned(),
                    image: Some("registry.example/checkout:v2".into()),
                    ..Container::default()
                })
                .collect(),
            init_containers: Some(vec![Container {
                name: "migrate".into(),
                ..Container::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

#[test]
fn container_resources_are_the_specification_numbers() {
    let mut t = template(&["app", "sidecar"]);
    ContainerResources::default().apply_to(&mut t).unwrap();
    let yaml = round_trip(&t);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    for c in [
        "spec.containers[0]",
        "spec.containers[1]",
        "spec.initContainers[0]",
    ] {
        let r = at(&v, &format!("{c}.resources"));
        assert_eq!(at(r, "requests.cpu"), &Value::from("250m"), "{c}");
        assert_eq!(at(r, "requests.memory"), &Value::from("512Mi"), "{c}");
        assert_eq!(at(r, "limits.cpu"), &Value::from("500m"), "{c}");
        assert_eq!(at(r, "limits.memory"), &Value::from("1Gi"), "{c}");
    }
    let back: PodTemplateSpec = from_yaml(&yaml).unwrap();
    let limits = back.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    assert_eq!(
        limits,
        BTreeMap::from([
            ("cpu".to_owned(), Quantity("500m".into())),
            ("memory".to_owned(), Quantity("1Gi".into())),
        ])
    );
}

#[test]
fn container_resources_refusals() {
    let mut t = template(&[]);
    assert_eq!(
        field_of(ContainerResources::default().apply_to(&mut t).unwrap_err()),
        "spec.containers"
    );
    let mut t = PodTemplateSpec::default();
    assert_eq!(
        field_of(ContainerResources::default().apply_to(&mut t).unwrap_err()),
        "spec.containers"
    );
    let cases = [
        (
            ContainerResources {
                cpu_request_millis: 600,
                ..ContainerResources::default()
            },
            "cpu_request_millis",
        ),
        (
            ContainerResources {
                memory_request_mib: 2048,
                ..ContainerResources::default()
            },
            "memory_request_mib",
        ),
        (
            ContainerResources {
                memory_limit_mib: 0,
                ..ContainerResources::default()
            },
            "memory_limit_mib",
        ),
    ];
    for (r, field) in cases {
        let mut t = template(&["app"]);
        assert_eq!(field_of(r.apply_to(&mut t).unwrap_err()), field);
        assert!(
            t.spec.unwrap().containers[0].resources.is_none(),
            "nothing applied on refusal"
        );
    }
}

/// (api group, resource) -> verbs, from a Role.
fn grants(role: &Role) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for rule in role.rules.as_ref().unwrap() {
        for g in rule.api_groups.as_ref().unwrap() {
            for r in rule.resources.as_ref().unwrap() {
                let prev = out.insert((g.clone(), r.clone()), rule.verbs.clone());
                assert!(prev.is_none(), "{g}/{r} granted twice");
            }
        }
    }
    out
}

fn verbs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn atlas_role_is_minimal_and_follows_the_routers() {
    let role = AtlasRoleBuilder::new("atlas", "shop").build().unwrap();
    round_trip(&role);
    let g = grants(&role);
    let key = |g: &str, r: &str| (g.to_owned(), r.to_owned());
    let base = BTreeMap::from([
        (
            key("apps", "deployments"),
            verbs(&["get", "list", "watch", "create", "patch"]),
        ),
        (key("", "pods"), verbs(&["get", "list", "patch"])),
        (key("", "services"), verbs(&["get", "create", "patch"])),
        (
            key("discovery.k8s.io", "endpointslices"),
            verbs(&["get", "list", "watch"]),
        ),
        (key("", "configmaps"), verbs(&["get", "create", "update"])),
        (
            key("coordination.k8s.io", "leases"),
            verbs(&["get", "create", "update"]),
        ),
    ]);
    assert_eq!(g, base);
    assert!(
        g.values()
            .all(|v| !v.iter().any(|v| v == "delete" || v == "*")),
        "nothing can delete"
    );

    let role = AtlasRoleBuilder::new("atlas", "shop")
        .routers([
            RouterKind::Istio,
            RouterKind::GatewayApi,
            RouterKind::Nginx,
            RouterKind::ServiceSelector,
            RouterKind::Istio,
        ])
        .build()
        .unwrap();
    let yaml = round_trip(&role);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(
        at(&v, "apiVersion"),
        &Value::from("rbac.authorization.k8s.io/v1")
    );
    let g = grants(&role);
    let mut expected = base.clone();
    expected.insert(
        key("gateway.networking.k8s.io", "httproutes"),
        verbs(&["get", "create", "patch"]),
    );
    expected.insert(
        key("networking.k8s.io", "ingresses"),
        verbs(&["get", "create", "patch"]),
    );
    expected.insert(
        key("networking.istio.io", "virtualservices"),
        verbs(&["get", "create", "patch"]),
    );
    expected.insert(
        key("networking.istio.io", "destinationrules"),
        verbs(&["get", "create", "patch"]),
    );
    assert_eq!(g, expected);

    let only_gateway = AtlasRoleBuilder::new("atlas", "shop")
        .routers([RouterKind::GatewayApi])
        .build()
        .unwrap();
    assert_eq!(grants(&only_gateway).len(), base.len() + 1);

    // Migration Jobs: create and follow Jobs, read the CronJob and the
    // pods' logs; still nothing can delete.
    let with_jobs = AtlasRoleBuilder::new("atlas", "shop")
        .migration_jobs(true)
        .build()
        .unwrap();
    let mut expected = base.clone();
    expected.insert(
        key("batch", "jobs"),
        verbs(&["get", "list", "watch", "create"]),
    );
    expected.insert(key("batch", "cronjobs"), verbs(&["get"]));
    expected.insert(key("", "pods/log"), verbs(&["get"]));
    assert_eq!(grants(&with_jobs), expected);

    assert_eq!(
        field_of(AtlasRoleBuilder::new("atlas", "").build().unwrap_err()),
        "namespace"
    );
    assert_eq!(
        field_of(AtlasRoleBuilder::new("-atlas", "shop").build().unwrap_err()),
        "name"
    );
}

#[test]
fn role_binding_binds_the_role_to_the_service_account() {
    let role = AtlasRoleBuilder::new("atlas", "shop").build().unwrap();
    let binding = role_binding(&role, "atlas-controller", "atlas-system").unwrap();
    let yaml = round_trip(&binding);
    let back: RoleBinding = from_yaml(&yaml).unwrap();
    assert_eq!(back.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(back.role_ref.kind, "Role");
    assert_eq!(back.role_ref.name, "atlas");
    assert_eq!(back.role_ref.api_group, "rbac.authorization.k8s.io");
    let subject = &back.subjects.unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(subject.name, "atlas-controller");
    assert_eq!(subject.namespace.as_deref(), Some("atlas-system"));

    assert_eq!(
        field_of(role_binding(&role, "Atlas", "atlas-system").unwrap_err()),
        "service_account"
    );
    assert_eq!(
        field_of(role_binding(&Role::default(), "atlas", "shop").unwrap_err()),
        "role.metadata.name"
    );
}

#[test]
fn from_yaml_refuses_another_kind() {
    let yaml = to_yaml(&default_deny("shop").unwrap()).unwrap();
    let err = from_yaml::<HorizontalPodAutoscaler>(&yaml).unwrap_err();
    assert_eq!(field_of(err), "yaml");
}

#[test]
fn object_names_are_dns_subdomains_and_namespaces_labels() {
    let hpa = HpaBuilder::new("checkout.v2", "checkout-green.shop")
        .namespace("shop")
        .build()
        .unwrap();
    assert_eq!(hpa.metadata.name.as_deref(), Some("checkout.v2"));
    for bad in ["a..b", ".a", "a.", "A.b", &"a".repeat(254)] {
        let err = HpaBuilder::new(bad, "checkout").build().unwrap_err();
        assert_eq!(field_of(err), "name", "{bad}");
    }
    let err = HpaBuilder::new("checkout", "checkout")
        .namespace("shop.eu")
        .build()
        .unwrap_err();
    assert_eq!(field_of(err), "namespace");
}
