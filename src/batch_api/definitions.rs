//! RegisterJobDefinition, DescribeJobDefinitions, DeregisterJobDefinition: AWS job
//! definitions as JobDefinition objects, whose revisions Barge's controller numbers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::names::{aws_name, object_name, valid_aws_name};
use super::page::page;
use super::shapes::{
    self, KeyValuePair, ResourceRequirement, RetryStrategyShape, TimeoutShape, Unknown, refuse_unknown,
};
use super::{ANNOTATION_AWS_NAME, ApiError, ApiResult, Context, FIELD_MANAGER, Principal};
use crate::api::JobDefinition;
use crate::api::batch_job::{ContainerSpec, NodeProperties, NodeRangeProperty, Resources};
use crate::api::container::ContainerExtra;
use crate::api::job_definition::{DefinitionState, JobDefinitionSpec, NodeLayout, NodeRun};
use k8s_openapi::api::core::v1::PodTemplateSpec;

/// How long RegisterJobDefinition waits for Barge's controller to number the new revision.
const REGISTRATION_WAIT: Duration = Duration::from_secs(15);

/// The container fields RegisterJobDefinition reads itself; every other field it serves is
/// one of `ContainerExtra`'s, with AWS's name and shape.
pub const SERVED_CONTAINER_FIELDS: &[&str] =
    &["image", "vcpus", "memory", "command", "environment", "resourceRequirements", "privileged"];

/// Fields of AWS's container properties that only Fargate or ECS Exec read: accepted (AWS
/// accepts them on EC2 too), not kept, and listed in the README's mapping table.
pub const IGNORED_CONTAINER_FIELDS: &[&str] =
    &["fargatePlatformConfiguration", "networkConfiguration", "runtimePlatform", "enableExecuteCommand"];

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProperties {
    pub image: Option<String>,
    pub vcpus: Option<f64>,
    pub memory: Option<u64>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub environment: Vec<KeyValuePair>,
    #[serde(default)]
    pub resource_requirements: Vec<ResourceRequirement>,
    pub privileged: Option<bool>,
    /// Volumes, mount points, Linux parameters, user, secrets, roles, logging: the same
    /// names and shapes in AWS's model and in Barge's container.
    #[serde(flatten)]
    pub extra: ContainerExtra,
    #[serde(flatten)]
    pub other: Unknown,
}

/// `nodeProperties` of a `multinode` definition.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodePropertiesIn {
    num_nodes: Option<u32>,
    main_node: Option<u32>,
    #[serde(default)]
    node_range_properties: Vec<NodeRangeIn>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeRangeIn {
    target_nodes: Option<String>,
    container: Option<ContainerProperties>,
    /// AWS Batch on EKS's range: `{"podProperties": ...}`.
    eks_properties: Option<EksPropertiesIn>,
    #[serde(flatten)]
    other: Unknown,
}

/// `ecsProperties` of a definition: one task of several containers.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EcsPropertiesIn {
    #[serde(default)]
    task_properties: Vec<EcsTaskIn>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EcsTaskIn {
    #[serde(default)]
    containers: Vec<TaskContainerIn>,
    #[serde(default)]
    volumes: Vec<crate::api::container::Volume>,
    task_role_arn: Option<String>,
    execution_role_arn: Option<String>,
    ipc_mode: Option<String>,
    pid_mode: Option<String>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskContainerIn {
    name: Option<String>,
    essential: Option<bool>,
    #[serde(default)]
    depends_on: Vec<crate::api::task::TaskDependency>,
    /// Seconds the container gets between SIGTERM and SIGKILL: the pod's grace period (the
    /// longest of its containers').
    stop_timeout: Option<i64>,
    /// Accepted, not applied: a pod waits for what a container depends on for as long as
    /// it takes.
    start_timeout: Option<i64>,
    #[serde(flatten)]
    props: ContainerProperties,
}

/// The members of `TaskContainerProperties` RegisterJobDefinition reads beside AWS's
/// container fields, for the test that walks AWS's model.
pub const SERVED_TASK_CONTAINER_FIELDS: &[&str] =
    &["name", "essential", "dependsOn", "stopTimeout", "startTimeout"];
/// The members of `EcsTaskProperties` RegisterJobDefinition reads.
pub const SERVED_TASK_FIELDS: &[&str] =
    &["containers", "volumes", "taskRoleArn", "executionRoleArn", "ipcMode", "pidMode"];

/// Members of `EcsTaskProperties` only Fargate or ECS Exec read: accepted, not kept.
pub const IGNORED_TASK_FIELDS: &[&str] = &[
    "platformVersion",
    "networkConfiguration",
    "runtimePlatform",
    "ephemeralStorage",
    "enableExecuteCommand",
    "networkMode",
];

/// Container fields a task gives once for all its containers, not per container.
const TASK_LEVEL_FIELDS: &[(&str, &str)] = &[
    ("volumes", "volumes"),
    ("jobRoleArn", "taskRoleArn"),
    ("executionRoleArn", "executionRoleArn"),
    ("instanceType", "no field: a task runs on any instance of its environment"),
    ("ephemeralStorage", "ephemeralStorage (Fargate only)"),
];

/// `eksProperties` of a definition: a pod in Kubernetes' words (see `eks`).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct EksPropertiesIn {
    pod_properties: Option<serde_json::Value>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegisterInput {
    job_definition_name: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    scheduling_priority: Option<i32>,
    container_properties: Option<ContainerProperties>,
    node_properties: Option<NodePropertiesIn>,
    eks_properties: Option<EksPropertiesIn>,
    ecs_properties: Option<EcsPropertiesIn>,
    retry_strategy: Option<RetryStrategyShape>,
    propagate_tags: Option<bool>,
    timeout: Option<TimeoutShape>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    platform_capabilities: Vec<String>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RegisterOutput {
    job_definition_name: String,
    job_definition_arn: String,
    revision: u32,
}

/// A definition and revision as a request names them: `NAME`, `NAME:REVISION`, or an ARN.
pub struct Found {
    pub object: Arc<JobDefinition>,
    pub revision: Option<u32>,
}

pub fn find(ctx: &Context, ns: &str, text: &str) -> ApiResult<Found> {
    let named = ctx.arns.name("job-definition", text);
    let (name, revision) = match named.rsplit_once(':') {
        Some((n, r)) => match r.parse::<u32>() {
            Ok(r) if r >= 1 => (n, Some(r)),
            _ => {
                return Err(ApiError::client(format!(
                    "jobDefinition {text:?} is not NAME, NAME:REVISION or an ARN"
                )));
            }
        },
        None => (named, None),
    };
    let object = ctx
        .stores
        .definitions
        .definitions
        .get(&ObjectRef::new(&object_name(name)).within(ns))
        .filter(|jd| aws_name(jd.as_ref()) == name)
        .ok_or_else(|| {
            ApiError::client(format!("Job definition {name} does not exist (in namespace {ns})"))
        })?;
    if let Some(r) = revision
        && !ctx.stores.definitions.numbers(ns, &object.name_any()).contains(&r)
    {
        return Err(ApiError::client(format!(
            "Job definition {name}:{r} does not exist: revision {r} was never registered"
        )));
    }
    Ok(Found { object, revision })
}

pub async fn register(ctx: &Context, who: &Principal, input: RegisterInput) -> ApiResult<RegisterOutput> {
    refuse_unknown(&input.other, "")?;
    let name =
        input.job_definition_name.clone().ok_or_else(|| ApiError::client("jobDefinitionName is required"))?;
    if !valid_aws_name(&name) {
        return Err(ApiError::client(format!(
            "jobDefinitionName {name:?} must be 1 to 128 letters, numbers, hyphens and underscores"
        )));
    }
    let spec = definition_spec(&input, &who.namespace)?;
    let object = object_name(&name);
    let ns = &who.namespace;
    check_roles(ctx, ns, &spec)?;
    let api: Api<JobDefinition> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": JobDefinition::api_version(&()),
        "kind": JobDefinition::kind(&()),
        "metadata": {"name": object, "annotations": {ANNOTATION_AWS_NAME: name}},
        "spec": spec,
    });
    let applied = api
        .patch(&object, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|e| ApiError::from_kube(e, &format!("job definition {name}")))?;
    let generation = applied.metadata.generation.unwrap_or(0);
    let revision = registered_revision(ctx, ns, &object, generation).await.ok_or_else(|| {
        ApiError::server(format!(
            "job definition {name} is saved, but Barge's controller has not numbered its revision within {} s; \
             is the operator running? Describe the definition to see its revision",
            REGISTRATION_WAIT.as_secs()
        ))
    })?;
    Ok(RegisterOutput {
        job_definition_arn: ctx.arns.of("job-definition", &format!("{name}:{revision}")),
        job_definition_name: name,
        revision,
    })
}

/// The revision the controller registered for `generation` of the definition, once the
/// store shows it.
async fn registered_revision(ctx: &Context, ns: &str, name: &str, generation: i64) -> Option<u32> {
    let key = ObjectRef::new(name).within(ns);
    let deadline = tokio::time::Instant::now() + REGISTRATION_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(jd) = ctx.stores.definitions.definitions.get(&key)
            && let Some(s) = &jd.status
            && s.observed_generation.unwrap_or(0) >= generation
            && s.revision >= 1
            && ctx.stores.definitions.numbers(ns, name).contains(&s.revision)
        {
            return Some(s.revision);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn definition_spec(input: &RegisterInput, ns: &str) -> ApiResult<JobDefinitionSpec> {
    super::tags::validate(&input.tags)?;
    let multinode = match input.type_.as_deref() {
        Some("container") => false,
        Some("multinode") => true,
        Some(other) => {
            return Err(ApiError::client(format!("type must be container or multinode, not {other:?}")));
        }
        None => return Err(ApiError::client("type is required (container or multinode)")),
    };
    if let Some(p) = input.platform_capabilities.iter().find(|p| *p != "EC2") {
        return Err(ApiError::client(format!(
            "platformCapabilities {p} is not supported: Barge runs jobs as EC2 does"
        )));
    }
    let mut pod_template = None;
    let mut task = None;
    let dialects = [
        input.container_properties.is_some(),
        input.eks_properties.is_some(),
        input.ecs_properties.is_some(),
    ];
    if dialects.into_iter().filter(|d| *d).count() > 1 || (multinode && dialects.into_iter().any(|d| d)) {
        return Err(ApiError::client(
            "give one of containerProperties, eksProperties, ecsProperties or (type multinode) nodeProperties",
        ));
    }
    let (container, node_properties) = if let Some(ecs) = &input.ecs_properties {
        task = Some(Box::new(task_spec(ecs)?));
        (None, None)
    } else if let Some(eks) = &input.eks_properties {
        refuse_unknown(&eks.other, "eksProperties.")?;
        if multinode || input.container_properties.is_some() {
            return Err(ApiError::client(
                "eksProperties is a container job definition's whole pod: give no containerProperties or nodeProperties beside it",
            ));
        }
        let pod = eks
            .pod_properties
            .as_ref()
            .ok_or_else(|| ApiError::client("eksProperties.podProperties is required"))?;
        pod_template = Some(Box::new(super::eks::pod_template(pod, ns, "eksProperties.podProperties.")?));
        (None, None)
    } else if multinode {
        if input.container_properties.is_some() {
            return Err(ApiError::client(
                "a multinode job definition takes nodeProperties, not containerProperties",
            ));
        }
        let nodes = input
            .node_properties
            .as_ref()
            .ok_or_else(|| ApiError::client("nodeProperties is required for a multinode job definition"))?;
        (None, Some(Box::new(node_properties(nodes, ns)?)))
    } else {
        if input.node_properties.is_some() {
            return Err(ApiError::client("nodeProperties needs type multinode"));
        }
        let props = input.container_properties.as_ref().ok_or_else(|| {
            ApiError::client(
                "containerProperties or eksProperties must be provided (or ecsProperties) for a container job definition",
            )
        })?;
        (Some(Box::new(container_spec(props, "containerProperties.")?)), None)
    };
    Ok(JobDefinitionSpec {
        state: DefinitionState::Active,
        container,
        pod_template,
        node_properties,
        task,
        parameters: input.parameters.clone(),
        retry_strategy: input.retry_strategy.as_ref().map(|r| r.to_barge()).transpose()?,
        timeout: input.timeout.as_ref().map(|t| t.to_barge()).transpose()?.flatten(),
        tags: input.tags.clone(),
        propagate_tags: input.propagate_tags.unwrap_or(false),
        scheduling_priority: input.scheduling_priority,
    })
}

/// `ecsProperties`: its one task, each container checked as a definition's container is.
fn task_spec(ecs: &EcsPropertiesIn) -> ApiResult<crate::api::task::TaskSpec> {
    refuse_unknown(&ecs.other, "ecsProperties.")?;
    let [t] = ecs.task_properties.as_slice() else {
        return Err(ApiError::client("ecsProperties.taskProperties holds exactly one task, as on AWS"));
    };
    let at = "ecsProperties.taskProperties[0].";
    let unknown: Unknown = t
        .other
        .iter()
        .filter(|(k, _)| !IGNORED_TASK_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    refuse_unknown(&unknown, at)?;
    if t.containers.is_empty() || t.containers.len() > 10 {
        return Err(ApiError::client(format!(
            "{at}containers holds 1 to 10 containers, not {}",
            t.containers.len()
        )));
    }
    let mut containers = Vec::new();
    for (i, c) in t.containers.iter().enumerate() {
        let cat = format!("{at}containers[{i}].");
        let name = c.name.clone().ok_or_else(|| ApiError::client(format!("{cat}name is required")))?;
        let extra = serde_json::to_value(&c.props.extra).unwrap_or_default();
        if let Some((field, instead)) = TASK_LEVEL_FIELDS.iter().find(|(f, _)| extra.get(*f).is_some()) {
            return Err(ApiError::client(format!(
                "{cat}{field} is the task's in ecsProperties: use {instead}"
            )));
        }
        if c.start_timeout.is_some_and(|t| t < 2) {
            return Err(ApiError::client(format!("{cat}startTimeout is at least 2 seconds")));
        }
        if c.stop_timeout.is_some_and(|t| !(0..=120).contains(&t)) {
            return Err(ApiError::client(format!("{cat}stopTimeout is 0 to 120 seconds")));
        }
        // Checked with the task's volumes in view (its mount points name them), kept without.
        let mut props = c.props.clone();
        props.extra.volumes = t.volumes.clone();
        let mut container = container_spec(&props, &cat)?;
        if let Some(x) = container.extra.as_deref_mut() {
            x.volumes.clear();
        }
        if container.extra.as_deref().is_some_and(|x| *x == ContainerExtra::default()) {
            container.extra = None;
        }
        containers.push(crate::api::task::TaskContainer {
            name,
            essential: c.essential,
            depends_on: c.depends_on.clone(),
            stop_timeout: c.stop_timeout,
            container,
        });
    }
    for (i, v) in t.volumes.iter().enumerate() {
        let probe = ContainerSpec {
            image: "-".into(),
            extra: Some(Box::new(ContainerExtra { volumes: vec![v.clone()], ..Default::default() })),
            ..Default::default()
        };
        crate::api::container::check(&probe, &format!("{at}volumes[{i}].")).map_err(ApiError::client)?;
    }
    let task = crate::api::task::TaskSpec {
        containers,
        volumes: t.volumes.clone(),
        task_role_arn: t.task_role_arn.clone(),
        execution_role_arn: t.execution_role_arn.clone(),
        ipc_mode: t.ipc_mode.clone(),
        pid_mode: t.pid_mode.clone(),
    };
    if task.ipc_mode.as_deref().is_some_and(|m| m != "task" && m != "none") {
        return Err(ApiError::client(format!(
            "{at}ipcMode host would share the node's IPC namespace; Barge runs task (a pod's containers share IPC) or none"
        )));
    }
    if task.pid_mode.as_deref().is_some_and(|m| m != "task") {
        return Err(ApiError::client(format!(
            "{at}pidMode host would share the node's processes; Barge runs pidMode task or none"
        )));
    }
    crate::api::task::layout(&task).map_err(|e| ApiError::client(format!("{at}{e}")))?;
    Ok(task)
}

/// A `multinode` definition's nodes, checked as the API server's rules check them.
fn node_properties(n: &NodePropertiesIn, ns: &str) -> ApiResult<NodeProperties> {
    refuse_unknown(&n.other, "nodeProperties.")?;
    let num_nodes = n.num_nodes.ok_or_else(|| ApiError::client("nodeProperties.numNodes is required"))?;
    if !(1..=1000).contains(&num_nodes) {
        return Err(ApiError::client(format!(
            "nodeProperties.numNodes must be between 1 and 1000, not {num_nodes}"
        )));
    }
    let mut ranges = Vec::new();
    for (i, r) in n.node_range_properties.iter().enumerate() {
        let at = format!("nodeProperties.nodeRangeProperties[{i}].");
        refuse_unknown(&r.other, &at)?;
        let target_nodes =
            r.target_nodes.clone().ok_or_else(|| ApiError::client(format!("{at}targetNodes is required")))?;
        let (container, pod_template) = match (&r.container, &r.eks_properties) {
            (Some(c), None) => (Some(container_spec(c, &format!("{at}container."))?), None),
            (None, Some(eks)) => {
                refuse_unknown(&eks.other, &format!("{at}eksProperties."))?;
                let pod = eks.pod_properties.as_ref().ok_or_else(|| {
                    ApiError::client(format!("{at}eksProperties.podProperties is required"))
                })?;
                let template =
                    super::eks::pod_template(pod, ns, &format!("{at}eksProperties.podProperties."))?;
                (None, Some(Box::new(template)))
            }
            _ => return Err(ApiError::client(format!("{at}give one of container or eksProperties"))),
        };
        ranges.push(NodeRangeProperty { target_nodes, container, pod_template });
    }
    let props =
        NodeProperties { num_nodes, main_node: n.main_node.unwrap_or(0), node_range_properties: ranges };
    if props.node_range_properties.is_empty() {
        return Err(ApiError::client("nodeProperties.nodeRangeProperties needs at least one range"));
    }
    NodeLayout::of(&props, None).map_err(|e| ApiError::client(format!("nodeProperties: {e}")))?;
    Ok(props)
}

/// A container of the AWS shape (`containerProperties`, a node range's `container`).
fn container_spec(props: &ContainerProperties, at: &str) -> ApiResult<ContainerSpec> {
    let unknown: Unknown = props
        .other
        .iter()
        .filter(|(k, _)| !IGNORED_CONTAINER_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    refuse_unknown(&unknown, at)?;
    let image = props
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::client(format!("{at}image is required")))?;
    let asked = shapes::asked(&props.resource_requirements, props.vcpus, props.memory, at)?;
    let defaults = Resources::default();
    let container = ContainerSpec {
        image,
        command: props.command.clone(),
        args: Vec::new(),
        env: shapes::environment(&props.environment, at)?,
        resources: Resources {
            vcpus: asked.vcpus.unwrap_or(defaults.vcpus),
            memory: asked.memory.unwrap_or(defaults.memory),
            gpus: asked.gpus.unwrap_or(0),
        },
        privileged: props.privileged.unwrap_or(false),
        extra: (props.extra != ContainerExtra::default()).then(|| Box::new(props.extra.clone())),
    };
    crate::api::container::check(&container, at).map_err(ApiError::client)?;
    Ok(container)
}

/// Refuses a definition whose `jobRoleArn` no ServiceAccount of the caller's namespace is
/// bound to: Barge never makes such an account, so a key cannot assume a role nobody gave
/// its namespace.
fn check_roles(ctx: &Context, ns: &str, spec: &JobDefinitionSpec) -> ApiResult<()> {
    let containers = spec.container.as_deref().into_iter().chain(
        spec.node_properties
            .iter()
            .flat_map(|n| n.node_range_properties.iter().filter_map(|r| r.container.as_ref())),
    );
    for role in containers.filter_map(|c| c.extra.as_deref()?.job_role_arn.as_deref()) {
        let accounts = ctx.stores.service_accounts.state();
        if crate::api::container::role_account(accounts.iter().map(|a| &a.metadata), ns, role).is_none() {
            return Err(ApiError::client(crate::controller::container::missing_role_account(role, ns)));
        }
    }
    Ok(())
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct DescribeInput {
    #[serde(default)]
    job_definitions: Vec<String>,
    job_definition_name: Option<String>,
    status: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDetailOut {
    pub image: String,
    pub command: Vec<String>,
    pub environment: Vec<KeyValuePair>,
    pub resource_requirements: Vec<ResourceRequirement>,
    pub vcpus: f64,
    pub memory: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_stream_name: Option<String>,
    #[serde(flatten)]
    pub extra: ContainerExtra,
}

impl ContainerDetailOut {
    pub fn of(c: &ContainerSpec) -> Self {
        ContainerDetailOut {
            image: c.image.clone(),
            command: c.command.iter().chain(&c.args).cloned().collect(),
            environment: shapes::key_values(&c.env),
            resource_requirements: shapes::requirements(&c.resources),
            vcpus: c.resources.vcpus,
            memory: shapes::memory_mib(&c.resources.memory),
            privileged: c.privileged,
            extra: c.extra().clone(),
            ..Default::default()
        }
    }

    /// The first container of a pod template, as far as AWS's shape can tell it.
    pub fn of_template(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Self {
        let Some(c) = t.spec.as_ref().and_then(|s| s.containers.first()) else { return Self::default() };
        let work = crate::api::job_definition::Work {
            container: None,
            pod_template: Some(std::borrow::Cow::Borrowed(t)),
            task: None,
            retry_strategy: std::borrow::Cow::Owned(Default::default()),
            timeout: None,
            scheduling_priority: 0,
            tags: BTreeMap::new(),
            nodes: None,
        };
        let res = crate::controller::pod::job_request(&work).unwrap_or(crate::resources::Res::ZERO);
        ContainerDetailOut {
            image: c.image.clone().unwrap_or_default(),
            command: c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect(),
            environment: c
                .env
                .iter()
                .flatten()
                .map(|e| KeyValuePair { name: e.name.clone(), value: e.value.clone().unwrap_or_default() })
                .collect(),
            resource_requirements: Vec::new(),
            vcpus: res.millicpu as f64 / 1000.0,
            memory: res.memory_mib,
            ..Default::default()
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionOut {
    job_definition_name: String,
    job_definition_arn: String,
    revision: u32,
    status: &'static str,
    #[serde(rename = "type")]
    type_: &'static str,
    parameters: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_properties: Option<ContainerDetailOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_properties: Option<NodePropertiesOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eks_properties: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ecs_properties: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_strategy: Option<RetryStrategyShape>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<TimeoutShape>,
    tags: BTreeMap<String, String>,
    propagate_tags: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduling_priority: Option<i32>,
    platform_capabilities: Vec<&'static str>,
}

/// `nodeProperties` as AWS answers them.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NodePropertiesOut {
    num_nodes: u32,
    main_node: u32,
    node_range_properties: Vec<NodeRangeOut>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NodeRangeOut {
    target_nodes: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerDetailOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eks_properties: Option<serde_json::Value>,
}

impl NodeRangeOut {
    fn of(target_nodes: String, container: Option<&ContainerSpec>, pod: Option<&PodTemplateSpec>) -> Self {
        NodeRangeOut {
            target_nodes,
            container: container.map(ContainerDetailOut::of),
            eks_properties: pod.map(|t| serde_json::json!({"podProperties": super::eks::pod_properties(t)})),
        }
    }
}

impl NodePropertiesOut {
    pub fn of(n: &NodeProperties) -> Self {
        NodePropertiesOut {
            num_nodes: n.num_nodes,
            main_node: n.main_node,
            node_range_properties: n
                .node_range_properties
                .iter()
                .map(|r| {
                    NodeRangeOut::of(r.target_nodes.clone(), r.container.as_ref(), r.pod_template.as_deref())
                })
                .collect(),
        }
    }

    /// A job's nodes as it runs them, overrides applied.
    pub fn of_layout(l: &NodeLayout) -> Self {
        NodePropertiesOut {
            num_nodes: l.num_nodes,
            main_node: l.main_node,
            node_range_properties: l
                .ranges
                .iter()
                .map(|(a, b, run)| {
                    let target = if a == b { a.to_string() } else { format!("{a}:{b}") };
                    let pod = match run {
                        NodeRun::Pod(t) => Some(&**t),
                        NodeRun::Container(_) => None,
                    };
                    NodeRangeOut::of(target, run.container(), pod)
                })
                .collect(),
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DescribeOutput {
    job_definitions: Vec<DefinitionOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

pub fn container_out(spec: &JobDefinitionSpec) -> ContainerDetailOut {
    match (&spec.container, &spec.pod_template) {
        (Some(c), _) => ContainerDetailOut::of(c),
        (None, Some(t)) => ContainerDetailOut::of_template(t),
        (None, None) => ContainerDetailOut::default(),
    }
}

/// A task as `ecsProperties`: its containers with AWS's container fields.
pub fn task_out(t: &crate::api::task::TaskSpec) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = t
        .containers
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(ContainerDetailOut::of(&c.container)).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("name".into(), c.name.clone().into());
                o.insert("essential".into(), c.is_essential().into());
                if !c.depends_on.is_empty() {
                    o.insert("dependsOn".into(), serde_json::to_value(&c.depends_on).unwrap_or_default());
                }
                if let Some(t) = c.stop_timeout {
                    o.insert("stopTimeout".into(), t.into());
                }
            }
            v
        })
        .collect();
    let mut task = serde_json::json!({"containers": containers});
    let fields = [
        ("taskRoleArn", t.task_role_arn.as_deref()),
        ("executionRoleArn", t.execution_role_arn.as_deref()),
        ("ipcMode", t.ipc_mode.as_deref()),
        ("pidMode", t.pid_mode.as_deref()),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            task[k] = v.into();
        }
    }
    if !t.volumes.is_empty() {
        task["volumes"] = serde_json::to_value(&t.volumes).unwrap_or_default();
    }
    serde_json::json!({"taskProperties": [task]})
}

/// Deregistered (or being deleted): no new job may use it.
pub fn is_inactive(jd: &JobDefinition) -> bool {
    jd.spec.state == DefinitionState::Inactive
        || jd.meta().deletion_timestamp.is_some()
        || jd.status.as_ref().and_then(|s| s.status) == Some(DefinitionState::Inactive)
}

fn revision_out(ctx: &Context, jd: &JobDefinition, revision: u32, spec: &JobDefinitionSpec) -> DefinitionOut {
    let name = aws_name(jd);
    let state = if is_inactive(jd) { DefinitionState::Inactive } else { DefinitionState::Active };
    DefinitionOut {
        job_definition_arn: ctx.arns.of("job-definition", &format!("{name}:{revision}")),
        job_definition_name: name,
        revision,
        status: state.as_str(),
        type_: if spec.node_properties.is_some() { "multinode" } else { "container" },
        parameters: spec.parameters.clone(),
        // A pod template is described as AWS describes an EKS definition: eksProperties only.
        container_properties: spec.container.as_deref().map(ContainerDetailOut::of),
        ecs_properties: spec.task.as_deref().map(task_out),
        node_properties: spec.node_properties.as_deref().map(NodePropertiesOut::of),
        eks_properties: spec
            .pod_template
            .as_deref()
            .map(|t| serde_json::json!({"podProperties": super::eks::pod_properties(t)})),
        retry_strategy: spec.retry_strategy.as_ref().map(RetryStrategyShape::of),
        timeout: spec
            .timeout
            .as_ref()
            .map(|t| TimeoutShape { attempt_duration_seconds: Some(t.attempt_duration_seconds) }),
        tags: spec.tags.clone(),
        propagate_tags: spec.propagate_tags,
        scheduling_priority: spec.scheduling_priority,
        platform_capabilities: vec!["EC2"],
    }
}

pub fn describe(ctx: &Context, who: &Principal, input: DescribeInput) -> ApiResult<DescribeOutput> {
    let ns = &who.namespace;
    let defs = &ctx.stores.definitions;
    if input.job_definitions.len() > 100 {
        return Err(ApiError::client(format!(
            "jobDefinitions holds {} entries; at most 100",
            input.job_definitions.len()
        )));
    }
    // Which (definition, revision) pairs were asked for; None means every revision.
    let mut wanted: Vec<(Arc<JobDefinition>, Option<u32>)> = Vec::new();
    if input.job_definitions.is_empty() {
        for jd in defs.definitions.state() {
            if jd.namespace().as_deref() == Some(ns.as_str())
                && input.job_definition_name.as_ref().is_none_or(|n| *n == aws_name(jd.as_ref()))
            {
                wanted.push((jd, None));
            }
        }
    } else {
        for text in &input.job_definitions {
            // AWS answers an unknown definition with nothing rather than an error.
            if let Ok(f) = find(ctx, ns, text) {
                wanted.push((f.object, f.revision));
            }
        }
    }
    let status = input.status.as_deref();
    if let Some(s) = status
        && s != "ACTIVE"
        && s != "INACTIVE"
    {
        return Err(ApiError::client(format!("status must be ACTIVE or INACTIVE, not {s:?}")));
    }
    let mut items = Vec::new();
    for (jd, only) in wanted {
        let object = jd.name_any();
        let revisions = match only {
            Some(r) => vec![r],
            None => defs.numbers(ns, &object),
        };
        for r in revisions {
            let Some(spec) = defs.get(ns, &object, r) else { continue };
            let out = revision_out(ctx, &jd, r, &spec);
            if status.is_none_or(|s| s == out.status) {
                items.push((format!("{}:{r:010}", out.job_definition_name), out));
            }
        }
    }
    let (job_definitions, next_token) = page(items, input.max_results, input.next_token.as_deref())?;
    Ok(DescribeOutput { job_definitions, next_token })
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeregisterInput {
    job_definition: Option<String>,
}

#[derive(Serialize, Debug, Default)]
pub struct Empty {}

pub async fn deregister(ctx: &Context, who: &Principal, input: DeregisterInput) -> ApiResult<Empty> {
    let text = input.job_definition.ok_or_else(|| ApiError::client("jobDefinition is required"))?;
    let ns = &who.namespace;
    let found = find(ctx, ns, &text)?;
    let object = found.object.name_any();
    let latest = ctx.stores.definitions.numbers(ns, &object).last().copied().unwrap_or(0);
    if let Some(r) = found.revision
        && r != latest
    {
        return Err(ApiError::client(format!(
            "{text}: Barge deregisters a definition's latest revision ({latest}), which makes the whole definition INACTIVE; \
             revision {r} cannot be deregistered on its own"
        )));
    }
    let patch = serde_json::json!({"spec": {"state": "INACTIVE"}});
    let api: Api<JobDefinition> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patched = api
        .patch(&object, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| ApiError::from_kube(e, &format!("job definition {text}")))?;
    let (key, generation) = (ObjectRef::from_obj(&patched), patched.metadata.generation);
    ctx.stores
        .caught_up(|s| {
            s.definitions.definitions.get(&key).is_some_and(|d| d.metadata.generation >= generation)
        })
        .await;
    Ok(Empty {})
}
