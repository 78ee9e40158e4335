//! Barge can be killed at any moment and started again: every job ends exactly once, no
//! pod name is ever used for two pods, and fair-share usage carries on from where it was.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use barge::api::batch_job::JobPhase;
use barge::api::{BatchJob, ComputeEnvironment, JobQueue, LABEL_JOB_UID};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

const JOBS: usize = 30;

/// Each test runs an operator of its own: one at a time, or they would share the work.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's namespace, and a compute environment and queue named after it (the queue
/// sends its jobs to the environment; `queue_spec` adds to its spec).
struct Corner {
    tag: String,
    ces: Api<ComputeEnvironment>,
    queues: Api<JobQueue>,
    jobs: Api<BatchJob>,
    pods: Api<Pod>,
}

async fn corner(prefix: &str, ce_spec: serde_json::Value, queue_spec: serde_json::Value) -> Corner {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    let tag = format!("{prefix}-{}", suffix());
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    let queues: Api<JobQueue> = Api::all(client.clone());
    apply(
        &ces,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
        "metadata": {"name": tag}, "spec": ce_spec}),
    )
    .await
    .unwrap();
    let mut spec = json!({"computeEnvironmentOrder": [{"order": 1, "computeEnvironment": tag}]});
    spec.as_object_mut().unwrap().extend(queue_spec.as_object().cloned().unwrap_or_default());
    apply(
        &queues,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue",
        "metadata": {"name": tag}, "spec": spec}),
    )
    .await
    .unwrap();
    Corner {
        tag,
        ces,
        queues,
        jobs: Api::namespaced(client.clone(), &ns),
        pods: Api::namespaced(client, &ns),
    }
}

#[tokio::test]
async fn operator_killed_mid_run_and_restarted_finishes_every_job_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let spec = json!({"instanceTypes": ["m6i.xlarge"], "maxvCpus": 8, "scaleDownDelaySeconds": 5});
    let Corner { tag, ces, jobs, pods, .. } = corner("restart", spec, json!({})).await;

    let mut operator = spawn_operator("restart");
    for i in 0..JOBS {
        // Staggered runtimes so that the kill lands while jobs are in every phase.
        let secs = 1 + i % 4;
        apply(&jobs, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": format!("j{i}"), "annotations": {"sim.barge.dev/duration": format!("{secs}s")}},
            "spec": {"jobQueue": tag, "container": {"image": "busybox", "resources": {"vcpus": 1, "memory": "1Gi"}}}}))
        .await
        .unwrap();
    }
    // Kill it once some jobs have finished and others have not.
    eventually("some jobs finished", Duration::from_secs(90), || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        let done =
            list.items.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        (3..JOBS).contains(&done).then_some(())
    })
    .await;
    operator.kill().unwrap();
    operator.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut operator = spawn_operator("restart");

    let list = eventually("every job SUCCEEDED", Duration::from_secs(180), || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded))
            .then_some(list)
    })
    .await;
    let all_pods = pods.list(&ListParams::default().labels(LABEL_JOB_UID)).await.unwrap();
    let mut per_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &all_pods.items {
        per_job.entry(p.labels()[LABEL_JOB_UID].clone()).or_default().push(p.name_any());
    }
    for job in &list.items {
        let s = job.status.as_ref().unwrap();
        assert_eq!(s.attempts.len(), 1, "{} ran once: {:?}", job.name_any(), s.attempts);
        let names = &per_job[&job.uid().unwrap()];
        assert_eq!(names, &vec![s.attempts[0].pod_name.clone()], "one pod per job, the attempt's");
        assert!(names[0].ends_with("-1"), "the first attempt is attempt 1: {}", names[0]);
    }
    let _ = ces.delete(&tag, &DeleteParams::default()).await;
    operator.kill().unwrap();
    operator.wait().unwrap();
}

#[tokio::test]
async fn fair_share_usage_from_before_a_restart_still_counts_after_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Fifteen 1-vCPU slots (c6i.4xlarge: 15.8 allocatable vCPUs); usage halves every 20 s;
    // gold weighs 1 and bronze 2, so from zero gold gets two admissions in three.
    let Corner { tag, ces, queues, jobs, pods } = corner(
        "share-restart",
        json!({"instanceTypes": ["c6i.4xlarge"], "minvCpus": 16, "maxvCpus": 16}),
        json!({"fairShare": {"shareDecaySeconds": 20, "shareDistribution": [
            {"shareIdentifier": "gold", "weightFactor": 1.0}, {"shareIdentifier": "bronze", "weightFactor": 2.0}]}}),
    )
    .await;
    let job = |share: &str, i: usize| {
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": format!("{share}-{i:03}"), "annotations": {"sim.barge.dev/duration": "5s"}},
            "spec": {"jobQueue": tag, "shareIdentifier": share,
                     "container": {"image": "busybox", "resources": {"vcpus": 1, "memory": "1Gi"}}}})
    };
    let recorded = || async {
        let usage = queues.get(&tag).await.ok()?.status?.fair_share_usage?;
        Some((usage.recorded_at, usage.vcpu_seconds.get("gold").copied().unwrap_or(0.0)))
    };

    // gold alone runs long enough to build up usage, and the queue's status records it.
    let mut operator = spawn_operator("share-restart");
    for i in 0..200 {
        apply(&jobs, job("gold", i)).await.unwrap();
    }
    let (at, _) =
        eventually("gold's usage recorded in the queue's status", Duration::from_secs(120), || async {
            recorded().await.filter(|(_, gold)| *gold >= 200.0)
        })
        .await;
    // Killed just after a fresh record, so that little usage goes unrecorded.
    let (_, gold_recorded) = eventually("the next record", Duration::from_secs(30), || async {
        recorded().await.filter(|(a, _)| *a > at)
    })
    .await;
    operator.kill().unwrap();
    operator.wait().unwrap();
    let killed = chrono::Utc::now();

    // bronze arrives while Barge is down. Once gold's running pods are done, Barge starts
    // again with every slot free: its first pass orders both shares by their usage.
    for i in 0..40 {
        apply(&jobs, job("bronze", i)).await.unwrap();
    }
    eventually("gold's last pods done", Duration::from_secs(30), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded"))
            .then_some(())
    })
    .await;
    let before: std::collections::HashSet<String> =
        pods.list(&ListParams::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    let mut operator = spawn_operator("share-restart");
    let first_wave =
        eventually("the first admissions after the restart", Duration::from_secs(60), || async {
            let mut after: Vec<Pod> = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| !before.contains(&p.name_any()))
                .collect();
            after.sort_by_key(|p| p.creation_timestamp());
            // The first pass fills every slot at once; the next pods come as those end, 5 s on.
            let first = after.first()?.creation_timestamp()?.0;
            let wave: Vec<Pod> = after
                .into_iter()
                .filter(|p| p.creation_timestamp().is_some_and(|t| t.0.as_second() - first.as_second() <= 2))
                .collect();
            (wave.len() >= 15).then_some(wave)
        })
        .await;
    let count = |share: &str| {
        first_wave
            .iter()
            .filter(|p| p.labels().get("barge.dev/share").map(String::as_str) == Some(share))
            .count()
    };
    let (gold, bronze) = (count("gold"), count("bronze"));
    eprintln!(
        "first pass after the restart: gold {gold}, bronze {bronze} (gold had {gold_recorded} vCPU-s recorded)"
    );
    // Carried over, gold's usage (about 10 vCPUs' worth against bronze's 0) hands bronze
    // most of that pass (about 9 of 15); begun from zero, gold would take 10 of 15.
    assert!(bronze > gold, "gold's usage from before the restart was lost: gold {gold}, bronze {bronze}");
    // And the usage went on from the record: the next record still holds gold's past.
    let (_, gold_now) = eventually("a record by the restarted Barge", Duration::from_secs(30), || async {
        recorded().await.filter(|(a, _)| *a > killed)
    })
    .await;
    assert!(
        gold_now >= gold_recorded * 0.25,
        "gold {gold_now} vCPU-s after the restart, {gold_recorded} before"
    );

    let _ = jobs.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
    let _ = ces.delete(&tag, &DeleteParams::default()).await;
    let _ = queues.delete(&tag, &DeleteParams::default()).await;
    operator.kill().unwrap();
    operator.wait().unwrap();
}
