//! Where the targets' settings come from: the process environment by
//! default, or any source an embedder keeps them in.
//!
//! [`TargetUrl::open`](crate::url::TargetUrl::open) and the builders'
//! `from_env()` read variables such as `AWS_REGION` or
//! `AZURE_STORAGE_ACCOUNT` from the process environment.
//! [`TargetUrl::open_with_env`](crate::url::TargetUrl::open_with_env) and
//! the builders' `from_env_with` read the same names from an [`Env`]
//! instead: a map, a closure over a configuration file or a secret store,
//! or a layer of overrides over [`ProcessEnv`]. The names and their meaning
//! do not change; only where the values come from does. This is also how
//! tests open cloud targets without touching the process environment.
//!
//! An empty value counts as unset, as it does in the process environment.
//!
//! ```
//! use std::collections::HashMap;
//! use atlas_storage::env::{Env, ProcessEnv};
//!
//! // A fixed map:
//! let settings = HashMap::from([("AWS_REGION".to_owned(), "eu-west-1".to_owned())]);
//! assert_eq!(settings.var("AWS_REGION").as_deref(), Some("eu-west-1"));
//!
//! // Overrides over the process environment (closures take `&str`):
//! let layered = |name: &str| settings.var(name).or_else(|| ProcessEnv.var(name));
//! assert_eq!(layered.var("AWS_REGION").as_deref(), Some("eu-west-1"));
//! ```
//!
//! The SDKs' own credential chains (the AWS default chain, Google's
//! application-default credentials), which the targets fall back on when
//! the settings name no credentials, still read the process environment
//! and their files themselves.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// A source of settings by name, as the process environment is.
pub trait Env {
    /// The value of `name`, `None` when it is unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment ([`std::env::var`]). A variable whose value is
/// not valid Unicode counts as unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A closure from name to value, e.g. `|name: &str| config.get(name).cloned()`.
impl<F> Env for F
where
    F: Fn(&str) -> Option<String>,
{
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// `name` from `env`, empty values counting as unset.
#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code)
)]
pub(crate) fn setting<E: Env + ?Sized>(env: &E, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.is_empty())
}

/// `name` from `env` when it is an `http://` or `https://` URL.
///
/// # Errors
/// [`Error::InvalidInput`](atlas_core::Error::InvalidInput) naming the
/// variable for any other value.
#[cfg(any(feature = "s3", feature = "azure"))]
pub(crate) fn url_setting<E: Env + ?Sized>(
    env: &E,
    name: &str,
) -> atlas_core::Result<Option<String>> {
    match setting(env, name) {
        Some(v) => {
            crate::cloud::config::check_endpoint(name, &v)?;
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_closures_and_layers_answer_by_name() {
        let map = HashMap::from([("A".to_owned(), "1".to_owned())]);
        let tree = BTreeMap::from([("A".to_owned(), "2".to_owned())]);
        assert_eq!(map.var("A").as_deref(), Some("1"));
        assert_eq!(tree.var("A").as_deref(), Some("2"));
        assert_eq!(map.var("B"), None);
        let closure = |name: &str| (name == "B").then(|| "3".to_owned());
        let layered = |name: &str| map.var(name).or_else(|| closure.var(name));
        assert_eq!(
            (layered.var("A"), layered.var("B"), layered.var("C")),
            (Some("1".into()), Some("3".into()), None)
        );
        // Through a trait object, as embedders may hold one.
        let dynamic: &dyn Env = &tree;
        assert_eq!(dynamic.var("A").as_deref(), Some("2"));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let map = HashMap::from([
            ("EMPTY".to_owned(), String::new()),
            ("SET".to_owned(), "x".to_owned()),
        ]);
        assert_eq!(setting(&map, "EMPTY"), None);
        assert_eq!(setting(&map, "SET").as_deref(), Some("x"));
    }

    #[test]
    fn the_process_environment_is_read() {
        // PATH is set wherever tests run; a name nobody sets is not.
        assert!(ProcessEnv.var("PATH").is_some());
        assert_eq!(ProcessEnv.var("ATLAS_TEST_SURELY_UNSET_VARIABLE_42"), None);
    }
}
