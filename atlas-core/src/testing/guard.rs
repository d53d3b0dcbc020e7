//! The one way the mocks take their locks.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poison: a test that panicked while holding a mock's
/// lock left plain data behind, and the next assertion should still see it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
