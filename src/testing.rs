//! What the unit tests and simulations share: a seeded PRNG and the seed list a test runs.
//!
//! Every randomized test prints its seed, and the environment variable it names replays one
//! seed exactly (the generator is the only source of randomness in such a test).

/// SplitMix64: small, fast, and every seed (0 too) gives a full-period stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The seeds a randomized test runs: the one in `var` when it is set, else `1..=count`.
pub fn seeds(var: &str, count: u64) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => vec![s.parse().unwrap_or_else(|_| panic!("{var} is a number"))],
        Err(_) => (1..=count).collect(),
    }
}
