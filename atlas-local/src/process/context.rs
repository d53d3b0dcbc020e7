//! What the process workloads share with every replica watcher: the
//! configuration, the spawning thread and the event channel.

use tokio::sync::broadcast;

use super::config::Config;
use super::events::ReplicaEvent;
use super::spawner::Spawner;

/// How many events a slow [`events`](super::ProcessWorkloads::events)
/// receiver may fall behind before it misses some.
pub(super) const EVENT_CAPACITY: usize = 1024;

/// Shared by the workloads and every replica watcher; the spawning thread
/// ends when the last of them lets go.
pub(super) struct Context {
    pub(super) config: Config,
    pub(super) spawner: Spawner,
    pub(super) events: broadcast::Sender<ReplicaEvent>,
}

impl Context {
    /// Sends `event` to the receivers there are (none is fine).
    pub(super) fn emit(&self, event: ReplicaEvent) {
        let _ = self.events.send(event);
    }
}
