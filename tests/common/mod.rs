//! Shared helpers for the integration tests: a client for the local control plane that
//! `make test` starts, kwok nodes, namespaces, and polling until state is reached.
#![allow(dead_code)]

pub mod batch;
pub mod chaos;
pub mod ec2;
pub mod env;

#[allow(unused_imports)]
pub use env::{Env, WAIT, vcpus_of};

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Config};
use serde_json::json;

/// A client for the cluster `KUBECONFIG` points at. Panics with a clear message when
/// there is none: these tests need `make test` (or `hack/cluster.sh up`).
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the integration tests with `make test` or after \
         `eval \"$(hack/cluster.sh env)\"`"
    );
    let mut config = Config::infer().await.expect("a kubeconfig for the local cluster");
    config.read_timeout = Some(Duration::from_secs(60));
    Client::try_from(config).expect("a client")
}

/// A fresh namespace named `<prefix>-<random>`, so tests sharing the cluster do not meet.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", suffix());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    name
}

pub fn suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{}", nanos % 0xfffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Creates a kwok-managed node with the given capacity and labels.
pub async fn kwok_node(
    client: &Client,
    name: &str,
    cpu: &str,
    memory: &str,
    labels: BTreeMap<String, String>,
) -> Node {
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"providerID": format!("kwok://{name}")},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
        }
    }))
    .unwrap();
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap()
}

pub async fn delete_node(client: &Client, name: &str) {
    let _ = Api::<Node>::all(client.clone()).delete(name, &DeleteParams::default()).await;
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs (or updates) Barge's CRDs by server-side apply and waits until they serve.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in barge::api::crds_yaml().split("---\n").filter(|d| !d.trim().is_empty()) {
        let crd: CustomResourceDefinition = serde_yaml::from_str(doc).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("barge-tests").force(), &Patch::Apply(&crd)).await.unwrap();
        eventually("CRD established", Duration::from_secs(30), || async {
            let c = api.get(&name).await.ok()?;
            c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }
}

/// The local cluster's real node (`hack/cluster.sh up` starts it where the machine allows
/// it and says so in `BARGE_REAL_NODE`), or `None` with a note that `what` is skipped. With
/// `BARGE_REQUIRE_REAL_NODE=1` (CI sets it) a missing real node fails the test instead.
pub fn real_node(what: &str) -> Option<String> {
    match std::env::var("BARGE_REAL_NODE").ok().filter(|n| !n.is_empty()) {
        Some(node) => Some(node),
        None if std::env::var("BARGE_REQUIRE_REAL_NODE").is_ok_and(|v| v == "1") => panic!(
            "{what} needs the real node, and BARGE_REQUIRE_REAL_NODE=1 asks for it: `hack/cluster.sh up` \
             did not start it (its log line says why)"
        ),
        None => {
            eprintln!(
                "skipped: {what} needs the real node, which this cluster does not have (hack/cluster.sh up --no-real-node, or not root)"
            );
            None
        }
    }
}

/// Waits until the real node is in no compute environment but `ce`, after deleting the
/// environments other tests make of it (an operator of this process finishes their deletion
/// and releases the node, also when the test that made them has ended).
pub async fn free_real_node(client: &Client, node: &str, ce: &str) {
    use barge::api::{ComputeEnvironment, LABEL_COMPUTE_ENVIRONMENT};
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    for other in ["real-node", "real-tests", "log-tests", "engine-tests", "trigger-tests"]
        .into_iter()
        .filter(|o| *o != ce)
    {
        let _ = ces.delete(other, &DeleteParams::default()).await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(&format!("the real node free for {ce}"), Duration::from_secs(90), || async {
        let n = nodes.get(node).await.ok()?;
        let held = n.metadata.labels.as_ref().and_then(|l| l.get(LABEL_COMPUTE_ENVIRONMENT)).cloned();
        (held.is_none() || held.as_deref() == Some(ce)).then_some(())
    })
    .await;
}

/// Where operator logs go (kept after the run, for reading a failure).
pub fn log_path(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.log"))
}

/// Starts `barge run` as a child process that dies with the test process.
pub fn spawn_operator(log: &str) -> std::process::Child {
    spawn_operator_with(log, &[])
}

/// Starts `barge run` with extra environment variables.
pub fn spawn_operator_with(log: &str, env: &[(&str, &str)]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log_path(log)).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_barge"));
    cmd.arg("run").env("RUST_LOG", "info,barge=debug").stdout(out.try_clone().unwrap()).stderr(out);
    // Each operator serves metrics on a port of its own unless a test asks for one.
    cmd.env("BARGE_METRICS_BIND", "127.0.0.1:0");
    cmd.envs(env.iter().copied());
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child with us.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("barge binary starts")
}

/// One operator for every test of this binary, started on a thread that lives as long
/// as the process (the child is killed when the process exits).
pub async fn shared_operator(client: &Client) {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    install_crds(client).await;
    STARTED.get_or_init(|| spawn_operator_for_process("shared", &[]));
}

/// Starts an operator on a thread that lives as long as the test process: the child gets
/// SIGKILL when the thread that started it ends, and this one never does.
pub fn spawn_operator_for_process(log: &str, env: &[(&str, &str)]) {
    let log = log.to_string();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut child = spawn_operator_with(&log, &env);
        tx.send(()).unwrap();
        // Lives until the operator exits (it should not before the tests end).
        let status = child.wait();
        eprintln!("operator exited: {status:?}; see {}", log_path(&log).display());
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap();
}

/// Server-side applies any object given as JSON.
pub async fn apply<K>(api: &Api<K>, obj: serde_json::Value) -> kube::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::api::{Patch, PatchParams};
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(&name, &PatchParams::apply("barge-tests").force(), &Patch::Apply(&obj)).await
}

/// The image the real node has (built locally; nothing is pulled).
pub const REAL_NODE_IMAGE: &str = "busybox:1.35";

/// A container of the real node's image running `script`, a quarter of a vCPU.
pub fn real_container(script: &str) -> serde_json::Value {
    json!({"image": REAL_NODE_IMAGE, "command": ["sh", "-c", script], "resources": {"vcpus": 0.25, "memory": "64Mi"}})
}

/// Applies BatchJob `name` to `queue` in `ns` with the rest of its spec.
pub async fn submit_job(
    client: &Client,
    ns: &str,
    queue: &str,
    name: &str,
    spec: serde_json::Value,
) -> Api<barge::api::BatchJob> {
    let jobs: Api<barge::api::BatchJob> = Api::namespaced(client.clone(), ns);
    let mut full = json!({"jobQueue": queue});
    full.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
    apply(
        &jobs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": name}, "spec": full}),
    )
    .await
    .unwrap();
    jobs
}

/// The job once it is in `phase` (within `timeout`).
pub async fn job_in_phase(
    jobs: &Api<barge::api::BatchJob>,
    name: &str,
    phase: barge::api::batch_job::JobPhase,
    timeout: Duration,
) -> barge::api::BatchJob {
    eventually(&format!("{name} {phase:?}"), timeout, || async {
        let j = jobs.get(name).await.ok()?;
        (j.status.as_ref()?.phase == phase).then_some(j)
    })
    .await
}

/// The real node as unmanaged compute environment `ce` and queue `queue` of their own,
/// once the environments other tests made of it let it go.
pub async fn real_node_environment(client: &Client, node: &str, ce: &str, queue: &str) {
    use barge::api::{ComputeEnvironment, JobQueue};
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    // The gallery's example environment may still hold the node: its operator ended with
    // its test. Ours finishes that deletion and releases the node.
    free_real_node(client, node, ce).await;
    apply(
        &ces,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
        "metadata": {"name": ce},
        "spec": {"provider": "unmanaged", "maxvCpus": 2,
                 "nodeSelector": {"matchLabels": {"barge.dev/real-node": "true"}},
                 "nodeTaints": [{"key": "barge.dev/real-node", "value": "true", "effect": "NoSchedule"}]}}),
    )
    .await
    .unwrap();
    let queues: Api<JobQueue> = Api::all(client.clone());
    apply(
        &queues,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue",
        "metadata": {"name": queue},
        "spec": {"priority": 1, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": ce}]}}),
    )
    .await
    .unwrap();
    eventually("the real node in the environment", WAIT, || async {
        (ces.get(ce).await.ok()?.status?.nodes == 1).then_some(())
    })
    .await;
}
