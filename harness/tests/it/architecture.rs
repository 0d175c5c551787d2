//! The layering ARCHITECTURE.md describes, checked on the sources: which top-level module of
//! `harness/src` may use which (`crate::…` paths, `use` lines and inline), and that neither
//! crate's top-level modules import each other in a cycle. A new import against the
//! direction fails here, naming the file and line; a new module must be given its place
//! in `ALLOWED` (and in ARCHITECTURE.md) before it builds green.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the harness library and the modules it may use, lowest first.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("sys", &[]),
    ("scenario", &["model"]),
    ("topology", &["model"]),
    ("analysis", &["model"]),
    ("dataplane", &["model"]),
    ("control_client", &["model"]),
    ("plan", &["model", "scenario", "topology"]),
    ("results", &["model", "analysis"]),
    ("platform", &["model", "scenario", "topology", "dataplane", "control_client", "sys"]),
    ("present", &["model", "analysis"]),
    ("report", &["model", "analysis", "results"]),
    ("live", &["model", "topology", "platform"]),
    ("render", &["model", "scenario", "plan", "results", "platform"]),
    ("run", &["model", "scenario", "analysis", "control_client", "plan", "results", "platform", "report"]),
];

/// Every `crate::<module>` a file names, with its line, outside comments.
fn crate_refs(text: &str, modules: &BTreeSet<String>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            // `use crate::{a, b::c}` names several at once.
            let names: Vec<&str> = if let Some(group) = after.strip_prefix('{') {
                group.split(['}', ';']).next().unwrap_or("").split(',').map(str::trim).collect()
            } else {
                vec![after]
            };
            for name in names {
                let m: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if modules.contains(&m) {
                    out.push((n + 1, m));
                }
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The top-level module graph of a crate's `src/` (the binary's `main.rs` and `cli/` excluded:
/// they use the library through its public paths): `module → {module: (file, line)}`.
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, (PathBuf, usize)>> {
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    };
    let files: Vec<PathBuf> = rust_files(src);
    let modules: BTreeSet<String> =
        files.iter().map(|p| top(p)).filter(|m| !matches!(m.as_str(), "lib" | "main" | "cli")).collect();
    let mut g: BTreeMap<String, BTreeMap<String, (PathBuf, usize)>> = BTreeMap::new();
    for f in &files {
        let from = top(f);
        if !modules.contains(&from) {
            continue;
        }
        let edges = g.entry(from.clone()).or_default();
        for (line, to) in crate_refs(&std::fs::read_to_string(f).unwrap(), &modules) {
            if to != from {
                edges.entry(to).or_insert((f.clone(), line));
            }
        }
    }
    g
}

/// A cycle in `g`, if there is one, as the modules along it.
fn cycle(g: &BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in g.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(m, g, &mut Vec::new(), &mut done))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn the_harness_modules_import_only_downward() {
    let g = graph(&repo().join("harness/src"));
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, edges) in &g {
        let Some(may) = allowed.get(from.as_str()) else {
            wrong.push(format!("module {from} has no place in the layering (add it to ALLOWED and ARCHITECTURE.md)"));
            continue;
        };
        for (to, (file, line)) in edges {
            if !may.contains(&to.as_str()) {
                wrong.push(format!("{}:{line}: {from} uses {to}, against the layering", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(cycle(&g), None);
}

#[test]
fn neither_crate_has_a_module_cycle() {
    for src in ["harness/src", "agents/src"] {
        let g = graph(&repo().join(src));
        assert!(g.len() > 5, "{src}: the graph was read ({g:?})");
        assert_eq!(cycle(&g), None, "{src} has an import cycle among its top-level modules");
    }
}

#[test]
fn the_checker_sees_a_cycle_and_grouped_imports() {
    let modules: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let refs = crate_refs("use crate::{a, b::X};\nlet x = crate::c::f(); // crate::a in a comment", &modules);
    assert_eq!(refs, [(1, "a".into()), (1, "b".into()), (2, "c".into())]);
    let mut g: BTreeMap<String, BTreeMap<String, (PathBuf, usize)>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into(), (PathBuf::new(), 1));
    g.entry("b".into()).or_default().insert("c".into(), (PathBuf::new(), 1));
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into(), (PathBuf::new(), 1));
    assert_eq!(cycle(&g), Some(["a", "b", "c", "a"].map(String::from).to_vec()));
}
