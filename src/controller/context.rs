//! What every loop of the operator shares: the stores (the in-memory truth), the cluster
//! view, the scheduling pass's hand-off, and the loops' tunables.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;

use super::backoff::Failures;
use super::burst::Bursts;
use super::revisions::Definitions;
use super::steps::StepWrites;
use super::tally::JobTally;
use super::usage::PodUsage;
use crate::api::{BatchJob, ComputeEnvironment, JobQueue};
use crate::k8s::{node_compute_environment, node_key};
use crate::provider::Providers;
use crate::state::{ClusterState, HandOff, Launching, Verdict};

/// How often each loop looks again, and how much it does at once. The defaults are what
/// Barge runs with; benches and tests may shorten them.
#[derive(Clone, Debug)]
pub struct Tunables {
    /// A job is reconciled at most once per window, a window after its first trigger: its
    /// pod's quick steps (created, bound, started) and an array's many children make one
    /// status write, and a new job is usually admitted before its first status write.
    pub job_window: Duration,
    /// Parallel reconciles of the job controller: status writes are independent.
    pub job_concurrency: u16,
    /// How often providers compare their machines with the cluster's nodes.
    pub provider_sync: Duration,
    /// A scheduling pass runs at least this often, to notice time passing (and lost wake-ups).
    pub scheduling_tick: Duration,
    /// After a wake-up the pass waits this long for more changes, so that a burst makes one pass.
    pub scheduling_debounce: Duration,
    /// Concurrent pod creations: enough to keep the API server busy, few enough not to flood it.
    pub create_concurrency: usize,
    /// An admitted pod not yet seen in the pod store is forgotten after this long.
    pub inflight_ttl: Duration,
    /// Fair-share usage is recorded in the queues' statuses this often: a restart loses at
    /// most this much of it, and a busy queue's status is not rewritten every pass.
    pub usage_record_interval: Duration,
    /// How often an environment is looked at without a trigger (scale-down clocks, status).
    pub capacity_resync: Duration,
    /// Queue statuses are aggregates: refreshing them this often is plenty.
    pub queue_interval: Duration,
    /// The first and the longest wait before a failed reconcile is tried again.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// How long a multi-node job waits for its nodes while smaller jobs behind it take the
    /// nodes that come free (backfill). After that, free nodes are held for it, so a steady
    /// stream of small jobs cannot starve it; meanwhile those jobs keep a cluster busy that
    /// would otherwise idle. Ten minutes: about the wait a gang pays for EC2 to launch its
    /// instances, so that a hold costs no more than the launch it saves.
    pub gang_hold_after: Duration,
    /// Barge binds a job's pod to the node the pass planned for it, on the nodes of managed
    /// environments, instead of asking kube-scheduler (see `pod::bind_to_node`): one request
    /// and one Event fewer per pod, and no wait in the scheduler's queue. `bind-pods=false`
    /// leaves every pod but a multi-node job's to the scheduler.
    pub bind_pods: bool,
    /// Writes a second, across all jobs, of the steps a job passes on its way (RUNNABLE
    /// before its pod exists, STARTING, RUNNING; see `steps`). A job's end, a failed
    /// attempt and why it waits are always written at once. 0: no budget.
    pub step_writes: u16,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            job_window: Duration::from_secs(1),
            job_concurrency: 64,
            provider_sync: Duration::from_secs(5),
            scheduling_tick: Duration::from_secs(2),
            scheduling_debounce: Duration::from_millis(50),
            create_concurrency: 64,
            inflight_ttl: Duration::from_secs(30),
            usage_record_interval: Duration::from_secs(15),
            capacity_resync: Duration::from_secs(5),
            queue_interval: Duration::from_secs(2),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            gang_hold_after: Duration::from_secs(600),
            bind_pods: true,
            step_writes: 20,
        }
    }
}

impl Tunables {
    /// Sets one tunable from `name=value`: a duration (`500ms`, `2s`, `5m`), for the two
    /// concurrencies and `step-writes` a count, for `bind-pods` true or false. Names are the fields', with `-` or `_`.
    pub fn set(&mut self, setting: &str) -> Result<(), String> {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?}: expected name=value, e.g. scheduling-tick=500ms"))?;
        let count = || value.parse::<u16>().map_err(|_| format!("{name}: {value:?} is not a count"));
        let duration = || {
            parse_duration(value)
                .ok_or_else(|| format!("{name}: {value:?} is not a duration such as 500ms, 2s or 5m"))
        };
        match name.replace('-', "_").as_str() {
            "job_window" => self.job_window = duration()?,
            "job_concurrency" => self.job_concurrency = count()?.max(1),
            "provider_sync" => self.provider_sync = duration()?,
            "scheduling_tick" => self.scheduling_tick = duration()?,
            "scheduling_debounce" => self.scheduling_debounce = duration()?,
            "create_concurrency" => self.create_concurrency = count()?.max(1) as usize,
            "inflight_ttl" => self.inflight_ttl = duration()?,
            "usage_record_interval" => self.usage_record_interval = duration()?,
            "capacity_resync" => self.capacity_resync = duration()?,
            "queue_interval" => self.queue_interval = duration()?,
            "retry_first" => self.retry_first = duration()?,
            "retry_max" => self.retry_max = duration()?,
            "gang_hold_after" => self.gang_hold_after = duration()?,
            "step_writes" => self.step_writes = count()?,
            "bind_pods" => {
                self.bind_pods =
                    value.parse().map_err(|_| format!("{name}: {value:?} is not true or false"))?
            }
            _ => return Err(format!("{name}: no such tunable")),
        }
        Ok(())
    }
}

/// `500ms`, `2s` or `5m`.
fn parse_duration(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = v[..split].parse().ok()?;
    match &v[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

/// State shared by every loop: the stores (the in-memory truth), the cluster view and the
/// scheduling pass's hand-off.
pub struct Shared {
    pub client: Client,
    pub jobs: Store<BatchJob>,
    pub queues: Store<JobQueue>,
    pub compute_environments: Store<ComputeEnvironment>,
    pub pods: Store<Pod>,
    /// Job definitions and their registered revisions.
    pub definitions: Definitions,
    /// What the active pods of `pods` hold, kept from the pod watch.
    pub usage: Arc<Mutex<PodUsage>>,
    /// Jobs per queue and phase, kept from the job watch (for the queues' statuses).
    pub tally: Arc<Mutex<JobTally>>,
    pub nodes: Store<Node>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// ServiceAccounts, each with only the IAM role annotations it carries.
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    /// The AWS region EFS volumes are reached in.
    pub region: String,
    /// Events of queues and compute environments (few objects: repeats become a series).
    pub recorder: Recorder,
    /// Who publishes Barge's events; each job's events get a recorder of their own.
    pub reporter: Reporter,
    pub providers: Providers,
    /// Rings when something the scheduling pass reads has changed.
    pub schedule_now: Arc<Notify>,
    /// Nodes launching, idle and lost; environments that cannot grow.
    pub cluster: Arc<ClusterState>,
    /// Verdicts, demand, blocked queues and fair-share usage from the scheduling pass.
    pub handoff: HandOff,
    /// The scheduling pass's pod creations, which job status writes yield to.
    pub bursts: Bursts,
    /// The budget for writing the steps jobs pass on their way.
    pub steps: StepWrites<ObjectRef<BatchJob>>,
    /// Per object, how often its reconcile has failed in a row (for the backoff).
    pub failures: Failures,
    pub tunables: Tunables,
    /// Where containers' output is archived, if anywhere.
    pub archive: Option<Arc<super::archive::Archiver>>,
    /// Set once every store has synced (also `/readyz`).
    pub(super) ready: Arc<AtomicBool>,
}

impl Shared {
    /// The ServiceAccount of `ns` bound to IAM role `role` (the first by name, if several).
    pub fn role_account(&self, ns: &str, role: &str) -> Option<String> {
        crate::api::container::role_account(
            self.service_accounts.state().iter().map(|sa| &sa.metadata),
            ns,
            role,
        )
    }

    /// What a failed reconcile of `key` waits for: a change to the object when trying
    /// again cannot help, else a backoff of its own.
    pub fn retry_after(&self, key: &str, err: &crate::Error) -> Action {
        if !err.retryable() {
            return Action::await_change();
        }
        Action::requeue(self.failures.failed(key, self.tunables.retry_first, self.tunables.retry_max))
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(super) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn verdict(&self, job: &BatchJob) -> Option<Verdict> {
        self.handoff.verdict(job.uid()?.as_str())
    }

    /// Launching nodes of `ce` still missing from the node store.
    pub fn launching(&self, ce: &str) -> Vec<Launching> {
        // A launch stops counting as coming once its node has joined its environment.
        let joined = self
            .nodes
            .state()
            .iter()
            .filter(|n| node_compute_environment(n) == Some(ce))
            .map(|n| node_key(n))
            .collect();
        let provider = self
            .compute_environments
            .get(&ObjectRef::new(ce))
            .and_then(|c| self.providers.get(c.spec.provider));
        self.cluster.launching(ce, &joined, |key| provider.is_some_and(|p| p.launch_failed(key)))
    }
}

/// The key an object's failures are counted under (see `Shared::retry_after`).
pub fn failure_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), obj.namespace().unwrap_or_default(), obj.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunable_is_set_by_name_with_a_duration_or_a_count() {
        let mut t = Tunables::default();
        t.set("scheduling-tick=500ms").unwrap();
        t.set("retry_max=5m").unwrap();
        t.set("create-concurrency=8").unwrap();
        assert_eq!(t.scheduling_tick, Duration::from_millis(500));
        assert_eq!(t.retry_max, Duration::from_secs(300));
        assert_eq!(t.create_concurrency, 8);
        assert_eq!(t.job_window, Tunables::default().job_window, "the rest keep their defaults");
        assert!(t.set("scheduling-tick=fast").unwrap_err().contains("not a duration"));
        assert!(t.set("tick=1s").unwrap_err().contains("no such tunable"));
        assert!(t.set("scheduling-tick").unwrap_err().contains("name=value"));
        assert!(t.bind_pods);
        t.set("bind-pods=false").unwrap();
        assert!(!t.bind_pods);
        assert!(t.set("bind-pods=maybe").unwrap_err().contains("true or false"));
    }
}
