//! The AWS Batch API under load, on the local cluster (`make bench-api`), all in one run:
//! 16 clients of the Rust `aws-sdk-batch` submit at 50 calls a second in all (AWS's SubmitJob
//! quota; open loop) to a quiet operator; then as fast as they can (closed loop: throughput,
//! and latency at saturation); then at 50/s again while the operator takes in that burst; then
//! the same number of BatchJobs of the same shape are created straight through the API server
//! by 16 kube clients; then, once the operator's status writes have settled, 16 clients
//! describe 100 jobs a call, closed loop and at 50/s. Prints throughput and latency
//! percentiles, the ratio of SubmitJob to raw creates, and writes `bench/results/batch-api.md`.
//!
//! The jobs go to a DISABLED queue, so that what is measured is the endpoint and the API
//! server, not the simulated nodes. `BENCH_API_JOBS` sets how many (default 2000).

use std::time::{Duration, Instant};

use aws_sdk_batch::config::{BehaviorVersion, Credentials, Region};
use barge::api::BatchJob;
use futures::future::join_all;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

const CLIENTS: usize = 16;
/// Calls a second in the paced runs: AWS Batch's SubmitJob quota.
const PACED_RATE: f64 = 50.0;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Run {
    what: &'static str,
    calls: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn row(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        format!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            self.what,
            self.calls,
            self.calls as f64 / self.wall.as_secs_f64(),
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99)),
            ms(*l.last().unwrap_or(&Duration::ZERO)),
        )
    }
}

async fn apply<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(&name, &PatchParams::apply("barge-bench").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// Runs `per_client` calls on each of 16 tasks; each call's latency is kept.
async fn concurrently<F, Fut>(what: &'static str, per_client: usize, call: F) -> Run
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let tasks = (0..CLIENTS).map(|c| {
        let call = &call;
        async move {
            let mut out = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                call(c, i).await;
                out.push(t.elapsed());
            }
            out
        }
    });
    let latencies: Vec<Duration> = join_all(tasks).await.into_iter().flatten().collect();
    Run { what, calls: latencies.len(), wall: start.elapsed(), latencies }
}

/// Open loop: `calls` calls spread over 16 tasks at `rate` calls a second in all, each
/// started on its schedule whatever the others do. A call's latency counts from when it was
/// due, so a call that had to wait for its task's last one is not flattered.
async fn paced<F, Fut>(what: &'static str, calls: usize, rate: f64, call: F) -> Run
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = tokio::time::Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let tasks = (0..CLIENTS).map(|c| {
        let call = &call;
        async move {
            let mut out = Vec::new();
            for i in (c..calls).step_by(CLIENTS) {
                let due = start + gap * i as u32;
                tokio::time::sleep_until(due).await;
                call(c, i).await;
                out.push(due.elapsed());
            }
            out
        }
    });
    let latencies: Vec<Duration> = join_all(tasks).await.into_iter().flatten().collect();
    Run { what, calls: latencies.len(), wall: start.elapsed(), latencies }
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::var("BENCH_API_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let per_client = jobs.div_ceil(CLIENTS);
    let client = Client::try_default().await.expect("a cluster (run with `make bench-api`)");
    for args in [
        &["apply", "--server-side", "-f", "crds/"][..],
        &["wait", "--for", "condition=established", "--timeout=60s", "crd", "--all"][..],
    ] {
        let ok = std::process::Command::new("kubectl")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "kubectl {args:?}");
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in ["bench-api", "bench-api-keys"] {
        apply(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    }
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(client.clone());
    apply(&ces, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": "bench-api"},
        "spec": {"instanceTypes": ["m6i.xlarge"], "maxvCpus": 8}}))
    .await;
    let queues: Api<barge::api::JobQueue> = Api::all(client.clone());
    apply(&queues, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "bench-api"},
        "spec": {"state": "DISABLED", "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "bench-api"}]}}))
    .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::env::temp_dir().join("barge-bench-api-operator.log");
    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("run")
        .env("BARGE_BATCH_API_ADDR", format!("127.0.0.1:{port}"))
        .env("BARGE_CREDENTIALS_NAMESPACE", "bench-api-keys")
        .env("BARGE_BATCH_API_REQUESTS_PER_SECOND", "0")
        .env("BARGE_METRICS_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_barge"))
        .args(["credentials", "create", "--namespace", "bench-api", "--format", "json"])
        .env("BARGE_CREDENTIALS_NAMESPACE", "bench-api-keys")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conf = aws_sdk_batch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(Credentials::new(
            key["AccessKeyId"].as_str().unwrap(),
            key["SecretAccessKey"].as_str().unwrap(),
            None,
            None,
            "bench",
        ))
        .build();
    let sdks: Vec<aws_sdk_batch::Client> =
        (0..CLIENTS).map(|_| aws_sdk_batch::Client::from_conf(conf.clone())).collect();
    let started = Instant::now();
    while sdks[0].describe_job_queues().send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the endpoint did not answer; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let def = sdks[0]
        .register_job_definition()
        .job_definition_name("bench")
        .r#type("container".into())
        .container_properties(
            aws_sdk_batch::types::ContainerProperties::builder()
                .image("busybox:1.36")
                .command("true")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let definition = format!("bench:{}", def.revision().unwrap());

    // AWS's own SubmitJob quota is 50 a second: the latency a user sees at that rate, on a
    // quiet operator, and again below while it absorbs the burst of the closed-loop run.
    let paced_calls = (PACED_RATE * 20.0) as usize;
    let submit_paced = |what: &'static str, prefix: &'static str| {
        let (sdks, definition) = (&sdks, &definition);
        eprintln!("submitting {paced_calls} jobs at {PACED_RATE}/s from {CLIENTS} clients ({prefix})");
        paced(what, paced_calls, PACED_RATE, move |c, i| async move {
            sdks[c]
                .submit_job()
                .job_name(format!("{prefix}-{i}"))
                .job_queue("bench-api")
                .job_definition(definition)
                .send()
                .await
                .unwrap();
        })
    };
    let submit_quiet = submit_paced("SubmitJob at 50/s (AWS's quota), quiet", "q").await;

    eprintln!("submitting {} jobs from {CLIENTS} aws-sdk-batch clients", per_client * CLIENTS);
    let ids = std::sync::Mutex::new(Vec::new());
    let submit = concurrently("SubmitJob (aws-sdk-batch, SigV4)", per_client, |c, i| {
        let (sdk, definition, ids) = (&sdks[c], &definition, &ids);
        async move {
            let out = sdk
                .submit_job()
                .job_name(format!("b-{c}-{i}"))
                .job_queue("bench-api")
                .job_definition(definition)
                .send()
                .await
                .unwrap();
            ids.lock().unwrap().push(out.job_id().unwrap().to_string());
        }
    })
    .await;

    let submit_busy = submit_paced("SubmitJob at 50/s, right after the burst", "p").await;

    eprintln!("creating {} BatchJobs from {CLIENTS} kube clients", per_client * CLIENTS);
    let apis: Vec<Api<BatchJob>> =
        (0..CLIENTS).map(|_| Api::namespaced(client.clone(), "bench-api")).collect();
    let create = concurrently("BatchJob create (kube, same shape)", per_client, |c, i| {
        let api = &apis[c];
        async move {
            let job: BatchJob = serde_json::from_value(json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
                "metadata": {"name": format!("raw-{c}-{i}"), "annotations": {"barge.dev/aws-name": format!("b-{c}-{i}")}},
                "spec": {"jobQueue": "bench-api", "jobDefinition": "bench:1"}}))
            .unwrap();
            api.create(&PostParams::default(), &job).await.unwrap();
        }
    })
    .await;

    let ids = ids.into_inner().unwrap();
    // The operator writes each new job's first status meanwhile: describing waits for that to
    // settle, so that it measures reads, not reads beside 4,000 status writes.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let describe_calls = 20;
    eprintln!("describing 100 jobs a call, {describe_calls} calls from each of {CLIENTS} clients");
    let describe = concurrently("DescribeJobs of 100 ids", describe_calls, |c, i| {
        let (sdk, ids) = (&sdks[c], &ids);
        async move {
            let from = (c * describe_calls + i) * 100 % ids.len().saturating_sub(100).max(1);
            let out =
                sdk.describe_jobs().set_jobs(Some(ids[from..from + 100].to_vec())).send().await.unwrap();
            assert_eq!(out.jobs().len(), 100);
        }
    })
    .await;

    let describe_paced = paced("DescribeJobs of 100 ids at 50/s", paced_calls, PACED_RATE, |c, i| {
        let (sdk, ids) = (&sdks[c], &ids);
        async move {
            let from = i * 100 % ids.len().saturating_sub(100).max(1);
            let out =
                sdk.describe_jobs().set_jobs(Some(ids[from..from + 100].to_vec())).send().await.unwrap();
            assert_eq!(out.jobs().len(), 100);
        }
    })
    .await;

    let _ = operator.kill();
    let _ = operator.wait();
    let ratio =
        (submit.calls as f64 / submit.wall.as_secs_f64()) / (create.calls as f64 / create.wall.as_secs_f64());
    let mut table =
        String::from("| what | calls | per second | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
    for run in [&submit_quiet, &submit, &submit_busy, &create, &describe, &describe_paced] {
        table.push_str(&run.row());
        table.push('\n');
    }
    table.push_str(&format!("\nSubmitJob ÷ raw create throughput: {ratio:.2}\n"));
    println!("{table}");
    let dir = std::path::PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("batch-api.md"), table).unwrap();
}
