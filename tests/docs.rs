//! The documentation holds together: every relative link of README.md, ARCHITECTURE.md, docs/ and
//! research/ names a file that exists and, with `#anchor`, a heading of that file (GitHub's
//! anchors); every page of docs/ and research/ is reachable from the README; the README stays a
//! guide a new user reads in ten minutes (at most 300 lines).

// Tests may unwrap: a failure is the point.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The Markdown pages checked: the two top-level guides and every page below docs/ and research/.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for dir in ["docs", "research"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        found.sort();
        pages.extend(found);
    }
    pages
}

/// Each line outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text).iter().filter_map(|line| line.strip_prefix('#')).map(|h| slug(h.trim_start_matches('#'))).collect()
}

/// The targets of `[text](target)` links, with the line they are on.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((number + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = repository();
    let mut problems = Vec::new();
    let mut headings: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut heading_of = |path: &Path| -> Option<BTreeSet<String>> {
        if let Some(found) = headings.get(path) {
            return Some(found.clone());
        }
        let text = std::fs::read_to_string(path).ok()?;
        let found = anchors(&text);
        headings.insert(path.to_path_buf(), found.clone());
        Some(found)
    };
    let mut checked = 0;
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).unwrap();
        // Fenced code is blanked, not dropped, so that line numbers stay the file's.
        let mut fenced = false;
        let text: String = text
            .lines()
            .map(|line| {
                let fence = line.trim_start().starts_with("```");
                fenced ^= fence;
                if fence || fenced { "" } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (line, target) in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').map_or((target.as_str(), None), |(f, a)| (f, Some(a)));
            let resolved = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            let name = format!("{}:{line}: ({target})", page.strip_prefix(&root).unwrap().display());
            if !resolved.exists() {
                problems.push(format!("{name}: no file {}", resolved.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let has = resolved.extension().is_some_and(|e| e == "md")
                    && heading_of(&resolved).is_some_and(|h| h.contains(anchor));
                if !has {
                    problems.push(format!("{name}: no heading with anchor #{anchor}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    assert!(checked > 40, "only {checked} links found: is the link parser broken?");
}

#[test]
fn every_page_is_reachable_from_the_readme_which_stays_short() {
    let root = repository();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; move detail to docs/ (at most 300)");
    let mut seen = BTreeSet::from([root.join("README.md")]);
    let mut queue = VecDeque::from([root.join("README.md")]);
    while let Some(page) = queue.pop_front() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (_, target) in links(&prose(&text).join("\n")) {
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() || target.contains("://") {
                continue;
            }
            let Ok(resolved) = page.parent().unwrap().join(file).canonicalize() else { continue };
            if resolved.extension().is_some_and(|e| e == "md") && seen.insert(resolved.clone()) {
                queue.push_back(resolved);
            }
        }
    }
    let unreachable: Vec<String> = pages(&root)
        .into_iter()
        .filter(|p| !seen.contains(p))
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(unreachable.is_empty(), "not reachable from README.md: {unreachable:?}");
}

#[test]
fn anchors_follow_github() {
    assert_eq!(slug("Identity, reruns and concurrent tasks"), "identity-reruns-and-concurrent-tasks");
    assert_eq!(slug("Magnetic tiles: a known limit"), "magnetic-tiles-a-known-limit");
    assert_eq!(slug(" `padim init` and more"), "padim-init-and-more");
    assert_eq!(links("see [a](b.md#c) and [d](e)"), [(1, "b.md#c".to_string()), (1, "e".to_string())]);
}
