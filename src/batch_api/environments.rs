//! DescribeJobQueues and DescribeComputeEnvironments: what a key's namespace may use.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::jobs::visible_queue;
use super::page::page;
use super::{ApiResult, Context, Principal, names, tags};
use crate::api::compute_environment::{CapacityType, Provider};
use crate::api::{ComputeEnvironment, JobQueue, State};

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueuesInput {
    #[serde(default)]
    job_queues: Vec<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct OrderOut {
    order: u32,
    compute_environment: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct QueueOut {
    job_queue_name: String,
    job_queue_arn: String,
    state: &'static str,
    status: &'static str,
    status_reason: String,
    priority: i32,
    compute_environment_order: Vec<OrderOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduling_policy_arn: Option<String>,
    tags: BTreeMap<String, String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct QueuesOutput {
    job_queues: Vec<QueueOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn state(s: State) -> &'static str {
    match s {
        State::Enabled => "ENABLED",
        State::Disabled => "DISABLED",
    }
}

fn queue_out(ctx: &Context, q: &JobQueue) -> QueueOut {
    let blocked = q
        .status
        .as_ref()
        .and_then(|s| crate::api::condition_true(&s.conditions, crate::api::ConditionType::Blocked))
        .map(|c| c.message.clone());
    let name = names::aws_name(q);
    QueueOut {
        job_queue_arn: ctx.arns.of("job-queue", &name),
        job_queue_name: name.clone(),
        state: state(q.spec.state),
        status: "VALID",
        status_reason: blocked.unwrap_or_else(|| "JobQueue Healthy".into()),
        priority: q.spec.priority,
        compute_environment_order: q
            .spec
            .compute_environment_order
            .iter()
            .map(|o| OrderOut {
                order: o.order,
                compute_environment: ctx.environment_arn(&o.compute_environment),
            })
            .collect(),
        // A fair-share queue's policy lives in the queue itself; this names it.
        scheduling_policy_arn: q.spec.fair_share.as_ref().map(|_| ctx.arns.of("scheduling-policy", &name)),
        tags: tags::annotated(q).unwrap_or_default(),
    }
}

pub fn queues(ctx: &Context, who: &Principal, input: QueuesInput) -> ApiResult<QueuesOutput> {
    let asked: Vec<&str> = input.job_queues.iter().map(|q| ctx.arns.name("job-queue", q)).collect();
    let items = ctx
        .stores
        .queues
        .state()
        .iter()
        .filter(|q| visible_queue(ctx, who, q))
        .filter(|q| asked.is_empty() || asked.contains(&names::aws_name(q.as_ref()).as_str()))
        .map(|q| (names::aws_name(q.as_ref()), queue_out(ctx, q)))
        .collect();
    let (job_queues, next_token) = page(items, input.max_results, input.next_token.as_deref())?;
    Ok(QueuesOutput { job_queues, next_token })
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentsInput {
    #[serde(default)]
    compute_environments: Vec<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResourcesOut {
    #[serde(rename = "type")]
    type_: &'static str,
    allocation_strategy: String,
    #[serde(rename = "minvCpus")]
    min_vcpus: u32,
    #[serde(rename = "maxvCpus")]
    max_vcpus: u32,
    #[serde(rename = "desiredvCpus")]
    desired_vcpus: u32,
    instance_types: Vec<String>,
    subnets: Vec<String>,
    security_group_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bid_percentage: Option<u32>,
    tags: BTreeMap<String, String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentOut {
    compute_environment_name: String,
    compute_environment_arn: String,
    ecs_cluster_arn: String,
    #[serde(rename = "type")]
    type_: &'static str,
    state: &'static str,
    status: &'static str,
    status_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    compute_resources: Option<ComputeResourcesOut>,
    #[serde(rename = "unmanagedvCpus", skip_serializing_if = "Option::is_none")]
    unmanagedv_cpus: Option<u32>,
    container_orchestration_type: &'static str,
    tags: BTreeMap<String, String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentsOutput {
    compute_environments: Vec<EnvironmentOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn environment_out(ctx: &Context, ce: &ComputeEnvironment) -> EnvironmentOut {
    let name = names::aws_name(ce);
    let s = &ce.spec;
    let status = ce.status.clone().unwrap_or_default();
    let allocation =
        serde_json::to_value(s.allocation_strategy).ok().and_then(|v| v.as_str().map(String::from));
    EnvironmentOut {
        compute_environment_arn: ctx.arns.of("compute-environment", &name),
        ecs_cluster_arn: String::new(),
        type_: if s.provider == Provider::Unmanaged { "UNMANAGED" } else { "MANAGED" },
        unmanagedv_cpus: (s.provider == Provider::Unmanaged).then_some(s.max_vcpus),
        state: state(s.state),
        status: "VALID",
        status_reason: status.message.clone().unwrap_or_else(|| "ComputeEnvironment Healthy".into()),
        compute_resources: (s.provider != Provider::Unmanaged).then(|| ComputeResourcesOut {
            type_: match s.capacity_type {
                CapacityType::OnDemand => "EC2",
                CapacityType::Spot => "SPOT",
            },
            allocation_strategy: allocation.unwrap_or_default(),
            min_vcpus: s.min_vcpus,
            max_vcpus: s.max_vcpus,
            desired_vcpus: status.desired_vcpus,
            instance_types: s.instance_types.clone(),
            subnets: s.subnets.clone(),
            security_group_ids: s.security_group_ids.clone(),
            bid_percentage: s.bid_percentage,
            tags: s.tags.clone(),
        }),
        container_orchestration_type: match s.provider {
            Provider::Local | Provider::Ec2 | Provider::Unmanaged => "EKS",
        },
        tags: tags::annotated(ce).unwrap_or_default(),
        compute_environment_name: name,
    }
}

/// Whether the key may see a compute environment: one behind a queue it may use, or any
/// for an admin key.
pub fn visible_environment(ctx: &Context, who: &Principal, ce: &ComputeEnvironment) -> bool {
    let name = ce.name_any();
    who.admin
        || ctx.stores.queues.state().iter().any(|q| {
            visible_queue(ctx, who, q)
                && q.spec.compute_environment_order.iter().any(|o| o.compute_environment == name)
        })
}

/// The compute environments behind the queues the key may use.
pub fn compute_environments(
    ctx: &Context,
    who: &Principal,
    input: EnvironmentsInput,
) -> ApiResult<EnvironmentsOutput> {
    let usable: std::collections::BTreeSet<String> = ctx
        .stores
        .queues
        .state()
        .iter()
        .filter(|q| visible_queue(ctx, who, q))
        .flat_map(|q| q.spec.compute_environment_order.iter().map(|o| o.compute_environment.clone()))
        .collect();
    let asked: Vec<&str> =
        input.compute_environments.iter().map(|c| ctx.arns.name("compute-environment", c)).collect();
    let items = ctx
        .stores
        .compute_environments
        .state()
        .iter()
        .filter(|c| usable.contains(&c.name_any()) || who.admin)
        .filter(|c| asked.is_empty() || asked.contains(&names::aws_name(c.as_ref()).as_str()))
        .map(|c| (names::aws_name(c.as_ref()), environment_out(ctx, c)))
        .collect();
    let (compute_environments, next_token) = page(items, input.max_results, input.next_token.as_deref())?;
    Ok(EnvironmentsOutput { compute_environments, next_token })
}
