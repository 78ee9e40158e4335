//! Builds the pod for one attempt of a BatchJob: the job's container (or pod template),
//! pinned to the compute environment's nodes, owned by the job, named deterministically.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, Node, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
    PreferredSchedulingTerm, Taint, Toleration,
};
use kube::api::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::container::{PodInputs, container_pod_spec, container_request, task_pod_spec};
use crate::api::batch_job::{
    attempt_index, attempt_number, child_pod_name, job_service_name, node_pod_name, pod_name,
};
use crate::api::compute_environment::ComputeEnvironment;
use crate::api::job_definition::{Work, tag_label};
use crate::api::{
    ANNOTATION_GANG_NODES, BatchJob, LABEL_ATTEMPT, LABEL_COMPUTE_ENVIRONMENT, LABEL_JOB_NAME,
    LABEL_JOB_QUEUE, LABEL_JOB_UID, LABEL_NODE_INDEX,
};
use crate::k8s::{res_of, res_of_lossy};
use crate::resources::{Res, parse_mib};
use crate::{Error, Result};

/// Label on pods of jobs with a share identifier (fair-share usage is counted from it).
pub const LABEL_SHARE: &str = "barge.dev/share";

/// Label on the pods of an array job's children: the child's index.
pub const LABEL_ARRAY_INDEX: &str = "barge.dev/array-index";

/// Job annotations and tags with this prefix are copied to its pods' annotations (the local
/// test bed reads `sim.barge.dev/duration` and friends from there; tags are how a job
/// submitted through the AWS Batch API says them).
pub const COPIED_ANNOTATION_PREFIX: &str = "sim.barge.dev/";

/// How long a simulated pod runs, in the local test bed (see `hack/cluster/kwok-stages.yaml`).
const SIM_DURATION: &str = "sim.barge.dev/duration";
/// How long a simulated multi-node job's main node runs, when not `SIM_DURATION`.
const SIM_MAIN_DURATION: &str = "sim.barge.dev/main-duration";

/// The resources one attempt of the job requests.
/// `AWS_EXECUTION_ENV` as AWS Batch sets it in a job's container on EC2 compute.
pub const EXECUTION_ENV: &str = "AWS_ECS_EC2";

pub fn job_request(work: &Work<'_>) -> Result<Res> {
    if let Some(c) = &work.container {
        let millicpu = (c.resources.vcpus * 1000.0).ceil() as u64;
        let mib = parse_mib(&c.resources.memory).map_err(|e| Error::InvalidJob(e.to_string()))?;
        return Ok(Res::new(millicpu, mib, c.resources.gpus));
    }
    if let Some(t) = &work.task {
        // Every container at once: what the task's init containers take first is less.
        let mut total = Res::ZERO;
        for c in &t.containers {
            total += container_request(&c.container).map_err(Error::InvalidJob)?;
        }
        return Ok(total);
    }
    let spec = work
        .pod_template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .ok_or_else(|| Error::InvalidJob("set container or podTemplate.spec".into()))?;
    let mut total = Res::ZERO;
    for r in spec.containers.iter().filter_map(|c| c.resources.as_ref()) {
        // A resource with a limit and no request requests its limit, as the API server sets it.
        let mut asked = r.limits.clone().unwrap_or_default();
        asked.extend(r.requests.clone().unwrap_or_default());
        total += res_of(&asked).map_err(|e| Error::InvalidJob(e.to_string()))?;
    }
    Ok(total)
}

/// What one attempt of `work` requests in all, and each node's request for a multi-node job.
pub fn requests(work: &Work<'_>) -> Result<(Res, Option<std::sync::Arc<[Res]>>)> {
    let Some(layout) = &work.nodes else { return Ok((job_request(work)?, None)) };
    let mut members = Vec::with_capacity(layout.num_nodes as usize);
    for (first, last, _) in &layout.ranges {
        let each = job_request(&work.for_node(*first))?;
        members.extend(std::iter::repeat_n(each, (last - first + 1) as usize));
    }
    let total = members.iter().fold(Res::ZERO, |t, m| t + *m);
    Ok((total, Some(members.into())))
}

/// The pod for `attempt` of `job`, which runs `work` (see `job_definition::work`), to run
/// on `ce`'s nodes. `index` is the child index of an array job.
pub fn build_pod(
    job: &BatchJob,
    work: &Work<'_>,
    ce: &ComputeEnvironment,
    attempt: u32,
    index: Option<u32>,
    inputs: &PodInputs<'_>,
) -> Result<Pod> {
    let name = job.name_any();
    let uid = job.uid().ok_or_else(|| Error::InvalidJob("job has no uid yet".into()))?;
    let template = work.pod_template.as_deref().cloned().unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = match (&work.container, template.spec) {
        _ if work.task.is_some() => {
            let task = work.task.as_deref().expect("checked");
            task_pod_spec(task, inputs).map_err(Error::InvalidJob)?
        }
        (Some(c), _) => container_pod_spec(c, job_request(work)?, inputs).map_err(Error::InvalidJob)?,
        (None, Some(spec)) => spec,
        (None, None) => {
            return Err(Error::InvalidJob("set container or podTemplate.spec".into()));
        }
    };

    let mut labels = meta.labels.take().unwrap_or_default();
    labels.extend(work.tags.iter().filter_map(|(k, v)| tag_label(k, v)));
    labels.insert(LABEL_JOB_NAME.into(), label_safe(&name));
    labels.insert(LABEL_JOB_UID.into(), uid.clone());
    let number = attempt_number(attempt).to_string();
    labels.insert(LABEL_ATTEMPT.into(), number.clone());
    labels.insert(LABEL_JOB_QUEUE.into(), label_safe(&job.spec.job_queue));
    labels.insert(LABEL_COMPUTE_ENVIRONMENT.into(), ce.name_any());
    if let Some(share) = &job.spec.share_identifier {
        labels.insert(LABEL_SHARE.into(), label_safe(share));
    }
    let mut annotations = meta.annotations.take().unwrap_or_default();
    for (k, v) in work
        .tags
        .iter()
        .map(|(k, v)| (*k, *v))
        .chain(job.annotations().iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        if k.starts_with(COPIED_ANNOTATION_PREFIX) {
            annotations.insert(k.to_string(), v.to_string());
        }
    }
    // Where the archiver writes what its containers print.
    annotations.insert(crate::archive::ANNOTATION_NAME.into(), work.log_name(job));
    let configured = work.container.as_ref().and_then(|c| c.extra().log_configuration.as_ref());
    if let Some(group) = crate::archive::configured_group(configured) {
        annotations.insert(crate::archive::ANNOTATION_GROUP.into(), group.to_string());
    }
    if work.task.is_none()
        && let Some(main) = spec.containers.first().map(|c| c.name.clone())
    {
        annotations.insert(crate::archive::ANNOTATION_MAIN.into(), main);
    }

    spec.restart_policy = Some("Never".into());
    spec.node_selector
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_COMPUTE_ENVIRONMENT.into(), ce.name_any());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in &ce.spec.node_taints {
        tolerations.push(Toleration {
            key: Some(t.key.clone()),
            operator: Some(if t.value.is_some() { "Equal" } else { "Exists" }.into()),
            value: t.value.clone(),
            effect: Some(t.effect.clone()),
            ..Default::default()
        });
    }
    // Barge's own variables, and AWS Batch's with its names and meanings. The job's id is
    // the one AWS Batch's API gives it (its name): what SubmitJob returned, DescribeJobs takes
    // and Metaflow records from inside the container.
    let job_id = match index {
        Some(i) => format!("{name}:{i}"),
        None => name.clone(),
    };
    let mut env = vec![
        env_var("BARGE_JOB_NAME", &name),
        env_var("BARGE_JOB_QUEUE", &job.spec.job_queue),
        env_var("BARGE_JOB_ATTEMPT", &number),
        env_var("BARGE_COMPUTE_ENVIRONMENT", &ce.name_any()),
        env_var("AWS_BATCH_JOB_ID", &job_id),
        env_var("AWS_BATCH_JOB_ATTEMPT", &number),
        env_var("AWS_BATCH_JQ_NAME", &job.spec.job_queue),
        env_var("AWS_BATCH_CE_NAME", &ce.name_any()),
        // What an AWS Batch job on EC2 is told it runs in: SDKs put it in their user agent,
        // and Metaflow's @batch steps read it (a KeyError without it).
        env_var("AWS_EXECUTION_ENV", EXECUTION_ENV),
    ];
    if let Some(d) = job.status.as_ref().and_then(|s| s.job_definition.as_deref()) {
        env.push(env_var("BARGE_JOB_DEFINITION", d));
    }
    if let Some(i) = index {
        env.push(env_var("BARGE_ARRAY_INDEX", &i.to_string()));
        env.push(env_var("AWS_BATCH_JOB_ARRAY_INDEX", &i.to_string()));
        if let Some(a) = &job.spec.array {
            env.push(env_var("AWS_BATCH_JOB_ARRAY_SIZE", &a.size.to_string()));
        }
        labels.insert(LABEL_ARRAY_INDEX.into(), i.to_string());
    }
    if work.task.is_some() {
        // Each of a task's containers is told of the job, as each of AWS's is.
        let every = spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten());
        for c in every {
            let mut vars = env.clone();
            vars.extend(c.env.take().unwrap_or_default());
            c.env = Some(vars);
        }
    } else if let Some(main) = spec.containers.first_mut() {
        env.extend(main.env.take().unwrap_or_default());
        main.env = Some(env);
    }

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(match index {
                Some(i) => child_pod_name(&name, &uid, i, attempt),
                None => pod_name(&name, &uid, attempt),
            }),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![
                job.controller_owner_ref(&()).expect("a job from the API has a uid"),
            ]),
            ..meta
        },
        spec: Some(spec),
        status: None,
    })
}

/// Where a multi-node job's node runs, and what it is told of the job.
pub struct NodePlacement<'a> {
    /// The node index.
    pub index: u32,
    /// The node each node index runs on, as the scheduling pass planned them.
    pub nodes: &'a [String],
    /// The main node's pod address, for the other nodes.
    pub main_address: Option<&'a str>,
}

/// Asks kube-scheduler to put the pod on `node`, the node the scheduling pass placed it on
/// (best fit: the fullest node that holds it), while leaving it free to go elsewhere if that
/// node no longer has room. Without it kube-scheduler spreads pods over the least
/// allocated nodes, so every node keeps a little work and none empties to be removed, and a
/// large job finds no node with room and waits for a new one. A preference the pod template
/// already has is kept beside it.
pub fn prefer_node(pod: &mut Pod, node: &str) {
    if node.is_empty() {
        return;
    }
    let Some(spec) = pod.spec.as_mut() else { return };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let nodes = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    let preferred = nodes.preferred_during_scheduling_ignored_during_execution.get_or_insert_with(Vec::new);
    preferred.push(PreferredSchedulingTerm {
        weight: 100,
        preference: NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
            match_expressions: None,
        },
    });
}

/// Puts the pod on `node` itself, the node the scheduling pass placed it on, when nothing
/// in the pod asks for a decision only kube-scheduler can make; returns whether it did.
///
/// The pass keeps every node of a managed environment and every pod Barge placed there in
/// its indexes, so it knows a node's room as well as kube-scheduler does; binding at
/// creation saves the scheduler's round trip (its queue, a binding request and an Event per
/// pod). A pod is left to the scheduler when it has affinity, topology spread, scheduling
/// gates, claims, volumes the scheduler binds, host ports, another scheduler, a node
/// selector the node does not match, or the node has a taint it does not tolerate. If the
/// node's kubelet refuses it anyway (room held by a pod Barge does not count), the job
/// controller puts the job back in the queue and that node's next pods go through the
/// scheduler (see `facts::refusal`).
pub fn bind_to_node(pod: &mut Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_mut() else { return false };
    if !placeable_by_barge(spec, node) {
        return false;
    }
    spec.node_name = Some(node.name_any());
    true
}

fn placeable_by_barge(spec: &PodSpec, node: &Node) -> bool {
    let scheduler = spec.scheduler_name.as_deref().is_none_or(|s| s == "default-scheduler");
    let constrained = spec.affinity.is_some()
        || spec.topology_spread_constraints.as_ref().is_some_and(|t| !t.is_empty())
        || spec.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty())
        || spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty())
        || spec.node_name.is_some();
    let bound_volumes =
        spec.volumes.iter().flatten().any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
    let host_ports = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| p.host_port.is_some_and(|h| h > 0));
    let labels = node.labels();
    let selected = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let tolerated = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| spec.tolerations.iter().flatten().any(|tol| tolerates(tol, t)));
    scheduler && !constrained && !bound_volumes && !host_ports && selected && tolerated
}

/// Whether `tol` tolerates `taint`, as the scheduler reads tolerations (an empty key
/// with `Exists` tolerates every taint).
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect = tol.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = tol.key.as_deref().is_none_or(str::is_empty) || tol.key.as_deref() == Some(taint.key.as_str());
    let value = tol.operator.as_deref() == Some("Exists")
        || tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
    effect && key && value
}

/// The pod of node `place.index` of `attempt` of a multi-node job: its range's container,
/// bound to the node planned for it (which the job has to itself), with AWS Batch's
/// multi-node variables, named `node-N` under the job's headless Service.
pub fn build_node_pod(
    job: &BatchJob,
    work: &Work<'_>,
    ce: &ComputeEnvironment,
    attempt: u32,
    place: &NodePlacement<'_>,
    inputs: &PodInputs<'_>,
) -> Result<Pod> {
    let layout = work.nodes.as_ref().ok_or_else(|| Error::InvalidJob("not a multi-node job".into()))?;
    let node = place
        .nodes
        .get(place.index as usize)
        .ok_or_else(|| Error::InvalidJob(format!("no node was planned for node {}", place.index)))?;
    let mut pod = build_pod(job, &work.for_node(place.index), ce, attempt, None, inputs)?;
    let (name, uid) = (job.name_any(), job.uid().unwrap_or_default());
    pod.metadata.name = Some(node_pod_name(&name, &uid, place.index, attempt));
    pod.labels_mut().insert(LABEL_NODE_INDEX.into(), place.index.to_string());
    if place.index == layout.main_node {
        let annotations = pod.annotations_mut();
        annotations.insert(ANNOTATION_GANG_NODES.into(), place.nodes.join(","));
        // The test bed's simulated main node may run longer than the others.
        if let Some(d) = annotations.get(SIM_MAIN_DURATION).cloned() {
            annotations.insert(SIM_DURATION.into(), d);
        }
    }
    let spec = pod.spec.as_mut().expect("build_pod gives a spec");
    spec.node_name = Some(node.clone());
    spec.hostname = Some(format!("node-{}", place.index));
    spec.subdomain = Some(job_service_name(&name, &uid));
    let mut vars = vec![
        env_var("AWS_BATCH_JOB_NUM_NODES", &layout.num_nodes.to_string()),
        env_var("AWS_BATCH_JOB_NODE_INDEX", &place.index.to_string()),
        env_var("AWS_BATCH_JOB_MAIN_NODE_INDEX", &layout.main_node.to_string()),
    ];
    if let Some(address) = place.main_address {
        vars.push(env_var("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS", address));
    }
    if let Some(env) = spec.containers.first_mut().and_then(|c| c.env.as_mut()) {
        // A node's job id is the job's with `#N`, as AWS Batch names node jobs.
        if let Some(id) = env.iter_mut().find(|e| e.name == "AWS_BATCH_JOB_ID") {
            id.value = Some(format!("{name}#{}", place.index));
        }
        let at = env.iter().position(|e| e.name == "AWS_BATCH_CE_NAME").map_or(0, |i| i + 1);
        env.splice(at..at, vars);
    }
    Ok(pod)
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

/// Label values are at most 63 characters.
fn label_safe(s: &str) -> String {
    let v: String = s.chars().take(63).collect();
    v.trim_end_matches(['-', '.', '_']).to_string()
}

/// The owner of a pod, if it is a Barge pod: (job uid, attempt index from 0).
pub fn pod_job(pod: &Pod) -> Option<(&str, u32)> {
    let labels = pod.metadata.labels.as_ref()?;
    let uid = labels.get(LABEL_JOB_UID)?;
    let attempt = attempt_index(labels.get(LABEL_ATTEMPT)?.parse().ok()?)?;
    Some((uid.as_str(), attempt))
}

/// A pod that still holds its node's resources.
pub fn pod_is_active(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// What a pod requests, summed over its containers.
pub fn pod_request(pod: &Pod) -> Res {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    containers
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref())
        .map(res_of_lossy)
        .fold(Res::ZERO, |a, r| a + r)
}

/// The BatchJob a Barge pod belongs to.
pub fn owning_job(pod: &Pod) -> Option<ObjectRef<BatchJob>> {
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "BatchJob")?;
    Some(ObjectRef::new(&owner.name).within(&pod.namespace()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::compute_environment::ComputeEnvironmentSpec;
    use crate::api::job_definition::work;
    use crate::controller::fixtures;

    fn job() -> BatchJob {
        let j = fixtures::job("etl").uid("abcdef12-3456").default_resources();
        j.annotation("sim.barge.dev/duration", "3s").annotation("other", "x").build()
    }

    fn ce() -> ComputeEnvironment {
        let spec: ComputeEnvironmentSpec = serde_json::from_value(serde_json::json!({
            "instanceTypes": ["m6i"], "maxvCpus": 16,
            "nodeTaints": [{"key": "batch", "effect": "NoSchedule"}]
        }))
        .unwrap();
        ComputeEnvironment::new("ce-a", spec)
    }

    #[test]
    fn the_planned_node_is_preferred_beside_the_templates_own_preferences() {
        let j = job();
        let mut pod =
            build_pod(&j, &work(&j.spec, None).unwrap(), &ce(), 0, None, &PodInputs::none()).unwrap();
        prefer_node(&mut pod, "");
        assert!(pod.spec.as_ref().unwrap().affinity.is_none(), "no node planned, no preference");
        prefer_node(&mut pod, "ce-a-m6i-large-x1");
        prefer_node(&mut pod, "ce-a-m6i-large-x2");
        let terms = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let terms = terms.preferred_during_scheduling_ignored_during_execution.unwrap();
        assert_eq!(terms.len(), 2);
        let field = &terms[0].preference.match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (field.key.as_str(), field.values.as_ref().unwrap()[0].as_str()),
            ("metadata.name", "ce-a-m6i-large-x1")
        );
        assert_eq!(terms[0].weight, 100);
    }

    #[test]
    fn the_container_is_told_what_metaflows_batch_steps_read() {
        // Metaflow's @batch task_pre_step reads AWS_BATCH_JOB_ATTEMPT, _CE_NAME, _JQ_NAME and
        // AWS_EXECUTION_ENV unguarded once AWS_BATCH_JOB_ID is set.
        let j = job();
        let pod = build_pod(&j, &work(&j.spec, None).unwrap(), &ce(), 0, None, &PodInputs::none()).unwrap();
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        for name in [
            "AWS_BATCH_JOB_ID",
            "AWS_BATCH_JOB_ATTEMPT",
            "AWS_BATCH_CE_NAME",
            "AWS_BATCH_JQ_NAME",
            "AWS_EXECUTION_ENV",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let exec = env.iter().find(|e| e.name == "AWS_EXECUTION_ENV").unwrap();
        assert_eq!(exec.value.as_deref(), Some("AWS_ECS_EC2"));
    }

    #[test]
    fn the_pod_is_pinned_owned_and_named_for_its_attempt_counted_from_one() {
        // The third attempt (index 2) is attempt 3 wherever a user reads it.
        let j = job();
        let pod = build_pod(&j, &work(&j.spec, None).unwrap(), &ce(), 2, None, &PodInputs::none()).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("etl-abcdef12-3"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[LABEL_ATTEMPT], "3");
        assert_eq!(pod_job(&pod).map(|(_, a)| a), Some(2));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()[LABEL_COMPUTE_ENVIRONMENT], "ce-a");
        assert_eq!(spec.tolerations.unwrap()[0].key.as_deref(), Some("batch"));
        let annotations = pod.metadata.annotations.unwrap();
        assert_eq!(annotations["sim.barge.dev/duration"], "3s");
        assert!(!annotations.contains_key("other"));
        let env = spec.containers[0].env.clone().unwrap();
        let var = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
        for name in ["BARGE_JOB_ATTEMPT", "AWS_BATCH_JOB_ATTEMPT"] {
            assert_eq!(var(name).as_deref(), Some("3"), "{name}");
        }
        assert_eq!(
            var("AWS_BATCH_JOB_ID").as_deref(),
            Some("etl"),
            "the id the Batch API gives the job, which Metaflow records"
        );
        assert_eq!(var("AWS_BATCH_JQ_NAME").as_deref(), Some("q"));
        assert_eq!(var("AWS_BATCH_CE_NAME").as_deref(), Some("ce-a"));
        assert_eq!(pod.metadata.owner_references.unwrap()[0].kind, "BatchJob");
    }

    #[test]
    fn a_plain_pod_is_bound_to_its_node_and_one_that_asks_for_the_scheduler_is_not() {
        let node = |taints: serde_json::Value| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "ce-a-m6i-large-x1", "labels": {LABEL_COMPUTE_ENVIRONMENT: "ce-a"}},
                "spec": {"taints": taints}
            }))
            .unwrap()
        };
        let j = job();
        let fresh =
            || build_pod(&j, &work(&j.spec, None).unwrap(), &ce(), 0, None, &PodInputs::none()).unwrap();
        let ours = node(serde_json::json!([{"key": "batch", "effect": "NoSchedule"}]));

        let mut pod = fresh();
        assert!(bind_to_node(&mut pod, &ours));
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("ce-a-m6i-large-x1"));

        // A taint the pod does not tolerate (a node going away, another team's) is the scheduler's.
        let tainted = node(serde_json::json!([
            {"key": "batch", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
        ]));
        assert!(!bind_to_node(&mut fresh(), &tainted));
        // A PreferNoSchedule taint only steers the scheduler.
        let soft = node(serde_json::json!([
            {"key": "batch", "effect": "NoSchedule"}, {"key": "soft", "effect": "PreferNoSchedule"}
        ]));
        assert!(bind_to_node(&mut fresh(), &soft));

        // The node of another environment does not match the pod's node selector.
        let mut other = ours.clone();
        other.labels_mut().insert(LABEL_COMPUTE_ENVIRONMENT.into(), "ce-b".into());
        assert!(!bind_to_node(&mut fresh(), &other));

        // What only the scheduler decides: affinity, claims of volumes, host ports, another scheduler.
        let asks: [fn(&mut PodSpec); 4] = [
            |s| s.affinity = Some(Affinity::default()),
            |s| {
                s.volumes = Some(vec![
                    serde_json::from_value(serde_json::json!(
                        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
                    ))
                    .unwrap(),
                ])
            },
            |s| {
                s.containers[0].ports = Some(vec![
                    serde_json::from_value(serde_json::json!({"containerPort": 80, "hostPort": 80})).unwrap(),
                ])
            },
            |s| s.scheduler_name = Some("volcano".into()),
        ];
        for ask in asks {
            let mut pod = fresh();
            ask(pod.spec.as_mut().unwrap());
            assert!(!bind_to_node(&mut pod, &ours));
            assert!(pod.spec.unwrap().node_name.is_none());
        }
        // An empty key with Exists tolerates everything.
        let everything = Toleration { operator: Some("Exists".into()), ..Default::default() };
        let mut pod = fresh();
        pod.spec.as_mut().unwrap().tolerations = Some(vec![everything]);
        assert!(bind_to_node(&mut pod, &tainted));
    }

    #[test]
    fn the_default_request_is_one_vcpu_and_two_gibibytes() {
        let j = job();
        assert_eq!(job_request(&work(&j.spec, None).unwrap()).unwrap(), Res::new(1000, 2048, 0));
    }
}
