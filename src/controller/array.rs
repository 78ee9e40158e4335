//! Array jobs: each child index runs as its own pods (one per attempt); the parent's status
//! rolls the children up into counts, index ranges and detail for failed children only.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use kube::{Resource, ResourceExt};

use super::facts::{Deps, Limits, PodFacts, TIMEOUT_REASON, failure_reason};
use crate::api::batch_job::{
    ArrayStatus, Attempt, BatchJob, BatchJobStatus, DependencyType, JobPhase, child_pod_name,
};
use crate::scheduler::ranges;
use crate::state::Verdict;

/// Where each child stands, decoded from the parent's status.
pub struct Children {
    pub succeeded: BTreeSet<u32>,
    pub failed: BTreeSet<u32>,
    pub started: BTreeSet<u32>,
    pub status: ArrayStatus,
}

impl Children {
    pub fn of(job: &BatchJob) -> Children {
        let size = job.spec.array.as_ref().map_or(0, |a| a.size);
        let status = job
            .status
            .as_ref()
            .and_then(|s| s.array.as_deref().cloned())
            .unwrap_or(ArrayStatus { size, ..Default::default() });
        Children {
            succeeded: ranges::decode(&status.succeeded_indexes),
            failed: ranges::decode(&status.failed_indexes),
            started: ranges::decode(&status.started_indexes),
            status,
        }
    }

    /// The attempt child `index` is on.
    pub fn attempt(&self, index: u32) -> u32 {
        self.status.failed_attempts.get(&index.to_string()).map_or(0, |a| a.len() as u32)
    }

    pub fn is_finished(&self, index: u32) -> bool {
        self.succeeded.contains(&index) || self.failed.contains(&index)
    }

    /// Children that wait for a pod: not finished and not started.
    pub fn waiting(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.status.size).filter(|i| !self.is_finished(*i) && !self.started.contains(i))
    }
}

/// Whether a child may start, per its array dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildGate {
    Ready,
    Wait,
    Fail(String),
}

/// Child-level dependencies of an array: SEQUENTIAL (index order within the array) and
/// N_TO_N (child i after child i of another array of the same size).
#[derive(Default)]
pub struct Gates {
    sequential: Option<(String, BTreeSet<u32>, BTreeSet<u32>)>,
    n_to_n: Vec<(String, BTreeSet<u32>, BTreeSet<u32>)>,
    /// A dependency that cannot be N_TO_N: the whole array fails with this.
    pub broken: Option<String>,
}

impl Gates {
    /// `lookup` finds a job of the same namespace by name.
    pub fn of(job: &BatchJob, lookup: impl Fn(&str) -> Option<std::sync::Arc<BatchJob>>) -> Gates {
        let mut g = Gates::default();
        let size = job.spec.array.as_ref().map_or(0, |a| a.size);
        for d in &job.spec.depends_on {
            match d.type_ {
                Some(DependencyType::Sequential) => {
                    let c = Children::of(job);
                    g.sequential = Some((job.name_any(), c.succeeded, c.failed));
                }
                Some(DependencyType::NToN) => match lookup(&d.job_name) {
                    Some(dep) if dep.spec.array.as_ref().map(|a| a.size) == Some(size) => {
                        let c = Children::of(&dep);
                        g.n_to_n.push((d.job_name.clone(), c.succeeded, c.failed));
                    }
                    Some(_) => {
                        g.broken = Some(format!(
                            "N_TO_N dependency {} must be an array job of the same size ({size})",
                            d.job_name
                        ))
                    }
                    None => g.n_to_n.push((d.job_name.clone(), BTreeSet::new(), BTreeSet::new())),
                },
                None => {}
            }
        }
        g
    }

    pub fn gate(&self, i: u32) -> ChildGate {
        if let Some((name, ok, failed)) = &self.sequential
            && i > 0
        {
            if failed.contains(&(i - 1)) {
                return ChildGate::Fail(format!("Dependent job {name}[{}] failed", i - 1));
            }
            if !ok.contains(&(i - 1)) {
                return ChildGate::Wait;
            }
        }
        for (name, ok, failed) in &self.n_to_n {
            if failed.contains(&i) {
                return ChildGate::Fail(format!("Dependent job {name}[{i}] failed"));
            }
            if !ok.contains(&i) {
                return ChildGate::Wait;
            }
        }
        ChildGate::Ready
    }
}

/// How many children are in each unfinished phase.
struct Counts {
    runnable: u32,
    pending: u32,
    starting: u32,
    running: u32,
}

/// Looks at each unfinished child's pod: records what finished or failed (retrying what
/// may be retried) in `c`, and the child pods to stop in `stop`; counts the rest.
#[allow(clippy::too_many_arguments)]
fn roll_children(
    job: &BatchJob,
    c: &mut Children,
    limits: &Limits<'_>,
    gates: &Gates,
    pod_of: &impl Fn(u32, u32) -> Option<PodFacts>,
    s: &mut BatchJobStatus,
    stop: &mut Vec<(u32, u32)>,
    now: DateTime<Utc>,
) -> Counts {
    let retry = limits.retry;
    let timeout = limits.timeout.map(|t| t.attempt_duration_seconds as i64);
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let log_name = limits.log_prefix.map_or_else(|| job.log_name(), str::to_string);
    let stopping = job.spec.terminate.as_ref().map(|t| format!("Terminated: {}", t.reason));
    let cancelling = job.spec.cancel.as_ref().map(|t| format!("Cancelled: {}", t.reason));
    let (mut runnable, mut pending, mut starting, mut running) = (0, 0, 0, 0);
    for i in 0..c.status.size {
        if c.is_finished(i) {
            continue;
        }
        let attempt = c.attempt(i);
        let pod = pod_of(i, attempt);
        let fail = |c: &mut Children,
                    reason: String,
                    exit: Option<i32>,
                    container: Option<&str>,
                    retryable: bool,
                    node: Option<String>| {
            let key = i.to_string();
            let history = c.status.failed_attempts.entry(key).or_default();
            let pod_name = child_pod_name(&name, &uid, i, attempt);
            history.push(Attempt {
                log_stream_name: Some(crate::archive::stream_name(
                    &log_name,
                    crate::archive::MAIN_CONTAINER,
                    &pod_name,
                )),
                pod_name,
                node_name: node,
                started_at: None,
                stopped_at: Some(now),
                exit_code: exit,
                reason: Some(reason.clone()),
                ..Default::default()
            });
            c.started.remove(&i);
            let done = history.len() as u32;
            if !(retryable && retry.wants_retry(exit, container, &reason) && done < retry.attempts.max(1)) {
                c.failed.insert(i);
            }
        };
        if let Some(why) = &stopping {
            if pod.as_ref().is_some_and(|p| p.phase == "Running" || p.phase == "Pending") {
                stop.push((i, attempt));
            }
            fail(c, why.clone(), None, None, false, None);
            continue;
        }
        match pod {
            None if c.started.contains(&i) => {
                fail(
                    c,
                    format!("Host terminated (pod {} disappeared)", child_pod_name(&name, &uid, i, attempt)),
                    None,
                    None,
                    true,
                    None,
                );
            }
            None => match (&cancelling, gates.gate(i)) {
                (Some(why), _) => fail(c, why.clone(), None, None, false, None),
                (None, ChildGate::Fail(why)) => fail(c, why, None, None, false, None),
                (None, ChildGate::Wait) => pending += 1,
                (None, ChildGate::Ready) => runnable += 1,
            },
            // Its node refused the pod before it ran: the child waits for a node again.
            Some(p) if p.refused.is_some() => {
                c.started.remove(&i);
                stop.push((i, attempt));
                runnable += 1;
            }
            Some(p) => match (p.phase.as_str(), &p.node) {
                ("Pending", None) => runnable += 1,
                ("Pending", node @ Some(_)) => {
                    // A child whose Secret is missing fails after the grace, as a job does.
                    let blocked = p.blocked.as_ref().filter(|b| b.config);
                    let waited = p.created_at.map_or(chrono::Duration::zero(), |c| now - c);
                    match blocked {
                        Some(b) if waited >= super::revisions::MISSING_GRACE => {
                            stop.push((i, attempt));
                            let why = format!("{}: {}", b.reason, b.message);
                            fail(c, why, None, Some(&b.reason), false, node.clone());
                        }
                        _ => {
                            starting += 1;
                            c.started.insert(i);
                        }
                    }
                }
                ("Running", node) => {
                    c.started.insert(i);
                    let started = p.started_at.unwrap_or(now);
                    s.started_at.get_or_insert(started);
                    if timeout.is_some_and(|t| (now - started).num_seconds() >= t) {
                        stop.push((i, attempt));
                        fail(c, TIMEOUT_REASON.into(), None, None, false, node.clone());
                    } else {
                        running += 1;
                    }
                }
                ("Succeeded", _) => {
                    c.started.remove(&i);
                    c.succeeded.insert(i);
                    s.started_at = s.started_at.or(p.started_at);
                }
                ("Failed", node) => {
                    let why = failure_reason(p.exit_code, p.reason.as_deref());
                    fail(c, why, p.exit_code, p.reason.as_deref(), true, node.clone());
                }
                _ => runnable += 1,
            },
        }
    }

    Counts { runnable, pending, starting, running }
}

/// The parent's next status and the child pods (index, attempt) to stop.
pub fn next_status(
    job: &BatchJob,
    limits: &Limits<'_>,
    deps: &Deps,
    gates: &Gates,
    pod_of: impl Fn(u32, u32) -> Option<PodFacts>,
    verdict: Option<&Verdict>,
    now: DateTime<Utc>,
) -> (BatchJobStatus, Vec<(u32, u32)>) {
    let mut s = job.status.clone().unwrap_or_default();
    if s.phase.is_finished() {
        return (s, Vec::new());
    }
    s.created_at.get_or_insert(now);
    s.observed_generation = job.meta().generation;
    let mut c = Children::of(job);
    let mut stop = Vec::new();

    if c.succeeded.is_empty() && c.failed.is_empty() && c.started.is_empty() && deps.hold(&mut s, now) {
        return (s, stop);
    }
    if let Some(why) = &gates.broken {
        s.phase = JobPhase::Failed;
        s.stopped_at = Some(now);
        s.status_reason = Some(why.clone());
        return (s, stop);
    }
    let counts = roll_children(job, &mut c, limits, gates, &pod_of, &mut s, &mut stop, now);
    let Counts { runnable, pending, starting, running } = counts;
    let stopping = job.spec.terminate.as_ref().map(|t| format!("Terminated: {}", t.reason));
    let size = c.status.size;
    let finished = (c.succeeded.len() + c.failed.len()) as u32;
    // Children still retrying keep their history; finished ones keep it only if they failed.
    let succeeded = c.succeeded.clone();
    c.status.failed_attempts.retain(|k, _| k.parse::<u32>().is_ok_and(|i| !succeeded.contains(&i)));
    c.status = ArrayStatus {
        size,
        progress: format!("{finished}/{size}"),
        runnable,
        pending,
        starting,
        running,
        succeeded: c.succeeded.len() as u32,
        failed: c.failed.len() as u32,
        succeeded_indexes: ranges::encode(&c.succeeded),
        failed_indexes: ranges::encode(&c.failed),
        started_indexes: ranges::encode(&c.started),
        failed_attempts: std::mem::take(&mut c.status.failed_attempts),
    };
    let failed_list = c.status.failed_indexes.clone();
    s.array = Some(Box::new(c.status));
    if finished == size {
        s.stopped_at = Some(now);
        if c.failed.is_empty() {
            s.phase = JobPhase::Succeeded;
            s.status_reason = Some(format!("All {size} child jobs succeeded"));
        } else {
            s.phase = JobPhase::Failed;
            s.status_reason = Some(match &stopping {
                Some(why) => why.clone(),
                None => format!("{} of {size} child jobs failed (indexes {failed_list})", c.failed.len()),
            });
        }
    } else if running > 0 {
        s.phase = JobPhase::Running;
        s.status_reason = Some(format!("{running} child jobs running, {finished} of {size} finished"));
    } else if starting > 0 {
        s.phase = JobPhase::Starting;
        s.status_reason = Some(format!("{starting} child jobs starting"));
    } else if runnable == 0 && pending > 0 {
        s.phase = JobPhase::Pending;
        s.status_reason = Some(format!("{pending} child jobs wait for their dependencies"));
    } else if let Some(Verdict::Rejected(why)) = verdict {
        // The children's pods are refused as they are: none of them can ever run.
        s.phase = JobPhase::Failed;
        s.stopped_at = Some(now);
        s.status_reason = Some(why.to_string());
    } else {
        if s.phase != JobPhase::Runnable {
            s.runnable_at = Some(now);
        }
        s.phase = JobPhase::Runnable;
        s.status_reason = Some(match verdict {
            Some(Verdict::Admitted { compute_environment }) => {
                format!("Child jobs admitted to compute environment {compute_environment}")
            }
            Some(v) => v.reason().map(|r| r.to_string()).unwrap_or_default(),
            None => "Waiting for the scheduler".into(),
        });
    }
    (s, stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::job_definition::work;
    use crate::controller::fixtures;

    /// The roll-up of an array that names no definition: its limits are its own.
    fn next_status(
        job: &BatchJob,
        deps: &Deps,
        gates: &Gates,
        pod_of: impl Fn(u32, u32) -> Option<PodFacts>,
        verdict: Option<&Verdict>,
        now: DateTime<Utc>,
    ) -> (BatchJobStatus, Vec<(u32, u32)>) {
        let work = work(&job.spec, None).unwrap();
        super::next_status(job, &Limits::of(Some(&work)), deps, gates, pod_of, verdict, now)
    }

    fn array(size: u32, attempts: u32) -> BatchJob {
        fixtures::job("arr").uid("abcdef12").array(size).retry(attempts).build()
    }

    fn facts(phase: &str, exit: Option<i32>) -> PodFacts {
        PodFacts { node: Some("n".into()), phase: phase.into(), exit_code: exit, ..Default::default() }
    }

    #[test]
    fn children_roll_up_into_counts_ranges_and_progress() {
        let j = array(10, 1);
        let (s, _) = next_status(
            &j,
            &Deps::Met,
            &Gates::default(),
            |i, _| match i {
                0..=6 => Some(facts("Succeeded", Some(0))),
                7 => Some(facts("Running", None)),
                _ => None,
            },
            None,
            Utc::now(),
        );
        let a = s.array.unwrap();
        assert_eq!((a.succeeded, a.running, a.runnable), (7, 1, 2));
        assert_eq!(a.succeeded_indexes, "0-6");
        assert_eq!(a.progress, "7/10");
        assert_eq!(s.phase, JobPhase::Running);
    }

    #[test]
    fn an_array_whose_child_pods_the_cluster_refuses_for_good_fails_with_the_refusal() {
        let why = "The cluster refused the job's pod arr-abcdef12-0-1: violates PodSecurity";
        let verdict = Verdict::Rejected(why.into());
        let (s, stop) =
            next_status(&array(4, 3), &Deps::Met, &Gates::default(), |_, _| None, Some(&verdict), Utc::now());
        assert_eq!(s.phase, JobPhase::Failed);
        assert_eq!(s.status_reason.as_deref(), Some(why));
        assert!(stop.is_empty());
    }

    #[test]
    fn a_child_whose_node_refused_its_pod_waits_again_without_using_an_attempt() {
        let j = array(2, 1);
        let refused =
            PodFacts { refused: Some("node n refused the pod (OutOfcpu)".into()), ..facts("Failed", None) };
        let (s, stop) = next_status(
            &j,
            &Deps::Met,
            &Gates::default(),
            |i, _| Some(if i == 0 { refused.clone() } else { facts("Running", None) }),
            None,
            Utc::now(),
        );
        let a = s.array.as_ref().unwrap();
        assert_eq!((a.runnable, a.running, a.failed), (1, 1, 0));
        assert!(a.failed_attempts.is_empty(), "no attempt was used");
        assert_eq!(a.started_indexes, "1");
        assert_eq!(stop, vec![(0, 0)], "the refused pod is removed to be created again");
    }

    #[test]
    fn a_failed_child_is_retried_then_fails_the_parent_when_all_are_done() {
        let mut j = array(3, 2);
        let (s, _) = next_status(
            &j,
            &Deps::Met,
            &Gates::default(),
            |i, _| Some(if i == 1 { facts("Failed", Some(3)) } else { facts("Succeeded", Some(0)) }),
            None,
            Utc::now(),
        );
        assert_eq!(s.array.as_ref().unwrap().failed_attempts["1"].len(), 1);
        assert_eq!(s.phase, JobPhase::Runnable, "child 1 retries");
        j.status = Some(s);
        let (s, _) = next_status(
            &j,
            &Deps::Met,
            &Gates::default(),
            |i, a| {
                Some(if i == 1 && a == 1 { facts("Failed", Some(3)) } else { facts("Succeeded", Some(0)) })
            },
            None,
            Utc::now(),
        );
        assert_eq!(s.phase, JobPhase::Failed);
        let a = s.array.unwrap();
        assert_eq!(a.failed_indexes, "1");
        assert_eq!(a.failed_attempts["1"].len(), 2);
        assert_eq!(s.status_reason.as_deref(), Some("1 of 3 child jobs failed (indexes 1)"));
    }

    #[test]
    fn ten_thousand_children_keep_the_status_small() {
        let j = array(10_000, 3);
        let (s, _) = next_status(
            &j,
            &Deps::Met,
            &Gates::default(),
            |i, _| Some(if i % 1000 == 7 { facts("Failed", Some(1)) } else { facts("Succeeded", Some(0)) }),
            None,
            Utc::now(),
        );
        let bytes = serde_json::to_vec(&s).unwrap().len();
        assert!(bytes < 100 * 1024, "{bytes} bytes");
    }
}
