//! Format versions of the repository's JSON documents.
//!
//! Every document (the config, key files, snapshot manifests, index files
//! and locks) carries `"version": <major>`, one integer per kind of
//! document. Additions that an older reader may ignore (a new optional
//! field) keep the major version: readers accept fields they do not know.
//! A change an older reader would misread (a field changing meaning, a
//! required field, a new encoding) raises it, and a reader refuses a
//! document whose major version is newer than it knows, with an
//! [`Error::Precondition`] naming the document and both versions, rather
//! than misreading it. A document without the field was written before
//! versions were recorded and is major version 1.
//!
//! Trees carry no version of their own: they are content-addressed (a
//! field in every tree would change every tree's id) and are read only
//! through a manifest, whose version covers the trees it references.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::BACKEND;
#[cfg(test)]
use super::error::json_err;
use atlas_core::error::{Error, Result};

/// A kind of JSON document in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Document {
    /// The plaintext `config` object.
    Config,
    /// A plaintext key file under `keys/`.
    KeyFile,
    /// An encrypted snapshot manifest under `snapshots/`.
    Snapshot,
    /// An encrypted index file under `index/`.
    Index,
    /// An encrypted lock under `locks/`.
    Lock,
}

impl Document {
    /// The newest major version of this document that this build reads and
    /// the version it writes.
    pub(crate) fn newest(self) -> u32 {
        match self {
            Document::Config => 1,
            Document::KeyFile => 1,
            Document::Snapshot => 1,
            Document::Index => 1,
            Document::Lock => 1,
        }
    }

    /// The document's name in messages.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Document::Config => "repository config",
            Document::KeyFile => "key file",
            Document::Snapshot => "snapshot manifest",
            Document::Index => "index file",
            Document::Lock => "lock",
        }
    }

    /// The label an encrypted document is sealed under (its associated
    /// data), so that one kind of document cannot pass for another.
    pub(crate) fn seal_label(self) -> &'static str {
        match self {
            Document::Config => "config",
            Document::KeyFile => "key",
            Document::Snapshot => "snapshot",
            Document::Index => "index",
            Document::Lock => "lock",
        }
    }
}

/// Reads the version of a document, nothing else of it.
#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default)]
    version: Option<u32>,
}

/// Checks that this build reads major version `found` of `doc`; `what`
/// names the document (kind and object) in the error.
///
/// # Errors
/// [`Error::Precondition`] when `found` is newer than [`Document::newest`];
/// [`Error::Backend`] for version 0, which no build writes.
pub(crate) fn check_version(doc: Document, what: &str, found: u32) -> Result<()> {
    let newest = doc.newest();
    if found > newest {
        return Err(Error::precondition(format!(
            "{what}: {} format version {found} is newer than this build of atlas-backup \
             reads (up to version {newest}); upgrade atlas-backup to read it",
            doc.noun()
        )));
    }
    if found == 0 {
        return Err(Error::backend(
            BACKEND,
            format!("{what}: version 0 is not a valid {} version", doc.noun()),
        ));
    }
    Ok(())
}

/// Decodes the JSON `doc` after checking its version (absent means 1).
/// Unknown fields are ignored.
///
/// # Errors
/// As [`check_version`]; [`Error::Backend`] naming `what` when the JSON
/// does not decode.
pub(crate) fn decode<T: DeserializeOwned>(doc: Document, what: &str, json: &[u8]) -> Result<T> {
    let invalid = |e: serde_json::Error| {
        Error::backend(BACKEND, format!("{what}: not a valid {}: {e}", doc.noun()))
    };
    let probe: VersionProbe = serde_json::from_slice(json).map_err(invalid)?;
    check_version(doc, what, probe.version.unwrap_or(1))?;
    serde_json::from_slice(json).map_err(invalid)
}

/// A document with its version in front of its own fields.
#[derive(Serialize)]
struct Versioned<'a, T> {
    version: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// `value` with `"version"` set to the newest version of `doc`, to be
/// serialised (as [`encode`] does, without building the JSON first).
pub(crate) fn versioned<T: Serialize>(doc: Document, value: &T) -> impl Serialize + '_ {
    Versioned {
        version: doc.newest(),
        body: value,
    }
}

/// Encodes `value` as JSON with `"version"` set to the newest version of
/// `doc`. For documents whose type has no `version` field of its own.
#[cfg(test)]
pub(crate) fn encode<T: Serialize>(doc: Document, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(&Versioned {
        version: doc.newest(),
        body: value,
    })
    .map_err(json_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        a: u32,
    }

    #[test]
    fn documents_carry_their_version_and_unknown_fields_are_ignored() {
        let json = encode(Document::Index, &Doc { a: 7 }).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v, serde_json::json!({ "version": 1, "a": 7 }));
        let newer_minor = br#"{ "version": 1, "a": 7, "added_later": [1, 2] }"#;
        let d: Doc = decode(Document::Index, "index file x", newer_minor).unwrap();
        assert_eq!(d, Doc { a: 7 });
        let unversioned = br#"{ "a": 7 }"#;
        let d: Doc = decode(Document::Index, "index file x", unversioned).unwrap();
        assert_eq!(d, Doc { a: 7 });
    }

    #[test]
    fn a_newer_major_version_is_refused_naming_both_versions() {
        let err = decode::<Doc>(
            Document::Snapshot,
            "snapshot manifest s1",
            br#"{ "version": 3, "b": 1 }"#,
        )
        .unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Precondition);
        let msg = err.to_string();
        assert!(msg.contains("snapshot manifest s1"), "{msg}");
        assert!(msg.contains("version 3"), "{msg}");
        assert!(msg.contains("up to version 1"), "{msg}");
        let zero = decode::<Doc>(Document::Lock, "lock l", br#"{ "version": 0, "a": 1 }"#);
        assert_eq!(zero.unwrap_err().kind(), atlas_core::ErrorKind::Backend);
    }
}
