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
    }
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
    let why = "The cluster refused the job's pod etl-abcdef12-1: violates PodSecurity \"restricted:latest\"";
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
    assert_eq!(s.status_reason.as_deref(), Some("Essential container in task exited with code 3 (Error)"));
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
    let s =
        next_status(&j, &Deps::Waiting("Waiting for dependencies: a (RUNNING)".into()), None, None, at(0));
    assert_eq!(s.phase, JobPhase::Pending);
    let j = with(j, s);
    let s = next_status(&j, &Deps::Failed("Dependent job a failed".into()), None, None, at(1));
    assert_eq!((s.phase, s.status_reason.as_deref()), (JobPhase::Failed, Some("Dependent job a failed")));
}

#[test]
fn a_new_pod_s_passing_steps_are_written_only_if_they_last() {
    let runnable = next_status(&job(1, None), &Deps::Met, None, None, at(0));
    assert_eq!(runnable.phase, JobPhase::Runnable);
    let with_pod =
        |p: &PodFacts| next_status(&with(job(1, None), runnable.clone()), &Deps::Met, Some(p), None, at(1));
    // Waiting for kube-scheduler, then starting: 1 s into the pod's life, 2 s to go.
    for p in [pod("Pending", None, None), pod("Pending", Some("n1"), None)] {
        let new = with_pod(&p);
        assert_ne!(new, runnable);
        assert_eq!(passing_step(&runnable, &new, Some(&p), at(1)), Some(Duration::from_secs(2)));
        assert_eq!(passing_step(&runnable, &new, Some(&p), at(3)), None, "it lasted: written");
    }
    // Stuck (kube-scheduler says why), or past the steps: written at once.
    let stuck =
        PodFacts { unschedulable: Some("0/3 nodes are available".into()), ..pod("Pending", None, None) };
    assert_eq!(passing_step(&runnable, &with_pod(&stuck), Some(&stuck), at(1)), None);
    let running = pod("Running", Some("n1"), None);
    assert_eq!(passing_step(&runnable, &with_pod(&running), Some(&running), at(1)), None);
    // A job already STARTING is not held back again, nor one without a pod.
    let starting = with_pod(&pod("Pending", Some("n1"), None));
    assert_eq!(passing_step(&starting, &starting, Some(&pod("Pending", Some("n1"), None)), at(1)), None);
    assert_eq!(passing_step(&runnable, &runnable, None, at(1)), None);
}

#[test]
fn a_job_whose_definition_is_not_there_waits_submitted_then_fails_and_a_stop_ends_it() {
    let j = job(1, None);
    let waiting = Resolution::Waiting("Waiting for job definition render:7 (does not exist yet)".into());
    let s = unresolved_status(&j, &waiting, at(0));
    assert_eq!(s.phase, JobPhase::Submitted);
    assert_eq!(s.status_reason.as_deref(), Some("Waiting for job definition render:7 (does not exist yet)"));
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
