//! The Kueue row: the same N one-pod Jobs as the batch/v1 row, queued through Kueue (built
//! from its Go module by `hack/cluster/build.sh kueue`, run out of cluster for this row only:
//! it reconciles every batch/v1 Job, labelled or not).
//!
//! Without Kueue's mutating webhook (no webhook configuration points at it here), Jobs are
//! created suspended and labelled with their LocalQueue, as Kueue's own performance tests
//! create them. Kueue admits each Job's Workload against a ClusterQueue whose quota covers
//! the whole run, and unsuspends it; kube-controller-manager's Job controller then creates
//! its pod.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{
    Owners, Row, Watch, barge_shaped_pod, create_all, drop_namespace, fresh_namespace, job_done, measure,
};

/// Kueue's client-side request limit in this benchmark: Barge's default, so neither
/// controller waits on its own client (kube-controller-manager runs at KCM_QPS/KCM_BURST).
const QPS: u32 = 1000;
const BURST: u32 = 2000;
/// Kueue's own metrics server reads its certificate here when it does not manage its
/// certificates itself (a fixed path in its main).
const METRICS_CERTS: &str = "/etc/kueue/metrics/certs";

/// The built manager and the CRDs of its version: `hack/cluster/build.sh kueue` (a no-op
/// once cached), then its `paths`.
fn build() -> Result<(PathBuf, PathBuf), String> {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/build.sh");
    let status = Command::new(&build).arg("kueue").status().map_err(|e| format!("{build:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{} kueue failed ({status})", build.display()));
    }
    let paths = Command::new(&build).arg("paths").output().map_err(|e| e.to_string())?;
    let dir = String::from_utf8_lossy(&paths.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("KUEUE_BIN=").map(PathBuf::from))
        .ok_or("build.sh paths names no KUEUE_BIN")?;
    Ok((dir.join("kueue"), dir.join("crds")))
}

/// A self-signed certificate and key (Kueue's webhook and metrics servers start with one;
/// nothing connects to either here).
fn self_signed(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("openssl: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("openssl failed in {}", dir.display()))
}

async fn apply_crds(client: &Client, dir: &Path) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply("barge-bench").force();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        for doc in text.split("\n---").filter(|d| d.contains("kind: CustomResourceDefinition")) {
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(doc).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = crd.name_any();
            api.patch(&name, &ssa, &Patch::Apply(&crd)).await.map_err(|e| format!("CRD {name}: {e}"))?;
            names.push(name);
        }
    }
    let start = Instant::now();
    for name in names {
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status?.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("CRD {name} not established after 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Kueue's manager as its own process.
struct Manager {
    child: Child,
    /// The directory this run made for the metrics certificate (removed again at stop).
    made: Option<PathBuf>,
    state: PathBuf,
}

impl Manager {
    async fn start(binary: &Path) -> Result<Manager, String> {
        let state = std::env::temp_dir().join(format!("barge-bench-kueue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        self_signed(&state.join("webhook-certs"))?;
        let metrics = Path::new(METRICS_CERTS);
        // The outermost directory of the path that does not exist yet.
        let made = metrics.ancestors().filter(|p| !p.exists()).last().map(Path::to_path_buf);
        if !metrics.join("tls.crt").exists() {
            self_signed(metrics)
                .map_err(|e| format!("Kueue reads its metrics certificate at {METRICS_CERTS}: {e}"))?;
        }
        let (health, webhook) = (super::free_port(), super::free_port());
        let config = format!(
            "apiVersion: config.kueue.x-k8s.io/v1beta2\n\
             kind: Configuration\n\
             namespace: kueue-system\n\
             health:\n  healthProbeBindAddress: 127.0.0.1:{health}\n\
             metrics:\n  bindAddress: \"0\"\n\
             webhook:\n  host: 127.0.0.1\n  port: {webhook}\n  certDir: {}\n\
             leaderElection:\n  leaderElect: false\n\
             internalCertManagement:\n  enable: false\n\
             clientConnection:\n  qps: {QPS}\n  burst: {BURST}\n\
             integrations:\n  frameworks: [batch/job]\n",
            state.join("webhook-certs").display()
        );
        let config_path = state.join("config.yaml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(std::env::temp_dir().join("barge-bench-kueue.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .arg("--feature-gates=VisibilityOnDemand=false")
            .arg("--zap-log-level=error")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let mut manager = Manager { child, made, state };
        let start = Instant::now();
        let ready = format!("http://127.0.0.1:{health}/readyz");
        loop {
            if let Some(status) = manager.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("Kueue exited at start ({status}); see barge-bench-kueue.log"));
            }
            if http_ok(&ready) {
                return Ok(manager);
            }
            if start.elapsed() > Duration::from_secs(120) {
                manager.stop().await;
                return Err("Kueue was not ready after 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(made) = &self.made {
            let _ = std::fs::remove_dir_all(made);
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A plain HTTP GET answered 200.
fn http_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut conn) = std::net::TcpStream::connect(host) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn.write_all(format!("GET /{path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
}

fn dynamic(client: &Client, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind);
    let resource = ApiResource::from_gvk(&gvk);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

async fn apply(api: &Api<DynamicObject>, kind: &str, value: Value) -> Result<(), String> {
    let mut value = value;
    value["apiVersion"] = json!("kueue.x-k8s.io/v1beta2");
    value["kind"] = json!(kind);
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let object: DynamicObject = serde_json::from_value(value).map_err(|e| e.to_string())?;
    api.patch(&name, &PatchParams::apply("barge-bench").force(), &Patch::Apply(&object))
        .await
        .map(|_| ())
        .map_err(|e| format!("{kind} {name}: {e}"))
}

/// The queueing objects: a ResourceFlavor, a ClusterQueue whose quota is what `n` of `pod`
/// request (every resource they ask for), and a LocalQueue in `ns`; waits until the
/// ClusterQueue is active.
async fn queues(client: &Client, ns: &str, pod: &Pod, n: usize) -> Result<(), String> {
    let mut quota: Vec<(String, String)> = Vec::new();
    for c in pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default() {
        for (name, q) in c.resources.as_ref().and_then(|r| r.requests.as_ref()).into_iter().flatten() {
            let total = match name.as_str() {
                "cpu" => barge::resources::parse_millicpu(&q.0).map(|m| format!("{}m", m * n as u64)),
                "memory" => barge::resources::parse_mib(&q.0).map(|m| format!("{}Mi", m * n as u64)),
                other => return Err(format!("no quota for {other} in this benchmark")),
            };
            quota.push((name.clone(), total.map_err(|e| format!("{name}={}: {e}", q.0))?));
        }
    }
    let resources: Vec<Value> =
        quota.iter().map(|(name, v)| json!({"name": name, "nominalQuota": v})).collect();
    let covered: Vec<&str> = quota.iter().map(|(name, _)| name.as_str()).collect();
    apply(&dynamic(client, "ResourceFlavor", None), "ResourceFlavor", json!({"metadata": {"name": "bench"}}))
        .await?;
    let cq = dynamic(client, "ClusterQueue", None);
    apply(&cq, "ClusterQueue", json!({"metadata": {"name": "bench"}, "spec": {
        "namespaceSelector": {},
        "resourceGroups": [{"coveredResources": covered, "flavors": [{"name": "bench", "resources": resources}]}],
    }}))
    .await?;
    apply(
        &dynamic(client, "LocalQueue", Some(ns)),
        "LocalQueue",
        json!({"metadata": {"name": "bench", "namespace": ns},
        "spec": {"clusterQueue": "bench"}}),
    )
    .await?;
    let start = Instant::now();
    loop {
        let active = cq.get("bench").await.ok().is_some_and(|o| {
            o.data["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Active" && c["status"] == "True"))
        });
        if active {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err("the ClusterQueue did not become active in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The pinned version, from hack/cluster/versions.env.
fn version() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/versions.env");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("KUEUE_VERSION=").map(str::to_string)))
        .unwrap_or_else(|| "(version unknown)".into())
}

/// The Kueue row, or why it could not run (the benchmark goes on without it).
pub async fn row(client: &Client, n: usize) -> Result<Row, String> {
    let (binary, crds) = build()?;
    apply_crds(client, &crds).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let system = serde_json::from_value(json!({"metadata": {"name": "kueue-system"}})).unwrap();
    let _ = namespaces.create(&Default::default(), &system).await;
    let ns = "bench-kueue";
    fresh_namespace(client, ns).await;
    let manager = Manager::start(&binary).await?;
    let shape = barge_shaped_pod(0, "kueue");
    if let Err(e) = queues(client, ns, &shape, n).await {
        manager.stop().await;
        return Err(e);
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let objects: Vec<Job> = (0..n)
        .map(|i| {
            let pod = barge_shaped_pod(i, "kueue");
            serde_json::from_value(json!({
                "metadata": {"name": format!("k-{i}"),
                    "labels": {"bench": "kueue", "kueue.x-k8s.io/queue-name": "bench"}},
                "spec": {"suspend": true, "backoffLimit": 0, "template": {
                    "metadata": {"labels": pod.metadata.labels, "annotations": pod.metadata.annotations},
                    "spec": pod.spec,
                }},
            }))
            .unwrap()
        })
        .collect();
    let w = Watch {
        contender: "Kueue + batch/v1 Job".into(),
        n,
        pods: (Api::namespaced(client.clone(), ns), "bench=kueue"),
        owners: Some(Owners { api: jobs.clone(), labels: "bench=kueue", count: n, done: job_done }),
        controller: Some(manager.pid()),
    };
    let mut row = measure(client, w, |start| create_all(&jobs, objects, start)).await;
    row.note = format!(
        "Kueue {} (qps {QPS}, burst {BURST}; CPU and RSS: Kueue alone): one ClusterQueue with quota for all {n}; \
         kube-controller-manager's Job controller creates the pods it admits",
        version()
    );
    // Kueue's finalizers on its objects go while it runs.
    drop_namespace(client, ns).await;
    for kind in ["ClusterQueue", "ResourceFlavor"] {
        let _ = dynamic(client, kind, None).delete("bench", &Default::default()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    manager.stop().await;
    Ok(row)
}
