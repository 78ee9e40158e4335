//! Criterion benches of the pure core: one scheduling pass over many pending jobs, and
//! bin-packing many pods onto instance types. `make bench` runs them.

use std::hint::black_box;

use barge::capacity::{Fleet, Need, Strategy, catalog, plan_scale_up};
use barge::resources::Res;
use barge::scheduler::{CeInfo, FairShare, NodeInfo, PendingJob, QueueInfo, Snapshot, plan};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const QUEUES: usize = 100;
const COMPUTE_ENVIRONMENTS: usize = 50;
const NODES_PER_CE: usize = 20;

/// `jobs` pending jobs spread over 100 queues, each queue using 3 of 50 environments whose
/// 20 nodes are mostly full: most jobs wait, as in a saturated cluster.
fn snapshot(jobs: usize) -> Snapshot {
    let queues = (0..QUEUES)
        .map(|q| QueueInfo {
            name: format!("q{q}"),
            priority: (q % 10) as i32,
            enabled: true,
            compute_environments: (0..3)
                .map(|k| format!("ce{}", (q + k * 17) % COMPUTE_ENVIRONMENTS))
                .collect(),
            // Every other queue has a fair-share policy over 7 shares.
            fair_share: (q % 2 == 0).then(|| FairShare {
                weights: (0..7).map(|k| (format!("s{k}"), 1.0 + k as f64)).collect(),
                ..Default::default()
            }),
        })
        .collect();
    let compute_environments = (0..COMPUTE_ENVIRONMENTS)
        .map(|c| CeInfo {
            name: format!("ce{c}"),
            enabled: true,
            max_vcpus: 320,
            total_vcpus: (NODES_PER_CE * 16) as u32,
            shapes: vec![Res::new(3920, 14_000, 0), Res::new(15_800, 60_000, 0)],
            nodes: (0..NODES_PER_CE)
                .map(|n| NodeInfo {
                    name: format!("ce{c}-n{n}"),
                    free: Res::new(((n % 3) * 500) as u64, 4096, 0),
                    ready: true,
                    empty: false,
                    allocatable: Res::new(15_800, 60_000, 0),
                })
                .collect(),
            cannot_grow: None,
            room: None,
        })
        .collect();
    // As in the operator, the jobs of a queue share one copy of its name.
    let queue_names: Vec<std::sync::Arc<str>> = (0..QUEUES).map(|q| format!("q{q}").into()).collect();
    let jobs = (0..jobs)
        .map(|i| PendingJob {
            name: format!("ns/job-{i}").into(),
            index: None,
            queue: queue_names[i % QUEUES].clone(),
            namespace_allowed: true,
            scheduling_priority: (i % 5) as i32,
            submitted_ms: 1_800_000_000_000 + i as i64,
            request: Res::new(1000 + (i % 4) as u64 * 500, 2048, 0),
            share: Some(format!("s{}", i % 7)),
            gang: None,
        })
        .collect();
    Snapshot { jobs, queues, compute_environments, ..Default::default() }
}

fn scheduling_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduling_pass");
    group.sample_size(10);
    for n in [10_000, 100_000, 1_000_000] {
        let s = snapshot(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &s, |b, s| b.iter(|| plan(black_box(s))));
    }
    group.finish();
}

/// `snapshot(jobs)` with one job in a hundred a multi-node job of 2 to 64 nodes, half of
/// them waiting long enough to hold nodes.
fn with_gangs(jobs: usize) -> Snapshot {
    let mut s = snapshot(jobs);
    for (k, j) in s.jobs.iter_mut().step_by(100).enumerate() {
        let nodes = 2 + (k * 7) % 63;
        let members: Vec<Res> = (0..nodes).map(|_| Res::new(2000, 4096, 0)).collect();
        j.request = members.iter().fold(Res::ZERO, |t, m| t + *m);
        j.gang = Some(members.into());
    }
    s.now_ms = 1_800_000_000_000 + jobs as i64;
    s.hold_gangs_after_ms = jobs as i64 / 2;
    s
}

/// The pass with and without 1,000 waiting multi-node jobs among 100,000, side by side.
fn gang_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduling_pass_gangs");
    group.sample_size(10);
    let n = 100_000;
    let (plain, gangs) = (snapshot(n), with_gangs(n));
    group.bench_with_input(BenchmarkId::new("without", n), &plain, |b, s| b.iter(|| plan(black_box(s))));
    group.bench_with_input(BenchmarkId::new("with_1000_gangs", n), &gangs, |b, s| {
        b.iter(|| plan(black_box(s)))
    });
    group.finish();
}

/// `jobs` jobs held in one DISABLED queue, submitted a thousand a second: the cluster
/// benchmark's hold (`BENCH_HOLD`), where every job waits for the same reason.
fn held(jobs: usize) -> Snapshot {
    let mut s = snapshot(0);
    s.queues[0].enabled = false;
    s.queues[0].fair_share = None;
    let queue: std::sync::Arc<str> = "q0".into();
    s.jobs = (0..jobs)
        .map(|i| PendingJob {
            name: format!("bench-hold/h-{i}").into(),
            index: None,
            queue: queue.clone(),
            namespace_allowed: true,
            scheduling_priority: 0,
            submitted_ms: 1_800_000_000_000 + (i / 1000) as i64 * 1000,
            request: Res::new(1000, 64, 0),
            share: None,
            gang: None,
        })
        .collect();
    s
}

fn held_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduling_pass_held");
    group.sample_size(10);
    let s = held(100_000);
    group.bench_with_input(BenchmarkId::from_parameter(100_000), &s, |b, s| b.iter(|| plan(black_box(s))));
    group.finish();
}

fn bin_packing(c: &mut Criterion) {
    let (types, _) = catalog::resolve(&["m6i".into(), "c6i".into(), "r6i".into()]);
    let demand: Vec<Need> = (0..10_000)
        .map(|i| Need::shared(Res::new(250 + (i % 8) as u64 * 250, 512 + (i % 5) as u64 * 1024, 0)))
        .collect();
    let fleet = Fleet { total_vcpus: 0, min_vcpus: 0, max_vcpus: 100_000 };
    let mut group = c.benchmark_group("bin_packing_10k_pods");
    group.sample_size(10);
    for (name, strategy) in [("best_fit", Strategy::SingleType), ("progressive", Strategy::Mixed)] {
        group
            .bench_function(name, |b| b.iter(|| plan_scale_up(black_box(&demand), &types, strategy, &fleet)));
    }
    group.finish();
}

/// 100,000 RUNNABLE jobs of one namespace: each with its own container, or each running
/// revision 1 of a job definition with a parameter of its own.
fn stored_jobs(definition: bool) -> Vec<std::sync::Arc<barge::api::BatchJob>> {
    (0..100_000)
        .map(|i| {
            let spec = if definition {
                serde_json::json!({"jobQueue": "q0", "jobDefinition": "render", "parameters": {"frame": i.to_string()}})
            } else {
                serde_json::json!({"jobQueue": "q0", "container": {"image": "busybox", "command": ["render", "--frame", i.to_string()],
                    "resources": {"vcpus": 1, "memory": "2Gi"}}})
            };
            let status = if definition {
                serde_json::json!({"phase": "RUNNABLE", "jobDefinition": "render:1"})
            } else {
                serde_json::json!({"phase": "RUNNABLE"})
            };
            let job = serde_json::json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
                "metadata": {"name": format!("j-{i}"), "namespace": "ns", "uid": format!("uid-{i}"),
                    "creationTimestamp": "2026-11-27T07:00:00Z"},
                "spec": spec, "status": status});
            std::sync::Arc::new(serde_json::from_value(job).unwrap())
        })
        .collect()
}

/// The backlog taking in every stored job (what a pass does after a relist, and for each
/// changed job): jobs that run a definition read their request through the revision,
/// held once, instead of from a container of their own. The pass that follows reads the
/// same entries either way (`scheduling_pass`).
fn backlog_intake(c: &mut Criterion) {
    use barge::controller::backlog::{Backlog, Lookups};
    use kube::runtime::reflector::ObjectRef;
    let def: std::sync::Arc<barge::api::JobDefinitionSpec> = std::sync::Arc::new(
        serde_json::from_value(serde_json::json!({"container": {"image": "busybox",
            "command": ["render", "--frame", "Ref::frame"], "resources": {"vcpus": 1, "memory": "2Gi"}}}))
        .unwrap(),
    );
    let mut group = c.benchmark_group("backlog_intake_100k");
    group.sample_size(10);
    for (name, definition) in [("container", false), ("definition", true)] {
        let jobs = stored_jobs(definition);
        let job = |_: &ObjectRef<barge::api::BatchJob>| None;
        let pod_known = |_: &str, _: &str| false;
        let allowed = |_: &str, _: &str| true;
        let pinned = |j: &barge::api::BatchJob| Ok(j.spec.job_definition.as_ref().map(|_| def.clone()));
        let lookups = Lookups {
            job: &job,
            pod_known: &pod_known,
            namespace_allowed: &allowed,
            definition: &pinned,
            role_account: &|_, _| None,
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut backlog = Backlog::default();
                for j in &jobs {
                    backlog.refresh(&ObjectRef::from_obj(j.as_ref()), Some(j), &lookups);
                }
                assert_eq!(backlog.jobs.len(), jobs.len());
                backlog
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scheduling_pass, held_pass, gang_pass, bin_packing, backlog_intake);
criterion_main!(benches);
