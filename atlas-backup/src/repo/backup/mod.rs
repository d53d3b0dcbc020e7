//! Backup: sources, options and the pipeline that overlaps reading,
//! chunking + hashing, compression + encryption and uploads.
//!
//! The pipeline, in the order data flows through it: a `source` is walked
//! (`walk`) or streamed, its content cut into blobs (`content`), new
//! blobs packed and streamed to the targets (`pack`) whose health and
//! quorum `sink` tracks; `run` wires the stages together and commits.

mod content;
mod pack;
mod run;
mod sink;
mod source;
mod walk;

#[cfg(test)]
pub(crate) mod tests;

pub use run::{BackupOptions, BackupReport};
pub(crate) use run::{BackupRun, run_backup};
pub use source::{BackupSource, DirectorySource, SourceCompletion, SourceInput, StreamSource};
