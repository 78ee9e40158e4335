//! Jobs that really run, on the local cluster's real node (`real-0`: a kubelet with
//! containerd and runc, see hack/cluster/real-node.sh): exit codes, the environment a
//! container reads, retries decided by a real exit code, a timeout's SIGTERM and SIGKILL,
//! array children, all read back with `barge logs` as a user would.
//!
//! The node is one unmanaged compute environment (`real-tests`) shared by every test here,
//! each in a namespace of its own. Where the cluster has no real node these tests say they
//! are skipped; CI sets `BARGE_REQUIRE_REAL_NODE=1`, which makes that a failure.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use barge::api::BatchJob;
use barge::api::batch_job::JobPhase;
use common::*;
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const CE: &str = "real-tests";
const QUEUE: &str = "real-tests";
const IMAGE: &str = REAL_NODE_IMAGE;
/// A real container starts in a second or two; the timeout test needs its 60 s and more.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// The shared operator, and the real node as this binary's compute environment and queue.
/// `None` where the cluster has no real node (the test is then skipped).
async fn real(what: &str) -> Option<Client> {
    let node = real_node(what)?;
    let client = client().await;
    static READY: OnceCell<()> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            shared_operator(&client).await;
            real_node_environment(&client, &node, CE, QUEUE).await;
        })
        .await;
    Some(client)
}

async fn submit(client: &Client, ns: &str, name: &str, spec: Value) -> Api<BatchJob> {
    submit_job(client, ns, QUEUE, name, spec).await
}

fn container(script: &str) -> Value {
    real_container(script)
}

async fn wait_phase(jobs: &Api<BatchJob>, name: &str, phase: JobPhase) -> BatchJob {
    job_in_phase(jobs, name, phase, RUN_WAIT).await
}

/// `barge logs <args>` in `ns`: (exit status success, stdout, stderr).
fn barge_logs(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("logs")
        .args(args)
        .args(["-n", ns])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("barge runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn env_lines(out: &str) -> BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn a_failing_container_gives_its_exit_code_and_prints_the_documented_environment() {
    let Some(client) = real("the environment test").await else { return };
    let ns = namespace(&client, "real-env").await;
    let script = "env | grep -E '^(AWS_BATCH|BARGE)_' | sort; echo done; exit 3";
    let jobs = submit(&client, &ns, "print-env", json!({"container": container(script)})).await;
    let job = wait_phase(&jobs, "print-env", JobPhase::Failed).await;
    let s = job.status.clone().unwrap();
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(s.attempts[0].exit_code, Some(3), "{s:?}");
    assert_eq!(s.attempts[0].node_name.as_deref(), Some("real-0"));

    let (ok, out, err) = barge_logs(&ns, &["print-env"]);
    assert!(ok, "barge logs failed: {err}");
    let env = env_lines(&out);
    // The table of "The AWS Batch job environment" in the README, and Barge's own.
    assert_eq!(env.get("AWS_BATCH_JOB_ID"), Some(&job.name_any()), "{out}");
    assert_eq!(env.get("AWS_BATCH_JOB_ATTEMPT").map(String::as_str), Some("1"), "{out}");
    assert_eq!(env.get("AWS_BATCH_JQ_NAME").map(String::as_str), Some(QUEUE), "{out}");
    assert_eq!(env.get("AWS_BATCH_CE_NAME").map(String::as_str), Some(CE), "{out}");
    assert_eq!(env.get("BARGE_JOB_NAME").map(String::as_str), Some("print-env"), "{out}");
    assert_eq!(env.get("BARGE_JOB_QUEUE").map(String::as_str), Some(QUEUE), "{out}");
    assert_eq!(env.get("BARGE_JOB_ATTEMPT").map(String::as_str), Some("1"), "{out}");
    assert_eq!(env.get("BARGE_COMPUTE_ENVIRONMENT").map(String::as_str), Some(CE), "{out}");
    assert!(!env.contains_key("AWS_BATCH_JOB_ARRAY_INDEX"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");

    // An attempt that never was, said in one line.
    let (ok, _, err) = barge_logs(&ns, &["print-env", "--attempt", "2"]);
    assert!(!ok && err.contains("has had 1 attempt: there is no attempt 2"), "{err}");
    // The pod gone: its output went with it, and logs say so.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete(&s.attempts[0].pod_name, &DeleteParams::default()).await.unwrap();
    eventually("the pod gone", RUN_WAIT, || async {
        pods.get_opt(&s.attempts[0].pod_name).await.ok()?.is_none().then_some(())
    })
    .await;
    let (ok, _, err) = barge_logs(&ns, &["print-env"]);
    assert!(!ok && err.contains("is gone"), "{err}");
}

#[tokio::test]
async fn a_retry_on_exit_code_3_succeeds_on_the_second_attempt() {
    let Some(client) = real("the retry test").await else { return };
    let ns = namespace(&client, "real-retry").await;
    let script =
        r#"echo "attempt $AWS_BATCH_JOB_ATTEMPT"; [ "$AWS_BATCH_JOB_ATTEMPT" -ge 2 ] || exit 3; echo ok"#;
    let jobs = submit(
        &client,
        &ns,
        "flaky",
        json!({"container": container(script),
               "retryStrategy": {"attempts": 3, "evaluateOnExit": [
                   {"onExitCode": "3", "action": "RETRY"}, {"onExitCode": "*", "action": "EXIT"}]}}),
    )
    .await;
    let job = wait_phase(&jobs, "flaky", JobPhase::Succeeded).await;
    let s = job.status.unwrap();
    let codes: Vec<Option<i32>> = s.attempts.iter().map(|a| a.exit_code).collect();
    assert_eq!(codes, [Some(3), Some(0)], "{s:?}");

    let (ok, out, err) = barge_logs(&ns, &["flaky", "--attempt", "1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "attempt 1\n");
    let (ok, out, err) = barge_logs(&ns, &["flaky"]);
    assert!(ok, "{err}");
    assert_eq!(out, "attempt 2\nok\n");
}

#[tokio::test]
async fn a_timeout_sends_sigterm_then_sigkill_after_the_grace_period() {
    let Some(client) = real("the timeout test").await else { return };
    let ns = namespace(&client, "real-timeout").await;
    // Traps SIGTERM, says so, and keeps going: only SIGKILL, after the pod's 3-s grace
    // period, ends it. `barge logs -f` follows it to that end.
    let script = r#"trap 'echo "got SIGTERM"; t=1' TERM; echo started; while :; do [ -z "$t" ] || echo "still running"; sleep 1; done"#;
    let jobs = submit(
        &client,
        &ns,
        "stuck",
        json!({"timeout": {"attemptDurationSeconds": 60},
               "podTemplate": {"spec": {"terminationGracePeriodSeconds": 3, "containers": [{
                   "name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                   "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]}}}),
    )
    .await;
    wait_phase(&jobs, "stuck", JobPhase::Running).await;
    let follow = tokio::task::spawn_blocking({
        let ns = ns.clone();
        move || {
            let start = std::time::Instant::now();
            let r = barge_logs(&ns, &["stuck", "-f"]);
            (r, start.elapsed())
        }
    });
    let job = wait_phase(&jobs, "stuck", JobPhase::Failed).await;
    assert_eq!(
        job.status.as_ref().unwrap().status_reason.as_deref(),
        Some("Job attempt duration exceeded timeout")
    );
    let ((ok, out, err), took) = tokio::time::timeout(RUN_WAIT, follow).await.expect("logs -f ends").unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("started\n"), "{out}");
    assert!(out.contains("got SIGTERM\n"), "the container saw no SIGTERM: {out}");
    // It kept running after the SIGTERM, a second a line, until SIGKILL ended it at the
    // end of the 3-s grace period.
    let after = out.lines().filter(|l| *l == "still running").count();
    assert!((1..=4).contains(&after), "{after} lines after SIGTERM: {out}");
    assert!(took > Duration::from_secs(3), "the stream ended {took:?} after it began");
    // The stopped attempt's pod is deleted once its container has ended; logs then say so.
    eventually("logs to say the stopped attempt's pod is gone", RUN_WAIT, || async {
        let (ok, _, err) = barge_logs(&ns, &["stuck"]);
        (!ok && err.contains("the pod of the last attempt of stuck is gone")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn array_children_print_their_index() {
    let Some(client) = real("the array test").await else { return };
    let ns = namespace(&client, "real-array").await;
    let jobs = submit(
        &client,
        &ns,
        "four",
        json!({"array": {"size": 4},
               "container": container("echo \"child $AWS_BATCH_JOB_ARRAY_INDEX of $AWS_BATCH_JOB_ARRAY_SIZE\"")}),
    )
    .await;
    wait_phase(&jobs, "four", JobPhase::Succeeded).await;
    for i in 0..4 {
        let (ok, out, err) = barge_logs(&ns, &["four", "--index", &i.to_string()]);
        assert!(ok, "{err}");
        assert_eq!(out, format!("child {i} of 4\n"));
    }
    let (ok, _, err) = barge_logs(&ns, &["four"]);
    assert!(!ok && err.contains("pass --index N (0 to 3)"), "{err}");
}

#[tokio::test]
async fn logs_of_a_job_on_a_simulated_node_say_nothing_ran() {
    // No real node needed: a kwok node in an unmanaged environment of its own.
    let client = client().await;
    shared_operator(&client).await;
    let env = Env::new(client.clone(), "logs-sim").await;
    let node = format!("{}-node", env.tag);
    kwok_node(&client, &node, "4", "8Gi", [("logs-sim".to_string(), env.tag.clone())].into()).await;
    let ce = env
        .ce(
            "sim",
            json!({"provider": "unmanaged", "maxvCpus": 4,
        "nodeSelector": {"matchLabels": {"logs-sim": env.tag}}}),
        )
        .await;
    let queue = env.queue("q", 1, "ENABLED", &[&ce]).await;
    env.job("sim", &queue, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    env.wait_phase("sim", JobPhase::Succeeded).await;
    let (ok, out, err) = barge_logs(&env.ns, &["sim"]);
    assert!(ok, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("a simulated (kwok) node: no container ran, so there is no output"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let (ok, _, err) = barge_logs(&env.ns, &["no-such-job"]);
    assert!(!ok && err.contains("no BatchJob no-such-job"), "{err}");
    env.cleanup(&[&ce]).await;
    delete_node(&client, &node).await;
}
