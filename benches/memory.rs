//! What holding many BatchJobs costs the operator's memory, piece by piece, without a
//! cluster: held jobs as the API server sends them (kubectl's annotation, managedFields,
//! the status Barge wrote) go through the same pruning into a reflector store, then into
//! the scheduling pass's backlog, one plan, and the verdicts. It prints the bytes each
//! piece holds per job and the process's resident memory; `make bench-memory` runs it.
//! The cluster benchmark's hold (`BENCH_HOLD`) measures the whole operator live.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use barge::api::BatchJob;
use barge::api::job_definition::JobDefinitionSpec;
use barge::controller::backlog::{Backlog, Lookups};
use barge::controller::{Verdict, prune_job, prune_object};
use barge::scheduler::{CeInfo, QueueInfo, Snapshot, plan};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::Event;

/// The system allocator, as in the operator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// What the held jobs run: a container of their own, or a job definition's revision.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Container,
    Definition,
}

/// The definition the `Definition`-shaped jobs run, as a revision holds it.
fn definition() -> Arc<JobDefinitionSpec> {
    Arc::new(
        serde_json::from_str(
            r#"{"container":{"command":["render","--frame","Ref::frame"],"image":"busybox","resources":{"memory":"64Mi","vcpus":1}},"parameters":{"frame":"0"}}"#,
        )
        .unwrap(),
    )
}

/// A held job as a watch event brings it once Barge has written its status.
fn held_job_json(i: usize, with_status: bool, shape: Shape) -> String {
    let name = format!("h-{i}");
    let uid = format!("{:08x}-0000-4000-8000-{i:012x}", i.wrapping_mul(2654435761) % (1 << 32));
    let (spec, spec_fields) = match shape {
        Shape::Container => (
            r#"{"container":{"command":["true"],"image":"busybox","resources":{"memory":"64Mi","vcpus":1}},"jobQueue":"bench-held"}"#.to_string(),
            r#""f:container":{".":{},"f:command":{},"f:image":{},"f:resources":{".":{},"f:memory":{},"f:vcpus":{}}},"f:jobQueue":{}"#,
        ),
        Shape::Definition => (
            format!(r#"{{"jobDefinition":"render","jobQueue":"bench-held","parameters":{{"frame":"{i}"}}}}"#),
            r#""f:jobDefinition":{},"f:jobQueue":{},"f:parameters":{".":{},"f:frame":{}}"#,
        ),
    };
    let manifest = format!(
        r#"{{"apiVersion":"barge.dev/v1alpha1","kind":"BatchJob","metadata":{{"annotations":{{}},"labels":{{"bench":"barge"}},"name":"{name}","namespace":"bench-barge"}},"spec":{spec}}}"#
    );
    let pinned = if shape == Shape::Definition { r#","jobDefinition":"render:1""# } else { "" };
    let status = if with_status {
        format!(
            r#","status":{{"phase":"RUNNABLE","statusReason":"Job queue bench-held is DISABLED and admits no jobs","createdAt":"2026-11-27T07:00:00Z","runnableAt":"2026-11-27T07:00:01Z","observedGeneration":1{pinned}}}"#
        )
    } else {
        String::new()
    };
    let status_fields = if with_status {
        r#",{"manager":"barge","operation":"Apply","apiVersion":"barge.dev/v1alpha1","time":"2026-11-27T07:00:01Z","fieldsType":"FieldsV1","fieldsV1":{"f:status":{"f:createdAt":{},"f:observedGeneration":{},"f:phase":{},"f:runnableAt":{},"f:statusReason":{}}},"subresource":"status"}"#
    } else {
        ""
    };
    format!(
        r#"{{"apiVersion":"barge.dev/v1alpha1","kind":"BatchJob","metadata":{{"name":"{name}","namespace":"bench-barge","uid":"{uid}","resourceVersion":"{rv}","generation":1,"creationTimestamp":"2026-11-27T07:{m:02}:{s:02}Z","labels":{{"bench":"barge"}},"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":{manifest_json}}},"managedFields":[{{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"barge.dev/v1alpha1","time":"2026-11-27T07:00:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:annotations":{{".":{{}},"f:kubectl.kubernetes.io/last-applied-configuration":{{}}}},"f:labels":{{".":{{}},"f:bench":{{}}}}}},"f:spec":{{".":{{}},{spec_fields}}}}}}}{status_fields}]}},"spec":{spec}{status}}}"#,
        rv = 1_000_000 + 2 * i + with_status as usize,
        m = (i / 1000) / 60 % 60,
        s = (i / 1000) % 60,
        manifest_json = serde_json::to_string(&manifest).unwrap(),
    )
}

fn decode(line: &str) -> BatchJob {
    let mut job: BatchJob = serde_json::from_str(line).expect("a held job decodes");
    prune_object(&mut job);
    prune_job(&mut job);
    job
}

/// Measures both shapes side by side, each in a process of its own so that resident memory
/// is the shape's own: jobs with a container, then jobs that run a job definition.
fn main() {
    let Ok(shape) = std::env::var("BENCH_SHAPE") else {
        for shape in ["container", "definition"] {
            let exe = std::env::current_exe().expect("the bench binary");
            let status = std::process::Command::new(exe)
                .args(std::env::args().skip(1))
                .env("BENCH_SHAPE", shape)
                .status()
                .expect("the bench runs");
            assert!(status.success(), "the {shape} run failed");
        }
        return;
    };
    let shape = match shape.as_str() {
        "container" => Shape::Container,
        "definition" => Shape::Definition,
        other => panic!("BENCH_SHAPE is container or definition, not {other}"),
    };
    let n: usize = std::env::var("BENCH_HOLD").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    // Status writes trail creations by this many jobs, as the job controller does.
    const LAG: usize = 2_000;
    let (live0, rss0) = (LIVE.load(Ordering::Relaxed), rss_mib());
    let mut rows: Vec<(&str, isize)> = Vec::new();

    let (store, mut writer) = reflector::store::<BatchJob>();
    writer.apply_watcher_event(&Event::InitDone);
    for i in 0..n + LAG {
        if i < n {
            writer.apply_watcher_event(&Event::Apply(decode(&held_job_json(i, false, shape))));
        }
        if i >= LAG {
            writer.apply_watcher_event(&Event::Apply(decode(&held_job_json(i - LAG, true, shape))));
        }
    }
    let live_store = LIVE.load(Ordering::Relaxed);
    rows.push(("job store", live_store - live0));

    let mut backlog = Backlog::default();
    {
        let job = |k: &ObjectRef<BatchJob>| store.get(k);
        let pod_known = |_: &str, _: &str| false;
        let allowed = |_: &str, _: &str| true;
        // Every job of the definition shape runs the one revision, held once.
        let def = definition();
        let definition = |j: &BatchJob| Ok(j.spec.job_definition.as_ref().map(|_| def.clone()));
        let lookups = Lookups {
            job: &job,
            pod_known: &pod_known,
            namespace_allowed: &allowed,
            definition: &definition,
            role_account: &|_, _| None,
        };
        for job in store.state() {
            backlog.refresh(&ObjectRef::from_obj(job.as_ref()), Some(&job), &lookups);
        }
    }
    let live_backlog = LIVE.load(Ordering::Relaxed);
    rows.push(("backlog", live_backlog - live_store));

    let queues = vec![QueueInfo {
        name: "bench-held".into(),
        priority: 1,
        enabled: false,
        compute_environments: vec!["bench".into()],
        fair_share: None,
    }];
    let ces = vec![CeInfo {
        name: "bench".into(),
        enabled: true,
        max_vcpus: 0,
        total_vcpus: 0,
        shapes: Vec::new(),
        nodes: Vec::new(),
        cannot_grow: None,
        room: None,
    }];
    let snapshot = Snapshot {
        jobs: std::mem::take(&mut backlog.jobs),
        queues,
        compute_environments: ces,
        ..Default::default()
    };
    let plan = plan(&snapshot);
    backlog.jobs = snapshot.jobs;
    let live_plan = LIVE.load(Ordering::Relaxed);
    rows.push(("plan", live_plan - live_backlog));

    // The verdicts as the pass keeps them: by uid, each reason's text shared.
    let texts: Vec<Arc<str>> = plan.reasons.iter().map(|w| w.to_string().into()).collect();
    let mut verdicts: HashMap<Arc<str>, (Verdict, u64)> = HashMap::new();
    for (at, reason) in &plan.waiting {
        let owner = &mut backlog.owners[*at];
        owner.said = Some(texts[*reason].clone());
        verdicts.insert(owner.uid.clone(), (Verdict::Waiting(texts[*reason].clone()), 1));
    }
    let live_verdicts = LIVE.load(Ordering::Relaxed);
    rows.push(("verdicts", live_verdicts - live_plan));
    drop(plan);

    let rss = rss_mib();
    let what = match shape {
        Shape::Container => "each with its container",
        Shape::Definition => "each running a job definition",
    };
    println!("held jobs: {n}, {what}");
    println!("| piece | MiB | bytes a job |");
    println!("|---|---|---|");
    for (piece, bytes) in rows {
        println!("| {piece} | {:.1} | {} |", bytes as f64 / 1048576.0, bytes / n as isize);
    }
    let total = LIVE.load(Ordering::Relaxed) - live0;
    println!("| all live | {:.1} | {} |", total as f64 / 1048576.0, total / n as isize);
    println!("resident: {:.1} MiB (at start {:.1})", rss, rss0);
    println!(
        "fixed layout: BatchJob {} bytes (metadata {}, spec {}, status {}); a backlog entry {} + {}",
        std::mem::size_of::<BatchJob>(),
        std::mem::size_of::<kube::api::ObjectMeta>(),
        std::mem::size_of::<barge::api::batch_job::BatchJobSpec>(),
        std::mem::size_of::<Option<barge::api::batch_job::BatchJobStatus>>(),
        std::mem::size_of::<barge::scheduler::PendingJob>(),
        std::mem::size_of::<barge::controller::backlog::Owner>(),
    );
    assert_eq!(store.len(), n);
    assert_eq!(verdicts.len(), n, "every held job has a verdict");
}
