//! The module graph runs one way (README, "What is where"): HTTP handlers
//! and the outbox worker → the use cases they share → translate → the
//! Vipps client → the token cache. Read from the sources, so a `use` that
//! bends an arrow back fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its non-test code names
/// (`crate::NAME`). `lib`, `main` and `cli` wire everything and are left out.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if ["lib", "main", "cli"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // The tests module ends a file here; test-only items before it
        // count like any other code.
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let names = graph.entry(module.clone()).or_default();
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + 7..];
            // `crate::{a, b::c}` names each of its modules.
            let listed: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for path in listed {
                let name: String = path
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    names.insert(name);
                }
            }
        }
    }
    graph
}

/// A circle in the graph, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_circle() {
    let graph = graph();
    assert!(graph.len() > 10, "the sources were read: {graph:?}");
    assert_eq!(circle(&graph), None, "{graph:#?}");
}

#[test]
fn lower_layers_know_nothing_of_their_callers() {
    let graph = graph();
    let handlers = ["facade", "proxy", "middleware", "ops", "state", "request"];
    let rules: [(&str, &[&str]); 4] = [
        // The Vipps client knows nothing of its callers.
        (
            "vipps",
            &[
                "facade",
                "proxy",
                "middleware",
                "ops",
                "state",
                "request",
                "outbox",
                "usecase",
                "translate",
            ],
        ),
        // Translation is pure: no I/O, no callers.
        (
            "translate",
            &[
                "facade",
                "proxy",
                "middleware",
                "ops",
                "state",
                "outbox",
                "usecase",
            ],
        ),
        // The use cases serve both doors and know neither.
        (
            "usecase",
            &[
                "facade",
                "proxy",
                "middleware",
                "ops",
                "state",
                "request",
                "outbox",
            ],
        ),
        // The worker knows nothing of HTTP handlers.
        ("outbox", &handlers),
    ];
    for (module, forbidden) in rules {
        let uses = graph
            .get(module)
            .unwrap_or_else(|| panic!("no module {module}"));
        let wrong: Vec<&String> = uses
            .iter()
            .filter(|u| forbidden.contains(&u.as_str()))
            .collect();
        assert!(wrong.is_empty(), "{module} uses {wrong:?}");
    }
}

#[test]
fn a_circle_is_found_where_there_is_one() {
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), set(&["b"]));
    graph.insert("b".to_owned(), set(&["c"]));
    graph.insert("c".to_owned(), set(&[]));
    assert_eq!(circle(&graph), None);
    graph.insert("c".to_owned(), set(&["a"]));
    assert_eq!(
        circle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
