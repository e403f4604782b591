//! What the unit tests and simulations share: a seeded PRNG and the seed list a test runs.
//!
//! Every randomized test prints its seed, and the environment variable it names replays one
//! seed exactly (the generator is the only source of randomness in such a test).

#[path = "../tests/support/rng.rs"]
#[allow(dead_code)]
mod rng;
pub use rng::Rng;

/// The seeds a randomized test runs: the one in `var` when it is set, else `1..=count`.
pub fn seeds(var: &str, count: u64) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => vec![s.parse().unwrap_or_else(|_| panic!("{var} is a number"))],
        Err(_) => (1..=count).collect(),
    }
}
