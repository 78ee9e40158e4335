//! The local test bed is real: kwok nodes become Ready, kube-scheduler binds pods, kwok
//! drives them to their exit codes, the Job controller runs, and moto answers EC2.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn kwok_node_becomes_ready_with_the_capacity_it_was_given() {
    let client = client().await;
    let name = format!("tb-ready-{}", suffix());
    kwok_node(&client, &name, "4", "16Gi", BTreeMap::new()).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node =
        eventually("node Ready", WAIT, || async { nodes.get(&name).await.ok().filter(node_is_ready) }).await;
    let alloc = node.status.unwrap().allocatable.unwrap();
    assert_eq!(alloc["cpu"].0, "4");
    delete_node(&client, &name).await;
}

fn sim_pod(name: &str, node_label: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"testbed": node_label},
            "containers": [{"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn kwok_pods_run_for_their_duration_and_exit_with_their_code() {
    let client = client().await;
    let ns = namespace(&client, "tb-pods").await;
    let node = format!("tb-pods-{}", suffix());
    kwok_node(&client, &node, "8", "32Gi", BTreeMap::from([("testbed".into(), node.clone())])).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &sim_pod("ok", &node, json!({"sim.barge.dev/duration": "2s"})))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &sim_pod("fails", &node, json!({"sim.barge.dev/duration": "2s", "sim.barge.dev/exit-code": "3"})),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &sim_pod("forever", &node, json!({}))).await.unwrap();

    // kube-scheduler binds it and kwok starts it.
    let running = eventually("pod ok Running", WAIT, || async {
        pods.get("ok")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    assert_eq!(running.spec.unwrap().node_name.as_deref(), Some(node.as_str()));

    let phase_of = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let done = eventually("pod ok Succeeded", WAIT, || async {
        pods.get("ok").await.ok().filter(|p| phase_of(p) == "Succeeded")
    })
    .await;
    let started = done.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(started.exit_code, 0);
    let ran_ms =
        started.finished_at.unwrap().0.as_millisecond() - started.started_at.unwrap().0.as_millisecond();
    assert!(ran_ms >= 1500, "ran for {ran_ms} ms, expected about 2 s");

    let failed = eventually("pod fails Failed", WAIT, || async {
        pods.get("fails").await.ok().filter(|p| phase_of(p) == "Failed")
    })
    .await;
    let term =
        failed.status.unwrap().container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(term.exit_code, 3);
    assert_eq!(term.reason.as_deref(), Some("Error"));

    // Without the annotations a pod runs until deleted.
    assert_eq!(phase_of(&pods.get("forever").await.unwrap()), "Running");
    delete_node(&client, &node).await;
}

#[tokio::test]
async fn batch_v1_job_completes_under_the_controller_manager() {
    let client = client().await;
    let ns = namespace(&client, "tb-job").await;
    let node = format!("tb-job-{}", suffix());
    kwok_node(&client, &node, "8", "32Gi", BTreeMap::from([("testbed".into(), node.clone())])).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "baseline"},
        "spec": {
            "completions": 2, "parallelism": 2, "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"sim.barge.dev/duration": "1s"}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"testbed": node},
                    "containers": [{"name": "main", "image": "busybox"}]
                }
            }
        }
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    eventually("Job complete", WAIT, || async {
        let j = jobs.get("baseline").await.ok()?;
        (j.status?.succeeded? == 2).then_some(())
    })
    .await;
    delete_node(&client, &node).await;
}

#[tokio::test]
async fn ec2_instances_run_describe_and_terminate_against_moto() {
    let ec2 = common::ec2::moto().await;
    let tag = format!("testbed-{}", suffix());
    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::M6iLarge)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(aws_sdk_ec2::types::Tag::builder().key("barge.dev/test").value(&tag).build())
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let id = run.instances()[0].instance_id().unwrap().to_string();

    let described = ec2
        .describe_instances()
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:barge.dev/test").values(&tag).build())
        .send()
        .await
        .unwrap();
    let found: Vec<_> = described.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].instance_id(), Some(id.as_str()));
    assert_eq!(found[0].instance_type(), Some(&InstanceType::M6iLarge));

    ec2.terminate_instances().instance_ids(&id).send().await.unwrap();
    let after = ec2.describe_instances().instance_ids(&id).send().await.unwrap();
    let state = after.reservations()[0].instances()[0].state().unwrap().name().unwrap().clone();
    assert!(matches!(state.as_str(), "shutting-down" | "terminated"), "{state:?}");
}
