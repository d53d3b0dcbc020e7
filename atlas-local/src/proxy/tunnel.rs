//! Upgraded connections (WebSocket): the bytes relayed both ways between
//! the client and the endpoint that accepted the switch, the metrics that
//! count them, and their close once a cutover took that endpoint out of
//! its slot, the same for the HTTP/1.1 and the HTTP/2 paths.

use std::sync::Arc;

use atlas_core::Slot;
use tokio::io::{AsyncRead, AsyncWrite};

use super::shared::Shared;
use super::upstream::Upstream;

/// Relays bytes both ways between `client` and `upstream` until either
/// side closes, or until the upgrade drain time after `endpoint` left its
/// slot (a cutover): the connection stays on the slot that accepted it
/// until then. The metrics count the connection as upgraded (open) while
/// it lasts, and as drained when the drain time closed it.
pub(crate) async fn relay_upgraded<C, U>(
    shared: &Arc<Shared>,
    slot: Slot,
    endpoint: &Upstream,
    client: &mut C,
    upstream: &mut U,
    open: &mut UpgradedGuard,
) where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut retired = endpoint.retired();
    let drain = shared.upgrade_drain;
    tokio::select! {
        relayed = tokio::io::copy_bidirectional(client, upstream) => {
            tracing::debug!(%slot, ?relayed, "upgraded connection ended");
        }
        () = async {
            let _ = retired.wait_for(|retired| *retired).await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::debug!(%slot, ?drain, "upgraded connection closed after the cutover drain time");
            open.drained = true;
        }
    }
}

/// Counts an upgraded connection as open while it lives, and its end
/// (drained by a cutover or not) when it goes, also when its task is
/// aborted.
pub(crate) struct UpgradedGuard {
    shared: Arc<Shared>,
    slot: Slot,
    drained: bool,
}

impl UpgradedGuard {
    pub(crate) fn new(shared: &Arc<Shared>, slot: Slot) -> Self {
        shared.metrics.record_upgrade(slot);
        UpgradedGuard {
            shared: shared.clone(),
            slot,
            drained: false,
        }
    }
}

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.shared
            .metrics
            .record_upgrade_end(self.slot, self.drained);
    }
}
