//! The replay without a cluster: the trace's CPU jobs placed as Barge's pass places them
//! (best fit onto ready nodes, else waiting on a launching node that holds them, else
//! demand), the demand planned by Barge's own planner, nodes ready `BOOT_S` after launch
//! and removed once idle for the scale-down delay, in one-second steps, On-Demand prices.
//! It shows what a capacity policy costs on the trace before a cluster run does, and how
//! far down the cost can go at all when jobs' durations are unknown and running jobs are
//! never moved (tests/cost_model.rs).

use barge::capacity::{Fleet, InstanceType, Need, Strategy, plan_scale_up};
use barge::resources::Res;

use super::account::lower_bound;
use super::trace::TraceJob;

/// Seconds from launch to a node being ready.
pub const BOOT_S: f64 = 2.0;
/// Seconds from the decision to remove a node to its being gone.
pub const REMOVAL_S: f64 = 3.0;

/// Which ready node a job goes to, of those that hold it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// The one with the least free CPU (Barge's pass: others empty and go).
    BestFit,
    /// The one with the most free CPU (spreading, as kube-scheduler's default scoring leans).
    WorstFit,
    /// The one whose last job ends nearest this job's end: an oracle that knows every
    /// duration, which no batch system does.
    NearestEnd,
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub strategy: Strategy,
    pub placement: Placement,
    pub scale_down_delay_s: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub cost: f64,
    /// The trace's vCPU·s or GiB·s at the cheapest rate among the types, the larger.
    pub lower_bound: f64,
    pub nodes: usize,
    /// Provisioned ÷ requested vCPU·s.
    pub provisioned_over_requested: f64,
}

struct Node {
    ty: &'static InstanceType,
    free: Res,
    launched: f64,
    ready_at: f64,
    idle_since: Option<f64>,
    /// End time and request of each running job.
    running: Vec<(f64, Res)>,
    gone: Option<f64>,
}

/// Replays the jobs without GPUs of `trace` on `types` under `policy`.
pub fn replay(trace: &[TraceJob], types: &[&'static InstanceType], policy: Policy) -> Outcome {
    let jobs: Vec<&TraceJob> = trace.iter().filter(|j| j.gpus == 0).collect();
    let request = |j: &TraceJob| Res::new((j.vcpus * 1000.0).round() as u64, j.memory_mib, 0);
    let fleet = Fleet { total_vcpus: 0, min_vcpus: 0, max_vcpus: u32::MAX };
    let mut nodes: Vec<Node> = Vec::new();
    let mut waiting: Vec<usize> = Vec::new();
    let (mut next, mut ended, mut t) = (0, 0, 0.0);
    while ended < jobs.len() || nodes.iter().any(|n| n.gone.is_none()) {
        while next < jobs.len() && jobs[next].at_s <= t {
            waiting.push(next);
            next += 1;
        }
        for n in nodes.iter_mut().filter(|n| n.gone.is_none()) {
            let before = n.running.len();
            let mut freed = Res::ZERO;
            n.running.retain(|(end, r)| {
                let done = *end <= t;
                if done {
                    freed += *r;
                }
                !done
            });
            n.free += freed;
            ended += before - n.running.len();
            if n.running.is_empty() && n.idle_since.is_none() && n.ready_at <= t {
                n.idle_since = Some(t);
            }
        }
        let mut launching: Vec<Res> =
            nodes.iter().filter(|n| n.gone.is_none() && n.ready_at > t).map(|n| n.free).collect();
        let mut demand = Vec::new();
        waiting.retain(|&j| {
            let (r, end) = (request(jobs[j]), t + jobs[j].duration_s as f64);
            let key = |n: &Node| -> u64 {
                match policy.placement {
                    Placement::BestFit => n.free.millicpu,
                    Placement::WorstFit => u64::MAX - n.free.millicpu,
                    Placement::NearestEnd => {
                        let last = n.running.iter().map(|r| r.0).fold(t, f64::max);
                        ((last - end).abs() * 1000.0) as u64
                    }
                }
            };
            let ready = nodes
                .iter_mut()
                .filter(|n| n.gone.is_none() && n.ready_at <= t && n.free.fits(&r))
                .min_by_key(|n| key(n));
            if let Some(n) = ready {
                n.free -= r;
                n.running.push((end, r));
                n.idle_since = None;
                return false;
            }
            match launching.iter_mut().find(|f| f.fits(&r)) {
                Some(f) => *f -= r,
                None => demand.push(Need::shared(r)),
            }
            true
        });
        for ty in plan_scale_up(&demand, types, policy.strategy, &fleet).launch {
            let ready_at = t + BOOT_S;
            nodes.push(Node {
                ty,
                free: ty.allocatable(),
                launched: t,
                ready_at,
                idle_since: None,
                running: vec![],
                gone: None,
            });
        }
        for n in nodes.iter_mut().filter(|n| n.gone.is_none()) {
            if n.idle_since.is_some_and(|s| t - s >= policy.scale_down_delay_s) {
                n.gone = Some(t + REMOVAL_S);
            }
        }
        t += 1.0;
    }
    let life = |n: &Node| n.gone.unwrap_or(t) - n.launched;
    let vcpu_s: f64 = jobs.iter().map(|j| j.vcpus * j.duration_s as f64).sum();
    let gib_s: f64 = jobs.iter().map(|j| j.memory_gib() * j.duration_s as f64).sum();
    Outcome {
        cost: nodes.iter().map(|n| n.ty.price * life(n) / 3600.0).sum(),
        lower_bound: lower_bound(vcpu_s, gib_s, types, None),
        nodes: nodes.len(),
        provisioned_over_requested: nodes.iter().map(|n| n.ty.vcpus as f64 * life(n)).sum::<f64>() / vcpu_s,
    }
}
