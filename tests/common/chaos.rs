//! The chaos scenarios' engine, shared by `tests/chaos.rs` (short runs in `make test`) and
//! `benches/chaos.rs` (`make chaos`): a workload of short jobs on a local compute
//! environment, operators run the way a Deployment runs them (restarted when they exit), a
//! tracker fed by watches that survives the apiserver going away, and the outcome counted
//! from what the cluster holds at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use barge::api::batch_job::JobPhase;
use barge::api::{BatchJob, ComputeEnvironment, JobQueue, LABEL_JOB_UID};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{apply, log_path, namespace, spawn_operator_with, suffix};

/// The sim annotation that says how long a job's container runs on a kwok node.
const DURATION: &str = "sim.barge.dev/duration";

/// One scenario's result, as the README and `bench/results/chaos.md` show it.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub scenario: String,
    pub submitted: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Submitted and never finished by the deadline.
    pub lost: usize,
    /// A second pod for one attempt: a pod name seen with two UIDs, or an attempt with two
    /// pods.
    pub duplicated: usize,
    /// Attempts beyond the first (none of these scenarios fails a container).
    pub retried: usize,
    /// From each fault's end to the next job finishing: the median and the longest.
    pub recovery: Vec<Duration>,
    pub took: Duration,
    /// `panicked at` lines in the operators' logs.
    pub panics: usize,
    /// Operators that exited without being killed.
    pub crashes: usize,
    /// For the ec2 scenario: instances still tagged for the environment after it was deleted.
    pub leaked: Option<usize>,
    /// Free-form facts of the scenario (e.g. how many objects the API server refused).
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn recovery_median(&self) -> Option<Duration> {
        let mut r = self.recovery.clone();
        r.sort();
        r.get(r.len() / 2).copied()
    }

    pub fn recovery_max(&self) -> Option<Duration> {
        self.recovery.iter().max().copied()
    }

    pub const CSV_HEADER: &str = "scenario,submitted,succeeded,failed,lost,duplicated,retried,recovery_p50_s,recovery_max_s,took_s,panics,crashes,leaked";

    pub fn csv(&self) -> String {
        let secs = |d: Option<Duration>| d.map_or(String::new(), |d| format!("{:.1}", d.as_secs_f64()));
        format!(
            "\"{}\",{},{},{},{},{},{},{},{},{:.1},{},{},{}",
            self.scenario,
            self.submitted,
            self.succeeded,
            self.failed,
            self.lost,
            self.duplicated,
            self.retried,
            secs(self.recovery_median()),
            secs(self.recovery_max()),
            self.took.as_secs_f64(),
            self.panics,
            self.crashes,
            self.leaked.map_or(String::new(), |n| n.to_string()),
        )
    }

    pub const MD_HEADER: &str = "| scenario | submitted | SUCCEEDED | FAILED | lost | duplicated | retried | recovery p50 / max | took | panics | crashes | leaked |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

    pub fn md(&self) -> String {
        let secs = |d: Option<Duration>| d.map_or("–".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.0} s | {} | {} | {} |",
            self.scenario,
            self.submitted,
            self.succeeded,
            self.failed,
            self.lost,
            self.duplicated,
            self.retried,
            secs(self.recovery_median()),
            secs(self.recovery_max()),
            self.took.as_secs_f64(),
            self.panics,
            self.crashes,
            self.leaked.map_or("–".to_string(), |n| n.to_string()),
        )
    }

    /// Nothing lost, doubled or crashed: what every scenario must hold.
    pub fn assert_clean(&self) {
        assert_eq!(self.lost, 0, "{self:#?}");
        assert_eq!(self.duplicated, 0, "{self:#?}");
        assert_eq!(self.panics, 0, "{self:#?}");
        assert_eq!(self.crashes, 0, "{self:#?}");
        assert_eq!(self.leaked.unwrap_or(0), 0, "{self:#?}");
    }
}

/// Operators run as a Deployment runs them: one that exits is started again after a second
/// (and counted as a crash); one this harness kills is started again too, but not counted.
pub struct Operators {
    slots: Arc<Mutex<Vec<Slot>>>,
    supervisor: tokio::task::JoinHandle<()>,
    logs: Vec<String>,
    lease_ns: String,
}

impl Operators {
    /// The namespace of the replicas' leader Lease.
    pub fn lease_namespace(&self) -> &str {
        &self.lease_ns
    }
}

struct Slot {
    name: String,
    log: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    killed: bool,
    crashes: usize,
    exited_at: Option<Instant>,
    /// Not started again before this (a replica whose node is gone).
    hold_until: Option<Instant>,
}

impl Slot {
    fn spawn(&mut self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.child = Some(spawn_operator_with(&self.log, &env));
        self.killed = false;
        self.exited_at = None;
    }
}

impl Operators {
    /// `replicas` operators (with leader election on the namespace's Lease when more than
    /// one), each logging to `<prefix>-<i>`.
    pub fn start(prefix: &str, replicas: usize, lease_ns: &str, extra: &[(&str, &str)]) -> Operators {
        let mut slots = Vec::new();
        let mut logs = Vec::new();
        for i in 0..replicas {
            let log = format!("{prefix}-{i}");
            let _ = std::fs::remove_file(log_path(&log));
            let name = format!("{prefix}-{i}");
            let mut env: Vec<(String, String)> = vec![("POD_NAME".into(), name.clone())];
            if replicas > 1 {
                env.push(("BARGE_LEADER_ELECT".into(), "true".into()));
                env.push(("POD_NAMESPACE".into(), lease_ns.into()));
                env.push(("BARGE_LEASE_DURATION_SECONDS".into(), "6".into()));
            }
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let mut slot = Slot {
                name,
                log: log.clone(),
                env,
                child: None,
                killed: false,
                crashes: 0,
                exited_at: None,
                hold_until: None,
            };
            slot.spawn();
            slots.push(slot);
            logs.push(log);
        }
        let slots = Arc::new(Mutex::new(slots));
        let watched = slots.clone();
        let supervisor = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut slots = watched.lock().unwrap();
                for slot in slots.iter_mut() {
                    let exited = slot.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
                    if exited {
                        slot.child = None;
                        slot.exited_at = Some(Instant::now());
                        if !slot.killed {
                            slot.crashes += 1;
                        }
                    }
                    let held = slot.hold_until.is_some_and(|t| Instant::now() < t);
                    if slot.child.is_none()
                        && !held
                        && slot.exited_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        slot.spawn();
                    }
                }
            }
        });
        Operators { slots, supervisor, logs, lease_ns: lease_ns.to_string() }
    }

    /// SIGKILLs replica `i`; the supervisor starts it again a second later.
    pub fn kill(&self, i: usize) {
        self.kill_for(i, Duration::ZERO);
    }

    /// SIGKILLs replica `i` and starts it again only after `down` (as when its node is lost:
    /// a replica started again at once under the same name would take its own Lease back).
    pub fn kill_for(&self, i: usize, down: Duration) {
        let mut slots = self.slots.lock().unwrap();
        let slot = &mut slots[i];
        slot.killed = true;
        slot.hold_until = Some(Instant::now() + down);
        if let Some(c) = slot.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// The replica holding the Lease, by its name in `holderIdentity`.
    pub async fn leader(&self, client: &Client, lease_ns: &str) -> Option<usize> {
        let lease = Api::<Lease>::namespaced(client.clone(), lease_ns).get("barge-leader").await.ok()?;
        let holder = lease.spec?.holder_identity?;
        self.slots.lock().unwrap().iter().position(|s| s.name == holder)
    }

    /// Stops every replica and counts panics and crashes into `outcome`.
    pub fn stop(self, outcome: &mut Outcome) {
        self.supervisor.abort();
        let mut slots = self.slots.lock().unwrap();
        for slot in slots.iter_mut() {
            outcome.crashes += slot.crashes;
            if let Some(mut c) = slot.child.take() {
                // Exited on its own just now, between two supervisor looks?
                if c.try_wait().ok().flatten().is_some() && !slot.killed {
                    outcome.crashes += 1;
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        outcome.panics += self.logs.iter().map(|l| panics_in(&log_path(l))).sum::<usize>();
    }
}

/// `panicked at` lines in a log.
pub fn panics_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().filter(|l| l.contains("panicked at")).count())
}

/// What the watches saw: when each job finished, and every UID each pod name had.
#[derive(Default)]
struct Seen {
    finished: BTreeMap<String, Instant>,
    pod_uids: BTreeMap<String, BTreeSet<String>>,
}

/// Watches one namespace's BatchJobs and pods for the whole scenario; the watches
/// re-list after the apiserver comes back, as kube's watcher does.
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Tracker {
    pub fn start(client: &Client, ns: &str) -> Tracker {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let s = seen.clone();
        let job_task = tokio::spawn(async move {
            let mut stream =
                watcher(jobs, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while let Some(next) = stream.next().await {
                let Ok(job) = next else { continue };
                if job.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
                    s.lock().unwrap().finished.entry(job.name_any()).or_insert_with(Instant::now);
                }
            }
        });
        let s = seen.clone();
        let pod_task = tokio::spawn(async move {
            let config = watcher::Config::default().labels(LABEL_JOB_UID);
            let mut stream = watcher(pods, config).default_backoff().applied_objects().boxed();
            while let Some(next) = stream.next().await {
                let Ok(pod) = next else { continue };
                if let Some(uid) = pod.uid() {
                    s.lock().unwrap().pod_uids.entry(pod.name_any()).or_default().insert(uid);
                }
            }
        });
        Tracker { seen, tasks: vec![job_task, pod_task] }
    }

    pub fn finished(&self) -> usize {
        self.seen.lock().unwrap().finished.len()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// One scenario's corner: a namespace, a local environment of `vcpus` (all of it kept up,
/// so the run measures Barge and not node start-up) and a queue.
#[derive(Clone)]
pub struct Workload {
    pub client: Client,
    pub ns: String,
    pub tag: String,
    pub jobs: Api<BatchJob>,
    pub pods: Api<Pod>,
}

impl Workload {
    pub async fn new(client: &Client, prefix: &str, vcpus: u32) -> Workload {
        Workload::with_environment(
            client,
            prefix,
            json!({"instanceTypes": ["m6i.xlarge"], "minvCpus": vcpus, "maxvCpus": vcpus}),
        )
        .await
    }

    /// The same with an environment of `ce_spec`.
    pub async fn with_environment(client: &Client, prefix: &str, ce_spec: Value) -> Workload {
        let ns = namespace(client, prefix).await;
        let tag = format!("{prefix}-{}", suffix());
        let ces: Api<ComputeEnvironment> = Api::all(client.clone());
        let queues: Api<JobQueue> = Api::all(client.clone());
        apply(
            &ces,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "ComputeEnvironment",
            "metadata": {"name": tag}, "spec": ce_spec}),
        )
        .await
        .unwrap();
        apply(
            &queues,
            json!({"apiVersion": "barge.dev/v1alpha1", "kind": "JobQueue",
            "metadata": {"name": tag},
            "spec": {"priority": 1, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": tag}]}}),
        )
        .await
        .unwrap();
        Workload {
            jobs: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            client: client.clone(),
            ns,
            tag,
        }
    }

    /// A one-vCPU job that runs `secs` on its simulated node.
    pub fn job(&self, i: usize, secs: u64) -> BatchJob {
        serde_json::from_value(json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": format!("j{i:05}"), "annotations": {DURATION: format!("{secs}s")}},
            "spec": {"jobQueue": self.tag, "container": {"image": "busybox",
                "resources": {"vcpus": 1, "memory": "1Gi"}}}}))
        .unwrap()
    }

    /// Creates jobs `range`, 16 at a time, each retried until the apiserver takes it (a
    /// fault may be under way): returns how many were created.
    pub async fn submit(&self, range: std::ops::Range<usize>, secs: u64) -> usize {
        self.submit_jobs(range.map(|i| self.job(i, secs)).collect()).await
    }

    /// Creates `jobs` as [`Workload::submit`] does.
    pub async fn submit_jobs(&self, all: Vec<BatchJob>) -> usize {
        futures::stream::iter(all)
            .map(|job| {
                let jobs = self.jobs.clone();
                async move {
                    for _ in 0..120 {
                        match jobs.create(&PostParams::default(), &job).await {
                            Ok(_) => return 1,
                            Err(kube::Error::Api(e)) if e.code == 409 => return 1,
                            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    }
                    0
                }
            })
            .buffer_unordered(16)
            .fold(0, |n, c| async move { n + c })
            .await
    }

    /// Waits until `submitted` jobs finished or `deadline` passed.
    pub async fn wait_finished(&self, tracker: &Tracker, submitted: usize, deadline: Duration) {
        let start = Instant::now();
        while tracker.finished() < submitted && start.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Counts what the cluster holds now into an outcome.
    pub async fn outcome(
        &self,
        scenario: &str,
        submitted: usize,
        tracker: &Tracker,
        fault_ends: &[SystemTime],
    ) -> Outcome {
        let jobs = list_all(&self.jobs).await;
        let pods = list_all(&self.pods).await;
        let mut out = Outcome { scenario: scenario.into(), submitted, ..Default::default() };
        let mut pods_per_attempt: BTreeMap<String, usize> = BTreeMap::new();
        for p in &pods {
            *pods_per_attempt.entry(p.name_any()).or_default() += 1;
        }
        for j in &jobs {
            let s = j.status.clone().unwrap_or_default();
            match s.phase {
                JobPhase::Succeeded => out.succeeded += 1,
                JobPhase::Failed => out.failed += 1,
                _ => out.lost += 1,
            }
            out.retried += s.attempts.len().saturating_sub(1);
        }
        out.lost += submitted.saturating_sub(jobs.len());
        let seen = tracker.seen.lock().unwrap();
        out.duplicated = seen.pod_uids.values().filter(|uids| uids.len() > 1).count()
            + pods_per_attempt.values().filter(|n| **n > 1).count();
        drop(seen);
        out.recovery = recoveries(&jobs, fault_ends);
        out
    }

    /// Deletes the scenario's namespace, queue and environment (waiting for the
    /// environment's nodes to go).
    pub async fn cleanup(&self) {
        let ces: Api<ComputeEnvironment> = Api::all(self.client.clone());
        let queues: Api<JobQueue> = Api::all(self.client.clone());
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = self.jobs.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
        let _ = queues.delete(&self.tag, &DeleteParams::default()).await;
        let _ = ces.delete(&self.tag, &DeleteParams::default()).await;
    }
}

/// For each fault's end, how long until Barge next wrote a job's status: the time of each
/// job's last status write is in its managedFields, to the second. Only writes in a second
/// that began after the fault's end count, and each is taken at that second's end, so each
/// figure is an upper bound, at most a second or two above the truth. This is the
/// operator's own recovery, not how soon this harness's watches reconnect.
fn recoveries(jobs: &[BatchJob], fault_ends: &[SystemTime]) -> Vec<Duration> {
    let writes: Vec<i64> = jobs
        .iter()
        .flat_map(|j| j.managed_fields().iter())
        .filter(|m| {
            m.manager.as_deref() == Some(barge::FIELD_MANAGER) && m.subresource.as_deref() == Some("status")
        })
        .filter_map(|m| m.time.as_ref().map(|t| t.0.as_millisecond()))
        .collect();
    fault_ends
        .iter()
        .filter_map(|end| {
            let end = end.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64;
            let next = writes.iter().filter(|w| **w >= end).min()?;
            Some(Duration::from_millis((next + 1000 - end) as u64))
        })
        .collect()
}

/// Every object, paged, retrying while the apiserver does not answer.
pub async fn list_all<K>(api: &Api<K>) -> Vec<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..120 {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let ok = loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            match api.list(&lp).await {
                Ok(page) => {
                    out.extend(page.items);
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(t) => token = Some(t),
                        None => break true,
                    }
                }
                Err(_) => break false,
            }
        };
        if ok {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the apiserver did not answer a list for a minute");
}

/// `hack/cluster.sh <args>` for the cluster this run uses (`BARGE_CLUSTER_DIR`).
pub async fn cluster(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster.sh");
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let status = tokio::task::spawn_blocking(move || std::process::Command::new(script).args(owned).status())
        .await
        .unwrap()
        .expect("hack/cluster.sh runs");
    assert!(status.success(), "hack/cluster.sh {args:?} failed");
}

/// Scenario: `n` jobs of `secs`, the operator SIGKILLed every `every` for `kills` times
/// from the first submission on (a crash loop), then left to finish.
pub async fn operator_kills(client: &Client, n: usize, secs: u64, kills: usize, every: Duration) -> Outcome {
    let w = Workload::new(client, "chaos-kill", 64).await;
    let tracker = Tracker::start(client, &w.ns);
    let ops = Operators::start(&w.tag, 1, &w.ns, &[]);
    let start = Instant::now();
    let submit = {
        let w = w.clone();
        tokio::spawn(async move { w.submit(0..n, secs).await })
    };
    let mut restarts = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(every).await;
        ops.kill(0);
        // The supervisor starts it again a second after it exits.
        restarts.push(SystemTime::now() + Duration::from_secs(1));
    }
    let submitted = submit.await.unwrap();
    w.wait_finished(&tracker, submitted, Duration::from_secs(600)).await;
    let took = start.elapsed();
    let mut out = w.outcome("operator SIGKILLed", submitted, &tracker, &restarts).await;
    out.took = took;
    let each: Vec<String> = out.recovery.iter().map(|r| format!("{:.1}", r.as_secs_f64())).collect();
    out.notes.push(format!(
        "{kills} kills, one every {} s; back at work after each restart in {} s",
        every.as_secs(),
        each.join(", ")
    ));
    ops.stop(&mut out);
    w.cleanup().await;
    out
}

/// Scenario: `n` jobs; once a third finished, `fault` runs (it returns when the fault is
/// over, e.g. `hack/cluster.sh stop-for kube-apiserver 20`).
pub async fn fault_mid_run<F, Fut>(
    client: &Client,
    name: &str,
    n: usize,
    secs: u64,
    replicas: usize,
    fault: F,
) -> Outcome
where
    F: FnOnce(Operators) -> Fut,
    Fut: Future<Output = Operators>,
{
    let w = Workload::new(client, "chaos", 64).await;
    let tracker = Tracker::start(client, &w.ns);
    let ops = Operators::start(&w.tag, replicas, &w.ns, &[]);
    let start = Instant::now();
    let submitted = w.submit(0..n, secs).await;
    while tracker.finished() < submitted / 3 && start.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ops = fault(ops).await;
    let ended = SystemTime::now();
    w.wait_finished(&tracker, submitted, Duration::from_secs(600)).await;
    let took = start.elapsed();
    let mut out = w.outcome(name, submitted, &tracker, &[ended]).await;
    out.took = took;
    ops.stop(&mut out);
    w.cleanup().await;
    out
}

/// Scenario 4's fault: SIGKILL whichever replica leads, and keep it down for 30 s (its
/// node is gone): the standby must take the Lease over once it expires (6 s here).
pub async fn kill_leader(client: &Client, ops: Operators, lease_ns: &str) -> Operators {
    let leader = ops.leader(client, lease_ns).await.expect("a replica holds the Lease");
    ops.kill_for(leader, Duration::from_secs(30));
    ops
}

#[allow(unused_imports)]
pub use hostile::hostile_objects;

mod hostile {
    //! Scenario 6: generated invalid and hostile objects for every kind.

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const KINDS: [&str; 4] = ["BatchJob", "JobQueue", "ComputeEnvironment", "JobDefinition"];

    /// A valid object of `kind` that the mutations start from.
    fn base(kind: &str, name: &str, queue: &str) -> Value {
        let spec = match kind {
            "BatchJob" => json!({"jobQueue": queue, "container": {"image": "busybox", "command": ["true"],
                "resources": {"vcpus": 1, "memory": "1Gi"}}, "retryStrategy": {"attempts": 2},
                "timeout": {"attemptDurationSeconds": 60}}),
            "JobQueue" => json!({"priority": 1, "state": "DISABLED",
                "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "nowhere"}]}),
            "ComputeEnvironment" => json!({"instanceTypes": ["m6i.large"], "minvCpus": 0, "maxvCpus": 4,
                "state": "DISABLED"}),
            _ => json!({"container": {"image": "busybox", "command": ["echo", "Ref::a"],
                "resources": {"vcpus": 1, "memory": "1Gi"}}, "parameters": {"a": "b"}}),
        };
        let mut obj = json!({"apiVersion": "barge.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "annotations": {DURATION: "1s"}}, "spec": spec});
        if kind == "BatchJob" {
            obj["metadata"]["annotations"][DURATION] = json!("1s");
        }
        obj
    }

    /// Fields of the base (and a few it lacks) that mutations aim at.
    fn paths(kind: &str) -> &'static [&'static str] {
        match kind {
            "BatchJob" => &[
                "spec.jobQueue",
                "spec.container",
                "spec.container.image",
                "spec.container.command",
                "spec.container.resources.vcpus",
                "spec.container.resources.memory",
                "spec.container.env",
                "spec.retryStrategy.attempts",
                "spec.retryStrategy.evaluateOnExit",
                "spec.timeout.attemptDurationSeconds",
                "spec.parameters",
                "spec.dependsOn",
                "spec.array.size",
                "spec.nodeProperties",
                "spec.podTemplate",
                "spec.schedulingPriority",
                "spec.shareIdentifier",
                "spec.tags",
                "spec.jobDefinition",
                "metadata.annotations",
                "metadata.labels",
                "spec",
            ],
            "JobQueue" => &[
                "spec.priority",
                "spec.state",
                "spec.computeEnvironmentOrder",
                "spec.computeEnvironmentOrder.0.order",
                "spec.computeEnvironmentOrder.0.computeEnvironment",
                "spec.fairShare",
                "spec.fairShare.shareDistribution",
                "spec.jobStateTimeLimitActions",
                "spec",
            ],
            "ComputeEnvironment" => &[
                "spec.provider",
                "spec.instanceTypes",
                "spec.minvCpus",
                "spec.maxvCpus",
                "spec.desiredvCpus",
                "spec.state",
                "spec.capacityType",
                "spec.allocationStrategy",
                "spec.nodeLabels",
                "spec.nodeTaints",
                "spec.scaleDownDelaySeconds",
                "spec.bidPercentage",
                "spec",
            ],
            _ => &[
                "spec.container",
                "spec.container.image",
                "spec.container.command",
                "spec.container.resources.vcpus",
                "spec.container.resources.memory",
                "spec.parameters",
                "spec.parameters.a",
                "spec.retryStrategy",
                "spec.timeout",
                "spec.nodeProperties",
                "spec.tags",
                "spec",
            ],
        }
    }

    fn hostile_string(rng: &mut StdRng) -> String {
        const PIECES: [&str; 12] = [
            "💥",
            "\u{202e}",
            "\u{200b}",
            "é",
            "日本語",
            "\u{0}",
            "../../etc/passwd",
            "${jndi:x}",
            "'; DROP",
            "Ref::a",
            "\u{fffd}",
            "\t\n",
        ];
        match rng.random_range(0..4) {
            0 => "x".repeat(rng.random_range(10_000..200_000)),
            1 => (0..rng.random_range(1..40)).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect(),
            2 => ["-1", "1e9999", "NaN", "0x10", "", " ", "999999999999999999999"][rng.random_range(0..7)]
                .into(),
            _ => (0..rng.random_range(1..300))
                .map(|_| char::from_u32(rng.random_range(1..0x10ffff)).unwrap_or('?'))
                .collect(),
        }
    }

    fn deep(rng: &mut StdRng, depth: usize) -> Value {
        (0..depth).fold(json!("bottom"), |v, i| {
            if (i + rng.random_range(0..2)) % 2 == 0 { json!([v]) } else { json!({"k": v}) }
        })
    }

    fn hostile_value(rng: &mut StdRng) -> Value {
        match rng.random_range(0..10) {
            0 => json!(rng.random_range(-2_000_000_000i64..2_000_000_000)),
            1 => json!(i64::MAX),
            2 => json!(-1),
            3 => json!(1e300),
            4 => json!(rng.random_bool(0.5)),
            5 => Value::Null,
            6 => json!([hostile_string(rng), 1, null, {"a": []}]),
            7 => {
                let depth = rng.random_range(20..400);
                deep(rng, depth)
            }
            8 => json!({hostile_string(rng): hostile_string(rng)}),
            _ => json!(hostile_string(rng)),
        }
    }

    /// A hostile value of the same JSON type as `existing` (so the schema may let it through
    /// to Barge), or of any type.
    fn typed_hostile(rng: &mut StdRng, existing: Option<&Value>) -> Value {
        match existing {
            Some(Value::String(_)) if rng.random_bool(0.7) => json!(hostile_string(rng)),
            Some(Value::Number(_)) if rng.random_bool(0.7) => {
                [json!(0), json!(-1), json!(i32::MAX), json!(i64::MAX), json!(0.0001), json!(4097)]
                    [rng.random_range(0..6)]
                .clone()
            }
            Some(Value::Array(_)) if rng.random_bool(0.7) => {
                json!((0..rng.random_range(0..50)).map(|_| hostile_string(rng)).collect::<Vec<_>>())
            }
            Some(Value::Object(_)) if rng.random_bool(0.7) => {
                json!(
                    (0..rng.random_range(0..20))
                        .map(|_| (hostile_string(rng), json!(hostile_string(rng))))
                        .collect::<serde_json::Map<_, _>>()
                )
            }
            _ => hostile_value(rng),
        }
    }

    fn get<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(obj, |at, part| match part.parse::<usize>() {
            Ok(i) => at.get(i),
            Err(_) => at.get(part),
        })
    }

    fn set(obj: &mut Value, path: &str, value: Value) {
        let parts: Vec<&str> = path.split('.').collect();
        set_parts(obj, &parts, value);
    }

    /// Sets the value at `parts` below `at`, making objects on the way (an index past an
    /// array's end changes nothing).
    fn set_parts(at: &mut Value, parts: &[&str], value: Value) {
        let Some((part, rest)) = parts.split_first() else {
            *at = value;
            return;
        };
        if let (Ok(idx), Some(a)) = (part.parse::<usize>(), at.as_array_mut()) {
            if let Some(item) = a.get_mut(idx) {
                set_parts(item, rest, value);
            }
            return;
        }
        if !at.is_object() {
            *at = json!({});
        }
        let next = at.as_object_mut().unwrap().entry(part.to_string()).or_insert_with(|| json!({}));
        set_parts(next, rest, value);
    }

    /// One generated object: a valid base with one to four hostile changes.
    pub fn generate(rng: &mut StdRng, i: usize, queue: &str) -> Value {
        let kind = KINDS[i % KINDS.len()];
        let mut obj = base(kind, &format!("hostile-{i}"), queue);
        let changes = if rng.random_bool(0.6) { 1 } else { rng.random_range(2..=3) };
        for _ in 0..changes {
            match rng.random_range(0..10) {
                // An unknown field somewhere.
                0 => {
                    let p = paths(kind)[rng.random_range(0..paths(kind).len())];
                    set(
                        &mut obj,
                        &format!("{p}.{}", hostile_string(rng).chars().take(20).collect::<String>()),
                        hostile_value(rng),
                    );
                }
                // A hostile name (the API server judges names before anything else; rarely).
                1 if rng.random_bool(0.3) => obj["metadata"]["name"] = json!(hostile_string(rng)),
                _ => {
                    let p = paths(kind)[rng.random_range(0..paths(kind).len())];
                    let value = typed_hostile(rng, get(&obj, p));
                    set(&mut obj, p, value);
                }
            }
        }
        obj
    }

    /// Scenario 6: `count` generated objects applied to every kind while `jobs` valid jobs
    /// run beside them. The accepted ones must each be judged (a BatchJob gets a phase and a
    /// reason), the operator must not panic or exit, the valid jobs must all succeed, and
    /// everything must delete cleanly.
    pub async fn hostile_objects(client: &Client, count: usize, jobs: usize, seed: u64) -> Outcome {
        let w = Workload::new(client, "chaos-hostile", 16).await;
        let tracker = Tracker::start(client, &w.ns);
        let ops = Operators::start(&w.tag, 1, &w.ns, &[]);
        let start = Instant::now();
        let submitted = w.submit(0..jobs, 1).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut refused = 0usize;
        let mut accepted: Vec<(String, String)> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..count {
            let mut obj = generate(&mut rng, i, &w.tag);
            let kind = obj["kind"].as_str().unwrap().to_string();
            // Cluster-scoped kinds get the scenario's tag in their name, so runs do not meet.
            if matches!(kind.as_str(), "JobQueue" | "ComputeEnvironment")
                && let Some(n) = obj["metadata"]["name"].as_str()
            {
                obj["metadata"]["name"] = json!(format!("{}-{n}", w.tag));
            }
            let api = dynamic_api(client, &kind, &w.ns);
            let body = serde_json::to_vec(&obj).unwrap();
            match create_raw(client, &api, body).await {
                Ok(name) => accepted.push((kind, name)),
                Err(reason) => {
                    refused += 1;
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
        // Every accepted BatchJob is judged: a phase with a reason, within a minute.
        let accepted_jobs: Vec<&String> =
            accepted.iter().filter(|(k, _)| k == "BatchJob").map(|(_, n)| n).collect();
        let judge_start = Instant::now();
        let mut unjudged = accepted_jobs.len();
        while judge_start.elapsed() < Duration::from_secs(90) {
            let all = list_all(&w.jobs).await;
            unjudged = all
                .iter()
                .filter(|j| accepted_jobs.contains(&&j.name_any()))
                .filter(|j| {
                    j.status.as_ref().is_none_or(|s| s.status_reason.as_deref().unwrap_or("").is_empty())
                })
                .count();
            if unjudged == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        w.wait_finished(&tracker, submitted + accepted_jobs.len(), Duration::from_secs(120)).await;
        // The valid jobs are what is counted as submitted; the hostile ones are noted.
        let mut out = w.outcome("500 hostile objects", submitted, &tracker, &[]).await;
        let valid =
            list_all(&w.jobs).await.into_iter().filter(|j| j.name_any().starts_with('j')).collect::<Vec<_>>();
        out.succeeded = valid
            .iter()
            .filter(|j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded))
            .count();
        out.failed =
            valid.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Failed)).count();
        out.lost = submitted - out.succeeded - out.failed;
        // Delete what was accepted; cluster-scoped objects must go (finalizers released).
        for (kind, name) in &accepted {
            let api = dynamic_api(client, kind, &w.ns);
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
        let delete_start = Instant::now();
        let mut left = accepted.len();
        while delete_start.elapsed() < Duration::from_secs(120) {
            let mut n = 0;
            for (kind, name) in &accepted {
                if dynamic_api(client, kind, &w.ns).get_opt(name).await.ok().flatten().is_some() {
                    n += 1;
                }
            }
            left = n;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        out.took = start.elapsed();
        let mut by_count: Vec<(&String, &usize)> = reasons.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1));
        let refusals: Vec<String> = by_count.iter().take(6).map(|(r, n)| format!("{n}× {r}")).collect();
        out.notes.push(format!(
            "{count} generated: {refused} refused by the API server, {} accepted ({} BatchJobs, {unjudged} of them without a reason after 90 s), {left} still present 120 s after deletion",
            accepted.len(),
            accepted_jobs.len()
        ));
        out.notes.push(format!("refusals by kind of error: {}", refusals.join("; ")));
        if unjudged > 0 || left > 0 {
            // Counted as lost: an object Barge never judged, or one it never let go.
            out.lost += unjudged + left;
        }
        ops.stop(&mut out);
        w.cleanup().await;
        out
    }

    fn dynamic_api(client: &Client, kind: &str, ns: &str) -> Api<kube::api::DynamicObject> {
        let plural = match kind {
            "BatchJob" => "batchjobs",
            "JobQueue" => "jobqueues",
            "ComputeEnvironment" => "computeenvironments",
            _ => "jobdefinitions",
        };
        let gvk = kube::api::GroupVersionKind::gvk("barge.dev", "v1alpha1", kind);
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        match kind {
            "JobQueue" | "ComputeEnvironment" => Api::all_with(client.clone(), &ar),
            _ => Api::namespaced_with(client.clone(), ns, &ar),
        }
    }

    /// POSTs the raw bytes (a typed create would refuse some of them before the server);
    /// returns the created name, or the API server's reason for refusing.
    async fn create_raw(
        client: &Client,
        api: &Api<kube::api::DynamicObject>,
        body: Vec<u8>,
    ) -> Result<String, String> {
        let url = api.resource_url();
        let req = http::Request::post(url).header("content-type", "application/json").body(body).unwrap();
        match client.request::<kube::api::DynamicObject>(req).await {
            Ok(o) => Ok(o.name_any()),
            // By the field the API server names first ("… is invalid: spec.x: …").
            Err(kube::Error::Api(e)) => Err(match e.message.split_once("is invalid: ") {
                Some((_, rest)) => format!("{} {}", e.code, rest.split([':', ' ']).next().unwrap_or("")),
                None => format!("{} {}", e.code, e.reason),
            }),
            Err(e) => Err(format!("client: {}", e.to_string().chars().take(60).collect::<String>())),
        }
    }
}

/// How far ahead of a Spot reclaim its warning comes in scenario 5 (EC2: two minutes).
const WARNING_LEAD: Duration = Duration::from_secs(5);

/// Scenario 5: `n` jobs of `secs` that each need an instance of their own, on a Spot `ec2`
/// environment against moto through the fault proxy: a throttling storm, no capacity for
/// every type but one and 5xx answers from the start, `reclaim` running instances taken
/// away mid-run (Spot reclaims; half of them warned on the interruption queue a few
/// seconds ahead, among malformed, unknown and repeated notices), and at the end the
/// environment deleted. `leaked` counts the instances still tagged for it afterwards.
pub async fn ec2_at_scale(client: &Client, n: usize, secs: u64, reclaim: usize) -> Outcome {
    use super::ec2::{
        CE_TAG, Ec2Proxy, Faults, ec2_event, moto, moto_subnets_and_image, sqs, start_node_bridge,
    };
    use aws_sdk_ec2::types::Filter;

    let ec2 = moto().await;
    let (subnets, image) = moto_subnets_and_image().await;
    let template = format!("chaos-nodes-{}", suffix());
    ec2.create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(image).build(),
        )
        .send()
        .await
        .unwrap();
    let cluster = format!("chaos-{}", suffix());
    let proxy = Ec2Proxy::get();
    start_node_bridge(&cluster, std::collections::HashSet::new());
    let spec = json!({"provider": "ec2", "subnets": subnets, "launchTemplate": {"name": template},
        "capacityType": "SPOT", "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
        "instanceTypes": ["m6i.large", "c6i.large", "r6i.large"], "minvCpus": 0, "maxvCpus": 2 * n + 64,
        "scaleDownDelaySeconds": 5});
    let w = Workload::with_environment(client, "chaos-ec2", spec).await;
    let faults = Faults {
        no_capacity: ["c6i.large", "r6i.large"].map(String::from).into(),
        throttle: 15,
        server_errors: 5,
    };
    proxy.set_faults(&w.tag, faults);
    let sqs = sqs().await;
    let notices = sqs
        .create_queue()
        .queue_name(format!("{cluster}-notices"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let moto_url = super::ec2::moto_url();
    let env = [
        ("BARGE_INTERRUPTION_QUEUE_URL", notices.as_str()),
        ("BARGE_INTERRUPTION_QUEUE_WAIT_SECONDS", "1"),
        ("AWS_ENDPOINT_URL_SQS", moto_url.as_str()),
        ("BARGE_EC2_PROVIDER", "true"),
        ("BARGE_CLUSTER_NAME", cluster.as_str()),
        ("BARGE_CAPACITY_COOLDOWN_SECONDS", "30"),
        ("BARGE_REGISTRATION_TIMEOUT_SECONDS", "60"),
        ("AWS_ENDPOINT_URL_EC2", proxy.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let tracker = Tracker::start(client, &w.ns);
    let ops = Operators::start(&w.tag, 1, &w.ns, &env);
    let start = Instant::now();
    // 1.2 vCPU: two never fit one large instance, so each job has one of its own.
    let jobs = (0..n)
        .map(|i| {
            serde_json::from_value(json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
                "metadata": {"name": format!("j{i:05}"), "annotations": {DURATION: format!("{secs}s")}},
                "spec": {"jobQueue": w.tag, "retryStrategy": {"attempts": 3},
                    "container": {"image": "busybox", "resources": {"vcpus": 1.2, "memory": "2Gi"}}}}))
            .unwrap()
        })
        .collect();
    let submitted = w.submit_jobs(jobs).await;
    let running = |states: &'static [&'static str]| {
        let (ec2, ce) = (ec2.clone(), w.tag.clone());
        async move {
            let out = ec2
                .describe_instances()
                .filters(Filter::builder().name(format!("tag:{CE_TAG}")).values(ce).build())
                .send()
                .await
                .ok()?;
            Some(
                out.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter(|i| {
                        i.state().and_then(|s| s.name()).is_some_and(|s| states.contains(&s.as_str()))
                    })
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect::<Vec<_>>(),
            )
        }
    };
    // Reclaim `reclaim` instances once at least twice that many run jobs.
    let mut fault_ends = Vec::new();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(600) {
        let live = running(&["running"]).await.unwrap_or_default();
        peak = peak.max(live.len());
        let busy = list_all(&w.pods)
            .await
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .count();
        if busy >= 2 * reclaim.max(1) && live.len() >= reclaim {
            if reclaim > 0 {
                // Half are warned first, as EC2 does two minutes ahead (here: WARNING_LEAD),
                // among messages a real queue may also carry; the rest go unannounced.
                let warned = &live[..reclaim / 2];
                let warning = |id: &str| {
                    ec2_event(
                        "EC2 Spot Instance Interruption Warning",
                        json!({"instance-id": id, "instance-action": "terminate"}),
                    )
                };
                let mut bodies: Vec<String> =
                    warned.iter().flat_map(|id| [warning(id), warning(id)]).collect();
                bodies.extend([
                    "{".to_string(),
                    "null".into(),
                    warning("i-0000000000000dead"),
                    "x".repeat(100_000),
                ]);
                for body in bodies {
                    sqs.send_message().queue_url(&notices).message_body(body).send().await.unwrap();
                }
                tokio::time::sleep(WARNING_LEAD).await;
                ec2.terminate_instances()
                    .set_instance_ids(Some(live[..reclaim].to_vec()))
                    .send()
                    .await
                    .unwrap();
                fault_ends.push(SystemTime::now());
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    w.wait_finished(&tracker, submitted, Duration::from_secs(900)).await;
    let took = start.elapsed();
    let mut out =
        w.outcome("ec2: throttling, no capacity, 5xx, Spot reclaims", submitted, &tracker, &[]).await;
    out.took = took;
    // No recovery figure here: a job's managedFields keep only its last status write, and a
    // reclaimed job's last is its end, a job's length later.
    if !fault_ends.is_empty() {
        let (mut warned, mut unwarned) = (0, 0);
        for job in list_all(&w.jobs).await {
            for a in job.status.iter().flat_map(|s| &s.attempts) {
                match a.reason.as_deref() {
                    Some(r) if r.ends_with("Spot interruption") => warned += 1,
                    Some(r) if r.starts_with("Host EC2") => unwarned += 1,
                    _ => {}
                }
            }
        }
        out.notes.push(format!(
            "the jobs on the {reclaim} reclaimed instances were retried as host losses ({} attempts beyond the first in all): {warned} attempts stopped ahead of the reclaim on the {} warned instances (`Spot interruption`), {unwarned} ended with it (`terminated.`); 4 malformed, unknown or oversized notices and a repeat of each warning changed nothing",
            out.retried,
            reclaim / 2
        ));
    }
    let fleets = proxy.calls("CreateFleet", &w.tag);
    let injected = fleets.iter().filter(|c| c.injected.is_some()).count();
    // The environment deleted: every instance it launched must end.
    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    let _ = ces.delete(&w.tag, &DeleteParams::default()).await;
    let gone = Instant::now();
    while ces.get_opt(&w.tag).await.ok().flatten().is_some() && gone.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let deleted_in = gone.elapsed();
    let left = running(&["pending", "running", "stopping", "stopped"]).await.unwrap_or_default();
    out.leaked = Some(left.len());
    out.notes.push(format!(
        "{} CreateFleet calls ({injected} answered by an injected fault), {peak} instances running when {reclaim} of them were reclaimed; the environment was gone {:.0} s after its deletion",
        fleets.len(),
        deleted_in.as_secs_f64()
    ));
    ops.stop(&mut out);
    w.cleanup().await;
    out
}
