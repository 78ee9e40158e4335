//! Unmanaged compute environments (AWS Batch's `UNMANAGED`): nodes that already exist —
//! a managed node group's, Karpenter's, or hand-made — picked by a label selector. Barge
//! labels each picked node with `barge.dev/compute-environment`, so the scheduling pass
//! places pods on it like on any node of an environment, within `maxvCpus`; it never
//! launches, cordons or removes one.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::context::Shared;
use super::environment::{busy_nodes, publish, publish_metrics, write_status};
use crate::Result;
use crate::api::{
    ComputeEnvironment, Condition, ConditionType, LABEL_COMPUTE_ENVIRONMENT, State, set_condition,
};
use crate::k8s::{node_compute_environment, node_is_ready, node_vcpus};

const RESYNC: Duration = Duration::from_secs(5);

/// What the selector makes of the cluster's nodes.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    /// Picked, and not yet labelled as this environment's.
    pub to_label: Vec<String>,
    /// Labelled as this environment's, and no longer picked.
    pub to_release: Vec<String>,
    /// Picked, but already in another environment (which keeps them): node and environment.
    pub taken: Vec<(String, String)>,
}

/// Which nodes join and leave `ce` (pure: from the nodes as the store holds them).
pub fn select(ce: &ComputeEnvironment, nodes: &[std::sync::Arc<Node>]) -> Selection {
    let name = ce.name_any();
    let mut out = Selection::default();
    let Some(selector) = &ce.spec.node_selector else { return out };
    for node in nodes {
        let picked = node.meta().deletion_timestamp.is_none() && selector.matches(node.labels());
        match (picked, node_compute_environment(node)) {
            (true, None) => out.to_label.push(node.name_any()),
            (true, Some(other)) if other != name => out.taken.push((node.name_any(), other.to_string())),
            (false, Some(this)) if this == name => out.to_release.push(node.name_any()),
            _ => {}
        }
    }
    out
}

/// Whether the selector itself asks for Barge's label: then the label is the user's, and
/// Barge never takes it off.
fn label_is_users(ce: &ComputeEnvironment) -> bool {
    ce.spec.node_selector.as_ref().is_some_and(|s| s.match_labels.contains_key(LABEL_COMPUTE_ENVIRONMENT))
}

async fn set_label(api: &Api<Node>, node: &str, ce: Option<&str>) -> kube::Result<()> {
    let patch = json!({"metadata": {"labels": {LABEL_COMPUTE_ENVIRONMENT: ce}}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

pub async fn apply(ce: &ComputeEnvironment, ctx: &Shared) -> Result<Action> {
    let name = ce.name_any();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let all = ctx.nodes.state();
    let selection = select(ce, &all);
    for node in &selection.to_label {
        set_label(&api, node, Some(&name)).await?;
        info!(%node, ce = %name, "node joined an unmanaged compute environment");
        publish(ctx, ce, EventType::Normal, "NodeSelected", format!("Node {node} matches nodeSelector"))
            .await;
    }
    for node in &selection.to_release {
        set_label(&api, node, None).await?;
        info!(%node, ce = %name, "node left an unmanaged compute environment");
        publish(
            ctx,
            ce,
            EventType::Normal,
            "NodeReleased",
            format!("Node {node} no longer matches nodeSelector"),
        )
        .await;
    }
    let nodes: Vec<&Node> = all
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| {
            (node_compute_environment(n) == Some(name.as_str())
                && !selection.to_release.contains(&n.name_any()))
                || selection.to_label.contains(&n.name_any())
        })
        .collect();
    let busy = busy_nodes(ctx, &name);
    let status = status_for(ce, &nodes, &busy, &selection.taken);
    publish_metrics(ce, &status);
    write_status(ctx, ce, status).await?;
    Ok(Action::requeue(RESYNC))
}

fn status_for(
    ce: &ComputeEnvironment,
    nodes: &[&Node],
    busy: &HashMap<String, f64>,
    taken: &[(String, String)],
) -> crate::api::ComputeEnvironmentStatus {
    let mut s = ce.status.clone().unwrap_or_default();
    let total: u32 = nodes.iter().map(|n| node_vcpus(n)).sum();
    let ready = nodes.iter().filter(|n| node_is_ready(n)).count() as u32;
    let allocated = (busy.values().sum::<f64>() * 1000.0).round() / 1000.0;
    let max = ce.spec.max_vcpus;
    s.nodes = nodes.len() as u32;
    s.ready_nodes = ready;
    s.total_vcpus = total;
    s.desired_vcpus = total;
    s.allocated_vcpus = allocated;
    // The nodes are paid for by whoever runs them, not by this environment.
    s.cost_per_hour = None;
    s.observed_generation = ce.meta().generation;
    let mut names: Vec<String> = nodes.iter().map(|n| n.name_any()).collect();
    names.sort();
    let shown = if names.len() > 5 { format!("{}, …", names[..5].join(", ")) } else { names.join(", ") };
    let mut message = if nodes.is_empty() {
        "No node matches nodeSelector; jobs wait until one does (Barge never launches nodes of an \
         unmanaged compute environment)"
            .to_string()
    } else {
        format!(
            "{} node{} selected ({shown}), {total} vCPUs; Barge's pods request {allocated} of at most \
             {max} vCPUs (maxvCpus)",
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" }
        )
    };
    if !taken.is_empty() {
        let list: Vec<String> = taken.iter().map(|(n, c)| format!("{n} (in {c})")).collect();
        message.push_str(&format!(
            "; nodes that match but stay in their compute environment: {}",
            list.join(", ")
        ));
    }
    s.message = Some(message.clone());
    let (is_ready, reason, msg) = if ce.spec.state == State::Disabled {
        (false, "Disabled", "The compute environment is DISABLED".to_string())
    } else if ready == 0 {
        (false, "NoReadyNodes", message)
    } else {
        (true, "Valid", "The compute environment is ready to run jobs on its selected nodes".to_string())
    };
    set_condition(
        &mut s.conditions,
        Condition::new(ConditionType::Ready, is_ready, reason, msg).generation(ce.meta().generation),
    );
    let at_max = allocated >= max as f64;
    set_condition(
        &mut s.conditions,
        Condition::new(
            ConditionType::AtMaxCapacity,
            at_max,
            if at_max { "MaxvCpusReached" } else { "BelowMaxvCpus" },
            format!("Barge's pods request {allocated} of maxvCpus {max}"),
        )
        .generation(ce.meta().generation),
    );
    s
}

/// Gives the nodes back: Barge's label comes off the nodes it put it on.
pub async fn cleanup(ce: &ComputeEnvironment, ctx: &Shared) -> Result<Action> {
    let name = ce.name_any();
    if !label_is_users(ce) {
        let api: Api<Node> = Api::all(ctx.client.clone());
        for node in ctx.nodes.state().iter().filter(|n| node_compute_environment(n) == Some(name.as_str())) {
            set_label(&api, &node.name_any(), None).await?;
        }
    }
    publish(ctx, ce, EventType::Normal, "Deleted", "Its nodes are no longer Barge's to place on".into())
        .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn node(name: &str, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap())
    }

    fn ce(selector: serde_json::Value) -> ComputeEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
            "metadata": {"name": "own"},
            "spec": {"provider": "unmanaged", "maxvCpus": 8, "nodeSelector": selector},
        }))
        .unwrap()
    }

    #[test]
    fn picked_nodes_join_unpicked_ones_leave_and_other_environments_keep_theirs() {
        let nodes = [
            node("fresh", json!({"pool": "batch"})),
            node("member", json!({"pool": "batch", LABEL_COMPUTE_ENVIRONMENT: "own"})),
            node("gone-from-pool", json!({"pool": "web", LABEL_COMPUTE_ENVIRONMENT: "own"})),
            node("elsewhere", json!({"pool": "batch", LABEL_COMPUTE_ENVIRONMENT: "ce-x"})),
            node("web", json!({"pool": "web"})),
        ];
        let s = select(&ce(json!({"matchLabels": {"pool": "batch"}})), &nodes);
        assert_eq!(s.to_label, ["fresh"]);
        assert_eq!(s.to_release, ["gone-from-pool"]);
        assert_eq!(s.taken, [("elsewhere".to_string(), "ce-x".to_string())]);
    }

    #[test]
    fn a_selector_on_barge_s_own_label_is_the_user_s_and_is_never_taken_off() {
        let own = ce(json!({"matchLabels": {LABEL_COMPUTE_ENVIRONMENT: "own"}}));
        assert!(label_is_users(&own));
        let nodes = [node("member", json!({LABEL_COMPUTE_ENVIRONMENT: "own"}))];
        assert_eq!(select(&own, &nodes), Selection::default());
        assert!(!label_is_users(&ce(json!({"matchLabels": {"pool": "batch"}}))));
    }

    #[test]
    fn the_status_names_the_nodes_their_vcpus_and_the_cap() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"capacity": {"cpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let busy = HashMap::from([("n1".to_string(), 2.5)]);
        let s = status_for(&ce(json!({"matchLabels": {"pool": "batch"}})), &[&n], &busy, &[]);
        assert_eq!((s.nodes, s.ready_nodes, s.total_vcpus, s.allocated_vcpus), (1, 1, 4, 2.5));
        assert_eq!(s.cost_per_hour, None);
        let m = s.message.unwrap();
        assert!(m.contains("1 node selected (n1), 4 vCPUs") && m.contains("2.5 of at most 8"), "{m}");
        let empty = status_for(&ce(json!({"matchLabels": {"pool": "batch"}})), &[], &busy, &[]);
        assert!(empty.message.unwrap().starts_with("No node matches nodeSelector"));
        assert!(empty.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
    }
}
