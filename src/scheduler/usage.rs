//! Fair-share usage per queue and share: vCPU-seconds that decay by each queue's half-life
//! (`shareDecaySeconds`) and grow with what the share's pods hold, as the planner reads it.

use std::collections::{HashMap, HashSet};

use super::FairShare;

/// Fair-share usage of one share.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShareUsage {
    /// vCPU-seconds, halved every `shareDecaySeconds`.
    pub decayed: f64,
    /// vCPUs its pods hold now.
    pub running: f64,
}

/// Usage per queue and share, carried from pass to pass.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    queues: HashMap<String, HashMap<String, ShareUsage>>,
}

/// A fair-share queue's policy, as the usage needs it.
#[derive(Clone, Debug)]
pub struct Policy {
    /// (share identifier or prefix ending in `*`, weight).
    pub weights: Vec<(String, f64)>,
    /// The half-life of usage; 0 counts only what runs now.
    pub share_decay_seconds: u32,
    pub compute_reservation: u32,
}

impl Usage {
    /// Adds recorded usage (vCPU-seconds) to a share, as when Barge starts again.
    pub fn restore(&mut self, queue: &str, share: &str, decayed: f64) {
        self.share(queue, share).decayed += decayed;
    }

    fn share(&mut self, queue: &str, share: &str) -> &mut ShareUsage {
        self.queues.entry(queue.to_string()).or_default().entry(share.to_string()).or_default()
    }

    /// Moves time on by `dt` seconds: every share decays by its queue's half-life
    /// (`decay_of`, at least a second), then each (queue, share) in `running` accrues the
    /// vCPUs it holds over `dt`. Returns the queues that accrued.
    pub fn advance(
        &mut self,
        dt: f64,
        decay_of: &HashMap<String, u32>,
        running: &HashMap<(String, String), f64>,
    ) -> HashSet<String> {
        for (q, shares) in self.queues.iter_mut() {
            let half_life = decay_of.get(q).copied().unwrap_or(0).max(1) as f64;
            for u in shares.values_mut() {
                u.decayed *= 0.5f64.powf(dt / half_life);
                u.running = 0.0;
            }
        }
        let mut accrued = HashSet::new();
        for ((q, share), vcpus) in running {
            let u = self.share(q, share);
            u.running = *vcpus;
            u.decayed += vcpus * dt;
            accrued.insert(q.clone());
        }
        accrued
    }

    /// Each queue's shares and their usage.
    pub fn queues(&self) -> impl Iterator<Item = (&String, &HashMap<String, ShareUsage>)> {
        self.queues.iter()
    }

    /// What the planner reads of a fair-share queue: its weights, and each share's usage in
    /// vCPUs (decayed vCPU-seconds over the decay window, or what runs now without one).
    pub fn fair_share(&self, queue: &str, policy: &Policy) -> FairShare {
        let shares = self.queues.get(queue);
        let usage = |u: &ShareUsage| match policy.share_decay_seconds {
            0 => u.running,
            d => u.decayed / d as f64,
        };
        FairShare {
            weights: policy.weights.clone(),
            usage: shares.map(|m| m.iter().map(|(s, u)| (s.clone(), usage(u))).collect()).unwrap_or_default(),
            running: shares
                .map(|m| m.iter().map(|(s, u)| (s.clone(), u.running)).collect())
                .unwrap_or_default(),
            compute_reservation: policy.compute_reservation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(decay: u32) -> Policy {
        Policy { weights: vec![("gold".into(), 1.0)], share_decay_seconds: decay, compute_reservation: 0 }
    }

    #[test]
    fn usage_halves_every_half_life_and_grows_with_what_runs() {
        let mut u = Usage::default();
        u.restore("q", "gold", 400.0);
        let decay = HashMap::from([("q".to_string(), 100)]);
        let running = HashMap::from([(("q".to_string(), "gold".to_string()), 2.0)]);
        let accrued = u.advance(100.0, &decay, &running);
        assert!(accrued.contains("q"));
        // 400 halved, plus 2 vCPUs for 100 s.
        let fs = u.fair_share("q", &policy(100));
        assert!((fs.usage["gold"] - 4.0).abs() < 1e-9, "{:?}", fs.usage);
        assert_eq!(fs.running["gold"], 2.0);
    }

    #[test]
    fn without_a_decay_window_only_what_runs_now_counts() {
        let mut u = Usage::default();
        let decay = HashMap::from([("q".to_string(), 0)]);
        let running = HashMap::from([(("q".to_string(), "gold".to_string()), 3.0)]);
        u.advance(10.0, &decay, &running);
        assert_eq!(u.fair_share("q", &policy(0)).usage["gold"], 3.0);
        assert!(u.advance(10.0, &decay, &HashMap::new()).is_empty());
        assert_eq!(u.fair_share("q", &policy(0)).usage["gold"], 0.0);
    }
}
