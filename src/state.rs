//! Typed state the loops share: the cluster view the capacity pass keeps (nodes launching,
//! idle, lost; environments that cannot grow) and the scheduling pass's hand-off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::job_queue::FairShareUsage;
use crate::api::{Condition, ConditionType};
use crate::capacity::Need;
use crate::resources::Res;

/// A launched node that has not shown up for this long is no longer counted as coming.
/// (A provider that knows better ends it sooner: see `NodeProvider::launch_failed`.)
pub const LAUNCH_TTL: Duration = Duration::from_secs(900);
/// Why a host went away is kept this long for its jobs: they hear of the node's loss
/// within seconds, and the pod garbage collector removes its pods within minutes.
pub const LOST_HOST_TTL: Duration = Duration::from_secs(3600);
/// A node whose kubelet refused a pod Barge placed on it gets its next pods through
/// kube-scheduler for this long: something Barge does not count holds room there.
pub const REFUSAL_TTL: Duration = Duration::from_secs(300);

/// What the scheduling pass decided for a job it saw waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Why it waits; shared by the many jobs waiting for the same reason.
    Waiting(Arc<str>),
    /// It can never run as it stands (AWS's `MISCONFIGURATION:` reasons): it waits, and the
    /// user is warned.
    Misconfigured(Arc<str>),
    Admitted {
        compute_environment: String,
    },
    /// The API server refused the job's pod for a reason no retry can mend (Pod Security
    /// Admission, an invalid pod spec): the job fails with this reason.
    Rejected(Arc<str>),
}

impl Verdict {
    /// Why the job waits or failed, in the user's words; none for an admission.
    pub fn reason(&self) -> Option<&Arc<str>> {
        match self {
            Verdict::Waiting(why) | Verdict::Misconfigured(why) | Verdict::Rejected(why) => Some(why),
            Verdict::Admitted { .. } => None,
        }
    }
}

/// A node the capacity pass launched that the node store has not shown yet; counted as
/// coming capacity so that the same demand is not launched for twice.
#[derive(Clone, Debug)]
pub struct Launching {
    /// The node's name, or for a cloud instance its id (see `k8s::node_key`).
    pub node: String,
    pub vcpus: u32,
    pub allocatable: Res,
    pub since: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A loop that panicked while holding a lock left plain data behind: go on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Cluster {
    /// Per compute environment.
    launching: HashMap<String, Vec<Launching>>,
    /// Per compute environment, why it cannot launch nodes now.
    cannot_grow: HashMap<String, String>,
    /// Per node: when it was last seen without a Barge pod (the scale-down clock).
    idle_since: HashMap<String, Instant>,
    /// Per node: why its host went away, and when that was heard.
    lost_hosts: HashMap<String, (String, Instant)>,
    /// Per node: when its kubelet last refused a pod Barge placed on it.
    refused: HashMap<String, Instant>,
}

/// The capacity view: what the capacity pass and the provider sync know of nodes beyond
/// the node store. Keyed by node or environment, and pruned when those go.
/// The nodes with a container whose output is not archived yet (kept from scale-down) have
/// a lock of their own: the archiver writes them, and the capacity pass reads them while it
/// walks nodes under the cluster's.
#[derive(Default)]
pub struct ClusterState(Mutex<Cluster>, Mutex<HashSet<String>>);

impl ClusterState {
    /// Counts a node as coming to `ce` until it joins.
    pub fn launched(&self, ce: &str, node: Launching) {
        lock(&self.0).launching.entry(ce.to_string()).or_default().push(node);
    }

    /// Launching nodes of `ce` still to come: those not `joined`, not known to have
    /// `failed`, and younger than `LAUNCH_TTL` (the rest are forgotten).
    pub fn launching(
        &self,
        ce: &str,
        joined: &HashSet<String>,
        failed: impl Fn(&str) -> bool,
    ) -> Vec<Launching> {
        let mut st = lock(&self.0);
        let Some(list) = st.launching.get_mut(ce) else { return Vec::new() };
        list.retain(|l| l.since.elapsed() < LAUNCH_TTL && !joined.contains(&l.node) && !failed(&l.node));
        list.clone()
    }

    /// Says why `ce` cannot grow now, or that it can; returns whether that changed.
    pub fn set_cannot_grow(&self, ce: &str, why: Option<String>) -> bool {
        let mut st = lock(&self.0);
        match why {
            Some(why) => st.cannot_grow.insert(ce.to_string(), why).is_none(),
            None => st.cannot_grow.remove(ce).is_some(),
        }
    }

    pub fn cannot_grow(&self, ce: &str) -> Option<String> {
        lock(&self.0).cannot_grow.get(ce).cloned()
    }

    /// A deleted compute environment leaves nothing behind.
    pub fn forget_environment(&self, ce: &str) {
        let mut st = lock(&self.0);
        st.cannot_grow.remove(ce);
        st.launching.remove(ce);
    }

    /// How long each of `nodes` has been idle (none for a busy node), starting the clock of
    /// nodes newly idle and stopping it for busy ones.
    pub fn idle_seconds<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a str, bool)>,
        now: Instant,
    ) -> Vec<Option<u64>> {
        let mut st = lock(&self.0);
        nodes
            .into_iter()
            .map(|(node, busy)| {
                if busy {
                    st.idle_since.remove(node);
                    None
                } else {
                    Some(now.duration_since(*st.idle_since.entry(node.to_string()).or_insert(now)).as_secs())
                }
            })
            .collect()
    }

    /// The nodes whose pods' output the archiver has yet to read (the last list it gave).
    pub fn set_unarchived(&self, nodes: HashSet<String>) {
        *lock(&self.1) = nodes;
    }

    /// Whether `node` holds output not archived yet: not idle, whatever its pods.
    pub fn unarchived(&self, node: &str) -> bool {
        lock(&self.1).contains(node)
    }

    /// Records why a node's host went away, for its pods' attempts.
    pub fn host_lost(&self, node: &str, why: String) {
        let mut st = lock(&self.0);
        st.lost_hosts.retain(|_, (_, at)| at.elapsed() < LOST_HOST_TTL);
        st.lost_hosts.insert(node.to_string(), (why, Instant::now()));
    }

    /// Records that the kubelet of `node` refused a pod Barge placed on it.
    pub fn refused(&self, node: &str, now: Instant) {
        let mut st = lock(&self.0);
        st.refused.retain(|_, at| now.duration_since(*at) < REFUSAL_TTL);
        st.refused.insert(node.to_string(), now);
    }

    /// Whether Barge may place pods on `node` itself: its kubelet has not refused one in
    /// the last `REFUSAL_TTL`.
    pub fn may_place_on(&self, node: &str, now: Instant) -> bool {
        lock(&self.0).refused.get(node).is_none_or(|at| now.duration_since(*at) >= REFUSAL_TTL)
    }

    /// Why the host of `node` went away, if its provider said.
    pub fn lost_host(&self, node: &str) -> Option<String> {
        lock(&self.0).lost_hosts.get(node).map(|(why, _)| why.clone())
    }

    /// A node left the cluster: its scale-down clock stops.
    pub fn node_gone(&self, node: &str) {
        lock(&self.0).idle_since.remove(node);
    }
}

#[derive(Default)]
struct Hand {
    /// Latest verdict per job uid, with the number of the pass that gave it.
    verdicts: HashMap<Arc<str>, (Verdict, u64)>,
    /// What each compute environment should grow for.
    demand: HashMap<String, Vec<Need>>,
    /// When the pass that gave `demand` read the launching nodes: it already counted those.
    demand_seen: Option<Instant>,
    /// Per queue, why its first waiting job cannot run.
    blocked: HashMap<String, String>,
    /// Per fair-share queue, its usage as the pass last recorded it, for the queue's status.
    share_usage: HashMap<String, FairShareUsage>,
    /// Nodes held for multi-node jobs that waited their turn.
    holds: Vec<NodeHold>,
}

/// Nodes of a compute environment held for a multi-node job that has waited its turn:
/// they take no other job until it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHold {
    /// "namespace/name" of the job.
    pub job: String,
    pub queue: String,
    pub compute_environment: String,
    pub held: u32,
    /// Nodes the job needs together.
    pub nodes: u32,
}

impl NodeHold {
    /// The `HoldingNodes` condition of a queue or an environment with these holds.
    pub fn condition<'a>(holds: impl Iterator<Item = &'a NodeHold>) -> Condition {
        let holds: Vec<&NodeHold> = holds.collect();
        if holds.is_empty() {
            return Condition::new(ConditionType::HoldingNodes, false, "NoneHeld", "");
        }
        let why = holds
            .iter()
            .map(|h| {
                format!(
                    "{} node{} of compute environment {} held for multi-node job {}, which needs {} \
                     together: they take no other job until it runs",
                    h.held,
                    if h.held == 1 { "" } else { "s" },
                    h.compute_environment,
                    h.job,
                    h.nodes
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Condition::new(ConditionType::HoldingNodes, true, "MultiNodeJobWaited", why)
    }
}

/// What the scheduling pass hands to the job, capacity and queue loops.
#[derive(Default)]
pub struct HandOff(Mutex<Hand>);

impl HandOff {
    /// The job's latest verdict.
    pub fn verdict(&self, uid: &str) -> Option<Verdict> {
        lock(&self.0).verdicts.get(uid).map(|(v, _)| v.clone())
    }

    /// Gives pass `number`'s verdicts: a job keeps the first one a pass gives it. Returns
    /// the indexes (into `given`) of the jobs whose verdict changed.
    pub fn give(&self, number: u64, given: impl IntoIterator<Item = (Arc<str>, Verdict)>) -> Vec<usize> {
        let mut st = lock(&self.0);
        let mut changed = Vec::new();
        for (i, (uid, verdict)) in given.into_iter().enumerate() {
            let fresh = match st.verdicts.get_mut(&uid) {
                Some((_, seen)) if *seen == number => false,
                Some((old, seen)) => {
                    *seen = number;
                    let fresh = *old != verdict;
                    *old = verdict;
                    fresh
                }
                None => {
                    st.verdicts.insert(uid, (verdict, number));
                    true
                }
            };
            if fresh {
                changed.push(i);
            }
        }
        changed
    }

    /// Keeps only the verdicts of jobs still waiting.
    pub fn keep_verdicts(&self, waiting: &HashSet<Arc<str>>) {
        lock(&self.0).verdicts.retain(|uid, _| waiting.contains(uid));
    }

    /// Jobs that no longer wait have no verdict.
    pub fn forget_verdicts(&self, uids: impl IntoIterator<Item = Arc<str>>) {
        let mut st = lock(&self.0);
        for uid in uids {
            st.verdicts.remove(&uid);
        }
    }

    /// Sets the demand per environment, planned with the launches known at `seen`; returns
    /// the environments whose demand is worth a look (changed in size, or not empty).
    pub fn set_demand(
        &self,
        demand: HashMap<String, Vec<Need>>,
        seen: Instant,
        environments: &[String],
    ) -> Vec<String> {
        let mut st = lock(&self.0);
        let look = environments
            .iter()
            .filter(|ce| {
                let had = st.demand.get(*ce).map_or(0, Vec::len);
                let has = demand.get(*ce).map_or(0, Vec::len);
                had != has || has > 0
            })
            .cloned()
            .collect();
        st.demand = demand;
        st.demand_seen = Some(seen);
        look
    }

    /// What `ce` should grow for, and when the pass that said so read the launching nodes:
    /// launches since then are not in it yet.
    pub fn demand(&self, ce: &str) -> (Vec<Need>, Option<Instant>) {
        let st = lock(&self.0);
        (st.demand.get(ce).cloned().unwrap_or_default(), st.demand_seen)
    }

    /// Sets the holds of the latest pass; returns the environments whose holds changed.
    pub fn set_holds(&self, holds: Vec<NodeHold>) -> Vec<String> {
        let mut st = lock(&self.0);
        if st.holds == holds {
            return Vec::new();
        }
        let mut changed: Vec<String> =
            st.holds.iter().chain(&holds).map(|h| h.compute_environment.clone()).collect();
        changed.sort();
        changed.dedup();
        st.holds = holds;
        changed
    }

    /// The holds of the latest pass.
    pub fn holds(&self) -> Vec<NodeHold> {
        lock(&self.0).holds.clone()
    }

    pub fn set_blocked(&self, blocked: HashMap<String, String>) {
        lock(&self.0).blocked = blocked;
    }

    /// Per queue, why its first waiting job cannot run.
    pub fn blocked(&self) -> HashMap<String, String> {
        lock(&self.0).blocked.clone()
    }

    pub fn record_share_usage(&self, usage: HashMap<String, FairShareUsage>) {
        lock(&self.0).share_usage = usage;
    }

    /// The fair-share usage recorded since the last take, for the queues' statuses.
    pub fn take_share_usage(&self) -> HashMap<String, FairShareUsage> {
        std::mem::take(&mut lock(&self.0).share_usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarchived_nodes_can_be_asked_while_the_idle_clocks_are_read() {
        let cluster = ClusterState::default();
        cluster.set_unarchived(HashSet::from(["a".to_string()]));
        let now = Instant::now();
        // The capacity pass's question, asked from inside the walk that holds the clocks.
        let idle = cluster.idle_seconds(["a", "b"].into_iter().map(|n| (n, cluster.unarchived(n))), now);
        assert_eq!(idle, [None, Some(0)]);
    }

    #[test]
    fn a_job_keeps_the_first_verdict_of_a_pass_and_a_repeat_is_no_change() {
        let hand = HandOff::default();
        let uid: Arc<str> = "u1".into();
        let wait = Verdict::Waiting("full".into());
        let admit = Verdict::Admitted { compute_environment: "ce".into() };
        assert_eq!(hand.give(1, [(uid.clone(), wait.clone()), (uid.clone(), admit.clone())]), vec![0]);
        assert_eq!(hand.verdict("u1"), Some(wait.clone()));
        assert!(hand.give(2, [(uid.clone(), wait)]).is_empty());
        assert_eq!(hand.give(3, [(uid, admit.clone())]), vec![0]);
        assert_eq!(hand.verdict("u1"), Some(admit));
    }

    #[test]
    fn a_node_that_refused_a_pod_is_left_to_the_scheduler_for_a_while() {
        let cluster = ClusterState::default();
        let t0 = Instant::now();
        assert!(cluster.may_place_on("n1", t0));
        cluster.refused("n1", t0);
        assert!(!cluster.may_place_on("n1", t0 + Duration::from_secs(10)));
        assert!(cluster.may_place_on("n2", t0 + Duration::from_secs(10)), "other nodes are not affected");
        assert!(cluster.may_place_on("n1", t0 + REFUSAL_TTL));
    }

    #[test]
    fn a_node_that_joined_or_failed_no_longer_counts_as_coming() {
        let cluster = ClusterState::default();
        let launching = |node: &str| Launching {
            node: node.into(),
            vcpus: 2,
            allocatable: Res::ZERO,
            since: Instant::now(),
        };
        for n in ["a", "b", "c"] {
            cluster.launched("ce", launching(n));
        }
        let joined = HashSet::from(["a".to_string()]);
        let coming: Vec<String> =
            cluster.launching("ce", &joined, |n| n == "b").into_iter().map(|l| l.node).collect();
        assert_eq!(coming, vec!["c".to_string()]);
        cluster.forget_environment("ce");
        assert!(cluster.launching("ce", &HashSet::new(), |_| false).is_empty());
    }

    #[test]
    fn an_idle_clock_starts_when_a_node_is_idle_and_stops_when_it_is_busy_or_gone() {
        let cluster = ClusterState::default();
        let start = Instant::now();
        assert_eq!(cluster.idle_seconds([("n", false)], start), vec![Some(0)]);
        let later = start + Duration::from_secs(30);
        assert_eq!(cluster.idle_seconds([("n", false)], later), vec![Some(30)]);
        assert_eq!(cluster.idle_seconds([("n", true)], later), vec![None]);
        assert_eq!(cluster.idle_seconds([("n", false)], later), vec![Some(0)]);
        cluster.node_gone("n");
        let again = later + Duration::from_secs(5);
        assert_eq!(cluster.idle_seconds([("n", false)], again), vec![Some(0)]);
    }
}
