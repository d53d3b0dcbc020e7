//! Validated object keys and key prefixes.
//!
//! Every backend sees the same key space: `/`-separated segments of printable
//! UTF-8, at most [`MAX_KEY_LEN`] bytes. The rules are strict enough that a
//! key maps to a relative filesystem path that cannot leave the target's root
//! (no `..`, no `.`, no empty segment, no leading `/`, no `\`), and loose
//! enough that every key is a valid S3, GCS and Azure Blob name.

use std::fmt;

use crate::error::{Error, Result};

/// The longest key accepted, in bytes of UTF-8. S3 and GCS allow 1024 bytes;
/// Azure allows more, so 1024 is the common limit.
pub const MAX_KEY_LEN: usize = 1024;

/// The name of one object in a [`BackupTarget`](super::BackupTarget):
/// `/`-separated segments, validated at construction.
///
/// Rules (each broken rule is an [`Error::InvalidInput`] naming `key`):
/// not empty; at most [`MAX_KEY_LEN`] bytes; no leading or trailing `/`; no
/// empty segment (`a//b`); no `.` or `..` segment; no control character
/// (U+0000–U+001F, U+007F–U+009F); no `\`.
///
/// ```
/// use atlas_core::backup::ObjectKey;
/// let key = ObjectKey::new("snapshots/2024-05-01/manifest.json").unwrap();
/// assert_eq!(key.as_str(), "snapshots/2024-05-01/manifest.json");
/// assert!(ObjectKey::new("../etc/passwd").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] with field `key` and the broken rule.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::invalid("key", "must not be empty"));
        }
        if key.ends_with('/') && key.len() <= MAX_KEY_LEN {
            return Err(Error::invalid(
                "key",
                format!("{key:?} must not end with '/' (a key names an object, not a folder)"),
            ));
        }
        check_common("key", &key)?;
        Ok(ObjectKey(key))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The key with `/` and `segment` appended.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the result is not a valid key (e.g.
    /// `segment` contains `..` or makes the key too long).
    pub fn child(&self, segment: &str) -> Result<Self> {
        ObjectKey::new(format!("{}/{}", self.0, segment))
    }

    /// Whether this key lies under `prefix` (a plain string prefix test, as
    /// object stores list).
    pub fn starts_with(&self, prefix: &ObjectPrefix) -> bool {
        self.0.starts_with(prefix.as_str())
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        ObjectKey::new(value)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        ObjectKey::new(value)
    }
}

/// A prefix to [list](super::BackupTarget::list_opts) keys by: every key
/// whose string starts with it matches (object-store semantics, not
/// folder semantics: prefix `logs/a` matches `logs/a/1` and `logs/ab`).
///
/// Rules: the empty prefix (everything) is allowed, and so is a trailing `/`;
/// otherwise the same rules as [`ObjectKey`], checked segment by segment.
/// A last segment of `.` or `..` is refused too, so a prefix can never name a
/// path outside a filesystem root.
///
/// ```
/// use atlas_core::backup::ObjectPrefix;
/// assert!(ObjectPrefix::new("snapshots/").is_ok());
/// assert!(ObjectPrefix::new("").is_ok());
/// assert!(ObjectPrefix::new("a//b").is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectPrefix(String);

impl ObjectPrefix {
    /// Validates `prefix`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] with field `prefix` and the broken rule.
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.is_empty() {
            return Ok(ObjectPrefix(prefix));
        }
        let body = prefix.strip_suffix('/').unwrap_or(&prefix);
        if body.is_empty() {
            return Err(Error::invalid(
                "prefix",
                "\"/\" is not a prefix; use the empty prefix to list everything",
            ));
        }
        check_common("prefix", body)?;
        if prefix.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                "prefix",
                format!("must be at most {MAX_KEY_LEN} bytes, got {}", prefix.len()),
            ));
        }
        Ok(ObjectPrefix(prefix))
    }

    /// The prefix matching every key.
    pub fn all() -> Self {
        ObjectPrefix(String::new())
    }

    /// The prefix as a string (possibly empty).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the empty prefix.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `key` followed by `/`: every key "inside" it.
    pub fn under(key: &ObjectKey) -> Self {
        ObjectPrefix(format!("{key}/"))
    }

    /// The key made of this prefix followed by `rest`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the result is not a valid key.
    pub fn key(&self, rest: &str) -> Result<ObjectKey> {
        ObjectKey::new(format!("{}{}", self.0, rest))
    }
}

impl fmt::Debug for ObjectPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ObjectPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ObjectKey> for ObjectPrefix {
    /// A key is also a (string) prefix: it matches itself and every key
    /// that extends it.
    fn from(key: ObjectKey) -> Self {
        ObjectPrefix(key.0)
    }
}

/// Rules shared by keys and prefixes, for a non-empty `s` without a trailing `/`.
fn check_common(field: &str, s: &str) -> Result<()> {
    if s.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_KEY_LEN} bytes, got {}", s.len()),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            format!(
                "must not contain control characters, found U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    if s.contains('\\') {
        return Err(Error::invalid(
            field,
            format!("{s:?} must not contain '\\' (a path separator on Windows)"),
        ));
    }
    if s.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{s:?} must not start with '/'"),
        ));
    }
    for segment in s.split('/') {
        match segment {
            "" => {
                return Err(Error::invalid(
                    field,
                    format!("{s:?} must not contain empty segments ('//')"),
                ));
            }
            "." | ".." => {
                return Err(Error::invalid(
                    field,
                    format!("{s:?} must not contain '.' or '..' segments"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn rule(r: Result<impl fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidInput { field, rule }) => format!("{field}: {rule}"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_keys() {
        for k in [
            "a",
            "a/b/c",
            "snapshots/2024-05-01T00:00:00Z/manifest.json",
            ".hidden/file",
            "a..b/c",
            "ünïcödé/名前",
            "with space/and+plus=eq",
        ] {
            assert_eq!(ObjectKey::new(k).unwrap().as_str(), k);
        }
        let longest = "x".repeat(MAX_KEY_LEN);
        assert!(ObjectKey::new(longest).is_ok());
    }

    #[test]
    fn refuses_each_broken_rule_with_a_named_rule() {
        assert!(rule(ObjectKey::new("")).contains("must not be empty"));
        assert!(rule(ObjectKey::new("/abs")).contains("must not start with '/'"));
        assert!(rule(ObjectKey::new("dir/")).contains("must not end with '/'"));
        assert!(rule(ObjectKey::new("a//b")).contains("empty segments"));
        assert!(rule(ObjectKey::new("../x")).contains("'..'"));
        assert!(rule(ObjectKey::new("a/../../x")).contains("'..'"));
        assert!(rule(ObjectKey::new("a/./x")).contains("'.'"));
        assert!(rule(ObjectKey::new("..")).contains("'..'"));
        assert!(rule(ObjectKey::new("a\0b")).contains("U+0000"));
        assert!(rule(ObjectKey::new("a\nb")).contains("U+000A"));
        assert!(rule(ObjectKey::new("a\u{7f}")).contains("U+007F"));
        assert!(rule(ObjectKey::new("a\\b")).contains("'\\'"));
        let too_long = rule(ObjectKey::new("x".repeat(MAX_KEY_LEN + 1)));
        assert!(too_long.starts_with("key: must be at most 1024 bytes, got 1025"));
    }

    #[test]
    fn prefixes_allow_empty_and_trailing_slash_only() {
        assert!(ObjectPrefix::new("").unwrap().is_empty());
        assert_eq!(ObjectPrefix::new("a/b/").unwrap().as_str(), "a/b/");
        assert_eq!(ObjectPrefix::new("a/b").unwrap().as_str(), "a/b");
        for bad in ["/", "/a", "a//", "a//b", "../", "a/..", "a/../b/", "a\tb"] {
            assert_eq!(
                ObjectPrefix::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefix_matching_is_by_string() {
        let p = ObjectPrefix::new("logs/a").unwrap();
        assert!(ObjectKey::new("logs/a/1").unwrap().starts_with(&p));
        assert!(ObjectKey::new("logs/ab").unwrap().starts_with(&p));
        assert!(!ObjectKey::new("logs/b").unwrap().starts_with(&p));
        let key = ObjectKey::new("x/y").unwrap();
        assert_eq!(ObjectPrefix::under(&key).as_str(), "x/y/");
        assert_eq!(p.key("/z").unwrap().as_str(), "logs/a/z");
        assert!(key.child("..").is_err());
    }
}
