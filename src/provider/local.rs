//! The local provider: nodes are Node objects kept alive by kwok, shaped like real EC2
//! instance types (capacity and allocatable from the catalogue). No cloud needed.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;

use super::{LaunchReport, Launched, NodeProvider};
use crate::Result;
use crate::api::compute_environment::CapacityType;
use crate::api::{ComputeEnvironment, LABEL_CAPACITY_TYPE, LABEL_COMPUTE_ENVIRONMENT, LABEL_INSTANCE_TYPE};
use crate::capacity::catalog::MAX_PODS;
use crate::capacity::{InstanceType, Offer};
use crate::resources::GPU_RESOURCE;
use crate::resources::Res;

/// The annotation kwok is started to watch for.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

pub struct LocalProvider {
    client: Client,
}

impl LocalProvider {
    pub fn new(client: Client) -> Self {
        LocalProvider { client }
    }
}

fn quantities(r: Res) -> BTreeMap<String, Quantity> {
    let mut m = BTreeMap::from([
        ("cpu".to_string(), Quantity(format!("{}m", r.millicpu))),
        ("memory".to_string(), Quantity(format!("{}Mi", r.memory_mib))),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
    ]);
    if r.gpus > 0 {
        m.insert(GPU_RESOURCE.into(), Quantity(r.gpus.to_string()));
    }
    m
}

/// The labels every node of `ce` carries, whichever provider made it.
pub fn node_labels(ce: &ComputeEnvironment) -> BTreeMap<String, String> {
    let mut labels = ce.spec.node_labels.clone();
    labels.insert(LABEL_COMPUTE_ENVIRONMENT.into(), ce.name_any());
    let capacity_type = match ce.spec.capacity_type {
        CapacityType::OnDemand => "on-demand",
        CapacityType::Spot => "spot",
    };
    labels.insert(LABEL_CAPACITY_TYPE.into(), capacity_type.into());
    labels
}

/// The taints every node of `ce` carries.
pub fn node_taints(ce: &ComputeEnvironment) -> Vec<Taint> {
    ce.spec
        .node_taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect()
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
            capacity: Some(quantities(ty.capacity())),
            allocatable: Some(quantities(ty.allocatable())),
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
                // A simulated node can always be had: the first choice is taken.
                let ty = offer.options[0];
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

    fn terminate<'a>(&'a self, _ce: &'a ComputeEnvironment, node: &'a Node) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api: Api<Node> = Api::all(self.client.clone());
            Ok(crate::controller::delete_if_present(&api, &node.name_any()).await?)
        })
    }

    fn cleanup<'a>(
        &'a self,
        ce: &'a ComputeEnvironment,
        nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            for node in nodes {
                self.terminate(ce, node).await?;
            }
            Ok(nodes.is_empty())
        })
    }
}
