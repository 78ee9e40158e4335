//! `barge logs`: what a job's container printed, attempt by attempt, read from the pod that
//! ran it (through the API server and the node's kubelet, as `kubectl logs` reads it).
//!
//! Which pod is decided from the job and its pods alone ([`choose`], no I/O): a child of
//! an array job by `--index`, a node of a multi-node job by `--node` (the main node unless
//! told), an attempt by `--attempt` (the last one unless told). An attempt whose pod is gone
//! is read from the log archive (`--logs-s3-bucket`, as the operator's), and `-f` goes on
//! there when the pod it follows goes. What cannot be shown says why in one line: a job that
//! has not started, a pod gone with no archive, a pod on a simulated node, where nothing ran.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};

use super::Common;
use crate::api::batch_job::JobPhase;
use crate::api::{BatchJob, LABEL_ATTEMPT, LABEL_JOB_UID, LABEL_NODE_INDEX};
use crate::archive::s3::Bucket;
use crate::archive::{Cursor, DEFAULT_GROUP, StreamId, parse_line};
use crate::controller::pod::LABEL_ARRAY_INDEX;
use crate::provider::local::KWOK_ANNOTATION;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The job.
    job: String,
    /// For an array job: the child, by its index (`AWS_BATCH_JOB_ARRAY_INDEX`).
    #[arg(long)]
    index: Option<u32>,
    /// For a multi-node job: the node, by its index (default: the main node).
    #[arg(long)]
    node: Option<u32>,
    /// The attempt, counted from 1 as `AWS_BATCH_JOB_ATTEMPT` counts (default: the last).
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing while the container runs; wait for it to start if it has not.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    archive: super::ArchiveArgs,
}

/// What `choose` needs of the job.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobFacts {
    pub name: String,
    pub uid: String,
    pub phase: JobPhase,
    pub reason: Option<String>,
    /// Array jobs: how many children.
    pub array_size: Option<u32>,
    /// Multi-node jobs: (numNodes, mainNode).
    pub nodes: Option<(u32, u32)>,
    /// Attempts the job's status records (for a single job).
    pub attempts: u32,
}

/// What `choose` needs of one of the job's pods.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodFacts {
    pub name: String,
    pub attempt: u32,
    pub index: Option<u32>,
    pub node_index: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Want {
    pub index: Option<u32>,
    pub node: Option<u32>,
    pub attempt: Option<u32>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Choice {
    /// Read this pod.
    Pod { name: String, attempt: u32 },
    /// The job has no pod yet: it waits (the line says for what).
    NotStarted(String),
    /// The attempt's pod is gone: its output is in the log archive, if anywhere (the line
    /// says which attempt).
    Gone { pod: String, attempt: u32, what: String },
}

/// The pod to read, or why there is none, in words for the user.
pub(crate) fn choose(job: &JobFacts, pods: &[PodFacts], want: Want) -> Result<Choice, String> {
    let name = &job.name;
    let index = match (job.array_size, want.index) {
        (Some(size), None) => {
            return Err(format!(
                "{name} is an array job of {size} children: pass --index N (0 to {}) for a child's output",
                size.saturating_sub(1)
            ));
        }
        (Some(size), Some(i)) if i >= size => {
            return Err(format!(
                "{name} has {size} children, indexes 0 to {}: there is no index {i}",
                size - 1
            ));
        }
        (None, Some(_)) => return Err(format!("{name} is not an array job: leave out --index")),
        (_, i) => i,
    };
    let node = match (job.nodes, want.node) {
        (Some((_, main)), None) => Some(main),
        (Some((n, _)), Some(i)) if i >= n => {
            return Err(format!("{name} runs on {n} nodes, indexes 0 to {}: there is no node {i}", n - 1));
        }
        (None, Some(_)) => return Err(format!("{name} is not a multi-node job: leave out --node")),
        (_, i) => i,
    };
    let what = match (index, node) {
        (Some(i), _) => format!("child {i} of {name}"),
        (_, Some(n)) => format!("node {n} of {name}"),
        _ => name.to_string(),
    };
    let mine: Vec<&PodFacts> = pods
        .iter()
        .filter(|p| (index.is_none() || p.index == index) && (node.is_none() || p.node_index == node))
        .collect();
    let last = mine.iter().map(|p| p.attempt).max();
    // No pod yet and the job goes on: it (or this child or node of it) waits to start.
    if last.is_none() && !job.phase.is_finished() && want.attempt != Some(0) {
        return Ok(Choice::NotStarted(match (index, node) {
            (None, None) => not_started(job),
            _ => format!("{what} has not started yet"),
        }));
    }
    let had = last.unwrap_or(0).max(job.attempts);
    match want.attempt {
        Some(0) => Err("attempts are counted from 1".into()),
        Some(k) => match mine.iter().find(|p| p.attempt == k) {
            Some(p) => Ok(Choice::Pod { name: p.name.clone(), attempt: k }),
            None if k <= had => Ok(gone(job, index, node, k, format!("the pod of attempt {k} of {what}"))),
            None if !job.phase.is_finished() && k == had + 1 => {
                Ok(Choice::NotStarted(format!("attempt {k} of {what} has not started yet")))
            }
            None => Err(format!(
                "{what} has had {had} attempt{}: there is no attempt {k}",
                if had == 1 { "" } else { "s" }
            )),
        },
        None => match last {
            Some(k) => {
                let p = mine.iter().find(|p| p.attempt == k).expect("the last attempt's pod");
                Ok(Choice::Pod { name: p.name.clone(), attempt: k })
            }
            None if job.attempts == 0 && index.is_none() && node.is_none() => {
                Err(format!("{what} ended without running: {}", job.reason.clone().unwrap_or_default()))
            }
            None => Ok(gone(job, index, node, had.max(1), format!("the pod of the last attempt of {what}"))),
        },
    }
}

/// An attempt whose pod is gone, by the name its pod had.
fn gone(job: &JobFacts, index: Option<u32>, node: Option<u32>, attempt: u32, what: String) -> Choice {
    use crate::api::batch_job::{child_pod_name, node_pod_name, pod_name};
    let a = attempt - 1;
    let pod = match (index, node) {
        (Some(i), _) => child_pod_name(&job.name, &job.uid, i, a),
        (_, Some(n)) => node_pod_name(&job.name, &job.uid, n, a),
        _ => pod_name(&job.name, &job.uid, a),
    };
    Choice::Gone { pod, attempt, what }
}

fn not_started(job: &JobFacts) -> String {
    let phase = job.phase.as_str();
    match &job.reason {
        Some(r) => format!("{} has not started: it is {phase}, {r}", job.name),
        None => format!("{} has not started: it is {phase}", job.name),
    }
}

fn job_facts(job: &BatchJob) -> JobFacts {
    let s = job.status.clone().unwrap_or_default();
    JobFacts {
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        phase: s.phase,
        reason: s.status_reason.clone(),
        array_size: job.spec.array.as_ref().map(|a| a.size),
        nodes: s
            .multi_node
            .as_deref()
            .map(|m| (m.num_nodes, m.main_node))
            .or_else(|| job.spec.node_properties.as_deref().map(|n| (n.num_nodes, n.main_node))),
        attempts: s.attempts.len() as u32,
    }
}

fn pod_facts(pod: &Pod) -> Option<PodFacts> {
    let labels = pod.labels();
    let number = |k: &str| labels.get(k).and_then(|v| v.parse().ok());
    Some(PodFacts {
        name: pod.name_any(),
        attempt: number(LABEL_ATTEMPT)?,
        index: number(LABEL_ARRAY_INDEX),
        node_index: number(LABEL_NODE_INDEX),
    })
}

/// Where a chosen pod's container stands.
enum Container {
    /// Not on a node yet, or its container has not started: why.
    NotYet(String),
    /// On a simulated node: nothing runs there.
    Simulated(String),
    Started,
}

async fn container(client: &Client, pod: &Pod) -> Container {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Container::NotYet("its pod is not on a node yet".into());
    };
    // Users who may not read nodes still get the logs (or the kubelet's own error).
    if let Ok(Some(n)) = Api::<Node>::all(client.clone()).get_opt(&node).await
        && n.annotations().get(KWOK_ANNOTATION.0).map(String::as_str) == Some(KWOK_ANNOTATION.1)
    {
        return Container::Simulated(node);
    }
    let status = pod.status.as_ref();
    let state = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.clone());
    match state {
        Some(s) if s.running.is_some() || s.terminated.is_some() => Container::Started,
        Some(s) => Container::NotYet(match s.waiting.and_then(|w| w.reason) {
            Some(r) => format!("its container has not started on {node} ({r})"),
            None => format!("its container has not started on {node}"),
        }),
        None => Container::NotYet(format!("its container has not started on {node}")),
    }
}

/// What is read: a pod through the kubelet, or an attempt from the log archive.
enum Source {
    Pod(Box<Pod>, u32),
    Archive { pod: String, what: String },
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = super::commands::client().await?;
    let jobs = super::commands::jobs_api(&client, &args.common);
    let ns = args.common.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let want = Want { index: args.index, node: args.node, attempt: args.attempt };
    let mut said = None;
    let (job, source) = loop {
        let job = super::commands::get_job(&jobs, &args.job).await?;
        let uid = job.uid().context("the job has no uid")?;
        let list = pods.list(&ListParams::default().labels(&format!("{LABEL_JOB_UID}={uid}"))).await?;
        let facts: Vec<PodFacts> = list.items.iter().filter_map(pod_facts).collect();
        let why = match choose(&job_facts(&job), &facts, want).map_err(anyhow::Error::msg)? {
            Choice::Pod { name, attempt } => {
                let pod =
                    list.items.iter().find(|p| p.name_any() == name).cloned().expect("chosen from the list");
                match container(&client, &pod).await {
                    Container::Started => break (job, Source::Pod(Box::new(pod), attempt)),
                    Container::Simulated(node) => {
                        eprintln!(
                            "attempt {attempt} of {} ran on {node}, a simulated (kwok) node: no container ran, so there is no output",
                            args.job
                        );
                        return Ok(());
                    }
                    Container::NotYet(why) => format!("attempt {attempt} of {}: {why}", args.job),
                }
            }
            Choice::Gone { pod, what, .. } => break (job, Source::Archive { pod, what }),
            Choice::NotStarted(why) => why,
        };
        if !args.follow {
            bail!("{why} (add -f to wait for it)");
        }
        if said.as_ref() != Some(&why) {
            eprintln!("waiting: {why}");
            said = Some(why);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // What was printed, so that the archive goes on after it.
    let mut cursor = Cursor::default();
    let (pod, what) = match source {
        Source::Archive { pod, what } => (pod, format!("{what} is gone")),
        Source::Pod(pod, attempt) => {
            let params = LogParams {
                follow: args.follow,
                timestamps: true,
                container: pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()),
                ..LogParams::default()
            };
            let stream = pods
                .log_stream(&pod.name_any(), &params)
                .await
                .with_context(|| format!("reading the output of attempt {attempt} of {}", args.job))?;
            let mut lines = stream.lines();
            while let Some(line) = lines.next().await {
                let line = line?;
                match parse_line(&line) {
                    Some((ns, message)) => {
                        cursor.admit(ns);
                        println!("{message}");
                    }
                    None => println!("{line}"),
                }
            }
            // The stream ended with its container, or with its pod: then the archive has the
            // rest, if there is one (without, all that could be read was printed).
            if !args.follow || !args.archive.is_set() || pods.get_opt(&pod.name_any()).await?.is_some() {
                return Ok(());
            }
            (pod.name_any(), format!("the pod of attempt {attempt} of {} went", args.job))
        }
    };
    let Some(bucket) = args.archive.bucket().await else {
        bail!(
            "{what} (deleted, or its node was), and no log archive is set (--logs-s3-bucket or BARGE_LOGS_S3_BUCKET, as the operator's): its output went with it"
        );
    };
    eprintln!("{what}: reading its output from the log archive (s3://{})", bucket.name());
    // The stream its attempt names (a definition's awslogs-stream-prefix changes it).
    let recorded = job.status.iter().flat_map(|s| &s.attempts).find(|a| a.pod_name == pod);
    let stream = recorded.and_then(|a| a.log_stream_name.clone()).unwrap_or_else(|| {
        crate::archive::stream_name(&job.log_name(), crate::archive::MAIN_CONTAINER, &pod)
    });
    print_archived(&bucket, &ns, &stream, &mut cursor, args.follow).await
}

/// How long `-f` waits for the archive to close a stream the archiver is still writing.
const ARCHIVE_FOLLOW: Duration = Duration::from_secs(120);

/// Prints an attempt's archived output after what `cursor` says was printed; with `follow`,
/// until its stream is closed.
async fn print_archived(
    bucket: &Bucket,
    ns: &str,
    name: &str,
    cursor: &mut Cursor,
    follow: bool,
) -> anyhow::Result<()> {
    let name = name.to_string();
    let mut stream = StreamId { namespace: ns.to_string(), group: DEFAULT_GROUP.to_string(), name };
    let mut chunks = bucket.chunks(&stream).await?;
    if chunks.is_empty() {
        // A definition that names its own log group.
        for group in bucket.groups(ns).await? {
            let other = StreamId { group, ..stream.clone() };
            let found = bucket.chunks(&other).await?;
            if !found.is_empty() {
                (stream, chunks) = (other, found);
                break;
            }
        }
    }
    let started = std::time::Instant::now();
    let mut printed = 0;
    cursor.begin_read();
    loop {
        let from = printed;
        for c in chunks.iter().filter(|c| c.chunk.seq >= from) {
            if c.chunk.lines > 0 {
                let body = bucket.read(&c.key).await?;
                for (ns_time, message) in crate::archive::events(&body) {
                    if cursor.admit(ns_time) {
                        println!("{message}");
                    }
                }
            }
            printed = c.chunk.seq + 1;
        }
        let ended = chunks.iter().any(|c| c.chunk.end);
        if ended || !follow {
            if chunks.is_empty() {
                bail!("the log archive holds no output of stream {}", stream.name);
            }
            if !ended {
                eprintln!("(the archive is still being written: -f waits for the rest)");
            }
            return Ok(());
        }
        if started.elapsed() > ARCHIVE_FOLLOW {
            bail!("the log archive did not close stream {} within {ARCHIVE_FOLLOW:?}", stream.name);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        chunks = bucket.chunks(&stream).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(phase: JobPhase, attempts: u32) -> JobFacts {
        JobFacts { name: "j".into(), uid: "abcdef01-2345".into(), phase, attempts, ..Default::default() }
    }
    fn pod(attempt: u32) -> PodFacts {
        PodFacts { name: format!("j-1234-{attempt}"), attempt, ..Default::default() }
    }
    fn pick(name: &str, attempt: u32) -> Result<Choice, String> {
        Ok(Choice::Pod { name: name.into(), attempt })
    }

    #[test]
    fn the_last_attempt_unless_told() {
        let pods = [pod(1), pod(2)];
        let j = job(JobPhase::Succeeded, 2);
        assert_eq!(choose(&j, &pods, Want::default()), pick("j-1234-2", 2));
        assert_eq!(choose(&j, &pods, Want { attempt: Some(1), ..Want::default() }), pick("j-1234-1", 1));
    }

    #[test]
    fn an_attempt_whose_pod_is_gone_is_read_from_the_archive_by_its_pods_name() {
        let j = job(JobPhase::Failed, 2);
        assert_eq!(
            choose(&j, &[pod(2)], Want { attempt: Some(1), ..Want::default() }),
            Ok(Choice::Gone {
                pod: "j-abcdef01-1".into(),
                attempt: 1,
                what: "the pod of attempt 1 of j".into()
            })
        );
        assert_eq!(
            choose(&j, &[], Want::default()),
            Ok(Choice::Gone {
                pod: "j-abcdef01-2".into(),
                attempt: 2,
                what: "the pod of the last attempt of j".into()
            })
        );
        let e = choose(&j, &[pod(1), pod(2)], Want { attempt: Some(3), ..Want::default() }).unwrap_err();
        assert!(e.contains("had 2 attempts: there is no attempt 3"), "{e}");
        let e = choose(&j, &[pod(1)], Want { attempt: Some(0), ..Want::default() }).unwrap_err();
        assert!(e.contains("from 1"), "{e}");
    }

    #[test]
    fn a_waiting_job_has_not_started() {
        let mut j = job(JobPhase::Runnable, 0);
        j.reason = Some("waiting for capacity".into());
        assert_eq!(
            choose(&j, &[], Want::default()),
            Ok(Choice::NotStarted("j has not started: it is RUNNABLE, waiting for capacity".into()))
        );
        let mut cancelled = job(JobPhase::Failed, 0);
        cancelled.reason = Some("Cancelled by user".into());
        assert_eq!(
            choose(&cancelled, &[], Want::default()),
            Err("j ended without running: Cancelled by user".into())
        );
    }

    #[test]
    fn array_children_by_index() {
        let mut j = job(JobPhase::Running, 0);
        j.array_size = Some(4);
        let pods: Vec<PodFacts> = (0..4)
            .map(|i| PodFacts { name: format!("c{i}"), attempt: 1, index: Some(i), ..Default::default() })
            .collect();
        assert!(choose(&j, &pods, Want::default()).unwrap_err().contains("--index N (0 to 3)"));
        assert_eq!(choose(&j, &pods, Want { index: Some(2), ..Want::default() }), pick("c2", 1));
        assert!(
            choose(&j, &pods, Want { index: Some(4), ..Want::default() }).unwrap_err().contains("no index 4")
        );
        assert_eq!(
            choose(&j, &pods[..2], Want { index: Some(3), ..Want::default() }),
            Ok(Choice::NotStarted("child 3 of j has not started yet".into()))
        );
        assert_eq!(
            choose(&j, &pods, Want { index: Some(1), attempt: Some(2), ..Want::default() }),
            Ok(Choice::NotStarted("attempt 2 of child 1 of j has not started yet".into()))
        );
        let single = job(JobPhase::Running, 1);
        assert!(
            choose(&single, &[pod(1)], Want { index: Some(0), ..Want::default() })
                .unwrap_err()
                .contains("not an array")
        );
    }

    #[test]
    fn multi_node_jobs_default_to_the_main_node() {
        let mut j = job(JobPhase::Running, 1);
        j.nodes = Some((3, 1));
        let pods: Vec<PodFacts> = (0..3)
            .map(|i| PodFacts {
                name: format!("n{i}"),
                attempt: 1,
                node_index: Some(i),
                ..Default::default()
            })
            .collect();
        assert_eq!(choose(&j, &pods, Want::default()), pick("n1", 1));
        assert_eq!(choose(&j, &pods, Want { node: Some(2), ..Want::default() }), pick("n2", 1));
        assert!(
            choose(&j, &pods, Want { node: Some(3), ..Want::default() }).unwrap_err().contains("no node 3")
        );
    }
}
