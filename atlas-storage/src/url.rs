//! Backup targets named by URL, as command-line tools take them.
//!
//! | URL | target | settings |
//! |---|---|---|
//! | `file:///abs/path` | [`FsTarget`](crate::FsTarget) rooted at the path | — |
//! | `s3://bucket/prefix` | `S3Target` (feature `s3`) | as `S3TargetBuilder::from_env_with` (`AWS_ENDPOINT_URL`, `AWS_REGION`, `ATLAS_S3_PATH_STYLE`, credentials) |
//! | `gs://bucket/prefix` | `GcsTarget` (feature `gcs`) | as `GcsTargetBuilder::from_env_with` (`STORAGE_EMULATOR_HOST`); `GOOGLE_CLOUD_PROJECT` to create a bucket (required on GCS, any project on an emulator) |
//! | `az://container/prefix` | `AzureBlobTarget` (feature `azure`) | as `AzureBlobTargetBuilder::from_env_with` (`AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_ACCESS_KEY` or `AZURE_STORAGE_SAS_TOKEN`, `ATLAS_AZURE_ENDPOINT`); `ATLAS_AZURE_EMULATOR` (e.g. Azurite's `http://127.0.0.1:10000/devstoreaccount1`) selects the emulator account instead |
//!
//! [`TargetUrl::open`] reads the settings from the process environment,
//! [`TargetUrl::open_with_env`] from any [`Env`] (a map, a configuration
//! file, a secret store), under the same names.
//!
//! The prefix (everything after the bucket) keeps several repositories
//! apart in one bucket. Credentials never appear in URLs, so URLs are safe
//! to log.
//!
//! ```
//! use atlas_storage::url::{TargetUrl, Scheme};
//! let url = TargetUrl::parse("s3://backups/prod/db")?;
//! assert_eq!(url.scheme(), Scheme::S3);
//! assert_eq!(url.bucket(), Some("backups"));
//! assert_eq!(url.prefix().as_str(), "prod/db/");
//! # Ok::<(), atlas_core::Error>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use std::num::NonZeroU32;

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use atlas_core::ErrorKind;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use atlas_core::backup::ListOptions;
use atlas_core::backup::{BackupTarget, ObjectPrefix};
use atlas_core::{Error, Result};

#[cfg(feature = "gcs")]
use crate::env::setting;
#[cfg(feature = "azure")]
use crate::env::url_setting;
use crate::env::{Env, ProcessEnv};

/// The kind of target a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `file://`: a local directory.
    File,
    /// `s3://`: Amazon S3 or an S3-compatible server.
    S3,
    /// `gs://`: Google Cloud Storage.
    Gcs,
    /// `az://`: Azure Blob Storage.
    Azure,
}

impl Scheme {
    /// The cargo feature of `atlas-storage` the scheme needs.
    pub fn feature(self) -> &'static str {
        match self {
            Scheme::File => "fs",
            Scheme::S3 => "s3",
            Scheme::Gcs => "gcs",
            Scheme::Azure => "azure",
        }
    }
}

/// A parsed, validated target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    text: String,
    scheme: Scheme,
    /// The directory (file) or bucket / container (clouds).
    location: String,
    prefix: ObjectPrefix,
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TargetUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the URL for an unknown scheme, a
    /// relative `file://` path, a missing bucket, or a prefix that is no
    /// valid object prefix.
    pub fn parse(url: &str) -> Result<TargetUrl> {
        let field = format!("target url `{url}`");
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::invalid(
                &field,
                "must be file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX",
            )
        })?;
        let scheme = match scheme {
            "file" => Scheme::File,
            "s3" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" => Scheme::Azure,
            other => {
                return Err(Error::invalid(
                    &field,
                    format!("unknown scheme `{other}`: use file, s3, gs or az"),
                ));
            }
        };
        if scheme == Scheme::File {
            if !rest.starts_with('/') {
                return Err(Error::invalid(
                    &field,
                    "a file URL needs an absolute path: file:///var/backups",
                ));
            }
            return Ok(TargetUrl {
                text: url.to_owned(),
                scheme,
                location: rest.to_owned(),
                prefix: ObjectPrefix::all(),
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::invalid(&field, "names no bucket"));
        }
        if !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::invalid(
                &field,
                format!("bucket `{bucket}` may hold only letters, digits, `-`, `_` and `.`"),
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            ObjectPrefix::all()
        } else {
            ObjectPrefix::new(format!("{prefix}/"))
                .map_err(|e| Error::invalid(&field, format!("bad prefix: {e}")))?
        };
        Ok(TargetUrl {
            text: url.to_owned(),
            scheme,
            location: bucket.to_owned(),
            prefix,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The bucket or container; `None` for `file://`.
    pub fn bucket(&self) -> Option<&str> {
        (self.scheme != Scheme::File).then_some(self.location.as_str())
    }

    /// The directory of a `file://` URL.
    pub fn path(&self) -> Option<PathBuf> {
        (self.scheme == Scheme::File).then(|| PathBuf::from(&self.location))
    }

    /// The prefix every object of the repository goes under (empty for
    /// `file://`, whose path is the root).
    pub fn prefix(&self) -> &ObjectPrefix {
        &self.prefix
    }

    /// Builds the target with the settings of the process environment:
    /// [`open_with_env`](Self::open_with_env) with
    /// [`ProcessEnv`].
    ///
    /// # Errors
    /// As [`open_with_env`](Self::open_with_env).
    pub async fn open(&self, create: bool) -> Result<Arc<dyn BackupTarget>> {
        self.open_with_env(create, &ProcessEnv).await
    }

    /// Builds the target with the settings in `env` (see [`crate::env`]):
    /// the variables in the [module docs](self), read from a map, a
    /// configuration file or a secret store instead of the process
    /// environment.
    ///
    /// With `create`, makes the directory, bucket or container when it does
    /// not exist yet (creating a GCS bucket needs `GOOGLE_CLOUD_PROJECT`,
    /// except on an emulator). Without it, checks that it exists: for the
    /// clouds, one listing request of at most one key under the prefix.
    ///
    /// ```no_run
    /// use std::collections::HashMap;
    /// use atlas_storage::url::TargetUrl;
    /// # async fn run() -> atlas_core::Result<()> {
    /// let settings = HashMap::from([
    ///     ("AWS_ENDPOINT_URL".to_owned(), "http://127.0.0.1:9000".to_owned()),
    ///     ("ATLAS_S3_PATH_STYLE".to_owned(), "true".to_owned()),
    ///     ("AWS_ACCESS_KEY_ID".to_owned(), "access-key".to_owned()),
    ///     ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret-key".to_owned()),
    /// ]);
    /// let target = TargetUrl::parse("s3://backups/prod/db")?
    ///     .open_with_env(false, &settings)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the scheme's feature is not compiled
    /// in, or naming the variable when a setting is invalid or a required
    /// one is missing; [`Error::NotFound`] naming the bucket, container or
    /// directory when it does not exist and `create` is off; the target's
    /// own errors when checking or creating it fails.
    #[tracing::instrument(skip(self, env), fields(url = %self.text))]
    #[cfg_attr(
        not(any(feature = "s3", feature = "gcs", feature = "azure")),
        allow(unused_variables)
    )]
    pub async fn open_with_env<E: Env + ?Sized>(
        &self,
        create: bool,
        env: &E,
    ) -> Result<Arc<dyn BackupTarget>> {
        match self.scheme {
            Scheme::File => {
                #[cfg(feature = "fs")]
                {
                    let root = PathBuf::from(&self.location);
                    if create {
                        std::fs::create_dir_all(&root).map_err(|e| {
                            Error::invalid(
                                format!("target url `{}`", self.text),
                                format!("cannot create {}: {e}", root.display()),
                            )
                        })?;
                    } else if !root.is_dir() {
                        return Err(Error::not_found(format!(
                            "repository directory {}",
                            root.display()
                        )));
                    }
                    Ok(Arc::new(crate::FsTarget::new(root)?))
                }
                #[cfg(not(feature = "fs"))]
                Err(self.missing_feature())
            }
            Scheme::S3 => {
                #[cfg(feature = "s3")]
                {
                    let target = crate::S3TargetBuilder::from_env_with(env)?
                        .with_bucket(&self.location)
                        .build()?;
                    if create {
                        target.ensure_bucket().await?;
                    } else {
                        self.require_bucket(&target).await?;
                    }
                    Ok(Arc::new(target))
                }
                #[cfg(not(feature = "s3"))]
                Err(self.missing_feature())
            }
            Scheme::Gcs => {
                #[cfg(feature = "gcs")]
                {
                    // Checked before the target is built, which may look
                    // for application-default credentials.
                    let project = match (create, setting(env, "GOOGLE_CLOUD_PROJECT")) {
                        (false, _) => None,
                        (true, Some(project)) => Some(project),
                        // Emulators take any project.
                        (true, None) if setting(env, "STORAGE_EMULATOR_HOST").is_some() => {
                            Some("atlas".to_owned())
                        }
                        (true, None) => {
                            return Err(Error::invalid(
                                "GOOGLE_CLOUD_PROJECT",
                                format!(
                                    "is required to create bucket `{}` on GCS (target url `{}`)",
                                    self.location, self.text
                                ),
                            ));
                        }
                    };
                    let target = crate::GcsTargetBuilder::from_env_with(env)?
                        .with_bucket(&self.location)
                        .build()?;
                    match project {
                        Some(project) => target.ensure_bucket(&project).await?,
                        None => self.require_bucket(&target).await?,
                    }
                    Ok(Arc::new(target))
                }
                #[cfg(not(feature = "gcs"))]
                Err(self.missing_feature())
            }
            Scheme::Azure => {
                #[cfg(feature = "azure")]
                {
                    let mut builder = crate::AzureBlobTargetBuilder::from_env_with(env)?;
                    if let Some(emulator) = url_setting(env, "ATLAS_AZURE_EMULATOR")? {
                        builder = builder.emulator(emulator);
                    }
                    let target = builder.with_container(&self.location).build()?;
                    if create {
                        target.ensure_container().await?;
                    } else {
                        self.require_bucket(&target).await?;
                    }
                    Ok(Arc::new(target))
                }
                #[cfg(not(feature = "azure"))]
                Err(self.missing_feature())
            }
        }
    }

    /// Fails with [`Error::NotFound`] naming the bucket when `target`'s
    /// bucket does not exist. A listing is the probe because every backup
    /// needs the permission to list anyway, while reading a bucket's
    /// metadata takes a permission (e.g. GCS's `storage.buckets.get`) that
    /// object-level roles lack; a listing of a missing bucket is the only
    /// listing that finds nothing to be "not found".
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    async fn require_bucket(&self, target: &dyn BackupTarget) -> Result<()> {
        use futures::StreamExt as _;
        let options = ListOptions::default().with_page_size(NonZeroU32::MIN);
        match target.list_opts(&self.prefix, options).next().await {
            None | Some(Ok(_)) => {
                tracing::debug!(bucket = %self.location, "bucket exists");
                Ok(())
            }
            Some(Err(e)) if e.kind() == ErrorKind::NotFound => {
                let noun = if self.scheme == Scheme::Azure {
                    "container"
                } else {
                    "bucket"
                };
                Err(Error::not_found(format!(
                    "{noun} `{}` of target url `{}` (open with create to make it)",
                    self.location, self.text
                )))
            }
            Some(Err(e)) => Err(e),
        }
    }
}

impl TargetUrl {
    /// The error for a scheme whose cargo feature this build lacks.
    #[cfg(not(all(feature = "fs", feature = "s3", feature = "gcs", feature = "azure")))]
    fn missing_feature(&self) -> Error {
        Error::invalid(
            format!("target url `{}`", self.text),
            format!(
                "needs atlas-storage's `{}` feature, which this build lacks",
                self.scheme.feature()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_scheme_bucket_and_prefix() {
        let u = TargetUrl::parse("gs://b1/a/b/").unwrap();
        assert_eq!(
            (u.scheme(), u.bucket(), u.prefix().as_str()),
            (Scheme::Gcs, Some("b1"), "a/b/")
        );
        let u = TargetUrl::parse("az://c").unwrap();
        assert_eq!((u.scheme(), u.bucket()), (Scheme::Azure, Some("c")));
        assert!(u.prefix().is_empty());
        let u = TargetUrl::parse("file:///var/backups").unwrap();
        assert_eq!(u.path(), Some(PathBuf::from("/var/backups")));
        assert_eq!(u.bucket(), None);
        assert_eq!(u.to_string(), "file:///var/backups");
    }

    #[test]
    fn bad_urls_name_the_url_and_the_rule() {
        for (url, rule) in [
            ("/var/backups", "must be file:///PATH"),
            ("ftp://x/y", "unknown scheme `ftp`"),
            ("file://relative/path", "absolute path"),
            ("s3:///prefix", "names no bucket"),
            ("s3://bad bucket/x", "may hold only"),
            ("gs://b/a//b", "bad prefix"),
        ] {
            let e = TargetUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(url) && e.contains(rule), "{url}: {e}");
        }
    }

    #[test]
    fn opening_can_be_spawned_on_a_multithreaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let url = TargetUrl::parse("s3://backups/prod").unwrap();
        let settings = std::collections::HashMap::<String, String>::new();
        assert_send(&url.open(false));
        assert_send(&url.open_with_env(true, &settings));
        assert_send(&url.open_with_env(true, &|_: &str| None));
    }

    #[tokio::test]
    async fn file_urls_open_and_create_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let url = TargetUrl::parse(&format!("file://{}", root.display())).unwrap();
        let e = url.open(false).await.unwrap_err();
        assert_eq!(e.kind(), atlas_core::ErrorKind::NotFound, "{e}");
        url.open(true).await.unwrap();
        assert!(root.is_dir());
        url.open(false).await.unwrap();
    }
}
