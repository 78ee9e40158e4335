//! SubmitJob, DescribeJobs, ListJobs, CancelJob and TerminateJob, over BatchJobs.
//!
//! A job's AWS `jobId` is its BatchJob's name: the endpoint names the jobs it creates with
//! a random UUID (as AWS's job ids are) and keeps the AWS `jobName`, which need not be
//! unique, in the `barge.dev/aws-name` annotation. A job applied with kubectl has its name
//! as both. An array child is `jobId:index`, as in AWS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definitions::{self, ContainerDetailOut, Empty};
use super::names;
use super::page::page;
use super::shapes::{
    self, KeyValuePair, ResourceRequirement, RetryStrategyShape, TimeoutShape, Unknown, refuse_unknown,
};
use super::{ANNOTATION_AWS_NAME, ApiError, ApiResult, Context, FIELD_MANAGER, Principal, millis};
use crate::api::batch_job::{ArrayStatus, Attempt, Dependency, DependencyType};
use crate::api::batch_job::{ContainerOverrides, NodeOverrides, NodePropertyOverride};
use crate::api::job_definition::{DefinitionRef, JobDefinitionSpec, NodeRun};
use crate::api::{BatchJob, BatchJobSpec, JobPhase};
use crate::scheduler::ranges;

/// The most ids one DescribeJobs may name, as AWS allows.
pub const MAX_DESCRIBE: usize = 100;

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct OverridesIn {
    command: Option<Vec<String>>,
    #[serde(default)]
    environment: Vec<KeyValuePair>,
    #[serde(default)]
    resource_requirements: Vec<ResourceRequirement>,
    vcpus: Option<f64>,
    memory: Option<u64>,
    instance_type: Option<String>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArrayIn {
    size: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct DependencyIn {
    job_id: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubmitInput {
    job_name: Option<String>,
    job_queue: Option<String>,
    job_definition: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    container_overrides: Option<OverridesIn>,
    node_overrides: Option<NodeOverridesIn>,
    eks_properties_override: Option<serde_json::Value>,
    ecs_properties_override: Option<serde_json::Value>,
    array_properties: Option<ArrayIn>,
    #[serde(default)]
    depends_on: Vec<DependencyIn>,
    retry_strategy: Option<RetryStrategyShape>,
    timeout: Option<TimeoutShape>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    propagate_tags: Option<bool>,
    share_identifier: Option<String>,
    scheduling_priority_override: Option<i32>,
    #[serde(flatten)]
    other: Unknown,
}

/// `nodeOverrides` of a job of a `multinode` definition.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeOverridesIn {
    num_nodes: Option<u32>,
    #[serde(default)]
    node_property_overrides: Vec<NodePropertyOverrideIn>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodePropertyOverrideIn {
    target_nodes: Option<String>,
    container_overrides: Option<OverridesIn>,
    /// A range of pods' changes (AWS Batch on EKS).
    eks_properties_override: Option<serde_json::Value>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SubmitOutput {
    job_arn: String,
    job_name: String,
    job_id: String,
}

/// The queue a request names, if the key may see it.
fn queue(ctx: &Context, who: &Principal, text: &str) -> ApiResult<Arc<crate::api::JobQueue>> {
    let name = ctx.arns.name("job-queue", text);
    names::find(&ctx.stores.queues, name)
        .filter(|q| visible_queue(ctx, who, q))
        .ok_or_else(|| ApiError::client(format!("JobQueue {name} does not exist")))
}

/// Whether the key's namespace may submit to the queue (its namespace selector), and the
/// key to it (its queue list).
pub fn visible_queue(ctx: &Context, who: &Principal, q: &crate::api::JobQueue) -> bool {
    who.may_use_queue(&q.name_any())
        && q.spec
            .namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(&ctx.stores.namespace_labels(&who.namespace)))
}

pub async fn submit(ctx: &Context, who: &Principal, input: SubmitInput) -> ApiResult<SubmitOutput> {
    refuse_unknown(&input.other, "")?;
    let job_name = input.job_name.clone().ok_or_else(|| ApiError::client("jobName is required"))?;
    if !names::valid_aws_name(&job_name) || !job_name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(ApiError::client(format!(
            "jobName {job_name:?} must be 1 to 128 letters, numbers, hyphens and underscores, starting with a letter or number"
        )));
    }
    let queue_text = input.job_queue.as_deref().ok_or_else(|| ApiError::client("jobQueue is required"))?;
    let queue = queue(ctx, who, queue_text)?;
    let definition_text =
        input.job_definition.as_deref().ok_or_else(|| ApiError::client("jobDefinition is required"))?;
    let found = definitions::find(ctx, &who.namespace, definition_text)?;
    let object = found.object.name_any();
    if definitions::is_inactive(&found.object) {
        return Err(ApiError::client(format!("Job definition {definition_text} is INACTIVE (deregistered)")));
    }
    let revision = match found.revision {
        Some(r) => r,
        None => ctx.stores.definitions.numbers(&who.namespace, &object).last().copied().ok_or_else(|| {
            ApiError::client(format!(
                "Job definition {definition_text} has no registered revision yet; retry shortly"
            ))
        })?,
    };
    super::tags::validate(&input.tags)?;
    let multinode = found.object.spec.node_properties.is_some();
    if input.node_overrides.is_some() && !multinode {
        return Err(ApiError::client("nodeOverrides need a multinode job definition"));
    }
    if multinode && input.array_properties.is_some() {
        return Err(ApiError::client("a multinode job cannot be an array job"));
    }
    if multinode && input.container_overrides.is_some() {
        return Err(ApiError::client("a multinode job takes nodeOverrides, not containerOverrides"));
    }
    let pod_overrides = match (&input.eks_properties_override, &input.ecs_properties_override) {
        (Some(_), Some(_)) => {
            return Err(ApiError::client("give eksPropertiesOverride or ecsPropertiesOverride, not both"));
        }
        (Some(eks), None) => {
            if found.object.spec.pod_template.is_none() {
                return Err(ApiError::client(
                    "eksPropertiesOverride needs a job definition with eksProperties (a pod template)",
                ));
            }
            Some(Box::new(super::eks::pod_overrides(eks, &who.namespace)?))
        }
        (None, Some(ecs)) => {
            if found.object.spec.task.is_none() {
                return Err(ApiError::client(
                    "ecsPropertiesOverride needs a job definition with ecsProperties",
                ));
            }
            Some(Box::new(task_overrides(ecs)?))
        }
        (None, None) => None,
    };
    if input.container_overrides.is_some() && found.object.spec.task.is_some() {
        return Err(ApiError::client(
            "a job of an ecsProperties definition takes ecsPropertiesOverride, not containerOverrides",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let spec = BatchJobSpec {
        pod_overrides,
        job_queue: queue.name_any(),
        job_definition: Some(format!("{object}:{revision}")),
        parameters: input.parameters.clone().into(),
        container_overrides: input.container_overrides.as_ref().map(overrides).transpose()?.map(Box::new),
        node_overrides: input
            .node_overrides
            .as_ref()
            .map(|o| node_overrides(o, &who.namespace))
            .transpose()?
            .map(Box::new),
        tags: input.tags.clone().into(),
        propagate_tags: input.propagate_tags,
        scheduling_priority: input.scheduling_priority_override,
        share_identifier: input.share_identifier.clone(),
        timeout: input.timeout.as_ref().map(|t| t.to_barge()).transpose()?.flatten().map(Box::new),
        retry_strategy: input.retry_strategy.as_ref().map(|r| r.to_barge()).transpose()?.map(Box::new),
        depends_on: dependencies(ctx, who, &id, &input.depends_on)?,
        array: match &input.array_properties {
            None => None,
            Some(ArrayIn { size: Some(size) }) if (2..=10_000).contains(size) => {
                Some(crate::api::batch_job::ArrayProperties { size: *size })
            }
            Some(ArrayIn { size }) => {
                return Err(ApiError::client(format!(
                    "arrayProperties.size must be between 2 and 10000, not {}",
                    size.map_or("missing".into(), |s| s.to_string())
                )));
            }
        },
        ..Default::default()
    };
    let mut job = BatchJob::new(&id, spec);
    job.metadata.namespace = Some(who.namespace.clone());
    job.metadata.annotations = Some([(ANNOTATION_AWS_NAME.to_string(), job_name.clone())].into());
    let api: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &who.namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.create(&params, &job).await.map_err(|e| ApiError::from_kube(e, &format!("job {job_name}")))?;
    let key = ObjectRef::new(&id).within(&who.namespace);
    ctx.stores.caught_up(|s| s.jobs.get(&key).is_some()).await;
    Ok(SubmitOutput { job_arn: ctx.arns.of("job", &id), job_name, job_id: id })
}

fn node_overrides(o: &NodeOverridesIn, ns: &str) -> ApiResult<NodeOverrides> {
    refuse_unknown(&o.other, "nodeOverrides.")?;
    if let Some(n) = o.num_nodes
        && !(1..=1000).contains(&n)
    {
        return Err(ApiError::client(format!("nodeOverrides.numNodes must be between 1 and 1000, not {n}")));
    }
    let mut out = Vec::new();
    for (i, p) in o.node_property_overrides.iter().enumerate() {
        let at = format!("nodeOverrides.nodePropertyOverrides[{i}].");
        refuse_unknown(&p.other, &at)?;
        let target_nodes =
            p.target_nodes.clone().ok_or_else(|| ApiError::client(format!("{at}targetNodes is required")))?;
        crate::api::job_definition::parse_range(&target_nodes, 1000)
            .map_err(|e| ApiError::client(format!("{at}{e}")))?;
        let container_overrides =
            p.container_overrides.as_ref().map(overrides).transpose()?.unwrap_or_default();
        let pod_overrides = p
            .eks_properties_override
            .as_ref()
            .map(|e| super::eks::pod_overrides(e, ns))
            .transpose()?
            .map(Box::new);
        out.push(NodePropertyOverride { target_nodes, container_overrides, pod_overrides });
    }
    Ok(NodeOverrides { num_nodes: o.num_nodes, node_property_overrides: out })
}

fn overrides(o: &OverridesIn) -> ApiResult<ContainerOverrides> {
    refuse_unknown(&o.other, "containerOverrides.")?;
    let asked = shapes::asked(&o.resource_requirements, o.vcpus, o.memory, "containerOverrides.")?;
    Ok(ContainerOverrides {
        command: o.command.clone(),
        environment: shapes::environment(&o.environment, "containerOverrides.")?,
        vcpus: asked.vcpus,
        memory: asked.memory,
        gpus: asked.gpus,
        instance_type: o.instance_type.clone().filter(|t| !t.is_empty()),
    })
}

/// `ecsPropertiesOverride`: its task's containers, by name.
fn task_overrides(v: &serde_json::Value) -> ApiResult<crate::api::overrides::PodOverrides> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TaskIn {
        #[serde(default)]
        containers: Vec<ContainerIn>,
        #[serde(flatten)]
        other: Unknown,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ContainerIn {
        name: Option<String>,
        command: Option<Vec<String>>,
        #[serde(default)]
        environment: Vec<KeyValuePair>,
        #[serde(default)]
        resource_requirements: Vec<ResourceRequirement>,
        #[serde(flatten)]
        other: Unknown,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct EcsIn {
        #[serde(default)]
        task_properties: Vec<TaskIn>,
        #[serde(flatten)]
        other: Unknown,
    }
    let at = "ecsPropertiesOverride.";
    let ecs: EcsIn = serde_json::from_value(v.clone()).map_err(|e| ApiError::client(format!("{at} {e}")))?;
    refuse_unknown(&ecs.other, at)?;
    let mut out = crate::api::overrides::PodOverrides::default();
    for (t, task) in ecs.task_properties.iter().enumerate() {
        let at = format!("{at}taskProperties[{t}].");
        refuse_unknown(&task.other, &at)?;
        for (i, c) in task.containers.iter().enumerate() {
            let at = format!("{at}containers[{i}].");
            refuse_unknown(&c.other, &at)?;
            let asked = shapes::asked(&c.resource_requirements, None, None, &at)?;
            let mut limits = std::collections::BTreeMap::new();
            if let Some(v) = asked.vcpus {
                limits.insert("cpu".to_string(), format!("{}m", (v * 1000.0).ceil() as u64));
            }
            if let Some(m) = asked.memory {
                limits.insert("memory".to_string(), m);
            }
            if let Some(g) = asked.gpus {
                limits.insert(crate::resources::GPU_RESOURCE.to_string(), g.to_string());
            }
            out.containers.push(crate::api::overrides::NamedOverride {
                name: c.name.clone(),
                command: c.command.clone(),
                env: shapes::environment(&c.environment, &at)?,
                resources: (!limits.is_empty()).then(|| crate::api::overrides::ResourceOverride {
                    limits,
                    requests: Default::default(),
                }),
                ..Default::default()
            });
        }
    }
    Ok(out)
}

fn dependencies(
    ctx: &Context,
    who: &Principal,
    own_id: &str,
    deps: &[DependencyIn],
) -> ApiResult<Vec<Dependency>> {
    if deps.len() > 20 {
        return Err(ApiError::client(format!("dependsOn holds {} jobs; at most 20", deps.len())));
    }
    deps.iter()
        .map(|d| {
            let type_ = match d.type_.as_deref() {
                None => None,
                Some("N_TO_N") => Some(DependencyType::NToN),
                Some("SEQUENTIAL") => Some(DependencyType::Sequential),
                Some(other) => {
                    return Err(ApiError::client(format!(
                        "dependsOn type must be N_TO_N or SEQUENTIAL, not {other:?}"
                    )));
                }
            };
            let job_name = match (&d.job_id, type_) {
                // SEQUENTIAL orders the job's own children.
                (None, Some(DependencyType::Sequential)) => own_id.to_string(),
                (None, _) => return Err(ApiError::client("dependsOn: every dependency needs a jobId")),
                (Some(id), _) => {
                    if id.contains(':') {
                        return Err(ApiError::client(format!(
                            "dependsOn jobId {id}: Barge depends on whole jobs, not one child of an array"
                        )));
                    }
                    if job(ctx, who, id).is_none() {
                        return Err(ApiError::client(format!("dependsOn jobId {id} does not exist")));
                    }
                    id.clone()
                }
            };
            Ok(Dependency { job_name, type_ })
        })
        .collect()
}

/// The job of the key's namespace with this id.
pub(super) fn job(ctx: &Context, who: &Principal, id: &str) -> Option<Arc<BatchJob>> {
    ctx.stores
        .jobs
        .get(&ObjectRef::new(id).within(&who.namespace))
        .filter(|j| who.may_use_queue(&j.spec.job_queue))
}

pub fn aws_job_name(job: &BatchJob) -> String {
    job.annotations().get(ANNOTATION_AWS_NAME).cloned().unwrap_or_else(|| job.name_any())
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct DescribeInput {
    jobs: Option<Vec<String>>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttemptContainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_stream_name: Option<String>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttemptOut {
    container: AttemptContainer,
    /// An ECS task's attempt: each container's end (`attempts[].taskProperties`).
    #[serde(skip_serializing_if = "Option::is_none")]
    task_properties: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArrayOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    status_summary: Option<BTreeMap<&'static str, u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DependencyOut {
    job_id: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_: Option<&'static str>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    job_arn: String,
    job_name: String,
    job_id: String,
    job_queue: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    share_identifier: Option<String>,
    scheduling_priority: i32,
    attempts: Vec<AttemptOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_strategy: Option<RetryStrategyShape>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<i64>,
    depends_on: Vec<DependencyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_definition: Option<String>,
    parameters: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerDetailOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    array_properties: Option<ArrayOut>,
    /// A multi-node job's nodes (on the job), or which node this is (on `jobId#N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    node_properties: Option<super::definitions::NodePropertiesOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_details: Option<NodeDetailsOut>,
    /// A job of an `eksProperties` definition (a pod template): its pod as AWS Batch on EKS
    /// describes it, and its attempts' pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    eks_properties: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eks_attempts: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ecs_properties: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<TimeoutShape>,
    tags: BTreeMap<String, String>,
    propagate_tags: bool,
    platform_capabilities: Vec<&'static str>,
    is_cancelled: bool,
    is_terminated: bool,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NodeDetailsOut {
    node_index: u32,
    is_main_node: bool,
}

#[derive(Serialize, Debug)]
pub struct DescribeOutput {
    jobs: Vec<JobDetail>,
}

/// The definition revision a job runs (or, before Barge has pinned it, the one it names).
fn definition_of(ctx: &Context, job: &BatchJob) -> Option<(String, u32, Arc<JobDefinitionSpec>)> {
    let ns = job.namespace()?;
    let text = job
        .status
        .as_ref()
        .and_then(|s| s.job_definition.as_deref())
        .or(job.spec.job_definition.as_deref())?;
    let r = DefinitionRef::parse(text).ok()?;
    let defs = &ctx.stores.definitions;
    let (rev, spec) = match r.revision {
        Some(rev) => (rev, defs.get(&ns, r.name, rev)?),
        None => defs.latest(&ns, r.name)?,
    };
    Some((r.name.to_string(), rev, spec))
}

/// Where an attempt's output is archived (its status says; older statuses did not).
fn stream_of(job: &BatchJob, a: &Attempt) -> String {
    a.log_stream_name.clone().unwrap_or_else(|| {
        crate::archive::stream_name(&job.log_name(), crate::archive::MAIN_CONTAINER, &a.pod_name)
    })
}

/// How the containers of an attempt's pod ended, as AWS Batch lists them: the main ones, or
/// (`init`) the init containers and sidecars.
fn exits(a: &Attempt, init: bool) -> Vec<Value> {
    a.containers
        .iter()
        .filter(|c| c.init == init)
        .map(|c| serde_json::json!({"name": c.name, "exitCode": c.exit_code, "reason": c.reason}))
        .collect()
}

/// Writes each container's `exitCode` and `reason` from `a` into `containers` (a JSON list of
/// containers with names), when `a` knows them.
fn set_exits(containers: &mut Value, a: &Attempt, init: bool) {
    for c in containers.as_array_mut().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        if let Some(e) = a.containers.iter().find(|e| e.init == init && e.name == name) {
            c["exitCode"] = e.exit_code.into();
            c["reason"] = e.reason.clone().into();
        }
    }
}

fn attempt_out(job: &BatchJob, a: &Attempt, task: bool) -> AttemptOut {
    let all: Vec<Value> = exits(a, false).into_iter().chain(exits(a, true)).collect();
    AttemptOut {
        task_properties: (task && !all.is_empty()).then(|| vec![serde_json::json!({"containers": all})]),
        container: AttemptContainer {
            exit_code: a.exit_code,
            reason: a.reason.clone(),
            log_stream_name: Some(stream_of(job, a)),
        },
        started_at: a.started_at.as_ref().map(millis),
        stopped_at: a.stopped_at.as_ref().map(millis),
        status_reason: a.reason.clone(),
    }
}

fn summary(a: &ArrayStatus) -> BTreeMap<&'static str, u32> {
    let finished = a.succeeded + a.failed;
    let seen = a.runnable + a.pending + a.starting + a.running + finished;
    [
        ("SUBMITTED", a.size.saturating_sub(seen)),
        ("PENDING", a.pending),
        ("RUNNABLE", a.runnable),
        ("STARTING", a.starting),
        ("RUNNING", a.running),
        ("SUCCEEDED", a.succeeded),
        ("FAILED", a.failed),
    ]
    .into()
}

fn detail(ctx: &Context, job: &BatchJob) -> JobDetail {
    let ns = job.namespace().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let def = definition_of(ctx, job);
    let work = crate::api::job_definition::work(&job.spec, def.as_ref().map(|(_, _, s)| &**s)).ok();
    let layout = work.as_ref().and_then(|w| w.nodes.as_ref());
    let template = work.as_ref().and_then(|w| w.pod_template.as_deref());
    let eks_properties = template.map(|t| {
        let mut pod = super::eks::pod_properties(t);
        if let Some(last) = status.attempts.last() {
            pod["podName"] = last.pod_name.clone().into();
            if let Some(n) = &last.node_name {
                pod["nodeName"] = n.clone().into();
            }
            if last.containers.is_empty() {
                if let Some(c) = pod["containers"].get_mut(0) {
                    c["exitCode"] = last.exit_code.into();
                    c["reason"] = last.reason.clone().into();
                }
            } else {
                set_exits(&mut pod["containers"], last, false);
                set_exits(&mut pod["initContainers"], last, true);
            }
        }
        serde_json::json!({"podProperties": pod})
    });
    let eks_attempts = template.map(|t| {
        let first = t.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone());
        status
            .attempts
            .iter()
            .filter(|a| a.stopped_at.is_some())
            .map(|a| {
                let mut v = serde_json::json!({
                    "podName": a.pod_name,
                    "containers": [{"name": first, "exitCode": a.exit_code, "reason": a.reason}],
                    "statusReason": a.reason,
                });
                if !a.containers.is_empty() {
                    v["containers"] = exits(a, false).into();
                    v["initContainers"] = exits(a, true).into();
                }
                if let Some(n) = &a.node_name {
                    v["nodeName"] = n.clone().into();
                }
                if let Some(t) = &a.started_at {
                    v["startedAt"] = millis(t).into();
                }
                if let Some(t) = &a.stopped_at {
                    v["stoppedAt"] = millis(t).into();
                }
                v
            })
            .collect()
    });
    let ecs_properties = work.as_ref().and_then(|w| w.task.as_deref()).map(|t| {
        let mut out = definitions::task_out(t);
        if let Some(last) = status.attempts.last() {
            set_exits(&mut out["taskProperties"][0]["containers"], last, false);
            set_exits(&mut out["taskProperties"][0]["containers"], last, true);
        }
        out
    });
    let is_task = work.as_ref().is_some_and(|w| w.task.is_some());
    let container = work.as_ref().and_then(|w| match (&w.container, &w.pod_template) {
        _ if w.task.is_some() => None,
        (Some(c), _) => Some(ContainerDetailOut::of(c)),
        (None, Some(t)) => Some(ContainerDetailOut::of_template(t)),
        (None, None) => None,
    });
    let container = container.map(|mut c| {
        if let Some(last) = status.attempts.last() {
            c.exit_code = last.exit_code;
            c.reason = last.reason.clone();
            c.log_stream_name = Some(stream_of(job, last));
        }
        c
    });
    let def_arn = def.as_ref().map(|(name, rev, _)| {
        let aws = ctx
            .stores
            .definitions
            .definitions
            .get(&ObjectRef::new(name).within(&ns))
            .map_or_else(|| name.clone(), |jd| names::aws_name(jd.as_ref()));
        ctx.arns.of("job-definition", &format!("{aws}:{rev}"))
    });
    JobDetail {
        job_arn: ctx.arns.of("job", &job.name_any()),
        job_name: aws_job_name(job),
        job_id: job.name_any(),
        job_queue: ctx.queue_arn(&job.spec.job_queue),
        status: status.phase.as_str(),
        share_identifier: job.spec.share_identifier.clone(),
        scheduling_priority: work.as_ref().map_or(0, |w| w.scheduling_priority),
        attempts: status
            .attempts
            .iter()
            .filter(|a| a.stopped_at.is_some())
            .map(|a| attempt_out(job, a, is_task))
            .collect(),
        status_reason: status.status_reason.clone(),
        created_at: job
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .or(status.created_at.as_ref().map(millis)),
        retry_strategy: work.as_ref().map(|w| RetryStrategyShape::of(&w.retry_strategy)),
        started_at: status.started_at.as_ref().map(millis),
        stopped_at: status.stopped_at.as_ref().map(millis),
        depends_on: job
            .spec
            .depends_on
            .iter()
            .map(|d| DependencyOut {
                job_id: d.job_name.clone(),
                type_: d.type_.map(|t| match t {
                    DependencyType::NToN => "N_TO_N",
                    DependencyType::Sequential => "SEQUENTIAL",
                }),
            })
            .collect(),
        job_definition: def_arn,
        parameters: match &def {
            Some((_, _, d)) => {
                d.parameters.iter().chain(&job.spec.parameters).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            None => job.spec.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        },
        container,
        array_properties: job.spec.array.as_ref().map(|a| ArrayOut {
            status_summary: Some(
                status
                    .array
                    .as_deref()
                    .map(summary)
                    .unwrap_or_else(|| summary(&ArrayStatus { size: a.size, ..Default::default() })),
            ),
            size: Some(a.size),
            index: None,
        }),
        node_properties: layout.map(super::definitions::NodePropertiesOut::of_layout),
        node_details: None,
        eks_properties,
        eks_attempts,
        ecs_properties,
        timeout: work
            .as_ref()
            .and_then(|w| w.timeout)
            .map(|t| TimeoutShape { attempt_duration_seconds: Some(t.attempt_duration_seconds) }),
        tags: work
            .as_ref()
            .map(|w| w.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .unwrap_or_else(|| job.spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        propagate_tags: job
            .spec
            .propagate_tags
            .unwrap_or(def.as_ref().is_some_and(|(_, _, d)| d.propagate_tags)),
        platform_capabilities: vec!["EC2"],
        is_cancelled: job.spec.cancel.is_some(),
        is_terminated: job.spec.terminate.is_some(),
    }
}

/// The phase of child `index` as the parent's roll-up tells it.
fn child_phase(parent: &BatchJob, index: u32) -> JobPhase {
    let phase = parent.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let Some(a) = parent.status.as_ref().and_then(|s| s.array.as_deref()) else {
        return if phase.is_finished() { phase } else { JobPhase::Submitted };
    };
    let has = |set: &str| !set.is_empty() && ranges::decode(set).contains(&index);
    if has(&a.succeeded_indexes) {
        JobPhase::Succeeded
    } else if has(&a.failed_indexes) {
        JobPhase::Failed
    } else if has(&a.started_indexes) {
        JobPhase::Running
    } else if phase.is_finished() {
        // The parent ended (cancelled, terminated) before this child ran.
        JobPhase::Failed
    } else if phase == JobPhase::Pending || a.pending > 0 {
        JobPhase::Pending
    } else {
        JobPhase::Runnable
    }
}

/// Node `index` of a multi-node job, from the job's node summary: `None` for a job that is
/// not multi-node or has no such node.
fn node_detail(ctx: &Context, parent: &BatchJob, index: u32) -> Option<JobDetail> {
    let mut d = detail(ctx, parent);
    d.node_properties.take()?;
    let def = definition_of(ctx, parent);
    let work = crate::api::job_definition::work(&parent.spec, def.as_ref().map(|(_, _, s)| &**s)).ok()?;
    let layout = work.nodes.as_ref().filter(|l| index < l.num_nodes)?;
    let status = parent.status.clone().unwrap_or_default();
    let summary = status.multi_node.as_ref().and_then(|m| m.nodes.iter().find(|n| n.index == index));
    let main = index == layout.main_node;
    let phase = match summary {
        Some(n) => n.phase,
        None if main || status.phase.is_finished() => status.phase,
        None => JobPhase::Runnable,
    };
    let id = format!("{}#{index}", parent.name_any());
    d.job_arn = ctx.arns.of("job", &id);
    d.job_id = id;
    d.status = phase.as_str();
    if !main {
        d.attempts.clear();
        d.status_reason = None;
    }
    let mut c = match layout.run(index) {
        NodeRun::Container(c) => ContainerDetailOut::of(c),
        NodeRun::Pod(t) => ContainerDetailOut::of_template(t),
    };
    c.exit_code = summary.and_then(|n| n.exit_code);
    if let Some(n) = summary {
        let configured = layout.container(index).and_then(|c| c.extra().log_configuration.as_ref());
        let name = crate::archive::configured_stream_prefix(configured)
            .map_or_else(|| parent.log_name(), str::to_string);
        let stream = crate::archive::stream_name(&name, crate::archive::MAIN_CONTAINER, &n.pod_name);
        c.log_stream_name = Some(stream);
    }
    d.container = Some(c);
    d.node_details = Some(NodeDetailsOut { node_index: index, is_main_node: main });
    Some(d)
}

fn child_detail(ctx: &Context, parent: &BatchJob, index: u32) -> JobDetail {
    let mut d = detail(ctx, parent);
    let id = format!("{}:{index}", parent.name_any());
    let phase = child_phase(parent, index);
    let failed = parent
        .status
        .as_ref()
        .and_then(|s| s.array.as_ref())
        .and_then(|a| a.failed_attempts.get(&index.to_string()))
        .cloned()
        .unwrap_or_default();
    d.job_arn = ctx.arns.of("job", &id);
    d.job_id = id;
    d.status = phase.as_str();
    d.attempts = failed.iter().map(|a| attempt_out(parent, a, false)).collect();
    d.status_reason = failed.last().and_then(|a| a.reason.clone()).filter(|_| phase == JobPhase::Failed);
    d.array_properties = Some(ArrayOut { status_summary: None, size: None, index: Some(index) });
    let def = definition_of(ctx, parent);
    let log_name = crate::api::job_definition::work(&parent.spec, def.as_ref().map(|(_, _, s)| &**s))
        .map_or_else(|_| parent.log_name(), |w| w.log_name(parent));
    if let Some(c) = d.container.as_mut() {
        c.exit_code =
            if phase == JobPhase::Succeeded { Some(0) } else { failed.last().and_then(|a| a.exit_code) };
        c.reason = None;
        // The child's last attempt: its failed ones, then the one that ended it or runs.
        let running = matches!(phase, JobPhase::Starting | JobPhase::Running);
        let attempt = failed.len() as u32 + u32::from(phase == JobPhase::Succeeded || running);
        c.log_stream_name = attempt.checked_sub(1).map(|a| {
            let pod = crate::api::batch_job::child_pod_name(
                &parent.name_any(),
                &parent.uid().unwrap_or_default(),
                index,
                a,
            );
            crate::archive::stream_name(&log_name, crate::archive::MAIN_CONTAINER, &pod)
        });
    }
    if !phase.is_finished() {
        d.stopped_at = None;
    }
    d
}

pub fn describe(ctx: &Context, who: &Principal, input: DescribeInput) -> ApiResult<DescribeOutput> {
    let ids = input.jobs.ok_or_else(|| ApiError::client("jobs is required: a list of up to 100 job ids"))?;
    if ids.len() > MAX_DESCRIBE {
        return Err(ApiError::client(format!(
            "jobs holds {} ids; DescribeJobs takes at most {MAX_DESCRIBE}",
            ids.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut seen = BTreeSet::new();
    for id in &ids {
        let id = ctx.arns.name("job", id);
        if !seen.insert(id.to_string()) {
            continue;
        }
        // A multi-node job's node: `jobId#N`.
        if let Some((parent, index)) = id.split_once('#') {
            let parent = job(ctx, who, parent);
            if let (Some(parent), Ok(index)) = (parent, index.parse::<u32>()) {
                out.extend(node_detail(ctx, &parent, index));
            }
            continue;
        }
        // As AWS does, an unknown id is left out of the answer.
        match id.split_once(':') {
            None => out.extend(job(ctx, who, id).map(|j| detail(ctx, &j))),
            Some((parent, index)) => {
                let Some(parent) = job(ctx, who, parent) else { continue };
                let Ok(index) = index.parse::<u32>() else { continue };
                if parent.spec.array.as_ref().is_some_and(|a| index < a.size) {
                    out.push(child_detail(ctx, &parent, index));
                }
            }
        }
    }
    Ok(DescribeOutput { jobs: out })
}

#[derive(Deserialize, Debug, Default)]
pub struct Filter {
    name: Option<String>,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListInput {
    job_queue: Option<String>,
    array_job_id: Option<String>,
    multi_node_job_id: Option<String>,
    job_status: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
    #[serde(default)]
    filters: Vec<Filter>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SummaryContainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    job_arn: String,
    job_id: String,
    job_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<SummaryContainer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    array_properties: Option<ArrayOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_definition: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ListOutput {
    job_summary_list: Vec<JobSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn parse_status(s: &str) -> ApiResult<JobPhase> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        ApiError::client(format!(
            "jobStatus must be SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED or FAILED, not {s:?}"
        ))
    })
}

/// The filters of a ListJobs, checked.
#[derive(Default)]
struct Filters {
    name: Option<String>,
    definition: Option<String>,
    before: Option<i64>,
    after: Option<i64>,
}

impl Filters {
    fn of(filters: &[Filter]) -> ApiResult<Filters> {
        let mut f = Filters::default();
        for filter in filters {
            let name = filter.name.as_deref().unwrap_or("");
            let [value] = filter.values.as_slice() else {
                return Err(ApiError::client(format!("filter {name}: give exactly one value")));
            };
            let time = || {
                value.parse::<i64>().map_err(|_| {
                    ApiError::client(format!(
                        "filter {name}: {value:?} is not a time in milliseconds since 1970"
                    ))
                })
            };
            match name {
                "JOB_NAME" => f.name = Some(value.clone()),
                "JOB_DEFINITION" => f.definition = Some(value.clone()),
                "BEFORE_CREATED_AT" => f.before = Some(time()?),
                "AFTER_CREATED_AT" => f.after = Some(time()?),
                other => {
                    return Err(ApiError::client(format!(
                        "filter name must be JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT or AFTER_CREATED_AT, not {other:?}"
                    )));
                }
            }
        }
        Ok(f)
    }

    fn is_empty(&self) -> bool {
        self.name.is_none() && self.definition.is_none() && self.before.is_none() && self.after.is_none()
    }

    fn admits(&self, s: &JobSummary) -> bool {
        let created = s.created_at.unwrap_or(0);
        self.name.as_ref().is_none_or(|p| crate::api::batch_job::glob_matches(p, &s.job_name))
            && self.definition.as_ref().is_none_or(|p| {
                s.job_definition.as_ref().is_some_and(|d| {
                    let named = d.rsplit_once('/').map_or(d.as_str(), |(_, n)| n);
                    let bare = named.rsplit_once(':').map_or(named, |(n, _)| n);
                    crate::api::batch_job::glob_matches(p, named)
                        || crate::api::batch_job::glob_matches(p, bare)
                        || p == d
                })
            })
            && self.before.is_none_or(|t| created < t)
            && self.after.is_none_or(|t| created > t)
    }
}

fn summary_of(d: JobDetail) -> JobSummary {
    JobSummary {
        container: d
            .container
            .as_ref()
            .map(|c| SummaryContainer { exit_code: c.exit_code, reason: c.reason.clone() }),
        job_arn: d.job_arn,
        job_id: d.job_id,
        job_name: d.job_name,
        created_at: d.created_at,
        status: d.status,
        status_reason: d.status_reason,
        started_at: d.started_at,
        stopped_at: d.stopped_at,
        array_properties: d.array_properties.map(|a| ArrayOut { status_summary: None, ..a }),
        job_definition: d.job_definition,
    }
}

pub fn list(ctx: &Context, who: &Principal, input: ListInput) -> ApiResult<ListOutput> {
    if input.multi_node_job_id.is_some() {
        return Err(ApiError::client(
            "multiNodeJobId: multi-node parallel jobs are not supported by Barge yet",
        ));
    }
    let filters = Filters::of(&input.filters)?;
    // With filters, AWS lists jobs of every status.
    let status = match (&input.job_status, filters.is_empty()) {
        (_, false) => None,
        (Some(s), true) => Some(parse_status(s)?),
        (None, true) => Some(JobPhase::Running),
    };
    let mut items: Vec<(String, JobSummary)> = Vec::new();
    match (&input.job_queue, &input.array_job_id) {
        (_, Some(array)) => {
            let parent = job(ctx, who, ctx.arns.name("job", array))
                .ok_or_else(|| ApiError::client(format!("arrayJobId {array} does not exist")))?;
            let size = parent
                .spec
                .array
                .as_ref()
                .map(|a| a.size)
                .ok_or_else(|| ApiError::client(format!("arrayJobId {array} is not an array job")))?;
            for index in 0..size {
                if status.is_some_and(|s| child_phase(&parent, index) != s) {
                    continue;
                }
                let s = summary_of(child_detail(ctx, &parent, index));
                if filters.admits(&s) {
                    items.push((format!("{index:010}"), s));
                }
            }
        }
        (Some(q), None) => {
            let queue = queue(ctx, who, q)?.name_any();
            for j in ctx.stores.jobs.state() {
                if j.spec.job_queue != queue || j.namespace().as_deref() != Some(who.namespace.as_str()) {
                    continue;
                }
                if status.is_some_and(|s| j.status.as_ref().map(|st| st.phase).unwrap_or_default() != s) {
                    continue;
                }
                let s = summary_of(detail(ctx, &j));
                if filters.admits(&s) {
                    items.push((format!("{:020}/{}", s.created_at.unwrap_or(0), s.job_id), s));
                }
            }
        }
        (None, None) => return Err(ApiError::client("give jobQueue or arrayJobId")),
    }
    let (job_summary_list, next_token) = page(items, input.max_results, input.next_token.as_deref())?;
    Ok(ListOutput { job_summary_list, next_token })
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct StopInput {
    job_id: Option<String>,
    reason: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Cancel,
    Terminate,
}

pub async fn stop(ctx: &Context, who: &Principal, how: Stop, input: StopInput) -> ApiResult<Empty> {
    let id = input
        .job_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::client("jobId is required"))?;
    let reason =
        input.reason.filter(|r| !r.is_empty()).ok_or_else(|| ApiError::client("reason is required"))?;
    let id = ctx.arns.name("job", id);
    if id.contains(':') {
        return Err(ApiError::client(format!("{id}: cancel or terminate the array job, not one child")));
    }
    // AWS answers a job it does not know (or, here, another namespace's) with success and
    // does nothing.
    let Some(job) = job(ctx, who, id) else { return Ok(Empty {}) };
    if job.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
        return Ok(Empty {});
    }
    let field = match how {
        Stop::Cancel => "cancel",
        Stop::Terminate => "terminate",
    };
    let patch = serde_json::json!({"spec": {field: {"reason": reason}}});
    let api: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &who.namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patched = match api.patch(id, &params, &Patch::Merge(&patch)).await {
        Ok(p) => p,
        // Deleted meanwhile: as if it never was.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Empty {}),
        Err(e) => return Err(ApiError::from_kube(e, &format!("job {id}"))),
    };
    let (key, generation) = (ObjectRef::from_obj(&patched), patched.metadata.generation);
    ctx.stores.caught_up(|s| s.jobs.get(&key).is_some_and(|j| j.metadata.generation >= generation)).await;
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_job::ContainerExit;

    fn attempt() -> Attempt {
        let exit = |name: &str, init: bool, code: Option<i32>, reason: Option<&str>| ContainerExit {
            name: name.into(),
            init,
            exit_code: code,
            reason: reason.map(str::to_string),
        };
        Attempt {
            pod_name: "p".into(),
            exit_code: Some(0),
            containers: vec![
                exit("app", false, Some(0), Some("Completed")),
                exit("setup", true, Some(0), Some("Completed")),
                exit("proxy", true, Some(143), Some("Error")),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn each_container_of_a_task_or_pod_gets_its_own_exit_code() {
        let a = attempt();
        let mut task =
            serde_json::json!([{"name": "app"}, {"name": "setup"}, {"name": "proxy"}, {"name": "unknown"}]);
        set_exits(&mut task, &a, false);
        set_exits(&mut task, &a, true);
        assert_eq!(task[0]["exitCode"], 0);
        assert_eq!((task[2]["exitCode"].as_i64(), task[2]["reason"].as_str()), (Some(143), Some("Error")));
        assert!(task[3].get("exitCode").is_none(), "a container the attempt does not name is left as it is");
        assert_eq!(
            exits(&a, false),
            vec![serde_json::json!({"name": "app", "exitCode": 0, "reason": "Completed"})]
        );
        assert_eq!(exits(&a, true).len(), 2);
        let job = BatchJob::new(
            "j",
            serde_json::from_value(serde_json::json!({"jobQueue": "q", "container": {"image": "i"}}))
                .unwrap(),
        );
        let out = serde_json::to_value(attempt_out(&job, &a, true)).unwrap();
        let listed = &out["taskProperties"][0]["containers"];
        assert_eq!(listed.as_array().map(Vec::len), Some(3), "{out}");
        assert_eq!(listed[2]["name"], "proxy");
        let plain =
            serde_json::to_value(attempt_out(&job, &Attempt { containers: vec![], ..a }, true)).unwrap();
        assert!(
            plain.get("taskProperties").is_none(),
            "a pod of one container has its exit code on `container`"
        );
    }
}
