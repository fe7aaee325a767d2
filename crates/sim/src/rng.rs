//! The simulator's only source of randomness: a small, fast, seedable PRNG.
//!
//! Every decision of a run (message delays, drops, crashes, client choices, Raft's own election
//! jitter) derives from the run's one `u64` seed through this generator, so a seed replays a run
//! exactly. No global RNG and no wall clock are ever consulted.

/// One step of splitmix64; used to expand a seed into well-mixed state words and to derive
/// independent sub-seeds (for example each Raft node's `Config::seed`).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** seeded through splitmix64 (the seeding its authors recommend).
#[derive(Clone, Debug)]
pub struct SimRng {
    state: [u64; 4],
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        let mut mix = seed;
        let state = [
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
        ];
        SimRng { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A value in `[0, bound)`; `bound` must be positive. The tiny modulo bias is irrelevant for
    /// a fault schedule.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SimRng::below expects a positive bound, found 0");
        self.next_u64() % bound
    }

    /// A value in the inclusive range `[low, high]`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(
            low <= high,
            "SimRng::range expects low <= high, found {low} > {high}"
        );
        low + self.below(high - low + 1)
    }

    /// True with probability `per_million / 1_000_000`.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        assert!(!items.is_empty(), "SimRng::pick expects a non-empty slice");
        &items[self.below(items.len() as u64) as usize]
    }

    /// An independent generator for a sub-component, so that adding a random draw in one part of
    /// the simulator does not shift every other part's choices more than necessary.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_different_seeds_differ() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        let mut c = SimRng::new(43);
        let seq_a: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let seq_b: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let seq_c: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(seq_a, seq_b);
        assert_ne!(seq_a, seq_c);
    }

    #[test]
    fn range_stays_inside_bounds_and_reaches_both_ends() {
        let mut rng = SimRng::new(7);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            let v = rng.range(3, 6);
            assert!((3..=6).contains(&v), "range(3, 6) produced {v}");
            seen[(v - 3) as usize] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "range(3, 6) never produced some value: {seen:?}"
        );
    }
}
