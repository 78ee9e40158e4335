//! BatchJob: one unit of work with a start and an end, submitted to a JobQueue, like an
//! AWS Batch job.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// A job's place in its life, with AWS Batch's names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobPhase {
    /// Accepted by the API server, not yet seen by Barge.
    #[default]
    Submitted,
    /// Waiting for dependencies.
    Pending,
    /// Waiting for room on a compute environment.
    Runnable,
    /// Its pod is bound to a node and the container is starting.
    Starting,
    Running,
    Succeeded,
    Failed,
}

impl JobPhase {
    /// The phase as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Submitted => "SUBMITTED",
            JobPhase::Pending => "PENDING",
            JobPhase::Runnable => "RUNNABLE",
            JobPhase::Starting => "STARTING",
            JobPhase::Running => "RUNNING",
            JobPhase::Succeeded => "SUCCEEDED",
            JobPhase::Failed => "FAILED",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }
}

pub use super::container::{ContainerSpec, EnvVar, Resources};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeout {
    /// Longest an attempt may run before it is stopped.
    #[x_kube(validation = Rule::new("self >= 60").message("timeout.attemptDurationSeconds must be at least 60"))]
    pub attempt_duration_seconds: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategy {
    /// How many times the job may run in all (1 means no retry).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10").message("retryStrategy.attempts must be between 1 and 10"))]
    pub attempts: u32,
    /// Rules deciding, after a failed attempt, whether to retry; the first match wins and
    /// no match means retry while attempts remain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub evaluate_on_exit: Vec<EvaluateOnExit>,
}

impl Default for RetryStrategy {
    fn default() -> Self {
        RetryStrategy { attempts: 1, evaluate_on_exit: Vec::new() }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryAction {
    Retry,
    Exit,
}

/// One retry rule. Each pattern may end in `*` to match a prefix; all given must match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.onExitCode) || has(self.onReason) || has(self.onStatusReason)").message("an evaluateOnExit rule needs onExitCode, onReason or onStatusReason"))]
pub struct EvaluateOnExit {
    /// The container's exit code, e.g. "137" or "1*".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit_code: Option<String>,
    /// The container's termination reason, e.g. "OOMKilled".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reason: Option<String>,
    /// The attempt's status reason, e.g. "Host *".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status_reason: Option<String>,
    pub action: RetryAction,
}

pub use crate::scheduler::glob_matches;

impl RetryStrategy {
    /// Whether a failed attempt should be retried, before counting attempts left.
    pub fn wants_retry(&self, exit_code: Option<i32>, reason: Option<&str>, status_reason: &str) -> bool {
        let code = exit_code.map(|c| c.to_string());
        for rule in &self.evaluate_on_exit {
            let ok = |p: &Option<String>, v: Option<&str>| {
                p.as_ref().is_none_or(|p| v.is_some_and(|v| glob_matches(p, v)))
            };
            if ok(&rule.on_exit_code, code.as_deref())
                && ok(&rule.on_reason, reason)
                && ok(&rule.on_status_reason, Some(status_reason))
            {
                return rule.action == RetryAction::Retry;
            }
        }
        true
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ArrayProperties {
    #[x_kube(validation = Rule::new("self >= 2 && self <= 10000").message("array.size must be between 2 and 10000"))]
    pub size: u32,
}

/// The last node of a `targetNodes` range, in CEL: an open end is the last node.
macro_rules! cel_last {
    ($r:literal) => {
        concat!(
            "(",
            $r,
            ".targetNodes.contains(':') ? (",
            $r,
            ".targetNodes.split(':')[1] == '' ? self.numNodes - 1 : int(",
            $r,
            ".targetNodes.split(':')[1])) : int(",
            $r,
            ".targetNodes))"
        )
    };
}
/// The first node of a `targetNodes` range, in CEL.
macro_rules! cel_first_of {
    ($r:literal) => {
        concat!("(", $r, ".targetNodes.split(':')[0] == '' ? 0 : int(", $r, ".targetNodes.split(':')[0]))")
    };
}

/// AWS Batch's `nodeProperties`: a multi-node parallel job, one container per node, each
/// node on an instance of its own. Ranges are written as AWS writes them: `0`, `1:`,
/// `0:3` (both ends included), `:3`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mainNode < self.numNodes").message("nodeProperties.mainNode must be a node index below numNodes"))]
#[x_kube(validation = Rule::new(concat!("self.nodeRangeProperties.all(r, ", cel_first_of!("r"), " <= ", cel_last!("r"), " && ", cel_last!("r"), " < self.numNodes)")).message("each targetNodes range must run from a lower to a higher node index below numNodes, e.g. 0, 1: or 0:3"))]
#[x_kube(validation = Rule::new(concat!("self.nodeRangeProperties.all(a, self.nodeRangeProperties.exists_one(b, b.targetNodes == a.targetNodes) && self.nodeRangeProperties.all(b, a.targetNodes == b.targetNodes || ", cel_last!("a"), " < ", cel_first_of!("b"), " || ", cel_last!("b"), " < ", cel_first_of!("a"), "))")).message("nodeRangeProperties overlap: each node must be in exactly one targetNodes range"))]
#[x_kube(validation = Rule::new(concat!("self.nodeRangeProperties.map(r, ", cel_last!("r"), " - ", cel_first_of!("r"), " + 1).sum() == self.numNodes")).message("nodeRangeProperties must cover every node from 0 to numNodes - 1"))]
pub struct NodeProperties {
    /// How many nodes the job runs on.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("nodeProperties.numNodes must be between 1 and 1000"))]
    pub num_nodes: u32,
    /// The node whose exit ends the job and decides its status; it starts first.
    #[serde(default)]
    pub main_node: u32,
    /// The container of each range of nodes; together they cover every node once.
    #[schemars(length(min = 1, max = 10))]
    pub node_range_properties: Vec<NodeRangeProperty>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.container) != has(self.podTemplate)").message("each nodeRangeProperties entry sets exactly one of container or podTemplate"))]
pub struct NodeRangeProperty {
    /// The nodes this container runs on: `N`, `N:`, `:M` or `N:M`.
    #[schemars(length(max = 9))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{0,4}(:[0-9]{0,4})?$') && self != ''").message("targetNodes is a node index or a range such as 0, 1:, :3 or 0:3"))]
    pub target_nodes: String,
    /// The container these nodes run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// Or the pod each of these nodes runs (AWS Batch on EKS's range `eksProperties`); the
    /// node's variables go to its first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: Option<Box<PodTemplateSpec>>,
}

/// A job's changes to its definition's `nodeProperties` (AWS's `nodeOverrides`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeOverrides {
    /// Runs the job on this many nodes instead; the definition's open-ended range (`N:`)
    /// grows or shrinks with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("nodeOverrides.numNodes must be between 1 and 1000"))]
    pub num_nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub node_property_overrides: Vec<NodePropertyOverride>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePropertyOverride {
    /// The nodes these overrides apply to, written as in `nodeRangeProperties`.
    #[schemars(length(max = 9))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{0,4}(:[0-9]{0,4})?$') && self != ''").message("targetNodes is a node index or a range such as 0, 1:, :3 or 0:3"))]
    pub target_nodes: String,
    #[serde(default)]
    pub container_overrides: ContainerOverrides,
    /// What differs for a range of pods, by container name (AWS's range
    /// `eksPropertiesOverride`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_overrides: Option<Box<super::overrides::PodOverrides>>,
}

/// A multi-node job's nodes in its current attempt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultiNodeStatus {
    /// The attempt (its number, from 1) the nodes are of.
    pub attempt: u32,
    pub num_nodes: u32,
    pub main_node: u32,
    /// e.g. "3/4 running".
    pub progress: String,
    /// The nodes of the current attempt that have a pod, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSummary>,
}

/// One node of a multi-node job, as its pod stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    pub index: u32,
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// STARTING, RUNNING, SUCCEEDED or FAILED.
    pub phase: JobPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Roll-up of an array job's children. Index sets are ranges such as "0-99,105".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayStatus {
    pub size: u32,
    /// Finished children over all children, e.g. "7312/10000".
    pub progress: String,
    pub runnable: u32,
    /// Children waiting for their array dependencies (SEQUENTIAL, N_TO_N).
    #[serde(default)]
    pub pending: u32,
    pub starting: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub succeeded_indexes: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed_indexes: String,
    /// Children whose current attempt has reached a node (to tell a lost host from a pod
    /// not yet created).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started_indexes: String,
    /// Failed attempts of each child that has had one, by index; only these children carry
    /// detail, so status stays small.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failed_attempts: std::collections::BTreeMap<String, Vec<Attempt>>,
}

/// A user's request to stop the job, as AWS Batch's CancelJob / TerminateJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopRequest {
    /// Recorded as the job's status reason.
    #[x_kube(validation = Rule::new("size(self) > 0").message("a reason is required to cancel or terminate a job"))]
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DependencyType {
    /// Array to array of the same size: child i waits for child i of `jobName`.
    NToN,
    /// This array's children run one after another, in index order.
    Sequential,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// A BatchJob in the same namespace that must succeed first.
    pub job_name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<DependencyType>,
}

/// A batch job: a container that runs to completion, queued on a JobQueue.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "BatchJob",
    namespaced,
    shortname = "bj",
    category = "barge",
    status = "BatchJobStatus",
    printcolumn = r#"{"name":"Queue","type":"string","jsonPath":".spec.jobQueue"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.array.progress"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.multiNode.progress"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.statusReason"}"#,
    printcolumn = r#"{"name":"Attempts","type":"integer","jsonPath":".status.attemptCount","priority":1}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("[has(self.container), has(self.podTemplate), has(self.jobDefinition), has(self.nodeProperties)].filter(x, x).size() == 1").message("set exactly one of container, podTemplate, nodeProperties or jobDefinition"))]
#[x_kube(validation = Rule::new("!has(self.nodeProperties) || !has(self.array)").message("a multi-node parallel job (nodeProperties) cannot be an array job"))]
#[x_kube(validation = Rule::new("has(self.jobDefinition) || !has(self.nodeOverrides)").message("nodeOverrides needs a jobDefinition with nodeProperties to override"))]
#[x_kube(validation = Rule::new("has(self.jobDefinition) || !has(self.containerOverrides)").message("containerOverrides needs a jobDefinition to override"))]
#[x_kube(validation = Rule::new("has(self.jobDefinition) || !has(self.podOverrides)").message("podOverrides needs a jobDefinition to override"))]
#[x_kube(validation = Rule::new("has(self.jobDefinition) || !has(self.parameters)").message("parameters need a jobDefinition whose Ref:: placeholders they fill"))]
#[x_kube(validation = Rule::new(crate::mounts_name_volumes_rule!("self.container")).message("every container.mountPoints[].sourceVolume must name one of container.volumes[].name"))]
#[serde(rename_all = "camelCase")]
pub struct BatchJobSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("jobQueue is immutable"))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("jobQueue is required"))]
    pub job_queue: String,
    // Boxed: most of a job's room goes to its container, which a job submitted against a
    // job definition does not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// A full pod template, for what `container` cannot say. Its first container is the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: a pod template is 1.7 KB inline, and the operator holds every job in memory.
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: Option<Box<PodTemplateSpec>>,
    /// The JobDefinition to run: `NAME` (its latest ACTIVE revision when the job is
    /// submitted) or `NAME:REVISION`. The revision it resolved to is in `status.jobDefinition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("jobDefinition is immutable"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[1-9][0-9]*)?$')").message("jobDefinition is NAME or NAME:REVISION, e.g. render or render:2"))]
    pub job_definition: Option<String>,
    /// A multi-node parallel job: its nodes and each range's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeProperties is immutable"))]
    pub node_properties: Option<Box<NodeProperties>>,
    /// What differs from the definition's `nodeProperties` for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_overrides: Option<Box<NodeOverrides>>,
    /// Values for the definition's `Ref::name` placeholders; they win over its defaults.
    #[serde(default, skip_serializing_if = "super::StringMap::is_empty")]
    pub parameters: super::StringMap,
    /// What differs from the definition's container for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_overrides: Option<Box<ContainerOverrides>>,
    /// What differs from the named containers of the definition's pod template or task, and
    /// the pod's labels and annotations (AWS's `eksPropertiesOverride`,
    /// `ecsPropertiesOverride`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_overrides: Option<Box<super::overrides::PodOverrides>>,
    /// Tags of the job; its pods carry them as labels (see the README for the rule).
    #[serde(default, skip_serializing_if = "super::StringMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 128 && size(self[k]) <= 256)").message("a tag key is at most 128 characters and a value at most 256"))]
    pub tags: super::StringMap,
    /// Whether the definition's tags go on the job's pods too (default: the definition's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate_tags: Option<bool>,
    /// Within a queue, higher runs first (default: the definition's, else 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_priority: Option<i32>,
    /// The share this job counts against in a fair-share queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_identifier: Option<String>,
    // Boxed, as are other fields most jobs leave out: that keeps a job held in memory
    // within 896 bytes, the allocator's size class below 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Box<Timeout>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<Box<RetryStrategy>>,
    /// Jobs that must succeed before this one becomes RUNNABLE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub depends_on: Vec<Dependency>,
    /// Run this many copies (children), each with its own index and attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("array is immutable"))]
    pub array: Option<ArrayProperties>,
    /// Set to cancel the job if it has not started (started jobs run on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<StopRequest>,
    /// Set to stop the job whatever its phase, killing a running attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate: Option<StopRequest>,
}

pub(crate) fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // Structural just enough to require a container; the rest is the Pod API's to check.
    schemars::json_schema!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }
            }
        }
    })
}

/// One run of the job: one pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the attempt's output is archived, as AWS Batch names it:
    /// `<definition or job>/default/<pod>` in the job definition's log group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_stream_name: Option<String>,
    /// How each container of a pod of several ended (an ECS task's, a pod template's): the
    /// main containers in order, then the init containers and sidecars. Empty for a pod of
    /// one container, whose end is `exitCode` and `reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerExit>,
}

/// How one container of an attempt's pod ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerExit {
    pub name: String,
    /// An init container or sidecar (AWS Batch on EKS lists them apart).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// None while it had not ended (a sidecar the pod's end did not wait for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobStatus {
    #[serde(default)]
    pub phase: JobPhase,
    /// Why the job is in its phase, in words: for a waiting job, what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When the job last became RUNNABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runnable_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// The compute environment that admitted the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Attempts so far, finished ones and the current one.
    #[serde(default)]
    pub attempt_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// For multi-node parallel jobs: the nodes of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_node: Option<Box<MultiNodeStatus>>,
    /// For array jobs: the roll-up of the children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: most jobs are not arrays, and every job in the store would carry its room.
    pub array: Option<Box<ArrayStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The job definition revision the job runs, `NAME:REVISION`, fixed when it was
    /// submitted: every attempt's pod is built from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_definition: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The pod that runs `attempt` of child `index` of an array job.
impl BatchJob {
    /// The first part of its attempts' log stream names: its job definition's name, or its
    /// own without one (AWS Batch's `<definition>/default/<task>`).
    pub fn log_name(&self) -> String {
        let definition = self.status.as_ref().and_then(|s| s.job_definition.as_deref());
        match definition.or(self.spec.job_definition.as_deref()) {
            Some(d) => d.split(':').next().unwrap_or(d).to_string(),
            None => self.metadata.name.clone().unwrap_or_default(),
        }
    }
}

pub fn child_pod_name(job_name: &str, job_uid: &str, index: u32, attempt: u32) -> String {
    let prefix: String = job_name.chars().take(POD_NAME_PREFIX_MAX - 6).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let uid: String = job_uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{prefix}-{uid}-{index}-{}", attempt_number(attempt))
}

/// The pod that runs node `node` of `attempt` of a multi-node job.
pub fn node_pod_name(job_name: &str, job_uid: &str, node: u32, attempt: u32) -> String {
    let prefix: String = job_name.chars().take(POD_NAME_PREFIX_MAX - 7).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let uid: String = job_uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{prefix}-{uid}-{}-n{node}", attempt_number(attempt))
}

/// The headless Service of a multi-node job, through which its nodes find each other by
/// name (`node-N.SERVICE`): a DNS label that starts with a letter.
pub fn job_service_name(job_name: &str, job_uid: &str) -> String {
    let prefix: String =
        job_name.chars().take(POD_NAME_PREFIX_MAX).map(|c| if c == '.' { '-' } else { c }).collect();
    let prefix = prefix.trim_end_matches('-');
    let uid: String = job_uid.chars().filter(|c| *c != '-').take(8).collect();
    let lead = if prefix.starts_with(|c: char| c.is_ascii_lowercase()) { "" } else { "j-" };
    format!("{lead}{prefix}-{uid}")
}

/// The number users see for the attempt at `attempt` (its index in `status.attempts`):
/// counted from 1, as AWS Batch counts them (`AWS_BATCH_JOB_ATTEMPT`). Pod names, the
/// `barge.dev/attempt` label, `BARGE_JOB_ATTEMPT` and the CLI all use it.
pub fn attempt_number(attempt: u32) -> u32 {
    attempt + 1
}

/// The attempt index behind a user-facing attempt number (`None` for 0, which is no attempt).
pub fn attempt_index(number: u32) -> Option<u32> {
    number.checked_sub(1)
}

/// Longest pod-name prefix taken from the job name: 63 (a label-safe length) minus the
/// uid and attempt suffix.
const POD_NAME_PREFIX_MAX: usize = 44;

/// The pod that runs `attempt` (an index from 0) of a job; its name ends in the attempt's
/// number, from 1. Deterministic, so that every scheduling pass and
/// every restart of Barge names the same pod and never starts a second copy.
pub fn pod_name(job_name: &str, job_uid: &str, attempt: u32) -> String {
    let prefix: String = job_name.chars().take(POD_NAME_PREFIX_MAX).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let uid: String = job_uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{prefix}-{uid}-{}", attempt_number(attempt))
}

/// `containerOverrides`: each value given wins over the definition's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverrides {
    /// Replaces the definition's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Added to the definition's environment; a name both give takes the job's value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("containerOverrides.vcpus must be greater than 0"))]
    pub vcpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("containerOverrides.memory must be a positive quantity such as 2Gi or 512Mi"))]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Runs the job only on nodes of this instance type (`node.kubernetes.io/instance-type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_stable_and_fit_a_label() {
        let long = "a".repeat(250);
        let name = pod_name(&long, "0f1e2d3c-aaaa-bbbb", 9);
        assert_eq!(name, pod_name(&long, "0f1e2d3c-aaaa-bbbb", 9));
        assert!(name.len() <= 63, "{name}");
        assert_eq!(pod_name("etl-", "12345678-9", 0), "etl-12345678-1");
        assert_eq!(child_pod_name("etl", "12345678-9", 7, 1), "etl-12345678-7-2");
        assert_eq!(node_pod_name("mpi", "12345678-9", 3, 0), "mpi-12345678-1-n3");
        assert!(node_pod_name(&long, "0f1e2d3c", 999, 9).len() <= 63);
        assert_eq!(job_service_name("3d.sim", "12345678-9"), "j-3d-sim-12345678");
        assert_eq!(job_service_name("mpi", "12345678-9"), "mpi-12345678");
        assert_eq!(attempt_index(attempt_number(4)), Some(4));
        assert_eq!(attempt_index(0), None);
    }
}
