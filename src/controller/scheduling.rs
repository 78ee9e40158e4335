//! The scheduling pass: one task that keeps the backlog of waiting pods up to date from
//! the watches, asks the pure planner what to admit, creates the admitted pods with
//! bounded concurrency, and hands the "why waiting" verdicts to the job controller and the
//! demand to the capacity controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

use super::backlog::{Backlog, Change, Lookups, job_ref};
use super::container::PodInputs;
use super::context::Shared;
use super::pod::{NodePlacement, build_node_pod, build_pod};
use crate::api::compute_environment::Provider;
use crate::api::job_definition::work;
use crate::api::job_queue::{FairShareUsage, LabelSelector};
use crate::api::{BatchJob, ComputeEnvironment, JobQueue, State};
use crate::capacity::catalog;
use crate::k8s::{
    node_allocatable, node_compute_environment, node_is_cordoned, node_is_ready, node_vcpus, ns_key,
    split_key,
};
use crate::resources::Res;
use crate::scheduler::usage::{Policy, Usage};
use crate::scheduler::{self, CeInfo, NodeInfo, Plan, QueueInfo, Snapshot, Waiting};
use crate::state::{HandOff, NodeHold, Verdict};

/// Usage per queue and share, carried from pass to pass, recorded in each fair-share
/// queue's status and taken up from there when Barge starts.
struct UsageState {
    usage: Usage,
    last: Instant,
    /// Whether the usage the queues' statuses recorded has been taken up.
    restored: bool,
    /// When the usage was last handed to the queue status loop.
    recorded: Option<Instant>,
    /// Queues whose usage has been recorded since Barge started.
    published: HashSet<String>,
    /// Queues whose shares ran something since their last record.
    accrued: HashSet<String>,
}

impl UsageState {
    fn new() -> Self {
        UsageState {
            usage: Usage::default(),
            last: Instant::now(),
            restored: false,
            recorded: None,
            published: HashSet::new(),
            accrued: HashSet::new(),
        }
    }

    /// Takes up the usage each fair-share queue's status recorded, decayed for the time
    /// since it was recorded.
    fn restore(&mut self, queues: &[Arc<JobQueue>]) {
        self.restored = true;
        let now = chrono::Utc::now();
        for q in queues {
            let (Some(policy), Some(record)) =
                (&q.spec.fair_share, q.status.as_ref().and_then(|s| s.fair_share_usage.as_ref()))
            else {
                continue;
            };
            for (share, decayed) in record.decayed_to(now, policy.share_decay_seconds) {
                self.usage.restore(&q.name_any(), &share, decayed);
            }
        }
    }

    /// The usage to record in each fair-share queue's status (queues whose usage decays).
    /// A queue that ran nothing since its last record is left out: that record, decayed
    /// for the time since, is still its usage, and an idle queue's status stays unwritten.
    fn record(&mut self, decay_of: &HashMap<String, u32>) -> HashMap<String, FairShareUsage> {
        let recorded_at = chrono::Utc::now();
        let (published, accrued) = (&mut self.published, &mut self.accrued);
        self.usage
            .queues()
            .filter(|(q, _)| decay_of.get(*q).is_some_and(|d| *d > 0))
            .filter(|(q, _)| published.insert((*q).clone()) | accrued.remove(*q))
            .map(|(q, shares)| {
                // Tenths of a vCPU-second: enough for any share, and steady digits in status.
                let vcpu_seconds = shares
                    .iter()
                    .map(|(share, u)| (share.clone(), (u.decayed * 10.0).round() / 10.0))
                    .filter(|(_, v)| *v > 0.0)
                    .collect();
                (q.clone(), FairShareUsage { recorded_at, vcpu_seconds })
            })
            .collect()
    }

    /// Moves the usage on to now with what each share holds; hands it to the queue status
    /// loop every `interval`. Returns what the planner reads of each queue.
    fn advance(
        &mut self,
        queues: &[Arc<JobQueue>],
        running: &HashMap<(String, String), f64>,
        interval: Duration,
        handoff: &HandOff,
    ) -> Vec<QueueInfo> {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let decay_of: HashMap<String, u32> = queues
            .iter()
            .filter_map(|q| q.spec.fair_share.as_ref().map(|f| (q.name_any(), f.share_decay_seconds)))
            .collect();
        if !self.restored {
            self.restore(queues);
        }
        let accrued = self.usage.advance(dt, &decay_of, running);
        self.accrued.extend(accrued);
        if self.recorded.is_none_or(|at| now.duration_since(at) >= interval) {
            self.recorded = Some(now);
            handoff.record_share_usage(self.record(&decay_of));
        }
        queues.iter().map(|q| queue_info(q, &self.usage)).collect()
    }
}

/// What the planner reads of a queue.
fn queue_info(q: &JobQueue, usage: &Usage) -> QueueInfo {
    let mut order = q.spec.compute_environment_order.clone();
    order.sort_by_key(|o| o.order);
    let name = q.name_any();
    QueueInfo {
        priority: q.spec.priority,
        enabled: q.spec.state == State::Enabled,
        compute_environments: order.into_iter().map(|o| o.compute_environment).collect(),
        fair_share: q.spec.fair_share.as_ref().map(|f| {
            let policy = Policy {
                weights: f
                    .share_distribution
                    .iter()
                    .map(|w| (w.share_identifier.clone(), w.weight_factor))
                    .collect(),
                share_decay_seconds: f.share_decay_seconds,
                compute_reservation: f.compute_reservation,
            };
            usage.fair_share(&name, &policy)
        }),
        name,
    }
}

struct Inflight {
    job: ObjectRef<BatchJob>,
    compute_environment: String,
    request: Res,
    /// The nodes a multi-node job's main pod holds whole for the job (none for other pods).
    whole: Vec<String>,
    /// The node Barge bound the pod to, if it did (see `pod::bind_to_node`).
    node: Option<String>,
    since: Instant,
}

/// What the pass carries from one run to the next.
struct PassState {
    /// Pods created (or being created) but not yet in the pod store, by "namespace/name".
    inflight: HashMap<String, Inflight>,
    usage: UsageState,
    backlog: Backlog,
    /// Jobs to look at again, and whether to look at every job.
    dirty: HashSet<ObjectRef<BatchJob>>,
    rebuild: bool,
    /// Queue namespace selectors and namespace labels the backlog was built against.
    selection: Selection,
    /// Numbers the passes: a job keeps the first verdict of a pass.
    number: u64,
    /// The reasons of the last pass in words, kept so that an unchanged reason is the same
    /// shared text from pass to pass.
    words: HashMap<Waiting, Arc<str>>,
}

#[derive(Default, PartialEq)]
struct Selection {
    selectors: HashMap<String, Option<LabelSelector>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

impl Selection {
    fn allows(&self, queue: &str, namespace: &str) -> bool {
        match self.selectors.get(queue) {
            Some(Some(sel)) => self.namespaces.get(namespace).is_some_and(|l| sel.matches(l)),
            _ => true,
        }
    }
}

pub async fn run(
    ctx: Arc<Shared>,
    mut changes: UnboundedReceiver<Change>,
    verdicts: UnboundedSender<ObjectRef<BatchJob>>,
    capacity: UnboundedSender<ObjectRef<ComputeEnvironment>>,
) {
    let mut state = PassState {
        inflight: HashMap::new(),
        usage: UsageState::new(),
        backlog: Backlog::default(),
        dirty: HashSet::new(),
        rebuild: true,
        selection: Selection::default(),
        number: 0,
        words: HashMap::new(),
    };
    let t = ctx.tunables.clone();
    loop {
        tokio::select! {
            _ = ctx.schedule_now.notified() => tokio::time::sleep(t.scheduling_debounce).await,
            _ = tokio::time::sleep(t.scheduling_tick) => {}
        }
        while let Ok(change) = changes.try_recv() {
            match change {
                Change::Job(job) => {
                    state.dirty.insert(job);
                }
                Change::All => state.rebuild = true,
            }
        }
        if !ctx.ready() {
            continue;
        }
        let started = Instant::now();
        let Outcome { admitted, waiting, creating } = pass(&ctx, &mut state, &verdicts, &capacity).await;
        // The pass's own work, without the pod creations it waited for.
        let took = started.elapsed().saturating_sub(creating);
        crate::metrics::metrics().scheduling_pass_seconds.observe(took.as_secs_f64());
        if admitted > 0 {
            let (took_ms, creating_ms) = (took.as_millis() as u64, creating.as_millis() as u64);
            info!(admitted, waiting, took_ms, creating_ms, "scheduling pass");
        } else {
            debug!(waiting, took_ms = took.as_millis() as u64, "scheduling pass");
        }
        // Over a large backlog a pass is costly and wake-ups never stop (every submission
        // rings): rest as long as the pass worked, so passes use at most half a core. Time
        // spent waiting for pod creations is not work: resting for it would hold up the
        // jobs that arrived meanwhile.
        if took > t.scheduling_debounce {
            tokio::time::sleep(took).await;
        }
    }
}

/// What one pass did.
struct Outcome {
    admitted: usize,
    waiting: usize,
    /// Time spent waiting for the admitted pods to be created.
    creating: Duration,
}

/// One pass: snapshot → `scheduler::plan` → admit (create the pods) → hand off.
async fn pass(
    ctx: &Shared,
    st: &mut PassState,
    verdict_tx: &UnboundedSender<ObjectRef<BatchJob>>,
    capacity_tx: &UnboundedSender<ObjectRef<ComputeEnvironment>>,
) -> Outcome {
    let ces = ctx.compute_environments.state();
    let launches_seen = Instant::now();
    let (compute_environments, queues) = snapshot(ctx, st, &ces);
    refresh_backlog(ctx, st, verdict_tx);
    // The planner reads the backlog's list in place; it is handed back after the plan.
    let snapshot = Snapshot {
        jobs: std::mem::take(&mut st.backlog.jobs),
        queues,
        compute_environments,
        now_ms: chrono::Utc::now().timestamp_millis(),
        hold_gangs_after_ms: ctx.tunables.gang_hold_after.as_millis() as i64,
    };
    let plan = scheduler::plan(&snapshot);
    let holds: Vec<NodeHold> = plan
        .holds()
        .into_iter()
        .map(|h| NodeHold {
            job: snapshot.jobs[h.job].name.to_string(),
            queue: snapshot.jobs[h.job].queue.to_string(),
            compute_environment: h.compute_environment.to_string(),
            held: h.held,
            nodes: h.nodes,
        })
        .collect();
    st.backlog.jobs = snapshot.jobs;

    let admission = admit(ctx, st, &plan, &ces);
    let burst = (!admission.creations.is_empty()).then(|| ctx.bursts.begin());
    let creating_since = Instant::now();
    let failures = create_pods(ctx, admission.creations).await;
    // The status writes put off while creating: their jobs are looked at again now.
    for job in burst.map(super::burst::Burst::end).unwrap_or_default() {
        let _ = verdict_tx.unbounded_send(job);
    }
    let creating = creating_since.elapsed();
    let mut first = Vec::new();
    for (at, key, verdict) in failures {
        st.inflight.remove(&key);
        first.push((at, verdict));
    }
    st.dirty.extend(admission.leaving);

    hand_off_verdicts(ctx, st, &plan, first.into_iter().chain(admission.verdicts), verdict_tx);
    let names: Vec<String> = ces.iter().map(|c| c.name_any()).collect();
    for ce in ctx.handoff.set_demand(plan.demand.clone(), launches_seen, &names) {
        let _ = capacity_tx.unbounded_send(ObjectRef::new(&ce));
    }
    for ce in ctx.handoff.set_holds(holds) {
        let _ = capacity_tx.unbounded_send(ObjectRef::new(&ce));
    }
    ctx.handoff.set_blocked(plan.blocked_queues.iter().map(|(q, w)| (q.clone(), w.to_string())).collect());
    Outcome { admitted: plan.admitted.len(), waiting: plan.waiting.len(), creating }
}

/// The compute environments and queues as the planner reads them: each environment's
/// nodes and what Barge's pods (and the pods being created) hold of them, and each queue
/// with its fair-share usage moved on to now. Looks at every job again when the queues'
/// namespace selection changed.
fn snapshot(
    ctx: &Shared,
    st: &mut PassState,
    ces: &[Arc<ComputeEnvironment>],
) -> (Vec<CeInfo>, Vec<QueueInfo>) {
    let mut room = Room::of(ctx, ces);
    // Seen in the store: no longer in flight (its job heard of it from the pod watch).
    st.inflight.retain(|key, _| {
        let (ns, name) = split_key(key);
        ctx.pods.get(&ObjectRef::new(name).within(ns)).is_none()
    });
    // A pod that never showed up: its job waits for it again.
    let ttl = ctx.tunables.inflight_ttl;
    st.inflight.retain(|_, f| {
        let fresh = f.since.elapsed() < ttl;
        if !fresh {
            st.dirty.insert(f.job.clone());
        }
        fresh
    });
    let running_by_share = room.hold(ctx, st.inflight.values());

    let queue_objects = ctx.queues.state();
    let queues =
        st.usage.advance(&queue_objects, &running_by_share, ctx.tunables.usage_record_interval, &ctx.handoff);
    for q in queues.iter().filter(|q| q.fair_share.is_some()) {
        debug!(queue = %q.name, usage = ?q.fair_share.as_ref().map(|f| &f.usage), "fair-share usage");
    }
    let selection = Selection {
        selectors: queue_objects.iter().map(|q| (q.name_any(), q.spec.namespace_selector.clone())).collect(),
        namespaces: ctx.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect(),
    };
    if selection != st.selection {
        // Which namespaces a queue takes is part of every entry: look at every job again.
        st.selection = selection;
        st.rebuild = true;
    }
    (room.ces, queues)
}

/// The compute environments' room as the pass builds it.
struct Room {
    ces: Vec<CeInfo>,
    index: HashMap<String, usize>,
    /// Each node's (environment, node) index in `ces`.
    node_slot: HashMap<String, (usize, usize)>,
}

impl Room {
    /// Every environment with its nodes (ready, cordoned and launching) and their room.
    fn of(ctx: &Shared, ces: &[Arc<ComputeEnvironment>]) -> Room {
        let ces: Vec<CeInfo> = ces.iter().map(|ce| ce_info(ctx, ce)).collect();
        let index = ces.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let mut room = Room { ces, index, node_slot: HashMap::new() };
        for node in ctx.nodes.state() {
            room.add_node(&node);
        }
        for ce in room.ces.iter_mut() {
            for l in ctx.launching(&ce.name) {
                ce.total_vcpus += l.vcpus;
                ce.nodes.push(NodeInfo {
                    name: l.node,
                    free: l.allocatable,
                    ready: false,
                    empty: true,
                    allocatable: l.allocatable,
                });
            }
        }
        room
    }

    fn add_node(&mut self, node: &Node) {
        let Some(&ci) = node_compute_environment(node).and_then(|c| self.index.get(c)) else {
            return;
        };
        let ce = &mut self.ces[ci];
        if ce.room.is_some() {
            // Unmanaged: only its ready nodes count, each a shape of its own; what counts
            // against maxvCpus is what Barge's pods hold (see `take_room`), not the nodes' size.
            if !node_is_ready(node) || node_is_cordoned(node) {
                return;
            }
            ce.shapes.push(node_allocatable(node));
        } else {
            ce.total_vcpus += node_vcpus(node);
        }
        if node_is_cordoned(node) {
            return;
        }
        self.node_slot.insert(node.name_any(), (ci, ce.nodes.len()));
        ce.nodes.push(NodeInfo {
            name: node.name_any(),
            free: node_allocatable(node),
            ready: node_is_ready(node),
            empty: true,
            allocatable: node_allocatable(node),
        });
    }

    /// Takes what Barge's pods hold (on their node when bound, else against their
    /// environment) and what the pods being created will; returns the vCPUs each
    /// (queue, share) holds on nodes.
    fn hold<'a>(
        &mut self,
        ctx: &Shared,
        inflight: impl Iterator<Item = &'a Inflight>,
    ) -> HashMap<(String, String), f64> {
        let mut running_by_share: HashMap<(String, String), f64> = HashMap::new();
        let mut unbound: Vec<(usize, Res)> = Vec::new();
        for held in ctx.usage.lock().expect("pod usage lock").held() {
            let ci = held.compute_environment.as_ref().and_then(|c| self.index.get(c)).copied();
            if let Some(ci) = ci {
                take_room(&mut self.ces[ci], held.request);
            }
            match &held.node {
                Some(node) => {
                    if let Some(share) = &held.share {
                        *running_by_share.entry(share.clone()).or_default() += held.request.vcpus();
                    }
                    self.take_on_node(node, held.request);
                }
                None if held.whole.is_empty() => unbound.extend(ci.map(|ci| (ci, held.request))),
                None => {}
            }
            for node in &held.whole {
                self.take_whole(node);
            }
        }
        for f in inflight {
            if let Some(&ci) = self.index.get(&f.compute_environment) {
                take_room(&mut self.ces[ci], f.request);
                let on_node = f.node.as_ref().is_some_and(|n| self.take_on_node(n, f.request));
                if !on_node && f.whole.is_empty() {
                    unbound.push((ci, f.request));
                }
            }
            for node in &f.whole {
                self.take_whole(node);
            }
        }
        for (ci, request) in unbound {
            // kube-scheduler will place it somewhere that fits: hold room on the first such node.
            if let Some(n) = self.ces[ci].nodes.iter_mut().find(|n| n.free.fits(&request)) {
                n.free -= request;
                n.empty = false;
            }
        }
        running_by_share
    }

    /// Takes `request` from the room of `node`; returns whether the pass knows that node.
    fn take_on_node(&mut self, node: &str, request: Res) -> bool {
        let Some(&(ci, ni)) = self.node_slot.get(node) else { return false };
        let n = &mut self.ces[ci].nodes[ni];
        n.free -= request;
        n.empty = false;
        true
    }

    /// A node a multi-node job's node runs on, or will: it has the node to itself.
    fn take_whole(&mut self, node: &str) {
        if let Some(&(ci, ni)) = self.node_slot.get(node) {
            let n = &mut self.ces[ci].nodes[ni];
            n.free = Res::ZERO;
            n.empty = false;
        }
    }
}

/// An environment as the planner reads it, before its nodes are added.
fn ce_info(ctx: &Shared, ce: &ComputeEnvironment) -> CeInfo {
    let (types, _) = catalog::resolve(&ce.spec.instance_types);
    let unmanaged = ce.spec.provider == Provider::Unmanaged;
    CeInfo {
        name: ce.name_any(),
        enabled: ce.spec.state == State::Enabled && ce.meta().deletion_timestamp.is_none(),
        max_vcpus: ce.spec.max_vcpus,
        total_vcpus: 0,
        shapes: types.iter().map(|t| t.allocatable()).collect(),
        nodes: Vec::new(),
        cannot_grow: match unmanaged {
            true => Some(UNMANAGED.into()),
            false => ctx.cluster.cannot_grow(&ce.name_any()),
        },
        room: unmanaged.then_some(ce.spec.max_vcpus as u64 * 1000),
    }
}

/// What admitting the plan's jobs gives: the pods to create, the verdicts, and the jobs
/// that leave the backlog.
struct Admission {
    /// (backlog index, "namespace/name", pod).
    creations: Vec<(usize, String, Pod)>,
    verdicts: Vec<(usize, Verdict)>,
    leaving: Vec<ObjectRef<BatchJob>>,
}

/// Builds the pod of each admitted job and counts it in flight.
fn admit(ctx: &Shared, st: &mut PassState, plan: &Plan, ces: &[Arc<ComputeEnvironment>]) -> Admission {
    let ce_by_name: HashMap<String, &Arc<ComputeEnvironment>> =
        ces.iter().map(|c| (c.name_any(), c)).collect();
    let mut out = Admission { creations: Vec::new(), verdicts: Vec::new(), leaving: Vec::new() };
    let metrics = crate::metrics::metrics();
    let now = chrono::Utc::now();
    let now_instant = Instant::now();
    let backlog = &st.backlog;
    for adm in &plan.admitted {
        let owner = &backlog.owners[adm.job];
        // Admitted or gone, the job leaves the backlog at the next pass.
        let reference = job_ref(&backlog.jobs[adm.job].name);
        out.leaving.push(reference.clone());
        let Some(job) = ctx.jobs.get(&reference) else { continue };
        metrics.admissions.inc();
        if let Some(since) = job.status.as_ref().and_then(|s| s.runnable_at) {
            metrics.runnable_seconds.observe((now - since).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let ce = ce_by_name[&adm.compute_environment];
        let mut bound = false;
        let def = super::revisions::pinned(&ctx.definitions, &job);
        let ns = job.namespace().unwrap_or_default();
        let accounts = |role: &str| ctx.role_account(&ns, role);
        let inputs = PodInputs { namespace: &ns, region: &ctx.region, role_account: &accounts };
        let pod = def.and_then(|d| {
            // The work borrows the revision; the pod is built while both are at hand.
            let work = work(&job.spec, d.as_deref())?;
            let pod = match &work.nodes {
                // A multi-node job starts with its main node, on the node planned for it.
                Some(layout) => {
                    let place =
                        NodePlacement { index: layout.main_node, nodes: &adm.gang, main_address: None };
                    build_node_pod(&job, &work, ce, owner.attempt, &place, &inputs)
                }
                None => build_pod(&job, &work, ce, owner.attempt, owner.index, &inputs).map(|mut pod| {
                    bound = placeable_node(ctx, ce, &adm.node, now_instant)
                        .is_some_and(|node| super::pod::bind_to_node(&mut pod, &node));
                    if !bound {
                        super::pod::prefer_node(&mut pod, &adm.node);
                    }
                    pod
                }),
            };
            pod.map_err(|e| match e {
                crate::Error::InvalidJob(why) => why,
                e => e.to_string(),
            })
        });
        match pod {
            Ok(pod) => {
                let key = ns_key(&job.namespace().unwrap_or_default(), &pod.name_any());
                let flight = Inflight {
                    job: reference,
                    compute_environment: adm.compute_environment.clone(),
                    request: backlog.jobs[adm.job].request,
                    whole: adm.gang.clone(),
                    node: bound.then(|| adm.node.clone()),
                    since: now_instant,
                };
                st.inflight.insert(key.clone(), flight);
                let verdict = Verdict::Admitted { compute_environment: adm.compute_environment.clone() };
                out.verdicts.push((adm.job, verdict));
                out.creations.push((adm.job, key, pod));
            }
            Err(e) => out.verdicts.push((adm.job, Verdict::Waiting(format!("Invalid job: {e}").into()))),
        }
    }
    out
}

/// The node `node` of `ce`, if Barge may bind a pod to it itself: Barge places pods on
/// the nodes of managed environments (it launched them and counts what runs there), when
/// the node is ready and schedulable and its kubelet has not lately refused a pod.
/// Unmanaged environments' nodes, and nodes still launching, are kube-scheduler's.
fn placeable_node(ctx: &Shared, ce: &ComputeEnvironment, node: &str, now: Instant) -> Option<Arc<Node>> {
    if !ctx.tunables.bind_pods || node.is_empty() || ce.spec.provider == Provider::Unmanaged {
        return None;
    }
    let n = ctx.nodes.get(&ObjectRef::new(node))?;
    let usable = node_is_ready(&n)
        && !node_is_cordoned(&n)
        && node_compute_environment(&n) == Some(ce.name_any().as_str())
        && ctx.cluster.may_place_on(node, now);
    usable.then_some(n)
}

/// Creates the pods with bounded concurrency; returns those that failed, with the verdict
/// for their job.
async fn create_pods(ctx: &Shared, creations: Vec<(usize, String, Pod)>) -> Vec<(usize, String, Verdict)> {
    stream::iter(creations)
        .map(|(at, key, pod)| async move {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => None,
                // Created by an earlier pass or an earlier run of Barge: the name is the attempt.
                Err(kube::Error::Api(e)) if e.code == 409 => None,
                Err(e) => {
                    warn!(pod = %pod.name_any(), error = %e, "creating pod failed");
                    let name = pod.name_any();
                    let verdict = match e {
                        kube::Error::Api(ref a) if refusal_is_final(a) => Verdict::Rejected(
                            format!("The cluster refused the job's pod {name}: {}", a.message).into(),
                        ),
                        e => Verdict::Waiting(format!("Could not create pod {name}: {e}; will retry").into()),
                    };
                    Some((at, key, verdict))
                }
            }
        })
        .buffer_unordered(ctx.tunables.create_concurrency)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

/// Hands the verdicts that changed to the job controller. Each job keeps the first verdict
/// of the pass: a failure, else an admission, else why its first entry waits.
fn hand_off_verdicts(
    ctx: &Shared,
    st: &mut PassState,
    plan: &Plan,
    decided: impl Iterator<Item = (usize, Verdict)>,
    verdict_tx: &UnboundedSender<ObjectRef<BatchJob>>,
) {
    st.number += 1;
    // (uid, verdict) in the order given, with the job each is for.
    let mut given: Vec<(Arc<str>, Verdict)> = Vec::new();
    let mut jobs: Vec<&str> = Vec::new();
    for (at, verdict) in decided {
        let owner = &mut st.backlog.owners[at];
        owner.said = None;
        given.push((owner.uid.clone(), verdict));
        jobs.push(&st.backlog.jobs[at].name);
    }
    // A job that cannot be run as written (a role no account is bound to, an invalid
    // container) is a misconfiguration: its reason, and a Warning event once.
    for (job, (uid, why)) in &st.backlog.invalid {
        given.push((uid.clone(), Verdict::Misconfigured(why.clone())));
        jobs.push(job);
    }
    // Most waiting jobs share a few reasons: each is put in words once (and kept from pass
    // to pass), and a job that is not an array and waits for the reason it gave last pass
    // is passed over.
    let texts: Vec<Arc<str>> = plan
        .reasons
        .iter()
        .map(|why| st.words.remove(why).unwrap_or_else(|| why.to_string().into()))
        .collect();
    for (at, reason) in &plan.waiting {
        let text = &texts[*reason];
        let owner = &mut st.backlog.owners[*at];
        if owner.index.is_none() {
            if owner.said.as_ref().is_some_and(|s| Arc::ptr_eq(s, text)) {
                continue;
            }
            owner.said = Some(text.clone());
        }
        let verdict = match plan.reasons[*reason].is_misconfiguration() {
            true => Verdict::Misconfigured(text.clone()),
            false => Verdict::Waiting(text.clone()),
        };
        given.push((owner.uid.clone(), verdict));
        jobs.push(&st.backlog.jobs[*at].name);
    }
    let admitted: Vec<bool> = given.iter().map(|(_, v)| matches!(v, Verdict::Admitted { .. })).collect();
    for i in ctx.handoff.give(st.number, given) {
        // An admitted job hears of it from its new pod: a status write of its own
        // ("admitted, creating the pod") would only add load for a moment's state.
        if !admitted[i] {
            let _ = verdict_tx.unbounded_send(job_ref(jobs[i]));
        }
    }
    st.words = plan.reasons.iter().cloned().zip(texts).collect();
}

/// Why an unmanaged environment's jobs wait when its nodes are full.
const UNMANAGED: &str = "it is unmanaged, so Barge waits for room on its selected nodes";

/// What a pod of an unmanaged environment holds counts against its maxvCpus.
fn take_room(ce: &mut CeInfo, request: Res) {
    if let Some(room) = &mut ce.room {
        *room = room.saturating_sub(request.millicpu);
        ce.total_vcpus = (ce.max_vcpus as u64 * 1000 - *room).div_ceil(1000) as u32;
    }
}

/// Brings the backlog up to date: every job after a watch started over or the namespace
/// selection changed, else the jobs that changed and those whose standing hangs on others.
fn refresh_backlog(ctx: &Shared, st: &mut PassState, verdict_tx: &UnboundedSender<ObjectRef<BatchJob>>) {
    let (inflight, selection) = (&st.inflight, &st.selection);
    let job = |k: &ObjectRef<BatchJob>| ctx.jobs.get(k);
    let pod_known = |ns: &str, pod: &str| {
        inflight.contains_key(&ns_key(ns, pod)) || ctx.pods.get(&ObjectRef::new(pod).within(ns)).is_some()
    };
    let allowed = |queue: &str, ns: &str| selection.allows(queue, ns);
    let definition = |j: &BatchJob| super::revisions::pinned(&ctx.definitions, j);
    let role_account = |ns: &str, role: &str| ctx.role_account(ns, role);
    let lookups = Lookups {
        job: &job,
        pod_known: &pod_known,
        namespace_allowed: &allowed,
        definition: &definition,
        role_account: &role_account,
    };
    let mut ended = Vec::new();
    if std::mem::take(&mut st.rebuild) {
        st.backlog.clear();
        st.dirty.clear();
        for job in ctx.jobs.state() {
            let key = ObjectRef::from_obj(job.as_ref());
            if st.backlog.refresh(&key, Some(&job), &lookups).ended {
                ended.push(key);
            }
        }
        ctx.handoff.keep_verdicts(&st.backlog.uids());
    } else {
        let mut keys: HashSet<ObjectRef<BatchJob>> = st.dirty.drain().collect();
        keys.extend(st.backlog.volatile());
        let mut left = Vec::new();
        for key in keys {
            let job = ctx.jobs.get(&key);
            let refreshed = st.backlog.refresh(&key, job.as_deref(), &lookups);
            if refreshed.ended {
                ended.push(key);
            }
            left.extend(refreshed.left);
        }
        // A job that no longer waits has no verdict.
        ctx.handoff.forget_verdicts(left);
    }
    // Wake each job whose dependencies have all ended, so that the job controller moves it on.
    for key in ended {
        let _ = verdict_tx.unbounded_send(key);
    }
}

/// Whether the API server's refusal of a pod stands however often it is asked: Pod
/// Security Admission and an invalid pod do; a quota that is used up, or a webhook or the
/// server failing, may pass (those are retried, the job saying why it waits).
fn refusal_is_final(e: &kube::core::Status) -> bool {
    match e.code {
        400 | 422 => true,
        403 => e.message.contains("violates PodSecurity"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_queue_s_usage_is_recorded_once_and_then_only_after_it_ran_again() {
        let mut st = UsageState { restored: true, ..UsageState::new() };
        st.usage.restore("q", "gold", 120.04);
        let decay = HashMap::from([("q".to_string(), 60), ("fifo".to_string(), 0)]);
        let first = st.record(&decay);
        assert_eq!(first["q"].vcpu_seconds["gold"], 120.0);
        assert!(st.record(&decay).is_empty(), "nothing ran since: the record still holds");
        st.accrued.insert("q".into());
        assert!(st.record(&decay).contains_key("q"));
    }

    fn refusal(code: u16, message: &str) -> kube::core::Status {
        serde_json::from_value(
            serde_json::json!({"code": code, "message": message, "reason": "", "status": "Failure"}),
        )
        .unwrap()
    }

    #[test]
    fn pod_security_and_invalid_pods_are_final_refusals_and_used_up_quota_is_not() {
        assert!(refusal_is_final(&refusal(
            403,
            "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\""
        )));
        assert!(refusal_is_final(&refusal(
            422,
            "Pod \"p\" is invalid: spec.containers[0].image: Required value"
        )));
        assert!(!refusal_is_final(&refusal(403, "pods \"p\" is forbidden: exceeded quota: compute")));
        assert!(!refusal_is_final(&refusal(500, "etcdserver: request timed out")));
        assert!(!refusal_is_final(&refusal(429, "too many requests")));
    }
}
