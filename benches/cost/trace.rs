//! The replayed workload: a seeded trace of batch jobs arriving over a window, as a batch
//! shop's queue sees them. Sizes from half a vCPU to 32, memory at the ratios of the c
//! (2 GiB per vCPU), m (4) and r (8) families, durations from seconds to two minutes
//! (log-uniform: many short jobs, a few long ones), a few one-GPU jobs, two priorities,
//! and arrivals that come both steadily and in bursts.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct TraceJob {
    pub id: usize,
    /// Seconds after the start of the replay.
    pub at_s: f64,
    pub vcpus: f64,
    pub memory_mib: u64,
    pub gpus: u32,
    pub duration_s: u64,
    /// The high-priority queue (else the low one).
    pub high: bool,
}

impl TraceJob {
    pub fn memory_gib(&self) -> f64 {
        self.memory_mib as f64 / 1024.0
    }
}

/// vCPU sizes and how often each comes.
const SIZES: &[(f64, u32)] = &[(0.5, 15), (1.0, 25), (2.0, 25), (4.0, 15), (8.0, 10), (16.0, 6), (32.0, 4)];
/// GiB per vCPU of the c, m and r families, and how often each comes.
const MEMORY_RATIOS: &[(f64, u32)] = &[(2.0, 30), (4.0, 50), (8.0, 20)];
/// Requests leave the instance's reserve room: 85 % of the family's ratio.
const MEMORY_SHARE: f64 = 0.85;
const GPU_SHARE: f64 = 0.03;
const HIGH_SHARE: f64 = 0.3;
const DURATION_S: (f64, f64) = (5.0, 120.0);

fn weighted<T: Copy>(rng: &mut StdRng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (v, w) in table {
        if pick < *w {
            return *v;
        }
        pick -= w;
    }
    table[table.len() - 1].0
}

/// `jobs` jobs over `window_s` seconds, the same for the same seed: 60 % arrive steadily,
/// 40 % in three bursts of a few seconds each.
pub fn generate(seed: u64, jobs: usize, window_s: f64) -> Vec<TraceJob> {
    let mut rng = StdRng::seed_from_u64(seed);
    let bursts: Vec<f64> = (0..3).map(|_| rng.random_range(0.0..window_s * 0.8)).collect();
    let mut out: Vec<TraceJob> = (0..jobs)
        .map(|id| {
            let at_s = if rng.random_bool(0.4) {
                bursts[rng.random_range(0..bursts.len())] + rng.random_range(0.0..5.0)
            } else {
                rng.random_range(0.0..window_s)
            };
            let gpu = rng.random_bool(GPU_SHARE);
            let vcpus = if gpu { 4.0 } else { weighted(&mut rng, SIZES) };
            let ratio = if gpu { 4.0 } else { weighted(&mut rng, MEMORY_RATIOS) };
            let (lo, hi) = (DURATION_S.0.ln(), DURATION_S.1.ln());
            TraceJob {
                id,
                at_s,
                vcpus,
                memory_mib: (vcpus * ratio * MEMORY_SHARE * 1024.0).round() as u64,
                gpus: gpu as u32,
                duration_s: rng.random_range(lo..hi).exp().round() as u64,
                high: rng.random_bool(HIGH_SHARE),
            }
        })
        .collect();
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    out
}

/// Σ vCPU·s and GiB·s the trace asks for (each job's request × its run time).
pub fn demand(trace: &[TraceJob]) -> (f64, f64) {
    trace.iter().fold((0.0, 0.0), |(c, m), j| {
        (c + j.vcpus * j.duration_s as f64, m + j.memory_gib() * j.duration_s as f64)
    })
}

/// `demand` of the jobs that need no GPU, and of those that do with their GPU·s.
pub fn demand_by_kind(trace: &[TraceJob]) -> ((f64, f64), (f64, f64, f64)) {
    let (gpu, cpu): (Vec<TraceJob>, Vec<TraceJob>) = trace.iter().cloned().partition(|j| j.gpus > 0);
    let gpu_s = gpu.iter().map(|j| j.gpus as f64 * j.duration_s as f64).sum();
    let (gc, gm) = demand(&gpu);
    (demand(&cpu), (gc, gm, gpu_s))
}
