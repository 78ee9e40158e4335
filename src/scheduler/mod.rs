//! Pure scheduling decisions: which RUNNABLE jobs are admitted onto which compute
//! environment in this pass, why every other job waits, and the demand each compute
//! environment should scale for. Plain data in, decisions out; no I/O.

pub mod ranges;
pub mod usage;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::capacity::Need;
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
    /// A multi-node parallel job: each node's request, by node index. Its nodes are
    /// admitted together or not at all, each on a node of its own; `request` is their sum.
    pub gang: Option<Arc<[Res]>>,
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
    /// No Barge pod holds any of it: a node of a multi-node job may take it.
    pub empty: bool,
    /// All it offers pods, as when empty.
    pub allocatable: Res,
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
    /// Milliseconds since the epoch when the pass runs.
    pub now_ms: i64,
    /// How long a multi-node job may wait, since it was submitted, while smaller jobs behind
    /// it take nodes as they come free; after that, nodes that come free are held for it.
    pub hold_gangs_after_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Index into `Snapshot::jobs`.
    pub job: usize,
    pub compute_environment: String,
    pub node: String,
    /// For a multi-node job: the node each of its nodes runs on, by node index.
    pub gang: Vec<String>,
}

/// Why a job is still waiting, in words a user understands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Waiting {
    QueueNotFound {
        queue: String,
    },
    QueueDisabled {
        queue: String,
    },
    NamespaceNotAllowed {
        queue: String,
    },
    NoComputeEnvironment {
        queue: String,
        missing: Vec<String>,
    },
    ComputeEnvironmentsDisabled {
        queue: String,
        disabled: Vec<String>,
    },
    ComputeReserved {
        queue: String,
        reserved_vcpus: u32,
    },
    DoesNotFit {
        queue: String,
        request: Res,
        largest: String,
    },
    /// A multi-node job no environment of the queue can ever give all its nodes at once.
    GangDoesNotFit {
        queue: String,
        nodes: u32,
        request: Res,
        largest: String,
    },
    /// A multi-node job waiting for enough nodes together; `free` of them are free now, and
    /// `held` nodes (free or draining) take no other job until it runs.
    GangWaiting {
        compute_environment: String,
        nodes: u32,
        request: Res,
        free: u32,
        held: u32,
    },
    ScalingUp {
        compute_environment: String,
    },
    NodesLaunching {
        compute_environment: String,
    },
    AtMaxCapacity {
        compute_environment: String,
        max_vcpus: u32,
        behind_others: bool,
    },
    NoInstanceCapacity {
        compute_environment: String,
        why: String,
    },
}

impl Waiting {
    /// The AWS-style reason prefix that marks a job that can never run as it stands.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, Waiting::DoesNotFit { .. } | Waiting::GangDoesNotFit { .. })
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
            Waiting::GangDoesNotFit { queue, nodes, request, largest } => write!(
                f,
                "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job needs {nodes} nodes of {request} \
                 together, more than any compute environment of job queue {queue} can provide ({largest})"
            ),
            Waiting::GangWaiting { compute_environment, nodes, request, free, held } => {
                let vcpus = fmt_vcpus(request.millicpu);
                write!(
                    f,
                    "Waiting for {nodes} nodes of {vcpus} vCPU together on compute environment \
                     {compute_environment}: {free} free"
                )?;
                if *held > 0 {
                    write!(f, "; {held} held for it, taking no other job until it runs")?;
                }
                Ok(())
            }
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
    pub demand: HashMap<String, Vec<Need>>,
    /// Per queue, why its first waiting job (in order) cannot run.
    pub blocked_queues: HashMap<String, Waiting>,
}

/// Nodes a pass held for a multi-node job that has waited its turn (see `decide_gang`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold<'a> {
    /// Index into `Snapshot::jobs`.
    pub job: usize,
    pub compute_environment: &'a str,
    /// Nodes held for it, taking no other job.
    pub held: u32,
    /// Nodes it needs together.
    pub nodes: u32,
}

impl Plan {
    /// The nodes held for multi-node jobs in this pass, job by job.
    pub fn holds(&self) -> Vec<Hold<'_>> {
        let holding = |w: &Waiting| matches!(w, Waiting::GangWaiting { held, .. } if *held > 0);
        if !self.reasons.iter().any(holding) {
            return Vec::new();
        }
        self.waiting
            .iter()
            .filter_map(|&(job, r)| match &self.reasons[r] {
                Waiting::GangWaiting { compute_environment, nodes, held, .. } if *held > 0 => {
                    Some(Hold { job, compute_environment, held: *held, nodes: *nodes })
                }
                _ => None,
            })
            .collect()
    }
}

/// Working state of one compute environment during a pass.
struct CeState<'a> {
    info: &'a CeInfo,
    free: Vec<Res>,
    /// The ready nodes (indexes into `free`) that are empty (see `NodeInfo::empty`) and
    /// not taken this pass: the nodes a multi-node job may have.
    empties: Vec<usize>,
    /// Upper bound of any ready node's free resources: a quick "no node can take this".
    max_free: Res,
    launching_free: Vec<Res>,
    /// Whether each launching node is still whole this pass (a multi-node job's to wait for).
    launching_whole: Vec<bool>,
    /// Each ready node's allocatable, by the index of `free`.
    allocatable: Vec<Res>,
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
            empties: ready.iter().enumerate().filter(|(_, n)| n.empty).map(|(i, _)| i).collect(),
            max_free,
            launching_free: info.nodes.iter().filter(|n| !n.ready).map(|n| n.free).collect(),
            launching_whole: info.nodes.iter().filter(|n| !n.ready).map(|n| n.empty).collect(),
            allocatable: ready.iter().map(|n| n.allocatable).collect(),
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
        if let Some(at) = self.empties.iter().position(|&i| i == best) {
            self.empties.swap_remove(at);
        }
        self.max_free = self.free.iter().fold(Res::ZERO, |m, f| m.max(*f));
        if let Some(room) = &mut self.room {
            // What is admitted counts against maxvCpus, as the nodes' vCPUs do elsewhere.
            *room -= r.millicpu;
            self.projected_vcpus += r.millicpu;
        }
        Some(best)
    }

    /// The empty ready nodes a multi-node job's nodes would take, by node index (`None`
    /// where none is left).
    fn match_empty(&self, members: &[Res]) -> Vec<Option<usize>> {
        let slots: Vec<(usize, Res)> = self.empties.iter().map(|&i| (i, self.free[i])).collect();
        match_members(members, &slots)
    }

    /// Whether a multi-node job could ever run here: each of its nodes fits an instance
    /// type, and all of them together are within `maxvCpus`. An unmanaged environment has
    /// only its nodes.
    fn gang_could_ever_fit(&self, members: &[Res]) -> bool {
        let max = self.info.max_vcpus as u64 * 1000;
        if self.info.room.is_some() {
            let slots: Vec<(usize, Res)> = self.info.shapes.iter().copied().enumerate().collect();
            let total: u64 = members.iter().map(|m| m.millicpu).sum();
            return total <= max && match_members(members, &slots).iter().all(Option::is_some);
        }
        let shapes: Option<Vec<Res>> = members.iter().map(|m| self.smallest_shape(m)).collect();
        shapes.is_some_and(|s| s.iter().map(|s| s.millicpu).sum::<u64>() <= max)
    }

    /// The smallest instance type that holds `r`: what one node of a multi-node job needs
    /// launched, since it has the node to itself.
    fn smallest_shape(&self, r: &Res) -> Option<Res> {
        self.info
            .shapes
            .iter()
            .filter(|s| s.fits(r))
            .min_by_key(|s| (s.millicpu, s.memory_mib, s.gpus))
            .copied()
    }

    /// Takes ready nodes whole for this pass: for a multi-node job admitted onto them, or
    /// held for it.
    fn take_whole(&mut self, nodes: &[usize]) {
        for &i in nodes {
            self.free[i] = Res::ZERO;
        }
        self.empties.retain(|i| !nodes.contains(i));
        self.max_free = self.free.iter().fold(Res::ZERO, |m, f| m.max(*f));
    }
}

/// Gives each member a slot of its own: the first slot, in the order given, that holds it.
fn match_members_in_order(members: &[Res], slots: &[(usize, Res)]) -> Vec<Option<usize>> {
    let mut taken = vec![false; slots.len()];
    members
        .iter()
        .map(|m| {
            let k = (0..slots.len()).find(|&k| !taken[k] && slots[k].1.fits(m))?;
            taken[k] = true;
            Some(slots[k].0)
        })
        .collect()
}

/// Gives each member (a multi-node job's node) a slot of its own, largest member first,
/// onto the smallest slot that holds it; returns each member's slot id.
fn match_members(members: &[Res], slots: &[(usize, Res)]) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&m| std::cmp::Reverse((members[m].millicpu, members[m].memory_mib, members[m].gpus)));
    let mut taken = vec![false; slots.len()];
    let mut out = vec![None; members.len()];
    for m in order {
        let best = (0..slots.len())
            .filter(|&k| !taken[k] && slots[k].1.fits(&members[m]))
            .min_by_key(|&k| (slots[k].1.millicpu, slots[k].1.memory_mib, k));
        if let Some(k) = best {
            taken[k] = true;
            out[m] = Some(slots[k].0);
        }
    }
    out
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
            && job.gang.is_none()
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
        let queue = queue_at[r as usize];
        let verdict = match &job.gang {
            None => decide(job, queue, &usable_by_queue, &mut ces, &mut plan.demand),
            Some(members) => {
                // What a multi-node job takes or holds changes what later jobs find.
                generation += 1;
                let overdue =
                    snapshot.now_ms.saturating_sub(job.submitted_ms) >= snapshot.hold_gangs_after_ms;
                decide_gang(job, members, queue, &usable_by_queue, &mut ces, &mut plan.demand, overdue)
            }
        };
        match &verdict {
            Err(Waiting::AtMaxCapacity { compute_environment, max_vcpus, .. }) if job.gang.is_none() => {
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

/// The compute environments the job's queue lets it use now, or why it has none.
fn usable_environments<'q, 'a>(
    job: &PendingJob,
    queue: Option<&'a QueueInfo>,
    usable_by_queue: &'q UsableByQueue<'a>,
) -> Result<&'q [&'a str], Waiting> {
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
    Ok(usable)
}

/// Why none of `usable` can ever hold a job of `total` whose pods each need up to `each`
/// (the same for a job of one pod), environment by environment.
fn largest_of(usable: &[&str], ces: &HashMap<&str, CeState>, total: &Res, each: &Res) -> String {
    usable
        .iter()
        .map(|n| {
            let c = &ces[n];
            if total.millicpu > c.info.max_vcpus as u64 * 1000
                && (each == total || c.largest_shape.fits(each))
            {
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
        .join("; ")
}

fn decide<'a>(
    job: &PendingJob,
    queue: Option<&'a QueueInfo>,
    usable_by_queue: &UsableByQueue<'a>,
    ces: &mut HashMap<&'a str, CeState<'a>>,
    demand: &mut HashMap<String, Vec<Need>>,
) -> Result<Admission, Waiting> {
    let usable = usable_environments(job, queue, usable_by_queue)?;
    let r = job.request;
    // Admit onto the first environment with a ready node that holds the job.
    for name in usable {
        let ce = ces.get_mut(name).expect("usable environments exist");
        if let Some(node) = ce.place(&r) {
            let node = ce.info.nodes.iter().filter(|n| n.ready).nth(node).expect("index from place");
            let (compute_environment, node) = (name.to_string(), node.name.clone());
            return Ok(Admission { job: 0, compute_environment, node, gang: Vec::new() });
        }
    }
    // Otherwise wait on launching nodes, or become demand where there is headroom.
    let fitting: Vec<&str> = usable.iter().copied().filter(|n| ces[n].could_ever_fit(&r)).collect();
    if fitting.is_empty() {
        let largest = largest_of(usable, ces, &r, &r);
        return Err(Waiting::DoesNotFit { queue: job.queue.to_string(), request: r, largest });
    }
    for name in &fitting {
        let ce = ces.get_mut(name).expect("fitting environments exist");
        if let Some(k) = ce.launching_free.iter().position(|f| f.fits(&r)) {
            ce.launching_free[k] -= r;
            ce.launching_whole[k] = false;
            return Err(Waiting::NodesLaunching { compute_environment: name.to_string() });
        }
    }
    for name in &fitting {
        let ce = ces.get_mut(name).expect("fitting environments exist");
        if ce.info.cannot_grow.is_none() && ce.projected_vcpus + r.millicpu <= ce.info.max_vcpus as u64 * 1000
        {
            ce.projected_vcpus += r.millicpu;
            demand.entry(name.to_string()).or_default().push(Need::shared(r));
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

/// A multi-node job: all its nodes onto empty ready nodes of one environment, or none.
/// Otherwise it waits for launching nodes, or becomes demand for the nodes it lacks,
/// holding the free ones it will run on; or, where no environment can give them now, it
/// waits, holding the free nodes of its first environment once it is `overdue`.
fn decide_gang<'a>(
    job: &PendingJob,
    members: &[Res],
    queue: Option<&'a QueueInfo>,
    usable_by_queue: &UsableByQueue<'a>,
    ces: &mut HashMap<&'a str, CeState<'a>>,
    demand: &mut HashMap<String, Vec<Need>>,
    overdue: bool,
) -> Result<Admission, Waiting> {
    let usable = usable_environments(job, queue, usable_by_queue)?;
    let nodes = members.len() as u32;
    let biggest = members.iter().fold(Res::ZERO, |m, r| m.max(*r));
    for name in usable {
        let ce = ces.get_mut(name).expect("usable environments exist");
        if ce.room.is_some_and(|room| room < job.request.millicpu) {
            continue;
        }
        let Some(chosen) = ce.match_empty(members).into_iter().collect::<Option<Vec<usize>>>() else {
            continue;
        };
        ce.take_whole(&chosen);
        if let Some(room) = &mut ce.room {
            *room -= job.request.millicpu;
            ce.projected_vcpus += job.request.millicpu;
        }
        let ready: Vec<&NodeInfo> = ce.info.nodes.iter().filter(|n| n.ready).collect();
        let gang: Vec<String> = chosen.iter().map(|&i| ready[i].name.clone()).collect();
        let compute_environment = name.to_string();
        return Ok(Admission { job: 0, compute_environment, node: gang[0].clone(), gang });
    }
    let fitting: Vec<&str> = usable.iter().copied().filter(|n| ces[n].gang_could_ever_fit(members)).collect();
    if fitting.is_empty() {
        let largest = largest_of(usable, ces, &job.request, &biggest);
        return Err(Waiting::GangDoesNotFit {
            queue: job.queue.to_string(),
            nodes,
            request: biggest,
            largest,
        });
    }
    for name in &fitting {
        let ce = ces.get_mut(name).expect("fitting environments exist");
        let ready = ce.match_empty(members);
        let rest: Vec<usize> = (0..members.len()).filter(|&m| ready[m].is_none()).collect();
        let slots: Vec<(usize, Res)> = (0..ce.launching_free.len())
            .filter(|&k| ce.launching_whole[k])
            .map(|k| (k, ce.launching_free[k]))
            .collect();
        let rest_members: Vec<Res> = rest.iter().map(|&m| members[m]).collect();
        let launching = match_members(&rest_members, &slots);
        let missing: Vec<Res> =
            rest_members.iter().zip(&launching).filter(|(_, l)| l.is_none()).map(|(m, _)| *m).collect();
        let shapes: Vec<Res> = missing.iter().filter_map(|m| ce.smallest_shape(m)).collect();
        let grow: u64 = shapes.iter().map(|s| s.millicpu).sum();
        let max = ce.info.max_vcpus as u64 * 1000;
        if !missing.is_empty() && (ce.info.cannot_grow.is_some() || ce.projected_vcpus + grow > max) {
            continue;
        }
        // It will run here: hold the free nodes and the launching ones it will take.
        ce.take_whole(&ready.into_iter().flatten().collect::<Vec<_>>());
        for k in launching.into_iter().flatten() {
            ce.launching_whole[k] = false;
            ce.launching_free[k] = Res::ZERO;
        }
        let compute_environment = name.to_string();
        if missing.is_empty() {
            return Err(Waiting::NodesLaunching { compute_environment });
        }
        ce.projected_vcpus += grow;
        demand
            .entry(compute_environment.clone())
            .or_default()
            .extend(missing.into_iter().map(Need::own_instance));
        return Err(Waiting::ScalingUp { compute_environment });
    }
    // No environment can give all of them now. Once overdue, it holds nodes as a
    // reservation: the free ones, and for the rest the draining nodes that will hold them
    // with the most free already; none of them takes another job until it runs.
    let ce = ces.get_mut(fitting[0]).expect("fitting environments exist");
    let empty = ce.match_empty(members);
    let free = empty.iter().flatten().count() as u32;
    let mut held = 0;
    if overdue {
        let mut hold: Vec<usize> = empty.iter().flatten().copied().collect();
        let rest: Vec<Res> =
            members.iter().zip(&empty).filter(|(_, e)| e.is_none()).map(|(m, _)| *m).collect();
        let mut draining: Vec<(usize, Res)> = (0..ce.free.len())
            .filter(|i| !ce.empties.contains(i) && ce.free[*i].millicpu > 0)
            .map(|i| (i, ce.allocatable[i]))
            .collect();
        // Most free first: those are likely to drain soonest.
        draining.sort_by_key(|(i, _)| std::cmp::Reverse(ce.free[*i].millicpu));
        hold.extend(match_members_in_order(&rest, &draining).into_iter().flatten());
        held = hold.len() as u32;
        ce.take_whole(&hold);
    }
    let compute_environment = fitting[0].to_string();
    let room_to_grow = ce.info.room.is_none() && ce.projected_vcpus < ce.info.max_vcpus as u64 * 1000;
    if let Some(why) = ce.info.cannot_grow.clone().filter(|_| room_to_grow) {
        return Err(Waiting::NoInstanceCapacity { compute_environment, why });
    }
    Err(Waiting::GangWaiting { compute_environment, nodes, request: biggest, free, held })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(vcpus: u64) -> Res {
        Res::new(vcpus * 1000, vcpus * 1024, 0)
    }

    fn job(name: &str, queue: &str, prio: i32, t: i64, vcpus: u64) -> PendingJob {
        PendingJob {
            name: name.into(),
            index: None,
            queue: queue.into(),
            namespace_allowed: true,
            scheduling_priority: prio,
            submitted_ms: t,
            request: res(vcpus),
            share: None,
            gang: None,
        }
    }

    fn queue(name: &str, priority: i32, ces: &[&str]) -> QueueInfo {
        QueueInfo {
            name: name.into(),
            priority,
            enabled: true,
            compute_environments: ces.iter().map(|s| s.to_string()).collect(),
            fair_share: None,
        }
    }

    fn ce(name: &str, max: u32, nodes: &[(u64, bool)]) -> CeInfo {
        CeInfo {
            name: name.into(),
            enabled: true,
            max_vcpus: max,
            total_vcpus: nodes.iter().map(|(v, _)| *v as u32).sum(),
            shapes: vec![res(2), res(4), res(8)],
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, (v, ready))| NodeInfo {
                    name: format!("{name}-n{i}"),
                    free: res(*v),
                    ready: *ready,
                    empty: true,
                    allocatable: res(*v),
                })
                .collect(),
            cannot_grow: None,
            room: None,
        }
    }

    fn names(s: &Snapshot, p: &Plan) -> Vec<String> {
        p.admitted.iter().map(|a| s.jobs[a.job].name.to_string()).collect()
    }

    fn reason_of<'a>(s: &Snapshot, p: &'a Plan, name: &str) -> &'a Waiting {
        let i = s.jobs.iter().position(|j| &*j.name == name).unwrap();
        &p.reasons[p.waiting.iter().find(|(j, _)| *j == i).unwrap().1]
    }

    #[test]
    fn high_priority_queue_is_served_before_an_older_low_priority_job() {
        let s = Snapshot {
            jobs: vec![job("old-low", "low", 0, 1, 1), job("new-high", "high", 0, 5, 1)],
            queues: vec![queue("low", 1, &["ce"]), queue("high", 10, &["ce"])],
            compute_environments: vec![ce("ce", 1, &[(1, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(names(&s, &p), vec!["new-high"]);
        assert!(matches!(reason_of(&s, &p, "old-low"), Waiting::AtMaxCapacity { .. }));
    }

    #[test]
    fn within_a_queue_scheduling_priority_then_submit_time_orders_jobs() {
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 1), job("b", "q", 5, 9, 1), job("c", "q", 0, 0, 1)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 2, &[(2, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(names(&s, &p), vec!["b", "c"]);
    }

    #[test]
    fn jobs_of_the_same_moment_keep_one_order_and_children_go_by_index() {
        let child = |i: u32| PendingJob { index: Some(i), ..job("arr", "q", 0, 7, 1) };
        let jobs =
            vec![child(3), job("x", "q", 0, 7, 1), child(0), job("y", "q", 0, 7, 1), child(2), child(1)];
        let order = |jobs: Vec<PendingJob>| {
            let s = Snapshot {
                jobs,
                queues: vec![queue("q", 1, &["ce"])],
                compute_environments: vec![ce("ce", 8, &[(8, true)])],
                ..Default::default()
            };
            let p = plan(&s);
            p.admitted
                .iter()
                .map(|a| (s.jobs[a.job].name.to_string(), s.jobs[a.job].index))
                .collect::<Vec<_>>()
        };
        let first = order(jobs.clone());
        let children: Vec<Option<u32>> = first.iter().filter(|(n, _)| n == "arr").map(|(_, i)| *i).collect();
        assert_eq!(children, [Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(
            order(jobs.into_iter().rev().collect()),
            first,
            "the order does not depend on the input's"
        );
    }

    #[test]
    fn disabled_queue_admits_nothing_and_says_so() {
        let mut q = queue("q", 1, &["ce"]);
        q.enabled = false;
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 1)],
            queues: vec![q],
            compute_environments: vec![ce("ce", 8, &[(8, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert!(p.admitted.is_empty());
        assert_eq!(reason_of(&s, &p, "a").to_string(), "Job queue q is DISABLED and admits no jobs");
        assert!(p.blocked_queues.contains_key("q"));
    }

    #[test]
    fn runnable_job_says_which_compute_environment_is_full() {
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 2), job("b", "q", 0, 2, 2), job("c", "q", 0, 3, 2)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 2, &[(2, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(
            reason_of(&s, &p, "b").to_string(),
            "Waiting for capacity: compute environment ce is at maxvCpus (2)"
        );
        assert!(reason_of(&s, &p, "c").to_string().starts_with("Waiting behind"));
    }

    #[test]
    fn too_large_job_is_a_misconfiguration_naming_the_largest_shape() {
        let s = Snapshot {
            jobs: vec![job("huge", "q", 0, 1, 64)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 256, &[])],
            ..Default::default()
        };
        let p = plan(&s);
        let why = reason_of(&s, &p, "huge");
        assert!(why.is_misconfiguration());
        assert!(
            why.to_string().starts_with("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job needs 64 vCPU")
        );
        assert!(p.demand.is_empty());
    }

    #[test]
    fn a_job_over_max_vcpus_is_a_misconfiguration_too() {
        let s = Snapshot {
            jobs: vec![job("wide", "q", 0, 1, 8)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 4, &[])],
            ..Default::default()
        };
        assert!(reason_of(&s, &plan(&s), "wide").is_misconfiguration());
    }

    #[test]
    fn an_unmanaged_environment_admits_within_max_vcpus_and_never_asks_for_nodes() {
        let unmanaged = CeInfo {
            total_vcpus: 2,
            room: Some(4000),
            cannot_grow: Some("it is unmanaged: Barge places pods on its selected nodes only".into()),
            ..ce("own", 6, &[(8, true), (8, true)])
        };
        let jobs = (0..6).map(|i| job(&format!("j{i}"), "q", 0, i, 1)).collect();
        let s = Snapshot {
            jobs,
            queues: vec![queue("q", 1, &["own"])],
            compute_environments: vec![unmanaged],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(p.admitted.len(), 4, "2 vCPUs held + 4 admitted = maxvCpus 6, with 16 free on the nodes");
        assert!(p.demand.is_empty(), "no demand: nothing is ever launched");
        assert!(
            matches!(reason_of(&s, &p, "j4"), Waiting::AtMaxCapacity { .. }),
            "{}",
            reason_of(&s, &p, "j4")
        );

        let full = CeInfo { room: Some(20000), ..s.compute_environments[0].clone() };
        let big = Snapshot { jobs: vec![job("wide", "q", 0, 1, 9)], compute_environments: vec![full], ..s };
        let p = plan(&big);
        assert!(p.admitted.is_empty() && p.demand.is_empty());
        let why = reason_of(&big, &p, "wide").to_string();
        assert!(why.contains("MISCONFIGURATION"), "9 vCPUs fit no 8-vCPU node: {why}");
    }

    #[test]
    fn jobs_without_room_become_demand_up_to_max_vcpus() {
        let jobs = (0..10).map(|i| job(&format!("j{i}"), "q", 0, i, 1)).collect();
        let s = Snapshot {
            jobs,
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 6, &[(2, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(p.admitted.len(), 2);
        assert_eq!(p.demand["ce"].len(), 4, "2 vCPUs running + 4 demanded = maxvCpus 6");
        assert!(matches!(reason_of(&s, &p, "j3"), Waiting::ScalingUp { .. }));
        assert!(matches!(reason_of(&s, &p, "j9"), Waiting::AtMaxCapacity { .. }));
    }

    #[test]
    fn launching_nodes_absorb_demand_before_new_launches() {
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 2), job("b", "q", 0, 2, 2)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 16, &[(2, false)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert!(matches!(reason_of(&s, &p, "a"), Waiting::NodesLaunching { .. }));
        assert!(matches!(reason_of(&s, &p, "b"), Waiting::ScalingUp { .. }));
        assert_eq!(p.demand["ce"].len(), 1);
    }

    #[test]
    fn second_compute_environment_takes_what_the_first_cannot() {
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 2), job("b", "q", 0, 2, 2)],
            queues: vec![queue("q", 1, &["first", "second"])],
            compute_environments: vec![ce("first", 2, &[(2, true)]), ce("second", 2, &[(2, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        let placed: Vec<_> = p.admitted.iter().map(|a| a.compute_environment.as_str()).collect();
        assert_eq!(placed, vec!["first", "second"]);
    }

    #[test]
    fn a_small_job_is_not_blocked_by_a_large_one_ahead_of_it() {
        let s = Snapshot {
            jobs: vec![job("big", "q", 0, 1, 4), job("small", "q", 0, 2, 1)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 2, &[(2, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(names(&s, &p), vec!["small"]);
    }

    #[test]
    fn missing_queue_and_missing_environments_are_named() {
        let s = Snapshot {
            jobs: vec![job("a", "nope", 0, 1, 1), job("b", "q", 0, 1, 1)],
            queues: vec![queue("q", 1, &["gone"])],
            compute_environments: vec![],
            ..Default::default()
        };
        let p = plan(&s);
        assert!(reason_of(&s, &p, "a").to_string().contains("Job queue nope does not exist"));
        assert!(reason_of(&s, &p, "b").to_string().contains("(gone)"));
    }

    #[test]
    fn jobs_are_spread_best_fit_over_nodes() {
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 1), job("b", "q", 0, 2, 3)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 16, &[(3, true), (1, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(p.admitted[0].node, "ce-n1", "1 vCPU job takes the tighter node");
        assert_eq!(p.admitted[1].node, "ce-n0");
    }

    #[test]
    fn fair_share_gives_a_weight_one_share_twice_what_a_weight_two_share_gets() {
        let mut jobs = Vec::new();
        for i in 0..30 {
            for share in ["a", "b"] {
                let mut j = job(&format!("{share}{i:02}"), "q", 0, i, 1);
                j.share = Some(share.into());
                jobs.push(j);
            }
        }
        let mut q = queue("q", 1, &["ce"]);
        q.fair_share =
            Some(FairShare { weights: vec![("a".into(), 1.0), ("b".into(), 2.0)], ..Default::default() });
        let s = Snapshot {
            jobs,
            queues: vec![q],
            compute_environments: vec![ce("ce", 12, &[(12, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        let a = names(&s, &p).iter().filter(|n| n.starts_with('a')).count();
        assert_eq!((a, p.admitted.len() - a), (8, 4));
    }

    #[test]
    fn fair_share_serves_the_share_that_has_used_least() {
        let mut jobs = Vec::new();
        for (i, share) in ["heavy", "light"].iter().enumerate() {
            let mut j = job(share, "q", 0, i as i64, 1);
            j.share = Some(share.to_string());
            jobs.push(j);
        }
        let mut q = queue("q", 1, &["ce"]);
        let usage = HashMap::from([("heavy".to_string(), 50.0), ("light".to_string(), 1.0)]);
        q.fair_share = Some(FairShare { usage, ..Default::default() });
        let s = Snapshot {
            jobs,
            queues: vec![q],
            compute_environments: vec![ce("ce", 1, &[(1, true)])],
            ..Default::default()
        };
        assert_eq!(names(&s, &plan(&s)), vec!["light"]);
    }

    #[test]
    fn compute_reservation_keeps_room_for_shares_not_yet_active() {
        // One active share and computeReservation 50: half of maxvCpus 8 stays free.
        let jobs = (0..8)
            .map(|i| {
                let mut j = job(&format!("a{i}"), "q", 0, i, 1);
                j.share = Some("a".into());
                j
            })
            .collect();
        let mut q = queue("q", 1, &["ce"]);
        q.fair_share = Some(FairShare { compute_reservation: 50, ..Default::default() });
        let s = Snapshot {
            jobs,
            queues: vec![q],
            compute_environments: vec![ce("ce", 8, &[(8, true)])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(p.admitted.len(), 4);
        assert!(
            reason_of(&s, &p, "a7").to_string().contains("keeps 4 vCPUs free for fair-share identifiers")
        );
    }

    #[test]
    fn an_environment_out_of_instance_capacity_passes_demand_to_the_next_and_says_why() {
        let mut spot = ce("spot", 16, &[]);
        spot.cannot_grow = Some("InsufficientInstanceCapacity (c6i.xlarge Spot)".into());
        let s = Snapshot {
            jobs: vec![job("a", "q", 0, 1, 2), job("b", "only-spot", 0, 2, 2)],
            queues: vec![queue("q", 1, &["spot", "ondemand"]), queue("only-spot", 1, &["spot"])],
            compute_environments: vec![spot, ce("ondemand", 16, &[])],
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(p.demand.get("ondemand").map(Vec::len), Some(1));
        assert!(!p.demand.contains_key("spot"));
        let why = reason_of(&s, &p, "b").to_string();
        assert!(
            why.starts_with("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - compute environment spot"),
            "{why}"
        );
        assert!(why.contains("c6i.xlarge Spot"), "{why}");
    }

    fn gang(name: &str, queue: &str, t: i64, members: &[u64]) -> PendingJob {
        let members: Vec<Res> = members.iter().map(|v| res(*v)).collect();
        let total = members.iter().fold(Res::ZERO, |a, m| a + *m);
        PendingJob { request: total, gang: Some(members.into()), ..job(name, queue, 0, t, 0) }
    }

    fn busy(mut c: CeInfo, node: usize, vcpus: u64) -> CeInfo {
        c.nodes[node].free -= res(vcpus);
        c.nodes[node].empty = false;
        c
    }

    #[test]
    fn a_multi_node_job_gets_empty_nodes_of_its_own_all_at_once() {
        // Four ready nodes, one partly used: the three empty ones take the three nodes.
        let s = Snapshot {
            jobs: vec![gang("mpi", "q", 1, &[1, 2, 1]), job("small", "q", 0, 2, 1)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![busy(
                ce("ce", 16, &[(4, true), (4, true), (2, true), (4, true)]),
                1,
                1,
            )],
            ..Default::default()
        };
        let p = plan(&s);
        let mpi = p.admitted.iter().find(|a| a.job == 0).expect("the gang is admitted");
        let mut nodes = mpi.gang.clone();
        assert_eq!(nodes.len(), 3);
        // The 2-vCPU member is given the emptiest fit; every member has a node of its own.
        assert_eq!(mpi.gang[1], "ce-n2");
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes, ["ce-n0", "ce-n2", "ce-n3"]);
        // The small job fits beside the other job, not on the gang's nodes.
        let small = p.admitted.iter().find(|a| a.job == 1).expect("the small job is admitted");
        assert_eq!(small.node, "ce-n1");
    }

    #[test]
    fn two_gangs_that_do_not_fit_together_run_one_at_a_time_never_in_part() {
        let s = Snapshot {
            jobs: vec![gang("first", "q", 1, &[2, 2, 2]), gang("second", "q", 2, &[2, 2, 2])],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 8, &[(2, true), (2, true), (2, true), (2, true)])],
            now_ms: 1000,
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(names(&s, &p), ["first"]);
        let why = reason_of(&s, &p, "second");
        assert_eq!(
            why,
            &Waiting::GangWaiting {
                compute_environment: "ce".into(),
                nodes: 3,
                request: res(2),
                free: 1,
                held: 1
            }
        );
        assert_eq!(
            why.to_string(),
            "Waiting for 3 nodes of 2 vCPU together on compute environment ce: 1 free; 1 held for it, \
             taking no other job until it runs"
        );
        assert!(p.demand.is_empty(), "{:?}", p.demand);
        // The hold, for the queue's and the environment's status.
        assert_eq!(p.holds(), [Hold { job: 1, compute_environment: "ce", held: 1, nodes: 3 }]);
    }

    #[test]
    fn a_gang_larger_than_the_environment_can_ever_give_is_a_misconfiguration() {
        let s = Snapshot {
            jobs: vec![gang("huge", "q", 1, &[8, 8, 8]), gang("wide", "q", 2, &[16, 1])],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 16, &[])],
            ..Default::default()
        };
        let p = plan(&s);
        let huge = reason_of(&s, &p, "huge");
        assert!(huge.is_misconfiguration());
        assert!(huge.to_string().contains("needs 3 nodes of 8 vCPU, 8Gi together"), "{huge}");
        assert!(huge.to_string().contains("ce has maxvCpus 16"), "{huge}");
        let wide = reason_of(&s, &p, "wide").to_string();
        assert!(wide.contains("the largest node of ce offers 8 vCPU"), "{wide}");
    }

    #[test]
    fn a_gang_scales_up_for_the_nodes_it_lacks_and_holds_the_free_ones() {
        let s = Snapshot {
            jobs: vec![gang("mpi", "q", 1, &[3, 3, 3]), job("small", "q", 0, 2, 1)],
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 32, &[(4, true)])],
            hold_gangs_after_ms: i64::MAX,
            ..Default::default()
        };
        let p = plan(&s);
        assert_eq!(reason_of(&s, &p, "mpi"), &Waiting::ScalingUp { compute_environment: "ce".into() });
        // One instance of its own for each node it lacks, twice; the small job shares.
        assert_eq!(p.demand["ce"][..2], [Need::own_instance(res(3)), Need::own_instance(res(3))]);
        assert_eq!(p.demand["ce"][2..], [Need::shared(res(1))]);
        // The free node is held for the gang: the small job behind it waits for capacity.
        assert!(p.admitted.is_empty());
        assert_eq!(reason_of(&s, &p, "small"), &Waiting::ScalingUp { compute_environment: "ce".into() });
    }

    /// Passes over a full environment with a stream of small jobs behind a gang: each pass
    /// submits two small jobs, and what was admitted runs two passes. Returns the pass that
    /// admitted the gang.
    fn gang_admitted_at(hold_after_passes: i64) -> Option<i64> {
        let nodes = [(2, true), (2, true), (2, true), (2, true)];
        // Every node starts with a small job on it, ending at different times.
        let mut running: Vec<(usize, i64)> = vec![(0, 3), (1, 4), (2, 3), (3, 4)];
        let mut queued: Vec<PendingJob> = vec![gang("mpi", "q", 0, &[2, 2, 2, 2])];
        for pass in 1..200 {
            queued.push(job(&format!("s{pass}a"), "q", 0, pass, 1));
            queued.push(job(&format!("s{pass}b"), "q", 0, pass, 1));
            running.retain(|(_, until)| *until > pass);
            let mut c = ce("ce", 8, &nodes);
            for (n, _) in &running {
                c = busy(c, *n, 1);
            }
            let s = Snapshot {
                jobs: queued.clone(),
                queues: vec![queue("q", 1, &["ce"])],
                compute_environments: vec![c],
                now_ms: pass,
                hold_gangs_after_ms: hold_after_passes,
            };
            let p = plan(&s);
            for a in &p.admitted {
                if s.jobs[a.job].gang.is_some() {
                    return Some(pass);
                }
                let n: usize = a.node.trim_start_matches("ce-n").parse().unwrap();
                running.push((n, pass + 2));
            }
            let taken: Vec<usize> = p.admitted.iter().map(|a| a.job).collect();
            queued =
                s.jobs.into_iter().enumerate().filter(|(i, _)| !taken.contains(i)).map(|(_, j)| j).collect();
        }
        None
    }

    #[test]
    fn small_jobs_backfill_around_a_waiting_gang_only_until_it_has_waited_its_turn() {
        // Without a hold the stream of small jobs keeps some node busy forever.
        assert_eq!(gang_admitted_at(i64::MAX), None);
        // Held after 10 passes: the nodes that come free are kept for the gang.
        let at = gang_admitted_at(10).expect("the gang runs");
        assert!((10..=14).contains(&at), "admitted at pass {at}");
    }
}

/// Properties of `plan` over random queues, environments and jobs: it never admits more
/// than a node has free, never admits a job twice, admits only where the job's queue allows,
/// keeps a queue's order, and gives every job it does not admit a reason.
#[cfg(test)]
mod proptests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const CES: [&str; 3] = ["ce0", "ce1", "ce2"];
    const QUEUES: [&str; 3] = ["q0", "q1", "q2"];

    fn res() -> impl Strategy<Value = Res> {
        (1u64..=16, 0u64..=32, prop_oneof![8 => Just(0u32), 1 => 1u32..=2])
            .prop_map(|(half_vcpus, gib, gpus)| Res::new(half_vcpus * 500, gib * 1024, gpus))
    }

    fn node(ce: &'static str, i: usize) -> impl Strategy<Value = NodeInfo> {
        (res(), prop::bool::weighted(0.8)).prop_map(move |(free, ready)| NodeInfo {
            name: format!("{ce}-n{i}"),
            free,
            ready,
            empty: true,
            allocatable: free,
        })
    }

    fn compute_environment(name: &'static str) -> impl Strategy<Value = CeInfo> {
        (prop::bool::weighted(0.85), 1u32..=64, prop::collection::vec(any::<u8>(), 0..=4)).prop_flat_map(
            move |(enabled, max_vcpus, seeds)| {
                let nodes: Vec<_> = (0..seeds.len()).map(|i| node(name, i)).collect();
                (Just(enabled), Just(max_vcpus), nodes).prop_map(move |(enabled, max_vcpus, nodes)| CeInfo {
                    name: name.into(),
                    enabled,
                    max_vcpus,
                    total_vcpus: nodes.iter().map(|n| n.free.vcpus().ceil() as u32).sum(),
                    shapes: vec![
                        Res::new(2000, 8192, 0),
                        Res::new(8000, 32768, 0),
                        Res::new(16000, 65536, 1),
                    ],
                    nodes,
                    cannot_grow: None,
                    room: None,
                })
            },
        )
    }

    fn queue(name: &'static str) -> impl Strategy<Value = QueueInfo> {
        let ces = prop::sample::subsequence(vec!["ce0", "ce1", "ce2", "ghost"], 0..=3).prop_shuffle();
        let fair = prop::option::weighted(
            0.3,
            (0u32..=60).prop_map(|compute_reservation| FairShare {
                weights: vec![("a".into(), 1.0), ("b*".into(), 2.0)],
                compute_reservation,
                ..Default::default()
            }),
        );
        (0i32..=3, prop::bool::weighted(0.85), ces, fair).prop_map(
            move |(priority, enabled, ces, fair_share)| QueueInfo {
                name: name.into(),
                priority,
                enabled,
                compute_environments: ces.into_iter().map(str::to_string).collect(),
                fair_share,
            },
        )
    }

    fn job(i: usize) -> impl Strategy<Value = PendingJob> {
        let queue = prop::sample::select(vec!["q0", "q1", "q2", "missing"]);
        let share = prop::option::of(prop::sample::select(vec!["a", "b1", "c"]));
        (queue, prop::bool::weighted(0.9), -1i32..=1, 0i64..=5, res(), share).prop_map(
            move |(queue, namespace_allowed, scheduling_priority, submitted_ms, request, share)| PendingJob {
                name: format!("ns/j{i}").into(),
                index: None,
                queue: queue.into(),
                namespace_allowed,
                scheduling_priority,
                submitted_ms,
                request,
                share: share.map(str::to_string),
                gang: None,
            },
        )
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        let ces: Vec<_> = CES.iter().map(|c| compute_environment(c)).collect();
        let queues: Vec<_> = QUEUES.iter().map(|q| queue(q)).collect();
        let jobs = (0usize..=40).prop_flat_map(|n| (0..n).map(job).collect::<Vec<_>>());
        (ces, queues, jobs).prop_map(|(compute_environments, queues, jobs)| Snapshot {
            jobs,
            queues,
            compute_environments,
            ..Default::default()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn every_job_is_admitted_once_or_told_why_it_waits(s in snapshot()) {
            let p = plan(&s);
            let mut seen = vec![0u32; s.jobs.len()];
            for a in &p.admitted {
                seen[a.job] += 1;
            }
            for (j, reason) in &p.waiting {
                seen[*j] += 1;
                prop_assert!(*reason < p.reasons.len(), "job {j} points at no reason");
            }
            prop_assert!(seen.iter().all(|n| *n == 1), "admitted or waiting, once each: {seen:?}");
        }

        #[test]
        fn no_node_is_given_more_than_it_has_free(s in snapshot()) {
            let p = plan(&s);
            let mut given: HashMap<(&str, &str), Res> = HashMap::new();
            for a in &p.admitted {
                *given.entry((a.compute_environment.as_str(), a.node.as_str())).or_insert(Res::ZERO) +=
                    s.jobs[a.job].request;
            }
            for ((ce, node), total) in given {
                let info = s.compute_environments.iter().find(|c| c.name == ce).expect("a known environment");
                let n = info.nodes.iter().find(|n| n.name == node).expect("a node of that environment");
                prop_assert!(n.ready, "admitted onto {node}, which is still launching");
                prop_assert!(n.free.fits(&total), "{node} has {} free, was given {total}", n.free);
            }
        }

        #[test]
        fn jobs_run_only_where_their_queue_sends_them(s in snapshot()) {
            let p = plan(&s);
            for a in &p.admitted {
                let job = &s.jobs[a.job];
                let q = s.queues.iter().find(|q| *q.name == *job.queue);
                prop_assert!(q.is_some_and(|q| q.enabled), "{} admitted from a missing or DISABLED queue", job.name);
                let q = q.unwrap();
                prop_assert!(job.namespace_allowed, "{} admitted from a namespace its queue refuses", job.name);
                prop_assert!(q.compute_environments.contains(&a.compute_environment));
                let ce = s.compute_environments.iter().find(|c| c.name == a.compute_environment).unwrap();
                prop_assert!(ce.enabled, "{} admitted onto DISABLED {}", job.name, ce.name);
            }
        }

        #[test]
        fn within_a_queue_a_later_job_never_passes_an_earlier_one_of_the_same_size(s in snapshot()) {
            let p = plan(&s);
            let admitted: Vec<bool> = {
                let mut v = vec![false; s.jobs.len()];
                p.admitted.iter().for_each(|a| v[a.job] = true);
                v
            };
            let fifo = |queue: &str| s.queues.iter().any(|q| q.name == queue && q.fair_share.is_none());
            for (x, jx) in s.jobs.iter().enumerate() {
                for (y, jy) in s.jobs.iter().enumerate() {
                    let earlier = (jx.scheduling_priority, -jx.submitted_ms) > (jy.scheduling_priority, -jy.submitted_ms);
                    let alike = jx.queue == jy.queue && jx.request == jy.request && jx.namespace_allowed == jy.namespace_allowed;
                    if earlier && alike && fifo(&jx.queue) {
                        prop_assert!(
                            admitted[x] || !admitted[y],
                            "{} was admitted ahead of {} of the same queue and size", jy.name, jx.name
                        );
                    }
                }
            }
        }
    }
}
