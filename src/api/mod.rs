//! The five custom resources of `barge.dev/v1alpha1`, one file each, and the shared
//! condition type their statuses carry.

pub mod batch_job;
pub mod compute_environment;
pub mod container;
pub mod job_definition;
pub mod job_queue;
pub mod job_trigger;
pub mod overrides;
pub mod string_map;
pub mod task;

pub use batch_job::{BatchJob, BatchJobSpec, BatchJobStatus, JobPhase};
pub use compute_environment::{ComputeEnvironment, ComputeEnvironmentSpec, ComputeEnvironmentStatus};
pub use job_definition::{JobDefinition, JobDefinitionSpec, JobDefinitionStatus};
pub use job_queue::{JobQueue, JobQueueSpec, JobQueueStatus};
pub use job_trigger::{JobTrigger, JobTriggerSpec, JobTriggerStatus};
pub use string_map::StringMap;

use chrono::{DateTime, Utc};
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group every Barge resource lives in.
pub const GROUP: &str = "barge.dev";
/// Label put on every node and pod Barge creates, naming the compute environment.
pub const LABEL_COMPUTE_ENVIRONMENT: &str = "barge.dev/compute-environment";
/// Label on Barge pods naming the job they run.
pub const LABEL_JOB_NAME: &str = "barge.dev/job-name";
/// Label on Barge pods carrying the job's uid (names can be reused, uids cannot).
pub const LABEL_JOB_UID: &str = "barge.dev/job-uid";
/// Label on Barge pods carrying the attempt number, from 1 as in AWS Batch.
pub const LABEL_ATTEMPT: &str = "barge.dev/attempt";
/// Label on the pods of a multi-node parallel job: the node index the pod runs.
pub const LABEL_NODE_INDEX: &str = "barge.dev/node-index";
/// Annotation on a multi-node job's main pod: the node each node index runs on, in order;
/// those nodes are the job's alone while the pod lives.
pub const ANNOTATION_GANG_NODES: &str = "barge.dev/gang-nodes";
/// Label on Barge pods naming the queue that admitted them.
pub const LABEL_JOB_QUEUE: &str = "barge.dev/job-queue";
/// Label on nodes naming the instance type they simulate or run on.
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// Label on nodes: `on-demand` or `spot`.
pub const LABEL_CAPACITY_TYPE: &str = "barge.dev/capacity-type";
/// Label on a node EC2 warned about (see `Interruption`): Barge cordoned it and keeps it
/// cordoned; it goes once idle.
pub const LABEL_INTERRUPTION: &str = "barge.dev/interruption";

/// What EC2 warned of a node's instance, as the value of [`LABEL_INTERRUPTION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// EC2 takes the Spot instance back within two minutes: its attempts were stopped.
    Spot,
    /// The Spot instance is at elevated risk: nothing new starts on it.
    Rebalance,
}

impl Interruption {
    pub fn as_str(self) -> &'static str {
        match self {
            Interruption::Spot => "spot-interruption",
            Interruption::Rebalance => "rebalance-recommendation",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "spot-interruption" => Some(Interruption::Spot),
            "rebalance-recommendation" => Some(Interruption::Rebalance),
            _ => None,
        }
    }
}

/// ENABLED or DISABLED, as on AWS Batch queues and compute environments.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    #[default]
    Enabled,
    Disabled,
}

/// A status condition in the Kubernetes convention.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The conditions Barge sets, on the kinds that carry them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// ComputeEnvironment: it can run jobs.
    Ready,
    /// ComputeEnvironment: it has all the vCPUs its maxvCpus allows.
    AtMaxCapacity,
    /// JobQueue: it admits nothing now (DISABLED, or its first job cannot run).
    Blocked,
    /// JobQueue and ComputeEnvironment: nodes are held for a multi-node job that has waited
    /// its turn, and take no other job until it runs.
    HoldingNodes,
    /// JobDefinition: its latest revision is registered.
    Registered,
    /// JobDefinition: deleted, kept while jobs still run its revisions.
    Deleting,
}

impl ConditionType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::AtMaxCapacity => "AtMaxCapacity",
            ConditionType::Blocked => "Blocked",
            ConditionType::HoldingNodes => "HoldingNodes",
            ConditionType::Registered => "Registered",
            ConditionType::Deleting => "Deleting",
        }
    }
}

/// The condition of type `t`, if it is set.
pub fn condition(conditions: &[Condition], t: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == t.as_str())
}

/// The condition of type `t`, if it is set and true.
pub fn condition_true(conditions: &[Condition], t: ConditionType) -> Option<&Condition> {
    condition(conditions, t).filter(|c| c.is_true())
}

impl Condition {
    pub fn new(type_: ConditionType, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.as_str().into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Utc::now(),
            observed_generation: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }

    pub fn generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }
}

/// Sets `new` in `conditions`, keeping the old `lastTransitionTime` when the status did not
/// change, so that repeated reconciles do not churn the object.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time;
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// The API server knows `int32`/`int64` but not Rust's `uint32`/`uint64` formats (kubectl
/// warns on each); unsigned fields become `int64` with a minimum of 0.
fn drop_unsigned_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let unsigned = map.get("format").and_then(|f| f.as_str()).is_some_and(|f| f.starts_with("uint"));
            if unsigned {
                map.insert("format".into(), "int64".into());
                map.entry("minimum").or_insert(0.into());
            }
            map.values_mut().for_each(drop_unsigned_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_unsigned_formats),
        _ => {}
    }
}

/// The CRDs as one YAML stream, as `barge crd` prints and `crds/` holds.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in
        [ComputeEnvironment::crd(), JobQueue::crd(), JobDefinition::crd(), BatchJob::crd(), JobTrigger::crd()]
    {
        let mut value = serde_json::to_value(&crd).expect("a CRD serialises");
        drop_unsigned_formats(&mut value);
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value).expect("a CRD serialises to YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_crds_match_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/barge.dev.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(committed == super::crds_yaml(), "crds/ is stale: run `make crds` and commit the result");
    }
}
