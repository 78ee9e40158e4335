//! Barge: AWS Batch-style job queues and compute environments for Kubernetes.
//!
//! `scheduler` and `capacity` are the pure core (no kube, no AWS); `controller` and
//! `provider` are the I/O shells around it; `api` holds the custom resources.

pub mod api;
pub mod batch_api;
pub mod capacity;
pub mod cli;
pub mod controller;
pub mod lease;
pub mod metrics;
pub mod provider;
pub mod resources;
pub mod scheduler;

/// The field manager Barge writes every object and status under (server-side apply).
pub const FIELD_MANAGER: &str = "barge";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the job is invalid: {0}")]
    InvalidJob(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("node provider: {0}")]
    Provider(String),
    /// Not a failure: what the object waits for before its reconcile can finish.
    #[error("waiting: {0}")]
    Waiting(String),
}

impl Error {
    /// A short, stable name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidJob(_) => "invalid_job",
            Error::Finalizer(_) => "finalizer",
            Error::Provider(_) => "provider",
            Error::Waiting(_) => "waiting",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
