//! Node providers: where a compute environment's nodes come from. `local` writes
//! kwok-managed Node objects; `ec2` launches EC2 instances that join the cluster.
//! Providers make the machines' calls only: the capacity controller deletes the Nodes.

pub mod ec2;
pub mod local;
pub mod notices;
pub mod objects;
pub mod sqs;

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;

use crate::Result;
use crate::api::ComputeEnvironment;
use crate::api::compute_environment::Provider;
use crate::capacity::{InstanceType, Offer};

/// A node a launch started: `key` is what the Node will be known by (its name for local
/// nodes, the instance id for EC2, found in the Node's `spec.providerID`).
#[derive(Clone, Debug)]
pub struct Launched {
    pub key: String,
    pub ty: &'static InstanceType,
}

/// What a launch achieved; a launch may be partly fulfilled.
#[derive(Clone, Debug, Default)]
pub struct LaunchReport {
    pub launched: Vec<Launched>,
    /// What went wrong for the rest, in words for the compute environment's status.
    pub problems: Vec<String>,
}

/// What a periodic look at the provider's machines found.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// Nodes that registered for an instance Barge launched, with their environment: they
    /// get the environment's labels and taints.
    pub register: Vec<(String, String)>,
    /// Nodes whose machine is gone or going (a Spot interruption, say): deleted so that
    /// their pods' attempts end as host loss at once.
    pub gone: Vec<(String, String)>,
}

/// Launches and removes the nodes of compute environments.
pub trait NodeProvider: Send + Sync {
    /// Starts the nodes of `offers` for `ce`.
    fn launch<'a>(&'a self, ce: &'a ComputeEnvironment, offers: &'a [Offer]) -> BoxFuture<'a, LaunchReport>;
    /// Removes what backs a node (its instance); the caller deletes the Node.
    fn terminate<'a>(&'a self, ce: &'a ComputeEnvironment, node: &'a Node) -> BoxFuture<'a, Result<()>>;
    /// Removes every machine `ce` still has; true once the provider confirms none is left
    /// (the caller deletes the Nodes).
    fn cleanup<'a>(
        &'a self,
        ce: &'a ComputeEnvironment,
        nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<bool>>;
    /// Instance types not to launch for `ce` now (recently out of capacity), and why.
    fn unavailable(&self, _ce: &ComputeEnvironment) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Reconciles the provider's machines with the cluster's nodes and environments.
    fn sync<'a>(
        &'a self,
        _ces: &'a [Arc<ComputeEnvironment>],
        _nodes: &'a [Arc<Node>],
    ) -> BoxFuture<'a, Result<SyncReport>> {
        Box::pin(async { Ok(SyncReport::default()) })
    }
    /// Whether a launched node (by key) is known never to join: its instance is gone.
    fn launch_failed(&self, _key: &str) -> bool {
        false
    }
    /// Estimated USD per hour of a node of this environment.
    fn price(&self, ce: &ComputeEnvironment, ty: &InstanceType) -> f64 {
        let _ = ce;
        ty.price
    }
}

/// The providers this operator was started with.
pub struct Providers {
    pub local: Option<Box<dyn NodeProvider>>,
    pub ec2: Option<Box<dyn NodeProvider>>,
}

impl Providers {
    pub fn get(&self, kind: Provider) -> Option<&dyn NodeProvider> {
        match kind {
            Provider::Local => self.local.as_deref(),
            Provider::Ec2 => self.ec2.as_deref(),
            // Barge neither launches nor removes an unmanaged environment's nodes.
            Provider::Unmanaged => None,
        }
    }
}
