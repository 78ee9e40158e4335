//! `Env`: one test's namespace, name tag and helpers to create compute environments,
//! queues and jobs and wait for them.

use std::time::Duration;

use barge::api::batch_job::JobPhase;
use barge::api::{BatchJob, ComputeEnvironment, JobQueue, LABEL_COMPUTE_ENVIRONMENT};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

use super::{apply, eventually, namespace, suffix};

pub const WAIT: Duration = Duration::from_secs(90);

/// One test's corner of the cluster.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub jobs: Api<BatchJob>,
    pub ces: Api<ComputeEnvironment>,
    pub queues: Api<JobQueue>,
    pub tag: String,
}

impl Env {
    /// A fresh namespace and a name tag for this test's cluster-scoped objects.
    pub async fn new(client: Client, prefix: &str) -> Env {
        let ns = namespace(&client, prefix).await;
        Env {
            jobs: Api::namespaced(client.clone(), &ns),
            ces: Api::all(client.clone()),
            queues: Api::all(client.clone()),
            tag: format!("{prefix}-{}", suffix()),
            client,
            ns,
        }
    }

    pub async fn ce(&self, name: &str, spec: Value) -> String {
        let name = format!("{}-{name}", self.tag);
        apply(&self.ces, json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment", "metadata": {"name": name}, "spec": spec})).await.unwrap();
        name
    }

    pub async fn queue(&self, name: &str, priority: i32, state: &str, ces: &[&str]) -> String {
        let name = format!("{}-{name}", self.tag);
        let order: Vec<Value> =
            ces.iter().enumerate().map(|(i, c)| json!({"order": i + 1, "computeEnvironment": c})).collect();
        apply(
            &self.queues,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": name},
            "spec": {"priority": priority, "state": state, "computeEnvironmentOrder": order}}),
        )
        .await
        .unwrap();
        name
    }

    pub async fn job(
        &self,
        name: &str,
        queue: &str,
        vcpus: f64,
        annotations: Value,
        extra: Value,
    ) -> BatchJob {
        let mut spec = json!({"jobQueue": queue, "container": {"image": "busybox", "resources": {"vcpus": vcpus, "memory": "1Gi"}}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        apply(
            &self.jobs,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": name, "annotations": annotations}, "spec": spec}),
        )
        .await
        .unwrap()
    }

    pub async fn wait_phase(&self, name: &str, phase: JobPhase) -> BatchJob {
        let what = format!("job {name} to be {phase:?}");
        eventually(&what, WAIT, || async {
            let j = self.jobs.get(name).await.ok()?;
            (j.status.as_ref()?.phase == phase).then_some(j)
        })
        .await
    }

    pub async fn nodes_of(&self, ce: &str) -> Vec<Node> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .list(&ListParams::default().labels(&format!("{LABEL_COMPUTE_ENVIRONMENT}={ce}")))
            .await
            .unwrap()
            .items
    }

    pub async fn cleanup(&self, ces: &[&str]) {
        for ce in ces {
            let _ = self.ces.delete(ce, &DeleteParams::default()).await;
        }
    }
}

pub fn vcpus_of(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            n.status.as_ref().unwrap().capacity.as_ref().unwrap()["cpu"]
                .0
                .trim_end_matches('m')
                .parse::<u64>()
                .unwrap()
        })
        .map(|m| if m >= 1000 { m / 1000 } else { m })
        .sum()
}
