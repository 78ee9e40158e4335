//! Barge: AWS Batch-style job queues and compute environments for Kubernetes.
//!
//! `scheduler` and `capacity` are the pure core (no kube, no AWS); `state` is the typed
//! state the loops share; `controller` and `provider` are the I/O shells around it, with
//! `k8s` their Kubernetes helpers; `api` holds the custom resources.

pub mod api;
pub mod archive;
pub mod batch_api;
pub mod capacity;
pub mod cli;
pub mod controller;
pub mod k8s;
pub mod lease;
pub mod metrics;
pub mod provider;
pub mod resources;
pub mod scheduler;
pub mod state;
pub mod throttle;
pub mod trigger;

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
    Provider(#[from] ProviderError),
    /// Not a failure: what the object waits for before its reconcile can finish.
    #[error("waiting: {0}")]
    Waiting(String),
    /// A defect in Barge itself, such as a loop that ended.
    #[error("internal: {0}")]
    Internal(String),
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
            Error::Internal(_) => "internal",
        }
    }
}

impl Error {
    /// Whether this is not a failure but a wait (also inside a finalizer's apply or cleanup).
    pub fn is_waiting(&self) -> bool {
        match self {
            Error::Waiting(_) => true,
            Error::Finalizer(e) => matches!(
                e.as_ref(),
                kube::runtime::finalizer::Error::ApplyFailed(Error::Waiting(_))
                    | kube::runtime::finalizer::Error::CleanupFailed(Error::Waiting(_))
            ),
            _ => false,
        }
    }

    /// Whether trying again can help: a misconfiguration, or an object that is not there,
    /// waits for a change to the object instead.
    pub fn retryable(&self) -> bool {
        match self {
            Error::InvalidJob(_) => false,
            Error::Provider(p) => p.retryable(),
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retryable(),
                _ => true,
            },
            Error::Kube(_) | Error::Waiting(_) | Error::Internal(_) => true,
        }
    }
}

/// What went wrong in a node provider's call, by what retrying can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No capacity for the offering now: another type or a later try may have some.
    #[error("{0}")]
    Capacity(String),
    /// The provider's API asked Barge to slow down.
    #[error("{0}")]
    Throttled(String),
    /// The environment asks for what the provider can never give (bad parameters, no
    /// permission, a provider not enabled): retrying waits for a change to it.
    #[error("{0}")]
    Misconfigured(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Other {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ProviderError {
    pub fn retryable(&self) -> bool {
        !matches!(self, ProviderError::Misconfigured(_))
    }

    pub fn other(message: impl Into<String>) -> Self {
        ProviderError::Other { message: message.into(), source: None }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
