//! The reconciler's module graph has no circles (issue 8): a top-level module may depend on
//! another only if that one does not depend back on it, directly or through others.
//!
//! The graph is read from the source: an edge `a -> b` for every `crate::b` path (also inside
//! `use crate::{b, ...}` groups) in the non-test code of module `a` (its file or directory;
//! `tests.rs` files and inline `#[cfg(test)] mod … { … }` blocks are left out, since tests
//! may use a higher layer to drive a lower one). Comments are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its inline test modules.
fn non_test_code(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    // An inline test module runs to the end of the file in this code base.
    let mut cut = code.len();
    let mut from = 0;
    while let Some(i) = code[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = code[at + "#[cfg(test)]".len()..].trim_start();
        let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
        if let Some(after) = rest.strip_prefix("mod ") {
            let name_end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if after[name_end..].trim_start().starts_with('{') {
                cut = at;
                break;
            }
        }
        from = at + 1;
    }
    code.truncate(cut);
    code
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// Top-level modules named after `crate::` in `code`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                if let Some(name) = ident_at(item.trim()) {
                    out.insert(name.to_string());
                }
            }
        } else if let Some(name) = ident_at(rest) {
            out.insert(name.to_string());
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if rel == Path::new("lib.rs") || name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("component")
            .trim_end_matches(".rs")
            .to_string();
        let text = fs::read_to_string(&file).expect("read");
        let mut deps = crate_refs(&non_test_code(&text));
        deps.remove(&top);
        g.entry(top).or_default().extend(deps);
    }
    g
}

/// A path `from -> … -> from`, if `from` is on a circle.
fn circle_through(g: &Graph, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in g.get(&node).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(from.to_string());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    for expected in [
        "plan", "resolve", "observe", "handler", "api", "auth", "status", "engine",
    ] {
        assert!(
            g.contains_key(expected),
            "module {expected} not found: {g:?}"
        );
    }
    let circles: Vec<String> = g
        .keys()
        .filter_map(|m| circle_through(&g, m))
        .map(|p| p.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
    // The seams this graph was restructured for stay cut.
    let depends = |a: &str, b: &str| g.get(a).is_some_and(|d| d.contains(b));
    for (a, b) in [
        ("auth", "engine"),
        ("audit", "engine"),
        ("api", "engine"),
        ("status", "engine"),
        ("resolve", "plan"),
        ("observe", "plan"),
        ("error", "config"),
    ] {
        assert!(!depends(a, b), "{a} must not depend on {b}");
    }
}

#[test]
fn the_reader_sees_groups_and_skips_tests_and_comments() {
    let code = non_test_code(
        "use crate::{a, b::c};\n// crate::hidden\nfn f() { crate::d::e(); }\n#[cfg(test)]\nmod tests {\n    use crate::t;\n}\n",
    );
    assert_eq!(
        crate_refs(&code),
        ["a", "b", "d"].iter().map(|s| s.to_string()).collect()
    );
    let g: Graph = [
        ("x".to_string(), ["y".to_string()].into()),
        ("y".to_string(), ["x".to_string()].into()),
    ]
    .into();
    assert_eq!(
        circle_through(&g, "x"),
        Some(vec!["x".into(), "y".into(), "x".into()])
    );
}
