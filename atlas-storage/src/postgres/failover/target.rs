//! [`ConnectionTarget`]: where the application finds the current primary,
//! written atomically to a file after every promotion.

use std::io::Write;
use std::path::{Path, PathBuf};

use atlas_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The target file's format version; a reader refuses a newer one.
pub const TARGET_FORMAT: u32 = 1;

/// The database the application should connect to: the current primary's
/// address, never a password (the application keeps its own credentials).
///
/// Stored as JSON, for example
/// `{"format":1,"node":"db-b","host":"10.0.0.12","port":5432,"dbname":"app","user":"app","timeline":2}`.
/// Readers accept unknown fields (a newer minor release may add some) and
/// refuse a newer `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionTarget {
    /// The file's format version ([`TARGET_FORMAT`]).
    pub format: u32,
    /// The server's name (the failover pair's node name).
    pub node: String,
    /// Its host name, address or socket directory.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The database.
    pub dbname: String,
    /// The user, when the pair's configuration names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The server's timeline when the file was written, when known: it
    /// goes up with every promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
}

impl ConnectionTarget {
    /// A target at `host:port`, database `dbname`, for node `node`.
    pub fn new(
        node: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        dbname: impl Into<String>,
    ) -> Self {
        ConnectionTarget {
            format: TARGET_FORMAT,
            node: node.into(),
            host: host.into(),
            port,
            dbname: dbname.into(),
            user: None,
            timeline: None,
        }
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets the timeline.
    pub fn with_timeline(mut self, timeline: u64) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// A libpq `key=value` connection string for this target (no
    /// password: add it from the application's own secret, or let libpq
    /// take it from `PGPASSWORD` or `~/.pgpass`).
    pub fn dsn(&self) -> String {
        let quote = |v: &str| {
            if !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
            {
                v.to_owned()
            } else {
                format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        };
        let mut out = format!(
            "host={} port={} dbname={}",
            quote(&self.host),
            self.port,
            quote(&self.dbname)
        );
        if let Some(user) = &self.user {
            out.push_str(&format!(" user={}", quote(user)));
        }
        out
    }

    /// Writes the target to `path` atomically: into a temporary file in the
    /// same directory, synced, then renamed over `path` (and the directory
    /// synced), so a reader sees the old target or the new one, never a
    /// part.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the file that cannot be written.
    pub async fn write_to(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| {
            Error::backend_with("target-file", "serialising the connection target", e)
        })?;
        let path = path.to_owned();
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &json))
            .await
            .map_err(|e| Error::backend_with("target-file", "the writing task failed", e))??;
        tracing::info!(node = %node, "connection target written");
        Ok(())
    }

    /// Reads the target file at `path`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no file; [`Error::InvalidInput`]
    /// (field `format`) for a newer format, naming both versions;
    /// [`Error::Backend`] for an unreadable or damaged file.
    pub async fn read_from(path: &Path) -> Result<ConnectionTarget> {
        let text = match tokio::fs::read(path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "connection target file {}",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(Error::backend_with(
                    "target-file",
                    format!("cannot read {}", path.display()),
                    e,
                ));
            }
        };
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format: Format = serde_json::from_slice(&text).map_err(|e| {
            Error::backend_with(
                "target-file",
                format!("{} is not a connection target", path.display()),
                e,
            )
        })?;
        if format.format > TARGET_FORMAT {
            return Err(Error::invalid(
                "format",
                format!(
                    "{} has format {}; this release reads format {TARGET_FORMAT} and older",
                    path.display(),
                    format.format
                ),
            ));
        }
        serde_json::from_slice(&text).map_err(|e| {
            Error::backend_with(
                "target-file",
                format!("{} is not a connection target", path.display()),
                e,
            )
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::backend_with("target-file", format!("{what} {}", p.display()), e)
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        Error::invalid("target_file", format!("{} names no file", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| io("cannot write", &tmp, e))?;
        f.sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("cannot rename a temporary file to", path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_target_round_trips_through_its_file_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-target.json");
        let a = ConnectionTarget::new("db-a", "127.0.0.1", 5433, "app").with_user("app");
        a.write_to(&path).await.unwrap();
        assert_eq!(ConnectionTarget::read_from(&path).await.unwrap(), a);
        let b = ConnectionTarget::new("db-b", "10.0.0.2", 5432, "app").with_timeline(2);
        b.write_to(&path).await.unwrap();
        assert_eq!(ConnectionTarget::read_from(&path).await.unwrap(), b);
        // Only the target file is left: no temporary files.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("db-target.json")]);
    }

    #[tokio::test]
    async fn readers_accept_unknown_fields_and_refuse_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(
            &path,
            r#"{"format":1,"node":"n","host":"h","port":1,"dbname":"d","added_later":true}"#,
        )
        .unwrap();
        assert_eq!(ConnectionTarget::read_from(&path).await.unwrap().node, "n");
        std::fs::write(&path, r#"{"format":2,"node":"n"}"#).unwrap();
        let err = ConnectionTarget::read_from(&path).await.unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("format 2") && err.to_string().contains("format 1"),
            "{err}"
        );
        let missing = ConnectionTarget::read_from(&dir.path().join("none"))
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), atlas_core::ErrorKind::NotFound);
    }

    #[test]
    fn the_dsn_names_no_password_and_quotes_what_needs_it() {
        let t =
            ConnectionTarget::new("n", "/var/run/postgresql", 5432, "my db").with_user("o'brien");
        assert_eq!(
            t.dsn(),
            r"host=/var/run/postgresql port=5432 dbname='my db' user='o\'brien'"
        );
    }
}
