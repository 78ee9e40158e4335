//! Barge can be killed at any moment and started again: every job ends exactly once and
//! no pod name is ever used for two pods.

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

#[tokio::test]
async fn operator_killed_mid_run_and_restarted_finishes_every_job_once() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "restart").await;
    let tag = format!("restart-{}", suffix());
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    let queues: Api<JobQueue> = Api::all(client.clone());
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    apply(
        &ces,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": tag},
        "spec": {"instanceTypes": ["m6i.xlarge"], "maxvCpus": 8, "scaleDownDelaySeconds": 5}}),
    )
    .await
    .unwrap();
    apply(
        &queues,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": tag},
        "spec": {"computeEnvironmentOrder": [{"order": 1, "computeEnvironment": tag}]}}),
    )
    .await
    .unwrap();

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
