//! The layers of `windi-shared` (see the crate docs), checked on every test run.
//!
//! Each file of `src/` belongs to the layer its path starts with (`src/store/chats.rs` to
//! `store`, `src/config.rs` to `config`). Every `crate::…` and `super::…` path in its code (doc
//! comments, comments, strings and `#[cfg(test)]` modules left out) is an import of the module
//! it names. The check fails, naming the file, the line and the import, when
//!
//! - a layer imports a layer it may not (one above it, or one beside it),
//! - the modules import each other in a circle (two that import each other, or a longer loop),
//! - a layer below the HTTP edge names axum, or the domain names I/O crates (sqlx outside its
//!   derive attributes, tokio, async-nats).
//!
//! It reads the source text instead of asking the compiler, so it needs nothing but the files,
//! and it is small enough to trust: [`the_check_names_an_upward_import_a_circle_and_axum`]
//! runs it on made-up files that break each rule.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Each layer and the layers it may import. `lib.rs`, the crate's face, declares the layers and
/// re-exports from them, and belongs to none.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("store", &["domain"]),
    ("events", &["domain"]),
    ("config", &["domain"]),
    ("blobs", &["domain"]),
    ("service", &["domain", "store", "events", "config", "blobs"]),
    (
        "http",
        &["domain", "store", "events", "config", "blobs", "service"],
    ),
];

/// The HTTP stack: only the edge names it.
const HTTP_STACK: &[&str] = &["axum", "lambda_http", "tower_http", "utoipa_axum"];

/// Crates that do I/O: the domain names none.
const IO: &[&str] = &["sqlx", "tokio", "async_nats"];

/// The crates `layer` must not name.
fn forbidden_for(layer: &str) -> Vec<&'static str> {
    match layer {
        "http" | "" => Vec::new(),
        "domain" => HTTP_STACK.iter().chain(IO).copied().collect(),
        _ => HTTP_STACK.to_vec(),
    }
}

#[test]
fn every_layer_imports_only_the_layers_below_it_and_no_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    assert!(
        files.len() > 20,
        "read only {} files of {src:?}",
        files.len()
    );
    let problems = check(&files);
    assert!(
        problems.is_empty(),
        "the layers of shared/ are broken (see shared/src/lib.rs):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_names_an_upward_import_a_circle_and_axum() {
    let files = [
        (
            "lib.rs",
            "pub mod domain; pub use service::state::AppState;",
        ),
        ("domain/mod.rs", "pub mod error; pub mod model;"),
        ("domain/error.rs", "pub enum Error {}"),
        // Upward, through the root's re-export, and hidden in a group.
        (
            "domain/model.rs",
            "use crate::{domain::error::Error, AppState};\n#[derive(sqlx::FromRow)] struct A;",
        ),
        ("store/mod.rs", "pub mod chats;"),
        // Beside: the store may not read the settings.
        (
            "store/chats.rs",
            "fn f() { let _ = crate::config::in_lambda(); }",
        ),
        ("config.rs", "use crate::domain::model;"),
        ("service/mod.rs", "pub mod state; pub mod write;"),
        // A circle inside a layer, one side through `super`.
        (
            "service/state.rs",
            "use super::write::Gates;\nuse axum::Router;",
        ),
        (
            "service/write.rs",
            "use crate::service::state::AppState;\n\
             /// Not an import: [`crate::http::runtime`].\n\
             #[cfg(test)]\nmod tests { use crate::http::runtime; }",
        ),
        ("http/mod.rs", "pub mod runtime;"),
        (
            "http/runtime.rs",
            "use crate::{service::{state as s, write::*}, store::{self, chats}};",
        ),
    ]
    .map(|(path, source)| (path.to_owned(), source.to_owned()));
    let problems = check(&files).join("\n");
    for expected in [
        "domain/model.rs:1: domain imports service (`crate::AppState`, service::state)",
        "store/chats.rs:1: store imports config (`crate::config::in_lambda`, config)",
        "circle: service::state -> service::write -> service::state \
         (service/state.rs:1 `super::write::Gates`; service/write.rs:1 `crate::service::state::AppState`)",
        "service/state.rs:2: service names the crate `axum`",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in:\n{problems}"
        );
    }
    assert_eq!(problems.lines().count(), 4, "{problems}");
}

/// Every `.rs` file under `dir`, as (path relative to `src`, source).
fn read_tree(src: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|entry| entry.unwrap_or_else(|e| panic!("{dir:?}: {e}")).path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(src, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src).unwrap_or(&path);
            let source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            files.push((relative.to_string_lossy().replace('\\', "/"), source));
        }
    }
}

/// One import: who, where, what was written, and the module it reaches.
#[derive(Debug, Clone)]
struct Import {
    file: String,
    line: usize,
    written: String,
    to: String,
}

/// Everything wrong with `files` (path relative to `src`, source), one line each.
fn check(files: &[(String, String)]) -> Vec<String> {
    let modules: BTreeSet<String> = files.iter().map(|(path, _)| module_of(path)).collect();
    let aliases = root_aliases(files);
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, Vec<Import>> = BTreeMap::new();
    for (path, source) in files {
        let from = module_of(path);
        let code = code_only(source);
        for (line, written, segments) in paths(&code, &from) {
            let Some(to) = place(&segments, &modules, &aliases) else {
                problems.push(format!(
                    "{path}:{line}: cannot place `{written}` in a module"
                ));
                continue;
            };
            if to == from || from.is_empty() {
                continue;
            }
            let (from_layer, to_layer) = (layer(&from), layer(&to));
            if from_layer != to_layer && !may_import(from_layer, to_layer) {
                problems.push(format!(
                    "{path}:{line}: {from_layer} imports {to_layer} (`{written}`, {to})"
                ));
            }
            graph.entry(from.clone()).or_default().push(Import {
                file: path.clone(),
                line,
                written,
                to,
            });
        }
        for (line, name) in forbidden_crates(&code, layer(&from)) {
            problems.push(format!(
                "{path}:{line}: {} names the crate `{name}`",
                layer(&from)
            ));
        }
    }
    problems.extend(circles(&graph));
    problems
}

/// `store/chats.rs` → `store::chats`, `store/mod.rs` → `store`, `lib.rs` → `` (the root).
fn module_of(path: &str) -> String {
    let path = path.trim_end_matches(".rs");
    let path = path.strip_suffix("/mod").unwrap_or(path);
    if path == "lib" {
        String::new()
    } else {
        path.replace('/', "::")
    }
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

fn may_import(from: &str, to: &str) -> bool {
    LAYERS
        .iter()
        .any(|(layer, below)| *layer == from && below.contains(&to))
}

/// What the root re-exports: `AppState` → `service::state::AppState`.
fn root_aliases(files: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut aliases = BTreeMap::new();
    for (_, source) in files.iter().filter(|(path, _)| path == "lib.rs") {
        let code = code_only(source);
        let mut rest = code.as_str();
        while let Some(at) = rest.find("pub use ") {
            rest = &rest[at + "pub use ".len()..];
            let mut trees = Vec::new();
            use_tree(rest, Vec::new(), &mut trees);
            for tree in trees {
                if let Some(name) = tree.last() {
                    aliases.insert(name.clone(), tree.clone());
                }
            }
        }
    }
    aliases
}

/// The module a path reaches: the longest prefix that is a module, through the root's
/// re-exports; `None` for a path that reaches none.
fn place(
    segments: &[String],
    modules: &BTreeSet<String>,
    aliases: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    if let Some(target) = segments.first().and_then(|first| aliases.get(first)) {
        return place(target, modules, &BTreeMap::new());
    }
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|prefix| modules.contains(prefix))
}

/// Every `crate::…` and `super::…` path in `code`, as (line, as written, absolute segments).
/// Groups (`crate::{a, b::{c, d}}`) give one path each.
fn paths(code: &str, module: &str) -> Vec<(usize, String, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let starts_word = at == 0 || (!is_ident(bytes[at - 1]) && bytes[at - 1] != b':');
        let (base, len): (Vec<String>, usize) = if starts_word && code[at..].starts_with("crate::")
        {
            (Vec::new(), "crate::".len())
        } else if starts_word && code[at..].starts_with("super::") {
            let mut base: Vec<String> = module.split("::").map(str::to_owned).collect();
            let mut len = 0;
            while code[at + len..].starts_with("super::") {
                base.pop();
                len += "super::".len();
            }
            (base.into_iter().filter(|s| !s.is_empty()).collect(), len)
        } else {
            at += 1;
            continue;
        };
        let line = code[..at].matches('\n').count() + 1;
        let mut trees = Vec::new();
        let prefix = &code[at..at + len];
        let written_from = base.len();
        let consumed = use_tree(&code[at + len..], base, &mut trees);
        for tree in trees {
            let written = format!("{prefix}{}", tree[written_from..].join("::"));
            found.push((line, written, tree));
        }
        at += len + consumed.max(1);
    }
    found
}

/// Parses one use tree at the start of `text` (`a::b`, `a::{b, c::d}`, `a as b`, `a::*`),
/// pushing each full path (after `prefix`) to `out`; answers how many bytes it read.
fn use_tree(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut path = prefix;
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            at += 1;
            loop {
                let read = use_tree(&text[at..], path.clone(), out);
                at += read;
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (at + 1).min(bytes.len());
                }
                if read == 0 {
                    at += 1; // not a path: step over it rather than loop
                }
            }
        }
        let start = at;
        while at < bytes.len() && is_ident(bytes[at]) {
            at += 1;
        }
        match &text[start..at] {
            "" | "self" => {}
            ident => path.push(ident.to_owned()),
        }
        if text[at..].starts_with("::") && !text[at + 2..].starts_with('<') {
            at += 2;
            continue;
        }
        if text[at..].starts_with('*') {
            at += 1;
        }
        // `a as b`: the import is `a`; step over the new name.
        let after = text[at..].trim_start();
        if let Some(renamed) = after.strip_prefix("as ") {
            let name = renamed.trim_start();
            let name_len = name.bytes().take_while(|&b| is_ident(b)).count();
            at = text.len() - name.len() + name_len;
        }
        out.push(path);
        return at;
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Lines of `code` naming a crate `layer` must not name, as (line, crate). Attributes are left
/// out: the domain's types keep their `#[derive(sqlx::FromRow)]`, which does no I/O.
fn forbidden_crates(code: &str, layer: &str) -> Vec<(usize, String)> {
    let names = forbidden_for(layer);
    let code = without_attributes(code);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for name in names.iter() {
            let named = line.match_indices(name).any(|(at, _)| {
                let head = &line[..at];
                // A segment of another path (`other::axum`) or of a longer name (`my_axum`)
                // is not the crate; `axum::…`, `::axum::…` and `use axum;` are.
                let in_a_path = head
                    .strip_suffix("::")
                    .is_some_and(|h| h.bytes().last().is_some_and(is_ident));
                let in_a_name = head.bytes().last().is_some_and(is_ident);
                let after = &line[at + name.len()..];
                !in_a_path && !in_a_name && (after.starts_with("::") || after.starts_with(';'))
            });
            if named {
                found.push((n + 1, (*name).to_owned()));
            }
        }
    }
    found
}

/// `code` with every `#[...]` blanked (newlines kept, so line numbers stay).
fn without_attributes(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[") {
        out.push_str(&rest[..at]);
        let end = closing(rest, at + 1).unwrap_or(rest.len() - 1);
        out.extend(
            rest[at..=end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The index of the bracket closing the one at `open` (`(`, `[` or `{`).
fn closing(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in text.bytes().enumerate().skip(open) {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `source` with comments (doc comments too), string and char literals, and `#[cfg(test)]`
/// modules blanked; newlines are kept, so line numbers stay.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let at = |j: usize| chars.get(j).copied().unwrap_or('\0');
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        if at(i) == '/' && at(i + 1) == '/' {
            while i < chars.len() && at(i) != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if at(i) == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '#' | '"')))
            && !(i > 0 && (at(i - 1).is_alphanumeric() || at(i - 1) == '_'))
        {
            // A raw string: r"…", r#"…"#.
            let hashes = (1..).take_while(|&n| at(i + n) == '#').count();
            i += 2 + hashes;
            while i < chars.len() && !(at(i) == '"' && (1..=hashes).all(|n| at(i + n) == '#')) {
                i += 1;
            }
            i += 1 + hashes;
        } else if at(i) == '"' {
            i += 1;
            while i < chars.len() && at(i) != '"' {
                i += if at(i) == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if at(i) == '\'' && (at(i + 2) == '\'' || (at(i + 1) == '\\' && at(i + 3) == '\'')) {
            // A char literal ('a', '\n'); a lifetime ('a) has no closing quote.
            i += if at(i + 1) == '\\' { 4 } else { 3 };
        } else {
            out.push(at(i));
            i += 1;
            continue;
        }
        let end = i.min(chars.len());
        out.extend(chars[start..end].iter().map(|&c| blank(c)));
        i = end;
    }
    without_test_modules(&out)
}

/// `code` with each `#[cfg(test)] mod name { ... }` blanked.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(found) = out[from..].find("#[cfg(test)]") {
        let at = from + found;
        // Past any other attributes of the same item.
        let mut after = out[at + "#[cfg(test)]".len()..].trim_start();
        while after.starts_with("#[") {
            let end = closing(after, 1).unwrap_or(after.len() - 1);
            after = after[end + 1..].trim_start();
        }
        let is_module = after.starts_with("mod ") || after.starts_with("pub mod ");
        let open = out[at..].find('{').map(|o| at + o);
        match (is_module, open.and_then(|open| closing(&out, open))) {
            (true, Some(end)) => {
                let blanked: String = out[at..=end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' })
                    .collect();
                out.replace_range(at..=end, &blanked);
                from = at + blanked.len();
            }
            _ => from = at + 1,
        }
    }
    out
}

/// Every circle of imports among the modules, once each, with the imports that close it.
fn circles(graph: &BTreeMap<String, Vec<Import>>) -> Vec<String> {
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        let mut trail = vec![start.clone()];
        walk(graph, start, &mut trail, &mut found);
    }
    found.into_iter().collect()
}

/// Depth-first from the last module of `trail`; a path back to `trail[0]` is a circle, kept
/// only when `trail[0]` is its smallest module (so each circle is reported once).
fn walk(
    graph: &BTreeMap<String, Vec<Import>>,
    start: &str,
    trail: &mut Vec<String>,
    found: &mut BTreeSet<String>,
) {
    let Some(imports) = trail.last().and_then(|last| graph.get(last)) else {
        return;
    };
    let next: BTreeSet<&str> = imports.iter().map(|i| i.to.as_str()).collect();
    for to in next {
        if to == start {
            let mut closing = Vec::new();
            for pair in trail
                .iter()
                .chain(std::iter::once(&trail[0]))
                .collect::<Vec<_>>()
                .windows(2)
            {
                let import = graph[pair[0].as_str()]
                    .iter()
                    .find(|i| i.to == *pair[1])
                    .map(|i| format!("{}:{} `{}`", i.file, i.line, i.written))
                    .unwrap_or_default();
                closing.push(import);
            }
            found.insert(format!(
                "circle: {} -> {start} ({})",
                trail.join(" -> "),
                closing.join("; ")
            ));
        } else if to > start && !trail.iter().any(|m| m == to) {
            trail.push(to.to_owned());
            walk(graph, start, trail, found);
            trail.pop();
        }
    }
}
