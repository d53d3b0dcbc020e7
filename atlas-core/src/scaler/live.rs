//! Scaling a slot that serves traffic through a router that lists its
//! endpoints one by one.

use std::time::Duration;

use tracing::Instrument;

use crate::domain::{ServiceName, Slot, SlotStatus};
use crate::error::{Error, Result};
use crate::router::TrafficRouter;
use crate::workloads::Workloads;

/// Limits of one [`scale_behind_router`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveScale {
    /// Longest wait for new replicas to become ready. Default 60 s.
    pub ready_timeout: Duration,
    /// Time between two status reads while waiting. Default 100 ms.
    pub poll_interval: Duration,
}

impl Default for LiveScale {
    fn default() -> Self {
        LiveScale {
            ready_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
        }
    }
}

impl LiveScale {
    /// Checks the limits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `ready_timeout` (zero or over one
    /// hour) or `poll_interval` (zero, or longer than the timeout).
    pub fn validate(&self) -> Result<()> {
        if self.ready_timeout.is_zero() || self.ready_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "ready_timeout",
                "must be greater than 0 and at most 1h",
            ));
        }
        if self.poll_interval.is_zero() || self.poll_interval > self.ready_timeout {
            return Err(Error::invalid(
                "poll_interval",
                "must be greater than 0 and at most ready_timeout",
            ));
        }
        Ok(())
    }
}

/// Scales `slot` of `service` to `replicas` while `router` sends it
/// traffic, without failing a request, for platforms whose router is told
/// each endpoint ([`TrafficRouter::set_endpoints`]).
///
/// - **Up:** starts the new replicas, waits until every replica is ready,
///   then lists them all with the router; until then the router sends
///   nothing to the new ones. If a new replica fails or the wait passes
///   `limits.ready_timeout`, the slot is scaled back to its previous count
///   (the router never saw the new replicas) and the error says why.
/// - **Down:** tells the router to keep only the endpoints that stay (the
///   first ones listed, which [`Workloads::scale`] keeps), which returns
///   once the others finished their requests in flight, and only then
///   scales down. A slot that is not fully ready is refused with
///   [`Error::Precondition`]: which replica would stop is then not known,
///   and it could be one the router still uses.
///
/// A slot that already has `replicas` desired is left alone.
///
/// # Errors
///
/// [`Error::NotFound`] for a slot that runs no release (unless `replicas`
/// is zero); the errors of `limits`' validation; [`Error::Backend`] when a
/// new replica failed; [`Error::Deadline`] when they were not ready in
/// time; and whatever the workloads or the router return.
pub async fn scale_behind_router(
    workloads: &dyn Workloads,
    router: &dyn TrafficRouter,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
    limits: LiveScale,
) -> Result<()> {
    limits.validate()?;
    let span = tracing::info_span!("scaler.scale_live", service = %service, slot = %slot, replicas);
    async {
        let before = workloads.status(service, slot).await?;
        if before.version.is_none() {
            if replicas == 0 {
                return Ok(());
            }
            return Err(Error::not_found(format!(
                "slot {slot} of {service} runs no release to scale"
            )));
        }
        if replicas == before.desired {
            tracing::debug!("slot already has this count");
            return Ok(());
        }
        if replicas < before.desired {
            scale_down(workloads, router, service, slot, replicas, &before).await
        } else {
            scale_up(workloads, router, service, slot, replicas, &before, limits).await
        }
    }
    .instrument(span)
    .await
}

async fn scale_down(
    workloads: &dyn Workloads,
    router: &dyn TrafficRouter,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
    before: &SlotStatus,
) -> Result<()> {
    if !before.is_ready() || before.endpoints.len() != before.desired as usize {
        return Err(Error::precondition(format!(
            "slot {slot} of {service} is not fully ready ({} of {} ready): scaling it down now could stop a replica that serves traffic",
            before.ready, before.desired
        )));
    }
    let keep = &before.endpoints[..replicas as usize];
    // The router returns once the replicas that go finished their requests
    // in flight; only then are they stopped.
    router.set_endpoints(service, slot, keep).await?;
    workloads.scale(service, slot, replicas).await?;
    tracing::info!(
        from = before.desired,
        to = replicas,
        "scaled down after draining"
    );
    Ok(())
}

async fn scale_up(
    workloads: &dyn Workloads,
    router: &dyn TrafficRouter,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
    before: &SlotStatus,
    limits: LiveScale,
) -> Result<()> {
    workloads.scale(service, slot, replicas).await?;
    let ready = match await_ready(workloads, service, slot, replicas, before, limits).await {
        Ok(status) => status,
        Err(e) => {
            // Nothing was listed with the router yet: going back to the old
            // count stops only replicas that never had a request.
            tracing::warn!(error = %e, from = before.desired, "new replicas not ready; scaling back");
            if let Err(back) = workloads.scale(service, slot, before.desired).await {
                tracing::error!(error = %back, "scaling back failed");
            }
            return Err(e);
        }
    };
    router
        .set_endpoints(service, slot, &ready.endpoints)
        .await?;
    tracing::info!(
        from = before.desired,
        to = replicas,
        "scaled up; new replicas listed"
    );
    Ok(())
}

async fn await_ready(
    workloads: &dyn Workloads,
    service: &ServiceName,
    slot: Slot,
    replicas: u32,
    before: &SlotStatus,
    limits: LiveScale,
) -> Result<SlotStatus> {
    let deadline = tokio::time::Instant::now() + limits.ready_timeout;
    loop {
        let s = workloads.status(service, slot).await?;
        if let Some(failure) = s.failures.iter().find(|f| !before.failures.contains(f)) {
            return Err(Error::backend(
                "scaler",
                format!("a new replica of {service} {slot} failed: {failure}"),
            ));
        }
        if s.desired == replicas && s.is_ready() && s.endpoints.len() == replicas as usize {
            return Ok(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::deadline(
                format!("{replicas} ready replicas of {service} {slot}"),
                limits.ready_timeout,
            ));
        }
        tokio::time::sleep(limits.poll_interval).await;
    }
}
