//! Multi-node parallel jobs on the local control plane: the main node first, then the
//! others with AWS Batch's variables, each node on a node of its own; the main node's exit
//! decides; a child's failure alone retries nothing, a main node's retries the whole gang;
//! a timeout stops every node; two gangs that do not fit together run one after the other,
//! never in part; a gang that waited its turn holds nodes as they drain, and says so.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use barge::api::batch_job::{JobPhase, node_pod_name};
use barge::api::{BatchJob, JobDefinition};
use common::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

struct Gang {
    env: Env,
    ce: String,
    queue: String,
    pods: Api<Pod>,
}

/// An operator for this process's tests that holds nodes for a gang after 5 s (10 min by
/// default), so that the hold can be watched.
async fn gang_operator(client: &kube::Client) {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    install_crds(client).await;
    STARTED.get_or_init(|| spawn_operator_for_process("multinode", &[("BARGE_TUNE", "gang_hold_after=5s")]));
}

async fn gang_env(prefix: &str, max_vcpus: u32) -> Gang {
    let client = client().await;
    gang_operator(&client).await;
    let env = Env::new(client.clone(), prefix).await;
    let ce = env
        .ce("ce", json!({"instanceTypes": ["m6i.large"], "maxvCpus": max_vcpus, "scaleDownDelaySeconds": 5}))
        .await;
    let queue = env.queue("q", 1, "ENABLED", &[&ce]).await;
    let pods = Api::namespaced(client, &env.ns);
    Gang { env, ce, queue, pods }
}

impl Gang {
    async fn submit(&self, name: &str, annotations: Value, spec: Value) {
        let mut spec = spec;
        spec["jobQueue"] = json!(self.queue);
        apply(
            &self.env.jobs,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": name, "annotations": annotations}, "spec": spec}),
        )
        .await
        .unwrap();
    }

    async fn ends(&self, name: &str) -> BatchJob {
        eventually(&format!("{name} to end"), Duration::from_secs(120), || async {
            let j = self.env.jobs.get(name).await.ok()?;
            j.status.as_ref()?.phase.is_finished().then_some(j)
        })
        .await
    }

    async fn pods_of(&self, job: &BatchJob) -> Vec<Pod> {
        let selector = format!("barge.dev/job-uid={}", job.uid().unwrap());
        self.pods.list(&ListParams::default().labels(&selector)).await.unwrap().items
    }

    /// Waits until no pod of `job` runs on (ended, or being deleted).
    async fn all_stopped(&self, job: &BatchJob, what: &str) {
        eventually(what, WAIT, || async {
            let running = self.pods_of(job).await.into_iter().any(|p| {
                let ended = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                !ended && p.metadata.deletion_timestamp.is_none()
            });
            (!running).then_some(())
        })
        .await
    }
}

fn nodes(num: u32, ranges: Value) -> Value {
    json!({"numNodes": num, "mainNode": 0, "nodeRangeProperties": ranges})
}

fn container(image: &str) -> Value {
    json!({"image": image, "resources": {"vcpus": 1, "memory": "1Gi"}})
}

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    let c = &pod.spec.as_ref().unwrap().containers[0];
    c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
}

#[tokio::test]
async fn the_main_node_starts_first_the_others_get_its_address_and_its_exit_decides() {
    let g = gang_env("mnp", 8).await;
    let defs: Api<JobDefinition> = Api::namespaced(g.env.client.clone(), &g.env.ns);
    apply(
        &defs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobDefinition", "metadata": {"name": "mpi"},
        "spec": {"nodeProperties": nodes(4, json!([
            {"targetNodes": "0", "container": container("mpi-main:1")},
            {"targetNodes": "1:", "container": container("mpi-worker:1")}]))}}),
    )
    .await
    .unwrap();
    // Node 2 fails early; the main node runs on, and succeeds.
    let sim = json!({"sim.barge.dev/duration": "2s", "sim.barge.dev/main-duration": "6s",
        "sim.barge.dev/fail-indexes": "2"});
    g.submit("mpi", sim, json!({"jobDefinition": "mpi"})).await;

    // While it runs: a headless Service for the nodes, and `nodes 4/4` in status.
    let running = eventually("all four nodes running", WAIT, || async {
        let j = g.env.jobs.get("mpi").await.ok()?;
        let m = j.status.as_ref()?.multi_node.as_ref()?;
        (m.progress == "4/4 running").then_some(j)
    })
    .await;
    let uid = running.uid().unwrap();
    let services: Api<Service> = Api::namespaced(g.env.client.clone(), &g.env.ns);
    let svc = services.get(&barge::api::batch_job::job_service_name("mpi", &uid)).await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    let job = g.ends("mpi").await;
    let s = job.status.clone().unwrap();
    assert_eq!(s.phase, JobPhase::Succeeded, "{:?}", s.status_reason);
    assert_eq!(s.attempts.len(), 1, "a child's failure is no reason to retry");
    assert_eq!(s.attempts[0].pod_name, node_pod_name("mpi", &uid, 0, 0));
    let m = s.multi_node.unwrap();
    let failed: Vec<u32> = m.nodes.iter().filter(|n| n.phase == JobPhase::Failed).map(|n| n.index).collect();
    assert_eq!(failed, [2]);

    let pods = g.pods_of(&job).await;
    assert_eq!(pods.len(), 4, "one pod per node, no duplicates");
    let by_index: BTreeMap<u32, &Pod> =
        pods.iter().map(|p| (p.labels()["barge.dev/node-index"].parse().unwrap(), p)).collect();
    let main = by_index[&0];
    let main_ip = main.status.as_ref().and_then(|s| s.pod_ip.clone());
    let main_started = main.status.as_ref().unwrap().start_time.clone().unwrap();
    let hosts: BTreeSet<String> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    assert_eq!(hosts.len(), 4, "each node on a node of its own: {hosts:?}");
    for (i, pod) in &by_index {
        let vars = env_of(pod);
        assert_eq!(vars["AWS_BATCH_JOB_NUM_NODES"], "4");
        assert_eq!(vars["AWS_BATCH_JOB_NODE_INDEX"], i.to_string());
        assert_eq!(vars["AWS_BATCH_JOB_MAIN_NODE_INDEX"], "0");
        assert_eq!(vars["AWS_BATCH_JOB_ID"], format!("mpi#{i}"));
        let image = pod.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
        assert_eq!(image, if *i == 0 { "mpi-main:1" } else { "mpi-worker:1" });
        assert_eq!(pod.spec.as_ref().unwrap().hostname.as_deref(), Some(format!("node-{i}").as_str()));
        if *i == 0 {
            assert!(!vars.contains_key("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"));
        } else {
            let address = &vars["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"];
            match &main_ip {
                Some(ip) => assert_eq!(address, ip),
                None => assert!(address.starts_with("node-0.")),
            }
            let created = pod.metadata.creation_timestamp.clone().unwrap();
            assert!(created.0 >= main_started.0, "node {i} was created before the main node started");
        }
    }
    // The job is over: its nodes' Service goes.
    eventually("the Service to go", WAIT, || async {
        services.get_opt(&svc.metadata.name.clone().unwrap()).await.ok()?.is_none().then_some(())
    })
    .await;
    g.env.cleanup(&[&g.ce]).await;
}

#[tokio::test]
async fn a_failing_main_node_retries_the_whole_gang() {
    let g = gang_env("mnp-retry", 8).await;
    // Attempt 1 fails (every pod of it exits 1; the main node's exit decides), attempt 2
    // succeeds; the other nodes run until the main node ends.
    let sim = json!({"sim.barge.dev/duration": "60s", "sim.barge.dev/main-duration": "3s",
        "sim.barge.dev/fail-attempts": "1"});
    let spec = json!({"nodeProperties": nodes(3, json!([{"targetNodes": "0:", "container": container("mpi:1")}])),
        "retryStrategy": {"attempts": 2}});
    g.submit("retry", sim, spec).await;
    let job = g.ends("retry").await;
    let s = job.status.clone().unwrap();
    assert_eq!(s.phase, JobPhase::Succeeded, "{:?}", s.status_reason);
    assert_eq!(s.attempts.len(), 2);
    assert_eq!(s.attempts[0].exit_code, Some(1));
    // The other nodes are stopped once the main node ended: none runs on.
    g.all_stopped(&job, "the other nodes to be stopped").await;
    g.env.cleanup(&[&g.ce]).await;
}

#[tokio::test]
async fn a_timeout_stops_every_node_and_is_not_retried() {
    let g = gang_env("mnp-timeout", 8).await;
    // The nodes would run on for an hour; the attempt may run 60 s.
    let sim = json!({"sim.barge.dev/duration": "3600s"});
    let spec = json!({"nodeProperties": nodes(3, json!([{"targetNodes": "0:", "container": container("mpi:1")}])),
        "timeout": {"attemptDurationSeconds": 60}, "retryStrategy": {"attempts": 2}});
    g.submit("slow", sim, spec).await;
    eventually("all three nodes running", WAIT, || async {
        let j = g.env.jobs.get("slow").await.ok()?;
        (j.status.as_ref()?.multi_node.as_ref()?.progress == "3/3 running").then_some(())
    })
    .await;
    let job = eventually("the attempt to time out", Duration::from_secs(150), || async {
        let j = g.env.jobs.get("slow").await.ok()?;
        j.status.as_ref()?.phase.is_finished().then_some(j)
    })
    .await;
    let s = job.status.clone().unwrap();
    assert_eq!(s.phase, JobPhase::Failed);
    assert_eq!(s.status_reason.as_deref(), Some("Job attempt duration exceeded timeout"));
    assert_eq!(s.attempts.len(), 1, "a timeout is not retried");
    let ran = s.stopped_at.unwrap() - s.started_at.unwrap();
    assert!(ran.num_seconds() >= 59 && ran.num_seconds() < 80, "stopped after about 60 s: {ran}");
    // Every node's pod is stopped, not only the main node's.
    g.all_stopped(&job, "every node's pod to stop").await;
    g.env.cleanup(&[&g.ce]).await;
}

#[tokio::test]
async fn two_gangs_that_do_not_fit_together_run_one_after_the_other_never_in_part() {
    // 8 vCPUs of m6i.large: four nodes. Each gang wants three.
    let g = gang_env("mnp-two", 8).await;
    let spec =
        json!({"nodeProperties": nodes(3, json!([{"targetNodes": "0:", "container": container("mpi:1")}]))});
    let sim = json!({"sim.barge.dev/duration": "4s"});
    g.submit("first", sim.clone(), spec.clone()).await;
    g.submit("second", sim, spec).await;
    let mut waited = None;
    let mut overlap = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let a = g.env.jobs.get("first").await.unwrap();
        let b = g.env.jobs.get("second").await.unwrap();
        let phase = |j: &BatchJob| j.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let live = |j: &BatchJob| matches!(phase(j), JobPhase::Starting | JobPhase::Running);
        overlap |= live(&a) && live(&b);
        for j in [&a, &b] {
            let why = j.status.as_ref().and_then(|s| s.status_reason.clone()).unwrap_or_default();
            if why.starts_with("Waiting for 3 nodes of 1 vCPU together") {
                waited = Some(why);
            }
        }
        if phase(&a).is_finished() && phase(&b).is_finished() {
            assert_eq!((phase(&a), phase(&b)), (JobPhase::Succeeded, JobPhase::Succeeded));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the gangs did not both end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!overlap, "both gangs ran at once on four nodes");
    let waited = waited.expect("the gang that waited said why");
    assert!(waited.contains(&format!("compute environment {}", g.ce)), "{waited}");
    g.env.cleanup(&[&g.ce]).await;
}

#[tokio::test]
async fn a_gang_that_waited_its_turn_holds_the_nodes_as_they_drain_and_says_so() {
    // Four nodes, each busy with a 1-vCPU job for 25 s; then a gang that needs all four.
    let g = gang_env("mnp-hold", 8).await;
    for i in 0..4 {
        g.env
            .job(&format!("busy{i}"), &g.queue, 1.0, json!({"sim.barge.dev/duration": "25s"}), json!({}))
            .await;
    }
    for i in 0..4 {
        g.env.wait_phase(&format!("busy{i}"), JobPhase::Running).await;
    }
    let spec =
        json!({"nodeProperties": nodes(4, json!([{"targetNodes": "0:", "container": container("mpi:1")}]))});
    g.submit("mpi", json!({"sim.barge.dev/duration": "3s"}), spec).await;
    // Past the 5 s it may wait, its nodes are held: the queue and the environment say so.
    let queues: Api<barge::api::JobQueue> = Api::all(g.env.client.clone());
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(g.env.client.clone());
    let holding = |conditions: &[barge::api::Condition]| {
        conditions.iter().find(|c| c.type_ == "HoldingNodes" && c.is_true()).map(|c| c.message.clone())
    };
    let said = eventually("the queue to say it holds nodes", WAIT, || async {
        holding(&queues.get(&g.queue).await.ok()?.status?.conditions)
    })
    .await;
    let job = format!("{}/mpi", g.env.ns);
    assert!(
        said.contains(&format!("of compute environment {} held for multi-node job {job}", g.ce)),
        "{said}"
    );
    assert!(said.contains("which needs 4 together"), "{said}");
    eventually("the environment to say it holds nodes", WAIT, || async {
        holding(&ces.get(&g.ce).await.ok()?.status?.conditions)
    })
    .await;
    // A small job that comes now waits behind the gang, though the nodes have room for it.
    g.env.job("late", &g.queue, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    let gang = g.ends("mpi").await;
    let late = g.ends("late").await;
    assert_eq!(gang.status.as_ref().unwrap().phase, JobPhase::Succeeded);
    let gang_started = gang.status.unwrap().started_at.unwrap();
    let late_started = late.status.unwrap().started_at.unwrap();
    assert!(
        late_started >= gang_started,
        "the late job ran at {late_started}, before the gang at {gang_started}"
    );
    // Nothing is held once it ran.
    eventually("the hold to end", WAIT, || async {
        let q = queues.get(&g.queue).await.ok()?.status?;
        holding(&q.conditions).is_none().then_some(())
    })
    .await;
    g.env.cleanup(&[&g.ce]).await;
}

#[tokio::test]
async fn the_api_server_refuses_node_ranges_that_overlap_or_leave_a_node_out() {
    let g = gang_env("mnp-cel", 8).await;
    let refused = |ranges: Value, main: u32| {
        let jobs = g.env.jobs.clone();
        let queue = g.queue.clone();
        async move {
            let mut n = nodes(4, ranges);
            n["mainNode"] = json!(main);
            apply(
                &jobs,
                json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": {"name": "bad"},
                "spec": {"jobQueue": queue, "nodeProperties": n}}),
            )
            .await
            .unwrap_err()
            .to_string()
        }
    };
    let c = container("x");
    let e =
        refused(json!([{"targetNodes": "0:2", "container": c}, {"targetNodes": "2:", "container": c}]), 0)
            .await;
    assert!(e.contains("nodeRangeProperties overlap"), "{e}");
    let e = refused(json!([{"targetNodes": "0", "container": c}, {"targetNodes": "2:", "container": c}]), 0)
        .await;
    assert!(e.contains("must cover every node"), "{e}");
    let e = refused(json!([{"targetNodes": "0:", "container": c}]), 4).await;
    assert!(e.contains("mainNode must be a node index below numNodes"), "{e}");
    let e = refused(json!([{"targetNodes": "0:9", "container": c}]), 0).await;
    assert!(e.contains("below numNodes"), "{e}");
    let array = apply(
        &g.env.jobs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "metadata": {"name": "arr"},
        "spec": {"jobQueue": g.queue, "array": {"size": 2},
            "nodeProperties": nodes(2, json!([{"targetNodes": "0:", "container": c}]))}}),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(array.contains("cannot be an array job"), "{array}");
    g.env.cleanup(&[&g.ce]).await;
}
