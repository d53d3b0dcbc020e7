//! [`KubeWorkloads`]: each slot of a service is a Deployment, built from a
//! pod template the user supplies, plus a Service whose EndpointSlices list
//! the slot's ready pods.
//!
//! ## Naming
//!
//! | Object | Name | Labels |
//! |---|---|---|
//! | Deployment | `<service>-blue`, `<service>-green` | `atlas.dev/service=<service>`, `atlas.dev/slot=<slot>`, `app.kubernetes.io/name=<service>`, `app.kubernetes.io/managed-by=atlas` |
//! | its pods | set by the ReplicaSet | the same four; annotation `atlas.dev/version` |
//! | Service | `<service>-blue`, `<service>-green` (ClusterIP, the container's ports) | the same four; selector `atlas.dev/service` + `atlas.dev/slot` |
//!
//! The selector holds only the two `atlas.dev/` labels, because a
//! Deployment's selector can never change. The release version is an
//! annotation (`atlas.dev/version`), not a label, because versions need not
//! be valid label values.
//!
//! KubeWorkloads creates the per-slot Services itself (turn it off with
//! [`KubeWorkloadsBuilder::manage_services`] when they come from elsewhere;
//! they must then carry the same names and select the same labels).
//! Endpoints are read from the EndpointSlices labelled
//! `kubernetes.io/service-name=<service>-<slot>`, ready and not
//! terminating only; v1 Endpoints are deprecated and never read.
//!
//! ## Writes
//!
//! Deployments and Services are written with server-side apply under the
//! field manager `atlas`, with `force`: Atlas is the authority over a
//! slot's objects, so a field someone else changed by hand (an image set
//! with `kubectl`) is taken back rather than failing the rollout with a
//! conflict. Replica changes apply only `spec.replicas` under a second
//! manager, `atlas-scale` (the field manager with `-scale` appended): a
//! server-side apply of the replica count alone under `atlas` would drop
//! every other field `atlas` owns, i.e. empty the Deployment.
//!
//! Scaling down first marks the pods behind the endpoints
//! [`SlotStatus::endpoints`] lists last with the
//! `controller.kubernetes.io/pod-deletion-cost` annotation (negative, the
//! last endpoint lowest), so the ReplicaSet controller removes exactly
//! those; pods that are not ready go first anyway, as the controller ranks
//! them below ready ones. A pod once marked keeps its cost if a scale-down
//! is interrupted.
//!
//! ## Readiness
//!
//! [`Workloads::status`] counts a Deployment's updated and ready replicas
//! only once `status.observedGeneration` reached `metadata.generation`;
//! before that they describe an older spec and are reported as 0. A
//! `Progressing` condition with reason `ProgressDeadlineExceeded`, or a
//! `ReplicaFailure` condition, is listed in [`SlotStatus::failures`].
//! [`KubeWorkloads::wait_ready`] waits with a watch, and turns
//! `ProgressDeadlineExceeded` into an [`Error::Deadline`] naming the
//! Deployment.
//!
//! ## Autoscaling
//!
//! As a [`Scaler`](atlas_core::Scaler), KubeWorkloads scales a live slot
//! through the Deployment's `scale` subresource, as the Kubernetes HPA
//! does.

mod manifest;
mod scale;
mod status;

use std::time::Duration;

use async_trait::async_trait;
use atlas_core::{Error, Release, Result, ServiceName, Slot, SlotStatus, Workloads};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tracing::Instrument;

use crate::error::map_kube_error;

pub use manifest::{
    ANNOTATION_DELETION_COST, ANNOTATION_VERSION, LABEL_APP_NAME, LABEL_MANAGED_BY, LABEL_SERVICE,
    LABEL_SERVICE_NAME, LABEL_SLOT, MAX_SERVICE_NAME, slot_object_name,
};
pub use status::PROGRESS_DEADLINE_EXCEEDED;

/// The field manager Atlas applies under unless told otherwise.
pub const FIELD_MANAGER: &str = "atlas";

/// [`Workloads`] on Kubernetes: one Deployment (and one Service) per slot,
/// in one namespace.
///
/// ```no_run
/// use atlas_core::{Release, ServiceName, Slot, Workloads};
/// use atlas_k8s::workloads::KubeWorkloads;
/// use k8s_openapi::api::core::v1::PodTemplateSpec;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let template: PodTemplateSpec = serde_yaml_ng::from_str(r#"
/// spec:
///   containers:
///   - name: app
///     ports: [{containerPort: 8080, name: http}]
///     readinessProbe: {httpGet: {path: /healthz, port: http}}
/// "#)?;
/// let client = kube::Client::try_default().await?;
/// let workloads = KubeWorkloads::builder(client, "shop", template).container("app").build()?;
/// let checkout = ServiceName::new("checkout")?;
/// workloads.deploy(&checkout, Slot::Green, &Release::new("v2", "registry.example/checkout:v2"), 3).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KubeWorkloads {
    client: Client,
    namespace: String,
    template: PodTemplateSpec,
    container: usize,
    port_name: String,
    field_manager: String,
    manage_services: bool,
}

impl std::fmt::Debug for KubeWorkloads {
    // The template may carry env values (secrets): show only where it goes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWorkloads")
            .field("namespace", &self.namespace)
            .field("container", &self.container)
            .field("field_manager", &self.field_manager)
            .field("manage_services", &self.manage_services)
            .finish_non_exhaustive()
    }
}

/// Builds a [`KubeWorkloads`]; [`build`](Self::build) checks the template.
#[derive(Clone)]
pub struct KubeWorkloadsBuilder {
    client: Client,
    namespace: String,
    template: PodTemplateSpec,
    container: Option<String>,
    field_manager: String,
    manage_services: bool,
}

impl std::fmt::Debug for KubeWorkloadsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWorkloadsBuilder")
            .field("namespace", &self.namespace)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl KubeWorkloadsBuilder {
    /// The container the release's image, args and env go into. Default:
    /// the template's first container.
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }

    /// The server-side apply field manager. Default [`FIELD_MANAGER`]
    /// (`atlas`); replica changes use this name with `-scale` appended.
    pub fn field_manager(mut self, name: impl Into<String>) -> Self {
        self.field_manager = name.into();
        self
    }

    /// Whether KubeWorkloads applies the per-slot Services. Default `true`.
    /// Turn off when the Services come from elsewhere: they must then be
    /// named `<service>-<slot>` so their EndpointSlices are found.
    pub fn manage_services(mut self, manage: bool) -> Self {
        self.manage_services = manage;
        self
    }

    /// Checks the template and builds.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the namespace or field manager is empty,
    /// the template has no containers, the named container is missing, or
    /// the container lists no port.
    pub fn build(self) -> Result<KubeWorkloads> {
        if self.namespace.is_empty() {
            return Err(Error::invalid("namespace", "must not be empty"));
        }
        if self.field_manager.is_empty() {
            return Err(Error::invalid("field_manager", "must not be empty"));
        }
        let container = manifest::container_index(&self.template, self.container.as_deref())
            .ok_or_else(|| match &self.container {
                Some(name) => Error::invalid(
                    "template.spec.containers",
                    format!("has no container named {name:?}"),
                ),
                None => Error::invalid("template.spec.containers", "must hold a container"),
            })?;
        let ports = manifest::service_ports(&self.template, container)?;
        let port_name = ports[0].name.clone().unwrap_or_default();
        Ok(KubeWorkloads {
            client: self.client,
            namespace: self.namespace,
            template: self.template,
            container,
            port_name,
            field_manager: self.field_manager,
            manage_services: self.manage_services,
        })
    }
}

impl KubeWorkloads {
    /// Starts a builder for slots in `namespace`, whose pods are `template`
    /// with each release put in.
    pub fn builder(
        client: Client,
        namespace: impl Into<String>,
        template: PodTemplateSpec,
    ) -> KubeWorkloadsBuilder {
        KubeWorkloadsBuilder {
            client,
            namespace: namespace.into(),
            template,
            container: None,
            field_manager: FIELD_MANAGER.to_owned(),
            manage_services: true,
        }
    }

    /// The namespace the slots live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(&self.field_manager).force()
    }

    fn scale_params(&self) -> PatchParams {
        PatchParams::apply(&format!("{}-scale", self.field_manager)).force()
    }

    fn what(&self, kind: &str, name: &str) -> String {
        format!("{kind} {}/{name}", self.namespace)
    }

    async fn get_deployment(&self, name: &str) -> Result<Option<Deployment>> {
        self.deployments()
            .get_opt(name)
            .await
            .map_err(|e| map_kube_error(&format!("reading {}", self.what("Deployment", name)), e))
    }

    async fn slices(&self, name: &str) -> Result<Vec<EndpointSlice>> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().labels(&format!("{LABEL_SERVICE_NAME}={name}"));
        api.list(&params).await.map(|l| l.items).map_err(|e| {
            map_kube_error(
                &format!("listing EndpointSlices of {}", self.what("Service", name)),
                e,
            )
        })
    }

    async fn status_of(&self, slot: Slot, d: &Deployment) -> Result<SlotStatus> {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let slices = self.slices(name).await?;
        Ok(status::slot_status(
            slot,
            &self.namespace,
            d,
            &slices,
            &self.port_name,
        ))
    }

    /// Waits with a watch on the slot's Deployment until every desired
    /// replica of its latest spec is updated, ready and available and no
    /// old replica is left, then returns [`Workloads::status`].
    ///
    /// The engine polls [`Workloads::status`] itself; this is for programs
    /// that drive a slot directly. The EndpointSlices may trail the
    /// Deployment by a moment, so the returned endpoints can lag.
    ///
    /// # Errors
    /// - [`Error::Deadline`] naming the Deployment when `timeout` passes
    ///   first, or when the Deployment controller reports
    ///   `ProgressDeadlineExceeded` (then `after` is the Deployment's
    ///   `progressDeadlineSeconds`, and the message holds the reason).
    /// - Kubernetes API errors mapped by [`map_kube_error`]; transient
    ///   watch errors are retried with backoff until the deadline.
    pub async fn wait_ready(
        &self,
        service: &ServiceName,
        slot: Slot,
        timeout: Duration,
    ) -> Result<SlotStatus> {
        let name = slot_object_name(service, slot)?;
        let what = self.what("Deployment", &name);
        let span = tracing::info_span!("kube_workloads.wait_ready", %service, %slot, deployment = %what, ?timeout);
        let watch = async {
            let mut events =
                std::pin::pin!(watcher::watch_object(self.deployments(), &name).default_backoff());
            loop {
                let event = match events.next().await {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        let err = watch_error(&what, e);
                        if err.is_transient() {
                            tracing::warn!(error = %err, "watch failed; retrying");
                            continue;
                        }
                        return Err(err);
                    }
                    None => {
                        return Err(Error::backend(
                            crate::BACKEND,
                            format!("the watch on {what} ended"),
                        ));
                    }
                };
                let Some(d) = event else {
                    tracing::debug!("Deployment not there (yet)");
                    continue;
                };
                if let Some((message, after)) = status::progress_deadline_exceeded(&d) {
                    return Err(status::progress_error(
                        &self.namespace,
                        &name,
                        &message,
                        after,
                    ));
                }
                if status::rolled_out(&d) {
                    tracing::debug!("Deployment rolled out");
                    return Ok(d);
                }
            }
        };
        let d = match tokio::time::timeout(timeout, watch)
            .instrument(span.clone())
            .await
        {
            Ok(d) => d?,
            Err(_) => {
                let _g = span.enter();
                tracing::warn!("not ready within the timeout");
                return Err(Error::deadline(format!("{what} becoming ready"), timeout));
            }
        };
        self.status_of(slot, &d).instrument(span).await
    }

    /// Marks the pods behind the endpoints past `keep` with a negative
    /// deletion cost, the last lowest, so the ReplicaSet removes them
    /// first. Pods gone meanwhile are skipped.
    async fn mark_for_removal(&self, name: &str, keep: u32) -> Result<()> {
        let slices = self.slices(name).await?;
        let endpoints = status::ready_endpoints(&slices, &self.port_name);
        let pods = status::pod_names(&slices);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        for (i, e) in endpoints.iter().enumerate().skip(keep) {
            if !pods.contains(&e.replica) {
                continue;
            }
            // keep → -1, …, last → -(n - keep): the last endpoint goes first.
            let cost = -(i64::try_from(i - keep).unwrap_or(i64::MAX - 1) + 1);
            let patch =
                json!({"metadata": {"annotations": {ANNOTATION_DELETION_COST: cost.to_string()}}});
            tracing::debug!(pod = %e.replica, cost, "marking pod for removal");
            match api.patch(&e.replica, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tracing::debug!(pod = %e.replica, "pod already gone");
                }
                Err(err) => {
                    return Err(map_kube_error(
                        &format!("annotating {}", self.what("Pod", &e.replica)),
                        err,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Maps a watch failure: API errors through the crate's table, the rest
/// as transient (the watcher restarts).
fn watch_error(what: &str, e: watcher::Error) -> Error {
    let what = format!("watching {what}");
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => map_kube_error(&what, e),
        watcher::Error::WatchError(status) => map_kube_error(&what, kube::Error::Api(status)),
        other @ watcher::Error::NoResourceVersion => {
            Error::backend_with(crate::BACKEND, format!("{what}: {other}"), other)
        }
    }
}

#[async_trait]
impl Workloads for KubeWorkloads {
    async fn deploy(
        &self,
        service: &ServiceName,
        slot: Slot,
        release: &Release,
        replicas: u32,
    ) -> Result<()> {
        release.validate()?;
        let d = manifest::deployment(
            &self.template,
            self.container,
            &self.namespace,
            service,
            slot,
            release,
            replicas,
        )?;
        let name = slot_object_name(service, slot)?;
        let span = tracing::info_span!("kube_workloads.deploy", %service, %slot, version = %release.version, replicas, deployment = %self.what("Deployment", &name));
        async {
            if self.manage_services {
                let svc = manifest::service(
                    &self.template,
                    self.container,
                    &self.namespace,
                    service,
                    slot,
                )?;
                let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
                api.patch(&name, &self.apply_params(), &Patch::Apply(&svc))
                    .await
                    .map_err(|e| {
                        map_kube_error(&format!("applying {}", self.what("Service", &name)), e)
                    })?;
                tracing::debug!("Service applied");
            }
            self.deployments()
                .patch(&name, &self.apply_params(), &Patch::Apply(&d))
                .await
                .map_err(|e| {
                    map_kube_error(&format!("applying {}", self.what("Deployment", &name)), e)
                })?;
            tracing::info!("Deployment applied");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn scale(&self, service: &ServiceName, slot: Slot, replicas: u32) -> Result<()> {
        let name = slot_object_name(service, slot)?;
        let span = tracing::info_span!("kube_workloads.scale", %service, %slot, replicas, deployment = %self.what("Deployment", &name));
        async {
            let Some(current) = self.get_deployment(&name).await? else {
                if replicas == 0 {
                    tracing::debug!("slot runs nothing; scaling to 0 is done");
                    return Ok(());
                }
                return Err(Error::not_found(format!(
                    "{} (the {slot} slot of {service} runs nothing)",
                    self.what("Deployment", &name)
                )));
            };
            let target = i32::try_from(replicas)
                .map_err(|_| Error::invalid("replicas", "must fit a 32-bit signed integer"))?;
            if replicas > 0 && replicas < status::desired(&current) {
                self.mark_for_removal(&name, replicas).await?;
            }
            // Only what this manager owns: apiVersion, kind, name, replicas.
            let patch = json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"replicas": target},
            });
            self.deployments()
                .patch(&name, &self.scale_params(), &Patch::Apply(&patch))
                .await
                .map_err(|e| {
                    map_kube_error(&format!("scaling {}", self.what("Deployment", &name)), e)
                })?;
            tracing::info!("Deployment scaled");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn status(&self, service: &ServiceName, slot: Slot) -> Result<SlotStatus> {
        let name = slot_object_name(service, slot)?;
        let span = tracing::debug_span!("kube_workloads.status", %service, %slot, deployment = %self.what("Deployment", &name));
        async {
            match self.get_deployment(&name).await? {
                None => Ok(SlotStatus::empty(slot)),
                Some(d) => self.status_of(slot, &d).await,
            }
        }
        .instrument(span)
        .await
    }
}
