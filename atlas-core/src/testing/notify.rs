//! [`CollectingNotifier`]: keeps every notification for assertions.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::Result;
use crate::notify::{Notification, Notifier};

/// A [`Notifier`] that keeps every notification it is given, in order.
///
/// The engine delivers notifications from tasks of their own, so a test
/// waits for them with [`wait_for`](Self::wait_for) rather than reading
/// right after a rollout ends. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct CollectingNotifier {
    // A watch channel holds the list and wakes waiters on every push.
    received: Arc<watch::Sender<Vec<Notification>>>,
}

impl Default for CollectingNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl CollectingNotifier {
    /// A notifier with nothing collected.
    pub fn new() -> Self {
        CollectingNotifier {
            received: Arc::new(watch::Sender::new(Vec::new())),
        }
    }

    /// Every notification received, in order.
    pub fn notifications(&self) -> Vec<Notification> {
        self.received.borrow().clone()
    }

    /// How many notifications were received.
    pub fn len(&self) -> usize {
        self.received.borrow().len()
    }

    /// Whether none was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `count` notifications were received and
    /// returns them all. Wrap it in `tokio::time::timeout` to bound it.
    pub async fn wait_for(&self, count: usize) -> Vec<Notification> {
        let mut rx = self.received.subscribe();
        // The sender lives in `self`, so the channel never closes here.
        match rx.wait_for(|n| n.len() >= count).await {
            Ok(n) => n.clone(),
            Err(_) => self.notifications(),
        }
    }
}

#[async_trait]
impl Notifier for CollectingNotifier {
    async fn notify(&self, notification: &Notification) -> Result<()> {
        tracing::debug!(severity = %notification.severity, summary = %notification.summary, "notification collected");
        self.received.send_modify(|n| n.push(notification.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Severity;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_when_enough_arrived() {
        let n = CollectingNotifier::new();
        let waiter = tokio::spawn({
            let n = n.clone();
            async move { n.wait_for(2).await }
        });
        n.notify(&Notification::new(Severity::Info, "one"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!waiter.is_finished());
        n.notify(&Notification::new(Severity::Critical, "two"))
            .await
            .unwrap();
        let got = waiter.await.unwrap();
        let summaries: Vec<_> = got.iter().map(|n| n.summary.as_str()).collect();
        assert_eq!(summaries, ["one", "two"]);
        assert_eq!(n.len(), 2);
        assert!(!n.is_empty());
    }
}
