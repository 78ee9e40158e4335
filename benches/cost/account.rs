//! What a contender's capacity cost, from what the benchmark's watches saw: each node's
//! lifetime and price, each pod's request and run time. Pure, so it is tested on its own
//! (tests/cost_model.rs).

use barge::capacity::InstanceType;
use barge::capacity::catalog::CATALOG;
use barge::capacity::spot::SpotMarket;

/// A node as the watch saw it (Unix seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLife {
    pub name: String,
    pub ty: &'static InstanceType,
    pub spot: bool,
    pub created: f64,
    /// When it was first Ready.
    pub ready: Option<f64>,
    /// When it was deleted; `None` if it outlived the run.
    pub deleted: Option<f64>,
    /// Taken back by the simulated Spot market.
    pub interrupted: bool,
}

/// A pod as the watch saw it (Unix seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct PodLife {
    pub job: usize,
    pub node: Option<String>,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub started: Option<f64>,
    /// When it ended, or was deleted (its node taken back) before it did.
    pub ended: Option<f64>,
    /// It ran to its end (Succeeded).
    pub completed: bool,
}

/// One contender's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Account {
    pub cost: f64,
    pub lower_bound: f64,
    /// Requested ÷ provisioned vCPU-seconds while at least one job waited to start.
    pub cpu_utilisation_pending: f64,
    pub cpu_utilisation: f64,
    pub memory_utilisation: f64,
    /// Submission to start, per job (its first attempt), p50 and p99.
    pub wait_p50_s: f64,
    pub wait_p99_s: f64,
    /// Deletion minus the node's last pod end (or its readiness, if it ran none): p50, max.
    pub idle_after_p50_s: f64,
    pub idle_after_max_s: f64,
    pub launched: usize,
    pub removed: usize,
    /// Nodes taken back by the Spot market while they ran pods (or told so).
    pub interrupted: usize,
    /// Attempts that ran but did not finish (their node was taken back).
    pub lost_attempts: usize,
    /// Provisioned and requested vCPUs, a sample a second from `t0`.
    pub series: Vec<(f64, f64, f64)>,
    /// Where the cost went.
    pub split: CostSplit,
    /// The mean size of the nodes launched.
    pub mean_node_vcpus: f64,
}

/// A contender's cost by what each node's time was spent on (USD; the four add up to the
/// cost). A node's time is priced at its mean price over its life.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CostSplit {
    /// The share of each node its running pods held (the larger of their vCPU and memory
    /// shares), over their run.
    pub work: f64,
    /// The rest of the node while it ran pods: room no pod held.
    pub unused_room: f64,
    /// From launch to its first pod's start (boot, and waiting for work).
    pub before_first_pod: f64,
    /// From its last pod's end to its removal (the scale-down delay, or the run's end).
    pub after_last_pod: f64,
}

impl CostSplit {
    pub fn total(&self) -> f64 {
        self.work + self.unused_room + self.before_first_pod + self.after_last_pod
    }
}

/// Splits one node's cost (see `CostSplit`).
pub fn split_node(n: &NodeLife, pods: &[&PodLife], cost: f64, end: f64) -> CostSplit {
    let until = n.deleted.unwrap_or(end);
    let life = (until - n.created).max(0.0);
    if life <= 0.0 {
        return CostSplit::default();
    }
    let per_s = cost / life;
    let ran: Vec<(f64, f64, &PodLife)> = pods
        .iter()
        .filter_map(|p| {
            let s = p.started?.clamp(n.created, until);
            Some((s, p.ended.unwrap_or(until).clamp(s, until), *p))
        })
        .collect();
    let Some(first) = ran.iter().map(|r| r.0).reduce(f64::min) else {
        return CostSplit { before_first_pod: cost, ..CostSplit::default() };
    };
    let last = ran.iter().map(|r| r.1).fold(first, f64::max);
    let (vcpus, gib) = (n.ty.vcpus as f64, n.ty.memory_mib as f64 / 1024.0);
    let held: f64 = ran
        .iter()
        .map(|(s, e, p)| (e - s) * (p.vcpus / vcpus).max(p.memory_gib / gib).min(1.0))
        .sum::<f64>()
        .min(last - first);
    CostSplit {
        work: held * per_s,
        unused_room: (last - first - held) * per_s,
        before_first_pod: (first - n.created) * per_s,
        after_last_pod: (until - last) * per_s,
    }
}

pub fn node_cost(n: &NodeLife, market: &SpotMarket, end: f64) -> f64 {
    let until = n.deleted.unwrap_or(end);
    if n.spot {
        market.cost(n.ty, n.created, until)
    } else {
        n.ty.price * (until - n.created).max(0.0) / 3600.0
    }
}

/// A type's price per hour: On-Demand, or its mean simulated Spot price over a window.
fn hourly(t: &InstanceType, spot: Option<(&SpotMarket, f64, f64)>) -> f64 {
    match spot {
        Some((m, from, to)) => m.cost(t, from, to) * 3600.0 / (to - from).max(1.0),
        None => t.price,
    }
}

/// The least the work could cost: Σ vCPU·s at the cheapest price per vCPU·s among
/// `types`, or Σ GiB·s at the cheapest per GiB·s, whichever is more (at the mean Spot
/// price over the window for a Spot contender).
pub fn lower_bound(
    vcpu_s: f64,
    gib_s: f64,
    types: &[&'static InstanceType],
    spot: Option<(&SpotMarket, f64, f64)>,
) -> f64 {
    let cheapest = |per: &dyn Fn(&InstanceType) -> f64| {
        types.iter().map(|t| hourly(t, spot) / 3600.0 / per(t)).fold(f64::MAX, f64::min)
    };
    let per_vcpu_s = cheapest(&|t| t.vcpus as f64);
    let per_gib_s = cheapest(&|t| t.memory_mib as f64 / 1024.0);
    (vcpu_s * per_vcpu_s).max(gib_s * per_gib_s)
}

/// `lower_bound` for work that needs GPUs: the larger of its vCPU·s and GiB·s at the
/// cheapest rates among `types` (those that have GPUs) and its GPU·s at the cheapest price
/// per GPU·s among them.
pub fn lower_bound_gpu(
    vcpu_s: f64,
    gib_s: f64,
    gpu_s: f64,
    types: &[&'static InstanceType],
    spot: Option<(&SpotMarket, f64, f64)>,
) -> f64 {
    let gpu_types: Vec<&'static InstanceType> = types.iter().copied().filter(|t| t.gpus > 0).collect();
    let per_gpu_s =
        gpu_types.iter().map(|t| hourly(t, spot) / 3600.0 / t.gpus as f64).fold(f64::MAX, f64::min);
    lower_bound(vcpu_s, gib_s, &gpu_types, spot).max(gpu_s * per_gpu_s)
}

/// The catalogue's types of these families.
pub fn types_of(families: &[&str]) -> Vec<&'static InstanceType> {
    CATALOG.iter().filter(|t| families.contains(&t.family())).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The figures of one contender. `submitted[job]` is when each job was submitted; `t0`
/// and `end` bound the run.
pub fn account(
    nodes: &[NodeLife],
    pods: &[PodLife],
    submitted: &[f64],
    market: &SpotMarket,
    t0: f64,
    end: f64,
) -> Account {
    let mut split = CostSplit::default();
    for n in nodes {
        let on: Vec<&PodLife> = pods.iter().filter(|p| p.node.as_deref() == Some(n.name.as_str())).collect();
        let s = split_node(n, &on, node_cost(n, market, end), end);
        split.work += s.work;
        split.unused_room += s.unused_room;
        split.before_first_pod += s.before_first_pod;
        split.after_last_pod += s.after_last_pod;
    }
    let mut a = Account {
        cost: nodes.iter().map(|n| node_cost(n, market, end)).sum(),
        split,
        mean_node_vcpus: nodes.iter().map(|n| n.ty.vcpus as f64).sum::<f64>() / nodes.len().max(1) as f64,
        launched: nodes.len(),
        removed: nodes.iter().filter(|n| n.deleted.is_some()).count(),
        interrupted: nodes
            .iter()
            .filter(|n| {
                n.interrupted
                    || pods.iter().any(|p| {
                        p.node.as_deref() == Some(n.name.as_str()) && p.started.is_some() && !p.completed
                    })
            })
            .count(),
        lost_attempts: pods.iter().filter(|p| p.started.is_some() && !p.completed).count(),
        ..Account::default()
    };
    // First start per job.
    let mut first = vec![f64::NAN; submitted.len()];
    for p in pods {
        if let (Some(s), Some(f)) = (p.started, first.get_mut(p.job)) {
            *f = if f.is_nan() { s } else { f.min(s) };
        }
    }
    let mut waits: Vec<f64> =
        first.iter().zip(submitted).filter(|(f, _)| !f.is_nan()).map(|(f, s)| (f - s).max(0.0)).collect();
    waits.sort_by(f64::total_cmp);
    a.wait_p50_s = percentile(&waits, 0.5);
    a.wait_p99_s = percentile(&waits, 0.99);

    // Idle time after a removed node's last pod.
    let mut idle: Vec<f64> = nodes
        .iter()
        .filter_map(|n| {
            let lost = pods
                .iter()
                .any(|p| p.node.as_deref() == Some(n.name.as_str()) && p.started.is_some() && !p.completed);
            let deleted = n.deleted.filter(|_| !n.interrupted && !lost)?;
            let last = pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(n.name.as_str()))
                .filter_map(|p| p.ended.or(p.started))
                .fold(n.ready.unwrap_or(n.created), f64::max);
            Some((deleted - last).max(0.0))
        })
        .collect();
    idle.sort_by(f64::total_cmp);
    a.idle_after_p50_s = percentile(&idle, 0.5);
    a.idle_after_max_s = idle.last().copied().unwrap_or(f64::NAN);

    // A sample a second: provisioned and requested vCPUs and GiB, and whether a job waits.
    let (mut prov_c, mut req_c, mut prov_m, mut req_m) = (0.0, 0.0, 0.0, 0.0);
    let (mut pend_prov, mut pend_req) = (0.0, 0.0);
    let mut t = t0;
    while t < end {
        let alive = |n: &&NodeLife| n.created <= t && n.deleted.is_none_or(|d| d > t);
        let pc: f64 = nodes.iter().filter(alive).map(|n| n.ty.vcpus as f64).sum();
        let pm: f64 = nodes.iter().filter(alive).map(|n| n.ty.memory_mib as f64 / 1024.0).sum();
        let running = |p: &&PodLife| p.started.is_some_and(|s| s <= t) && p.ended.is_none_or(|e| e > t);
        let rc: f64 = pods.iter().filter(running).map(|p| p.vcpus).sum();
        let rm: f64 = pods.iter().filter(running).map(|p| p.memory_gib).sum();
        let waiting = submitted.iter().zip(&first).any(|(s, f)| *s <= t && (f.is_nan() || *f > t));
        prov_c += pc;
        req_c += rc;
        prov_m += pm;
        req_m += rm;
        if waiting {
            pend_prov += pc;
            pend_req += rc;
        }
        a.series.push((t - t0, pc, rc));
        t += 1.0;
    }
    let ratio = |r: f64, p: f64| if p > 0.0 { r / p } else { f64::NAN };
    a.cpu_utilisation = ratio(req_c, prov_c);
    a.memory_utilisation = ratio(req_m, prov_m);
    a.cpu_utilisation_pending = ratio(pend_req, pend_prov);
    a
}
