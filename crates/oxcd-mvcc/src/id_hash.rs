//! A hasher for maps keyed by counters (watcher keys, request IDs).
//!
//! The standard SipHash resists collision attacks on keys an attacker
//! chooses; these keys are handed out by a counter, so one multiply
//! spreads them as well, at a fraction of the cost. In the watch fan-out
//! and on the proposal path SipHash cost more than the map operations
//! themselves.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes integers with one multiply (Fibonacci hashing); other input,
/// byte by byte.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

/// The multiplier: 2^64 divided by the golden ratio.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(GOLDEN);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` keyed by counter-made IDs.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets() {
        // The low bits pick hashbrown's bucket, the top 7 its control
        // byte: sequential IDs must vary in both.
        let hashes: Vec<u64> = (1000u64..1064)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_u64(id);
                h.finish()
            })
            .collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 63).collect();
        let top: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 32, "{}", low.len());
        assert!(top.len() > 32, "{}", top.len());
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..1000 {
            m.insert(i, i * 2);
        }
        assert_eq!(m.get(&500), Some(&1000));
    }
}
