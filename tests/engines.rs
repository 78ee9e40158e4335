//! Workflow engines drive Barge's AWS Batch API unchanged, and their steps run in real
//! containers on the local cluster's real node: Metaflow's `@batch` (artifacts through moto's
//! S3, a foreach, a join, a `@retry`), Airflow's `BatchOperator` and `BatchSensor` (with the
//! container's lines read back through CloudWatch Logs), and Snakemake's AWS Batch executor
//! (each step's own `snakemake` in its container, reading and writing moto's S3).
//!
//! Each engine is pinned in a venv of its own (hack/cluster/build.sh); only endpoint URLs,
//! credentials and the engines' documented settings differ from an AWS setup. One operator
//! for this binary, with the Batch API and the log archive on. Where the cluster has no real
//! node the tests say they are skipped (CI requires it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use barge::api::BatchJob;
use barge::api::batch_job::JobPhase;
use common::batch::{Key, create_key, free_port, venv_tool};
use common::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The real node's unmanaged environment, and the queue the Airflow test submits to.
const CE: &str = "engine-tests";
const QUEUE: &str = "engine-tests";
/// Metaflow reads the platform (EC2 or FARGATE) from `computeResources.type` of the queue's
/// first environment, which an UNMANAGED one does not have (on AWS neither): its queue lists
/// a managed environment first, DISABLED so that every job goes on to the real node's.
const METAFLOW_QUEUE: &str = "engine-metaflow";
const METAFLOW_FIRST_CE: &str = "engine-spot";
const LOG_BUCKET: &str = "barge-engine-logs";
const ROLE: &str = "arn:aws:iam::123456789012:role/metaflow-steps";
const SNAKEMAKE_ROLE: &str = "arn:aws:iam::123456789012:role/snakemake-jobs";

struct Harness {
    port: u16,
    credentials_ns: String,
    /// moto where this process reaches it, and where the real node's pods do.
    moto: String,
    moto_for_pods: String,
}

async fn harness(what: &str) -> Option<&'static Harness> {
    let node = real_node(what)?;
    static H: OnceCell<Harness> = OnceCell::const_new();
    Some(
        H.get_or_init(|| async {
            let client = client().await;
            install_crds(&client).await;
            let moto = std::env::var("BARGE_MOTO_URL").expect("BARGE_MOTO_URL: run with `make test`");
            let moto_for_pods = std::env::var("BARGE_MOTO_NODE_URL")
                .expect("BARGE_MOTO_NODE_URL: hack/cluster.sh puts moto on the real node's address");
            create_bucket(&moto, LOG_BUCKET);
            let credentials_ns = namespace(&client, "engine-keys").await;
            let port = free_port();
            let env = common::batch::archive_operator_env(port, &credentials_ns, LOG_BUCKET, &moto);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            spawn_operator_for_process("engines", &env);
            real_node_environment(&client, &node, CE, QUEUE).await;
            metaflow_queue(&client).await;
            Harness { port, credentials_ns, moto, moto_for_pods }
        })
        .await,
    )
}

/// A namespace of the test's own and a key for it.
async fn tenant(h: &Harness, prefix: &str) -> (Client, String, Key) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    (client, ns, key)
}

/// The DISABLED managed environment and the queue that lists it before the real node's.
async fn metaflow_queue(client: &Client) {
    use barge::api::{ComputeEnvironment, JobQueue};
    apply(
        &Api::<ComputeEnvironment>::all(client.clone()),
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
        "metadata": {"name": METAFLOW_FIRST_CE},
        "spec": {"provider": "local", "state": "DISABLED", "capacityType": "SPOT",
                 "instanceTypes": ["m6i.large"], "maxvCpus": 16}}),
    )
    .await
    .unwrap();
    apply(
        &Api::<JobQueue>::all(client.clone()),
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue",
        "metadata": {"name": METAFLOW_QUEUE},
        "spec": {"priority": 1, "computeEnvironmentOrder": [
            {"order": 1, "computeEnvironment": METAFLOW_FIRST_CE},
            {"order": 2, "computeEnvironment": CE}]}}),
    )
    .await
    .unwrap();
}

/// A bucket in moto's S3, made with aws-cli as a user would.
fn create_bucket(moto: &str, bucket: &str) {
    let out = Command::new(format!("{}/aws", common::batch::clients_bin()))
        .args(["s3api", "create-bucket", "--bucket", bucket, "--endpoint-url", moto, "--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains("BucketAlreadyOwnedByYou"), "create-bucket {bucket}: {err}");
}

fn venv(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run these tests with `make test` (hack/cluster.sh builds the venv)")
    })
}

/// A fresh directory for one engine's run.
fn workdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The namespace's jobs, by the name the AWS Batch API gave them.
async fn jobs_by_aws_name(client: &Client, ns: &str) -> Vec<(String, BatchJob)> {
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let mut all: Vec<(String, BatchJob)> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|j| (j.annotations().get(barge::batch_api::ANNOTATION_AWS_NAME).cloned().unwrap_or_default(), j))
        .collect();
    all.sort_by_key(|(_, j)| j.metadata.creation_timestamp.clone().map(|t| t.0));
    all
}

/// Binds `role` to a ServiceAccount of `ns` (IRSA's annotation), and waits until the
/// endpoint sees it: a definition naming the role registers.
async fn bind_role(h: &Harness, key: &Key, ns: &str, role: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client().await, ns);
    apply(
        &accounts,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": format!("role-{}", suffix()), "annotations": {"eks.amazonaws.com/role-arn": role}}}),
    )
    .await
    .unwrap();
    let probe = json!({"image": REAL_NODE_IMAGE, "jobRoleArn": role}).to_string();
    eventually("the endpoint sees the role's ServiceAccount", std::time::Duration::from_secs(10), || async {
        let out = venv_tool(&common::batch::clients_bin(), "aws", h.port, key)
            .args(["batch", "register-job-definition", "--job-definition-name", "role-probe"])
            .args(["--type", "container", "--container-properties", &probe])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
}

fn phase(job: &BatchJob) -> Option<JobPhase> {
    job.status.as_ref().map(|s| s.phase)
}

/// Metaflow's CLI in the flow's directory, configured as its documentation says for AWS
/// Batch with an S3 datastore: only the endpoints and the key differ from an AWS setup.
fn metaflow(h: &Harness, key: &Key, work: &Path, bucket: &str, args: &[&str]) -> Command {
    let mut cmd = metaflow_python(h, key, work, bucket);
    cmd.arg("flow.py")
        .arg("--no-pylint")
        .args(args)
        .env("METAFLOW_BATCH_JOB_QUEUE", METAFLOW_QUEUE)
        .env("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", ROLE);
    cmd
}

/// Python of Metaflow's venv in the flow's directory, with the S3 datastore.
fn metaflow_python(h: &Harness, key: &Key, work: &Path, bucket: &str) -> Command {
    let bin = format!("{}/bin", venv("BARGE_METAFLOW_VENV"));
    let mut cmd = venv_tool(&bin, "python", h.port, key);
    cmd.current_dir(work)
        .env("HOME", work)
        .env("USER", "tester")
        .env("METAFLOW_DEFAULT_DATASTORE", "s3")
        .env("METAFLOW_DATASTORE_SYSROOT_S3", format!("s3://{bucket}/metaflow"))
        .env("METAFLOW_DEFAULT_METADATA", "local")
        // The containers read the datastore too: moto where the real node's pods reach it.
        .env("METAFLOW_S3_ENDPOINT_URL", &h.moto_for_pods);
    cmd
}

#[tokio::test]
async fn metaflow_runs_a_flow_of_batch_steps_in_real_containers() {
    let Some(h) = harness("the Metaflow test").await else { return };
    let (client, ns, key) = tenant(h, "metaflow").await;
    // The job role Metaflow registers its definitions with, bound in the namespace (IRSA).
    bind_role(h, &key, &ns, ROLE).await;
    let bucket = format!("barge-metaflow-{}", suffix());
    create_bucket(&h.moto, &bucket);
    let work = workdir("metaflow");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engines/metaflow_flow.py"),
        work.join("flow.py"),
    )
    .unwrap();

    let out = metaflow(h, &key, &work, &bucket, &["run"]).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "the flow failed:\n{log}");
    // `end` ran here from the artifacts the containers wrote to S3.
    assert!(log.contains("result ANT,BEE,CAT attempts 2"), "{log}");
    assert!(log.contains("Sleeping 0 minutes before the next AWS Batch retry"), "{log}");
    let run_id =
        log.split("(run-id ").nth(1).and_then(|s| s.split(')').next()).expect("a run id").to_string();

    // In Barge: a job per Batch step and attempt, each on the real node; flaky's first FAILED
    // with the container's exit, its second (Metaflow's retry) SUCCEEDED.
    let jobs = jobs_by_aws_name(&client, &ns).await;
    let of = |step: &str| -> Vec<&BatchJob> {
        jobs.iter().filter(|(n, _)| n.contains(&format!("-{step}-"))).map(|(_, j)| j).collect()
    };
    assert_eq!(of("start").len(), 1, "{:?}", jobs.iter().map(|(n, _)| n).collect::<Vec<_>>());
    assert_eq!(of("shout").len(), 3);
    assert_eq!(of("join").len(), 1);
    let flaky = of("flaky");
    assert_eq!(flaky.len(), 2, "flaky's two attempts are two Batch jobs");
    assert_eq!(phase(flaky[0]), Some(JobPhase::Failed));
    assert_eq!(flaky[0].status.as_ref().unwrap().attempts[0].exit_code, Some(1));
    assert_eq!(phase(flaky[1]), Some(JobPhase::Succeeded));
    for (name, job) in &jobs {
        let s = job.status.as_ref().unwrap();
        assert_eq!(s.node_name.as_deref(), Some("real-0"), "{name} ran on the real node");
        assert_eq!(s.compute_environment.as_deref(), Some(CE), "{name}");
    }
    // The id each container saw (AWS_BATCH_JOB_ID) is the id SubmitJob gave Metaflow.
    let ids = metaflow_artifact(h, &key, &work, &bucket, &run_id);
    for id in ids.as_array().unwrap() {
        let id = id.as_str().unwrap();
        assert!(of("shout").iter().any(|j| j.name_any() == id), "{id} is one of the shout jobs");
    }

    // `logs` reads a step's output back from the datastore.
    let out = metaflow(h, &key, &work, &bucket, &["logs", &format!("{run_id}/start")]).output().unwrap();
    let logs = text(&out);
    assert!(out.status.success() && logs.contains("start on ") && logs.contains("as Batch job"), "{logs}");

    // A step whose container exits 3 fails the run, and Metaflow says why in Barge's words.
    let out = metaflow(h, &key, &work, &bucket, &["run"]).env("BARGE_FLOW_FAIL", "3").output().unwrap();
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("AWS Batch error:") && log.contains("Essential container in task exited with code 3"),
        "{log}"
    );
}

/// The `jobs` artifact of the run's join step, read with Metaflow's client API.
fn metaflow_artifact(h: &Harness, key: &Key, work: &Path, bucket: &str, run_id: &str) -> Value {
    let script = format!(
        "import json; from metaflow import Run, namespace; namespace(None); \
         print(json.dumps(Run('BargeFlow/{run_id}')['join'].task.data.jobs))"
    );
    let out = metaflow_python(h, key, work, bucket).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// Airflow in a home of its own, its DAGs folder holding the test's DAG.
fn airflow(h: &Harness, key: &Key, home: &Path, program: &str) -> Command {
    let bin = format!("{}/bin", venv("BARGE_AIRFLOW_VENV"));
    let mut cmd = venv_tool(&bin, program, h.port, key);
    cmd.current_dir(home)
        .env("AIRFLOW_HOME", home)
        .env("AIRFLOW__CORE__DAGS_FOLDER", home.join("dags"))
        .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        .env("BARGE_QUEUE", QUEUE)
        .env("BARGE_DEFINITION", "airflow-sh");
    cmd
}

/// The task states of the DAG run (the script's last line).
fn states(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with("{\"states\"")).unwrap_or("{}");
    serde_json::from_str::<Value>(last).unwrap()["states"].clone()
}

#[tokio::test]
async fn airflows_batch_operator_and_sensor_wait_for_real_jobs() {
    let Some(h) = harness("the Airflow test").await else { return };
    let (client, ns, key) = tenant(h, "airflow").await;
    let home = workdir("airflow");
    std::fs::create_dir_all(home.join("dags")).unwrap();
    let dag = home.join("dags/airflow_dag.py");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engines/airflow_dag.py"), &dag).unwrap();
    // The definition the operator names, registered with aws-cli.
    let out = venv_tool(&common::batch::clients_bin(), "aws", h.port, &key)
        .args([
            "batch",
            "register-job-definition",
            "--job-definition-name",
            "airflow-sh",
            "--type",
            "container",
        ])
        .args([
            "--container-properties",
            &json!({"image": REAL_NODE_IMAGE, "command": ["true"],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]})
            .to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = airflow(h, &key, &home, "airflow").args(["db", "migrate"]).output().unwrap();
    assert!(out.status.success(), "airflow db migrate: {}", text(&out));

    let out = airflow(h, &key, &home, "python").arg(&dag).output().unwrap();
    let log = text(&out);
    assert_eq!(states(&out), json!({"submit": "success", "sense": "success"}), "{log}");
    // The operator's waiter polled until SUCCEEDED and showed the container's lines, read
    // from CloudWatch Logs (Barge's archive).
    assert!(log.contains("succeeded: {'jobArn'"), "{log}");
    for i in 1..=3 {
        assert!(log.contains(&format!("airflow line {i}")), "line {i} missing:\n{log}");
    }
    let jobs = jobs_by_aws_name(&client, &ns).await;
    assert_eq!(jobs.len(), 1);
    let s = jobs[0].1.status.as_ref().unwrap();
    assert_eq!((s.phase, s.node_name.as_deref()), (JobPhase::Succeeded, Some("real-0")));

    // A job that exits 3 fails the operator's task with Barge's reason; the sensor never runs.
    let out = airflow(h, &key, &home, "python").arg(&dag).env("BARGE_EXIT", "3").output().unwrap();
    let log = text(&out);
    assert_eq!(states(&out), json!({"submit": "failed", "sense": "upstream_failed"}), "{log}");
    assert!(log.contains("failed: {'jobArn'"), "{log}");
    assert!(
        log.contains("'statusReason': 'Essential container in task exited with code 3 (Error)'"),
        "{log}"
    );
}

#[tokio::test]
async fn snakemakes_aws_batch_executor_runs_each_step_in_its_own_container() {
    let Some(h) = harness("the Snakemake test").await else { return };
    let (client, ns, key) = tenant(h, "snakemake").await;
    // Snakemake's definitions carry its `--aws-batch-job-role`: a role the namespace binds.
    bind_role(h, &key, &ns, SNAKEMAKE_ROLE).await;
    let bin = format!("{}/bin", venv("BARGE_SNAKEMAKE_VENV"));
    let out = venv_tool(&bin, "python", h.port, &key)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engines/snakemake_workflow.py"))
        .env("BARGE_QUEUE", QUEUE)
        .env("BARGE_WORKDIR", workdir("snakemake"))
        .env("BARGE_S3_URL", &h.moto_for_pods)
        .env("BARGE_BUCKET", format!("barge-snakemake-{}", suffix()))
        .env("BARGE_ROLE", SNAKEMAKE_ROLE)
        .output()
        .unwrap();
    assert!(out.status.success(), "the Snakemake workflow failed:\n{}", text(&out));
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();

    // Each step was a BatchJob that ran privileged on the real node, as Snakemake's
    // definitions ask, in the image Snakemake names by default.
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), &ns);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    for step in ["greet", "count"] {
        let job = jobs.get(seen["jobs"][step].as_str().unwrap()).await.unwrap();
        let s = job.status.as_ref().unwrap();
        assert_eq!((s.phase, s.node_name.as_deref()), (JobPhase::Succeeded, Some("real-0")), "{step}");
        let pod = pods.get(&s.attempts[0].pod_name).await.expect("the step's pod is kept");
        let container = &pod.spec.unwrap().containers[0];
        let privileged = container.security_context.as_ref().and_then(|c| c.privileged);
        assert_eq!(privileged, Some(true), "{step}");
        assert!(container.image.as_deref().unwrap().starts_with("snakemake/snakemake:v"), "{step}");
    }
    // greet's container wrote its own pod's name.
    let greet = jobs.get(seen["jobs"]["greet"].as_str().unwrap()).await.unwrap();
    let pod = &greet.status.as_ref().unwrap().attempts[0].pod_name;
    assert_eq!(seen["hello"], format!("hello from Barge on {pod}"), "{seen}");
}
