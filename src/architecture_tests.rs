//! The module graph, read from the source: every `crate::a::b` and
//! `super::a` path in a module is an edge to the deepest module it names
//! (a module's own children, named without a prefix, are not edges; test
//! modules are left out).
//!
//! Two rules, both without exceptions:
//! - between modules (every file and inline module a node), no cycle:
//!   [`modules_form_a_dag`];
//! - between the crate's top-level modules (`dhcp`, `fleet`, `store`, …),
//!   no cycle either: [`top_level_modules_form_a_dag`]. When one is needed,
//!   depend the other way or move the shared type down (`domain` holds what
//!   everything shares).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; the crate roots and the
/// binaries are not modules of the library.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        None | Some("lib" | "main" | "bin") => None,
        _ => Some(parts.join("::")),
    }
}

fn is_test(module: &str) -> bool {
    module
        .rsplit("::")
        .next()
        .is_some_and(|last| last == "tests" || last.ends_with("_tests"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifier path after each occurrence of `prefix` in `text`.
fn paths_after<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    text.match_indices(prefix).filter_map(move |(at, _)| {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &text[at + prefix.len()..];
        let mut segments = Vec::new();
        let mut tail = rest;
        loop {
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if end == 0 {
                break;
            }
            segments.push(&tail[..end]);
            match tail[end..].strip_prefix("::") {
                Some(next) => tail = next,
                None => break,
            }
        }
        (!segments.is_empty()).then_some(segments)
    })
}

/// The deepest module of `modules` that `path` names.
fn resolve(modules: &BTreeSet<String>, path: &[&str]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .filter_map(|f| Some((module_of(&src, f)?, std::fs::read_to_string(f).ok()?)))
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, text) in &sources {
        if is_test(module) {
            continue;
        }
        // Inline test modules sit at the end of a file.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
        let parent: Vec<&str> = module.split("::").collect();
        let parent = &parent[..parent.len() - 1];
        let targets = paths_after(text, "crate::")
            .filter_map(|p| resolve(&modules, &p))
            .chain(paths_after(text, "super::").filter_map(|p| {
                let full: Vec<&str> = parent.iter().copied().chain(p).collect();
                resolve(&modules, &full)
            }));
        let edges = graph.entry(module.clone()).or_default();
        for target in targets {
            if target != *module && !is_test(&target) {
                edges.insert(target);
            }
        }
    }
    graph
}

/// The graph with every module cut to its first `depth` segments.
fn at_depth(graph: &Graph, depth: usize) -> Graph {
    let cut = |m: &str| m.split("::").take(depth).collect::<Vec<_>>().join("::");
    let mut out = Graph::new();
    for (from, tos) in graph {
        for to in tos {
            let (a, b) = (cut(from), cut(to));
            if a != b {
                out.entry(a).or_default().insert(b);
            }
        }
    }
    out
}

/// Edges `a → b` where `b` also reaches `a`: those that lie on a cycle.
fn cycle_edges(graph: &Graph) -> BTreeSet<(String, String)> {
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        false
    };
    graph
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a.clone(), b.clone())))
        .filter(|(a, b)| reaches(b, a))
        .collect()
}

#[test]
fn modules_form_a_dag() {
    let cycles = cycle_edges(&module_graph());
    assert!(
        cycles.is_empty(),
        "module cycles (a → b where b reaches a): {cycles:#?}"
    );
}

#[test]
fn top_level_modules_form_a_dag() {
    let cycles = cycle_edges(&at_depth(&module_graph(), 1));
    assert!(
        cycles.is_empty(),
        "cycles between top-level modules (depend the other way, or move the type down): {cycles:#?}"
    );
}

#[test]
fn the_reader_sees_paths_as_written() {
    let text = "use crate::dhcp::leases::{Entry, State};\nlet x = super::history::boots_of(); // mycrate::x";
    let found: Vec<Vec<&str>> = paths_after(text, "crate::").collect();
    assert_eq!(found, vec![vec!["dhcp", "leases"]]);
    let found: Vec<Vec<&str>> = paths_after(text, "super::").collect();
    assert_eq!(found, vec![vec!["history", "boots_of"]]);
}

/// Every module `module` reaches through its paths, itself left out.
fn reach(graph: &Graph, module: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![module.to_string()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen.remove(module);
    seen
}

/// The pure core: the decisions every path asks, tested as tables.
const PURE: &[&str] = &["fleet", "domain", "boot", "rollout::engine"];

/// What the pure core may build on besides itself: modules of plain types
/// and pure functions (named exactly: their children may do I/O).
const PURE_MAY_USE: &[&str] = &["rollout", "rollout::watchdog", "images::manifest"];

#[test]
fn the_pure_core_reaches_no_io() {
    let graph = module_graph();
    let within = |m: &str, roots: &[&str]| {
        roots
            .iter()
            .any(|r| m == *r || m.starts_with(&format!("{r}::")))
    };
    let mut wrong = BTreeMap::new();
    for module in graph.keys().filter(|m| within(m, PURE)) {
        let outside: BTreeSet<String> = reach(&graph, module)
            .into_iter()
            .filter(|m| !within(m, PURE) && !PURE_MAY_USE.contains(&m.as_str()))
            .collect();
        if !outside.is_empty() {
            wrong.insert(module.clone(), outside);
        }
    }
    assert!(wrong.is_empty(), "the pure core reaches: {wrong:#?}");
}

/// Nor does it name a runtime, a database, a file or a clock itself.
#[test]
fn the_pure_core_names_no_runtime_database_file_or_clock() {
    const IO: &[&str] = &[
        "tokio::",
        "sqlx::",
        "std::fs",
        "std::net::UdpSocket",
        "Instant::now",
        "SystemTime::now",
        "now_ms()",
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let Some(module) = module_of(&src, &file).filter(|m| !is_test(m)) else {
            continue;
        };
        let pure = PURE
            .iter()
            .chain(PURE_MAY_USE)
            .any(|r| module == *r || (PURE.contains(r) && module.starts_with(&format!("{r}::"))));
        if !pure {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or(&text);
        for name in IO.iter().filter(|n| text.contains(*n)) {
            found.push(format!("{module}: {name}"));
        }
    }
    assert!(found.is_empty(), "I/O in the pure core: {found:#?}");
}
