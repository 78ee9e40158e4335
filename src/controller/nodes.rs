//! Nodes beyond the capacity pass: the provider sync (label joined instances' nodes, delete
//! the nodes of instances going away) and waking the jobs whose host was lost.

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::context::Shared;
use super::pod::{self, owning_job};
use crate::Result;
use crate::api::{BatchJob, Interruption};
use crate::k8s::{delete_if_present, node_interruption, node_labels, node_taints};

/// Wakes the job of every pod that was on a node that went away: its attempt's host is lost.
pub(super) async fn wake_jobs_of_lost_nodes(
    ctx: Arc<Shared>,
    mut lost: UnboundedReceiver<String>,
    jobs: UnboundedSender<ObjectRef<BatchJob>>,
) {
    while let Some(node) = lost.next().await {
        for pod in ctx.pods.state() {
            if pod.spec.as_ref().and_then(|p| p.node_name.as_deref()) == Some(node.as_str())
                && let Some(job) = owning_job(&pod)
            {
                let _ = jobs.unbounded_send(job);
            }
        }
    }
}

/// Lets each provider compare its machines with the cluster: labels the nodes of newly
/// joined instances with their environment, deletes the nodes of instances going away.
pub(super) async fn provider_sync(ctx: Arc<Shared>, joined: Arc<Notify>) {
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    loop {
        let _ = tokio::time::timeout(ctx.tunables.provider_sync, joined.notified()).await;
        if !ctx.ready() {
            continue;
        }
        let ces = ctx.compute_environments.state();
        let nodes = ctx.nodes.state();
        for provider in [ctx.providers.local.as_deref(), ctx.providers.ec2.as_deref()].into_iter().flatten() {
            let report = match provider.sync(&ces, &nodes).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "provider sync failed");
                    continue;
                }
            };
            for (node, ce_name) in report.register {
                let Some(ce) = ces.iter().find(|c| c.name_any() == ce_name) else { continue };
                let patch = serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": node, "labels": node_labels(ce)},
                    "spec": {"taints": node_taints(ce)},
                });
                let params = PatchParams::apply(crate::FIELD_MANAGER).force();
                match nodes_api.patch(&node, &params, &Patch::Apply(&patch)).await {
                    Ok(_) => info!(%node, ce = %ce_name, "node joined its compute environment"),
                    Err(e) => warn!(%node, error = %e, "could not label a joined node"),
                }
            }
            for (node, why) in report.gone {
                if let Err(e) = remove_lost(&ctx, &nodes_api, &node, why).await {
                    warn!(%node, error = %e, "could not delete node");
                }
            }
        }
    }
}

/// Deletes the node of an instance that is going away, saying why first: its pods'
/// attempts end as host loss with that reason.
pub(super) async fn remove_lost(ctx: &Shared, nodes_api: &Api<Node>, node: &str, why: String) -> Result<()> {
    info!(%node, %why, "removing the node of an instance going away");
    ctx.cluster.host_lost(node, why);
    Ok(delete_if_present(nodes_api, node).await?)
}

/// A pod whose attempt's host is lost: still marked active on a Barge node that no longer
/// exists (the node's pods are only cleaned up later by the pod garbage collector), or
/// being stopped on a node EC2 is about to take back (a Spot interruption).
pub fn pod_host_lost(ctx: &Shared, pod: &Pod) -> bool {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { return false };
    let gone = || ctx.nodes.get(&ObjectRef::new(node)).is_none();
    let succeeded = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    let interrupted = || {
        ctx.nodes
            .get(&ObjectRef::new(node))
            .is_some_and(|n| node_interruption(&n) == Some(Interruption::Spot))
            || ctx.cluster.lost_host(node).is_some()
    };
    (pod::pod_is_active(pod) && gone())
        || (pod.metadata.deletion_timestamp.is_some() && !succeeded && interrupted())
}
