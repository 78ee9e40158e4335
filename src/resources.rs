//! Resource amounts as plain integers (millicores, MiB, GPUs), shared by the pure
//! scheduling and capacity cores, and parsing of Kubernetes quantity strings into them.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// The extended resource a GPU is requested and offered as.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// An amount of compute: what a job requests, what a node offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Res {
    pub millicpu: u64,
    pub memory_mib: u64,
    pub gpus: u32,
}

impl Res {
    pub const ZERO: Res = Res { millicpu: 0, memory_mib: 0, gpus: 0 };

    pub fn new(millicpu: u64, memory_mib: u64, gpus: u32) -> Self {
        Res { millicpu, memory_mib, gpus }
    }

    /// Whether `other` fits inside `self`.
    pub fn fits(&self, other: &Res) -> bool {
        other.millicpu <= self.millicpu && other.memory_mib <= self.memory_mib && other.gpus <= self.gpus
    }

    pub fn vcpus(&self) -> f64 {
        self.millicpu as f64 / 1000.0
    }

    pub fn saturating_sub(self, o: Res) -> Res {
        Res {
            millicpu: self.millicpu.saturating_sub(o.millicpu),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }

    /// Component-wise maximum.
    pub fn max(self, o: Res) -> Res {
        Res {
            millicpu: self.millicpu.max(o.millicpu),
            memory_mib: self.memory_mib.max(o.memory_mib),
            gpus: self.gpus.max(o.gpus),
        }
    }
}

impl Add for Res {
    type Output = Res;
    fn add(self, o: Res) -> Res {
        Res {
            millicpu: self.millicpu + o.millicpu,
            memory_mib: self.memory_mib + o.memory_mib,
            gpus: self.gpus + o.gpus,
        }
    }
}
impl AddAssign for Res {
    fn add_assign(&mut self, o: Res) {
        *self = *self + o;
    }
}
impl Sub for Res {
    type Output = Res;
    fn sub(self, o: Res) -> Res {
        self.saturating_sub(o)
    }
}
impl SubAssign for Res {
    fn sub_assign(&mut self, o: Res) {
        *self = self.saturating_sub(o);
    }
}

impl fmt::Display for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPU, {}", fmt_vcpus(self.millicpu), fmt_mib(self.memory_mib))?;
        if self.gpus > 0 {
            write!(f, ", {} GPU", self.gpus)?;
        }
        Ok(())
    }
}

pub fn fmt_vcpus(millicpu: u64) -> String {
    if millicpu.is_multiple_of(1000) {
        (millicpu / 1000).to_string()
    } else {
        let s = format!("{:.2}", millicpu as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

pub fn fmt_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}Gi", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1}Gi", mib as f64 / 1024.0)
    } else {
        format!("{mib}Mi")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a Kubernetes quantity (examples: 500m, 2, 512Mi, 4Gi)")]
pub struct QuantityError(pub String);

/// Parses a quantity into its value in `unit` (1 for plain numbers, 1/1000 for millis),
/// rounding up so that a request is never under-counted.
fn parse_scaled(q: &str, unit: f64) -> Result<u64, QuantityError> {
    let err = || QuantityError(q.to_string());
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().map_err(|_| err())?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        _ => {
            // exponent form: 1e3
            if let Some(exp) = suffix.strip_prefix('e').or_else(|| suffix.strip_prefix('E')) {
                10f64.powi(exp.parse::<i32>().map_err(|_| err())?)
            } else {
                return Err(err());
            }
        }
    };
    if !num.is_finite() || num < 0.0 {
        return Err(err());
    }
    Ok((num * mult / unit - 1e-9).ceil().max(0.0) as u64)
}

/// CPU quantity ("500m", "2") in millicores.
pub fn parse_millicpu(q: &str) -> Result<u64, QuantityError> {
    parse_scaled(q, 1e-3)
}

/// Memory quantity ("512Mi", "2Gi", "1G") in MiB.
pub fn parse_mib(q: &str) -> Result<u64, QuantityError> {
    parse_scaled(q, 1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_millicores_and_mebibytes() {
        assert_eq!(parse_millicpu("500m"), Ok(500));
        assert_eq!(parse_millicpu("2"), Ok(2000));
        assert_eq!(parse_millicpu("0.25"), Ok(250));
        assert_eq!(parse_mib("512Mi"), Ok(512));
        assert_eq!(parse_mib("4Gi"), Ok(4096));
        assert_eq!(parse_mib("1G"), Ok(954));
        assert_eq!(parse_mib("1048576"), Ok(1));
        assert!(parse_mib("lots").is_err());
        assert!(parse_millicpu("-1").is_err());
    }

    #[test]
    fn fits_checks_every_dimension() {
        let node = Res::new(2000, 4096, 0);
        assert!(node.fits(&Res::new(2000, 4096, 0)));
        assert!(!node.fits(&Res::new(1000, 1024, 1)));
        assert!(!node.fits(&Res::new(2001, 1, 0)));
    }
}
