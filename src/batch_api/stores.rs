//! The endpoint's view of the cluster: one reflector per kind it reads, so that no request
//! makes an API server call to read. Started by every replica, leader or not.

use std::future::{Future, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};

use super::auth::Credential;
use crate::api::{BatchJob, ComputeEnvironment, JobDefinition, JobQueue};
use crate::controller::revisions::{self, Definitions, RevisionIndex};

/// The label on the Secrets that hold keys of the endpoint.
pub const LABEL_CREDENTIALS: &str = "barge.dev/credentials";

/// The longest a write waits for the stores to show it (a watch is usually milliseconds
/// behind; past this the answer goes out anyway).
const READ_YOUR_WRITES: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Stores {
    pub jobs: Store<BatchJob>,
    pub queues: Store<JobQueue>,
    pub compute_environments: Store<ComputeEnvironment>,
    pub definitions: Definitions,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// ServiceAccounts, for the IAM role a definition's `jobRoleArn` names.
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    secrets: Store<Secret>,
    ready: Arc<AtomicBool>,
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let drive = watcher(api, config)
        .backoff(crate::controller::watch_backoff())
        .modify(crate::controller::prune_object)
        .reflect(writer)
        .for_each(move |ev| {
            match ev {
                Ok(ev) => on_event(&ev),
                Err(e) => tracing::warn!(error = %e, "batch api watch error; retrying with backoff"),
            }
            ready(())
        });
    (store, drive)
}

impl Stores {
    /// The stores, and the future that keeps them filled.
    pub fn start(
        client: Client,
        credentials_namespace: &str,
    ) -> (Stores, impl Future<Output = ()> + Send + use<>) {
        let all = watcher::Config::default;
        let (jobs, drive_jobs) = reflect(Api::<BatchJob>::all(client.clone()), all(), |_| {});
        let (queues, drive_queues) = reflect(Api::<JobQueue>::all(client.clone()), all(), |_| {});
        let (ces, drive_ces) = reflect(Api::<ComputeEnvironment>::all(client.clone()), all(), |_| {});
        let (defs, drive_defs) = reflect(Api::<JobDefinition>::all(client.clone()), all(), |_| {});
        let index = Arc::new(RevisionIndex::default());
        let index_tx = index.clone();
        let (revisions, drive_revisions) = reflect(
            Api::<ControllerRevision>::all(client.clone()),
            all().labels(revisions::LABEL_JOB_DEFINITION),
            move |ev| match ev {
                watcher::Event::Apply(cr) | watcher::Event::InitApply(cr) => index_tx.applied(cr),
                watcher::Event::Delete(cr) => index_tx.deleted(cr),
                watcher::Event::Init | watcher::Event::InitDone => {}
            },
        );
        let (namespaces, drive_namespaces) =
            reflect(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), all(), |_| {});
        let (service_accounts, drive_accounts) =
            reflect(Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()), all(), |_| {});
        let (secrets, drive_secrets) = reflect(
            Api::<Secret>::namespaced(client, credentials_namespace),
            all().labels(&format!("{LABEL_CREDENTIALS}=true")),
            |_| {},
        );
        let ready = Arc::new(AtomicBool::new(false));
        let stores = Stores {
            jobs: jobs.clone(),
            queues: queues.clone(),
            compute_environments: ces.clone(),
            definitions: Definitions { definitions: defs.clone(), revisions: revisions.clone(), index },
            namespaces: namespaces.clone(),
            service_accounts: service_accounts.clone(),
            secrets: secrets.clone(),
            ready: ready.clone(),
        };
        let synced = async move {
            let _ = tokio::join!(
                jobs.wait_until_ready(),
                queues.wait_until_ready(),
                ces.wait_until_ready(),
                defs.wait_until_ready(),
                revisions.wait_until_ready(),
                namespaces.wait_until_ready(),
                service_accounts.wait_until_ready(),
                secrets.wait_until_ready(),
            );
            ready.store(true, Ordering::Release);
            tracing::info!("the AWS Batch API has read the cluster; answering");
            std::future::pending::<()>().await
        };
        let drive = async move {
            tokio::join!(
                drive_jobs,
                drive_queues,
                drive_ces,
                drive_defs,
                drive_revisions,
                drive_namespaces,
                drive_accounts,
                drive_secrets,
                synced
            );
        };
        (stores, drive)
    }

    /// Stores that hold nothing (for tests of what needs no cluster).
    #[cfg(test)]
    pub fn empty() -> Stores {
        Stores {
            jobs: reflector::store().0,
            queues: reflector::store().0,
            compute_environments: reflector::store().0,
            definitions: Definitions {
                definitions: reflector::store().0,
                revisions: reflector::store().0,
                index: Default::default(),
            },
            namespaces: reflector::store().0,
            service_accounts: reflector::store().0,
            secrets: reflector::store().0,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Waits (briefly) until `seen` holds of what the store shows: a write's answer must be
    /// what the next read through the store finds, as AWS's reads after a write do.
    pub async fn caught_up(&self, seen: impl Fn(&Stores) -> bool) {
        let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES;
        while !seen(self) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Every key issued and not revoked.
    pub fn credentials(&self) -> Vec<Credential> {
        self.secrets.state().iter().filter_map(|s| credential(s)).collect()
    }

    /// The labels of a namespace (for queues' namespace selectors).
    pub fn namespace_labels(&self, ns: &str) -> std::collections::BTreeMap<String, String> {
        self.namespaces
            .get(&reflector::ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

/// A key as its Secret holds it (see `barge credentials create`).
pub fn credential(secret: &Secret) -> Option<Credential> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
    Some(Credential {
        access_key_id: text("accessKeyId")?,
        secret_access_key: text("secretAccessKey")?,
        namespace: text("namespace")?,
        queues: text("queues")
            .map(|q| q.split(',').map(str::trim).filter(|q| !q.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
        admin: text("admin").as_deref() == Some("true"),
    })
}
