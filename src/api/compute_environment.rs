//! ComputeEnvironment: a group of nodes Barge scales for its queues, like an AWS Batch
//! managed compute environment.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::job_queue::LabelSelector;
use super::{Condition, State};

/// Where a compute environment's nodes come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Simulated nodes (kwok): for the demo, tests and trying Barge without a cloud.
    #[default]
    Local,
    /// EC2 instances launched with aws-sdk-ec2.
    Ec2,
    /// Nodes that already exist, picked by `nodeSelector` (AWS Batch's UNMANAGED): Barge
    /// places pods on them within `maxvCpus` and never launches or removes a node.
    Unmanaged,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CapacityType {
    #[default]
    OnDemand,
    Spot,
}

/// How instance types are chosen, with AWS Batch's names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AllocationStrategy {
    /// One instance type: the cheapest that fits the demand.
    #[default]
    BestFit,
    /// Several instance types may be mixed to fit the demand.
    BestFitProgressive,
    SpotCapacityOptimized,
    SpotPriceCapacityOptimized,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NodeTaint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    #[schemars(extend("enum" = ["NoSchedule", "PreferNoSchedule", "NoExecute"]))]
    pub effect: String,
}

/// A node group Barge scales between `minvCpus` and `maxvCpus` to run its queues' jobs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "ComputeEnvironment",
    shortname = "ce",
    category = "barge",
    status = "ComputeEnvironmentStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Desired vCPUs","type":"integer","jsonPath":".status.desiredvCpus"}"#,
    printcolumn = r#"{"name":"Max vCPUs","type":"integer","jsonPath":".spec.maxvCpus"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.minvCpus <= self.maxvCpus").message("minvCpus must not be greater than maxvCpus"))]
#[x_kube(validation = Rule::new("self.provider == oldSelf.provider").message("provider is immutable: create a new compute environment instead"))]
#[x_kube(validation = Rule::new("self.provider != 'ec2' || (has(self.subnets) && size(self.subnets) > 0)").message("an ec2 compute environment needs at least one subnet in subnets"))]
#[x_kube(validation = Rule::new("self.provider != 'ec2' || has(self.launchTemplate) || has(self.imageId)").message("an ec2 compute environment needs a launchTemplate or an imageId"))]
#[x_kube(validation = Rule::new("!has(self.bidPercentage) || self.capacityType == 'SPOT'").message("bidPercentage only applies to capacityType SPOT"))]
#[x_kube(validation = Rule::new("self.provider == 'unmanaged' || (has(self.instanceTypes) && size(self.instanceTypes) > 0)").message("instanceTypes needs at least one type or family, such as m6i.large or c6i"))]
#[x_kube(validation = Rule::new("self.provider != 'unmanaged' || has(self.nodeSelector)").message("an unmanaged compute environment needs a nodeSelector that picks its nodes"))]
#[x_kube(validation = Rule::new("!has(self.nodeSelector) || (has(self.nodeSelector.matchLabels) && size(self.nodeSelector.matchLabels) > 0) || (has(self.nodeSelector.matchExpressions) && size(self.nodeSelector.matchExpressions) > 0)").message("nodeSelector needs at least one label to match: an empty one would take every node"))]
#[x_kube(validation = Rule::new("has(self.nodeSelector) == (self.provider == 'unmanaged')").message("nodeSelector only applies to provider unmanaged: Barge labels the nodes it launches itself"))]
#[serde(rename_all = "camelCase")]
pub struct ComputeEnvironmentSpec {
    /// DISABLED stops new jobs from being placed here; running jobs finish.
    #[serde(default)]
    pub state: State,
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub capacity_type: CapacityType,
    #[serde(default)]
    pub allocation_strategy: AllocationStrategy,
    /// Instance types (`m6i.large`) or families (`c6i`) nodes may be (not for unmanaged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub instance_types: Vec<String>,
    /// unmanaged: the nodes of this environment, by their labels. Barge labels each with
    /// `barge.dev/compute-environment` (a node already in another environment stays there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// vCPUs kept running even with no work.
    #[serde(default, rename = "minvCpus")]
    pub min_vcpus: u32,
    /// Upper bound on the vCPUs of all nodes together (unmanaged: on the vCPUs Barge's pods
    /// request from its nodes).
    #[serde(rename = "maxvCpus")]
    #[x_kube(validation = Rule::new("self > 0").message("maxvCpus must be at least 1"))]
    pub max_vcpus: u32,
    /// How long a node must be idle before it is removed.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay_seconds: u32,
    /// Labels put on every node Barge launches (and used by nothing else: Barge pins pods
    /// with its own label).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Taints put on every node Barge launches (unmanaged: taints its nodes already carry);
    /// Barge's pods tolerate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_taints: Vec<NodeTaint>,
    /// ec2: the AWS region (default: the operator's own region from the AWS config chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// ec2: the launch template instances start from (AMI, user data joining the cluster, disks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplate>,
    /// ec2: the AMI, when there is no launch template (or to override its AMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// ec2: subnets instances may start in; EC2 picks among them (one per zone is typical).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub subnets: Vec<String>,
    /// ec2: security groups of the instances (default: the launch template's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub security_group_ids: Vec<String>,
    /// ec2: instance profile name or ARN (optional with a launch template that sets one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// ec2: tags put on every instance, besides Barge's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('barge.dev/'))").message("tags may not use the barge.dev/ prefix: Barge sets those itself"))]
    pub tags: BTreeMap<String, String>,
    /// ec2, SPOT: the highest price paid, as a percentage of the on-demand price (default: up
    /// to the on-demand price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub bid_percentage: Option<u32>,
}

/// An EC2 launch template, by id or by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("launchTemplate needs exactly one of id or name"))]
pub struct LaunchTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A version number, `$Latest` or `$Default` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

fn default_scale_down_delay() -> u32 {
    300
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeEnvironmentStatus {
    /// vCPUs of the nodes Barge wants: running plus launching.
    #[serde(default, rename = "desiredvCpus")]
    pub desired_vcpus: u32,
    /// Nodes that belong to this compute environment.
    #[serde(default)]
    pub nodes: u32,
    #[serde(default)]
    pub ready_nodes: u32,
    #[serde(default, rename = "totalvCpus")]
    pub total_vcpus: u32,
    /// vCPUs requested by Barge pods placed on these nodes.
    #[serde(default, rename = "allocatedvCpus")]
    pub allocated_vcpus: f64,
    /// Estimated price of the nodes per hour, in USD: the On-Demand list price, or for Spot
    /// the current Spot price (capped by bidPercentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_hour: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
