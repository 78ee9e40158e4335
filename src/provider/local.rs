//! The local provider: nodes are Node objects kept alive by kwok, shaped like real EC2
//! instance types (capacity and allocatable from the catalogue). No cloud needed. A Spot
//! environment's nodes are priced by a simulated Spot market, which also takes nodes back
//! at a set rate (`--local-spot-interruptions`): the attempts on them end as host loss,
//! as on EC2.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;

use super::{LaunchReport, Launched, NodeProvider, SyncReport};
use crate::Result;
use crate::api::compute_environment::{AllocationStrategy, CapacityType, Provider};
use crate::api::{ComputeEnvironment, LABEL_COMPUTE_ENVIRONMENT, LABEL_INSTANCE_TYPE};
use crate::capacity::catalog::MAX_PODS;
use crate::capacity::spot::SpotMarket;
use crate::capacity::{InstanceType, Offer};
use crate::k8s::{node_labels, node_taints};
use crate::resources::Res;

/// The annotation kwok is started to watch for.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

pub struct LocalProvider {
    client: Client,
    market: SpotMarket,
    /// Per Spot node: the last market tick its interruption was drawn for.
    drawn: Mutex<HashMap<String, u64>>,
}

/// Interruptions are drawn for each tick this long.
const SPOT_TICK_S: f64 = 10.0;

impl LocalProvider {
    pub fn new(client: Client, market: SpotMarket) -> Self {
        LocalProvider { client, market, drawn: Mutex::new(HashMap::new()) }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The Spot nodes the market takes back between the ticks already drawn and `tick`, with
/// the reason their attempts end with; `drawn` remembers where each node's draws stopped.
pub fn interruptions(
    market: &SpotMarket,
    spot_nodes: &[String],
    tick: u64,
    drawn: &mut HashMap<String, u64>,
) -> Vec<(String, String)> {
    let mut gone = Vec::new();
    drawn.retain(|n, _| spot_nodes.contains(n));
    for node in spot_nodes {
        // A node is first drawn for at the tick it is first seen in.
        let from = drawn.get(node).map_or(tick, |t| t + 1);
        if (from..=tick).any(|t| market.interrupted(node, t, SPOT_TICK_S)) {
            gone.push((
                node.clone(),
                format!("Host EC2 (simulated Spot node {node}) terminated: Spot interruption."),
            ));
        }
        drawn.insert(node.clone(), tick);
    }
    gone
}

/// A simulated node's capacity or allocatable: its resources and how many pods it takes.
fn node_quantities(r: Res) -> BTreeMap<String, Quantity> {
    let mut m = crate::k8s::quantities(r);
    m.insert("pods".to_string(), Quantity(MAX_PODS.to_string()));
    m
}

/// The Node object for one simulated instance.
pub fn node_for(ce: &ComputeEnvironment, ty: &InstanceType, suffix: &str) -> Node {
    let name = format!("{}-{}-{suffix}", ce.name_any(), ty.name.replace('.', "-"));
    let mut labels = node_labels(ce);
    labels.insert(LABEL_INSTANCE_TYPE.into(), ty.name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("kubernetes.io/hostname".into(), name.clone());
    labels.insert("type".into(), "kwok".into());
    let taints = node_taints(ce);
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(KWOK_ANNOTATION.0.into(), KWOK_ANNOTATION.1.into())])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("kwok://{name}")),
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            capacity: Some(node_quantities(ty.capacity())),
            allocatable: Some(node_quantities(ty.allocatable())),
            ..Default::default()
        }),
    }
}

impl NodeProvider for LocalProvider {
    fn launch<'a>(&'a self, ce: &'a ComputeEnvironment, offers: &'a [Offer]) -> BoxFuture<'a, LaunchReport> {
        Box::pin(async move {
            let api: Api<Node> = Api::all(self.client.clone());
            let mut report = LaunchReport::default();
            for offer in offers {
                // A simulated node can always be had: the first choice is taken, or for
                // SPOT_PRICE_CAPACITY_OPTIMIZED the choice the market sells cheapest now
                // (every simulated Spot pool has room, so capacity decides nothing).
                let ty = match (ce.spec.capacity_type, ce.spec.allocation_strategy) {
                    (CapacityType::Spot, AllocationStrategy::SpotPriceCapacityOptimized) => {
                        let now = unix_now();
                        offer
                            .options
                            .iter()
                            .copied()
                            .min_by(|a, b| self.market.price(a, now).total_cmp(&self.market.price(b, now)))
                            .unwrap_or(offer.options[0])
                    }
                    _ => offer.options[0],
                };
                for _ in 0..offer.count {
                    let suffix: String = {
                        let mut rng = rand::rng();
                        (0..5)
                            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)]))
                            .collect()
                    };
                    match api.create(&PostParams::default(), &node_for(ce, ty, &suffix)).await {
                        Ok(node) => report.launched.push(Launched { key: node.name_any(), ty }),
                        Err(e) => {
                            report.problems.push(format!("could not create a {} node: {e}", ty.name));
                            return report;
                        }
                    }
                }
            }
            report
        })
    }

    /// A simulated node is nothing but its Node object, which the capacity controller deletes.
    fn terminate<'a>(&'a self, _ce: &'a ComputeEnvironment, _node: &'a Node) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn cleanup<'a>(
        &'a self,
        _ce: &'a ComputeEnvironment,
        _nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(true) })
    }

    /// Spot nodes of local environments that the simulated market takes back.
    fn sync<'a>(
        &'a self,
        ces: &'a [Arc<ComputeEnvironment>],
        nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<SyncReport>> {
        Box::pin(async move {
            if self.market.interruptions_per_node_hour <= 0.0 {
                return Ok(SyncReport::default());
            }
            let spot: Vec<&str> = ces
                .iter()
                .filter(|c| c.spec.provider == Provider::Local && c.spec.capacity_type == CapacityType::Spot)
                .map(|c| c.metadata.name.as_deref().unwrap_or_default())
                .collect();
            let spot_nodes: Vec<String> = nodes
                .iter()
                .filter(|n| n.metadata.deletion_timestamp.is_none())
                .filter(|n| {
                    n.labels().get(LABEL_COMPUTE_ENVIRONMENT).is_some_and(|c| spot.contains(&c.as_str()))
                })
                .map(|n| n.name_any())
                .collect();
            let tick = (unix_now() / SPOT_TICK_S) as u64;
            let gone =
                interruptions(&self.market, &spot_nodes, tick, &mut self.drawn.lock().expect("not poisoned"));
            Ok(SyncReport { register: Vec::new(), gone })
        })
    }

    /// On-Demand: the list price; Spot: the simulated market's price now.
    fn price(&self, ce: &ComputeEnvironment, ty: &InstanceType) -> f64 {
        match ce.spec.capacity_type {
            CapacityType::OnDemand => ty.price,
            CapacityType::Spot => self.market.price(ty, unix_now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptions_are_drawn_once_per_tick_and_node() {
        let market = SpotMarket { interruptions_per_node_hour: 360.0, ..SpotMarket::default() };
        let nodes: Vec<String> = (0..50).map(|i| format!("spot-{i}")).collect();
        let mut drawn = HashMap::new();
        // 360 per hour in 10-s ticks: each draw hits with p = 1 - e^-1, about 63 %.
        let first = interruptions(&market, &nodes, 100, &mut drawn);
        assert!((20..45).contains(&first.len()), "{}", first.len());
        assert!(first[0].1.contains("Spot interruption"));
        // The same tick again draws nothing new.
        assert!(interruptions(&market, &nodes, 100, &mut drawn).is_empty());
        // Three ticks later: three draws per node, so nearly every node is hit.
        let later = interruptions(&market, &nodes, 103, &mut drawn);
        assert!(later.len() > 40, "{}", later.len());
        // Gone nodes are forgotten.
        interruptions(&market, &nodes[..1], 104, &mut drawn);
        assert_eq!(drawn.len(), 1);
        let none = SpotMarket::default();
        assert!(interruptions(&none, &nodes, 100, &mut HashMap::new()).is_empty());
    }
}
