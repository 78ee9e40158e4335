//! Per-object backoff for failed reconciles: exponential from the first wait, capped at the
//! longest; an object's count starts over once a reconcile of it succeeds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts a failure of `key`; returns how long to wait before the next try.
    pub fn failed(&self, key: &str, first: Duration, max: Duration) -> Duration {
        let mut all = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = all.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        first.saturating_mul(1u32 << (*n - 1).min(16)).min(max)
    }

    /// `key` reconciled: its next failure waits the first wait again.
    pub fn succeeded(&self, key: &str) {
        let mut all = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !all.is_empty() {
            all.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let f = Failures::default();
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let waits: Vec<u64> = (0..11).map(|_| f.failed("ce/a", first, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(f.failed("ce/b", first, max).as_secs(), 1, "each object counts its own");
        f.succeeded("ce/a");
        assert_eq!(f.failed("ce/a", first, max).as_secs(), 1);
    }
}
