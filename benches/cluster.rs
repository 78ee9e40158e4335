//! The cluster benchmark: on one local control plane, in one run, N single-pod workloads go
//! through four contenders, and their throughputs are compared:
//!
//! 1. **ceiling**: this program creates the N pods itself, 64 at a time (Barge's own pod
//!    creation concurrency), shaped as Barge shapes them: as fast as the apiserver,
//!    scheduler and kwok take them;
//! 2. **batch/v1**: N Jobs of one pod each, run by kube-controller-manager's Job controller;
//! 3. **Kueue**: the same Jobs created suspended for Kueue to admit (benches/cluster/kueue.rs);
//! 4. **barge**: N BatchJobs through the operator (release build), submitted and run at once;
//!    then N BatchJobs held in a DISABLED queue until the operator has taken each in, and
//!    released by enabling it (admission from a backlog, Barge's own rate); then one array job.
//!
//! 5. **turnaround**: a 64-vCPU environment saturated with 1-s jobs, then with 10-s jobs: how
//!    much of it is busy, and how soon a pod starts on the room another freed
//!    (benches/cluster/turnaround.rs).
//!
//! `BENCH_LIMITS=off,1000/2000,200/400` runs the submit-and-run scenario again under each
//! client-side apiserver request limit (QPS/burst; `BENCH_BARGE=0` skips the three above),
//! with the time requests waited for it.
//!
//! `BENCH_HOLD=100000` adds a hold: that many BatchJobs waiting in the DISABLED queue, with
//! the operator's peak RSS and its scheduling pass time over them (its own histogram).
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

#[path = "cluster/kueue.rs"]
mod kueue;
#[path = "cluster/turnaround.rs"]
mod turnaround;

/// The ceiling's two runs: first, and last (after batch/v1 and Barge).
const CEILING_FIRST: &str = "ceiling (pods)";
const CEILING_LAST: &str = "ceiling again (pods)";
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

/// Held in a DISABLED queue, with the reason written: the operator has taken the job in.
fn batch_job_held(j: &BatchJob) -> bool {
    j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Runnable && s.status_reason.is_some())
}

#[derive(Clone, Debug, Default)]
struct Row {
    contender: String,
    n: usize,
    submit_s: f64,
    first_pod_s: f64,
    all_pods_s: f64,
    all_done_s: f64,
    /// When the last pod ended (for Barge, before its BatchJob says so).
    pods_done_s: f64,
    controller_cpu_s: Option<f64>,
    controller_peak_rss_mib: Option<f64>,
    /// The apiserver's requests meanwhile, by verb and resource.
    requests_by_kind: BTreeMap<String, u64>,
    /// CPU seconds of kube-apiserver and etcd, which every contender shares.
    apiserver_cpu_s: Option<f64>,
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
    fn apiserver_requests(&self) -> u64 {
        self.requests_by_kind.values().sum()
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

/// The apiserver's requests so far, by verb and resource (`create pods`, `patch
/// batchjobs/status`, ...).
async fn apiserver_requests(client: &Client) -> BTreeMap<String, u64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            let at = labels.find(&format!("{name}=\""))? + name.len() + 2;
            Some(&labels[at..at + labels[at..].find('"')?])
        };
        let resource = match (label("resource"), label("subresource")) {
            (Some(r), Some(sub)) if !sub.is_empty() => format!("{r}/{sub}"),
            (r, _) => r.unwrap_or("").to_string(),
        };
        let kind = format!("{} {resource}", label("verb").unwrap_or("?"));
        *counts.entry(kind).or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
    }
    counts
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

/// The sum of every series of a metric on the operator's /metrics.
fn operator_metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let series = text.lines().filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])));
    Some(series.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

/// The operator's own process: `spawned` itself, or under BENCH_OPERATOR_WRAP the
/// wrapper's descendant that runs the barge binary.
fn operator_pid(spawned: u32) -> u32 {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_barge"));
    let parent = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok()
    };
    for _ in 0..100 {
        let found = std::fs::read_dir("/proc").into_iter().flatten().flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            let mut up = pid;
            while up > 1 && up != spawned {
                up = parent(up)?;
            }
            (up == spawned && exe == binary).then_some(pid)
        });
        if let Some(pid) = found {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    spawned
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// CPU seconds kube-apiserver and etcd have used so far.
fn server_cpu_s() -> Option<f64> {
    ["kube-apiserver", "etcd"].into_iter().map(|c| pid_of(c).and_then(process_usage).map(|u| u.0)).sum()
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

/// The pod Barge creates for one of the benchmark's BatchJobs (same labels, annotations,
/// environment, requests), for the ceiling and batch/v1 to create in its place: same pod
/// shape for every contender. It has no owner (there is no such BatchJob) and runs on the
/// plain nodes.
fn barge_shaped_pod(i: usize, bench: &str) -> Pod {
    let mut job = barge_job(&format!("p-{i}"), "bench", None);
    job.metadata.uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
    let ce: barge::api::ComputeEnvironment = serde_json::from_value(json!({
        "apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": "bench"},
        "spec": {"instanceTypes": ["m6i.32xlarge"], "minvCpus": 0, "maxvCpus": 128}}))
    .unwrap();
    let work = barge::api::job_definition::work(&job.spec, None).expect("a valid job");
    let mut pod = barge::controller::pod::build_pod(
        &job,
        &work,
        &ce,
        0,
        None,
        &barge::controller::container::PodInputs::none(),
    )
    .expect("a valid job");
    pod.metadata.owner_references = None;
    pod.labels_mut().insert("bench".into(), bench.into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_selector = Some([("bench".to_string(), "plain".to_string())].into());
    }
    pod
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

/// What a measured run watches: its pods, and the objects whose end ends it (if not the
/// pods themselves).
struct Watch<K> {
    contender: String,
    n: usize,
    pods: (Api<Pod>, &'static str),
    owners: Option<Owners<K>>,
    /// The controller process to charge CPU seconds and peak RSS to.
    controller: Option<u32>,
}

/// The objects that own the pods: `count` of them, under `labels`, each done when `done`.
struct Owners<K> {
    api: Api<K>,
    labels: &'static str,
    count: usize,
    done: fn(&K) -> bool,
}

/// One contender's run: counts apiserver requests, starts the clock and the trackers,
/// calls `submit` (which returns how long submitting took), and waits until all is done.
async fn measure<K, F>(client: &Client, w: Watch<K>, submit: impl FnOnce(Instant) -> F) -> Row
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: std::future::Future<Output = f64>,
{
    let cpu0 = w.controller.and_then(process_usage).map(|u| u.0);
    let before = apiserver_requests(client).await;
    let server0 = server_cpu_s();
    let start = Instant::now();
    let pods = track(w.pods.0, w.pods.1, w.n, start, pod_done);
    let owners = w.owners.map(|o| track(o.api, o.labels, o.count, start, o.done));
    let submit_s = submit(start).await;
    let done = owners.as_ref().unwrap_or(&pods);
    wait_for(&w.contender, Duration::from_secs(7200), || done.lock().unwrap().all_done.is_some()).await;
    let requests: BTreeMap<String, u64> = apiserver_requests(client)
        .await
        .into_iter()
        .filter_map(|(kind, n)| {
            let since = n - before.get(&kind).copied().unwrap_or(0);
            (since > 0).then_some((kind, since))
        })
        .collect();
    let server_cpu = server_cpu_s().zip(server0).map(|(a, b)| a - b);
    let usage = w.controller.and_then(process_usage);
    // Read before taking the pods' lock: without owners, `done` is that same lock.
    let all_done_s = done.lock().unwrap().all_done.unwrap_or(f64::NAN);
    let p = pods.lock().unwrap();
    Row {
        contender: w.contender.clone(),
        n: w.n,
        submit_s,
        first_pod_s: p.first_seen.unwrap_or(f64::NAN),
        all_pods_s: p.all_seen.unwrap_or(f64::NAN),
        all_done_s,
        pods_done_s: p.all_done.unwrap_or(f64::NAN),
        controller_cpu_s: usage.zip(cpu0).map(|(u, c)| u.0 - c),
        controller_peak_rss_mib: usage.map(|u| u.1),
        requests_by_kind: requests,
        apiserver_cpu_s: server_cpu,
        timeline: p.timeline.clone(),
        note: String::new(),
    }
}

/// `contender` names the run: the ceiling is measured before the others and again after them.
async fn ceiling(client: &Client, n: usize, contender: &'static str) -> Row {
    let ns = "bench-ceiling";
    fresh_namespace(client, ns).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods: Vec<Pod> = (0..n).map(|i| barge_shaped_pod(i, "ceiling")).collect();
    let w = Watch::<Pod> {
        contender: contender.into(),
        n,
        pods: (api.clone(), "bench=ceiling"),
        owners: None,
        controller: None,
    };
    let row = measure(client, w, |start| create_all(&api, pods, start)).await;
    drop_namespace(client, ns).await;
    row
}

async fn batch_v1(client: &Client, n: usize) -> Row {
    let ns = "bench-batch-v1";
    fresh_namespace(client, ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let objects: Vec<Job> = (0..n)
        .map(|i| {
            let pod = barge_shaped_pod(i, "batch-v1");
            serde_json::from_value(json!({
                "metadata": {"name": format!("j-{i}"), "labels": {"bench": "batch-v1"}},
                "spec": {"backoffLimit": 0, "template": {
                    "metadata": {"labels": pod.metadata.labels, "annotations": pod.metadata.annotations},
                    "spec": pod.spec,
                }},
            }))
            .unwrap()
        })
        .collect();
    let w = Watch {
        contender: "batch/v1 Job".into(),
        n,
        pods: (pods, "bench=batch-v1"),
        owners: Some(Owners { api: jobs.clone(), labels: "bench=batch-v1", count: n, done: job_done }),
        controller: pid_of("kube-controller-manager"),
    };
    let mut row = measure(client, w, |start| create_all(&jobs, objects, start)).await;
    // kube-controller-manager runs every controller: its memory says nothing of the Job one.
    row.controller_peak_rss_mib = None;
    row.note = "CPU: kube-controller-manager (all its controllers)".into();
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

/// A held job as a user applies it with kubectl: a label, and kubectl's copy of the
/// manifest. It never runs, so it carries none of the test bed's `sim.barge.dev/`
/// annotations (the operator keeps those, to copy them to pods: about 0.5 KB a job more).
fn held_job(name: &str) -> BatchJob {
    let mut job = barge_job(name, "bench-held", None);
    job.metadata.annotations = None;
    let manifest = serde_json::to_string(&job).unwrap();
    job.metadata.annotations =
        Some([("kubectl.kubernetes.io/last-applied-configuration".to_string(), manifest)].into());
    job
}

/// What holding many BatchJobs costs the operator (`BENCH_HOLD`).
struct Hold {
    jobs: usize,
    taken_in_s: f64,
    peak_rss_mib: f64,
    cpu_s: f64,
    pass_ms: f64,
    passes: f64,
}

fn queue_manifest(name: &str, state: &str) -> Value {
    json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": name},
        "spec": {"priority": 1, "state": state, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "bench"}]}})
}

/// Barge's compute environment (its nodes are Ready before any clock starts) and its two
/// queues: `bench`, enabled, and `bench-held`, disabled until a scenario enables it.
async fn barge_setup(client: &Client, nodes: usize) {
    let ssa = PatchParams::apply("barge-bench").force();
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    let vcpus = nodes * NODE_VCPUS;
    let ce = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": "bench"},
        "spec": {"instanceTypes": ["m6i.32xlarge"], "minvCpus": vcpus, "maxvCpus": vcpus, "scaleDownDelaySeconds": 3600}});
    ces.patch("bench", &ssa, &Patch::Apply(&ce)).await.unwrap();
    let queues: Api<barge::api::JobQueue> = Api::all(client.clone());
    queues.patch("bench", &ssa, &Patch::Apply(&queue_manifest("bench", "ENABLED"))).await.unwrap();
    // Jobs wait here until it is enabled: the backlog scenario and the hold.
    queues.patch("bench-held", &ssa, &Patch::Apply(&queue_manifest("bench-held", "DISABLED"))).await.unwrap();
}

/// Where the operators of one run write their logs.
fn operator_log() -> std::path::PathBuf {
    std::env::temp_dir().join("barge-bench-operator.log")
}

/// The operator (release build) as its own process, with its metrics on `port`.
struct Operator {
    child: std::process::Child,
    /// The barge process itself, under a profiler too (BENCH_OPERATOR_WRAP).
    pid: u32,
    port: u16,
}

impl Operator {
    /// Starts it, and waits until the compute environment's nodes are Ready.
    async fn start(client: &Client, nodes: usize) -> Operator {
        Self::start_with(client, nodes, &[]).await
    }

    /// Starts it with extra environment variables (a request limit, say).
    async fn start_with(client: &Client, nodes: usize, env: &[(&str, String)]) -> Operator {
        let port = free_port();
        // BENCH_OPERATOR_WRAP runs the operator under a profiler (e.g. `heaptrack`, or
        // `perf record -g --`); its CPU and memory figures are then the profiler's.
        let wrap = arg("BENCH_OPERATOR_WRAP").unwrap_or_default();
        let mut command = wrap.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        command.push(env!("CARGO_BIN_EXE_barge").to_string());
        // The operator logs to stdout; a profiler wrapping it may use stderr. Appended: the
        // hold runs an operator of its own after the scenarios' one.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(operator_log()).unwrap();
        let child = std::process::Command::new(&command[0])
            .args(&command[1..])
            .arg("run")
            .env("RUST_LOG", arg("BENCH_OPERATOR_LOG").unwrap_or_else(|| "warn".into()))
            .env("BARGE_METRICS_BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the barge binary");
        let pid = operator_pid(child.id());
        // The environment's nodes (minvCpus) are Ready before the clock starts.
        let start_wait = Instant::now();
        while ready_nodes(client, "barge.dev/compute-environment=bench").await < nodes {
            assert!(start_wait.elapsed() < Duration::from_secs(600), "Barge's nodes did not become ready");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Operator { child, pid, port }
    }

    /// SIGTERM, so that a profiler wrapping the operator writes its data out; then SIGKILL.
    async fn stop(mut self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let stop_wait = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && stop_wait.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Barge's three scenarios, on a running operator: N BatchJobs submitted and run at once,
/// N from a backlog, and one array job.
async fn barge(client: &Client, operator: &Operator, n: usize, array: usize) -> Vec<Row> {
    let watch = |contender: &str, ns: &str, n| Watch {
        contender: contender.into(),
        n,
        pods: (Api::namespaced(client.clone(), ns), "barge.dev/job-name"),
        owners: Some(Owners {
            api: Api::namespaced(client.clone(), ns),
            labels: "bench=barge",
            count: n,
            done: batch_job_done,
        }),
        controller: Some(operator.pid),
    };

    let mut row = submit_and_run(client, operator, n, "Barge BatchJob").await;
    row.note = format!("submitted and run at once; peak RSS while holding {n} BatchJobs and their pods");
    let ssa = PatchParams::apply("barge-bench").force();
    let queues: Api<barge::api::JobQueue> = Api::all(client.clone());

    // A backlog: N jobs wait in a DISABLED queue until the operator has taken each in;
    // the clock starts when the queue is enabled, so admission is Barge's alone.
    let ns = "bench-barge-backlog";
    fresh_namespace(client, ns).await;
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let fill_start = Instant::now();
    let held = track(jobs.clone(), "bench=barge", n, fill_start, batch_job_held);
    let objects: Vec<BatchJob> = (0..n).map(|i| barge_job(&format!("q-{i}"), "bench-held", None)).collect();
    create_all(&jobs, objects, fill_start).await;
    wait_for("the backlog to be held", Duration::from_secs(3600), || held.lock().unwrap().all_done.is_some())
        .await;
    let fill_s = fill_start.elapsed().as_secs_f64();
    let (enable, held_queue) = (queue_manifest("bench-held", "ENABLED"), queues.clone());
    let mut backlog = measure(client, watch("Barge backlog", ns, n), |_| async move {
        held_queue
            .patch("bench-held", &PatchParams::apply("barge-bench").force(), &Patch::Apply(&enable))
            .await
            .unwrap();
        0.0
    })
    .await;
    backlog.note =
        format!("{n} jobs held RUNNABLE in a DISABLED queue ({fill_s:.1} s to take in), then it is enabled");
    queues.patch("bench-held", &ssa, &Patch::Apply(&queue_manifest("bench-held", "DISABLED"))).await.unwrap();
    drop_namespace(client, ns).await;

    // One array job, in a namespace of its own so the pod count starts at zero.
    let ns = "bench-barge-array";
    fresh_namespace(client, ns).await;
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let mut w = watch("Barge array", ns, array);
    w.owners.as_mut().expect("the parent").count = 1;
    let mut arr = measure(client, w, |start| async move {
        jobs.create(&PostParams::default(), &barge_job("array", "bench", Some(array))).await.unwrap();
        start.elapsed().as_secs_f64()
    })
    .await;
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let status = jobs.get("array").await.unwrap().status.unwrap();
    let size = serde_json::to_vec(&status).unwrap().len();
    arr.note = format!(
        "parent status {:.1} KiB; parent SUCCEEDED {:.1} s after the last child pod ended",
        size as f64 / 1024.0,
        arr.all_done_s - arr.pods_done_s
    );
    drop_namespace(client, ns).await;
    vec![row, backlog, arr]
}

/// N BatchJobs submitted at once and run to their end, on a running operator.
async fn submit_and_run(client: &Client, operator: &Operator, n: usize, contender: &str) -> Row {
    let ns = "bench-barge";
    fresh_namespace(client, ns).await;
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let objects: Vec<BatchJob> = (0..n).map(|i| barge_job(&format!("b-{i}"), "bench", None)).collect();
    let watch = Watch {
        contender: contender.to_string(),
        n,
        pods: (Api::namespaced(client.clone(), ns), "barge.dev/job-name"),
        owners: Some(Owners {
            api: Api::namespaced(client.clone(), ns),
            labels: "bench=barge",
            count: n,
            done: batch_job_done,
        }),
        controller: Some(operator.pid),
    };
    let row = measure(client, watch, |start| create_all(&jobs, objects, start)).await;
    drop_namespace(client, ns).await;
    row
}

/// `BENCH_LIMITS=off,1000/2000,200/400`: the submit-and-run scenario again under each
/// client-side request limit (`--kube-api-qps`/`--kube-api-burst`), an operator each, with
/// the time its requests waited for the limit.
async fn limits(client: &Client, nodes: usize, n: usize, settings: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for setting in settings.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (qps, burst) = match setting.split_once('/') {
            _ if setting == "off" => ("0".to_string(), "0".to_string()),
            Some((q, b)) => (q.to_string(), b.to_string()),
            None => (setting.to_string(), (setting.parse::<u32>().expect("a QPS") * 2).to_string()),
        };
        let env = [("BARGE_KUBE_API_QPS", qps.clone()), ("BARGE_KUBE_API_BURST", burst.clone())];
        let operator = Operator::start_with(client, nodes, &env).await;
        let read = || {
            (
                operator_metric(operator.port, "barge_kube_client_throttled_requests_total").unwrap_or(0.0),
                operator_metric(operator.port, "barge_kube_client_throttled_seconds_total").unwrap_or(0.0),
            )
        };
        let (waited0, seconds0) = read();
        let contender = format!("Barge BatchJob, limit {setting}");
        let mut row = submit_and_run(client, &operator, n, &contender).await;
        let (waited1, seconds1) = read();
        row.note = match setting {
            "off" => "no client-side request limit".into(),
            _ => format!(
                "--kube-api-qps {qps} --kube-api-burst {burst}: {:.0} requests waited for the limit, {:.1} s in all",
                waited1 - waited0,
                seconds1 - seconds0
            ),
        };
        operator.stop().await;
        rows.push(row);
    }
    rows
}

/// Submits `count` BatchJobs to the DISABLED queue and waits until the operator has taken
/// each in; then reads its peak RSS and how long a scheduling pass over them takes.
async fn hold_jobs(client: &Client, count: usize, operator: &Operator) -> Hold {
    let (pid, port) = (operator.pid, operator.port);
    let ns = "bench-barge-hold";
    fresh_namespace(client, ns).await;
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let (cpu0, _) = process_usage(pid).unwrap_or_default();
    let start = Instant::now();
    let held = track(jobs.clone(), "bench=barge", count, start, batch_job_held);
    let objects: Vec<BatchJob> = (0..count).map(|i| held_job(&format!("h-{i}"))).collect();
    create_all(&jobs, objects, start).await;
    eprintln!("hold: {count} BatchJobs submitted in {:.0} s", start.elapsed().as_secs_f64());
    wait_for("the hold to be taken in", Duration::from_secs(7200), || {
        held.lock().unwrap().all_done.is_some()
    })
    .await;
    let taken_in_s = start.elapsed().as_secs_f64();
    // Passes over the full backlog: the operator's own histogram, over 30 s.
    let read = || {
        (
            operator_metric(port, "barge_scheduling_pass_seconds_sum").unwrap_or(f64::NAN),
            operator_metric(port, "barge_scheduling_pass_seconds_count").unwrap_or(f64::NAN),
        )
    };
    let (sum0, count0) = read();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (sum1, count1) = read();
    let (cpu1, peak) = process_usage(pid).unwrap_or_default();
    Hold {
        jobs: count,
        taken_in_s,
        peak_rss_mib: peak,
        cpu_s: cpu1 - cpu0,
        pass_ms: (sum1 - sum0) / (count1 - count0) * 1000.0,
        passes: count1 - count0,
    }
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
    let hold: usize = arg("BENCH_HOLD").map_or(0, |v| v.parse().expect("BENCH_HOLD is a number"));
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
    let nodes = n.max(array).div_ceil(PODS_PER_NODE).max(1);
    kwok_nodes(&client, nodes, json!({"bench": "plain"})).await;
    let start_wait = Instant::now();
    while ready_nodes(&client, "bench=plain").await < nodes {
        assert!(start_wait.elapsed() < Duration::from_secs(600), "plain nodes did not become ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // BENCH_JOBS=0: the hold alone.
    let mut rows = Vec::new();
    // BENCH_BASELINES=0 runs Barge alone (to profile it); the report then has no ratios.
    let baselines = arg("BENCH_BASELINES").is_none_or(|v| v != "0");
    // BENCH_KUEUE=0 leaves Kueue out (it is built on first use, about 10 minutes cold).
    let mut skipped = Vec::new();
    if n > 0 && baselines {
        rows.push(ceiling(&client, n, CEILING_FIRST).await);
        rows.push(batch_v1(&client, n).await);
        if arg("BENCH_KUEUE").is_none_or(|v| v != "0") {
            match kueue::row(&client, n).await {
                Ok(row) => rows.push(row),
                Err(why) => {
                    eprintln!("the Kueue row did not run: {why}");
                    skipped.push(format!("Kueue did not run: {why}"));
                }
            }
        }
    }
    barge_setup(&client, nodes).await;
    let _ = std::fs::remove_file(operator_log());
    // BENCH_BARGE=0 skips Barge's three scenarios (to compare request limits alone).
    let mut turns = Vec::new();
    if n > 0 && arg("BENCH_BARGE").is_none_or(|v| v != "0") {
        let operator = Operator::start(&client, nodes).await;
        rows.extend(barge(&client, &operator, n, array).await);
        // BENCH_TURNAROUND=0 leaves out the saturated 64-vCPU environment.
        if arg("BENCH_TURNAROUND").is_none_or(|v| v != "0") {
            turnaround::setup(&client).await;
            for (seconds, waves) in [(1, 30), (10, 6)] {
                let t = turnaround::run(&client, seconds, waves).await;
                eprintln!("turnaround {seconds} s: {t:?}");
                turns.push(t);
            }
        }
        operator.stop().await;
    }
    if n > 0
        && let Some(settings) = arg("BENCH_LIMITS")
    {
        rows.extend(limits(&client, nodes, n, &settings).await);
    }
    // The same ceiling once more, on the cluster the others have used: how far the
    // apiserver's own rate moved during the run (etcd's history grows, the machine varies).
    if n > 0 && baselines {
        rows.push(ceiling(&client, n, CEILING_LAST).await);
    }
    for r in &rows {
        eprintln!("{} done: {:.1} s", r.contender, r.all_done_s);
    }
    // The hold has an operator of its own, which starts with nothing else in its memory.
    let hold = if hold > 0 {
        let operator = Operator::start(&client, nodes).await;
        let held = hold_jobs(&client, hold, &operator).await;
        operator.stop().await;
        Some(held)
    } else {
        None
    };
    match (n, hold) {
        (0, Some(h)) => println!("{}", report_hold(&out, &h)),
        (_, hold) => report(&out, n, &rows, &turns, &skipped, hold.as_ref()),
    }
}

/// Writes hold-N.csv; returns the Markdown line.
fn report_hold(out: &std::path::Path, h: &Hold) -> String {
    let csv = format!(
        "jobs,taken_in_s,peak_rss_mib,scheduling_pass_ms,passes,cpu_s\n{},{:.1},{:.1},{:.1},{:.0},{:.1}\n",
        h.jobs, h.taken_in_s, h.peak_rss_mib, h.pass_ms, h.passes, h.cpu_s
    );
    std::fs::write(out.join(format!("hold-{}.csv", h.jobs)), csv).unwrap();
    format!(
        "- Barge holding {} BatchJobs (RUNNABLE in a DISABLED queue, taken in after {:.0} s): peak RSS \
         **{:.0} MiB** (target <= 256), scheduling pass **{:.0} ms** on average over {:.0} passes, \
         {:.0} CPU s\n",
        h.jobs, h.taken_in_s, h.peak_rss_mib, h.pass_ms, h.passes, h.cpu_s
    )
}

fn report(
    out: &std::path::Path,
    n: usize,
    rows: &[Row],
    turns: &[turnaround::Turnaround],
    skipped: &[String],
    hold: Option<&Hold>,
) {
    let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.1}"));
    let mut csv = String::from(
        "contender,n,submit_s,first_pod_s,all_pods_created_s,all_done_s,admission_pods_per_s,end_to_end_per_s,\
         controller_cpu_s,controller_peak_rss_mib,apiserver_requests,apiserver_cpu_s,note\n",
    );
    let mut timeline = String::from("contender,t_s,pods_created,pods_done\n");
    let mut requests = String::from("contender,request,count\n");
    for r in rows {
        csv += &format!(
            "{},{},{:.2},{:.2},{:.2},{:.2},{:.1},{:.1},{},{},{},{},\"{}\"\n",
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
            r.apiserver_requests(),
            opt(r.apiserver_cpu_s),
            r.note
        );
        for (kind, count) in &r.requests_by_kind {
            requests += &format!("{},{kind},{count}\n", r.contender);
        }
        for (t, s, d) in &r.timeline {
            timeline += &format!("{},{t:.2},{s},{d}\n", r.contender);
        }
    }
    let mut md = String::from(
        "| contender | N | all pods created | all done | admission (pods/s) | end-to-end (jobs/s) | \
         controller CPU s | peak RSS MiB | apiserver requests | apiserver+etcd CPU s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {:.1} s | {:.1} s | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            r.contender,
            r.n,
            r.all_pods_s,
            r.all_done_s,
            r.admission_rate(),
            r.e2e_rate(),
            opt(r.controller_cpu_s),
            opt(r.controller_peak_rss_mib),
            r.apiserver_requests(),
            opt(r.apiserver_cpu_s)
        );
    }
    let row = |name: &str| rows.iter().find(|r| r.contender == name);
    let contenders = [row(CEILING_FIRST), row("batch/v1 Job"), row("Barge BatchJob"), row("Barge backlog")];
    // The ceiling is the mean of its two runs (before and after the others), when both ran.
    let ceilings: Vec<&Row> = [row(CEILING_FIRST), row(CEILING_LAST)].into_iter().flatten().collect();
    let mean = |rate: fn(&Row) -> f64| ceilings.iter().map(|r| rate(r)).sum::<f64>() / ceilings.len() as f64;
    let (ceiling_admission, ceiling_e2e) = (mean(Row::admission_rate), mean(Row::e2e_rate));
    let mut ratios: BTreeMap<&str, f64> =
        if let [Some(_), Some(batch), Some(barge), Some(backlog)] = contenders {
            BTreeMap::from([
                (
                    "admission, Barge backlog / ceiling (target >= 0.8)",
                    backlog.admission_rate() / ceiling_admission,
                ),
                ("admission, Barge submit-and-run / ceiling", barge.admission_rate() / ceiling_admission),
                ("admission, Barge / batch/v1", barge.admission_rate() / batch.admission_rate()),
                ("end-to-end, Barge / ceiling", barge.e2e_rate() / ceiling_e2e),
                ("end-to-end, Barge / batch/v1 (target >= 3)", barge.e2e_rate() / batch.e2e_rate()),
                (
                    "end-to-end, ceiling / batch/v1 (the most a kube-scheduler client reaches)",
                    ceiling_e2e / batch.e2e_rate(),
                ),
            ])
        } else {
            BTreeMap::new()
        };
    if let (Some(kueue), Some(barge)) = (row("Kueue + batch/v1 Job"), row("Barge BatchJob")) {
        ratios.insert("end-to-end, Barge / Kueue (target >= 3)", barge.e2e_rate() / kueue.e2e_rate());
        ratios.insert("admission, Barge / Kueue", barge.admission_rate() / kueue.admission_rate());
    }
    // Requests per job against the ceiling's per pod (target <= 1.3).
    let per = |r: &Row| r.apiserver_requests() as f64 / r.n as f64;
    if let (Some(barge), false) = (row("Barge BatchJob"), ceilings.is_empty()) {
        let ceiling_per = ceilings.iter().map(|r| per(r)).sum::<f64>() / ceilings.len() as f64;
        ratios.insert(
            "apiserver requests per job, Barge / the ceiling's per pod (target <= 1.3)",
            per(barge) / ceiling_per,
        );
    }
    let limited: Vec<&Row> =
        rows.iter().filter(|r| r.contender.starts_with("Barge BatchJob, limit ")).collect();
    let names: Vec<String> = limited
        .iter()
        .filter(|r| !r.contender.ends_with(" off"))
        .map(|r| format!("end-to-end, {} / limit off", r.contender))
        .collect();
    if let Some(off) = limited.iter().find(|r| r.contender.ends_with(" off")) {
        for (r, name) in limited.iter().filter(|r| !r.contender.ends_with(" off")).zip(&names) {
            ratios.insert(name.as_str(), r.e2e_rate() / off.e2e_rate());
        }
    }
    md += "\n";
    for (k, v) in &ratios {
        md += &format!("- {k}: **{v:.2}**\n");
    }
    if let [first, last] = ceilings[..] {
        md += &format!(
            "- the ceiling, first and last: admission {:.0} and {:.0} pods/s, end-to-end {:.0} and {:.0} \
             jobs/s; ratios to the ceiling use the mean of the two\n",
            first.admission_rate(),
            last.admission_rate(),
            first.e2e_rate(),
            last.e2e_rate()
        );
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        md += &format!("- {}: {}\n", r.contender, r.note);
    }
    for why in skipped {
        md += &format!("- {why}\n");
    }
    if let Some(h) = hold {
        md += &report_hold(out, h);
    }
    if !turns.is_empty() {
        md += &format!(
            "\n**Turnaround**: one {}-vCPU environment saturated with 1-vCPU jobs, all submitted at once \
             (targets: 1-s jobs >= 70 % busy, 10-s jobs >= 95 %, turnaround p50 <= 0.5 s)\n\n\
             | job length | jobs | makespan | capacity ideal | busy while jobs wait | busy over the makespan | turnaround p50 | turnaround p99 |\n\
             |---|---|---|---|---|---|---|---|\n",
            turnaround::VCPUS
        );
        let mut turn_csv = String::from(
            "job_seconds,jobs,makespan_s,ideal_s,utilisation_waiting,utilisation_makespan,turnaround_p50_s,turnaround_p99_s,gaps\n",
        );
        for t in turns {
            md += &format!(
                "| {} s | {} | {:.1} s | {:.1} s | {:.0} % | {:.0} % | {:.2} s | {:.2} s |\n",
                t.seconds,
                t.jobs,
                t.makespan_s,
                t.ideal_s,
                t.utilisation * 100.0,
                t.utilisation_makespan * 100.0,
                t.gap_p50_s,
                t.gap_p99_s
            );
            turn_csv += &format!(
                "{},{},{:.2},{:.2},{:.3},{:.3},{:.3},{:.3},{}\n",
                t.seconds,
                t.jobs,
                t.makespan_s,
                t.ideal_s,
                t.utilisation,
                t.utilisation_makespan,
                t.gap_p50_s,
                t.gap_p99_s,
                t.gaps
            );
        }
        std::fs::write(out.join(format!("turnaround-{n}.csv")), turn_csv).unwrap();
    }
    std::fs::write(out.join(format!("cluster-{n}.csv")), &csv).unwrap();
    std::fs::write(out.join(format!("timeline-{n}.csv")), &timeline).unwrap();
    std::fs::write(out.join(format!("requests-{n}.csv")), &requests).unwrap();
    std::fs::write(out.join(format!("cluster-{n}.md")), &md).unwrap();
    println!("{md}");
}
