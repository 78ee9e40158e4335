//! JobQueue: where jobs wait, with a priority and an ordered list of compute
//! environments, like an AWS Batch job queue.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, State};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeEnvironmentOrder {
    /// Lower orders are tried first.
    pub order: u32,
    pub compute_environment: String,
}

/// A label selector (the Kubernetes `matchLabels` / `matchExpressions` form).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LabelSelectorRequirement {
    pub key: String,
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A queue of BatchJobs, admitted in priority order onto its compute environments.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "JobQueue",
    shortname = "jq",
    category = "barge",
    status = "JobQueueStatus",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Runnable","type":"integer","jsonPath":".status.jobs.runnable"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.jobs.running"}"#,
    printcolumn = r#"{"name":"Blocked","type":"string","jsonPath":".status.conditions[?(@.type==\"Blocked\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct JobQueueSpec {
    /// Queues with a higher priority are served first when they share compute.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("priority must be between 0 and 1000"))]
    pub priority: i32,
    /// DISABLED queues accept jobs but admit none.
    #[serde(default)]
    pub state: State,
    #[x_kube(validation = Rule::new("size(self) > 0").message("computeEnvironmentOrder needs at least one compute environment"))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a.order == b.order))").message("each computeEnvironmentOrder entry needs a distinct order"))]
    #[schemars(length(max = 10))]
    pub compute_environment_order: Vec<ComputeEnvironmentOrder>,
    /// Namespaces whose jobs this queue accepts; empty means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Share compute between share identifiers by weight instead of first-in, first-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fair_share: Option<FairSharePolicy>,
    /// Cancel jobs that stay RUNNABLE too long for a given reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub job_state_time_limit_actions: Vec<JobStateTimeLimitAction>,
}

/// AWS Batch's fair-share policy: usage is vCPU-seconds, decayed with a half-life of
/// `shareDecaySeconds` (0: only what runs now counts).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FairSharePolicy {
    #[serde(default)]
    #[x_kube(validation = Rule::new("self <= 604800").message("shareDecaySeconds must be at most 604800 (a week)"))]
    pub share_decay_seconds: u32,
    /// Keep (computeReservation/100)^activeShares of the queue's maximum vCPUs free for
    /// share identifiers not yet active (0-99).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self <= 99").message("computeReservation must be between 0 and 99"))]
    pub compute_reservation: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub share_distribution: Vec<ShareWeight>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShareWeight {
    /// A share identifier, or a prefix ending in `*`.
    pub share_identifier: String,
    /// Lower weight, bigger share (a share with weight 0.5 gets twice what weight 1 gets).
    #[x_kube(validation = Rule::new("self >= 0.0001 && self <= 999.9999").message("weightFactor must be between 0.0001 and 999.9999"))]
    pub weight_factor: f64,
}

/// As AWS Batch: after `maxTimeSeconds` RUNNABLE with a status reason matching `reason`
/// (a trailing `*` matches a prefix), the job is cancelled. A reason written as AWS Batch
/// documents it, the code alone (`CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY`), matches a status
/// reason that starts with that code and goes on with ` - ` and an explanation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStateTimeLimitAction {
    /// e.g. "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT" or "CAPACITY:*".
    pub reason: String,
    /// Only RUNNABLE is supported, as in AWS Batch.
    #[serde(default = "runnable")]
    #[x_kube(validation = Rule::new("self == 'RUNNABLE'").message("state must be RUNNABLE"))]
    pub state: String,
    #[x_kube(validation = Rule::new("self >= 10 && self <= 86400").message("maxTimeSeconds must be between 10 and 86400"))]
    pub max_time_seconds: u32,
    /// Only CANCEL is supported, as in AWS Batch.
    #[serde(default = "cancel")]
    #[x_kube(validation = Rule::new("self == 'CANCEL'").message("action must be CANCEL"))]
    pub action: String,
}

/// What separates a status reason's code from its explanation: `CODE - words`.
pub const REASON_CODE_SEPARATOR: &str = " - ";

impl JobStateTimeLimitAction {
    /// Whether a RUNNABLE job's status reason is one this action applies to: the pattern
    /// matches the reason's code (the part before ` - `) or the whole reason.
    pub fn applies_to(&self, status_reason: &str) -> bool {
        let code = status_reason.split_once(REASON_CODE_SEPARATOR).map_or(status_reason, |(c, _)| c);
        crate::api::batch_job::glob_matches(&self.reason, code)
            || crate::api::batch_job::glob_matches(&self.reason, status_reason)
    }
}

fn runnable() -> String {
    "RUNNABLE".into()
}
fn cancel() -> String {
    "CANCEL".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCounts {
    pub submitted: u32,
    pub pending: u32,
    pub runnable: u32,
    pub starting: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
}

/// Fair-share usage per share identifier at one moment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FairShareUsage {
    pub recorded_at: DateTime<Utc>,
    /// vCPU-seconds of each share, halved every shareDecaySeconds.
    pub vcpu_seconds: BTreeMap<String, f64>,
}

impl FairShareUsage {
    /// The usage now, `half_life_seconds` after each halving: what was recorded, decayed
    /// for the time since.
    pub fn decayed_to(&self, now: DateTime<Utc>, half_life_seconds: u32) -> BTreeMap<String, f64> {
        let elapsed = (now - self.recorded_at).num_milliseconds().max(0) as f64 / 1000.0;
        let factor = 0.5f64.powf(elapsed / half_life_seconds.max(1) as f64);
        self.vcpu_seconds.iter().map(|(share, v)| (share.clone(), v * factor)).collect()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobQueueStatus {
    #[serde(default)]
    pub jobs: JobCounts,
    /// When the job that has waited longest became RUNNABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_runnable_since: Option<DateTime<Utc>>,
    /// A fair-share queue's usage as Barge last recorded it: a restarted Barge goes on
    /// from it (decayed for the time in between) instead of from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fair_share_usage: Option<FairShareUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_usage_is_halved_for_each_half_life_since_it_was_recorded() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let record =
            FairShareUsage { recorded_at: at, vcpu_seconds: BTreeMap::from([("gold".into(), 800.0)]) };
        assert_eq!(record.decayed_to(at, 60)["gold"], 800.0);
        assert_eq!(record.decayed_to(at + chrono::Duration::seconds(120), 60)["gold"], 200.0);
        assert_eq!(
            record.decayed_to(at - chrono::Duration::seconds(30), 60)["gold"],
            800.0,
            "a clock behind"
        );
    }

    fn action(reason: &str) -> JobStateTimeLimitAction {
        JobStateTimeLimitAction {
            reason: reason.into(),
            state: runnable(),
            max_time_seconds: 600,
            action: cancel(),
        }
    }

    #[test]
    fn a_time_limit_reason_written_the_aws_way_matches_barge_s_reason_with_its_explanation() {
        let waiting =
            "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job needs 200 vCPU, more than any node";
        assert!(action("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT").applies_to(waiting));
        assert!(action("MISCONFIGURATION:*").applies_to(waiting));
        assert!(action("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job*").applies_to(waiting));
        assert!(action(waiting).applies_to(waiting));
        let full = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - compute environment ce is at maxvCpus";
        assert!(action("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY").applies_to(full));
    }

    #[test]
    fn a_time_limit_reason_for_another_code_does_not_match() {
        let waiting = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job needs 200 vCPU";
        assert!(!action("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY").applies_to(waiting));
        assert!(!action("MISCONFIGURATION:JOB_RESOURCE").applies_to(waiting));
        assert!(!action("MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE").applies_to(waiting));
        assert!(!action("CAPACITY:*").applies_to(""));
    }
}
