//! SQL that runs at migration time from inside other statements: the
//! statements of a `DO` block and the literal strings it `EXECUTE`s.
//!
//! A `DO` block runs when the migration runs, so its statements take the
//! same locks as if they stood in the file. A function body does not run
//! when `CREATE FUNCTION` does, so it is not linted here (a file that also
//! calls the function it creates is not followed into the call).

use squawk_syntax::SourceFile;
use squawk_syntax::ast::{self, AstNode};
use squawk_syntax::decoded_text::DecodedText;

/// How deep `DO` blocks inside `DO` blocks (or `EXECUTE`d strings) are
/// followed; real migrations nest one or two levels.
const MAX_DEPTH: usize = 4;

/// One step from a fragment's coordinates towards the file's.
#[derive(Clone)]
enum Layer {
    /// The fragment starts this many bytes into its parent text.
    Shift(u32),
    /// The parent text is a decoded string literal (a `DO` body or an
    /// `EXECUTE`d string).
    Decoded(DecodedText),
}

/// SQL text linted as if it stood in the file, with the way back from its
/// offsets to the file's.
#[derive(Clone)]
pub(crate) struct Fragment {
    /// The statement text.
    pub(crate) sql: String,
    /// Innermost first.
    layers: Vec<Layer>,
}

impl Fragment {
    /// Where offset `pos` of the fragment is in the file.
    pub(crate) fn to_file(&self, pos: u32) -> u32 {
        let mut pos = pos;
        for layer in &self.layers {
            pos = match layer {
                Layer::Shift(n) => pos + n,
                Layer::Decoded(decoded) => u32::from(decoded.source_pos(pos.into())),
            };
        }
        pos
    }
}

/// Every fragment run by the top-level statements of `file`, in file order.
pub(crate) fn fragments(file: &SourceFile) -> Vec<Fragment> {
    let mut out = Vec::new();
    for stmt in file.stmts() {
        if let ast::Stmt::Do(block) = stmt {
            do_block(&block, &[], 1, &mut out);
        }
    }
    out
}

fn do_block(block: &ast::Do, outer: &[Layer], depth: usize, out: &mut Vec<Fragment>) {
    if depth > MAX_DEPTH {
        return;
    }
    // `plpgsql()` is None for another LANGUAGE; PL/pgSQL is the default.
    let Some(body) = block.plpgsql() else {
        return;
    };
    // The same decoding the PL/pgSQL parse was made from: the body's text
    // and its way back to the literal's place in the parent.
    let Some(decoded_body) = block.body().and_then(|b| b.decoded_value()) else {
        return;
    };
    let text = body.text().to_owned();
    for node in body.syntax().descendants() {
        if let Some(exec) = ast::PlpgsqlExecSqlStmt::cast(node.clone()) {
            let Some(stmt) = exec.stmt() else {
                continue;
            };
            let range = stmt.syntax().text_range();
            let Some(sql) = text.get(usize::from(range.start())..usize::from(range.end())) else {
                continue;
            };
            let mut layers = vec![
                Layer::Shift(u32::from(range.start())),
                Layer::Decoded(decoded_body.clone()),
            ];
            layers.extend_from_slice(outer);
            push(
                Fragment {
                    sql: sql.to_owned(),
                    layers,
                },
                depth,
                out,
            );
        } else if let Some(exec) = ast::PlpgsqlDynExecuteStmt::cast(node) {
            let Some(decoded) = exec.query().and_then(|q| literal_only(q.syntax())) else {
                continue;
            };
            let mut layers = vec![
                Layer::Decoded(decoded.clone()),
                Layer::Decoded(decoded_body.clone()),
            ];
            layers.extend_from_slice(outer);
            push(
                Fragment {
                    sql: decoded.text().to_owned(),
                    layers,
                },
                depth,
                out,
            );
        }
    }
}

/// Adds `fragment`, then the fragments of any `DO` block in it.
fn push(fragment: Fragment, depth: usize, out: &mut Vec<Fragment>) {
    let parse = SourceFile::parse(&fragment.sql);
    let nested: Vec<ast::Do> = parse
        .tree()
        .stmts()
        .filter_map(|s| match s {
            ast::Stmt::Do(d) => Some(d),
            _ => None,
        })
        .collect();
    let layers = fragment.layers.clone();
    out.push(fragment);
    for block in nested {
        do_block(&block, &layers, depth + 1, out);
    }
}

/// The decoded text of `expr` when it is one string literal and nothing
/// else (`EXECUTE 'ALTER …'`); a string built at run time is not known here.
fn literal_only(expr: &squawk_syntax::SyntaxNode) -> Option<DecodedText> {
    let literal = expr.descendants().find_map(ast::Literal::cast)?;
    let trimmed = expr.text().to_string();
    if trimmed.trim() != literal.syntax().text().to_string().trim() {
        return None;
    }
    literal.decoded_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<(String, String)> {
        let parse = SourceFile::parse(sql);
        fragments(&parse.tree())
            .into_iter()
            .map(|f| {
                let start = f.to_file(0) as usize;
                let at_file = sql[start..start + 5.min(sql.len() - start)].to_owned();
                (f.sql.trim().to_owned(), at_file)
            })
            .collect()
    }

    #[test]
    fn do_statements_and_literal_executes_map_back_to_the_file() {
        let sql = "SELECT 1;\nDO $$\nBEGIN\n  IF true THEN\n    ALTER TABLE t ALTER COLUMN c TYPE int;\n  END IF;\n  EXECUTE 'DROP TABLE ''x''';\n  EXECUTE format('DROP TABLE %I', 'y');\n  PERFORM 1;\nEND $$;\n";
        let got = texts(sql);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "ALTER TABLE t ALTER COLUMN c TYPE int");
        assert_eq!(got[0].1, "ALTER");
        assert_eq!(got[1].0, "DROP TABLE 'x'");
        assert_eq!(got[1].1, "DROP ");
    }

    #[test]
    fn quoted_do_bodies_and_nested_blocks() {
        let sql = "DO 'BEGIN UPDATE t SET a = ''b''; END';";
        let got = texts(sql);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "UPDATE t SET a = 'b'");
        assert_eq!(got[0].1, "UPDAT");

        let sql = "DO $a$ BEGIN EXECUTE $q$DO $$BEGIN DELETE FROM t; END$$$q$; END $a$;";
        let got = texts(sql);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].0, "DELETE FROM t");
        assert_eq!(got[1].1, "DELET");
    }

    #[test]
    fn other_languages_and_function_bodies_are_not_followed() {
        assert!(texts("DO LANGUAGE plperl $$ my $x = 1; $$;").is_empty());
        assert_eq!(
            texts("DO LANGUAGE plpgsql $$ BEGIN DELETE FROM t; END $$;").len(),
            1
        );
        assert!(
            texts("CREATE FUNCTION f() RETURNS void AS $$ BEGIN DELETE FROM t; END $$ LANGUAGE plpgsql;")
                .is_empty()
        );
    }
}
