//! `cargo xtask imports`: finds module import circles in every crate.
//!
//! The rule: inside a crate, the modules' imports form no circle. A module
//! `a` depends on `b` when `a`'s code names a path into `b`
//! (`crate::b::…`, `super::…`, `self::…`, or a child module by its
//! name); a child that names an item *defined* in its parent's file while
//! the parent names the child is a circle too, so shared items live in leaf
//! modules that both import. Test modules (`#[cfg(test)] mod …`) and
//! comments are left out: a test may look anywhere.
//!
//! This reads source text, not the compiler's name resolution, so it sees
//! paths written out and `use` trees (with `{…}` groups), not glob
//! re-exports followed through several modules or names made by macros.
//! That is the point where circles start in practice: a `use super::X` or a
//! `crate::sibling::Y`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One module of one crate, as a path of names from the crate root.
type ModPath = Vec<String>;

/// One reference from a module to another, where it was seen.
#[derive(Debug, Clone)]
struct Edge {
    to: ModPath,
    file: PathBuf,
    line: usize,
}

/// A module circle: the modules in it and one edge for each hop.
#[derive(Debug)]
pub(crate) struct Circle {
    pub(crate) krate: String,
    pub(crate) hops: Vec<String>,
}

/// Every circle in the crates under `root` (each folder with a `Cargo.toml`
/// and a `src/`).
pub(crate) fn circles(root: &Path) -> Result<Vec<Circle>> {
    let mut out = Vec::new();
    let mut crates: Vec<PathBuf> = fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .collect();
    crates.sort();
    for dir in crates {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.extend(crate_circles(&name, &dir.join("src"))?);
    }
    Ok(out)
}

fn crate_circles(krate: &str, src: &Path) -> Result<Vec<Circle>> {
    let mut files = Vec::new();
    collect_rs(src, &mut files)?;
    // Each binary root (main.rs, bin/*.rs) is its own crate; lib.rs too.
    let mut modules: BTreeMap<ModPath, PathBuf> = BTreeMap::new();
    for file in &files {
        if let Some(path) = module_path(src, file) {
            modules.insert(path, file.clone());
        }
    }
    let mut codes: BTreeMap<ModPath, String> = BTreeMap::new();
    for (module, file) in &modules {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        codes.insert(module.clone(), strip_tests_and_comments(&text));
    }
    let items: BTreeMap<ModPath, ModuleItems> = codes
        .iter()
        .map(|(m, code)| (m.clone(), ModuleItems::read(code)))
        .collect();
    let index = Index {
        modules: &modules,
        items: &items,
    };
    let mut edges: BTreeMap<ModPath, Vec<Edge>> = BTreeMap::new();
    for (module, file) in &modules {
        for (line, path) in paths_in(&codes[module]) {
            if let Some(to) = index.resolve(module, &path, 0)
                && &to != module
            {
                edges.entry(module.clone()).or_default().push(Edge {
                    to,
                    file: file.clone(),
                    line,
                });
            }
        }
    }
    let mut out = Vec::new();
    for component in strongly_connected(&modules.keys().cloned().collect::<Vec<_>>(), &edges) {
        if component.len() < 2 {
            continue;
        }
        let members: BTreeSet<&ModPath> = component.iter().collect();
        let mut hops = Vec::new();
        for from in &component {
            let mut seen = BTreeSet::new();
            for edge in edges.get(from).into_iter().flatten() {
                if members.contains(&edge.to) && seen.insert(edge.to.clone()) {
                    hops.push(format!(
                        "{} -> {} ({}:{})",
                        show(from),
                        show(&edge.to),
                        edge.file.display(),
                        edge.line
                    ));
                }
            }
        }
        out.push(Circle {
            krate: krate.to_owned(),
            hops,
        });
    }
    Ok(out)
}

fn show(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        format!("crate::{}", path.join("::"))
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `src/lib.rs` -> `[]`, `src/a.rs` and `src/a/mod.rs` -> `[a]`,
/// `src/a/b.rs` -> `[a, b]`; binaries (`main.rs`, `bin/`) are left out.
fn module_path(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main.rs"] {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if !(stem == "mod" || (parts.is_empty() && stem == "lib")) {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// Whether `rest` starts with an attribute that compiles the next item only
/// into tests: `#[cfg(test)]`, or `#[cfg(all(test, …))]` (test code for one
/// platform or feature).
fn is_test_only_attribute(rest: &str) -> bool {
    let Some(inner) = rest.strip_prefix("#[cfg(") else {
        return false;
    };
    let inner: String = inner
        .chars()
        .take_while(|c| *c != ']')
        .filter(|c| !c.is_whitespace())
        .collect();
    inner == "test)" || inner.starts_with("all(test,")
}

/// The code with comments, string contents and `#[cfg(test)]` items
/// blanked out, line breaks kept so line numbers stay true.
fn strip_tests_and_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(text.len(), |n| i + n);
            i = end;
            continue;
        }
        if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(text.len(), |n| i + n + 2);
            out.extend(text[i..end].chars().filter(|c| *c == '\n'));
            i = end;
            continue;
        }
        if rest.starts_with('"') {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(bytes.len());
            out.push('"');
            out.extend(text[i + 1..end].chars().filter(|c| *c == '\n'));
            i = end;
            continue;
        }
        if is_test_only_attribute(rest) {
            // Skip the attribute and the item after it, through its block.
            if let Some(open) = rest.find(['{', ';']) {
                let mut j = i + open;
                if bytes[j] == b'{' {
                    let mut depth = 0usize;
                    while j < bytes.len() {
                        match bytes[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                }
                let end = (j + 1).min(bytes.len());
                out.extend(text[i..end].chars().filter(|c| *c == '\n'));
                i = end;
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Every path the code names, with its line: `use` trees expanded, and
/// `a::b::c` paths elsewhere.
fn paths_in(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    // `use` declarations, through their `;`.
    let mut search = 0;
    let mut used_spans = Vec::new();
    while let Some(found) = find_word(code, "use", search) {
        let Some(end) = code[found..].find(';').map(|n| found + n) else {
            break;
        };
        let tree = &code[found + 3..end];
        let mut paths = Vec::new();
        expand_use(&[], tree, &mut paths);
        for p in paths {
            out.push((line_of(found), p));
        }
        used_spans.push((found, end));
        search = end;
    }
    // Paths written in code: identifier (`::` identifier)+.
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if used_spans.iter().any(|(s, e)| i >= *s && i < *e) {
            i += 1;
            continue;
        }
        let starts_ident = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':'));
        if !starts_ident {
            i += 1;
            continue;
        }
        let start = i;
        let mut segments = Vec::new();
        loop {
            let s = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            segments.push(code[s..i].to_owned());
            if code[i..].starts_with("::")
                && code[i + 2..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            {
                i += 2;
            } else {
                break;
            }
        }
        if segments.len() > 1 {
            out.push((line_of(start), segments));
        }
    }
    out
}

fn find_word(code: &str, word: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(n) = code[at..].find(word) {
        let i = at + n;
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(i);
        }
        at = i + word.len();
    }
    None
}

/// Expands one `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand_use(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = split_path(&tree[..open]);
        let mut base = prefix.to_vec();
        base.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        for part in split_top_level(inner) {
            expand_use(&base, part, out);
        }
        return;
    }
    let path = tree.split(" as ").next().unwrap_or(tree);
    let mut full = prefix.to_vec();
    full.extend(split_path(path));
    if !full.is_empty() {
        out.push(full);
    }
}

fn split_path(text: &str) -> Vec<String> {
    text.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "*")
        .map(str::to_owned)
        .collect()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// What one module's own text declares: the items it defines, and the
/// names it imports (`use … as name` included) with their paths.
#[derive(Debug, Default)]
struct ModuleItems {
    defined: BTreeSet<String>,
    imported: BTreeMap<String, Vec<String>>,
}

impl ModuleItems {
    fn read(code: &str) -> ModuleItems {
        let mut out = ModuleItems::default();
        let words: Vec<&str> = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '!'))
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            if matches!(
                pair[0],
                "struct"
                    | "enum"
                    | "fn"
                    | "trait"
                    | "type"
                    | "const"
                    | "static"
                    | "union"
                    | "macro_rules!"
            ) {
                out.defined.insert(pair[1].to_owned());
            }
        }
        let mut search = 0;
        while let Some(found) = find_word(code, "use", search) {
            let Some(end) = code[found..].find(';').map(|n| found + n) else {
                break;
            };
            let mut named = Vec::new();
            expand_use_named(&[], &code[found + 3..end], &mut named);
            for (name, path) in named {
                out.imported.insert(name, path);
            }
            search = end;
        }
        out
    }
}

/// Like [`expand_use`], keeping the name each path is imported under.
fn expand_use_named(prefix: &[String], tree: &str, out: &mut Vec<(String, Vec<String>)>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let mut base = prefix.to_vec();
        base.extend(split_path(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        for part in split_top_level(inner) {
            expand_use_named(&base, part, out);
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p, Some(a.trim())),
        None => (tree, None),
    };
    let mut full = prefix.to_vec();
    full.extend(split_path(path));
    let name = alias
        .or_else(|| full.last().map(String::as_str))
        .map(str::to_owned);
    if let Some(name) = name
        && name != "self"
        && name != "_"
    {
        out.push((name, full));
    }
}

/// The modules of one crate and what each declares.
struct Index<'a> {
    modules: &'a BTreeMap<ModPath, PathBuf>,
    items: &'a BTreeMap<ModPath, ModuleItems>,
}

impl Index<'_> {
    /// The module a path really points into, seen from `from`: an item a
    /// module only re-exports is followed to where it is defined. `None`
    /// for paths into other crates, the standard library, or local items.
    fn resolve(&self, from: &ModPath, path: &[String], depth: usize) -> Option<ModPath> {
        let mut segments = path.iter().peekable();
        let mut at: ModPath = match segments.peek().map(|s| s.as_str()) {
            Some("crate") => {
                segments.next();
                Vec::new()
            }
            Some("self") => {
                segments.next();
                from.clone()
            }
            Some("super") => {
                let mut at = from.clone();
                while segments.peek().is_some_and(|s| *s == "super") {
                    segments.next();
                    at.pop();
                }
                at
            }
            Some(first) => {
                let mut child = from.clone();
                child.push(first.to_owned());
                if !self.modules.contains_key(&child) {
                    return None;
                }
                from.clone()
            }
            None => return None,
        };
        // Walk down as far as the names are modules: the next is an item.
        let mut item = None;
        for segment in segments {
            let mut next = at.clone();
            next.push(segment.clone());
            if self.modules.contains_key(&next) {
                at = next;
            } else {
                item = Some(segment.clone());
                break;
            }
        }
        // An item `at` imports rather than defines lives where it came from.
        if let (Some(item), Some(items)) = (item, self.items.get(&at))
            && depth < 8
            && !items.defined.contains(&item)
            && let Some(source) = items.imported.get(&item)
        {
            // `None`: it came from another crate, not from here.
            return self.resolve(&at, source, depth + 1);
        }
        Some(at)
    }
}

/// Tarjan's strongly connected components, iteratively.
fn strongly_connected(
    nodes: &[ModPath],
    edges: &BTreeMap<ModPath, Vec<Edge>>,
) -> Vec<Vec<ModPath>> {
    let index_of: BTreeMap<&ModPath, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n, i)).collect();
    let succ: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let set: BTreeSet<usize> = edges
                .get(n)
                .into_iter()
                .flatten()
                .filter_map(|e| index_of.get(&e.to).copied())
                .collect();
            set.into_iter().collect()
        })
        .collect();
    let n = nodes.len();
    let (mut index, mut low) = (vec![usize::MAX; n], vec![0; n]);
    let mut on_stack = vec![false; n];
    let (mut stack, mut out, mut next) = (Vec::new(), Vec::new(), 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some((v, child)) = work.pop() {
            if child == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = succ[v].get(child) {
                work.push((v, child + 1));
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(nodes[w].clone());
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(list: &[&[&str]]) -> BTreeMap<ModPath, PathBuf> {
        list.iter()
            .map(|m| (m.iter().map(|s| s.to_string()).collect(), PathBuf::new()))
            .collect()
    }

    #[test]
    fn use_trees_expand() {
        let mut out = Vec::new();
        expand_use(&[], " crate::a::{B, c::{D, e as F}, self}", &mut out);
        let joined: Vec<String> = out.iter().map(|p| p.join("::")).collect();
        assert_eq!(
            joined,
            [
                "crate::a::B",
                "crate::a::c::D",
                "crate::a::c::e",
                "crate::a::self"
            ]
        );
    }

    #[test]
    fn paths_resolve_to_the_module_that_defines_the_item() {
        let m = modules(&[&[], &["a"], &["a", "b"], &["c"]]);
        let items: BTreeMap<ModPath, ModuleItems> = [
            (
                vec!["a".to_owned()],
                ModuleItems::read("pub struct X;\npub use crate::c::{Y as Z};\n"),
            ),
            (vec!["c".to_owned()], ModuleItems::read("pub struct Y;\n")),
        ]
        .into_iter()
        .collect();
        let index = Index {
            modules: &m,
            items: &items,
        };
        let from: ModPath = vec!["a".into(), "b".into()];
        let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            index.resolve(&from, &p("super::X"), 0),
            Some(vec!["a".into()])
        );
        assert_eq!(
            index.resolve(&from, &p("super::Z"), 0),
            Some(vec!["c".into()]),
            "re-export followed"
        );
        assert_eq!(
            index.resolve(&from, &p("crate::c::Y"), 0),
            Some(vec!["c".into()])
        );
        assert_eq!(
            index.resolve(&from, &p("super::super::c::Y"), 0),
            Some(vec!["c".into()])
        );
        assert_eq!(
            index.resolve(&vec!["a".into()], &p("b::Z"), 0),
            Some(from.clone())
        );
        assert_eq!(index.resolve(&from, &p("std::fmt::Debug"), 0), None);
    }

    #[test]
    fn tests_and_comments_are_blanked_with_lines_kept() {
        let text = "use a::B; // crate::x\n#[cfg(test)]\nmod tests {\n use super::*;\n}\nfn f() { crate::y::z(); }\n";
        let code = strip_tests_and_comments(text);
        assert_eq!(code.matches('\n').count(), text.matches('\n').count());
        assert!(!code.contains("crate::x") && !code.contains("super"));
        let paths: Vec<(usize, String)> = paths_in(&code)
            .into_iter()
            .map(|(l, p)| (l, p.join("::")))
            .collect();
        assert_eq!(
            paths,
            [(1, "a::B".to_owned()), (6, "crate::y::z".to_owned())]
        );
    }

    #[test]
    fn platform_test_modules_are_blanked_and_other_cfgs_are_kept() {
        let text = "#[cfg(all(test, target_os = \"linux\"))]\nmod tests {\n use super::*;\n}\n\
                    #[cfg( all( test , unix ))]\nmod more { use super::*; }\n\
                    #[cfg(any(test, feature = \"x\"))]\nuse crate::kept;\n\
                    #[cfg(unix)]\nuse crate::also_kept;\n";
        let code = strip_tests_and_comments(text);
        assert!(!code.contains("super"), "{code}");
        let paths: Vec<String> = paths_in(&code)
            .into_iter()
            .map(|(_, p)| p.join("::"))
            .collect();
        assert_eq!(paths, ["crate::kept", "crate::also_kept"]);
    }

    #[test]
    fn a_child_naming_its_parent_is_a_circle() {
        let dir = tempdir();
        let src = dir.join("src");
        fs::create_dir_all(src.join("p")).unwrap();
        fs::write(src.join("lib.rs"), "mod p;\n").unwrap();
        fs::write(
            src.join("p/mod.rs"),
            "mod c;\nmod leaf;\npub use c::Thing;\npub use leaf::L;\npub struct Shared;\n",
        )
        .unwrap();
        fs::write(
            src.join("p/c.rs"),
            "use super::Shared;\nuse super::L;\npub struct Thing;\n",
        )
        .unwrap();
        fs::write(src.join("p/leaf.rs"), "pub struct L;\n").unwrap();
        let found = crate_circles("demo", &src).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].hops.len(), 2, "{found:?}");
        // Naming a re-export is not a circle; moving Shared into the leaf
        // breaks it.
        fs::write(
            src.join("p/mod.rs"),
            "mod c;\nmod leaf;\npub use c::Thing;\npub use leaf::{L, Shared};\n",
        )
        .unwrap();
        fs::write(
            src.join("p/c.rs"),
            "use super::{L, Shared};\npub struct Thing;\n",
        )
        .unwrap();
        assert!(crate_circles("demo", &src).unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-imports-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
