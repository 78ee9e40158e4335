//! Node providers: where a compute environment's nodes come from. `local` writes
//! kwok-managed Node objects; `ec2` (planned) launches instances.

pub mod local;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;

use crate::Result;
use crate::api::ComputeEnvironment;
use crate::api::compute_environment::Provider;
use crate::capacity::InstanceType;

/// Launches and removes the nodes of a compute environment.
pub trait NodeProvider: Send + Sync {
    /// Starts one node of type `ty` for `ce`; returns its name.
    fn launch<'a>(
        &'a self,
        ce: &'a ComputeEnvironment,
        ty: &'static InstanceType,
    ) -> BoxFuture<'a, Result<String>>;
    /// Removes a node (and whatever backs it).
    fn terminate<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<()>>;
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
        }
    }
}
