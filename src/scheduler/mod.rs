//! Pure scheduling decisions: which RUNNABLE jobs are admitted onto which compute
//! environment in this pass, why every other job waits, and the demand each compute
//! environment should scale for. Plain data in, decisions out; no I/O.

pub mod ranges;
pub mod usage;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::resources::{Res, fmt_vcpus};

/// A job waiting for admission.
#[derive(Clone, Debug)]
pub struct PendingJob {
    /// "namespace/name" of the job; shared by an array's children (and, in the operator, by
    /// everything that names the job).
    pub name: Arc<str>,
    /// The child's index, for a child of an array job.
    pub index: Option<u32>,
    /// Shared by the jobs of a queue.
    pub queue: Arc<str>,
    /// False when the queue's namespace selector does not match the job's namespace.
    pub namespace_allowed: bool,
    pub scheduling_priority: i32,
    /// Submission time, milliseconds since the epoch.
    pub submitted_ms: i64,
    pub request: Res,
    /// The job's share within a fair-share queue.
    pub share: Option<String>,
}

#[derive(Clone, Debug)]
pub struct QueueInfo {
    pub name: String,
    pub priority: i32,
    pub enabled: bool,
    /// Compute environment names, in the order they are tried.
    pub compute_environments: Vec<String>,
    /// Fair share across share identifiers; `None` is FIFO within priority.
    pub fair_share: Option<FairShare>,
}

/// A queue's fair-share policy as the planner needs it.
#[derive(Clone, Debug, Default)]
pub struct FairShare {
    /// (share identifier or prefix ending in `*`, weight); lower weight, bigger share.
    pub weights: Vec<(String, f64)>,
    /// Current usage of each share in vCPUs (decayed vCPU-seconds over the decay window,
    /// or the vCPUs running now).
    pub usage: HashMap<String, f64>,
    /// vCPUs each share's pods hold now.
    pub running: HashMap<String, f64>,
    /// AWS's computeReservation (0-99): (computeReservation/100)^activeShares of the
    /// queue's maximum vCPUs stay free for shares not yet active.
    pub compute_reservation: u32,
}

/// AWS Batch's glob: a trailing `*` matches any rest; otherwise the whole text must match.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

impl FairShare {
    pub fn weight(&self, share: &str) -> f64 {
        self.weights.iter().find(|(p, _)| glob_matches(p, share)).map_or(1.0, |(_, w)| *w).max(1e-4)
    }
}

/// Orders one fair-share queue's jobs (`idx`, in queue order): repeatedly the next job of
/// the share whose usage (counting the jobs ordered before it) times its weight is lowest.
fn fair_share_order(jobs: &[PendingJob], idx: Vec<usize>, policy: &FairShare) -> Vec<usize> {
    // Shares by name (the order breaks ties), each with its weight, usage and jobs.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let share_of: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let next = index.len();
            *index.entry(jobs[i].share.as_deref().unwrap_or("")).or_insert(next)
        })
        .collect();
    let mut names: Vec<&str> = index.keys().copied().collect();
    names.sort_unstable();
    let position: Vec<usize> = {
        let mut p = vec![0; names.len()];
        for (k, n) in names.iter().enumerate() {
            p[index[n]] = k;
        }
        p
    };
    let weight: Vec<f64> = names.iter().map(|n| policy.weight(n)).collect();
    let mut usage: Vec<f64> = names.iter().map(|n| policy.usage.get(*n).copied().unwrap_or(0.0)).collect();
    let mut queues: Vec<std::collections::VecDeque<usize>> = vec![Default::default(); names.len()];
    for (i, s) in idx.into_iter().zip(share_of) {
        queues[position[s]].push_back(i);
    }
    let mut out = Vec::with_capacity(jobs.len());
    loop {
        let next = (0..names.len())
            .filter(|&k| !queues[k].is_empty())
            .min_by(|&a, &b| (usage[a] * weight[a]).total_cmp(&(usage[b] * weight[b])).then(a.cmp(&b)));
        let Some(k) = next else { break };
        let i = queues[k].pop_front().expect("a non-empty share");
        usage[k] += jobs[i].request.vcpus();
        out.push(i);
    }
    out
}

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    /// Allocatable minus the requests of Barge pods placed on it.
    pub free: Res,
    /// Launching nodes are counted as coming capacity, not admitted onto.
    pub ready: bool,
}

#[derive(Clone, Debug)]
pub struct CeInfo {
    pub name: String,
    pub enabled: bool,
    pub max_vcpus: u32,
    /// vCPUs of all nodes, ready or launching.
    pub total_vcpus: u32,
    /// Allocatable of each instance type the environment may launch.
    pub shapes: Vec<Res>,
    pub nodes: Vec<NodeInfo>,
    /// Why the environment cannot launch nodes right now (EC2 has no capacity for any of
    /// its instance types; an unmanaged environment never does); the queue's next
    /// environment is tried instead.
    pub cannot_grow: Option<String>,
    /// Millicpu that may still be admitted here whatever its nodes have free (an unmanaged
    /// environment's maxvCpus less what Barge's pods hold); `None`: the nodes are the limit.
    pub room: Option<u64>,
}

/// Everything a pass decides on.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub jobs: Vec<PendingJob>,
    pub queues: Vec<QueueInfo>,
    pub compute_environments: Vec<CeInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Index into `Snapshot::jobs`.
    pub job: usize,
    pub compute_environment: String,
    pub node: String,
}

/// Why a job is still waiting, in words a user understands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Waiting {
    QueueNotFound { queue: String },
    QueueDisabled { queue: String },
    NamespaceNotAllowed { queue: String },
    NoComputeEnvironment { queue: String, missing: Vec<String> },
    ComputeEnvironmentsDisabled { queue: String, disabled: Vec<String> },
    ComputeReserved { queue: String, reserved_vcpus: u32 },
    DoesNotFit { queue: String, request: Res, largest: String },
    ScalingUp { compute_environment: String },
    NodesLaunching { compute_environment: String },
    AtMaxCapacity { compute_environment: String, max_vcpus: u32, behind_others: bool },
    NoInstanceCapacity { compute_environment: String, why: String },
}

impl Waiting {
    /// The AWS-style reason prefix that marks a job that can never run as it stands.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, Waiting::DoesNotFit { .. })
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::QueueNotFound { queue } => {
                write!(f, "Job queue {queue} does not exist; the job will wait until it is created")
            }
            Waiting::QueueDisabled { queue } => {
                write!(f, "Job queue {queue} is DISABLED and admits no jobs")
            }
            Waiting::NamespaceNotAllowed { queue } => write!(
                f,
                "Job queue {queue} does not accept jobs from this namespace (see its namespaceSelector)"
            ),
            Waiting::NoComputeEnvironment { queue, missing } => {
                write!(f, "None of job queue {queue}'s compute environments exist ({})", missing.join(", "))
            }
            Waiting::ComputeEnvironmentsDisabled { queue, disabled } => write!(
                f,
                "Every compute environment of job queue {queue} is DISABLED ({})",
                disabled.join(", ")
            ),
            Waiting::DoesNotFit { queue, request, largest } => write!(
                f,
                "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job needs {request}, more than any \
                 compute environment of job queue {queue} can provide ({largest})"
            ),
            Waiting::ComputeReserved { queue, reserved_vcpus } => write!(
                f,
                "Waiting: job queue {queue} keeps {reserved_vcpus} vCPUs free for fair-share identifiers \
                 not yet active (computeReservation)"
            ),
            Waiting::ScalingUp { compute_environment } => {
                write!(f, "Waiting for compute environment {compute_environment} to scale up")
            }
            Waiting::NodesLaunching { compute_environment } => write!(
                f,
                "Waiting for new nodes of compute environment {compute_environment} to become ready"
            ),
            Waiting::NoInstanceCapacity { compute_environment, why } => write!(
                f,
                "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - compute environment {compute_environment} \
                 cannot launch nodes: {why}"
            ),
            Waiting::AtMaxCapacity { compute_environment, max_vcpus, behind_others } => {
                if *behind_others {
                    write!(
                        f,
                        "Waiting behind earlier or higher-priority jobs: compute environment \
                         {compute_environment} is at maxvCpus ({max_vcpus})"
                    )
                } else {
                    write!(
                        f,
                        "Waiting for capacity: compute environment {compute_environment} is at \
                         maxvCpus ({max_vcpus})"
                    )
                }
            }
        }
    }
}

/// What a pass decided.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub admitted: Vec<Admission>,
    /// Index into `Snapshot::jobs` and why that job waits, as an index into `reasons`.
    pub waiting: Vec<(usize, usize)>,
    /// The distinct reasons of this pass: most of a large backlog waits for a few.
    pub reasons: Vec<Waiting>,
    /// Requests of the jobs each compute environment should grow for.
    pub demand: HashMap<String, Vec<Res>>,
    /// Per queue, why its first waiting job (in order) cannot run.
    pub blocked_queues: HashMap<String, Waiting>,
}

/// Working state of one compute environment during a pass.
struct CeState<'a> {
    info: &'a CeInfo,
    free: Vec<Res>,
    /// Upper bound of any ready node's free resources: a quick "no node can take this".
    max_free: Res,
    launching_free: Vec<Res>,
    projected_vcpus: u64,
    largest_shape: Res,
    waiting_for_capacity: usize,
    room: Option<u64>,
}

impl<'a> CeState<'a> {
    fn new(info: &'a CeInfo) -> Self {
        let ready: Vec<&NodeInfo> = info.nodes.iter().filter(|n| n.ready).collect();
        let free: Vec<Res> = ready.iter().map(|n| n.free).collect();
        let max_free = free.iter().fold(Res::ZERO, |m, r| m.max(*r));
        CeState {
            info,
            free,
            max_free,
            launching_free: info.nodes.iter().filter(|n| !n.ready).map(|n| n.free).collect(),
            projected_vcpus: info.total_vcpus as u64 * 1000,
            largest_shape: info.shapes.iter().fold(Res::ZERO, |m, r| m.max(*r)),
            waiting_for_capacity: 0,
            room: info.room,
        }
    }

    /// Whether the job could ever run here: some instance type holds it and it is
    /// within `maxvCpus`.
    fn could_ever_fit(&self, r: &Res) -> bool {
        let fits_type =
            self.info.shapes.iter().any(|s| s.fits(r)) || self.info.nodes.iter().any(|n| n.free.fits(r));
        fits_type && r.millicpu <= self.info.max_vcpus as u64 * 1000
    }

    /// Best fit onto a ready node: the one with least free CPU that holds the job.
    fn place(&mut self, r: &Res) -> Option<usize> {
        if !self.max_free.fits(r) || self.room.is_some_and(|room| room < r.millicpu) {
            return None;
        }
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, f)| f.fits(r))
            .min_by_key(|(i, f)| (f.millicpu, *i))
            .map(|(i, _)| i)?;
        self.free[best] -= *r;
        self.max_free = self.free.iter().fold(Res::ZERO, |m, f| m.max(*f));
        if let Some(room) = &mut self.room {
            // What is admitted counts against maxvCpus, as the nodes' vCPUs do elsewhere.
            *room -= r.millicpu;
            self.projected_vcpus += r.millicpu;
        }
        Some(best)
    }
}

/// Orders the waiting jobs and admits all that fit, in queue priority order, then
/// scheduling priority, then submission time. Jobs that cannot be placed become demand
/// for the first compute environment (in queue order) that could grow to hold them.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut plan = Plan::default();
    let queues: HashMap<&str, &QueueInfo> = snapshot.queues.iter().map(|q| (q.name.as_str(), q)).collect();
    let mut ces: HashMap<&str, CeState> =
        snapshot.compute_environments.iter().map(|c| (c.name.as_str(), CeState::new(c))).collect();
    let Ranked { rank, queue_at } = Ranked::of(snapshot, &queues);
    let order = job_order(snapshot, &rank, &queue_at);
    let usable_by_queue = usable_by_queue(snapshot, &ces);
    let mut reserve_left = reservations(snapshot, &rank, &queue_at);
    let queue_count = queue_at.len();

    // Jobs of one queue asking for the same resources get the same "at capacity" answer
    // until an admission or new demand changes some environment: most of a large backlog
    // is answered from here instead of walking every environment and node again. So does
    // every job of a queue that admits nothing (missing, DISABLED, no environments).
    let mut generation = 0u64;
    let mut at_capacity: HashMap<(u32, Res), (u64, usize)> = HashMap::new();
    let mut queue_blocked: Vec<Option<usize>> = vec![None; queue_count];
    let mut reason_ids: HashMap<Waiting, usize> = HashMap::new();
    let mut reason = |plan: &mut Plan, why: Waiting| -> usize {
        *reason_ids.entry(why).or_insert_with_key(|why| {
            plan.reasons.push(why.clone());
            plan.reasons.len() - 1
        })
    };
    for i in order {
        let job = &snapshot.jobs[i];
        let r = rank[i];
        if let Some(id) = queue_blocked[r as usize]
            && (job.namespace_allowed
                || matches!(plan.reasons[id], Waiting::QueueNotFound { .. } | Waiting::QueueDisabled { .. }))
        {
            plan.waiting.push((i, id));
            continue;
        }
        let reserve = &mut reserve_left[r as usize];
        if let Some((g, id)) = at_capacity.get(&(r, job.request))
            && *g == generation
            && job.namespace_allowed
            && reserve.is_none()
        {
            plan.waiting.push((i, *id));
            continue;
        }
        if let Some((left, reserved)) = reserve
            && job.request.vcpus() > *left + 1e-9
        {
            let why = Waiting::ComputeReserved { queue: job.queue.to_string(), reserved_vcpus: *reserved };
            if !plan.blocked_queues.contains_key(&*job.queue) {
                plan.blocked_queues.insert(job.queue.to_string(), why.clone());
            }
            let id = reason(&mut plan, why);
            plan.waiting.push((i, id));
            continue;
        }
        let verdict = decide(job, queue_at[r as usize], &usable_by_queue, &mut ces, &mut plan.demand);
        match &verdict {
            Err(Waiting::AtMaxCapacity { compute_environment, max_vcpus, .. }) => {
                let why = Waiting::AtMaxCapacity {
                    compute_environment: compute_environment.clone(),
                    max_vcpus: *max_vcpus,
                    behind_others: true,
                };
                at_capacity.insert((r, job.request), (generation, reason(&mut plan, why)));
            }
            // Admissions and demand change what later jobs find.
            Ok(_) | Err(Waiting::ScalingUp { .. } | Waiting::NodesLaunching { .. }) => generation += 1,
            Err(_) => {}
        }
        match verdict {
            Ok(adm) => {
                if let Some((left, _)) = &mut reserve_left[r as usize] {
                    *left -= job.request.vcpus();
                }
                plan.admitted.push(Admission { job: i, ..adm })
            }
            Err(why) => {
                if !plan.blocked_queues.contains_key(&*job.queue) {
                    plan.blocked_queues.insert(job.queue.to_string(), why.clone());
                }
                let queue_wide = matches!(
                    why,
                    Waiting::QueueNotFound { .. }
                        | Waiting::QueueDisabled { .. }
                        | Waiting::NoComputeEnvironment { .. }
                        | Waiting::ComputeEnvironmentsDisabled { .. }
                );
                let id = reason(&mut plan, why);
                if queue_wide {
                    queue_blocked[r as usize] = Some(id);
                }
                plan.waiting.push((i, id));
            }
        }
    }
    plan
}

/// The queues of the pass ranked by priority (highest first), then name; unknown queues last.
struct Ranked<'a> {
    /// Each job's queue rank.
    rank: Vec<u32>,
    /// The queue of each rank, if it exists.
    queue_at: Vec<Option<&'a QueueInfo>>,
}

impl<'a> Ranked<'a> {
    fn of(snapshot: &'a Snapshot, queues: &HashMap<&str, &'a QueueInfo>) -> Ranked<'a> {
        // Each job's queue name is read once: from here on the pass works with its rank.
        // Jobs of a queue share one copy of its name, and often come in runs: the same copy
        // as the job before needs no lookup.
        let mut seen: HashMap<&str, u32> = HashMap::new();
        let mut last: Option<(&str, u32)> = None;
        let appearance: Vec<u32> = snapshot
            .jobs
            .iter()
            .map(|j| {
                if let Some((q, a)) = last
                    && std::ptr::eq(q, &*j.queue)
                {
                    return a;
                }
                let next = seen.len() as u32;
                let a = *seen.entry(&*j.queue).or_insert(next);
                last = Some((&*j.queue, a));
                a
            })
            .collect();
        let mut queue_names: Vec<&str> = seen.keys().copied().collect();
        let priority_of = |q: &str| queues.get(q).map_or(i32::MIN, |q| q.priority);
        queue_names.sort_by(|a, b| priority_of(b).cmp(&priority_of(a)).then_with(|| a.cmp(b)));
        let mut rank_of_appearance = vec![0u32; queue_names.len()];
        for (rank, q) in queue_names.iter().enumerate() {
            rank_of_appearance[seen[q] as usize] = rank as u32;
        }
        Ranked {
            rank: appearance.iter().map(|a| rank_of_appearance[*a as usize]).collect(),
            queue_at: queue_names.iter().map(|q| queues.get(q).copied()).collect(),
        }
    }
}

/// The jobs in the order they are looked at: queue rank, scheduling priority, submission
/// time; fair-share queues then reorder their own run of it.
fn job_order(snapshot: &Snapshot, rank: &[u32], queue_at: &[Option<&QueueInfo>]) -> Vec<usize> {
    // One key per job, so the sort compares integers, not strings. Jobs submitted in the
    // same millisecond (Kubernetes keeps creation times to the second) follow a hash of
    // their name, the same in every pass and every run; an array's children follow
    // their index.
    let keys: Vec<(u32, i32, i64, u64, Option<u32>)> = snapshot
        .jobs
        .iter()
        .zip(rank)
        .map(|(j, r)| (*r, -j.scheduling_priority, j.submitted_ms, name_hash(&j.name), j.index))
        .collect();
    let mut order: Vec<usize> = (0..snapshot.jobs.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        keys[a].cmp(&keys[b]).then_with(|| snapshot.jobs[a].name.cmp(&snapshot.jobs[b].name))
    });
    let mut start = 0;
    while start < order.len() {
        let r = rank[order[start]];
        let end = start + order[start..].iter().take_while(|&&i| rank[i] == r).count();
        if let Some(policy) = queue_at[r as usize].and_then(|q| q.fair_share.as_ref()) {
            let ordered = fair_share_order(&snapshot.jobs, order[start..end].to_vec(), policy);
            order.splice(start..end, ordered);
        }
        start = end;
    }
    order
}

/// Per queue: its compute environments that do not exist, and those that are enabled.
fn usable_by_queue<'a>(snapshot: &'a Snapshot, ces: &HashMap<&str, CeState>) -> UsableByQueue<'a> {
    snapshot
        .queues
        .iter()
        .map(|q| {
            let missing =
                q.compute_environments.iter().filter(|c| !ces.contains_key(c.as_str())).cloned().collect();
            let usable = q
                .compute_environments
                .iter()
                .map(String::as_str)
                .filter(|c| ces.get(c).is_some_and(|s| s.info.enabled))
                .collect();
            (q.name.as_str(), (missing, usable))
        })
        .collect()
}

/// computeReservation: per queue rank, the vCPUs a fair-share queue may still take this
/// pass and the vCPUs it keeps free.
fn reservations(
    snapshot: &Snapshot,
    rank: &[u32],
    queue_at: &[Option<&QueueInfo>],
) -> Vec<Option<(f64, u32)>> {
    let mut reserve_left: Vec<Option<(f64, u32)>> = vec![None; queue_at.len()];
    for (r, q) in queue_at.iter().enumerate() {
        let Some(q) = q else { continue };
        let Some(policy) = q.fair_share.as_ref().filter(|p| p.compute_reservation > 0) else { continue };
        let mut active: std::collections::HashSet<&str> =
            policy.running.iter().filter(|(_, v)| **v > 0.0).map(|(k, _)| k.as_str()).collect();
        active.extend(
            snapshot
                .jobs
                .iter()
                .zip(rank)
                .filter(|(_, jr)| **jr as usize == r)
                .map(|(j, _)| j.share.as_deref().unwrap_or("")),
        );
        let max: f64 = q
            .compute_environments
            .iter()
            .filter_map(|c| snapshot.compute_environments.iter().find(|x| &x.name == c))
            .map(|c| c.max_vcpus as f64)
            .sum();
        let reserved =
            max * (policy.compute_reservation.min(99) as f64 / 100.0).powi(active.len().max(1) as i32);
        let running: f64 = policy.running.values().sum();
        reserve_left[r] = Some((max - reserved - running, reserved.round() as u32));
    }
    reserve_left
}

/// FNV-1a: a hash that is the same in every process, unlike the standard library's.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Per queue: its compute environments that do not exist, and those that are enabled.
type UsableByQueue<'a> = HashMap<&'a str, (Vec<String>, Vec<&'a str>)>;

fn decide<'a>(
    job: &PendingJob,
    queue: Option<&'a QueueInfo>,
    usable_by_queue: &UsableByQueue<'a>,
    ces: &mut HashMap<&'a str, CeState<'a>>,
    demand: &mut HashMap<String, Vec<Res>>,
) -> Result<Admission, Waiting> {
    // The queue's name is only copied into the reasons that name it.
    let qname = || job.queue.to_string();
    let Some(queue) = queue else {
        return Err(Waiting::QueueNotFound { queue: qname() });
    };
    if !queue.enabled {
        return Err(Waiting::QueueDisabled { queue: qname() });
    }
    if !job.namespace_allowed {
        return Err(Waiting::NamespaceNotAllowed { queue: qname() });
    }
    let (missing, usable) = &usable_by_queue[queue.name.as_str()];
    if missing.len() == queue.compute_environments.len() {
        return Err(Waiting::NoComputeEnvironment { queue: qname(), missing: missing.clone() });
    }
    if usable.is_empty() {
        let disabled = queue.compute_environments.iter().filter(|c| !missing.contains(c)).cloned().collect();
        return Err(Waiting::ComputeEnvironmentsDisabled { queue: qname(), disabled });
    }
    let r = job.request;
    // Admit onto the first environment with a ready node that holds the job.
    for name in usable {
        let ce = ces.get_mut(name).expect("usable environments exist");
        if let Some(node) = ce.place(&r) {
            let node = ce.info.nodes.iter().filter(|n| n.ready).nth(node).expect("index from place");
            return Ok(Admission { job: 0, compute_environment: name.to_string(), node: node.name.clone() });
        }
    }
    // Otherwise wait on launching nodes, or become demand where there is headroom.
    let fitting: Vec<&str> = usable.iter().copied().filter(|n| ces[n].could_ever_fit(&r)).collect();
    if fitting.is_empty() {
        let largest = usable
            .iter()
            .map(|n| {
                let c = &ces[n];
                if r.millicpu > c.info.max_vcpus as u64 * 1000 {
                    format!("{n} has maxvCpus {}", c.info.max_vcpus)
                } else {
                    let l = c.largest_shape;
                    format!(
                        "the largest node of {n} offers {} vCPU, {} memory, {} GPU",
                        fmt_vcpus(l.millicpu),
                        crate::resources::fmt_mib(l.memory_mib),
                        l.gpus
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Waiting::DoesNotFit { queue: qname(), request: r, largest });
    }
    for name in &fitting {
        let ce = ces.get_mut(name).expect("fitting environments exist");
        if let Some(slot) = ce.launching_free.iter_mut().find(|f| f.fits(&r)) {
            *slot -= r;
            return Err(Waiting::NodesLaunching { compute_environment: name.to_string() });
        }
    }
    for name in &fitting {
        let ce = ces.get_mut(name).expect("fitting environments exist");
        if ce.info.cannot_grow.is_none() && ce.projected_vcpus + r.millicpu <= ce.info.max_vcpus as u64 * 1000
        {
            ce.projected_vcpus += r.millicpu;
            demand.entry(name.to_string()).or_default().push(r);
            return Err(Waiting::ScalingUp { compute_environment: name.to_string() });
        }
    }
    // Every environment with room is out of instance capacity: say so, naming the first.
    if let Some(ce) = fitting.iter().map(|n| &ces[n]).find(|c| {
        c.info.cannot_grow.is_some() && c.projected_vcpus + r.millicpu <= c.info.max_vcpus as u64 * 1000
    }) {
        return Err(Waiting::NoInstanceCapacity {
            compute_environment: ce.info.name.clone(),
            why: ce.info.cannot_grow.clone().unwrap_or_default(),
        });
    }
    let first = ces.get_mut(fitting[0]).expect("fitting environments exist");
    first.waiting_for_capacity += 1;
    Err(Waiting::AtMaxCapacity {
        compute_environment: fitting[0].to_string(),
        max_vcpus: first.info.max_vcpus,
        behind_others: first.waiting_for_capacity > 1,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
