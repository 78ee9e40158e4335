//! The I/O shells around the pure core. One reflector per kind feeds every loop:
//! the BatchJob lifecycle controller, the scheduling pass, the ComputeEnvironment
//! capacity controller and the JobQueue status loop. Nothing lists in a loop.

pub mod array;
pub mod backlog;
pub mod burst;
pub mod capacity;
pub mod coalesce;
pub mod definition;
pub mod job;
pub mod pod;
pub mod queue;
pub mod scheduling;
pub mod tally;
pub mod unmanaged;
pub mod usage;

use std::collections::HashMap;
use std::future::ready;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::api::{
    BatchJob, ComputeEnvironment, JobDefinition, JobQueue, LABEL_COMPUTE_ENVIRONMENT, LABEL_JOB_UID,
};
use crate::provider::{Providers, local};
use crate::resources::Res;
use backlog::Change;
use tally::JobTally;
use usage::PodUsage;

/// A job is reconciled at most once per window, a window after its first trigger: its
/// pod's quick steps (created, bound, started) and an array's many children make one status
/// write, and a new job is usually admitted before its first status write.
const JOB_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Parallel reconciles of the job controller: status writes are independent.
const JOB_CONCURRENCY: u16 = 64;

/// What the scheduling pass decided for a job it saw waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Why it waits; shared by the many jobs waiting for the same reason.
    Waiting(Arc<str>),
    Admitted {
        compute_environment: String,
    },
    /// The API server refused the job's pod for a reason no retry can mend (Pod Security
    /// Admission, an invalid pod spec): the job fails with this reason.
    Rejected(Arc<str>),
}

/// State shared by every loop: the stores (the in-memory truth) and the hand-offs
/// from the scheduling pass to the job and capacity controllers.
pub struct Shared {
    pub client: Client,
    pub jobs: Store<BatchJob>,
    pub queues: Store<JobQueue>,
    pub compute_environments: Store<ComputeEnvironment>,
    pub pods: Store<Pod>,
    /// Job definitions and their registered revisions.
    pub definitions: definition::Definitions,
    /// What the active pods of `pods` hold, kept from the pod watch.
    pub usage: Arc<Mutex<PodUsage>>,
    /// Jobs per queue and phase, kept from the job watch (for the queues' statuses).
    pub tally: Arc<Mutex<JobTally>>,
    pub nodes: Store<Node>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Events of queues and compute environments (few objects: repeats become a series).
    pub recorder: Recorder,
    /// Who publishes Barge's events; each job's events get a recorder of their own.
    pub reporter: Reporter,
    pub providers: Providers,
    /// Rings when something the scheduling pass reads has changed.
    pub schedule_now: Arc<Notify>,
    /// Latest verdict per job uid, with the number of the pass that gave it.
    verdicts: Mutex<HashMap<Arc<str>, (Verdict, u64)>>,
    /// Requests of jobs each compute environment should grow for.
    pub demand: Mutex<HashMap<String, Vec<Res>>>,
    /// Per queue, why its first waiting job cannot run.
    pub blocked: Mutex<HashMap<String, String>>,
    /// Per fair-share queue, its usage as the scheduling pass last recorded it (for the
    /// queue's status, from which a restarted Barge goes on).
    pub share_usage: Mutex<HashMap<String, crate::api::job_queue::FairShareUsage>>,
    /// Nodes launched but not yet seen in the node store, per compute environment.
    pub launching: Mutex<HashMap<String, Vec<Launching>>>,
    /// Per compute environment, why it cannot launch nodes now (no instance capacity).
    pub cannot_grow: Mutex<HashMap<String, String>>,
    /// Why the host of a vanished node went away, for its pods' attempts.
    pub lost_hosts: Arc<Mutex<HashMap<String, String>>>,
    /// When each node was last seen without a Barge pod (scale-down clock).
    pub idle_since: Mutex<HashMap<String, std::time::Instant>>,
    /// The scheduling pass's pod creations, which job status writes yield to.
    pub bursts: burst::Bursts,
    ready: AtomicBool,
}

impl Shared {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn verdict(&self, job: &BatchJob) -> Option<Verdict> {
        let uid = job.uid()?;
        self.verdicts.lock().expect("verdicts lock").get(uid.as_str()).map(|(v, _)| v.clone())
    }
}

/// A node the capacity pass launched that the node store has not shown yet; counted as
/// coming capacity so that the same demand is not launched for twice.
#[derive(Clone, Debug)]
pub struct Launching {
    /// The node's name, or for a cloud instance its id (see `provider::node_key`).
    pub node: String,
    pub vcpus: u32,
    pub allocatable: Res,
    pub since: std::time::Instant,
}

/// A launched node that has not shown up for this long is no longer counted as coming.
/// (A provider that knows better ends it sooner: see `NodeProvider::launch_failed`.)
pub const LAUNCH_TTL: std::time::Duration = std::time::Duration::from_secs(900);
/// How often providers compare their machines with the cluster's nodes.
const PROVIDER_SYNC: std::time::Duration = std::time::Duration::from_secs(5);

impl Shared {
    /// Launching nodes of `ce` still missing from the node store (pruning the rest).
    pub fn launching(&self, ce: &str) -> Vec<Launching> {
        let mut all = self.launching.lock().expect("launching lock");
        let Some(list) = all.get_mut(ce) else {
            return Vec::new();
        };
        if list.is_empty() {
            return Vec::new();
        }
        // A launch stops counting as coming once its node has joined its environment.
        let joined: std::collections::HashSet<String> = self
            .nodes
            .state()
            .iter()
            .filter(|n| node_compute_environment(n) == Some(ce))
            .map(|n| crate::provider::node_key(n))
            .collect();
        let provider = self
            .compute_environments
            .get(&ObjectRef::new(ce))
            .and_then(|c| self.providers.get(c.spec.provider));
        list.retain(|l| {
            l.since.elapsed() < LAUNCH_TTL
                && !joined.contains(&l.node)
                && !provider.is_some_and(|p| p.launch_failed(&l.node))
        });
        list.clone()
    }
}

/// Options of the `run` command.
#[derive(Clone, Debug)]
pub struct Options {
    /// Identifies this operator in events.
    pub instance: String,
    /// Set once every store has synced (for `/readyz`).
    pub synced: Arc<AtomicBool>,
}

/// What a watch saw, as handed to its `on_event`.
enum Seen<'a, K> {
    Applied(&'a K),
    Deleted(&'a K),
    /// The watch begins to list everything again (each object then comes as `Applied`).
    Relisting,
    /// The watch listed everything again and its store was replaced: objects deleted
    /// meanwhile left without a `Deleted`.
    Relisted,
}

/// Watches a kind into a store; every event rings `wake` and is handed to `on_event`.
/// `prune` drops, on the way in, what no loop reads of this kind; `before` sees each event
/// while the store still holds what it replaces.
fn plain_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    wake: Arc<Notify>,
    prune: impl Fn(&mut K) + Send + 'static,
    before: impl Fn(&watcher::Event<K>, &Store<K>) + Send + 'static,
    on_event: impl Fn(Seen<'_, K>) + Send + 'static,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    // The stores hold every job and pod: what no loop reads is dropped on the way in.
    let watch = watcher(api, config).default_backoff().modify(move |obj| {
        prune_object(obj);
        prune(obj);
    });
    let previous = store.clone();
    let watch = watch.inspect_ok(move |ev| before(ev, &previous));
    let drive = watch.reflect(writer).for_each(move |ev| {
        match ev {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => on_event(Seen::Applied(&obj)),
            Ok(watcher::Event::Delete(obj)) => on_event(Seen::Deleted(&obj)),
            Ok(watcher::Event::InitDone) => on_event(Seen::Relisted),
            Ok(watcher::Event::Init) => on_event(Seen::Relisting),
            Err(e) => warn!(error = %e, "watch error; retrying with backoff"),
        }
        wake.notify_one();
        ready(())
    });
    (store, drive)
}

/// What no store keeps of any object: managedFields, and kubectl's copy of the last
/// applied manifest.
pub fn prune_object<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// What the job store keeps of a job: no loop reads its labels, and of its annotations only
/// those copied to its pods. A job's labels and annotations are maps of their own, which
/// over 100,000 held jobs is a fifth of the operator's memory.
pub fn prune_job(job: &mut BatchJob) {
    job.metadata.labels = None;
    if let Some(a) = job.metadata.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(pod::COPIED_ANNOTATION_PREFIX));
        if a.is_empty() {
            job.metadata.annotations = None;
        }
    }
}

/// Runs every loop of the operator until one of them ends (they do not, short of a signal).
pub async fn run(client: Client, providers: Providers, options: Options) -> crate::Result<()> {
    let wake = Arc::new(Notify::new());
    // Every trigger of the job controller (the job's own changes, its pods, the scheduling
    // pass's verdicts) goes through one unbounded channel and the coalescer, so that a busy
    // controller never holds up a watch (and with it every store reader).
    let (trigger_tx, trigger_rx) = mpsc::unbounded::<ObjectRef<BatchJob>>();
    let (pod_tx, owner_tx, verdict_tx) = (trigger_tx.clone(), trigger_tx.clone(), trigger_tx.clone());
    // The scheduling pass's backlog hears of every job and pod change.
    let (backlog_tx, backlog_rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let pod_backlog_tx = backlog_tx.clone();
    let tally = Arc::new(Mutex::new(JobTally::default()));
    let tally_tx = tally.clone();
    // A new job wakes the scheduling pass at once: admission does not wait for a status write.
    let (jobs, drive_jobs) = plain_watch(
        Api::<BatchJob>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
        prune_job,
        move |ev, store| {
            let mut tally = tally_tx.lock().expect("job tally lock");
            let held = |job: &BatchJob| store.get(&ObjectRef::from_obj(job));
            match ev {
                watcher::Event::Init => tally.relisting(),
                watcher::Event::InitApply(job) => tally.applied(None, job),
                watcher::Event::Apply(job) => tally.applied(held(job).as_deref(), job),
                watcher::Event::Delete(job) => tally.deleted(held(job).as_deref()),
                watcher::Event::InitDone => tally.relisted(),
            }
        },
        move |seen: Seen<'_, BatchJob>| match seen {
            Seen::Applied(job) | Seen::Deleted(job) => {
                let _ = trigger_tx.unbounded_send(ObjectRef::from_obj(job));
                let _ = backlog_tx.send(Change::Job(ObjectRef::from_obj(job)));
            }
            Seen::Relisted => {
                let _ = backlog_tx.send(Change::All);
            }
            Seen::Relisting => {}
        },
    );
    let job_controller = Controller::for_stream(futures::stream::pending(), jobs.clone());
    let ce_controller =
        Controller::new(Api::<ComputeEnvironment>::all(client.clone()), watcher::Config::default());
    let ces = ce_controller.store();

    let usage = Arc::new(Mutex::new(PodUsage::default()));
    let usage_tx = usage.clone();
    let (pods, drive_pods) = plain_watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(LABEL_JOB_UID),
        wake.clone(),
        |_| {},
        |_, _| {},
        move |seen: Seen<'_, Pod>| {
            let pod = match seen {
                Seen::Applied(pod) => {
                    usage_tx.lock().expect("pod usage lock").applied(pod);
                    pod
                }
                Seen::Deleted(pod) => {
                    usage_tx.lock().expect("pod usage lock").deleted(pod);
                    pod
                }
                Seen::Relisting => return usage_tx.lock().expect("pod usage lock").relisting(),
                Seen::Relisted => {
                    usage_tx.lock().expect("pod usage lock").relisted();
                    let _ = pod_backlog_tx.send(Change::All);
                    return;
                }
            };
            if let Some(job) = owning_job(pod) {
                let _ = pod_backlog_tx.send(Change::Job(job.clone()));
                let _ = pod_tx.unbounded_send(job);
            }
        },
    );
    let revision_index = Arc::new(definition::RevisionIndex::default());
    let index_tx = revision_index.clone();
    let (revisions, drive_revisions) = plain_watch(
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default().labels(definition::LABEL_JOB_DEFINITION),
        wake.clone(),
        |_| {},
        |_, _| {},
        move |seen: Seen<'_, ControllerRevision>| match seen {
            Seen::Applied(cr) => index_tx.applied(cr),
            Seen::Deleted(cr) => index_tx.deleted(cr),
            Seen::Relisting | Seen::Relisted => {}
        },
    );
    let jd_controller =
        Controller::new(Api::<JobDefinition>::all(client.clone()), watcher::Config::default());
    let job_definitions = jd_controller.store();
    let (queues, drive_queues) = plain_watch(
        Api::<JobQueue>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
        |_| {},
        |_, _| {},
        |_| {},
    );
    // A node that goes away takes its pods' attempts with it: their jobs must hear of it.
    // All nodes are watched: a cloud instance's node joins before Barge labels it.
    let (lost_tx, mut lost_rx) = mpsc::unbounded::<String>();
    let lost_hosts: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let lost_why = lost_hosts.clone();
    let joined = Arc::new(Notify::new());
    let joined_tx = joined.clone();
    let (nodes, drive_nodes) = plain_watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
        |_| {},
        |_, _| {},
        move |seen: Seen<'_, Node>| {
            let (node, deleted) = match seen {
                Seen::Applied(node) => (node, false),
                Seen::Deleted(node) => (node, true),
                Seen::Relisting | Seen::Relisted => return,
            };
            let instance = node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(crate::provider::ec2::instance_id)
                .map(str::to_string);
            if deleted {
                // Recorded before any job can see the node gone.
                if let Some(id) = instance {
                    let why = format!("Host EC2 (instance {id}) terminated.");
                    lost_why.lock().expect("lost hosts lock").insert(node.name_any(), why);
                }
                let _ = lost_tx.unbounded_send(node.name_any());
            } else if instance.is_some() && node_compute_environment(node).is_none() {
                joined_tx.notify_one();
            }
        },
    );
    let (ns_store, ns_writer) = reflector::store();
    let drive_namespaces =
        watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(ns_writer)
            .for_each(|_| ready(()));

    let reporter = Reporter { controller: "barge".into(), instance: Some(options.instance.clone()) };
    let shared = Arc::new(Shared {
        client: client.clone(),
        jobs: jobs.clone(),
        queues,
        compute_environments: ces.clone(),
        pods,
        definitions: definition::Definitions {
            definitions: job_definitions,
            revisions,
            index: revision_index,
        },
        usage,
        tally,
        nodes,
        namespaces: ns_store,
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        providers,
        schedule_now: wake.clone(),
        verdicts: Mutex::default(),
        demand: Mutex::default(),
        blocked: Mutex::default(),
        share_usage: Mutex::default(),
        idle_since: Mutex::default(),
        cannot_grow: Mutex::default(),
        lost_hosts,
        launching: Mutex::default(),
        bursts: burst::Bursts::default(),
        ready: AtomicBool::new(false),
    });

    let (capacity_tx, capacity_rx) = mpsc::unbounded::<ObjectRef<ComputeEnvironment>>();

    let job_controller = job_controller
        .reconcile_on(coalesce::coalesce(trigger_rx, JOB_WINDOW))
        .with_config(kube::runtime::controller::Config::default().concurrency(JOB_CONCURRENCY))
        .run(
            |j, c| crate::metrics::timed("batchjob", job::reconcile(j, c)),
            job::error_policy,
            shared.clone(),
        )
        .for_each(|_| ready(()));
    let ce_controller = ce_controller
        .reconcile_on(capacity_rx)
        .run(
            |ce, c| crate::metrics::timed("computeenvironment", capacity::reconcile(ce, c)),
            capacity::error_policy,
            shared.clone(),
        )
        .for_each(|_| ready(()));

    let jd_controller = jd_controller
        .run(
            |jd, c| crate::metrics::timed("jobdefinition", definition::reconcile(jd, c)),
            definition::error_policy,
            shared.clone(),
        )
        .for_each(|_| ready(()));

    let lost_hosts = {
        let s = shared.clone();
        async move {
            while let Some(node) = lost_rx.next().await {
                for pod in s.pods.state() {
                    if pod.spec.as_ref().and_then(|p| p.node_name.as_deref()) == Some(node.as_str())
                        && let Some(job) = owning_job(&pod)
                    {
                        let _ = owner_tx.unbounded_send(job);
                    }
                }
            }
        }
    };

    let readiness = {
        let s = shared.clone();
        let synced = options.synced.clone();
        async move {
            let _ = tokio::join!(
                s.jobs.wait_until_ready(),
                s.queues.wait_until_ready(),
                s.compute_environments.wait_until_ready(),
                s.pods.wait_until_ready(),
                s.nodes.wait_until_ready(),
                s.namespaces.wait_until_ready(),
                s.definitions.definitions.wait_until_ready(),
                s.definitions.revisions.wait_until_ready(),
            );
            s.ready.store(true, Ordering::Release);
            synced.store(true, Ordering::Release);
            s.schedule_now.notify_one();
            info!(jobs = s.jobs.len(), pods = s.pods.len(), "caches synced; scheduling");
            futures::future::pending::<()>().await
        }
    };

    info!("Barge is running");
    tokio::select! {
        _ = drive_pods => {}, _ = drive_jobs => {},
        _ = drive_queues => {}, _ = drive_nodes => {}, _ = drive_namespaces => {},
        _ = drive_revisions => {},
        _ = job_controller => {}, _ = ce_controller => {}, _ = jd_controller => {},
        _ = scheduling::run(shared.clone(), backlog_rx, verdict_tx, capacity_tx) => {},
        _ = queue::run(shared.clone()) => {},
        _ = readiness => {},
        _ = lost_hosts => {},
        _ = provider_sync(shared.clone(), joined) => {},
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}

/// Lets each provider compare its machines with the cluster: labels the nodes of newly
/// joined instances with their environment, deletes the nodes of instances going away.
async fn provider_sync(ctx: Arc<Shared>, joined: Arc<Notify>) {
    use kube::api::{Patch, PatchParams};
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    loop {
        let _ = tokio::time::timeout(PROVIDER_SYNC, joined.notified()).await;
        if !ctx.ready() {
            continue;
        }
        let ces = ctx.compute_environments.state();
        let nodes = ctx.nodes.state();
        for provider in [ctx.providers.local.as_deref(), ctx.providers.ec2.as_deref()].into_iter().flatten() {
            let report = match provider.sync(&ces, &nodes).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "provider sync failed");
                    continue;
                }
            };
            for (node, ce_name) in report.register {
                let Some(ce) = ces.iter().find(|c| c.name_any() == ce_name) else { continue };
                let patch = serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": node, "labels": local::node_labels(ce)},
                    "spec": {"taints": local::node_taints(ce)},
                });
                let params = PatchParams::apply(crate::FIELD_MANAGER).force();
                match nodes_api.patch(&node, &params, &Patch::Apply(&patch)).await {
                    Ok(_) => info!(%node, ce = %ce_name, "node joined its compute environment"),
                    Err(e) => warn!(%node, error = %e, "could not label a joined node"),
                }
            }
            for (node, why) in report.gone {
                info!(%node, %why, "removing the node of an instance going away");
                ctx.lost_hosts.lock().expect("lost hosts lock").insert(node.clone(), why);
                if let Err(e) = delete_if_present(&nodes_api, &node).await {
                    warn!(%node, error = %e, "could not delete node");
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
}

/// Deletes an object; one already gone is fine.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The BatchJob a Barge pod belongs to.
fn owning_job(pod: &Pod) -> Option<ObjectRef<BatchJob>> {
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "BatchJob")?;
    Some(ObjectRef::new(&owner.name).within(&pod.namespace()?))
}

/// A pod still marked active on a Barge node that no longer exists: its host is lost
/// (the node's pods are only cleaned up later by the pod garbage collector).
pub fn pod_host_lost(ctx: &Shared, pod: &Pod) -> bool {
    pod::pod_is_active(pod)
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| ctx.nodes.get(&ObjectRef::new(n)).is_none())
}

/// The node's allocatable resources, if it says.
pub fn node_allocatable(node: &Node) -> Res {
    let Some(a) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) else {
        return Res::ZERO;
    };
    let get = |k: &str| a.get(k).map(|q| q.0.clone());
    Res::new(
        get("cpu").and_then(|q| crate::resources::parse_millicpu(&q).ok()).unwrap_or(0),
        get("memory").and_then(|q| crate::resources::parse_mib(&q).ok()).unwrap_or(0),
        get(crate::resources::GPU_RESOURCE).and_then(|q| q.parse().ok()).unwrap_or(0),
    )
}

/// vCPUs of the node's capacity (what the instance is sold as).
pub fn node_vcpus(node: &Node) -> u32 {
    node.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("cpu"))
        .and_then(|q| crate::resources::parse_millicpu(&q.0).ok())
        .map_or(0, |m| (m / 1000) as u32)
}

pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn node_is_cordoned(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
        || node.meta().deletion_timestamp.is_some()
}

pub fn node_compute_environment(node: &Node) -> Option<&str> {
    node.labels().get(LABEL_COMPUTE_ENVIRONMENT).map(String::as_str)
}
