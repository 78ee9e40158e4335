//! Shared helpers for the integration tests: a client for the local control plane that
//! `make test` starts, kwok nodes, namespaces, and polling until state is reached.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Config};
use serde_json::json;

/// A client for the cluster `KUBECONFIG` points at. Panics with a clear message when
/// there is none: these tests need `make test` (or `hack/cluster.sh up`).
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the integration tests with `make test` or after \
         `eval \"$(hack/cluster.sh env)\"`"
    );
    let mut config = Config::infer()
        .await
        .expect("a kubeconfig for the local cluster");
    config.read_timeout = Some(Duration::from_secs(60));
    Client::try_from(config).expect("a client")
}

/// A fresh namespace named `<prefix>-<random>`, so tests sharing the cluster do not meet.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", suffix());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

pub fn suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{}", nanos % 0xfffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Creates a kwok-managed node with the given capacity and labels.
pub async fn kwok_node(
    client: &Client,
    name: &str,
    cpu: &str,
    memory: &str,
    labels: BTreeMap<String, String>,
) -> Node {
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"providerID": format!("kwok://{name}")},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
        }
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap()
}

pub async fn delete_node(client: &Client, name: &str) {
    let _ = Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
