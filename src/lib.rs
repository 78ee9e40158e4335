//! Barge: AWS Batch-style job queues and compute environments for Kubernetes.
//!
//! `scheduler` and `capacity` are the pure core (no kube, no AWS); `controller` and
//! `provider` are the I/O shells around it; `api` holds the custom resources.

pub mod api;
pub mod capacity;
pub mod resources;
pub mod scheduler;
