//! BatchJob lifecycle: turns what happened to the job's current pod, and the scheduling
//! pass's verdict, into phase, attempts and reasons; applies retries and timeouts. It is
//! the only writer of BatchJob status, and never admits a job.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::context::Shared;
pub use super::facts::{Deps, Limits, PodFacts, TIMEOUT_REASON, current_attempt, failure_reason};
use super::revisions::{self, Resolution};
use crate::api::batch_job::{
    Attempt, BatchJob, BatchJobStatus, JobPhase, RetryStrategy, child_pod_name, node_pod_name, pod_name,
};
use crate::api::job_definition::work;
use crate::k8s::apply_status;
use crate::state::Verdict;
use crate::{Error, Result};

/// How long a new pod may wait for kube-scheduler, or its container take to start, before
/// the job's status says so. Most pods pass both steps within a second or two; a status
/// write for each costs the API server more than the pod's own create, so a step is written
/// only if it lasts (or as part of the write of whatever comes next).
pub const PASSING_STEP: Duration = Duration::from_secs(3);

/// How long a container runs before its job's status says RUNNING. A job that ends sooner
/// gets one write, its end, instead of two a moment apart; a longer one is seen RUNNING
/// from this long after its start (its `startedAt` is the container's own).
pub const RUNNING_SHOWN_AFTER: Duration = Duration::from_secs(2);

/// Whether a status write only records a step a job passes on its way, and when to write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passing {
    /// Not a passing step: written at once.
    No,
    /// A step a new pod usually passes in a moment, not written yet: look again after this.
    Wait(Duration),
    /// A step that lasted, or one that needs no window: written when the step-write budget
    /// allows (`steps`).
    Due,
}

impl Passing {
    fn wait(self) -> Option<Duration> {
        match self {
            Passing::Wait(left) => Some(left),
            _ => None,
        }
    }
}

/// When `new` differs from `old` only by a step on the job's way to running: RUNNABLE before
/// the scheduling pass placed it (or while its pod is being created), placed by
/// kube-scheduler, its container starting, a short container running. A step the pod is stuck
/// in (kube-scheduler says why it cannot place it) is never passing, nor is a write that fixes
/// the job definition's revision (the pass waits for it), a failed attempt, or an end.
pub fn passing_step(
    old: &BatchJobStatus,
    new: &BatchJobStatus,
    pod: Option<&PodFacts>,
    verdict: Option<&Verdict>,
    now: DateTime<Utc>,
) -> Passing {
    if old == new || old.job_definition != new.job_definition || old.attempt_count > new.attempt_count {
        return Passing::No;
    }
    let not_started = |p: JobPhase| matches!(p, JobPhase::Submitted | JobPhase::Pending | JobPhase::Runnable);
    let Some(pod) = pod else {
        let placing = matches!(verdict, None | Some(Verdict::Admitted { .. }));
        let same_attempts = old.attempts.len() == new.attempts.len();
        return match (old.phase, new.phase) {
            (JobPhase::Submitted | JobPhase::Runnable, JobPhase::Runnable) if placing && same_attempts => {
                Passing::Due
            }
            _ => Passing::No,
        };
    };
    let (since, window) = match (pod.phase.as_str(), new.phase) {
        ("Pending", JobPhase::Starting) if not_started(old.phase) => (pod.created_at, PASSING_STEP),
        ("Pending", JobPhase::Runnable) if not_started(old.phase) && pod.node.is_none() => {
            (pod.created_at, PASSING_STEP)
        }
        ("Running", JobPhase::Running) if not_started(old.phase) || old.phase == JobPhase::Starting => {
            (pod.started_at, RUNNING_SHOWN_AFTER)
        }
        _ => return Passing::No,
    };
    if pod.unschedulable.is_some() {
        return Passing::No;
    }
    let Some(since) = since else { return Passing::Due };
    let age = (now - since).to_std().unwrap_or_default();
    match window.checked_sub(age).filter(|left| !left.is_zero()) {
        Some(left) => Passing::Wait(left),
        None => Passing::Due,
    }
}

/// The status of a job whose job definition is not resolved: SUBMITTED while it may yet
/// be, FAILED when it cannot be. A user's stop request ends it either way.
pub fn unresolved_status(job: &BatchJob, resolution: &Resolution, now: DateTime<Utc>) -> BatchJobStatus {
    let mut s = job.status.clone().unwrap_or_default();
    if s.phase.is_finished() {
        return s;
    }
    s.created_at.get_or_insert(now);
    s.observed_generation = job.meta().generation;
    let stop = job.spec.terminate.as_ref().map(|t| format!("Terminated: {}", t.reason));
    let stop = stop.or_else(|| job.spec.cancel.as_ref().map(|c| format!("Cancelled: {}", c.reason)));
    match (stop.as_ref(), resolution) {
        (Some(why), _) | (None, Resolution::Failed(why)) => {
            s.phase = JobPhase::Failed;
            s.stopped_at = Some(now);
            s.status_reason = Some(why.clone());
        }
        (None, Resolution::Waiting(why)) => {
            s.phase = JobPhase::Submitted;
            s.status_reason = Some(why.clone());
        }
        (None, Resolution::NotUsed | Resolution::Pinned(..)) => {}
    }
    s
}

/// What the job's status should become. Pure: everything it needs is passed in.
pub fn next_status(
    job: &BatchJob,
    limits: &Limits<'_>,
    deps: &Deps,
    pod: Option<&PodFacts>,
    verdict: Option<&Verdict>,
    now: DateTime<Utc>,
) -> BatchJobStatus {
    let mut s = advance(job, limits, deps, pod, verdict, now);
    // Each attempt says where its output is archived, as AWS Batch's do.
    if s.attempts.iter().any(|a| a.log_stream_name.is_none()) {
        let name = limits.log_prefix.map_or_else(|| job.log_name(), str::to_string);
        for a in s.attempts.iter_mut().filter(|a| a.log_stream_name.is_none()) {
            a.log_stream_name =
                Some(crate::archive::stream_name(&name, crate::archive::MAIN_CONTAINER, &a.pod_name));
        }
    }
    s
}

fn advance(
    job: &BatchJob,
    limits: &Limits<'_>,
    deps: &Deps,
    pod: Option<&PodFacts>,
    verdict: Option<&Verdict>,
    now: DateTime<Utc>,
) -> BatchJobStatus {
    let mut s = job.status.clone().unwrap_or_default();
    if s.phase.is_finished() {
        return s;
    }
    s.created_at.get_or_insert_with(|| {
        job.meta()
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()))
            .unwrap_or(now)
    });
    s.observed_generation = job.meta().generation;
    let attempt = current_attempt(&s) as usize;
    let retry = limits.retry;
    let pod_name = attempt_pod_name(job, limits.main_node, attempt as u32);
    let started = pod.is_some_and(|p| p.node.is_some()) || s.attempts.len() > attempt;

    // The user's stop requests come first. Cancel only stops a job that has not started.
    if let Some(t) = &job.spec.terminate {
        return stop(s, attempt, format!("Terminated: {}", t.reason), now);
    }
    if let Some(c) = &job.spec.cancel
        && !started
    {
        return stop(s, attempt, format!("Cancelled: {}", c.reason), now);
    }
    // Dependencies gate a job that has never been admitted.
    if s.attempts.is_empty()
        && pod.is_none()
        && matches!(s.phase, JobPhase::Submitted | JobPhase::Pending)
        && deps.hold(&mut s, now)
    {
        return s;
    }

    match pod {
        None => without_pod(s, attempt, retry, verdict, now),
        Some(pod) => with_pod(s, pod, attempt, &pod_name, limits, now),
    }
}

/// The pod that runs `attempt` of the job: a multi-node job's is its main node's.
fn attempt_pod_name(job: &BatchJob, main_node: Option<u32>, attempt: u32) -> String {
    let (name, uid) = (job.name_any(), job.uid().unwrap_or_default());
    match main_node {
        Some(main) => node_pod_name(&name, &uid, main, attempt),
        None => pod_name(&name, &uid, attempt),
    }
}

/// The job's status while its attempt has no pod: a lost host if it had started, else
/// RUNNABLE with the scheduling pass's verdict (or FAILED if its pod was refused).
fn without_pod(
    mut s: BatchJobStatus,
    attempt: usize,
    retry: &RetryStrategy,
    verdict: Option<&Verdict>,
    now: DateTime<Utc>,
) -> BatchJobStatus {
    if s.attempts.len() > attempt {
        // The attempt had started and its pod is gone without Barge stopping it.
        let node = s.attempts[attempt].node_name.clone().unwrap_or_else(|| "unknown".into());
        return finish_attempt(s, retry, None, None, format!("Host {node} terminated"), now, true);
    }
    if let Some(Verdict::Rejected(why)) = verdict {
        s.phase = JobPhase::Failed;
        s.stopped_at = Some(now);
        s.status_reason = Some(why.to_string());
        return s;
    }
    runnable(&mut s, now);
    s.status_reason = Some(match verdict {
        Some(Verdict::Admitted { compute_environment }) => {
            format!("Admitted to compute environment {compute_environment}; creating its pod")
        }
        Some(v) => v.reason().map(|r| r.to_string()).unwrap_or_default(),
        None => "Waiting for the scheduler".into(),
    });
    s
}

/// The job's status from its attempt's pod.
fn with_pod(
    mut s: BatchJobStatus,
    pod: &PodFacts,
    attempt: usize,
    pod_name: &str,
    limits: &Limits<'_>,
    now: DateTime<Utc>,
) -> BatchJobStatus {
    let retry = limits.retry;
    if let Some(why) = &pod.refused {
        // No container ran: the attempt did not happen. The job waits for a node again
        // (the job controller removes the pod, and the pass places it anew).
        if s.attempts.get(attempt).is_some_and(|a| a.started_at.is_none() && a.stopped_at.is_none()) {
            s.attempts.truncate(attempt);
            s.attempt_count = s.attempts.len() as u32;
        }
        runnable(&mut s, now);
        s.node_name = None;
        s.status_reason = Some(format!("Pod {pod_name} did not start: {why}; placing it again"));
        return s;
    }
    if pod.node.is_some() && s.attempts.len() == attempt {
        // Admitted before its RUNNABLE status was written: it was runnable from the start.
        if s.runnable_at.is_none() {
            s.runnable_at = s.created_at;
        }
        s.attempts.push(Attempt {
            pod_name: pod_name.into(),
            node_name: pod.node.clone(),
            ..Default::default()
        });
        s.attempt_count = s.attempts.len() as u32;
    }
    if pod.compute_environment.is_some() {
        s.compute_environment = pod.compute_environment.clone();
    }
    match (pod.phase.as_str(), &pod.node) {
        ("Pending", None) => {
            runnable(&mut s, now);
            s.status_reason = Some(match &pod.unschedulable {
                Some(msg) => format!("Pod {pod_name} is not placed yet: {msg}"),
                None => format!("Pod {pod_name} is waiting for kube-scheduler to place it"),
            });
        }
        ("Pending", Some(node)) => {
            s.phase = JobPhase::Starting;
            s.node_name = Some(node.clone());
            s.status_reason = Some(format!("Container is starting on node {node}"));
            if let Some(b) = &pod.blocked {
                let why = format!("{}: {}", b.reason, b.message);
                let waited = pod.created_at.map_or(chrono::Duration::zero(), |c| now - c);
                // A Secret the job reads that does not exist gets the grace a missing
                // definition gets; then the job fails saying so (retrying cannot help).
                if b.config && waited >= super::revisions::MISSING_GRACE {
                    return finish_attempt(s, retry, None, Some(&b.reason), why, now, false);
                }
                s.status_reason = Some(format!("Container cannot start on node {node}: {why}"));
            }
        }
        ("Running", node) => {
            s.phase = JobPhase::Running;
            s.node_name = node.clone();
            let started = pod.started_at.unwrap_or(now);
            s.started_at.get_or_insert(started);
            s.attempts[attempt].started_at.get_or_insert(started);
            s.status_reason = Some(format!("Running on node {}", node.as_deref().unwrap_or("?")));
            if let Some(limit) = limits.timeout.map(|t| t.attempt_duration_seconds)
                && (now - started).num_seconds() >= limit as i64
            {
                return finish_attempt(s, retry, None, None, TIMEOUT_REASON.into(), now, false);
            }
        }
        ("Succeeded", _) => {
            let a = ensure_attempt(&mut s, attempt, pod_name, pod);
            a.exit_code = Some(pod.exit_code.unwrap_or(0));
            a.containers = pod.containers.clone();
            a.reason = pod.reason.clone();
            a.stopped_at = Some(pod.finished_at.unwrap_or(now));
            a.started_at = a.started_at.or(pod.started_at);
            s.started_at = s.started_at.or(pod.started_at);
            s.phase = JobPhase::Succeeded;
            s.stopped_at = Some(pod.finished_at.unwrap_or(now));
            s.status_reason = Some("Essential container in task exited".into());
        }
        ("Failed", _) => {
            ensure_attempt(&mut s, attempt, pod_name, pod).containers = pod.containers.clone();
            let code = pod.exit_code;
            let why = failure_reason(code, pod.reason.as_deref());
            let stopped = pod.finished_at.unwrap_or(now);
            return finish_attempt(s, retry, code, pod.reason.as_deref(), why, stopped, true);
        }
        _ => {}
    }
    s
}

/// Ends the job on a user's request, closing the current attempt if it had begun.
fn stop(mut s: BatchJobStatus, attempt: usize, reason: String, now: DateTime<Utc>) -> BatchJobStatus {
    if let Some(a) = s.attempts.get_mut(attempt) {
        a.stopped_at.get_or_insert(now);
        a.reason.get_or_insert_with(|| reason.clone());
    }
    s.phase = JobPhase::Failed;
    s.stopped_at = Some(now);
    s.status_reason = Some(reason);
    s
}

fn runnable(s: &mut BatchJobStatus, now: DateTime<Utc>) {
    if s.phase != JobPhase::Runnable {
        s.phase = JobPhase::Runnable;
        s.runnable_at = Some(now);
        s.node_name = None;
    }
}

fn ensure_attempt<'a>(
    s: &'a mut BatchJobStatus,
    attempt: usize,
    pod_name: &str,
    pod: &PodFacts,
) -> &'a mut Attempt {
    if s.attempts.len() == attempt {
        s.attempts.push(Attempt {
            pod_name: pod_name.into(),
            node_name: pod.node.clone(),
            ..Default::default()
        });
        s.attempt_count = s.attempts.len() as u32;
    }
    &mut s.attempts[attempt]
}

/// Closes the current attempt; retries while attempts remain and the failure allows it.
fn finish_attempt(
    mut s: BatchJobStatus,
    retry: &RetryStrategy,
    exit_code: Option<i32>,
    container_reason: Option<&str>,
    reason: String,
    at: DateTime<Utc>,
    retryable: bool,
) -> BatchJobStatus {
    let max_attempts = retry.attempts.max(1);
    let retryable = retryable && retry.wants_retry(exit_code, container_reason, &reason);
    let attempt = current_attempt(&s) as usize;
    if let Some(a) = s.attempts.get_mut(attempt) {
        a.exit_code = exit_code;
        a.reason = Some(reason.clone());
        a.stopped_at = Some(at);
    }
    let done = current_attempt(&s);
    if retryable && done < max_attempts {
        s.phase = JobPhase::Runnable;
        s.runnable_at = Some(at);
        s.node_name = None;
        s.status_reason = Some(format!("Attempt {done} of {max_attempts} failed ({reason}); retrying"));
    } else {
        s.phase = JobPhase::Failed;
        s.stopped_at = Some(at);
        s.status_reason = Some(reason);
    }
    s
}

/// Says which machine went away when an attempt just ended on a lost host whose provider
/// told why (`Host EC2 (instance i-…) terminated.`), as AWS Batch does.
fn name_lost_hosts(ctx: &Shared, old: &BatchJobStatus, new: &mut BatchJobStatus) {
    for (i, a) in new.attempts.iter_mut().enumerate() {
        let fresh = old.attempts.get(i).is_none_or(|o| o.reason != a.reason);
        let Some(node) = a.node_name.as_deref() else { continue };
        let generic = format!("Host {node} terminated");
        if fresh
            && a.reason.as_deref() == Some(generic.as_str())
            && let Some(why) = ctx.cluster.lost_host(node)
        {
            a.reason = Some(why.clone());
            if let Some(r) = &mut new.status_reason {
                *r = r.replace(&generic, why.trim_end_matches('.'));
            }
        }
    }
}

#[instrument(skip_all, fields(job = %job.name_any(), ns = job.namespace().unwrap_or_default()))]
pub async fn reconcile(job: Arc<BatchJob>, ctx: Arc<Shared>) -> Result<Action> {
    if !ctx.ready() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    if job.spec.array.is_some() {
        return reconcile_array(&ctx, &job).await;
    }
    if !job.status.as_ref().is_some_and(|s| s.phase.is_finished())
        && let Some(action) = reconcile_unresolved(&ctx, &job).await?
    {
        return Ok(action);
    }
    let mut job = job;
    let mut step = Step::of(&ctx, &job);
    let reworded_only = step.old.phase == JobPhase::Runnable && step.new.phase == JobPhase::Runnable;
    if step.new != step.old && reworded_only && step.refused.is_none() && ctx.bursts.put_off(&job) {
        return Ok(Action::await_change());
    }
    let key = ObjectRef::from_obj(&*job);
    if step.new != step.old && step.passing == Passing::Due && !ctx.steps.may_write(&key) {
        // The step-write budget is spent: the job waits in line, and its turn brings it back
        // (to write where it got to by then). Its deadlines still wake it.
        return Ok(step.wake.map_or_else(Action::await_change, Action::requeue));
    }
    let turn = if step.new != step.old { ctx.bursts.write_turn().await } else { None };
    if turn.is_some() {
        // The write waited behind pod creations: write what holds now. A job whose pod
        // started, or ended, meanwhile gets one write, not one for each step.
        job = ctx.jobs.get(&key).unwrap_or(job);
        step = Step::of(&ctx, &job);
    }
    if step.passing != Passing::Due {
        // Nothing to write, or something that is not a step: no turn in the line is needed.
        ctx.steps.forget(&key);
    }
    let Step { old, new, pod, host_lost, refused, wake, verdict, nodes, .. } = step;
    if new != old {
        debug!(job = %job.name_any(), from = ?old.phase, to = ?new.phase, reason = ?new.status_reason, "status");
        write_status(&ctx, &job, &new).await?;
        drop(turn);
        publish_transition(&ctx, &job, &old, &new, verdict.as_ref()).await;
    }
    if let Some(actions) = nodes {
        multinode::act(&ctx, &job, actions).await?;
    }
    // A job that ended (timeout, terminate, cancel) while its pod still runs: stop the pod,
    // after the status says so, so the scheduling pass never sees a gap to fill.
    if (new.phase == JobPhase::Failed || host_lost)
        && let Some(p) = &pod
        && super::pod::pod_is_active(p)
        && p.metadata.deletion_timestamp.is_none()
    {
        let ns = job.namespace().unwrap_or_default();
        stop_pod(&ctx, &Api::namespaced(ctx.client.clone(), &ns), &ns, &p.name_any()).await?;
    }
    // A pod its node refused goes, once the status no longer counts it as an attempt; the
    // node's next pods go through kube-scheduler for a while.
    if let Some(p) = &pod
        && let Some(why) = refused
    {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            ctx.cluster.refused(node, std::time::Instant::now());
        }
        info!(pod = %p.name_any(), %why, "the node refused the pod; placing it again");
        let api = Api::<Pod>::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        crate::k8s::delete_if_present(&api, &p.name_any()).await?;
    }
    // The job changed: the scheduling pass may have something to do.
    ctx.schedule_now.notify_one();
    Ok(match (new.phase.is_finished(), wake) {
        (true, _) => Action::await_change(),
        (false, Some(d)) => Action::requeue(d),
        (false, None) => Action::await_change(),
    })
}

/// What a single job's reconcile decided, from the stores alone.
struct Step {
    old: BatchJobStatus,
    new: BatchJobStatus,
    /// The current attempt's pod.
    pod: Option<Arc<Pod>>,
    /// That pod's node vanished: the attempt's host is lost.
    host_lost: bool,
    /// Why that pod's node refused it, before any container ran (see `facts::refusal`).
    refused: Option<String>,
    /// When to look again: the attempt's deadline, a dependency's or a time limit's recheck.
    wake: Option<Duration>,
    /// The scheduling pass's verdict the step read.
    verdict: Option<Verdict>,
    /// For a multi-node job: what its nodes need done.
    nodes: Option<multinode::Actions>,
    /// Whether the change is only a step on the job's way (`new` is `old` while it waits).
    passing: Passing,
}

impl Step {
    fn of(ctx: &Shared, job: &BatchJob) -> Step {
        let ns = job.namespace().unwrap_or_default();
        let old = job.status.clone().unwrap_or_default();
        let attempt = current_attempt(&old);
        let now = Utc::now();
        let (def, pin) = match revisions::resolve(&ctx.definitions, job, now) {
            Resolution::Pinned(pin, def) => (Some(def), Some(pin)),
            _ => (None, None),
        };
        let work = work(&job.spec, def.as_deref()).ok();
        let limits = Limits::of(work.as_ref());
        let name = attempt_pod_name(job, limits.main_node, attempt);
        let pod = ctx.pods.get(&ObjectRef::new(&name).within(&ns));
        // A pod on a vanished node counts as gone: the attempt's host is lost.
        let host_lost = pod.as_ref().is_some_and(|p| super::nodes::pod_host_lost(ctx, p));
        let facts = pod.as_deref().filter(|_| !host_lost).map(PodFacts::of);
        let refused = facts.as_ref().and_then(|f| f.refused.clone());
        let verdict = ctx.verdict(job);
        let (deps, deps_recheck) = dependencies(ctx, job, now);
        let mut new = next_status(job, &limits, &deps, facts.as_ref(), verdict.as_ref(), now);
        if new.job_definition.is_none() {
            new.job_definition = pin;
        }
        if host_lost || pod.is_none() {
            name_lost_hosts(ctx, &old, &mut new);
        }
        let limit_recheck = apply_time_limit(ctx, job, &mut new, now);
        let nodes = work
            .as_ref()
            .and_then(|w| Some((w, w.nodes.as_ref()?)))
            .map(|(w, layout)| multinode::overlay(ctx, job, w, layout, &old, &mut new, limits.retry, now));
        // A step the pod will likely have passed by the next look is not written yet.
        let passing = match (passing_step(&old, &new, facts.as_ref(), verdict.as_ref(), now), &nodes) {
            // A multi-node job's status also carries its nodes': never put off for long.
            (Passing::Due, Some(_)) => Passing::No,
            (passing, _) => passing,
        };
        if let Passing::Wait(_) = passing {
            new = old.clone();
        }
        // Wake up for the attempt's deadline; pod changes and verdicts trigger the rest.
        let deadline = limits.timeout.zip(new.attempts.get(attempt as usize)).and_then(|(t, a)| {
            let started = a.started_at?;
            let left = t.attempt_duration_seconds as i64 - (now - started).num_seconds();
            Some(Duration::from_secs(left.max(1) as u64))
        });
        // A container that cannot start for want of a Secret fails at the end of its grace.
        let blocked = facts.as_ref().filter(|f| f.blocked.as_ref().is_some_and(|b| b.config)).map(|f| {
            let waited = f.created_at.map_or(chrono::Duration::zero(), |c| now - c);
            (super::revisions::MISSING_GRACE - waited)
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(1))
        });
        let wake =
            [deadline, deps_recheck, limit_recheck, passing.wait(), blocked].into_iter().flatten().min();
        Step { old, new, pod, host_lost, refused, wake, verdict, nodes, passing }
    }
}

/// An array parent: roll the children up, then stop the child pods that must stop.
async fn reconcile_array(ctx: &Shared, job: &BatchJob) -> Result<Action> {
    // The roll-up reads every child: after a wait for the write's turn, so that it is fresh.
    let turn = ctx.bursts.write_turn().await;
    let fresh = turn.as_ref().and_then(|_| ctx.jobs.get(&ObjectRef::from_obj(job)));
    let job = fresh.as_deref().unwrap_or(job);
    let verdict = ctx.verdict(job);
    let now = Utc::now();
    let (deps, _) = dependencies(ctx, job, now);
    let ns = job.namespace().unwrap_or_default();
    let (name, uid) = (job.name_any(), job.uid().unwrap_or_default());
    let lost = std::cell::RefCell::new(Vec::new());
    let pod_of = |i, a| {
        let pod = ctx.pods.get(&ObjectRef::new(&child_pod_name(&name, &uid, i, a)).within(&ns))?;
        if super::nodes::pod_host_lost(ctx, &pod) {
            lost.borrow_mut().push((i, a));
            return None;
        }
        let facts = PodFacts::of(&pod);
        if let Some(node) = facts.refused.as_ref().and(facts.node.as_deref()) {
            ctx.cluster.refused(node, std::time::Instant::now());
        }
        Some(facts)
    };
    let old = job.status.clone().unwrap_or_default();
    let def = match revisions::resolve(&ctx.definitions, job, now) {
        Resolution::NotUsed => None,
        Resolution::Pinned(pin, def) => Some((pin, def)),
        unresolved => {
            let new = unresolved_status(job, &unresolved, now);
            return write_unresolved(ctx, job, &old, &new, turn).await;
        }
    };
    let work = work(&job.spec, def.as_ref().map(|(_, d)| &**d)).ok();
    let limits = Limits::of(work.as_ref());
    let gates = super::array::Gates::of(job, |n| ctx.jobs.get(&ObjectRef::new(n).within(&ns)));
    let (mut new, stop) =
        super::array::next_status(job, &limits, &deps, &gates, pod_of, verdict.as_ref(), now);
    if new.job_definition.is_none() {
        new.job_definition = def.as_ref().map(|(pin, _)| pin.clone());
    }
    if new != old {
        write_status(ctx, job, &new).await?;
        drop(turn);
        publish_transition(ctx, job, &old, &new, verdict.as_ref()).await;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for (i, a) in stop.into_iter().chain(lost.into_inner()) {
        stop_pod(ctx, &pods, &ns, &child_pod_name(&name, &uid, i, a)).await?;
    }
    ctx.schedule_now.notify_one();
    let running = new.array.as_ref().is_some_and(|a| a.running > 0);
    // Children still starting are looked at again: one whose Secret is missing fails after
    // its grace, with no change of its pod to say so.
    let starting = new.array.as_ref().is_some_and(|a| a.starting > 0);
    Ok(match (new.phase.is_finished(), (limits.timeout.is_some() && running) || starting) {
        (true, _) => Action::await_change(),
        (false, true) => Action::requeue(Duration::from_secs(5)),
        (false, false) => Action::await_change(),
    })
}

/// Deletes a pod Barge stops, once the archiver follows what its containers print to
/// their end (a SIGTERM trap's last lines too).
pub(crate) async fn stop_pod(ctx: &Shared, pods: &Api<Pod>, ns: &str, name: &str) -> Result<()> {
    if let Some(archive) = &ctx.archive
        && let Some(pod) = ctx.pods.get(&ObjectRef::new(name).within(ns))
    {
        archive.before_stop(&pod, &ctx.nodes).await;
    }
    crate::k8s::delete_if_present(pods, name).await?;
    Ok(())
}

/// A job whose job definition is not resolved yet, or cannot be: its status says why.
/// Returns `None` for a job that names no definition or has one resolved.
async fn reconcile_unresolved(ctx: &Shared, job: &BatchJob) -> Result<Option<Action>> {
    let resolution = revisions::resolve(&ctx.definitions, job, Utc::now());
    if matches!(resolution, Resolution::NotUsed | Resolution::Pinned(..)) {
        return Ok(None);
    }
    let old = job.status.clone().unwrap_or_default();
    let new = unresolved_status(job, &resolution, Utc::now());
    let turn = if new != old { ctx.bursts.write_turn().await } else { None };
    write_unresolved(ctx, job, &old, &new, turn).await.map(Some)
}

async fn write_unresolved(
    ctx: &Shared,
    job: &BatchJob,
    old: &BatchJobStatus,
    new: &BatchJobStatus,
    turn: Option<tokio::sync::SemaphorePermit<'_>>,
) -> Result<Action> {
    if new != old {
        write_status(ctx, job, new).await?;
        drop(turn);
        publish_transition(ctx, job, old, new, None).await;
    }
    // A definition that appears, or registers its revision, is looked for again soon.
    Ok(if new.phase.is_finished() { Action::await_change() } else { Action::requeue(Duration::from_secs(2)) })
}

/// A dependency may be created a moment after its dependent (one `kubectl apply` of
/// several files); only after this long is a missing one an error.
const MISSING_DEPENDENCY_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// Where the job's dependencies stand, from the job store; and when to look again.
fn dependencies(ctx: &Shared, job: &BatchJob, now: DateTime<Utc>) -> (Deps, Option<Duration>) {
    // SEQUENTIAL and N_TO_N gate an array's children, not the whole job.
    let whole_job = |d: &&crate::api::batch_job::Dependency| d.type_.is_none() || job.spec.array.is_none();
    if !job.spec.depends_on.iter().any(|d| whole_job(&d)) {
        return (Deps::Met, None);
    }
    let ns = job.namespace().unwrap_or_default();
    if let Some(cycle) = find_cycle(ctx, &ns, &job.name_any()) {
        return (Deps::Failed(format!("Dependency cycle: {}", cycle.join(" -> "))), None);
    }
    let age = job.meta().creation_timestamp.as_ref().map_or(chrono::Duration::zero(), |t| {
        now - DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()).unwrap_or(now)
    });
    let mut waiting = Vec::new();
    let mut recheck = None;
    for d in job.spec.depends_on.iter().filter(|d| d.type_.is_none() || job.spec.array.is_none()) {
        match ctx.jobs.get(&ObjectRef::new(&d.job_name).within(&ns)) {
            None if age < MISSING_DEPENDENCY_GRACE => {
                waiting.push(format!("{} (does not exist yet)", d.job_name));
                recheck = Some(Duration::from_secs(5));
            }
            None => return (Deps::Failed(format!("Dependency {} does not exist", d.job_name)), None),
            Some(dep) => match dep.status.as_ref().map(|s| s.phase).unwrap_or_default() {
                JobPhase::Succeeded => {}
                JobPhase::Failed => {
                    return (Deps::Failed(format!("Dependent job {} failed", d.job_name)), None);
                }
                phase => waiting.push(format!("{} ({})", d.job_name, phase.as_str())),
            },
        }
    }
    if waiting.is_empty() {
        (Deps::Met, None)
    } else {
        (Deps::Waiting(format!("Waiting for dependencies: {}", waiting.join(", "))), recheck)
    }
}

/// Follows `dependsOn` from `start`; returns the path back to it if there is one.
fn find_cycle(ctx: &Shared, ns: &str, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = std::collections::HashSet::new();
    while let Some((name, path)) = stack.pop() {
        let Some(job) = ctx.jobs.get(&ObjectRef::new(&name).within(ns)) else { continue };
        for d in job
            .spec
            .depends_on
            .iter()
            .filter(|d| d.type_ != Some(crate::api::batch_job::DependencyType::Sequential))
        {
            let mut next = path.clone();
            next.push(d.job_name.clone());
            if d.job_name == start {
                return Some(next);
            }
            if seen.insert(d.job_name.clone()) && next.len() <= 64 {
                stack.push((d.job_name.clone(), next));
            }
        }
    }
    None
}

/// The queue's jobStateTimeLimitActions: cancel a job RUNNABLE too long for a matching
/// reason. Returns when to look again.
fn apply_time_limit(
    ctx: &Shared,
    job: &BatchJob,
    s: &mut BatchJobStatus,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if s.phase != JobPhase::Runnable {
        return None;
    }
    let queue = ctx.queues.get(&ObjectRef::new(&job.spec.job_queue))?;
    let reason = s.status_reason.clone().unwrap_or_default();
    let since = s.runnable_at?;
    let mut recheck = None;
    for action in &queue.spec.job_state_time_limit_actions {
        if !action.applies_to(&reason) {
            continue;
        }
        let left = action.max_time_seconds as i64 - (now - since).num_seconds();
        if left <= 0 {
            s.phase = JobPhase::Failed;
            s.stopped_at = Some(now);
            s.status_reason =
                Some(format!("Canceled by JobStateTimeLimit action due to reason: {}", action.reason));
            return None;
        }
        recheck = Some(Duration::from_secs(left as u64));
    }
    recheck.or(Some(Duration::from_secs(30)).filter(|_| !queue.spec.job_state_time_limit_actions.is_empty()))
}

/// Writes a job's status; the caller has waited for its turn (`Bursts::write_turn`).
async fn write_status(ctx: &Shared, job: &BatchJob, status: &BatchJobStatus) -> Result<()> {
    let api: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    apply_status(&api, job, None, status).await?;
    Ok(())
}

/// Events mark what a user may act on: a failed job, a failed attempt, a misconfiguration.
/// Every other step, SUCCEEDED included, is in the status alone: an event each would add
/// an API write per step for nothing `kubectl get` does not show.
/// `verdict` is the scheduling pass's: a misconfiguration it names is warned of once, when
/// the job's status first gives it.
async fn publish_transition(
    ctx: &Shared,
    job: &BatchJob,
    old: &BatchJobStatus,
    new: &BatchJobStatus,
    verdict: Option<&Verdict>,
) {
    let misconfigured = match verdict {
        Some(Verdict::Misconfigured(why)) => {
            new.status_reason.as_deref() == Some(&**why) && old.status_reason.as_deref() != Some(&**why)
        }
        _ => false,
    };
    let (type_, reason) = if misconfigured {
        (EventType::Warning, "Misconfiguration")
    } else if old.phase == new.phase && new.attempts.len() == old.attempts.len() {
        return;
    } else {
        match new.phase {
            JobPhase::Failed => (EventType::Warning, "Failed"),
            JobPhase::Runnable if current_attempt(new) > current_attempt(old) => {
                (EventType::Warning, "AttemptFailed")
            }
            _ => return,
        }
    };
    let note = new.status_reason.clone().map(crate::k8s::event_note);
    let ev = Event { type_, reason: reason.into(), note, action: "Reconcile".into(), secondary: None };
    // Not the shared recorder: it keeps each event it published for six minutes and scans
    // them all on every publish, which over a hundred thousand jobs ending is hundreds of
    // MiB and quadratic time. A job's events are few, and each says something of its own.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&ev, &job.object_ref(&())).await {
        debug!(error = %e, "could not publish event");
    }
}

mod multinode;

pub fn error_policy(job: Arc<BatchJob>, err: &Error, ctx: Arc<Shared>) -> Action {
    warn!(job = %job.name_any(), error = %err, kind = err.kind(), "reconcile failed");
    ctx.retry_after(&super::context::failure_key(job.as_ref()), err)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::controller::fixtures;

    /// The lifecycle of a job that names no definition: its limits are its own.
    fn next_status(
        job: &BatchJob,
        deps: &Deps,
        pod: Option<&PodFacts>,
        verdict: Option<&Verdict>,
        now: DateTime<Utc>,
    ) -> BatchJobStatus {
        let work = work(&job.spec, None).unwrap();
        super::next_status(job, &Limits::of(Some(&work)), deps, pod, verdict, now)
    }

    fn job(attempts: u32, timeout: Option<u64>) -> BatchJob {
        fixtures::job("etl").uid("abcdef12").retry(attempts).timeout(timeout).build()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn pod(phase: &str, node: Option<&str>, exit: Option<i32>) -> PodFacts {
        PodFacts {
            node: node.map(Into::into),
            compute_environment: Some("ce".into()),
            phase: phase.into(),
            started_at: Some(at(1)),
            finished_at: exit.map(|_| at(5)),
            exit_code: exit,
            reason: exit.map(|c| if c == 0 { "Completed" } else { "Error" }.into()),
            unschedulable: None,
            created_at: Some(at(0)),
            refused: None,
            blocked: None,
            containers: Vec::new(),
        }
    }

    #[test]
    fn a_container_whose_secret_is_missing_says_so_then_fails_the_job_after_the_grace() {
        let j = job(3, None);
        let mut p = pod("Pending", Some("n1"), None);
        p.blocked = Some(super::super::facts::Blocked {
            reason: "CreateContainerConfigError".into(),
            message: "secret \"prod-db\" not found".into(),
            config: true,
        });
        let s = next_status(&j, &Deps::Met, Some(&p), None, at(10));
        assert_eq!(s.phase, JobPhase::Starting);
        let why = s.status_reason.unwrap();
        assert!(
            why.contains("cannot start on node n1: CreateContainerConfigError: secret \"prod-db\" not found"),
            "{why}"
        );
        let s = next_status(&j, &Deps::Met, Some(&p), None, at(31));
        assert_eq!(s.phase, JobPhase::Failed, "a missing Secret is not retried");
        assert!(s.status_reason.unwrap().starts_with("CreateContainerConfigError"));
        // An image still being pulled is shown, and waited for.
        p.blocked.as_mut().unwrap().config = false;
        assert_eq!(next_status(&j, &Deps::Met, Some(&p), None, at(300)).phase, JobPhase::Starting);
    }

    fn with(mut j: BatchJob, s: BatchJobStatus) -> BatchJob {
        j.status = Some(s);
        j
    }

    #[test]
    fn a_new_job_becomes_runnable_and_says_why_it_waits() {
        let verdict = Verdict::Waiting("Waiting for compute environment ce to scale up".into());
        let s = next_status(&job(1, None), &Deps::Met, None, Some(&verdict), at(0));
        assert_eq!(s.phase, JobPhase::Runnable);
        assert_eq!(s.status_reason.as_deref(), Some("Waiting for compute environment ce to scale up"));
        assert_eq!(s.runnable_at, Some(at(0)));
    }

    #[test]
    fn a_job_whose_pod_the_cluster_refuses_for_good_fails_with_the_refusal_and_is_not_retried() {
        let why =
            "The cluster refused the job's pod etl-abcdef12-1: violates PodSecurity \"restricted:latest\"";
        let verdict = Verdict::Rejected(why.into());
        let s = next_status(&job(3, None), &Deps::Met, None, Some(&verdict), at(0));
        assert_eq!(s.phase, JobPhase::Failed);
        assert_eq!(s.status_reason.as_deref(), Some(why));
        assert_eq!(s.stopped_at, Some(at(0)));
        assert!(s.attempts.is_empty(), "no attempt ran");
    }

    #[test]
    fn a_bound_pod_is_starting_then_running_then_succeeded() {
        let j = job(1, None);
        let starting = next_status(&j, &Deps::Met, Some(&pod("Pending", Some("n1"), None)), None, at(0));
        assert_eq!(starting.phase, JobPhase::Starting);
        assert_eq!(starting.attempts.len(), 1);
        let j = with(j, starting);
        let running = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        assert_eq!(running.phase, JobPhase::Running);
        assert_eq!(running.started_at, Some(at(1)));
        let j = with(j, running);
        let done = next_status(&j, &Deps::Met, Some(&pod("Succeeded", Some("n1"), Some(0))), None, at(6));
        assert_eq!(done.phase, JobPhase::Succeeded);
        assert_eq!(done.attempts[0].exit_code, Some(0));
        assert_eq!(done.stopped_at, Some(at(5)));
    }

    #[test]
    fn a_job_first_seen_running_skips_the_steps_between_in_one_write() {
        // Admitted and started within the controller's window: one status, RUNNING, that still
        // says when it became runnable (at creation) and records the attempt.
        let mut j = job(1, None);
        j.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(at(0).timestamp()).unwrap(),
        ));
        let s = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        assert_eq!(s.phase, JobPhase::Running);
        assert_eq!(s.runnable_at, Some(at(0)));
        assert_eq!(s.attempts.len(), 1);
        assert_eq!(s.attempts[0].started_at, Some(at(1)));
    }

    #[test]
    fn a_failed_attempt_is_retried_while_attempts_remain() {
        let j = job(2, None);
        let first = next_status(&j, &Deps::Met, Some(&pod("Failed", Some("n1"), Some(3))), None, at(6));
        assert_eq!(first.phase, JobPhase::Runnable);
        assert_eq!(current_attempt(&first), 1);
        assert!(first.status_reason.unwrap().starts_with("Attempt 1 of 2 failed"));
    }

    #[test]
    fn the_last_failed_attempt_fails_the_job_with_its_exit_code() {
        let j = job(1, None);
        let s = next_status(&j, &Deps::Met, Some(&pod("Failed", Some("n1"), Some(3))), None, at(6));
        assert_eq!(s.phase, JobPhase::Failed);
        assert_eq!(s.attempts[0].exit_code, Some(3));
        assert_eq!(
            s.status_reason.as_deref(),
            Some("Essential container in task exited with code 3 (Error)")
        );
    }

    #[test]
    fn a_pod_its_node_refused_is_not_an_attempt_and_the_job_waits_again() {
        let j = job(1, None);
        // Bound by Barge: STARTING, with its attempt open.
        let starting = next_status(&j, &Deps::Met, Some(&pod("Pending", Some("n1"), None)), None, at(1));
        assert_eq!((starting.phase, starting.attempts.len()), (JobPhase::Starting, 1));
        let j = with(j, starting);
        let refused = PodFacts {
            refused: Some("node n1 refused the pod (OutOfcpu: Pod was rejected: ...)".into()),
            ..pod("Failed", Some("n1"), None)
        };
        let s = next_status(&j, &Deps::Met, Some(&refused), None, at(2));
        assert_eq!(s.phase, JobPhase::Runnable, "a single attempt is not used up");
        assert!(s.attempts.is_empty() && s.attempt_count == 0);
        assert_eq!(s.node_name, None);
        assert!(s.status_reason.as_deref().unwrap().contains("refused the pod (OutOfcpu"));
        // Once gone, the job waits for the pass like a new one.
        let j = with(j, s);
        let s = next_status(&j, &Deps::Met, None, None, at(3));
        assert_eq!((s.phase, current_attempt(&s)), (JobPhase::Runnable, 0));
    }

    #[test]
    fn a_pod_that_vanishes_mid_run_is_a_lost_host() {
        let j = job(2, None);
        let running = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        let j = with(j, running);
        let s = next_status(&j, &Deps::Met, None, None, at(3));
        assert_eq!(s.phase, JobPhase::Runnable);
        assert_eq!(s.attempts[0].reason.as_deref(), Some("Host n1 terminated"));
    }

    #[test]
    fn an_attempt_over_its_timeout_fails_without_retry() {
        let j = job(3, Some(60));
        let running = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        let j = with(j, running);
        let s = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(62));
        assert_eq!(s.phase, JobPhase::Failed);
        assert_eq!(s.status_reason.as_deref(), Some(TIMEOUT_REASON));
    }

    #[test]
    fn a_finished_job_never_changes() {
        let j = job(1, None);
        let done = next_status(&j, &Deps::Met, Some(&pod("Succeeded", Some("n1"), Some(0))), None, at(6));
        let j = with(j, done.clone());
        assert_eq!(next_status(&j, &Deps::Met, None, None, at(100)), done);
    }

    #[test]
    fn evaluate_on_exit_exit_rule_stops_retrying_on_a_matching_code() {
        let mut j = job(5, None);
        j.spec.retry_strategy = Some(
            serde_json::from_value(serde_json::json!({
                "attempts": 5,
                "evaluateOnExit": [{"onExitCode": "2", "action": "EXIT"}, {"onReason": "*", "action": "RETRY"}]
            }))
            .unwrap(),
        );
        let s = next_status(&j, &Deps::Met, Some(&pod("Failed", Some("n1"), Some(2))), None, at(6));
        assert_eq!(s.phase, JobPhase::Failed);
        let s = next_status(&j, &Deps::Met, Some(&pod("Failed", Some("n1"), Some(1))), None, at(6));
        assert_eq!(s.phase, JobPhase::Runnable);
    }

    #[test]
    fn evaluate_on_exit_matches_host_loss_by_status_reason() {
        let mut j = job(3, None);
        j.spec.retry_strategy = Some(serde_json::from_value(serde_json::json!({
            "attempts": 3, "evaluateOnExit": [{"onStatusReason": "Host *", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}]
        })).unwrap());
        let running = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        let j = with(j, running);
        assert_eq!(next_status(&j, &Deps::Met, None, None, at(3)).phase, JobPhase::Runnable);
    }

    #[test]
    fn cancel_fails_a_job_that_has_not_started_and_spares_one_that_has() {
        let mut j = job(1, None);
        j.spec.cancel = Some(crate::api::batch_job::StopRequest { reason: "not needed".into() });
        let s = next_status(&j, &Deps::Met, None, None, at(0));
        assert_eq!((s.phase, s.status_reason.as_deref()), (JobPhase::Failed, Some("Cancelled: not needed")));
        let running = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        assert_eq!(running.phase, JobPhase::Running);
    }

    #[test]
    fn terminate_fails_a_running_job_and_closes_its_attempt() {
        let j = job(3, None);
        let running = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(2));
        let mut j = with(j, running);
        j.spec.terminate = Some(crate::api::batch_job::StopRequest { reason: "wrong input".into() });
        let s = next_status(&j, &Deps::Met, Some(&pod("Running", Some("n1"), None)), None, at(4));
        assert_eq!(s.phase, JobPhase::Failed);
        assert_eq!(s.status_reason.as_deref(), Some("Terminated: wrong input"));
        assert_eq!(s.attempts[0].stopped_at, Some(at(4)));
    }

    #[test]
    fn unmet_dependencies_keep_a_job_pending_and_a_failed_one_fails_it() {
        let j = job(1, None);
        let s = next_status(
            &j,
            &Deps::Waiting("Waiting for dependencies: a (RUNNING)".into()),
            None,
            None,
            at(0),
        );
        assert_eq!(s.phase, JobPhase::Pending);
        let j = with(j, s);
        let s = next_status(&j, &Deps::Failed("Dependent job a failed".into()), None, None, at(1));
        assert_eq!((s.phase, s.status_reason.as_deref()), (JobPhase::Failed, Some("Dependent job a failed")));
    }

    #[test]
    fn a_new_pod_s_passing_steps_are_written_only_if_they_last() {
        let submitted = BatchJobStatus::default();
        let runnable = next_status(&job(1, None), &Deps::Met, None, None, at(0));
        assert_eq!(runnable.phase, JobPhase::Runnable);
        let with_pod = |p: &PodFacts| {
            next_status(&with(job(1, None), runnable.clone()), &Deps::Met, Some(p), None, at(1))
        };
        fn step(old: &BatchJobStatus, new: &BatchJobStatus, p: Option<&PodFacts>, t: i64) -> Passing {
            passing_step(old, new, p, None, at(t))
        }
        // Waiting for kube-scheduler, then starting: 1 s into the pod's life, 2 s to go.
        for p in [pod("Pending", None, None), pod("Pending", Some("n1"), None)] {
            let new = with_pod(&p);
            assert_ne!(new, runnable);
            assert_eq!(step(&runnable, &new, Some(&p), 1), Passing::Wait(Duration::from_secs(2)));
            assert_eq!(step(&runnable, &new, Some(&p), 3), Passing::Due, "it lasted: written");
        }
        // Stuck (kube-scheduler says why): written at once.
        let stuck =
            PodFacts { unschedulable: Some("0/3 nodes are available".into()), ..pod("Pending", None, None) };
        assert_eq!(step(&runnable, &with_pod(&stuck), Some(&stuck), 1), Passing::No);
        // Running: shown 2 s after the container started, from RUNNABLE or STARTING; a
        // job that ends first is written once, at its end.
        let running = PodFacts { started_at: Some(at(1)), ..pod("Running", Some("n1"), None) };
        let starting = with_pod(&pod("Pending", Some("n1"), None));
        for old in [&runnable, &starting] {
            let new = next_status(&with(job(1, None), old.clone()), &Deps::Met, Some(&running), None, at(2));
            assert_eq!(new.phase, JobPhase::Running);
            assert_eq!(step(old, &new, Some(&running), 2), Passing::Wait(Duration::from_secs(1)));
            assert_eq!(step(old, &new, Some(&running), 3), Passing::Due, "it lasted: written");
        }
        let done = PodFacts { finished_at: Some(at(2)), ..pod("Succeeded", Some("n1"), Some(0)) };
        let ended = next_status(&with(job(1, None), runnable.clone()), &Deps::Met, Some(&done), None, at(2));
        assert_eq!(step(&runnable, &ended, Some(&done), 2), Passing::No);
        // A job already STARTING is not held back again, and nothing changed is no step.
        assert_eq!(step(&starting, &starting, Some(&pod("Pending", Some("n1"), None)), 1), Passing::No);
        assert_eq!(step(&runnable, &runnable, None, 1), Passing::No);
        // RUNNABLE before the pass placed the job, or while its pod is created: a step.
        let admitted = Verdict::Admitted { compute_environment: "ce".into() };
        for verdict in [None, Some(&admitted)] {
            assert_eq!(passing_step(&submitted, &runnable, None, verdict, at(0)), Passing::Due);
        }
        // Why it waits is not a step, nor a failed attempt, nor fixing the definition's revision.
        for why in [Verdict::Waiting("full".into()), Verdict::Misconfigured("too big".into())] {
            assert_eq!(passing_step(&submitted, &runnable, None, Some(&why), at(0)), Passing::No);
        }
        let failed = PodFacts { finished_at: Some(at(2)), ..pod("Failed", Some("n1"), Some(1)) };
        let retrying =
            next_status(&with(job(2, None), starting.clone()), &Deps::Met, Some(&failed), None, at(2));
        assert_eq!((retrying.phase, retrying.attempts.len()), (JobPhase::Runnable, 1));
        assert_eq!(step(&starting, &retrying, Some(&failed), 2), Passing::No);
        let pinned = BatchJobStatus { job_definition: Some("render:1".into()), ..runnable.clone() };
        assert_eq!(step(&submitted, &pinned, None, 0), Passing::No);
    }

    #[test]
    fn a_job_whose_definition_is_not_there_waits_submitted_then_fails_and_a_stop_ends_it() {
        let j = job(1, None);
        let waiting = Resolution::Waiting("Waiting for job definition render:7 (does not exist yet)".into());
        let s = unresolved_status(&j, &waiting, at(0));
        assert_eq!(s.phase, JobPhase::Submitted);
        assert_eq!(
            s.status_reason.as_deref(),
            Some("Waiting for job definition render:7 (does not exist yet)")
        );
        let failed = Resolution::Failed("Job definition render:7 does not exist".into());
        let s = unresolved_status(&with(j.clone(), s), &failed, at(31));
        assert_eq!((s.phase, s.stopped_at), (JobPhase::Failed, Some(at(31))));
        assert_eq!(s.status_reason.as_deref(), Some("Job definition render:7 does not exist"));
        // Finished stays finished; a cancel ends a waiting one with the user's reason.
        assert_eq!(unresolved_status(&with(j.clone(), s.clone()), &waiting, at(40)), s);
        let mut cancelled = j;
        cancelled.spec.cancel = Some(crate::api::batch_job::StopRequest { reason: "not needed".into() });
        let s = unresolved_status(&cancelled, &waiting, at(1));
        assert_eq!((s.phase, s.status_reason.as_deref()), (JobPhase::Failed, Some("Cancelled: not needed")));
    }
}
