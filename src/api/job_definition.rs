//! JobDefinition: what a job runs, registered once and submitted against many times, with
//! revisions numbered as AWS Batch numbers them. Also the pure resolution of a BatchJob
//! against a definition: AWS precedence (the job's value wins), `Ref::` parameters, tags.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;
use super::batch_job::{
    BatchJobSpec, ContainerOverrides, ContainerSpec, NodeOverrides, NodeProperties, NodePropertyOverride,
    RetryStrategy, Timeout,
};
use super::task::TaskSpec;

/// ACTIVE or INACTIVE, as AWS Batch says of job definitions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DefinitionState {
    #[default]
    Active,
    /// Deregistered: no new job may use any of its revisions; submitted jobs keep theirs.
    Inactive,
}

impl DefinitionState {
    pub fn as_str(self) -> &'static str {
        match self {
            DefinitionState::Active => "ACTIVE",
            DefinitionState::Inactive => "INACTIVE",
        }
    }
}

/// A job definition. Every change of its spec (other than `state`) registers a new revision.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "barge.dev",
    version = "v1alpha1",
    kind = "JobDefinition",
    namespaced,
    shortname = "jd",
    category = "barge",
    status = "JobDefinitionStatus",
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.status"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.container.image"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("[has(self.container), has(self.podTemplate), has(self.nodeProperties), has(self.task)].filter(x, x).size() == 1").message("set exactly one of container, podTemplate, nodeProperties or task"))]
#[x_kube(validation = Rule::new(crate::mounts_name_volumes_rule!("self.container")).message("every container.mountPoints[].sourceVolume must name one of container.volumes[].name"))]
#[serde(rename_all = "camelCase")]
pub struct JobDefinitionSpec {
    /// INACTIVE deregisters the definition (all its revisions) for new jobs.
    #[serde(default)]
    pub state: DefinitionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// A full pod template, for what `container` cannot say. Its first container is the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::batch_job::pod_template_schema")]
    pub pod_template: Option<Box<PodTemplateSpec>>,
    /// A multi-node parallel job definition (AWS's `type: multinode`): its nodes and each
    /// range's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_properties: Option<Box<NodeProperties>>,
    /// Several containers in one pod (AWS's `ecsProperties.taskProperties`): essential
    /// ones, and the sidecars and init containers they depend on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Box<TaskSpec>>,
    /// Defaults for the `Ref::name` placeholders of the command and args.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Tags of jobs using the definition, when `propagateTags` (see BatchJob `tags`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 128 && size(self[k]) <= 256)").message("a tag key is at most 128 characters and a value at most 256"))]
    pub tags: BTreeMap<String, String>,
    /// Whether the definition's tags go on the pods of its jobs too.
    #[serde(default)]
    pub propagate_tags: bool,
    /// Within a queue, higher runs first; a job's own `schedulingPriority` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_priority: Option<i32>,
}

impl JobDefinitionSpec {
    /// What a revision holds: the spec without `state`, which changes no revision.
    pub fn revision_content(&self) -> JobDefinitionSpec {
        JobDefinitionSpec { state: DefinitionState::Active, ..self.clone() }
    }

    /// The image of the job's container, for listings.
    pub fn image(&self) -> Option<&str> {
        if let Some(t) = &self.task {
            return t.containers.iter().find(|c| c.is_essential()).map(|c| c.container.image.as_str());
        }
        match (&self.container, &self.pod_template, &self.node_properties) {
            (Some(c), _, _) => Some(c.image.as_str()),
            (None, Some(t), _) => t.spec.as_ref()?.containers.first()?.image.as_deref(),
            (None, None, Some(n)) => {
                let main = n.node_range_properties.iter().find(|r| {
                    parse_range(&r.target_nodes, n.num_nodes)
                        .is_ok_and(|(a, b)| (a..=b).contains(&n.main_node))
                });
                let r = main.or(n.node_range_properties.first())?;
                match (&r.container, &r.pod_template) {
                    (Some(c), _) => Some(c.image.as_str()),
                    (None, Some(t)) => t.spec.as_ref()?.containers.first()?.image.as_deref(),
                    (None, None) => None,
                }
            }
            _ => None,
        }
    }
}

/// One registered revision, as status lists it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    pub revision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDefinitionStatus {
    /// The latest revision: what `name` alone means to a job submitted now.
    #[serde(default)]
    pub revision: u32,
    /// ACTIVE, or INACTIVE once deregistered (or being deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DefinitionState>,
    /// Every revision, oldest first. Each is kept, unchanged, in a ControllerRevision named
    /// `NAME-REVISION` owned by the definition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A job's `jobDefinition`: `name` (the latest ACTIVE revision at submission) or
/// `name:revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionRef<'a> {
    pub name: &'a str,
    pub revision: Option<u32>,
}

impl<'a> DefinitionRef<'a> {
    pub fn parse(s: &'a str) -> Result<Self, String> {
        match s.rsplit_once(':') {
            None => Ok(DefinitionRef { name: s, revision: None }),
            Some((name, rev)) => match rev.parse::<u32>() {
                Ok(r) if r >= 1 && !name.is_empty() => Ok(DefinitionRef { name, revision: Some(r) }),
                _ => Err(format!("jobDefinition {s:?} is not NAME or NAME:REVISION (a revision from 1)")),
            },
        }
    }
}

/// The ControllerRevision that holds revision `revision` of definition `name`.
pub fn revision_object_name(name: &str, revision: u32) -> String {
    format!("{name}-{revision}")
}

/// What a job runs once its definition (if any) is applied: the job's own values where it
/// gives them, the definition's otherwise. Borrowed where nothing had to change.
#[derive(Clone, Debug, PartialEq)]
pub struct Work<'a> {
    pub container: Option<Cow<'a, ContainerSpec>>,
    pub pod_template: Option<Cow<'a, PodTemplateSpec>>,
    /// A task's containers (see `task`), overrides applied.
    pub task: Option<Cow<'a, TaskSpec>>,
    pub retry_strategy: Cow<'a, RetryStrategy>,
    pub timeout: Option<&'a Timeout>,
    pub scheduling_priority: i32,
    /// Tags to label the job's pods with (the definition's only when propagated).
    pub tags: BTreeMap<&'a str, &'a str>,
    /// For a multi-node parallel job: its nodes; `container` and `pod_template` are then
    /// `None`, and each node runs its range's container (see `for_node`).
    pub nodes: Option<NodeLayout>,
}

/// A multi-node job's nodes as it runs them, overrides applied.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLayout {
    pub num_nodes: u32,
    pub main_node: u32,
    /// Consecutive ranges `(first, last, what they run)` that cover nodes 0 to `num_nodes - 1`.
    pub ranges: Vec<(u32, u32, NodeRun)>,
}

/// What the nodes of one range run: a container, or a whole pod (AWS Batch on EKS's ranges).
#[derive(Clone, Debug, PartialEq)]
pub enum NodeRun {
    Container(ContainerSpec),
    Pod(Box<PodTemplateSpec>),
}

impl NodeRun {
    pub fn container(&self) -> Option<&ContainerSpec> {
        match self {
            NodeRun::Container(c) => Some(c),
            NodeRun::Pod(_) => None,
        }
    }

    /// The variable names its containers set.
    fn env_names(&self) -> Vec<&str> {
        match self {
            NodeRun::Container(c) => c.env.iter().map(|e| e.name.as_str()).collect(),
            NodeRun::Pod(t) => template_env_names(t),
        }
    }
}

/// The variable names a pod template's containers set.
fn template_env_names(t: &PodTemplateSpec) -> Vec<&str> {
    t.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .map(|e| e.name.as_str())
        .collect()
}

impl NodeLayout {
    /// From `nodeProperties`, with `num_nodes` instead of its own when given; checks what
    /// the API server's rules check, since an override can change it.
    pub fn of(props: &NodeProperties, num_nodes: Option<u32>) -> Result<NodeLayout, String> {
        let n = num_nodes.unwrap_or(props.num_nodes);
        if n == 0 {
            return Err("a multi-node job needs at least one node".into());
        }
        let mut ranges = Vec::new();
        for r in &props.node_range_properties {
            // An open-ended range follows numNodes; a range past an overridden count is cut.
            let (a, b) = parse_range(&r.target_nodes, n.max(props.num_nodes))?;
            if a < n {
                let run = match (&r.container, &r.pod_template) {
                    (Some(c), None) => NodeRun::Container(c.clone()),
                    (None, Some(t)) => NodeRun::Pod(t.clone()),
                    _ => {
                        return Err(format!(
                            "nodeRangeProperties {} sets exactly one of container or podTemplate",
                            r.target_nodes
                        ));
                    }
                };
                ranges.push((a, b.min(n - 1), run));
            }
        }
        ranges.sort_by_key(|r| r.0);
        let mut next = 0;
        for (a, b, _) in &ranges {
            if *a != next {
                let why = if *a < next { "overlap" } else { "leave a node out" };
                return Err(format!("the nodeRangeProperties of {n} nodes {why} at node {}", (*a).min(next)));
            }
            next = b + 1;
        }
        if next != n {
            return Err(format!("the nodeRangeProperties of {n} nodes leave nodes {next} to {} out", n - 1));
        }
        if props.main_node >= n {
            return Err(format!("mainNode {} is not one of the job's {n} nodes", props.main_node));
        }
        Ok(NodeLayout { num_nodes: n, main_node: props.main_node, ranges })
    }

    /// What node `node` runs.
    pub fn run(&self, node: u32) -> &NodeRun {
        let at = self.ranges.partition_point(|r| r.1 < node).min(self.ranges.len() - 1);
        &self.ranges[at].2
    }

    /// The container node `node` runs, unless it runs a pod.
    pub fn container(&self, node: u32) -> Option<&ContainerSpec> {
        self.run(node).container()
    }

    /// Applies a job's overrides of the nodes of `target` (`containerOverrides`, and a range of
    /// pods' `podOverrides`), splitting ranges where it begins and ends.
    fn apply(&mut self, o: &NodePropertyOverride) -> Result<(), String> {
        let target = o.target_nodes.as_str();
        let (a, b) = parse_range(target, self.num_nodes)?;
        if b >= self.num_nodes {
            return Err(format!(
                "nodeOverrides targetNodes {target} is outside the job's {} nodes",
                self.num_nodes
            ));
        }
        self.split_before(a);
        self.split_before(b + 1);
        for (first, last, run) in &mut self.ranges {
            if *first < a || *last > b {
                continue;
            }
            match run {
                NodeRun::Container(c) => {
                    if o.pod_overrides.is_some() {
                        return Err(format!(
                            "nodeOverrides podOverrides of nodes {target} apply to a range of pods (podTemplate); \
                             nodes {first} to {last} run a container: use containerOverrides"
                        ));
                    }
                    apply_overrides(c, &o.container_overrides);
                }
                NodeRun::Pod(t) => {
                    if o.container_overrides != ContainerOverrides::default() {
                        apply_template_overrides(t, &o.container_overrides)?;
                    }
                    if let Some(p) = o.pod_overrides.as_deref() {
                        super::overrides::apply_to_template(t, p)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn split_before(&mut self, node: u32) {
        if let Some(at) = self.ranges.iter().position(|r| r.0 < node && node <= r.1) {
            let (first, last, c) = self.ranges[at].clone();
            self.ranges[at] = (first, node - 1, c.clone());
            self.ranges.insert(at + 1, (node, last, c));
        }
    }
}

/// `N`, `N:`, `:M` or `N:M` (both ends included; an open end is the last of `num_nodes`).
pub fn parse_range(target: &str, num_nodes: u32) -> Result<(u32, u32), String> {
    let bad = || format!("targetNodes {target:?} is not a node index or a range such as 0, 1:, :3 or 0:3");
    let index =
        |s: &str, open: u32| if s.is_empty() { Ok(open) } else { s.parse::<u32>().map_err(|_| bad()) };
    let (a, b) = match target.split_once(':') {
        Some((a, b)) => (index(a, 0)?, index(b, num_nodes.saturating_sub(1))?),
        None if !target.is_empty() => {
            let i = index(target, 0)?;
            (i, i)
        }
        None => return Err(bad()),
    };
    if a > b {
        return Err(format!("targetNodes {target:?} ends before it begins"));
    }
    Ok((a, b))
}

impl<'a> Work<'a> {
    /// The stream prefix its container's `logConfiguration` names (`awslogs-stream-prefix`).
    pub fn log_prefix(&self) -> Option<&str> {
        let container =
            self.container.as_deref().or_else(|| self.nodes.as_ref().and_then(|n| n.container(n.main_node)));
        crate::archive::configured_stream_prefix(container?.extra().log_configuration.as_ref())
    }

    /// The first part of its attempts' log stream names: the stream prefix its container's
    /// `logConfiguration` names, else the job definition's name (the job's own without one).
    pub fn log_name(&self, job: &super::BatchJob) -> String {
        self.log_prefix().map_or_else(|| job.log_name(), str::to_string)
    }

    /// The IAM roles its containers act as (`jobRoleArn`).
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        let single = self.container.as_deref();
        let ranges = self.nodes.iter().flat_map(|l| l.ranges.iter().filter_map(|(_, _, r)| r.container()));
        single.into_iter().chain(ranges).filter_map(|c| c.extra.as_deref()?.job_role_arn.as_deref())
    }

    /// What node `node` of a multi-node job runs; the work itself for any other job.
    pub fn for_node(&self, node: u32) -> Work<'_> {
        match &self.nodes {
            None => self.clone(),
            Some(layout) => Work {
                container: layout.container(node).map(Cow::Borrowed),
                pod_template: match layout.run(node) {
                    NodeRun::Pod(t) => Some(Cow::Borrowed(&**t)),
                    NodeRun::Container(_) => None,
                },
                task: None,
                retry_strategy: Cow::Borrowed(&*self.retry_strategy),
                timeout: self.timeout,
                scheduling_priority: self.scheduling_priority,
                tags: self.tags.clone(),
                nodes: None,
            },
        }
    }
}

/// The prefix AWS Batch keeps for the variables it sets.
pub const RESERVED_ENV_PREFIX: &str = "AWS_BATCH_";

/// What `job` runs: from its own spec, or from `def`, the revision its `jobDefinition`
/// resolved to. Fails with a reason a user can act on.
pub fn work<'a>(job: &'a BatchJobSpec, def: Option<&'a JobDefinitionSpec>) -> Result<Work<'a>, String> {
    let no_retry: Cow<'a, RetryStrategy> = Cow::Owned(RetryStrategy::default());
    let Some(def) = def else {
        if job.job_definition.is_some() {
            return Err("its job definition is not resolved yet".into());
        }
        let work = Work {
            container: job.container.as_deref().map(Cow::Borrowed),
            pod_template: job.pod_template.as_deref().map(Cow::Borrowed),
            task: None,
            retry_strategy: job.retry_strategy.as_deref().map_or(no_retry, Cow::Borrowed),
            timeout: job.timeout.as_deref(),
            scheduling_priority: job.scheduling_priority.unwrap_or(0),
            tags: job.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            nodes: job.node_properties.as_deref().map(|p| NodeLayout::of(p, None)).transpose()?,
        };
        check_multi_node(job, &work)?;
        check_env(&work)?;
        return Ok(work);
    };
    let params = |name: &str| job.parameters.get(name).or_else(|| def.parameters.get(name));
    let overrides = job.container_overrides.as_deref();
    let mut container = def.container.as_deref().map(Cow::Borrowed);
    let mut pod_template = def.pod_template.as_deref().map(Cow::Borrowed);
    if let Some(c) = &mut container {
        if c.command.iter().chain(&c.args).any(|a| a.contains(REF)) {
            let c = c.to_mut();
            c.command.iter_mut().chain(c.args.iter_mut()).for_each(|a| substitute_in_place(a, &params));
        }
        if let Some(o) = overrides {
            apply_overrides(c.to_mut(), o);
        }
    }
    if let Some(t) = &mut pod_template {
        let has_refs = t
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .is_some_and(|c| c.command.iter().chain(c.args.iter()).flatten().any(|a| a.contains(REF)));
        if has_refs && let Some(c) = t.to_mut().spec.as_mut().and_then(|s| s.containers.first_mut()) {
            c.command
                .iter_mut()
                .chain(c.args.iter_mut())
                .flatten()
                .for_each(|a| substitute_in_place(a, &params));
        }
        if let Some(o) = overrides {
            apply_template_overrides(t.to_mut(), o)?;
        }
        if let Some(p) = job.pod_overrides.as_deref() {
            super::overrides::apply_to_template(t.to_mut(), p)?;
        }
    }
    let mut task = def.task.as_deref().map(Cow::Borrowed);
    if let Some(t) = &mut task {
        let has_refs = t.containers.iter().any(|c| c.container.command.iter().any(|a| a.contains(REF)));
        if has_refs {
            for c in &mut t.to_mut().containers {
                c.container.command.iter_mut().for_each(|a| substitute_in_place(a, &params));
            }
        }
        if overrides.is_some() {
            return Err("containerOverrides do not apply to a task of several containers; override them by name (podOverrides, AWS's ecsPropertiesOverride)".into());
        }
        if let Some(p) = job.pod_overrides.as_deref() {
            super::overrides::apply_to_task(t.to_mut(), p)?;
        }
        super::task::layout(t)?;
    }
    if job.pod_overrides.is_some() && pod_template.is_none() && task.is_none() {
        return Err(
            "podOverrides apply to a definition with a podTemplate or a task; use containerOverrides".into(),
        );
    }
    let nodes = match &def.node_properties {
        Some(props) => Some(node_layout(props, job.node_overrides.as_deref(), &params)?),
        None if job.node_overrides.is_some() => {
            return Err("nodeOverrides apply to a multi-node job definition (nodeProperties) only".into());
        }
        None => None,
    };
    if nodes.is_some() && overrides.is_some() {
        return Err("containerOverrides do not apply to a multi-node job; use nodeOverrides".into());
    }
    let propagate = job.propagate_tags.unwrap_or(def.propagate_tags);
    let mut tags: BTreeMap<&str, &str> = BTreeMap::new();
    if propagate {
        tags.extend(def.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    tags.extend(job.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let work = Work {
        container,
        pod_template,
        task,
        retry_strategy: match (&job.retry_strategy, &def.retry_strategy) {
            (Some(r), _) => Cow::Borrowed(r),
            (None, Some(r)) => Cow::Borrowed(r),
            (None, None) => no_retry,
        },
        timeout: job.timeout.as_deref().or(def.timeout.as_ref()),
        scheduling_priority: job.scheduling_priority.or(def.scheduling_priority).unwrap_or(0),
        tags,
        nodes,
    };
    check_multi_node(job, &work)?;
    check_env(&work)?;
    Ok(work)
}

/// A definition's nodes with the job's `nodeOverrides` and parameters applied.
fn node_layout<'p>(
    props: &NodeProperties,
    overrides: Option<&NodeOverrides>,
    params: &impl Fn(&str) -> Option<&'p String>,
) -> Result<NodeLayout, String> {
    let mut layout = NodeLayout::of(props, overrides.and_then(|o| o.num_nodes))?;
    for (_, _, run) in &mut layout.ranges {
        match run {
            NodeRun::Container(c) => {
                c.command.iter_mut().chain(c.args.iter_mut()).for_each(|a| substitute_in_place(a, params))
            }
            // As a pod template's: the first container's command and args.
            NodeRun::Pod(t) => {
                if let Some(c) = t.spec.as_mut().and_then(|s| s.containers.first_mut()) {
                    c.command
                        .iter_mut()
                        .chain(c.args.iter_mut())
                        .flatten()
                        .for_each(|a| substitute_in_place(a, params));
                }
            }
        }
    }
    for o in overrides.map(|o| o.node_property_overrides.as_slice()).unwrap_or_default() {
        layout.apply(o)?;
    }
    Ok(layout)
}

/// AWS Batch refuses array jobs of multi-node definitions; so does Barge.
fn check_multi_node(job: &BatchJobSpec, work: &Work<'_>) -> Result<(), String> {
    if work.nodes.is_some() && job.array.is_some() {
        return Err("a multi-node parallel job cannot be an array job".into());
    }
    Ok(())
}

/// What a job submitted against a definition may change of it, as AWS Batch's
fn apply_overrides(c: &mut ContainerSpec, o: &ContainerOverrides) {
    if let Some(cmd) = &o.command {
        c.command = cmd.clone();
        c.args.clear();
    }
    for e in &o.environment {
        match c.env.iter_mut().find(|x| x.name == e.name) {
            Some(x) => x.value = e.value.clone(),
            None => c.env.push(e.clone()),
        }
    }
    if let Some(v) = o.vcpus {
        c.resources.vcpus = v;
    }
    if let Some(m) = &o.memory {
        c.resources.memory = m.clone();
    }
    if let Some(g) = o.gpus {
        c.resources.gpus = g;
    }
    if let Some(t) = &o.instance_type {
        c.extra_mut().instance_type = Some(t.clone());
    }
}

/// Overrides of a pod-template definition apply to its first (the job's) container; vCPUs,
/// memory and GPUs become that container's requests and limits.
fn apply_template_overrides(t: &mut PodTemplateSpec, o: &ContainerOverrides) -> Result<(), String> {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    if let Some(ty) = &o.instance_type
        && let Some(spec) = t.spec.as_mut()
    {
        let selector = spec.node_selector.get_or_insert_with(BTreeMap::new);
        selector.insert(super::LABEL_INSTANCE_TYPE.into(), ty.clone());
    }
    let Some(c) = t.spec.as_mut().and_then(|s| s.containers.first_mut()) else {
        return Err("the definition's pod template has no container".into());
    };
    if let Some(cmd) = &o.command {
        c.command = Some(cmd.clone());
        c.args = None;
    }
    super::overrides::set_env(c, &o.environment);
    let mut set = |key: &str, q: String| {
        let r = c.resources.get_or_insert_with(Default::default);
        r.requests.get_or_insert_with(BTreeMap::new).insert(key.into(), Quantity(q.clone()));
        r.limits.get_or_insert_with(BTreeMap::new).insert(key.into(), Quantity(q));
    };
    if let Some(v) = o.vcpus {
        set("cpu", format!("{}m", (v * 1000.0).ceil() as u64));
    }
    if let Some(m) = &o.memory {
        set("memory", m.clone());
    }
    if let Some(g) = o.gpus {
        set(crate::resources::GPU_RESOURCE, g.to_string());
    }
    Ok(())
}

const REF: &str = "Ref::";

fn substitute_in_place<'p>(arg: &mut String, params: &impl Fn(&str) -> Option<&'p String>) {
    if arg.contains(REF) {
        *arg = substitute(arg, params).into_owned();
    }
}

/// Replaces each `Ref::name` in `arg` (a name is letters, digits, `_` and `-`) with the
/// parameter's value; a placeholder with no value stays as written.
pub fn substitute<'s, 'p>(arg: &'s str, params: &impl Fn(&str) -> Option<&'p String>) -> Cow<'s, str> {
    if !arg.contains(REF) {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find(REF) {
        out.push_str(&rest[..at]);
        let after = &rest[at + REF.len()..];
        let len =
            after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(after.len());
        let name = &after[..len];
        match params(name).filter(|_| !name.is_empty()) {
            Some(v) => out.push_str(v),
            None => {
                out.push_str(REF);
                out.push_str(name);
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// AWS Batch sets the `AWS_BATCH_*` variables itself and refuses them from users; and a
/// container's AWS fields must be ones a pod can honour (see `container::check`).
fn check_env(work: &Work<'_>) -> Result<(), String> {
    let ranges = work.nodes.iter().flat_map(|l| l.ranges.iter().filter_map(|(_, _, r)| r.container()));
    for c in work.container.as_deref().into_iter().chain(ranges) {
        super::container::check(c, "")?;
    }
    let names: Vec<&str> = match (&work.container, &work.pod_template) {
        (Some(c), _) => c.env.iter().map(|e| e.name.as_str()).collect(),
        _ if work.nodes.is_some() => {
            work.nodes.iter().flat_map(|l| &l.ranges).flat_map(|(_, _, r)| r.env_names()).collect()
        }
        (None, Some(t)) => template_env_names(t),
        _ => Vec::new(),
    };
    match names.into_iter().find(|n| n.starts_with(RESERVED_ENV_PREFIX)) {
        Some(n) => Err(format!(
            "environment variable {n} uses the reserved prefix {RESERVED_ENV_PREFIX}; Barge sets those itself"
        )),
        None => Ok(()),
    }
}

/// A tag as a pod label: the key as written when it is a valid label key outside Barge's
/// own `barge.dev/` names, else `tag.barge.dev/` and the key made label-safe; the value
/// made label-safe. Label-safe: characters other than letters, digits, `-`, `_` and `.`
/// become `_`, at most 63 characters, beginning and ending with a letter or digit.
pub fn tag_label(key: &str, value: &str) -> Option<(String, String)> {
    let key = if valid_label_key(key) && !key.starts_with("barge.dev/") {
        key.to_string()
    } else {
        let name = label_safe(key);
        if name.is_empty() {
            return None;
        }
        format!("tag.barge.dev/{name}")
    };
    Some((key, label_safe(value)))
}

fn label_safe(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(63)
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty() && name.len() <= 63 && label_safe(name) == name;
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_job::EnvVar;

    fn def() -> JobDefinitionSpec {
        serde_json::from_value(serde_json::json!({
            "container": {
                "image": "render:1",
                "command": ["render", "--frame", "Ref::frame", "--codec=Ref::codec", "Ref::missing"],
                "env": [{"name": "MODE", "value": "fast"}],
                "resources": {"vcpus": 2, "memory": "4Gi"}
            },
            "parameters": {"codec": "mp4", "frame": "1"},
            "retryStrategy": {"attempts": 3},
            "tags": {"team": "film", "cost centre": "42"},
            "schedulingPriority": 5
        }))
        .unwrap()
    }

    fn job(extra: serde_json::Value) -> BatchJobSpec {
        let mut v = serde_json::json!({"jobQueue": "q", "jobDefinition": "render"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parameters_fill_placeholders_job_values_first_and_unknown_ones_stay() {
        let d = def();
        let j = job(serde_json::json!({"parameters": {"frame": "42"}}));
        let w = work(&j, Some(&d)).unwrap();
        assert_eq!(w.container.unwrap().command, ["render", "--frame", "42", "--codec=mp4", "Ref::missing"]);
    }

    #[test]
    fn a_definition_without_placeholders_or_overrides_is_borrowed_not_copied() {
        let mut d = def();
        d.container.as_mut().unwrap().command = vec!["true".into()];
        let j = job(serde_json::json!({}));
        let w = work(&j, Some(&d)).unwrap();
        assert!(matches!(w.container, Some(Cow::Borrowed(_))));
        assert_eq!(w.scheduling_priority, 5);
        assert_eq!(w.retry_strategy.attempts, 3);
    }

    #[test]
    fn the_jobs_values_win_over_the_definitions() {
        let d = def();
        let j = job(serde_json::json!({
            "containerOverrides": {
                "command": ["sh", "-c", "echo Ref::frame"],
                "environment": [{"name": "MODE", "value": "slow"}, {"name": "EXTRA", "value": "1"}],
                "vcpus": 4, "memory": "8Gi"
            },
            "retryStrategy": {"attempts": 1},
            "timeout": {"attemptDurationSeconds": 600},
            "schedulingPriority": 9
        }));
        let w = work(&j, Some(&d)).unwrap();
        let c = w.container.unwrap();
        // Overrides are taken as given: AWS substitutes the definition's command only.
        assert_eq!(c.command, ["sh", "-c", "echo Ref::frame"]);
        assert_eq!(
            c.env.iter().map(|e| (e.name.as_str(), e.value.as_str())).collect::<Vec<_>>(),
            [("MODE", "slow"), ("EXTRA", "1")]
        );
        assert_eq!((c.resources.vcpus, c.resources.memory.as_str()), (4.0, "8Gi"));
        assert_eq!(w.retry_strategy.attempts, 1);
        assert_eq!(w.timeout.unwrap().attempt_duration_seconds, 600);
        assert_eq!(w.scheduling_priority, 9);
    }

    #[test]
    fn definition_tags_reach_the_pods_only_when_propagated() {
        let mut d = def();
        let j = job(serde_json::json!({"tags": {"run": "7"}}));
        assert_eq!(work(&j, Some(&d)).unwrap().tags, BTreeMap::from([("run", "7")]));
        d.propagate_tags = true;
        let tags = work(&j, Some(&d)).unwrap().tags;
        assert_eq!(tags, BTreeMap::from([("run", "7"), ("team", "film"), ("cost centre", "42")]));
        let j = job(serde_json::json!({"propagateTags": false}));
        assert!(work(&j, Some(&d)).unwrap().tags.is_empty());
    }

    #[test]
    fn reserved_variables_are_refused() {
        let mut d = def();
        d.container.as_mut().unwrap().env.push(EnvVar { name: "AWS_BATCH_JOB_ID".into(), value: "x".into() });
        let err = work(&job(serde_json::json!({})), Some(&d)).unwrap_err();
        assert!(err.contains("AWS_BATCH_JOB_ID") && err.contains("reserved"), "{err}");
    }

    #[test]
    fn references_parse_as_aws_writes_them() {
        assert_eq!(DefinitionRef::parse("render").unwrap(), DefinitionRef { name: "render", revision: None });
        assert_eq!(DefinitionRef::parse("render:7").unwrap().revision, Some(7));
        assert!(DefinitionRef::parse("render:0").is_err());
        assert!(DefinitionRef::parse("render:x").is_err());
        assert!(DefinitionRef::parse(":3").is_err());
    }

    #[test]
    fn tags_become_valid_labels() {
        assert_eq!(tag_label("team", "film"), Some(("team".into(), "film".into())));
        assert_eq!(tag_label("example.com/owner", "a b"), Some(("example.com/owner".into(), "a_b".into())));
        assert_eq!(tag_label("cost centre", "42"), Some(("tag.barge.dev/cost_centre".into(), "42".into())));
        assert_eq!(
            tag_label("barge.dev/job-name", "x"),
            Some(("tag.barge.dev/barge.dev_job-name".into(), "x".into()))
        );
        let (_, v) = tag_label("k", &"x".repeat(100)).unwrap();
        assert_eq!(v.len(), 63);
        assert_eq!(tag_label("k", "-v-").unwrap().1, "v");
        assert_eq!(tag_label("!!!", "v"), None);
    }

    fn multi_node_def() -> JobDefinitionSpec {
        serde_json::from_value(serde_json::json!({
            "nodeProperties": {
                "numNodes": 4,
                "mainNode": 0,
                "nodeRangeProperties": [
                    {"targetNodes": "0", "container": {"image": "mpi-main:1", "command": ["main", "Ref::steps"]}},
                    {"targetNodes": "1:", "container": {"image": "mpi-worker:1", "resources": {"vcpus": 2}}}
                ]
            },
            "parameters": {"steps": "10"}
        }))
        .unwrap()
    }

    #[test]
    fn a_multi_node_definition_gives_each_node_its_ranges_container() {
        let d = multi_node_def();
        let j = job(serde_json::json!({"parameters": {"steps": "99"}}));
        let w = work(&j, Some(&d)).unwrap();
        let nodes = w.nodes.as_ref().unwrap();
        assert_eq!((nodes.num_nodes, nodes.main_node), (4, 0));
        assert_eq!(w.for_node(0).container.unwrap().command, ["main", "99"]);
        assert_eq!(w.for_node(3).container.unwrap().image, "mpi-worker:1");
        assert_eq!(d.image(), Some("mpi-main:1"));
    }

    #[test]
    fn eks_ranges_run_pods_with_their_parameters_and_overrides() {
        let d: JobDefinitionSpec = serde_json::from_value(serde_json::json!({
            "nodeProperties": {"numNodes": 3, "mainNode": 0, "nodeRangeProperties": [
                {"targetNodes": "0", "podTemplate": {"spec": {"containers": [
                    {"name": "main", "image": "mpi:1", "command": ["main", "Ref::steps"]},
                    {"name": "log", "image": "fluent:1"}]}}},
                {"targetNodes": "1:", "podTemplate": {"spec": {"containers": [{"name": "worker", "image": "mpi:1"}]}}}
            ]},
            "parameters": {"steps": "10"}
        }))
        .unwrap();
        assert_eq!(d.image(), Some("mpi:1"));
        let j = job(serde_json::json!({"nodeOverrides": {"nodePropertyOverrides": [
            {"targetNodes": "2", "podOverrides": {"containers": [{"name": "worker", "image": "mpi:2"}]}}]}}));
        let w = work(&j, Some(&d)).unwrap();
        let main = w.for_node(0);
        assert!(main.container.is_none());
        let spec = main.pod_template.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(spec.containers[0].command.as_deref().unwrap(), ["main", "10"]);
        let image = |n: u32| {
            let node = w.for_node(n);
            node.pod_template.as_ref().unwrap().spec.as_ref().unwrap().containers[0].image.clone().unwrap()
        };
        assert_eq!(
            (image(1), image(2)),
            ("mpi:1".to_string(), "mpi:2".to_string()),
            "only node 2 overridden"
        );
        let wrong = job(serde_json::json!({"nodeOverrides": {"nodePropertyOverrides": [
            {"targetNodes": "0", "podOverrides": {"containers": [{"name": "main", "image": "x"}]}}]}}));
        let containers = multi_node_def();
        assert!(work(&wrong, Some(&containers)).unwrap_err().contains("apply to a range of pods"));
    }

    #[test]
    fn node_overrides_change_the_count_and_the_nodes_they_target() {
        let d = multi_node_def();
        let j = job(serde_json::json!({"nodeOverrides": {
            "numNodes": 6,
            "nodePropertyOverrides": [{"targetNodes": "2:3", "containerOverrides": {"vcpus": 4}}]
        }}));
        let w = work(&j, Some(&d)).unwrap();
        let nodes = w.nodes.as_ref().unwrap();
        assert_eq!(nodes.num_nodes, 6);
        let vcpus: Vec<f64> = (0..6).map(|i| nodes.container(i).unwrap().resources.vcpus).collect();
        assert_eq!(vcpus, [1.0, 2.0, 4.0, 4.0, 2.0, 2.0]);
    }

    #[test]
    fn bad_node_layouts_and_overrides_say_what_is_wrong() {
        let d = multi_node_def();
        let err = |extra| work(&job(extra), Some(&d)).unwrap_err();
        assert!(err(serde_json::json!({"array": {"size": 2}})).contains("cannot be an array job"));
        assert!(err(serde_json::json!({"containerOverrides": {"vcpus": 2}})).contains("use nodeOverrides"));
        let past = serde_json::json!({"nodeOverrides": {"nodePropertyOverrides": [
            {"targetNodes": "7", "containerOverrides": {"vcpus": 2}}]}});
        assert!(err(past).contains("outside the job's 4 nodes"));
        let mut gap = multi_node_def();
        gap.node_properties.as_mut().unwrap().node_range_properties[1].target_nodes = "2:".into();
        let e = work(&job(serde_json::json!({})), Some(&gap)).unwrap_err();
        assert!(e.contains("leave a node out at node 1"), "{e}");
        let mut overlap = multi_node_def();
        overlap.node_properties.as_mut().unwrap().node_range_properties[1].target_nodes = ":3".into();
        let e = work(&job(serde_json::json!({})), Some(&overlap)).unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        // Fewer nodes than the definition's: the ranges past the last are dropped.
        let fewer = job(serde_json::json!({"nodeOverrides": {"numNodes": 1}}));
        let one = work(&fewer, Some(&d)).unwrap();
        assert_eq!(one.nodes.unwrap().ranges.len(), 1);
        assert_eq!(parse_range("0:3", 8), Ok((0, 3)));
        assert_eq!(parse_range(":", 8), Ok((0, 7)));
        assert!(parse_range("3:1", 8).is_err());
        assert!(parse_range("x", 8).is_err());
    }

    #[test]
    fn a_state_change_is_no_new_revision() {
        let mut d = def();
        let before = d.revision_content();
        d.state = DefinitionState::Inactive;
        assert_eq!(d.revision_content(), before);
    }
}
