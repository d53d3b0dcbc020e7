//! [`GcsTarget`]: Google Cloud Storage and fake-gcs-server, over the GCS
//! JSON API.
//!
//! # Why the JSON API on `reqwest`, with Google's official auth crate
//!
//! Google's official `google-cloud-storage` crate reaches object metadata,
//! listings and deletes only through the gRPC `StorageControl` service,
//! which emulators such as fake-gcs-server do not serve, so a GCS target
//! built on it needs a JSON-API client for those calls anyway. Once that
//! client exists, the data path is two more calls of the same API (a
//! multipart upload and a resumable upload session), so this target speaks
//! the JSON API for everything: one HTTP stack, one error mapping, one
//! retry policy, and no second copy of the storage SDK to build. The
//! community `gcloud-storage` crate would do the same with more surface
//! than Atlas needs. Credentials come from the official `google-cloud-auth`
//! crate (application-default credentials: service-account keys, workload
//! identity, the metadata server, `gcloud auth application-default login`).
//!
//! # Uploads
//!
//! A body shorter than the chunk size (default 8 MiB) is one multipart
//! upload (`uploadType=multipart`) that carries its CRC32C in the object
//! metadata, which GCS verifies. Longer bodies go through a resumable
//! upload session, chunk by chunk (GCS sessions take chunks in order, so
//! uploads of one object are sequential); the last request carries the
//! whole object's CRC32C (`X-Goog-Hash`), which GCS verifies before the
//! object appears. A failed or dropped upload cancels its session, and
//! nothing appears. A session whose process died cannot be listed, so
//! [`unfinished_puts`](atlas_core::backup::BackupTarget::unfinished_puts)
//! reports none; GCS expires it after a week. The target holds at most two chunks of a body
//! ([`GcsTarget::max_buffered_bytes`]).
//!
//! # Conditional create
//!
//! `put_if_absent` sends `ifGenerationMatch=0`, which GCS checks atomically
//! when the object is finalized. fake-gcs-server honours it on multipart
//! uploads only, not on resumable sessions: against the emulator, creates
//! shorter than the chunk size are atomic, and longer ones are checked with
//! a metadata read before the upload (a race with a concurrent create can
//! then be lost silently on the emulator, never on GCS).
//!
//! # Checksums
//!
//! GCS computes the CRC32C of every object; [`head`](atlas_core::backup::BackupTarget::head)
//! and listings return it. After every upload the target compares the CRC32C
//! the server reports with the one it computed while streaming and fails the
//! put on a mismatch.
//!
//! # Layout
//!
//! `builder` holds the settings and their checks, `target` the
//! [`BackupTarget`](atlas_core::backup::BackupTarget) calls, `upload` the
//! multipart and resumable puts, `wire` the JSON API's resources and
//! encodings, `error` the mapping of answers onto the shared HTTP status
//! table.

mod builder;
mod error;
mod service;
mod target;
mod upload;
mod wire;

pub use builder::GcsTargetBuilder;
pub use target::GcsTarget;
