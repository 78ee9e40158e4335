//! Properties of the capacity plans over random demand, fleets and nodes: scale-up never
//! takes a fleet above `maxvCpus`, packs each job onto an instance that holds it and gives
//! a multi-node job's node an instance of its own;
//! scale-down never removes a node that runs a Barge pod or has not been idle long enough.

use proptest::prelude::{Just, ProptestConfig, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest};
use proptest::strategy::Strategy as Generator;

use super::catalog::resolve;
use super::*;

fn families() -> impl Generator<Value = Vec<String>> {
    prop::sample::subsequence(vec!["m6i", "c6i", "r6i", "g5", "m6i.large", "c7i.xlarge"], 1..=3)
        .prop_map(|v| v.into_iter().map(str::to_string).collect())
}

fn demand() -> impl Generator<Value = Vec<Need>> {
    let item =
        (1u64..=64, 0u64..=128, prop_oneof![9 => Just(0u32), 1 => 1u32..=2], prop::bool::weighted(0.2))
            .prop_map(|(half_vcpus, gib, gpus, own)| Need {
                request: Res::new(half_vcpus * 500, gib * 1024, gpus),
                own_instance: own,
            });
    prop::collection::vec(item, 0..=60)
}

fn fleet() -> impl Generator<Value = Fleet> {
    (0u32..=256, 0u32..=128, 1u32..=256).prop_map(|(total, min, max)| Fleet {
        total_vcpus: total.min(max),
        min_vcpus: min.min(max),
        max_vcpus: max,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn scale_up_never_passes_max_vcpus_and_packs_each_job_onto_room_for_it(
        names in families(), demand in demand(), fleet in fleet(), mixed in any::<bool>(),
    ) {
        let (types, _) = resolve(&names);
        let strategy = if mixed { Strategy::Mixed } else { Strategy::SingleType };
        let plan = plan_scale_up(&demand, &types, strategy, &fleet);
        prop_assert!(
            fleet.total_vcpus + plan.vcpus() <= fleet.max_vcpus,
            "{} running + {} launched > maxvCpus {}", fleet.total_vcpus, plan.vcpus(), fleet.max_vcpus
        );
        prop_assert_eq!(plan.launch.len(), plan.packed.len());
        for (t, packed) in plan.launch.iter().zip(&plan.packed) {
            prop_assert!(types.iter().any(|x| x.name == t.name), "{} is not an allowed type", t.name);
            prop_assert!(t.allocatable().fits(packed), "{} cannot hold {packed}", t.name);
        }
        prop_assert!(plan.unplaced <= demand.len());
        // Every multi-node job's node placed has an instance of its own: at least as many
        // instances are launched for demand as such nodes are placed.
        let own = demand.iter().filter(|n| n.own_instance).count();
        let for_demand = plan.packed.iter().filter(|p| **p != Res::ZERO).count();
        prop_assert!(for_demand >= own.saturating_sub(plan.unplaced), "{plan:?}");
    }

    #[test]
    fn scale_down_removes_only_nodes_idle_past_the_delay(
        nodes in prop::collection::vec((2u32..=64, prop::option::of(0u64..=600), prop::bool::weighted(0.2)), 0..=12),
        min_vcpus in 0u32..=96,
        delay in 0u64..=300,
    ) {
        let nodes: Vec<NodeUse> = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (vcpus, idle_seconds, interrupted))| NodeUse { name: format!("n{i}"), vcpus, idle_seconds, interrupted })
            .collect();
        let gone = plan_scale_down(&nodes, min_vcpus, delay, 2);
        for name in &gone {
            let n = nodes.iter().find(|n| &n.name == name).expect("a node it was given");
            // Never a node with a running Barge pod; an interrupted node as soon as it is idle.
            prop_assert!(
                n.idle_seconds.is_some_and(|s| s >= delay || n.interrupted),
                "{name} is busy or idle only {:?}", n.idle_seconds
            );
        }
        let mut unique = gone.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), gone.len(), "a node removed twice");
        for n in nodes.iter().filter(|n| n.interrupted && n.idle_seconds.is_some()) {
            prop_assert!(gone.contains(&n.name), "idle interrupted {} kept", n.name);
        }
    }
}
