//! The targets of one backup: each one's health (the first error it failed
//! with) and whether enough of them are left to meet the mirror policy.

use std::sync::Mutex;

use tracing::warn;

use crate::repo::error::BACKEND;
use crate::repo::repository::Repository;
use atlas_core::error::Error;

/// One target of a backup, and the first error it failed with.
pub(super) struct Sink {
    pub(super) repo: Repository,
    pub(super) error: Mutex<Option<Error>>,
}

impl Sink {
    pub(super) fn healthy(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
    pub(super) fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            warn!(target = ?self.repo.inner.target, error = %e, "backup target failed");
            *slot = Some(e);
        }
    }
}

pub(super) fn healthy_count(sinks: &[Sink]) -> usize {
    sinks.iter().filter(|s| s.healthy()).count()
}

pub(super) fn quorum_lost(sinks: &[Sink], required: usize) -> Error {
    // One target: its own error, with its own kind (a held lock stays a
    // Conflict).
    if let [only] = sinks
        && let Some(e) = only.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    {
        return e;
    }
    let errors: Vec<String> = sinks
        .iter()
        .filter_map(|s| {
            s.error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|e| format!("{:?}: {e}", s.repo.inner.target))
        })
        .collect();
    Error::backend(
        BACKEND,
        format!(
            "backup failed: {} of {} targets left, {required} required; {}",
            healthy_count(sinks),
            sinks.len(),
            errors.join("; ")
        ),
    )
}
