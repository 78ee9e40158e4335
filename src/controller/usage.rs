//! What Barge's active pods hold, kept from the pod watch: the scheduling pass and the
//! capacity controller read these few facts instead of walking and parsing every pod.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::pod::{LABEL_SHARE, pod_is_active, pod_request};
use crate::api::{ANNOTATION_GANG_NODES, LABEL_COMPUTE_ENVIRONMENT, LABEL_JOB_QUEUE, LABEL_NODE_INDEX};
use crate::resources::Res;

/// What one active pod holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// The node it is bound to, once kube-scheduler has placed it.
    pub node: Option<String>,
    pub compute_environment: Option<String>,
    /// Its job's (queue, share), when the job has a share identifier.
    pub share: Option<(String, String)>,
    pub request: Res,
    /// The nodes it holds whole: its own, for a pod of a multi-node job, and all the job's
    /// nodes for its main pod (see `ANNOTATION_GANG_NODES`).
    pub whole: Vec<String>,
}

impl Held {
    fn of(pod: &Pod) -> Held {
        let labels = pod.labels();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let whole =
            match (labels.contains_key(LABEL_NODE_INDEX), pod.annotations().get(ANNOTATION_GANG_NODES)) {
                (false, _) => Vec::new(),
                (true, Some(nodes)) => nodes.split(',').filter(|n| !n.is_empty()).map(String::from).collect(),
                (true, None) => node.iter().cloned().collect(),
            };
        Held {
            whole,
            node,
            compute_environment: labels.get(LABEL_COMPUTE_ENVIRONMENT).cloned(),
            share: labels.get(LABEL_JOB_QUEUE).cloned().zip(labels.get(LABEL_SHARE).cloned()),
            request: pod_request(pod),
        }
    }
}

/// The active pods (not Succeeded or Failed) of the pod store, by "namespace/name".
#[derive(Debug, Default)]
pub struct PodUsage {
    held: HashMap<String, Held>,
    /// The pods seen since the watch began listing everything again.
    relisting: Option<HashSet<String>>,
}

impl PodUsage {
    /// A pod was added or changed.
    pub fn applied(&mut self, pod: &Pod) {
        let key = key(pod);
        if let Some(seen) = &mut self.relisting {
            seen.insert(key.clone());
        }
        if pod_is_active(pod) {
            self.held.insert(key, Held::of(pod));
        } else {
            self.held.remove(&key);
        }
    }

    pub fn deleted(&mut self, pod: &Pod) {
        self.held.remove(&key(pod));
    }

    /// The watch lists everything again: pods deleted meanwhile get no `deleted`.
    pub fn relisting(&mut self) {
        self.relisting = Some(HashSet::new());
    }

    /// The list is complete: what it did not bring is gone.
    pub fn relisted(&mut self) {
        if let Some(seen) = self.relisting.take() {
            self.held.retain(|k, _| seen.contains(k));
        }
    }

    pub fn held(&self) -> impl Iterator<Item = &Held> {
        self.held.values()
    }
}

fn key(pod: &Pod) -> String {
    crate::k8s::ns_key(&pod.namespace().unwrap_or_default(), &pod.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns",
                "labels": {"barge.dev/compute-environment": "ce", "barge.dev/job-queue": "q", "barge.dev/share": "s"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox",
                "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn keeps_what_active_pods_hold_and_forgets_finished_ones() {
        let mut u = PodUsage::default();
        u.applied(&pod("a", "Pending", None));
        u.applied(&pod("b", "Running", Some("n1")));
        let held: Vec<_> = u.held().cloned().collect();
        assert_eq!(held.len(), 2);
        let b = held.iter().find(|h| h.node.is_some()).unwrap();
        assert_eq!(b.request, Res::new(1500, 1024, 0));
        assert_eq!(b.compute_environment.as_deref(), Some("ce"));
        assert_eq!(b.share, Some(("q".into(), "s".into())));
        u.applied(&pod("b", "Succeeded", Some("n1")));
        u.deleted(&pod("a", "Pending", None));
        assert_eq!(u.held().count(), 0);
    }

    #[test]
    fn a_relist_drops_the_pods_it_did_not_bring() {
        let mut u = PodUsage::default();
        u.applied(&pod("gone", "Running", Some("n1")));
        u.applied(&pod("kept", "Running", Some("n1")));
        u.relisting();
        u.applied(&pod("kept", "Running", Some("n2")));
        u.applied(&pod("new", "Pending", None));
        u.relisted();
        let mut nodes: Vec<_> = u.held().map(|h| h.node.clone()).collect();
        nodes.sort();
        assert_eq!(nodes, vec![None, Some("n2".to_string())]);
    }
}
