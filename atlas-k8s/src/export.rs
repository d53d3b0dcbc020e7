//! A namespace's resources as YAML, for backups, and their restore in
//! dependency order.
//!
//! [`NamespaceExport`] lists every namespaced resource type the API server
//! serves (through discovery, or a list the caller gives), reads each
//! object of the namespace, strips what the server set (status, uid,
//! resourceVersion, generation, timestamps, managed fields, the
//! last-applied annotation, a Service's allocated cluster IPs) and what is
//! re-created on its own (Events, EndpointSlices and v1 Endpoints, objects
//! owned by a controller such as a ReplicaSet's pods), and writes the rest as
//! one multi-document YAML stream. Secrets are left out unless asked for:
//! a backup of manifests should not carry credentials by accident.
//!
//! The stream is ordered for restore as Velero orders it, so that what an
//! object needs exists before it: CustomResourceDefinitions, Namespaces,
//! StorageClasses, PersistentVolumes, PersistentVolumeClaims,
//! ServiceAccounts, Secrets, ConfigMaps, LimitRanges, Pods, ReplicaSets,
//! Services, then the rest by kind and name. [`restore`] applies a stream in
//! that order with server-side apply.
//!
//! The YAML is plain bytes: hand it to `atlas-backup`'s stream source to
//! keep it in a deduplicated, encrypted repository.

use atlas_core::{Error, Result};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use serde_json::Value;
use tracing::{debug, info};

use crate::error::map_kube_error;

/// The restore order of the kinds that must come first; every other kind
/// follows, sorted by kind then name.
pub const RESTORE_ORDER: [&str; 12] = [
    "CustomResourceDefinition",
    "Namespace",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "LimitRange",
    "Pod",
    "ReplicaSet",
    "Service",
];

/// Kinds that are re-created by the cluster and never exported.
const DERIVED_KINDS: [&str; 4] = ["Event", "EndpointSlice", "Endpoints", "ControllerRevision"];

/// Annotations the server or kubectl set, dropped on export.
const DROPPED_ANNOTATIONS: [&str; 2] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

/// Exports one namespace.
#[derive(Clone)]
pub struct NamespaceExport {
    client: Client,
    namespace: String,
    include_secrets: bool,
    resources: Option<Vec<ApiResource>>,
}

impl std::fmt::Debug for NamespaceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceExport")
            .field("namespace", &self.namespace)
            .field("include_secrets", &self.include_secrets)
            .field("resources", &self.resources.as_ref().map(Vec::len))
            .finish()
    }
}

/// One exported object.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedObject {
    /// Its group, version and kind.
    pub gvk: GroupVersionKind,
    /// Its plural resource name (for the API path on restore).
    pub plural: String,
    /// Its name.
    pub name: String,
    /// The object as it will be restored.
    pub object: Value,
}

impl NamespaceExport {
    /// An export of `namespace`, Secrets left out, resource types found by
    /// discovery.
    pub fn new(client: Client, namespace: &str) -> Self {
        NamespaceExport {
            client,
            namespace: namespace.to_owned(),
            include_secrets: false,
            resources: None,
        }
    }

    /// Includes Secrets (their data, base64 as the API gives it).
    pub fn with_secrets(mut self, include: bool) -> Self {
        self.include_secrets = include;
        self
    }

    /// Exports these resource types instead of discovering them.
    pub fn with_resources(mut self, resources: Vec<ApiResource>) -> Self {
        self.resources = Some(resources);
        self
    }

    /// Reads every exported object of the namespace, in restore order.
    ///
    /// # Errors
    /// API errors as `map_kube_error` maps them, naming the resource type.
    #[tracing::instrument(skip(self), fields(namespace = %self.namespace))]
    pub async fn objects(&self) -> Result<Vec<ExportedObject>> {
        let resources = match &self.resources {
            Some(list) => list.clone(),
            None => self.discover().await?,
        };
        let mut out = Vec::new();
        for resource in resources {
            if DERIVED_KINDS.contains(&resource.kind.as_str())
                || (resource.kind == "Secret" && !self.include_secrets)
            {
                debug!(kind = %resource.kind, "not exported");
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
            let list = api.list(&ListParams::default()).await.map_err(|e| {
                map_kube_error(
                    &format!(
                        "listing {} in namespace {}",
                        resource.plural, self.namespace
                    ),
                    e,
                )
            })?;
            for item in list.items {
                if let Some(object) = exportable(&resource, item) {
                    out.push(object);
                }
            }
        }
        sort_for_restore(&mut out);
        info!(objects = out.len(), "namespace exported");
        Ok(out)
    }

    /// The namespace as one multi-document YAML stream, in restore order.
    ///
    /// # Errors
    /// As [`objects`](Self::objects).
    pub async fn to_yaml(&self) -> Result<String> {
        to_yaml(&self.objects().await?)
    }

    /// Every namespaced resource type the server lists, gets and creates,
    /// in each group's preferred version.
    async fn discover(&self) -> Result<Vec<ApiResource>> {
        let discovery = Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(|e| map_kube_error("discovering the API's resource types", e))?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (resource, caps) in group.recommended_resources() {
                if exportable_type(&caps) {
                    out.push(resource);
                }
            }
        }
        Ok(out)
    }
}

/// A resource type worth exporting: namespaced, listable, creatable.
fn exportable_type(caps: &ApiCapabilities) -> bool {
    caps.scope == Scope::Namespaced
        && caps.supports_operation(verbs::LIST)
        && caps.supports_operation(verbs::CREATE)
}

/// The object as it will be restored, or `None` when a controller owns it
/// (it comes back when its owner does).
fn exportable(resource: &ApiResource, item: DynamicObject) -> Option<ExportedObject> {
    let owned = item
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|owners| owners.iter().any(|o| o.controller == Some(true)));
    if owned {
        return None;
    }
    let name = item.metadata.name.clone().unwrap_or_default();
    let mut object = serde_json::to_value(&item).ok()?;
    object["apiVersion"] = Value::String(resource.api_version.clone());
    object["kind"] = Value::String(resource.kind.clone());
    strip(&resource.kind, &mut object);
    Some(ExportedObject {
        gvk: GroupVersionKind::gvk(&resource.group, &resource.version, &resource.kind),
        plural: resource.plural.clone(),
        name,
        object,
    })
}

/// Removes what the server set and what a restore must not carry over.
pub fn strip(kind: &str, object: &mut Value) {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "ownerReferences",
        ] {
            meta.remove(field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for a in DROPPED_ANNOTATIONS {
                annotations.remove(a);
            }
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    match kind {
        // The cluster allocates these again; a restored Service that kept
        // them would collide or be refused.
        "Service" => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                for field in ["clusterIP", "clusterIPs"] {
                    // A headless Service's "None" is the user's choice: keep it.
                    let headless = spec
                        .get(field)
                        .is_some_and(|v| v == "None" || v == &serde_json::json!(["None"]));
                    if !headless {
                        spec.remove(field);
                    }
                }
                // Node ports are reallocated too (as Velero does unless
                // asked otherwise): a fixed one may be taken in the target
                // cluster.
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        p.remove("nodePort");
                    }
                }
            }
        }
        // A claim's bound volume name is the cluster's; restore rebinds.
        "PersistentVolumeClaim" => {
            if let Some(annotations) = object
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.retain(|k, _| !k.starts_with("pv.kubernetes.io/"));
            }
        }
        _ => {}
    }
}

/// Where `kind` goes in a restore: its index in [`RESTORE_ORDER`], or after
/// all of them.
pub fn restore_rank(kind: &str) -> usize {
    RESTORE_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(RESTORE_ORDER.len())
}

/// Sorts objects into restore order: [`RESTORE_ORDER`] first, then by kind
/// and name.
pub fn sort_for_restore(objects: &mut [ExportedObject]) {
    objects.sort_by(|a, b| {
        restore_rank(&a.gvk.kind)
            .cmp(&restore_rank(&b.gvk.kind))
            .then_with(|| a.gvk.kind.cmp(&b.gvk.kind))
            .then_with(|| a.name.cmp(&b.name))
    });
}

/// Objects as one multi-document YAML stream.
///
/// # Errors
/// [`Error::InvalidInput`] if an object cannot be written as YAML.
pub fn to_yaml(objects: &[ExportedObject]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml_ng::to_string(&o.object)
                .map_err(|e| Error::invalid(format!("{} {}", o.gvk.kind, o.name), e.to_string()))?,
        );
    }
    Ok(out)
}

/// Reads a YAML stream written by [`to_yaml`] back into objects, in restore
/// order.
///
/// # Errors
/// [`Error::InvalidInput`] naming the document for a document that is not a
/// Kubernetes object (no `apiVersion`, `kind` or `metadata.name`).
pub fn from_yaml(text: &str) -> Result<Vec<ExportedObject>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let field = format!("document {}", index + 1);
        let value =
            Value::deserialize(doc).map_err(|e| Error::invalid(field.clone(), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let kind = value["kind"].as_str().unwrap_or_default();
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            return Err(Error::invalid(
                field,
                "needs apiVersion, kind and metadata.name",
            ));
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        out.push(ExportedObject {
            plural: ApiResource::from_gvk(&gvk).plural,
            gvk,
            name: name.to_owned(),
            object: value,
        });
    }
    sort_for_restore(&mut out);
    Ok(out)
}

/// Applies `objects` into `namespace` in restore order with server-side
/// apply (field manager `atlas`), so a restore can be repeated.
///
/// # Errors
/// The first API error, naming the object; objects before it stay applied.
#[tracing::instrument(skip(client, objects), fields(objects = objects.len()))]
pub async fn restore(client: &Client, namespace: &str, objects: &[ExportedObject]) -> Result<()> {
    let mut ordered: Vec<&ExportedObject> = objects.iter().collect();
    ordered.sort_by_key(|o| restore_rank(&o.gvk.kind));
    for o in ordered {
        let resource = ApiResource::from_gvk_with_plural(&o.gvk, &o.plural);
        let api: Api<DynamicObject> = if o.gvk.kind == "Namespace" {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), namespace, &resource)
        };
        let mut object = o.object.clone();
        if o.gvk.kind != "Namespace" {
            object["metadata"]["namespace"] = Value::String(namespace.to_owned());
        }
        api.patch(
            &o.name,
            &PatchParams::apply("atlas").force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| {
            map_kube_error(
                &format!("restoring {} {namespace}/{}", o.gvk.kind, o.name),
                e,
            )
        })?;
        debug!(kind = %o.gvk.kind, name = %o.name, "restored");
    }
    Ok(())
}
