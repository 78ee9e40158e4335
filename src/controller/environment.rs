//! What the managed and unmanaged compute environment controllers share: which nodes run
//! Barge pods, the environment's events, metrics and status write.

use std::collections::HashMap;

use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::context::Shared;
use crate::Result;
use crate::api::{ComputeEnvironment, ComputeEnvironmentStatus};
use crate::k8s::apply_status;

/// Which nodes of the environment run Barge pods, and the vCPUs those request.
pub fn busy_nodes(ctx: &Shared, ce: &str) -> HashMap<String, f64> {
    let mut busy: HashMap<String, f64> = HashMap::new();
    for held in ctx.usage.lock().expect("pod usage lock").held() {
        if let (Some(node), Some(c)) = (&held.node, &held.compute_environment)
            && c == ce
        {
            *busy.entry(node.clone()).or_default() += held.request.vcpus();
            // A multi-node job's nodes are its own from the start: never idle under it.
            for n in held.whole.iter().filter(|n| *n != node) {
                busy.entry(n.clone()).or_default();
            }
        }
    }
    busy
}

/// The environment's vCPUs, nodes and cost for `/metrics`.
pub fn publish_metrics(ce: &ComputeEnvironment, s: &ComputeEnvironmentStatus) {
    use crate::metrics::{CeLabel, CeVcpus, metrics};
    let m = metrics();
    let name = ce.name_any();
    for (kind, v) in [
        ("desired", s.desired_vcpus as i64),
        ("current", s.total_vcpus as i64),
        ("allocated", s.allocated_vcpus.ceil() as i64),
        ("max", ce.spec.max_vcpus as i64),
    ] {
        m.ce_vcpus.get_or_create(&CeVcpus { compute_environment: name.clone(), kind: kind.into() }).set(v);
    }
    let label = CeLabel { compute_environment: name };
    m.ce_nodes.get_or_create(&label).set(s.nodes as i64);
    m.ce_cost_per_hour.get_or_create(&label).set(s.cost_per_hour.unwrap_or(0.0));
}

/// Drops a deleted environment's series.
pub fn forget_metrics(ce: &ComputeEnvironment) {
    use crate::metrics::{CeLabel, CeVcpus, metrics};
    let m = metrics();
    let name = ce.name_any();
    for kind in ["desired", "current", "allocated", "max"] {
        m.ce_vcpus.remove(&CeVcpus { compute_environment: name.clone(), kind: kind.into() });
    }
    let label = CeLabel { compute_environment: name };
    m.ce_nodes.remove(&label);
    m.ce_cost_per_hour.remove(&label);
}

pub async fn write_status(
    ctx: &Shared,
    ce: &ComputeEnvironment,
    status: ComputeEnvironmentStatus,
) -> Result<()> {
    let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
    apply_status(&api, ce, ce.status.as_ref(), &status).await?;
    Ok(())
}

pub async fn publish(ctx: &Shared, ce: &ComputeEnvironment, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::k8s::event_note(note)),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &ce.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}
