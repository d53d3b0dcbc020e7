//! Migration files: names, checksums and directives.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use atlas_core::migration::{MigrationPhase, Version};
use atlas_core::{Error, Result};

/// The `-- atlas:` directives of one SQL file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directives {
    /// `-- atlas:no-transaction`: run statement by statement outside a
    /// transaction (needed for `CREATE INDEX CONCURRENTLY`). Default: false.
    pub no_transaction: bool,
    /// `-- atlas:phase expand|contract`. Default: expand.
    pub phase: MigrationPhase,
    /// `-- atlas:verify <SQL>` lines, in file order: each must return one row
    /// whose first column is `true`.
    pub verify: Vec<String>,
    /// `-- atlas:allow-data-change <table>` lines: tables whose rows this
    /// migration may change, exempt from the table invariants.
    pub allow_data_change: Vec<String>,
}

impl Directives {
    /// Reads the directives from `sql`; `file` names the file in errors.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown `atlas:` directive, a bad phase,
    /// a repeated phase or an empty verify query.
    pub fn parse(sql: &str, file: &str) -> Result<Self> {
        let mut out = Directives::default();
        let mut phase_seen = false;
        for (index, line) in sql.lines().enumerate() {
            let Some(comment) = line.trim_start().strip_prefix("--") else {
                continue;
            };
            let Some(directive) = comment.trim_start().strip_prefix("atlas:") else {
                continue;
            };
            let field = format!("{file}:{}", index + 1);
            let (name, arg) = match directive.split_once(char::is_whitespace) {
                Some((name, arg)) => (name, arg.trim()),
                None => (directive.trim(), ""),
            };
            match name {
                "no-transaction" if arg.is_empty() => out.no_transaction = true,
                "phase" => {
                    if phase_seen {
                        return Err(Error::invalid(field, "atlas:phase may appear only once"));
                    }
                    phase_seen = true;
                    out.phase = MigrationPhase::parse(arg, &field)?;
                }
                "verify" => {
                    if arg.is_empty() {
                        return Err(Error::invalid(
                            field,
                            "atlas:verify needs a SQL query returning true",
                        ));
                    }
                    out.verify.push(arg.trim_end_matches(';').to_owned());
                }
                "allow-data-change" => {
                    if arg.is_empty() || arg.contains(char::is_whitespace) {
                        return Err(Error::invalid(
                            field,
                            "atlas:allow-data-change needs one table name",
                        ));
                    }
                    out.allow_data_change.push(arg.to_owned());
                }
                other => {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "unknown directive `atlas:{other}` (known: no-transaction, phase expand|contract, verify <SQL>, allow-data-change <table>)"
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// The SHA-256 of a file's bytes, lowercase hex.
pub fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// One SQL script (the up or the down half of a migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The file name, e.g. `V2__add_email.sql`.
    pub file: String,
    /// The file's full text.
    pub sql: String,
    /// SHA-256 of the file, lowercase hex.
    pub checksum: String,
    /// The file's `-- atlas:` directives.
    pub directives: Directives,
}

impl Script {
    /// Builds a script from its file name and text.
    ///
    /// # Errors
    /// As [`Directives::parse`].
    pub fn new(file: impl Into<String>, sql: impl Into<String>) -> Result<Self> {
        let file = file.into();
        let sql = sql.into();
        let directives = Directives::parse(&sql, &file)?;
        Ok(Script {
            checksum: checksum(sql.as_bytes()),
            file,
            sql,
            directives,
        })
    }

    /// The statements of the script, split by the SQL parser, each with
    /// its text exactly as in the file. Used to run a no-transaction script
    /// one statement at a time (PostgreSQL runs a multi-statement query
    /// string in one implicit transaction).
    pub fn statements(&self) -> Vec<String> {
        use squawk_syntax::ast::AstNode;
        let parse = squawk_syntax::SourceFile::parse(&self.sql);
        parse
            .tree()
            .stmts()
            .map(|stmt| {
                let range = stmt.syntax().text_range();
                let start = u32::from(range.start()) as usize;
                let end = u32::from(range.end()) as usize;
                self.sql.get(start..end).unwrap_or_default().to_owned()
            })
            .filter(|s| !s.trim().is_empty())
            .collect()
    }
}

/// One migration: a version, a name, its up script and optional down script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version.
    pub version: Version,
    /// The name: the part of the file name after `__`, without `.sql`.
    pub name: String,
    /// `V<version>__<name>.sql`.
    pub up: Script,
    /// `V<version>__<name>.down.sql`, if present.
    pub down: Option<Script>,
}

impl Migration {
    /// The checksum recorded in the history: the up script's.
    pub fn checksum(&self) -> &str {
        &self.up.checksum
    }

    /// The phase declared by the up script.
    pub fn phase(&self) -> MigrationPhase {
        self.up.directives.phase
    }
}

/// Parses `V<version>__<name>.sql` / `.down.sql`; `None` for other files.
fn parse_file_name(file: &str) -> Option<Result<(Version, String, bool)>> {
    let rest = file.strip_prefix('V')?;
    let (stem, down) = if let Some(stem) = rest.strip_suffix(".down.sql") {
        (stem, true)
    } else {
        (rest.strip_suffix(".sql")?, false)
    };
    let rule = "must be V<version>__<name>.sql or V<version>__<name>.down.sql, version digits, name non-empty";
    let Some((version, name)) = stem.split_once("__") else {
        return Some(Err(Error::invalid(file, rule)));
    };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Some(Err(Error::invalid(file, rule)));
    }
    match version.parse::<u64>() {
        Ok(v) => Some(Ok((Version(v), name.to_owned(), down))),
        Err(_) => Some(Err(Error::invalid(file, "version does not fit in 64 bits"))),
    }
}

/// The migrations of one directory, sorted by version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

impl MigrationSet {
    /// Reads every `V*.sql` file of `dir` (other files are ignored).
    ///
    /// # Errors
    /// [`Error::NotFound`] if `dir` cannot be read; [`Error::InvalidInput`]
    /// naming the file for a malformed `V…` name, two files with one version,
    /// a down file without its up file, a non-UTF-8 file or a bad directive.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::not_found(format!("migrations directory {}: {e}", dir.display()))
        })?;
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::not_found(format!("migrations directory {}: {e}", dir.display()))
            })?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            files.push((name, entry.path()));
        }
        let mut sources = Vec::new();
        for (name, path) in files {
            if parse_file_name(&name).is_none() {
                continue;
            }
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::not_found(format!("migration file {}: {e}", path.display())))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::invalid(name.clone(), "must be UTF-8 text"))?;
            sources.push((name, text));
        }
        Self::from_sources(sources)
    }

    /// Builds a set from `(file name, text)` pairs, as [`load`](Self::load)
    /// does from a directory. Names not starting with `V` are ignored.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_sources(
        sources: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Result<Self> {
        use std::collections::BTreeMap;
        let mut ups: BTreeMap<Version, (String, Script)> = BTreeMap::new();
        let mut downs: BTreeMap<Version, (String, Script)> = BTreeMap::new();
        for (file, text) in sources {
            let file: String = file.into();
            let Some(parsed) = parse_file_name(&file) else {
                continue;
            };
            let (version, name, down) = parsed?;
            let script = Script::new(file.clone(), text)?;
            let map = if down { &mut downs } else { &mut ups };
            if let Some((_, other)) = map.get(&version) {
                return Err(Error::invalid(
                    file,
                    format!("version {version} is also used by {}", other.file),
                ));
            }
            map.insert(version, (name, script));
        }
        let mut migrations = Vec::with_capacity(ups.len());
        for (version, (down_name, down)) in &downs {
            match ups.get(version) {
                Some((name, _)) if name == down_name => {}
                _ => {
                    return Err(Error::invalid(
                        down.file.clone(),
                        format!("down file has no matching V{}__{down_name}.sql", version.0),
                    ));
                }
            }
        }
        for (version, (name, up)) in ups {
            let down = downs.remove(&version).map(|(_, s)| s);
            migrations.push(Migration {
                version,
                name,
                up,
                down,
            });
        }
        Ok(MigrationSet { migrations })
    }

    /// The migrations, by ascending version.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The migration with `version`.
    pub fn get(&self, version: Version) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.migrations[i])
    }

    /// The highest version, if any.
    pub fn latest(&self) -> Option<Version> {
        self.migrations.last().map(|m| m.version)
    }
}
