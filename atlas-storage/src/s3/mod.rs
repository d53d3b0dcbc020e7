//! [`S3Target`]: Amazon S3 and S3-compatible servers, through `aws-sdk-s3`.
//!
//! # Uploads
//!
//! A body shorter than the part size (default 8 MiB) goes as one
//! `PutObject`. Anything longer is a multipart upload: parts of the part
//! size, up to [`S3TargetBuilder::with_concurrency`] (default 4) in flight
//! while the next part is read, so the target holds at most
//! `part_size × (concurrency + 1)` bytes of the body
//! ([`S3Target::max_buffered_bytes`]). A failed or dropped upload is
//! aborted (`AbortMultipartUpload`), so no part lingers and no object
//! appears.
//!
//! # Unfinished uploads
//!
//! An upload whose process died stays on the server, its parts stored and
//! billed, until aborted. [`unfinished_puts`](atlas_core::backup::BackupTarget::unfinished_puts)
//! lists the uploads under a prefix (`ListMultipartUploads`), each with its
//! initiation time, and
//! [`remove_unfinished_put`](atlas_core::backup::BackupTarget::remove_unfinished_put)
//! aborts one (an upload already gone counts as removed). A server that
//! does not implement the listing (s3s-fs) reports none, with a warning.
//!
//! # Conditional create
//!
//! `put_if_absent` sends `If-None-Match: *` on `PutObject` or on
//! `CompleteMultipartUpload`: the server refuses (412, or 409 for a
//! concurrent create) if the key exists, atomically. A multipart create
//! first checks with a `HEAD` so that a doomed upload fails before sending
//! gigabytes.
//!
//! # Checksums
//!
//! Every request that carries data carries its CRC32C
//! (`x-amz-checksum-crc32c`), which S3 and strict servers verify (a
//! mismatch fails the put with `BadDigest`). A multipart upload declares
//! `ChecksumType: FULL_OBJECT` and sends the CRC32C of the whole object on
//! completion, which S3 verifies against the parts. The whole-object CRC32C
//! is also kept where [`head`](atlas_core::backup::BackupTarget::head) can read it back on every
//! server: as the user metadata `x-amz-meta-atlas-crc32c` on single-request
//! objects, and as the object tag `atlas-crc32c` on multipart objects (tags
//! can be set after the upload; metadata cannot). `head` reads the metadata,
//! then the tag (multipart objects only), then S3's own full-object
//! checksum. Listings carry no checksum.
//!
//! Servers that implement neither tagging nor full-object checksums
//! (s3s-fs) report no checksum for multipart objects; the upload was still
//! verified part by part.
//!
//! # Deletes
//!
//! S3 deletes missing keys silently; the contract wants
//! [`Error::NotFound`](atlas_core::Error::NotFound), so `delete` sends a `HEAD` first. The check and the
//! delete are two requests: a concurrent delete in between goes unnoticed.
//!
//! # Retries
//!
//! The SDK's own retries are off; every request (each part, each page of a
//! listing, the start of a get) runs through the target's
//! [`RetryConfig`](atlas_core::backup::RetryConfig), whose per-attempt timeout bounds each request.
//!
//! # Layout
//!
//! `builder` holds the settings and their checks, `target` the
//! [`BackupTarget`](atlas_core::backup::BackupTarget) calls, `upload` the
//! single and multipart puts, `unfinished` the listing and aborting of
//! uploads left behind, `error` the mapping of the SDK's errors onto
//! the shared HTTP status table.

mod builder;
mod error;
mod service;
mod target;
mod unfinished;
mod upload;

pub use builder::S3TargetBuilder;
pub use target::S3Target;
