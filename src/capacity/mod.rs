//! Pure capacity planning for a compute environment: which instances to add for the
//! jobs waiting on it (bin-packing onto allowed types within `maxvCpus`) and which idle
//! nodes to remove. No I/O: providers carry the plans out.

pub mod catalog;
pub mod spot;

use crate::resources::Res;
pub use catalog::InstanceType;

/// Demand items beyond this are left to the next pass: packing stays fast and a burst of
/// submissions is met in a few rounds rather than one huge launch.
pub const MAX_ITEMS_PER_PLAN: usize = 5_000;

/// What the jobs waiting on a compute environment need room for: one job's request, or one
/// node of a multi-node job, which needs an instance of its own (AWS Batch runs one node
/// per instance), so nothing else is packed beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    pub request: Res,
    pub own_instance: bool,
}

impl Need {
    /// A job that may share an instance with others.
    pub const fn shared(request: Res) -> Self {
        Need { request, own_instance: false }
    }

    /// A multi-node job's node: an instance of its own.
    pub const fn own_instance(request: Res) -> Self {
        Need { request, own_instance: true }
    }
}

/// How instance types may be combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One instance type for the whole launch: the cheapest in total.
    SingleType,
    /// Each new instance may be a different type: cheapest per packed vCPU first.
    Mixed,
}

/// What a compute environment has now.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    /// vCPUs of every node, ready or launching.
    pub total_vcpus: u32,
    pub min_vcpus: u32,
    pub max_vcpus: u32,
}

/// Instances to launch: the packed demand per instance.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleUp {
    pub launch: Vec<&'static InstanceType>,
    /// What each launched instance is packed with (zero for instances kept for minvCpus).
    pub packed: Vec<Res>,
    /// Demand items that could not be placed within `maxvCpus`.
    pub unplaced: usize,
}

impl ScaleUp {
    pub fn vcpus(&self) -> u32 {
        self.launch.iter().map(|t| t.vcpus).sum()
    }
}

struct Bin {
    ty: &'static InstanceType,
    free: Res,
    /// Taken whole by one multi-node job's node: nothing else goes on it.
    closed: bool,
}

/// Packs `demand` (what the jobs that found no room need) onto new instances of `types`,
/// first-fit decreasing, each multi-node job's node on an instance of its own, never
/// taking the fleet above `maxvCpus`; then tops the fleet up to `minvCpus` with the
/// cheapest instances.
pub fn plan_scale_up(
    demand: &[Need],
    types: &[&'static InstanceType],
    strategy: Strategy,
    fleet: &Fleet,
) -> ScaleUp {
    let mut items: Vec<Need> = demand.iter().take(MAX_ITEMS_PER_PLAN).copied().collect();
    items.sort_by(|a, b| b.request.cmp(&a.request).then(b.own_instance.cmp(&a.own_instance)));
    let headroom = fleet.max_vcpus.saturating_sub(fleet.total_vcpus);
    let mut plan = match strategy {
        Strategy::SingleType => best_single_type(&items, types, headroom),
        Strategy::Mixed => pack_mixed(&items, types, headroom),
    };
    plan.unplaced += demand.len().saturating_sub(MAX_ITEMS_PER_PLAN);
    // minvCpus: keep at least this much running even when idle.
    let mut total = fleet.total_vcpus + plan.vcpus();
    if total < fleet.min_vcpus {
        let mut by_price: Vec<_> = types.to_vec();
        by_price.sort_by(|a, b| a.price.total_cmp(&b.price));
        while total < fleet.min_vcpus {
            let Some(t) = by_price.iter().find(|t| total + t.vcpus <= fleet.max_vcpus) else {
                break;
            };
            plan.launch.push(t);
            plan.packed.push(Res::ZERO);
            total += t.vcpus;
        }
    }
    plan
}

fn best_single_type(items: &[Need], types: &[&'static InstanceType], headroom: u32) -> ScaleUp {
    let mut best: Option<(f64, ScaleUp)> = None;
    for &t in types {
        let plan = pack_mixed(items, &[t], headroom);
        // Fewest unplaced first, then the cheapest launch.
        let cost = plan.launch.len() as f64 * t.price;
        let better = match &best {
            None => true,
            Some((c, p)) => plan.unplaced < p.unplaced || (plan.unplaced == p.unplaced && cost < *c),
        };
        if better {
            best = Some((cost, plan));
        }
    }
    best.map(|(_, p)| p).unwrap_or(ScaleUp { launch: vec![], packed: vec![], unplaced: items.len() })
}

/// First-fit decreasing; a new bin takes the type with the lowest price per vCPU it
/// would actually hold when filled from the remaining items. A node of a multi-node job
/// takes the cheapest type that holds it, alone.
fn pack_mixed(items: &[Need], types: &[&'static InstanceType], headroom: u32) -> ScaleUp {
    let mut bins: Vec<Bin> = Vec::new();
    let mut placed = vec![false; items.len()];
    let mut used_vcpus = 0u32;
    let mut unplaced = 0;
    for i in 0..items.len() {
        if placed[i] {
            continue;
        }
        let Need { request: item, own_instance } = items[i];
        if !own_instance && let Some(bin) = bins.iter_mut().find(|b| !b.closed && b.free.fits(&item)) {
            bin.free -= item;
            placed[i] = true;
            continue;
        }
        let mut choice: Option<(f64, &'static InstanceType)> = None;
        for &t in types {
            if !t.allocatable().fits(&item) || used_vcpus + t.vcpus > headroom {
                continue;
            }
            let per_vcpu = if own_instance {
                t.price
            } else {
                t.price / (simulate_fill(t.allocatable(), items, &placed, i).max(1) as f64)
            };
            if choice.is_none_or(|(c, ct)| per_vcpu < c || (per_vcpu == c && t.vcpus < ct.vcpus)) {
                choice = Some((per_vcpu, t));
            }
        }
        match choice {
            Some((_, t)) => {
                used_vcpus += t.vcpus;
                bins.push(Bin { ty: t, free: t.allocatable() - item, closed: own_instance });
                placed[i] = true;
            }
            None => unplaced += 1,
        }
    }
    let packed = bins.iter().map(|b| b.ty.allocatable() - b.free).collect();
    ScaleUp { launch: bins.into_iter().map(|b| b.ty).collect(), packed, unplaced }
}

/// Millicores a fresh bin of `free` would hold, filled greedily from `items[from..]`
/// (the nodes of multi-node jobs go on instances of their own).
fn simulate_fill(mut free: Res, items: &[Need], placed: &[bool], from: usize) -> u64 {
    let mut held = 0;
    for (j, Need { request: it, own_instance }) in items.iter().enumerate().skip(from) {
        if !placed[j] && !own_instance && free.fits(it) {
            free -= *it;
            held += it.millicpu;
            if free.millicpu == 0 {
                break;
            }
        }
    }
    held
}

/// One launch request: `count` instances, each any of `options` (most preferred first).
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub options: Vec<&'static InstanceType>,
    pub count: u32,
}

/// Most instance types offered for one packed instance: enough choice for EC2 to find
/// capacity, few enough to keep a launch request small.
pub const MAX_OPTIONS: usize = 12;

/// Turns a scale-up plan into launch requests. Each instance may be any allowed type that
/// holds what was packed onto it and is no larger than the planned type (so `maxvCpus`
/// holds whatever EC2 picks), cheapest first. Instances with the same choices are merged
/// into one request.
pub fn offers(plan: &ScaleUp, types: &[&'static InstanceType]) -> Vec<Offer> {
    let mut by_price: Vec<&'static InstanceType> = types.to_vec();
    by_price.sort_by(|a, b| a.price.total_cmp(&b.price).then(a.vcpus.cmp(&b.vcpus)).then(a.name.cmp(b.name)));
    let mut out: Vec<Offer> = Vec::new();
    for (planned, packed) in plan.launch.iter().zip(&plan.packed) {
        let mut options: Vec<&'static InstanceType> = by_price
            .iter()
            .copied()
            .filter(|t| t.vcpus <= planned.vcpus && t.allocatable().fits(packed))
            .filter(|t| packed.millicpu > 0 || t.name == planned.name)
            .take(MAX_OPTIONS)
            .collect();
        if !options.contains(planned) {
            options.insert(0, planned);
            options.truncate(MAX_OPTIONS);
        }
        match out.iter_mut().find(|o| o.options == options) {
            Some(o) => o.count += 1,
            None => out.push(Offer { options, count: 1 }),
        }
    }
    out
}

/// A node as scale-down sees it.
#[derive(Clone, Debug)]
pub struct NodeUse {
    pub name: String,
    pub vcpus: u32,
    /// Seconds since the node last ran a Barge pod; `None` while it runs one.
    pub idle_seconds: Option<u64>,
    /// EC2 warned it may take the instance back: it takes no new work, goes as soon as it
    /// is idle, and is never kept for `minvCpus`.
    pub interrupted: bool,
}

/// Nodes to remove: those idle longer than `delay`, except the smallest set of them
/// that keeps the fleet at `minvCpus` (busy and recently idle nodes count first). An idle
/// node far larger than what `minvCpus` still needs is not kept for it: it goes, and
/// scale-up tops the fleet up with a small instance (`smallest_vcpus`, the smallest type
/// allowed, bounds "far larger" so that a fleet of large types does not churn).
pub fn plan_scale_down(
    nodes: &[NodeUse],
    min_vcpus: u32,
    delay_seconds: u64,
    smallest_vcpus: u32,
) -> Vec<String> {
    let past_delay = |n: &NodeUse| n.idle_seconds.is_some_and(|s| s >= delay_seconds);
    let interrupted_idle: Vec<String> =
        nodes.iter().filter(|n| n.interrupted && n.idle_seconds.is_some()).map(|n| n.name.clone()).collect();
    let nodes: Vec<&NodeUse> = nodes.iter().filter(|n| !n.interrupted).collect();
    let kept: u32 = nodes.iter().filter(|n| !past_delay(n)).map(|n| n.vcpus).sum();
    let mut eligible: Vec<&NodeUse> = nodes.into_iter().filter(|n| past_delay(n)).collect();
    // Longest idle first to go; the order also makes the choice deterministic.
    eligible.sort_by(|a, b| b.idle_seconds.cmp(&a.idle_seconds).then(a.name.cmp(&b.name)));
    let mut need = min_vcpus.saturating_sub(kept);
    while need > 0 && !eligible.is_empty() {
        // Keep the smallest node that covers what is missing, else the largest and go on.
        let worth_keeping = need.saturating_mul(2).max(smallest_vcpus);
        let pick = eligible
            .iter()
            .enumerate()
            .filter(|(_, n)| n.vcpus >= need)
            .min_by_key(|(i, n)| (n.vcpus, std::cmp::Reverse(*i)))
            .or_else(|| eligible.iter().enumerate().max_by_key(|(_, n)| n.vcpus))
            .filter(|(_, n)| n.vcpus <= worth_keeping)
            .map(|(i, _)| i);
        let Some(pick) = pick else { break };
        need = need.saturating_sub(eligible.remove(pick).vcpus);
    }
    interrupted_idle.into_iter().chain(eligible.into_iter().map(|n| n.name.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::catalog::{lookup, resolve};
    use super::*;

    fn cpu(vcpus: u64) -> Res {
        Res::new(vcpus * 1000, 1024, 0)
    }

    fn fleet(total: u32, min: u32, max: u32) -> Fleet {
        Fleet { total_vcpus: total, min_vcpus: min, max_vcpus: max }
    }

    #[test]
    fn fifty_one_vcpu_jobs_fill_the_fleet_without_passing_max() {
        let (types, _) = resolve(&["m6i".into()]);
        let demand = vec![Need::shared(cpu(1)); 50];
        let plan = plan_scale_up(&demand, &types, Strategy::Mixed, &fleet(0, 0, 32));
        assert!(plan.vcpus() <= 32, "{}", plan.vcpus());
        assert!(plan.unplaced > 0);
    }

    #[test]
    fn a_job_sized_to_the_nominal_shape_needs_the_next_size_up() {
        let (types, _) = resolve(&["m6i".into()]);
        // 2 vCPU, 8 GiB: exactly an m6i.large on paper, more than its allocatable.
        let demand = vec![Need::shared(Res::new(2000, 8192, 0))];
        let plan = plan_scale_up(&demand, &types, Strategy::SingleType, &fleet(0, 0, 64));
        assert_eq!(plan.launch, vec![lookup("m6i.xlarge").unwrap()]);
    }

    #[test]
    fn single_type_uses_one_type_and_the_cheapest_total() {
        let (types, _) = resolve(&["c6i".into(), "m6i".into()]);
        let demand = vec![Need::shared(cpu(1)); 10];
        let plan = plan_scale_up(&demand, &types, Strategy::SingleType, &fleet(0, 0, 256));
        let first = plan.launch[0].name;
        assert!(plan.launch.iter().all(|t| t.name == first));
        assert!(first.starts_with("c6i"), "c6i is cheaper per vCPU: {first}");
        assert_eq!(plan.unplaced, 0);
    }

    #[test]
    fn scale_up_tops_the_fleet_up_to_min_vcpus() {
        let (types, _) = resolve(&["m6i.large".into()]);
        let plan = plan_scale_up(&[], &types, Strategy::Mixed, &fleet(0, 4, 16));
        assert_eq!(plan.vcpus(), 4);
    }

    #[test]
    fn nothing_fits_when_a_job_exceeds_every_type() {
        let (types, _) = resolve(&["m6i.large".into()]);
        let plan = plan_scale_up(&[Need::shared(cpu(4))], &types, Strategy::Mixed, &fleet(0, 0, 64));
        assert!(plan.launch.is_empty());
        assert_eq!(plan.unplaced, 1);
    }

    #[test]
    fn offers_let_ec2_choose_among_types_that_hold_the_packed_jobs() {
        let (types, _) = resolve(&["c6i".into(), "m6i".into(), "r6i.large".into()]);
        // Three 3-vCPU jobs: each needs a 4-vCPU instance (3 vCPU do not fit a 2-vCPU one).
        let demand = vec![Need::shared(Res::new(3000, 2048, 0)); 3];
        let plan = plan_scale_up(&demand, &types, Strategy::Mixed, &fleet(0, 0, 64));
        let offers = offers(&plan, &types);
        assert_eq!(offers.len(), 1, "identical launches are merged: {offers:?}");
        assert_eq!(offers[0].count, 3);
        let names: Vec<_> = offers[0].options.iter().map(|t| t.name).collect();
        assert_eq!(names, ["c6i.xlarge", "m6i.xlarge"], "cheapest first, none larger than planned");
    }

    #[test]
    fn offers_never_include_a_type_whose_allocatable_is_too_small() {
        let (types, _) = resolve(&["m6i.large".into(), "m6i.xlarge".into(), "c6i.xlarge".into()]);
        // 7.5 GiB: c6i.xlarge and m6i.large have 8 GiB on paper, less once the system
        // reserve is taken; only m6i.xlarge holds it.
        let demand = vec![Need::shared(Res::new(1000, 7680, 0))];
        let plan = plan_scale_up(&demand, &types, Strategy::Mixed, &fleet(0, 0, 64));
        let offers = offers(&plan, &types);
        let names: Vec<_> = offers[0].options.iter().map(|t| t.name).collect();
        assert_eq!(names, ["m6i.xlarge"]);
    }

    #[test]
    fn each_node_of_a_multi_node_job_gets_an_instance_of_its_own_in_one_offer() {
        let (types, _) = resolve(&["m6i".into()]);
        // Four half-vCPU nodes would pack three to an m6i.large; as a gang's nodes they
        // need four instances, the cheapest that hold one each. A job beside them does not
        // share theirs.
        let half = Res::new(500, 512, 0);
        let mut demand = vec![Need::own_instance(half); 4];
        demand.push(Need::shared(half));
        let plan = plan_scale_up(&demand, &types, Strategy::Mixed, &fleet(0, 0, 64));
        let names: Vec<_> = plan.launch.iter().map(|t| t.name).collect();
        assert_eq!(names, ["m6i.large"; 5], "{plan:?}");
        assert_eq!(plan.unplaced, 0);
        let single = plan_scale_up(&demand, &types, Strategy::SingleType, &fleet(0, 0, 64));
        assert_eq!(single.launch.len(), 5, "{single:?}");
        // The gang's four instances are one launch request.
        let offers = offers(&plan, &types);
        assert!(offers.iter().any(|o| o.count >= 4), "{offers:?}");
        // Within maxvCpus: three of the four fit in 6 vCPUs; the rest is unplaced.
        let capped = plan_scale_up(&demand[..4], &types, Strategy::Mixed, &fleet(0, 0, 6));
        assert_eq!((capped.launch.len(), capped.unplaced), (3, 1));
    }

    #[test]
    fn scale_down_keeps_min_vcpus_and_busy_nodes() {
        let nodes = vec![
            NodeUse { name: "a".into(), vcpus: 4, idle_seconds: Some(600), interrupted: false },
            NodeUse { name: "b".into(), vcpus: 4, idle_seconds: Some(900), interrupted: false },
            NodeUse { name: "c".into(), vcpus: 4, idle_seconds: None, interrupted: false },
            NodeUse { name: "d".into(), vcpus: 4, idle_seconds: Some(10), interrupted: false },
        ];
        assert_eq!(plan_scale_down(&nodes, 8, 300, 2), vec!["b".to_string(), "a".to_string()]);
        assert_eq!(plan_scale_down(&nodes, 12, 300, 2), vec!["b".to_string()]);
    }

    #[test]
    fn an_idle_node_far_larger_than_min_vcpus_needs_is_not_kept_for_it() {
        let nodes =
            vec![NodeUse { name: "big".into(), vcpus: 64, idle_seconds: Some(600), interrupted: false }];
        assert_eq!(plan_scale_down(&nodes, 2, 300, 2), vec!["big".to_string()]);
        // Unless nothing smaller may be launched: no churn.
        assert!(plan_scale_down(&nodes, 2, 300, 64).is_empty());
    }

    #[test]
    fn an_interrupted_node_goes_as_soon_as_it_is_idle_and_is_not_kept_for_min_vcpus() {
        let node = |name: &str, idle_seconds, interrupted| NodeUse {
            name: name.into(),
            vcpus: 4,
            idle_seconds,
            interrupted,
        };
        let nodes =
            vec![node("spot", Some(0), true), node("busy-spot", None, true), node("b", Some(600), false)];
        // minvCpus 8: the busy interrupted node does not count, so b is kept; spot goes at once.
        assert_eq!(plan_scale_down(&nodes, 8, 300, 2), vec!["spot".to_string()]);
        assert_eq!(plan_scale_down(&nodes, 0, 300, 2), vec!["spot".to_string(), "b".to_string()]);
    }
}

#[cfg(test)]
mod proptests;
