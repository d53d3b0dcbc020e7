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
//! discards after a week (Blob Storage has no call to abort them, so the
//! shared abort-on-drop guard only records an abandoned block upload). Nor
//! can they be listed where the blob exists already, so
//! [`unfinished_puts`](atlas_core::backup::BackupTarget::unfinished_puts)
//! reports none and leaves them to the service. Block ids
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
//! fail with [`Error::Conflict`](atlas_core::Error::Conflict), whether the service says the blob exists or
//! that the winner's commit discarded their blocks.
//!
//! # Checksums
//!
//! A single `Put Blob` carries the body's MD5 (`Content-MD5`), which the
//! service verifies. (The SDK drops per-block hashes, so staged blocks rely
//! on TLS.) The whole blob's CRC32C, computed while streaming, is stored as
//! the blob metadata `atlas_crc32c` in the same request that makes the blob
//! visible, and [`head`](atlas_core::backup::BackupTarget::head) returns it. Listings carry no
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
//! 80 s to fail); every request runs through the target's [`RetryConfig`](atlas_core::backup::RetryConfig).
//!
//! # Layout
//!
//! `builder` holds the settings, credentials and their checks, `target` the
//! [`BackupTarget`](atlas_core::backup::BackupTarget) calls, `upload` the
//! single and block puts, `error` the mapping of the SDK's errors onto the
//! shared HTTP status table.

mod builder;
mod error;
mod service;
mod target;
mod upload;

pub use builder::AzureBlobTargetBuilder;
pub use target::AzureBlobTarget;
