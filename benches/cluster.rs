//! The cluster benchmark: on one local control plane, in one run, N single-pod workloads go
//! through three contenders, and their throughputs are compared:
//!
//! 1. **ceiling**: this program creates the N pods itself, 64 at a time (Barge's own pod
//!    creation concurrency): as fast as the apiserver, scheduler and kwok take them;
//! 2. **batch/v1**: N Jobs of one pod each, run by kube-controller-manager's Job controller;
//! 3. **barge**: N BatchJobs through the operator (release build), then one array job.
//!
//! Every pod asks for 1 vCPU and runs 1 s (kwok, `sim.barge.dev/duration`), on nodes that are
//! Ready before the clock starts. Run with `make bench` (or `BENCH_JOBS=1000 make bench`);
//! results go to bench/results/: CSV, a timeline CSV, a Markdown table, and a PNG plot when
//! matplotlib is available (hack/bench-plot.sh).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barge::api::BatchJob;
use barge::api::batch_job::JobPhase;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Concurrent creates, for every contender (Barge creates pods 64 at a time).
const CONCURRENCY: usize = 64;
const POD_SECONDS: &str = "1s";
/// The node shape: an m6i.32xlarge holds 110 pods (the kubelet's limit) of 1 vCPU.
const NODE_VCPUS: usize = 128;
const PODS_PER_NODE: usize = 110;

#[derive(Default)]
struct Progress {
    seen: HashSet<String>,
    done: HashSet<String>,
    first_seen: Option<f64>,
    all_seen: Option<f64>,
    all_done: Option<f64>,
    timeline: Vec<(f64, usize, usize)>,
}

/// Watches objects of kind K: when each appears and when each is done.
fn track<K>(api: Api<K>, labels: &str, n: usize, start: Instant, done: fn(&K) -> bool) -> Arc<Mutex<Progress>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let progress = Arc::new(Mutex::new(Progress::default()));
    let p = progress.clone();
    let config = watcher::Config::default().labels(labels);
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
        while let Some(obj) = events.next().await {
            let Ok(obj) = obj else { continue };
            let t = start.elapsed().as_secs_f64();
            let mut p = p.lock().unwrap();
            let name = obj.name_any();
            if p.seen.insert(name.clone()) {
                p.first_seen.get_or_insert(t);
                if p.seen.len() == n {
                    p.all_seen = Some(t);
                }
            }
            if done(&obj) && p.done.insert(name) && p.done.len() == n {
                p.all_done = Some(t);
            }
            let (s, d) = (p.seen.len(), p.done.len());
            if p.timeline.last().is_none_or(|(lt, _, _)| t - lt >= 0.25) {
                p.timeline.push((t, s, d));
            }
        }
    });
    progress
}

fn pod_done(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn job_done(j: &Job) -> bool {
    j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

fn batch_job_done(j: &BatchJob) -> bool {
    j.status.as_ref().is_some_and(|s| matches!(s.phase, JobPhase::Succeeded | JobPhase::Failed))
}

#[derive(Clone, Debug, Default)]
struct Row {
    contender: String,
    n: usize,
    submit_s: f64,
    first_pod_s: f64,
    all_pods_s: f64,
    all_done_s: f64,
    controller_cpu_s: Option<f64>,
    controller_peak_rss_mib: Option<f64>,
    apiserver_requests: u64,
    timeline: Vec<(f64, usize, usize)>,
    note: String,
}

impl Row {
    fn admission_rate(&self) -> f64 {
        self.n as f64 / self.all_pods_s
    }
    fn e2e_rate(&self) -> f64 {
        self.n as f64 / self.all_done_s
    }
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates every object with bounded concurrency; returns the seconds it took.
async fn create_all<K>(api: &Api<K>, objects: Vec<K>, start: Instant) -> f64
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move {
                let mut tries = 0;
                loop {
                    match api.create(&PostParams::default(), &o).await {
                        Ok(_) => return Ok::<(), kube::Error>(()),
                        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                        Err(e) if tries < 5 => {
                            tries += 1;
                            eprintln!("create failed ({e}); retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("objects are created");
    start.elapsed().as_secs_f64()
}

async fn apiserver_requests(client: &Client) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// CPU seconds (user + system) and peak RSS in MiB of a process, from /proc.
fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 =
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / 100.0, hwm_kib / 1024.0))
}

fn pid_of(component: &str) -> Option<u32> {
    let dir = std::env::var("BARGE_CLUSTER_DIR").ok()?;
    std::fs::read_to_string(format!("{dir}/pids/{component}")).ok()?.trim().parse().ok()
}

async fn fresh_namespace(client: &Client, name: &str) -> Api<Namespace> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
    api
}

async fn drop_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
    let start = Instant::now();
    while api.get_opt(name).await.ok().flatten().is_some() && start.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn pod_spec(selector: Value) -> Value {
    json!({
        "restartPolicy": "Never",
        "nodeSelector": selector,
        "containers": [{"name": "main", "image": "busybox", "command": ["true"],
            "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}],
    })
}

async fn kwok_nodes(client: &Client, count: usize, labels: Value) {
    let api: Api<Node> = Api::all(client.clone());
    let nodes: Vec<Node> = (0..count)
        .map(|i| {
            let mut l = labels.clone();
            l["type"] = json!("kwok");
            serde_json::from_value(json!({
                "metadata": {"name": format!("bench-plain-{i}"), "labels": l,
                    "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "status": {
                    "capacity": {"cpu": NODE_VCPUS.to_string(), "memory": "512Gi", "pods": PODS_PER_NODE.to_string()},
                    "allocatable": {"cpu": NODE_VCPUS.to_string(), "memory": "500Gi", "pods": PODS_PER_NODE.to_string()},
                },
            }))
            .unwrap()
        })
        .collect();
    create_all(&api, nodes, Instant::now()).await;
}

async fn ready_nodes(client: &Client, labels: &str) -> usize {
    let api: Api<Node> = Api::all(client.clone());
    let list = api.list(&kube::api::ListParams::default().labels(labels)).await.unwrap();
    list.items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

async fn finish(
    contender: &str,
    n: usize,
    progress: &Arc<Mutex<Progress>>,
    done: Option<&Arc<Mutex<Progress>>>,
    submit_s: f64,
    requests: u64,
) -> Row {
    let p = progress.lock().unwrap();
    let all_done = done.map_or(p.all_done, |d| d.lock().unwrap().all_done);
    Row {
        contender: contender.into(),
        n,
        submit_s,
        first_pod_s: p.first_seen.unwrap_or(f64::NAN),
        all_pods_s: p.all_seen.unwrap_or(f64::NAN),
        all_done_s: all_done.unwrap_or(f64::NAN),
        apiserver_requests: requests,
        timeline: p.timeline.clone(),
        ..Default::default()
    }
}

async fn ceiling(client: &Client, n: usize) -> Row {
    let ns = "bench-ceiling";
    fresh_namespace(client, ns).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let before = apiserver_requests(client).await;
    let start = Instant::now();
    let progress = track(api.clone(), "bench=ceiling", n, start, pod_done);
    let pods: Vec<Pod> = (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("p-{i}"), "labels": {"bench": "ceiling"},
                    "annotations": {"sim.barge.dev/duration": POD_SECONDS}},
                "spec": pod_spec(json!({"bench": "plain"})),
            }))
            .unwrap()
        })
        .collect();
    let submit_s = create_all(&api, pods, start).await;
    wait_for("ceiling pods to finish", Duration::from_secs(3600), || {
        progress.lock().unwrap().all_done.is_some()
    })
    .await;
    let requests = apiserver_requests(client).await - before;
    let row = finish("ceiling (pods)", n, &progress, None, submit_s, requests).await;
    drop_namespace(client, ns).await;
    row
}

async fn batch_v1(client: &Client, n: usize) -> Row {
    let ns = "bench-batch-v1";
    fresh_namespace(client, ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let kcm = pid_of("kube-controller-manager");
    let cpu_before = kcm.and_then(process_usage).map(|u| u.0);
    let before = apiserver_requests(client).await;
    let start = Instant::now();
    let pod_progress = track(pods, "bench=batch-v1", n, start, pod_done);
    let job_progress = track(jobs.clone(), "bench=batch-v1", n, start, job_done);
    let objects: Vec<Job> = (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("j-{i}"), "labels": {"bench": "batch-v1"}},
                "spec": {"backoffLimit": 0, "template": {
                    "metadata": {"labels": {"bench": "batch-v1"}, "annotations": {"sim.barge.dev/duration": POD_SECONDS}},
                    "spec": pod_spec(json!({"bench": "plain"})),
                }},
            }))
            .unwrap()
        })
        .collect();
    let submit_s = create_all(&jobs, objects, start).await;
    wait_for("Jobs to complete", Duration::from_secs(7200), || {
        job_progress.lock().unwrap().all_done.is_some()
    })
    .await;
    let requests = apiserver_requests(client).await - before;
    let mut row = finish("batch/v1 Job", n, &pod_progress, Some(&job_progress), submit_s, requests).await;
    if let (Some(pid), Some(b)) = (kcm, cpu_before) {
        row.controller_cpu_s = process_usage(pid).map(|u| u.0 - b);
        row.note = "CPU: kube-controller-manager (all its controllers)".into();
    }
    drop_namespace(client, ns).await;
    row
}

fn barge_job(name: &str, queue: &str, array: Option<usize>) -> BatchJob {
    let mut spec = json!({"jobQueue": queue, "container": {"image": "busybox", "command": ["true"],
        "resources": {"vcpus": 1, "memory": "64Mi"}}});
    if let Some(size) = array {
        spec["array"] = json!({"size": size});
    }
    serde_json::from_value(json!({
        "apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": name, "labels": {"bench": "barge"}, "annotations": {"sim.barge.dev/duration": POD_SECONDS}},
        "spec": spec,
    }))
    .unwrap()
}

async fn barge(client: &Client, n: usize, array: usize, nodes: usize) -> (Row, Row) {
    let ns = "bench-barge";
    fresh_namespace(client, ns).await;
    let ssa = PatchParams::apply("barge-bench").force();
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    let vcpus = nodes * NODE_VCPUS;
    let ce = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": "bench"},
        "spec": {"instanceTypes": ["m6i.32xlarge"], "minvCpus": vcpus, "maxvCpus": vcpus, "scaleDownDelaySeconds": 3600}});
    ces.patch("bench", &ssa, &Patch::Apply(&ce)).await.unwrap();
    let queues: Api<barge::api::JobQueue> = Api::all(client.clone());
    let q = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "bench"},
        "spec": {"priority": 1, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "bench"}]}});
    queues.patch("bench", &ssa, &Patch::Apply(&q)).await.unwrap();

    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("run")
        .env("RUST_LOG", "warn")
        .env("BARGE_METRICS_BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join("barge-bench-operator.log")).unwrap())
        .spawn()
        .expect("the barge binary");
    let pid = operator.id();
    // The environment's nodes (minvCpus) are Ready before the clock starts.
    let start_wait = Instant::now();
    loop {
        if ready_nodes(client, "barge.dev/compute-environment=bench").await >= nodes {
            break;
        }
        assert!(start_wait.elapsed() < Duration::from_secs(600), "Barge's nodes did not become ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (cpu0, _) = process_usage(pid).unwrap_or_default();

    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let before = apiserver_requests(client).await;
    let start = Instant::now();
    let pod_progress = track(pods.clone(), "barge.dev/job-name", n, start, pod_done);
    let job_progress = track(jobs.clone(), "bench=barge", n, start, batch_job_done);
    let objects: Vec<BatchJob> = (0..n).map(|i| barge_job(&format!("b-{i}"), "bench", None)).collect();
    let submit_s = create_all(&jobs, objects, start).await;
    wait_for("BatchJobs to succeed", Duration::from_secs(7200), || {
        job_progress.lock().unwrap().all_done.is_some()
    })
    .await;
    let requests = apiserver_requests(client).await - before;
    let mut row = finish("Barge BatchJob", n, &pod_progress, Some(&job_progress), submit_s, requests).await;
    let usage = process_usage(pid);
    row.controller_cpu_s = usage.map(|u| u.0 - cpu0);
    row.controller_peak_rss_mib = usage.map(|u| u.1);
    row.note = format!("peak RSS while holding {n} BatchJobs and their pods");

    // One array job, in a namespace of its own so the pod count starts at zero.
    drop_namespace(client, ns).await;
    let ns = "bench-barge-array";
    fresh_namespace(client, ns).await;
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (cpu1, _) = process_usage(pid).unwrap_or_default();
    let before = apiserver_requests(client).await;
    let start = Instant::now();
    let pod_progress = track(pods, "barge.dev/job-name", array, start, pod_done);
    let parent = track(jobs.clone(), "bench=barge", 1, start, batch_job_done);
    jobs.create(&PostParams::default(), &barge_job("array", "bench", Some(array))).await.unwrap();
    let submit_s = start.elapsed().as_secs_f64();
    wait_for("the array to succeed", Duration::from_secs(7200), || parent.lock().unwrap().all_done.is_some())
        .await;
    let requests = apiserver_requests(client).await - before;
    let mut arr = finish("Barge array", array, &pod_progress, Some(&parent), submit_s, requests).await;
    let usage = process_usage(pid);
    arr.controller_cpu_s = usage.map(|u| u.0 - cpu1);
    arr.controller_peak_rss_mib = usage.map(|u| u.1);
    let status = jobs.get("array").await.unwrap().status.unwrap();
    let size = serde_json::to_vec(&status).unwrap().len();
    let last_pod = pod_progress.lock().unwrap().all_done.unwrap_or(f64::NAN);
    arr.note = format!(
        "parent status {:.1} KiB; parent SUCCEEDED {:.1} s after the last child pod ended",
        size as f64 / 1024.0,
        arr.all_done_s - last_pod
    );
    let _ = operator.kill();
    let _ = operator.wait();
    drop_namespace(client, ns).await;
    (row, arr)
}

fn arg(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() {
    // `cargo bench` also passes `--bench`; everything else comes from the environment.
    let n: usize = arg("BENCH_JOBS").map_or(10_000, |v| v.parse().expect("BENCH_JOBS is a number"));
    let array: usize =
        arg("BENCH_ARRAY").map_or(n.min(10_000), |v| v.parse().expect("BENCH_ARRAY is a number"));
    let out = std::path::PathBuf::from(arg("BENCH_OUT").unwrap_or_else(|| "bench/results".into()));
    std::fs::create_dir_all(&out).unwrap();
    let client =
        Client::try_default().await.expect("KUBECONFIG for the local cluster (make bench starts one)");
    eprintln!("cluster benchmark: N = {n}, array = {array}");

    // Barge's CRDs, and plain nodes for the ceiling and batch/v1.
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    for doc in barge::api::crds_yaml().split("---\n").filter(|d| !d.trim().is_empty()) {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(doc).unwrap();
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("barge-bench").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nodes = n.max(array).div_ceil(PODS_PER_NODE);
    kwok_nodes(&client, nodes, json!({"bench": "plain"})).await;
    let start_wait = Instant::now();
    while ready_nodes(&client, "bench=plain").await < nodes {
        assert!(start_wait.elapsed() < Duration::from_secs(600), "plain nodes did not become ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let mut rows = vec![ceiling(&client, n).await];
    eprintln!("ceiling done: {:.1} s", rows[0].all_done_s);
    rows.push(batch_v1(&client, n).await);
    eprintln!("batch/v1 done: {:.1} s", rows[1].all_done_s);
    let (b, a) = barge(&client, n, array, nodes).await;
    eprintln!("barge done: {:.1} s; array {:.1} s", b.all_done_s, a.all_done_s);
    rows.push(b);
    rows.push(a);
    report(&out, n, &rows);
}

fn report(out: &std::path::Path, n: usize, rows: &[Row]) {
    let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.1}"));
    let mut csv = String::from(
        "contender,n,submit_s,first_pod_s,all_pods_created_s,all_done_s,admission_pods_per_s,end_to_end_per_s,\
         controller_cpu_s,controller_peak_rss_mib,apiserver_requests,note\n",
    );
    let mut timeline = String::from("contender,t_s,pods_created,pods_done\n");
    for r in rows {
        csv += &format!(
            "{},{},{:.2},{:.2},{:.2},{:.2},{:.1},{:.1},{},{},{},\"{}\"\n",
            r.contender,
            r.n,
            r.submit_s,
            r.first_pod_s,
            r.all_pods_s,
            r.all_done_s,
            r.admission_rate(),
            r.e2e_rate(),
            opt(r.controller_cpu_s),
            opt(r.controller_peak_rss_mib),
            r.apiserver_requests,
            r.note
        );
        for (t, s, d) in &r.timeline {
            timeline += &format!("{},{t:.2},{s},{d}\n", r.contender);
        }
    }
    let ceiling = &rows[0];
    let batch = &rows[1];
    let barge = &rows[2];
    let mut md = String::from(
        "| contender | N | all pods created | all done | admission (pods/s) | end-to-end (jobs/s) | \
         controller CPU s | peak RSS MiB | apiserver requests |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {:.1} s | {:.1} s | {:.0} | {:.0} | {} | {} | {} |\n",
            r.contender,
            r.n,
            r.all_pods_s,
            r.all_done_s,
            r.admission_rate(),
            r.e2e_rate(),
            opt(r.controller_cpu_s),
            opt(r.controller_peak_rss_mib),
            r.apiserver_requests
        );
    }
    let ratios: BTreeMap<&str, f64> = BTreeMap::from([
        ("admission, Barge / ceiling (target >= 0.8)", barge.admission_rate() / ceiling.admission_rate()),
        ("admission, Barge / batch/v1", barge.admission_rate() / batch.admission_rate()),
        ("end-to-end, Barge / ceiling", barge.e2e_rate() / ceiling.e2e_rate()),
        ("end-to-end, Barge / batch/v1 (target >= 3)", barge.e2e_rate() / batch.e2e_rate()),
    ]);
    md += "\n";
    for (k, v) in &ratios {
        md += &format!("- {k}: **{v:.2}**\n");
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        md += &format!("- {}: {}\n", r.contender, r.note);
    }
    std::fs::write(out.join(format!("cluster-{n}.csv")), &csv).unwrap();
    std::fs::write(out.join(format!("timeline-{n}.csv")), &timeline).unwrap();
    std::fs::write(out.join(format!("cluster-{n}.md")), &md).unwrap();
    println!("{md}");
}
