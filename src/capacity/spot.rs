//! A simulated Spot market, for the `local` provider and the cost benchmark: a price per
//! instance type below its On-Demand price that moves over time, and interruptions at a
//! set rate. Deterministic from a seed and the wall clock, so that an operator and a
//! benchmark (or two contenders of one) see the same market without talking to each other.

use std::hash::{Hash, Hasher};

use super::InstanceType;

/// The market's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpotMarket {
    pub seed: u64,
    /// Interruptions per Spot node per hour (a Poisson process per node).
    pub interruptions_per_node_hour: f64,
    /// How long a price takes to go through one swing, in seconds.
    pub period_s: f64,
}

impl Default for SpotMarket {
    fn default() -> Self {
        SpotMarket { seed: 1, interruptions_per_node_hour: 0.0, period_s: 600.0 }
    }
}

/// Lowest and highest base discount off the On-Demand price (AWS's Spot discounts are
/// mostly within 50–80 % for these families).
const BASE_DISCOUNT: (f64, f64) = (0.55, 0.75);
/// How far the discount swings around its base, in points.
const SWING: f64 = 0.08;

/// A number in [0, 1) from `parts`, fixed for a seed.
fn unit(seed: u64, parts: &[&dyn HashPart]) -> f64 {
    let mut h = std::hash::DefaultHasher::new();
    seed.hash(&mut h);
    for p in parts {
        p.feed(&mut h);
    }
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

trait HashPart {
    fn feed(&self, h: &mut std::hash::DefaultHasher);
}
impl HashPart for &str {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}
impl HashPart for u64 {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}

impl SpotMarket {
    /// The share of the On-Demand price `ty` sells at below it, at `t` (seconds of the
    /// Unix clock): a base for the type, swinging ±8 points with a phase of its own.
    pub fn discount(&self, ty: &str, t: f64) -> f64 {
        let base = BASE_DISCOUNT.0 + (BASE_DISCOUNT.1 - BASE_DISCOUNT.0) * unit(self.seed, &[&ty, &0u64]);
        let phase = std::f64::consts::TAU * unit(self.seed, &[&ty, &1u64]);
        let swing = SWING * (std::f64::consts::TAU * t / self.period_s + phase).sin();
        (base + swing).clamp(0.0, 0.95)
    }

    /// USD per hour of a Spot `ty` at `t`.
    pub fn price(&self, ty: &InstanceType, t: f64) -> f64 {
        ty.price * (1.0 - self.discount(ty.name, t))
    }

    /// Mean USD of a Spot `ty` running from `from` to `to` (Unix seconds), in steps of at
    /// most 10 s.
    pub fn cost(&self, ty: &InstanceType, from: f64, to: f64) -> f64 {
        if to <= from {
            return 0.0;
        }
        let steps = ((to - from) / 10.0).ceil().max(1.0) as u64;
        let dt = (to - from) / steps as f64;
        (0..steps).map(|i| self.price(ty, from + (i as f64 + 0.5) * dt) * dt / 3600.0).sum()
    }

    /// Whether the Spot node `node` is taken back during the `tick_s`-long tick numbered
    /// `tick` (Unix seconds ÷ `tick_s`): an independent draw per node and tick, with the
    /// probability a Poisson process of the set rate gives.
    pub fn interrupted(&self, node: &str, tick: u64, tick_s: f64) -> bool {
        if self.interruptions_per_node_hour <= 0.0 {
            return false;
        }
        let p = 1.0 - (-self.interruptions_per_node_hour * tick_s / 3600.0).exp();
        unit(self.seed, &[&node, &tick]) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::catalog::lookup;

    #[test]
    fn prices_stay_below_on_demand_and_move() {
        let m = SpotMarket::default();
        let t = lookup("m6i.large").unwrap();
        let prices: Vec<f64> = (0..60).map(|i| m.price(t, 1.0e9 + i as f64 * 10.0)).collect();
        assert!(prices.iter().all(|p| *p > 0.0 && *p < t.price * 0.5), "{prices:?}");
        let (lo, hi) = prices.iter().fold((f64::MAX, 0.0f64), |(l, h), p| (l.min(*p), h.max(*p)));
        assert!(hi - lo > t.price * 0.05, "a swing of 8 points shows over a period: {lo}..{hi}");
        // The same seed, the same market; types differ.
        assert_eq!(m.discount("m6i.large", 5.0), SpotMarket::default().discount("m6i.large", 5.0));
        assert_ne!(m.discount("m6i.large", 5.0), m.discount("c6i.large", 5.0));
    }

    #[test]
    fn cost_integrates_the_price() {
        let m = SpotMarket { period_s: 1.0e12, ..SpotMarket::default() };
        let t = lookup("c6i.xlarge").unwrap();
        let hour = m.cost(t, 0.0, 3600.0);
        assert!((hour - m.price(t, 0.0)).abs() < 1e-6, "{hour}");
        assert_eq!(m.cost(t, 10.0, 5.0), 0.0);
    }

    #[test]
    fn interruptions_come_at_the_set_rate() {
        let m = SpotMarket { interruptions_per_node_hour: 6.0, ..SpotMarket::default() };
        // 1,000 node-hours in 10-s ticks: about 6,000 interruptions.
        let hits = (0..1000)
            .flat_map(|n| (0..360u64).map(move |tick| (n, tick)))
            .filter(|(n, tick)| m.interrupted(&format!("node-{n}"), *tick, 10.0))
            .count();
        assert!((5_500..6_500).contains(&hits), "{hits}");
        assert!(!SpotMarket::default().interrupted("node-0", 0, 10.0));
    }
}
