//! The scheduling pass: one task that keeps the backlog of waiting pods up to date from
//! the watches, asks the pure planner what to admit, creates the admitted pods with
//! bounded concurrency, and hands the "why waiting" verdicts to the job controller and the
//! demand to the capacity controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

use super::backlog::{Backlog, Change, Lookups, job_ref};
use super::pod::build_pod;
use super::{
    Shared, Verdict, node_allocatable, node_compute_environment, node_is_cordoned, node_is_ready, node_vcpus,
};
use crate::api::compute_environment::Provider;
use crate::api::job_definition::work;
use crate::api::job_queue::{FairShareUsage, LabelSelector};
use crate::api::{BatchJob, ComputeEnvironment, JobQueue, State};
use crate::capacity::catalog;
use crate::resources::Res;
use crate::scheduler::{self, CeInfo, FairShare, NodeInfo, QueueInfo, Snapshot, Waiting};

/// A pass runs at least this often, to notice time passing (and lost wake-ups).
const TICK: Duration = Duration::from_secs(2);
/// After a wake-up, wait this long for more changes so that a burst makes one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Concurrent pod creations: enough to keep the API server busy, few enough not to flood it.
const CREATE_CONCURRENCY: usize = 64;
/// An admitted pod not yet seen in the pod store is forgotten after this long.
const INFLIGHT_TTL: Duration = Duration::from_secs(30);
/// Fair-share usage is recorded in the queues' statuses this often: a restart loses at
/// most this much of it, and a busy queue's status is not rewritten every pass.
const USAGE_RECORD_INTERVAL: Duration = Duration::from_secs(15);

/// Fair-share usage of one share.
#[derive(Default)]
struct ShareUsage {
    /// vCPU-seconds, halved every `shareDecaySeconds`.
    decayed: f64,
    /// vCPUs its pods hold now.
    running: f64,
}

/// Usage per queue and share, carried from pass to pass, recorded in each fair-share
/// queue's status and taken up from there when Barge starts.
struct UsageState {
    usage: HashMap<String, HashMap<String, ShareUsage>>,
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
            let shares = self.usage.entry(q.name_any()).or_default();
            for (share, decayed) in record.decayed_to(now, policy.share_decay_seconds) {
                shares.entry(share).or_default().decayed += decayed;
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
            .iter()
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
}

struct Inflight {
    job: ObjectRef<BatchJob>,
    compute_environment: String,
    request: Res,
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
        usage: UsageState {
            usage: HashMap::new(),
            last: Instant::now(),
            restored: false,
            recorded: None,
            published: HashSet::new(),
            accrued: HashSet::new(),
        },
        backlog: Backlog::default(),
        dirty: HashSet::new(),
        rebuild: true,
        selection: Selection::default(),
        number: 0,
        words: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = ctx.schedule_now.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(TICK) => {}
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
        if took > DEBOUNCE {
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

async fn pass(
    ctx: &Shared,
    st: &mut PassState,
    verdict_tx: &UnboundedSender<ObjectRef<BatchJob>>,
    capacity_tx: &UnboundedSender<ObjectRef<ComputeEnvironment>>,
) -> Outcome {
    let (inflight, usage_state) = (&mut st.inflight, &mut st.usage);
    let ces = ctx.compute_environments.state();
    let mut ce_infos: Vec<CeInfo> = ces
        .iter()
        .map(|ce| {
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
                    false => ctx.cannot_grow.lock().expect("cannot_grow lock").get(&ce.name_any()).cloned(),
                },
                room: unmanaged.then_some(ce.spec.max_vcpus as u64 * 1000),
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
        if ce.room.is_some() {
            // Unmanaged: only its ready nodes count, each a shape of its own; what counts
            // against maxvCpus is what Barge's pods hold (below), not the nodes' size.
            if !node_is_ready(&node) || node_is_cordoned(&node) {
                continue;
            }
            ce.shapes.push(node_allocatable(&node));
        } else {
            ce.total_vcpus += node_vcpus(&node);
        }
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

    // Seen in the store: no longer in flight (its job heard of it from the pod watch).
    inflight.retain(|key, _| {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        ctx.pods.get(&ObjectRef::new(name).within(ns)).is_none()
    });
    let mut running_by_share: HashMap<(String, String), f64> = HashMap::new();
    // Resources held by Barge pods: on their node when bound, else against their environment.
    let mut unbound: Vec<(usize, Res)> = Vec::new();
    for held in ctx.usage.lock().expect("pod usage lock").held() {
        if let Some(&ci) = held.compute_environment.as_ref().and_then(|c| ce_index.get(c)) {
            take_room(&mut ce_infos[ci], held.request);
        }
        match &held.node {
            Some(node) => {
                if let Some(share) = &held.share {
                    *running_by_share.entry(share.clone()).or_default() += held.request.vcpus();
                }
                if let Some(&(ci, ni)) = node_slot.get(node) {
                    ce_infos[ci].nodes[ni].free -= held.request;
                }
            }
            None => {
                if let Some(&ci) = held.compute_environment.as_ref().and_then(|c| ce_index.get(c)) {
                    unbound.push((ci, held.request));
                }
            }
        }
    }
    // A pod that never showed up: its job waits for it again.
    inflight.retain(|_, f| {
        let fresh = f.since.elapsed() < INFLIGHT_TTL;
        if !fresh {
            st.dirty.insert(f.job.clone());
        }
        fresh
    });
    for f in inflight.values() {
        if let Some(&ci) = ce_index.get(&f.compute_environment) {
            take_room(&mut ce_infos[ci], f.request);
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
    if !usage_state.restored {
        usage_state.restore(&queue_objects);
    }
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
        usage_state.accrued.insert(q.clone());
    }
    if usage_state.recorded.is_none_or(|at| now.duration_since(at) >= USAGE_RECORD_INTERVAL) {
        usage_state.recorded = Some(now);
        *ctx.share_usage.lock().expect("share usage lock") = usage_state.record(&decay_of);
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
    let selection = Selection {
        selectors: queue_objects.iter().map(|q| (q.name_any(), q.spec.namespace_selector.clone())).collect(),
        namespaces: ctx.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect(),
    };
    if selection != st.selection {
        // Which namespaces a queue takes is part of every entry: look at every job again.
        st.selection = selection;
        st.rebuild = true;
    }
    refresh_backlog(ctx, st, verdict_tx);

    for q in queues.iter().filter(|q| q.fair_share.is_some()) {
        debug!(queue = %q.name, usage = ?q.fair_share.as_ref().map(|f| &f.usage), "fair-share usage");
    }
    // The planner reads the backlog's list in place; it is handed back after the plan.
    let snapshot =
        Snapshot { jobs: std::mem::take(&mut st.backlog.jobs), queues, compute_environments: ce_infos };
    let plan = scheduler::plan(&snapshot);
    st.backlog.jobs = snapshot.jobs;
    let (backlog, inflight) = (&st.backlog, &mut st.inflight);

    // Create the admitted pods.
    let ce_by_name: HashMap<String, Arc<ComputeEnvironment>> =
        ces.iter().map(|c| (c.name_any(), c.clone())).collect();
    let mut creations = Vec::new();
    let mut admitted_verdicts = Vec::new();
    let mut leaving = Vec::new();
    let metrics = crate::metrics::metrics();
    let now = chrono::Utc::now();
    for adm in &plan.admitted {
        let owner = &backlog.owners[adm.job];
        // Admitted or gone, the job leaves the backlog at the next pass.
        let reference = job_ref(&backlog.jobs[adm.job].name);
        leaving.push(reference.clone());
        let Some(job) = ctx.jobs.get(&reference) else { continue };
        metrics.admissions.inc();
        if let Some(since) = job.status.as_ref().and_then(|s| s.runnable_at) {
            metrics.runnable_seconds.observe((now - since).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let ce = &ce_by_name[&adm.compute_environment];
        let def = super::definition::pinned(&ctx.definitions, &job);
        let work = def.and_then(|d| {
            // The work borrows the revision; the pod is built while both are at hand.
            let work = work(&job.spec, d.as_deref())?;
            build_pod(&job, &work, ce, owner.attempt, owner.index).map_err(|e| match e {
                crate::Error::InvalidJob(why) => why,
                e => e.to_string(),
            })
        });
        match work {
            Ok(pod) => {
                let key = format!("{}/{}", job.namespace().unwrap_or_default(), pod.name_any());
                inflight.insert(
                    key.clone(),
                    Inflight {
                        job: reference,
                        compute_environment: adm.compute_environment.clone(),
                        request: backlog.jobs[adm.job].request,
                        since: Instant::now(),
                    },
                );
                admitted_verdicts.push((
                    adm.job,
                    Verdict::Admitted { compute_environment: adm.compute_environment.clone() },
                ));
                creations.push((adm.job, key, pod));
            }
            Err(e) => admitted_verdicts.push((adm.job, Verdict::Waiting(format!("Invalid job: {e}").into()))),
        }
    }
    let burst = (!creations.is_empty()).then(|| ctx.bursts.begin());
    let creating_since = Instant::now();
    let failures: Vec<(usize, String, Verdict)> = stream::iter(creations)
        .map(|(at, key, pod)| async move {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => None,
                // Created by an earlier pass or an earlier run of Barge: the name is the attempt.
                Err(kube::Error::Api(e)) if e.code == 409 => None,
                Err(e) => {
                    warn!(pod = %pod.name_any(), error = %e, "creating pod failed");
                    let name = pod.name_any();
                    Some((
                        at,
                        key,
                        match e {
                            kube::Error::Api(ref a) if refusal_is_final(a) => Verdict::Rejected(
                                format!("The cluster refused the job's pod {name}: {}", a.message).into(),
                            ),
                            e => Verdict::Waiting(
                                format!("Could not create pod {name}: {e}; will retry").into(),
                            ),
                        },
                    ))
                }
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    // The status writes put off while creating: their jobs are looked at again now.
    for job in burst.map(super::burst::Burst::end).unwrap_or_default() {
        let _ = verdict_tx.unbounded_send(job);
    }
    let creating = creating_since.elapsed();
    let mut first = Vec::new();
    for (at, key, verdict) in failures {
        inflight.remove(&key);
        first.push((at, verdict));
    }
    st.dirty.extend(leaving);

    // Hand the verdicts that changed to the job controller. Each job keeps the first
    // verdict of the pass: a failure, else an admission, else why its first entry waits.
    st.number += 1;
    let number = st.number;
    {
        let mut verdicts = ctx.verdicts.lock().expect("verdicts lock");
        let mut give = |uid: &Arc<str>, job: &str, verdict: Verdict| {
            let changed = match verdicts.get_mut(uid) {
                Some((_, seen)) if *seen == number => false,
                Some((old, seen)) => {
                    *seen = number;
                    let changed = *old != verdict;
                    *old = verdict.clone();
                    changed
                }
                None => {
                    verdicts.insert(uid.clone(), (verdict.clone(), number));
                    true
                }
            };
            // An admitted job hears of it from its new pod: a status write of its own
            // ("admitted, creating the pod") would only add load for a moment's state.
            if changed && !matches!(verdict, Verdict::Admitted { .. }) {
                let _ = verdict_tx.unbounded_send(job_ref(job));
            }
        };
        for (at, verdict) in first.into_iter().chain(admitted_verdicts) {
            let owner = &mut st.backlog.owners[at];
            owner.said = None;
            give(&owner.uid, &st.backlog.jobs[at].name, verdict);
        }
        for (job, (uid, why)) in &st.backlog.invalid {
            give(uid, job, Verdict::Waiting(why.clone()));
        }
        // Most waiting jobs share a few reasons: each is put in words once (and kept from
        // pass to pass), and a job that is not an array and waits for the reason it gave
        // last pass is passed over.
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
            give(&owner.uid, &st.backlog.jobs[*at].name, Verdict::Waiting(text.clone()));
        }
        st.words = plan.reasons.iter().cloned().zip(texts).collect();
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
    Outcome { admitted: plan.admitted.len(), waiting: plan.waiting.len(), creating }
}

/// Brings the backlog up to date: every job after a watch started over or the namespace
/// selection changed, else the jobs that changed and those whose standing hangs on others.
/// Why an unmanaged environment's jobs wait when its nodes are full.
const UNMANAGED: &str = "it is unmanaged, so Barge waits for room on its selected nodes";

/// What a pod of an unmanaged environment holds counts against its maxvCpus.
fn take_room(ce: &mut CeInfo, request: Res) {
    if let Some(room) = &mut ce.room {
        *room = room.saturating_sub(request.millicpu);
        ce.total_vcpus = (ce.max_vcpus as u64 * 1000 - *room).div_ceil(1000) as u32;
    }
}

fn refresh_backlog(ctx: &Shared, st: &mut PassState, verdict_tx: &UnboundedSender<ObjectRef<BatchJob>>) {
    let (inflight, selection) = (&st.inflight, &st.selection);
    let job = |k: &ObjectRef<BatchJob>| ctx.jobs.get(k);
    let pod_known = |ns: &str, pod: &str| {
        inflight.contains_key(&format!("{ns}/{pod}"))
            || ctx.pods.get(&ObjectRef::new(pod).within(ns)).is_some()
    };
    let allowed = |queue: &str, ns: &str| selection.allows(queue, ns);
    let definition = |j: &BatchJob| super::definition::pinned(&ctx.definitions, j);
    let lookups =
        Lookups { job: &job, pod_known: &pod_known, namespace_allowed: &allowed, definition: &definition };
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
        let waiting = st.backlog.uids();
        ctx.verdicts.lock().expect("verdicts lock").retain(|uid, _| waiting.contains(uid));
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
        let mut verdicts = ctx.verdicts.lock().expect("verdicts lock");
        for uid in left {
            verdicts.remove(&uid);
        }
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
        let mut st = UsageState {
            usage: HashMap::from([(
                "q".to_string(),
                HashMap::from([("gold".to_string(), ShareUsage { decayed: 120.04, running: 0.0 })]),
            )]),
            last: Instant::now(),
            restored: true,
            recorded: None,
            published: HashSet::new(),
            accrued: HashSet::new(),
        };
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
