//! ARCHITECTURE.md's rules, checked on the source: the layers of `src/` (a module imports
//! only modules below it), no import circle between files, and the size budget (a file at
//! most 400 lines, a function at most 60, tests excepted). The source is read as text:
//! `use` trees and `crate::`/`super::` paths are resolved to the files they name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first: a module may import only the modules before it.
/// ARCHITECTURE.md explains each one; keep the two in the same order.
const LAYERS: &[&str] = &[
    "secret",
    "logfield",
    "codec",
    "datetime",
    "cloud",
    "mailbox",
    "config",
    "state",
    "tls",
    "oauth",
    "error",
    "protocol",
    "upstream",
    "relay",
    "abuse",
    "auth",
    "graph",
    "submission",
    "delivery",
    "metrics",
    "admin",
    "server",
    "cli",
];

const MAX_FILE_LINES: usize = 400;
const MAX_FN_LINES: usize = 60;

/// One source file: its module path and the lines that are not tests.
struct Source {
    file: PathBuf,
    module: Vec<String>,
    code: Vec<String>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    walk(&src(), &mut files);
    let test_only = test_only_files(&files);
    let mut sources = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().to_path_buf();
        if test_only.contains(&rel) || rel == Path::new("main.rs") || rel == Path::new("lib.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        sources.push(Source {
            module: module_of(&rel),
            code: code_lines(&text),
            file: rel,
        });
    }
    sources
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files compiled only for tests: `tests.rs`, and modules declared under `#[cfg(test)]`.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().to_path_buf();
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            out.insert(rel.clone());
        }
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let declared = pair[1]
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            if pair[0].trim() == "#[cfg(test)]"
                && declared.starts_with("mod ")
                && declared.ends_with(';')
            {
                let name = declared["mod ".len()..declared.len() - 1].trim();
                let dir = module_dir(&rel);
                out.insert(dir.join(format!("{name}.rs")));
                out.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// The folder a file's child modules live in.
fn module_dir(rel: &Path) -> PathBuf {
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    match rel.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => parent,
        _ => parent.join(rel.file_stem().unwrap()),
    }
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The lines before the file's test module (`#[cfg(test)]` then `mod ...`).
fn code_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i] == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.starts_with("mod ") && l.ends_with('{'))
        })
        .unwrap_or(lines.len());
    lines[..end].iter().map(|l| l.to_string()).collect()
}

/// Every crate path the code names, as module paths: `use` trees expanded, and inline
/// `crate::a::b` paths. Comments are skipped.
fn named_paths(source: &Source) -> Vec<Vec<String>> {
    let code: String = file_level(&source.code)
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut paths = Vec::new();
    for statement in code.split(';') {
        let trimmed = statement.trim_start();
        let body = trimmed
            .strip_prefix("pub(crate) ")
            .or(trimmed.strip_prefix("pub "))
            .unwrap_or(trimmed);
        if let Some(tree) = body.strip_prefix("use ") {
            expand(&tree.split_whitespace().collect::<String>(), &mut paths);
        }
    }
    for (at, _) in code.match_indices("crate::") {
        let rest: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(rest.split("::").map(str::to_string).collect());
    }
    let children = child_modules(&source.code);
    paths
        .into_iter()
        .map(|p| match p.first() {
            Some(first) if children.contains(first) => [vec!["self".to_string()], p].concat(),
            _ => p,
        })
        .filter_map(|p| absolute(&source.module, p))
        .collect()
}

/// The code with paths written as the file's own module sees them: inside an inline
/// `mod name { ... }`, `super::` is the file's module (`self::`).
fn file_level(code: &[String]) -> Vec<String> {
    let mut inline: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in code {
        let indent = &line[..line.len() - line.trim_start().len()];
        let words: Vec<&str> = line.split_whitespace().collect();
        if inline.last().is_some_and(|close| line == close) {
            inline.pop();
        } else if words.last() == Some(&"{") && words.iter().rev().nth(2) == Some(&"mod") {
            inline.push(format!("{indent}}}"));
        }
        out.push(match inline.len() {
            0 => line.clone(),
            _ => line.replace("super::", "self::"),
        });
    }
    out
}

/// The modules a file declares (`mod name;`): `use name::...` is relative to them.
fn child_modules(code: &[String]) -> BTreeSet<String> {
    code.iter()
        .filter_map(|l| {
            let l = l
                .trim()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str, out: &mut Vec<Vec<String>>) {
    match tree.find("::{") {
        Some(at) if tree.ends_with('}') => {
            let prefix = &tree[..at];
            let inner = &tree[at + 3..tree.len() - 1];
            for item in split_top_level(inner) {
                expand(&format!("{prefix}::{item}"), out);
            }
        }
        _ => {
            let path = tree.split(" as ").next().unwrap_or(tree);
            out.push(path.split("::").map(str::to_string).collect());
        }
    }
}

fn split_top_level(inner: &str) -> Vec<String> {
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .filter(|i| !i.is_empty() && i != "self")
        .collect()
}

/// A path made absolute from the crate root, or `None` for paths outside the crate.
fn absolute(module: &[String], path: Vec<String>) -> Option<Vec<String>> {
    let mut base = module.to_vec();
    let mut rest = path.as_slice();
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        _ => return None,
    }
    base.extend(rest.iter().filter(|s| !s.is_empty()).cloned());
    Some(base)
}

/// The file a module path lives in: the longest prefix that is a file.
fn file_of(path: &[String], files: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let dir: PathBuf = path[..n].iter().collect();
        [dir.with_extension("rs"), dir.join("mod.rs")]
            .into_iter()
            .find(|f| files.contains(f))
    })
}

#[test]
fn each_module_imports_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for source in sources() {
        let own = layer(&source.module[0], &source.file);
        for path in named_paths(&source) {
            let Some(top) = path.first() else { continue };
            let theirs = layer(top, &source.file);
            if theirs > own {
                wrong.push(format!(
                    "{} imports {}",
                    source.file.display(),
                    path.join("::")
                ));
            }
        }
    }
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports of a higher layer:\n{}",
        wrong.join("\n")
    );
}

fn layer(module: &str, file: &Path) -> usize {
    let name = module.trim_end_matches(".rs");
    LAYERS
        .iter()
        .position(|l| *l == name)
        .unwrap_or_else(|| panic!("{}: module `{name}` has no layer in LAYERS", file.display()))
}

#[test]
fn no_two_files_import_each_other_in_a_circle() {
    let sources = sources();
    let files: BTreeSet<PathBuf> = sources.iter().map(|s| s.file.clone()).collect();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for source in &sources {
        let targets = named_paths(source)
            .iter()
            .filter_map(|p| file_of(p, &files))
            .collect();
        edges.insert(source.file.clone(), targets);
    }
    let circles: Vec<String> = files
        .iter()
        .filter_map(|start| circle_through(start, &edges))
        .map(|c| {
            c.iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// A path of imports that leaves `start` and comes back to it, if there is one.
fn circle_through(
    start: &PathBuf,
    edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
) -> Option<Vec<PathBuf>> {
    let mut stack = vec![vec![start.clone()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last()?;
        for next in edges.get(last).into_iter().flatten() {
            if next == last {
                continue;
            }
            if next == start {
                return Some([path.clone(), vec![start.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push([path.clone(), vec![next.clone()]].concat());
            }
        }
    }
    None
}

#[test]
fn files_and_functions_keep_to_the_size_budget() {
    let mut over = Vec::new();
    for source in sources() {
        if source.code.len() > MAX_FILE_LINES {
            over.push(format!(
                "{}: {} lines",
                source.file.display(),
                source.code.len()
            ));
        }
        for (name, start, lines) in functions(&source.code) {
            if lines > MAX_FN_LINES {
                over.push(format!(
                    "{}:{start} fn {name}: {lines} lines",
                    source.file.display()
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over the size budget:\n{}",
        over.join("\n")
    );
}

/// Each function with a body: its name, first line and length in lines.
fn functions(code: &[String]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in code.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        // The signature ends at the first line ending in `{`, `}` (a one-line body) or `;`.
        let Some(open) = (i..code.len()).find(|&j| code[j].trim_end().ends_with(['{', '}', ';']))
        else {
            continue;
        };
        let end = code[open].trim_end();
        if end.ends_with(';') {
            continue;
        }
        if end.ends_with('}') {
            out.push((name, i + 1, open - i + 1));
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        if let Some(last) = (open..code.len()).find(|&j| code[j] == close) {
            out.push((name, i + 1, last - i + 1));
        }
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().skip_while(|w| {
        w.starts_with("pub") || matches!(*w, "async" | "const" | "unsafe" | "extern")
    });
    (words.next()? == "fn").then(|| words.next())?.map(|n| {
        n.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    })
}

#[test]
fn the_crate_map_and_architecture_md_list_the_layers_in_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let in_lib: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! - [`")?.split('`').next())
        .collect();
    assert_eq!(in_lib, LAYERS, "src/lib.rs's crate map");
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let in_doc: Vec<&str> = doc
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| ")?
                .split(" | `")
                .nth(1)?
                .split('`')
                .next()
        })
        .collect();
    assert_eq!(in_doc, LAYERS, "ARCHITECTURE.md's table of layers");
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    assert_eq!(
        declared,
        LAYERS.iter().copied().collect(),
        "modules declared in src/lib.rs"
    );
}
