//! A multi-node parallel job's nodes, on top of its main node's lifecycle: the job's
//! status is its main node's (see `next_status`); this adds the nodes' summary, starts the
//! other nodes once the main node runs, fails the attempt when a node's host is lost, and
//! stops every node when the attempt ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::{PodFacts, current_attempt, finish_attempt};
use crate::Result;
use crate::api::batch_job::{
    BatchJob, BatchJobStatus, JobPhase, MultiNodeStatus, NodeSummary, RetryStrategy, attempt_number,
    job_service_name, node_pod_name,
};
use crate::api::job_definition::{NodeLayout, Work};
use crate::api::{ANNOTATION_GANG_NODES, LABEL_COMPUTE_ENVIRONMENT, LABEL_JOB_UID};
use crate::controller::context::Shared;
use crate::controller::nodes::pod_host_lost;
use crate::controller::pod::{NodePlacement, build_node_pod, pod_is_active};

/// What the job's nodes need done, after its status is written.
#[derive(Debug, Default)]
pub struct Actions {
    /// The other nodes' pods, once the main node runs.
    pub create: Vec<Pod>,
    /// Pods of an attempt that ended (or of a lost node's gang) that still run.
    pub stop: Vec<String>,
    /// The job's headless Service: created with the other nodes, deleted when the job ends.
    pub service: Option<Service>,
    pub delete_service: bool,
}

/// The node pods of `attempt`, by node index, with whether each one's host is lost.
fn node_pods(
    ctx: &Shared,
    job: &BatchJob,
    layout: &NodeLayout,
    attempt: u32,
) -> Vec<Option<(Arc<Pod>, bool)>> {
    let (ns, name, uid) =
        (job.namespace().unwrap_or_default(), job.name_any(), job.uid().unwrap_or_default());
    (0..layout.num_nodes)
        .map(|i| {
            let pod = ctx.pods.get(&ObjectRef::new(&node_pod_name(&name, &uid, i, attempt)).within(&ns))?;
            let lost = pod_host_lost(ctx, &pod);
            Some((pod, lost))
        })
        .collect()
}

fn phase_of(facts: &PodFacts) -> JobPhase {
    match facts.phase.as_str() {
        "Running" => JobPhase::Running,
        "Succeeded" => JobPhase::Succeeded,
        "Failed" => JobPhase::Failed,
        _ if facts.node.is_some() => JobPhase::Starting,
        _ => JobPhase::Runnable,
    }
}

/// Adds the nodes to `new` (the main node's status of the job) and says what to do.
#[allow(clippy::too_many_arguments)]
pub fn overlay(
    ctx: &Shared,
    job: &BatchJob,
    work: &Work<'_>,
    layout: &NodeLayout,
    old: &BatchJobStatus,
    new: &mut BatchJobStatus,
    retry: &RetryStrategy,
    now: DateTime<Utc>,
) -> Actions {
    let mut actions = Actions::default();
    let attempt = current_attempt(old);
    let pods = node_pods(ctx, job, layout, attempt);
    let number = attempt_number(attempt);
    let seen: Vec<u32> = old
        .multi_node
        .iter()
        .filter(|m| m.attempt == number)
        .flat_map(|m| &m.nodes)
        .map(|n| n.index)
        .collect();
    let open = !new.phase.is_finished() && current_attempt(new) == attempt;

    // A node whose host went away, or whose pod vanished, fails the attempt: the gang is
    // retried whole, never with a second copy of one node.
    if open && new.attempts.len() > attempt as usize {
        let lost = pods.iter().enumerate().find_map(|(i, p)| match p {
            Some((pod, true)) => Some(format!(
                "Host {} terminated (node {i} of the job)",
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("unknown")
            )),
            None if seen.contains(&(i as u32)) => Some(format!("Node {i}'s pod was deleted")),
            _ => None,
        });
        if let Some(why) = lost {
            *new = finish_attempt(std::mem::take(new), retry, None, None, why, now, true);
        }
    }
    let open = !new.phase.is_finished() && current_attempt(new) == attempt;

    let summary: Vec<NodeSummary> = pods
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (pod, _) = p.as_ref()?;
            let facts = PodFacts::of(pod);
            Some(NodeSummary {
                index: i as u32,
                pod_name: pod.name_any(),
                node_name: facts.node.clone(),
                phase: phase_of(&facts),
                exit_code: facts.exit_code,
            })
        })
        .collect();
    // Nodes whose pods went (stopped when the attempt ended) keep the summary they had.
    let mut nodes: BTreeMap<u32, NodeSummary> = old
        .multi_node
        .iter()
        .filter(|m| m.attempt == number)
        .flat_map(|m| m.nodes.iter().cloned())
        .map(|n| (n.index, n))
        .collect();
    nodes.extend(summary.into_iter().map(|n| (n.index, n)));
    let running = nodes.values().filter(|n| n.phase == JobPhase::Running).count();
    let progress = if open {
        format!("{running}/{} running", layout.num_nodes)
    } else {
        format!("{} nodes done", layout.num_nodes)
    };
    new.multi_node = Some(Box::new(MultiNodeStatus {
        attempt: number,
        num_nodes: layout.num_nodes,
        main_node: layout.main_node,
        progress,
        nodes: nodes.into_values().collect(),
    }));

    if !open {
        actions.stop = pods
            .iter()
            .flatten()
            .filter(|(p, _)| pod_is_active(p) && p.metadata.deletion_timestamp.is_none())
            .map(|(p, _)| p.name_any())
            .collect();
        actions.delete_service = new.phase.is_finished();
        return actions;
    }
    // The main node runs: start the others, on the nodes planned with it.
    let main = pods[layout.main_node as usize].as_ref().map(|(p, _)| p);
    let Some(main) = main.filter(|p| PodFacts::of(p).phase == "Running") else { return actions };
    let planned: Vec<String> = main
        .annotations()
        .get(ANNOTATION_GANG_NODES)
        .map(|n| n.split(',').map(String::from).collect())
        .unwrap_or_default();
    let ce = main
        .labels()
        .get(LABEL_COMPUTE_ENVIRONMENT)
        .and_then(|c| ctx.compute_environments.get(&ObjectRef::new(c)));
    let Some(ce) = ce else { return actions };
    let service = job_service_name(&job.name_any(), &job.uid().unwrap_or_default());
    let dns = format!("node-{}.{service}", layout.main_node);
    let address = main.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or(dns);
    let ns = job.namespace().unwrap_or_default();
    let accounts = |role: &str| ctx.role_account(&ns, role);
    let inputs = crate::controller::container::PodInputs {
        namespace: &ns,
        region: &ctx.region,
        role_account: &accounts,
    };
    for i in (0..layout.num_nodes).filter(|i| *i != layout.main_node) {
        if pods[i as usize].is_some() || seen.contains(&i) {
            continue;
        }
        let place = NodePlacement { index: i, nodes: &planned, main_address: Some(&address) };
        match build_node_pod(job, work, &ce, attempt, &place, &inputs) {
            Ok(pod) => actions.create.push(pod),
            Err(e) => tracing::warn!(job = %job.name_any(), node = i, error = %e, "cannot build node pod"),
        }
    }
    if !actions.create.is_empty() {
        actions.service = Some(headless_service(job, &service));
    }
    actions
}

/// A Service with no cluster address whose records are the job's pods, ready or not: node
/// `N` is `node-N.SERVICE` to the others.
fn headless_service(job: &BatchJob, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: job.namespace(),
            owner_references: Some(vec![
                job.controller_owner_ref(&()).expect("a job from the API has a uid"),
            ]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(LABEL_JOB_UID.to_string(), job.uid().unwrap_or_default())])),
            ports: Some(vec![ServicePort { name: Some("any".into()), port: 1, ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Does what `overlay` decided: service first, so that the nodes' names resolve when they start.
pub async fn act(ctx: &Shared, job: &BatchJob, actions: Actions) -> Result<()> {
    let ns = job.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(svc) = &actions.service {
        match services.create(&PostParams::default(), svc).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in &actions.create {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => {}
            // Created by an earlier reconcile: the name is the node and the attempt.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for name in &actions.stop {
        super::stop_pod(ctx, &pods, &ns, name).await?;
    }
    if actions.delete_service {
        let name = job_service_name(&job.name_any(), &job.uid().unwrap_or_default());
        crate::k8s::delete_if_present(&services, &name).await?;
    }
    Ok(())
}
