//! The simulator's random source: SplitMix64 seeded by the seed alone.
//!
//! Its own twenty lines rather than a crate's generator: a seed must replay the same steps
//! for as long as the simulator exists, and general-purpose generators do not promise the
//! same sequence across their versions.

/// A deterministic pseudo-random sequence (SplitMix64).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// The sequence of `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "SimRng::range({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// An index into `len` items; `None` when there are none.
    pub fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.below(len as u64) as usize)
    }

    /// An index chosen with probability proportional to its weight; `None` when every
    /// weight is 0.
    pub fn weighted(&mut self, weights: &[u32]) -> Option<usize> {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        unreachable!("invariant: x < total")
    }
}

#[cfg(test)]
mod tests {
    use super::SimRng;

    #[test]
    fn a_seed_replays_its_sequence_and_seeds_differ() {
        let a: Vec<u64> = {
            let mut r = SimRng::new(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let mut r = SimRng::new(7);
        assert_eq!(a, (0..8).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut other = SimRng::new(8);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn bounded_draws_stay_in_bounds_and_cover_them() {
        let mut r = SimRng::new(1);
        let mut seen = [0u32; 5];
        for _ in 0..1000 {
            let x = r.range(3, 7);
            assert!((3..=7).contains(&x));
            seen[(x - 3) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 100), "{seen:?}");
        let mut hits = [0u32; 3];
        for _ in 0..1000 {
            hits[r.weighted(&[1, 0, 3]).unwrap()] += 1;
        }
        assert_eq!(hits[1], 0);
        assert!(hits[2] > hits[0] * 2, "{hits:?}");
        assert_eq!(r.weighted(&[0, 0]), None);
        assert_eq!(r.index(0), None);
    }
}
