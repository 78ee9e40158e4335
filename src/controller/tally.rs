//! Jobs per queue and phase, and each queue's oldest RUNNABLE job, kept from the job watch:
//! the queue status loop reads these counts instead of walking every stored job.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::api::BatchJob;
use crate::api::batch_job::JobPhase;
use crate::api::job_queue::JobCounts;

/// One queue's jobs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueTally {
    pub counts: JobCounts,
    /// When its RUNNABLE jobs became RUNNABLE, and how many at each time.
    runnable_since: BTreeMap<DateTime<Utc>, u32>,
}

impl QueueTally {
    pub fn oldest_runnable(&self) -> Option<DateTime<Utc>> {
        self.runnable_since.keys().next().copied()
    }
}

/// The stored jobs, counted by queue. Each change is counted against the job as the store
/// held it before, so no job needs to be walked again.
#[derive(Debug, Default)]
pub struct JobTally {
    queues: HashMap<String, QueueTally>,
    /// Counted while the watch lists everything again; it replaces `queues` once listed.
    relisting: Option<HashMap<String, QueueTally>>,
}

impl JobTally {
    /// A job was added or changed; `old` is the job as the store held it until now.
    pub fn applied(&mut self, old: Option<&BatchJob>, new: &BatchJob) {
        if let Some(next) = &mut self.relisting {
            count(next, new, true);
            return;
        }
        if let Some(old) = old {
            count(&mut self.queues, old, false);
        }
        count(&mut self.queues, new, true);
    }

    /// A job was deleted; `old` is the job as the store held it.
    pub fn deleted(&mut self, old: Option<&BatchJob>) {
        if let Some(old) = old {
            count(&mut self.queues, old, false);
        }
    }

    /// The watch lists everything again: jobs deleted meanwhile get no `deleted`.
    pub fn relisting(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    /// The list is complete: it is the count from now on.
    pub fn relisted(&mut self) {
        if let Some(next) = self.relisting.take() {
            self.queues = next;
        }
    }

    /// Each queue that has jobs: its counts and its oldest RUNNABLE job's time.
    pub fn queues(&self) -> impl Iterator<Item = (&str, &QueueTally)> {
        self.queues.iter().map(|(q, t)| (q.as_str(), t))
    }
}

/// Adds one job to its queue's tally, or takes it out.
fn count(queues: &mut HashMap<String, QueueTally>, job: &BatchJob, add: bool) {
    let queue = job.spec.job_queue.as_str();
    if !queues.contains_key(queue) {
        if !add {
            return;
        }
        queues.insert(queue.to_string(), QueueTally::default());
    }
    let t = queues.get_mut(queue).expect("inserted above");
    let status = job.status.as_ref();
    let phase = status.map(|s| s.phase).unwrap_or_default();
    if matches!(phase, JobPhase::Runnable)
        && let Some(since) = status.and_then(|s| s.runnable_at)
    {
        let at = t.runnable_since.entry(since).or_default();
        *at = if add { *at + 1 } else { at.saturating_sub(1) };
        if *at == 0 {
            t.runnable_since.remove(&since);
        }
    }
    let c = &mut t.counts;
    let n = match phase {
        JobPhase::Submitted => &mut c.submitted,
        JobPhase::Pending => &mut c.pending,
        JobPhase::Runnable => &mut c.runnable,
        JobPhase::Starting => &mut c.starting,
        JobPhase::Running => &mut c.running,
        JobPhase::Succeeded => &mut c.succeeded,
        JobPhase::Failed => &mut c.failed,
    };
    *n = if add { *n + 1 } else { n.saturating_sub(1) };
    if t.counts == JobCounts::default() {
        queues.remove(queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn job(name: &str, queue: &str, phase: &str, runnable_at: Option<&str>) -> BatchJob {
        fixtures::job(name).queue(queue).phase(phase, runnable_at).build()
    }

    fn counts(t: &JobTally, queue: &str) -> Option<(JobCounts, Option<DateTime<Utc>>)> {
        t.queues().find(|(q, _)| *q == queue).map(|(_, t)| (t.counts.clone(), t.oldest_runnable()))
    }

    const T1: &str = "2026-01-01T00:00:01Z";
    const T2: &str = "2026-01-01T00:00:02Z";

    #[test]
    fn a_job_moves_between_phases_and_the_oldest_runnable_follows() {
        let mut t = JobTally::default();
        t.relisting();
        t.relisted();
        let (a1, b1) = (job("a", "q", "RUNNABLE", Some(T1)), job("b", "q", "RUNNABLE", Some(T2)));
        t.applied(None, &a1);
        t.applied(None, &b1);
        let (c, oldest) = counts(&t, "q").unwrap();
        assert_eq!((c.runnable, oldest), (2, Some(T1.parse().unwrap())));
        let a2 = job("a", "q", "RUNNING", Some(T1));
        t.applied(Some(&a1), &a2);
        let (c, oldest) = counts(&t, "q").unwrap();
        assert_eq!((c.runnable, c.running, oldest), (1, 1, Some(T2.parse().unwrap())));
        t.deleted(Some(&b1));
        t.deleted(Some(&a2));
        assert_eq!(counts(&t, "q"), None, "a queue without jobs is not kept");
    }

    #[test]
    fn a_relist_counts_anew_and_forgets_jobs_deleted_meanwhile() {
        let mut t = JobTally::default();
        t.applied(None, &job("gone", "q", "RUNNABLE", Some(T1)));
        t.applied(None, &job("kept", "q", "RUNNING", None));
        t.relisting();
        t.applied(None, &job("kept", "q", "SUCCEEDED", None));
        t.applied(None, &job("new", "other", "SUBMITTED", None));
        // Until the list is complete, the counts are those from before.
        assert_eq!(counts(&t, "q").unwrap().0.runnable, 1);
        t.relisted();
        let (c, oldest) = counts(&t, "q").unwrap();
        assert_eq!((c.runnable, c.running, c.succeeded, oldest), (0, 0, 1, None));
        assert_eq!(counts(&t, "other").unwrap().0.submitted, 1);
    }
}
