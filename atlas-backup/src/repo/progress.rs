//! Progress reporting for long actions (backup, restore, check, sync).

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A snapshot of an action's progress, passed to the progress callback after
/// every change (per chunk, per file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// What is running: `backup`, `restore`, `check`, `sync`, `prune`.
    pub action: &'static str,
    /// Files (or packs, for check and sync) finished.
    pub files_done: u64,
    /// Files (or packs) in total, once known (a backup counts them
    /// concurrently with the work, so the total may still grow).
    pub files_total: Option<u64>,
    /// Bytes processed, including bytes of files an incremental backup
    /// reused without reading.
    pub bytes_done: u64,
    /// Bytes in total, once known.
    pub bytes_total: Option<u64>,
    /// Bytes actually read from the source (backup) or downloaded (restore,
    /// check, sync).
    pub bytes_read: u64,
    /// The file (or pack, or the directory being listed) being worked on.
    pub current: Option<String>,
}

/// A progress callback. It runs on the worker that made progress, so it must
/// be quick (update a bar, send to a channel).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A progress callback that publishes into a `watch` channel, for a CLI that
/// redraws a bar on its own schedule.
pub fn progress_channel() -> (ProgressFn, watch::Receiver<Progress>) {
    let (tx, rx) = watch::channel(Progress::default());
    let f: ProgressFn = Arc::new(move |p: &Progress| {
        tx.send_replace(p.clone());
    });
    (f, rx)
}

/// Shared progress state of one action.
pub(crate) struct Tracker {
    callback: Option<ProgressFn>,
    state: Mutex<Progress>,
}

impl Tracker {
    pub(crate) fn new(action: &'static str, callback: Option<ProgressFn>) -> Self {
        Tracker {
            callback,
            state: Mutex::new(Progress {
                action,
                ..Progress::default()
            }),
        }
    }

    /// Whether anyone is told of progress.
    pub(crate) fn has_callback(&self) -> bool {
        self.callback.is_some()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Progress)) {
        let snapshot = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
            if self.callback.is_none() {
                return;
            }
            s.clone()
        };
        if let Some(cb) = &self.callback {
            cb(&snapshot);
        }
    }
}
