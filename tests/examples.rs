//! The gallery: every file in `examples/` is applied to the local cluster as a user applies it
//! (`kubectl apply --server-side`), and reaches what its comment promises. Each file says so
//! in `# expect:` lines, which this test reads:
//!
//! ```text
//! # expect: <Kind>/<name> <path> == <value>       e.g. status.phase == SUCCEEDED
//! # expect: <Kind>/<name> <path> starts <prefix>
//! # expect: <Kind>/<name> <path> contains <text>
//! # expect: <Kind>/<name> <path> exists
//! # expect: <Kind>/<name> event <Type> <Reason>   an Event about the object
//! ```
//!
//! A path is dotted; `conditions[Ready]` picks a condition by type, `attempts[0]` an item.
//! A file with a `# needs: real-node` line runs only where the cluster has its real node.
//! The ec2 example runs against moto, with moto's subnets and AMI in place of its
//! `*-0example*` placeholders, and a node bridge playing each instance's kubelet. The S3
//! trigger's example reads an SQS queue `uploads` made in moto, its AWS endpoints moto's.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ec2::{moto, moto_url, start_node_bridge};
use common::*;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams};
use kube::{Client, Resource};
use serde_json::Value;

/// Long enough for the slowest promise: the timeout example's 60 s attempt, plus an EC2
/// launch and a node joining.
const PROMISE_WAIT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, PartialEq)]
enum Check {
    Equals(String),
    StartsWith(String),
    Contains(String),
    Exists,
    Event { type_: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
struct Expectation {
    file: String,
    kind: String,
    name: String,
    path: String,
    check: Check,
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}/{} {} {:?}", self.file, self.kind, self.name, self.path, self.check)
    }
}

/// The `# expect:` lines of one example file.
fn expectations(file: &str, text: &str) -> Result<Vec<Expectation>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# expect:") else { continue };
        let bad = || format!("{file}: cannot read `{line}`");
        let (object, rest) = rest.trim().split_once(' ').ok_or_else(bad)?;
        let (kind, name) = object.split_once('/').ok_or_else(bad)?;
        let (path, check) = match rest.split_once(' ') {
            Some(("event", what)) => {
                let (type_, reason) = what.split_once(' ').ok_or_else(bad)?;
                ("".into(), Check::Event { type_: type_.into(), reason: reason.trim().into() })
            }
            Some((path, what)) => {
                let check = if let Some(v) = what.strip_prefix("== ") {
                    Check::Equals(v.into())
                } else if let Some(v) = what.strip_prefix("starts ") {
                    Check::StartsWith(v.into())
                } else if let Some(v) = what.strip_prefix("contains ") {
                    Check::Contains(v.into())
                } else if what == "exists" {
                    Check::Exists
                } else {
                    return Err(bad());
                };
                (path.to_string(), check)
            }
            None => return Err(bad()),
        };
        out.push(Expectation { file: file.into(), kind: kind.into(), name: name.into(), path, check });
    }
    Ok(out)
}

/// The value at a dotted path, with `[Type]` choosing a condition and `[N]` an item.
fn lookup<'a>(mut v: &'a Value, path: &str) -> Option<&'a Value> {
    for part in path.split('.') {
        let (key, pick) = match part.split_once('[') {
            Some((k, p)) => (k, Some(p.strip_suffix(']')?)),
            None => (part, None),
        };
        v = v.get(key)?;
        if let Some(pick) = pick {
            v = match pick.parse::<usize>() {
                Ok(i) => v.get(i)?,
                Err(_) => v.as_array()?.iter().find(|c| c["type"] == pick)?,
            };
        }
    }
    Some(v)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn holds(check: &Check, value: Option<&Value>) -> bool {
    match (check, value) {
        (Check::Exists, v) => v.is_some_and(|v| !v.is_null()),
        (Check::Equals(want), Some(v)) => as_text(v) == *want,
        (Check::StartsWith(want), Some(v)) => as_text(v).starts_with(want.as_str()),
        (Check::Contains(want), Some(v)) => as_text(v).contains(want.as_str()),
        _ => false,
    }
}

fn resource(kind: &str) -> (ApiResource, bool) {
    use barge::api::{BatchJob, ComputeEnvironment, JobDefinition, JobQueue, JobTrigger};
    match kind {
        "BatchJob" => (ApiResource::erase::<BatchJob>(&()), true),
        "JobTrigger" => (ApiResource::erase::<JobTrigger>(&()), true),
        "JobDefinition" => (ApiResource::erase::<JobDefinition>(&()), true),
        "JobQueue" => (ApiResource::erase::<JobQueue>(&()), false),
        "ComputeEnvironment" => (ApiResource::erase::<ComputeEnvironment>(&()), false),
        "Node" => (ApiResource::erase::<k8s_openapi::api::core::v1::Node>(&()), false),
        other => panic!("examples name a kind this test does not know: {other}"),
    }
}

/// Waits until the expectation holds; the failure names the file and shows what was there.
async fn check(client: &Client, ns: &str, e: &Expectation) -> Result<(), String> {
    let (ar, namespaced) = resource(&e.kind);
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let start = std::time::Instant::now();
    let mut seen;
    loop {
        let ok = match &e.check {
            Check::Event { type_, reason } => {
                let lp = ListParams::default().fields(&format!("involvedObject.name={}", e.name));
                let list = events.list(&lp).await.map(|l| l.items).unwrap_or_default();
                seen = format!("{:?}", list.iter().map(|ev| (&ev.type_, &ev.reason)).collect::<Vec<_>>());
                list.iter().any(|ev| {
                    ev.type_.as_deref() == Some(type_.as_str())
                        && ev.reason.as_deref() == Some(reason.as_str())
                })
            }
            c => match api.get_opt(&e.name).await {
                Ok(Some(obj)) => {
                    let v = serde_json::to_value(&obj).unwrap();
                    let found = lookup(&v, &e.path);
                    seen = found.map_or("no such field".into(), as_text);
                    if let Some(why) = lookup(&v, "status.statusReason") {
                        seen = format!("{seen} (statusReason: {})", as_text(why));
                    }
                    holds(c, found)
                }
                Ok(None) => {
                    seen = "no such object".into();
                    false
                }
                Err(err) => {
                    seen = err.to_string();
                    false
                }
            },
        };
        if ok {
            return Ok(());
        }
        if start.elapsed() > PROMISE_WAIT {
            return Err(format!("{e} did not hold within {PROMISE_WAIT:?}; found: {seen}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists: the demo, the README and the chart's NOTES.txt use it")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| {
            let name = format!("examples/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// What stands in for a real account's ids when the ec2 example is applied against moto.
struct MotoAccount {
    subnets: Vec<String>,
    image: String,
    /// moto, where the operator reaches it and where the real node's pods do.
    url: String,
    url_for_pods: String,
}

async fn moto_account() -> MotoAccount {
    let ec2 = moto().await;
    let (subnets, image) = common::ec2::moto_subnets_and_image().await;
    let templates = ec2.describe_launch_templates().send().await.unwrap();
    if !templates.launch_templates().iter().any(|t| t.launch_template_name() == Some("batch-nodes")) {
        ec2.create_launch_template()
            .launch_template_name("batch-nodes")
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(&image).build(),
            )
            .send()
            .await
            .unwrap();
    }
    let sqs = common::ec2::sqs().await;
    sqs.create_queue().queue_name("uploads").send().await.unwrap();
    let url = moto_url();
    let url_for_pods = std::env::var("BARGE_MOTO_NODE_URL").unwrap_or_else(|_| url.clone());
    MotoAccount { subnets, image, url, url_for_pods }
}

/// The file as applied here: the ec2 example's placeholders become moto's ids.
fn localise(text: &str, aws: &MotoAccount) -> String {
    text.replace("subnet-0example0000000a", &aws.subnets[0])
        .replace("subnet-0example0000000b", aws.subnets.get(1).unwrap_or(&aws.subnets[0]))
        .replace("ami-0example000000000", &aws.image)
        .replace("https://sqs.us-east-1.amazonaws.com", &aws.url)
        .replace("https://s3.us-east-1.amazonaws.com", &aws.url_for_pods)
}

fn kubectl_apply(file: &str, ns: &str, text: &str) {
    let mut child = Command::new("kubectl")
        .args(["apply", "--server-side", "--field-manager", "barge-examples", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (`make test` puts the test bed's there)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply -f {file} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_example_says_what_it_ends_in() {
    let files = example_files();
    assert!(files.len() >= 10, "the gallery has {} files", files.len());
    for (file, text) in &files {
        let list = expectations(file, text).unwrap();
        assert!(!list.is_empty(), "{file} has no `# expect:` line saying what it ends in");
        assert!(text.starts_with("# "), "{file} starts with a comment saying what it shows");
    }
}

#[test]
fn expectation_lines_are_read_as_written() {
    let text = "# expect: BatchJob/a status.phase == SUCCEEDED\n\
                # expect: JobQueue/q status.conditions[Blocked].status == False\n\
                # expect: BatchJob/a event Warning Misconfiguration\n\
                # expect: BatchJob/a status.jobs exists\n";
    let list = expectations("x.yaml", text).unwrap();
    assert_eq!(list[0].check, Check::Equals("SUCCEEDED".into()));
    assert_eq!(list[1].path, "status.conditions[Blocked].status");
    assert_eq!(list[2].check, Check::Event { type_: "Warning".into(), reason: "Misconfiguration".into() });
    assert_eq!(list[3].check, Check::Exists);
    assert!(expectations("x.yaml", "# expect: BatchJob/a status.phase is done").is_err());
    let obj = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "attempts": [{"exitCode": 137}]}});
    assert_eq!(lookup(&obj, "status.conditions[Ready].status"), Some(&Value::from("True")));
    assert!(holds(&Check::Equals("137".into()), lookup(&obj, "status.attempts[0].exitCode")));
    assert!(!holds(&Check::Exists, lookup(&obj, "status.attempts[1]")));
}

#[tokio::test]
async fn every_example_applies_and_reaches_what_its_comment_promises() {
    let client = client().await;
    install_crds(&client).await;
    let aws = moto_account().await;
    let cluster = format!("examples-{}", suffix());
    start_node_bridge(&cluster, HashSet::new());
    let moto = moto_url();
    spawn_operator_for_process(
        "examples",
        &[
            ("BARGE_EC2_PROVIDER", "true"),
            ("BARGE_CLUSTER_NAME", cluster.as_str()),
            ("AWS_ENDPOINT_URL_EC2", moto.as_str()),
            ("AWS_ENDPOINT_URL_SQS", moto.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let ns = namespace(&client, "examples").await;

    // An example that needs the real node is left out where the cluster has none.
    let files: Vec<(String, String)> = example_files()
        .into_iter()
        .filter(|(file, text)| {
            !text.lines().any(|l| l.trim() == "# needs: real-node") || real_node(file).is_some()
        })
        .collect();
    if let Some(node) =
        files.iter().any(|(_, t)| t.contains("# needs: real-node")).then(|| real_node("")).flatten()
    {
        free_real_node(&client, &node, "real-node").await;
    }
    let mut promises = Vec::new();
    for (file, text) in &files {
        kubectl_apply(file, &ns, &localise(text, &aws));
        promises.extend(expectations(file, text).unwrap());
    }
    let checks = promises.iter().map(|e| check(&client, &ns, e));
    let broken: Vec<String> =
        futures::future::join_all(checks).await.into_iter().filter_map(Result::err).collect();

    // Leave the cluster as found: jobs with the namespace, then environments (the ec2 ones
    // terminate their instances on the way out).
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    for e in promises.iter().filter(|e| e.kind == barge::api::ComputeEnvironment::kind(&()).as_ref()) {
        let _ = ces.delete(&e.name, &DeleteParams::default()).await;
    }
    // The nodes an example brings as a stand-in for an existing pool.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let _ = nodes
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("example.barge.dev/node=true"),
        )
        .await;
    assert!(broken.is_empty(), "examples that do not do what they say:\n{}", broken.join("\n"));
}
