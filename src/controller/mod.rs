//! The I/O shells around the pure core, and their wiring. One reflector per kind feeds
//! every loop: the BatchJob lifecycle controller, the scheduling pass, the
//! ComputeEnvironment capacity controller and the JobQueue status loop. Nothing lists in a loop.

pub mod archive;
pub mod array;
pub mod backlog;
pub mod backoff;
pub mod burst;
pub mod capacity;
pub mod coalesce;
pub mod container;
pub mod context;
pub mod definition;
pub mod environment;
pub mod facts;
#[cfg(test)]
pub mod fixtures;
pub mod interruptions;
pub mod job;
pub mod nodes;
pub mod pod;
pub mod queue;
pub mod revisions;
pub mod scheduling;
pub mod steps;
pub mod tally;
pub mod triggers;
pub mod unmanaged;
pub mod usage;
mod watch;

pub(crate) use watch::backoff as watch_backoff;

use std::future::ready;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tracing::info;

use crate::api::{
    BatchJob, ComputeEnvironment, Interruption, JobDefinition, JobQueue, JobTrigger, LABEL_JOB_UID,
};
use crate::k8s::{lost_host_reason, node_compute_environment, node_instance_id, node_interruption};
use crate::provider::Providers;
use crate::state::{ClusterState, HandOff};
use backlog::Change;
use pod::owning_job;
use revisions::Definitions;
use tally::JobTally;
use usage::PodUsage;
use watch::{Seen, plain_watch};

pub use crate::state::Verdict;
pub use context::{Shared, Tunables, failure_key};
pub use nodes::pod_host_lost;
pub use watch::{prune_job, prune_object};

/// Options of the `run` command.
#[derive(Clone, Debug)]
pub struct Options {
    /// Identifies this operator in events.
    pub instance: String,
    /// Set once every store has synced (for `/readyz`).
    pub synced: Arc<AtomicBool>,
    pub tunables: Tunables,
    /// SQS queues EC2's instance notices arrive on (Spot interruptions, rebalance
    /// recommendations, state changes), and how long each receive waits for one.
    pub notice_queues: Vec<Arc<crate::provider::sqs::SqsQueue>>,
    pub notice_wait: std::time::Duration,
    /// The AWS region EFS volumes are reached in (`AWS_REGION`).
    pub region: String,
    /// Where containers' output is archived, and how often a running one is read.
    pub archive: Option<(crate::archive::s3::Bucket, archive::Settings)>,
    /// Whether a JobTrigger naming no credentials Secret reads its queue with the operator's
    /// own AWS credentials.
    pub trigger_operator_credentials: bool,
}

type Drive = BoxFuture<'static, ()>;

/// The channels the watches feed the loops through.
struct Feeds {
    /// Every trigger of the job controller (the job's own changes, its pods, the scheduling
    /// pass's verdicts) goes through one unbounded channel and the coalescer, so that a busy
    /// controller never holds up a watch (and with it every store reader).
    jobs: mpsc::UnboundedSender<ObjectRef<BatchJob>>,
    /// The scheduling pass's backlog hears of every job and pod change.
    backlog: tokio::sync::mpsc::UnboundedSender<Change>,
    /// Nodes that went away.
    lost: mpsc::UnboundedSender<String>,
    /// Rings when a cloud instance's node joins without its environment's label.
    joined: Arc<Notify>,
    wake: Arc<Notify>,
}

/// The job watch, with the tally of jobs per queue and phase it keeps.
fn watch_jobs(
    client: &Client,
    feeds: &Feeds,
    drives: &mut Vec<Drive>,
) -> (Store<BatchJob>, Arc<Mutex<JobTally>>) {
    let tally = Arc::new(Mutex::new(JobTally::default()));
    let tally_tx = tally.clone();
    let (trigger_tx, backlog_tx) = (feeds.jobs.clone(), feeds.backlog.clone());
    // A new job wakes the scheduling pass at once: admission does not wait for a status write.
    let (jobs, drive) = plain_watch(
        Api::<BatchJob>::all(client.clone()),
        watcher::Config::default(),
        feeds.wake.clone(),
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
    drives.push(drive.boxed());
    (jobs, tally)
}

/// The watch of Barge's pods, with what their active pods hold.
fn watch_pods(client: &Client, feeds: &Feeds, drives: &mut Vec<Drive>) -> (Store<Pod>, Arc<Mutex<PodUsage>>) {
    let usage = Arc::new(Mutex::new(PodUsage::default()));
    let usage_tx = usage.clone();
    let (trigger_tx, backlog_tx) = (feeds.jobs.clone(), feeds.backlog.clone());
    let (pods, drive) = plain_watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(LABEL_JOB_UID),
        feeds.wake.clone(),
        |_| {},
        |_, _| {},
        move |seen: Seen<'_, Pod>| {
            let mut usage = usage_tx.lock().expect("pod usage lock");
            let pod = match seen {
                Seen::Applied(pod) => {
                    usage.applied(pod);
                    pod
                }
                Seen::Deleted(pod) => {
                    usage.deleted(pod);
                    pod
                }
                Seen::Relisting => return usage.relisting(),
                Seen::Relisted => {
                    usage.relisted();
                    let _ = backlog_tx.send(Change::All);
                    return;
                }
            };
            drop(usage);
            if let Some(job) = owning_job(pod) {
                let _ = backlog_tx.send(Change::Job(job.clone()));
                let _ = trigger_tx.unbounded_send(job);
            }
        },
    );
    drives.push(drive.boxed());
    (pods, usage)
}

/// The watch of every node (a cloud instance's node joins before Barge labels it). A node
/// that goes away takes its pods' attempts with it: their jobs must hear of it.
fn watch_nodes(
    client: &Client,
    feeds: &Feeds,
    cluster: &Arc<ClusterState>,
    drives: &mut Vec<Drive>,
) -> Store<Node> {
    let (lost_tx, joined_tx, cluster) = (feeds.lost.clone(), feeds.joined.clone(), cluster.clone());
    let (nodes, drive) = plain_watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        feeds.wake.clone(),
        |_| {},
        |_, _| {},
        move |seen: Seen<'_, Node>| {
            let (node, deleted) = match seen {
                Seen::Applied(node) => (node, false),
                Seen::Deleted(node) => (node, true),
                Seen::Relisting | Seen::Relisted => return,
            };
            let instance = node_instance_id(node);
            if deleted {
                // Recorded before any job can see the node gone.
                if let Some(why) = lost_host_reason(node) {
                    cluster.host_lost(&node.name_any(), why);
                }
                cluster.node_gone(&node.name_any());
                let _ = lost_tx.unbounded_send(node.name_any());
            } else if node_interruption(node) == Some(Interruption::Spot) {
                // Also after a restart: the attempts stopped on it end as a Spot interruption.
                if let Some(why) = lost_host_reason(node) {
                    cluster.host_lost(&node.name_any(), why);
                }
            } else if instance.is_some() && node_compute_environment(node).is_none() {
                joined_tx.notify_one();
            }
        },
    );
    drives.push(drive.boxed());
    nodes
}

/// ServiceAccounts, of which the store keeps only the IAM role each is bound to (a job's
/// `jobRoleArn` runs as the one of its namespace bound to that role).
fn watch_role_accounts(
    client: &Client,
    feeds: &Feeds,
    drives: &mut Vec<Drive>,
) -> Store<PartialObjectMeta<ServiceAccount>> {
    let (accounts, writer) = reflector::store();
    let backlog = feeds.backlog.clone();
    let drive =
        watcher(Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()), watcher::Config::default())
            .backoff(watch::backoff())
            .modify(|sa| {
                sa.metadata.managed_fields = None;
                sa.metadata.labels = None;
                if let Some(a) = sa.metadata.annotations.as_mut() {
                    a.retain(|k, _| crate::api::container::role_annotation(k));
                }
            })
            .reflect(writer)
            .for_each(move |ev| {
                // A job waiting for its role's account is looked at again once one is bound.
                if let Ok(watcher::Event::Apply(sa) | watcher::Event::Delete(sa)) = &ev
                    && sa.metadata.annotations.as_ref().is_some_and(|a| !a.is_empty())
                {
                    let _ = backlog.send(Change::All);
                }
                ready(())
            });
    drives.push(drive.boxed());
    accounts
}

/// Job definitions (their controller's store) and their revisions with the revision index.
fn watch_definitions(
    client: &Client,
    feeds: &Feeds,
    jd_controller: &Controller<JobDefinition>,
    drives: &mut Vec<Drive>,
) -> Definitions {
    let index = Arc::new(revisions::RevisionIndex::default());
    let index_tx = index.clone();
    let (revisions, drive) = plain_watch(
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default().labels(revisions::LABEL_JOB_DEFINITION),
        feeds.wake.clone(),
        |_| {},
        |_, _| {},
        move |seen: Seen<'_, ControllerRevision>| match seen {
            Seen::Applied(cr) => index_tx.applied(cr),
            Seen::Deleted(cr) => index_tx.deleted(cr),
            Seen::Relisting | Seen::Relisted => {}
        },
    );
    drives.push(drive.boxed());
    Definitions { definitions: jd_controller.store(), revisions, index }
}

/// Runs every loop of the operator until one of them ends (they do not, short of a signal).
pub async fn run(client: Client, providers: Providers, options: Options) -> crate::Result<()> {
    let (jobs_tx, jobs_rx) = mpsc::unbounded::<ObjectRef<BatchJob>>();
    let (backlog_tx, backlog_rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let (lost_tx, lost_rx) = mpsc::unbounded::<String>();
    let feeds = Feeds {
        jobs: jobs_tx,
        backlog: backlog_tx,
        lost: lost_tx,
        joined: Arc::default(),
        wake: Arc::default(),
    };
    let cluster = Arc::new(ClusterState::default());
    let mut drives: Vec<Drive> = Vec::new();

    let (jobs, tally) = watch_jobs(&client, &feeds, &mut drives);
    let (pods, usage) = watch_pods(&client, &feeds, &mut drives);
    let nodes = watch_nodes(&client, &feeds, &cluster, &mut drives);
    let jd_controller =
        Controller::new(Api::<JobDefinition>::all(client.clone()), watcher::Config::default())
            .trigger_backoff(watch::backoff());
    let definitions = watch_definitions(&client, &feeds, &jd_controller, &mut drives);
    let ce_controller =
        Controller::new(Api::<ComputeEnvironment>::all(client.clone()), watcher::Config::default())
            .trigger_backoff(watch::backoff());
    let (queues, drive) = plain_watch(
        Api::<JobQueue>::all(client.clone()),
        watcher::Config::default(),
        feeds.wake.clone(),
        |_| {},
        |_, _| {},
        |_| {},
    );
    drives.push(drive.boxed());
    let (namespaces, ns_writer) = reflector::store();
    let drive = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
        .backoff(watch::backoff())
        .reflect(ns_writer)
        .for_each(|_| ready(()));
    drives.push(drive.boxed());
    let service_accounts = watch_role_accounts(&client, &feeds, &mut drives);
    let triggers_changed = Arc::new(Notify::new());
    let (triggers, drive) = plain_watch(
        Api::<JobTrigger>::all(client.clone()),
        watcher::Config::default(),
        triggers_changed.clone(),
        |_| {},
        |_, _| {},
        |_| {},
    );
    drives.push(drive.boxed());

    let reporter = Reporter { controller: "barge".into(), instance: Some(options.instance.clone()) };
    let shared = Arc::new(Shared {
        client: client.clone(),
        jobs: jobs.clone(),
        queues,
        compute_environments: ce_controller.store(),
        pods,
        definitions,
        usage,
        tally,
        nodes,
        namespaces,
        service_accounts,
        region: options.region.clone(),
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        providers,
        schedule_now: feeds.wake.clone(),
        cluster,
        handoff: HandOff::default(),
        bursts: burst::Bursts::default(),
        steps: steps::StepWrites::new(options.tunables.step_writes.into()),
        failures: backoff::Failures::default(),
        tunables: options.tunables.clone(),
        archive: options
            .archive
            .clone()
            .map(|(bucket, settings)| archive::Archiver::new(client.clone(), bucket, settings)),
        ready: options.synced.clone(),
    });
    let (capacity_tx, capacity_rx) = mpsc::unbounded::<ObjectRef<ComputeEnvironment>>();
    let t = &shared.tunables;
    let job_controller = Controller::for_stream(futures::stream::pending(), jobs)
        .reconcile_on(coalesce::coalesce(jobs_rx, t.job_window))
        .with_config(kube::runtime::controller::Config::default().concurrency(t.job_concurrency))
        .run(
            |j, c| reconciled("batchjob", c.clone(), failure_key(j.as_ref()), job::reconcile(j, c)),
            job::error_policy,
            shared.clone(),
        )
        .for_each(|_| ready(()));
    let ce_controller = ce_controller
        .reconcile_on(capacity_rx)
        .run(
            |ce, c| {
                reconciled(
                    "computeenvironment",
                    c.clone(),
                    failure_key(ce.as_ref()),
                    capacity::reconcile(ce, c),
                )
            },
            capacity::error_policy,
            shared.clone(),
        )
        .for_each(|_| ready(()));
    let jd_controller = jd_controller
        .run(
            |jd, c| {
                reconciled("jobdefinition", c.clone(), failure_key(jd.as_ref()), definition::reconcile(jd, c))
            },
            definition::error_policy,
            shared.clone(),
        )
        .for_each(|_| ready(()));
    drives.extend([
        job_controller.boxed(),
        ce_controller.boxed(),
        jd_controller.boxed(),
        scheduling::run(shared.clone(), backlog_rx, feeds.jobs.clone(), capacity_tx).boxed(),
        queue::run(shared.clone()).boxed(),
        readiness(shared.clone()).boxed(),
        nodes::wake_jobs_of_lost_nodes(shared.clone(), lost_rx, feeds.jobs.clone()).boxed(),
        nodes::provider_sync(shared.clone(), feeds.joined.clone()).boxed(),
        interruptions::run(shared.clone(), options.notice_queues, options.notice_wait).boxed(),
        archive::run(shared.clone()).boxed(),
        triggers::run(shared.clone(), triggers, triggers_changed, options.trigger_operator_credentials)
            .boxed(),
        {
            let (s, tx) = (shared.clone(), feeds.jobs.clone());
            async move { s.steps.serve(tx).await }.boxed()
        },
    ]);

    info!("Barge is running");
    tokio::select! {
        (_, index, _) = futures::future::select_all(drives) => {
            // The loops never end on their own: one that did is a defect, and a restart
            // (the Deployment's) is the way back.
            tracing::error!(index, "one of the operator's loops ended; stopping");
            return Err(crate::Error::Internal(format!("loop {index} of the operator ended")));
        },
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}

/// A reconcile, timed for `/metrics`; one that succeeded starts its object's backoff over.
async fn reconciled(
    controller: &'static str,
    ctx: Arc<Shared>,
    key: String,
    run: impl std::future::Future<Output = crate::Result<kube::runtime::controller::Action>>,
) -> crate::Result<kube::runtime::controller::Action> {
    let out = crate::metrics::timed(controller, run).await;
    if out.is_ok() {
        ctx.failures.succeeded(&key);
    }
    out
}

/// Marks the operator ready once every store has synced, and starts scheduling.
async fn readiness(s: Arc<Shared>) {
    let _ = tokio::join!(
        s.jobs.wait_until_ready(),
        s.queues.wait_until_ready(),
        s.compute_environments.wait_until_ready(),
        s.pods.wait_until_ready(),
        s.nodes.wait_until_ready(),
        s.namespaces.wait_until_ready(),
        s.service_accounts.wait_until_ready(),
        s.definitions.definitions.wait_until_ready(),
        s.definitions.revisions.wait_until_ready(),
    );
    s.set_ready();
    s.schedule_now.notify_one();
    info!(jobs = s.jobs.len(), pods = s.pods.len(), "caches synced; scheduling");
    futures::future::pending::<()>().await
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
}
