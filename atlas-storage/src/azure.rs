//! [`AzureBlobTarget`]: Azure Blob Storage and Azurite, through
//! `azure_storage_blobs` 0.21.
//!
//! That crate is the legacy, community-maintained SDK line; its successor
//! takes only Entra ID tokens and cannot talk to Azurite's shared-key
//! account, so Atlas uses the legacy line and keeps this adapter thin.
//!
//! # Uploads
//!
//! A body shorter than the block size (default 8 MiB) is one `Put Blob`
//! (creates excepted, see below). Longer bodies are staged as blocks (`Put Block`, up to
//! [`AzureBlobTargetBuilder::with_concurrency`] in flight, default 4) and
//! committed with one `Put Block List`: until the commit nothing is
//! visible, and a failed upload leaves only uncommitted blocks, which Azure
//! discards after a week (Blob Storage has no call to abort them). Block ids
//! carry a random upload id, so concurrent uploads of one key never mix
//! blocks. The target holds at most `block_size × (concurrency + 1)` bytes of
//! a body ([`AzureBlobTarget::max_buffered_bytes`]).
//!
//! # Conditional create
//!
//! `put_if_absent` stages the body as blocks, even a short one, and commits
//! with `Put Block List` and `If-None-Match: *`; the service refuses
//! atomically with 409 when the blob exists. (A `Put Blob` would be one
//! request less, but Azurite refuses it with `BlobAlreadyExists` wherever an
//! interrupted upload left uncommitted blocks, while `Put Block List`
//! ignores them.) Of concurrent creates the first commit wins; the others
//! fail with [`Error::Conflict`], whether the service says the blob exists or
//! that the winner's commit discarded their blocks.
//!
//! # Checksums
//!
//! A single `Put Blob` carries the body's MD5 (`Content-MD5`), which the
//! service verifies. (The SDK drops per-block hashes, so staged blocks rely
//! on TLS.) The whole blob's CRC32C, computed while streaming, is stored as
//! the blob metadata `atlas_crc32c` in the same request that makes the blob
//! visible, and [`head`](BackupTarget::head) returns it. Listings carry no
//! checksum.
//!
//! # Credentials
//!
//! Shared key ([`with_access_key`](AzureBlobTargetBuilder::with_access_key)),
//! SAS token ([`with_sas_token`](AzureBlobTargetBuilder::with_sas_token)) or
//! an Entra ID token credential
//! ([`with_token_credential`](AzureBlobTargetBuilder::with_token_credential),
//! e.g. from `azure_identity`). Keys and tokens never appear in `Debug`
//! output or logs.
//!
//! # Retries
//!
//! The SDK's retries are off (its defaults made a refused connection take
//! 80 s to fail); every request runs through the target's [`RetryConfig`].

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use atlas_core::backup::{
    BackupTarget, ByteStream, Checksum, GetOptions, GetResult, ListOptions, ObjectKey, ObjectMeta,
    ObjectPrefix, PutMode, PutOptions, PutResult, RetryConfig,
};
use atlas_core::{Error, Result};
use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind as AzureErrorKind;
use azure_core::prelude::{IfMatchCondition, NextMarker};
use azure_core::request_options::{MaxResults, Metadata};
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::blob::{BlobBlockType, BlockList};
use azure_storage_blobs::prelude::{BlobClient, BlockId, ClientBuilder, ContainerClient, Hash};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use md5::{Digest, Md5};
use tracing::{Instrument, debug, debug_span};

use crate::env::{Env, ProcessEnv, setting, url_setting};
use crate::parts::{PartCutter, upload_parts};
use crate::secret::Secret;

const BACKEND: &str = "azure";
const META_CRC32C: &str = "atlas_crc32c";
const CONTENT_TYPE: &str = "application/octet-stream";
const MAX_BLOCK: usize = 4000 * 1024 * 1024;
const MAX_PAGE: u32 = 5000;
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_URL: &str = "http://127.0.0.1:10000/devstoreaccount1";

#[derive(Clone)]
enum Credential {
    AccessKey(Secret),
    SasToken(Secret),
    Token(Arc<dyn TokenCredential>),
    Emulator,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::AccessKey(_) => "AccessKey(<redacted>)",
            Credential::SasToken(_) => "SasToken(<redacted>)",
            Credential::Token(_) => "TokenCredential",
            Credential::Emulator => "Emulator(well-known dev key)",
        })
    }
}

/// Builds an [`AzureBlobTarget`].
///
/// Defaults: the public Azure cloud, block size 8 MiB, 4 blocks in flight,
/// [`RetryConfig::default`]. An account, a container and one credential are
/// required (or [`emulator`](Self::emulator)).
///
/// ```no_run
/// use atlas_storage::AzureBlobTarget;
/// // Azurite, with its published development account:
/// let target = AzureBlobTarget::builder()
///     .emulator("http://127.0.0.1:10000/devstoreaccount1")
///     .with_container("backups")
///     .build()?;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AzureBlobTargetBuilder {
    account: Option<String>,
    container: Option<String>,
    endpoint: Option<String>,
    credential: Option<Credential>,
    block_size: usize,
    concurrency: usize,
    retry: RetryConfig,
}

impl Default for AzureBlobTargetBuilder {
    fn default() -> Self {
        AzureBlobTargetBuilder {
            account: None,
            container: None,
            endpoint: None,
            credential: None,
            block_size: 8 * 1024 * 1024,
            concurrency: 4,
            retry: RetryConfig::default(),
        }
    }
}

impl AzureBlobTargetBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder from the process environment; see
    /// [`from_env_with`](Self::from_env_with) for the variables.
    ///
    /// # Errors
    /// As [`from_env_with`](Self::from_env_with).
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(&ProcessEnv)
    }

    /// A builder from the settings in `env` (see [`crate::env`]):
    ///
    /// | variable | sets |
    /// |---|---|
    /// | `AZURE_STORAGE_ACCOUNT` | the storage account |
    /// | `ATLAS_AZURE_CONTAINER` | the container |
    /// | `ATLAS_AZURE_ENDPOINT` | a custom endpoint (`http(s)://`), e.g. Azurite's |
    /// | `AZURE_STORAGE_ACCESS_KEY` | shared-key authentication (wins over a SAS token) |
    /// | `AZURE_STORAGE_SAS_TOKEN` | SAS authentication |
    ///
    /// Empty values count as unset; unset ones keep the defaults, and
    /// [`build`](Self::build) names the variables of whatever is still
    /// missing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the variable: an endpoint that is not
    /// an `http(s)://` URL, an access key that is not base64, a SAS token
    /// that is no SAS query string.
    pub fn from_env_with<E: Env + ?Sized>(env: &E) -> Result<Self> {
        let var = |n: &str| setting(env, n);
        let credential = match (
            var("AZURE_STORAGE_ACCESS_KEY"),
            var("AZURE_STORAGE_SAS_TOKEN"),
        ) {
            (Some(key), _) => {
                check_access_key(&key, "AZURE_STORAGE_ACCESS_KEY")?;
                Some(Credential::AccessKey(Secret::new(key)))
            }
            (None, Some(token)) => {
                sas_credentials(&token, "AZURE_STORAGE_SAS_TOKEN")?;
                Some(Credential::SasToken(Secret::new(token)))
            }
            (None, None) => None,
        };
        Ok(AzureBlobTargetBuilder {
            account: var("AZURE_STORAGE_ACCOUNT"),
            container: var("ATLAS_AZURE_CONTAINER"),
            endpoint: url_setting(env, "ATLAS_AZURE_ENDPOINT")?,
            credential,
            ..Self::default()
        })
    }

    /// Azurite (or another emulator) at `endpoint`, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`, with the published
    /// development account `devstoreaccount1` and its well-known key.
    pub fn emulator(mut self, endpoint: impl Into<String>) -> Self {
        self.account = Some(EMULATOR_ACCOUNT.into());
        self.endpoint = Some(endpoint.into());
        self.credential = Some(Credential::Emulator);
        self
    }

    /// The storage account (required unless [`emulator`](Self::emulator)).
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// The container (required; 3–63 lowercase letters, digits and `-`).
    pub fn with_container(mut self, container: impl Into<String>) -> Self {
        self.container = Some(container.into());
        self
    }

    /// A custom endpoint: the account's base URL, path-style, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Shared-key authentication with the account key.
    pub fn with_access_key(mut self, key: impl Into<String>) -> Self {
        self.credential = Some(Credential::AccessKey(Secret::new(key)));
        self
    }

    /// SAS authentication with a token (the query string, with or without
    /// the leading `?`).
    pub fn with_sas_token(mut self, token: impl Into<String>) -> Self {
        self.credential = Some(Credential::SasToken(Secret::new(token)));
        self
    }

    /// Entra ID authentication with a token credential (e.g. from
    /// `azure_identity`).
    pub fn with_token_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(Credential::Token(credential));
        self
    }

    /// Size of a staged block, 1 byte to 4000 MiB (default 8 MiB).
    pub fn with_block_size(mut self, bytes: usize) -> Self {
        self.block_size = bytes;
        self
    }

    /// Blocks uploaded at once, at least 1 (default 4).
    pub fn with_concurrency(mut self, blocks: usize) -> Self {
        self.concurrency = blocks;
        self
    }

    /// The retry policy of every request.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Validates the configuration and creates the client. No request is
    /// sent.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: no account, container or
    /// credential; a bad container name; a block size or concurrency out of
    /// range; a bad endpoint or SAS token; a bad retry policy.
    pub fn build(self) -> Result<AzureBlobTarget> {
        let account = self.account.filter(|a| !a.is_empty()).ok_or_else(|| {
            Error::invalid("account", "is required (or set AZURE_STORAGE_ACCOUNT)")
        })?;
        let container = self.container.ok_or_else(|| {
            Error::invalid("container", "is required (or set ATLAS_AZURE_CONTAINER)")
        })?;
        validate_container(&container)?;
        if !(1..=MAX_BLOCK).contains(&self.block_size) {
            return Err(Error::invalid(
                "block_size",
                format!(
                    "must be between 1 byte and 4000 MiB, got {}",
                    self.block_size
                ),
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        self.retry.validate("retry")?;
        let credential = self.credential.ok_or_else(|| {
            Error::invalid(
                "credential",
                "is required: an access key, a SAS token or a token credential (or set AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN)",
            )
        })?;
        let credentials = match &credential {
            Credential::AccessKey(k) => {
                check_access_key(k.expose(), "access_key")?;
                StorageCredentials::access_key(account.clone(), k.expose().to_owned())
            }
            Credential::SasToken(t) => sas_credentials(t.expose(), "sas_token")?,
            Credential::Token(c) => StorageCredentials::token_credential(c.clone()),
            Credential::Emulator => StorageCredentials::emulator(),
        };
        let location = match &self.endpoint {
            Some(uri) => {
                if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                    return Err(Error::invalid(
                        "endpoint",
                        format!("must be an http:// or https:// URL, got {uri:?}"),
                    ));
                }
                CloudLocation::Custom {
                    account: account.clone(),
                    uri: uri.trim_end_matches('/').to_owned(),
                }
            }
            None => CloudLocation::Public {
                account: account.clone(),
            },
        };
        let container_client = ClientBuilder::with_location(location, credentials)
            .retry(azure_core::RetryOptions::none())
            .container_client(container.clone());
        debug!(%account, %container, endpoint = ?self.endpoint, credential = ?credential, "azure target ready");
        Ok(AzureBlobTarget {
            inner: Arc::new(Inner {
                container_client,
                account,
                container,
                endpoint: self.endpoint,
                block_size: self.block_size,
                concurrency: self.concurrency,
                retry: self.retry,
            }),
        })
    }
}

/// Refuses an account key that is not base64 (every account key is), which
/// would otherwise fail only when the first request is signed. The key is
/// never part of the message.
fn check_access_key(key: &str, field: &str) -> Result<()> {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if !raw.is_empty() => Ok(()),
        _ => Err(Error::invalid(field, "is not a base64 account key")),
    }
}

/// The credentials of a SAS token, with or without its leading `?`. The
/// SDK parses nearly any string as a query, so the token must also carry
/// the signature (`sig`) every SAS has; anything else (a pasted account key,
/// a URL) would fail only at the first request. The token is never part of
/// the message.
fn sas_credentials(token: &str, field: &str) -> Result<StorageCredentials> {
    let token = token.trim_start_matches('?');
    let signed = token
        .split('&')
        .any(|pair| pair.strip_prefix("sig=").is_some_and(|v| !v.is_empty()));
    if !signed {
        return Err(Error::invalid(
            field,
            "is not a SAS token: it has no `sig` parameter",
        ));
    }
    StorageCredentials::sas_token(token)
        .map_err(|_| Error::invalid(field, "is not a valid SAS query string"))
}

fn validate_container(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(Error::invalid(
            "container",
            format!(
                "{name:?} must be 3-63 lowercase letters, digits and single dashes, starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

struct Inner {
    container_client: ContainerClient,
    account: String,
    container: String,
    endpoint: Option<String>,
    block_size: usize,
    concurrency: usize,
    retry: RetryConfig,
}

/// A [`BackupTarget`] on an Azure Blob Storage container. See the
/// [module docs](self). Clones share the client.
#[derive(Clone)]
pub struct AzureBlobTarget {
    inner: Arc<Inner>,
}

impl fmt::Debug for AzureBlobTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobTarget")
            .field("account", &self.inner.account)
            .field("container", &self.inner.container)
            .field("endpoint", &self.inner.endpoint)
            .field("block_size", &self.inner.block_size)
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

impl AzureBlobTarget {
    /// A builder; see [`AzureBlobTargetBuilder`].
    pub fn builder() -> AzureBlobTargetBuilder {
        AzureBlobTargetBuilder::new()
    }

    /// The default Azurite endpoint, `http://127.0.0.1:10000/devstoreaccount1`.
    pub const EMULATOR_URL: &'static str = EMULATOR_URL;

    /// The container.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// The most bytes of a put's body this target holds at once:
    /// `block_size × (concurrency + 1)`.
    pub fn max_buffered_bytes(&self) -> u64 {
        self.inner.block_size as u64 * (self.inner.concurrency as u64 + 1)
    }

    /// Creates the container if it does not exist (for first-run setups and
    /// tests).
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Transient`] when the service refuses.
    pub async fn ensure_container(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .retry
            .run(BACKEND, "create container", || async {
                match inner.container_client.create().await {
                    Ok(_) => Ok(()),
                    Err(e) if http_status(&e) == Some(409) => Ok(()),
                    Err(e) => Err(map_err(e, "create container", &inner.container)),
                }
            })
            .await
    }
}

impl Inner {
    fn blob(&self, key: &ObjectKey) -> BlobClient {
        self.container_client.blob_client(key.as_str())
    }

    async fn put_single(
        &self,
        key: &ObjectKey,
        data: Bytes,
        checksum: Checksum,
        mode: PutMode,
    ) -> Result<PutResult> {
        let md5: [u8; 16] = Md5::digest(&data).into();
        let size = data.len() as u64;
        let blob = self.blob(key);
        let out = self
            .retry
            .run(BACKEND, "put blob", || {
                let mut req = blob
                    .put_block_blob(data.clone())
                    .content_type(CONTENT_TYPE)
                    .hash(Hash::MD5(md5))
                    .metadata(checksum_metadata(checksum));
                if mode == PutMode::Create {
                    req = req.if_match(IfMatchCondition::NotMatch("*".into()));
                }
                async move { req.await.map_err(|e| map_put_err(e, "put blob", key)) }
            })
            .await?;
        Ok(PutResult::new(size, checksum).with_etag(Some(unquote(&out.etag))))
    }

    async fn put_blocks(
        &self,
        key: &ObjectKey,
        cutter: &mut PartCutter,
        first: Option<Bytes>,
        mode: PutMode,
    ) -> Result<PutResult> {
        let blob = self.blob(key);
        let upload: u64 = rand::random();
        let Some(first) = first else {
            return self
                .commit(
                    key,
                    &blob,
                    Vec::new(),
                    cutter.checksum(),
                    cutter.len(),
                    mode,
                )
                .await;
        };
        let ids = upload_parts(cutter, first, self.concurrency, |number, part| {
            // Equal-length ids (Azure requires it), unique per upload.
            let id = BlockId::new(Bytes::from(format!("{upload:016x}-{number:08}")));
            let blob = &blob;
            async move {
                let what = format!("put block {number}");
                self.retry
                    .run(BACKEND, &what, || {
                        let req = blob.put_block(id.clone(), part.clone());
                        async { req.await.map_err(|e| map_err(e, &what, key.as_str())) }
                    })
                    .await?;
                Ok(id)
            }
        })
        .await?;
        self.commit(key, &blob, ids, cutter.checksum(), cutter.len(), mode)
            .await
    }

    /// Commits the staged blocks `ids` (possibly none: an empty blob).
    async fn commit(
        &self,
        key: &ObjectKey,
        blob: &BlobClient,
        ids: Vec<BlockId>,
        checksum: Checksum,
        size: u64,
        mode: PutMode,
    ) -> Result<PutResult> {
        let count = ids.len();
        let list = BlockList {
            blocks: ids.into_iter().map(BlobBlockType::Uncommitted).collect(),
        };
        let out = self
            .retry
            .run(BACKEND, "put block list", || {
                let mut req = blob
                    .put_block_list(list.clone())
                    .content_type(CONTENT_TYPE)
                    .metadata(checksum_metadata(checksum));
                if mode == PutMode::Create {
                    req = req.if_match(IfMatchCondition::NotMatch("*".into()));
                }
                async move { req.await.map_err(|e| map_put_err(e, "put block list", key)) }
            })
            .await?;
        debug!(blocks = count, size, %checksum, "block list committed");
        Ok(PutResult::new(size, checksum).with_etag(Some(unquote(&out.etag))))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let blob = self.blob(key);
        let out = self
            .retry
            .run(BACKEND, "get blob properties", || async {
                blob.get_properties()
                    .await
                    .map_err(|e| map_err(e, "head", key.as_str()))
            })
            .await?;
        Ok(meta_of(key.clone(), &out.blob))
    }
}

fn meta_of(key: ObjectKey, blob: &azure_storage_blobs::blob::Blob) -> ObjectMeta {
    let checksum = blob
        .metadata
        .as_ref()
        .and_then(|m| m.get(META_CRC32C))
        .and_then(|v| u32::from_str_radix(v.trim(), 16).ok())
        .map(Checksum::Crc32c);
    ObjectMeta::new(
        key,
        blob.properties.content_length,
        SystemTime::from(blob.properties.last_modified),
    )
    .with_checksum(checksum)
    .with_etag(Some(unquote(blob.properties.etag.as_ref())))
    .with_version(blob.version_id.clone())
}

fn checksum_metadata(checksum: Checksum) -> Metadata {
    let mut m = Metadata::new();
    if let Checksum::Crc32c(v) = checksum {
        m.insert(META_CRC32C, format!("{v:08x}"));
    }
    m
}

#[async_trait]
impl BackupTarget for AzureBlobTarget {
    async fn put_opts(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let span = debug_span!("backup.put", backend = BACKEND, container = %self.inner.container, %key, mode = ?options.mode);
        async move {
            let mut cutter = PartCutter::new(body, self.inner.block_size);
            let first = cutter.next_part().await?;
            let single = cutter.is_finished()
                && first
                    .as_ref()
                    .is_none_or(|f| f.len() < self.inner.block_size);
            // Creates always commit a block list: Azurite refuses `Put Blob`
            // with `If-None-Match: *` where an interrupted upload left
            // uncommitted blocks, but `Put Block List` ignores them.
            let put = if single && options.mode == PutMode::Overwrite {
                self.inner
                    .put_single(
                        key,
                        first.unwrap_or_default(),
                        cutter.checksum(),
                        options.mode,
                    )
                    .await?
            } else {
                self.inner
                    .put_blocks(key, &mut cutter, first, options.mode)
                    .await?
            };
            debug!(size = put.size, checksum = %put.checksum, "stored");
            Ok(put)
        }
        .instrument(span)
        .await
    }

    async fn get_opts(&self, key: &ObjectKey, options: GetOptions) -> Result<GetResult> {
        let span =
            debug_span!("backup.get", backend = BACKEND, container = %self.inner.container, %key);
        async move {
            let inner = &self.inner;
            // The size first, so that ranges resolve exactly (and a range
            // past the end is refused) whatever the service does with them;
            // the read is then pinned to that version with If-Match.
            let meta = inner.head(key).await?;
            let range = match options.range {
                Some(r) => r.resolve(meta.size)?,
                None => 0..meta.size,
            };
            if range.is_empty() {
                return Ok(GetResult::new(meta, range, stream::empty().boxed()));
            }
            let blob = inner.blob(key);
            let etag = meta.etag.clone().unwrap_or_default();
            let len = range.end - range.start;
            let first = inner
                .retry
                .run(BACKEND, "get blob", || {
                    let mut pages = blob
                        .get()
                        .range(range.clone())
                        .chunk_size(len)
                        .if_match(IfMatchCondition::Match(format!("\"{etag}\"")))
                        .into_stream();
                    async move {
                        match pages.next().await {
                            Some(Ok(page)) => Ok(page),
                            Some(Err(e)) => Err(map_read_err(e, key)),
                            None => Err(Error::backend(BACKEND, format!("get {key}: no response"))),
                        }
                    }
                })
                .await?;
            let k = key.to_string();
            let body = first
                .data
                .map(move |chunk| {
                    chunk.map_err(|e| {
                        Error::transient_with(BACKEND, format!("reading the body of {k}"), e)
                    })
                })
                .boxed();
            Ok(GetResult::new(meta, range, body))
        }
        .instrument(span)
        .await
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let span =
            debug_span!("backup.head", backend = BACKEND, container = %self.inner.container, %key);
        self.inner.head(key).instrument(span).await
    }

    fn list_opts(
        &self,
        prefix: &ObjectPrefix,
        options: ListOptions,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        let page = options
            .page_size
            .map_or(MAX_PAGE, NonZeroU32::get)
            .min(MAX_PAGE);
        let page = NonZeroU32::new(page).unwrap_or(NonZeroU32::MIN);
        // Blob Storage cannot start a listing after a key; skip up to it.
        let after = options.start_after.map(|k| k.to_string());
        debug!(backend = BACKEND, container = %inner.container, %prefix, page, "list");
        stream::unfold(Some(None::<NextMarker>), move |state| {
            let inner = inner.clone();
            let prefix = prefix.clone();
            let after = after.clone();
            async move {
                let marker = state?;
                let out = inner
                    .retry
                    .run(BACKEND, "list blobs", || {
                        let mut req = inner
                            .container_client
                            .list_blobs()
                            .prefix(prefix.clone())
                            .include_metadata(true)
                            .max_results(MaxResults::new(page));
                        if let Some(m) = &marker {
                            req = req.marker(m.clone());
                        }
                        let mut pages = req.into_stream();
                        let prefix = &prefix;
                        async move {
                            match pages.next().await {
                                Some(Ok(p)) => Ok(p),
                                Some(Err(e)) => Err(map_err(e, "list", prefix)),
                                None => Err(Error::backend(BACKEND, "list: no response")),
                            }
                        }
                    })
                    .await;
                let out = match out {
                    Ok(o) => o,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                let mut items = Vec::new();
                for blob in out.blobs.blobs() {
                    if after.as_deref().is_some_and(|a| blob.name.as_str() <= a) {
                        continue;
                    }
                    let Ok(key) = ObjectKey::new(blob.name.clone()) else {
                        debug!(name = %blob.name, "skipping a blob whose name Atlas cannot address");
                        continue;
                    };
                    items.push(Ok(meta_of(key, blob)));
                }
                Some((items, out.next_marker.map(Some)))
            }
        })
        .flat_map(stream::iter)
        .boxed()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let span = debug_span!("backup.delete", backend = BACKEND, container = %self.inner.container, %key);
        async move {
            let blob = self.inner.blob(key);
            self.inner
                .retry
                .run(BACKEND, "delete blob", || async {
                    blob.delete()
                        .await
                        .map_err(|e| map_err(e, "delete", key.as_str()))
                })
                .await?;
            debug!("deleted");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

fn http_status(e: &azure_core::Error) -> Option<u16> {
    match e.kind() {
        AzureErrorKind::HttpResponse { status, .. } => Some(*status as u16),
        _ => None,
    }
}

fn error_code(e: &azure_core::Error) -> Option<String> {
    match e.kind() {
        AzureErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
        _ => None,
    }
}

/// Maps a service error into Atlas's categories.
fn map_err(e: azure_core::Error, what: &str, key: &str) -> Error {
    let code = error_code(&e).unwrap_or_default();
    match (http_status(&e), e.kind()) {
        (Some(404), _) => Error::not_found(format!("blob {key} in azure")),
        (Some(416), _) => {
            Error::invalid("range", format!("starts at or past the end of blob {key}"))
        }
        (Some(408 | 429 | 500 | 502 | 503 | 504), _) => {
            Error::transient_with(BACKEND, format!("{what} {key}: {code}"), e)
        }
        (Some(status), _) => {
            Error::backend_with(BACKEND, format!("{what} {key}: HTTP {status} {code}"), e)
        }
        (None, AzureErrorKind::Io | AzureErrorKind::HttpResponse { .. }) => {
            Error::transient_with(BACKEND, format!("{what} {key}: {e}"), e)
        }
        (None, _) => Error::backend_with(BACKEND, format!("{what} {key}: {e}"), e),
    }
}

/// As [`map_err`], for writes: an existing blob under `If-None-Match: *`,
/// or blocks discarded by a concurrent commit, are conflicts.
fn map_put_err(e: azure_core::Error, what: &str, key: &ObjectKey) -> Error {
    let code = error_code(&e).unwrap_or_default();
    match (http_status(&e), code.as_str()) {
        (Some(409 | 412), _) => {
            Error::conflict(format!("blob {key} already exists in azure ({code})"))
        }
        (Some(400), "InvalidBlockList") => Error::conflict(format!(
            "a concurrent write to blob {key} discarded this upload's blocks"
        )),
        _ => map_err(e, what, key.as_str()),
    }
}

/// As [`map_err`], for a read pinned with If-Match: a blob replaced since
/// its size was read is a transient condition (the retry reads it again).
fn map_read_err(e: azure_core::Error, key: &ObjectKey) -> Error {
    if http_status(&e) == Some(412) {
        return Error::transient(BACKEND, format!("blob {key} changed while being read"));
    }
    map_err(e, "get", key.as_str())
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_follow_azure_rules() {
        for ok in ["abc", "backups-2024", "a1b"] {
            assert!(validate_container(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Backups",
            "-abc",
            "abc-",
            "a--b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(validate_container(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builder_validates_and_hides_credentials() {
        let e = AzureBlobTarget::builder().build().unwrap_err();
        assert!(e.to_string().contains("account"), "{e}");
        let e = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("credential"), "{e}");
        let e = AzureBlobTarget::builder()
            .emulator(EMULATOR_URL)
            .with_container("backups")
            .with_concurrency(0)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let b = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .with_access_key("c2VjcmV0LWtleS1ieXRlcw==");
        let shown = format!("{b:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        let t = b.build().unwrap();
        assert!(!format!("{t:?}").contains("c2VjcmV0"));
        assert_eq!(t.max_buffered_bytes(), 5 * 8 * 1024 * 1024);
        let b = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .with_sas_token("?sv=2022-11-02&ss=b&sig=SECRETSIG");
        assert!(!format!("{b:?}").contains("SECRETSIG"));
        assert!(b.build().is_ok());
    }

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";

    #[test]
    fn settings_come_from_the_given_env_by_their_names() {
        let b = AzureBlobTargetBuilder::from_env_with(&env(&[
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("ATLAS_AZURE_CONTAINER", "backups"),
            ("ATLAS_AZURE_ENDPOINT", "http://127.0.0.1:10000/acct"),
            ("AZURE_STORAGE_ACCESS_KEY", KEY),
            ("AZURE_STORAGE_SAS_TOKEN", "sv=2022-11-02&sig=SECRETSIG"),
        ]))
        .unwrap();
        assert_eq!(b.account.as_deref(), Some("acct"));
        assert_eq!(b.container.as_deref(), Some("backups"));
        assert_eq!(b.endpoint.as_deref(), Some("http://127.0.0.1:10000/acct"));
        // The key wins over the token.
        assert!(matches!(&b.credential, Some(Credential::AccessKey(k)) if k.expose() == KEY));
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("SECRETSIG"),
            "{shown}"
        );
        b.build().unwrap();

        let b = AzureBlobTargetBuilder::from_env_with(&env(&[
            ("AZURE_STORAGE_ACCESS_KEY", ""),
            ("AZURE_STORAGE_SAS_TOKEN", "?sv=2022-11-02&sig=SECRETSIG"),
        ]))
        .unwrap();
        assert!(
            matches!(&b.credential, Some(Credential::SasToken(t)) if t.expose().ends_with("SECRETSIG"))
        );
        assert!(b.account.is_none() && b.endpoint.is_none());
    }

    #[test]
    fn missing_and_invalid_settings_name_their_variables() {
        // What build() still lacks is named by method and variable.
        let e = AzureBlobTargetBuilder::from_env_with(&env(&[]))
            .unwrap()
            .with_container("backups")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT"), "{e}");
        let e = AzureBlobTargetBuilder::from_env_with(&env(&[("AZURE_STORAGE_ACCOUNT", "acct")]))
            .unwrap()
            .with_container("backups")
            .build()
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("AZURE_STORAGE_ACCESS_KEY") && text.contains("AZURE_STORAGE_SAS_TOKEN"),
            "{text}"
        );
        for (pairs, variable) in [
            (
                &[("AZURE_STORAGE_ACCESS_KEY", "not base64!SECRETKEY")][..],
                "AZURE_STORAGE_ACCESS_KEY",
            ),
            (
                &[("AZURE_STORAGE_SAS_TOKEN", "SECRETKEY")][..],
                "AZURE_STORAGE_SAS_TOKEN",
            ),
            (
                &[("ATLAS_AZURE_ENDPOINT", "127.0.0.1:10000")][..],
                "ATLAS_AZURE_ENDPOINT",
            ),
        ] {
            let e = AzureBlobTargetBuilder::from_env_with(&env(pairs)).unwrap_err();
            match &e {
                Error::InvalidInput { field, .. } => assert_eq!(field, variable, "{e}"),
                other => panic!("expected InvalidInput, got {other}"),
            }
            assert!(!e.to_string().contains("SECRETKEY"), "{e}");
        }
        // The builder refuses a key that is not base64 too.
        let e = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .with_access_key("%%%")
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { field, .. } if field == "access_key"),
            "{e}"
        );
    }
}
