//! What the load is made of: operation kinds, keys, values, and the seeded choice of the next
//! operation and key. No I/O and no clocks here, so the same seed always yields the same sequence.
//!
//! Keys are `key:` followed by the zero-padded key index, exactly `--key-size` bytes long. When the
//! size is tight the prefix shrinks to leave room for the digits of the largest index; a size too
//! small for those digits is refused by `Config` rather than truncated into colliding keys.
//!
//! Values are one shared deterministic filler of `--value-size` printable bytes. Zipf ranks map
//! directly to key indexes (rank 1 is key 0); the node hashes keys to partitions, so hot keys
//! still spread over cores.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Zipf};

use crate::config::{Config, Distribution, Mix};

/// The operations a run issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Get = 0,
    Set = 1,
    Del = 2,
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Get, OpKind::Set, OpKind::Del];

    /// The name used by `--mix`, the table and the JSON summary.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Set => "set",
            OpKind::Del => "del",
        }
    }
}

const KEY_PREFIX: &[u8] = b"key:";

/// Decimal digits of the largest key index, `keys - 1`.
pub fn key_digits(keys: u64) -> usize {
    let mut largest = keys.saturating_sub(1);
    let mut digits = 1;
    while largest >= 10 {
        largest /= 10;
        digits += 1;
    }
    digits
}

/// How key indexes become fixed-size keys: the prefix is cut to leave room for the digits of the
/// largest index, so every key of one run has the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    size_bytes: usize,
    prefix_bytes: usize,
}

impl KeyFormat {
    /// `None` when `size_bytes` cannot hold the digits of `keys - 1`.
    pub fn new(keys: u64, size_bytes: usize) -> Option<KeyFormat> {
        let room = size_bytes.checked_sub(key_digits(keys))?;
        Some(KeyFormat { size_bytes, prefix_bytes: KEY_PREFIX.len().min(room) })
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Writes key `index` into `out`, which must be `size_bytes` long.
    pub fn write(&self, index: u64, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.size_bytes);
        let (prefix, digits) = out.split_at_mut(self.prefix_bytes);
        prefix.copy_from_slice(&KEY_PREFIX[..self.prefix_bytes]);
        let mut rest = index;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        debug_assert_eq!(rest, 0, "key {index} does not fit in {} bytes", self.size_bytes);
    }

    /// The key for `index`, as a new buffer.
    #[cfg(test)]
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut out = vec![0; self.size_bytes];
        self.write(index, &mut out);
        out
    }
}

/// `value_size_bytes` of printable filler derived from `seed`.
pub fn value(value_size_bytes: usize, seed: u64) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..value_size_bytes)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect::<Vec<u8>>()
        .into()
}

/// A seed for stream `index` (one per connection) that differs well from its neighbours'.
pub fn stream_seed(seed: u64, index: u64) -> u64 {
    // splitmix64 finalizer over seed and index.
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Draws key indexes in `0..keys`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipf { keys: u64, zipf: Zipf<f64> },
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64, theta: f64) -> Result<KeyChooser, String> {
        assert!(keys >= 1, "an empty key space has no keys to choose");
        Ok(match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipf => KeyChooser::Zipf {
                keys,
                zipf: Zipf::new(keys as f64, theta).map_err(|e| format!("--zipf-theta: {e}"))?,
            },
        })
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.random_range(0..*keys),
            KeyChooser::Zipf { keys, zipf } => {
                // Samples are ranks in [1, keys] as floats; clamp guards the float edge.
                let rank = zipf.sample(rng) as u64;
                rank.clamp(1, *keys) - 1
            }
        }
    }
}

/// One connection's seeded stream of (operation, key index) for the measured run.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: SmallRng,
    /// Cumulative weights in `OpKind::ALL` order; the last is the mix total.
    cumulative: [u64; 3],
    keys: KeyChooser,
}

impl Workload {
    pub fn new(mix: Mix, keys: KeyChooser, seed: u64) -> Workload {
        let mut cumulative = [0; 3];
        let mut sum = 0;
        for (slot, kind) in cumulative.iter_mut().zip(OpKind::ALL) {
            sum += u64::from(mix.weight(kind));
            *slot = sum;
        }
        assert!(sum > 0, "a mix must have a positive total weight");
        Workload { rng: SmallRng::seed_from_u64(seed), cumulative, keys }
    }

    /// The workload of connection `index` under `cfg`.
    pub fn for_connection(cfg: &Config, index: u64) -> Result<Workload, String> {
        let keys = KeyChooser::new(cfg.distribution, cfg.keys, cfg.zipf_theta)?;
        Ok(Workload::new(cfg.mix, keys, stream_seed(cfg.seed, index)))
    }

    pub fn next(&mut self) -> (OpKind, u64) {
        let total = self.cumulative[2];
        let pick = self.rng.random_range(0..total);
        let slot = self.cumulative.iter().position(|&c| pick < c).unwrap_or(2);
        let kind = OpKind::ALL[slot];
        (kind, self.keys.next(&mut self.rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_exact_size_and_are_deterministic_and_distinct() {
        let fmt = |keys, size| KeyFormat::new(keys, size).unwrap();
        assert_eq!(fmt(100, 10).key(42), b"key:000042");
        let k = fmt(100_000, 50).key(42);
        assert_eq!(k.len(), 50);
        assert!(k.starts_with(b"key:0000"));
        assert!(k.ends_with(b"00042"));
        // The prefix gives way to the digits, never the other way round.
        assert_eq!(fmt(100_000, 5).key(99_999), b"99999");
        assert_eq!(fmt(100_000, 5).key(7), b"00007");
        assert_eq!(fmt(100_000, 7).key(99_999), b"ke99999");
        assert_eq!(fmt(1, 1).key(0), b"0");
        assert_eq!(KeyFormat::new(100_000, 4), None);
        assert_eq!(KeyFormat::new(10_001, 4), None);
        assert!(KeyFormat::new(10_000, 4).is_some());
        let f = fmt(1000, 4);
        let keys: std::collections::HashSet<Vec<u8>> = (0..1000).map(|i| f.key(i)).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.iter().all(|k| k.len() == 4 && k.starts_with(b"k")));
        assert_eq!(key_digits(1), 1);
        assert_eq!(key_digits(10), 1);
        assert_eq!(key_digits(11), 2);
        assert_eq!(key_digits(100_000), 5);
        assert_eq!(key_digits(u64::MAX), 20);
    }

    #[test]
    fn values_are_deterministic_filler() {
        assert_eq!(value(500, 1).len(), 500);
        assert_eq!(value(500, 1), value(500, 1));
        assert_ne!(value(500, 1), value(500, 2));
        assert!(value(64, 3).iter().all(u8::is_ascii_alphanumeric));
        assert!(value(0, 3).is_empty());
    }

    #[test]
    fn same_seed_same_sequence() {
        let mix: Mix = "get=80,set=15,del=5".parse().unwrap();
        let chooser = KeyChooser::new(Distribution::Zipf, 1000, 0.99).unwrap();
        let run = |seed| {
            let mut w = Workload::new(mix, chooser.clone(), seed);
            (0..100).map(|_| w.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        assert_ne!(stream_seed(1, 0), stream_seed(1, 1));
    }

    #[test]
    fn mix_weights_are_honoured() {
        let mix: Mix = "get=80,set=15,del=5".parse().unwrap();
        let mut w = Workload::new(mix, KeyChooser::new(Distribution::Uniform, 10, 0.0).unwrap(), 9);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[w.next().0 as usize] += 1;
        }
        assert!((78_000..82_000).contains(&counts[0]), "{counts:?}");
        assert!((13_500..16_500).contains(&counts[1]), "{counts:?}");
        assert!((4_000..6_000).contains(&counts[2]), "{counts:?}");
        let only_set: Mix = "set=1".parse().unwrap();
        let mut w =
            Workload::new(only_set, KeyChooser::new(Distribution::Uniform, 10, 0.0).unwrap(), 9);
        assert!((0..1000).all(|_| w.next().0 == OpKind::Set));
    }

    #[test]
    fn zipf_stays_in_range_and_is_skewed() {
        const KEYS: u64 = 1000;
        const SAMPLES: u32 = 100_000;
        let top_share = |distribution| {
            let chooser = KeyChooser::new(distribution, KEYS, 0.99).unwrap();
            let mut rng = SmallRng::seed_from_u64(3);
            let mut counts = vec![0u32; KEYS as usize];
            for _ in 0..SAMPLES {
                let k = chooser.next(&mut rng);
                assert!(k < KEYS, "key {k} out of range");
                counts[k as usize] += 1;
            }
            let top = counts.iter().copied().max().unwrap_or(0);
            (f64::from(top) / f64::from(SAMPLES), counts[0] == top)
        };
        // Rank 1 of Zipf(1000, 0.99) has probability 1/H(1000, 0.99), about 0.13.
        let (zipf_top, zipf_top_is_key_0) = top_share(Distribution::Zipf);
        assert!((0.10..0.17).contains(&zipf_top), "zipf top share {zipf_top}");
        assert!(zipf_top_is_key_0);
        let (uniform_top, _) = top_share(Distribution::Uniform);
        assert!(uniform_top < 0.003, "uniform top share {uniform_top}");
        // A one-key space always yields key 0.
        let one = KeyChooser::new(Distribution::Zipf, 1, 0.99).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| one.next(&mut rng) == 0));
        assert!(KeyChooser::new(Distribution::Zipf, 10, -1.0).is_err());
    }
}
