use chrono::TimeZone;

use super::*;
use crate::api::batch_job::{BatchJobSpec, ContainerSpec, RetryStrategy, Timeout};

fn job(attempts: u32, timeout: Option<u64>) -> BatchJob {
    let mut j = BatchJob::new(
        "etl",
        BatchJobSpec {
            job_queue: "q".into(),
            container: Some(ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            pod_template: None,
            scheduling_priority: 0,
            timeout: timeout.map(|s| Timeout {
                attempt_duration_seconds: s,
            }),
            retry_strategy: Some(RetryStrategy { attempts }),
        },
    );
    j.metadata.uid = Some("abcdef12".into());
    j
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn pod(phase: &str, node: Option<&str>, exit: Option<i32>) -> PodFacts {
    PodFacts {
        node: node.map(Into::into),
        phase: phase.into(),
        started_at: Some(at(1)),
        finished_at: exit.map(|_| at(5)),
        exit_code: exit,
        reason: exit.map(|c| if c == 0 { "Completed" } else { "Error" }.into()),
        unschedulable: None,
    }
}

fn with(mut j: BatchJob, s: BatchJobStatus) -> BatchJob {
    j.status = Some(s);
    j
}

#[test]
fn a_new_job_becomes_runnable_and_says_why_it_waits() {
    let verdict = Verdict::Waiting("Waiting for compute environment ce to scale up".into());
    let s = next_status(&job(1, None), None, Some(&verdict), at(0));
    assert_eq!(s.phase, JobPhase::Runnable);
    assert_eq!(
        s.status_reason.as_deref(),
        Some("Waiting for compute environment ce to scale up")
    );
    assert_eq!(s.runnable_at, Some(at(0)));
}

#[test]
fn a_bound_pod_is_starting_then_running_then_succeeded() {
    let j = job(1, None);
    let starting = next_status(&j, Some(&pod("Pending", Some("n1"), None)), None, at(0));
    assert_eq!(starting.phase, JobPhase::Starting);
    assert_eq!(starting.attempts.len(), 1);
    let j = with(j, starting);
    let running = next_status(&j, Some(&pod("Running", Some("n1"), None)), None, at(2));
    assert_eq!(running.phase, JobPhase::Running);
    assert_eq!(running.started_at, Some(at(1)));
    let j = with(j, running);
    let done = next_status(
        &j,
        Some(&pod("Succeeded", Some("n1"), Some(0))),
        None,
        at(6),
    );
    assert_eq!(done.phase, JobPhase::Succeeded);
    assert_eq!(done.attempts[0].exit_code, Some(0));
    assert_eq!(done.stopped_at, Some(at(5)));
}

#[test]
fn a_failed_attempt_is_retried_while_attempts_remain() {
    let j = job(2, None);
    let first = next_status(&j, Some(&pod("Failed", Some("n1"), Some(3))), None, at(6));
    assert_eq!(first.phase, JobPhase::Runnable);
    assert_eq!(current_attempt(&first), 1);
    assert!(
        first
            .status_reason
            .unwrap()
            .starts_with("Attempt 1 of 2 failed")
    );
}

#[test]
fn the_last_failed_attempt_fails_the_job_with_its_exit_code() {
    let j = job(1, None);
    let s = next_status(&j, Some(&pod("Failed", Some("n1"), Some(3))), None, at(6));
    assert_eq!(s.phase, JobPhase::Failed);
    assert_eq!(s.attempts[0].exit_code, Some(3));
    assert_eq!(
        s.status_reason.as_deref(),
        Some("Essential container in task exited with code 3 (Error)")
    );
}

#[test]
fn a_pod_that_vanishes_mid_run_is_a_lost_host() {
    let j = job(2, None);
    let running = next_status(&j, Some(&pod("Running", Some("n1"), None)), None, at(2));
    let j = with(j, running);
    let s = next_status(&j, None, None, at(3));
    assert_eq!(s.phase, JobPhase::Runnable);
    assert_eq!(s.attempts[0].reason.as_deref(), Some("Host n1 terminated"));
}

#[test]
fn an_attempt_over_its_timeout_fails_without_retry() {
    let j = job(3, Some(60));
    let running = next_status(&j, Some(&pod("Running", Some("n1"), None)), None, at(2));
    let j = with(j, running);
    let s = next_status(&j, Some(&pod("Running", Some("n1"), None)), None, at(62));
    assert_eq!(s.phase, JobPhase::Failed);
    assert_eq!(s.status_reason.as_deref(), Some(TIMEOUT_REASON));
}

#[test]
fn a_finished_job_never_changes() {
    let j = job(1, None);
    let done = next_status(
        &j,
        Some(&pod("Succeeded", Some("n1"), Some(0))),
        None,
        at(6),
    );
    let j = with(j, done.clone());
    assert_eq!(next_status(&j, None, None, at(100)), done);
}
