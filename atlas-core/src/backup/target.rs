//! The [`BackupTarget`] contract and its [`BackupTargetExt`] conveniences.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, TryStreamExt};

use super::key::{ObjectKey, ObjectPrefix};
use super::object::{
    ByteRange, ByteStream, GetOptions, GetResult, ListOptions, ObjectMeta, PutOptions, PutResult,
    UnfinishedPut, byte_stream,
};
use crate::error::{ErrorKind, Result};

/// Where backups are written: an object store with streaming puts, ranged
/// gets, listing by prefix, deletes and conditional creates.
///
/// The contract every implementation keeps (and
/// `atlas_core::testing::conformance::backup_target` checks):
///
/// - **Streaming, bounded memory.** [`put_opts`](Self::put_opts) consumes
///   its body as it uploads; a target holds at most its configured part size
///   × upload concurrency of it at once, whatever the object's size.
///   [`get_opts`](Self::get_opts) streams too.
/// - **All or nothing.** A put whose body yields an `Err` (or whose future
///   is dropped) leaves no object and no trace visible to
///   [`get_opts`](Self::get_opts), [`head`](Self::head) or
///   [`list_opts`](Self::list_opts); an object being overwritten stays
///   intact. Multipart uploads are aborted.
/// - **Integrity.** Every put computes a CRC32C of the body while streaming,
///   hands it to the backend for verification where the backend can verify,
///   and [`head`](Self::head) returns it ([`ObjectMeta::checksum`]).
/// - **Conditional create.** [`PutMode::Create`](super::PutMode::Create)
///   is atomic: of concurrent creates of one key exactly one wins, the others
///   fail with [`Error::Conflict`](crate::Error::Conflict).
/// - **Typed errors.** A missing key is [`Error::NotFound`](crate::Error::NotFound) for get, head and
///   delete; bad input (a range past the end) is [`Error::InvalidInput`](crate::Error::InvalidInput);
///   throttling, 5xx and broken connections are [`Error::Transient`](crate::Error::Transient).
/// - **Listing.** [`list_opts`](Self::list_opts) yields every key that
///   starts with the prefix exactly once, in ascending byte order, fetching
///   pages lazily.
///
/// Implement this trait for a new backend; call the conveniences of
/// [`BackupTargetExt`] (implemented for every target).
#[async_trait]
pub trait BackupTarget: fmt::Debug + Send + Sync {
    /// Writes `body` under `key`, streaming, and returns what was written.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) when `options.mode` is
    /// [`Create`](super::PutMode::Create) and the key exists; the body's own
    /// error when it yields one (nothing is written); [`Error::Transient`](crate::Error::Transient) /
    /// [`Error::Backend`](crate::Error::Backend) from the backend.
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult>;

    /// Reads the object under `key` (or a range of it) as a stream.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) when the key does not exist;
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) (field `range`) when the range starts at or
    /// past the end of the object.
    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult>;

    /// The metadata of the object under `key`, with its checksum.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) when the key does not exist.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta>;

    /// Every object whose key starts with `prefix`, in ascending key order,
    /// fetched a page at a time as the stream is polled.
    ///
    /// Errors come as items of the stream; a listing that failed may be
    /// resumed with [`ListOptions::start_after`] set to the last key seen.
    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>>;

    /// Deletes the object under `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) when the key does not exist.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;

    /// What puts under `prefix` that never finished left behind (see
    /// [`UnfinishedPut`]), puts in progress included. The default, for
    /// targets whose puts leave nothing behind when the writer dies (an
    /// in-memory store) or that cannot list such leftovers, is none.
    ///
    /// # Errors
    /// Backend errors.
    async fn unfinished_puts(&self, prefix: &ObjectPrefix) -> Result<Vec<UnfinishedPut>> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Removes a leftover that [`unfinished_puts`](Self::unfinished_puts)
    /// listed; one already gone counts as removed. The caller must know
    /// that its writer is gone: removing a put in progress makes that put
    /// fail. The default does nothing (there is nothing to remove).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for an id this
    /// target never listed; backend errors.
    async fn remove_unfinished_put(&self, put: &UnfinishedPut) -> Result<()> {
        let _ = put;
        Ok(())
    }
}

/// Conveniences over [`BackupTarget`], implemented for every target.
#[async_trait]
pub trait BackupTargetExt: BackupTarget {
    /// Streams `body` to `key`, replacing any existing object.
    ///
    /// # Errors
    /// As [`BackupTarget::put_opts`].
    async fn put(&self, key: &ObjectKey, body: ByteStream) -> Result<PutResult> {
        self.put_opts(key, body, PutOptions::overwrite()).await
    }

    /// Streams `body` to `key` only if no object exists there.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) when the key exists; otherwise as
    /// [`BackupTarget::put_opts`].
    async fn put_if_absent(&self, key: &ObjectKey, body: ByteStream) -> Result<PutResult> {
        self.put_opts(key, body, PutOptions::create()).await
    }

    /// Writes `bytes` to `key`, replacing any existing object.
    ///
    /// # Errors
    /// As [`BackupTarget::put_opts`].
    async fn put_bytes(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutResult> {
        self.put_opts(key, byte_stream(bytes), PutOptions::overwrite())
            .await
    }

    /// Writes `bytes` to `key` only if no object exists there.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) when the key exists; otherwise as
    /// [`BackupTarget::put_opts`].
    async fn put_bytes_if_absent(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutResult> {
        self.put_opts(key, byte_stream(bytes), PutOptions::create())
            .await
    }

    /// Streams the whole object under `key`.
    ///
    /// # Errors
    /// As [`BackupTarget::get_opts`].
    async fn get(&self, key: &ObjectKey) -> Result<GetResult> {
        self.get_opts(key, GetOptions::default()).await
    }

    /// Streams `range` of the object under `key`.
    ///
    /// # Errors
    /// As [`BackupTarget::get_opts`].
    async fn get_range(&self, key: &ObjectKey, range: ByteRange) -> Result<GetResult> {
        self.get_opts(key, GetOptions::range(range)).await
    }

    /// The whole object under `key` in one buffer. For small objects only.
    ///
    /// # Errors
    /// As [`BackupTarget::get_opts`], or the stream's first error.
    async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes> {
        self.get(key).await?.bytes().await
    }

    /// Whether an object exists under `key`.
    ///
    /// # Errors
    /// Any error of [`BackupTarget::head`] other than [`Error::NotFound`](crate::Error::NotFound).
    async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`, succeeding when it does not exist. Returns whether an
    /// object was deleted.
    ///
    /// # Errors
    /// Any error of [`BackupTarget::delete`] other than [`Error::NotFound`](crate::Error::NotFound).
    async fn delete_if_exists(&self, key: &ObjectKey) -> Result<bool> {
        match self.delete(key).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix`, with the target's default page size.
    fn list(&self, prefix: &ObjectPrefix) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_opts(prefix, ListOptions::default())
    }

    /// Every object under `prefix`, collected. Memory grows with the number
    /// of keys; prefer [`list`](Self::list) for large prefixes.
    ///
    /// # Errors
    /// The listing's first error.
    async fn list_all(&self, prefix: &ObjectPrefix) -> Result<Vec<ObjectMeta>> {
        self.list(prefix).try_collect().await
    }
}

impl<T: BackupTarget + ?Sized> BackupTargetExt for T {}

macro_rules! forward_backup_target {
    ($ptr:ty) => {
        #[async_trait]
        impl<T: BackupTarget + ?Sized> BackupTarget for $ptr {
            async fn put_opts(
                &self,
                key: &ObjectKey,
                body: ByteStream,
                options: PutOptions,
            ) -> Result<PutResult> {
                (**self).put_opts(key, body, options).await
            }
            async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
                (**self).get_opts(key, options).await
            }
            async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
                (**self).head(key).await
            }
            fn list_opts(
                &self,
                prefix: &ObjectPrefix,
                options: ListOptions,
            ) -> BoxStream<'static, Result<ObjectMeta>> {
                (**self).list_opts(prefix, options)
            }
            async fn delete(&self, key: &ObjectKey) -> Result<()> {
                (**self).delete(key).await
            }
            async fn unfinished_puts(&self, prefix: &ObjectPrefix) -> Result<Vec<UnfinishedPut>> {
                (**self).unfinished_puts(prefix).await
            }
            async fn remove_unfinished_put(&self, put: &UnfinishedPut) -> Result<()> {
                (**self).remove_unfinished_put(put).await
            }
        }
    };
}

forward_backup_target!(Arc<T>);
forward_backup_target!(Box<T>);
