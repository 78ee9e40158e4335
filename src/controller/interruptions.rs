//! EC2's warnings about the instances behind Barge's nodes, read from SQS queues: a Spot
//! interruption warning cordons the node and stops its attempts ahead of the reclaim (they
//! are retried per their retry strategy); a rebalance recommendation cordons the node; a
//! state change away from running removes it at once.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::context::Shared;
use super::nodes::remove_lost;
use super::pod::{owning_job, pod_is_active};
use crate::Result;
use crate::api::{ComputeEnvironment, Interruption, LABEL_INTERRUPTION};
use crate::k8s::{
    delete_with, lost_host_reason, node_compute_environment, node_instance_id, node_interruption,
};
use crate::metrics::metrics;
use crate::provider::notices::{self, Notice};
use crate::provider::sqs::SqsQueue;

/// The first and the longest wait after SQS fails: long enough not to spin on a queue that
/// is gone, short enough that two minutes of warning are not lost to the wait.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The longest grace period a stopped attempt gets: EC2 reclaims two minutes after its
/// warning, and the warning takes a few seconds to arrive.
const MAX_GRACE_SECONDS: i64 = 100;

/// Polls every queue until the operator stops. `wait` is each receive's long poll. Never
/// returns, also without queues: the operator stops when any of its loops ends.
pub(super) async fn run(ctx: Arc<Shared>, queues: Vec<Arc<SqsQueue>>, wait: Duration) {
    join_all(queues.into_iter().map(|q| poll(ctx.clone(), q, wait))).await;
    futures::future::pending::<()>().await
}

async fn poll(ctx: Arc<Shared>, queue: Arc<SqsQueue>, wait: Duration) {
    let key = format!("sqs/{}", queue.url);
    info!(queue = %queue.url, "reading EC2 instance notices");
    loop {
        if !ctx.ready() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let messages = match queue.receive(wait).await {
            Ok(m) => m,
            Err(e) => {
                let pause = ctx.failures.failed(&key, RETRY_FIRST, RETRY_MAX);
                warn!(queue = %queue.url, error = %e, retry_in = ?pause, "could not read instance notices");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        ctx.failures.succeeded(&key);
        let mut handled = Vec::with_capacity(messages.len());
        for m in messages {
            match handle(&ctx, &m.body).await {
                Ok(()) => handled.push(m.receipt),
                // Left on the queue: SQS delivers it again after its visibility timeout.
                Err(e) => warn!(queue = %queue.url, error = %e, "could not act on an instance notice"),
            }
        }
        if let Err(e) = queue.delete(&handled).await {
            // Acting again on a redelivered notice changes nothing.
            warn!(queue = %queue.url, error = %e, "could not delete handled notices");
        }
    }
}

/// Acts on one message; an error leaves it on the queue to be tried again.
async fn handle(ctx: &Shared, body: &str) -> Result<()> {
    let notice = match notices::parse(body) {
        Ok(n) => n,
        Err(not) => {
            count(not.kind());
            match not {
                notices::NotNotice::Other(what) => debug!(%what, "ignored a notice of another kind"),
                notices::NotNotice::Malformed(why) => {
                    warn!(%why, "dropped a message that is not an EC2 notice")
                }
            }
            return Ok(());
        }
    };
    let id = notice.instance_id();
    let node = ctx
        .nodes
        .state()
        .into_iter()
        .find(|n| node_instance_id(n) == Some(id) && node_compute_environment(n).is_some());
    let Some(node) = node else {
        count("unknown_instance");
        debug!(instance = id, kind = notice.kind(), "a notice about an instance that is not a Barge node");
        return Ok(());
    };
    let done = match &notice {
        Notice::SpotInterruption { action, .. } => interrupt(ctx, &node, id, action).await?,
        Notice::Rebalance { .. } => cordon(ctx, &node, Interruption::Rebalance).await?,
        Notice::StateChange { state, .. }
            if matches!(state.as_str(), "shutting-down" | "terminated" | "stopping" | "stopped") =>
        {
            let why =
                lost_host_reason(&node).unwrap_or_else(|| format!("Host EC2 (instance {id}) terminated."));
            remove_lost(ctx, &Api::all(ctx.client.clone()), &node.name_any(), why).await?;
            true
        }
        Notice::StateChange { .. } => false,
    };
    count(if done { notice.kind() } else { "duplicate" });
    Ok(())
}

fn count(kind: &str) {
    metrics().instance_notices.get_or_create(&crate::metrics::NoticeKind { kind: kind.into() }).inc();
}

/// Marks the node with what EC2 warned of and cordons it; false if it already was.
async fn cordon(ctx: &Shared, node: &Node, mark: Interruption) -> Result<bool> {
    let had = node_interruption(node);
    // A rebalance recommendation never downgrades a Spot interruption.
    if had == Some(mark) || had == Some(Interruption::Spot) {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {"labels": {LABEL_INTERRUPTION: mark.as_str()}},
        "spec": {"unschedulable": true},
    });
    Api::<Node>::all(ctx.client.clone())
        .patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let id = node_instance_id(node).unwrap_or_default();
    let (kind, note) = match mark {
        Interruption::Spot => return Ok(true),
        Interruption::Rebalance => (
            "RebalanceRecommendation",
            format!(
                "EC2 recommends rebalancing Spot instance {id} (node {}): cordoned, nothing new \
                 starts there; running jobs go on",
                node.name_any()
            ),
        ),
    };
    info!(node = %node.name_any(), instance = id, "cordoned on a rebalance recommendation");
    publish(ctx, node, kind, note).await;
    Ok(true)
}

/// Cordons the node and stops its running attempts (SIGTERM, then the pods' grace period,
/// at most MAX_GRACE_SECONDS), before EC2 takes the instance back; false if there was
/// nothing left to do.
async fn interrupt(ctx: &Shared, node: &Node, id: &str, action: &str) -> Result<bool> {
    let name = node.name_any();
    // Said before any pod stops, so every attempt there ends with this reason.
    ctx.cluster.host_lost(&name, format!("Host EC2 (instance {id}) Spot interruption"));
    let newly = cordon(ctx, node, Interruption::Spot).await?;
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                && pod_is_active(p)
                && p.metadata.deletion_timestamp.is_none()
                && owning_job(p).is_some()
        })
        .collect();
    for pod in &pods {
        // What the attempt prints until it exits, its SIGTERM trap too, is archived.
        if let Some(archive) = &ctx.archive {
            archive.before_stop(pod, &ctx.nodes).await;
        }
        let api = Api::<Pod>::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        let params = DeleteParams {
            grace_period_seconds: Some(grace.clamp(0, MAX_GRACE_SECONDS) as u32),
            ..Default::default()
        };
        delete_with(&api, &pod.name_any(), &params).await?;
        if let Some(job) = owning_job(pod) {
            debug!(job = %job, pod = %pod.name_any(), "attempt stopped for a Spot interruption");
        }
    }
    if !newly && pods.is_empty() {
        return Ok(false);
    }
    let note = format!(
        "EC2 will {action} Spot instance {id} (node {name}) in about two minutes: cordoned, {} \
         running attempt{} stopped; jobs retry per their retry strategy",
        pods.len(),
        if pods.len() == 1 { "" } else { "s" }
    );
    warn!(node = %name, instance = id, attempts = pods.len(), "Spot interruption");
    publish(ctx, node, "SpotInterruption", note).await;
    Ok(true)
}

/// An event on the node's compute environment.
async fn publish(ctx: &Shared, node: &Node, reason: &str, note: String) {
    let Some(ce) = node_compute_environment(node)
        .and_then(|c| ctx.compute_environments.get(&ObjectRef::<ComputeEnvironment>::new(c)))
    else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(crate::k8s::event_note(note)),
        action: "Drain".into(),
        secondary: Some(node.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&event, &ce.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}
