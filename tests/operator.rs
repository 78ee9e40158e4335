//! The operator core on the real control plane: jobs run to their end, queues admit by
//! priority, misfits are explained, compute environments scale up and back down, and bad
//! manifests are refused with clear messages.

mod common;

use std::time::Duration;

use barge::api::batch_job::JobPhase;
use common::*;
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

async fn env(prefix: &str) -> Env {
    let client = client().await;
    shared_operator(&client).await;
    Env::new(client, prefix).await
}

fn runs(secs: u32) -> Value {
    json!({"sim.barge.dev/duration": format!("{secs}s")})
}

#[tokio::test]
async fn jobs_run_to_succeeded_and_failed_with_exit_codes_attempts_and_timestamps() {
    let e = env("life").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 8})).await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    e.job("ok", &q, 1.0, runs(2), json!({})).await;
    e.job(
        "bad",
        &q,
        1.0,
        json!({"sim.barge.dev/duration": "1s", "sim.barge.dev/exit-code": "3"}),
        json!({"retryStrategy": {"attempts": 2}}),
    )
    .await;

    let ok = e.wait_phase("ok", JobPhase::Succeeded).await;
    let s = ok.status.unwrap();
    assert_eq!(s.attempts.len(), 1);
    let a = &s.attempts[0];
    assert_eq!(a.exit_code, Some(0));
    assert!(a.node_name.as_deref().is_some_and(|n| n.starts_with(&ce)), "{a:?}");
    let (started, stopped) = (s.started_at.unwrap(), s.stopped_at.unwrap());
    assert!(stopped > started && s.created_at.unwrap() <= started);
    assert!((stopped - started).num_milliseconds() >= 1500, "ran about 2 s");

    let bad = e.wait_phase("bad", JobPhase::Failed).await;
    let s = bad.status.unwrap();
    assert_eq!(s.attempts.len(), 2, "{:?}", s.attempts);
    assert!(s.attempts.iter().all(|a| a.exit_code == Some(3)));
    assert_ne!(s.attempts[0].pod_name, s.attempts[1].pod_name);
    assert_eq!(s.status_reason.as_deref(), Some("Essential container in task exited with code 3 (Error)"));

    let events: Api<Event> = Api::namespaced(e.client.clone(), &e.ns);
    // Events mark what a user may act on: the failure and each failed attempt; a success
    // is in the status alone.
    // Each event follows its status write: look for a few seconds.
    let mut reasons = Vec::new();
    for _ in 0..50 {
        let evs = events.list(&ListParams::default().fields("involvedObject.name=bad")).await.unwrap();
        reasons = evs.items.iter().filter_map(|ev| ev.reason.clone()).collect();
        if ["Failed", "AttemptFailed"].iter().all(|r| reasons.iter().any(|x| x == r)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(["Failed", "AttemptFailed"].iter().all(|r| reasons.iter().any(|x| x == r)), "{reasons:?}");
    let evs = events.list(&ListParams::default().fields("involvedObject.name=ok")).await.unwrap();
    assert!(evs.items.is_empty(), "no event for a success: {:?}", evs.items);
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_high_priority_queue_runs_before_an_older_low_priority_job_and_a_disabled_queue_admits_nothing() {
    let e = env("prio").await;
    // Room for one 1.5 vCPU job at a time: a single m6i.large (1.93 allocatable vCPUs).
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i.large"], "minvCpus": 2, "maxvCpus": 2})).await;
    let hi = e.queue("hi", 100, "ENABLED", &[&ce]).await;
    let lo = e.queue("lo", 1, "ENABLED", &[&ce]).await;
    let off = e.queue("off", 500, "DISABLED", &[&ce]).await;

    e.job("blocker", &lo, 1.5, runs(4), json!({})).await;
    e.wait_phase("blocker", JobPhase::Running).await;
    e.job("old-low", &lo, 1.5, runs(1), json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    e.job("new-high", &hi, 1.5, runs(1), json!({})).await;
    e.job("parked", &off, 0.5, runs(1), json!({})).await;

    let high = e.wait_phase("new-high", JobPhase::Succeeded).await;
    let low = e.wait_phase("old-low", JobPhase::Succeeded).await;
    let (h, l) = (high.status.unwrap(), low.status.unwrap());
    assert!(
        h.started_at.unwrap() < l.started_at.unwrap(),
        "high {:?} before low {:?}",
        h.started_at,
        l.started_at
    );
    assert!(h.stopped_at.unwrap() <= l.started_at.unwrap(), "one at a time");

    let parked = e.jobs.get("parked").await.unwrap().status.unwrap();
    assert_eq!(parked.phase, JobPhase::Runnable);
    assert_eq!(parked.status_reason.unwrap(), format!("Job queue {off} is DISABLED and admits no jobs"));
    let qs = eventually("queue status", WAIT, || async { e.queues.get(&off).await.ok()?.status }).await;
    let blocked = qs.conditions.iter().find(|c| c.type_ == "Blocked").unwrap();
    assert_eq!((blocked.status.as_str(), blocked.reason.as_str()), ("True", "QueueDisabled"));
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_job_too_large_for_every_compute_environment_says_so_with_a_warning_event() {
    let e = env("huge").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["c6i.large", "c6i.xlarge"], "maxvCpus": 64})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job("huge", &q, 8.0, json!({}), json!({})).await;
    let job = eventually("misconfiguration reason", WAIT, || async {
        let j = e.jobs.get("huge").await.ok()?;
        j.status
            .as_ref()?
            .status_reason
            .as_deref()?
            .starts_with("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT")
            .then_some(j)
    })
    .await;
    let s = job.status.unwrap();
    assert_eq!(s.phase, JobPhase::Runnable);
    assert!(s.status_reason.unwrap().contains(&format!("the largest node of {ce} offers 3.92 vCPU")));
    let events: Api<Event> = Api::namespaced(e.client.clone(), &e.ns);
    eventually("a Misconfiguration warning", WAIT, || async {
        let evs = events.list(&ListParams::default().fields("involvedObject.name=huge")).await.ok()?;
        evs.items
            .iter()
            .any(|ev| {
                ev.reason.as_deref() == Some("Misconfiguration") && ev.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
    assert!(e.nodes_of(&ce).await.is_empty(), "nothing launched for a job that can never fit");
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn fifty_jobs_scale_the_environment_up_within_max_vcpus_and_back_down_to_min() {
    let e = env("scale").await;
    let ce = e
        .ce(
            "ce",
            json!({"instanceTypes": ["m6i"], "minvCpus": 2, "maxvCpus": 16, "scaleDownDelaySeconds": 3}),
        )
        .await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    for i in 0..50 {
        e.job(&format!("j{i}"), &q, 1.0, runs(2), json!({})).await;
    }
    let peak = std::sync::atomic::AtomicU64::new(0);
    eventually("all 50 jobs SUCCEEDED", Duration::from_secs(180), || async {
        let nodes = e.nodes_of(&ce).await;
        peak.fetch_max(vcpus_of(&nodes), std::sync::atomic::Ordering::Relaxed);
        assert!(vcpus_of(&nodes) <= 16, "never beyond maxvCpus: {} vCPUs", vcpus_of(&nodes));
        let jobs = e.jobs.list(&ListParams::default()).await.ok()?;
        jobs.items
            .iter()
            .all(|j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded))
            .then_some(())
    })
    .await;
    let peak = peak.into_inner();
    assert!(peak > 2, "scaled up beyond minvCpus (peak {peak})");
    // Idle nodes go; what stays is the smallest node that keeps minvCpus.
    eventually("back to minvCpus", WAIT, || async {
        let nodes = e.nodes_of(&ce).await;
        (nodes.len() == 1 && vcpus_of(&nodes) >= 2).then_some(())
    })
    .await;
    let status = e.ces.get(&ce).await.unwrap().status.unwrap();
    assert!(status.total_vcpus <= 16);

    // Deleting the environment removes its nodes before the object goes.
    e.ces.delete(&ce, &DeleteParams::default()).await.unwrap();
    eventually("nodes removed with the environment", WAIT, || async {
        (e.nodes_of(&ce).await.is_empty() && e.ces.get_opt(&ce).await.ok()?.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn invalid_manifests_are_refused_or_marked_with_a_clear_message() {
    let e = env("invalid").await;
    let err = |r: kube::Result<_>| match r {
        Err(kube::Error::Api(s)) => s.message.clone(),
        other => panic!("expected the API server to refuse it, got {other:?}"),
    };
    let bad_ce = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": format!("{}-bad", e.tag)},
        "spec": {"instanceTypes": ["m6i"], "minvCpus": 32, "maxvCpus": 8}});
    assert!(
        err(apply(&e.ces, bad_ce).await.map(|_| ())).contains("minvCpus must not be greater than maxvCpus")
    );

    let no_image = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": {"name": "noimg"},
        "spec": {"jobQueue": "q", "container": {"image": ""}}});
    assert!(err(apply(&e.jobs, no_image).await.map(|_| ())).contains("container.image is required"));

    let both = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": {"name": "both"},
        "spec": {"jobQueue": "q", "container": {"image": "busybox"}, "podTemplate": {"spec": {"containers": [{"name": "a", "image": "b"}]}}}});
    assert!(
        err(apply(&e.jobs, both).await.map(|_| ()))
            .contains("set exactly one of container, podTemplate, nodeProperties or jobDefinition")
    );

    let tiny_timeout = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": {"name": "tiny"},
        "spec": {"jobQueue": "q", "container": {"image": "busybox"}, "timeout": {"attemptDurationSeconds": 5}}});
    assert!(err(apply(&e.jobs, tiny_timeout).await.map(|_| ())).contains("at least 60"));

    // The ec2 provider's settings are checked by the API server too.
    let ec2_ce = |extra: Value| {
        let mut spec = json!({"provider": "ec2", "instanceTypes": ["m6i"], "maxvCpus": 8});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
            "metadata": {"name": format!("{}-ec2", e.tag)}, "spec": spec})
    };
    for (extra, message) in [
        (json!({"imageId": "ami-1"}), "an ec2 compute environment needs at least one subnet in subnets"),
        (json!({"subnets": ["subnet-1"]}), "an ec2 compute environment needs a launchTemplate or an imageId"),
        (
            json!({"subnets": ["subnet-1"], "launchTemplate": {"id": "lt-1", "name": "nodes"}}),
            "launchTemplate needs exactly one of id or name",
        ),
        (
            json!({"subnets": ["subnet-1"], "imageId": "ami-1", "bidPercentage": 50}),
            "bidPercentage only applies to capacityType SPOT",
        ),
        (
            json!({"subnets": ["subnet-1"], "imageId": "ami-1", "tags": {"barge.dev/cluster": "x"}}),
            "tags may not use the barge.dev/ prefix",
        ),
    ] {
        let got = err(apply(&e.ces, ec2_ce(extra)).await.map(|_| ()));
        // The rule's own words, not a CEL evaluation error about a missing field.
        assert!(got.contains(message) && !got.contains("no such key"), "{got}");
    }
    let no_types = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
        "metadata": {"name": format!("{}-notypes", e.tag)}, "spec": {"provider": "local", "maxvCpus": 8}});
    let got = err(apply(&e.ces, no_types).await.map(|_| ()));
    assert!(
        got.contains("instanceTypes needs at least one type or family") && !got.contains("no such key"),
        "{got}"
    );

    // An unknown queue is not an error at submission (GitOps may create it later) but says so.
    let ghost = format!("{}-ghost", e.tag);
    e.job("orphan", &ghost, 1.0, json!({}), json!({})).await;
    let reason = eventually("unknown queue reason", WAIT, || async {
        e.jobs.get("orphan").await.ok()?.status?.status_reason
    })
    .await;
    assert_eq!(reason, format!("Job queue {ghost} does not exist; the job will wait until it is created"));

    let mut moved = e.jobs.get("orphan").await.unwrap();
    moved.spec.job_queue = "elsewhere".into();
    moved.status = None;
    let r = e.jobs.replace("orphan", &PostParams::default(), &moved).await;
    assert!(err(r.map(|_| ())).contains("jobQueue is immutable"));
    let _ = e.jobs.delete("orphan", &DeleteParams::default()).await;
    let _ = ResourceExt::name_any(&moved);
}

async fn patch_spec(e: &Env, name: &str, spec: Value) {
    use kube::api::{Patch, PatchParams};
    e.jobs.patch(name, &PatchParams::default(), &Patch::Merge(&json!({"spec": spec}))).await.unwrap();
}

#[tokio::test]
async fn dependencies_wait_for_success_fail_with_their_dependency_and_refuse_cycles() {
    let e = env("deps").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 16})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job("first", &q, 1.0, runs(3), json!({})).await;
    e.job("then", &q, 1.0, runs(1), json!({"dependsOn": [{"jobName": "first"}]})).await;
    e.job(
        "broken",
        &q,
        1.0,
        json!({"sim.barge.dev/duration": "1s", "sim.barge.dev/exit-code": "1"}),
        json!({}),
    )
    .await;
    e.job("after-broken", &q, 1.0, runs(1), json!({"dependsOn": [{"jobName": "broken"}]})).await;
    e.job("ping", &q, 1.0, runs(1), json!({"dependsOn": [{"jobName": "pong"}]})).await;
    e.job("pong", &q, 1.0, runs(1), json!({"dependsOn": [{"jobName": "ping"}]})).await;

    let waiting = e.wait_phase("then", JobPhase::Pending).await;
    assert!(waiting.status.unwrap().status_reason.unwrap().starts_with("Waiting for dependencies: first ("));
    let first = e.wait_phase("first", JobPhase::Succeeded).await.status.unwrap();
    let then = e.wait_phase("then", JobPhase::Succeeded).await.status.unwrap();
    assert!(then.started_at.unwrap() >= first.stopped_at.unwrap(), "runs only after its dependency");

    let dependent = e.wait_phase("after-broken", JobPhase::Failed).await.status.unwrap();
    assert_eq!(dependent.status_reason.as_deref(), Some("Dependent job broken failed"));
    assert!(dependent.attempts.is_empty(), "never ran");
    let ping = e.wait_phase("ping", JobPhase::Failed).await.status.unwrap();
    assert_eq!(ping.status_reason.as_deref(), Some("Dependency cycle: ping -> pong -> ping"));
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn retry_rules_exit_on_a_matching_code_and_retry_a_lost_host() {
    let e = env("retry").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 16})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job(
        "exits",
        &q,
        1.0,
        json!({"sim.barge.dev/duration": "1s", "sim.barge.dev/exit-code": "2"}),
        json!({"retryStrategy": {"attempts": 3, "evaluateOnExit": [{"onExitCode": "2", "action": "EXIT"}]}}),
    )
    .await;
    e.job("survivor", &q, 1.0, json!({}),
        json!({"retryStrategy": {"attempts": 2, "evaluateOnExit": [{"onStatusReason": "Host *", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}]}})).await;

    let exits = e.wait_phase("exits", JobPhase::Failed).await.status.unwrap();
    assert_eq!(exits.attempts.len(), 1, "EXIT on code 2 stops retrying");

    // The node going away under a running job is a lost host.
    let running = e.wait_phase("survivor", JobPhase::Running).await.status.unwrap();
    let node = running.attempts[0].node_name.clone().unwrap();
    delete_node(&e.client, &node).await;
    let retried = eventually("second attempt running", WAIT, || async {
        let s = e.jobs.get("survivor").await.ok()?.status?;
        (s.attempts.len() == 2 && s.phase == JobPhase::Running).then_some(s)
    })
    .await;
    assert_eq!(retried.attempts[0].reason.clone().unwrap(), format!("Host {node} terminated"));
    assert_ne!(retried.attempts[1].node_name.as_deref(), Some(node.as_str()), "runs again elsewhere");
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn cancel_before_start_and_terminate_while_running_fail_the_job_with_the_reason() {
    let e = env("stop").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 16})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    let parked = e.queue("parked", 1, "DISABLED", &[&ce]).await;
    e.job("never-starts", &parked, 1.0, runs(1), json!({})).await;
    e.job("forever", &q, 1.0, json!({}), json!({"retryStrategy": {"attempts": 3}})).await;

    e.wait_phase("never-starts", JobPhase::Runnable).await;
    patch_spec(&e, "never-starts", json!({"cancel": {"reason": "not needed any more"}})).await;
    let cancelled = e.wait_phase("never-starts", JobPhase::Failed).await.status.unwrap();
    assert_eq!(cancelled.status_reason.as_deref(), Some("Cancelled: not needed any more"));
    assert!(cancelled.attempts.is_empty());

    let running = e.wait_phase("forever", JobPhase::Running).await.status.unwrap();
    patch_spec(&e, "forever", json!({"cancel": {"reason": "too late"}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        e.jobs.get("forever").await.unwrap().status.unwrap().phase,
        JobPhase::Running,
        "cancel spares a started job"
    );
    patch_spec(&e, "forever", json!({"terminate": {"reason": "wrong input"}})).await;
    let terminated = e.wait_phase("forever", JobPhase::Failed).await.status.unwrap();
    assert_eq!(terminated.status_reason.as_deref(), Some("Terminated: wrong input"));
    assert_eq!(terminated.attempts.len(), 1, "a terminated job is not retried");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(e.client.clone(), &e.ns);
    let pod = running.attempts[0].pod_name.clone();
    eventually("the running pod is gone", WAIT, || async {
        pods.get_opt(&pod).await.ok()?.is_none().then_some(())
    })
    .await;
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn an_attempt_over_its_timeout_is_stopped_and_not_retried() {
    let e = env("timeout").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 16})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job(
        "slow",
        &q,
        1.0,
        json!({}),
        json!({"timeout": {"attemptDurationSeconds": 60}, "retryStrategy": {"attempts": 2}}),
    )
    .await;
    let running = e.wait_phase("slow", JobPhase::Running).await.status.unwrap();
    let failed = eventually("timed out", Duration::from_secs(120), || async {
        let s = e.jobs.get("slow").await.ok()?.status?;
        (s.phase == JobPhase::Failed).then_some(s)
    })
    .await;
    assert_eq!(failed.status_reason.as_deref(), Some("Job attempt duration exceeded timeout"));
    assert_eq!(failed.attempts.len(), 1);
    let ran = failed.stopped_at.unwrap() - running.started_at.unwrap();
    assert!(ran.num_seconds() >= 59 && ran.num_seconds() < 75, "stopped after about 60 s: {ran}");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(e.client.clone(), &e.ns);
    let pod = failed.attempts[0].pod_name.clone();
    eventually("the pod is stopped", WAIT, || async {
        pods.get_opt(&pod).await.ok()?.is_none().then_some(())
    })
    .await;
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_job_runnable_past_a_time_limit_action_is_cancelled_with_the_aws_reason() {
    let e = env("limit").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i.large"], "maxvCpus": 4})).await;
    let q = format!("{}-q", e.tag);
    apply(&e.queues, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": q},
        "spec": {"computeEnvironmentOrder": [{"order": 1, "computeEnvironment": ce}],
                 "jobStateTimeLimitActions": [{"reason": "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT*", "state": "RUNNABLE", "maxTimeSeconds": 10, "action": "CANCEL"}]}}))
    .await
    .unwrap();
    e.job("too-big", &q, 16.0, json!({}), json!({})).await;
    let failed = e.wait_phase("too-big", JobPhase::Failed).await.status.unwrap();
    assert_eq!(
        failed.status_reason.as_deref(),
        Some(
            "Canceled by JobStateTimeLimit action due to reason: MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT*"
        )
    );
    let waited = failed.stopped_at.unwrap() - failed.runnable_at.unwrap();
    assert!(waited.num_seconds() >= 10, "{waited}");
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn an_array_of_a_thousand_runs_every_index_once_and_failed_children_are_listed() {
    let e = env("array").await;
    let ce = e
        .ce(
            "ce",
            json!({"instanceTypes": ["c6i"], "maxvCpus": 64, "allocationStrategy": "BEST_FIT_PROGRESSIVE"}),
        )
        .await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job("thousand", &q, 0.25, runs(1), json!({"array": {"size": 1000}})).await;
    e.job(
        "flaky",
        &q,
        0.25,
        json!({"sim.barge.dev/duration": "1s", "sim.barge.dev/fail-indexes": "3,17,42"}),
        json!({"array": {"size": 50}, "retryStrategy": {"attempts": 2}}),
    )
    .await;

    let done = eventually("array of 1000 SUCCEEDED", Duration::from_secs(240), || async {
        let j = e.jobs.get("thousand").await.ok()?;
        (j.status.as_ref()?.phase == JobPhase::Succeeded).then_some(j)
    })
    .await;
    let a = done.status.as_ref().unwrap().array.clone().unwrap();
    assert_eq!((a.succeeded, a.failed, a.progress.as_str()), (1000, 0, "1000/1000"));
    assert_eq!(a.succeeded_indexes, "0-999");
    let bytes = serde_json::to_vec(&done).unwrap().len();
    assert!(bytes < 100 * 1024, "parent object is {bytes} bytes");

    // Every index ran exactly once: one pod per index, attempt 1 (attempts count from 1).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(e.client.clone(), &e.ns);
    let uid = done.uid().unwrap();
    let list = pods.list(&ListParams::default().labels(&format!("barge.dev/job-uid={uid}"))).await.unwrap();
    let mut indexes: Vec<u32> =
        list.items.iter().map(|p| p.labels()["barge.dev/array-index"].parse().unwrap()).collect();
    indexes.sort();
    assert_eq!(indexes, (0..1000).collect::<Vec<_>>());
    assert!(
        list.items.iter().all(|p| p.name_any().ends_with("-1") && p.labels()["barge.dev/attempt"] == "1")
    );
    let env = &list.items[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    assert!(env.iter().any(|v| v.name == "AWS_BATCH_JOB_ARRAY_INDEX"));

    let flaky = e.wait_phase("flaky", JobPhase::Failed).await.status.unwrap();
    let a = flaky.array.unwrap();
    assert_eq!((a.succeeded, a.failed), (47, 3));
    assert_eq!(a.failed_indexes, "3,17,42");
    assert_eq!(a.failed_attempts["17"].len(), 2, "retried once: {:?}", a.failed_attempts["17"]);
    assert_eq!(flaky.status_reason.as_deref(), Some("3 of 50 child jobs failed (indexes 3,17,42)"));
    e.cleanup(&[&ce]).await;
}

/// (start, finish) of each child's first pod, by index, from the container's termination.
async fn child_times(e: &Env, job: &str) -> Vec<(i64, i64)> {
    let uid = e.jobs.get(job).await.unwrap().uid().unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(e.client.clone(), &e.ns);
    let list = pods.list(&ListParams::default().labels(&format!("barge.dev/job-uid={uid}"))).await.unwrap();
    let mut out: Vec<(u32, (i64, i64))> = list
        .items
        .iter()
        .map(|p| {
            let t = p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
                .state
                .clone()
                .unwrap()
                .terminated
                .unwrap();
            let ms = |x: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
                x.unwrap().0.as_millisecond()
            };
            (p.labels()["barge.dev/array-index"].parse().unwrap(), (ms(t.started_at), ms(t.finished_at)))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, t)| t).collect()
}

#[tokio::test]
async fn n_to_n_children_wait_for_their_counterpart_and_sequential_children_run_in_order() {
    let e = env("arraydeps").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["c6i"], "maxvCpus": 32})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    e.job("first", &q, 0.5, runs(2), json!({"array": {"size": 4}})).await;
    e.job(
        "second",
        &q,
        0.5,
        runs(1),
        json!({"array": {"size": 4}, "dependsOn": [{"jobName": "first", "type": "N_TO_N"}]}),
    )
    .await;
    e.job(
        "inorder",
        &q,
        0.5,
        runs(1),
        json!({"array": {"size": 4}, "dependsOn": [{"jobName": "inorder", "type": "SEQUENTIAL"}]}),
    )
    .await;
    e.job(
        "mismatch",
        &q,
        0.5,
        runs(1),
        json!({"array": {"size": 3}, "dependsOn": [{"jobName": "first", "type": "N_TO_N"}]}),
    )
    .await;

    e.wait_phase("second", JobPhase::Succeeded).await;
    let (first, second) = (child_times(&e, "first").await, child_times(&e, "second").await);
    for i in 0..4 {
        assert!(
            second[i].0 >= first[i].1,
            "second[{i}] started {} before first[{i}] finished {}",
            second[i].0,
            first[i].1
        );
    }
    e.wait_phase("inorder", JobPhase::Succeeded).await;
    let inorder = child_times(&e, "inorder").await;
    for i in 1..4 {
        assert!(inorder[i].0 >= inorder[i - 1].1, "child {i} started before child {} finished", i - 1);
    }
    let mismatch = e.wait_phase("mismatch", JobPhase::Failed).await.status.unwrap();
    assert_eq!(
        mismatch.status_reason.as_deref(),
        Some("N_TO_N dependency first must be an array job of the same size (3)")
    );
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn fair_share_gives_weights_one_and_two_about_two_to_one_on_a_saturated_queue() {
    let e = env("share").await;
    // A fixed 7-slot environment (c6i.2xlarge: 7.8 allocatable vCPUs) for 1-vCPU jobs.
    let ce = e.ce("ce", json!({"instanceTypes": ["c6i.2xlarge"], "minvCpus": 8, "maxvCpus": 8})).await;
    let q = format!("{}-q", e.tag);
    let queue = |state: &str| {
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": q},
        "spec": {"state": state, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": ce}],
                 "fairShare": {"shareDecaySeconds": 300, "shareDistribution": [
                     {"shareIdentifier": "gold", "weightFactor": 1.0}, {"shareIdentifier": "bronze", "weightFactor": 2.0}]}}})
    };
    // Usage is vCPU-seconds decayed over 300 s: equal-length jobs finish in waves, and only
    // the history (not what runs at one instant) can balance the waves.
    // Both shares queue up while the queue is DISABLED, then contend from the same moment.
    apply(&e.queues, queue("DISABLED")).await.unwrap();
    // bronze submits first: first-in, first-out would run it first.
    for share in ["bronze", "gold"] {
        for i in 0..40 {
            e.job(&format!("{share}-{i:02}"), &q, 1.0, runs(2), json!({"shareIdentifier": share})).await;
        }
    }
    apply(&e.queues, queue("ENABLED")).await.unwrap();
    // Measure while both shares still have work waiting: admitted jobs ~ vCPU-seconds (equal
    // runtimes). Admissions are counted as the pods the scheduler created, per share label, so
    // that status writes lagging under load do not blur the count.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(e.client.clone(), &e.ns);
    let started = |pods: &[k8s_openapi::api::core::v1::Pod], share: &str| {
        pods.iter().filter(|p| p.labels().get("barge.dev/share").map(String::as_str) == Some(share)).count()
            as f64
    };
    let (gold, bronze) = eventually("enough work done to compare", Duration::from_secs(120), || async {
        let pods = pods.list(&ListParams::default()).await.ok()?.items;
        let (g, b) = (started(&pods, "gold"), started(&pods, "bronze"));
        (g >= 30.0).then_some((g, b))
    })
    .await;
    let ratio = gold / bronze.max(1.0);
    eprintln!("fair share: gold {gold} started, bronze {bronze} started, ratio {ratio:.2}");
    // Tolerance: the first pass and job granularity (7 slots) blur the split; 2:1 within ±30%.
    assert!((1.4..=2.6).contains(&ratio), "gold {gold} : bronze {bronze} = {ratio:.2}, expected about 2");
    e.cleanup(&[&ce]).await;
}

/// Runs the `barge` CLI against the test cluster.
fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_barge")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn the_cli_submits_an_array_watches_it_explains_a_waiting_job_and_cancels_it() {
    let e = env("cli").await;
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 8})).await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    let ns = e.ns.as_str();

    let (ok, help) = cli(&["--help"]);
    assert!(ok && help.contains("Examples:") && help.contains("describe"), "{help}");

    let (ok, out) = cli(&[
        "submit",
        "-n",
        ns,
        "--queue",
        &q,
        "--image",
        "busybox",
        "--name",
        "arr",
        "--array-size",
        "5",
        "--annotate",
        "sim.barge.dev/duration=1s",
        "--",
        "sh",
        "-c",
        "echo hi",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("batchjob/arr submitted to queue"), "{out}");
    let (ok, watched) = cli(&["watch", "arr", "-n", ns]);
    assert!(ok, "{watched}");
    assert!(watched.trim_end().ends_with("5/5 succeeded, 0 failed, 0 running"), "{watched}");
    let arr = e.jobs.get("arr").await.unwrap();
    assert_eq!(arr.spec.container.unwrap().command, vec!["sh", "-c", "echo hi"]);

    // A job that can never fit: describe says why, naming the queue and the environment.
    let (ok, out) =
        cli(&["submit", "-n", ns, "--queue", &q, "--image", "busybox", "--name", "huge", "--vcpus", "64"]);
    assert!(ok, "{out}");
    e.wait_phase("huge", JobPhase::Runnable).await;
    let described = eventually("describe to explain the wait", WAIT, || async {
        let (ok, out) = cli(&["describe", "huge", "-n", ns]);
        (ok && out.contains("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT")).then_some(out)
    })
    .await;
    assert!(described.contains("Why it waits:"), "{described}");
    assert!(described.contains(&format!("Queue {q}: ENABLED")), "{described}");
    assert!(described.contains(&format!("Compute environment {ce}:")), "{described}");
    let (ok, json_out) = cli(&["describe", "huge", "-n", ns, "-o", "json"]);
    assert!(ok);
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(parsed["spec"]["jobQueue"], json!(q));

    let (ok, queues) = cli(&["queues"]);
    assert!(ok && queues.starts_with("QUEUE") && queues.contains(&q), "{queues}");

    let (ok, out) = cli(&["cancel", "huge", "-n", ns, "--reason", "too big"]);
    assert!(ok, "{out}");
    let cancelled = e.wait_phase("huge", JobPhase::Failed).await;
    assert_eq!(cancelled.status.unwrap().status_reason.as_deref(), Some("Cancelled: too big"));

    // Mistakes get a message that says what to do.
    let (ok, out) = cli(&["describe", "nope", "-n", ns]);
    assert!(!ok && out.contains("no BatchJob nope"), "{out}");

    // The same binary is the kubectl plugin.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin");
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("kubectl-barge");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_barge"), &plugin).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let out =
        std::process::Command::new("kubectl").args(["barge", "queues"]).env("PATH", path).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&q));
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_privileged_pod_template_in_a_restricted_namespace_fails_the_job_with_pod_securitys_words() {
    let e = env("psa").await;
    // Pod Security Admission enforces `restricted` on the namespace's pods, Barge's included.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(e.client.clone());
    let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&e.ns, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label))
        .await
        .unwrap();
    let ce = e.ce("ce", json!({"instanceTypes": ["m6i"], "maxvCpus": 8})).await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    // Privileged in the ways the API server itself allows (`privileged: true` it refuses
    // outright unless started with --allow-privileged): the host's PIDs and a capability.
    let privileged = json!({"spec": {"hostPID": true, "containers": [{
        "name": "main", "image": "busybox",
        "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}
    }]}});
    e.job(
        "root",
        &q,
        1.0,
        runs(1),
        json!({"container": null, "podTemplate": privileged, "retryStrategy": {"attempts": 3}}),
    )
    .await;
    let failed = e.wait_phase("root", JobPhase::Failed).await.status.unwrap();
    let why = failed.status_reason.unwrap_or_default();
    assert!(why.starts_with("The cluster refused the job's pod root-"), "{why}");
    assert!(why.contains("violates PodSecurity \"restricted:latest\""), "{why}");
    assert!(failed.attempts.is_empty(), "no attempt ran: {:?}", failed.attempts);
    let events: Api<Event> = Api::namespaced(e.client.clone(), &e.ns);
    let warned = eventually("a Warning event on the job", WAIT, || async {
        let lp = ListParams::default().fields("involvedObject.name=root");
        let list = events.list(&lp).await.ok()?;
        list.items.into_iter().find(|ev| ev.type_.as_deref() == Some("Warning"))
    })
    .await;
    assert!(warned.message.unwrap_or_default().contains("PodSecurity"));
    e.cleanup(&[&ce]).await;
}
