//! Job output that outlives its pod, on the local cluster's real node: the operator archives
//! every attempt's output in a bucket (moto's S3 here), and it is read back after the pod is
//! gone through CloudWatch Logs' API with the real aws-cli and boto3, and with `barge logs`.
//!
//! One operator for this binary, with the archive and the AWS endpoints on; one unmanaged
//! compute environment on the real node. Where the cluster has no real node the tests say
//! they are skipped (CI requires it).

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use barge::api::BatchJob;
use barge::api::batch_job::JobPhase;
use common::batch::{Key, create_key, free_port};
use common::*;
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const CE: &str = "log-tests";
const QUEUE: &str = "log-tests";
const IMAGE: &str = REAL_NODE_IMAGE;
const BUCKET: &str = "barge-log-tests";
const GROUP: &str = "/aws/batch/job";
const RUN_WAIT: Duration = Duration::from_secs(180);

/// The restart test stops the operator three times: the others wait for it (they hold this
/// shared, it alone), since output a pod prints while no operator runs, if the pod is gone
/// before one is back, is lost (see the README's Job output).
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

struct Harness {
    port: u16,
    credentials_ns: String,
    moto: String,
    /// Restarts the operator (SIGKILL, then a new one); answers once it is started.
    restart: mpsc::Sender<mpsc::Sender<()>>,
}

async fn harness(what: &str) -> Option<&'static Harness> {
    let node = real_node(what)?;
    static H: OnceCell<Harness> = OnceCell::const_new();
    Some(
        H.get_or_init(|| async {
            let client = client().await;
            install_crds(&client).await;
            let moto = std::env::var("BARGE_MOTO_URL").expect("BARGE_MOTO_URL: run with `make test`");
            s3(&moto).await.create_bucket().bucket(BUCKET).send().await.unwrap();
            let credentials_ns = namespace(&client, "log-keys").await;
            let port = free_port();
            let env = common::batch::archive_operator_env(port, &credentials_ns, BUCKET, &moto);
            // The operator lives on a thread of its own (it dies with the thread that
            // started it), which also restarts it when asked.
            let (restart, asks) = mpsc::channel::<mpsc::Sender<()>>();
            let (started, up) = mpsc::channel();
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut child = spawn_operator_with("logs", &env);
                started.send(()).unwrap();
                while let Ok(done) = asks.recv() {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    child = spawn_operator_with("logs", &env);
                    done.send(()).unwrap();
                }
                let _ = child.wait();
            });
            up.recv().unwrap();
            real_node_environment(&client, &node, CE, QUEUE).await;
            Harness { port, credentials_ns, moto, restart }
        })
        .await,
    )
}

async fn s3(moto: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(moto)
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Whether the archive has closed a stream (its last chunk is marked `-end`).
async fn closed(h: &Harness, ns: &str, stream: &str) -> bool {
    closed_in(h, ns, GROUP, stream).await
}

async fn closed_in(h: &Harness, ns: &str, group: &str, stream: &str) -> bool {
    let prefix = format!("{ns}/{}/{}/", barge::archive::encode(group), barge::archive::encode(stream));
    let out = s3(&h.moto).await.list_objects_v2().bucket(BUCKET).prefix(prefix).send().await.unwrap();
    out.contents().iter().any(|o| o.key().is_some_and(|k| k.ends_with("-end")))
}

/// The attempt's stream, once the archive has closed it.
async fn archived(h: &Harness, ns: &str, job: &BatchJob, attempt: usize) -> String {
    let stream =
        job.status.as_ref().unwrap().attempts[attempt].log_stream_name.clone().expect("a log stream name");
    eventually(&format!("{stream} archived"), RUN_WAIT, || async {
        closed(h, ns, &stream).await.then_some(())
    })
    .await;
    stream
}

/// A program of the AWS clients' venv with only the endpoints, the key and a region set.
fn tool(h: &Harness, key: &Key, program: &str) -> Command {
    common::batch::venv_tool(&common::batch::clients_bin(), program, h.port, key)
}

/// The restart test stops the operator, endpoint and all, for a moment: a call that could not
/// connect is made again.
fn aws_logs(h: &Harness, key: &Key, args: &[&str]) -> Result<Value, String> {
    for _ in 0..10 {
        let out = tool(h, key, "aws").arg("logs").args(args).args(["--output", "json"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("Could not connect to the endpoint") {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        if !out.status.success() {
            return Err(err);
        }
        return Ok(serde_json::from_slice(&out.stdout).unwrap_or(json!({})));
    }
    Err("the endpoint did not answer".into())
}

fn messages(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_string()).collect()
}

fn get_events(h: &Harness, key: &Key, stream: &str, extra: &[&str]) -> Value {
    let mut args = vec!["get-log-events", "--log-group-name", GROUP, "--log-stream-name", stream];
    args.extend_from_slice(extra);
    aws_logs(h, key, &args).unwrap()
}

/// `barge logs` as a user runs it, with the archive's settings as the operator's.
fn barge_logs(h: &Harness, ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("logs")
        .args(args)
        .args(["-n", ns])
        .env("BARGE_LOGS_S3_BUCKET", BUCKET)
        .env("BARGE_LOGS_S3_ENDPOINT", &h.moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("barge runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn delete_pod(client: &Client, ns: &str, pod: &str) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods.delete(pod, &DeleteParams::default()).await;
    eventually(&format!("pod {pod} gone"), RUN_WAIT, || async {
        pods.get_opt(pod).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn fifty_thousand_lines_outlive_their_pod_once_and_in_order() {
    let _shared = EXCLUSIVE.read().await;
    let Some(h) = harness("the 50,000-line archive test").await else { return };
    let client = client().await;
    let ns = namespace(&client, "logs-big").await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    // The pause: the local node's containerd (1.6) drops what is still in a container's
    // stdout pipe when its process exits (the kubelet's own file then ends early).
    let jobs = submit_job(
        &client,
        &ns,
        QUEUE,
        "numbers",
        json!({"container": real_container("seq 1 50000; sleep 1")}),
    )
    .await;
    let job = job_in_phase(&jobs, "numbers", JobPhase::Succeeded, RUN_WAIT).await;
    let pod = job.status.as_ref().unwrap().attempts[0].pod_name.clone();
    let stream = archived(h, &ns, &job, 0).await;
    assert_eq!(stream, format!("numbers/default/{pod}"), "AWS Batch's <definition or job>/default/<task>");
    delete_pod(&client, &ns, &pod).await;
    let want: Vec<String> = (1..=50_000).map(|i| i.to_string()).collect();

    // Forward from the head, a page of 10,000 at a time, until the token comes back.
    let mut got = Vec::new();
    let mut page = get_events(h, &key, &stream, &["--start-from-head"]);
    let mut calls = 1;
    loop {
        got.extend(messages(&page));
        let token = page["nextForwardToken"].as_str().unwrap().to_string();
        let next = get_events(h, &key, &stream, &["--next-token", &token]);
        calls += 1;
        if next["nextForwardToken"] == token.as_str() {
            assert!(messages(&next).is_empty(), "the end of the stream gives no events");
            break;
        }
        page = next;
        assert!(calls < 20, "paging forward never ended");
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "every line once, in order");

    // Backward from the tail: the last page first, then each page before it.
    let mut pages = Vec::new();
    let mut page = get_events(h, &key, &stream, &[]);
    loop {
        let events = messages(&page);
        let token = page["nextBackwardToken"].as_str().unwrap().to_string();
        if events.is_empty() {
            break;
        }
        pages.push(events);
        let before = get_events(h, &key, &stream, &["--next-token", &token]);
        if before["nextBackwardToken"] == token.as_str() && messages(&before).is_empty() {
            break;
        }
        page = before;
        assert!(pages.len() < 20, "paging backward never ended");
    }
    assert_eq!(pages[0].first().map(String::as_str), Some("40001"));
    let back: Vec<String> = pages.into_iter().rev().flatten().collect();
    assert!(back == want, "backward pages put together are the stream");

    // A time window and a limit.
    let first = get_events(h, &key, &stream, &["--start-from-head", "--limit", "3"]);
    assert_eq!(messages(&first), ["1", "2", "3"]);

    // barge logs reads the archive once the pod is gone, and says so.
    let (ok, out, err) = barge_logs(h, &ns, &["numbers"]);
    assert!(ok, "{err}");
    assert!(err.contains("is gone") && err.contains("log archive"), "{err}");
    assert_eq!(out.lines().count(), 50_000);
    assert!(
        out.lines().map(str::to_string).eq(want.iter().cloned()),
        "barge logs: every line once, in order"
    );
}

#[tokio::test]
async fn awslogs_group_and_stream_prefix_name_where_the_output_goes() {
    let _shared = EXCLUSIVE.read().await;
    let Some(h) = harness("the awslogs options' test").await else { return };
    let client = client().await;
    let ns = namespace(&client, "logs-prefix").await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    let jobs = submit_job(
        &client,
        &ns,
        QUEUE,
        "etl",
        json!({"container": {"image": IMAGE, "command": ["sh", "-c", "echo extract; echo load"],
                             "resources": {"vcpus": 0.25, "memory": "64Mi"},
                             "logConfiguration": {"logDriver": "awslogs",
                                 "options": {"awslogs-group": "/batch/etl", "awslogs-stream-prefix": "nightly"}}}}),
    )
    .await;
    let job = job_in_phase(&jobs, "etl", JobPhase::Succeeded, RUN_WAIT).await;
    let attempt = &job.status.as_ref().unwrap().attempts[0];
    let stream = attempt.log_stream_name.clone().unwrap();
    assert_eq!(stream, format!("nightly/default/{}", attempt.pod_name), "AWS's <prefix>/<container>/<task>");
    eventually("the stream archived in /batch/etl", RUN_WAIT, || async {
        closed_in(h, &ns, "/batch/etl", &stream).await.then_some(())
    })
    .await;
    let page = aws_logs(
        h,
        &key,
        &[
            "get-log-events",
            "--log-group-name",
            "/batch/etl",
            "--log-stream-name",
            &stream,
            "--start-from-head",
        ],
    )
    .unwrap();
    assert_eq!(messages(&page), ["extract", "load"]);
    delete_pod(&client, &ns, &attempt.pod_name).await;
    let (ok, out, err) = barge_logs(h, &ns, &["etl"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["extract", "load"], "{err}");
}

#[tokio::test]
async fn a_stopped_attempt_keeps_what_its_trap_printed() {
    let _shared = EXCLUSIVE.read().await;
    let Some(h) = harness("the stopped attempt's archive test").await else { return };
    let client = client().await;
    let ns = namespace(&client, "logs-stop").await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    let script = r#"trap 'echo "got SIGTERM"; exit 0' TERM; echo started; while :; do sleep 1; done"#;
    let jobs = submit_job(
        &client,
        &ns,
        QUEUE,
        "stopped",
        json!({"podTemplate": {"spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                   "name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                   "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]}}}),
    )
    .await;
    job_in_phase(&jobs, "stopped", JobPhase::Running, RUN_WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // TerminateJob, as `aws batch terminate-job` sends it.
    let stop = json!({"spec": {"terminate": {"reason": "enough"}}});
    jobs.patch("stopped", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&stop)).await.unwrap();
    let job = job_in_phase(&jobs, "stopped", JobPhase::Failed, RUN_WAIT).await;
    let stream = archived(h, &ns, &job, 0).await;
    // Barge deleted the pod when the timeout stopped it: what it printed is archived.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let pod = job.status.as_ref().unwrap().attempts[0].pod_name.clone();
    eventually("the stopped pod gone", RUN_WAIT, || async {
        pods.get_opt(&pod).await.ok()?.is_none().then_some(())
    })
    .await;
    let lines = messages(&get_events(h, &key, &stream, &["--start-from-head"]));
    assert_eq!(lines, ["started", "got SIGTERM"], "the trap's line is kept");
}

#[tokio::test]
async fn an_operator_killed_three_times_loses_and_doubles_no_line() {
    let _alone = EXCLUSIVE.write().await;
    let Some(h) = harness("the restart archive test").await else { return };
    let client = client().await;
    let ns = namespace(&client, "logs-restart").await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    // Five jobs print 300 numbered lines each, 20 a second, while the operator that
    // archives them (every 2 s) is killed three times.
    let script = "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo \"line $i\"; usleep 50000; done";
    let mut jobs = None;
    for k in 0..5 {
        jobs = Some(
            submit_job(
                &client,
                &ns,
                QUEUE,
                &format!("printer-{k}"),
                json!({"container": real_container(script)}),
            )
            .await,
        );
    }
    let jobs = jobs.unwrap();
    eventually("every printer running", RUN_WAIT, || async {
        let mut running = 0;
        for k in 0..5 {
            let j = jobs.get(&format!("printer-{k}")).await.ok()?;
            running += (j.status?.phase == JobPhase::Running) as u32;
        }
        (running == 5).then_some(())
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (done, started) = mpsc::channel();
        h.restart.send(done).unwrap();
        tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
    }
    let want: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    for k in 0..5 {
        let job = job_in_phase(&jobs, &format!("printer-{k}"), JobPhase::Succeeded, RUN_WAIT).await;
        let stream = archived(h, &ns, &job, 0).await;
        let page = get_events(h, &key, &stream, &["--start-from-head"]);
        assert_eq!(messages(&page), want, "printer-{k}: every line once, in order");
    }
}

#[tokio::test]
async fn filter_log_events_finds_a_term_across_an_arrays_children() {
    let _shared = EXCLUSIVE.read().await;
    let Some(h) = harness("the filter test").await else { return };
    let client = client().await;
    let ns = namespace(&client, "logs-filter").await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    let script = "echo \"child $AWS_BATCH_JOB_ARRAY_INDEX says needle-7\"; echo haystack";
    let jobs = submit_job(
        &client,
        &ns,
        QUEUE,
        "sweep",
        json!({"array": {"size": 3}, "container": real_container(script)}),
    )
    .await;
    let job = job_in_phase(&jobs, "sweep", JobPhase::Succeeded, RUN_WAIT).await;
    let uid = kube::ResourceExt::uid(&job).unwrap();
    let streams: Vec<String> = (0..3)
        .map(|i| format!("sweep/default/{}", barge::api::batch_job::child_pod_name("sweep", &uid, i, 0)))
        .collect();
    for s in &streams {
        eventually(&format!("{s} archived"), RUN_WAIT, || async { closed(h, &ns, s).await.then_some(()) })
            .await;
    }
    let found = aws_logs(
        h,
        &key,
        &[
            "filter-log-events",
            "--log-group-name",
            GROUP,
            "--log-stream-name-prefix",
            "sweep/",
            "--filter-pattern",
            "needle-7",
        ],
    )
    .unwrap();
    let mut hits: Vec<(String, String)> = found["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["logStreamName"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string())
        })
        .collect();
    hits.sort();
    let want: Vec<(String, String)> =
        (0..3).map(|i| (streams[i].clone(), format!("child {i} says needle-7"))).collect();
    assert_eq!(hits, want);
    let described = aws_logs(
        h,
        &key,
        &["describe-log-streams", "--log-group-name", GROUP, "--log-stream-name-prefix", "sweep/"],
    )
    .unwrap();
    let names: Vec<&str> = described["logStreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["logStreamName"].as_str().unwrap())
        .collect();
    assert_eq!(names, streams.iter().map(String::as_str).collect::<Vec<_>>());
    let groups = aws_logs(h, &key, &["describe-log-groups"]).unwrap();
    assert_eq!(groups["logGroups"][0]["logGroupName"], GROUP);
}

#[tokio::test]
async fn another_namespaces_key_and_bad_input_get_cloudwatch_logs_errors() {
    let _shared = EXCLUSIVE.read().await;
    let Some(h) = harness("the refusals test").await else { return };
    let client = client().await;
    let ns = namespace(&client, "logs-own").await;
    let key = create_key(&h.credentials_ns, &ns, &[], false);
    let jobs =
        submit_job(&client, &ns, QUEUE, "hello", json!({"container": real_container("echo hello")})).await;
    let job = job_in_phase(&jobs, "hello", JobPhase::Succeeded, RUN_WAIT).await;
    let stream = archived(h, &ns, &job, 0).await;
    assert_eq!(messages(&get_events(h, &key, &stream, &["--start-from-head"])), ["hello"]);

    let stranger_ns = namespace(&client, "logs-stranger").await;
    let stranger = create_key(&h.credentials_ns, &stranger_ns, &[], false);
    let e =
        aws_logs(h, &stranger, &["get-log-events", "--log-group-name", GROUP, "--log-stream-name", &stream])
            .unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");
    let e = aws_logs(h, &stranger, &["filter-log-events", "--log-group-name", GROUP]).unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");

    // Bad input, sent as is (boto3's own checks off): each an AWS error, nothing read.
    let script = format!(
        r#"
import boto3, botocore.config, json
c = boto3.client("logs", config=botocore.config.Config(parameter_validation=False))
def code(**kw):
    call = kw.pop("call", c.get_log_events)
    try:
        call(**kw)
        return "ok"
    except c.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
s = {stream:?}
print(json.dumps([
    code(logGroupName="{GROUP}", logStreamName=s, nextToken="f/not-a-token"),
    code(logGroupName="{GROUP}", logStreamName=s, limit=-1),
    code(logGroupName="{GROUP}", logStreamName="../logs-stranger/x"),
    code(call=c.filter_log_events, logGroupName="{GROUP}", filterPattern="x" * (1024 * 1024)),
    code(call=c.filter_log_events, logGroupName="{GROUP}", nextToken="zz"),
    code(logGroupName="{GROUP}", logStreamName=s),
]))
"#
    );
    let out = tool(h, &key, "python").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let codes: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        codes,
        [
            "InvalidParameterException",
            "InvalidParameterException",
            "InvalidParameterException",
            "InvalidParameterException",
            "InvalidParameterException",
            "ok"
        ]
    );
}
