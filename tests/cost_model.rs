//! The cost benchmark's pure parts (`make bench-cost`, benches/cost.rs): its trace
//! generator and its accounting, tested without a cluster.

#[path = "../benches/cost/account.rs"]
mod account;
#[path = "../benches/cost/model.rs"]
mod model;
#[path = "../benches/cost/trace.rs"]
mod trace;

use account::*;
use barge::capacity::catalog::lookup;
use barge::capacity::spot::SpotMarket;

fn node(name: &str, ty: &str, created: f64, deleted: Option<f64>) -> NodeLife {
    NodeLife {
        name: name.into(),
        ty: lookup(ty).unwrap(),
        spot: false,
        created,
        ready: Some(created + 1.0),
        deleted,
        interrupted: false,
    }
}

fn pod(job: usize, node: &str, vcpus: f64, started: f64, ended: f64) -> PodLife {
    PodLife {
        job,
        node: Some(node.into()),
        vcpus,
        memory_gib: vcpus * 4.0,
        started: Some(started),
        ended: Some(ended),
        completed: true,
    }
}

#[test]
fn an_on_demand_node_costs_its_price_over_its_life() {
    let m = SpotMarket::default();
    let n = node("a", "m6i.xlarge", 0.0, Some(3600.0));
    assert!((node_cost(&n, &m, 9999.0) - 0.192).abs() < 1e-9);
    // Still alive at the end: costed until then.
    let n = node("a", "m6i.xlarge", 0.0, None);
    assert!((node_cost(&n, &m, 1800.0) - 0.096).abs() < 1e-9);
    let spot = NodeLife { spot: true, ..node("s", "m6i.xlarge", 0.0, Some(3600.0)) };
    let c = node_cost(&spot, &m, 9999.0);
    assert!(c > 0.192 * 0.15 && c < 0.192 * 0.5, "{c}");
}

#[test]
fn the_lower_bound_is_the_cheapest_way_to_buy_the_work() {
    let types = types_of(&["m6i", "c6i", "r6i"]);
    // One vCPU for an hour: c6i.large's $0.085 for 2 vCPUs is the cheapest per vCPU.
    let b = lower_bound(3600.0, 0.0, &types, None);
    assert!((b - 0.0425).abs() < 1e-9, "{b}");
    // 8 GiB for an hour: r6i.large's $0.126 for 16 GiB.
    let b = lower_bound(0.0, 8.0 * 3600.0, &types, None);
    assert!((b - 0.063).abs() < 1e-9, "{b}");
    let m = SpotMarket::default();
    assert!(lower_bound(3600.0, 0.0, &types, Some((&m, 0.0, 3600.0))) < 0.0425 * 0.5);
    // A GPU for an hour: g5.xlarge's $1.006 (its 4 vCPUs cost more than c6i's, but the GPU
    // is what costs); on CPU types alone the same job's 4 vCPUs would be priced at $0.17.
    let gpu = types_of(&["g5"]);
    let b = lower_bound_gpu(4.0 * 3600.0, 13.6 * 3600.0, 3600.0, &gpu, None);
    assert!((b - 1.006).abs() < 1e-9, "{b}");
    // Many vCPUs on one GPU: the vCPUs at g5's cheapest per vCPU (g5.48xlarge) cost more.
    let b = lower_bound_gpu(192.0 * 3600.0, 0.0, 3600.0, &gpu, None);
    assert!((b - 16.288).abs() < 1e-9, "{b}");
}

#[test]
fn the_account_adds_up() {
    let m = SpotMarket::default();
    // One 4-vCPU node from 0 to 100 s; two 2-vCPU pods: 10–50 s and 20–60 s. Job 2 waits
    // from 0 until 20 s.
    let nodes = [node("a", "m6i.xlarge", 0.0, Some(100.0))];
    let pods = [pod(0, "a", 2.0, 10.0, 50.0), pod(1, "a", 2.0, 20.0, 60.0)];
    let a = account(&nodes, &pods, &[5.0, 0.0], &m, 0.0, 100.0);
    assert!((a.cost - 0.192 * 100.0 / 3600.0).abs() < 1e-9);
    assert_eq!((a.launched, a.removed, a.interrupted, a.lost_attempts), (1, 1, 0, 0));
    assert_eq!((a.wait_p50_s, a.wait_p99_s), (5.0, 20.0));
    assert_eq!(a.idle_after_max_s, 40.0);
    // 160 vCPU-s requested of 400 provisioned.
    assert!((a.cpu_utilisation - 0.4).abs() < 1e-9, "{}", a.cpu_utilisation);
    // While a job waited (0–19 s): 2 vCPUs of 4 for 10 s of 20.
    assert!((a.cpu_utilisation_pending - 0.25).abs() < 1e-9, "{}", a.cpu_utilisation_pending);
    assert_eq!(a.series.len(), 100);
    assert_eq!(a.series[30], (30.0, 4.0, 4.0));
    // Where the 100 node-seconds went: 10 before the first pod, 40 after the last; of the
    // 50 between, the pods held half the node for 40 s each (40 node-seconds), 10 unused.
    let per_s = a.cost / 100.0;
    let s = a.split;
    for (got, want) in
        [(s.before_first_pod, 10.0), (s.after_last_pod, 40.0), (s.work, 40.0), (s.unused_room, 10.0)]
    {
        assert!((got - want * per_s).abs() < 1e-9, "{s:?}");
    }
    assert!((s.total() - a.cost).abs() < 1e-9);

    // The node taken back at 40 s with job 1's pod on it: an interruption and a lost
    // attempt, and no idle time to count for it.
    let nodes = [NodeLife { deleted: Some(40.0), ..node("a", "m6i.xlarge", 0.0, None) }];
    let pods = [
        pod(0, "a", 2.0, 10.0, 30.0),
        PodLife { ended: Some(40.0), completed: false, ..pod(1, "a", 2.0, 20.0, 0.0) },
    ];
    let a = account(&nodes, &pods, &[5.0, 0.0], &m, 0.0, 100.0);
    assert_eq!((a.interrupted, a.lost_attempts), (1, 1));
    assert!(a.idle_after_max_s.is_nan());
    // The lost attempt's run counts as work (it held the room); nothing after its end.
    assert_eq!(a.split.after_last_pod, 0.0);
    assert!((a.split.total() - a.cost).abs() < 1e-9);

    // A node that never ran a pod: all of it before a first pod.
    let a = account(&[node("b", "c6i.large", 0.0, Some(50.0))], &[], &[], &m, 0.0, 50.0);
    assert!((a.split.before_first_pod - a.cost).abs() < 1e-12 && a.split.work == 0.0);
}

#[test]
fn trace() {
    let a = trace::generate(7, 2000, 300.0);
    assert_eq!(a, trace::generate(7, 2000, 300.0));
    assert_ne!(a, trace::generate(8, 2000, 300.0));
    assert!(a.windows(2).all(|w| w[0].at_s <= w[1].at_s));
    assert!(a.iter().all(|j| (0.5..=32.0).contains(&j.vcpus) && (5..=120).contains(&j.duration_s)));
    let gpus = a.iter().filter(|j| j.gpus > 0).count();
    assert!((20..120).contains(&gpus), "{gpus}");
    let high = a.iter().filter(|j| j.high).count();
    assert!((450..750).contains(&high), "{high}");
    let r = a.iter().filter(|j| j.gpus == 0 && j.memory_mib as f64 > j.vcpus * 6.0 * 1024.0).count();
    assert!((250..550).contains(&r), "r-family jobs: {r}");
    let ((c, m), (gc, gm, g)) = trace::demand_by_kind(&a);
    let (all_c, all_m) = trace::demand(&a);
    assert!((c + gc - all_c).abs() < 1e-6 && (m + gm - all_m).abs() < 1e-6);
    let gpu_s: f64 = a.iter().filter(|j| j.gpus > 0).map(|j| j.duration_s as f64).sum();
    assert_eq!(g, gpu_s);
    let (cpu, mem) = trace::demand(&a[..1]);
    assert_eq!(cpu, a[0].vcpus * a[0].duration_s as f64);
    assert!(mem > 0.0);
}

#[test]
fn a_burst_of_the_trace_s_jobs_is_packed_close_to_its_lower_bound() {
    use barge::capacity::{Fleet, Need, Strategy, plan_scale_up};
    use barge::resources::Res;
    // What the packer launches for a burst of the trace's CPU jobs, per hour, against
    // their lower bound per hour: a guard on the packing, and the ceiling any run of the
    // benchmark starts from. Kubelet's reserve means a job of 2^k vCPUs never fills a
    // 2^k-vCPU instance, and no one family is the cheapest both per vCPU (c6i) and per
    // GiB (r6i), so a perfect packing is still above the bound.
    let types = types_of(&["m6i", "c6i", "r6i"]);
    let fleet = Fleet { total_vcpus: 0, min_vcpus: 0, max_vcpus: 100_000 };
    let over_bound = |burst: usize, strategy: Strategy| {
        const SEEDS: u64 = 40;
        (0..SEEDS)
            .map(|seed| {
                let jobs: Vec<_> =
                    trace::generate(seed, burst, 100.0).into_iter().filter(|j| j.gpus == 0).collect();
                let demand: Vec<Need> = jobs
                    .iter()
                    .map(|j| Need::shared(Res::new((j.vcpus * 1000.0) as u64, j.memory_mib, 0)))
                    .collect();
                let plan = plan_scale_up(&demand, &types, strategy, &fleet);
                assert_eq!(plan.unplaced, 0);
                let price: f64 = plan.launch.iter().map(|t| t.price).sum();
                let vcpus: f64 = jobs.iter().map(|j| j.vcpus).sum();
                let gib: f64 = jobs.iter().map(|j| j.memory_gib()).sum();
                // Both per hour: the launch's price, and the jobs' bound over an hour.
                price / lower_bound(vcpus * 3600.0, gib * 3600.0, &types, None)
            })
            .sum::<f64>()
            / SEEDS as f64
    };
    let (one, burst, large) =
        (over_bound(1, Strategy::Mixed), over_bound(32, Strategy::Mixed), over_bound(200, Strategy::Mixed));
    // One job alone: its instance is about twice its size (2.16 when measured).
    assert!(one > 1.8 && one < 2.4, "{one}");
    // Measured 1.20 for 32 jobs and 1.16 for 200.
    assert!(burst < 1.25, "{burst}");
    assert!(large < 1.2 && large > 1.1, "{large}");
    // One type for the whole launch (BEST_FIT) packs worse: 1.34 and 1.20 when measured.
    let single = over_bound(32, Strategy::SingleType);
    assert!(single > burst && single < 1.4, "{single} against {burst}");
}

/// The median over seeds 1 to 20 of the default trace (240 jobs over 180 s) of cost ÷ the
/// lower bound, replayed by `model` under `policy`.
fn modelled(placement: model::Placement, scale_down_delay_s: f64) -> f64 {
    use barge::capacity::Strategy;
    let types = types_of(&["m6i", "c6i", "r6i"]);
    let policy = model::Policy { strategy: Strategy::Mixed, placement, scale_down_delay_s };
    let mut ratios: Vec<f64> = (1..=20u64)
        .map(|seed| {
            let o = model::replay(&trace::generate(seed, 240, 180.0), &types, policy);
            assert!(o.provisioned_over_requested > 1.0 && o.nodes > 0, "{o:?}");
            o.cost / o.lower_bound
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

#[test]
fn placing_jobs_on_the_fullest_node_costs_less_than_spreading_them() {
    // Measured: 2.70 against 3.39 × the lower bound.
    let (best, worst) =
        (modelled(model::Placement::BestFit, 30.0), modelled(model::Placement::WorstFit, 30.0));
    assert!(best < worst * 0.9, "best fit {best:.2}, worst fit {worst:.2}");
}

#[test]
fn without_knowing_durations_or_moving_jobs_the_trace_costs_far_above_its_lower_bound() {
    // Even with no scale-down delay at all, nodes packed with jobs of 5 s to 2 min stay up
    // for their longest job: measured 2.15 × the lower bound (2.70 with a 30-s delay). An
    // oracle placing each job beside the jobs that end when it does buys little (2.66):
    // what strands room is the launch, when a burst's short and long jobs share nodes.
    let no_delay = modelled(model::Placement::BestFit, 0.0);
    let delayed = modelled(model::Placement::BestFit, 30.0);
    let oracle = modelled(model::Placement::NearestEnd, 30.0);
    assert!(no_delay > 1.6 && no_delay < delayed, "{no_delay:.2} against {delayed:.2}");
    assert!(oracle > delayed * 0.85, "{oracle:.2} against {delayed:.2}");
}
