//! Fault injection for backup targets: [`FaultyTarget`] wraps any
//! [`BackupTarget`] and applies a [`FaultPlan`] to its calls (fail the nth
//! call, a seeded percentage of calls, add latency, lose responses) plus
//! faults inside the byte streams (a put body or a get body that breaks
//! after some bytes).
//!
//! ```
//! use std::time::Duration;
//! use atlas_core::backup::{BackupTargetExt, ObjectKey};
//! use atlas_core::testing::backup_faults::{self, FaultyTarget};
//! use atlas_core::testing::{Fault, FaultError};
//! # async fn demo(inner: impl atlas_core::backup::BackupTarget) -> atlas_core::Result<()> {
//! let target = FaultyTarget::new(inner);
//! // The second head fails retryably; every call takes 50 ms longer.
//! target.plan().add(Fault::fail(FaultError::transient("503")).on(backup_faults::HEAD).nth_call(2))?;
//! target.plan().add(Fault::delay(Duration::from_millis(50)))?;
//! // Every get body breaks after 1 MiB.
//! target.fail_get_body_after(1 << 20, FaultError::transient("connection reset"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use super::guard::lock;
use super::{FaultError, FaultPlan, Method};
use crate::backup::{
    BackupTarget, ByteStream, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutOptions, PutResult, UnfinishedPut,
};
use crate::error::Result;

/// [`BackupTarget::put_opts`], as fault rules and counters name it.
pub const PUT: Method = Method::new("put");
/// [`BackupTarget::get_opts`].
pub const GET: Method = Method::new("get");
/// [`BackupTarget::head`].
pub const HEAD: Method = Method::new("head");
/// [`BackupTarget::list_opts`] (counted when the listing starts).
pub const LIST: Method = Method::new("list");
/// [`BackupTarget::delete`].
pub const DELETE: Method = Method::new("delete");

#[derive(Debug, Default, Clone)]
struct StreamFaults {
    put_body: Option<(u64, FaultError)>,
    get_body: Option<(u64, FaultError)>,
}

/// A [`BackupTarget`] with faults injected. Clones share the plan and the
/// stream faults.
#[derive(Clone)]
pub struct FaultyTarget<T> {
    inner: T,
    plan: FaultPlan,
    streams: Arc<Mutex<StreamFaults>>,
}

impl<T: fmt::Debug> fmt::Debug for FaultyTarget<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyTarget")
            .field("inner", &self.inner)
            .field("plan", &self.plan)
            .field("streams", &*lock(&self.streams))
            .finish()
    }
}

impl<T> FaultyTarget<T> {
    /// `inner` with an empty plan: every call passes through until faults
    /// are added.
    pub fn new(inner: T) -> Self {
        Self::with_plan(inner, FaultPlan::new())
    }

    /// `inner` under `plan` (which may be shared with other wrappers).
    pub fn with_plan(inner: T, plan: FaultPlan) -> Self {
        FaultyTarget {
            inner,
            plan,
            streams: Arc::default(),
        }
    }

    /// The call-level plan: add faults with the methods [`PUT`], [`GET`],
    /// [`HEAD`], [`LIST`], [`DELETE`]; read counters.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The wrapped target.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// From now on, the body of every put yields `error` after `bytes`
    /// bytes, as the wrapped target sees it: an upload that breaks midway.
    /// A body of at most `bytes` bytes passes unchanged.
    pub fn fail_put_body_after(&self, bytes: u64, error: FaultError) {
        lock(&self.streams).put_body = Some((bytes, error));
    }

    /// From now on, the body of every get yields `error` after `bytes` bytes:
    /// a download that breaks midway. A body of at most `bytes` bytes passes
    /// unchanged.
    pub fn fail_get_body_after(&self, bytes: u64, error: FaultError) {
        lock(&self.streams).get_body = Some((bytes, error));
    }

    /// Removes the stream faults (call faults stay; see [`FaultPlan::clear`]).
    pub fn clear_stream_faults(&self) {
        *lock(&self.streams) = StreamFaults::default();
    }
}

/// `body` cut after `limit` bytes and followed by `error`.
fn break_after(body: ByteStream, limit: u64, error: FaultError, method: Method) -> ByteStream {
    let mut sent = 0u64;
    let mut broken = false;
    body.flat_map(move |item| {
        if broken {
            return stream::iter(Vec::new());
        }
        let chunk = match item {
            Ok(c) => c,
            Err(e) => return stream::iter(vec![Err(e)]),
        };
        let room = limit - sent;
        if (chunk.len() as u64) <= room {
            sent += chunk.len() as u64;
            return stream::iter(vec![Ok(chunk)]);
        }
        broken = true;
        tracing::debug!(%method, after = limit, "injecting a broken body stream");
        let mut out: Vec<Result<Bytes>> = Vec::new();
        if room > 0 {
            out.push(Ok(chunk.slice(..room as usize)));
        }
        out.push(Err(error.to_error(method)));
        stream::iter(out)
    })
    .boxed()
}

#[async_trait]
impl<T: BackupTarget> BackupTarget for FaultyTarget<T> {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let fault = lock(&self.streams).put_body.clone();
        let body = match fault {
            Some((after, error)) => break_after(body, after, error, PUT),
            None => body,
        };
        let call = self.inner.put_opts(key, body, options);
        self.plan.call(PUT, call).await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let call = self.inner.get_opts(key, options);
        let mut got = self.plan.call(GET, call).await?;
        if let Some((after, error)) = lock(&self.streams).get_body.clone() {
            got.body = break_after(got.body, after, error, GET);
        }
        Ok(got)
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let call = self.inner.head(key);
        self.plan.call(HEAD, call).await
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.list_opts(prefix, options);
        let plan = self.plan.clone();
        stream::once(async move {
            match plan.call(LIST, async { Ok(()) }).await {
                Ok(()) => inner,
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let call = self.inner.delete(key);
        self.plan.call(DELETE, call).await
    }

    // Leftovers pass through without faults: no fault plan names them.
    async fn unfinished_puts(&self, prefix: &ObjectPrefix) -> Result<Vec<UnfinishedPut>> {
        self.inner.unfinished_puts(prefix).await
    }

    async fn remove_unfinished_put(&self, put: &UnfinishedPut) -> Result<()> {
        self.inner.remove_unfinished_put(put).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn chunks(sizes: &[usize]) -> ByteStream {
        let items: Vec<Result<Bytes>> = sizes
            .iter()
            .map(|n| Ok(Bytes::from(vec![1u8; *n])))
            .collect();
        stream::iter(items).boxed()
    }

    async fn drain(s: ByteStream) -> (u64, Option<crate::Error>) {
        let mut s = s;
        let mut n = 0;
        while let Some(item) = s.next().await {
            match item {
                Ok(c) => n += c.len() as u64,
                Err(e) => {
                    assert!(
                        s.next().await.is_none(),
                        "nothing follows the injected error"
                    );
                    return (n, Some(e));
                }
            }
        }
        (n, None)
    }

    #[tokio::test]
    async fn a_broken_body_stops_exactly_after_the_limit() {
        let (n, e) = drain(break_after(
            chunks(&[10, 10, 10]),
            15,
            FaultError::transient("reset"),
            GET,
        ))
        .await;
        assert_eq!(n, 15);
        let e = e.expect("an injected error");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.to_string().contains("reset"), "{e}");

        let (n, e) = drain(break_after(
            chunks(&[10, 10]),
            20,
            FaultError::transient("x"),
            GET,
        ))
        .await;
        assert_eq!(
            (n, e.is_none()),
            (20, true),
            "a body within the limit passes"
        );

        let (n, e) = drain(break_after(
            chunks(&[10, 10]),
            10,
            FaultError::backend("x"),
            PUT,
        ))
        .await;
        assert_eq!(n, 10);
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::Backend));

        let (n, e) = drain(break_after(
            chunks(&[10]),
            0,
            FaultError::transient("x"),
            PUT,
        ))
        .await;
        assert_eq!((n, e.is_some()), (0, true));
    }
}
