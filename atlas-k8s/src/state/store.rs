//! The store itself: the ConfigMap layout, decoding, and the
//! compare-and-swap of rollout state.

use std::collections::BTreeMap;

use async_trait::async_trait;
use atlas_core::{
    Error, Lease as AtlasLease, Result, RolloutState, ServiceName, StateStore, Versioned,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::Instrument;

use super::lease::{self, Leases};
use super::objects::{labels, object_name};
use crate::error::map_kube_error;

/// The ConfigMap data key holding the state JSON.
pub const KEY_STATE: &str = "state.json";
/// The ConfigMap data key holding Atlas's write counter.
pub const KEY_VERSION: &str = "version";
/// The ConfigMap data key holding the layout's major version.
pub const KEY_FORMAT: &str = "format";
/// The layout this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// [`StateStore`] on Kubernetes, in one namespace.
///
/// ```no_run
/// use atlas_core::{ServiceName, StateStore};
/// use atlas_k8s::KubeStateStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = KubeStateStore::new(kube::Client::try_default().await?, "shop")?;
/// let lease = store
///     .acquire_lease(&ServiceName::new("checkout")?, "engine-1", std::time::Duration::from_secs(30))
///     .await?;
/// println!("fencing token {}", lease.token);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KubeStateStore {
    client: Client,
    namespace: String,
    /// The Leases of the same namespace, and when this process last saw
    /// each change.
    leases: Leases,
}

impl std::fmt::Debug for KubeStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStateStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeStateStore {
    /// A store keeping its ConfigMaps and Leases in `namespace`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `namespace` is empty.
    pub fn new(client: Client, namespace: impl Into<String>) -> Result<Self> {
        let namespace = namespace.into();
        if namespace.is_empty() {
            return Err(Error::invalid("namespace", "must not be empty"));
        }
        Ok(KubeStateStore {
            leases: Leases::new(client.clone(), namespace.clone()),
            client,
            namespace,
        })
    }

    /// The namespace of the store's objects.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn what(&self, kind: &str, name: &str) -> String {
        format!("{kind} {}/{name}", self.namespace)
    }

    async fn read(&self, name: &str) -> Result<Option<(ConfigMap, Versioned<RolloutState>)>> {
        let what = self.what("ConfigMap", name);
        let Some(cm) = self
            .config_maps()
            .get_opt(name)
            .await
            .map_err(|e| map_kube_error(&format!("reading {what}"), e))?
        else {
            return Ok(None);
        };
        let v = decode(&what, &cm)?;
        Ok(Some((cm, v)))
    }

    fn config_map(
        &self,
        service: &ServiceName,
        version: u64,
        state: &RolloutState,
    ) -> Result<ConfigMap> {
        let name = object_name(service);
        let json = serde_json::to_string(state).map_err(|e| {
            Error::backend_with(crate::BACKEND, "could not serialise the rollout state", e)
        })?;
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(service)),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (KEY_FORMAT.to_owned(), FORMAT.to_string()),
                (KEY_STATE.to_owned(), json),
                (KEY_VERSION.to_owned(), version.to_string()),
            ])),
            ..ConfigMap::default()
        })
    }
}

/// Reads the state and counter out of a ConfigMap.
fn decode(what: &str, cm: &ConfigMap) -> Result<Versioned<RolloutState>> {
    let data = cm.data.as_ref();
    let get = |key: &str| {
        data.and_then(|d| d.get(key))
            .ok_or_else(|| Error::invalid(format!("{what} data.{key}"), "is missing"))
    };
    if let Some(format) = data.and_then(|d| d.get(KEY_FORMAT)) {
        let major: u32 = format.parse().map_err(|_| {
            Error::invalid(
                format!("{what} data.{KEY_FORMAT}"),
                "must be a whole number",
            )
        })?;
        if major > FORMAT {
            return Err(Error::invalid(
                format!("{what} data.{KEY_FORMAT}"),
                format!("layout {major} is newer than {FORMAT}, the newest this build reads"),
            ));
        }
    }
    let version = get(KEY_VERSION)?.parse::<u64>().map_err(|_| {
        Error::invalid(
            format!("{what} data.{KEY_VERSION}"),
            "must be a whole number",
        )
    })?;
    let value = serde_json::from_str(get(KEY_STATE)?).map_err(|e| {
        Error::invalid(
            format!("{what} data.{KEY_STATE}"),
            format!("is not a rollout state: {e}"),
        )
    })?;
    Ok(Versioned { version, value })
}

#[async_trait]
impl StateStore for KubeStateStore {
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
        let name = object_name(service);
        let span = tracing::debug_span!("kube_state.load", %service, config_map = %self.what("ConfigMap", &name));
        async { Ok(self.read(&name).await?.map(|(_, v)| v)) }
            .instrument(span)
            .await
    }

    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64> {
        let name = object_name(service);
        let what = self.what("ConfigMap", &name);
        let span = tracing::info_span!("kube_state.compare_and_swap", %service, ?expected, config_map = %what);
        async {
            let Some(expected) = expected else {
                let cm = self.config_map(service, 1, state)?;
                self.config_maps()
                    .create(&PostParams::default(), &cm)
                    .await
                    .map_err(|e| map_kube_error(&format!("creating {what}"), e))?;
                tracing::info!(version = 1, "rollout state created");
                return Ok(1);
            };
            let Some((current, stored)) = self.read(&name).await? else {
                return Err(Error::conflict(format!(
                    "{what}: expected version {expected}, but no state is stored"
                )));
            };
            if stored.version != expected {
                return Err(Error::conflict(format!(
                    "{what}: expected version {expected}, stored is {}",
                    stored.version
                )));
            }
            let next = expected + 1;
            let mut cm = self.config_map(service, next, state)?;
            // The compare-and-swap: the API server refuses the replace with
            // a 409 if anything wrote the ConfigMap since it was read.
            cm.metadata.resource_version = current.metadata.resource_version;
            self.config_maps()
                .replace(&name, &PostParams::default(), &cm)
                .await
                .map_err(|e| map_kube_error(&format!("replacing {what}"), e))?;
            tracing::info!(version = next, "rollout state written");
            Ok(next)
        }
        .instrument(span)
        .await
    }

    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<AtlasLease> {
        lease::acquire(&self.leases, service, holder, ttl).await
    }

    async fn renew_lease(&self, lease: &AtlasLease) -> Result<()> {
        lease::renew(&self.leases, lease).await
    }

    async fn release_lease(&self, lease: &AtlasLease) -> Result<()> {
        lease::release(&self.leases, lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_newer_layout_is_refused_naming_both_versions() {
        let err = decode("ConfigMap a/b", &cm(&[("format", "2"), ("version", "1")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("layout 2 is newer than 1"), "{msg}");
        assert!(msg.contains("ConfigMap a/b data.format"), "{msg}");
    }

    #[test]
    fn damaged_data_is_refused_naming_the_key() {
        let err = decode("ConfigMap a/b", &cm(&[("format", "1")])).unwrap_err();
        assert!(err.to_string().contains("data.version"), "{err}");
        let err = decode(
            "ConfigMap a/b",
            &cm(&[("format", "1"), ("version", "3"), ("state.json", "{")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("data.state.json"), "{err}");
    }
}
