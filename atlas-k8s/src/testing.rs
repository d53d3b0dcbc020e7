//! Tools for running atlas-k8s without a cluster: a [`RecordingService`]
//! that logs every API request a [`Client`] makes, in order, and
//! [`play_controllers`], which does the work of the Deployment, ReplicaSet
//! and EndpointSlice controllers on an in-process API (such as
//! kube-fake-client's), so that Deployments written by
//! [`KubeWorkloads`](crate::KubeWorkloads) become ready and their slots get
//! endpoints.
//!
//! Enabled by the `testing` feature; meant for tests and dry runs.
//!
//! ```no_run
//! # async fn run(fake: kube::Client) {
//! use atlas_k8s::testing::{RecordingService, play_controllers};
//!
//! // The controllers talk to the fake directly, so only Atlas's own
//! // requests are recorded.
//! tokio::spawn(play_controllers(fake.clone(), "shop".to_string()));
//! let (service, log) = RecordingService::new(fake);
//! let client = kube::Client::new(service, "shop");
//! // ... use `client` ...
//! for request in log.requests() {
//!     println!("{request}");
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::workloads::{ANNOTATION_DELETION_COST, LABEL_SERVICE_NAME};

/// One API request as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `PATCH`.
    pub method: String,
    /// The path with its query, e.g.
    /// `/apis/apps/v1/namespaces/shop/deployments/checkout-blue?fieldManager=atlas&force=true`.
    pub path: String,
    /// The `Content-Type` header, which for a PATCH says which kind of
    /// patch it is (`application/apply-patch+yaml`,
    /// `application/merge-patch+json`, …).
    pub content_type: Option<String>,
    /// The body as JSON; `None` when empty, a JSON string when the body is
    /// not JSON.
    pub body: Option<Value>,
}

impl RecordedRequest {
    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    /// Whether the request changes something (any method but GET).
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

impl fmt::Display for RecordedRequest {
    /// `METHOD path [content type]` and the body as one line of JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if let Some(ct) = &self.content_type {
            write!(f, " [{ct}]")?;
        }
        if let Some(body) = &self.body {
            write!(f, " {body}")?;
        }
        Ok(())
    }
}

type Observer = Arc<dyn Fn(&RecordedRequest) + Send + Sync>;

/// The requests a [`RecordingService`] saw, in the order it saw them.
/// Cheap to clone; clones share the log.
#[derive(Clone, Default)]
pub struct RequestLog {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    observer: Arc<Mutex<Option<Observer>>>,
}

impl fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLog")
            .field("requests", &self.requests.lock().map(|r| r.len()).ok())
            .finish_non_exhaustive()
    }
}

impl RequestLog {
    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Calls `observer` with each request as it is recorded, before it is
    /// sent on: a dry run prints them this way, in order.
    pub fn on_request(&self, observer: impl Fn(&RecordedRequest) + Send + Sync + 'static) {
        *self.observer.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(observer));
    }

    fn record(&self, request: RecordedRequest) {
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Record and observe under one lock, so that concurrent requests
        // are printed in the order they are logged.
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(observer) = observer {
            observer(&request);
        }
        requests.push(request);
    }
}

/// A tower service that records each request in a [`RequestLog`] and
/// sends it on through another [`Client`] (e.g. one built by
/// kube-fake-client). Build a client over it with [`Client::new`].
#[derive(Clone)]
pub struct RecordingService {
    inner: Client,
    log: RequestLog,
}

impl fmt::Debug for RecordingService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingService")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl RecordingService {
    /// A service sending through `inner`, and the log it records into.
    pub fn new(inner: Client) -> (Self, RequestLog) {
        let log = RequestLog::default();
        (
            RecordingService {
                inner,
                log: log.clone(),
            },
            log,
        )
    }
}

impl tower_service::Service<http::Request<Body>> for RecordingService {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let log = self.log.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await?;
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body_json = if bytes.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
                )
            };
            log.record(RecordedRequest {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
                content_type,
                body: body_json,
            });
            inner
                .send(http::Request::from_parts(parts, Body::from(bytes.to_vec())))
                .await
        })
    }
}

/// The pod annotation holding the hash of the template a pod was made from.
const TEMPLATE_HASH: &str = "testing.atlas.dev/template-hash";

/// Plays the controllers a cluster runs, every 5 ms until the task is
/// dropped, for every Deployment in `namespace`:
/// - ReplicaSet: pods whose template differs from the Deployment's are
///   deleted; missing pods are created (named `<deployment>-<n>`, `n`
///   growing); surplus pods are removed lowest
///   `controller.kubernetes.io/pod-deletion-cost` first, then oldest first.
/// - EndpointSlice: one slice per Service named like the Deployment,
///   listing every pod as ready, with the Service's first port.
/// - Deployment: the status gets `observedGeneration = generation` and all
///   replica counts equal to `spec.replicas`.
///
/// The client needs the Deployment status subresource (kube-fake-client:
/// `with_status_subresource::<Deployment>()`). Failures are logged as
/// `tracing` warnings and retried on the next round.
pub async fn play_controllers(client: Client, namespace: String) {
    let mut next_pod = 0u32;
    loop {
        if let Err(e) = reconcile(&client, &namespace, &mut next_pod).await {
            tracing::warn!(%namespace, error = %e, "controller round failed");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One round of [`play_controllers`].
async fn reconcile(client: &Client, ns: &str, next_pod: &mut u32) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    for d in deployments.list(&ListParams::default()).await?.items {
        let (Some(name), Some(spec)) = (d.metadata.name.clone(), d.spec.clone()) else {
            continue;
        };
        let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let mut hasher = DefaultHasher::new();
        serde_json::to_string(&spec.template)
            .unwrap_or_default()
            .hash(&mut hasher);
        let hash = format!("{:x}", hasher.finish());
        let labels: BTreeMap<String, String> = spec.selector.match_labels.unwrap_or_default();
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
            .filter(|p| annotation(p, TEMPLATE_HASH) != Some(&hash))
        {
            delete_pod(&pods, p).await?;
        }
        current.retain(|p| annotation(p, TEMPLATE_HASH) == Some(&hash));
        if current.len() > want {
            let cost = |p: &Pod| -> i64 {
                annotation(p, ANNOTATION_DELETION_COST)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            };
            current.sort_by(|a, b| {
                cost(a)
                    .cmp(&cost(b))
                    .then(a.metadata.name.cmp(&b.metadata.name))
            });
            for p in current.drain(..current.len() - want) {
                delete_pod(&pods, &p).await?;
            }
        }
        while current.len() < want {
            *next_pod += 1;
            let n = *next_pod;
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("{name}-{n:05}"),
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {TEMPLATE_HASH: hash},
                },
                "spec": spec.template.spec,
                "status": {"podIP": format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)},
            }))
            .map_err(kube::Error::SerdeError)?;
            current.push(pods.create(&PostParams::default(), &pod).await?);
        }
        let port = services
            .get_opt(&name)
            .await?
            .and_then(|s| s.spec?.ports?.into_iter().next());
        if let Some(port) = port {
            let mut endpoints: Vec<Value> = current
                .iter()
                .map(|p| {
                    json!({
                        "addresses": [p.status.as_ref().and_then(|s| s.pod_ip.clone())],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": p.metadata.name},
                    })
                })
                .collect();
            endpoints.sort_by_key(|e| e["targetRef"]["name"].as_str().map(str::to_owned));
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-testing"), "namespace": ns,
                             "labels": {LABEL_SERVICE_NAME: name}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": port.name, "port": port.port, "protocol": "TCP"}],
            });
            slices
                .patch(
                    &format!("{name}-testing"),
                    &PatchParams::apply("testing-controller"),
                    &Patch::Apply(&slice),
                )
                .await?;
        }
        let generation = d.metadata.generation.unwrap_or(0);
        let status = d.status.clone().unwrap_or_default();
        let n = i32::try_from(want).unwrap_or(i32::MAX);
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

async fn delete_pod(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    if let Some(name) = pod.metadata.name.as_deref() {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a String> {
    p.metadata.annotations.as_ref()?.get(key)
}
