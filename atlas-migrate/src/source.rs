//! Migration files: names, checksums and directives.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::checksum::{checksum, flyway_checksum, raw_sha256};
use crate::placeholders::{self, LoadContext, SourceOptions};
use crate::statements;
use atlas_core::migration::{MigrationPhase, Statement, Version};
use atlas_core::{Error, Result};

/// The `-- atlas:` directives of one SQL file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directives {
    /// `-- atlas:no-transaction`: run statement by statement outside a
    /// transaction. Default: false. A script whose statement PostgreSQL
    /// refuses inside a transaction block (`CREATE INDEX CONCURRENTLY`,
    /// `VACUUM`, …) gets it set without the directive.
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

/// One SQL script (the up or the down half of a migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The file's path inside the migrations folder, `/`-separated, e.g.
    /// `V2__add_email.sql` or `2024/V2__add_email.sql`.
    pub file: String,
    /// The text that runs: the file's text without a leading byte-order
    /// mark and with its `${…}` placeholders replaced.
    pub sql: String,
    /// What the history records: [`checksum`] of the file as written
    /// (before placeholder replacement, as Flyway checksums it).
    pub checksum: String,
    /// Flyway's checksum of the file as written ([`flyway_checksum`]), for
    /// comparing with a `flyway_schema_history` row.
    pub flyway_checksum: i32,
    /// The file's `-- atlas:` directives. `no_transaction` is also set when
    /// a statement cannot run inside a transaction block
    /// ([`no_transaction_reason`](Self::no_transaction_reason)).
    pub directives: Directives,
    /// Why the script runs without a transaction although it has no
    /// `-- atlas:no-transaction` directive: the statement PostgreSQL refuses
    /// in a transaction block, and its line.
    pub no_transaction_reason: Option<String>,
    statements: Vec<Statement>,
    /// The first transaction-control statement (line, command), refused in
    /// a script that runs in a transaction.
    transaction_control: Option<(usize, String)>,
    /// SHA-256 of the exact bytes: what Atlas recorded before it ignored
    /// line-ending style, still accepted for files applied back then.
    raw_checksum: String,
}

impl Script {
    /// Builds a script from its file name and text, without placeholders.
    ///
    /// # Errors
    /// As [`Directives::parse`].
    pub fn new(file: impl Into<String>, sql: impl Into<String>) -> Result<Self> {
        Self::with_options(file, sql, &SourceOptions::default())
    }

    /// Builds a script, replacing its placeholders as `options` say.
    ///
    /// # Errors
    /// As [`Directives::parse`]; [`Error::InvalidInput`] naming the file and
    /// line of a placeholder without a value.
    pub fn with_options(
        file: impl Into<String>,
        sql: impl Into<String>,
        options: &SourceOptions,
    ) -> Result<Self> {
        Self::build(file.into(), sql.into(), options, &LoadContext::now())
    }

    fn build(
        file: String,
        raw: String,
        options: &SourceOptions,
        context: &LoadContext,
    ) -> Result<Self> {
        // A byte-order mark is not SQL; Flyway drops it too.
        let text = raw.strip_prefix('\u{feff}').unwrap_or(&raw);
        let sql = placeholders::replace(text, &file, options, context)?;
        let mut directives = Directives::parse(&sql, &file)?;
        let pieces = statements::pieces(&sql);
        let mut statements = Vec::new();
        let mut no_transaction_reason = None;
        let mut transaction_control = None;
        for piece in pieces.iter().filter(|p| p.is_statement()) {
            let line = piece.line(&sql);
            if no_transaction_reason.is_none()
                && let Some(reason) = piece.needs_no_transaction()
            {
                no_transaction_reason = Some(format!("{reason} at line {line}"));
            }
            if transaction_control.is_none()
                && let Some(command) = piece.transaction_control()
            {
                transaction_control = Some((line, command));
            }
            statements.push(piece.statement(&sql));
        }
        if directives.no_transaction {
            no_transaction_reason = None;
        } else if let Some(reason) = &no_transaction_reason {
            info!(%file, %reason, "this script runs without a transaction: PostgreSQL refuses its statement inside a transaction block");
            directives.no_transaction = true;
        }
        Ok(Script {
            checksum: checksum(raw.as_bytes()),
            flyway_checksum: flyway_checksum(raw.as_bytes()),
            raw_checksum: raw_sha256(raw.as_bytes()),
            file,
            sql,
            directives,
            no_transaction_reason,
            statements,
            transaction_control,
        })
    }

    /// The statements of the script, each with its text exactly as in the
    /// file (found by a lexer that only looks for boundaries, so nothing is
    /// dropped or rewritten), in order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// Whether the script runs in one transaction with its history change.
    pub fn transactional(&self) -> bool {
        !self.directives.no_transaction
    }

    /// Refuses a transactional script holding a transaction-control
    /// statement: Atlas runs it in a transaction of its own, which such a
    /// statement would end or nest, so its changes and its history row
    /// could no longer commit or roll back together.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file and line.
    pub fn check_transaction_control(&self) -> Result<()> {
        match &self.transaction_control {
            Some((line, command)) if self.transactional() => Err(Error::invalid(
                format!("{}:{line}", self.file),
                format!(
                    "{command} controls the transaction, but Atlas runs this file in a transaction of its own; \
                     remove it, or add `-- atlas:no-transaction` to run the file statement by statement"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `recorded` (from the history) is this file's checksum,
    /// including the one Atlas recorded before it ignored line endings.
    pub fn matches_checksum(&self, recorded: &str) -> bool {
        recorded == self.checksum || recorded == self.raw_checksum
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

    /// Whether `recorded` (from the history) matches the up script.
    pub fn matches_checksum(&self, recorded: &str) -> bool {
        self.up.matches_checksum(recorded)
    }

    /// The phase declared by the up script.
    pub fn phase(&self) -> MigrationPhase {
        self.up.directives.phase
    }
}

/// A repeatable migration, `R__<name>.sql`: run after the versioned
/// migrations, in name order, each time its text changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeatable {
    /// The name: the file name's part after `R__`, without `.sql`.
    pub name: String,
    /// The script.
    pub script: Script,
    /// What the history records: [`checksum`] of the text that runs,
    /// placeholders replaced, so a new placeholder value runs it again (as
    /// Flyway does for repeatable migrations).
    pub checksum: String,
}

/// What a file name says.
enum FileName {
    /// `R__<name>.sql`.
    Repeatable { name: String },
    /// `V<version>__<name>.sql` or `.down.sql`.
    Versioned {
        version: Version,
        name: String,
        down: bool,
    },
    /// Looks like a migration but is not run; the reason.
    Ignored(String),
    /// Not a migration file at all.
    Other,
}

const NAMING: &str =
    "V<version>__<name>.sql or V<version>__<name>.down.sql (version: numbers separated by . or _)";

/// Parses a file name (the last part of its path).
fn parse_file_name(file: &str) -> Result<FileName> {
    let lower = file.to_ascii_lowercase();
    if !lower.ends_with(".sql") {
        return Ok(FileName::Other);
    }
    let ignored = |why: &str| {
        Ok(FileName::Ignored(format!(
            "{why}; migrations are named {NAMING}"
        )))
    };
    if !file.ends_with(".sql") {
        return ignored("the extension is not lower-case .sql");
    }
    let Some(rest) = file.strip_prefix('V') else {
        return match file.as_bytes().first() {
            Some(b'U') if file.contains("__") => ignored(
                "Flyway undo migrations (U…) are not run; Atlas reverts with V<version>__<name>.down.sql",
            ),
            Some(b'R') if file.starts_with("R__") => match &file[3..file.len() - 4] {
                "" => Err(Error::invalid(
                    file,
                    "the name is empty; repeatable migrations are named R__<name>.sql",
                )),
                name => Ok(FileName::Repeatable {
                    name: name.to_owned(),
                }),
            },
            Some(b'v') if file.contains("__") => ignored("the prefix must be an upper-case V"),
            _ => ignored("the name does not start with V"),
        };
    };
    let (stem, down) = if let Some(stem) = rest.strip_suffix(".down.sql") {
        (stem, true)
    } else {
        (&rest[..rest.len() - 4], false)
    };
    let Some((version, name)) = stem.split_once("__") else {
        return ignored("there is no `__` between version and name");
    };
    let version: Version = version.parse().map_err(|_| {
        Error::invalid(
            file,
            format!(
                "the version must be numbers separated by . or _; migrations are named {NAMING}"
            ),
        )
    })?;
    if name.is_empty() {
        return Err(Error::invalid(
            file,
            format!("the name is empty; migrations are named {NAMING}"),
        ));
    }
    Ok(FileName::Versioned {
        version,
        name: name.to_owned(),
        down,
    })
}

/// The migrations of one folder, sorted by version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
    repeatables: Vec<Repeatable>,
    warnings: Vec<String>,
}

impl MigrationSet {
    /// Reads every migration file of `dir` and its subfolders, without
    /// placeholders.
    ///
    /// # Errors
    /// As [`load_with`](Self::load_with).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(dir, &SourceOptions::default())
    }

    /// Reads every migration file of `dir` and its subfolders (files are
    /// named by their path inside `dir`), replacing placeholders as
    /// `options` say. Files that look like migrations but are not run (a
    /// Flyway undo file, a lower-case `v`, an upper-case `.SQL`, no `__`)
    /// are listed in [`warnings`](Self::warnings) and logged.
    ///
    /// # Errors
    /// [`Error::NotFound`] if `dir` cannot be read; [`Error::InvalidInput`]
    /// naming the file for a malformed version, two files with one version,
    /// a down file without its up file, a non-UTF-8 file, a bad directive or
    /// a placeholder without a value.
    pub fn load_with(dir: impl AsRef<Path>, options: &SourceOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        walk(dir, "", &mut files)?;
        files.sort();
        let mut sources = Vec::new();
        for (name, path) in files {
            let base = name.rsplit('/').next().unwrap_or(&name);
            if matches!(parse_file_name(base), Ok(FileName::Other)) {
                continue;
            }
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::not_found(format!("migration file {}: {e}", path.display())))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::invalid(name.clone(), "must be UTF-8 text"))?;
            sources.push((name, text));
        }
        Self::from_sources_with(sources, options)
    }

    /// Builds a set from `(file name, text)` pairs, as [`load`](Self::load)
    /// does from a folder. Names that are not migrations are ignored.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_sources(
        sources: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Result<Self> {
        Self::from_sources_with(sources, &SourceOptions::default())
    }

    /// [`from_sources`](Self::from_sources) with placeholder options.
    ///
    /// # Errors
    /// As [`load_with`](Self::load_with).
    pub fn from_sources_with(
        sources: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
        options: &SourceOptions,
    ) -> Result<Self> {
        use std::collections::BTreeMap;
        let context = LoadContext::now();
        let mut ups: BTreeMap<Version, (String, Script)> = BTreeMap::new();
        let mut downs: BTreeMap<Version, (String, Script)> = BTreeMap::new();
        let mut repeatables: BTreeMap<String, Repeatable> = BTreeMap::new();
        let mut warnings = Vec::new();
        for (file, text) in sources {
            let file: String = file.into();
            let base = file.rsplit('/').next().unwrap_or(&file);
            let (version, name, down) = match parse_file_name(base)? {
                FileName::Other => continue,
                FileName::Repeatable { name } => {
                    if let Some(other) = repeatables.get(&name) {
                        return Err(Error::invalid(
                            file,
                            format!("repeatable migration {name} is also {}", other.script.file),
                        ));
                    }
                    let script = Script::build(file.clone(), text.into(), options, &context)?;
                    let checksum = checksum(script.sql.as_bytes());
                    repeatables.insert(
                        name.clone(),
                        Repeatable {
                            name,
                            script,
                            checksum,
                        },
                    );
                    continue;
                }
                FileName::Ignored(why) => {
                    warn!(%file, %why, "ignored file that looks like a migration");
                    warnings.push(format!("{file} is ignored: {why}"));
                    continue;
                }
                FileName::Versioned {
                    version,
                    name,
                    down,
                } => (version, name, down),
            };
            let script = Script::build(file.clone(), text.into(), options, &context)?;
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
                        format!("down file has no matching {version}__{down_name}.sql"),
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
        Ok(MigrationSet {
            migrations,
            repeatables: repeatables.into_values().collect(),
            warnings,
        })
    }

    /// The migrations, by ascending version.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The repeatable migrations, by name (the order they run in).
    pub fn repeatables(&self) -> &[Repeatable] {
        &self.repeatables
    }

    /// The repeatable migration called `name`.
    pub fn repeatable(&self, name: &str) -> Option<&Repeatable> {
        self.repeatables.iter().find(|r| r.name == name)
    }

    /// Files that look like migrations but are not run, each with why.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
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

/// Collects the files under `dir` (recursively) as (path inside the
/// root, `/`-separated, full path).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::not_found(format!("migrations directory {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            Error::not_found(format!("migrations directory {}: {e}", dir.display()))
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            warn!(path = %entry.path().display(), "ignored file with a non-UTF-8 name");
            continue;
        };
        let path = entry.path();
        let relative = format!("{prefix}{name}");
        let file_type = entry
            .file_type()
            .map_err(|e| Error::not_found(format!("{}: {e}", path.display())))?;
        if file_type.is_dir() || (file_type.is_symlink() && path.is_dir()) {
            walk(&path, &format!("{relative}/"), out)?;
        } else {
            out.push((relative, path));
        }
    }
    Ok(())
}
