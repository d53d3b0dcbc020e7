//! The rollout side of the interlock: what the rollout engine asks the
//! [`FailoverStore`] before it starts a rollout and between its steps.

use super::store::FailoverStore;
use crate::domain::ServiceName;
use crate::error::Result;

/// Why a rollout of `service` must not start or go on, or `None` when it
/// may: a failover or failback of the service is in progress, or (for a
/// running rollout, `rollout` its id) a change that began while it ran
/// named it to be aborted.
pub(crate) async fn rollout_blocked(
    store: &dyn FailoverStore,
    service: &ServiceName,
    rollout: Option<&str>,
) -> Result<Option<String>> {
    let Some(state) = store.load_failover(service).await? else {
        return Ok(None);
    };
    let state = state.value;
    if let Some(t) = &state.in_progress {
        let kind = match t.kind {
            super::store::TransitionKind::Failover => "failover",
            super::store::TransitionKind::Failback => "failback",
        };
        return Ok(Some(format!(
            "a {kind} of {service} is in progress ({}); rollouts wait until it finishes",
            t.reason
        )));
    }
    if let (Some(mine), Some(named)) = (rollout, &state.abort_rollout)
        && mine == named
    {
        return Ok(Some(format!(
            "a failover of {service} began while rollout {mine} ran, so the rollout is aborted"
        )));
    }
    Ok(None)
}
