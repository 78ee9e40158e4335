//! The AWS Batch API on the local control plane, driven by the real AWS clients: boto3 and
//! aws-cli v1 from PyPI with only `AWS_ENDPOINT_URL_BATCH` and an issued key set, and raw
//! requests signed by the `aws-sigv4` crate for every refusal (unsigned, unknown key, bad
//! signature, old signature, revoked key, other namespaces, bad bodies).

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use barge::api::BatchJob;
use barge::api::batch_job::JobPhase;
use bytes::Bytes;
use common::batch::{Key, clients_bin, free_port};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

/// One operator serving the API for every test here, and where its keys live.
struct Harness {
    port: u16,
    credentials_ns: String,
}

async fn harness() -> &'static Harness {
    static H: tokio::sync::OnceCell<Harness> = tokio::sync::OnceCell::const_new();
    H.get_or_init(|| async {
        let client = client().await;
        install_crds(&client).await;
        let credentials_ns = namespace(&client, "barge-keys").await;
        let port = free_port();
        spawn_operator_for_process(
            "batch-api",
            &[
                ("BARGE_BATCH_API_ADDR", &format!("127.0.0.1:{port}")),
                ("BARGE_CREDENTIALS_NAMESPACE", &credentials_ns),
                ("BARGE_BATCH_API_REGION", "us-east-1"),
                ("BARGE_BATCH_API_ACCOUNT_ID", "123456789012"),
            ],
        );
        Harness { port, credentials_ns }
    })
    .await
}

/// `barge credentials create`, as a user runs it.
fn create_key(h: &Harness, namespace: &str, queues: &[&str]) -> Key {
    common::batch::create_key(&h.credentials_ns, namespace, queues, false)
}

fn create_key_with(h: &Harness, namespace: &str, queues: &[&str], admin: bool) -> Key {
    common::batch::create_key(&h.credentials_ns, namespace, queues, admin)
}

/// A command of the AWS clients' venv with only the endpoint, the key and a region set.
fn aws_tool(h: &Harness, key: &Key, program: &str) -> Command {
    tool_in(h, key, &clients_bin(), program)
}

/// A program of the venv whose `bin` is `bin`, with only the endpoint, the key and a region set.
fn tool_in(h: &Harness, key: &Key, bin: &str, program: &str) -> Command {
    common::batch::venv_tool(bin, program, h.port, key)
}

fn aws(h: &Harness, key: &Key, args: &[&str]) -> Result<Value, String> {
    let out = aws_tool(h, key, "aws").args(["batch"]).args(args).args(["--output", "json"]).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(if text.trim().is_empty() { json!({}) } else { serde_json::from_str(&text).unwrap() })
}

/// A raw POST of `body` to `/v1/<op>`, signed at `at` with `key` (or not signed).
async fn call(h: &Harness, key: Option<&Key>, op: &str, body: Vec<u8>, at: SystemTime) -> (u16, Value) {
    try_call(h, key, op, body, at).await.unwrap()
}

/// As `call`, but a connection the server closed is an error, not a panic.
async fn try_call(
    h: &Harness,
    key: Option<&Key>,
    op: &str,
    body: Vec<u8>,
    at: SystemTime,
) -> Result<(u16, Value), hyper_util::client::legacy::Error> {
    let uri = format!("http://127.0.0.1:{}/v1/{op}", h.port);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(&uri)
        .header("host", format!("127.0.0.1:{}", h.port))
        .header("content-type", "application/json")
        .body(body.clone())
        .unwrap();
    if let Some(key) = key {
        let identity = Credentials::new(&key.id, &key.secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("batch")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers: Vec<(String, String)> =
            req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
        let signable = SignableRequest::new(
            "POST",
            uri.clone(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
    }
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (parts, body) = req.into_parts();
    let res = client.request(hyper::Request::from_parts(parts, Full::new(Bytes::from(body)))).await?;
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

async fn signed(h: &Harness, key: &Key, op: &str, body: Value) -> (u16, Value) {
    call(h, Some(key), op, body.to_string().into_bytes(), SystemTime::now()).await
}

/// Waits until the endpoint answers the key (the operator has started and read its Secret).
async fn until_answered(h: &Harness, key: &Key) {
    eventually("the AWS Batch API answers the new key", WAIT, || async {
        // The operator may not be listening yet: a refused connection is "not yet".
        let body = json!({}).to_string().into_bytes();
        let answer = try_call(h, Some(key), "describejobqueues", body, SystemTime::now()).await;
        matches!(answer, Ok((200, _))).then_some(())
    })
    .await;
}

/// Binds IAM role `role` to a ServiceAccount of `ns`, as the namespace's owner does before
/// its tools register definitions with that `jobRoleArn`, and waits until the endpoint
/// takes it.
async fn bind_role(h: &Harness, key: &Key, ns: &str, role: &str) {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client().await, ns);
    let name = format!("role-{}", suffix());
    let sa = serde_json::from_value(
        json!({"metadata": {"name": name, "annotations": {"eks.amazonaws.com/role-arn": role}}}),
    )
    .unwrap();
    accounts.create(&Default::default(), &sa).await.unwrap();
    let probe = json!({"jobDefinitionName": "role-probe", "type": "container",
        "containerProperties": {"image": "busybox:1.35", "jobRoleArn": role}});
    eventually("the endpoint sees the role's ServiceAccount", Duration::from_secs(10), || async {
        let (status, _) = signed(h, key, "registerjobdefinition", probe.clone()).await;
        (status == 200).then_some(())
    })
    .await;
}

/// A namespace, a local compute environment, a queue that runs jobs and one that holds them.
struct Corner {
    env: Env,
    queue: String,
    held: String,
    ce: String,
}

async fn corner(prefix: &str) -> Corner {
    let env = Env::new(client().await, prefix).await;
    let ce = env
        .ce("ce", json!({"instanceTypes": ["m6i.xlarge"], "maxvCpus": 16, "scaleDownDelaySeconds": 5}))
        .await;
    let queue = env.queue("run", 10, "ENABLED", &[&ce]).await;
    let held = env.queue("held", 10, "DISABLED", &[&ce]).await;
    Corner { env, queue, held, ce }
}

impl Corner {
    async fn cleanup(&self) {
        for q in [&self.queue, &self.held] {
            let _ = self.env.queues.delete(q, &Default::default()).await;
        }
        self.env.cleanup(&[&self.ce]).await;
    }
}

#[tokio::test]
async fn boto3_registers_submits_follows_and_stops_jobs() {
    let h = harness().await;
    let c = corner("api-boto3").await;
    let (env, queue, held) = (&c.env, &c.queue, &c.held);
    let key = create_key(h, &env.ns, &[]);
    until_answered(h, &key).await;
    // The script's definitions name a job role, which the namespace binds as a user would.
    bind_role(h, &key, &c.env.ns, "arn:aws:iam::000000000000:role/ignored").await;
    let out = aws_tool(h, &key, "python")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/batch_api/boto3_client.py"))
        .env("BARGE_QUEUE", queue)
        .env("BARGE_HELD_QUEUE", held)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the boto3 script failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();

    // What boto3 submitted is a BatchJob kubectl shows, its AWS name kept beside its id.
    let single = env.jobs.get(seen["jobs"]["single"].as_str().unwrap()).await.unwrap();
    assert_eq!(single.annotations()["barge.dev/aws-name"], "single_1");
    assert_eq!(single.status.as_ref().unwrap().phase, JobPhase::Succeeded);
    assert!(single.spec.job_definition.as_deref().unwrap().starts_with("boto3-render-"), "{:?}", single.spec);
    c.cleanup().await;
}

#[tokio::test]
async fn aws_cli_sees_kubectl_jobs_and_submits_its_own() {
    let h = harness().await;
    let c = corner("api-cli").await;
    let (env, queue) = (&c.env, &c.queue);
    let key = create_key(h, &env.ns, &[]);
    until_answered(h, &key).await;

    // A job applied with kubectl is a job the AWS tools see, under its name.
    env.job("kubectl-made", queue, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    env.wait_phase("kubectl-made", JobPhase::Succeeded).await;
    let seen = aws(h, &key, &["describe-jobs", "--jobs", "kubectl-made"]).unwrap();
    assert_eq!(seen["jobs"][0]["jobName"], "kubectl-made");
    assert_eq!(seen["jobs"][0]["status"], "SUCCEEDED");
    assert_eq!(
        seen["jobs"][0]["jobQueue"],
        format!("arn:aws:batch:us-east-1:123456789012:job-queue/{queue}")
    );

    let reg = aws(
        h,
        &key,
        &[
            "register-job-definition",
            "--job-definition-name",
            "cli-def",
            "--type",
            "container",
            "--container-properties",
            r#"{"image": "busybox:1.36", "command": ["sh", "-c", "echo Ref::word"], "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "1024"}]}"#,
            "--tags",
            "sim.barge.dev/duration=1s",
            "--propagate-tags",
        ],
    )
    .unwrap();
    assert_eq!(reg["revision"], 1, "{reg}");
    let sub = aws(
        h,
        &key,
        &[
            "submit-job",
            "--job-name",
            "from-cli",
            "--job-queue",
            queue,
            "--job-definition",
            "cli-def",
            "--parameters",
            "word=hello",
        ],
    )
    .unwrap();
    let id = sub["jobId"].as_str().unwrap().to_string();
    let done = eventually("the cli job succeeds", WAIT, || async {
        let d = aws(h, &key, &["describe-jobs", "--jobs", &id]).ok()?;
        (d["jobs"][0]["status"] == "SUCCEEDED").then_some(d)
    })
    .await;
    let job = &done["jobs"][0];
    assert_eq!(job["container"]["command"], json!(["sh", "-c", "echo hello"]));
    assert_eq!(job["container"]["vcpus"].as_f64(), Some(2.0));
    let listed = aws(h, &key, &["list-jobs", "--job-queue", queue, "--job-status", "SUCCEEDED"]).unwrap();
    let names: Vec<&str> =
        listed["jobSummaryList"].as_array().unwrap().iter().map(|s| s["jobName"].as_str().unwrap()).collect();
    assert!(names.contains(&"from-cli") && names.contains(&"kubectl-made"), "{names:?}");

    // The pod is the one the job ran, with AWS Batch's environment.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let pod = pods.list(&ListParams::default().labels(&format!("barge.dev/job-name={id}"))).await.unwrap();
    let envs = pod.items[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    assert!(envs.iter().any(|e| e.name == "AWS_BATCH_JQ_NAME" && e.value.as_deref() == Some(queue.as_str())));
    c.cleanup().await;
}

#[tokio::test]
async fn aws_cli_registers_every_dialect_and_describes_it_back() {
    let h = harness().await;
    let c = corner("api-dialects").await;
    let key = create_key(h, &c.env.ns, &[]);
    until_answered(h, &key).await;
    let role = "arn:aws:iam::123456789012:role/etl";
    let register = |name: &str, kind: &str, body: &str| {
        let flag = match kind {
            "eks" => "--eks-properties",
            "ecs" => "--ecs-properties",
            _ => "--container-properties",
        };
        aws(
            h,
            &key,
            &["register-job-definition", "--job-definition-name", name, "--type", "container", flag, body],
        )
    };
    let container = |extra: &str| {
        format!(
            r#"{{"image": "busybox:1.35", "command": ["true"], "resourceRequirements": [{{"type": "VCPU", "value": "1"}}, {{"type": "MEMORY", "value": "512"}}]{extra}}}"#
        )
    };

    // A role no ServiceAccount of the key's namespace is bound to: refused, saying what to make.
    let refused = register("roled", "", &container(&format!(r#", "jobRoleArn": "{role}""#))).unwrap_err();
    assert!(
        refused.contains("ClientException")
            && refused.contains(role)
            && refused.contains("eks.amazonaws.com/role-arn"),
        "{refused}"
    );
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(c.env.client.clone(), &c.env.ns);
    let sa = serde_json::from_value(
        json!({"metadata": {"name": "etl", "annotations": {"eks.amazonaws.com/role-arn": role}}}),
    )
    .unwrap();
    accounts.create(&Default::default(), &sa).await.unwrap();

    // Every container field, registered and described back as it went in.
    let fields = format!(
        r#", "jobRoleArn": "{role}", "executionRoleArn": "arn:aws:iam::123456789012:role/exec",
        "user": "1000:1000", "readonlyRootFilesystem": true, "instanceType": "m6i.xlarge",
        "volumes": [{{"name": "scratch", "host": {{"sourcePath": "/mnt/scratch"}}}},
                    {{"name": "shared", "efsVolumeConfiguration": {{"fileSystemId": "fs-0123456789abcdef0", "rootDirectory": "/data"}}}}],
        "mountPoints": [{{"containerPath": "/scratch", "sourceVolume": "scratch"}}, {{"containerPath": "/shared", "sourceVolume": "shared", "readOnly": true}}],
        "linuxParameters": {{"sharedMemorySize": 256, "tmpfs": [{{"containerPath": "/tmp", "size": 64, "mountOptions": ["noexec"]}}], "initProcessEnabled": true, "maxSwap": 0, "swappiness": 60}},
        "secrets": [{{"name": "DB", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db"}}],
        "logConfiguration": {{"logDriver": "awslogs", "options": {{"awslogs-group": "/batch/etl"}}}},
        "ephemeralStorage": {{"sizeInGiB": 30}},
        "fargatePlatformConfiguration": {{"platformVersion": "LATEST"}}"#
    );
    let body = container(&fields);
    let reg = eventually("the role's account is seen", Duration::from_secs(10), || async {
        register("full", "", &body).ok()
    })
    .await;
    assert_eq!(reg["revision"], 1, "{reg}");
    let d = aws(h, &key, &["describe-job-definitions", "--job-definition-name", "full"]).unwrap();
    let got = &d["jobDefinitions"][0]["containerProperties"];
    let sent: Value = serde_json::from_str(&body).unwrap();
    for field in [
        "jobRoleArn",
        "executionRoleArn",
        "user",
        "readonlyRootFilesystem",
        "instanceType",
        "volumes",
        "mountPoints",
        "linuxParameters",
        "secrets",
        "logConfiguration",
        "ephemeralStorage",
    ] {
        assert_eq!(got[field], sent[field], "{field} described back as registered: {got}");
    }
    let jd: Api<barge::api::JobDefinition> = Api::namespaced(c.env.client.clone(), &c.env.ns);
    let stored = jd.get("full").await.unwrap();
    assert_eq!(
        stored.spec.container.unwrap().extra().linux_parameters.as_ref().unwrap().shared_memory_size,
        Some(256)
    );

    // What a pod cannot do is refused by name, and nothing is registered.
    for (extra, words) in [
        (
            r#", "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}]"#,
            "containerProperties.ulimits",
        ),
        (r#", "user": "nobody""#, "numeric UID"),
        (r#", "linuxParameters": {"devices": [{"hostPath": "/dev/fuse"}]}"#, "needs privileged"),
        (
            r#", "volumes": [{"name": "e", "efsVolumeConfiguration": {"fileSystemId": "fs-12345678", "transitEncryption": "ENABLED"}}]"#,
            "transitEncryption ENABLED",
        ),
        (
            r#", "secrets": [{"name": "S", "valueFrom": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf:k:AWSPREVIOUS:"}]"#,
            "version stage",
        ),
    ] {
        let e = register("refused", "", &container(extra)).unwrap_err();
        assert!(e.contains("ClientException") && e.contains(words), "{words}: {e}");
    }
    assert!(jd.get_opt("refused").await.unwrap().is_none());

    // eksProperties: the pod template, described back; a job overrides a container by name.
    let pod = r#"{"podProperties": {"serviceAccountName": "etl", "metadata": {"labels": {"team": "a"}},
        "initContainers": [{"name": "fetch", "image": "busybox:1.35", "command": ["true"]}],
        "containers": [{"name": "app", "image": "busybox:1.35", "command": ["sleep", "1"],
                        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                        "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}}]}}"#;
    register("eks", "eks", pod).unwrap();
    let d = aws(h, &key, &["describe-job-definitions", "--job-definition-name", "eks"]).unwrap();
    let props = &d["jobDefinitions"][0]["eksProperties"]["podProperties"];
    assert_eq!(props["containers"][0]["securityContext"]["runAsUser"], 1000, "{d}");
    assert_eq!(props["initContainers"][0]["name"], "fetch");
    assert_eq!(props["metadata"]["labels"]["team"], "a");
    let sub = aws(h, &key, &["submit-job", "--job-name", "eks-job", "--job-queue", &c.held, "--job-definition", "eks",
        "--eks-properties-override", r#"{"podProperties": {"containers": [{"name": "app", "image": "busybox:1.36", "env": [{"name": "MODE", "value": "x"}]}], "metadata": {"labels": {"run": "1"}}}}"#]).unwrap();
    let id = sub["jobId"].as_str().unwrap();
    let jobs: Api<BatchJob> = Api::namespaced(c.env.client.clone(), &c.env.ns);
    let o = jobs.get(id).await.unwrap().spec.pod_overrides.unwrap();
    assert_eq!(
        (o.containers[0].image.as_deref(), o.labels.get("run").map(String::as_str)),
        (Some("busybox:1.36"), Some("1"))
    );
    let desc = eventually("the job is described with its pod", Duration::from_secs(10), || async {
        let d = aws(h, &key, &["describe-jobs", "--jobs", id]).ok()?;
        d["jobs"][0].get("eksProperties").is_some().then_some(d)
    })
    .await;
    assert_eq!(
        desc["jobs"][0]["eksProperties"]["podProperties"]["containers"][0]["image"], "busybox:1.36",
        "{desc}"
    );

    // ecsProperties: one task of several containers, described back; overrides by name.
    let task = r#"{"taskProperties": [{"containers": [
        {"name": "app", "image": "busybox:1.35", "command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}],
         "dependsOn": [{"containerName": "proxy", "condition": "START"}]},
        {"name": "proxy", "essential": false, "image": "busybox:1.35", "command": ["sleep", "60"], "stopTimeout": 5,
         "resourceRequirements": [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "128"}]}]}]}"#;
    register("ecs", "ecs", task).unwrap();
    let d = aws(h, &key, &["describe-job-definitions", "--job-definition-name", "ecs"]).unwrap();
    let containers = &d["jobDefinitions"][0]["ecsProperties"]["taskProperties"][0]["containers"];
    assert_eq!(
        (containers[1]["name"].as_str(), containers[1]["essential"].as_bool()),
        (Some("proxy"), Some(false)),
        "{d}"
    );
    assert_eq!(containers[0]["dependsOn"][0]["containerName"], "proxy");
    let sub = aws(
        h,
        &key,
        &[
            "submit-job",
            "--job-name",
            "ecs-job",
            "--job-queue",
            &c.held,
            "--job-definition",
            "ecs",
            "--ecs-properties-override",
            r#"{"taskProperties": [{"containers": [{"name": "app", "command": ["false"]}]}]}"#,
        ],
    )
    .unwrap();
    let o = jobs.get(sub["jobId"].as_str().unwrap()).await.unwrap().spec.pod_overrides.unwrap();
    assert_eq!(o.containers[0].command, Some(vec!["false".to_string()]));
    let e = register(
        "ecs-bad",
        "ecs",
        r#"{"taskProperties": [{"containers": [{"name": "a", "image": "i", "essential": false}]}]}"#,
    )
    .unwrap_err();
    assert!(e.contains("essential"), "{e}");
    c.cleanup().await;
}

#[tokio::test]
async fn aws_cli_runs_a_multinode_job_and_describes_its_nodes() {
    let h = harness().await;
    let c = corner("api-mnp").await;
    let key = create_key(h, &c.env.ns, &[]);
    until_answered(h, &key).await;
    let nodes = r#"{"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [
        {"targetNodes": "0", "container": {"image": "mpi-main:1", "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "1024"}]}},
        {"targetNodes": "1:", "container": {"image": "mpi-worker:1", "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "1024"}]}}]}"#;
    let reg = aws(
        h,
        &key,
        &[
            "register-job-definition",
            "--job-definition-name",
            "mpi",
            "--type",
            "multinode",
            "--node-properties",
            nodes,
        ],
    )
    .unwrap();
    assert_eq!(reg["revision"], 1, "{reg}");
    let described = aws(h, &key, &["describe-job-definitions", "--job-definition-name", "mpi"]).unwrap();
    assert_eq!(described["jobDefinitions"][0]["type"], "multinode", "{described}");
    assert_eq!(described["jobDefinitions"][0]["nodeProperties"]["numNodes"], 2);

    // Three nodes instead of two: the open range grows; the workers get 2 vCPUs.
    let overrides = r#"{"numNodes": 3, "nodePropertyOverrides": [{"targetNodes": "1:", "containerOverrides": {"resourceRequirements": [{"type": "VCPU", "value": "2"}]}}]}"#;
    let sub = aws(
        h,
        &key,
        &[
            "submit-job",
            "--job-name",
            "ring",
            "--job-queue",
            &c.queue,
            "--job-definition",
            "mpi",
            "--node-overrides",
            overrides,
            "--tags",
            "sim.barge.dev/main-duration=3s",
        ],
    )
    .unwrap();
    let id = sub["jobId"].as_str().unwrap().to_string();
    let done = eventually("the multinode job succeeds", WAIT, || async {
        let d = aws(h, &key, &["describe-jobs", "--jobs", &id]).ok()?;
        (d["jobs"][0]["status"] == "SUCCEEDED").then_some(d)
    })
    .await;
    assert_eq!(done["jobs"][0]["nodeProperties"]["numNodes"], 3, "{done}");
    let node = aws(h, &key, &["describe-jobs", "--jobs", &format!("{id}#2")]).unwrap();
    let node = &node["jobs"][0];
    assert_eq!(node["jobId"], format!("{id}#2"), "{node}");
    assert_eq!(node["nodeDetails"]["nodeIndex"], 2);
    assert_eq!(node["nodeDetails"]["isMainNode"], false);
    assert_eq!(node["container"]["image"], "mpi-worker:1");
    assert_eq!(node["container"]["vcpus"].as_f64(), Some(2.0));

    // A multinode definition takes no array and no containerOverrides, as in AWS.
    let refused = aws(
        h,
        &key,
        &[
            "submit-job",
            "--job-name",
            "arr",
            "--job-queue",
            &c.queue,
            "--job-definition",
            "mpi",
            "--array-properties",
            "size=2",
        ],
    )
    .unwrap_err();
    assert!(refused.contains("cannot be an array job"), "{refused}");
    c.cleanup().await;
}

#[tokio::test]
async fn aws_cli_runs_a_multinode_job_of_eks_pods() {
    let h = harness().await;
    let c = corner("api-mnp-eks").await;
    let key = create_key(h, &c.env.ns, &[]);
    until_answered(h, &key).await;
    // AWS Batch on EKS's multi-node definition: each range a pod, the main one of two containers.
    let nodes = r#"{"numNodes": 3, "mainNode": 0, "nodeRangeProperties": [
        {"targetNodes": "0", "eksProperties": {"podProperties": {"containers": [
            {"name": "main", "image": "mpi-main:1", "command": ["main", "Ref::steps"],
             "resources": {"limits": {"cpu": "1", "memory": "1024Mi"}}},
            {"name": "log", "image": "fluent-bit:3", "resources": {"limits": {"cpu": "250m", "memory": "128Mi"}}}]}}},
        {"targetNodes": "1:", "eksProperties": {"podProperties": {"containers": [
            {"name": "worker", "image": "mpi-worker:1", "resources": {"limits": {"cpu": "1", "memory": "1024Mi"}}}]}}}]}"#;
    let reg = aws(
        h,
        &key,
        &[
            "register-job-definition",
            "--job-definition-name",
            "mpi-eks",
            "--type",
            "multinode",
            "--node-properties",
            nodes,
            "--parameters",
            "steps=10",
        ],
    )
    .unwrap();
    assert_eq!(reg["revision"], 1, "{reg}");
    let described = aws(h, &key, &["describe-job-definitions", "--job-definition-name", "mpi-eks"]).unwrap();
    let ranges = &described["jobDefinitions"][0]["nodeProperties"]["nodeRangeProperties"];
    assert_eq!(ranges[0]["eksProperties"]["podProperties"]["containers"][1]["name"], "log", "{described}");
    assert!(ranges[0].get("container").is_none(), "an EKS range is described as a pod: {described}");

    // Node 2 runs another image (the range's eksPropertiesOverride, by container name).
    let overrides = r#"{"nodePropertyOverrides": [{"targetNodes": "2", "eksPropertiesOverride": {"podProperties": {"containers": [{"name": "worker", "image": "mpi-worker:2"}]}}}]}"#;
    let sub = aws(
        h,
        &key,
        &[
            "submit-job",
            "--job-name",
            "ring-eks",
            "--job-queue",
            &c.queue,
            "--job-definition",
            "mpi-eks",
            "--node-overrides",
            overrides,
            "--tags",
            "sim.barge.dev/main-duration=3s",
        ],
    )
    .unwrap();
    let id = sub["jobId"].as_str().unwrap().to_string();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.env.client.clone(), &c.env.ns);
    let by_node = eventually("the gang's three pods", WAIT, || async {
        let list =
            pods.list(&ListParams::default().labels(&format!("barge.dev/job-name={id}"))).await.ok()?;
        let mut by_node = std::collections::BTreeMap::new();
        for p in list.items {
            let index = p.labels().get("barge.dev/node-index")?.clone();
            by_node.insert(index, p);
        }
        (by_node.len() == 3).then_some(by_node)
    })
    .await;
    let containers = |i: &str| by_node[i].spec.as_ref().unwrap().containers.clone();
    let main = containers("0");
    assert_eq!(main.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["main", "log"]);
    assert_eq!(main[0].command.as_deref().unwrap(), ["main", "10"], "parameters reach the range's pod");
    let env = |c: &k8s_openapi::api::core::v1::Container, name: &str| {
        c.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone())
    };
    assert_eq!(env(&main[0], "AWS_BATCH_JOB_NODE_INDEX").as_deref(), Some("0"));
    assert_eq!(env(&main[0], "AWS_BATCH_JOB_NUM_NODES").as_deref(), Some("3"));
    assert_eq!(env(&containers("1")[0], "AWS_BATCH_JOB_NODE_INDEX").as_deref(), Some("1"));
    assert_eq!(containers("1")[0].image.as_deref(), Some("mpi-worker:1"));
    assert_eq!(containers("2")[0].image.as_deref(), Some("mpi-worker:2"), "the override reached node 2 only");
    eventually("the EKS multinode job succeeds", WAIT, || async {
        let d = aws(h, &key, &["describe-jobs", "--jobs", &id]).ok()?;
        (d["jobs"][0]["status"] == "SUCCEEDED").then_some(())
    })
    .await;
    let node = aws(h, &key, &["describe-jobs", "--jobs", &format!("{id}#2")]).unwrap();
    assert_eq!(node["jobs"][0]["container"]["image"], "mpi-worker:2", "{node}");

    // A range is a container or a pod, not both, and an eksPropertiesOverride needs a pod's range.
    let both = r#"{"numNodes": 1, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0", "container": {"image": "a"},
        "eksProperties": {"podProperties": {"containers": [{"image": "b"}]}}}]}"#;
    let refused = aws(
        h,
        &key,
        &[
            "register-job-definition",
            "--job-definition-name",
            "both",
            "--type",
            "multinode",
            "--node-properties",
            both,
        ],
    )
    .unwrap_err();
    assert!(refused.contains("one of container or eksProperties"), "{refused}");
    c.cleanup().await;
}

#[tokio::test]
async fn refusals_are_aws_errors_and_create_nothing() {
    let h = harness().await;
    let c = corner("api-refuse").await;
    let o = corner("api-other").await;
    let (env, queue, other, other_queue) = (&c.env, &c.queue, &o.env, &o.queue);
    let key = create_key(h, &env.ns, &[queue]);
    let stranger = create_key(h, &other.ns, &[]);
    until_answered(h, &key).await;
    until_answered(h, &stranger).await;
    let now = SystemTime::now();

    let (status, body) = call(h, None, "describejobqueues", b"{}".to_vec(), now).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (403, Some("MissingAuthenticationTokenException")),
        "{body}"
    );
    let unknown = Key { id: "BRGNOSUCHKEY000000000".into(), secret: key.secret.clone() };
    let (status, body) = call(h, Some(&unknown), "describejobqueues", b"{}".to_vec(), now).await;
    assert_eq!((status, body["__type"].as_str()), (403, Some("UnrecognizedClientException")), "{body}");
    let wrong = Key { id: key.id.clone(), secret: "x".repeat(40) };
    let (status, body) = call(h, Some(&wrong), "describejobqueues", b"{}".to_vec(), now).await;
    assert_eq!((status, body["__type"].as_str()), (403, Some("InvalidSignatureException")), "{body}");
    let old = now - Duration::from_secs(16 * 60);
    let (status, body) = call(h, Some(&key), "describejobqueues", b"{}".to_vec(), old).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("Signature expired"), "{body}");

    // Bad bodies: the AWS error, naming what is wrong.
    let (status, body) = call(h, Some(&key), "submitjob", b"{not json".to_vec(), now).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("ClientException")), "{body}");
    let (_, body) = signed(
        h,
        &key,
        "submitjob",
        json!({"jobName": "a", "jobQueue": queue, "jobDefinition": "d", "arrayProperties": {"size": "ten"}}),
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("arrayProperties.size"), "{body}");
    let (_, body) = signed(h, &key, "submitjob", json!({"jobQueue": queue, "jobDefinition": "d"})).await;
    assert_eq!(body["message"], "jobName is required");
    let (_, body) = signed(
        h,
        &key,
        "submitjob",
        json!({"jobName": "a", "jobQueue": queue, "jobDefinition": "d", "consumableResourcePropertiesOverride": {}}),
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("consumableResourcePropertiesOverride is not supported"),
        "{body}"
    );
    let (status, body) = signed(h, &key, "launchrocket", json!({})).await;
    assert_eq!((status, body["__type"].as_str()), (404, Some("UnknownOperationException")), "{body}");
    let ids: Vec<String> = (0..101).map(|i| format!("j{i}")).collect();
    let (status, body) = signed(h, &key, "describejobs", json!({"jobs": ids})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("at most 100"), "{body}");
    let over = vec![b' '; barge::batch_api::MAX_BODY_BYTES + 1024];
    let (status, body) = call(h, Some(&key), "submitjob", over, now).await;
    assert_eq!((status, body["__type"].as_str()), (413, Some("ClientException")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("larger than"), "{body}");
    // 10 MiB: refused after the first MiB; the server may close the connection before the
    // client has sent the rest, and then the client sees no answer at all.
    let huge = vec![b' '; 10 * 1024 * 1024];
    if let Ok((status, body)) = try_call(h, Some(&key), "submitjob", huge, now).await {
        assert_eq!((status, body["__type"].as_str()), (413, Some("ClientException")), "{body}");
    }

    // Another namespace's jobs, and a queue outside the key's list, do not exist for it.
    other.job("theirs", other_queue, 1.0, json!({}), json!({})).await;
    let (_, body) = signed(h, &key, "describejobs", json!({"jobs": ["theirs"]})).await;
    assert_eq!(body["jobs"], json!([]), "{body}");
    // AWS answers CancelJob and TerminateJob of an unknown id with success; so for another
    // namespace's job, and the job is left alone.
    for op in ["canceljob", "terminatejob"] {
        let (status, body) = signed(h, &key, op, json!({"jobId": "theirs", "reason": "mine now"})).await;
        assert_eq!((status, &body), (200, &json!({})), "{op}");
    }
    let theirs = other.jobs.get("theirs").await.unwrap();
    assert!(theirs.spec.cancel.is_none() && theirs.spec.terminate.is_none(), "{:?}", theirs.spec);
    let (_, body) =
        signed(h, &key, "submitjob", json!({"jobName": "a", "jobQueue": other_queue, "jobDefinition": "d"}))
            .await;
    assert_eq!(body["message"], format!("JobQueue {other_queue} does not exist"));
    // ...while the key of their namespace sees them.
    let (_, body) = signed(
        h,
        &stranger,
        "listjobs",
        json!({"jobQueue": other_queue, "filters": [{"name": "JOB_NAME", "values": ["the*"]}]}),
    )
    .await;
    assert_eq!(body["jobSummaryList"][0]["jobId"], "theirs", "{body}");

    // None of that created a job.
    let jobs: Api<BatchJob> = Api::namespaced(env.client.clone(), &env.ns);
    assert!(jobs.list(&ListParams::default()).await.unwrap().items.is_empty());

    // A key that asks too fast is throttled, as AWS throttles (50 a second by default).
    let burst =
        futures::future::join_all((0..150).map(|_| signed(h, &key, "describejobqueues", json!({})))).await;
    let throttled: Vec<&Value> = burst.iter().filter(|(s, _)| *s == 429).map(|(_, b)| b).collect();
    assert!(!throttled.is_empty() && throttled.len() < 150, "{} of 150 throttled", throttled.len());
    assert_eq!(throttled[0]["__type"], "TooManyRequestsException");

    // A revoked key is refused from then on.
    let out = Command::new(env!("CARGO_BIN_EXE_barge"))
        .args(["credentials", "revoke", &stranger.id])
        .env("BARGE_CREDENTIALS_NAMESPACE", &h.credentials_ns)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the revoked key is refused", WAIT, || async {
        let (status, body) = signed(h, &stranger, "describejobqueues", json!({})).await;
        (status == 403 && body["__type"] == "UnrecognizedClientException").then_some(())
    })
    .await;
    c.cleanup().await;
    o.cleanup().await;
}

/// The Rust AWS SDK for Batch, pointed at Barge with an issued key.
fn sdk(h: &Harness, key: &Key) -> aws_sdk_batch::Client {
    use aws_sdk_batch::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_batch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{}", h.port))
        .credentials_provider(Credentials::new(&key.id, &key.secret, None, None, "barge-test"))
        .build();
    aws_sdk_batch::Client::from_conf(conf)
}

#[tokio::test]
async fn the_rust_sdk_runs_every_operation() {
    use aws_sdk_batch::error::ProvideErrorMetadata;
    use aws_sdk_batch::types::{
        ArrayProperties, ContainerOverrides, ContainerProperties, JobDependency, JobStatus, KeyValuePair,
        ResourceRequirement, ResourceType, RetryStrategy,
    };
    let h = harness().await;
    let c = corner("api-sdk").await;
    let key = create_key(h, &c.env.ns, &[]);
    until_answered(h, &key).await;
    let batch = sdk(h, &key);

    let queues = batch.describe_job_queues().send().await.unwrap();
    let names: Vec<&str> = queues.job_queues().iter().filter_map(|q| q.job_queue_name()).collect();
    assert!(names.contains(&c.queue.as_str()) && names.contains(&c.held.as_str()), "{names:?}");
    let envs = batch.describe_compute_environments().send().await.unwrap();
    let ce = envs
        .compute_environments()
        .iter()
        .find(|e| e.compute_environment_name() == Some(c.ce.as_str()))
        .unwrap();
    assert_eq!(ce.compute_resources().and_then(|r| r.r#type()).map(|t| t.as_str()), Some("EC2"));

    let reg = batch
        .register_job_definition()
        .job_definition_name("Sdk_Def")
        .r#type("container".into())
        .container_properties(
            ContainerProperties::builder()
                .image("busybox:1.36")
                .command("echo")
                .command("Ref::n")
                .resource_requirements(
                    ResourceRequirement::builder().r#type(ResourceType::Vcpu).value("1").build(),
                )
                .resource_requirements(
                    ResourceRequirement::builder().r#type(ResourceType::Memory).value("256").build(),
                )
                .build(),
        )
        .parameters("n", "0")
        .retry_strategy(RetryStrategy::builder().attempts(3).build())
        .tags("sim.barge.dev/duration", "1s")
        .propagate_tags(true)
        .send()
        .await
        .unwrap();
    assert_eq!(reg.job_definition_name(), Some("Sdk_Def"));
    let rev = reg.revision().unwrap();
    let defs =
        batch.describe_job_definitions().job_definitions(format!("Sdk_Def:{rev}")).send().await.unwrap();
    let def = &defs.job_definitions()[0];
    assert_eq!(def.retry_strategy().and_then(|r| r.attempts()), Some(3));
    assert_eq!(def.container_properties().and_then(|p| p.image()), Some("busybox:1.36"));

    let first = batch
        .submit_job()
        .job_name("sdk-one")
        .job_queue(&c.queue)
        .job_definition("Sdk_Def")
        .parameters("n", "7")
        .container_overrides(
            ContainerOverrides::builder()
                .environment(KeyValuePair::builder().name("MODE").value("fast").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = first.job_id().unwrap().to_string();
    let array = batch
        .submit_job()
        .job_name("sdk-array")
        .job_queue(&c.queue)
        .job_definition(reg.job_definition_arn().unwrap())
        .array_properties(ArrayProperties::builder().size(2).build())
        .depends_on(JobDependency::builder().job_id(&id).build())
        .send()
        .await
        .unwrap();
    let array_id = array.job_id().unwrap().to_string();
    let done = eventually("the SDK's jobs succeed", WAIT, || async {
        let d = batch.describe_jobs().jobs(&id).jobs(&array_id).send().await.ok()?;
        (d.jobs().len() == 2 && d.jobs().iter().all(|j| j.status() == Some(&JobStatus::Succeeded)))
            .then_some(d)
    })
    .await;
    let one = done.jobs().iter().find(|j| j.job_id() == Some(id.as_str())).unwrap();
    assert_eq!(one.container().unwrap().command(), ["echo", "7"]);
    assert!(
        one.container()
            .unwrap()
            .environment()
            .iter()
            .any(|e| e.name() == Some("MODE") && e.value() == Some("fast"))
    );
    assert!(one.started_at().unwrap() <= one.stopped_at().unwrap());
    let arr = done.jobs().iter().find(|j| j.job_id() == Some(array_id.as_str())).unwrap();
    assert_eq!(arr.depends_on()[0].job_id(), Some(id.as_str()));
    assert_eq!(
        arr.array_properties().and_then(|a| a.status_summary()).and_then(|s| s.get("SUCCEEDED")),
        Some(&2)
    );

    let mut listed = Vec::new();
    let mut pages = batch
        .list_jobs()
        .job_queue(&c.queue)
        .job_status(JobStatus::Succeeded)
        .max_results(1)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        listed.extend(page.unwrap().job_summary_list().iter().filter_map(|s| s.job_id().map(String::from)));
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    let kids =
        batch.list_jobs().array_job_id(&array_id).job_status(JobStatus::Succeeded).send().await.unwrap();
    assert_eq!(kids.job_summary_list().len(), 2);

    let held = batch
        .submit_job()
        .job_name("sdk-held")
        .job_queue(&c.held)
        .job_definition("Sdk_Def")
        .send()
        .await
        .unwrap();
    batch.cancel_job().job_id(held.job_id().unwrap()).reason("changed my mind").send().await.unwrap();
    let stuck = batch
        .submit_job()
        .job_name("sdk-stuck")
        .job_queue(&c.held)
        .job_definition("Sdk_Def")
        .send()
        .await
        .unwrap();
    batch.terminate_job().job_id(stuck.job_id().unwrap()).reason("stop").send().await.unwrap();
    eventually("cancel and terminate end the held jobs", WAIT, || async {
        let d = batch.describe_jobs().jobs(held.job_id()?).jobs(stuck.job_id()?).send().await.ok()?;
        d.jobs().iter().all(|j| j.status() == Some(&JobStatus::Failed)).then_some(())
    })
    .await;

    let e = batch
        .submit_job()
        .job_name("x")
        .job_queue("missing")
        .job_definition("Sdk_Def")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ClientException"), "{e:?}");
    assert_eq!(e.message(), Some("JobQueue missing does not exist"));
    batch.deregister_job_definition().job_definition(format!("Sdk_Def:{rev}")).send().await.unwrap();
    let inactive = batch
        .describe_job_definitions()
        .job_definition_name("Sdk_Def")
        .status("INACTIVE")
        .send()
        .await
        .unwrap();
    assert_eq!(inactive.job_definitions().len(), 1);
    c.cleanup().await;
}

/// A self-signed certificate for 127.0.0.1, by openssl (CI installs it).
#[tokio::test]
async fn an_admin_key_makes_an_unmanaged_environment_and_a_queue_and_tags_them() {
    use aws_sdk_batch::error::ProvideErrorMetadata;
    use aws_sdk_batch::types::{
        CeState, CeType, ComputeEnvironmentOrder, ContainerProperties, JobStatus, JqState,
        ResourceRequirement, ResourceType,
    };
    let h = harness().await;
    let client = client().await;
    let ns = namespace(&client, "api-admin").await;
    let admin = create_key_with(h, &ns, &[], true);
    let plain = create_key(h, &ns, &[]);
    until_answered(h, &admin).await;
    until_answered(h, &plain).await;
    let (batch, user) = (sdk(h, &admin), sdk(h, &plain));
    let tag = suffix();
    let (ce_name, q_name) = (format!("Own_Nodes_{tag}"), format!("Own_Queue_{tag}"));

    let denied = user
        .create_compute_environment()
        .compute_environment_name(&ce_name)
        .r#type(CeType::Unmanaged)
        .send()
        .await;
    assert_eq!(denied.unwrap_err().code(), Some("AccessDeniedException"));
    // A MANAGED EC2 environment needs an instance role and minvCpus, as on AWS; nothing is made.
    let resources = |role: Option<&str>, min: Option<i32>| {
        aws_sdk_batch::types::ComputeResource::builder()
            .r#type(aws_sdk_batch::types::CrType::Ec2)
            .maxv_cpus(4)
            .set_minv_cpus(min)
            .set_instance_role(role.map(String::from))
            .subnets("subnet-1")
            .build()
    };
    for (r, needs) in [
        (resources(None, Some(0)), "Instance role is required"),
        (resources(Some("r"), None), "minvCpus is required"),
    ] {
        let refused = batch
            .create_compute_environment()
            .compute_environment_name(format!("{ce_name}-bad"))
            .r#type(CeType::Managed)
            .compute_resources(r)
            .send()
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("ClientException"));
        assert!(refused.message().unwrap().contains(needs), "{:?}", refused.message());
    }

    let ce = batch
        .create_compute_environment()
        .compute_environment_name(&ce_name)
        .r#type(CeType::Unmanaged)
        .unmanagedv_cpus(2)
        .tags("team", "film")
        .send()
        .await
        .unwrap();
    assert!(ce.compute_environment_arn().unwrap().ends_with(&format!(":compute-environment/{ce_name}")));
    let q = batch
        .create_job_queue()
        .job_queue_name(&q_name)
        .priority(5)
        .compute_environment_order(
            ComputeEnvironmentOrder::builder().order(1).compute_environment(&ce_name).build(),
        )
        .send()
        .await
        .unwrap();
    let q_arn = q.job_queue_arn().unwrap().to_string();

    // The environment is UNMANAGED, with no node yet: a user labels one for it.
    let envs = batch.describe_compute_environments().compute_environments(&ce_name).send().await.unwrap();
    let env = &envs.compute_environments()[0];
    assert_eq!(env.r#type(), Some(&CeType::Unmanaged));
    assert_eq!(env.unmanagedv_cpus(), Some(2));
    let object = Api::<barge::api::ComputeEnvironment>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|c| c.annotations().get("barge.dev/aws-name") == Some(&ce_name))
        .expect("the environment is a ComputeEnvironment object");
    let node = format!("own-{tag}");
    kwok_node(
        &client,
        &node,
        "4",
        "8Gi",
        [("barge.dev/compute-environment".to_string(), object.name_any())].into(),
    )
    .await;

    let reg = batch
        .register_job_definition()
        .job_definition_name(format!("own_def_{tag}"))
        .r#type("container".into())
        .container_properties(
            ContainerProperties::builder()
                .image("busybox:1.36")
                .command("true")
                .resource_requirements(
                    ResourceRequirement::builder().r#type(ResourceType::Vcpu).value("1").build(),
                )
                .resource_requirements(
                    ResourceRequirement::builder().r#type(ResourceType::Memory).value("256").build(),
                )
                .build(),
        )
        .tags("sim.barge.dev/duration", "1s")
        .propagate_tags(true)
        .send()
        .await
        .unwrap();
    let submit = |name: &str| {
        batch
            .submit_job()
            .job_name(name)
            .job_queue(&q_name)
            .job_definition(reg.job_definition_arn().unwrap())
            .send()
    };
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(submit(&format!("own-{i}")).await.unwrap().job_id().unwrap().to_string());
        }
        ids
    };
    // maxvCpus 2 (unmanagedvCpus) on a 4-vCPU node: at most two run at once, and all finish.
    eventually("the unmanaged environment's jobs succeed", WAIT, || async {
        let d = batch.describe_jobs().set_jobs(Some(ids.clone())).send().await.ok()?;
        d.jobs().iter().all(|j| j.status() == Some(&JobStatus::Succeeded)).then_some(())
    })
    .await;
    let ces = Api::<barge::api::ComputeEnvironment>::all(client.clone());
    eventually("the environment's status counts its node", WAIT, || async {
        let s = ces.get(&object.name_any()).await.ok()?.status?;
        ((s.nodes, s.total_vcpus) == (1, 4) && s.message.as_deref()?.contains(&node)).then_some(())
    })
    .await;
    assert!(
        Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()).get(&node).await.is_ok(),
        "never removed"
    );

    // Tags: on the environment from its creation, then on the queue and on a job.
    let ce_arn = ce.compute_environment_arn().unwrap();
    let listed = batch.list_tags_for_resource().resource_arn(ce_arn).send().await.unwrap();
    assert_eq!(listed.tags().and_then(|t| t.get("team")).map(String::as_str), Some("film"));
    batch
        .tag_resource()
        .resource_arn(&q_arn)
        .tags("cost centre", "42")
        .tags("owner", "ana")
        .send()
        .await
        .unwrap();
    batch.untag_resource().resource_arn(&q_arn).tag_keys("owner").send().await.unwrap();
    let q_tags = batch.list_tags_for_resource().resource_arn(&q_arn).send().await.unwrap();
    assert_eq!(q_tags.tags().map(|t| t.len()), Some(1));
    assert_eq!(q_tags.tags().and_then(|t| t.get("cost centre")).map(String::as_str), Some("42"));
    let denied = user.tag_resource().resource_arn(&q_arn).tags("x", "y").send().await;
    assert_eq!(denied.unwrap_err().code(), Some("AccessDeniedException"));
    let job_arn = format!("arn:aws:batch:us-east-1:123456789012:job/{}", ids[0]);
    user.tag_resource().resource_arn(&job_arn).tags("run", "7").send().await.unwrap();
    let j_tags = user.list_tags_for_resource().resource_arn(&job_arn).send().await.unwrap();
    assert_eq!(j_tags.tags().and_then(|t| t.get("run")).map(String::as_str), Some("7"));
    let bad = user.tag_resource().resource_arn(&job_arn).tags("aws:mine", "x").send().await;
    assert_eq!(bad.unwrap_err().code(), Some("ClientException"));

    // Deleting follows AWS's order: disable, leave the queue, then delete.
    let enabled = batch.delete_compute_environment().compute_environment(&ce_name).send().await;
    assert!(enabled.unwrap_err().message().unwrap().contains("ENABLED"));
    batch.update_job_queue().job_queue(&q_name).state(JqState::Disabled).send().await.unwrap();
    batch
        .update_compute_environment()
        .compute_environment(&ce_name)
        .state(CeState::Disabled)
        .send()
        .await
        .unwrap();
    let in_use = batch.delete_compute_environment().compute_environment(&ce_name).send().await;
    assert!(in_use.unwrap_err().message().unwrap().contains("JobQueue relationship"));
    batch.delete_job_queue().job_queue(&q_name).send().await.unwrap();
    eventually("the queue is gone", WAIT, || async {
        let d = batch.describe_job_queues().job_queues(&q_name).send().await.ok()?;
        d.job_queues().is_empty().then_some(())
    })
    .await;
    batch.delete_compute_environment().compute_environment(&ce_name).send().await.unwrap();
    // The label was the user's (it is the selector): it stays on the node.
    delete_node(&client, &node).await;
}

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

#[tokio::test]
async fn a_standby_replica_answers_over_https() {
    use k8s_openapi::api::coordination::v1::Lease;
    let h = harness().await;
    let c = corner("api-tls").await;
    let key = create_key(h, &c.env.ns, &[]);
    let (cert, tls_key) =
        self_signed(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", c.env.tag)));

    // Someone else holds the leader Lease for an hour: this replica only stands by, and
    // still answers the AWS Batch API from its own watches.
    let leases: Api<Lease> = Api::namespaced(c.env.client.clone(), &c.env.ns);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "api-standby"},
        "spec": {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600}}))
    .unwrap();
    let mut lease = lease;
    lease.spec.as_mut().unwrap().renew_time = Some(now);
    leases.create(&Default::default(), &lease).await.unwrap();
    let port = free_port();
    let (addr, cert_s, key_s) =
        (format!("127.0.0.1:{port}"), cert.display().to_string(), tls_key.display().to_string());
    let mut standby = spawn_operator_with(
        "batch-api-standby",
        &[
            ("BARGE_LEADER_ELECT", "true"),
            ("POD_NAMESPACE", &c.env.ns),
            ("BARGE_LEASE_NAME", "api-standby"),
            ("BARGE_LEASE_DURATION_SECONDS", "3600"),
            ("BARGE_BATCH_API_ADDR", &addr),
            ("BARGE_BATCH_API_TLS_CERT", &cert_s),
            ("BARGE_BATCH_API_TLS_KEY", &key_s),
            ("BARGE_CREDENTIALS_NAMESPACE", &h.credentials_ns),
        ],
    );
    let https = |args: &[&str]| {
        let out = aws_tool(h, &key, "aws")
            .env("AWS_ENDPOINT_URL_BATCH", format!("https://127.0.0.1:{port}"))
            .env("AWS_CA_BUNDLE", &cert)
            .arg("batch")
            .args(args)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap_or(json!({})))
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let queues =
        eventually("the standby answers over https", WAIT, || async { https(&["describe-job-queues"]).ok() })
            .await;
    assert!(
        queues["jobQueues"].as_array().unwrap().iter().any(|q| q["jobQueueName"] == c.queue.as_str()),
        "{queues}"
    );
    https(&[
        "register-job-definition",
        "--job-definition-name",
        "tls",
        "--type",
        "container",
        "--container-properties",
        r#"{"image": "busybox:1.36", "command": ["true"]}"#,
        "--tags",
        "sim.barge.dev/duration=1s",
        "--propagate-tags",
    ])
    .unwrap();
    let job =
        https(&["submit-job", "--job-name", "over-tls", "--job-queue", &c.queue, "--job-definition", "tls"])
            .unwrap();
    let id = job["jobId"].as_str().unwrap().to_string();
    eventually("the job submitted to the standby runs", WAIT, || async {
        let d = https(&["describe-jobs", "--jobs", &id]).ok()?;
        (d["jobs"][0]["status"] == "SUCCEEDED").then_some(())
    })
    .await;
    // Plain HTTP to the HTTPS port gets no answer.
    let plain =
        try_call(h_at(port), Some(&key), "describejobqueues", b"{}".to_vec(), SystemTime::now()).await;
    assert!(plain.is_err() || plain.unwrap().0 >= 400);
    let lease = leases.get("api-standby").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("another-replica"),
        "the standby never led"
    );
    let _ = standby.kill();
    let _ = standby.wait();
    c.cleanup().await;
}

/// A harness-shaped handle on another port, for raw calls to it.
fn h_at(port: u16) -> &'static Harness {
    Box::leak(Box::new(Harness { port, credentials_ns: String::new() }))
}
