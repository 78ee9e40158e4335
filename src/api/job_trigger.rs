//! JobTrigger: objects uploaded to S3 become BatchJobs. S3 event notifications (or the
//! EventBridge events of an "Object Created" rule, either one also wrapped by SNS) arrive on
//! an SQS queue; each object that passes the filter becomes one job from the template, its
//! parameters taken from the event by paths, as an EventBridge input transformer's
//! `InputPathsMap` takes them (`key: $.detail.object.key`). One job per object version,
//! whatever SQS redelivers: the job's name is derived from the object.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::batch_job::{ContainerOverrides, RetryStrategy, Timeout};
use super::{Condition, State};

/// Label on every job a trigger makes, naming the trigger.
pub const LABEL_TRIGGER: &str = "barge.dev/trigger";
/// Annotation on a trigger's job: the object it was made for, `s3://BUCKET/KEY`.
pub const ANNOTATION_TRIGGER_OBJECT: &str = "barge.dev/trigger-object";
/// Annotation on a batched trigger's array job: the ids of its objects (16 hex digits that
/// name an object version), comma-separated, by which a redelivered message finds its object
/// already in a batch.
pub const ANNOTATION_TRIGGER_OBJECTS: &str = "barge.dev/trigger-objects";
/// Annotation on a trigger's job: the object's version (its version id, else the event's
/// sequencer, else its ETag), the other half of what the job's name is derived from.
pub const ANNOTATION_TRIGGER_VERSION: &str = "barge.dev/trigger-object-version";

/// Turns S3 object events read from an SQS queue into BatchJobs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "JobTrigger",
    namespaced,
    shortname = "jt",
    category = "barge",
    status = "JobTriggerStatus",
    printcolumn = r#"{"name":"Queue","type":"string","jsonPath":".spec.jobTemplate.jobQueue"}"#,
    printcolumn = r#"{"name":"Received","type":"integer","jsonPath":".status.messagesReceived"}"#,
    printcolumn = r#"{"name":"Jobs","type":"integer","jsonPath":".status.jobsCreated"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeJobs"}"#,
    printcolumn = r#"{"name":"Rejected","type":"integer","jsonPath":".status.rejected"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.lastError","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct JobTriggerSpec {
    /// Where the events arrive.
    pub source: TriggerSource,
    /// Which objects become jobs; an event for any other object is rejected with its reason.
    #[serde(default)]
    pub filter: ObjectFilter,
    /// The job each object becomes.
    pub job_template: JobTemplate,
    /// Job parameters taken from the event, by name: a path into the event in its EventBridge
    /// form (`$.detail.bucket.name`, `$.detail.object.key`, `$.detail.object.size`, `$.time`).
    /// An S3 notification record is read as the EventBridge event it stands for, its key
    /// decoded. They win over the template's parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, self[k].startsWith('$'))").message("every parameter path starts with $ (for example $.detail.object.key)"))]
    pub parameters: BTreeMap<String, String>,
    /// At most this many of the trigger's jobs are not yet SUCCEEDED or FAILED; past it new
    /// messages wait in SQS.
    #[serde(default = "default_max_active_jobs")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxActiveJobs must be at least 1"))]
    pub max_active_jobs: u32,
    /// Where a message that cannot be read or matches no filter goes, with its reason. Without
    /// one such a message is deleted once reported (an Event, the status, the metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    /// Gather objects into array jobs instead of one job each: each batch's children read
    /// their object from an index file, one line per child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<ArrayBatch>,
    /// DISABLED triggers read nothing; their messages wait in SQS.
    #[serde(default)]
    pub state: State,
}

/// N objects → one array job of N children. Barge writes the batch's index to S3, one JSON line
/// per child in index order — `{"bucket", "key", "version", "parameters"}`, the parameters
/// taken by the trigger's paths — and passes its `s3://` URI in the parameter
/// `indexParameter`; child `AWS_BATCH_JOB_ARRAY_INDEX` reads line that number (from 0).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayBatch {
    /// Objects per array job, at most.
    #[x_kube(validation = Rule::new("self >= 2 && self <= 1000").message("batch.size must be between 2 and 1000"))]
    pub size: u32,
    /// The longest an object waits for its batch to fill (its message is kept hidden in SQS
    /// meanwhile).
    #[serde(default = "default_window")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 300").message("batch.windowSeconds must be between 1 and 300"))]
    pub window_seconds: u32,
    /// Where indexes are written: `s3://BUCKET/PREFIX<namespace>/<trigger>/<job>.jsonl`.
    #[x_kube(validation = Rule::new("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')").message("batch.indexLocation is s3://BUCKET/PREFIX"))]
    pub index_location: String,
    /// The job parameter the index's `s3://` URI is passed in.
    #[serde(default = "default_index_parameter")]
    pub index_parameter: String,
}

fn default_window() -> u32 {
    30
}

fn default_index_parameter() -> String {
    "index".into()
}

fn default_max_active_jobs() -> u32 {
    100
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSource {
    pub sqs: SqsSource,
}

/// An SQS queue S3 notifications (or an EventBridge rule, or an SNS subscription) deliver to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsSource {
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("queueUrl is the queue's URL, as GetQueueUrl returns it"))]
    pub queue_url: String,
    /// The queue's region (default: the one its URL names, else the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Secret of the trigger's namespace with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and optionally `AWS_SESSION_TOKEN`, to read the queue with. Without one the operator's
    /// own credentials are used, where its operator allows that (`--trigger-operator-credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// How long a received message stays hidden from other readers; Barge extends it while it
    /// still works on the message.
    #[serde(default = "default_visibility")]
    #[x_kube(validation = Rule::new("self >= 5 && self <= 43200").message("visibilityTimeoutSeconds must be between 5 and 43200"))]
    pub visibility_timeout_seconds: u32,
    /// Each receive's long poll.
    #[serde(default = "default_wait")]
    #[x_kube(validation = Rule::new("self <= 20").message("waitTimeSeconds must be at most 20"))]
    pub wait_time_seconds: u32,
}

fn default_visibility() -> u32 {
    60
}

fn default_wait() -> u32 {
    20
}

/// Which objects become jobs. Empty lists match everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// S3 event names (`ObjectCreated:Put`, `ObjectCreated:*`; an `s3:` prefix is allowed).
    /// Default: `ObjectCreated:*`. EventBridge events are named as S3 would name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_names: Vec<String>,
}

/// The job an object becomes: what SubmitJob takes, but its name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    #[x_kube(validation = Rule::new("size(self) > 0").message("jobQueue is required"))]
    pub job_queue: String,
    /// `NAME` or `NAME:REVISION`.
    #[x_kube(validation = Rule::new("size(self) > 0").message("jobDefinition is required"))]
    pub job_definition: String,
    /// The first part of each job's name (default: the trigger's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$')").message("jobNamePrefix is up to 40 lower-case letters, digits and hyphens"))]
    pub job_name_prefix: Option<String>,
    /// Parameters every job gets (the trigger's paths win).
    #[serde(default, skip_serializing_if = "super::StringMap::is_empty")]
    pub parameters: super::StringMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_overrides: Option<Box<ContainerOverrides>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<Box<RetryStrategy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Box<Timeout>>,
    #[serde(default, skip_serializing_if = "super::StringMap::is_empty")]
    pub tags: super::StringMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate_tags: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_identifier: Option<String>,
}

/// An SQS queue rejected messages go to, their reason in the `BargeReason` attribute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("queueUrl is the queue's URL, as GetQueueUrl returns it"))]
    pub queue_url: String,
}

/// What the trigger has done since it was made (counts survive restarts).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTriggerStatus {
    /// Messages read from the queue (a redelivered one counts again).
    #[serde(default)]
    pub messages_received: u64,
    #[serde(default)]
    pub jobs_created: u64,
    /// Objects whose job already existed (a redelivery, or a restart before the delete).
    #[serde(default)]
    pub duplicates_suppressed: u64,
    /// Messages that could not be read or matched no filter.
    #[serde(default)]
    pub rejected: u64,
    /// The trigger's jobs not yet SUCCEEDED or FAILED.
    #[serde(default)]
    pub active_jobs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
    /// The last error reading the queue or creating a job (cleared once it works again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_time: Option<DateTime<Utc>>,
    /// Ready: the queue is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
