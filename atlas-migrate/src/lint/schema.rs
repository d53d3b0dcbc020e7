//! What the lint knows of the schema: the tables earlier migrations
//! created and the declared types of their columns, so it can tell a
//! column type change PostgreSQL makes without a rewrite from one that
//! rewrites the table.

use squawk_syntax::SyntaxNode;
use squawk_syntax::ast::{self, AstNode};

/// A table name as PostgreSQL resolves it: unquoted parts folded to lower
/// case, quoted parts kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// Reads a (possibly schema-qualified, possibly quoted) table name from
    /// the text of a name node; `ONLY` and a trailing `*` are dropped.
    pub(crate) fn from_node(node: &SyntaxNode) -> Option<Self> {
        let text = node.text().to_string();
        let text = text.trim();
        let text = strip_keyword(text, "only");
        let text = text.trim_end_matches('*').trim();
        let mut parts = split_identifiers(text)?;
        let name = parts.pop()?;
        let schema = parts.pop();
        Some(TableName { schema, name })
    }

    /// Whether the two names may denote one table. An unqualified name
    /// resolves through the search path, which the lint does not know, so
    /// it matches that name in any schema.
    pub(crate) fn matches(&self, other: &TableName) -> bool {
        self.name == other.name
            && (self.schema.is_none() || other.schema.is_none() || self.schema == other.schema)
    }
}

fn strip_keyword<'a>(text: &'a str, keyword: &str) -> &'a str {
    match text.get(..keyword.len()) {
        Some(head)
            if head.eq_ignore_ascii_case(keyword)
                && text[keyword.len()..].starts_with(char::is_whitespace) =>
        {
            text[keyword.len()..].trim_start()
        }
        _ => text,
    }
}

/// `a."B".c` → `["a", "B", "c"]`; `None` for text that is no dotted name.
fn split_identifiers(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if c.is_alphanumeric() || *c == '_' || *c == '$' {
                    part.extend(c.to_lowercase());
                    chars.next();
                } else {
                    break;
                }
            }
            if part.is_empty() {
                return None;
            }
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// The relation a statement creates (a table, a table from a query, a
/// materialized view) and whether it said `IF NOT EXISTS`.
pub(crate) fn created_relation(stmt: &ast::Stmt) -> Option<(TableName, bool)> {
    let (name, if_not_exists) = match stmt {
        ast::Stmt::CreateTable(c) => (
            c.table_name().map(|n| n.syntax().clone()),
            c.if_not_exists().is_some(),
        ),
        ast::Stmt::CreateTableAs(c) => (
            c.table_name().map(|n| n.syntax().clone()),
            c.if_not_exists().is_some(),
        ),
        ast::Stmt::CreateMaterializedView(c) => (
            c.view().map(|n| n.syntax().clone()),
            c.if_not_exists().is_some(),
        ),
        _ => return None,
    };
    Some((TableName::from_node(&name?)?, if_not_exists))
}

/// A column name from the text of a column name node.
pub(crate) fn column_name(node: &SyntaxNode) -> Option<String> {
    let mut parts = split_identifiers(node.text().to_string().trim())?;
    parts.pop()
}

/// The few column types whose changes the lint can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    /// `varchar(n)` / `character varying(n)`.
    Varchar(u32),
    /// `varchar` without a length.
    UnboundedVarchar,
    /// `text`.
    Text,
    /// Anything else, including arrays and domains.
    Other,
}

impl ColumnType {
    pub(crate) fn from_node(node: &SyntaxNode) -> Self {
        let text = node.text().to_string().to_ascii_lowercase();
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = text.strip_prefix("pg_catalog.").unwrap_or(&text);
        let rest = if let Some(rest) = text.strip_prefix("character varying") {
            rest
        } else if let Some(rest) = text.strip_prefix("varchar") {
            rest
        } else if text == "text" {
            return ColumnType::Text;
        } else {
            return ColumnType::Other;
        };
        let rest = rest.trim();
        if rest.is_empty() {
            return ColumnType::UnboundedVarchar;
        }
        let Some(inner) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
            return ColumnType::Other;
        };
        inner
            .trim()
            .parse::<u32>()
            .map_or(ColumnType::Other, ColumnType::Varchar)
    }

    /// Whether PostgreSQL changes a column from `self` to `to` by updating
    /// the catalog only: no table rewrite, no index rebuild, no scan. True
    /// for widening a `varchar` (or dropping its limit, or making it `text`)
    /// and for `varchar` → `text`; a narrowing, a limit added to `text`,
    /// and every change of an unknown type rewrite or scan the table.
    pub(crate) fn widens_to(self, to: ColumnType) -> bool {
        use ColumnType::*;
        match (self, to) {
            (Varchar(n), Varchar(m)) => m >= n,
            (Varchar(_), UnboundedVarchar | Text) => true,
            (UnboundedVarchar, UnboundedVarchar | Text) => true,
            (Text, Text) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Table {
    name: TableName,
    columns: Vec<(String, ColumnType)>,
}

/// Tables and column types built up statement by statement, file by file.
#[derive(Debug, Clone, Default)]
pub(crate) struct SchemaModel {
    tables: Vec<Table>,
}

impl SchemaModel {
    fn table_mut(&mut self, name: &TableName) -> Option<&mut Table> {
        // The latest definition wins when an unqualified name is ambiguous.
        self.tables.iter_mut().rev().find(|t| t.name.matches(name))
    }

    /// Whether a table of that name is known.
    pub(crate) fn knows(&self, name: &TableName) -> bool {
        self.tables.iter().any(|t| t.name.matches(name))
    }

    /// The declared type of `table.column`, if known.
    pub(crate) fn column_type(&self, table: &TableName, column: &str) -> Option<ColumnType> {
        let table = self.tables.iter().rev().find(|t| t.name.matches(table))?;
        table
            .columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, ty)| *ty)
    }

    /// Applies the schema change of one statement.
    pub(crate) fn apply(&mut self, stmt: &ast::Stmt) {
        match stmt {
            ast::Stmt::CreateTable(_)
            | ast::Stmt::CreateTableAs(_)
            | ast::Stmt::CreateMaterializedView(_) => {
                let Some((name, if_not_exists)) = created_relation(stmt) else {
                    return;
                };
                if if_not_exists && self.knows(&name) {
                    return;
                }
                let mut columns = Vec::new();
                let args = match stmt {
                    ast::Stmt::CreateTable(create) => create.table_arg_list(),
                    _ => None,
                };
                if let Some(args) = args {
                    for column in args.syntax().children().filter_map(ast::Column::cast) {
                        let (Some(col), Some(ty)) = (column.name(), column.ty()) else {
                            continue;
                        };
                        if let Some(col) = column_name(col.syntax()) {
                            columns.push((col, ColumnType::from_node(ty.syntax())));
                        }
                    }
                }
                self.tables.retain(|t| t.name != name);
                self.tables.push(Table { name, columns });
            }
            ast::Stmt::DropTable(drop) => {
                for name in drop.table_name_refs() {
                    if let Some(name) = TableName::from_node(name.syntax()) {
                        self.tables.retain(|t| !t.name.matches(&name));
                    }
                }
            }
            ast::Stmt::AlterTable(alter) => {
                let Some(name) = alter
                    .table_relation_name()
                    .and_then(|n| TableName::from_node(n.syntax()))
                else {
                    return;
                };
                for action in alter.actions() {
                    self.alter(&name, &action);
                }
            }
            _ => {}
        }
    }

    fn alter(&mut self, name: &TableName, action: &ast::AlterTableAction) {
        let Some(table) = self.table_mut(name) else {
            return;
        };
        match action {
            ast::AlterTableAction::AddColumn(add) => {
                let (Some(col), Some(ty)) = (add.column_name(), add.ty()) else {
                    return;
                };
                if let Some(col) = column_name(col.syntax())
                    && !table.columns.iter().any(|(c, _)| *c == col)
                {
                    table
                        .columns
                        .push((col, ColumnType::from_node(ty.syntax())));
                }
            }
            ast::AlterTableAction::DropColumn(drop) => {
                if let Some(col) = drop.column_name_ref().and_then(|c| column_name(c.syntax())) {
                    table.columns.retain(|(c, _)| *c != col);
                }
            }
            ast::AlterTableAction::RenameColumn(rename) => {
                let from = rename
                    .column_name_ref()
                    .and_then(|c| column_name(c.syntax()));
                let to = rename.column_name().and_then(|c| column_name(c.syntax()));
                if let (Some(from), Some(to)) = (from, to) {
                    for (c, _) in table.columns.iter_mut().filter(|(c, _)| *c == from) {
                        *c = to.clone();
                    }
                }
            }
            ast::AlterTableAction::AlterColumn(alter) => {
                let (Some(col), Some(ast::AlterColumnOption::SetType(set))) = (
                    alter
                        .column_name_ref()
                        .and_then(|c| column_name(c.syntax())),
                    alter.option(),
                ) else {
                    return;
                };
                let ty = set
                    .ty()
                    .map_or(ColumnType::Other, |t| ColumnType::from_node(t.syntax()));
                for (_, old) in table.columns.iter_mut().filter(|(c, _)| *c == col) {
                    *old = ty;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squawk_syntax::SourceFile;

    fn model(sql: &str) -> SchemaModel {
        let mut m = SchemaModel::default();
        for stmt in SourceFile::parse(sql).tree().stmts() {
            m.apply(&stmt);
        }
        m
    }

    fn name(s: &str) -> TableName {
        let mut parts = split_identifiers(s).unwrap();
        let name = parts.pop().unwrap();
        TableName {
            schema: parts.pop(),
            name,
        }
    }

    #[test]
    fn names_fold_case_unless_quoted() {
        assert_eq!(
            split_identifiers("App.\"Users\"").unwrap(),
            ["app", "Users"]
        );
        assert_eq!(split_identifiers("\"a\"\"b\"").unwrap(), ["a\"b"]);
        assert!(split_identifiers("a b").is_none());
        assert!(name("users").matches(&name("public.users")));
        assert!(name("public.users").matches(&name("users")));
        assert!(!name("a.users").matches(&name("b.users")));
        assert!(!name("Users").matches(&name("\"Users\"")));
    }

    #[test]
    fn types_classify() {
        let ty = |s: &str| {
            let sql = format!("CREATE TABLE t (c {s});");
            model(&sql).column_type(&name("t"), "c").unwrap()
        };
        assert_eq!(ty("varchar(10)"), ColumnType::Varchar(10));
        assert_eq!(ty("CHARACTER  VARYING ( 20 )"), ColumnType::Varchar(20));
        assert_eq!(ty("varchar"), ColumnType::UnboundedVarchar);
        assert_eq!(ty("TEXT"), ColumnType::Text);
        assert_eq!(ty("varchar(10)[]"), ColumnType::Other);
        assert_eq!(ty("int"), ColumnType::Other);
        assert!(ColumnType::Varchar(10).widens_to(ColumnType::Varchar(20)));
        assert!(!ColumnType::Varchar(20).widens_to(ColumnType::Varchar(10)));
        assert!(ColumnType::Varchar(20).widens_to(ColumnType::Text));
        assert!(ColumnType::UnboundedVarchar.widens_to(ColumnType::Text));
        assert!(!ColumnType::Text.widens_to(ColumnType::Varchar(10)));
        assert!(!ColumnType::Other.widens_to(ColumnType::Text));
    }

    #[test]
    fn the_model_follows_ddl() {
        let m = model(
            "CREATE TABLE app.t (a varchar(5), b int);
             ALTER TABLE app.t ADD COLUMN c text, ALTER COLUMN a TYPE varchar(9);
             ALTER TABLE t RENAME COLUMN b TO bb;
             ALTER TABLE ONLY t DROP COLUMN c;
             CREATE TABLE gone (x int); DROP TABLE gone;",
        );
        assert_eq!(m.column_type(&name("t"), "a"), Some(ColumnType::Varchar(9)));
        assert_eq!(m.column_type(&name("app.t"), "bb"), Some(ColumnType::Other));
        assert_eq!(m.column_type(&name("t"), "c"), None);
        assert!(!m.knows(&name("gone")));
        assert!(!m.knows(&name("other.t")));
    }
}
