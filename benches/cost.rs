//! `make bench-cost`: what the compute costs. One seeded trace of batch jobs (benches/cost/
//! trace.rs) is replayed in real time, in one run on one fresh local cluster, against each
//! contender at once, each in a namespace and on nodes of its own:
//!
//! - Barge with each allocation strategy: BEST_FIT and BEST_FIT_PROGRESSIVE (On-Demand),
//!   SPOT_CAPACITY_OPTIMIZED and SPOT_PRICE_CAPACITY_OPTIMIZED (Spot), each a `local`
//!   compute environment of m6i, c6i and r6i types and one of g5 for the GPU jobs, behind
//!   a high and a low priority queue;
//! - batch/v1 Jobs with Karpenter (kwok provider) provisioning from the same catalogue and
//!   prices (Spot and On-Demand allowed: it takes the cheapest), consolidation on, the pods
//!   marked `karpenter.sh/do-not-disrupt`, two PriorityClasses for the two priorities.
//!
//! Spot prices and interruptions come from one simulated market (barge::capacity::spot) with
//! one seed: the operator's local provider takes Barge's Spot nodes back, this benchmark
//! takes Karpenter's, at the same rate. Watches on nodes and pods record each node's life and
//! each pod's run; benches/cost/account.rs turns them into cost, the lower bound,
//! utilisation, waits, idle time and node counts. Results: bench/results/cost.md, cost.csv,
//! cost-series.csv (provisioned and requested vCPUs a second), cost.png.
//!
//! Environment: COST_JOBS (jobs in the trace, default 240), COST_WINDOW (seconds of
//! arrivals, 180), COST_SEED (1), COST_INTERRUPTIONS (per Spot node-hour, 6), COST_KARPENTER
//! (0 leaves Karpenter out), BENCH_OUT.

#[path = "cost/account.rs"]
mod account;
#[path = "cost/karpenter.rs"]
mod karpenter;
#[path = "cost/trace.rs"]
mod trace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use account::{Account, NodeLife, PodLife};
use barge::api::BatchJob;
use barge::capacity::catalog::lookup;
use barge::capacity::spot::SpotMarket;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use trace::TraceJob;

const SCALE_DOWN_DELAY_S: u64 = 30;
const CPU_FAMILIES: &[&str] = &["m6i", "c6i", "r6i"];
const GPU_FAMILIES: &[&str] = &["g5"];

fn arg(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One contender: its name, its namespace, and how its nodes are told apart.
#[derive(Clone, Debug)]
struct Contender {
    name: String,
    ns: String,
    /// Barge: the allocation strategy and whether Spot; None for Karpenter.
    barge: Option<(&'static str, bool)>,
}

#[derive(Default)]
struct Seen {
    nodes: HashMap<String, NodeLife>,
    /// Per node: its compute environment (Barge's) or node pool (Karpenter's).
    owners: HashMap<String, String>,
    /// Per pod (namespace/name): its life.
    pods: HashMap<String, (String, PodLife)>,
}

fn node_life(node: &Node, now: f64) -> Option<NodeLife> {
    let labels = node.labels();
    let ty = lookup(labels.get("node.kubernetes.io/instance-type")?)?;
    let spot = labels
        .get("barge.dev/capacity-type")
        .or(labels.get("karpenter.sh/capacity-type"))
        .is_some_and(|c| c == "spot");
    let created = node.creation_timestamp().map_or(now, |t| t.0.as_second() as f64);
    Some(NodeLife {
        name: node.name_any(),
        ty,
        spot,
        created,
        ready: None,
        deleted: None,
        interrupted: false,
    })
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_job(pod: &Pod) -> Option<usize> {
    let labels = pod.labels();
    labels
        .get("cost.barge.dev/job")
        .or_else(|| labels.get("barge.dev/job-name"))
        .and_then(|n| n.trim_start_matches("job-").parse().ok())
}

fn pod_request(pod: &Pod) -> (f64, f64) {
    let r = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    let cpu = r.get("cpu").map_or(0.0, |q| {
        let s = &q.0;
        s.strip_suffix('m')
            .map_or_else(|| s.parse().unwrap_or(0.0), |m| m.parse::<f64>().unwrap_or(0.0) / 1000.0)
    });
    let mem =
        r.get("memory").map_or(0.0, |q| q.0.trim_end_matches("Mi").parse::<f64>().unwrap_or(0.0) / 1024.0);
    (cpu, mem)
}

/// Watches every node and every pod of the contenders' namespaces.
fn watch(client: &Client, seen: Arc<Mutex<Seen>>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let s = seen.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(nodes, watcher::Config::default()).default_backoff());
        while let Some(Ok(event)) = events.next().await {
            let now = unix_now();
            let mut s = s.lock().unwrap();
            match event {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    let Some(life) = node_life(&n, now) else { continue };
                    let labels = n.labels();
                    if let Some(owner) =
                        labels.get("barge.dev/compute-environment").or(labels.get("karpenter.sh/nodepool"))
                    {
                        s.owners.insert(n.name_any(), owner.clone());
                    }
                    let entry = s.nodes.entry(n.name_any()).or_insert(life);
                    if node_ready(&n) && entry.ready.is_none() {
                        entry.ready = Some(now);
                    }
                }
                watcher::Event::Delete(n) => {
                    if let Some(e) = s.nodes.get_mut(&n.name_any()) {
                        e.deleted.get_or_insert(now);
                    }
                }
                _ => {}
            }
        }
    });
    let pods: Api<Pod> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(pods, watcher::Config::default()).default_backoff());
        while let Some(Ok(event)) = events.next().await {
            let (pod, deleted) = match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
                watcher::Event::Delete(p) => (p, true),
                _ => continue,
            };
            let ns = pod.namespace().unwrap_or_default();
            if !ns.starts_with("cost-") {
                continue;
            }
            let Some(job) = pod_job(&pod) else { continue };
            let now = unix_now();
            let (vcpus, memory_gib) = pod_request(&pod);
            let mut s = seen.lock().unwrap();
            let (_, life) = s.pods.entry(format!("{ns}/{}", pod.name_any())).or_insert_with(|| {
                let life = PodLife {
                    job,
                    node: None,
                    vcpus,
                    memory_gib,
                    started: None,
                    ended: None,
                    completed: false,
                };
                (ns.clone(), life)
            });
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                life.node = Some(node);
            }
            match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Running") => {
                    life.started.get_or_insert(now);
                }
                Some("Succeeded") => {
                    life.started.get_or_insert(now);
                    life.ended.get_or_insert(now);
                    life.completed = true;
                }
                _ => {}
            }
            // Deleted before it ended: its node was taken back (or it was stopped).
            if deleted && life.started.is_some() {
                life.ended.get_or_insert(now);
            }
        }
    });
}

/// Replays the trace into one contender: each job created at its time.
async fn replay(client: Client, c: Contender, trace: Arc<Vec<TraceJob>>, start: Instant) -> Vec<f64> {
    let mut submitted = vec![f64::NAN; trace.len()];
    for j in trace.iter() {
        let at = start + Duration::from_secs_f64(j.at_s);
        tokio::time::sleep_until(at.into()).await;
        submitted[j.id] = unix_now();
        let created = match c.barge {
            Some(_) => {
                let api: Api<BatchJob> = Api::namespaced(client.clone(), &c.ns);
                api.create(&PostParams::default(), &barge_job(j, &c.ns)).await.map(|_| ())
            }
            None => karpenter::jobs_api(&client, &c.ns)
                .create(&PostParams::default(), &karpenter::job(j))
                .await
                .map(|_| ()),
        };
        if let Err(e) = created {
            eprintln!("{}: could not submit job {}: {e}", c.name, j.id);
        }
    }
    submitted
}

fn barge_job(j: &TraceJob, ns: &str) -> BatchJob {
    let queue = if j.high { format!("{ns}-high") } else { format!("{ns}-low") };
    let mut resources = json!({"vcpus": j.vcpus, "memory": format!("{}Mi", j.memory_mib)});
    if j.gpus > 0 {
        resources["gpus"] = json!(j.gpus);
    }
    serde_json::from_value(json!({
        "apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": format!("job-{}", j.id), "annotations": {"sim.barge.dev/duration": format!("{}s", j.duration_s)}},
        "spec": {"jobQueue": queue, "retryStrategy": {"attempts": 3},
                 "container": {"image": "busybox:1.36", "command": ["sh", "-c", "work"], "resources": resources}}
    }))
    .unwrap()
}

async fn apply_json<K>(api: &Api<K>, name: &str, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    api.patch(name, &PatchParams::apply("barge-bench").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// A contender's namespace, and for Barge its two environments and two queues.
async fn setup_barge(client: &Client, ns: &str, strategy: &str, spot: bool) {
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    for (name, families) in [(ns.to_string(), CPU_FAMILIES), (format!("{ns}-gpu"), GPU_FAMILIES)] {
        apply_json(&ces, &name, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
            "metadata": {"name": name},
            "spec": {"provider": "local", "capacityType": if spot { "SPOT" } else { "ON_DEMAND" },
                     "allocationStrategy": strategy, "instanceTypes": families, "minvCpus": 0, "maxvCpus": 2048,
                     "scaleDownDelaySeconds": SCALE_DOWN_DELAY_S}}))
        .await;
    }
    let queues: Api<barge::api::JobQueue> = Api::all(client.clone());
    for (suffix, priority) in [("high", 10), ("low", 1)] {
        let name = format!("{ns}-{suffix}");
        apply_json(&queues, &name, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue",
            "metadata": {"name": name},
            "spec": {"priority": priority, "computeEnvironmentOrder": [
                {"order": 1, "computeEnvironment": ns}, {"order": 2, "computeEnvironment": format!("{ns}-gpu")}]}}))
        .await;
    }
}

async fn namespace(client: &Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    apply_json(&api, ns, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
}

/// Every job of a contender ended (SUCCEEDED or FAILED; a Job complete or failed).
async fn finished(client: &Client, c: &Contender) -> usize {
    match c.barge {
        Some(_) => Api::<BatchJob>::namespaced(client.clone(), &c.ns)
            .list(&Default::default())
            .await
            .map_or(0, |l| {
                l.items.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count()
            }),
        None => karpenter::jobs_api(client, &c.ns).list(&Default::default()).await.map_or(0, |l| {
            l.items
                .iter()
                .filter(|j| {
                    j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                        cs.iter()
                            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                    })
                })
                .count()
        }),
    }
}

/// Takes Karpenter's Spot nodes back at the market's rate, as the operator does Barge's.
fn interrupt_karpenter(client: Client, market: SpotMarket, seen: Arc<Mutex<Seen>>) {
    tokio::spawn(async move {
        let nodes: Api<Node> = Api::all(client);
        let mut drawn: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let tick = (unix_now() / 10.0) as u64;
            // Its Spot nodes still alive, from the watch.
            let mine: Vec<String> = {
                let s = seen.lock().unwrap();
                s.nodes
                    .values()
                    .filter(|n| n.spot && n.deleted.is_none())
                    .filter(|n| s.owners.get(&n.name).is_some_and(|o| o == karpenter::NODEPOOL))
                    .map(|n| n.name.clone())
                    .collect()
            };
            for (node, _) in barge::provider::local::interruptions(&market, &mine, tick, &mut drawn) {
                if let Some(n) = seen.lock().unwrap().nodes.get_mut(&node) {
                    n.interrupted = true;
                }
                let _ = nodes.delete(&node, &DeleteParams::default()).await;
            }
        }
    });
}

#[tokio::main]
async fn main() {
    let jobs: usize = arg("COST_JOBS").map_or(240, |v| v.parse().expect("COST_JOBS"));
    let window: f64 = arg("COST_WINDOW").map_or(180.0, |v| v.parse().expect("COST_WINDOW"));
    let seed: u64 = arg("COST_SEED").map_or(1, |v| v.parse().expect("COST_SEED"));
    let rate: f64 = arg("COST_INTERRUPTIONS").map_or(6.0, |v| v.parse().expect("COST_INTERRUPTIONS"));
    let with_karpenter = arg("COST_KARPENTER").is_none_or(|v| v != "0");
    let out = std::path::PathBuf::from(arg("BENCH_OUT").unwrap_or_else(|| "bench/results".into()));
    std::fs::create_dir_all(&out).unwrap();
    let market = SpotMarket { seed, interruptions_per_node_hour: rate, ..SpotMarket::default() };
    let trace = Arc::new(trace::generate(seed, jobs, window));

    let client = Client::try_default().await.expect("KUBECONFIG: run through `make bench-cost`");
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    let kubectl = "kubectl";
    // Barge's CRDs, from the binary.
    let crds = std::process::Command::new(env!("CARGO_BIN_EXE_barge")).arg("crd").output().unwrap().stdout;
    let mut apply = std::process::Command::new(kubectl)
        .args(["apply", "--server-side", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(apply.stdin.as_mut().unwrap(), &crds).unwrap();
    drop(apply.stdin.take());
    assert!(apply.wait().unwrap().success());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut contenders: Vec<Contender> = [
        ("BEST_FIT", false),
        ("BEST_FIT_PROGRESSIVE", false),
        ("SPOT_CAPACITY_OPTIMIZED", true),
        ("SPOT_PRICE_CAPACITY_OPTIMIZED", true),
    ]
    .into_iter()
    .map(|(s, spot)| Contender {
        name: format!("Barge {s}"),
        ns: format!("cost-{}", s.to_lowercase().replace('_', "-")),
        barge: Some((s, spot)),
    })
    .collect();
    for c in &contenders {
        let (s, spot) = c.barge.unwrap();
        namespace(&client, &c.ns).await;
        setup_barge(&client, &c.ns, s, spot).await;
    }

    let tmp = std::env::temp_dir();
    let operator_log = tmp.join("barge-bench-cost-operator.log");
    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("run")
        .env("RUST_LOG", "warn")
        .env("BARGE_METRICS_BIND", format!("127.0.0.1:{}", free_port()))
        .env("BARGE_LOCAL_SPOT_INTERRUPTIONS", rate.to_string())
        .env("BARGE_LOCAL_SPOT_SEED", seed.to_string())
        .stdout(std::fs::File::create(&operator_log).unwrap())
        .stderr(std::fs::File::create(tmp.join("barge-bench-cost-operator.err")).unwrap())
        .spawn()
        .unwrap();

    let mut karpenter_child = None;
    if with_karpenter {
        let bin = karpenter::bin_dir();
        karpenter::apply_crds(&bin, kubectl);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let types: Vec<_> =
            account::types_of(CPU_FAMILIES).into_iter().chain(account::types_of(GPU_FAMILIES)).collect();
        let file = tmp.join("barge-bench-cost-instance-types.json");
        std::fs::write(
            &file,
            serde_json::to_vec_pretty(&karpenter::instance_types(&types, &market, unix_now())).unwrap(),
        )
        .unwrap();
        karpenter::setup(&client, &types).await;
        let classes: Api<PriorityClass> = Api::all(client.clone());
        for (name, value) in [("cost-high", 1000), ("cost-low", 10)] {
            apply_json(
                &classes,
                name,
                json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name}, "value": value}),
            )
            .await;
        }
        let c = Contender { name: "batch/v1 + Karpenter".into(), ns: "cost-karpenter".into(), barge: None };
        namespace(&client, &c.ns).await;
        karpenter_child =
            Some(karpenter::start(&bin, &kubeconfig, &file, &tmp.join("barge-bench-cost-karpenter.log")));
        contenders.push(c);
        // Karpenter reads its node pool and instance types before the clock starts.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    watch(&client, seen.clone());
    if contenders.iter().any(|c| c.barge.is_none()) {
        interrupt_karpenter(client.clone(), market, seen.clone());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = unix_now();
    let start = Instant::now();
    eprintln!("cost: replaying {} jobs over {window} s into {} contenders", trace.len(), contenders.len());
    let replays: Vec<_> = contenders
        .iter()
        .map(|c| tokio::spawn(replay(client.clone(), c.clone(), trace.clone(), start)))
        .collect();
    let mut submitted = Vec::new();
    for r in replays {
        submitted.push(r.await.unwrap());
    }
    // Until every job ended, then until the nodes have gone (or a limit).
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut done = 0;
        for c in &contenders {
            done += usize::from(finished(&client, c).await >= trace.len());
        }
        eprintln!(
            "cost: [{:>4.0} s] {done}/{} contenders finished",
            start.elapsed().as_secs_f64(),
            contenders.len()
        );
        if done == contenders.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let drain = Instant::now() + Duration::from_secs(SCALE_DOWN_DELAY_S + 150);
    loop {
        let alive = seen.lock().unwrap().nodes.values().filter(|n| n.deleted.is_none()).count();
        if alive == 0 || Instant::now() > drain {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let end = unix_now();

    let rows: Vec<Row> = {
        let s = seen.lock().unwrap();
        let (vcpu_s, gib_s) = trace::demand(&trace);
        let ((cpu_vcpu_s, cpu_gib_s), (gpu_vcpu_s, gpu_gib_s, gpu_s)) = trace::demand_by_kind(&trace);
        contenders
            .iter()
            .zip(&submitted)
            .map(|(c, sub)| {
                let nodes: Vec<NodeLife> = s
                    .nodes
                    .values()
                    .filter(|n| {
                        let owner = s.owners.get(&n.name).map(String::as_str).unwrap_or_default();
                        match c.barge {
                            Some(_) => owner == c.ns || owner == format!("{}-gpu", c.ns),
                            None => owner == karpenter::NODEPOOL,
                        }
                    })
                    .cloned()
                    .collect();
                let pods: Vec<PodLife> =
                    s.pods.values().filter(|(ns, _)| *ns == c.ns).map(|(_, p)| p.clone()).collect();
                let spot = c.barge.is_none_or(|(_, spot)| spot);
                let types = account::types_of(CPU_FAMILIES);
                let market_window = spot.then_some((&market, t0, end));
                let bound = account::lower_bound(vcpu_s, gib_s, &types, market_window);
                let on_gpus = account::lower_bound(cpu_vcpu_s, cpu_gib_s, &types, market_window)
                    + account::lower_bound_gpu(
                        gpu_vcpu_s,
                        gpu_gib_s,
                        gpu_s,
                        &account::types_of(GPU_FAMILIES),
                        market_window,
                    );
                let a = account::account(&nodes, &pods, sub, &market, t0, end);
                Row { contender: c.clone(), account: a, bound, bound_gpu_on_gpu: on_gpus }
            })
            .collect()
    };
    report(&out, &rows, &trace, &market, window, seed, rate);

    let _ = operator.kill();
    let _ = operator.wait();
    if let Some(mut k) = karpenter_child {
        karpenter::teardown(&client).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = k.kill();
        let _ = k.wait();
    }
}

/// One contender's figures and the two lower bounds its cost is set against.
struct Row {
    contender: Contender,
    account: Account,
    /// Every job's vCPU·s and GiB·s at the cheapest CPU types' rate (the GPU jobs' too).
    bound: f64,
    /// The same for the jobs without GPUs, plus the GPU jobs priced on the GPU types they
    /// need (see `account::lower_bound_gpu`).
    bound_gpu_on_gpu: f64,
}

fn report(
    out: &std::path::Path,
    rows: &[Row],
    trace: &[TraceJob],
    market: &SpotMarket,
    window: f64,
    seed: u64,
    rate: f64,
) {
    let mut csv = String::from(
        "contender,cost_usd,lower_bound_usd,cost_over_bound,lower_bound_gpu_on_gpu_usd,cost_over_bound_gpu_on_gpu,cpu_util_pending,cpu_util,memory_util,wait_p50_s,wait_p99_s,idle_after_p50_s,idle_after_max_s,launched,removed,interrupted,lost_attempts,work_usd,unused_room_usd,before_first_pod_usd,after_last_pod_usd,mean_node_vcpus\n",
    );
    let mut md = format!(
        "Cost on a replayed trace: {} jobs over {window:.0} s (seed {seed}), Spot interruptions {rate} per node-hour, scaleDownDelaySeconds {SCALE_DOWN_DELAY_S}\n\n\
         | contender | cost | lower bound | cost ÷ bound | ÷ bound with GPU jobs on GPU types | CPU util. while jobs wait | CPU util. | memory util. | submit → running p50 / p99 | idle after last pod p50 / max | nodes launched / removed | interrupted (attempts lost) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        trace.len()
    );
    for Row { contender: c, account: a, bound, bound_gpu_on_gpu } in rows {
        csv.push_str(&format!(
            "{},{:.4},{:.4},{:.3},{:.4},{:.3},{:.3},{:.3},{:.3},{:.2},{:.2},{:.1},{:.1},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.1}\n",
            c.name,
            a.cost,
            bound,
            a.cost / bound,
            bound_gpu_on_gpu,
            a.cost / bound_gpu_on_gpu,
            a.cpu_utilisation_pending,
            a.cpu_utilisation,
            a.memory_utilisation,
            a.wait_p50_s,
            a.wait_p99_s,
            a.idle_after_p50_s,
            a.idle_after_max_s,
            a.launched,
            a.removed,
            a.interrupted,
            a.lost_attempts,
            a.split.work,
            a.split.unused_room,
            a.split.before_first_pod,
            a.split.after_last_pod,
            a.mean_node_vcpus
        ));
        md.push_str(&format!(
            "| {} | ${:.4} | ${:.4} | **{:.2}** | {:.2} | {:.0} % | {:.0} % | {:.0} % | {:.1} / {:.1} s | {:.0} / {:.0} s | {} / {} | {} ({}) |\n",
            c.name,
            a.cost,
            bound,
            a.cost / bound,
            a.cost / bound_gpu_on_gpu,
            a.cpu_utilisation_pending * 100.0,
            a.cpu_utilisation * 100.0,
            a.memory_utilisation * 100.0,
            a.wait_p50_s,
            a.wait_p99_s,
            a.idle_after_p50_s,
            a.idle_after_max_s,
            a.launched,
            a.removed,
            a.interrupted,
            a.lost_attempts
        ));
    }
    md.push_str(
        "\nWhere each contender's cost went (share of its cost; a node's time at its mean price):\n\n\
         | contender | jobs' share of the nodes they ran on | room no job held | before a node's first pod | after its last pod | vCPUs per node launched |\n\
         |---|---|---|---|---|---|\n",
    );
    for Row { contender: c, account: a, .. } in rows {
        assert!(
            (a.split.total() - a.cost).abs() <= 1e-6 * a.cost.max(1.0),
            "{}: the split must add up to the cost",
            c.name
        );
        let share = |x: f64| if a.cost > 0.0 { x / a.cost * 100.0 } else { f64::NAN };
        md.push_str(&format!(
            "| {} | {:.0} % | {:.0} % | {:.0} % | {:.0} % | {:.1} |\n",
            c.name,
            share(a.split.work),
            share(a.split.unused_room),
            share(a.split.before_first_pod),
            share(a.split.after_last_pod),
            a.mean_node_vcpus
        ));
    }
    if let Some(k) = rows.iter().find(|r| r.contender.barge.is_none()) {
        let best = rows
            .iter()
            .filter(|r| r.contender.barge.is_some())
            .min_by(|a, b| a.account.cost.total_cmp(&b.account.cost));
        if let Some(r) = best {
            md.push_str(&format!(
                "\n- Barge's cheapest: {} at {:.2} × the lower bound ({:.2} with GPU jobs priced on GPU types); ÷ Karpenter's cost: **{:.2}**; submit → running p99 {:.1} s against Karpenter's {:.1} s\n",
                r.contender.name,
                r.account.cost / r.bound,
                r.account.cost / r.bound_gpu_on_gpu,
                r.account.cost / k.account.cost,
                r.account.wait_p99_s,
                k.account.wait_p99_s
            ));
        }
    }
    md.push_str(&format!(
        "- the lower bound prices the trace's vCPU·s and GiB·s (GPU jobs' too) at the cheapest m6i/c6i/r6i rate, at the mean simulated Spot price for Spot contenders (Karpenter may use both); the second bound prices the GPU jobs on g5 instead, the larger of their vCPU·s, GiB·s and GPU·s at g5's cheapest rates; market seed {}\n",
        market.seed
    ));
    std::fs::write(out.join("cost.csv"), csv).unwrap();
    std::fs::write(out.join("cost.md"), &md).unwrap();
    let mut series = String::from("contender,t_s,provisioned_vcpus,requested_vcpus\n");
    for Row { contender: c, account: a, .. } in rows {
        for (t, p, r) in &a.series {
            series.push_str(&format!("{},{t:.0},{p:.0},{r:.2}\n", c.name));
        }
    }
    std::fs::write(out.join("cost-series.csv"), series).unwrap();
    print!("{md}");
}
