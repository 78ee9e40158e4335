//! The budget for writing the steps a job passes on its way: RUNNABLE before its pod exists,
//! STARTING, RUNNING. Its end, a failed attempt, and why it waits are not steps: they are
//! written at once, always.
//!
//! Each step write costs kube-apiserver and etcd about two pod creates. When thousands of
//! jobs start at once, every step would be written: the kubelets' (or kwok's) own pod status
//! patches then wait behind them, pods end later, more of them pass the few seconds after
//! which a step is written, and the load feeds itself. So steps are written at most `rate`
//! a second across all jobs. A job whose step finds the budget spent joins a line; the line
//! is served first come, first served as the budget refills, so every job that stays in a
//! step long enough is seen in it, and one that moves on meanwhile is written once, where it
//! got to. Under a light load (a budget's worth of jobs starting a second) nothing changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::metrics::metrics;

/// The step-write budget, and the line of jobs waiting for it.
pub struct StepWrites<T> {
    /// `None`: no budget, every step is written at once.
    limiter: Option<DefaultDirectRateLimiter>,
    line: Mutex<Line<T>>,
    /// Rings when the line gets its first job.
    joined: Notify,
}

struct Line<T> {
    order: VecDeque<T>,
    /// The jobs in `order` still waiting (one that has gone on needs no turn: see `forget`).
    waiting: HashSet<T>,
    /// Jobs given a turn, and when, until their next reconcile uses it (or, for a job
    /// deleted meanwhile, until it expires).
    granted: HashMap<T, Instant>,
}

/// A turn not used within this long is dropped (its job was deleted, say); a job that still
/// needs one joins the line again.
const TURN_KEPT: Duration = Duration::from_secs(60);

impl<T> Default for Line<T> {
    fn default() -> Self {
        Line { order: VecDeque::new(), waiting: HashSet::new(), granted: HashMap::new() }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<T: Hash + Eq + Clone> StepWrites<T> {
    /// At most `per_second` step writes a second (with as many at once); 0: no budget.
    pub fn new(per_second: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|n| RateLimiter::direct(Quota::per_second(n)));
        StepWrites { limiter, line: Mutex::default(), joined: Notify::new() }
    }

    /// Whether `job`'s step may be written now: it was given a turn, or the line is empty and
    /// the budget has room. Otherwise it joins the line (once), and `serve` sends it back.
    pub fn may_write(&self, job: &T) -> bool {
        let Some(limiter) = &self.limiter else { return true };
        let mut line = lock(&self.line);
        if line.granted.remove(job).is_some() {
            return true;
        }
        if line.waiting.is_empty() && limiter.check().is_ok() {
            return true;
        }
        if line.waiting.insert(job.clone()) {
            line.order.push_back(job.clone());
            metrics().job_steps_deferred.inc();
            metrics().job_step_line.set(line.waiting.len() as i64);
            if line.waiting.len() == 1 {
                self.joined.notify_one();
            }
        }
        false
    }

    /// `job` was reconciled and needs no turn (it wrote something that is not a step, or
    /// nothing): it leaves the line, and a turn it was given and did not use is dropped.
    pub fn forget(&self, job: &T) {
        if self.limiter.is_none() {
            return;
        }
        let mut line = lock(&self.line);
        line.granted.remove(job);
        if line.waiting.remove(job) {
            metrics().job_step_line.set(line.waiting.len() as i64);
            if line.waiting.is_empty() {
                // Only jobs that went on are left in the order: none to serve.
                line.order.clear();
            }
        }
    }

    /// Jobs waiting in the line.
    pub fn waiting(&self) -> usize {
        lock(&self.line).waiting.len()
    }

    /// The next job in the line that still waits; it is given its turn.
    fn next(&self) -> Option<T> {
        let mut line = lock(&self.line);
        let now = Instant::now();
        if line.granted.len() >= 1024 {
            line.granted.retain(|_, at| now.duration_since(*at) < TURN_KEPT);
        }
        while let Some(job) = line.order.pop_front() {
            if line.waiting.remove(&job) {
                line.granted.insert(job.clone(), now);
                return Some(job);
            }
        }
        None
    }

    /// Serves the line as the budget refills: each job whose turn comes is sent to `tx`
    /// (the job controller), whose next reconcile of it may write. Runs for ever.
    pub async fn serve(&self, tx: UnboundedSender<T>) {
        let Some(limiter) = &self.limiter else { return futures::future::pending().await };
        loop {
            let joined = self.joined.notified();
            if self.waiting() == 0 {
                joined.await;
                continue;
            }
            limiter.until_ready().await;
            if let Some(job) = self.next() {
                let _ = tx.unbounded_send(job);
            }
            metrics().job_step_line.set(self.waiting() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn without_a_budget_every_step_is_written() {
        let steps = StepWrites::new(0);
        assert!((0..1000).all(|i| steps.may_write(&i)));
        assert_eq!(steps.waiting(), 0);
    }

    #[test]
    fn past_the_budget_jobs_wait_in_line_once_each() {
        let steps = StepWrites::new(3);
        let now: Vec<bool> = (0..5).map(|i| steps.may_write(&i)).collect();
        assert_eq!(now, [true, true, true, false, false]);
        // Asking again does not queue a job twice.
        assert!(!steps.may_write(&3));
        assert_eq!(steps.waiting(), 2);
        // A job that went on (it ended, say) leaves the line and is not served.
        steps.forget(&3);
        assert_eq!(steps.next(), Some(4));
        assert_eq!(steps.next(), None);
        // Its turn lets it write once, whatever the budget.
        assert!(steps.may_write(&4));
        assert!(!steps.may_write(&4), "a turn is used once");
    }

    #[test]
    fn while_jobs_wait_a_newcomer_does_not_jump_the_line() {
        let steps = StepWrites::new(1000);
        assert!((0..1000).all(|i| steps.may_write(&i)));
        assert!(!steps.may_write(&1000));
        std::thread::sleep(Duration::from_millis(20));
        // The budget has room again, but 1000 came first.
        assert!(!steps.may_write(&1001));
        assert_eq!(steps.next(), Some(1000));
        assert_eq!(steps.next(), Some(1001));
    }

    #[tokio::test]
    async fn the_line_is_served_first_come_at_the_budgets_rate() {
        let steps = std::sync::Arc::new(StepWrites::new(20));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let served = tokio::spawn({
            let steps = steps.clone();
            async move { steps.serve(tx).await }
        });
        let start = std::time::Instant::now();
        let written_now = (0..30).filter(|i| steps.may_write(i)).count();
        assert_eq!(written_now, 20, "the first second's budget at once");
        let order: Vec<i32> = rx.take(10).collect().await;
        assert_eq!(order, (20..30).collect::<Vec<_>>());
        // Ten more at 20 a second: about half a second.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "served in {took:?}");
        assert!((20..30).all(|i| steps.may_write(&i)), "each served job has its turn");
        served.abort();
    }
}
