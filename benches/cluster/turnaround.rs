//! The turnaround scenario: a 64-vCPU compute environment (one m6i.16xlarge) saturated with
//! 1-vCPU jobs of one length, all submitted at once. How much of the capacity is busy, and
//! how long the room a pod frees stays empty before the next pod starts on it.
//!
//! A pod is busy from when the benchmark's watch sees it Running to when it sees it end.
//! Utilisation is busy vCPU-seconds over the capacity's vCPU-seconds while jobs wait (from
//! the first start to the last), and over the whole makespan (the drain at the end too). Turnaround pairs, on each node, every pod end with the first pod start
//! after it not already paired (the next pod on the room it freed): p50 and p99 of the gaps.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barge::api::BatchJob;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{
    batch_job_done, create_all, drop_namespace, fresh_namespace, queue_manifest, ready_nodes, wait_for,
};

pub const VCPUS: usize = 64;

/// One run of the scenario.
#[derive(Clone, Debug)]
pub struct Turnaround {
    pub seconds: u32,
    pub jobs: usize,
    /// First pod start to last pod end.
    pub makespan_s: f64,
    /// The capacity's ideal: jobs × seconds ÷ vCPUs.
    pub ideal_s: f64,
    /// Busy share of the capacity while jobs wait: from the first start to the last start
    /// (after it, nothing is left to fill freed room).
    pub utilisation: f64,
    /// Busy share over the whole makespan, the drain at the end included.
    pub utilisation_makespan: f64,
    pub gap_p50_s: f64,
    pub gap_p99_s: f64,
    pub gaps: usize,
}

#[derive(Default)]
struct Seen {
    /// Per pod: its node, when seen Running, when seen ended.
    pods: HashMap<String, (String, Option<f64>, Option<f64>)>,
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

fn watch_pods(api: Api<Pod>, start: Instant) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default().labels("barge.dev/job-name");
        let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
        while let Some(Ok(pod)) = events.next().await {
            let t = start.elapsed().as_secs_f64();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let mut s = s.lock().unwrap();
            let entry = s.pods.entry(pod.name_any()).or_insert_with(|| (String::new(), None, None));
            if !node.is_empty() {
                entry.0 = node;
            }
            match phase(&pod) {
                Some("Running") => {
                    entry.1.get_or_insert(t);
                }
                Some("Succeeded" | "Failed") => {
                    // A pod seen ended without being seen Running ran between two events.
                    entry.1.get_or_insert(t);
                    entry.2.get_or_insert(t);
                }
                _ => {}
            }
        }
    });
    seen
}

/// The gaps between each pod end and the next unpaired pod start on the same node.
pub fn gaps(pods: &[(String, f64, f64)]) -> Vec<f64> {
    let mut by_node: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (node, start, end) in pods {
        let e = by_node.entry(node).or_default();
        e.0.push(*start);
        e.1.push(*end);
    }
    let mut gaps = Vec::new();
    for (_, (mut starts, mut ends)) in by_node {
        starts.sort_by(f64::total_cmp);
        ends.sort_by(f64::total_cmp);
        let mut next = 0;
        for end in ends {
            while next < starts.len() && starts[next] < end {
                next += 1;
            }
            let Some(start) = starts.get(next) else { break };
            gaps.push(start - end);
            next += 1;
        }
    }
    gaps.sort_by(f64::total_cmp);
    gaps
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The environment and queue, with its one node Ready.
pub async fn setup(client: &Client) {
    let ssa = PatchParams::apply("barge-bench").force();
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    let ce = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": "turn"},
        "spec": {"instanceTypes": ["m6i.16xlarge"], "minvCpus": VCPUS, "maxvCpus": VCPUS, "scaleDownDelaySeconds": 3600}});
    ces.patch("turn", &ssa, &Patch::Apply(&ce)).await.unwrap();
    let queues: Api<barge::api::JobQueue> = Api::all(client.clone());
    let mut queue = queue_manifest("turn", "ENABLED");
    queue["spec"]["computeEnvironmentOrder"][0]["computeEnvironment"] = json!("turn");
    queues.patch("turn", &ssa, &Patch::Apply(&queue)).await.unwrap();
    let start = Instant::now();
    while ready_nodes(client, "barge.dev/compute-environment=turn").await < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the turnaround environment's node did not become ready"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `waves` × 64 jobs of `seconds` each, submitted at once to the 64-vCPU environment.
pub async fn run(client: &Client, seconds: u32, waves: usize) -> Turnaround {
    let ns = "bench-turnaround";
    fresh_namespace(client, ns).await;
    let jobs = waves * VCPUS;
    let api: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let objects: Vec<BatchJob> = (0..jobs)
        .map(|i| {
            let mut job = super::barge_job(&format!("t-{i}"), "turn", None);
            job.annotations_mut().insert("sim.barge.dev/duration".into(), format!("{seconds}s"));
            job
        })
        .collect();
    let start = Instant::now();
    let seen = watch_pods(Api::namespaced(client.clone(), ns), start);
    let done = super::track(api.clone(), "bench=barge", jobs, start, batch_job_done);
    create_all(&api, objects, start).await;
    wait_for("the turnaround jobs", Duration::from_secs(3600), || done.lock().unwrap().all_done.is_some())
        .await;
    let pods: Vec<(String, f64, f64)> = seen
        .lock()
        .unwrap()
        .pods
        .values()
        .filter_map(|(node, start, end)| Some((node.clone(), (*start)?, (*end)?)))
        .collect();
    drop_namespace(client, ns).await;
    let first = pods.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let last = pods.iter().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max);
    let busy: f64 = pods.iter().map(|p| p.2 - p.1).sum();
    let makespan_s = last - first;
    let last_start = pods.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let busy_waiting: f64 = pods.iter().map(|p| (p.2.min(last_start) - p.1).max(0.0)).sum();
    let gaps = gaps(&pods);
    Turnaround {
        seconds,
        jobs,
        makespan_s,
        ideal_s: (jobs * seconds as usize) as f64 / VCPUS as f64,
        utilisation: busy_waiting / (VCPUS as f64 * (last_start - first)),
        utilisation_makespan: busy / (VCPUS as f64 * makespan_s),
        gap_p50_s: percentile(&gaps, 0.5),
        gap_p99_s: percentile(&gaps, 0.99),
        gaps: gaps.len(),
    }
}
