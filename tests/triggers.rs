//! The seed's own pipeline, for real: PNGs uploaded to a bucket in moto's S3 notify an SQS
//! queue; a JobTrigger (examples/s3-trigger.yaml, its endpoints pointed at moto) makes one
//! job per image; each runs on the real node in the Python image, applies a Pillow filter
//! and writes its result under `processed/`. Then the exactly-once promises: the same
//! notifications again (as S3 sent them, as EventBridge and as SNS would) make no job; the
//! operator SIGKILLed while 200 notifications arrive makes 200 jobs, no duplicate; malformed
//! messages are rejected to the dead-letter queue, not retried for ever; past maxActiveJobs
//! the messages wait in SQS; a queue the trigger cannot read is reported.
//!
//! One operator, started and killed by the test itself (two operators would both read the
//! triggers). Where the cluster has no real node the test says it is skipped (CI requires it).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use barge::api::batch_job::JobPhase;
use barge::api::job_trigger::{ANNOTATION_TRIGGER_OBJECT, LABEL_TRIGGER};
use barge::api::{BatchJob, JobQueue, JobTrigger};
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

const CE: &str = "trigger-tests";
const QUEUE: &str = "trigger-tests";
/// A queue whose jobs stay RUNNABLE: the tests of counts need no compute.
const HELD_QUEUE: &str = "trigger-tests-held";
const IMAGES: usize = 20;
const KILL_NOTIFICATIONS: usize = 200;

fn moto_s3(moto: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(moto)
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The operator, as a child this test kills and starts again; it reaches SQS through `sqs`
/// and writes batch indexes to moto's S3 at `s3`.
fn operator(sqs: &str, s3: &str) -> Child {
    spawn_operator_with(
        "triggers",
        &[
            ("AWS_ENDPOINT_URL_SQS", sqs),
            ("AWS_ENDPOINT_URL_S3", s3),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
}

/// The batched definition's script: child AWS_BATCH_JOB_ARRAY_INDEX reads its line of the
/// index (line 0 in a batch of one) and filters that image.
const BATCH_SCRIPT: &str = r#"
import io, json, os, sys
import boto3
from PIL import Image, ImageFilter, ImageOps
bucket, key = sys.argv[1][len("s3://"):].split("/", 1)
s3 = boto3.client("s3")
lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
entry = json.loads(lines[int(os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "0"))])
image = Image.open(io.BytesIO(s3.get_object(Bucket=entry["bucket"], Key=entry["key"])["Body"].read()))
buffer = io.BytesIO()
ImageOps.grayscale(image).filter(ImageFilter.CONTOUR).save(buffer, "PNG")
target = "processed-batch/" + entry["key"].split("/", 1)[-1]
s3.put_object(Bucket=entry["bucket"], Key=target, Body=buffer.getvalue())
print(entry["key"], "->", target)
"#;

/// moto's SQS behind a proxy that, once armed, holds the next DeleteMessageBatch, says so,
/// and after a while answers it with a 500 without passing it on: the delete an operator
/// killed meanwhile never made. The messages come back after their visibility timeout.
struct LostDelete {
    url: String,
    armed: Arc<AtomicBool>,
    held: Arc<Notify>,
}

impl LostDelete {
    async fn start(moto: String) -> LostDelete {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (armed, held) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        let (a, h) = (armed.clone(), held.clone());
        let upstream: HttpClient<HttpConnector, Full<Bytes>> =
            HttpClient::builder(TokioExecutor::new()).build_http();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (a, h, upstream, moto) = (a.clone(), h.clone(), upstream.clone(), moto.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, moto.clone(), upstream.clone(), a.clone(), h.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LostDelete { url, armed, held }
    }
}

async fn forward(
    req: hyper::Request<hyper::body::Incoming>,
    moto: String,
    upstream: HttpClient<HttpConnector, Full<Bytes>>,
    armed: Arc<AtomicBool>,
    held: Arc<Notify>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let delete =
        parts.headers.get("x-amz-target").is_some_and(|t| t.as_bytes().ends_with(b".DeleteMessageBatch"));
    if delete && armed.swap(false, Ordering::SeqCst) {
        held.notify_one();
        tokio::time::sleep(Duration::from_secs(5)).await;
        return Ok(hyper::Response::builder()
            .status(500)
            .body(Full::new(Bytes::from_static(b"lost")))
            .unwrap());
    }
    parts.uri =
        format!("{moto}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")).parse().unwrap();
    let answer = match upstream.request(hyper::Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(hyper::Response::builder()
                .status(502)
                .body(Full::new(Bytes::from(e.to_string())))
                .unwrap());
        }
    };
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

/// examples/s3-trigger.yaml as applied against moto: its AWS endpoints become moto's (the
/// test's for the operator, the node's for the pods) and its documents come apart.
fn example(moto: &str, moto_for_pods: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/s3-trigger.yaml"))
            .unwrap();
    let text = text
        .replace("https://sqs.us-east-1.amazonaws.com", moto)
        .replace("https://s3.us-east-1.amazonaws.com", moto_for_pods);
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect()
}

fn doc(docs: &[Value], kind: &str) -> Value {
    docs.iter().find(|d| d["kind"] == kind).cloned().unwrap_or_else(|| panic!("the example has no {kind}"))
}

async fn apply_dynamic(client: &Client, ns: &str, obj: &Value) {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), obj["apiVersion"].as_str().unwrap().to_string()),
    };
    let kind = obj["kind"].as_str().unwrap();
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("barge-tests").force(), &Patch::Apply(obj)).await.unwrap();
}

async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue().queue_name(name).send().await.unwrap().queue_url().unwrap().to_string()
}

/// Messages in the queue, visible or not.
async fn in_queue(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    out.attributes().map(|a| a.values().map(|v| v.parse::<u64>().unwrap_or(0)).sum()).unwrap_or(0)
}

/// Sends bodies ten to a call.
async fn send_all(sqs: &aws_sdk_sqs::Client, url: &str, bodies: &[String]) {
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(b).build().unwrap()
            })
            .collect::<Vec<_>>();
        let out = sqs.send_message_batch().queue_url(url).set_entries(Some(entries)).send().await.unwrap();
        assert!(out.failed().is_empty(), "SendMessageBatch failed: {:?}", out.failed());
    }
}

/// An S3 notification for an object, as S3 (and moto) sends it.
fn s3_notification(bucket: &str, key: &str, size: i64, etag: &str) -> Value {
    let encoded: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
    json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-12-08T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "uploads",
               "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": encoded, "size": size, "eTag": etag}}
    }]})
}

/// The same write as an EventBridge rule on S3's "Object Created" delivers it.
fn eventbridge_event(bucket: &str, key: &str, size: i64, etag: &str) -> Value {
    json!({
        "version": "0", "id": uuid::Uuid::new_v4().to_string(), "detail-type": "Object Created",
        "source": "aws.s3", "account": "123456789012", "time": "2026-12-08T10:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{bucket}")],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": size, "etag": etag},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "reason": "PutObject"}
    })
}

fn sns_wrapped(inner: &Value) -> Value {
    json!({"Type": "Notification", "MessageId": uuid::Uuid::new_v4().to_string(),
           "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads", "Message": inner.to_string()})
}

async fn trigger_jobs(client: &Client, ns: &str, trigger: &str) -> Vec<BatchJob> {
    Api::<BatchJob>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{LABEL_TRIGGER}={trigger}")))
        .await
        .unwrap()
        .items
}

async fn status_of(client: &Client, ns: &str, trigger: &str) -> barge::api::JobTriggerStatus {
    Api::<JobTrigger>::namespaced(client.clone(), ns).get(trigger).await.unwrap().status.unwrap_or_default()
}

async fn events_of(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason))
        .collect()
}

/// A trigger of the example's shape reading `queue`, its jobs on `job_queue`.
fn trigger(docs: &[Value], name: &str, queue: &str, job_queue: &str, extra: Value) -> Value {
    let mut t = doc(docs, "JobTrigger");
    t["metadata"] = json!({"name": name});
    t["spec"]["source"]["sqs"]["queueUrl"] = queue.into();
    t["spec"]["source"]["sqs"]["visibilityTimeoutSeconds"] = 10.into();
    t["spec"]["source"]["sqs"]["waitTimeSeconds"] = 1.into();
    t["spec"]["jobTemplate"]["jobQueue"] = job_queue.into();
    if let (Some(spec), Some(extra)) = (t["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    t
}

#[tokio::test]
async fn uploads_become_processed_images_once_each() {
    let Some(node) = real_node("the S3 trigger's pipeline") else { return };
    let client = client().await;
    install_crds(&client).await;
    let moto = std::env::var("BARGE_MOTO_URL").expect("BARGE_MOTO_URL: run with `make test`");
    let moto_for_pods =
        std::env::var("BARGE_MOTO_NODE_URL").expect("BARGE_MOTO_NODE_URL: run with `make test`");
    let proxy = LostDelete::start(moto.clone()).await;
    let mut op = operator(&proxy.url, &moto);
    real_node_environment(&client, &node, CE, QUEUE).await;
    apply(
        &Api::<JobQueue>::all(client.clone()),
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": HELD_QUEUE},
               "spec": {"priority": 1, "state": "DISABLED", "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": CE}]}}),
    )
    .await
    .unwrap();
    let ns = namespace(&client, "triggers").await;
    let s3 = moto_s3(&moto);
    let sqs = common::ec2::sqs().await;
    let run = suffix();
    let bucket = format!("photos-{run}");
    let uploads = queue_url(&sqs, &format!("uploads-{run}")).await;
    let rejects = queue_url(&sqs, &format!("rejects-{run}")).await;

    // The AWS side, as a user sets it up: a bucket whose uploads under incoming/ notify the queue.
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let notification = aws_sdk_s3::types::NotificationConfiguration::builder()
        .queue_configurations(
            aws_sdk_s3::types::QueueConfiguration::builder()
                .id("uploads")
                .queue_arn(format!("arn:aws:sqs:us-east-1:123456789012:uploads-{run}"))
                .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
                .filter(
                    aws_sdk_s3::types::NotificationConfigurationFilter::builder()
                        .key(
                            aws_sdk_s3::types::S3KeyFilter::builder()
                                .filter_rules(
                                    aws_sdk_s3::types::FilterRule::builder()
                                        .name(aws_sdk_s3::types::FilterRuleName::Prefix)
                                        .value("incoming/")
                                        .build(),
                                )
                                .build(),
                        )
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(notification)
        .send()
        .await
        .unwrap();

    // Barge's side: the example's Secret, definition and trigger (its queue the test's).
    let docs = example(&moto, &moto_for_pods);
    let mut secret = doc(&docs, "Secret");
    secret["stringData"] = json!({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"});
    apply(&Api::<Secret>::namespaced(client.clone(), &ns), secret).await.unwrap();
    apply_dynamic(&client, &ns, &doc(&docs, "JobDefinition")).await;
    let thumbnails =
        trigger(&docs, "thumbnails", &uploads, QUEUE, json!({"deadLetter": {"queueUrl": rejects}}));
    apply_dynamic(&client, &ns, &thumbnails).await;
    eventually("the trigger reading its queue", WAIT, || async {
        let s = status_of(&client, &ns, "thumbnails").await;
        s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;

    // 20 PNGs uploaded, as `aws s3 cp` would.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pngs-{run}"));
    let made = Command::new("python3")
        .args([
            Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/make-pngs.py").to_str().unwrap(),
            &IMAGES.to_string(),
            dir.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(made.success(), "hack/make-pngs.py failed");
    let mut inputs = BTreeMap::new();
    for i in 0..IMAGES {
        let name = format!("photo-{i:03}.png");
        let body = std::fs::read(dir.join(&name)).unwrap();
        s3.put_object()
            .bucket(&bucket)
            .key(format!("incoming/{name}"))
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap();
        inputs.insert(name, body);
    }

    // One job each, every one SUCCEEDED on the real node, every image processed.
    let jobs = eventually("20 jobs, all finished", Duration::from_secs(300), || async {
        let jobs = trigger_jobs(&client, &ns, "thumbnails").await;
        (jobs.len() >= IMAGES
            && jobs.iter().all(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())))
        .then_some(jobs)
    })
    .await;
    assert_eq!(jobs.len(), IMAGES, "one job per upload");
    for job in &jobs {
        let s = job.status.as_ref().unwrap();
        assert_eq!(s.phase, JobPhase::Succeeded, "{}: {:?}", job.name_any(), s.status_reason);
        assert_eq!(s.attempts.last().and_then(|a| a.node_name.as_deref()), Some(node.as_str()));
        assert!(
            job.annotations()[ANNOTATION_TRIGGER_OBJECT]
                .starts_with(&format!("s3://{bucket}/incoming/photo-"))
        );
        assert_eq!(job.spec.parameters.get("bucket").map(String::as_str), Some(bucket.as_str()));
    }
    for (name, input) in &inputs {
        let out = s3.get_object().bucket(&bucket).key(format!("processed/{name}")).send().await;
        let out = out
            .unwrap_or_else(|e| panic!("processed/{name} is missing: {e:?}"))
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert!(out.starts_with(b"\x89PNG\r\n\x1a\n"), "processed/{name} is a PNG");
        assert_ne!(&out[..], &input[..], "processed/{name} differs from its upload");
    }
    let status = status_of(&client, &ns, "thumbnails").await;
    assert_eq!(status.jobs_created, IMAGES as u64);

    // The same 20 writes notified again: as S3 sent them, and some as EventBridge and SNS
    // deliver them. No new job; each counted as a duplicate; the queue drains.
    let mut again = Vec::new();
    for (i, name) in inputs.keys().enumerate() {
        let key = format!("incoming/{name}");
        let head = s3.head_object().bucket(&bucket).key(&key).send().await.unwrap();
        let (size, etag) =
            (head.content_length().unwrap(), head.e_tag().unwrap().trim_matches('"').to_string());
        again.push(s3_notification(&bucket, &key, size, &etag).to_string());
        if i < 3 {
            again.push(eventbridge_event(&bucket, &key, size, &etag).to_string());
            again.push(sns_wrapped(&s3_notification(&bucket, &key, size, &etag)).to_string());
        }
    }
    send_all(&sqs, &uploads, &again).await;
    eventually("the redelivered notifications counted as duplicates", WAIT, || async {
        let s = status_of(&client, &ns, "thumbnails").await;
        (s.duplicates_suppressed >= again.len() as u64 && in_queue(&sqs, &uploads).await == 0).then_some(())
    })
    .await;
    assert_eq!(trigger_jobs(&client, &ns, "thumbnails").await.len(), IMAGES, "no job for a redelivery");

    // Batched: 12 of the images in arrays of at most 5, each child reading its line of the
    // index Barge wrote; the same 12 notifications again make nothing.
    let mut batch_definition = doc(&docs, "JobDefinition");
    batch_definition["metadata"] = json!({"name": "thumbnail-batch"});
    batch_definition["spec"]["container"]["command"] = json!(["python3", "-c", BATCH_SCRIPT, "Ref::index"]);
    batch_definition["spec"].as_object_mut().unwrap().remove("parameters");
    apply_dynamic(&client, &ns, &batch_definition).await;
    let batched_queue = queue_url(&sqs, &format!("batched-{run}")).await;
    let mut batched = trigger(
        &docs,
        "batched",
        &batched_queue,
        QUEUE,
        json!({
        "batch": {"size": 5, "windowSeconds": 3, "indexLocation": format!("s3://{bucket}/barge-index/")}}),
    );
    batched["spec"]["jobTemplate"]["jobDefinition"] = "thumbnail-batch".into();
    apply_dynamic(&client, &ns, &batched).await;
    let twelve: Vec<String> =
        again.iter().filter(|b| b.starts_with(r#"{"Records""#)).take(12).cloned().collect();
    send_all(&sqs, &batched_queue, &twelve).await;
    let jobs = eventually("12 objects in finished batches", Duration::from_secs(240), || async {
        let jobs = trigger_jobs(&client, &ns, "batched").await;
        let objects: usize = jobs.iter().map(|j| j.spec.array.as_ref().map_or(1, |a| a.size as usize)).sum();
        (objects >= 12 && jobs.iter().all(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())))
            .then_some(jobs)
    })
    .await;
    for job in &jobs {
        let s = job.status.as_ref().unwrap();
        assert_eq!(s.phase, JobPhase::Succeeded, "{}: {:?}", job.name_any(), s.status_reason);
        assert!(job.spec.array.as_ref().is_none_or(|a| a.size <= 5), "at most batch.size children");
        let index = &job.annotations()[ANNOTATION_TRIGGER_OBJECT];
        assert_eq!(job.spec.parameters.get("index"), Some(index));
        assert!(index.starts_with(&format!("s3://{bucket}/barge-index/{ns}/batched/")), "{index}");
    }
    let sizes: Vec<usize> =
        jobs.iter().map(|j| j.spec.array.as_ref().map_or(1, |a| a.size as usize)).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 12);
    eprintln!("batched: 12 objects in {} jobs of {sizes:?}", jobs.len());
    for name in inputs.keys().take(12) {
        let out = s3.get_object().bucket(&bucket).key(format!("processed-batch/{name}")).send().await;
        let out = out
            .unwrap_or_else(|e| panic!("processed-batch/{name} is missing: {e:?}"))
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert!(
            out.starts_with(b"\x89PNG\r\n\x1a\n") && out[..] != inputs[name][..],
            "processed-batch/{name}"
        );
    }
    send_all(&sqs, &batched_queue, &twelve).await;
    eventually("the batched redeliveries counted as duplicates", WAIT, || async {
        let s = status_of(&client, &ns, "batched").await;
        (s.duplicates_suppressed >= 12 && in_queue(&sqs, &batched_queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(trigger_jobs(&client, &ns, "batched").await.len(), jobs.len(), "no batch for a redelivery");

    // Five malformed messages: each rejected with its reason to the dead-letter queue, and
    // deleted (not delivered again and again).
    let malformed = [
        "not json at all".to_string(),
        json!({"Records": []}).to_string(),
        json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}}}]}).to_string(),
        json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}).to_string(),
        s3_notification(&bucket, "incoming/notes.txt", 3, "abc").to_string(),
    ];
    send_all(&sqs, &uploads, &malformed).await;
    eventually("five rejections", WAIT, || async {
        let s = status_of(&client, &ns, "thumbnails").await;
        (s.rejected == malformed.len() as u64 && in_queue(&sqs, &uploads).await == 0).then_some(())
    })
    .await;
    let mut dead = Vec::new();
    while dead.len() < malformed.len() {
        let out = sqs
            .receive_message()
            .queue_url(&rejects)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        assert!(
            !out.messages().is_empty(),
            "{} of {} rejected messages in the dead-letter queue",
            dead.len(),
            malformed.len()
        );
        dead.extend(out.messages().iter().cloned());
    }
    let bodies: HashSet<&str> = dead.iter().filter_map(|m| m.body()).collect();
    assert_eq!(
        bodies,
        malformed.iter().map(String::as_str).collect::<HashSet<_>>(),
        "the rejected bodies, unchanged"
    );
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| m.message_attributes().unwrap()["BargeReason"].string_value().unwrap().to_string())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("does not end with .png")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("aws.ec2")), "{reasons:?}");
    // One Warning event, its later occurrences counted in its series.
    eventually("a Warning event for the rejections", WAIT, || async {
        (!events_of(&client, &ns, "thumbnails", "MessageRejected").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(trigger_jobs(&client, &ns, "thumbnails").await.len(), IMAGES);

    // Backpressure: at most 5 unfinished jobs; the rest of the messages wait in SQS.
    let held = queue_url(&sqs, &format!("held-{run}")).await;
    apply_dynamic(&client, &ns, &trigger(&docs, "held", &held, HELD_QUEUE, json!({"maxActiveJobs": 5})))
        .await;
    let twelve: Vec<String> = (0..12)
        .map(|i| {
            s3_notification(&bucket, &format!("incoming/held-{i}.png"), 10, &format!("e{i}")).to_string()
        })
        .collect();
    send_all(&sqs, &held, &twelve).await;
    eventually("5 jobs made and 7 messages waiting in SQS", WAIT, || async {
        let jobs = trigger_jobs(&client, &ns, "held").await.len();
        let s = status_of(&client, &ns, "held").await;
        (jobs == 5 && s.active_jobs == 5 && in_queue(&sqs, &held).await == 7).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(trigger_jobs(&client, &ns, "held").await.len(), 5, "no job past maxActiveJobs");
    let ready =
        status_of(&client, &ns, "held").await.conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("maxActiveJobs"), "{}", ready.message);
    let jobs_api: Api<BatchJob> = Api::namespaced(client.clone(), &ns);
    jobs_api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{LABEL_TRIGGER}=held")),
        )
        .await
        .unwrap();
    eventually("the next 5 jobs once the first are gone", WAIT, || async {
        (trigger_jobs(&client, &ns, "held").await.len() == 5 && in_queue(&sqs, &held).await == 2)
            .then_some(())
    })
    .await;

    // The operator SIGKILLed while 200 notifications arrive: 200 jobs, none twice.
    let burst = queue_url(&sqs, &format!("burst-{run}")).await;
    apply_dynamic(&client, &ns, &trigger(&docs, "burst", &burst, HELD_QUEUE, json!({"maxActiveJobs": 1000})))
        .await;
    eventually("the burst trigger reading", WAIT, || async {
        let s = status_of(&client, &ns, "burst").await;
        s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    let notifications: Vec<String> = (0..KILL_NOTIFICATIONS)
        .map(|i| {
            s3_notification(&bucket, &format!("incoming/burst/{i:03}.png"), 10, &format!("b{i}")).to_string()
        })
        .collect();
    let sender = {
        let (sqs, burst, notifications) = (sqs.clone(), burst.clone(), notifications.clone());
        tokio::spawn(async move {
            for chunk in notifications.chunks(20) {
                send_all(&sqs, &burst, chunk).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // Killed once its jobs for a batch of messages exist and their delete is on its way.
    eventually("the first jobs of the burst", WAIT, || async {
        (trigger_jobs(&client, &ns, "burst").await.len() >= 20).then_some(())
    })
    .await;
    proxy.armed.store(true, Ordering::SeqCst);
    tokio::time::timeout(WAIT, proxy.held.notified()).await.expect("a delete of the burst's messages");
    op.kill().unwrap();
    op.wait().unwrap();
    let jobs_before_kill = trigger_jobs(&client, &ns, "burst").await.len();
    op = operator(&proxy.url, &moto);
    sender.await.unwrap();
    let jobs = eventually("200 jobs and the queue drained", Duration::from_secs(120), || async {
        let jobs = trigger_jobs(&client, &ns, "burst").await;
        (jobs.len() >= KILL_NOTIFICATIONS && in_queue(&sqs, &burst).await == 0).then_some(jobs)
    })
    .await;
    let objects: HashSet<String> =
        jobs.iter().map(|j| j.annotations()[ANNOTATION_TRIGGER_OBJECT].clone()).collect();
    assert_eq!(jobs.len(), KILL_NOTIFICATIONS, "one job per notification");
    assert_eq!(objects.len(), KILL_NOTIFICATIONS, "no object twice");
    let s = status_of(&client, &ns, "burst").await;
    assert!(
        s.duplicates_suppressed >= 1,
        "the messages whose delete was lost came back and found their jobs"
    );
    assert_eq!(s.jobs_created, KILL_NOTIFICATIONS as u64, "each job counted once, the kill's too");
    eprintln!(
        "burst: {jobs_before_kill} jobs before the SIGKILL; after it {} jobs, {} created and {} duplicates counted",
        jobs.len(),
        s.jobs_created,
        s.duplicates_suppressed
    );

    // A queue that does not exist, and a trigger that names no credentials: each reported.
    apply_dynamic(
        &client,
        &ns,
        &trigger(
            &docs,
            "missing",
            &format!("{moto}/123456789012/no-such-queue-{run}"),
            HELD_QUEUE,
            json!({}),
        ),
    )
    .await;
    let mut bare = trigger(&docs, "bare", &uploads, HELD_QUEUE, json!({}));
    bare["spec"]["source"]["sqs"].as_object_mut().unwrap().remove("credentialsSecret");
    apply_dynamic(&client, &ns, &bare).await;
    for (name, reason) in [("missing", "QueueUnreadable"), ("bare", "NoCredentials")] {
        eventually(&format!("{name}: Ready False, {reason}, and its Warning event"), WAIT, || async {
            let s = status_of(&client, &ns, name).await;
            let c = s.conditions.iter().find(|c| c.type_ == "Ready")?;
            (c.status == "False"
                && c.reason == reason
                && !events_of(&client, &ns, name, reason).await.is_empty())
            .then_some(())
        })
        .await;
    }

    // A Secret without its keys, mended: the trigger reads it again and starts.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let half = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rotated-keys"},
                      "stringData": {"AWS_ACCESS_KEY_ID": "testing"}});
    apply(&secrets, half).await.unwrap();
    let mut rotated = trigger(&docs, "rotated", &uploads, HELD_QUEUE, json!({}));
    rotated["spec"]["source"]["sqs"]["credentialsSecret"] = "rotated-keys".into();
    apply_dynamic(&client, &ns, &rotated).await;
    eventually("rotated: NoCredentials while its Secret lacks a key", WAIT, || async {
        let s = status_of(&client, &ns, "rotated").await;
        let c = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (c.reason == "NoCredentials" && c.message.contains("AWS_SECRET_ACCESS_KEY")).then_some(())
    })
    .await;
    let whole = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rotated-keys"},
                       "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}});
    apply(&secrets, whole).await.unwrap();
    eventually("rotated: Ready once the Secret has its keys", WAIT, || async {
        let s = status_of(&client, &ns, "rotated").await;
        s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;

    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    let _ = Api::<JobQueue>::all(client.clone()).delete(HELD_QUEUE, &DeleteParams::default()).await;
    op.kill().unwrap();
}
