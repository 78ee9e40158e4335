//! Properties of `plan` over random queues, environments and jobs: it never admits more
//! than a node has free, never admits a job twice, admits only where the job's queue allows,
//! keeps a queue's order, and gives every job it does not admit a reason.

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
                shapes: vec![Res::new(2000, 8192, 0), Res::new(8000, 32768, 0), Res::new(16000, 65536, 1)],
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
    (0i32..=3, prop::bool::weighted(0.85), ces, fair).prop_map(move |(priority, enabled, ces, fair_share)| {
        QueueInfo {
            name: name.into(),
            priority,
            enabled,
            compute_environments: ces.into_iter().map(str::to_string).collect(),
            fair_share,
        }
    })
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
