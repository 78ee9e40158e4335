//! Create, Update and Delete of job queues and compute environments, for keys made with
//! `barge credentials create --admin`. They write the same JobQueue and ComputeEnvironment
//! objects `kubectl apply` does, labelled `app.kubernetes.io/managed-by: barge-batch-api` so
//! that a GitOps tool can be told to leave them alone (an object is managed one way or the
//! other: a sync from Git reverts what the API changed).

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use hyper::StatusCode;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::definitions::Empty;
use super::names::{self, object_name, valid_aws_name};
use super::shapes::{Unknown, refuse_unknown};
use super::tags::{self, ANNOTATION_TAGS, Tags};
use super::{ANNOTATION_AWS_NAME, ApiError, ApiResult, Context, FIELD_MANAGER, Principal};
use crate::api::compute_environment::Provider;
use crate::api::{BatchJob, ComputeEnvironment, JobQueue, State};

/// The label on objects the API created.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "barge-batch-api");

/// An unmanaged environment's cap when the request names none: its nodes are the limit.
const UNMANAGED_DEFAULT_VCPUS: u32 = 100_000;

/// AWS plumbing of a compute environment with no meaning on a cluster: accepted, not acted on.
const IGNORED_ENVIRONMENT_FIELDS: &[&str] = &["serviceRole", "eksConfiguration", "context", "updatePolicy"];
const IGNORED_RESOURCE_FIELDS: &[&str] = &[
    "desiredvCpus",
    "ec2KeyPair",
    "placementGroup",
    "spotIamFleetRole",
    "ec2Configuration",
    "updateToLatestImageVersion",
];

pub(super) fn admin_only(who: &Principal, what: &str) -> ApiResult<()> {
    match who.admin {
        true => Ok(()),
        false => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!("{what} needs a key made with `barge credentials create --admin`"),
        )),
    }
}

fn refuse_unknown_except(other: &Unknown, ignored: &[&str], within: &str) -> ApiResult<()> {
    let rest: Unknown = other
        .iter()
        .filter(|(k, _)| !ignored.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    refuse_unknown(&rest, within)
}

fn state(text: Option<&str>) -> ApiResult<Option<State>> {
    match text {
        None => Ok(None),
        Some("ENABLED") => Ok(Some(State::Enabled)),
        Some("DISABLED") => Ok(Some(State::Disabled)),
        Some(s) => Err(ApiError::client(format!("state {s} must be one of ENABLED | DISABLED"))),
    }
}

fn metadata(object: &str, aws: &str, tags: &Tags) -> ApiResult<Value> {
    tags::validate(tags)?;
    let mut annotations = BTreeMap::from([(ANNOTATION_AWS_NAME.to_string(), aws.to_string())]);
    if !tags.is_empty() {
        annotations.insert(ANNOTATION_TAGS.into(), serde_json::to_string(tags).expect("tags serialise"));
    }
    Ok(json!({"name": object, "labels": {MANAGED_BY.0: MANAGED_BY.1}, "annotations": annotations}))
}

/// A create's error, in AWS's words when the name is taken.
fn created_or(e: kube::Error, what: &str, aws: &str) -> ApiError {
    match e {
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            ApiError::client(format!("{what} {aws} already exists"))
        }
        e => ApiError::from_kube(e, &format!("{} {aws}", what.to_lowercase())),
    }
}

fn params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentNamed {
    compute_environment_name: String,
    compute_environment_arn: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct QueueNamed {
    job_queue_name: String,
    job_queue_arn: String,
}

// ---- compute environments ----

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct LaunchTemplateIn {
    launch_template_id: Option<String>,
    launch_template_name: Option<String>,
    version: Option<String>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResourcesIn {
    #[serde(rename = "type")]
    type_: Option<String>,
    allocation_strategy: Option<String>,
    #[serde(rename = "minvCpus")]
    min_vcpus: Option<u32>,
    #[serde(rename = "maxvCpus")]
    max_vcpus: Option<u32>,
    instance_types: Option<Vec<String>>,
    image_id: Option<String>,
    subnets: Option<Vec<String>>,
    security_group_ids: Option<Vec<String>>,
    instance_role: Option<String>,
    tags: Option<Tags>,
    bid_percentage: Option<u32>,
    launch_template: Option<LaunchTemplateIn>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateEnvironmentInput {
    compute_environment_name: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
    state: Option<String>,
    #[serde(rename = "unmanagedvCpus")]
    unmanaged_vcpus: Option<u32>,
    compute_resources: Option<ComputeResourcesIn>,
    #[serde(default)]
    tags: Tags,
    #[serde(flatten)]
    other: Unknown,
}

/// The spec fields a `computeResources` sets (for Create all of them, for Update those
/// given).
fn resources_spec(r: &ComputeResourcesIn) -> ApiResult<serde_json::Map<String, Value>> {
    refuse_unknown_except(&r.other, IGNORED_RESOURCE_FIELDS, "computeResources.")?;
    let mut spec = serde_json::Map::new();
    match r.type_.as_deref() {
        None => {}
        Some("EC2") => {
            spec.insert("capacityType".into(), "ON_DEMAND".into());
        }
        Some("SPOT") => {
            spec.insert("capacityType".into(), "SPOT".into());
        }
        Some(t @ ("FARGATE" | "FARGATE_SPOT")) => {
            return Err(ApiError::client(format!(
                "computeResources.type {t}: Barge runs jobs as pods on nodes; use EC2 or SPOT"
            )));
        }
        Some(t) => {
            return Err(ApiError::client(format!("computeResources.type must be EC2 or SPOT, not {t:?}")));
        }
    }
    if let Some(a) = &r.allocation_strategy {
        let known =
            ["BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED"];
        if !known.contains(&a.as_str()) {
            return Err(ApiError::client(format!(
                "computeResources.allocationStrategy must be one of {}, not {a:?}",
                known.join(", ")
            )));
        }
        spec.insert("allocationStrategy".into(), a.clone().into());
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec.insert(k.into(), v);
        }
    };
    put("minvCpus", r.min_vcpus.map(Into::into));
    put("maxvCpus", r.max_vcpus.map(Into::into));
    put("instanceTypes", r.instance_types.clone().map(Into::into));
    put("imageId", r.image_id.clone().map(Into::into));
    put("subnets", r.subnets.clone().map(Into::into));
    put("securityGroupIds", r.security_group_ids.clone().map(Into::into));
    put("instanceProfile", r.instance_role.clone().map(Into::into));
    put("tags", r.tags.clone().map(|t| json!(t)));
    // AWS reads bidPercentage for SPOT only, and ignores it otherwise.
    if r.type_.as_deref() == Some("SPOT") {
        put("bidPercentage", r.bid_percentage.map(Into::into));
    }
    if let Some(lt) = &r.launch_template {
        refuse_unknown(&lt.other, "computeResources.launchTemplate.")?;
        put(
            "launchTemplate",
            Some(
                json!({"id": lt.launch_template_id, "name": lt.launch_template_name, "version": lt.version}),
            ),
        );
    }
    Ok(spec)
}

fn environment_named(ctx: &Context, aws: &str) -> EnvironmentNamed {
    EnvironmentNamed {
        compute_environment_arn: ctx.arns.of("compute-environment", aws),
        compute_environment_name: aws.to_string(),
    }
}

pub async fn create_environment(
    ctx: &Context,
    who: &Principal,
    input: CreateEnvironmentInput,
) -> ApiResult<EnvironmentNamed> {
    admin_only(who, "CreateComputeEnvironment")?;
    refuse_unknown_except(&input.other, IGNORED_ENVIRONMENT_FIELDS, "")?;
    let aws = input
        .compute_environment_name
        .clone()
        .ok_or_else(|| ApiError::client("computeEnvironmentName is required"))?;
    if !valid_aws_name(&aws) {
        return Err(ApiError::client(format!(
            "computeEnvironmentName {aws:?} must be 1 to 128 letters, numbers, hyphens and underscores"
        )));
    }
    let object = object_name(&aws);
    let mut spec = serde_json::Map::new();
    if let Some(s) = state(input.state.as_deref())? {
        spec.insert("state".into(), json!(s));
    }
    match (input.type_.as_deref(), &input.compute_resources) {
        (Some("MANAGED"), Some(r)) => {
            if input.unmanaged_vcpus.is_some() {
                return Err(ApiError::client(
                    "unmanagedvCpus only applies to an UNMANAGED compute environment",
                ));
            }
            // What AWS requires of an EC2 or SPOT environment, in its words.
            if r.instance_role.is_none() {
                return Err(ApiError::client(
                    "Error executing request, Exception : Instance role is required. \
                     (computeResources.instanceRole: Barge sets it as the nodes' instance profile)",
                ));
            }
            if r.min_vcpus.is_none() {
                return Err(ApiError::client(
                    "Error executing request, Exception : Resource minvCpus is required.",
                ));
            }
            if r.max_vcpus.is_none() {
                return Err(ApiError::client("computeResources.maxvCpus is required"));
            }
            spec.insert("provider".into(), json!(ctx.managed_provider));
            spec.insert("instanceTypes".into(), json!(["optimal"]));
            spec.extend(resources_spec(r)?);
        }
        (Some("MANAGED"), None) => {
            return Err(ApiError::client("computeResources is required for a MANAGED compute environment"));
        }
        (Some("UNMANAGED"), None) => {
            spec.insert("provider".into(), json!(Provider::Unmanaged));
            spec.insert("maxvCpus".into(), input.unmanaged_vcpus.unwrap_or(UNMANAGED_DEFAULT_VCPUS).into());
            // Its nodes are those a user labels for it, as an ECS instance registers in
            // an AWS unmanaged environment's cluster.
            spec.insert(
                "nodeSelector".into(),
                json!({"matchLabels": {crate::api::LABEL_COMPUTE_ENVIRONMENT: object}}),
            );
        }
        (Some("UNMANAGED"), Some(_)) => {
            return Err(ApiError::client(
                "computeResources does not apply to an UNMANAGED compute environment",
            ));
        }
        (None, _) => return Err(ApiError::client("type is required: MANAGED or UNMANAGED")),
        (Some(t), _) => {
            return Err(ApiError::client(format!("type must be MANAGED or UNMANAGED, not {t:?}")));
        }
    }
    let body = json!({
        "apiVersion": ComputeEnvironment::api_version(&()),
        "kind": ComputeEnvironment::kind(&()),
        "metadata": metadata(&object, &aws, &input.tags)?,
        "spec": spec,
    });
    let ce: ComputeEnvironment = serde_json::from_value(body)
        .map_err(|e| ApiError::client(format!("compute environment {aws} is invalid: {e}")))?;
    let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let created = api.create(&pp, &ce).await.map_err(|e| created_or(e, "Compute environment", &aws))?;
    let key = kube::runtime::reflector::ObjectRef::from_obj(&created);
    ctx.stores.caught_up(|s| s.compute_environments.get(&key).is_some()).await;
    Ok(environment_named(ctx, &aws))
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateEnvironmentInput {
    compute_environment: Option<String>,
    state: Option<String>,
    #[serde(rename = "unmanagedvCpus")]
    unmanaged_vcpus: Option<u32>,
    compute_resources: Option<ComputeResourcesIn>,
    #[serde(flatten)]
    other: Unknown,
}

fn environment(ctx: &Context, text: Option<&str>) -> ApiResult<std::sync::Arc<ComputeEnvironment>> {
    let text = text.ok_or_else(|| ApiError::client("computeEnvironment is required"))?;
    let aws = ctx.arns.name("compute-environment", text);
    names::find(&ctx.stores.compute_environments, aws)
        .ok_or_else(|| ApiError::client(format!("ComputeEnvironment {aws} does not exist")))
}

pub async fn update_environment(
    ctx: &Context,
    who: &Principal,
    input: UpdateEnvironmentInput,
) -> ApiResult<EnvironmentNamed> {
    admin_only(who, "UpdateComputeEnvironment")?;
    refuse_unknown_except(&input.other, IGNORED_ENVIRONMENT_FIELDS, "")?;
    let ce = environment(ctx, input.compute_environment.as_deref())?;
    let aws = names::aws_name(ce.as_ref());
    let unmanaged = ce.spec.provider == Provider::Unmanaged;
    let mut spec = serde_json::Map::new();
    if let Some(s) = state(input.state.as_deref())? {
        spec.insert("state".into(), json!(s));
    }
    match (unmanaged, input.unmanaged_vcpus, &input.compute_resources) {
        (true, _, Some(_)) => {
            return Err(ApiError::client(
                "computeResources does not apply to an UNMANAGED compute environment",
            ));
        }
        (false, Some(_), _) => {
            return Err(ApiError::client("unmanagedvCpus only applies to an UNMANAGED compute environment"));
        }
        (true, Some(v), None) => {
            spec.insert("maxvCpus".into(), v.into());
        }
        (false, None, Some(r)) => spec.extend(resources_spec(r)?),
        _ => {}
    }
    let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
    let patched = api
        .patch(&ce.name_any(), &params(), &Patch::Merge(&json!({"spec": spec})))
        .await
        .map_err(|e| ApiError::from_kube(e, &format!("compute environment {aws}")))?;
    let (key, generation) =
        (kube::runtime::reflector::ObjectRef::from_obj(&patched), patched.meta().generation);
    ctx.stores
        .caught_up(|s| s.compute_environments.get(&key).is_some_and(|c| c.meta().generation >= generation))
        .await;
    Ok(environment_named(ctx, &aws))
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeleteEnvironmentInput {
    compute_environment: Option<String>,
}

pub async fn delete_environment(
    ctx: &Context,
    who: &Principal,
    input: DeleteEnvironmentInput,
) -> ApiResult<Empty> {
    admin_only(who, "DeleteComputeEnvironment")?;
    let ce = environment(ctx, input.compute_environment.as_deref())?;
    let (object, aws) = (ce.name_any(), names::aws_name(ce.as_ref()));
    if ce.spec.state != State::Disabled {
        return Err(ApiError::client(format!(
            "Cannot delete compute environment {aws}: it is ENABLED; disable it with UpdateComputeEnvironment first"
        )));
    }
    let queues: Vec<String> = ctx
        .stores
        .queues
        .state()
        .iter()
        .filter(|q| q.spec.compute_environment_order.iter().any(|o| o.compute_environment == object))
        .map(|q| names::aws_name(q.as_ref()))
        .collect();
    if !queues.is_empty() {
        return Err(ApiError::client(format!(
            "Cannot delete, found existing JobQueue relationship: {} uses compute environment {aws}",
            queues.join(", ")
        )));
    }
    let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
    crate::k8s::delete_if_present(&api, &object)
        .await
        .map_err(|e| ApiError::from_kube(e, &format!("compute environment {aws}")))?;
    Ok(Empty {})
}

// ---- job queues ----

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrderIn {
    order: Option<u32>,
    compute_environment: Option<String>,
}

#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TimeLimitIn {
    reason: String,
    state: String,
    max_time_seconds: u32,
    action: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueInput {
    job_queue_name: Option<String>,
    job_queue: Option<String>,
    state: Option<String>,
    scheduling_policy_arn: Option<String>,
    priority: Option<i32>,
    compute_environment_order: Option<Vec<OrderIn>>,
    job_state_time_limit_actions: Option<Vec<TimeLimitIn>>,
    #[serde(default)]
    tags: Tags,
    #[serde(flatten)]
    other: Unknown,
}

/// The queue fields a Create or Update sets.
fn queue_spec(ctx: &Context, input: &QueueInput) -> ApiResult<serde_json::Map<String, Value>> {
    refuse_unknown(&input.other, "")?;
    if input.scheduling_policy_arn.is_some() {
        return Err(ApiError::client(
            "schedulingPolicyArn: Barge keeps a queue's fair-share policy in the queue itself \
             (JobQueue spec.fairShare); set it with kubectl",
        ));
    }
    let mut spec = serde_json::Map::new();
    if let Some(s) = state(input.state.as_deref())? {
        spec.insert("state".into(), json!(s));
    }
    if let Some(p) = input.priority {
        spec.insert("priority".into(), p.into());
    }
    if let Some(order) = &input.compute_environment_order {
        let mut out = Vec::new();
        for (i, o) in order.iter().enumerate() {
            let text = o.compute_environment.as_deref().ok_or_else(|| {
                ApiError::client(format!("computeEnvironmentOrder[{i}].computeEnvironment is required"))
            })?;
            let order = o
                .order
                .ok_or_else(|| ApiError::client(format!("computeEnvironmentOrder[{i}].order is required")))?;
            let ce = environment(ctx, Some(text))?;
            out.push(json!({"order": order, "computeEnvironment": ce.name_any()}));
        }
        spec.insert("computeEnvironmentOrder".into(), out.into());
    }
    if let Some(actions) = &input.job_state_time_limit_actions {
        spec.insert("jobStateTimeLimitActions".into(), json!(actions));
    }
    Ok(spec)
}

fn queue_named(ctx: &Context, aws: &str) -> QueueNamed {
    QueueNamed { job_queue_arn: ctx.arns.of("job-queue", aws), job_queue_name: aws.to_string() }
}

fn queue(ctx: &Context, text: Option<&str>) -> ApiResult<std::sync::Arc<JobQueue>> {
    let text = text.ok_or_else(|| ApiError::client("jobQueue is required"))?;
    let aws = ctx.arns.name("job-queue", text);
    names::find(&ctx.stores.queues, aws)
        .ok_or_else(|| ApiError::client(format!("JobQueue {aws} does not exist")))
}

pub async fn create_queue(ctx: &Context, who: &Principal, input: QueueInput) -> ApiResult<QueueNamed> {
    admin_only(who, "CreateJobQueue")?;
    let aws = input.job_queue_name.clone().ok_or_else(|| ApiError::client("jobQueueName is required"))?;
    if !valid_aws_name(&aws) {
        return Err(ApiError::client(format!(
            "jobQueueName {aws:?} must be 1 to 128 letters, numbers, hyphens and underscores"
        )));
    }
    state(input.state.as_deref())?;
    if input.priority.is_none() {
        return Err(ApiError::client("priority is required"));
    }
    if input.compute_environment_order.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::client("At least 1 compute environment must be provided"));
    }
    let object = object_name(&aws);
    let mut spec = queue_spec(ctx, &input)?;
    // A queue made through the API admits the jobs of its maker's namespace; widen its
    // namespaceSelector with kubectl to share it.
    spec.insert(
        "namespaceSelector".into(),
        json!({"matchLabels": {"kubernetes.io/metadata.name": who.namespace}}),
    );
    let body = json!({
        "apiVersion": JobQueue::api_version(&()),
        "kind": JobQueue::kind(&()),
        "metadata": metadata(&object, &aws, &input.tags)?,
        "spec": spec,
    });
    let q: JobQueue = serde_json::from_value(body)
        .map_err(|e| ApiError::client(format!("job queue {aws} is invalid: {e}")))?;
    let api: Api<JobQueue> = Api::all(ctx.client.clone());
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let created = api.create(&pp, &q).await.map_err(|e| created_or(e, "Job queue", &aws))?;
    let key = kube::runtime::reflector::ObjectRef::from_obj(&created);
    ctx.stores.caught_up(|s| s.queues.get(&key).is_some()).await;
    Ok(queue_named(ctx, &aws))
}

pub async fn update_queue(ctx: &Context, who: &Principal, input: QueueInput) -> ApiResult<QueueNamed> {
    admin_only(who, "UpdateJobQueue")?;
    if !input.tags.is_empty() || input.job_queue_name.is_some() {
        return Err(ApiError::client(
            "UpdateJobQueue takes jobQueue, not jobQueueName or tags (use TagResource)",
        ));
    }
    let q = queue(ctx, input.job_queue.as_deref())?;
    let aws = names::aws_name(q.as_ref());
    let spec = queue_spec(ctx, &input)?;
    let api: Api<JobQueue> = Api::all(ctx.client.clone());
    let patched = api
        .patch(&q.name_any(), &params(), &Patch::Merge(&json!({"spec": spec})))
        .await
        .map_err(|e| ApiError::from_kube(e, &format!("job queue {aws}")))?;
    let (key, generation) =
        (kube::runtime::reflector::ObjectRef::from_obj(&patched), patched.meta().generation);
    ctx.stores.caught_up(|s| s.queues.get(&key).is_some_and(|q| q.meta().generation >= generation)).await;
    Ok(queue_named(ctx, &aws))
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeleteQueueInput {
    job_queue: Option<String>,
}

/// Deletes a DISABLED queue; as in AWS, its unfinished jobs are terminated.
pub async fn delete_queue(ctx: &Context, who: &Principal, input: DeleteQueueInput) -> ApiResult<Empty> {
    admin_only(who, "DeleteJobQueue")?;
    let q = queue(ctx, input.job_queue.as_deref())?;
    let (object, aws) = (q.name_any(), names::aws_name(q.as_ref()));
    if q.spec.state != State::Disabled {
        return Err(ApiError::client(format!(
            "Cannot delete job queue {aws}: it is ENABLED; disable it with UpdateJobQueue first"
        )));
    }
    let unfinished: Vec<std::sync::Arc<BatchJob>> = ctx
        .stores
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.spec.job_queue == object && !j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .collect();
    let others =
        unfinished.iter().filter(|j| j.namespace().as_deref() != Some(who.namespace.as_str())).count();
    if others > 0 {
        return Err(ApiError::client(format!(
            "Cannot delete job queue {aws}: {others} unfinished jobs of other namespaces are in it"
        )));
    }
    let jobs: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &who.namespace);
    let terminate = json!({"spec": {"terminate": {"reason": format!("Job queue {aws} was deleted")}}});
    let failures = stream::iter(unfinished)
        .map(|j| {
            let (jobs, terminate) = (&jobs, &terminate);
            async move { jobs.patch(&j.name_any(), &params(), &Patch::Merge(terminate)).await }
        })
        .buffer_unordered(16)
        .filter(|r| {
            std::future::ready(match r {
                Ok(_) => false,
                Err(kube::Error::Api(s)) => s.code != 404,
                Err(_) => true,
            })
        })
        .count()
        .await;
    if failures > 0 {
        return Err(ApiError::server(format!(
            "job queue {aws}: {failures} of its jobs could not be terminated; the queue is kept, retry"
        )));
    }
    let api: Api<JobQueue> = Api::all(ctx.client.clone());
    crate::k8s::delete_if_present(&api, &object)
        .await
        .map_err(|e| ApiError::from_kube(e, &format!("job queue {aws}")))?;
    Ok(Empty {})
}
