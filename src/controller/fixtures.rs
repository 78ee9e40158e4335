//! Test fixtures for the shells: a BatchJob builder that reads as the job it makes,
//! `job("etl").array(10).retry(2).build()`.

use serde_json::{Value, json};

use crate::api::BatchJob;

/// A BatchJob being built: by default one vCPU and 64 MiB of busybox in queue `q`, in
/// namespace `ns`, uid `uid-<name>`, created 2026-01-01T00:00:00Z.
pub struct Job(Value);

pub fn job(name: &str) -> Job {
    Job(json!({
        "apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"jobQueue": "q", "container": {"image": "busybox", "resources": {"vcpus": 1, "memory": "64Mi"}}},
    }))
}

impl Job {
    /// Merges `extra` into the job's JSON (objects key by key; anything else replaces).
    pub fn with(mut self, extra: Value) -> Job {
        merge(&mut self.0, extra);
        self
    }

    /// The container asks for nothing: it gets the default request.
    pub fn default_resources(mut self) -> Job {
        if let Some(c) = self.0.pointer_mut("/spec/container").and_then(Value::as_object_mut) {
            c.remove("resources");
        }
        self
    }

    pub fn queue(self, queue: &str) -> Job {
        self.with(json!({"spec": {"jobQueue": queue}}))
    }

    pub fn uid(self, uid: &str) -> Job {
        self.with(json!({"metadata": {"uid": uid}}))
    }

    pub fn array(self, size: u32) -> Job {
        self.with(json!({"spec": {"array": {"size": size}}}))
    }

    pub fn retry(self, attempts: u32) -> Job {
        self.with(json!({"spec": {"retryStrategy": {"attempts": attempts}}}))
    }

    pub fn timeout(self, seconds: Option<u64>) -> Job {
        match seconds {
            Some(s) => self.with(json!({"spec": {"timeout": {"attemptDurationSeconds": s}}})),
            None => self,
        }
    }

    pub fn annotation(self, key: &str, value: &str) -> Job {
        self.with(json!({"metadata": {"annotations": {key: value}}}))
    }

    /// The status the job's watch last showed: its phase, and when it became RUNNABLE.
    pub fn phase(self, phase: &str, runnable_at: Option<&str>) -> Job {
        self.with(json!({"status": {"phase": phase, "runnableAt": runnable_at}}))
    }

    pub fn build(self) -> BatchJob {
        serde_json::from_value(self.0).expect("a fixture is a BatchJob")
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}
