//! `barge logs`: what a job's container printed, attempt by attempt, read from the pod that
//! ran it (through the API server and the node's kubelet, as `kubectl logs` reads it).
//!
//! Which pod is decided from the job and its pods alone ([`choose`], no I/O): a child of
//! an array job by `--index`, a node of a multi-node job by `--node` (the main node unless
//! told), an attempt by `--attempt` (the last one unless told). What cannot be shown says
//! why in one line: a job that has not started, an attempt whose pod is gone, a pod on a
//! simulated node, where nothing ran.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};

use super::Common;
use crate::api::batch_job::JobPhase;
use crate::api::{BatchJob, LABEL_ATTEMPT, LABEL_JOB_UID, LABEL_NODE_INDEX};
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
}

/// What `choose` needs of the job.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobFacts {
    pub name: String,
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
            None if k <= had => Err(format!(
                "the pod of attempt {k} of {what} is gone (deleted, or its node was): its output went with it"
            )),
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
            None => Err(format!(
                "the pod of the last attempt of {what} is gone (deleted, or its node was): its output went with it"
            )),
        },
    }
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

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = super::commands::client().await?;
    let jobs = super::commands::jobs_api(&client, &args.common);
    let ns = args.common.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let want = Want { index: args.index, node: args.node, attempt: args.attempt };
    let mut said = None;
    let (pod, attempt) = loop {
        let job = super::commands::get_job(&jobs, &args.job).await?;
        let uid = job.uid().context("the job has no uid")?;
        let list = pods.list(&ListParams::default().labels(&format!("{LABEL_JOB_UID}={uid}"))).await?;
        let facts: Vec<PodFacts> = list.items.iter().filter_map(pod_facts).collect();
        let why = match choose(&job_facts(&job), &facts, want).map_err(anyhow::Error::msg)? {
            Choice::Pod { name, attempt } => {
                let pod =
                    list.items.iter().find(|p| p.name_any() == name).cloned().expect("chosen from the list");
                match container(&client, &pod).await {
                    Container::Started => break (pod, attempt),
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
    let params = LogParams {
        follow: args.follow,
        container: pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()),
        ..LogParams::default()
    };
    let stream = pods
        .log_stream(&pod.name_any(), &params)
        .await
        .with_context(|| format!("reading the output of attempt {attempt} of {}", args.job))?;
    let mut lines = stream.lines();
    while let Some(line) = lines.next().await {
        println!("{}", line?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(phase: JobPhase, attempts: u32) -> JobFacts {
        JobFacts { name: "j".into(), phase, attempts, ..Default::default() }
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
    fn an_attempt_whose_pod_is_gone_says_so() {
        let j = job(JobPhase::Failed, 2);
        let e = choose(&j, &[pod(2)], Want { attempt: Some(1), ..Want::default() }).unwrap_err();
        assert!(e.contains("attempt 1 of j is gone"), "{e}");
        let e = choose(&j, &[], Want::default()).unwrap_err();
        assert!(e.contains("last attempt of j is gone"), "{e}");
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
