//! The capacity pass, one ComputeEnvironment at a time: the demand the scheduling pass
//! left for it and its nodes go through the pure planner; the provider launches and
//! removes nodes; the status says what the environment has and why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::context::{Shared, failure_key};
use super::environment::{busy_nodes, forget_metrics, publish, publish_metrics, write_status};
use crate::api::compute_environment::{AllocationStrategy, Provider};
use crate::api::{
    ComputeEnvironment, ComputeEnvironmentStatus, Condition, ConditionType, State, set_condition,
};
use crate::capacity::{self, Fleet, NodeUse, Strategy, catalog};
use crate::k8s::{
    delete_if_present, node_compute_environment, node_interruption, node_is_cordoned, node_is_ready,
    node_vcpus,
};
use crate::provider::NodeProvider;
use crate::resources::Res;
use crate::state::{Launching, NodeHold};
use crate::{Error, ProviderError, Result};

pub const FINALIZER: &str = "barge.dev/nodes";
/// While an environment's nodes go away, it is looked at this often until none is left.
const CLEANUP_RECHECK: Duration = Duration::from_secs(1);

#[instrument(skip_all, fields(ce = %ce.name_any()))]
pub async fn reconcile(ce: Arc<ComputeEnvironment>, ctx: Arc<Shared>) -> Result<Action> {
    if !ctx.ready() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, ce, |event| async {
        match event {
            Finalizer::Apply(ce) => apply(&ce, &ctx).await,
            Finalizer::Cleanup(ce) => cleanup(&ce, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn nodes_of(ctx: &Shared, ce: &ComputeEnvironment) -> Vec<Arc<Node>> {
    let name = ce.name_any();
    ctx.nodes.state().into_iter().filter(|n| node_compute_environment(n) == Some(name.as_str())).collect()
}

async fn apply(ce: &ComputeEnvironment, ctx: &Shared) -> Result<Action> {
    if ce.spec.provider == Provider::Unmanaged {
        return super::unmanaged::apply(ce, ctx).await;
    }
    let name = ce.name_any();
    let nodes = nodes_of(ctx, ce);
    let (all_types, unknown) = catalog::resolve(&ce.spec.instance_types);
    let provider = ctx.providers.get(ce.spec.provider);
    // Types just out of capacity are not planned for; with none left the environment
    // cannot grow and the scheduler sends its demand to the queue's next one.
    let cooled = provider.map(|p| p.unavailable(ce)).unwrap_or_default();
    let types: Vec<_> =
        all_types.iter().copied().filter(|t| !cooled.iter().any(|(c, _)| *c == t.name)).collect();
    let cannot_grow = (types.is_empty() && !cooled.is_empty()).then(|| cooled_reasons(&cooled));
    if ctx.cluster.set_cannot_grow(&name, cannot_grow) {
        ctx.schedule_now.notify_one();
    }

    let busy = busy_nodes(ctx, &name);
    let node_use = node_use(ctx, &nodes, &busy);
    let coming = ctx.launching(&name);
    let total_vcpus: u32 =
        node_use.iter().map(|n| n.vcpus).sum::<u32>() + coming.iter().map(|l| l.vcpus).sum::<u32>();
    let mut message: Option<String>;
    let mut launched_vcpus = 0;
    if let Some(provider) = provider {
        let fleet = Fleet { total_vcpus, min_vcpus: ce.spec.min_vcpus, max_vcpus: ce.spec.max_vcpus };
        let (vcpus, problems) = scale_up(ctx, ce, provider, &types, &coming, &fleet).await;
        launched_vcpus = vcpus;
        message = problems.map(|p| format!("Launch problems: {p}"));
        if message.is_none() && !cooled.is_empty() {
            message = Some(format!("Skipping instance types without capacity: {}", cooled_reasons(&cooled)));
        }
        let smallest = all_types.iter().map(|t| t.vcpus).min().unwrap_or(0);
        scale_down(ctx, ce, provider, &nodes, &node_use, smallest).await?;
    } else {
        message = Some(format!(
            "Provider {:?} is not enabled in this Barge deployment; no nodes will be launched",
            ce.spec.provider
        ));
    }
    if !unknown.is_empty() {
        message = Some(format!("Unknown instance types ignored: {}", unknown.join(", ")));
    }
    if all_types.is_empty() {
        message = Some("None of instanceTypes is a known instance type or family".into());
    }

    let price = |t: &capacity::InstanceType| provider.map_or(t.price, |p| p.price(ce, t));
    let mut status = status_for(ce, &nodes, &busy, total_vcpus, message, &all_types, price);
    let holds = ctx.handoff.holds();
    let held = NodeHold::condition(holds.iter().filter(|h| h.compute_environment == name));
    set_condition(&mut status.conditions, held.generation(ce.meta().generation));
    status.desired_vcpus = status.desired_vcpus.max(total_vcpus + launched_vcpus);
    publish_metrics(ce, &status);
    write_status(ctx, ce, status).await?;
    Ok(Action::requeue(ctx.tunables.capacity_resync))
}

fn cooled_reasons(cooled: &[(&'static str, String)]) -> String {
    cooled.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ")
}

/// Each node's vCPUs and how long it has been idle (the scale-down clocks).
fn node_use(ctx: &Shared, nodes: &[Arc<Node>], busy: &HashMap<String, f64>) -> Vec<NodeUse> {
    // A node whose pods' output is not archived yet is not idle: it would go with it. (Asked
    // before `idle_seconds`, which holds the cluster state's lock while it reads its input.)
    let in_use: Vec<(&str, bool)> = nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            (name, busy.contains_key(name) || ctx.cluster.unarchived(name))
        })
        .collect();
    let idle = ctx.cluster.idle_seconds(in_use, Instant::now());
    nodes
        .iter()
        .zip(idle)
        .map(|(n, idle_seconds)| NodeUse {
            name: n.name_any(),
            vcpus: node_vcpus(n),
            idle_seconds,
            interrupted: node_interruption(n).is_some(),
        })
        .collect()
}

/// Launches nodes for the demand the scheduling pass left (and up to minvCpus); nothing new
/// while DISABLED. Returns the vCPUs launched and what went wrong, if anything did.
async fn scale_up(
    ctx: &Shared,
    ce: &ComputeEnvironment,
    provider: &dyn NodeProvider,
    types: &[&'static capacity::InstanceType],
    coming: &[Launching],
    fleet: &Fleet,
) -> (u32, Option<String>) {
    let name = ce.name_any();
    let (mut demand, seen) =
        if ce.spec.state == State::Enabled { ctx.handoff.demand(&name) } else { (Vec::new(), None) };
    // The pass counted the nodes launching when it looked; those launched since then, for
    // the same demand, will take some of it: plan only for the rest. A multi-node job's
    // node takes such a node whole (so those go first); other jobs share what is left.
    demand.sort_by_key(|n| !n.own_instance);
    let mut coming_free: Vec<(Res, bool)> = coming
        .iter()
        .filter(|l| seen.is_none_or(|seen| l.since >= seen))
        .map(|l| (l.allocatable, true))
        .collect();
    demand.retain(|need| {
        let r = need.request;
        let slot = coming_free.iter_mut().find(|(f, whole)| f.fits(&r) && (*whole || !need.own_instance));
        match slot {
            Some((f, whole)) => {
                *f = if need.own_instance { Res::ZERO } else { *f - r };
                *whole = false;
                false
            }
            None => true,
        }
    });
    let strategy = match ce.spec.allocation_strategy {
        AllocationStrategy::BestFit => Strategy::SingleType,
        _ => Strategy::Mixed,
    };
    let plan = capacity::plan_scale_up(&demand, types, strategy, fleet);
    let offers = capacity::offers(&plan, types);
    let report = if offers.is_empty() { Default::default() } else { provider.launch(ce, &offers).await };
    let mut launched = Vec::new();
    let mut vcpus = 0;
    for l in &report.launched {
        vcpus += l.ty.vcpus;
        let node = Launching {
            node: l.key.clone(),
            vcpus: l.ty.vcpus,
            allocatable: l.ty.allocatable(),
            since: Instant::now(),
        };
        ctx.cluster.launched(&name, node);
        launched.push(format!("{} ({})", l.key, l.ty.name));
    }
    let problems = (!report.problems.is_empty()).then(|| report.problems.join("; "));
    if let Some(problems) = &problems {
        warn!(%problems, "launch problems");
        publish(ctx, ce, EventType::Warning, "LaunchFailed", problems.clone()).await;
    }
    if !launched.is_empty() {
        info!(nodes = ?launched, "scaled up");
        publish(ctx, ce, EventType::Normal, "ScaledUp", format!("Launched {}", launched.join(", "))).await;
    }
    (vcpus, problems)
}

/// Cordons idle nodes first and removes them on a later pass if still idle; releases a
/// cordoned node that got work again (or is needed for minvCpus).
async fn scale_down(
    ctx: &Shared,
    ce: &ComputeEnvironment,
    provider: &dyn NodeProvider,
    nodes: &[Arc<Node>],
    node_use: &[NodeUse],
    smallest: u32,
) -> Result<()> {
    let delay = ce.spec.scale_down_delay_seconds as u64;
    let remove = capacity::plan_scale_down(node_use, ce.spec.min_vcpus, delay, smallest);
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    for node in nodes.iter().filter(|n| remove.contains(&n.name_any())) {
        if !node_is_cordoned(node) {
            let cordon = json!({"spec": {"unschedulable": true}});
            nodes_api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&cordon)).await?;
        } else {
            provider.terminate(ce, node).await?;
            delete_if_present(&nodes_api, &node.name_any()).await?;
            ctx.cluster.node_gone(&node.name_any());
            info!(node = %node.name_any(), "scaled down");
            let note = format!("Removed idle node {}", node.name_any());
            publish(ctx, ce, EventType::Normal, "ScaledDown", note).await;
        }
    }
    for node in nodes.iter().filter(|n| node_is_cordoned(n) && !remove.contains(&n.name_any())) {
        // A node EC2 warned about stays cordoned until it goes.
        if node.meta().deletion_timestamp.is_none() && node_interruption(node).is_none() {
            let uncordon = json!({"spec": {"unschedulable": false}});
            nodes_api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&uncordon)).await?;
        }
    }
    Ok(())
}

fn status_for(
    ce: &ComputeEnvironment,
    nodes: &[Arc<Node>],
    busy: &HashMap<String, f64>,
    total_vcpus: u32,
    message: Option<String>,
    types: &[&'static capacity::InstanceType],
    price_of: impl Fn(&capacity::InstanceType) -> f64,
) -> ComputeEnvironmentStatus {
    let mut s = ce.status.clone().unwrap_or_default();
    s.nodes = nodes.len() as u32;
    s.ready_nodes = nodes.iter().filter(|n| node_is_ready(n)).count() as u32;
    s.total_vcpus = total_vcpus;
    s.desired_vcpus = total_vcpus.max(ce.spec.min_vcpus);
    s.allocated_vcpus = (busy.values().sum::<f64>() * 1000.0).round() / 1000.0;
    s.cost_per_hour = Some({
        let price = |n: &Node| {
            n.labels()
                .get(crate::api::LABEL_INSTANCE_TYPE)
                .and_then(|t| {
                    types.iter().find(|x| x.name == t).copied().or(catalog::lookup(t)).map(&price_of)
                })
                .unwrap_or(0.0)
        };
        (nodes.iter().map(|n| price(n)).sum::<f64>() * 10000.0).round() / 10000.0
    });
    s.observed_generation = ce.meta().generation;
    let at_max = total_vcpus >= ce.spec.max_vcpus;
    s.message = message.clone().or_else(|| {
        Some(if at_max {
            format!("At maxvCpus ({})", ce.spec.max_vcpus)
        } else {
            format!("{} of at most {} vCPUs running", total_vcpus, ce.spec.max_vcpus)
        })
    });
    let ready = ce.spec.state == State::Enabled && message.is_none();
    let (reason, msg) = if ce.spec.state == State::Disabled {
        ("Disabled", "The compute environment is DISABLED".to_string())
    } else if let Some(m) = &message {
        ("ProviderProblem", m.clone())
    } else {
        ("Valid", "The compute environment is ready to run jobs".to_string())
    };
    set_condition(
        &mut s.conditions,
        Condition::new(ConditionType::Ready, ready, reason, msg).generation(ce.meta().generation),
    );
    set_condition(
        &mut s.conditions,
        Condition::new(
            ConditionType::AtMaxCapacity,
            at_max,
            if at_max { "MaxvCpusReached" } else { "BelowMaxvCpus" },
            format!("{total_vcpus} of maxvCpus {}", ce.spec.max_vcpus),
        )
        .generation(ce.meta().generation),
    );
    s
}

/// Removes every machine and node of the environment; the finalizer stays until they are gone.
async fn cleanup(ce: &ComputeEnvironment, ctx: &Shared) -> Result<Action> {
    if ce.spec.provider == Provider::Unmanaged {
        forget_metrics(ce);
        return super::unmanaged::cleanup(ce, ctx).await;
    }
    let nodes = nodes_of(ctx, ce);
    let Some(provider) = ctx.providers.get(ce.spec.provider) else {
        if nodes.is_empty() {
            return Ok(Action::await_change());
        }
        return Err(ProviderError::Misconfigured(format!(
            "provider {:?} is not enabled; cannot remove nodes",
            ce.spec.provider
        ))
        .into());
    };
    let machines_gone = provider.cleanup(ce, &nodes).await?;
    let api: Api<Node> = Api::all(ctx.client.clone());
    for node in &nodes {
        delete_if_present(&api, &node.name_any()).await?;
    }
    if machines_gone && nodes.is_empty() {
        ctx.cluster.forget_environment(&ce.name_any());
        publish(ctx, ce, EventType::Normal, "Deleted", "All nodes removed".into()).await;
        forget_metrics(ce);
        return Ok(Action::await_change());
    }
    // Not a failure, but not done: the finalizer stays while the machines go away.
    Err(Error::Waiting(format!("the nodes and instances of {} are going away", ce.name_any())))
}

pub fn error_policy(ce: Arc<ComputeEnvironment>, err: &Error, ctx: Arc<Shared>) -> Action {
    if err.is_waiting() {
        debug!(ce = %ce.name_any(), %err, "waiting");
        return Action::requeue(CLEANUP_RECHECK);
    }
    warn!(ce = %ce.name_any(), error = %err, kind = err.kind(), "reconcile failed");
    ctx.retry_after(&failure_key(ce.as_ref()), err)
}
