//! The scheduling pass: one task that takes a snapshot of the stores, asks the pure
//! planner what to admit, creates the admitted pods with bounded concurrency, and hands
//! the "why waiting" verdicts to the job controller and the demand to the capacity
//! controller.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::array::{ChildGate, Children, Gates};
use super::pod::LABEL_SHARE;
use super::pod::{build_pod, job_request, pod_is_active, pod_request};
use super::{
    Shared, Verdict, node_allocatable, node_compute_environment, node_is_cordoned, node_is_ready, node_vcpus,
};
use crate::api::LABEL_JOB_QUEUE;
use crate::api::batch_job::{JobPhase, child_pod_name, pod_name};
use crate::api::{BatchJob, ComputeEnvironment, LABEL_COMPUTE_ENVIRONMENT, State};
use crate::capacity::catalog;
use crate::resources::Res;
use crate::scheduler::{self, CeInfo, FairShare, NodeInfo, PendingJob, QueueInfo, Snapshot};

/// A pass runs at least this often, to notice time passing (and lost wake-ups).
const TICK: Duration = Duration::from_secs(2);
/// After a wake-up, wait this long for more changes so that a burst makes one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Concurrent pod creations: enough to keep the API server busy, few enough not to flood it.
const CREATE_CONCURRENCY: usize = 64;
/// An admitted pod not yet seen in the pod store is forgotten after this long.
const INFLIGHT_TTL: Duration = Duration::from_secs(30);

/// Fair-share usage of one share.
#[derive(Default)]
struct ShareUsage {
    /// vCPU-seconds, halved every `shareDecaySeconds`.
    decayed: f64,
    /// vCPUs its pods hold now.
    running: f64,
}

/// Usage per queue and share, carried from pass to pass (restarts begin from zero).
struct UsageState {
    usage: HashMap<String, HashMap<String, ShareUsage>>,
    last: Instant,
}

struct Inflight {
    compute_environment: String,
    request: Res,
    since: Instant,
}

pub async fn run(
    ctx: Arc<Shared>,
    verdicts: UnboundedSender<ObjectRef<BatchJob>>,
    capacity: UnboundedSender<ObjectRef<ComputeEnvironment>>,
) {
    let mut inflight: HashMap<String, Inflight> = HashMap::new();
    let mut usage = UsageState { usage: HashMap::new(), last: Instant::now() };
    loop {
        tokio::select! {
            _ = ctx.schedule_now.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(TICK) => {}
        }
        if !ctx.ready() {
            continue;
        }
        let started = Instant::now();
        let (admitted, waiting) = pass(&ctx, &mut inflight, &mut usage, &verdicts, &capacity).await;
        let took = started.elapsed();
        crate::metrics::metrics().scheduling_pass_seconds.observe(took.as_secs_f64());
        if admitted > 0 {
            info!(admitted, waiting, took_ms = took.as_millis() as u64, "scheduling pass");
        } else {
            debug!(waiting, took_ms = took.as_millis() as u64, "scheduling pass");
        }
        // Over a large backlog a pass is costly and wake-ups never stop (every submission
        // rings): rest as long as the pass took, so passes use at most half a core.
        if took > DEBOUNCE {
            tokio::time::sleep(took).await;
        }
    }
}

/// One pass; returns (admitted, waiting).
async fn pass(
    ctx: &Shared,
    inflight: &mut HashMap<String, Inflight>,
    usage_state: &mut UsageState,
    verdict_tx: &UnboundedSender<ObjectRef<BatchJob>>,
    capacity_tx: &UnboundedSender<ObjectRef<ComputeEnvironment>>,
) -> (usize, usize) {
    let ces = ctx.compute_environments.state();
    let mut ce_infos: Vec<CeInfo> = ces
        .iter()
        .map(|ce| {
            let (types, _) = catalog::resolve(&ce.spec.instance_types);
            CeInfo {
                name: ce.name_any(),
                enabled: ce.spec.state == State::Enabled && ce.meta().deletion_timestamp.is_none(),
                max_vcpus: ce.spec.max_vcpus,
                total_vcpus: 0,
                shapes: types.iter().map(|t| t.allocatable()).collect(),
                nodes: Vec::new(),
                cannot_grow: ctx.cannot_grow.lock().expect("cannot_grow lock").get(&ce.name_any()).cloned(),
            }
        })
        .collect();
    let ce_index: HashMap<String, usize> =
        ce_infos.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
    let mut node_slot: HashMap<String, (usize, usize)> = HashMap::new();
    for node in ctx.nodes.state() {
        let Some(&ci) = node_compute_environment(&node).and_then(|c| ce_index.get(c)) else {
            continue;
        };
        let ce = &mut ce_infos[ci];
        ce.total_vcpus += node_vcpus(&node);
        if node_is_cordoned(&node) {
            continue;
        }
        node_slot.insert(node.name_any(), (ci, ce.nodes.len()));
        ce.nodes.push(NodeInfo {
            name: node.name_any(),
            free: node_allocatable(&node),
            ready: node_is_ready(&node),
        });
    }

    for ce in ce_infos.iter_mut() {
        for l in ctx.launching(&ce.name) {
            ce.total_vcpus += l.vcpus;
            ce.nodes.push(NodeInfo { name: l.node, free: l.allocatable, ready: false });
        }
    }

    let mut running_by_share: HashMap<(String, String), f64> = HashMap::new();
    // Resources held by Barge pods: on their node when bound, else against their environment.
    let mut present: HashSet<String> = HashSet::new();
    let mut unbound: Vec<(usize, Res)> = Vec::new();
    for p in ctx.pods.state() {
        let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        inflight.remove(&key);
        present.insert(key);
        if !pod_is_active(&p) {
            continue;
        }
        let request = pod_request(&p);
        if let (Some(q), Some(share)) = (p.labels().get(LABEL_JOB_QUEUE), p.labels().get(LABEL_SHARE))
            && p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
        {
            *running_by_share.entry((q.clone(), share.clone())).or_default() += request.vcpus();
        }
        match p.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            Some(node) => {
                if let Some(&(ci, ni)) = node_slot.get(node) {
                    ce_infos[ci].nodes[ni].free -= request;
                }
            }
            None => {
                if let Some(&ci) = p.labels().get(LABEL_COMPUTE_ENVIRONMENT).and_then(|c| ce_index.get(c)) {
                    unbound.push((ci, request));
                }
            }
        }
    }
    inflight.retain(|_, f| f.since.elapsed() < INFLIGHT_TTL);
    for f in inflight.values() {
        if let Some(&ci) = ce_index.get(&f.compute_environment) {
            unbound.push((ci, f.request));
        }
    }
    for (ci, request) in unbound {
        // kube-scheduler will place it somewhere that fits: hold room on the first such node.
        if let Some(n) = ce_infos[ci].nodes.iter_mut().find(|n| n.free.fits(&request)) {
            n.free -= request;
        }
    }

    // Fair-share usage: vCPU-seconds per (queue, share), decayed by each queue's half-life.
    let now = Instant::now();
    let dt = now.duration_since(usage_state.last).as_secs_f64();
    usage_state.last = now;
    let queue_objects = ctx.queues.state();
    let decay_of: HashMap<String, u32> = queue_objects
        .iter()
        .filter_map(|q| q.spec.fair_share.as_ref().map(|f| (q.name_any(), f.share_decay_seconds)))
        .collect();
    for (q, shares) in usage_state.usage.iter_mut() {
        let half_life = decay_of.get(q).copied().unwrap_or(0).max(1) as f64;
        for u in shares.values_mut() {
            u.decayed *= 0.5f64.powf(dt / half_life);
            u.running = 0.0;
        }
    }
    for ((q, share), vcpus) in &running_by_share {
        let u = usage_state.usage.entry(q.clone()).or_default().entry(share.clone()).or_default();
        u.running = *vcpus;
        u.decayed += vcpus * dt;
    }
    let usage = &usage_state.usage;

    let queues: Vec<QueueInfo> = queue_objects
        .iter()
        .map(|q| {
            let mut order = q.spec.compute_environment_order.clone();
            order.sort_by_key(|o| o.order);
            QueueInfo {
                name: q.name_any(),
                priority: q.spec.priority,
                enabled: q.spec.state == State::Enabled,
                compute_environments: order.into_iter().map(|o| o.compute_environment).collect(),
                fair_share: q.spec.fair_share.as_ref().map(|f| {
                    let name = q.name_any();
                    let share_usage = usage.get(&name);
                    FairShare {
                        weights: f
                            .share_distribution
                            .iter()
                            .map(|w| (w.share_identifier.clone(), w.weight_factor))
                            .collect(),
                        usage: share_usage
                            .map(|m| {
                                m.iter()
                                    .map(|(share, u)| {
                                        let v = if f.share_decay_seconds > 0 {
                                            u.decayed / f.share_decay_seconds as f64
                                        } else {
                                            u.running
                                        };
                                        (share.clone(), v)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        running: share_usage
                            .map(|m| m.iter().map(|(share, u)| (share.clone(), u.running)).collect())
                            .unwrap_or_default(),
                        compute_reservation: f.compute_reservation,
                    }
                }),
            }
        })
        .collect();
    let selectors: HashMap<String, _> =
        queue_objects.iter().map(|q| (q.name_any(), q.spec.namespace_selector.clone())).collect();
    let namespace_labels: HashMap<String, _> =
        ctx.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect();

    let mut pending_jobs: Vec<(Arc<BatchJob>, Option<u32>, u32)> = Vec::new();
    let mut snapshot_jobs: Vec<PendingJob> = Vec::new();
    let mut new_verdicts: HashMap<String, Verdict> = HashMap::new();
    let no_status = crate::api::batch_job::BatchJobStatus::default();
    for job in ctx.jobs.state() {
        let status = job.status.as_ref().unwrap_or(&no_status);
        let ns = job.namespace().unwrap_or_default();
        let whole_job_deps =
            job.spec.array.is_none() || job.spec.depends_on.iter().any(|d| d.type_.is_none());
        let gated = whole_job_deps
            && !job.spec.depends_on.is_empty()
            && matches!(status.phase, JobPhase::Pending | JobPhase::Submitted);
        if gated {
            // Wake the job controller once every dependency has ended, so that it moves on.
            let ended = job.spec.depends_on.iter().all(|d| {
                ctx.jobs
                    .get(&ObjectRef::new(&d.job_name).within(&ns))
                    .is_some_and(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
            });
            if ended {
                let _ = verdict_tx.unbounded_send(ObjectRef::from_obj(job.as_ref()));
            }
            continue;
        }
        // Only a job waiting for its next attempt is admitted: a STARTING or RUNNING job whose
        // pod just vanished is the job controller's to record first (never re-run the attempt).
        let open_attempt = status.attempts.iter().any(|a| a.stopped_at.is_none());
        let waiting = matches!(status.phase, JobPhase::Submitted | JobPhase::Runnable);
        let stopping = job.spec.cancel.is_some() || job.spec.terminate.is_some();
        let is_array = job.spec.array.is_some();
        if stopping || status.phase.is_finished() || job.meta().deletion_timestamp.is_some() {
            continue;
        }
        if !is_array && (!waiting || open_attempt) {
            continue;
        }
        // The pods this job waits for: (child index, attempt) of each waiting child of an
        // array, or its next attempt.
        let (name, uid) = (job.name_any(), job.uid().unwrap_or_default());
        let wanted: Vec<(Option<u32>, u32)> = if is_array {
            let children = Children::of(&job);
            let gates = Gates::of(&job, |n| ctx.jobs.get(&ObjectRef::new(n).within(&ns)));
            children
                .waiting()
                .filter(|i| gates.gate(*i) == ChildGate::Ready)
                .map(|i| (Some(i), children.attempt(i)))
                .collect()
        } else {
            vec![(None, super::job::current_attempt(status))]
        };
        let wanted: Vec<(Option<u32>, u32)> = wanted
            .into_iter()
            .filter(|(i, a)| {
                let pod = match i {
                    Some(i) => child_pod_name(&name, &uid, *i, *a),
                    None => pod_name(&name, &uid, *a),
                };
                let key = format!("{ns}/{pod}");
                !present.contains(&key) && !inflight.contains_key(&key)
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let request = match job_request(&job) {
            Ok(r) => r,
            Err(e) => {
                new_verdicts
                    .insert(job.uid().unwrap_or_default(), Verdict::Waiting(format!("Invalid job: {e}")));
                continue;
            }
        };
        let namespace_allowed = match selectors.get(&job.spec.job_queue) {
            Some(Some(sel)) => namespace_labels.get(&ns).is_some_and(|l| sel.matches(l)),
            _ => true,
        };
        for (index, attempt) in wanted {
            snapshot_jobs.push(PendingJob {
                // Children sort by index within their parent.
                name: match index {
                    Some(i) => format!("{ns}/{name}[{i:05}]"),
                    None => format!("{ns}/{name}"),
                },
                queue: job.spec.job_queue.clone(),
                namespace_allowed,
                scheduling_priority: job.spec.scheduling_priority,
                submitted_ms: job.meta().creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond()),
                request,
                share: job.spec.share_identifier.clone(),
            });
            pending_jobs.push((job.clone(), index, attempt));
        }
    }

    for q in queues.iter().filter(|q| q.fair_share.is_some()) {
        debug!(queue = %q.name, usage = ?q.fair_share.as_ref().map(|f| &f.usage), "fair-share usage");
    }
    let snapshot = Snapshot { jobs: snapshot_jobs, queues, compute_environments: ce_infos };
    let plan = scheduler::plan(&snapshot);

    // Create the admitted pods.
    let ce_by_name: HashMap<String, Arc<ComputeEnvironment>> =
        ces.iter().map(|c| (c.name_any(), c.clone())).collect();
    let mut creations = Vec::new();
    let metrics = crate::metrics::metrics();
    let now = chrono::Utc::now();
    for adm in &plan.admitted {
        let (job, index, attempt) = &pending_jobs[adm.job];
        metrics.admissions.inc();
        if let Some(since) = job.status.as_ref().and_then(|s| s.runnable_at) {
            metrics.runnable_seconds.observe((now - since).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let ce = &ce_by_name[&adm.compute_environment];
        let uid = job.uid().unwrap_or_default();
        match build_pod(job, ce, *attempt, *index) {
            Ok(pod) => {
                let key = format!("{}/{}", job.namespace().unwrap_or_default(), pod.name_any());
                inflight.insert(
                    key,
                    Inflight {
                        compute_environment: adm.compute_environment.clone(),
                        request: snapshot.jobs[adm.job].request,
                        since: Instant::now(),
                    },
                );
                new_verdicts.insert(
                    uid.clone(),
                    Verdict::Admitted { compute_environment: adm.compute_environment.clone() },
                );
                creations.push((uid, pod));
            }
            Err(e) => {
                new_verdicts.insert(uid, Verdict::Waiting(format!("Invalid job: {e}")));
            }
        }
    }
    let creating = (!creations.is_empty()).then(|| ctx.creating());
    let failures: Vec<(String, String, String)> = stream::iter(creations)
        .map(|(uid, pod)| async move {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => None,
                // Created by an earlier pass or an earlier run of Barge: the name is the attempt.
                Err(kube::Error::Api(e)) if e.code == 409 => None,
                Err(e) => {
                    warn!(pod = %pod.name_any(), error = %e, "creating pod failed");
                    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                    Some((uid, key, format!("Could not create pod {}: {e}; will retry", pod.name_any())))
                }
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    drop(creating);
    for (uid, key, why) in failures {
        inflight.remove(&key);
        new_verdicts.insert(uid, Verdict::Waiting(why));
    }
    for (i, why) in &plan.waiting {
        // An array's verdict is its first waiting child's.
        new_verdicts
            .entry(pending_jobs[*i].0.uid().unwrap_or_default())
            .or_insert_with(|| Verdict::Waiting(why.to_string()));
    }

    // Hand the verdicts that changed to the job controller.
    let by_uid: HashMap<String, &Arc<BatchJob>> =
        pending_jobs.iter().map(|(j, _, _)| (j.uid().unwrap_or_default(), j)).collect();
    {
        let mut old = ctx.verdicts.lock().expect("verdicts lock");
        for (uid, v) in &new_verdicts {
            // An admitted job hears of it from its new pod: a status write of its own
            // ("admitted, creating the pod") would only add load for a moment's state.
            if old.get(uid) != Some(v)
                && !matches!(v, Verdict::Admitted { .. })
                && let Some(job) = by_uid.get(uid)
            {
                let _ = verdict_tx.unbounded_send(ObjectRef::from_obj(job.as_ref()));
            }
        }
        *old = new_verdicts;
    }

    // Hand the demand to the capacity controller.
    {
        let mut demand = ctx.demand.lock().expect("demand lock");
        for ce in ces.iter() {
            let name = ce.name_any();
            let had = demand.get(&name).map_or(0, Vec::len);
            let has = plan.demand.get(&name).map_or(0, Vec::len);
            if had != has || has > 0 {
                let _ = capacity_tx.unbounded_send(ObjectRef::from_obj(ce.as_ref()));
            }
        }
        *demand = plan.demand.clone();
    }
    *ctx.blocked.lock().expect("blocked lock") =
        plan.blocked_queues.iter().map(|(q, w)| (q.clone(), w.to_string())).collect();
    (plan.admitted.len(), plan.waiting.len())
}
