//! Statement boundaries in a SQL file.
//!
//! A lexer that understands only what can hide a `;` from the statement
//! boundary — quoted strings (with `E''` backslash escapes and `''`
//! doubling), quoted identifiers, dollar-quoted strings with tags, `--` and
//! nested `/* */` comments, parentheses, and the `BEGIN ATOMIC … END` body of
//! a SQL-standard function or procedure — plus the inline data block that
//! follows `COPY … FROM STDIN;` up to its `\.` line. It never rewrites or
//! drops text: the pieces it returns, joined, are the file byte for byte, and
//! each statement sent to the database is the file's own text. Deciding
//! whether a statement is valid SQL is the database's job.
//!
//! It follows the heuristics psql uses to find where a statement ends, so a
//! file that psql runs statement by statement splits the same way here.

use std::ops::Range;

use atlas_core::migration::Statement;

/// One piece of a file: a statement with the blank text and comments
/// before it, or trailing blank text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    /// The bytes of the file this piece covers; consecutive pieces touch.
    pub(crate) range: Range<usize>,
    /// Where the statement's text ends (after its `;`), before any COPY data.
    pub(crate) statement_end: usize,
    /// The inline data of a `COPY … FROM STDIN` statement.
    pub(crate) copy_data: Option<Range<usize>>,
    /// Offset of the statement's first token; `None` for blank text.
    pub(crate) first_token: Option<usize>,
    /// The first words of the statement outside parentheses, upper-cased
    /// (quoted identifiers and strings are not words).
    pub(crate) words: Vec<String>,
}

/// How many words of a statement outside parentheses are kept: enough to
/// recognise every statement head this crate looks for.
const MAX_WORDS: usize = 16;

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_char(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Skips a quoted run starting after its opening `quote`; `backslash` for
/// `E''` strings. Returns the offset after the closing quote, or the end
/// of the text for an unterminated run (the database then reports it).
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            c if c == quote => {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// A dollar-quote tag (`$$` or `$name$`) starting at `i`, if there is one.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < b.len() && b[j] != b'$' {
        if !ident_start(b[j]) {
            return None;
        }
        while j < b.len() && ident_char(b[j]) && b[j] != b'$' {
            j += 1;
        }
    }
    (j < b.len() && b[j] == b'$').then_some(j + 1 - i)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The state of the statement being read.
#[derive(Default)]
struct Current {
    paren: i64,
    begin_depth: u32,
    ident_count: usize,
    /// The first letters of `create`, `or`, `replace`, `function`,
    /// `procedure` among the first four words; 0 for other words.
    idents: [u8; 4],
    first_token: Option<usize>,
    words: Vec<String>,
}

impl Current {
    fn token(&mut self, at: usize) {
        self.first_token.get_or_insert(at);
    }

    fn word(&mut self, word: &str) {
        let lower = word.to_ascii_lowercase();
        if self.ident_count < self.idents.len()
            && matches!(
                lower.as_str(),
                "create" | "or" | "replace" | "function" | "procedure"
            )
        {
            self.idents[self.ident_count] = lower.as_bytes()[0];
        }
        self.ident_count += 1;
        // Inside `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, a `BEGIN` opens a
        // SQL-standard body whose `;` do not end the statement, up to its
        // `END`; a `CASE` inside it also ends with `END`.
        let id = self.idents;
        let routine = id[0] == b'c'
            && (id[1] == b'f'
                || id[1] == b'p'
                || (id[1] == b'o' && id[2] == b'r' && (id[3] == b'f' || id[3] == b'p')));
        if routine && self.paren == 0 {
            match lower.as_str() {
                "begin" => self.begin_depth += 1,
                "case" if self.begin_depth >= 1 => self.begin_depth += 1,
                "end" => self.begin_depth = self.begin_depth.saturating_sub(1),
                _ => {}
            }
        }
        if self.paren == 0 && self.words.len() < MAX_WORDS {
            self.words.push(word.to_ascii_uppercase());
        }
    }

    fn is_copy_from_stdin(&self) -> bool {
        self.words.first().is_some_and(|w| w == "COPY")
            && self
                .words
                .windows(2)
                .any(|w| w[0] == "FROM" && w[1] == "STDIN")
    }
}

/// Where the inline data after a `COPY … FROM STDIN;` ending at `after`
/// lies, and where the piece ends: the data starts on the next line and
/// ends before a line holding only `\.` (or at the end of the file).
fn copy_block(b: &[u8], after: usize) -> (Range<usize>, usize) {
    let data_start = match find(b, b"\n", after) {
        Some(nl) => nl + 1,
        None => return (b.len()..b.len(), b.len()),
    };
    let mut line = data_start;
    while line < b.len() {
        let line_end = find(b, b"\n", line).unwrap_or(b.len());
        let text = &b[line..line_end];
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"\\." {
            return (data_start..line, (line_end + 1).min(b.len()));
        }
        line = line_end + 1;
    }
    (data_start..b.len(), b.len())
}

/// Cuts `sql` into pieces, each ending after a statement's `;` (and its
/// COPY data), the last possibly blank or unterminated.
pub(crate) fn pieces(sql: &str) -> Vec<Piece> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut cur = Current::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = find(b, b"\n", i).unwrap_or(b.len());
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' | b'"' => {
                cur.token(i);
                i = skip_quoted(b, i + 1, c, false);
            }
            b'$' => {
                cur.token(i);
                match dollar_tag(b, i) {
                    Some(len) => {
                        let tag = &b[i..i + len];
                        i = match find(b, tag, i + len) {
                            Some(close) => close + len,
                            None => b.len(),
                        };
                    }
                    None => i += 1,
                }
            }
            b'(' => {
                cur.token(i);
                cur.paren += 1;
                i += 1;
            }
            b')' => {
                cur.token(i);
                cur.paren -= 1;
                i += 1;
            }
            b';' if cur.paren <= 0 && cur.begin_depth == 0 => {
                cur.token(i);
                let statement_end = i + 1;
                let (copy_data, end) = if cur.is_copy_from_stdin() {
                    let (data, end) = copy_block(b, statement_end);
                    (Some(data), end)
                } else {
                    (None, statement_end)
                };
                out.push(Piece {
                    range: start..end,
                    statement_end,
                    copy_data,
                    first_token: cur.first_token,
                    words: std::mem::take(&mut cur.words),
                });
                start = end;
                i = end;
                cur = Current::default();
            }
            c if ident_start(c) => {
                cur.token(i);
                let mut j = i + 1;
                while j < b.len() && ident_char(b[j]) {
                    j += 1;
                }
                if j == i + 1 && (c == b'e' || c == b'E') && b.get(j) == Some(&b'\'') {
                    i = skip_quoted(b, j + 1, b'\'', true);
                    continue;
                }
                cur.word(&sql[i..j]);
                i = j;
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if c.is_ascii_digit() => {
                cur.token(i);
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => {
                cur.token(i);
                i += 1;
            }
        }
    }
    if start < b.len() {
        out.push(Piece {
            range: start..b.len(),
            statement_end: b.len(),
            copy_data: None,
            first_token: cur.first_token,
            words: cur.words,
        });
    }
    out
}

fn line_at(sql: &str, offset: usize) -> usize {
    sql.as_bytes()[..offset.min(sql.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Piece {
    /// Whether this piece holds a statement (not only blank text and
    /// comments).
    pub(crate) fn is_statement(&self) -> bool {
        self.first_token.is_some()
    }

    /// The 1-based line of the statement's first token.
    pub(crate) fn line(&self, sql: &str) -> usize {
        line_at(sql, self.first_token.unwrap_or(self.range.start))
    }

    /// The statement to send: the file's own text.
    pub(crate) fn statement(&self, sql: &str) -> Statement {
        Statement {
            sql: sql[self.range.start..self.statement_end].to_owned(),
            line: self.line(sql),
            copy_data: self.copy_data.clone().map(|r| sql[r].to_owned()),
        }
    }

    fn head(&self, n: usize) -> Vec<&str> {
        self.words.iter().take(n).map(String::as_str).collect()
    }

    fn has_word(&self, word: &str) -> bool {
        self.words.iter().any(|w| w == word)
    }

    /// The transaction-control command this statement is, if any:
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`.
    /// `SAVEPOINT`, `RELEASE` and `ROLLBACK TO` work inside a transaction
    /// and are not reported.
    pub(crate) fn transaction_control(&self) -> Option<String> {
        let head = self.head(3);
        let command = match head.as_slice() {
            ["ROLLBACK", "TO", ..] | ["ROLLBACK", "WORK" | "TRANSACTION", "TO"] => return None,
            ["START", "TRANSACTION", ..] => "START TRANSACTION",
            ["PREPARE", "TRANSACTION", ..] => "PREPARE TRANSACTION",
            ["COMMIT", "PREPARED", ..] => "COMMIT PREPARED",
            ["ROLLBACK", "PREPARED", ..] => "ROLLBACK PREPARED",
            ["BEGIN", ..] => "BEGIN",
            ["COMMIT", ..] => "COMMIT",
            ["END", ..] => "END",
            ["ROLLBACK", ..] => "ROLLBACK",
            ["ABORT", ..] => "ABORT",
            _ => return None,
        };
        Some(command.to_owned())
    }

    /// Why PostgreSQL refuses to run this statement inside a transaction
    /// block, if it does.
    ///
    /// `ALTER TYPE … ADD VALUE` is not listed: PostgreSQL 12 and later run
    /// it in a transaction (the new value only becomes usable once the
    /// transaction commits).
    pub(crate) fn needs_no_transaction(&self) -> Option<String> {
        let head = self.head(4);
        let reason = match head.as_slice() {
            ["CREATE", "INDEX", "CONCURRENTLY", ..]
            | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"] => "CREATE INDEX CONCURRENTLY",
            ["DROP", "INDEX", "CONCURRENTLY", ..] => "DROP INDEX CONCURRENTLY",
            ["REINDEX", ..] if self.has_word("CONCURRENTLY") => "REINDEX CONCURRENTLY",
            ["REINDEX", "SYSTEM" | "DATABASE", ..] => "REINDEX SYSTEM/DATABASE",
            ["VACUUM", ..] => "VACUUM",
            ["CREATE", "DATABASE", ..] => "CREATE DATABASE",
            ["DROP", "DATABASE", ..] => "DROP DATABASE",
            ["ALTER", "DATABASE", ..] if self.has_word("TABLESPACE") => {
                "ALTER DATABASE … SET TABLESPACE"
            }
            ["CREATE", "TABLESPACE", ..] => "CREATE TABLESPACE",
            ["DROP", "TABLESPACE", ..] => "DROP TABLESPACE",
            ["ALTER", "SYSTEM", ..] => "ALTER SYSTEM",
            ["CREATE", "SUBSCRIPTION", ..] => "CREATE SUBSCRIPTION",
            ["DROP", "SUBSCRIPTION", ..] => "DROP SUBSCRIPTION",
            ["ALTER", "SUBSCRIPTION", ..] if self.has_word("REFRESH") => {
                "ALTER SUBSCRIPTION … REFRESH PUBLICATION"
            }
            ["CLUSTER"] | ["CLUSTER", "VERBOSE"] => "CLUSTER without a table",
            ["DISCARD", "ALL", ..] => "DISCARD ALL",
            _ => return None,
        };
        Some(reason.to_owned())
    }
}

/// The statements of `sql`, each with its text exactly as in the file.
#[cfg(test)]
pub(crate) fn split(sql: &str) -> Vec<Statement> {
    pieces(sql)
        .iter()
        .filter(|p| p.is_statement())
        .map(|p| p.statement(sql))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(sql: &str) -> Vec<String> {
        split(sql).into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn quotes_comments_and_dollar_quotes_hide_semicolons() {
        let sql = "SELECT 'a;b', E'it\\'s;', 'x''y;';\n\
                   SELECT \"we;ird\" FROM t; -- c; d\n\
                   /* a /* nested; */ still; */ SELECT 1;\n\
                   DO $f$ BEGIN PERFORM 1; COMMIT; END $f$;\n\
                   CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;";
        let got = texts(sql);
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(got[1].ends_with("FROM t;"));
        assert!(got[2].trim_start().starts_with("-- c; d"));
        assert!(got[3].contains("COMMIT; END $f$;"));
    }

    #[test]
    fn a_begin_atomic_body_is_one_statement() {
        let sql = "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql\n\
                   BEGIN ATOMIC\n  SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\n\
                   CREATE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END;\nSELECT 3;";
        let got = texts(sql);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].ends_with("END;"));
        assert!(got[1].contains("VALUES (1); END;"));
    }

    #[test]
    fn copy_data_belongs_to_its_statement() {
        let sql = "CREATE TABLE t (a int, b text);\n\
                   COPY public.t (a, b) FROM stdin;\n1\tx;y\n2\t'z\n\\.\nSELECT 1;\n";
        let got = split(sql);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[1].sql.trim().starts_with("COPY public.t"));
        assert_eq!(got[1].copy_data.as_deref(), Some("1\tx;y\n2\t'z\n"));
        assert_eq!(got[2].line, 6);
        // Joined, the pieces are the file.
        let joined: String = pieces(sql).iter().map(|p| &sql[p.range.clone()]).collect();
        assert_eq!(joined, sql);
    }

    #[test]
    fn statement_heads_are_recognised() {
        let kinds = |sql: &str| {
            pieces(sql)
                .iter()
                .filter(|p| p.is_statement())
                .map(|p| (p.transaction_control(), p.needs_no_transaction()))
                .collect::<Vec<_>>()
        };
        let got = kinds(
            "begin; commit work; END; rollback; rollback to savepoint s; savepoint s; \
             release s; start transaction; prepare transaction 'x'; commit prepared 'x'; abort;",
        );
        let tc: Vec<Option<&str>> = got.iter().map(|(t, _)| t.as_deref()).collect();
        assert_eq!(
            tc,
            vec![
                Some("BEGIN"),
                Some("COMMIT"),
                Some("END"),
                Some("ROLLBACK"),
                None,
                None,
                None,
                Some("START TRANSACTION"),
                Some("PREPARE TRANSACTION"),
                Some("COMMIT PREPARED"),
                Some("ABORT"),
            ]
        );
        let got = kinds(
            "create unique index concurrently i on t (a); DROP INDEX CONCURRENTLY i; \
             REINDEX (VERBOSE) INDEX CONCURRENTLY i; VACUUM t; CREATE DATABASE d; ALTER SYSTEM SET x = 1; \
             ALTER TYPE e ADD VALUE 'v'; CREATE INDEX i ON t (a); CLUSTER; CLUSTER t USING i;",
        );
        let nt: Vec<bool> = got.iter().map(|(_, n)| n.is_some()).collect();
        assert_eq!(
            nt,
            vec![
                true, true, true, true, true, true, false, false, true, false
            ]
        );
    }

    #[test]
    fn what_the_old_parser_dropped_is_kept() {
        let sql = "CREATE TABLE w_a (id int); CREATE INDX w_a_id ON w_a (id); ALTERR TABLE w_a ADD COLUMN note text;";
        assert_eq!(
            texts(sql),
            vec![
                "CREATE TABLE w_a (id int);",
                " CREATE INDX w_a_id ON w_a (id);",
                " ALTERR TABLE w_a ADD COLUMN note text;"
            ]
        );
    }

    /// Snippets whose own `;` must not split, each ending with its one
    /// real statement boundary.
    const SNIPPETS: &[&str] = &[
        "SELECT 1;",
        "SELECT 'a;b' || 'it''s; fine';",
        "SELECT E'back\\\\slash\\'; quote';",
        "SELECT \"semi;colon\"\"x\" FROM t;",
        "SELECT $$ ; $$, $tag$ $$ ; $tag$;",
        "-- a comment; with semicolons\nSELECT 2;",
        "/* outer /* inner; */ still; */ SELECT 3;",
        "DO $body$ BEGIN COMMIT; END $body$;",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;",
        "COPY t (a, b) FROM STDIN;\n1\t;\n\\.\n",
        "INSERT INTO t VALUES (1, ';');",
        "SELECT U&'d\\0061t;a', B'101', X'1F';",
        "CREATE TABLE x (a int DEFAULT 1, b text CHECK (b <> ';'));",
    ];

    proptest! {
        #[test]
        fn split_then_join_is_the_file_and_finds_every_boundary(
            picks in proptest::collection::vec((0..SNIPPETS.len(), prop_oneof!["", " ", "\n", "\r\n", "\n\n  "]), 0..12),
            tail in prop_oneof!["", "\n", "-- trailing; comment\n", "  "],
        ) {
            let mut sql = String::new();
            let mut expected = Vec::new();
            for (i, sep) in &picks {
                sql.push_str(sep);
                sql.push_str(SNIPPETS[*i]);
                expected.push(*i);
            }
            sql.push_str(&tail);
            let pieces = pieces(&sql);
            let joined: String = pieces.iter().map(|p| &sql[p.range.clone()]).collect();
            prop_assert_eq!(&joined, &sql);
            let statements: Vec<&Piece> = pieces.iter().filter(|p| p.is_statement()).collect();
            prop_assert_eq!(statements.len(), expected.len(), "{:?}", sql);
            for (piece, i) in statements.iter().zip(&expected) {
                let text = sql[piece.range.clone()].trim_start_matches([' ', '\n', '\r']);
                prop_assert_eq!(text, SNIPPETS[*i]);
            }
        }
    }
}
