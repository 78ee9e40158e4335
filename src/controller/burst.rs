//! Admission comes first. While the scheduling pass creates pods, job status writes take
//! turns, a few at a time, and a write that only rewords why a RUNNABLE job waits is put
//! off until the creations are done.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::api::BatchJob;

/// Job status writes in flight while pods are being created. A status write to a custom
/// resource costs kube-apiserver and etcd about twice a pod create (4 ms of CPU against 2;
/// `hack/apiserver-cost.py`), and a write that waits is decided again after the wait, so
/// it merges with the job's later changes.
const WRITES_WHILE_CREATING: usize = 8;

/// The scheduling pass's bursts of pod creations, as the job controller sees them.
pub struct Bursts {
    /// Bursts under way.
    creating: AtomicUsize,
    /// The status writes allowed during a burst.
    turns: Semaphore,
    /// Jobs whose new waiting reason was put off until the burst ends.
    put_off: Mutex<Vec<ObjectRef<BatchJob>>>,
}

impl Default for Bursts {
    fn default() -> Self {
        Bursts {
            creating: AtomicUsize::new(0),
            turns: Semaphore::new(WRITES_WHILE_CREATING),
            put_off: Mutex::default(),
        }
    }
}

impl Bursts {
    /// Marks a burst of pod creations, until the returned burst ends (or drops).
    pub fn begin(&self) -> Burst<'_> {
        self.creating.fetch_add(1, Ordering::AcqRel);
        Burst(self)
    }

    /// Waits for a job status write's turn: at once, unless pods are being created.
    pub async fn write_turn(&self) -> Option<SemaphorePermit<'_>> {
        if self.creating.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.turns.acquire().await.ok()
    }

    /// Puts off a status write that only rewords why a RUNNABLE job waits, while pods are
    /// being created (a mass admission would otherwise write each admitted job's "waiting
    /// for kube-scheduler" between the creations). Returns whether it did; the job comes
    /// back from `Burst::end`, to be looked at again with whatever happened meanwhile.
    pub fn put_off(&self, job: &BatchJob) -> bool {
        let mut put_off = self.put_off.lock().expect("put-off lock");
        // Read under the lock: a burst that ends after this reads the list after this push.
        if self.creating.load(Ordering::Acquire) == 0 {
            return false;
        }
        put_off.push(ObjectRef::from_obj(job));
        true
    }
}

/// A burst of pod creations under way.
pub struct Burst<'a>(&'a Bursts);

impl Burst<'_> {
    /// Ends the burst; returns the jobs whose writes were put off, to look at again.
    pub fn end(self) -> Vec<ObjectRef<BatchJob>> {
        let bursts = self.0;
        drop(self);
        std::mem::take(&mut *bursts.put_off.lock().expect("put-off lock"))
    }
}

impl Drop for Burst<'_> {
    fn drop(&mut self) {
        self.0.creating.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;
    use futures::FutureExt;

    fn job(name: &str) -> BatchJob {
        fixtures::job(name).build()
    }

    #[test]
    fn without_a_burst_writes_go_at_once_and_nothing_is_put_off() {
        let bursts = Bursts::default();
        assert!(bursts.write_turn().now_or_never().expect("no wait").is_none());
        assert!(!bursts.put_off(&job("a")));
    }

    #[test]
    fn a_burst_limits_writes_and_hands_back_what_it_put_off() {
        let bursts = Bursts::default();
        let burst = bursts.begin();
        let turns: Vec<_> = (0..WRITES_WHILE_CREATING)
            .map(|_| bursts.write_turn().now_or_never().expect("a free turn").expect("a permit"))
            .collect();
        assert!(bursts.write_turn().now_or_never().is_none(), "the next write waits its turn");
        drop(turns);
        assert!(bursts.put_off(&job("a")));
        assert!(bursts.put_off(&job("b")));
        let back: Vec<String> = burst.end().into_iter().map(|r| r.name).collect();
        assert_eq!(back, ["a", "b"]);
        // Over: writes go at once again, and nothing is left to hand back.
        assert!(bursts.write_turn().now_or_never().expect("no wait").is_none());
        assert!(!bursts.put_off(&job("c")));
        assert!(bursts.begin().end().is_empty());
    }

    #[test]
    fn a_dropped_burst_ends_too() {
        let bursts = Bursts::default();
        drop(bursts.begin());
        assert!(!bursts.put_off(&job("a")));
    }
}
