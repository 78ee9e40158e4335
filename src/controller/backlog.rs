//! The scheduling pass's standing list of the pods jobs wait for. It is kept up to date
//! from the watches (a job changed, or a pod of it did) instead of being rebuilt from
//! every stored job in every pass: over a backlog of 100,000 jobs a pass reads one dense
//! list, and only the jobs that changed are looked at again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

use super::array::{ChildGate, Children, Gates};
use super::facts::current_attempt;
use super::pod::requests;
use crate::Error;
use crate::api::batch_job::{BatchJob, BatchJobStatus, JobPhase, child_pod_name, node_pod_name, pod_name};
use crate::api::job_definition::{JobDefinitionSpec, work};
use crate::resources::Res;
use crate::scheduler::PendingJob;

/// What changed since the last pass.
#[derive(Clone, Debug)]
pub enum Change {
    /// A job changed or went away, or one of its pods did.
    Job(ObjectRef<BatchJob>),
    /// A watch started over (its store was replaced): any job may have changed.
    All,
}

/// Where a job stands for the scheduling pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// Not waiting for a pod: finished, stopping, started, or its pods exist already.
    Idle,
    /// Held by its dependencies; `ended` once every one of them has ended, when the job
    /// controller should move it on.
    Gated { ended: bool },
    /// Its request cannot be read: it waits with this reason until it is fixed.
    Invalid(String),
    /// Waiting for these pods: (child index of an array, attempt), each with this request,
    /// at this scheduling priority. A multi-node job waits for its main pod, with the
    /// request of each of its nodes in `gang`.
    Waiting { pods: Vec<(Option<u32>, u32)>, request: Res, priority: i32, gang: Option<Arc<[Res]>> },
}

/// What a job's standing is read against.
pub struct Lookups<'a> {
    /// Another job, for dependencies.
    pub job: &'a dyn Fn(&ObjectRef<BatchJob>) -> Option<Arc<BatchJob>>,
    /// Whether a pod of that name exists or is being created, by (namespace, name).
    pub pod_known: &'a dyn Fn(&str, &str) -> bool,
    /// Whether a queue takes jobs from a namespace: (queue, namespace).
    pub namespace_allowed: &'a dyn Fn(&str, &str) -> bool,
    /// The job definition revision a job fixed (see `definition::pinned`).
    pub definition: &'a dyn Fn(&BatchJob) -> Pinned,
    /// The ServiceAccount bound to an IAM role, by (namespace, role ARN).
    pub role_account: &'a dyn Fn(&str, &str) -> Option<String>,
}

/// The job definition revision a job fixed, if it names one; or why it cannot be read.
pub type Pinned = Result<Option<Arc<JobDefinitionSpec>>, String>;

/// Where `job` stands: which of its pods the pass should admit, if any.
pub fn standing(job: &BatchJob, lookups: &Lookups<'_>) -> Standing {
    let no_status = BatchJobStatus::default();
    let status = job.status.as_ref().unwrap_or(&no_status);
    let ns = job.meta().namespace.as_deref().unwrap_or_default();
    let whole_job_deps = job.spec.array.is_none() || job.spec.depends_on.iter().any(|d| d.type_.is_none());
    if whole_job_deps
        && !job.spec.depends_on.is_empty()
        && matches!(status.phase, JobPhase::Pending | JobPhase::Submitted)
    {
        let ended = job.spec.depends_on.iter().all(|d| {
            (lookups.job)(&ObjectRef::new(&d.job_name).within(ns))
                .is_some_and(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        });
        return Standing::Gated { ended };
    }
    let stopping = job.spec.cancel.is_some() || job.spec.terminate.is_some();
    if stopping || status.phase.is_finished() || job.meta().deletion_timestamp.is_some() {
        return Standing::Idle;
    }
    // A job runs a definition's revision once the job controller has fixed which one.
    if job.spec.job_definition.is_some() && status.job_definition.is_none() {
        return Standing::Idle;
    }
    // Only a job waiting for its next attempt is admitted: a STARTING or RUNNING job whose
    // pod just vanished is the job controller's to record first (never re-run the attempt).
    let is_array = job.spec.array.is_some();
    let waiting = matches!(status.phase, JobPhase::Submitted | JobPhase::Runnable);
    let open_attempt = status.attempts.iter().any(|a| a.stopped_at.is_none());
    if !is_array && (!waiting || open_attempt) {
        return Standing::Idle;
    }
    let name = job.meta().name.as_deref().unwrap_or_default();
    let uid = job.meta().uid.as_deref().unwrap_or_default();
    let wanted: Vec<(Option<u32>, u32)> = if is_array {
        let children = Children::of(job);
        let gates = Gates::of(job, |n| (lookups.job)(&ObjectRef::new(n).within(ns)));
        children
            .waiting()
            .filter(|i| gates.gate(*i) == ChildGate::Ready)
            .map(|i| (Some(i), children.attempt(i)))
            .collect()
    } else {
        vec![(None, current_attempt(status))]
    };
    let def = match (lookups.definition)(job) {
        Ok(def) => def,
        Err(e) => return Standing::Invalid(e),
    };
    // A multi-node job's attempt is its main node's pod.
    let main_node = match (&job.spec.node_properties, def.as_deref()) {
        (Some(p), _) => Some(p.main_node),
        (None, Some(d)) => d.node_properties.as_ref().map(|p| p.main_node),
        (None, None) => None,
    };
    let pods: Vec<(Option<u32>, u32)> = wanted
        .into_iter()
        .filter(|(i, a)| {
            let pod = match (i, main_node) {
                (Some(i), _) => child_pod_name(name, uid, *i, *a),
                (None, Some(main)) => node_pod_name(name, uid, main, *a),
                (None, None) => pod_name(name, uid, *a),
            };
            !(lookups.pod_known)(ns, &pod)
        })
        .collect();
    if pods.is_empty() {
        return Standing::Idle;
    }
    let work = work(&job.spec, def.as_deref()).map_err(Error::InvalidJob);
    match work.and_then(|w| Ok((requests(&w)?, w))) {
        Ok((_, w)) if missing_role(&w, ns, lookups).is_some() => {
            let role = missing_role(&w, ns, lookups).unwrap_or_default();
            Standing::Invalid(crate::controller::container::missing_role_account(role, ns))
        }
        Ok(((request, gang), w)) => {
            Standing::Waiting { pods, request, priority: w.scheduling_priority, gang }
        }
        Err(e) => Standing::Invalid(format!("Invalid job: {e}")),
    }
}

/// The IAM role a job's containers name that no ServiceAccount of its namespace is bound to.
fn missing_role<'w>(
    w: &'w crate::api::job_definition::Work<'_>,
    ns: &str,
    lookups: &Lookups<'_>,
) -> Option<&'w str> {
    w.roles().find(|role| (lookups.role_account)(ns, role).is_none())
}

/// A job's "namespace/name", the backlog's key for it.
fn key_of(job: &ObjectRef<BatchJob>) -> String {
    crate::k8s::ns_key(job.namespace.as_deref().unwrap_or_default(), &job.name)
}

/// The job a backlog key names.
pub fn job_ref(key: &str) -> ObjectRef<BatchJob> {
    let (ns, name) = crate::k8s::split_key(key);
    ObjectRef::new(name).within(ns)
}

/// Whose pod an entry of the backlog waits for (the job's "namespace/name", see `job_ref`,
/// is the entry's `name`).
#[derive(Clone, Debug)]
pub struct Owner {
    pub uid: Arc<str>,
    pub index: Option<u32>,
    pub attempt: u32,
    /// The reason this entry gave in the last pass: a job whose reason is unchanged costs
    /// the verdict hand-off nothing.
    pub said: Option<Arc<str>>,
}

/// What a refresh found.
#[derive(Debug, Default, PartialEq)]
pub struct Refreshed {
    /// A gated job whose dependencies have all ended: the job controller moves it on.
    pub ended: bool,
    /// The uid of a job that left the backlog (its verdict goes with it).
    pub left: Option<Arc<str>>,
}

/// The pods jobs wait for, as the planner reads them.
#[derive(Default)]
pub struct Backlog {
    /// One entry per waiting pod: the planner's job list as it stands.
    pub jobs: Vec<PendingJob>,
    /// Whose each entry of `jobs` is (same positions).
    pub owners: Vec<Owner>,
    /// Positions in `jobs` of each job's entries, by job key.
    positions: HashMap<Arc<str>, Vec<usize>>,
    /// Jobs looked at again in every pass: their standing depends on other jobs.
    volatile: HashSet<String>,
    /// Jobs that cannot be admitted as they stand, by job key: uid and why.
    pub invalid: HashMap<String, (Arc<str>, Arc<str>)>,
    /// Queue names, one copy each.
    queues: HashMap<String, Arc<str>>,
}

impl Backlog {
    /// Jobs whose standing depends on other jobs (dependencies), to refresh every pass.
    pub fn volatile(&self) -> Vec<ObjectRef<BatchJob>> {
        self.volatile.iter().map(|k| job_ref(k)).collect()
    }

    /// Forgets everything, for a full rebuild.
    pub fn clear(&mut self) {
        *self = Backlog::default();
    }

    /// The uids of every job in the backlog.
    pub fn uids(&self) -> HashSet<Arc<str>> {
        self.owners
            .iter()
            .map(|o| o.uid.clone())
            .chain(self.invalid.values().map(|(u, _)| u.clone()))
            .collect()
    }

    /// Looks at one job again (`job` is its stored object, `None` when it is gone).
    pub fn refresh(
        &mut self,
        key: &ObjectRef<BatchJob>,
        job: Option<&BatchJob>,
        lookups: &Lookups<'_>,
    ) -> Refreshed {
        let key = key_of(key);
        let was = self.remove(&key);
        let left = Refreshed { ended: false, left: was };
        let Some(job) = job else { return left };
        let has_deps = !job.spec.depends_on.is_empty();
        let uid = || Arc::<str>::from(job.meta().uid.as_deref().unwrap_or_default());
        let finished = job.status.as_ref().is_some_and(|s| s.phase.is_finished());
        match standing(job, lookups) {
            // An array whose children wait for another job's children (N_TO_N) may have none
            // ready now, and nothing of its own changes when they become ready: it is looked
            // at again every pass until it ends.
            Standing::Idle if has_deps && job.spec.array.is_some() && !finished => {
                self.volatile.insert(key);
                left
            }
            Standing::Idle => left,
            Standing::Gated { ended } => {
                self.volatile.insert(key);
                Refreshed { ended, ..left }
            }
            Standing::Invalid(why) => {
                if has_deps {
                    self.volatile.insert(key.clone());
                }
                self.invalid.insert(key, (uid(), why.into()));
                Refreshed::default()
            }
            Standing::Waiting { pods, request, priority, gang } => {
                if has_deps {
                    self.volatile.insert(key.clone());
                }
                let ns = job.meta().namespace.as_deref().unwrap_or_default();
                let allowed = (lookups.namespace_allowed)(&job.spec.job_queue, ns);
                let submitted_ms = job.meta().creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond());
                let queue = match self.queues.get(&job.spec.job_queue) {
                    Some(q) => q.clone(),
                    None => {
                        let q: Arc<str> = job.spec.job_queue.as_str().into();
                        self.queues.insert(job.spec.job_queue.clone(), q.clone());
                        q
                    }
                };
                let (key, uid) = (Arc::<str>::from(key), uid());
                let mut at = Vec::with_capacity(pods.len());
                for (index, attempt) in pods {
                    at.push(self.jobs.len());
                    self.jobs.push(PendingJob {
                        name: key.clone(),
                        index,
                        queue: queue.clone(),
                        namespace_allowed: allowed,
                        scheduling_priority: priority,
                        submitted_ms,
                        request,
                        share: job.spec.share_identifier.clone(),
                        gang: gang.clone(),
                    });
                    self.owners.push(Owner { uid: uid.clone(), index, attempt, said: None });
                }
                self.positions.insert(key, at);
                Refreshed::default()
            }
        }
    }

    /// Drops a job's entries (the last entries move into the holes); returns its uid if it
    /// had any.
    fn remove(&mut self, key: &str) -> Option<Arc<str>> {
        self.volatile.remove(key);
        let invalid = self.invalid.remove(key).map(|(uid, _)| uid);
        let Some(mut at) = self.positions.remove(key) else { return invalid };
        let uid = at.first().map(|p| self.owners[*p].uid.clone());
        at.sort_unstable_by(|a, b| b.cmp(a));
        for p in at {
            let last = self.jobs.len() - 1;
            self.jobs.swap_remove(p);
            self.owners.swap_remove(p);
            if p < last {
                let moved = &self.jobs[p].name;
                let list = self.positions.get_mut(&**moved).expect("every entry has an owner");
                let slot = list.iter_mut().find(|x| **x == last).expect("the moved entry is listed");
                *slot = p;
            }
        }
        uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;
    use serde_json::json;

    fn job(name: &str, extra: serde_json::Value) -> BatchJob {
        fixtures::job(name).with(extra).build()
    }

    fn none(_: &ObjectRef<BatchJob>) -> Option<Arc<BatchJob>> {
        None
    }

    fn lookups<'a>(pods: &'a dyn Fn(&str, &str) -> bool) -> Lookups<'a> {
        Lookups {
            job: &none,
            pod_known: pods,
            namespace_allowed: &|_, _| true,
            definition: &|_| Ok(None),
            role_account: &|_, _| None,
        }
    }

    fn key(name: &str) -> ObjectRef<BatchJob> {
        ObjectRef::new(name).within("ns")
    }

    /// The backlog's lists agree with each other: every position points back at its owner.
    fn check(b: &Backlog) {
        assert_eq!(b.jobs.len(), b.owners.len());
        let listed: usize = b.positions.values().map(Vec::len).sum();
        assert_eq!(listed, b.jobs.len());
        for (k, at) in &b.positions {
            for p in at {
                assert_eq!(&b.jobs[*p].name, k);
            }
        }
    }

    #[test]
    fn a_new_job_waits_for_its_first_pod_and_leaves_once_it_exists() {
        let j = job("a", json!({}));
        let l = lookups(&|_, _| false);
        assert_eq!(
            standing(&j, &l),
            Standing::Waiting {
                pods: vec![(None, 0)],
                request: Res::new(1000, 64, 0),
                priority: 0,
                gang: None
            }
        );
        let exists = lookups(&|ns, pod| ns == "ns" && pod.starts_with("a-"));
        assert_eq!(standing(&j, &exists), Standing::Idle);
    }

    #[test]
    fn a_definition_job_waits_for_its_revision_to_be_fixed_then_reads_it() {
        // The spec's container is dropped: the job runs the definition's.
        let mut j = job("d", json!({"spec": {"jobDefinition": "render", "schedulingPriority": 7}}));
        j.spec.container = None;
        let def: Arc<JobDefinitionSpec> = Arc::new(
            serde_json::from_value(
                json!({"container": {"image": "x", "resources": {"vcpus": 2, "memory": "1Gi"}},
                "schedulingPriority": 3}),
            )
            .unwrap(),
        );
        let pinned = |_: &BatchJob| -> Pinned { Ok(Some(def.clone())) };
        let l = Lookups {
            job: &none,
            pod_known: &|_, _| false,
            namespace_allowed: &|_, _| true,
            definition: &pinned,
            role_account: &|_, _| None,
        };
        assert_eq!(standing(&j, &l), Standing::Idle, "not admitted before its revision is fixed");
        j.status =
            Some(serde_json::from_value(json!({"phase": "RUNNABLE", "jobDefinition": "render:1"})).unwrap());
        // The definition's request, the job's own priority.
        assert_eq!(
            standing(&j, &l),
            Standing::Waiting {
                pods: vec![(None, 0)],
                request: Res::new(2000, 1024, 0),
                priority: 7,
                gang: None
            }
        );
        let gone = |_: &BatchJob| -> Pinned { Err("Job definition render:1 does not exist".into()) };
        let l = Lookups { definition: &gone, ..l };
        assert_eq!(standing(&j, &l), Standing::Invalid("Job definition render:1 does not exist".into()));
    }

    #[test]
    fn an_array_waits_for_its_children_not_started() {
        let j = job(
            "arr",
            json!({"spec": {"array": {"size": 5}},
                   "status": {"phase": "RUNNABLE", "array": {"size": 5, "progress": "1/5", "runnable": 3, "starting": 0, "running": 1, "succeeded": 1, "failed": 0, "succeededIndexes": "0", "startedIndexes": "0-1"}}}),
        );
        let l = lookups(&|_, _| false);
        let Standing::Waiting { pods, .. } = standing(&j, &l) else { panic!("waiting") };
        assert_eq!(pods, vec![(Some(2), 0), (Some(3), 0), (Some(4), 0)]);
    }

    #[test]
    fn gated_until_dependencies_end_and_bad_requests_say_why() {
        let j = job("d", json!({"spec": {"dependsOn": [{"jobName": "up"}]}}));
        assert_eq!(standing(&j, &lookups(&|_, _| false)), Standing::Gated { ended: false });
        let done = job("up", json!({"status": {"phase": "SUCCEEDED"}}));
        let found = move |_: &ObjectRef<BatchJob>| Some(Arc::new(done.clone()));
        let l = Lookups {
            job: &found,
            pod_known: &|_, _| false,
            namespace_allowed: &|_, _| true,
            definition: &|_| Ok(None),
            role_account: &|_, _| None,
        };
        assert_eq!(standing(&j, &l), Standing::Gated { ended: true });

        let bad = job("b", json!({"spec": {"container": {"resources": {"memory": "lots"}}}}));
        let Standing::Invalid(why) = standing(&bad, &lookups(&|_, _| false)) else { panic!("invalid") };
        assert!(why.starts_with("Invalid job:"), "{why}");
    }

    #[test]
    fn stopping_running_and_finished_jobs_wait_for_nothing() {
        let l = lookups(&|_, _| false);
        for extra in [
            json!({"spec": {"cancel": {"reason": "no"}}}),
            json!({"status": {"phase": "SUCCEEDED"}}),
            json!({"status": {"phase": "RUNNING", "attempts": [{"podName": "p"}]}}),
        ] {
            assert_eq!(standing(&job("x", extra.clone()), &l), Standing::Idle, "{extra}");
        }
    }

    #[test]
    fn an_n_to_n_array_with_no_child_ready_is_looked_at_again_until_it_ends() {
        let mut b = Backlog::default();
        let l = lookups(&|_, _| false);
        let deps = json!({"array": {"size": 4}, "dependsOn": [{"jobName": "up", "type": "N_TO_N"}]});
        let gated = job("down", json!({"spec": deps.clone(), "status": {"phase": "PENDING"}}));
        assert_eq!(standing(&gated, &l), Standing::Idle, "no child of up has succeeded");
        b.refresh(&key("down"), Some(&gated), &l);
        assert_eq!(b.volatile(), vec![key("down")]);
        let done = job("down", json!({"spec": deps, "status": {"phase": "SUCCEEDED"}}));
        b.refresh(&key("down"), Some(&done), &l);
        assert!(b.volatile().is_empty());
    }

    #[test]
    fn refreshes_keep_positions_consistent() {
        let mut b = Backlog::default();
        let l = lookups(&|_, _| false);
        let arr = job("arr", json!({"spec": {"array": {"size": 4}}}));
        b.refresh(&key("a"), Some(&job("a", json!({}))), &l);
        b.refresh(&key("arr"), Some(&arr), &l);
        b.refresh(&key("c"), Some(&job("c", json!({}))), &l);
        check(&b);
        assert_eq!(b.jobs.len(), 6);

        // A job removed from the front: the last entries fill its hole.
        assert_eq!(b.refresh(&key("a"), None, &l).left.as_deref(), Some("uid-a"));
        assert_eq!(b.refresh(&key("a"), None, &l), Refreshed::default(), "gone already");
        check(&b);
        assert_eq!(b.jobs.len(), 5);
        // The array's children start: it leaves; refreshing twice changes nothing.
        let started = job(
            "arr",
            json!({"spec": {"array": {"size": 4}}, "status": {"phase": "RUNNING", "array": {"size": 4, "progress": "0/4", "runnable": 0, "starting": 0, "running": 4, "succeeded": 0, "failed": 0, "startedIndexes": "0-3"}}}),
        );
        b.refresh(&key("arr"), Some(&started), &l);
        b.refresh(&key("arr"), Some(&started), &l);
        check(&b);
        assert_eq!(b.jobs.iter().map(|j| &*j.name).collect::<Vec<_>>(), ["ns/c"]);

        let bad = job("b", json!({"spec": {"container": {"resources": {"memory": "lots"}}}}));
        b.refresh(&key("b"), Some(&bad), &l);
        assert!(b.invalid.contains_key("ns/b"));
        assert_eq!(b.refresh(&key("b"), Some(&job("b", json!({}))), &l), Refreshed::default(), "still here");
        assert!(b.invalid.is_empty());
        assert_eq!(b.uids().len(), 2);
        check(&b);
        assert_eq!(b.jobs.len(), 2);
    }
}
