//! The one abort-on-drop guard of the cloud targets' uploads.
//!
//! A multipart (S3), resumable (GCS) or block (Azure) upload sends parts
//! before the request that makes the object appear. If the put fails or its
//! future is dropped midway, nothing may be committed, and what was sent
//! should not linger (S3 bills pending parts until the upload is aborted).
//! [`AbortOnDrop::run`] drives the upload: on success the guard is
//! disarmed; on an error the abort is awaited before the error is returned,
//! so the caller sees a clean bucket; and when the future is dropped midway
//! the abort is spawned on the current runtime. Without a runtime (the
//! future dropped while the runtime shuts down) the guard only logs what
//! the backend does about abandoned uploads itself.

use std::future::Future;

use atlas_core::Result;
use futures::future::BoxFuture;
use tracing::{debug, warn};

/// Aborts an upload unless [`run`](Self::run) sees it finish.
pub(crate) struct AbortOnDrop {
    backend: &'static str,
    upload: String,
    /// What cleans up when the abort cannot run, for the log.
    fallback: &'static str,
    abort: Option<BoxFuture<'static, ()>>,
}

impl AbortOnDrop {
    /// A guard armed with `abort`, which is not polled until needed.
    /// `upload` names the upload in logs (never a credential); `fallback`
    /// says what cleans up if the abort cannot run.
    pub(crate) fn new(
        backend: &'static str,
        upload: impl Into<String>,
        fallback: &'static str,
        abort: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        AbortOnDrop {
            backend,
            upload: upload.into(),
            fallback,
            abort: Some(Box::pin(abort)),
        }
    }

    /// Runs `upload` to its end: disarms the guard when it succeeds, aborts
    /// (and waits for the abort) when it fails, and aborts in the background
    /// when this future is dropped before either.
    pub(crate) async fn run<T>(mut self, upload: impl Future<Output = Result<T>>) -> Result<T> {
        match upload.await {
            Ok(value) => {
                self.abort = None;
                Ok(value)
            }
            Err(e) => {
                if let Some(abort) = self.abort.take() {
                    debug!(backend = self.backend, upload = %self.upload, error = %e, "upload failed; aborting it");
                    abort.await;
                }
                Err(e)
            }
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(abort) = self.abort.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                debug!(backend = self.backend, upload = %self.upload, "upload abandoned midway; aborting it in the background");
                handle.spawn(abort);
            }
            Err(_) => warn!(
                backend = self.backend,
                upload = %self.upload,
                "no runtime to abort an abandoned upload; {}",
                self.fallback
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use atlas_core::Error;

    use super::*;

    fn guard(aborts: &Arc<AtomicUsize>) -> AbortOnDrop {
        let aborts = aborts.clone();
        AbortOnDrop::new("test", "upload 1 of k", "nothing", async move {
            aborts.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test]
    async fn a_finished_upload_is_not_aborted() {
        let aborts = Arc::new(AtomicUsize::new(0));
        let out = guard(&aborts).run(async { Ok(7) }).await.unwrap();
        assert_eq!(out, 7);
        tokio::task::yield_now().await;
        assert_eq!(aborts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_upload_is_aborted_before_the_error_returns() {
        let aborts = Arc::new(AtomicUsize::new(0));
        let err = guard(&aborts)
            .run(async { Err::<(), _>(Error::transient("test", "part 2 failed")) })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("part 2"), "{err}");
        assert_eq!(aborts.load(Ordering::SeqCst), 1, "aborted once, already");
    }

    #[tokio::test]
    async fn an_upload_dropped_midway_is_aborted_in_the_background() {
        let aborts = Arc::new(AtomicUsize::new(0));
        let put = guard(&aborts).run(async {
            std::future::pending::<()>().await;
            Ok(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), put)
                .await
                .is_err()
        );
        // The abort was spawned; let it run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(aborts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_guard_dropped_without_a_runtime_does_not_panic() {
        let aborts = Arc::new(AtomicUsize::new(0));
        drop(guard(&aborts));
        assert_eq!(aborts.load(Ordering::SeqCst), 0);
    }
}
