//! The module layout the README's Design section draws. The pure core stays pure:
//! `src/scheduler/` and `src/capacity/` decide from plain data and import neither
//! Kubernetes nor AWS crates, nor the shells (controllers, providers, API types) around
//! them; only `crate::resources` (plain amounts) is shared. And no module of `src/` imports
//! a module that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// What the core may not name, and why a reader would care.
const FORBIDDEN: [(&str, &str); 7] = [
    ("kube", "the Kubernetes client"),
    ("k8s_openapi", "Kubernetes API types"),
    ("aws_", "the AWS SDK"),
    ("crate::controller", "the controllers (the shell)"),
    ("crate::provider", "the node providers"),
    ("crate::api", "the CRD types"),
    ("tokio", "the async runtime"),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` names `module` as a path (`kube::`, `use kube`, `kube::{`…).
fn names(line: &str, module: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.match_indices(module).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = &code[i + module.len()..];
        let starts_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let is_path = module.ends_with('_') || after.starts_with("::") || after.starts_with(';');
        starts_word && is_path
    })
}

#[test]
fn the_scheduler_and_capacity_cores_import_no_kubernetes_aws_or_shell_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for core in ["scheduler", "capacity"] {
        rust_files(&root.join(core), &mut files);
    }
    assert!(files.len() >= 4, "found {} files", files.len());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (module, what) in FORBIDDEN {
                if names(line, module) {
                    found.push(format!("{}:{}: {what} ({})", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the pure core reaches outside itself:\n{}", found.join("\n"));
}

#[test]
fn the_import_check_sees_the_forms_imports_take() {
    assert!(names("use kube::api::Api;", "kube"));
    assert!(names("    let c: kube::Client = todo!();", "kube"));
    assert!(names("use aws_sdk_ec2::Client;", "aws_"));
    assert!(names("use crate::controller::pod;", "crate::controller"));
    assert!(!names("// kube::Client is not used here", "kube"));
    assert!(!names("let kubelet = 1;", "kube"));
    assert!(!names("fn best_single_type() {}", "tokio"));
}

/// Every module's source without its unit tests, by module path (`controller::job`; the
/// crate root is "").
fn modules() -> BTreeMap<String, String> {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(SRC).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let last = parts.last().cloned().unwrap_or_default();
        if last == "main" || last == "tests" || last == "proptests" {
            continue;
        }
        if last == "mod" || last == "lib" {
            parts.pop();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests may reach anywhere.
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        modules.insert(parts.join("::"), text);
    }
    modules
}

/// Paths written after `prefix` (`crate::`, `super::`), with `{a, b::c}` groups expanded.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand("", rest, &mut out);
    }
    out
}

fn expand(base: &str, text: &str, out: &mut Vec<String>) {
    let path: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
    let full = format!("{base}{path}");
    if (path.is_empty() || path.ends_with("::")) && text[path.len()..].starts_with('{') {
        let inner = &text[path.len() + 1..];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&full, inner[start..i].trim_start(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&full, inner[start..i].trim_start(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
    } else {
        out.push(full.trim_end_matches("::").to_string());
    }
}

/// The longest module of `known` that `path` starts with.
fn module_of(path: &str, known: &BTreeMap<String, String>) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    (0..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| known.contains_key(m)).unwrap_or_default()
}

/// Which modules each module imports (through `crate::`, `super::`, or a child's name).
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, text) in modules {
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        let join = |base: &str, p: &str| if base.is_empty() { p.to_string() } else { format!("{base}::{p}") };
        let mut paths: Vec<String> = paths_after(text, "crate::");
        paths.extend(paths_after(text, "super::").iter().map(|p| join(parent, p)));
        // A child module named directly: `job::reconcile`.
        for child in
            modules.keys().filter_map(|m| m.strip_prefix(&format!("{name}::")).filter(|_| !name.is_empty()))
        {
            if !child.contains("::") && !paths_after(text, &format!("{child}::")).is_empty() {
                paths.push(join(name, child));
            }
        }
        let targets: BTreeSet<String> =
            paths.iter().map(|p| module_of(p, modules)).filter(|m| m != name && !m.is_empty()).collect();
        graph.insert(name.clone(), targets);
    }
    graph
}

#[test]
fn no_module_imports_a_module_beside_it_that_imports_it_back() {
    let graph = imports(&modules());
    let mut cycles = Vec::new();
    // A module and its own submodules (`super::`, re-exports) are one unit: only modules
    // side by side, or in different trees, are held to it.
    let related = |a: &str, b: &str| b.starts_with(&format!("{a}::")) || a.starts_with(&format!("{b}::"));
    for (a, targets) in &graph {
        for b in targets.iter().filter(|b| a < *b && !related(a, b)) {
            if graph.get(b).is_some_and(|t| t.contains(a)) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(cycles.is_empty(), "modules that import each other: {cycles:#?}");
}

#[test]
fn the_import_reader_sees_groups_super_and_children() {
    let mut known = BTreeMap::new();
    for m in ["", "api", "controller", "controller::job", "k8s"] {
        known.insert(m.to_string(), String::new());
    }
    known.insert(
        "controller".into(),
        "use crate::{k8s::apply_status, api::{BatchJob, State}};\njob::reconcile();".into(),
    );
    known.insert("controller::job".into(), "use super::Shared;".into());
    let graph = imports(&known);
    assert_eq!(
        graph["controller"],
        BTreeSet::from(["api".to_string(), "controller::job".into(), "k8s".into()])
    );
    assert_eq!(graph["controller::job"], BTreeSet::from(["controller".to_string()]));
}
