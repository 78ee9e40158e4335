//! The Karpenter contender: Karpenter's kwok cloud provider (sigs.k8s.io/karpenter, built by
//! `hack/cluster/build.sh karpenter`) provisioning nodes for pending batch/v1 Jobs, from the
//! same instance catalogue and prices as Barge's local provider, with consolidation on.

use std::path::{Path, PathBuf};

use barge::capacity::InstanceType;
use barge::capacity::spot::SpotMarket;
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::trace::TraceJob;

pub const NODEPOOL: &str = "cost";
pub const ZONE: &str = "test-zone-a";

/// Karpenter's instance types, exported from Barge's catalogue: an On-Demand offering at
/// the list price and a Spot one at the simulated market's price at `t` (Karpenter's kwok
/// provider holds one price per offering).
pub fn instance_types(types: &[&'static InstanceType], market: &SpotMarket, t: f64) -> Value {
    let offering = |capacity: &str, price: f64| {
        json!({"Price": price, "Available": true, "Requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [capacity]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [ZONE]}]})
    };
    Value::Array(
        types
            .iter()
            .map(|t_| {
                let mut resources = json!({"cpu": t_.vcpus.to_string(), "memory": format!("{}Mi", t_.memory_mib), "pods": "110"});
                if t_.gpus > 0 {
                    resources["nvidia.com/gpu"] = json!(t_.gpus.to_string());
                }
                json!({"name": t_.name, "architecture": "amd64", "operatingSystems": ["linux"],
                    "resources": resources,
                    "offerings": [offering("on-demand", t_.price), offering("spot", market.price(t_, t))]})
            })
            .collect(),
    )
}

fn dynamic(client: &Client, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural))
}

async fn apply(api: &Api<DynamicObject>, name: &str, obj: Value) {
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.patch(name, &PatchParams::apply("barge-bench").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// Applies Karpenter's CRDs (from its module, beside the binary) server-side.
pub fn apply_crds(bin_dir: &Path, kubectl: &str) {
    let status = std::process::Command::new(kubectl)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(bin_dir.join("crds"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("kubectl");
    assert!(status.success(), "applying Karpenter's CRDs failed");
}

/// The node class and the node pool: these types, Spot and On-Demand, consolidation when
/// empty or underutilised after 30 s (Barge's environments use scaleDownDelaySeconds 30).
pub async fn setup(client: &Client, types: &[&'static InstanceType]) {
    let classes = dynamic(client, "karpenter.kwok.sh", "v1alpha1", "KWOKNodeClass", "kwoknodeclasses");
    apply(
        &classes,
        "default",
        json!({"apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass",
        "metadata": {"name": "default"}, "spec": {}}),
    )
    .await;
    let pools = dynamic(client, "karpenter.sh", "v1", "NodePool", "nodepools");
    let names: Vec<&str> = types.iter().map(|t| t.name).collect();
    apply(
        &pools,
        NODEPOOL,
        json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool",
        "metadata": {"name": NODEPOOL},
        "spec": {
            "template": {"spec": {
                "requirements": [
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": names},
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                ],
                "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"},
                "expireAfter": "Never"}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "30s"},
            "limits": {"cpu": "2048"}}}),
    )
    .await;
}

/// Starts Karpenter out of cluster against `kubeconfig`.
pub fn start(bin_dir: &Path, kubeconfig: &str, types_file: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    let port = |p: u16| p.to_string();
    std::process::Command::new(bin_dir.join("karpenter"))
        .env("KUBECONFIG", kubeconfig)
        .env("INSTANCE_TYPES_FILE_PATH", types_file)
        .env("DISABLE_LEADER_ELECTION", "true")
        .env("METRICS_PORT", port(super::free_port()))
        .env("HEALTH_PROBE_PORT", port(super::free_port()))
        // Barge's own client limits.
        .env("KUBE_CLIENT_QPS", "1000")
        .env("KUBE_CLIENT_BURST", "2000")
        .env("LOG_LEVEL", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the karpenter binary (hack/cluster/build.sh karpenter)")
}

/// A trace job as the batch/v1 Job a Karpenter user submits: its pod on Karpenter's nodes
/// (the node pool's label), marked so that consolidation never evicts it, retried like
/// Barge's jobs (three attempts).
pub fn job(j: &TraceJob) -> Job {
    let mut requests =
        json!({"cpu": format!("{}m", (j.vcpus * 1000.0) as u64), "memory": format!("{}Mi", j.memory_mib)});
    if j.gpus > 0 {
        requests["nvidia.com/gpu"] = json!(j.gpus.to_string());
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("job-{}", j.id), "labels": {"bench": "cost"}},
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {
                    "labels": {"bench": "cost", "cost.barge.dev/job": j.id.to_string()},
                    "annotations": {"karpenter.sh/do-not-disrupt": "true",
                                    "sim.barge.dev/duration": format!("{}s", j.duration_s)}},
                "spec": {
                    "restartPolicy": "Never",
                    "priorityClassName": if j.high { "cost-high" } else { "cost-low" },
                    "nodeSelector": {"karpenter.sh/nodepool": NODEPOOL},
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "work"],
                        "resources": {"requests": requests.clone(), "limits": requests}}]}}}
    }))
    .unwrap()
}

/// Removes the node pool (Karpenter then removes its nodes) and waits for them to go.
pub async fn teardown(client: &Client) {
    let pools = dynamic(client, "karpenter.sh", "v1", "NodePool", "nodepools");
    let _ = pools.delete(NODEPOOL, &Default::default()).await;
}

pub fn jobs_api(client: &Client, ns: &str) -> Api<Job> {
    Api::namespaced(client.clone(), ns)
}

/// Where `build.sh karpenter` put Karpenter and its CRDs.
pub fn bin_dir() -> PathBuf {
    let out =
        std::process::Command::new("hack/cluster/build.sh").arg("paths").output().expect("build.sh paths");
    let paths = String::from_utf8_lossy(&out.stdout);
    let dir = paths
        .lines()
        .find_map(|l| l.strip_prefix("KARPENTER_BIN="))
        .expect("build.sh names KARPENTER_BIN")
        .to_string();
    PathBuf::from(dir)
}
