//! Job definitions on the local control plane: revisions from applies, jobs pinned to one,
//! `Ref::` parameters, overrides, the AWS Batch environment and tags on the pods, clear
//! failures for a missing or INACTIVE definition, and revisions that hold across a restart.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use barge::api::batch_job::JobPhase;
use barge::api::{BatchJob, ComputeEnvironment, JobDefinition, JobQueue};
use common::*;
use k8s_openapi::api::core::v1::{Container, Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

/// Each test runs an operator of its own: one at a time, or they would share the work.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    tag: String,
    ces: Api<ComputeEnvironment>,
    queues: Api<JobQueue>,
    jobs: Api<BatchJob>,
    defs: Api<JobDefinition>,
    pods: Api<Pod>,
    events: Api<Event>,
}

async fn setup(prefix: &str, queue_state: &str) -> Setup {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    let tag = format!("{prefix}-{}", suffix());
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    let queues: Api<JobQueue> = Api::all(client.clone());
    apply(&ces, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
        "metadata": {"name": tag}, "spec": {"instanceTypes": ["m6i.xlarge"], "maxvCpus": 8, "scaleDownDelaySeconds": 5}}))
    .await
    .unwrap();
    apply(&queues, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": tag},
        "spec": {"state": queue_state, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": tag}]}}))
    .await
    .unwrap();
    Setup {
        tag,
        ces,
        queues,
        jobs: Api::namespaced(client.clone(), &ns),
        defs: Api::namespaced(client.clone(), &ns),
        pods: Api::namespaced(client.clone(), &ns),
        events: Api::namespaced(client, &ns),
    }
}

impl Setup {
    async fn teardown(&self) {
        let _ = self.queues.delete(&self.tag, &DeleteParams::default()).await;
        let _ = self.ces.delete(&self.tag, &DeleteParams::default()).await;
    }

    async fn define(&self, name: &str, spec: serde_json::Value) {
        apply(
            &self.defs,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobDefinition",
            "metadata": {"name": name}, "spec": spec}),
        )
        .await
        .unwrap();
    }

    async fn revision(&self, name: &str, revision: u32) {
        eventually(&format!("{name} at revision {revision}"), WAIT, || async {
            let d = self.defs.get(name).await.ok()?;
            (d.status?.revision == revision).then_some(())
        })
        .await;
    }

    async fn submit(&self, name: &str, spec: serde_json::Value) {
        let mut spec = spec;
        spec["jobQueue"] = json!(self.tag);
        apply(
            &self.jobs,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": name, "annotations": {"sim.barge.dev/duration": "1s"}}, "spec": spec}),
        )
        .await
        .unwrap();
    }

    async fn ends(&self, name: &str, phase: JobPhase) -> BatchJob {
        eventually(&format!("{name} {}", phase.as_str()), Duration::from_secs(90), || async {
            let j = self.jobs.get(name).await.ok()?;
            let s = j.status.as_ref()?;
            s.phase.is_finished().then_some(())?;
            assert_eq!(s.phase, phase, "{name}: {:?}", s.status_reason);
            Some(j)
        })
        .await
    }

    /// The main container of the job's first attempt (of child `index` for an array).
    async fn container(&self, job: &BatchJob, index: Option<u32>) -> (Container, BTreeMap<String, String>) {
        let uid = job.uid().unwrap();
        let mut selector = format!("barge.dev/job-uid={uid},barge.dev/attempt=1");
        if let Some(i) = index {
            selector.push_str(&format!(",barge.dev/array-index={i}"));
        }
        let pods = self.pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
        assert_eq!(pods.len(), 1, "one pod for {} attempt 1 ({selector})", job.name_any());
        let pod = &pods[0];
        (pod.spec.clone().unwrap().containers[0].clone(), pod.labels().clone())
    }
}

fn env(c: &Container) -> BTreeMap<String, String> {
    c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
}

fn render(image: &str) -> serde_json::Value {
    json!({
        "container": {
            "image": image,
            "command": ["render", "--frame", "Ref::frame", "--codec=Ref::codec", "Ref::unset"],
            "env": [{"name": "QUALITY", "value": "draft"}],
            "resources": {"vcpus": 1, "memory": "1Gi"}
        },
        "parameters": {"codec": "h264", "frame": "1"},
        "retryStrategy": {"attempts": 2},
        "tags": {"team": "film", "cost centre": "vfx 7"},
        "propagateTags": true,
        "schedulingPriority": 3
    })
}

#[tokio::test]
async fn revisions_parameters_overrides_and_the_aws_batch_environment_reach_the_pods() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup("jd", "ENABLED").await;
    let mut operator = spawn_operator("definitions");

    // Two applies, two revisions; a change of state alone is none.
    s.define("render", render("busybox:1.36")).await;
    s.revision("render", 1).await;
    s.define("render", render("busybox:1.37")).await;
    s.revision("render", 2).await;
    let d = s.defs.get("render").await.unwrap();
    let listed: Vec<(u32, Option<String>)> =
        d.status.unwrap().revisions.into_iter().map(|r| (r.revision, r.image)).collect();
    assert_eq!(listed, [(1, Some("busybox:1.36".into())), (2, Some("busybox:1.37".into()))]);

    s.submit("latest", json!({"jobDefinition": "render", "parameters": {"frame": "42"}})).await;
    s.submit("pinned", json!({"jobDefinition": "render:1"})).await;
    s.submit(
        "overridden",
        json!({"jobDefinition": "render", "parameters": {"codec": "av1"},
        "containerOverrides": {"command": ["sh", "-c", "echo Ref::codec"], "vcpus": 2, "memory": "3Gi",
            "environment": [{"name": "QUALITY", "value": "final"}, {"name": "SHOT", "value": "43"}]},
        "tags": {"team": "lighting"}, "propagateTags": false, "retryStrategy": {"attempts": 1}}),
    )
    .await;
    s.submit("children", json!({"jobDefinition": "render", "array": {"size": 3}})).await;

    let latest = s.ends("latest", JobPhase::Succeeded).await;
    assert_eq!(latest.status.as_ref().unwrap().job_definition.as_deref(), Some("render:2"));
    let (c, labels) = s.container(&latest, None).await;
    assert_eq!(c.image.as_deref(), Some("busybox:1.37"));
    // The job's parameter wins, the definition's default fills the rest, an unknown stays.
    assert_eq!(c.command.clone().unwrap(), ["render", "--frame", "42", "--codec=h264", "Ref::unset"]);
    let vars = env(&c);
    assert_eq!(vars["QUALITY"], "draft");
    assert_eq!(vars["AWS_BATCH_JOB_ID"], latest.name_any(), "the id the Batch API gives the job");
    assert_eq!(vars["AWS_BATCH_JOB_ATTEMPT"], "1");
    assert_eq!(vars["AWS_BATCH_JQ_NAME"], s.tag);
    assert_eq!(vars["AWS_BATCH_CE_NAME"], s.tag);
    assert!(!vars.contains_key("AWS_BATCH_JOB_ARRAY_INDEX"));
    assert_eq!(labels["team"], "film");
    assert_eq!(labels["tag.barge.dev/cost_centre"], "vfx_7");

    // Pinned to revision 1 after revision 2 exists: revision 1's image.
    let pinned = s.ends("pinned", JobPhase::Succeeded).await;
    assert_eq!(pinned.status.as_ref().unwrap().job_definition.as_deref(), Some("render:1"));
    let (c, _) = s.container(&pinned, None).await;
    assert_eq!(c.image.as_deref(), Some("busybox:1.36"));
    assert_eq!(c.command.unwrap(), ["render", "--frame", "1", "--codec=h264", "Ref::unset"]);

    // The job's values win over the definition's.
    let over = s.ends("overridden", JobPhase::Succeeded).await;
    let (c, labels) = s.container(&over, None).await;
    assert_eq!(c.command.clone().unwrap(), ["sh", "-c", "echo Ref::codec"]);
    assert!(c.args.is_none());
    let requests = c.resources.clone().unwrap().requests.unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("2", "3Gi"),
        "the API server writes quantities canonically"
    );
    let vars = env(&c);
    assert_eq!((vars["QUALITY"].as_str(), vars["SHOT"].as_str()), ("final", "43"));
    assert_eq!(labels["team"], "lighting");
    assert!(
        !labels.contains_key("tag.barge.dev/cost_centre"),
        "propagateTags: false keeps the definition's tags off"
    );

    // Array children: the AWS Batch ids and index, from the definition's container.
    let children = s.ends("children", JobPhase::Succeeded).await;
    let (c, _) = s.container(&children, Some(2)).await;
    let vars = env(&c);
    assert_eq!(vars["AWS_BATCH_JOB_ID"], format!("{}:2", children.name_any()));
    assert_eq!(vars["AWS_BATCH_JOB_ARRAY_INDEX"], "2");
    assert_eq!(vars["AWS_BATCH_JOB_ARRAY_SIZE"], "3");
    assert_eq!(c.image.as_deref(), Some("busybox:1.37"));

    // The API server refuses a reserved variable and a job that names two kinds of work.
    let refused = apply(
        &s.jobs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": "reserved"}, "spec": {"jobQueue": s.tag, "container": {"image": "busybox",
        "env": [{"name": "AWS_BATCH_JOB_ID", "value": "x"}]}}}),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("AWS_BATCH_* are reserved"), "{refused}");
    let refused = apply(
        &s.jobs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": "both"}, "spec": {"jobQueue": s.tag, "jobDefinition": "render",
        "container": {"image": "busybox"}}}),
    )
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("exactly one of container, podTemplate, nodeProperties or jobDefinition"),
        "{refused}"
    );

    operator.kill().unwrap();
    let _ = operator.wait();
    s.teardown().await;
}

#[tokio::test]
async fn a_missing_revision_and_an_inactive_definition_fail_their_jobs_with_the_reason() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup("jd-bad", "ENABLED").await;
    let mut operator = spawn_operator("definitions-bad");
    s.define("render", render("busybox:1.36")).await;
    s.revision("render", 1).await;

    // A revision that does not exist: the job says what it waits for, then fails.
    s.submit("seven", json!({"jobDefinition": "render:7"})).await;
    eventually("seven waits for its definition", WAIT, || async {
        let s = s.jobs.get("seven").await.ok()?.status?;
        (s.phase == JobPhase::Submitted
            && s.status_reason.as_deref() == Some("Waiting for job definition render:7 (does not exist yet)"))
        .then_some(())
    })
    .await;
    let seven = s.ends("seven", JobPhase::Failed).await;
    assert_eq!(
        seven.status.unwrap().status_reason.as_deref(),
        Some("Job definition render:7 does not exist")
    );

    // Deregistered: new jobs fail at once; one already pinned keeps its revision and runs.
    s.submit("before", json!({"jobDefinition": "render"})).await;
    s.ends("before", JobPhase::Succeeded).await;
    let mut inactive = render("busybox:1.36");
    inactive["state"] = json!("INACTIVE");
    s.define("render", inactive).await;
    eventually("render INACTIVE", WAIT, || async {
        let st = s.defs.get("render").await.ok()?.status?;
        (st.status == Some(barge::api::job_definition::DefinitionState::Inactive) && st.revision == 1)
            .then_some(())
    })
    .await;
    s.submit("after", json!({"jobDefinition": "render"})).await;
    let after = s.ends("after", JobPhase::Failed).await;
    assert_eq!(after.status.unwrap().status_reason.as_deref(), Some("Job definition render is INACTIVE"));
    for job in ["seven", "after"] {
        eventually(&format!("a Warning event for {job}"), WAIT, || async {
            let lp = ListParams::default().fields(&format!("involvedObject.name={job}"));
            let list = s.events.list(&lp).await.ok()?.items;
            list.iter()
                .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("Failed"))
                .then_some(())
        })
        .await;
    }

    operator.kill().unwrap();
    let _ = operator.wait();
    s.teardown().await;
}

#[tokio::test]
async fn a_restart_changes_no_jobs_revision_and_a_deleted_definition_waits_for_its_jobs() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The queue holds the jobs: each fixes its revision, and none has a pod yet.
    let s = setup("jd-restart", "DISABLED").await;
    let mut operator = spawn_operator("definitions-restart");
    s.define("render", render("busybox:1.36")).await;
    s.revision("render", 1).await;
    for i in 0..5 {
        s.submit(
            &format!("held-{i}"),
            json!({"jobDefinition": "render", "parameters": {"frame": i.to_string()}}),
        )
        .await;
    }
    eventually("every held job resolved render:1", WAIT, || async {
        let jobs = s.jobs.list(&ListParams::default()).await.ok()?.items;
        (jobs.len() == 5
            && jobs
                .iter()
                .all(|j| j.status.as_ref().and_then(|s| s.job_definition.as_deref()) == Some("render:1")))
        .then_some(())
    })
    .await;

    // Barge stops; the definition changes meanwhile; Barge starts again.
    operator.kill().unwrap();
    let _ = operator.wait();
    s.define("render", render("busybox:1.37")).await;
    let mut operator = spawn_operator("definitions-restart");
    s.revision("render", 2).await;
    apply(&s.queues, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": s.tag},
        "spec": {"state": "ENABLED", "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": s.tag}]}}))
    .await
    .unwrap();
    for i in 0..5 {
        let job = s.ends(&format!("held-{i}"), JobPhase::Succeeded).await;
        assert_eq!(job.status.as_ref().unwrap().job_definition.as_deref(), Some("render:1"));
        let (c, _) = s.container(&job, None).await;
        assert_eq!(c.image.as_deref(), Some("busybox:1.36"), "held-{i} runs the revision it resolved");
        assert_eq!(c.command.unwrap()[2], i.to_string());
    }

    // Deleting the definition waits for the unfinished jobs that run its revisions.
    apply(&s.queues, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": s.tag},
        "spec": {"state": "DISABLED", "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": s.tag}]}}))
    .await
    .unwrap();
    s.submit("last", json!({"jobDefinition": "render:2"})).await;
    eventually("last resolved render:2", WAIT, || async {
        let st = s.jobs.get("last").await.ok()?.status?;
        (st.job_definition.as_deref() == Some("render:2")).then_some(())
    })
    .await;
    s.defs.delete("render", &DeleteParams::default()).await.unwrap();
    eventually("the deleted definition says why it stays", WAIT, || async {
        let d = s.defs.get("render").await.ok()?;
        let c = d.status?.conditions.into_iter().find(|c| c.type_ == "Deleting")?;
        c.message.contains("1 unfinished job").then_some(())
    })
    .await;
    apply(&s.queues, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": s.tag},
        "spec": {"state": "ENABLED", "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": s.tag}]}}))
    .await
    .unwrap();
    let last = s.ends("last", JobPhase::Succeeded).await;
    let (c, _) = s.container(&last, None).await;
    assert_eq!(c.image.as_deref(), Some("busybox:1.37"));
    eventually("the definition goes once its last job ended", WAIT, || async {
        s.defs.get_opt("render").await.ok()?.is_none().then_some(())
    })
    .await;

    operator.kill().unwrap();
    let _ = operator.wait();
    s.teardown().await;
}

#[tokio::test]
async fn the_api_server_refuses_what_a_pod_cannot_honour_and_a_role_waits_for_its_account() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup("jd-aws", "ENABLED").await;
    // Refused by the API server's rules, each naming its field; nothing is stored.
    for (extra, words) in [
        (json!({"ulimits": [{"name": "nofile", "softLimit": 1, "hardLimit": 2}]}), "ulimits cannot be set"),
        (json!({"user": "nobody"}), "numeric UID"),
        (json!({"linuxParameters": {"devices": [{"hostPath": "/dev/fuse"}]}}), "needs privileged"),
        (json!({"linuxParameters": {"maxSwap": 512}}), "maxSwap above 0"),
        (
            json!({"mountPoints": [{"containerPath": "/d", "sourceVolume": "nope"}]}),
            "must name one of container.volumes",
        ),
        (
            json!({"volumes": [{"name": "e", "efsVolumeConfiguration": {"fileSystemId": "fs-12345678", "transitEncryption": "ENABLED"}}]}),
            "transitEncryption ENABLED",
        ),
        (json!({"jobRoleArn": "etl"}), "jobRoleArn must be an IAM role ARN"),
    ] {
        let mut spec = render("busybox:1.36");
        spec["container"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let refused = apply(
            &s.defs,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobDefinition", "metadata": {"name": "refused"}, "spec": spec}),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(refused.contains(words), "{words}: {refused}");
    }
    let task = json!({"task": {"containers": [{"name": "a", "image": "i", "essential": false}]}});
    let refused = apply(
        &s.defs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobDefinition", "metadata": {"name": "refused"}, "spec": task}),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("at least one essential container"), "{refused}");
    // A multi-node range runs a container or a pod (AWS Batch on EKS's ranges), not both.
    let both = json!({"nodeProperties": {"numNodes": 1, "nodeRangeProperties": [{"targetNodes": "0",
        "container": {"image": "i"}, "podTemplate": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}]}});
    let refused = apply(
        &s.defs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobDefinition", "metadata": {"name": "refused"}, "spec": both}),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("exactly one of container or podTemplate"), "{refused}");
    assert!(s.defs.get_opt("refused").await.unwrap().is_none());

    // A role no ServiceAccount of the namespace is bound to: the job waits, saying what to
    // make; once the namespace's owner binds one, the pod runs as it.
    let mut operator = spawn_operator("definitions-aws");
    let role = "arn:aws:iam::123456789012:role/render";
    let mut spec = render("busybox:1.36");
    spec["container"]["jobRoleArn"] = json!(role);
    spec["container"]["linuxParameters"] = json!({"sharedMemorySize": 128});
    s.define("roled", spec).await;
    s.revision("roled", 1).await;
    s.submit("as-role", json!({"jobDefinition": "roled"})).await;
    eventually("as-role waits for a ServiceAccount of its role", WAIT, || async {
        let st = s.jobs.get("as-role").await.ok()?.status?;
        (st.phase == JobPhase::Runnable
            && st
                .status_reason
                .as_deref()
                .is_some_and(|r| r.contains(role) && r.contains("eks.amazonaws.com/role-arn")))
        .then_some(())
    })
    .await;
    eventually("a Misconfiguration warning for as-role", WAIT, || async {
        let lp = ListParams::default().fields("involvedObject.name=as-role");
        let list = s.events.list(&lp).await.ok()?.items;
        list.iter()
            .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("Misconfiguration"))
            .then_some(())
    })
    .await;
    let ns = s.jobs.namespace().unwrap().to_string();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client().await, &ns);
    let sa = serde_json::from_value(
        json!({"metadata": {"name": "render", "annotations": {"eks.amazonaws.com/role-arn": role}}}),
    )
    .unwrap();
    accounts.create(&Default::default(), &sa).await.unwrap();
    let job = s.ends("as-role", JobPhase::Succeeded).await;
    let pods = s
        .pods
        .list(&ListParams::default().labels(&format!("barge.dev/job-uid={}", job.uid().unwrap())))
        .await
        .unwrap();
    let spec = pods.items[0].spec.clone().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("render"));
    let shm = spec.volumes.unwrap().into_iter().find(|v| v.name == "dev-shm").unwrap();
    assert_eq!(shm.empty_dir.unwrap().size_limit.unwrap().0, "128Mi");
    operator.kill().unwrap();
    let _ = operator.wait();
    s.teardown().await;
}
