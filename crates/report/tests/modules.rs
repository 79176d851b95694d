//! The report crate's modules depend on each other without a cycle (each `crate::name` a module
//! names is an edge), so that each can be read, tested and moved on its own.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let uses: BTreeSet<String> = text
            .split("crate::")
            .skip(1)
            .filter_map(|rest| {
                let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                (!word.is_empty() && word != name).then_some(word)
            })
            .collect();
        graph.insert(name, uses);
    }
    graph
}

/// A cycle through `node`, if there is one (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn report_modules_have_no_cycle() {
    let graph = dependencies();
    // The check sees the edges it should: the stage uses the modules it orchestrates.
    assert!(graph["stage"].contains("inputs") && graph["stage"].contains("evaluate"), "{graph:?}");
    assert!(graph["html"].contains("summary"), "{graph:?}");
    assert_eq!(cycle(&graph), None, "a module cycle in padim-report: {graph:?}");
    // And it finds one when there is one.
    let mut cyclic = graph.clone();
    cyclic.get_mut("summary").unwrap().insert("stage".into());
    assert!(cycle(&cyclic).is_some());
}
