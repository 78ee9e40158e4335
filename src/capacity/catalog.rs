//! A built-in table of real EC2 instance shapes (vCPU, memory, GPUs, us-east-1 on-demand
//! price per hour): what the local provider simulates and what bin-packing chooses among.

use crate::resources::Res;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    /// On-demand USD per hour.
    pub price: f64,
}

impl InstanceType {
    pub fn family(&self) -> &'static str {
        self.name.split('.').next().unwrap_or(self.name)
    }

    /// What the node offers as a Kubernetes node: `capacity`.
    pub fn capacity(&self) -> Res {
        Res::new(self.vcpus as u64 * 1000, self.memory_mib, self.gpus)
    }

    /// What pods can use: capacity minus the kubelet and system reserve, following the
    /// reserve curve managed node groups use (CPU: 6% of the first core, 1% of the second,
    /// 0.5% of cores 3–4, 0.25% above; memory: 255 MiB + 11 MiB per pod slot, plus 100 MiB
    /// for eviction). A job sized to the nominal shape does not fit, as on a real node.
    pub fn allocatable(&self) -> Res {
        let cores = self.vcpus as u64;
        let mut cpu_reserve = 60;
        if cores >= 2 {
            cpu_reserve += 10;
        }
        cpu_reserve += 5 * cores.saturating_sub(2).min(2);
        cpu_reserve += (cores.saturating_sub(4) * 25).div_ceil(10);
        let memory_reserve = 255 + 11 * MAX_PODS as u64 + 100;
        Res::new(cores * 1000 - cpu_reserve, self.memory_mib.saturating_sub(memory_reserve), self.gpus)
    }
}

/// Pod slots per node (the kubelet default).
pub const MAX_PODS: u32 = 110;

const fn it(name: &'static str, vcpus: u32, gib: u64, gpus: u32, price: f64) -> InstanceType {
    InstanceType { name, vcpus, memory_mib: gib * 1024, gpus, price }
}

/// Shapes and prices as published for us-east-1 (Linux, on-demand).
pub static CATALOG: &[InstanceType] = &[
    it("m6i.large", 2, 8, 0, 0.096),
    it("m6i.xlarge", 4, 16, 0, 0.192),
    it("m6i.2xlarge", 8, 32, 0, 0.384),
    it("m6i.4xlarge", 16, 64, 0, 0.768),
    it("m6i.8xlarge", 32, 128, 0, 1.536),
    it("m6i.12xlarge", 48, 192, 0, 2.304),
    it("m6i.16xlarge", 64, 256, 0, 3.072),
    it("m6i.24xlarge", 96, 384, 0, 4.608),
    it("m6i.32xlarge", 128, 512, 0, 6.144),
    it("c6i.large", 2, 4, 0, 0.085),
    it("c6i.xlarge", 4, 8, 0, 0.17),
    it("c6i.2xlarge", 8, 16, 0, 0.34),
    it("c6i.4xlarge", 16, 32, 0, 0.68),
    it("c6i.8xlarge", 32, 64, 0, 1.36),
    it("c6i.12xlarge", 48, 96, 0, 2.04),
    it("c6i.16xlarge", 64, 128, 0, 2.72),
    it("c6i.24xlarge", 96, 192, 0, 4.08),
    it("c6i.32xlarge", 128, 256, 0, 5.44),
    it("r6i.large", 2, 16, 0, 0.126),
    it("r6i.xlarge", 4, 32, 0, 0.252),
    it("r6i.2xlarge", 8, 64, 0, 0.504),
    it("r6i.4xlarge", 16, 128, 0, 1.008),
    it("r6i.8xlarge", 32, 256, 0, 2.016),
    it("r6i.16xlarge", 64, 512, 0, 4.032),
    it("m7i.large", 2, 8, 0, 0.1008),
    it("m7i.xlarge", 4, 16, 0, 0.2016),
    it("m7i.2xlarge", 8, 32, 0, 0.4032),
    it("m7i.4xlarge", 16, 64, 0, 0.8064),
    it("c7i.large", 2, 4, 0, 0.0893),
    it("c7i.xlarge", 4, 8, 0, 0.1785),
    it("c7i.2xlarge", 8, 16, 0, 0.357),
    it("c7i.4xlarge", 16, 32, 0, 0.714),
    it("g5.xlarge", 4, 16, 1, 1.006),
    it("g5.2xlarge", 8, 32, 1, 1.212),
    it("g5.12xlarge", 48, 192, 4, 5.672),
    it("g5.48xlarge", 192, 768, 8, 16.288),
];

/// Families AWS Batch's `optimal` stands for.
const OPTIMAL: &[&str] = &["m6i", "c6i", "r6i"];

/// Resolves a compute environment's `instanceTypes` (exact types, families, or
/// `optimal`) into catalogue entries. Unknown names are returned separately so the
/// compute environment can say which ones it ignored.
pub fn resolve(names: &[String]) -> (Vec<&'static InstanceType>, Vec<String>) {
    let mut found: Vec<&'static InstanceType> = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        let before = found.len();
        let families: Vec<&str> = if name == "optimal" { OPTIMAL.to_vec() } else { vec![name.as_str()] };
        for t in CATALOG {
            if (t.name == name || families.contains(&t.family())) && !found.contains(&t) {
                found.push(t);
            }
        }
        if found.len() == before && !CATALOG.iter().any(|t| t.name == name) {
            unknown.push(name.clone());
        }
    }
    (found, unknown)
}

pub fn lookup(name: &str) -> Option<&'static InstanceType> {
    CATALOG.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_optimal_expand_to_their_types() {
        let (types, unknown) = resolve(&["c6i".into(), "m6i.large".into(), "x99.huge".into()]);
        assert!(types.iter().all(|t| t.family() == "c6i" || t.name == "m6i.large"));
        assert_eq!(types.len(), 10);
        assert_eq!(unknown, vec!["x99.huge".to_string()]);
        let (optimal, _) = resolve(&["optimal".into()]);
        assert!(optimal.iter().any(|t| t.family() == "r6i"));
    }

    #[test]
    fn allocatable_is_less_than_nominal() {
        let t = lookup("m6i.large").unwrap();
        let a = t.allocatable();
        assert!(a.millicpu < 2000 && a.millicpu > 1800, "{a:?}");
        assert!(a.memory_mib < 8192 && a.memory_mib > 6000, "{a:?}");
    }
}
