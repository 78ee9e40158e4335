//! What the job controller knows of a job's pod, dependencies and limits: the facts that
//! single jobs and arrays both turn into status.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::batch_job::{BatchJobStatus, ContainerExit, JobPhase, RetryStrategy, Timeout};
use crate::api::job_definition::Work;

/// Reason recorded when an attempt outlives `timeout.attemptDurationSeconds`.
pub const TIMEOUT_REASON: &str = "Job attempt duration exceeded timeout";

/// What Barge needs to know of a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub node: Option<String>,
    /// The compute environment the pod was placed in (its label).
    pub compute_environment: Option<String>,
    pub phase: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// Why kube-scheduler has not placed it, if it says.
    pub unschedulable: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// Why the node's kubelet refused the pod before any container ran (see `refusal`).
    pub refused: Option<String>,
    /// Why a container of the placed pod cannot start (a Secret it reads is missing, an
    /// image that cannot be pulled), as the kubelet says it.
    pub blocked: Option<Blocked>,
    /// How each container ended, for a pod of several (see `Attempt::containers`).
    pub containers: Vec<ContainerExit>,
}

/// A container the kubelet cannot start.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    /// The kubelet's reason, e.g. `CreateContainerConfigError`.
    pub reason: String,
    pub message: String,
    /// Whether it cannot start until the user changes something in the cluster (a missing
    /// Secret or ConfigMap, a bad image name), rather than a pull that may yet succeed.
    pub config: bool,
}

/// The kubelet's reasons for a container it will not start; the first three need the user.
const BLOCKED_REASONS: [(&str, bool); 5] = [
    ("CreateContainerConfigError", true),
    ("CreateContainerError", true),
    ("InvalidImageName", true),
    ("ErrImagePull", false),
    ("ImagePullBackOff", false),
];

impl PodFacts {
    pub fn of(pod: &Pod) -> PodFacts {
        let status = pod.status.clone().unwrap_or_default();
        // The job's container is the pod's first (the kubelet lists statuses by name); of a
        // pod with several, the first to fail speaks for the pod.
        let statuses = status.container_statuses.as_deref().unwrap_or_default();
        let first = pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.as_str());
        let failed = pod.spec.iter().flat_map(|s| &s.containers).find_map(|c| {
            let st = statuses.iter().find(|st| st.name == c.name)?;
            st.state.as_ref()?.terminated.as_ref().filter(|t| t.exit_code != 0)?;
            Some(st)
        });
        let main = failed
            .or_else(|| statuses.iter().find(|st| Some(st.name.as_str()) == first))
            .or(statuses.first())
            .and_then(|c| c.state.clone());
        let blocked = statuses.iter().chain(status.init_container_statuses.iter().flatten()).find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.as_deref()?;
            let (_, config) = BLOCKED_REASONS.iter().find(|(r, _)| *r == reason)?;
            Some(Blocked {
                reason: reason.to_string(),
                message: w.message.clone().unwrap_or_default(),
                config: *config,
            })
        });
        let ts = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
            DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond())
        };
        let running_since =
            main.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.as_ref());
        let term = main.as_ref().and_then(|s| s.terminated.as_ref());
        let unschedulable = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .and_then(|c| c.message.clone());
        PodFacts {
            containers: container_exits(pod),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            compute_environment: pod.labels().get(crate::api::LABEL_COMPUTE_ENVIRONMENT).cloned(),
            phase: status.phase.clone().unwrap_or_else(|| "Pending".into()),
            started_at: running_since.or(term.and_then(|t| t.started_at.as_ref())).and_then(ts),
            finished_at: term.and_then(|t| t.finished_at.as_ref()).and_then(ts),
            exit_code: term.map(|t| t.exit_code),
            reason: term.and_then(|t| t.reason.clone()).or(status.reason.clone()),
            unschedulable,
            created_at: pod.metadata.creation_timestamp.as_ref().and_then(ts),
            refused: refusal(pod),
            blocked,
        }
    }
}

/// How each container of a pod of several ended: the main containers in order, then the init
/// containers (sidecars among them); none for a pod of one container.
fn container_exits(pod: &Pod) -> Vec<ContainerExit> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    if spec.containers.len() + inits.len() < 2 {
        return Vec::new();
    }
    let status = pod.status.as_ref();
    let ended = |statuses: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>, name: &str| {
        let st = statuses?.iter().find(|s| s.name == name)?;
        st.state.as_ref()?.terminated.clone()
    };
    let mains = spec
        .containers
        .iter()
        .map(|c| (c, false, ended(status.and_then(|s| s.container_statuses.as_ref()), &c.name)));
    let inits = inits
        .iter()
        .map(|c| (c, true, ended(status.and_then(|s| s.init_container_statuses.as_ref()), &c.name)));
    mains
        .chain(inits)
        .map(|(c, init, term)| ContainerExit {
            name: c.name.clone(),
            init,
            exit_code: term.as_ref().map(|t| t.exit_code),
            reason: term.and_then(|t| t.reason),
        })
        .collect()
}

/// Why the node's kubelet refused the pod at admission, before any container ran: it had
/// no room for it (room held by pods Barge does not count), or it could not take it for
/// another reason. The kubelet fails such a pod with its reason (`OutOfcpu`, ...) and a
/// message beginning "Pod was rejected". No work ran: the attempt did not happen, and the
/// job goes back to its queue.
pub fn refusal(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Failed") {
        return None;
    }
    let message = status.message.as_deref()?;
    if !message.starts_with("Pod was rejected") {
        return None;
    }
    let ran = status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some()));
    if ran {
        return None;
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("?");
    Some(match status.reason.as_deref() {
        Some(reason) => format!("node {node} refused the pod ({reason}: {message})"),
        None => format!("node {node} refused the pod ({message})"),
    })
}

/// The attempt the job is on: finished attempts are never reopened.
pub fn current_attempt(status: &BatchJobStatus) -> u32 {
    status.attempts.iter().filter(|a| a.stopped_at.is_some()).count() as u32
}

/// Where the job's dependencies stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deps {
    Met,
    Waiting(String),
    Failed(String),
}

impl Deps {
    /// Holds a job that has not started on its dependencies: PENDING while they run,
    /// FAILED when one failed. Returns whether it did.
    pub fn hold(&self, s: &mut BatchJobStatus, now: DateTime<Utc>) -> bool {
        let why = match self {
            Deps::Met => return false,
            Deps::Waiting(why) => {
                s.phase = JobPhase::Pending;
                why
            }
            Deps::Failed(why) => {
                s.phase = JobPhase::Failed;
                s.stopped_at = Some(now);
                why
            }
        };
        s.status_reason = Some(why.clone());
        true
    }
}

/// What of a job's work its lifecycle reads: how it retries, how long an attempt may run.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    pub retry: &'a RetryStrategy,
    pub timeout: Option<&'a Timeout>,
    /// A multi-node job's main node: its pod is the attempt's.
    pub main_node: Option<u32>,
    /// The first part of its attempts' log stream names when its container's
    /// `logConfiguration` sets `awslogs-stream-prefix` (else the job's `log_name`).
    pub log_prefix: Option<&'a str>,
}

impl<'a> Limits<'a> {
    /// The limits of `work`; with none (its work cannot be read), no retry and no timeout.
    pub fn of(work: Option<&'a Work<'a>>) -> Limits<'a> {
        static NO_RETRY: RetryStrategy = RetryStrategy { attempts: 1, evaluate_on_exit: Vec::new() };
        Limits {
            retry: work.map_or(&NO_RETRY, |w| &*w.retry_strategy),
            timeout: work.and_then(|w| w.timeout),
            main_node: work.and_then(|w| w.nodes.as_ref()).map(|n| n.main_node),
            log_prefix: work.and_then(Work::log_prefix),
        }
    }
}

/// Why an attempt's pod failed, as AWS Batch words it.
pub fn failure_reason(exit_code: Option<i32>, container_reason: Option<&str>) -> String {
    match (exit_code, container_reason) {
        (Some(c), Some(r)) => format!("Essential container in task exited with code {c} ({r})"),
        (Some(c), None) => format!("Essential container in task exited with code {c}"),
        (None, Some(r)) => format!("Pod failed: {r}"),
        (None, None) => "Pod failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_container_of_a_pod_of_several_ends_on_its_own() {
        let ended = |name: &str, code: i32, reason: &str| {
            serde_json::json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                               "state": {"terminated": {"exitCode": code, "reason": reason}}})
        };
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}],
                     "initContainers": [{"name": "setup"}, {"name": "proxy", "restartPolicy": "Always"}]},
            "status": {"phase": "Succeeded",
                       "containerStatuses": [ended("app", 0, "Completed")],
                       "initContainerStatuses": [ended("setup", 0, "Completed"), ended("proxy", 143, "Error")]}
        }))
        .unwrap();
        let exits = PodFacts::of(&pod).containers;
        let names: Vec<(&str, bool, Option<i32>)> =
            exits.iter().map(|c| (c.name.as_str(), c.init, c.exit_code)).collect();
        assert_eq!(names, [("app", false, Some(0)), ("setup", true, Some(0)), ("proxy", true, Some(143))]);
        let single: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [ended("app", 0, "Completed")]}
        }))
        .unwrap();
        assert!(PodFacts::of(&single).containers.is_empty(), "one container: its end is the attempt's");
    }

    fn failed(message: &str, container: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Failed", "reason": "OutOfcpu", "message": message,
                       "containerStatuses": container}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_the_kubelet_rejected_before_it_ran_is_a_refusal() {
        let rejected = "Pod was rejected: Node didn't have enough resource: cpu, requested: 4000, used: 6000, capacity: 8000";
        let why = refusal(&failed(rejected, serde_json::json!([]))).unwrap();
        assert!(why.starts_with("node n1 refused the pod (OutOfcpu: Pod was rejected"), "{why}");
        assert_eq!(PodFacts::of(&failed(rejected, serde_json::json!([]))).refused, Some(why));
        // A container that ran makes it a failure of the job, whatever the message.
        let ran = serde_json::json!([{"name": "main", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 1}}}]);
        assert_eq!(refusal(&failed(rejected, ran)), None);
        assert_eq!(refusal(&failed("Evicted for memory", serde_json::json!([]))), None);
    }
}
