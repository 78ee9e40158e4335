//! What users read and copy stays true: every repository path that the README, the chart's
//! NOTES.txt and the scripts in `hack/` name exists, and the README's shell blocks run. Each
//! block is marked on the line before its fence with where it runs (`hack/readme-blocks.sh`
//! says what each mark means); this test runs the `standalone` and `cluster` ones, and
//! `.ci/run` runs the `ci` and `after-demo` ones around `make demo`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Top-level directories of the repository whose paths documents name.
const TOP: [&str; 10] =
    ["examples", "deploy", "charts", "hack", "crds", "src", "tests", "benches", "bench", ".ci"];

/// Where a path written after a prefix like `$repo/` is still a repository path.
const ROOTS: [&str; 4] = ["$repo/", "/main/", "$(CURDIR)/", "$here/../../"];

const MARKS: [&str; 5] = ["ci", "after-demo", "standalone", "cluster", "real-cloud"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The repository paths a text names: a top-level directory and what follows it, where it
/// starts a word or follows one of `ROOTS`.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        let before = &text[..i];
        let at_word = before.chars().next_back().is_none_or(|c| !is_path_char(c));
        if !at_word && !ROOTS.iter().any(|r| before.ends_with(r)) {
            continue;
        }
        let rest = &text[i..];
        if !TOP.iter().any(|t| rest.starts_with(&format!("{t}/"))) {
            continue;
        }
        let path: String = rest.chars().take_while(|c| is_path_char(*c)).collect();
        // A path cut short by a glob or a variable (`bench/results/cluster-N.*`,
        // `hack/cluster/$name`) names the start of a file's path: some file must start so.
        let cut = rest[path.len()..].starts_with(['*', '$', '<', '{']);
        let path = path.trim_end_matches(['.', ',']);
        out.push(if cut { format!("{path}*") } else { path.to_string() });
    }
    out.sort();
    out.dedup();
    out
}

fn documents() -> Vec<String> {
    let mut docs = vec!["README.md".to_string(), "charts/barge/templates/NOTES.txt".into(), ".ci/run".into()];
    let mut scripts: Vec<String> = std::fs::read_dir(repo().join("hack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .map(|p| format!("hack/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    scripts.sort();
    docs.extend(scripts);
    docs.push("hack/cluster/build.sh".into());
    docs
}

/// Whether a named path exists; `dir/start*` asks for a file in `dir` starting so.
fn exists(path: &str) -> bool {
    let Some(start) = path.strip_suffix('*') else { return repo().join(path).exists() };
    let (dir, file) = start.rsplit_once('/').unwrap_or(("", start));
    std::fs::read_dir(repo().join(dir))
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(file)))
        .unwrap_or(false)
}

#[test]
fn the_documents_name_only_files_that_exist() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        for path in named_paths(&read(&doc)) {
            checked += 1;
            if !exists(&path) {
                missing.push(format!("{doc} names {path}, which does not exist"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert!(checked > 30, "only {checked} paths found: the path reader is broken");
}

#[test]
fn the_path_reader_finds_paths_where_users_see_them() {
    let text = "kubectl apply -f examples/a.yaml, then `hack/cluster.sh up`.\n\
                \"$repo/hack/cluster/kwok.yaml\" https://raw.githubusercontent.com/o/r/main/examples/b.yaml\n\
                k8s.io/kubernetes/cmd/kube-apiserver sub/examples/c.yaml bench/results/cluster-1000.*";
    assert_eq!(
        named_paths(text),
        [
            "bench/results/cluster-1000*",
            "examples/a.yaml",
            "examples/b.yaml",
            "hack/cluster.sh",
            "hack/cluster/kwok.yaml"
        ]
    );
    assert!(exists("bench/results/cluster-1000*") && !exists("bench/results/cluster-7*"));
}

/// The README's shell blocks as (mark, text), in order.
fn readme_blocks() -> Vec<(Option<String>, String)> {
    let readme = read("README.md");
    let mut blocks = Vec::new();
    let mut lines = readme.lines().peekable();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if line == "```sh" {
            let mark =
                previous.strip_prefix("<!-- run: ").and_then(|m| m.strip_suffix(" -->")).map(str::to_string);
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            blocks.push((mark, body.join("\n")));
        }
        previous = line;
    }
    blocks
}

fn blocks_marked(mark: &str) -> String {
    let out = Command::new(repo().join("hack/readme-blocks.sh")).arg(mark).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let expected: Vec<String> = readme_blocks()
        .into_iter()
        .filter(|(m, _)| m.as_deref() == Some(mark))
        .map(|(_, b)| b + "\n")
        .collect();
    assert_eq!(text, expected.concat(), "hack/readme-blocks.sh reads the README as this test does");
    text
}

#[test]
fn every_shell_block_of_the_readme_says_where_it_runs() {
    let blocks = readme_blocks();
    assert!(blocks.len() >= 4, "the README has {} shell blocks", blocks.len());
    for (mark, body) in &blocks {
        let first = body.lines().next().unwrap_or_default();
        match mark {
            Some(m) => assert!(MARKS.contains(&m.as_str()), "block `{first}…` has an unknown mark {m}"),
            None => panic!("README block `{first}…` has no `<!-- run: … -->` line before it"),
        }
    }
    for mark in MARKS {
        blocks_marked(mark);
    }
    let ci = read(".ci/run");
    assert!(ci.contains("make test") && ci.contains("make demo"), ".ci/run runs the `ci` block");
    assert!(ci.contains("hack/readme-blocks.sh after-demo"), ".ci/run runs the `after-demo` block");
}

fn bash(script: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo())
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_local_cluster_by_hand_runs_as_the_readme_shows() {
    let dir = tempdir("by-hand");
    let state = dir.join("cluster");
    let script = blocks_marked("standalone");
    let (ok, out) = bash(&script, &[("BARGE_CLUSTER_DIR", state.to_str().unwrap())]);
    // Whatever happened, nothing of that cluster may stay running.
    let _ =
        Command::new(repo().join("hack/cluster.sh")).arg("down").env("BARGE_CLUSTER_DIR", &state).output();
    assert!(ok, "the README's `hack/cluster.sh` block failed:\n{out}");
    assert!(out.contains("kube-apiserver: running"), "`status` says what runs:\n{out}");
    assert!(out.contains("export KUBECONFIG="), "`env` prints the lines to eval:\n{out}");
    assert!(!state.exists(), "`down` removes the cluster's state");
}

#[tokio::test]
async fn the_quick_start_runs_on_a_cluster() {
    // `kubectl barge` is the barge binary installed as a kubectl plugin, as the README says.
    let bin = tempdir("plugin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_barge"), bin.join("kubectl-barge")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let client = common::client().await;
    common::install_crds(&client).await;
    let script = blocks_marked("cluster");
    let (ok, out) = bash(&script, &[("PATH", path.as_str())]);
    let cleanup = "helm uninstall barge --namespace barge-system --wait >/dev/null 2>&1 || true
        kubectl delete namespace barge-system --wait=false >/dev/null 2>&1 || true
        kubectl delete bj --all -n default --wait=false >/dev/null 2>&1 || true
        kubectl delete -f examples/job-queues.yaml -f examples/compute-environment.yaml --wait=false >/dev/null 2>&1 || true";
    let _ = bash(cleanup, &[("PATH", path.as_str())]);
    assert!(ok, "the README's quick start failed:\n{out}");
    assert!(out.contains("STATUS: deployed"), "helm installed the chart:\n{out}");
    assert!(out.contains("computeenvironment.barge.dev/demo-ondemand"), "{out}");
}

fn tempdir(what: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("docs-{what}-{}", common::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
