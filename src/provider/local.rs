//! The local provider: nodes are Node objects kept alive by kwok, shaped like real EC2
//! instance types (capacity and allocatable from the catalogue). No cloud needed.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;

use super::{LaunchReport, Launched, NodeProvider};
use crate::Result;
use crate::api::{ComputeEnvironment, LABEL_INSTANCE_TYPE};
use crate::capacity::catalog::MAX_PODS;
use crate::capacity::{InstanceType, Offer};
use crate::k8s::{node_labels, node_taints};
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
}
