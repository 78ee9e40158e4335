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
            .map(|(i, (v, ready))| NodeInfo { name: format!("{name}-n{i}"), free: res(*v), ready: *ready })
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
    };
    let p = plan(&s);
    assert_eq!(names(&s, &p), vec!["b", "c"]);
}

#[test]
fn jobs_of_the_same_moment_keep_one_order_and_children_go_by_index() {
    let child = |i: u32| PendingJob { index: Some(i), ..job("arr", "q", 0, 7, 1) };
    let jobs = vec![child(3), job("x", "q", 0, 7, 1), child(0), job("y", "q", 0, 7, 1), child(2), child(1)];
    let order = |jobs: Vec<PendingJob>| {
        let s = Snapshot {
            jobs,
            queues: vec![queue("q", 1, &["ce"])],
            compute_environments: vec![ce("ce", 8, &[(8, true)])],
        };
        let p = plan(&s);
        p.admitted.iter().map(|a| (s.jobs[a.job].name.to_string(), s.jobs[a.job].index)).collect::<Vec<_>>()
    };
    let first = order(jobs.clone());
    let children: Vec<Option<u32>> = first.iter().filter(|(n, _)| n == "arr").map(|(_, i)| *i).collect();
    assert_eq!(children, [Some(0), Some(1), Some(2), Some(3)]);
    assert_eq!(order(jobs.into_iter().rev().collect()), first, "the order does not depend on the input's");
}

#[test]
fn disabled_queue_admits_nothing_and_says_so() {
    let mut q = queue("q", 1, &["ce"]);
    q.enabled = false;
    let s = Snapshot {
        jobs: vec![job("a", "q", 0, 1, 1)],
        queues: vec![q],
        compute_environments: vec![ce("ce", 8, &[(8, true)])],
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
    };
    let p = plan(&s);
    let why = reason_of(&s, &p, "huge");
    assert!(why.is_misconfiguration());
    assert!(why.to_string().starts_with("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job needs 64 vCPU"));
    assert!(p.demand.is_empty());
}

#[test]
fn a_job_over_max_vcpus_is_a_misconfiguration_too() {
    let s = Snapshot {
        jobs: vec![job("wide", "q", 0, 1, 8)],
        queues: vec![queue("q", 1, &["ce"])],
        compute_environments: vec![ce("ce", 4, &[])],
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
    let s = Snapshot { jobs, queues: vec![queue("q", 1, &["own"])], compute_environments: vec![unmanaged] };
    let p = plan(&s);
    assert_eq!(p.admitted.len(), 4, "2 vCPUs held + 4 admitted = maxvCpus 6, with 16 free on the nodes");
    assert!(p.demand.is_empty(), "no demand: nothing is ever launched");
    assert!(matches!(reason_of(&s, &p, "j4"), Waiting::AtMaxCapacity { .. }), "{}", reason_of(&s, &p, "j4"));

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
    let s = Snapshot { jobs, queues: vec![q], compute_environments: vec![ce("ce", 12, &[(12, true)])] };
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
    let s = Snapshot { jobs, queues: vec![q], compute_environments: vec![ce("ce", 1, &[(1, true)])] };
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
    let s = Snapshot { jobs, queues: vec![q], compute_environments: vec![ce("ce", 8, &[(8, true)])] };
    let p = plan(&s);
    assert_eq!(p.admitted.len(), 4);
    assert!(reason_of(&s, &p, "a7").to_string().contains("keeps 4 vCPUs free for fair-share identifiers"));
}

#[test]
fn an_environment_out_of_instance_capacity_passes_demand_to_the_next_and_says_why() {
    let mut spot = ce("spot", 16, &[]);
    spot.cannot_grow = Some("InsufficientInstanceCapacity (c6i.xlarge Spot)".into());
    let s = Snapshot {
        jobs: vec![job("a", "q", 0, 1, 2), job("b", "only-spot", 0, 2, 2)],
        queues: vec![queue("q", 1, &["spot", "ondemand"]), queue("only-spot", 1, &["spot"])],
        compute_environments: vec![spot, ce("ondemand", 16, &[])],
    };
    let p = plan(&s);
    assert_eq!(p.demand.get("ondemand").map(Vec::len), Some(1));
    assert!(!p.demand.contains_key("spot"));
    let why = reason_of(&s, &p, "b").to_string();
    assert!(why.starts_with("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - compute environment spot"), "{why}");
    assert!(why.contains("c6i.xlarge Spot"), "{why}");
}
