//! A small seeded PRNG (SplitMix64), shared by the unit tests (`src/testing.rs`) and the
//! integration tests, so that a failing random test can be replayed from its printed seed.

/// SplitMix64: small, fast, and every seed (0 too) gives a full-period stream.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from `COREKV_TEST_SEED` when set, else from the clock; prints the seed so a
    /// failing run (whose output cargo shows) can be replayed.
    pub fn seeded(test: &str) -> Rng {
        let seed = std::env::var("COREKV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.expect("clock").as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (replay with COREKV_TEST_SEED={seed})");
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

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True `p` times in a hundred.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}
