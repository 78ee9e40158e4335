//! Compact index sets for array jobs: `"0-99,105"`. Status stays small however many
//! children an array has.

use std::collections::BTreeSet;

/// Encodes indexes as sorted, merged ranges.
pub fn encode<'a>(indexes: impl IntoIterator<Item = &'a u32>) -> String {
    let sorted: BTreeSet<u32> = indexes.into_iter().copied().collect();
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for i in sorted {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some(r) => {
                out.push(fmt(r));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    out.extend(run.map(fmt));
    out.join(",")
}

fn fmt((a, b): (u32, u32)) -> String {
    if a == b { a.to_string() } else { format!("{a}-{b}") }
}

/// Decodes what `encode` wrote; malformed parts are skipped.
pub fn decode(s: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b.min(a.saturating_add(1_000_000)));
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_stay_short() {
        let set: BTreeSet<u32> = (0..100).chain([105, 107, 108]).collect();
        let s = encode(&set);
        assert_eq!(s, "0-99,105,107-108");
        assert_eq!(decode(&s), set);
        assert_eq!(encode(&BTreeSet::new()), "");
        let all: BTreeSet<u32> = (0..10_000).collect();
        assert_eq!(encode(&all), "0-9999");
    }
}
