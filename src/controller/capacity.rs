//! The capacity pass, one ComputeEnvironment at a time: the demand the scheduling pass
//! left for it and its nodes go through the pure planner; the provider launches and
//! removes nodes; the status says what the environment has and why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::{Shared, node_compute_environment, node_is_cordoned, node_is_ready, node_vcpus};
use crate::api::compute_environment::{AllocationStrategy, Provider};
use crate::api::{ComputeEnvironment, ComputeEnvironmentStatus, Condition, State, set_condition};
use crate::capacity::{self, Fleet, NodeUse, Strategy, catalog};
use crate::{Error, FIELD_MANAGER, Result};

pub const FINALIZER: &str = "barge.dev/nodes";
/// How often an environment is looked at without a trigger (scale-down clocks, status).
const RESYNC: Duration = Duration::from_secs(5);

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

/// Which nodes of the environment run Barge pods, and the vCPUs those request.
pub(super) fn busy_nodes(ctx: &Shared, ce: &str) -> HashMap<String, f64> {
    let mut busy: HashMap<String, f64> = HashMap::new();
    for held in ctx.usage.lock().expect("pod usage lock").held() {
        if let (Some(node), Some(c)) = (&held.node, &held.compute_environment)
            && c == ce
        {
            *busy.entry(node.clone()).or_default() += held.request.vcpus();
        }
    }
    busy
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
    {
        let mut cannot_grow = ctx.cannot_grow.lock().expect("cannot_grow lock");
        if types.is_empty() && !cooled.is_empty() {
            let why = cooled.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ");
            if cannot_grow.insert(name.clone(), why).is_none() {
                ctx.schedule_now.notify_one();
            }
        } else if cannot_grow.remove(&name).is_some() {
            ctx.schedule_now.notify_one();
        }
    }

    let busy = busy_nodes(ctx, &name);
    let now = Instant::now();
    let node_use: Vec<NodeUse> = {
        let mut idle = ctx.idle_since.lock().expect("idle lock");
        nodes
            .iter()
            .map(|n| {
                let node = n.name_any();
                let idle_seconds = if busy.contains_key(&node) {
                    idle.remove(&node);
                    None
                } else {
                    Some(now.duration_since(*idle.entry(node.clone()).or_insert(now)).as_secs())
                };
                NodeUse { name: node, vcpus: node_vcpus(n), idle_seconds }
            })
            .collect()
    };
    let coming = ctx.launching(&name);
    let total_vcpus: u32 =
        node_use.iter().map(|n| n.vcpus).sum::<u32>() + coming.iter().map(|l| l.vcpus).sum::<u32>();
    let mut message = None;
    let mut launched = Vec::new();
    let mut launched_vcpus = 0;

    if let Some(provider) = provider {
        // Scale up for the demand (and to minvCpus); nothing new while DISABLED.
        let mut demand = if ce.spec.state == State::Enabled {
            ctx.demand.lock().expect("demand lock").get(&name).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        // Nodes launched for earlier demand will take some of it: plan only for the rest.
        let mut coming_free: Vec<_> = coming.iter().map(|l| l.allocatable).collect();
        demand.retain(|r| match coming_free.iter_mut().find(|f| f.fits(r)) {
            Some(f) => {
                *f -= *r;
                false
            }
            None => true,
        });
        let strategy = match ce.spec.allocation_strategy {
            AllocationStrategy::BestFit => Strategy::SingleType,
            _ => Strategy::Mixed,
        };
        let fleet = Fleet { total_vcpus, min_vcpus: ce.spec.min_vcpus, max_vcpus: ce.spec.max_vcpus };
        let plan = capacity::plan_scale_up(&demand, &types, strategy, &fleet);
        let offers = capacity::offers(&plan, &types);
        let report = if offers.is_empty() { Default::default() } else { provider.launch(ce, &offers).await };
        for l in &report.launched {
            launched_vcpus += l.ty.vcpus;
            ctx.launching.lock().expect("launching lock").entry(name.clone()).or_default().push(
                super::Launching {
                    node: l.key.clone(),
                    vcpus: l.ty.vcpus,
                    allocatable: l.ty.allocatable(),
                    since: Instant::now(),
                },
            );
            launched.push(format!("{} ({})", l.key, l.ty.name));
        }
        if !report.problems.is_empty() {
            let problems = report.problems.join("; ");
            warn!(%problems, "launch problems");
            publish(ctx, ce, EventType::Warning, "LaunchFailed", problems.clone()).await;
            message = Some(format!("Launch problems: {problems}"));
        } else if !cooled.is_empty() {
            let why = cooled.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ");
            message = Some(format!("Skipping instance types without capacity: {why}"));
        }
        if !launched.is_empty() {
            info!(nodes = ?launched, "scaled up");
            publish(ctx, ce, EventType::Normal, "ScaledUp", format!("Launched {}", launched.join(", ")))
                .await;
        }

        // Scale down: cordon idle nodes first; remove them on a later pass if still idle.
        let delay = ce.spec.scale_down_delay_seconds as u64;
        let smallest = all_types.iter().map(|t| t.vcpus).min().unwrap_or(0);
        let remove = capacity::plan_scale_down(&node_use, ce.spec.min_vcpus, delay, smallest);
        let nodes_api: Api<Node> = Api::all(ctx.client.clone());
        for node in nodes.iter().filter(|n| remove.contains(&n.name_any())) {
            if !node_is_cordoned(node) {
                let cordon = json!({"spec": {"unschedulable": true}});
                nodes_api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&cordon)).await?;
            } else {
                provider.terminate(ce, node).await?;
                ctx.idle_since.lock().expect("idle lock").remove(&node.name_any());
                info!(node = %node.name_any(), "scaled down");
                publish(
                    ctx,
                    ce,
                    EventType::Normal,
                    "ScaledDown",
                    format!("Removed idle node {}", node.name_any()),
                )
                .await;
            }
        }
        // A cordoned node that got work again (or is needed for minvCpus) is released.
        for node in nodes.iter().filter(|n| node_is_cordoned(n) && !remove.contains(&n.name_any())) {
            if node.meta().deletion_timestamp.is_none() {
                let uncordon = json!({"spec": {"unschedulable": false}});
                nodes_api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&uncordon)).await?;
            }
        }
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
    status.desired_vcpus = status.desired_vcpus.max(total_vcpus + launched_vcpus);
    publish_metrics(ce, &status);
    write_status(ctx, ce, status).await?;
    Ok(Action::requeue(RESYNC))
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
        Condition::new("Ready", ready, reason, msg).generation(ce.meta().generation),
    );
    set_condition(
        &mut s.conditions,
        Condition::new(
            "AtMaxCapacity",
            at_max,
            if at_max { "MaxvCpusReached" } else { "BelowMaxvCpus" },
            format!("{total_vcpus} of maxvCpus {}", ce.spec.max_vcpus),
        )
        .generation(ce.meta().generation),
    );
    s
}

/// The environment's vCPUs, nodes and cost for `/metrics`.
pub(super) fn publish_metrics(ce: &ComputeEnvironment, s: &ComputeEnvironmentStatus) {
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
fn forget_metrics(ce: &ComputeEnvironment) {
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

pub(super) async fn write_status(
    ctx: &Shared,
    ce: &ComputeEnvironment,
    status: ComputeEnvironmentStatus,
) -> Result<()> {
    if ce.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<ComputeEnvironment> = Api::all(ctx.client.clone());
    let patch = json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "status": status});
    api.patch_status(&ce.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Removes every node of the environment; the finalizer stays until they are gone.
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
        return Err(Error::Provider(format!(
            "provider {:?} is not enabled; cannot remove nodes",
            ce.spec.provider
        )));
    };
    if provider.cleanup(ce, &nodes).await? {
        ctx.cannot_grow.lock().expect("cannot_grow lock").remove(&ce.name_any());
        publish(ctx, ce, EventType::Normal, "Deleted", "All nodes removed".into()).await;
        forget_metrics(ce);
        return Ok(Action::await_change());
    }
    Err(Error::Provider(format!("waiting for the nodes and instances of {} to go away", ce.name_any())))
}

pub(super) async fn publish(
    ctx: &Shared,
    ce: &ComputeEnvironment,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev =
        Event { type_, reason: reason.into(), note: Some(note), action: "Scale".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &ce.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

pub fn error_policy(ce: Arc<ComputeEnvironment>, err: &Error, _ctx: Arc<Shared>) -> Action {
    warn!(ce = %ce.name_any(), error = %err, kind = err.kind(), "reconcile failed");
    Action::requeue(Duration::from_secs(1))
}
