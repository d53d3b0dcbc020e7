//! The replica count an autoscaler wants for a whole service, shared with
//! the rollout engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Instrument;

use super::contract::Scaler;
use super::share::{SlotReplicas, apportion};
use crate::domain::{ServiceName, Slot, TrafficSplit};
use crate::error::{Error, Result};
use crate::router::TrafficRouter;

#[derive(Default)]
struct Entry {
    desired: Option<u32>,
    floors: SlotReplicas,
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// The replica count an autoscaler wants for each service, as a whole,
/// and the floors a running rollout needs per slot: the one place where
/// an autoscaler and the rollout engine agree on how many replicas each
/// slot runs.
///
/// - The autoscaler [`set`](Self::set)s the service's desired count.
/// - The engine (given this handle by
///   [`EngineBuilder::desired_replicas`](crate::EngineBuilder::desired_replicas))
///   sets the canary's floor whenever its strategy deploys or scales the
///   canary, and clears the floors when the rollout ends.
/// - Both scale slots to [`targets`](Self::targets): the desired count
///   [`apportion`]ed by the split in force, each slot at least its floor.
///   A slot without traffic is left to the engine.
/// - Both scale only while holding the service's gate
///   ([`hold`](Self::hold)); the engine waits for it, [`scale_service`]
///   tries it and defers when a rollout step is scaling. So neither
///   overwrites the other: they compute the same shares from the same
///   numbers, one at a time.
///
/// Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct DesiredReplicas {
    entries: Arc<Mutex<HashMap<ServiceName, Entry>>>,
}

impl std::fmt::Debug for DesiredReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.lock();
        let mut map = f.debug_map();
        for (service, e) in entries.iter() {
            map.entry(&service.as_str(), &(e.desired, e.floors));
        }
        map.finish()
    }
}

/// Held while one party scales a service's slots; see
/// [`DesiredReplicas::hold`]. Dropping it lets the other party scale.
#[derive(Debug)]
pub struct ScalingGuard {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl DesiredReplicas {
    /// A handle with no desired count for any service.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceName, Entry>> {
        // Every critical section is a plain read or write of a field: a
        // panic cannot leave an entry half-changed.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the replica count `service` as a whole should run.
    pub fn set(&self, service: &ServiceName, replicas: u32) {
        let mut entries = self.lock();
        let entry = entries.entry(service.clone()).or_default();
        if entry.desired != Some(replicas) {
            tracing::debug!(%service, replicas, "desired replicas set");
        }
        entry.desired = Some(replicas);
    }

    /// The count `service` should run, if an autoscaler set one.
    pub fn get(&self, service: &ServiceName) -> Option<u32> {
        self.lock().get(service).and_then(|e| e.desired)
    }

    /// Forgets `service`'s desired count: slots keep what they run.
    pub fn unset(&self, service: &ServiceName) {
        if let Some(e) = self.lock().get_mut(service) {
            e.desired = None;
        }
    }

    /// Sets the least `slot` of `service` may run while a rollout needs it
    /// (the canary's scale under its strategy).
    pub fn set_floor(&self, service: &ServiceName, slot: Slot, replicas: u32) {
        let mut entries = self.lock();
        let entry = entries.entry(service.clone()).or_default();
        entry.floors.set(slot, replicas);
        tracing::debug!(%service, %slot, replicas, "replica floor set");
    }

    /// Clears both slots' floors of `service`, once no rollout needs them.
    pub fn clear_floors(&self, service: &ServiceName) {
        if let Some(e) = self.lock().get_mut(service) {
            e.floors = SlotReplicas::default();
        }
    }

    /// The floors of `service`'s slots.
    pub fn floors(&self, service: &ServiceName) -> SlotReplicas {
        self.lock()
            .get(service)
            .map(|e| e.floors)
            .unwrap_or_default()
    }

    /// What each slot of `service` should run under `split`: the desired
    /// count [`apportion`]ed by weight, each slot at least its floor.
    /// `None` when no desired count is set.
    pub fn targets(&self, service: &ServiceName, split: &TrafficSplit) -> Option<SlotReplicas> {
        let entries = self.lock();
        let e = entries.get(service)?;
        Some(apportion(e.desired?, split, e.floors))
    }

    fn gate(&self, service: &ServiceName) -> Arc<tokio::sync::Mutex<()>> {
        self.lock().entry(service.clone()).or_default().gate.clone()
    }

    /// Waits until nobody else scales `service`, and keeps it so until the
    /// guard is dropped. The engine holds it through every step that
    /// scales a slot or moves traffic.
    pub async fn hold(&self, service: &ServiceName) -> ScalingGuard {
        ScalingGuard {
            _guard: self.gate(service).lock_owned().await,
        }
    }

    /// Like [`hold`](Self::hold), but `None` at once when someone else
    /// holds it.
    pub fn try_hold(&self, service: &ServiceName) -> Option<ScalingGuard> {
        self.gate(service)
            .try_lock_owned()
            .ok()
            .map(|g| ScalingGuard { _guard: g })
    }
}

/// What one [`scale_service`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// A rollout step was scaling the service; nothing was done, try on the
    /// next tick.
    Deferred,
    /// No desired count is set for the service.
    NoDesiredCount,
    /// The slots with traffic run their targets; `changed` lists the slots
    /// scaled, with the count before and after.
    Scaled {
        /// The targets per slot.
        targets: SlotReplicas,
        /// `(slot, from, to)` for each slot scaled.
        changed: Vec<(Slot, u32, u32)>,
    },
}

/// Brings the slots of `service` that have traffic to their
/// [`DesiredReplicas::targets`] under the split `router` has in force,
/// through `scaler`. Slots that grow are scaled first, so capacity arrives
/// before any leaves. Slots without traffic are left to the rollout
/// engine (a canary before its first weight, an old slot waiting for its
/// scale-down delay).
///
/// Returns [`Applied::Deferred`] at once when the engine holds the
/// service's gate.
///
/// # Errors
///
/// [`Error::Precondition`] when the router has no split for `service`;
/// whatever the scaler or the router return.
pub async fn scale_service(
    scaler: &dyn Scaler,
    router: &dyn TrafficRouter,
    desired: &DesiredReplicas,
    service: &ServiceName,
) -> Result<Applied> {
    let span = tracing::debug_span!("scaler.scale_service", service = %service);
    async {
        let Some(_guard) = desired.try_hold(service) else {
            tracing::debug!("a rollout step is scaling; deferring");
            return Ok(Applied::Deferred);
        };
        let split = router.split(service).await?.ok_or_else(|| {
            Error::precondition(format!("the router has no traffic split for {service}"))
        })?;
        let Some(targets) = desired.targets(service, &split) else {
            return Ok(Applied::NoDesiredCount);
        };
        let mut plan = Vec::new();
        for slot in [Slot::Blue, Slot::Green] {
            if split.weight_of(slot).percent() == 0 {
                continue;
            }
            let now = scaler.replica_count(service, slot).await?.desired;
            let want = targets.get(slot);
            if now != want {
                plan.push((slot, now, want));
            }
        }
        // Growing slots first: capacity arrives before any leaves.
        plan.sort_by_key(|&(_, from, to)| to < from);
        for &(slot, from, to) in &plan {
            scaler.scale_live(service, slot, to, router).await?;
            tracing::info!(%slot, from, to, "scaled to the desired share");
        }
        Ok(Applied::Scaled {
            targets,
            changed: plan,
        })
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_is_exclusive_and_targets_follow_floors() {
        let d = DesiredReplicas::new();
        let svc = ServiceName::new("checkout").unwrap();
        let split = TrafficSplit::new(Slot::Blue, 10).unwrap();
        assert_eq!(d.targets(&svc, &split), None);
        d.set(&svc, 10);
        assert_eq!(
            d.targets(&svc, &split),
            Some(SlotReplicas { blue: 9, green: 1 })
        );
        d.set_floor(&svc, Slot::Green, 3);
        assert_eq!(
            d.targets(&svc, &split),
            Some(SlotReplicas { blue: 9, green: 3 })
        );
        d.clear_floors(&svc);
        assert_eq!(d.floors(&svc), SlotReplicas::default());
        let held = d.hold(&svc).await;
        assert!(d.try_hold(&svc).is_none(), "the gate is held");
        drop(held);
        assert!(d.try_hold(&svc).is_some());
        d.unset(&svc);
        assert_eq!(d.get(&svc), None);
    }
}
