//! [`Scaler`] for [`KubeWorkloads`]: the slot's Deployment through its
//! scale subresource, as the Kubernetes HPA scales it.

use async_trait::async_trait;
use atlas_core::scaler::{ReplicaCount, Scaler};
use atlas_core::{Error, ErrorKind, Result, ServiceName, Slot, TrafficRouter};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::Instrument;

use super::{KubeWorkloads, slot_object_name, status};
use crate::error::map_kube_error;

/// Scales a live slot by writing `spec.replicas` through the Deployment's
/// `scale` subresource (a merge patch under the field manager with
/// `-scale` appended), the one write an autoscaler needs and the one
/// Kubernetes' own HPA makes. Kubernetes keeps requests whole itself: a
/// new pod enters the Service's EndpointSlices only once ready, and a pod
/// being removed leaves them as it starts terminating (give the pods a
/// `preStop` delay and a grace period to finish requests in flight, as for
/// any Kubernetes rollout). So `router` is not called: Service-based
/// routers follow the EndpointSlices.
///
/// Scaling down first marks the pods behind the endpoints listed last
/// with a negative `controller.kubernetes.io/pod-deletion-cost`, as
/// [`Workloads::scale`](atlas_core::Workloads::scale) does, so the pods
/// that go are the ones a router would drain last. Returns once the API
/// server accepted the new count; the Deployment controller converges to
/// it.
#[async_trait]
impl Scaler for KubeWorkloads {
    async fn scale_live(
        &self,
        service: &ServiceName,
        slot: Slot,
        replicas: u32,
        _router: &dyn TrafficRouter,
    ) -> Result<()> {
        let name = slot_object_name(service, slot)?;
        let what = self.what("Deployment", &name);
        let span = tracing::info_span!("kube_workloads.scale_live", %service, %slot, replicas, deployment = %what);
        async {
            let target = i32::try_from(replicas)
                .map_err(|_| Error::invalid("replicas", "must fit a 32-bit signed integer"))?;
            let scale = match self.deployments().get_scale(&name).await {
                Ok(scale) => scale,
                Err(e) => {
                    let err = map_kube_error(&format!("reading the scale of {what}"), e);
                    if err.kind() == ErrorKind::NotFound && replicas == 0 {
                        tracing::debug!("slot runs nothing; scaling to 0 is done");
                        return Ok(());
                    }
                    return Err(err);
                }
            };
            let current = scale
                .spec
                .and_then(|s| s.replicas)
                .map_or(0, |n| u32::try_from(n).unwrap_or(0));
            if current == replicas {
                tracing::debug!("the Deployment already has this count");
                return Ok(());
            }
            if replicas > 0 && replicas < current {
                self.mark_for_removal(&name, replicas).await?;
            }
            let params = PatchParams {
                field_manager: Some(format!("{}-scale", self.field_manager)),
                ..PatchParams::default()
            };
            let patch = json!({"spec": {"replicas": target}});
            self.deployments()
                .patch_scale(&name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| map_kube_error(&format!("scaling {what}"), e))?;
            tracing::info!(
                from = current,
                to = replicas,
                "Deployment scaled through its scale subresource"
            );
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn replica_count(&self, service: &ServiceName, slot: Slot) -> Result<ReplicaCount> {
        let name = slot_object_name(service, slot)?;
        let Some(d) = self.get_deployment(&name).await? else {
            return Ok(ReplicaCount::default());
        };
        let ready = match (&d.status, status::observed(&d)) {
            (Some(s), true) => s
                .ready_replicas
                .map_or(0, |n| u32::try_from(n).unwrap_or(0)),
            _ => 0,
        };
        Ok(ReplicaCount {
            desired: status::desired(&d),
            ready,
        })
    }
}
