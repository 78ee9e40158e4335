//! The pure core stays pure: `src/scheduler/` and `src/capacity/` decide from plain data and
//! import neither Kubernetes nor AWS crates, nor the shells (controllers, providers, API
//! types) around them. Only `crate::resources` (plain amounts) is shared.

use std::path::Path;

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
